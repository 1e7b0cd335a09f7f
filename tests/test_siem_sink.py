"""SIEM sinks against real receivers: rsyslog (Debian) over TCP, UDP and TLS (RFC 5425,
the gtls driver: mutual TLS, untrusted and misnamed certificates) writing to a file; an
HTTP collector that is down for its first requests (HEC), and one over HTTPS."""

from __future__ import annotations

import glob
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
from helpers import free_port, publish, require_or_skip
from tls_certs import issue, make_ca, self_signed
from wirestream.sinks.siem import DestinationRefused, SiemSink, cef_event, ecs_event

from wirestream.topics import ALERTS, CONNECTIONS, DNS, FLOWS, TRANSACTIONS

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
    # a window's alert is about no one connection: no Community ID, no network object
    assert "network" not in doc


def test_ecs_network_community_id() -> None:
    """ECS carries a record's Community ID as network.community_id (what a SIEM joins
    Zeek's and Suricata's records on), beside the transport."""
    conn = {"connection_id": "17bf937638105b6c", "community_id": "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
            "client_ip": "128.232.110.120", "client_port": 34855, "server_ip": "66.35.250.204",
            "server_port": 80, "start_ts_us": 1_800_000_000_000_000, "end_ts_us": 1_800_000_001_000_000}
    doc = ecs_event(CONNECTIONS, conn)
    assert doc["network"] == {"transport": "tcp", "community_id": "1:LQU9qZlK+B5F3KDmev6m5PMibrg="}
    dns = {**conn, "transport": "udp", "community_id": "1:d/FP5EW3wiY1vCndhwleRRKHowQ=", "query_name": "a.example",
           "query_ts_us": 1_800_000_000_000_000}
    assert ecs_event(DNS, dns)["network"] == {"transport": "udp", "community_id": "1:d/FP5EW3wiY1vCndhwleRRKHowQ="}
    # an alert about one connection carries it too
    (alert,) = _alerts("cid", 1)
    alert["community_id"] = conn["community_id"]
    assert ecs_event(ALERTS, alert)["network"] == {"community_id": conn["community_id"]}
    # a record without one (written before the field existed): none
    assert "community_id" not in ecs_event(CONNECTIONS, {**conn, "community_id": None})["network"]


def test_processes_and_syscalls_of_a_live_connection_in_ecs_and_cef() -> None:
    """Live eBPF capture's processes and data-syscall counts: ECS process.* (the client's),
    network.syscalls calls per side; CEF spid/sproc/dpid/dproc and cn2/cn3."""
    conn = {"connection_id": "c1", "client_ip": "10.0.0.1", "client_port": 40000, "server_ip": "10.0.0.2",
            "server_port": 80, "start_ts_us": 1_800_000_000_000_000, "client_pid": 41, "client_process": "curl",
            "server_pid": 42, "server_process": "nginx",
            "client_syscalls": {"send_calls": 1, "recv_calls": 3, "send_bytes": 80, "recv_bytes": 900,
                                "send_time_us": 5, "recv_time_us": 700},
            "server_syscalls": None}
    doc = ecs_event(CONNECTIONS, conn)
    assert doc["process"] == {"pid": 41, "name": "curl"}
    assert doc["network"]["syscalls"] == {"client": 4}
    assert doc["wirestream"]["client_syscalls"]["recv_bytes"] == 900
    cef = cef_event(CONNECTIONS, conn)
    assert "spid=41 sproc=curl dpid=42 dproc=nginx" in cef and "cn2Label=clientSyscalls cn2=4" in cef, cef
    assert "cn3" not in cef
    bare = {k: v for k, v in conn.items() if not k.endswith(("_pid", "_process", "_syscalls"))}
    assert "process" not in ecs_event(CONNECTIONS, bare) and "syscalls" not in ecs_event(CONNECTIONS, bare)["network"]
    assert "spid" not in cef_event(CONNECTIONS, bare)


