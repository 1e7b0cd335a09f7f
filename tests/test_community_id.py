"""Every flow record's ``community_id`` is the Community ID v1 of its 5-tuple, as the
reference implementation (the ``communityid`` package, Corelight's) computes it.

Real captures of every record kind (``tests/data``: HTTP, DNS over UDP and TCP, TLS), over
IPv4 and IPv6 (``http_ip4and6`` and ``crafted/e8_ipv6`` are IPv6 as recorded; the DNS and
TLS ones are rewritten here into IPv6, payloads unchanged, since no test capture has
them), with seed 0 and another seed. The spec's own vectors (ICMP, ICMPv6, SCTP) are the
core's unit tests (rust/src/community_id.rs).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import communityid
import pytest
from helpers import DATA
from local_pipeline import RecordingSink, packet_batches
from wirestream.processors.engine import Engine, EngineOptions
from wirestream.processors.l7.base import L7Options

from wirestream.config import Settings, community_id_seed
from wirestream.topics import CONNECTIONS, DNS, TLS, TRANSACTIONS

FLOW_TOPICS = (CONNECTIONS, TRANSACTIONS, DNS, TLS)

CAPTURES = ["chrissanders/http_espn.pcapng", "chrissanders/http_ip4and6.pcapng", "chrissanders/dns_tcp.pcapng",
            "chrissanders/dns_lab.pcapng", "chrissanders/dns_isp_hijack.pcapng", "crafted/e8_ipv6.pcap",
            "zeek-tls/hrr.pcap", "zeek-tls/google-duplicate.pcap", "zeek-tls/tls-early-alert.pcap"]


def engine_records(path: str | Path, seed: int, batch: int = 64) -> dict[str, list[dict]]:
    sink = RecordingSink()
    options = EngineOptions(l7=L7Options(community_id_seed=seed), packet_partitions=1,
                            community_id_seed=seed)
    engine = Engine("cid", 0, options, sink)
    for headers, payloads in packet_batches(str(path), batch):
        engine.feed(headers, payloads)
    engine.finish()
    return sink.out


def reference(record: dict, topic: str, seed: int) -> str:
    """The communityid package's id of the record's flow: TCP, except DNS over UDP."""
    udp = topic == DNS and record["transport"] == "udp"
    make = communityid.FlowTuple.make_udp if udp else communityid.FlowTuple.make_tcp
    tpl = make(record["client_ip"], record["server_ip"], record["client_port"], record["server_port"])
    return communityid.CommunityID(seed).calc(tpl)


def check(out: dict[str, list[dict]], seed: int) -> dict[str, int]:
    """Every flow record's id is the reference's; L7 records over TCP carry their
    connection's. Returns the records checked per topic and address family."""
    by_conn = {r["connection_id"]: r["community_id"] for r in out.get(CONNECTIONS, [])}
    seen: dict[str, int] = {}
    for topic in FLOW_TOPICS:
        for r in out.get(topic, []):
            assert r["community_id"] == reference(r, topic, seed), (topic, r)
            if topic != CONNECTIONS and r.get("connection_id") is not None:
                assert r["community_id"] == by_conn[r["connection_id"]], (topic, r)
            family = "v6" if ":" in r["client_ip"] else "v4"
            seen[f"{topic}/{family}"] = seen.get(f"{topic}/{family}", 0) + 1
    return seen


