"""What ``analyze`` writes and shows does not depend on how it collected the records.

- The JSON lines of :class:`~wirestream.sinks.jsonl.JsonlWriter` (orjson, streamed while
  the records are read) are byte for byte those of ``to_json_line`` (the standard
  library's ``json``), which ``write_jsonl`` wrote after the run before.
- The summary (tables and ``--json``) of records cut to ``console.SUMMARY_FIELDS`` (what
  ``analyze`` keeps in memory) is the summary of the whole records.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import DATA
from hypothesis import given, settings
from hypothesis import strategies as st
from local_pipeline import local_windows
from rich.console import Console
from wirestream._core import json_text
from wirestream.schemas import schema_text
from wirestream.sinks import console
from wirestream.sinks.jsonl import (
    JsonlWriter,
    _float_fields,
    line_encoder,
    to_json_line,
    topic_encoder,
    write_jsonl,
)

from wirestream.topics import CONNECTIONS, DNS, OUTPUT_TOPICS, TOPIC_SCHEMAS, TRANSACTIONS

CAPTURES = [DATA / "chrissanders/http_espn.pcapng", DATA / "chrissanders/dns_tcp.pcapng",
            DATA / "chrissanders/http_dvwa_clearlogin.pcapng", DATA / "zeek-tls/hrr.pcap",
            DATA / "zeek-tls/tls-early-alert.pcap", DATA / "chrissanders/tcp_retransmissions.pcapng"]


def stdlib_line(record: dict[str, Any]) -> bytes:
    """The line the JSONL files held before: ``to_json_line``, a newline, UTF-8."""
    return (to_json_line(record) + "\n").encode("utf-8")


@pytest.fixture(scope="module")
def capture_records() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in OUTPUT_TOPICS}
    for path in CAPTURES:
        for topic, records in local_windows(str(path)).items():
            if topic in out:
                out[topic].extend(records)
    return out


def test_every_output_topic_has_its_floats_at_the_top() -> None:
    """The fast encoder finds floats among a record's own fields: a schema with a float
    deeper would be written by the slow one (correct, but this says when it happens)."""
    for topic in OUTPUT_TOPICS:
        assert _float_fields(json.loads(schema_text(TOPIC_SCHEMAS[topic]))) is not None, topic


def test_every_record_of_the_test_captures_is_the_same_line(capture_records: dict[str, list]) -> None:
    assert {t for t, r in capture_records.items() if r} >= {CONNECTIONS, TRANSACTIONS, "wire.dns",
                                                            "wire.tls", "wire.service-metrics"}
    for topic, records in capture_records.items():
        encode = topic_encoder(topic)
        for record in records:
            assert encode(record) == stdlib_line(record), (topic, record)


ODD_FLOATS = [0.0, -0.0, 1e-4, 9.99e-5, 1e-5, -2.5e-7, 5e-324, 1e-300, 1e16, 1.5e300, 0.1, 1 / 3,
              math.inf, -math.inf, math.nan]


def test_odd_values_are_written_as_json_writes_them() -> None:
    encode = topic_encoder(CONNECTIONS)
    for v in ODD_FLOATS:
        record = {"retransmission_rate": v, "rtt_avg_us": v, "client_ip": "é\u2028\x00\x1f\"\\/\x7f😀"}
        assert encode(record) == stdlib_line(record), v
        assert record["rtt_avg_us"] is v  # the caller's record is not changed
    odd = {"request_body": b"\xff\xfe ok \xc3\x28 \xe2\x82", "response_body": bytearray(b"\x00\x01"),
           "status": None, "request_headers": {"x-\u00e9": "\ud7ff"}, "big": 2**70, "neg": -(2**63)}
    assert topic_encoder(TRANSACTIONS)(odd) == stdlib_line(odd)


@given(st.dictionaries(st.text(max_size=5), st.one_of(
    st.floats(), st.integers(min_value=-(2**63), max_value=2**64), st.text(), st.binary(), st.none(),
    st.booleans(), st.lists(st.integers(min_value=0, max_value=2**62), max_size=3)), max_size=6))
@settings(max_examples=500)
def test_any_record_is_the_same_line(record: dict[str, Any]) -> None:
    # every key a float field: the fast encoder's check covers any of them
    encode = line_encoder({"type": "record", "name": "R",
                           "fields": [{"name": k, "type": "double"} for k in record]})
    assert encode(record) == stdlib_line(record)


#: pieces that make near-UTF-8 bytes: valid sequences of every length, cut ones, lone
#: continuation bytes, overlong forms, surrogates, beyond U+10FFFF, controls and quotes
UTF8_PIECES = [b"a", b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xc3", b"\xe2\x82",
               b"\xf0\x9f\x98", b"\x80", b"\xbf", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
               b"\xed\x9f\xbf", b"\xf4\x90\x80\x80", b"\xf5", b"\xff", b"\x00", b"\n", b"\x1f",
               b'"', b"\\", b"\x7f", b"\xe2\x80\xa8"]
NEAR_UTF8 = st.one_of(st.binary(max_size=64),
                      st.lists(st.sampled_from(UTF8_PIECES), max_size=24).map(b"".join))


@given(NEAR_UTF8)
@settings(max_examples=3000)
def test_the_text_of_bytes_is_pythons_decode_with_replace(data: bytes) -> None:
    """The core's JSON literal of a body's text (jsonl's for orjson) is that of Python's
    text, replacement characters included."""
    text = data.decode("utf-8", "replace")
    assert json_text(data) == json.dumps(text, ensure_ascii=False).encode()


def test_the_files_are_those_write_jsonl_wrote(capture_records: dict[str, list], tmp_path: Path) -> None:
    paths = write_jsonl(tmp_path / "a", capture_records)
    assert [p.name for p in paths] == [f"{t}.jsonl" for t in OUTPUT_TOPICS]
    for topic, path in zip(OUTPUT_TOPICS, paths, strict=True):
        assert path.read_bytes() == b"".join(stdlib_line(r) for r in capture_records[topic])
    writer = JsonlWriter(tmp_path / "b")
    for topic, records in capture_records.items():
        for r in records:
            writer.write(topic, r)
    writer.close()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(p.name for p in paths)
    for path in paths:
        assert (tmp_path / "b" / path.name).read_bytes() == path.read_bytes()


def test_the_files_appear_when_the_run_succeeds(tmp_path: Path) -> None:
    writer = JsonlWriter(tmp_path)
    writer.write(CONNECTIONS, {"a": 1})
    assert not list(tmp_path.glob("*.jsonl"))  # still .partial
    writer.close()
    assert (tmp_path / f"{CONNECTIONS}.jsonl").read_text() == '{"a":1}\n'
    assert not list(tmp_path.glob(".*"))
    failed = JsonlWriter(tmp_path / "failed")
    failed.write(CONNECTIONS, {"a": 1})
    failed.discard()
    assert list((tmp_path / "failed").iterdir()) == []


@dataclass
class File:
    path: str = "x.pcap"
    format: str = "pcap"
    frames: int = 10
    packets: int = 9
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass
class Result:
    files: list[File]
    records: dict[str, list[dict[str, Any]]]
    stats: list[dict[str, Any]] = field(default_factory=list)
    failed: list[Any] = field(default_factory=list)
    elapsed_s: float = 1.0


def summary(result: Result, top: int) -> tuple[str, str]:
    out = io.StringIO()
    console.print_summary(result, top=top, console=Console(file=out, width=200))
    return out.getvalue(), json.dumps(console.summary_json(result), default=str)


@pytest.mark.parametrize("top", [3, 100])
def test_the_summary_needs_only_its_fields(capture_records: dict[str, list], top: int) -> None:
    cut = {t: [{k: v for k, v in r.items() if k in console.SUMMARY_FIELDS[t] | {"source_id"}} for r in records]
           if t in console.SUMMARY_FIELDS else records for t, records in capture_records.items()}
    assert all(len(r) < 20 for r in cut[TRANSACTIONS])
    whole = summary(Result([File()], capture_records), top)
    assert "HTTP transactions" in whole[0] and "DNS queries" in whole[0] and "TLS handshakes" in whole[0]
    assert "UDP and ICMP flows" in whole[0]
    assert summary(Result([File()], cut), top) == whole


def test_text_from_the_wire_is_printed_literally() -> None:
    """A path, host or name with brackets (attacker-chosen text) and IPv6 endpoints are
    printed as they are, not taken for rich markup (which would hide them)."""
    tx = {"client_ip": "fd00::1", "client_port": 40000, "server_ip": "fd00::2", "server_port": 80, "method": "GET",
          "host": "[fd00::2]", "path": "/[red]admin[/red]", "status": 200, "latency_us": 10, "response_body_size": 1,
          "error": None}
    dns = {"client_ip": "fd00::1", "server_ip": "fd00::2", "transport": "udp", "query_name": "[bold]x.test",
           "query_type": "A", "rcode": "NOERROR", "latency_us": 5, "answers": []}
    text, _ = summary(Result([File()], {TRANSACTIONS: [tx], DNS: [dns]}), 10)
    for shown in ("[fd00::1]:40000", "[fd00::2]:80", "[fd00::2]", "/[red]admin[/red]", "[bold]x.test"):
        assert shown in text, shown


def canonical(record: dict[str, Any]) -> str:
    """A record without what differs between two runs of one capture (the run's id)."""
    return json.dumps({k: v for k, v in record.items() if k != "source_id"}, sort_keys=True, default=str)


def test_analyze_streams_the_lines_and_keeps_the_summary_fields(broker, registry, tmp_path: Path) -> None:
    """One run with ``jsonl_dir`` and ``fields`` (as the command runs it), one without:
    the files hold the second's records, line for line as ``to_json_line`` writes them;
    the first's records are the second's cut to the fields."""
    from collections import Counter

    from wirestream.analyze import analyze
    from wirestream.config import Settings

    capture = str(DATA / "chrissanders/http_espn.pcapng")
    settings = Settings(bootstrap=broker.bootstrap, registry=registry.url)
    streamed = analyze([capture], settings, workers=1, jsonl_dir=tmp_path / "out", fields=console.SUMMARY_FIELDS)
    plain = analyze([capture], settings, workers=1)
    assert streamed.jsonl_dir == str(tmp_path / "out") and plain.jsonl_dir is None
    # (the run's call chains too: analyze builds them by default)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{t}.jsonl" for t in (*OUTPUT_TOPICS, "wire.call-chains"))
    for topic in (CONNECTIONS, TRANSACTIONS, "wire.dns"):
        lines = (tmp_path / "out" / f"{topic}.jsonl").read_bytes().splitlines(keepends=True)
        assert lines and all(stdlib_line(json.loads(line)) == line for line in lines)
        want = plain.records[topic]
        assert Counter(canonical(json.loads(line)) for line in lines) == Counter(
            canonical(json.loads(to_json_line(r))) for r in want)
        fields = console.SUMMARY_FIELDS.get(topic)
        if fields is not None:
            want = [{k: v for k, v in r.items() if k in fields | {"source_id"}} for r in want]
        assert Counter(map(canonical, streamed.records[topic])) == Counter(map(canonical, want))


def test_a_message_is_its_records_line(capture_records: dict[str, list], registry) -> None:
    """``AvroCodec.json_line``, the line the compiled core writes from a message's bytes
    (what ``analyze --out`` writes, no record made), is ``to_json_line`` of the record
    the message decodes to: every record of the test captures."""
    from wirestream.codec import AvroCodec
    from wirestream.errors import DecodeError

    codec = AvroCodec(registry.url)
    n = 0
    for topic, records in capture_records.items():
        for record in records:
            message = codec.encode(topic, record)
            assert codec.json_line(message) == stdlib_line(codec.decode(message)), (topic, record)
            n += 1
    assert n > 100
    with pytest.raises(DecodeError):
        codec.json_line(message[:-3])
    with pytest.raises(DecodeError):
        codec.json_line(b"\x01" + message[1:])
    # a big body (20 KB): the same line, and the same error for a cut one
    big = max((r for r in capture_records[TRANSACTIONS] if r["response_body"]), key=lambda r: len(r["response_body"]))
    big = {**big, "response_body": big["response_body"] * (1 + 20_000 // len(big["response_body"]))}
    message = codec.encode(TRANSACTIONS, big)
    assert len(message) > 20_000
    assert codec.json_line(message) == stdlib_line(codec.decode(message))
    with pytest.raises(DecodeError):
        codec.json_line(message[:-3])


def test_the_writing_thread_writes_each_messages_line_in_order(capture_records: dict[str, list], registry,
                                                                tmp_path) -> None:
    """``JsonlWriter.write_message`` (the line made by the core's writing thread from the
    message's bytes), mixed with lines of :meth:`write`: each file holds ``to_json_line``
    of every record, in the order given. A bad framing is refused at once; a malformed
    body fails :meth:`close`, naming it, and leaves no file."""
    from wirestream.codec import AvroCodec
    from wirestream.errors import DecodeError

    codec = AvroCodec(registry.url)
    writer = JsonlWriter(tmp_path / "out")
    want: dict[str, list[bytes]] = {t: [] for t in OUTPUT_TOPICS}
    for topic, records in capture_records.items():
        for i, record in enumerate(records):
            message = codec.encode(topic, record)
            if i % 3 == 2:
                writer.write(topic, codec.decode(message))
            else:
                writer.write_message(topic, message, codec)
            want[topic].append(stdlib_line(codec.decode(message)))
    with pytest.raises(DecodeError):
        writer.write_message(TRANSACTIONS, b"\x01" + message[1:], codec)
    paths = writer.close()
    assert sum(map(len, want.values())) > 100
    for path in paths:
        assert path.read_bytes() == b"".join(want[path.name.removesuffix(".jsonl")]), path

    broken = JsonlWriter(tmp_path / "broken")
    broken.write_message(topic, message, codec)
    broken.write_message(topic, message[:-3], codec)  # the body cut: found by the thread
    with pytest.raises(DecodeError, match=r"1 record\(s\) could not be written .*malformed Avro body"):
        broken.close()
    assert list((tmp_path / "broken").iterdir()) == []


def test_a_write_that_fails_is_an_error_at_close_and_leaves_no_file(tmp_path) -> None:
    """The writing thread's files on a full disk (a file that is /dev/full): the error
    comes at close, as an ``OSError`` saying so, and no file is left behind."""
    out = tmp_path / "out"
    out.mkdir()
    (out / f".{TRANSACTIONS}.jsonl.partial").symlink_to("/dev/full")
    writer = JsonlWriter(out)
    writer.write_line(TRANSACTIONS, b"x" * (2 << 20) + b"\n")  # beyond the file's buffer
    with pytest.raises(OSError, match="writing the JSON lines: .*No space left"):
        writer.close()
    assert list(out.iterdir()) == []


@given(st.lists(st.floats(), min_size=1, max_size=8), st.floats(width=32), st.text(max_size=8), st.binary(max_size=8))
@settings(max_examples=2000)
def test_the_cores_line_writes_floats_and_text_as_python(doubles: list[float], single: float, text: str,
                                                        data: bytes) -> None:
    from wirestream._core import AvroReader, AvroWriter

    schema = json.dumps({"type": "record", "name": "R", "fields": [
        *({"name": f"d{i}", "type": "double"} for i in range(len(doubles))),
        {"name": "f", "type": "float"}, {"name": "t", "type": "string"}, {"name": "b", "type": "bytes"},
        {"name": "m", "type": {"type": "map", "values": ["null", "double"]}}]})
    record = {**{f"d{i}": v for i, v in enumerate(doubles)}, "f": single, "t": text, "b": data,
              "m": {text: doubles[0], "k": None}}
    body = AvroWriter(schema, b"")(record)
    reader = AvroReader(schema)
    assert reader.json_line(body) == stdlib_line(reader(body))


def test_a_codec_decodes_some_fields(registry) -> None:
    from wirestream.codec import AvroCodec
    from wirestream.errors import DecodeError

    codec = AvroCodec(registry.url)
    record = {"connection_id": "c", "source_id": "s", "protocol": "http/1.1", "client_ip": "10.0.0.1",
              "client_port": 40000, "server_ip": "10.0.0.2", "server_port": 80, "request_ts_us": 1,
              "request_headers": {"host": "h"}, "response_headers": {}, "request_body_size": 0,
              "response_body_size": 5, "status": 200, "response_body": b"hello"}
    message = codec.encode(TRANSACTIONS, record)
    some = codec.decoder(frozenset({"status", "source_id", "nothing"}))
    assert some(message) == {"source_id": "s", "status": 200}
    assert codec.decoder(None)(message) == codec.decode(message)
    assert codec.decode(message)["response_body"] == b"hello"
    with pytest.raises(DecodeError):
        some(message[:-3])
    with pytest.raises(DecodeError):
        some(b"\x01" + message[1:])


def test_an_out_folder_that_cannot_be_written_fails_the_run_before_it_starts(tmp_path: Path) -> None:
    import time

    from wirestream.analyze import analyze
    from wirestream.config import Settings

    (tmp_path / "file").write_text("")
    started = time.monotonic()
    with pytest.raises(OSError):
        analyze([str(DATA / "chrissanders/http_espn.pcapng")], Settings(), jsonl_dir=tmp_path / "file")
    assert time.monotonic() - started < 1  # no broker, no worker, no replay
