#!/usr/bin/env python3
"""Size and cost of a checkpoint's state (processors/state_codec.py).

Feeds a capture through the in-process analysis (connection tracker + L7 dispatcher +
observer, wired as processors/engine.py does, with bound methods as callbacks) up to a
point, then encodes the state several times and decodes it: prints the encoded size,
the encode and decode times (best of ``--repeat``) and the open connections.

    .venv/bin/python bench/bench_state_codec.py tests/data/chrissanders/http_espn.pcapng
    .venv/bin/python bench/bench_state_codec.py --open-connections 100000

``CAPTURE``: the state at ``--at`` (a fraction of the packets, default 0.5: mid-way).
``--open-connections N``: the synthetic capture of bench_open_connections.py (N HTTP
connections, each with a request and a response), at the moment all N are open.
``--no-l7``: TCP analysis only.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))
sys.path.insert(0, str(BENCH_DIR))


class Wiring:
    """tracker + L7 + observer; the records are only counted."""

    def __init__(self, l7: bool) -> None:
        from wirestream.processors.connection_tracker import ConnectionTracker
        from wirestream.processors.l7.base import L7Options
        from wirestream.processors.l7.session import L7Dispatcher
        from wirestream.processors.observations import Observer

        self.options = L7Options()
        self.records = 0
        self.observer = Observer(self.observations, "bench", 0, 1, 4)
        self.l7 = L7Dispatcher(self.emit, "bench", self.options) if l7 else None
        self.tracker = ConnectionTracker(self.on_record, source_id="bench", l7=self.l7)

    def emit(self, topic: str, key: str | None, record: dict[str, Any]) -> None:
        self.observer.observe(topic, record)
        self.records += 1

    def on_record(self, record: dict[str, Any]) -> None:
        self.emit("wire.connections", record["connection_id"], record)

    def observations(self, partition: int, batch: dict[str, Any]) -> None:
        pass

    def feed(self, headers: Any, payloads: bytes) -> None:
        from wirestream.packet_block import PROTO_UDP

        if self.l7 is not None:
            self.l7.datagrams(headers[headers["proto"] == PROTO_UDP], payloads)
        self.tracker.process(headers, payloads)
        if len(headers):
            self.observer.advance(int(headers["ts_us"].max()))
        self.observer.flush()

    def state(self) -> dict[str, Any]:
        return {"tracker": self.tracker, "l7": self.l7, "observer": self.observer}

    def externals(self) -> dict[str, object]:
        return {"rig": self, "options": self.options}


def measure(wiring: Wiring, repeat: int) -> dict[str, Any]:
    from wirestream.processors.state_codec import decode_state, encode_state

    gc.collect()
    enc, dec, enc_cpu, dec_cpu = [], [], [], []
    data = b""
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        data = encode_state(wiring.state(), wiring.externals())
        enc.append(time.perf_counter() - t)
        enc_cpu.append(time.process_time() - c)
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        decode_state(data, wiring.externals())
        dec.append(time.perf_counter() - t)
        dec_cpu.append(time.process_time() - c)
    n = wiring.tracker.open_connections
    return {
        "open_connections": n,
        "sessions": len(wiring.tracker.sessions),
        "state_bytes": len(data),
        "bytes_per_open_connection": round(len(data) / n) if n else None,
        "encode_s": round(min(enc), 3),
        "decode_s": round(min(dec), 3),
        "encode_cpu_s": round(min(enc_cpu), 3),
        "decode_cpu_s": round(min(dec_cpu), 3),
        "encode_us_per_connection": round(min(enc_cpu) / n * 1e6, 1) if n else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("capture", nargs="?")
    p.add_argument("--at", type=float, default=0.5)
    p.add_argument("--open-connections", type=int, default=0)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-l7", action="store_true")
    args = p.parse_args(argv)
    from local_pipeline import packet_batches

    if args.open_connections:
        from bench_open_connections import WORK_DIR, ensure_capture

        cap = WORK_DIR / f"open_{args.open_connections}.pcap"
        meta = ensure_capture(cap, args.open_connections, False)
        stop = meta["all_open_after_packet"]
    else:
        cap = Path(args.capture)
        total = sum(len(h) for h, _ in packet_batches(str(cap), args.batch))
        stop = int(total * args.at)
    wiring = Wiring(not args.no_l7)
    fed = 0
    t = time.perf_counter()
    for headers, payloads in packet_batches(str(cap), args.batch):
        if fed + len(headers) > stop:
            headers = headers[: stop - fed]
        wiring.feed(headers, payloads)
        fed += len(headers)
        if fed >= stop:
            break
    feed_s = time.perf_counter() - t
    out = {"capture": str(cap), "packets_fed": fed, "feed_s": round(feed_s, 2),
           "l7": not args.no_l7, **measure(wiring, args.repeat)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
