"""Live loss is counted: ``ring_full``, ``socket_events_lost`` and ``backpressure_waits`` rise
when the capture cannot keep up (producers/live_capture.py, "Loss accounting").

Real kernel, real traffic, real broker; only the sizes are small and the slow parts are
made slow for real:

* a veth pair between two network namespaces the test creates (tests/netns.py), iperf3
  and a burst of short TCP connections across it, inside the namespaces only;
* the eBPF capture opened by ``open_capture`` on the sender's veth with the smallest
  packet ring (``ring_mb`` 2 MiB), and the socket-event programs with a one-page BPF
  ring buffer (``socket_ring_pages`` 1, ~36 events; ``--socket-ring-mb`` of
  ``wirestream capture``);
* ``run_capture`` in a thread, publishing to an embedded broker of this test's own.

Two overloads, one after the other:

1. **a slow consumer**: the capture loop is held (its ``stop`` callback blocks) while
   iperf3 and 300 connections run. The packet ring and the BPF ring buffer fill up: the
   kernel drops what has no room, and the capture must count it (``ring_full``,
   ``socket_events_lost``);
2. **a slow broker**: the broker is paused (SIGSTOP) while iperf3 runs and the capture
   reads at full speed. The Kafka client's bounded queue (256 MiB) fills up, publishing
   waits (``backpressure_waits``), and what the ring cannot hold meanwhile is
   ``ring_full`` again.

The independent oracle for ``ring_full`` is the kernel, counted twice: the eBPF filter's
own ``filter_passed`` counter (frames it let into the ring) must equal frames read plus
``ring_full``, and the socket's ``ring_packets``. Then the final ``wire.stats`` record of
the stage ``producer.live`` must carry the same figures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest
from helpers import ebpf_unavailable, needs, require_or_skip
from netns import LossyLink, netns_available

from wirestream.broker import EmbeddedBroker, ensure_topics, partition_count
from wirestream.codec import AvroCodec
from wirestream.reader import TopicReader
from wirestream.topics import PACKETS, SOCKETS, STATS

NETNS_UNAVAILABLE = netns_available()
IPERF3 = shutil.which("iperf3")
pytestmark = [
    needs(NETNS_UNAVAILABLE and f"network namespaces: {NETNS_UNAVAILABLE}"),
    needs(None if IPERF3 else "iperf3 is not installed (scripts/install --test installs it)"),
]

IPERF_PORT, CONNECT_PORT = 5201, 5301
SHORT_CONNECTIONS = 300
SOURCE = "live-loss-test"

# Accept and close connections until killed.
ACCEPTOR = textwrap.dedent("""
    import socket, sys
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((sys.argv[1], int(sys.argv[2])))
    srv.listen(512)
    print("ready", flush=True)
    while True:
        c, _ = srv.accept()
        c.close()
""")
# Open and close N connections (each: connect, accept, close and ~10 state changes).
CONNECTOR = textwrap.dedent("""
    import socket, sys
    for _ in range(int(sys.argv[3])):
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
""")


class Gate:
    """The capture loop's ``stop`` callback: blocks while closed (a consumer that does not
    keep up), says stop once finished."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.finished = False

    def __call__(self) -> bool:
        self.open.wait()
        return self.finished


