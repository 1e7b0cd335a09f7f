"""Decode captured frames down to TCP/UDP headers: link layer -> IP -> transport.

The output is one packed header per packet (``wirestream.packet_block`` layout) plus the
captured payload bytes. Anything that is not IPv4/IPv6 TCP or UDP, or that is damaged,
is not forwarded; it is counted in ``FrameDecoder.dropped`` under a named reason:

==========================  ==========================================================
reason                      meaning
==========================  ==========================================================
``non_ip``                  link-layer payload is not IPv4/IPv6 (ARP, LLDP, STP, ...)
``unsupported_linktype``    a pcapng interface with a link type we do not decode
``unsupported_transport``   IP payload is not TCP or UDP (ICMP, IGMP, ESP, ...)
``ip_fragment``             an IP fragment (no reassembly yet: counted, not analysed)
``truncated_link``          frame too short for its link-layer header
``truncated_ip``            IP header cut off, or a bad header length
``truncated_transport``     TCP/UDP header cut off, or a bad TCP data offset
``bad_ip_version``          the version nibble is neither 4 nor 6
==========================  ==========================================================

Header parsing uses ``struct`` over the raw bytes (scapy is ~200x slower and is only used
to build test traffic). This is the per-packet hot path of the producer, so it is one
flat function rather than one call per layer.
"""

from __future__ import annotations

import struct
from collections import Counter

from wirestream.packet_block import PROTO_TCP, PROTO_UDP, SYN

from .capture_file import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    LINKTYPE_RAW_DLT12,
    LINKTYPE_RAW_DLT14,
)

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN_TAGS = (0x8100, 0x88A8, 0x9100, 0x9200)  # 802.1Q, 802.1ad (QinQ), legacy QinQ

# IPv6 extension headers we walk through (RFC 8200 section 4); ESP (50) ends the walk.
_IPV6_HOP_BY_HOP, _IPV6_ROUTING, _IPV6_FRAGMENT, _IPV6_DEST_OPTS, _IPV6_AH = 0, 43, 44, 60, 51
_IPV6_MOBILITY = 135

_u16 = struct.Struct("!H").unpack_from
_ipv4 = struct.Struct("!BxHxxHxB").unpack_from  # ver/ihl, total len, flags/frag, proto
_ipv6 = struct.Struct("!4xHB").unpack_from  # payload length, next header
_tcp = struct.Struct("!HHIIBBH").unpack_from  # ports, seq, ack, data offset, flags, window
_udp = struct.Struct("!HHH").unpack_from
_null_le = struct.Struct("<I").unpack_from
_null_be = struct.Struct(">I").unpack_from

# Address families a BSD null/loop header can carry for IPv6 (differs per OS).
_AF_INET = 2
_AF_INET6 = (10, 24, 28, 30)

# Decoded packet: the values of wirestream.packet_block.PACKET_STRUCT, minus payload
# offset (assigned when the packet is put into a batch), plus the payload bytes.
DecodedPacket = tuple


