"""Checkpoints: a packet partition's state and the input offsets it covers, in Kafka.

A packet worker (``processors.packet_worker``) writes, for each partition it owns, a
:class:`Checkpoint` to the compacted topic ``wire.checkpoints``: the encoded engines of
the partition (``processors.engine``) and, for ``wire.packets`` and ``wire.sockets``, the
offset of the first message *not* in that state. A worker that is assigned the partition
restores the state and reads on from those offsets, so nothing is lost or counted twice
(docs/checkpoints.md).

- Key ``<group>|<partition>``, written to partition ``partition`` of ``wire.checkpoints``
  (modulo its partition count), so finding a partition's newest checkpoint reads one
  partition of the topic, from its end backwards (:meth:`CheckpointStore.latest`).
- The value is the Avro record ``schemas/checkpoint.avsc``, without the schema registry:
  a checkpoint must be readable before anything else works, and it names its version.
- :meth:`CheckpointStore.write` returns only when every in-sync replica has it
  (``acks=all``); the worker commits the consumer offsets only after that.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from functools import cache
from io import BytesIO
from typing import Any

import fastavro
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from wirestream.schemas import schema_dict

from wirestream.errors import WirestreamError
from wirestream.kafka import consumer_config, producer_config
from wirestream.kafka_security import raise_if_fatal
from wirestream.topics import CHECKPOINTS

log = logging.getLogger(__name__)

#: Version of the checkpoint record (``schemas/checkpoint.avsc``); see docs/checkpoints.md.
FORMAT_VERSION = 1
#: Largest checkpoint written, before compression (~40,000 open connections).
MAX_CHECKPOINT_BYTES = 256 * 1024 * 1024
#: Largest checkpoint record the topic takes, compressed (its ``max.message.bytes``).
MAX_RECORD_BYTES = 64 * 1024 * 1024


class CheckpointError(WirestreamError):
    """A checkpoint could not be written, or what was read is not a checkpoint we can use."""


@dataclass
class Checkpoint:
    group: str
    partition: int
    #: input topic -> offset of the first message not in ``state``
    offsets: dict[str, int]
    state: bytes
    state_format_version: int
    sequence: int = 0
    sources: list[str] = field(default_factory=list)
    open_connections: int = 0
    unreported_drops: dict[str, int] = field(default_factory=dict)
    writer: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    written_ts_us: int = field(default_factory=lambda: time.time_ns() // 1000)


@cache
def _schema() -> Any:
    return fastavro.parse_schema(schema_dict("checkpoint"))


def encode_checkpoint(cp: Checkpoint) -> bytes:
    out = BytesIO()
    fastavro.schemaless_writer(out, _schema(), {
        "format_version": FORMAT_VERSION, "group": cp.group, "partition": cp.partition,
        "offsets": cp.offsets, "sequence": cp.sequence, "writer": cp.writer,
        "written_ts_us": cp.written_ts_us, "unreported_drops": cp.unreported_drops,
        "state_format_version": cp.state_format_version, "sources": cp.sources,
        "open_connections": cp.open_connections, "state": cp.state,
    })
    return out.getvalue()


def decode_checkpoint(data: bytes) -> Checkpoint:
    """Raises CheckpointError for bytes that are not a checkpoint of this version."""
    # The version is the record's first field (an Avro int: zigzag varint); read it alone
    # first, so that another version's bytes are named as such rather than misread.
    if not data:
        raise CheckpointError("an empty checkpoint")
    try:
        version = fastavro.schemaless_reader(BytesIO(data), {"type": "int"})
    except Exception as exc:  # noqa: BLE001 - fastavro raises several kinds on garbage
        raise CheckpointError(f"not a checkpoint ({type(exc).__name__})") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {version}; this wirestream reads {FORMAT_VERSION}")
    try:
        r = fastavro.schemaless_reader(BytesIO(data), _schema())
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"a damaged checkpoint ({type(exc).__name__}: {exc})") from None
    return Checkpoint(group=r["group"], partition=r["partition"], offsets=dict(r["offsets"]),
                      state=r["state"], state_format_version=r["state_format_version"],
                      sequence=r["sequence"], sources=list(r["sources"]),
                      open_connections=r["open_connections"], unreported_drops=dict(r["unreported_drops"]),
                      writer=r["writer"], written_ts_us=r["written_ts_us"])


class CheckpointStore:
    """Write and find the checkpoints of one consumer group's packet partitions."""

    def __init__(self, bootstrap: str, group: str, topic: str = CHECKPOINTS,
                 producer_extra: dict[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.topic = topic
        self._producer = Producer(producer_config(bootstrap, **{
            "acks": "all",  # every in-sync replica, before any offset is committed
            # zstd: a connection-heavy state shrinks ~5x (HTTP bodies held less).
            "compression.type": "zstd",
            "linger.ms": 0,
            "message.max.bytes": MAX_CHECKPOINT_BYTES + 64 * 1024,
            "queue.buffering.max.kbytes": 2 * MAX_CHECKPOINT_BYTES // 1024,  # one fits, whatever its size
            "message.timeout.ms": 30_000,
            **(producer_extra or {}),
        }))
        self._partitions: int | None = None
        self._reader: Consumer | None = None

    def _topic_partitions(self, timeout: float = 10.0) -> int:
        if self._partitions is None:
            md = self._producer.list_topics(self.topic, timeout=timeout)
            t = md.topics.get(self.topic)
            if t is None or t.error is not None or not t.partitions:
                raise CheckpointError(f"topic {self.topic} is missing at {self.bootstrap}")
            self._partitions = len(t.partitions)
        return self._partitions

    def key(self, partition: int) -> bytes:
        return f"{self.group}|{partition}".encode()

    def write(self, cp: Checkpoint, timeout: float = 30.0) -> int:
        """Write ``cp`` and wait until the brokers have it; return its size in bytes.
        Raises CheckpointError if it was not acknowledged within ``timeout``."""
        value = encode_checkpoint(cp)
        if len(value) > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"the state of partition {cp.partition} is {len(value)} bytes, "
                                  f"more than a checkpoint may hold ({MAX_CHECKPOINT_BYTES}): "
                                  f"use more partitions")
        result: list[KafkaError | None] = []

        def delivered(err: KafkaError | None, msg: Any) -> None:
            result.append(err)

        self._producer.produce(self.topic, value, self.key(cp.partition),
                               cp.partition % self._topic_partitions(), on_delivery=delivered)
        self._producer.flush(timeout)
        if not result:
            raise CheckpointError(f"checkpoint of partition {cp.partition} not acknowledged within {timeout:.0f} s")
        if result[0] is not None:
            raise CheckpointError(f"checkpoint of partition {cp.partition} refused: {result[0].str()}")
        return len(value)

    def latest(self, partition: int, timeout: float = 30.0) -> Checkpoint | None:
        """The newest checkpoint of ``partition`` in this group, or None if there is none.

        Reads the topic's partition from its end backwards, a growing window at a time
        (the compacted topic keeps the newest per key; other groups' share it)."""
        tp_part = partition % self._topic_partitions(min(10.0, timeout))
        key = self.key(partition)
        if self._reader is None:  # one for every partition this store is asked about
            self._reader = Consumer(consumer_config(self.bootstrap) | {
                "fetch.max.bytes": MAX_RECORD_BYTES + 1024 * 1024,
                "max.partition.fetch.bytes": MAX_RECORD_BYTES + 1024 * 1024,
                "receive.message.max.bytes": MAX_RECORD_BYTES + 2 * 1024 * 1024,
                "fetch.wait.max.ms": 100,
            })
        consumer = self._reader
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, tp_part), timeout=timeout)
            end, step = high, 8
            deadline = time.monotonic() + timeout
            while end > low:
                start = max(low, end - step)
                found = self._last_with_key(consumer, tp_part, start, end, key, deadline)
                if found is not None:
                    return decode_checkpoint(found)
                end, step = start, step * 4
            return None
        finally:
            consumer.unassign()

    def _last_with_key(self, consumer: Consumer, tp_part: int, start: int, end: int, key: bytes,
                       deadline: float) -> bytes | None:
        consumer.assign([TopicPartition(self.topic, tp_part, start)])
        found = None
        idle = 0
        while idle < 5:  # offsets left empty at the end (compaction, aborted transactions)
            if time.monotonic() > deadline:
                raise CheckpointError(f"reading {self.topic} partition {tp_part} timed out")
            msgs = consumer.consume(100, 0.5)
            idle = 0 if msgs else idle + 1
            for m in msgs:
                if m.error() is not None:
                    raise_if_fatal(m.error(), f"reading checkpoints from {self.topic}")
                    continue
                if m.offset() >= end:
                    return found
                if m.key() == key and m.value():
                    found = m.value()
                if m.offset() >= end - 1:
                    return found
        return found

    def close(self) -> None:
        self._producer.flush(5)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
