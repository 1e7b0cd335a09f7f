"""Kernel drops (wire.drops) joined onto connection and flow records.

Crafted drops, real everything else: two capture files replayed into wire.packets of the
test broker (two sources, IPv4 and IPv6), and ``Drop`` records (schemas/drop.avsc, Avro
through the registry) on wire.drops, each on the partition ``wirestream produce drops``
would give it: for some TCP connections, drops in either direction, of two reasons, one
reason split over two drain intervals; for some UDP flows, drops; rows no record can
claim (an ICMP drop, and drops of a known 5-tuple an hour before its connection).

* ``wirestream process`` (a real worker in a group) reads them: every connection and
  flow record has ``drops`` equal to the rows of its 5-tuple and time, the others ``{}``,
  and the worker counts the rows nobody claimed as ``drops_unjoined``;
* the same messages, read back raw from the broker, through the packet pipeline with a
  checkpoint restore in the middle give the same records as without.

Live (the second half, namespaces and eBPF needed): ``wirestream produce live`` captures a
TCP connection between two namespaces (tests/netns.py) while an nft rule in the receiver
drops every 6th packet to the server and ``wirestream produce drops`` counts the kernel's
drops; the worker's record of that connection has ``drops["netfilter_drop"]`` equal to the
rule's counter.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import RecordingPublisher, needs, read_raw
from local_pipeline import packet_batches, run_engine

DATA = Path(__file__).parent / "data" / "chrissanders"
#: each spans less than the join's horizon (the idle timeout and close linger): all the
#: drops are in before the first packet, as if they had all come at once
CAPTURES = ("http_espn.pcapng", "http_ip4and6.pcapng")  # IPv4: 25 connections, 14 UDP flows; IPv4 and IPv6
HOUR_US = 3_600_000_000


def _ip16(text: str) -> bytes:
    """The 16-byte address field the producers partition by (IPv4: 4 bytes, zero-padded)."""
    if ":" in text:
        return socket.inet_pton(socket.AF_INET6, text)
    return socket.inet_pton(socket.AF_INET, text) + b"\0" * 12


def _partition(protocol: int, src: str, sport: int, dst: str, dport: int, partitions: int) -> int:
    from wirestream.packet_block import canonical_key, partition_for

    return partition_for(canonical_key(protocol, _ip16(src), sport, _ip16(dst), dport), partitions)


def _drop(src: tuple[str, int], dst: tuple[str, int], first: int, last: int, reason: str, count: int,
          protocol: int = 6) -> dict[str, Any]:
    return {"source_id": "", "ts_us": last + 1_000_000, "first_ts_us": first, "last_ts_us": last,
            "reason": reason, "refused": False, "count": count, "ip_version": 6 if ":" in src[0] else 4,
            "ethertype": 0x86DD if ":" in src[0] else 0x0800, "protocol": protocol,
            "src_ip": src[0], "src_port": src[1], "dst_ip": dst[0], "dst_port": dst[1], "tcp_rst": False,
            "interface": "veth-test", "ifindex": 2, "netns": 4026531840}


def reference(name: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The capture file's connection and flow records without drops (in-process engine):
    topic -> id -> record."""
    out: dict[str, dict[str, dict[str, Any]]] = {"wire.connections": {}, "wire.flows": {}}
    records, _ = run_engine(packet_batches(str(DATA / name), 64), observations=False)
    for topic, id_field in (("wire.connections", "connection_id"), ("wire.flows", "flow_id")):
        for r in records.get(topic, []):
            out[topic][r[id_field]] = r
    return out


