"""``wirestream chains`` (the call-chain stage) and ``wirestream chain ID`` (print one)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from wirestream.commands import common
from wirestream.config import Settings


def add_parser(sub: common.Subparsers, defaults: Settings) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "chains", help="link HTTP transactions into call chains (wire.call-chains)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Consume wire.transactions (every partition, as consumer group --group) and link each
HTTP request to the requests made while it was served: by B3 span ids, by W3C trace id,
by the serving process (pid, live eBPF capture), else by address and time containment
(docs/records.md, wire.call-chains). Publishes each chain of two or more requests to
wire.call-chains once its root ended --lateness seconds (event time) before the newest
response seen, or after --idle-flush seconds without input; counters on wire.stats
(stage processor.chains). Runs until Ctrl-C/SIGTERM (or --exit-when-idle).""",
        epilog="""\
examples:
  wirestream chains --bootstrap kafka:9092 --registry http://registry:8081
  wirestream chain 3f2a9c0d1e4b5a67          # print the chain holding that transaction""")
    p.add_argument("--group", default="wirestream-chains", help="consumer group (default: %(default)s)")
    p.add_argument("--lateness", type=float, default=15.0, metavar="SECONDS",
                   help="event time to wait after a root request ended for its late hops (default: %(default)s)")
    p.add_argument("--max-held", type=common.at_least_one, default=200_000, metavar="N",
                   help="transactions held at most; the oldest beyond are dropped, counted (default: %(default)s)")
    p.add_argument("--idle-flush", type=float, default=10.0, metavar="SECONDS",
                   help="publish everything held after this long without a transaction (default: %(default)s)")
    p.add_argument("--exit-when-idle", type=float, default=0.0, metavar="SECONDS",
                   help="stop after this long without a transaction (counted from when the group gave this "
                        "instance its partitions), once all is published (default: never)")
    p.add_argument("--from-end", action="store_true",
                   help="a new group starts at the newest transactions (default: the oldest)")
    common.add_kafka_args(p, defaults, required=True)
    p.set_defaults(run=run_stage)

    c = sub.add_parser(
        "chain", help="print the call chain holding a transaction, as a tree",
        description="Read wire.call-chains and print the chain that holds TRANSACTION_ID (its root or any hop; "
                    "the ids are in the chains' hops and in `wirestream chain --list`) as a tree: method, "
                    "server, path, status, latency and start after the root of every hop, and how it was "
                    "linked to its parent.")
    c.add_argument("transaction_id", metavar="TRANSACTION_ID", nargs="?",
                   help="a hop's transaction_id (16 hex digits)")
    c.add_argument("--list", action="store_true", help="print every chain's root id, hop count and root request")
    c.add_argument("--json", action="store_true", help="print the chain record as JSON instead of a tree")
    c.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="give up reading after this long (default: %(default)s)")
    common.add_kafka_args(c, defaults, required=True)
    c.set_defaults(run=run_chain)
    return p


def run_stage(args: argparse.Namespace) -> int:
    from wirestream.broker import ensure_topics
    from wirestream.processors.chain_stage import ChainStage
    from wirestream.topics import CALL_CHAINS, STATS, TRANSACTIONS

    ensure_topics(args.bootstrap, [TRANSACTIONS, CALL_CHAINS, STATS], args.partitions,
                  replication_factor=args.replication_factor)
    stage = ChainStage(args.bootstrap, args.registry, group=args.group, lateness_us=int(args.lateness * 1e6),
                       max_held=args.max_held, idle_flush_s=args.idle_flush, from_beginning=not args.from_end)
    signalled = common.StopOnSignal()

    def stop() -> bool:
        if signalled():
            return True
        if not args.exit_when_idle or not stage.assigned or len(stage.builder):
            return False
        return time.monotonic() - stage.last_record >= args.exit_when_idle

    stage.run(stop=stop)
    c = dict(stage.builder.counters)
    print(f"wirestream chains: {c.get('received', 0)} transactions, {c.get('chains', 0)} chains published "
          f"({c.get('hops', 0)} hops), {c.get('evicted', 0)} evicted", file=sys.stderr)
    return common.EXIT_OK


def run_chain(args: argparse.Namespace) -> int:
    from wirestream.codec import AvroCodec
    from wirestream.processors.call_chains import chain_tree_lines
    from wirestream.reader import TopicReader, end_offsets
    from wirestream.sinks.jsonl import to_json_line
    from wirestream.topics import CALL_CHAINS

    if not args.list and not args.transaction_id:
        common.print_error("chain: give a TRANSACTION_ID, or --list")
        return common.EXIT_ERROR
    wanted = (args.transaction_id or "").strip().lower()
    ends = {k: v for k, v in end_offsets(args.bootstrap, [CALL_CHAINS]).items() if v > 0}
    found: dict[str, Any] | None = None
    listed = 0
    deadline = time.monotonic() + args.timeout
    with TopicReader(args.bootstrap, AvroCodec(args.registry), [CALL_CHAINS], "beginning") as reader:
        if reader.missing:
            common.print_error(f"no topic {CALL_CHAINS} at {args.bootstrap}: run `wirestream chains` "
                               "(or analyze with --bootstrap) first")
            return common.EXIT_ERROR
        read = {k: 0 for k in ends}
        while any(read[k] < v for k, v in ends.items()):
            if time.monotonic() > deadline:
                common.print_error(f"reading {CALL_CHAINS} took longer than {args.timeout:g} s")
                return common.EXIT_ERROR
            for m in reader.poll(0.5):
                if (m.topic, m.partition) in read:
                    read[(m.topic, m.partition)] = m.offset + 1
                if m.record is None:
                    print(f"wirestream: skipped undecodable record {m.topic}/{m.partition}@{m.offset}: {m.error}",
                          file=sys.stderr)
                    continue
                chain = m.record
                if args.list:
                    root = chain["hops"][0] if chain["hops"] else {}
                    print(f"{chain['root_id']}  {chain['hop_count']} hops  depth {chain['max_depth']}  "
                          f"{root.get('method') or '?'} {root.get('server_ip')}:{root.get('server_port')}"
                          f"{root.get('path') or ''}")
                    listed += 1
                elif any(h["transaction_id"] == wanted for h in chain["hops"]):
                    found = chain  # the newest wins: a chain published again (a replay) is the same
    if args.list:
        return common.EXIT_OK
    if found is None:
        common.print_error(f"no chain on {CALL_CHAINS} holds transaction {wanted}")
        return common.EXIT_ERROR
    if args.json:
        print(to_json_line(found))
    else:
        print("\n".join(chain_tree_lines(found)))
    return common.EXIT_OK
