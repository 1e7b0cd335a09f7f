"""TLS handshake analyser: crafted handshakes, fuzzing, and tshark as the referee.

The crafted handshakes are built byte by byte here (records, handshake messages,
extensions), so each test controls exactly where records and segments are cut. The
tshark cross-check runs the analyser over every capture in tests/data and compares SNI,
negotiated version, cipher suite, ALPN and plaintext alerts per tcp.stream.
"""

from __future__ import annotations

import json
import os
import struct
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import fastavro
import pytest
from helpers import DATA, TSHARK, real_captures, requires_tshark, tshark_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wirestream.processors.l7.base import L7Options, StreamContext
from wirestream.processors.l7.tls import (
    HRR_RANDOM,
    MAX_RECORD,
    TlsAnalyzer,
    alert_name,
    looks_like_tls_client_hello,
    version_name,
)
from wirestream.processors.l7.tls_names import ALERT_DESCRIPTIONS, CIPHER_SUITES, tshark_tables
from wirestream.processors.state_codec import StateError
from wirestream.producers.capture_file import open_capture
from wirestream.producers.decode import FrameDecoder
from wirestream.schemas import schema_text

from wirestream.topics import TLS

CLIENT, SERVER = ("192.0.2.10", 40000), ("198.51.100.20", 443)

# --- building TLS bytes ----------------------------------------------------------------------


def rec(ctype: int, body: bytes, version: int = 0x0303) -> bytes:
    """One TLS record."""
    return struct.pack(">BHH", ctype, version, len(body)) + body


def hs(mtype: int, body: bytes) -> bytes:
    """One handshake message."""
    return bytes([mtype]) + len(body).to_bytes(3, "big") + body


def ext(etype: int, data: bytes) -> bytes:
    return struct.pack(">HH", etype, len(data)) + data


def _vec16(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def client_hello(sni: str | None = "www.example.com", alpn: tuple[str, ...] = ("h2", "http/1.1"),
                 session_id: bytes = b"", versions: tuple[int, ...] = (), ticket: bytes | None = None,
                 psk: bool = False, suites: tuple[int, ...] = (0x1301, 0xC02F, 0xC030),
                 version: int = 0x0303) -> bytes:
    exts = b""
    if sni is not None:
        name = sni.encode()
        exts += ext(0, _vec16(b"\x00" + _vec16(name)))
    if alpn:
        exts += ext(16, _vec16(b"".join(bytes([len(p)]) + p.encode() for p in alpn)))
    if ticket is not None:
        exts += ext(35, ticket)
    if versions:
        v = b"".join(struct.pack(">H", x) for x in versions)
        exts += ext(43, bytes([len(v)]) + v)
    if psk:  # pre_shared_key must be last; its content is not parsed
        exts += ext(41, _vec16(_vec16(b"ticket") + b"\x00\x00\x00\x01") + _vec16(b"\x20" + b"b" * 32))
    body = (struct.pack(">H", version) + b"\x11" * 32 + bytes([len(session_id)]) + session_id
            + _vec16(b"".join(struct.pack(">H", s) for s in suites)) + b"\x01\x00" + _vec16(exts))
    return hs(1, body)


def server_hello(cipher: int = 0xC02F, version: int = 0x0303, session_id: bytes = b"",
                 selected: int | None = None, alpn: str | None = None, psk: bool = False,
                 random: bytes = b"\x22" * 32, extensions: bool = True) -> bytes:
    exts = b""
    if selected is not None:
        exts += ext(43, struct.pack(">H", selected))
    if alpn is not None:
        exts += ext(16, _vec16(bytes([len(alpn)]) + alpn.encode()))
    if psk:
        exts += ext(41, b"\x00\x00")
    body = (struct.pack(">H", version) + random + bytes([len(session_id)]) + session_id
            + struct.pack(">HB", cipher, 0) + (_vec16(exts) if extensions else b""))
    return hs(2, body)


CCS = rec(20, b"\x01")
CERT = hs(11, b"\x00\x03\x00" + b"\x00" * 0x300)  # content is not parsed
SKE, SHD, CKE, NST = hs(12, b"k" * 100), hs(14, b""), hs(16, b"p" * 66), hs(4, b"t" * 80)
ENC_FINISHED = rec(22, b"\xaa" * 40)  # a TLS <= 1.2 Finished, encrypted after the CCS


def alert(level: int, description: int) -> bytes:
    return rec(21, bytes([level, description]))


# --- running the analyser -----------------------------------------------------------------------

_SCHEMA = fastavro.parse_schema(json.loads(schema_text("tls")))
_IDENTITY = ["client_pod", "client_namespace", "client_workload", "client_node", "client_pid",
             "client_process", "server_pod", "server_namespace", "server_workload", "server_node",
             "server_pid", "server_process", "server_service"]
#: Filled by the engine (the outer path) and enrichment (zones), not by the analyser.
_ENGINE = ["tunnel", "client_zone", "server_zone", "cross_zone"]
#: What the analyser must fill: every schema field but source_id, identity and the engine's.
ANALYSER_FIELDS = {f["name"] for f in json.loads(schema_text("tls"))["fields"]} - {"source_id", *_IDENTITY, *_ENGINE}


def check_record(record: dict) -> None:
    """Every field the analyser owns is there, and the full record is valid Avro."""
    assert set(record) == ANALYSER_FIELDS
    full = {**record, "source_id": "src", **dict.fromkeys(_IDENTITY)}
    fastavro.validation.validate(full, _SCHEMA, raise_errors=True)


class Conn:
    """One analyser on one connection; direction 0 is the client unless told otherwise."""

    def __init__(self, client: int = 0) -> None:
        self.records: list[dict] = []
        self.stats: Counter[str] = Counter()
        ips = (CLIENT[0], SERVER[0]) if client == 0 else (SERVER[0], CLIENT[0])
        ports = (CLIENT[1], SERVER[1]) if client == 0 else (SERVER[1], CLIENT[1])
        self.ctx = StreamContext(ips=ips, ports=ports, connection_id=lambda: "conn-1",
                                 emit=self._emit, options=L7Options(), stats=self.stats)
        self.analyzer = TlsAnalyzer(self.ctx, client)
        self.client, self.server = client, 1 - client

    def _emit(self, topic: str, key: str, record: dict) -> None:
        assert topic == TLS and key == "conn-1"
        check_record(record)
        self.records.append(record)

    def c(self, data: bytes, ts: int) -> Conn:
        self.analyzer.on_data(self.client, data, ts)
        return self

    def s(self, data: bytes, ts: int) -> Conn:
        self.analyzer.on_data(self.server, data, ts)
        return self

    def close(self, ts: int = 10**9) -> dict | None:
        self.analyzer.on_close(ts)
        assert len(self.records) <= 1
        assert self.stats["tls_parse_error.internal"] == 0
        return self.records[0] if self.records else None


def tls12_full() -> list[tuple[int, bytes, int]]:
    """(direction, bytes, ts): a full TLS 1.2 handshake, then application data."""
    return [
        (0, rec(22, client_hello(session_id=b"\x07" * 32), version=0x0301), 1000),
        (1, rec(22, server_hello(session_id=b"\x08" * 32, alpn="h2") + CERT + SKE + SHD), 2000),
        (0, rec(22, CKE) + CCS + ENC_FINISHED, 3000),
        (1, rec(22, NST) + CCS + ENC_FINISHED, 4000),
        (0, rec(23, b"\xcc" * 100), 5000),
        (1, rec(23, b"\xdd" * 300), 6000),
    ]


def tls13_full(cipher: int = 0x1301) -> list[tuple[int, bytes, int]]:
    sid = b"\x09" * 32  # middlebox-compatibility session id: always echoed in TLS 1.3
    return [
        (0, rec(22, client_hello(versions=(0x0304, 0x0303), session_id=sid), version=0x0301), 1000),
        (1, rec(22, server_hello(cipher, selected=0x0304, session_id=sid)) + CCS
         + rec(23, b"e" * 40) + rec(23, b"c" * 900) + rec(23, b"v" * 280) + rec(23, b"f" * 69), 2000),
        (0, CCS + rec(23, b"F" * 53), 3000),  # the client's Finished
        (0, rec(23, b"G" * 400), 4000),
        (1, rec(23, b"H" * 4000), 5000),
    ]


def run(events: list[tuple[int, bytes, int]], close_ts: int = 10**9, client: int = 0) -> tuple[dict | None, Counter]:
    conn = Conn(client)
    for d, data, ts in events:
        conn.analyzer.on_data(d, data, ts)
    return conn.close(close_ts), conn.stats


# --- crafted handshakes ----------------------------------------------------------------------


def test_tls12_full_handshake() -> None:
    r, stats = run(tls12_full())
    assert r["server_name"] == "www.example.com"
    assert (r["version"], r["version_id"]) == ("TLS1.2", 0x0303)
    assert (r["cipher_suite"], r["cipher_suite_id"]) == ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 0xC02F)
    assert r["alpn"] == "h2" and r["alpn_offered"] == ["h2", "http/1.1"]
    assert r["client_hello_ts_us"] == 1000 and r["client_hello_seen"]
    # Both Finished are in at 4000 (before the first application data at 5000).
    assert r["handshake_ms"] == 3.0 and r["established"]
    assert not r["resumed"] and not r["hello_retry_request"]
    assert r["alert"] is None and r["error"] is None
    assert (r["client_ip"], r["client_port"], r["server_ip"], r["server_port"]) == (*CLIENT, *SERVER)
    assert r["connection_id"] == "conn-1"
    assert stats["tls_handshakes"] == 1 and stats["tls_parse_error"] == 0


