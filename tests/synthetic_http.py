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


# --- free-form traffic for the detection tests ------------------------------------------

Frame = tuple[int, bytes]  # (capture time, raw IPv4 packet)


def http_connection(client: str, cport: int, server: str, port: int, t: int,
                    exchanges: Sequence[tuple[bytes, bytes | None, int]], gap_us: int = 2_000,
                    close: bool = True) -> list[Frame]:
    """Handshake, then ``(request, response or None, latency)`` one after the other, then
    FIN both ways (unless ``close`` is false). A request without a response gets none."""
    c, s = socket.inet_aton(client), socket.inet_aton(server)
    cseq, sseq = 1000, 90000
    out: list[Frame] = [(t, _packet(c, s, cport, port, cseq, 0, SYN, b"")),
                        (t + 200, _packet(s, c, port, cport, sseq, cseq + 1, SYN | ACK, b""))]
    cseq, sseq = cseq + 1, sseq + 1
    t += 400
    out.append((t, _packet(c, s, cport, port, cseq, sseq, ACK, b"")))
    for request, response, latency in exchanges:
        t += gap_us
        out.append((t, _packet(c, s, cport, port, cseq, sseq, PSH | ACK, request)))
        cseq += len(request)
        if response is not None:
            t += latency
            out.append((t, _packet(s, c, port, cport, sseq, cseq, PSH | ACK, response)))
            sseq += len(response)
    if close:
        t += 1000
        out += [(t, _packet(c, s, cport, port, cseq, sseq, FIN | ACK, b"")),
                (t + 100, _packet(s, c, port, cport, sseq, cseq + 1, FIN | ACK, b"")),
                (t + 200, _packet(c, s, cport, port, cseq + 1, sseq + 1, ACK, b""))]
    return out


def unanswered_syn(client: str, cport: int, server: str, port: int, t: int) -> list[Frame]:
    return [(t, _packet(socket.inet_aton(client), socket.inet_aton(server), cport, port, 1000, 0,
                        SYN, b""))]


def write_frames(path: str, frames: Sequence[Frame]) -> str:
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        rec = struct.Struct("<IIII")
        for ts, frame in sorted(frames, key=lambda x: x[0]):
            f.write(rec.pack(ts // 1_000_000, ts % 1_000_000, len(frame), len(frame)))
            f.write(frame)
    return path


def request(method: str = "GET", target: str = "/", host: str = "example.test",
            headers: str = "", body: bytes = b"") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{headers}"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def response(status: int = 200, reason: str = "OK", headers: str = "", body: bytes = b"") -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\n{headers}Content-Length: {len(body)}\r\n\r\n").encode() + body
