"""Garbage and truncated L7 bytes through the processor path (tracker → reassembly → L7).

Nothing may raise out of the processor; every record it emits, on any input, encodes with
its topic's Avro schema (the production encoder) and decodes back the same; every failure
is a counted parse error with its reason, and the counters add up to the records; the
records of the healthy connections around the broken one still come out.
"""

from __future__ import annotations

import json
import re
import struct
from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from l7_traffic import Traffic
from local_pipeline import run_engine
from wirestream.schemas import schema_text

from wirestream.codec import Encoder, make_encoder, make_reader
from wirestream.topics import CONNECTIONS, DNS, FLOWS, TLS, TOPIC_SCHEMAS, TRANSACTIONS

#: The ``error`` values each topic's records may carry (the ``error`` docs of the schemas).
ERRORS = {
    TRANSACTIONS: {None, "no_response", "parse_error", "gap", "truncated"},
    DNS: {None, "no_response", "parse_error", "gap", "evicted"},
    TLS: {None, "parse_error", "gap"},
}

GOOD_REQUEST = b"GET /ok HTTP/1.1\r\nHost: example.test\r\n\r\n"
GOOD_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
DNS_QUERY = (struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
             + b"\x07example\x04test\x00" + struct.pack("!HH", 1, 1))
DNS_RESPONSE = (struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0)
                + b"\x07example\x04test\x00" + struct.pack("!HH", 1, 1)
                + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 1]))

#: Bytes that make each analyser start, then break it.
PREFIXES = [b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.0\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n", b"\x16\x03\x01\x00\x40\x01", b"\x16\x03\x03\x01\x00\x02",
            b"", b"\x00\x1c"]


def run(traffic: Traffic) -> tuple[dict[str, list[dict]], dict[str, int]]:
    headers, payloads = traffic.batch()
    # small batches: records cross batch boundaries
    batches = ((headers[i:i + 7], payloads) for i in range(0, len(headers), 7))
    out, engine = run_engine(batches, "fuzz", observations=False)
    return out, dict(engine.tracker.l7.stats)


@cache
def codec(topic: str) -> tuple[dict[str, object], Encoder, object]:
    """Field names (-> default, or ``...`` for none), the production encoder and a reader
    of ``topic``'s schema."""
    schema = json.loads(schema_text(TOPIC_SCHEMAS[topic]))
    fields = {f["name"]: f.get("default", ...) for f in schema["fields"]}
    return fields, make_encoder(1, schema), make_reader(schema)


def assert_encodes(topic: str, rec: dict) -> None:
    """``rec`` is a valid record of ``topic``: it has every field of the schema that has
    no default (the identity fields of a connection record are filled later), the encoder
    the output stage uses takes it, and decoding gives back the same values."""
    fields, encode, read = codec(topic)
    missing = {n for n, default in fields.items() if default is ... and n not in rec}
    assert not missing, f"{topic} record without {missing}: {rec}"
    want = {n: rec.get(n, default) for n, default in fields.items()}
    assert read(encode(rec), 5) == want, rec  # type: ignore[operator]


def assert_counted(out: dict[str, list[dict]], stats: dict[str, int]) -> None:
    """What must hold on every input: records valid and counted, failures named."""
    for topic, records in out.items():
        for rec in records:
            assert_encodes(topic, rec)
            assert rec["source_id"] == "fuzz"
            if topic == FLOWS:
                assert rec["flow_id"] and rec["transport"] in ("udp", "icmp"), rec
            elif topic != CONNECTIONS:
                assert rec["connection_id"] or topic == DNS, rec  # (DNS over UDP has none)
                assert rec["error"] in ERRORS[topic], rec
    assert stats.get("http_transactions", 0) == len(out[TRANSACTIONS]), stats
    assert stats.get("tls_handshakes", 0) == len(out[TLS]), stats
    # a DNS record is an answered query or one closed without a response, each counted
    answered = sum(r["response_ts_us"] is not None for r in out[DNS])
    assert stats.get("dns_answered", 0) == answered, stats
    closed = {k: sum(r["error"] == k for r in out[DNS]) for k in ("no_response", "gap", "evicted")}
    assert {k: stats.get(f"dns_{k}", 0) for k in closed} == closed, stats
    assert len(out[DNS]) == answered + sum(closed.values())
    for proto in ("http", "dns", "tls"):
        # every parse error is counted once in all and once under its reason
        reasons = {k: v for k, v in stats.items() if k.startswith(f"{proto}_parse_error.")}
        assert stats.get(f"{proto}_parse_error", 0) == sum(reasons.values()), stats
        assert all(re.fullmatch(rf"{proto}_parse_error\.[a-z0-9_]+", k) for k in reasons), reasons
    for topic in (TRANSACTIONS, DNS, TLS):
        # a record that failed to parse says so, and the failure is counted
        failed = sum(r["error"] == "parse_error" for r in out[topic])
        protocol = {TRANSACTIONS: "http", DNS: "dns", TLS: "tls"}[topic]
        assert stats.get(f"{protocol}_parse_error", 0) >= failed, (topic, stats)


def healthy(t: Traffic) -> None:
    t.tcp(("10.0.0.1", 40000), ("10.0.0.2", 80), [(0, GOOD_REQUEST), (1, GOOD_RESPONSE)])
    t.udp(("10.0.0.1", 40001), ("10.0.0.3", 53), DNS_QUERY)
    t.udp(("10.0.0.3", 53), ("10.0.0.1", 40001), DNS_RESPONSE)


def assert_healthy_records(out: dict[str, list[dict]]) -> None:
    assert any(t["path"] == "/ok" and t["status"] == 200 and t["error"] is None
               for t in out[TRANSACTIONS]), out[TRANSACTIONS]
    assert any(d["query_name"] == "example.test" and d["rcode"] == "NOERROR" for d in out[DNS]), out[DNS]


def test_the_healthy_traffic_alone() -> None:
    t = Traffic()
    healthy(t)
    out, stats = run(t)
    assert_healthy_records(out)
    assert_counted(out, stats)
    assert not {k: v for k, v in stats.items() if "parse_error" in k}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from(PREFIXES),
    garbage=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
    server_garbage=st.lists(st.binary(max_size=300), max_size=3),
    port=st.sampled_from([80, 443, 53, 8080, 9999]),
    udp_garbage=st.binary(max_size=200),
)
def test_garbage_never_raises_is_counted_and_the_rest_comes_out(
    prefix: bytes, garbage: list[bytes], server_garbage: list[bytes], port: int, udp_garbage: bytes
) -> None:
    t = Traffic()
    exchanges = [(0, prefix + garbage[0])] + [(0, g) for g in garbage[1:] if g]
    exchanges += [(1, g) for g in server_garbage if g]
    t.tcp(("10.9.9.1", 50000), ("10.9.9.2", port), exchanges)
    t.udp(("10.9.9.1", 50001), ("10.9.9.3", 53), udp_garbage)
    t.udp(("10.9.9.3", 53), ("10.9.9.1", 50001), udp_garbage[::-1])
    healthy(t)
    # a truncated connection that never closes
    t.tcp(("10.9.9.1", 50002), ("10.9.9.2", port), [(0, prefix + garbage[0][:7])], close=False)
    out, stats = run(t)
    assert_healthy_records(out)
    assert len(out[CONNECTIONS]) == 3
    assert_counted(out, stats)
