"""UDP and ICMP flows on ``wire.flows``: tshark as the referee for what a flow counts,
Zeek's rules for its direction and ``conn_state``, the ``communityid`` package for its
Community ID.

One ``wirestream analyze`` run reads the bundled captures that hold UDP (DNS, mostly:
tests/data/chrissanders, see its README) and a capture written here by scapy with the
cases the bundled ones lack: other services (NTP, DHCP, QUIC, syslog, SNMP, SSDP), a flow
that starts with the server's answer (Zeek turns it around), a one-way flow, IPv6, a flow
idle for more than the inactivity timeout (two records), a UDP datagram in IP
fragments (one packet, counted once), and ICMP: echoes, a closed port's unreachable, a
router's "fragmentation needed", ICMPv6 echo and packet too big.

tshark's ``udp.stream`` groups the packets of one pair of endpoints for the whole capture
(its ``conv,udp`` rows): per pair and direction, the frames, their ``frame.len`` and the
UDP payload bytes it shows are the flow's ``packets_*``, ``frame_bytes_*`` and
``bytes_*`` (a pair wirestream split at an idle minute is summed first: tshark has no
timeout).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from helpers import analyze_cases, requires_tshark, tshark_rows, write_ether_pcap
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6
from scapy.packet import Packet, Raw

DATA = Path(__file__).parent / "data" / "chrissanders"
BUNDLED = ["dns.pcap", "dns_isp_hijack.pcapng", "dns_lab.pcapng", "dns_query_nonexistent.pcapng",
           "dns_recursivequery_server.pcapng", "dns_reverse_lookup.pcapng", "http_espn.pcapng",
           "http_espn_fail.pcapng", "nowebaccess1.pcapng", "stranded_branchdns.pcapng", "udp_dnsrequest.pcapng"]

C4, S4, R4 = "10.20.0.1", "10.20.0.2", "10.20.0.254"
C6, S6, R6 = "fd00:20::1", "fd00:20::2", "fd00:20::fe"
T0 = 1_700_000_000


def _ntp() -> bytes:
    return bytes([0x23]) + bytes(47)  # LI 0, version 4, mode 3 (client)


def _dhcp_discover() -> bytes:
    return bytes([1, 1, 6, 0]) + bytes(232) + b"\x63\x82\x53\x63" + b"\x35\x01\x01\xff"


def _quic_initial() -> bytes:
    return bytes([0xC3]) + (1).to_bytes(4, "big") + bytes([8]) + bytes(8) + bytes([0]) + bytes(40)


def _dns_query() -> bytes:
    return bytes.fromhex("1234 0100 0001 0000 0000 0000") + b"\x07example\x03com\x00\x00\x01\x00\x01"


def _crafted() -> list[tuple[float, Packet]]:
    """(time offset in seconds, packet) of the scapy capture's cases."""
    c, s = IP(src=C4, dst=S4), IP(src=S4, dst=C4)
    big = IP(bytes(IP(src=C4, dst=S4, id=99) / UDP(sport=41000, dport=9999) / Raw(b"f" * 2600)))
    return [
        (0.0, c / UDP(sport=40123, dport=123) / Raw(_ntp())),
        (0.1, s / UDP(sport=123, dport=40123) / Raw(_ntp())),
        (0.2, IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / Raw(_dhcp_discover())),
        (0.3, c / UDP(sport=50000, dport=443) / Raw(_quic_initial())),
        (0.4, s / UDP(sport=443, dport=50000) / Raw(b"\x40" + bytes(30))),  # short header
        (0.5, c / UDP(sport=51514, dport=514) / Raw(b"<34>Oct 11 22:14:15 host su: 'su root' failed")),
        (0.6, c / UDP(sport=40161, dport=161) / Raw(bytes.fromhex("302602010104067075626c6963"))),
        (0.7, c / UDP(sport=41900, dport=1900) / Raw(b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n\r\n")),
        # the capture starts with the answer: the resolver is still the server
        (1.0, s / UDP(sport=53, dport=45053) / Raw(bytes.fromhex("abcd8180000100000000000000"))),
        (1.1, c / UDP(sport=45053, dport=53) / Raw(_dns_query())),
        # one way: nothing comes back
        (2.0, c / UDP(sport=42000, dport=7777) / Raw(b"hello?")),
        (2.1, c / UDP(sport=42000, dport=7777) / Raw(b"hello??")),
        # IPv6
        (3.0, IPv6(src=C6, dst=S6) / UDP(sport=43000, dport=53) / Raw(_dns_query())),
        (3.1, IPv6(src=S6, dst=C6) / UDP(sport=53, dport=43000) / Raw(bytes.fromhex("1234818000010000000000000"
                                                                                    "7076578616d706c6503636f6d0000010001"))),
        # the same endpoints, quiet for 61 s, then again: two flows
        (4.0, c / UDP(sport=44000, dport=8888) / Raw(b"one")),
        (4.1, s / UDP(sport=8888, dport=44000) / Raw(b"ONE")),
        (65.2, c / UDP(sport=44000, dport=8888) / Raw(b"two")),
        # a datagram in IP fragments: one packet, on the frame that completes it
        *[(66.0 + i / 100, f) for i, f in enumerate(fragment(big, fragsize=1000))],
        # ICMP: two echoes and their replies (one flow), a closed port's unreachable quoting
        # its UDP datagram, a router's "fragmentation needed" (MTU 1280) quoting a TCP
        # segment with DF, ICMPv6 echo and packet too big (MTU 1400)
        (67.0, c / ICMP(type=8, id=7, seq=1) / Raw(b"ping")),
        (67.1, s / ICMP(type=0, id=7, seq=1) / Raw(b"ping")),
        (67.2, c / ICMP(type=8, id=7, seq=2) / Raw(b"ping")),
        (67.3, s / ICMP(type=0, id=7, seq=2) / Raw(b"ping")),
        (68.0, closed := c / UDP(sport=46000, dport=9) / Raw(b"anyone?")),
        (68.1, s / ICMP(type=3, code=3) / Raw(bytes(closed)[:28])),
        (69.0, IP(src=R4, dst=C4) / ICMP(type=3, code=4, nexthopmtu=1280)
               / Raw(bytes(IP(src=C4, dst=S4, flags="DF") / TCP(sport=47000, dport=443, flags="A"))[:28])),
        (70.0, IPv6(src=C6, dst=S6) / ICMPv6EchoRequest(id=9, seq=1)),
        (70.1, IPv6(src=S6, dst=C6) / ICMPv6EchoReply(id=9, seq=1)),
        (71.0, IPv6(src=R6, dst=C6) / ICMPv6PacketTooBig(mtu=1400)
               / Raw(bytes(IPv6(src=C6, dst=S6) / UDP(sport=48000, dport=4433) / Raw(b"q" * 1500))[:48])),
    ]


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], dict[int, list[dict[str, Any]]], dict]:
    """The captures, wire.flows records by the capture's index, and analyze's summary."""
    tmp = tmp_path_factory.mktemp("flows")
    crafted = _crafted()
    paths = [DATA / name for name in BUNDLED] + [write_ether_pcap(tmp / "crafted.pcap", [p for _, p in crafted],
                                                                  [t for t, _ in crafted])]
    summary, records = analyze_cases({str(i): p for i, p in enumerate(paths)}, tmp / "out", ("wire.flows",),
                                     "--community-id-seed", "7")
    flows = {int(i): r.get("wire.flows", []) for i, r in records.items()}
    return paths, flows, summary


