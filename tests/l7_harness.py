"""What the L7 analysers' own tests share: a sink for their records, a stream context, a
conversation cut in random chunks (with gaps), the run of an analyser over chunks, and
the same run with a checkpoint after every chunk (tests/test_*_parser.py)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from wirestream.processors.connection_tracker import ConnRef
from wirestream.processors.l7.base import L7Options, StreamAnalyzer, StreamContext
from wirestream.processors.state_codec import decode_state, encode_state

#: (direction, bytes, a gap of len(bytes) instead of the bytes)
Chunk = tuple[int, bytes, bool]
#: makes the analyser under test from its context (client direction 0)
Make = Callable[[StreamContext], StreamAnalyzer]


class Sink:
    """The records of one topic, checked to be keyed by their connection id."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.records: list[dict[str, Any]] = []

    def emit(self, topic: str, key: str, record: dict[str, Any]) -> None:
        assert topic == self.topic and key == record["connection_id"]
        self.records.append(record)


def context(sink: Sink, options: L7Options | None = None, server_port: int = 8080) -> StreamContext:
    """Client 10.0.0.1:40000 (direction 0), server 10.0.0.2:``server_port``."""
    return StreamContext(ips=("10.0.0.1", "10.0.0.2"), ports=(40000, server_port),
                         connection_id=ConnRef("c1").connection_id, emit=sink.emit, options=options or L7Options(),
                         stats=Counter(), community_id="1:x")


def split(rng: random.Random, data: bytes, direction: int, gaps: bool = False, most: int = 40) -> list[Chunk]:
    """``data`` of ``direction`` in chunks of 1 to ``most`` bytes; with ``gaps``, one in
    20 chunks is lost instead."""
    out, pos = [], 0
    while pos < len(data):
        n = rng.randint(1, most)
        out.append((direction, data[pos:pos + n], gaps and rng.random() < 0.05))
        pos += n
    return out


def mutate(rng: random.Random, chunks: list[Chunk], rate: float = 0.2) -> list[Chunk]:
    """Chunks with one byte in ``rate`` of them changed at random."""
    out = []
    for d, data, gap in chunks:
        if data and rng.random() < rate:
            b = bytearray(data)
            b[rng.randrange(len(b))] = rng.randrange(256)
            data = bytes(b)
        out.append((d, data, gap))
    return out


def run(make: Make, topic: str, chunks: list[Chunk], options: L7Options | None = None,
        check: Callable[[Any], None] | None = None) -> tuple[list[dict[str, Any]], Any]:
    """The analyser over ``chunks`` (capture time: the chunk's index), then closed; its
    records and itself. ``check(analyzer)`` runs after every chunk (bounds)."""
    sink = Sink(topic)
    a = make(context(sink, options))
    for ts, (d, data, gap) in enumerate(chunks):
        if gap:
            a.on_gap(d, len(data), ts)
        else:
            a.on_data(d, data, ts)
        if check is not None:
            check(a)
    a.on_close(len(chunks))
    return sink.records, a


def run_with_checkpoints(make: Make, topic: str, chunks: list[Chunk]) -> list[dict[str, Any]]:
    """:func:`run`, the analyser encoded and decoded by the engine's codec after every chunk."""
    options = L7Options()
    sink = Sink(topic)
    a = make(context(sink, options))
    externals = {"sink": sink, "l7_options": options}
    for ts, (d, data, _gap) in enumerate(chunks):
        a.on_data(d, data, ts)
        a = decode_state(encode_state(a, externals), externals)
    a.on_close(len(chunks))
    return sink.records
