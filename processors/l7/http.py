"""HTTP/1.x: one ``wire.transactions`` record per request/response pair.

The parsing is llhttp's (through ``httptools``); this module decides what llhttp cannot
know on its own, the way Zeek's HTTP analyser does:

- which request a response answers: responses pair FIFO with the queued requests
  (keep-alive and pipelining), and a 1xx interim response (``100 Continue``, ``103 Early
  Hints``) is not the final response of its request;
- that a response to ``HEAD`` has no body whatever its ``Content-Length`` says, and that
  a ``2xx`` response to ``CONNECT`` is followed by tunnelled bytes, not a body (the
  parser is never told the request method, see :meth:`_ResponseSide.head_only`);
- where a close-delimited body ends (the connection's end, :meth:`HttpAnalyzer.on_close`);
- what to do with bytes after ``101 Switching Protocols`` or an accepted ``CONNECT``
  (they are not HTTP/1: counted and ignored);
- how to go on after missing bytes (:meth:`HttpAnalyzer.on_gap`) or a parse error: the
  transaction in progress is emitted with ``error``, then bytes are dropped until
  something that starts a message (a request line, ``HTTP/1.x NNN``) and a fresh parser
  takes over.

Each direction is an explicit small state machine (:class:`_Side`)::

    PARSE --gap / parse error--> RESYNC --message start found--> PARSE
    PARSE --Upgrade or CONNECT request (client side)--> WAIT --answer not 101/2xx--> PARSE
    PARSE / WAIT --101, or 2xx to CONNECT--> TUNNEL (until the end)

Broken HTTP never raises out of the analyser; it is counted in ``ctx.stats``
(``http_parse_error`` and ``http_parse_error.<reason>``). State is bounded: queued
requests (:data:`MAX_PENDING`), stored body bytes (``options.body_cap``), header blocks
(``options.max_header_bytes``), resync and held bytes.
"""

from __future__ import annotations

import re
from collections import deque
from enum import Enum
from typing import Any

import httptools

from wirestream.topics import TRANSACTIONS

from ..findings import (
    BASIC_CREDENTIALS_BIT,
    BEARER_TOKEN_BIT,
    PASSWORD_IN_FORM_BIT,
    Finding,
    RecordWithFindings,
)
from .base import StreamAnalyzer, StreamContext
from .redact import (
    body_findings,
    header_kind,
    redact_body,
    redact_target,
    redact_value,
)

#: Requests waiting for their response; past this the oldest is dropped (counted).
MAX_PENDING = 1000
#: Client bytes held after an Upgrade/CONNECT request until the answer says what they are.
MAX_HELD = 64 * 1024
#: Bytes of a message in progress kept to rebuild its parser on a restore (see
#: _Side.log): past this, a message with a Content-Length or connection-delimited body
#: keeps none (its parser is rebuilt from its head); a chunked one keeps up to
#: REPLAY_MAX, after which a restore in its middle resynchronises as after a gap.
REPLAY_SOFT = 16 * 1024
REPLAY_MAX = 1024 * 1024


class Mode(Enum):
    """The state of one direction (the machine in the module docstring)."""

    PARSE = "parse"  # llhttp reads the bytes
    RESYNC = "resync"  # after a gap or a parse error: looking for a message start
    WAIT = "wait"  # client bytes held until the answer to an Upgrade/CONNECT request
    TUNNEL = "tunnel"  # after 101 or an accepted CONNECT: not HTTP/1, counted and ignored


# Compared per chunk of bytes, so read as module globals: on CPython 3.11 an Enum member
# looked up on its class (``Mode.PARSE``) costs ~200 ns, a global ~25 ns, as much as
# the strings these were (python -m timeit).
PARSE, RESYNC, WAIT, TUNNEL = Mode.PARSE, Mode.RESYNC, Mode.WAIT, Mode.TUNNEL

# Where a new message can start, to resynchronise on after a gap or a parse error. The
# request methods are llhttp's; a match may be anywhere (garbage does not end in '\n').
_REQUEST_START = re.compile(
    rb"(?:GET|HEAD|POST|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH|PROPFIND|PROPPATCH|MKCOL|"
    rb"COPY|MOVE|LOCK|UNLOCK|SEARCH|REPORT|MKACTIVITY|CHECKOUT|MERGE|M-SEARCH|NOTIFY|"
    rb"SUBSCRIBE|UNSUBSCRIBE|PURGE|MKCALENDAR|LINK|UNLINK|SOURCE|QUERY|ACL|BIND|UNBIND|"
    rb"REBIND) [^\s]{1,8192} HTTP/1\.[01]\r?\n"
)
_RESPONSE_START = re.compile(rb"HTTP/1\.[01] [0-9]{3}")

# Methods whose response is never followed by a body in the usual sense: HEAD (no body
# at all) and CONNECT (2xx: tunnel). See _ResponseSide.head_only.
_HEAD_ONLY = frozenset({"HEAD", "CONNECT"})

_PROTOCOLS = {"1.1": "http/1.1", "1.0": "http/1.0"}
_NO_HEADERS: list[tuple[bytes, bytes]] = []  # shared, never appended to
_METHODS: dict[bytes, str] = {}
#: raw header name -> (lower-case name, redact.header_kind); bounded, see _name_info
_NAMES: dict[bytes, tuple[str, int]] = {}
_REASONS: dict[str, str] = {}


