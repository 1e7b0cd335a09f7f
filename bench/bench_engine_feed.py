"""The packet worker's analysis alone: CPU per packet of ``Engine.feed`` over a capture.

Reads and batches the capture with the compiled core (as ``produce pcap`` does: one
partition, batches of 4,096 packets), keeps the batches in memory, then times a fresh
:class:`~wirestream.processors.engine.Engine` fed with all of them and finished (TCP
tracking and analysis, L7 unless ``--no-l7``; no Kafka, no Avro, no windows), with the
packet worker's garbage collection (wirestream/gc_policy.py; ``--default-gc``: Python's).
Prints the process CPU per packet of the feed loop, best of ``--runs``.

    .venv/bin/python bench/bench_engine_feed.py bench/work/http_300000.pcap [--no-l7] [--detached]

``--detached``: HTTP/1 sessions are not attached to the TCP core (each chunk through the
Python hooks, as before attachment existed: processors/connection_tracker.py), to
measure what attachment saves.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from wirestream.processors.engine import Engine, EngineOptions
from wirestream.processors.l7.base import L7Options
from wirestream.processors.l7.http import HttpAnalyzer

from wirestream import _core
from wirestream.gc_policy import collect_rarely
from wirestream.packet_block import PACKET_DTYPE


class _CountingSink:
    def __init__(self) -> None:
        self.records = 0

    def emit(self, topic: str, key: str | None, record: dict) -> None:
        self.records += 1

    def send_to_partition(self, topic: str, partition: int, record: dict) -> None:
        self.records += 1


def batches_of(path: str) -> list[tuple[np.ndarray, bytes, int]]:
    reader = _core.open_capture(path)
    decoder, batcher = _core.FrameDecoder(65535), _core.Batcher(1, 4096, 1 << 30)
    out = []
    done = False
    while not done:
        ready, done = reader.pump(decoder, batcher, 100_000)
        out += ready
    out += batcher.flush()
    return [(np.frombuffer(h, dtype=PACKET_DTYPE), p, n) for _part, n, h, p, *_tunnels in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture")
    ap.add_argument("--no-l7", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--default-gc", action="store_true", help="Python's GC thresholds, not the worker's")
    ap.add_argument("--detached", action="store_true",
                    help="HTTP/1 chunks through the Python hooks, not attached to the core")
    args = ap.parse_args()
    if args.detached:
        HttpAnalyzer.direct_core = lambda self: None  # type: ignore[method-assign]
    batches = batches_of(args.capture)
    packets = sum(n for *_, n in batches)
    options = EngineOptions(l7=None if args.no_l7 else L7Options())
    best = None
    if not args.default_gc:
        collect_rarely(freeze=True)  # as the packet worker (wirestream/gc_policy.py)
    for _ in range(args.runs):
        sink = _CountingSink()
        engine = Engine("bench", 0, options, sink)
        c0, t0 = time.process_time(), time.perf_counter()
        for headers, payloads, n in batches:
            engine.feed(headers, payloads, n)
        engine.finish()
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        if best is None or cpu < best[0]:
            best = (cpu, wall, sink.records)
    cpu, wall, records = best
    print(f"{args.capture}: {packets:,} packets, L7 {'off' if args.no_l7 else 'on'}"
          f"{', detached' if args.detached else ''}: "
          f"{cpu / packets * 1e6:.2f} µs CPU/packet ({packets / wall:,.0f} packets/s wall), "
          f"{records:,} records, best of {args.runs}")


if __name__ == "__main__":
    main()
