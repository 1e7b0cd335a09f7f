"""Run the producer's decoder and the connections processor in-process, without Kafka.

For fast, focused checks of the TCP analysis against tshark. The end-to-end tests run the
same code through the real broker (tests/test_analyze_e2e.py).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from wirestream.processors.connection_tracker import ConnectionTracker
from wirestream.processors.l7.base import L7Options
from wirestream.processors.l7.session import L7Dispatcher
from wirestream.producers.capture_file import open_capture
from wirestream.producers.decode import FrameDecoder

from wirestream.packet_block import PACKET_DTYPE, PROTO_UDP, pack_header
from wirestream.topics import CONNECTIONS


def packet_headers(path: str) -> np.ndarray:
    decoder = FrameDecoder()
    packed = bytearray()
    with open_capture(path) as reader:
        for f in reader:
            d = decoder.decode(f.linktype, f.data, f.ts_us, f.orig_len, f.number)
            if d is not None:
                packed += pack_header(d[0], 0, 0)
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
    decoder = FrameDecoder()
    packed = bytearray()
    blob = bytearray()
    n = 0
    with open_capture(path) as reader:
        for f in reader:
            d = decoder.decode(f.linktype, f.data, f.ts_us, f.orig_len, f.number)
            if d is None:
                continue
            payload = d[1][:snaplen]
            packed += pack_header(d[0], len(blob), len(payload))
            blob += payload
            n += 1
            if n == batch:
                yield np.frombuffer(bytes(packed), dtype=PACKET_DTYPE), bytes(blob)
                packed, blob, n = bytearray(), bytearray(), 0
    if n:
        yield np.frombuffer(bytes(packed), dtype=PACKET_DTYPE), bytes(blob)


def local_l7(path: str, batch: int = 64, options: L7Options | None = None) -> dict[str, list[dict]]:
    """Run the connections processor with L7 analysis in-process: topic -> records."""
    out: dict[str, list[dict]] = defaultdict(list)

    def publish(topic: str, key: str, record: dict) -> None:
        out[topic].append(record)

    l7 = L7Dispatcher(publish, "local", options or L7Options())
    tracker = ConnectionTracker(lambda r: out[CONNECTIONS].append(r), source_id="local", l7=l7)
    for headers, payloads in packet_batches(path, batch):
        l7.datagrams(headers[headers["proto"] == PROTO_UDP], payloads)  # as PacketPipeline
        tracker.process(headers, payloads)
    tracker.flush()
    out["stats"] = [dict(l7.stats)]
    return out
