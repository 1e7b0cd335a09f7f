"""Compressed record batches ($WIRESTREAM_COMPRESSION, wirestream.kafka.compression): the
embedded broker and Apache Kafka take them, and both of wirestream's consumer clients read
them back byte for byte: confluent-kafka (librdkafka: the packet workers, readers, sinks)
and aiokafka (Faust: the windows worker, plugins).

The values are wire.packets-sized (up to 768 KiB) slices of a real capture file, as
compressible as packet batches are; the producer's own statistics show that they crossed
the wire compressed, not merely that the setting was accepted.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition as AioTopicPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from wirestream.broker import ensure_topics
from wirestream.errors import WirestreamError
from wirestream.kafka import (
    COMPRESSION_ENV,
    DEFAULT_COMPRESSION,
    WireProducer,
    compression,
    consumer_config,
)

CAPTURE = Path(__file__).parent / "data" / "chrissanders" / "http_espn.pcapng"
BATCH_BYTES = 768 * 1024  # the packet producers' largest payload blob per batch


def _values() -> list[bytes]:
    data = CAPTURE.read_bytes()
    # several records, the largest a full batch: one produce request holds several batches
    return [data[:BATCH_BYTES], data[BATCH_BYTES // 2: BATCH_BYTES // 2 + 4096], data[:100], b"x" * 50_000]


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> float:
    """Send ``values`` to partition 0 of ``topic`` with wirestream's producer; return the
    bytes of the record batches it sent over the bytes of the records, from the client's
    statistics (batch sizes are per statistics window: summed over all of them)."""
    stats: list[dict[str, Any]] = []
    producer = WireProducer(bootstrap, **{"statistics.interval.ms": 100,
                                          "stats_cb": lambda s: stats.append(json.loads(s))})
    for i, value in enumerate(values):
        producer.produce(topic, value, key=str(i).encode(), partition=0)
    assert producer.flush(30) == 0
    assert not producer.delivery_errors
    producer.poll(0.3)  # one more statistics interval, after the last batch
    topic_stats = [s["topics"][topic] for s in stats if topic in s.get("topics", {})]
    batch_bytes = sum(t["batchsize"]["sum"] for t in topic_stats)
    record_bytes = topic_stats[-1]["partitions"]["0"]["txbytes"]
    assert record_bytes >= sum(len(v) for v in values)  # values and keys
    return batch_bytes / record_bytes


def _read_confluent(bootstrap: str, topic: str, n: int) -> list[bytes]:
    consumer = Consumer({**consumer_config(bootstrap), "fetch.wait.max.ms": 50})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out: list[bytes] = []
    try:
        for _ in range(100):
            for m in consumer.consume(100, 0.3):
                assert m.error() is None, m.error()
                out.append(m.value())
            if len(out) >= n:
                break
    finally:
        consumer.close()
    return out


async def _read_aiokafka(bootstrap: str, topic: str, n: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_bytes=8 * 1024 * 1024, max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    out: list[bytes] = []
    try:
        tp = AioTopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        for _ in range(100):
            for msgs in (await consumer.getmany(tp, timeout_ms=300)).values():
                out += [m.value for m in msgs]
            if len(out) >= n:
                break
    finally:
        await consumer.stop()
    return out


@pytest.fixture(params=["embedded", "apache"])
def kafka(request: pytest.FixtureRequest) -> Any:
    """The embedded broker (the ``broker`` fixture), or one Apache Kafka broker."""
    return request.getfixturevalue("broker" if request.param == "embedded" else "kafka_single")


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_a_compressed_batch_round_trips(kafka: Any, codec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COMPRESSION_ENV, codec)
    topic = f"test.compression.{uuid.uuid4().hex[:10]}"
    ensure_topics(kafka.bootstrap, [topic], 1, replication_factor=getattr(kafka, "replication_factor", -1))
    values = _values()
    # the batches went out compressed (this capture file shrinks to ~80 % with zlib -1)
    assert 0 < _produce(kafka.bootstrap, topic, values) < 0.9
    assert _read_confluent(kafka.bootstrap, topic, len(values)) == values
    assert asyncio.run(_read_aiokafka(kafka.bootstrap, topic, len(values))) == values


def test_no_compression_is_sent_as_is(broker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COMPRESSION_ENV, "none")
    topic = f"test.compression.{uuid.uuid4().hex[:10]}"
    ensure_topics(broker.bootstrap, [topic], 1)
    values = _values()
    assert _produce(broker.bootstrap, topic, values) >= 1.0  # records and batch headers
    assert _read_confluent(broker.bootstrap, topic, len(values)) == values


def test_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(COMPRESSION_ENV, raising=False)
    assert compression() == DEFAULT_COMPRESSION
    monkeypatch.setenv(COMPRESSION_ENV, " ZSTD ")
    assert compression() == "zstd"
    monkeypatch.setenv(COMPRESSION_ENV, "brotli")
    with pytest.raises(WirestreamError, match="WIRESTREAM_COMPRESSION"):
        compression()