def crafted_drops(ref: dict[str, dict[str, dict[str, Any]]],
                  source_id: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]], int]:
    """The Drop records (of producer ``source_id``), what each record id must carry, and
    the packets no record claims."""
    drops, expected = [], {}
    conns = sorted(ref["wire.connections"].values(), key=lambda r: r["start_ts_us"])
    for i, c in enumerate(conns[::3]):  # every third connection, the IPv6 one among them
        client, server = (c["client_ip"], c["client_port"]), (c["server_ip"], c["server_port"])
        s, e = c["start_ts_us"], c["end_ts_us"]
        mid = (s + e) // 2
        drops += [_drop(client, server, s, mid, "netfilter_drop", 2 + i),         # client -> server
                  _drop(client, server, mid, e, "netfilter_drop", 1),             # the next interval
                  _drop(server, client, e, e, "tcp_invalid_sequence", 3)]         # server -> client
        expected[c["connection_id"]] = {"netfilter_drop": 3 + i, "tcp_invalid_sequence": 3}
    flows = sorted(ref["wire.flows"].values(), key=lambda r: r["start_ts_us"])
    for f in flows[::4]:
        client, server = (f["client_ip"], f["client_port"]), (f["server_ip"], f["server_port"])
        drops.append(_drop(server, client, f["start_ts_us"], f["end_ts_us"], "udp_csum", 5, protocol=17))
        expected[f["flow_id"]] = {"udp_csum": 5}
    # Nobody's: an ICMP drop, and drops of a connection's 5-tuple an hour before it began
    # (an earlier connection on the same ports that the capture never saw).
    c = conns[0]
    early = c["start_ts_us"] - HOUR_US
    unjoined = [_drop((c["client_ip"], c["client_port"]), (c["server_ip"], c["server_port"]), early, early + 10,
                      "netfilter_drop", 7),
                {**_drop(("192.0.2.1", 8), ("192.0.2.2", 0), c["start_ts_us"], c["start_ts_us"], "ip_noproto", 4),
                 "protocol": 1}]
    # The stale rows go first: the ones after them on their partition age them out.
    return ([{**d, "source_id": source_id} for d in unjoined + drops], expected,
            sum(d["count"] for d in unjoined))


def publish_drops(bootstrap: str, codec: Any, drops: list[dict[str, Any]], partitions: int) -> None:
    from wirestream.kafka import WireProducer
    from wirestream.topics import DROPS

    encode = codec.encoder(DROPS)
    producer = WireProducer(bootstrap)
    for d in drops:
        producer.produce(DROPS, encode(d), None, _partition(d["protocol"], d["src_ip"], d["src_port"] or 0,
                                                           d["dst_ip"], d["dst_port"] or 0, partitions))
    producer.flush(30)


def publish_packets(bootstrap: str, codec: Any, partitions: int, prefix: str, name: str) -> list[str]:
    from wirestream.producers.pcap_replay import replay_files

    done = list(replay_files([str(DATA / name)], bootstrap, codec, partitions,
                             lambda i: f"{prefix}-{i}"))
    assert all(not isinstance(result, Exception) for _, result in done), done
    return [sid for sid, _ in done]


def _strip(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "drops"}


@pytest.fixture
def own_broker() -> Any:
    """A broker of this test's own: a consumer group's worker reads its input topics from
    the start, and on the session's shared broker that is every earlier test's packets and
    drops (slow, and their capture times age this test's drop rows out: the join's clock is
    per partition)."""
    from wirestream.broker import EmbeddedBroker

    with EmbeddedBroker() as own:
        yield own


