"""``wirestream process``: one processor worker (Faust) against an existing Kafka."""

from __future__ import annotations

import argparse

from wirestream.commands import common
from wirestream.config import Settings


def add_parser(sub: common.Subparsers, defaults: Settings) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "process", help="run a processor worker (Faust) against Kafka",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Run one processor worker: consume wire.packets, publish wire.connections,
wire.transactions, wire.dns, wire.tls, and, from those, per-service windows on
wire.service-metrics and detections on wire.alerts; counters on wire.stats. Start
several with the same --group to share the partitions.""",
    )
    p.add_argument("--group", default=defaults.group, help="consumer group / Faust app id (default: %(default)s)")
    p.add_argument("--role", choices=("all", "packets", "windows"), default="all",
                   help="packets: the packet processors only; windows: the per-service windows "
                        "only (give it a --group of its own); all: both in one process "
                        "(default: %(default)s)")
    p.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout_s, metavar="SECONDS",
                   help="idle timeout in capture time (default: %(default)s)")
    p.add_argument("--interim", type=float, default=0.0, metavar="SECONDS",
                   help="emit interim records for connections open longer than this (default: off)")
    common.add_l7_args(p, defaults)
    common.add_window_args(p, defaults)
    p.add_argument("--plugin", action="append", default=[], metavar="NAME",
                   help="also run this processor plugin in the worker (repeatable; `wirestream plugin list`)")
    # for the workers analyze and capture start: their run's sources only, and no
    # response bodies when nothing will show them
    p.add_argument("--only-source-prefix", default="", help=argparse.SUPPRESS)
    p.add_argument("--response-body-cap", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--loglevel", default="warning", help="worker log level (default: %(default)s)")
    common.add_kafka_args(p, defaults, required=True, hint="; start them with 'wirestream broker'")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from wirestream.kafka import ensure_process_topics
    from wirestream.processors.app import create_app, run_worker
    from wirestream.processors.l7.base import L7Options

    # Missing topics are created (an operator's existing ones are left as they are).
    topics = ensure_process_topics(args.bootstrap, args.partitions, group=args.group, role=args.role,
                                   plugins=args.plugin)
    l7 = (L7Options(redact=args.redact, body_cap=args.body_cap, response_body_cap=args.response_body_cap)
          if args.l7 else None)
    app = create_app(args.bootstrap, args.registry, group=args.group, idle_timeout_s=args.idle_timeout,
                     interim_s=args.interim, source_prefix=args.only_source_prefix, l7_options=l7,
                     packet_partitions=topics.packet_partitions,
                     observation_partitions=topics.observation_partitions,
                     window_options=common.window_options(args), windows=args.windows, role=args.role,
                     plugins=tuple(args.plugin))
    run_worker(app, loglevel=args.loglevel)
    return common.EXIT_OK
