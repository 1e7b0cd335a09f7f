#!/usr/bin/env python3
"""Benchmark ``wirestream analyze`` against ``tshark`` on the same capture.

Runs, one after the other on the same file:

  (a) tshark -n -q -r CAP -z conv,tcp -z http,tree
  (b) wirestream analyze CAP --json --no-progress [--workers N]

and measures for each the wall time, the CPU time (user+sys) of the whole
process tree and the peak summed RSS of the process and all its descendants
(sampled every 0.2 s from /proc).  For wirestream the peak is also broken down
by process kind (the analyze process, ``wirestream process`` workers, the
``tansu`` broker).  It then checks that both tools saw the same number of TCP
conversations, that wirestream's HTTP transactions number tshark's HTTP responses
(with L7 analysis on, the default), and compares throughput against a target ratio.
It prints transactions per second.

See bench/README.md.  Exit status: 0 = PASS, 1 = FAIL (ratio below target or a
count mismatch), 2 = bad arguments / missing capture, 3 = a tool failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_CAPTURE = BENCH_DIR / "work" / "http.pcap"
MAKE_CAPTURE = BENCH_DIR / "make_http_capture.sh"
SAMPLE_INTERVAL_S = 0.2
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Process kinds for the per-kind RSS breakdown, in display order.
KINDS = ("analyze", "workers", "tansu", "tshark", "other")


# ------------------------------------------------------------ /proc helpers ---
def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:  # process gone, or not ours to read
        return None


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the ``(comm)`` (comm may hold spaces)."""
    raw = _read(f"/proc/{pid}/stat")
    if raw is None:
        return None
    return raw[raw.rfind(b")") + 2 :].split()


def _descendants(root: int) -> list[int]:
    """``root`` and every live descendant of it (walks the ppid of all pids)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        # fields[0] = state, fields[1] = ppid
        children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _rss_kb(pid: int) -> int:
    raw = _read(f"/proc/{pid}/status")
    if raw is None:
        return 0
    for line in raw.splitlines():
        if line.startswith(b"VmRSS:"):
            return int(line.split()[1])
    return 0  # zombie / kernel thread: no VmRSS line


def _cpu_s(pid: int) -> float:
    """user+sys of the process itself, from /proc/PID/stat (clock ticks)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # utime, stime are fields 14 and 15 of stat, i.e. index 11, 12 after comm
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _classify(pid: int, root: int, root_kind: str) -> str:
    if pid == root:
        return root_kind
    raw = _read(f"/proc/{pid}/cmdline") or b""
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not argv:
        return "other"
    if os.path.basename(argv[0]) == "tansu":
        return "tansu"
    if "process" in argv and any("wirestream" in a for a in argv):
        return "workers"
    if os.path.basename(argv[0]) == "tshark":
        return "tshark"
    return "other"


