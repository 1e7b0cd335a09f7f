"""The end of a live capture: every frame the kernel counted into a ring is read or
counted as ``ring_full``, exactly (``frames + ring_full == ring_packets``).

``run_capture`` (producers/live_capture.py) with a stand-in ring and stand-in publishers,
so that frames arrive at the two awkward moments, deterministically:

* in a partly filled block when the capture stops: the kernel has counted them, and hands
  the block over only at its block timeout (TPACKET_V3);
* while the capture flushes its publishers: after the last read of the rings.

tests/test_live_loss.py checks the same sum against a real kernel, on a link that is
quiet when the capture stops.
"""

from __future__ import annotations

import mmap
import socket
import struct
from collections import Counter
from types import SimpleNamespace

from wirestream.producers.live_capture import CaptureOptions, LiveCapture, run_capture

from wirestream import _core

ARPHRD_ETHER = 1
PACKET_HOST = 0  # <linux/if_packet.h>: addressed to this host
FRAME = bytes(60)  # an Ethernet frame of type 0: read, counted, dropped by the decoder


class Ring:
    """A packet ring fed by the test: frames are counted by the "kernel" when they
    arrive; ``held`` ones sit in the block the kernel is filling and are handed over one
    read later (its block timeout)."""

    def __init__(self) -> None:
        self._sock, self._peer = socket.socketpair()  # only to be polled: never readable
        self.counted = 0
        self.ready: list[bytes] = []
        self.held: list[bytes] = []

    def arrive(self, n: int, held: bool = False) -> None:
        self.counted += n
        (self.held if held else self.ready).extend([FRAME] * n)

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self, feed, decoder, batcher) -> list:
        """The frames ready now, as one TPACKET_V3 block handed to the core's ring reader."""
        ready, self.ready = self.ready, self.held
        self.held = []
        if not ready:
            return []
        block = tpacket_v3_block(ready)
        _next, batches = feed.drain(block, 0, len(block), 1, decoder, batcher)
        block.close()
        return batches

    def statistics(self) -> tuple[int, int]:
        counted, self.counted = self.counted, 0  # since the last call, as the kernel's
        return counted, 0

    def close(self) -> None:
        self._sock.close()
        self._peer.close()


def tpacket_v3_block(frames: list[bytes]) -> mmap.mmap:
    """A ring block holding ``frames`` as the kernel lays them out (<linux/if_packet.h>):
    the block descriptor (status TP_STATUS_USER, packet count, first offset), then per
    frame a tpacket3_hdr with its sockaddr_ll at +48 and the frame at tp_mac."""
    size = 1 << 16
    block = mmap.mmap(-1, size)
    struct.pack_into("=III", block, 8, 1, len(frames), 64)
    off = 64
    for i, frame in enumerate(frames):
        mac = 80
        nxt = 0 if i == len(frames) - 1 else (mac + len(frame) + 15) & ~15
        struct.pack_into("=IIIIIIHH", block, off, nxt, 1, 0, len(frame), len(frame), 1, mac, mac)
        struct.pack_into("=HHiHB", block, off + 48, socket.AF_PACKET, 0, 1, ARPHRD_ETHER, PACKET_HOST)
        block[off + mac:off + mac + len(frame)] = frame
        off += nxt
    return block


class Publisher:
    """``PacketBatchPublisher``'s part that run_capture uses; ``on_finish`` runs in its flush."""

    def __init__(self, on_finish=None) -> None:
        self.packets = 0
        self.batcher = _core.Batcher(1, 4096, 1 << 20)
        self.kafka = SimpleNamespace(backpressure_waits=0, delivery_errors=Counter())
        self.on_finish = on_finish
        self.reports: list[dict] = []

    def send_batches(self, batches: list) -> None:
        self.packets += sum(b[1] for b in batches)

    def finish(self) -> None:
        if self.on_finish is not None:
            self.on_finish()

    def publish_stats(self, received: int, dropped: Counter[str], counters: dict[str, int],
                      final: bool = True) -> None:
        self.reports.append({"received": received, "dropped": dict(dropped), "counters": dict(counters),
                             "final": final})


class SocketPublisher(Publisher):
    def __init__(self, on_finish=None) -> None:
        super().__init__(on_finish)
        self.dropped: Counter[str] = Counter()
        self.published: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()

    def add(self, events: list) -> None:  # type: ignore[override]
        pass

    def expire_pending(self) -> None:
        pass

    def add_io(self, rows: list) -> None:
        pass

    def add_fd_snapshot(self, rows: list) -> None:
        pass


class SocketSource:
    def poll(self, timeout_ms: int = 0) -> list[bytes]:
        return []

    def lost(self) -> int:
        return 0

    def io_table(self) -> list:
        return []


def test_every_frame_counted_before_the_end_is_read_and_none_after() -> None:
    ring = Ring()
    live = LiveCapture(CaptureOptions(mode="af_packet"), [ring], "af_packet", socket_source=SocketSource())
    ring.arrive(100)

    def stop() -> bool:
        ring.arrive(3, held=True)  # the last frames, in the block the kernel is filling
        return True

    # frames of the link's next moments, arriving while the socket events are flushed
    publisher, socket_publisher = Publisher(), SocketPublisher(on_finish=lambda: ring.arrive(5))
    try:
        result = run_capture(live, publisher, socket_publisher, stop=stop)
    finally:
        ring.close()
    summary = f"frames {result.frames}, dropped {dict(result.dropped)}, counters {result.counters}"
    assert result.frames == 103, summary
    assert result.frames + result.dropped.get("ring_full", 0) == result.counters["ring_packets"], summary
    (final,) = [r for r in publisher.reports if r["final"]]
    assert final["received"] == 103 and final["counters"]["ring_packets"] == 103, final
