"""Observations for a window that has already closed are counted as ``late_observations``.

A real run of the windows stage: a ``wirestream process`` worker (Faust, the windows
table) on the real broker, fed ``wire.observations`` batches that the real ``Observer``
builds from transaction records, as the packet workers do.

What makes an observation late in practice: a transaction's event time is its request's
start, but it is only observed when its response is complete. A long poll that waits 39 s
for its answer is observed 39 s after its window began; with 10 s windows and 2 s of
lateness, that window closed long before. Packet partition 0 of source ``late`` sees
``LONG_POLLS`` such transactions; source ``control`` sees the same ones answered within
the lateness. Every batch reaches the windows in the order it was produced (one producer,
one observation partition per service), so which window is closed when is known exactly:

* ``late``: ``late_observations`` is ``LONG_POLLS``, and the first window holds only the
  other requests (late ones are counted, not added);
* ``control``: ``late_observations`` is 0, and the first window holds them all.
"""

from __future__ import annotations

import uuid
from typing import Any

from test_windows_restart import collect, finished, produce, start_worker, stop
from wirestream.processors.observations import Observer

from wirestream.codec import AvroCodec
from wirestream.reader import TopicReader
from wirestream.topics import ALERTS, SERVICE_METRICS, STATS, TRANSACTIONS, WINDOWS_STAGE

PACKET_PARTITIONS = 4
OBSERVATION_PARTITIONS = 4  # the session broker's (conftest.py)
T0 = 1_900_000_000_000_000  # a window boundary (10 s windows)
STEP_US = 500_000
STEPS = 100  # 50 s of capture time
SERVICE = ("198.51.100.7", 80)
LONG_POLLS = 7
POLL_START_US = T0 + 1_000_000  # in the first window, [T0, T0 + 10 s)


def transaction(client: str, request_ts: int, latency: int, path: str) -> dict[str, Any]:
    ip, port = SERVICE
    return {"server_ip": ip, "server_port": port, "client_ip": client, "request_ts_us": request_ts,
            "latency_us": latency, "status": 200, "error": None, "method": "GET", "host": ip,
            "path": path}


def observation_batches(source_id: str, answered_after_us: int) -> list[tuple[int, dict[str, Any]]]:
    """(observation partition, batch) in sending order: one request per half second on each
    packet partition; on partition 0, ``LONG_POLLS`` requests started at ``POLL_START_US``
    are observed when answered, ``answered_after_us`` later."""
    out: list[tuple[int, dict[str, Any]]] = []
    observers = [Observer(lambda q, b: out.append((q, b)), source_id, p, PACKET_PARTITIONS,
                          OBSERVATION_PARTITIONS) for p in range(PACKET_PARTITIONS)]
    answered_at = POLL_START_US + answered_after_us
    polls_sent = False
    for step in range(STEPS):
        now = T0 + step * STEP_US
        for p, obs in enumerate(observers):
            obs.observe(TRANSACTIONS, transaction(f"10.9.0.{p + 1}", now + 1000 * p, 2_000, f"/{step}"))
            if p == 0 and not polls_sent and now >= answered_at:
                for i in range(LONG_POLLS):
                    obs.observe(TRANSACTIONS, transaction(f"10.9.1.{i + 1}", POLL_START_US + i,
                                                          now - POLL_START_US - i, "/poll"))
                polls_sent = True
            obs.advance(now + STEP_US)
            obs.flush()
    assert polls_sent
    for obs in observers:
        obs.flush(end_of_input=True)
    return out


def first_window_requests(got: dict[str, list]) -> int:
    (w,) = [r for r in got[SERVICE_METRICS] if r["window_start_ts_us"] == T0]
    return int(w["requests"])


def late_observations(got: dict[str, list]) -> int:
    finals = [s for s in got[STATS] if s["stage"] == WINDOWS_STAGE and s["final"]]
    assert len(finals) == OBSERVATION_PARTITIONS
    return sum(s["dropped"].get("late_observations", 0) for s in finals)


def test_observations_for_a_closed_window_are_counted_not_added(broker, registry) -> None:
    codec = AvroCodec(registry.url)
    run = uuid.uuid4().hex[:8]
    late, control = f"{run}late-0", f"{run}control-0"
    # 39 s: the first window closed at 10 s + 2 s of lateness. 1.5 s: still open.
    answered_after = {late: 39_000_000, control: 1_500_000}
    worker = start_worker(broker, registry, f"wirestream-test-{run}", run)
    got = {}
    try:
        with TopicReader(broker.bootstrap, codec, [SERVICE_METRICS, ALERTS, STATS], "end") as reader:
            for source, after in answered_after.items():  # one at a time: collect() keeps one source
                produce(broker, codec, observation_batches(source, after))
                got[source] = collect(reader, source, finished)
                assert finished(got[source]), f"the windows of {source} did not finish"
    finally:
        stop(worker)

    others = 20 * PACKET_PARTITIONS  # one request per partition per half second, 10 s
    assert late_observations(got[late]) == LONG_POLLS
    assert first_window_requests(got[late]) == others
    assert late_observations(got[control]) == 0
    assert first_window_requests(got[control]) == others + LONG_POLLS
    # and every window of the 50 s came out, once
    for source in (late, control):
        assert sorted(r["window_start_ts_us"] for r in got[source][SERVICE_METRICS]) == \
            [T0 + i * 10_000_000 for i in range(STEPS * STEP_US // 10_000_000)]
