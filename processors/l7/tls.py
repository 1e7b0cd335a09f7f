"""TLS handshake analyser: one ``wire.tls`` record per handshake, from the cleartext only.

No keys, no decryption: everything comes from the records a passive observer can read —
the ClientHello and ServerHello (SNI, offered/selected ALPN, versions, cipher suite,
session id, PSK), the plaintext messages around them, ChangeCipherSpec, plaintext alerts,
and the *types and lengths* of encrypted records.

Layers, as in Zeek's ``ssl`` analyser and Wireshark's ``packet-tls.c``:

1. **Record layer**, per direction (:class:`_Side`): 5-byte header ``type(1) version(2)
   length(2)``. Records we cannot or need not read (application data, heartbeat,
   anything after the sender's ChangeCipherSpec in TLS <= 1.2) are *skipped* by length,
   without buffering: a long download costs one header parse per record.
2. **Handshake layer**, per direction: the bodies of plaintext handshake records are
   streamed, as they arrive, into a per-direction buffer cut into messages (4-byte header
   ``type(1) length(3)``) — one message may span records and TCP segments, one record may
   hold several messages, and a ServerHello is read before the rest of its record arrives.
3. **Handshake state machine**, per connection (``_Phase``)::

       START --ClientHello--> CLIENT_HELLO --ServerHello--> SERVER_HELLO --finished--> DONE
                                   |                             ^
                                   +--HelloRetryRequest--> RETRY +--ClientHello--> RETRY_HELLO
                                                                       --ServerHello--^
       START --ServerHello--> SERVER_HELLO   (the ClientHello was not captured)
       any phase --fatal alert / encrypted alert / on_close / timeout--> DONE

   The record is emitted on entering DONE. After DONE the record layer keeps running
   (cheaply) only to count encrypted alerts and renegotiations.

When is the handshake finished (``handshake_ms``, ``established``)? At the *earliest* of

- the first application-data record (content type 23) in either direction — in TLS <= 1.2
  this also covers False Start, where the client sends data before the server's Finished;
- TLS <= 1.2: both sides have sent their (encrypted) Finished, i.e. a handshake record
  after their ChangeCipherSpec — a client that connects and then idles (connection pools)
  does not stretch the handshake time until its first request;
- TLS 1.3 quirk: *every* record after the ServerHello is content type 23 (the server's
  EncryptedExtensions/Certificate/Finished flight too), so "first type-23 record" would
  measure ClientHello -> ServerHello. For TLS 1.3 the handshake finishes at the client's
  first type-23 record *after* the server's encrypted flight: the client's Finished (or
  its Certificate). Client type-23 records before the server's flight are 0-RTT early data.

Alerts: a plaintext alert record sets ``alert`` (IANA description name), ``alert_level``
and ``alert_from``; a fatal one ends the handshake (``handshake_ms`` runs to it). A warning
(e.g. ``unrecognized_name`` before a ServerHello) is recorded but the handshake goes on;
a later fatal alert replaces it. Encrypted alerts cannot be read: they are counted
(``tls_encrypted_alerts``); one seen before the handshake finished ends it with
``alert_level = "encrypted"`` and ``alert = null``. In TLS <= 1.2 an encrypted alert is an
alert record after the sender's ChangeCipherSpec. In TLS 1.3 alerts after the ServerHello
travel as type-23 records; the one place we can still tell is the client's first record
after the server's flight, which is a Finished (>= 4+32 bytes of plaintext) unless it is
exactly ``2 + 1 + tag`` bytes long (an encrypted alert: a client rejecting the server's
certificate). Padded alerts are not recognised.

Resumption (``resumed``): TLS <= 1.2 — the server echoes the client's non-empty session
id, or runs the abbreviated handshake (its ChangeCipherSpec follows the ServerHello with
no Certificate/ServerKeyExchange/CertificateRequest/ServerHelloDone in between; a
NewSessionTicket may sit in between). TLS 1.3 — the ServerHello carries ``pre_shared_key``.
Quirk: a TLS 1.3 server *always* echoes the client's (random) legacy_session_id for
middlebox compatibility (RFC 8446 D.4), so the echo rule must not be used for 1.3; and
the 1.3 "dummy" ChangeCipherSpec does not switch the record layer to ciphertext.

Robustness: no input raises. A malformed record header or hello, or a handshake message
longer than ``MAX_HANDSHAKE``, counts ``tls_parse_error`` and ``tls_parse_error.<reason>``,
stops parsing that direction (the other one goes on), and sets ``error`` in the record,
which is still emitted with what was learned. A gap inside a record body keeps the record
layer in step (the next header is where the length said): inside a skipped body it costs
nothing, inside a handshake body it loses the message in progress (``error = "gap"``). A
gap over a record header loses our place: we resynchronise on the next segment that starts
with a plausible record header (``tls_resync``). An SSLv2-compatible ClientHello is skipped (counted
``tls_sslv2_client_hello``); the server's reply is still parsed.

Counters (``ctx.stats``): ``tls_handshakes``, ``tls_established``, ``tls_resumed``,
``tls_hello_retry_requests``, ``tls_alerts``, ``tls_encrypted_alerts``, ``tls_parse_error``
(+ ``.reason``), ``tls_gap``, ``tls_resync``, ``tls_sslv2_client_hello``,
``tls_renegotiation``, ``tls_unexpected_message``, ``tls_no_hello``, ``tls_timeout``.
"""

