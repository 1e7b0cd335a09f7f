#!/usr/bin/env python3
"""Benchmark wirestream against tshark on one capture: the targets of issue 16.

In one run, on the same file:

  1. tshark -n -q -r CAP -z conv,tcp -z http,tree: wall, CPU (wait4), peak RSS
     (ru_maxrss), packets/s;
  2. ``wirestream analyze CAP --json --no-progress --out TMP`` (one-shot, default options:
     L7 and windows on): wall, packets/s, CPU and peak memory of every process of its tree
     (the analyze process, the embedded broker, every worker), by stage;
  3. steady state: a fresh embedded broker and registry, 2 packet workers and 1 windows
     worker started and idle, then ``wirestream produce pcap CAP`` timed until every
     partition's final report is on wire.stats (processor.packets and
     processor.windows); packets/s, CPU per packet and peak memory of each stage
     (producer, broker, each packet worker, the windows worker), and what the broker
     holds in memory at the end.

Steps 2 and 3 run once per ``--compression`` codec (``$WIRESTREAM_COMPRESSION`` for the
producers). It prints the targets of issue 16 as PASS/FAIL lines; the exit status is 0
when the runs completed and the cross-checks hold (the targets are reported, not
enforced: see ``--strict``). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / "work"
MAKE_CAPTURE = BENCH_DIR / "make_http_capture.sh"
DEFAULT_PACKETS = 300_000
SAMPLE_INTERVAL_S = 0.1
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: issue 16's targets (ratios to tshark in the same run)
TARGET_ONESHOT = 2.0
TARGET_STEADY = 4.0

ASSIGNED_RE = re.compile(r"assigned partitions \[")
#: Faust (aiokafka) logs this when the windows worker's group has given it its partitions.
FAUST_READY_RE = re.compile(r"Setting newly assigned partitions")


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


def cpu_s(pid: int) -> float | None:
    """user+sys of the process itself (all its threads), from /proc/PID/stat."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # utime and stime are fields 14 and 15 of stat: index 11 and 12 after the comm
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def mem_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB; (0, 0) for a process gone or a zombie."""
    raw = _read(f"/proc/{pid}/status")
    rss = hwm = 0
    if raw is not None:
        for line in raw.splitlines():
            if line.startswith(b"VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith(b"VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def descendants(root: int) -> list[int]:
    """``root`` and every live descendant of it (walks the ppid of all pids)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def classify(pid: int) -> str:
    """The stage a process of wirestream's tree is: analyze/producer, broker, packet
    worker, windows worker, tshark, other."""
    raw = _read(f"/proc/{pid}/cmdline") or b""
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not argv:
        return "other"
    if os.path.basename(argv[0]) == "tansu":
        return "broker"
    if os.path.basename(argv[0]) == "tshark":
        return "tshark"
    if "process" in argv:
        role = argv[argv.index("--role") + 1] if "--role" in argv[:-1] else "all"
        # analyze runs one "all" worker (windows in a thread of it) for a small input
        return {"packets": "packet worker", "windows": "windows worker"}.get(role, "worker (all)")
    if "analyze" in argv:
        return "analyze"
    if "produce" in argv:
        return "producer"
    return "other"


def is_unexeced_fork(pid: int) -> bool:
    """A child with its parent's command line: forked, not yet exec'd (a short-lived helper
    of the parent, not a stage of its own)."""
    fields = _stat_fields(pid)
    if fields is None:
        return False
    cmdline = _read(f"/proc/{pid}/cmdline")
    return cmdline is not None and cmdline == _read(f"/proc/{int(fields[1])}/cmdline")


@dataclass
class Proc:
    """What was seen of one process: its stage, its CPU and memory at the last sample."""

    pid: int
    kind: str
    cpu_first_s: float = 0.0
    cpu_last_s: float = 0.0
    hwm_kb: int = 0
    rss_kb: int = 0


