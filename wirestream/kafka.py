"""One place for how wirestream talks to Kafka: client settings, the producer every stage
uses, and the topics a worker needs.

``wirestream.broker`` runs the embedded broker and holds the low-level admin calls
(``broker.ensure_topics`` creates a list of topics); this module holds the client side.

:class:`WireProducer` is the only place that knows what to do when the client's queue is
full (wait for the broker, then retry: backpressure, never a dropped record) and how a
failed delivery is counted (``broker_<error name>``, a drop reason on ``wire.stats``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException, Producer

from wirestream import broker
from wirestream.config import IDEMPOTENCE_ENV
from wirestream.errors import WirestreamError
from wirestream.kafka_security import access_error, client_properties, is_fatal

__all__ = ["ANY_PARTITION", "COMPRESSIONS", "COMPRESSION_ENV", "DEFAULT_COMPRESSION", "ProcessTopics", "WireProducer",
           "add_counts", "compression", "consumer_config", "ensure_process_topics", "group_consumer_config",
           "producer_config"]

#: librdkafka's "no partition given: let the partitioner choose" (RD_KAFKA_PARTITION_UA).
ANY_PARTITION = -1

#: The environment variable that chooses how wirestream's producers compress their record
#: batches (wire.packets above all: the payload bytes of every packet), unless a producer
#: asks for its own codec (output records: lz4; checkpoints: zstd).
COMPRESSION_ENV = "WIRESTREAM_COMPRESSION"
#: The codecs every client wirestream uses reads: librdkafka natively, aiokafka (Faust)
#: through cramjam; the embedded broker and Apache Kafka store batches as they come.
COMPRESSIONS = ("none", "lz4", "zstd", "gzip", "snappy")
#: zstd, measured with ``bench/bench_analyze.py --no-analyze --compression none,lz4,zstd
#: --rounds 2`` on the 300,000-packet HTTP capture (bench/README.md): the embedded broker's
#: memory halves (635 -> 317 MB: it keeps every batch as it came) and its CPU drops by 38 %
#: (14.1 -> 8.7 µs per packet) for 0.9 µs more per packet in the producer; lz4 saves less
#: on both (446 MB, 11.1 µs) for the same producer CPU. The consumers' decompression did
#: not show in the packet workers' CPU.
DEFAULT_COMPRESSION = "zstd"


def compression() -> str:
    """The codec of wirestream's producers: ``$WIRESTREAM_COMPRESSION`` (one of
    :data:`COMPRESSIONS`), else :data:`DEFAULT_COMPRESSION`.

    Raises ``WirestreamError`` for a codec not in :data:`COMPRESSIONS`, at start rather
    than as librdkafka's error on the first produce."""
    value = os.environ.get(COMPRESSION_ENV, "").strip().lower()
    if not value:
        return DEFAULT_COMPRESSION
    if value not in COMPRESSIONS:
        raise WirestreamError(f"${COMPRESSION_ENV}={value!r}: not one of {', '.join(COMPRESSIONS)}")
    return value


def idempotence() -> bool:
    """Whether wirestream's producers are idempotent: yes, unless ``$WIRESTREAM_IDEMPOTENCE`` is ``0``."""
    return os.environ.get(IDEMPOTENCE_ENV, "").strip() != "0"


#: The client id of wirestream's own Kafka clients: brokers' logs and quotas name them by it,
#: and wire.messaging marks their calls ``own_traffic`` (processors/l7/kafka.py).
CLIENT_ID = "wirestream"


#: see consumer_config (librdkafka's default: 1,000 ms)
FETCH_QUEUE_BACKOFF_MS = 20


def consumer_config(bootstrap: str) -> dict[str, Any]:
    """A consumer that joins no group: it is assigned partitions (readers, replay).

    Every client configuration here carries the Kafka security settings
    (:func:`wirestream.kafka_security.client_properties`: TLS, SASL, the
    ``--kafka-config`` file) on top of wirestream's defaults; what a caller passes as
    ``extra`` still wins."""
    return {
        "bootstrap.servers": bootstrap,
        "client.id": CLIENT_ID,
        "group.id": "wirestream-reader",  # required by the client; no group is joined (assign)
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 500,
        # librdkafka (2.1+) postpones a partition's next fetch by this much when the
        # client's local queue is over its bounds (queued.max.messages.kbytes, 64 MB):
        # 1 s by default, which left analyze's reader idle for up to a second once it had
        # drained a burst of big transaction records. The bounds still hold; the reader
        # just asks again soon after it has made room.
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        "log_level": 3,
        "log.connection.close": False,
        **client_properties(),
    }


