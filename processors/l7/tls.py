"""TLS handshake analyser: one ``wire.tls`` record per handshake, from the cleartext only.

No keys, no decryption: everything comes from the records a passive observer can read —
the ClientHello and ServerHello (SNI, offered/selected ALPN, versions, cipher suite,
session id, PSK), the plaintext messages around them, ChangeCipherSpec, plaintext alerts,
and the *types and lengths* of encrypted records.

The per-segment work is the compiled core's (``rust/src/l7/tls``: record layer, handshake
message framing, hello parsing, the handshake state machine, gaps and errors, bounded
state). :class:`TlsAnalyzer` is the ``StreamAnalyzer`` over it: each hook hands the bytes
(or gap, tick, end) to ``_core.TlsConnection`` and gets back the handshake summary, which
it turns into the ``wire.tls`` record here, once per handshake, with the names of the
version, cipher suite and alert (:mod:`.tls_names`, generated from tshark's tables).

Layers, as in Zeek's ``ssl`` analyser and Wireshark's ``packet-tls.c``:

1. **Record layer**, per direction (``record.rs``, ``Side``): 5-byte header ``type(1) version(2)
   length(2)``. Records we cannot or need not read (application data, heartbeat,
   anything after the sender's ChangeCipherSpec in TLS <= 1.2) are *skipped* by length,
   without buffering: a long download costs one header parse per record.
2. **Handshake layer**, per direction: the bodies of plaintext handshake records are
   streamed, as they arrive, into a per-direction buffer cut into messages (4-byte header
   ``type(1) length(3)``) — one message may span records and TCP segments, one record may
   hold several messages, and a ServerHello is read before the rest of its record arrives.
3. **Handshake state machine**, per connection (``session.rs``, ``Phase``)::

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
longer than 256 KiB (the core's ``MAX_HANDSHAKE``), counts ``tls_parse_error`` and ``tls_parse_error.<reason>``,
stops parsing that direction (the other one goes on), and sets ``error`` in the record,
which is still emitted with what was learned. A gap inside a record body keeps the record
layer in step (the next header is where the length said): inside a skipped body it costs
nothing, inside a handshake body it loses the message in progress (``error = "gap"``). A
gap over a record header loses our place: we resynchronise on the next segment that starts
with a plausible record header (``tls_resync``). An SSLv2-compatible ClientHello is skipped (counted
``tls_sslv2_client_hello``); the server's reply is still parsed.

Decryption (issue 19): with ``options.tls_keylog`` (``--tls-keylog``, an NSS key log),
the core also decrypts the connection's records (``rust/src/tls_decrypt``: TLS 1.2
AES-GCM and ChaCha20-Poly1305, TLS 1.3) and gives their plaintext here after each call;
:class:`DecryptedStream` hands it to the HTTP/1.x analyser, whose transactions carry
``tls: true`` and this connection's ``connection_id``. Records not decrypted are counted
by reason when the connection ends (``tls_decrypt_drop.no_key``, ``.unsupported_suite``,
``.unsupported_version``, ``.bad_mac``, ``.gap``, ``.malformed``, ``.no_handshake``,
``.renegotiation``; without a key log every application-data record is a ``no_key``), and
those decrypted as ``tls_decrypted_records``. Plaintext goes to the analyser of what it
is (HTTP/1.x, HTTP/2 after ALPN ``h2``, Redis, PostgreSQL); other protocols are counted
(``tls_plaintext.unrecognised``) and not analysed.

Counters (``ctx.stats``): ``tls_handshakes``, ``tls_established``, ``tls_resumed``,
``tls_hello_retry_requests``, ``tls_alerts``, ``tls_encrypted_alerts``, ``tls_parse_error``
(+ ``.reason``), ``tls_gap``, ``tls_resync``, ``tls_sslv2_client_hello``,
``tls_renegotiation``, ``tls_unexpected_message``, ``tls_no_hello``, ``tls_timeout``.
"""

from __future__ import annotations

from typing import Any