def test_record_is_emitted_when_the_handshake_finishes() -> None:
    conn = Conn()
    for d, data, ts in tls12_full()[:4]:
        conn.analyzer.on_data(d, data, ts)
    assert len(conn.records) == 1  # at the server's Finished, not at close
    conn.c(rec(23, b"x" * 10), 5000).close()


def test_false_start_ends_at_first_application_data() -> None:
    events = tls12_full()
    events.insert(3, (0, rec(23, b"early" * 10), 3500))  # client data before the server Finished
    r, _ = run(events)
    assert r["handshake_ms"] == 2.5 and r["established"]


def test_client_direction_1() -> None:
    events = [(1 - d, data, ts) for d, data, ts in tls12_full()]
    r, _ = run(events, client=1)
    assert (r["client_ip"], r["client_port"], r["server_ip"], r["server_port"]) == (*CLIENT, *SERVER)
    assert r["server_name"] == "www.example.com" and r["handshake_ms"] == 3.0


def test_client_hello_split_at_every_byte() -> None:
    """A ClientHello cut into two segments anywhere; its time is that of its first byte."""
    data = rec(22, client_hello(versions=(0x0304, 0x0303)))
    for i in range(1, len(data)):
        conn = Conn().c(data[:i], 100).c(data[i:], 200)
        conn.s(rec(22, server_hello(0x1302, selected=0x0304)), 300)
        r = conn.close()
        assert r["server_name"] == "www.example.com", i
        assert r["version"] == "TLS1.3" and r["cipher_suite"] == "TLS_AES_256_GCM_SHA384", i
        # the handshake message starts after the 5-byte record header
        assert r["client_hello_ts_us"] == (100 if i > 5 else 200), i
        assert conn.stats["tls_parse_error"] == 0, i


def test_whole_handshake_one_byte_per_segment() -> None:
    conn = Conn()
    for d, data, ts in tls12_full():
        for k in range(len(data)):
            conn.analyzer.on_data(d, data[k : k + 1], ts + k)
    r = conn.close()
    assert r["client_hello_ts_us"] == 1000 + 5  # the byte after the record header
    assert r["cipher_suite_id"] == 0xC02F and r["alpn"] == "h2" and r["established"]
    assert conn.stats["tls_parse_error"] == 0


