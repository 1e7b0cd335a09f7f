"""The metrics sink: service windows and alerts from the broker, scraped over HTTP; bound
to loopback by default, and elsewhere only with a bearer token or TLS (or when told to
serve unprotected)."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest
from helpers import free_port, publish, start_in_thread
from tls_certs import issue, make_ca
from wirestream.sinks.prometheus import (
    TOKEN_ENV,
    MetricsState,
    PrometheusSink,
    check_exposure,
    is_loopback,
)

from wirestream.cli import build_parser
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
    stop_sink = start_in_thread(sink.run)
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
        stop_sink()
    assert series[f'wirestream_service_errors_total{{{key},class="5xx"}}'] == 3
    assert series[f'wirestream_service_latency_seconds{{{key},quantile="0.99"}}'] == 1.5  # the last window
    assert series[f"wirestream_service_retransmission_ratio{{{key}}}"] == 0.02
    assert series['wirestream_alerts_total{kind="error_spike_5xx"}'] >= 1


# --- exposure: loopback by default, a token or TLS elsewhere -----------------------------------


def _get(url: str, token: str | None = None, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("WWW-Authenticate", "")


def test_binds_loopback_by_default(broker, registry) -> None:
    assert build_parser().parse_args(["sink", "prometheus"]).listen == "127.0.0.1:9108"
    sink = PrometheusSink(broker.bootstrap, registry.url, port=0, group=f"prom-{uuid.uuid4().hex[:6]}")
    try:
        assert sink._server.server_address[0] == "127.0.0.1"
        assert _get(f"http://127.0.0.1:{sink.port}/metrics")[0] == 200  # loopback: no token needed
    finally:
        sink.run(lambda: True)  # closes everything


def test_exposure_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("::")
    check_exposure("127.0.0.1", 9108, "", False, False)
    for ok in (dict(token="t"), dict(tls=True), dict(allow_unauthenticated=True)):
        check_exposure("0.0.0.0", 9108, **{"token": "", "tls": False, "allow_unauthenticated": False, **ok})
    with pytest.raises(ValueError, match="--allow-unauthenticated"):
        check_exposure("0.0.0.0", 9108, "", False, False)


def test_non_loopback_without_token_or_tls_is_refused(broker, registry) -> None:
    proc = subprocess.run([sys.executable, "-m", "wirestream", "sink", "prometheus", "--listen", "0.0.0.0:0",
                           "--bootstrap", broker.bootstrap, "--registry", registry.url],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != TOKEN_ENV})
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("wirestream sink: error: refusing to serve /metrics on 0.0.0.0:0, which is not a "
                           "loopback address, without protection"), line
    assert "--token-file" in line and "--cert" in line and "--allow-unauthenticated" in line


def test_token_required_elsewhere_from_a_file(broker, registry, tmp_path) -> None:
    """The command bound to every interface with --token-file: 401 without the token or
    with another, 200 with it; the token is in no output."""
    token = f"prom-secret-{uuid.uuid4().hex}"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "wirestream", "sink", "prometheus", "--listen", f"0.0.0.0:{port}",
                             "--token-file", str(token_file), "--group", f"prom-{uuid.uuid4().hex[:6]}",
                             "--bootstrap", broker.bootstrap, "--registry", registry.url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = proc.stderr.readline()
        assert banner.strip() == f"wirestream sink prometheus: serving http://0.0.0.0:{port}/metrics " \
                                 "(bearer token required)", banner
        url = f"http://127.0.0.1:{port}/metrics"
        assert _get(url) == (401, 'Bearer realm="wirestream"')
        assert _get(url, "wrong")[0] == 401
        assert _get(url.replace("/metrics", "/other"))[0] == 401  # the token first, whatever the path
        status, body = _get(url, token)
        assert status == 200 and "wirestream_sink_services_overflow_total 0" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert token not in banner + out + err


def test_tls_elsewhere(broker, registry, tmp_path) -> None:
    """HTTPS with the test CA's certificate (and a token, from the environment)."""
    ca = make_ca(tmp_path)
    cert, key = issue(ca, tmp_path, "metrics")
    token = f"prom-secret-{uuid.uuid4().hex}"
    sink = PrometheusSink(broker.bootstrap, registry.url, "0.0.0.0", 0, group=f"prom-{uuid.uuid4().hex[:6]}",
                          cert=str(cert), key=str(key), token=token)
    try:
        trusting = ssl.create_default_context(cafile=str(ca.cert))
        assert _get(f"https://localhost:{sink.port}/metrics", token, trusting)[0] == 200
        assert _get(f"https://localhost:{sink.port}/metrics", None, trusting)[0] == 401
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _get(f"https://localhost:{sink.port}/metrics", token, ssl.create_default_context())
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP to the TLS port
            _get(f"http://127.0.0.1:{sink.port}/metrics", token)
        # still serving after those
        assert _get(f"https://127.0.0.1:{sink.port}/metrics", token, trusting)[0] == 200
    finally:
        sink.run(lambda: True)
    # TLS alone (no token) is enough to bind elsewhere; so is the explicit flag
    for kwargs in (dict(cert=str(cert), key=str(key)), dict(allow_unauthenticated=True)):
        sink = PrometheusSink(broker.bootstrap, registry.url, "0.0.0.0", 0, group=f"prom-{uuid.uuid4().hex[:6]}",
                              **kwargs)
        sink.run(lambda: True)
