"""HTTP/1.x: one ``wire.transactions`` record per request/response pair.

The per-chunk work is the compiled core's (``rust/src/l7/http``: the message grammar
and framing, request/response pairing, the PARSE/RESYNC/WAIT/TUNNEL state machine of
each direction, gaps and parse errors with resynchronisation, timeouts, bounded state;
docs/l7.md). :class:`HttpAnalyzer` is the ``StreamAnalyzer`` over it: each hook hands
the bytes (or gap, tick, end) to ``_core.HttpConnection`` and gets back the completed
transactions as records the core built: header maps, redaction (header values, target,
bodies) and the findings of headers and bodies (``rust/src/l7/http/redact.rs``;
:mod:`.redact` is its Python face). What is left here, per record: its
``connection_id`` (computed on demand) and the findings beside it
(:class:`processors.findings.RecordWithFindings`).

Broken HTTP never raises out of the analyser; it is counted in ``ctx.stats``
(``http_parse_error`` and ``http_parse_error.<reason>``, ``http_gaps``,
``http_resync_bytes_dropped``, ...: the core names them). State is bounded: queued
requests (:data:`MAX_PENDING`), stored body bytes (``options.body_cap``), header blocks
(``options.max_header_bytes``), resync and held bytes (:data:`MAX_HELD`).
"""

from __future__ import annotations

from typing import Any

from wirestream._core import HttpConnection
from wirestream.schemas import schema_dict

from wirestream.topics import TRANSACTIONS

from ..findings import Finding, RecordWithFindings
from ..state_codec import StateError
from .base import StreamAnalyzer, StreamContext
from .http2 import Http2Analyzer

#: Requests waiting for their response; past this the oldest is dropped (counted).
MAX_PENDING: int = HttpConnection.MAX_PENDING
#: Client bytes held after an Upgrade/CONNECT request until the answer says what they are.
MAX_HELD: int = HttpConnection.MAX_HELD
#: What each transaction record starts as (the core copies it): every field at its schema
#: default -- the HTTP/2 and gRPC fields null for HTTP/1, ``tls`` false (cleartext; the
#: analyser of a decrypted TLS connection, tls.DecryptedStream, emits through a context
#: that marks its records true), the identity and zone fields null until enrichment --
#: the fields without one (set by the core, or here) null. One dict table made at once
#: per record, instead of ~4 growths as the core's 22 fields, then this module's, the
#: dispatcher's and the engine's came in. Mutable defaults (the header maps, ``tunnel``)
#: are left out: a copy shares its values, and those are set on every record anyway.
RECORD_TEMPLATE: dict[str, Any] = {
    f["name"]: f.get("default") for f in schema_dict("transaction")["fields"]
    if not isinstance(f.get("default"), (dict, list))}


class HttpAnalyzer(StreamAnalyzer):
    """HTTP/1.0 and HTTP/1.1 over one TCP connection.

    ``client_direction`` (0 or 1) is the direction that sends the requests.
    """

    protocol = "http"
    #: After ``Upgrade: h2c`` answered 101: the HTTP/2 analyser the rest of the connection
    #: goes to (a class default: a checkpoint written before it existed restores without it).
    _h2: Any = None

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
        c = client_direction
        self._endpoints = (ctx.ips[c], ctx.ports[c], ctx.ips[1 - c], ctx.ports[1 - c])
        self._core = HttpConnection(
            client_direction, options.body_cap,
            options.body_cap if response_cap is None else response_cap,
            options.max_header_bytes, options.response_timeout_us, self.redact,
            self._endpoints, RECORD_TEMPLATE)
        self._core_state = b""
        self._cid: str | None = None

    # -- StreamAnalyzer hooks ------------------------------------------------------------

    def on_data(self, direction: int, data: bytes, ts_us: int) -> None:
        if self._h2 is not None:
            self._h2.on_data(direction, data, ts_us)
            return
        out = self._core.data(direction, data, ts_us)
        if out is not None:
            self._done(out)
            handoff = self._core.take_handoff()
            if handoff is not None:
                self._upgrade_to_h2(handoff, ts_us)

    def direct_core(self) -> HttpConnection | None:
        # The tracker feeds the core itself (no Python bytes or call per segment) until
        # the connection becomes HTTP/2; then everything goes through on_data again.
        return self._core if self._h2 is None else None

    def on_core_output(self, out: Any, ts_us: int, handoff: bool) -> None:
        if out is not None:
            self._done(out)
        if handoff:
            taken = self._core.take_handoff()
            if taken is not None:
                self._upgrade_to_h2(taken, ts_us)

    def on_gap(self, direction: int, missing: int, ts_us: int) -> None:
        if self._h2 is not None:
            self._h2.on_gap(direction, missing, ts_us)
            return
        out = self._core.gap(direction, missing)
        if out is not None:
            self._done(out)

    def tick(self, now_us: int) -> None:
        if self._h2 is not None:
            self._h2.tick(now_us)
        out = self._core.tick(now_us)
        if out is not None:
            self._done(out)

    def on_close(self, ts_us: int) -> None:
        if self._h2 is not None:
            self._h2.on_close(ts_us)
        out = self._core.close()
        if out is not None:
            self._done(out)

    def _upgrade_to_h2(self, handoff: tuple, ts_us: int) -> None:
        """``Upgrade: h2c`` answered 101: the rest of the connection is HTTP/2 (RFC 7540
        section 3.2), the upgraded request its stream 1. The 101 is this analyser's
        record (as Wireshark shows it); the streams are the HTTP/2 analyser's."""
        method, target, host, req_ts, req_end_ts, req_size, client_bytes, server_bytes = handoff
        h2 = Http2Analyzer(self.ctx, self.client)
        h2._core.upgraded(method, target, host, req_ts, req_end_ts, req_size)
        self._h2 = h2
        self.stats["l7_connections.http2_upgraded"] += 1
        if server_bytes:
            h2.on_data(1 - self.client, server_bytes, ts_us)
        if client_bytes:
            h2.on_data(self.client, client_bytes, ts_us)

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
            self._core = HttpConnection.restore(self._core_state, self.redact, self._endpoints, RECORD_TEMPLATE)
        except ValueError as exc:
            raise StateError(f"http analyser: {exc}") from None
        self._core_state = b""

    # -- records -------------------------------------------------------------------------

    def _done(self, out: tuple[list[tuple[dict[str, Any], int]], list[tuple[str, int]]]) -> None:
        txns, counts = out
        stats = self.stats
        for name, n in counts:
            stats[name] += n
        if not txns:
            return
        cid = self._cid
        if cid is None:
            cid = self._cid = self.ctx.connection_id()
        records = []
        community_id = self.ctx.community_id
        for record, found in txns:
            # The core built the record (a copy of RECORD_TEMPLATE), redacted (header
            # values, target, bodies), and gives the findings of its headers and bodies
            # beside it.
            record["connection_id"] = cid
            record["community_id"] = community_id
            if found:  # for the detections, beside the record's fields (processors.findings)
                record = RecordWithFindings(record, Finding(found))
            records.append(record)
        stats["http_transactions"] += len(records)
        emit = self.ctx.emit
        for record in records:
            emit(TRANSACTIONS, cid, record)
