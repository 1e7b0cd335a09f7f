"""Write output records as JSON lines: ``DIR/<topic>.jsonl``, one object per line.

Field names are the Avro field names; addresses are text and times integers, as in the
records themselves. Byte fields (captured bodies) are written as text, decoded as UTF-8
with undecodable bytes replaced (``\\ufffd``), since these files are for people and tools
like ``jq``; the Avro topics keep the exact bytes. For orjson the JSON literal of that
text is the compiled core's (``rust/src/avro_text.rs``), made in one pass.

Three encoders, one output: :func:`to_json_line` (the standard library's ``json``, any
record: ``tail``, the SIEM sink), the per-topic encoders of :class:`JsonlWriter`
(``orjson``, 3-8x faster) and, fastest, the compiled core's line made straight from a
message's Avro body (rust/src/avro_json.rs: ``AvroCodec.json_line``, and what ``analyze
--out`` writes, hundreds of megabytes for a big capture, with
:meth:`JsonlWriter.write_message`, the line made by the writing thread). They write the
same bytes for every record of the output topics (tests/test_analyze_output.py). Where
orjson's text differs, a float below 1e-4 in magnitude (orjson ``0.00001`` and
``2.5e-7``, ``json`` ``1e-05`` and ``2.5e-07``) or not finite (orjson ``null``, ``json``
``NaN``), the float is written with ``json``'s text.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from wirestream._core import AvroReader, JsonLinesFiles, json_text
from wirestream.schemas import schema_text

from wirestream.errors import DecodeError
from wirestream.topics import DERIVED_TOPICS, OUTPUT_TOPICS, TOPIC_SCHEMAS

if TYPE_CHECKING:
    from wirestream.codec import AvroCodec

LineEncoder = Callable[[dict[str, Any]], bytes]

_fragment = orjson.Fragment


def _default(value: Any) -> Any:
    """A bytes value for ``json``: its text. (Python's own decoder: a ``str`` made by the
    core would be decoded again by CPython, slower.)"""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _orjson_default(value: Any) -> Any:
    """A bytes value for orjson: the JSON literal of its text, made by the core in one
    pass (``json_text``) and written as it is (a ``Fragment``): ~2.5x faster on a 64 KB
    binary body than making the ``str`` and having orjson encode it again."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _fragment(json_text(value if value.__class__ is bytes else bytes(value)))
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, default=_default, separators=(",", ":"), ensure_ascii=False)


#: orjson writes any finite float of at least this magnitude as ``repr`` (and ``json``) do
_SAME_FLOAT_MIN = 1e-4
_FLOAT_MAX = 1.7976931348623157e308


def _float_fields(schema: Any) -> tuple[str, ...] | None:
    """The top-level fields of a record schema that may hold a float, or None when a
    float may be nested deeper (in a map, array or record): the fast encoder then
    cannot find every float, and the topic is written with :func:`to_json_line`."""

    def has_float(t: Any) -> bool:
        if isinstance(t, list):
            return any(has_float(b) for b in t)
        if isinstance(t, dict):
            kind = t.get("type")
            if kind == "record":
                return any(has_float(f["type"]) for f in t.get("fields", []))
            if kind == "map":
                return has_float(t.get("values"))
            if kind == "array":
                return has_float(t.get("items"))
            return has_float(kind)
        return t in ("float", "double")

    def nested(t: Any) -> bool:  # a float inside a container of a field
        if isinstance(t, list):
            return any(nested(b) for b in t)
        if isinstance(t, dict):
            kind = t.get("type")
            if kind in ("record", "map", "array"):
                return has_float(t)
            return nested(kind)
        return False

    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    fields = schema.get("fields", [])
    if any(nested(f["type"]) for f in fields):
        return None
    return tuple(f["name"] for f in fields if has_float(f["type"]))


def line_encoder(schema: Any) -> LineEncoder:
    """``encode(record) -> bytes``: the JSON line (newline included) of a record of
    ``schema`` (a record schema, as JSON), the same bytes as ``to_json_line(record) +
    "\\n"`` in UTF-8, made with orjson."""
    floats = _float_fields(schema)
    if floats is None:
        return _slow_line
    dumps = orjson.dumps
    fragment = orjson.Fragment
    option = orjson.OPT_APPEND_NEWLINE

    def encode(record: dict[str, Any]) -> bytes:
        line = record
        for name in floats:
            v = record.get(name)
            # 0.0 and any finite float of magnitude >= 1e-4: orjson's text is json's
            if v and v.__class__ is float and not _SAME_FLOAT_MIN <= abs(v) <= _FLOAT_MAX:
                if line is record:
                    line = dict(record)  # the caller's record stays as it is
                line[name] = fragment(json.dumps(v).encode())
        try:
            return dumps(line, default=_orjson_default, option=option)
        except TypeError:  # orjson.JSONEncodeError: an int beyond 64 bits, a key not text
            return _slow_line(record)

    return encode


