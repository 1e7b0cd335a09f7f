"""HTTP/1.x: one ``wire.transactions`` record per request/response pair.

The per-chunk work is the compiled core's (``rust/src/l7/http``: the message grammar
and framing, request/response pairing, the PARSE/RESYNC/WAIT/TUNNEL state machine of
each direction, gaps and parse errors with resynchronisation, timeouts, bounded state;
docs/l7.md). :class:`HttpAnalyzer` is the ``StreamAnalyzer`` over it: each hook hands
the bytes (or gap, tick, end) to ``_core.HttpConnection`` and gets back the completed
transactions, which it turns into records here, once per transaction: header maps,
redaction (:mod:`.redact`) and findings (:mod:`processors.findings`).

Broken HTTP never raises out of the analyser; it is counted in ``ctx.stats``
(``http_parse_error`` and ``http_parse_error.<reason>``, ``http_gaps``,
``http_resync_bytes_dropped``, ...: the core names them). State is bounded: queued
requests (:data:`MAX_PENDING`), stored body bytes (``options.body_cap``), header blocks
(``options.max_header_bytes``), resync and held bytes (:data:`MAX_HELD`).
"""

from __future__ import annotations

from typing import Any

from wirestream._core import HttpConnection

from wirestream.topics import TRANSACTIONS

from ..findings import (
    BASIC_CREDENTIALS_BIT,
    BEARER_TOKEN_BIT,
    PASSWORD_IN_FORM_BIT,
    Finding,
    RecordWithFindings,
)
from ..state_codec import StateError
from .base import StreamAnalyzer, StreamContext
from .redact import (
    body_findings,
    header_kind,
    redact_body,
    redact_target,
    redact_value,
)

#: Requests waiting for their response; past this the oldest is dropped (counted).
MAX_PENDING: int = HttpConnection.MAX_PENDING
#: Client bytes held after an Upgrade/CONNECT request until the answer says what they are.
MAX_HELD: int = HttpConnection.MAX_HELD

_PROTOCOLS = {"1.1": "http/1.1", "1.0": "http/1.0"}
#: raw header name -> (lower-case name, redact.header_kind); bounded, see _name_info
_NAMES: dict[bytes, tuple[str, int]] = {}


def _name_info(name: bytes) -> tuple[str, int]:
    info = _NAMES.get(name)
    if info is None:
        lname = name.decode("latin-1").lower()
        info = (lname, header_kind(lname))
        if len(_NAMES) >= 4096:  # header names are few; this only bounds garbage
            _NAMES.clear()
        _NAMES[name] = info
    return info


def _header_map(pairs: list[tuple[bytes, bytes]], redact: bool) -> dict[str, str]:
    """Header pairs -> {lower-case name: value}, repeated headers joined with ", "
    (RFC 9110 section 5.3). Redaction is per value, before joining: joined Set-Cookie
    values cannot be split reliably again."""
    out: dict[str, str] = {}
    names = _NAMES
    # One pass assuming no name repeats (the usual case; each test per header counts
    # here), a second one joining values only if some name did.
    for name, raw in pairs:
        try:
            lname, kind = names[name]
        except KeyError:
            lname, kind = _name_info(name)
        try:
            value = raw.decode()
        except UnicodeDecodeError:
            value = raw.decode("utf-8", "replace")
        out[lname] = redact_value(kind, value) if kind and redact else value
    if len(out) == len(pairs):
        return out
    out = {}
    for name, raw in pairs:
        lname, kind = _name_info(name)
        value = raw.decode("utf-8", "replace")
        if kind and redact:
            value = redact_value(kind, value)
        out[lname] = out[lname] + ", " + value if lname in out else value
    return out


def _findings(req_headers: dict[str, str], req_body: bytes | None,
              resp_headers: dict[str, str], resp_body: bytes | None) -> int:
    """Credentials and PII this (cleartext) transaction carried: ``Finding`` bits (an int,
    see processors.findings). Read from the headers as parsed (before redaction) and the
    kept bodies."""
    found = 0
    auth = req_headers.get("authorization") or req_headers.get("proxy-authorization")
    if auth:
        scheme = auth.split(" ", 1)[0].lower()
        if scheme == "basic":
            found |= BASIC_CREDENTIALS_BIT
        elif scheme == "bearer":
            found |= BEARER_TOKEN_BIT
    if req_body:
        found |= body_findings(req_body, req_headers.get("content-type"))
    if resp_body:
        # A password field in a response is not one the client sent.
        found |= (body_findings(resp_body, resp_headers.get("content-type"))
                  & ~PASSWORD_IN_FORM_BIT)
    return found


