"""Publish decoded packets to ``wire.packets`` in batches, partitioned by connection.

Every packet goes to the partition of its canonical connection key (both directions of a
connection land together, in capture order). Packets are packed into per-partition
batches (``wirestream.packet_block`` layout) and sent as one Avro ``PacketBatch`` per
Kafka message with a confluent-kafka producer. :meth:`finish` flushes and then sends an
end-of-input marker to every partition, so processors know when a source is complete.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from typing import Any

from wirestream.codec import AvroCodec
from wirestream.kafka import ANY_PARTITION, WireProducer, add_counts
from wirestream.packet_block import LAYOUT_VERSION, canonical_key, pack_header, partition_for
from wirestream.topics import PACKETS, STATS

#: Flush a partition's batch at this many packets or payload bytes, whichever first.
#: Kafka's default message size limit is 1 MB; stay well under it.
DEFAULT_BATCH_PACKETS = 4096
DEFAULT_BATCH_BYTES = 768 * 1024
_MAX_FLOW_CACHE = 1 << 20  # bounded: cleared when full


class _PartitionBatch:
    __slots__ = ("headers", "payloads", "count", "sequence")

    def __init__(self) -> None:
        self.headers = bytearray()
        self.payloads = bytearray()
        self.count = 0
        self.sequence = 0


class PacketBatchPublisher:
    """Collect packets per partition and send them as ``PacketBatch`` messages."""

    def __init__(
        self,
        bootstrap: str,
        codec: AvroCodec,
        partitions: int,
        source_id: str,
        source_name: str = "",
        stage: str = "producer.pcap",
        batch_packets: int = DEFAULT_BATCH_PACKETS,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        socket_events: bool = False,
    ) -> None:
        """``socket_events``: this source also publishes ``wire.sockets`` (said on every
        batch, so processors wait for that topic's end marker too)."""
        self.partitions = partitions
        self.socket_events = socket_events
        self.source_id = source_id
        self.source_name = source_name
        self.stage = stage
        self.batch_packets = batch_packets
        self.batch_bytes = batch_bytes
        self._encode = codec.encoder(PACKETS)
        self._encode_stats = codec.encoder(STATS)
        self.kafka = WireProducer(bootstrap)  # backpressure_waits and delivery_errors: its counters
        self._batches = [_PartitionBatch() for _ in range(partitions)]
        self._flow_partition: dict[tuple, int] = {}
        self.packets = 0
        self.messages = 0

    # --- per packet ---------------------------------------------------------------------

    def add(self, fields: tuple, payload: bytes) -> None:
        """Add one decoded packet (``producers.decode`` output) to its partition's batch."""
        flow = (fields[6], fields[8], fields[7], fields[9], fields[13])
        part = self._flow_partition.get(flow)
        if part is None:
            if len(self._flow_partition) >= _MAX_FLOW_CACHE:
                self._flow_partition.clear()
            part = partition_for(canonical_key(fields[13], fields[6], fields[8], fields[7], fields[9]), self.partitions)
            self._flow_partition[flow] = part
        b = self._batches[part]
        b.headers += pack_header(fields, len(b.payloads), len(payload))
        if payload:
            b.payloads += payload
        b.count += 1
        self.packets += 1
        if b.count >= self.batch_packets or len(b.payloads) >= self.batch_bytes:
            self._send(part, b)

    # --- batches --------------------------------------------------------------------------

    def _send(self, part: int, b: _PartitionBatch, end_of_input: bool = False) -> None:
        value = self._encode(
            {
                "source_id": self.source_id,
                "source_name": self.source_name,
                "sequence": b.sequence,
                "layout_version": LAYOUT_VERSION,
                "count": b.count,
                "packets": bytes(b.headers),
                "payloads": bytes(b.payloads),
                "end_of_input": end_of_input,
                "batches_before": b.sequence,
                "socket_events": self.socket_events,
            }
        )
        self._produce(PACKETS, value, part)
        if not end_of_input:
            b.sequence += 1
        b.headers = bytearray()
        b.payloads = bytearray()
        b.count = 0

    def _produce(self, topic: str, value: bytes, partition: int | None, key: bytes | None = None) -> None:
        self.kafka.produce(topic, value, key, ANY_PARTITION if partition is None else partition)
        self.messages += 1
        self.kafka.poll(0)

    def finish(self, timeout: float = 60.0) -> None:
        """Send what is buffered, then an end-of-input marker to every partition."""
        for part, b in enumerate(self._batches):
            if b.count:
                self._send(part, b)
        for part, b in enumerate(self._batches):
            self._send(part, b, end_of_input=True)
        self.flush(timeout)

    def flush(self, timeout: float = 60.0) -> None:
        self.kafka.flush(timeout, undelivered="broker_undelivered_at_exit")

    def publish_stats(
        self, received: int, dropped: Counter[str], counters: dict[str, int] | None = None, final: bool = True
    ) -> dict[str, Any]:
        """Publish this stage's counters on ``wire.stats``; return the record.

        A producer's reports are snapshots of its totals, for its one source (``received``,
        ``dropped``, ``counters``: since the start), and only its final one is summed with
        other sources': so the delivery errors in a report are since the start too.

        Only the final report is flushed (it follows the end markers: when this returns,
        the source is delivered). A periodic one (``final`` False) is only queued: a flush
        would hold the caller (a live capture's loop) until the broker caught up, up to
        60 s, while the kernel ring overflows although the client's queue has room."""
        record = {
            "stage": self.stage,
            "instance": f"{socket.gethostname()}:{os.getpid()}",
            "source_id": self.source_id,
            "partition": -1,
            "ts_us": time.time_ns() // 1000,
            "final": final,
            "received": received,
            "emitted": {PACKETS: self.packets},
            # added key by key: a caller's broker_* count adds up, not overwritten
            "dropped": add_counts(dict(+dropped), self.kafka.delivery_errors),
            "counters": {"batches": self.messages, **(counters or {})},
        }
        self._produce(STATS, self._encode_stats(record), None, key=self.source_id.encode())
        if final:
            self.flush()
        return record
