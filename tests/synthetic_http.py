"""A pcap of keep-alive HTTP/1.1 traffic whose request latencies are given exactly.

For the windows' accuracy test: each request is one segment at capture time ``t``, its
response one segment at ``t + latency``, so every transaction record has
``latency_us == latency`` and ``request_ts_us == t``. Raw IPv4 (linktype 101), headers
built with ``struct`` (checksums are left 0: nothing here verifies them).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LINKTYPE_RAW = 101
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


@dataclass
class Service:
    ip: str
    port: int
    latencies_us: np.ndarray  # one per transaction, in the order they are sent
    connections: int = 50


@dataclass
class Sent:
    """What was put in the capture, per service: (request ts, latency) of every request."""

    request_ts_us: np.ndarray
    latency_us: np.ndarray


def _packet(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
            payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags,
                      65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0, src, dst)
    return ip + tcp + payload


def write_capture(path: str, services: Sequence[Service], start_us: int = 1_800_000_000_000_000,
                  seed: int = 7) -> dict[str, Sent]:
    """Write the capture; return what each service (``ip:port``) was sent."""
    rng = np.random.default_rng(seed)
    packets: list[tuple[int, int, bytes]] = []  # (ts, tiebreak, frame)
    sent: dict[str, Sent] = {}
    n = 0
    for si, svc in enumerate(services):
        server = socket.inet_aton(svc.ip)
        lat = np.asarray(svc.latencies_us, dtype=np.int64)
        per_conn = np.array_split(np.arange(len(lat)), svc.connections)
        req_ts = np.zeros(len(lat), dtype=np.int64)
        for ci, idx in enumerate(per_conn):
            client = socket.inet_aton(f"10.{100 + si}.{ci // 250}.{ci % 250 + 1}")
            cport = 20000 + ci
            t = start_us + int(rng.integers(0, 1_000_000))
            cseq, sseq = 1000, 90000

            def add(ts: int, frame: bytes) -> None:
                nonlocal n
                packets.append((ts, n, frame))
                n += 1

            add(t, _packet(client, server, cport, svc.port, cseq, 0, SYN, b""))
            add(t + 200, _packet(server, client, svc.port, cport, sseq, cseq + 1, SYN | ACK, b""))
            cseq += 1
            sseq += 1
            t += 400
            add(t, _packet(client, server, cport, svc.port, cseq, sseq, ACK, b""))
            gaps = rng.integers(1_000, 20_000, len(idx))
            for k, i in enumerate(idx):
                t += int(gaps[k])
                request = f"GET /item/{i} HTTP/1.1\r\nHost: {svc.ip}\r\n\r\n".encode()
                add(t, _packet(client, server, cport, svc.port, cseq, sseq, PSH | ACK, request))
                req_ts[i] = t
                cseq += len(request)
                t += int(lat[i])
                add(t, _packet(server, client, svc.port, cport, sseq, cseq, PSH | ACK, RESPONSE))
                sseq += len(RESPONSE)
            t += 1000
            add(t, _packet(client, server, cport, svc.port, cseq, sseq, FIN | ACK, b""))
            add(t + 100, _packet(server, client, svc.port, cport, sseq, cseq + 1, FIN | ACK, b""))
            add(t + 200, _packet(client, server, cport, svc.port, cseq + 1, sseq + 1, ACK, b""))
        sent[f"{svc.ip}:{svc.port}"] = Sent(req_ts, lat)
    packets.sort()
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        rec = struct.Struct("<IIII")
        for ts, _, frame in packets:
            f.write(rec.pack(ts // 1_000_000, ts % 1_000_000, len(frame), len(frame)))
            f.write(frame)
    return sent
