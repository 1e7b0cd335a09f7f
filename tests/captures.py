"""Builders for the crafted test captures: packets (scapy) and pcap/pcapng files (struct).

Everything here is generated at test time, into pytest's ``tmp_path``: no crafted capture
is stored in the repository or downloaded. scapy only builds the test traffic (the
producer parses with ``struct``); the file formats are written byte by byte with
``struct`` so that each test controls the format exactly (byte order, timestamp
resolution, block layout, damage).

Addresses are documentation/test ranges only (IPv4 192.0.2.0/24, 198.51.100.0/24,
IPv6 2001:db8::/32, MAC 00:00:5e:00:53:xx from RFC 7042). The packets are only written
into files, never sent.

A "record" is ``(ts_ns, data)`` or ``(ts_ns, data, orig_len)``: capture time in integer
nanoseconds since the epoch (writers truncate it to the file's resolution) and the
captured link-layer bytes.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterable, Sequence

from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

# --- addresses (documentation ranges only) --------------------------------------------

CLIENT4 = "192.0.2.10"
SERVER4 = "198.51.100.20"
CLIENT6 = "2001:db8::10"
SERVER6 = "2001:db8:1::20"
MAC_CLIENT = "00:00:5e:00:53:01"
MAC_SERVER = "00:00:5e:00:53:02"

#: 2023-11-14 22:13:20.123456789 UTC: has sub-microsecond digits on purpose.
BASE_NS = 1_700_000_000_123_456_789

ETH_IPV4, ETH_IPV6, ETH_ARP = 0x0800, 0x86DD, 0x0806
AF_INET = 2

Record = tuple  # (ts_ns, data) or (ts_ns, data, orig_len)


def timed(frames: Iterable[bytes], start_ns: int = BASE_NS, step_ns: int = 1_234_567_891) -> list[Record]:
    """Give each frame a timestamp: start_ns, then step_ns apart."""
    return [(start_ns + i * step_ns, bytes(f)) for i, f in enumerate(frames)]


def _split(rec: Record) -> tuple[int, bytes, int]:
    ts_ns, data = rec[0], bytes(rec[1])
    orig_len = rec[2] if len(rec) > 2 else len(data)
    return ts_ns, data, orig_len


# --- pcap -----------------------------------------------------------------------------


def pcap_header(linktype: int, nanosecond: bool = False, big_endian: bool = False,
                snaplen: int = 262144) -> bytes:
    """The 24-byte pcap global header."""
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    return struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(rec: Record, nanosecond: bool = False, big_endian: bool = False) -> bytes:
    """One pcap record: 16-byte record header + captured bytes."""
    e = ">" if big_endian else "<"
    ts_ns, data, orig_len = _split(rec)
    sec, frac = divmod(ts_ns, 1_000_000_000)
    if not nanosecond:
        frac //= 1000
    return struct.pack(e + "IIII", sec, frac, len(data), orig_len) + data


def pcap_bytes(frames: Iterable[Record], linktype: int, nanosecond: bool = False,
               big_endian: bool = False) -> bytes:
    """A whole pcap file in memory."""
    return pcap_header(linktype, nanosecond, big_endian) + b"".join(
        pcap_record(r, nanosecond, big_endian) for r in frames)


def write_pcap(path, frames: Iterable[Record], linktype: int, nanosecond: bool = False,
               big_endian: bool = False, compress: bool = False) -> str:
    """Write a pcap file (µs or ns magic, either byte order, optionally gzip); return its path."""
    return _write(path, pcap_bytes(frames, linktype, nanosecond, big_endian), compress)


def write_pcap_gz(path, frames: Iterable[Record], linktype: int, **kw) -> str:
    """write_pcap, gzip-compressed."""
    return write_pcap(path, frames, linktype, compress=True, **kw)


# --- pcapng ---------------------------------------------------------------------------


def tsresol_units(tsresol: int) -> int:
    """Timestamp units per second for an if_tsresol byte (10^-n, or 2^-n with the top bit)."""
    return 2 ** (tsresol & 0x7F) if tsresol & 0x80 else 10**tsresol


def _block(btype: int, body: bytes, e: str) -> bytes:
    body += b"\0" * (-len(body) % 4)
    blen = 12 + len(body)
    return struct.pack(e + "II", btype, blen) + body + struct.pack(e + "I", blen)


def _option(code: int, value: bytes, e: str) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def shb(big_endian: bool = False) -> bytes:
    """Section Header Block (version 1.0, section length unknown)."""
    e = ">" if big_endian else "<"
    return _block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), e)


def idb(linktype: int, tsresol: int = 6, tsoffset: int | None = None, big_endian: bool = False,
        snaplen: int = 0) -> bytes:
    """Interface Description Block; if_tsresol is written only when not the default 6."""
    e = ">" if big_endian else "<"
    opts = b""
    if tsresol != 6:
        opts += _option(9, bytes([tsresol]), e)
    if tsoffset is not None:
        opts += _option(14, struct.pack(e + "q", tsoffset), e)
    if opts:
        opts += _option(0, b"", e)
    return _block(1, struct.pack(e + "HHI", linktype, 0, snaplen) + opts, e)


def epb(rec: Record, iface: int = 0, tsresol: int = 6, tsoffset: int = 0,
        big_endian: bool = False) -> bytes:
    """Enhanced Packet Block; the timestamp is converted to the interface's units."""
    e = ">" if big_endian else "<"
    ts_ns, data, orig_len = _split(rec)
    ts = (ts_ns - tsoffset * 1_000_000_000) * tsresol_units(tsresol) // 1_000_000_000
    return _block(6, struct.pack(e + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), orig_len)
                  + data, e)


