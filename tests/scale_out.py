"""Harness of the scale-out tests (tests/test_scale_out.py): packet workers as real
``wirestream process`` processes in one consumer group, a capture published at a steady
pace while they join, leave, crash, and the records they emit read back by key.

A run publishes the capture as a source of its own (a fresh source id), so runs on one
broker do not see each other's records; records are compared without ``source_id``
(connection ids and every other field do not depend on it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wirestream.producers.pcap_replay import replay_capture
from wirestream.producers.publisher import PacketBatchPublisher

from wirestream.codec import AvroCodec
from wirestream.reader import TopicReader, end_offsets
from wirestream.topics import CONNECTIONS, DNS, FLOWS, PACKETS_STAGE, STATS, TLS, TRANSACTIONS

TOPICS = (CONNECTIONS, FLOWS, TRANSACTIONS, DNS, TLS)


class Publishing(threading.Thread):
    """Publish a capture as source ``source_id`` at about ``packets_per_s``; ``progress``
    is the share of it published so far (0..1)."""

    def __init__(self, bootstrap: str, registry: str, capture: str, source_id: str, partitions: int,
                 total_packets: int, packets_per_s: float) -> None:
        super().__init__(name=f"publish-{source_id}", daemon=True)
        # small batches: the pacing (and progress) moves in steps of a batch
        self.publisher = PacketBatchPublisher(bootstrap, AvroCodec(registry), partitions, source_id,
                                              batch_packets=250)
        self.capture, self.total, self.rate = capture, total_packets, packets_per_s
        self.published = 0
        self.error: BaseException | None = None

    @property
    def progress(self) -> float:
        return self.published / self.total

    def run(self) -> None:
        # The replay loop is the compiled core's: pace it on the batches it hands over.
        send = self.publisher.send_batch
        started = time.monotonic()

        def paced(part: int, count: int, headers: bytes, payloads: bytes, *tunnels: bytes) -> None:
            send(part, count, headers, payloads, *tunnels)
            self.published += count
            ahead = self.published / self.rate - (time.monotonic() - started)
            if ahead > 0:  # ahead of schedule: wait
                time.sleep(ahead)

        self.publisher.send_batch = paced  # type: ignore[method-assign]
        try:
            replay_capture(self.capture, self.publisher)
            assert self.publisher.kafka.flush(60) == 0, "the broker did not take every batch"
            assert not self.publisher.kafka.delivery_errors, self.publisher.kafka.delivery_errors
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.publisher = None  # its client goes now, not after the broker


@dataclass
class Workers:
    """``wirestream process --role packets`` workers of one group, logs in ``logdir``."""

    bootstrap: str
    registry: str
    prefix: str
    logdir: Path
    extra: tuple[str, ...] = ()
    group: str = field(default_factory=lambda: f"scale-{uuid.uuid4().hex[:8]}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str) -> None:
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - the process owns it
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "wirestream", "process", "--role", "packets", "--no-windows",
             "--group", self.group, "--bootstrap", self.bootstrap, "--registry", self.registry,
             "--only-source-prefix", self.prefix, "--checkpoint-interval", "0.5",
             "--session-timeout", "6", "--loglevel", "info", *self.extra],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text(errors="replace")

    def wait_log(self, name: str, text: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.log(name).count(text) < count:
            assert self.procs[name].poll() is None, f"worker {name} exited:\n{self.log(name)[-3000:]}"
            assert time.monotonic() < deadline, f"worker {name}: no {text!r} x{count} in {timeout} s:\n" \
                                                f"{self.log(name)[-3000:]}"
            time.sleep(0.1)

    def signal(self, name: str, sig: int) -> None:
        os.killpg(self.procs[name].pid, sig)
        if sig == signal.SIGKILL:
            self.procs[name].wait(10)

    def stop(self, name: str, timeout: float = 60) -> int:
        """SIGTERM ``name`` and wait for it; its exit code."""
        self.signal(name, signal.SIGTERM)
        return self.procs[name].wait(timeout)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, default=repr)


@dataclass
class Output:
    """What a run emitted: topic -> every (key, record) read, repeats included, and the
    final reports by partition (the last one read)."""

    records: dict[str, list[tuple[bytes, dict[str, Any]]]]
    finals: dict[int, dict[str, Any]]

    def counts(self, topic: str) -> Counter[str]:
        """The topic's records (key and value) as canonical text, with how often each came."""
        return Counter(canonical({"key": k, **r}) for k, r in self.records[topic])

    def repeats(self) -> int:
        return sum(n - 1 for t in self.records for n in self.counts(t).values())


def read_output(bootstrap: str, registry: str, source_id: str, partitions: int,
                start: dict[tuple[str, int], int], timeout: float = 180) -> Output:
    """Read until each partition's final report is in and every record they count has
    arrived (by key), then a little longer for late repeats."""
    records: dict[str, list[tuple[bytes, dict[str, Any]]]] = {t: [] for t in TOPICS}
    finals: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    settle_until = None
    with TopicReader(bootstrap, AvroCodec(registry), [STATS, *TOPICS], start) as reader:
        while True:
            for m in reader.poll(0.2, 10_000):
                r = m.record
                if r is None or r.get("source_id") != source_id:
                    continue
                if m.topic == STATS:
                    if r["stage"] == PACKETS_STAGE and r["final"]:
                        finals[r["partition"]] = r
                    continue
                r = {k: v for k, v in r.items() if k != "source_id"}
                records[m.topic].append((m.key, r))
            expected: dict[str, int] = defaultdict(int)
            for f in finals.values():
                for t, n in f["emitted"].items():
                    expected[t] += n
            complete = len(finals) == partitions and all(len(records[t]) >= n for t, n in expected.items())
            if complete and settle_until is None:
                settle_until = time.monotonic() + 1.0
            if settle_until is not None and time.monotonic() >= settle_until:
                return Output(records, finals)
            if time.monotonic() > deadline:
                got = {t: len(v) for t, v in records.items()}
                raise AssertionError(f"source {source_id}: {len(finals)}/{partitions} final reports, "
                                     f"records {got}, expected {dict(expected)} after {timeout} s")


def output_start(bootstrap: str) -> dict[tuple[str, int], int]:
    return end_offsets(bootstrap, [STATS, *TOPICS])


def compare(got: Output, want: Output) -> list[str]:
    """How ``got`` differs from ``want`` (empty: the same records, field by field; a record
    repeated identically is the same record)."""
    problems = []
    for topic in TOPICS:
        g, w = got.counts(topic), want.counts(topic)
        missing, extra = w.keys() - g.keys(), g.keys() - w.keys()
        if missing:
            problems.append(f"{topic}: {len(missing)} of {len(w)} records missing or different, "
                            f"e.g. {sorted(missing)[0][:300]}")
        if extra:
            problems.append(f"{topic}: {len(extra)} records an uninterrupted worker does not emit, "
                            f"e.g. {sorted(extra)[0][:300]}")
    return problems
