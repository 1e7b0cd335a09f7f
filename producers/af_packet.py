"""Packets from a Linux packet socket with a memory-mapped ring (``TPACKET_V3``).

This is how ``tcpdump``/libpcap capture on Linux, and both live-capture modes use it:

- **eBPF**: an eBPF socket filter (``bpf/packet_filter.c``) runs on every packet in the
  kernel, drops loopback's second copy and non-IP frames, counts what it saw, and tells
  the kernel how many bytes to copy into the ring (the snap length);
- **AF_PACKET** (the fallback, no bcc needed): the same socket without a filter; the
  same decisions are taken in user space (:meth:`PacketRing.drain`).

The kernel fills fixed-size *blocks* of the ring with packets and hands a block to user
space when it is full or after ``block_timeout_ms``; the compiled core reads every packet
of a block, decodes and batches it (``rust/src/ring.rs``, the decoder of capture files),
and gives the block back. A packet that finds the ring full is dropped by the kernel and
counted (``PACKET_STATISTICS``: :meth:`PacketRing.statistics`), which is how loss is
bounded and accounted: memory is the ring's size, whatever the load.

Layouts are those of ``<linux/if_packet.h>``; offsets are commented where they are used.
"""

from __future__ import annotations

import mmap
import socket
import struct
from dataclasses import dataclass

from wirestream import _core
from wirestream.errors import WirestreamError

from .capture_file import LINKTYPE_ETHERNET, LINKTYPE_RAW

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
SO_ATTACH_BPF = 50
ETH_P_ALL = 0x0003

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1

#: sll_pkttype: the packet was sent by this host (``PACKET_OUTGOING``)
PACKET_OUTGOING = 4
#: Loopback's device type. A packet socket sees a loopback packet twice, once as it is
#: sent (PACKET_OUTGOING) and once as it is received; capture keeps the received copy,
#: as tcpdump -i lo shows each packet once.
ARPHRD_LOOPBACK = 772
#: lo's ifindex in every network namespace (the kernel's LOOPBACK_IFINDEX)
LOOPBACK_IFINDEX = 1

#: ARPHRD_* device types -> the link type of what the socket returns for them
#: (``SOCK_RAW`` returns the frame from the link-layer header on; devices without one,
#: like tun or WireGuard, return the IP packet). The core's ring reader has the same
#: table (``rust/src/ring.rs`` ``linktype_of_hatype``); this one documents it.
LINKTYPE_OF_HATYPE: dict[int, int] = {
    1: LINKTYPE_ETHERNET,  # ARPHRD_ETHER (also veth, bridges, bonds)
    772: LINKTYPE_ETHERNET,  # ARPHRD_LOOPBACK: lo has a zeroed Ethernet header
    65534: LINKTYPE_RAW,  # ARPHRD_NONE: tun, WireGuard
    519: LINKTYPE_RAW,  # ARPHRD_RAWIP
    768: LINKTYPE_RAW,  # ARPHRD_TUNNEL (ipip)
    769: LINKTYPE_RAW,  # ARPHRD_TUNNEL6
}

_tpacket_req3 = struct.Struct("=7I")  # block size, block nr, frame size, frame nr, timeout, priv, features
_stats_v3 = struct.Struct("=III")  # tp_packets, tp_drops, tp_freeze_q_cnt


class CaptureError(WirestreamError):
    """Live capture could not start (no such interface, no privilege, no ring)."""


@dataclass(frozen=True)
class RingSpec:
    """Ring geometry: ``block_count`` blocks of ``block_size`` bytes (a power of two,
    at least a page). 32 x 1 MiB holds ~0.2 s of a 10 Gbit/s link of full frames."""

    block_size: int = 1 << 20
    block_count: int = 32
    block_timeout_ms: int = 10  # hand a partly filled block over after this long

    @classmethod
    def of_megabytes(cls, megabytes: int, block_timeout_ms: int = 10) -> RingSpec:
        block = 1 << 20
        return cls(block, max(2, megabytes), block_timeout_ms)


class PacketRing:
    """One packet socket with a ``TPACKET_V3`` receive ring.

    ``ifname`` None: every interface of the current network namespace. ``bpf_fd``: an
    eBPF socket filter program to attach (None: no filter, every frame comes up).
    The socket belongs to the network namespace current when it is created (see
    :func:`producers.netns.entered`).
    """

    def __init__(self, ifname: str | None, spec: RingSpec = RingSpec(), bpf_fd: int | None = None) -> None:
        self.ifname = ifname
        self.spec = spec
        try:
            self.ifindex = socket.if_nametoindex(ifname) if ifname else 0
        except OSError:
            raise CaptureError(f"no network interface named {ifname!r}") from None
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise CaptureError("opening a packet socket needs CAP_NET_RAW (run as root)") from None
        self.sock = sock
        try:
            if bpf_fd is not None:
                # Before bind: no frame reaches the ring without having been filtered.
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, struct.pack("=i", bpf_fd))
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame_size = 1 << 11
            size = spec.block_size * spec.block_count
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, _tpacket_req3.pack(
                spec.block_size, spec.block_count, frame_size, size // frame_size,
                spec.block_timeout_ms, 0, 0))
            self.ring = mmap.mmap(sock.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            sock.bind((ifname or "", ETH_P_ALL) if ifname else ("", ETH_P_ALL))
        except OSError as exc:
            sock.close()
            raise CaptureError(f"cannot set up a packet ring on {ifname or 'all interfaces'}: {exc}") from None
        self._next_block = 0
        self.statistics()  # reading resets the kernel's counters: start from zero

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self, feed: _core.RingFeed, decoder: _core.FrameDecoder,
              batcher: _core.Batcher) -> list[tuple[int, int, bytes, bytes, bytes, bytes]]:
        """Decode and batch every packet of the blocks ready now, in the core (``feed``
        filters and counts, ``decoder`` and ``batcher`` as for capture files); return the
        batches completed. Returns when the next block is still the kernel's.

        A block is given back to the kernel as soon as its packets are read, so the
        kernel can fill it again while we publish."""
        self._next_block, batches = feed.drain(self.ring, self._next_block, self.spec.block_size,
                                                self.spec.block_count, decoder, batcher)
        return batches

    def statistics(self) -> tuple[int, int]:
        """``(packets, drops)`` since the last call: packets the socket accepted (after the
        filter) and of those, how many found the ring full."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _stats_v3.size)
        packets, drops, _freeze = _stats_v3.unpack(raw)
        return packets, drops

    def close(self) -> None:
        try:
            self.ring.close()
        finally:
            self.sock.close()