# looks_like_tls_client_hello(data): is ``data`` (the first bytes one side sent) the start
# of a TLS ClientHello? True / False, or None when more bytes are needed to say (also an
# SSLv2-compatible ClientHello). The core's (rust/src/l7/tls/record.rs), public here.
from wirestream._core import (
    TlsConnection,
    looks_like_tls_client_hello,  # noqa: F401
)

from wirestream.topics import TLS

from ..state_codec import StateError
from .base import StreamAnalyzer, StreamContext
from .detect import Verdict, detect
from .http import HttpAnalyzer
from .http2 import Http2Analyzer
from .kafka import KafkaAnalyzer
from .postgres import PostgresAnalyzer
from .redis import RedisAnalyzer
from .tls_names import ALERT_DESCRIPTIONS, CIPHER_SUITES

#: ServerHello.random of a HelloRetryRequest: SHA-256("HelloRetryRequest") (RFC 8446 §4.1.3).
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

#: Largest record body: TLSCiphertext of TLS 1.2 (2^14 + 2048, RFC 5246 §6.2.3); TLS 1.3
#: allows less (2^14 + 256), so one limit serves both (the core's limit).
MAX_RECORD: int = TlsConnection.MAX_RECORD

VERSION_NAMES: dict[int, str] = {
    0x0300: "SSL3.0",
    0x0301: "TLS1.0",
    0x0302: "TLS1.1",
    0x0303: "TLS1.2",
    0x0304: "TLS1.3",
}


#: Facebook's TLS 1.3 drafts: the draft each number is (Wireshark's ``ssl_versions``).
FACEBOOK_DRAFTS: dict[int, int] = {0xFB17: 23, 0xFB1A: 26}


def version_name(version: int | None) -> str | None:
    """0x0303 -> "TLS1.2"; a TLS 1.3 draft as tshark names it, in our spelling: 0x7f17 ->
    "TLS1.3 (draft 23)" (tshark: "TLS 1.3 (draft 23)"), 0xfb17 -> "TLS1.3 (Facebook
    draft 23)"; unknown -> None. (``version_id`` keeps the number.)"""
    if version is None:
        return None
    name = VERSION_NAMES.get(version)
    if name is None:
        if version >> 8 == 0x7F:
            return f"TLS1.3 (draft {version & 0xFF})"
        if version in FACEBOOK_DRAFTS:
            return f"TLS1.3 (Facebook draft {FACEBOOK_DRAFTS[version]})"
    return name


def cipher_suite_name(suite: int) -> str | None:
    """IANA name of a cipher suite number (None if neither IANA nor Wireshark know it)."""
    return CIPHER_SUITES.get(suite)


def alert_name(description: int) -> str:
    """IANA identifier of an alert description ("handshake_failure"), ``unknown_N`` if none."""
    return ALERT_DESCRIPTIONS.get(description) or f"unknown_{description}"


#: Plaintext held while its first bytes do not yet say what it is.
PLAINTEXT_DETECT_BUFFER = 4096


