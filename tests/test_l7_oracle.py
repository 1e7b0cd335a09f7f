"""L7 records against tshark on every capture in tests/data, through the real processor path.

The packets go through the producer's decoder, the connection tracker, stream reassembly
and the L7 analysers exactly as in a worker (in-process here; tests/test_analyze_e2e.py
checks that the broker path gives the same records). Redaction is off, so that our paths
are tshark's raw URIs (redaction has its own tests). Both ways, counted, per capture:

- HTTP, per tcp.stream: the (method, URI, status) of every request/response pair tshark
  makes and (method, URI) of every request it leaves unanswered are exactly our
  transactions, no more, no fewer;
- DNS: the responses tshark matches to a query (it shows ``dns.time``) are exactly our
  answered records (same client, server, id, name and rcode), ``latency_us`` =
  ``dns.time`` ± 1 µs; the queries on port 53 no response answers (retransmissions
  aside) are exactly our unanswered records;
- TLS, per tcp.stream: a stream has a handshake record iff tshark shows a ClientHello or
  ServerHello on it, with the same SNI and, after a ServerHello, the same negotiated
  version and cipher suite.

A capture where neither tshark nor we find a protocol passes (that is a check too: we
invent nothing). Where we differ from tshark on purpose (docs/l7.md), the test says so
at that place.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from functools import cache

import pytest
from helpers import real_captures, requires_tshark
from local_pipeline import local_l7
from oracle import (
    match_records,
    tshark_dns_answers,
    tshark_dns_unanswered,
    tshark_http_pairs,
    tshark_streams,
    tshark_tls_handshakes,
)
from wirestream.processors.l7.base import L7Options

from wirestream.topics import CONNECTIONS, DNS, TLS, TRANSACTIONS

CAPTURES = real_captures()
IDS = [os.path.relpath(p, os.path.dirname(__file__)) for p in CAPTURES]

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
          6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE"}
TLS_VERSIONS = {0x0300: "SSL3.0", 0x0301: "TLS1.0", 0x0302: "TLS1.1", 0x0303: "TLS1.2",
                0x0304: "TLS1.3"}


@cache
def run(path: str) -> dict[str, list[dict]]:
    # Redaction off: compare our paths with tshark's URIs as they are, not both passed
    # through redact_target (the code under test).
    return local_l7(path, options=L7Options(redact=False))


@cache
def stream_of(path: str) -> dict[str, int]:
    """Our connection_id -> its tcp.stream."""
    matched = match_records(run(path)[CONNECTIONS], tshark_streams(path))
    return {rec["connection_id"]: sid for sid, rec in matched.items()}


def by_stream(path: str, records: list[dict]) -> dict[int | str, list[dict]]:
    """Records by tcp.stream; one on a connection tshark does not have stays under its
    connection_id (and so can only be extra)."""
    streams = stream_of(path)
    out: dict[int | str, list[dict]] = defaultdict(list)
    for r in records:
        out[streams.get(r["connection_id"], r["connection_id"])].append(r)
    return out


def assert_same(want: Counter, got: Counter, where: str) -> None:
    assert got == want, f"{where}: tshark only {dict(want - got)}; ours only {dict(got - want)}"


@requires_tshark
@pytest.mark.parametrize("path", CAPTURES, ids=IDS)
def test_http_exchanges_match_tshark_both_ways(path: str) -> None:
    expected = {s: Counter(v) for s, v in tshark_http_pairs(path, unanswered=True).items()}
    ours = by_stream(path, run(path)[TRANSACTIONS])
    for stream in set(expected) | set(ours):
        got: Counter = Counter()
        for t in ours.get(stream, []):
            status = t["status"]
            if t["error"] in ("gap", "truncated"):
                # On purpose (docs/l7.md, "HTTP/1.x" and "Stream reassembly"): a response
                # cut by a capture hole or by the end of the connection is ours with the
                # status it began with and error gap/truncated; tshark never finishes
                # reassembling it, so it shows the request unanswered.
                status = None
            got[(t["method"], t["path"], status)] += 1
        assert_same(expected.get(stream, Counter()), got, f"tcp.stream {stream}")


@requires_tshark
@pytest.mark.parametrize("path", CAPTURES, ids=IDS)
def test_dns_answers_match_tshark_both_ways(path: str) -> None:
    answers = tshark_dns_answers(path)
    unanswered = tshark_dns_unanswered(path)
    records = run(path)[DNS]
    # Names compare case-insensitively: we match a response by its question that way
    # (docs/l7.md, "DNS").
    want_latency: dict[tuple, list[int]] = defaultdict(list)
    for a in answers:
        want_latency[(a.client, a.server, a.query_id, a.name.lower(), RCODES.get(a.rcode, str(a.rcode)))].append(
            a.time_us)
    got_latency: dict[tuple, list[int]] = defaultdict(list)
    got_unanswered: Counter = Counter()
    for r in records:
        key = (r["client_ip"], r["server_ip"], r["query_id"], r["query_name"].lower())
        if r["latency_us"] is None:
            got_unanswered[key] += 1
        else:
            got_latency[(*key, r["rcode"])].append(r["latency_us"])
    assert_same(Counter({k: len(v) for k, v in want_latency.items()}),
                Counter({k: len(v) for k, v in got_latency.items()}), "answered DNS queries")
    for key, want in want_latency.items():
        got = got_latency[key]
        assert all(abs(g - w) <= 1 for g, w in zip(sorted(got), sorted(want), strict=True)), (
            f"{key}: latency {sorted(got)} vs dns.time {sorted(want)}")
    assert_same(Counter((c, s, i, n.lower()) for c, s, i, n in unanswered), got_unanswered,
                "unanswered DNS queries")


@requires_tshark
@pytest.mark.parametrize("path", CAPTURES, ids=IDS)
def test_tls_handshakes_match_tshark_both_ways(path: str) -> None:
    handshakes = tshark_tls_handshakes(path)
    ours = by_stream(path, run(path)[TLS])
    assert sorted(ours, key=str) == sorted(handshakes), "tcp.streams with a TLS handshake"
    for stream, h in handshakes.items():
        recs = ours[stream]
        assert len(recs) == 1, f"tcp.stream {stream}: {len(recs)} TLS records"
        r = recs[0]
        assert r["server_name"] == h.server_name, f"SNI on tcp.stream {stream}"
        if h.cipher_suite is None:  # no ServerHello: nothing negotiated
            assert r["cipher_suite_id"] is None and r["version"] is None, f"tcp.stream {stream}: {r}"
            continue
        assert r["version"] == TLS_VERSIONS[h.version], f"version on tcp.stream {stream}"
        assert r["cipher_suite_id"] == h.cipher_suite, f"cipher suite on tcp.stream {stream}"
        assert r["cipher_suite"], f"cipher suite name on tcp.stream {stream}"
