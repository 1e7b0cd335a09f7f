"""The metrics sink: service windows and alerts from the broker, scraped over HTTP."""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid

from helpers import publish
from wirestream.sinks.prometheus import MetricsState, PrometheusSink

from wirestream.topics import ALERTS, SERVICE_METRICS


def _window(service: str, requests: int = 10, e5: int = 1, latency_p99_us: float | None = 250_000.0) -> dict:
    return {"service": service, "source_id": "prom", "window_start_ts_us": 1, "window_end_ts_us": 2,
            "connections": 3, "requests": requests, "errors_4xx": 2, "errors_5xx": e5, "status_429": 0,
            "retransmission_rate": 0.02, "health": "degraded", "handshake_rtt_p50_us": 100.0,
            "handshake_rtt_p90_us": 150.0, "handshake_rtt_p99_us": 300.0, "latency_p50_us": 50_000.0,
            "latency_p90_us": 90_000.0, "latency_p99_us": latency_p99_us, "handshake_rtt_digest": None,
            "latency_digest": None}


def _parse(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_cardinality_is_capped() -> None:
    state = MetricsState(max_services=3)
    for i in range(10):
        state.window(_window(f"10.0.0.{i}:80"))
    series = _parse(state.render())
    services = {k.split('service="', 1)[1].split('"', 1)[0] for k in series if 'service="' in k}
    assert services == {"10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80", "other"}
    assert series['wirestream_service_requests_total{service="other"}'] == 70
    assert series["wirestream_sink_services_overflow_total"] == 7


def test_scrape_after_windows_and_alerts_from_the_broker(broker, registry) -> None:
    service = f"shop/{uuid.uuid4().hex[:6]}"
    publish(broker, registry, SERVICE_METRICS, [_window(service, requests=10, e5=1),
                                                _window(service, requests=5, e5=2, latency_p99_us=1_500_000.0)],
            key="service")
    publish(broker, registry, ALERTS, [{"alert_id": f"a-{service}", "source_id": "prom", "ts_us": 1,
                                        "kind": "error_spike_5xx", "severity": "critical", "summary": "5xx",
                                        "connection_id": None, "service": service, "evidence": {}}],
            key="service")
    sink = PrometheusSink(broker.bootstrap, registry.url, "127.0.0.1", 0, group=f"prom-{service}",
                          from_beginning=True)
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop.is_set,), daemon=True)
    thread.start()
    key = f'service="{service}"'
    try:
        deadline = time.monotonic() + 60
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/metrics", timeout=5) as resp:
                assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                series = _parse(resp.read().decode())
            if series.get(f"wirestream_service_requests_total{{{key}}}") == 15:
                break
            assert time.monotonic() < deadline, series
            time.sleep(0.3)
    finally:
        stop.set()
        thread.join(30)
    assert series[f'wirestream_service_errors_total{{{key},class="5xx"}}'] == 3
    assert series[f'wirestream_service_latency_seconds{{{key},quantile="0.99"}}'] == 1.5  # the last window
    assert series[f"wirestream_service_retransmission_ratio{{{key}}}"] == 0.02
    assert series['wirestream_alerts_total{kind="error_spike_5xx"}'] >= 1
