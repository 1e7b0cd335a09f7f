"""Wireshark as the referee: per-stream figures from ``tshark`` for a capture file.

``tshark -2`` (two passes, as the Wireshark GUI) gives, for every frame, the conversation's
``tcp.completeness`` and ``initial_rtt`` as the user sees them; the per-frame analysis
flags are counted per ``tcp.stream``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

TSHARK = shutil.which("tshark")

FLAG_FIELDS = {
    "retransmissions": "tcp.analysis.retransmission",
    "fast_retransmissions": "tcp.analysis.fast_retransmission",
    "spurious_retransmissions": "tcp.analysis.spurious_retransmission",
    "duplicate_acks": "tcp.analysis.duplicate_ack",
    "out_of_order": "tcp.analysis.out_of_order",
    "lost_segments": "tcp.analysis.lost_segment",
    "zero_window": "tcp.analysis.zero_window",
    "zero_window_probes": "tcp.analysis.zero_window_probe",
    "window_full": "tcp.analysis.window_full",
    "keep_alives": "tcp.analysis.keep_alive",
}


@dataclass
class Stream:
    stream: int
    first_ts_us: int = 0
    endpoints: frozenset = frozenset()
    frames: int = 0
    completeness: int = 0
    initial_rtt_us: int | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FLAG_FIELDS, 0))
    ack_rtts_us: list[float] = field(default_factory=list)


def _us(epoch: str) -> int:
    """frame.time_epoch (seconds, up to ns digits) -> integer µs, truncated like the producer."""
    return int(Decimal(epoch) * 1_000_000)


def tshark_streams(path: str) -> dict[int, Stream]:
    fields = [
        "tcp.stream", "frame.time_epoch", "ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst",
        "tcp.dstport", "tcp.completeness", "tcp.analysis.initial_rtt", "tcp.analysis.ack_rtt",
        *FLAG_FIELDS.values(),
    ]
    cmd = [TSHARK, "-2", "-n", "-r", path, "-Y", "tcp && !icmp && !icmpv6", "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=f"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    streams: dict[int, Stream] = {}
    for line in out.splitlines():
        cols = line.split("\t")
        row = dict(zip(fields, cols, strict=True))
        sid = int(row["tcp.stream"])
        s = streams.get(sid)
        src = row["ip.src"] or row["ipv6.src"]
        dst = row["ip.dst"] or row["ipv6.dst"]
        if s is None:
            s = streams[sid] = Stream(sid, _us(row["frame.time_epoch"]),
                                      frozenset({(src, int(row["tcp.srcport"])), (dst, int(row["tcp.dstport"]))}))
        s.frames += 1
        s.completeness = int(row["tcp.completeness"] or 0)  # the last frame's value wins
        if row["tcp.analysis.initial_rtt"]:
            irtt = round(Decimal(row["tcp.analysis.initial_rtt"]) * 1_000_000)
            # tshark -2 can show a negative iRTT when a SYN comes after the first ACK (its
            # 2nd pass sees the later SYN's time); a one-pass stream processor cannot.
            if irtt > 0:
                s.initial_rtt_us = irtt
        if row["tcp.analysis.ack_rtt"]:
            s.ack_rtts_us.append(float(Decimal(row["tcp.analysis.ack_rtt"]) * 1_000_000))
        for name, fld in FLAG_FIELDS.items():
            if row[fld]:
                s.counts[name] += 1
    return streams


def tshark_conversation_count(path: str) -> int:
    """Rows of ``tshark -q -z conv,tcp`` (one per tcp.stream in Wireshark 4.0)."""
    out = subprocess.run([TSHARK, "-n", "-q", "-r", path, "-z", "conv,tcp"],
                         capture_output=True, text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if "<->" in line)


def match_records(records: list[dict], streams: dict[int, Stream]) -> dict[int, dict]:
    """Pair each tshark stream with our connection record (same endpoints, same first packet)."""
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        ep = frozenset({(r["client_ip"], r["client_port"]), (r["server_ip"], r["server_port"])})
        by_key[(ep, r["start_ts_us"])].append(r)
    matched = {}
    for sid, s in streams.items():
        candidates = by_key.get((s.endpoints, s.first_ts_us), [])
        if candidates:
            matched[sid] = candidates.pop(0)
    return matched