def test_client_hello_split_over_records_at_every_byte() -> None:
    """One handshake message fragmented over two records, cut anywhere, in one segment or two."""
    msg = client_hello(sni="split.example.org")
    for i in range(1, len(msg)):
        both = rec(22, msg[:i]) + rec(22, msg[i:])
        for segments in ([both], [rec(22, msg[:i]), rec(22, msg[i:])]):
            conn = Conn()
            for k, seg in enumerate(segments):
                conn.c(seg, 100 + k)
            r = conn.close()
            assert r["server_name"] == "split.example.org", i
            assert r["client_hello_ts_us"] == 100, i
            assert conn.stats["tls_parse_error"] == 0, i


def test_several_messages_in_one_record_and_one_message_over_three_records() -> None:
    sh = server_hello(alpn="http/1.1")
    flight = sh + CERT + SKE + SHD
    thirds = [flight[: len(flight) // 3], flight[len(flight) // 3 : 2 * len(flight) // 3],
              flight[2 * len(flight) // 3 :]]
    r, _ = run([(0, rec(22, client_hello()), 1), (1, b"".join(rec(22, t) for t in thirds), 2),
                (0, rec(22, CKE) + CCS + ENC_FINISHED, 3), (1, CCS + ENC_FINISHED, 4)])
    assert r["alpn"] == "http/1.1" and not r["resumed"] and r["handshake_ms"] == 0.003


def test_tls13_with_supported_versions() -> None:
    r, stats = run(tls13_full())
    assert (r["version"], r["version_id"]) == ("TLS1.3", 0x0304)
    assert r["cipher_suite"] == "TLS_AES_128_GCM_SHA256" and r["cipher_suite_id"] == 0x1301
    # Every record after the ServerHello is type 23; the handshake ends with the client's
    # Finished (3000), not at the server's encrypted flight (2000).
    assert r["handshake_ms"] == 2.0 and r["established"]
    assert not r["resumed"]  # the echoed legacy_session_id is not a resumption in TLS 1.3
    assert stats["tls_parse_error"] == 0


def test_tls13_early_data_is_not_the_end_of_the_handshake() -> None:
    events = tls13_full()
    events.insert(1, (0, rec(23, b"0rtt" * 50), 1500))  # 0-RTT data before the server's flight
    r, _ = run(events)
    assert r["handshake_ms"] == 2.0


def test_hello_retry_request() -> None:
    events = [
        (0, rec(22, client_hello(versions=(0x0304,)), version=0x0301), 1000),
        (1, rec(22, server_hello(0x1302, selected=0x0304, random=HRR_RANDOM)) + CCS, 2000),
        (0, CCS + rec(22, client_hello(versions=(0x0304,))), 3000),
        (1, rec(22, server_hello(0x1302, selected=0x0304)) + rec(23, b"x" * 500), 4000),
        (0, rec(23, b"F" * 69), 5000),
    ]
    r, stats = run(events)
    assert r["hello_retry_request"] and stats["tls_hello_retry_requests"] == 1
    assert r["client_hello_ts_us"] == 1000  # the first ClientHello
    assert r["version"] == "TLS1.3" and r["cipher_suite"] == "TLS_AES_256_GCM_SHA384"
    assert r["handshake_ms"] == 4.0 and r["established"]
    assert stats["tls_renegotiation"] == 0 and stats["tls_unexpected_message"] == 0


def test_resumption_tls12_session_id_echo() -> None:
    sid = b"\x05" * 32
    r, stats = run([
        (0, rec(22, client_hello(session_id=sid)), 1000),
        (1, rec(22, server_hello(session_id=sid)) + CCS + ENC_FINISHED, 2000),
        (0, CCS + ENC_FINISHED, 3000),
    ])
    assert r["resumed"] and stats["tls_resumed"] == 1
    assert r["handshake_ms"] == 2.0  # both Finished seen


def test_resumption_tls12_ticket_abbreviated_handshake() -> None:
    r, _ = run([
        (0, rec(22, client_hello(ticket=b"T" * 160)), 1000),
        # no session id to echo: the abbreviated shape (NewSessionTicket, CCS, no Certificate)
        (1, rec(22, server_hello() + NST) + CCS + ENC_FINISHED, 2000),
        (0, CCS + ENC_FINISHED + rec(23, b"GET"), 3000),
    ])
    assert r["resumed"]


def test_full_handshake_with_offered_session_id_is_not_resumed() -> None:
    r, _ = run([
        (0, rec(22, client_hello(session_id=b"\x05" * 32, ticket=b"T" * 100)), 1000),
        (1, rec(22, server_hello(session_id=b"\x06" * 32) + CERT + SHD), 2000),
        (0, rec(22, CKE) + CCS + ENC_FINISHED, 3000),
        (1, CCS + ENC_FINISHED, 4000),
    ])
    assert not r["resumed"] and r["established"]


def test_resumption_tls13_pre_shared_key() -> None:
    events = tls13_full()
    events[0] = (0, rec(22, client_hello(versions=(0x0304,), psk=True)), 1000)
    events[1] = (1, rec(22, server_hello(0x1301, selected=0x0304, psk=True)) + rec(23, b"x" * 90), 2000)
    r, _ = run(events)
    assert r["resumed"] and r["version"] == "TLS1.3"


def test_ssl3_server_hello_without_extensions() -> None:
    r, _ = run([(0, rec(22, client_hello(), version=0x0300), 1),
                (1, rec(22, server_hello(0x000A, version=0x0300, extensions=False), version=0x0300), 2)])
    assert r["version"] == "SSL3.0" and r["cipher_suite"] == "TLS_RSA_WITH_3DES_EDE_CBC_SHA"


def test_fatal_alert_ends_the_handshake() -> None:
    conn = Conn().c(rec(22, client_hello()), 1000).s(alert(2, 40), 6000)
    assert len(conn.records) == 1  # emitted at the alert
    r = conn.close()
    assert r["alert"] == "handshake_failure" and r["alert_level"] == "fatal"
    assert r["alert_from"] == "server" and r["handshake_ms"] == 5.0 and not r["established"]
    assert r["version"] is None and r["cipher_suite"] is None


def test_warning_alert_is_recorded_and_the_handshake_goes_on() -> None:
    events = tls12_full()
    d, data, ts = events[1]
    events[1] = (d, alert(1, 112) + data, ts)  # unrecognized_name before the ServerHello
    r, _ = run(events)
    assert r["alert"] == "unrecognized_name" and r["alert_level"] == "warning"
    assert r["established"] and r["handshake_ms"] == 3.0 and r["version"] == "TLS1.2"


def test_encrypted_alert_tls12() -> None:
    """A client that rejects the server's Finished: its alert is after its CCS, unreadable."""
    r, stats = run([
        (0, rec(22, client_hello()), 1000),
        (1, rec(22, server_hello(session_id=b"\x01" * 32) + CERT + SHD), 2000),
        (0, rec(22, CKE) + CCS + ENC_FINISHED, 3000),
        (1, CCS, 4000),
        (0, rec(21, b"\x99" * 26), 5000),
    ])
    assert stats["tls_encrypted_alerts"] == 1
    assert r["alert"] is None and r["alert_level"] == "encrypted" and r["alert_from"] == "client"
    assert r["handshake_ms"] == 4.0 and not r["established"]


def test_encrypted_alerts_after_the_handshake_are_counted() -> None:
    events = tls12_full() + [(0, rec(21, b"\x99" * 26), 7000), (1, rec(21, b"\x98" * 26), 7001)]
    r, stats = run(events)
    assert stats["tls_encrypted_alerts"] == 2 and r["alert"] is None and r["alert_level"] is None


def test_encrypted_alert_tls13_client_rejects_the_certificate() -> None:
    events = tls13_full()
    events[2] = (0, CCS + rec(23, b"A" * 19), 3000)  # 2 alert bytes + content type + 16-byte tag
    r, stats = run(events[:3])
    assert r["alert_level"] == "encrypted" and r["alert_from"] == "client" and not r["established"]
    assert r["handshake_ms"] == 2.0 and stats["tls_encrypted_alerts"] == 1


def test_emitted_at_close_without_application_data() -> None:
    conn = Conn().c(rec(22, client_hello()), 1000).s(rec(22, server_hello() + CERT + SHD), 2000)
    assert conn.records == []
    r = conn.close(9000)
    assert r["handshake_ms"] is None and not r["established"] and r["cipher_suite_id"] == 0xC02F


def test_stalled_handshake_is_emitted_after_the_response_timeout() -> None:
    conn = Conn().c(rec(22, client_hello()), 1000)
    conn.analyzer.tick(1000 + L7Options().response_timeout_us - 1)
    assert conn.records == []
    conn.analyzer.tick(1000 + L7Options().response_timeout_us)
    assert len(conn.records) == 1 and conn.stats["tls_timeout"] == 1
    conn.s(rec(22, server_hello()), 10**8)  # too late: one record per handshake
    assert conn.close()["cipher_suite"] is None


def test_server_hello_without_client_hello() -> None:
    """The detector saw the server's ServerHello first (the ClientHello was not captured)."""
    conn = Conn(client=1)
    conn.s(rec(22, server_hello(0xC030) + CERT + SHD), 5000).c(rec(22, CKE) + CCS + ENC_FINISHED, 6000)
    r = conn.s(CCS + ENC_FINISHED, 7000).close()
    assert not r["client_hello_seen"] and r["client_hello_ts_us"] == 5000
    assert r["handshake_ms"] is None and r["established"] and r["server_name"] is None
    assert r["cipher_suite"] == "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"


def test_renegotiation_is_counted_not_reported() -> None:
    events = tls12_full() + [(0, rec(22, b"\x55" * 300), 7000)]  # encrypted ClientHello
    r, stats = run(events)
    assert stats["tls_renegotiation"] == 1 and stats["tls_handshakes"] == 1 and r["established"]


def test_sslv2_client_hello_is_counted_and_the_server_parsed() -> None:
    v2 = b"\x01\x03\x01" + struct.pack(">HHH", 3, 0, 16) + b"\x00\x00\x2f" + b"c" * 16
    r, stats = run([(0, bytes([0x80 | len(v2) >> 8, len(v2) & 0xFF]) + v2, 100),
                    (1, rec(22, server_hello(0x002F, version=0x0301, extensions=False), 0x0301), 200)])
    assert stats["tls_sslv2_client_hello"] == 1 and stats["tls_parse_error"] == 0
    assert r["version"] == "TLS1.0" and r["cipher_suite"] == "TLS_RSA_WITH_AES_128_CBC_SHA"
    assert r["client_hello_ts_us"] == 100


def test_wrong_side_hello_is_counted() -> None:
    r, stats = run([(0, rec(22, client_hello()), 1), (1, rec(22, client_hello()), 2)])
    assert stats["tls_unexpected_message"] == 1 and r["version"] is None


# --- gaps --------------------------------------------------------------------------------------


def test_gap_inside_application_data_costs_nothing() -> None:
    events = tls12_full()
    conn = Conn()
    for d, data, ts in events[:4]:
        conn.analyzer.on_data(d, data, ts)
    big = rec(23, b"z" * 3000)
    conn.c(big[:1000], 5000)
    conn.analyzer.on_gap(0, 1500, 5001)
    conn.c(big[2500:] + rec(21, b"\x99" * 26), 5002)  # still in step: the alert is found
    r = conn.close()
    assert conn.stats["tls_gap"] == 0 and conn.stats["tls_encrypted_alerts"] == 1
    assert r["error"] is None


def test_gap_inside_a_handshake_record_keeps_the_record_layer_in_step() -> None:
    """SH + Certificate in one record, a hole in the Certificate: the SH is read as it
    arrives, the rest of the record is skipped by its length, the next record is read."""
    conn = Conn().c(rec(22, client_hello()), 1000)
    first = rec(22, server_hello() + CERT)
    flight = first + rec(22, SKE + SHD)
    conn.s(flight[:400], 2000)
    conn.analyzer.on_gap(1, len(first) - 400 - 10, 2001)
    conn.s(flight[len(first) - 10 :], 2002)
    conn.c(rec(22, CKE) + CCS + ENC_FINISHED, 3000)
    r = conn.s(CCS + ENC_FINISHED, 4000).close()
    assert conn.stats["tls_gap"] == 1 and conn.stats["tls_resync"] == 0
    assert conn.analyzer.full_handshake()  # the ServerHelloDone after the hole was read
    assert r["error"] == "gap" and r["cipher_suite_id"] == 0xC02F
    assert r["established"] and r["handshake_ms"] == 3.0 and not r["resumed"]


def test_gap_over_a_record_header_resynchronises() -> None:
    conn = Conn().c(rec(22, client_hello()), 1000)
    first = rec(22, server_hello() + CERT)
    flight = first + rec(22, SKE + SHD)
    conn.s(flight[:400], 2000)
    conn.analyzer.on_gap(1, len(first) - 400 + 20, 2001)  # into the next record's body
    conn.s(flight[len(first) + 20 :], 2002)  # not a record start: skipped
    conn.c(rec(22, CKE) + CCS + ENC_FINISHED, 3000)
    conn.s(CCS + ENC_FINISHED, 4000)  # a segment that starts with a record: in step again
    r = conn.close()
    assert conn.stats["tls_gap"] == 1 and conn.stats["tls_resync"] == 1
    assert r["error"] == "gap" and r["cipher_suite_id"] == 0xC02F
    assert r["established"] and r["handshake_ms"] == 3.0
    assert conn.stats["tls_parse_error"] == 0


# --- parse errors ------------------------------------------------------------------------------


def test_garbage_is_a_parse_error_and_no_record() -> None:
    conn = Conn().c(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1)
    assert conn.close() is None
    assert conn.stats["tls_parse_error"] == 1 and conn.stats["tls_parse_error.bad_record"] == 1
    assert conn.stats["tls_no_hello"] == 1


def test_record_too_long() -> None:
    conn = Conn().c(struct.pack(">BHH", 22, 0x0303, MAX_RECORD + 1) + b"\x01", 1)
    assert conn.close() is None and conn.stats["tls_parse_error.record_overflow"] == 1


def test_handshake_message_too_long() -> None:
    conn = Conn().c(rec(22, b"\x0b" + (300 * 1024).to_bytes(3, "big") + b"c" * 100), 1)
    conn.close()
    assert conn.stats["tls_parse_error.handshake_too_long"] == 1


def test_malformed_client_hello_still_emits_what_was_learned() -> None:
    bad = hs(1, b"\x03\x03" + b"r" * 32 + b"\x20abc")  # session id longer than the message
    conn = Conn().c(rec(22, bad), 1000).s(rec(22, server_hello(0xC02B)), 2000)
    r = conn.close()
    assert conn.stats["tls_parse_error.bad_client_hello"] == 1
    assert r["error"] == "parse_error" and r["client_hello_ts_us"] == 1000 and r["client_hello_seen"]
    assert r["server_name"] is None and r["cipher_suite_id"] == 0xC02B  # the server side goes on


def test_truncated_client_hello_at_close() -> None:
    data = rec(22, client_hello())
    conn = Conn().c(data[:60], 1000)
    r = conn.close()
    assert conn.stats["tls_parse_error.truncated"] == 1
    assert r["error"] == "parse_error" and r["client_hello_ts_us"] == 1000


def test_buffers_stay_bounded_over_a_long_connection() -> None:
    conn = Conn()
    for d, data, ts in tls12_full()[:4]:
        conn.analyzer.on_data(d, data, ts)
    stream = b"".join(rec(23, bytes(16384)) for _ in range(300))  # ~5 MB
    for k in range(0, len(stream), 1448):
        conn.s(stream[k : k + 1448], 5000 + k)
        buf, hs = conn.analyzer.buffered(1)
        assert buf < 1448 and not hs
    conn.close()


def test_checkpoint_mid_handshake_continues_exactly() -> None:
    """The core's state bytes (rust/src/l7/tls/state.rs), taken with a ServerHello flight
    cut mid-record, restore into an analyser that finishes the same record."""
    events = tls12_full()
    want = run(events)[0]
    conn = Conn()
    conn.c(events[0][1], events[0][2]).s(events[1][1][:150], events[1][2])
    conn.analyzer._state_prepare()
    state = conn.analyzer._core_state
    conn.analyzer._core_state = state
    conn.analyzer._state_restored()
    assert conn.analyzer.phase() == "server_hello" and conn.analyzer.buffered(1)[1] > 0
    conn.s(events[1][1][150:], events[1][2])
    for d, data, ts in events[2:]:
        conn.analyzer.on_data(d, data, ts)
    assert conn.close() == want
    damaged = bytearray(state)
    damaged[-1] ^= 1
    conn.analyzer._core_state = bytes(damaged)
    with pytest.raises(StateError):
        conn.analyzer._state_restored()


# --- looks_like_tls_client_hello ---------------------------------------------------------------


def test_looks_like_tls_client_hello() -> None:
    data = rec(22, client_hello(), version=0x0301)
    assert looks_like_tls_client_hello(data) is True
    for i in range(11):  # every prefix: undecided, never a wrong "no"
        assert looks_like_tls_client_hello(data[:i]) is None, i
    assert looks_like_tls_client_hello(rec(22, server_hello())) is False
    assert looks_like_tls_client_hello(b"GET / HTTP/1.1\r\n") is False
    assert looks_like_tls_client_hello(b"\x16\x03\x01\x00") is None
    assert looks_like_tls_client_hello(b"\x16\x02") is False
    assert looks_like_tls_client_hello(rec(23, b"x" * 40)) is False
    sslv2 = b"\x80\x2e\x01\x03\x01" + b"\x00" * 30
    assert looks_like_tls_client_hello(sslv2) is True
    assert looks_like_tls_client_hello(sslv2[:3]) is None


def test_names() -> None:
    assert version_name(0x0301) == "TLS1.0" and version_name(0x7F1C) == "TLS1.3 (draft 28)"
    assert version_name(0x0200) is None
    assert alert_name(40) == "handshake_failure" and alert_name(250) == "unknown_250"
    assert CIPHER_SUITES[0x1303] == "TLS_CHACHA20_POLY1305_SHA256"
    assert CIPHER_SUITES[0xCCA8] == "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
    assert CIPHER_SUITES[0xCC13].endswith("_OLD")  # the pre-RFC code point has its own name
    # Names are unique but for GREASE and Netscape's two code points per FIPS suite.
    by_name = defaultdict(list)
    for k, v in CIPHER_SUITES.items():
        by_name[v].append(k)
    assert {v: ks for v, ks in by_name.items() if len(ks) > 1 and v != "Reserved (GREASE)"} == {
        "SSL_RSA_FIPS_WITH_DES_CBC_SHA": [0xFEFE, 0xFFE1],
        "SSL_RSA_FIPS_WITH_3DES_EDE_CBC_SHA": [0xFEFF, 0xFFE0]}


@requires_tshark
def test_name_tables_are_tsharks() -> None:
    """The committed tables are what the generator makes from the installed tshark."""
    _, ciphers, alerts = tshark_tables(TSHARK)
    assert ALERT_DESCRIPTIONS == alerts
    assert CIPHER_SUITES == ciphers


# --- fuzzing ------------------------------------------------------------------------------------

_chunk = st.one_of(
    st.tuples(st.integers(0, 1), st.binary(max_size=200)),
    st.tuples(st.integers(0, 1), st.integers(1, 5000)),  # a gap of that many bytes
)


def _feed_fuzz(conn: Conn, items: list) -> None:
    for ts, (d, x) in enumerate(items):
        if isinstance(x, int):
            conn.analyzer.on_gap(d, x, ts)
        else:
            conn.analyzer.on_data(d, x, ts)
        if ts % 7 == 3:
            conn.analyzer.tick(ts)


@settings(max_examples=300, deadline=None)
@given(st.lists(_chunk, max_size=25))
def test_fuzz_random_bytes_never_raise(items: list) -> None:
    conn = Conn()
    _feed_fuzz(conn, items)
    conn.close()  # checks: at most one record, valid Avro, no internal error


_TRANSCRIPTS = [tls12_full(), tls13_full()]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_damaged_handshakes_never_raise(data: st.DataObject) -> None:
    """Real handshakes truncated, with bytes flipped, re-cut into random segments."""
    events = data.draw(st.sampled_from(_TRANSCRIPTS))
    streams = {0: bytearray(), 1: bytearray()}
    for d, b, _ in events:
        streams[d] += b
    for d in (0, 1):
        s = streams[d]
        for _ in range(data.draw(st.integers(0, 4))):
            if s:
                s[data.draw(st.integers(0, len(s) - 1))] = data.draw(st.integers(0, 255))
        del s[data.draw(st.integers(0, len(s))) :]
    conn = Conn()
    pos = {0: 0, 1: 0}
    ts = 0
    while pos[0] < len(streams[0]) or pos[1] < len(streams[1]):
        d = data.draw(st.integers(0, 1))
        n = data.draw(st.integers(1, 600))
        chunk = bytes(streams[d][pos[d] : pos[d] + n])
        pos[d] += n
        ts += 1
        if chunk:
            conn.analyzer.on_data(d, chunk, ts)
    conn.close()


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300).filter(lambda b: not 20 <= b[0] <= 24 and not b[0] & 0x80))
def test_fuzz_garbage_is_counted(garbage: bytes) -> None:
    conn = Conn().c(garbage + b"\x00" * 5, 1)
    assert conn.close() is None
    assert conn.stats["tls_parse_error"] == 1 and conn.stats["tls_parse_error.bad_record"] == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 2**24 - 1))
