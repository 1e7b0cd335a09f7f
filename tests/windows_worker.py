"""A real ``wirestream process`` worker for the windows stage, and observation batches to feed it.

Shared by the tests of the windows stage (test_windows_restart, test_late_observations,
test_service_windows): the batches are built by the real ``Observer`` from transaction
records, as the packet workers build them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from wirestream.processors.observations import Observer

from wirestream.codec import AvroCodec
from wirestream.kafka import WireProducer
from wirestream.reader import TopicReader
from wirestream.topics import (
    ALERTS,
    OBSERVATIONS,
    SERVICE_METRICS,
    STATS,
    TRANSACTIONS,
    WINDOWS_STAGE,
)

PACKET_PARTITIONS = 4
SERVICES = [("198.51.100.1", 80), ("198.51.100.2", 443), ("198.51.100.3", 8080)]


def observation_batches(source_id: str) -> list[tuple[int, dict[str, Any]]]:
    """(observation partition, batch) in sending order: 6,000 transactions over 50 s of
    capture time from 4 packet partitions, with a burst of 5xx in one window."""
    rng = np.random.default_rng(11)
    out: list[tuple[int, dict[str, Any]]] = []
    observers = [Observer(lambda q, b: out.append((q, b)), source_id, p, PACKET_PARTITIONS, 4)
                 for p in range(PACKET_PARTITIONS)]
    t0 = 1_900_000_000_000_000
    for step in range(100):  # each step: half a second of capture time on every partition
        for p, obs in enumerate(observers):
            for _ in range(15):
                ts = t0 + step * 500_000 + int(rng.integers(0, 500_000))
                ip, port = SERVICES[int(rng.integers(0, len(SERVICES)))]
                in_burst = 20_000_000 <= ts - t0 < 30_000_000 and port == 80
                obs.observe(TRANSACTIONS, {
                    "server_ip": ip, "server_port": port, "client_ip": f"10.9.0.{p + 1}",
                    "request_ts_us": ts, "latency_us": int(rng.lognormal(8, 1)),
                    "status": 503 if in_burst and rng.random() < 0.5 else 200, "error": None,
                    "method": "GET", "host": ip, "path": f"/{int(rng.integers(0, 10**6))}",
                })
            obs.advance(t0 + (step + 1) * 500_000)
            obs.flush()
    for obs in observers:
        obs.flush(end_of_input=True)
    return out


def produce(broker: Any, codec: AvroCodec, batches: list[tuple[int, dict[str, Any]]]) -> None:
    """Send ``batches`` to wire.observations, each to its partition, in order; wait until
    all are delivered."""
    encode = codec.encoder(OBSERVATIONS)
    producer = WireProducer(broker.bootstrap)
    for q, batch in batches:
        producer.produce(OBSERVATIONS, encode(batch), partition=q)
    assert producer.flush(30) == 0
    assert not producer.delivery_errors


def start_worker(broker: Any, registry: Any, group: str, prefix: str) -> subprocess.Popen[bytes]:
    """A ``wirestream process`` worker in ``group`` for the sources named ``prefix...``:
    10 s windows, 2 s of lateness, an alert past 20 5xx in a window."""
    return subprocess.Popen(
        [sys.executable, "-m", "wirestream", "process", "--group", group, "--bootstrap", broker.bootstrap,
         "--registry", registry.url, "--only-source-prefix", prefix, "--window", "10", "--lateness", "2",
         "--alert-threshold", "errors_5xx=20"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to the worker's process group; SIGKILL it if it is not gone in 15 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def collect(reader: TopicReader, source_id: str, until: Callable[[dict[str, list]], bool],
            timeout: float = 120, got: dict[str, list] | None = None) -> dict[str, list]:
    """The service-metrics, alert and stats records of ``source_id`` read until ``until``
    says so (or ``timeout`` seconds), by topic; added to ``got`` when it is given (what an
    earlier ``collect`` of the same source read)."""
    if got is None:
        got = {SERVICE_METRICS: [], ALERTS: [], STATS: []}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(got):
        for m in reader.poll(0.3, 10_000):
            if m.record is not None and m.record.get("source_id") == source_id:
                got[m.topic].append(m.record)
    return got


def finished(got: dict[str, list]) -> bool:
    """The windows stage has sent its final report for all 4 observation partitions, and
    every record those reports count as emitted has been read.

    The reports alone are not enough: a report is written after the records it counts
    are delivered, but it is on another topic, and a reader may be handed it first."""
    finals = [s for s in got[STATS] if s["stage"] == WINDOWS_STAGE and s["final"]]
    if len(finals) < 4:
        return False
    # at least: a window emitted just before a worker was killed may come out twice
    return all(len(got[topic]) >= sum(s["emitted"].get(topic, 0) for s in finals)
               for topic in (SERVICE_METRICS, ALERTS))
