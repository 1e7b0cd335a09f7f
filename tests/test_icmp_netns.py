"""ICMP errors from a real kernel: a path-MTU drop and a closed port, captured and analysed.

Three network namespaces of this test's own: a sender, a router (tests/netns.py's
``LossyLink``, without loss, is the sender and the router) and a far host behind a link
whose MTU is 1280. The sender sends, with DF set, a UDP datagram too big for that link
(IPv4: the router answers "fragmentation needed" with the next-hop MTU, RFC 1191; IPv6:
"packet too big", RFC 4443), and a small one to a port nothing listens on (the far host
answers "port unreachable"). tcpdump on the sender's veth records it all; ``wirestream
analyze`` must give one ``wire.flows`` record per error with the code, the path MTU and
the quoted datagram tshark shows, joined by Community ID to the UDP flow it is about.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import needs, requires_tshark, tshark_rows
from netns import IP, LossyLink, netns_available

NETNS_UNAVAILABLE = netns_available()
FAR4, ROUTER_FAR4 = "10.202.0.2", "10.202.0.1"
SENDER6, ROUTER6, ROUTER_FAR6, FAR6 = "fd00:201::1", "fd00:201::2", "fd00:202::1", "fd00:202::2"
MTU = 1280

# In the sender: a 1400-byte UDP payload with DF to the far host (v4 and v6; probe mode:
# DF set, the kernel's path MTU ignored, so the datagram is sent as asked), then a small
# one to port 9, where nothing listens.
SENDER = textwrap.dedent(r"""
    import socket, sys, time
    far4, far6 = sys.argv[1], sys.argv[2]
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s4.setsockopt(socket.IPPROTO_IP, 10, 3)  # IP_MTU_DISCOVER = IP_PMTUDISC_PROBE: DF, no local check
    s4.bind(("0.0.0.0", 45001))
    s4.sendto(b"b" * 1400, (far4, 5001))
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s6.setsockopt(socket.IPPROTO_IPV6, 23, 3)  # IPV6_MTU_DISCOVER = IPV6_PMTUDISC_PROBE
    s6.bind(("::", 45002))
    s6.sendto(b"b" * 1400, (far6, 5002))
    time.sleep(0.3)
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("0.0.0.0", 45003))
    closed.sendto(b"anyone?", (far4, 9))
    time.sleep(0.5)
    print("done", flush=True)
