"""What the tests share, as a plain module: ``from helpers import ...`` (tests/ is on
``sys.path``: tests/conftest.py puts it there, the one place that does).

* the real captures: :data:`DATA`, :func:`real_captures`;
* what a test needs from the machine, and what happens without it: :func:`needs` (a mark)
  and :func:`require_or_skip` (in a test or fixture). Without the thing, the test skips and
  says why; under ``WIRESTREAM_REQUIRE=all`` (set by .ci/run) it fails instead, because on
  a correctly set-up CI machine a missing tool is a broken install, and a skip would let a
  broken feature pass unseen. Skips whose condition is about the data (say, a capture in
  which tshark finds nothing to compare) stay plain ``pytest.skip``;
* tshark, the referee: :data:`TSHARK`, :data:`requires_tshark`, :func:`tshark_rows`;
* records for the broker: :func:`transaction`, :func:`publish`; and :func:`free_port`.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

from wirestream.loopback_ports import free_port as free_port  # (tests import it from here)

DATA = Path(__file__).parent / "data"


def real_captures() -> list[str]:
    """Every capture copied into tests/data (see tests/data/README.md for their origin)."""
    return sorted(glob.glob(str(DATA / "*" / "*.pcap*")))


# --- what the machine must provide --------------------------------------------------------

#: .ci/run sets WIRESTREAM_REQUIRE=all: every "needs X" skip becomes a failure.
REQUIRE_ALL = os.environ.get("WIRESTREAM_REQUIRE") == "all"


def require_or_skip(reason: str) -> NoReturn:
    """Skip the running test because ``reason`` (something it needs is missing), or fail
    it under ``WIRESTREAM_REQUIRE=all``."""
    if REQUIRE_ALL:
        pytest.fail(f"WIRESTREAM_REQUIRE=all, and this test would skip: {reason}", pytrace=False)
    pytest.skip(reason)


def needs(missing: str | None) -> pytest.MarkDecorator:
    """Mark a test (or a module, as ``pytestmark``) as needing something from the machine.

    ``missing`` is None when it is there, otherwise what is missing: the test then skips
    as with ``skipif``, or fails before its fixtures are set up under
    ``WIRESTREAM_REQUIRE=all`` (the hooks in tests/conftest.py)."""
    return pytest.mark.needs(missing)


def import_or_require(module: str) -> ModuleType:
    """``pytest.importorskip`` for a module the test extras install: under
    ``WIRESTREAM_REQUIRE=all`` the ImportError is raised, failing the collection."""
    if REQUIRE_ALL:
        return importlib.import_module(module)
    return pytest.importorskip(module)


def ebpf_unavailable() -> str | None:
    """None if eBPF capture with socket events works here (wirestream doctor's probe: a
    socket filter loaded, a tracepoint attached), otherwise why not."""
    from wirestream.doctor import diagnose  # as in publish: not loaded for every test

    report = diagnose(probe=True)
    if not report.ebpf:
        return report.ebpf_reason
    if not report.socket_events:
        return report.socket_events_reason
    return None


# --- tshark ------------------------------------------------------------------------------

TSHARK = shutil.which("tshark")
requires_tshark = needs(None if TSHARK else "tshark is not installed")


def tshark_rows(paths: Sequence[str | Path], fields: Sequence[str], display_filter: str | None = None,
                options: Sequence[str] = ()) -> list[list[list[str]]]:
    """``tshark -n -r P [-Y F] -T fields [OPTIONS] -e ...`` for every path, run concurrently.

    Returns, per path, one list of column strings per frame shown (one column per field;
    several occurrences of a field are joined as ``options`` say, e.g. ``-E occurrence=f``
    keeps the first; ``-2`` is Wireshark's two-pass analysis). tshark takes about 0.4 s to
    start, so callers with many files start all of them at once instead of one per test.
    """
    assert TSHARK, "tshark is not installed"
    procs = []
    for path in paths:
        cmd = [TSHARK, "-n", "-r", str(path)]
        if display_filter:
            cmd += ["-Y", display_filter]
        cmd += ["-T", "fields", "-E", "separator=\t", *options]
        for f in fields:
            cmd += ["-e", f]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for path, proc in zip(paths, procs, strict=True):
        out, err = proc.communicate()
        assert proc.returncode == 0, f"tshark failed on {path}: {err}"
        results.append([line.split("\t") for line in out.splitlines()])
    return results


# --- records for the broker ----------------------------------------------------------------


def write_ether_pcap(path: Path, packets: Sequence[Any], times: Sequence[float] | None = None) -> Path:
    """A pcap of scapy IP ``packets`` in Ethernet frames, at ``times`` (seconds after
    1,700,000,000; default: 1 ms apart)."""
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    frames = []
    for i, p in enumerate(packets):
        f = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / p
        f.time = 1_700_000_000 + (times[i] if times is not None else i * 0.001)
        frames.append(f)
    wrpcap(str(path), frames)
    return path


def analyze_cases(paths: dict[str, Path], out: Path, topics: Iterable[str],
                  *args: str) -> tuple[dict[str, Any], dict[str, dict[str, list[dict[str, Any]]]]]:
    """One ``wirestream analyze --out OUT --json`` over the named captures (``args`` added);
    its summary, and per capture name its records by topic (a record's capture is the index
    at the end of its ``source_id``)."""
    proc = subprocess.run([sys.executable, "-m", "wirestream", "analyze", *map(str, paths.values()), "--out",
                           str(out), "--json", "--no-progress", *args],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = list(paths)
    records: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in names}
    for topic in topics:
        with open(out / f"{topic}.jsonl") as f:
            for line in f:
                rec = json.loads(line)
                records[names[int(rec["source_id"].rsplit("-", 1)[1])]].setdefault(topic, []).append(rec)
    return json.loads(proc.stdout), records


def transaction(source: str, n: int, **fields: Any) -> dict[str, Any]:
    """The ``n``-th wire.transactions record of ``source``: connection ``{source}-{n}``,
    client port 40000 + n, a GET of ``/p/{n}`` answered 200 by 10.0.0.2:80; ``fields``
    replace or add fields."""
    return {"connection_id": f"{source}-{n}", "source_id": source, "protocol": "http/1.1",
            "client_ip": "10.0.0.1", "client_port": 40000 + n, "server_ip": "10.0.0.2", "server_port": 80,
            "request_ts_us": 1_800_000_000_000_000 + n, "method": "GET", "path": f"/p/{n}", "status": 200,
            **fields}


def publish(broker: Any, registry: Any, topic: str, records: Iterable[dict[str, Any]],
            key: str = "connection_id") -> None:
    """Emit ``records`` on ``topic``, each keyed by its field ``key``, through the
    pipeline's own publisher (Avro, the registry's schema), and wait until all are
    delivered."""
    # imported here, not at the top: tests/conftest.py imports this module, and the hooks
    # there should not load the pipeline's modules for every test
    from wirestream.processors.output import OutputPublisher

    from wirestream.codec import AvroCodec

    publisher = OutputPublisher(broker.bootstrap, AvroCodec(registry.url), "test")
    for r in records:
        publisher.emit(topic, r[key], r)
    publisher.flush()


#: Set to a unique value in a command's environment, it marks every process the command
#: starts (inherited whatever their session, also once orphaned).
TAG_VARIABLE = "WIRESTREAM_TEST_STOP"


def tagged_processes(tag: str) -> dict[int, str]:
    """pid -> command line of every live process whose environment carries ``tag``."""
    found = {}
    marker = f"{TAG_VARIABLE}={tag}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone meanwhile, or a zombie (no environment to read)
        if marker in env:
            found[int(entry)] = cmdline
    return found


def assert_same(expected: dict[str, Any], got: dict[str, Any], what: str) -> None:
    """The records of two runs, topic by topic, equal record for record (the first
    difference named)."""
    assert set(expected) == set(got), what
    for topic in expected:
        e, g = expected[topic], got[topic]
        assert len(e) == len(g), f"{what}: {topic}: {len(g)} records, expected {len(e)}"
        for n, (a, b) in enumerate(zip(e, g, strict=True)):
            assert a == b, f"{what}: {topic} record {n} differs:\n{a}\n{b}"


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 10.0) -> None:
    """Wait until ``proc`` (a server named ``what``) listens on 127.0.0.1:``port``;
    AssertionError if it exits first or does not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g} s")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop ``proc`` with ``sig`` (SIGINT: tcpdump writes what it holds), killed if it
    does not exit within 10 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_in_thread(run: Callable[[Callable[[], bool]], Any]) -> Callable[[], None]:
    """``run(stopping)`` (a sink's or the live view's loop) started in a thread; returned:
    what tells it to stop and waits for it."""
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(stop.is_set,), daemon=True)
    thread.start()

    def stop_and_join() -> None:
        stop.set()
        thread.join(30)

    return stop_and_join


