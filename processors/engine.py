"""The analysis of one (source, partition) of ``wire.packets``: an I/O-free engine.

An :class:`Engine` takes decoded packet batches (:meth:`Engine.feed`) and socket events
(:meth:`Engine.socket_event`) of one source on one input partition, and gives records to
a :class:`Sink`. It owns everything that is state:

- the TCP connection table (:class:`~.connection_tracker.ConnectionTracker`: the compiled
  core's tracker, with each connection's analysis), and each L7 connection's session
  (reassembly buffers and L7 parser);
- the UDP, ICMP and SCTP flow table (:class:`~.flows.FlowTracker`);
- the L7 dispatcher (pending DNS queries, L7 counters);
- the kernel socket events waiting for their connection (:class:`~.socket_join.SocketJoin`);
- a reference to its partition's kernel drops (:class:`~.drop_join.DropJoin`, shared
  with the partition's other engines, and in the same checkpoint);
- the observer that batches what the per-service windows need
  (:class:`~.observations.Observer`);
- its own bookkeeping: packets received, the end-of-input markers seen.

It reads no socket, writes no file and keeps no clock: the same input gives the same
records, which is what makes :meth:`snapshot` / :meth:`restore` (a checkpoint) and a
re-run after a crash give the same output (docs/checkpoints.md).

Every callback inside the engine is one of its bound methods, never a closure, so that
the state can be encoded (:mod:`.state_codec`); what is *not* state (the sink, the
options, the Kubernetes enricher, which a thread keeps up to date) is handed in again on
restore.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from wirestream.packet_block import PROTO_UDP
from wirestream.topics import (
    ALERTS,
    CONNECTIONS,
    DNS,
    FLOWS,
    MESSAGING,
    OBSERVATIONS,
    QUERIES,
    TLS,
    TRANSACTIONS,
)

from .connection_tracker import ConnectionTracker, Ends
from .drop_join import DropJoin
from .flows import FlowTracker
from .k8s_enrichment import Enricher
from .l7.base import L7Options
from .l7.session import L7Dispatcher
from .observations import Observer
from .socket_join import SocketJoin
from .tls_plaintext_join import PlaintextJoin, PlaintextRouter
from .tunnels import TunnelPaths


class Sink(Protocol):
    """Where an engine's records go (``processors.output.OutputPublisher`` is one)."""

    def emit(self, topic: str, key: str | None, record: dict[str, Any]) -> None: ...

    def send_to_partition(self, topic: str, partition: int, record: dict[str, Any]) -> None: ...


#: The record kinds that carry a ``tunnel`` list (schemas/*.avsc).
_TUNNEL_TOPICS = frozenset({CONNECTIONS, FLOWS, DNS, TLS, TRANSACTIONS, QUERIES, MESSAGING})
#: Fields set by enrichment only where it knows them: a record without them gets their
#: schema default, so that records leave the engine as they read back from Avro.
_ENRICHMENT_DEFAULTS = {
    topic: (("client_zone", None), ("server_zone", None), ("cross_zone", None))
    + ((("policy_verdict", None),) if topic in (CONNECTIONS, FLOWS) else ())
    # the socket join's (processors/socket_join.py), for records of sources without socket events
    + ((("client_syscalls", None), ("server_syscalls", None)) if topic == CONNECTIONS else ())
    for topic in _TUNNEL_TOPICS
}


@dataclass(frozen=True)
class EngineOptions:
    """How the engines of a worker analyse (``wirestream process`` options).

    One frozen object from the command line to every engine, instead of a chain of
    parameters; the worker passes it to its child processes as its fields."""

    #: a connection quiet this long (capture time) is emitted with state ``timeout``
    idle_timeout_us: int = 300_000_000
    #: a closed connection is emitted once quiet this long (late retransmissions, ACKs)
    close_linger_us: int = 10_000_000
    #: interim records for long connections every this often (0: none)
    interim_us: int = 0
    #: L7 analysis (None: TCP analysis only)
    l7: L7Options | None = field(default_factory=L7Options)
    #: partitions of wire.packets (the observations say which share of a source they are)
    packet_partitions: int = 0
    #: partitions of wire.observations; 0: send no observations (no per-service windows)
    observation_partitions: int = 0
    #: seed of the connection records' Community ID (the L7 records': ``l7``'s)
    community_id_seed: int = 0


