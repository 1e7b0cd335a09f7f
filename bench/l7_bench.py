"""What the L7 protocol benches share (bench_redis.py, bench_postgres.py, bench_mysql.py,
bench_grpc.py): timing a tool's run with its children's CPU, reading tshark's io,stat
row, the end-to-end table (wirestream analyze with and without L7, tshark's dissector
and its floor, per record), and the command line around a micro part and an
end-to-end part."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"

Rows = list[dict[str, Any]]


def timed(cmd: list[str], out: Path, timeout: float = 900.0) -> dict[str, Any]:
    """Run ``cmd`` to completion: wall seconds and CPU seconds of it and the children it
    reaped (wait4: exact for the whole tree of processes it waited for)."""
    t0 = time.monotonic()
    with open(out, "wb") as stdout, open(out.with_suffix(".err"), "wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"{cmd[0]} did not finish within {timeout:.0f} s: {' '.join(cmd)}")
            time.sleep(0.01)
    wall = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        err = out.with_suffix(".err").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited with {code}:\n{err}")
    return {"cmd": cmd, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_mb": ru.ru_maxrss / 1024}


def tshark_io_counts(text: str) -> tuple[int, int]:
    """Frames and the COUNT column from ``-z io,stat,0,FILTER,COUNT(field)field``'s one
    interval row: ``| 0.000 <> Dur |  FRAMES | BYTES | COUNT |``."""
    for line in text.splitlines():
        if "<>" in line:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            numbers = [int(c) for c in cells[1:] if c.isdigit()]
            if len(numbers) >= 3:
                return numbers[0], numbers[2]
    raise RuntimeError(f"no io,stat row in tshark's output:\n{text[-1000:]}")


def analyze_runs(work: Path, cap: Path, no_baseline: bool) -> tuple[Rows, Path]:
    """``wirestream analyze CAP --out`` (L7 on) and, unless ``no_baseline``, ``--no-l7``,
    timed; the rows and the records' directory."""
    out = work / "analyze"
    r = timed([str(PYTHON), "-m", "wirestream", "analyze", str(cap), "--json", "--no-progress", "--out", str(out)],
              work / "analyze.json")
    r.update(tool="wirestream analyze (L7 on)")
    rows = [r]
    if not no_baseline:
        r = timed([str(PYTHON), "-m", "wirestream", "analyze", str(cap), "--json", "--no-progress", "--no-l7"],
                  work / "analyze_no_l7.json")
        r.update(tool="wirestream analyze --no-l7", records=0)
        rows.append(r)
    return rows, out


def count_records(path: Path, key: Callable[[dict[str, Any]], Any]) -> tuple[int, Counter[Any]]:
    """The records of a JSON-lines file (none if it is not there), and how many of each
    ``key(record)``."""
    counts: Counter[Any] = Counter()
    n = 0
    if path.exists():
        with open(path, "rb") as f:
            for line in f:
                counts[key(json.loads(line))] += 1
                n += 1
    return n, counts


def packets_of(cap: Path) -> int:
    return int(subprocess.run(["capinfos", "-M", "-c", "-T", "-r", str(cap)], capture_output=True, text=True,
                              check=True).stdout.split("\t")[-1])


def tshark_runs(work: Path, cap: Path, port: int, dissector: str, count: str) -> tuple[Rows, int, int]:
    """tshark with ``dissector`` on the port (``-z io,stat`` with ``count``, a
    ``COUNT(field)filter`` column, which makes it build every packet's tree) and its floor
    (``-z conv,tcp``, the dissector off), timed; the rows, the frames dissected and the
    count."""
    r = timed(["tshark", "-n", "-q", "-r", str(cap), "-d", f"tcp.port=={port},{dissector}",
               "-z", f"io,stat,0,{dissector},{count}"], work / f"tshark_{dissector}.txt")
    frames, counted = tshark_io_counts((work / f"tshark_{dissector}.txt").read_text(errors="replace"))
    r.update(tool=f"tshark {dissector} dissector", records=0)
    floor = timed(["tshark", "-n", "-q", "-r", str(cap), "--disable-protocol", dissector, "-z", "conv,tcp"],
                  work / "tshark_tcp.txt")
    floor.update(tool="tshark -z conv,tcp (floor)", records=0)
    return [r, floor], frames, counted


