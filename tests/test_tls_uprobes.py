"""TLS plaintext from OpenSSL uprobes (issue 19, live half): ``wirestream produce tls-plaintext``.

A real nginx serves HTTPS on loopback (self-signed certificate); ``wirestream produce
tls-plaintext`` (the real uprobes of bpf/tls_plaintext.c on the system's libssl.so.3, no
--pid filter) runs while curl, which links libssl.so.3, makes several requests on one
connection with ``--trace``. The chunks read back from the broker must be, byte for
byte, what curl's own trace says it sent and received (its "Send header/data" and "Recv
header/data" sections: the plaintext curl handed to and got from OpenSSL), in order, with
contiguous offsets; curl's 4-tuple (its local port from the trace, nginx's port) and its
pid, process name and thread; nginx's worker's chunks are the mirror image (its recv is
curl's send) on the same connection, in the same partition (the canonical connection key
of wire.packets). The key-log path then gets the same transactions: tcpdump captured the
same traffic and curl logged its secrets, ``wirestream analyze --tls-keylog`` decrypts
the capture, and the uprobe chunks joined to their connection
(processors/tls_plaintext_join.py) give the same transactions (method, path, host, status,
client and server, body sizes, ``tls: true``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    RecordingPublisher,
    ebpf_unavailable,
    free_port,
    needs,
    read_raw,
    stop_process,
    wait_port,
)
from tls_certs import self_signed

NGINX = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx") or None
CURL = shutil.which("curl")
TCPDUMP = shutil.which("tcpdump")


def _missing() -> str | None:
    for name, path in (("nginx", NGINX), ("curl", CURL), ("tcpdump", TCPDUMP)):
        if not path:
            return f"{name} is not installed"
    return None


def _uprobes_unavailable() -> str | None:
    from wirestream.doctor import diagnose

    report = diagnose(probe=True)
    return None if report.tls_plaintext else f"uprobes: {report.tls_plaintext_reason}"


pytestmark = [needs(_missing()), needs(ebpf_unavailable()), needs(_uprobes_unavailable())]

#: requested on one connection (--next keeps it); /big's body is larger than one SSL
#: record (16 KiB), so it comes in several SSL_read calls
PATHS = ("/first", "/missing", "/big", "/teapot")
BIG = b"".join(b"line %05d of a body that spans several TLS records\n" % i for i in range(800))

NGINX_CONF = """
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
daemon off;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ return 200 "hello $uri\\n"; }}
        location /missing {{ return 404; }}
        location /teapot {{ return 418 "short and stout\\n"; }}
        location /big {{ root {d}/www; try_files /big.txt =404; }}
    }}
}}
"""




def curl_trace(path: Path) -> tuple[bytes, bytes]:
    """(bytes curl sent, bytes it received) from ``curl --trace``: the
    hex dumps of its "Send header"/"Send data" and "Recv header"/"Recv data" sections."""
    sent, received = bytearray(), bytearray()
    target: bytearray | None = None
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("=> Send header", "=> Send data")):
            target = sent
        elif line.startswith(("<= Recv header", "<= Recv data")):
            target = received
        elif line.startswith(("=>", "<=", "==")):
            target = None  # SSL records, Info lines
        elif target is not None and re.match(r"[0-9a-f]{4}: ", line):
            # "0010: 69 74 6c ... 75 itle>404 Not Fou": 16 bytes in hex (48 columns), then text
            target.extend(bytes.fromhex("".join(line[6:54].split())))
    return bytes(sent), bytes(received)


class Run:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.pcap = directory / "https.pcap"
        self.keys = directory / "keys.log"
        self.trace = directory / "curl.trace"
        self.port = 0
        self.curl_pid = 0
        self.nginx_pids: set[int] = set()
        self.chunks: list[dict[str, Any]] = []
        self.partitions: dict[tuple, set[int]] = {}
        self.producer_out = ""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, broker, registry) -> Iterator[Run]:
    from wirestream.codec import AvroCodec
    from wirestream.reader import TopicReader, end_offsets
    from wirestream.topics import TLS_PLAINTEXT

    d = tmp_path_factory.mktemp("tlsuprobes")
    r = Run(d)
    cert, key = self_signed(d, "nginx")
    (d / "www").mkdir()
    (d / "www" / "big.txt").write_bytes(BIG)
    r.port = free_port()
    conf = d / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=d, port=r.port, cert=cert, key=key))
    start = end_offsets(broker.bootstrap, (TLS_PLAINTEXT,))
    env = {**os.environ, "WIRESTREAM_BOOTSTRAP": broker.bootstrap, "WIRESTREAM_REGISTRY": registry.url}
    producer = subprocess.Popen([sys.executable, "-m", "wirestream", "produce", "tls-plaintext", "--cost",
                                 "--max-data", "16384", "--source-name", "uprobes-test"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(d)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        said = [producer.stderr.readline()]
        while "probing" not in said[-1] and said[-1] and len(said) < 10:
            said.append(producer.stderr.readline())  # bcc's own complaints may come first
        assert "probing" in said[-1], (said, producer.poll())
        wait_port(r.port, nginx, "nginx")
        r.nginx_pids = {int(p) for p in subprocess.run(["pgrep", "-P", str(nginx.pid)], capture_output=True,
                                                         text=True).stdout.split()}
        tcpdump = subprocess.Popen([TCPDUMP, "-i", "lo", "-U", "-w", str(r.pcap), f"tcp port {r.port}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # tcpdump says "listening" before its filter is in: give it time
        cmd = [CURL, "-sk", "--http1.1", "--trace", str(r.trace)]
        for i, path in enumerate(PATHS):
            cmd += (["--next"] if i else []) + ["-sk", "--http1.1", "-o", os.devnull,
                                                f"https://127.0.0.1:{r.port}{path}"]
        curl = subprocess.Popen(cmd, env={**os.environ, "SSLKEYLOGFILE": str(r.keys)})
        r.curl_pid = curl.pid
        assert curl.wait(30) == 0
        time.sleep(1.0)
        stop_process(tcpdump, signal.SIGINT)
    finally:
        stop_process(nginx, signal.SIGQUIT)
        time.sleep(0.5)
        producer.send_signal(signal.SIGTERM)
        out, err = producer.communicate(timeout=60)
    assert producer.returncode == 0, err[-3000:]
    r.producer_out = out
    pids = {r.curl_pid} | r.nginx_pids
    with TopicReader(broker.bootstrap, AvroCodec(registry.url), [TLS_PLAINTEXT], start) as reader:
        ends, deadline = 0, time.monotonic() + 20
        parts = len(start)
        while ends < parts and time.monotonic() < deadline:
            for m in reader.poll(0.3):
                rec = m.record
                if rec is None or not rec["source_id"].startswith("uprobes-test-"):
                    continue
                if rec["end_of_input"]:
                    ends += 1
                elif rec["pid"] in pids:
                    r.chunks.append(rec)
                    ends_key = tuple(sorted([(rec["local_ip"], rec["local_port"]),
                                             (rec["remote_ip"], rec["remote_port"])]))
                    r.partitions.setdefault(ends_key, set()).add(m.partition)
    assert ends == len(start), f"end-of-input markers: {ends} of {len(start)}"
    yield r


def _stream(chunks: list[dict[str, Any]], direction: str) -> list[dict[str, Any]]:
    return sorted((c for c in chunks if c["direction"] == direction), key=lambda c: c["seq"])


def _check_stream(chunks: list[dict[str, Any]], expected: bytes, what: str) -> None:
    """Chunks in order, contiguous, each holding the expected bytes at its offset."""
    assert chunks, f"{what}: no chunks"
    assert [c["seq"] for c in chunks] == list(range(len(chunks))), what
    at = 0
    for c in chunks:
        assert c["offset"] == at, (what, c["seq"], c["offset"], at)
        assert c["data"] == expected[at:at + len(c["data"])], (what, c["seq"])
        assert c["truncated"] == (len(c["data"]) < c["length"]), c
        at += c["length"]
    assert at == len(expected), f"{what}: {at} bytes in chunks, {len(expected)} expected"


def test_curls_plaintext_is_what_curl_says(run: Run) -> None:
    sent, received = curl_trace(run.trace)
    assert sent.startswith(b"GET /first HTTP/1.1\r\n") and BIG in received, (sent[:60], len(received))
    ours = [c for c in run.chunks if c["pid"] == run.curl_pid]
    assert {c["process"] for c in ours} == {"curl"} and {c["tid"] for c in ours} == {run.curl_pid}, ours[:2]
    assert {c["stream_id"] for c in ours} and len({c["stream_id"] for c in ours}) == 1, "one SSL object"
    assert {c["function"] for c in ours} <= {"SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex"}
    for c in ours:
        assert (c["local_ip"], c["remote_ip"], c["remote_port"], c["ip_version"]) == \
            ("127.0.0.1", "127.0.0.1", run.port, 4), c
    assert len({c["local_port"] for c in ours}) == 1
    _check_stream(_stream(ours, "send"), sent, "curl send")
    _check_stream(_stream(ours, "recv"), received, "curl recv")


def test_nginx_sees_the_mirror_image(run: Run) -> None:
    sent, received = curl_trace(run.trace)
    theirs = [c for c in run.chunks if c["pid"] in run.nginx_pids]
    curl_port = {c["local_port"] for c in run.chunks if c["pid"] == run.curl_pid}
    assert {c["process"] for c in theirs} == {"nginx"}, {c["process"] for c in theirs}
    for c in theirs:
        assert c["local_port"] == run.port and {c["remote_port"]} == curl_port, c
    _check_stream(_stream(theirs, "recv"), sent, "nginx recv")
    _check_stream(_stream(theirs, "send"), received, "nginx send")


def test_partitioned_like_the_packets(run: Run, broker) -> None:
    from wirestream.broker import partition_count
    from wirestream.packet_block import PROTO_TCP, canonical_key, partition_for
    from wirestream.topics import PACKETS, TLS_PLAINTEXT

    assert partition_count(broker.bootstrap, TLS_PLAINTEXT) == partition_count(broker.bootstrap, PACKETS)
    n = partition_count(broker.bootstrap, TLS_PLAINTEXT)
    assert len(run.partitions) == 1, run.partitions  # both processes' chunks: one connection
    ((ends, parts),) = run.partitions.items()
    (a_ip, a_port), (b_ip, b_port) = ends
    key = canonical_key(PROTO_TCP, socket.inet_aton(a_ip) + b"\0" * 12, a_port,
                        socket.inet_aton(b_ip) + b"\0" * 12, b_port)
    assert parts == {partition_for(key, n)}, (parts, n)


def test_cost_is_measured(run: Run) -> None:
    cost = {name: (int(runs), int(ns)) for name, runs, ns in
            re.findall(r"cost (\S+): (\d+) runs, (\d+) ns/run", run.producer_out)}
    assert cost["leave"][0] >= len(run.chunks), run.producer_out
    assert cost["enter_read"][0] + cost["enter_read_ex"][0] > 0, run.producer_out
    print(run.producer_out)


#: what both paths must agree on, per transaction
FIELDS = ("method", "path", "host", "status", "client_ip", "client_port", "server_ip", "server_port",
          "request_body_size", "response_body_size", "tls")


def test_same_transactions_as_the_key_log_path(run: Run, tmp_path: Path) -> None:
    from wirestream.processors.tls_plaintext_join import PlaintextJoin

    keylog = _keylog_transactions(run, tmp_path / "out")
    want = [tuple(t[f] for f in FIELDS) for t in keylog]
    assert [w[:2] + w[3:4] for w in want] == [("GET", p, s) for p, s in zip(PATHS, (200, 404, 200, 418), strict=True)], want
    assert all(t["tls"] for t in keylog) and keylog[2]["response_body_size"] == len(BIG)

    emitted: list[dict[str, Any]] = []
    join = PlaintextJoin(lambda topic, key, record: emitted.append(record))
    for c in sorted(run.chunks, key=lambda c: c["ts_us"]):
        join.add(c)
    join.close()
    got = [tuple(t[f] for f in FIELDS) for t in emitted if "method" in t]
    assert got == want, (got, want, join.stats)
    assert all(t["tls"] for t in emitted)


def test_truncated_chunks_are_gaps_the_analyser_survives(run: Run) -> None:
    """The producer keeps --max-data bytes per call (4096 by default): the join tells the
    analyser the rest is missing (a gap, as a lost TCP segment is), and every transaction
    is still there; the one whose body had the gap ends at it, marked as such."""
    from wirestream.processors.tls_plaintext_join import PlaintextJoin

    limit = 4096
    cut = []
    for c in run.chunks:
        c = dict(c)
        if c["length"] > limit:
            c["data"], c["truncated"] = c["data"][:limit], True
        cut.append(c)
    first = min(run.chunks, key=lambda c: c["ts_us"])
    view = [c for c in cut if (c["pid"], c["stream_id"]) == (first["pid"], first["stream_id"])]
    missing = sum(c["length"] - len(c["data"]) for c in view)
    assert missing > 0, "the /big body comes in reads of more than 4096 bytes"
    out: dict[str, list[dict[str, Any]]] = {"whole": [], "cut": []}
    for name, chunks in (("whole", run.chunks), ("cut", cut)):
        join = PlaintextJoin(lambda topic, key, record, name=name: out[name].append(record))
        for c in sorted(chunks, key=lambda c: c["ts_us"]):
            join.add(c)
        join.close()
        assert join.stats["tls_plaintext.gap_bytes"] == (missing if name == "cut" else 0), join.stats
        assert join.stats["tls_plaintext.other_view"] == len(run.chunks) - len(view), join.stats
    whole, partial = out["whole"], out["cut"]
    assert [t["path"] for t in whole] == list(PATHS) and [t["path"] for t in partial] == list(PATHS)
    for w, p in zip(whole, partial, strict=True):
        if w["path"] == "/big":
            assert p["status"] == 200 and 0 < p["response_body_size"] < len(BIG), p
            assert p.get("error") and not w.get("error"), (p.get("error"), w.get("error"))
        else:
            assert p == w


def _keylog_transactions(run: Run, out: Path) -> list[dict[str, Any]]:
    """The key-log path's transactions of the run's capture (wirestream analyze)."""
    proc = subprocess.run([sys.executable, "-m", "wirestream", "analyze", str(run.pcap), "--out", str(out),
                           "--json", "--no-progress", "--tls-keylog", str(run.keys)],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in (out / "wire.transactions.jsonl").open()]


@pytest.fixture
def own_broker() -> Iterator[Any]:
    """A broker of the test's own: a new consumer group's worker reads its input topics
    from the start (on the shared broker, every earlier test's packets)."""
    from wirestream.broker import EmbeddedBroker

    with EmbeddedBroker() as own:
        yield own


def test_a_packet_worker_joins_the_plaintext_to_its_connection(run: Run, own_broker, registry,
                                                                tmp_path: Path) -> None:
    """The processors' side, as deployed: the uprobes' chunks (real Avro on a real broker,
    the partition of their connection) reach a ``wirestream process`` worker *before* the
    capture's packets, wait for the connection (``tls_plaintext_pending``), and once the
    packets are in, the worker's transactions are the key-log path's, with the
    ``connection_id`` of the connection record the same worker emits for curl's
    connection; nginx's chunks (the other view) are counted, not analysed twice."""
    import uuid

    from wirestream.producers.pcap_replay import replay_files

    from wirestream.codec import AvroCodec
    from wirestream.kafka import WireProducer
    from wirestream.packet_block import PROTO_TCP, canonical_key, partition_for
    from wirestream.reader import TopicReader, end_offsets, partitions_of
    from wirestream.topics import CONNECTIONS, PACKETS, STATS, TLS_PLAINTEXT, TRANSACTIONS

    broker = own_broker
    want = [tuple(t[f] for f in FIELDS) for t in _keylog_transactions(run, tmp_path / "keylog")]
    codec = AvroCodec(registry.url)
    env = {**os.environ, "WIRESTREAM_BOOTSTRAP": broker.bootstrap, "WIRESTREAM_REGISTRY": registry.url}
    group = f"plaintext-{uuid.uuid4().hex[:8]}"
    worker = subprocess.Popen([sys.executable, "-m", "wirestream", "process", "--role", "packets", "--no-windows",
                               "--group", group, "--checkpoint-interval", "0.5"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    counters: dict[str, int] = {}
    got: dict[str, list[dict[str, Any]]] = {CONNECTIONS: [], TRANSACTIONS: []}
    try:
        deadline = time.monotonic() + 90
        while not partitions_of(broker.bootstrap, [TLS_PLAINTEXT]) and time.monotonic() < deadline:
            time.sleep(0.2)  # the worker creates the topics
        partitions = len(partitions_of(broker.bootstrap, [PACKETS]))
        encode = codec.encoder(TLS_PLAINTEXT)
        producer = WireProducer(broker.bootstrap)

        def address(ip: str) -> bytes:
            return socket.inet_aton(ip) + b"\0" * 12

        for c in sorted(run.chunks, key=lambda c: c["ts_us"]):
            key = canonical_key(PROTO_TCP, address(c["local_ip"]), c["local_port"], address(c["remote_ip"]),
                                c["remote_port"])
            producer.produce(TLS_PLAINTEXT, encode(c), None, partition_for(key, partitions))
        producer.flush(30)
        with TopicReader(broker.bootstrap, codec, [STATS], "beginning") as reader:
            while counters.get("tls_plaintext_pending", 0) < len(run.chunks):
                assert time.monotonic() < deadline and worker.poll() is None, (counters, worker.stderr.read())
                for m in reader.poll(0.3):
                    if m.record and m.record["source_id"] == f"worker:{group}":
                        counters = m.record["counters"]
        start = end_offsets(broker.bootstrap, (CONNECTIONS, TRANSACTIONS, STATS))
        done = list(replay_files([str(run.pcap)], broker.bootstrap, codec, partitions, lambda i: f"{group}-{i}"))
        assert all(not isinstance(result, Exception) for _, result in done), done
        (source,) = [sid for sid, _ in done]
        finals = 0

        def complete() -> bool:
            # The final reports and the records they count are on different topics, which
            # a reader may get in any order: wait for the records too (as analyze does).
            return (finals >= partitions and counters.get("tls_plaintext_joined", 0) >= len(run.chunks)
                    and len(got[TRANSACTIONS]) >= len(want)
                    and any(c["final"] and c["server_port"] == run.port for c in got[CONNECTIONS]))

        with TopicReader(broker.bootstrap, codec, [CONNECTIONS, TRANSACTIONS, STATS], start) as reader:
            while not complete():
                assert time.monotonic() < deadline + 60 and worker.poll() is None, (
                    finals, counters, len(got[TRANSACTIONS]), len(got[CONNECTIONS]))
                for m in reader.poll(0.3):
                    if m.record is None:
                        continue
                    if m.topic == STATS:
                        if m.record["source_id"] == f"worker:{group}":
                            counters = m.record["counters"]
                        elif m.record["source_id"] == source and m.record["final"]:
                            finals += 1
                            counters_final = m.record["counters"]
                            if counters_final.get("tls_plaintext.chunks"):
                                got.setdefault("final_counters", []).append(counters_final)
                    elif m.record["source_id"] == source:
                        got[m.topic].append(m.record)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err[-3000:]
    transactions = got[TRANSACTIONS]
    assert [tuple(t[f] for f in FIELDS) for t in transactions] == want, (transactions, counters, got.get("final_counters"))
    (conn,) = [c for c in got[CONNECTIONS] if c["final"] and c["server_port"] == run.port]
    assert {t["connection_id"] for t in transactions} == {conn["connection_id"]}
    assert counters["tls_plaintext_joined"] == len(run.chunks) and counters["tls_plaintext_pending"] == 0
    # the engine's own counts, in its final report: one view analysed, the other counted
    (final,) = got["final_counters"]
    curl_chunks = sum(1 for c in run.chunks if c["pid"] == run.curl_pid)
    assert final["tls_plaintext.chunks"] + final["tls_plaintext.other_view"] == len(run.chunks)
    assert final["tls_plaintext.chunks"] in (curl_chunks, len(run.chunks) - curl_chunks), final


def test_plaintext_waiting_for_its_connection_survives_a_checkpoint(run: Run, broker, registry) -> None:
    """The chunks (first) and the packets, read back raw from the broker, through the
    packet pipeline: once straight, once with every partition snapshotted and restored
    into a new pipeline half-way through its packets (the chunks still waiting for their
    connection where the cut comes before its first packet); the records are the same."""
    import uuid
    from collections import Counter

    from wirestream.processors.engine import EngineOptions
    from wirestream.processors.l7.base import L7Options
    from wirestream.processors.packet_pipeline import PacketPipeline
    from wirestream.producers.pcap_replay import replay_files

    from wirestream.codec import AvroCodec
    from wirestream.kafka import WireProducer, ensure_process_topics
    from wirestream.packet_block import PROTO_TCP, canonical_key, partition_for
    from wirestream.reader import end_offsets
    from wirestream.topics import PACKETS, TLS_PLAINTEXT

    codec = AvroCodec(registry.url)
    prefix = f"plaintext-cp-{uuid.uuid4().hex[:8]}"
    partitions = ensure_process_topics(broker.bootstrap, 4, group=prefix, role="packets").packet_partitions
    start = end_offsets(broker.bootstrap, (PACKETS, TLS_PLAINTEXT))
    encode = codec.encoder(TLS_PLAINTEXT)
    producer = WireProducer(broker.bootstrap)
    for c in sorted(run.chunks, key=lambda c: c["ts_us"]):
        key = canonical_key(PROTO_TCP, socket.inet_aton(c["local_ip"]) + b"\0" * 12, c["local_port"],
                            socket.inet_aton(c["remote_ip"]) + b"\0" * 12, c["remote_port"])
        producer.produce(TLS_PLAINTEXT, encode({**c, "source_id": f"uprobes-{prefix}"}), None,
                         partition_for(key, partitions))
    producer.flush(30)
    done = list(replay_files([str(run.pcap)], broker.bootstrap, codec, partitions, lambda i: f"{prefix}-{i}"))
    assert all(not isinstance(result, Exception) for _, result in done), done
    # ours only: the topics hold earlier tests' messages too
    messages = {topic: [(p, v) for p, v in read_raw(broker.bootstrap, topic, start)
                        if codec.decode(v)["source_id"] in (f"uprobes-{prefix}", f"{prefix}-0")]
                for topic in (PACKETS, TLS_PLAINTEXT)}
    assert len(messages[TLS_PLAINTEXT]) == len(run.chunks)
    options = EngineOptions(l7=L7Options(), packet_partitions=partitions)

    def moved(old: PacketPipeline, part: int, state: bytes, sink: RecordingPublisher) -> PacketPipeline:
        new = PacketPipeline(codec, sink, options, source_prefix=prefix)  # type: ignore[arg-type]
        for p in {p for (_, p) in old.engines} | set(old.drop_joins) | set(old.plaintext_routers):
            if p != part:
                new.put_partition(p, *old.take_partition(p))
        new.restore_partition(part, state)
        return new

    def replay(cut: bool) -> dict[str, list[dict[str, Any]]]:
        sink = RecordingPublisher()
        pipeline = PacketPipeline(codec, sink, options, source_prefix=prefix)  # type: ignore[arg-type]
        for part, value in messages[TLS_PLAINTEXT]:
            pipeline.handle_tls_plaintext(part, value)
        assert pipeline.drop_counters()["tls_plaintext_pending"] == len(run.chunks)
        halfway = {p: n // 2 for p, n in Counter(p for p, _ in messages[PACKETS]).items()}
        seen: Counter[int] = Counter()
        for part, value in messages[PACKETS]:
            if cut and seen[part] == halfway[part]:
                pipeline = moved(pipeline, part, pipeline.snapshot_partition(part), sink)
            pipeline.handle(part, value)
            seen[part] += 1
        assert pipeline.drop_counters()["tls_plaintext_joined"] == len(run.chunks)
        return sink.out

    straight, restored = replay(False), replay(True)
    assert straight == restored
    assert [t["path"] for t in straight["wire.transactions"]] == list(PATHS)
    assert all(t["tls"] and t["community_id"] for t in straight["wire.transactions"])


#: One process, two ends of one TLS connection over loopback: a server on an SSLSocket
#: (OpenSSL does the socket I/O: its chunks have a connection) and a client on an
#: SSLObject over memory BIOs (the process moves the bytes itself: OpenSSL never touches
#: the socket, so its chunks have none). Waits for a line on stdin before talking.
MEMORY_BIO = r"""
import socket, ssl, sys, threading
cert, key = sys.argv[1:3]
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
print(srv.getsockname()[1], flush=True)
sys.stdin.readline()
def serve():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
    conn, _ = srv.accept()
    with ctx.wrap_socket(conn, server_side=True) as s:
        data = s.recv(100)
        s.sendall(b"pong:" + data)
t = threading.Thread(target=serve); t.start()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
obj = ctx.wrap_bio(incoming, outgoing)
sock = socket.create_connection(("127.0.0.1", srv.getsockname()[1]))
def pump():
    out = outgoing.read()
    if out:
        sock.sendall(out)
def call(fn, *args):
    while True:
        try:
            result = fn(*args); pump(); return result
        except ssl.SSLWantReadError:
            pump(); incoming.write(sock.recv(65536))
call(obj.do_handshake)
call(obj.write, b"ping")
print(call(obj.read, 100).decode(), sock.getsockname()[1], flush=True)
t.join()
"""


def test_memory_bio_chunks_are_counted_not_published(broker, registry, tmp_path: Path) -> None:
    """--pid: only that process. Its server end (SSLSocket) is published on its
    connection; its client end (SSLObject over memory BIOs) has no socket: counted as
    tls_plaintext_unresolved, not published."""
    from wirestream.codec import AvroCodec
    from wirestream.reader import TopicReader, end_offsets
    from wirestream.topics import TLS_PLAINTEXT

    cert, key = self_signed(tmp_path, "localhost")
    start = end_offsets(broker.bootstrap, (TLS_PLAINTEXT,))
    proc = subprocess.Popen([sys.executable, "-c", MEMORY_BIO, str(cert), str(key)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    env = {**os.environ, "WIRESTREAM_BOOTSTRAP": broker.bootstrap, "WIRESTREAM_REGISTRY": registry.url}
    producer = subprocess.Popen([sys.executable, "-m", "wirestream", "produce", "tls-plaintext",
                                 "--pid", str(proc.pid), "--source-name", "membio-test"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        said = [producer.stderr.readline()]
        while "probing" not in said[-1] and said[-1] and len(said) < 10:
            said.append(producer.stderr.readline())
        assert "probing" in said[-1], (said, producer.poll())
        proc.stdin.write("go\n")
        proc.stdin.flush()
        answer, client_port = proc.stdout.readline().split()
        assert answer == "pong:ping" and proc.wait(20) == 0
        time.sleep(0.5)
    finally:
        stop_process(proc)
        producer.send_signal(signal.SIGTERM)
        out, err = producer.communicate(timeout=60)
    assert producer.returncode == 0, err[-3000:]
    # the client's write and read
    assert re.search(r"not published: tls_plaintext_unresolved=2;", out), out
    chunks = []
    with TopicReader(broker.bootstrap, AvroCodec(registry.url), [TLS_PLAINTEXT], start) as reader:
        ends, deadline = 0, time.monotonic() + 20
        while ends < len(start) and time.monotonic() < deadline:
            for m in reader.poll(0.3):
                if m.record is None or not m.record["source_id"].startswith("membio-test-"):
                    continue
                if m.record["end_of_input"]:
                    ends += 1
                else:
                    chunks.append(m.record)
    assert ends == len(start)
    got = sorted((c["direction"], c["data"], c["local_port"], c["remote_port"], c["pid"]) for c in chunks)
    assert got == [("recv", b"ping", port, int(client_port), proc.pid),
                   ("send", b"pong:ping", port, int(client_port), proc.pid)], chunks