def test_fuzz_random_client_hello_bodies(body: bytes, claimed: int) -> None:
    """A valid record and handshake header around random bytes: parsed, or an error counted."""
    msg = b"\x01" + min(claimed, len(body) + 10).to_bytes(3, "big") + body
    conn = Conn().c(rec(22, msg[:MAX_RECORD]), 1)
    r = conn.close()
    assert r is not None and r["client_hello_ts_us"] == 1
    assert conn.stats["tls_parse_error"] >= 1 or r["error"] is None


# --- tshark cross-check over the real captures ------------------------------------------------


def tcp_streams(path: str, rows: list[dict[str, str]]) -> dict[int, tuple]:
    """tcp.stream -> events ``(direction, bytes, ts)`` / ``(direction, None, missing, ts)``.

    The frames are decoded by wirestream's own FrameDecoder and grouped by tshark's
    tcp.stream (so port reuse is split the same way). Each direction is put in order by
    sequence number: bytes already delivered are trimmed (this covers what tshark flags
    ``tcp.analysis.retransmission``, and keeps the new tail of a retransmission that
    carries more than the original, as in dhe.pcap frame 15), out-of-order segments wait
    for the hole to fill (hrr.pcap frame 11), and holes never filled become gaps.
    """
    stream_of = {int(r["frame.number"]): int(r["tcp.stream"]) for r in rows}
    segments: dict[int, list] = defaultdict(list)
    decoder = FrameDecoder()
    with open_capture(path) as capture:
        for f in capture:
            decoded = decoder.decode(f.linktype, f.data, f.ts_us, f.orig_len, f.number)
            if decoded is None or decoded[0][13] != 6 or f.number not in stream_of:
                continue
            fields, payload = decoded
            segments[stream_of[f.number]].append((fields, bytes(payload)))
    out = {}
    for sid, segs in segments.items():
        first = segs[0][0]
        origin = (first[6], first[8])
        nxt: list[int | None] = [None, None]
        pending: list[dict[int, tuple[bytes, int]]] = [{}, {}]
        events: list[tuple] = []

        def deliver(d: int, nxt=nxt, pending=pending, events=events) -> None:
            while True:
                ready = [s for s in pending[d] if (s - nxt[d]) & 0xFFFFFFFF == 0
                         or (s - nxt[d]) & 0xFFFFFFFF >= 1 << 31]
                if not ready:
                    return
                seq = ready[0]
                payload, ts = pending[d].pop(seq)
                over = (nxt[d] - seq) & 0xFFFFFFFF
                if over < len(payload):
                    events.append((d, payload[over:], ts))
                    nxt[d] = (nxt[d] + len(payload) - over) & 0xFFFFFFFF

        for fields, payload in segs:
            d = 0 if (fields[6], fields[8]) == origin else 1
            seq, flags = fields[4], fields[11]
            if flags & 0x02:  # SYN: data starts at ISN + 1
                nxt[d] = (seq + 1) & 0xFFFFFFFF
            if not payload:
                continue
            if nxt[d] is None:
                nxt[d] = seq
            pending[d].setdefault(seq, (payload, fields[0]))
            deliver(d)
        for d in (0, 1):  # holes never filled: a gap, then what came after it
            while pending[d]:
                seq = min(pending[d], key=lambda s, d=d: (s - nxt[d]) & 0xFFFFFFFF)
                events.append((d, None, (seq - nxt[d]) & 0xFFFFFFFF, pending[d][seq][1]))
                nxt[d] = seq
                deliver(d)
        out[sid] = (segs, origin, events)
    return out