class HttpAnalyzer(StreamAnalyzer):
    """HTTP/1.0 and HTTP/1.1 over one TCP connection.

    ``client_direction`` (0 or 1) is the direction that sends the requests.
    """

    protocol = "http"

    # The core is state too: its bytes go into a snapshot (_state_prepare) and it is
    # rebuilt from them on restore (_state_restored); processors/state_codec.py.
    _state_exclude = ("_core",)

    def __init__(self, ctx: StreamContext, client_direction: int) -> None:
        super().__init__(ctx)
        self.client = client_direction
        self.stats = ctx.stats
        options = ctx.options
        self.redact = options.redact
        response_cap = options.response_body_cap
        self._core = HttpConnection(
            client_direction, options.body_cap,
            options.body_cap if response_cap is None else response_cap,
            options.max_header_bytes, options.response_timeout_us)
        self._core_state = b""
        c = client_direction
        self._endpoints = (ctx.ips[c], ctx.ports[c], ctx.ips[1 - c], ctx.ports[1 - c])
        self._cid: str | None = None

    # -- StreamAnalyzer hooks ------------------------------------------------------------

    def on_data(self, direction: int, data: bytes, ts_us: int) -> None:
        out = self._core.data(direction, data, ts_us)
        if out is not None:
            self._done(out)

    def on_gap(self, direction: int, missing: int, ts_us: int) -> None:
        out = self._core.gap(direction, missing)
        if out is not None:
            self._done(out)

    def tick(self, now_us: int) -> None:
        out = self._core.tick(now_us)
        if out is not None:
            self._done(out)

    def on_close(self, ts_us: int) -> None:
        out = self._core.close()
        if out is not None:
            self._done(out)

    # -- what the core says, for tests and bounds ------------------------------------------

    def pending_count(self) -> int:
        """Requests waiting for their response."""
        return self._core.pending_count()

    def held_bytes(self) -> int:
        """Client bytes held while an Upgrade/CONNECT request waits for its answer."""
        return self._core.held_bytes()

    def mode(self, direction: int) -> str:
        """The state of ``direction``: ``parse``, ``resync``, ``wait`` or ``tunnel``."""
        return self._core.mode(direction)

    def tail_len(self, direction: int) -> tuple[int, int]:
        """Resync bytes kept in ``direction`` (a message start cut), and their bound."""
        return self._core.tail_len(direction)

    def in_head(self, direction: int) -> bool:
        """Inside the start line or header block of a message of ``direction``."""
        return self._core.in_head(direction)

    def in_body(self, direction: int) -> bool:
        """Inside the body of a message of ``direction``."""
        return self._core.in_body(direction)

    # -- checkpoints ---------------------------------------------------------------------

    def _state_prepare(self) -> None:
        self._core_state = self._core.snapshot()

    def _state_restored(self) -> None:
        try:
            self._core = HttpConnection.restore(self._core_state)
        except ValueError as exc:
            raise StateError(f"http analyser: {exc}") from None
        self._core_state = b""

    # -- records -------------------------------------------------------------------------

    def _done(self, out: tuple[list[tuple], list[tuple[str, int]]]) -> None:
        txns, counts = out
        stats = self.stats
        for name, n in counts:
            stats[name] += n
        if not txns:
            return
        records = [self.record(t) for t in txns]
        stats["http_transactions"] += len(records)
        emit = self.ctx.emit
        cid = self._cid
        for record in records:
            emit(TRANSACTIONS, cid, record)

    def record(self, t: tuple) -> dict[str, Any]:
        """One ``wire.transactions`` record from a transaction of the core."""
        (method, url, version, req_pairs, req_body, req_size, resp_pairs, resp_body,
         resp_size, status, req_ts, ttfb, resp_end, error, upgrade) = t
        redact = self.redact
        req_headers = _header_map(req_pairs, redact)
        resp_headers = _header_map(resp_pairs, redact) if resp_pairs else {}
        path = url.decode("utf-8", "replace")
        findings = _findings(req_headers, req_body, resp_headers, resp_body)
        if redact:
            path = redact_target(path)
            if req_body is not None:
                req_body = redact_body(req_body, req_headers.get("content-type"),
                                       req_size > len(req_body))
            if resp_body is not None:
                resp_body = redact_body(resp_body, resp_headers.get("content-type"),
                                        resp_size > len(resp_body))
        cid = self._cid
        if cid is None:
            cid = self._cid = self.ctx.connection_id()
        client_ip, client_port, server_ip, server_port = self._endpoints
        record: dict[str, Any] = {
            "connection_id": cid,
            "protocol": _PROTOCOLS.get(version) or ("http/" + version if version else "http/1.1"),
            "client_ip": client_ip,
            "client_port": client_port,
            "server_ip": server_ip,
            "server_port": server_port,
            "request_ts_us": req_ts,
            "response_ts_us": resp_end,
            "method": method,
            "path": path,
            "host": req_headers.get("host"),
            "status": status,
            "request_headers": req_headers,
            "response_headers": resp_headers,
            "request_body": req_body,
            "response_body": resp_body,
            "request_body_size": req_size,
            "response_body_size": resp_size,
            "latency_us": resp_end - req_ts if resp_end is not None else None,
            "ttfb_us": ttfb,
            "error": error,
            "upgrade": upgrade,
        }
        if findings:  # for the detections, beside the record's fields (processors.findings)
            record = RecordWithFindings(record, Finding(findings))
        return record
