"""Output records by pipe: how the workers of ``wirestream analyze`` hand their records
and reports to the command when it runs on its own embedded broker.

The way back of wirestream/packet_pipe.py, for the same reasons: that broker lives for
the one run, and the only reader of its output topics is the command itself, which
reads every record exactly once. Carrying them through it cost the broker ~3 µs of CPU
per packet of the bench capture (a third of what the command spent), besides each
worker's producer and the command's consumer, on a machine whose cores the workers
need. The messages are the same Confluent-framed Avro values a worker would publish to
``wire.connections``, ``wire.transactions``, ..., ``wire.stats`` (the command decodes
them as it would consumed ones); what still goes through the broker: ``wire.observations``
(the packet workers to the windows worker), and everything on a Kafka the user names
(``--bootstrap``: the records stay there, replayable).

Framing: as packet_pipe's, the number being the topic's index in :data:`RECORD_TOPICS`.
One pipe per worker process (a file descriptor it is given: ``process
--records-to-fd``); in a worker, one writer shared by its packet worker and the windows
thread beside it, so that their frames never interleave. A worker's records and its
final reports share its pipe, in the order they were emitted: a final report comes
after every record it counts, as on a partition.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

from wirestream.errors import WirestreamError
from wirestream.packet_pipe import FRAME, write_parts
from wirestream.reader import Message, decode_message
from wirestream.topics import OUTPUT_TOPICS, STATS

#: the topics whose messages go by pipe, by their number in a frame
RECORD_TOPICS: tuple[str, ...] = (*OUTPUT_TOPICS, STATS)
_NUMBER = {topic: i for i, topic in enumerate(RECORD_TOPICS)}
#: frames are written once this much is waiting (and at every flush: after each packet
#: batch, before a report): fewer system calls and wake-ups of the reader than a write
#: per record, records no later than the batch that made them
FLUSH_BYTES = 1 << 20
#: what the command reads of a pipe at a time; what it holds read ahead of its decoding is
#: at most this (and a frame cut at its end) per pipe: then the workers wait
#: (back-pressure, as a full pipe)
READ_BYTES = 1 << 20


class CommandGone(WirestreamError):
    """The command reading a worker's records has gone (its pipe closed)."""


class RecordPipeWriter:
    """A worker's end: frames of the topics it carries, written in full when flushed."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._parts: list[bytes] = []
        self._waiting = 0
        self._lock = threading.Lock()  # a packet worker and the windows thread beside it

    @staticmethod
    def carries(topic: str) -> bool:
        return topic in _NUMBER

    def write(self, topic: str, value: bytes) -> None:
        """One message of ``topic`` (one of :data:`RECORD_TOPICS`)."""
        with self._lock:
            self._parts.append(FRAME.pack(_NUMBER[topic], len(value)))
            self._parts.append(value)
            self._waiting += len(value) + FRAME.size
            if self._waiting >= FLUSH_BYTES:
                self._write_out()

    def flush(self) -> None:
        """Write what is waiting (blocks while the command's end is full: back-pressure)."""
        with self._lock:
            if self._parts:
                self._write_out()

    def _write_out(self) -> None:
        views = [memoryview(part) for part in self._parts]
        self._parts, self._waiting = [], 0
        done = 0
        try:
            while done < len(views):
                done = write_parts(self._fd, views, done)
        except BrokenPipeError:
            raise CommandGone("the command reading this worker's records is gone (its pipe closed)") from None


class RecordPipeReader:
    """The command's end: the messages of every worker's pipe, with the face of a
    :class:`~wirestream.reader.TopicReader` (``poll``, and a context manager).

    Read in the caller's thread (``select``, then big reads), not by a thread per pipe:
    the command's other thread feeds the workers their packets, and every thread that
    wanted the GIL for each record it read held that one back (measured: the workers
    starved of packets, the run 10 % slower than through the broker)."""

    def __init__(self, streams: Iterable[BinaryIO], decode: Callable[[bytes | None], dict[str, Any]],
                 decoders: dict[str, Callable[[bytes | None], dict[str, Any]]], raw: bool = False) -> None:
        """``decode``: a message's record; ``decoders``: per topic, instead of ``decode``
        (only some fields); ``raw``: each message also carries its bytes."""
        self._decode, self._decoders, self._raw = decode, decoders, raw
        fds = [stream.fileno() for stream in streams]
        self._pipe_of = {fd: i for i, fd in enumerate(fds)}
        self._open = list(fds)  # pipes not at their end yet
        self._buffers = [bytearray() for _ in fds]  # bytes read, not yet whole frames taken
        self._offsets = [0] * len(fds)
        #: pipes that ended inside a frame (their worker died): the run's error says why
        self.cut: list[int] = []

    def poll(self, timeout: float = 0.2, max_messages: int = 1000) -> list[Message]:
        """The messages that have arrived, up to ``max_messages``, waiting up to ``timeout``
        seconds for the first one (an empty list: none came). A message's partition is
        the number of the worker's pipe, its offset its place in that pipe."""
        out: list[Message] = []
        # what the workers wrote since the last poll, first: their pipes are emptied at
        # every poll, so that they write on while this process decodes (a worker whose
        # pipe is full waits, and with it the packets it has still to analyse)
        self._read_ready(0.0)
        self._take(out, max_messages)
        deadline = time.monotonic() + timeout
        while not out and self._open:
            if not self._read_ready(max(0.0, deadline - time.monotonic())):
                break
            self._take(out, max_messages)
        return out

    def _read_ready(self, timeout: float) -> bool:
        """One read of each pipe that has bytes (or has ended), waiting up to ``timeout``
        seconds for one; False when none had."""
        if not self._open:
            return False
        ready, _, _ = select.select(self._open, [], [], timeout)
        for fd in ready:
            pipe = self._pipe_of[fd]
            data = os.read(fd, READ_BYTES)
            if data:
                self._buffers[pipe] += data
                continue
            self._open.remove(fd)  # its worker has exited (or closed it)
            if self._buffers[pipe]:
                self.cut.append(pipe)
        return bool(ready)

    def _take(self, out: list[Message], max_messages: int) -> None:
        """The whole frames read so far, decoded, into ``out`` (up to ``max_messages``)."""
        decoders, decode, raw, offsets = self._decoders, self._decode, self._raw, self._offsets
        for pipe, buf in enumerate(self._buffers):
            pos, end = 0, len(buf)
            with memoryview(buf) as view:  # (one copy per value: its bytes)
                while len(out) < max_messages and end - pos >= FRAME.size:
                    number, size = FRAME.unpack_from(view, pos)
                    start = pos + FRAME.size
                    if end - start < size:
                        break
                    value = bytes(view[start:start + size])
                    pos = start + size
                    offset = offsets[pipe]
                    offsets[pipe] = offset + 1
                    if number >= len(RECORD_TOPICS):  # (a writer of another version)
                        out.append(Message(f"#{number}", pipe, offset, None, None, f"no topic numbered {number}"))
                        continue
                    topic = RECORD_TOPICS[number]
                    out.append(decode_message(topic, pipe, offset, None, value, decoders.get(topic, decode), raw))
            if pos:
                del buf[:pos]

    def close(self) -> None:
        """Let go of what was read and not taken (the pipes are their owner's to close)."""
        self._buffers = [bytearray() for _ in self._buffers]
        self._open = []

    def __enter__(self) -> RecordPipeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
