"""IP fragment reassembly (IPv4 and IPv6) through the whole pipeline, tshark as the referee.

Captures are written by scapy here: a DNS query and a large answer (a DNSSEC-sized
response) fragmented in order, reversed, with an overlapping fragment, with a fragment
missing, over IPv4 and IPv6 (with a hop-by-hop header before the Fragment header), and an
HTTP exchange whose response segment is fragmented. One ``wirestream analyze`` run reads
them all; per capture, the DNS pairs tshark finds (it reassembles IPv4 and IPv6 by
default) are the records wirestream writes (name, rcode, answer count), a missing
fragment leaves both without an answer, and the reassembly counters reach ``wire.stats``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import analyze_cases, requires_tshark, tshark_rows, write_ether_pcap
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, fragment6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from wirestream.producers.decode import FrameDecoder

CLIENT4, SERVER4 = "10.9.0.1", "10.9.0.53"
CLIENT6, SERVER6 = "fd00:9::1", "fd00:9::53"
RCODES = {"0": "NOERROR", "3": "NXDOMAIN"}
ANSWERS = 120  # 120 A records: a ~2 KB answer, 2-3 fragments at 1000 bytes


def _dns_pair(ip_query: Packet, ip_answer: Packet, name: str, qid: int, answers: int) -> tuple[Packet, Packet]:
    q = DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype="A"))
    rrs = [DNSRR(rrname=name, type="A", ttl=300, rdata=f"192.0.2.{i % 250 + 1}") for i in range(answers)]
    r = DNS(id=qid, qr=1, aa=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype="A"), an=rrs)
    return ip_query / UDP(sport=40000 + qid, dport=53) / q, ip_answer / UDP(sport=53, dport=40000 + qid) / r


def _v4_frames(order: str) -> list[Packet]:
    """A small query (whole) and its big answer in IPv4 fragments, arranged as `order` says."""
    query, answer = _dns_pair(IP(src=CLIENT4, dst=SERVER4), IP(src=SERVER4, dst=CLIENT4, id=4242),
                              "big.example.", 1, ANSWERS)
    answer = IP(bytes(answer))  # lengths and checksums computed: fragment() splits the bytes
    frags = fragment(answer, fragsize=1000)
    assert len(frags) >= 3
    if order == "reversed":
        frags = frags[::-1]
    elif order == "overlapping":
        # a fragment overlapping the end of the first and the start of the second, same bytes
        payload = bytes(answer[UDP])
        extra = IP(src=SERVER4, dst=CLIENT4, id=4242, proto=17, flags="MF", frag=496 // 8) / Raw(payload[496:1496])
        frags = [frags[0], extra, *frags[1:]]
    elif order == "missing":
        frags = [f for i, f in enumerate(frags) if i != 1]
    return [query, *frags]


def _v6_frames(order: str) -> list[Packet]:
    """The same over IPv6, a hop-by-hop header before the Fragment header."""
    query, answer = _dns_pair(IPv6(src=CLIENT6, dst=SERVER6),
                              IPv6(src=SERVER6, dst=CLIENT6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(id=0x6006),
                              "big6.example.", 2, ANSWERS)
    frags = fragment6(IPv6(bytes(answer)), 1000)
    assert len(frags) >= 3
    if order == "reversed":
        frags = frags[::-1]
    elif order == "missing":
        frags = frags[:1] + frags[2:]
    return [query, *frags]


def _http_frames() -> list[Packet]:
    """An HTTP exchange on a TCP connection whose response segment is in IPv4 fragments."""
    c, s = IP(src=CLIENT4, dst=SERVER4), IP(src=SERVER4, dst=CLIENT4)
    cp, sp = 41000, 80
    req = b"GET /frag HTTP/1.1\r\nHost: frag.example\r\n\r\n"
    body = b"x" * 2500
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    resp_pkt = IP(bytes(s.copy() / TCP(sport=sp, dport=cp, flags="PA", seq=5001, ack=1001 + len(req)) / resp))
    resp_pkt.id = 777
    resp_pkt = IP(bytes(resp_pkt))
    return [
        c / TCP(sport=cp, dport=sp, flags="S", seq=1000),
        s / TCP(sport=sp, dport=cp, flags="SA", seq=5000, ack=1001),
        c / TCP(sport=cp, dport=sp, flags="A", seq=1001, ack=5001),
        c / TCP(sport=cp, dport=sp, flags="PA", seq=1001, ack=5001) / req,
        *fragment(resp_pkt, fragsize=1000),
        c / TCP(sport=cp, dport=sp, flags="A", seq=1001 + len(req), ack=5001 + len(resp)),
        c / TCP(sport=cp, dport=sp, flags="FA", seq=1001 + len(req), ack=5001 + len(resp)),
        s / TCP(sport=sp, dport=cp, flags="FA", seq=5001 + len(resp), ack=1002 + len(req)),
        c / TCP(sport=cp, dport=sp, flags="A", seq=1002 + len(req), ack=5002 + len(resp)),
    ]


CASES = {
    "v4-in-order": lambda: _v4_frames("in-order"),
    "v4-reversed": lambda: _v4_frames("reversed"),
    "v4-overlapping": lambda: _v4_frames("overlapping"),
    "v4-missing": lambda: _v4_frames("missing"),
    "v6-in-order": lambda: _v6_frames("in-order"),
    "v6-reversed": lambda: _v6_frames("reversed"),
    "v6-missing": lambda: _v6_frames("missing"),
    "http-tcp": _http_frames,
}


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict, dict[str, dict[str, list]]]:
    """Every case's capture, analyze's --json summary, and per case its records by topic."""
    tmp = tmp_path_factory.mktemp("frags")
    paths = {name: write_ether_pcap(tmp / f"{name}.pcap", make()) for name, make in CASES.items()}
    summary, records = analyze_cases(paths, tmp / "out", ("wire.dns", "wire.transactions", "wire.connections"))
    return paths, summary, records


def _tshark_dns(path: Path) -> tuple[list[tuple[str, str, int]], list[str]]:
    """(name, rcode, answer count) of every response tshark pairs with a query, and the
    names of the queries it leaves unanswered."""
    fields = ["dns.flags.response", "dns.qry.name", "dns.flags.rcode", "dns.count.answers", "dns.response_in"]
    (rows,) = tshark_rows([path], fields, "dns", options=["-2"])  # response_in needs two passes
    answered, unanswered = [], []
    for response, name, rcode, count, response_in in rows:
        if response == "1":
            answered.append((name, RCODES[rcode], int(count)))
        elif not response_in:
            unanswered.append(name)
    return answered, unanswered


@requires_tshark
@pytest.mark.parametrize("case", [c for c in CASES if c != "http-tcp"])
def test_dns_pairs_are_tsharks(analyzed, case: str) -> None:
    """The DNS pairs tshark finds are wirestream's records; with a fragment missing, both
    leave the query unanswered."""
    paths, _, records = analyzed
    answered, unanswered = _tshark_dns(paths[case])
    ours = records[case].get("wire.dns", [])
    ours_answered = [(r["query_name"].rstrip(".") + ".", r["rcode"], len(r["answers"]))
                     for r in ours if r["response_ts_us"] is not None]
    ours_unanswered = [r["query_name"].rstrip(".") + "." for r in ours if r["response_ts_us"] is None]
    theirs_answered = [(n.rstrip(".") + ".", rc, c) for n, rc, c in answered]
    theirs_unanswered = [n.rstrip(".") + "." for n in unanswered]
    assert ours_answered == theirs_answered
    assert ours_unanswered == theirs_unanswered
    if case.endswith("missing"):
        assert theirs_answered == [] and len(theirs_unanswered) == 1
    else:
        assert theirs_answered == [(theirs_answered[0][0], "NOERROR", ANSWERS)]


@requires_tshark
def test_fragmented_tcp_segment_gives_the_http_pair(analyzed) -> None:
    """The HTTP response in IPv4 fragments is paired with its request, as tshark pairs it."""
    paths, _, records = analyzed
    (rows,) = tshark_rows([paths["http-tcp"]], ["http.response.code", "http.request_in"], "http.response")
    assert [r[0] for r in rows] == ["200"] and rows[0][1]
    ours = records["http-tcp"].get("wire.transactions", [])
    assert [(t["method"], t["path"], t["status"]) for t in ours] == [("GET", "/frag", 200)]
    assert ours[0]["response_body_size"] == 2500


def _producer_counters(summary: dict, case: str, paths: dict[str, Path]) -> dict[str, int]:
    index = list(paths).index(case)
    reports = [s for s in summary["stats"] if s["stage"].startswith("producer") and s["final"]
               and s["source_id"].rsplit("-", 1)[1] == str(index)]
    assert len(reports) == 1, [s["stage"] for s in summary["stats"]]
    return reports[0]["counters"]


def test_counters_reach_the_stats(analyzed) -> None:
    """Per capture: every frame is a packet or a named drop, and the reassembly counters
    are in the producer's final wire.stats report."""
    paths, summary, _ = analyzed
    files = {Path(f["path"]).stem: f for f in summary["files"]}
    for name, f in files.items():
        assert f["frames"] == f["packets"] + sum(f["dropped"].values()), name
    counters = {name: _producer_counters(summary, name, paths) for name in paths}
    assert counters["v4-in-order"]["ip_datagrams_reassembled"] == 1
    # the extra fragment overlaps the first, then the second overlaps the extra one
    assert counters["v4-overlapping"]["ip_fragment_overlaps"] == 2
    assert "ip_fragment_overlap_conflicts" not in counters["v4-overlapping"]
    assert counters["v6-reversed"]["ip_datagrams_reassembled"] == 1
    assert counters["http-tcp"]["ip_datagrams_reassembled"] == 1
    # a missing fragment: the others are still held at the end of the capture
    assert "ip_datagrams_reassembled" not in counters["v4-missing"]
    assert counters["v4-missing"]["ip_fragments_held"] == files["v4-missing"]["dropped"]["ip_fragment"] >= 1
    assert files["v4-in-order"]["dropped"]["ip_fragment"] == len(_v4_frames("in-order")) - 2