@pytest.mark.parametrize("name", CAPTURES)
def test_worker_joins_drops_onto_connections_and_flows(own_broker, registry, name: str) -> None:
    broker = own_broker
    from wirestream.codec import AvroCodec
    from wirestream.reader import TopicReader, end_offsets, partitions_of
    from wirestream.topics import CONNECTIONS, DROPS, FLOWS, PACKETS, STATS

    codec = AvroCodec(registry.url)
    env = {**os.environ, "WIRESTREAM_BOOTSTRAP": broker.bootstrap, "WIRESTREAM_REGISTRY": registry.url}
    group = f"dropjoin-{uuid.uuid4().hex[:8]}"
    ref = reference(name)
    drops, expected, unjoined = crafted_drops(ref, f"drops-{group}")
    start = end_offsets(broker.bootstrap, (CONNECTIONS, FLOWS, STATS))
    worker = subprocess.Popen([sys.executable, "-m", "wirestream", "process", "--role", "packets", "--no-windows",
                               "--group", group, "--checkpoint-interval", "0.5"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not partitions_of(broker.bootstrap, [DROPS]) and time.monotonic() < deadline:
            time.sleep(0.2)  # the worker creates the topics
        partitions = len(partitions_of(broker.bootstrap, [PACKETS]))
        assert len(partitions_of(broker.bootstrap, [DROPS])) == partitions
        publish_drops(broker.bootstrap, codec, drops, partitions)
        in_drops = sum(end_offsets(broker.bootstrap, [DROPS]).values())
        # Drops first, read by the worker before any packet: a record must not leave
        # before its drops are in (live, they come within a drain interval, long before a
        # connection's close linger is over).
        counters: dict[str, int] = {}
        with TopicReader(broker.bootstrap, codec, [STATS], start) as reader:
            while counters.get("drop_rows", 0) < in_drops:
                assert time.monotonic() < deadline and worker.poll() is None, (counters, worker.stderr.read())
                for m in reader.poll(0.3):
                    if m.record and m.record["source_id"] == f"worker:{group}":
                        counters = m.record["counters"]
        sources = publish_packets(broker.bootstrap, codec, partitions, group, name)
        got: dict[str, dict[str, dict[str, Any]]] = {CONNECTIONS: {}, FLOWS: {}}
        want = {t: len(ref[t]) for t in got}
        with TopicReader(broker.bootstrap, codec, [CONNECTIONS, FLOWS, STATS], start) as reader:
            joined = sum(sum(v.values()) for v in expected.values())
            while ({t: len(v) for t, v in got.items()} != want or counters.get("drops_unjoined", 0) < unjoined
                   or counters.get("drops_joined", 0) < joined):
                assert time.monotonic() < deadline + 60 and worker.poll() is None, (
                    {t: len(v) for t, v in got.items()}, want, counters)
                for m in reader.poll(0.3):
                    if m.record is None:
                        continue
                    if m.topic == STATS:
                        if m.record["source_id"] == f"worker:{group}":
                            counters = m.record["counters"]
                    elif m.record["source_id"] in sources:
                        got[m.topic][m.record["connection_id" if m.topic == CONNECTIONS else "flow_id"]] = m.record
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err[-3000:]
    for topic in (CONNECTIONS, FLOWS):
        assert set(got[topic]) == set(ref[topic])
        for rid, record in got[topic].items():
            assert record["drops"] == expected.get(rid, {}), (rid, record["client_ip"], record["server_ip"])
            # nothing else changed (the fields the engine gives; the source id is the replay's)
            want = _strip(ref[topic][rid]) | {"source_id": record["source_id"]}
            assert {k: record[k] for k in want} == want, rid
    assert sum(1 for t in got for r in got[t].values() if r["drops"]) == len(expected) > 0
    # On a broker shared with other tests, others' drop rows may be unjoined too.
    assert counters["drops_unjoined"] >= unjoined, counters
    assert counters["drops_joined"] >= joined, counters


@pytest.mark.parametrize("name", CAPTURES)
def test_checkpoint_restore_in_the_middle_gives_the_same_records(broker, registry, name: str) -> None:
    """The packets and drops, read back raw from the broker, through the packet pipeline:
    once straight, once with every partition snapshotted and restored into a new pipeline
    half-way through its packets; the records are the same, drops included."""
    from wirestream.processors.engine import EngineOptions
    from wirestream.processors.l7.base import L7Options
    from wirestream.processors.packet_pipeline import PacketPipeline

    from wirestream.codec import AvroCodec
    from wirestream.kafka import ensure_process_topics
    from wirestream.reader import end_offsets
    from wirestream.topics import DROPS, PACKETS

    codec = AvroCodec(registry.url)
    prefix = f"dropjoin-cp-{uuid.uuid4().hex[:8]}"
    partitions = ensure_process_topics(broker.bootstrap, 4, group=prefix, role="packets").packet_partitions
    start = end_offsets(broker.bootstrap, (PACKETS, DROPS))
    ref = reference(name)
    drops, expected, _ = crafted_drops(ref, f"drops-{prefix}")
    publish_drops(broker.bootstrap, codec, drops, partitions)
    publish_packets(broker.bootstrap, codec, partitions, prefix, name)
    # ours only: the same rows of the test before are on the topic too (a broker's end
    # offset may lag behind what it holds)
    drop_messages = [(p, v) for p, v in read_raw(broker.bootstrap, DROPS, start)
                     if codec.decode(v)["source_id"] == f"drops-{prefix}"]
    assert len(drop_messages) == len(drops)
    packet_messages = read_raw(broker.bootstrap, PACKETS, start)
    options = EngineOptions(l7=L7Options(), packet_partitions=partitions)

    def run(cut: bool) -> dict[str, list[dict[str, Any]]]:
        sink = RecordingPublisher()
        pipeline = PacketPipeline(codec, sink, options, source_prefix=prefix)  # type: ignore[arg-type]
        for part, value in drop_messages:
            pipeline.handle_drop(part, value)
        # half-way through each partition's messages (others' included: the cut may come
        # before this source's first packet, with drops held and no engine yet)
        halfway = {p: n // 2 for p, n in Counter(p for p, _ in packet_messages).items()}
        seen: Counter[int] = Counter()
        for part, value in packet_messages:
            if cut and seen[part] == halfway[part]:
                state = pipeline.snapshot_partition(part)
                pipeline = _moved(pipeline, part, state, codec, sink, options, prefix)
            pipeline.handle(part, value)
            seen[part] += 1

        return sink.out

    straight, restored = run(False), run(True)
    for topic in straight:
        for a, b in zip(straight[topic], restored[topic], strict=True):
            assert a == b, (topic, {k: (v, b.get(k)) for k, v in a.items() if b.get(k) != v})
    assert straight == restored
    conns = {r["connection_id"]: r for r in straight["wire.connections"]}
    flows = {r["flow_id"]: r for r in straight.get("wire.flows", [])}
    assert {k: v["drops"] for k, v in (conns | flows).items() if v["drops"]} == expected


def _moved(old: Any, part: int, state: bytes, codec: Any, sink: Any, options: Any, prefix: str) -> Any:
    """A new pipeline holding ``old``'s other partitions as they are and ``part`` restored
    from ``state``, as a worker that took the partition over would."""
    from wirestream.processors.packet_pipeline import PacketPipeline

    new = PacketPipeline(codec, sink, options, source_prefix=prefix)
    for p in {p for (_, p) in old.engines} | set(old.drop_joins):
        if p != part:
            new.put_partition(p, *old.take_partition(p))
    new.restore_partition(part, state)
    return new


def test_sinks_show_drops() -> None:
    """The SIEM sink's ECS and CEF events and analyze's connection table say what was dropped."""
    import io

    from rich.console import Console
    from wirestream.sinks.console import SUMMARY_FIELDS, print_drops
    from wirestream.sinks.siem import cef_event, ecs_event

    from wirestream.topics import CONNECTIONS, FLOWS

    ref = reference(CAPTURES[0])
    conn = next(iter(ref[CONNECTIONS].values())) | {"drops": {"netfilter_drop": 4, "tcp_invalid_sequence": 1}}
    doc = ecs_event(CONNECTIONS, conn)
    assert doc["network"]["drops"] == {"netfilter_drop": 4, "tcp_invalid_sequence": 1}
    assert doc["network"]["dropped_packets"] == 5 and doc["event"]["reason"] == "netfilter_drop,tcp_invalid_sequence"
    assert "packet_drops" in doc["tags"]
    assert "drops" not in ecs_event(CONNECTIONS, conn | {"drops": {}})["network"]
    assert "cn1=5" in cef_event(CONNECTIONS, conn) and "cs6=netfilter_drop:4,tcp_invalid_sequence:1" in cef_event(
        CONNECTIONS, conn)
    assert "drops" in SUMMARY_FIELDS[FLOWS]
    out = io.StringIO()
    print_drops([conn, conn | {"drops": {}}], "connections", 10, Console(file=out, width=300))
    line = out.getvalue()
    assert "kernel drops on 1 connections: netfilter_drop 4, tcp_invalid_sequence 1" in line, line
    assert f"{conn['client_ip']}:{conn['client_port']}" in line, line


# --- live: an nft rule's drops on the connection record -------------------------------------------

LIVE_PORT = 7011
#: every DROP_EVERY-th packet to LIVE_PORT is dropped by the receiver's input hook
DROP_EVERY = 6
LIVE_BYTES = 40_000

LIVE_SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen(1)
    print("listening", flush=True)
    c, _ = s.accept()
    n = 0
    while True:
        data = c.recv(65536)
        if not data:
            break
        n += len(data)
    c.sendall(str(n).encode())
    c.close()
""")

LIVE_CLIENT = textwrap.dedent("""
    import socket, sys
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
    for _ in range(int(sys.argv[3]) // 1000):
        s.sendall(b"x" * 1000)
    s.shutdown(socket.SHUT_WR)
    print(s.recv(100).decode(), flush=True)
    s.close()
""")


def _live_unavailable() -> str | None:
    from test_packet_drops import NETNS_UNAVAILABLE, _drops_unavailable

    if NETNS_UNAVAILABLE:
        return f"network namespaces: {NETNS_UNAVAILABLE}"
    return _drops_unavailable()


def _wait_for(proc: subprocess.Popen, says: str, lines: int = 10) -> list[str]:
    said = [proc.stderr.readline()]
    while says not in said[-1] and said[-1] and len(said) < lines:
        said.append(proc.stderr.readline())  # bcc's own complaints, a fallback line, may come first
    assert says in said[-1], (said, proc.poll())
    return said


@needs(_live_unavailable())
def test_live_drops_of_an_nft_rule_are_counted_on_the_connection(own_broker, registry) -> None:
    """Live: ``wirestream produce live`` captures a TCP connection in a namespace while an
    nft rule in the receiver drops every 6th of its packets to the server and ``wirestream
    produce drops`` counts the kernel's drops; a ``wirestream process`` worker gives the
    connection record ``drops["netfilter_drop"]`` equal to the rule's own counter."""
    from netns import IP, NFT, LossyLink

    broker = own_broker

    from wirestream.codec import AvroCodec
    from wirestream.reader import TopicReader, end_offsets
    from wirestream.topics import CONNECTIONS, DROPS, STATS

    codec = AvroCodec(registry.url)
    env = {**os.environ, "WIRESTREAM_BOOTSTRAP": broker.bootstrap, "WIRESTREAM_REGISTRY": registry.url}
    tag = uuid.uuid4().hex[:8]
    group, live_name, drops_name = f"dropjoin-live-{tag}", f"live-{tag}", f"drops-{tag}"
    start = end_offsets(broker.bootstrap, (CONNECTIONS, DROPS, STATS))
    procs: list[subprocess.Popen] = []
    try:
        worker = subprocess.Popen([sys.executable, "-m", "wirestream", "process", "--role", "packets",
                                   "--no-windows", "--group", group, "--checkpoint-interval", "0.5"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(worker)
        with LossyLink(loss_percent=0, rate_mbit=None) as link:
            rules = ("table inet ws_dropjoin { chain input { type filter hook input priority filter; "
                     f"policy accept; tcp dport {LIVE_PORT} numgen inc mod {DROP_EVERY} == 0 counter drop; }}; }}")
            subprocess.run([IP, "netns", "exec", link.receiver, NFT, "-f", "-"], input=rules, text=True,
                           capture_output=True, check=True, timeout=10)
            drops = subprocess.Popen([sys.executable, "-m", "wirestream", "produce", "drops", "--interval", "1",
                                      "--source-name", drops_name],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(drops)
            _wait_for(drops, "counting drops")
            live = subprocess.Popen([sys.executable, "-m", "wirestream", "produce", "live", "--netns", link.sender,
                                     "-i", link.sender_if, "--source-name", live_name],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(live)
            _wait_for(live, "capturing on", 5)
            server = link.popen(link.receiver, [sys.executable, "-c", LIVE_SERVER, link.receiver_ip, str(LIVE_PORT)])
            assert server.stdout.readline().strip() == "listening"
            client = link.run(link.sender, [sys.executable, "-c", LIVE_CLIENT, link.receiver_ip, str(LIVE_PORT),
                                            str(LIVE_BYTES)], timeout=120)
            assert client.stdout.strip() == str(LIVE_BYTES), client
            server.wait(timeout=30)
            out = link.run(link.receiver, [NFT, "list", "table", "inet", "ws_dropjoin"]).stdout
            dropped = int(re.search(r"counter packets (\d+)", out).group(1))  # type: ignore[union-attr]
            # The drops producer first: its last rows are published as it stops...
            drops.send_signal(signal.SIGTERM)
            _, err = drops.communicate(timeout=60)
            assert drops.returncode == 0, err[-3000:]
            ours = 0
            counters: dict[str, int] = {}
            with TopicReader(broker.bootstrap, codec, [DROPS, STATS], start) as reader:
                # ... and read by the worker (all the rows up to ours: it reads in offset
                # order) before the capture's end of input flushes the connection
                deadline = time.monotonic() + 60
                settled = 0
                while settled < 3:
                    assert time.monotonic() < deadline and worker.poll() is None, (ours, counters)
                    before = counters.get("drop_rows", 0)
                    for m in reader.poll(0.5):
                        if m.record is None:
                            continue
                        if m.topic == DROPS and m.record["source_id"].startswith(drops_name):
                            ours += 1
                        elif m.topic == STATS and m.record["source_id"] == f"worker:{group}":
                            counters = m.record["counters"]
                    grew = counters.get("drop_rows", 0) > before
                    settled = settled + 1 if ours and counters.get("drop_rows", 0) >= ours and not grew else 0
            live.send_signal(signal.SIGTERM)
            _, err = live.communicate(timeout=60)
            assert live.returncode == 0, err[-3000:]
            client_ip, server_ip = link.sender_ip, link.receiver_ip
        record = None
        with TopicReader(broker.bootstrap, codec, [CONNECTIONS], start) as reader:
            deadline = time.monotonic() + 60
            while record is None:
                assert time.monotonic() < deadline and worker.poll() is None, "no connection record"
                for m in reader.poll(0.5):
                    r = m.record
                    if (r is not None and r["source_id"].startswith(live_name) and r["final"]
                            and r["server_port"] == LIVE_PORT and r["server_ip"] == server_ip):
                        record = r
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.communicate(timeout=60)
    assert record["client_ip"] == client_ip and record["state"] == "complete", record
    assert dropped > 5, out
    assert record["drops"].get("netfilter_drop") == dropped, (record["drops"], dropped)
    # the capture, on the sender's side, saw the packets the receiver dropped: they are
    # retransmitted on the wire
    assert record["retransmissions"] > 0, record
    print("dropped by the rule", dropped, "on the record", record["drops"], "retransmissions", record["retransmissions"])


def test_interim_records_are_cumulative_and_rows_age_out() -> None:
    """The join's own rules, on records as the tracker makes them: an interim record has the
    drops so far and keeps them (claimed rows wait as long as the connection goes on), the
    final one has all and takes them; rows no record claims leave once old, counted; a full
    table lets its older half go, counted."""
    from wirestream.processors.drop_join import DropJoin

    s = 1_000_000_000_000
    conn = {"client_ip": "2001:db8::1", "client_port": 40000, "server_ip": "2001:db8:0:0::2", "server_port": 80,
            "start_ts_us": s, "end_ts_us": s + 5_000_000, "final": False}
    join = DropJoin(horizon_us=60_000_000, slack_us=1_000_000, max_rows=8)
    client, server = ("2001:db8::1", 40000), ("2001:db8::2", 80)
    join.add(_drop(client, server, s + 1_000_000, s + 2_000_000, "netfilter_drop", 2))
    interim = dict(conn)
    join.annotate("tcp", interim)
    assert interim["drops"] == {"netfilter_drop": 2}
    # still open, interim records within the horizon: the rows they claim are not old
    for end in (s + 50_000_000, s + 99_000_000):
        again = dict(conn, end_ts_us=end)
        join.annotate("tcp", again)
        assert again["drops"] == {"netfilter_drop": 2}
    join.add(_drop(server, client, s + 100_000_000, s + 100_000_000, "tcp_invalid_sequence", 1))
    later = dict(conn, end_ts_us=s + 100_000_000)
    join.annotate("tcp", later)
    assert later["drops"] == {"netfilter_drop": 2, "tcp_invalid_sequence": 1}
    final = dict(conn, end_ts_us=s + 101_000_000, final=True)
    join.annotate("tcp", final)
    assert final["drops"] == {"netfilter_drop": 2, "tcp_invalid_sequence": 1} and join.held == 0
    assert join.counters["drops_joined"] == 3 and join.counters["drops_unjoined"] == 0
    # a UDP flow's record: not the TCP connection's rows; an unclaimed row ages out
    join.add(_drop(client, server, s + 102_000_000, s + 102_000_000, "netfilter_drop", 4))
    flow = dict(conn, transport="udp", start_ts_us=s + 101_000_000, end_ts_us=s + 103_000_000)
    join.annotate(flow["transport"], flow)
    assert flow["drops"] == {} and join.held == 1
    join.add(_drop(("192.0.2.9", 1), ("192.0.2.10", 2), s + 200_000_000, s + 200_000_000, "no_socket", 1))
    assert join.counters["drops_unjoined"] == 4 and join.held == 1
    for i in range(10):  # past max_rows: the older half goes
        join.add(_drop(("192.0.2.9", 100 + i), ("192.0.2.10", 2), s + 200_000_000 + i, s + 200_000_000 + i,
                       "no_socket", 1))
    assert join.counters["drops_evicted"] > 0 and join.held <= 8
    assert join.counters["drops_evicted"] + join.pending == 11


def test_a_checkpoint_from_before_drops_were_joined_restores_with_a_join() -> None:
    """An engine snapshotted by the code before drop joins (no ``drops`` slot): restored by
    the pipeline, it gets the partition's join and its records carry drops."""
    from local_pipeline import RecordingSink
    from wirestream.processors.engine import Engine, EngineOptions, snapshot_engines
    from wirestream.processors.packet_pipeline import PacketPipeline
    from wirestream.processors.state_codec import state_layout

    batches = list(packet_batches(str(DATA / CAPTURES[1]), 4))
    ref = reference(CAPTURES[1])
    sink, options = RecordingSink(), EngineOptions(packet_partitions=1)
    engine = Engine("old", 0, options, sink)
    engine.feed(*batches[0])
    del engine.drops  # what the older code's engine was
    old = snapshot_engines([engine])
    assert "drops" not in state_layout(old)["wirestream.processors.engine:Engine"]
    pipeline = PacketPipeline(None, sink, options)  # type: ignore[arg-type]
    pipeline.restore_partition(0, old)
    (restored,) = pipeline.partition_engines(0)
    assert restored.drops is pipeline.drop_joins[0]
    drops, expected, _ = crafted_drops(ref, "drops-old")
    for d in drops:
        restored.drops.add(d)
    for headers, payloads in batches[1:]:
        restored.feed(headers, payloads)
    restored.finish()
    got = {r["connection_id"]: r["drops"] for r in sink.out["wire.connections"]}
    assert {k: v for k, v in got.items() if v} == expected and expected
