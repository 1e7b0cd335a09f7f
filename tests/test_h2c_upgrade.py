"""HTTP/1.1 ``Upgrade: h2c`` followed into HTTP/2 (RFC 7540 section 3.2), on the wire.

A hypercorn server (an ASGI app of the test's own; hypercorn accepts the upgrade) on
loopback, recorded with tcpdump while curl (``--http2`` on an ``http://`` URL: the
upgrade) fetches three URLs on one connection: the first request is sent as HTTP/1.1
with ``Upgrade: h2c``, answered ``101 Switching Protocols``, and its response comes as
HTTP/2 on stream 1; the next two are HTTP/2 streams 3 and 5 (one of them a 404). Then
``wirestream analyze``. The referees: tshark (which follows the upgrade too): the 101
is an HTTP/1 record, and every HTTP/2 stream it shows HEADERS for is a record with the
same stream id, method, path and status; and curl: what it got per URL.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from typing import Any

import pytest
from helpers import (
    analyze_to,
    free_port,
    import_or_require,
    needs,
    read_jsonl,
    stop_process,
    tcpdump_loopback,
    wait_port,
)

TSHARK = shutil.which("tshark")
CURL = shutil.which("curl")

APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"{scope['method']} {scope['path']} over HTTP/{scope['http_version']}".encode()
    await send({"type": "http.response.start", "status": 404 if scope["path"] == "/missing" else 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
'''


def _missing() -> str | None:
    for name, path in (("tshark", TSHARK), ("curl", CURL), ("tcpdump", shutil.which("tcpdump"))):
        if not path:
            return f"{name} is not installed (scripts/install --test installs it)"
    if os.geteuid() != 0:
        return "tcpdump on loopback needs root"
    return None


pytestmark = needs(_missing())
URLS = ("/a", "/b?x=1", "/missing")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import_or_require("hypercorn")
    d = tmp_path_factory.mktemp("h2c")
    (d / "h2c_app.py").write_text(APP)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "h2c_app:app"],
                              cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pcap = d / "h2c.pcap"
    try:
        wait_port(port, server, "hypercorn")
        tcpdump = tcpdump_loopback(pcap, port)
        try:
            curl = subprocess.run([CURL or "curl", "-sS", "--http2", "-w", r"%{http_code} %{http_version} %{size_download}\n",
                                   *[x for u in URLS for x in ("-o", "/dev/null", f"http://127.0.0.1:{port}{u}")]],
                                  capture_output=True, text=True, timeout=60)
            assert curl.returncode == 0, curl.stderr
        finally:
            stop_process(tcpdump, signal.SIGINT)
    finally:
        stop_process(server)
    got = [line.split() for line in curl.stdout.splitlines()]
    out = d / "out"
    analyze_to(pcap, out)
    return {"pcap": pcap, "port": port, "curl": got, "records": read_jsonl(out / "wire.transactions.jsonl")}


def test_curl_upgraded(run: dict[str, Any]) -> None:
    # every answer came over HTTP/2 (the first after the 101)
    assert [(c[0], c[1]) for c in run["curl"]] == [("200", "2"), ("200", "2"), ("404", "2")]


def test_the_101_and_every_stream_are_records(run: dict[str, Any]) -> None:
    records = sorted(run["records"], key=lambda r: (r["request_ts_us"], r.get("stream_id") or 0))
    http1 = [r for r in records if r["protocol"] != "http/2"]
    assert [(r["method"], r["path"], r["status"]) for r in http1] == [("GET", "/a", 101)]
    h2 = sorted((r for r in records if r["protocol"] == "http/2"), key=lambda r: r["stream_id"])
    assert [(r["stream_id"], r["method"], r["path"], r["status"]) for r in h2] == [
        (1, "GET", "/a", 200), (3, "GET", "/b?x=1", 200), (5, "GET", "/missing", 404)]
    # the sizes curl downloaded
    assert [r["response_body_size"] for r in h2] == [int(c[2]) for c in run["curl"]]
    assert all(r["error"] is None and r["connection_id"] == http1[0]["connection_id"] for r in h2)
    # stream 1's request is the upgraded HTTP/1.1 request: it began before the 101
    assert h2[0]["request_ts_us"] == http1[0]["request_ts_us"]


def test_tshark_follows_the_upgrade_the_same_way(run: dict[str, Any]) -> None:
    out = subprocess.run([TSHARK or "tshark", "-r", str(run["pcap"]), "-d", f"tcp.port=={run['port']},http",
                          "-Y", "http2.type == 1 or http.response.code", "-T", "fields", "-E", "occurrence=a",
                          "-E", "aggregator=|", "-e", "http.response.code", "-e", "http2.streamid",
                          "-e", "http2.headers.method", "-e", "http2.headers.path", "-e", "http2.headers.status"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    seen: dict[int, dict[str, str]] = {}
    http1 = []
    for line in out.split("\n"):
        if not line:
            continue
        code, streams, methods, paths, statuses = (line.split("\t") + [""] * 5)[:5]
        if code:
            http1.append(int(code))
            continue
        # one HEADERS frame per line here (curl and hypercorn write them one per segment)
        sid = int(streams.split("|")[-1])
        s = seen.setdefault(sid, {})
        if methods:
            s["method"], s["path"] = methods, paths
        if statuses:
            s["status"] = statuses
    assert http1 == [101]
    ours = {r["stream_id"]: r for r in run["records"] if r["protocol"] == "http/2"}
    assert set(ours) == set(seen) == {1, 3, 5}
    for sid, s in seen.items():
        assert str(ours[sid]["status"]) == s["status"]
        if "method" in s:  # (stream 1's request is the HTTP/1.1 one: no HEADERS frame)
            assert (ours[sid]["method"], ours[sid]["path"]) == (s["method"], s["path"])
