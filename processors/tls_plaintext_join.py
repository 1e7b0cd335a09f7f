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

In the packet workers: ``wire.tls-plaintext`` is read beside ``wire.packets`` (same
partitions). The uprobes producer is a source of its own, so a partition's
:class:`PlaintextRouter` holds each chunk until an engine of the partition tracks its
connection (its packets may come later than its plaintext: two producers), then hands
it to that engine's :class:`PlaintextJoin`, whose transactions carry the connection's
``connection_id`` as the tracker knows it and go out through the engine (enrichment,
windows, the checkpoint). The engine closes a connection's plaintext analysis when the
tracker closes the connection. Chunks whose connection no engine tracks within
``horizon_us`` of chunk time are counted (``tls_plaintext_unjoined``): traffic on an
interface the capture does not watch, or a capture without L7 analysis.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .connection_tracker import Ends, canonical_ends
from .l7.base import L7Options, StreamContext
from .l7.tls import DecryptedStream

if TYPE_CHECKING:
    from .connection_tracker import ConnRef
    from .engine import Engine

Emit = Callable[[str, str, dict[str, Any]], None]
Endpoint = tuple[str, int]


def connection_ends(chunk: dict[str, Any]) -> Ends:
    """The chunk's connection's two endpoints in canonical order (lower first)."""
    return canonical_ends((chunk["local_ip"], chunk["local_port"]), (chunk["remote_ip"], chunk["remote_port"]))


class _Connection:
    def __init__(self, view: tuple[int, int], stream: DecryptedStream) -> None:
        self.view = view  # (pid, stream_id) analysed
        self.stream = stream
        self.next_offset = {0: 0, 1: 0}  # bytes of each direction given to the analyser


class PlaintextJoin:
    """TLS plaintext chunks of many connections -> their HTTP/1 records, via ``emit``."""

    def __init__(self, emit: Emit, options: L7Options | None = None,
                 resolve: Callable[[Ends], tuple[ConnRef, str | None] | None] | None = None) -> None:
        """``emit``: where records go (in a worker, the engine's L7 dispatcher's, which
        stamps the source). ``resolve``: the tracker's connection of two endpoints (its
        id changes as the tracker learns who the client is) and its Community ID; without
        one, or when it does not know the connection, records get an id made of the
        endpoints."""
        self.emit = emit
        self.options = options or L7Options()
        self.resolve = resolve
        self.stats: Counter[str] = Counter()
        self._connections: dict[Ends, _Connection] = {}
        self.last_ts_us = 0  # of the newest chunk: the end of input's time

    @staticmethod
    def _endpoints_id(a: Endpoint, b: Endpoint) -> str:
        return f"{a[0]}:{a[1]}-{b[0]}:{b[1]}"

    def add(self, chunk: dict[str, Any]) -> None:
        """One ``TlsPlaintext`` record (end-of-input markers are ignored)."""
        if chunk.get("end_of_input"):
            return
        ends = connection_ends(chunk)
        self.last_ts_us = max(self.last_ts_us, chunk["ts_us"])
        view = (chunk["pid"], chunk["stream_id"])
        conn = self._connections.get(ends)
        if conn is None:
            a, b = ends
            known = self.resolve(ends) if self.resolve is not None else None
            # bound methods and partials, not closures: the join is checkpointed
            connection_id = known[0].connection_id if known else functools.partial(self._endpoints_id, a, b)
            ctx = StreamContext(ips=(a[0], b[0]), ports=(a[1], b[1]), connection_id=connection_id,
                                emit=self.emit, options=self.options, stats=self.stats,
                                community_id=known[1] if known else None)
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

    def close_connection(self, ends: Ends, ts_us: int) -> None:
        """The connection ended (the tracker closed it): its pending transactions go out."""
        conn = self._connections.pop(ends, None)
        if conn is not None:
            conn.stream.close(ts_us)

    @property
    def connections(self) -> int:
        return len(self._connections)

    def close(self, ts_us: int | None = None) -> None:
        """End of input: every connection's pending transactions are emitted (at
        ``ts_us``, by default the newest chunk's time)."""
        for conn in self._connections.values():
            conn.stream.close(self.last_ts_us if ts_us is None else ts_us)
        self._connections.clear()


class PlaintextRouter:
    """One partition's plaintext chunks, on their way to the engine tracking their
    connection (the uprobes producer is not the capture: its chunks name no engine).

    A chunk goes at once to an engine whose tracker has its connection open; otherwise
    it waits, with the other chunks of its connection, in arrival order, until one does
    (:meth:`retry`, after each packet batch of the partition), and is given up after
    ``horizon_us`` of chunk time (``tls_plaintext_unjoined``). Bounded: at most
    ``max_connections`` connections wait; more are given up at once, counted."""

    def __init__(self, horizon_us: int = 30_000_000, max_connections: int = 10_000) -> None:
        self.horizon_us = horizon_us
        self.max_connections = max_connections
        self.pending: dict[Ends, list[dict[str, Any]]] = {}
        self.newest_us = 0
        self.counters: Counter[str] = Counter()

    def add(self, chunk: dict[str, Any], engines: Iterable[Engine]) -> None:
        """One ``TlsPlaintext`` record of this partition (end markers counted only)."""
        if chunk.get("end_of_input"):
            self.counters["tls_plaintext_sources_ended"] += 1
            return
        self.newest_us = max(self.newest_us, chunk["ts_us"])
        ends = connection_ends(chunk)
        waiting = self.pending.get(ends)
        if waiting is not None:
            waiting.append(chunk)
            self._release(ends, engines)
            return
        engine = _tracking(ends, engines)
        if engine is not None:
            engine.tls_plaintext(chunk, ends)
            self.counters["tls_plaintext_joined"] += 1
        elif len(self.pending) >= self.max_connections:
            self.counters["tls_plaintext_unjoined"] += 1
        else:
            self.pending[ends] = [chunk]

    def retry(self, engines: Iterable[Engine]) -> None:
        """Hand over what waits for connections now tracked; give up on the old."""
        if not self.pending:
            return
        engines = list(engines)
        for ends in list(self.pending):
            if not self._release(ends, engines) and self.pending[ends][0]["ts_us"] < self.newest_us - self.horizon_us:
                self.counters["tls_plaintext_unjoined"] += len(self.pending.pop(ends))

    def _release(self, ends: Ends, engines: Iterable[Engine]) -> bool:
        engine = _tracking(ends, engines)
        if engine is None:
            return False
        for chunk in self.pending.pop(ends):
            engine.tls_plaintext(chunk, ends)
            self.counters["tls_plaintext_joined"] += 1
        return True

    @property
    def waiting(self) -> int:
        """Chunks held, waiting for their connection."""
        return sum(len(chunks) for chunks in self.pending.values())


def _tracking(ends: Ends, engines: Iterable[Engine]) -> Engine | None:
    for engine in engines:
        if ends in engine.tracker.by_ends:
            return engine
    return None