def read_raw(bootstrap: str, topic: str, start: dict[tuple[str, int], int]) -> list[tuple[int, bytes]]:
    """(partition, value) of every message of ``topic`` from ``start``, in offset order per partition."""
    from confluent_kafka import Consumer, TopicPartition

    from wirestream.kafka import consumer_config
    from wirestream.reader import end_offsets

    end = end_offsets(bootstrap, [topic])
    consumer = Consumer(consumer_config(bootstrap))
    consumer.assign([TopicPartition(topic, p, start.get((topic, p), 0)) for (_, p) in end])
    # until each partition's end offset as it was (messages in a batch may share offsets
    # below it on some brokers: offsets, not counts, say when we are done)
    reached = {p: start.get((topic, p), 0) for (_, p) in end}
    out = []
    deadline = time.monotonic() + 30
    while any(reached[p] < end[topic, p] for p in reached) and time.monotonic() < deadline:
        for m in consumer.consume(500, 0.5):
            if m.error() is None:
                out.append((m.partition(), m.value()))
                reached[m.partition()] = max(reached[m.partition()], m.offset() + 1)
    consumer.close()
    assert all(reached[p] >= end[topic, p] for p in reached), (reached, end)
    return out


class RecordingPublisher:
    """A packet pipeline's publisher (processors.output.OutputPublisher's interface),
    keeping what it is given: records by topic, and the stats reports."""

    def __init__(self) -> None:
        self.out: dict[str, list[dict[str, Any]]] = {}
        self.stats: list[dict[str, Any]] = []

    def emit(self, topic: str, key: str | None, record: dict[str, Any]) -> None:
        self.out.setdefault(topic, []).append(dict(record))

    def send_to_partition(self, topic: str, partition: int, record: dict[str, Any]) -> None:
        pass

    def poll(self) -> None:
        pass

    def publish_stats(self, **report: Any) -> None:
        self.stats.append(report)


