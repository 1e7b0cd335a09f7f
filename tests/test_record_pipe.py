"""Output records by pipe (wirestream/record_pipe.py): how the workers of ``analyze`` on
its own embedded broker hand their records and reports back to the command.

Through real pipes: the messages of several topics and several writers, in each
writer's order, decoded as a consumed message would be; nothing before a flush but what
fills the buffer; messages bigger than a pipe; a value that does not decode and a topic
number nobody knows, each a message with its error; a writer gone mid-frame; a reader
gone (a named error in the worker); a reader closed while its threads wait for room.
(That an analyze by pipe gives the records of an analyze through the broker:
tests/test_packet_pipe.py.)
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from wirestream.errors import DecodeError
from wirestream.packet_pipe import FRAME
from wirestream.record_pipe import (
    FLUSH_BYTES,
    RECORD_TOPICS,
    CommandGone,
    RecordPipeReader,
    RecordPipeWriter,
)
from wirestream.topics import CONNECTIONS, STATS, TRANSACTIONS


def _pipe() -> tuple[int, object]:
    r, w = os.pipe()
    return w, os.fdopen(r, "rb", buffering=0)


def _decode(value: bytes | None) -> dict:
    """A stand-in codec: "bad" does not decode (as a malformed Avro body would not)."""
    if value == b"bad":
        raise DecodeError("malformed Avro body")
    return {"value": value}


def _poll_all(reader: RecordPipeReader, want: int, timeout: float = 10.0) -> list:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += reader.poll(0.2, 1000)
    return got


def test_messages_of_several_writers_arrive_in_each_writers_order() -> None:
    w1, r1 = _pipe()
    w2, r2 = _pipe()
    one, two = RecordPipeWriter(w1), RecordPipeWriter(w2)
    big = b"B" * (3 * 65536 + 17)  # bigger than a pipe
    with RecordPipeReader([r1, r2], _decode, {TRANSACTIONS: lambda v: {"only": len(v)}}, raw=True) as reader:
        for i in range(50):
            one.write(CONNECTIONS, b"c%d" % i)
            two.write(TRANSACTIONS, big if i == 7 else b"t%d" % i)
        one.write(STATS, b"final")
        one.flush()
        two.flush()
        got = _poll_all(reader, 101)
    assert len(got) == 101
    first = [m for m in got if m.partition == 0]
    second = [m for m in got if m.partition == 1]
    assert [m.offset for m in first] == list(range(51)) and [m.offset for m in second] == list(range(50))
    assert [m.record["value"] for m in first] == [b"c%d" % i for i in range(50)] + [b"final"]
    assert [m.topic for m in first] == [CONNECTIONS] * 50 + [STATS]
    # a topic's own decoder, and the bytes beside the record (raw)
    assert second[7].record == {"only": len(big)} and second[7].value == big
    assert all(m.topic == TRANSACTIONS and m.error is None for m in second)
    os.close(w1)
    os.close(w2)


def test_nothing_is_written_before_a_flush_unless_the_buffer_is_full() -> None:
    w, r = _pipe()
    writer = RecordPipeWriter(w)
    writer.write(CONNECTIONS, b"x" * 100)
    with RecordPipeReader([r], _decode, {}) as reader:
        assert reader.poll(0.3) == []
        writer.flush()
        assert [m.record["value"] for m in _poll_all(reader, 1)] == [b"x" * 100]
        # a full buffer goes at once: the frames up to the one that filled it
        frame = FRAME.size + 4096
        full = -(-FLUSH_BYTES // frame)
        for _ in range(full + 1):
            writer.write(CONNECTIONS, b"y" * 4096)
        assert len(_poll_all(reader, full)) == full
        assert reader.poll(0.3) == []
        writer.flush()
        assert len(_poll_all(reader, 1)) == 1
    os.close(w)


def test_a_bad_value_and_an_unknown_topic_are_messages_with_their_error() -> None:
    w, r = _pipe()
    writer = RecordPipeWriter(w)
    writer.write(CONNECTIONS, b"bad")
    writer.flush()
    os.write(w, FRAME.pack(len(RECORD_TOPICS) + 3, 2) + b"??")
    with RecordPipeReader([r], _decode, {}) as reader:
        bad, unknown = _poll_all(reader, 2)
    assert bad.record is None and "malformed" in bad.error
    assert unknown.record is None and "no topic numbered" in unknown.error
    os.close(w)


def test_a_writer_gone_mid_frame_is_noticed() -> None:
    w, r = _pipe()
    os.write(w, FRAME.pack(0, 1) + b"a" + FRAME.pack(0, 100) + b"only part")
    os.close(w)
    with RecordPipeReader([r], _decode, {}) as reader:
        (whole,) = _poll_all(reader, 1)
        deadline = time.monotonic() + 5
        while not reader.cut and time.monotonic() < deadline:
            time.sleep(0.05)
        assert whole.record == {"value": b"a"} and reader.cut == [0]


def test_a_reader_gone_is_a_named_error_in_the_worker() -> None:
    w, r = _pipe()
    r.close()
    writer = RecordPipeWriter(w)
    writer.write(CONNECTIONS, b"x")
    with pytest.raises(CommandGone, match="pipe closed"):
        writer.flush()
    os.close(w)


def test_closing_the_reader_frees_threads_waiting_for_room(monkeypatch) -> None:
    """The command stops reading (its run failed): a reading thread waiting for room in
    the full queue must end, not hold what it read for the life of the process."""
    import wirestream.record_pipe as record_pipe

    monkeypatch.setattr(record_pipe, "READ_AHEAD", 2)
    w, r = _pipe()
    writer = RecordPipeWriter(w)
    for i in range(10):
        writer.write(CONNECTIONS, b"%d" % i)
    writer.flush()
    reader = RecordPipeReader([r], _decode, {})
    (thread,) = reader._threads
    time.sleep(0.3)
    assert thread.is_alive()  # waiting for room
    reader.close()
    thread.join(5)
    assert not thread.is_alive()
    os.close(w)


def test_one_writer_shared_by_two_threads_never_interleaves_frames() -> None:
    """A worker's packet loop and the windows thread beside it share one writer."""
    w, r = _pipe()
    writer = RecordPipeWriter(w)
    values = {CONNECTIONS: b"C" * 70_000, TRANSACTIONS: b"T" * 50_000}

    def write(topic: str) -> None:
        for _ in range(40):
            writer.write(topic, values[topic])
            writer.flush()

    with RecordPipeReader([r], _decode, {}) as reader:
        threads = [threading.Thread(target=write, args=(t,)) for t in values]
        for t in threads:
            t.start()
        got = _poll_all(reader, 80)
        for t in threads:
            t.join()
    assert len(got) == 80 and all(m.record["value"] == values[m.topic] for m in got)
    os.close(w)