def print_table(rows: Rows, packets: int, records: int, what: str) -> None:
    """The end-to-end table, every figure divided by wirestream's record count, and what
    the L7 analysis (``what``) adds to the pipeline and the dissector to tshark."""
    print(f"\n   {packets:,} packets; per record: divided by wirestream's {records:,} records")
    print(f"   {'':<30} {'packets':>9} {'records':>9} {'wall s':>8} {'CPU s':>8} {'µs/rec':>8} {'CPU µs/rec':>11} "
          f"{'peak MB':>8}")
    for r in rows:
        r["packets"] = packets
        r["us_per_record"] = r["wall_s"] * 1e6 / max(records, 1)
        r["cpu_us_per_record"] = r["cpu_s"] * 1e6 / max(records, 1)
        shown = f"{r['records']:,}" if r.get("records") else "-"
        print(f"   {r['tool']:<30} {packets:>9,} {shown:>9} {r['wall_s']:>8.2f} {r['cpu_s']:>8.2f} "
              f"{r['us_per_record']:>8.2f} {r['cpu_us_per_record']:>11.2f} {r['peak_mb']:>8,.0f}")
    by = {r["tool"]: r for r in rows}
    if "wirestream analyze --no-l7" in by:
        d = by["wirestream analyze (L7 on)"]["cpu_s"] - by["wirestream analyze --no-l7"]["cpu_s"]
        print(f"   L7 on less --no-l7 (what {what} analysis and its records add to the pipeline): "
              f"{d:.2f} CPU s, {d * 1e6 / max(records, 1):.2f} CPU µs/record")
    dissector = next((t for t in by if t.startswith("tshark ") and t.endswith(" dissector")), None)
    if dissector is not None and "tshark -z conv,tcp (floor)" in by:
        d = by[dissector]["cpu_s"] - by["tshark -z conv,tcp (floor)"]["cpu_s"]
        print(f"   {dissector[:-len(' dissector')]} less its floor: {d:.2f} CPU s, "
              f"{d * 1e6 / max(records, 1):.2f} CPU µs/record")


def common_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--runs", type=int, default=3, help="micro: runs of each, the best kept (3)")
    ap.add_argument("--no-micro", action="store_true")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--no-baseline", action="store_true", help="e2e: skip the analyze --no-l7 run")
    ap.add_argument("--json", type=Path, help="write every figure here")


def main(name: str, args: argparse.Namespace, micro: Callable[[], tuple[Rows, list[str]]],
         e2e: Callable[[Path], tuple[Rows, list[str]]]) -> int:
    """Run the micro part then (as root) the end-to-end part in a temporary directory;
    print the failed cross-checks and the load. Exit status: 0 done and the
    cross-checks hold; 1 a cross-check failed; 2 a tool or a run failed."""
    doc: dict[str, Any] = {"load_average": os.getloadavg()}
    failures: list[str] = []
    try:
        if not args.no_micro:
            doc["micro"], f = micro()
            failures += f
        if not args.no_e2e:
            if os.geteuid() != 0:
                print(f"e2e needs root (tcpdump): sudo .venv/bin/python bench/{name}.py", file=sys.stderr)
                return 2
            with tempfile.TemporaryDirectory(prefix=f"{name}.") as tmp:
                print()
                doc["e2e"], f = e2e(Path(tmp))
                failures += f
    except (RuntimeError, OSError, subprocess.SubprocessError, ImportError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    doc["load_average_end"] = os.getloadavg()
    doc["failures"] = failures
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2, default=str))
    for f in failures:
        print(f"FAIL {f}")
    print(f"\nload average at start {doc['load_average'][0]:.2f}, at end {doc['load_average_end'][0]:.2f} "
          f"(2 cores, shared with other work)")
    return 1 if failures else 0