class DecryptedStream:
    """The plaintext of one decrypted TLS connection, for the HTTP/1.x, HTTP/2, Redis,
    PostgreSQL, MySQL or Kafka analyser.

    Recognises the protocol from the first plaintext bytes (as :mod:`.session` does for
    cleartext connections), then feeds :class:`~.http.HttpAnalyzer` (or
    :class:`~.redis.RedisAnalyzer`) with a context of its own whose ``emit`` marks the
    records ``tls: true``."""

    def __init__(self, ctx: StreamContext) -> None:
        self.outer_emit = ctx.emit
        self.ctx = StreamContext(
            ips=ctx.ips, ports=ctx.ports, connection_id=ctx.connection_id, emit=self.emit,
            options=ctx.options, stats=ctx.stats, community_id=ctx.community_id,
            shared=getattr(ctx, "shared", None) or {})
        self.analyzer: StreamAnalyzer | None = None
        self.held: list[tuple[int, bytes, int]] = []
        self.held_bytes = 0
        self.done = False

    def emit(self, topic: str, key: str, record: dict[str, Any]) -> None:
        record["tls"] = True
        self.outer_emit(topic, key, record)

    def preset(self, analyzer: StreamAnalyzer) -> None:
        """The plaintext's analyser chosen by what came before TLS (MySQL: its SSL request;
        the plaintext starts with the login response, which says nothing by itself).
        ``analyzer`` must have been made with this stream's ``ctx``."""
        self.analyzer = analyzer
        self.ctx.stats[f"l7_connections.{analyzer.protocol}_in_tls"] += 1

    def data(self, direction: int, data: bytes, ts_us: int) -> None:
        if self.analyzer is not None:
            self.analyzer.on_data(direction, data, ts_us)
            return
        if self.done:
            return
        self.held.append((direction, data, ts_us))
        self.held_bytes += len(data)
        first = b"".join(c for d, c, _ in self.held if d == direction)
        verdict = detect(first)
        stats = self.ctx.stats
        if verdict is Verdict.NEED_MORE and self.held_bytes < PLAINTEXT_DETECT_BUFFER:
            return
        if verdict is Verdict.HTTP_REQUEST:
            make, client = HttpAnalyzer, direction
        elif verdict is Verdict.HTTP_RESPONSE:
            make, client = HttpAnalyzer, 1 - direction
        elif verdict is Verdict.RESP_COMMAND:  # Redis over TLS (managed Redis, --tls-port)
            make, client = RedisAnalyzer, direction
        elif verdict is Verdict.PG_STARTUP:  # PostgreSQL after its SSLRequest, or direct TLS
            make, client = PostgresAnalyzer, direction
        elif verdict is Verdict.H2_PREFACE:  # HTTP/2 (ALPN h2): gRPC over TLS, browsers
            make, client = Http2Analyzer, direction
        elif verdict is Verdict.KAFKA_REQUEST:  # Kafka's SSL and SASL_SSL listeners
            make, client = KafkaAnalyzer, direction
        else:
            stats["tls_plaintext.unrecognised"] += 1
            self.done = True
            self.held = []
            return
        self.analyzer = make(self.ctx, client)
        stats[f"l7_connections.{self.analyzer.protocol}_in_tls"] += 1
        held, self.held, self.held_bytes = self.held, [], 0
        for d, chunk, t in held:
            self.analyzer.on_data(d, chunk, t)

    def tick(self, now_us: int) -> None:
        if self.analyzer is not None:
            self.analyzer.tick(now_us)

    def close(self, ts_us: int) -> None:
        if self.analyzer is not None:
            self.analyzer.on_close(ts_us)


