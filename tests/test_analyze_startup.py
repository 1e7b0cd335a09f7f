"""The one-shot run's start (issue 16, item 3): its embedded broker, and its workers,
statically assigned, in no group.

``analyze`` starts ``wirestream process --assign ...`` workers (processors/packet_worker.py,
static assignment) and the windows without Faust (processors/windows_worker.py). They
must emit what the workers of a consumer group emit; a worker that cannot reach the
broker must say so; and a packet worker must not poll an empty wire.k8s-identity.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers import free_port
from scale_out import Publishing, Workers, canonical, compare, output_start, read_output
from windows_worker import collect, finished, observation_batches, produce, start_worker, stop
from wirestream.processors.k8s_enrichment import IdentityFeed, IdentityIndex

from wirestream.broker import EmbeddedBroker, ensure_topics, partition_count, wait_for_topics
from wirestream.codec import AvroCodec
from wirestream.commands.process import format_offsets
from wirestream.errors import BrokerStartError, BrokerUnreachable
from wirestream.kafka import WireProducer
from wirestream.loopback_ports import ephemeral_range
from wirestream.reader import TopicReader, end_offsets
from wirestream.topics import (
    ALERTS,
    ALL_TOPICS,
    K8S_IDENTITY,
    OBSERVATIONS,
    PACKETS,
    SERVICE_METRICS,
    SOCKETS,
    STATS,
)

CAPTURE = str(Path(__file__).parent / "data" / "chrissanders" / "http_espn.pcapng")


def _static_worker(bootstrap: str, registry: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "wirestream", "process", "--bootstrap", bootstrap, "--registry", registry,
         "--group", f"static-{uuid.uuid4().hex[:8]}", "--loglevel", "info", *args],
        stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def test_statically_assigned_packet_workers_emit_what_a_group_emits(broker, registry, tmp_path) -> None:
    """The capture published twice, as two sources: one read by a group's worker, the other
    by two statically assigned workers (partitions 0,2 and 1,3) from the offsets where it
    begins. The same records (compared without their source id)."""
    bootstrap = broker.bootstrap
    partitions = partition_count(bootstrap, PACKETS)
    run = uuid.uuid4().hex[:8]
    by_group, static = f"group-{run}", f"static-{run}"

    def publish(source: str) -> None:
        publishing = Publishing(bootstrap, registry.url, CAPTURE, source, partitions, 956, 1e9)
        publishing.run()
        assert publishing.error is None, publishing.error

    publish(by_group)
    group = Workers(bootstrap, registry.url, by_group, tmp_path)
    try:
        start = output_start(bootstrap)
        group.start("group")
        want = read_output(bootstrap, registry.url, by_group, partitions, start)
    finally:
        group.close()

    # Where the second source begins. (The embedded broker may say less than the end
    # when the last batch holds several records: the workers then also read the end of
    # the first source, and skip it as another run's.)
    input_start = end_offsets(bootstrap, [PACKETS, SOCKETS])
    publish(static)
    start = output_start(bootstrap)
    halves = [",".join(str(p) for p in range(i, partitions, 2)) for i in range(2)]
    procs = [_static_worker(bootstrap, registry.url, tmp_path / f"static-{i}.log", "--role", "packets",
                            "--no-windows", "--only-source-prefix", static, "--assign", half,
                            "--start-offsets", format_offsets(input_start))
             for i, half in enumerate(halves)]
    try:
        got = read_output(bootstrap, registry.url, static, partitions, start)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert sum(len(v) for v in want.records.values()) >= 100  # 25 connections, 61 transactions, 14 DNS
    assert compare(got, want) == []
    assert got.repeats() == 0
    logs = [(tmp_path / f"static-{i}.log").read_text() for i in range(2)]
    assert all("static: no group, no checkpoints" in log for log in logs), logs


def test_windows_without_faust_emit_what_the_faust_agent_emits(broker, registry, tmp_path) -> None:
    """The same observation batches, as two sources, through the Faust agent (a group, a
    changelog) and through the statically assigned windows loop: the same metrics, alerts
    and final reports (compared without the source id and the alert ids made from it)."""
    run_id = uuid.uuid4().hex[:8]
    codec = AvroCodec(registry.url)
    window_args = ["--window", "10", "--lateness", "2", "--alert-threshold", "errors_5xx=20"]

    def run(source: str, start_process) -> dict[str, list]:
        start = end_offsets(broker.bootstrap, [SERVICE_METRICS, ALERTS, STATS])
        proc = start_process()
        try:
            with TopicReader(broker.bootstrap, codec, [SERVICE_METRICS, ALERTS, STATS], start) as reader:
                got = collect(reader, source, finished)
        finally:
            stop(proc)
        assert finished(got), got[STATS]
        return got

    by_faust = f"faust-{run_id}"
    produce(broker, codec, observation_batches(by_faust))
    faust = run(by_faust, lambda: start_worker(broker, registry, f"faust-{run_id}", by_faust))

    static_source = f"static-{run_id}"
    observation_start = end_offsets(broker.bootstrap, [OBSERVATIONS])
    produce(broker, codec, observation_batches(static_source))
    quarters = ",".join(map(str, range(partition_count(broker.bootstrap, OBSERVATIONS))))
    static = run(static_source, lambda: _static_worker(
        broker.bootstrap, registry.url, tmp_path / "windows.log", "--role", "windows", "--assign-windows",
        quarters, "--start-offsets", format_offsets(observation_start), *window_args))

    def records(got: dict[str, list], topic: str) -> list[str]:
        return sorted(canonical({k: v for k, v in r.items() if k not in ("source_id", "alert_id")})
                      for r in got[topic])

    for topic in (SERVICE_METRICS, ALERTS):
        assert records(static, topic) == records(faust, topic), topic
    assert len(faust[SERVICE_METRICS]) >= 10 and faust[ALERTS]

    def reports(got: dict[str, list]) -> list[str]:
        return sorted(canonical({k: s[k] for k in ("partition", "emitted", "dropped", "counters", "final")})
                      for s in got[STATS])

    assert reports(static) == reports(faust)


def test_a_worker_without_a_broker_says_so(tmp_path) -> None:
    """A statically assigned worker whose broker never answers exits with one clear line."""
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "wirestream", "process", "--bootstrap", address, "--registry",
         "http://127.0.0.1:9", "--role", "packets", "--no-windows", "--assign", "0", "--wait-for-topics", "2"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert f"no Kafka broker answered at {address}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 30


def test_a_worker_told_to_stop_while_it_waits_for_the_topics_stops_at_once(tmp_path) -> None:
    """analyze killed outright (SIGKILL) takes its broker with it, and its workers get the
    parent-death SIGTERM; one still waiting for the topics must stop then, not wait out
    its --wait-for-topics (a worker left running in CI did)."""
    log = tmp_path / "worker.log"
    with EmbeddedBroker() as own:  # no topics: they are never created
        worker = _static_worker(own.bootstrap, "http://127.0.0.1:9", log, "--role", "packets", "--no-windows",
                                "--assign", "0", "--wait-for-topics", "60")
        try:
            deadline = time.monotonic() + 60
            while b"waiting for the broker" not in log.read_bytes():
                assert worker.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            time.sleep(0.3)  # inside the wait
            told = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=10) == 0, log.read_text()
            assert time.monotonic() - told < 3, log.read_text()
            assert "stopped before the topics were there" in log.read_text()
        finally:
            worker.kill()
            worker.wait()


def test_waiting_for_topics_stops_when_asked(broker) -> None:
    missing = f"wire.nothing-{uuid.uuid4().hex[:6]}"
    asked = time.monotonic() + 0.5
    assert wait_for_topics(broker.bootstrap, [missing], timeout=30, stopping=lambda: time.monotonic() > asked) is None
    assert time.monotonic() - asked < 1.5


def test_waiting_for_topics_names_the_missing_ones(broker) -> None:
    missing = f"wire.nothing-{uuid.uuid4().hex[:6]}"
    with pytest.raises(BrokerUnreachable, match=f"topics {missing} do not exist"):
        wait_for_topics(broker.bootstrap, [PACKETS, missing], timeout=1)
    assert wait_for_topics(broker.bootstrap, [PACKETS, STATS], timeout=5) == {
        PACKETS: partition_count(broker.bootstrap, PACKETS), STATS: partition_count(broker.bootstrap, STATS)}


def test_the_identity_feed_does_not_poll_an_empty_topic(registry) -> None:
    """No k8s-watch: the feed only looks at the end offsets now and then. Once a watcher
    publishes, it reads the identities."""
    with EmbeddedBroker() as own:  # an empty wire.k8s-identity, whatever other tests wrote
        ensure_topics(own.bootstrap, ALL_TOPICS, 2)
        codec = AvroCodec(registry.url)
        index = IdentityIndex()
        feed = IdentityFeed(own.bootstrap, codec, index, recheck_s=0.2)
        feed.start(timeout=5)  # caught up at once: nothing to read
        try:
            time.sleep(1.0)
            assert feed.polls == 0
            assert feed.end_checks >= 3
            producer = WireProducer(own.bootstrap)
            producer.produce(K8S_IDENTITY, codec.encode(K8S_IDENTITY, {
                "ip": "192.168.7.1", "kind": "node", "source": "test", "pod": None, "namespace": None,
                "uid": None, "labels": {}, "workload_kind": None, "workload": None, "node": "node-z",
                "zone": None, "service": None, "services": [], "endpoints": [], "valid_from_us": 1,
                "deleted_ts_us": None, "published_ts_us": 1}), key=b"192.168.7.1")
            assert producer.flush(10) == 0
            deadline = time.monotonic() + 15
            while not index.records:
                assert time.monotonic() < deadline, "the feed did not pick up the new identity"
                time.sleep(0.1)
            assert feed.polls > 0
            assert index.lookup("192.168.7.1", 2)["node"] == "node-z"
        finally:
            feed.stop()
            feed.join(5)


_THREADS_AFTER_NUMPY = (
    "import os, sys\n"
    "import wirestream, numpy\n"
    "print(len(os.listdir('/proc/self/task')), os.environ['OPENBLAS_NUM_THREADS'])\n"
)


def test_a_wirestream_process_starts_no_blas_threads() -> None:
    """numpy's OpenBLAS would start a spinning server thread per core at import (~0.1 s of
    CPU each, in each of an analyze run's processes); importing wirestream first keeps
    it to the one thread, and a value the user set is kept."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", _THREADS_AFTER_NUMPY], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == ["1", "1"]
    out = subprocess.run([sys.executable, "-c", _THREADS_AFTER_NUMPY], env={**env, "OPENBLAS_NUM_THREADS": "2"},
                         check=True, capture_output=True, text=True).stdout.split()
    assert out[1] == "2"
    if os.cpu_count() and os.cpu_count() > 1:  # (one core: OpenBLAS starts no server thread)
        assert int(out[0]) > 1