def test_a_udp_flow_in_ecs_and_cef() -> None:
    """A wire.flows record: ECS source/destination/network packets and bytes, its service
    as network.protocol (not service.name: that is the server's workload), the duration
    in ns; CEF with proto UDP, app and the bytes each way."""
    flow = {"flow_id": "4c7fc472616dfe73", "transport": "udp", "client_ip": "172.16.16.170", "client_port": 49343,
            "server_ip": "4.2.2.1", "server_port": 53, "start_ts_us": 1_490_971_524_010_094,
            "end_ts_us": 1_490_971_524_093_563, "packets_c2s": 1, "packets_s2c": 1, "bytes_c2s": 27, "bytes_s2c": 43,
            "frame_bytes_c2s": 69, "frame_bytes_s2c": 85, "service": "dns", "conn_state": "SF",
            "community_id": "1:1j4Q6a7lDMIdR+BI+xU1GenbDEY=", "server_service": None}
    doc = ecs_event(FLOWS, flow)
    assert doc["source"] == {"ip": "172.16.16.170", "port": 49343, "packets": 1, "bytes": 69}
    assert doc["destination"] == {"ip": "4.2.2.1", "port": 53, "packets": 1, "bytes": 85}
    assert doc["network"] == {"transport": "udp", "community_id": "1:1j4Q6a7lDMIdR+BI+xU1GenbDEY=", "packets": 2,
                              "bytes": 154, "protocol": "dns"}
    assert doc["event"]["duration"] == 83_469_000 and "service" not in doc
    assert doc["@timestamp"] == "2017-03-31T14:45:24.010094Z"
    cef = cef_event(FLOWS, flow)
    assert "proto=UDP" in cef and "app=dns" in cef and "out=69" in cef and "in=85" in cef, cef
    # ECS network.transport is IANA's keyword: an ICMPv6 flow (transport "icmp", as Zeek
    # writes it) is "ipv6-icmp"; an SCTP association "sctp"; the outer path rides along
    echo6 = {**flow, "transport": "icmp", "ip_version": 6, "client_ip": "fd00::1", "server_ip": "fd00::2",
             "tunnel": [{"kind": "vxlan", "id": 42, "outer_client_ip": "10.0.0.1", "outer_server_ip": "10.0.0.2"}]}
    doc6 = ecs_event(FLOWS, echo6)
    assert doc6["network"]["transport"] == "ipv6-icmp"
    assert doc6["wirestream"]["tunnel"] == echo6["tunnel"]
    assert ecs_event(FLOWS, {**flow, "transport": "icmp", "ip_version": 4})["network"]["transport"] == "icmp"
    assert ecs_event(FLOWS, {**flow, "transport": "sctp"})["network"]["transport"] == "sctp"
    # a NetworkPolicy verdict: ECS event.type allowed/denied, the policies as the rule;
    # CEF custom strings; zones
    denied = {**flow, "policy_verdict": "denied", "policy_names": ["shop/deny-all"], "cross_zone": True}
    doc = ecs_event(FLOWS, denied)
    assert doc["event"]["type"] == ["denied"]
    assert doc["rule"] == {"name": "shop/deny-all", "ruleset": "kubernetes-networkpolicy"}
    cef = cef_event(FLOWS, denied)
    assert "cs3Label=policyVerdict cs3=denied" in cef and "cs4=shop/deny-all" in cef and "cs5=true" in cef
    assert ecs_event(FLOWS, {**flow, "policy_verdict": "no_policy"})["event"]["type"] == ["info"]
    # an HTTPS transaction read from TLS decrypted with a key log
    txn = {"connection_id": "c", "client_ip": "10.0.0.1", "client_port": 40000, "server_ip": "10.0.0.2",
           "server_port": 443, "method": "GET", "path": "/a", "host": "h", "status": 200, "tls": True,
           "request_ts_us": 1_700_000_000_000_000}
    doc = ecs_event(TRANSACTIONS, txn)
    assert doc["tls"] == {"established": True} and doc["url"]["scheme"] == "https"
    assert "tls" not in ecs_event(TRANSACTIONS, {**txn, "tls": False})


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


