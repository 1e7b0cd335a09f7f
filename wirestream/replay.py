"""``wirestream replay``: reprocess a time range of ``wire.packets`` into fresh output.

For a backfill (a processor fixed, a new enrichment, a topic lost downstream): the
packets the producers published between ``--from`` and ``--to`` (Kafka message
timestamps, i.e. when they were published) are read again, partition by partition, by a
consumer of their own (no consumer group: the live processors' offsets are untouched),
and go through the same :class:`~wirestream.processors.packet_pipeline.PacketPipeline`
as in a worker (with ``wire.sockets`` joined and Kubernetes identities, when present).
The output goes to the usual topics.

Re-runs do not duplicate downstream: output keys are deterministic (a connection's id is
a hash of its endpoints and first packet's time, and L7 records carry their
connection's), and the values are the same as the first run's for the same packets, so a
sink that keeps the last value per key (compacted topics, upserts, ``sinks/`` with
dedupe) ends up with each record once. A source whose end marker falls inside the range
is finished as in a worker; one that the range cuts is finished at the end of the range
(its open connections as ``end_of_input``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from wirestream.codec import AvroCodec
from wirestream.kafka import consumer_config
from wirestream.kafka_security import raise_if_fatal
from wirestream.processors.engine import EngineOptions
from wirestream.processors.k8s_enrichment import Enricher, IdentityFeed, IdentityIndex
from wirestream.processors.l7.base import L7Options
from wirestream.processors.output import OutputPublisher
from wirestream.processors.packet_pipeline import PacketPipeline, handle_when_registry_answers
from wirestream.reader import partitions_of
from wirestream.topics import PACKETS, REPLAY_TOPICS, SOCKETS

STAGE = "replay"


@dataclass
class ReplayRun:
    messages: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    emitted: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0


def offset_range(consumer: Consumer, tp: TopicPartition, from_ms: int | None, to_ms: int | None) -> tuple[int, int]:
    """[start, end) offsets of a partition's messages published in [from_ms, to_ms)."""
    low, high = consumer.get_watermark_offsets(tp, timeout=10)

    def at(ms: int | None, default: int) -> int:
        if ms is None:
            return default
        (found,) = consumer.offsets_for_times([TopicPartition(tp.topic, tp.partition, ms)], timeout=10)
        return high if found.offset < 0 else found.offset  # -1: nothing at or after that time

    return max(low, at(from_ms, low)), min(high, at(to_ms, high))


def replay(bootstrap: str, registry: str, from_us: int | None = None, to_us: int | None = None,
           source_prefix: str = "", l7_options: L7Options | None = None,
           progress: Callable[[int, int], None] | None = None, community_id_seed: int = 0) -> ReplayRun:
    """Reprocess ``wire.packets`` (and ``wire.sockets``) published in [from_us, to_us).
    ``l7_options`` None: TCP analysis only (pass the live processors' options to get
    their records)."""
    started = time.monotonic()
    codec = AvroCodec(registry)
    publisher = OutputPublisher(bootstrap, codec, STAGE)
    index = IdentityIndex()
    feed = IdentityFeed(bootstrap, codec, index)  # Kubernetes identities, as the workers have them
    feed.start()
    pipeline = PacketPipeline(codec, publisher, EngineOptions(l7=l7_options, community_id_seed=community_id_seed), source_prefix=source_prefix,
                              enricher=Enricher(index))
    consumer = Consumer(consumer_config(bootstrap))
    run = ReplayRun()
    try:
        # Sockets first on each partition: a connection's socket events are then in before
        # its record is emitted, whatever the interleaving was live.
        ranges = {}
        for tp in partitions_of(bootstrap, REPLAY_TOPICS):
            ranges[(tp.topic, tp.partition)] = offset_range(
                consumer, tp, None if from_us is None else from_us // 1000, None if to_us is None else to_us // 1000)
        total = sum(end - start for start, end in ranges.values())
        handlers = {PACKETS: pipeline.handle, SOCKETS: pipeline.handle_socket_event}
        for topic in REPLAY_TOPICS:
            # where each partition of this topic has got to, until its end offset
            todo = {p: start for (t, p), (start, end) in ranges.items() if t == topic and start < end}
            consumer.assign([TopicPartition(topic, p, start) for p, start in todo.items()])
            idle = 0
            while todo and idle < 5:  # idle: offsets left empty at the end (compaction, aborts)
                msgs = consumer.consume(500, 1.0)
                idle = 0 if msgs else idle + 1
                for msg in msgs:
                    part = msg.partition()
                    if msg.error():
                        raise_if_fatal(msg.error(), f"replaying {topic}")
                        continue
                    if msg.topic() != topic or part not in todo:
                        continue
                    end = ranges[(topic, part)][1]
                    if msg.offset() >= end:
                        continue
                    # a registry outage makes the replay wait, not skip the batch
                    handle_when_registry_answers(handlers[topic], part, msg.value())
                    run.messages += 1
                    run.by_topic[topic] += 1
                    if msg.offset() + 1 >= end:
                        del todo[part]
                if progress is not None:
                    progress(run.messages, total)
        pipeline.finish_all()
        publisher.flush()
    finally:
        consumer.close()
        feed.stop()
    run.emitted = Counter(publisher.emitted)
    run.elapsed_s = time.monotonic() - started
    return run
