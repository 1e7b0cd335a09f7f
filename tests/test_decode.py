"""producers.decode: every link type and encapsulation down to TCP/UDP, and every drop reason.

Frames are built at test time by ``tests/captures.py`` (documentation addresses only).
The last test replays crafted captures through the reader and the decoder and compares
the decoded packets with ``tshark -Y 'tcp or udp'``.
"""

from __future__ import annotations

import random
import socket

import captures as cap
import pytest
from helpers import requires_tshark, tshark_rows
from scapy.layers.inet import IP, IPOption_RR
from scapy.layers.inet6 import IPv6
from scapy.layers.sctp import (
    SCTP,
    SCTPChunkAuthentication,
    SCTPChunkData,
    SCTPChunkInit,
    SCTPChunkSACK,
)
from wirestream.producers.capture_file import SUPPORTED_LINKTYPES, open_capture
from wirestream.producers.decode import FrameDecoder

FIELDS = ("ts_us", "frame", "wire_len", "payload_len", "seq", "ack", "src_ip", "dst_ip", "src_port",
          "dst_port", "window", "tcp_flags", "ip_version", "proto", "wscale", "options")
#: Drop reasons documented in producers/decode.py.
REASONS = {"non_ip", "unsupported_linktype", "unsupported_transport", "ip_fragment", "ip_fragment_bad",
           "truncated_link",
           "truncated_ip", "truncated_transport", "bad_ip_version", "bad_tunnel", "tunnel_too_deep",
           "tunnel_fragment"}

NULL, ETH, RAW12, RAW14, RAW, LOOP, SLL, IPV4, IPV6, SLL2 = 0, 1, 12, 14, 101, 108, 113, 228, 229, 276
PFLOG, NFLOG = 117, 239
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, NS = 1, 2, 4, 8, 16, 32, 64, 128, 256
TS_US, NUMBER = 1_700_000_000_123_456, 42


def decode(linktype: int, frame: bytes, decoder: FrameDecoder | None = None):
    """Decode one frame; return (decoder, fields dict or None, payload or None)."""
    decoder = decoder or FrameDecoder()
    out = decoder.decode(linktype, frame, TS_US, len(frame) + 4, NUMBER)
    if out is None:
        return decoder, None, None
    assert len(out[0]) == len(FIELDS)
    return decoder, dict(zip(FIELDS, out[0], strict=True)), out[1]


def ntop(addr: bytes) -> str:
    assert len(addr) in (4, 16)
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


def assert_dropped(linktype: int, frame: bytes, reason: str) -> None:
    """The frame is not decoded and counted once under exactly this reason."""
    decoder, fields, _ = decode(linktype, frame)
    assert fields is None
    assert decoder.dropped == {reason: 1}


# --- well-formed packets ------------------------------------------------------------------

V4 = (cap.CLIENT4, cap.SERVER4)
V6 = (cap.CLIENT6, cap.SERVER6)


def tcp_case(name: str, linktype: int, wrap, addrs=V4, payload: bytes = b"hello, wirestream", **kw):
    """A TCP segment in an encapsulation, with the fields the decoder must return."""
    args = dict(src=addrs[0], dst=addrs[1], sport=40123, dport=8443, seq=0xDEADBEEF, ack=123456789,
                flags=PSH | ACK, window=4321, payload=payload) | kw
    expect = dict(ip_version=6 if ":" in addrs[0] else 4, proto=6, src=addrs[0], dst=addrs[1],
                  src_port=args["sport"], dst_port=args["dport"], seq=args["seq"], ack=args["ack"],
                  tcp_flags=args["flags"], window=args["window"], payload_len=len(payload),
                  payload=payload, wscale=-1, options=0)
    return pytest.param(linktype, wrap(cap.tcp(**args)), expect, id=name)


def udp_case(name: str, linktype: int, wrap, addrs=V4, payload: bytes = b"datagram!"):
    """A UDP datagram in an encapsulation, with the fields the decoder must return."""
    frame = wrap(cap.udp(src=addrs[0], dst=addrs[1], sport=40321, dport=47000, payload=payload))
    expect = dict(ip_version=6 if ":" in addrs[0] else 4, proto=17, src=addrs[0], dst=addrs[1],
                  src_port=40321, dst_port=47000, seq=0, ack=0, tcp_flags=0, window=0,
                  payload_len=len(payload), payload=payload, wscale=-1, options=0)
    return pytest.param(linktype, frame, expect, id=name)


