"""HTTP/1 and TLS sessions *attached* to the TCP core (``TcpTracker.l7_attach``).

Once a connection is known to speak HTTP/1 (or TLS, without a key log), the core hands its
in-order chunks and ticks to the analyser's compiled parser itself
(processors/connection_tracker.py); gaps, the close and a switch to HTTP/2 go through the
Python hooks, with the session detached so
that a connection's events keep their order. The proof that this changes nothing: the
same input, analysed with attachment and with it turned off (``direct_core`` returning
None, the hooks doing everything), gives the same records of every topic, field by field
-- on real captures fed one packet per batch and 64 per batch (a session is attached as
its protocol is recognised, so its next chunk goes to the core even within the same
batch: the tracker's events are made one at a time as they are taken), and on
conversations made for the cases that detach (a gap, an h2c upgrade) or take the core's
tick (a timeout). Each run also counts what came back through ``on_core_output``, so a
test cannot pass by attachment never happening.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import assert_same
from l7_traffic import Traffic
from local_pipeline import RecordingSink, packet_batches
from wirestream.processors.engine import Engine, EngineOptions
from wirestream.processors.l7.http import HttpAnalyzer
from wirestream.processors.l7.tls import TlsAnalyzer

from wirestream.packet_block import ACK, FIN, PSH, SYN
from wirestream.topics import CONNECTIONS, TLS, TRANSACTIONS

DATA = Path(__file__).parent / "data"
HTTP_CAPTURES = [
    "chrissanders/http_espn.pcapng",  # 80+ keep-alive connections, long bodies
    "chrissanders/http_espn_fail.pcapng",
    "chrissanders/http_dvwa_clearlogin.pcapng",
    "chrissanders/http_dvwa_sqlinjection.pcapng",
    "chrissanders/http_google.pcapng",
    "chrissanders/http_ip4and6.pcapng",
    "chrissanders/http_post.pcapng",
    "chrissanders/http_dvwa_directorytraversal.pcapng",
]
#: TLS: handshakes whole, failed, retried, resumed; then encrypted records the core skips
TLS_CAPTURES = sorted(str(p.relative_to(DATA)) for p in (DATA / "zeek-tls").glob("*.pcap"))
OPTIONS = EngineOptions(observation_partitions=2, packet_partitions=1)


class Counted:
    """What came back through ``on_core_output`` during a run (the attached path)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, attached: bool) -> None:
        self.outputs = 0
        for cls in (HttpAnalyzer, TlsAnalyzer):
            if not attached:
                monkeypatch.setattr(cls, "direct_core", lambda self: None)
                continue
            monkeypatch.setattr(cls, "on_core_output", self._counting(cls.on_core_output))

    def _counting(self, original: Any) -> Any:
        def counting(analyzer: Any, out: Any, ts_us: int, handoff: bool) -> None:
            self.outputs += 1
            original(analyzer, out, ts_us, handoff)

        return counting


