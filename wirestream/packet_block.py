"""The packed packet-header layout carried in ``wire.packets`` batches.

Per-record Avro costs about 5 µs per packet here, more than all of the TCP analysis, so a
``PacketBatch`` message carries its packets as one packed array of fixed-size headers
(``packets``) plus one blob of payload bytes (``payloads``). Both the producers and the
processors use this module; custom processors can too::

    from wirestream.packet_block import decode_batch
    headers, payloads = decode_batch(record)      # numpy structured array, bytes
    for h in headers: ...

Layout version 1: little-endian, no padding, 80 bytes per packet. Field order and types
are those of ``PACKET_DTYPE`` below (docs/packet-layout.md has the same table).

The producers pack headers and partition packets in the compiled core
(``rust/src/layout.rs``, docs/core.md); :func:`pack_header`, :func:`canonical_key` and
:func:`partition_for` compute the same here, for Python producers (socket events, which
must land in the same partition as their connection's packets), tests and tools.
"""

from __future__ import annotations

import socket
import struct
import zlib
from functools import lru_cache
from typing import Any

import numpy as np

LAYOUT_VERSION = 1

#: (name, numpy type, meaning) in on-the-wire order.
PACKET_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("ts_us", "<i8", "capture time, microseconds since the epoch"),
    ("frame", "<u4", "frame number in the source, from 1 (as Wireshark numbers frames)"),
    ("wire_len", "<u4", "original frame length on the wire"),
    ("payload_len", "<u4", "TCP/UDP payload length from the IP header (true size)"),
    ("payload_off", "<u4", "offset of the captured payload in the batch's payloads blob"),
    ("payload_caplen", "<u4", "captured payload bytes (<= payload_len; snap length, truncation)"),
    ("seq", "<u4", "TCP sequence number (absolute); 0 for UDP"),
    ("ack", "<u4", "TCP acknowledgement number (absolute); 0 for UDP"),
    ("src_ip", "S16", "source address: 4 bytes for IPv4 (then zeros), 16 for IPv6"),
    ("dst_ip", "S16", "destination address, same encoding"),
    ("src_port", "<u2", "source port"),
    ("dst_port", "<u2", "destination port"),
    ("window", "<u2", "TCP window field as sent (not scaled)"),
    ("tcp_flags", "<u2", "TCP flags: FIN 1, SYN 2, RST 4, PSH 8, ACK 16, URG 32, ECE 64, CWR 128, NS 256 (SCTP: chunk types, docs/packet-layout.md)"),
    ("ip_version", "u1", "4 or 6"),
    ("proto", "u1", "IP protocol: 6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, 132 SCTP"),
    ("wscale", "i1", "TCP window-scale option shift of a SYN segment (clamped to 14), -1 if absent"),
    ("options", "u1", "TCP options of a SYN segment: 1 SACK-permitted, 2 SACK blocks, 4 timestamps, 8 MSS, 16 window scale (0 on other segments)"),
)

PACKET_DTYPE = np.dtype([(name, typ) for name, typ, _ in PACKET_FIELDS])
RECORD_SIZE = PACKET_DTYPE.itemsize  # 80

#: struct format equal to PACKET_DTYPE, for producers that pack one header at a time.
PACKET_STRUCT = struct.Struct("<qIIIIIII16s16sHHHHBBbB")
assert PACKET_STRUCT.size == RECORD_SIZE



def pack_header(fields: tuple, payload_off: int, payload_caplen: int) -> bytes:
    """Pack one decoded packet (``producers.decode`` field order) into the layout
    (the core's ``Packet::write``, for tests and tools that build batches in Python)."""
    ts, frame, wire_len, payload_len, seq, ack, src, dst, sport, dport, win, flags, ver, proto, wscale, opts = fields
    return PACKET_STRUCT.pack(
        ts, frame, wire_len, payload_len, payload_off, payload_caplen, seq, ack,
        src, dst, sport, dport, win, flags, ver, proto, wscale, opts,
    )


# TCP flag bits
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, NS = 1, 2, 4, 8, 16, 32, 64, 128, 256

# options bits
OPT_SACK_PERM, OPT_SACK, OPT_TIMESTAMP, OPT_MSS, OPT_WSCALE = 1, 2, 4, 8, 16

PROTO_TCP = 6
PROTO_UDP = 17


def decode_batch(record: dict[str, Any]) -> tuple[np.ndarray, bytes]:
    """Return (headers, payloads) of a decoded ``PacketBatch`` record."""
    version = record["layout_version"]
    if version != LAYOUT_VERSION:
        raise ValueError(f"packet layout version {version} is not supported (expected {LAYOUT_VERSION})")
    headers = np.frombuffer(record["packets"], dtype=PACKET_DTYPE, count=record["count"])
    return headers, record["payloads"]


@lru_cache(maxsize=1 << 16)
def ip_text(raw: bytes, ip_version: int) -> str:
    """Address bytes of a header field as text."""
    raw = raw.ljust(16, b"\0")  # numpy strips trailing zero bytes from S16 values
    if ip_version == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def canonical_key(proto: int, ip_a: bytes, port_a: int, ip_b: bytes, port_b: int) -> bytes:
    """The connection key both directions share: the two endpoints in sorted order.

    Addresses are the 16-byte header fields (numpy strips trailing zero bytes from ``S16``
    values; they are padded back here so every producer computes the same key).
    """
    a = ip_a.ljust(16, b"\0") + port_a.to_bytes(2, "big")
    b = ip_b.ljust(16, b"\0") + port_b.to_bytes(2, "big")
    if b < a:
        a, b = b, a
    return bytes((proto,)) + a + b


def partition_for(key: bytes, partitions: int) -> int:
    """Stable partition of a canonical key (CRC-32, not Python's per-process ``hash``)."""
    return zlib.crc32(key) % partitions