# --- over TLS ------------------------------------------------------------------------------


def _gtls_missing() -> str | None:
    if not glob.glob("/usr/lib/*/rsyslog/lmnsd_gtls.so") and not glob.glob("/usr/lib/rsyslog/lmnsd_gtls.so"):
        return "rsyslog's TLS driver is not installed (Debian: rsyslog-gnutls)"
    return None


@pytest.fixture
def tls_rsyslog(tmp_path):
    """rsyslog with ``imtcp`` over TLS (the gtls driver), four inputs: ``anon`` (a server
    certificate from the test CA; any client), ``mutual`` (the same, and clients must show
    a certificate from the CA), ``rogue`` (a self-signed certificate) and ``misnamed`` (from
    the CA, for another host name)."""
    if os.geteuid() != 0 or not os.path.exists(RSYSLOGD):
        require_or_skip("rsyslogd is not installed (Debian: rsyslog; scripts/install --test installs it)")
    missing = _gtls_missing()
    if missing:
        require_or_skip(missing)
    certs = tmp_path / "certs"
    ca = make_ca(certs)
    server = issue(ca, certs, "server")
    client = issue(ca, certs, "sink", ["wirestream-sink"], client=True)
    rogue = self_signed(certs, "rogue")
    misnamed = issue(ca, certs, "misnamed", ["collector.invalid"])
    ports = {name: free_port() for name in ("anon", "mutual", "rogue", "misnamed")}
    out = tmp_path / "siem.log"
    conf = tmp_path / "rsyslog.conf"

    def tls_input(name: str, cert: tuple, auth: str = "anon") -> str:
        return (f'input(type="imtcp" address="127.0.0.1" port="{ports[name]}" ruleset="wirestream" '
                f'streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="{auth}" '
                f'streamDriver.CAFile="{ca.cert}" streamDriver.certFile="{cert[0]}" streamDriver.keyFile="{cert[1]}")')

    conf.write_text(f"""
global(workDirectory="{tmp_path}" maxMessageSize="64k" DefaultNetstreamDriverCAFile="{ca.cert}")
module(load="imtcp")
template(name="msgonly" type="string" string="%msg%\\n")
ruleset(name="wirestream") {{ action(type="omfile" file="{out}" template="msgonly") }}
{tls_input("anon", server)}
{tls_input("mutual", server, "x509/certvalid")}
{tls_input("rogue", rogue)}
{tls_input("misnamed", misnamed)}
""")
    proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslogd.pid")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 10
    for port in ports.values():
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.1)
    yield {"ports": ports, "out": out, "ca": str(ca.cert), "client": tuple(map(str, client)),
           "rogue_cert": str(rogue[0])}
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


def _cef_ids(path, prefix: str) -> list[str]:
    """externalId of every CEF line in rsyslog's file that starts with ``prefix``. rsyslog
    writes the message part only: a line starts with ``CEF:0|`` only if the octet-counted
    frame was read as one message (a wrong length would cut it or glue the next one on)."""
    found = []
    for line in _lines(path):
        assert line.startswith("CEF:0|wirestream|"), f"not a whole CEF message: {line!r}"
        ext = line.split("|", 7)[7]
        found += [part.split("=", 1)[1] for part in ext.split(" ") if part.startswith("externalId=")]
    return [i for i in found if i.startswith(prefix)]


def _run_until_error(sink: SiemSink, timeout: float = 30.0) -> BaseException | None:
    """Run ``sink`` until it raises (what it raised), or None if it ran ``timeout`` s
    without raising (then it was stopped)."""
    error: list[BaseException] = []

    def target() -> None:
        try:
            sink.run(stop.is_set)
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            error.append(exc)

    stop = threading.Event()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    stop.set()
    thread.join(60)
    assert not thread.is_alive(), "the sink did not stop"
    return error[0] if error else None