def run(batches: list[tuple[np.ndarray, bytes]], monkeypatch: pytest.MonkeyPatch,
        attached: bool, cuts: set[int] = frozenset()) -> tuple[dict[str, Any], int]:
    """The engine's records of ``batches`` (and its final report), and how many outputs
    came through the attached path; after batch i in ``cuts`` the engine is checkpointed
    and restored."""
    with monkeypatch.context() as m:
        counted = Counted(m, attached)
        sink = RecordingSink()
        engine = Engine("local", 0, OPTIONS, sink)
        for i, (headers, payloads) in enumerate(batches):
            engine.feed(headers, payloads)
            if i in cuts:
                engine = Engine.restore(engine.snapshot(), OPTIONS, sink)
        report = engine.finish()
        return {**sink.out, "report": [report]}, counted.outputs


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("capture", HTTP_CAPTURES)
def test_attached_sessions_give_the_records_the_hooks_give(capture: str, batch: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    batches = list(packet_batches(str(DATA / capture), batch))
    expected, none = run(batches, monkeypatch, attached=False)
    got, outputs = run(batches, monkeypatch, attached=True)
    assert none == 0
    assert_same(expected, got, capture)
    assert expected[TRANSACTIONS]
    assert outputs > 0, "no transaction came through an attached session"


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("capture", TLS_CAPTURES)
def test_attached_tls_sessions_give_the_records_the_hooks_give(capture: str, batch: int,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    batches = list(packet_batches(str(DATA / capture), batch))
    expected, _ = run(batches, monkeypatch, attached=False)
    got, _ = run(batches, monkeypatch, attached=True)
    assert_same(expected, got, capture)
    assert expected[TLS]


def test_tls_records_come_through_attached_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = 0
    for capture in TLS_CAPTURES:
        _, n = run(list(packet_batches(str(DATA / capture), 1)), monkeypatch, attached=True)
        outputs += n
    assert outputs > 0, "no TLS handshake came through an attached session"


def test_a_restored_engine_attaches_its_sessions_again(monkeypatch: pytest.MonkeyPatch) -> None:
    batches = list(packet_batches(str(DATA / "chrissanders/http_espn.pcapng"), 8))
    expected, _ = run(batches, monkeypatch, attached=False)
    cuts = set(range(0, len(batches), 5))
    got, outputs = run(batches, monkeypatch, attached=True, cuts=cuts)
    assert_same(expected, got, "restored every 5 batches")
    assert outputs > 0
    # and a restored tracker has its HTTP sessions attached by its next batch
    sink = RecordingSink()
    engine = Engine("local", 0, OPTIONS, sink)
    for headers, payloads in batches[:40]:
        engine.feed(headers, payloads)
    held = engine.tracker._core.attached_count
    assert held > 0
    engine = Engine.restore(engine.snapshot(), OPTIONS, sink)
    assert engine.tracker._core.attached_count == 0  # attachments are not state
    engine.feed(*batches[40])
    assert engine.tracker._core.attached_count >= held - 2  # (a batch may close a connection or two)


# --- conversations for the paths that detach -------------------------------------------------

CLIENT, SERVER = ("10.1.0.1", 40000), ("10.1.0.2", 80)


def one_packet_batches(t: Traffic) -> list[tuple[np.ndarray, bytes]]:
    headers, payloads = t.batch()
    out = []
    for row in headers:
        at, n = int(row["payload_off"]), int(row["payload_caplen"])
        one = row.copy().reshape(1)
        one["payload_off"] = 0
        out.append((one, payloads[at:at + n]))
    return out


class Stream:
    """One TCP connection written segment by segment, with holes where wanted."""

    def __init__(self, t: Traffic) -> None:
        self.t = t
        self.seq = [1000, 5000]
        (cip, cport), (sip, sport) = CLIENT, SERVER
        t.packet(cip, cport, sip, sport, seq=self.seq[0], flags=SYN)
        t.packet(sip, sport, cip, cport, seq=self.seq[1], ack=self.seq[0] + 1, flags=SYN | ACK)
        self.seq = [self.seq[0] + 1, self.seq[1] + 1]
        t.packet(cip, cport, sip, sport, seq=self.seq[0], ack=self.seq[1])

    def send(self, d: int, data: bytes, skip: int = 0, gap_us: int = 100) -> None:
        """``data`` from side ``d``, after ``skip`` bytes that were never captured."""
        ends = (CLIENT, SERVER)
        (a, ap), (b, bp) = ends[d], ends[1 - d]
        self.seq[d] += skip
        self.t.packet(a, ap, b, bp, data, seq=self.seq[d], ack=self.seq[1 - d], flags=ACK | PSH, gap_us=gap_us)
        self.seq[d] += len(data)

    def close(self) -> None:
        ends = (CLIENT, SERVER)
        for d in (0, 1):
            (a, ap), (b, bp) = ends[d], ends[1 - d]
            self.t.packet(a, ap, b, bp, seq=self.seq[d], ack=self.seq[1 - d], flags=FIN | ACK)
            self.seq[d] += 1


def request(path: str, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: example.test\r\n" + extra + b"\r\n"


def response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def compare(t: Traffic, monkeypatch: pytest.MonkeyPatch) -> tuple[list[dict], int]:
    batches = one_packet_batches(t)
    expected, _ = run(batches, monkeypatch, attached=False)
    got, outputs = run(batches, monkeypatch, attached=True)
    assert_same(expected, got, "conversation")
    return got[TRANSACTIONS], outputs


def test_a_gap_in_an_attached_session(monkeypatch: pytest.MonkeyPatch) -> None:
    t = Traffic()
    s = Stream(t)
    s.send(0, request("/one"))
    s.send(1, response(b"a" * 300))
    s.send(0, request("/two"))
    s.send(1, response(b"b" * 300)[:40])
    s.send(1, response(b"b" * 300)[140:], skip=100)  # 100 bytes of the body never captured
    s.send(0, request("/three"))
    s.send(1, response(b"c" * 10))
    s.close()
    records, outputs = compare(t, monkeypatch)
    assert [(r["path"], r["status"]) for r in records] == [("/one", 200), ("/two", 200), ("/three", 200)]
    assert records[1]["error"] == "gap"
    assert outputs >= 2  # /one's response before the gap, /three's after it (attached again)


def test_an_h2c_upgrade_of_an_attached_session(monkeypatch: pytest.MonkeyPatch) -> None:
    t = Traffic()
    s = Stream(t)
    s.send(0, request("/first"))
    s.send(1, response(b"plain"))
    s.send(0, request("/", b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                           b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n"))
    s.send(1, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
              b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # the server's SETTINGS frame
    s.send(0, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    s.close()
    records, outputs = compare(t, monkeypatch)
    assert [(r["protocol"], r["path"], r["status"]) for r in records] == [
        ("http/1.1", "/first", 200), ("http/1.1", "/", 101), ("http/2", "/", None)]
    assert outputs >= 2  # /first, then the 101 with the handoff


def test_a_tick_times_out_an_attached_request(monkeypatch: pytest.MonkeyPatch) -> None:
    t = Traffic()
    s = Stream(t)
    s.send(0, request("/slow"))
    s.send(0, b"", gap_us=1_000)  # (a bare ACK: more batches before the quiet)
    # an hour of quiet on this connection while another one goes on: the sweeps' ticks
    other = Traffic(frame=t.frame, ts_us=t.ts_us)
    for _ in range(4):
        other.ts_us += 20_000_000
        other.packet("10.1.0.3", 41000, "10.1.0.4", 80, b"", flags=SYN, gap_us=0)
    t.headers += other.headers
    t.frame, t.ts_us = other.frame, other.ts_us
    s.send(1, response(b"late"))
    s.close()
    records, outputs = compare(t, monkeypatch)
    assert [(r["path"], r["error"]) for r in records][0] == ("/slow", "no_response")
    assert outputs >= 1


def test_an_attached_session_closes_once_both_streams_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both FINs in and both streams delivered up to them: the session closes then (its
    state freed, its close-delimited response emitted), not when the connection's record
    is, after the linger; the records are the hooks' (which close with the record)."""
    t = Traffic()
    s = Stream(t)
    s.send(0, request("/old"))
    s.send(1, b"HTTP/1.0 200 OK\r\n\r\n" + b"until the end")  # a body the close delimits
    s.close()
    sink = RecordingSink()
    engine = Engine("local", 0, OPTIONS, sink)
    for headers, payloads in one_packet_batches(t):
        engine.feed(headers, payloads)
    assert engine.tracker.sessions == {} and engine.tracker._core.attached_count == 0
    (record,) = sink.out[TRANSACTIONS]
    assert (record["path"], record["response_body"], record["error"]) == ("/old", b"until the end", None)
    assert CONNECTIONS not in sink.out  # (the connection itself lingers)
    records, _ = compare(t, monkeypatch)
    assert records == [record]


def test_a_stream_with_a_hole_at_its_fin_keeps_its_session(monkeypatch: pytest.MonkeyPatch) -> None:
    t = Traffic()
    s = Stream(t)
    s.send(0, request("/x"))
    s.send(1, response(b"y" * 50)[:30])
    s.seq[1] += 20  # the rest of the response never captured: a hole before the FIN
    s.close()
    sink = RecordingSink()
    engine = Engine("local", 0, OPTIONS, sink)
    for headers, payloads in one_packet_batches(t):
        engine.feed(headers, payloads)
    assert len(engine.tracker.sessions) == 1  # closed with the record, as before
    engine.finish()
    (record,) = sink.out[TRANSACTIONS]
    assert record["error"] is not None
    compare(t, monkeypatch)