class Watcher(threading.Thread):
    """Samples a process tree (``root`` and its descendants) or a fixed set of pids every
    ``interval`` s: each process's CPU and VmHWM, and the peak of the summed VmRSS.

    The CPU of a process is taken from its last sample, so up to ``interval`` of a process
    that exits is missed (the caller's wait4 figures are exact, per tree)."""

    def __init__(self, root: int | None = None, pids: dict[int, str] | None = None,
                 interval: float = SAMPLE_INTERVAL_S) -> None:
        super().__init__(daemon=True)
        self.root, self.fixed, self.interval = root, dict(pids or {}), interval
        self.stop_event = threading.Event()
        self.procs: dict[int, Proc] = {}
        self.peak_sum_rss_kb = 0
        self.lock = threading.Lock()

    def sample(self) -> None:
        pids = self.fixed if self.root is None else {p: "" for p in descendants(self.root)}
        total = 0
        with self.lock:
            for pid, kind in pids.items():
                if not kind and pid != self.root and is_unexeced_fork(pid):
                    continue  # e.g. a worker's ldconfig (ctypes.util) caught before its exec
                cpu = cpu_s(pid)
                rss, hwm = mem_kb(pid)
                if cpu is None or rss == 0:
                    continue  # gone between the walk and the read, or a zombie
                proc = self.procs.get(pid)
                # Classified at every sample: a child seen between fork and exec still has
                # its parent's command line.
                kind = kind or ("root" if pid == self.root else classify(pid))
                if proc is None:
                    proc = self.procs[pid] = Proc(pid, kind, cpu_first_s=cpu)
                proc.kind = kind
                proc.cpu_last_s = cpu
                proc.hwm_kb = max(proc.hwm_kb, hwm, rss)
                proc.rss_kb = rss
                total += rss
        self.peak_sum_rss_kb = max(self.peak_sum_rss_kb, total)

    def run(self) -> None:
        while True:
            self.sample()
            if self.stop_event.wait(self.interval):
                return

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


# ------------------------------------------------------------------- helpers ---
def wirestream_cmd() -> list[str]:
    script = Path(sys.executable).with_name("wirestream")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wirestream"]


def wirestream_version() -> str:
    """The installed version and, from a checkout, the commit (figures move with the code)."""
    from importlib.metadata import version

    res = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"], capture_output=True,
                         text=True)
    return f"{version('wirestream')}" + (f" ({res.stdout.strip()})" if res.returncode == 0 else "")


def count_packets(cap: Path) -> int:
    res = subprocess.run(["capinfos", "-c", "-M", str(cap)], capture_output=True, text=True)
    for line in res.stdout.splitlines():
        if line.startswith("Number of packets"):
            return int(line.split(":", 1)[1].strip())
    sys.exit(f"capinfos gave no packet count for {cap}: {res.stderr.strip()}")


def tail(path: Path, n: int = 20) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-n:])


def tshark_http_counts(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        s = line.strip()
        for key, label in (("total", "Total HTTP Packets"), ("requests", "HTTP Request Packets"),
                           ("responses", "HTTP Response Packets")):
            if s.startswith(label):
                parts = s[len(label):].split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0])
    return out


def machine_load() -> dict[str, Any]:
    """How busy the machine is besides us: load average and the busiest other processes."""
    res = subprocess.run(["ps", "-eo", "pid,pcpu,etimes,args", "--sort=-pcpu"], capture_output=True, text=True)
    me = os.getpid()
    busy = []
    for line in res.stdout.splitlines()[1:]:
        parts = line.split(None, 3)
        if len(parts) < 4 or int(parts[0]) == me:
            continue
        if float(parts[1]) >= 5.0:
            busy.append(f"{parts[1]}% {parts[3][:100]}")
    return {"loadavg": os.getloadavg(), "busy_processes": busy[:6]}


def fmt(x: float | None, spec: str = ",.1f") -> str:
    return "-" if x is None else format(x, spec)


