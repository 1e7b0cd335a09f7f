#!/usr/bin/env python3
"""``produce pcap`` alone: reading + decoding + batching + publishing a capture, timed.

A fresh embedded broker and registry, then ``wirestream produce pcap CAP`` as a process of
its own, timed from its start to its exit (start-up included, so also printed: the same
command on a one-packet capture). Prints packets/s and CPU µs per packet of the producer
process and of the broker over the same interval, and, in the same run, the wall time of
``tshark -q -z conv,tcp -r CAP`` (the reference of issue 16)::

    .venv/bin/python bench/bench_produce.py [bench/work/http_300000.pcap] [--runs 3]

``--command "python other_build.py"`` times another build's command in place of
``wirestream`` (a before/after comparison in one run).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_analyze import cpu_s

HERE = Path(__file__).resolve().parent
DEFAULT_CAPTURE = HERE / "work" / "http_300000.pcap"


def wirestream_cmd() -> list[str]:
    script = Path(sys.executable).with_name("wirestream")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wirestream"]


def count_packets(cap: Path) -> int:
    """Frames of ``cap`` by capinfos (Wireshark's count)."""
    res = subprocess.run(["capinfos", "-c", "-M", str(cap)], capture_output=True, text=True, check=True)
    for line in res.stdout.splitlines():
        if line.startswith("Number of packets"):
            return int(line.split(":", 1)[1].strip())
    raise SystemExit(f"capinfos gave no packet count for {cap}")


def timed(cmd: list[str], **kw: object) -> tuple[float, float, int]:
    """Run ``cmd``; (wall s, CPU s of it and its children, exit status)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def one_packet_capture(cap: Path, out: Path) -> Path:
    """The first frame of ``cap`` as a capture of its own (start-up cost)."""
    subprocess.run(["editcap", "-r", str(cap), str(out), "1"], check=True, capture_output=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture", nargs="?", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--command", action="append", default=[],
                    help="a command line standing for `wirestream` (repeatable; default: this venv's)")
    ap.add_argument("--no-tshark", action="store_true")
    args = ap.parse_args()
    from wirestream.broker import EmbeddedBroker
    from wirestream.registry import EmbeddedSchemaRegistry

    cap = args.capture
    packets = count_packets(cap)
    print(f"capture {cap} ({packets:,} packets, {cap.stat().st_size / 1e6:,.0f} MB); "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    if shutil.which("tshark") and not args.no_tshark:
        wall, cpu, _ = timed(["tshark", "-q", "-z", "conv,tcp", "-r", str(cap)], stdout=subprocess.DEVNULL)
        print(f"tshark -q -z conv,tcp: {wall:6.2f} s wall, {packets / wall:10,.0f} packets/s, "
              f"{cpu / packets * 1e6:6.2f} µs CPU/packet", flush=True)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker, \
            EmbeddedSchemaRegistry() as registry:
        broker_pid = _broker_pid()
        small = one_packet_capture(cap, Path(tmp) / "one.pcap")
        for command in [shlex.split(c) for c in args.command] or [wirestream_cmd()]:
            if not _time_produce(command, cap, small, packets, broker, registry, broker_pid, args):
                return 1
    return 0


def _time_produce(command: list[str], cap: Path, small: Path, packets: int, broker: Any, registry: Any,
                  broker_pid: int | None, args: argparse.Namespace) -> bool:
    """Time ``command produce pcap`` on a one-packet capture, then ``args.runs`` times on ``cap``."""
    base = [*command, "produce", "pcap", "--bootstrap", broker.bootstrap, "--registry", registry.url,
            "--partitions", str(args.partitions)]
    print(f"== {' '.join(command)}", flush=True)
    start_wall, start_cpu, _ = timed([*base, str(small)], stdout=subprocess.DEVNULL)
    print(f"produce pcap, 1 packet (start-up): {start_wall:6.2f} s wall, {start_cpu:.2f} s CPU", flush=True)
    for run in range(1, args.runs + 1):
        b0 = (cpu_s(broker_pid) or 0.0) if broker_pid else 0.0
        wall, cpu, status = timed([*base, str(cap)], stdout=subprocess.DEVNULL)
        b1 = (cpu_s(broker_pid) or 0.0) if broker_pid else 0.0
        if status:
            print(f"produce pcap exited with {status}")
            return False
        print(f"produce pcap, run {run}: {wall:6.2f} s wall, {packets / wall:10,.0f} packets/s "
              # (a run as short as the one-packet start-up run leaves no rate without it)
              + (f"({packets / (wall - start_wall):,.0f} without start-up); " if wall - start_wall > 0.05
                 else "(start-up is most of it); ")
              + f"producer {cpu / packets * 1e6:5.2f} µs CPU/packet "
              f"({(cpu - start_cpu) / packets * 1e6:5.2f} without start-up), "
              f"broker {(b1 - b0) / packets * 1e6:5.2f}", flush=True)
    return True


def _broker_pid() -> int | None:
    """The embedded broker: the tansu process among our children."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"tansu" in cmdline:
            return int(entry.name)
    return None


if __name__ == "__main__":
    sys.exit(main())
