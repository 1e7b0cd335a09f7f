"""Read and decode wirestream topics without joining a consumer group.

Used by ``analyze`` (to wait for the processors' end-of-input reports and collect the
output records) and by ``tail``. Partitions are assigned explicitly, so reading starts at
once (a group join costs seconds) and several readers never steal partitions from each
other.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

from wirestream.broker import admin_client, consume_available
from wirestream.codec import AvroCodec
from wirestream.errors import DecodeError, RegistryError
from wirestream.kafka import consumer_config
from wirestream.kafka_security import raise_if_fatal


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    record: dict[str, Any] | None  # None when the value could not be decoded
    error: str | None = None
    #: the message's bytes, when the reader was asked for them (``raw``)
    value: bytes | None = None


def decode_message(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                   decode: Callable[[bytes | None], dict[str, Any]], raw: bool) -> Message:
    """A :class:`Message` of ``value`` decoded by ``decode``; a value that cannot be
    decoded is a message without a record, with the reason (``error``)."""
    record = error = None
    try:
        record = decode(value)
    except (DecodeError, RegistryError) as exc:
        error = str(exc)
    return Message(topic, partition, offset, key, record, error, value if raw else None)


def partitions_of(bootstrap: str, topics: Iterable[str], timeout: float = 10.0) -> list[TopicPartition]:
    """Every partition of ``topics`` that the brokers know; a topic they do not know has none."""
    md = admin_client(bootstrap).list_topics(timeout=timeout)
    out = []
    for t in topics:
        meta = md.topics.get(t)
        if meta is not None and meta.error is None:
            out.extend(TopicPartition(t, p) for p in sorted(meta.partitions))
    return out


def unknown_topic_message(bootstrap: str, topic: str, timeout: float = 10.0) -> str:
    """What to tell a user who asked for ``topic``, which the brokers do not have: the
    names they do have that look like it (a typo), else wirestream's topics there."""
    have = sorted(t for t in admin_client(bootstrap).list_topics(timeout=timeout).topics if not t.startswith("__"))
    close = difflib.get_close_matches(topic, have, n=3, cutoff=0.6)
    if close:
        return f"no topic {topic} at {bootstrap}; did you mean {' or '.join(close)}?"
    wire = [t for t in have if t.startswith("wire.")]
    return f"no topic {topic} at {bootstrap} (its wirestream topics: {', '.join(wire) or 'none'})"


#: what a broker answers about a partition whose leader it does not know yet: a topic just
#: created (Apache Kafka elects its leaders a moment later), or a leader that moved
_NOT_YET = frozenset({"NOT_LEADER_FOR_PARTITION", "LEADER_NOT_AVAILABLE", "UNKNOWN_TOPIC_OR_PART",
                      "NOT_LEADER_OR_FOLLOWER", "_UNKNOWN_PARTITION"})


def end_offsets(bootstrap: str, topics: Iterable[str], timeout: float = 10.0) -> dict[tuple[str, int], int]:
    """Current end offset of every partition (where a reader starting 'now' begins).

    A partition without a known leader yet is asked again until ``timeout`` seconds have
    passed (then its error is raised)."""
    consumer = Consumer(consumer_config(bootstrap))
    deadline = time.monotonic() + timeout
    try:
        result = {}
        for tp in partitions_of(bootstrap, topics, timeout):
            while True:
                try:
                    _low, high = consumer.get_watermark_offsets(tp, timeout=max(0.5, deadline - time.monotonic()))
                    break
                except KafkaException as exc:
                    raise_if_fatal(exc.args[0], f"reading the end of {tp.topic}")
                    if exc.args[0].name() not in _NOT_YET or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            result[(tp.topic, tp.partition)] = high
        return result
    finally:
        consumer.close()


class TopicReader:
    """Assign partitions at given offsets (or beginning/end) and yield decoded messages.

    ``poll`` returns what has arrived as soon as one message has (``consume_available``),
    not after its whole timeout: ``analyze`` sees its last final report tens of
    milliseconds after it is written. ``fetch_wait_ms`` bounds how long the broker holds a
    fetch for data (``fetch.wait.max.ms``): ``analyze`` reads with 50, so that a record
    written just after a fetch started is not held for the default 500 ms.

    ``fields`` (topic -> field names) decodes only those fields of that topic's records
    (:meth:`wirestream.codec.AvroCodec.decoder`): the others are skipped, not built."""

    def __init__(
        self,
        bootstrap: str,
        codec: AvroCodec,
        topics: Iterable[str],
        start: dict[tuple[str, int], int] | str = "beginning",
        fetch_wait_ms: int = 500,
        fields: dict[str, frozenset[str]] | None = None,
        raw: bool = False,
    ) -> None:
        """``fields`` (topic -> names): the records of those topics hold only those fields;
        ``raw``: each message also carries its bytes (``Message.value``)."""
        self.codec = codec
        self._raw = raw
        self._consumer = Consumer({**consumer_config(bootstrap), "fetch.wait.max.ms": fetch_wait_ms})
        self._decoders = {t: codec.decoder(f) for t, f in (fields or {}).items()}
        assignment = []
        topics = list(topics)
        found = partitions_of(bootstrap, topics)
        #: the topics asked for that the brokers do not have (nothing is read from them)
        self.missing: list[str] = [t for t in topics if not any(tp.topic == t for tp in found)]
        for tp in found:
            if isinstance(start, dict):
                tp.offset = start.get((tp.topic, tp.partition), OFFSET_BEGINNING)
            else:
                tp.offset = OFFSET_END if start == "end" else OFFSET_BEGINNING
            assignment.append(tp)
        self._consumer.assign(assignment)

    def poll(self, timeout: float = 0.2, max_messages: int = 1000) -> list[Message]:
        """The messages that have arrived, up to ``max_messages``, waiting up to ``timeout``
        seconds for the first one (an empty list: none came)."""
        out = []
        decode = self.codec.decode
        decoders = self._decoders
        raw = self._raw
        for msg in consume_available(self._consumer, max_messages, timeout):
            if msg.error():
                raise_if_fatal(msg.error(), f"reading {msg.topic()}")
                continue  # transient fetch errors are retried by the client
            topic = msg.topic()
            out.append(decode_message(topic, msg.partition(), msg.offset(), msg.key(), msg.value(),
                                      decoders.get(topic, decode), raw))
        return out

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