def _name_info(name: bytes) -> tuple[str, int]:
    info = _NAMES.get(name)
    if info is None:
        lname = name.decode("latin-1").lower()
        info = (lname, header_kind(lname))
        if len(_NAMES) >= 4096:  # header names are few; this only bounds garbage
            _NAMES.clear()
        _NAMES[name] = info
    return info


def _reason(exc: Exception) -> str:
    """A short counter suffix for a parse error: llhttp has a fixed set of messages."""
    if isinstance(exc, httptools.HttpParserCallbackError):
        return "callback"
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        return "invalid_method"
    if isinstance(exc, httptools.HttpParserInvalidStatusError):
        return "invalid_status"
    if isinstance(exc, httptools.HttpParserInvalidURLError):
        return "invalid_url"
    msg = str(exc)
    slug = _REASONS.get(msg)
    if slug is None:
        slug = re.sub(r"[^a-z0-9]+", "_", msg.lower()).strip("_")[:40] or "unknown"
        if len(_REASONS) < 256:
            _REASONS[msg] = slug
    return slug


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


def _close_delimited(pairs: list[tuple[bytes, bytes]]) -> bool:
    """A response body without Content-Length or chunked coding ends with the connection
    (RFC 9112 section 6.3, rule 8)."""
    for name, value in pairs:
        lname = _name_info(name)[0]
        if lname == "content-length":
            return False
        if lname == "transfer-encoding" and b"chunked" in value.lower():
            return False
    return True


def _keep_tail(buf: bytes, limit: int) -> bytes:
    """What to keep of unmatched resync bytes: a message start not complete yet can only
    be in the bytes after the last line feed."""
    nl = buf.rfind(b"\n")
    tail = buf[nl + 1 :] if nl >= 0 else buf
    return tail[-limit:]


class _Txn:
    """One request and what is known of its response."""

    __slots__ = (
        "req_ts", "req_end_ts", "method", "url", "version", "req_headers", "req_body",
        "req_stored", "req_size", "req_done", "resp_ts", "resp_end_ts", "status",
        "resp_headers", "resp_body", "resp_stored", "resp_size", "resp_done", "error",
        "upgrade", "emitted", "orphan",
    )

    def __init__(self, ts: int) -> None:
        self.req_ts = ts  # first request byte
        self.req_end_ts: int | None = None  # last request byte
        self.method: str | None = None
        self.url: bytes | None = None  # request target, as sent
        self.version: str | None = None  # "1.1"
        self.req_headers: list[tuple[bytes, bytes]] = []
        self.req_body: list[bytes] | None = None  # stored parts (up to the body cap)
        self.req_stored = 0
        self.req_size = 0  # decoded body size, past the cap too
        self.req_done = False
        self.resp_ts: int | None = None  # first byte of the (final) response
        self.resp_end_ts: int | None = None  # last response byte
        self.status: int | None = None  # of the final response
        self.resp_headers: list[tuple[bytes, bytes]] = _NO_HEADERS
        self.resp_body: list[bytes] | None = None
        self.resp_stored = 0
        self.resp_size = 0
        self.resp_done = False
        self.error: str | None = None
        self.upgrade: str | None = None
        self.emitted = False
        self.orphan = False  # a response without a request (never reported)


