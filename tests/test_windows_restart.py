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

from windows_worker import collect, finished, observation_batches, produce, start_worker, stop

from wirestream.codec import AvroCodec
from wirestream.reader import TopicReader
from wirestream.runtime import DATADIR_ENV
from wirestream.topics import ALERTS, SERVICE_METRICS, STATS


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
            rest = collect(reader, src_b, finished, got=first)  # the records of both workers
    finally:
        stop(worker)
    assert finished(rest), "the replacement worker did not finish"

    expected, got = windows(base, src_a), windows(rest, src_b)
    assert sum(1 for k in expected if k[0] == "metrics") >= 15  # 3 services x 5+ windows
    assert any(k[0] == "errors_5xx_spike" for k in expected)
    assert got == expected


def test_a_worker_started_by_hand_leaves_no_data_directory(broker, registry, tmp_path) -> None:
    """A windows worker started without a run's work directory (by hand, by a unit
    file) makes a temporary data directory for Faust; stopped, it must remove it (every
    such worker left one in /tmp)."""
    env = {k: v for k, v in os.environ.items() if k != DATADIR_ENV}
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "wirestream", "process", "--role", "windows", "--group", f"t-{uuid.uuid4().hex[:8]}",
         "--bootstrap", broker.bootstrap, "--registry", registry.url],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("wirestream-faust-*")):
            assert proc.poll() is None, f"the worker exited with {proc.returncode}"
            assert time.monotonic() < deadline, "the worker made no data directory"
            time.sleep(0.1)
        time.sleep(2)  # (its Faust worker running, its tables' folders made)
        assert list(tmp_path.glob("wirestream-faust-*/*"))
    finally:
        stop(proc)
    assert proc.returncode is not None
    assert not list(tmp_path.glob("wirestream-faust-*"))
