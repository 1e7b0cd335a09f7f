"""MySQL analysis: cost per record of the core's connection and of MysqlAnalyzer, against tshark.

Two parts (issue 20, "the bench: cost per record of each parser"), as bench_postgres.py:

1. **micro** (in memory, no Kafka): a MySQL conversation is built (``--queries``
   commands, default 100,000: COM_QUERY SELECTs answered by 1 or 20 rows of 3 columns
   with EOF packets, INSERTs and UPDATEs answered by OK, 4 % refused with error 1062,
   and a prepared statement executed over the binary protocol every third command) and
   fed, best of ``--runs``, through ``wirestream._core.MysqlConnection`` alone (framing,
   pairing, row counting in Rust and the tuples it builds) and through ``MysqlAnalyzer``
   (records emitted to a counter). Checks one record per command, errors as errors.
2. **end to end** (root: tcpdump): a MariaDB server of its own on a free loopback port
   (run as the ``mysql`` user), tcpdump on ``lo`` while ``mariadb-slap`` runs
   ``--number-of-queries`` point SELECTs over ``--concurrency`` connections; then
   ``wirestream analyze`` (and ``--no-l7``), tshark's ``mysql`` dissector
   (``-d tcp.port==P,mysql``) and tshark's plain TCP dissection (the floor), timed;
   cross-check (untimed): the records are exactly the commands tshark shows that get a
   response.

    sudo .venv/bin/python bench/bench_mysql.py [--queries N] [--number-of-queries N]
    .venv/bin/python bench/bench_mysql.py --no-e2e               # micro only, no root

Exit status: 0 done and the cross-checks hold; 1 a cross-check failed; 2 a tool or a
run failed.
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
from l7_bench import (
    Rows,
    analyze_runs,
    common_options,
    count_records,
    packets_of,
    print_table,
    tshark_runs,
)
from wirestream._core import MysqlConnection
from wirestream.processors.l7.base import L7Options, StreamContext
from wirestream.processors.l7.mysql import MysqlAnalyzer

SEGMENT = 1460


# ------------------------------------------------------------------ 1. micro ---
def _packet(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


def _lenenc_str(b: bytes) -> bytes:
    return bytes([len(b)]) + b


CAPS = 0x0000_0200 | 0x8000 | 0x8_0000 | 0x8 | 0x20_0000  # protocol 41, plugin auth, with db; EOF packets
COLUMN = b"".join(_lenenc_str(x) for x in (b"def", b"shop", b"users", b"users", b"name", b"name")) + \
    b"\x0c\x21\x00\xfd\x00\x00\x00\xfd\x00\x00\x00\x00\x00"


def _eof(seq: int) -> bytes:
    return _packet(seq, b"\xfe\x00\x00\x02\x00")


def _ok(seq: int, affected: int) -> bytes:
    return _packet(seq, bytes([0, affected, 0]) + b"\x02\x00\x00\x00")


def _result_set(rows: list[list[bytes]], binary: bool) -> bytes:
    out = [_packet(1, b"\x03")]
    seq = 2
    for _ in range(3):
        out.append(_packet(seq, COLUMN))
        seq += 1
    out.append(_eof(seq))
    seq += 1
    for row in rows:
        if binary:
            body = b"\x00\x00" + b"".join(_lenenc_str(v) for v in row)
        else:
            body = b"".join(_lenenc_str(v) for v in row)
        out.append(_packet(seq & 0xFF, body))
        seq += 1
    out.append(_eof(seq & 0xFF))
    return b"".join(out)


def build_conversation(queries: int, seed: int = 22) -> tuple[list[tuple[int, bytes, int]], Counter[str]]:
    rng = random.Random(seed)
    want: Counter[str] = Counter()
    segments: list[tuple[int, bytes, int]] = []
    ts = 1_700_000_000_000_000

    def send(direction: int, data: bytes) -> None:
        nonlocal ts
        for i in range(0, len(data), SEGMENT):
            ts += 7
            segments.append((direction, data[i:i + SEGMENT], ts))
        ts += 110

    greeting = (b"\x0a10.11.6-MariaDB\x00" + struct.pack("<I", 7) + b"12345678\x00" + struct.pack("<H", CAPS & 0xFFFF)
                + b"\x2d" + struct.pack("<H", 2) + struct.pack("<H", CAPS >> 16) + b"\x15" + b"\x00" * 10
                + b"abcdefghijkl\x00mysql_native_password\x00")
    send(1, _packet(0, greeting))
    send(0, _packet(1, struct.pack("<II", CAPS, 1 << 24) + b"\x2d" + b"\x00" * 23 + b"app\x00\x14"
                    + b"s" * 20 + b"shop\x00mysql_native_password\x00"))
    send(1, _ok(2, 0))
    want["ok"] += 1
    send(0, _packet(0, b"\x16SELECT id, name, email FROM users WHERE id = ?"))
    send(1, _packet(1, b"\x00" + struct.pack("<I", 1) + struct.pack("<HH", 3, 1) + b"\x00\x00\x00")
         + _packet(2, COLUMN) + _eof(3) + b"".join(_packet(4 + i, COLUMN) for i in range(3)) + _eof(7))
    want["ok"] += 1
    for n in range(queries - 1):
        uid = str(rng.randrange(10**9)).encode()
        r = rng.random()
        if n % 3 == 2:
            send(0, _packet(0, b"\x17" + struct.pack("<I", 1) + b"\x00\x01\x00\x00\x00\x00\x01\x08\x00"
                            + struct.pack("<q", int(uid))))
            send(1, _result_set([[uid, b"name-" + uid, b"user@example.com"]], binary=True))
        elif r < 0.04:
            send(0, _packet(0, b"\x03INSERT INTO users (id, name) VALUES (" + uid + b", 'x')"))
            send(1, _packet(1, b"\xff\x26\x04#23000Duplicate entry '" + uid + b"' for key 'PRIMARY'"))
            want["error"] += 1
            continue
        elif r < 0.55:
            send(0, _packet(0, b"\x03SELECT id, name, email FROM users WHERE id = " + uid))
            send(1, _result_set([[uid, b"name-" + uid, b"user@example.com"]], binary=False))
        elif r < 0.75:
            send(0, _packet(0, b"\x03SELECT id, name, email FROM users WHERE name LIKE 'a%' ORDER BY id LIMIT 20"))
            send(1, _result_set([[uid, b"name-%d" % i, b"user@example.com"] for i in range(20)], binary=False))
        elif r < 0.90:
            send(0, _packet(0, b"\x03INSERT INTO events (user_id, kind) VALUES (" + uid + b", 'login')"))
            send(1, _ok(1, 1))
        else:
            send(0, _packet(0, b"\x03UPDATE users SET seen = NOW() WHERE id = " + uid))
            send(1, _ok(1, 1))
        want["ok"] += 1
    return segments, want


class Sink:
    def __init__(self) -> None:
        self.records = 0
        self.statuses: Counter[str] = Counter()
        self.last: dict[str, Any] | None = None

    def __call__(self, topic: str, key: str | None, record: dict[str, Any]) -> None:
        self.records += 1
        self.statuses[record["status"]] += 1
        self.last = record


def run_core(segments: list[tuple[int, bytes, int]]) -> tuple[float, float, int]:
    core = MysqlConnection(0)
    events = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for direction, data, ts in segments:
        events += len(core.data(direction, data, ts))
    return time.perf_counter() - w0, time.process_time() - c0, events


def run_analyzer(segments: list[tuple[int, bytes, int]]) -> tuple[float, float, Sink, Counter[str]]:
    sink = Sink()
    stats: Counter[str] = Counter()
    ctx = StreamContext(ips=("127.0.0.1", "127.0.0.1"), ports=(50000, 3306), connection_id=lambda: "bench-my-0",
                        emit=sink, options=L7Options(), stats=stats, community_id="1:bench")
    analyzer = MysqlAnalyzer(ctx, 0)
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
    print(f"== micro: {queries:,} commands (text SELECTs of 1 or 20 rows, INSERT/UPDATE, 4 % errors, every third "
          f"an execute of a prepared statement), {len(segments):,} segments, {size / 1e6:,.1f} MB "
          f"(built in {time.perf_counter() - t0:.1f} s)")
    failures: list[str] = []
    core = min((run_core(segments) for _ in range(runs)), key=lambda r: r[1])
    if core[2] != records:
        failures.append(f"micro: the core gave {core[2]:,} events, {records:,} expected")
    best = None
    for _ in range(runs):
        r = run_analyzer(segments)
        if best is None or r[1] < best[1]:
            best = r
    assert best is not None
    wall, cpu, sink, stats = best
    if dict(sink.statuses) != dict(want):
        failures.append(f"micro: the analyser emitted {dict(sink.statuses)}, expected {dict(want)}")
    bad = {k: v for k, v in stats.items() if k.startswith(("mysql_parse_error", "mysql.resync", "mysql.gaps"))}
    if bad:
        failures.append(f"micro: unexpected analyser counters {bad}")
    rows = [
        {"stage": "MysqlConnection (core)", "wall_s": core[0], "cpu_s": core[1]},
        {"stage": "MysqlAnalyzer (records)", "wall_s": wall, "cpu_s": cpu},
    ]
    print(f"\n   best of {runs} (lowest CPU); per record = one command and its whole response")
    print(f"   {'stage':<26} {'wall s':>8} {'CPU s':>8} {'ns/rec':>9} {'CPU ns/rec':>11} {'MB/s':>8} {'records/s':>12}")
    for r in rows:
        r["ns_per_record"] = r["wall_s"] * 1e9 / records
        r["cpu_ns_per_record"] = r["cpu_s"] * 1e9 / records
        r["mb_per_s"] = size / 1e6 / r["wall_s"]
        print(f"   {r['stage']:<26} {r['wall_s']:>8.3f} {r['cpu_s']:>8.3f} {r['ns_per_record']:>9,.0f} "
              f"{r['cpu_ns_per_record']:>11,.0f} {r['mb_per_s']:>8,.1f} {records / r['wall_s']:>12,.0f}")
    extra = rows[1]["cpu_ns_per_record"] - rows[0]["cpu_ns_per_record"]
    print(f"   the analyser's Python (the record dict, redaction call, its query_id): {extra:,.0f} CPU ns per record")
    if sink.last is not None:
        print("   a record: " + json.dumps({k: sink.last[k] for k in ("operation", "statement", "status", "rows",
                                                                      "latency_us")}))
    return rows, failures


# ------------------------------------------------------------- 2. end to end ---
def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 3306:  # tshark's mysql dissector claims 3306 by itself: the floor must not dissect
            return port


def capture(work: Path, args: argparse.Namespace) -> tuple[Path, int, dict[str, Any]]:
    for tool in ("tcpdump", "mariadb-install-db", "mariadb", "mariadb-slap"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (apt-get install -y mariadb-server mariadb-client tcpdump)")
    mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    my = pwd.getpwnam("mysql")
    home = Path(tempfile.mkdtemp(prefix="bench_mysql."))
    os.chown(home, my.pw_uid, my.pw_gid)
    port = free_port()
    cap = work / f"mysql_{port}.pcap"
    data, sock = home / "data", home / "mysqld.sock"
    subprocess.run(["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={data}", "--skip-test-db",
                    "--auth-root-authentication-method=socket"], check=True, capture_output=True, timeout=300)
    server = subprocess.Popen([mariadbd, "--no-defaults", "--user=mysql", f"--datadir={data}", f"--socket={sock}",
                               f"--port={port}", "--bind-address=127.0.0.1", f"--pid-file={home / 'pid'}",
                               "--skip-log-bin", "--skip-name-resolve", "--innodb-buffer-pool-size=32M"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dump = None
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["mariadb", "--no-defaults", "-S", str(sock), "-u", "root", "-e", "SELECT 1"],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the MariaDB server did not start")
            time.sleep(0.3)
        setup = ("CREATE DATABASE shop; CREATE TABLE shop.users (id INT PRIMARY KEY, name VARCHAR(64)); "
                 "INSERT INTO shop.users VALUES (1, 'a'), (42, 'b'); "
                 "CREATE USER 'bench'@'127.0.0.1' IDENTIFIED BY 'bench'; GRANT ALL ON shop.* TO 'bench'@'127.0.0.1';")
        subprocess.run(["mariadb", "--no-defaults", "-S", str(sock), "-u", "root", "-e", setup], check=True,
                       capture_output=True, timeout=60)
        dump = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "--immediate-mode", "-U", "-B", "65536", "-w", str(cap),
                                 "tcp", "port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert dump.stderr is not None
        line = dump.stderr.readline().decode(errors="replace")
        if "listening" not in line:
            raise RuntimeError(f"tcpdump did not start: {line.strip()}")
        time.sleep(0.5)
        cmd = ["mariadb-slap", "--no-defaults", "-h", "127.0.0.1", "-P", str(port), "-u", "bench", "-pbench",
               "--create-schema=shop", f"--concurrency={args.concurrency}",
               f"--number-of-queries={args.number_of_queries}", "--query=SELECT id, name FROM users WHERE id = 42"]
        print(f"== capture: {' '.join(cmd[1:])} (tcpdump -i lo tcp port {port})", flush=True)
        bench = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if bench.returncode != 0:
            raise RuntimeError(f"mariadb-slap exited with {bench.returncode}: {bench.stderr.strip()[-500:]}")
        summary = [s.strip() for s in bench.stdout.splitlines() if "seconds" in s]
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
    return cap, port, {"mariadb_slap": summary, "tcpdump": dropped}


def e2e(work: Path, args: argparse.Namespace) -> tuple[Rows, list[str]]:
    cap, port, said = capture(work, args)
    packets = packets_of(cap)
    print(f"   {cap.stat().st_size / 1e6:,.1f} MB, {packets:,} packets")
    failures: list[str] = []
    rows, out = analyze_runs(work, cap, args.no_baseline)
    records, ops = count_records(out / "wire.queries.jsonl", lambda r: f"{r['operation']}/{r['status']}")
    print(f"   wirestream records: {records:,} ({', '.join(f'{k} {v:,}' for k, v in ops.most_common(6))})")
    rows[0]["records"] = records
    # the cross-check, untimed: tshark's commands that get a response (not QUIT, SEND_LONG_DATA, CLOSE)
    commands = subprocess.run(["tshark", "-n", "-r", str(cap), "-d", f"tcp.port=={port},mysql", "-Y", "mysql.command",
                               "-T", "fields", "-e", "mysql.command"], capture_output=True, text=True,
                              check=True).stdout
    shown = Counter(c for line in commands.splitlines() for c in line.split(",") if c)
    expected = sum(v for k, v in shown.items() if k not in ("1", "24", "25"))
    logins = sum(v for k, v in ops.items() if k.startswith("STARTUP/"))
    print(f"   tshark's commands: {dict(shown.most_common())} ({expected:,} with a response); {logins:,} logins")
    if records - logins != expected:
        failures.append(f"e2e: {records - logins:,} command records for the {expected:,} commands tshark shows")
    tshark, frames, counted = tshark_runs(work, cap, port, "mysql", "COUNT(mysql.command)mysql.command")
    print(f"   tshark mysql: {frames:,} frames dissected as mysql, {counted:,} commands")
    rows += tshark
    print_table(rows, packets, records, "MySQL")
    for r in rows:
        r["capture"] = said
    return rows, failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=100_000, help="micro: commands in the stream (100,000)")
    ap.add_argument("--number-of-queries", type=int, default=40_000, help="e2e: mariadb-slap's (40,000)")
    ap.add_argument("--concurrency", type=int, default=4, help="e2e: mariadb-slap's connections (4)")
    common_options(ap)
    args = ap.parse_args(argv)
    return l7_bench.main("bench_mysql", args, lambda: micro(args.queries, args.runs), lambda work: e2e(work, args))


if __name__ == "__main__":
    sys.exit(main())
