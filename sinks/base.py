"""What every sink shares: consume, decode, write in batches, commit after the write.

A sink subclasses :class:`BatchSink` and implements :meth:`BatchSink.write`, which gets a
batch of decoded records and either delivers all of them or raises ``OSError`` (the
destination is down, full, unreachable). Then:

- **at least once**: input offsets are committed only after ``write`` returned;
- **retries**: a failed ``write`` is retried with backoff (1 s doubling to 60 s) with the
  same batch, and nothing more is consumed meanwhile, so memory stays bounded (the
  consumer's poll interval is raised to an hour so the group keeps the partitions);
- **dead letters**: a message that cannot be decoded goes to ``wire.dead-letter`` with its
  origin (topic, partition, offset) and the reason in headers, and is counted;
  :meth:`BatchSink.dead_letter` lets ``write`` do the same for a record it cannot convert.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from wirestream.codec import AvroCodec
from wirestream.errors import DecodeError, RegistryError
from wirestream.kafka import WireProducer, group_consumer_config
from wirestream.kafka_security import raise_if_fatal
from wirestream.topics import DEAD_LETTER

log = logging.getLogger(__name__)
BACKOFF_START_S, BACKOFF_MAX_S = 1.0, 60.0


@dataclass
class Item:
    """One consumed record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    record: dict[str, Any]


class BatchSink:
    """Consume ``topics`` as consumer group ``group`` and :meth:`write` them in batches."""

    name = "sink"

    def __init__(self, bootstrap: str, registry: str, topics: list[str], group: str,
                 flush_records: int = 10_000, flush_seconds: float = 30.0, from_beginning: bool = True) -> None:
        self.topics = topics
        self.codec = AvroCodec(registry)
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        # committed after each successful write; waiting out a broken destination can take
        # longer than the default 5 min between polls
        self._consumer = Consumer(group_consumer_config(bootstrap, group, from_beginning,
                                                        **{"max.poll.interval.ms": 3_600_000}))
        self._consumer.subscribe(topics)
        self._dead = WireProducer(bootstrap)
        self._batch: list[Item] = []
        self._offsets: dict[tuple[str, int], int] = {}
        self._last_flush = time.monotonic()
        self._stopping: Callable[[], bool] = lambda: False
        self.written: Counter[str] = Counter()  # by topic, counted by write()
        self.counters: Counter[str] = Counter()

    # --- to implement -----------------------------------------------------------------------

    def write(self, batch: list[Item]) -> None:
        """Deliver every item of ``batch``, or raise ``OSError`` to have it retried."""
        raise NotImplementedError

    def close_destination(self) -> None:
        """Release connections and files (called once, at the end)."""

    # --- the loop ---------------------------------------------------------------------------

    def run(self, stop: Callable[[], bool]) -> None:
        """Consume, write and commit until ``stop()``; then write what is buffered."""
        self._stopping = stop
        try:
            while not stop():
                self.step()
            self.flush()
        finally:
            self._consumer.close()
            self._dead.flush(10)
            self.close_destination()

    def step(self, timeout: float = 0.5) -> None:
        for msg in self._consumer.consume(1000, timeout):
            if msg.error():
                raise_if_fatal(msg.error(), f"sink reading {', '.join(self.topics)}")
                continue
            self._take(msg)
        due = time.monotonic() - self._last_flush >= self.flush_seconds
        if len(self._batch) >= self.flush_records or (due and self._offsets):
            self.flush()

    def _take(self, msg: Any) -> None:
        self._offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
        value = msg.value()
        if value is None:
            return  # a tombstone: nothing to deliver
        try:
            record = self.codec.decode(value)
        except (DecodeError, RegistryError) as exc:
            self.dead_letter(msg.topic(), msg.partition(), msg.offset(), msg.key(), value,
                             f"{type(exc).__name__}: {exc}")
            return
        self._batch.append(Item(msg.topic(), msg.partition(), msg.offset(), msg.key(), value, record))

    def dead_letter(self, topic: str, partition: int, offset: int, key: bytes | None, raw: bytes,
                    reason: str) -> None:
        self.counters["dead_letters"] += 1
        log.warning("%s: dead letter %s/%d@%d: %s", self.name, topic, partition, offset, reason)
        headers = [("topic", topic.encode()), ("partition", str(partition).encode()),
                   ("offset", str(offset).encode()), ("error", reason.encode()[:1000])]
        self._dead.produce(DEAD_LETTER, raw, key, headers=headers)
        self._dead.poll(0)

    def flush(self) -> None:
        """Write the batch (retrying until it works), then commit its offsets."""
        delay = BACKOFF_START_S
        while self._batch:
            try:
                self.write(self._batch)
                self._batch = []
            except OSError as exc:
                self.counters["write_retries"] += 1
                if self._stopping():
                    # Asked to stop while the destination is down: commit nothing, so the
                    # batch comes again to whoever consumes next (at least once).
                    log.warning("%s: stopping with %d records unwritten (%s); not committed",
                                self.name, len(self._batch), exc)
                    self._batch, self._offsets = [], {}
                    return
                log.warning("%s: cannot write (%s); retrying in %.0f s", self.name, exc, delay)
                time.sleep(delay)
                delay = min(BACKOFF_MAX_S, delay * 2)
        self._dead.flush(10)
        # Dead letters the broker did not take are counted (broker_<reason>); the batch's
        # offsets are committed anyway: the sink's own output was written.
        self.counters.update(self._dead.take_delivery_errors())
        if self._offsets:
            try:
                self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in self._offsets.items()],
                                      asynchronous=False)
                self._offsets.clear()
            except KafkaException as exc:  # a rebalance took the partitions: they will be redelivered
                self.counters["commit_failures"] += 1
                log.warning("%s: commit failed: %s", self.name, exc)
        self._last_flush = time.monotonic()