def _us(epoch: str) -> int:
    sec, _, frac = epoch.partition(".")
    return int(sec) * 1_000_000 + int((frac + "000000")[:6])


def _tshark_flows(rows: list[list[str]]) -> dict[frozenset, dict[str, Any]]:
    """Per pair of endpoints (tshark's udp.stream): per sender, [frames, frame bytes,
    payload bytes], and the first and last packet times."""
    flows: dict[frozenset, dict[str, Any]] = {}
    for ip4s, ip6s, sport, ip4d, ip6d, dport, flen, ulen, epoch in rows:
        src, dst = (ip4s or ip6s, int(sport)), (ip4d or ip6d, int(dport))
        f = flows.setdefault(frozenset((src, dst)), {"dirs": defaultdict(lambda: [0, 0, 0]), "ts": []})
        d = f["dirs"][src]
        d[0] += 1
        d[1] += int(flen)
        d[2] += int(ulen) - 8
        f["ts"].append(_us(epoch))
    return flows


def _our_flows(records: list[dict[str, Any]]) -> dict[frozenset, dict[str, Any]]:
    """The same from wire.flows' UDP flows, flows of one pair (split at an idle minute) summed."""
    flows: dict[frozenset, dict[str, Any]] = {}
    for r in records:
        if r["transport"] != "udp":
            continue
        client, server = (r["client_ip"], r["client_port"]), (r["server_ip"], r["server_port"])
        f = flows.setdefault(frozenset((client, server)), {"dirs": defaultdict(lambda: [0, 0, 0]), "ts": []})
        for who, side in ((client, "c2s"), (server, "s2c")):
            if r[f"packets_{side}"]:
                d = f["dirs"][who]
                d[0] += r[f"packets_{side}"]
                d[1] += r[f"frame_bytes_{side}"]
                d[2] += r[f"bytes_{side}"]
        f["ts"] += [r["start_ts_us"], r["end_ts_us"]]
    return flows