class TlsAnalyzer(StreamAnalyzer):
    """One TLS connection: parses both directions' records, emits one ``wire.tls`` record."""

    protocol = "tls"

    # The core is state too: its bytes go into a snapshot (_state_prepare) and it is
    # rebuilt from them on restore (_state_restored); processors/state_codec.py.
    _state_exclude = ("_core",)

    #: The plaintext's analyser, only when decrypting (an attribute of the instance then:
    #: the state of a run without a key log is what it was before decryption existed).
    _decrypted: DecryptedStream | None = None

    def __init__(self, ctx: StreamContext, client_direction: int) -> None:
        super().__init__(ctx)
        self.client = client_direction
        keylog = ctx.options.tls_keylog
        self._core = TlsConnection(client_direction, ctx.options.response_timeout_us, keylog)
        self._core_state = b""
        if keylog is not None:
            self._decrypted = DecryptedStream(ctx)

    # --- StreamAnalyzer hooks --------------------------------------------------------------

    def on_data(self, direction: int, data: bytes, ts_us: int) -> None:
        out = self._core.data(direction, data, ts_us)
        if out is not None:
            self._done(out)
        plain = self._decrypted
        if plain is not None:
            for d, chunk, ts in self._core.take_plaintext():
                plain.data(d, chunk, ts)

    def direct_core(self) -> TlsConnection | None:
        # The tracker feeds the core itself (its records' bodies are skipped there, no
        # Python bytes or call per segment), unless the plaintext is wanted here.
        return self._core if self._decrypted is None else None

    def on_core_output(self, out: Any, ts_us: int, handoff: bool) -> None:
        if out is not None:
            self._done(out)

    def on_gap(self, direction: int, missing: int, ts_us: int) -> None:
        # (The decryptor stops the direction at a gap: its plaintext has no gap to report.)
        out = self._core.gap(direction, missing)
        if out is not None:
            self._done(out)

    def tick(self, now_us: int) -> None:
        out = self._core.tick(now_us)
        if out is not None:
            self._done(out)
        if self._decrypted is not None:
            self._decrypted.tick(now_us)

    def on_close(self, ts_us: int) -> None:
        out = self._core.close()
        if out is not None:
            self._done(out)
        if self._decrypted is not None:
            self._decrypted.close(ts_us)

    # --- what the core says, for tests and bounds -------------------------------------------

    def phase(self) -> str:
        """The handshake phase: ``start``, ``client_hello``, ``retry``, ``retry_hello``,
        ``server_hello`` or ``done``."""
        return self._core.phase()

    def full_handshake(self) -> bool:
        """The server sent Certificate/ServerKeyExchange/CertificateRequest/ServerHelloDone
        (a full TLS <= 1.2 handshake, not an abbreviated one)."""
        return self._core.full_handshake()

    def reading(self, direction: int) -> str:
        """The record layer of ``direction``: ``parse``, ``resync`` or ``dead``."""
        return self._core.reading(direction)

    def buffered(self, direction: int) -> tuple[int, int]:
        """Bytes held for ``direction``: (unparsed record bytes, partial handshake message)."""
        return self._core.buffered(direction)

    # --- checkpoints ---------------------------------------------------------------------

    def _state_prepare(self) -> None:
        self._core_state = self._core.snapshot()

    def _state_restored(self) -> None:
        try:
            # The keys are not in the snapshot: the key log of this run derives them again.
            self._core = TlsConnection.restore(self._core_state, self.ctx.options.tls_keylog)
        except ValueError as exc:
            raise StateError(f"tls analyser: {exc}") from None
        self._core_state = b""

    # --- the record ------------------------------------------------------------------------

    def _done(self, out: tuple[tuple | None, list[tuple[str, int]]]) -> None:
        handshake, counts = out
        stats = self.ctx.stats
        for name, n in counts:
            stats[name] += n
        if handshake is not None:
            ctx = self.ctx
            cid = ctx.connection_id()
            ctx.emit(TLS, cid, self.record(cid, handshake))

    def record(self, cid: str, h: tuple) -> dict[str, Any]:
        """One ``wire.tls`` record from a handshake summary of the core."""
        (server_name, version, cipher, alpn, alpn_offered, hello_ts, client_hello_seen,
         handshake_ms, established, alert, alert_level, alert_from, resumed, hrr, error) = h
        ctx = self.ctx
        c, s = self.client, 1 - self.client
        return {
            "connection_id": cid,
            "client_ip": ctx.ips[c],
            "client_port": ctx.ports[c],
            "server_ip": ctx.ips[s],
            "server_port": ctx.ports[s],
            "server_name": server_name,
            "version": version_name(version),
            "version_id": version,
            "cipher_suite": cipher_suite_name(cipher) if cipher is not None else None,
            "cipher_suite_id": cipher,
            "alpn": alpn,
            "alpn_offered": alpn_offered,
            "client_hello_ts_us": hello_ts,
            "client_hello_seen": client_hello_seen,
            "handshake_ms": handshake_ms,
            "established": established,
            "alert": alert_name(alert) if alert is not None else None,
            "alert_level": alert_level,
            "alert_from": alert_from,
            "resumed": resumed,
            "hello_retry_request": hrr,
            "error": error,
            "community_id": ctx.community_id,
        }
