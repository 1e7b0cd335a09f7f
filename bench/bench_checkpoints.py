#!/usr/bin/env python3
"""Benchmark the packet workers' checkpoints (issue 15): what they cost, how big they are,
and how long a crashed worker's partitions take to come back.

On one embedded broker and schema registry (in-process, as the tests start them), in one run:

  0. tshark -n -q -r CAP -z conv,tcp                       (wall time, for scale)
  1. the capture is published once (``wirestream produce pcap``); then, for each round,
     two groups of ``--workers`` packet workers (``wirestream process --role packets
     --no-windows``) each read all of it from the beginning: one with
     ``--checkpoint-interval 5`` (the default), one with ``--checkpoint-interval 0``
     (checkpoints only on revocation and at stop). Wall time from starting the workers
     until every partition's final report (wire.stats, stage processor.packets,
     final=true) is in; packets/s; the relative cost of checkpointing.
  2. From the workers' log lines ("checkpoint of partition N: B bytes, S sources, M ms")
     and their own wire.stats reports (source ``worker:<group>``): checkpoints written,
     bytes and ms per checkpoint (mean, max), and bytes and ms per second of capture time
     (capinfos) and per second of wall time.
  3. Recovery after a SIGKILL: two workers with ``--checkpoint-interval 1``; once the
     victim has written a few checkpoints (and its input is not finished), it is killed.
     (a) kill -> the survivor's "assigned partitions ... restored" log line (its own log
     timestamp); (b) kill -> the first output record (wire.connections or
     wire.transactions) of the victim's partitions produced after the kill (the Kafka
     message's CreateTime, set by the producing worker). Once per ``--session-timeouts``.
  4. Correctness: the connection records of each crash run equal those of the
     uninterrupted run (checkpoints every 5 s), by key and field by field, ignoring
     ``source_id`` (every run reads the same published source anyway). PASS/FAIL.

See bench/README.md. Exit status: 0 PASS, 1 FAIL (records differ, or a run did not
finish), 2 bad arguments / no capture, 3 a tool failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / "work"
FULL_CAPTURE = WORK_DIR / "http.pcap"
MAKE_CAPTURE = BENCH_DIR / "make_http_capture.sh"
DEFAULT_PACKETS = 300_000

CHECKPOINT_RE = re.compile(r"checkpoint of partition (\d+): (\d+) bytes, (\d+) sources, ([\d.]+) ms")
ASSIGNED_RE = re.compile(r"assigned partitions \[([\d, ]*)\] \((\d+) restored from checkpoints")
LOG_TS_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


# ------------------------------------------------------------------------ helpers ---
def wirestream_cmd() -> list[str]:
    script = Path(sys.executable).with_name("wirestream")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wirestream"]


def capinfos(cap: Path) -> tuple[int, float]:
    """(packets, capture duration in seconds) of ``cap``."""
    res = subprocess.run(["capinfos", "-M", "-c", "-u", str(cap)], capture_output=True, text=True)
    packets, duration = None, None
    for line in res.stdout.splitlines():
        if line.startswith("Number of packets"):
            packets = int(line.split(":", 1)[1].strip())
        elif line.startswith("Capture duration"):
            duration = float(line.split(":", 1)[1].split()[0])
    if packets is None or duration is None:
        sys.exit(f"capinfos gave no packet count / duration for {cap}: {res.stderr.strip()}")
    return packets, duration


def log_time(line: str) -> float | None:
    """Epoch seconds of a worker log line (logging's asctime: local time, ms)."""
    m = LOG_TS_RE.match(line)
    if m is None:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def connection_partition(record: dict[str, Any], partitions: int) -> int:
    """The wire.packets partition a record's connection came from: the producer's rule
    (wirestream.packet_block.canonical_key / partition_for) on its two endpoints."""
    from wirestream.packet_block import canonical_key, partition_for

    def addr(ip: str) -> bytes:
        return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)

    key = canonical_key(6, addr(record["client_ip"]), record["client_port"],
                        addr(record["server_ip"]), record["server_port"])
    return partition_for(key, partitions)


def stats_of(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "mean": None, "max": None, "sum": 0}
    return {"n": len(values), "mean": statistics.fmean(values), "max": max(values), "sum": sum(values)}


def fmt(x: float | None, spec: str = ",.1f") -> str:
    return "-" if x is None else format(x, spec)


# ------------------------------------------------------------------ kafka reading ---
@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_s: float  # CreateTime (set by the producing client)
    record: dict[str, Any]