from __future__ import annotations

import struct
from enum import Enum
from typing import Any

from wirestream.topics import TLS

from .base import StreamAnalyzer, StreamContext
from .tls_names import ALERT_DESCRIPTIONS, CIPHER_SUITES

# --- protocol constants -----------------------------------------------------------------

# Record content types (RFC 8446 §5.1, RFC 6520).
CT_CHANGE_CIPHER_SPEC = 20
CT_ALERT = 21
CT_HANDSHAKE = 22
CT_APPLICATION_DATA = 23
CT_HEARTBEAT = 24

# Handshake message types (RFC 8446 §4, RFC 5246 §7.4).
HS_HELLO_REQUEST = 0
HS_CLIENT_HELLO = 1
HS_SERVER_HELLO = 2
HS_CERTIFICATE = 11
HS_SERVER_KEY_EXCHANGE = 12
HS_CERTIFICATE_REQUEST = 13
HS_SERVER_HELLO_DONE = 14
#: Server messages that only a full (not resumed) TLS <= 1.2 handshake sends.
_FULL_HANDSHAKE_SERVER_MESSAGES = frozenset(
    {HS_CERTIFICATE, HS_SERVER_KEY_EXCHANGE, HS_CERTIFICATE_REQUEST, HS_SERVER_HELLO_DONE}
)

# Extensions (IANA "TLS ExtensionType Values").
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SESSION_TICKET = 35
EXT_PRE_SHARED_KEY = 41
EXT_SUPPORTED_VERSIONS = 43

#: ServerHello.random of a HelloRetryRequest: SHA-256("HelloRetryRequest") (RFC 8446 §4.1.3).
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

#: Largest record body: TLSCiphertext of TLS 1.2 (2^14 + 2048, RFC 5246 §6.2.3); TLS 1.3
#: allows less (2^14 + 256), so one limit serves both.
MAX_RECORD = (1 << 14) + 2048
#: Largest handshake message accepted (a certificate chain is the usual big one).
MAX_HANDSHAKE = 256 * 1024
#: Smallest ClientHello body: version 2 + random 32 + session_id 1 + suites 2+2 + compression 1+1.
MIN_CLIENT_HELLO = 41

VERSION_NAMES: dict[int, str] = {
    0x0300: "SSL3.0",
    0x0301: "TLS1.0",
    0x0302: "TLS1.1",
    0x0303: "TLS1.2",
    0x0304: "TLS1.3",
}
TLS13 = 0x0304

_HEADER = struct.Struct(">BBBH")  # record: type, version major, minor, length
_U16 = struct.Struct(">H")

class _Reading(Enum):
    """What the record layer of one direction does with its bytes."""

    PARSE = "parse"  # reading records
    RESYNC = "resync"  # lost our place after a gap: waiting for a segment that starts a record
    DEAD = "dead"  # gave up on this direction after a parse error


# Compared per segment and per record, so read as module globals: on CPython 3.11 an
# Enum member looked up on its class (``_Reading.PARSE``) costs ~200 ns, a global
# ~25 ns, as much as the int constants these were (python -m timeit).
_PARSE, _RESYNC, _DEAD = _Reading.PARSE, _Reading.RESYNC, _Reading.DEAD


class _Phase(Enum):
    """Handshake phases (see the module docstring)."""

    START = "start"
    CLIENT_HELLO = "client_hello"
    RETRY = "retry"  # HelloRetryRequest seen, the second ClientHello not yet
    RETRY_HELLO = "retry_hello"  # second ClientHello seen, the real ServerHello not yet
    SERVER_HELLO = "server_hello"
    DONE = "done"


def version_name(version: int | None) -> str | None:
    """0x0303 -> "TLS1.2"; TLS 1.3 drafts (0x7fNN) -> "TLS1.3"; unknown -> None."""
    if version is None:
        return None
    name = VERSION_NAMES.get(version)
    if name is None and version >> 8 == 0x7F:
        return "TLS1.3"
    return name


