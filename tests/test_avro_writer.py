"""The compiled Avro writer gives fastavro's bytes, for every record the tests produce."""

from __future__ import annotations

import io
import json

import fastavro
import pytest
from helpers import DATA
from hypothesis import given, settings
from hypothesis import strategies as st
from local_pipeline import local_l7
from wirestream.schemas import schema_text

from wirestream.avro_writer import UnsupportedSchema, compile_writer, zigzag
from wirestream.topics import CONNECTIONS, DNS, PACKETS, STATS, TLS, TOPIC_SCHEMAS, TRANSACTIONS

CAPTURES = [DATA / "chrissanders/http_espn.pcapng", DATA / "chrissanders/dns_tcp.pcapng",
            DATA / "chrissanders/http_dvwa_clearlogin.pcapng", DATA / "zeek-tls/hrr.pcap",
            DATA / "zeek-tls/tls-early-alert.pcap", DATA / "chrissanders/nowebaccess1.pcapng",
            DATA / "chrissanders/tcp_retransmissions.pcapng"]


def fastavro_bytes(schema: object, record: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
@settings(max_examples=500)
def test_zigzag_is_avro_long(n: int) -> None:
    assert zigzag(n) == fastavro_bytes("long", n)


def test_long_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError):
        zigzag(2**63)


@pytest.mark.parametrize("topic", [CONNECTIONS, TRANSACTIONS, DNS, TLS])
def test_every_record_of_the_test_captures_encodes_like_fastavro(topic: str) -> None:
    schema = json.loads(schema_text(TOPIC_SCHEMAS[topic]))
    write = compile_writer(schema, b"HDR")
    n = 0
    for path in CAPTURES:
        for record in local_l7(str(path)).get(topic, []):
            assert write(record) == b"HDR" + fastavro_bytes(schema, record), record
            n += 1
    assert n > 0


def test_stats_record_with_maps() -> None:
    schema = json.loads(schema_text(TOPIC_SCHEMAS[STATS]))
    record = {"stage": "s", "instance": "i", "source_id": "x", "partition": -1, "ts_us": 5,
              "final": True, "received": 3, "emitted": {"wire.connections": 2, "wire.dns": 300},
              "dropped": {}, "counters": {"a": -1}}
    assert compile_writer(schema)(record) == fastavro_bytes(schema, record)


def test_defaults_fill_missing_fields() -> None:
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "long"}, {"name": "b", "type": ["null", "string"], "default": None},
        {"name": "c", "type": {"type": "map", "values": "string"}, "default": {}}]}
    assert compile_writer(schema)({"a": 1}) == fastavro_bytes(schema, {"a": 1, "b": None, "c": {}})


def test_schemas_outside_the_subset_are_refused() -> None:
    with pytest.raises(UnsupportedSchema):
        compile_writer({"type": "record", "name": "R", "fields": [
            {"name": "x", "type": ["string", "long"]}]})


def test_records_may_be_dict_subclasses() -> None:
    from wirestream.processors.findings import NO_FINDINGS, RecordWithFindings

    schema = json.loads(schema_text(TOPIC_SCHEMAS[STATS]))
    record = {"stage": "s", "instance": "i", "source_id": "x", "partition": 2, "ts_us": 5,
              "final": False, "received": 3, "emitted": {}, "dropped": {"x": 1}, "counters": {}}
    sub = RecordWithFindings(record, NO_FINDINGS)
    assert compile_writer(schema)(sub) == fastavro_bytes(schema, record)


EVERYTHING = {"type": "record", "name": "Everything", "namespace": "t", "fields": [
    {"name": "b", "type": "boolean"}, {"name": "i", "type": "int"}, {"name": "l", "type": "long"},
    {"name": "f", "type": "float"}, {"name": "d", "type": "double"}, {"name": "s", "type": "string"},
    {"name": "y", "type": "bytes"}, {"name": "n", "type": "null"},
    {"name": "e", "type": {"type": "enum", "name": "Colour", "symbols": ["red", "green"]}},
    {"name": "x", "type": {"type": "fixed", "name": "Two", "size": 2}},
    {"name": "o", "type": ["long", "null"]}, {"name": "u", "type": ["string"]},
    {"name": "sub", "type": {"type": "record", "name": "Sub", "fields": [
        {"name": "next", "type": ["null", "Sub"]}, {"name": "c", "type": "t.Colour"}]}},
    {"name": "a", "type": {"type": "array", "items": {"type": "map", "values": ["null", "double"]}}},
    {"name": "dflt", "type": "Colour", "default": "green"}]}


