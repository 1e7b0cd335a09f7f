"""SCTP associations on ``wire.flows``: tshark as the referee for what a flow counts, the
``communityid`` package for its Community ID, and the association's chunks for its
``conn_state`` (docs/records.md, "SCTP flows").

One ``wirestream analyze`` run reads a capture written here by scapy: an association over
IPv4 from INIT to SHUTDOWN COMPLETE (INIT, INIT ACK, COOKIE ECHO, COOKIE ACK, DATA and
SACK both ways, a HEARTBEAT, SHUTDOWN, SHUTDOWN ACK, SHUTDOWN COMPLETE) and one over IPv6
(its first DATA bundled with the COOKIE ECHO, as implementations do), an INIT to a port
with no listener answered by ABORT, an association the server aborts, one still open at
the end of the capture, one the capture sees from its INIT ACK on (its receiver is the
client), and a router's "fragmentation needed" that quotes an SCTP DATA packet (its quoted
Community ID is the association's). The kernel's own SCTP on loopback would be a second
source of such traffic; this machine's kernel has no SCTP (EPROTONOSUPPORT), so the
capture is scapy's alone.

tshark shows each SCTP packet with its ports (``sctp.srcport``/``sctp.dstport``); per pair
of endpoints and direction, the frames, their ``frame.len`` and the bytes after the
12-byte common header (the IP payload less 12) are the flow's ``packets_*``,
``frame_bytes_*`` and ``bytes_*``.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from helpers import analyze_cases, requires_tshark, tshark_rows, write_ether_pcap
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import IPv6
from scapy.layers.sctp import (
    SCTP,
    SCTPChunkAbort,
    SCTPChunkCookieAck,
    SCTPChunkCookieEcho,
    SCTPChunkData,
    SCTPChunkHeartbeatAck,
    SCTPChunkHeartbeatReq,
    SCTPChunkInit,
    SCTPChunkInitAck,
    SCTPChunkParamHeartbeatInfo,
    SCTPChunkParamStateCookie,
    SCTPChunkSACK,
    SCTPChunkShutdown,
    SCTPChunkShutdownAck,
    SCTPChunkShutdownComplete,
)
from scapy.packet import Packet, Raw
from wirestream.sinks.siem import ecs_event
from wirestream.sinks.zeek import convert_jsonl

from wirestream.topics import FLOWS

C4, S4, R4 = "10.30.0.1", "10.30.0.2", "10.30.0.254"
C6, S6 = "fd00:30::1", "fd00:30::2"
COOKIE = b"state-cookie-0123456789abcdef"
IPPROTO_SCTP = 132
TCPDUMP = shutil.which("tcpdump")


def _association(ip_c: Packet, ip_s: Packet, cport: int, sport: int, bundle: bool) -> list[Packet]:
    """An association from INIT to SHUTDOWN COMPLETE: client tag 0x1000 + cport, server's
    0x2000 + sport (the INIT's verification tag is 0, RFC 9260 section 8.5.1)."""
    ctag, stag = 0x1000 + cport, 0x2000 + sport

    def c(tag: int, *chunks: Packet) -> Packet:
        return _chunks(ip_c / SCTP(sport=cport, dport=sport, tag=tag), chunks)

    def s(tag: int, *chunks: Packet) -> Packet:
        return _chunks(ip_s / SCTP(sport=sport, dport=cport, tag=tag), chunks)

    data_c = SCTPChunkData(tsn=1, beginning=1, ending=1, proto_id=3, data=b"client hello")
    cookie_echo = [SCTPChunkCookieEcho(cookie=COOKIE), data_c] if bundle else [SCTPChunkCookieEcho(cookie=COOKIE)]
    packets = [
        c(0, SCTPChunkInit(init_tag=ctag, a_rwnd=65536, n_out_streams=4, n_in_streams=4, init_tsn=1)),
        s(ctag, SCTPChunkInitAck(init_tag=stag, a_rwnd=65536, n_out_streams=4, n_in_streams=4, init_tsn=100,
                                 params=[SCTPChunkParamStateCookie(cookie=COOKIE)])),
        c(stag, *cookie_echo),
        s(ctag, SCTPChunkCookieAck()),
    ]
    if not bundle:
        packets.append(c(stag, data_c))
    packets += [
        s(ctag, SCTPChunkSACK(cumul_tsn_ack=1, a_rwnd=65536)),
        s(ctag, SCTPChunkData(tsn=100, beginning=1, ending=1, proto_id=3, data=b"server says hello back")),
        c(stag, SCTPChunkSACK(cumul_tsn_ack=100, a_rwnd=65536)),
        c(stag, SCTPChunkHeartbeatReq(params=[SCTPChunkParamHeartbeatInfo(data=b"beat")])),
        s(ctag, SCTPChunkHeartbeatAck(params=[SCTPChunkParamHeartbeatInfo(data=b"beat")])),
        c(stag, SCTPChunkShutdown(cumul_tsn_ack=100)),
        s(ctag, SCTPChunkShutdownAck()),
        c(stag, SCTPChunkShutdownComplete()),
    ]
    return packets


def _chunks(p: Packet, chunks: tuple[Packet, ...] | list[Packet]) -> Packet:
    for chunk in chunks:
        p = p / chunk
    return p


def _crafted() -> list[Packet]:
    c4, s4 = IP(src=C4, dst=S4), IP(src=S4, dst=C4)
    whole4 = _association(c4, s4, 40100, 2905, bundle=False)
    init = SCTPChunkInit(init_tag=0xABCD, a_rwnd=65536, n_out_streams=1, n_in_streams=1, init_tsn=7)
    return [
        *whole4,
        *_association(IPv6(src=C6, dst=S6), IPv6(src=S6, dst=C6), 40200, 3868, bundle=True),
        # no listener on 9999: the INIT is answered by ABORT (T bit set: the INIT's tag)
        c4 / SCTP(sport=40300, dport=9999, tag=0) / init,
        s4 / SCTP(sport=9999, dport=40300, tag=0xABCD) / SCTPChunkAbort(TCB=1),
        # set up, then the server aborts
        *_association(c4, s4, 40400, 36412, bundle=False)[:5],
        s4 / SCTP(sport=36412, dport=40400, tag=0x1000 + 40400) / SCTPChunkAbort(),
        # set up and still open at the end of the capture
        *_association(c4, s4, 40500, 38412, bundle=True)[:4],
        # seen from the INIT ACK on: its receiver (the client) sent the INIT
        *_association(c4, s4, 40600, 2944, bundle=False)[1:6],
        # a router on the path: the IPv4 association's DATA needs fragmenting (MTU 1280)
        IP(src=R4, dst=C4) / ICMP(type=3, code=4, nexthopmtu=1280) / Raw(bytes(whole4[4])[:28]),
    ]


#: client port -> (server, conn_state, packets client to server, server to client)
EXPECTED = {
    40100: ((S4, 2905), "SF", 7, 6),
    40200: ((S6, 3868), "SF", 6, 6),
    40300: ((S4, 9999), "REJ", 1, 1),
    40400: ((S4, 36412), "RSTR", 3, 3),
    40500: ((S4, 38412), "S1", 2, 2),
    40600: ((S4, 2944), "OTH", 2, 3),
}


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]], dict, Path]:
    """The capture, its wire.flows records, analyze's summary, and the --out directory."""
    tmp = tmp_path_factory.mktemp("sctp")
    packets = _crafted()
    path = write_ether_pcap(tmp / "sctp.pcap", packets, [i * 0.01 for i in range(len(packets))])
    summary, records = analyze_cases({"0": path}, tmp / "out", (FLOWS,), "--community-id-seed", "7")
    return path, records["0"].get(FLOWS, []), summary, tmp / "out"


