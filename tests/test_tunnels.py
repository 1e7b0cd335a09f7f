"""Tunnel decapsulation through the whole pipeline, tshark as the referee.

Captures are written by scapy here, one per encapsulation: VXLAN (4789, and 8472, which
tshark decodes only when told: ``-d udp.port==8472,vxlan``), Geneve with an option, GRE
with checksum/key/sequence over IPv4 and IPv6, GRE transparent Ethernet bridging, ERSPAN
types II and III, IP-in-IP (4in4, 6in4, 4in6, 6in6), Teredo, GTP-U, PPPoE, an MPLS label
stack, an MPLS Ethernet pseudo-wire with a control word, a tunnel in a tunnel in a tunnel,
VXLAN whose outer packets are IP fragments and VXLAN carrying inner IP fragments (both
reassembled, as tshark does), and the link types that carry IP without Ethernet (PPP, PPP in HDLC framing, Cisco HDLC,
FDDI, 802.11 plain and with radiotap). Each carries the same small HTTP exchange and a DNS
query and answer between inner addresses. One ``wirestream analyze`` run reads them all;
per capture, the inner TCP conversations, DNS pairs and HTTP pairs tshark finds are the
records wirestream writes, and the tunnel counters reach ``wire.stats``.

Then real overlays: two network namespaces joined by a veth (tests/netns.py), a VXLAN
device on 4789, one with no ``dstport`` (the kernel's default, 8472) and a Geneve device
on top, HTTP requests and DNS queries between the overlay addresses, tcpdump on the
underlay veth; the same comparison with tshark on those captures.
"""

from __future__ import annotations

import itertools
import json
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import captures as cap
import pytest
from helpers import analyze_cases, needs, requires_tshark, tshark_rows
from netns import LossyLink, netns_available, readline
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.contrib.gtp import GTP_U_Header
from scapy.contrib.mpls import MPLS
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.dot11 import Dot11, Dot11QoS, RadioTap
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import GRE, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

# inner (overlay) and outer (underlay) addresses: a record must carry the inner ones
CLIENT4, SERVER4, RESOLVER4 = "10.244.1.5", "10.244.2.7", "10.96.0.10"
CLIENT6, SERVER6, RESOLVER6 = "fd00:244:1::5", "fd00:244:2::7", "fd00:96::a"
NODE_A4, NODE_B4 = "192.168.50.1", "192.168.50.2"
NODE_A6, NODE_B6 = "2001:db8:50::1", "2001:db8:50::2"
# MACs of known vendors (Intel, VMware): Wireshark's pseudo-wire heuristic looks them up
MAC_A, MAC_B = "00:1b:21:00:00:01", "00:50:56:00:00:02"
REQUEST = b"GET /inner HTTP/1.1\r\nHost: pod.example\r\n\r\n"
BODY = b"inner body"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY

LINKTYPE_ETHERNET, LINKTYPE_PPP, LINKTYPE_FDDI, LINKTYPE_PPP_HDLC = 1, 9, 10, 50
LINKTYPE_C_HDLC, LINKTYPE_IEEE802_11, LINKTYPE_RADIOTAP = 104, 105, 127
LINKTYPE_PFLOG, LINKTYPE_PPI, LINKTYPE_NFLOG = 117, 192, 239


def _inner(version: int) -> list[Packet]:
    """An HTTP exchange on one TCP connection and a DNS query and answer, as IP packets."""
    if version == 4:
        c, s, r = IP(src=CLIENT4, dst=SERVER4), IP(src=SERVER4, dst=CLIENT4), IP(src=RESOLVER4, dst=CLIENT4)
        q = IP(src=CLIENT4, dst=RESOLVER4)
    else:
        c, s, r = IPv6(src=CLIENT6, dst=SERVER6), IPv6(src=SERVER6, dst=CLIENT6), IPv6(src=RESOLVER6, dst=CLIENT6)
        q = IPv6(src=CLIENT6, dst=RESOLVER6)
    cp, sp = 43210, 80
    name = "svc.cluster.example."
    return [
        q / UDP(sport=45000, dport=53) / DNS(id=7, rd=1, qd=DNSQR(qname=name, qtype="A")),
        r / UDP(sport=53, dport=45000) / DNS(id=7, qr=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype="A"),
                                           an=DNSRR(rrname=name, type="A", ttl=30, rdata="10.244.2.7")),
        c / TCP(sport=cp, dport=sp, flags="S", seq=1000),
        s / TCP(sport=sp, dport=cp, flags="SA", seq=5000, ack=1001),
        c / TCP(sport=cp, dport=sp, flags="A", seq=1001, ack=5001),
        c / TCP(sport=cp, dport=sp, flags="PA", seq=1001, ack=5001) / REQUEST,
        s / TCP(sport=sp, dport=cp, flags="PA", seq=5001, ack=1001 + len(REQUEST)) / RESPONSE,
        c / TCP(sport=cp, dport=sp, flags="FA", seq=1001 + len(REQUEST), ack=5001 + len(RESPONSE)),
        s / TCP(sport=sp, dport=cp, flags="FA", seq=5001 + len(RESPONSE), ack=1002 + len(REQUEST)),
        c / TCP(sport=cp, dport=sp, flags="A", seq=1002 + len(REQUEST), ack=5002 + len(RESPONSE)),
    ]


