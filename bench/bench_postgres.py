"""PostgreSQL analysis: cost per record of the framer and of PostgresAnalyzer, against tshark.

Two parts (issue 20, "the bench: cost per record of each parser"), as bench_redis.py:

1. **micro** (in memory, no Kafka): a PostgreSQL conversation is built (``--queries``
   queries, default 100,000, what a driver sends: the extended protocol, Parse / Bind /
   Describe / Execute, in pipelined batches of 10 per Sync; SELECTs returning 1 or 20
   rows of 3 columns, INSERTs, UPDATEs, one in 25 failing with a unique violation that
   makes the server skip the rest of its batch; plus a simple Query every 50) and fed,
   best of ``--runs``, through ``wirestream._core.PgConnection`` alone (the Rust framer
   and the tuples it builds) and through ``PostgresAnalyzer`` (framer, pairing, SQL
   redaction, records emitted to a counter). Prints ns and CPU ns per query and MB/s, and
   checks every query came out (one record each, the errors and the skipped ones as such).
2. **end to end** (root: tcpdump): a PostgreSQL server of its own on a free loopback
   port (run as the ``postgres`` user), tcpdump on ``lo`` while ``pgbench -S -M extended
   -c 4 -t N`` runs (select-only, the extended protocol); then, on that capture,
   ``wirestream analyze CAP --json --no-progress --out TMP`` (records: TMP/wire.queries.jsonl),
   the same with ``--no-l7`` (the pipeline without L7 analysis), tshark's ``pgsql``
   dissector (``-d tcp.port==P,pgsql``, ``-z io,stat`` counting the messages of frames with an Execute,
   which dissects every packet in full) and tshark's plain TCP dissection (``-z conv,tcp``,
   pgsql disabled: the floor). Wall seconds, CPU seconds (wait4 of the process tree) and
   µs per record, every figure divided by wirestream's record count.

    sudo .venv/bin/python bench/bench_postgres.py [--queries N] [--transactions N]
    .venv/bin/python bench/bench_postgres.py --no-e2e              # micro only, no root

Exit status: 0 done and the cross-checks hold; 1 a cross-check failed (a query lost, a
record missing); 2 a tool or a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import l7_bench
from l7_bench import Rows, analyze_runs, common_options, packets_of, print_table, tshark_runs
from wirestream._core import PgConnection
from wirestream.processors.l7.base import L7Options, StreamContext
from wirestream.processors.l7.postgres import PostgresAnalyzer

SEGMENT = 1460  # bytes per TCP segment's payload (Ethernet MTU), per direction
BATCH = 10  # Execute messages per Sync


# ------------------------------------------------------------------ 1. micro ---
def _msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack(">I", len(body) + 4) + body


def _startup() -> bytes:
    body = struct.pack(">I", 196608) + b"user\0app\0database\0shop\0\0"
    return struct.pack(">I", len(body) + 4) + body


def _parse_bind_execute(text: bytes, params: list[bytes]) -> bytes:
    bind = b"\0\0" + struct.pack(">HH", 0, len(params)) + b"".join(
        struct.pack(">I", len(p)) + p for p in params) + struct.pack(">H", 0)
    return (_msg(b"P", b"\0" + text + b"\0\0\0") + _msg(b"B", bind) + _msg(b"D", b"P\0")
            + _msg(b"E", b"\0\0\0\0\0"))


def _row(values: list[bytes]) -> bytes:
    return _msg(b"D", struct.pack(">H", len(values)) + b"".join(struct.pack(">I", len(v)) + v for v in values))


ROW_DESCRIPTION = _msg(b"T", struct.pack(">H", 3) + b"".join(
    name + b"\0" + struct.pack(">IHIhih", 16384, i, 25, -1, -1, 0) for i, name in enumerate((b"id", b"name", b"email"))))
READY = _msg(b"Z", b"I")
UNIQUE = _msg(b"E", b"SERROR\0VERROR\0C23505\0Mduplicate key value violates unique constraint \"users_pkey\"\0\0")


def build_conversation(queries: int, seed: int = 21) -> tuple[list[tuple[int, bytes, int]], Counter[str]]:
    """A client (direction 0) and a server (direction 1): the segments in capture order,
    and the records expected by status."""
    rng = random.Random(seed)
    want: Counter[str] = Counter()
    segments: list[tuple[int, bytes, int]] = []
    ts = 1_700_000_000_000_000

    def send(direction: int, data: bytes) -> None:
        nonlocal ts
        for i in range(0, len(data), SEGMENT):
            ts += 7
            segments.append((direction, data[i:i + SEGMENT], ts))
        ts += 120

    send(0, _startup())
    send(1, _msg(b"R", b"\0\0\0\0") + _msg(b"S", b"server_version\x0015.4\0") + READY)
    want["ok"] += 1  # the login
    n = 0
    while n < queries:
        if n % 50 == 49:  # a simple query
            send(0, _msg(b"Q", b"SELECT count(*) FROM users WHERE created > now() - interval '1 day'\0"))
            send(1, _msg(b"T", struct.pack(">H", 1) + b"count\0" + struct.pack(">IHIhih", 0, 0, 20, 8, -1, 0))
                 + _row([b"4242"]) + _msg(b"C", b"SELECT 1\0") + READY)
            want["ok"] += 1
            n += 1
            continue
        requests, replies = [], []
        failed = False
        for _ in range(min(BATCH, queries - n)):
            uid = str(rng.randrange(10**9)).encode()
            r = rng.random()
            if failed:  # the server skips the rest of the batch
                requests.append(_parse_bind_execute(b"SELECT id, name, email FROM users WHERE id = $1", [uid]))
                want["skipped"] += 1
            elif r < 0.04:
                requests.append(_parse_bind_execute(b"INSERT INTO users (id, name) VALUES ($1, $2)", [uid, b"x"]))
                replies.append(_msg(b"1", b"") + _msg(b"2", b"") + _msg(b"n", b"") + UNIQUE)
                want["error"] += 1
                failed = True
            elif r < 0.55:
                requests.append(_parse_bind_execute(b"SELECT id, name, email FROM users WHERE id = $1", [uid]))
                replies.append(_msg(b"1", b"") + _msg(b"2", b"") + ROW_DESCRIPTION
                               + _row([uid, b"name-" + uid, b"user@example.com"]) + _msg(b"C", b"SELECT 1\0"))
                want["ok"] += 1
            elif r < 0.75:
                requests.append(_parse_bind_execute(
                    b"SELECT id, name, email FROM users WHERE name LIKE $1 ORDER BY id LIMIT 20", [b"a%"]))
                replies.append(_msg(b"1", b"") + _msg(b"2", b"") + ROW_DESCRIPTION
                               + b"".join(_row([uid, b"name-%d" % i, b"user@example.com"]) for i in range(20))
                               + _msg(b"C", b"SELECT 20\0"))
                want["ok"] += 1
            elif r < 0.90:
                requests.append(_parse_bind_execute(b"INSERT INTO events (user_id, kind) VALUES ($1, $2)",
                                                    [uid, b"login"]))
                replies.append(_msg(b"1", b"") + _msg(b"2", b"") + _msg(b"n", b"") + _msg(b"C", b"INSERT 0 1\0"))
                want["ok"] += 1
            else:
                requests.append(_parse_bind_execute(b"UPDATE users SET seen = now() WHERE id = $1", [uid]))
                replies.append(_msg(b"1", b"") + _msg(b"2", b"") + _msg(b"n", b"") + _msg(b"C", b"UPDATE 1\0"))
                want["ok"] += 1
            n += 1
        send(0, b"".join(requests) + _msg(b"S", b""))
        send(1, b"".join(replies) + READY)
    return segments, want


class Sink:
    """StreamContext.emit: counts records by status (and keeps the last, to show one)."""

    def __init__(self) -> None:
        self.records = 0
        self.statuses: Counter[str] = Counter()
        self.last: dict[str, Any] | None = None

    def __call__(self, topic: str, key: str | None, record: dict[str, Any]) -> None:
        self.records += 1
        self.statuses[record["status"]] += 1
        self.last = record


def run_parser(segments: list[tuple[int, bytes, int]]) -> tuple[float, float, int]:
    """Wall and CPU seconds to feed every segment to a fresh PgConnection; messages out."""
    core = PgConnection(0)
    messages = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for direction, data, _ts in segments:
        messages += len(core.data(direction, data))
    return time.perf_counter() - w0, time.process_time() - c0, messages


def run_analyzer(segments: list[tuple[int, bytes, int]]) -> tuple[float, float, Sink, Counter[str]]:
    sink = Sink()
    stats: Counter[str] = Counter()
    ctx = StreamContext(ips=("127.0.0.1", "127.0.0.1"), ports=(50000, 5432),
                        connection_id=lambda: "bench-pg-0", emit=sink, options=L7Options(),
                        stats=stats, community_id="1:bench")
    analyzer = PostgresAnalyzer(ctx, 0)
    w0, c0 = time.perf_counter(), time.process_time()
    for direction, data, ts in segments:
        analyzer.on_data(direction, data, ts)
    analyzer.on_close(segments[-1][2])
    return time.perf_counter() - w0, time.process_time() - c0, sink, stats


def micro(queries: int, runs: int) -> tuple[list[dict[str, Any]], list[str]]:
    t0 = time.perf_counter()
    segments, want = build_conversation(queries)
    size = sum(len(d) for _, d, _ in segments)
    records = sum(want.values())
    print(f"== micro: {queries:,} queries (extended protocol, batches of {BATCH} per Sync; a simple query in 50), "
          f"{len(segments):,} segments of ≤ {SEGMENT} bytes, {size / 1e6:,.1f} MB "
          f"(built in {time.perf_counter() - t0:.1f} s)")
    print("   records expected: " + ", ".join(f"{k} {v:,}" for k, v in want.most_common()) + " (the login included)")
    failures: list[str] = []
    parser = min((run_parser(segments) for _ in range(runs)), key=lambda r: r[1])
    best = None
    for _ in range(runs):
        r = run_analyzer(segments)
        if best is None or r[1] < best[1]:
            best = r
    assert best is not None
    wall, cpu, sink, stats = best
    if dict(sink.statuses) != dict(want):
        failures.append(f"micro: the analyser emitted {dict(sink.statuses)}, expected {dict(want)}")
    bad = {k: v for k, v in stats.items() if k.startswith(("pgsql_parse_error", "pgsql.out_of_sync",
                                                           "pgsql.ready_without", "pgsql.error_without"))}
    if bad:
        failures.append(f"micro: unexpected analyser counters {bad}")
    rows = [
        {"stage": "PgConnection (framer)", "wall_s": parser[0], "cpu_s": parser[1], "messages": parser[2]},
        {"stage": "PostgresAnalyzer (records)", "wall_s": wall, "cpu_s": cpu, "messages": parser[2]},
    ]
    print(f"\n   best of {runs} (lowest CPU); per query = its messages and the server's answers "
          f"({parser[2]:,} messages given to Python for {records:,} records; DataRows counted in the core)")
    print(f"   {'stage':<28} {'wall s':>8} {'CPU s':>8} {'ns/query':>9} {'CPU ns/q':>9} {'MB/s':>8} {'queries/s':>12}")
    for r in rows:
        r["ns_per_query"] = r["wall_s"] * 1e9 / records
        r["cpu_ns_per_query"] = r["cpu_s"] * 1e9 / records
        r["mb_per_s"] = size / 1e6 / r["wall_s"]
        print(f"   {r['stage']:<28} {r['wall_s']:>8.3f} {r['cpu_s']:>8.3f} {r['ns_per_query']:>9,.0f} "
              f"{r['cpu_ns_per_query']:>9,.0f} {r['mb_per_s']:>8,.1f} {records / r['wall_s']:>12,.0f}")
    extra = rows[1]["cpu_ns_per_query"] - rows[0]["cpu_ns_per_query"]
    print(f"   the analyser's Python (pairing, redaction, the record dict, its query_id): "
          f"{extra:,.0f} CPU ns per record on top of the framer")
    if sink.last is not None:
        print("   a record: " + json.dumps({k: sink.last[k] for k in ("operation", "statement", "status",
                                                                      "rows", "latency_us", "pipelined")}))
    return rows, failures


# ------------------------------------------------------------- 2. end to end ---
def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 5432:  # tshark's pgsql dissector claims 5432 by itself: the floor must not dissect
            return port


def pg_bin() -> Path:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "postgres").exists() and (d / "pgbench").exists():
            return d
    raise RuntimeError("PostgreSQL's programs are not installed (apt-get install -y postgresql)")


def capture(work: Path, transactions: int, clients: int) -> tuple[Path, int, dict[str, Any]]:
    """pgbench -S against a fresh server under tcpdump: the capture, the port, what they said."""
    for tool in ("tcpdump", "runuser"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed")
    bindir = pg_bin()
    pg = pwd.getpwnam("postgres")
    home = Path(tempfile.mkdtemp(prefix="bench_postgres."))
    os.chown(home, pg.pw_uid, pg.pw_gid)
    port = free_port()
    cap = work / f"postgres_{port}.pcap"
    data = home / "data"
    subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "initdb"), "-D", str(data), "-U", "bench",
                    "--auth=trust", "--no-sync"], check=True, capture_output=True, timeout=120)
    server = subprocess.Popen(["runuser", "-u", "postgres", "--", str(bindir / "postgres"), "-D", str(data),
                               "-p", str(port), "-k", str(home), "-c", "listen_addresses=127.0.0.1",
                               "-c", "fsync=off"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dump = None
    base = ["-h", "127.0.0.1", "-p", str(port), "-U", "bench"]
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([str(bindir / "pg_isready"), *base], capture_output=True).returncode != 0:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the PostgreSQL server did not start")
            time.sleep(0.2)
        subprocess.run([str(bindir / "pgbench"), *base, "-i", "-s", "1", "-q", "postgres"], check=True,
                       capture_output=True, timeout=300)
        dump = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "--immediate-mode", "-U", "-B", "65536", "-w", str(cap),
                                 "tcp", "port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert dump.stderr is not None
        line = dump.stderr.readline().decode(errors="replace")
        if "listening" not in line:
            raise RuntimeError(f"tcpdump did not start: {line.strip()}")
        time.sleep(0.5)
        cmd = [str(bindir / "pgbench"), *base, "-S", "-M", "extended", "-c", str(clients), "-t", str(transactions),
               "-n", "postgres"]
        print(f"== capture: {' '.join(cmd[1:])} (tcpdump -i lo tcp port {port})", flush=True)
        bench = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if bench.returncode != 0:
            raise RuntimeError(f"pgbench exited with {bench.returncode}: {bench.stderr.strip()[-500:]}")
        summary = [s.strip() for s in bench.stdout.splitlines() if s.startswith(("tps", "latency average"))]
        for s in summary:
            print(f"   {s}")
        time.sleep(0.5)
    finally:
        tail = ""
        if dump is not None:
            dump.send_signal(signal.SIGTERM)
            tail = dump.communicate(timeout=30)[1].decode(errors="replace")
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(home, ignore_errors=True)
    dropped = [s.strip() for s in tail.splitlines() if "dropped" in s or "captured" in s]
    print("   tcpdump: " + "; ".join(dropped))
    return cap, port, {"pgbench": summary, "tcpdump": dropped}


def e2e(work: Path, args: argparse.Namespace) -> tuple[Rows, list[str]]:
    cap, port, said = capture(work, args.transactions, args.clients)
    packets = packets_of(cap)
    print(f"   {cap.stat().st_size / 1e6:,.1f} MB, {packets:,} packets")
    failures: list[str] = []
    rows, out = analyze_runs(work, cap, args.no_baseline)
    ops: Counter[str] = Counter()
    records = 0
    queries = out / "wire.queries.jsonl"
    if queries.exists():
        with open(queries, "rb") as f:
            for line in f:
                rec = json.loads(line)
                ops[f"{rec['operation']}/{rec['status']}"] += 1
                records += 1
    print(f"   wirestream records: {records:,} ({', '.join(f'{k} {v:,}' for k, v in ops.most_common(6))})")
    rows[0]["records"] = records
    # the cross-check: tshark's own count of the queries in the capture (every Execute and
    # simple Query it dissects; tcpdump on lo may miss some of what pgbench ran), untimed
    types = subprocess.run(["tshark", "-n", "-r", str(cap), "-d", f"tcp.port=={port},pgsql", "-Y", "pgsql",
                            "-T", "fields", "-e", "pgsql.type"], capture_output=True, text=True, check=True).stdout
    sent = Counter(t for line in types.splitlines() for t in line.split(","))
    expected = sent["Execute"] + sent["Simple query"]
    ran = sum(v for k, v in ops.items() if not k.startswith(("STARTUP/", "PREPARE/")))
    print(f"   tshark's queries: {sent['Execute']:,} Execute, {sent['Simple query']:,} simple; pgbench ran "
          f"{args.transactions * args.clients:,} transactions")
    if ran != expected or any(k.endswith(("/error", "/skipped")) for k in ops):
        failures.append(f"e2e: {ran:,} query records for the {expected:,} queries tshark shows ({dict(ops)})")
    tshark, frames, executes = tshark_runs(work, cap, port, "pgsql", 'COUNT(pgsql.type)pgsql.type == "Execute"')
    print(f"   tshark pgsql: {frames:,} frames dissected as pgsql; {executes:,} messages in those with an Execute")
    rows += tshark
    print_table(rows, packets, records, "PostgreSQL")
    for r in rows:
        r["capture"] = said
    return rows, failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=100_000, help="micro: queries in the stream (100,000)")
    ap.add_argument("--transactions", type=int, default=10_000, help="e2e: pgbench -t, per client (10,000)")
    ap.add_argument("--clients", type=int, default=4, help="e2e: pgbench -c (4)")
    common_options(ap)
    args = ap.parse_args(argv)
    return l7_bench.main("bench_postgres", args, lambda: micro(args.queries, args.runs), lambda work: e2e(work, args))


if __name__ == "__main__":
    sys.exit(main())