def _with(fn, **kw):
    return lambda l3: fn(l3, **kw)


def _ext_case():
    """IPv6 + hop-by-hop + destination options + routing headers before TCP."""
    payload = b"behind three extension headers"
    frame = cap.ethernet(cap.ipv6_ext_tcp(payload=payload, seq=77, ack=88, window=999))
    expect = dict(ip_version=6, proto=6, src=cap.CLIENT6, dst=cap.SERVER6, src_port=40002, dst_port=443,
                  seq=77, ack=88, tcp_flags=PSH | ACK, window=999, payload_len=len(payload),
                  payload=payload, wscale=-1, options=0)
    return pytest.param(ETH, frame, expect, id="eth-ipv6-ext-headers-tcp")


def _ah_case():
    """IPv6 + Authentication Header (length in 4-byte units, unlike the others) before TCP."""
    payload = b"authenticated"
    expect = dict(ip_version=6, proto=6, src=cap.CLIENT6, dst=cap.SERVER6, src_port=40005, dst_port=443,
                  seq=0, ack=0, tcp_flags=PSH | ACK, window=8192, payload_len=len(payload),
                  payload=payload, wscale=-1, options=0)
    return pytest.param(RAW, cap.ipv6_ah_tcp(payload=payload), expect, id="raw-ipv6-ah-tcp")


CASES = [
    tcp_case("eth-ipv4-tcp", ETH, cap.ethernet),
    tcp_case("eth-ipv4-tcp-df", ETH, cap.ethernet, flags=ACK, payload=b"", ip_flags="DF"),
    # IHL 7: a record-route option makes the IPv4 header 28 bytes
    tcp_case("eth-ipv4-options-tcp", ETH, cap.ethernet, ip_options=[IPOption_RR(routers=["192.0.2.99"])]),
    # 54-byte frame padded to 60 with 0xaa: the padding is not payload (IP length decides)
    tcp_case("eth-ipv4-tcp-padded", ETH, _with(cap.ethernet, pad_byte=b"\xaa"), payload=b"", flags=ACK),
    udp_case("eth-ipv4-udp-padded", ETH, _with(cap.ethernet, pad_byte=b"\xaa"), payload=b"abc"),
    tcp_case("eth-ipv6-tcp", ETH, cap.ethernet, V6),
    udp_case("eth-ipv6-udp", ETH, cap.ethernet, V6),
    tcp_case("eth-ipv4-tcp-all-flags", ETH, cap.ethernet, flags=0x1FF),
    tcp_case("vlan-ipv4-tcp", ETH, cap.vlan),
    udp_case("vlan-ipv6-udp", ETH, cap.vlan, V6, payload=b""),
    tcp_case("qinq-ipv4-tcp", ETH, cap.qinq, payload=b"x"),
    udp_case("qinq-ipv6-udp", ETH, cap.qinq, V6),
    tcp_case("sll-ipv4-tcp", SLL, cap.sll),
    udp_case("sll-ipv6-udp", SLL, cap.sll, V6),
    udp_case("sll2-ipv4-udp", SLL2, cap.sll2),
    tcp_case("sll2-ipv6-tcp", SLL2, cap.sll2, V6),
    tcp_case("raw101-ipv4-tcp", RAW, cap.raw),
    udp_case("raw101-ipv6-udp", RAW, cap.raw, V6),
    tcp_case("raw12-ipv6-tcp", RAW12, cap.raw, V6),
    udp_case("raw14-ipv4-udp", RAW14, cap.raw),
    tcp_case("ipv4-228-tcp", IPV4, cap.raw),
    udp_case("ipv6-229-udp", IPV6, cap.raw, V6),
    tcp_case("null-af2-le-tcp", NULL, cap.null),
    udp_case("null-af2-be-udp", NULL, _with(cap.null, big_endian=True)),  # big-endian capturing host
    tcp_case("null-af24-ipv6-tcp", NULL, _with(cap.null, family=24), V6),
    udp_case("null-af28-ipv6-udp", NULL, _with(cap.null, family=28), V6),
    tcp_case("null-af30-ipv6-tcp", NULL, _with(cap.null, family=30), V6),
    tcp_case("null-af10-ipv6-tcp", NULL, _with(cap.null, family=10), V6),
    tcp_case("loop-af2-tcp", LOOP, cap.loop),
    udp_case("loop-af24-ipv6-udp", LOOP, cap.loop, V6),
    # firewall logs: netfilter's NFLOG in either host byte order, OpenBSD's pflog
    tcp_case("nflog-ipv4-tcp", NFLOG, cap.nflog),
    udp_case("nflog-ipv6-udp", NFLOG, cap.nflog, V6),
    tcp_case("nflog-be-ipv6-tcp", NFLOG, _with(cap.nflog, big_endian=True), V6),
    udp_case("nflog-be-ipv4-udp", NFLOG, _with(cap.nflog, big_endian=True)),
    tcp_case("pflog-ipv4-tcp", PFLOG, cap.pflog),
    udp_case("pflog-af24-ipv6-udp", PFLOG, cap.pflog, V6),
    tcp_case("pflog-100-af28-ipv6-tcp", PFLOG, _with(cap.pflog, family=28, length=100), V6),
    _ext_case(),
    _ah_case(),
]


