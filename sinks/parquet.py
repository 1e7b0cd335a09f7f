"""Data lake sink: output topics -> Parquet files by topic, date and hour.

    DIR/wire.connections/date=2026-11-27/hour=06/part-<uuid>.parquet

queryable as they are, e.g. with DuckDB::

    SELECT state, count(*) FROM read_parquet('DIR/wire.connections/*/*/*.parquet', hive_partitioning=1)
    GROUP BY state

- **Schema**: the topic's Avro schema, mapped to Arrow (:func:`arrow_schema`), plus
  ``_key`` (the Kafka key), ``_fingerprint`` (see below) and the hive partition columns
  in the path. The date and hour are those of the record's own time (its connection's
  start, the request, ...), UTC.
- **At least once**: a consumer group; offsets are committed only after the file holding
  the records is written (atomically: a temporary file renamed). If writing fails (disk
  full, a mount gone), the sink retries with backoff (1 s doubling to 60 s) and, meanwhile,
  consumes nothing more: what is buffered is bounded.
- **Each record once**: records arrive more than once (at-least-once delivery, a replay
  of the same packets). Each carries a fingerprint (a hash of topic, key and value); the
  sink skips a record whose fingerprint is already in its hour's files (read back the
  first time this process writes to that hour) or already written by it.
- **Dead letters**: a message that cannot be decoded (not wirestream's Avro, unknown
  schema) or converted is sent to ``wire.dead-letter`` with its original topic,
  partition, offset and the reason in headers, and counted; the rest goes on.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from wirestream.schemas import schema_text

from wirestream.codec import AvroCodec
from wirestream.errors import DecodeError, RegistryError
from wirestream.topics import CONNECTIONS, DEAD_LETTER, DNS, TLS, TOPIC_SCHEMAS, TRANSACTIONS

log = logging.getLogger(__name__)

#: the record time that places a record in its date/hour partition
RECORD_TIME = {CONNECTIONS: "start_ts_us", TRANSACTIONS: "request_ts_us", DNS: "query_ts_us",
               TLS: "client_hello_ts_us", "wire.service-metrics": "window_start_ts_us",
               "wire.alerts": "ts_us"}
MAX_BUFFERED = 50_000  # records held before a write is forced


def arrow_schema(avro: dict[str, Any]) -> Any:
    """The Arrow schema of an Avro record schema (the parts wirestream's schemas use)."""
    import pyarrow as pa

    primitive = {"long": pa.int64(), "int": pa.int32(), "double": pa.float64(), "float": pa.float32(),
                 "string": pa.string(), "boolean": pa.bool_(), "bytes": pa.binary()}

    def convert(t: Any) -> Any:
        if isinstance(t, list):  # a union: ["null", X] is a nullable X
            rest = [x for x in t if x != "null"]
            if len(rest) != 1:
                raise ValueError(f"unsupported union {t}")
            return convert(rest[0])
        if isinstance(t, str):
            if t in primitive:
                return primitive[t]
            raise ValueError(f"unsupported type {t}")
        kind = t["type"]
        if kind == "map":
            return pa.map_(pa.string(), convert(t["values"]))
        if kind == "array":
            return pa.list_(convert(t["items"]))
        if kind == "record":
            return pa.struct([pa.field(f["name"], convert(f["type"])) for f in t["fields"]])
        if kind == "enum":
            return pa.string()
        return convert(kind)

    fields = [pa.field(f["name"], convert(f["type"])) for f in avro["fields"]]
    return pa.schema([*fields, pa.field("_key", pa.string()), pa.field("_fingerprint", pa.string())])


def fingerprint(topic: str, key: bytes | None, value: bytes) -> str:
    return hashlib.blake2b(topic.encode() + b"\0" + (key or b"") + b"\0" + value, digest_size=16).hexdigest()


class ParquetSink:
    """Consume ``topics`` as group ``group`` and write them under ``out_dir``."""

    def __init__(self, bootstrap: str, registry: str, out_dir: str | os.PathLike[str], topics: list[str],
                 group: str = "wirestream-sink-parquet", flush_records: int = 10_000,
                 flush_seconds: float = 30.0, from_beginning: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.topics = topics
        self.codec = AvroCodec(registry)
        self.flush_records = min(flush_records, MAX_BUFFERED)
        self.flush_seconds = flush_seconds
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.auto.commit": False,  # committed after each successful write
            "session.timeout.ms": 10_000, "heartbeat.interval.ms": 2_000,
            # waiting out a broken destination can take longer than the default 5 min
            "max.poll.interval.ms": 3_600_000,
            "log_level": 3, "log.connection.close": False,
        })
        self._consumer.subscribe(topics)
        self._dead = Producer({"bootstrap.servers": bootstrap, "log_level": 3})
        self._schemas = {t: arrow_schema(json.loads(schema_text(TOPIC_SCHEMAS[t]))) for t in topics}
        # (topic, date, hour) -> rows; and the offsets they came from
        self._rows: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
        self._buffered = 0
        self._offsets: dict[tuple[str, int], int] = {}
        self._seen: dict[tuple[str, str, str], set[str]] = {}  # fingerprints per hour partition
        self._last_flush = time.monotonic()
        self.written: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()

    # --- consuming ----------------------------------------------------------------------

    def run(self, stop: Callable[[], bool], idle_flush: bool = True) -> None:
        """Consume, write and commit until ``stop()``; then write what is buffered."""
        while not stop():
            self.step()
        self.flush()
        self._consumer.close()
        self._dead.flush(10)

    def step(self, timeout: float = 0.5) -> None:
        for msg in self._consumer.consume(1000, timeout):
            if msg.error():
                continue
            self._take(msg)
        due = time.monotonic() - self._last_flush >= self.flush_seconds
        if self._buffered >= self.flush_records or (due and self._offsets):
            self.flush()

    def _take(self, msg: Any) -> None:
        topic = msg.topic()
        self._offsets[(topic, msg.partition())] = msg.offset() + 1
        value = msg.value()
        if value is None:
            return  # a tombstone: nothing to write
        try:
            record = self.codec.decode(value)
            ts = record.get(RECORD_TIME.get(topic, "ts_us")) or 0
            moment = datetime.datetime.fromtimestamp(ts / 1e6, datetime.UTC)
        except (DecodeError, RegistryError, ValueError, OverflowError, OSError) as exc:
            self._dead_letter(msg, f"{type(exc).__name__}: {exc}")
            return
        key = msg.key()
        record["_key"] = key.decode(errors="replace") if key is not None else None
        record["_fingerprint"] = fingerprint(topic, key, value)
        self._rows[(topic, moment.strftime("%Y-%m-%d"), moment.strftime("%H"))].append(record)
        self._buffered += 1

    def _dead_letter(self, msg: Any, reason: str) -> None:
        self.counters["dead_letters"] += 1
        log.warning("dead letter %s/%d@%d: %s", msg.topic(), msg.partition(), msg.offset(), reason)
        headers = [("topic", msg.topic().encode()), ("partition", str(msg.partition()).encode()),
                   ("offset", str(msg.offset()).encode()), ("error", reason.encode()[:1000])]
        self._dead.produce(DEAD_LETTER, msg.value(), key=msg.key(), headers=headers)
        self._dead.poll(0)

    # --- writing ------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every buffered partition (retrying until it works), then commit."""
        delay = 1.0
        while self._rows:
            try:
                for part in list(self._rows):
                    self._write(part, self._rows[part])
                    self._buffered -= len(self._rows.pop(part))
            except OSError as exc:
                self.counters["write_retries"] += 1
                log.warning("parquet sink: cannot write under %s (%s); retrying in %.0f s", self.out_dir, exc, delay)
                time.sleep(delay)
                delay = min(60.0, delay * 2)
        self._dead.flush(10)
        if self._offsets:
            try:
                self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in self._offsets.items()],
                                      asynchronous=False)
                self._offsets.clear()
            except KafkaException as exc:  # a rebalance took the partitions: they will be redelivered
                self.counters["commit_failures"] += 1
                log.warning("parquet sink: commit failed: %s", exc)
        self._last_flush = time.monotonic()

    def _write(self, part: tuple[str, str, str], rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        topic, date, hour = part
        directory = self.out_dir / topic / f"date={date}" / f"hour={hour}"
        directory.mkdir(parents=True, exist_ok=True)
        seen = self._seen.get(part)
        if seen is None:
            seen = self._seen[part] = self._existing_fingerprints(directory)
        fresh, batch_seen = [], set()
        for row in rows:
            fp = row["_fingerprint"]
            if fp in seen or fp in batch_seen:
                self.counters["duplicates_skipped"] += 1
                continue
            batch_seen.add(fp)
            row.pop("_findings", None)
            fresh.append(row)
        if not fresh:
            return
        schema = self._schemas[topic]
        table = pa.Table.from_pylist([_arrow_row(r) for r in fresh], schema=schema)
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = directory / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, directory / name)
        seen.update(batch_seen)
        self.written[topic] += len(fresh)

    @staticmethod
    def _existing_fingerprints(directory: Path) -> set[str]:
        import pyarrow.parquet as pq

        out: set[str] = set()
        for path in directory.glob("part-*.parquet"):
            out.update(pq.read_table(path, columns=["_fingerprint"]).column(0).to_pylist())
        return out


def _arrow_row(record: dict[str, Any]) -> dict[str, Any]:
    # Arrow takes maps as lists of (key, value) pairs.
    return {k: (list(v.items()) if isinstance(v, dict) else v) for k, v in record.items()}