def group_consumer_config(bootstrap: str, group: str, from_beginning: bool, **extra: Any) -> dict[str, Any]:
    """A consumer that joins consumer group ``group`` (subscriptions, sinks, plugins).
    Offsets are committed by the caller (``enable.auto.commit`` off unless ``extra`` says
    otherwise); a new group starts at the oldest record or the newest."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap, "group.id": group, "client.id": CLIENT_ID,
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "enable.auto.commit": False,
        # a member that stops is noticed within 10 s (and a join does not wait longer)
        "session.timeout.ms": 10_000, "heartbeat.interval.ms": 2_000,
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,  # as consumer_config's
        "log_level": 3, "log.connection.close": False,
        **client_properties(),
    }
    conf.update(extra)
    return conf


def producer_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """confluent-kafka producer settings shared by every wirestream producer; ``extra``
    (librdkafka names) adds to them or overrides them.

    Record batches are compressed with :func:`compression` (``$WIRESTREAM_COMPRESSION``):
    the packet producers' batches are most of what crosses the broker and what the
    embedded one keeps in memory."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": CLIENT_ID,
        "compression.type": compression(),
        "linger.ms": 5,
        # Idempotence keeps each partition's records in the order they were produced, and
        # without repeats, when a leader dies and librdkafka retries on the next one:
        # without it, records queued while a leader was down were seen written after later
        # ones (tests/test_kafka_cluster.py's killed-broker test). Kafka >= 3.0 lets any
        # principal that may write a topic be idempotent (no cluster IdempotentWrite ACL).
        "enable.idempotence": idempotence(),
        "max.in.flight.requests.per.connection": 5,  # librdkafka's default; the most idempotence allows
        # Connected to every broker as soon as they are known, not only to the ones it
        # needs when it first needs them. An idempotent producer's first delivery waits
        # for its producer id, which librdkafka asks for after a metadata response, else
        # at a 500 ms retry timer. With sparse connections the bootstrap connection is
        # closed as soon as the brokers are known (no broker up: the id waits for the
        # timer), nothing connects another before a record is queued, and the id came
        # two timer rounds (~1 s) after the start; a broker connected at once asks for
        # metadata, and its answer brings the id (`produce pcap` of a 3,764-packet
        # capture: 1.2 -> 0.3 s; docs/kafka.md).
        "enable.sparse.connections": False,
        "message.max.bytes": 4 * 1024 * 1024,
        # Bounded client memory: what is queued for the broker is held uncompressed. 32 MiB
        # holds ~40 full packet batches. The compiled producer outruns the embedded broker
        # and fills the queue: `produce pcap` of the 449 MB bench capture peaked at 330 MB
        # with 256 MiB, 270 MB with 64 and 223 MB with 16, in the same 1.3-2.6 s.
        "queue.buffering.max.kbytes": 32 * 1024,
        "message.timeout.ms": 60_000,
        "log.connection.close": False,  # an idle connection closed by the broker is not news
        "log_level": 4,  # warnings and errors; not librdkafka's informational notices
        **client_properties(),
    }
    conf.update(extra)
    return conf