def ipv6_copy(src: Path, dst: Path) -> Path:
    """``src`` with every IPv4 packet's transport layer carried over IPv6 instead:
    10.1.2.3 becomes 2001:db8::a01:203, payloads and times unchanged."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.utils import PcapReader, PcapWriter

    def v6(a: str) -> str:
        return str(ipaddress.IPv6Address((0x20010DB8 << 96) | int(ipaddress.IPv4Address(a))))

    with PcapReader(str(src)) as reader, PcapWriter(str(dst), linktype=1, sync=True) as writer:
        for pkt in reader:
            if IP not in pkt:
                continue
            ip = pkt[IP]
            l4 = ip.payload.copy()
            for field in ("chksum",):
                if hasattr(l4, field):
                    setattr(l4, field, None)  # recomputed over the IPv6 pseudo-header
            # explicit MACs: scapy would otherwise resolve neighbours for every packet
            out = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IPv6(src=v6(ip.src), dst=v6(ip.dst), nh=ip.proto, hlim=ip.ttl) / l4
            out.time = pkt.time
            writer.write(out)
    return dst


@pytest.fixture(scope="module")
def v6_captures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("v6")
    return [ipv6_copy(DATA / name, tmp / (Path(name).stem + "_v6.pcap"))
            for name in ("chrissanders/dns_lab.pcapng", "chrissanders/dns_tcp.pcapng", "zeek-tls/hrr.pcap",
                         "zeek-tls/google-duplicate.pcap")]


def all_records(paths: list[Path], seed: int) -> Iterator[dict[str, list[dict]]]:
    for p in paths:
        yield engine_records(p, seed)


@pytest.mark.parametrize("seed", [0, 4711])
def test_every_flow_record_matches_the_reference(seed: int, v6_captures: list[Path]) -> None:
    seen: dict[str, int] = {}
    for out in all_records([DATA / c for c in CAPTURES] + v6_captures, seed):
        for k, n in check(out, seed).items():
            seen[k] = seen.get(k, 0) + n
    # every record kind, over both address families, was checked
    for topic in FLOW_TOPICS:
        for family in ("v4", "v6"):
            assert seen.get(f"{topic}/{family}", 0) > 0, (topic, family, seen)


def test_the_seed_changes_every_id() -> None:
    a = engine_records(DATA / "chrissanders/http_espn.pcapng", 0)
    b = engine_records(DATA / "chrissanders/http_espn.pcapng", 1)
    for topic in (CONNECTIONS, TRANSACTIONS, DNS):
        ids_a = [r["community_id"] for r in a[topic]]
        ids_b = [r["community_id"] for r in b[topic]]
        assert ids_a and all(x.startswith("1:") and len(x) == 30 for x in ids_a)
        assert all(x != y for x, y in zip(ids_a, ids_b, strict=True))


def test_the_seed_survives_a_checkpoint() -> None:
    """The seed is a setting, not state: a restored engine's connections, sessions and
    DNS queries get ids of its worker's seed, whatever the checkpoint's engine had."""
    seed = 999
    path = DATA / "chrissanders/http_espn.pcapng"
    options = EngineOptions(l7=L7Options(community_id_seed=seed), packet_partitions=1, community_id_seed=seed)
    batches = list(packet_batches(str(path), 64))
    sink = RecordingSink()
    engine = Engine("cid", 0, options, sink)
    half = len(batches) // 2
    for headers, payloads in batches[:half]:
        engine.feed(headers, payloads)
    # the checkpoint of a worker that had seed 0; the restored worker's is the setting
    engine.tracker.set_community_id_seed(0)
    state = engine.snapshot()
    assert engine.tracker.open_connections > 0  # connections and sessions cross the checkpoint
    restored = Engine.restore(state, options, sink)
    for headers, payloads in batches[half:]:
        restored.feed(headers, payloads)
    restored.finish()
    seen = check(sink.out, seed)
    assert seen.get(f"{CONNECTIONS}/v4") and seen.get(f"{TRANSACTIONS}/v4") and seen.get(f"{DNS}/v4")


def test_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WIRESTREAM_COMMUNITY_ID_SEED", "42")
    s = Settings.from_env()
    assert s.community_id_seed == 42
    assert s.worker_args()[-2:] == ["--community-id-seed", "42"]
    monkeypatch.setenv("WIRESTREAM_COMMUNITY_ID_SEED", "70000")
    with pytest.raises(ValueError, match="WIRESTREAM_COMMUNITY_ID_SEED: the Community ID seed must be 0-65535"):
        Settings.from_env()
    assert community_id_seed("0") == 0 and community_id_seed("65535") == 65535
    with pytest.raises(ValueError, match="integer 0-65535, not 'x'"):
        community_id_seed("x")
    monkeypatch.delenv("WIRESTREAM_COMMUNITY_ID_SEED")
    assert "--community-id-seed" not in Settings.from_env().worker_args()  # 0: the default, not passed


def test_a_checkpoint_from_before_the_field_restores() -> None:
    """A checkpoint written before ``community_id`` existed holds no seed on the tracker
    and no id on the sessions' contexts: it restores (the class defaults stand in), the
    connections get their ids, the L7 records of the sessions it held get null."""
    path = DATA / "chrissanders/http_espn.pcapng"
    options = EngineOptions(l7=L7Options(), packet_partitions=1)
    batches = list(packet_batches(str(path), 64))
    sink = RecordingSink()
    engine = Engine("cid", 0, options, sink)
    half = len(batches) // 2
    for headers, payloads in batches[:half]:
        engine.feed(headers, payloads)
    held = {engine.tracker.refs[h].cid for h in engine.tracker.sessions}
    assert held
    del engine.tracker.community_id_seed  # as the state of the code before
    for session in engine.tracker.sessions.values():
        del session.ctx.community_id
    restored = Engine.restore(engine.snapshot(), options, sink)
    before = len(sink.out[TRANSACTIONS])
    for headers, payloads in batches[half:]:
        restored.feed(headers, payloads)
    restored.finish()
    later = sink.out[TRANSACTIONS][before:]
    assert any(r["connection_id"] in held and r["community_id"] is None for r in later)
    for r in later:
        if r["connection_id"] not in held:
            assert r["community_id"] == reference(r, TRANSACTIONS, 0)
    for r in sink.out[CONNECTIONS]:
        assert r["community_id"] == reference(r, CONNECTIONS, 0)