@pytest.mark.parametrize(("linktype", "frame", "expect"), CASES)
def test_decodes_fields(linktype, frame, expect):
    """Each link type/encapsulation gives the right addresses, ports, seq/ack, flags and payload."""
    decoder, fields, payload = decode(linktype, frame)
    assert fields is not None, decoder.dropped
    assert not decoder.dropped
    src, dst = fields.pop("src_ip"), fields.pop("dst_ip")
    assert (fields.pop("ts_us"), fields.pop("frame"), fields.pop("wire_len")) == (TS_US, NUMBER, len(frame) + 4)
    assert dict(fields, src=ntop(src), dst=ntop(dst), payload=payload) == expect


def test_ipv4_addresses_are_four_bytes():
    """IPv4 src/dst come back as 4-byte slices, IPv6 as 16 bytes."""
    _, f4, _ = decode(ETH, cap.ethernet(cap.tcp()))
    _, f6, _ = decode(ETH, cap.ethernet(cap.tcp(*V6)))
    assert (len(f4["src_ip"]), len(f4["dst_ip"]), len(f6["src_ip"]), len(f6["dst_ip"])) == (4, 4, 16, 16)


def test_snapped_frame_keeps_true_payload_len():
    """A frame cut by the capture snap length: payload_len from the IP header, payload = what was captured."""
    frame = cap.ethernet(cap.tcp(payload=bytes(range(200))))
    _, fields, payload = decode(ETH, frame[: 14 + 40 + 30])
    assert fields["payload_len"] == 200
    assert payload == bytes(range(30))


def test_payload_snaplen():
    """FrameDecoder(payload_snaplen=4) keeps 4 payload bytes but reports the full payload_len."""
    _, fields, payload = decode(ETH, cap.ethernet(cap.udp(payload=b"0123456789")), FrameDecoder(4))
    assert (fields["payload_len"], payload) == (10, b"0123")


# --- TCP options -----------------------------------------------------------------------------

SYN_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]


@pytest.mark.parametrize(("options", "wscale", "bits"), [
    (SYN_OPTIONS, 7, 1 | 4 | 8 | 16),
    ([("MSS", 1460), ("NOP", None), ("WScale", 14)], 14, 8 | 16),
    ([("MSS", 1460), ("NOP", None), ("WScale", 15)], 14, 8 | 16),  # RFC 7323: clamped to 14
    ([("MSS", 1460), ("NOP", None), ("WScale", 0)], 0, 8 | 16),
    ([("MSS", 1460), ("SAckOK", b"")], -1, 8 | 1),
    ([], -1, 0),
], ids=["ws7-all", "ws14", "ws15-clamped", "ws0", "no-ws", "no-options"])
def test_syn_window_scale(options, wscale, bits):
    """A SYN's window-scale shift (15 clamped to 14, -1 if absent) and the options bitmask."""
    frame = cap.ethernet(cap.tcp(flags=SYN, seq=1, ack=0, payload=b"", options=options))
    _, fields, payload = decode(ETH, frame)
    assert (fields["wscale"], fields["options"], fields["tcp_flags"]) == (wscale, bits, SYN)
    assert (fields["payload_len"], payload) == (0, b"")