class _Side:
    """One direction: a parser and the PARSE/RESYNC/WAIT/TUNNEL state machine.

    Subclasses are the parser's callback object (httptools looks up ``on_url``,
    ``on_header``, ... by name) and say what a message is (:meth:`new_parser`,
    :attr:`START`) and what to do with a broken one (:meth:`abort`).
    """

    START: re.Pattern[bytes]
    MARKER: bytes  # a literal every match of START contains
    TAIL_LIMIT: int

    #: Not state: an llhttp parser cannot be copied. A snapshot (processors/state_codec.py)
    #: keeps ``log`` instead, and _state_restored rebuilds the parser from it.
    _state_exclude = ("parser",)

    def __init__(self, an: HttpAnalyzer) -> None:
        self.an = an
        self.cap = an.ctx.options.body_cap
        self.max_header = an.ctx.options.max_header_bytes
        self.mode = PARSE
        self.set_parser()
        self.cur: _Txn | None = None  # the message being parsed (None: between messages)
        self.in_head = False  # inside the start line / header block of `cur`
        self.hdr_bytes = 0  # header bytes fed so far (see feed)
        self.begins = 0  # messages begun, to locate a failing one (see error)
        self.tail = b""  # RESYNC: bytes kept for a message start split across segments
        self.headonly = False  # (response side) see _ResponseSide.head_only
        self.ts = 0  # capture time of the bytes being parsed (read by the callbacks)
        self.last_ts = 0  # capture time of the last byte seen in this direction

    def new_parser(self, callbacks: Any = None) -> Any:
        """A fresh llhttp parser calling ``callbacks`` (default: this side)."""
        raise NotImplementedError

    def set_parser(self) -> None:
        """A fresh parser. ``log`` holds the bytes fed to the current parser since it was
        last between messages at the end of a feed (where it is as good as a fresh one):
        feeding them to a fresh parser rebuilds it (a restore, _state_restored). None: not
        kept (a long message; see REPLAY_SOFT)."""
        self.parser = self.new_parser()
        self.log: list[bytes] | None = []
        self.log_bytes = 0
        self.log_limit = REPLAY_SOFT

    def logged(self, data: bytes) -> None:
        """``data`` was fed to the parser (called after every successful feed)."""
        if self.cur is None:  # between messages: the parser is as good as a fresh one
            if self.log_bytes or self.log is None:
                self.log = []
                self.log_bytes = 0
                self.log_limit = REPLAY_SOFT
            return
        log = self.log
        if log is not None:
            log.append(data)
            self.log_bytes += len(data)
            if self.log_bytes > self.log_limit:
                self.trim_log()

    def trim_log(self) -> None:
        """A long message: keep no bytes if its head can rebuild the parser, else go on
        up to REPLAY_MAX."""
        if not self.in_head and _framing(self.cur_headers()) != "chunked":
            self.log = None
        elif self.log_bytes > REPLAY_MAX:
            self.log = None
        else:
            self.log_limit = REPLAY_MAX

    def cur_headers(self) -> list[tuple[bytes, bytes]]:
        raise NotImplementedError

    def synthetic_head(self) -> bytes | None:
        """A message head that brings a fresh parser where the current one is, in the body
        of a message with a Content-Length or connection-delimited body; None if there
        is no such head."""
        raise NotImplementedError

    def _state_restored(self) -> None:
        """After a restore: a parser where the snapshot's was (its bytes fed again, with
        the callbacks muted), or, if that cannot be known, a fresh one after a gap."""
        if self.an is None:  # closed
            self.parser = None
            return
        if self.mode is not PARSE or (self.cur is None and not self.log):
            self.set_parser()  # (not PARSE: a fresh parser is made before any use)
            return
        replay = b"".join(self.log) if self.log is not None else None
        if replay is None and self.cur is not None and not self.in_head:
            replay = self.synthetic_head()
        if replay is not None:
            relay = _Relay()
            parser = self.new_parser(relay)
            try:
                parser.feed_data(replay)
            except httptools.HttpParserError:
                replay = None
            else:
                relay.side = self
                self.parser = parser
                return
        # Where the parser was cannot be rebuilt: go on as after lost bytes.
        self.an.stats["http_restore_resync"] += 1
        self.set_parser()
        self.gap()

    def abort(self, error: str) -> None:
        """End the message in progress (gap or parse error)."""
        raise NotImplementedError

    def restart(self) -> None:
        """A fresh parser: a message starts at the next byte."""
        self.mode = PARSE
        self.set_parser()
        self.cur = None
        self.in_head = False

    # -- bytes in --------------------------------------------------------------------

    def data(self, data: bytes, ts: int) -> None:
        self.ts = ts
        if ts > self.last_ts:
            self.last_ts = ts
        if (self.mode is PARSE and not self.in_head and not self.headonly
                and not self.an.n_head_only):
            # The usual case, inlined (it is most of the cost per transaction): no header
            # block open (so no size to check), no HEAD/CONNECT queued.
            begins = self.begins
            try:
                self.parser.feed_data(data)
                # (logged(), inlined)
                if self.cur is None:
                    if self.log_bytes or self.log is None:
                        self.log = []
                        self.log_bytes = 0
                        self.log_limit = REPLAY_SOFT
                    return
                log = self.log
                if log is not None:
                    log.append(data)
                    self.log_bytes += len(data)
                    if self.log_bytes > self.log_limit:
                        self.trim_log()
                return
            except httptools.HttpParserUpgrade as exc:
                pos = self.upgraded(data, exc.args[0])
            except httptools.HttpParserError as exc:
                pos = self.error(data, 0, self.begins - begins, _reason(exc))
        else:
            pos = 0
        n = len(data)
        stats = self.an.stats
        while pos < n:
            mode = self.mode
            if mode is PARSE:
                pos = self.parse(data, pos)
            elif mode is RESYNC:
                if self.tail:
                    buf = self.tail + data[pos:]
                else:
                    buf = data[pos:] if pos else data
                # (a C-speed find first: the regex is much slower per byte, and a long
                # body may go by while resynchronising)
                m = self.START.search(buf) if self.MARKER in buf else None
                if m is None:
                    self.tail = _keep_tail(buf, self.TAIL_LIMIT)
                    stats["http_resync_bytes_dropped"] += len(buf) - len(self.tail)
                    return
                stats["http_resync_bytes_dropped"] += m.start()
                self.tail = b""
                data, pos, n = buf, m.start(), len(buf)
                self.restart()
            else:
                self.idle(data, pos)
                return

    def parse(self, data: bytes, pos: int) -> int:
        return self.feed(data, pos, len(data))

    def idle(self, data: bytes, pos: int) -> None:
        """WAIT / TUNNEL: bytes that are not parsed."""
        self.an.stats["http_tunnel_bytes_ignored"] += len(data) - pos

    def feed(self, data: bytes, pos: int, end: int) -> int:
        """Parse ``data[pos:end]``; return where to go on (``end``, or a resync point)."""
        if self.in_head:
            # Bytes fed while a header block is open (an undercount by at most the
            # segment the message began in): llhttp itself has no limit.
            self.hdr_bytes += end - pos
        begins = self.begins
        whole = pos == 0 and end == len(data)
        try:
            self.parser.feed_data(data if whole else memoryview(data)[pos:end])
        except httptools.HttpParserUpgrade as exc:
            return self.upgraded(data, pos + exc.args[0])
        except httptools.HttpParserError as exc:
            return self.error(data, pos, self.begins - begins, _reason(exc))
        if self.cur is not None or self.log_bytes or self.log is None:
            self.logged(data if whole else data[pos:end])
        if self.in_head and self.hdr_bytes > self.max_header:
            return self.error(data, pos, self.begins - begins, "header_too_large")
        return end

    def upgraded(self, data: bytes, at: int) -> int:
        raise NotImplementedError

    def error(self, data: bytes, pos: int, began: int, reason: str) -> int:
        """A parse error in ``data[pos:...]``: end the message, find where to go on."""
        stats = self.an.stats
        stats["http_parse_error"] += 1
        stats["http_parse_error." + reason] += 1
        if self.cur is not None:
            self.abort("parse_error")
        self.cur = None
        self.in_head = False
        # httptools does not say where in the input the error was. The messages that
        # began in this slice each started with a start line, the failing one last: skip
        # that many start lines and go on at the next (the failing message's own start
        # line is never parsed twice, nor are those of the messages before it).
        it = self.START.finditer(data, pos)
        failed_at = pos  # where the failing message starts, as far as we can tell
        m = None
        for i in range(began + 1):
            m = next(it, None)
            if m is None:
                break
            if i == began - 1:
                failed_at = m.start()
        if m is not None:
            stats["http_resync_bytes_dropped"] += m.start() - failed_at
            self.restart()
            return m.start()
        self.mode = RESYNC
        self.tail = _keep_tail(data[failed_at:], self.TAIL_LIMIT)
        stats["http_resync_bytes_dropped"] += len(data) - failed_at - len(self.tail)
        return len(data)

    def gap(self) -> None:
        if self.mode is TUNNEL:
            return
        if self.cur is not None:
            self.abort("gap")
        self.cur = None
        self.in_head = False
        self.mode = RESYNC
        self.tail = b""


