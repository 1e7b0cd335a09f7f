"""The Avro binary encoder of output records: the compiled core's, for a schema.

fastavro's ``schemaless_writer`` walks the schema for every record and resolves every
union by trying its branches: about 25 µs for a ``wire.transactions`` record (36 fields,
15 of them nullable). :func:`compile_writer` gives ``wirestream._core.AvroWriter``
instead (``rust/src/avro.rs``): the schema compiled once into an encoder tree that reads
the record dict from Rust. Our schemas use a subset of Avro (records, primitives, enums,
fixed, maps, arrays, ``[T]`` and ``["null", T]`` unions, defaults); the output is
byte-for-byte fastavro's (tests/test_avro_writer.py checks every record of every test
capture); a schema outside the subset raises :class:`UnsupportedSchema` and the caller
uses fastavro instead. A value that does not fit its field raises ``TypeError`` or
``ValueError`` naming the record and the field's path.

:func:`zigzag` (an Avro ``long``) stays Python: the engine-state codec
(``processors/state_codec.py``) uses it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from wirestream._core import AvroWriter

Writer = Callable[[dict[str, Any]], bytes]


class UnsupportedSchema(ValueError):
    """The schema uses Avro features this writer does not compile."""


def zigzag(n: int) -> bytes:
    """Avro ``long``/``int``: zig-zag, then base-128 varint. (No table of small values
    here: every process imports this module, and a 65,536-entry table cost each ~40 ms
    of CPU at import; the state codec, the one caller in a loop, keeps its own of the
    values it meets most.)"""
    z = (n << 1) ^ (n >> 63)
    if z < 0 or z >= 1 << 64:
        raise ValueError(f"{n} does not fit an Avro long")
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def compile_writer(schema: dict[str, Any], prefix: bytes = b"") -> Writer:
    """Return ``write(record) -> bytes``: ``prefix`` (e.g. the Confluent header) followed by
    the Avro binary encoding of ``record`` under ``schema`` (a parsed JSON schema)."""
    try:
        return AvroWriter(json.dumps(schema), prefix)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise UnsupportedSchema(str(exc)) from None
