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


@pytest.mark.parametrize("crash_after", [0, 1, 2, 3, 7, 50, 101, 250, 333, 400, 555])
def test_a_crash_anywhere_then_a_full_replay_gives_the_same_windows(
        batches: list[tuple[int, dict]], reference: set[str], crash_after: int) -> None:
    out: list = []
    store = CrashingStore(crash_after)
    with pytest.raises(Crash):
        run(ServiceWindows(store, lambda t, k, r: out.append((t, r)), OPTIONS), batches, out)
    store.left = 10**9  # the replacement worker does not crash
    run(ServiceWindows(store, lambda t, k, r: out.append((t, r)), OPTIONS), batches, out)
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
