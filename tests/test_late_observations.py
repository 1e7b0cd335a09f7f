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

The second test is the same case from packets, through ``wirestream analyze``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

from synthetic_http import http_connection, request, response, write_frames
from windows_worker import collect, finished, produce, start_worker, stop
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


def observed_request(client: str, request_ts: int, latency: int, path: str) -> dict[str, Any]:
    """A GET to ``SERVICE`` answered 200 after ``latency`` µs: the fields of a
    wire.transactions record that the ``Observer`` reads."""
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
            obs.observe(TRANSACTIONS, observed_request(f"10.9.0.{p + 1}", now + 1000 * p, 2_000,
                                                       f"/{step}"))
            if p == 0 and not polls_sent and now >= answered_at:
                for i in range(LONG_POLLS):
                    obs.observe(TRANSACTIONS, observed_request(f"10.9.1.{i + 1}", POLL_START_US + i,
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


# --- the whole pipeline ----------------------------------------------------------------------

def long_poll_capture(path: str) -> str:
    """A service answering a steady client every 10 ms for 60 s (12,000 packets: three
    packet batches of the producer's 4,096), and one long poll to it: asked 1 s in,
    answered 54 s later."""
    start = T0 + 3_600_000_000  # also a window boundary
    steady = http_connection("10.1.1.2", 41000, "192.0.2.80", 80, start,
                             [(request(target=f"/item/{i}"), response(body=b"ok"), 2_000)
                              for i in range(6000)], gap_us=8_000)
    poll = http_connection("10.1.1.1", 42000, "192.0.2.80", 80, start + 999_000,
                           [(request(target="/events?wait=60"), response(body=b"[]"), 54_000_000)])
    return write_frames(path, steady + poll)


def analyze_stats(capture: str, *flags: str) -> dict[str, Any]:
    """``analyze --json`` with one packet partition: every packet batch, and so every
    observation batch, reaches the windows in capture order."""
    proc = subprocess.run([sys.executable, "-m", "wirestream", "analyze", capture, "--json", "--no-progress",
                           "--partitions", "1", "--workers", "1", *flags],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    windows = [s for s in summary["stats"] if s["stage"] == WINDOWS_STAGE and s["final"]]
    assert windows, "no final report of the windows stage"
    return {"late": sum(s["dropped"].get("late_observations", 0) for s in windows),
            "requests": sum(s["requests"] for s in summary["services"]),
            "transactions": summary["records"][TRANSACTIONS]}


def test_a_long_poll_answered_after_its_window_closed_is_late_in_analyze(tmp_path) -> None:
    """The same through ``wirestream analyze``, from packets: the long poll is one of the
    6,001 transactions, but by the time its answer comes, its window (10 s, 15 s of
    lateness by default) has long closed: it is counted late, not added. With 60 s of
    lateness it is in time."""
    capture = long_poll_capture(str(tmp_path / "long_poll.pcap"))
    late = analyze_stats(capture)
    assert late == {"late": 1, "requests": 6000, "transactions": 6001}
    in_time = analyze_stats(capture, "--lateness", "60")
    assert in_time == {"late": 0, "requests": 6001, "transactions": 6001}