def wait_reaped(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, Any] | None:
    """wait4 ``proc`` (its exact CPU and maxrss) within ``timeout`` s; None if still running."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


# ------------------------------------------------------------------ 1. tshark ---
def run_tshark(cap: Path, packets: int, outdir: Path) -> dict[str, Any]:
    cmd = ["tshark", "-n", "-q", "-r", str(cap), "-z", "conv,tcp", "-z", "http,tree"]
    print(f"== tshark: {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    with open(outdir / "tshark.out", "wb") as out, open(outdir / "tshark.err", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"tshark exited with {code}:\n{tail(outdir / 'tshark.err')}")
    text = (outdir / "tshark.out").read_text(errors="replace")
    cpu = ru.ru_utime + ru.ru_stime
    version = subprocess.run(["tshark", "--version"], capture_output=True, text=True).stdout.split("\n", 1)[0]
    r = {"cmd": cmd, "version": version, "wall_s": wall, "cpu_s": cpu, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
         "peak_mb": ru.ru_maxrss / 1024, "packets_per_s": packets / wall, "cpu_us_per_packet": cpu * 1e6 / packets,
         "tcp_conversations": sum(1 for line in text.splitlines() if "<->" in line),
         "http": tshark_http_counts(text)}
    print(f"   {wall:.1f} s, {r['packets_per_s']:,.0f} packets/s, CPU {cpu:.1f} s "
          f"({r['cpu_us_per_packet']:.1f} µs/packet), peak {r['peak_mb']:,.0f} MB", flush=True)
    return r


# --------------------------------------------------------- 2. analyze one-shot ---
def stages_of(procs: list[Proc], window_cpu: bool) -> list[dict[str, Any]]:
    """Per-process figures, packet workers numbered, in pipeline order."""
    order = {"analyze": 0, "root": 0, "producer": 1, "broker": 2, "worker (all)": 3, "packet worker": 3,
             "windows worker": 4}
    out, n = [], 0
    for p in sorted(procs, key=lambda p: (order.get(p.kind, 9), p.pid)):
        name = p.kind
        if p.kind == "packet worker":
            n += 1
            name = f"packet worker {n}"
        cpu = p.cpu_last_s - p.cpu_first_s if window_cpu else p.cpu_last_s
        out.append({"stage": name, "pid": p.pid, "cpu_s": cpu, "peak_mb": p.hwm_kb / 1024,
                    "end_rss_mb": p.rss_kb / 1024})
    return out


def run_analyze(cap: Path, packets: int, codec: str, args: argparse.Namespace, outdir: Path) -> dict[str, Any]:
    out_dir = Path(tempfile.mkdtemp(prefix="analyze-out.", dir=outdir))
    cmd = [*wirestream_cmd(), "analyze", str(cap), "--json", "--no-progress", "--out", str(out_dir),
           *args.analyze_args.split()]
    env = {**os.environ, "WIRESTREAM_COMPRESSION": codec}
    print(f"== analyze one-shot, compression {codec}: {' '.join(cmd)}", flush=True)
    n = len(list(outdir.glob(f"analyze-{codec}.*.out"))) + 1
    stdout, stderr = outdir / f"analyze-{codec}.{n}.out", outdir / f"analyze-{codec}.{n}.err"
    t0 = time.monotonic()
    with open(stdout, "wb") as so, open(stderr, "wb") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, stdin=subprocess.DEVNULL, env=env)
        watcher = Watcher(root=proc.pid)
        watcher.start()
        progress = Progress(f"analyze ({codec})", t0)
        try:
            while (res := wait_reaped(proc, 5.0)) is None:
                progress.tick(watcher)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            watcher.stop()
    wall = time.monotonic() - t0
    code, ru = res
    shutil.rmtree(out_dir, ignore_errors=True)
    if code != 0:
        raise RuntimeError(f"analyze exited with {code}:\n{tail(stderr)}")
    summary = json.loads(stdout.read_text())
    procs = list(watcher.procs.values())
    for p in procs:
        if p.kind == "root":
            p.kind = "analyze"
    stages = stages_of(procs, window_cpu=False)
    # wait4: the analyze process and every descendant it reaped (its workers and broker),
    # exact; the per-stage figures are /proc samples, short of each process's last 0.1 s.
    cpu = ru.ru_utime + ru.ru_stime
    peak_sum_mb = sum(s["peak_mb"] for s in stages)
    records = summary.get("records", {})
    r = {"cmd": cmd, "compression": codec, "wall_s": wall, "packets_per_s": packets / wall,
         "elapsed_s_reported": summary.get("elapsed_s"), "cpu_s": cpu, "cpu_us_per_packet": cpu * 1e6 / packets,
         "sampled_cpu_s": sum(s["cpu_s"] for s in stages), "stages": stages,
         "peak_mb_sum_of_processes": peak_sum_mb, "peak_mb_simultaneous": watcher.peak_sum_rss_kb / 1024,
         "records": records, "packets_read": sum(f.get("packets", 0) for f in summary.get("files", [])),
         "tcp_conversations": records.get("wire.connections"), "failed_files": summary.get("failed")}
    print(f"   {wall:.1f} s, {r['packets_per_s']:,.0f} packets/s, CPU {cpu:.1f} s "
          f"({r['cpu_us_per_packet']:.1f} µs/packet), peak {peak_sum_mb:,.0f} MB summed over "
          f"{len(stages)} processes", flush=True)
    return r


class Progress:
    """A line every few seconds while a run goes on (runs take minutes)."""

    def __init__(self, name: str, t0: float) -> None:
        self.name, self.t0 = name, t0

    def tick(self, watcher: Watcher, extra: str = "") -> None:
        with watcher.lock:
            procs = list(watcher.procs.values())
        cpu = sum(p.cpu_last_s - p.cpu_first_s for p in procs)
        rss = sum(p.rss_kb for p in procs) / 1024
        print(f"   ... {self.name}: {time.monotonic() - self.t0:5.0f} s, {len(procs)} processes seen, "
              f"CPU {cpu:.0f} s, RSS now {rss:,.0f} MB{extra}", flush=True)


# ------------------------------------------------------------- 3. steady state ---
@dataclass
class Workers:
    """2 (``--workers``) packet workers and 1 windows worker of one group, as a deployment
    runs them (``wirestream process --role packets`` / ``--role windows``)."""

    bootstrap: str
    registry: str
    partitions: int
    logdir: Path
    env: dict[str, str]
    group: str = field(default_factory=lambda: f"bench-steady-{uuid.uuid4().hex[:8]}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, role: str) -> None:
        with open(self.logdir / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [*wirestream_cmd(), "process", "--role", role, "--group", self.group,
                 "--bootstrap", self.bootstrap, "--registry", self.registry,
                 "--partitions", str(self.partitions), "--loglevel", "info"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=self.env)

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text(errors="replace")

    def wait_ready(self, name: str, pattern: re.Pattern[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not pattern.search(self.log(name)):
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"worker {name} exited:\n{self.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class StatsReader:
    """wire.stats from the beginning (a fresh broker): the final reports, by source."""

    def __init__(self, bootstrap: str, registry: str) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer

        from wirestream.codec import AvroCodec
        from wirestream.kafka import consumer_config
        from wirestream.reader import partitions_of
        from wirestream.topics import STATS

        self.codec = AvroCodec(registry)
        self.consumer = Consumer({**consumer_config(bootstrap), "fetch.wait.max.ms": 50})
        tps = partitions_of(bootstrap, [STATS])
        for tp in tps:
            tp.offset = OFFSET_BEGINNING
        self.consumer.assign(tps)
        #: (stage, source, partition) -> CreateTime (s) of its final report
        self.finals: dict[tuple[str, str, int], float] = {}

    def poll(self, timeout: float) -> None:
        for m in self.consumer.consume(10_000, timeout):
            if m.error() is not None:
                continue
            rec = self.codec.decode(m.value())
            if rec.get("final"):
                self.finals.setdefault((rec["stage"], rec["source_id"], rec["partition"]), m.timestamp()[1] / 1000)

    def close(self) -> None:
        self.consumer.close()


def run_steady(cap: Path, packets: int, codec: str, args: argparse.Namespace, outdir: Path) -> dict[str, Any]:
    from wirestream.broker import EmbeddedBroker, partition_count
    from wirestream.registry import EmbeddedSchemaRegistry
    from wirestream.topics import OBSERVATIONS, PACKETS, PACKETS_STAGE, WINDOWS_STAGE

    print(f"== steady state, compression {codec}: fresh embedded broker and registry, {args.workers} packet "
          "workers + 1 windows worker", flush=True)
    env = {**os.environ, "WIRESTREAM_COMPRESSION": codec}
    n = len(list(outdir.glob(f"steady-{codec}.*"))) + 1
    logdir = outdir / f"steady-{codec}.{n}"
    logdir.mkdir()
    with EmbeddedBroker(log_path=logdir / "broker.log") as broker, EmbeddedSchemaRegistry() as registry:
        # the broker is the tansu process among our children
        broker_pid = next(p for p in descendants(os.getpid()) if classify(p) == "broker")
        workers = Workers(broker.bootstrap, registry.url, args.partitions, logdir, env)
        reader = None
        try:
            t_start = time.monotonic()
            for i in range(args.workers):
                workers.start(f"packets-{i + 1}", "packets")
            workers.start("windows", "windows")
            for i in range(args.workers):
                if not workers.wait_ready(f"packets-{i + 1}", ASSIGNED_RE, args.run_timeout):
                    raise RuntimeError(f"packet worker {i + 1} was not assigned partitions in {args.run_timeout} s")
            if not workers.wait_ready("windows", FAUST_READY_RE, 60):
                print("   (the windows worker logged no readiness in 60 s; going on)", flush=True)
            # the group settles (a late rebalance would be part of the measurement)
            time.sleep(args.settle)
            workers.check_alive()
            print(f"   workers up and idle after {time.monotonic() - t_start:.1f} s", flush=True)
            partitions = partition_count(broker.bootstrap, PACKETS)
            obs_partitions = partition_count(broker.bootstrap, OBSERVATIONS)
            reader = StatsReader(broker.bootstrap, registry.url)
            reader.poll(0.5)
            pids = {broker_pid: "broker", **{p.pid: classify(p.pid) for p in workers.procs.values()}}
            watcher = Watcher(pids=pids)
            watcher.sample()  # the CPU each process has used so far: the window starts here
            watcher.start()
            cmd = [*wirestream_cmd(), "produce", "pcap", str(cap), "--bootstrap", broker.bootstrap,
                   "--registry", registry.url, "--partitions", str(args.partitions)]
            print(f"   {' '.join(cmd)}", flush=True)
            t0_wall = time.time()
            t0 = time.monotonic()
            with open(logdir / "produce.out", "wb") as so:
                producer = subprocess.Popen(cmd, stdout=so, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env)
            progress = Progress(f"steady ({codec})", t0)
            produced: tuple[int, Any] | None = None
            t_produced = None
            source_id = None
            last_tick = t0
            while True:
                reader.poll(0.2)
                if produced is None:
                    produced = wait_reaped(producer, 0)
                    if produced is not None:
                        t_produced = time.monotonic() - t0
                        if produced[0] != 0:
                            raise RuntimeError(f"produce pcap exited with {produced[0]}:\n{tail(logdir / 'produce.out')}")
                        m = re.search(r"published as source (\S+?);", (logdir / "produce.out").read_text())
                        if m is None:
                            raise RuntimeError(f"no source id in produce's output:\n{tail(logdir / 'produce.out')}")
                        source_id = m.group(1)
                        print(f"   produce pcap done in {t_produced:.1f} s ({packets / t_produced:,.0f} packets/s); "
                              f"source {source_id}", flush=True)
                if source_id is not None:
                    want = [(PACKETS_STAGE, source_id, p) for p in range(partitions)]
                    want += [(WINDOWS_STAGE, source_id, q) for q in range(obs_partitions)]
                    if all(k in reader.finals for k in want):
                        t_end = max(reader.finals[k] for k in want) - t0_wall
                        break
                if time.monotonic() - t0 > args.run_timeout:
                    raise RuntimeError(f"no final reports from every partition in {args.run_timeout} s")
                if time.monotonic() - last_tick > 5:
                    last_tick = time.monotonic()
                    workers.check_alive()
                    progress.tick(watcher, "" if produced is not None else " (producing)")
            watcher.sample()
            watcher.stop()
            time.sleep(0.3)
            broker_rss_end_kb = mem_kb(broker_pid)[0]
        finally:
            if reader is not None:
                reader.close()
            workers.stop()
    code, ru = produced
    stages = stages_of(list(watcher.procs.values()), window_cpu=True)
    prod_stage = {"stage": "producer", "pid": producer.pid, "cpu_s": ru.ru_utime + ru.ru_stime,
                  "peak_mb": ru.ru_maxrss / 1024, "end_rss_mb": None}
    stages.insert(0, prod_stage)
    cpu = sum(s["cpu_s"] for s in stages)
    r = {"cmd": cmd, "compression": codec, "wall_s": t_end, "packets_per_s": packets / t_end,
         "produce_s": t_produced, "produce_packets_per_s": packets / t_produced,
         "cpu_s": cpu, "cpu_us_per_packet": cpu * 1e6 / packets, "stages": stages,
         "peak_mb_sum_of_processes": sum(s["peak_mb"] for s in stages),
         "broker_rss_end_mb": broker_rss_end_kb / 1024, "source_id": source_id,
         "partitions": partitions, "observation_partitions": obs_partitions}
    print(f"   {t_end:.1f} s to the last final report, {r['packets_per_s']:,.0f} packets/s, CPU "
          f"{cpu:.1f} s ({r['cpu_us_per_packet']:.1f} µs/packet); broker holds {r['broker_rss_end_mb']:,.0f} MB "
          "at the end", flush=True)
    return r


# ---------------------------------------------------------------------- report ---
def print_report(doc: dict[str, Any]) -> list[str]:
    """Print the tables and target lines; return the failed cross-checks."""
    packets, ts = doc["packets"], doc["tshark"]
    print()
    print(f"capture {doc['capture']}: {packets:,} packets, {doc['capture_bytes'] / 1e6:,.0f} MB; "
          f"{doc['cpus']} CPUs; load average {doc['load_start']['loadavg'][0]:.2f} at start, "
          f"{doc['load_end']['loadavg'][0]:.2f} at end")
    for line in doc["load_start"]["busy_processes"]:
        print(f"  busy at start: {line}")
    print(f"{ts['version'].rstrip('.')}; wirestream {doc['wirestream_version']}")
    hdr = (f"{'run':<32}{'wall s':>8}{'packets/s':>11}{'× tshark':>9}{'CPU s':>8}{'CPU µs/pkt':>11}"
           f"{'peak MB':>9}")
    print()
    print(hdr)
    print("-" * len(hdr))
    print(f"{'tshark conv,tcp + http,tree':<32}{ts['wall_s']:>8.1f}{ts['packets_per_s']:>11,.0f}{'1.00':>9}"
          f"{ts['cpu_s']:>8.1f}{ts['cpu_us_per_packet']:>11.1f}{ts['peak_mb']:>9,.0f}")
    for kind, label in (("analyze", "analyze one-shot"), ("steady", "steady state")):
        for codec, r in doc[kind].items():
            print(f"{label + ' (' + codec + ')':<32}{r['wall_s']:>8.1f}{r['packets_per_s']:>11,.0f}"
                  f"{r['packets_per_s'] / ts['packets_per_s']:>9.2f}{r['cpu_s']:>8.1f}"
                  f"{r['cpu_us_per_packet']:>11.1f}{r['peak_mb_sum_of_processes']:>9,.0f}")
    print("peak MB: tshark's ru_maxrss; wirestream's: the sum of every process's own peak (VmHWM).")
    for codec, r in doc["steady"].items():
        print(f"steady ({codec}): produce pcap alone took {r['produce_s']:.1f} s "
              f"({r['produce_packets_per_s']:,.0f} packets/s)")

    for kind, label in (("analyze", "analyze one-shot"), ("steady", "steady state")):
        for codec, r in doc[kind].items():
            print()
            note = ("(/proc samples; the analyze process is producer and collector)" if kind == "analyze"
                    else "(from produce's start to the last final report)")
            print(f"per stage, {label} ({codec}) {note}")
            h = f"  {'stage':<18}{'CPU s':>8}{'µs/packet':>11}{'peak MB':>9}"
            print(h)
            for s in r["stages"]:
                print(f"  {s['stage']:<18}{s['cpu_s']:>8.1f}{s['cpu_s'] * 1e6 / packets:>11.1f}"
                      f"{s['peak_mb']:>9,.0f}")
            if kind == "analyze":
                print(f"  (all processes at once, highest 0.1 s sample: {r['peak_mb_simultaneous']:,.0f} MB; "
                      f"CPU of the whole tree by wait4: {r['cpu_s']:.1f} s)")
    for codec, r in doc["steady"].items():
        print(f"broker ({codec}): {r['broker_rss_end_mb']:,.0f} MB resident at the end of the steady run "
              f"(capture {doc['capture_bytes'] / 1e6:,.0f} MB); memory:// storage keeps every record "
              "until the broker stops: no retention applies")

    print_compression(doc)

    failures = []
    print()
    a = doc["analyze"]
    for codec, r in a.items():
        if r["packets_read"] != packets:
            failures.append(f"analyze ({codec}) read {r['packets_read']} packets, capinfos {packets}")
        if r["tcp_conversations"] != ts["tcp_conversations"]:
            failures.append(f"analyze ({codec}): {r['tcp_conversations']} connections, tshark "
                            f"{ts['tcp_conversations']} conversations")
        tx, resp = r["records"].get("wire.transactions", 0), ts["http"].get("responses")
        if resp is not None and tx < resp:
            failures.append(f"analyze ({codec}): {tx} transactions < tshark's {resp} HTTP responses")
    print("checks: " + ("ok (packets read, TCP conversations = tshark's, transactions >= tshark's responses)"
                        if not failures else "; ".join(failures)))
    print()
    print("targets of issue 16:")
    for line in doc["targets"]:
        print(f"  {'PASS' if line['pass'] else 'FAIL'}  {line['what']}: {line['value']}")
    # The CPU budget a throughput target leaves on this machine, if every core were busy:
    # what the stages above must fit in.
    cores = doc["cpus"] or 1
    for kind, ratio in (("analyze", TARGET_ONESHOT), ("steady", TARGET_STEADY)):
        if doc[kind]:
            budget = cores * 1e6 / (ratio * ts["packets_per_s"])
            doc.setdefault("cpu_budget_us_per_packet", {})[kind] = budget
            print(f"  budget: {ratio:g}x tshark on {cores} cores leaves at most {budget:.1f} µs of CPU per packet, "
                  f"all {kind} stages together")
    return failures


def compression_summary(doc: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per codec, the mean over its steady-state runs of each stage's µs/packet and MB."""
    packets = doc["packets"]
    runs: dict[str, list[dict[str, float]]] = {}
    for r in doc["steady"].values():
        row: dict[str, float] = {"packets_per_s": r["packets_per_s"], "broker_end_mb": r["broker_rss_end_mb"],
                                 "total_us": r["cpu_us_per_packet"], "total_mb": r["peak_mb_sum_of_processes"]}
        for st in r["stages"]:
            kind = "packet workers" if st["stage"].startswith("packet worker") else st["stage"]
            row[f"{kind} us"] = row.get(f"{kind} us", 0.0) + st["cpu_s"] * 1e6 / packets
            row[f"{kind} mb"] = row.get(f"{kind} mb", 0.0) + st["peak_mb"]
        runs.setdefault(r["compression"], []).append(row)
    return {codec: {k: sum(row[k] for row in rows) / len(rows) for k in rows[0]} for codec, rows in runs.items()}


