"""The HTTP/2 analyser without a server: records, redaction, bad input and checkpoints.

(tests/test_grpc.py checks the records against grpcio and tshark; the core's own unit
tests, HPACK against RFC 7541's examples, every Huffman code, every split and random
input, are in rust/src/l7/h2/tests.rs.)
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from l7_harness import Chunk, run, run_with_checkpoints, split
from wirestream.processors.l7.base import L7Options
from wirestream.processors.l7.detect import Verdict, detect
from wirestream.processors.l7.http2 import Http2Analyzer

from wirestream.topics import TRANSACTIONS

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SCHEMA = json.loads((Path(__file__).parent.parent / "schemas/transaction.avsc").read_text())
#: the record's fields the analyser sets (enrichment and source_id come later)
FIELDS = {f["name"] for f in SCHEMA["fields"]} - {"source_id", "tunnel", "client_zone", "server_zone",
                                                    "cross_zone"} - {f"{side}_{what}" for side in ("client", "server")
                                                                     for what in ("pod", "namespace", "workload",
                                                                                  "node", "pid", "process")} - {
    "server_service"}


def frame(typ: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([typ, flags]) + struct.pack(">I", stream) + payload


def lit(name: str, value: str) -> bytes:
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def message(data: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(data)) + data


def exchange() -> list[tuple[int, bytes]]:
    get = b"\x82\x86" + lit(":path", "/api?access_token=s3cr3t&x=1") + lit(":authority", "api.test") \
        + lit("authorization", "Bearer s3cr3t")
    call = b"\x83\x86" + lit(":path", "/pkg.Svc/Do") + lit(":authority", "api.test") \
        + lit("content-type", "application/grpc")
    client = PREFACE + frame(4, 0, 0, b"") + frame(1, 5, 1, get) + frame(1, 4, 3, call) \
        + frame(0, 1, 3, message(b"abc") + message(b"de"))
    server = frame(4, 0, 0, b"") + frame(1, 5, 1, b"\x88" + lit("set-cookie", "sid=s3cr3t; Path=/")) \
        + frame(1, 4, 3, b"\x88" + lit("content-type", "application/grpc")) + frame(0, 0, 3, message(b"xyz")) \
        + frame(1, 5, 3, lit("grpc-status", "14") + lit("grpc-message", "backend%20down"))
    return [(0, client), (1, server)]


def _split(rng: random.Random, conv: list[tuple[int, bytes]]) -> list[Chunk]:
    return [c for d, data in conv for c in split(rng, data, d, most=25)]


def _run(chunks: list[Chunk], options: L7Options | None = None) -> tuple[list[dict[str, Any]], Http2Analyzer]:
    return run(lambda ctx: Http2Analyzer(ctx, 0), TRANSACTIONS, chunks, options)


def test_records_whatever_the_split() -> None:
    rng = random.Random(4)
    for _ in range(30):
        records, a = _run(_split(rng, exchange()))
        assert [(r["stream_id"], r["method"], r["status"], r["grpc_status"]) for r in records] == [
            (1, "GET", 200, None), (3, "POST", 200, 14)]
    get, call = records
    assert all(set(r) == FIELDS for r in records), set(records[0]) ^ FIELDS
    assert get["path"] == "/api?access_token=[REDACTED]&x=1"
    assert get["request_headers"]["authorization"] == "Bearer [REDACTED]"
    assert "s3cr3t" not in repr(records)
    assert get["grpc_service"] is None and get["grpc_request_messages"] is None and get["host"] == "api.test"
    assert (call["grpc_service"], call["grpc_method"], call["grpc_message"]) == ("pkg.Svc", "Do", "backend down")
    assert (call["grpc_request_messages"], call["grpc_response_messages"]) == (2, 1)
    assert (call["request_body_size"], call["response_body_size"]) == (15, 8)  # messages with their prefixes
    assert call["response_headers"]["grpc-status"] == "14"
    assert a.stats["http2_streams"] == 2 and a.stats["grpc_calls"] == 1


def test_no_redact_and_detection() -> None:
    records, _ = _run(_split(random.Random(1), exchange()), L7Options(redact=False))
    assert records[0]["path"] == "/api?access_token=s3cr3t&x=1"
    assert detect(PREFACE) is Verdict.H2_PREFACE and detect(PREFACE[:10]) is Verdict.NEED_MORE
    assert detect(b"PRI * HTTP/1.1\r\n") is not Verdict.H2_PREFACE


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.binary(max_size=64), st.booleans()), max_size=40),
       st.integers(0, 2**32))
def test_garbage_and_mutations_never_raise(chunks: list[Chunk], seed: int) -> None:
    rng = random.Random(seed)
    mutated = []
    for d, data, _ in _split(rng, exchange()):
        if data and rng.random() < 0.2:
            b = bytearray(data)
            b[rng.randrange(len(b))] = rng.randrange(256)
            data = bytes(b)
        mutated.append((d, data, rng.random() < 0.03))
    for stream in (chunks, mutated, [(0, PREFACE, False)] + chunks):
        records, a = _run(stream)
        for r in records:
            assert set(r) == FIELDS
        assert all(k.split(".", 1)[1] in {"bad_preface", "bad_continuation"} or k.startswith("http2_hpack_error.")
                   for k in a.stats if k.startswith("http2_parse_error."))


def test_a_checkpoint_after_every_chunk_gives_the_same_records() -> None:
    chunks = _split(random.Random(8), exchange())
    straight, _ = _run(chunks)
    assert run_with_checkpoints(lambda ctx: Http2Analyzer(ctx, 0), TRANSACTIONS, chunks) == straight
    assert len(straight) == 2