class _Relay:
    """The callbacks of a parser rebuilt on a restore: silent while the logged bytes are
    fed again (their effects are in the restored state), then this side's."""

    __slots__ = ("side",)

    def __init__(self) -> None:
        self.side: _Side | None = None

    def on_message_begin(self) -> None:
        if self.side is not None:
            self.side.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if self.side is not None:
            self.side.on_url(url)  # type: ignore[attr-defined]

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.side is not None:
            self.side.on_header(name, value)  # type: ignore[attr-defined]

    def on_headers_complete(self) -> None:
        if self.side is not None:
            self.side.on_headers_complete()  # type: ignore[attr-defined]

    def on_body(self, body: bytes) -> None:
        if self.side is not None:
            self.side.on_body(body)  # type: ignore[attr-defined]

    def on_message_complete(self) -> None:
        if self.side is not None:
            self.side.on_message_complete()  # type: ignore[attr-defined]


def _framing(pairs: list[tuple[bytes, bytes]]) -> int | str | None:
    """How a message's body ends, from its headers: its Content-Length, "chunked" (any
    Transfer-Encoding), or None (neither: none, or the connection's end for a response)."""
    length: int | str | None = None
    for name, value in pairs:
        lname = _name_info(name)[0]
        if lname == "transfer-encoding":
            return "chunked"
        if lname == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return "chunked"  # (not a length to rebuild a parser with)
    return length


def _head_for_rest(start_line: bytes, pairs: list[tuple[bytes, bytes]], size: int) -> bytes | None:
    """A head for a fresh parser that is to read the rest of a body of which ``size``
    bytes were read (None if the headers say nothing a head can restate)."""
    framing = _framing(pairs)
    if framing == "chunked":
        return None
    lines = [start_line]
    for name, value in pairs:
        if _name_info(name)[0] != "content-length":
            lines.append(name + b": " + value + b"\r\n")
    if framing is not None:
        rest = int(framing) - size
        if rest <= 0:
            return None
        lines.append(b"Content-Length: %d\r\n" % rest)
    lines.append(b"\r\n")
    return b"".join(lines)


def _lenient(parser: Any) -> Any:
    # We observe, we do not enforce: bytes after "Connection: close" (or an HTTP/1.0
    # message without keep-alive) are still parsed; llhttp's default of rejecting them
    # protects servers from request smuggling, which is not our concern here. (httptools
    # has this switch since 0.6.2; without it such bytes are a counted parse error.)
    lenient = getattr(parser, "set_dangerous_leniencies", None)
    if lenient is not None:
        lenient(lenient_keep_alive=True, lenient_data_after_close=True)
    return parser


