"""Run the producer's decoder and the connections processor in-process, without Kafka.

For fast, focused checks of the TCP analysis against tshark. The end-to-end tests run the
same code through the real broker (tests/test_analyze_e2e.py).
"""

from __future__ import annotations

import numpy as np
from wirestream.processors.connection_tracker import ConnectionTracker
from wirestream.producers.capture_file import open_capture
from wirestream.producers.decode import FrameDecoder

from wirestream.packet_block import PACKET_DTYPE, pack_header


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
