"""The compiled Avro reader (the core's ``AvroReader``) returns fastavro's records, and
refuses malformed bodies with a ``ValueError``."""

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

from wirestream.avro_reader import compile_reader
from wirestream.avro_writer import UnsupportedSchema, compile_writer, zigzag
from wirestream.codec import make_reader
from wirestream.topics import CONNECTIONS, DNS, PACKETS, STATS, TLS, TOPIC_SCHEMAS, TRANSACTIONS

CAPTURES = [DATA / "chrissanders/http_espn.pcapng", DATA / "chrissanders/dns_tcp.pcapng",
            DATA / "chrissanders/http_dvwa_clearlogin.pcapng", DATA / "zeek-tls/hrr.pcap",
            DATA / "zeek-tls/tls-early-alert.pcap", DATA / "chrissanders/nowebaccess1.pcapng",
            DATA / "chrissanders/tcp_retransmissions.pcapng"]


def fastavro_record(schema: object, body: bytes) -> object:
    return fastavro.schemaless_reader(io.BytesIO(body), fastavro.parse_schema(schema), None)


LONGS = {"type": "record", "name": "L", "fields": [{"name": "n", "type": "long"}, {"name": "m", "type": "long"}]}


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
@settings(max_examples=500)
def test_a_long_inverts_zigzag(n: int) -> None:
    data = b"\x07" + zigzag(n) + zigzag(-5) + b"\xff"
    assert compile_reader(LONGS)(data, 1) == {"n": n, "m": -5}


def test_a_varint_beyond_64_bits_raises() -> None:
    with pytest.raises(ValueError, match="varint beyond 64 bits"):
        compile_reader(LONGS)(b"\xff" * 9 + b"\x02\x00", 0)
    with pytest.raises(ValueError, match="varint beyond 64 bits"):
        compile_reader(LONGS)(b"\xff" * 12, 0)


@pytest.mark.parametrize("topic", [CONNECTIONS, TRANSACTIONS, DNS, TLS])
def test_every_record_of_the_test_captures_reads_like_fastavro(topic: str) -> None:
    schema = json.loads(schema_text(TOPIC_SCHEMAS[topic]))
    write, read = compile_writer(schema, b"HDR"), compile_reader(schema)
    n = 0
    for path in CAPTURES:
        for record in local_l7(str(path)).get(topic, []):
            message = write(record)
            decoded = read(message, 3)
            assert decoded == fastavro_record(schema, message[3:])
            # (fields the record left out come back with their schema defaults)
            assert {k: decoded[k] for k in record} == record
            n += 1
    assert n > 0


STATS_SCHEMA = json.loads(schema_text(TOPIC_SCHEMAS[STATS]))
STATS_RECORD = {"stage": "s", "instance": "ü", "source_id": "x", "partition": -1, "ts_us": 5,
                "final": True, "received": 3, "emitted": {"wire.connections": 2, "wire.dns": 300},
                "dropped": {}, "counters": {"a": -1, "b" * 100: 2**40}}


def test_maps_long_keys_and_big_numbers() -> None:
    body = compile_writer(STATS_SCHEMA)(STATS_RECORD)
    assert compile_reader(STATS_SCHEMA)(body, 0) == STATS_RECORD


def test_blocks_with_byte_sizes_are_read() -> None:
    """Other writers may send map/array blocks with a negative count and a byte size."""
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "m", "type": {"type": "map", "values": "long"}},
        {"name": "a", "type": {"type": "array", "items": "string"}}]}
    body = (zigzag(-2) + zigzag(6) + b"\x02k\x02" + b"\x02j\x04" + zigzag(1) + b"\x02z\x06" + b"\x00"
            + zigzag(-1) + zigzag(2) + b"\x02q" + b"\x00")
    expected = {"m": {"k": 1, "j": 2, "z": 3}, "a": ["q"]}
    assert compile_reader(schema)(body, 0) == fastavro_record(schema, body) == expected


@given(st.binary(max_size=200))
@settings(max_examples=3000)
def test_garbage_raises_a_value_or_index_error_or_decodes(data: bytes) -> None:
    """Any bytes: a record, or one of the errors the codec turns into DecodeError."""
    try:
        compile_reader(STATS_SCHEMA)(data, 0)
    except (ValueError, IndexError):  # UnicodeDecodeError and struct.error are ValueErrors
        pass


def test_a_truncated_body_raises() -> None:
    body = compile_writer(STATS_SCHEMA)(STATS_RECORD)
    read = compile_reader(STATS_SCHEMA)
    for cut in range(len(body)):
        with pytest.raises((ValueError, IndexError)):
            read(body[:cut], 0)


def test_an_unknown_union_branch_raises() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": ["null", "long"]}]}
    with pytest.raises(ValueError, match="union branch"):
        compile_reader(schema)(b"\x04\x02", 0)


