"""A fast Avro binary decoder, compiled from a schema into straight-line Python.

The reading twin of :mod:`wirestream.avro_writer`. fastavro's ``schemaless_reader`` costs
about 50 µs for a ``wire.transactions`` record with its header maps; ``analyze`` decodes
every output record of a run, which made decoding the largest cost of the analyze
process. :func:`compile_reader` turns a schema of the same subset (records, primitives,
``["null", T]`` unions, maps, arrays) into one function with a few lines per field, about
4x faster. For any well-formed body it returns what fastavro returns
(tests/test_avro_reader.py checks every record of the test captures and random ones);
a schema outside the subset raises :class:`~wirestream.avro_writer.UnsupportedSchema`
and the caller uses fastavro instead.

Malformed input raises (``ValueError``, ``IndexError``, ``UnicodeDecodeError``, ``struct.error``):
a length or an index out of range, a union branch that does not exist, a body shorter
than the schema needs. Callers turn these into their own named error.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from wirestream.avro_writer import CodeBuilder, UnsupportedSchema

Reader = Callable[[bytes, int], dict[str, Any]]

_DOUBLE = struct.Struct("<d").unpack_from
_FLOAT = struct.Struct("<f").unpack_from


class TruncatedAvro(ValueError):
    """The body ended before the schema did."""


def read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """Avro ``long`` at ``buf[pos]``: base-128 varint, then zig-zag. Returns (value, next pos)."""
    b = buf[pos]  # IndexError past the end
    z = b & 0x7F
    pos += 1
    shift = 7
    while b >= 0x80:
        b = buf[pos]
        z |= (b & 0x7F) << shift
        pos += 1
        shift += 7
    if shift > 70:
        raise ValueError(f"varint of {shift // 7} bytes (a long takes at most 10)")
    return (z >> 1) ^ -(z & 1), pos


def read_length(buf: bytes, pos: int) -> tuple[int, int]:
    """A string/bytes length: a long that must not be negative."""
    n, pos = read_long(buf, pos)
    if n < 0:
        raise ValueError(f"negative length {n}")
    return n, pos


class _Compiler(CodeBuilder):
    def long(self, target: str, indent: int) -> None:
        # One byte holds -64..63: most counts, lengths, ports and statuses below 64.
        self.emit(indent, "b = buf[pos]")
        self.emit(indent, "if b < 0x80:")
        self.emit(indent + 1, f"{target} = (b >> 1) ^ -(b & 1); pos += 1")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"{target}, pos = rlong(buf, pos)")

    def length(self, target: str, indent: int) -> None:
        self.emit(indent, "b = buf[pos]")
        self.emit(indent, "if not b & 0x81:")  # one byte, non-negative
        self.emit(indent + 1, f"{target} = b >> 1; pos += 1")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"{target}, pos = rlength(buf, pos)")

    def value(self, schema: Any, target: str, indent: int) -> None:
        """Lines that read a value of type ``schema`` at ``pos`` into ``target``."""
        if isinstance(schema, list):
            self.union(schema, target, indent)
            return
        t = schema["type"] if isinstance(schema, dict) else schema
        if isinstance(t, (dict, list)):
            self.value(t, target, indent)
            return
        if t == "null":
            self.emit(indent, f"{target} = None")
        elif t == "boolean":
            self.emit(indent, f"{target} = buf[pos] == 1; pos += 1")
        elif t in ("int", "long"):
            self.long(target, indent)
        elif t == "double":
            self.emit(indent, f"{target} = dbl(buf, pos)[0]; pos += 8")
        elif t == "float":
            self.emit(indent, f"{target} = flt(buf, pos)[0]; pos += 4")
        elif t in ("string", "bytes"):
            n = self.var("n")
            self.length(n, indent)
            self.emit(indent, f"end = pos + {n}")
            self.emit(indent, "if end > size:")
            self.emit(indent + 1, "raise Truncated(f'{end - size} bytes missing at offset {pos}')")
            conv = ".decode()" if t == "string" else ""
            self.emit(indent, f"{target} = buf[pos:end]{conv}; pos = end")
        elif t == "record":
            names = []
            for f in schema["fields"]:
                v = self.var("f")
                self.value(f["type"], v, indent)
                names.append((f["name"], v))
            items = ", ".join(f"{name!r}: {v}" for name, v in names)
            self.emit(indent, f"{target} = {{{items}}}")
        elif t in ("map", "array"):
            container, count, k, item = self.var("c"), self.var("n"), self.var("k"), self.var("v")
            self.emit(indent, f"{container} = {{}}" if t == "map" else f"{container} = []")
            self.emit(indent, "while True:")
            self.long(count, indent + 1)
            self.emit(indent + 1, f"if {count} == 0:")
            self.emit(indent + 2, "break")
            self.emit(indent + 1, f"if {count} < 0:")  # a block with its byte size
            self.emit(indent + 2, f"{count} = -{count}; _, pos = rlong(buf, pos)")
            item_type = schema["values"] if t == "map" else schema["items"]
            if item_type != "null":  # every entry takes a byte at least: a count that
                # cannot fit is garbage, not a reason to loop (and allocate) 2**62 times
                self.emit(indent + 1, f"if {count} > size - pos:")
                self.emit(indent + 2, f"raise Truncated(f'{{{count}}} entries in {{size - pos}} bytes "
                                      "at offset {pos}')")
            self.emit(indent + 1, f"for _ in range({count}):")
            if t == "map":
                self.value("string", k, indent + 2)
                self.value(schema["values"], item, indent + 2)
                self.emit(indent + 2, f"{container}[{k}] = {item}")
            else:
                self.value(schema["items"], item, indent + 2)
                self.emit(indent + 2, f"{container}.append({item})")
            self.emit(indent, f"{target} = {container}")
        else:
            raise UnsupportedSchema(f"type {t!r}")

    def union(self, branches: list[Any], target: str, indent: int) -> None:
        names = [b if isinstance(b, str) else b.get("type") for b in branches]
        if len(branches) == 2 and names[0] == "null":
            self.emit(indent, "b = buf[pos]; pos += 1")
            self.emit(indent, "if b == 0:")
            self.emit(indent + 1, f"{target} = None")
            self.emit(indent, "elif b == 2:")
            self.value(branches[1], target, indent + 1)
            self.emit(indent, "else:")
            self.emit(indent + 1, "raise ValueError(f'union branch {b} at offset {pos - 1}')")
        elif len(branches) == 1:
            self.emit(indent, "if buf[pos] != 0:")
            self.emit(indent + 1, "raise ValueError(f'union branch {buf[pos]} at offset {pos}')")
            self.emit(indent, "pos += 1")
            self.value(branches[0], target, indent)
        else:
            raise UnsupportedSchema(f"union {names}")

    def skip(self, schema: Any, indent: int) -> None:
        """Lines that step ``pos`` over a value of type ``schema`` without building it.

        Fixed-size values and string bodies are stepped over unread: a body that ends
        too early is caught by the check of ``pos`` after the record (or by the next
        read), a string that is not UTF-8 is not seen."""
        if isinstance(schema, list):
            names = [b if isinstance(b, str) else b.get("type") for b in schema]
            if len(schema) == 2 and names[0] == "null":
                self.emit(indent, "b = buf[pos]; pos += 1")
                self.emit(indent, "if b == 2:")
                self.skip(schema[1], indent + 1)
                self.emit(indent, "elif b != 0:")
                self.emit(indent + 1, "raise ValueError(f'union branch {b} at offset {pos - 1}')")
            elif len(schema) == 1:
                self.emit(indent, "if buf[pos] != 0:")
                self.emit(indent + 1, "raise ValueError(f'union branch {buf[pos]} at offset {pos}')")
                self.emit(indent, "pos += 1")
                self.skip(schema[0], indent)
            else:
                raise UnsupportedSchema(f"union {names}")
            return
        t = schema["type"] if isinstance(schema, dict) else schema
        if isinstance(t, (dict, list)):
            self.skip(t, indent)
            return
        if t == "null":
            return
        if t == "boolean":
            self.emit(indent, "pos += 1")
        elif t in ("int", "long"):
            self.emit(indent, "while buf[pos] >= 0x80:")
            self.emit(indent + 1, "pos += 1")
            self.emit(indent, "pos += 1")
        elif t == "double":
            self.emit(indent, "pos += 8")
        elif t == "float":
            self.emit(indent, "pos += 4")
        elif t in ("string", "bytes"):
            n = self.var("n")
            self.length(n, indent)
            self.emit(indent, f"pos += {n}")
        elif t == "record":
            for f in schema["fields"]:
                self.skip(f["type"], indent)
        elif t in ("map", "array"):
            count = self.var("n")
            self.emit(indent, "while True:")
            self.long(count, indent + 1)
            self.emit(indent + 1, f"if {count} == 0:")
            self.emit(indent + 2, "break")
            self.emit(indent + 1, f"if {count} < 0:")  # a block with its byte size: one jump
            self.emit(indent + 2, "n, pos = rlength(buf, pos)")
            self.emit(indent + 2, "pos += n")
            self.emit(indent + 2, "continue")
            item_type = schema["values"] if t == "map" else schema["items"]
            if item_type != "null":  # as in value(): a count that cannot fit is garbage
                self.emit(indent + 1, f"if {count} > size - pos:")
                self.emit(indent + 2, f"raise Truncated(f'{{{count}}} entries in {{size - pos}} bytes "
                                      "at offset {pos}')")
            self.emit(indent + 1, f"for _ in range({count}):")
            if t == "map":
                self.skip("string", indent + 2)
            self.skip(item_type, indent + 2)
            if item_type == "null" and t == "array":
                self.emit(indent + 2, "pass")
        else:
            raise UnsupportedSchema(f"type {t!r}")


def compile_reader(schema: dict[str, Any], fields: frozenset[str] | None = None) -> Reader:
    """Return ``read(buf, pos) -> record``: decode the Avro binary body of one record of
    ``schema`` (a JSON schema) that starts at ``buf[pos]`` (``bytes``, so that a
    Confluent-framed message is read without copying its body).

    With ``fields``, the record holds only those of its top-level fields; the others are
    stepped over (:meth:`_Compiler.skip`), which is what makes it cheaper: a
    ``wire.transactions`` record without its header maps and bodies is built in a third
    of the time."""
    c = _Compiler()
    if fields is None:
        c.value(schema, "record", 1)
    else:
        if not isinstance(schema, dict) or schema.get("type") != "record":
            raise UnsupportedSchema("fields of a schema that is not a record")
        names = []
        for f in schema["fields"]:
            if f["name"] in fields:
                v = c.var("f")
                c.value(f["type"], v, 1)
                names.append((f["name"], v))
            else:
                c.skip(f["type"], 1)
        items = ", ".join(f"{name!r}: {v}" for name, v in names)
        c.emit(1, f"record = {{{items}}}")
        # a skipped string or fixed-size value is stepped over unread: a body cut inside
        # the last of them would go unnoticed without this
        c.emit(1, "if pos > size:")
        c.emit(2, "raise Truncated(f'{pos - size} bytes missing at the end')")
    body = "\n".join(c.lines)
    # Every fixed-size read past the end raises IndexError or struct.error by itself;
    # strings and bytes check their end (a slice would silently come out short).
    src = f"def read(buf, pos):\n    size = len(buf)\n{body}\n    return record\n"
    namespace: dict[str, Any] = {"rlong": read_long, "rlength": read_length, "dbl": _DOUBLE,
                                 "flt": _FLOAT, "Truncated": TruncatedAvro}
    exec(compile(src, f"<avro reader {schema.get('name', '?')}>", "exec"), namespace)
    return namespace["read"]  # type: ignore[no-any-return]
