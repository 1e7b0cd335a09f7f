"""wirestream.kafka against the embedded broker: backpressure, delivery errors and how they
reach wire.stats.

A delivery error is made the way it happens in production, by the broker's answer: a
record for partition 99 of a topic nobody has used yet. The producer cannot know the
topic's partitions when it queues the record; the broker creates the topic (with 4) when
asked for it, and the record fails with ``_UNKNOWN_PARTITION``.
"""

from __future__ import annotations

import gc
import time
import uuid
import weakref
from collections import Counter

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from wirestream.processors.output import OutputPublisher
from wirestream.producers.publisher import PacketBatchPublisher

from wirestream import plugins
from wirestream.broker import ensure_topics
from wirestream.codec import AvroCodec
from wirestream.kafka import WireProducer
from wirestream.reader import TopicReader, end_offsets
from wirestream.topics import STATS

NO_SUCH_PARTITION = 99  # the broker makes topics with 4
UNKNOWN_PARTITION = "broker__unknown_partition"
SCHEMA = {"type": "record", "name": "Out", "fields": [{"name": "n", "type": "long"}]}


def new_topic() -> str:
    return f"test.kafka.{uuid.uuid4().hex[:12]}"


def _final_reports(bootstrap: str, codec: AvroCodec, stage: str, start: dict, n: int) -> list[dict]:
    """The ``n`` final reports of ``stage`` on wire.stats after offsets ``start``."""
    found: list[dict] = []
    with TopicReader(bootstrap, codec, [STATS], start) as reader:
        deadline = time.monotonic() + 30
        while len(found) < n and time.monotonic() < deadline:
            found += [m.record for m in reader.poll(0.3)
                      if m.record is not None and m.record["stage"] == stage and m.record["final"]]
    assert len(found) == n, found
    return found


def test_output_reports_carry_each_delivery_error_once(broker, registry) -> None:
    """Two final reports of one worker, after one failed delivery and with a drop reason of
    the same name from the caller: summed, as the analyze summary sums them, they count the
    caller's drops and the failed delivery once (the cumulative counter used to go into
    every report, and to overwrite the caller's count)."""
    stage = f"test.kafka.{uuid.uuid4().hex[:8]}"
    codec = AvroCodec(registry.url)
    start = end_offsets(broker.bootstrap, [STATS])
    publisher = OutputPublisher(broker.bootstrap, codec, stage)
    topic = new_topic()
    codec.encoder_for_schema(topic, SCHEMA)
    publisher.send_to_partition(topic, NO_SUCH_PARTITION, {"n": 1})

    first = publisher.publish_stats("source-a", 0, received=10, emitted={}, dropped={UNKNOWN_PARTITION: 5},
                                    counters={}, final=True)
    second = publisher.publish_stats("source-b", 1, received=20, emitted={}, dropped={"malformed_batch": 0},
                                     counters={}, final=True)
    assert first["dropped"] == {UNKNOWN_PARTITION: 6}
    assert second["dropped"] == {"malformed_batch": 0}  # the caller's zero stays

    reports = _final_reports(broker.bootstrap, codec, stage, start, 2)
    total: Counter[str] = Counter()
    for r in reports:
        total.update(r["dropped"])
    assert total == {UNKNOWN_PARTITION: 6, "malformed_batch": 0}


def test_producer_reports_add_a_callers_count_to_its_delivery_errors(broker, registry) -> None:
    """A producer's reports are snapshots of its totals (its final one is the one summed):
    its failed deliveries are added to a caller's drop reason of the same name."""
    codec = AvroCodec(registry.url)
    publisher = PacketBatchPublisher(broker.bootstrap, codec, partitions=4, source_id=f"s-{uuid.uuid4().hex[:8]}",
                                     stage="test.kafka.producer")
    publisher.kafka.produce(new_topic(), b"x", None, NO_SUCH_PARTITION)
    publisher.flush()
    record = publisher.publish_stats(0, Counter({UNKNOWN_PARTITION: 2}))
    assert record["dropped"] == {UNKNOWN_PARTITION: 3}
    again = publisher.publish_stats(0, Counter({UNKNOWN_PARTITION: 2}))
    assert again["dropped"] == {UNKNOWN_PARTITION: 3}  # a snapshot: the same totals


