"""Socket events joined into connection records, whatever order the two topics arrive in.

The live-capture tests (test_live_capture.py) check the join end to end on the real
kernel; here the processor gets hand-made ``SocketEvent`` records for the connections
of a real capture, through the real codec, registry and broker, in both orders of the
two end-of-input markers (``wire.packets`` and ``wire.sockets`` are separate topics: a
worker may see either end first).
"""

from __future__ import annotations

import time

import pytest
from helpers import DATA
from local_pipeline import local_connections, packet_batches
from wirestream.processors.output import OutputPublisher
from wirestream.processors.packet_pipeline import STAGE, PacketPipeline
from wirestream.processors.socket_join import SocketJoin

from wirestream.codec import AvroCodec
from wirestream.packet_block import LAYOUT_VERSION
from wirestream.reader import TopicReader, end_offsets
from wirestream.topics import CONNECTIONS, PACKETS, SOCKETS, STATS

CAPTURE = str(DATA / "chrissanders" / "http_espn.pcapng")


def _event(kind: str, local: tuple[str, int], remote: tuple[str, int], pid: int | None = None,
           process: str | None = None, segments: int = 0, source_id: str = "s") -> dict:
    return {
        "source_id": source_id, "ts_us": 0, "kind": kind, "ip_version": 4,
        "local_ip": local[0], "local_port": local[1], "remote_ip": remote[0], "remote_port": remote[1],
        "old_state": None, "new_state": None, "pid": pid, "tid": pid, "process": process,
        "cgroup_id": None, "container_id": None, "netns": None, "fd": None, "ret": None,
        "segments": segments, "socket_id": 1, "end_of_input": False, "events_before": 0,
    }


def _record(final: bool = True) -> dict:
    return {"client_ip": "10.0.0.1", "client_port": 40000, "server_ip": "10.0.0.2", "server_port": 80,
            "final": final}


def test_join_fills_both_ends_and_counts_retransmitted_segments() -> None:
    join = SocketJoin()
    client, server = ("10.0.0.1", 40000), ("10.0.0.2", 80)
    join.add(_event("state", client, server, pid=11, process="curl"))
    join.add(_event("accept", server, client, pid=22, process="nginx"))
    join.add(_event("retransmit", client, server, segments=3))
    join.add(_event("retransmit", server, client, segments=1))
    join.add(_event("state", server, client))  # softirq context: no process; changes nothing

    interim = _record(final=False)
    join.annotate(interim)
    assert (interim["client_pid"], interim["client_process"]) == (11, "curl")
    assert (interim["server_pid"], interim["server_process"]) == (22, "nginx")
    assert interim["kernel_retransmissions"] == 4

    final = _record()
    join.annotate(final)
    assert final["client_pid"] == 11 and final["kernel_retransmissions"] == 4
    again = _record()  # the entries left with the final record
    join.annotate(again)
    assert "client_pid" not in again and again["kernel_retransmissions"] == 0


def test_join_state_is_bounded() -> None:
    join = SocketJoin(max_entries=10)
    for port in range(25):
        join.add(_event("accept", ("10.0.0.2", 80), ("10.0.0.1", 30000 + port), pid=1, process="p"))
    assert len(join._owners) <= 10
    assert join.counters["socket_join_cleared"] == 20


def _packet_messages(codec: AvroCodec, source_id: str) -> list[bytes]:
    """The capture as one source on partition 0: data batches, then the end marker."""
    encode = codec.encoder(PACKETS)
    batches = list(packet_batches(CAPTURE, batch=256))

    def message(seq: int, packets: bytes, count: int, payloads: bytes, end: bool) -> bytes:
        return encode({
            "source_id": source_id, "source_name": "test", "sequence": seq, "layout_version": LAYOUT_VERSION,
            "count": count, "packets": packets, "payloads": payloads, "end_of_input": end,
            "batches_before": len(batches), "socket_events": True,
        })

    out = [message(seq, h.tobytes(), len(h), p, False) for seq, (h, p) in enumerate(batches)]
    return [*out, message(len(batches), b"", 0, b"", True)]


