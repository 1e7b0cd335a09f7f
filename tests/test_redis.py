"""Redis (RESP2 and RESP3) on the wire: ``wire.queries`` against a real redis-server.

A redis-server of the test's own on loopback; tcpdump records its port while redis-py
(the Python client, over RESP2 and RESP3) runs a known workload: strings, a hash, a list,
a 1 MB value, an error reply, a wrong password, a pipeline of five commands, pub/sub
over RESP2 (message arrays) and RESP3 (push values), and ``redis-cli MONITOR`` watches
the server. Then ``wirestream analyze`` reads the capture. The referees:

* tshark's RESP dissector (``-d tcp.port==P,resp``): the commands each client sent (its
  top-level arrays) are that client's records, one for one, and the error replies it
  shows are the records' errors, text for text;

* the server's MONITOR output (every command it executed, with its client's address) is,
  connection by connection, the records' operations and keys, in order (MONITOR leaves
  out AUTH and HELLO, which carry passwords: those are checked against the client);
* what the client got: every error reply's text, the status of each call, the values'
  sizes in the replies, which commands the pipeline sent together, the pub/sub messages
  received per channel;
* no password or value the client sent is anywhere in the records (redaction).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port, import_or_require, needs, stop_process, tcpdump_loopback, wait_port

TSHARK = shutil.which("tshark")
REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
TCPDUMP = shutil.which("tcpdump")


def _missing() -> str | None:
    for name, path in (("redis-server", REDIS_SERVER), ("redis-cli", REDIS_CLI), ("tcpdump", TCPDUMP),
                       ("tshark", TSHARK)):
        if not path:
            return f"{name} is not installed (scripts/install --test installs it)"
    if os.geteuid() != 0:
        return "tcpdump on loopback needs root"
    return None


pytestmark = needs(_missing())

PASSWORD = "hunter2-not-the-password"
SECRET_VALUE = "v-secret-8d1f"
BIG = 300_000  # several loopback segments (64 KiB MTU); MONITOR stops at a 1 MB line
#: MONITOR does not show these (they may carry passwords; the client library's
#: CLIENT SETINFO at connection time neither): left out on both sides
UNMONITORED = {"AUTH", "HELLO", "CLIENT"}


class Run:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.pcap = d / "redis.pcap"
        self.port = 0
        self.monitor: list[tuple[int, list[str]]] = []  # (client port, command words)
        self.errors: list[str] = []  # error replies the client got, in order
        self.auth_error = ""
        self.pipeline_port = 0
        self.messages: dict[str, int] = {}
        self.ports: dict[str, int] = {}


def _monitor_lines(text: str) -> list[tuple[int, list[str]]]:
    out = []
    for line in text.splitlines():
        m = re.match(r'[0-9.]+ \[\d+ 127\.0\.0\.1:(\d+)\] (.*)$', line)
        if m:
            out.append((int(m.group(1)), re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(2))))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    redis = import_or_require("redis")
    d = tmp_path_factory.mktemp("redis")
    r = Run(d)
    r.port = free_port()
    server = subprocess.Popen([REDIS_SERVER, "--port", str(r.port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(d), "--protected-mode", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tcpdump = monitor = None
    try:
        wait_port(r.port, server, "redis-server")
        tcpdump = tcpdump_loopback(r.pcap, r.port)
        # line-buffered: redis-cli's output to a pipe is block-buffered, and Ctrl-C loses it
        monitor = subprocess.Popen(["stdbuf", "-oL", REDIS_CLI, "-p", str(r.port), "MONITOR"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert monitor.stdout.readline().strip() == "OK"

        def port_of(client: Any) -> int:
            return int(client.client_info()["addr"].rsplit(":", 1)[1])

        r2 = redis.Redis(port=r.port, protocol=2, single_connection_client=True)
        r.ports["resp2"] = port_of(r2)
        r2.set("k1", SECRET_VALUE)
        assert r2.get("k1") == SECRET_VALUE.encode()
        assert r2.get("missing") is None
        try:
            r2.incr("k1")
        except redis.ResponseError as exc:
            r.errors.append(str(exc))
        # a wrong password, on a connection of its own (redis-py drops a connection whose
        # AUTH fails)
        ra = redis.Redis(port=r.port, protocol=2, single_connection_client=True)
        r.ports["auth"] = port_of(ra)
        try:
            ra.execute_command("AUTH", PASSWORD)
        except redis.RedisError as exc:
            r.auth_error = str(exc)
        ra.close()
        assert r2.delete("k1") == 1
        assert r2.hset("h", mapping={"f1": "a", "f2": "b"}) == 2
        assert r2.hgetall("h") == {b"f1": b"a", b"f2": b"b"}
        r2.rpush("l", "a", "b", "c")
        assert r2.lrange("l", 0, -1) == [b"a", b"b", b"c"]
        pipe = r2.pipeline(transaction=False)
        for _ in range(5):
            pipe.incr("counter")
        assert pipe.execute() == [1, 2, 3, 4, 5]

        r3 = redis.Redis(port=r.port, protocol=3, single_connection_client=True)
        r.ports["resp3"] = port_of(r3)
        assert r3.hgetall("h") == {b"f1": b"a", b"f2": b"b"}
        # pub/sub: RESP3 pushes on one connection, RESP2 message arrays on another
        for protocol, channels in ((3, {"ch1": 3, "ch2": 2}), (2, {"ch3": 4})):
            client = redis.Redis(port=r.port, protocol=protocol)
            sub = client.pubsub()
            sub.subscribe(*channels)
            got = Counter()
            for _ in channels:  # the confirmations
                assert sub.get_message(timeout=5)["type"] == "subscribe"
            for channel, n in channels.items():
                for i in range(n):
                    r2.publish(channel, f"{SECRET_VALUE}-{i}")
            while sum(got.values()) < sum(channels.values()):
                m = sub.get_message(timeout=5)
                assert m is not None
                if m["type"] == "message":
                    got[m["channel"].decode()] += 1
            r.messages.update(got)
            r.ports[f"sub{protocol}"] = sub.connection._sock.getsockname()[1]
            sub.close()
            client.close()
        time.sleep(0.5)
        monitor.send_signal(signal.SIGINT)
        out, _ = monitor.communicate(timeout=10)
        r.monitor = _monitor_lines(out)
        # a value of several segments, after MONITOR (redis-cli's MONITOR stops at its line)
        r2.set("big", "x" * BIG)
        assert len(r2.get("big")) == BIG
        r2.close()
        r3.close()
        time.sleep(1.0)
        stop_process(tcpdump, signal.SIGINT)
    finally:
        if monitor is not None and monitor.poll() is None:
            monitor.kill()
            monitor.communicate(timeout=10)
        if tcpdump is not None:
            stop_process(tcpdump, signal.SIGINT)
        stop_process(server)
    return r


@pytest.fixture(scope="module")
def analyzed(run: Run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("redis-analyze")


@pytest.fixture(scope="module")
def queries(run: Run, analyzed: Path) -> list[dict[str, Any]]:
    out = analyzed
    proc = subprocess.run([sys.executable, "-m", "wirestream", "analyze", str(run.pcap), "--out", str(out), "--json",
                           "--no-progress"], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["records"].get("wire.queries", 0) > 0, summary["records"]
    return [json.loads(line) for line in (out / "wire.queries.jsonl").open()]


def _of(queries: list[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    return sorted((q for q in queries if q["client_port"] == port), key=lambda q: q["request_ts_us"])


def test_every_command_the_server_ran_is_a_record_in_order(run: Run, queries: list[dict[str, Any]]) -> None:
    from wirestream.processors.l7.redis import NO_KEY

    by_port: dict[int, list[tuple[str, str | None]]] = {}
    for port, words in run.monitor:
        op = words[0].upper()
        if op in UNMONITORED:
            continue
        # a record's target is a command's first argument, but for the keyless commands
        by_port.setdefault(port, []).append((op, words[1] if len(words) > 1 and op not in NO_KEY else None))
    assert {run.ports["resp2"], run.ports["resp3"], run.ports["sub2"], run.ports["sub3"]} <= set(by_port)
    for port, commands in by_port.items():
        records = [q for q in _of(queries, port) if q["operation"] not in UNMONITORED and q["operation"] != "message"
                   and q["target"] != "big"]  # (sent after MONITOR ended)
        assert [(q["operation"], q["target"]) for q in records] == commands, port
    for q in queries:
        assert q["protocol"] == "redis" and q["server_port"] == run.port and q["client_ip"] == "127.0.0.1"


def test_replies_are_what_the_client_got(run: Run, queries: list[dict[str, Any]]) -> None:
    records = _of(queries, run.ports["resp2"])
    # (redis-py's CLIENT SETINFO at connection time fails on a server before 7.2, silently
    # for the client: left out)
    errors = [q for q in records if q["status"] == "error" and q["operation"] != "CLIENT"]
    # (redis-py's incr is INCRBY; it drops the error code "ERR " of the text it raises)
    assert [q["operation"] for q in errors] == ["INCRBY"] and errors[0]["error"].endswith(run.errors[0]), errors
    auth = [q for q in _of(queries, run.ports["auth"]) if q["operation"] == "AUTH"][0]
    assert auth["status"] == "error" and auth["error"].endswith(run.auth_error), (auth, run.auth_error)
    ops = [(q["operation"], q["target"], q["reply_type"], q["rows"], q["status"]) for q in records
           if q["operation"] in ("SET", "GET", "DEL", "HSET", "HGETALL", "RPUSH", "LRANGE")]
    assert ops == [
        ("SET", "k1", "simple", 1, "ok"), ("GET", "k1", "bulk", 1, "ok"), ("GET", "missing", "null", 0, "ok"),
        ("DEL", "k1", "integer", 1, "ok"), ("HSET", "h", "integer", 2, "ok"), ("HGETALL", "h", "array", 4, "ok"),
        ("RPUSH", "l", "integer", 3, "ok"), ("LRANGE", "l", "array", 3, "ok"),
        ("SET", "big", "simple", 1, "ok"), ("GET", "big", "bulk", 1, "ok")]
    big_set, big_get = [q for q in records if q["target"] == "big"]
    assert big_set["request_bytes"] > BIG and big_get["response_bytes"] == len(f"${BIG}\r\n") + BIG + 2
    # RESP3: the same hash is a map of two pairs
    (hgetall3,) = [q for q in _of(queries, run.ports["resp3"]) if q["operation"] == "HGETALL"]
    assert (hgetall3["reply_type"], hgetall3["rows"]) == ("map", 2)
    (hello,) = [q for q in _of(queries, run.ports["resp3"]) if q["operation"] == "HELLO"]
    assert hello["reply_type"] == "map" and hello["statement"] == "HELLO ?"
    for q in queries:
        if q["status"] != "no_reply" and q["operation"] != "message":
            assert q["latency_us"] == q["response_ts_us"] - q["request_ts_us"] >= 0, q


def test_the_pipeline_is_marked_and_answered_in_order(run: Run, queries: list[dict[str, Any]]) -> None:
    # (redis-py runs a pipeline on a connection of its pool: one of its own here)
    incrs = sorted((q for q in queries if q["operation"] == "INCRBY" and q["target"] == "counter"),
                   key=lambda q: q["request_ts_us"])
    assert [q["rows"] for q in incrs] == [1, 2, 3, 4, 5]
    assert [q["pipelined"] for q in incrs] == [False, True, True, True, True]
    assert len({q["connection_id"] for q in incrs}) == 1
    # (redis-py sends its CLIENT SETINFO commands at connection time together)
    assert not any(q["pipelined"] for q in queries if q not in incrs and q["operation"] != "CLIENT")


def test_pub_sub_messages_are_counted_per_channel(run: Run, queries: list[dict[str, Any]]) -> None:
    for protocol, channels in ((3, ("ch1", "ch2")), (2, ("ch3",))):
        records = _of(queries, run.ports[f"sub{protocol}"])
        (subscribe,) = [q for q in records if q["operation"] == "SUBSCRIBE"]
        assert subscribe["status"] == "ok" and subscribe["target"] == channels[0]
        received = {q["target"]: q["rows"] for q in records if q["operation"] == "message"}
        assert received == {c: run.messages[c] for c in channels}, (protocol, received)
    publishes = Counter(q["target"] for q in _of(queries, run.ports["resp2"]) if q["operation"] == "PUBLISH")
    assert publishes == Counter(run.messages)


def test_no_secret_reaches_a_record(run: Run, queries: list[dict[str, Any]]) -> None:
    text = json.dumps(queries)
    assert PASSWORD not in text and SECRET_VALUE not in text
    auths = [q for q in queries if q["operation"] == "AUTH"]
    assert auths and all(q["statement"] == "AUTH ?" and q["target"] is None for q in auths)
    (set_k1,) = [q for q in queries if q["operation"] == "SET" and q["target"] == "k1"]
    assert set_k1["statement"] == "SET k1 ?"


def test_calls_are_requests_of_the_servers_service_windows(run: Run, queries: list[dict[str, Any]],
                                                           analyzed: Path) -> None:
    """The windows count a call like an HTTP request of the server's service: its number,
    latency percentiles and error replies (4xx-like; a refused password as 401)."""
    windows = [json.loads(line) for line in (analyzed / "wire.service-metrics.jsonl").open()]
    mine = [w for w in windows if w["scope"] == "service" and w["service"].endswith(f":{run.port}")]
    assert mine, {w["service"] for w in windows}
    calls = [q for q in queries if q["operation"] != "message"]
    assert sum(w["requests"] for w in mine) == len(calls)
    refused = sum(1 for q in calls if q["status"] == "error")
    assert sum(w["errors_4xx"] for w in mine) == refused > 0
    slow = sum(1 for q in calls if (q["latency_us"] or 0) >= 1_000_000)  # the default slow_request_us
    assert sum(w["slow_requests"] for w in mine) == slow
    worst = max(q["latency_us"] for q in calls if q["latency_us"] is not None)
    assert 0 < max(w["latency_p99_us"] for w in mine) <= worst * 1.05


def _tshark(run: Run, *args: str) -> list[list[str]]:
    proc = subprocess.run([TSHARK, "-n", "-r", str(run.pcap), "-d", f"tcp.port=={run.port},resp", "-T", "fields",
                           "-E", "separator=/t", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [line.split("\t") for line in proc.stdout.splitlines()]


def test_tshark_sees_the_same_commands_and_errors(run: Run, queries: list[dict[str, Any]]) -> None:
    # every command a client sent: a top-level array (commands are flat: one array length
    # per command in the frames of the client's direction; a command spread over several
    # segments shows in each of them, "reassembled in next frame" but the last)
    sent: Counter[int] = Counter()
    for port, lengths in _tshark(run, "-Y", f"tcp.dstport=={run.port} && resp.array"
                                 " && !resp.reassembled_in_next_frame",
                                 "-e", "tcp.srcport", "-e", "resp.array.length"):
        sent[int(port)] += len(lengths.split(","))
    records = Counter(q["client_port"] for q in queries if q["operation"] != "message")
    assert records == sent
    # every error reply, in order per client
    shown = [(int(port), text) for port, errors in _tshark(
        run, "-Y", f"tcp.srcport=={run.port} && resp.error", "-e", "tcp.dstport", "-e", "resp.error")
        for text in errors.split(",")]
    errors = [(q["client_port"], q["error"]) for q in sorted(queries, key=lambda q: q["response_ts_us"] or 0)
              if q["status"] == "error"]
    assert sorted(errors) == sorted(shown) and len(errors) >= 4, (errors, shown)


#: over TLS: the commands a client sends on its own TLS connection, and the replies' types
TLS_COMMANDS = (b"*3\r\n$3\r\nSET\r\n$6\r\ntlskey\r\n$10\r\n" + SECRET_VALUE.encode()[:10] + b"\r\n",
                b"*2\r\n$3\r\nGET\r\n$6\r\ntlskey\r\n", b"*2\r\n$4\r\nINCR\r\n$6\r\ntlskey\r\n")


def test_redis_over_tls_is_read_with_a_key_log(tmp_path: Path) -> None:
    """redis-server's --tls-port and a client (Python's ssl, logging its secrets as
    SSLKEYLOGFILE does) on loopback: with ``--tls-keylog`` the calls are records marked
    ``tls``, on the connection of its wire.tls record; without, none (no key)."""
    from tls_certs import self_signed

    cert, key = self_signed(tmp_path, "redis")
    port = free_port()
    server = subprocess.Popen([REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                               "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pcap, keys = tmp_path / "redis-tls.pcap", tmp_path / "keys.log"
    tcpdump = None
    try:
        wait_port(port, server, "redis-server")
        tcpdump = tcpdump_loopback(pcap, port)
        import socket
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cert)
        ctx.keylog_filename = str(keys)
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1") as s:
            replies = []
            for command in TLS_COMMANDS:
                s.sendall(command)
                replies.append(s.recv(4096))
        assert replies[0] == b"+OK\r\n" and replies[2].startswith(b"-ERR"), replies
        time.sleep(1.0)
        stop_process(tcpdump, signal.SIGINT)
    finally:
        if tcpdump is not None:
            stop_process(tcpdump, signal.SIGINT)
        stop_process(server)

    def analyze(*extra: str) -> tuple[dict[str, Any], Path]:
        out = tmp_path / f"out{len(extra)}"
        proc = subprocess.run([sys.executable, "-m", "wirestream", "analyze", str(pcap), "--out", str(out), "--json",
                               "--no-progress", *extra], capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout), out

    summary, out = analyze("--tls-keylog", str(keys))
    queries = [json.loads(line) for line in (out / "wire.queries.jsonl").open()]
    assert [(q["operation"], q["target"], q["status"], q["tls"]) for q in queries] == [
        ("SET", "tlskey", "ok", True), ("GET", "tlskey", "ok", True), ("INCR", "tlskey", "error", True)]
    (handshake,) = [json.loads(line) for line in (out / "wire.tls.jsonl").open()]
    assert {q["connection_id"] for q in queries} == {handshake["connection_id"]}
    assert SECRET_VALUE[:10] not in json.dumps(queries)
    summary, _ = analyze()
    assert summary["records"].get("wire.queries", 0) == 0  # encrypted, no key: nothing read
