"""``wirestream capture``: live traffic through the whole pipeline, then a summary."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from wirestream.commands import common
from wirestream.config import Settings
from wirestream.gc_policy import collect_rarely


def add_parser(sub: common.Subparsers, defaults: Settings) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "capture", help="capture live traffic (eBPF, or AF_PACKET) through the whole pipeline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Capture this machine's traffic and run it through Kafka and the processors, like
analyze does with a file, until --duration, --count or Ctrl-C; then print the same
summary (connections, HTTP/1.x, HTTP/2 and gRPC, DNS, TLS, Redis, PostgreSQL and MySQL
calls, services, counters).

Modes (--mode; `wirestream doctor` says which work here):
  ebpf       an eBPF socket filter on each packet ring (loopback duplicates and non-IP
             frames dropped in the kernel, snap length applied there), plus socket
             events from tracepoints on wire.sockets: TCP state changes, retransmissions,
             connect/accept/close with pid, process, cgroup -> container, netns. Connection
             records then carry client/server pid and process and kernel_retransmissions.
  af_packet  the same packet rings without eBPF: packets only, no process identity.
  auto       ebpf if possible, else af_packet, saying why in one line (the default).

Needs (root has them all):
  CAP_NET_RAW        packet sockets (both modes)
  CAP_BPF, CAP_PERFMON  loading the eBPF programs (or CAP_SYS_ADMIN on older kernels)
  CAP_NET_ADMIN      attaching the sock_ops program to the cgroup (segment counts)
  CAP_SYS_ADMIN      --netns (entering another network namespace)
Kernel: Linux >= 5.8 (BPF ring buffer) with BTF or a kernel header tree for bcc
(scripts/bcc-headers), tracefs mounted, tracepoints sock:inet_sock_set_state and
tcp:tcp_retransmit_skb; bcc from Debian's python3-bpfcc. Nothing else: no kprobes.

Loss is counted, never silent: frames the ring had no room for (ring_full), socket
events the BPF ring buffer had no room for (socket_events_lost) and waits on a slow
broker (backpressure_waits) are on wire.stats (stage producer.live) every 5 s and in
the summary. Memory is bounded by --ring-mb, --socket-ring-mb and the Kafka client's queue.""",
        epilog="""\
examples:
  sudo wirestream capture --duration 30                   # every interface, 30 s
  sudo wirestream capture --iface eth0 --out results/     # until Ctrl-C, JSONL files too
  sudo wirestream capture --netns blue --iface veth0 --count 100000
  sudo wirestream capture --mode af_packet --no-l7 --bootstrap kafka:9092 --registry http://registry:8081""",
    )
    common.add_live_args(p)
    common.add_pipeline_args(p, defaults)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from wirestream.capture import capture
    from wirestream.sinks import console

    collect_rarely()  # many small records (wirestream/gc_policy.py)
    settings = common.settings_from_args(args)
    options = common.capture_options(args)

    def notice(live: Any, phase: str) -> None:
        if phase == "opened" and live.fallback_reason:
            what = "AF_PACKET capture, no socket events" if live.mode == "af_packet" else "packets only"
            print(f"wirestream capture: {what}: {live.fallback_reason}", file=sys.stderr)
        if phase == "capturing":
            print(f"wirestream capture: capturing on {live.rings_text()} ({live.mode}); Ctrl-C to stop",
                  file=sys.stderr, flush=True)

    # The first Ctrl-C (or SIGTERM) ends the capture; the pipeline then finishes what was
    # captured. A second one interrupts that too.
    stop = common.StopOnSignal(second_interrupts=True)
    result = capture(options, settings, workers=args.workers, stop=stop,
                     notice=notice, keep_bodies=bool(args.out))
    if args.html:
        common.write_html_report(args.html, result)
    console.report(result, as_json=args.json, top=args.top, out_dir=args.out)
    return common.EXIT_OK
