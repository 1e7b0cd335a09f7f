"""The Kafka parser (rust/src/l7/kafka) and analyser (processors/l7/kafka.py) on a
conversation written here byte by byte from Kafka's message definitions: flexible and
classic versions, record batches (a fetch's last one cut short), acks=0. Cut in every
way (one byte at a time, random chunks), checkpointed after every chunk, with gaps, and
mutated at random: the same records, or named errors, never a crash, memory bounded.
The real clients and broker are tests/test_kafka_protocol.py's."""

from __future__ import annotations

import random
import struct

import pytest
from l7_harness import Sink, context, mutate, run, run_with_checkpoints, split
from wirestream._core import KafkaConnection
from wirestream.processors.l7.detect import Verdict, detect
from wirestream.processors.l7.kafka import KafkaAnalyzer

from wirestream.topics import MESSAGING


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def cstr(s: str | None) -> bytes:  # a compact (nullable) string
    return b"\0" if s is None else uvarint(len(s) + 1) + s.encode()


def string(s: str) -> bytes:
    return struct.pack(">h", len(s)) + s.encode()


def batch(count: int, codec: int = 0, control: bool = False, body: int = 40) -> bytes:
    """A record batch (magic 2) of ``count`` records: its header and ``body`` bytes."""
    attributes = codec | (0x20 if control else 0)
    after_length = struct.pack(">ibIhiqqqhii", 0, 2, 0, attributes, count - 1, 0, 0, -1, -1, -1, count)
    return struct.pack(">qi", 0, len(after_length) + body) + after_length + b"r" * body


def request(key: int, version: int, corr: int, body: bytes, flex: bool, client: str = "app-1") -> bytes:
    header = struct.pack(">hhi", key, version, corr) + string(client) + (b"\0" if flex else b"")
    return struct.pack(">i", len(header) + len(body)) + header + body


def response(corr: int, body: bytes, flex: bool) -> bytes:
    header = struct.pack(">i", corr) + (b"\0" if flex else b"")
    return struct.pack(">i", len(header) + len(body)) + header + body


RECORDS = batch(3, codec=3) + batch(2, codec=3)
CONVERSATION = [
    # ApiVersions v3: a flexible request (header v2), a response with header v0
    (0, request(18, 3, 1, cstr("librdkafka") + cstr("2.6") + b"\0", True)),
    (1, response(1, struct.pack(">h", 0) + uvarint(1) + struct.pack(">i", 0) + b"\0", False)),
    # Produce v9 (flexible): one topic, one partition, two lz4 batches of 3 and 2 records
    (0, request(0, 9, 2, b"\0" + struct.pack(">hi", -1, 30000) + uvarint(2) + cstr("orders") + uvarint(2)
                + struct.pack(">i", 0) + uvarint(len(RECORDS) + 1) + RECORDS + b"\0" + b"\0" + b"\0", True)),
    (1, response(2, uvarint(2) + cstr("orders") + uvarint(2) + struct.pack(">ihqqq", 0, 0, 10, -1, 0) + uvarint(1)
                 + b"\0" + b"\0" + b"\0" + struct.pack(">i", 0) + b"\0", True)),
    # Fetch v12 (flexible) request, and its response: a topic whose partition holds a
    # batch of 4, a control batch and a batch cut short by the fetch's size limit
    (0, request(1, 12, 3, struct.pack(">iiiibii", -1, 500, 1, 1 << 20, 0, 0, -1) + uvarint(2) + cstr("orders")
                + uvarint(2) + struct.pack(">iiqiqi", 0, -1, 10, -1, 0, 1 << 20) + b"\0" + b"\0" + uvarint(1)
                + cstr("") + b"\0", True)),
    (1, response(3, struct.pack(">ihi", 0, 0, 0) + uvarint(2) + cstr("orders") + uvarint(2)
                 + struct.pack(">ihqqq", 0, 0, 20, 20, 0) + b"\0" + struct.pack(">i", -1)
                 + uvarint(len(batch(4) + batch(1, control=True) + batch(9)[:50]) + 1)
                 + batch(4) + batch(1, control=True) + batch(9)[:50] + b"\0" + b"\0" + b"\0", True)),
    # Produce v3 with acks=0 (classic): no response comes
    (0, request(0, 3, 4, string("txn-1")[:0] + struct.pack(">h", -1) + struct.pack(">hi", 0, 1000)
                + struct.pack(">i", 1) + string("orders") + struct.pack(">i", 1) + struct.pack(">i", 1)
                + struct.pack(">i", len(batch(7))) + batch(7), False)),
    # Metadata v1 asking for a topic that does not exist: UNKNOWN_TOPIC_OR_PARTITION
    (0, request(3, 1, 5, struct.pack(">i", 1) + string("ghost"), False)),
    (1, response(5, struct.pack(">i", 0) + struct.pack(">i", -1) + struct.pack(">i", 1) + struct.pack(">h", 3)
                 + string("ghost") + b"\0" + struct.pack(">i", 0), False)),
    # JoinGroup v5 in a group, answered by a coordinator that is not it
    (0, request(11, 5, 6, string("billing") + struct.pack(">ii", 10000, 30000) + string("") + struct.pack(">h", -1)
                + string("consumer") + struct.pack(">i", 0), False)),
    (1, response(6, struct.pack(">ihi", 0, 16, -1) + string("") + string("") + string("") + struct.pack(">i", 0),
                 False)),
]

