"""What a processor worker does with each ``wire.packets`` message, independent of Faust.

One :class:`PacketPipeline` per worker process. It decodes batches, feeds the per
partition/source analysers (TCP connections, and the L7 analysers that read their
reassembled payload and DNS datagrams), and
at an end-of-input marker flushes that partition's state and reports its counters on
``wire.stats``, which is how ``wirestream analyze`` knows a source has been processed.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from wirestream.codec import AvroCodec
from wirestream.errors import DecodeError, RegistryError
from wirestream.packet_block import PROTO_UDP, decode_batch
from wirestream.topics import CONNECTIONS, OBSERVATIONS, PACKETS_STAGE

from .connection_tracker import ConnectionTracker
from .k8s_enrichment import Enricher
from .l7.base import L7Options
from .l7.session import L7Dispatcher
from .observations import Observer
from .output import OutputPublisher
from .socket_join import SocketJoin

STAGE = PACKETS_STAGE
log = logging.getLogger(__name__)


class PacketPipeline:
    def __init__(
        self,
        codec: AvroCodec,
        publisher: OutputPublisher,
        idle_timeout_us: int = 300_000_000,
        close_linger_us: int = 10_000_000,
        interim_us: int = 0,
        source_prefix: str = "",
        l7_options: L7Options | None = None,
        packet_partitions: int = 0,
        observation_partitions: int = 0,
        enricher: Enricher | None = None,
    ) -> None:
        """``observation_partitions`` > 0: also send ``wire.observations`` for the
        per-service windows (``packet_partitions``: how many ``wire.packets`` has)."""
        self.codec = codec
        self.publisher = publisher
        self.idle_timeout_us = idle_timeout_us
        self.close_linger_us = close_linger_us
        self.interim_us = interim_us
        # Only sources whose id starts with this (analyze's own workers on a shared Kafka).
        self.source_prefix = source_prefix
        self.l7_options = l7_options  # None: no L7 analysis
        self.packet_partitions = packet_partitions
        self.observation_partitions = observation_partitions
        self.enricher = enricher  # Kubernetes identities (None: records go out without)
        self._trackers: dict[tuple[str, int], ConnectionTracker] = {}
        self._observers: dict[tuple[str, int], Observer] = {}
        self._received: Counter[tuple[str, int]] = Counter()
        # Live eBPF sources also publish wire.sockets: a partition of such a source is
        # finished when both topics' end-of-input markers are in, in either order.
        self._socket_ends: dict[tuple[str, int], dict[str, Any]] = {}
        self._waiting_for_sockets: dict[tuple[str, int], dict[str, Any]] = {}
        # Messages this worker could not use, by reason, that belong to no (source,
        # partition) yet (an undecodable batch names no source). Each is reported once, in
        # the next final report this worker sends, then forgotten: consumers of wire.stats
        # sum the reports, so a count carried into every report would be multiplied.
        self.dropped: Counter[str] = Counter()

    def _tracker(self, source_id: str, partition: int) -> ConnectionTracker:
        key = (source_id, partition)
        tracker = self._trackers.get(key)
        if tracker is None:
            publish = self.publisher.emit
            enrich = self.enricher.enrich if self.enricher is not None else None
            observe = None
            if self.observation_partitions:
                send = self.publisher.send_to_partition
                observer = self._observers[key] = Observer(
                    lambda part, batch: send(OBSERVATIONS, part, batch), source_id, partition,
                    self.packet_partitions, self.observation_partitions)
                observe = observer.observe

            def emit(topic: str, key: str | None, record: dict[str, Any]) -> None:
                if enrich is not None:
                    enrich(topic, record)  # Kubernetes identity: the windows key by workload
                if observe is not None:
                    observe(topic, record)  # the windows' view (findings ride on RecordWithFindings, never published)
                publish(topic, key, record)

            def on_record(record: dict[str, Any]) -> None:
                emit(CONNECTIONS, record["connection_id"], record)

            l7 = None
            if self.l7_options is not None:
                l7 = L7Dispatcher(emit, source_id, self.l7_options)
            tracker = self._trackers[key] = ConnectionTracker(
                on_record,
                source_id=source_id,
                idle_timeout_us=self.idle_timeout_us,
                close_linger_us=self.close_linger_us,
                interim_us=self.interim_us,
                l7=l7,
            )
        return tracker

    def handle(self, partition: int, value: bytes | None) -> None:
        """Process one ``wire.packets`` message. Never raises for bad input: counts it."""
        try:
            batch = self.codec.decode(value)
            headers, payloads = decode_batch(batch)
        except (DecodeError, ValueError) as exc:
            self.dropped["malformed_batch"] += 1
            log.warning("skipping a wire.packets message on partition %d: %s", partition, exc)
            return
        except RegistryError:
            self.dropped["registry_unavailable"] += 1
            return
        source_id = batch["source_id"]
        if not source_id.startswith(self.source_prefix):
            self.dropped["other_source"] += 1
            return
        tracker = self._tracker(source_id, partition)
        if tracker.l7 is not None:
            # Datagrams first: the tracker's periodic sweep (at the end of process) times
            # out unanswered DNS queries, and must not do so before it saw this batch's answers.
            tracker.l7.datagrams(headers[headers["proto"] == PROTO_UDP], payloads)
        tracker.process(headers, payloads)
        observer = self._observers.get((source_id, partition))
        if observer is not None:
            if len(headers):
                observer.advance(int(headers["ts_us"].max()))
            observer.flush()
        self._received[(source_id, partition)] += batch["count"]
        self.publisher.poll()
        if batch["end_of_input"]:
            key = (source_id, partition)
            if batch.get("socket_events") and key not in self._socket_ends:
                self._waiting_for_sockets[key] = batch
            else:
                self.end_of_input(source_id, partition, batch)

    def handle_socket_event(self, partition: int, value: bytes | None) -> None:
        """Process one ``wire.sockets`` message. Never raises for bad input: counts it."""
        try:
            event = self.codec.decode(value)
        except DecodeError as exc:
            self.dropped["malformed_socket_event"] += 1
            log.warning("skipping a wire.sockets message on partition %d: %s", partition, exc)
            return
        except RegistryError:
            self.dropped["registry_unavailable"] += 1
            return
        source_id = event["source_id"]
        if not source_id.startswith(self.source_prefix):
            self.dropped["other_source"] += 1
            return
        key = (source_id, partition)
        tracker = self._tracker(source_id, partition)
        if tracker.sockets is None:
            tracker.sockets = SocketJoin()
        if not event["end_of_input"]:
            tracker.sockets.add(event)
            return
        self._socket_ends[key] = event
        batch = self._waiting_for_sockets.pop(key, None)
        if batch is not None:
            self.end_of_input(source_id, partition, batch)

    def finish_all(self) -> None:
        """End every source still open, as its end marker would (a replay whose time range
        ends inside a source). A source waiting for its socket events' end marker ends with
        what it has."""
        for source_id, partition in list(self._trackers):
            batch = self._waiting_for_sockets.pop((source_id, partition), {"batches_before": -1})
            self.end_of_input(source_id, partition, batch)

    def end_of_input(self, source_id: str, partition: int, batch: dict[str, Any]) -> None:
        tracker = self._tracker(source_id, partition)
        del self._trackers[(source_id, partition)]  # this source is done on this partition
        tracker.flush()
        counters: Counter[str] = Counter(tracker.counters)
        observer = self._observers.pop((source_id, partition), None)
        if observer is not None:
            observer.flush(end_of_input=True)
            counters["observations"] = observer.observed
        counters["batches_expected"] = batch["batches_before"]
        dropped = +tracker.dropped  # without zero counts
        socket_end = self._socket_ends.pop((source_id, partition), None)
        if tracker.sockets is not None:
            counters.update(tracker.sockets.counters)
            counters["socket_events"] = tracker.sockets.events
            if socket_end is not None and socket_end["events_before"] != tracker.sockets.events:
                dropped["socket_events_missing"] += socket_end["events_before"] - tracker.sockets.events
        emitted = {CONNECTIONS: tracker.emitted}
        if tracker.l7 is not None:
            emitted.update(tracker.l7.emitted)
            for name, n in tracker.l7.stats.items():
                # Parse errors are input we could not use: named drop reasons.
                (dropped if "parse_error" in name else counters)[name] += n
        dropped.update(self.dropped)  # the worker's own drops, in this report only
        self.dropped.clear()
        self.publisher.publish_stats(
            source_id=source_id,
            partition=partition,
            received=self._received.pop((source_id, partition), 0),
            emitted=emitted,
            dropped=dict(dropped),
            counters=counters,
            final=True,
        )
