"""The packet worker: consume ``wire.packets``, ``wire.sockets``, ``wire.drops`` and
``wire.tls-plaintext`` in a consumer group,
analyse them (:class:`~.packet_pipeline.PacketPipeline`), and checkpoint each partition's
state with the input offsets it covers, so that partitions can move between workers
without losing or splitting a connection.

For each batch of messages of the partitions this worker owns:
    hand each to the engine of its (source, partition);
every ``checkpoint_interval_s`` of wall time, and whenever a partition is taken away:
    wait until the output of what was read is delivered,
    write the partition's state and offsets to wire.checkpoints (acks=all),
    then commit the offsets;
whenever a partition is assigned:
    restore its newest checkpoint and read on from the offsets it covers.

A plain confluent-kafka group consumer rather than a Faust agent: a checkpoint must be
written *before* a partition is given up and the offsets must be those of the state, which
needs the consumer's rebalance callbacks and its commits in our hands. The ``range``
assignor gives one worker partition N of all four topics (co-partitioned: a connection's
socket events, kernel drops and TLS plaintext are joined to its packets).

Guarantee (docs/checkpoints.md): a partition handed over cleanly (a worker joins, leaves,
is rolled) loses and repeats nothing; after a crash, the new owner repeats what was
processed since the last checkpoint, and what it emits again is identical (same key,
same value), since the engines are deterministic and start from the same state.

**Static assignment** (``assignment=``; ``wirestream process --assign``): the workers of
one ``analyze`` or ``capture`` run are given their partitions, and read them from the
offsets where the run's input begins, without a group. A group join costs seconds (about
half the session timeout on the embedded broker), which is most of a small capture's
run. Such a worker writes no checkpoints and commits nothing: nobody would read them. If
it dies, its partitions are not taken over; the run fails as a whole
(``Runtime.dead_worker`` notices the exit) and is run again.

**Packets by pipe** (``packets_pipe=``; ``process --packets-from-stdin``): the workers of
an ``analyze`` on its own embedded broker read their ``wire.packets`` messages from a pipe
(wirestream/packet_pipe.py) instead of the broker, which would keep them only for the
run; the same messages, handled the same way. **Records by pipe** (``records_pipe=``;
``process --records-to-fd``): their output records and reports go back to the command
the same way (wirestream/record_pipe.py); ``wire.observations`` still goes to the broker.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from wirestream.broker import consume_available
from wirestream.codec import AvroCodec
from wirestream.errors import WirestreamError
from wirestream.kafka import consumer_config, group_consumer_config
from wirestream.kafka_security import raise_if_fatal
from wirestream.topics import (
    ALERTS,
    CONNECTIONS,
    DNS,
    DROPS,
    FLOWS,
    MESSAGING,
    OBSERVATIONS,
    PACKETS,
    PACKETS_STAGE,
    QUERIES,
    SOCKETS,
    STATS,
    TLS,
    TLS_PLAINTEXT,
    TRANSACTIONS,
)

from .engine import EngineOptions
from .k8s_enrichment import Enricher
from .output import OutputPublisher

if TYPE_CHECKING:
    from wirestream.packet_pipe import PacketPipeReader
    from wirestream.record_pipe import RecordPipeWriter

    from .checkpoints import Checkpoint
from .packet_pipeline import PacketPipeline, handle_when_registry_answers, when_registry_answers

log = logging.getLogger(__name__)

#: co-partitioned: partition N of each holds the same connections (wirestream.kafka
#: ensure_process_topics checks their partition counts)
INPUT_TOPICS = (PACKETS, SOCKETS, DROPS, TLS_PLAINTEXT)
#: what a packet worker writes, each with its schema registered before any input is read
OUTPUT_SCHEMA_TOPICS = (CONNECTIONS, FLOWS, TRANSACTIONS, DNS, TLS, QUERIES, MESSAGING, ALERTS, OBSERVATIONS,
                        STATS)
#: Messages taken per consume call.
CONSUME_BATCH = 16
#: What the worker's consumer fetches ahead of it, at most (librdkafka's
#: ``queued.max.messages.kbytes``; its default, 64 MB, was held by every worker): ~11
#: packet batches of 1.4 MB, 0.2 s of a worker's work, with a fetch waiting 50 ms at
#: most. The bench's steady state: 274-283 -> 213-217 MB peak per worker, the same CPU.
PREFETCH_KBYTES = 16 * 1024
#: How both of the worker's consumers (group, static) fetch its input.
_INPUT_FETCH = {"fetch.wait.max.ms": 50, "queued.max.messages.kbytes": PREFETCH_KBYTES}
#: The pause after a periodic checkpoint is at least this many times what it took.
MIN_PAUSE_FACTOR = 9


@dataclass(frozen=True)
class WorkerOptions:
    """How a packet worker checkpoints (``wirestream process`` options)."""

    #: write each changed partition's checkpoint this often (wall time); 0: only when a
    #: partition is given up (rebalance, stop)
    checkpoint_interval_s: float = 5.0
    #: restore checkpoints on assignment (False: start each partition empty, as before
    #: checkpoints existed; for comparison only)
    restore: bool = True
    #: a member that stops heartbeating loses its partitions after this long
    session_timeout_s: float = 10.0
    #: Stop without a final checkpoint if the output cannot be delivered within this long
    #: at shutdown (the next owner then repeats from the previous checkpoint).
    shutdown_grace_s: float = 30.0
    #: One try at reading a partition's newest checkpoint on assignment; while the broker
    #: is away the worker tries again (and gives up only when told to stop).
    checkpoint_read_timeout_s: float = 30.0


class _StoppedWaitingForCheckpoint(Exception):
    """Told to stop while an assigned partition's checkpoint could not be read."""