def our_handshakes(path: str, rows: list[dict[str, str]]) -> dict[int, dict]:
    """tcp.stream -> our wire.tls record, for the streams whose first bytes are TLS."""
    found = {}
    for sid, (segs, origin, events) in tcp_streams(path, rows).items():
        first = {0: b"", 1: b""}
        for ev in events:
            if ev[1] is not None and len(first[ev[0]]) < 16:
                first[ev[0]] += ev[1]
        client = next((d for d in (0, 1) if looks_like_tls_client_hello(first[d])), None)
        if client is None:
            continue
        other = next((s[0] for s in segs if (s[0][6], s[0][8]) != origin), None)
        ends = [origin, (other[6], other[8]) if other else (b"", 0)]
        records: list[dict] = []
        stats: Counter[str] = Counter()

        def emit(topic: str, key: str, record: dict, records=records) -> None:
            records.append(record)

        ctx = StreamContext(ips=(str(ends[0][0]), str(ends[1][0])), ports=(ends[0][1], ends[1][1]),
                            connection_id=lambda sid=sid: f"stream-{sid}", emit=emit,
                            options=L7Options(), stats=stats)
        analyzer = TlsAnalyzer(ctx, client)
        for ev in events:
            if ev[1] is None:
                analyzer.on_gap(ev[0], ev[2], ev[3])
            else:
                analyzer.on_data(ev[0], ev[1], ev[2])
        analyzer.on_close(segs[-1][0][0])
        assert len(records) == 1, f"tcp.stream {sid}: {records}"
        assert stats["tls_parse_error"] == 0, f"tcp.stream {sid}: {dict(stats)}"
        check_record(records[0])
        found[sid] = records[0]
    return found