def print_compression(doc: dict[str, Any]) -> None:
    summary = compression_summary(doc)
    doc["compression_summary"] = summary
    if len(summary) < 2:
        return
    print()
    n = {c: sum(1 for r in doc["steady"].values() if r["compression"] == c) for c in summary}
    print("compression of the producers' batches, steady state (mean of each codec's runs; µs/packet, MB):")
    cols = [("packets/s", "packets_per_s", ",.0f"), ("producer µs", "producer us", ".1f"),
            ("broker µs", "broker us", ".1f"), ("broker MB", "broker mb", ",.0f"),
            ("broker end MB", "broker_end_mb", ",.0f"), ("pkt workers µs", "packet workers us", ".1f"),
            ("windows µs", "windows worker us", ".1f"), ("total µs", "total_us", ".1f"),
            ("total MB", "total_mb", ",.0f")]
    print(f"  {'codec':<10}{'runs':>5}" + "".join(f"{c:>15}" for c, _, _ in cols))
    for codec, row in summary.items():
        print(f"  {codec:<10}{n[codec]:>5}" + "".join(f"{format(row.get(k, 0.0), spec):>15}" for _, k, spec in cols))


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    ts, out = doc["tshark"], []
    for codec, r in doc["analyze"].items():
        ratio = r["packets_per_s"] / ts["packets_per_s"]
        out.append({"what": f"analyze one-shot ({codec}) >= {TARGET_ONESHOT:g}x tshark", "pass": ratio >= TARGET_ONESHOT,
                    "value": f"{ratio:.2f}x"})
    for codec, r in doc["steady"].items():
        ratio = r["packets_per_s"] / ts["packets_per_s"]
        out.append({"what": f"steady state ({codec}) >= {TARGET_STEADY:g}x tshark", "pass": ratio >= TARGET_STEADY,
                    "value": f"{ratio:.2f}x"})
    for kind in ("analyze", "steady"):
        for codec, r in doc[kind].items():
            out.append({"what": f"{kind} ({codec}) CPU per packet, every process <= tshark's",
                        "pass": r["cpu_us_per_packet"] <= ts["cpu_us_per_packet"],
                        "value": f"{r['cpu_us_per_packet']:.1f} vs {ts['cpu_us_per_packet']:.1f} µs"})
            out.append({"what": f"{kind} ({codec}) peak memory, every process summed <= tshark's",
                        "pass": r["peak_mb_sum_of_processes"] <= ts["peak_mb"],
                        "value": f"{r['peak_mb_sum_of_processes']:,.0f} vs {ts['peak_mb']:,.0f} MB"})
    return out


