"""gRPC over HTTP/2 (h2c, prior knowledge) on the wire: ``wire.transactions`` against grpcio.

A gRPC server and client written with ``grpcio`` in the test (generic handlers over raw
bytes: no generated code) on loopback; tcpdump records the server's port while the
client makes: unary calls, a server-streaming call (5 responses), a client-streaming
call (4 requests), a call the server fails with NOT_FOUND (``context.abort``), a call
to a method the server does not have (UNIMPLEMENTED), a call cancelled by the client
(RST_STREAM CANCEL), and a call with a 300 kB request (DATA across many frames and
flow-control windows). Then ``wirestream analyze`` reads the capture. The referees:

* tshark's ``http2`` dissector (``-d tcp.port==P,http2``, PDML: one element per frame),
  stream by stream: every stream it shows HEADERS for is a record with the same stream
  id, ``:method``, ``:path`` and ``:status``, and the ``grpc-status`` of its trailers;
* what the client sent and got: the status code of each call, the messages each way,
  the request's size, the cancellation.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import defaultdict
from concurrent import futures
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from helpers import (
    analyze_to,
    free_port,
    import_or_require,
    needs,
    read_jsonl,
    stop_process,
    tcpdump_loopback,
)

TSHARK = shutil.which("tshark")
TCPDUMP = shutil.which("tcpdump")


def _missing() -> str | None:
    for name, path in (("tcpdump", TCPDUMP), ("tshark", TSHARK)):
        if not path:
            return f"{name} is not installed (scripts/install --test installs it)"
    if os.geteuid() != 0:
        return "tcpdump on loopback needs root"
    return None


pytestmark = needs(_missing())

SERVICE = "wirestream.test.Echo"
BIG = 300_000  # (several flow-control windows; tcpdump on lo may lose segments of a much larger burst)


class Run:
    def __init__(self, d: Path) -> None:
        self.pcap = d / "grpc.pcap"
        self.port = 0
        #: method -> (the status code the client got, messages sent, messages received)
        self.calls: dict[str, tuple[str, int, int]] = {}


def _server(grpc: Any, port: int, cancelled: threading.Event) -> Any:
    def unary(request: bytes, context: Any) -> bytes:
        return b"echo:" + request[:16]

    def fail(request: bytes, context: Any) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such item: 42")

    def many(request: bytes, context: Any) -> Any:
        for i in range(5):
            yield b"part-%d" % i

    def collect(requests: Any, context: Any) -> bytes:
        return b"got %d" % sum(1 for _ in requests)

    def slow(request: bytes, context: Any) -> bytes:
        while context.is_active():
            time.sleep(0.05)
        cancelled.set()
        return b""

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Many": grpc.unary_stream_rpc_method_handler(many),
        "Collect": grpc.stream_unary_rpc_method_handler(collect),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    grpc = import_or_require("grpc")
    r = Run(tmp_path_factory.mktemp("grpc"))
    r.port = free_port()
    cancelled = threading.Event()
    server = _server(grpc, r.port, cancelled)
    tcpdump = tcpdump_loopback(r.pcap, r.port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{r.port}") as channel:
            def call(kind: str, method: str) -> Any:
                return getattr(channel, kind)(f"/{SERVICE}/{method}")

            for i in range(3):
                assert call("unary_unary", "Unary")(b"hello-%d" % i, timeout=10).startswith(b"echo:")
            r.calls["Unary"] = ("OK", 1, 1)
            assert len(list(call("unary_stream", "Many")(b"x", timeout=10))) == 5
            r.calls["Many"] = ("OK", 1, 5)
            assert call("stream_unary", "Collect")(iter([b"a", b"b", b"c", b"d"]), timeout=10) == b"got 4"
            r.calls["Collect"] = ("OK", 4, 1)
            for method in ("Fail", "Missing"):
                try:
                    call("unary_unary", method)(b"x", timeout=10)
                except grpc.RpcError as exc:
                    r.calls[method] = (exc.code().name, 1, 0)
            future = call("unary_unary", "Slow").future(b"x", timeout=10)
            time.sleep(0.3)
            future.cancel()
            assert cancelled.wait(5)
            r.calls["Slow"] = ("CANCELLED", 1, 0)
            assert call("unary_unary", "Unary")(b"b" * BIG, timeout=30).startswith(b"echo:")
        time.sleep(1.0)
        stop_process(tcpdump, signal.SIGINT)
    finally:
        if tcpdump.poll() is None:
            stop_process(tcpdump, signal.SIGINT)
        server.stop(0)
    return r


@pytest.fixture(scope="module")
def analyzed(run: Run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("grpc-analyze")
    analyze_to(run.pcap, out)
    return out


@pytest.fixture(scope="module")
def transactions(analyzed: Path) -> list[dict[str, Any]]:
    return read_jsonl(analyzed / "wire.transactions.jsonl")


def _tshark_streams(run: Run) -> dict[tuple[int, int], dict[str, str]]:
    """tshark's HEADERS per (client port, stream id): the pseudo-headers and grpc-status,
    from PDML (one ``http2.stream`` element per frame)."""
    out = subprocess.run([TSHARK, "-r", str(run.pcap), "-d", f"tcp.port=={run.port},http2", "-T", "pdml"],
                         capture_output=True, timeout=300, check=True).stdout
    streams: dict[tuple[int, int], dict[str, str]] = defaultdict(dict)
    for packet in ElementTree.fromstring(out).iter("packet"):
        ports = {f.get("name"): int(f.get("show")) for f in packet.iter("field")
                 if f.get("name") in ("tcp.srcport", "tcp.dstport")}
        client = ports["tcp.srcport"] if ports["tcp.dstport"] == run.port else ports["tcp.dstport"]
        for frame in packet.iter("field"):
            if frame.get("name") != "http2.stream":
                continue
            fields = {f.get("name"): f.get("show") for f in frame.iter("field")}
            if fields.get("http2.type") != "1":  # HEADERS
                continue
            stream = streams[(client, int(fields["http2.streamid"]))]
            for header in frame.iter("field"):
                if header.get("name") != "http2.header":
                    continue
                kv = {f.get("name"): f.get("show") for f in header.iter("field")}
                name, value = kv.get("http2.header.name"), kv.get("http2.header.value", "")
                if name in (":method", ":path", ":status", "grpc-status"):
                    stream[name] = value
    return streams


def test_every_stream_tshark_shows_is_a_record(run: Run, transactions: list[dict[str, Any]]) -> None:
    ours = {(t["client_port"], t["stream_id"]): t for t in transactions if t["server_port"] == run.port}
    theirs = _tshark_streams(run)
    assert set(ours) == set(theirs) and len(ours) == 9
    for key, t in theirs.items():
        mine = ours[key]
        assert (mine["method"], mine["path"]) == (t[":method"], t[":path"]), key
        assert mine["status"] == (int(t[":status"]) if ":status" in t else None), key
        assert mine["grpc_status"] == (int(t["grpc-status"]) if "grpc-status" in t else None), key
    for t in ours.values():
        assert t["protocol"] == "http/2" and t["host"] == f"127.0.0.1:{run.port}"


def test_each_call_is_what_the_client_saw(run: Run, transactions: list[dict[str, Any]]) -> None:
    codes = {"OK": 0, "NOT_FOUND": 5, "UNIMPLEMENTED": 12, "CANCELLED": None}
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in transactions:
        by_method[t["grpc_method"]].append(t)
    for method, (code, sent, received) in run.calls.items():
        for t in by_method[method]:
            assert t["grpc_service"] == SERVICE and t["path"] == f"/{SERVICE}/{method}"
            assert t["grpc_status"] == codes[code], (method, t)
            if code != "CANCELLED":
                assert (t["grpc_request_messages"], t["grpc_response_messages"]) == (sent, received), (method, t)
                assert t["latency_us"] is not None and t["error"] is None
    (slow,) = by_method["Slow"]
    assert slow["error"] == "rst_stream CANCEL by client" and slow["grpc_request_messages"] == 1
    (fail,) = by_method["Fail"]
    assert fail["grpc_message"] == "no such item: 42"
    big = max(by_method["Unary"], key=lambda t: t["request_body_size"])
    assert big["request_body_size"] == BIG + 5  # the message and its 5-byte prefix
    assert len(by_method["Unary"]) == 4


def test_each_grpc_method_has_windows_of_its_own(run: Run, transactions: list[dict[str, Any]], analyzed: Path) -> None:
    windows = [json.loads(line) for line in (analyzed / "wire.service-metrics.jsonl").open()]
    calls: dict[str, int] = defaultdict(int)
    errors: dict[str, int] = defaultdict(int)
    for w in windows:
        if w["scope"] == "operation":
            assert w["operation_protocol"] == "grpc" and w["operation_service"] == f"127.0.0.1:{run.port}"
            calls[w["operation"]] += w["requests"]
            errors[w["operation"]] += w["errors_4xx"] + w["errors_5xx"]
    mine: dict[str, int] = defaultdict(int)
    for t in transactions:
        mine[f"{t['grpc_service']}/{t['grpc_method']}"] += 1
    assert calls == mine
    # NOT_FOUND as a 404, UNIMPLEMENTED as a 501; the cancelled call has no status
    assert errors == {f"{SERVICE}/{m}": 1 if m in ("Fail", "Missing") else 0 for m in run.calls}
