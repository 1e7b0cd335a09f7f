"""Run the producer's decoder and the connections processor in-process, without Kafka.

For fast, focused checks of the TCP analysis against tshark. The end-to-end tests run the
same code through the real broker (tests/test_analyze_e2e.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

import numpy as np
from wirestream.processors.connection_tracker import ConnectionTracker
from wirestream.processors.detections import Thresholds
from wirestream.processors.engine import Engine, EngineOptions
from wirestream.processors.l7.base import L7Options
from wirestream.processors.service_windows import ServiceWindows, WindowOptions
from wirestream.producers.capture_file import open_capture
from wirestream.producers.decode import FrameDecoder

from wirestream.packet_block import PACKET_DTYPE, pack_header


def decoded_packets(path: str) -> Iterator[tuple[tuple, bytes]]:
    """(header fields, payload) of every TCP/UDP packet of a capture, as the pcap producer
    decodes them (``producers.decode`` field order)."""
    decoder = FrameDecoder()
    with open_capture(path) as reader:
        for f in reader:
            d = decoder.decode(f.linktype, f.data, f.ts_us, f.orig_len, f.number)
            if d is not None:
                yield d


def packet_headers(path: str) -> np.ndarray:
    packed = bytearray()
    for fields, _payload in decoded_packets(path):
        packed += pack_header(fields, 0, 0)
    return np.frombuffer(bytes(packed), dtype=PACKET_DTYPE)


def local_connections(path: str, batch: int = 64, **tracker_args: int) -> list[dict]:
    records: list[dict] = []
    tracker = ConnectionTracker(records.append, **tracker_args)
    headers = packet_headers(path)
    for i in range(0, len(headers), batch):
        tracker.process(headers[i : i + batch])
    tracker.flush()
    return records


def packet_batches(path: str, batch: int = 64, snaplen: int = 65535):
    """(headers, payloads) batches of a capture, as the pcap producer publishes them."""
    packed = bytearray()
    blob = bytearray()
    n = 0
    for fields, payload in decoded_packets(path):
        payload = payload[:snaplen]
        packed += pack_header(fields, len(blob), len(payload))
        blob += payload
        n += 1
        if n == batch:
            yield np.frombuffer(bytes(packed), dtype=PACKET_DTYPE), bytes(blob)
            packed, blob, n = bytearray(), bytearray(), 0
    if n:
        yield np.frombuffer(bytes(packed), dtype=PACKET_DTYPE), bytes(blob)


class RecordingSink:
    """An engine's sink that keeps what it is given: ``out[topic]`` lists the records,
    ``out["observations"]`` the observation batches as ``(partition, batch)``."""

    def __init__(self) -> None:
        self.out: dict[str, list] = defaultdict(list)

    def emit(self, topic: str, key: str | None, record: dict) -> None:
        self.out[topic].append(record)

    def send_to_partition(self, topic: str, partition: int, record: dict) -> None:
        self.out["observations"].append((partition, record))


def run_engine(batches: Iterable[tuple[np.ndarray, bytes]], source_id: str = "local",
               options: L7Options | None = None, observations: bool = True) -> tuple[dict[str, list], Engine]:
    """Feed ``batches`` to an :class:`Engine` (partition 0 of 1; 4 observation partitions
    if ``observations``) and finish it: (topic -> records, the engine)."""
    sink = RecordingSink()
    engine = Engine(source_id, 0, EngineOptions(l7=options or L7Options(), packet_partitions=1,
                                                observation_partitions=4 if observations else 0), sink)
    for headers, payloads in batches:
        engine.feed(headers, payloads)
    engine.finish()
    return sink.out, engine


def local_l7(path: str, batch: int = 64, options: L7Options | None = None) -> dict[str, list[dict]]:
    """Run the connections processor with L7 analysis in-process (an engine, as a worker
    runs it): topic -> records.

    Every record is first shown to the engine's ``Observer`` (the windows' view of it,
    findings included); its batches are under ``out["observations"]`` as
    ``(observation partition, batch)``."""
    out, engine = run_engine(packet_batches(path, batch), options=options)
    out["stats"] = [dict(engine.tracker.l7.stats)]
    return out


def local_windows(path: str, thresholds: list[str] | None = None, window_s: float = 10.0,
                  options: L7Options | None = None) -> dict[str, list[dict]]:
    """``local_l7`` and then the per-service windows, in-process: adds
    ``wire.service-metrics`` and ``wire.alerts`` (``thresholds``: NAME=VALUE changes)."""
    out = local_l7(path, options=options)
    store: dict[str, bytes] = {}
    offsets: dict[int, int] = defaultdict(int)
    windows = ServiceWindows(store, lambda topic, key, r: out[topic].append(r),
                             WindowOptions(length_us=int(window_s * 1e6),
                                           thresholds=Thresholds.parse(thresholds or [])))
    for q, b in out["observations"]:
        windows.handle(b, q, offsets[q])
        offsets[q] += 1
    assert not store, "every window of a finished source is emitted"
    return out