# --- the L7 protocol tests: a capture of a real server's port, analysed, and tshark's view


def tcpdump_loopback(pcap: Path, port: int, *more_ports: int) -> subprocess.Popen:
    """tcpdump on ``lo`` for ``tcp port PORT`` (or any of ``more_ports``), once it listens (and a moment more: it
    says so before its filter is in). Immediate mode (each packet handed over as it
    comes: nothing left in the ring at Ctrl-C) and a 64 MB buffer (a loaded machine must
    not drop a burst). Stop it with ``stop_process(proc, signal.SIGINT)``."""
    proc = subprocess.Popen([shutil.which("tcpdump") or "tcpdump", "-i", "lo", "--immediate-mode", "-U", "-B",
                             "65536", "-w", str(pcap), " or ".join(f"tcp port {p}" for p in (port, *more_ports))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    said = proc.stderr.readline()
    assert "listening" in said, said
    time.sleep(1.0)
    return proc


def analyze_to(pcap: Path, out: Path, *extra: str) -> dict[str, Any]:
    """``wirestream analyze PCAP --out OUT --json``: its summary (the records are in
    ``OUT/<topic>.jsonl``, :func:`read_jsonl`)."""
    proc = subprocess.run([sys.executable, "-m", "wirestream", "analyze", str(pcap), "--out", str(out), "--json",
                           "--no-progress", *extra], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def pdml_messages(pcap: Path, server_port: int, dissector: str) -> dict[int, list[tuple[str, dict[str, str], str]]]:
    """tshark's messages of ``dissector`` (decoded as it on the server's port), read as
    PDML (one ``proto`` element per message, several per frame), per connection (its
    client port), in order: (``c`` from the client or ``s``, the first value of each of
    the message's fields, the message's showname)."""
    from collections import defaultdict
    from xml.etree import ElementTree

    out = subprocess.run([shutil.which("tshark") or "tshark", "-r", str(pcap), "-d",
                          f"tcp.port=={server_port},{dissector}", "-T", "pdml"],
                         capture_output=True, timeout=300, check=True).stdout
    conns: dict[int, list[tuple[str, dict[str, str], str]]] = defaultdict(list)
    for packet in ElementTree.fromstring(out).iter("packet"):
        ports = {f.get("name"): int(f.get("show") or 0) for f in packet.iter("field")
                 if f.get("name") in ("tcp.srcport", "tcp.dstport")}
        from_client = ports["tcp.dstport"] == server_port
        client = ports["tcp.srcport"] if from_client else ports["tcp.dstport"]
        for proto in packet.iter("proto"):
            if proto.get("name") != dissector:
                continue
            fields: dict[str, str] = {}
            for f in proto.iter("field"):
                name = f.get("name") or ""
                if name.startswith(f"{dissector}.") and name not in fields:
                    fields[name] = f.get("show") or ""
            conns[client].append(("c" if from_client else "s", fields, proto.get("showname") or ""))
    return conns


def gather(fetch: Callable[[], list], want: int, timeout: float = 10.0) -> list:
    """Call ``fetch`` (a reader's poll: what came within its own short wait) until it has
    given ``want`` items in all, or ``timeout`` seconds have passed; all it gave."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += fetch()
    return got
