"""Data lake sink: output topics -> Parquet files by topic, date and hour.

    DIR/wire.connections/date=2026-11-27/hour=06/part-<uuid>.parquet

queryable as they are, e.g. with DuckDB::

    SELECT state, count(*) FROM read_parquet('DIR/wire.connections/*/*/*.parquet', hive_partitioning=1)
    GROUP BY state

- **Schema**: the topic's Avro schema, mapped to Arrow (:func:`arrow_schema`), plus
  ``_key`` (the Kafka key), ``_fingerprint`` (see below) and the hive partition columns
  in the path. The date and hour are those of the record's own time (its connection's
  start, the request, ...), UTC.
- **At least once**: offsets are committed only after the files holding the records are
  written (atomically: a temporary file renamed); a failing destination (disk full, a
  mount gone) is retried with backoff while nothing more is consumed (``sinks/base.py``).
- **Each record once**: records arrive more than once (at-least-once delivery, a replay
  of the same packets). Each carries a fingerprint (a hash of topic, key and value); the
  sink skips a record whose fingerprint is already in its hour's files (read back the
  first time this process writes to that hour) or already written by it.
- **Private at rest**: the records hold what the wire carried (paths, headers, queries);
  files are written 0600 and the directories the sink creates 0700 (``file_mode`` and
  ``dir_mode`` to share them with a group), whatever the umask. Directories that already
  exist (``out_dir`` made by someone else, a mount) keep their modes.
- **Dead letters**: a message that cannot be decoded (not wirestream's Avro, unknown
  schema) or placed (no valid time) goes to ``wire.dead-letter``; the rest goes on.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from wirestream.schemas import schema_text

from wirestream.topics import TOPIC_SCHEMAS, record_time_us

from .base import BatchSink, Item


def arrow_schema(avro: dict[str, Any]) -> Any:
    """The Arrow schema of an Avro record schema (the parts wirestream's schemas use)."""
    import pyarrow as pa

    primitive = {"long": pa.int64(), "int": pa.int32(), "double": pa.float64(), "float": pa.float32(),
                 "string": pa.string(), "boolean": pa.bool_(), "bytes": pa.binary()}

    named: dict[str, Any] = {}  # records defined so far, by full name: a later field may name one

    def convert(t: Any, namespace: str = avro.get("namespace", "")) -> Any:
        if isinstance(t, list):  # a union: ["null", X] is a nullable X
            rest = [x for x in t if x != "null"]
            if len(rest) != 1:
                raise ValueError(f"unsupported union {t}")
            return convert(rest[0], namespace)
        if isinstance(t, str):
            if t in primitive:
                return primitive[t]
            found = named.get(t) or named.get(f"{namespace}.{t}")
            if found is not None:
                return found
            raise ValueError(f"unsupported type {t}")
        kind = t["type"]
        if kind == "map":
            return pa.map_(pa.string(), convert(t["values"], namespace))
        if kind == "array":
            return pa.list_(convert(t["items"], namespace))
        if kind == "record":
            inner = t.get("namespace", namespace)
            struct = pa.struct([pa.field(f["name"], convert(f["type"], inner)) for f in t["fields"]])
            named[t["name"] if "." in t["name"] else f"{inner}.{t['name']}"] = struct
            return struct
        if kind == "enum":
            return pa.string()
        return convert(kind, namespace)

    fields = [pa.field(f["name"], convert(f["type"])) for f in avro["fields"]]
    return pa.schema([*fields, pa.field("_key", pa.string()), pa.field("_fingerprint", pa.string())])


def fingerprint(topic: str, key: bytes | None, value: bytes) -> str:
    return hashlib.blake2b(topic.encode() + b"\0" + (key or b"") + b"\0" + value, digest_size=16).hexdigest()


class ParquetSink(BatchSink):
    """Consume ``topics`` as group ``group`` and write them under ``out_dir``."""

    name = "parquet sink"

    def __init__(self, bootstrap: str, registry: str, out_dir: str | os.PathLike[str], topics: list[str],
                 group: str = "wirestream-sink-parquet", flush_records: int = 10_000,
                 flush_seconds: float = 30.0, from_beginning: bool = True, file_mode: int = 0o600,
                 dir_mode: int = 0o700) -> None:
        if file_mode & ~0o666 or dir_mode & ~0o777:
            raise ValueError(f"file mode {file_mode:o} / directory mode {dir_mode:o}: permission bits only "
                             "(files at most 666, directories at most 777)")
        super().__init__(bootstrap, registry, topics, group, flush_records, flush_seconds, from_beginning)
        self.out_dir = Path(out_dir)
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self._schemas = {t: arrow_schema(json.loads(schema_text(TOPIC_SCHEMAS[t]))) for t in topics}
        self._seen: dict[tuple[str, str, str], set[str]] = {}  # fingerprints per hour partition

    def write(self, batch: list[Item]) -> None:
        parts: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
        for item in batch:
            record = item.record
            try:
                ts = record_time_us(item.topic, record) or 0
                moment = datetime.datetime.fromtimestamp(ts / 1e6, datetime.UTC)
            except (ValueError, OverflowError, OSError) as exc:
                self.dead_letter(item.topic, item.partition, item.offset, item.key, item.raw,
                                 f"no valid time: {exc}")
                continue
            record["_key"] = item.key.decode(errors="replace") if item.key is not None else None
            record["_fingerprint"] = fingerprint(item.topic, item.key, item.raw)
            parts[(item.topic, moment.strftime("%Y-%m-%d"), moment.strftime("%H"))].append(record)
        # One file per hour partition; a retry after a failure rewrites only what is missing
        # (the partitions written before it are skipped by their fingerprints).
        for part, rows in parts.items():
            self._write(part, rows)

    def _write(self, part: tuple[str, str, str], rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        topic, date, hour = part
        directory = self.out_dir / topic / f"date={date}" / f"hour={hour}"
        self._makedirs(directory)
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
            fresh.append(row)
        if not fresh:
            return
        table = pa.Table.from_pylist([_arrow_row(r) for r in fresh], schema=self._schemas[topic])
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = directory / f".{name}.tmp"
        # Created with the mode (and set again: the umask may have taken bits), before a
        # byte is written, so that the data is never readable by others, not even briefly.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.file_mode)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), self.file_mode)
                pq.write_table(table, f, compression="zstd")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, directory / name)
        seen.update(batch_seen)
        self.written[topic] += len(fresh)

    def _makedirs(self, directory: Path) -> None:
        """``mkdir -p`` with ``dir_mode`` for each directory made, whatever the umask."""
        missing = []
        d = directory
        while not d.is_dir():
            missing.append(d)
            if d.parent == d:
                break
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir(self.dir_mode)
            except FileExistsError:
                if not d.is_dir():
                    raise  # a file where a directory goes: an OSError, retried (sinks/base.py)
                continue  # made meanwhile by someone else: theirs, its mode too
            os.chmod(d, self.dir_mode)

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
