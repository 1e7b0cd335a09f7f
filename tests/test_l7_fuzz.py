"""Garbage and truncated L7 bytes through the processor path (tracker → reassembly → L7).

Nothing may raise out of the processor; every failure is a counted parse error; the
records of the healthy connections around the broken one still come out.
"""

from __future__ import annotations

import struct
from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from l7_traffic import Traffic
from wirestream.processors.connection_tracker import ConnectionTracker
from wirestream.processors.l7.base import L7Options
from wirestream.processors.l7.session import L7Dispatcher

from wirestream.topics import CONNECTIONS, DNS, TLS, TRANSACTIONS

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
    out: dict[str, list[dict]] = defaultdict(list)
    l7 = L7Dispatcher(lambda topic, key, rec: out[topic].append(rec), "fuzz", L7Options())
    tracker = ConnectionTracker(out[CONNECTIONS].append, source_id="fuzz", l7=l7)
    headers, payloads = traffic.batch()
    for i in range(0, len(headers), 7):  # small batches: records cross batch boundaries
        part = headers[i:i + 7]
        l7.datagrams(part[part["proto"] == 17], payloads)
        tracker.process(part, payloads)
    tracker.flush()
    return out, dict(l7.stats)


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
    # Every L7 record is well-formed enough to encode: the connection id is known.
    for topic in (TRANSACTIONS, TLS):
        for rec in out[topic]:
            assert rec["connection_id"] and rec["source_id"] == "fuzz"
    # A transaction that failed to parse says so, and the failure is counted.
    errors = [r for r in out[TRANSACTIONS] if r["error"] == "parse_error"]
    if errors:
        assert stats.get("http_parse_error", 0) >= 1
