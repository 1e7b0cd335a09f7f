"""Decode captured frames down to TCP/UDP/ICMP/SCTP headers: link layer -> IP -> transport.

The output is one packed header per packet (``wirestream.packet_block`` layout) plus the
captured payload bytes. Anything that is not IPv4/IPv6 TCP, UDP or ICMP, or that is damaged,
is not forwarded; it is counted in ``FrameDecoder.dropped`` under a named reason:

==========================  ==========================================================
reason                      meaning
==========================  ==========================================================
``non_ip``                  link-layer payload is not IPv4/IPv6 (ARP, LLDP, STP, ...)
``unsupported_linktype``    a pcapng interface with a link type we do not decode
``unsupported_transport``   IP payload is not TCP, UDP, ICMP/ICMPv6 or SCTP (IGMP, ESP, AH, ...)
``ip_fragment``             an IP fragment held for reassembly: its bytes go out in the
                            reassembled datagram, on the frame of the fragment that
                            completes it (or are counted as timed out or evicted)
``ip_fragment_bad``         a fragment that cannot be part of a datagram (beyond 65535
                            bytes, a non-last one of 0 or not a multiple of 8 bytes)
``truncated_link``          frame too short for its link-layer header
``truncated_ip``            IP header cut off, or a bad header length
``truncated_transport``     TCP/UDP header (ICMP's 8 bytes, SCTP's 12) cut off, or a bad TCP data offset
``bad_ip_version``          the version nibble is neither 4 nor 6
``bad_tunnel``              a tunnel's header cut off or malformed (VXLAN, Geneve,
                            GRE/ERSPAN, Teredo, GTP-U, PPPoE, MPLS)
``tunnel_too_deep``         more than 8 tunnels in one another
``tunnel_fragment``         an IP fragment inside a tunnel inside a reassembled datagram
                            (a second level of reassembly, not done)
==========================  ==========================================================

Tunnels are decapsulated (docs/core.md, "Tunnels"): the packet of a VXLAN (UDP 4789 and
8472), Geneve (6081), GRE (with ERSPAN II/III and transparent Ethernet bridging),
IP-in-IP (4in4, 6in4, 4in6, 6in6), Teredo (3544), GTP-U (2152), PPPoE or MPLS frame is
the inner one, nested tunnels too; ``FrameDecoder.counters`` counts each decapsulated
layer by kind: ``tunnel_vxlan``, ``tunnel_geneve``, ``tunnel_gre``, ``tunnel_erspan``,
``tunnel_ipip``, ``tunnel_teredo``, ``tunnel_gtpu``, ``tunnel_pppoe``, ``tunnel_mpls``.
An inner IP fragment is reassembled as an outer one is.

IP fragments (IPv4 and IPv6) are reassembled before transport decoding, bounded in time
(30 s of capture time from a datagram's first fragment), datagrams (1024) and bytes held
(4 MiB); ``FrameDecoder.counters`` counts ``ip_datagrams_reassembled``,
``ip_fragments_timed_out``, ``ip_fragments_evicted``, ``ip_fragment_overlaps``,
``ip_fragment_overlap_conflicts`` and ``ip_fragments_held`` (now). Overlaps are resolved
as Wireshark does (docs/core.md, "IP fragment reassembly").

The decoder is the compiled core's (``rust/src/decode/``: link, ip, tunnel, transport; its rules
are documented there): this module is its typed Python face, for single frames (tests,
tools). Replays and live captures decode inside the core's loops, without a Python call
per packet.
"""

from __future__ import annotations

from collections import Counter

from wirestream import _core

# Decoded packet: the values of wirestream.packet_block.PACKET_STRUCT, minus payload
# offset (assigned when the packet is put into a batch), plus the payload bytes.
DecodedPacket = tuple


class FrameDecoder:
    """Turn frames into packet-header tuples. Holds counters and the fragments being
    reassembled; one per source."""

    def __init__(self, payload_snaplen: int = 65535) -> None:
        self.payload_snaplen = payload_snaplen
        #: the compiled decoder, for the core's own loops
        self.core = _core.FrameDecoder(payload_snaplen)

    @property
    def dropped(self) -> Counter[str]:
        """Frames dropped so far, by reason (a snapshot)."""
        return Counter(self.core.dropped())

    @property
    def counters(self) -> dict[str, int]:
        """IP fragment reassembly's counters so far (the non-zero ones; a snapshot)."""
        return dict(self.core.counters())

    def decode(
        self, linktype: int, data: bytes, ts_us: int, orig_len: int, number: int
    ) -> tuple[tuple, bytes] | None:
        """Return ``(fields, payload)`` for a TCP/UDP packet, else None (and count why).

        ``fields`` is ``(ts_us, frame, wire_len, payload_len, seq, ack, src_ip, dst_ip,
        src_port, dst_port, window, tcp_flags, ip_version, proto, wscale, options)``.
        """
        return self.core.decode(linktype, bytes(data), ts_us, orig_len, number)
