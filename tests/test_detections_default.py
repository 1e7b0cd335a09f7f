"""Detectors fire at their DEFAULT thresholds on real traffic, recorded here.

tests/test_detections.py shows ``retransmission_band``, ``zero_window_storm``,
``reset_storm`` and ``nxdomain_burst`` on the bundled real captures only with their
thresholds lowered to 1: no real capture in tests/data comes near the defaults (only
DVWA's login raises an alert as it is, ``cleartext_credentials``). Over all of them, per
service and 10 s window, the most there is: 5 retransmitted data packets of 6 (a band
needs 100 data packets; the window with the most, 336, has no retransmission), 1
connection with a zero window (default 10), 1 reset or refused connection (20), 6
half-open ones (50), 1 NXDOMAIN answer to one client (20), and no 5xx, 401/403 or 429
response and no unanswered request.

So each test here makes the traffic with real kernels, in two private network
namespaces joined by a veth pair (tests/netns.py), records it with tcpdump on the
client's veth, and runs the capture through the pipeline (decoder, tracker, L7,
observer, windows: tests/local_pipeline.local_windows) with default thresholds:

* ``reset_storm``: a client retries a service that is down, 25 times; the server's
  kernel refuses each SYN with a RST;
* ``zero_window_storm``: 12 clients upload to a server that stops reading for a second;
  its kernel advertises a zero window on every connection;
* ``syn_flood``: 60 clients open connections to a server whose SYNs all get lost
  (nftables drops them): handshakes that never complete;
* ``retransmission_band``: a bulk upload over a link losing 5 % of the packets
  (nftables); the sender's kernel retransmits;
* ``nxdomain_burst``: a client's C library resolver (getaddrinfo) looks up 25 names that
  do not exist; the server answers NXDOMAIN;
* the HTTP detectors (5xx spike, auth failures, 429s, retries, timeouts, credentials and
  a card number in clear), which tests/test_detections.py shows at their defaults on
  generated frames: a web service in trouble, a real HTTP server and client.

Each also checks what the kernels or the client themselves counted. That the detectors
stay quiet below their thresholds is tests/test_detections.py's part.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from helpers import needs
from local_pipeline import local_windows
from netns import BULK_CLIENT, BULK_SERVER, LossyLink, netns_available, readline
from wirestream.processors.detections import Thresholds

NETNS_UNAVAILABLE = netns_available()
pytestmark = needs(NETNS_UNAVAILABLE and f"network namespaces: {NETNS_UNAVAILABLE}")

DEFAULT = Thresholds()
WINDOW_S = 10  # local_windows' window, the pipeline's default


def in_one_window(needed_s: float) -> None:
    """Wait for the next window if the current one has less than ``needed_s`` left:
    windows are aligned to multiples of their length in capture (here: wall-clock) time,
    and counts of traffic that straddles a boundary would be split in two windows."""
    into = time.time() % WINDOW_S
    if into > WINDOW_S - needed_s:
        time.sleep(WINDOW_S - into + 0.05)


@contextlib.contextmanager
def recorded(tmp_path: Path, name: str, **link_args: object) -> Iterator[tuple[LossyLink, str]]:
    """A namespace pair and a capture on the client's (``sender``) veth; the capture is
    complete once the body is done."""
    path = str(tmp_path / f"{name}.pcap")
    with LossyLink(**link_args) as link:
        cap = link.capture(link.sender, link.sender_if, path)
        try:
            yield link, path
        finally:
            time.sleep(0.2)  # the last packets (FINs, ACKs) reach the tap
            cap.stop()
        assert cap.dropped_by_kernel == 0, cap.stderr


def python(script: str, *args: object) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(script), *map(str, args)]


def fired(path: str, kind: str) -> list[dict]:
    return [a for a in local_windows(path)["wire.alerts"] if a["kind"] == kind]


# --- a service that is down ---------------------------------------------------------------

CONNECT_REFUSED = """
    import socket, sys
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    refused = 0
    for _ in range(n):
        try:
            socket.create_connection((host, port), timeout=5).close()
        except ConnectionRefusedError:
            refused += 1
    print(refused)