def _forward(p: Packet) -> bool:
    """Whether an inner packet goes from the client's side (node A) to node B."""
    src = p[IP].src if IP in p else p[IPv6].src
    return src in (CLIENT4, CLIENT6)


def _eth(p: Packet) -> Packet:
    """An inner packet in an inner Ethernet frame."""
    a, b = (MAC_A, MAC_B) if _forward(p) else (MAC_B, MAC_A)
    return Ether(src=a, dst=b) / p


def _outer4(p: Packet) -> Packet:
    a, b = (NODE_A4, NODE_B4) if _forward(p) else (NODE_B4, NODE_A4)
    return Ether(src=MAC_A, dst=MAC_B) / IP(src=a, dst=b)


def _outer6(p: Packet) -> Packet:
    a, b = (NODE_A6, NODE_B6) if _forward(p) else (NODE_B6, NODE_A6)
    return Ether(src=MAC_A, dst=MAC_B) / IPv6(src=a, dst=b)


def _geneve(p: Packet) -> Packet:
    opt = GeneveOptions(classid=0x0102, type=0x80, data=b"\x01\x02\x03\x04")
    return _outer4(p) / UDP(sport=51000, dport=6081) / GENEVE(vni=42, proto=0x6558, options=[opt]) / _eth(p)


def _erspan3(p: Packet) -> Packet:
    return _outer4(p) / GRE(seqnum_present=1, proto=0x22EB) / ERSPAN_III(session_id=3) / _eth(p)


def _nested(p: Packet) -> Packet:
    """VXLAN in GRE (with a key) in IPv4-in-IPv6: three tunnels."""
    return (_outer6(p) / IP(src="172.16.0.1", dst="172.16.0.2") / GRE(key_present=1, key=9)
            / IP(src="172.17.0.1", dst="172.17.0.2") / UDP(sport=51000, dport=4789) / VXLAN(vni=7) / _eth(p))


_IDS = itertools.count(1000)


def _fragments(ip: Packet, fragsize: int) -> list[Packet]:
    """An IPv4 packet, given an identification of its own, in fragments of `fragsize`."""
    whole = IP(bytes(ip))
    whole.id = next(_IDS)
    del whole.chksum
    return fragment(IP(bytes(whole)), fragsize=fragsize)


def _vxlan_outer_fragments(p: Packet) -> list[Packet]:
    """VXLAN over a path with a small MTU: the outer packet in IP fragments."""
    outer = _outer4(p) / UDP(sport=51000, dport=4789) / VXLAN(vni=42) / _eth(p)
    return [Ether(src=MAC_A, dst=MAC_B) / f for f in _fragments(outer[IP], 64)]


def _vxlan_inner_fragments(p: Packet) -> list[Packet]:
    """An overlay whose own (inner) packets are IP fragments, each in its VXLAN frame."""
    return [_outer4(p) / UDP(sport=51000, dport=4789) / VXLAN(vni=42) / _eth(f) for f in _fragments(p, 32)]


# Teredo's authentication indicator (client id 2 bytes, authentication value 3, nonce,
# confirmation) and origin indication (port, address, obfuscated)
TEREDO_INDICATORS = b"\x00\x01\x02\x03\x09\x09\x08\x08\x08" + bytes(range(1, 9)) + b"\x00" + b"\x00\x00\xf2\x27\x01\x02\x03\x04"


def _gtpu_extension(p: Packet) -> Packet:
    """A G-PDU with the E flag: a PDU session container extension header, then the end."""
    inner = bytes(p)
    header = b"\x34\xff" + struct.pack("!H", len(inner) + 8) + b"\x00\x00\x00\x09\x00\x00\x00\x85\x01\x10\x01\x00"
    return _outer4(p) / UDP(sport=2152, dport=2152) / Raw(header + inner)


