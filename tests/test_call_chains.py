"""Call chains (processors/call_chains.py, wire.call-chains): the builder's linking rules
on records built here, then a real three-tier chain of HTTP servers on loopback captured
with tcpdump and run through ``wirestream analyze``."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from wirestream.processors.call_chains import (
    LINK_ADDRESS,
    LINK_PID,
    LINK_ROOT,
    LINK_TRACE,
    ChainBuilder,
    chain_tree_lines,
    trace_context,
    transaction_id,
)

_ports = itertools.count(40000)


def txn(client: str, server: str, start: int, end: int | None, headers: dict[str, str] | None = None,
        client_pid: int | None = None, server_pid: int | None = None, path: str = "/",
        source: str = "s1") -> dict[str, Any]:
    """A wire.transactions record with what the builder reads (times in ms for legibility)."""
    sip, sport = server.split(":")
    port = next(_ports)
    return {
        "connection_id": f"c{port}", "source_id": source, "client_ip": client, "client_port": port,
        "server_ip": sip, "server_port": int(sport), "request_ts_us": start * 1000,
        "response_ts_us": None if end is None else end * 1000,
        "latency_us": None if end is None else (end - start) * 1000,
        "method": "GET", "path": path, "host": None, "status": None if end is None else 200, "error": None,
        "request_headers": headers or {}, "client_pid": client_pid, "client_process": None,
        "server_pid": server_pid, "server_process": None, "server_service": None,
    }


def parents(chain: dict[str, Any]) -> dict[str, tuple[str | None, str]]:
    """hop transaction id -> (parent id, link)."""
    return {h["transaction_id"]: (h["parent_id"], h["link"]) for h in chain["hops"]}


def one_chain(records: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    b = ChainBuilder(**kw)
    for r in records:
        b.add(r)
    chains = b.flush()
    assert len(chains) == 1, chains
    return chains[0]


def test_transaction_id_is_stable_and_distinct() -> None:
    a = txn("10.0.0.1", "10.0.0.2:80", 1, 2)
    assert transaction_id(a) == transaction_id(dict(a))
    assert transaction_id(a) != transaction_id({**a, "request_ts_us": a["request_ts_us"] + 1})
    assert len(transaction_id(a)) == 16


def test_trace_context_formats() -> None:
    single = trace_context({"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"})
    multi = trace_context({"x-b3-traceid": "80F198EE56343BA864FE8B2A57D3EFF7", "x-b3-spanid": "e457b5a2e4d86bd1",
                           "x-b3-parentspanid": "05e3ac9a4f6e3b90"})
    assert single == multi and single is not None
    assert (single.trace_id, single.span_id, single.parent_span_id, single.kind) == (
        "80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1", "05e3ac9a4f6e3b90", "b3")
    w3c = trace_context({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    assert w3c is not None and w3c.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert w3c.parent_span_id == "b7ad6b7169203331" and w3c.kind == "w3c"
    assert trace_context({"b3": "1"}) is None  # sampling decision only
    assert trace_context({"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"}) is None
    assert trace_context({"traceparent": "garbage"}) is None


def test_b3_links_by_span_ids_even_across_addresses_and_without_containment() -> None:
    t = "463ac35c9f6413ad48485a3953bb6124"
    root = txn("10.0.0.9", "10.0.0.1:80", 0, 100, {"x-b3-traceid": t, "x-b3-spanid": "a" * 16})
    # the gateway runs behind a proxy: its client address is not the frontend's
    mid = txn("10.0.0.50", "10.0.0.2:80", 10, 150,
              {"x-b3-traceid": t, "x-b3-spanid": "b" * 16, "x-b3-parentspanid": "a" * 16})
    leaf = txn("10.0.0.2", "10.0.0.3:80", 20, 30, {"b3": f"{t}-{'c' * 16}-1-{'b' * 16}"})
    other = txn("10.0.0.1", "10.0.0.7:80", 20, 30)  # made by the frontend host, no headers
    b = ChainBuilder()
    for r in (leaf, other, mid, root):
        b.add(r)
    chains = b.flush()
    assert len(chains) == 1
    c = chains[0]
    ids = {n: transaction_id(r) for n, r in (("root", root), ("mid", mid), ("leaf", leaf), ("other", other))}
    assert c["root_id"] == ids["root"] and c["trace_id"] == t
    assert parents(c) == {ids["root"]: (None, LINK_ROOT), ids["mid"]: (ids["root"], LINK_TRACE),
                          ids["leaf"]: (ids["mid"], LINK_TRACE), ids["other"]: (ids["root"], LINK_ADDRESS)}
    assert [h["depth"] for h in c["hops"]] == [0, 1, 2, 1]
    assert c["end_ts_us"] == 150_000 and c["max_depth"] == 2
    assert c["hops"][2]["latency_us"] == 10_000 and c["hops"][2]["offset_us"] == 20_000


def test_w3c_links_same_trace_innermost_container_at_the_client_address() -> None:
    t1, t2 = "1" * 32, "2" * 32

    def tp(trace: str, parent: str) -> dict[str, str]:
        return {"traceparent": f"00-{trace}-{parent}-01"}

    # two traces through the same frontend at once: each outbound goes to its own trace
    r1 = txn("10.0.0.9", "10.0.0.1:80", 0, 100, tp(t1, "a" * 16))
    r2 = txn("10.0.0.8", "10.0.0.1:80", 5, 90, tp(t2, "b" * 16))
    o1 = txn("10.0.0.1", "10.0.0.2:80", 10, 20, tp(t1, "c" * 16))   # inside both in time
    o2 = txn("10.0.0.1", "10.0.0.2:80", 12, 22, tp(t2, "d" * 16))
    leaf = txn("10.0.0.2", "10.0.0.3:80", 14, 18, tp(t1, "e" * 16))
    b = ChainBuilder()
    for r in (r1, r2, o1, o2, leaf):
        b.add(r)
    chains = {c["trace_id"]: c for c in b.flush()}
    ids = {n: transaction_id(r) for n, r in (("r1", r1), ("r2", r2), ("o1", o1), ("o2", o2), ("leaf", leaf))}
    assert parents(chains[t1]) == {ids["r1"]: (None, LINK_ROOT), ids["o1"]: (ids["r1"], LINK_TRACE),
                                   ids["leaf"]: (ids["o1"], LINK_TRACE)}
    assert parents(chains[t2]) == {ids["r2"]: (None, LINK_ROOT), ids["o2"]: (ids["r2"], LINK_TRACE)}


def test_pid_links_the_serving_process_and_tells_overlapping_requests_apart() -> None:
    # two processes on one node address: only the pids tell who called whom
    a1 = txn("10.0.0.9", "10.0.0.1:80", 0, 50, server_pid=100)
    a2 = txn("10.0.0.9", "10.0.0.1:81", 10, 60, server_pid=200)
    out1 = txn("10.0.0.1", "10.0.0.5:80", 20, 30, client_pid=200, server_pid=300)  # inside both: pid 200's
    out2 = txn("10.0.0.1", "10.0.0.5:80", 52, 55, client_pid=200, server_pid=300)  # only in a2
    stray = txn("10.0.0.1", "10.0.0.5:80", 1, 5, client_pid=999)  # a pid that served nothing: no parent
    b = ChainBuilder()
    for r in (a1, a2, out1, out2, stray):
        b.add(r)
    chains = b.flush()
    assert len(chains) == 1
    ids = {n: transaction_id(r) for n, r in (("a2", a2), ("out1", out1), ("out2", out2))}
    assert parents(chains[0]) == {ids["a2"]: (None, LINK_ROOT), ids["out1"]: (ids["a2"], LINK_PID),
                                  ids["out2"]: (ids["a2"], LINK_PID)}
    assert b.counters["single_transactions"] == 2  # a1 and the stray request: no chain


def test_pid_concurrency_two_overlapping_inbound_requests_of_one_process() -> None:
    """Two requests served by one process at once: an outbound call inside both goes to
    the innermost (the later one), and the hop says two requests fitted."""
    in1 = txn("10.0.0.9", "10.0.0.1:80", 0, 100, server_pid=7)
    in2 = txn("10.0.0.8", "10.0.0.1:80", 30, 80, server_pid=7)
    early = txn("10.0.0.1", "10.0.0.5:80", 10, 20, client_pid=7)   # only in1 was open
    both = txn("10.0.0.1", "10.0.0.5:80", 40, 50, client_pid=7)    # both open
    late = txn("10.0.0.1", "10.0.0.5:80", 85, 95, client_pid=7)    # in2 had ended
    b = ChainBuilder()
    for r in (in1, in2, early, both, late):
        b.add(r)
    chains = {c["root_id"]: c for c in b.flush()}
    i1, i2 = transaction_id(in1), transaction_id(in2)
    assert set(chains) == {i1, i2}
    assert {h["transaction_id"] for h in chains[i1]["hops"]} == {i1, transaction_id(early), transaction_id(late)}
    hop = {h["transaction_id"]: h for h in chains[i2]["hops"]}[transaction_id(both)]
    assert hop["parent_id"] == i2 and hop["candidates"] == 2


def test_address_nested_three_tiers_on_one_ip() -> None:
    """Capture files on loopback: every end is 127.0.0.1; time containment nests them."""
    front = txn("127.0.0.1", "127.0.0.1:8001", 0, 100)
    gate = txn("127.0.0.1", "127.0.0.1:8002", 10, 90)
    back = txn("127.0.0.1", "127.0.0.1:8003", 20, 80)
    c = one_chain([back, gate, front])
    assert parents(c) == {transaction_id(front): (None, LINK_ROOT),
                          transaction_id(gate): (transaction_id(front), LINK_ADDRESS),
                          transaction_id(back): (transaction_id(gate), LINK_ADDRESS)}
    lines = chain_tree_lines(c)
    assert len(lines) == 4 and "127.0.0.1:8003/" in lines[3] and lines[3].startswith("    └─ ")


def test_advance_waits_for_lateness_and_late_parent() -> None:
    b = ChainBuilder(lateness_us=1_000_000)
    front = txn("127.0.0.1", "127.0.0.1:8001", 0, 100)
    back = txn("127.0.0.1", "127.0.0.1:8003", 20, 80)
    b.add(back)
    assert b.advance(100_000) == []       # back ended at 80 ms: not yet a second ago
    b.add(front)                            # its parent comes later, within the lateness
    assert b.advance(1_050_000) == []      # the root ended at 100 ms
    chains = b.advance(1_100_001)
    assert len(chains) == 1 and chains[0]["hop_count"] == 2 and len(b) == 0


def test_eviction_is_bounded_and_counted() -> None:
    b = ChainBuilder(max_held=3)
    recs = [txn("10.0.0.9", "10.0.0.1:80", i * 10, i * 10 + 5) for i in range(5)]
    for r in recs:
        b.add(r)
    assert len(b) == 3 and b.counters["evicted"] == 2
    b.add(recs[-1])  # the same record again (a worker's restart): once
    assert b.counters["duplicates"] == 1 and len(b) == 3
    with pytest.raises(ValueError, match="max_held"):
        ChainBuilder(max_held=0)


def test_different_traces_are_not_linked_by_address() -> None:
    a = txn("10.0.0.9", "10.0.0.1:80", 0, 100, {"traceparent": f"00-{'1' * 32}-{'a' * 16}-01"})
    b_ = txn("10.0.0.1", "10.0.0.2:80", 10, 20, {"traceparent": f"00-{'2' * 32}-{'b' * 16}-01"})
    b = ChainBuilder()
    b.add(a)
    b.add(b_)
    assert b.flush() == [] and b.counters["single_transactions"] == 2
