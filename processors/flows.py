"""UDP flows: Zeek's conn.log notion of a connection for a transport without one.

A :class:`FlowTracker` takes the UDP packets of each batch (the engine hands them over,
both directions of a flow are on one partition) and keeps one :class:`Flow` per pair of
endpoints: packets, payload bytes and frame bytes per direction, first and last packet
time, and what the first datagrams are (:func:`udp_service`). A flow's record goes to
``wire.flows`` when it has been idle for the inactivity timeout (capture time: Zeek's
``udp_inactivity_timeout``, one minute), when memory is bounded (the flows idle longest
go first, ``ended_by`` ``evicted``), or at end of input.

Which side is the client (Zeek's originator): the sender of the first packet, unless
its port is a well-known server port and the other's is not (Zeek flips such a flow,
``likely_server_ports``: a capture that starts with a DNS answer still has the resolver
as server). tshark's ``conv,udp`` has no timeout and no direction: its conversations
are these flows when no flow was idle a minute (docs/records.md, "wire.flows").

Cost: the batch is aggregated with numpy (one group per direction of a flow), then one
Python step per group, not per packet; a DNS-heavy batch, where every query has its own
source port, costs about one step per packet (~4 µs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from wirestream._core import community_id_of

from wirestream.packet_block import PROTO_UDP, ip_text

from .tcp_connection import connection_id

#: Zeek's udp_inactivity_timeout
INACTIVITY_TIMEOUT_US = 60_000_000
#: how often (capture time) idle flows are looked for
SWEEP_INTERVAL_US = 5_000_000
#: flows held per engine; beyond, those idle longest are emitted (``evicted``)
MAX_FLOWS = 100_000
#: datagrams of a flow looked at for its service before giving up
SERVICE_ATTEMPTS = 4

#: the ports whose flows Zeek turns around when they are the first sender's (and not the
#: receiver's): the UDP services of its analysers, and those here
LIKELY_SERVER_PORTS = frozenset({53, 67, 69, 123, 137, 138, 161, 162, 443, 500, 514, 1812, 1813, 1900, 3478,
                                 4500, 5353, 5355, 5683})

_DHCP_COOKIE = b"\x63\x82\x53\x63"
_QUIC_VERSIONS = frozenset({0x00000001, 0x6B3343CF})  # v1 (RFC 9000), v2 (RFC 9369)


def udp_service(payload: bytes, sport: int, dport: int) -> str | None:
    """What a UDP datagram is, from its bytes and ports (Zeek's ``service`` names), or None.

    Each check wants the port the protocol is on as well as a header that fits, except
    DHCP (its magic cookie is enough) and QUIC (a long header with a known version)."""
    ports = (sport, dport)
    n = len(payload)
    if n >= 12 and (53 in ports or 5353 in ports or 5355 in ports):
        opcode = (payload[2] >> 3) & 0x0F
        qdcount = int.from_bytes(payload[4:6], "big")
        if opcode in (0, 1, 2, 4, 5) and (qdcount >= 1 or payload[2] & 0x80):
            return "dns"
    if n >= 240 and payload[236:240] == _DHCP_COOKIE:
        return "dhcp"
    if n >= 48 and 123 in ports and 1 <= (payload[0] >> 3) & 0x07 <= 4:
        return "ntp"
    if n >= 5 and payload[0] & 0xC0 == 0xC0:
        version = int.from_bytes(payload[1:5], "big")
        if version in _QUIC_VERSIONS or version >> 8 == 0xFF0000:  # drafts: 0xff0000XX
            return "quic"
    if n >= 3 and 514 in ports and payload[:1] == b"<" and payload[1:2].isdigit():
        return "syslog"
    if n >= 2 and (161 in ports or 162 in ports) and payload[0] == 0x30:
        return "snmp"
    if 1900 in ports and payload.startswith((b"M-SEARCH ", b"NOTIFY ", b"HTTP/1.1 ")):
        return "ssdp"
    return None


def udp_conn_state(client_sent: bool, server_sent: bool) -> str:
    """Zeek's ``conn_state`` of a UDP flow (base/protocols/conn/main.zeek): SF both sides
    sent, S0 only the originator, SHR only the responder (a flow Zeek turned around)."""
    if client_sent:
        return "SF" if server_sent else "S0"
    return "SHR" if server_sent else "OTH"


class Flow:
    """One UDP flow's counters; index 0 of each pair is the client's direction."""

    __slots__ = ("client", "server", "ip_version", "start_ts_us", "end_ts_us", "packets", "bytes", "frame_bytes",
                 "service", "service_attempts")

    def __init__(self, client: tuple[bytes, int], server: tuple[bytes, int], ip_version: int, ts_us: int) -> None:
        self.client = client
        self.server = server
        self.ip_version = ip_version
        self.start_ts_us = ts_us
        self.end_ts_us = ts_us
        self.packets = [0, 0]
        self.bytes = [0, 0]
        self.frame_bytes = [0, 0]
        self.service: str | None = None
        self.service_attempts = 0


class FlowTracker:
    """The UDP flows of one source on one partition; records go to ``emit``."""

    def __init__(self, emit: Callable[[dict[str, Any]], None], source_id: str, community_id_seed: int = 0,
                 timeout_us: int = INACTIVITY_TIMEOUT_US, max_flows: int = MAX_FLOWS) -> None:
        self.emit = emit
        self.source_id = source_id
        self.community_id_seed = community_id_seed
        self.timeout_us = timeout_us
        self.max_flows = max_flows
        #: (ip version, lower endpoint, higher endpoint) -> its flow, oldest first
        self.flows: dict[tuple[int, tuple[bytes, int], tuple[bytes, int]], Flow] = {}
        self.emitted = 0
        self.evicted = 0
        self._next_sweep = 0

    def process(self, udp: np.ndarray, payloads: bytes) -> None:
        """The UDP packets of one batch (``wirestream.packet_block`` headers, capture order)."""
        if not len(udp):
            return
        ts = udp["ts_us"]
        if int(ts.max()) - int(ts.min()) <= self.timeout_us:
            self._aggregate(udp, payloads)
            return
        # A batch longer than the timeout (a sparse capture): a flow may go idle inside it,
        # which one aggregate per direction would hide. In slices no longer than the
        # timeout, an idle flow shows between slices (its next packet, or the sweep).
        start, base = 0, int(ts[0])
        for i, t in enumerate(ts.tolist()):
            if abs(t - base) > self.timeout_us:
                self._aggregate(udp[start:i], payloads)
                start, base = i, t
        self._aggregate(udp[start:], payloads)

    def _aggregate(self, udp: np.ndarray, payloads: bytes) -> None:
        ts = udp["ts_us"]
        # one group per direction of a flow; groups in the order their first packet came,
        # so that a flow is created by its earliest packet
        fields = np.empty(len(udp), dtype=[("v", "u1"), ("s", "S16"), ("d", "S16"), ("sp", "<u2"), ("dp", "<u2")])
        fields["v"], fields["s"], fields["d"] = udp["ip_version"], udp["src_ip"], udp["dst_ip"]
        fields["sp"], fields["dp"] = udp["src_port"], udp["dst_port"]
        groups, first, inverse = np.unique(fields, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        n = len(groups)
        packets = np.bincount(inverse, minlength=n).tolist()
        payload_bytes = np.bincount(inverse, weights=udp["payload_len"], minlength=n).astype(np.int64).tolist()
        frame_bytes = np.bincount(inverse, weights=udp["wire_len"], minlength=n).astype(np.int64).tolist()
        last = np.zeros(n, dtype=np.int64)
        np.maximum.at(last, inverse, ts)
        last_ts = last.tolist()
        first_ts = ts[first].tolist()
        keys = groups.tolist()
        offs, caplens = udp["payload_off"][first].tolist(), udp["payload_caplen"][first].tolist()
        flows = self.flows
        for g in np.argsort(first, kind="stable").tolist():
            version, sip, dip, sport, dport = keys[g]
            src, dst = (sip.ljust(16, b"\0"), sport), (dip.ljust(16, b"\0"), dport)
            key = (version, src, dst) if src <= dst else (version, dst, src)
            flow = flows.get(key)
            if flow is not None and first_ts[g] - flow.end_ts_us > self.timeout_us:
                self._emit(flows.pop(key), "timeout")  # idle past the timeout: a new flow
                flow = None
            if flow is None:
                if sport in LIKELY_SERVER_PORTS and dport not in LIKELY_SERVER_PORTS:
                    flow = Flow(dst, src, version, first_ts[g])  # Zeek's flip: the sender is the server
                else:
                    flow = Flow(src, dst, version, first_ts[g])
                flows[key] = flow
            side = 0 if src == flow.client else 1
            flow.packets[side] += packets[g]
            flow.bytes[side] += payload_bytes[g]
            flow.frame_bytes[side] += frame_bytes[g]
            flow.start_ts_us = min(flow.start_ts_us, first_ts[g])
            flow.end_ts_us = max(flow.end_ts_us, last_ts[g])
            if flow.service is None and flow.service_attempts < SERVICE_ATTEMPTS and caplens[g]:
                flow.service_attempts += 1
                flow.service = udp_service(payloads[offs[g]:offs[g] + caplens[g]], sport, dport)
        now = int(ts.max())
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL_US
            self.expire(now)
        if len(flows) > self.max_flows:
            self._evict()

    def expire(self, now_us: int) -> None:
        """Emit the flows idle for the timeout at capture time ``now_us``."""
        idle = [k for k, f in self.flows.items() if now_us - f.end_ts_us > self.timeout_us]
        for key in idle:
            self._emit(self.flows.pop(key), "timeout")

    def _evict(self) -> None:
        excess = len(self.flows) - self.max_flows
        oldest = sorted(self.flows, key=lambda k: self.flows[k].end_ts_us)[:excess]
        for key in oldest:
            self._emit(self.flows.pop(key), "evicted")
        self.evicted += len(oldest)

    def flush(self) -> None:
        """End of input: every flow still held, in the order they started."""
        for flow in sorted(self.flows.values(), key=lambda f: f.start_ts_us):
            self._emit(flow, "end_of_input")
        self.flows.clear()

    def _emit(self, flow: Flow, ended_by: str) -> None:
        v = flow.ip_version
        (cip_raw, cport), (sip_raw, sport) = flow.client, flow.server
        cip, sip = ip_text(cip_raw, v), ip_text(sip_raw, v)
        self.emitted += 1
        self.emit({
            "flow_id": connection_id(cip, cport, sip, sport, flow.start_ts_us),
            "source_id": self.source_id,
            "transport": "udp",
            "client_ip": cip, "client_port": cport, "server_ip": sip, "server_port": sport,
            "ip_version": v,
            "start_ts_us": flow.start_ts_us, "end_ts_us": flow.end_ts_us,
            "packets_c2s": flow.packets[0], "packets_s2c": flow.packets[1],
            "bytes_c2s": flow.bytes[0], "bytes_s2c": flow.bytes[1],
            "frame_bytes_c2s": flow.frame_bytes[0], "frame_bytes_s2c": flow.frame_bytes[1],
            "service": flow.service,
            "conn_state": udp_conn_state(flow.packets[0] > 0, flow.packets[1] > 0),
            "ended_by": ended_by,
            "community_id": community_id_of(self.community_id_seed, cip, cport, sip, sport, PROTO_UDP),
        })

    @property
    def open_flows(self) -> int:
        return len(self.flows)