class _RequestSide(_Side):
    """The client's bytes: requests, queued in ``an.pending`` as they begin."""

    START = _REQUEST_START
    MARKER = b" HTTP/1."
    TAIL_LIMIT = 8192 + 64

    def __init__(self, an: HttpAnalyzer) -> None:
        super().__init__(an)
        self.last_done: _Txn | None = None
        self.held = b""  # WAIT: bytes after an Upgrade/CONNECT request
        self.held_ts = 0
        self.wait_txn: _Txn | None = None
        self.wait_gap = False

    def new_parser(self, callbacks: Any = None) -> Any:
        return _lenient(httptools.HttpRequestParser(callbacks or self))

    def cur_headers(self) -> list[tuple[bytes, bytes]]:
        return self.cur.req_headers

    def synthetic_head(self) -> bytes | None:
        t = self.cur
        if t.method is None or t.url is None or t.version is None:
            return None
        line = t.method.encode("latin-1") + b" " + t.url + b" HTTP/" + t.version.encode() + b"\r\n"
        return _head_for_rest(line, t.req_headers, t.req_size)

    # -- llhttp callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        t = _Txn(self.ts)
        self.cur = t
        self.in_head = True
        self.hdr_bytes = 0
        self.begins += 1
        pending = self.an.pending
        if len(pending) >= MAX_PENDING:
            dropped = self.an.dequeue()
            dropped.emitted = True  # never emitted: its slot is gone
            self.an.stats["http_pending_dropped"] += 1
        pending.append(t)

    def on_url(self, url: bytes) -> None:
        t = self.cur
        if t.url is None:
            t.url = url
            # Known from here on, and needed early: a response to HEAD is parsed
            # differently (see _ResponseSide.head_only).
            raw = self.parser.get_method()
            method = _METHODS.get(raw)
            if method is None:
                method = _METHODS[raw] = raw.decode("latin-1")
            t.method = method
            if method in _HEAD_ONLY:
                self.an.n_head_only += 1
        else:  # the target was split across segments
            t.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.cur.req_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.cur.version = self.parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        t = self.cur
        t.req_size += len(body)
        if t.req_stored < self.cap:
            t.req_body, t.req_stored = _keep(t.req_body, t.req_stored, self.cap, body)

    def on_message_complete(self) -> None:
        t = self.cur
        self.cur = None
        t.req_done = True
        t.req_end_ts = self.ts
        self.last_done = t
        if t.resp_done:  # answered before it was complete (an early error response)
            self.an.emit(t)

    # -- state changes ---------------------------------------------------------------

    def abort(self, error: str) -> None:
        t = self.cur
        self.cur = None
        if t.error is None:
            t.error = error
        t.req_done = True
        t.req_end_ts = self.last_ts
        if t.url is None:
            # Not even a request line: nothing to report. After a gap it stays queued as
            # a stand-in (a request did start, its response will come); garbage is taken
            # off the queue (no telling whether anything answers it).
            t.emitted = True
            if error == "gap":
                self.an.stats["http_requests_lost_in_gap"] += 1
                return
            pending = self.an.pending
            if pending and pending[-1] is t and self.an.resp.cur is not t:
                pending.pop()
            return
        # An incomplete request stays queued: its response (typically a 400) still
        # pairs with it, and the requests after it keep their responses.
        if t.resp_done:
            self.an.emit(t)

    def upgraded(self, data: bytes, at: int) -> int:
        # A CONNECT request, or one with "Upgrade:" (websocket, h2c), is complete; what
        # the client sends next depends on the answer (101 / 2xx: another protocol;
        # anything else: more HTTP/1), so hold it. (httptools does not report the body
        # of an Upgrade request that has one: it tells llhttp to skip it.)
        self.mode = WAIT
        self.wait_txn = self.last_done
        self.wait_gap = False
        self.held = b""
        self.held_ts = self.ts
        self.idle(data, at)
        t = self.wait_txn
        if t is not None and t.resp_done:  # already answered (early response)
            self.an.settle_wait(t)
        return len(data)

    def idle(self, data: bytes, pos: int) -> None:
        if self.mode is WAIT:
            room = MAX_HELD - len(self.held)
            if room > 0:
                chunk = data[pos : pos + room]
                if not self.held:
                    self.held_ts = self.ts
                self.held += chunk
                pos += len(chunk)
        self.an.stats["http_tunnel_bytes_ignored"] += len(data) - pos

    def gap(self) -> None:
        if self.mode is WAIT:
            # The held bytes are no longer contiguous with what follows.
            self.wait_gap = True
            return
        if self.mode is PARSE and self.cur is None:
            # Between requests: the bytes lost are the start of a request. Queue a
            # stand-in (never reported) so that its response does not pair with the
            # requests after it.
            lost = _Txn(self.last_ts)
            lost.req_done = True
            lost.req_end_ts = self.last_ts
            self.an.pending.append(lost)
            self.an.stats["http_requests_lost_in_gap"] += 1
        super().gap()

    def resume(self) -> None:
        """The answer to the Upgrade/CONNECT request was not a switch: the held bytes
        are HTTP/1 again."""
        held, ts = self.held, self.held_ts
        self.held = b""
        self.wait_txn = None
        self.restart()
        if self.wait_gap:
            self.mode = RESYNC
            self.tail = b""
        if held:
            self.data(held, ts)

    def tunnel(self) -> None:
        self.an.stats["http_tunnel_bytes_ignored"] += len(self.held)
        self.held = b""
        self.wait_txn = None
        self.mode = TUNNEL
        self.cur = None


