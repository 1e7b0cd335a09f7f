"""What the UDP flow table (``processors/flows.py``) costs, and tshark's ``conv,udp`` beside it.

Writes a capture of UDP traffic (``--dns`` DNS-like exchanges, each from its own source
port: one flow per query and answer, the flow table's worst case; and ``--bulk`` packets
over 8 long flows, QUIC-like), batches it as ``produce pcap`` does, then times
``FlowTracker.process`` over the batches (and ``flush``), best of ``--runs``, as CPU
per UDP packet: the core's table (``rust/src/flow.rs``) and the record dicts it hands
to Python, most of the cost when flows are short. In the same run, ``tshark -q -z conv,udp`` reads the same file (its
whole run: reading, dissecting, the conversation table).

    .venv/bin/python bench/bench_flows.py [--dns 100000] [--bulk 200000]
"""

from __future__ import annotations

import argparse
import random
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from wirestream.processors.flows import FlowTracker

from wirestream import _core
from wirestream.packet_block import PACKET_DTYPE, PROTO_UDP


def _frame(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, dst) + udp
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip


def write_capture(path: Path, dns: int, bulk: int) -> int:
    """A pcap of ``dns`` query/answer pairs and ``bulk`` packets over 8 flows, interleaved."""
    rng = random.Random(7)
    client, resolver = bytes([10, 1, 0, 1]), bytes([10, 1, 0, 53])
    query, answer = bytes(40), bytes(120)
    frames = []
    for _ in range(dns):
        port = 1024 + rng.randrange(60000)
        frames.append(_frame(client, resolver, port, 53, query))
        frames.append(_frame(resolver, client, 53, port, answer))
        for _ in range(bulk // max(dns, 1)):
            k = rng.randrange(8)
            up = rng.random() < 0.3
            frames.append(_frame(client, bytes([10, 2, 0, k]), 40000 + k, 443, bytes(1200)) if up else
                          _frame(bytes([10, 2, 0, k]), client, 443, 40000 + k, bytes(1200)))
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for n, fr in enumerate(frames):
            ts = 1_700_000_000_000_000 + n * 20  # 20 µs apart: a second per 50,000 packets
            f.write(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(fr), len(fr)))
            f.write(fr)
    return len(frames)


def batches_of(path: Path) -> list[tuple[np.ndarray, bytes]]:
    reader = _core.open_capture(str(path))
    decoder, batcher = _core.FrameDecoder(65535), _core.Batcher(1, 4096, 1 << 30)
    out, done = [], False
    while not done:
        ready, done = reader.pump(decoder, batcher, 100_000)
        out += ready
    out += batcher.flush()
    result = []
    for _part, _n, h, p, *_tunnels in out:
        headers = np.frombuffer(h, dtype=PACKET_DTYPE)
        result.append((headers[headers["proto"] == PROTO_UDP], p))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dns", type=int, default=100_000, help="DNS-like query/answer pairs (default: %(default)s)")
    ap.add_argument("--bulk", type=int, default=200_000, help="packets over 8 long flows (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "udp.pcap"
        packets = write_capture(path, args.dns, args.bulk)
        batches = batches_of(path)
        best = None
        for _ in range(args.runs):
            records: list[dict] = []
            tracker = FlowTracker(records.append, "bench")
            c0 = time.process_time()
            for headers, payloads in batches:
                tracker.process(headers, payloads)
            tracker.flush()
            cpu = time.process_time() - c0
            best = cpu if best is None else min(best, cpu)
        print(f"{packets:,} UDP packets ({args.dns:,} DNS-like pairs, {args.bulk:,} over 8 flows), "
              f"{len(records):,} flows: flow table {best / packets * 1e6:.2f} µs CPU/packet, best of {args.runs}")
        tshark = shutil.which("tshark")
        if tshark:
            t0 = time.perf_counter()
            r = subprocess.run([tshark, "-n", "-q", "-r", str(path), "-z", "conv,udp"], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            rows = sum(1 for line in r.stdout.splitlines() if "<->" in line)
            print(f"tshark -q -z conv,udp (whole run): {wall / packets * 1e6:.2f} µs/packet wall, {rows:,} conversations")


if __name__ == "__main__":
    main()
