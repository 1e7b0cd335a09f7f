"""HTTP/2 and gRPC: one ``wire.transactions`` record per stream.

The compiled core (``rust/src/l7/h2``) parses both directions' frames, decodes the
header blocks (HPACK, its dynamic table per direction kept in the checkpoint), and
gives each finished stream: its request and response headers (values and target
redacted as HTTP/1's), trailers, body sizes, gRPC messages counted each way, and what
went wrong (``RST_STREAM``, a ``GOAWAY`` that left it unprocessed, an HPACK error).
:class:`Http2Analyzer` makes the record:

- the HTTP/1 record's fields (``protocol`` ``http/2``; ``host`` is ``:authority``;
  bodies are not kept: their sizes are), plus ``stream_id``;
- gRPC (``content-type: application/grpc...``): ``grpc_service`` and ``grpc_method``
  from the path ``/package.Service/Method``, ``grpc_status`` and ``grpc_message`` from the
  trailers (or a trailers-only response), the messages each way;
- ``error``: ``rst_stream <CODE> by client|server``, ``goaway <CODE> (not processed)``,
  ``no_response`` (the connection ended first), an HPACK error's name, or
  ``headers_unknown`` when headers referred to a dynamic table the capture never saw
  (a capture from the middle of the connection: as Wireshark, counted, not guessed);
- timing as HTTP/1's: ``latency_us`` from the request's HEADERS to the response's end,
  ``ttfb_us`` from the request's end to the response's HEADERS.

h2c with prior knowledge (the client's preface: what gRPC sends without TLS) and HTTP/2
inside decrypted TLS are recognised; after HTTP/1.1's ``Upgrade: h2c`` answered 101,
:class:`~.http.HttpAnalyzer` hands the connection over (the upgraded request is stream
1: ``H2Connection.upgraded``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from wirestream._core import H2Connection

from wirestream.topics import TRANSACTIONS

from .base import CoreBackedAnalyzer, StreamContext


def _grpc_names(path: str | None) -> tuple[str | None, str | None]:
    """``/package.Service/Method`` -> (``package.Service``, ``Method``)."""
    if not path or not path.startswith("/"):
        return None, None
    service, _, method = path[1:].partition("/")
    return (service or None), (method.split("?", 1)[0] or None)


class Http2Analyzer(CoreBackedAnalyzer):
    """HTTP/2 over one TCP connection; ``client_direction`` sent the preface."""

    protocol = "http2"

    def __init__(self, ctx: StreamContext, client_direction: int, started: bool = True) -> None:
        super().__init__(ctx)
        self.client = client_direction
        self.stats = ctx.stats
        self.redact = ctx.options.redact
        self._core = H2Connection(client_direction, started, self.redact)
        self._core_state = b""

    def on_data(self, direction: int, data: bytes, ts_us: int) -> None:
        self._events(self._core.data(direction, data, ts_us), ts_us)

    def on_gap(self, direction: int, missing: int, ts_us: int) -> None:
        self.stats["http2.gaps"] += 1
        self._core.gap(direction)

    def on_close(self, ts_us: int) -> None:
        self._events(self._core.close(), ts_us)

    def _events(self, events: list[Any], ts_us: int) -> None:
        for event in events:
            if isinstance(event, dict):
                self._emit(event)
            else:
                kind, reason = event
                name = "http2_parse_error" if kind == "parse_error" else "http2_hpack_error"
                self.stats[f"{name}.{reason}"] += 1
                self.stats[name] += 1

    def _emit(self, s: dict[str, Any]) -> None:
        ctx = self.ctx
        c = self.client
        cid = ctx.connection_id()
        request_headers = s["request_headers"]
        grpc = (request_headers.get("content-type") or "").startswith("application/grpc")
        service, method = _grpc_names(s["path"]) if grpc else (None, None)
        response_ts = s["response_ts_us"]
        end = s["response_end_ts_us"]
        error = s["error"]
        if error is None and response_ts is None:
            error = "no_response"
        elif error is None and s["unknown_headers"]:
            error = "headers_unknown"
        grpc_message = s["grpc_message"]
        if grpc_message is not None:
            grpc_message = unquote(grpc_message)[:256]  # (percent-encoded on the wire)
        response_headers = dict(s["response_headers"])
        response_headers.update(s["trailers"])  # (trailers after the headers, as HTTP/1's chunked trailers)
        record: dict[str, Any] = {
            "connection_id": cid,
            "community_id": ctx.community_id,
            "protocol": "http/2",
            "client_ip": ctx.ips[c], "client_port": ctx.ports[c],
            "server_ip": ctx.ips[1 - c], "server_port": ctx.ports[1 - c],
            "request_ts_us": s["request_ts_us"],
            "response_ts_us": response_ts,
            "method": s["method"],
            "path": s["path"],
            "host": s["authority"],
            "status": s["status"],
            "request_headers": request_headers,
            "response_headers": response_headers,
            "request_body": None,
            "response_body": None,
            "request_body_size": s["request_body_size"],
            "response_body_size": s["response_body_size"],
            "latency_us": None if end is None else max(0, end - s["request_ts_us"]),
            "ttfb_us": None if response_ts is None or s["request_end_ts_us"] is None
            else max(0, response_ts - s["request_end_ts_us"]),
            "error": error,
            "upgrade": None,
            # cleartext; inside decrypted TLS (tls.DecryptedStream) the context marks it true
            "tls": False,
            "stream_id": s["stream_id"],
            "grpc_service": service,
            "grpc_method": method,
            "grpc_status": s["grpc_status"] if grpc else None,
            "grpc_message": grpc_message if grpc else None,
            "grpc_request_messages": s["grpc_request_messages"] if grpc else None,
            "grpc_response_messages": s["grpc_response_messages"] if grpc else None,
        }
        self.stats["http2_streams"] += 1
        if grpc:
            self.stats["grpc_calls"] += 1
        if s["unknown_headers"]:
            self.stats["http2.unknown_headers"] += s["unknown_headers"]
        ctx.emit(TRANSACTIONS, cid, record)

    # -- checkpoints ---------------------------------------------------------------------

    def _restore_core(self, data: bytes) -> H2Connection:
        return H2Connection.restore(data, self.redact)