def _is_tls13(version: int | None) -> bool:
    return version is not None and (version == TLS13 or version >> 8 == 0x7F)


def cipher_suite_name(suite: int) -> str | None:
    """IANA name of a cipher suite number (None if neither IANA nor Wireshark know it)."""
    return CIPHER_SUITES.get(suite)


def alert_name(description: int) -> str:
    """IANA identifier of an alert description ("handshake_failure"), ``unknown_N`` if none."""
    return ALERT_DESCRIPTIONS.get(description) or f"unknown_{description}"


def looks_like_tls_client_hello(data: bytes) -> bool | None:
    """Is ``data`` (the first bytes one side sent) the start of a TLS ClientHello?

    True / False, or None when more bytes are needed to say. Checks the record header
    (handshake, version 3.x, a plausible length), the handshake header (ClientHello, a
    plausible length) and the client_version (3.x); also accepts an SSLv2-compatible
    ClientHello (2-byte header with the high bit set, message type 1, version 2 or 3.x).
    """
    n = len(data)
    if n == 0:
        return None
    b0 = data[0]
    if b0 == CT_HANDSHAKE:
        if n < 2:
            return None
        if data[1] != 3:
            return False
        if n < 3:
            return None
        if data[2] > 4:
            return False
        if n < 5:
            return None
        if not 4 <= _U16.unpack_from(data, 3)[0] <= MAX_RECORD:
            return False
        if n < 6:
            return None
        if data[5] != HS_CLIENT_HELLO:
            return False
        if n < 9:
            return None
        if not MIN_CLIENT_HELLO <= int.from_bytes(data[6:9], "big") <= MAX_HANDSHAKE:
            return False
        if n < 11:
            return None
        return data[9] == 3 and data[10] <= 4
    if b0 & 0x80:  # SSLv2 record header: 15-bit length, then msg_type 1 = CLIENT-HELLO
        if n < 3:
            return None
        if data[2] != 1 or (((b0 & 0x7F) << 8) | data[1]) < 9:
            return False
        if n < 5:
            return None
        return (data[3], data[4]) == (0, 2) or (data[3] == 3 and data[4] <= 4)
    return False


def _plausible_record_header(data: Any, pos: int = 0) -> bool:
    """Could a TLS record start at data[pos]? (resynchronisation after a gap)"""
    if len(data) - pos < 5:
        return False
    ctype, major, minor, length = _HEADER.unpack_from(data, pos)
    return CT_CHANGE_CIPHER_SPEC <= ctype <= CT_HEARTBEAT and major == 3 and minor <= 4 and (
        0 < length <= MAX_RECORD
    )


def _text(raw: bytes) -> str:
    """Host names and ALPN ids are ASCII; keep anything else visible and lossless."""
    return raw.decode("ascii", "backslashreplace")


# --- hello parsing -----------------------------------------------------------------------


class _Malformed(Exception):
    """A handshake message is shorter than its own length fields say."""