# ---------------------------------------------------------------------- main ---
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="wirestream (analyze one-shot, steady state) against tshark on one "
                                            "capture: issue 16's targets.")
    p.add_argument("--capture", type=Path, help="capture to use, no build (default bench/work/http_PACKETS.pcap, "
                                                "built by make_http_capture.sh when missing)")
    p.add_argument("--packets", type=int, default=DEFAULT_PACKETS, help=f"packets of the built capture ({DEFAULT_PACKETS:,})")
    p.add_argument("--skip-build", action="store_true", help="never run make_http_capture.sh: reuse the capture")
    p.add_argument("--force-build", action="store_true", help="rebuild the capture")
    p.add_argument("--compression", default=None, metavar="CODECS",
                   help="$WIRESTREAM_COMPRESSION of the wirestream runs, comma-separated: each runs analyze and the "
                        "steady state once, e.g. none,lz4,zstd (default: wirestream's default, "
                        "wirestream.kafka.DEFAULT_COMPRESSION)")
    p.add_argument("--rounds", type=int, default=1, help="run the codecs this many times (1), alternating the order")
    p.add_argument("--workers", type=int, default=2, help="packet workers of the steady state (2)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the steady state's topics (4)")
    p.add_argument("--settle", type=float, default=2.0, help="s to wait after the workers are assigned (2)")
    p.add_argument("--analyze-args", default="", metavar="ARGS", help="more arguments for analyze")
    p.add_argument("--no-analyze", action="store_true", help="skip the one-shot analyze runs")
    p.add_argument("--no-steady", action="store_true", help="skip the steady-state runs")
    p.add_argument("--run-timeout", type=float, default=600, help="s a run may take (600)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target of issue 16 is missed")
    p.add_argument("--keep-dir", type=Path, help="keep the tools' outputs and worker logs here")
    p.add_argument("--json", dest="json_out", type=Path, help="write every figure to this JSON file")
    args = p.parse_args(argv)
    if args.compression is None:
        from wirestream.kafka import DEFAULT_COMPRESSION

        args.compression = DEFAULT_COMPRESSION
    args.codecs = [c.strip() for c in args.compression.split(",") if c.strip()]
    if not args.codecs:
        p.error("--compression: no codec")
    return args