@requires_tshark
def test_every_udp_conversation_tshark_finds_is_a_flow_with_its_counts(analyzed) -> None:
    paths, flows, _ = analyzed
    fields = ["ip.src", "ipv6.src", "udp.srcport", "ip.dst", "ipv6.dst", "udp.dstport", "frame.len", "udp.length",
              "frame.time_epoch"]
    # not the UDP headers quoted inside ICMP errors; the first IP header of each (-E occurrence)
    per_path = tshark_rows(paths, fields, "udp && !icmp && !icmpv6", options=["-E", "occurrence=f"])
    compared = 0
    for i, (path, rows) in enumerate(zip(paths, per_path, strict=True)):
        theirs = _tshark_flows(rows)
        ours = _our_flows(flows[i])
        assert set(ours) == set(theirs), path.name
        for pair, t in theirs.items():
            o = ours[pair]
            assert dict(o["dirs"]) == dict(t["dirs"]), (path.name, sorted(pair))
            assert (min(o["ts"]), max(o["ts"])) == (min(t["ts"]), max(t["ts"])), (path.name, sorted(pair))
            compared += 1
    assert compared >= 40


def _crafted_flows(analyzed) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """The crafted capture's UDP flows by (client ip, client port)."""
    paths, flows, _ = analyzed
    out: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in flows[len(paths) - 1]:
        if r["transport"] == "udp":
            out[(r["client_ip"], r["client_port"])].append(r)
    return out


@requires_tshark
def test_icmp_flows_are_the_messages_tshark_shows(analyzed) -> None:
    """Every ICMP/ICMPv6 message tshark shows is in one flow (an echo and its replies
    together, the requester as client); the type and code, the MTU and the quoted
    datagram of an error are tshark's; an error's quoted Community ID is its flow's."""
    paths, flows, _ = analyzed
    crafted = flows[len(paths) - 1]
    icmp = {(r["client_ip"], r["server_ip"], r["icmp_type"], r["icmp_code"]): r
            for r in crafted if r["transport"] == "icmp"}
    fields = ["ip.src", "ipv6.src", "ip.dst", "ipv6.dst", "icmp.type", "icmp.code", "icmpv6.type", "icmpv6.code",
              "icmp.mtu", "icmpv6.mtu", "udp.srcport", "udp.dstport", "tcp.srcport", "tcp.dstport"]
    (rows,) = tshark_rows([paths[-1]], fields, "icmp || icmpv6", options=["-E", "occurrence=a"])
    # 4 echo messages, an unreachable, a fragmentation needed, 2 ICMPv6 echo, a packet too big
    assert len(rows) == sum(r["packets_c2s"] + r["packets_s2c"] for r in icmp.values()) == 9
    seen = {}  # (outer source, outer destination) -> the last message tshark shows between them
    types = defaultdict(set)  # ... -> every (type, code)
    for ip4s, ip6s, ip4d, ip6d, t4, c4, t6, c6, mtu4, mtu6, usp, udp_, tsp, tdp in rows:
        # the outer addresses are the first occurrence; the quoted datagram's the second
        src, dst = (ip4s or ip6s).split(","), (ip4d or ip6d).split(",")
        seen[(src[0], dst[0])] = (int(t4 or t6), int(c4 or c6), int(mtu4 or mtu6 or 0),
                                  (src[1:], dst[1:], usp or tsp, udp_ or tdp))
        types[(src[0], dst[0])].add(seen[(src[0], dst[0])][:2])
    echo, echo6 = icmp[(C4, S4, 8, 0)], icmp[(C6, S6, 128, 0)]
    assert (echo["packets_c2s"], echo["packets_s2c"], echo["conn_state"], echo["path_mtu"]) == (2, 2, "OTH", None)
    assert types[(C4, S4)] == {(8, 0)} and types[(S4, C4)] == {(0, 0), (3, 3)}
    assert (echo6["packets_c2s"], echo6["packets_s2c"], echo6["ip_version"]) == (1, 1, 6)
    unreachable = icmp[(S4, C4, 3, 3)]
    # seen[(S4, C4)] is the last message S4 sent C4: the unreachable (after the replies)
    assert seen[(S4, C4)] == (3, 3, 0, ([C4], [S4], "46000", "9"))
    assert (unreachable["quoted_transport"], unreachable["quoted_src_ip"], unreachable["quoted_src_port"],
            unreachable["quoted_dst_ip"], unreachable["quoted_dst_port"]) == ("udp", C4, 46000, S4, 9)
    (udp_flow,) = _crafted_flows(analyzed)[(C4, 46000)]
    assert unreachable["quoted_community_id"] == udp_flow["community_id"]  # the join to the flow it is about
    frag = icmp[(R4, C4, 3, 4)]
    assert seen[(R4, C4)][:3] == (3, 4, 1280) and frag["path_mtu"] == 1280
    assert (frag["quoted_transport"], frag["quoted_src_port"], frag["quoted_dst_port"]) == ("tcp", 47000, 443)
    too_big = icmp[(R6, C6, 2, 0)]
    assert seen[(R6, C6)][:3] == (2, 0, 1400) and too_big["path_mtu"] == 1400
    assert (too_big["quoted_transport"], too_big["quoted_src_ip"], too_big["quoted_dst_port"]) == ("udp", C6, 4433)


