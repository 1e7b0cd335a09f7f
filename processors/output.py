"""Publish processor output records, one Avro record per Kafka message.

Faust's own ``topic.send`` costs about 53 µs per message here, against 1-2 µs for a
confluent-kafka producer, and a capture can yield tens of thousands of connection
records. So the Faust agents consume with Faust and publish their outputs with this
confluent-kafka based publisher, in batches, flushed before any end-of-input report.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from wirestream.codec import AvroCodec
from wirestream.kafka import WireProducer, add_counts
from wirestream.topics import STATS

if TYPE_CHECKING:
    from wirestream.record_pipe import RecordPipeWriter


class OutputPublisher:
    """Encode and send output records; count what was emitted per topic."""

    def __init__(self, bootstrap: str, codec: AvroCodec, stage: str, records_pipe: RecordPipeWriter | None = None,
                 **producer_config: Any) -> None:
        """``producer_config``: librdkafka settings on top of the publisher's own;
        ``records_pipe``: the output records and reports go there instead of to their
        topics (a worker of analyze on its own broker: wirestream/record_pipe.py; the
        other topics, wire.observations, still go to Kafka)."""
        self.codec = codec
        self._pipe = records_pipe
        self.stage = stage
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        # Records (HTTP bodies, header maps) compress well; lz4 costs little CPU and cuts
        # what the broker stores and every consumer reads. Lingering 100 ms into 1 MB
        # batches saves the broker requests (docs/embedded-broker.md). WireProducer asks
        # for failed deliveries' reports only: a Python callback per record would cost
        # more than the produce call itself.
        self.kafka = WireProducer(bootstrap, **{"compression.type": "lz4", "linger.ms": 100,
                                                "batch.size": 1 << 20, **producer_config})
        self._produce = self.kafka.produce  # bound once: called per record
        self.emitted: Counter[str] = Counter()

    def emit(self, topic: str, key: str | None, record: dict[str, Any]) -> None:
        value = self.codec.encoders[topic](record)
        if self._pipe is not None and self._pipe.carries(topic):
            self._pipe.write(topic, value)
        else:
            self._produce(topic, value, key.encode() if key is not None else None)
        self.emitted[topic] += 1

    def send_to_partition(self, topic: str, partition: int, record: dict[str, Any]) -> None:
        """Send one record to a given partition (internal topics; not counted as emitted)."""
        self._produce(topic, self.codec.encoders[topic](record), None, partition)

    def poll(self) -> None:
        self.kafka.poll(0)
        if self._pipe is not None:
            self._pipe.flush()

    def flush(self, timeout: float = 60.0) -> None:
        self.kafka.flush(timeout)
        if self._pipe is not None:
            self._pipe.flush()

    def wait_delivered(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for everything queued to be delivered; return how
        many records are still on their way (not counted as lost: the caller waits again)."""
        return self.kafka.pending(timeout)

    def publish_stats(
        self,
        source_id: str,
        partition: int,
        received: int,
        emitted: dict[str, int],
        dropped: dict[str, int],
        counters: dict[str, int],
        final: bool,
    ) -> dict[str, Any]:
        """Send this stage's counters to ``wire.stats`` (after flushing its outputs).

        The producer's delivery errors are the worker's, not the source's: each report
        carries those since the previous report, so that summing reports counts each once."""
        self.flush()
        dropped = add_counts(dict(dropped), self.kafka.take_delivery_errors())
        record = {
            "stage": self.stage,
            "instance": self.instance,
            "source_id": source_id,
            "partition": partition,
            "ts_us": time.time_ns() // 1000,
            "final": final,
            "received": received,
            "emitted": dict(emitted),
            "dropped": dropped,
            "counters": dict(counters),
        }
        self.emit(STATS, source_id, record)
        self.flush()
        return record
