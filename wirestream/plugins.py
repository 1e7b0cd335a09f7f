"""Plug in your own processor: the ``wirestream.processors`` entry point group.

A plugin is a class that says which wirestream topics it reads and which topics of its
own it writes, with their Avro schemas, and handles one decoded record at a time::

    from wirestream.plugins import Processor

    class SlowRequests(Processor):
        name = "slow-requests"
        inputs = ["wire.transactions"]
        outputs = {"team.slow-requests": {"type": "record", "name": "SlowRequest", "fields": [...]}}

        def process(self, topic, key, record, emit):
            if (record["latency_us"] or 0) > 1_000_000:
                emit("team.slow-requests", key, {...})

registered in its package's ``pyproject.toml``::

    [project.entry-points."wirestream.processors"]
    slow-requests = "my_package.plugin:SlowRequests"

and run with ``wirestream plugin run slow-requests`` (standalone), or inside a processor
worker with ``wirestream process --plugin slow-requests`` (``wirestream plugin list`` shows
what is installed). The runner (:func:`run_plugin`) is a consumer group named after the plugin:
start several for more throughput. It decodes the inputs (undecodable messages are
counted and skipped), registers the output schemas under ``<topic>-value`` and encodes
with them (Confluent wire format, like every wirestream topic), and commits its input
offsets only after what it emitted for them is delivered: at least once.
``examples/slow_requests`` is a complete plugin with its own test.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, ClassVar

from confluent_kafka import Consumer, KafkaException

from wirestream.codec import AvroCodec
from wirestream.errors import DecodeError, RegistryError, WirestreamError
from wirestream.kafka import WireProducer, group_consumer_config
from wirestream.kafka_security import raise_if_fatal

ENTRY_POINT_GROUP = "wirestream.processors"
log = logging.getLogger(__name__)

Emit = Callable[[str, str | None, dict[str, Any]], None]

#: Inputs are handled in batches of up to this many records, or what came within this
#: many seconds: the outputs are flushed (and the inputs committed) once per batch.
BATCH_RECORDS, BATCH_WAIT_S = 500, 0.5


class Processor:
    """Base class of plugins (subclassing it is optional: the attributes and ``process``
    are what the runner uses)."""

    name: ClassVar[str] = ""
    inputs: ClassVar[list[str]] = []
    outputs: ClassVar[dict[str, dict[str, Any]]] = {}  # topic -> Avro record schema

    def process(self, topic: str, key: str | None, record: dict[str, Any], emit: Emit) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Called when the runner stops (flush your own state here)."""


class PluginError(WirestreamError):
    """A plugin that cannot be found, loaded or run."""


def installed() -> dict[str, Any]:
    """Installed plugins: entry point name -> entry point."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load(name: str) -> Processor:
    eps = installed()
    if name not in eps:
        have = ", ".join(sorted(eps)) or "none"
        raise PluginError(f"no plugin {name!r} in entry point group {ENTRY_POINT_GROUP} (installed: {have})")
    try:
        factory = eps[name].load()
        plugin = factory()
    except Exception as exc:
        raise PluginError(f"plugin {name!r} does not load: {type(exc).__name__}: {exc}") from None
    if not getattr(plugin, "inputs", None) or not callable(getattr(plugin, "process", None)):
        raise PluginError(f"plugin {name!r} has no inputs or no process(topic, key, record, emit)")
    return plugin  # type: ignore[no-any-return]


def plugin_emit(plugin: Processor, codec: AvroCodec, producer: WireProducer,
                counters: Counter[str] | None = None) -> Emit:
    """The ``emit`` handed to ``plugin.process``: encodes a record with the schema of one of
    the plugin's declared outputs (registered here) and produces it (to be flushed by the
    caller). Emitting to any other topic is a :class:`PluginError`. ``counters`` counts
    ``emitted.<topic>``."""
    encoders = {topic: codec.encoder_for_schema(topic, schema) for topic, schema in plugin.outputs.items()}

    def emit(topic: str, key: str | None, record: dict[str, Any]) -> None:
        encode = encoders.get(topic)
        if encode is None:
            raise PluginError(f"plugin {plugin.name!r} emitted to {topic!r}, which is not in its outputs")
        producer.produce(topic, encode(record), key.encode() if key is not None else None)
        if counters is not None:
            counters[f"emitted.{topic}"] += 1

    return emit


def check_delivered(plugin: Processor, producer: WireProducer, timeout: float = 30.0) -> None:
    """Wait until what ``plugin`` emitted is delivered; raise :class:`PluginError` if some of
    it was not (its inputs must then not be committed: at least once)."""
    producer.flush(timeout)
    if producer.delivery_errors:
        raise PluginError(f"plugin {plugin.name!r}: outputs not delivered: {dict(producer.delivery_errors)}")


def run_plugin(plugin: Processor, bootstrap: str, registry: str, stop: Callable[[], bool],
               group: str | None = None, from_beginning: bool = True, partitions: int = 4) -> Counter[str]:
    """Run ``plugin`` until ``stop()``; return its counters. Its output topics are created
    (``partitions`` each) if they do not exist."""
    from wirestream.broker import ensure_topics

    ensure_topics(bootstrap, list(plugin.outputs), partitions)  # a plugin's own topics: ours to create
    codec = AvroCodec(registry)
    counters: Counter[str] = Counter()
    consumer = Consumer(group_consumer_config(bootstrap, group or f"wirestream-plugin-{plugin.name}",
                                              from_beginning))
    producer = WireProducer(bootstrap, **{"linger.ms": 20})
    emit = plugin_emit(plugin, codec, producer, counters)

    consumer.subscribe(list(plugin.inputs))
    try:
        while not stop():
            msgs = consumer.consume(BATCH_RECORDS, BATCH_WAIT_S)
            for msg in msgs:
                if msg.error():
                    raise_if_fatal(msg.error(), f"plugin {plugin.name} reading {', '.join(plugin.inputs)}")
                    continue
                if msg.value() is None:
                    continue
                try:
                    record = codec.decode(msg.value())
                except (DecodeError, RegistryError) as exc:
                    counters["undecodable"] += 1
                    log.warning("plugin %s: skipping %s/%d@%d: %s", plugin.name, msg.topic(), msg.partition(),
                                msg.offset(), exc)
                    continue
                key = msg.key().decode(errors="replace") if msg.key() is not None else None
                plugin.process(msg.topic(), key, record, emit)
                counters[f"received.{msg.topic()}"] += 1
            if msgs:
                # At least once: inputs are committed once their outputs are delivered.
                check_delivered(plugin, producer)
                try:
                    consumer.commit(asynchronous=False)
                except KafkaException:
                    counters["commit_failures"] += 1  # a rebalance: the inputs come again
    finally:
        plugin.close()
        producer.flush(30)
        consumer.close()
    return counters