#: partition -> input topic -> the offset to start at (a topic not named: the beginning)
Assignment = dict[int, dict[str, int]]


class PacketWorker:
    """One member of the packet workers' consumer group, or (``assignment``) a worker of
    its own given partitions, in no group."""

    def __init__(self, bootstrap: str, registry_url: str, group: str, options: EngineOptions,
                 worker: WorkerOptions | None = None, source_prefix: str = "",
                 enricher: Enricher | None = None, assignment: Assignment | None = None,
                 codec: AvroCodec | None = None, packets_pipe: PacketPipeReader | None = None,
                 records_pipe: RecordPipeWriter | None = None) -> None:
        """``packets_pipe``: with an ``assignment``, the ``wire.packets`` messages come
        from this pipe's reader instead of the broker; ``records_pipe``: the output
        records and reports go to the command that started the worker by this pipe
        (see the module's docstring)."""
        if (packets_pipe is not None or records_pipe is not None) and assignment is None:
            raise ValueError("packets and records by pipe are for statically assigned workers")
        self.packets_pipe = packets_pipe
        self.bootstrap = bootstrap
        self.group = group
        self.assignment = assignment
        worker = worker or WorkerOptions()
        if assignment is not None:
            # No checkpoints: see the module's docstring (static assignment).
            worker = dataclasses.replace(worker, checkpoint_interval_s=0.0, restore=False)
        self.worker = worker
        self.codec = codec or AvroCodec(registry_url)
        # Output is never dropped for an unreachable broker: records wait in the client
        # (bounded by its queue) until delivered; a checkpoint waits for them.
        self.publisher = OutputPublisher(bootstrap, self.codec, PACKETS_STAGE, records_pipe,
                                         **{"message.timeout.ms": 0})
        self.pipeline = PacketPipeline(self.codec, self.publisher, options, source_prefix=source_prefix,
                                       enricher=enricher)
        # (imported here: checkpoints need fastavro, which a statically assigned worker,
        # started for one analyze run, does not import at all)
        from .checkpoints import CheckpointStore

        self.store = CheckpointStore(bootstrap, group) if assignment is None else None
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        #: partition -> input topic -> next offset to process (what a checkpoint covers)
        self.positions: dict[int, dict[str, int]] = {}
        #: partition -> sequence of its newest checkpoint
        self.sequences: dict[int, int] = {}
        self.dirty: set[int] = set()  # partitions with input processed since their checkpoint
        # partition -> (checkpoint sequence, offsets, engines, unreported drops, drop join) of
        # partitions revoked cleanly by the last rebalance, in case they are assigned to us again
        self._parked: dict[int, tuple[int, dict[str, int], dict[tuple[str, int], Any], Counter[str], Any]] = {}
        self.counters: Counter[str] = Counter()
        self._reported: Counter[str] = Counter()
        self._stopping: Callable[[], bool] = lambda: False
        self._consumer: Any = None  # a Consumer, or a PacketPipeReader

    # --- the loop ----------------------------------------------------------------------------

    def run(self, stopping: Callable[[], bool]) -> None:
        """Consume until ``stopping()`` says so; then checkpoint every owned partition,
        commit, and leave the group (its partitions go to the others at once)."""
        self._stopping = stopping
        if not self._register_output_schemas():
            return
        if self.assignment is None:
            consumer = self._consumer = self._group_consumer()
        else:
            # a static assignment owns its partitions from the start (no rebalance)
            self.positions.update({part: {} for part in self.assignment})
            if self.packets_pipe is not None:
                consumer = self._consumer = self._pipe_consumer(self.assignment, self.packets_pipe)
            else:
                consumer = self._consumer = self._static_consumer(self.assignment)
        handlers = {PACKETS: self.pipeline.handle, SOCKETS: self.pipeline.handle_socket_event,
                    DROPS: self.pipeline.handle_drop, TLS_PLAINTEXT: self.pipeline.handle_tls_plaintext}
        next_checkpoint = time.monotonic() + self.worker.checkpoint_interval_s
        try:
            while not stopping():
                # A few messages per call (each is a batch of up to ~1000 packets): the
                # checkpoint clock and the rebalance callbacks are served between calls.
                for msg in consume_available(consumer, CONSUME_BATCH, 0.1):
                    if msg.error() is not None:
                        raise_if_fatal(msg.error(), "packet worker reading its partitions")
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("consumer: %s", msg.error().str())
                        continue
                    topic, part = msg.topic(), msg.partition()
                    positions = self.positions.get(part)
                    if positions is None:
                        continue  # not ours (any more): a rebalance is under way
                    if not handle_when_registry_answers(handlers[topic], part, msg.value(),
                                                        stopping=stopping, waits=self.counters):
                        break  # stopping while the registry is away: this message was not processed
                    positions[topic] = msg.offset() + 1
                    self.dirty.add(part)
                self.publisher.poll()
                interval = self.worker.checkpoint_interval_s
                if interval and time.monotonic() >= next_checkpoint:
                    started = time.monotonic()
                    self.checkpoint(sorted(self.dirty))
                    self.publish_report()
                    # A pause of at least 9x the checkpoint's own time: a big state (tens of
                    # thousands of open connections take seconds to encode) costs at most
                    # ~10 % of the worker's time, whatever the interval asked for.
                    took = time.monotonic() - started
                    next_checkpoint = time.monotonic() + max(interval, MIN_PAUSE_FACTOR * took)
            if self.store is not None:
                self.checkpoint(sorted(self.dirty), shutting_down=True)
            self.publish_report()
        finally:
            # close() leaves the group: the revoke callback runs (nothing left to write)
            consumer.close()
            self._consumer = None
            self.publisher.flush(5)
            if self.store is not None:
                self.store.close()

    def _group_consumer(self) -> Consumer:
        session_ms = int(self.worker.session_timeout_s * 1000)
        consumer = Consumer(group_consumer_config(
            self.bootstrap, self.group, from_beginning=True, **{
                # partition N of every input topic to the same member (co-partitioned)
                "partition.assignment.strategy": "range",
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(500, session_ms // 5),
                # a registry outage may hold one message for long; the group must not
                # take the partitions away meanwhile
                "max.poll.interval.ms": 600_000,
                **_INPUT_FETCH,
            }))
        consumer.subscribe(list(INPUT_TOPICS), on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        return consumer

    def _static_consumer(self, assignment: Assignment) -> Consumer:
        """Partition N of every input topic (co-partitioned), from the given offsets."""
        consumer = Consumer({**consumer_config(self.bootstrap), **_INPUT_FETCH})
        tps = [TopicPartition(topic, part, offsets.get(topic, OFFSET_BEGINNING))
               for part, offsets in sorted(assignment.items()) for topic in INPUT_TOPICS]
        consumer.assign(tps)
        log.info("assigned partitions %s (static: no group, no checkpoints)", sorted(assignment))
        return consumer

    def _pipe_consumer(self, assignment: Assignment, pipe: PacketPipeReader) -> PacketPipeReader:
        """The packet batches of the assigned partitions, from a pipe (capture files: no
        socket events, kernel drops or TLS plaintext to read beside them)."""
        log.info("assigned partitions %s (static, packets by pipe)", sorted(assignment))
        return pipe

    def _register_output_schemas(self) -> bool:
        """Make every output topic's encoder before reading any input, waiting while the
        schema registry is away: a record must never be half-emitted because its schema
        could not be registered in the middle of a batch. False if told to stop first."""
        return all(when_registry_answers(partial(self.codec.encoders.__getitem__, topic), f"registering {topic}",
                                         stopping=self._stopping, waits=self.counters)
                   for topic in OUTPUT_SCHEMA_TOPICS)

    # --- checkpoints -------------------------------------------------------------------------

    def checkpoint(self, partitions: list[int], shutting_down: bool = False) -> list[int]:
        """Write the checkpoints of ``partitions``, then commit their offsets; return the
        partitions done. A partition whose output or checkpoint cannot be delivered is not
        committed (it is tried again at the next checkpoint)."""
        if not partitions:
            return []
        if not self._wait_for_output(shutting_down):
            return []
        done = []
        for part in partitions:
            try:
                self._write_checkpoint(part)
            except (WirestreamError, KafkaException) as exc:  # CheckpointError, StateError
                self.counters["checkpoint_failures"] += 1
                log.warning("checkpoint of partition %d not written (%s): its offsets are not committed", part, exc)
                continue
            done.append(part)
            self.dirty.discard(part)
        self._commit(done)
        return done

    def _wait_for_output(self, shutting_down: bool) -> bool:
        """Wait until every output record of what was processed is delivered: a checkpoint
        that covers input whose records are lost would make the loss permanent."""
        started = time.monotonic()
        while True:
            left = self.publisher.wait_delivered(1.0)
            if not left:
                return True
            self.counters["broker_waits"] += 1
            waited = time.monotonic() - started
            log.warning("waiting for the broker at %s: %d output records undelivered after %.0f s",
                        self.bootstrap, left, waited)
            if shutting_down and waited > self.worker.shutdown_grace_s:
                log.warning("stopping without a checkpoint: the next owner of these partitions "
                            "repeats them from the previous one")
                return False
            if self._stopping() and not shutting_down and waited > self.worker.shutdown_grace_s:
                return False

    def _write_checkpoint(self, part: int) -> None:
        started = time.perf_counter()
        from .checkpoints import Checkpoint
        from .state_codec import STATE_FORMAT_VERSION

        engines = self.pipeline.partition_engines(part)
        state = self.pipeline.snapshot_partition(part)  # its engines and kernel drops
        sequence = self.sequences.get(part, 0) + 1
        assert self.store is not None, "checkpoints are written in a group only"
        size = self.store.write(Checkpoint(
            group=self.group, partition=part, offsets=dict(self.positions.get(part, {})),
            state=state, state_format_version=STATE_FORMAT_VERSION, sequence=sequence,
            sources=sorted(e.source_id for e in engines),
            open_connections=sum(e.open_connections for e in engines),
            unreported_drops=dict(self.pipeline.dropped.get(part, {}))))
        self.sequences[part] = sequence
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.counters["checkpoints_written"] += 1
        self.counters["checkpoint_bytes"] += size
        self.counters["checkpoint_ms"] += round(elapsed_ms)
        log.info("checkpoint of partition %d: %d bytes, %d sources, %.1f ms", part, size, len(engines), elapsed_ms)

    def _commit(self, partitions: list[int]) -> None:
        """Commit what the checkpoints cover (for lag monitoring and tools; on assignment the
        checkpoint's own offsets are what counts)."""
        offsets = [TopicPartition(t, p, off) for p in partitions
                   for t, off in self.positions.get(p, {}).items()]
        if not offsets or self._consumer is None:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.info("offset commit failed (%s); the checkpoint holds them", exc)

    # --- rebalances --------------------------------------------------------------------------

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken away (another worker joined or left, or we stop): write their
        checkpoints first, so that the next owner starts where we stopped."""
        parts = sorted({tp.partition for tp in partitions} & set(self.positions))
        log.info("partitions %s revoked: writing their checkpoints", parts)
        self.checkpoint([p for p in parts if p in self.dirty], shutting_down=True)
        self._parked.clear()
        for p in parts:
            if p not in self.dirty and p in self.sequences:
                # Its state is in the checkpoint just written: kept in memory, in case the
                # partition comes straight back to us (an eager rebalance revokes them all).
                self._parked[p] = (self.sequences[p], dict(self.positions[p]), *self.pipeline.take_partition(p))
            self._forget(p)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions lost without a revoke (our session expired): another worker may
        already own them and have written newer checkpoints. Write nothing; forget."""
        self.counters["partitions_lost"] += len({tp.partition for tp in partitions})
        for p in sorted({tp.partition for tp in partitions} & set(self.positions)):
            self._forget(p)

    def _forget(self, part: int) -> None:
        self.pipeline.forget_partition(part)
        self.positions.pop(part, None)
        self.sequences.pop(part, None)
        self.dirty.discard(part)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions given to us: restore each one's newest checkpoint, and read on from the
        offsets it covers (no checkpoint: from the committed offsets, or the beginning)."""
        parked, self._parked = self._parked, {}
        from_memory: set[int] = set()
        abandoned: set[int] = set()
        for part in sorted({tp.partition for tp in partitions}):
            # A partition whose checkpoint was not read is not ours to process: left out of
            # the assignment (stopping, this worker reads nothing more; the group gives it
            # to another). Once one is, the rest are not tried.
            if abandoned:
                abandoned.add(part)
                continue
            read_started = time.perf_counter()
            try:
                cp = self._latest(part) if self.worker.restore else None
            except _StoppedWaitingForCheckpoint:
                abandoned.add(part)
                continue
            self.positions[part] = {}
            self.counters["checkpoint_read_ms"] += round((time.perf_counter() - read_started) * 1000)
            if cp is None:
                continue
            kept = parked.get(part)
            if kept is not None and kept[0] == cp.sequence and kept[1] == cp.offsets and cp.writer == self.instance:
                # Back to us, and nobody wrote a checkpoint since ours: the engines we kept
                # are that checkpoint's state (no need to decode it).
                self.pipeline.put_partition(part, *kept[2:])
                from_memory.add(part)
                self.counters["restores_from_memory"] += 1
                self.positions[part] = dict(cp.offsets)
                self.sequences[part] = cp.sequence
                continue
            try:
                started = time.perf_counter()
                self.pipeline.restore_partition(part, cp.state)
                self.counters["restores"] += 1
                self.counters["restore_ms"] += round((time.perf_counter() - started) * 1000)
            except WirestreamError as exc:  # StateError: another version's, or damaged
                self.counters["checkpoint_unreadable"] += 1
                log.error("partition %d: checkpoint %d by %s cannot be restored (%s); its connections "
                          "in progress start anew", part, cp.sequence, cp.writer, exc)
                self.pipeline.forget_partition(part)
            self.pipeline.dropped[part] = Counter(cp.unreported_drops)
            self.positions[part] = dict(cp.offsets)
            self.sequences[part] = cp.sequence
        log.info("assigned partitions %s (%d restored from checkpoints, %d of them kept in memory)",
                 sorted(self.positions), sum(1 for p in self.positions if p in self.sequences),
                 len(from_memory))
        if abandoned:
            log.warning("partitions %s left unassigned: told to stop while their checkpoints could not be read",
                        sorted(abandoned))
            partitions = [tp for tp in partitions if tp.partition not in abandoned]
        for tp in partitions:
            off = self.positions[tp.partition].get(tp.topic)
            tp.offset = off if off is not None else OFFSET_INVALID  # invalid: the committed one
        # Assigned here, with the offsets set: the client would otherwise assign the list
        # as it was before this callback.
        consumer.assign(partitions)

    def _latest(self, part: int) -> Checkpoint | None:
        from .checkpoints import CheckpointError

        assert self.store is not None, "checkpoints are read in a group only"
        delay = 0.5
        while True:
            try:
                return self.store.latest(part, timeout=self.worker.checkpoint_read_timeout_s)
            except CheckpointError as exc:
                self.counters["checkpoint_unreadable"] += 1
                log.error("partition %d: newest checkpoint unusable (%s); starting it empty", part, exc)
                return None
            except KafkaException as exc:
                # The broker is away: starting without the state would split connections.
                self.counters["broker_waits"] += 1
                if self._stopping():
                    raise _StoppedWaitingForCheckpoint(part) from None
                log.warning("reading the checkpoint of partition %d: %s; retrying in %.1f s", part, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def publish_report(self) -> None:
        """The worker's own counters (checkpoints written, their bytes and time, restores,
        waits for the registry or the broker) on wire.stats, when they changed: a report
        that is not final, of source ``worker:<group>`` and partition -1, with the state
        held now (open connections, sources), and the kernel drops of the partitions held
        (``drops_joined``, ``drops_unjoined``: rows no connection claimed before they were
        old, ``drops_pending``: held, not joined yet; processors/drop_join.py)."""
        for name, value in self.pipeline.drop_counters().items():
            self.counters[name] = value  # the partitions' own totals (they move with them)
        if self.counters == self._reported:
            return
        held = list(self.pipeline.engines.values())
        counters = {**self.counters, "partitions": len(self.positions), "sources": len(held),
                    "open_connections": sum(e.open_connections for e in held)}
        self.publisher.publish_stats(source_id=f"worker:{self.group}", partition=-1, received=0,
                                     emitted={}, dropped={}, counters=counters, final=False)
        self._reported = Counter(self.counters)