EXPECTED = [
    ("ApiVersions", 3, "ok", None, None, []),
    ("Produce", 9, "ok", None, 5, ["orders"]),
    ("Fetch", 12, "ok", None, 4, ["orders"]),
    ("Produce", 3, "sent", None, 7, ["orders"]),
    ("Metadata", 1, "error", "UNKNOWN_TOPIC_OR_PARTITION", None, ["ghost"]),
    ("JoinGroup", 5, "error", "NOT_COORDINATOR", None, []),
]


def make(ctx):  # noqa: ANN001, ANN201
    return KafkaAnalyzer(ctx, 0)


def chunks_of(rng: random.Random, gaps: bool = False, most: int = 40) -> list:
    out = []
    for d, data in CONVERSATION:
        out += split(rng, data, d, gaps, most)
    return out


def summary(records: list[dict]) -> list[tuple]:
    return [(r["api"], r["api_version"], r["status"], r["error"], r["records"], r["topics"]) for r in records]


def test_the_conversation_whole() -> None:
    records, a = run(make, MESSAGING, [(d, data, False) for d, data in CONVERSATION])
    assert summary(records) == EXPECTED
    fetch = records[2]
    assert fetch["compression"] == "none" and fetch["partitions"] == 1
    assert records[1]["compression"] == "lz4" and records[1]["record_bytes"] == len(RECORDS)
    assert records[5]["group_id"] == "billing" and records[5]["error_code"] == 16
    assert all(r["client_id"] == "app-1" and r["parse_error"] is None for r in records)
    assert not a.stats.get("kafka.skipped_bytes")


@pytest.mark.parametrize("seed", range(20))
def test_any_split_gives_the_same_records(seed: int) -> None:
    rng = random.Random(seed)
    records, _ = run(make, MESSAGING, chunks_of(rng, most=1 if seed == 0 else 40))
    assert summary(records) == EXPECTED


@pytest.mark.parametrize("seed", range(5))
def test_a_checkpoint_after_every_chunk_changes_nothing(seed: int) -> None:
    records = run_with_checkpoints(make, MESSAGING, chunks_of(random.Random(seed), most=30))
    assert summary(records) == EXPECTED


def test_a_gap_inside_a_frame_costs_that_frame_only() -> None:
    chunks = [(d, data, False) for d, data in CONVERSATION]
    d, produce, _ = chunks[2]
    chunks[2:3] = [(d, produce[:40], False), (d, produce[40:60], True), (d, produce[60:], False)]
    records, _ = run(make, MESSAGING, chunks)
    assert records[1]["api"] == "Produce" and records[1]["parse_error"] == "gap"
    assert summary(records)[2:] == EXPECTED[2:]


def test_mid_connection_the_next_request_is_found() -> None:
    """A capture that starts inside a frame: skipped until a chunk starts one."""
    chunks = [(0, CONVERSATION[2][1][17:], False)] + [(d, data, False) for d, data in CONVERSATION[3:]]
    records, a = run(make, MESSAGING, chunks)
    assert summary(records) == EXPECTED[2:]
    assert a.stats["kafka.skipped_bytes"] > 0


@pytest.mark.parametrize("seed", range(40))
def test_garbage_and_mutations_never_crash_and_stay_bounded(seed: int) -> None:
    rng = random.Random(seed)
    chunks = mutate(rng, chunks_of(rng, gaps=seed % 2 == 1), rate=0.3)
    if seed % 4 == 0:
        chunks = [(rng.randrange(2), rng.randbytes(rng.randint(1, 200)), False) for _ in range(50)]

    def bounded(a: KafkaAnalyzer) -> None:
        held, pending = a._core.held()
        assert held <= KafkaConnection.MAX_BODY + 64 * 1024 and pending <= KafkaConnection.MAX_PENDING

    records, _ = run(make, MESSAGING, chunks, check=bounded)
    for r in records:
        assert r["status"] in ("ok", "error", "no_reply", "sent")


def test_detected_from_a_request_not_from_the_port() -> None:
    # (a response alone can look like a request: a connection's first bytes are the client's)
    for d, data in CONVERSATION:
        assert d == 1 or detect(data) is Verdict.KAFKA_REQUEST
    assert detect(CONVERSATION[0][1][:9]) is Verdict.NEED_MORE
    assert detect(b"\0\0\0\x10\x7f\x00" + bytes(20)) is not Verdict.KAFKA_REQUEST  # no such API
    # PostgreSQL's startup packet still is one
    startup = struct.pack(">i", 196608) + b"user\0app\0\0"
    assert detect(struct.pack(">i", len(startup) + 4) + startup) is Verdict.PG_STARTUP


def test_a_core_checkpoint_refuses_damage() -> None:
    sink = Sink(MESSAGING)
    a = KafkaAnalyzer(context(sink), 0)
    a.on_data(0, CONVERSATION[2][1][:30], 1)
    state = a._core.snapshot()
    assert KafkaConnection.restore(state).snapshot() == state
    with pytest.raises(ValueError):
        KafkaConnection.restore(state[:-3])