class _Reader:
    """Bounds-checked big-endian reader over ``buf[pos:end]``: overruns raise _Malformed."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        p = self.pos
        if p + n > self.end:
            raise _Malformed
        self.pos = p + n
        return self.buf[p : p + n]

    def u8(self) -> int:
        if self.pos >= self.end:
            raise _Malformed
        self.pos += 1
        return self.buf[self.pos - 1]

    def u16(self) -> int:
        if self.pos + 2 > self.end:
            raise _Malformed
        self.pos += 2
        return _U16.unpack_from(self.buf, self.pos - 2)[0]

    def vec8(self) -> bytes:
        return self.take(self.u8())

    def vec16(self) -> bytes:
        return self.take(self.u16())

    def sub16(self) -> _Reader:
        """The next ``opaque<0..2^16-1>`` as a reader of its own (no copy)."""
        n = self.u16()
        if self.pos + n > self.end:
            raise _Malformed
        sub = _Reader(self.buf, self.pos, self.pos + n)
        self.pos += n
        return sub

    def extensions(self) -> list[tuple[int, _Reader]]:
        """The ``Extension extensions<..>`` block that ends a hello (absent in SSL 3.0)."""
        if not self.remaining():
            return []
        block = self.sub16()
        out = []
        while block.remaining():
            etype = block.u16()
            out.append((etype, block.sub16()))
        return out


class _ClientHello:
    __slots__ = ("version", "session_id", "server_name", "alpn", "ticket", "psk", "versions")

    def __init__(self, version: int, session_id: bytes = b"") -> None:
        self.version = version
        self.session_id = session_id
        self.server_name: str | None = None
        self.alpn: list[str] = []
        self.ticket = False  # session_ticket extension with a ticket in it
        self.psk = False  # pre_shared_key extension (TLS 1.3 resumption offer)
        self.versions: list[int] = []  # supported_versions


def _parse_client_hello(body: bytes) -> _ClientHello:
    r = _Reader(body)
    version = r.u16()
    r.take(32)  # random
    session_id = r.vec8()
    suites = r.vec16()
    r.vec8()  # compression methods
    if len(session_id) > 32 or len(suites) % 2:
        raise _Malformed
    ch = _ClientHello(version, session_id)
    for etype, ext in r.extensions():
        if etype == EXT_SERVER_NAME and ch.server_name is None:
            names = ext.sub16()
            while names.remaining():
                name_type, name = names.u8(), names.vec16()
                if name_type == 0 and ch.server_name is None:  # host_name
                    ch.server_name = _text(name)
        elif etype == EXT_ALPN:
            protocols = ext.sub16()
            while protocols.remaining():
                ch.alpn.append(_text(protocols.vec8()))
        elif etype == EXT_SESSION_TICKET:
            ch.ticket = ext.remaining() > 0  # empty = "I support tickets", not a resumption
        elif etype == EXT_PRE_SHARED_KEY:
            ch.psk = True
        elif etype == EXT_SUPPORTED_VERSIONS:
            versions = _Reader(ext.vec8())
            while versions.remaining():
                ch.versions.append(versions.u16())
    return ch


class _ServerHello:
    __slots__ = ("version", "session_id", "cipher", "alpn", "psk", "retry")

    def __init__(self, version: int, session_id: bytes, cipher: int, retry: bool) -> None:
        self.version = version  # negotiated: supported_versions if present, else legacy
        self.session_id = session_id
        self.cipher = cipher
        self.retry = retry  # a HelloRetryRequest
        self.alpn: str | None = None
        self.psk = False


def _parse_server_hello(body: bytes) -> _ServerHello:
    r = _Reader(body)
    version = r.u16()
    retry = r.take(32) == HRR_RANDOM
    session_id = r.vec8()
    cipher = r.u16()
    r.u8()  # compression method
    if len(session_id) > 32:
        raise _Malformed
    sh = _ServerHello(version, session_id, cipher, retry)
    for etype, ext in r.extensions():
        if etype == EXT_SUPPORTED_VERSIONS:  # the ServerHello form: one selected_version
            sh.version = ext.u16()
        elif etype == EXT_ALPN:
            protocols = ext.sub16()
            if protocols.remaining():
                sh.alpn = _text(protocols.vec8())
        elif etype == EXT_PRE_SHARED_KEY:
            sh.psk = True
    return sh


# --- the analyser ------------------------------------------------------------------------


class _Side:
    """Record-layer state of one direction."""

    __slots__ = (
        "buf", "base", "chunks", "body_left", "body_hs", "hs", "hs_ts", "state", "records", "ccs",
        "encrypted", "finished", "sent_app_data",
    )

    def __init__(self) -> None:
        self.buf = bytearray()  # unparsed bytes: at most one record we read, plus a header
        self.base = 0  # stream offset of buf[0] (only used to find capture times)
        self.chunks: list[tuple[int, int]] = []  # (stream offset, ts) of the data in buf
        self.body_left = 0  # bytes still to come of the current record's body
        self.body_hs = False  # ... a plaintext handshake body (else skipped unread)
        self.hs = bytearray()  # plaintext handshake bytes not yet cut into messages
        self.hs_ts: int | None = None  # capture time of the first byte of hs
        self.state = _PARSE
        self.records = 0
        self.ccs = False  # sent ChangeCipherSpec
        self.encrypted = False  # records after the CCS are ciphertext (TLS <= 1.2)
        self.finished = False  # sent its encrypted Finished (TLS <= 1.2)
        self.sent_app_data = False  # sent a type-23 record

    def ts_at(self, offset: int) -> int:
        """Capture time of the segment that carried stream byte ``offset`` (still in buf)."""
        chunks = self.chunks
        for i in range(len(chunks) - 1, 0, -1):
            if chunks[i][0] <= offset:
                return chunks[i][1]
        return chunks[0][1]


class TlsAnalyzer(StreamAnalyzer):
    """One TLS connection: parses both directions' records, emits one ``wire.tls`` record."""

    protocol = "tls"

    def __init__(self, ctx: StreamContext, client_direction: int) -> None:
        super().__init__(ctx)
        self.client = client_direction
        self.server = 1 - client_direction
        self.sides = (_Side(), _Side())
        self.phase = _Phase.START
        self.closed = False
        self.hello_ts: int | None = None  # first ClientHello (or ServerHello, if no CH seen)
        self.client_hello_seen = False
        self.client_hello: _ClientHello | None = None
        self.server_hello: _ServerHello | None = None  # the last one (HRR, then the real one)
        self.hrr = False
        self.resumed = False
        self.full_handshake = False  # Certificate/SKE/CertificateRequest/SHD from the server
        self.end_ts: int | None = None  # when the handshake finished
        self.alert: str | None = None
        self.alert_level: str | None = None
        self.alert_from: str | None = None
        self.alert_ts: int | None = None
        self.error: str | None = None
        self.renegotiation_counted = False

    # --- StreamAnalyzer hooks --------------------------------------------------------------

    def on_data(self, direction: int, data: bytes, ts_us: int) -> None:
        if self.closed or not data:
            return
        side = self.sides[direction]
        try:
            self._feed(direction, side, memoryview(data), ts_us)
        except Exception:  # last-resort guard: a bug here must not take the pipeline down
            self._fail(side, "internal")

    def on_gap(self, direction: int, missing: int, ts_us: int) -> None:
        if self.closed or missing <= 0:
            return
        side = self.sides[direction]
        if side.state is _DEAD:
            return
        if side.body_left >= missing:
            # The hole is inside a record body: the record layer stays in step (the next
            # header is where the length said). A skipped body loses nothing; a handshake
            # body loses the message in progress, and the rest of the record is skipped
            # because the message boundaries in it are lost too.
            side.body_left -= missing
            side.base += missing
            if side.body_hs:
                side.body_hs = False
                side.hs.clear()
                side.hs_ts = None
                self._gap_error()
            return
        self._gap_error()
        side.base += len(side.buf) + side.body_left + missing
        side.buf.clear()
        side.chunks.clear()
        side.body_left = 0
        side.body_hs = False
        side.hs.clear()
        side.hs_ts = None
        side.state = _RESYNC

    def tick(self, now_us: int) -> None:
        # A handshake that has not finished after the response timeout is reported now
        # (with handshake_ms null) rather than when the idle connection is finally closed.
        if (
            not self.closed
            and self.phase not in (_Phase.START, _Phase.DONE)
            and self.hello_ts is not None
            and now_us - self.hello_ts >= self.ctx.options.response_timeout_us
        ):
            self.ctx.stats["tls_timeout"] += 1
            self._emit()

    def on_close(self, ts_us: int) -> None:
        if self.closed:
            return
        self.closed = True
        if self.phase is _Phase.DONE:
            return
        for side in self.sides:
            # The connection ended inside a handshake/alert record or message: the
            # handshake was cut short (capture end, or the peer gave up).
            if side.state is _PARSE and (side.hs or side.buf or side.body_hs):
                self._count_error("truncated")
        if self.hello_ts is None:
            self.ctx.stats["tls_no_hello"] += 1
            self.phase = _Phase.DONE
            return
        self._emit()

    # --- record layer -------------------------------------------------------------------------

    def _feed(self, d: int, side: _Side, data: memoryview, ts: int) -> None:
        if side.state is _DEAD:
            return
        if side.body_left and not side.body_hs:  # the body of a record we do not read
            n = min(side.body_left, len(data))
            side.body_left -= n
            side.base += n
            data = data[n:]
            if not data:
                return
        if side.state is _RESYNC:
            # After a gap we do not know where records start; segments usually begin with
            # one, so take the first segment that starts with a plausible header.
            if not _plausible_record_header(data):
                side.base += len(data)
                return
            side.state = _PARSE
            self.ctx.stats["tls_resync"] += 1
        buf = side.buf
        if buf:
            side.chunks.append((side.base + len(buf), ts))
            buf += data
            view: Any = buf
        else:  # the common case: parse straight from the segment, copy only a leftover
            side.chunks = [(side.base, ts)]
            view = data
        pos = self._records(d, side, view)
        if view is buf:
            del buf[:pos]
        else:
            buf += view[pos:]
        side.base += pos
        chunks = side.chunks
        while len(chunks) > 1 and chunks[1][0] <= side.base:
            del chunks[0]

    def _records(self, d: int, side: _Side, data: Any) -> int:
        """Parse the records in ``data``; return how many bytes were consumed (the rest is a
        partial alert/CCS record or header, kept for the next segment)."""
        pos = 0
        end = len(data)
        while side.state is _PARSE and pos < end:
            if side.body_left:
                n = min(side.body_left, end - pos)
                side.body_left -= n
                pos += n
                if side.body_hs:
                    # Handshake bodies go to the message layer as they arrive: a ServerHello
                    # is read even if the Certificate after it in the record is never complete.
                    side.body_hs = side.body_left > 0
                    side.hs += data[pos - n : pos]
                    self._handshake_messages(d, side, side.base + pos)
                continue
            if end - pos < 5:
                break
            if side.records == 0 and d == self.client and data[pos] & 0x80:
                # SSLv2-compatible ClientHello (2-byte header, msg_type 1): not parsed.
                if end - pos < 3 or data[pos + 2] != HS_CLIENT_HELLO:
                    self._fail(side, "bad_record")
                    break
                length = ((data[pos] & 0x7F) << 8) | data[pos + 1]
                self.ctx.stats["tls_sslv2_client_hello"] += 1
                side.records += 1
                if self.phase is _Phase.START:
                    self.hello_ts = side.ts_at(side.base + pos)
                    self.client_hello_seen = True
                    self.client_hello = _ClientHello(_U16.unpack_from(data, pos + 3)[0])
                    self.phase = _Phase.CLIENT_HELLO
                side.body_left = length
                pos += 2
                continue
            ctype, major, minor, length = _HEADER.unpack_from(data, pos)
            if not CT_CHANGE_CIPHER_SPEC <= ctype <= CT_HEARTBEAT or major != 3 or minor > 4:
                self._fail(side, "bad_record")
                break
            if length > MAX_RECORD:
                self._fail(side, "record_overflow")
                break
            rec_ts = side.ts_at(side.base + pos)
            if ctype in (CT_APPLICATION_DATA, CT_HEARTBEAT) or side.encrypted:
                side.records += 1
                self._opaque_record(d, side, ctype, length, rec_ts)
                side.body_left = length
                pos += 5
                continue
            if ctype == CT_HANDSHAKE:
                side.records += 1
                side.body_left = length
                side.body_hs = length > 0
                pos += 5
                continue
            if end - pos < 5 + length:
                break  # an alert or CCS record (a few bytes): wait for all of it
            side.records += 1
            body_start = pos + 5
            pos = body_start + length
            if ctype == CT_ALERT:
                self._alert_record(d, data[body_start:pos], rec_ts)
            elif ctype == CT_CHANGE_CIPHER_SPEC:
                self._change_cipher_spec(d, side)
            # heartbeat is opaque; nothing else passes the type check
        return pos

    def _opaque_record(self, d: int, side: _Side, ctype: int, length: int, ts: int) -> None:
        """A record we skip by length: its type and size still tell us things."""
        if ctype == CT_ALERT:  # after the sender's ChangeCipherSpec: encrypted
            self.ctx.stats["tls_encrypted_alerts"] += 1
            if self._handshake_pending():
                self._set_alert(d, None, "encrypted", ts)
                self._emit()
        elif ctype == CT_HANDSHAKE:  # encrypted handshake (TLS <= 1.2)
            if not side.finished:
                side.finished = True  # the first one after the CCS is the Finished
                if all(s.finished for s in self.sides) and self._handshake_pending():
                    self._finished(ts)
            elif not self.renegotiation_counted:
                # Another encrypted handshake message: HelloRequest/ClientHello of a
                # renegotiation, which is out of scope (and unreadable anyway).
                self.renegotiation_counted = True
                self.ctx.stats["tls_renegotiation"] += 1
        elif ctype == CT_APPLICATION_DATA:
            side.sent_app_data = True
            if not self._handshake_pending():
                return
            if not self._tls13():
                self._finished(ts)  # TLS <= 1.2: first application data, either direction
            elif d == self.client and self.sides[self.server].sent_app_data:
                # TLS 1.3: the client's first record after the server's encrypted flight
                # is its Finished (or Certificate) — or an encrypted alert, which has
                # exactly 2 bytes of alert + 1 of content type + the AEAD tag.
                sh = self.server_hello
                tag = 8 if sh is not None and sh.cipher == 0x1305 else 16  # CCM_8: 8 bytes
                if length == 3 + tag:
                    self.ctx.stats["tls_encrypted_alerts"] += 1
                    self._set_alert(d, None, "encrypted", ts)
                    self._emit()
                else:
                    self._finished(ts)
            # else: the server's flight, or the client's 0-RTT early data: not finished yet

    def _change_cipher_spec(self, d: int, side: _Side) -> None:
        side.ccs = True
        if self._tls13():
            return  # the middlebox-compatibility dummy CCS (RFC 8446 D.4): no effect
        side.encrypted = True
        side.hs.clear()  # a message cut by a CCS cannot be completed
        side.hs_ts = None
        if d == self.server and self.phase is _Phase.SERVER_HELLO and not self.full_handshake:
            # ServerHello [NewSessionTicket] ChangeCipherSpec: the abbreviated handshake.
            self.resumed = True

    def _alert_record(self, d: int, body: Any, ts: int) -> None:
        if len(body) != 2:
            # Not one plaintext alert (those are exactly level + description): we missed
            # the sender's switch to ciphertext, or it is garbage. Either way unreadable.
            self.ctx.stats["tls_encrypted_alerts"] += 1
            if self._handshake_pending():
                self._set_alert(d, None, "encrypted", ts)
                self._emit()
            return
        level, description = body[0], body[1]
        self.ctx.stats["tls_alerts"] += 1
        if not self._handshake_pending():
            return
        level_name = {1: "warning", 2: "fatal"}.get(level, f"unknown_{level}")
        if self.alert is None or (level == 2 and self.alert_level != "fatal"):
            self._set_alert(d, alert_name(description), level_name, ts)
        if level == 2:
            self._emit()

    # --- handshake layer ----------------------------------------------------------------------

    def _handshake_messages(self, d: int, side: _Side, record_end: int) -> None:
        """Cut complete messages off ``side.hs``; the last record ends at ``record_end``."""
        hs = side.hs
        while len(hs) >= 4:
            if side.hs_ts is None:  # the message starts in the record just added
                self._message_start(d, side, record_end)
            mtype = hs[0]
            mlen = int.from_bytes(hs[1:4], "big")
            if mlen > MAX_HANDSHAKE:
                self._fail(side, "handshake_too_long")
                return
            if len(hs) < 4 + mlen:
                return
            body = bytes(hs[4 : 4 + mlen])
            ts = side.hs_ts
            del hs[: 4 + mlen]
            side.hs_ts = None
            self._message(d, side, mtype, body, ts)
            if side.state is not _PARSE:
                return
        if hs and side.hs_ts is None:
            self._message_start(d, side, record_end)

    def _message_start(self, d: int, side: _Side, record_end: int) -> None:
        """The first byte of a message (``side.hs[0]``) is in the record ending at record_end."""
        side.hs_ts = side.ts_at(record_end - len(side.hs))
        if d == self.client and side.hs[0] == HS_CLIENT_HELLO and self.hello_ts is None:
            # The handshake starts here even if the ClientHello turns out truncated or
            # malformed: the record is still emitted, with what we know.
            self.hello_ts = side.hs_ts
            self.client_hello_seen = True

    def _message(self, d: int, side: _Side, mtype: int, body: bytes, ts: int) -> None:
        if mtype == HS_CLIENT_HELLO and d == self.client:
            self._client_hello(side, body, ts)
        elif mtype == HS_SERVER_HELLO and d == self.server:
            self._server_hello(side, body, ts)
        elif d == self.server and mtype in _FULL_HANDSHAKE_SERVER_MESSAGES:
            self.full_handshake = True
        elif mtype in (HS_CLIENT_HELLO, HS_SERVER_HELLO):
            self.ctx.stats["tls_unexpected_message"] += 1  # a hello from the wrong side
        elif mtype == HS_HELLO_REQUEST and d == self.server and self.phase is not _Phase.START:
            self._renegotiation()
        # Everything else (client Certificate/KeyExchange/CertificateVerify, server
        # NewSessionTicket/CertificateStatus, ...) carries nothing the record needs.

    def _client_hello(self, side: _Side, body: bytes, ts: int) -> None:
        if self.phase is _Phase.START:
            retry = False
        elif self.phase is _Phase.RETRY:
            retry = True
        else:
            # A plaintext ClientHello while a handshake is already under way or done:
            # a renegotiation (or a client restarting): one record per handshake.
            self._renegotiation()
            return
        try:
            ch = _parse_client_hello(body)
        except _Malformed:
            if not retry:
                self.phase = _Phase.CLIENT_HELLO  # it was a ClientHello: the handshake started
            self._fail(side, "bad_client_hello")
            return
        if retry:
            # The second ClientHello repeats the first with a new key share; keep what the
            # first said, fill in what it lacked.
            first = self.client_hello
            if first is not None:
                first.server_name = first.server_name or ch.server_name
                first.alpn = first.alpn or ch.alpn
                first.psk = ch.psk
                first.versions = ch.versions or first.versions
            else:
                self.client_hello = ch
            self.phase = _Phase.RETRY_HELLO
            return
        self.client_hello = ch
        self.hello_ts = ts
        self.phase = _Phase.CLIENT_HELLO

    def _server_hello(self, side: _Side, body: bytes, ts: int) -> None:
        if self.phase not in (_Phase.START, _Phase.CLIENT_HELLO, _Phase.RETRY,
                              _Phase.RETRY_HELLO):
            self.ctx.stats["tls_unexpected_message"] += 1  # a second ServerHello
            return
        try:
            sh = _parse_server_hello(body)
        except _Malformed:
            self._fail(side, "bad_server_hello")
            return
        if self.phase is _Phase.START:  # we never saw the ClientHello
            self.hello_ts = ts
        if sh.retry:
            if self.hrr:
                self.ctx.stats["tls_unexpected_message"] += 1  # a second HRR is illegal
                return
            self.hrr = True
            self.ctx.stats["tls_hello_retry_requests"] += 1
            self.server_hello = sh  # version and suite now; the real ServerHello confirms
            self.phase = _Phase.RETRY
            return
        self.server_hello = sh
        self.phase = _Phase.SERVER_HELLO
        ch = self.client_hello
        if _is_tls13(sh.version):
            self.resumed = sh.psk
        elif ch is not None and ch.session_id and sh.session_id == ch.session_id:
            self.resumed = True  # the server resumes the session the client named

    def _renegotiation(self) -> None:
        if not self.renegotiation_counted:
            self.renegotiation_counted = True
            self.ctx.stats["tls_renegotiation"] += 1

    # --- state helpers --------------------------------------------------------------------

    def _tls13(self) -> bool:
        """Is this (going to be) TLS 1.3? From the ServerHello/HRR, else from the offer."""
        sh = self.server_hello
        if sh is not None:
            return _is_tls13(sh.version)
        ch = self.client_hello
        return ch is not None and any(_is_tls13(v) for v in ch.versions)

    def _handshake_pending(self) -> bool:
        return self.hello_ts is not None and self.phase is not _Phase.DONE

    def _set_alert(self, d: int, name: str | None, level: str, ts: int) -> None:
        self.alert = name
        self.alert_level = level
        self.alert_from = "client" if d == self.client else "server"
        self.alert_ts = ts

    def _gap_error(self) -> None:
        self.ctx.stats["tls_gap"] += 1
        if self.phase is not _Phase.DONE and self.error is None:
            self.error = "gap"

    def _finished(self, ts: int) -> None:
        self.end_ts = ts
        self._emit()

    def _count_error(self, reason: str) -> None:
        stats = self.ctx.stats
        stats["tls_parse_error"] += 1
        stats[f"tls_parse_error.{reason}"] += 1
        if self.phase is not _Phase.DONE and self.error is None:
            self.error = "parse_error"

    def _fail(self, side: _Side, reason: str) -> None:
        """Give up on this direction: count, drop its buffers, keep the other one going."""
        self._count_error(reason)
        side.state = _DEAD
        side.buf = bytearray()
        side.hs = bytearray()
        side.chunks = []
        side.body_left = 0
        side.body_hs = False

    def _emit(self) -> None:
        if self.phase is _Phase.DONE or self.hello_ts is None:
            return
        self.phase = _Phase.DONE
        ctx = self.ctx
        ch, sh = self.client_hello, self.server_hello
        established = self.end_ts is not None
        end = self.end_ts if established else self.alert_ts
        handshake_ms = None
        if self.client_hello_seen and end is not None:
            handshake_ms = (end - self.hello_ts) / 1000.0
        c, s = self.client, self.server
        record: dict[str, Any] = {
            "connection_id": ctx.connection_id(),
            "client_ip": ctx.ips[c],
            "client_port": ctx.ports[c],
            "server_ip": ctx.ips[s],
            "server_port": ctx.ports[s],
            "server_name": ch.server_name if ch is not None else None,
            "version": version_name(sh.version) if sh is not None else None,
            "version_id": sh.version if sh is not None else None,
            "cipher_suite": cipher_suite_name(sh.cipher) if sh is not None else None,
            "cipher_suite_id": sh.cipher if sh is not None else None,
            "alpn": sh.alpn if sh is not None else None,
            "alpn_offered": list(ch.alpn) if ch is not None else [],
            "client_hello_ts_us": self.hello_ts,
            "client_hello_seen": self.client_hello_seen,
            "handshake_ms": handshake_ms,
            "established": established,
            "alert": self.alert,
            "alert_level": self.alert_level,
            "alert_from": self.alert_from,
            "resumed": self.resumed,
            "hello_retry_request": self.hrr,
            "error": self.error,
        }
        stats = ctx.stats
        stats["tls_handshakes"] += 1
        if established:
            stats["tls_established"] += 1
        if self.resumed:
            stats["tls_resumed"] += 1
        ctx.emit(TLS, ctx.connection_id(), record)
