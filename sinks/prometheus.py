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

**Exposure**: the endpoint binds loopback by default. Bound to any other address it must
be protected: a bearer token (``Authorization: Bearer TOKEN``; anything else gets 401),
HTTPS (a certificate and key), or both; :func:`check_exposure` refuses to serve
unprotected on a non-loopback address unless told so (``allow_unauthenticated``). The
same rules and :func:`serve_http` are for any HTTP endpoint a sink serves.

Counters only grow while the sink runs (a restart starts them at zero, which Prometheus'
``rate()`` handles); offsets are committed after each batch is applied (``sinks/base.py``).
"""

from __future__ import annotations

import hmac
import http.server
import ipaddress
import logging
import socket
import ssl
import threading
import urllib.parse
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from wirestream.topics import ALERTS, SERVICE_METRICS

from .base import BatchSink, Item

log = logging.getLogger(__name__)

OTHER = "other"
#: the environment variable a bearer token for the endpoint may come from
TOKEN_ENV = "WIRESTREAM_PROMETHEUS_TOKEN"
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
        if record.get("scope", "service") != "service":
            return  # a zone or node pair's window (docs/windows.md, "Topology"): no service series
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


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves only this machine ("" and 0.0.0.0/:: are every interface)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not host:
        return False
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except socket.gaierror:
        return False  # the bind will say what is wrong with the name
    return bool(addresses) and all(ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addresses)


def check_exposure(host: str, port: int, token: str, tls: bool, allow_unauthenticated: bool,
                   what: str = "/metrics") -> None:
    """Refuse (``ValueError``) to serve ``what`` on a non-loopback ``host`` with neither a
    token nor TLS, unless ``allow_unauthenticated``."""
    if is_loopback(host) or token or tls or allow_unauthenticated:
        return
    raise ValueError(
        f"refusing to serve {what} on {host or '0.0.0.0'}:{port}, which is not a loopback address, "
        f"without protection: give a bearer token (--token-file FILE or ${TOKEN_ENV}) or a TLS certificate "
        f"(--cert PEM --key PEM), or --allow-unauthenticated to serve it to anyone who can reach it")


def serve_http(host: str, port: int, routes: dict[str, Callable[[], tuple[str, bytes]]], token: str = "",
               cert: str | None = None, key: str | None = None, name: str = "http",
               token_in_query: bool = False) -> http.server.HTTPServer:
    """Serve GET ``routes`` (path -> () -> (content type, body)) on ``host:port`` in a
    thread: over HTTPS with ``cert``/``key``, and only to requests that carry
    ``Authorization: Bearer TOKEN`` when ``token`` is set (401 otherwise) — or, with
    ``token_in_query`` (a page a browser opens: it sends no such header), ``?token=TOKEN``
    in the URL. The caller checks the exposure first (:func:`check_exposure`). Raises
    ``ValueError`` for a certificate that cannot be used, ``OSError`` for an address that
    cannot be bound."""
    ctx = None
    if cert is not None or key is not None:
        if cert is None:
            raise ValueError("--key needs --cert (the certificate it belongs to)")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise ValueError(f"cannot use certificate {cert}{f' with key {key}' if key else ''}: {reason}") from None
    expected = f"Bearer {token}".encode() if token else b""

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 30  # a client that connects and says nothing (or no TLS) does not hold a thread forever

        def allowed(self) -> bool:
            if not expected:
                return True
            if hmac.compare_digest(self.headers.get("Authorization", "").encode(), expected):
                return True
            if token_in_query:
                given = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("token", [""])[0]
                return hmac.compare_digest(f"Bearer {given}".encode(), expected)
            return False

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if not self.allowed():
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Bearer realm="wirestream"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                self.send_error(404, f"try {', '.join(routes)}")
                return
            content_type, body = route()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass  # one line per scrape is noise (and a request line may hold anything)

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def get_request(self) -> tuple[socket.socket, Any]:
            conn, addr = super().get_request()
            if ctx is not None:
                # the handshake happens in the request's thread (at its first read), so a
                # slow or non-TLS client cannot stall the accepting one
                conn = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            return conn, addr

        def handle_error(self, request: Any, client_address: Any) -> None:
            log.debug("%s: request from %s failed", name, client_address, exc_info=True)

    server = Server((host.strip("[]"), port), Handler)
    threading.Thread(target=server.serve_forever, name=f"{name}-http", daemon=True).start()
    return server


class PrometheusSink(BatchSink):
    """Consume service windows and alerts; serve their series on ``host:port`` /metrics."""

    name = "prometheus sink"

    def __init__(self, bootstrap: str, registry: str, host: str = "127.0.0.1", port: int = 9108,
                 group: str = "wirestream-sink-prometheus", max_services: int = 500,
                 from_beginning: bool = False, token: str = "", cert: str | None = None,
                 key: str | None = None, allow_unauthenticated: bool = False) -> None:
        """``token``: scrapes must carry ``Authorization: Bearer TOKEN``; ``cert``/``key``:
        serve HTTPS. A non-loopback ``host`` needs one of them, or ``allow_unauthenticated``
        (``ValueError`` otherwise, before anything is started)."""
        check_exposure(host, port, token, cert is not None, allow_unauthenticated)
        super().__init__(bootstrap, registry, [SERVICE_METRICS, ALERTS], group, flush_records=500,
                         flush_seconds=1.0, from_beginning=from_beginning)
        self.state = MetricsState(max_services)
        state = self.state
        self.scheme = "https" if cert else "http"
        try:
            self._server = serve_http(host, port, {
                "/metrics": lambda: ("text/plain; version=0.0.4; charset=utf-8", state.render().encode())},
                token=token, cert=cert, key=key, name="metrics")
        except BaseException:
            self._consumer.close()
            raise
        self.port = self._server.server_address[1]

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
