"""An observation batch's rows read back as they were packed: the packet workers pack them
with ``struct`` (processors/observations.py, ``pack_rows``), the windows read them as a
numpy array of ``ROW_DTYPE`` (``unpack_rows``); the two must agree on every field's place,
size and sign."""

from __future__ import annotations

from wirestream.processors.observations import ROW_DTYPE, TEXT_COLUMNS, pack_rows, unpack_rows

# (bits, signed) of each field, in ROW_DTYPE's order
FIELDS = [(ROW_DTYPE[name].itemsize * 8, ROW_DTYPE[name].kind == "i") for name in ROW_DTYPE.names]


def extremes(bits: int, signed: bool) -> list[int]:
    if signed:
        return [-(1 << (bits - 1)), -1, 0, 1, (1 << (bits - 1)) - 1]
    return [0, 1, (1 << bits) - 2, (1 << bits) - 1]


def test_every_field_at_its_extremes_reads_back() -> None:
    strings = ["a", "b"]
    rows = []
    for k, (bits, signed) in enumerate(FIELDS):
        for value in extremes(bits, signed):
            row = [1] * len(FIELDS)
            row[k] = value
            for t in TEXT_COLUMNS:  # indexes into the batch's strings
                row[t] = row[t] % len(strings) if t != k else value % len(strings)
            rows.append(tuple(row))
    batch = {"count": len(rows), "rows": pack_rows(rows), "strings": strings}
    assert len(batch["rows"]) == len(rows) * ROW_DTYPE.itemsize
    expect = [tuple(strings[v] if i in TEXT_COLUMNS else v for i, v in enumerate(row)) for row in rows]
    assert unpack_rows(batch) == expect


def test_no_rows_pack_to_nothing() -> None:
    assert pack_rows([]) == b""
    assert unpack_rows({"count": 0, "rows": b"", "strings": []}) == []