_SETTINGS_OF_ANALYZE = (
    "import sys\n"
    "from wirestream.cli import build_parser\n"
    "from wirestream.commands import common\n"
    "args = build_parser().parse_args(['analyze', 'x.pcap', *sys.argv[1:]])\n"
    "try:\n"
    "    common.settings_from_args(args)\n"
    "except Exception as exc:\n"
    "    print(type(exc).__name__, exc)\n"
    "print('numpy' in sys.modules)\n"
)


def test_analyze_imports_no_numpy_before_it_starts_its_workers() -> None:
    """analyze reads its settings before it starts its workers, and everything imported by
    then delays them: checking the alert thresholds imported the windows' module and numpy
    with it (~0.1 s; analyze http_espn's workers started at 0.17 s, now 0.08 s). A bad
    threshold is still refused there."""
    run = [sys.executable, "-c", _SETTINGS_OF_ANALYZE]
    good = subprocess.run([*run, "--alert-threshold", "errors_5xx=3"], check=True, capture_output=True, text=True)
    assert good.stdout.split() == ["False"], good.stdout + good.stderr
    bad = subprocess.run([*run, "--alert-threshold", "nope=1"], check=True, capture_output=True, text=True)
    assert bad.stdout.startswith("UsageError ") and "nope" in bad.stdout, bad.stdout + bad.stderr