@pytest.mark.parametrize("sockets_end_first", [False, True], ids=["packets-end-first", "sockets-end-first"])
def test_a_source_with_socket_events_ends_when_both_topics_have(broker, registry, sockets_end_first) -> None:
    codec = AvroCodec(registry.url)
    source_id = f"join-{time.monotonic_ns()}"
    expected = local_connections(CAPTURE)
    first = expected[0]
    client = (first["client_ip"], first["client_port"])
    server = (first["server_ip"], first["server_port"])
    encode_socket = codec.encoder(SOCKETS)
    socket_messages = [
        encode_socket(_event("state", client, server, pid=4242, process="firefox", source_id=source_id)),
        encode_socket(_event("retransmit", client, server, segments=2, source_id=source_id)),
        encode_socket({**_event("end_of_input", ("", 0), ("", 0), source_id=source_id),
                       "end_of_input": True, "events_before": 2}),
    ]
    packet_messages = _packet_messages(codec, source_id)
    start = end_offsets(broker.bootstrap, (CONNECTIONS, STATS))
    pipeline = PacketPipeline(codec, OutputPublisher(broker.bootstrap, codec, STAGE))

    for value in packet_messages[:-1]:
        pipeline.handle(0, value)
    for value in socket_messages[:-1]:
        pipeline.handle_socket_event(0, value)
    ends = [("packets", packet_messages[-1]), ("sockets", socket_messages[-1])]
    if sockets_end_first:
        ends.reverse()
    pipeline.handle(0, ends[0][1]) if ends[0][0] == "packets" else pipeline.handle_socket_event(0, ends[0][1])
    assert (source_id, 0) in pipeline.engines, "finished before both end markers were in"
    pipeline.handle(0, ends[1][1]) if ends[1][0] == "packets" else pipeline.handle_socket_event(0, ends[1][1])
    assert (source_id, 0) not in pipeline.engines
    pipeline.publisher.flush()

    records, final = [], None
    deadline = time.monotonic() + 30
    with TopicReader(broker.bootstrap, codec, [CONNECTIONS, STATS], start) as reader:
        while (final is None or len(records) < len(expected)) and time.monotonic() < deadline:
            for m in reader.poll(0.2):
                if m.record is None or m.record.get("source_id") != source_id:
                    continue
                if m.topic == STATS:
                    final = m.record
                else:
                    records.append(m.record)
    assert len(records) == len(expected)
    joined = [r for r in records if r["client_pid"] is not None]
    assert [(r["client_port"], r["client_pid"], r["client_process"], r["kernel_retransmissions"])
            for r in joined] == [(first["client_port"], 4242, "firefox", 2)]
    assert all(r["kernel_retransmissions"] == 0 for r in records if r is not joined[0])
    assert final["final"] and final["counters"]["socket_events"] == 2
    assert "socket_events_missing" not in final["dropped"]


def test_a_refused_connects_late_event_is_not_given_to_the_next_socket(broker, registry) -> None:
    """A refused connect(): its SYN_SENT -> CLOSE comes with the 4-tuple, its connect event
    (ECONNREFUSED) after, when the kernel socket is already forgotten, so it waits. The
    kernel then reuses that socket address for another process's connection: the waiting
    event belongs to the previous life of the address and must not be published under the
    new connection (the call-chain test saw other processes' pids as clients). It is
    dropped, counted as socket_event_stale; the new connection keeps its own pid."""
    import os
    import socket as sock

    from wirestream.producers.socket_events import (
        EV_CONNECT,
        EV_STATE,
        EVENT_STRUCT,
        TCP_CLOSE,
        TCP_SYN_SENT,
        SocketEventPublisher,
    )

    source = f"refused-{os.getpid()}-{time.time_ns()}"
    pub = SocketEventPublisher(broker.bootstrap, AvroCodec(registry.url), 2, source)
    skaddr, lo = 0xFFFF_8880_1234_5678, sock.inet_aton("127.0.0.1") + b"\0" * 12
    established = 1

    def raw(kind: int, tgid: int, sport: int, dport: int, old: int = 0, new: int = 0, ret: int = 0) -> bytes:
        return EVENT_STRUCT.pack(time.monotonic_ns(), skaddr, 0, tgid, tgid, kind, ret, 3, sock.AF_INET,
                                 sport, dport, old, new, lo, lo, b"client", 0, 0, 0, 0, 0, 0, 0)

    pub.add([
        raw(EV_STATE, 111, 0, 0, TCP_CLOSE, TCP_SYN_SENT),          # process 111 connects ...
        raw(EV_STATE, 111, 40001, 9, TCP_SYN_SENT, TCP_CLOSE),      # ... refused (RST)
        raw(EV_CONNECT, 111, 0, 0, ret=-111),                       # its connect() returns: waits
        raw(EV_STATE, 222, 0, 0, TCP_CLOSE, TCP_SYN_SENT),          # process 222, same address
        raw(EV_CONNECT, 222, 0, 0, ret=-115),                       # EINPROGRESS: waits for its tuple
        raw(EV_STATE, 222, 40002, 8080, TCP_SYN_SENT, established),
    ])
    pub.finish()
    assert pub.dropped["socket_event_stale"] == 1
    connects = []
    with TopicReader(broker.bootstrap, AvroCodec(registry.url), [SOCKETS], "beginning") as reader:
        deadline = time.monotonic() + 20
        ends = 0
        while ends < 2 and time.monotonic() < deadline:
            for m in reader.poll(0.5):
                if m.record["source_id"] != source:
                    continue
                ends += m.record["end_of_input"]
                if m.record["kind"] == "connect":
                    connects.append((m.record["pid"], m.record["local_port"], m.record["ret"]))
    assert ends == 2
    assert connects == [(222, 40002, -115)]