@dataclass
class EngineReport:
    """What an engine's final ``wire.stats`` report says (see :meth:`Engine.finish`)."""

    received: int
    emitted: dict[str, int]
    dropped: Counter[str]
    counters: Counter[str]


class Engine:
    """The analysis of one source on one input partition."""

    def __init__(self, source_id: str, partition: int, options: EngineOptions, sink: Sink,
                 enricher: Enricher | None = None, drops: DropJoin | None = None) -> None:
        self.source_id = source_id
        self.partition = partition
        self.options = options
        self.sink = sink
        self.enricher = enricher  # Kubernetes identities (None: records go out without)
        # The kernel drops of this partition (wire.drops), shared by its engines: the
        # drops producer is a source of its own (None: records go out with drops {}).
        self.drops = drops
        self.observer: Observer | None = None
        if options.observation_partitions:
            self.observer = Observer(self._send_observations, source_id, partition,
                                     options.packet_partitions, options.observation_partitions)
        l7 = L7Dispatcher(self._emit, source_id, options.l7) if options.l7 is not None else None
        self.tracker = ConnectionTracker(
            self._emit_connection,
            source_id=source_id,
            idle_timeout_us=options.idle_timeout_us,
            close_linger_us=options.close_linger_us,
            interim_us=options.interim_us,
            l7=l7,
            community_id_seed=options.community_id_seed,
        )
        self.flows = FlowTracker(self._emit_flow, source_id, options.community_id_seed)
        self.tunnels = TunnelPaths()  # the outer path of overlay flows, for their records
        self.alerts_emitted = 0  # policy_violation alerts (the windows raise the others)
        self.received = 0  # packets, as the batches count them
        # The end-of-input markers: of wire.packets (its batch record) and, for a live
        # eBPF source, of wire.sockets. The engine is done when both are in, either first.
        self.packets_end: dict[str, Any] | None = None
        self.sockets_end: dict[str, Any] | None = None

    # --- the records' way out: enrich, observe, then publish --------------------------------

    def _emit(self, topic: str, key: str | None, record: dict[str, Any]) -> None:
        if topic in _TUNNEL_TOPICS:
            # Every record of these kinds has the list (empty: no tunnel), as it reads back
            # from Avro. A flow's last record (a final connection record, a flow record)
            # lets its path go; L7 records come before their connection's final one.
            if self.tunnels.paths:
                final = topic == FLOWS or (topic == CONNECTIONS and record["final"])
                record["tunnel"] = self.tunnels.path_of(record, final)
            else:
                record["tunnel"] = []
            for name, default in _ENRICHMENT_DEFAULTS[topic]:
                if name not in record:
                    record[name] = default
            if topic in (CONNECTIONS, FLOWS):
                if "policy_names" not in record:
                    record["policy_names"] = []
                # the kernel's drops of its 5-tuple (processors/drop_join.py), else {}
                if self.drops is not None:
                    self.drops.annotate("tcp" if topic == CONNECTIONS else record["transport"], record)
                elif "drops" not in record:
                    record["drops"] = {}
        alerts = ()
        if self.enricher is not None:
            # Kubernetes identity (the windows key by workload) and NetworkPolicy verdict;
            # traffic that got through although denied comes back as a policy_violation
            alerts = self.enricher.enrich(topic, record)
        if self.observer is not None:
            # Observe before publish: the windows' view is taken from the record as
            # published (findings ride on RecordWithFindings, never published).
            self.observer.observe(topic, record)
        self.sink.emit(topic, key, record)
        for alert in alerts:
            self.sink.emit(ALERTS, alert["service"], alert)
            self.alerts_emitted += 1

    def _emit_connection(self, record: dict[str, Any]) -> None:
        self._emit(CONNECTIONS, record["connection_id"], record)

    def _emit_flow(self, record: dict[str, Any]) -> None:
        self._emit(FLOWS, record["flow_id"], record)

    def _send_observations(self, partition: int, batch: dict[str, Any]) -> None:
        self.sink.send_to_partition(OBSERVATIONS, partition, batch)

    # --- input -------------------------------------------------------------------------------

    def feed(self, headers: np.ndarray, payloads: bytes, count: int | None = None,
             tunnel_of: bytes = b"", tunnel_paths: bytes = b"") -> None:
        """One batch of packets (``wirestream.packet_block`` headers and their payload blob);
        ``count``: how many packets the batch says it has (default: its headers);
        ``tunnel_of``/``tunnel_paths``: its tunnel table (empty: no packet was tunneled)."""
        tracker = self.tracker
        if tunnel_of:
            self.tunnels.observe(headers, tunnel_of, tunnel_paths)
        udp = headers[headers["proto"] == PROTO_UDP]
        if tracker.l7 is not None:
            # Datagrams first: the tracker's periodic sweep (at the end of process) times
            # out unanswered DNS queries, and must not do so before it saw this batch's answers.
            tracker.l7.datagrams(udp, payloads)
        self.flows.process(headers, payloads)  # the UDP, ICMP and SCTP rows
        tracker.process(headers, payloads)
        if self.observer is not None:
            if len(headers):
                self.observer.advance(int(headers["ts_us"].max()))
            self.observer.flush()
        self.received += len(headers) if count is None else count

    def socket_event(self, event: dict[str, Any]) -> None:
        """One kernel socket event of this source (``wire.sockets``), end marker included."""
        if self.tracker.sockets is None:
            self.tracker.sockets = SocketJoin()
        if event["end_of_input"]:
            self.sockets_end = event
        else:
            self.tracker.sockets.add(event)

    def tls_plaintext(self, chunk: dict[str, Any], ends: Ends) -> None:
        """A chunk of TLS plaintext (``wire.tls-plaintext``, uprobes) of a connection this
        engine's tracker has open (``ends``): analysed as its decrypted bytes would be
        (processors/tls_plaintext_join.py), its transactions marked ``tls: true``."""
        tracker = self.tracker
        if tracker.l7 is None:  # (the router hands chunks only to trackers with L7 on)
            return
        if tracker.plaintext is None:
            # through the L7 dispatcher, as the key-log path's records: source, identity
            # defaults and the emitted counts
            tracker.plaintext = PlaintextJoin(tracker.l7.emit, self.options.l7, tracker.connection_ref)
        tracker.plaintext.add(chunk)

    def end_of_packets(self, batch: dict[str, Any]) -> None:
        """The wire.packets end-of-input marker of this source and partition (a batch)."""
        self.packets_end = batch

    @property
    def complete(self) -> bool:
        """All input is in: the packets' end marker, and the socket events' if the source
        has any (a live eBPF source says so in its last batch)."""
        end = self.packets_end
        if end is None:
            return False
        return not end.get("socket_events") or self.sockets_end is not None

    # --- output ------------------------------------------------------------------------------

    def finish(self) -> EngineReport:
        """End of input: emit every connection and query still held; return the counters
        of the final report. The engine is spent afterwards."""
        tracker = self.tracker
        tracker.flush()
        self.flows.flush()
        counters: Counter[str] = Counter(tracker.counters)
        if self.flows.evicted:
            counters["udp_flows_evicted"] = self.flows.evicted
        if self.tunnels.evicted:
            counters["tunnel_paths_evicted"] = self.tunnels.evicted
        if self.tunnels.malformed:  # batches whose packets were analysed without their paths
            counters["malformed_tunnel_tables"] = self.tunnels.malformed
        if self.observer is not None:
            self.observer.flush(end_of_input=True)
            counters["observations"] = self.observer.observed
        end = self.packets_end or {"batches_before": -1}  # -1: ended without its marker
        counters["batches_expected"] = end["batches_before"]
        dropped = +tracker.dropped  # without zero counts
        if tracker.sockets is not None:
            counters.update(tracker.sockets.counters)
            counters["socket_events"] = tracker.sockets.events
            sent = self.sockets_end["events_before"] if self.sockets_end is not None else None
            if sent is not None and sent != tracker.sockets.events:
                dropped["socket_events_missing"] += sent - tracker.sockets.events
        emitted = {CONNECTIONS: tracker.emitted, FLOWS: self.flows.emitted}
        if self.alerts_emitted:
            emitted[ALERTS] = self.alerts_emitted
        if tracker.plaintext is not None:  # TLS plaintext from uprobes, analysed
            tracker.plaintext.close()
            for name, n in tracker.plaintext.stats.items():
                (dropped if "parse_error" in name else counters)[name] += n
        if tracker.l7 is not None:
            emitted.update(tracker.l7.emitted)
            for name, n in tracker.l7.stats.items():
                # Parse errors are input we could not use: named drop reasons.
                (dropped if "parse_error" in name else counters)[name] += n
        return EngineReport(self.received, emitted, dropped, counters)

    @property
    def open_connections(self) -> int:
        return self.tracker.open_connections

    # --- checkpoints -------------------------------------------------------------------------

    def _state_restored(self) -> None:
        # A checkpoint of the same format written before the UDP flow table existed
        # restores without one: its flows start from here (those of the restored
        # partition's past are not in it).
        if not hasattr(self, "flows"):
            self.flows = FlowTracker(self._emit_flow, self.source_id, self.options.community_id_seed)
        if not hasattr(self, "tunnels"):  # likewise, from before tunnel paths were kept
            self.tunnels = TunnelPaths()
        if not hasattr(self, "alerts_emitted"):  # and from before the engine raised alerts
            self.alerts_emitted = 0
        if not hasattr(self, "drops"):  # and from before drops were joined (the worker attaches one)
            self.drops = None

    def _externals(self) -> dict[str, object]:
        return _externals(self.options, self.sink, self.enricher)

    def snapshot(self) -> bytes:
        """The whole state, encoded (docs/checkpoints.md): every open connection with its
        analysis, unacknowledged and out-of-order segments, L7 parser state, pending DNS
        queries, socket events, observations not yet sent, counters."""
        from .state_codec import encode_state

        return encode_state(self, self._externals())

    @classmethod
    def restore(cls, data: bytes, options: EngineOptions, sink: Sink,
                enricher: Enricher | None = None) -> Engine:
        """The engine a :meth:`snapshot` was taken of, now writing to ``sink``.

        ``options`` must be those of the engine that was snapshotted (the worker's
        options; a checkpoint records nothing of them). Raises ``StateError`` for bytes
        that are not such a snapshot (another version's included)."""
        from .state_codec import StateError, decode_state

        engine = decode_state(data, _externals(options, sink, enricher))
        if not isinstance(engine, cls):
            raise StateError(f"a checkpoint holds a {type(engine).__name__}, not an engine")
        engine.tracker.set_community_id_seed(options.community_id_seed)  # a setting, not state
        engine.flows.set_community_id_seed(options.community_id_seed)
        return engine


