"""Per-service window percentiles against numpy's exact ones, through the whole pipeline.

200,000 HTTP transactions (100,000 with lognormal latencies, 100,000 bimodal) are
written to a capture with exactly known request times and latencies, run through
``wirestream analyze`` on the real broker (packets -> processors -> observations ->
windows), and every window's P50/P90/P99 must be within 1 % of numpy's percentile of the
latencies whose request falls in that window; ``wirestream percentiles`` must be within 1 %
of the exact percentiles of every request for the whole run and for a sub-range.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic_http import Sent, Service, write_capture

N = 100_000
WINDOW_US = 10_000_000


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wirestream", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def within(got: float, exact: float, tolerance: float = 0.01) -> bool:
    return abs(got - exact) <= tolerance * abs(exact)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, broker, registry) -> dict:
    rng = np.random.default_rng(2026)
    lognormal = np.maximum(1, rng.lognormal(mean=9.0, sigma=0.8, size=N)).astype(np.int64)
    # Two modes: 70 % fast (cache hits) around 2 ms, 30 % slow around 40 ms.
    fast = rng.normal(2_000, 200, int(N * 0.7))
    slow = rng.normal(40_000, 4_000, N - len(fast))
    bimodal = np.maximum(1, rng.permutation(np.concatenate([fast, slow]))).astype(np.int64)
    tmp = tmp_path_factory.mktemp("windows")
    cap = str(tmp / "latency.pcap")
    sent = write_capture(cap, [Service("192.0.2.10", 8080, lognormal),
                               Service("192.0.2.20", 8080, bimodal)])
    out = tmp / "out"
    proc = run_cli("analyze", cap, "--out", str(out), "--json", "--no-progress",
                   "--bootstrap", broker.bootstrap, "--registry", registry.url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    windows = [json.loads(line) for line in (out / "wire.service-metrics.jsonl").open()]
    return {"sent": sent, "windows": windows, "broker": broker, "registry": registry}


def _in_window(sent: Sent, start: int, end: int) -> np.ndarray:
    return sent.latency_us[(sent.request_ts_us >= start) & (sent.request_ts_us < end)]


@pytest.mark.parametrize("service", ["192.0.2.10:8080", "192.0.2.20:8080"])
def test_every_window_is_within_one_percent_of_numpy(run: dict, service: str) -> None:
    sent: Sent = run["sent"][service]
    windows = [w for w in run["windows"] if w["service"] == service]
    assert len(windows) >= 4
    assert sum(w["requests"] for w in windows) == N
    assert sum(w["connections"] for w in windows) == 50
    for w in windows:
        exact = _in_window(sent, w["window_start_ts_us"], w["window_end_ts_us"])
        assert w["window_end_ts_us"] - w["window_start_ts_us"] == WINDOW_US
        assert w["requests"] == len(exact)
        for q in (50, 90, 99):
            want = np.percentile(exact, q)
            got = w[f"latency_p{q}_us"]
            assert within(got, want), (service, w["window_start_ts_us"], q, got, want)


def _percentiles(run: dict, service: str, *extra: str) -> dict:
    proc = run_cli("percentiles", "--service", service, "--json", "--bootstrap", run["broker"].bootstrap,
                   "--registry", run["registry"].url, *extra, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("service", ["192.0.2.10:8080", "192.0.2.20:8080"])
def test_percentiles_merges_windows_within_one_percent(run: dict, service: str) -> None:
    sent: Sent = run["sent"][service]
    merged = _percentiles(run, service)
    assert merged["requests"] == N
    for q in (50, 90, 99):
        want = np.percentile(sent.latency_us, q)
        assert within(merged["latency_us"][f"p{q}"], want), (q, merged["latency_us"], want)
    assert merged["handshake_rtt_us"]["p50"] == pytest.approx(400)  # SYN -> ACK, as tshark's initial_rtt

    # a sub-range: the second and third windows only
    starts = sorted(w["window_start_ts_us"] for w in run["windows"] if w["service"] == service)
    lo, hi = starts[1], starts[3]
    part = _percentiles(run, service, "--from", str(lo / 1e6), "--to", str(hi / 1e6))
    exact = _in_window(sent, lo, hi)
    assert part["windows"] == 2 and part["requests"] == len(exact)
    for q in (50, 90, 99):
        assert within(part["latency_us"][f"p{q}"], np.percentile(exact, q))


def test_percentiles_of_an_unknown_service_is_a_clear_error(run: dict) -> None:
    proc = run_cli("percentiles", "--service", "203.0.113.99:1", "--bootstrap", run["broker"].bootstrap,
                   "--registry", run["registry"].url, "--timeout", "1", timeout=60)
    assert proc.returncode == 1
    assert "no windows of 203.0.113.99:1" in proc.stderr


def test_the_capture_is_what_the_test_says(tmp_path: Path) -> None:
    """The generator: latencies and request times come out of the pipeline unchanged."""
    from local_pipeline import local_l7

    cap = str(tmp_path / "small.pcap")
    lat = np.array([1_000, 2_500, 70_000, 3], dtype=np.int64)
    sent = write_capture(cap, [Service("192.0.2.30", 80, lat, connections=2)])["192.0.2.30:80"]
    tx = local_l7(cap)["wire.transactions"]
    got = sorted((t["request_ts_us"], t["latency_us"]) for t in tx)
    assert got == sorted(zip(sent.request_ts_us.tolist(), sent.latency_us.tolist(), strict=True))