def _snap(p: Packet) -> bytes:
    return b"\xaa\xaa\x03\x00\x00\x00" + struct.pack("!H", 0x0800 if IP in p else 0x86DD) + bytes(p)


#: name -> (IP version of the inner packets, link type, encapsulation of one inner IP packet,
#: the counters the capture must give (per frame), tshark's extra options)
Encap = Callable[[Packet], Packet | bytes | list[Packet]]
CASES: dict[str, tuple[int, int, Encap, dict[str, int], list[str]]] = {
    "vxlan": (4, 1, lambda p: _outer4(p) / UDP(sport=51000, dport=4789) / VXLAN(vni=42) / _eth(p),
              {"tunnel_vxlan": 1}, []),
    "vxlan-8472": (6, 1, lambda p: _outer4(p) / UDP(sport=51000, dport=8472) / VXLAN(vni=42) / _eth(p),
                   {"tunnel_vxlan": 1}, ["-d", "udp.port==8472,vxlan"]),
    "geneve": (4, 1, _geneve, {"tunnel_geneve": 1}, []),
    "gre-csum-key-seq": (4, 1, lambda p: _outer4(p) / GRE(chksum_present=1, key_present=1, key=5,
                                                        seqnum_present=1, sequence_number=3) / p,
                         {"tunnel_gre": 1}, []),
    "gre6": (6, 1, lambda p: _outer6(p) / GRE(key_present=1, key=5, proto=0x86DD) / p, {"tunnel_gre": 1}, []),
    "gre-teb": (4, 1, lambda p: _outer4(p) / GRE(proto=0x6558) / _eth(p), {"tunnel_gre": 1}, []),
    "erspan2": (4, 1, lambda p: _outer4(p) / GRE(seqnum_present=1, proto=0x88BE) / ERSPAN_II(session_id=2)
                / _eth(p), {"tunnel_erspan": 1}, []),
    "erspan3": (6, 1, _erspan3, {"tunnel_erspan": 1}, []),
    "4in4": (4, 1, lambda p: _outer4(p) / p, {"tunnel_ipip": 1}, []),
    "6in4": (6, 1, lambda p: _outer4(p) / p, {"tunnel_ipip": 1}, []),
    "4in6": (4, 1, lambda p: _outer6(p) / p, {"tunnel_ipip": 1}, []),
    "6in6": (6, 1, lambda p: _outer6(p) / p, {"tunnel_ipip": 1}, []),
    "teredo": (6, 1, lambda p: _outer4(p) / UDP(sport=3544, dport=3544) / p, {"tunnel_teredo": 1}, []),
    "teredo-indicators": (6, 1, lambda p: _outer4(p) / UDP(sport=3544, dport=40001) / Raw(TEREDO_INDICATORS + bytes(p)),
                          {"tunnel_teredo": 1}, []),
    "gtpu-extension": (6, 1, _gtpu_extension, {"tunnel_gtpu": 1}, []),
    "gtpu": (4, 1, lambda p: _outer4(p) / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=9, gtp_type=255, S=1,
                                                                                   seq=5) / p,
             {"tunnel_gtpu": 1}, []),
    "pppoe": (6, 1, lambda p: Ether(src=MAC_A, dst=MAC_B) / PPPoE(sessionid=7)
              / PPP(proto=0x0021 if IP in p else 0x0057) / p, {"tunnel_pppoe": 1}, []),
    "mpls": (4, 1, lambda p: Ether(src=MAC_A, dst=MAC_B) / MPLS(label=100, s=0) / MPLS(label=200, s=1) / p,
             {"tunnel_mpls": 1}, []),
    "mpls-pw": (4, 1, lambda p: Ether(src=MAC_A, dst=MAC_B, type=0x8847) / MPLS(label=300, s=1)
                / Raw(b"\x00\x00\x00\x00") / _eth(p), {"tunnel_mpls": 1}, []),
    "nested": (4, 1, _nested, {"tunnel_ipip": 1, "tunnel_gre": 1, "tunnel_vxlan": 1}, []),
    # per inner packet: decapsulated once its outer datagram is complete
    "vxlan-outer-fragments": (4, 1, _vxlan_outer_fragments, {"tunnel_vxlan": 1}, []),
    # per frame (each fragment's frame is decapsulated), see INNER_FRAGMENTED
    "vxlan-inner-fragments": (4, 1, _vxlan_inner_fragments, {"tunnel_vxlan": 1}, []),
    "ppp": (4, LINKTYPE_PPP, lambda p: b"\xff\x03" + struct.pack("!H", 0x21 if IP in p else 0x57) + bytes(p), {}, []),
    "ppp-hdlc": (6, LINKTYPE_PPP_HDLC, lambda p: b"\xff\x03" + struct.pack("!H", 0x21 if IP in p else 0x57)
                 + bytes(p), {}, []),
    "c-hdlc": (4, LINKTYPE_C_HDLC, lambda p: b"\x0f\x00\x08\x00" + bytes(p), {}, []),
    "fddi": (4, LINKTYPE_FDDI, lambda p: b"\x50" + b"\x00\x1b\x21\x00\x00\x01\x00\x50\x56\x00\x00\x02" + _snap(p),
             {}, []),
    "wlan": (4, LINKTYPE_IEEE802_11, lambda p: bytes(Dot11(type=2, subtype=0, FCfield=2, addr1=MAC_A, addr2=MAC_B,
                                                          addr3=MAC_B)) + _snap(p), {}, []),
    "radiotap": (6, LINKTYPE_RADIOTAP, lambda p: bytes(RadioTap(present="Flags", Flags=0)
                                                       / Dot11(type=2, subtype=8, FCfield=1, addr1=MAC_B, addr2=MAC_A,
                                                               addr3=MAC_B) / Dot11QoS()) + _snap(p), {}, []),
    # PPI (version 0, flags 0, 8 bytes, then 802.11)
    "ppi": (4, LINKTYPE_PPI, lambda p: struct.pack("<BBHI", 0, 0, 8, LINKTYPE_IEEE802_11)
            + bytes(Dot11(type=2, subtype=0, FCfield=2, addr1=MAC_A, addr2=MAC_B, addr3=MAC_B)) + _snap(p), {}, []),
    # firewall logs: netfilter's NFLOG, OpenBSD's pflog
    "nflog": (6, LINKTYPE_NFLOG, lambda p: cap.nflog(bytes(p)), {}, []),
    "pflog": (4, LINKTYPE_PFLOG, lambda p: cap.pflog(bytes(p)), {}, []),
}