def test_frame_decoder_counts_and_times_out() -> None:
    """FrameDecoder alone: the packet comes on the last fragment; a datagram left
    incomplete for 30 s of capture time is counted as timed out."""
    _, answer = _dns_pair(IP(src=CLIENT4, dst=SERVER4), IP(src=SERVER4, dst=CLIENT4, id=9), "t.example.", 3, 80)
    frags = [bytes(Ether() / f) for f in fragment(IP(bytes(answer)), fragsize=1000)]
    decoder = FrameDecoder()
    t0 = 1_700_000_000_000_000
    out = [decoder.decode(1, f, t0 + i, len(f), i + 1) for i, f in enumerate(frags)]
    assert out[:-1] == [None] * (len(frags) - 1)
    fields, payload = out[-1]
    assert (fields[1], fields[3], payload) == (len(frags), len(bytes(answer[UDP].payload)),
                                               bytes(answer[UDP].payload))
    # the first fragment again, then another datagram's fragment 30 s later
    assert decoder.decode(1, frags[0], t0 + 10, len(frags[0]), 10) is None
    late = bytes(Ether() / fragment(IP(bytes(answer), id=10), fragsize=1000)[0])
    assert decoder.decode(1, late, t0 + 30_000_010, len(late), 11) is None
    assert decoder.counters == {"ip_datagrams_reassembled": 1, "ip_fragments_timed_out": 1,
                                "ip_fragments_held": 1}
    assert decoder.dropped == {"ip_fragment": len(frags) - 1 + 2}
