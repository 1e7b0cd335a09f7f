"""The table of open TCP connections of one input partition.

Packets come in as batches (``wirestream.packet_block`` headers). Each TCP packet is
routed to its :class:`~wirestream.processors.tcp_connection.TcpConnection`, found by
its address/port pair in either direction. A pure SYN whose ISN differs from the one
already known for that side starts a new connection on the same ports, as Wireshark
starts a new ``tcp.stream``; nothing else does (Wireshark 4.0 has no "closed" rule).

Records are emitted (``on_record``):
- when a closed connection (both FINs, or a RST) has been quiet for ``close_linger_us``
  of capture time, or a new connection takes over its ports;
- when an open connection has been idle for ``idle_timeout_us`` (state ``timeout``);
- as interim records (``final=false``) every ``interim_us`` for long connections, if set;
- for everything still open at the end of input (state ``open_at_end``).

Expiry runs on capture time, so replaying a file and watching live behave alike, and
state stays bounded by the number of connections active within the timeouts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from wirestream.packet_block import ACK, PROTO_TCP, SYN

from .tcp_connection import EndedBy, TcpConnection

if TYPE_CHECKING:
    from .l7.session import L7Dispatcher
    from .socket_join import SocketJoin

RecordCallback = Callable[[dict[str, Any]], None]

#: Sweep for expired connections at most this often (capture time). A sweep walks every
#: held connection; packets of an expired connection are caught per packet anyway, so the
#: sweep only bounds how late a connection that goes quiet for good is emitted.
SWEEP_INTERVAL_US = 5_000_000


class ConnectionTracker:
    """Track every TCP connection of one partition of one source."""

    def __init__(
        self,
        on_record: RecordCallback,
        source_id: str = "",
        idle_timeout_us: int = 300_000_000,
        close_linger_us: int = 10_000_000,
        interim_us: int = 0,
        max_connections: int = 1_000_000,
        l7: L7Dispatcher | None = None,
    ) -> None:
        self.on_record = on_record
        # L7 analysis of the connections' payload (None: TCP analysis only)
        self.l7 = l7
        # Kernel socket events of this source and partition (live eBPF capture only).
        self.sockets: SocketJoin | None = None
        self.source_id = source_id
        self.idle_timeout_us = idle_timeout_us
        self.close_linger_us = close_linger_us
        self.interim_us = interim_us
        self.max_connections = max_connections
        self._expiry_floor_us = min(idle_timeout_us, close_linger_us)
        # (src, sport, dst, dport) -> connection, registered under both directions
        self._conns: dict[tuple, TcpConnection] = {}
        self.open_connections = 0
        self.packets = 0
        self.emitted = 0
        self.counters: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self._now = 0
        self._next_sweep = 0

    # --- input --------------------------------------------------------------------------

    def process(self, headers: np.ndarray, payloads: bytes = b"") -> None:
        """Analyse a batch of packet headers (UDP packets are skipped); ``payloads`` is the
        batch's payload blob, which the L7 analysers read."""
        if not len(headers):
            return
        tcp = headers[headers["proto"] == PROTO_TCP]
        self.counters["non_tcp_packets"] += len(headers) - len(tcp)
        if not len(tcp):
            return
        conns = self._conns
        cols = (
            tcp["ts_us"].tolist(), tcp["frame"].tolist(), tcp["src_ip"].tolist(),
            tcp["src_port"].tolist(), tcp["dst_ip"].tolist(), tcp["dst_port"].tolist(),
            tcp["seq"].tolist(), tcp["ack"].tolist(), tcp["payload_len"].tolist(),
            tcp["tcp_flags"].tolist(), tcp["window"].tolist(), tcp["wscale"].tolist(),
            tcp["ip_version"].tolist(), tcp["payload_off"].tolist(), tcp["payload_caplen"].tolist(),
        )
        l7 = self.l7
        for (ts, frame, src, sport, dst, dport, seq, ack, seglen, flags, win, wscale, ver,
             off, caplen) in zip(*cols, strict=True):
            key = (src, sport, dst, dport)
            conn = conns.get(key)
            # Expire a connection that is already due before routing this packet to it: the
            # sweep only runs after a whole batch, so otherwise whether a quiet gap splits
            # the stream depended on where the batches fell. (The first comparison is only
            # a cheap filter for the hot path; _expire_if_due applies the rules.)
            if conn is not None and ts - conn.last_ts >= self._expiry_floor_us and self._expire_if_due(conn, ts):
                conn = None
            is_new = False
            if conn is None:
                conn = self._open(key, ver, src, sport, dst, dport, ts)
                is_new = True
            f0 = conn.flows[0]
            d = 0 if (sport == f0.port and src == f0.ip) else 1
            if flags & (SYN | ACK) == SYN and not is_new:
                if conn.is_syn_retransmission(d, seq) is False:
                    # A new ISN on known ports: a new connection (Wireshark: ports reused).
                    self._close(conn, EndedBy.CLOSE)
                    conn = self._open(key, ver, src, sport, dst, dport, ts, reused=True)
                    d = 0
            conn.on_packet(d, ts, frame, seq, ack, seglen, flags, win, wscale, is_new)
            if l7 is not None:
                session = conn.l7
                if session is None and seglen:  # after on_packet: it sets the stream bases
                    session = conn.l7 = l7.session(conn)
                if session is not None:
                    session.packet(d, seq, ack, flags,
                                   payloads[off:off + caplen] if caplen else b"", seglen, ts)
        self.packets += len(tcp)
        self._now = ts
        if ts >= self._next_sweep:
            self.sweep(ts)

    def _open(self, key: tuple, ver: int, src: bytes, sport: int, dst: bytes, dport: int,
              ts: int, reused: bool = False) -> TcpConnection:
        if self.open_connections >= self.max_connections:
            # Bounded state: make room by closing the least recently active connection.
            # _held() is in insertion order: on a tie the same connection is chosen
            # again when a restored worker replays this input (a set's order is by id).
            oldest = min(self._held(), key=lambda c: c.last_ts)
            self.counters["evicted_for_memory"] += 1
            self._close(oldest, EndedBy.TIMEOUT)
        conn = TcpConnection(key, ver, src, sport, dst, dport, ts, self.source_id)
        if reused:
            conn.completeness = 1  # Wireshark presets SYN on a reused-port conversation
        self._conns[key] = conn
        self._conns[(dst, dport, src, sport)] = conn
        self.open_connections += 1
        self.counters["connections_opened"] += 1
        return conn

    def _close(self, conn: TcpConnection, ended_by: EndedBy) -> None:
        f0, f1 = conn.flows
        for key in ((f0.ip, f0.port, f1.ip, f1.port), (f1.ip, f1.port, f0.ip, f0.port)):
            if self._conns.get(key) is conn:
                del self._conns[key]
        self.open_connections -= 1
        self.emitted += 1
        if conn.l7 is not None:
            conn.l7.close(conn.last_ts)
            conn.l7 = None
        self._emit(conn.to_record(ended_by, final=True))

    def _emit(self, record: dict[str, Any]) -> None:
        if self.sockets is not None:
            self.sockets.annotate(record)
        self.on_record(record)

    # --- expiry ---------------------------------------------------------------------------

    def _held(self) -> list[TcpConnection]:
        """Every held connection once (each is registered under both directions)."""
        return list({id(c): c for c in self._conns.values()}.values())

    def _expire_if_due(self, conn: TcpConnection, now_us: int) -> bool:
        """Emit ``conn`` if it is closed and past its linger time, or idle past the timeout."""
        quiet = now_us - conn.last_ts
        if conn.closed_ts is not None and quiet >= self.close_linger_us:
            self._close(conn, EndedBy.CLOSE)
        elif quiet >= self.idle_timeout_us:
            self.counters["idle_timeouts"] += 1
            self._close(conn, EndedBy.TIMEOUT)
        else:
            return False
        return True

    def sweep(self, now_us: int) -> None:
        """Emit closed connections past their linger time and idle ones past the timeout."""
        self._next_sweep = now_us + SWEEP_INTERVAL_US
        for conn in self._held():
            if self._expire_if_due(conn, now_us):
                continue
            if conn.l7 is not None:
                conn.l7.tick(now_us)
            if (self.interim_us and conn.closed_ts is None
                  and now_us - conn.first_ts >= (conn.interim_emitted + 1) * self.interim_us):
                conn.interim_emitted += 1
                self.emitted += 1
                self.counters["interim_records"] += 1
                self._emit(conn.to_record(EndedBy.OPEN, final=False))

    def flush(self) -> None:
        """End of input: emit every connection still held."""
        for conn in self._held():
            # Already due: as a sweep would have said (the last sweep may predate the
            # expiry, depending on batch boundaries).
            if not self._expire_if_due(conn, self._now):
                self._close(conn, EndedBy.CLOSE if conn.closed_ts is not None else EndedBy.END_OF_INPUT)
        if self.l7 is not None:
            self.l7.flush()