class FrameDecoder:
    """Turn frames into packet-header tuples. Holds only counters; one per source."""

    def __init__(self, payload_snaplen: int = 65535) -> None:
        self.payload_snaplen = payload_snaplen
        self.dropped: Counter[str] = Counter()

    def decode(
        self, linktype: int, data: bytes, ts_us: int, orig_len: int, number: int
    ) -> tuple[tuple, bytes] | None:
        """Return ``(fields, payload)`` for a TCP/UDP packet, else None (and count why).

        ``fields`` is ``(ts_us, frame, wire_len, payload_len, seq, ack, src_ip, dst_ip,
        src_port, dst_port, window, tcp_flags, ip_version, proto, wscale, options)``.
        """
        n = len(data)
        # --- link layer: find the network-layer offset and its ethertype -------------
        if linktype == LINKTYPE_ETHERNET:
            if n < 14:
                self.dropped["truncated_link"] += 1
                return None
            off = 12
            etype = _u16(data, 12)[0]
            while etype in _ETH_VLAN_TAGS:  # 802.1Q / QinQ: 4 bytes per tag
                off += 4
                if n < off + 2:
                    self.dropped["truncated_link"] += 1
                    return None
                etype = _u16(data, off)[0]
            off += 2
        elif linktype == LINKTYPE_LINUX_SLL:
            if n < 16:
                self.dropped["truncated_link"] += 1
                return None
            etype = _u16(data, 14)[0]
            off = 16
        elif linktype == LINKTYPE_LINUX_SLL2:
            if n < 20:
                self.dropped["truncated_link"] += 1
                return None
            etype = _u16(data, 0)[0]
            off = 20
        elif linktype in (LINKTYPE_RAW, LINKTYPE_RAW_DLT12, LINKTYPE_RAW_DLT14, LINKTYPE_IPV4, LINKTYPE_IPV6):
            if n < 1:
                self.dropped["truncated_link"] += 1
                return None
            etype = _ETH_IPV4 if data[0] >> 4 == 4 else _ETH_IPV6 if data[0] >> 4 == 6 else 0
            if not etype:
                self.dropped["bad_ip_version"] += 1
                return None
            off = 0
        elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            if n < 4:
                self.dropped["truncated_link"] += 1
                return None
            # The family is in the capturing host's byte order for NULL, network order
            # for LOOP; a family value is small, so read it whichever way fits.
            family = (_null_be if linktype == LINKTYPE_LOOP else _null_le)(data, 0)[0]
            if family > 0xFFFF:
                family = _null_be(data, 0)[0] if linktype == LINKTYPE_NULL else _null_le(data, 0)[0]
            etype = _ETH_IPV4 if family == _AF_INET else _ETH_IPV6 if family in _AF_INET6 else 0
            off = 4
        else:
            self.dropped["unsupported_linktype"] += 1
            return None

        # --- network layer -----------------------------------------------------------
        if etype == _ETH_IPV4:
            if n < off + 20:
                self.dropped["truncated_ip"] += 1
                return None
            vihl, total_len, frag, proto = _ipv4(data, off)
            if vihl >> 4 != 4:
                self.dropped["bad_ip_version"] += 1
                return None
            ihl = (vihl & 0x0F) * 4
            if ihl < 20 or n < off + ihl:
                self.dropped["truncated_ip"] += 1
                return None
            if frag & 0x3FFF:  # MF set or a non-zero fragment offset
                self.dropped["ip_fragment"] += 1
                return None
            src = data[off + 12 : off + 16]
            dst = data[off + 16 : off + 20]
            # total_len 0 happens with TSO on the capturing host: trust the capture then.
            l4_len = (total_len if total_len else n - off) - ihl
            off += ihl
            version = 4
        elif etype == _ETH_IPV6:
            if n < off + 40:
                self.dropped["truncated_ip"] += 1
                return None
            if data[off] >> 4 != 6:
                self.dropped["bad_ip_version"] += 1
                return None
            plen, proto = _ipv6(data, off)
            src = data[off + 8 : off + 24]
            dst = data[off + 24 : off + 40]
            l4_len = plen if plen else n - off - 40  # 0 = jumbogram or TSO
            off += 40
            while proto not in (PROTO_TCP, PROTO_UDP):
                if proto in (_IPV6_HOP_BY_HOP, _IPV6_ROUTING, _IPV6_DEST_OPTS, _IPV6_MOBILITY):
                    if n < off + 2:
                        self.dropped["truncated_ip"] += 1
                        return None
                    ext_len = (data[off + 1] + 1) * 8
                elif proto == _IPV6_FRAGMENT:
                    self.dropped["ip_fragment"] += 1
                    return None
                elif proto == _IPV6_AH:
                    if n < off + 2:
                        self.dropped["truncated_ip"] += 1
                        return None
                    ext_len = (data[off + 1] + 2) * 4
                else:
                    self.dropped["unsupported_transport"] += 1
                    return None
                proto = data[off]
                off += ext_len
                l4_len -= ext_len
            version = 6
        else:
            self.dropped["non_ip"] += 1
            return None

        # --- transport layer ---------------------------------------------------------
        if proto == PROTO_TCP:
            if n < off + 20:
                self.dropped["truncated_transport"] += 1
                return None
            sport, dport, seq, ack, doff, flags, window = _tcp(data, off)
            hlen = (doff >> 4) * 4
            if hlen < 20:
                self.dropped["truncated_transport"] += 1
                return None
            flags |= (doff & 1) << 8  # NS bit
            wscale = -1
            options = 0
            # Options are negotiated on SYNs (window scale, SACK-permitted, MSS); parsing
            # them on every segment would cost ~3 µs per packet for nothing we use.
            if flags & SYN and hlen > 20 and n >= off + hlen:
                wscale, options = _tcp_options(data, off + 20, off + hlen)
            payload_len = l4_len - hlen
            if payload_len < 0:
                payload_len = 0
            start = off + hlen
        elif proto == PROTO_UDP:
            if n < off + 8:
                self.dropped["truncated_transport"] += 1
                return None
            sport, dport, ulen = _udp(data, off)
            seq = ack = window = flags = options = 0
            wscale = -1
            payload_len = (ulen if ulen >= 8 else l4_len) - 8
            if payload_len < 0:
                payload_len = 0
            start = off + 8
        else:
            self.dropped["unsupported_transport"] += 1
            return None

        caplen = min(payload_len, n - start, self.payload_snaplen)
        payload = data[start : start + caplen] if caplen > 0 else b""
        return (
            (ts_us, number, orig_len, payload_len, seq, ack, src, dst, sport, dport,
             window, flags, version, proto, wscale, options),
            payload,
        )


def _tcp_options(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Return (window-scale shift or -1, options bitmask) from a TCP options area."""
    wscale = -1
    options = 0
    while pos < end:
        kind = data[pos]
        if kind == 0:  # end of options
            break
        if kind == 1:  # NOP
            pos += 1
            continue
        if pos + 1 >= end:
            break
        length = data[pos + 1]
        if length < 2 or pos + length > end:
            break  # malformed options: stop, keep what we have
        if kind == 3 and length == 3:
            # RFC 7323: the shift is capped at 14; Wireshark shows larger values but
            # uses 14 for the window computation.
            wscale = min(data[pos + 2], 14)
            options |= 16
        elif kind == 2:
            options |= 8
        elif kind == 4:
            options |= 1
        elif kind == 5:
            options |= 2
        elif kind == 8:
            options |= 4
        pos += length
    return wscale, options
