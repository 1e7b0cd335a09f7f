"""Run the producer's decoder and the connections processor in-process, without Kafka.

For fast, focused checks of the TCP analysis against tshark. The end-to-end tests run the
same code through the real broker (tests/test_analyze_e2e.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np
from wirestream.processors.connection_tracker import ConnectionTracker
from wirestream.processors.detections import Thresholds
from wirestream.processors.l7.base import L7Options
from wirestream.processors.l7.session import L7Dispatcher
from wirestream.processors.observations import Observer
from wirestream.processors.service_windows import ServiceWindows, WindowOptions
from wirestream.producers.capture_file import open_capture
from wirestream.producers.decode import FrameDecoder

from wirestream.packet_block import PACKET_DTYPE, PROTO_UDP, pack_header
from wirestream.topics import CONNECTIONS


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


def local_l7(path: str, batch: int = 64, options: L7Options | None = None) -> dict[str, list[dict]]:
    """Run the connections processor with L7 analysis in-process: topic -> records.

    As in PacketPipeline, every record is first shown to an ``Observer`` (the windows'
    view of it, findings included); its batches are under ``out["observations"]`` as
    ``(observation partition, batch)``."""
    out: dict[str, list] = defaultdict(list)
    observer = Observer(lambda q, b: out["observations"].append((q, b)), "local", 0, 1, 4)

    def publish(topic: str, key: str | None, record: dict) -> None:
        observer.observe(topic, record)
        out[topic].append(record)

    l7 = L7Dispatcher(publish, "local", options or L7Options())
    tracker = ConnectionTracker(lambda r: publish(CONNECTIONS, None, r), source_id="local", l7=l7)
    for headers, payloads in packet_batches(path, batch):
        l7.datagrams(headers[headers["proto"] == PROTO_UDP], payloads)  # as PacketPipeline
        tracker.process(headers, payloads)
        if len(headers):
            observer.advance(int(headers["ts_us"].max()))
        observer.flush()
    tracker.flush()
    observer.flush(end_of_input=True)
    out["stats"] = [dict(l7.stats)]
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