HELLO_FIELDS = ["frame.number", "frame.time_epoch", "tcp.stream", "tls.handshake.type",
                "tls.handshake.extensions_server_name", "tls.handshake.version",
                "tls.handshake.extensions.supported_version", "tls.handshake.ciphersuite",
                "tls.handshake.extensions_alpn_str", "tls.alert_message.desc", "tcp.segment"]


def tshark_tls_rows(path: str, ports: set[int] = frozenset()) -> list[dict[str, str]]:
    """One row per TCP frame: its tcp.stream and what tshark reads of TLS in it.

    tshark decodes TLS on its TLS ports (443, ...) and, by heuristic, on ports no other
    dissector claims; we detect by content, so a server port on which we found TLS that
    tshark did not decode (8080 is HTTP's) is handed to it with ``-d tcp.port==N,tls``.
    ``tcp.reassemble_out_of_order`` lets it read a ServerHello that arrived out of order.
    TCP headers quoted inside ICMP errors are not segments of the stream: filtered out.
    """
    options = ["-o", "tcp.reassemble_out_of_order:TRUE", "-E", "occurrence=a", "-E", "aggregator=,"]
    for p in sorted(ports):
        options += ["-d", f"tcp.port=={p},tls"]
    (rows,) = tshark_rows([path], HELLO_FIELDS, "tcp && !icmp && !icmpv6", options)
    return [dict(zip(HELLO_FIELDS, row, strict=True)) for row in rows]


