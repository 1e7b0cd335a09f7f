"""The PostgreSQL analyser without a server: pairing, bad input, bounds and checkpoints.

(tests/test_postgres.py checks the records against a real PostgreSQL server and tshark;
the framer's own unit tests, random input and every split included, are in
rust/src/l7/pgsql/tests.rs, the SQL redaction's in rust/src/l7/sql.rs.)

* A crafted exchange (login, simple query, extended batch with a failing Parse, a
  pipeline) gives the same records whatever the split;
* garbage, truncated messages, huge lengths and random mutations of the exchange, in
  random splits with random gaps: no exception, the waiting messages bounded, every
  record well-formed; a malformed message is a named drop reason;
* a checkpoint of the analyser (the engine's codec) after every chunk gives the records
  the uninterrupted analyser gives;
* detection: a startup packet, an SSLRequest and a mid-connection Query or Parse are
  PostgreSQL; HTTP's POST and PUT are not.
"""

from __future__ import annotations

import random
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from l7_harness import Chunk, Sink, context, run, run_with_checkpoints, split
from wirestream.processors.l7.base import L7Options
from wirestream.processors.l7.detect import Verdict, detect
from wirestream.processors.l7.postgres import MAX_PENDING, PostgresAnalyzer, PostgresMidConnection

from wirestream.topics import QUERIES


def msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack(">I", len(body) + 4) + body


def startup(**params: str) -> bytes:
    body = struct.pack(">I", 196608) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items())
    body += b"\0"
    return struct.pack(">I", len(body) + 4) + body


def error(code: bytes, text: bytes) -> bytes:
    return msg(b"E", b"SERROR\0VERROR\0C" + code + b"\0M" + text + b"\0\0")


READY = msg(b"Z", b"I")
ROW = msg(b"D", b"\0\x01\0\0\0\x011")
CLIENT = (startup(user="app", database="shop")
          + msg(b"p", b"SCRAM-SHA-256\0\0\0\0\x04n,,x")  # (never read)
          + msg(b"Q", b"SELECT * FROM t WHERE name = 'hunter2'\0")
          # an extended batch whose Parse fails: its Execute fails, the next is skipped
          + msg(b"P", b"\0SELEC oops\0\0\0") + msg(b"B", b"\0\0" + b"\0" * 6) + msg(b"E", b"\0\0\0\0\0")
          + msg(b"P", b"\0SELECT 1\0\0\0") + msg(b"B", b"\0\0" + b"\0" * 6) + msg(b"E", b"\0\0\0\0\0")
          + msg(b"S", b"")
          # a pipeline: two statements, one Sync
          + msg(b"P", b"s1\0INSERT INTO t VALUES ($1)\0\0\0") + msg(b"B", b"\0s1\0" + b"\0" * 6)
          + msg(b"E", b"\0\0\0\0\0") + msg(b"B", b"\0s1\0" + b"\0" * 6) + msg(b"E", b"\0\0\0\0\0")
          + msg(b"S", b""))
SERVER = (msg(b"R", b"\0\0\0\x0aSCRAM-SHA-256\0\0") + msg(b"R", b"\0\0\0\x0b...") + msg(b"R", b"\0\0\0\x0c...")
          + msg(b"R", b"\0\0\0\0") + msg(b"S", b"server_version\x0015.4\0") + msg(b"K", b"\0\0\0\x01\0\0\0\x02")
          + READY
          + msg(b"T", b"\0\x01a\0" + b"\0" * 18) + ROW + ROW + msg(b"C", b"SELECT 2\0") + READY
          + error(b"42601", b'syntax error at or near "SELEC"') + READY
          + msg(b"1", b"") + msg(b"2", b"") + msg(b"n", b"") + msg(b"C", b"INSERT 0 1\0")
          + msg(b"2", b"") + msg(b"n", b"") + msg(b"C", b"INSERT 0 1\0") + READY)
WANT = [("STARTUP", "ok", None, None, "STARTUP"), ("SELECT", "ok", 2, None, "SELECT"),
        ("SELEC", "error", None, "42601", "SELEC"), ("SELECT", "skipped", None, None, "SELECT"),
        ("INSERT", "ok", 1, None, "INSERT"), ("INSERT", "ok", 1, None, "INSERT")]
FIELDS = {"query_id", "connection_id", "community_id", "client_ip", "client_port", "server_ip", "server_port",
          "protocol", "operation", "statement", "target", "status", "error", "reply_type", "rows",
          "request_bytes", "response_bytes", "request_ts_us", "response_ts_us", "latency_us", "pipelined", "tls",
          "db_user", "error_code", "command_tag", "auth_method"}
STATUSES = {"ok", "error", "no_reply", "skipped"}