def test_a_full_queue_waits_and_loses_nothing(broker) -> None:
    """With room for 5 records in the client, 300 are produced: each waits for room, none
    is lost, and they arrive in order."""
    topic = new_topic()
    ensure_topics(broker.bootstrap, [topic], 1)
    producer = WireProducer(broker.bootstrap, **{"queue.buffering.max.messages": 5})
    for n in range(300):
        producer.produce(topic, str(n).encode(), None, 0)
    assert producer.flush(30) == 0
    assert producer.backpressure_waits > 0
    assert producer.take_delivery_errors() == {}

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "test-kafka", "log_level": 3,
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got: list[int] = []
        deadline = time.monotonic() + 30
        while len(got) < 300 and time.monotonic() < deadline:
            got += [int(m.value()) for m in consumer.consume(500, 0.3) if not m.error()]
    finally:
        consumer.close()
    assert got == list(range(300))


def test_take_delivery_errors_hands_each_error_over_once(broker) -> None:
    producer = WireProducer(broker.bootstrap)
    producer.produce(new_topic(), b"x", None, NO_SUCH_PARTITION)
    producer.flush(30)
    assert producer.take_delivery_errors() == {UNKNOWN_PARTITION: 1}
    assert producer.take_delivery_errors() == {}


class _Plugin(plugins.Processor):
    name = "test-kafka"
    inputs = ["wire.transactions"]
    outputs = {"test.kafka.plugin-out": SCHEMA}


def test_a_new_producers_first_record_is_delivered_without_waiting_for_a_timer(broker) -> None:
    """An idempotent producer's first record waits for its producer id, which librdkafka
    asks for after a metadata response, else at a 500 ms timer: with sparse connections
    the bootstrap connection closed once the brokers were known, none was connected
    again before a record was queued, and the first delivery came two timer rounds, ~1 s,
    after the producer started. A broker connected at once asks for metadata, and its
    answer brings the id."""
    topic = new_topic()
    ensure_topics(broker.bootstrap, [topic], 1)
    took = []
    for _ in range(2):
        started = time.monotonic()
        producer = WireProducer(broker.bootstrap)
        time.sleep(0.1)  # what a command does between starting its producer and its first record
        producer.produce(topic, b"x", None, 0)
        assert producer.flush(30) == 0
        took.append(time.monotonic() - started)
    # two rounds of the timer take 1 s whatever the machine's speed; a broker that is up
    # answers in milliseconds (0.1 s here, with the sleep)
    assert min(took) < 0.7, took


def test_a_plugin_emits_only_to_its_declared_outputs(broker, registry) -> None:
    producer = WireProducer(broker.bootstrap)
    counters: Counter[str] = Counter()
    emit = plugins.plugin_emit(_Plugin(), AvroCodec(registry.url), producer, counters)
    emit("test.kafka.plugin-out", "k", {"n": 1})
    with pytest.raises(plugins.PluginError, match="emitted to 'wire.alerts', which is not in its outputs"):
        emit("wire.alerts", "k", {"n": 2})
    assert counters == {"emitted.test.kafka.plugin-out": 1}
    plugins.check_delivered(_Plugin(), producer)  # delivered: no error


def test_a_plugins_undelivered_outputs_are_an_error(broker, registry) -> None:
    producer = WireProducer(broker.bootstrap)
    producer.produce(new_topic(), b"x", None, NO_SUCH_PARTITION)
    with pytest.raises(plugins.PluginError, match=f"outputs not delivered: .*{UNKNOWN_PARTITION}"):
        plugins.check_delivered(_Plugin(), producer)


def test_a_producer_is_freed_as_soon_as_it_is_dropped() -> None:
    """No reference cycle keeps a WireProducer (and its librdkafka client, connections and
    retries) alive until a cyclic GC, which analyze holds off: such a client outlived the
    embedded broker and logged "Connection refused" after the summary."""
    gc.disable()
    try:
        producer = WireProducer("127.0.0.1:9")
        producer.produce("wire.stats", b"x")  # the delivery callback in use
        gone = weakref.ref(producer)
        del producer
        assert gone() is None
    finally:
        gc.enable()