def test_the_embedded_broker_is_started_only_when_it_answers_kafka(tmp_path) -> None:
    """A port held by something else (here a plain listener, in CI something that made the
    port look open) is not our broker: tansu logs ``AddrInUse`` and lives on, so an open
    port proved nothing and the run's first request failed. wait_listening must wait for a
    Kafka answer and, failing that, say why with the broker's log."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", free_port()))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = EmbeddedBroker(port=port, log_path=tmp_path / "broker.log").launch()
        try:
            with pytest.raises(BrokerStartError, match=f"(?s)(did not answer on 127.0.0.1:{port}|exited).*AddrInUse"):
                broker.wait_listening(timeout=3)
        finally:
            broker.stop()


def test_the_embedded_broker_stops_at_once_with_clients_still_connected() -> None:
    """tansu, given a SIGTERM, waits for its clients to disconnect; a run's own producers
    stay connected until its process ends, so every ``analyze`` waited out the stop's
    half-second grace (half of a small capture's wall time). Its storage is memory:
    nothing to save, it is killed. The broker must be gone, its port closed, well within
    that grace, while a producer that has just written to it is still connected."""
    from confluent_kafka import Producer

    broker = EmbeddedBroker().start()
    producer = Producer({"bootstrap.servers": broker.bootstrap, "log_level": 0})
    producer.produce(PACKETS, b"x")
    assert producer.flush(10) == 0  # connected, and it has written
    pid = broker.pid
    started = time.monotonic()
    broker.stop()
    took = time.monotonic() - started
    assert took < 0.3, f"stop took {took:.2f} s"
    assert broker.pid is None and broker.exit_code() is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", broker.port), timeout=1).close()
    del producer


def test_the_embedded_broker_takes_a_port_outside_the_ephemeral_range() -> None:
    """No outgoing connection's local end (the kernel picks those in the ephemeral range)
    can take the broker's port between its choice and tansu's bind."""
    low, high = ephemeral_range()
    ports = {EmbeddedBroker().port for _ in range(200)}
    assert len(ports) > 150  # chosen at random
    assert not any(low <= port <= high for port in ports)
    with EmbeddedBroker() as broker:
        assert ensure_topics(broker.bootstrap, [PACKETS], 1) == [PACKETS]


def test_ports_come_from_the_kernel_when_the_ephemeral_range_leaves_no_room(monkeypatch) -> None:
    """A machine whose ephemeral range is nearly every port still gets its broker a port
    (the kernel's), not an error."""
    from wirestream import loopback_ports

    assert list(loopback_ports._shuffled(65536, 65535)) == []
    assert sorted(loopback_ports._shuffled(10, 14)) == [10, 11, 12, 13, 14]
    monkeypatch.setattr(loopback_ports, "ephemeral_range", lambda: (1024, 65535))
    ports = loopback_ports.free_ports(3)
    assert len(set(ports)) == 3 and all(0 < p < 65536 for p in ports)
    assert EmbeddedBroker().port > 0


def test_a_failed_run_keeps_its_work_directory_only_when_it_holds_logs(tmp_path, monkeypatch) -> None:
    """The work directory of a failed run is kept for its logs, which the error points
    to; one that failed before anything wrote there is removed (empty folders piled up in
    /tmp), and one that did not fail, or was interrupted, is removed either way."""
    import tempfile

    from wirestream.config import Settings
    from wirestream.runtime import Runtime

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    settings = Settings(bootstrap="127.0.0.1:9", registry="http://127.0.0.1:9")
    with pytest.raises(RuntimeError), Runtime(settings, autostart=False):
        raise RuntimeError("failed before anything was started")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), Runtime(settings, autostart=False) as rt:
        (rt.workdir / "worker-0.log").write_text("the reason")
        raise RuntimeError("failed with a log")
    assert [p.name for p in tmp_path.glob("*/*")] == ["worker-0.log"]
    kept = rt.workdir
    with Runtime(settings, autostart=False) as rt:
        (rt.workdir / "worker-0.log").write_text("fine")
    assert list(tmp_path.iterdir()) == [kept]
    with pytest.raises(KeyboardInterrupt), Runtime(settings, autostart=False) as rt:
        (rt.workdir / "worker-0.log").write_text("interrupted: no error message points here")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == [kept]
