"""``wire.tls-plaintext`` chunks -> HTTP/1 transactions of their TCP connection (issue 19).

The uprobe path's counterpart of the key-log path's :class:`~.l7.tls.DecryptedStream`:
the same HTTP/1 analyser, fed with the plaintext the processes gave to and got from
OpenSSL instead of the plaintext decrypted from the records; its transactions are marked
``tls: true`` the same way.

One connection, several views: on one host both ends of a connection may be probed (a
client and a server both linking libssl.so.3: loopback, pod to pod on a node), and each
gives the whole plaintext. The first (process, SSL object) seen for a connection is the
one analysed; the others' chunks are counted (``tls_plaintext.other_view``), not
analysed twice.

Directions: 0 is the bytes from the canonically lower endpoint ((ip, port) ordered) to
the higher one; which end is the client, the analyser learns from the first bytes (a
request line or a status line), as for decrypted plaintext.

A chunk cut short by the producer's per-call limit (``truncated``) leaves a gap in its
direction: the analyser is told (``on_gap``) and resynchronises as it does on a TCP gap.

Wiring into the processors (processors/engine.py, another engineer's file): read
``wire.tls-plaintext`` beside ``wire.packets`` (same partitions), and hand each chunk to
a :class:`PlaintextJoin` of the partition whose ``connection_id`` callback returns the
connection's id as the connection tracker computes it; the chunks then also go in the
partition's checkpoint (the join's state is the held chunks and the analysers).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from .l7.base import L7Options, StreamContext
from .l7.tls import DecryptedStream

Emit = Callable[[str, str, dict[str, Any]], None]
Endpoint = tuple[str, int]


def connection_ends(chunk: dict[str, Any]) -> tuple[Endpoint, Endpoint]:
    """The connection's two endpoints in canonical order (lower first)."""
    local = (chunk["local_ip"], chunk["local_port"])
    remote = (chunk["remote_ip"], chunk["remote_port"])
    return (local, remote) if _order(local) <= _order(remote) else (remote, local)


def _order(end: Endpoint) -> tuple[int, bytes, int]:
    import ipaddress

    ip = ipaddress.ip_address(end[0])
    return ip.version, ip.packed, end[1]


class _Connection:
    def __init__(self, view: tuple[int, int], stream: DecryptedStream) -> None:
        self.view = view  # (pid, stream_id) analysed
        self.stream = stream
        self.next_offset = {0: 0, 1: 0}  # bytes of each direction given to the analyser


class PlaintextJoin:
    """TLS plaintext chunks of many connections -> their HTTP/1 records, via ``emit``."""

    def __init__(self, emit: Emit, options: L7Options | None = None,
                 connection_id: Callable[[Endpoint, Endpoint], str] | None = None) -> None:
        self.emit = emit
        self.options = options or L7Options()
        self.connection_id = connection_id or (lambda a, b: f"{a[0]}:{a[1]}-{b[0]}:{b[1]}")
        self.stats: Counter[str] = Counter()
        self._connections: dict[tuple[Endpoint, Endpoint], _Connection] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        """One ``TlsPlaintext`` record (end-of-input markers are ignored)."""
        if chunk.get("end_of_input"):
            return
        ends = connection_ends(chunk)
        view = (chunk["pid"], chunk["stream_id"])
        conn = self._connections.get(ends)
        if conn is None:
            a, b = ends
            ctx = StreamContext(ips=(a[0], b[0]), ports=(a[1], b[1]),
                                connection_id=lambda a=a, b=b: self.connection_id(a, b),
                                emit=self.emit, options=self.options, stats=self.stats)
            conn = self._connections[ends] = _Connection(view, DecryptedStream(ctx))
        elif conn.view != view:
            self.stats["tls_plaintext.other_view"] += 1
            return
        local = (chunk["local_ip"], chunk["local_port"])
        sender_is_lower = (local == ends[0]) == (chunk["direction"] == "send")
        direction = 0 if sender_is_lower else 1
        if chunk["offset"] > conn.next_offset[direction]:  # chunks lost on the way (ring full)
            self._gap(conn, direction, chunk["offset"] - conn.next_offset[direction], chunk["ts_us"])
        elif chunk["offset"] < conn.next_offset[direction]:
            self.stats["tls_plaintext.out_of_order"] += 1
            return
        conn.stream.data(direction, chunk["data"], chunk["ts_us"])
        conn.next_offset[direction] = chunk["offset"] + len(chunk["data"])
        if chunk["truncated"]:
            self._gap(conn, direction, chunk["length"] - len(chunk["data"]), chunk["ts_us"])
            conn.next_offset[direction] = chunk["offset"] + chunk["length"]
        self.stats["tls_plaintext.chunks"] += 1

    def _gap(self, conn: _Connection, direction: int, missing: int, ts_us: int) -> None:
        self.stats["tls_plaintext.gap_bytes"] += missing
        analyzer = conn.stream.analyzer
        if analyzer is not None:
            analyzer.on_gap(direction, missing, ts_us)

    def tick(self, now_us: int) -> None:
        for conn in self._connections.values():
            conn.stream.tick(now_us)

    def close(self, ts_us: int = 0) -> None:
        """End of input: every connection's pending transactions are emitted."""
        for conn in self._connections.values():
            conn.stream.close(ts_us)
        self._connections.clear()
