"""TCP analysis matches Wireshark packet for packet, on every capture in tests/data.

The decoder and connection tracker run in-process here (fast, all fields); the same code
runs through the real broker in test_analyze_e2e.py.
"""

from __future__ import annotations

import os

import pytest
from helpers import DATA, real_captures, requires_tshark
from local_pipeline import local_connections
from oracle import FLAG_FIELDS, match_records, tshark_conversation_count, tshark_streams

CAPTURES = real_captures()


@requires_tshark
@pytest.mark.parametrize("path", CAPTURES, ids=[os.path.relpath(p, os.path.dirname(__file__)) for p in CAPTURES])
def test_connections_match_tshark(path: str) -> None:
    """One record per tcp.stream, and every counter equals tshark's for that stream."""
    records = local_connections(path)
    streams = tshark_streams(path)
    assert len(records) == tshark_conversation_count(path)
    matched = match_records(records, streams)
    assert set(matched) == set(streams), "a tshark stream has no record"
    for sid, s in streams.items():
        r = matched[sid]
        where = f"tcp.stream {sid} of {os.path.basename(path)}"
        assert r["lifecycle"] == s.completeness, where
        if s.initial_rtt_us is None:
            assert r["handshake_rtt_us"] is None, where
        else:
            assert r["handshake_rtt_us"] == pytest.approx(s.initial_rtt_us, abs=1), where
        for name in FLAG_FIELDS:
            assert r[name] == s.counts[name], f"{name} on {where}"
        assert r["packets_c2s"] + r["packets_s2c"] == s.frames, where
        assert r["rtt_samples"] == len(s.ack_rtts_us), where
        if s.ack_rtts_us:
            assert r["rtt_min_us"] == pytest.approx(min(s.ack_rtts_us), abs=1), where
            assert r["rtt_max_us"] == pytest.approx(max(s.ack_rtts_us), abs=1), where
            assert r["rtt_avg_us"] == pytest.approx(sum(s.ack_rtts_us) / len(s.ack_rtts_us), abs=1), where


def test_batch_boundaries_do_not_matter() -> None:
    """Splitting the packets into batches of any size gives identical records."""
    path = str(DATA / "chrissanders" / "http_espn.pcapng")
    one = local_connections(path, batch=1)
    big = local_connections(path, batch=100_000)
    key = lambda r: r["connection_id"]  # noqa: E731
    assert sorted(one, key=key) == sorted(big, key=key)
