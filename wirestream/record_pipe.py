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

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

from wirestream.errors import WirestreamError
from wirestream.packet_pipe import FRAME, read_frame
from wirestream.reader import Message, decode_message
from wirestream.topics import OUTPUT_TOPICS, STATS

#: the topics whose messages go by pipe, by their number in a frame
RECORD_TOPICS: tuple[str, ...] = (*OUTPUT_TOPICS, STATS)
_NUMBER = {topic: i for i, topic in enumerate(RECORD_TOPICS)}
#: frames are written once this much is waiting (and at every flush: after each packet
#: batch, before a report): fewer system calls and wake-ups of the reader than a write
#: per record, records no later than the batch that made them
FLUSH_BYTES = 1 << 20
#: messages the command holds read ahead of its decoding, all pipes together: a record is
#: ~10 KB on average on the bench capture, ~130 KB at most with the default body caps
#: (so at most ~130 MB held; then the workers wait: back-pressure)
READ_AHEAD = 1024


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
        data = b"".join(self._parts)
        self._parts, self._waiting = [], 0
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except BrokenPipeError:
            raise CommandGone("the command reading this worker's records is gone (its pipe closed)") from None


class RecordPipeReader:
    """The command's end: the messages of every worker's pipe, with the face of a
    :class:`~wirestream.reader.TopicReader` (``poll``, and a context manager). A thread
    per pipe reads its frames (blocking reads, without the GIL) into one bounded queue;
    ``poll`` decodes them in the caller's thread, as ``TopicReader.poll`` does."""

    def __init__(self, streams: Iterable[BinaryIO], decode: Callable[[bytes | None], dict[str, Any]],
                 decoders: dict[str, Callable[[bytes | None], dict[str, Any]]], raw: bool = False) -> None:
        """``decode``: a message's record; ``decoders``: per topic, instead of ``decode``
        (only some fields); ``raw``: each message also carries its bytes."""
        self._decode, self._decoders, self._raw = decode, decoders, raw
        self._queue: queue.Queue[tuple[int, int, bytes]] = queue.Queue(READ_AHEAD)
        #: pipes that ended inside a frame (their worker died): the run's error says why
        self.cut: list[int] = []
        self._closed = False
        self._threads = [threading.Thread(target=self._read, args=(i, stream), name=f"record-pipe-{i}", daemon=True)
                         for i, stream in enumerate(streams)]
        self._offsets = [0] * len(self._threads)
        for t in self._threads:
            t.start()

    def _read(self, pipe: int, stream: BinaryIO) -> None:
        try:
            while not self._closed and (frame := read_frame(stream)) is not None:
                item = (pipe, *frame)
                while not self._closed:  # (a full queue, and nobody polling any more: closed)
                    try:
                        self._queue.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
        except EOFError:
            self.cut.append(pipe)
        except (OSError, ValueError):  # closed here (the run stopped)
            pass

    def poll(self, timeout: float = 0.2, max_messages: int = 1000) -> list[Message]:
        """The messages that have arrived, up to ``max_messages``, waiting up to ``timeout``
        seconds for the first one (an empty list: none came). A message's partition is
        the number of the worker's pipe, its offset its place in that pipe."""
        try:
            frames = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        get = self._queue.get_nowait
        while len(frames) < max_messages:
            try:
                frames.append(get())
            except queue.Empty:
                break
        out = []
        offsets, decoders, decode, raw = self._offsets, self._decoders, self._decode, self._raw
        for pipe, number, value in frames:
            offset = offsets[pipe]
            offsets[pipe] = offset + 1
            if number >= len(RECORD_TOPICS):  # (a writer of another version)
                out.append(Message(f"#{number}", pipe, offset, None, None, f"no topic numbered {number}"))
                continue
            topic = RECORD_TOPICS[number]
            out.append(decode_message(topic, pipe, offset, None, value, decoders.get(topic, decode), raw))
        return out

    def close(self) -> None:
        """Let go of what was read and not polled; the reading threads end with their
        pipes (the workers), or at once if they were waiting for room."""
        self._closed = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

    def __enter__(self) -> RecordPipeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