class _ResponseSide(_Side):
    """The server's bytes: each response pairs with the oldest queued request."""

    START = _RESPONSE_START
    MARKER = b"HTTP/1."
    TAIL_LIMIT = 16

    def __init__(self, an: HttpAnalyzer) -> None:
        super().__init__(an)
        if an.ctx.options.response_body_cap is not None:
            self.cap = an.ctx.options.response_body_cap
        self.status = 0  # of the message being parsed (interim ones included)
        self.hd_tail = b""  # its last bytes fed, to find a blank line split in two

    def new_parser(self, callbacks: Any = None) -> Any:
        return _lenient(httptools.HttpResponseParser(callbacks or self))

    def cur_headers(self) -> list[tuple[bytes, bytes]]:
        return self.cur.resp_headers

    def synthetic_head(self) -> bytes | None:
        if not 200 <= self.status < 1000:
            return None
        line = b"HTTP/1.1 %d X\r\n" % self.status
        return _head_for_rest(line, self.cur.resp_headers, self.cur.resp_size)

    # -- llhttp callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        pending = self.an.pending
        if pending:
            t = pending[0]
        else:
            t = _Txn(self.ts)
            t.orphan = True
            self.an.stats["http_orphan_responses"] += 1
        t.resp_headers = []  # (after an interim response: the final one's only)
        t.resp_ts = self.ts
        self.cur = t
        self.in_head = True
        self.hdr_bytes = 0
        self.begins += 1

    def on_header(self, name: bytes, value: bytes) -> None:
        self.cur.resp_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        t = self.cur
        status = self.status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # interim: not the status of the transaction
        t.status = status
        if status == 101:
            t.upgrade = self.upgrade_name(t)
        elif 200 <= status < 300 and t.method == "CONNECT":
            t.upgrade = "tunnel"

    def on_body(self, body: bytes) -> None:
        t = self.cur
        t.resp_size += len(body)
        if t.resp_stored < self.cap:
            t.resp_body, t.resp_stored = _keep(t.resp_body, t.resp_stored, self.cap, body)

    def on_message_complete(self) -> None:
        t = self.cur
        self.cur = None
        status = self.status
        if 100 <= status < 200 and status != 101:
            # 100 Continue, 102, 103 Early Hints: interim, the final response follows
            # (RFC 9110 section 15.2).
            self.an.stats["http_interim_responses"] += 1
            return
        self.an.finish_response(t, self.ts)

    @staticmethod
    def upgrade_name(t: _Txn) -> str:
        for pairs in (t.resp_headers, t.req_headers):
            for name, value in pairs:
                if _name_info(name)[0] == "upgrade":
                    # "websocket", "h2c", "TLS/1.2": the first protocol offered
                    return value.split(b",")[0].strip().lower().decode("latin-1") or "unknown"
        return "unknown"

    # -- parsing ---------------------------------------------------------------------

    def parse(self, data: bytes, pos: int) -> int:
        an = self.an
        if not self.headonly and not an.n_head_only:
            return self.feed(data, pos, len(data))  # the usual case
        pending = an.pending
        # A HEAD or CONNECT request is queued: its response must not be given to llhttp
        # whole, so find where each response starts. A response starts with "HTTP/1.",
        # so feed up to each occurrence and look at the parser's state there (an
        # occurrence inside a body only costs an extra call).
        n = len(data)
        while pos < n and self.mode is PARSE:
            if self.headonly or (self.cur is None and pending
                                 and pending[0].method in _HEAD_ONLY):
                pos = self.head_only(data, pos)
            elif not an.n_head_only:
                return self.feed(data, pos, n)
            else:
                nxt = data.find(b"HTTP/1.", pos + 1)
                if nxt < 0:
                    nxt = _partial_start(data, pos + 1)
                pos = self.feed(data, pos, nxt)
        return pos

    def head_only(self, data: bytes, pos: int) -> int:
        """Feed the header block of the response to a HEAD or CONNECT request, and no more.

        llhttp reads a body as the headers describe it, and cannot be told that the
        request was HEAD (llhttp's F_SKIPBODY can only be set by the callback's return
        value, which httptools does not pass through). So this finds the end of the
        header block itself, gives the parser only the headers, then ends the message and
        starts a fresh parser. A 2xx to CONNECT is the start of a tunnel; any other answer
        to CONNECT has an ordinary body, which is parsed."""
        n = len(data)
        if not self.headonly:
            # Between messages llhttp skips blank lines; skip them here too, so that the
            # header-end search below does not stop at them.
            while pos < n and data[pos] in b"\r\n":
                pos += 1
            if pos == n:
                return n
            self.headonly = True
            self.hd_tail = b""
        end = -1
        if self.hd_tail:
            probe = self.hd_tail + data[pos : pos + 2]
            e = _header_end(probe, 0)
            if e >= 0:
                end = pos + e - len(self.hd_tail)
        if end < 0:
            end = _header_end(data, pos)
        if end < 0:
            self.hd_tail = (self.hd_tail + data[pos:])[-2:]
            return self.feed(data, pos, n)
        self.headonly = False
        t = self.an.pending[0] if self.an.pending else None
        r = self.feed(data, pos, end)
        if self.mode is not PARSE or r != end or t is None:
            return r
        cur = self.cur
        if t.upgrade == "tunnel":  # 2xx to CONNECT: what follows is not HTTP
            if cur is t:
                self.cur = None
                self.an.finish_response(t, self.ts)
            self.an.start_tunnel()
            self.idle(data, end)
            return n
        if cur is t and t.method == "HEAD" and t.status is not None:
            # llhttp now waits for a body that will not come
            self.cur = None
            self.set_parser()
            self.an.finish_response(t, self.ts)
        return end

    def upgraded(self, data: bytes, at: int) -> int:
        # 101 Switching Protocols: on_message_complete has run; the rest is not HTTP/1.
        self.an.start_tunnel()
        self.idle(data, at)
        return len(data)

    def abort(self, error: str) -> None:
        t = self.cur
        self.cur = None
        if t.orphan:
            return
        if t.error is None:
            t.error = error
        if t.status is None and self.parser is not None:
            # the status line may have been read before the headers broke
            status = self.parser.get_status_code()
            if status >= 200 or status == 101:
                t.status = status
        self.an.finish_response(t, self.last_ts)

    def gap(self) -> None:
        self.headonly = False
        pending = self.an.pending
        if self.mode is PARSE and self.cur is None and pending and pending[0].req_done:
            # Between responses: the bytes lost are the start of the response to the
            # oldest queued request, which cannot be resynchronised on. (Pairing it with
            # the next response seen would shift every pair after it; Wireshark, which
            # pairs a response with the latest request, agrees on the next pair.)
            self.an.lost_response(pending[0])
        super().gap()

    def restart(self) -> None:
        self.headonly = False
        super().restart()


