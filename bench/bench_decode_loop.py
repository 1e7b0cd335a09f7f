#!/usr/bin/env python3
"""The core's replay loop alone (read + decode + batch, ``CaptureReader.pump``), timed.

Writes (once) a capture of 1,000,000 plain IPv4 TCP frames of 200 payload bytes over 1,000
flows, then prints the thread CPU time per frame of each of ``RUNS`` passes over it (CPU
time: the loop runs without the GIL in this thread, and other work on the machine then
matters less than for wall time)::

    .venv/bin/python bench/bench_decode_loop.py [/tmp/plain.pcap] [RUNS]

For a before/after comparison, build both versions the same way and alternate them.
"""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

FRAMES = 1_000_000


def make(path: Path, n: int = FRAMES) -> None:
    """A classic pcap of `n` Ethernet/IPv4/TCP frames (skipped if `path` exists)."""
    if path.exists():
        return
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    payload = b"x" * 200
    for i in range(n):
        tcp = struct.pack("!HHIIBBHHH", 10000 + i % 1000, 80, i, 1, 0x50, 0x18, 65535, 0, 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i & 0xFFFF, 0x4000, 64, 6, 0,
                         bytes([10, 0, (i >> 8) & 255, 1]), bytes([10, 0, 0, 2]))
        frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp
        out += struct.pack("<IIII", 1_700_000_000 + i // 100_000, i % 1_000_000, len(frame), len(frame)) + frame
    path.write_bytes(bytes(out))


def run(path: Path) -> float:
    """Thread CPU ns per frame of one pass."""
    from wirestream.producers.capture_file import open_capture
    from wirestream.producers.decode import FrameDecoder

    from wirestream import _core

    decoder = FrameDecoder()
    batcher = _core.Batcher(4, 4096, 768 * 1024)
    with open_capture(str(path)) as reader:
        start = time.thread_time()
        while True:
            _, done = reader.core.pump(decoder.core, batcher, 1 << 16)
            if done:
                break
        elapsed = time.thread_time() - start
        frames = reader.core.frames
    assert not decoder.dropped, decoder.dropped
    return elapsed / frames * 1e9


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/plain.pcap")
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    make(path)
    print("ns/frame:", " ".join(f"{run(path):.1f}" for _ in range(runs)))


if __name__ == "__main__":
    main()