class TreeSampler(threading.Thread):
    """Samples summed RSS of a process tree every ``interval`` seconds."""

    def __init__(self, root: int, root_kind: str, interval: float = SAMPLE_INTERVAL_S):
        super().__init__(daemon=True)
        self.root, self.root_kind, self.interval = root, root_kind, interval
        self.stop_event = threading.Event()
        self.samples = 0
        self.peak_total_kb = 0
        self.peak_total_at_s = 0.0
        self.peak_kind_kb = dict.fromkeys(KINDS, 0)
        self.max_procs_kind = dict.fromkeys(KINDS, 0)
        # last seen own CPU (user+sys) per (pid, kind): approximate per-kind CPU
        self.last_cpu: dict[tuple[int, str], float] = {}
        # pid -> (start time in ticks, kind) of every process seen in the tree
        self.seen: dict[int, tuple[bytes, str]] = {}
        self.t0 = time.monotonic()

    def sample(self) -> None:
        total = 0
        kind_kb = dict.fromkeys(KINDS, 0)
        kind_n = dict.fromkeys(KINDS, 0)
        for pid in _descendants(self.root):
            kind = _classify(pid, self.root, self.root_kind)
            rss = _rss_kb(pid)
            if rss == 0:
                continue  # gone between the walk and the read, or a zombie
            total += rss
            kind_kb[kind] += rss
            kind_n[kind] += 1
            self.last_cpu[(pid, kind)] = _cpu_s(pid)
            if pid not in self.seen:
                fields = _stat_fields(pid)
                if fields is not None:
                    self.seen[pid] = (fields[19], kind)  # field 22: starttime
        self.samples += 1
        if total > self.peak_total_kb:
            self.peak_total_kb = total
            self.peak_total_at_s = time.monotonic() - self.t0
        for k in KINDS:
            self.peak_kind_kb[k] = max(self.peak_kind_kb[k], kind_kb[k])
            self.max_procs_kind[k] = max(self.max_procs_kind[k], kind_n[k])

    def run(self) -> None:
        while True:
            self.sample()
            if self.stop_event.wait(self.interval):
                return

    def leftovers(self) -> list[dict]:
        """Processes seen in the tree that are still alive (orphaned)."""
        out = []
        for pid, (start, kind) in self.seen.items():
            if pid == self.root:
                continue
            fields = _stat_fields(pid)
            if fields is not None and fields[19] == start and fields[0] != b"Z":
                cmd = (_read(f"/proc/{pid}/cmdline") or b"").replace(b"\0", b" ").decode(errors="replace")
                out.append({"pid": pid, "kind": kind, "cmdline": cmd.strip()[:200]})
        return out

    def cpu_by_kind(self) -> dict[str, float]:
        out = dict.fromkeys(KINDS, 0.0)
        for (_pid, kind), cpu in self.last_cpu.items():
            out[kind] += cpu
        return out


