"""Metrics sink: per-service series for Prometheus, from ``wire.service-metrics`` and
``wire.alerts``, on an HTTP endpoint (text exposition format 0.0.4).

Series (label ``service`` is the windows' service name):

==============================================  ========  ==================================
name                                            type      from each window / alert
==============================================  ========  ==================================
``wirestream_service_connections_total``        counter   + connections
``wirestream_service_requests_total``           counter   + requests
``wirestream_service_errors_total{class}``      counter   + errors_4xx, errors_5xx, status_429
``wirestream_service_retransmission_ratio``     gauge     retransmission_rate of the last window
``wirestream_service_latency_seconds{quantile}`` gauge    latency P50/P90/P99 of the last window
``wirestream_service_handshake_rtt_seconds{quantile}``  gauge  handshake RTT P50/P90/P99
``wirestream_alerts_total{kind}``               counter   + 1 per alert
``wirestream_sink_services_overflow_total``     counter   windows of services beyond the cap
==============================================  ========  ==================================

**Bounded cardinality**: at most ``max_services`` service label values (default 500);
windows of further services are added to ``service="other"`` and counted in
``wirestream_sink_services_overflow_total``, so a scan of ten thousand ``ip:port`` pairs
cannot blow up the time-series database. Alert kinds are a fixed set.

Counters only grow while the sink runs (a restart starts them at zero, which Prometheus'
``rate()`` handles); offsets are committed after each batch is applied (``sinks/base.py``).
"""

from __future__ import annotations

import http.server
import threading
from collections import defaultdict
from typing import Any

from wirestream.topics import ALERTS, SERVICE_METRICS

from .base import BatchSink, Item

OTHER = "other"
QUANTILES = (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class MetricsState:
    """The series, updated from records, rendered as exposition text. Thread-safe."""

    def __init__(self, max_services: int = 500) -> None:
        self.max_services = max_services
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._services: set[str] = set()
        self._overflow = 0

    def _service(self, name: str) -> str:
        if name in self._services:
            return name
        if len(self._services) < self.max_services:
            self._services.add(name)
            return name
        self._overflow += 1
        return OTHER

    def window(self, record: dict[str, Any]) -> None:
        with self._lock:
            svc = self._service(record["service"])
            s = (("service", svc),)
            self._counters[("wirestream_service_connections_total", s)] += record["connections"]
            self._counters[("wirestream_service_requests_total", s)] += record["requests"]
            for cls, field in (("4xx", "errors_4xx"), ("5xx", "errors_5xx"), ("429", "status_429")):
                self._counters[("wirestream_service_errors_total", (*s, ("class", cls)))] += record[field]
            self._gauges[("wirestream_service_retransmission_ratio", s)] = record["retransmission_rate"]
            for metric, prefix in (("wirestream_service_latency_seconds", "latency"),
                                   ("wirestream_service_handshake_rtt_seconds", "handshake_rtt")):
                for quantile, p in QUANTILES:
                    value = record.get(f"{prefix}_{p}_us")
                    if value is not None:
                        self._gauges[(metric, (*s, ("quantile", quantile)))] = value / 1e6

    def alert(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._counters[("wirestream_alerts_total", (("kind", record["kind"]),))] += 1

    def render(self) -> str:
        with self._lock:
            lines = []
            seen_types = set()
            for kind, series in (("counter", self._counters), ("gauge", self._gauges)):
                for (name, labels), value in sorted(series.items()):
                    if name not in seen_types:
                        seen_types.add(name)
                        lines.append(f"# TYPE {name} {kind}")
                    text = ",".join(f'{k}="{_label(v)}"' for k, v in labels)
                    lines.append(f"{name}{{{text}}} {value:g}")
            lines.append("# TYPE wirestream_sink_services_overflow_total counter")
            lines.append(f"wirestream_sink_services_overflow_total {self._overflow}")
            return "\n".join(lines) + "\n"


class PrometheusSink(BatchSink):
    """Consume service windows and alerts; serve their series on ``host:port`` /metrics."""

    name = "prometheus sink"

    def __init__(self, bootstrap: str, registry: str, host: str = "0.0.0.0", port: int = 9108,
                 group: str = "wirestream-sink-prometheus", max_services: int = 500,
                 from_beginning: bool = False) -> None:
        super().__init__(bootstrap, registry, [SERVICE_METRICS, ALERTS], group, flush_records=500,
                         flush_seconds=1.0, from_beginning=from_beginning)
        self.state = MetricsState(max_services)
        state = self.state

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "try /metrics")
                    return
                body = state.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True).start()

    def write(self, batch: list[Item]) -> None:
        for item in batch:
            if item.topic == SERVICE_METRICS:
                self.state.window(item.record)
            else:
                self.state.alert(item.record)
            self.written[item.topic] += 1

    def close_destination(self) -> None:
        self._server.shutdown()
        self._server.server_close()
