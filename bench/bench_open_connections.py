#!/usr/bin/env python3
"""Peak processor memory with N simultaneously open TCP connections.

Acceptance: "a synthetic capture with 100,000 simultaneously open connections is
processed with <= 400 MB peak memory in the processor".

1. Writes a synthetic pcap (µs pcap, LINKTYPE_RAW, IPv4) with N TCP connections
   client 10.x.y.z:port -> 10.255.0.1:80 that are all open at the same time:
     phase 1  every connection: SYN, SYN-ACK, ACK, request, ACK, response, ACK
     phase 2  (all N open) each: one more client data segment, server ACK
     phase 3  each closes: FIN/ACK, FIN/ACK, ACK
   The capture spans ~42 s of capture time, well inside the 300 s idle timeout.
2. Runs ``wirestream analyze FILE --json --no-progress`` and samples the RSS of each
   process kind (analyze, ``wirestream process`` workers, tansu) every 0.1 s from /proc,
   plus each worker's VmHWM (the kernel's exact peak).  The worker peak is the figure
   checked against the target.  Checks ``records['wire.connections'] == N`` and
   ``connection_states == {'complete': N}``.  Optionally (default on) runs analyze once
   more on a 10-connection capture to get the worker's fixed baseline.
3. In a fresh child process: decodes the same capture, feeds a ``ConnectionTracker``
   directly (batches of 4096, like tests/local_pipeline.py) and measures the memory at
   the moment all N connections are open (after phase 2): RSS delta, and, in a second
   pass, tracemalloc (current, top allocation sites, and a per-object breakdown of one
   connection).

See bench/README.md.  Exit status: 0 PASS, 1 FAIL (worker peak over the target, or a
count mismatch), 2 bad arguments, 3 a tool failed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from bench_analyze import _read, output_dir, tail, wirestream_cmd
from bench_analyze import descendants as _descendants

# Process kinds for the per-kind RSS breakdown, in display order.
KINDS = ("analyze", "workers", "tansu", "tshark", "other")


def _rss_kb(pid: int) -> int:
    raw = _read(f"/proc/{pid}/status")
    if raw is None:
        return 0
    for line in raw.splitlines():
        if line.startswith(b"VmRSS:"):
            return int(line.split()[1])
    return 0  # zombie / kernel thread: no VmRSS line


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

BENCH_DIR = Path(__file__).resolve().parent
WORK_DIR = BENCH_DIR / "work"
SAMPLE_INTERVAL_S = 0.1
DEFAULT_CONNECTIONS = 100_000
DEFAULT_TARGET_MB = 400.0
BASELINE_CONNECTIONS = 10
BATCH = 4096
GEN_VERSION = 1  # bump when the generated traffic changes (invalidates cached captures)

# --------------------------------------------------------------- the capture ---
SERVER_IP = (10 << 24) | (255 << 16) | 1  # 10.255.0.1
SERVER_PORT = 80
CLIENT_PORT_BASE = 20_000
PORTS_PER_CLIENT = 1024  # client i: host 10.0.0.0 + 1 + i // 1024, port 20000 + i % 1024
BASE_TS_US = 1_700_000_000_000_000
# (packets per connection, capture-time span in µs, gap before the next phase in µs)
PHASES = ((7, 20_000_000, 1_000_000), (2, 10_000_000, 1_000_000), (3, 10_000_000, 0))
PACKETS_PER_CONN = sum(p[0] for p in PHASES)  # 12
REQ_LEN, RESP_LEN, REQ2_LEN = 120, 400, 80

FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10
SYN_OPTS = b"\x02\x04\x05\xb4\x01\x03\x03\x07"  # MSS 1460, NOP, window scale 7
M32 = 0xFFFFFFFF
LINKTYPE_RAW = 101

_ip_hdr = struct.Struct("!BBHHHBBHII")
_ip_words = struct.Struct("!10H")
_tcp_hdr = struct.Struct("!HHIIBBHHH")
_rec_hdr = struct.Struct("<IIII")


def _ip_checksum(hdr: bytes) -> int:
    s = sum(_ip_words.unpack(hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _client(i: int) -> tuple[int, int]:
    host = i // PORTS_PER_CLIENT + 1
    if host >= 0xFF0000:
        raise ValueError("too many connections for the 10.0.0.0/9 client range")
    return (10 << 24) + host, CLIENT_PORT_BASE + i % PORTS_PER_CLIENT


def _isns(i: int) -> tuple[int, int]:
    return (i * 2654435761 + 12345) & M32, (i * 40503 * 65537 + 777) & M32


def _conn_packets(i: int, phase: int) -> list[tuple]:
    """(c2s, seq, ack, flags, payload_len, window) of connection ``i`` in ``phase``."""
    c, s = _isns(i)
    c1, s1 = (c + 1) & M32, (s + 1) & M32
    if phase == 0:
        return [
            (True, c, 0, SYN, 0, 64240),
            (False, s, c1, SYN | ACK, 0, 65160),
            (True, c1, s1, ACK, 0, 502),
            (True, c1, s1, PSH | ACK, REQ_LEN, 502),
            (False, s1, (c1 + REQ_LEN) & M32, ACK, 0, 509),
            (False, s1, (c1 + REQ_LEN) & M32, PSH | ACK, RESP_LEN, 509),
            (True, (c1 + REQ_LEN) & M32, (s1 + RESP_LEN) & M32, ACK, 0, 501),
        ]
    if phase == 1:
        return [
            (True, (c1 + REQ_LEN) & M32, (s1 + RESP_LEN) & M32, PSH | ACK, REQ2_LEN, 501),
            (False, (s1 + RESP_LEN) & M32, (c1 + REQ_LEN + REQ2_LEN) & M32, ACK, 0, 509),
        ]
    cf, sf = (c1 + REQ_LEN + REQ2_LEN) & M32, (s1 + RESP_LEN) & M32
    return [
        (True, cf, sf, FIN | ACK, 0, 501),
        (False, sf, (cf + 1) & M32, FIN | ACK, 0, 509),
        (True, (cf + 1) & M32, (sf + 1) & M32, ACK, 0, 501),
    ]


def generate_capture(path: Path, n: int) -> dict:
    """Write the synthetic capture; return its description (also stored as PATH.json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = b"x" * max(REQ_LEN, RESP_LEN, REQ2_LEN)
    tmp = path.with_suffix(path.suffix + ".part")
    packets = 0
    ip_id = 0
    t_phase = 0
    phase_bounds = []  # (first packet index, first ts, last ts) per phase
    t0 = time.monotonic()
    with open(tmp, "wb", buffering=1 << 20) as fh:
        # pcap global header: µs magic, v2.4, snaplen 65535, LINKTYPE_RAW
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        for phase, (per_conn, span_us, gap_us) in enumerate(PHASES):
            count = per_conn * n
            k = 0
            first_ts = last_ts = None
            out = []
            for i in range(n):
                cip, cport = _client(i)
                for c2s, seq, ack, flags, plen, win in _conn_packets(i, phase):
                    ts = BASE_TS_US + t_phase + k * span_us // count
                    k += 1
                    opts = SYN_OPTS if flags & SYN else b""
                    tcp_len = 20 + len(opts)
                    total = 20 + tcp_len + plen
                    src, dst = (cip, SERVER_IP) if c2s else (SERVER_IP, cip)
                    sport, dport = (cport, SERVER_PORT) if c2s else (SERVER_PORT, cport)
                    ip_id = (ip_id + 1) & 0xFFFF
                    iph = _ip_hdr.pack(0x45, 0, total, ip_id, 0x4000, 64, 6, 0, src, dst)
                    iph = iph[:10] + _ip_checksum(iph).to_bytes(2, "big") + iph[12:]
                    tcph = _tcp_hdr.pack(sport, dport, seq, ack, (tcp_len // 4) << 4, flags, win, 0, 0)
                    out.append(_rec_hdr.pack(ts // 1_000_000, ts % 1_000_000, total, total))
                    out.append(iph)
                    out.append(tcph)
                    if opts:
                        out.append(opts)
                    if plen:
                        out.append(payload[:plen])
                    if first_ts is None:
                        first_ts = ts
                    last_ts = ts
                if len(out) > 50_000:
                    fh.write(b"".join(out))
                    out.clear()
            fh.write(b"".join(out))
            phase_bounds.append({"first_packet": packets, "packets": count,
                                 "first_ts_us": first_ts, "last_ts_us": last_ts})
            packets += count
            t_phase += span_us + gap_us
    os.replace(tmp, path)
    meta = {
        "generator_version": GEN_VERSION,
        "connections": n,
        "packets": packets,
        "bytes": path.stat().st_size,
        "phases": phase_bounds,
        "all_open_after_packet": phase_bounds[1]["first_packet"] + phase_bounds[1]["packets"],
        "capture_span_s": (phase_bounds[-1]["last_ts_us"] - phase_bounds[0]["first_ts_us"]) / 1e6,
        "generate_s": time.monotonic() - t0,
    }
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def ensure_capture(path: Path, n: int, force: bool) -> dict:
    meta_path = path.with_suffix(path.suffix + ".json")
    if not force and path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
        if (meta.get("generator_version") == GEN_VERSION and meta.get("connections") == n
                and meta.get("bytes") == path.stat().st_size):
            meta["reused"] = True
            return meta
    meta = generate_capture(path, n)
    meta["reused"] = False
    return meta


# ---------------------------------------------------------- RSS sampling ---
def _status_kb(pid: int, field: bytes) -> int:
    raw = _read(f"/proc/{pid}/status")
    if raw is None:
        return 0
    for line in raw.splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


class KindSampler(threading.Thread):
    """Per-kind RSS of a process tree every ``interval`` s, a worker timeline and VmHWM."""

    def __init__(self, root: int, interval: float = SAMPLE_INTERVAL_S):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.stop_event = threading.Event()
        self.t0 = time.monotonic()
        self.samples = 0
        self.peak_kind_kb = dict.fromkeys(KINDS, 0)
        self.peak_kind_at_s = dict.fromkeys(KINDS, 0.0)
        self.max_procs_kind = dict.fromkeys(KINDS, 0)
        self.peak_total_kb = 0
        self.worker_hwm_kb: dict[int, int] = {}  # pid -> last VmHWM seen
        self.worker_first_seen_s: float | None = None
        self.timeline: list[tuple[float, int, int, int]] = []  # (t, analyze, workers, tansu) kB

    def sample(self) -> None:
        kind_kb = dict.fromkeys(KINDS, 0)
        kind_n = dict.fromkeys(KINDS, 0)
        now = time.monotonic() - self.t0
        for pid in _descendants(self.root):
            kind = _classify(pid, self.root, "analyze")
            rss = _rss_kb(pid)
            if rss == 0:
                continue
            kind_kb[kind] += rss
            kind_n[kind] += 1
            if kind == "workers":
                hwm = _status_kb(pid, b"VmHWM:")
                if hwm:
                    self.worker_hwm_kb[pid] = hwm
                if self.worker_first_seen_s is None:
                    self.worker_first_seen_s = now
        self.samples += 1
        self.peak_total_kb = max(self.peak_total_kb, sum(kind_kb.values()))
        for k in KINDS:
            if kind_kb[k] > self.peak_kind_kb[k]:
                self.peak_kind_kb[k] = kind_kb[k]
                self.peak_kind_at_s[k] = now
            self.max_procs_kind[k] = max(self.max_procs_kind[k], kind_n[k])
        self.timeline.append((round(now, 2), kind_kb["analyze"], kind_kb["workers"], kind_kb["tansu"]))

    def run(self) -> None:
        while True:
            self.sample()
            if self.stop_event.wait(self.interval):
                return


def run_analyze(cap: Path, workers: int | None, outdir: Path, label: str) -> dict:
    cmd = wirestream_cmd() + ["analyze", str(cap), "--json", "--no-progress"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    out_path, err_path = outdir / f"{label}.out", outdir / f"{label}.err"
    print(f"== running: {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        sampler = KindSampler(proc.pid)
        sampler.start()
        try:
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            sampler.stop_event.set()
            sampler.join()
    wall = time.monotonic() - t0
    r = {
        "cmd": cmd,
        "exit_code": proc.returncode,
        "wall_s": wall,
        "rss_samples": sampler.samples,
        "peak_rss_by_kind_mb": {k: v / 1024 for k, v in sampler.peak_kind_kb.items() if v},
        "peak_rss_at_s": {k: sampler.peak_kind_at_s[k] for k, v in sampler.peak_kind_kb.items() if v},
        "max_processes_by_kind": {k: v for k, v in sampler.max_procs_kind.items() if v},
        "peak_rss_total_mb": sampler.peak_total_kb / 1024,
        # kernel-tracked peak RSS of each worker (last VmHWM read before it exited)
        "worker_vmhwm_mb": max(sampler.worker_hwm_kb.values(), default=0) / 1024,
        "worker_vmhwm_sum_mb": sum(sampler.worker_hwm_kb.values()) / 1024,
        "worker_first_seen_s": sampler.worker_first_seen_s,
        "timeline_kb": {"columns": ["t_s", "analyze", "workers", "tansu"], "rows": sampler.timeline},
        "stdout": str(out_path),
        "stderr": str(err_path),
    }
    print(f"   done in {wall:.1f} s (exit {proc.returncode})", flush=True)
    if proc.returncode != 0:
        return r
    try:
        summary = json.loads(out_path.read_text())
    except (OSError, ValueError) as e:
        r["exit_code"] = -1
        r["error"] = f"--json output is not JSON: {e}"
        return r
    r["records"] = summary.get("records", {})
    r["connection_states"] = summary.get("connection_states", {})
    r["packets_read"] = sum(f.get("packets", 0) for f in summary.get("files", []))
    r["elapsed_s_reported"] = summary.get("elapsed_s")
    r["failed_files"] = summary.get("failed")
    r["processor_counters"] = [
        {"partition": s.get("partition"), "received": s.get("received"), "counters": s.get("counters")}
        for s in summary.get("stats", []) if s.get("stage") == "processor.packets" and s.get("final")
    ]
    return r


# ----------------------------------------------------------- in-process child ---
def _self_rss_kb() -> int:
    return _rss_kb(os.getpid())


def _feed(tracker, headers, start: int, stop: int) -> None:
    for i in range(start, stop, BATCH):
        tracker.process(headers[i : min(i + BATCH, stop)])


def _one_connection(tracker) -> dict:
    """What one open connection costs in the compiled core: its share of the core's
    checkpoint bytes (the state's size, not the heap's: the heap is measured by RSS)."""
    n = max(1, tracker.open_connections)
    return {
        "state_bytes_per_connection": len(tracker._core.snapshot()) / n,
        "index_entries": tracker.index_entries,
    }


def inprocess_child(cap: Path, all_open_after: int, n: int, trace: bool) -> dict:
    """Decode the capture and feed a ConnectionTracker directly; measure memory."""
    import tracemalloc

    import numpy as np
    from wirestream.processors.connection_tracker import ConnectionTracker
    from wirestream.producers.capture_file import open_capture
    from wirestream.producers.decode import FrameDecoder

    from wirestream.packet_block import PACKET_DTYPE, pack_header

    res: dict = {"connections": n}
    t = time.monotonic()
    decoder = FrameDecoder()
    packed = bytearray()
    with open_capture(str(cap)) as reader:
        for f in reader:
            d = decoder.decode(f.linktype, f.data, f.ts_us, f.orig_len, f.number)
            if d is not None:
                packed += pack_header(d[0], 0, 0)
    headers = np.frombuffer(bytes(packed), dtype=PACKET_DTYPE)
    del packed
    res["decode_s"] = time.monotonic() - t
    res["packets"] = len(headers)

    def run(trace: bool) -> dict:
        records: list[dict] = []
        out: dict = {}
        gc.collect()
        rss0 = _self_rss_kb()
        if trace:
            tracemalloc.start()
        tracker = ConnectionTracker(records.append)
        t0 = time.monotonic()
        _feed(tracker, headers, 0, all_open_after)
        t_open = time.monotonic() - t0
        gc.collect()
        # --- the moment all N connections are open (end of phase 2) ---
        rss1 = _self_rss_kb()
        opened = max(1, tracker.open_connections)
        out["open_connections"] = tracker.open_connections
        out["dict_entries"] = tracker.index_entries
        out["records_before_close"] = len(records)
        out["open_phase_s"] = t_open
        if trace:
            cur, peak = tracemalloc.get_traced_memory()
            out["tracemalloc_current_mb"] = cur / 2**20
            out["tracemalloc_peak_mb"] = peak / 2**20
            out["bytes_per_open_connection"] = cur / opened
            snap = tracemalloc.take_snapshot()
            tracemalloc.stop()
            out["top_allocation_sites"] = [
                {"site": f"{Path(s.traceback[0].filename).name}:{s.traceback[0].lineno}",
                 "mb": s.size / 2**20, "blocks": s.count, "bytes_per_connection": s.size / opened}
                for s in snap.statistics("lineno")[:12]
            ]
            del snap
        else:
            out["rss_before_mb"] = rss0 / 1024
            out["rss_all_open_mb"] = rss1 / 1024
            out["rss_delta_mb"] = (rss1 - rss0) / 1024
            out["bytes_per_open_connection"] = (rss1 - rss0) * 1024 / opened
            out["one_connection"] = _one_connection(tracker)
        t1 = time.monotonic()
        _feed(tracker, headers, all_open_after, len(headers))
        tracker.flush()
        t_total = t_open + time.monotonic() - t1
        out["tracker_s"] = t_total
        out["tracker_packets_per_s"] = len(headers) / t_total if t_total else 0.0
        out["records"] = len(records)
        out["states"] = dict(Counter(r["state"] for r in records))
        out["process_peak_rss_mb"] = _status_kb(os.getpid(), b"VmHWM:") / 1024
        del tracker, records
        gc.collect()
        return out

    res["rss"] = run(trace=False)
    if trace:
        res["tracemalloc"] = run(trace=True)
    return res


def run_inprocess(cap: Path, meta: dict, trace: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--inprocess-child", str(cap),
           "--connections", str(meta["connections"]), "--all-open-after", str(meta["all_open_after_packet"])]
    if trace:
        cmd.append("--tracemalloc")
    print("== in-process ConnectionTracker (child process; RSS pass"
          + (", then tracemalloc pass (slow)" if trace else "") + ")", flush=True)
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": f"exit {res.returncode}: {res.stderr[-3000:]}"}
    out = json.loads(res.stdout)
    out["wall_s"] = time.monotonic() - t0
    print(f"   done in {out['wall_s']:.1f} s", flush=True)
    return out


# ---------------------------------------------------------------------- main ---
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Peak processor memory with N simultaneously open TCP connections.")
    p.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS,
                   help=f"simultaneously open connections (default {DEFAULT_CONNECTIONS:,})")
    p.add_argument("--capture", type=Path, default=None,
                   help="where to write the capture (default bench/work/open_connections_N.pcap)")
    p.add_argument("--force-build", action="store_true", help="regenerate the capture even if a matching one exists")
    p.add_argument("--workers", type=int, default=1,
                   help="pass --workers N to wirestream analyze (default 1: the target is per worker)")
    p.add_argument("--target-mb", type=float, default=DEFAULT_TARGET_MB,
                   help=f"PASS if the worker's peak RSS <= this many MB of 10^6 bytes "
                        f"(default {DEFAULT_TARGET_MB:.0f})")
    p.add_argument("--no-baseline", action="store_true",
                   help=f"skip the {BASELINE_CONNECTIONS}-connection analyze run (worker fixed cost)")
    p.add_argument("--no-inprocess", action="store_true", help="skip the in-process ConnectionTracker measurement")
    p.add_argument("--no-analyze", action="store_true", help="only generate and measure in-process")
    p.add_argument("--tracemalloc", action="store_true",
                   help="add an in-process pass under tracemalloc: top allocation sites (~10x slower)")
    p.add_argument("--keep-dir", type=Path, default=None, help="keep raw outputs here (default: temp dir)")
    p.add_argument("--json", dest="json_out", type=Path, help="write all figures to this JSON file")
    p.add_argument("--inprocess-child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--all-open-after", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.connections < 1:
        p.error("--connections must be >= 1")
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be >= 1")
    return args


def mb(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.inprocess_child is not None:
        json.dump(inprocess_child(args.inprocess_child, args.all_open_after, args.connections,
                                  args.tracemalloc), sys.stdout)
        return 0

    n = args.connections
    cap = (args.capture or WORK_DIR / f"open_connections_{n}.pcap").resolve()
    print(f"== capture {cap}", flush=True)
    meta = ensure_capture(cap, n, args.force_build)
    print(f"   {'reused' if meta['reused'] else 'generated'}: {n:,} connections, {meta['packets']:,} packets, "
          f"{meta['bytes'] / 1e6:,.0f} MB, {meta['capture_span_s']:.1f} s of capture time"
          + ("" if meta["reused"] else f" (written in {meta['generate_s']:.1f} s)"), flush=True)

    with output_dir(args.keep_dir, "bench_open_connections.") as outdir:
        return run_bench(args, cap, meta, outdir)


def run_bench(args: argparse.Namespace, cap: Path, meta: dict, outdir: Path) -> int:
    n = args.connections
    failures: list[str] = []
    ws = base = inproc = None

    if not args.no_analyze:
        ws = run_analyze(cap, args.workers, outdir, "analyze")
        if ws["exit_code"] != 0:
            print(f"wirestream analyze failed ({ws.get('error') or 'exit ' + str(ws['exit_code'])}); "
                  f"stderr tail:\n{tail(Path(ws['stderr']))}", file=sys.stderr)
            return 3
        if not args.no_baseline:
            small = WORK_DIR / f"open_connections_{BASELINE_CONNECTIONS}.pcap"
            ensure_capture(small, BASELINE_CONNECTIONS, False)
            base = run_analyze(small, args.workers, outdir, "baseline")
            if base["exit_code"] != 0:
                print(f"baseline analyze failed; stderr tail:\n{tail(Path(base['stderr']))}", file=sys.stderr)
                base = None
    if not args.no_inprocess:
        inproc = run_inprocess(cap, meta, args.tracemalloc)
        if "error" in inproc:
            print(f"in-process measurement failed: {inproc['error']}", file=sys.stderr)
            return 3

    # ---- table (MiB = /proc kB / 1024; the verdict uses MB = 10^6 bytes, the stricter reading)
    print()
    print(f"capture: {cap}  ({n:,} connections, {meta['packets']:,} packets, "
          f"{meta['capture_span_s']:.1f} s capture time)   machine: {os.cpu_count()} CPUs")
    worker_peak_mb = None
    if ws is not None:
        kinds = ws["peak_rss_by_kind_mb"]
        worker_peak = max(kinds.get("workers", 0.0), ws["worker_vmhwm_mb"])  # MiB
        worker_peak_mb = worker_peak * 2**20 / 1e6
        ws["worker_peak_mib"] = worker_peak
        ws["worker_peak_mb_decimal"] = worker_peak_mb
        ws["packets_per_s"] = meta["packets"] / ws["wall_s"]
        hdr = (f"{'run':<18}{'wall s':>8}{'packets/s':>11}{'worker MiB':>12}{'worker HWM':>12}"
               f"{'analyze MiB':>13}{'tansu MiB':>11}{'total MiB':>11}")
        print(hdr)
        print("-" * len(hdr))
        rows = [(f"analyze N={n:,}", ws, meta["packets"])]
        if base is not None:
            rows.append((f"analyze N={BASELINE_CONNECTIONS}", base, BASELINE_CONNECTIONS * PACKETS_PER_CONN))
        for name, r, pk in rows:
            k = r["peak_rss_by_kind_mb"]
            print(f"{name:<18}{r['wall_s']:>8.1f}{pk / r['wall_s']:>11,.0f}{mb(k.get('workers')):>12}"
                  f"{mb(r['worker_vmhwm_mb']):>12}{mb(k.get('analyze')):>13}{mb(k.get('tansu')):>11}"
                  f"{mb(r['peak_rss_total_mb']):>11}")
        nw = ws["max_processes_by_kind"].get("workers", 0)
        print(f"(each kind's own peak RSS, sampled every {SAMPLE_INTERVAL_S} s; 'worker HWM' = the largest "
              f"worker's VmHWM, the kernel's exact peak; {nw} worker(s)"
              + ("; 'worker MiB' is the sum over all workers and is what the verdict uses)" if nw > 1 else ")"))
        if base is not None:
            bw = max(base["peak_rss_by_kind_mb"].get("workers", 0.0), base["worker_vmhwm_mb"])
            ws["worker_baseline_mib"] = bw
            ws["worker_bytes_per_connection"] = (worker_peak - bw) * 2**20 / n
            print(f"worker above its {BASELINE_CONNECTIONS}-connection baseline ({bw:,.0f} MiB): "
                  f"{worker_peak - bw:,.0f} MiB = {ws['worker_bytes_per_connection']:,.0f} bytes per connection")
        print(f"wirestream elapsed_s (its own JSON): {ws['elapsed_s_reported']}; worker peak at "
              f"{ws['peak_rss_at_s'].get('workers', 0):.1f} s of {ws['wall_s']:.1f} s wall")
        rec = ws["records"].get("wire.connections")
        states = ws["connection_states"]
        rec_ok = rec == n
        states_ok = states == {"complete": n}
        pkt_ok = ws["packets_read"] == meta["packets"]
        print(f"wire.connections: {rec}  (expected {n:,}) -> {'match' if rec_ok else 'MISMATCH'}")
        print(f"connection_states: {states}  -> {'ok' if states_ok else 'MISMATCH'}")
        print(f"packets read: {ws['packets_read']:,} (expected {meta['packets']:,}) -> "
              f"{'match' if pkt_ok else 'MISMATCH'}")
        if not rec_ok:
            failures.append(f"wire.connections {rec} != {n}")
        if not states_ok:
            failures.append(f"connection_states {states} != complete {n}")
        if not pkt_ok:
            failures.append(f"packets read {ws['packets_read']} != {meta['packets']}")
        if ws.get("failed_files"):
            failures.append(f"failed files: {ws['failed_files']}")
        if worker_peak_mb > args.target_mb:
            failures.append(f"worker peak RSS {worker_peak_mb:,.0f} MB > {args.target_mb:,.0f} MB")

    if inproc is not None:
        r = inproc["rss"]
        print()
        print(f"in-process ConnectionTracker ({inproc['packets']:,} packets, batches of {BATCH}), "
              f"at the moment all {r['open_connections']:,} connections are open:")
        print(f"  RSS delta     {r['rss_delta_mb']:>8,.1f} MiB = {r['bytes_per_open_connection']:>6,.0f} bytes/connection"
              f"   (RSS {r['rss_before_mb']:,.0f} -> {r['rss_all_open_mb']:,.0f} MiB)")
        tm = inproc.get("tracemalloc")
        if tm is not None:
            print(f"  tracemalloc   {tm['tracemalloc_current_mb']:>8,.1f} MiB = {tm['bytes_per_open_connection']:>6,.0f} "
                  f"bytes/connection   (tracemalloc peak {tm['tracemalloc_peak_mb']:,.1f} MiB)")
        print(f"  tracker alone: {r['tracker_packets_per_s']:,.0f} packets/s; "
              f"records {r['records']:,}, states {r['states']}")
        oc = r["one_connection"]
        print(f"  one connection in the core's checkpoint: {oc['state_bytes_per_connection']:,.0f} bytes "
              f"({oc['index_entries']:,} index entries)")
        if tm is not None:
            print("  top allocation sites at that moment (tracemalloc, line of the innermost frame):")
            for s in tm["top_allocation_sites"][:10]:
                print(f"    {s['site']:<28}{s['mb']:>8.1f} MiB {s['bytes_per_connection']:>7.0f} B/conn")
        if r["open_connections"] != n:
            failures.append(f"in-process: {r['open_connections']} open at the check point, expected {n}")
        if r["records"] != n or r["states"] != {"complete": n}:
            failures.append(f"in-process: records {r['records']} states {r['states']}")

    print()
    verdict = "PASS" if not failures else "FAIL"
    if worker_peak_mb is not None:
        print(f"worker (processor) peak RSS {worker_peak_mb:,.0f} MB ({ws['worker_peak_mib']:,.0f} MiB) "
              f"vs target <= {args.target_mb:,.0f} MB")
    print(verdict + ("" if not failures else ": " + "; ".join(failures)))

    if args.json_out:
        doc = {
            "capture": str(cap), "capture_meta": meta, "connections": n, "cpus": os.cpu_count(),
            "host": platform.node(), "python": sys.version.split()[0],
            "sample_interval_s": SAMPLE_INTERVAL_S, "workers": args.workers, "target_mb": args.target_mb,
            "analyze": ws, "baseline": base, "inprocess": inproc,
            "failures": failures, "verdict": verdict, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"figures written to {args.json_out}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