def test_cef_over_tls_reaches_rsyslog_once(broker, registry, tls_rsyslog) -> None:
    source = f"tls-{uuid.uuid4().hex[:8]}"
    alerts = _alerts(source)
    publish(broker, registry, ALERTS, alerts, key="service")

    def publish_one() -> str:
        (alert,) = _alerts(f"{source}-again", 1)
        publish(broker, registry, ALERTS, [alert], key="service")
        return alert["alert_id"]

    port = tls_rsyslog["ports"]["anon"]
    hosts = iter(["127.0.0.1", "localhost"])  # the certificate names both: each is checked
    _delivered_once(lambda: SiemSink(broker.bootstrap, registry.url, f"syslog+tls://{next(hosts)}:{port}", "cef",
                                     group=f"tls-{source}", ca=tls_rsyslog["ca"]),
                    lambda: _cef_ids(tls_rsyslog["out"], source), [a["alert_id"] for a in alerts], publish_one)


def test_mutual_tls_needs_the_client_certificate(broker, registry, tls_rsyslog) -> None:
    source = f"mtls-{uuid.uuid4().hex[:8]}"
    alerts = _alerts(source, 3)
    publish(broker, registry, ALERTS, alerts, key="service")
    url = f"syslog+tls://127.0.0.1:{tls_rsyslog['ports']['mutual']}"
    group = f"mtls-{source}"
    # Without a certificate the collector hangs up after the handshake: an outage to the
    # sink (retried, logged), never taken for a delivery.
    without = SiemSink(broker.bootstrap, registry.url, url, "cef", group=group, ca=tls_rsyslog["ca"])
    assert _run_until_error(without, timeout=6) is None
    assert without.counters["write_retries"] >= 1 and not without.written
    assert _cef_ids(tls_rsyslog["out"], source) == []
    cert, key = tls_rsyslog["client"]
    with_cert = SiemSink(broker.bootstrap, registry.url, url, "cef", group=group, ca=tls_rsyslog["ca"],
                         cert=cert, key=key)
    # what the first one did not deliver, it did not commit either: all of it comes now
    _run(with_cert, lambda: sorted(_cef_ids(tls_rsyslog["out"], source)) == sorted(a["alert_id"] for a in alerts))


def test_untrusted_collector_is_refused_with_one_line_and_nothing_lost(broker, registry, tls_rsyslog) -> None:
    source = f"rogue-{uuid.uuid4().hex[:8]}"
    alerts = _alerts(source, 3)
    publish(broker, registry, ALERTS, alerts, key="service")
    group = f"rogue-{source}"
    port = tls_rsyslog["ports"]["rogue"]
    # The command: one error line, exit 1, in seconds (no retrying forever).
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "wirestream", "sink", "siem", "--url", f"syslog+tls://127.0.0.1:{port}",
                           "--format", "cef", "--topics", ALERTS, "--group", group,
                           "--bootstrap", broker.bootstrap, "--registry", registry.url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"wirestream: error: syslog+tls://127.0.0.1:{port}: TLS refused: the collector's certificate is not "
        "trusted: self-signed certificate (give its CA with --ca PEM)"], proc.stderr
    assert time.monotonic() - started < 60
    # The name is checked too: a certificate from the right CA for another host is refused.
    misnamed = SiemSink(broker.bootstrap, registry.url, f"syslog+tls://127.0.0.1:{tls_rsyslog['ports']['misnamed']}",
                        "cef", group=group, ca=tls_rsyslog["ca"])
    error = _run_until_error(misnamed)
    assert isinstance(error, DestinationRefused) and "127.0.0.1" in str(error) and "mismatch" in str(error), error
    assert _cef_ids(tls_rsyslog["out"], source) == []
    # Nothing was committed: with the collector's certificate as the CA, every alert arrives.
    trusting = SiemSink(broker.bootstrap, registry.url, f"syslog+tls://127.0.0.1:{port}", "cef", group=group,
                        ca=tls_rsyslog["rogue_cert"])
    _run(trusting, lambda: sorted(_cef_ids(tls_rsyslog["out"], source)) == sorted(a["alert_id"] for a in alerts))


