"""Subscribe to wirestream topics from Python: decoded records, consumer-group semantics.

    from wirestream.client import subscribe, where

    with subscribe(["wire.transactions"], group="payments-oncall",
                   bootstrap="kafka:9092", registry="http://registry:8081",
                   where=where("status>=500", "method==POST")) as records:
        for r in records:                      # Record(topic, partition, offset, key, value, ...)
            print(r.value["server_service"], r.value["status"], r.value["path"])

- **Groups**: subscriptions with the same ``group`` share the topics' partitions, as
  Kafka consumers do; each group gets every record once.
- **At least once**: a record's offset is committed only after the loop has asked for the
  next record (or on :meth:`Subscription.commit`/close), so a consumer that crashes
  while handling a record gets it again. ``commit()`` and close commit exactly the
  records handed out so far (the one in hand included), never ones fetched but not yet
  reached by the loop.
- **Bad records** (not Avro, unknown schema) are not raised: they come with ``value``
  None and ``error`` set, and the subscription goes on; filters skip them.

``bootstrap`` and ``registry`` default to ``WIRESTREAM_BOOTSTRAP`` and
``WIRESTREAM_REGISTRY``. Topics and their schemas: README.md, "Topics".
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from wirestream.codec import AvroCodec
from wirestream.errors import DecodeError, RegistryError, UsageError
from wirestream.kafka import group_consumer_config
from wirestream.kafka_security import raise_if_fatal

Predicate = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: str | None
    value: dict[str, Any] | None
    timestamp_ms: int
    error: str | None = None


# --- filters --------------------------------------------------------------------------------

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, "!=": operator.ne, "==": operator.eq,
    ">": operator.gt, "<": operator.lt, "=": operator.eq,
    "~": lambda field, pattern: re.search(pattern, str(field)) is not None,
}
_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(>=|<=|!=|==|=|>|<|~)\s*(.*?)\s*$")


def _literal(text: str) -> Any:
    if text in ("null", "none", "None"):
        return None
    if text in ("true", "false"):
        return text == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip("\"'")


def condition(text: str) -> Predicate:
    """``field OP value``: OP one of == != >= <= > < (= is ==) and ~ (regular expression
    search). ``field`` may be dotted into a map (``request_headers.host``). A record without
    the field, or whose field cannot be compared with the value, does not match."""
    m = _CONDITION.match(text)
    if not m:
        raise UsageError(f"cannot read the condition {text!r}: expected FIELD OP VALUE, "
                         "OP one of == != >= <= > < ~ (e.g. status>=500, method==POST, path~^/api)")
    field, op, raw = m.groups()
    compare, value = _OPS[op], _literal(raw) if op != "~" else raw
    if op == "~":
        try:
            re.compile(raw)
        except re.error as exc:
            raise UsageError(f"bad regular expression in {text!r}: {exc}") from None
    path = field.split(".")

    def test(record: dict[str, Any]) -> bool:
        current: Any = record
        for part in path:
            if not isinstance(current, dict) or part not in current:
                return False
            current = current[part]
        if current is None and value is not None and op not in ("!=", "~"):
            return False
        try:
            return bool(compare(current, value))
        except TypeError:
            return False

    return test


def service_is(service: str) -> Predicate:
    """Records of one service, named as the windows name it (``namespace/name`` of the
    Kubernetes service or workload, else the server's ``ip:port``); service records by
    their ``service`` field."""
    from wirestream.processors.observations import service_of

    def test(record: dict[str, Any]) -> bool:
        if "service" in record:
            return record["service"] == service
        if "server_ip" in record:
            return service_of(record) == service or record.get("server_service") == service
        return False

    return test


def where(*conditions: str, service: str | None = None) -> Predicate:
    """All of ``conditions`` (and the service, if given)."""
    tests = [condition(c) for c in conditions]
    if service:
        tests.append(service_is(service))
    return lambda record: all(t(record) for t in tests)


# --- subscriptions ----------------------------------------------------------------------------

class Subscription:
    """Decoded records of ``topics`` for consumer group ``group``; iterate it (or call
    :meth:`poll`). What is committed is what has been handed out: by the iterator, each
    record as it is yielded; by :meth:`poll`, its whole batch."""

    def __init__(self, topics: Iterable[str], group: str, bootstrap: str | None = None,
                 registry: str | None = None, from_beginning: bool = False,
                 where: Predicate | None = None) -> None:
        bootstrap = bootstrap or os.environ.get("WIRESTREAM_BOOTSTRAP")
        registry = registry or os.environ.get("WIRESTREAM_REGISTRY")
        if not bootstrap or not registry:
            raise UsageError("subscribe needs bootstrap and registry (or WIRESTREAM_BOOTSTRAP and "
                             "WIRESTREAM_REGISTRY)")
        self.topics = list(topics)
        self.codec = AvroCodec(registry)
        self.where = where
        # offsets are stored when the caller has taken a record, and committed from there
        self._consumer = Consumer(group_consumer_config(
            bootstrap, group, from_beginning, **{"enable.auto.commit": True, "enable.auto.offset.store": False}))
        self._consumer.subscribe(self.topics)
        # (topic, partition) -> the offset after the last record handed out, not yet stored.
        # Kept per record rather than per batch: a batch is fetched whole but handed out one
        # record at a time, and committing its end would commit records never reached.
        self._handed: dict[tuple[str, int], int] = {}
        self._in_hand: Record | None = None  # the record the caller's loop is handling

    def poll(self, timeout: float = 1.0, max_records: int = 500) -> list[Record]:
        """Records that arrived within ``timeout`` (possibly none), filtered. Taking them
        marks the previous batch as handled; the batch returned counts as handed out."""
        out, ends = self._fetch(timeout, max_records)
        self._handed.update(ends)
        return out

    def _fetch(self, timeout: float, max_records: int) -> tuple[list[Record], dict[tuple[str, int], int]]:
        """The next batch, filtered, and per partition the offset after its last message
        (filtered out ones included, so a partition whose records all fail the filter still
        moves on). Stores what was handed out before: the caller is asking for more."""
        self._store_handed()
        out = []
        ends: dict[tuple[str, int], int] = {}
        for msg in self._consumer.consume(max_records, timeout):
            if msg.error():
                raise_if_fatal(msg.error(), f"subscribing to {', '.join(self.topics)}")
                continue
            ends[(msg.topic(), msg.partition())] = msg.offset() + 1
            value, error = None, None
            if msg.value() is not None:
                try:
                    value = self.codec.decode(msg.value())
                except (DecodeError, RegistryError) as exc:
                    error = str(exc)
            if self.where is not None and (value is None or not self.where(value)):
                continue
            key = msg.key().decode(errors="replace") if msg.key() is not None else None
            out.append(Record(msg.topic(), msg.partition(), msg.offset(), key, value,
                              msg.timestamp()[1], error))
        return out, ends

    def __iter__(self) -> Iterator[Record]:
        handed = self._handed  # the same dict throughout: _store_handed clears, never rebinds
        while True:
            batch, ends = self._fetch(1.0, 500)
            for record in batch:
                handed[(record.topic, record.partition)] = record.offset + 1
                self._in_hand = record
                yield record
            # the loop asked for the record after the batch's last: the whole batch, the
            # messages the filter skipped after it included, is handled
            handed.update(ends)

    def _store_handed(self) -> None:
        if self._handed:
            offsets = [TopicPartition(topic, partition, offset)
                       for (topic, partition), offset in self._handed.items()]
            self._handed.clear()
            try:
                self._consumer.store_offsets(offsets=offsets)
            except KafkaException:
                pass  # the partition moved to another member: it will redeliver

    def commit(self) -> None:
        """Commit now what has been handed out (otherwise: every 5 s, and at close)."""
        self._store_handed()
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException:
            pass  # nothing to commit yet

    def close(self) -> None:
        self.commit()
        self._consumer.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        record = self._in_hand
        if exc_type is not None and record is not None:
            # The loop's body failed on the record in hand: it was not handled, so it is
            # not committed and comes again (to this group's next member, or after a restart).
            self._handed[(record.topic, record.partition)] = record.offset
        self.close()


def subscribe(topics: Iterable[str], group: str, bootstrap: str | None = None, registry: str | None = None,
              from_beginning: bool = False, where: Predicate | None = None) -> Subscription:
    """A :class:`Subscription`; see the module's documentation."""
    return Subscription(topics, group, bootstrap, registry, from_beginning, where)