def _sctp(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The SCTP flows by client port (one each)."""
    out: dict[int, dict[str, Any]] = {}
    for r in records:
        if r["transport"] == "sctp":
            assert r["client_port"] not in out, r
            out[r["client_port"]] = r
    return out


def _compare_with_tshark(path: Path, records: list[dict[str, Any]]) -> int:
    """Every SCTP pair of endpoints tshark shows in ``path`` is one of ``records``' SCTP
    flows with tshark's frames, frame bytes and bytes after the common header per
    direction, and its first and last packet times; the SCTP packets tshark shows."""
    fields = ["ip.src", "ipv6.src", "sctp.srcport", "ip.dst", "ipv6.dst", "sctp.dstport", "frame.len", "ip.len",
              "ip.hdr_len", "ipv6.plen", "frame.time_epoch"]
    # not the SCTP header quoted in the ICMP error; the outer IP header of each packet
    (rows,) = tshark_rows([path], fields, "sctp && !icmp", options=["-E", "occurrence=f"])
    theirs: dict[frozenset, dict[tuple[str, int], list[int]]] = {}
    times: dict[frozenset, list[int]] = defaultdict(list)
    for ip4s, ip6s, sport, ip4d, ip6d, dport, flen, iplen, hdrlen, plen, epoch in rows:
        src, dst = (ip4s or ip6s, int(sport)), (ip4d or ip6d, int(dport))
        pair = frozenset((src, dst))
        d = theirs.setdefault(pair, defaultdict(lambda: [0, 0, 0]))[src]
        d[0] += 1
        d[1] += int(flen)
        d[2] += (int(iplen) - int(hdrlen) if iplen else int(plen)) - 12  # after the common header
        sec, _, frac = epoch.partition(".")
        times[pair].append(int(sec) * 1_000_000 + int((frac + "000000")[:6]))
    ours: dict[frozenset, dict[tuple[str, int], list[int]]] = {}
    for r in _sctp(records).values():
        client, server = (r["client_ip"], r["client_port"]), (r["server_ip"], r["server_port"])
        pair = frozenset((client, server))
        ours[pair] = {who: [r[f"packets_{side}"], r[f"frame_bytes_{side}"], r[f"bytes_{side}"]]
                      for who, side in ((client, "c2s"), (server, "s2c")) if r[f"packets_{side}"]}
        assert (r["start_ts_us"], r["end_ts_us"]) == (min(times[pair]), max(times[pair])), pair
    assert ours == {pair: dict(dirs) for pair, dirs in theirs.items()}
    return len(rows)


@requires_tshark
def test_every_sctp_association_tshark_shows_is_a_flow_with_its_counts(analyzed) -> None:
    path, records, _, _ = analyzed
    assert _compare_with_tshark(path, records) == 42 and len(_sctp(records)) == 6


def test_direction_and_state_from_the_chunks(analyzed) -> None:
    _, records, summary, _ = analyzed
    flows = _sctp(records)
    assert set(flows) == set(EXPECTED)
    for cport, (server, state, c2s, s2c) in EXPECTED.items():
        r = flows[cport]
        got = ((r["server_ip"], r["server_port"]), r["conn_state"], r["packets_c2s"], r["packets_s2c"])
        assert got == (server, state, c2s, s2c), cport
        assert (r["service"], r["icmp_type"], r["ended_by"]) == (None, None, "end_of_input")
    assert (flows[40100]["ip_version"], flows[40200]["ip_version"]) == (4, 6)
    # the decoder drops none of them (SCTP was an unsupported transport): every frame is a packet
    (producer,) = [s for s in summary["stats"] if s["stage"].startswith("producer.") and s["final"]]
    assert (producer["dropped"], producer["emitted"]["wire.packets"]) == ({}, 43), producer


def test_community_id_is_the_reference_implementations(analyzed) -> None:
    """The ``communityid`` package (Corelight's reference in Python), seed 7 as analyze ran;
    an ICMP error quoting an SCTP packet gives that association's id as its quoted one."""
    import communityid

    _, records, _, _ = analyzed
    cid = communityid.CommunityID(seed=7)
    flows = _sctp(records)
    for r in flows.values():
        tpl = communityid.FlowTuple.make_sctp(r["client_ip"], r["server_ip"], r["client_port"], r["server_port"])
        assert r["community_id"] == cid.calc(tpl), r
    # not the UDP tuple's: the protocol number is in the hash
    r = flows[40100]
    assert r["community_id"] != cid.calc(communityid.FlowTuple.make_udp(C4, S4, 40100, 2905))
    (error,) = [r for r in records if r["transport"] == "icmp"]
    assert (error["icmp_type"], error["icmp_code"], error["path_mtu"]) == (3, 4, 1280)
    assert (error["quoted_transport"], error["quoted_src_ip"], error["quoted_src_port"], error["quoted_dst_ip"],
            error["quoted_dst_port"]) == ("sctp", C4, 40100, S4, 2905)
    assert error["quoted_community_id"] == r["community_id"]


def test_zeek_and_ecs_views(analyzed, tmp_path: Path) -> None:
    """conn.log: what Zeek (7.1 and later) writes of an IP protocol it does not analyse,
    ``unknown_transport`` with ports 0 and OTH; the SIEM sink's ECS: ``network.transport``
    ``sctp`` (the IANA keyword ECS asks for)."""
    _, records, _, out = analyzed
    convert_jsonl(out, tmp_path, json_lines=True)
    lines = [json.loads(line) for line in (tmp_path / "conn.log").read_text().splitlines()]
    flows = _sctp(records)
    conn = {line["community_id"]: line for line in lines if line["proto"] == "unknown_transport"}
    assert len(conn) == len(flows)
    uids = set()
    for r in flows.values():
        line = conn[r["community_id"]]
        assert (line["id.orig_h"], line["id.orig_p"], line["id.resp_h"], line["id.resp_p"]) == (
            r["client_ip"], 0, r["server_ip"], 0)
        assert (line["conn_state"], line["orig_pkts"], line["resp_pkts"]) == ("OTH", r["packets_c2s"],
                                                                            r["packets_s2c"])
        assert "history" not in line  # unset: Zeek keeps no history of such a flow
        uids.add(line["uid"])
    assert len(uids) == len(flows)  # the ports make the uid, so associations keep theirs apart
    doc = ecs_event(FLOWS, flows[40200])
    assert doc["network"]["transport"] == "sctp"
    assert (doc["source"]["port"], doc["destination"]["packets"]) == (40200, 6)


# --- the kernel's own SCTP on loopback --------------------------------------------------------


def _kernel_sctp() -> str | None:
    """None if this kernel speaks SCTP (and tcpdump can capture it as root), else why not."""
    if os.geteuid() != 0:
        return "capturing on lo needs root"
    if TCPDUMP is None:
        return "tcpdump is not installed"
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_SCTP).close()
    except OSError as exc:
        return f"this kernel has no SCTP sockets (the sctp module is not loaded or not built: {exc.strerror})"
    return None


def _start_tcpdump(path: Path, port: int) -> tuple[subprocess.Popen, list[str]]:
    """tcpdump on lo for the SCTP packets of ``port``; returns once it is listening."""
    proc = subprocess.Popen([TCPDUMP, "-i", "lo", "-w", str(path), "-s", "0", "-U", "--immediate-mode", "-n",
                             "-Z", "root", f"sctp and port {port}"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 10
        while not any("listening on" in line for line in lines):
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None or not sel.select(left):
                proc.kill()
                proc.wait(5)
                raise RuntimeError(f"tcpdump did not start: {''.join(lines).strip()}")
            lines.append(proc.stderr.readline())
    return proc, lines


# A plain skipif, not helpers.needs: no package brings SCTP to a kernel without it (CI's has
# none), so WIRESTREAM_REQUIRE=all must not turn its absence into a failure.
@requires_tshark
@pytest.mark.skipif(_kernel_sctp() is not None, reason=_kernel_sctp() or "")
def test_a_kernel_association_on_loopback(tmp_path: Path) -> None:
    """A real association (the kernel's SCTP, one-to-one sockets on 127.0.0.1): set up,
    a message each way, closed by the client; tcpdump captures it, ``wirestream analyze``
    gives one flow with tshark's counts, the connecting socket as client, SF."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_SCTP)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    pcap = tmp_path / "lo-sctp.pcap"
    tcpdump, stderr = _start_tcpdump(pcap, port)
    try:
        listener.listen(1)
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_SCTP)
        client.settimeout(10)
        client.connect(("127.0.0.1", port))  # returns after the COOKIE ACK
        client_port = client.getsockname()[1]
        listener.settimeout(10)
        server, _ = listener.accept()
        server.settimeout(10)
        client.sendall(b"ping" * 10)
        assert server.recv(100) == b"ping" * 10
        server.sendall(b"pong")
        assert client.recv(100) == b"pong"
        client.close()  # SHUTDOWN; the server's stack answers SHUTDOWN ACK, then SHUTDOWN COMPLETE
        assert server.recv(100) == b""  # the peer's shutdown is seen: the exchange is over
        server.close()
        time.sleep(0.3)
    finally:
        listener.close()
        if tcpdump.poll() is None:
            tcpdump.send_signal(signal.SIGINT)
        _, err = tcpdump.communicate(timeout=10)
    assert "0 packets dropped by kernel" in "".join(stderr) + err, err
    _, records = analyze_cases({"0": pcap}, tmp_path / "out", (FLOWS,))
    flows = records["0"].get(FLOWS, [])
    (flow,) = _sctp(flows).values()
    assert (flow["client_ip"], flow["client_port"], flow["server_ip"], flow["server_port"]) == (
        "127.0.0.1", client_port, "127.0.0.1", port)
    assert flow["conn_state"] == "SF" and flow["packets_c2s"] >= 5 and flow["packets_s2c"] >= 4
    assert _compare_with_tshark(pcap, flows) == flow["packets_c2s"] + flow["packets_s2c"]
