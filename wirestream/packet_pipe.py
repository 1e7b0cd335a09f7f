"""``wire.packets`` messages by pipe: how ``wirestream analyze`` hands a capture's packet
batches to its own workers when it runs on its own embedded broker.

Why not through the broker: that broker lives for the one run (its store is in memory)
and goes with it, so nobody could replay or read those ``wire.packets`` messages after
the run, and carrying them through it was the largest cost after the analysis itself
(bench/README.md: the broker 8–9 µs of CPU per packet, the producer's compression and
the workers' fetching and decompression a few more, and the broker's memory). The messages are the same Avro ``PacketBatch``
values, in the same order per partition, with the same end-of-input markers: only the
transport differs, and the workers handle them exactly as they would a consumed message.
Against a Kafka the user names (``--bootstrap``), analyze publishes them to
``wire.packets`` as ``produce pcap`` does (they stay there, replayable).

Framing, per message: the partition (u32, little-endian), the value's length (u32), the
value. One pipe per worker (its stdin), carrying the messages of the partitions it owns.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import select
import struct
import threading
from collections.abc import Callable
from typing import BinaryIO

from wirestream.errors import WirestreamError
from wirestream.topics import PACKETS

log = logging.getLogger(__name__)

FRAME = struct.Struct("<II")
#: Linux's fcntl to size a pipe (F_SETPIPE_SZ): 1 MiB (the default limit for a user),
#: about one batch, instead of 64 KiB: fewer wake-ups of the reader per batch.
_F_SETPIPE_SZ = 1031
PIPE_BYTES = 1 << 20
#: Messages a reader holds ahead of its worker (each up to ~1.5 MB), then the writer
#: waits (back-pressure, as a full producer queue). The workers are the slower side of a
#: run, so this only has to cover the feeding's hiccups: 8 rather than 32 took ~25 MB
#: off each worker's peak on the bench capture, in the same time (alternated runs).
READ_AHEAD = 8


#: the most buffers one writev takes (Linux's UIO_MAXIOV)
IOV_MAX = 1024


def write_parts(fd: int, views: list[memoryview], start: int = 0) -> int:
    """One gathered write (``writev``) of ``views[start:]`` (at most :data:`IOV_MAX` of
    them): the buffers go to the pipe as they are, not first joined into a copy (a
    packet batch is ~1 MB; a worker's records are ~600 MB of a bench run). Returns the
    index of the first view not written whole, whose written part is cut off in place;
    ``len(views)`` once all are written. Raises what ``os.writev`` raises (a full
    non-blocking pipe: ``BlockingIOError``, nothing written)."""
    n = os.writev(fd, views[start:start + IOV_MAX])
    while start < len(views) and n >= len(views[start]):
        n -= len(views[start])
        start += 1
    if n:
        views[start] = views[start][n:]
    return start


def enlarge(fd: int) -> None:
    """Make the pipe of ``fd`` hold :data:`PIPE_BYTES` (when this machine's limit allows)."""
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:  # a lower limit here (/proc/sys/fs/pipe-max-size): the default size
        pass


class WorkerGone(WirestreamError):
    """A worker's input pipe closed while packets were written to it: the worker exited."""


def read_frame(stream: BinaryIO) -> tuple[int, bytes] | None:
    """The next frame of a pipe: (its number, its value); None at the end of the pipe.
    Raises EOFError when the pipe ended inside a frame (its writer died)."""
    head = _read_exactly(stream, FRAME.size)
    if not head:
        return None
    if len(head) < FRAME.size:
        raise EOFError("the pipe ended inside a frame's header")
    number, size = FRAME.unpack(head)
    value = _read_exactly(stream, size)
    if len(value) < size:
        raise EOFError("the pipe ended inside a frame's value")
    return number, value


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    """``size`` bytes, fewer only at the end of the pipe (a raw stream's read may return
    less than asked while the writer is still writing)."""
    data = stream.read(size)
    if data is None or len(data) == size:
        return data or b""
    parts = [data]
    got = len(data)
    while got < size:
        more = stream.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class PacketPipes:
    """The writing end: each partition's messages go to the pipe of the worker owning it.

    Written without blocking: while a pipe is full, ``alive()`` is asked every half
    second, so that a worker stuck behind a dead broker does not hold this writer forever
    (as :class:`~wirestream.kafka.WireProducer` asks while its queue is full)."""

    def __init__(self, pipes: dict[int, BinaryIO], alive: Callable[[], str | None] | None = None) -> None:
        """``pipes``: partition -> the writing end of its worker's pipe (several
        partitions may share one); ``alive``: says why the run cannot go on (None: it can)."""
        self._fds = {part: stream.fileno() for part, stream in pipes.items()}
        self._alive = alive
        self._stopped: str | None = None
        for fd in set(self._fds.values()):
            os.set_blocking(fd, False)
            enlarge(fd)

    def send(self, partition: int, *parts: bytes | memoryview) -> None:
        """Write one message of ``partition``, its value ``parts`` back to back (one gathered
        write: a packet batch's payloads are written from their own buffer, not copied into
        the message first); waits while the worker's pipe is full. Raises
        :class:`WorkerGone` when the worker (or, ``alive`` says, the run) is gone."""
        fd = self._fds[partition]
        views = [memoryview(part).cast("B") for part in parts]
        views.insert(0, memoryview(FRAME.pack(partition, sum(len(v) for v in views))))
        done = 0
        while done < len(views):
            if self._stopped is not None:
                raise WorkerGone(self._stopped)
            try:
                done = write_parts(fd, views, done)
            except BlockingIOError:
                # full: the worker is busy (back-pressure), or stuck, or gone
                select.select([], [fd], [], 0.5)
                if self._alive is not None and (gone := self._alive()):
                    raise WorkerGone(gone) from None
            except (BrokenPipeError, ValueError):  # (ValueError: the pipe was closed here)
                raise WorkerGone(f"the processor worker of partition {partition} is gone "
                                 "(its input pipe closed)") from None


    def stop(self, why: str) -> None:
        """Make every later :meth:`send` (and one waiting on a full pipe, within half a
        second) raise :class:`WorkerGone` with ``why``: the run has stopped, and the thread
        writing its input ends there."""
        self._stopped = why


class PipeMessage:
    """A message read from a pipe, with the face of a consumed Kafka message."""

    __slots__ = ("_partition", "_value", "_offset")

    def __init__(self, partition: int, value: bytes, offset: int) -> None:
        self._partition, self._value, self._offset = partition, value, offset

    def topic(self) -> str:
        return PACKETS

    def partition(self) -> int:
        return self._partition

    def value(self) -> bytes:
        return self._value

    def offset(self) -> int:
        """The message's position in its partition's stream (0, 1, ...)."""
        return self._offset

    def error(self) -> None:
        return None


class PacketPipeReader:
    """The reading end, with the consumer's face the packet worker's loop uses
    (``consume``, ``close``): a thread reads the frames (blocking reads, without the
    GIL) into a bounded queue."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._queue: queue.Queue[PipeMessage] = queue.Queue(READ_AHEAD)
        self._offsets: dict[int, int] = {}
        self.closed_early = False  # the pipe ended inside a frame (the writer died)
        self._thread = threading.Thread(target=self._read, name="packet-pipe", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while (frame := read_frame(self._stream)) is not None:
                partition, value = frame
                offset = self._offsets.get(partition, 0)
                self._offsets[partition] = offset + 1
                self._queue.put(PipeMessage(partition, value, offset))
        except EOFError:
            self.closed_early = True
            log.warning("the packet pipe ended inside a message: the writer is gone")

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[PipeMessage]:
        """Up to ``num_messages`` messages, waiting up to ``timeout`` seconds for the
        first one (as ``Consumer.consume``; at the end of the pipe: none, after the wait)."""
        try:
            first = self._queue.get(timeout=None if timeout < 0 else timeout)
        except queue.Empty:
            return []
        out = [first]
        while len(out) < num_messages:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return out

    def close(self) -> None:
        """Nothing to leave (no group); the reading thread ends with the pipe."""
