"""The embedded registry speaks Confluent's protocol: Confluent's own Avro serdes interoperate."""

from __future__ import annotations

import json

import httpx
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from wirestream.schemas import schema_text

from wirestream.codec import AvroCodec
from wirestream.topics import CONNECTIONS, STATS


def _consume_one(bootstrap: str, topic: str, partition: int, offset: int) -> bytes:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "t", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, partition, offset)])
    try:
        for _ in range(50):
            m = c.poll(0.5)
            if m is not None and not m.error():
                return m.value()
        raise AssertionError(f"nothing to read on {topic}/{partition}@{offset}")
    finally:
        c.close()


def _produce(bootstrap: str, topic: str, value: bytes, partition: int) -> int:
    p = Producer({"bootstrap.servers": bootstrap})
    offsets = []
    p.produce(topic, value, partition=partition, on_delivery=lambda err, msg: offsets.append(msg.offset()))
    p.flush(10)
    return offsets[0]


def test_confluent_deserializer_reads_our_records(broker, registry):
    """A record wirestream writes is read back by confluent_kafka's AvroDeserializer."""
    codec = AvroCodec(registry.url)
    stats = {"stage": "test", "instance": "h:1", "source_id": "s", "partition": 3, "ts_us": 123,
             "final": True, "received": 7, "emitted": {CONNECTIONS: 2}, "dropped": {"garbage": 1},
             "counters": {}}
    offset = _produce(broker.bootstrap, STATS, codec.encode(STATS, stats), 2)
    raw = _consume_one(broker.bootstrap, STATS, 2, offset)
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry.url}))
    decoded = deserializer(raw, SerializationContext(STATS, MessageField.VALUE))
    assert decoded == stats


def test_confluent_serializer_writes_records_we_read(broker, registry):
    """confluent_kafka's AvroSerializer registers and writes; wirestream's codec decodes it."""
    client = SchemaRegistryClient({"url": registry.url})
    serializer = AvroSerializer(client, schema_text("stats"))
    rec = {"stage": "external", "instance": "x:2", "source_id": "", "partition": -1, "ts_us": 5,
           "final": False, "received": 0, "emitted": {}, "dropped": {}, "counters": {"a": 1}}
    value = serializer(rec, SerializationContext(STATS, MessageField.VALUE))
    offset = _produce(broker.bootstrap, STATS, value, 1)
    raw = _consume_one(broker.bootstrap, STATS, 1, offset)
    assert AvroCodec(registry.url).decode(raw) == rec
    # same schema text -> same id as wirestream's own registration
    assert raw[1:5] == AvroCodec(registry.url).encode(STATS, rec)[1:5]


def test_registry_rest_api(registry):
    """Subjects, versions, lookups and errors answer as Confluent's REST API does."""
    codec = AvroCodec(registry.url)
    sid = codec.register(CONNECTIONS)
    base = registry.url
    assert f"{CONNECTIONS}-value" in httpx.get(f"{base}/subjects").json()
    latest = httpx.get(f"{base}/subjects/{CONNECTIONS}-value/versions/latest").json()
    assert latest["id"] == sid and latest["version"] >= 1
    assert json.loads(httpx.get(f"{base}/schemas/ids/{sid}").json()["schema"])["name"] == "Connection"
    missing = httpx.get(f"{base}/schemas/ids/99999")
    assert missing.status_code == 404 and missing.json()["error_code"] == 40403
    bad = httpx.post(f"{base}/subjects/x-value/versions", json={"schema": "{not json"})
    assert bad.status_code == 422 and bad.json()["error_code"] == 42201
    # registering again is idempotent
    assert codec.register_schema(f"{CONNECTIONS}-value", schema_text("connection")) == sid


def test_a_client_that_resets_its_connection_leaves_no_traceback(capfd) -> None:
    """Workers keep a keep-alive connection to the registry; one killed mid-connection
    resets it. That is normal: nothing on the console (analyze's Ctrl-C prints one line)."""
    import socket
    import struct
    import time

    from wirestream.registry import EmbeddedSchemaRegistry

    with EmbeddedSchemaRegistry() as registry:
        host, port = registry.url.removeprefix("http://").split(":")
        for _ in range(3):
            s = socket.create_connection((host, int(port)))
            s.sendall(b"GET /subjects HTTP/1.1\r\nHost: x\r\n")  # a request cut short
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # RST, not FIN
        time.sleep(0.3)
        assert httpx.get(f"{registry.url}/subjects").status_code == 200  # still serving
    assert "Traceback" not in capfd.readouterr().err


def test_stop_ends_the_registry_at_once() -> None:
    """``stop`` wakes the serving thread rather than waiting for its next poll (which
    every ``analyze`` waited for: up to 50 ms); the port is closed after it, a second
    stop is harmless, and a registry never started stops too."""
    import statistics
    import time
    import urllib.error
    import urllib.request

    import pytest

    from wirestream.registry import EmbeddedSchemaRegistry

    took = []
    for _ in range(5):
        registry = EmbeddedSchemaRegistry().start()
        assert urllib.request.urlopen(registry.url + "/subjects", timeout=5).read() == b"[]"
        started = time.monotonic()
        registry.stop()
        took.append(time.monotonic() - started)
        registry.stop()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(registry.url + "/subjects", timeout=2)
    assert statistics.median(took) < 0.01, took
    EmbeddedSchemaRegistry().stop()
