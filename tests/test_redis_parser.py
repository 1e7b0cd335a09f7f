"""The Redis analyser without a server: bad input, bounds and checkpoints.

(tests/test_redis.py checks the records against a real redis-server; the parser's own
unit tests, a checkpoint at every byte and random input included, are in
rust/src/l7/resp/tests.rs.)

* Garbage, truncated messages, huge lengths, deep nesting and random mutations of a real
  exchange, in random splits with random gaps, through the analyser: no exception, the
  waiting commands bounded, every record well-formed; a malformed value is a named drop
  reason (``redis_parse_error.<reason>``).
* A checkpoint of the analyser (the engine's codec) after every chunk of an exchange gives
  the records the uninterrupted analyser gives.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from l7_harness import Chunk, Sink, context, run, run_with_checkpoints, split
from wirestream.processors.l7.base import L7Options
from wirestream.processors.l7.redis import MAX_PENDING, RedisAnalyzer

from wirestream.topics import QUERIES

COMMANDS = (b"*3\r\n$3\r\nSET\r\n$4\r\nuser\r\n$6\r\nsecret\r\n"
            b"*2\r\n$3\r\nGET\r\n$4\r\nuser\r\n"
            b"*2\r\n$4\r\nINCR\r\n$4\r\nuser\r\n"
            b"*2\r\n$4\r\nAUTH\r\n$8\r\nhunter22\r\n"
            b"*2\r\n$7\r\nHGETALL\r\n$1\r\nh\r\n"
            b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nc1\r\n")
REPLIES = (b"+OK\r\n$6\r\nsecret\r\n-ERR value is not an integer or out of range\r\n"
           b"-WRONGPASS invalid username-password pair\r\n%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
           b"*3\r\n$9\r\nsubscribe\r\n$2\r\nc1\r\n:1\r\n"
           b">3\r\n$7\r\nmessage\r\n$2\r\nc1\r\n$5\r\nhello\r\n"
           b"*3\r\n$7\r\nmessage\r\n$2\r\nc1\r\n$5\r\nworld\r\n")
FIELDS = {"query_id", "connection_id", "community_id", "client_ip", "client_port", "server_ip", "server_port",
          "protocol", "operation", "statement", "target", "status", "error", "reply_type", "rows",
          "request_bytes", "response_bytes", "request_ts_us", "response_ts_us", "latency_us", "pipelined", "tls",
          "db_user", "error_code", "command_tag", "auth_method"}


def _analyzer(sink: Sink, options: L7Options) -> RedisAnalyzer:
    return RedisAnalyzer(context(sink, options, 6379), 0)


def _run(chunks: list[Chunk]) -> tuple[list[dict[str, Any]], RedisAnalyzer]:
    def bounded(a: RedisAnalyzer) -> None:
        assert len(a.pending) <= MAX_PENDING

    return run(lambda ctx: RedisAnalyzer(ctx, 0), QUERIES, chunks, None, bounded)


def _splits(rng: random.Random, data: bytes, direction: int, gaps: bool) -> list[Chunk]:
    return split(rng, data, direction, gaps)


def test_an_exchange_gives_its_records_whatever_the_split() -> None:
    rng = random.Random(7)
    want = None
    for _ in range(50):
        chunks = _splits(rng, COMMANDS, 0, False) + _splits(rng, REPLIES, 1, False)
        records, a = _run(chunks)
        got = [(r["operation"], r["target"], r["status"], r["reply_type"], r["rows"]) for r in records]
        want = want or got
        assert got == want
    assert want == [("SET", "user", "ok", "simple", 1), ("GET", "user", "ok", "bulk", 1),
                    ("INCR", "user", "error", "error", None), ("AUTH", None, "error", "error", None),
                    ("HGETALL", "h", "ok", "map", 1), ("SUBSCRIBE", "c1", "ok", "array", 3),
                    ("message", "c1", "ok", "push", 2)]
    assert all(set(r) == FIELDS for r in records)
    assert "secret" not in repr(records) and "hunter22" not in repr(records)
    assert a.stats["redis_queries"] == 7


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.binary(max_size=64), st.booleans()), max_size=40),
       st.integers(0, 2**32))
def test_garbage_and_mutations_never_raise(chunks: list[Chunk], seed: int) -> None:
    rng = random.Random(seed)
    valid = _splits(rng, COMMANDS, 0, True) + _splits(rng, REPLIES, 1, True)
    mutated = []
    for d, data, gap in valid:
        if data and rng.random() < 0.2:
            b = bytearray(data)
            b[rng.randrange(len(b))] = rng.randrange(256)
            data = bytes(b)
        mutated.append((d, data, gap))
    for stream in (chunks, mutated, chunks + mutated):
        records, a = _run(stream)
        for r in records:
            assert set(r) == FIELDS and r["status"] in ("ok", "error", "no_reply")
        reasons = [k for k in a.stats if k.startswith("redis_parse_error.")]
        assert all(k.split(".", 1)[1] in {"bad_type", "bad_length", "bad_integer", "missing_crlf", "line_too_long",
                                           "too_deep", "streamed"} for k in reasons)


def test_huge_lengths_and_deep_nesting_are_named_drops() -> None:
    for reply, reason in ((b"$999999999999\r\n", "bad_length"), (b"*1\r\n" * 100, "too_deep"),
                          (b"x\r\n", "bad_type"), (b"+" + b"a" * 70_000, "line_too_long")):
        sink = Sink(QUERIES)
        a = _analyzer(sink, L7Options())
        a.on_data(0, b"*1\r\n$4\r\nPING\r\n", 1)
        a.on_data(1, reply, 2)
        a.on_close(3)
        assert a.stats[f"redis_parse_error.{reason}"] == 1, (reason, a.stats)
        assert [r["status"] for r in sink.records] == ["no_reply"]


def test_too_many_waiting_commands_go_out_unanswered() -> None:
    sink = Sink(QUERIES)
    a = _analyzer(sink, L7Options())
    a.on_data(0, b"*1\r\n$4\r\nPING\r\n" * (MAX_PENDING + 5), 1)
    assert len(a.pending) == MAX_PENDING and a.stats["redis.pending_overflow"] == 5
    assert [r["status"] for r in sink.records] == ["no_reply"] * 5


def test_no_redact_keeps_the_first_arguments() -> None:
    sink = Sink(QUERIES)
    a = _analyzer(sink, L7Options(redact=False))
    a.on_data(0, b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n$2\r\nEX\r\n", 1)
    a.on_data(1, b"+OK\r\n", 2)
    assert sink.records[0]["statement"] == "SET k value …"


def test_a_checkpoint_after_every_chunk_gives_the_same_records() -> None:
    rng = random.Random(3)
    chunks = []
    for c, r in zip(_splits(rng, COMMANDS, 0, False), _splits(rng, REPLIES, 1, False), strict=False):
        chunks += [c, r]
    straight, _ = _run(chunks)
    assert run_with_checkpoints(lambda ctx: RedisAnalyzer(ctx, 0), QUERIES, chunks) == straight
