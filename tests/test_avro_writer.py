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
from wirestream.topics import CONNECTIONS, DNS, STATS, TLS, TOPIC_SCHEMAS, TRANSACTIONS

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
