"""Checkpoints hold what is final of an HTTP exchange redacted, as its record will show it
(issue 17 part 5; docs/checkpoints.md, "What a checkpoint holds").

A checkpoint is the engine's whole state, so it holds payload: the HTTP analyser keeps a
request that waits for its response with its header values, target and body, for the
record it will build once the response comes. With redaction on (the default), the core
writes the parts that are final (sensitive header values, targets, the bodies of
requests that have ended) in their redacted form, with the findings of what was sent;
with ``--no-redact`` as sent. What is not final (a head or body still arriving, TCP's
out-of-order segments) stays as sent: redacting it would change what the restored parser
reads. The promise stays: a worker restored from a checkpoint emits exactly the records
of one that never stopped.

* a real exchange, recorded here: a real HTTP server and client on loopback, tcpdump
  recording; the client sends a bearer token, a cookie, a token in the query, a password
  and a (Luhn-valid) card number in a form; the server answers after a pause. Replayed
  packet by packet into an engine: the checkpoint taken while the request waits holds
  none of the secrets with redaction on, all of them with ``--no-redact``, and a restore
  from it gives the records of a run without one. A second request, cut in two by the
  client, shows what stays in clear: its body while it arrives.
* real captures with credentials (tests/data: DVWA's cleartext login with its session
  cookie, anti-CSRF token and password; others with cookies): checkpoint and restore at
  every packet boundary gives the records (and findings, observations, final report) of
  a run without restores, redaction on and off; with redaction on no checkpoint of the
  DVWA login holds its session id, token or password.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import DATA, assert_same, require_or_skip
from local_pipeline import packet_batches
from wirestream.processors.engine import Engine, EngineOptions
from wirestream.processors.findings import Finding
from wirestream.processors.l7.base import L7Options
from wirestream.processors.l7.http import HttpAnalyzer

TCPDUMP = shutil.which("tcpdump")
#: the server's pause before it answers: the request waits for its response
ANSWER_AFTER_S = 0.3
#: the client's pause in the middle of the second request's body
MID_BODY_PAUSE_S = 0.3

DVWA = DATA / "chrissanders" / "http_dvwa_clearlogin.pcapng"
#: real captures with credentials: DVWA's login (session cookie, CSRF token, password),
#: its SQL injection of passwords, a form post with cookies
CREDENTIAL_CAPTURES = [DVWA, DATA / "chrissanders" / "http_dvwa_sqlinjection_passwords.pcapng",
                       DATA / "chrissanders" / "http_post.pcapng"]


# --- the engine, with a checkpoint after any packet ---------------------------------------


class Sink:
    """An engine's sink keeping each record with its key and findings, as the topics and
    the detectors would see them, and the observation batches."""

    def __init__(self) -> None:
        self.out: dict[str, list] = defaultdict(list)

    def emit(self, topic: str, key: str | None, record: dict[str, Any]) -> None:
        findings = getattr(record, "findings", None)
        self.out[topic].append((key, dict(record), None if findings is None else int(findings)))

    def send_to_partition(self, topic: str, partition: int, record: dict[str, Any]) -> None:
        self.out["observations"].append((partition, record))


def options(redact: bool) -> EngineOptions:
    return EngineOptions(l7=L7Options(redact=redact), packet_partitions=1, observation_partitions=4)


def run(batches: list[tuple[np.ndarray, bytes]], redact: bool, cuts: set[int] = frozenset(),
        snapshots: list[bytes] | None = None) -> dict[str, list]:
    """Feed ``batches`` to an engine; after batch i in ``cuts``: checkpoint it, and go on
    with a new engine restored from the bytes (as a worker taking the partition over)."""
    opts = options(redact)
    sink = Sink()
    engine = Engine("local", 0, opts, sink)
    for i, (headers, payloads) in enumerate(batches):
        engine.feed(headers, payloads)
        if i in cuts:
            data = engine.snapshot()
            if snapshots is not None:
                snapshots.append(data)
            engine = Engine.restore(data, opts, sink)
    report = engine.finish()
    return {**sink.out, "report": [report]}


def http_analyzers(engine: Engine) -> list[HttpAnalyzer]:
    return [s.analyzer for s in engine.tracker.sessions.values() if isinstance(s.analyzer, HttpAnalyzer)]


def waiting_for_response(a: HttpAnalyzer) -> bool:
    """A complete request waits for its response: queued, and no message in progress."""
    return a.pending_count() == 1 and not any(a.in_head(d) or a.in_body(d) for d in (0, 1))


def transactions(out: dict[str, list]) -> list[dict[str, Any]]:
    return [r for _, r, _ in out["wire.transactions"]]


# --- a real exchange, recorded ------------------------------------------------------------------


def luhn_card(rng: random.Random) -> str:
    """A random 16-digit card number (a 4 first: Visa's range) that passes the Luhn check."""
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):  # the check digit will be at position 0
        total += (d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 == 0 else d
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


class Answer(BaseHTTPRequestHandler):
    """Reads the request (its body by Content-Length), pauses, answers 200."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(ANSWER_AFTER_S)
        body = b"welcome"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # not the test's output
        pass


@contextlib.contextmanager
def recording(path: Path, port: int) -> Iterator[None]:
    """tcpdump on loopback, port ``port``, into ``path``: complete once the body is done.
    (``-Z root``: tcpdump would drop to its own user, which cannot write pytest's
    temporary directory.)"""
    cap = subprocess.Popen([TCPDUMP, "-i", "lo", "-U", "-s", "0", "-Z", "root", "-w", str(path),
                            f"tcp port {port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    try:
        said = []
        while not said or "listening on" not in said[-1]:  # the capture has started
            line = cap.stderr.readline()
            assert line, f"tcpdump did not start: {''.join(said)}"
            said.append(line)
        yield
        time.sleep(0.3)  # the last packets (FINs, ACKs) reach the capture
    finally:
        cap.send_signal(signal.SIGINT)
        try:
            cap.wait(timeout=10)
        except subprocess.TimeoutExpired:
            cap.kill()
            cap.wait()


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Record a real exchange; return the capture's path and the secrets it carries."""
    if not TCPDUMP or os.geteuid() != 0:
        require_or_skip("needs tcpdump and root (a capture on loopback)")
    rng = random.Random()
    token = lambda: "".join(rng.choice("abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789")  # noqa: E731
                            for _ in range(24))
    s = {"bearer": token(), "cookie": token(), "query": token(), "password": token(), "card": luhn_card(rng),
         "bearer2": token(), "password2": token()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    path = tmp_path_factory.mktemp("exchange") / "exchange.pcap"
    try:
        with recording(path, port):
            client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            body = f"user=alice&password={s['password']}&card={s['card']}&remember=1".encode()
            client.request("POST", f"/login?access_token={s['query']}&next=%2F", body=body, headers={
                "Authorization": f"Bearer {s['bearer']}", "Cookie": f"session={s['cookie']}; theme=dark",
                "Content-Type": "application/x-www-form-urlencoded"})
            response = client.getresponse()
            assert (response.status, response.read()) == (200, b"welcome")
            # the second request's body comes in two parts, a pause between them
            first, rest = f"user=bob&password={s['password2']}".encode(), b"&remember=0"
            client.putrequest("POST", "/login")
            client.putheader("Authorization", f"Bearer {s['bearer2']}")
            client.putheader("Content-Type", "application/x-www-form-urlencoded")
            client.putheader("Content-Length", str(len(first) + len(rest)))
            client.endheaders()
            client.send(first)
            time.sleep(MID_BODY_PAUSE_S)
            client.send(rest)
            response = client.getresponse()
            assert (response.status, response.read()) == (200, b"welcome")
            client.close()
    finally:
        server.shutdown()
        server.server_close()
    raw = path.read_bytes()
    for name, secret in s.items():  # the secrets are on the wire (else the test proves nothing)
        assert secret.encode() in raw, name
    return {"path": str(path), "secrets": s}


def moments(batches: list, redact: bool) -> dict[str, list[tuple[int, bytes]]]:
    """The checkpoints (packet index, bytes) taken while the first request waits for its
    response, and while the second one's body is arriving (after its head, and after the
    first part of the body)."""
    engine = Engine("local", 0, options(redact), Sink())
    found: dict[str, list[tuple[int, bytes]]] = {"waiting": [], "mid_body": []}
    answered = 0
    for i, batch in enumerate(batches):
        engine.feed(*batch)
        for a in http_analyzers(engine):
            if waiting_for_response(a) and answered == 0:
                found["waiting"].append((i, engine.snapshot()))
            if a.in_body(a.client) and answered == 1:
                found["mid_body"].append((i, engine.snapshot()))
        answered = len(engine.sink.out["wire.transactions"])
    return found


def test_a_waiting_request_is_checkpointed_redacted(exchange: dict[str, Any]) -> None:
    s = exchange["secrets"]
    batches = list(packet_batches(exchange["path"], 1))
    final = [s[k].encode() for k in ("bearer", "cookie", "query", "password", "card")]
    # redaction on: none of the first request's secrets, but the request itself is there
    on = moments(batches, redact=True)
    assert on["waiting"], "no packet boundary where the request waits for its response"
    for i, data in on["waiting"]:
        held = [secret for secret in final if secret in data]
        assert not held, f"checkpoint after packet {i} holds secrets in clear: {held}"
        for shown in (b"Bearer [REDACTED]", b"session=[REDACTED]; theme=[REDACTED]",
                      b"access_token=[REDACTED]&next=%2F", b"password=[REDACTED]",
                      b"card=************" + s["card"][-4:].encode()):
            assert shown in data, shown
    # --no-redact: all of them, as sent (the same search finds them where they are)
    off = moments(batches, redact=False)
    assert [i for i, _ in off["waiting"]] == [i for i, _ in on["waiting"]]
    for i, data in off["waiting"]:
        assert all(secret in data for secret in final), f"checkpoint after packet {i}"
    # what stays in clear: a body still arriving (its head's credentials are redacted)
    assert on["mid_body"], "no packet boundary inside the second request's body"
    for i, data in on["mid_body"]:
        assert s["bearer2"].encode() not in data, i
        assert b"Bearer [REDACTED]" in data, i
    i, data = on["mid_body"][-1]  # the body's first part is in, the rest comes after a pause
    assert s["password2"].encode() in data, i


def test_a_restore_while_the_request_waits_gives_the_same_records(exchange: dict[str, Any]) -> None:
    s = exchange["secrets"]
    batches = list(packet_batches(exchange["path"], 1))
    for redact in (True, False):
        waiting = [i for i, _ in moments(batches, redact)["waiting"]]
        expected = run(batches, redact)
        got = run(batches, redact, cuts=set(waiting))
        assert_same(expected, got, f"redact={redact}, restored after packets {waiting}")
        login, second = expected["wire.transactions"]
        findings = Finding(login[2])
        assert Finding.BEARER_TOKEN in findings and Finding.PASSWORD_IN_FORM in findings
        assert Finding.CARD_NUMBER in findings
        text = repr(transactions(expected))
        assert (s["bearer"] in text) is not redact and (s["password"] in text) is not redact
    # and at every packet boundary
    for redact in (True, False):
        assert_same(run(batches, redact), run(batches, redact, cuts=set(range(len(batches)))),
                    f"redact={redact}, restored after every packet")


# --- real captures, a checkpoint at every packet boundary -----------------------------------------


@pytest.mark.parametrize("redact", [True, False], ids=["redact", "no-redact"])
@pytest.mark.parametrize("capture", CREDENTIAL_CAPTURES, ids=lambda p: p.name)
def test_restore_at_every_packet_gives_the_same_records(capture: Path, redact: bool) -> None:
    batches = list(packet_batches(str(capture), 1))
    expected = run(batches, redact)
    assert expected["wire.transactions"]
    got = run(batches, redact, cuts=set(range(len(batches))))
    assert_same(expected, got, f"{capture.name}, redact={redact}")


def dvwa_secrets() -> list[bytes]:
    """The DVWA login's session id, anti-CSRF token and password, read from the capture."""
    raw = DVWA.read_bytes()
    session = set(re.findall(rb"PHPSESSID=([0-9a-z]{26})", raw))
    token = set(re.findall(rb"user_token=([0-9a-f]{32})", raw))
    assert len(session) == 1 and len(token) == 1, (session, token)
    assert b"password=password&" in raw  # DVWA's default password, in the login form
    return [session.pop(), token.pop(), b"password=password"]


def test_no_checkpoint_of_the_dvwa_login_holds_its_credentials() -> None:
    batches = list(packet_batches(str(DVWA), 1))
    secrets = dvwa_secrets()
    held: dict[bool, dict[bytes, list[int]]] = {}
    for redact in (True, False):
        snapshots: list[bytes] = []
        run(batches, redact, cuts=set(range(len(batches))), snapshots=snapshots)
        held[redact] = {s: [i for i, data in enumerate(snapshots) if s in data] for s in secrets}
    # --no-redact: each is in some checkpoint (the login POST waiting for its answer:
    # all three), so the search below can find them
    assert all(held[False].values()), held[False]
    assert held[True] == {s: [] for s in secrets}, held[True]