class Reader:
    """Assigned (no group) reader of some topics from given offsets; decodes with the registry."""

    def __init__(self, bootstrap: str, registry: str, topics: list[str], start: dict[tuple[str, int], int]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer

        from wirestream.codec import AvroCodec
        from wirestream.kafka import consumer_config
        from wirestream.reader import partitions_of

        self.codec = AvroCodec(registry)
        self.consumer = Consumer({**consumer_config(bootstrap), "fetch.wait.max.ms": 50})
        tps = partitions_of(bootstrap, topics)
        for tp in tps:
            tp.offset = start.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        self.consumer.assign(tps)
        self.undecodable = 0

    def poll(self, timeout: float = 0.2) -> list[Msg]:
        out = []
        for m in self.consumer.consume(10_000, timeout):
            if m.error() is not None:
                continue
            try:
                record = self.codec.decode(m.value())
            except Exception:  # noqa: BLE001 - counted; the caller decides what that means
                self.undecodable += 1
                continue
            out.append(Msg(m.topic(), m.partition(), m.offset(), m.key(), m.timestamp()[1] / 1000, record))
        return out

    def close(self) -> None:
        self.consumer.close()


def read_window(bootstrap: str, registry: str, topics: list[str], start: dict[tuple[str, int], int],
                t_from: float, t_to: float, idle_s: float = 2.0, timeout: float = 180) -> list[Msg]:
    """The messages of ``topics`` produced between ``t_from`` and ``t_to`` (CreateTime),
    reading from ``start`` until nothing more comes for ``idle_s``.

    By time, not between two end-offset snapshots: the embedded broker's end offsets come
    out short when a produce batch held several records (docs/embedded-broker.md), so a
    snapshot would cut a run's last records off and give them to the next run. ``start``
    (taken before the run, so at most too early) only saves reading the older ones."""
    reader = Reader(bootstrap, registry, topics, start)
    out: list[Msg] = []
    deadline = time.monotonic() + timeout
    idle_until = time.monotonic() + idle_s
    try:
        while time.monotonic() < idle_until:
            if time.monotonic() > deadline:
                raise RuntimeError(f"reading {topics}: still reading after {timeout} s")
            batch = reader.poll(0.2)
            if batch:
                idle_until = time.monotonic() + idle_s
            out.extend(m for m in batch if t_from <= m.timestamp_s <= t_to)
        if reader.undecodable:
            raise RuntimeError(f"reading {topics}: {reader.undecodable} records could not be decoded")
    finally:
        reader.close()
    return out


def read_checkpoints(bootstrap: str, group: str, start: dict[tuple[str, int], int],
                     timeout: float = 120) -> list[dict[str, Any]]:
    """The checkpoints ``group`` wrote to wire.checkpoints (after ``start``): size, open
    connections, and how well the bytes compress (zlib level 1, for scale)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer
    from wirestream.processors.checkpoints import decode_checkpoint

    from wirestream.kafka import consumer_config
    from wirestream.reader import partitions_of
    from wirestream.topics import CHECKPOINTS

    consumer = Consumer({**consumer_config(bootstrap), "fetch.wait.max.ms": 50})
    tps = partitions_of(bootstrap, [CHECKPOINTS])
    # Read up to the end offsets of now: a checkpoint is produced alone and flushed, so the
    # broker's short end offsets (several records in one batch) do not apply to it; waiting
    # for a pause instead cut off big checkpoints that were slow to fetch.
    end = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
    pos = {}
    for tp in tps:
        tp.offset = start.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        pos[tp.partition] = tp.offset if tp.offset >= 0 else 0
    consumer.assign(tps)
    prefix = f"{group}|".encode()
    out = []
    deadline = time.monotonic() + timeout
    try:
        while any(pos[p] < end[p] for p in end):
            if time.monotonic() > deadline:
                # figures of what was read; the caller compares the count with the log
                print(f"   warning: reading {CHECKPOINTS} did not reach its end in {timeout:.0f} s", flush=True)
                break
            for m in consumer.consume(100, 0.2):
                if m.error() is not None:
                    continue
                pos[m.partition()] = m.offset() + 1
                if not (m.key() or b"").startswith(prefix) or not m.value():
                    continue
                cp = decode_checkpoint(m.value())
                out.append({"partition": cp.partition, "sequence": cp.sequence, "bytes": len(m.value()),
                            "state_bytes": len(cp.state), "open_connections": cp.open_connections,
                            "sources": len(cp.sources), "zlib1_bytes": len(zlib.compress(m.value(), 1))})
    finally:
        consumer.close()
    return out


# ----------------------------------------------------------------------- workers ---
@dataclass
class Workers:
    """``wirestream process --role packets --no-windows`` workers of one group."""

    bootstrap: str
    registry: str
    partitions: int
    logdir: Path
    name: str
    args: tuple[str, ...]
    group: str = field(default_factory=lambda: f"bench-ckpt-{uuid.uuid4().hex[:8]}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)

    def log_path(self, w: str) -> Path:
        return self.logdir / f"{self.name}.{w}.log"

    def start(self, w: str) -> None:
        with open(self.log_path(w), "wb") as log:
            self.procs[w] = subprocess.Popen(
                [*wirestream_cmd(), "process", "--role", "packets", "--no-windows", "--group", self.group,
                 "--bootstrap", self.bootstrap, "--registry", self.registry,
                 "--partitions", str(self.partitions), "--loglevel", "info", *self.args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self, w: str) -> str:
        return self.log_path(w).read_text(errors="replace")

    def wait_log(self, w: str, pattern: re.Pattern[str], count: int = 1, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(pattern.findall(self.log(w))) < count:
            if self.procs[w].poll() is not None:
                raise RuntimeError(f"worker {self.name}.{w} exited:\n{self.log(w)[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name}.{w}: {pattern.pattern!r} x{count} not logged in "
                                   f"{timeout} s:\n{self.log(w)[-3000:]}")
            time.sleep(0.05)

    def _reap(self, w: str, timeout: float) -> None:
        """Wait for ``w`` (wait4: its CPU time too)."""
        proc = self.procs[w]
        deadline = time.monotonic() + timeout
        while True:
            if proc.returncode is not None:  # reaped by a poll() already: no CPU figure
                self.exit_codes[w] = proc.returncode
                return
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                self.exit_codes[w] = proc.returncode
                self.cpu_s[w] = ru.ru_utime + ru.ru_stime
                return
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            time.sleep(0.05)

    def kill(self, w: str) -> float:
        """SIGKILL ``w``; the time of the kill."""
        t = time.time()
        os.killpg(self.procs[w].pid, signal.SIGKILL)
        self._reap(w, 10)
        return t

    def stop_all(self, timeout: float = 60) -> None:
        """SIGTERM every worker still running (it checkpoints, commits, leaves) and wait."""
        running = [w for w in self.procs if w not in self.exit_codes]
        for w in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.procs[w].pid, signal.SIGTERM)
        for w in running:
            self._reap(w, timeout)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def lines(self, w: str) -> list[tuple[float | None, str]]:
        return [(log_time(line), line) for line in self.log(w).splitlines()]


# ------------------------------------------------------------------------- a run ---
class Bench:
    def __init__(self, args: argparse.Namespace, bootstrap: str, registry: str, cap: Path, packets: int,
                 duration_s: float, outdir: Path) -> None:
        self.args, self.bootstrap, self.registry = args, bootstrap, registry
        self.cap, self.packets, self.duration_s, self.outdir = cap, packets, duration_s, outdir
        self.partitions = args.partitions
        self.source_id: str | None = None

    def offsets(self) -> dict[tuple[str, int], int]:
        from wirestream.reader import end_offsets
        from wirestream.topics import CHECKPOINTS, CONNECTIONS, STATS, TRANSACTIONS

        return end_offsets(self.bootstrap, [STATS, CONNECTIONS, TRANSACTIONS, CHECKPOINTS])

    def publish(self) -> dict[str, Any]:
        cmd = [*wirestream_cmd(), "produce", "pcap", str(self.cap), "--bootstrap", self.bootstrap,
               "--registry", self.registry, "--partitions", str(self.partitions)]
        print(f"== publishing: {' '.join(cmd)}", flush=True)
        t0 = time.monotonic()
        res = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.monotonic() - t0
        (self.outdir / "produce.out").write_text(res.stdout + res.stderr)
        if res.returncode != 0:
            raise RuntimeError(f"produce pcap failed ({res.returncode}):\n{res.stderr[-3000:]}")
        m = re.search(r"published as source (\S+?);", res.stdout)
        if m is None:
            raise RuntimeError(f"no source id in the output of produce pcap:\n{res.stdout}")
        self.source_id = m.group(1)
        print(f"   {self.packets:,} packets in {wall:.1f} s as source {self.source_id}", flush=True)
        return {"cmd": cmd, "wall_s": wall, "source_id": self.source_id}

    def wait_finals(self, reader: Reader, finals: dict[int, Msg], since: float, timeout: float) -> None:
        """Read wire.stats into ``finals`` (partition -> final report of our source, produced
        after ``since``: every run reads the same source) until all partitions have one."""
        from wirestream.topics import PACKETS_STAGE

        deadline = time.monotonic() + timeout
        while len(finals) < self.partitions:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(finals)}/{self.partitions} final reports after {timeout} s")
            for m in reader.poll(0.1):
                r = m.record
                if (r.get("source_id") == self.source_id and r["stage"] == PACKETS_STAGE and r["final"]
                        and m.timestamp_s >= since):
                    finals.setdefault(r["partition"], m)

    def read(self, topics: list[str], run: dict[str, Any]) -> list[Msg]:
        """What ``run`` produced on ``topics``."""
        return read_window(self.bootstrap, self.registry, topics, run["start_offsets"], *run["window"])

    def worker_reports(self, group: str, run: dict[str, Any]) -> dict[str, dict[str, int]]:
        """The last wire.stats report of each worker of ``group`` (its counters)."""
        from wirestream.topics import STATS

        last: dict[str, dict[str, int]] = {}
        for m in self.read([STATS], run):
            if m.record.get("source_id") == f"worker:{group}":
                last[m.record["instance"]] = dict(m.record["counters"])
        return last

    # --- 1 + 2: throughput with and without periodic checkpoints --------------------------
    def throughput_run(self, name: str, interval: float) -> dict[str, Any]:
        from wirestream.topics import STATS

        start = self.offsets()
        workers = Workers(self.bootstrap, self.registry, self.partitions, self.outdir, name,
                          ("--checkpoint-interval", str(interval)))
        names = [chr(ord("a") + i) for i in range(self.args.workers)]
        print(f"== {name}: {len(names)} workers, --checkpoint-interval {interval:g}", flush=True)
        reader = Reader(self.bootstrap, self.registry, [STATS], start)
        finals: dict[int, Msg] = {}
        try:
            t0 = time.time()
            for w in names:
                workers.start(w)
            self.wait_finals(reader, finals, t0, self.args.run_timeout)
            t_final = max(m.timestamp_s for m in finals.values())
            t_stop = time.time()
            workers.stop_all()
            t_stopped = time.time()
        finally:
            reader.close()
            workers.close()
        wall = t_final - t0
        run: dict[str, Any] = {
            "name": name, "group": workers.group, "checkpoint_interval_s": interval,
            "workers": len(names), "wall_s": wall, "packets_per_s": self.packets / wall,
            "stop_s": time.time() - t_stop, "worker_cpu_s": sum(workers.cpu_s.values()),
            "exit_codes": workers.exit_codes, "start_offsets": start, "window": (t0, t_stopped),
        }
        # start: launch -> the first assignment of each worker (process start, topics, group join)
        joins = []
        cps_run, cps_stop = [], []
        for w in names:
            first = next((t for t, line in workers.lines(w) if t and ASSIGNED_RE.search(line)), None)
            if first is not None:
                joins.append(first - t0)
            for t, line in workers.lines(w):
                m = CHECKPOINT_RE.search(line)
                if m is None:
                    continue
                cp = {"worker": w, "t": t, "partition": int(m.group(1)), "bytes": int(m.group(2)),
                      "sources": int(m.group(3)), "ms": float(m.group(4))}
                (cps_run if t is not None and t <= t_final else cps_stop).append(cp)
        run["start_s"] = max(joins) if joins else None
        run["first_assignment_s"] = min(joins) if joins else None
        # from the first assignment on: the fixed cost of starting processes left out
        run["processing_s"] = wall - run["first_assignment_s"] if joins else None
        run["processing_packets_per_s"] = self.packets / run["processing_s"] if joins else None
        run["checkpoints_during_input"] = self._checkpoint_figures(cps_run, wall)
        run["checkpoints_at_stop"] = self._checkpoint_figures(cps_stop, None)
        run["checkpoint_log"] = cps_run + cps_stop
        if interval:
            # what is in them: bytes per open connection, and how much they would compress
            read = read_checkpoints(self.bootstrap, workers.group, start)
            run["checkpoint_records_read"] = len(read)
            cps = [c for c in read if c["open_connections"]]
            run["checkpoint_records"] = cps
            conns = sum(c["open_connections"] for c in cps)
            run["checkpoint_content"] = {
                "with_connections": len(cps),
                "open_connections_mean": conns / len(cps) if cps else None,
                "bytes_per_open_connection": sum(c["bytes"] for c in cps) / conns if conns else None,
                "zlib1_ratio": (sum(c["zlib1_bytes"] for c in cps) / sum(c["bytes"] for c in cps)) if cps else None,
            }
        reports = self.worker_reports(workers.group, run)
        run["worker_reports"] = reports
        total: dict[str, int] = defaultdict(int)
        for counters in reports.values():
            for k, v in counters.items():
                total[k] += v
        run["worker_report_totals"] = dict(total)
        print(f"   {wall:.1f} s to the last final report ({self.packets / wall:,.0f} packets/s); "
              f"{len(cps_run)} checkpoints during the input, {len(cps_stop)} at stop", flush=True)
        return run

    def _checkpoint_figures(self, cps: list[dict], wall: float | None) -> dict[str, Any]:
        b = stats_of([c["bytes"] for c in cps])
        ms = stats_of([c["ms"] for c in cps])
        out: dict[str, Any] = {"count": len(cps), "bytes": b, "ms": ms,
                               "bytes_per_capture_s": b["sum"] / self.duration_s,
                               "ms_per_capture_s": ms["sum"] / self.duration_s}
        if wall:
            out["bytes_per_wall_s"] = b["sum"] / wall
            out["ms_per_wall_s"] = ms["sum"] / wall
        return out

    # --- 3: recovery after SIGKILL ------------------------------------------------------------
    def crash_run(self, name: str, session_timeout: float) -> dict[str, Any]:
        from wirestream.topics import CONNECTIONS, STATS, TRANSACTIONS

        start = self.offsets()
        workers = Workers(self.bootstrap, self.registry, self.partitions, self.outdir, name,
                          ("--checkpoint-interval", "1", "--session-timeout", f"{session_timeout:g}"))
        print(f"== {name}: 2 workers, --checkpoint-interval 1 --session-timeout {session_timeout:g}, "
              "SIGKILL one mid-input", flush=True)
        reader = Reader(self.bootstrap, self.registry, [STATS], start)
        finals: dict[int, Msg] = {}
        try:
            t0 = time.time()
            workers.start("a")
            workers.start("b")
            # the victim owns partitions and has written a few checkpoints of them
            workers.wait_log("b", re.compile(r"assigned partitions \[\d"))
            workers.wait_log("a", re.compile(r"assigned partitions \[\d"))
            # checkpoints that hold state (a partition whose input is finished writes an
            # empty one, of 0 sources): the kill falls while the victim is mid-input
            holding = re.compile(r"checkpoint of partition \d+: \d+ bytes, [1-9]\d* sources")
            workers.wait_log("b", holding, count=self.args.checkpoints_before_kill, timeout=self.args.run_timeout)
            victim_parts = [int(p) for p in ASSIGNED_RE.findall(workers.log("b"))[-1][0].split(",")]
            with contextlib.suppress(RuntimeError):
                self.wait_finals(reader, finals, t0, 0.2)  # what is already in
            done_before_kill = sorted(finals)
            t_kill = workers.kill("b")
            self.wait_finals(reader, finals, t0, self.args.run_timeout)
            t_final = max(m.timestamp_s for m in finals.values())
            workers.stop_all()
            t_stopped = time.time()
        finally:
            reader.close()
            workers.close()
        run: dict[str, Any] = {
            "name": name, "group": workers.group, "session_timeout_s": session_timeout,
            "checkpoint_interval_s": 1.0, "victim_partitions": victim_parts,
            "victim_partitions_final_before_kill": [p for p in done_before_kill if p in victim_parts],
            "kill_after_s": t_kill - t0, "wall_s": t_final - t0, "exit_codes": workers.exit_codes,
            "start_offsets": start, "window": (t0, t_stopped),
            "victim_checkpoints": len(CHECKPOINT_RE.findall(workers.log("b"))),
        }
        # (a) the survivor's assignment after the kill; and when the rebalance began for it
        # (its partitions revoked: the group noticed the victim was gone)
        revoked = [t for t, line in workers.lines("a")
                   if t is not None and t >= t_kill - 0.001 and "revoked: writing their checkpoints" in line]
        run["revoked_after_s"] = revoked[0] - t_kill if revoked else None
        restored = [(t, line) for t, line in workers.lines("a")
                    if t is not None and t >= t_kill - 0.001 and ASSIGNED_RE.search(line)]
        if restored:
            t_assign, line = restored[0]
            m = ASSIGNED_RE.search(line)
            assert m is not None
            run["assigned_after_s"] = t_assign - t_kill
            run["assigned_line"] = line
            run["restored_partitions"] = int(m.group(2))
        else:
            run["assigned_after_s"] = None
        # the survivor's own counters: how long restoring the checkpoints took (part of the takeover)
        reports = self.worker_reports(workers.group, run)
        run["worker_reports"] = reports
        run["restores"] = sum(r.get("restores", 0) for r in reports.values())
        run["restore_ms"] = sum(r.get("restore_ms", 0) for r in reports.values())
        # (b) the first output of the victim's partitions produced after the kill
        out = self.read([CONNECTIONS, TRANSACTIONS], run)
        out = [m for m in out if m.record.get("source_id") == self.source_id]
        seen_before: set[tuple[str, bytes | None]] = set()
        first_any = first_new = None
        for m in sorted(out, key=lambda m: m.timestamp_s):
            if connection_partition(m.record, self.partitions) not in victim_parts:
                continue
            k = (m.topic, m.key)
            if m.timestamp_s <= t_kill:
                seen_before.add(k)
                continue
            if first_any is None:
                first_any = m
            if k not in seen_before:
                first_new = m
                break
        run["first_output_after_s"] = None if first_any is None else first_any.timestamp_s - t_kill
        run["first_new_record_after_s"] = None if first_new is None else first_new.timestamp_s - t_kill
        run["records_of_victim_partitions_after_kill"] = sum(
            1 for m in out if m.timestamp_s > t_kill and connection_partition(m.record, self.partitions) in victim_parts)
        run["connections"] = {m.key: m.record for m in out if m.topic == CONNECTIONS}
        run["connection_messages"] = sum(1 for m in out if m.topic == CONNECTIONS)
        print(f"   killed after {run['kill_after_s']:.1f} s (victim partitions {victim_parts}); "
              f"takeover {fmt(run['assigned_after_s'], '.2f')} s, first output "
              f"{fmt(run['first_output_after_s'], '.2f')} s after the kill", flush=True)
        return run


# ----------------------------------------------------------------------- capture ---
def ensure_capture(args: argparse.Namespace) -> Path:
    if args.capture is not None:
        cap = args.capture
    elif args.skip_build:
        # the full bench capture if it is there, else the smaller one built before
        small = WORK_DIR / f"http_{args.packets}.pcap"
        cap = FULL_CAPTURE if FULL_CAPTURE.is_file() else small
    else:
        cap = WORK_DIR / f"http_{args.packets}.pcap"
        cmd = [str(MAKE_CAPTURE)] + (["--force"] if args.force_build else []) + [str(cap), str(args.packets)]
        print(f"== building / checking capture: {' '.join(cmd)}", flush=True)
        res = subprocess.run(cmd)
        if res.returncode != 0:
            print(f"make_http_capture.sh failed with exit code {res.returncode} (it needs nginx, wrk, "
                  "tcpdump and root); pass --capture PATH", file=sys.stderr)
            sys.exit(3)
    if not cap.is_file():
        print(f"capture not found: {cap}", file=sys.stderr)
        sys.exit(2)
    return cap.resolve()


def run_tshark(cap: Path, outdir: Path) -> dict[str, Any]:
    cmd = ["tshark", "-n", "-q", "-r", str(cap), "-z", "conv,tcp"]
    print(f"== running tshark: {' '.join(cmd)}", flush=True)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    (outdir / "tshark.out").write_text(res.stdout)
    if res.returncode != 0:
        raise RuntimeError(f"tshark failed ({res.returncode}): {res.stderr[-2000:]}")
    convs = sum(1 for line in res.stdout.splitlines() if "<->" in line)
    print(f"   {wall:.1f} s, {convs:,} TCP conversations", flush=True)
    return {"cmd": cmd, "wall_s": wall, "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
            "tcp_conversations": convs}


# -------------------------------------------------------------------------- main ---
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Checkpoint cost, size and SIGKILL recovery time of the packet workers "
                    "(embedded broker), with tshark for scale.")
    p.add_argument("--capture", type=Path,
                   help="capture to use (no build); default bench/work/http_N.pcap built by "
                        "make_http_capture.sh, or bench/work/http.pcap with --skip-build if it exists")
    p.add_argument("--packets", type=int, default=DEFAULT_PACKETS,
                   help=f"packets of the capture to build (default {DEFAULT_PACKETS:,})")
    p.add_argument("--skip-build", action="store_true", help="do not run make_http_capture.sh")
    p.add_argument("--force-build", action="store_true", help="rebuild the capture (make_http_capture.sh --force)")
    p.add_argument("--workers", type=int, default=2, help="packet workers of the throughput runs (default 2)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the topics (default 4)")
    p.add_argument("--interval", type=float, default=5.0,
                   help="--checkpoint-interval of the run with checkpoints (default 5)")
    p.add_argument("--rounds", type=int, default=2,
                   help="throughput runs of each kind, in alternating order (default 2)")
    p.add_argument("--session-timeouts", default="10,6",
                   help="one crash run per --session-timeout, comma-separated (default 10,6; '' for none)")
    p.add_argument("--checkpoints-before-kill", type=int, default=2,
                   help="kill the victim once it has written this many checkpoints holding state "
                        "(log lines with >= 1 sources; default 2: one of each of its 2 partitions)")
    p.add_argument("--run-timeout", type=float, default=300, help="give up on a run after this long (s)")
    p.add_argument("--no-tshark", action="store_true", help="skip the tshark run")
    p.add_argument("--keep-dir", type=Path, help="keep worker logs and tool outputs here")
    p.add_argument("--json", dest="json_out", type=Path, help="write every figure to this JSON file")
    args = p.parse_args(argv)
    if args.workers < 1 or args.partitions < 1 or args.rounds < 1 or args.packets < 1:
        p.error("--workers, --partitions, --rounds and --packets must be >= 1")
    if args.interval <= 0:
        p.error("--interval must be > 0 (the comparison run has 0)")
    try:
        args.session_timeout_list = [float(x) for x in args.session_timeouts.split(",") if x.strip()]
    except ValueError:
        p.error("--session-timeouts: numbers separated by commas")
    return args


@contextlib.contextmanager
def output_dir(keep_dir: Path | None) -> Iterator[Path]:
    if keep_dir is not None:
        keep_dir.mkdir(parents=True, exist_ok=True)
        yield keep_dir
        return
    with tempfile.TemporaryDirectory(prefix="bench_checkpoints.") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("capinfos", "tshark"):
        if not shutil.which(tool):
            print(f"missing required tool: {tool}", file=sys.stderr)
            return 3
    cap = ensure_capture(args)
    packets, duration = capinfos(cap)
    print(f"== capture {cap}: {packets:,} packets, {cap.stat().st_size / 1e6:,.0f} MB, "
          f"{duration:.2f} s of capture time", flush=True)
    if packets == 0 or duration <= 0:
        print("capture has no packets (or no duration)", file=sys.stderr)
        return 2
    t_start = time.monotonic()
    with output_dir(args.keep_dir) as outdir:
        try:
            doc = run_all(args, cap, packets, duration, outdir)
        except RuntimeError as exc:
            print(f"FAIL: {exc}", file=sys.stderr)
            return 3
    doc["bench_wall_s"] = time.monotonic() - t_start
    report(doc)
    if args.json_out:
        for run in doc["crash"]:
            run.pop("connections", None)
        for run in [*doc["throughput"]["with"], *doc["throughput"]["without"], *doc["crash"]]:
            # tuple keys are not JSON: "topic:partition"
            run["start_offsets"] = {f"{t}:{p}": off for (t, p), off in run["start_offsets"].items()}
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"figures written to {args.json_out}")
    return 0 if doc["verdict"] == "PASS" else 1


def run_all(args: argparse.Namespace, cap: Path, packets: int, duration: float, outdir: Path) -> dict[str, Any]:
    from wirestream.broker import EmbeddedBroker
    from wirestream.registry import EmbeddedSchemaRegistry
    from wirestream.topics import CONNECTIONS

    doc: dict[str, Any] = {
        "capture": str(cap), "capture_bytes": cap.stat().st_size, "packets": packets,
        "capture_duration_s": duration, "cpus": os.cpu_count(), "host": platform.node(),
        "python": sys.version.split()[0], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "workers": args.workers, "partitions": args.partitions,
        # other work on the machine skews every figure: say how busy it was
        "loadavg_start": os.getloadavg(),
    }
    doc["tshark"] = None if args.no_tshark else run_tshark(cap, outdir)
    with EmbeddedBroker(log_path=outdir / "broker.log") as broker, EmbeddedSchemaRegistry() as registry:
        bench = Bench(args, broker.bootstrap, registry.url, cap, packets, duration, outdir)
        doc["publish"] = bench.publish()
        doc["source_id"] = bench.source_id
        runs: dict[str, list[dict[str, Any]]] = {"with": [], "without": []}
        for r in range(args.rounds):
            # alternate the order, so that neither kind always runs on a warmer broker
            order = [("with", args.interval), ("without", 0.0)]
            if r % 2:
                order.reverse()
            for kind, interval in order:
                runs[kind].append(bench.throughput_run(f"{kind}-{r + 1}", interval))
        doc["throughput"] = runs
        doc["crash"] = [bench.crash_run(f"crash-st{st:g}", st) for st in args.session_timeout_list]
        # the reference records: the first uninterrupted run with checkpoints
        ref_run = runs["with"][0]
        ref_msgs = bench.read([CONNECTIONS], ref_run)
        ref = {m.key: m.record for m in ref_msgs if m.record.get("source_id") == bench.source_id}
        doc["reference_connections"] = len(ref)
        doc["reference_connection_messages"] = len(ref_msgs)
        # check the attribution of records to input partitions (used for the recovery time)
        # against what each partition's final report says it emitted
        per_part: dict[int, int] = defaultdict(int)
        for rec in ref.values():
            per_part[connection_partition(rec, args.partitions)] += 1
        finals = final_emitted(bench, ref_run)
        doc["partition_attribution_ok"] = finals == dict(per_part)
        doc["partition_attribution"] = {"from_keys": dict(per_part), "final_reports": finals}
    # the checks
    failures = []
    if doc["tshark"] is not None and doc["tshark"]["tcp_conversations"] != len(ref):
        failures.append(f"tshark finds {doc['tshark']['tcp_conversations']} TCP conversations, "
                        f"the workers {len(ref)} connections")
    for run in doc["crash"]:
        got = run["connections"]
        strip = lambda r: {k: v for k, v in r.items() if k != "source_id"}  # noqa: E731
        missing = ref.keys() - got.keys()
        extra = got.keys() - ref.keys()
        changed = [k for k in ref.keys() & got.keys() if strip(got[k]) != strip(ref[k])]
        run["check"] = {"missing": len(missing), "extra": len(extra), "changed": len(changed),
                        "repeats": run["connection_messages"] - len(got)}
        run["check"]["ok"] = not (missing or extra or changed)
        if not run["check"]["ok"]:
            failures.append(f"{run['name']}: {len(missing)} connections missing, {len(extra)} extra, "
                            f"{len(changed)} differ from the uninterrupted run")
        if run["victim_partitions_final_before_kill"]:
            failures.append(f"{run['name']}: the victim's partitions {run['victim_partitions_final_before_kill']} "
                            "were finished before the kill (not mid-input: use a bigger capture)")
    if not doc["partition_attribution_ok"]:
        failures.append("records attributed to input partitions do not match the final reports "
                        "(the recovery times of the victim's partitions are not reliable)")
    doc["loadavg_end"] = os.getloadavg()
    doc["failures"] = failures
    doc["verdict"] = "PASS" if not failures else "FAIL"
    return doc


def final_emitted(bench: Bench, run: dict[str, Any]) -> dict[int, int]:
    """wire.connections emitted per partition, by the final reports of ``run``."""
    from wirestream.topics import CONNECTIONS, PACKETS_STAGE, STATS

    out: dict[int, int] = {}
    for m in bench.read([STATS], run):
        r = m.record
        if r.get("source_id") == bench.source_id and r["stage"] == PACKETS_STAGE and r["final"]:
            out[r["partition"]] = r["emitted"].get(CONNECTIONS, 0)
    return out


# ------------------------------------------------------------------------ report ---
def report(doc: dict[str, Any]) -> None:
    packets, dur = doc["packets"], doc["capture_duration_s"]
    print()
    print(f"capture: {doc['capture']}  ({packets:,} packets, {dur:.2f} s of capture time, "
          f"{doc['reference_connections']:,} TCP connections)   machine: {doc['cpus']} CPUs")
    print()
    print(f"1. throughput: {doc['workers']} packet workers (--role packets --no-windows), capture published first")
    hdr = (f"{'run':<14}{'interval s':>11}{'wall s':>9}{'packets/s':>12}{'start s':>9}{'proc. s':>9}"
           f"{'packets/s':>12}{'worker CPU s':>14}{'checkpoints':>13}")
    print(hdr)
    print("-" * len(hdr))
    if doc["tshark"] is not None:
        ts = doc["tshark"]
        print(f"{'tshark':<14}{'':>11}{ts['wall_s']:>9.1f}{packets / ts['wall_s']:>12,.0f}{'':>9}{'':>9}{'':>12}"
              f"{ts['cpu_s']:>14.1f}{'':>13}")
    for kind in ("with", "without"):
        for run in doc["throughput"][kind]:
            print(f"{run['name']:<14}{run['checkpoint_interval_s']:>11g}{run['wall_s']:>9.1f}"
                  f"{run['packets_per_s']:>12,.0f}{fmt(run['start_s']):>9}{fmt(run['processing_s']):>9}"
                  f"{fmt(run['processing_packets_per_s'], ',.0f'):>12}{run['worker_cpu_s']:>14.1f}"
                  f"{run['checkpoints_during_input']['count']:>13}")

    def mean(kind: str, key: str) -> float:
        return statistics.fmean(r[key] for r in doc["throughput"][kind])

    doc["checkpoint_cost"] = {key: mean("with", key) / mean("without", key) - 1
                              for key in ("wall_s", "processing_s", "worker_cpu_s")}
    cost = doc["checkpoint_cost"]
    print(f"relative cost of checkpointing (mean with / mean without - 1): wall {cost['wall_s']:+.1%}, "
          f"processing {cost['processing_s']:+.1%}, worker CPU {cost['worker_cpu_s']:+.1%}")
    print("  wall: start of the workers -> the last final report; start: -> the last worker's first "
          "assignment; proc.: the first assignment -> the last final report; worker CPU includes their "
          "start and stop")
    print()
    print("2. checkpoints during the input (log lines up to the last final report), per run with checkpoints")
    hdr = (f"{'run':<12}{'count':>7}{'bytes mean':>12}{'bytes max':>12}{'ms mean':>9}{'ms max':>8}"
           f"{'kB/capture s':>14}{'ms/capture s':>14}{'kB/wall s':>11}{'ms/wall s':>11}")
    print(hdr)
    print("-" * len(hdr))
    for run in doc["throughput"]["with"] + doc["throughput"]["without"]:
        c = run["checkpoints_during_input"]
        print(f"{run['name']:<12}{c['count']:>7}{fmt(c['bytes']['mean'], ',.0f'):>12}"
              f"{fmt(c['bytes']['max'], ',.0f'):>12}{fmt(c['ms']['mean']):>9}{fmt(c['ms']['max']):>8}"
              f"{c['bytes_per_capture_s'] / 1e3:>14,.1f}{c['ms_per_capture_s']:>14.1f}"
              f"{c.get('bytes_per_wall_s', 0) / 1e3:>11,.1f}{c.get('ms_per_wall_s', 0):>11.1f}")
    for run in doc["throughput"]["with"]:
        c = run.get("checkpoint_content") or {}
        if c.get("with_connections"):
            print(f"  {run['name']}: {run['checkpoint_records_read']} checkpoints read back from wire.checkpoints, "
                  f"{c['with_connections']} holding connections: "
                  f"{c['open_connections_mean']:,.0f} open connections each on average, "
                  f"{c['bytes_per_open_connection']:,.0f} bytes per open connection; "
                  f"zlib -1 makes them {c['zlib1_ratio']:.0%} of their size (sizes are the records' own; "
                  "the store sends them zstd-compressed)")
    for run in doc["throughput"]["with"] + doc["throughput"]["without"]:
        s = run["checkpoints_at_stop"]
        t = run["worker_report_totals"]
        print(f"  {run['name']}: at stop {s['count']} more (mean {fmt(s['bytes']['mean'], ',.0f')} bytes); "
              f"workers' wire.stats: checkpoints_written={t.get('checkpoints_written', 0)} "
              f"checkpoint_bytes={t.get('checkpoint_bytes', 0):,} checkpoint_ms={t.get('checkpoint_ms', 0)} "
              f"restores={t.get('restores', 0)} restore_ms={t.get('restore_ms', 0)} "
              f"broker_waits={t.get('broker_waits', 0)} registry_waits={t.get('registry_waits', 0)}")
    print()
    print("3. recovery after SIGKILL (2 workers, --checkpoint-interval 1)")
    hdr = (f"{'run':<14}{'session s':>10}{'killed at s':>12}{'revoke s':>9}{'takeover s':>11}{'restored':>9}"
           f"{'restore ms':>11}"
           f"{'1st output s':>13}{'1st new rec s':>14}{'repeats':>9}{'records':>9}")
    print(hdr)
    print("-" * len(hdr))
    for run in doc["crash"]:
        print(f"{run['name']:<14}{run['session_timeout_s']:>10g}{run['kill_after_s']:>12.1f}"
              f"{fmt(run['revoked_after_s'], '.2f'):>9}{fmt(run['assigned_after_s'], '.2f'):>11}"
              f"{run.get('restored_partitions', '-')!s:>9}{run['restore_ms']:>11,}"
              f"{fmt(run['first_output_after_s'], '.2f'):>13}{fmt(run['first_new_record_after_s'], '.2f'):>14}"
              f"{run['check']['repeats']:>9}{'same' if run['check']['ok'] else 'DIFFER':>9}")
    print("  revoke: kill -> the survivor's 'revoked' line (the group noticed, the rebalance begins); "
          "restore ms: the survivor's restore_ms counter (decoding the checkpoints it was assigned); "
          "takeover: kill -> the survivor's 'assigned partitions ... restored' line; 1st output: kill -> "
          "first wire.connections/transactions record of the victim's partitions (CreateTime); "
          "1st new rec: the first such record not already emitted before the kill; repeats: "
          "wire.connections emitted twice (identical)")
    a = doc["partition_attribution"]
    print(f"  records -> input partition (from the endpoints) vs final reports: "
          f"{'match' if doc['partition_attribution_ok'] else 'MISMATCH'} {a['from_keys']} / {a['final_reports']}")
    print()
    print(f"publish (wirestream produce pcap): {doc['publish']['wall_s']:.1f} s; whole bench {doc['bench_wall_s']:.0f} s; "
          f"load average (1 min) {doc['loadavg_start'][0]:.1f} at the start, {doc['loadavg_end'][0]:.1f} at the end")
    print(doc["verdict"] + ("" if not doc["failures"] else ": " + "; ".join(doc["failures"])))


if __name__ == "__main__":
    sys.exit(main())