def test_options_of_non_syn_segments_are_not_reported():
    """Options on a non-SYN segment report wscale -1 / options 0 (SYN-only), payload starts after them."""
    options = [("NOP", None), ("NOP", None), ("Timestamp", (5, 6)), ("NOP", None), ("NOP", None),
               ("SAck", (1000, 2000)), ("WScale", 7)]
    _, fields, payload = decode(ETH, cap.ethernet(cap.tcp(options=options, payload=b"after options")))
    assert (fields["wscale"], fields["options"]) == (-1, 0)
    assert (fields["payload_len"], payload) == (13, b"after options")


def test_syn_ack_options():
    """A SYN-ACK carries its options like a SYN: window scale and SACK-permitted reported."""
    frame = cap.ethernet(cap.tcp(flags=SYN | ACK, payload=b"", options=[("SAckOK", b""), ("WScale", 9)]))
    _, fields, _ = decode(ETH, frame)
    assert (fields["wscale"], fields["options"], fields["tcp_flags"]) == (9, 1 | 16, SYN | ACK)


# --- frames that are not analysed ----------------------------------------------------------


@pytest.mark.parametrize(("linktype", "frames", "payload"), [
    (ETH, [cap.ethernet(f) for f in cap.ipv4_fragments()], b"F" * 64),
    (RAW, cap.ipv4_fragments(payload_len=100, fragsize=48), b"F" * 100),
    (ETH, [cap.ethernet(f) for f in cap.ipv6_fragments()], b"G" * 2000),
    (SLL2, [cap.sll2(f) for f in cap.ipv6_fragments()], b"G" * 2000),
], ids=["eth-ipv4", "raw-ipv4", "eth-ipv6", "sll2-ipv6"])
def test_fragments_are_reassembled(linktype, frames, payload):
    """IPv4 fragments (MF set or offset > 0) and IPv6 fragment headers: each is held
    (ip_fragment) and the last one gives the reassembled datagram's packet."""
    assert len(frames) >= 2
    decoder = FrameDecoder()
    results = [decode(linktype, f, decoder) for f in frames]
    assert [r[1] for r in results[:-1]] == [None] * (len(frames) - 1)
    _, fields, data = results[-1]
    assert (fields["proto"], fields["dst_port"], fields["payload_len"], data) == (17, 9999, len(payload), payload)
    assert decoder.dropped == {"ip_fragment": len(frames) - 1}
    assert decoder.counters == {"ip_datagrams_reassembled": 1}


def _retype(frame: bytes, ethertype: int) -> bytes:
    """The same Ethernet frame with another ethertype."""
    return frame[:12] + ethertype.to_bytes(2, "big") + frame[14:]


def _proto(l3: bytes, proto: int) -> bytes:
    """An IP packet with another protocol number (IPv4 byte 9, IPv6 next header)."""
    at = 9 if l3[0] >> 4 == 4 else 6
    return l3[:at] + bytes([proto]) + l3[at + 1:]


@pytest.mark.parametrize(("linktype", "frame", "reason"), [
    (ETH, cap.ethernet(_proto(cap.icmp4_echo(), 2)), "unsupported_transport"),  # IGMP
    (ETH, cap.ethernet(_proto(cap.icmp6_echo(), 50)), "unsupported_transport"),  # ESP (ends the IPv6 walk)
    (RAW, _proto(cap.icmp4_echo(), 58), "unsupported_transport"),  # ICMPv6's number in IPv4
    (ETH, cap.arp_request(), "non_ip"),
    (SLL, cap.sll(cap.arp_request()[14:], protocol=cap.ETH_ARP), "non_ip"),
    (NULL, cap.null(cap.tcp(), family=7), "non_ip"),
    (147, cap.tcp(), "unsupported_linktype"),
    (RAW, b"\x50" + cap.tcp()[1:], "bad_ip_version"),
    (ETH, _retype(cap.ethernet(cap.tcp(*V6)), cap.ETH_IPV4), "bad_ip_version"),
    (ETH, _retype(cap.ethernet(cap.tcp(payload=b"x" * 40)), cap.ETH_IPV6), "bad_ip_version"),
    (NFLOG, cap.nflog(cap.tcp(), family=7), "non_ip"),  # a bridge's log
    (NFLOG, cap.nflog(cap.tcp())[:28], "non_ip"),  # logged without its payload (copy size 0)
    (PFLOG, cap.pflog(cap.tcp(), family=17), "non_ip"),
], ids=["igmp", "esp6", "raw-icmp6-in-v4", "arp", "sll-arp", "null-family-7", "linktype-147",
        "raw-version-5", "ethertype-v4-packet-v6", "ethertype-v6-packet-v4", "nflog-family-7",
        "nflog-no-payload", "pflog-family-17"])
