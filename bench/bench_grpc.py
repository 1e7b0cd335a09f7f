"""HTTP/2 and gRPC analysis: cost per record of the core's connection and of Http2Analyzer, against tshark.

Two parts (issue 20, "the bench: cost per record of each parser"), as bench_redis.py:

1. **micro** (in memory, no Kafka): an HTTP/2 connection is built (``--calls`` unary
   gRPC calls, default 100,000, on odd stream ids, several in flight: HEADERS with the
   request's pseudo-headers and gRPC headers as HPACK literals added to the dynamic
   table the first time and indexed after, one DATA frame with one message each way,
   the response's HEADERS and trailers) and fed, best of ``--runs``, through
   ``wirestream._core.H2Connection`` alone (frames, HPACK, streams, the dicts it builds)
   and through ``Http2Analyzer`` (records emitted to a counter). Checks one record per
   call, every status and message count right.
2. **end to end** (root: tcpdump): a grpcio server (a unary echo method, generic
   handlers) on a free loopback port, tcpdump on ``lo`` while a grpcio client makes
   ``--e2e-calls`` unary calls over ``--channels`` channels; then ``wirestream analyze``
   (and ``--no-l7``), tshark's ``http2`` dissector (``-d tcp.port==P,http2``, ``-z
   io,stat`` on its stream ids) and its plain TCP dissection (the floor), timed;
   cross-check (untimed): one record per call the client made.

    sudo .venv/bin/python bench/bench_grpc.py [--calls N] [--e2e-calls N]
    .venv/bin/python bench/bench_grpc.py --no-e2e                # micro only, no root

Exit status: 0 done and the cross-checks hold; 1 a cross-check failed; 2 a tool or a
run failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from concurrent import futures
from pathlib import Path
from typing import Any

import l7_bench
from l7_bench import (
    Rows,
    analyze_runs,
    common_options,
    count_records,
    packets_of,
    print_table,
    tshark_runs,
)
from wirestream._core import H2Connection
from wirestream.processors.l7.base import L7Options, StreamContext
from wirestream.processors.l7.http2 import Http2Analyzer

SEGMENT = 1460
IN_FLIGHT = 8  # calls sent before their answers are read
SERVICE = "bench.Echo"


# ------------------------------------------------------------------ 1. micro ---
def _frame(typ: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([typ, flags]) + struct.pack(">I", stream) + payload


def _literal(name: bytes, value: bytes, index: bool) -> bytes:
    """A literal with a new name: added to the dynamic table (0x40) or not (0x00)."""
    return bytes([0x40 if index else 0x00, len(name)]) + name + bytes([len(value)]) + value


def _message(data: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(data)) + data


def build_conversation(calls: int) -> tuple[list[tuple[int, bytes, int]], Counter[int]]:
    """The client's and the server's bytes in capture order; the gRPC statuses expected."""
    request_fields = [(b":path", f"/{SERVICE}/Say".encode()), (b":authority", b"10.0.0.2:50051"),
                      (b"content-type", b"application/grpc"), (b"te", b"trailers"),
                      (b"user-agent", b"grpc-python/1.60 grpc-c/37.0.0 (linux; chttp2)")]
    # the first request adds its literals to the table (indexes 62..66, newest first);
    # later ones refer to them: 0x80 | index
    first = b"\x83\x86" + b"".join(_literal(n, v, True) for n, v in request_fields)
    later = b"\x83\x86" + bytes(0x80 | (62 + len(request_fields) - 1 - i) for i in range(len(request_fields)))
    response_first = b"\x88" + _literal(b"content-type", b"application/grpc", True)
    response_later = b"\x88\xbe"
    statuses: Counter[int] = Counter()
    segments: list[tuple[int, bytes, int]] = []
    ts = 1_700_000_000_000_000

    def send(direction: int, data: bytes) -> None:
        nonlocal ts
        for i in range(0, len(data), SEGMENT):
            ts += 5
            segments.append((direction, data[i:i + SEGMENT], ts))
        ts += 90

    send(0, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b""))
    send(1, _frame(4, 0, 0, b"") + _frame(4, 1, 0, b""))
    n = 0
    while n < calls:
        batch = range(n, min(calls, n + IN_FLIGHT))
        client = b""
        server = b""
        for i in batch:
            stream = 2 * i + 1
            client += _frame(1, 4, stream, first if i == 0 else later)
            client += _frame(0, 1, stream, _message(b"request-%08d" % i))
            status = 14 if i % 25 == 24 else 0
            statuses[status] += 1
            server += _frame(1, 4, stream, response_first if i == 0 else response_later)
            server += _frame(0, 0, stream, _message(b"response-%08d-" % i + b"x" * 40))
            server += _frame(1, 5, stream, _literal(b"grpc-status", str(status).encode(), False)
                             + _literal(b"grpc-message", b"" if status == 0 else b"unavailable", False))
        send(0, client)
        send(1, server)
        n += len(batch)
    return segments, statuses


class Sink:
    def __init__(self) -> None:
        self.records = 0
        self.statuses: Counter[int] = Counter()
        self.messages: Counter[tuple[int, int]] = Counter()
        self.last: dict[str, Any] | None = None

    def __call__(self, topic: str, key: str | None, record: dict[str, Any]) -> None:
        self.records += 1
        self.statuses[record["grpc_status"]] += 1
        self.messages[(record["grpc_request_messages"], record["grpc_response_messages"])] += 1
        self.last = record


def run_core(segments: list[tuple[int, bytes, int]]) -> tuple[float, float, int]:
    core = H2Connection(0)
    events = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for direction, data, ts in segments:
        events += len(core.data(direction, data, ts))
    return time.perf_counter() - w0, time.process_time() - c0, events


def run_analyzer(segments: list[tuple[int, bytes, int]]) -> tuple[float, float, Sink, Counter[str]]:
    sink = Sink()
    stats: Counter[str] = Counter()
    ctx = StreamContext(ips=("10.0.0.1", "10.0.0.2"), ports=(50000, 50051), connection_id=lambda: "bench-h2-0",
                        emit=sink, options=L7Options(), stats=stats, community_id="1:bench")
    analyzer = Http2Analyzer(ctx, 0)
    w0, c0 = time.perf_counter(), time.process_time()
    for direction, data, ts in segments:
        analyzer.on_data(direction, data, ts)
    analyzer.on_close(segments[-1][2])
    return time.perf_counter() - w0, time.process_time() - c0, sink, stats


def micro(calls: int, runs: int) -> tuple[list[dict[str, Any]], list[str]]:
    t0 = time.perf_counter()
    segments, statuses = build_conversation(calls)
    size = sum(len(d) for _, d, _ in segments)
    print(f"== micro: {calls:,} unary gRPC calls ({IN_FLIGHT} in flight, 1 in 25 UNAVAILABLE), {len(segments):,} "
          f"segments, {size / 1e6:,.1f} MB (built in {time.perf_counter() - t0:.1f} s)")
    failures: list[str] = []
    core = min((run_core(segments) for _ in range(runs)), key=lambda r: r[1])
    if core[2] != calls:
        failures.append(f"micro: the core gave {core[2]:,} events, {calls:,} expected")
    best = None
    for _ in range(runs):
        r = run_analyzer(segments)
        if best is None or r[1] < best[1]:
            best = r
    assert best is not None
    wall, cpu, sink, stats = best
    if dict(sink.statuses) != dict(statuses) or sink.messages != Counter({(1, 1): calls}):
        failures.append(f"micro: the analyser emitted statuses {dict(sink.statuses)} and messages "
                        f"{dict(sink.messages)}, expected {dict(statuses)}, (1, 1) each")
    bad = {k: v for k, v in stats.items() if k.startswith(("http2_parse_error", "http2_hpack_error",
                                                           "http2.unknown"))}
    if bad:
        failures.append(f"micro: unexpected analyser counters {bad}")
    rows = [
        {"stage": "H2Connection (core)", "wall_s": core[0], "cpu_s": core[1]},
        {"stage": "Http2Analyzer (records)", "wall_s": wall, "cpu_s": cpu},
    ]
    print(f"\n   best of {runs} (lowest CPU); per record = one call: its stream's frames both ways")
    print(f"   {'stage':<26} {'wall s':>8} {'CPU s':>8} {'ns/rec':>9} {'CPU ns/rec':>11} {'MB/s':>8} {'records/s':>12}")
    for r in rows:
        r["ns_per_record"] = r["wall_s"] * 1e9 / calls
        r["cpu_ns_per_record"] = r["cpu_s"] * 1e9 / calls
        r["mb_per_s"] = size / 1e6 / r["wall_s"]
        print(f"   {r['stage']:<26} {r['wall_s']:>8.3f} {r['cpu_s']:>8.3f} {r['ns_per_record']:>9,.0f} "
              f"{r['cpu_ns_per_record']:>11,.0f} {r['mb_per_s']:>8,.1f} {calls / r['wall_s']:>12,.0f}")
    extra = rows[1]["cpu_ns_per_record"] - rows[0]["cpu_ns_per_record"]
    print(f"   the analyser's Python (the record dict, gRPC names, message decoding): {extra:,.0f} CPU ns per record")
    if sink.last is not None:
        print("   a record: " + json.dumps({k: sink.last[k] for k in ("method", "path", "status", "grpc_service",
                                                                      "grpc_method", "grpc_status", "latency_us")}))
    return rows, failures


# ------------------------------------------------------------- 2. end to end ---
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capture(work: Path, args: argparse.Namespace) -> tuple[Path, int, dict[str, Any]]:
    import grpc

    if shutil.which("tcpdump") is None:
        raise RuntimeError("tcpdump is not installed")
    port = free_port()
    cap = work / f"grpc_{port}.pcap"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: b"echo:" + request)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Say": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    dump = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "--immediate-mode", "-U", "-B", "65536", "-w", str(cap), "tcp", "port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert dump.stderr is not None
        line = dump.stderr.readline().decode(errors="replace")
        if "listening" not in line:
            raise RuntimeError(f"tcpdump did not start: {line.strip()}")
        time.sleep(0.5)
        print(f"== capture: {args.e2e_calls:,} unary calls over {args.channels} grpcio channels "
              f"(tcpdump -i lo tcp port {port})", flush=True)
        t0 = time.perf_counter()
        per = args.e2e_calls // args.channels
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(args.channels)]
        stubs = [c.unary_unary(f"/{SERVICE}/Say") for c in channels]
        pool = futures.ThreadPoolExecutor(max_workers=args.channels)
        done = list(pool.map(lambda stub: sum(1 for i in range(per) if stub(b"req-%d" % i, timeout=30)), stubs))
        for c in channels:
            c.close()
        wall = time.perf_counter() - t0
        made = sum(done)
        print(f"   {made:,} calls in {wall:.2f} s ({made / wall:,.0f} calls/s)")
        time.sleep(0.5)
    finally:
        dump.send_signal(signal.SIGTERM)
        tail = dump.communicate(timeout=30)[1].decode(errors="replace")
        server.stop(0)
    dropped = [s.strip() for s in tail.splitlines() if "dropped" in s or "captured" in s]
    print("   tcpdump: " + "; ".join(dropped))
    return cap, port, {"calls": made, "tcpdump": dropped}


def e2e(work: Path, args: argparse.Namespace) -> tuple[Rows, list[str]]:
    cap, port, said = capture(work, args)
    packets = packets_of(cap)
    print(f"   {cap.stat().st_size / 1e6:,.1f} MB, {packets:,} packets")
    failures: list[str] = []
    rows, out = analyze_runs(work, cap, args.no_baseline)
    records, statuses = count_records(out / "wire.transactions.jsonl",
                                      lambda r: (r["grpc_method"], r["grpc_status"], r["error"]))
    print(f"   wirestream records: {records:,} ({dict(statuses.most_common(4))})")
    rows[0]["records"] = records
    if statuses != Counter({("Say", 0, None): said["calls"]}):
        failures.append(f"e2e: {dict(statuses)} for {said['calls']:,} OK calls")
    tshark, frames, counted = tshark_runs(work, cap, port, "http2", "COUNT(http2.streamid)http2.streamid")
    print(f"   tshark http2: {frames:,} frames dissected as http2, {counted:,} HTTP/2 frames")
    rows += tshark
    print_table(rows, packets, records, "HTTP/2")
    for r in rows:
        r["capture"] = said
    return rows, failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100_000, help="micro: calls in the connection (100,000)")
    ap.add_argument("--e2e-calls", type=int, default=20_000, help="e2e: unary calls the client makes (20,000)")
    ap.add_argument("--channels", type=int, default=4, help="e2e: grpcio channels, one thread each (4)")
    common_options(ap)
    args = ap.parse_args(argv)
    return l7_bench.main("bench_grpc", args, lambda: micro(args.calls, args.runs), lambda work: e2e(work, args))


if __name__ == "__main__":
    sys.exit(main())
