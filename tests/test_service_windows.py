"""ServiceWindows on its own: a crash at any point of any batch, followed by a replay of
every batch from the start (Kafka redelivers what was not committed), gives the windows
of an uninterrupted run; damaged batches are counted, not fatal."""

from __future__ import annotations

import json
from typing import Any

import pytest
from windows_worker import observation_batches
from wirestream.processors.service_windows import ServiceWindows, WindowOptions


class Crash(Exception):
    pass


class CrashingStore(dict):
    """A dict that fails on its ``n``-th write or delete: a worker killed mid-batch."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def _tick(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise Crash

    def __setitem__(self, key: str, value: bytes) -> None:
        self._tick()
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._tick()
        super().__delitem__(key)


def run(windows: ServiceWindows, batches: list[tuple[int, dict]], out: list) -> list[dict | None]:
    offsets: dict[int, int] = {}
    done = []
    for q, b in batches:
        offsets[q] = offsets.get(q, -1) + 1
        done.append(windows.handle(b, q, offsets[q]))
    return done


def canonical(records: list[tuple[str, dict[str, Any]]]) -> set[str]:
    return {json.dumps([t, r], sort_keys=True) for t, r in records}


OPTIONS = WindowOptions(length_us=10_000_000, lateness_us=2_000_000)


@pytest.fixture(scope="module")
def batches() -> list[tuple[int, dict]]:
    return observation_batches("crash-0")


@pytest.fixture(scope="module")
def reference(batches: list[tuple[int, dict]]) -> set[str]:
    out: list = []
    run(ServiceWindows({}, lambda t, k, r: out.append((t, r)), OPTIONS), batches, out)
    assert len(out) >= 15
    return canonical(out)


def crash_then_replay(batches: list[tuple[int, dict]], crash_after: int) -> tuple[list, CrashingStore]:
    """A worker killed at its store's ``crash_after``-th write, then its replacement
    reading every batch again from the store it left: what both emitted, and the store."""
    out: list = []
    store = CrashingStore(crash_after)
    with pytest.raises(Crash):
        run(ServiceWindows(store, lambda t, k, r: out.append((t, r)), OPTIONS), batches, out)
    store.left = 10**9  # the replacement worker does not crash
    run(ServiceWindows(store, lambda t, k, r: out.append((t, r)), OPTIONS), batches, out)
    return out, store


@pytest.mark.parametrize("crash_after", [0, 1, 2, 3, 7, 50, 101, 250, 333, 400, 555])
def test_a_crash_anywhere_then_a_full_replay_gives_the_same_windows(
        batches: list[tuple[int, dict]], reference: set[str], crash_after: int) -> None:
    out, store = crash_then_replay(batches, crash_after)
    assert canonical(out) == reference
    assert not store, "every window and source entry is gone once the source is done"


def test_a_damaged_batch_is_counted_and_the_source_still_finishes(batches: list[tuple[int, dict]]) -> None:
    broken = [(q, dict(b)) for q, b in batches]
    damaged = next(i for i, (_, b) in enumerate(broken) if b["count"] > 0)
    broken[damaged][1]["rows"] = broken[damaged][1]["rows"][:-5]  # cut inside a row
    out: list = []
    done = [d for d in run(ServiceWindows({}, lambda t, k, r: out.append((t, r)), OPTIONS), broken, out) if d]
    assert len(done) == 4  # one final report per observation partition
    assert sum(d["malformed_observation_batches"] for d in done) == 1
    assert out, "the other batches' windows still come out"


@pytest.mark.parametrize("resent_from", [0.2, 0.5, 0.8])
def test_batches_a_restored_packet_worker_sends_again_count_once(
        batches: list[tuple[int, dict]], reference: set[str], resent_from: float) -> None:
    """A packet worker that took over from a checkpoint sends again the observation batches
    sent after it (the same sequence numbers, identical): each is taken in once."""
    cut = int(len(batches) * resent_from)
    again = [(q, b) for q, b in batches[cut // 2:cut] if b["count"]]
    assert again
    out: list = []
    done = [d for d in run(ServiceWindows({}, lambda t, k, r: out.append((t, r)), OPTIONS),
                           batches[:cut] + again + batches[cut:], out) if d]
    assert canonical(out) == reference
    assert sum(d["duplicate_observation_batches"] for d in done) == len(again)


def test_the_percentiles_do_not_depend_on_how_the_partitions_interleave() -> None:
    """Two packet partitions' observations of one busy service (6,000 requests each in one
    window: past a digest's 1,000 centroids, where a t-digest depends on the order of its
    values, and past the 2,000 a partition's digest takes in at once) give the same
    windows whether the partitions' batches arrive one partition after the other or
    alternating, as two workers happen to run (each partition's own batches in their
    order: Kafka keeps that). Two runs of one capture gave percentiles
    differing in the decimals before the digests were kept per partition."""
    import numpy as np
    from wirestream.processors.observations import Observer

    from wirestream.topics import TRANSACTIONS

    rng = np.random.default_rng(5)
    sent: list[list[tuple[int, dict]]] = [[], []]
    observers = [Observer(lambda q, b, p=p: sent[p].append((q, b)), "order-0", p, 2, 1) for p in range(2)]
    t0 = 1_900_000_000_000_000
    for step in range(20):
        for p, obs in enumerate(observers):
            for i in range(300):
                obs.observe(TRANSACTIONS, {
                    "server_ip": "198.51.100.1", "server_port": 80, "client_ip": f"10.9.{p}.{i % 200}",
                    "request_ts_us": t0 + step * 400_000 + i * 1_000, "latency_us": int(rng.lognormal(8, 1.5)),
                    "status": 200, "error": None, "method": "GET", "host": "svc", "path": f"/{step}/{p}/{i}"})
            obs.advance(t0 + (step + 1) * 400_000)
            obs.flush()
    for obs in observers:
        obs.flush(end_of_input=True)
    one_after_other = sent[0] + sent[1]
    alternating = [b for pair in zip(sent[0], sent[1], strict=False) for b in pair]
    alternating += sent[0][len(sent[1]):] + sent[1][len(sent[0]):]
    assert sorted(map(id, alternating)) == sorted(map(id, one_after_other))
    runs = []
    for order in (one_after_other, alternating, sent[1] + sent[0]):
        out: list = []
        run(ServiceWindows({}, lambda t, k, r, out=out: out.append((t, r)), OPTIONS), order, out)
        metrics = [r for t, r in out if t == "wire.service-metrics"]
        assert len(metrics) == 1 and metrics[0]["requests"] == 12_000
        runs.append(canonical(out))
    assert runs[0] == runs[1] == runs[2]
    # and a worker killed anywhere, its replacement reading every batch again from the
    # store it left: the digests it goes on from are those read back from their bytes
    writes = CrashingStore(10**9)
    run(ServiceWindows(writes, lambda t, k, r: None, OPTIONS), alternating, [])
    total = 10**9 - writes.left  # the store's writes and deletes of a whole run
    for crash_after in range(3, total, total // 6):
        out, _ = crash_then_replay(alternating, crash_after)
        assert canonical(out) == runs[0], crash_after


def test_a_window_stored_before_the_digests_were_per_partition_is_read() -> None:
    """A window a worker of the previous version stored (one digest of each measure: the
    JSON part, then the RTT digest's bytes, then the latency's) is read and emitted with
    its percentiles (an upgrade in the middle of a window loses nothing)."""
    from fastdigest import TDigest
    from wirestream.processors.service_windows import _STATE, Window

    rtt, latency = TDigest.from_values([100.0, 200.0, 300.0]), TDigest.from_values([float(v) for v in range(1, 101)])
    head = json.dumps({"start": 0, "length": 10_000_000, "offset": 7, "counts": {"requests": 100},
                       "clients": {}, "backends": {}}).encode()
    old = _STATE.pack(len(head), len(rtt.to_bytes())) + head + rtt.to_bytes() + latency.to_bytes()
    w = Window.loads(old)
    assert w.offset == 7 and w.counts["requests"] == 100
    record = w.record("s", "svc")
    assert record["handshake_rtt_p50_us"] == rtt.quantile(0.5) == 200.0
    assert record["latency_p99_us"] == latency.quantile(0.99)
    w.add((1, 0, 200, "svc", "10.0.0.1", "", 1, 5, 1000, 0, 0, 0, "", 0), OPTIONS.thresholds, partition=2)
    again = Window.loads(w.dumps())
    assert sorted(again.latency) == [-1, 2] and again.record("s", "svc")["latency_digest"] == w.record(
        "s", "svc")["latency_digest"]


def test_merged_digests_are_the_same_every_time_and_keep_the_quantiles() -> None:
    """``merge_digests`` of the same two digests is the same digest every time, whatever
    was computed in between (fastdigest's own ``merge`` gave one of two results), and its
    quantiles, min, max, count and sum are those of the values."""
    import random

    from fastdigest import TDigest
    from wirestream.processors.service_windows import merge_digests

    rnd = random.Random(3)
    a_values = [float(int(rnd.lognormvariate(8, 1.5))) for _ in range(3000)]
    b_values = [float(int(rnd.lognormvariate(7, 1))) for _ in range(3000)]
    a, b = (TDigest.from_values(v, max_centroids=1000) for v in (a_values, b_values))
    first = merge_digests(a, b).to_bytes()
    for i in range(200):
        other = TDigest.from_values(b_values[:rnd.randrange(10, 3000)], max_centroids=1000)
        other.merge(TDigest.from_values(a_values[:rnd.randrange(10, 3000)], max_centroids=1000)).to_bytes()
        assert merge_digests(TDigest.from_bytes(a.to_bytes()), TDigest.from_bytes(b.to_bytes())).to_bytes() == first, i
    merged = TDigest.from_bytes(first)
    values = sorted(a_values + b_values)
    d = merged.to_dict()
    assert (d["min"], d["max"], d["n_values"], d["sum"]) == (values[0], values[-1], 6000, sum(a_values) + sum(b_values))
    for q in (0.5, 0.9, 0.99):
        exact = values[int(q * len(values))]
        assert abs(merged.quantile(q) - exact) <= 0.02 * exact, q
    empty = TDigest(max_centroids=1000)
    assert merge_digests(empty, a).to_bytes() == merge_digests(a, empty).to_bytes() == a.to_bytes()
