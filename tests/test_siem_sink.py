"""SIEM sinks against real receivers: rsyslog (Debian) over TCP and UDP writing to a file,
and an HTTP collector that is down for its first requests (HEC)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid

import pytest
from helpers import free_port, publish, require_or_skip
from wirestream.sinks.siem import SiemSink, cef_event, ecs_event

from wirestream.topics import ALERTS

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


def _alerts(source: str, n: int = 5) -> list[dict]:
    return [{"alert_id": f"{source}-{i}", "source_id": source, "ts_us": 1_800_000_000_000_000 + i,
             "kind": "retransmission_band", "severity": "warning" if i % 2 else "critical",
             "summary": f"retransmissions at 7.{i} % | window=10s", "connection_id": None,
             "service": "shop/web", "evidence": {"rate": f"0.07{i}", "note": "a=b\\c"}} for i in range(n)]


def _run(sink: SiemSink, until, timeout: float = 60.0) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop.is_set,), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    thread.join(60)
    assert until(), (dict(sink.written), dict(sink.counters))


def _delivered_once(make_sink, arrived, published: list[str], publish_one, timeout: float = 60.0) -> None:
    """Every id in ``published`` arrives exactly once: ``arrived()`` is a list, so a record
    written twice shows. Once also across a restart: a new sink in the same group, run
    until the alert ``publish_one()`` adds after the first sink stopped has arrived, must
    not deliver again what the first one committed."""
    before = set(published)
    _run(make_sink(), lambda: set(arrived()) == before, timeout)
    after = publish_one()
    _run(make_sink(), lambda: after in arrived(), timeout)
    assert sorted(arrived()) == sorted(before | {after})


def test_formats() -> None:
    (alert,) = _alerts("fmt", 1)
    cef = cef_event(ALERTS, alert)
    # a pipe in the header is escaped, as is an "=" in an extension value
    assert cef.startswith("CEF:0|wirestream|wirestream|0.1.0|retransmission_band|"
                          "retransmissions at 7.0 % \\| window=10s|10|"), cef
    assert "externalId=fmt-0" in cef and "cs2=shop/web" in cef and "msg=retransmissions at 7.0 % | window\\=10s" in cef
    doc = ecs_event(ALERTS, alert)
    assert doc["event"]["kind"] == "alert" and doc["rule"]["name"] == "retransmission_band"
    assert doc["@timestamp"].startswith("2027-01-15T") and doc["wirestream"]["alert_id"] == "fmt-0"


@pytest.fixture
def rsyslog(tmp_path):
    if os.geteuid() != 0 or not os.path.exists(RSYSLOGD):
        require_or_skip("rsyslogd is not installed (Debian: rsyslog; scripts/install --test installs it)")
    tcp, udp = free_port(), free_port(socket.SOCK_DGRAM)
    out = tmp_path / "siem.log"
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(f"""
global(workDirectory="{tmp_path}" maxMessageSize="64k")
module(load="imtcp")
module(load="imudp")
template(name="msgonly" type="string" string="%msg%\\n")
ruleset(name="wirestream") {{ action(type="omfile" file="{out}" template="msgonly") }}
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="wirestream")
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="wirestream")
""")
    proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslogd.pid")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", tcp), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
    yield {"tcp": tcp, "udp": udp, "out": out}
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


def _lines(path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_cef_over_tcp_and_ecs_over_udp_reach_rsyslog(broker, registry, rsyslog) -> None:
    source = f"siem-{uuid.uuid4().hex[:8]}"
    alerts = _alerts(source)
    publish(broker, registry, ALERTS, alerts, key="service")
    published = [a["alert_id"] for a in alerts]  # all start with `source`

    def publish_one(tag: str) -> str:
        (alert,) = _alerts(f"{source}-{tag}", 1)  # same service: same partition, after the others
        publish(broker, registry, ALERTS, [alert], key="service")
        published.append(alert["alert_id"])
        return alert["alert_id"]

    def cef_arrived() -> list[str]:
        found = []
        for line in _lines(rsyslog["out"]):
            if line.startswith("CEF:0|wirestream|"):
                ext = line.split("|", 7)[7]
                found += [part.split("=", 1)[1] for part in ext.split(" ") if part.startswith("externalId=")]
        return [i for i in found if i.startswith(source)]

    _delivered_once(lambda: SiemSink(broker.bootstrap, registry.url, f"syslog+tcp://127.0.0.1:{rsyslog['tcp']}",
                                     "cef", group=f"cef-{source}"),
                    cef_arrived, published, lambda: publish_one("cef"))

    def ecs_arrived() -> list[str]:
        found = []
        for line in _lines(rsyslog["out"]):
            if line.startswith("{"):
                doc = json.loads(line)  # every ECS event parses
                assert doc["event"]["kind"] == "alert"
                found.append(doc["wirestream"]["alert_id"])
        return [i for i in found if i.startswith(source)]

    _delivered_once(lambda: SiemSink(broker.bootstrap, registry.url, f"syslog+udp://127.0.0.1:{rsyslog['udp']}",
                                     "ecs", group=f"ecs-{source}"),
                    ecs_arrived, published, lambda: publish_one("ecs"))


class _Collector(http.server.BaseHTTPRequestHandler):
    events: list[dict] = []
    failures_left = 0
    requests = 0

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests += 1
        if type(self).failures_left > 0:  # down for a while
            type(self).failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        assert self.headers["Authorization"] == "Splunk test-token"
        decoder, text = json.JSONDecoder(), body.decode()
        while text.strip():
            obj, end = decoder.raw_decode(text.lstrip())
            type(self).events.append(obj)
            text = text.lstrip()[end:]
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"text":"Success","code":0}')

    def log_message(self, *args: object) -> None:
        pass


def test_hec_collector_down_then_up_loses_nothing(broker, registry) -> None:
    source = f"hec-{uuid.uuid4().hex[:8]}"
    alerts = _alerts(source, 8)
    publish(broker, registry, ALERTS, alerts, key="service")
    _Collector.events, _Collector.failures_left, _Collector.requests = [], 3, 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sinks: list[SiemSink] = []

    def make_sink() -> SiemSink:
        sinks.append(SiemSink(broker.bootstrap, registry.url,
                              f"http://127.0.0.1:{server.server_port}/services/collector/event", "ecs",
                              group=f"hec-{source}", token="test-token"))
        return sinks[-1]

    def arrived() -> list[str]:
        return [i for e in _Collector.events if (i := e["event"]["wirestream"]["alert_id"]).startswith(source)]

    def publish_one() -> str:
        (alert,) = _alerts(f"{source}-restart", 1)
        publish(broker, registry, ALERTS, [alert], key="service")
        return alert["alert_id"]

    try:
        _delivered_once(make_sink, arrived, [a["alert_id"] for a in alerts], publish_one, timeout=90)
    finally:
        server.shutdown()
    assert sinks[0].counters["write_retries"] >= 3  # it met the outage, and came through
    assert all(e["sourcetype"] == "wirestream:wire.alerts" for e in _Collector.events)
