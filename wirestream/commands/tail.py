"""``wirestream tail TOPIC``: a topic's records as JSON lines."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Literal

from wirestream.commands import common
from wirestream.config import Settings


def add_parser(sub: common.Subparsers, defaults: Settings) -> argparse.ArgumentParser:
    p = sub.add_parser("tail", help="decode a topic and print JSON lines",
                       description="Decode a wirestream topic (Avro, Confluent wire format) and print one "
                                   "JSON object per record.")
    p.add_argument("topic", metavar="TOPIC", help="e.g. wire.connections, wire.stats")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest record (default: new records only)")
    p.add_argument("-n", "--max", type=int, default=0, metavar="N", help="stop after N records")
    p.add_argument("--where", action="append", default=[], metavar="COND",
                   help="only records where FIELD OP VALUE holds, OP one of == != >= <= > < ~ (regular "
                        "expression); repeatable, all must hold (e.g. --where 'status>=500' --where 'path~^/api')")
    p.add_argument("--service", metavar="NAME",
                   help="only records of this service (namespace/name, or the server's ip:port)")
    p.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                   help="stop after this long without a record (default: follow forever)")
    common.add_kafka_args(p, defaults, required=True)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from wirestream.client import where
    from wirestream.codec import AvroCodec
    from wirestream.reader import TopicReader
    from wirestream.sinks.jsonl import to_json_line

    keep = where(*args.where, service=args.service) if args.where or args.service else None
    codec = AvroCodec(args.registry)
    found = _wait_for_topic(args)
    if found is None:
        return common.EXIT_ERROR
    # a topic created while we waited is read from its start: all of it is new
    start = "beginning" if args.from_beginning or found == "created" else "end"
    count = 0
    last = time.monotonic()
    with TopicReader(args.bootstrap, codec, [args.topic], start) as r:
        while True:
            msgs = r.poll(0.5)
            for m in msgs:
                if m.record is None:
                    print(f"wirestream: skipped undecodable record {m.topic}/{m.partition}@{m.offset}: {m.error}",
                          file=sys.stderr)
                    continue
                if keep is not None and not keep(m.record):
                    continue
                print(to_json_line(m.record), flush=True)
                count += 1
                if args.max and count >= args.max:
                    return common.EXIT_OK
            if msgs:
                last = time.monotonic()
            elif args.timeout and time.monotonic() - last > args.timeout:
                return common.EXIT_OK


def _wait_for_topic(args: argparse.Namespace) -> Literal["existed", "created"] | None:
    """Whether ``args.topic`` existed, or was created while we waited (None: neither). One of wirestream's own topics that
    is not there yet (nothing has written it: a worker creates it when it starts) is
    waited for, saying so once (bounded by ``--timeout`` if given); any other name is an
    error that names what it may have meant, instead of a tail that never prints."""
    from wirestream.reader import partitions_of, unknown_topic_message
    from wirestream.topics import ALL_TOPICS

    if partitions_of(args.bootstrap, [args.topic]):
        return "existed"
    if args.topic not in ALL_TOPICS:
        print(f"wirestream: error: {unknown_topic_message(args.bootstrap, args.topic)}", file=sys.stderr)
        return None
    print(f"wirestream: waiting for topic {args.topic} to be created at {args.bootstrap} "
          "(the workers create it when they start)", file=sys.stderr)
    started = time.monotonic()
    while not partitions_of(args.bootstrap, [args.topic]):
        if args.timeout and time.monotonic() - started > args.timeout:
            print(f"wirestream: error: topic {args.topic} was not created within {args.timeout:g} s", file=sys.stderr)
            return None
        time.sleep(1.0)
    return "created"
