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
    # Static assignment, for the workers of one analyze or capture run (hidden: internal;
    # docs/architecture.md): no consumer group (a join costs seconds), no checkpoints
    # (the run fails as a whole if a worker dies), no Faust for the windows.
    #   --assign 0,2             the wire.packets/wire.sockets partitions to process
    #   --assign-windows 0,1,2,3 the wire.observations partitions whose windows to keep
    #   --start-offsets wire.packets:0=120,...  where to start (partitions not named: at
    #                            the beginning)
    #   --wait-for-topics 30     how long to wait for the broker and the topics to exist
    #                            (the command that starts the worker may still be starting them)
    p.add_argument("--assign", type=_partitions, default=None, help=argparse.SUPPRESS)
    p.add_argument("--assign-windows", type=_partitions, default=None, help=argparse.SUPPRESS)
    p.add_argument("--start-offsets", type=_offsets, default={}, help=argparse.SUPPRESS)
    p.add_argument("--wait-for-topics", type=float, default=30.0, help=argparse.SUPPRESS)
    #   --packets-from-stdin     the wire.packets messages come by pipe (analyze on its own
    #                            broker: wirestream/packet_pipe.py)
    p.add_argument("--packets-from-stdin", action="store_true", help=argparse.SUPPRESS)
    #   --records-to-fd 5        the output records and reports go to this file descriptor,
    #                            a pipe (analyze on its own broker: wirestream/record_pipe.py)
    p.add_argument("--records-to-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--loglevel", default="warning", help="worker log level (default: %(default)s)")
    common.add_kafka_args(p, defaults, required=True, hint="; start them with 'wirestream broker'")
    p.set_defaults(run=run)
    return p


def _partitions(text: str) -> list[int]:
    try:
        parts = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of partition numbers: {text!r}") from None
    if any(p < 0 for p in parts):
        raise argparse.ArgumentTypeError(f"negative partition in {text!r}")
    return parts


def _offsets(text: str) -> dict[tuple[str, int], int]:
    """``TOPIC:PARTITION=OFFSET,...`` -> {(topic, partition): offset}."""
    out = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        try:
            where, offset = item.rsplit("=", 1)
            topic, part = where.rsplit(":", 1)
            out[(topic, int(part))] = int(offset)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not TOPIC:PARTITION=OFFSET: {item!r}") from None
    return out


def format_offsets(offsets: dict[tuple[str, int], int]) -> str:
    """The ``--start-offsets`` value of ``{(topic, partition): offset}``."""
    return ",".join(f"{t}:{p}={off}" for (t, p), off in sorted(offsets.items()))


def run(args: argparse.Namespace) -> int:
    if args.assign is not None or args.assign_windows is not None:
        return _run_static(args)
    if args.packets_from_stdin or args.records_to_fd is not None:
        from wirestream.errors import UsageError

        raise UsageError("--packets-from-stdin and --records-to-fd are for a statically assigned worker (--assign)")
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


