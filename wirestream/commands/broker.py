"""``wirestream broker``: the embedded broker and schema registry, in the foreground."""

from __future__ import annotations

import argparse
import time

from wirestream.commands import common
from wirestream.config import Settings


def add_parser(sub: common.Subparsers, defaults: Settings) -> argparse.ArgumentParser:
    p = sub.add_parser("broker", help="run the embedded broker and schema registry in the foreground",
                       description="Start the embedded Kafka-protocol broker (tansu, in memory) and schema "
                                   "registry, print their addresses, and serve until Ctrl-C.")
    p.add_argument("--port", type=int, default=0, help="broker port (default: a free port)")
    p.add_argument("--registry-port", type=int, default=0, help="registry port (default: a free port)")
    p.add_argument("--partitions", type=int, default=defaults.partitions, metavar="N",
                   help="partitions of the topics it creates (default: %(default)s)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from wirestream.broker import EmbeddedBroker, ensure_topics
    from wirestream.kafka_security import check_for_embedded
    from wirestream.registry import EmbeddedSchemaRegistry
    from wirestream.topics import ALL_TOPICS

    check_for_embedded()  # WIRESTREAM_KAFKA_* settings are for an external Kafka

    with EmbeddedBroker(port=args.port or None) as broker, \
            EmbeddedSchemaRegistry(port=args.registry_port) as registry:
        ensure_topics(broker.bootstrap, ALL_TOPICS, args.partitions)
        print(f"broker:   {broker.bootstrap}")
        print(f"registry: {registry.url}")
        print(f"export WIRESTREAM_BOOTSTRAP={broker.bootstrap} WIRESTREAM_REGISTRY={registry.url}")
        print("serving until Ctrl-C", flush=True)
        while True:
            time.sleep(3600)