class _NotFatal(logging.Filter):
    """Drops librdkafka's FATAL log line: :class:`WireProducer` raises that error itself,
    as one line that says what was being written (``KafkaAccessError``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.args and record.args[0] == "FATAL")


def _librdkafka_log() -> logging.Logger:
    """Where a :class:`WireProducer`'s librdkafka log lines go: stderr, as librdkafka
    would print them (``%<syslog level>|<facility>|<client>| <message>``), but for FATAL."""
    log = logging.getLogger("wirestream.librdkafka")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s|%(message)s"))
        handler.addFilter(_NotFatal())
        log.addHandler(handler)
        log.propagate = False  # an application's root handlers do not print them twice
        log.setLevel(logging.DEBUG)  # the client's log_level chooses what comes
    return log


_LIBRDKAFKA_LOG = _librdkafka_log()


class BrokerGone(WirestreamError):
    """A producer waiting for the broker learnt that the broker is gone for good."""


class WireProducer:
    """A confluent-kafka producer that waits when full and counts failed deliveries.

    - **backpressure**: when the client's queue is full (``BufferError``), :meth:`produce`
      serves delivery reports for 50 ms and retries, until the record is queued; each
      wait is counted in :attr:`backpressure_waits`;
    - **delivery errors** are counted by reason in :attr:`delivery_errors`, as
      ``broker_<librdkafka error name>``, and :meth:`flush` counts what it could not
      deliver in time; :meth:`take_delivery_errors` hands them over for a stats report.

    Delivery reports come for failures only (``delivery.report.only.error``): the callback
    only counts errors, and one Python call per delivered record would cost more than the
    produce call itself. Callers poll (:meth:`poll`) as often as fits them: once per
    record, per batch, per read from the kernel.
    """

    def __init__(self, bootstrap: str, alive: Callable[[], str | None] | None = None, **config: Any) -> None:
        """``config``: librdkafka settings on top of :func:`producer_config`'s.

        ``alive``: asked while this producer waits for the broker (a full queue, a flush);
        a message from it means the broker will never answer (the embedded broker exited):
        the wait ends with :class:`BrokerGone` instead of lasting until its timeout, or
        forever for a full queue."""
        conf = producer_config(bootstrap, **{"delivery.report.only.error": True, "logger": _LIBRDKAFKA_LOG,
                                             **config})
        try:
            self._producer = Producer(conf)
        except TypeError as exc:
            # A Ctrl-C that lands while confluent-kafka reads its configuration runs the
            # command's handler (commands.common.interrupt_once: it raises KeyboardInterrupt
            # and ignores SIGINT from then on) inside that C code, which reports it as
            # "expected configuration property name as type unicode string". It is the
            # interrupt: raise it as such (our keys are always strings).
            if "configuration property name" in str(exc) and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
                raise KeyboardInterrupt from None
            raise
        self._alive = alive
        self.delivery_errors: Counter[str] = Counter()
        self.backpressure_waits = 0  # times the client's full queue made us wait
        errors = self.delivery_errors
        # A refusal no retry can fix (an ACL, authentication): raised by the next poll or
        # flush, so that a producer without the right to write stops with one clear line
        # instead of counting every record it ever sends as undelivered.
        self._refused: list[tuple[KafkaError, str]] = []
        refused = self._refused
        # The topic of the first record that failed: what a fatal error (below) stopped.
        self._failed_topic: list[str] = []
        failed_topic = self._failed_topic

        def on_delivery(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                errors[f"broker_{err.name().lower()}"] += 1
                if not refused and is_fatal(err):
                    refused.append((err, msg.topic()))
                if not failed_topic:
                    failed_topic.append(msg.topic())

        # Bound once: these run per record. The delivery callback is a closure, not a bound
        # method kept on self: that would be a reference cycle, and the client (with its
        # connections and their retries) would live on until a cyclic GC, past the broker
        # it talks to (librdkafka then logs "Connection refused" after a command's output).
        self._produce = self._producer.produce
        self._deliver = on_delivery

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                partition: int = ANY_PARTITION, headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one record (``value`` None: a tombstone); wait for room if the queue is full."""
        try:
            # Positional: the per-record path (the order of confluent-kafka's produce()).
            if headers is None:
                self._produce(topic, value, key, partition, self._deliver)
            else:
                self._produce(topic, value, key, partition, self._deliver, headers=headers)
        except BufferError:
            self._produce_when_room(topic, value, key, partition, headers)

    def _produce_when_room(self, topic: str, value: bytes | None, key: bytes | None, partition: int,
                           headers: list[tuple[str, bytes]] | None) -> None:
        while True:
            # The client's queue is full: serve delivery reports while the broker catches up.
            self.backpressure_waits += 1
            self._client_call(self._producer.poll, 0.05)
            if self._refused:
                self._raise_refused()
            self._check_alive()
            try:
                self._produce(topic, value, key, partition, self._deliver, headers=headers)
                return
            except BufferError:
                continue

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports (and wait up to ``timeout`` seconds for one).

        Raises :class:`~wirestream.kafka_security.KafkaAccessError` once a delivery was
        refused for good (no ACL to write the topic, authentication failed)."""
        served = int(self._client_call(self._producer.poll, timeout))
        if self._refused:
            self._raise_refused()
        return served

    def _client_call(self, call: Callable[[float], int], timeout: float) -> int:
        """``call(timeout)`` (the client's poll or flush), a fatal error raised as
        :class:`~wirestream.kafka_security.KafkaAccessError`.

        Fatal errors are the idempotent producer's (the right to write no topic at all, a
        fenced producer id): confluent-kafka raises them from poll and flush as
        ``KafkaException``, even with an ``error_cb``, and when that happens while it
        serves delivery reports, the next report's callback fails with a ``SystemError``
        whose cause is that exception."""
        try:
            return call(timeout)
        except KafkaException as exc:
            raise self._fatal(exc) from None
        except SystemError as exc:
            if isinstance(exc.__cause__, KafkaException):
                raise self._fatal(exc.__cause__) from None
            raise

    def _fatal(self, exc: KafkaException) -> Exception:
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if err is None or not err.fatal():
            return exc
        topic = self._refused[0][1] if self._refused else (self._failed_topic[0] if self._failed_topic else None)
        return access_error(err, f"writing to {topic}" if topic else "producing")

    def _raise_refused(self) -> None:
        err, topic = self._refused[0]
        raise access_error(err, f"writing to {topic}")

    def flush(self, timeout: float = 60.0, undelivered: str = "broker_undelivered") -> int:
        """Wait until everything queued is delivered (or failed); return how many records
        were still undelivered after ``timeout`` seconds, counted as ``undelivered``."""
        remaining = self._flush(timeout)
        if remaining:
            self.delivery_errors[undelivered] += remaining
        return remaining

    def _flush(self, timeout: float) -> int:
        if self._alive is None:
            remaining = int(self._client_call(self._producer.flush, timeout))
            if self._refused:
                self._raise_refused()
            return remaining
        deadline = time.monotonic() + timeout
        while True:  # in slices, asking ``alive`` in between
            remaining = int(self._client_call(self._producer.flush, min(0.5, max(0.0, deadline - time.monotonic()))))
            if self._refused:
                self._raise_refused()
            if not remaining or time.monotonic() >= deadline:
                return remaining
            self._check_alive()

    def _check_alive(self) -> None:
        if self._alive is not None and (gone := self._alive()):
            raise BrokerGone(gone)

    def pending(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for everything queued to be delivered; return how
        many records are still on their way. Unlike :meth:`flush`, counts nothing as lost:
        for a caller that waits again (a worker that may not checkpoint before its output
        is delivered)."""
        return self._flush(timeout)

    def take_delivery_errors(self) -> Counter[str]:
        """The delivery errors counted since the last call (so that each goes into one
        stats report, and reports can be summed)."""
        errors = Counter(self.delivery_errors)
        self.delivery_errors.clear()  # the same Counter: the delivery callback holds it
        return errors


