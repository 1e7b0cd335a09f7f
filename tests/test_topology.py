"""Topology: cross-zone and cross-node traffic, and a service's load across its replicas.

A capture of pod-to-pod HTTP connections, written here, goes through the engine with
Kubernetes identity (pods on three nodes in two zones; the server pods are the replicas of
one service) and then through the service windows, as a worker runs them. Checked:
``client_zone``/``server_zone``/``cross_zone`` on every record; a window per zone pair and
per node pair with its connections, bytes and handshake RTT percentiles (each pair has
its own round-trip time here, so cross-zone latency reads off the windows); per window of
the service the requests of each replica, their shares, the imbalance and the hot
replica; the ``backend_imbalance`` alert once the imbalance lasted the threshold's windows;
and the same windows after a restart of the windows' worker after every batch."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from helpers import write_ether_pcap
from local_pipeline import RecordingSink
from scapy.layers.inet import IP, TCP
from wirestream.processors.detections import Thresholds
from wirestream.processors.engine import Engine, EngineOptions
from wirestream.processors.k8s_enrichment import Enricher, IdentityIndex
from wirestream.processors.l7.base import L7Options
from wirestream.processors.service_windows import ServiceWindows, WindowOptions

from wirestream import _core
from wirestream.packet_block import PACKET_DTYPE

#: pod -> (IP, node); node -> zone
PODS = {"client-a": ("10.1.1.10", "node-1"), "client-b": ("10.1.2.10", "node-2"),
        "api-1": ("10.1.1.20", "node-1"), "api-2": ("10.1.2.20", "node-2"), "api-3": ("10.1.3.20", "node-3")}
ZONES = {"node-1": "zone-a", "node-2": "zone-b", "node-3": "zone-b"}
#: handshake round trip (SYN to SYN/ACK and on to the ACK) per (client zone, server zone)
RTT_US = {("zone-a", "zone-a"): 120, ("zone-a", "zone-b"): 1800, ("zone-b", "zone-a"): 1900,
          ("zone-b", "zone-b"): 150}
REQUEST = b"GET /items HTTP/1.1\r\nHost: api\r\n\r\n"
BODY = b"x" * 50
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n" + BODY
WINDOW_S = 1.0


def _connection(client: str, server: str, port: int, t0: float) -> tuple[list, list[float]]:
    """One HTTP exchange on its own connection, from `t0` (s), with its zone pair's RTT."""
    (cip, cnode), (sip, snode) = PODS[client], PODS[server]
    rtt = RTT_US[ZONES[cnode], ZONES[snode]] / 1e6
    c, s = IP(src=cip, dst=sip), IP(src=sip, dst=cip)
    pkts = [c / TCP(sport=port, dport=80, flags="S", seq=1), s / TCP(sport=80, dport=port, flags="SA", seq=9, ack=2),
            c / TCP(sport=port, dport=80, flags="A", seq=2, ack=10),
            c / TCP(sport=port, dport=80, flags="PA", seq=2, ack=10) / REQUEST,
            s / TCP(sport=80, dport=port, flags="PA", seq=10, ack=2 + len(REQUEST)) / RESPONSE,
            c / TCP(sport=port, dport=80, flags="FA", seq=2 + len(REQUEST), ack=10 + len(RESPONSE)),
            s / TCP(sport=80, dport=port, flags="FA", seq=10 + len(RESPONSE), ack=3 + len(REQUEST)),
            c / TCP(sport=port, dport=80, flags="A", seq=3 + len(REQUEST), ack=11 + len(RESPONSE))]
    times = [t0, t0 + rtt / 2, t0 + rtt, t0 + rtt + 1e-4, t0 + rtt + 3e-4, t0 + rtt + 4e-4, t0 + rtt + 5e-4,
             t0 + rtt + 6e-4]
    return pkts, times


#: per window, the (client, server) of its connections: api-1 takes 6 of 8 in windows 0-2
#: (imbalance 6 / (8/3) = 2.25), the load is even in window 3, hot again in 4
SCHEDULE = [
    [("client-a", "api-1")] * 3 + [("client-b", "api-1")] * 3 + [("client-a", "api-2"), ("client-b", "api-3")],
] * 3 + [
    [("client-a", "api-1"), ("client-b", "api-2"), ("client-a", "api-3")] * 2,
    [("client-a", "api-1")] * 6 + [("client-b", "api-2"), ("client-b", "api-3")],
]


