"""Stream reassembly: every byte once, in order, whatever the segments look like."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from wirestream.processors.reassembly import M32, StreamReassembler, seq_diff


class Sink:
    """Rebuild the stream as delivered: data and gaps (as None runs)."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, object, int]] = []

    def data(self, data: bytes, ts: int) -> None:
        self.parts.append(("data", bytes(data), ts))

    def gap(self, n: int, ts: int) -> None:
        self.parts.append(("gap", n, ts))

    def stream(self) -> bytes:
        return b"".join(p[1] for p in self.parts if p[0] == "data")  # type: ignore[misc]

    def positions(self) -> list[int | None]:
        """Delivered bytes, each gap byte as None (unlike ``layout``, unambiguous when
        the data holds ``?``)."""
        out: list[int | None] = []
        for kind, value, _ in self.parts:
            out.extend(value if kind == "data" else [None] * value)  # type: ignore[arg-type,operator]
        return out

    def layout(self) -> bytes:
        """Delivered bytes with each gap byte as ``?``."""
        return b"".join(p[1] if p[0] == "data" else b"?" * p[1] for p in self.parts)  # type: ignore[misc,operator]


def reassembler(sink: Sink, **kw: int) -> StreamReassembler:
    return StreamReassembler(sink.data, sink.gap, **kw)


def test_seq_diff_wraps() -> None:
    assert seq_diff(5, M32 - 4) == 10
    assert seq_diff(M32 - 4, 5) == -10
    assert seq_diff(100, 100) == 0


def test_in_order_after_syn_and_wrap() -> None:
    sink = Sink()
    r = reassembler(sink)
    isn = M32 - 2
    r.next_seq = (isn + 1) & M32  # after the SYN
    r.segment((isn + 1) & M32, b"abc", 3, 1)
    r.segment((isn + 4) & M32, b"def", 3, 2)  # crosses 2^32
    assert sink.stream() == b"abcdef"
    assert [p[2] for p in sink.parts] == [1, 2]


def test_retransmission_and_overlap_deliver_only_new_bytes() -> None:
    sink = Sink()
    r = reassembler(sink)
    r.next_seq = 1000  # after a SYN with ISN 999
    r.segment(1000, b"hello", 5, 1)
    r.segment(1000, b"hello", 5, 2)        # pure retransmission
    r.segment(1003, b"lo world", 8, 3)     # overlaps 2 bytes, adds 6
    assert sink.stream() == b"hello world"
    assert r.duplicate_bytes == 7


def test_out_of_order_waits_for_the_hole() -> None:
    sink = Sink()
    r = reassembler(sink)
    r.next_seq = 1  # after a SYN with ISN 0
    r.segment(6, b"world", 5, 2)
    assert sink.stream() == b""
    r.segment(1, b"hello", 5, 1)
    assert sink.stream() == b"helloworld"
    assert [p[2] for p in sink.parts] == [1, 2]  # each byte keeps its segment's time


def test_hole_acknowledged_by_the_peer_is_a_gap() -> None:
    sink = Sink()
    r = reassembler(sink)
    r.next_seq = 1  # after a SYN with ISN 0
    r.segment(1, b"aaaa", 4, 1)
    r.segment(9, b"cccc", 4, 3)  # bytes 5..8 never captured
    r.ack(13)                    # ... but the receiver had them
    assert sink.layout() == b"aaaa????cccc"


def test_ack_before_the_out_of_order_segment_also_gaps() -> None:
    sink = Sink()
    r = reassembler(sink)
    r.next_seq = 1  # after a SYN with ISN 0
    r.segment(1, b"aaaa", 4, 1)
    r.ack(9)
    r.segment(9, b"cccc", 4, 3)
    assert sink.layout() == b"aaaa????cccc"


def test_buffer_bound_forces_a_gap() -> None:
    sink = Sink()
    r = reassembler(sink, max_buffer=10)
    r.next_seq = 1  # after a SYN with ISN 0
    r.segment(1, b"a", 1, 1)
    r.segment(5, b"0123456789", 10, 2)
    r.segment(15, b"X", 1, 3)  # the buffer now holds 11 bytes > 10
    assert sink.layout() == b"a???0123456789X"
    assert r.pending_bytes == 0