def _run_static(args: argparse.Namespace) -> int:
    """A worker of one analyze/capture run: the packet partitions of ``--assign`` and/or
    the windows of the observation partitions of ``--assign-windows``, in no group. The
    windows run in a thread beside the packet worker when the role is ``all``."""
    import logging
    import sys
    import threading

    from wirestream.broker import wait_for_topics
    from wirestream.errors import UsageError
    from wirestream.topics import DROPS, OBSERVATIONS, PACKETS, SOCKETS, STATS, TLS_PLAINTEXT

    packets = args.role in ("all", "packets")
    windows = args.role in ("all", "windows") and args.windows
    if args.plugin:
        raise UsageError("--plugin runs in a consumer group (Faust): not with --assign")
    if packets and args.assign is None:
        raise UsageError(f"--role {args.role} with --assign-windows needs --assign too")
    if windows and args.assign_windows is None:
        raise UsageError(f"--role {args.role} with --assign needs --assign-windows too (or --no-windows)")
    if args.packets_from_stdin and not packets:
        raise UsageError(f"--packets-from-stdin is for a packet worker, not --role {args.role}")
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = common.StopOnSignal()
    pipe = None
    if args.packets_from_stdin:
        # Read at once: analyze writes the packets while this worker still starts
        # (its queue holds them meanwhile; wirestream/packet_pipe.py).
        from wirestream.packet_pipe import PacketPipeReader

        pipe = PacketPipeReader(sys.stdin.buffer)
    records = None
    if args.records_to_fd is not None:
        from wirestream.record_pipe import RecordPipeWriter

        records = RecordPipeWriter(args.records_to_fd)  # one for both loops: frames never interleave
    # The broker may be starting and the topics not created yet: the command that started
    # this worker does both while we import (analyze starts everything at once).
    log = logging.getLogger("wirestream.process")
    log.info("waiting for the broker at %s and the input topics", args.bootstrap)
    topics = wait_for_topics(args.bootstrap, (PACKETS, SOCKETS, OBSERVATIONS, STATS), args.wait_for_topics,
                             stopping=stop)
    if topics is None:  # told to stop first (its command gone with the broker, say)
        log.info("stopped before the topics were there: nothing was read")
        return common.EXIT_OK
    if topics[SOCKETS] != topics[PACKETS]:
        raise UsageError(f"{SOCKETS} has {topics[SOCKETS]} partitions and {PACKETS} {topics[PACKETS]}: "
                         "they must be equal (socket events are joined to packets partition by partition)")
    done = threading.Event()  # one loop has ended: the others end too
    errors: list[BaseException] = []

    def stopping() -> bool:
        return stop() or done.is_set()

    def guarded(run: Any) -> None:
        try:
            run(stopping)
        except BaseException as exc:
            errors.append(exc)
            raise
        finally:
            done.set()

    loops = []
    if windows:
        from wirestream.codec import AvroCodec
        from wirestream.processors.windows_worker import WindowsWorker

        starts = {q: args.start_offsets.get((OBSERVATIONS, q)) for q in args.assign_windows}
        loops.append(WindowsWorker(args.bootstrap, AvroCodec(args.registry), starts,
                                   common.window_options(args), records_pipe=records).run)
    if packets:
        assignment = {p: {t: off for (t, q), off in args.start_offsets.items() if q == p and t in (PACKETS, SOCKETS, DROPS, TLS_PLAINTEXT)}
                      for p in args.assign}
        worker = _packet_worker(args, topics[PACKETS], topics[OBSERVATIONS], assignment=assignment,
                                packets_pipe=pipe, records_pipe=records)
        loops.append(worker.run)
    # The windows (light) in a thread; the packet worker in the main thread.
    threads = [threading.Thread(target=guarded, args=(loop,), name="windows", daemon=True) for loop in loops[:-1]]
    for t in threads:
        t.start()
    try:
        guarded(loops[-1])
    finally:
        done.set()
        for t in threads:
            t.join()
    return common.EXIT_ERROR if errors else common.EXIT_OK


def _packet_worker(args: argparse.Namespace, packet_partitions: int, observation_partitions: int,
                   assignment: dict[int, dict[str, int]] | None = None, packets_pipe: Any = None,
                   records_pipe: Any = None) -> Any:
    from wirestream.codec import AvroCodec
    from wirestream.gc_policy import collect_rarely
    from wirestream.processors.engine import EngineOptions
    from wirestream.processors.k8s_enrichment import Enricher, IdentityFeed, IdentityIndex
    from wirestream.processors.l7.base import L7Options
    from wirestream.processors.packet_worker import PacketWorker, WorkerOptions

    options = EngineOptions(
        idle_timeout_us=int(args.idle_timeout * 1e6),
        interim_us=int(args.interim * 1e6),
        l7=(L7Options(redact=args.redact, body_cap=args.body_cap, response_body_cap=args.response_body_cap,
                      community_id_seed=args.community_id_seed,
                      tls_keylog=common.load_tls_keylog(args.tls_keylog))
            if args.l7 else None),
        community_id_seed=args.community_id_seed,
        packet_partitions=packet_partitions,
        # The windows are fed by every packet worker of the group (whoever runs them).
        observation_partitions=observation_partitions if args.windows else 0,
    )
    # The whole wire.k8s-identity table, read before the first record is enriched; the
    # feed is a daemon thread that keeps the index up to date for the worker's life.
    index = IdentityIndex()
    IdentityFeed(args.bootstrap, AvroCodec(args.registry), index).start()
    # This process's connection state and records are many small objects
    # (wirestream/gc_policy.py); what exists now (its modules, its clients) is never
    # scanned again.
    collect_rarely(freeze=True)
    return PacketWorker(
        args.bootstrap, args.registry, args.group, options,
        WorkerOptions(checkpoint_interval_s=args.checkpoint_interval, restore=args.restore,
                      session_timeout_s=args.session_timeout),
        source_prefix=args.only_source_prefix, enricher=Enricher(index), assignment=assignment,
        packets_pipe=packets_pipe, records_pipe=records_pipe)


def _run_faust(args: argparse.Namespace, group: str, observation_partitions: int, windows: bool) -> None:
    from wirestream.processors.app import create_app, run_worker

    app = create_app(args.bootstrap, args.registry, group=group,
                     observation_partitions=observation_partitions,
                     window_options=common.window_options(args), windows=windows,
                     plugins=tuple(args.plugin), session_timeout_s=args.session_timeout)
    run_worker(app, loglevel=args.loglevel)