def _capture(path: Path) -> Path:
    packets, times = [], []
    port = 40000
    for w, conns in enumerate(SCHEDULE):
        for i, (client, server) in enumerate(conns):
            port += 1
            p, t = _connection(client, server, port, w * WINDOW_S + 0.1 + i * 0.05)
            packets += p
            times += t
    order = sorted(range(len(packets)), key=lambda i: times[i])
    return write_ether_pcap(path, [packets[i] for i in order], [times[i] for i in order])


def _index() -> IdentityIndex:
    index = IdentityIndex()
    for pod, (ip, node) in PODS.items():
        workload = "api" if pod.startswith("api") else pod
        index.add(ip, {"kind": "pod", "uid": pod, "pod": pod, "namespace": "shop", "workload": workload,
                       "node": node, "zone": ZONES[node], "service": None,
                       "services": ["shop/api"] if workload == "api" else [], "valid_from_us": 0,
                       "deleted_ts_us": None})
    return index


def _run(path: Path, restart_windows: bool = False) -> dict[str, list]:
    """The engine (with identity) over the capture's batches, then the windows."""
    sink = RecordingSink()
    engine = Engine("topo", 0, EngineOptions(l7=L7Options(), packet_partitions=1, observation_partitions=2),
                    sink, Enricher(_index()))
    reader = _core.open_capture(str(path))
    decoder, batcher = _core.FrameDecoder(65535), _core.Batcher(1, 16, 1 << 20)
    batches, done = [], False
    while not done:
        ready, done = reader.pump(decoder, batcher, 1000)
        batches += ready
    for _part, count, headers, payloads, *_tunnels in batches + batcher.flush():
        engine.feed(np.frombuffer(headers, dtype=PACKET_DTYPE), payloads, count)
    engine.finish()
    out = sink.out
    store: dict[str, bytes] = {}
    options = WindowOptions(length_us=int(WINDOW_S * 1e6),
                            thresholds=Thresholds.parse(["backend_imbalance_min_requests=5"]))
    emit = lambda topic, key, r: out[topic].append(r)  # noqa: E731
    windows = ServiceWindows(store, emit, options)
    offsets: dict[int, int] = defaultdict(int)
    for q, b in out["observations"]:
        if restart_windows:  # a new worker on the same store after every batch
            windows = ServiceWindows(store, emit, options)
        windows.handle(b, q, offsets[q])
        offsets[q] += 1
    assert not store, "every window of a finished source is emitted"
    return out


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    return _run(_capture(tmp_path_factory.mktemp("topology") / "topology.pcap"))


def _zone(pod: str) -> str:
    return ZONES[PODS[pod][1]]


def test_records_say_their_zones_and_whether_they_cross(out) -> None:
    conns = out["wire.connections"]
    assert len(conns) == sum(map(len, SCHEDULE))
    by_ip = {ip: pod for pod, (ip, _node) in PODS.items()}
    for r in conns + out["wire.transactions"]:
        client, server = by_ip[r["client_ip"]], by_ip[r["server_ip"]]
        assert (r["client_zone"], r["server_zone"]) == (_zone(client), _zone(server))
        assert r["cross_zone"] is (_zone(client) != _zone(server))


def test_zone_and_node_pair_windows(out) -> None:
    """Per window and pair: the connections, their bytes, and the pair's round trip as
    the P50/P99 of its handshake RTTs (every connection of a pair has the same here)."""
    conns = out["wire.connections"]
    windows = [m for m in out["wire.service-metrics"] if m["scope"] != "service"]
    want: dict[tuple, list[dict]] = defaultdict(list)
    for r in conns:
        start = r["end_ts_us"] - r["end_ts_us"] % int(WINDOW_S * 1e6)
        want[start, f"zone:{r['client_zone']}>{r['server_zone']}"].append(r)
        want[start, f"node:{r['client_node']}>{r['server_node']}"].append(r)
    got = {(m["window_start_ts_us"], m["service"]): m for m in windows}
    assert set(got) == set(want)
    rtts = {}
    for key, records in want.items():
        m = got[key]
        assert m["connections"] == len(records)
        assert m["bytes"] == sum(r["bytes_c2s"] + r["bytes_s2c"] for r in records)
        rtt = {r["handshake_rtt_us"] for r in records}
        assert len(rtt) == 1 and m["handshake_rtt_p50_us"] == m["handshake_rtt_p99_us"] == rtt.pop()
        if m["scope"] == "zone_pair":
            assert m["cross_zone"] is (m["client_zone"] != m["server_zone"])
            rtts[m["client_zone"], m["server_zone"]] = m["handshake_rtt_p50_us"]
        else:
            assert m["scope"] == "node_pair" and m["service"] == f"node:{m['client_node']}>{m['server_node']}"
    # cross-zone latency reads off the windows: every cross-zone pair slower than any local one
    assert max(v for (c, s), v in rtts.items() if c == s) * 5 < min(v for (c, s), v in rtts.items() if c != s)
    assert all(m["backends"] == [] and m["backend_imbalance"] is None for m in windows)