""")


def _sysctl(link: LossyLink, ns: str, name: str, value: int) -> None:
    link.run(ns, ["sh", "-c", f"echo {value} > /proc/sys/{name}"])


def _three_hosts(link: LossyLink, far: str) -> None:
    """A third namespace `far` behind the receiver (now a router), over a 1280-byte MTU link."""
    r, s = link.receiver, link.sender
    tag = secrets.token_hex(2)
    a, b = f"wsx{tag}", f"wsy{tag}"
    for cmd in (["link", "add", a, "type", "veth", "peer", "name", b],
                ["link", "set", a, "netns", r], ["link", "set", b, "netns", far]):
        subprocess.run([IP, *cmd], check=True, capture_output=True, timeout=10)
    # LossyLink turns IPv6 off in its namespaces (no autoconfiguration chatter): on again
    for ns, devs in ((s, [link.sender_if]), (r, [link.receiver_if, a])):
        for conf in ("all", "default", *devs):
            _sysctl(link, ns, f"net/ipv6/conf/{conf}/disable_ipv6", 0)
    link.run(s, ["ip", "-6", "addr", "add", f"{SENDER6}/64", "dev", link.sender_if, "nodad"])
    link.run(r, ["ip", "-6", "addr", "add", f"{ROUTER6}/64", "dev", link.receiver_if, "nodad"])
    for ns, dev, addr4, addr6 in ((r, a, ROUTER_FAR4, ROUTER_FAR6), (far, b, FAR4, FAR6)):
        link.run(ns, ["ip", "link", "set", dev, "mtu", str(MTU), "up"])
        link.run(ns, ["ip", "addr", "add", f"{addr4}/30", "dev", dev])
        link.run(ns, ["ip", "-6", "addr", "add", f"{addr6}/64", "dev", dev, "nodad"])
        link.run(ns, ["ip", "link", "set", "lo", "up"])
    _sysctl(link, r, "net/ipv4/ip_forward", 1)
    _sysctl(link, r, "net/ipv6/conf/all/forwarding", 1)
    link.run(s, ["ip", "route", "add", "10.202.0.0/30", "via", link.receiver_ip])
    link.run(s, ["ip", "-6", "route", "add", "fd00:202::/64", "via", ROUTER6])
    link.run(far, ["ip", "route", "add", "default", "via", ROUTER_FAR4])
    link.run(far, ["ip", "-6", "route", "add", "default", "via", ROUTER_FAR6])


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """The sender's capture, the router's addresses, and the flows analyze wrote."""
    if NETNS_UNAVAILABLE:
        pytest.skip(f"network namespaces: {NETNS_UNAVAILABLE}")
    tmp = tmp_path_factory.mktemp("icmp")
    path = tmp / "sender.pcap"
    far = f"ws-far-{secrets.token_hex(3)}"
    subprocess.run([IP, "netns", "add", far], check=True, capture_output=True, timeout=10)
    try:
        with LossyLink(loss_percent=0, rate_mbit=None) as link:
            _three_hosts(link, far)
            addresses = {"router4": link.receiver_ip, "sender4": link.sender_ip}
            cap = link.capture(link.sender, link.sender_if, str(path))
            try:
                sent = link.run(link.sender, [sys.executable, "-c", SENDER, FAR4, FAR6], check=False)
                assert sent.returncode == 0 and sent.stdout.strip() == "done", sent.stderr
                time.sleep(0.3)
            finally:
                cap.stop()
    finally:
        subprocess.run([IP, "netns", "del", far], capture_output=True, timeout=10)
    out = tmp / "out"
    proc = subprocess.run([sys.executable, "-m", "wirestream", "analyze", str(path), "--out", str(out), "--json",
                           "--no-progress"], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    flows = [json.loads(line) for line in (out / "wire.flows.jsonl").read_text().splitlines()]
    return path, addresses, flows


def _one(flows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [f for f in flows if all(f[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, flows)
    return found[0]


@requires_tshark
@needs(NETNS_UNAVAILABLE and f"network namespaces: {NETNS_UNAVAILABLE}")
def test_the_routers_fragmentation_needed_gives_the_path_mtu(analyzed) -> None:
    path, addr, flows = analyzed
    (rows,) = tshark_rows([path], ["ip.src", "icmp.mtu", "udp.srcport", "udp.dstport"], "icmp.type == 3 && icmp.code == 4",
                          options=["-E", "occurrence=f"])
    assert rows == [[addr["router4"], str(MTU), "45001", "5001"]]  # tshark: the router, MTU 1280, our datagram
    err = _one(flows, transport="icmp", ip_version=4, icmp_type=3, icmp_code=4)
    assert (err["client_ip"], err["server_ip"], err["path_mtu"]) == (addr["router4"], addr["sender4"], MTU)
    assert (err["quoted_transport"], err["quoted_src_ip"], err["quoted_src_port"], err["quoted_dst_ip"],
            err["quoted_dst_port"]) == ("udp", addr["sender4"], 45001, FAR4, 5001)
    big = _one(flows, transport="udp", client_port=45001)
    assert (big["packets_c2s"], big["bytes_c2s"], big["conn_state"]) == (1, 1400, "S0")
    assert err["quoted_community_id"] == big["community_id"]


@requires_tshark
@needs(NETNS_UNAVAILABLE and f"network namespaces: {NETNS_UNAVAILABLE}")
def test_the_routers_packet_too_big_gives_the_ipv6_path_mtu(analyzed) -> None:
    path, _, flows = analyzed
    (rows,) = tshark_rows([path], ["ipv6.src", "icmpv6.mtu"], "icmpv6.type == 2", options=["-E", "occurrence=f"])
    assert rows == [[ROUTER6, str(MTU)]]
    err = _one(flows, transport="icmp", ip_version=6, icmp_type=2)
    assert (err["client_ip"], err["server_ip"], err["path_mtu"]) == (ROUTER6, SENDER6, MTU)
    assert (err["quoted_transport"], err["quoted_src_port"], err["quoted_dst_ip"]) == ("udp", 45002, FAR6)
    assert err["quoted_community_id"] == _one(flows, transport="udp", client_port=45002)["community_id"]


@requires_tshark
@needs(NETNS_UNAVAILABLE and f"network namespaces: {NETNS_UNAVAILABLE}")
def test_a_closed_port_is_an_unreachable_joined_to_its_flow(analyzed) -> None:
    path, addr, flows = analyzed
    (rows,) = tshark_rows([path], ["ip.src", "icmp.code"], "icmp.type == 3 && icmp.code == 3",
                          options=["-E", "occurrence=f"])
    assert rows == [[FAR4, "3"]]
    err = _one(flows, transport="icmp", icmp_type=3, icmp_code=3)
    assert (err["client_ip"], err["server_ip"], err["path_mtu"]) == (FAR4, addr["sender4"], None)
    assert (err["quoted_src_port"], err["quoted_dst_port"]) == (45003, 9)
    assert err["quoted_community_id"] == _one(flows, transport="udp", client_port=45003)["community_id"]