def spb(data: bytes, orig_len: int | None = None, big_endian: bool = False) -> bytes:
    """Simple Packet Block (no timestamp, interface 0)."""
    e = ">" if big_endian else "<"
    return _block(3, struct.pack(e + "I", len(data) if orig_len is None else orig_len) + data, e)


def pcapng_section(interfaces: Sequence[tuple[int, int]], packets: Iterable[tuple[int, Record]],
                   big_endian: bool = False) -> bytes:
    """One section: SHB, an IDB per (linktype, tsresol), then an EPB per (iface, record)."""
    out = [shb(big_endian)]
    out += [idb(lt, res, big_endian=big_endian) for lt, res in interfaces]
    out += [epb(rec, iface, interfaces[iface][1], big_endian=big_endian) for iface, rec in packets]
    return b"".join(out)


def pcapng_bytes(frames: Iterable[Record], linktype: int, tsresol: int = 6,
                 big_endian: bool = False) -> bytes:
    """A one-section, one-interface pcapng file in memory."""
    return pcapng_section([(linktype, tsresol)], ((0, r) for r in frames), big_endian)


def write_pcapng(path, frames: Iterable[Record], linktype: int, tsresol: int = 6,
                 big_endian: bool = False, compress: bool = False) -> str:
    """Write a pcapng file (if_tsresol 6 = µs, 9 = ns, ...); return its path."""
    return _write(path, pcapng_bytes(frames, linktype, tsresol, big_endian), compress)


def write_pcapng_gz(path, frames: Iterable[Record], linktype: int, **kw) -> str:
    """write_pcapng, gzip-compressed."""
    return write_pcapng(path, frames, linktype, compress=True, **kw)


def _write(path, data: bytes, compress: bool) -> str:
    if compress:
        data = gzip.compress(data, mtime=0)  # mtime 0: the same bytes every run
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


# --- network layer (scapy) ------------------------------------------------------------


def _ip(src: str, dst: str, ip_flags: str | int = 0, ip_options: list | None = None):
    if ":" in src:
        return IPv6(src=src, dst=dst)
    return IP(src=src, dst=dst, flags=ip_flags, options=ip_options or [])


def tcp(src: str = CLIENT4, dst: str = SERVER4, sport: int = 40000, dport: int = 8080,
        seq: int = 1000, ack: int = 2000, flags: str | int = "PA", window: int = 8192,
        payload: bytes = b"", options: list | None = None, ip_flags: str | int = 0,
        ip_options: list | None = None) -> bytes:
    """An IPv4 or IPv6 (by the address) TCP segment, from the IP header on.

    ip_flags / ip_options apply to IPv4 only (e.g. "DF", [IPOption_RR(...)]).
    """
    seg = TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=window,
              options=options or [])
    return bytes(_ip(src, dst, ip_flags, ip_options) / seg / Raw(payload))


def udp(src: str = CLIENT4, dst: str = SERVER4, sport: int = 40001, dport: int = 47000,
        payload: bytes = b"", ip_flags: str | int = 0) -> bytes:
    """An IPv4 or IPv6 (by the address) UDP datagram, from the IP header on."""
    return bytes(_ip(src, dst, ip_flags) / UDP(sport=sport, dport=dport) / Raw(payload))


