"""The Grafana dashboard (deploy/grafana, deploy/kustomize/base/grafana): every panel's
query returns series from a real Prometheus that scrapes a real Prometheus sink.

The windows and alerts are analyze's, of a bundled capture (plus one alert of a kind of
our own choosing: a capture this small raises none), published to the broker in Avro;
``wirestream``'s Prometheus sink reads them and serves its series; Debian's Prometheus
scrapes it every second. Then each panel's PromQL, with the dashboard's variables filled
in as Grafana fills them (``$service`` as All or as one service, ``$__rate_interval``,
``$__range``), is asked of Prometheus's HTTP API: every one must return series. The
kustomize base's ConfigMap carries the same file, for Grafana's dashboard sidecar.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from helpers import (
    DATA,
    analyze_to,
    free_port,
    needs,
    publish,
    read_jsonl,
    start_in_thread,
    stop_process,
    wait_port,
)
from wirestream.sinks.prometheus import PrometheusSink

from wirestream.topics import ALERTS, SERVICE_METRICS

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "kustomize" / "base" / "grafana" / "wirestream-services.json"
PROMETHEUS = shutil.which("prometheus")
#: what the Prometheus sink serves (sinks/prometheus.py's table)
SINK_METRICS = {"wirestream_service_connections_total", "wirestream_service_requests_total",
                "wirestream_service_errors_total", "wirestream_service_retransmission_ratio",
                "wirestream_service_latency_seconds", "wirestream_service_handshake_rtt_seconds",
                "wirestream_alerts_total", "wirestream_sink_services_overflow_total"}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _targets(dash: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in dash["panels"] for t in p.get("targets", [])]


def test_the_dashboard_is_well_formed() -> None:
    dash = _dashboard()
    assert (REPO / "deploy" / "grafana" / "wirestream-services.json").read_text() == DASHBOARD.read_text()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "service"}
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        # each view says what it is computed from
        assert "wirestream_" in p["description"], p["title"]
        assert p["targets"]
    for _panel, t in _targets(dash):
        names = set(re.findall(r"\bwirestream_[a-z_]+", t["expr"]))
        assert names and names <= SINK_METRICS, t["expr"]


def test_the_kustomize_base_provisions_it(kustomize: str) -> None:
    out = subprocess.run([kustomize, "build", str(REPO / "deploy" / "kustomize" / "overlays" / "external-kafka")],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    maps = [d for d in yaml.safe_load_all(out)
            if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == "wirestream-grafana-dashboard"]
    assert len(maps) == 1
    assert maps[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(maps[0]["data"]["wirestream-services.json"]) == _dashboard()


def _promql(expr: str, service: str) -> str:
    """The query as Grafana sends it: variables filled in."""
    return (expr.replace("$__rate_interval", "15s").replace("$__range", "5m")
            .replace('service=~"$service"', f'service=~"{service}"'))


def _wait_ready(base: str, prometheus: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until Prometheus says it is ready: its port opens before that, and until then it
    answers queries with 503 Service Unavailable (its storage is still starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        assert prometheus.poll() is None, "prometheus exited"
        assert time.monotonic() < deadline, "prometheus never became ready"
        time.sleep(0.2)


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # (a query Prometheus refuses: its reason)
        raise AssertionError(f"{expr}: {exc.read().decode()}") from None
    assert body["status"] == "success", body
    return body["data"]["result"]


@needs(None if PROMETHEUS else "no prometheus (scripts/install --test installs Debian's)")
def test_every_panel_query_returns_series_from_a_real_prometheus(broker, registry, tmp_path: Path) -> None:
    analyzed = tmp_path / "analyzed"
    analyze_to(DATA / "chrissanders" / "http_espn.pcapng", analyzed)
    windows = [w for w in read_jsonl(analyzed / "wire.service-metrics.jsonl") if w.get("scope") == "service"]
    assert windows
    # this test's own service names (the broker is shared: other tests publish windows too)
    tag = f"grafana-{tmp_path.name}"
    for w in windows:
        w["service"] = f"{tag}/{w['service']}"
    services = sorted({w["service"] for w in windows})
    publish(broker, registry, SERVICE_METRICS, windows, key="service")
    publish(broker, registry, ALERTS, [{"alert_id": "grafana-1", "source_id": "grafana", "ts_us": 1,
                                        "kind": "retransmission_band", "severity": "warning", "summary": "test",
                                        "connection_id": None, "service": services[0], "evidence": {}}],
            key="service")
    sink = PrometheusSink(broker.bootstrap, registry.url, "127.0.0.1", 0, group=f"grafana-{tmp_path.name}",
                          from_beginning=True)
    stop_sink = start_in_thread(sink.run)
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "wirestream", "static_configs": [{"targets": [f"127.0.0.1:{sink.port}"]}]}]}))
    prometheus = subprocess.Popen([PROMETHEUS or "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_port(port, prometheus, "prometheus", timeout=60)
        _wait_ready(base, prometheus)
        deadline = time.monotonic() + 90
        want = sum(w["requests"] for w in windows)
        # the sink has every window, and Prometheus has scraped it a few times since
        while True:
            got = _query(base, f'sum(wirestream_service_requests_total{{service=~"{tag}/.*"}})')
            samples = _query(base, "count_over_time(wirestream_sink_services_overflow_total[1m])")
            if got and float(got[0]["value"][1]) == want and samples and float(samples[0]["value"][1]) >= 5:
                break
            assert time.monotonic() < deadline, (got, samples)
            time.sleep(1)
        dash = _dashboard()
        # the service variable's query, as Grafana asks it
        url = f"{base}/api/v1/label/service/values?" + urllib.parse.urlencode(
            {"match[]": "wirestream_service_requests_total"})
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert set(services) <= set(json.loads(resp.read())["data"])
        # All, and one service (the repeated row), regex-escaped as Grafana escapes it in PromQL
        for service in (".*", re.escape(services[0]).replace("\\", "\\\\")):
            for panel, target in _targets(dash):
                result = _query(base, _promql(target["expr"], service))
                assert result, (panel["title"], target["expr"], service)
    finally:
        stop_process(prometheus)
        stop_sink()