def _partial_start(data: bytes, pos: int) -> int:
    """Where a response start cut by the end of ``data`` ("H", "HT", ... "HTTP/1") begins
    (at ``pos`` or later), else ``len(data)``: such bytes must not reach llhttp before
    we know whether the response they start answers a HEAD."""
    n = len(data)
    for k in range(6, 0, -1):
        if n - k >= pos and data.endswith(_HTTP1[:k]):
            return n - k
    return n


_HTTP1 = b"HTTP/1."


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


def _keep(parts: list[bytes] | None, stored: int, cap: int,
          body: bytes) -> tuple[list[bytes], int]:
    """Add a body chunk to the stored parts of a message, up to ``cap`` bytes in all;
    return the parts and the bytes now stored."""
    room = cap - stored
    if len(body) > room:
        body = body[:room]
    if parts is None:
        parts = [body]
    else:
        parts.append(body)
    return parts, stored + len(body)


def _header_end(data: bytes, pos: int) -> int:
    """Offset just past the blank line that ends the header block in ``data[pos:]``, -1
    if there is none. A line ends with LF, optionally preceded by CR."""
    a = data.find(b"\n\r\n", pos)
    b = data.find(b"\n\n", pos)
    if b >= 0 and (a < 0 or b < a):
        return b + 2
    return a + 3 if a >= 0 else -1