def _slow_line(record: dict[str, Any]) -> bytes:
    return (to_json_line(record) + "\n").encode("utf-8")


def topic_encoder(topic: str) -> LineEncoder:
    """The line encoder of a wirestream topic (by its schema in ``schemas/``)."""
    return line_encoder(json.loads(schema_text(TOPIC_SCHEMAS[topic])))


class JsonlWriter:
    """``DIR/<topic>.jsonl`` of every output topic, written a record at a time, as the
    records are read (``analyze --out``).

    The files are written by a thread of the compiled core's (``JsonLinesFiles``,
    rust/src/line_files.rs) that holds no GIL: :meth:`write_message` hands it a
    message's bytes and it makes the line itself (the JSON text of big bodies is the
    costliest part of ``analyze``'s own process, which also feeds the workers and reads
    their records). Each file's lines are in the order they were given.

    The lines go to ``DIR/.<topic>.jsonl.partial`` files, renamed to their names by
    :meth:`close`: a run that fails leaves no file that looks whole (:meth:`discard`
    removes them). Every topic gets its file, empty if it had no record."""

    def __init__(self, out_dir: str | os.PathLike[str], topics: Iterable[str] = OUTPUT_TOPICS) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.paths = {t: self.dir / f"{t}.jsonl" for t in topics}
        self._partial = {t: self.dir / f".{t}.jsonl.partial" for t in self.paths}
        self._number = {t: i for i, t in enumerate(self.paths)}
        self._files = JsonLinesFiles([os.fspath(self._partial[t]) for t in self.paths])
        self._encoders = {t: topic_encoder(t) for t in self.paths}

    def write(self, topic: str, record: dict[str, Any]) -> None:
        """Append the line of ``record`` to ``topic``'s file."""
        self._files.write_line(self._number[topic], self._encoders[topic](record))

    def write_line(self, topic: str, line: bytes) -> None:
        """Append a line made elsewhere (``AvroCodec.json_line``: the same bytes as
        :meth:`write` of the record) to ``topic``'s file."""
        self._files.write_line(self._number[topic], line)

    def write_message(self, topic: str, data: bytes, codec: AvroCodec) -> None:
        """Append the line of a Confluent-framed message's record (the same bytes as
        :meth:`write` of ``codec.decode(data)``), made by the writing thread from the
        message's Avro body: its bodies and headers never become Python objects. A bad
        framing raises :class:`~wirestream.errors.DecodeError` here; a malformed body
        is found by the thread and raises it at :meth:`close`."""
        reader, offset = codec.body_reader(data)
        if isinstance(reader, AvroReader):
            self._files.write_avro(self._number[topic], reader, data if type(data) is bytes else bytes(data), offset)
        else:  # a schema outside the compiled subset: fastavro's record, written here
            self.write_line(topic, codec.json_line(data))

    def close(self) -> list[Path]:
        """Finish the files and give them their names; return their paths. A message of
        :meth:`write_message` whose body did not decode fails the run here
        (:class:`~wirestream.errors.DecodeError`, the files removed): its file would
        lack a record the run counted."""
        try:
            _, malformed, first = self._files.close()
        except OSError:  # a write failed (a full disk): no file that looks whole is left
            self.discard()
            raise
        if malformed:
            self.discard()
            raise DecodeError(f"{malformed} record(s) could not be written to {self.dir}: "
                              f"malformed Avro body ({first})")
        for t in self.paths:
            os.replace(self._partial[t], self.paths[t])
        return list(self.paths.values())

    def discard(self) -> None:
        """Close and remove the files written so far (the run failed)."""
        with contextlib.suppress(OSError):  # (a write that failed: the files go anyway)
            self._files.close()
        for t in self.paths:
            self._partial[t].unlink(missing_ok=True)


def write_jsonl(out_dir: str | os.PathLike[str], records: dict[str, list[dict[str, Any]]]) -> list[Path]:
    """Write one file per output topic (empty topics give empty files), and one per
    derived topic ``records`` has (``wire.call-chains``: a run that linked its chains);
    return the paths."""
    topics = (*OUTPUT_TOPICS, *(t for t in DERIVED_TOPICS if t in records))
    writer = JsonlWriter(out_dir, topics)
    try:
        for topic in topics:
            write = writer.write
            for rec in records.get(topic, []):
                write(topic, rec)
    except BaseException:
        writer.discard()
        raise
    return writer.close()
