"""``wirestream.client.subscribe`` after a crash: at-least-once, consumer-group semantics.

The claim (wirestream/client.py): a record's offset is committed only after the loop has
asked for the next record (or on ``commit()``/close), so a consumer that crashes while
handling a record gets it again; subscriptions with the same group share the records.

A real subscriber runs in a subprocess (the module docstring's loop, ``for r in records``),
against the session's embedded broker, and is SIGKILLed while it handles its N-th record:
no ``finally``, no close, no commit at exit. It stays killed-to-be for longer than
librdkafka's auto-commit interval (5 s), so a wrongly stored offset would be committed
before the kill. A new subscriber in the same group must then get every record the first
did not finish (the one it was handling included), and none twice; with an explicit
``commit()`` before the crash, the committed records must not come back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from helpers import publish, transaction

from wirestream.client import subscribe, where
from wirestream.topics import TRANSACTIONS

RECORDS = 40
#: librdkafka's auto.commit.interval.ms is 5 s: the kill comes after one has passed
HANDLING_S = 6.0

# The subscriber: the loop of the module docstring. Prints each record as it takes it;
# after COMMIT_AT records calls commit() (0: never); at the TAKE-th record it says
# "handling" and works on it until it is killed.
SUBSCRIBER = textwrap.dedent("""
    import sys, time
    from wirestream.client import subscribe, where
    bootstrap, registry, group, source, take, commit_at = sys.argv[1:7]
    take, commit_at = int(take), int(commit_at)
    with subscribe(["wire.transactions"], group, bootstrap, registry, from_beginning=True,
                   where=where(f"source_id=={source}")) as records:
        n = 0
        for r in records:
            n += 1
            print("took", r.value["connection_id"], flush=True)
            if n == commit_at:
                records.commit()
                print("committed", flush=True)
            if n == take:
                print("handling", flush=True)
                time.sleep(3600)
""")


def _publish(broker, registry, source: str) -> list[str]:
    """RECORDS transactions of ``source``, spread over the topic's partitions by key."""
    records = [transaction(source, n) for n in range(RECORDS)]
    publish(broker, registry, TRANSACTIONS, records)
    return [r["connection_id"] for r in records]


def _crash_after(broker, registry, group: str, source: str, take: int, commit_at: int = 0) -> tuple[list[str], bool]:
    """Run the subscriber until it handles its ``take``-th record, let it handle it for
    HANDLING_S, SIGKILL it. Returns the records it took (the last one unfinished) and
    whether it committed."""
    proc = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, broker.bootstrap, registry.url, group, source,
                             str(take), str(commit_at)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    took: list[str] = []
    committed = False
    try:
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            words = line.split()
            if words[:1] == ["took"]:
                took.append(words[1])
            elif words == ["committed"]:
                committed = True
            elif words == ["handling"]:
                break
            assert time.monotonic() < deadline, "the subscriber took too long"
        else:
            raise AssertionError(f"subscriber ended before handling record {take}: {proc.stderr.read()}")
        time.sleep(HANDLING_S)
        assert proc.poll() is None, proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # a crash: no finally, no close, no commit
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert len(took) == take
    return took, committed


def _resubscribe(broker, registry, group: str, source: str, want: set[str], timeout: float = 45.0) -> list[str]:
    """What a new subscriber in ``group`` gets. The killed member is still in the group
    until its session times out (10 s), and the join waits for that; a record published
    now (the marker, not returned) says when the new member has joined and is fetching.
    From then on it reads until it has ``want``, or for 3 s, and 2 s more (anything
    redelivered twice would come then)."""
    marker = transaction(source, 10_000)
    publish(broker, registry, TRANSACTIONS, [marker])
    got: list[str] = []
    marked = None
    with subscribe([TRANSACTIONS], group, broker.bootstrap, registry.url, from_beginning=True,
                   where=where(f"source_id=={source}")) as records:
        deadline = time.monotonic() + timeout
        while marked is None or not (want <= set(got) or time.monotonic() > marked + 3):
            assert time.monotonic() < deadline, f"the new subscriber got nothing in {timeout} s"
            for r in records.poll(0.5):
                if r.value["connection_id"] == marker["connection_id"]:
                    marked = time.monotonic()
                else:
                    got.append(r.value["connection_id"])
        quiet = time.monotonic() + 2
        while time.monotonic() < quiet:
            got += [r.value["connection_id"] for r in records.poll(0.5)]
    return got