def add_counts(into: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
    """Add ``counts`` to ``into`` key by key (a key in both is summed, not overwritten);
    return ``into``. Zero counts already in ``into`` stay."""
    for name, n in counts.items():
        into[name] = into.get(name, 0) + n
    return into


Role = Literal["all", "packets", "windows"]


@dataclass(frozen=True)
class ProcessTopics:
    """The partition counts a ``process`` worker is built with (read back from the broker)."""

    packet_partitions: int
    observation_partitions: int


def ensure_process_topics(bootstrap: str, partitions: int, *, group: str, role: Role = "all",
                          plugins: Sequence[str] = (), replication_factor: int | None = None) -> ProcessTopics:
    """Create the topics a ``wirestream process`` worker needs and return their partition counts.

    Missing topics are created with ``partitions`` partitions; an operator's existing ones
    are left as they are, so the counts returned are the broker's, not ``partitions``.
    ``plugins`` are plugin names whose declared outputs are created too; ``group`` names
    the windows' changelog topic (created unless ``role`` is ``"packets"``). New topics get
    ``replication_factor`` replicas (as :func:`wirestream.broker.ensure_topics`: None is
    ``$WIRESTREAM_REPLICATION_FACTOR``, -1 the broker's default).

    Raises ``WirestreamError`` when wire.sockets, wire.drops or wire.tls-plaintext and
    wire.packets have different partition counts (socket events, drops and TLS plaintext
    are joined to packets partition by partition).
    """
    # Imported here: processors.app imports processors.output, which imports this module.
    from wirestream.processors.app import changelog_topic
    from wirestream.topics import ALL_TOPICS, DROPS, OBSERVATIONS, PACKETS, SOCKETS, TLS_PLAINTEXT

    broker.ensure_topics(bootstrap, ALL_TOPICS, partitions, replication_factor=replication_factor)
    if plugins:
        from wirestream.plugins import load

        for name in plugins:  # a plugin's own topics: ours to create too
            broker.ensure_topics(bootstrap, list(load(name).outputs), partitions,
                                 replication_factor=replication_factor)
    packet_partitions = broker.partition_count(bootstrap, PACKETS)
    if role != "windows":
        # The packet workers join wire.sockets, wire.drops and wire.tls-plaintext to
        # wire.packets partition by partition: the range assignor gives one worker the
        # same partition of each only if their counts are equal.
        for topic, what in ((SOCKETS, "socket events"), (DROPS, "kernel drops"), (TLS_PLAINTEXT, "TLS plaintext")):
            broker.ensure_topics(bootstrap, [topic], packet_partitions, replication_factor=replication_factor)
            partitions_of = broker.partition_count(bootstrap, topic)
            if partitions_of != packet_partitions:
                raise WirestreamError(
                    f"{topic} has {partitions_of} partitions and {PACKETS} {packet_partitions}: "
                    f"they must be equal ({what} are joined to packets partition by partition)")
    observation_partitions = broker.partition_count(bootstrap, OBSERVATIONS)
    if role != "packets":
        # Faust does not create topics here (topic_allow_declare=False): the windows'
        # changelog is ours to create, with one partition per observation partition.
        broker.ensure_topics(bootstrap, [changelog_topic(group)], observation_partitions,
                             replication_factor=replication_factor)
    return ProcessTopics(packet_partitions=packet_partitions, observation_partitions=observation_partitions)
