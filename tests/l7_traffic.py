"""Synthetic TCP/UDP conversations as packet-header batches, for L7 tests.

Builds exactly what the pcap producer publishes (``wirestream.packet_block`` headers and
a payload blob) for a handshake, data segments in both directions and a close, so tests
can feed the connection tracker and the L7 analysers any bytes they like.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import numpy as np

from wirestream.packet_block import (
    ACK,
    FIN,
    PACKET_DTYPE,
    PROTO_TCP,
    PROTO_UDP,
    PSH,
    SYN,
    pack_header,
)


@dataclass
class Traffic:
    """Packets appended in capture order."""

    headers: bytearray = field(default_factory=bytearray)
    payloads: bytearray = field(default_factory=bytearray)
    frame: int = 0
    ts_us: int = 1_700_000_000_000_000

    def packet(self, src: str, sport: int, dst: str, dport: int, payload: bytes = b"", *,
               proto: int = PROTO_TCP, seq: int = 0, ack: int = 0, flags: int = ACK,
               gap_us: int = 100) -> None:
        self.frame += 1
        self.ts_us += gap_us
        fields = (self.ts_us, self.frame, 54 + len(payload), len(payload), seq, ack,
                  socket.inet_aton(src), socket.inet_aton(dst), sport, dport, 65535, flags,
                  4, proto, -1, 0)
        self.headers += pack_header(fields, len(self.payloads), len(payload))
        self.payloads += payload

    def batch(self) -> tuple[np.ndarray, bytes]:
        return np.frombuffer(bytes(self.headers), dtype=PACKET_DTYPE), bytes(self.payloads)

    def tcp(self, client: tuple[str, int], server: tuple[str, int],
            exchanges: list[tuple[int, bytes]], close: bool = True) -> None:
        """A whole connection: handshake, ``(direction, bytes)`` segments (0 = client to
        server), FIN both ways."""
        (cip, cport), (sip, sport) = client, server
        seq = [1000, 5000]
        self.packet(cip, cport, sip, sport, seq=seq[0], flags=SYN)
        self.packet(sip, sport, cip, cport, seq=seq[1], ack=seq[0] + 1, flags=SYN | ACK)
        seq = [seq[0] + 1, seq[1] + 1]
        self.packet(cip, cport, sip, sport, seq=seq[0], ack=seq[1])
        ends = ((cip, cport), (sip, sport))
        for d, data in exchanges:
            (a, ap), (b, bp) = ends[d], ends[1 - d]
            self.packet(a, ap, b, bp, data, seq=seq[d], ack=seq[1 - d], flags=ACK | PSH)
            seq[d] += len(data)
        if close:
            for d in (0, 1):
                (a, ap), (b, bp) = ends[d], ends[1 - d]
                self.packet(a, ap, b, bp, seq=seq[d], ack=seq[1 - d], flags=FIN | ACK)
                seq[d] += 1

    def udp(self, src: tuple[str, int], dst: tuple[str, int], payload: bytes, gap_us: int = 100) -> None:
        self.packet(src[0], src[1], dst[0], dst[1], payload, proto=PROTO_UDP, flags=0, gap_us=gap_us)