def ensure_capture(args: argparse.Namespace) -> Path:
    if args.capture is not None:
        cap = args.capture
    else:
        cap = WORK_DIR / f"http_{args.packets}.pcap"
        if not args.skip_build:
            cmd = [str(MAKE_CAPTURE)] + (["--force"] if args.force_build else []) + [str(cap), str(args.packets)]
            print(f"== building / checking capture: {' '.join(cmd)}", flush=True)
            if subprocess.run(cmd).returncode != 0:
                print("make_http_capture.sh failed (it needs nginx, wrk, tcpdump and root); pass --capture PATH",
                      file=sys.stderr)
                sys.exit(3)
    if not cap.is_file():
        print(f"capture not found: {cap}", file=sys.stderr)
        sys.exit(2)
    return cap.resolve()


@contextlib.contextmanager
def output_dir(keep_dir: Path | None, prefix: str = "bench_analyze.") -> Iterator[Path]:
    """Where the raw tool outputs go: ``keep_dir`` (kept), else a temporary folder."""
    if keep_dir is not None:
        keep_dir.mkdir(parents=True, exist_ok=True)
        yield keep_dir
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("tshark", "capinfos"):
        if not shutil.which(tool):
            print(f"missing required tool: {tool}", file=sys.stderr)
            return 3
    from wirestream.kafka import COMPRESSIONS

    bad = [c for c in args.codecs if c not in COMPRESSIONS]
    if bad:
        print(f"--compression: unknown {bad}; one of {COMPRESSIONS}", file=sys.stderr)
        return 2
    cap = ensure_capture(args)
    packets = count_packets(cap)
    print(f"== capture {cap}: {packets:,} packets, {cap.stat().st_size / 1e6:,.0f} MB", flush=True)
    doc: dict[str, Any] = {
        "capture": str(cap), "capture_bytes": cap.stat().st_size, "packets": packets, "cpus": os.cpu_count(),
        "host": platform.node(), "python": sys.version.split()[0], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_start": machine_load(), "workers": args.workers, "partitions": args.partitions,
        "wirestream_version": wirestream_version(),
        "analyze": {}, "steady": {},
    }
    t_bench = time.monotonic()
    with output_dir(args.keep_dir) as outdir:
        try:
            doc["tshark"] = run_tshark(cap, packets, outdir)
            for r in range(args.rounds):
                # every other round in reverse order: no codec always runs on a warmer machine
                for codec in args.codecs if r % 2 == 0 else reversed(args.codecs):
                    key = codec if args.rounds == 1 else f"{codec} #{r + 1}"
                    if not args.no_analyze:
                        doc["analyze"][key] = run_analyze(cap, packets, codec, args, outdir)
                    if not args.no_steady:
                        doc["steady"][key] = run_steady(cap, packets, codec, args, outdir)
        except RuntimeError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 3
    doc["load_end"] = machine_load()
    doc["bench_wall_s"] = time.monotonic() - t_bench
    doc["targets"] = targets(doc)
    failures = print_report(doc)
    doc["failures"] = failures
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"figures written to {args.json_out}")
    if failures:
        return 1
    if args.strict and not all(t["pass"] for t in doc["targets"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