@given(st.fixed_dictionaries({
    "b": st.booleans(), "i": st.integers(-(2**31), 2**31 - 1), "l": st.integers(-(2**63), 2**63 - 1),
    "f": st.floats(width=32, allow_nan=False), "d": st.floats(allow_nan=False), "s": st.text(),
    "y": st.binary(), "n": st.none(), "e": st.sampled_from(["red", "green"]),
    "x": st.binary(min_size=2, max_size=2), "o": st.none() | st.integers(-5, 5), "u": st.text(max_size=3),
    "sub": st.fixed_dictionaries({"next": st.none() | st.just({"next": None, "c": "red"}),
                                  "c": st.sampled_from(["red", "green"])}),
    "a": st.lists(st.dictionaries(st.text(max_size=4), st.none() | st.floats(allow_nan=False)),
                  max_size=3)}))
@settings(max_examples=300)
def test_every_type_of_the_subset_encodes_like_fastavro(record: dict) -> None:
    assert compile_writer(EVERYTHING)(record) == fastavro_bytes(EVERYTHING, {**record, "dflt": "green"})


def test_bytes_like_values() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "y", "type": "bytes"}]}
    want = fastavro_bytes(schema, {"y": b"abc"})
    for value in (b"abc", bytearray(b"abc"), memoryview(b"xabc")[1:]):
        assert compile_writer(schema)({"y": value}) == want


@pytest.mark.parametrize(("record", "error", "path"), [
    ({"a": "1", "m": {}}, TypeError, "R.a: expected int, got str"),
    ({"a": 1.5, "m": {}}, TypeError, "R.a: expected int, got float"),
    ({"a": 2**63, "m": {}}, ValueError, "R.a: "),
    ({"m": {}}, ValueError, "R.a: missing"),
    ({"a": 1, "m": {"k": [1, "x"]}}, TypeError, 'R.m["k"][1]: expected int, got str'),
    ({"a": 1, "m": {3: []}}, TypeError, "R.m: a map key: expected str, got int"),
    ({"a": 1, "m": {"k": "ab"}}, TypeError, 'R.m["k"]: expected a list, got str'),
    ({"a": 1, "m": {}, "s": b"x"}, TypeError, "R.s: expected str, got bytes"),
    ({"a": 1, "m": {}, "s": "\ud800"}, ValueError, "R.s: not encodable as UTF-8"),
    (7, TypeError, "R: expected a dict (a record), got int"),
])
def test_values_that_do_not_fit_name_their_path(record: object, error: type, path: str) -> None:
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "long"},
        {"name": "m", "type": {"type": "map", "values": {"type": "array", "items": "long"}}},
        {"name": "s", "type": ["null", "string"], "default": None}]}
    with pytest.raises(error) as info:
        compile_writer(schema)(record)  # type: ignore[arg-type]
    assert str(info.value).startswith(path), str(info.value)


@pytest.mark.parametrize("schema", [
    ["null", "string", "long"],
    {"type": "long", "logicalType": "timestamp-micros"},
    {"type": "record", "name": "R", "fields": [{"name": "x", "type": "Unknown"}]},
])
def test_more_schemas_outside_the_subset_are_refused(schema: object) -> None:
    with pytest.raises(UnsupportedSchema):
        compile_writer(schema)  # type: ignore[arg-type]


@pytest.mark.parametrize("payloads", [b"", b"x", bytes(range(256)) * 700])
def test_a_batch_split_around_its_payloads_is_its_encoding(payloads: bytes) -> None:
    """``split`` (the packet pipe's gathered write): head + payloads + tail is the
    encoding, the payloads themselves in neither part; defaults still fill a missing field."""
    schema = json.loads(schema_text(TOPIC_SCHEMAS[PACKETS]))
    write = compile_writer(schema, b"HDR")
    record = {"source_id": "s", "source_name": "n", "sequence": 300, "layout_version": 1, "count": 2,
              "packets": b"\x01" * 128, "payloads": payloads, "end_of_input": False, "batches_before": 300,
              "socket_events": True, "tunnel_of": b"", "tunnel_paths": b"\x02\x03"}
    head, tail = write.split(record, "payloads")
    assert head + payloads + tail == write(record) == b"HDR" + fastavro_bytes(schema, record)
    assert len(head) + len(tail) < 200
    del record["tunnel_paths"]  # (default "")
    head, tail = write.split(record, "payloads")
    assert head + payloads + tail == write(record) == b"HDR" + fastavro_bytes(schema, {**record, "tunnel_paths": b""})
    with pytest.raises(ValueError, match='no bytes field "source_id"'):
        write.split(record, "source_id")  # (a string)
    with pytest.raises(TypeError, match="PacketBatch.payloads: expected bytes"):
        write.split({**record, "payloads": None}, "payloads")
    with pytest.raises(ValueError, match="PacketBatch.payloads: missing"):
        write.split({k: v for k, v in record.items() if k != "payloads"}, "payloads")