def ipv6_ext_tcp(src: str = CLIENT6, dst: str = SERVER6, payload: bytes = b"ext", **tcp_kw) -> bytes:
    """IPv6 with hop-by-hop, destination options and routing headers (8 bytes each) before TCP."""
    seg = TCP(sport=tcp_kw.pop("sport", 40002), dport=tcp_kw.pop("dport", 443), flags="PA", **tcp_kw)
    pkt = (IPv6(src=src, dst=dst) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
           / IPv6ExtHdrRouting(addresses=[]) / seg / Raw(payload))
    return bytes(pkt)


IPV6_EXT_LEN = 24  # the three extension headers of ipv6_ext_tcp


def ipv6_ah_tcp(src: str = CLIENT6, dst: str = SERVER6, payload: bytes = b"authenticated") -> bytes:
    """IPv6 + an Authentication Header (24 bytes: 12 fixed + 12-byte ICV) before TCP."""
    ah = AH(nh=6, payloadlen=4, spi=0x100, seq=1, icv=b"\x11" * 12)  # length (4 + 2) * 4 = 24
    return bytes(IPv6(src=src, dst=dst, nh=51) / ah / TCP(sport=40005, dport=443, flags="PA") / Raw(payload))


def icmp4_echo(src: str = CLIENT4, dst: str = SERVER4) -> bytes:
    """An ICMP echo request (IPv4)."""
    return bytes(IP(src=src, dst=dst) / ICMP(type=8, id=1, seq=1) / Raw(b"ping" * 8))


def icmp6_echo(src: str = CLIENT6, dst: str = SERVER6) -> bytes:
    """An ICMPv6 echo request."""
    return bytes(IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=1, seq=1, data=b"ping" * 8))


def ipv4_fragments(payload_len: int = 64, fragsize: int = 32) -> list[bytes]:
    """A UDP datagram split into IPv4 fragments: first has MF, later ones a non-zero offset."""
    pkt = IP(src=CLIENT4, dst=SERVER4, id=0x1234) / UDP(sport=40003, dport=9999) / Raw(b"F" * payload_len)
    return [bytes(f) for f in fragment(pkt, fragsize=fragsize)]


def ipv6_fragments(payload_len: int = 2000) -> list[bytes]:
    """A UDP datagram split with the IPv6 fragment header (first: offset 0 + M, then offset > 0)."""
    pkt = (IPv6(src=CLIENT6, dst=SERVER6) / IPv6ExtHdrFragment(id=0x5678)
           / UDP(sport=40004, dport=9999) / Raw(b"G" * payload_len))
    return [bytes(f) for f in fragment6(pkt, 1280)]


# --- link layer -----------------------------------------------------------------------


def ethertype(l3: bytes) -> int:
    """Ethertype for an IP packet, from its version nibble."""
    return ETH_IPV6 if l3[0] >> 4 == 6 else ETH_IPV4


def _pad(frame: bytes, pad_to: int, pad_byte: bytes) -> bytes:
    return frame + pad_byte * (pad_to - len(frame)) if len(frame) < pad_to else frame


def ethernet(l3: bytes, pad_to: int = 60, pad_byte: bytes = b"\0") -> bytes:
    """Ethernet II around an IP packet, padded to the 60-byte minimum like a real NIC."""
    frame = Ether(src=MAC_CLIENT, dst=MAC_SERVER, type=ethertype(l3)) / Raw(l3)
    return _pad(bytes(frame), pad_to, pad_byte)


def vlan(l3: bytes, vid: int = 100, pad_to: int = 60) -> bytes:
    """Ethernet + one 802.1Q tag (0x8100)."""
    frame = Ether(src=MAC_CLIENT, dst=MAC_SERVER, type=0x8100) / Dot1Q(vlan=vid, type=ethertype(l3)) / Raw(l3)
    return _pad(bytes(frame), pad_to, b"\0")


def qinq(l3: bytes, outer: int = 200, inner: int = 100, pad_to: int = 60) -> bytes:
    """Ethernet + 802.1ad service tag (0x88a8) + 802.1Q customer tag (0x8100)."""
    frame = (Ether(src=MAC_CLIENT, dst=MAC_SERVER, type=0x88A8) / Dot1AD(vlan=outer, type=0x8100)
             / Dot1Q(vlan=inner, type=ethertype(l3)) / Raw(l3))
    return _pad(bytes(frame), pad_to, b"\0")