def _write(path: Path, linktype: int, frames: list[bytes]) -> Path:
    """A classic pcap of `frames`, 1 ms apart."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
    for i, f in enumerate(frames):
        out += struct.pack("<IIII", 1_700_000_000, i * 1000, len(f), len(f)) + f
    path.write_bytes(bytes(out))
    return path


#: the cases whose tunnel counters count frames rather than inner packets
INNER_FRAGMENTED = {"vxlan-inner-fragments"}


def _frames(name: str) -> tuple[int, list[bytes]]:
    version, linktype, encap, _, _ = CASES[name]
    frames = []
    for p in _inner(version):
        out = encap(p)
        frames += [bytes(f) for f in out] if isinstance(out, list) else [bytes(out)]
    return linktype, frames


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict, dict[str, dict[str, list]]]:
    """Every case's capture, analyze's --json summary, and per case its records by topic."""
    tmp = tmp_path_factory.mktemp("tunnels")
    paths = {name: _write(tmp / f"{name}.pcap", *_frames(name)) for name in CASES}
    summary, records = analyze_cases(paths, tmp / "out",
                                     ("wire.dns", "wire.transactions", "wire.connections", "wire.flows"))
    return paths, summary, records


@pytest.fixture(scope="module")
def referee(analyzed) -> dict[str, dict[str, list]]:
    """Per case, what tshark finds: the TCP conversations (the innermost addresses and
    ports of each stream's SYN), the DNS pairs and the HTTP pairs. All captures at once."""
    paths, _, _ = analyzed
    names = list(paths)
    found: dict[str, dict[str, list]] = {name: {} for name in names}
    # the innermost occurrence of an address field is the inner packet's
    last = ["-E", "occurrence=l"]
    for name in names:
        extra = CASES[name][4]
        (syns,) = tshark_rows([paths[name]], ["ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst", "tcp.dstport"],
                              "tcp.flags.syn == 1 && tcp.flags.ack == 0", options=[*last, *extra])
        v6 = CASES[name][0] == 6
        found[name]["tcp"] = sorted((s6 if v6 else s4, int(sp), d6 if v6 else d4, int(dp))
                                    for s4, s6, sp, d4, d6, dp in syns)
        (dns,) = tshark_rows([paths[name]], ["dns.qry.name", "dns.flags.rcode", "dns.count.answers"],
                             "dns.flags.response == 1 && dns.response_to", options=["-2", *extra])
        found[name]["dns"] = sorted((n, int(rc), int(c)) for n, rc, c in dns)
        (http,) = tshark_rows([paths[name]], ["http.response.code", "http.request.method", "http.request.uri"],
                              "http.response && http.request_in", options=["-2", *extra])
        found[name]["http"] = [int(code) for code, *_ in http]
    return found


def _endpoint(rec: dict, side: str) -> tuple[str, int]:
    return rec[f"{side}_ip"], rec[f"{side}_port"]


@requires_tshark
@pytest.mark.parametrize("case", list(CASES))
def test_inner_conversations_are_tsharks(analyzed, referee, case: str) -> None:
    """The inner TCP conversation tshark finds is wirestream's connection record (inner
    addresses and ports, not the nodes'), and so are the DNS and HTTP pairs."""
    _, _, records = analyzed
    theirs = referee[case]
    version = CASES[case][0]
    client, server, resolver = (CLIENT4, SERVER4, RESOLVER4) if version == 4 else (CLIENT6, SERVER6, RESOLVER6)
    # the referee sees what the capture holds: one inner TCP conversation, one DNS pair, one HTTP pair
    assert theirs["tcp"] == [(client, 43210, server, 80)]
    assert theirs["dns"] == [("svc.cluster.example", 0, 1)]
    assert theirs["http"] == [200]
    conns = records[case].get("wire.connections", [])
    ours_tcp = sorted((*_endpoint(r, "client"), *_endpoint(r, "server")) for r in conns)
    assert ours_tcp == theirs["tcp"]
    dns = records[case].get("wire.dns", [])
    assert sorted((r["query_name"].rstrip("."), 0 if r["rcode"] == "NOERROR" else -1, len(r["answers"]))
                  for r in dns if r["response_ts_us"] is not None) == theirs["dns"]
    assert [r["server_ip"] for r in dns] == [resolver]
    tx = records[case].get("wire.transactions", [])
    assert [(t["method"], t["path"], t["status"]) for t in tx] == [("GET", "/inner", 200)]
    assert [t["response_body_size"] for t in tx] == [len(BODY)]


#: The outer path every record of a case carries (kind, id, the client side's and the
#: server side's outer address), outermost first: worked out from how CASES builds the
#: frames; the first layer's values are checked against tshark's below.
_A4, _B4, _A6, _B6 = (NODE_A4, NODE_B4), (NODE_B4, NODE_A4), (NODE_A6, NODE_B6), (NODE_B6, NODE_A6)
PATHS: dict[str, list[tuple[str, int | None, str | None, str | None]]] = {
    "vxlan": [("vxlan", 42, *_A4)],
    "vxlan-8472": [("vxlan", 42, *_A4)],
    "geneve": [("geneve", 42, *_A4)],
    "gre-csum-key-seq": [("gre", 5, *_A4)],
    "gre6": [("gre", 5, *_A6)],
    "gre-teb": [("gre", None, *_A4)],
    "erspan2": [("erspan", 2, *_A4)],
    "erspan3": [("erspan", 3, *_A4)],
    "4in4": [("ipip", None, *_A4)],
    "6in4": [("ipip", None, *_A4)],
    "4in6": [("ipip", None, *_A6)],
    "6in6": [("ipip", None, *_A6)],
    "teredo": [("teredo", None, *_A4)],
    "teredo-indicators": [("teredo", None, *_A4)],
    "gtpu-extension": [("gtpu", 9, *_A4)],
    "gtpu": [("gtpu", 9, *_A4)],
    "pppoe": [("pppoe", 7, None, None)],
    "mpls": [("mpls", 100, None, None)],
    "mpls-pw": [("mpls", 300, None, None)],
    # the middle layers' addresses are the same in both directions (see _nested)
    "nested": [("ipip", None, *_A6), ("gre", 9, "172.16.0.1", "172.16.0.2"), ("vxlan", 7, "172.17.0.1", "172.17.0.2")],
    "vxlan-outer-fragments": [("vxlan", 42, *_A4)],
    "vxlan-inner-fragments": [("vxlan", 42, *_A4)],
}
assert _B4 and _B6  # the server-side-first orders: no record here starts from the server


@pytest.mark.parametrize("case", list(CASES))
def test_records_carry_their_outer_path(analyzed, case: str) -> None:
    """Every record of the inner flows (TCP connection, HTTP transaction, DNS query and
    its UDP flow) carries the tunnel path it came through, outer addresses on the client
    and server sides; a capture of a plain link type carries none."""
    _, _, records = analyzed
    want = [{"kind": k, "id": i, "outer_client_ip": c, "outer_server_ip": sv} for k, i, c, sv in PATHS.get(case, [])]
    by_topic = records[case]
    for topic in ("wire.connections", "wire.transactions", "wire.dns", "wire.flows"):
        assert by_topic.get(topic), (case, topic)
        for rec in by_topic[topic]:
            assert rec.get("tunnel", []) == want, (case, topic, rec.get("tunnel"))


#: tshark's field for a layer kind's identifier
_TSHARK_ID = {"vxlan": "vxlan.vni", "geneve": "geneve.vni", "gre": "gre.key", "erspan": "erspan.spanid",
              "gtpu": "gtp.teid", "pppoe": "pppoe.session_id", "mpls": "mpls.label"}


@requires_tshark
def test_outer_paths_are_tsharks(analyzed) -> None:
    """The outermost layer's identifier and addresses are what tshark reads from the
    client's SYN (its first occurrence of each field)."""
    paths, _, records = analyzed
    checked = 0
    for case, path in PATHS.items():
        kind, ident, client, server = path[0]
        fields = ["ip.src", "ip.dst", "ipv6.src", "ipv6.dst"] + ([_TSHARK_ID[kind]] if kind in _TSHARK_ID else [])
        (rows,) = tshark_rows([paths[case]], fields, "tcp.flags.syn == 1 && tcp.flags.ack == 0",
                              options=["-E", "occurrence=f", *CASES[case][4]])
        assert len(rows) == 1, (case, rows)
        s4, d4, s6, d6, *tid = rows[0]
        if client is not None:
            assert (client, server) == ((s6, d6) if ":" in client else (s4, d4)), case
        if kind in _TSHARK_ID:
            assert ident == (int(tid[0], 0) if tid[0] else None), (case, tid)
        (conn,) = records[case]["wire.connections"]
        assert conn["tunnel"][0]["id"] == ident
        checked += 1
    assert checked == len(PATHS)


def _producer_counters(summary: dict, index: int) -> dict[str, int]:
    reports = [s for s in summary["stats"] if s["stage"].startswith("producer") and s["final"]
               and s["source_id"].rsplit("-", 1)[1] == str(index)]
    assert len(reports) == 1, [s["stage"] for s in summary["stats"]]
    return reports[0]["counters"]


def test_tunnel_counters_reach_the_stats(analyzed) -> None:
    """Every inner packet is a packet, every other frame a fragment held for reassembly
    (nothing else dropped), and each capture's frames were counted under their tunnel kinds
    (once per layer) in the producer's final wire.stats report."""
    paths, summary, _ = analyzed
    files = {Path(f["path"]).stem: f for f in summary["files"]}
    for index, name in enumerate(paths):
        packets, frames = len(_inner(CASES[name][0])), len(_frames(name)[1])
        dropped = {"ip_fragment": frames - packets} if frames > packets else {}
        assert (files[name]["frames"], files[name]["packets"], files[name]["dropped"]) == (frames, packets, dropped), name
        counters = _producer_counters(summary, index)
        tunnels = {k: v for k, v in counters.items() if k.startswith("tunnel_")}
        per = frames if name in INNER_FRAGMENTED else packets
        assert tunnels == {k: n * per for k, n in CASES[name][3].items()}, name
    # the fragment cases were fragmented, and reassembled
    for name in ("vxlan-outer-fragments", "vxlan-inner-fragments"):
        assert len(_frames(name)[1]) > len(_inner(4)) + 3
        assert _producer_counters(summary, list(paths).index(name))["ip_datagrams_reassembled"] >= 4


# --- real overlays between network namespaces ----------------------------------------------

NETNS_UNAVAILABLE = netns_available()
OVERLAY_REQUESTS = 3
HTTP_PORT, DNS_PORT = 8080, 53

# Receiver: answer OVERLAY_REQUESTS HTTP requests (one per connection) and as many DNS
# queries (one A record each), then exit.
OVERLAY_SERVER = textwrap.dedent(r"""
    import socket, sys
    host, n, http_port, dns_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, http_port))
    srv.listen(8)
    srv.settimeout(30)
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind((host, dns_port))
    dns.settimeout(30)
    print("ready", flush=True)
    for _ in range(n):
        q, peer = dns.recvfrom(512)
        answer = bytes([10, 201, 0, 2])
        dns.sendto(q[:2] + b"\x81\x80" + q[4:6] + b"\x00\x01\x00\x00\x00\x00" + q[12:]
                   + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04" + answer, peer)
        c, _ = srv.accept()
        c.settimeout(20)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        body = b"overlay " + data.split(b" ")[1]
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        c.close()
""")

# Sender: per round, a DNS query for pod<i>.overlay.example, then GET /pod<i>.
OVERLAY_CLIENT = textwrap.dedent(r"""
    import socket, struct, sys
    host, n, http_port, dns_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    for i in range(n):
        name = b"".join(bytes([len(p)]) + p for p in (b"pod%d" % i, b"overlay", b"example")) + b"\x00"
        q = struct.pack("!HHHHHH", 100 + i, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"
        d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        d.settimeout(10)
        d.sendto(q, (host, dns_port))
        if d.recv(512)[:2] != q[:2]:
            sys.exit("bad DNS answer")
        c = socket.create_connection((host, http_port), timeout=10)
        c.sendall(b"GET /pod%d HTTP/1.1\r\nHost: overlay.example\r\nConnection: close\r\n\r\n" % i)
        got = b""
        while chunk := c.recv(4096):
            got += chunk
        if not got.startswith(b"HTTP/1.1 200"):
            sys.exit(f"bad HTTP answer {got!r}")
        c.close()
    print("done", flush=True)
""")

#: name -> (the overlay device's `ip link add` arguments after the name, tshark's options,
#: the tunnel counter, the underlay's UDP port)
OVERLAYS = {
    "vxlan": (["type", "vxlan", "id", "42", "dstport", "4789"], [], "tunnel_vxlan", 4789),
    # no dstport: the kernel's default, 8472, which tshark decodes only when told
    "vxlan-default-port": (["type", "vxlan", "id", "43"], ["-d", "udp.port==8472,vxlan"], "tunnel_vxlan", 8472),
    "geneve": (["type", "geneve", "id", "44"], [], "tunnel_geneve", 6081),
}


def _overlay_capture(name: str, path: Path) -> str | None:
    """Two namespaces, an overlay device of kind `name` in each over their veth, the
    client/server exchange between the overlay addresses, tcpdump on the underlay.
    Returns why not when this kernel has no such device type."""
    args = OVERLAYS[name][0]
    with LossyLink(loss_percent=0, rate_mbit=None) as link:
        ends = ((link.sender, link.sender_if, link.sender_ip, link.receiver_ip, "10.201.0.1"),
                (link.receiver, link.receiver_if, link.receiver_ip, link.sender_ip, "10.201.0.2"))
        for ns, dev, local, remote, overlay in ends:
            extra = ["local", local, "dev", dev] if args[1] == "vxlan" else []
            added = link.run(ns, ["ip", "link", "add", "ovl0", *args, "remote", remote, *extra], check=False)
            if "Unknown device type" in added.stderr:
                return f"this kernel has no {args[1]} devices (ip link add: {added.stderr.strip()})"
            assert added.returncode == 0, added.stderr
            link.run(ns, ["ip", "addr", "add", f"{overlay}/24", "dev", "ovl0"])
            link.offloads_off(ns, "ovl0")
            link.run(ns, ["ip", "link", "set", "ovl0", "up"])
        cap = link.capture(link.sender, link.sender_if, str(path))
        try:
            server = link.popen(link.receiver, [sys.executable, "-c", OVERLAY_SERVER, "10.201.0.2",
                                                str(OVERLAY_REQUESTS), str(HTTP_PORT), str(DNS_PORT)])
            assert readline(server, 10) == "ready", server.stderr.read() if server.poll() is not None else ""
            client = link.run(link.sender, [sys.executable, "-c", OVERLAY_CLIENT, "10.201.0.2",
                                            str(OVERLAY_REQUESTS), str(HTTP_PORT), str(DNS_PORT)], check=False)
            assert client.returncode == 0 and client.stdout.strip() == "done", client.stderr
            server.wait(timeout=10)
            time.sleep(0.3)  # the last FIN/ACK onto the capture
        finally:
            cap.stop()
    return None


@pytest.fixture(scope="module")
def overlays(tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[dict[str, Path], dict, dict[str, dict[str, list]], dict[str, str]]:
    """The captures of the real overlays, analyze's summary, their records by topic, and
    the overlays this kernel cannot make (and why)."""
    if NETNS_UNAVAILABLE:
        pytest.skip(f"network namespaces: {NETNS_UNAVAILABLE}")
    tmp = tmp_path_factory.mktemp("overlays")
    paths, missing = {}, {}
    for name in OVERLAYS:
        path = tmp / f"{name}.pcap"
        why = _overlay_capture(name, path)
        if why:
            missing[name] = why
        else:
            paths[name] = path
    out = tmp / "out"
    proc = subprocess.run([sys.executable, "-m", "wirestream", "analyze", *map(str, paths.values()), "--out",
                           str(out), "--json", "--no-progress"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = list(paths)
    records: dict[str, dict[str, list]] = {name: {} for name in names}
    for topic in ("wire.dns", "wire.transactions", "wire.connections"):
        with open(out / f"{topic}.jsonl") as f:
            for line in f:
                rec = json.loads(line)
                records[names[int(rec["source_id"].rsplit("-", 1)[1])]].setdefault(topic, []).append(rec)
    return paths, json.loads(proc.stdout), records, missing


@requires_tshark
@needs(NETNS_UNAVAILABLE and f"network namespaces: {NETNS_UNAVAILABLE}")
@pytest.mark.parametrize("name", list(OVERLAYS))
def test_real_overlay_conversations_are_tsharks(overlays, name: str) -> None:
    """On the underlay's capture of a real VXLAN/Geneve overlay, the inner TCP
    conversations, DNS pairs and HTTP pairs tshark finds are wirestream's records."""
    paths, summary, records, missing = overlays
    if name in missing:
        pytest.skip(missing[name])
    extra = OVERLAYS[name][1]
    (ports,) = tshark_rows([paths[name]], ["udp.dstport"], "tcp", options=["-E", "occurrence=f", *extra])
    assert {int(p) for (p,) in ports} == {OVERLAYS[name][3]}  # the underlay port the kernel used
    (syns,) = tshark_rows([paths[name]], ["ip.src", "tcp.srcport", "ip.dst", "tcp.dstport"],
                          "tcp.flags.syn == 1 && tcp.flags.ack == 0", options=["-E", "occurrence=l", *extra])
    theirs_tcp = sorted((s, int(sp), d, int(dp)) for s, sp, d, dp in syns)
    assert len(theirs_tcp) == OVERLAY_REQUESTS and {t[2] for t in theirs_tcp} == {"10.201.0.2"}
    ours_tcp = sorted((*_endpoint(r, "client"), *_endpoint(r, "server")) for r in records[name]["wire.connections"])
    assert ours_tcp == theirs_tcp
    (dns,) = tshark_rows([paths[name]], ["dns.qry.name", "dns.a"], "dns.flags.response == 1 && dns.response_to",
                         options=["-2", *extra])
    theirs_dns = sorted((n, a) for n, a in dns)
    assert len(theirs_dns) == OVERLAY_REQUESTS
    ours_dns = sorted((r["query_name"].rstrip("."), ",".join(a["data"] if isinstance(a, dict) else a
                                                                for a in r["answers"]))
                      for r in records[name].get("wire.dns", []) if r["response_ts_us"] is not None)
    assert ours_dns == theirs_dns
    (http,) = tshark_rows([paths[name]], ["http.request.uri", "http.response.code"], "http.response && http.request_in",
                          options=["-2", "-d", f"tcp.port=={HTTP_PORT},http", "-E", "occurrence=f", *extra])
    assert len(http) == OVERLAY_REQUESTS
    ours_http = sorted((t["path"], t["status"]) for t in records[name].get("wire.transactions", []))
    assert ours_http == [(f"/pod{i}", 200) for i in range(OVERLAY_REQUESTS)]
    index = list(paths).index(name)
    counters = _producer_counters(summary, index)
    assert counters[OVERLAYS[name][2]] >= 4 * OVERLAY_REQUESTS  # every inner packet came through the tunnel
    # every record names the underlay path: the kind, the VNI the device was given, and
    # the nodes' (veth) addresses on the client's and the server's side, as tshark reads them
    (outer,) = tshark_rows([paths[name]], ["ip.src", "ip.dst", "vxlan.vni", "geneve.vni"],
                           "tcp.flags.syn == 1 && tcp.flags.ack == 0", options=["-E", "occurrence=f", *extra])
    (src, dst, *vni) = outer[0]
    want = [{"kind": OVERLAYS[name][0][1], "id": int(OVERLAYS[name][0][3]), "outer_client_ip": src,
             "outer_server_ip": dst}]
    assert int("".join(vni)) == want[0]["id"]
    for topic in ("wire.connections", "wire.transactions", "wire.dns"):
        assert [r["tunnel"] for r in records[name][topic]] == [want] * len(records[name][topic]), topic