def test_not_tcp_or_udp(linktype, frame, reason):
    """IGMP, ESP, ARP, unknown families/link types, wrong IP versions -> None and the named reason."""
    assert_dropped(linktype, frame, reason)


@pytest.mark.parametrize(("frame", "proto", "ports", "seq", "ack"), [
    (cap.icmp4_echo(), 1, (8, 0), 8 << 8, 0x0001_0001),
    (cap.icmp6_echo(), 58, (128, 129), 128 << 8, 0x0001_0001),
], ids=["icmp", "icmpv6"])
def test_icmp_is_a_packet(frame, proto, ports, seq, ack):
    """An ICMP/ICMPv6 message (docs/packet-layout.md, "ICMP"): the Community ID's ports (an
    echo request's are its reply's, reversed), type and code in seq, the rest of the
    8-byte header in ack, the payload after it."""
    _, f, payload = decode(RAW, frame)
    assert (f["proto"], (f["src_port"], f["dst_port"]), f["seq"], f["ack"]) == (proto, ports, seq, ack)
    assert payload == b"ping" * 8 and f["payload_len"] == 32


def _sctp(src: str, dst: str, chunks: list) -> bytes:
    """An SCTP packet (scapy) from port 40002 to 2905, verification tag 0x0A0B0C0D."""
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    pkt = ip / SCTP(sport=40002, dport=2905, tag=0x0A0B0C0D)
    for chunk in chunks:
        pkt = pkt / chunk
    return bytes(pkt)


def test_sctp_is_a_packet() -> None:
    """An SCTP packet (docs/packet-layout.md, "SCTP"): the common header's ports, the
    verification tag in seq, the chunk types in tcp_flags (bit 1 << type; 1 << 15 for a
    type above 14), the chunks as the payload."""
    frame = _sctp(*V4, [SCTPChunkData(tsn=1, data=b"hello"), SCTPChunkSACK(), SCTPChunkAuthentication()])
    _, f, payload = decode(RAW, frame)
    assert (f["proto"], f["src_port"], f["dst_port"], f["seq"], f["ack"]) == (132, 40002, 2905, 0x0A0B0C0D, 0)
    assert (f["tcp_flags"], f["window"], f["wscale"], f["options"]) == (1 | 1 << 3 | 1 << 15, 0, -1, 0)
    assert payload == frame[20 + 12:] and f["payload_len"] == len(frame) - 32
    _, f, payload = decode(ETH, cap.ethernet(_sctp(*V6, [SCTPChunkInit()])))
    assert (f["ip_version"], f["proto"], f["tcp_flags"], ntop(f["src_ip"])) == (6, 132, 1 << 1, cap.CLIENT6)
    assert f["payload_len"] == len(payload) == 20  # the INIT chunk: its header and 16 bytes of parameters
    # snapped: the true length stays, the payload is cut
    _, f, payload = decode(RAW, frame, FrameDecoder(payload_snaplen=8))
    assert (f["payload_len"], payload) == (len(frame) - 32, frame[32:40])


# --- truncation at each layer --------------------------------------------------------------

TCP4 = cap.tcp(payload=b"")
TCP6 = cap.tcp(*V6, payload=b"")
UDP4 = cap.udp(payload=b"")
EXT6 = cap.ipv6_ext_tcp(payload=b"")


def _ihl(l3: bytes, words: int) -> bytes:
    return bytes([0x40 | words]) + l3[1:]


def _tcp_doff(l3: bytes, words: int) -> bytes:
    return l3[:32] + bytes([words << 4]) + l3[33:]  # IPv4 (20) + TCP byte 12


