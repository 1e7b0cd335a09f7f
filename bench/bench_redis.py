"""Redis analysis: cost per record of the RESP parser and of RedisAnalyzer, against tshark.

Two parts (issue 20, "the bench: cost per record of each parser"):

1. **micro** (in memory, no Kafka): a RESP conversation is built (``--commands``
   commands, default 200,000: GET/SET of 16-byte keys and 100-byte values, HGETALL of 10
   fields, INCR answered by an error, 10 KB values now and then, MGET; sent in pipelined
   batches of 10, each direction cut into 1,460-byte segments) and fed, best of
   ``--runs``, through ``wirestream._core.RespConnection`` alone (the Rust parser and the
   tuples it builds) and through ``RedisAnalyzer`` (parser, pairing, redaction, records
   emitted to a counter). Prints ns and CPU ns per command and MB/s, and checks every
   command came out (one record each, the errors as errors).
2. **end to end** (root: tcpdump): a redis-server on a free loopback port, tcpdump on
   ``lo`` while ``redis-benchmark -p P -n N -P 16 -t set,get,lpush,lrange_100 -q`` runs;
   then, on that capture, ``wirestream analyze CAP --json --no-progress --out TMP``
   (records: the lines of TMP/wire.queries.jsonl), the same with ``--no-l7`` (what the
   pipeline costs without any L7 analysis: broker, workers, TCP tracking), tshark's RESP
   dissector (tshark 4.0 has one, ``resp``, on port 6379 only: ``-d tcp.port==P,resp``;
   ``-z io,stat,0,...`` counts its frames and arrays, which makes it dissect every
   packet in full) and tshark's plain TCP dissection (``-z conv,tcp``, RESP disabled:
   the floor). Wall seconds, CPU seconds (wait4 of the process tree) and µs per record,
   every figure divided by wirestream's record count (the commands sent), so the rows
   compare the same work.

    sudo .venv/bin/python bench/bench_redis.py [--commands N] [--benchmark-requests N]
    .venv/bin/python bench/bench_redis.py --no-e2e              # micro only, no root
    sudo .venv/bin/python bench/bench_redis.py --no-micro --keep CAP.pcap

Exit status: 0 done and the cross-checks hold; 1 a cross-check failed (a command lost,
a record missing); 2 a tool or a run failed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
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
from wirestream._core import RespConnection
from wirestream.processors.l7.base import L7Options, StreamContext
from wirestream.processors.l7.redis import RedisAnalyzer

SEGMENT = 1460  # bytes per TCP segment's payload (Ethernet MTU), per direction
PIPELINE = 10  # commands per pipelined batch


# ------------------------------------------------------------------ 1. micro ---
def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


def _command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


def build_conversation(commands: int, seed: int = 20) -> tuple[list[tuple[int, bytes, int]], Counter[str], int]:
    """A client (direction 0) and a server (direction 1) exchanging ``commands`` commands
    in pipelined batches: the segments in capture order, the commands by name, the
    error replies among them."""
    rng = random.Random(seed)
    value = bytes(rng.randrange(97, 123) for _ in range(100))
    big = bytes(rng.randrange(97, 123) for _ in range(10_240))
    fields = [(b"field:%02d" % i, value[:40]) for i in range(10)]
    hgetall = b"*20\r\n" + b"".join(_bulk(f) + _bulk(v) for f, v in fields)
    ok, null = b"+OK\r\n", b"$-1\r\n"
    wrong = b"-ERR value is not an integer or out of range\r\n"
    names: Counter[str] = Counter()
    errors = 0
    segments: list[tuple[int, bytes, int]] = []
    ts = 1_700_000_000_000_000
    n = 0
    while n < commands:
        requests, replies = [], []
        for _ in range(min(PIPELINE, commands - n)):
            key = b"user:%011d" % rng.randrange(10**11)  # 16 bytes
            r = rng.random()
            if r < 0.40:
                requests.append(_command(b"GET", key))
                replies.append(_bulk(value) if rng.random() < 0.9 else null)
                names["GET"] += 1
            elif r < 0.75:
                requests.append(_command(b"SET", key, value))
                replies.append(ok)
                names["SET"] += 1
            elif r < 0.87:
                requests.append(_command(b"HGETALL", key))
                replies.append(hgetall)
                names["HGETALL"] += 1
            elif r < 0.92:
                requests.append(_command(b"MGET", key, key[::-1], key.upper()))
                replies.append(b"*3\r\n" + _bulk(value) + null + _bulk(value))
                names["MGET"] += 1
            elif r < 0.96:
                requests.append(_command(b"INCR", key))
                replies.append(wrong)
                names["INCR"] += 1
                errors += 1
            elif r < 0.98:
                requests.append(_command(b"SET", key, big))
                replies.append(ok)
                names["SET"] += 1
            else:
                requests.append(_command(b"GET", key))
                replies.append(_bulk(big))
                names["GET"] += 1
            n += 1
        for direction, data in ((0, b"".join(requests)), (1, b"".join(replies))):
            for i in range(0, len(data), SEGMENT):
                ts += 7
                segments.append((direction, data[i:i + SEGMENT], ts))
            ts += 150  # the server's turn / the client's next batch
    return segments, names, errors


class Sink:
    """StreamContext.emit: counts records (and keeps the last, to show one)."""

    def __init__(self) -> None:
        self.records = 0
        self.errors = 0
        self.operations: Counter[str] = Counter()
        self.last: dict[str, Any] | None = None

    def __call__(self, topic: str, key: str | None, record: dict[str, Any]) -> None:
        self.records += 1
        self.operations[record["operation"]] += 1
        if record["status"] == "error":
            self.errors += 1
        self.last = record


def run_parser(segments: list[tuple[int, bytes, int]]) -> tuple[float, float, int]:
    """Wall and CPU seconds to feed every segment to a fresh RespConnection; messages out."""
    core = RespConnection(0)
    messages = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for direction, data, _ts in segments:
        messages += len(core.data(direction, data))
    return time.perf_counter() - w0, time.process_time() - c0, messages


def run_analyzer(segments: list[tuple[int, bytes, int]]) -> tuple[float, float, Sink, Counter[str]]:
    """The same through a RedisAnalyzer whose context is built as processors/l7/session.py
    builds it (client 127.0.0.1:50000, server 127.0.0.1:6379)."""
    sink = Sink()
    stats: Counter[str] = Counter()
    ctx = StreamContext(ips=("127.0.0.1", "127.0.0.1"), ports=(50000, 6379),
                        connection_id=lambda: "bench-redis-0", emit=sink, options=L7Options(),
                        stats=stats, community_id="1:bench")
    analyzer = RedisAnalyzer(ctx, 0)
    w0, c0 = time.perf_counter(), time.process_time()
    for direction, data, ts in segments:
        analyzer.on_data(direction, data, ts)
    analyzer.on_close(segments[-1][2])
    return time.perf_counter() - w0, time.process_time() - c0, sink, stats


def micro(commands: int, runs: int) -> tuple[list[dict[str, Any]], list[str]]:
    t0 = time.perf_counter()
    segments, names, errors = build_conversation(commands)
    size = sum(len(d) for _, d, _ in segments)
    print(f"== micro: {commands:,} commands in batches of {PIPELINE}, {len(segments):,} segments of "
          f"≤ {SEGMENT} bytes, {size / 1e6:,.1f} MB (built in {time.perf_counter() - t0:.1f} s)")
    print("   mix: " + ", ".join(f"{k} {v:,}" for k, v in names.most_common()) + f"; {errors:,} error replies")
    failures: list[str] = []
    parser = min((run_parser(segments) for _ in range(runs)), key=lambda r: r[1])
    if parser[2] != 2 * commands:
        failures.append(f"micro: the parser gave {parser[2]:,} messages, {2 * commands:,} expected")
    best = None
    for _ in range(runs):
        r = run_analyzer(segments)
        if best is None or r[1] < best[1]:
            best = r
    assert best is not None
    wall, cpu, sink, stats = best
    if sink.records != commands or sink.errors != errors or dict(sink.operations) != dict(names):
        failures.append(f"micro: the analyser emitted {sink.records:,} records ({sink.errors:,} errors, "
                        f"{dict(sink.operations)}), expected {commands:,} ({errors:,} errors, {dict(names)})")
    # every other counter (parse errors, replies without a command, gaps...) means a lost pairing
    bad = {k: v for k, v in stats.items() if k.startswith(("redis_parse_error", "redis."))
           and k != "redis.errors"}
    if stats["redis.errors"] != errors:
        bad["redis.errors"] = stats["redis.errors"]
    if bad:
        failures.append(f"micro: unexpected analyser counters {bad}")
    rows = [
        {"stage": "RespConnection (parser)", "wall_s": parser[0], "cpu_s": parser[1], "records": commands},
        {"stage": "RedisAnalyzer (records)", "wall_s": wall, "cpu_s": cpu, "records": sink.records},
    ]
    print(f"\n   best of {runs} (lowest CPU); per command = one command and its reply")
    print(f"   {'stage':<26} {'wall s':>8} {'CPU s':>8} {'ns/cmd':>9} {'CPU ns/cmd':>11} {'MB/s':>8} {'cmd/s':>12}")
    for r in rows:
        r["ns_per_command"] = r["wall_s"] * 1e9 / commands
        r["cpu_ns_per_command"] = r["cpu_s"] * 1e9 / commands
        r["mb_per_s"] = size / 1e6 / r["wall_s"]
        print(f"   {r['stage']:<26} {r['wall_s']:>8.3f} {r['cpu_s']:>8.3f} {r['ns_per_command']:>9,.0f} "
              f"{r['cpu_ns_per_command']:>11,.0f} {r['mb_per_s']:>8,.1f} {commands / r['wall_s']:>12,.0f}")
    extra = rows[1]["cpu_ns_per_command"] - rows[0]["cpu_ns_per_command"]
    print(f"   the analyser's Python (pairing, redaction, the record dict, its query_id): "
          f"{extra:,.0f} CPU ns per record on top of the parser")
    if sink.last is not None:
        print("   a record: " + json.dumps({k: sink.last[k] for k in ("operation", "statement", "status",
                                                                      "reply_type", "rows", "latency_us")}))
    return rows, failures


# ------------------------------------------------------------- 2. end to end ---
def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 6379:  # tshark's RESP dissector claims 6379 by itself: the floor must not dissect
            return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer PING on 127.0.0.1:{port} within {timeout:.0f} s")


def capture(work: Path, requests: int, pipeline: int, tests: str) -> tuple[Path, int, dict[str, Any]]:
    """Run redis-benchmark against a fresh redis-server under tcpdump; the capture, the
    server's port and what redis-benchmark and tcpdump said."""
    for tool in ("redis-server", "redis-benchmark", "tcpdump"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (apt-get install -y redis-server tcpdump)")
    port = free_port()
    cap = work / f"redis_{port}.pcap"
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(work), "--protected-mode", "yes"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dump = None
    try:
        wait_for_port(port, server)
        # -B: a 64 MB kernel buffer, so that the burst on lo is not dropped; -U: flushed per packet
        dump = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "--immediate-mode", "-U", "-B", "65536", "-w", str(cap),
                                 "tcp", "port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert dump.stderr is not None
        line = dump.stderr.readline().decode(errors="replace")  # "listening on lo, ..." once it captures
        if "listening" not in line:
            raise RuntimeError(f"tcpdump did not start: {line.strip()}")
        cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-n", str(requests), "-P", str(pipeline),
               "-t", tests, "-q"]
        print(f"== capture: {' '.join(cmd)} (tcpdump -i lo tcp port {port})", flush=True)
        bench = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if bench.returncode != 0:
            raise RuntimeError(f"redis-benchmark exited with {bench.returncode}: {bench.stderr.strip()[-500:]}")
        summary = [s.strip() for s in bench.stdout.replace("\r", "\n").splitlines() if "requests per second" in s]
        for s in summary:
            print(f"   {s}")
        time.sleep(0.5)  # the last ACKs and FINs
    finally:
        tail = ""
        if dump is not None:
            dump.send_signal(signal.SIGTERM)
            tail = dump.communicate(timeout=30)[1].decode(errors="replace")
        server.terminate()
        server.wait(timeout=30)
    dropped = [s.strip() for s in tail.splitlines() if "dropped" in s or "captured" in s]
    print("   tcpdump: " + "; ".join(dropped))
    return cap, port, {"redis_benchmark": summary, "tcpdump": dropped}