def snapshot_engines(engines: list[Engine], drops: DropJoin | None = None,
                     plaintext: PlaintextRouter | None = None) -> bytes:
    """The state of several engines (one input partition's sources) as one snapshot;
    they share a sink, options and enricher. ``drops``: the partition's drop join, after
    the engines (also when no engine holds it yet: drops may come before any packet);
    ``plaintext``: its TLS plaintext chunks waiting for their connection, last."""
    from .state_codec import encode_state

    tail = [x for x in (drops, plaintext) if x is not None]
    if not engines:
        return encode_state(tail, {})
    return encode_state(list(engines) + tail, engines[0]._externals())


def restore_engines(data: bytes, options: EngineOptions, sink: Sink,
                    enricher: Enricher | None = None) -> list[Engine]:
    """The engines of a :func:`snapshot_engines`, writing to ``sink``."""
    return restore_partition_state(data, options, sink, enricher)[0]


def restore_partition_state(data: bytes, options: EngineOptions, sink: Sink, enricher: Enricher | None = None
                            ) -> tuple[list[Engine], DropJoin | None, PlaintextRouter | None]:
    """The engines, the drop join and the plaintext router (None: the snapshot has none)
    of a :func:`snapshot_engines`, writing to ``sink``."""
    from .state_codec import StateError, decode_state

    items = decode_state(data, _externals(options, sink, enricher))
    if not isinstance(items, list):
        raise StateError("a checkpoint holds something other than a list of engines")
    plaintext = items.pop() if items and isinstance(items[-1], PlaintextRouter) else None
    drops = items.pop() if items and isinstance(items[-1], DropJoin) else None
    if not all(isinstance(e, Engine) for e in items):
        raise StateError("a checkpoint holds something other than a list of engines")
    engines: list[Engine] = items
    for engine in engines:
        engine.tracker.set_community_id_seed(options.community_id_seed)  # a setting, not state
        engine.flows.set_community_id_seed(options.community_id_seed)
    return engines, drops, plaintext


def _externals(options: EngineOptions, sink: Sink, enricher: Enricher | None) -> dict[str, object]:
    """What an engine refers to that is not its state: handed in again on restore, by name."""
    externals: dict[str, object] = {"sink": sink, "options": options}
    if options.l7 is not None:
        externals["l7_options"] = options.l7
    if enricher is not None:
        externals["enricher"] = enricher
    return externals