@pytest.mark.parametrize(("linktype", "frame", "reason"), [
    (ETH, cap.ethernet(TCP4)[:13], "truncated_link"),
    (ETH, b"", "truncated_link"),
    (ETH, cap.vlan(TCP4)[:17], "truncated_link"),
    (ETH, cap.qinq(TCP4)[:21], "truncated_link"),
    (SLL, cap.sll(TCP4)[:15], "truncated_link"),
    (SLL2, cap.sll2(TCP4)[:19], "truncated_link"),
    (NULL, cap.null(TCP4)[:3], "truncated_link"),
    (LOOP, cap.loop(TCP4)[:3], "truncated_link"),
    (RAW, b"", "truncated_link"),
    (ETH, cap.ethernet(TCP4, pad_to=0)[: 14 + 19], "truncated_ip"),
    (ETH, cap.vlan(TCP4, pad_to=0)[: 18 + 19], "truncated_ip"),
    (SLL, cap.sll(TCP6)[: 16 + 39], "truncated_ip"),
    (RAW, _ihl(TCP4, 15), "truncated_ip"),  # IHL says 60 bytes, the frame has 40
    (RAW, _ihl(TCP4, 4), "truncated_ip"),  # IHL below the 20-byte minimum
    (RAW, EXT6[:41], "truncated_ip"),  # cut in the hop-by-hop header
    (RAW, EXT6[: 40 + 8 + 1], "truncated_ip"),  # cut in the destination options header
    (RAW, EXT6[: 40 + cap.IPV6_EXT_LEN + 19], "truncated_transport"),  # cut in TCP after the extension headers
    (ETH, cap.ethernet(TCP4, pad_to=0)[: 14 + 20 + 19], "truncated_transport"),
    (RAW, TCP6[: 40 + 19], "truncated_transport"),
    (RAW, UDP4[: 20 + 7], "truncated_transport"),
    (RAW, _tcp_doff(TCP4, 4), "truncated_transport"),  # TCP data offset below 5 words
    (RAW, _sctp(*V4, [])[: 20 + 11], "truncated_transport"),  # SCTP's common header is 12 bytes
    (RAW, _sctp(*V6, [])[: 40 + 2], "truncated_transport"),
    (NFLOG, cap.nflog(TCP4)[:3], "truncated_link"),
    (NFLOG, b"\x02\x00\x00\x05\x02\x00\x01\x00\xff\xff", "truncated_link"),  # a TLV shorter than its header
    (NFLOG, cap.nflog(TCP4, cut=True)[: 10 - len(TCP4)], "truncated_ip"),  # cut by the snapshot length, in IP
    (NFLOG, cap.nflog(TCP4, cut=True)[: 30 - len(TCP4)], "truncated_transport"),  # ... in TCP
    (PFLOG, cap.pflog(TCP4)[:63], "truncated_link"),
    (PFLOG, cap.pflog(TCP4, length=44), "truncated_link"),  # shorter than any pfloghdr
], ids=["eth", "eth-empty", "vlan", "qinq", "sll", "sll2", "null", "loop", "raw-empty",
        "ipv4-eth", "ipv4-vlan", "ipv6-sll", "ipv4-ihl-too-long", "ipv4-ihl-too-short",
        "ipv6-hop-by-hop", "ipv6-dest-opts", "tcp-after-ext", "tcp-eth", "tcp-ipv6", "udp", "tcp-doff", "sctp", "sctp-ipv6",
        "nflog", "nflog-tlv", "nflog-cut-ip", "nflog-cut-tcp", "pflog", "pflog-short-header"])
def test_truncated(linktype, frame, reason):
    """A frame cut (or with a bad header length) at each layer -> the matching truncated_* reason."""
    assert_dropped(linktype, frame, reason)


# --- robustness ---------------------------------------------------------------------------

GARBAGE_LINKTYPES = sorted(SUPPORTED_LINKTYPES) + [147]


def _check_result(out) -> bool:
    if out is None:
        return False
    fields, payload = out
    assert isinstance(fields, tuple) and len(fields) == len(FIELDS)
    assert isinstance(payload, bytes)
    return True


@pytest.mark.parametrize("linktype", GARBAGE_LINKTYPES)
def test_random_bytes_never_raise(linktype):
    """Random byte strings of 0..200 bytes (fixed seed): decode returns None or a tuple, never raises."""
    rnd = random.Random(20240 + linktype)
    # Half the strings start with a random-length prefix of a valid frame of this link type
    # (then random bytes), so that the garbage also reaches the IP and transport parsers.
    valid = [p.values[1] for p in CASES if p.values[0] == linktype] or [b""]
    decoder = FrameDecoder()
    decoded = tries = 0
    for length in range(201):
        for _ in range(8):
            data = rnd.randbytes(length)
            if rnd.random() < 0.5:
                keep = rnd.randint(0, min(length, len(prefix := rnd.choice(valid))))
                data = prefix[:keep] + data[keep:]
            assert len(data) == length
            decoded += _check_result(decoder.decode(linktype, data, 0, length, tries))
            tries += 1
    # every frame not decoded is counted once, under a documented reason
    assert set(decoder.dropped) <= REASONS
    assert decoded + sum(decoder.dropped.values()) == tries


