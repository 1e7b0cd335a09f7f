"""``wirestream process``: one processor worker against an existing Kafka."""

from __future__ import annotations

import argparse
from typing import Any

from wirestream.commands import common
from wirestream.config import Settings


def add_parser(sub: common.Subparsers, defaults: Settings) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "process", help="run a processor worker against Kafka",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Run one processor worker: consume wire.packets, publish wire.connections,
wire.transactions, wire.dns, wire.tls, and, from those, per-service windows on
wire.service-metrics and detections on wire.alerts; counters on wire.stats. Start
several with the same --group to share the partitions: each partition's state is
checkpointed to wire.checkpoints with the offsets it covers, so workers may join, leave
or crash without losing or splitting a connection (docs/checkpoints.md).""",
    )
    p.add_argument("--group", default=defaults.group,
                   help="consumer group of the packet workers; the windows' (Faust) is "
                        "GROUP-windows (default: %(default)s)")
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
    g = p.add_argument_group("checkpoints (packet workers; docs/checkpoints.md)")
    g.add_argument("--checkpoint-interval", type=float, default=5.0, metavar="SECONDS",
                   help="write each partition's state and input offsets to wire.checkpoints this "
                        "often, and always before a partition moves to another worker; after a "
                        "crash, at most this much input is processed again (default: %(default)s)")
    g.add_argument("--session-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="a worker that stops answering loses its partitions after this long; "
                        "Apache Kafka accepts 6 to 1800 by default (default: %(default)s)")
    # for tests that show what the checkpoints are for: start every partition empty
    g.add_argument("--no-restore", dest="restore", action="store_false", help=argparse.SUPPRESS)
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

    packets = args.role in ("all", "packets")
    windows = args.role in ("all", "windows") and args.windows
    # The packet workers and the Faust app (windows, plugins) are two consumer groups, with
    # different assignors: the Faust app's is named after the packet workers'.
    faust_group = f"{args.group}-windows"
    # Missing topics are created (an operator's existing ones are left as they are).
    topics = ensure_process_topics(args.bootstrap, args.partitions, group=faust_group, role=args.role,
                                   plugins=args.plugin, replication_factor=args.replication_factor)
    if not packets:
        _run_faust(args, faust_group, topics.observation_partitions, windows)
        return common.EXIT_OK
    import logging

    # The packet worker's own lines (assignments, checkpoints, waits) on stderr.
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = _packet_worker(args, topics.packet_partitions, topics.observation_partitions)
    if not (windows or args.plugin):
        stop = common.StopOnSignal()
        worker.run(stop)
        return common.EXIT_OK
    # The windows or plugins run in Faust, which wants the main thread (its signal
    # handlers, its event loop); the packet worker runs beside it, and stops when it does.
    import threading

    stopped = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stopped.is_set,), name="packet-worker")
    thread.start()
    try:
        _run_faust(args, faust_group, topics.observation_partitions, windows)
    finally:
        stopped.set()
        thread.join()
    return common.EXIT_OK


def _packet_worker(args: argparse.Namespace, packet_partitions: int, observation_partitions: int) -> Any:
    from wirestream.codec import AvroCodec
    from wirestream.processors.engine import EngineOptions
    from wirestream.processors.k8s_enrichment import Enricher, IdentityFeed, IdentityIndex
    from wirestream.processors.l7.base import L7Options
    from wirestream.processors.packet_worker import PacketWorker, WorkerOptions

    options = EngineOptions(
        idle_timeout_us=int(args.idle_timeout * 1e6),
        interim_us=int(args.interim * 1e6),
        l7=(L7Options(redact=args.redact, body_cap=args.body_cap, response_body_cap=args.response_body_cap)
            if args.l7 else None),
        packet_partitions=packet_partitions,
        # The windows are fed by every packet worker of the group (whoever runs them).
        observation_partitions=observation_partitions if args.windows else 0,
    )
    # The whole wire.k8s-identity table, read before the first record is enriched; the
    # feed is a daemon thread that keeps the index up to date for the worker's life.
    index = IdentityIndex()
    IdentityFeed(args.bootstrap, AvroCodec(args.registry), index).start()
    return PacketWorker(
        args.bootstrap, args.registry, args.group, options,
        WorkerOptions(checkpoint_interval_s=args.checkpoint_interval, restore=args.restore,
                      session_timeout_s=args.session_timeout),
        source_prefix=args.only_source_prefix, enricher=Enricher(index))


def _run_faust(args: argparse.Namespace, group: str, observation_partitions: int, windows: bool) -> None:
    from wirestream.processors.app import create_app, run_worker

    app = create_app(args.bootstrap, args.registry, group=group,
                     observation_partitions=observation_partitions,
                     window_options=common.window_options(args), windows=windows,
                     plugins=tuple(args.plugin), session_timeout_s=args.session_timeout)
    run_worker(app, loglevel=args.loglevel)