def tshark_handshakes(rows: list[dict[str, str]]) -> dict[int, dict]:
    """tcp.stream -> what tshark reads in its hellos and plaintext alerts."""
    streams: dict[int, dict] = {}
    frame_us = {row["frame.number"]: int(Decimal(row["frame.time_epoch"]) * 1_000_000) for row in rows}
    for row in rows:
        sid = int(row["tcp.stream"])
        s = streams.setdefault(sid, {"sni": None, "client_hello_us": None, "version": None,
                                     "cipher": None, "alpn": None, "alpn_offered": [], "alerts": [],
                                     "hellos": 0})
        types = row["tls.handshake.type"].split(",") if row["tls.handshake.type"] else []
        if "1" in types and s["client_hello_us"] is None:
            s["hellos"] += 1
            # tshark shows a reassembled ClientHello on its last segment; tcp.segment lists
            # them all, and the first one carries the ClientHello's first byte.
            first_frame = row["tcp.segment"].split(",")[0] or row["frame.number"]
            s["client_hello_us"] = frame_us[first_frame]
            s["sni"] = row["tls.handshake.extensions_server_name"].split(",")[0] or None
            s["alpn_offered"] = row["tls.handshake.extensions_alpn_str"].split(",") if (
                row["tls.handshake.extensions_alpn_str"]) else []
        if "2" in types:  # ServerHello; after a HelloRetryRequest the real one wins
            s["hellos"] += 1
            sv = row["tls.handshake.extensions.supported_version"]
            s["version"] = int(sv or row["tls.handshake.version"].split(",")[0], 16)
            s["cipher"] = int(row["tls.handshake.ciphersuite"], 16)
            s["alpn"] = row["tls.handshake.extensions_alpn_str"] or None
        if row["tls.alert_message.desc"]:
            s["alerts"] += [int(x) for x in row["tls.alert_message.desc"].split(",")]
    return {sid: s for sid, s in streams.items() if s["hellos"]}