@pytest.mark.parametrize(("body", "error"), [
    (b"\x02k\x06ab", "truncated: 3 bytes wanted, 2 left at offset 3"),
    (b"\x03k", "negative length -2 at offset 0"),
    (b"\x04\xc3\x28\x00", "a string that is not UTF-8 \\(byte 0 of 2\\) at offset 0"),
    (b"\x02k\x00\x04", "enum index 2 of 2 symbols at offset 3"),
    (b"\x02k\x00\x00\xfe\xff\xff\xff\x0f", "truncated: 2147483647 items in 0 bytes at offset 4"),
])
def test_malformed_bodies_say_what_is_wrong_and_where(body: bytes, error: str) -> None:
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "s", "type": "string"}, {"name": "b", "type": "bytes"},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["x", "y"]}},
        {"name": "m", "type": {"type": "map", "values": "long"}}]}
    with pytest.raises(ValueError, match=f"^R: {error}$"):
        compile_reader(schema)(body, 0)


def test_a_negative_offset_and_a_malformed_body_are_value_errors_of_every_reading() -> None:
    """A call, ``views`` and ``json_line`` refuse a negative offset alike, and name the
    schema in a malformed body's error alike."""
    read = compile_reader(STATS_SCHEMA)
    body = compile_writer(STATS_SCHEMA)(STATS_RECORD)
    for reading in (read, read.views, read.json_line):
        with pytest.raises(ValueError, match="^negative offset -1$"):
            reading(body, -1)
        with pytest.raises(ValueError, match=f"^{STATS_SCHEMA['name']}: truncated"):
            reading(body[:3], 0)


def test_enums_fixed_and_a_null_second_branch_read_like_fastavro() -> None:
    """Outside the Python reader's subset once (it fell back to fastavro): the same values."""
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["a", "b", "c"]}},
        {"name": "f", "type": {"type": "fixed", "name": "F", "size": 3}},
        {"name": "n", "type": ["long", "null"]}, {"name": "o", "type": ["E", "null"]},
        {"name": "r", "type": {"type": "array", "items": {"type": "record", "name": "In", "fields": [
            {"name": "x", "type": "float"}, {"name": "y", "type": ["null", "In"]}]}}}]}
    record = {"e": "c", "f": b"\x00\xffz", "n": None, "o": "b",
              "r": [{"x": 0.5, "y": {"x": -2.0, "y": None}}, {"x": 1e10, "y": None}]}
    body = compile_writer(schema)(record)
    assert compile_reader(schema)(body, 0) == fastavro_record(schema, body)
    assert compile_reader(schema)(body, 0)["r"][0] == record["r"][0]
    assert compile_reader(schema, frozenset({"o", "r"}))(body, 0) == {"o": "b", "r": fastavro_record(schema, body)["r"]}


def test_a_hostile_count_of_nulls_raises_without_building_them() -> None:
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "a", "type": {"type": "array", "items": "null"}}]}
    assert compile_reader(schema)(zigzag(3) + b"\x00", 0) == {"a": [None, None, None]}
    with pytest.raises(ValueError, match="items of no size"):
        compile_reader(schema)(zigzag(2**62) + b"\x00", 0)


def test_schemas_outside_the_subset_fall_back_to_fastavro() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": ["string", "long"]}]}
    with pytest.raises(UnsupportedSchema):
        compile_reader(schema)
    assert make_reader(schema)(b"HDR\x02\x04", 3) == {"x": 2}


SUBSETS = [frozenset(), frozenset({"source_id"}), frozenset({"client_ip", "status", "answers", "version"}),
           frozenset({"request_headers", "response_body", "latency_us", "handshake_ms", "error"})]


@pytest.mark.parametrize("topic", [CONNECTIONS, TRANSACTIONS, DNS, TLS])
def test_a_reader_of_some_fields_reads_them_as_the_whole_reader(topic: str) -> None:
    """``fields``: the other fields are stepped over, and those read are the same."""
    schema = json.loads(schema_text(TOPIC_SCHEMAS[topic]))
    write, read = compile_writer(schema, b"HDR"), compile_reader(schema)
    names = [f["name"] for f in schema["fields"]]
    subsets = [*SUBSETS, frozenset(names), frozenset(names[::2]), frozenset(names[1::3])]
    readers = [(fields, compile_reader(schema, fields)) for fields in subsets]
    n = 0
    for path in CAPTURES:
        for record in local_l7(str(path)).get(topic, []):
            message = write(record)
            whole = read(message, 3)
            for fields, read_some in readers:
                got = read_some(message, 3)
                assert got == {k: v for k, v in whole.items() if k in fields}
                assert list(got) == [k for k in whole if k in fields]  # in the schema's order
            n += 1
    assert n > 0