"""


def test_reset_storm_at_its_default(tmp_path: Path) -> None:
    """A client retrying a service with nothing listening: the server's kernel refuses
    every attempt (RST), ``DEFAULT.reset_connections`` + 5 times in a few milliseconds."""
    n = DEFAULT.reset_connections + 5
    in_one_window(5)
    with recorded(tmp_path, "refused", loss_percent=0, rate_mbit=None) as (link, path):
        out = link.run(link.sender, python(CONNECT_REFUSED, link.receiver_ip, 8080, n))
    assert int(out.stdout) == n  # the client's own count of ECONNREFUSED
    (alert,) = fired(path, "reset_storm")
    assert alert["service"] == f"{link.receiver_ip}:8080"
    assert alert["evidence"]["refused"] == str(n) and alert["evidence"]["threshold"] == "20"


# --- a receiver that cannot keep up -----------------------------------------------------------

SLOW_RECEIVER = """
    import socket, sys, time
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by accepted sockets
    srv.bind((host, port))
    srv.listen(n)
    print("ready", flush=True)
    conns = [srv.accept()[0] for _ in range(n)]
    time.sleep(1.0)  # busy elsewhere: nothing is read, the senders fill the windows
    total = 0
    for c in conns:
        while chunk := c.recv(65536):
            total += len(chunk)
        c.close()
    print(total, flush=True)
"""

UPLOADS = """
    import socket, sys, threading
    host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    def upload():
        with socket.create_connection((host, port), timeout=20) as c:
            c.sendall(b"u" * size)
    threads = [threading.Thread(target=upload) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("done", flush=True)
"""


def test_zero_window_storm_at_its_default(tmp_path: Path) -> None:
    """``DEFAULT.zero_window_connections`` + 2 uploads to a server that reads nothing for a
    second: each of its connections advertises a zero window (and recovers)."""
    n, size = DEFAULT.zero_window_connections + 2, 200_000
    in_one_window(7)
    with recorded(tmp_path, "zero_window", loss_percent=0, rate_mbit=None) as (link, path):
        server = link.popen(link.receiver, python(SLOW_RECEIVER, link.receiver_ip, 9000, n))
        assert readline(server, 10) == "ready"
        link.run(link.sender, python(UPLOADS, link.receiver_ip, 9000, n, size), timeout=30)
        assert readline(server, 20) == str(n * size)  # everything arrived in the end
    (alert,) = fired(path, "zero_window_storm")
    assert alert["service"] == f"{link.receiver_ip}:9000"
    assert alert["evidence"]["connections"] == str(n)
    assert int(alert["evidence"]["zero_windows"]) >= n
    assert alert["evidence"]["threshold"] == "10"


# --- a service whose SYNs are lost ------------------------------------------------------------

UNANSWERED_CONNECTS = """
    import socket, sys, time
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, port))  # EINPROGRESS: the SYN is out
        socks.append(s)
    time.sleep(1.5)  # one SYN retransmission each (after 1 s), no answer
    print(sum(1 for s in socks if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0), flush=True)