class _TlsReceiver:
    """A TLS server that reads RFC 5425 frames strictly (``MSG-LEN SP SYSLOG-MSG``, nothing
    between frames): what rsyslog would also take as LF-separated lines is not accepted."""

    def __init__(self, cert: str, key: str) -> None:
        self.ctx = __import__("ssl").create_default_context(__import__("ssl").Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.messages: list[bytes] = []
        self.errors: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                buf = b""
                while True:
                    try:
                        chunk = tls.recv(65536)
                    except OSError:
                        chunk = b""
                    buf += chunk
                    while b" " in buf[:10]:
                        length, _, rest = buf.partition(b" ")
                        if not length.isdigit() or length.startswith(b"0"):
                            self.errors.append(f"bad MSG-LEN {length[:20]!r}")
                            return
                        if len(rest) < int(length):
                            break
                        self.messages.append(rest[:int(length)])
                        buf = rest[int(length):]
                    if not chunk:
                        if buf:
                            self.errors.append(f"{len(buf)} bytes outside any frame: {buf[:40]!r}")
                        break


def test_tls_framing_is_octet_counting(broker, registry, tmp_path) -> None:
    ca = make_ca(tmp_path)
    receiver = _TlsReceiver(*map(str, issue(ca, tmp_path, "collector")))
    source = f"frame-{uuid.uuid4().hex[:8]}"
    alerts = _alerts(source, 4)
    publish(broker, registry, ALERTS, alerts, key="service")
    sink = SiemSink(broker.bootstrap, registry.url, f"syslog+tls://localhost:{receiver.port}", "ecs",
                    group=f"frame-{source}", ca=str(ca.cert))

    def ours() -> list[str]:
        docs = [json.loads(m.decode().split(" - - - ", 1)[1]) for m in receiver.messages]
        return [d["wirestream"]["alert_id"] for d in docs if d["wirestream"]["alert_id"].startswith(source)]

    _run(sink, lambda: sorted(ours()) == sorted(a["alert_id"] for a in alerts))
    receiver.listener.close()
    assert not receiver.errors
    assert all(m.startswith(b"<133>1 ") and not m.endswith(b"\n") for m in receiver.messages)


# --- HEC over HTTPS ------------------------------------------------------------------------


class _SecureCollector(http.server.BaseHTTPRequestHandler):
    token = ""
    events: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers["Authorization"] != f"Splunk {type(self).token}":
            self.send_response(401)
            self.end_headers()
            return
        type(self).events += [json.loads(line) for line in body.decode().replace("}{", "}\n{").splitlines()]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_collector(tmp_path):
    import ssl

    ca = make_ca(tmp_path / "certs")
    cert, key = issue(ca, tmp_path / "certs", "collector")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SecureCollector)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    _SecureCollector.token, _SecureCollector.events = f"hec-secret-{uuid.uuid4().hex}", []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"url": f"https://127.0.0.1:{server.server_port}/services/collector/event", "ca": str(ca.cert),
           "token": _SecureCollector.token, "port": server.server_port}
    server.shutdown()