def test_a_reader_of_some_fields_steps_over_blocks_and_maps() -> None:
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "m", "type": {"type": "map", "values": "long"}},
        {"name": "a", "type": {"type": "array", "items": "string"}},
        {"name": "d", "type": ["null", "double"]}, {"name": "r", "type": {
            "type": "record", "name": "In", "fields": [{"name": "f", "type": "float"},
                                                       {"name": "b", "type": "boolean"}]}},
        {"name": "z", "type": "null"}, {"name": "x", "type": "long"}]}
    body = (zigzag(-2) + zigzag(6) + b"\x02k\x02" + b"\x02j\x04" + zigzag(1) + b"\x02z\x06" + b"\x00"
            + zigzag(-1) + zigzag(2) + b"\x02q" + zigzag(2) + b"\x02r" + b"\x02s" + b"\x00"
            + b"\x02" + b"\x00" * 8 + b"\x00\x00\x80\x3f" + b"\x01" + zigzag(-300))
    assert compile_reader(schema)(body, 0)["x"] == -300
    assert compile_reader(schema, frozenset({"x"}))(body, 0) == {"x": -300}
    assert compile_reader(schema, frozenset({"a", "r"}))(body, 0) == {"a": ["q", "r", "s"],
                                                                      "r": {"f": 1.0, "b": True}}


def test_a_reader_of_some_fields_refuses_a_truncated_body() -> None:
    read = compile_reader(STATS_SCHEMA, frozenset({"stage"}))
    body = compile_writer(STATS_SCHEMA)(STATS_RECORD)
    assert read(body, 0) == {"stage": "s"}
    for cut in range(len(body)):
        with pytest.raises((ValueError, IndexError)):
            read(body[:cut], 0)


@given(st.binary(max_size=200))
@settings(max_examples=2000)
def test_a_reader_of_some_fields_on_garbage_raises_a_value_or_index_error_or_decodes(data: bytes) -> None:
    try:
        compile_reader(STATS_SCHEMA, frozenset({"final", "counters"}))(data, 0)
    except (ValueError, IndexError):
        pass


def test_some_fields_of_a_schema_outside_the_subset() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": ["string", "long"]},
                                                        {"name": "y", "type": "long"}]}
    assert make_reader(schema, frozenset({"y"}))(b"HDR\x02\x04\x06", 3) == {"y": 3}


STRINGS = {"type": "record", "name": "S", "fields": [
    {"name": "ip", "type": "string"},
    {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["open", "closed"]}},
    {"name": "headers", "type": {"type": "map", "values": "string"}}]}


def _strings_body(ip: str, state: int, headers: dict[str, str]) -> bytes:
    return compile_writer(STRINGS, b"")({"ip": ip, "state": ["open", "closed"][state], "headers": headers})


def test_a_reader_gives_the_same_short_string_object_again() -> None:
    """A reader hands out one object per short text it has made (addresses, states, header
    names: what a collector of many records holds over and over), not one per record."""
    read = compile_reader(STRINGS)
    body = _strings_body("10.1.2.3", 1, {"Host": "example.com"})
    a, b = read(body), read(body)
    assert a == b == {"ip": "10.1.2.3", "state": "closed", "headers": {"Host": "example.com"}}
    assert a["ip"] is b["ip"] and a["state"] is b["state"] and a["headers"]["Host"] is b["headers"]["Host"]
    assert next(iter(a["headers"])) is next(iter(b["headers"]))  # the map's key too
    long = "x" * 65  # past the bound: made anew each time, equal all the same
    c, d = read(_strings_body(long, 0, {})), read(_strings_body(long, 0, {}))
    assert c["ip"] == d["ip"] == long and c["ip"] is not d["ip"]


def test_a_reader_stays_right_past_its_string_cache_bound() -> None:
    """More distinct texts than the cache holds (8,192): it starts over, and every value
    still reads back as written."""
    read = compile_reader(STRINGS)
    for i in range(20_000):
        ip = f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
        assert read(_strings_body(ip, i & 1, {f"h{i % 300}": str(i)})) == {
            "ip": ip, "state": ["open", "closed"][i & 1], "headers": {f"h{i % 300}": str(i)}}


def test_views_give_big_bytes_as_slices_of_the_message() -> None:
    """``views`` (a packet worker's batch): a bytes value of 4 KiB or more is a read-only
    memoryview of the message itself, not a copy; a smaller one is ``bytes``; the record
    is the one a call gives."""
    schema = json.loads(schema_text(TOPIC_SCHEMAS[PACKETS]))
    payloads = bytes(range(256)) * 40  # 10,240 bytes
    record = {"source_id": "s", "source_name": "", "sequence": 7, "layout_version": 1, "count": 1,
              "packets": b"\x05" * 100, "payloads": payloads, "end_of_input": False, "batches_before": 7,
              "socket_events": False, "tunnel_of": b"", "tunnel_paths": b""}
    message = compile_writer(schema, b"HDR")(record)
    read = compile_reader(schema)
    got = read.views(message, 3)
    assert got == read(message, 3) == record
    view = got["payloads"]
    assert isinstance(view, memoryview) and view.readonly and view.obj is message
    assert bytes(view) == payloads
    assert type(got["packets"]) is bytes
    with pytest.raises(ValueError):
        read.views(message[:-50], 3)  # cut inside the payloads: malformed, not a short view