"""


BLACKHOLE = """
table inet wirestream_blackhole {{
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        iifname "{iface}" ip saddr {client} meta l4proto tcp counter drop
    }}
}}
"""


def test_syn_flood_at_its_default(tmp_path: Path) -> None:
    """``DEFAULT.half_open_connections`` + 10 connection attempts whose SYNs are all lost
    (nftables in the server's namespace drops every TCP packet from the clients)."""
    n = DEFAULT.half_open_connections + 10
    in_one_window(5)
    # (LossyLink's own rule is "random mod 100 < N": nft refuses N = 100)
    with recorded(tmp_path, "syn_flood", loss_percent=0, rate_mbit=None) as (link, path):
        rules = BLACKHOLE.format(iface=link.receiver_if, client=link.sender_ip)
        link.run(link.receiver, ["nft", "-f", "-"], input=rules)
        out = link.run(link.sender, python(UNANSWERED_CONNECTS, link.receiver_ip, 443, n))
        listed = link.run(link.receiver, ["nft", "list", "table", "inet", "wirestream_blackhole"]).stdout
    assert int(out.stdout) == n  # still connecting, none failed
    words = listed.split()
    assert int(words[words.index("packets") + 1]) >= 2 * n  # each SYN and its retransmission
    (alert,) = fired(path, "syn_flood")
    assert alert["service"] == f"{link.receiver_ip}:443"
    assert alert["evidence"]["unanswered_syns"] == str(n) and alert["evidence"]["threshold"] == "50"


# --- a lossy link -----------------------------------------------------------------------------

def test_retransmission_band_at_its_default(tmp_path: Path) -> None:
    """A 1 MB upload (some 700 data packets, far above the default
    ``retrans_min_data_packets`` of 100) over a link that loses 5 % of them."""
    with recorded(tmp_path, "lossy", loss_percent=5) as (link, path):
        server = link.popen(link.receiver, python(BULK_SERVER, link.receiver_ip, 5001, 1, 20_000))
        assert readline(server, 10) == "ready"
        before = link.snmp_retrans_segs(link.sender)
        link.run(link.sender, python(BULK_CLIENT, link.receiver_ip, 5001, 1, 1_000_000, 20_000), timeout=60)
        kernel_retransmitted = link.snmp_retrans_segs(link.sender) - before
    (alert,) = fired(path, "retransmission_band")
    ev = alert["evidence"]
    assert alert["service"] == f"{link.receiver_ip}:5001"
    assert int(ev["data_packets"]) >= DEFAULT.retrans_min_data_packets
    assert float(ev["rate"]) >= 0.01 and ev["band"] in ("degraded", "severe") and ev["previous_band"] == "unknown"
    # the retransmissions the pipeline counted are the ones the sender's kernel made
    # (plus, rarely, one of the receiver's, not in the sender's count)
    assert kernel_retransmitted > 0
    assert abs(int(ev["retransmitted"]) - kernel_retransmitted) <= 2, (ev, kernel_retransmitted)


# --- names that do not exist ------------------------------------------------------------------

NXDOMAIN_SERVER = r"""
    import socket, struct, sys
    host = sys.argv[1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 53))
    def name(text):
        return b"".join(bytes([len(p)]) + p.encode() for p in text.split(".") if p) + b"\0"
    # authority section: the root zone's SOA, as a resolver gives with an NXDOMAIN
    rdata = name("a.root-servers.net") + name("nstld.verisign-grs.com") + struct.pack("!5I", 2026120300, 1800, 900, 604800, 86400)
    soa = b"\0" + struct.pack("!HHIH", 6, 1, 86400, len(rdata)) + rdata
    print("ready", flush=True)
    while True:
        query, client = s.recvfrom(4096)
        qid, flags = struct.unpack("!HH", query[:4])
        end = 12
        while query[end]:
            end += query[end] + 1
        question = query[12:end + 5]
        # QR, the query's opcode and RD, RA, rcode 3 (NXDOMAIN)
        reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | 3
        s.sendto(struct.pack("!6H", qid, reply_flags, 1, 0, 1, 0) + question + soa, client)
"""

LOOKUPS = """
    import socket, sys
    n = int(sys.argv[1])
    missing = 0
    for i in range(n):
        try:
            socket.getaddrinfo(f"host{i}.example.invalid", 80, socket.AF_INET)
        except socket.gaierror as exc:
            missing += exc.errno == socket.EAI_NONAME
    print(missing)
"""


@contextlib.contextmanager
def resolver_conf(namespace: str, nameserver: str) -> Iterator[None]:
    """``ip netns exec`` mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf."""
    folder = Path("/etc/netns") / namespace
    folder.mkdir(parents=True)
    try:
        (folder / "resolv.conf").write_text(f"nameserver {nameserver}\noptions attempts:1 timeout:2\n")
        yield
    finally:
        shutil.rmtree(folder)
        with contextlib.suppress(OSError):
            os.rmdir("/etc/netns")  # only if no one else has a namespace configured there


def test_nxdomain_burst_at_its_default(tmp_path: Path) -> None:
    """A client's C library resolver looks up ``DEFAULT.nxdomain_per_client`` + 5 names
    that do not exist (RFC 6761 ``.invalid``); the server answers NXDOMAIN to each."""
    n = DEFAULT.nxdomain_per_client + 5
    in_one_window(5)
    with recorded(tmp_path, "nxdomain", loss_percent=0, rate_mbit=None) as (link, path):
        server = link.popen(link.receiver, python(NXDOMAIN_SERVER, link.receiver_ip))
        assert readline(server, 10) == "ready"
        with resolver_conf(link.sender, link.receiver_ip):
            out = link.run(link.sender, python(LOOKUPS, n))
    assert int(out.stdout) == n  # getaddrinfo: EAI_NONAME for each
    (alert,) = fired(path, "nxdomain_burst")
    assert alert["service"] == f"{link.receiver_ip}:53"
    assert alert["evidence"]["client"] == link.sender_ip
    assert alert["evidence"]["nxdomain"] == str(n) and alert["evidence"]["threshold"] == "20"


# --- a web service in trouble -----------------------------------------------------------------

WEB_SERVER = """
    import http.server, sys

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as browsers and API clients use it

        def answer(self, status, body=b"{}", **headers):
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/report":
                self.answer(503, b'{"error": "database unavailable"}')
            elif path == "/admin":
                self.answer(401, WWW_Authenticate='Basic realm="admin"')
            elif path == "/api/quote":
                self.answer(429, Retry_After="1")
            elif path == "/checkout":
                self.answer(502, b'{"error": "payment gateway"}')
            elif path == "/export":
                self.rfile.read(1)  # hangs until the client gives up and closes: no response
                self.close_connection = True
            else:
                self.answer(200)

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.answer(200)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler)
    print("ready", flush=True)
    server.serve_forever()
"""

WEB_CLIENT = """
    import base64, http.client, json, socket, sys, threading, time
    from collections import Counter
    host, port = sys.argv[1], int(sys.argv[2])
    seen = Counter()

    def get(conn, target, headers={}):
        conn.request("GET", target, headers=headers)
        r = conn.getresponse()
        r.read()
        seen[r.status] += 1

    def hung_export(job):
        conn = http.client.HTTPConnection(host, port, timeout=0.5)
        try:
            get(conn, f"/export?job={job}")
        except socket.timeout:
            seen["timeout"] += 1
        conn.close()

    hung = [threading.Thread(target=hung_export, args=(job,)) for job in range(6)]
    for t in hung:
        t.start()
    c = http.client.HTTPConnection(host, port, timeout=5)
    for i in range(40):
        get(c, f"/catalog?page={i}")
    for i in range(12):
        get(c, f"/report?id={i}")
    for i in range(25):  # guessing passwords
        auth = base64.b64encode(f"admin:guess{i}".encode()).decode()
        get(c, f"/admin?try={i}", {"Authorization": "Basic " + auth})
    for i in range(12):
        get(c, f"/api/quote?n={i}")
    for _ in range(12):  # a client that retries at once, every 50 ms
        get(c, "/checkout")
        time.sleep(0.05)
    body = b"card=4111111111111111&exp=12%2F29&name=A+Customer"
    c.request("POST", "/pay", body, {"Content-Type": "application/x-www-form-urlencoded"})
    r = c.getresponse()
    r.read()
    seen[r.status] += 1
    c.close()
    for t in hung:
        t.join()
    print(json.dumps(seen), flush=True)
"""


def test_web_service_detectors_at_their_defaults(tmp_path: Path) -> None:
    """A real HTTP/1.1 server (Python's http.server) and a client on keep-alive
    connections, in one window: 24 of its 108 requests fail with 503 or 502
    (``errors_5xx_spike``, default 10 and 10 %), 25 Basic-auth guesses get 401
    (``auth_failure_burst``, 20, and ``cleartext_credentials``), 12 get 429
    (``rate_limited``, 10), the same checkout is retried 12 times 50 ms apart
    (``retry_storm``, 10 within 1 s), 6 exports are never answered (``request_timeouts``,
    5) and a card number is posted in a form (``pii_in_cleartext``)."""
    in_one_window(8)
    with recorded(tmp_path, "web", loss_percent=0, rate_mbit=None) as (link, path):
        server = link.popen(link.receiver, python(WEB_SERVER, link.receiver_ip, 8080))
        assert readline(server, 10) == "ready"
        out = link.run(link.sender, python(WEB_CLIENT, link.receiver_ip, 8080), timeout=60)
    seen = json.loads(out.stdout)
    assert seen == {"200": 41, "503": 12, "401": 25, "429": 12, "502": 12, "timeout": 6}, seen
    alerts = local_windows(path)["wire.alerts"]
    by_kind = {a["kind"]: a for a in alerts}
    service, client = f"{link.receiver_ip}:8080", link.sender_ip
    assert all(a["service"] == service for a in alerts)
    ev = {kind: a["evidence"] for kind, a in by_kind.items()}
    assert sorted(ev) == sorted(["errors_5xx_spike", "auth_failure_burst", "rate_limited", "retry_storm",
                                 "request_timeouts", "cleartext_credentials", "pii_in_cleartext"]), ev
    assert ev["errors_5xx_spike"]["errors_5xx"] == "24" and ev["errors_5xx_spike"]["threshold"] == "10"
    assert ev["auth_failure_burst"]["auth_failures"] == "25" and ev["auth_failure_burst"]["client"] == client
    assert ev["rate_limited"]["status_429"] == "12"
    assert int(ev["retry_storm"]["retries"]) == 11  # 12 requests: 11 repeats
    assert ev["request_timeouts"]["no_response"] == "6"
    assert ev["cleartext_credentials"]["basic_credentials"] == "25"
    assert ev["pii_in_cleartext"]["card_numbers"] == "1"