def test_finish_delivers_what_is_buffered_after_a_gap() -> None:
    sink = Sink()
    r = reassembler(sink)
    r.next_seq = 1  # after a SYN with ISN 0
    r.segment(3, b"cd", 2, 2)
    r.finish()
    assert sink.layout() == b"??cd"
    r.segment(1, b"ab", 2, 3)  # after the end: ignored
    assert sink.layout() == b"??cd"


def test_snaplen_truncation_is_a_gap_for_the_missing_tail() -> None:
    sink = Sink()
    r = reassembler(sink)
    r.next_seq = 1  # after a SYN with ISN 0
    r.segment(1, b"abc", 6, 1)  # 6 bytes on the wire, 3 captured
    r.segment(7, b"xyz", 3, 2)
    assert sink.layout() == b"abc???xyz"


def test_mid_stream_start() -> None:
    sink = Sink()
    r = reassembler(sink)
    r.segment(123456, b"late", 4, 1)
    r.segment(123460, b"r", 1, 2)
    assert sink.stream() == b"later"


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=400),
    cuts=st.lists(st.integers(min_value=1, max_value=399), max_size=30),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    isn=st.integers(min_value=0, max_value=M32),
)
def test_any_segmentation_retransmission_and_reordering_gives_the_stream(
    data: bytes, cuts: list[int], seed: int, isn: int
) -> None:
    rng = random.Random(seed)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    segments = [(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
    # retransmissions, including ones that span several original segments
    extra = []
    for _ in range(rng.randrange(0, 5)):
        a = rng.randrange(len(data))
        extra.append((a, rng.randrange(a + 1, len(data) + 1)))
    sent = segments + extra
    rng.shuffle(sent)
    sink = Sink()
    r = reassembler(sink)
    r.next_seq = (isn + 1) & M32  # after the SYN
    for ts, (a, b) in enumerate(sent):
        r.segment((isn + 1 + a) & M32, data[a:b], b - a, ts)
    r.finish()
    assert sink.layout() == data
    assert r.gap_bytes == 0


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=300),
    cuts=st.lists(st.integers(min_value=1, max_value=299), max_size=20),
    lost=st.sets(st.integers(min_value=0, max_value=20), max_size=5),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_lost_segments_become_gaps_and_everything_else_is_in_place(
    data: bytes, cuts: list[int], lost: set[int], seed: int
) -> None:
    rng = random.Random(seed)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    segments = [(a, b) for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)) if i not in lost]
    rng.shuffle(segments)
    sink = Sink()
    r = reassembler(sink, max_buffer=64)
    r.next_seq = 1  # after a SYN with ISN 0
    for ts, (a, b) in enumerate(segments):
        r.segment(1 + a, data[a:b], b - a, ts)
        if rng.random() < 0.3:
            r.ack(1 + rng.randrange(len(data) + 1))
    r.finish()
    got = sink.positions()
    # The stream runs to the end of the last segment that arrived: after a hole, delivery
    # resumes (a reassembler that stops at the first hole fails here), and nothing is
    # delivered beyond what was sent.
    end = max((b for _, b in segments), default=0)
    assert len(got) == end
    # Every delivered byte is the original byte at its position; gaps only where data
    # was lost or given up on (an early ACK or the buffer bound), never over a lost byte.
    received = bytearray(end)
    for a, b in segments:
        received[a:b] = b"\x01" * (b - a)
    for i, byte in enumerate(got):
        assert byte is None or byte == data[i], f"byte {i} is not the original"
        assert byte is None or received[i], f"byte {i} was never sent but delivered"
    # The last byte is data: a gap only ever runs up to data that arrived.
    assert not end or got[-1] is not None
    # Gaps are reported with their sizes, and they add up to the missing bytes.
    gaps = [p[1] for p in sink.parts if p[0] == "gap"]
    assert all(n > 0 for n in gaps)  # type: ignore[operator]
    assert sum(gaps) == r.gap_bytes == got.count(None) >= received.count(0)  # type: ignore[arg-type]
    assert r.delivered == len(sink.stream()) == end - r.gap_bytes
