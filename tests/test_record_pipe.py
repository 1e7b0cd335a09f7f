"""Output records by pipe (wirestream/record_pipe.py): how the workers of ``analyze`` on
its own embedded broker hand their records and reports back to the command.

Through real pipes: the messages of several topics and several writers, in each
writer's order, decoded as a consumed message would be; nothing before a flush but what
fills the buffer; messages bigger than a pipe; a value that does not decode and a topic
number nobody knows, each a message with its error; a writer gone mid-frame; a reader
gone (a named error in the worker); a poll that waits no longer than asked.
(That an analyze by pipe gives the records of an analyze through the broker:
tests/test_packet_pipe.py.)
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from helpers import gather

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


def _poll_all(reader: RecordPipeReader, want: int) -> list:
    return gather(lambda: reader.poll(0.2, 1000), want)


def test_messages_of_several_writers_arrive_in_each_writers_order() -> None:
    w1, r1 = _pipe()
    w2, r2 = _pipe()
    one, two = RecordPipeWriter(w1), RecordPipeWriter(w2)
    big = b"B" * (3 * 65536 + 17)  # bigger than a pipe
    def write() -> None:  # (another process, in analyze: a full pipe waits for the reader)
        for i in range(50):
            one.write(CONNECTIONS, b"c%d" % i)
            two.write(TRANSACTIONS, big if i == 7 else b"t%d" % i)
        one.write(STATS, b"final")
        one.flush()
        two.flush()

    with RecordPipeReader([r1, r2], _decode, {TRANSACTIONS: lambda v: {"only": len(v)}}, raw=True) as reader:
        writer = threading.Thread(target=write)
        writer.start()
        got = _poll_all(reader, 101)
        writer.join()
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
        filling = threading.Thread(target=lambda: [writer.write(CONNECTIONS, b"y" * 4096) for _ in range(full + 1)])
        filling.start()
        assert len(_poll_all(reader, full)) == full
        filling.join()
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
        assert reader.poll(0.2) == []  # the end of the pipe, inside a frame
        assert whole.record == {"value": b"a"} and reader.cut == [0]


def test_a_reader_gone_is_a_named_error_in_the_worker() -> None:
    w, r = _pipe()
    r.close()
    writer = RecordPipeWriter(w)
    writer.write(CONNECTIONS, b"x")
    with pytest.raises(CommandGone, match="pipe closed"):
        writer.flush()
    os.close(w)


def test_a_poll_returns_what_came_and_waits_no_longer() -> None:
    """A poll returns as soon as a message is there, and an empty list after its timeout
    when none came (the collector then asks whether a worker died)."""
    w, r = _pipe()
    writer = RecordPipeWriter(w)
    with RecordPipeReader([r], _decode, {}) as reader:
        started = time.monotonic()
        assert reader.poll(0.3) == []
        assert 0.25 < time.monotonic() - started < 2
        threading.Timer(0.2, lambda: (writer.write(CONNECTIONS, b"late"), writer.flush())).start()
        started = time.monotonic()
        (late,) = reader.poll(5.0)
        assert late.record == {"value": b"late"} and time.monotonic() - started < 2
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


def test_each_poll_empties_the_pipes_while_it_has_messages_to_give() -> None:
    """A poll reads what the workers wrote since the last one even while it still has
    messages read before to give: their pipes are emptied at every poll, so that a worker
    writes on while the command decodes, instead of waiting on its full pipe."""
    import fcntl
    import termios

    w, r = _pipe()
    writer = RecordPipeWriter(w)
    with RecordPipeReader([r], _decode, {}) as reader:
        for i in range(3):
            writer.write(CONNECTIONS, b"first %d" % i)
        writer.flush()
        assert len(reader.poll(1.0, 1)) == 1  # two more of them held, read
        writer.write(CONNECTIONS, b"x" * 30_000)
        writer.flush()
        (second,) = reader.poll(1.0, 1)
        unread = bytearray(4)
        fcntl.ioctl(r.fileno(), termios.FIONREAD, unread)
        assert int.from_bytes(unread, "little") == 0  # the pipe was read, though a message was held
        assert second.record == {"value": b"first 1"}
        assert [m.record["value"] for m in _poll_all(reader, 2)] == [b"first 2", b"x" * 30_000]
    os.close(w)
