"""The per-service windows of one ``wirestream analyze`` (or ``capture``) run, without Faust.

A deployment runs the windows as a Faust agent (``processors.app``, ``wirestream process
--role windows``): a consumer group, and a table recovered from its changelog when
partitions move or a worker restarts. A one-shot run needs neither: its workers live as
long as the run, and if one dies the run fails as a whole (``Runtime.dead_worker``). What
Faust costs there is time: its import, its start-up and a group join take seconds, for a
stage that handles a few batches per second of capture.

:class:`WindowsWorker` is that stage as a plain confluent-kafka consumer **assigned** the
``wire.observations`` partitions it is given (no group), feeding the same
:class:`~.service_windows.ServiceWindows` with a dict as its store, and publishing the same
records and final reports as the Faust agent does::

    for each batch of observations on the assigned partitions:
        add them to their service's window, close the windows the watermark has passed;
        when the batch ends its source, report (final wire.stats record)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from wirestream.broker import consume_available
from wirestream.codec import AvroCodec
from wirestream.errors import DecodeError, RegistryError
from wirestream.kafka import consumer_config
from wirestream.kafka_security import raise_if_fatal
from wirestream.topics import ALERTS, OBSERVATIONS, SERVICE_METRICS, STATS, WINDOWS_STAGE

from .output import OutputPublisher
from .service_windows import ServiceWindows, WindowOptions

if TYPE_CHECKING:
    from wirestream.record_pipe import RecordPipeWriter

log = logging.getLogger(__name__)

#: what the windows write, each schema registered before any input is read
OUTPUT_SCHEMA_TOPICS = (SERVICE_METRICS, ALERTS, STATS)


class WindowsWorker:
    """The windows of the ``wire.observations`` partitions it is assigned, kept in memory."""

    def __init__(self, bootstrap: str, codec: AvroCodec, partitions: dict[int, int | None],
                 options: WindowOptions | None = None, records_pipe: RecordPipeWriter | None = None) -> None:
        """``partitions``: observation partition -> the offset to start at (None: the
        beginning of the partition); ``records_pipe``: the windows' records and reports
        go to the command that started the worker by this pipe (wirestream/record_pipe.py)."""
        self.bootstrap = bootstrap
        self.codec = codec
        self.partitions = dict(partitions)
        self.publisher = OutputPublisher(bootstrap, codec, WINDOWS_STAGE, records_pipe)
        # One store for every assigned partition, as the Faust agent's table: its keys name
        # the partition where it matters (a source's offsets), and a service's windows are
        # in one partition only (observations are keyed by service).
        self.windows = ServiceWindows({}, self.publisher.emit, options)
        self.skipped = 0  # undecodable messages

    def run(self, stopping: Callable[[], bool]) -> None:
        """Consume until ``stopping()`` says so."""
        for topic in OUTPUT_SCHEMA_TOPICS:  # a final report must not wait on a registration
            self.codec.encoders[topic]
        consumer = Consumer({**consumer_config(self.bootstrap),
                             # an end-of-input batch is taken as soon as it is written
                             "fetch.wait.max.ms": 50})
        consumer.assign([TopicPartition(OBSERVATIONS, q, OFFSET_BEGINNING if off is None else off)
                         for q, off in sorted(self.partitions.items())])
        try:
            while not stopping():
                for msg in consume_available(consumer, 100, 0.1):
                    if msg.error() is not None:
                        raise_if_fatal(msg.error(), f"windows reading {OBSERVATIONS}")
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("consumer: %s", msg.error().str())
                        continue
                    self.handle(msg.partition(), msg.offset(), msg.value())
                self.publisher.poll()
        finally:
            consumer.close()
            self.publisher.flush(5)

    def handle(self, partition: int, offset: int, value: bytes | None) -> None:
        """One ``wire.observations`` message (as the Faust agent in ``processors.app``)."""
        try:
            batch = self.codec.decode(value)
        except (DecodeError, RegistryError) as exc:
            self.skipped += 1
            log.warning("skipping a wire.observations message at %d/%d: %s", partition, offset, exc)
            return
        done = self.windows.handle(batch, partition, offset)
        if done is not None:
            publish_final_report(self.publisher, batch["source_id"], partition, done)


def publish_final_report(publisher: OutputPublisher, source_id: str, partition: int,
                         done: dict[str, Any]) -> None:
    """The windows stage's final ``wire.stats`` report of a source on an observation
    partition, from what :meth:`ServiceWindows.handle` returned when it completed the
    source (shared with the Faust agent in ``processors.app``)."""
    publisher.publish_stats(
        source_id=source_id, partition=partition, received=0, emitted=done["emitted"],
        dropped={k: done[k] for k in ("late_observations", "malformed_observation_batches")},
        counters={"duplicate_observation_batches": done["duplicate_observation_batches"]},
        final=True)

