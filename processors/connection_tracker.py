"""The table of open TCP connections of one input partition: the compiled core's tracker.

Packets come in as batches (``wirestream.packet_block`` headers, read in place by the
core). The core (``rust/src/tcp/tracker.rs``, ``connection.rs``) routes each TCP packet
to its connection by its address/port pair in either direction, runs Wireshark 4.0's
sequence analysis on it, and builds the ``wire.connections`` records. A pure SYN whose
ISN differs from the one already known for that side starts a new connection on the same
ports, as Wireshark starts a new ``tcp.stream``; nothing else does.

Records are emitted (``on_record``):
- when a closed connection (both FINs, or a RST) has been quiet for ``close_linger_us``
  of capture time, or a new connection takes over its ports;
- when an open connection has been idle for ``idle_timeout_us`` (state ``timeout``);
- as interim records (``final=false``) every ``interim_us`` for long connections, if set;
- for everything still open at the end of input (state ``open_at_end``);
- for the least recently active connection when ``max_connections`` are held.

Expiry runs on capture time, so replaying a file and watching live behave alike, and
state stays bounded by the number of connections active within the timeouts.

With L7 on, the core also reassembles both directions of each connection that carries
payload (``rust/src/reassembly.rs``) and hands this class, per batch and in order with
the records, that connection's events: its session opens (first payload byte), the
in-order data and gaps of its streams, sweep ticks and its close (after its streams'
last data, before its record). Python does no work per packet: only per chunk of new
stream bytes of an L7 connection (none for ACKs and retransmissions), and none at all
with L7 off. Once a connection is known to speak HTTP/1 (or TLS, without a key log), not
even that: its session is *attached* (``TcpTracker.l7_attach``), and the core hands its
chunks and ticks to the analyser's compiled parser itself, Python seeing only what
completed (``on_core_output``). A gap or a switch to HTTP/2 detaches it (the gap is
attached again after its hook ran), so that a connection's events keep their order. An
attached HTTP/1 session is closed as soon as both FINs are in and both streams delivered up to
them (no later packet can add a byte), not with the connection's record after its linger:
its state goes then.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from wirestream._core import TcpTracker

from .state_codec import StateError

if TYPE_CHECKING:
    from .l7.session import L7Dispatcher, L7Session
    from .socket_join import SocketJoin
    from .tls_plaintext_join import PlaintextJoin

Ends = tuple[tuple[str, int], tuple[str, int]]  # two endpoints (ip, port), canonical order

RecordCallback = Callable[[dict[str, Any]], None]

#: Sweep for expired connections at most this often (capture time; the core's constant).
SWEEP_INTERVAL_US = 5_000_000

# Event kinds of TcpTracker (rust/src/python_tcp.rs)
_RECORD, _OPEN, _DATA, _CLOSE, _TICK, _ID, _GAP, _CORE_OUTPUT = range(8)


def canonical_ends(a: tuple[str, int], b: tuple[str, int]) -> Ends:
    """A connection's two endpoints in one order whichever end is named first (any total
    order does: the index of open connections by endpoints and the TLS plaintext join
    use this one)."""
    return (a, b) if a <= b else (b, a)


class ConnRef:
    """The connection an L7 session belongs to, as far as its records need: its id (the
    core says when it changes, e.g. once the handshake tells who the client is)."""

    __slots__ = ("cid",)

    def __init__(self, cid: str) -> None:
        self.cid = cid

    def connection_id(self) -> str:
        return self.cid


class ConnectionTracker:
    """Track every TCP connection of one partition of one source."""

    # The core is state too: its bytes go into a snapshot (_state_prepare) and it is
    # rebuilt from them on restore (_state_restored); processors/state_codec.py.
    _state_exclude = ("_core", "_attach_all")
    #: A restored tracker's sessions are attached again (TcpTracker.l7_attach) before its
    #: next batch: attachments are not state.
    _attach_all = False
    #: Seed of the records' Community ID (the core's bytes do not hold it; a checkpoint
    #: written before it existed restores with this default).
    community_id_seed = 0

    def __init__(
        self,
        on_record: RecordCallback,
        source_id: str = "",
        idle_timeout_us: int = 300_000_000,
        close_linger_us: int = 10_000_000,
        interim_us: int = 0,
        max_connections: int = 1_000_000,
        l7: L7Dispatcher | None = None,
        community_id_seed: int = 0,
    ) -> None:
        self.on_record = on_record
        # L7 analysis of the connections' payload (None: TCP analysis only)
        self.l7 = l7
        # Kernel socket events of this source and partition (live eBPF capture only).
        self.sockets: SocketJoin | None = None
        self.dropped: Counter[str] = Counter()
        # core handle -> the L7 session of the connection, and what it knows of it
        self.sessions: dict[int, L7Session] = {}
        self.refs: dict[int, ConnRef] = {}
        # open connections by their two endpoints (canonical order), for the TLS
        # plaintext of uprobes, which names a connection by its endpoints only; and that
        # plaintext's analysis, closed with its connection (processors/tls_plaintext_join.py)
        self.by_ends: dict[Ends, tuple[ConnRef, str | None]] = {}  # -> (connection, Community ID)
        self.ends_of: dict[int, tuple[Ends, ConnRef]] = {}  # core handle -> its entry there
        self.plaintext: PlaintextJoin | None = None
        self.community_id_seed = community_id_seed
        self._core = TcpTracker(source_id, idle_timeout_us, close_linger_us, interim_us,
                                max_connections, l7 is not None, community_id_seed)
        self._core_state = b""  # the core's bytes, in a snapshot only

    # --- what the engine and the reports read --------------------------------------------

    @property
    def source_id(self) -> str:
        return self._core.source_id

    @property
    def open_connections(self) -> int:
        return self._core.open_connections

    @property
    def index_entries(self) -> int:
        """Entries of the core's (direction -> connection) index: 2 per open connection."""
        return self._core.index_entries

    @property
    def packets(self) -> int:
        return self._core.packets

    @property
    def emitted(self) -> int:
        return self._core.emitted

    @property
    def counters(self) -> Counter[str]:
        return Counter(self._core.counters())

    def connection_ref(self, ends: Ends) -> tuple[ConnRef, str | None] | None:
        """The open connection between two endpoints (canonical order) and its Community
        ID, if there is one (L7 on)."""
        return self.by_ends.get(ends)

    # --- input --------------------------------------------------------------------------

    def process(self, headers: np.ndarray | bytes, payloads: bytes | memoryview | np.ndarray = b"") -> None:
        """Analyse a batch of packet headers (UDP packets are skipped); ``payloads`` is the
        batch's payload blob (any contiguous buffer, read in place by the core), whose
        bytes the L7 streams are made of."""
        if not len(headers):
            return
        if self._core_state:  # a snapshot's copy of the core's state: not needed any more
            self._core_state = b""
        if self._attach_all:
            self._attach_sessions()
        if isinstance(headers, np.ndarray):
            headers = np.ascontiguousarray(headers).view(np.uint8)  # the core reads it in place
        if isinstance(payloads, np.ndarray):
            payloads = np.ascontiguousarray(payloads).view(np.uint8)
        self._dispatch(self._core.process(headers, payloads))

    def sweep(self, now_us: int) -> None:
        """Emit closed connections past their linger time and idle ones past the timeout."""
        if self._attach_all:
            self._attach_sessions()
        self._dispatch(self._core.sweep(now_us))

    def flush(self) -> None:
        """End of input: emit every connection still held."""
        if self._attach_all:
            self._attach_sessions()
        self._dispatch(self._core.flush())
        if self.l7 is not None:
            self.l7.flush()

    def _dispatch(self, events: Iterable[tuple]) -> None:
        sessions = self.sessions
        for ev in events:
            kind = ev[0]
            if kind == _DATA:
                _, h, d, data, ts = ev
                session = sessions.get(h)
                if session is None:  # (given up on earlier in this batch)
                    continue
                detecting = session.analyzer is None
                session.data(d, data, ts)
                if session.done:  # nothing to analyse: the core stops reassembling it
                    self._core.l7_ignore(h)
                    del sessions[h]
                    del self.refs[h]
                    # (its plaintext from uprobes may still be analysed: the session
                    # gave up on the encrypted bytes, not the connection)
                elif detecting and session.analyzer is not None:  # the protocol was just recognised
                    self._attach(h, session)
            elif kind == _CORE_OUTPUT:  # an attached session's data or tick, analysed by the core
                session = sessions.get(ev[1])
                if session is not None and session.analyzer is not None:
                    session.analyzer.on_core_output(ev[2], ev[3], ev[4])
            elif kind == _GAP:
                session = sessions.get(ev[1])
                if session is not None:
                    session.gap(ev[2], ev[3], ev[4])
                    # (a gap detaches a session: the hooks have it in order; attach again)
                    self._attach(ev[1], session)
            elif kind == _RECORD:
                record = ev[1]
                if self.sockets is not None:
                    self.sockets.annotate(record)
                self.on_record(record)
            elif kind == _OPEN:
                _, h, ver, ip0, port0, ip1, port1, cid, community_id = ev
                ref = self.refs[h] = ConnRef(cid)
                assert self.l7 is not None  # (the core sends sessions only with L7 on)
                sessions[h] = self.l7.session((ip0, ip1), (port0, port1), ref, community_id)
                ends = canonical_ends((ip0, port0), (ip1, port1))
                self.ends_of[h] = (ends, ref)
                self.by_ends[ends] = (ref, community_id)
            elif kind == _CLOSE:
                _, h, ts, cid = ev
                session = sessions.pop(h, None)
                ref = self.refs.pop(h, None)
                if session is not None and ref is not None:
                    ref.cid = cid
                    session.close(ts)
                entry = self.ends_of.pop(h, None)
                if entry is not None:
                    ends, ref = entry
                    ref.cid = cid  # (also when its session was given up on)
                    if self.by_ends.get(ends, (None,))[0] is ref:  # not a newer connection of the same ends
                        del self.by_ends[ends]
                        if self.plaintext is not None:
                            self.plaintext.close_connection(ends, ts)
            elif kind == _TICK:
                session = sessions.get(ev[1])
                if session is not None:
                    session.tick(ev[2])
            elif kind == _ID:
                entry = self.ends_of.get(ev[1])
                if entry is not None:  # the same ConnRef as in self.refs
                    entry[1].cid = ev[2]

    def _attach(self, handle: int, session: L7Session) -> None:
        """Let the core hand this session's data and ticks to its analyser's compiled core
        itself, if it has one (HTTP/1): no Python ``bytes`` or call per segment."""
        analyzer = session.analyzer
        if analyzer is not None and not session.done:
            core = analyzer.direct_core()
            if core is not None:
                self._core.l7_attach(handle, core)

    def _attach_sessions(self) -> None:
        self._attach_all = False
        for handle, session in self.sessions.items():
            self._attach(handle, session)

    def set_community_id_seed(self, seed: int) -> None:
        """Seed of the records' Community ID from now on (a restored engine takes its
        worker's setting, not the checkpoint's)."""
        self.community_id_seed = self._core.community_id_seed = seed

    # --- checkpoints ------------------------------------------------------------------------

    def _state_prepare(self) -> None:
        self._core_state = self._core.snapshot()

    def _state_restored(self) -> None:
        if not hasattr(self, "by_ends"):  # a checkpoint from before plaintext joins
            self.by_ends, self.ends_of, self.plaintext = {}, {}, None
        try:
            self._core = TcpTracker.restore(self._core_state)
        except ValueError as exc:
            raise StateError(f"connection tracker: {exc}") from None
        self._core.community_id_seed = self.community_id_seed
        self._core_state = b""
        self._attach_all = True