def arp_request() -> bytes:
    """An Ethernet ARP who-has, padded to 60 bytes."""
    frame = Ether(src=MAC_CLIENT, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=MAC_CLIENT, psrc=CLIENT4, pdst="192.0.2.1")
    return _pad(bytes(frame), 60, b"\0")


def sll(l3: bytes, protocol: int | None = None, pkttype: int = 0) -> bytes:
    """Linux cooked capture v1 (linktype 113): 16-byte header, protocol at offset 14."""
    mac = bytes.fromhex(MAC_CLIENT.replace(":", "")) + b"\0\0"
    proto = ethertype(l3) if protocol is None else protocol
    return struct.pack("!HHH8sH", pkttype, 1, 6, mac, proto) + l3


def sll2(l3: bytes, protocol: int | None = None, ifindex: int = 2, pkttype: int = 0) -> bytes:
    """Linux cooked capture v2 (linktype 276): 20-byte header, protocol first."""
    mac = bytes.fromhex(MAC_CLIENT.replace(":", "")) + b"\0\0"
    proto = ethertype(l3) if protocol is None else protocol
    return struct.pack("!HHIHBB8s", proto, 0, ifindex, 1, pkttype, 6, mac) + l3


def null(l3: bytes, family: int | None = None, big_endian: bool = False) -> bytes:
    """BSD loopback (linktype 0): 4-byte address family in the capturing host's byte order."""
    fam = (AF_INET if l3[0] >> 4 == 4 else 24) if family is None else family
    return struct.pack(">I" if big_endian else "<I", fam) + l3


def loop(l3: bytes, family: int | None = None) -> bytes:
    """OpenBSD loopback (linktype 108): 4-byte address family in network byte order."""
    fam = (AF_INET if l3[0] >> 4 == 4 else 24) if family is None else family
    return struct.pack(">I", fam) + l3


def nflog(l3: bytes, family: int | None = None, big_endian: bool = False, cut: bool = False) -> bytes:
    """Linux NFLOG (linktype 239): family, version 0, resource id 5, then TLVs in the
    capturing host's byte order (a length including the 4-byte TLV header, a type), each
    padded to 4 bytes, as the kernel's nfnetlink_log writes them: the packet header (1),
    a prefix string (10), the payload (9: the packet), a timestamp (3) after it. ``cut``:
    the payload TLV's length says 40 bytes more than the frame holds (a snapshot length)."""
    e = ">" if big_endian else "<"
    fam = (2 if l3[0] >> 4 == 4 else 10) if family is None else family

    def tlv(kind: int, value: bytes, extra: int = 0) -> bytes:
        body = struct.pack(f"{e}HH", 4 + len(value) + extra, kind) + value
        return body + b"\0" * (-len(body) % 4)

    packet_hdr = struct.pack(">HBB", 0x0800 if fam == 2 else 0x86DD, 3, 0)  # hw protocol, hook
    head = struct.pack(">BBH", fam, 0, 5) + tlv(1, packet_hdr) + tlv(10, b"wirestream\0")
    if cut:
        return head + tlv(9, bytes(l3), extra=40)[:4 + len(l3)]
    return head + tlv(9, bytes(l3)) + tlv(3, struct.pack(">QQ", 1_700_000_000, 123_456))


def pflog(l3: bytes, family: int | None = None, length: int = 61) -> bytes:
    """OpenBSD pflog (linktype 117): a ``struct pfloghdr`` of ``length`` bytes (61:
    OpenBSD's classic header, padded to 64; 100: the one with rewritten addresses) with
    its address family (BSD's: AF_INET 2, AF_INET6 24), action pass, interface "em0",
    rule 7, direction in; the packet after it, at the length rounded up to 4 bytes."""
    fam = (AF_INET if l3[0] >> 4 == 4 else 24) if family is None else family
    head = struct.pack(">BBBB16s16sIIIiIiB", length, fam, 0, 0, b"em0", b"", 7, 0xFFFFFFFF, 0, 0, 0, 0, 1)
    head = head[:length].ljust(-(-length // 4) * 4, b"\0")
    return head + bytes(l3)


def raw(l3: bytes) -> bytes:
    """Raw IP (linktypes 101, 12, 14, 228, 229): no link header at all."""
    return bytes(l3)