@dataclass
class Crash:
    ids: list[str]  # the records published
    took: list[str]  # what the killed subscriber took, the last one unfinished
    committed: bool  # whether it called commit() before it was killed
    again: list[str]  # what the next subscriber in its group got


def _scenario(broker, registry, take: int, commit_at: int) -> Crash:
    source = f"crash-{uuid.uuid4().hex[:8]}"
    group = f"g-{source}"
    ids = _publish(broker, registry, source)
    took, committed = _crash_after(broker, registry, group, source, take, commit_at)
    again = _resubscribe(broker, registry, group, source, want=set(ids) - set(took[:-1]))
    return Crash(ids, took, committed, again)


@pytest.fixture(scope="module")
def crashes(broker, registry) -> dict[str, Crash]:
    """Both scenarios at once (each waits seconds for the group: sessions, auto-commit)."""
    scenarios = {"crash": (15, 0), "commit-then-crash": (20, 10)}
    with ThreadPoolExecutor(len(scenarios)) as pool:
        futures = {name: pool.submit(_scenario, broker, registry, *args) for name, args in scenarios.items()}
        return {name: f.result() for name, f in futures.items()}


def test_a_crashed_subscribers_unfinished_records_come_again_in_its_group(crashes) -> None:
    c = crashes["crash"]
    unfinished = c.took[-1]
    not_finished = set(c.ids) - set(c.took[:-1])
    assert unfinished in c.again, "the record being handled at the crash was not redelivered"
    assert not_finished <= set(c.again), f"lost: {sorted(not_finished - set(c.again))}"
    assert len(c.again) == len(set(c.again)), "a record came twice to one subscriber"
    assert set(c.again) <= set(c.ids)


def test_commit_mid_loop_commits_only_what_was_handed_out(crashes) -> None:
    """commit() says "commit now what has been handed out": after commit() at record 10
    and a crash at record 20, the group gets again records 11..40 (at least 20..40), and
    not 1..10."""
    c = crashes["commit-then-crash"]
    assert c.committed
    not_finished = set(c.ids) - set(c.took[:-1])
    assert not_finished <= set(c.again), f"lost: {len(not_finished - set(c.again))} of {len(not_finished)}"
    assert not set(c.took[:10]) & set(c.again), "records committed before the crash came again"
    assert len(c.again) == len(set(c.again))


class _HandlingFailed(Exception):
    pass


def test_a_record_whose_handling_raises_comes_again(broker, registry) -> None:
    """The loop's body raises on its 5th record inside ``with subscribe(...)``: leaving the
    block commits the 4 records before it, not the one that failed."""
    source = f"raise-{uuid.uuid4().hex[:8]}"
    group = f"g-{source}"
    ids = _publish(broker, registry, source)
    took: list[str] = []
    with pytest.raises(_HandlingFailed):
        with subscribe([TRANSACTIONS], group, broker.bootstrap, registry.url, from_beginning=True,
                       where=where(f"source_id=={source}")) as records:
            for r in records:
                took.append(r.value["connection_id"])
                if len(took) == 5:
                    raise _HandlingFailed
    again = _resubscribe(broker, registry, group, source, want=set(ids) - set(took[:4]))
    assert took[4] in again, "the record whose handling failed was committed"
    assert not set(took[:4]) & set(again), "records handled before the failure came again"
    assert set(ids) - set(took[:4]) <= set(again)