def test_service_direction_and_state_as_zeek_has_them(analyzed) -> None:
    f = _crafted_flows(analyzed)
    expected = {  # client -> (server, service, conn_state)
        (C4, 40123): ((S4, 123), "ntp", "SF"),
        ("0.0.0.0", 68): (("255.255.255.255", 67), "dhcp", "S0"),
        (C4, 50000): ((S4, 443), "quic", "SF"),
        (C4, 51514): ((S4, 514), "syslog", "S0"),
        (C4, 40161): ((S4, 161), "snmp", "S0"),
        (C4, 41900): ((S4, 1900), "ssdp", "S0"),
        # the answer came first, from port 53: Zeek's flip makes the resolver the server
        (C4, 45053): ((S4, 53), "dns", "SF"),
        (C4, 42000): ((S4, 7777), None, "S0"),
        (C6, 43000): ((S6, 53), "dns", "SF"),
        (C4, 41000): ((S4, 9999), None, "S0"),
    }
    for client, (server, service, state) in expected.items():
        (r,) = f[client]
        assert ((r["server_ip"], r["server_port"]), r["service"], r["conn_state"]) == (server, service, state), client
        # ended_by: timeout or end_of_input, as the capture time of the flow's partition
        # went on past its idle minute or not (capture time is per partition)
        assert r["transport"] == "udp" and r["ended_by"] in ("timeout", "end_of_input")
    flipped = f[(C4, 45053)][0]
    assert (flipped["packets_c2s"], flipped["packets_s2c"]) == (1, 1)
    assert flipped["start_ts_us"] == (T0 + 1) * 1_000_000  # the answer's time: the flow's first packet
    assert f[(C6, 43000)][0]["ip_version"] == 6
    (frag,) = f[(C4, 41000)]
    assert (frag["packets_c2s"], frag["bytes_c2s"]) == (1, 2600)  # reassembled: one datagram


def test_a_flow_idle_past_the_timeout_is_two_records(analyzed) -> None:
    first, second = sorted(_crafted_flows(analyzed)[(C4, 44000)], key=lambda r: r["start_ts_us"])
    assert (first["ended_by"], first["packets_c2s"], first["packets_s2c"], first["conn_state"]) == ("timeout", 1, 1, "SF")
    assert first["end_ts_us"] == int((T0 + 4.1) * 1_000_000)
    assert (second["ended_by"], second["packets_c2s"], second["packets_s2c"], second["conn_state"]) == (
        "end_of_input", 1, 0, "S0")
    assert second["start_ts_us"] == int((T0 + 65.2) * 1_000_000)
    assert first["flow_id"] != second["flow_id"]


def test_community_id_is_the_reference_implementations(analyzed) -> None:
    """The ``communityid`` package (Corelight's reference in Python), seed 7 as analyze ran."""
    import communityid

    _, flows, _ = analyzed
    cid = communityid.CommunityID(seed=7)
    checked = icmp = 0
    for records in flows.values():
        for r in records:
            if r["transport"] == "icmp":
                make = communityid.FlowTuple.make_icmp if r["ip_version"] == 4 else communityid.FlowTuple.make_icmp6
                tpl = make(r["client_ip"], r["server_ip"], r["icmp_type"], r["icmp_code"])
                icmp += 1
            else:
                tpl = communityid.FlowTuple.make_udp(r["client_ip"], r["server_ip"], r["client_port"],
                                                     r["server_port"])
            assert r["community_id"] == cid.calc(tpl), r
            checked += 1
    assert checked >= 50 and icmp == 5


def test_flows_are_counted_in_the_processors_report(analyzed) -> None:
    paths, flows, summary = analyzed
    emitted = sum(s["emitted"].get("wire.flows", 0) for s in summary["stats"]
                  if s["stage"] == "processor.packets" and s["final"])
    assert emitted == sum(len(v) for v in flows.values()) > 0