def e2e(work: Path, args: argparse.Namespace) -> tuple[Rows, list[str]]:
    cap, port, said = capture(work, args.benchmark_requests, args.pipeline, args.tests)
    if args.keep:
        shutil.copyfile(cap, args.keep)
    packets = packets_of(cap)
    print(f"   {cap.stat().st_size / 1e6:,.1f} MB, {packets:,} packets")
    failures: list[str] = []
    rows, out = analyze_runs(work, cap, args.no_baseline)
    records, ops = count_records(out / "wire.queries.jsonl", lambda r: r.get("operation") or "?")
    print(f"   wirestream records: {records:,} ({', '.join(f'{k} {v:,}' for k, v in ops.most_common(8))})")
    rows[0]["records"] = records
    expected = args.benchmark_requests * len(args.tests.split(","))
    if records < expected:
        failures.append(f"e2e: {records:,} wire.queries records for at least {expected:,} commands sent")
    tshark, frames, arrays = tshark_runs(work, cap, port, "resp", "COUNT(resp.array)resp.array")
    print(f"   tshark RESP: {frames:,} frames dissected as RESP, {arrays:,} RESP arrays (commands, array replies)")
    rows += tshark
    print_table(rows, packets, records, "Redis")
    for r in rows:
        r["capture"] = said
    return rows, failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commands", type=int, default=200_000, help="micro: commands in the stream (200,000)")
    ap.add_argument("--benchmark-requests", type=int, default=100_000, help="e2e: redis-benchmark -n (100,000)")
    ap.add_argument("--pipeline", type=int, default=16, help="e2e: redis-benchmark -P (16)")
    ap.add_argument("--tests", default="set,get,lpush,lrange_100", help="e2e: redis-benchmark -t")
    ap.add_argument("--keep", type=Path, help="e2e: copy the capture here")
    common_options(ap)
    args = ap.parse_args(argv)
    return l7_bench.main("bench_redis", args, lambda: micro(args.commands, args.runs), lambda work: e2e(work, args))


if __name__ == "__main__":
    sys.exit(main())
