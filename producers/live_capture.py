"""Live capture: packets from packet rings, socket events from tracepoints, into Kafka.

``wirestream capture`` runs :func:`run_capture`. Two modes, chosen by :func:`open_capture`:

- **ebpf** (needs bcc, kernel headers for it, root): an eBPF socket filter
  (``bpf/packet_filter.c``) on each packet ring, plus the socket-event tracepoints
  (``bpf/socket_events.c``) -> ``wire.sockets``;
- **af_packet** (needs only CAP_NET_RAW): the same rings without a filter, no socket
  events. Chosen automatically, with one line saying why, when eBPF cannot be used.

Both feed frames through the same decoder and batcher as capture files (the compiled
core's: ``rust/src/ring.rs`` walks the rings' blocks, no Python runs per packet), so a
live capture and a ``tcpdump`` file of the same traffic give the same ``wire.packets``.

Loss accounting (``wire.stats``, stage ``producer.live``): frames the ring had no room
for (``ring_full``), socket events the BPF ring buffer had no room for
(``socket_events_lost``), how long the Kafka client's bounded queue made us wait
(``backpressure_waits``: the broker is behind; the kernel ring absorbs it, and what it
cannot is counted as ``ring_full``), plus every decoder drop reason. Memory is bounded by
the rings and the Kafka client's queue, whatever the load.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import select
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from wirestream import _core

from .af_packet import (
    CaptureError,
    PacketRing,
    RingSpec,
)
from .decode import FrameDecoder
from .publisher import PacketBatchPublisher

#: link + VLAN tags + IP (with IPv6 extension headers) + TCP header room, and the headers
#: of a tunnel or two (VXLAN over UDP is 50 bytes, Geneve options and ERSPAN more): the
#: eBPF filter keeps this much on top of the payload snap length
HEADER_ROOM = 384
#: counters of bpf/packet_filter.c, by slot
FILTER_COUNTERS = ("filter_seen", "filter_passed", "loopback_copies", "non_ip", "gso_packets", "gso_segments")
CLONE_NEWNET = 0x40000000
MODES = ("auto", "ebpf", "af_packet")
#: at the end of a capture, how long to wait for the kernel to hand over frames it has
#: counted but still holds in a partly filled block (it does so after the ring's block
#: timeout, 10 ms): waited for only while the counts differ
FINAL_DRAIN_S = 0.5
#: the socket events' BPF ring buffer, by default (~40k events)
SOCKET_RING_MB = 4

log = logging.getLogger(__name__)


def ring_pages_of_mb(megabytes: float) -> int:
    """A BPF ring buffer of ``megabytes`` MiB as a page count: the largest power of two
    that fits (the kernel takes no other size), at least one page."""
    if not 0 < megabytes < float("inf"):
        raise ValueError(f"a ring buffer of {megabytes} MiB")
    pages = int(megabytes * (1 << 20)) // mmap.PAGESIZE
    return 1 << max(0, pages.bit_length() - 1)


@dataclass
class CaptureOptions:
    interfaces: list[str] = field(default_factory=list)  # empty: every interface
    netns: str | None = None  # a name in /run/netns, or a path such as /proc/PID/ns/net
    payload_snaplen: int = 65535
    mode: str = "auto"
    socket_events: bool = True
    ring_mb: int = 32
    #: pages of the socket events' BPF ring buffer (a power of two): what it cannot hold
    #: while the capture is behind is ``socket_events_lost``
    socket_ring_pages: int = field(default_factory=lambda: ring_pages_of_mb(SOCKET_RING_MB))
    duration_s: float | None = None
    max_packets: int | None = None
    stats_interval_s: float = 5.0  # also how often the sockets' data-syscall counts are published
    #: eBPF mode with socket events: open descriptors per container every this many
    #: seconds (``fd_snapshot`` events); 0: never
    fd_snapshot_interval_s: float = 30.0


@dataclass
class CaptureResult:
    """What a live capture did; shaped like a file replay's result for the summary."""

    path: str
    format: str  # "live eBPF" or "live AF_PACKET"
    mode: str = ""
    fallback_reason: str | None = None
    frames: int = 0
    packets: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    counters: dict[str, int] = field(default_factory=dict)
    socket_events: Counter[str] = field(default_factory=Counter)
    fd_snapshot: list[Any] = field(default_factory=list)  # the last one: ContainerFds per container
    fd_snapshot_unreadable: int = 0  # processes whose descriptors it could not list
    first_ts_us: int | None = None
    last_ts_us: int | None = None
    elapsed_s: float = 0.0
    cpu_s: float = 0.0


# --- network namespaces -------------------------------------------------------------------

