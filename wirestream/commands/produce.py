"""``wirestream produce pcap|live``: publish packets for processors running elsewhere."""

from __future__ import annotations

import argparse
import os
import sys
import time

from wirestream.commands import common
from wirestream.config import Settings


def add_parser(sub: common.Subparsers, defaults: Settings) -> argparse.ArgumentParser:
    p = sub.add_parser("produce", help="publish packets to wire.packets",
                       description="Publish packets to wire.packets (batched, partitioned by connection).")
    psub = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    pp = psub.add_parser("pcap", help="replay capture files",
                         description="Replay capture files into wire.packets, then send end-of-input markers.")
    pp.add_argument("files", nargs="+", metavar="FILE")
    pp.add_argument("--snaplen", type=int, default=defaults.payload_snaplen, metavar="BYTES",
                    help="payload bytes kept per packet (default: %(default)s)")
    common.add_kafka_args(pp, defaults)
    pp.set_defaults(run=run_pcap)
    pp = psub.add_parser(
        "live", help="capture live traffic into wire.packets and wire.sockets",
        description="Capture live traffic (as `wirestream capture` does: eBPF or AF_PACKET, see its --help) "
                    "and publish it for processors running elsewhere, until SIGTERM/Ctrl-C, --duration or "
                    "--count; then send end-of-input markers. This is what the capture DaemonSet runs.")
    common.add_live_args(pp)
    pp.add_argument("--snaplen", type=int, default=defaults.payload_snaplen, metavar="BYTES",
                    help="payload bytes kept per packet (default: %(default)s)")
    pp.add_argument("--stats-interval", type=float, default=10.0, metavar="SECONDS",
                    help="publish capture counters on wire.stats this often (default: %(default)s)")
    pp.add_argument("--source-name", default=os.environ.get("WIRESTREAM_SOURCE_NAME") or os.uname().nodename,
                    help="name of this source in the records (default: $WIRESTREAM_SOURCE_NAME, else the host name)")
    common.add_kafka_args(pp, defaults, required=True)
    pp.set_defaults(run=run_live)
    return p


def run_pcap(args: argparse.Namespace) -> int:
    from wirestream.broker import partition_count
    from wirestream.errors import CaptureFileError
    from wirestream.producers.pcap_replay import replay_files
    from wirestream.runtime import Runtime
    from wirestream.topics import PACKETS

    settings = common.settings_from_args(args)
    failed = 0
    with Runtime(settings) as rt:
        if rt.embedded_broker is not None:
            print(f"wirestream: note: embedded broker at {rt.bootstrap} stops when this command ends",
                  file=sys.stderr)
        partitions = partition_count(rt.bootstrap, PACKETS)
        # Each file is a source of its own, named so that sources from several hosts and
        # runs never collide.
        for source_id, r in replay_files(
            args.files, rt.bootstrap, rt.codec, partitions,
            lambda _i: f"{os.uname().nodename}-{os.getpid()}-{time.time_ns()}", settings.payload_snaplen,
        ):
            if isinstance(r, CaptureFileError):
                common.print_error(r)
                failed += 1
                continue
            dropped = ", ".join(f"{k}={v}" for k, v in sorted(r.dropped.items())) or "none"
            print(f"{r.path}: {r.frames} frames, {r.packets} packets published as source {source_id}; "
                  f"not published: {dropped}")
    return common.EXIT_ERROR if failed else common.EXIT_OK


def run_live(args: argparse.Namespace) -> int:
    from wirestream.broker import ensure_topics, partition_count
    from wirestream.codec import AvroCodec
    from wirestream.producers.live_capture import open_capture, run_capture
    from wirestream.topics import LIVE_TOPICS, PACKETS

    live = open_capture(common.capture_options(args, args.stats_interval))
    if live.fallback_reason:
        print(f"wirestream produce live: {live.mode}: {live.fallback_reason}", file=sys.stderr)
    ensure_topics(args.bootstrap, LIVE_TOPICS, args.partitions, replication_factor=args.replication_factor)
    codec = AvroCodec(args.registry)
    partitions = partition_count(args.bootstrap, PACKETS)
    source_id = f"{args.source_name}-{os.getpid()}-{time.time_ns()}"
    publisher, socket_publisher = live.publishers(args.bootstrap, codec, partitions, source_id,
                                                  f"live {args.source_name}")
    stop = common.StopOnSignal()
    print(f"wirestream produce live: capturing on {live.rings_text()} ({live.mode}) as source {source_id}",
          file=sys.stderr, flush=True)
    try:
        r = run_capture(live, publisher, socket_publisher, stop=stop)
    finally:
        live.close()
    dropped = ", ".join(f"{k}={v}" for k, v in sorted(r.dropped.items())) or "none"
    print(f"{r.frames} frames, {r.packets} packets published; dropped: {dropped}")
    return common.EXIT_OK