def test_mutated_frames_never_raise():
    """Valid frames with random bytes changed or cut (fixed seed) -> None or a tuple, never raises."""
    rnd = random.Random(7)
    seeds = [(p.values[0], p.values[1]) for p in CASES]
    seeds += [(ETH, cap.ethernet(cap.tcp(flags=SYN, options=SYN_OPTIONS))),
              (RAW, cap.ipv6_ext_tcp()), (ETH, cap.ethernet(cap.ipv6_fragments()[0]))]
    decoder = FrameDecoder()
    tries = decoded = 0
    for linktype, frame in seeds:
        for _ in range(150):
            data = bytearray(frame)
            for _ in range(rnd.randint(1, 6)):
                data[rnd.randrange(len(data))] = rnd.randrange(256)
            if rnd.random() < 0.3:
                data = data[: rnd.randrange(len(data) + 1)]
            decoded += _check_result(decoder.decode(linktype, bytes(data), 0, len(data), tries))
            tries += 1
    assert set(decoder.dropped) <= REASONS
    assert decoded + sum(decoder.dropped.values()) == tries
    assert decoded > tries // 4  # the mutations do reach the transport layer often


# --- against tshark ----------------------------------------------------------------------

#: Per link type, frames that both we and tshark see the same way. Deliberately left out:
#: - IP fragments: compared on a file of their own (tshark shows the reassembled UDP/TCP
#:   datagram on the last fragment, and so do we; the others are counted as ip_fragment).
#: - BSD null with family 10 (Linux AF_INET6): we accept it, Wireshark's null dissector
#:   does not map 10 to IPv6 and shows the frame as undissected data.
#: - truncated/garbage frames: tshark still shows the partial tcp/udp layer of a malformed
#:   packet ("[Malformed Packet]"), we drop it as truncated_*.
#: - link types 12, 14, 228, 229: tshark reads them as raw IP too, but they take the same
#:   decoder path as 101, which is compared; skipping them saves four tshark starts (~0.4 s each).
#: - NFLOG's TLVs in the other byte order than the file's: Wireshark reads them in the
#:   file's (its reader swaps them when the file's byte order is not the host's, as
#:   libpcap's does), and shows a big-endian frame in a little-endian file as malformed;
#:   we take the byte order that fits the frame. Compared in a big-endian file instead.
#: ARP and ICMP are included: neither side counts them as TCP/UDP.
def _tshark_files() -> dict[tuple[int, bool], list[bytes]]:
    """(link type, big-endian file) -> its frames."""
    files: dict[tuple[int, bool], list[bytes]] = {}
    for p in CASES:
        linktype, frame = p.values[0], p.values[1]
        if "af10" not in p.id and linktype not in (RAW12, RAW14, IPV4, IPV6):
            files.setdefault((linktype, linktype == NFLOG and "-be-" in p.id), []).append(frame)
    files[(ETH, False)] += [cap.arp_request(), cap.ethernet(cap.icmp4_echo()), cap.ethernet(cap.icmp6_echo()),
                            cap.ethernet(cap.tcp(flags=SYN, options=SYN_OPTIONS, payload=b""))]
    files[(RAW, False)] += [cap.icmp4_echo()]
    return files


def _ours(path: str) -> tuple[list[tuple[int, int, int, int]], FrameDecoder]:
    """(frame, sport, dport, payload_len) of every packet we decode from a capture file."""
    decoder = FrameDecoder()
    ours = []
    with open_capture(path) as reader:
        for fr in reader:
            out = decoder.decode(fr.linktype, fr.data, fr.ts_us, fr.orig_len, fr.number)
            if out is not None:
                f = dict(zip(FIELDS, out[0], strict=True))
                if f["proto"] in (6, 17):  # what tshark's "tcp or udp" shows (ICMP: test_flows.py)
                    ours.append((f["frame"], f["src_port"], f["dst_port"], f["payload_len"]))
    return ours, decoder


