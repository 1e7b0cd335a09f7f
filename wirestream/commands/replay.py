"""``wirestream replay``: reprocess a time range of wire.packets (a backfill)."""

from __future__ import annotations

import argparse
import sys

from wirestream.commands import common
from wirestream.config import Settings
from wirestream.topics import PACKETS, SOCKETS


def add_parser(sub: common.Subparsers, defaults: Settings) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "replay", help="reprocess a time range of wire.packets into fresh output (backfill)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Read again what the producers published to wire.packets (and wire.sockets) between
--from and --to, and run it through the processors' pipeline in this process, with a
consumer of its own (the live processors' offsets are untouched), into the usual output
topics. Output keys are deterministic and the values those of the first run for the same
packets: a downstream that keeps one value per key ends with each record once. Use the
same L7 options as the live processors to get the same records.""",
        epilog="""\
examples:
  wirestream replay --from 2026-11-27T06:00:00Z --to 2026-11-27T07:00:00Z
  wirestream replay --from 1795738000 --source node-a-   # one producer's sources only""",
    )
    p.add_argument("--topic", default=PACKETS, choices=(PACKETS,),
                   help="the raw topic to replay (wire.sockets comes with it)")
    p.add_argument("--from", dest="from_ts", type=common.timestamp_us, metavar="TIME",
                   help="published at or after (ISO 8601 or Unix seconds; default: the oldest kept)")
    p.add_argument("--to", dest="to_ts", type=common.timestamp_us, metavar="TIME",
                   help="published before (default: now)")
    p.add_argument("--source", default="", metavar="PREFIX", help="only sources whose id starts with this")
    common.add_l7_args(p, defaults)
    common.add_kafka_args(p, defaults, required=True)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from wirestream.processors.l7.base import L7Options
    from wirestream.replay import replay

    l7 = (L7Options(redact=args.redact, body_cap=args.body_cap, community_id_seed=args.community_id_seed,
                    tls_keylog=common.load_tls_keylog(args.tls_keylog))
          if args.l7 else None)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\rreplayed {done:,} of {total:,} messages", end="", file=sys.stderr, flush=True)

    result = replay(args.bootstrap, args.registry, args.from_ts, args.to_ts, source_prefix=args.source,
                 l7_options=l7, progress=progress, community_id_seed=args.community_id_seed)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    emitted = ", ".join(f"{n:,} -> {t}" for t, n in sorted(result.emitted.items())) or "nothing"
    print(f"replayed {result.by_topic[PACKETS]:,} packet batches and {result.by_topic[SOCKETS]:,} "
          f"socket events in {result.elapsed_s:.1f} s: {emitted}")
    return common.EXIT_OK
