"""TCP edge cases, one crafted capture each, checked against tshark and against what they mean.

Each capture is ``tests/data/crafted/eN_*.pcap``, written by ``tests/data/crafted/src/eN_*.py``
(whose docstring describes the packets). Every test first checks, stream by stream, that our
records agree with ``tshark`` 4.0.17 (:func:`oracle.assert_matches_tshark`: the checks of
test_tcp_oracle plus per-direction packets, bytes and ``tcp.window_size``), then asserts the
case's own expectation: state, handshake, client/server roles, counts.

The last test needs no tshark: 20,000 short connections keep the tracker's state bounded.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import DATA, requires_tshark
from local_pipeline import local_connections
from oracle import assert_matches_tshark
from wirestream.processors.connection_tracker import SWEEP_INTERVAL_US, ConnectionTracker
from wirestream.processors.tcp_connection import C_ACK, C_DATA, C_FIN, C_RST, C_SYN, C_SYNACK

from wirestream.packet_block import ACK, FIN, PACKET_DTYPE, PROTO_TCP, RST, SYN

CRAFTED = DATA / "crafted"
HANDSHAKE = C_SYN | C_SYNACK | C_ACK


def crafted(name: str) -> str:
    return str(CRAFTED / f"{name}.pcap")


def by_client(records: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """(client address, client port) -> its records, in emission order."""
    out: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        out.setdefault((r["client_ip"], r["client_port"]), []).append(r)
    return out


def only(records: list[dict], ip: str, port: int) -> dict:
    rs = by_client(records)[(ip, port)]
    assert len(rs) == 1, rs
    return rs[0]


def checked(name: str, **tracker_args: int) -> list[dict]:
    """Our records for a crafted capture, after checking every stream against tshark."""
    path = crafted(name)
    records = local_connections(path, **tracker_args)
    assert_matches_tshark(path, records)
    return records


# --- handshake variants -----------------------------------------------------------------


@requires_tshark
def test_capture_starts_mid_connection() -> None:
    recs = checked("e1_midstream")
    assert len(recs) == 3
    # The server's data is the first packet; the well-known port (443) is still the server.
    a = only(recs, "10.0.0.1", 40001)
    assert (a["server_ip"], a["server_port"]) == ("10.0.0.2", 443)
    assert a["handshake_seen"] is False and a["handshake_rtt_us"] is None
    assert a["lifecycle"] == C_ACK | C_DATA
    assert a["state"] == "open_at_end"
    assert (a["packets_c2s"], a["packets_s2c"], a["bytes_c2s"], a["bytes_s2c"]) == (3, 3, 50, 300)
    b = only(recs, "10.0.0.3", 50000)
    assert (b["server_ip"], b["server_port"]) == ("10.0.0.2", 22)
    assert b["handshake_seen"] is False
    assert b["state"] == "complete"  # FIN both ways, no handshake needed
    # No well-known port on either side: the first sender is taken as the client.
    c = only(recs, "10.0.0.5", 50001)
    assert (c["server_ip"], c["server_port"]) == ("10.0.0.4", 45000)
    assert c["handshake_seen"] is False and c["state"] == "open_at_end"


@requires_tshark
def test_syn_retransmission() -> None:
    recs = checked("e2_syn_retrans")
    assert len(recs) == 1
    r = recs[0]
    assert r["retransmissions"] == 1  # the 2nd SYN (same ISN)
    assert r["handshake_rtt_us"] == 100_000  # from the LAST SYN (2.0 s), not the first (1.0 s)
    assert r["handshake_seen"] and r["state"] == "complete"
    assert (r["client_ip"], r["client_port"]) == ("10.0.0.1", 40000)
    assert r["packets_c2s"] == 7 and r["packets_s2c"] == 3


@requires_tshark
def test_synack_retransmission() -> None:
    recs = checked("e3_synack_retrans")
    assert len(recs) == 1
    r = recs[0]
    assert r["retransmissions"] == 1  # the 2nd SYN-ACK
    assert r["duplicate_acks"] == 1  # the client's repeated ACK of it, as Wireshark flags it
    assert r["handshake_rtt_us"] == 20_000  # SYN -> first ACK
    assert (r["client_ip"], r["server_port"]) == ("10.0.0.1", 80)
    assert r["handshake_seen"] and r["state"] == "complete"


@requires_tshark
def test_payload_in_syn_tcp_fast_open() -> None:
    recs = checked("e4_tfo")
    assert len(recs) == 2
    for port in (40000, 40001):
        r = only(recs, "10.0.0.1", port)
        assert r["lifecycle"] == HANDSHAKE | C_DATA | C_FIN
        assert r["bytes_c2s"] == 18 and r["goodput_bytes_c2s"] == 18  # the SYN's payload
        assert r["handshake_seen"] and r["state"] == "complete"
        assert r["rtt_samples"] >= 1  # the SYN-ACK acks SYN + data: an RTT sample
    # No payload after the SYN: the DATA bit comes from the SYN itself.
    assert only(recs, "10.0.0.1", 40001)["bytes_s2c"] == 0


@requires_tshark
def test_simultaneous_open() -> None:
    recs = checked("e5_simultaneous_open")
    assert len(recs) == 1  # one stream, although both sides sent a pure SYN
    r = recs[0]
    assert (r["client_ip"], r["client_port"]) == ("10.0.0.1", 5000)  # the first SYN's sender
    assert (r["server_ip"], r["server_port"]) == ("10.0.0.2", 6000)
    assert r["handshake_seen"] and r["state"] == "complete"
    # Each SYN-ACK repeats its side's SYN sequence number: Wireshark flags both.
    assert r["retransmissions"] == 2


# --- sequence numbers and windows -------------------------------------------------------


@requires_tshark
def test_sequence_number_wraparound() -> None:
    recs = checked("e6_seq_wrap")
    assert len(recs) == 2
    a = only(recs, "10.0.0.1", 40000)
    assert a["duplicate_acks"] == 2  # of ack = 1, just after the wrap
    assert a["fast_retransmissions"] == 1  # of seq 1, just after the wrap
    assert a["retransmissions"] == 2  # that one and the RTO retransmission of seq 3001
    assert a["lost_segments"] == 0 and a["out_of_order"] == 0 and a["spurious_retransmissions"] == 0
    assert a["bytes_c2s"] == 9000 and a["goodput_bytes_c2s"] == 7000
    assert a["bytes_s2c"] == 100  # the server's data wraps too
    assert a["state"] == "complete"
    # Data ending exactly at 2^32 makes nextseq 0 ("unknown" in Wireshark's bookkeeping).
    z = only(recs, "10.0.0.1", 40001)
    assert z["retransmissions"] == 2 and z["spurious_retransmissions"] == 1
    assert z["state"] == "complete"


@requires_tshark
def test_window_scaling_without_handshake() -> None:
    r = only(checked("e7a_wscale_unseen"), "10.0.0.1", 40000)
    # Scale unknown (Wireshark -1): null, and the windows are the raw fields.
    assert r["window_scale_c2s"] is None and r["window_scale_s2c"] is None
    assert r["min_window_c2s"] == 300 and r["avg_window_c2s"] == pytest.approx((502 + 300 + 800) / 3)
    assert r["min_window_s2c"] == 5 and r["avg_window_s2c"] == pytest.approx((229 + 1000 + 5) / 3)


@requires_tshark
def test_window_scaling_with_handshake() -> None:
    # assert_matches_tshark compares min/avg windows with tcp.window_size per direction.
    recs = checked("e7b_wscale")
    assert len(recs) == 4
    a = only(recs, "10.0.0.1", 40000)
    assert (a["window_scale_c2s"], a["window_scale_s2c"]) == (7, 2)
    assert a["min_window_c2s"] == 400 << 7  # the SYN's 64240 is never scaled
    assert a["avg_window_c2s"] == pytest.approx((64240 + (502 * 2 + 400 * 3) * 128) / 6)
    assert a["min_window_s2c"] == 280 << 2
    assert a["avg_window_s2c"] == pytest.approx((65160 + (300 + 280 * 2) * 4) / 4)
    # Only one SYN carries the option: no scaling either way.
    for port in (40001, 40002):
        r = only(recs, "10.0.0.1", port)
        assert (r["window_scale_c2s"], r["window_scale_s2c"]) == (None, None)
        assert (r["min_window_c2s"], r["min_window_s2c"]) == (400, 280)
    # Only the SYN-ACK seen: the server's shift is known, the client's is not.
    d = only(recs, "10.0.0.1", 40003)
    assert (d["window_scale_c2s"], d["window_scale_s2c"]) == (None, 3)
    assert (d["min_window_c2s"], d["min_window_s2c"]) == (400, 280 << 3)
    assert d["handshake_seen"] is False


# --- addresses ----------------------------------------------------------------------------


@requires_tshark
def test_ipv6_connection() -> None:
    recs = checked("e8_ipv6")
    assert len(recs) == 2
    assert all(r["ip_version"] == 6 for r in recs)
    a = only(recs, "2001:db8::1", 40000)
    assert (a["server_ip"], a["server_port"]) == ("2001:db8::2", 443)
    assert a["handshake_seen"] and a["state"] == "complete"
    assert a["retransmissions"] == 1 and a["window_scale_c2s"] == 7
    b = only(recs, "2001:db8:0:1::5", 40001)  # RFC 5952 text, as tshark prints it
    assert b["state"] == "open_at_end"


# --- how connections end -----------------------------------------------------------------


@requires_tshark
def test_rst_mid_stream() -> None:
    recs = checked("e9_rst_midstream")
    for port in (40000, 40001):  # RST+ACK from the server; bare RST from the client
        r = only(recs, "10.0.0.1", port)
        assert r["state"] == "reset"
        assert r["lifecycle"] & C_RST and r["handshake_seen"]


@requires_tshark
def test_fin_then_rst() -> None:
    recs = checked("e10_fin_rst")
    assert only(recs, "10.0.0.1", 40000)["state"] == "complete"  # FIN both ways, then RST
    assert only(recs, "10.0.0.1", 40001)["state"] == "reset"  # one FIN, then RST
    assert all(r["lifecycle"] & (C_FIN | C_RST) == C_FIN | C_RST for r in recs)


@requires_tshark
def test_refused_unanswered_and_half_open() -> None:
    recs = checked("e11_unanswered")
    assert len(recs) == 3
    refused = only(recs, "10.0.0.1", 40000)
    assert refused["state"] == "refused" and refused["lifecycle"] == C_SYN | C_ACK | C_RST  # RST+ACK
    unanswered = only(recs, "10.0.0.1", 40001)
    assert unanswered["state"] == "incomplete_handshake" and unanswered["lifecycle"] == C_SYN
    assert unanswered["retransmissions"] == 2 and unanswered["packets_s2c"] == 0
    half = only(recs, "10.0.0.1", 40002)
    assert half["state"] == "half_open" and half["lifecycle"] == C_SYN | C_SYNACK
    assert half["retransmissions"] == 1  # the repeated SYN-ACK
    assert not any(r["handshake_seen"] for r in recs)


@requires_tshark
def test_port_reuse() -> None:
    recs = checked("e12_port_reuse")  # also: 3 records for tshark's 3 streams
    first, second = by_client(recs)[("10.0.0.1", 40000)]  # a new ISN: a new connection
    assert first["connection_id"] != second["connection_id"]
    assert (first["start_ts_us"], second["start_ts_us"]) == (1_000_000, 3_000_000)
    assert (first["state"], second["state"]) == ("complete", "reset")
    assert first["handshake_seen"] and second["handshake_seen"]
    same = only(recs, "10.0.0.1", 40001)  # the same ISN again: the same connection
    assert same["retransmissions"] == 1 and same["packets_c2s"] == 5


# --- long and quiet connections ----------------------------------------------------------


@requires_tshark
def test_interim_records_then_one_final() -> None:
    path = crafted("e13_long_idle")
    recs = local_connections(path, batch=1, interim_us=10_000_000)
    finals = [r for r in recs if r["final"]]
    assert_matches_tshark(path, finals)  # the final records are as without interim records
    assert sorted(finals, key=lambda r: r["connection_id"]) == sorted(
        local_connections(path, batch=10_000), key=lambda r: r["connection_id"])
    long = by_client(recs)[("10.0.0.1", 40000)]
    assert [r["final"] for r in long] == [False] * (len(long) - 1) + [True]
    assert len(long) - 1 >= 3  # 1 s .. 42.5 s with a 10 s interval: at 11, 21, 31 (and 41) s
    assert len({r["connection_id"] for r in long}) == 1
    packets = [r["packets_c2s"] + r["packets_s2c"] for r in long]
    assert packets == sorted(packets) and packets[0] < packets[-1]
    assert all(r["state"] == "open" for r in long[:3])  # interim records of a connection still open
    assert long[-1]["state"] == "complete"


@requires_tshark
@pytest.mark.parametrize("batch", [1, 64, 10_000])
def test_idle_timeout_splits_a_quiet_connection(batch: int) -> None:
    """Where we differ from Wireshark on purpose: after --idle-timeout without a packet, a
    connection is emitted (state 'timeout') and later packets on its ports start a new record;
    Wireshark, holding the whole file, keeps one tcp.stream. So tshark is compared only on the
    stream that never goes quiet. The split must not depend on batch boundaries."""
    path = crafted("e13_long_idle")
    recs = local_connections(path, batch=batch, idle_timeout_us=10_000_000)
    streams, _ = assert_matches_tshark(path, recs, skip_streams={1})
    assert ("10.0.0.1", 40001) in streams[1].endpoints  # the stream skipped is the quiet one
    assert len(recs) == 3
    before, after = by_client(recs)[("10.0.0.1", 40001)]
    assert before["state"] == "timeout" and before["handshake_seen"]
    assert before["packets_c2s"] + before["packets_s2c"] == 5 and before["end_ts_us"] == 2_510_000
    assert after["start_ts_us"] == 20_000_000 and not after["handshake_seen"]
    assert (after["server_ip"], after["server_port"]) == ("10.0.0.2", 80)  # well-known port
    assert after["state"] == "complete"
    assert before["connection_id"] != after["connection_id"]
    assert only(recs, "10.0.0.1", 40000)["state"] == "complete"


def _header(ts: int, src: bytes, sport: int, dst: bytes, dport: int, seq: int, ack: int, flags: int,
            payload_len: int = 0) -> tuple:
    """One PACKET_DTYPE row (IPv4 TCP, window 1000, no options)."""
    return (ts, 0, 54 + payload_len, payload_len, 0, 0, seq, ack, src, dst, sport, dport, 1000, flags, 4,
            PROTO_TCP, -1, 0)


@pytest.mark.parametrize("batch", [1, 3])
def test_idle_at_end_of_input_is_timeout_whatever_the_batches(batch: int) -> None:
    """A connection already idle past the timeout when the input ends is 'timeout', whether
    or not a sweep ran after it expired (sweeps run at most once a second, after a batch)."""
    a, b, s = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 3]), bytes([10, 0, 0, 2])
    headers = np.array([
        _header(0, a, 40000, s, 80, 1001, 5001, ACK, 10),  # quiet from here on
        _header(9_500_000, b, 40001, s, 80, 1001, 5001, ACK, 10),  # a sweep (batch 1)
        _header(10_200_000, b, 40001, s, 80, 1011, 5001, ACK, 10),  # < 1 s later: none
    ], dtype=PACKET_DTYPE)
    headers["frame"] = [1, 2, 3]
    records: list[dict] = []
    tracker = ConnectionTracker(records.append, idle_timeout_us=10_000_000)
    for i in range(0, len(headers), batch):
        tracker.process(headers[i : i + batch])
    tracker.flush()
    assert only(records, "10.0.0.1", 40000)["state"] == "timeout"
    assert only(records, "10.0.0.3", 40001)["state"] == "open_at_end"


@requires_tshark
def test_one_sided_capture() -> None:
    recs = checked("e14_one_sided")
    assert len(recs) == 2
    c = only(recs, "10.0.0.1", 40000)  # only the client's packets: the SYN tells the roles
    assert c["packets_s2c"] == 0 and c["packets_c2s"] == 11
    assert c["retransmissions"] == 1 and c["bytes_c2s"] == 500 and c["goodput_bytes_c2s"] == 400
    assert not c["handshake_seen"] and c["state"] == "open_at_end"
    s = only(recs, "10.0.0.3", 40001)  # only the server's: the SYN-ACK tells the roles
    assert (s["server_ip"], s["server_port"]) == ("10.0.0.2", 80)
    assert s["packets_c2s"] == 0 and s["packets_s2c"] == 5
    assert s["retransmissions"] == 1 and s["bytes_s2c"] == 3000


# --- bounded state ------------------------------------------------------------------------


def _short_connections(n: int, spacing_us: int) -> np.ndarray:
    """Packet headers of ``n`` short connections, one starting every ``spacing_us``: 8 in 10
    open and close (SYN, SYN-ACK, ACK, FIN, FIN, ACK), 1 is refused (SYN, RST+ACK), 1 gets
    no answer (SYN)."""
    rows = []
    server = bytes([10, 0, 0, 2])
    for i in range(n):
        t = 1_700_000_000_000_000 + i * spacing_us
        cli = bytes([10, 1, i >> 8 & 0xFF, i & 0xFF])
        c2s = (cli, 40000, server, 80)
        s2c = (server, 80, cli, 40000)
        kind = i % 10
        if kind < 8:
            pkts = [(0, c2s, 1000, 0, SYN), (300, s2c, 5000, 1001, SYN | ACK), (600, c2s, 1001, 5001, ACK),
                    (900, c2s, 1001, 5001, FIN | ACK), (1200, s2c, 5001, 1002, FIN | ACK),
                    (1500, c2s, 1002, 5002, ACK)]
        elif kind == 8:
            pkts = [(0, c2s, 1000, 0, SYN), (300, s2c, 0, 1001, RST | ACK)]
        else:
            pkts = [(0, c2s, 1000, 0, SYN)]
        for dt, (src, sport, dst, dport), seq, ack, flags in pkts:
            rows.append(_header(t + dt, src, sport, dst, dport, seq, ack, flags))
    headers = np.array(rows, dtype=PACKET_DTYPE)
    headers.sort(order="ts_us", kind="stable")
    headers["frame"] = np.arange(1, len(headers) + 1)
    return headers


def test_state_stays_bounded() -> None:
    n, spacing_us, batch = 20_000, 5_000, 256
    linger_us, idle_us = 100_000, 1_000_000
    headers = _short_connections(n, spacing_us)
    records: list[dict] = []
    tracker = ConnectionTracker(records.append, close_linger_us=linger_us, idle_timeout_us=idle_us)
    # Held at most: connections started within a timeout plus the time between two sweeps
    # (one per SWEEP_INTERVAL_US, after a batch), plus one batch's worth.
    bound = (idle_us + SWEEP_INTERVAL_US) // spacing_us + batch
    peak = 0
    for i in range(0, len(headers), batch):
        tracker.process(headers[i : i + batch])
        peak = max(peak, tracker.open_connections)
        assert tracker.open_connections <= bound, f"{tracker.open_connections} held after packet {i}"
        assert tracker.index_entries == 2 * tracker.open_connections  # both directions, nothing stale
    assert peak < n // 20  # bounded by the timeouts, not by the number of connections
    tracker.flush()
    assert tracker.index_entries == 0 and tracker.open_connections == 0
    assert len(records) == n and all(r["final"] for r in records)
    states: dict[str, int] = {}
    for r in records:
        states[r["state"]] = states.get(r["state"], 0) + 1
    assert states == {"complete": n * 8 // 10, "refused": n // 10, "incomplete_handshake": n // 10}