def test_hec_over_https_verifies_the_collector(broker, registry, https_collector, tmp_path, caplog) -> None:
    source = f"https-{uuid.uuid4().hex[:8]}"
    alerts = _alerts(source, 4)
    publish(broker, registry, ALERTS, alerts, key="service")
    expected = sorted(a["alert_id"] for a in alerts)
    token = https_collector["token"]

    def arrived() -> list[str]:
        return sorted(i for e in _SecureCollector.events if (i := e["event"]["wirestream"]["alert_id"]).startswith(source))

    # Without the CA (the system's CAs do not know the test's): refused at once, nothing
    # delivered, nothing committed.
    refused = SiemSink(broker.bootstrap, registry.url, https_collector["url"], "ecs", group=f"https-{source}",
                       token=token)
    error = _run_until_error(refused)
    assert isinstance(error, DestinationRefused), error
    assert "certificate is not trusted" in str(error) and "--ca" in str(error)
    assert arrived() == []
    # With it: everything, also what the refused sink had consumed.
    _run(SiemSink(broker.bootstrap, registry.url, https_collector["url"], "ecs", group=f"https-{source}",
                  token=token, ca=https_collector["ca"]), lambda: arrived() == expected)
    # --insecure: delivered without verifying, and said once.
    _SecureCollector.events = []
    with caplog.at_level("WARNING"):
        insecure = SiemSink(broker.bootstrap, registry.url, https_collector["url"], "ecs",
                            group=f"insecure-{source}", token=token, insecure=True, flush_records=1)
        _run(insecure, lambda: arrived() == expected)
    warnings = [r.getMessage() for r in caplog.records if "NOT verifying" in r.getMessage()]
    assert len(warnings) == 1 and https_collector["url"] in warnings[0], warnings
    assert all(token not in r.getMessage() for r in caplog.records)


def test_hec_token_from_a_file_never_in_output(broker, registry, https_collector, tmp_path) -> None:
    """The command with --token-file: the token reaches the collector, and appears in no
    output, not in the error of a refused collector, nor a password in the URL."""
    source = f"tokfile-{uuid.uuid4().hex[:8]}"
    publish(broker, registry, ALERTS, _alerts(source, 2), key="service")
    token = https_collector["token"]
    token_file = tmp_path / "hec-token"
    token_file.write_text(token + "\n")
    url = https_collector["url"].replace("https://", "https://user:url-password-secret@")
    base = [sys.executable, "-m", "wirestream", "sink", "siem", "--topics", ALERTS, "--format", "ecs",
            "--bootstrap", broker.bootstrap, "--registry", registry.url]
    in_url = subprocess.run([*base, "--url", url, "--group", f"tf-{source}"], capture_output=True, text=True,
                            timeout=120)
    assert in_url.returncode == 2, in_url.stderr
    (line,) = in_url.stderr.splitlines()
    assert line.startswith("wirestream sink: error: https://***@127.0.0.1:") and "--token-file" in line, line
    refused = subprocess.run([*base, "--url", https_collector["url"], "--token-file", str(token_file),
                              "--group", f"tf-{source}"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1, refused.stderr
    (line,) = refused.stderr.splitlines()
    assert line == (f"wirestream: error: HEC {https_collector['url']}: TLS refused: the collector's certificate "
                    "is not trusted: unable to get local issuer certificate (give its CA with --ca PEM)"), line
    # delivered with the CA (the run is stopped by SIGTERM once the alerts arrived)
    proc = subprocess.Popen([*base, "--url", https_collector["url"], "--token-file", str(token_file),
                             "--ca", https_collector["ca"], "--group", f"tf-{source}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len([e for e in _SecureCollector.events
               if e["event"]["wirestream"]["alert_id"].startswith(source)]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "written: {'wire.alerts': " in out
    # the same token with --token on the command line: a warning (not the token) and a usage error with both
    both = subprocess.run([*base, "--url", https_collector["url"], "--token", token, "--token-file",
                           str(token_file)], capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "give one" in both.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    no_token = subprocess.run([*base, "--url", https_collector["url"], "--token-file", str(empty)],
                              capture_output=True, text=True, timeout=60)
    assert no_token.returncode == 2 and f"token file {empty} is empty" in no_token.stderr
    for text in (in_url.stdout, in_url.stderr, refused.stdout, refused.stderr, out, err, both.stdout, both.stderr):
        assert token not in text and "url-password-secret" not in text
