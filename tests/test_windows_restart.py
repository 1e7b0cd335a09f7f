"""Killing the windows' worker mid-window and starting another gives the same windows.

The same observation batches (built by the real ``Observer`` from transaction records)
go to two sources on the real broker: one processed by a single uninterrupted worker,
the other by a worker that is SIGKILLed once its first windows are out (others still
open, their state in the Faust table) and replaced by a new worker in the same group. The
``wire.service-metrics`` and ``wire.alerts`` records of both must be the same (a window
emitted just before the kill may come out twice, identical: delivery is at least once).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import numpy as np
from confluent_kafka import Producer
from wirestream.processors.observations import Observer

from wirestream.codec import AvroCodec
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
    encode = codec.encoder(OBSERVATIONS)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for q, batch in batches:
        p.produce(OBSERVATIONS, encode(batch), partition=q)
    assert p.flush(30) == 0


def start_worker(broker: Any, registry: Any, group: str, prefix: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "wirestream", "process", "--group", group, "--bootstrap", broker.bootstrap,
         "--registry", registry.url, "--only-source-prefix", prefix, "--window", "10", "--lateness", "2",
         "--alert-threshold", "errors_5xx=20"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def collect(reader: TopicReader, source_id: str, until: Any, timeout: float = 120) -> dict[str, list]:
    got: dict[str, list] = {SERVICE_METRICS: [], ALERTS: [], STATS: []}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(got):
        for m in reader.poll(0.3, 10_000):
            if m.record is not None and m.record.get("source_id") == source_id:
                got[m.topic].append(m.record)
    return got


def finished(got: dict[str, list]) -> bool:
    return sum(1 for s in got[STATS] if s["stage"] == WINDOWS_STAGE and s["final"]) >= 4


def windows(got: dict[str, list], source_id: str) -> dict[tuple, dict]:
    """Records by (service, window), with the source id taken out; duplicates identical."""
    out: dict[tuple, dict] = {}
    for r in got[SERVICE_METRICS] + got[ALERTS]:
        r = {k: v for k, v in r.items() if k != "source_id"}
        key = (r.get("kind", "metrics"), r["service"], r.get("window_start_ts_us", r.get("ts_us")))
        if "alert_id" in r:
            r.pop("alert_id")  # derived from the source id
        assert out.setdefault(key, r) == r, f"two different records for {key}"
    return out


def test_a_worker_killed_mid_window_is_replaced_without_changing_the_windows(broker, registry) -> None:
    codec = AvroCodec(registry.url)
    run = uuid.uuid4().hex[:8]
    topics = [SERVICE_METRICS, ALERTS, STATS]

    # uninterrupted
    src_a = f"{run}a-0"
    worker = start_worker(broker, registry, f"wirestream-test-{run}a", f"{run}a")
    try:
        with TopicReader(broker.bootstrap, codec, topics, "end") as reader:
            produce(broker, codec, observation_batches(src_a))
            base = collect(reader, src_a, finished)
    finally:
        stop(worker)
    assert finished(base), "the uninterrupted run did not finish"

    # killed once its first windows are out, then replaced
    src_b = f"{run}b-0"
    group = f"wirestream-test-{run}b"
    batches = observation_batches(src_b)
    half = len(batches) // 2
    worker = start_worker(broker, registry, group, f"{run}b")
    try:
        with TopicReader(broker.bootstrap, codec, topics, "end") as reader:
            produce(broker, codec, batches[:half])
            first = collect(reader, src_b, lambda g: len(g[SERVICE_METRICS]) >= 3)
            assert len(first[SERVICE_METRICS]) >= 3, "no window closed before the kill"
            # Longer than Faust's commit interval (2.8 s): the replacement starts from
            # committed offsets, so the open windows can only come from the table.
            time.sleep(3.5)
            stop(worker, signal.SIGKILL)
            worker = start_worker(broker, registry, group, f"{run}b")
            produce(broker, codec, batches[half:])
            rest = collect(reader, src_b, finished)
    finally:
        stop(worker)
    assert finished(rest), "the replacement worker did not finish"
    for topic in (SERVICE_METRICS, ALERTS):
        rest[topic] = first[topic] + rest[topic]

    expected, got = windows(base, src_a), windows(rest, src_b)
    assert sum(1 for k in expected if k[0] == "metrics") >= 15  # 3 services x 5+ windows
    assert any(k[0] == "errors_5xx_spike" for k in expected)
    assert got == expected