def test_load_across_replicas(out) -> None:
    service = sorted((m for m in out["wire.service-metrics"] if m["service"] == "shop/api"),
                     key=lambda m: m["window_start_ts_us"])
    assert len(service) == len(SCHEDULE)
    for m, conns in zip(service, SCHEDULE, strict=True):
        per_pod = {pod: sum(1 for _c, s in conns if s == pod) for pod in ("api-1", "api-2", "api-3")}
        assert [(b["pod"], b["requests"], b["connections"]) for b in m["backends"]] == \
            [(pod, n, n) for pod, n in sorted(per_pod.items())]
        assert m["hot_backend_share"] == pytest.approx(max(per_pod.values()) / len(conns))
        assert sum(b["bytes"] for b in m["backends"]) == m["bytes"]
        mean = len(conns) / 3
        assert m["backend_imbalance"] == pytest.approx(max(per_pod.values()) / mean)
        assert m["hot_backend"] == max(sorted(per_pod), key=per_pod.get)
    assert [round(m["backend_imbalance"], 2) for m in service] == [2.25, 2.25, 2.25, 1.0, 2.25]


def test_sustained_imbalance_is_one_alert(out) -> None:
    """Three hot windows in a row: one alert, at the third; the balanced fourth ends the
    streak, so the hot fifth starts a new one (no alert)."""
    alerts = [a for a in out["wire.alerts"] if a["kind"] == "backend_imbalance"]
    assert len(alerts) == 1
    (a,) = alerts
    assert a["service"] == "shop/api" and a["evidence"]["hot_backend"] == "api-1"
    assert a["evidence"]["windows"] == "3" and a["evidence"]["replicas"] == "3"
    third = sorted({m["window_start_ts_us"] for m in out["wire.service-metrics"]})[2]
    assert int(a["evidence"]["window_start_ts_us"]) == third


def test_windows_survive_a_restart_after_every_batch(out, tmp_path: Path) -> None:
    again = _run(_capture(tmp_path / "topology.pcap"), restart_windows=True)
    key = lambda m: (m["window_start_ts_us"], m["service"])  # noqa: E731
    assert sorted(again["wire.service-metrics"], key=key) == sorted(out["wire.service-metrics"], key=key)
    assert again["wire.alerts"] == out["wire.alerts"]


def test_the_analyze_summary_shows_zones_nodes_and_verdicts(out) -> None:
    """The console's tables and lines of what this module's windows and records hold."""
    from rich.console import Console
    from wirestream.sinks.console import _kubernetes_lines, print_topology

    console = Console(record=True, width=200)
    print_topology(out, console)
    text = console.export_text()
    assert "Between zones and nodes" in text and "zones (cross-zone)" in text
    assert "zone-a" in text and "node-3" in text
    conns = out["wire.connections"]
    crossing = sum(1 for r in conns if r["cross_zone"])
    assert _kubernetes_lines(out) == [f"cross-zone: {crossing:,} of {len(conns):,} connections and flows whose "
                                      "zones are known"]
    verdicts = {"wire.connections": [{**conns[0], "policy_verdict": "denied"}, {**conns[1], "policy_verdict": "allowed"}],
                "wire.alerts": [{"kind": "policy_violation"}]}
    assert _kubernetes_lines(verdicts)[0] == "network policy (connections and flows): allowed 1, denied 1; violations 1"
