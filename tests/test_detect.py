"""Protocol detection from the first bytes, and the L7 session around it."""

from __future__ import annotations

import pytest
from l7_traffic import Traffic
from local_pipeline import run_engine
from wirestream.processors.l7.detect import Verdict, detect

from wirestream.topics import CONNECTIONS, TRANSACTIONS

CLIENT_HELLO_START = bytes.fromhex("16030100c8010000c40303")


@pytest.mark.parametrize(("data", "verdict"), [
    (b"GET / HTTP/1.1\r\n", Verdict.HTTP_REQUEST),
    (b"HEAD /x HTTP/1.0", Verdict.HTTP_REQUEST),
    (b"PROPFIND /d HTTP/1.1", Verdict.HTTP_REQUEST),
    (b"HTTP/1.1 200 OK", Verdict.HTTP_RESPONSE),
    (CLIENT_HELLO_START, Verdict.TLS_CLIENT_HELLO),
    (bytes.fromhex("160303004a0200004603"), Verdict.TLS_SERVER),
    (b"", Verdict.NEED_MORE),
    (b"G", Verdict.NEED_MORE),
    (b"HEAD", Verdict.NEED_MORE),
    (b"HTT", Verdict.NEED_MORE),
    (b"\x16\x03", Verdict.NEED_MORE),
    (b"HELLO there", Verdict.UNKNOWN),
    (b"SSH-2.0-OpenSSH_9.2\r\n", Verdict.UNKNOWN),
    (b"get / HTTP/1.1", Verdict.UNKNOWN),
    (b"\x00\x1c\x12\x34", Verdict.UNKNOWN),
    (b"\x16\x05\x00", Verdict.UNKNOWN),
])
def test_detect(data: bytes, verdict: Verdict) -> None:
    assert detect(data) is verdict


def run(t: Traffic) -> tuple[dict[str, list[dict]], dict[str, int]]:
    out, engine = run_engine([t.batch()], "t", observations=False)
    return out, dict(engine.tracker.l7.stats)


def test_http_on_any_port_with_the_first_bytes_split() -> None:
    t = Traffic()
    t.tcp(("10.1.0.1", 41000), ("10.1.0.2", 9999),
          [(0, b"GE"), (0, b"T /split HTTP/1.1\r\nHost: h\r\n\r\n"),
           (1, b"HTTP/1.1 204 No Content\r\n\r\n")])
    out, stats = run(t)
    [tx] = out[TRANSACTIONS]
    assert (tx["method"], tx["path"], tx["status"], tx["server_port"]) == ("GET", "/split", 204, 9999)
    assert tx["connection_id"] == out[CONNECTIONS][0]["connection_id"]
    assert stats["l7_connections.http"] == 1


def test_capture_starting_mid_body_finds_the_next_request() -> None:
    """No SYN, the first bytes are the middle of a body: the next message is found."""
    t = Traffic()
    c, s = ("10.1.0.1", 41001), ("10.1.0.2", 80)
    t.packet(*c, *s, b"...tail of an earlier body", seq=100, ack=900)
    t.packet(*s, *c, b"", seq=900, ack=126)
    t.packet(*c, *s, b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n", seq=126, ack=900)
    t.packet(*s, *c, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", seq=900, ack=157)
    out, _ = run(t)
    assert [(x["path"], x["status"]) for x in out[TRANSACTIONS]] == [("/next", 200)]


def test_unrecognised_protocol_is_counted_and_left_alone() -> None:
    t = Traffic()
    t.tcp(("10.1.0.1", 41002), ("10.1.0.2", 22),
          [(1, b"SSH-2.0-OpenSSH_9.2\r\n"), (0, b"SSH-2.0-client\r\n")] + [(0, b"\x00" * 50)] * 10)
    out, stats = run(t)
    assert not out[TRANSACTIONS]
    assert stats["l7_connections.unrecognised"] == 1
    assert len(out[CONNECTIONS]) == 1
