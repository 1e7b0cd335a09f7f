"""Replay a capture file into ``wire.packets``: read -> decode -> publish, then mark the end.

This is the producer behind ``wirestream produce pcap FILE`` and ``wirestream analyze``.
The per-packet loop (read a frame, decode it, put it in its partition's batch) runs in the
compiled core without the GIL (``rust/src/replay.rs``); Python takes the complete batches
and publishes them, so it does no work per packet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wirestream.errors import CaptureFileError

from .capture_file import SUPPORTED_LINKTYPES, open_capture
from .decode import FrameDecoder
from .publisher import PacketBatchPublisher

if TYPE_CHECKING:
    from wirestream.codec import AvroCodec
    from wirestream.packet_pipe import PacketPipes

#: frames the core reads per call: the progress callback's granularity, and how much of
#: the file is held at once as batches (~6 MB of the bench capture's; 16,384 frames, one
#: call's batches held while the next made them, were ~50 MB of analyze's peak)
PUMP_FRAMES = 1 << 12

ProgressCallback = Callable[[int, int], None]  # (bytes read so far, total bytes)
#: path -> the progress callback of that file's replay
ProgressFactory = Callable[[str], ProgressCallback]


@dataclass
class ReplayResult:
    path: str
    format: str
    frames: int = 0
    packets: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    #: the decoder's IP fragment reassembly counters (FrameDecoder.counters)
    counters: dict[str, int] = field(default_factory=dict)
    first_ts_us: int | None = None
    last_ts_us: int | None = None
    #: the final wire.stats report published for this source (its record), if one was
    report: dict[str, Any] | None = None


def replay_capture(
    path: str,
    publisher: PacketBatchPublisher,
    payload_snaplen: int = 65535,
    progress: ProgressCallback | None = None,
    publish_stats: bool = True,
) -> ReplayResult:
    """Publish every TCP/UDP packet of ``path``; return what was read and dropped.

    Raises :class:`CaptureFileError` when the file cannot be read at all. Damage inside
    the file is counted in ``result.dropped`` and the rest is published.
    """
    decoder = FrameDecoder(payload_snaplen)
    with open_capture(path) as reader:
        result = ReplayResult(path, reader.format)
        core, pump = reader.core, reader.core.pump
        send_batches, batcher = publisher.send_batches, publisher.batcher
        while True:
            batches, done = pump(decoder.core, batcher, PUMP_FRAMES)
            send_batches(batches)
            del batches  # (not held while the next call makes the next ones)
            if done:
                break
            if progress is not None:
                progress(reader.bytes_read, reader.size)
        if progress is not None:
            progress(reader.size, reader.size)
        frames = result.frames = core.frames
        result.first_ts_us, result.last_ts_us = core.first_ts_us, core.last_ts_us
        result.dropped = decoder.dropped + reader.problems
        result.counters = decoder.counters
        if reader.linktypes and not reader.linktypes & SUPPORTED_LINKTYPES.keys():
            raise CaptureFileError(
                path, f"unsupported link type {', '.join(map(str, sorted(reader.linktypes)))}"
            )
    publisher.finish()
    result.packets = publisher.packets
    if publish_stats:
        result.report = publisher.publish_stats(frames, result.dropped, {"frames": frames, **result.counters})
    return result


def replay_files(
    paths: Sequence[str],
    bootstrap: str,
    codec: AvroCodec,
    partitions: int,
    source_id: Callable[[int], str],
    payload_snaplen: int = 65535,
    progress: ProgressFactory | None = None,
    alive: Callable[[], str | None] | None = None,
    pipes: PacketPipes | None = None,
    producer_config: dict[str, Any] | None = None,
) -> Iterator[tuple[str, ReplayResult | CaptureFileError]]:
    """Replay ``paths`` one after the other, each as a source of its own named
    ``source_id(index of the file)``; yield (source id, its result) per file as it is done.

    A file that cannot be read yields its :class:`CaptureFileError` and the next one is
    replayed: the caller says so (analyze collects them, ``produce pcap`` prints them).
    ``alive``: as :class:`~wirestream.kafka.WireProducer`'s (analyze: its embedded broker
    and workers are still running). ``pipes``: the packet batches go to the workers by
    pipe, not to ``wire.packets`` (analyze on its own broker: wirestream/packet_pipe.py).
    ``producer_config``: librdkafka settings for each file's producer."""
    for i, path in enumerate(paths):
        sid = source_id(i)
        publisher = PacketBatchPublisher(bootstrap, codec, partitions, sid, path, alive=alive, pipes=pipes,
                                         producer_config=producer_config)
        result: ReplayResult | CaptureFileError
        try:
            result = replay_capture(path, publisher, payload_snaplen,
                                    progress=progress(path) if progress is not None else None)
        except CaptureFileError as exc:
            result = exc
        yield sid, result