def run_measured(cmd: list[str], root_kind: str, stdout_path: Path, stderr_path: Path) -> dict:
    """Run ``cmd`` to completion; return wall/CPU/RSS figures and exit code."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        sampler = TreeSampler(proc.pid, root_kind)
        sampler.start()
        try:
            # wait4 reaps the child and gives the rusage of it plus all the
            # descendants it reaped; RUSAGE_CHILDREN deltas say the same thing.
            _, status, ru_child = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop_event.set()
        sampler.join()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    user = ru1.ru_utime - ru0.ru_utime
    system = ru1.ru_stime - ru0.ru_stime
    # Anything of the tree still alive now was orphaned (not reaped by the
    # tree), so its CPU is missing from the rusage figures: report it.
    leftovers = sampler.leftovers()
    return {
        "cmd": cmd,
        "exit_code": proc.returncode,
        "wall_s": wall,
        "user_s": user,
        "sys_s": system,
        "cpu_s": user + system,
        "wait4_cpu_s": ru_child.ru_utime + ru_child.ru_stime,
        # largest single process of the tree (wait4: the child and what it reaped)
        "maxrss_single_process_mb": ru_child.ru_maxrss / 1024,
        "peak_rss_mb": sampler.peak_total_kb / 1024,
        "peak_rss_at_s": sampler.peak_total_at_s,
        "peak_rss_by_kind_mb": {k: v / 1024 for k, v in sampler.peak_kind_kb.items() if v},
        "max_processes_by_kind": {k: v for k, v in sampler.max_procs_kind.items() if v},
        "approx_cpu_by_kind_s": {k: v for k, v in sampler.cpu_by_kind().items() if v},
        "rss_samples": sampler.samples,
        "leftover_processes": leftovers,
        "stdout": str(stdout_path),
        "stderr": str(stderr_path),
    }


# ------------------------------------------------------------------- helpers ---
def count_packets(cap: Path) -> int:
    if shutil.which("capinfos"):
        res = subprocess.run(["capinfos", "-c", "-M", str(cap)], capture_output=True, text=True)
        for line in res.stdout.splitlines():
            if line.startswith("Number of packets"):
                return int(line.split(":", 1)[1].strip())
        sys.exit(f"capinfos gave no packet count for {cap}: {res.stderr.strip()}")
    # Fallback: tshark (dissects every packet, so slower, but exact).
    res = subprocess.run(["tshark", "-n", "-r", str(cap), "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, check=True)
    return len(res.stdout.splitlines())


def wirestream_cmd() -> list[str]:
    script = Path(sys.executable).with_name("wirestream")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "wirestream"]


def tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-n:])


def tshark_http_counts(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        s = line.strip()
        for key, label in (
            ("total", "Total HTTP Packets"),
            ("requests", "HTTP Request Packets"),
            ("responses", "HTTP Response Packets"),
        ):
            if s.startswith(label):
                parts = s[len(label):].split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0])
    return out


def mb(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


# ---------------------------------------------------------------------- main ---
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Compare `wirestream analyze` with tshark (conv,tcp + http,tree) on one capture.",
    )
    p.add_argument("--capture", type=Path,
                   help=f"capture to use; implies --skip-build (default {DEFAULT_CAPTURE.relative_to(REPO_ROOT)}, "
                        "built by make_http_capture.sh)")
    p.add_argument("--packets", type=int, default=None,
                   help="target packet count when building the capture (make_http_capture.sh default: 1000000)")
    p.add_argument("--workers", type=int, default=None, help="pass --workers N to wirestream analyze")
    p.add_argument("--skip-build", action="store_true", help="do not run make_http_capture.sh")
    p.add_argument("--analyze-args", default="", metavar="ARGS",
                   help='extra arguments for wirestream analyze, e.g. --analyze-args=--no-l7')
    p.add_argument("--force-build", action="store_true", help="rebuild the capture (make_http_capture.sh --force)")
    p.add_argument("--target", type=float, default=0.5,
                   help="PASS if wirestream pkt/s / tshark pkt/s >= this (default 0.5)")
    p.add_argument("--keep-dir", type=Path, default=None,
                   help="keep raw tool outputs here (default: a temp dir, removed at the end)")
    p.add_argument("--json", dest="json_out", type=Path, help="write all figures to this JSON file")
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be >= 1")
    if args.packets is not None and args.packets < 1:
        p.error("--packets must be >= 1")
    return args


def ensure_capture(args: argparse.Namespace) -> Path:
    if args.capture is not None:
        cap = args.capture
    else:
        cap = DEFAULT_CAPTURE
        if not args.skip_build:
            cmd = [str(MAKE_CAPTURE)] + (["--force"] if args.force_build else []) + [str(cap)]
            if args.packets is not None:
                cmd.append(str(args.packets))
            print(f"== building / checking capture: {' '.join(cmd)}", flush=True)
            res = subprocess.run(cmd)
            if res.returncode != 0:
                print(f"make_http_capture.sh failed with exit code {res.returncode}", file=sys.stderr)
                sys.exit(3)
    if not cap.is_file():
        print(f"capture not found: {cap}", file=sys.stderr)
        sys.exit(2)
    return cap.resolve()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("tshark",):
        if not shutil.which(tool):
            print(f"missing required tool: {tool}", file=sys.stderr)
            return 3
    cap = ensure_capture(args)

    t = time.monotonic()
    packets = count_packets(cap)
    print(f"== capture {cap}: {packets:,} packets, {cap.stat().st_size / 1e6:,.0f} MB "
          f"(counted in {time.monotonic() - t:.1f} s)", flush=True)
    if packets == 0:
        print("capture has no packets", file=sys.stderr)
        return 2

    with output_dir(args.keep_dir, "bench_analyze.") as outdir:
        return run_bench(args, cap, packets, outdir)


@contextlib.contextmanager
def output_dir(keep_dir: Path | None, prefix: str) -> Iterator[Path]:
    """Where the raw tool outputs go: ``keep_dir`` (kept), else a temporary folder."""
    if keep_dir is not None:
        keep_dir.mkdir(parents=True, exist_ok=True)
        yield keep_dir
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def run_bench(args: argparse.Namespace, cap: Path, packets: int, outdir: Path) -> int:
    tshark_cmd = ["tshark", "-n", "-q", "-r", str(cap), "-z", "conv,tcp", "-z", "http,tree"]
    ws_cmd = wirestream_cmd() + ["analyze", str(cap), "--json", "--no-progress"]
    if args.workers is not None:
        ws_cmd += ["--workers", str(args.workers)]
    ws_cmd += args.analyze_args.split()

    results: dict[str, dict] = {}
    for name, cmd, kind in (("tshark", tshark_cmd, "tshark"), ("wirestream", ws_cmd, "analyze")):
        print(f"== running {name}: {' '.join(cmd)}", flush=True)
        r = run_measured(cmd, kind, outdir / f"{name}.out", outdir / f"{name}.err")
        results[name] = r
        print(f"   done in {r['wall_s']:.1f} s (exit {r['exit_code']})", flush=True)
        if r["exit_code"] != 0:
            print(f"{name} failed with exit code {r['exit_code']}; stderr tail:\n"
                  f"{tail(Path(r['stderr']))}", file=sys.stderr)
            return 3

    ts, ws = results["tshark"], results["wirestream"]

    # ---- tshark output: conversations and HTTP counters
    ts_text = Path(ts["stdout"]).read_text(errors="replace")
    ts_convs = sum(1 for line in ts_text.splitlines() if "<->" in line)
    ts["tcp_conversations"] = ts_convs
    ts["http"] = tshark_http_counts(ts_text)

    # ---- wirestream JSON summary
    try:
        summary = json.loads(Path(ws["stdout"]).read_text())
    except (OSError, ValueError) as e:
        print(f"wirestream --json output is not JSON ({e}); stdout tail:\n{tail(Path(ws['stdout']))}",
              file=sys.stderr)
        return 3
    records = summary.get("records", {})
    ws_convs = records.get("wire.connections")
    ws_packets = sum(f.get("packets", 0) for f in summary.get("files", []))
    ws["tcp_conversations"] = ws_convs
    ws["packets_read"] = ws_packets
    ws["elapsed_s_reported"] = summary.get("elapsed_s")
    ws["records"] = records
    ws["connection_states"] = summary.get("connection_states")
    ws["failed_files"] = summary.get("failed")

    for r in (ts, ws):
        r["packets_per_s"] = packets / r["wall_s"] if r["wall_s"] > 0 else 0.0
        r["cpu_us_per_packet"] = r["cpu_s"] * 1e6 / packets
    ratio = ws["packets_per_s"] / ts["packets_per_s"] if ts["packets_per_s"] else 0.0

    # ---- table
    print()
    print(f"capture: {cap}  ({packets:,} packets)   machine: {os.cpu_count()} CPUs")
    hdr = f"{'tool':<12}{'packets':>12}{'wall s':>10}{'packets/s':>12}{'CPU s':>9}{'CPU µs/pkt':>12}{'peak RSS MB':>13}"
    print(hdr)
    print("-" * len(hdr))
    for name, r in (("tshark", ts), ("wirestream", ws)):
        print(f"{name:<12}{packets:>12,}{r['wall_s']:>10.1f}{r['packets_per_s']:>12,.0f}"
              f"{r['cpu_s']:>9.1f}{r['cpu_us_per_packet']:>12.1f}{mb(r['peak_rss_mb']):>13}")
    print()
    kinds = ws["peak_rss_by_kind_mb"]
    nproc = ws["max_processes_by_kind"]
    parts = [f"{k} {mb(kinds[k])}" + (f" ({nproc[k]} procs)" if nproc.get(k, 0) > 1 else "")
             for k in KINDS if k in kinds]
    print("wirestream peak RSS by process kind (MB, each kind's own peak): " + ", ".join(parts))
    cpu_kinds = ws["approx_cpu_by_kind_s"]
    print("wirestream CPU by process kind (s, approx. from /proc samples): "
          + ", ".join(f"{k} {cpu_kinds[k]:.1f}" for k in KINDS if k in cpu_kinds))
    for name, r in (("tshark", ts), ("wirestream", ws)):
        for lp in r["leftover_processes"]:
            print(f"WARNING: {name} left process {lp['pid']} ({lp['kind']}) running after exit; "
                  f"its CPU is not in the figures: {lp['cmdline']}")
    print(f"wirestream elapsed_s (its own JSON): {ws['elapsed_s_reported']}   "
          f"(wall {ws['wall_s']:.1f} s incl. process start/stop)")
    print("wirestream records: " + ", ".join(f"{k}={v}" for k, v in records.items()))
    ws_tx = records.get("wire.transactions", 0)
    ws["transactions_per_s"] = ws_tx / ws["wall_s"] if ws["wall_s"] > 0 else 0.0
    print(f"wirestream L7: {ws_tx:,} HTTP transactions = {ws['transactions_per_s']:,.0f} transactions/s "
          f"({ws['cpu_s'] * 1e6 / ws_tx if ws_tx else 0:.1f} CPU µs per transaction, all stages)")
    if ts["http"]:
        print("tshark http,tree: " + ", ".join(f"{k}={v:,}" for k, v in ts["http"].items()))
    print()

    # ---- checks
    failures = []
    conv_ok = ws_convs == ts_convs
    print(f"TCP conversations: tshark conv,tcp {ts_convs:,}  wirestream wire.connections "
          f"{ws_convs if ws_convs is None else f'{ws_convs:,}'}  -> {'match' if conv_ok else 'MISMATCH'}")
    if not conv_ok:
        failures.append(f"conversation count mismatch (tshark {ts_convs}, wirestream {ws_convs})")
    pkt_ok = ws_packets == packets
    print(f"packets read:      capinfos {packets:,}  wirestream {ws_packets:,}  -> {'match' if pkt_ok else 'MISMATCH'}")
    if not pkt_ok:
        failures.append(f"packet count mismatch (capinfos {packets}, wirestream {ws_packets})")
    ts_responses = ts["http"].get("responses")
    if ts_responses is not None:
        tx_ok = ws_tx >= ts_responses
        print(f"HTTP:              tshark responses {ts_responses:,}  wirestream transactions "
              f"{ws_tx:,}  -> {'ok' if tx_ok else 'MISSING TRANSACTIONS'}")
        if not tx_ok:
            failures.append(f"fewer transactions ({ws_tx}) than tshark HTTP responses ({ts_responses})")
    if summary.get("failed"):
        failures.append(f"wirestream reports failed files: {summary['failed']}")
    ratio_ok = ratio >= args.target
    print(f"throughput ratio:  wirestream/tshark packets/s = {ratio:.3f}  (target >= {args.target})")
    if not ratio_ok:
        failures.append(f"ratio {ratio:.3f} below target {args.target}")
    verdict = "PASS" if not failures else "FAIL"
    print(f"{verdict}" + ("" if not failures else ": " + "; ".join(failures)))

    if args.json_out:
        doc = {
            "capture": str(cap),
            "capture_bytes": cap.stat().st_size,
            "packets": packets,
            "cpus": os.cpu_count(),
            "host": platform.node(),
            "python": sys.version.split()[0],
            "sample_interval_s": SAMPLE_INTERVAL_S,
            "workers": args.workers,
            "tshark": ts,
            "wirestream": ws,
            "ratio": ratio,
            "target": args.target,
            "checks": {
                "conversations_match": conv_ok,
                "packets_match": pkt_ok,
                "ratio_ok": ratio_ok,
            },
            "failures": failures,
            "verdict": verdict,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"figures written to {args.json_out}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