CAPTURES = real_captures()


@requires_tshark
@pytest.mark.parametrize("path", CAPTURES, ids=[os.path.relpath(p, Path(__file__).parent) for p in CAPTURES])
def test_handshakes_match_tshark(path: str) -> None:
    compare_with_tshark(path)


@requires_tshark
def test_tls_on_a_port_tshark_gives_to_another_protocol(tmp_path: Path) -> None:
    """We find TLS by content. tshark 4.0 has a TLS heuristic on TCP, but it only runs
    when no port dissector claims the port: on 8080 (HTTP) it needs ``-d``. The
    ClientHello is split over two segments; a non-TLS stream must stay unreported."""
    from captures import raw, tcp, timed, write_pcap

    frames: list[bytes] = []

    def conversation(events: list[tuple[int, bytes]], sport: int, dport: int) -> None:
        c, sv = 1000, 5000
        hosts = [("192.0.2.10", sport), ("198.51.100.20", dport)]
        frames.append(tcp(*[h[0] for h in hosts], sport, dport, seq=c, ack=0, flags="S"))
        frames.append(tcp(hosts[1][0], hosts[0][0], dport, sport, seq=sv, ack=c + 1, flags="SA"))
        seq = [c + 1, sv + 1]
        for d, data in events:
            (src, sp), (dst, dp) = hosts[d], hosts[1 - d]
            frames.append(tcp(src, dst, sp, dp, seq=seq[d], ack=seq[1 - d], payload=data))
            seq[d] += len(data)

    ch = rec(22, client_hello(sni="odd-port.example", versions=(0x0304, 0x0303)), version=0x0301)
    flight = [(d, data) for d, data, _ in tls13_full(0x1303)]
    conversation([(0, ch[:77]), (0, ch[77:]), *flight[1:]], 40001, 8080)
    conversation([(0, b"HELLO 9444\r\n"), (1, b"\x16\x03\x01 not a handshake")], 40002, 9444)
    path = write_pcap(tmp_path / "odd-port.pcap", timed([raw(f) for f in frames], step_ns=1_000_000), 101)
    rows = tshark_tls_rows(path)
    assert not tshark_handshakes(rows)  # without -d, tshark reads 8080 as HTTP
    ours = compare_with_tshark(path)
    assert list(ours) == [0] and ours[0]["server_name"] == "odd-port.example"
    assert ours[0]["cipher_suite"] == "TLS_CHACHA20_POLY1305_SHA256" and ours[0]["server_port"] == 8080


def compare_with_tshark(path: str) -> dict[int, dict]:
    """Our records and tshark's hellos agree, stream by stream; returns our records."""
    rows = tshark_tls_rows(path)
    ours = our_handshakes(path, rows)
    theirs = tshark_handshakes(rows)
    if set(ours) - set(theirs):  # TLS on ports tshark does not decode as TLS by default
        theirs = tshark_handshakes(tshark_tls_rows(path, {r["server_port"] for r in ours.values()}))
    assert set(ours) == set(theirs), "streams with a TLS hello differ"
    for sid, t in theirs.items():
        r = ours[sid]
        where = f"tcp.stream {sid} of {os.path.basename(path)}"
        assert r["server_name"] == t["sni"], where
        assert r["version_id"] == t["version"], where
        assert r["version"] == version_name(t["version"]), where
        assert r["cipher_suite_id"] == t["cipher"], where
        assert r["cipher_suite"] == CIPHER_SUITES.get(t["cipher"]), where
        assert r["alpn"] == t["alpn"], where
        assert r["alpn_offered"] == t["alpn_offered"], where
        assert r["client_hello_ts_us"] == t["client_hello_us"], where
        # tshark decodes plaintext alerts only; ours is the first one of the handshake
        # (a later fatal one would replace a warning: none here).
        if t["alerts"]:
            assert r["alert"] == alert_name(t["alerts"][0]), where
        else:
            assert r["alert_level"] in (None, "encrypted"), where
        assert r["error"] is None, where
    return ours


@requires_tshark
def test_zeek_captures_details() -> None:
    """Figures tshark does not give directly, checked against the frames by hand."""
    data = DATA / "zeek-tls"

    def ours(name: str) -> dict:
        path = str(data / name)
        return our_handshakes(path, tshark_tls_rows(path))[0]

    hrr = ours("hrr.pcap")
    # CH 1.014949 -> client's first encrypted record (its Finished), frame 13, 1.062107
    assert hrr["hello_retry_request"] and hrr["handshake_ms"] == pytest.approx(47.158)
    fail = ours("tls-1.2-handshake-failure.pcap")
    assert fail["alert_level"] == "fatal" and fail["alert_from"] == "server" and not fail["established"]
    early = ours("tls-early-alert.pcap")
    assert early["server_port"] == 64132 and early["alert_level"] == "warning" and early["established"]
    # server Finished (frame 12) - CH (frame 4): 28.852 - 6.599 ms
    assert ours("chrome-34-google.pcap")["handshake_ms"] == pytest.approx(22.253)
    # False Start: client application data (frame 9) before the server's Finished
    assert ours("tls-conn-with-extensions.pcap")["handshake_ms"] == pytest.approx(32.279)
    # no application data before the encrypted alert: ends at the server Finished, frame 10
    assert ours("ecdsa-cert.pcap")["handshake_ms"] == pytest.approx(172.776)
    for name in ("ecdhe.pcap", "dhe.pcap", "client-certificate.pcap"):
        r = ours(name)
        assert r["established"] and not r["resumed"] and r["handshake_ms"] > 0, name