class Capturing:
    """``run_capture`` of ``live`` in a thread, publishing to ``broker``, stopped by a
    :class:`Gate`; :meth:`finish` returns its :class:`CaptureResult`."""

    def __init__(self, live, broker: EmbeddedBroker, registry, socket_events: bool) -> None:
        from wirestream.producers.live_capture import run_capture

        self.live = live
        self.broker = broker
        self.publisher, socket_publisher = live.publishers(
            broker.bootstrap, AvroCodec(registry.url), partition_count(broker.bootstrap, PACKETS),
            SOURCE, "live loss test")
        assert (socket_publisher is not None) == socket_events
        self.gate = Gate()
        self.outcome: dict = {}

        def capture() -> None:
            try:
                self.outcome["result"] = run_capture(live, self.publisher, socket_publisher, stop=self.gate)
            except BaseException as exc:  # noqa: BLE001 - raised again by finish()
                self.outcome["error"] = exc

        self.thread = threading.Thread(target=capture, daemon=True)
        self.thread.start()

    @contextlib.contextmanager
    def broker_paused(self) -> Iterator[None]:
        """The broker stopped (SIGSTOP) for the body: a broker that does not keep up."""
        tansu = self.broker._proc.pid
        os.killpg(tansu, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(tansu, signal.SIGCONT)

    def finish(self, settle_s: float = 0.2):
        """Stop the capture ``settle_s`` after the last traffic: the link is then quiet
        when the capture reads the kernel's two counts of the ring's frames (the eBPF
        filter's ``filter_passed`` and the socket's ``ring_packets``), one after the
        other. (That frames read + ``ring_full`` equal ``ring_packets`` even with traffic
        at the end is tests/test_live_accounting.py's.)"""
        time.sleep(settle_s)
        self.gate.finished = True
        self.gate.open.set()
        self.thread.join(timeout=120)
        assert not self.thread.is_alive(), "the capture did not finish"
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["result"]


def _final_stats(broker: EmbeddedBroker, registry) -> dict:
    """The capture's final wire.stats record."""
    with TopicReader(broker.bootstrap, AvroCodec(registry.url), [STATS]) as reader:
        finals: list[dict] = []
        deadline = time.monotonic() + 30
        while not finals and time.monotonic() < deadline:
            finals += [m.record for m in reader.poll(0.3) if m.record is not None
                       and m.record["source_id"] == SOURCE and m.record["final"]]
    (final,) = finals
    return final


def _iperf(link: LossyLink, seconds: float, rate: str = "0") -> None:
    """iperf3 from the sender to the receiver for ``seconds``, at ``rate`` (0: as fast as it can)."""
    server = link.popen(link.receiver, [IPERF3, "-s", "-1", "-p", str(IPERF_PORT), "-B", link.receiver_ip])
    time.sleep(0.3)  # it listens within milliseconds and says nothing
    client = link.run(link.sender, [IPERF3, "-c", link.receiver_ip, "-p", str(IPERF_PORT), "-t", str(seconds),
                                    "-b", rate, "-B", link.sender_ip], check=False, timeout=seconds + 30)
    assert client.returncode == 0, client.stderr
    server.wait(timeout=10)


@pytest.fixture
def ebpf() -> None:
    reason = ebpf_unavailable()
    if reason:
        require_or_skip(f"eBPF capture is not possible here: {reason}")


def test_ring_overflow_socket_event_overflow_and_backpressure_are_counted(ebpf, tmp_path, registry) -> None:
    from wirestream.producers.live_capture import CaptureOptions, open_capture

    # offloads on: frames of up to 64 KiB, so that the capture hands the Kafka client more
    # than its queue holds within seconds
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker, \
            LossyLink(loss_percent=0, rate_mbit=None, offloads=True) as link:
        ensure_topics(broker.bootstrap, [PACKETS, SOCKETS, STATS], 2)
        # periodic stats records while the broker is paused too: queued, never waited for
        options = CaptureOptions(interfaces=[link.sender_if], netns=link.sender, mode="ebpf",
                                 socket_events=True, ring_mb=2, socket_ring_pages=1, stats_interval_s=1.0)
        live = open_capture(options)
        assert live.mode == "ebpf" and live.socket_source is not None, live.fallback_reason
        try:
            capturing = Capturing(live, broker, registry, socket_events=True)
            acceptor = link.popen(link.receiver, [sys.executable, "-c", ACCEPTOR, link.receiver_ip, str(CONNECT_PORT)])
            assert acceptor.stdout.readline().strip() == "ready"

            # 1. a consumer that does not keep up
            capturing.gate.open.clear()
            lost_before = live.socket_source.lost()
            _iperf(link, 2)
            link.run(link.sender, [sys.executable, "-c", CONNECTOR, link.receiver_ip, str(CONNECT_PORT),
                                   str(SHORT_CONNECTIONS)])
            lost_while_held = live.socket_source.lost() - lost_before
            capturing.gate.open.set()

            # 2. a broker that does not keep up
            time.sleep(1.0)  # the rings drained
            publisher = capturing.publisher
            with capturing.broker_paused():
                # until publishing stops moving: the client's queue (256 MiB, ~340 batches
                # of 768 KiB) is full (bounded in time: the assertions say what happened)
                deadline = time.monotonic() + 30
                last = -1
                while publisher.messages != last and time.monotonic() < deadline:
                    last = publisher.messages
                    _iperf(link, 2)
            result = capturing.finish()
        finally:
            live.close()
        final = _final_stats(broker, registry)

    counters, dropped = result.counters, result.dropped
    summary = f"frames {result.frames}, dropped {dict(dropped)}, counters {counters}, " \
              f"socket events lost while held {lost_while_held}"
    print("\n" + summary)
    # the packet ring: what the filter let in was either read or counted as ring_full
    assert dropped["ring_full"] > 0, summary
    assert result.frames + dropped["ring_full"] == counters["ring_packets"] == counters["filter_passed"], summary
    # the BPF ring buffer: the kernel counted events with no room, and so does the capture
    assert lost_while_held > 0, summary
    assert dropped["socket_events_lost"] >= lost_while_held, summary
    # the broker paused: the client's queue was full and publishing waited
    assert counters["backpressure_waits"] > 0, summary
    assert not any(k.startswith("broker_") for k in dropped), summary  # and nothing was lost there
    # the same figures on wire.stats
    assert final["stage"] == "producer.live", final
    for name in ("ring_full", "socket_events_lost"):
        assert final["dropped"][name] == dropped[name], (name, final)
    assert final["counters"]["backpressure_waits"] == counters["backpressure_waits"], final


def test_a_broker_pause_the_client_queue_can_hold_loses_no_frame(ebpf, tmp_path, registry) -> None:
    """The claim: a broker behind is absorbed by the client's queue (256 MiB) first, and
    only what the ring cannot hold after that is ``ring_full``. Here: 3 s of a 20 Mbit/s
    transfer (7.5 MB, a few % of the queue; ~1700 frames/s, which the capture reads with
    ease) while the broker is paused, with the stats record every 0.5 s."""
    from wirestream.producers.live_capture import CaptureOptions, open_capture

    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker, \
            LossyLink(loss_percent=0, rate_mbit=None) as link:
        ensure_topics(broker.bootstrap, [PACKETS, SOCKETS, STATS], 2)
        options = CaptureOptions(interfaces=[link.sender_if], netns=link.sender, mode="ebpf",
                                 socket_events=False, ring_mb=2, stats_interval_s=0.5)
        live = open_capture(options)
        try:
            capturing = Capturing(live, broker, registry, socket_events=False)
            with capturing.broker_paused():
                _iperf(link, 3, rate="20M")
            result = capturing.finish()
        finally:
            live.close()
    summary = f"frames {result.frames}, dropped {dict(result.dropped)}, counters {result.counters}"
    print("\n" + summary)
    assert result.counters["filter_passed"] > 4000, summary  # the transfer reached the ring
    # The ring is 2 blocks of 1 MiB: a block fills in ~0.4 s at this rate, so a capture
    # thread descheduled that long on a loaded 2-core VM drops a frame or so (seen once in
    # CI: 1 of 5845). A capture loop held up by the paused broker loses most of the
    # transfer (with the periodic stats flushing the client: 4,718 of 5,793).
    assert result.dropped.get("ring_full", 0) <= 0.005 * result.counters["filter_passed"], summary
