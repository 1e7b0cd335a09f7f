"""Publish decoded packets to ``wire.packets`` in batches, partitioned by connection.

Every packet goes to the partition of its canonical connection key (both directions of a
connection land together, in capture order). Packets are packed into per-partition
batches (``wirestream.packet_block`` layout) and sent as one Avro ``PacketBatch`` per
Kafka message with a confluent-kafka producer. :meth:`finish` flushes and then sends an
end-of-input marker to every partition, so processors know when a source is complete.

The batching is the compiled core's (``rust/src/batch.rs``, :attr:`PacketBatchPublisher.batcher`):
a replay's read -> decode -> batch loop runs in the core and gives this class complete
batches only (:meth:`send_batch`); :meth:`add` puts one decoded packet into the same
batcher, for callers that decode frame by frame.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wirestream import _core
from wirestream.codec import AvroCodec
from wirestream.kafka import ANY_PARTITION, WireProducer, add_counts
from wirestream.packet_block import LAYOUT_VERSION
from wirestream.topics import PACKETS, STATS

if TYPE_CHECKING:
    from wirestream.packet_pipe import PacketPipes

#: Flush a partition's batch at this many packets or payload bytes, whichever first.
#: Kafka's default message size limit is 1 MB; stay well under it.
DEFAULT_BATCH_PACKETS = 4096
DEFAULT_BATCH_BYTES = 768 * 1024
#: A complete batch of the core's batcher: partition, count, headers, payloads, tunnel_of, tunnel_paths.
Batch = tuple[int, int, bytes, bytes, bytes, bytes]


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
        alive: Callable[[], str | None] | None = None,
        pipes: PacketPipes | None = None,
        producer_config: dict[str, Any] | None = None,
    ) -> None:
        """``socket_events``: this source also publishes ``wire.sockets`` (said on every
        batch, so processors wait for that topic's end marker too). ``alive``: see
        :class:`~wirestream.kafka.WireProducer` (the broker gone ends a wait with
        :class:`~wirestream.kafka.BrokerGone`). ``pipes``: the ``wire.packets`` messages
        go to the workers by pipe instead (analyze on its own embedded broker:
        wirestream/packet_pipe.py); the stats reports still go to Kafka.
        ``producer_config``: librdkafka settings on top of the producer's own."""
        self.partitions = partitions
        self.socket_events = socket_events
        self.source_id = source_id
        self.source_name = source_name
        self.stage = stage
        self.batch_packets = batch_packets
        self.batch_bytes = batch_bytes
        self._encode = codec.encoder(PACKETS)
        #: the compiled writer's encoding around the payloads (by pipe: see _send)
        self._split = getattr(self._encode, "split", None)
        self._encode_stats = codec.encoder(STATS)
        self.kafka = WireProducer(bootstrap, alive, **(producer_config or {}))  # backpressure_waits and delivery_errors: its counters
        #: the core's per-partition batches (the same partition for both directions of
        #: a flow: ``packet_block.partition_for`` of its canonical key)
        self.batcher = _core.Batcher(partitions, batch_packets, batch_bytes)
        self._sequence = [0] * partitions  # batches sent so far, per partition
        self.messages = 0
        self.pipes = pipes

    @property
    def packets(self) -> int:
        """Packets batched since the start."""
        return int(self.batcher.packets)

    # --- per packet ---------------------------------------------------------------------

    def add(self, fields: tuple, payload: bytes) -> None:
        """Add one decoded packet (``producers.decode`` output) to its partition's batch."""
        for batch in self.batcher.add(fields, payload):
            self.send_batch(*batch)

    # --- batches --------------------------------------------------------------------------

    def send_batch(self, part: int, count: int, headers: bytes, payloads: bytes,
                   tunnel_of: bytes = b"", tunnel_paths: bytes = b"") -> None:
        """Send one complete batch of the core's batcher as the partition's next message
        (``tunnel_of``/``tunnel_paths``: the tunnels its packets came through, if any)."""
        self._send(part, count, headers, payloads, tunnel_of=tunnel_of, tunnel_paths=tunnel_paths)

    def send_batches(self, batches: list[Batch]) -> None:
        for batch in batches:
            self.send_batch(*batch)

    def _send(self, part: int, count: int, headers: bytes, payloads: bytes, end_of_input: bool = False,
              tunnel_of: bytes = b"", tunnel_paths: bytes = b"") -> None:
        sequence = self._sequence[part]
        record = {
            "source_id": self.source_id,
            "source_name": self.source_name,
            "sequence": sequence,
            "layout_version": LAYOUT_VERSION,
            "count": count,
            "packets": headers,
            "payloads": payloads,
            "end_of_input": end_of_input,
            "batches_before": sequence,
            "socket_events": self.socket_events,
            "tunnel_of": tunnel_of,
            "tunnel_paths": tunnel_paths,
        }
        split = self._split
        if self.pipes is not None and split is not None:
            # by pipe, the payloads are written from their own buffer: the message is its
            # encoding's head, the payloads, its tail (no copy of them into the message)
            head, tail = split(record, "payloads")
            self.pipes.send(part, head, payloads, tail)
            self.messages += 1
        else:
            self._produce(PACKETS, self._encode(record), part)
        if not end_of_input:
            self._sequence[part] = sequence + 1

    def _produce(self, topic: str, value: bytes, partition: int | None, key: bytes | None = None) -> None:
        if self.pipes is not None and topic == PACKETS:
            assert partition is not None, "packet batches go to a partition"
            self.pipes.send(partition, value)
            self.messages += 1
            return
        self.kafka.produce(topic, value, key, ANY_PARTITION if partition is None else partition)
        self.messages += 1
        self.kafka.poll(0)

    def finish(self, timeout: float = 60.0) -> None:
        """Send what is buffered, then an end-of-input marker to every partition."""
        self.send_batches(self.batcher.flush())
        for part in range(self.partitions):
            self._send(part, 0, b"", b"", end_of_input=True)
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
