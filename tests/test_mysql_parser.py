"""The MySQL analyser without a server: bad input, bounds, checkpoints and detection.

(tests/test_mysql.py checks the records against a real MariaDB server and tshark; the
core's own unit tests, every split, multi-packet payloads and random input included,
are in rust/src/l7/mysql/tests.rs.)

* A crafted session (handshake, login, a query with a result set, an error, a prepared
  statement and its execute) gives the same records whatever the split;
* garbage and random mutations of the session, in random splits with random gaps: no
  exception, every record well-formed, a malformed packet a named drop reason;
* a checkpoint of the analyser (the engine's codec) after every chunk gives the records
  the uninterrupted analyser gives;
* detection: a server handshake and a whole COM_QUERY are MySQL; other bytes are not.
"""

from __future__ import annotations

import random
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from l7_harness import Chunk, run, run_with_checkpoints
from wirestream.processors.l7.base import L7Options
from wirestream.processors.l7.detect import Verdict, detect
from wirestream.processors.l7.mysql import MysqlAnalyzer, MysqlMidConnection

from wirestream.topics import QUERIES


def packet(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


CAPS = 0x0000_0200 | 0x8000 | 0x8_0000 | 0x8 | 0x20_0000 | 0x100_0000  # protocol 41, plugin auth, db, no EOF
GREETING = packet(0, b"\x0a10.11.6-MariaDB\x00" + struct.pack("<I", 7) + b"12345678\x00"
                  + struct.pack("<H", CAPS & 0xFFFF) + b"\x2d" + struct.pack("<H", 2) + struct.pack("<H", CAPS >> 16)
                  + b"\x15" + b"\x00" * 10 + b"abcdefghijkl\x00mysql_native_password\x00")
LOGIN = packet(1, struct.pack("<II", CAPS, 1 << 24) + b"\x2d" + b"\x00" * 23 + b"app\x00" + b"\x14"
               + b"hunter2-scramble-xxx" + b"shop\x00mysql_native_password\x00")


def ok(seq: int, affected: int = 0) -> bytes:
    return packet(seq, bytes([0, affected, 0]) + struct.pack("<HH", 2, 0))


def column(seq: int) -> bytes:
    return packet(seq, b"\x03def\x04shop\x05items\x05items\x02id\x02id\x0c?\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00")


def rows_end(seq: int) -> bytes:
    return packet(seq, b"\xfe\x00\x00" + struct.pack("<HH", 2, 0))


CLIENT = [LOGIN,
          packet(0, b"\x03SELECT id FROM items WHERE name = 'hunter2'"),
          packet(0, b"\x03INSERT INTO items VALUES (7, \"x\")"),
          packet(0, b"\x03SELECT * FROM nope"),
          packet(0, b"\x16SELECT id FROM items WHERE id = ?"),
          packet(0, b"\x17" + struct.pack("<I", 9) + b"\x00\x01\x00\x00\x00\x00\x01\x03\x00" + struct.pack("<I", 42)),
          packet(0, b"\x19" + struct.pack("<I", 9)),
          packet(0, b"\x0e")]
SERVER = [GREETING,
          ok(2),
          packet(1, b"\x01") + column(2) + packet(3, b"\x0242") + packet(4, b"\x0243") + rows_end(5),
          ok(1, 1),
          packet(1, b"\xff" + struct.pack("<H", 1146) + b"#42S02Table 'shop.nope' doesn't exist"),
          packet(1, b"\x00" + struct.pack("<I", 9) + struct.pack("<HH", 1, 1) + b"\x00\x00\x00")
          + column(2) + column(3),
          packet(1, b"\x01") + column(2) + packet(3, b"\x00\x00\x2a\x00\x00\x00") + rows_end(4),
          b"",
          ok(1)]
WANT = [("STARTUP", "ok", None, None), ("SELECT", "ok", 2, None), ("INSERT", "ok", 1, None),
        ("SELECT", "error", None, "1146"), ("PREPARE", "ok", None, None), ("SELECT", "ok", 1, None),
        ("PING", "ok", 0, None)]
FIELDS = {"query_id", "connection_id", "community_id", "client_ip", "client_port", "server_ip", "server_port",
          "protocol", "operation", "statement", "target", "status", "error", "reply_type", "rows",
          "request_bytes", "response_bytes", "request_ts_us", "response_ts_us", "latency_us", "pipelined", "tls",
          "db_user", "error_code", "command_tag", "auth_method"}


def _conversation(rng: random.Random) -> list[Chunk]:
    """The server's greeting, then each client packet and its answer, in random splits."""
    out: list[Chunk] = []
    for d, data in [(1, SERVER[0])] + [x for pair in zip([(0, c) for c in CLIENT], [(1, s) for s in SERVER[1:]],
                                                       strict=True) for x in pair]:
        pos = 0
        while pos < len(data):
            n = rng.randint(1, 30)
            out.append((d, data[pos:pos + n], False))
            pos += n
    return out


def _run(chunks: list[Chunk], options: L7Options | None = None,
         cls: type = MysqlAnalyzer) -> tuple[list[dict[str, Any]], MysqlAnalyzer]:
    return run(lambda ctx: cls(ctx, 0), QUERIES, chunks, options)


def test_a_session_gives_its_records_whatever_the_split() -> None:
    rng = random.Random(5)
    for _ in range(50):
        records, a = _run(_conversation(rng))
        assert [(r["operation"], r["status"], r["rows"], r["error_code"]) for r in records] == WANT
    assert all(set(r) == FIELDS for r in records)
    assert records[0]["auth_method"] == "mysql_native_password" and records[0]["db_user"] == "app"
    assert records[1]["statement"] == "SELECT id FROM items WHERE name = ?"
    assert records[2]["statement"] == "INSERT INTO items VALUES (?, ?)"  # MySQL's "..." is a string
    assert records[5]["statement"] == "SELECT id FROM items WHERE id = ?"  # the execute's prepared text
    assert {r["target"] for r in records} == {"shop"}
    assert "hunter2" not in repr(records)
    assert a.stats["mysql_queries"] == 7 and a.stats["mysql.errors"] == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.binary(max_size=64), st.booleans()), max_size=40),
       st.integers(0, 2**32))
