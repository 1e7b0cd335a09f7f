#!/usr/bin/env python3
"""CPU cost of the per-service windows, per transaction, in-process (no broker).

Feeds N synthetic HTTP transaction records (and one connection record per 10
transactions) through what the pipeline runs for them: the packet processor's
``Observer`` (record -> observation, batched per observation partition, Avro-encoded as
for ``wire.observations``) and the windows task (decode, ``ServiceWindows.handle`` with a
dict as its table). Prints µs per transaction for each part.

The end-to-end cost (through Kafka and Faust, against tshark) comes from
``bench_analyze.py`` with and without ``--analyze-args=--no-windows``; see bench/README.md.

    python bench/bench_windows.py [--transactions 200000] [--services 20]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from typing import Any

import numpy as np
from wirestream.processors.observations import Observer
from wirestream.processors.service_windows import ServiceWindows
from wirestream.schemas import schema_text

from wirestream.avro_reader import compile_reader
from wirestream.avro_writer import compile_writer
from wirestream.topics import CONNECTIONS, TRANSACTIONS


def records(n: int, services: int, seed: int = 1) -> list[tuple[str, dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    t0 = 1_800_000_000_000_000
    out = []
    for i in range(n):
        ts = t0 + i * 300  # ~3,300 transactions per second of capture time
        s = int(rng.integers(0, services))
        out.append((TRANSACTIONS, {
            "server_ip": f"10.0.{s // 250}.{s % 250 + 1}", "server_port": 80,
            "client_ip": f"10.1.0.{int(rng.integers(1, 200))}", "request_ts_us": ts,
            "latency_us": int(rng.lognormal(8, 1)), "status": 200 if rng.random() > 0.02 else 503,
            "error": None, "method": "GET", "host": "shop", "path": f"/item/{int(rng.integers(0, 10**6))}",
        }))
        if i % 10 == 0:
            out.append((CONNECTIONS, {
                "server_ip": f"10.0.{s // 250}.{s % 250 + 1}", "server_port": 80, "client_ip": "10.1.0.1",
                "end_ts_us": ts, "handshake_rtt_us": int(rng.lognormal(6, 0.5)), "state": "complete",
                "retransmission_rate": 0.0, "data_packets": 20, "zero_window": 0, "final": True,
            }))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--transactions", type=int, default=200_000)
    p.add_argument("--services", type=int, default=20)
    args = p.parse_args()
    recs = records(args.transactions, args.services)
    schema = json.loads(schema_text("observation_batch"))
    encode, decode = compile_writer(schema), compile_reader(schema)

    sent: list[tuple[int, bytes]] = []
    observer = Observer(lambda q, b: sent.append((q, encode(b))), "bench", 0, 1, 4)
    t = time.perf_counter()
    for i, (topic, r) in enumerate(recs):
        observer.observe(topic, r)
        if i % 1000 == 999:  # a packet batch brings ~1000 records at most
            observer.advance(r.get("request_ts_us", r.get("end_ts_us", 0)))
            observer.flush()
    observer.flush(end_of_input=True)
    observe_s = time.perf_counter() - t

    out: dict[str, int] = defaultdict(int)
    windows = ServiceWindows({}, lambda topic, key, r: out.__setitem__(topic, out[topic] + 1))
    offsets: dict[int, int] = defaultdict(int)
    t = time.perf_counter()
    for q, value in sent:
        windows.handle(decode(value, 0), q, offsets[q])
        offsets[q] += 1
    windows_s = time.perf_counter() - t

    n = args.transactions
    print(f"{n:,} transactions (+{len(recs) - n:,} connections), {args.services} services, "
          f"{len(sent):,} observation batches, {out['wire.service-metrics']:,} windows, "
          f"{out['wire.alerts']:,} alerts")
    print(f"packet processor side (observe, batch, encode): {observe_s / n * 1e6:6.2f} µs per transaction")
    print(f"windows side (decode, add, digests, state)    : {windows_s / n * 1e6:6.2f} µs per transaction")
    print(f"total                                         : {(observe_s + windows_s) / n * 1e6:6.2f} µs per transaction")


if __name__ == "__main__":
    main()