def _analyzer(sink: Sink, options: L7Options, cls: type = PostgresAnalyzer) -> PostgresAnalyzer:
    return cls(context(sink, options, 5432), 0)


def _run(chunks: list[Chunk], options: L7Options | None = None,
         cls: type = PostgresAnalyzer) -> tuple[list[dict[str, Any]], PostgresAnalyzer]:
    def bounded(a: PostgresAnalyzer) -> None:
        assert len(a.pending) <= MAX_PENDING

    return run(lambda ctx: cls(ctx, 0), QUERIES, chunks, options, bounded)


def _interleaved(rng: random.Random) -> list[Chunk]:
    """The client's bytes, then the server's, in random splits (the server answers once
    the client's messages are all sent: the pairing does not depend on the interleaving
    as long as each response comes after its message)."""
    return split(rng, CLIENT, 0) + split(rng, SERVER, 1)


def test_an_exchange_gives_its_records_whatever_the_split() -> None:
    rng = random.Random(11)
    for _ in range(50):
        records, a = _run(_interleaved(rng))
        got = [(r["operation"], r["status"], r["rows"], r["error_code"], r["statement"].split()[0]) for r in records]
        assert got == WANT
    assert all(set(r) == FIELDS for r in records)
    login = records[0]
    assert (login["auth_method"], login["db_user"], login["target"]) == ("scram-sha-256", "app", "shop")
    assert records[1]["statement"] == "SELECT * FROM t WHERE name = ?"
    # (the client sent everything before the first answer: all but the login waited behind another)
    assert [r["pipelined"] for r in records] == [False] + [True] * 5
    assert records[4]["statement"] == records[5]["statement"] == "INSERT INTO t VALUES ($1)"
    assert "hunter2" not in repr(records) and "n,,x" not in repr(records)
    assert a.stats["pgsql_queries"] == 6 and a.stats["pgsql.errors"] == 1


def test_an_error_before_the_rest_of_a_pipeline_skips_it() -> None:
    """A pipeline still sending when its second statement fails: the server's error comes
    before the third statement and the Sync; the third is skipped, not unanswered."""
    ins = msg(b"P", b"\0INSERT INTO t VALUES ($1)\0\0\0") + msg(b"B", b"\0\0" + b"\0" * 6) + msg(b"E", b"\0\0\0\0\0")
    sink = Sink(QUERIES)
    a = _analyzer(sink, L7Options())
    a.on_data(0, startup(user="u"), 1)
    a.on_data(1, msg(b"R", b"\0\0\0\0") + READY, 2)
    a.on_data(0, ins + msg(b"H", b""), 3)
    a.on_data(1, msg(b"1", b"") + msg(b"2", b"") + msg(b"C", b"INSERT 0 1\0"), 4)
    a.on_data(0, ins + msg(b"H", b""), 5)
    a.on_data(1, msg(b"1", b"") + msg(b"2", b"") + error(b"23505", b"duplicate key"), 6)
    a.on_data(0, ins + msg(b"S", b""), 7)
    a.on_data(1, READY, 8)
    a.on_data(0, msg(b"Q", b"SELECT 1\0"), 9)
    a.on_data(1, msg(b"C", b"SELECT 1\0") + READY, 10)
    a.on_close(11)
    assert [(r["operation"], r["status"], r["error_code"]) for r in sink.records] == [
        ("STARTUP", "ok", None), ("INSERT", "ok", None), ("INSERT", "error", "23505"), ("INSERT", "skipped", None),
        ("SELECT", "ok", None)]
    assert a.outstanding == 0 and not a.pending and a.stats["pgsql.out_of_sync"] == 0


def test_no_redact_keeps_the_text() -> None:
    records, _ = _run(_interleaved(random.Random(1)), L7Options(redact=False))
    assert records[1]["statement"] == "SELECT * FROM t WHERE name = 'hunter2'"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.binary(max_size=64), st.booleans()), max_size=40),
       st.integers(0, 2**32))
def test_garbage_and_mutations_never_raise(chunks: list[Chunk], seed: int) -> None:
    rng = random.Random(seed)
    valid = split(rng, CLIENT, 0, gaps=True) + split(rng, SERVER, 1, gaps=True)
    mutated = []
    for d, data, gap in valid:
        if data and rng.random() < 0.2:
            b = bytearray(data)
            b[rng.randrange(len(b))] = rng.randrange(256)
            data = bytes(b)
        mutated.append((d, data, gap))
    for stream in (chunks, mutated, chunks + mutated):
        for cls in (PostgresAnalyzer, PostgresMidConnection):
            records, a = _run(stream, cls=cls)
            for r in records:
                assert set(r) == FIELDS and r["status"] in STATUSES
            reasons = [k for k in a.stats if k.startswith("pgsql_parse_error.")]
            assert all(k.split(".", 1)[1] in {"bad_type", "bad_length", "bad_startup"} for k in reasons)


