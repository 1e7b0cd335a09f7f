"""The outer path of overlay flows through the engine: from the core's batch tables
(``tunnel_of``/``tunnel_paths``) to every record of the flow, across a checkpoint, with
malformed tables counted and the table bounded (processors/tunnels.py).

The captures are written here with scapy: several pod-to-pod flows over VXLAN between
node pairs, one of them seen from its server's side first."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from local_pipeline import RecordingSink
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from wirestream.processors.engine import Engine, EngineOptions
from wirestream.processors.l7.base import L7Options
from wirestream.processors.tunnels import TunnelPaths, parse_paths

from wirestream import _core
from wirestream.packet_block import PACKET_DTYPE

NODES = {"a": "192.168.60.1", "b": "192.168.60.2", "c": "192.168.60.3"}
POD = {"a": "10.244.1.5", "b": "10.244.2.7", "c": "10.244.3.9"}
REQUEST = b"GET /x HTTP/1.1\r\nHost: svc\r\n\r\n"
RESPONSE = b"HTTP/1.1 204 No Content\r\n\r\n"


def _vxlan(src: str, dst: str, vni: int, inner) -> Ether:
    """`inner` (an IP packet between pods) over VXLAN between the pods' nodes."""
    return (Ether() / IP(src=NODES[src], dst=NODES[dst]) / UDP(sport=50000, dport=4789) / VXLAN(vni=vni)
            / Ether() / inner)


def _http(client: str, server: str, port: int, vni: int) -> list[Ether]:
    c, s = IP(src=POD[client], dst=POD[server]), IP(src=POD[server], dst=POD[client])
    out = [c / TCP(sport=port, dport=80, flags="S", seq=100), s / TCP(sport=80, dport=port, flags="SA", seq=500, ack=101),
           c / TCP(sport=port, dport=80, flags="A", seq=101, ack=501),
           c / TCP(sport=port, dport=80, flags="PA", seq=101, ack=501) / REQUEST,
           s / TCP(sport=80, dport=port, flags="PA", seq=501, ack=101 + len(REQUEST)) / RESPONSE,
           c / TCP(sport=port, dport=80, flags="FA", seq=101 + len(REQUEST), ack=501 + len(RESPONSE)),
           s / TCP(sport=80, dport=port, flags="FA", seq=501 + len(RESPONSE), ack=102 + len(REQUEST)),
           c / TCP(sport=port, dport=80, flags="A", seq=102 + len(REQUEST), ack=502 + len(RESPONSE))]
    return [_vxlan(client if p[IP].src == POD[client] else server, server if p[IP].src == POD[client] else client,
                   vni, p) for p in out]


def _dns_answer_first() -> list[Ether]:
    """A DNS exchange of pod a's whose capture begins with the answer (from node c)."""
    q = IP(src=POD["a"], dst=POD["c"]) / UDP(sport=41000, dport=53) / DNS(id=3, rd=1, qd=DNSQR(qname="x.example."))
    r = (IP(src=POD["c"], dst=POD["a"]) / UDP(sport=53, dport=41000)
         / DNS(id=3, qr=1, qd=DNSQR(qname="x.example."), an=DNSRR(rrname="x.example.", rdata="10.0.0.1")))
    return [_vxlan("c", "a", 9, r), _vxlan("a", "c", 9, q)]


def _capture(path: Path) -> Path:
    frames = _http("a", "b", 40001, 7) + _http("b", "c", 40002, 8) + _dns_answer_first() + [
        Ether() / IP(src="10.0.9.1", dst="10.0.9.2") / UDP(sport=5000, dport=6000) / b"plain"]
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i, f in enumerate(frames):
        raw = bytes(f)
        out += struct.pack("<IIII", 1_700_000_000, i * 1000, len(raw), len(raw)) + raw
    path.write_bytes(bytes(out))
    return path


def _batches(path: Path, batch_packets: int) -> list[tuple]:
    """The core's batches of a capture (one partition), as the pcap producer makes them."""
    reader = _core.open_capture(str(path))
    decoder, batcher = _core.FrameDecoder(65535), _core.Batcher(1, batch_packets, 1 << 30)
    out, done = [], False
    while not done:
        ready, done = reader.pump(decoder, batcher, 1000)
        out += ready
    return out + batcher.flush()


def _engine(sink: RecordingSink) -> Engine:
    return Engine("t", 0, EngineOptions(l7=L7Options(), packet_partitions=1, observation_partitions=0), sink)


def _run(batches: list[tuple], restart_every_batch: bool = False) -> dict[str, list]:
    """Feed the batches to an engine, optionally restored from its checkpoint after each."""
    sink = RecordingSink()
    engine = _engine(sink)
    options = engine.options
    for _part, count, headers, payloads, tunnel_of, tunnel_paths in batches:
        engine.feed(np.frombuffer(headers, dtype=PACKET_DTYPE), payloads, count, tunnel_of, tunnel_paths)
        if restart_every_batch:
            engine = Engine.restore(engine.snapshot(), options, sink)
    engine.finish()
    return sink.out