@requires_tshark
def test_decoded_packets_match_tshark(tmp_path):
    """Per crafted pcap: the frames we decode are tshark's 'tcp or udp' frames, same ports and lengths."""
    files = _tshark_files()
    paths = [cap.write_pcap(tmp_path / f"lt{lt}{'-be' if be else ''}.pcap", cap.timed(frames), lt, big_endian=be)
             for (lt, be), frames in files.items()]
    v4frags, v6frags = cap.ipv4_fragments(), cap.ipv6_fragments()
    frags = cap.write_pcap(tmp_path / "frags.pcap", cap.timed(cap.ethernet(f) for f in v4frags + v6frags), ETH)
    fields = ["frame.number", "tcp.srcport", "udp.srcport", "tcp.dstport", "udp.dstport", "tcp.len",
              "udp.length"]
    results = tshark_rows([*paths, frags], fields, "tcp or udp")
    for path, rows in zip(paths, results[:-1], strict=True):
        theirs = []
        for num, tsport, usport, tdport, udport, tlen, ulen in rows:
            plen = int(tlen) if tlen else int(ulen) - 8
            theirs.append((int(num), int(tsport or usport), int(tdport or udport), plen))
        ours, _ = _ours(path)
        assert len(ours) == len(theirs) > 0, path
        assert ours == theirs, path
    # Fragments: tshark shows each reassembled datagram once, on its last fragment; so do we,
    # and count the others as held fragments.
    ours, decoder = _ours(frags)
    theirs = [(int(r[0]), int(r[2]), int(r[4]), int(r[6]) - 8) for r in results[-1]]
    assert ours == theirs == [(len(v4frags), 40003, 9999, 64), (len(v4frags) + len(v6frags), 40004, 9999, 2000)]
    assert decoder.dropped == {"ip_fragment": len(v4frags) + len(v6frags) - 2}


# --- the core's replay loop: the batches it builds are the per-frame decoder's ---------------


def _reference_batches(path: str, partitions: int, batch_packets: int, batch_bytes: int) -> list[tuple]:
    """Batches built in Python from single-frame decodes: pack_header, and the partition of
    packet_block.partition_for (the contract with the processors and the socket events)."""
    from wirestream.packet_block import canonical_key, pack_header, partition_for

    decoder = FrameDecoder()
    open_ = [[0, bytearray(), bytearray()] for _ in range(partitions)]
    done = []
    with open_capture(path) as reader:
        for fr in reader:
            out = decoder.decode(fr.linktype, fr.data, fr.ts_us, fr.orig_len, fr.number)
            if out is None:
                continue
            f, payload = out
            part = partition_for(canonical_key(f[13], f[6], f[8], f[7], f[9]), partitions)
            b = open_[part]
            b[1] += pack_header(f, len(b[2]), len(payload))
            b[2] += payload
            b[0] += 1
            if b[0] >= batch_packets or len(b[2]) >= batch_bytes:
                done.append((part, b[0], bytes(b[1]), bytes(b[2]), b"", b""))
                open_[part] = [0, bytearray(), bytearray()]
    done += [(part, b[0], bytes(b[1]), bytes(b[2]), b"", b"") for part, b in enumerate(open_) if b[0]]
    return done


@pytest.mark.parametrize("name", ["chrissanders/http_espn.pcapng", "chrissanders/dns_tcp.pcapng",
                                  "crafted/e12_port_reuse.pcap"])
def test_replay_loop_batches_equal_single_frame_decoding(name):
    """The core's read -> decode -> batch loop (what replay_capture publishes) gives the
    batches that single-frame decoding, pack_header and partition_for give, in order."""
    from wirestream import _core

    path = f"{__file__.rsplit('/', 1)[0]}/data/{name}"
    partitions, batch_packets, batch_bytes = 3, 7, 3000  # small: many batches complete
    reader = open_capture(path)
    decoder, batcher = _core.FrameDecoder(65535), _core.Batcher(partitions, batch_packets, batch_bytes)
    got = []
    while True:
        batches, done = reader.core.pump(decoder, batcher, 5)  # a few frames per call
        got += batches
        if done:
            break
    got += batcher.flush()
    want = _reference_batches(path, partitions, batch_packets, batch_bytes)
    assert len(want) > 1
    # per partition, in order (which partition completes first across partitions is the same too)
    assert got == want
    assert reader.core.frames == reader.frames_read