def test_huge_lengths_and_bad_types_are_named_drops() -> None:
    for reply, reason in ((b"Z\x7f\xff\xff\xff", "bad_length"), (b"\x01\0\0\0\x04", "bad_type"),
                          (b"Z\0\0\0\x01", "bad_length")):
        sink = Sink(QUERIES)
        a = _analyzer(sink, L7Options())
        a.on_data(0, startup(user="u") + msg(b"Q", b"SELECT 1\0"), 1)
        a.on_data(1, reply, 2)
        a.on_close(3)
        assert a.stats[f"pgsql_parse_error.{reason}"] == 1, (reason, a.stats)
        assert [r["status"] for r in sink.records] == ["no_reply", "no_reply"]


def test_too_many_waiting_messages_go_out_unanswered() -> None:
    sink = Sink(QUERIES)
    a = _analyzer(sink, L7Options())
    a.on_data(0, startup(user="u") + msg(b"Q", b"SELECT 1\0") * (MAX_PENDING + 5), 1)
    assert len(a.pending) == MAX_PENDING and a.stats["pgsql.pending_overflow"] == 6
    assert [r["operation"] for r in sink.records] == ["STARTUP"] + ["SELECT"] * 5
    assert {r["status"] for r in sink.records} == {"no_reply"}


def test_a_gap_sends_the_waiting_queries_out_unanswered_and_resynchronises() -> None:
    sink = Sink(QUERIES)
    a = _analyzer(sink, L7Options())
    a.on_data(0, startup(user="u"), 1)
    a.on_data(1, msg(b"R", b"\0\0\0\0") + READY, 2)
    a.on_data(0, msg(b"Q", b"SELECT 1\0"), 3)
    a.on_gap(1, 100, 4)
    a.on_data(1, b"ta of the lost answer", 5)  # the rest of a message: skipped
    a.on_data(0, msg(b"Q", b"SELECT 2\0"), 6)
    a.on_data(1, msg(b"C", b"SELECT 1\0") + READY, 7)
    a.on_close(8)
    assert [(r["statement"], r["status"]) for r in sink.records] == [
        ("STARTUP", "ok"), ("SELECT ?", "no_reply"), ("SELECT ?", "ok")]
    assert (a.stats["pgsql.unanswered_after_gap"], a.stats["pgsql.resync_skipped"]) == (1, 1)
    assert sink.records[0]["auth_method"] == "trust"


def test_a_capture_from_the_middle_of_a_connection() -> None:
    q = msg(b"Q", b"SELECT now()\0")
    p = msg(b"P", b"\0SELECT $1\0\0\x01\0\0\0\x17")
    assert detect(q) is Verdict.PG_MESSAGE and detect(p) is Verdict.PG_MESSAGE
    for not_pg in (b"POST / HTTP/1.1\r\n", b"PUT /x HTTP/1.1\r\n", b"Q\0\0\0\x10SELECT\0", q[:-1]):
        assert detect(not_pg) is not Verdict.PG_MESSAGE, not_pg
    assert detect(startup(user="u")) is Verdict.PG_STARTUP
    assert detect(b"\0\0\0\x08\x04\xd2\x16\x2f") is Verdict.PG_STARTUP  # SSLRequest
    assert detect(b"\0\0\0\x08") is Verdict.NEED_MORE
    assert detect(b"\0\0\0\x08\0\x02\0\0") is Verdict.UNKNOWN  # protocol 2: not ours
    records, _ = _run([(0, q, False), (1, msg(b"C", b"SELECT 1\0") + READY, False),
                       (0, p + msg(b"B", b"\0\0" + b"\0" * 6) + msg(b"E", b"\0\0\0\0\0") + msg(b"S", b""), False),
                       (1, msg(b"1", b"") + msg(b"2", b"") + msg(b"C", b"SELECT 1\0") + READY, False)],
                      cls=PostgresMidConnection)
    assert [(r["operation"], r["status"], r["target"]) for r in records] == [("SELECT", "ok", None)] * 2


def test_a_checkpoint_after_every_chunk_gives_the_same_records() -> None:
    rng = random.Random(3)
    chunks = []
    for c, r in zip(split(rng, CLIENT, 0), split(rng, SERVER, 1), strict=False):
        chunks += [c, r]
    straight, _ = _run(chunks)
    assert run_with_checkpoints(lambda ctx: PostgresAnalyzer(ctx, 0), QUERIES, chunks) == straight
    assert len(straight) >= 4
