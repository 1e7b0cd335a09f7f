"""L7 records against tshark on every capture in tests/data, through the real processor path.

The packets go through the producer's decoder, the connection tracker, stream reassembly
and the L7 analysers exactly as in a worker (in-process here; tests/test_analyze_e2e.py
checks that the broker path gives the same records). For every capture:

- every HTTP request/response pair tshark finds is a transaction with the same method,
  URI and status;
- every DNS response tshark matches to a query (it shows ``dns.time``) is a record with
  the same name and rcode, and ``latency_us`` = ``dns.time`` ± 1 µs;
- every TLS handshake with a ServerHello has the same SNI, negotiated version and
  cipher suite.
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
    tshark_http_pairs,
    tshark_streams,
    tshark_tls_handshakes,
)
from wirestream.processors.l7.redact import redact_target

from wirestream.topics import CONNECTIONS, DNS, TLS, TRANSACTIONS

CAPTURES = real_captures()
IDS = [os.path.relpath(p, os.path.dirname(__file__)) for p in CAPTURES]

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
          6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE"}
TLS_VERSIONS = {0x0300: "SSL3.0", 0x0301: "TLS1.0", 0x0302: "TLS1.1", 0x0303: "TLS1.2",
                0x0304: "TLS1.3"}


@cache
def run(path: str) -> dict[str, list[dict]]:
    return local_l7(path)


@cache
def stream_ids(path: str) -> dict[int, str]:
    """tcp.stream -> our connection_id."""
    matched = match_records(run(path)[CONNECTIONS], tshark_streams(path))
    return {sid: rec["connection_id"] for sid, rec in matched.items()}


@requires_tshark
@pytest.mark.parametrize("path", CAPTURES, ids=IDS)
def test_http_pairs_match_tshark(path: str) -> None:
    pairs = tshark_http_pairs(path)
    if not pairs:
        pytest.skip("tshark finds no HTTP request/response pair here")
    ids = stream_ids(path)
    ours: dict[str, Counter] = defaultdict(Counter)
    for t in run(path)[TRANSACTIONS]:
        ours[t["connection_id"]][(t["method"], t["path"], t["status"])] += 1
    for stream, expected in pairs.items():
        # Our paths are redacted (token-like query parameters): compare like with like.
        want = Counter((m, redact_target(uri), code) for m, uri, code in expected)
        got = ours[ids[stream]]
        missing = want - got
        assert not missing, f"tcp.stream {stream}: tshark pairs we do not have: {missing}; ours: {got}"


@requires_tshark
@pytest.mark.parametrize("path", CAPTURES, ids=IDS)
def test_dns_answers_match_tshark(path: str) -> None:
    answers = tshark_dns_answers(path)
    if not answers:
        pytest.skip("tshark finds no answered DNS query here")
    records: dict[tuple, list[dict]] = defaultdict(list)
    for r in run(path)[DNS]:
        records[(r["client_ip"], r["server_ip"], r["query_id"])].append(r)
    for a in answers:
        where = f"DNS id {a.query_id:#06x} {a.name!r} {a.client}<->{a.server}"
        candidates = [r for r in records[(a.client, a.server, a.query_id)]
                      if r["latency_us"] is not None and r["query_name"].lower() == a.name.lower()]
        assert candidates, f"{where}: no answered record"
        assert any(r["rcode"] == RCODES.get(a.rcode, str(a.rcode)) for r in candidates), where
        assert any(abs(r["latency_us"] - a.time_us) <= 1 for r in candidates), (
            f"{where}: latency {[r['latency_us'] for r in candidates]} vs dns.time {a.time_us}")


@requires_tshark
@pytest.mark.parametrize("path", CAPTURES, ids=IDS)
def test_tls_handshakes_match_tshark(path: str) -> None:
    handshakes = {s: h for s, h in tshark_tls_handshakes(path).items() if h.cipher_suite is not None}
    if not handshakes:
        pytest.skip("tshark finds no TLS ServerHello here")
    ids = stream_ids(path)
    by_conn = defaultdict(list)
    for r in run(path)[TLS]:
        by_conn[r["connection_id"]].append(r)
    for stream, h in handshakes.items():
        recs = by_conn[ids[stream]]
        assert len(recs) == 1, f"tcp.stream {stream}: {len(recs)} TLS records"
        r = recs[0]
        assert r["server_name"] == h.server_name, f"SNI on tcp.stream {stream}"
        assert r["version"] == TLS_VERSIONS[h.version], f"version on tcp.stream {stream}"
        assert r["cipher_suite_id"] == h.cipher_suite, f"cipher suite on tcp.stream {stream}"
        assert r["cipher_suite"], f"cipher suite name on tcp.stream {stream}"