class HttpAnalyzer(StreamAnalyzer):
    """HTTP/1.0 and HTTP/1.1 over one TCP connection.

    ``client_direction`` (0 or 1) is the direction that sends the requests.
    """

    protocol = "http"

    def __init__(self, ctx: StreamContext, client_direction: int) -> None:
        super().__init__(ctx)
        self.client = client_direction
        self.stats = ctx.stats
        self.redact = ctx.options.redact
        self.timeout = ctx.options.response_timeout_us
        #: requests whose final response has not ended yet, oldest first
        self.pending: deque[_Txn] = deque()
        #: how many of them are HEAD or CONNECT (see _ResponseSide.parse)
        self.n_head_only = 0
        self.req = _RequestSide(self)
        self.resp = _ResponseSide(self)
        c = client_direction
        self._endpoints = (ctx.ips[c], ctx.ports[c], ctx.ips[1 - c], ctx.ports[1 - c])
        self._cid: str | None = None
        # Records are sent when the hook returns, never from inside a parser callback: an
        # exception from ctx.emit then reaches the caller instead of becoming a parse error.
        self._out: list[dict[str, Any]] = []

    # -- StreamAnalyzer hooks ------------------------------------------------------------

    def on_data(self, direction: int, data: bytes, ts_us: int) -> None:
        if not data:
            return
        if direction == self.client:
            self.req.data(data, ts_us)
        else:
            self.resp.data(data, ts_us)
        if self._out:
            self._flush()

    def on_gap(self, direction: int, missing: int, ts_us: int) -> None:
        self.stats["http_gaps"] += 1
        side = self.req if direction == self.client else self.resp
        if side.mode is TUNNEL:
            self.stats["http_tunnel_bytes_ignored"] += missing
        side.gap()
        if self._out:
            self._flush()

    def tick(self, now_us: int) -> None:
        pending = self.pending
        timeout = self.timeout
        resp_cur = self.resp.cur
        while pending:
            t = pending[0]
            # FIFO: if the oldest request is not overdue (or its answer is arriving, or
            # it is still being sent), none behind it is.
            if t is resp_cur or not t.req_done or now_us - t.req_end_ts < timeout:
                break
            self.dequeue()
            self._unanswered(t)
        if self._out:
            self._flush()

    def on_close(self, ts_us: int) -> None:
        resp = self.resp
        t = resp.cur
        if t is not None and resp.mode is PARSE:
            if resp.in_head or not _close_delimited(t.resp_headers):
                # cut short: the header block, or the body of announced length, is not
                # complete
                if not t.orphan:
                    self.stats["http_truncated"] += 1
                resp.abort("truncated")
            else:  # a body delimited by the connection's end, which this is
                resp.cur = None
                self.finish_response(t, resp.last_ts)
        req = self.req
        t = req.cur
        if t is not None and req.mode is PARSE:
            req.cur = None  # cut short by the end of the connection
            t.req_done = True
            t.req_end_ts = req.last_ts
            if t.url is None:
                t.emitted = True
            elif t.resp_done:  # answered early (see test_early_response...)
                if t.error is None:
                    t.error = "truncated"
                self.emit(t)
            # else still queued: reported below as no_response
        while self.pending:
            self._unanswered(self.dequeue())
        if self._out:
            self._flush()
        # The sides and their parsers refer to each other (and to us): break the cycles
        # so the connection's objects are freed now, not by a later cyclic-GC pass.
        for side in (self.req, self.resp):
            side.parser = None
            side.an = None  # type: ignore[assignment]

    # -- transactions --------------------------------------------------------------------

    def finish_response(self, t: _Txn, ts: int) -> None:
        """The final response to ``t`` has ended (or was cut)."""
        t.resp_done = True
        t.resp_end_ts = ts
        pending = self.pending
        if pending and pending[0] is t:
            pending.popleft()
            if t.method in _HEAD_ONLY:
                self.n_head_only -= 1
        if t.orphan:
            return
        if t.req_done:
            self.emit(t)
        if self.req.wait_txn is t and t.upgrade is None:
            self.settle_wait(t)

    def dequeue(self) -> _Txn:
        """Take the oldest queued request off the queue."""
        t = self.pending.popleft()
        if t.method in _HEAD_ONLY:
            self.n_head_only -= 1
        return t

    def lost_response(self, t: _Txn) -> None:
        """The response to ``t`` (the oldest queued request) began in bytes not captured."""
        self.dequeue()
        t.resp_done = True
        if t.error is None:
            t.error = "gap"
        if t.req_done:
            self.emit(t)

    def settle_wait(self, t: _Txn) -> None:
        """The Upgrade/CONNECT request ``t`` was answered: switch or go on with HTTP/1.

        Called while the response parser may be inside a callback: the held client bytes
        are parsed now, before the next response begins, so that it finds its request
        queued (the two parsers are independent llhttp instances)."""
        if t.upgrade is not None:
            self.start_tunnel()
        elif self.req.mode is WAIT:
            self.req.resume()

    def start_tunnel(self) -> None:
        self.stats["http_tunnels"] += 1
        self.resp.mode = TUNNEL
        self.resp.cur = None
        self.req.tunnel()

    def _unanswered(self, t: _Txn) -> None:
        if t.method is None:  # a stand-in for a request lost in a gap
            t.emitted = True
            return
        if t.error is None:
            t.error = "no_response"
            self.stats["http_no_response"] += 1
        self.emit(t)
        if self.req.wait_txn is t and self.req.mode is WAIT:
            self.req.resume()

    def emit(self, t: _Txn) -> None:
        if t.emitted:
            return
        t.emitted = True
        if t.method is None:  # no request line was parsed: there is no request to report
            return
        redact = self.redact
        req_headers = _header_map(t.req_headers, redact)
        # (the headers of an interim response alone are not the response's)
        resp_headers = (_header_map(t.resp_headers, redact)
                        if t.resp_headers and t.status is not None else {})
        path = t.url.decode("utf-8", "replace") if t.url is not None else None
        req_body = b"".join(t.req_body) if t.req_body else None
        resp_body = b"".join(t.resp_body) if t.resp_body else None
        findings = _findings(req_headers, req_body, resp_headers, resp_body)
        if redact:
            if path is not None:
                path = redact_target(path)
            if req_body is not None:
                req_body = redact_body(req_body, req_headers.get("content-type"),
                                       t.req_size > len(req_body))
            if resp_body is not None:
                resp_body = redact_body(resp_body, resp_headers.get("content-type"),
                                        t.resp_size > len(resp_body))
        req_ts = t.req_ts
        resp_end = t.resp_end_ts
        ttfb = None
        if t.resp_ts is not None and t.req_end_ts is not None and t.resp_done:
            # An early response (before the request ended) counts as 0, not negative.
            ttfb = max(0, t.resp_ts - t.req_end_ts)
        cid = self._cid
        if cid is None:
            cid = self._cid = self.ctx.connection_id()
        version = t.version
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
            "method": t.method,
            "path": path,
            "host": req_headers.get("host"),
            "status": t.status,
            "request_headers": req_headers,
            "response_headers": resp_headers,
            "request_body": req_body,
            "response_body": resp_body,
            "request_body_size": t.req_size,
            "response_body_size": t.resp_size,
            "latency_us": resp_end - req_ts if resp_end is not None else None,
            "ttfb_us": ttfb,
            "error": t.error,
            "upgrade": t.upgrade,
        }
        if findings:  # for the detections, beside the record's fields (processors.findings)
            record = RecordWithFindings(record, Finding(findings))
        self._out.append(record)

    def _flush(self) -> None:
        out = self._out
        self._out = []
        emit = self.ctx.emit
        cid = self._cid
        self.stats["http_transactions"] += len(out)
        for record in out:
            emit(TRANSACTIONS, cid, record)