def _tunnel(rec: dict) -> list[tuple]:
    return [(t["kind"], t["id"], t["outer_client_ip"], t["outer_server_ip"]) for t in rec.get("tunnel", [])]


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _capture(tmp_path_factory.mktemp("tunnel-paths") / "overlay.pcap")


def test_every_record_carries_its_flows_path(capture: Path) -> None:
    """Each flow's records name its own node pair and VNI, outer addresses on the record's
    client and server sides (also for the flow whose first packet was the server's), and
    the plain flow none."""
    out = _run(_batches(capture, 4096))
    conns = {r["client_ip"]: _tunnel(r) for r in out["wire.connections"]}
    assert conns == {POD["a"]: [("vxlan", 7, NODES["a"], NODES["b"])],
                     POD["b"]: [("vxlan", 8, NODES["b"], NODES["c"])]}
    assert {r["client_ip"]: _tunnel(r) for r in out["wire.transactions"]} == conns
    (dns,) = out["wire.dns"]
    assert (dns["client_ip"], _tunnel(dns)) == (POD["a"], [("vxlan", 9, NODES["a"], NODES["c"])])
    flows = {r["client_ip"]: _tunnel(r) for r in out["wire.flows"]}
    assert flows == {POD["a"]: [("vxlan", 9, NODES["a"], NODES["c"])], "10.0.9.1": []}


def test_paths_survive_a_checkpoint_after_every_batch(capture: Path) -> None:
    """Restored from its snapshot after every batch of 3 packets, the engine writes the
    same records, paths included, as one that ran through."""
    batches = _batches(capture, 3)
    assert sum(1 for b in batches if b[4]) >= 5  # many batches carry a tunnel table
    straight, restarted = _run(batches), _run(batches, restart_every_batch=True)
    for topic in ("wire.connections", "wire.transactions", "wire.dns", "wire.flows"):
        assert [_tunnel(r) for r in restarted[topic]] == [_tunnel(r) for r in straight[topic]], topic
        assert any(_tunnel(r) for r in straight[topic]), topic


def test_a_malformed_table_is_counted_and_its_packets_still_analysed(capture: Path) -> None:
    """A batch whose tunnel table does not hold together loses its paths, not its packets."""
    batches = _batches(capture, 4096)
    (part, count, headers, payloads, tunnel_of, tunnel_paths) = batches[0]
    assert tunnel_of and len(tunnel_of) == 4 * count
    broken = [(part, count, headers, payloads, tunnel_of, tunnel_paths[:-3]),  # cut short
              ]
    sink = RecordingSink()
    engine = _engine(sink)
    for _p, n, h, p, t_of, t_paths in broken:
        engine.feed(np.frombuffer(h, dtype=PACKET_DTYPE), p, n, t_of, t_paths)
    report = engine.finish()
    assert report.counters["malformed_tunnel_tables"] == 1
    assert len(sink.out["wire.connections"]) == 2 and not any(_tunnel(r) for r in sink.out["wire.connections"])
    # and the numbers naming a path that is not there, or a table of the wrong length
    paths = TunnelPaths()
    rows = np.frombuffer(headers, dtype=PACKET_DTYPE)
    paths.observe(rows, (99).to_bytes(4, "little") * count, tunnel_paths)
    paths.observe(rows, tunnel_of[:-4], tunnel_paths)
    assert (paths.malformed, paths.paths) == (2, {})


def test_parse_paths_reads_what_the_core_writes(capture: Path) -> None:
    """The core's table, parsed: distinct paths in first-seen order; a bad kind is refused."""
    (_, _, _, _, _, tunnel_paths) = _batches(capture, 4096)[0]
    parsed = parse_paths(tunnel_paths)
    assert [p[0][:2] for p in parsed] == [("vxlan", 7), ("vxlan", 7), ("vxlan", 8), ("vxlan", 8), ("vxlan", 9),
                                          ("vxlan", 9)]
    assert parsed[0][0][2:] == (NODES["a"], NODES["b"]) and parsed[1][0][2:] == (NODES["b"], NODES["a"])
    bad = bytearray(tunnel_paths)
    bad[1] = 77  # the first layer's kind code
    with pytest.raises(ValueError, match="unknown layer kind 77"):
        parse_paths(bytes(bad))


def test_the_table_is_bounded(capture: Path) -> None:
    """Beyond its bound the oldest flow's path goes first, counted."""
    (_, count, headers, _, tunnel_of, tunnel_paths) = _batches(capture, 4096)[0]
    paths = TunnelPaths(max_flows=2)
    paths.observe(np.frombuffer(headers, dtype=PACKET_DTYPE), tunnel_of, tunnel_paths)
    assert len(paths.paths) == 2 and paths.evicted == 1
    assert all(key[0] in (6, 17) for key in paths.paths)
