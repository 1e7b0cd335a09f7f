"""Kafka analysis: cost per record of the Kafka parser and of KafkaAnalyzer (micro).

Issue 20, "the bench: cost per record of each parser". In memory, no broker: the
conversation of tests/test_kafka_parser.py (ApiVersions, a flexible Produce v9 with two
lz4 batches, a Fetch v12 and its response with a cut batch, an acks=0 Produce v3, a
Metadata error, a JoinGroup error: 6 calls, 11 frames) repeated ``--repeat`` times on
one connection (correlation ids as written: the pairing is by order and id), each
direction in 1,460-byte segments, fed, best of ``--runs``, through
``wirestream._core.KafkaConnection`` alone (the Rust parser and the dicts it builds) and
through ``KafkaAnalyzer`` (parser, pairing, records emitted to a counter). Prints ns
and CPU ns per record and MB/s, and checks every call came out.

The end-to-end figures against tshark (a real broker, tcpdump, ``analyze`` vs tshark's
``kafka`` dissector) are tests/test_kafka_protocol.py's workload; not benchmarked here.

    .venv/bin/python bench/bench_kafka.py [--repeat N] [--runs N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_kafka_parser import CONVERSATION, EXPECTED  # noqa: E402
from wirestream._core import KafkaConnection  # noqa: E402
from wirestream.processors.l7.base import L7Options, StreamContext  # noqa: E402
from wirestream.processors.l7.kafka import KafkaAnalyzer  # noqa: E402

SEGMENT = 1460


def segments(repeat: int) -> tuple[list[tuple[int, bytes]], int]:
    out: list[tuple[int, bytes]] = []
    total = 0
    for _ in range(repeat):
        for d, data in CONVERSATION:
            total += len(data)
            out += [(d, data[i:i + SEGMENT]) for i in range(0, len(data), SEGMENT)]
    return out, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=20_000, help="times the conversation is repeated")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    segs, total = segments(args.repeat)
    calls = len(EXPECTED) * args.repeat
    rows = []

    def parser() -> int:
        core = KafkaConnection(0)
        n = 0
        for d, data in segs:
            n += len(core.data(d, data))
        return n

    def analyzer() -> int:
        emitted: Counter[str] = Counter()
        ctx = StreamContext(ips=("10.0.0.1", "10.0.0.2"), ports=(40000, 9092), connection_id=lambda: "c1",
                            emit=lambda topic, _key, _record: emitted.update([topic]), options=L7Options())
        a = KafkaAnalyzer(ctx, 0)
        for ts, (d, data) in enumerate(segs):
            a.on_data(d, data, ts)
        a.on_close(len(segs))
        return emitted["wire.messaging"]

    for name, fn, want in (("KafkaConnection (Rust parser)", parser, len(CONVERSATION) * args.repeat),
                           ("KafkaAnalyzer (parser + pairing + records)", analyzer, calls)):
        best_wall = best_cpu = float("inf")
        for _ in range(args.runs):
            w, c = time.perf_counter(), time.process_time()
            got = fn()
            best_wall = min(best_wall, time.perf_counter() - w)
            best_cpu = min(best_cpu, time.process_time() - c)
            if got != want:
                print(f"{name}: {got} out, {want} expected", file=sys.stderr)
                return 1
        rows.append((name, best_wall, best_cpu))
    print(f"{calls:,} calls ({len(CONVERSATION) * args.repeat:,} frames, {total / 1e6:.1f} MB, "
          f"{len(segs):,} segments), best of {args.runs}")
    print(f"{'':45} {'ns/record':>10} {'CPU ns/record':>14} {'MB/s':>8}")
    for name, wall, cpu in rows:
        print(f"{name:45} {wall / calls * 1e9:10.0f} {cpu / calls * 1e9:14.0f} {total / wall / 1e6:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
