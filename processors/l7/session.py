"""Glue between the connection tracker and the L7 analysers.

:class:`L7Dispatcher` is the L7 state of one input partition: it creates an
:class:`L7Session` for each TCP connection when its first payload byte arrives, holds the
partition's :class:`~.dns.DnsMatcher` (DNS over UDP and TCP share it), and stamps every
record with ``source_id`` and the identity fields before handing it to the publisher.

An :class:`L7Session` gets both directions' in-order bytes and gaps from the compiled
core, which reassembles them (``rust/src/reassembly.rs``, run by the connection tracker:
``data``/``gap`` calls from ``connection_tracker.py``), recognises the protocol from the
first bytes (:mod:`.detect`) and then feeds the chosen analyser. Connections that speak
nothing we know cost one detection and are dropped from L7 (counted; the core then stops
reassembling them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import Emit, L7Options, StreamAnalyzer, StreamContext
from .detect import Verdict, detect
from .dns import DnsMatcher, DnsTcpAnalyzer
from .http import HttpAnalyzer
from .http2 import Http2Analyzer
from .kafka import KafkaAnalyzer
from .mysql import MysqlAnalyzer, MysqlMidConnection
from .postgres import PostgresAnalyzer, PostgresMidConnection
from .redis import RedisAnalyzer
from .tls import TlsAnalyzer

if TYPE_CHECKING:
    from ..connection_tracker import ConnRef

#: Identity fields every L7 record carries; enrichment (Kubernetes, process) fills them.
IDENTITY_FIELDS = tuple(
    f"{side}_{what}"
    for side in ("client", "server")
    for what in ("pod", "namespace", "workload", "node", "pid", "process")
) + ("server_service",)
_NO_IDENTITY = dict.fromkeys(IDENTITY_FIELDS)
_FIRST_IDENTITY_FIELD = IDENTITY_FIELDS[0]

#: Chunks of a connection we try to recognise before giving up on it (a capture that
#: starts mid-connection may first show the middle of a body; the next segment often
#: starts a new message).
DETECT_ATTEMPTS = 8
#: Bytes held while the first bytes are still ambiguous ("GE" could become "GET ").
DETECT_BUFFER = 4096

DNS_TCP_PORT = 53

#: How often (capture time) unanswered DNS queries are looked at for their timeout.
TICK_INTERVAL_US = 1_000_000


class L7Dispatcher:
    """The L7 state of one partition of one source."""

    def __init__(self, publish: Emit, source_id: str = "",
                 options: L7Options | None = None) -> None:
        self.options = options or L7Options()
        self.source_id = source_id
        self._publish = publish
        self.stats: Counter[str] = Counter()
        self.emitted: Counter[str] = Counter()
        self.dns = DnsMatcher(self.emit, self.options, self.stats)
        self._next_tick = 0
        #: what the partition's connections share (StreamContext.shared)
        self.shared: dict[str, Any] = {}

    def _state_restored(self) -> None:
        # a dispatcher of a checkpoint written before ``shared`` existed
        if "shared" not in self.__dict__:
            self.shared = {}

    def emit(self, topic: str, key: str, record: dict[str, Any]) -> None:
        record["source_id"] = self.source_id
        if _FIRST_IDENTITY_FIELD not in record:  # (analysers set none or all of them)
            record.update(_NO_IDENTITY)
        self.emitted[topic] += 1
        self._publish(topic, key, record)

    def session(self, ips: tuple[str, str], ports: tuple[int, int], conn: ConnRef,
                community_id: str | None = None) -> L7Session:
        """The session of a connection whose first payload byte just arrived: its two
        sides' addresses and ports, and its Community ID (the core's, computed once)."""
        return L7Session(self, ips, ports, conn, community_id)

    def datagrams(self, udp: np.ndarray, payloads: bytes) -> None:
        """UDP packets of a batch: DNS goes to the matcher (the whole batch in one call to
        the core), the rest is only counted (``udp_not_analysed``)."""
        if not len(udp):
            return
        self.dns.datagrams(udp, payloads)
        ts = int(udp["ts_us"][-1])
        if ts >= self._next_tick:  # time out unanswered queries, every few seconds of capture time
            self._next_tick = ts + TICK_INTERVAL_US
            self.dns.tick(ts)

    def flush(self) -> None:
        self.dns.flush()


class L7Session:
    """Protocol detection and the analyser of one TCP connection, fed its reassembled
    streams (``data``, ``gap``) by the connection tracker."""

    __slots__ = ("dispatcher", "ctx", "analyzer", "held", "held_bytes", "attempts", "done")

    def __init__(self, dispatcher: L7Dispatcher, ips: tuple[str, str], ports: tuple[int, int],
                 conn: ConnRef, community_id: str | None = None) -> None:
        self.dispatcher = dispatcher
        self.ctx = StreamContext(
            ips=ips,
            ports=ports,
            connection_id=conn.connection_id,
            emit=dispatcher.emit,
            options=dispatcher.options,
            stats=dispatcher.stats,
            community_id=community_id,
            shared=dispatcher.shared,
        )
        self.analyzer: StreamAnalyzer | None = None
        self.held: list[tuple[int, bytes, int]] = []  # chunks seen while detecting
        self.held_bytes = 0
        self.attempts = 0
        self.done = False  # nothing to analyse on this connection
        if DNS_TCP_PORT in ports:
            client = 0 if ports[1] == DNS_TCP_PORT else 1
            self._use(DnsTcpAnalyzer(self.ctx, client, dispatcher.dns))

    def _use(self, analyzer: StreamAnalyzer) -> None:
        self.analyzer = analyzer
        self.dispatcher.stats[f"l7_connections.{analyzer.protocol}"] += 1

    def data(self, d: int, data: bytes, ts: int) -> None:
        """The next bytes of side ``d``'s stream, captured at ``ts``: to the detector
        until the protocol is known, then to the analyser."""
        analyzer = self.analyzer
        if analyzer is not None:
            analyzer.on_data(d, data, ts)
        elif not self.done:
            self._detect(d, data, ts)

    def gap(self, d: int, missing: int, ts: int) -> None:
        """``missing`` bytes of side ``d``'s stream were never captured."""
        self.dispatcher.stats["tcp_gap_bytes"] += missing
        if self.analyzer is not None:
            self.analyzer.on_gap(d, missing, ts)
        elif self.held:  # ambiguous first bytes followed by a hole: start over after it
            self.held.clear()
            self.held_bytes = 0

    def tick(self, now_us: int) -> None:
        if self.analyzer is not None:
            self.analyzer.tick(now_us)

    def close(self, ts_us: int) -> None:
        """The connection ended (the core has delivered both streams' buffered data and
        last gaps): let the analyser finish."""
        if self.analyzer is not None:
            self.analyzer.on_close(ts_us)
        self.done = True

    def _detect(self, d: int, data: bytes, ts: int) -> None:
        held = self.held
        held.append((d, data, ts))
        self.held_bytes += len(data)
        if len(held) == 1:  # the usual case: the first chunk decides
            verdict = detect(data)
        else:
            verdict = detect(b"".join(c for side, c, _ in held if side == d))
        if verdict is Verdict.NEED_MORE and self.held_bytes < DETECT_BUFFER:
            return
        make: Callable[[StreamContext, int], StreamAnalyzer] | None = None
        client = d
        if verdict is Verdict.HTTP_REQUEST:
            make = HttpAnalyzer
        elif verdict is Verdict.HTTP_RESPONSE:
            make, client = HttpAnalyzer, 1 - d
        elif verdict is Verdict.TLS_CLIENT_HELLO:
            make = TlsAnalyzer
        elif verdict is Verdict.TLS_SERVER:
            make, client = TlsAnalyzer, 1 - d
        elif verdict is Verdict.RESP_COMMAND:
            make = RedisAnalyzer
        elif verdict is Verdict.PG_STARTUP:
            make = PostgresAnalyzer
        elif verdict is Verdict.PG_MESSAGE:
            make = PostgresMidConnection
        elif verdict is Verdict.MYSQL_GREETING:
            make, client = MysqlAnalyzer, 1 - d
        elif verdict is Verdict.MYSQL_COMMAND:
            make = MysqlMidConnection
        elif verdict is Verdict.H2_PREFACE:
            make = Http2Analyzer
        elif verdict is Verdict.KAFKA_REQUEST:
            make = KafkaAnalyzer
        stats = self.dispatcher.stats
        if make is None:
            # Not a message start. Later chunks of this side may start one (a capture that
            # began in the middle of a body); drop what we held and look again.
            held.clear()
            self.held_bytes = 0
            self.attempts += 1
            if self.attempts >= DETECT_ATTEMPTS:
                stats["l7_connections.unrecognised"] += 1
                self.done = True
            return
        analyzer = make(self.ctx, client)
        self._use(analyzer)
        # Replay what was held (either side's still-ambiguous first bytes), in arrival order.
        self.held = []
        self.held_bytes = 0
        for side, chunk, t in held:
            analyzer.on_data(side, chunk, t)