def test_garbage_and_mutations_never_raise(chunks: list[Chunk], seed: int) -> None:
    rng = random.Random(seed)
    mutated = []
    for d, data, _ in _conversation(rng):
        if data and rng.random() < 0.2:
            b = bytearray(data)
            b[rng.randrange(len(b))] = rng.randrange(256)
            data = bytes(b)
        mutated.append((d, data, rng.random() < 0.03))
    for stream in (chunks, mutated, chunks + mutated):
        for cls in (MysqlAnalyzer, MysqlMidConnection):
            records, a = _run(stream, cls=cls)
            for r in records:
                assert set(r) == FIELDS and r["status"] in ("ok", "error", "no_reply")
            reasons = [k for k in a.stats if k.startswith("mysql_parse_error.")]
            assert all(k.split(".", 1)[1] in {"bad_handshake", "bad_command", "bad_response", "compressed"}
                       for k in reasons)


def test_a_checkpoint_after_every_chunk_gives_the_same_records() -> None:
    chunks = _conversation(random.Random(9))
    straight, _ = _run(chunks)
    assert run_with_checkpoints(lambda ctx: MysqlAnalyzer(ctx, 0), QUERIES, chunks) == straight
    assert len(straight) == len(WANT)


def test_detection() -> None:
    assert detect(GREETING) is Verdict.MYSQL_GREETING
    assert detect(packet(0, b"\x03SELECT 1")) is Verdict.MYSQL_COMMAND
    for not_mysql in (packet(0, b"\x03SELECT 1")[:-1], packet(1, b"\x03SELECT 1"), packet(0, b"\x03\x00\x01binary"),
                      b"GET / HTTP/1.1\r\n", packet(0, b"\x0aX-not-a-version\x00")):
        assert detect(not_mysql) is not Verdict.MYSQL_COMMAND and detect(not_mysql) is not Verdict.MYSQL_GREETING
    records, _ = _run([(0, packet(0, b"\x03SELECT 2"), False), (1, packet(1, b"\x01") + column(2)
                       + packet(3, b"\x012") + rows_end(4), False)], cls=MysqlMidConnection)
    assert [(r["operation"], r["rows"], r["target"]) for r in records] == [("SELECT", 1, None)]