def netns_path(netns: str) -> str:
    return netns if "/" in netns else f"/run/netns/{netns}"


@contextlib.contextmanager
def entered(netns: str | None) -> Iterator[None]:
    """Run the body in network namespace ``netns`` (this thread only), then come back.

    Sockets keep the namespace they were created in, so packet rings opened in the body
    capture there while the rest of the program stays in its own namespace."""
    if netns is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    path = netns_path(netns)
    try:
        target = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise CaptureError(f"no network namespace {netns!r} ({path}: {exc.strerror})") from None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise CaptureError(f"cannot enter network namespace {netns!r}: {os.strerror(err)} (needs CAP_SYS_ADMIN)")
        try:
            yield
        finally:
            libc.setns(own, CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(own)


# --- opening ------------------------------------------------------------------------------

class LiveCapture:
    """The open rings (and, in eBPF mode, the loaded programs)."""

    def __init__(self, options: CaptureOptions, rings: list[PacketRing], mode: str,
                 filter_bpf: Any = None, socket_source: Any = None,
                 fallback_reason: str | None = None) -> None:
        self.options = options
        self.rings = rings
        self.mode = mode
        self.filter_bpf = filter_bpf
        self.socket_source = socket_source
        self.fallback_reason = fallback_reason

    def publishers(self, bootstrap: str, codec: Any, partitions: int, source_id: str,
                   source_name: str) -> tuple[PacketBatchPublisher, Any]:
        """The publishers of this capture: packets, and socket events if it has them."""
        packets = PacketBatchPublisher(bootstrap, codec, partitions, source_id, source_name,
                                       stage="producer.live", socket_events=self.socket_source is not None)
        sockets = None
        if self.socket_source is not None:
            from .socket_events import SocketEventPublisher

            sockets = SocketEventPublisher(bootstrap, codec, partitions, source_id)
        return packets, sockets

    def rings_text(self) -> str:
        names = ", ".join(self.options.interfaces) or "all interfaces"
        return f"{names} in netns {self.options.netns}" if self.options.netns else names

    def filter_counters(self) -> dict[str, int]:
        """The eBPF filter's counters (summed over CPUs); empty in AF_PACKET mode."""
        if self.filter_bpf is None:
            return {}
        table = self.filter_bpf[b"counters"]
        return {name: int(sum(table[ctypes.c_int(i)])) for i, name in enumerate(FILTER_COUNTERS)}

    def close(self) -> None:
        for ring in self.rings:
            ring.close()
        if self.socket_source is not None:
            self.socket_source.close()
        if self.filter_bpf is not None:
            self.filter_bpf.cleanup()


def _load_filter(payload_snaplen: int) -> Any:
    from wirestream.doctor import kernel_headers, load_bcc

    bcc = load_bcc()
    if kernel_headers() is None:
        raise ImportError("no kernel headers for bcc (run scripts/bcc-headers, or set BCC_KERNEL_SOURCE)")
    text = resources.files("wirestream.bpf").joinpath("packet_filter.c").read_text()
    return bcc, bcc.BPF(text=text.encode(), cflags=[f"-DSNAPLEN={HEADER_ROOM + payload_snaplen}"])


def open_capture(options: CaptureOptions) -> LiveCapture:
    """Open the rings of ``options``, in eBPF mode if possible (``mode`` auto/ebpf)."""
    if options.mode not in MODES:
        raise CaptureError(f"mode must be one of {', '.join(MODES)}, not {options.mode!r}")
    pages = options.socket_ring_pages
    if pages < 1 or pages & (pages - 1):
        raise CaptureError(f"the socket events' ring buffer must be a power of two pages, not {pages}")
    filter_bpf = socket_source = bcc = None
    reason = None
    mode = "af_packet"
    if options.mode != "af_packet":
        try:
            if os.geteuid() != 0:
                raise PermissionError("not root: eBPF needs CAP_BPF and CAP_PERFMON")
            bcc, filter_bpf = _load_filter(options.payload_snaplen)
            mode = "ebpf"
        except Exception as exc:  # any reason eBPF cannot be used is a reason to fall back
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            if options.mode == "ebpf":
                raise CaptureError(f"eBPF capture is not possible here: {reason}") from None
    spec = RingSpec.of_megabytes(max(2, options.ring_mb // max(1, len(options.interfaces) or 1)))
    rings: list[PacketRing] = []
    try:
        fd = None
        if filter_bpf is not None:
            fd = filter_bpf.load_func(b"capture", bcc.BPF.SOCKET_FILTER).fd
        with entered(options.netns):
            for name in options.interfaces or [None]:
                rings.append(PacketRing(name, spec, bpf_fd=fd))
        if mode == "ebpf" and options.socket_events:
            from .socket_events import SocketEventSource

            try:
                socket_source = SocketEventSource(bcc, ring_pages=options.socket_ring_pages)
            except Exception as exc:
                reason = f"socket events unavailable: {exc}"
    except BaseException:
        for ring in rings:
            ring.close()
        if filter_bpf is not None:
            filter_bpf.cleanup()
        raise
    return LiveCapture(options, rings, mode, filter_bpf, socket_source, reason)


# --- running ------------------------------------------------------------------------------

StopCheck = Callable[[], bool]
Progress = Callable[[CaptureResult], None]


class _FrameFeed:
    """Frames from the rings -> decoder -> publisher, with the counts of what was read.

    The per-frame work (loopback copies and our own traffic left out, decoding, batching)
    is the core's :class:`wirestream._core.RingFeed`; this class publishes the batches it
    completes and names its counts."""

    def __init__(self, capture: LiveCapture, publisher: PacketBatchPublisher,
                 own_ports: frozenset[int] = frozenset()) -> None:
        self.decoder = FrameDecoder(capture.options.payload_snaplen)
        self.publisher = publisher
        # Loopback ports of our own pipeline (the embedded broker and registry): capturing
        # them would publish our own publishing, without end. The eBPF filter already
        # dropped loopback's sent copies in the kernel: without it, they are dropped here.
        self.core = _core.RingFeed(capture.mode != "ebpf", sorted(own_ports))

    def drain(self, ring: PacketRing) -> None:
        self.publisher.send_batches(ring.drain(self.core, self.decoder.core, self.publisher.batcher))

    @property
    def frames(self) -> int:
        """Frames read from the rings, loopback copies left out (the frame numbers)."""
        return int(self.core.frames)

    @property
    def loopback_copies(self) -> int:
        return int(self.core.loopback_copies)

    @property
    def own_packets(self) -> int:
        """Packets of our own pipeline's ports left out."""
        return int(self.core.own_packets)

    @property
    def first_ts(self) -> int | None:
        return self.core.first_ts_us

    @property
    def last_ts(self) -> int | None:
        return self.core.last_ts_us

    @property
    def ring_frames(self) -> int:
        """Frames taken from the rings: the kernel's ``ring_packets`` less ``ring_full``."""
        return self.frames + self.loopback_copies


@dataclass
class _KernelCounts:
    """The kernel's counters of a capture as of the last :func:`_account`: one snapshot,
    so that a report's figures are of the same moment (frames read are counted to then)."""

    ring_packets: int = 0
    ring_full: int = 0
    filter: dict[str, int] = field(default_factory=dict)  # the eBPF filter's, if any


def run_capture(
    capture: LiveCapture,
    publisher: PacketBatchPublisher,
    socket_publisher: Any = None,
    stop: StopCheck | None = None,
    progress: Progress | None = None,
    own_ports: frozenset[int] = frozenset(),
) -> CaptureResult:
    """Capture until ``--duration``, ``--count``, ``stop()`` or Ctrl-C; then publish the
    end-of-input markers and the final counters. Returns what was captured and lost.

    ``own_ports``: loopback TCP ports of this pipeline (embedded broker, registry), left
    out of the capture and counted (``own_traffic``)."""
    options = capture.options
    result = CaptureResult(path=capture.rings_text(), format=f"live {'eBPF' if capture.mode == 'ebpf' else 'AF_PACKET'}",
                           mode=capture.mode, fallback_reason=capture.fallback_reason)
    feed = _FrameFeed(capture, publisher, own_ports)
    poller = select.poll()
    for ring in capture.rings:
        poller.register(ring.fileno(), select.POLLIN)
    started = time.monotonic()
    cpu0 = time.process_time()
    deadline = started + options.duration_s if options.duration_s else None
    max_packets = options.max_packets or 0
    next_stats = started + options.stats_interval_s
    kernel = _KernelCounts()
    sockets = capture.socket_source if socket_publisher is not None else None
    fd_every = options.fd_snapshot_interval_s if sockets is not None else 0
    next_fd_snapshot = started  # one at the start, then every fd_every seconds
    try:
        while True:
            poller.poll(50)
            for ring in capture.rings:
                feed.drain(ring)
            if sockets is not None:
                socket_publisher.add(sockets.poll(0))
                socket_publisher.expire_pending()
            now = time.monotonic()
            if fd_every > 0 and now >= next_fd_snapshot:
                next_fd_snapshot = now + fd_every
                _publish_fd_snapshot(socket_publisher, result)
            if now >= next_stats:
                next_stats = now + options.stats_interval_s
                if sockets is not None:
                    socket_publisher.add_io(sockets.io_table())
                _account(capture, kernel)
                _fill(result, capture, feed, kernel, socket_publisher)
                publisher.publish_stats(feed.frames, result.dropped, result.counters, final=False)
                if progress is not None:
                    progress(result)
            if (deadline is not None and now >= deadline) or (max_packets and publisher.packets >= max_packets) \
                    or (stop is not None and stop()):
                break
    except KeyboardInterrupt:
        # Ctrl-C / SIGTERM: the normal way to end a live capture; finish cleanly. Unless
        # it is a second one, come before this loop saw the first (`capture`'s stop):
        # that one interrupts the clean-up too, as it would a moment later.
        if stop is not None and stop():
            raise
    # What is still in the rings and the BPF ring buffer belongs to this capture. The
    # kernel's counters are read right after the last read of the rings, before the
    # flushes: a frame arriving during a flush would be counted but never read.
    _final_drain(capture, feed, poller, kernel)
    if sockets is not None:
        socket_publisher.add(sockets.poll(0))
        socket_publisher.add_io(sockets.io_table())  # the sockets still open
        socket_publisher.finish()  # its end markers go out before the packets' ones
    publisher.finish()
    result.elapsed_s = time.monotonic() - started
    result.cpu_s = time.process_time() - cpu0
    _fill(result, capture, feed, kernel, socket_publisher)
    publisher.publish_stats(feed.frames, result.dropped, result.counters, final=True)
    return result


def _publish_fd_snapshot(socket_publisher: Any, result: CaptureResult) -> None:
    from .fd_snapshot import take_snapshot

    snapshot = take_snapshot()
    socket_publisher.add_fd_snapshot(snapshot.rows)
    result.fd_snapshot = snapshot.rows
    if snapshot.unreadable and not result.fd_snapshot_unreadable:  # said once
        log.warning("fd snapshots: the descriptors of %d processes could not be read (reading another "
                    "process's /proc/PID/fd needs CAP_SYS_PTRACE when it has capabilities this one lacks); "
                    "their containers' counts leave them out", snapshot.unreadable)
    result.fd_snapshot_unreadable = snapshot.unreadable


def _final_drain(capture: LiveCapture, feed: _FrameFeed, poller: select.poll, kernel: _KernelCounts) -> None:
    """Read the rings, then the kernel's counters, until every frame the kernel counted
    into a ring has been read (``frames + ring_full == ring_packets``), or for at most
    :data:`FINAL_DRAIN_S` if traffic goes on. Frames arriving after the last reading are
    neither read nor counted: they are after the end of the capture."""
    deadline = time.monotonic() + FINAL_DRAIN_S
    while True:
        for ring in capture.rings:
            feed.drain(ring)
        _account(capture, kernel)
        if feed.ring_frames >= kernel.ring_packets - kernel.ring_full or time.monotonic() >= deadline:
            return
        poller.poll(20)  # the kernel still holds a partly filled block: until it hands it over


def _account(capture: LiveCapture, kernel: _KernelCounts) -> None:
    for ring in capture.rings:
        packets, drops = ring.statistics()  # since the last call
        kernel.ring_packets += packets
        kernel.ring_full += drops
    kernel.filter = capture.filter_counters()  # the same moment as the rings' counts


def _fill(result: CaptureResult, capture: LiveCapture, feed: _FrameFeed, kernel: _KernelCounts,
          socket_publisher: Any) -> None:
    result.frames, result.packets = feed.frames, feed.publisher.packets
    result.first_ts_us, result.last_ts_us = feed.first_ts, feed.last_ts
    dropped = Counter(feed.decoder.dropped)
    dropped["ring_full"] = kernel.ring_full
    counters = {"ring_packets": kernel.ring_packets, "loopback_copies": feed.loopback_copies,
                "own_traffic": feed.own_packets,
                "backpressure_waits": feed.publisher.kafka.backpressure_waits,
                **feed.decoder.counters}
    if kernel.filter:
        counters.update(kernel.filter)
        dropped["non_ip"] += kernel.filter["non_ip"]  # filtered in the kernel, as the decoder would have
    if capture.socket_source is not None:
        dropped["socket_events_lost"] = capture.socket_source.lost()
    if socket_publisher is not None:
        dropped.update(socket_publisher.dropped)
        dropped.update(socket_publisher.kafka.delivery_errors)
        result.socket_events = Counter(socket_publisher.published)
        counters["socket_events"] = sum(socket_publisher.published.values())
        counters["socket_events_not_connection"] = socket_publisher.skipped["not_a_connection"]
        counters["fd_snapshot_unreadable"] = result.fd_snapshot_unreadable
    result.dropped = +dropped
    result.counters = counters
