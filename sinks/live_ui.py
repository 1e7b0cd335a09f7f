"""``wirestream ui``: the HTML report's pages, live, from a running pipeline's output topics.

A consumer group of its own reads the output topics (connections, transactions, queries,
Kafka calls, DNS, TLS, service windows, alerts) into bounded buffers — the newest
:data:`KEEP` records of each topic; older ones fall out — and an HTTP endpoint serves the
report's page (``/``, sinks/html_report.py) and its data (``/data.json``), which the page
fetches again every ``refresh_s`` seconds. Read-only: nothing is published, and offsets
are committed only so that the group's lag says how far behind the view is.

Exposure as the metrics sink's (``sinks/prometheus.py``): loopback by default; bound to
any other address it needs a token (``Authorization: Bearer`` or ``?token=`` in the URL,
which the page passes on to its data requests), HTTPS, or ``allow_unauthenticated``.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from typing import Any

from wirestream.topics import (
    ALERTS,
    CONNECTIONS,
    DNS,
    MESSAGING,
    QUERIES,
    SERVICE_METRICS,
    TLS,
    TRANSACTIONS,
)

from . import html_report
from .base import BatchSink, Item
from .prometheus import check_exposure, serve_http

#: topic -> records kept (the newest)
KEEP: dict[str, int] = {
    CONNECTIONS: 20_000, TRANSACTIONS: 20_000, QUERIES: 10_000, MESSAGING: 10_000, DNS: 5_000, TLS: 5_000,
    SERVICE_METRICS: 10_000, ALERTS: 2_000,
}
#: What the view keeps of each record: the report's fields, not bodies or header maps
_DROP = frozenset({"request_body", "response_body", "request_headers", "response_headers", "trailers",
                   "latency_digest", "handshake_rtt_digest", "evidence", "answers", "tunnel", "backends"})


class LiveState:
    """The newest records of each topic, bounded; thread-safe."""

    def __init__(self, keep: dict[str, int] | None = None) -> None:
        self._lock = threading.Lock()
        self._records = {topic: deque(maxlen=n) for topic, n in (keep or KEEP).items()}
        self.received = 0

    def add(self, topic: str, record: dict[str, Any]) -> None:
        kept = {k: v for k, v in record.items() if k not in _DROP}
        with self._lock:
            self._records[topic].append(kept)
            self.received += 1

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return {topic: list(records) for topic, records in self._records.items()}


class LiveUi(BatchSink):
    """Consume the output topics; serve the live report on ``host:port``."""

    name = "ui"

    def __init__(self, bootstrap: str, registry: str, host: str = "127.0.0.1", port: int = 8080,
                 group: str = "wirestream-ui", refresh_s: float = 5.0, from_beginning: bool = False,
                 token: str = "", cert: str | None = None, key: str | None = None,
                 allow_unauthenticated: bool = False) -> None:
        """``ValueError`` for a non-loopback ``host`` without protection (before anything
        is started) or a certificate that cannot be used; ``OSError`` if the address
        cannot be bound."""
        check_exposure(host, port, token, cert is not None, allow_unauthenticated, what="the live view")
        super().__init__(bootstrap, registry, list(KEEP), group, flush_records=2_000, flush_seconds=1.0,
                         from_beginning=from_beginning)
        self.state = LiveState()
        self.refresh_s = refresh_s
        self.title = f"wirestream: live ({bootstrap})"
        self.scheme = "https" if cert else "http"
        try:
            self._server = serve_http(host, port, {
                "/": lambda: ("text/html; charset=utf-8", self.page().encode()),
                "/data.json": lambda: ("application/json", json.dumps(self.data()).encode()),
            }, token=token, cert=cert, key=key, name="ui", token_in_query=True)
        except BaseException:
            self._consumer.close()
            raise
        self.port = self._server.server_address[1]

    def data(self) -> dict[str, Any]:
        data = html_report.build(self.state.snapshot(), self.title)
        data["live"] = {"refresh_s": self.refresh_s, "received": self.state.received}
        return data

    def page(self) -> str:
        return html_report.render(self.data(), live=True)

    def write(self, batch: list[Item]) -> None:
        for item in batch:
            self.state.add(item.topic, item.record)
            self.written[item.topic] += 1

    def close_destination(self) -> None:
        self._server.shutdown()
        self._server.server_close()
