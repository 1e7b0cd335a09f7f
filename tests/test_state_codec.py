"""The snapshot/restore format of the analysis state (processors/state_codec.py).

The proof: every capture in tests/data goes through the in-process analysis (connection
tracker + L7 dispatcher + observer, wired as tests/local_pipeline.py ``local_l7`` does)
once uninterrupted, and once with the whole state encoded, *discarded*, decoded into
fresh objects and continued, at many cut points; the records of every topic and the
observer's batches must be identical, field by field. A restore that drops the state
instead must make that comparison fail (so the test can fail), and bytes that are not a
state must be a StateError, never another exception.

The wiring (``Rig``) is what processors/engine.py does: callbacks are bound methods, not
closures (a closure is not encodable: that is the point). The rig itself is passed as an
external here (it is a test class, outside wirestream.processors); on a restore a *new*
rig is made and given the decoded objects, so nothing of the old graph survives.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections import Counter, OrderedDict, defaultdict, deque
from dataclasses import dataclass
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import fastavro
import numpy as np
import pytest
from helpers import assert_same
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from l7_traffic import Traffic
from local_pipeline import RecordingSink, packet_batches
from wirestream.processors import state_codec
from wirestream.processors.connection_tracker import ConnectionTracker
from wirestream.processors.drop_join import DropJoin
from wirestream.processors.engine import Engine, EngineOptions
from wirestream.processors.l7.base import L7Options
from wirestream.processors.l7.dns import DnsMatcher
from wirestream.processors.l7.http import HttpAnalyzer
from wirestream.processors.l7.session import L7Dispatcher
from wirestream.processors.l7.tls import TlsAnalyzer
from wirestream.processors.observations import Observer
from wirestream.processors.socket_join import SocketJoin
from wirestream.processors.state_codec import (
    STATE_FORMAT_VERSION,
    StateError,
    decode_state,
    encode_state,
    state_layout,
)

from wirestream.packet_block import PROTO_UDP
from wirestream.topics import CONNECTIONS, FLOWS

DATA = Path(__file__).parent / "data"
CAPTURES = sorted(str(p.relative_to(DATA)) for p in DATA.rglob("*.pcap*"))
#: captures whose connections span many batches (keep-alive HTTP, TLS, DNS over TCP)
KEY_CAPTURES = [
    "chrissanders/http_espn.pcapng",  # 80+ keep-alive HTTP connections, long bodies
    "chrissanders/http_espn_fail.pcapng",
    "chrissanders/http_dvwa_clearlogin.pcapng",
    "chrissanders/http_post.pcapng",
    "chrissanders/tcp_ports.pcapng",
    "chrissanders/tcp_retransmissions.pcapng",
    "chrissanders/dns_tcp.pcapng",
    "chrissanders/dns_isp_hijack.pcapng",
    "chrissanders/dns_query_response.pcapng",
    "zeek-tls/tls-conn-with-extensions.pcap",
    "zeek-tls/client-certificate.pcap",
    "zeek-tls/hrr.pcap",
]
LAYOUT_PATH = Path(state_codec.__file__).parent.parent / "schemas" / state_codec.LAYOUT_FILE
REGENERATE = "WIRESTREAM_WRITE_LAYOUT=1 .venv/bin/python -m pytest -q tests/test_state_codec.py -k layout"


# --- the wiring ---------------------------------------------------------------------------


class Recorder:
    """The output (an external: not state). Records every (topic, key, record) and every
    observation batch, as the topics would."""

    def __init__(self) -> None:
        self.out: dict[str, list] = defaultdict(list)

    def publish(self, topic: str, key: str | None, record: dict[str, Any]) -> None:
        findings = getattr(record, "findings", None)
        self.out[topic].append((key, dict(record), None if findings is None else int(findings)))

    def observations(self, partition: int, batch: dict[str, Any]) -> None:
        self.out["observations"].append((partition, batch))


class Rig:
    """The engine's wiring, with bound methods as callbacks (as processors/engine.py)."""

    def __init__(self, sink: Recorder, options: L7Options) -> None:
        self.sink = sink
        self.options = options
        self.tracker: ConnectionTracker | None = None
        self.l7: L7Dispatcher | None = None
        self.observer: Observer | None = None

    def fresh(self, sockets: bool = False) -> Rig:
        self.observer = Observer(self.sink.observations, "local", 0, 1, 4)
        self.l7 = L7Dispatcher(self.emit, "local", self.options)
        self.tracker = ConnectionTracker(self.on_record, source_id="local", l7=self.l7)
        if sockets:
            self.tracker.sockets = SocketJoin()
        return self

    def state(self) -> dict[str, Any]:
        return {"tracker": self.tracker, "l7": self.l7, "observer": self.observer}

    def attach(self, state: dict[str, Any]) -> Rig:
        self.tracker, self.l7, self.observer = state["tracker"], state["l7"], state["observer"]
        return self

    def externals(self) -> dict[str, object]:
        return {"sink": self.sink, "options": self.options, "rig": self}

    def emit(self, topic: str, key: str | None, record: dict[str, Any]) -> None:
        self.observer.observe(topic, record)
        self.sink.publish(topic, key, record)

    def on_record(self, record: dict[str, Any]) -> None:
        self.emit(CONNECTIONS, record["connection_id"], record)

    def feed(self, headers: np.ndarray, payloads: bytes) -> None:
        # as PacketPipeline: datagrams first, then TCP, then the observer's watermark
        self.l7.datagrams(headers[headers["proto"] == PROTO_UDP], payloads)
        self.tracker.process(headers, payloads)
        if len(headers):
            self.observer.advance(int(headers["ts_us"].max()))
        self.observer.flush()

    def finish(self) -> dict[str, Any]:
        self.tracker.flush()
        self.observer.flush(end_of_input=True)
        t, l7 = self.tracker, self.l7
        return {"tracker": (dict(t.counters), dict(t.dropped), t.emitted, t.packets),
                "l7": (dict(l7.stats), dict(l7.emitted)), "observed": self.observer.observed}


SOCKET_EVENTS = [
    {"local_ip": "10.0.0.1", "local_port": 40000 + i, "remote_ip": "10.0.0.2", "remote_port": 80,
     "kind": kind, "pid": 100 + i, "process": "curl", "container_id": None, "segments": segments,
     "end_of_input": False}
    for i, kind, segments in ((0, "connect", None), (1, "connect", None), (0, "retransmit", 2))
]


def socket_events(rig: Rig) -> None:
    """A few kernel socket events (live captures only; none in the test captures)."""
    for event in SOCKET_EVENTS:
        rig.tracker.sockets.add(event)


def run(batches: list[tuple[np.ndarray, bytes]], cuts: set[int] = frozenset(),
        mode: str = "restore", sockets: bool = False, snapshots: list | None = None,
        check: Any = None) -> dict[str, Any]:
    """Feed ``batches``; after batch i in ``cuts``: snapshot, throw everything away, and
    go on with the decoded state (``mode="restore"``) or with fresh objects
    (``mode="drop"``, the control)."""
    options = L7Options()
    sink = Recorder()
    rig = Rig(sink, options).fresh(sockets)
    if sockets:
        socket_events(rig)
    for i, (headers, payloads) in enumerate(batches):
        rig.feed(headers, payloads)
        if i in cuts:
            data = encode_state(rig.state(), rig.externals())
            if snapshots is not None:
                snapshots.append(data)
            old = rig
            rig = Rig(sink, options)  # a new engine: none of the old objects survive
            if mode == "restore":
                rig.attach(decode_state(data, rig.externals()))
                if check is not None:
                    check(old, rig)
            else:
                rig.fresh(sockets)
            del old
    final = rig.finish()
    return {**sink.out, "final": [final]}


def batches_of(path: str, batch: int = 64) -> list[tuple[np.ndarray, bytes]]:
    return list(packet_batches(str(DATA / path), batch))


# --- the proof ---------------------------------------------------------------------------------


@pytest.mark.parametrize("capture", CAPTURES)
def test_restore_every_7_batches_gives_the_same_records(capture: str) -> None:
    batches = batches_of(capture)
    expected = run(batches)
    got = run(batches, cuts=set(range(6, len(batches), 7)))
    assert_same(expected, got, capture)


@pytest.mark.parametrize("capture", KEY_CAPTURES)
def test_restore_after_every_batch_gives_the_same_records(capture: str) -> None:
    batches = batches_of(capture, 16)
    expected = run(batches)
    got = run(batches, cuts=set(range(len(batches))))
    assert_same(expected, got, capture)


def _sessions(rig: Rig) -> list[Any]:
    return list(rig.tracker.sessions.values())


def mid_http_body(rig: Rig) -> bool:
    return any(isinstance(s.analyzer, HttpAnalyzer) and any(
        s.analyzer.in_body(d) for d in (0, 1)) for s in _sessions(rig))


def mid_http_head(rig: Rig) -> bool:
    return any(isinstance(s.analyzer, HttpAnalyzer) and any(
        s.analyzer.in_head(d) for d in (0, 1)) for s in _sessions(rig))


def mid_tls_handshake(rig: Rig) -> bool:
    return any(isinstance(s.analyzer, TlsAnalyzer) and s.analyzer.phase() not in ("start", "done")
               for s in _sessions(rig))


def pending_dns(rig: Rig) -> bool:
    return bool(rig.l7.dns.pending)


def cuts_where(batches: list, condition: Any, limit: int = 6) -> set[int]:
    """Batch indexes after which ``condition(rig)`` holds (up to ``limit``, spread out)."""
    rig = Rig(Recorder(), L7Options()).fresh()
    found = []
    for i, (headers, payloads) in enumerate(batches):
        rig.feed(headers, payloads)
        if condition(rig):
            found.append(i)
    step = max(1, len(found) // limit)
    return set(found[::step][:limit])


@pytest.mark.parametrize(("capture", "condition"), [
    ("chrissanders/http_espn.pcapng", mid_http_body),
    ("chrissanders/http_espn.pcapng", mid_http_head),
    ("chrissanders/http_post.pcapng", mid_http_body),
    ("chrissanders/http_dvwa_clearlogin.pcapng", mid_http_body),
    ("zeek-tls/tls-conn-with-extensions.pcap", mid_tls_handshake),
    ("zeek-tls/client-certificate.pcap", mid_tls_handshake),
    ("zeek-tls/hrr.pcap", mid_tls_handshake),
    ("chrissanders/dns_isp_hijack.pcapng", pending_dns),
    ("chrissanders/dns_query_response.pcapng", pending_dns),
    ("chrissanders/dns_tcp.pcapng", pending_dns),
])
def test_restore_at_chosen_moments(capture: str, condition: Any) -> None:
    batches = batches_of(capture, 1)  # a cut after any packet
    cuts = cuts_where(batches, condition)
    assert cuts, f"{capture}: no moment where {condition.__name__}"
    assert_same(run(batches), run(batches, cuts=cuts), f"{capture} at {sorted(cuts)}")


def long_messages() -> list[tuple[np.ndarray, bytes]]:
    """One keep-alive connection with messages of every framing (Content-Length,
    chunked, HEAD, close-delimited), tens of KiB long, in 1400-byte segments: a restore
    lands in heads and bodies of every kind."""
    big = bytes(range(256)) * 200  # 51 200 bytes
    chunked = b"".join(b"%x\r\n" % len(big[i:i + 3000]) + big[i:i + 3000] + b"\r\n"
                       for i in range(0, len(big), 3000)) + b"0\r\n\r\n"
    messages = [
        (0, b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(big) + big),
        (1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        (0, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n"),
        (1, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big),
        (0, b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n"),
        (1, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked),
        (0, b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n"),
        (1, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
        (0, b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n"),
        (1, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        (0, b"GET /eof HTTP/1.0\r\nHost: a\r\n\r\n"),
        (1, b"HTTP/1.0 200 OK\r\n\r\n" + big[:20000]),
    ]
    t = Traffic()
    segments = [(d, m[i:i + 1400]) for d, m in messages for i in range(0, len(m), 1400)]
    t.tcp(("10.0.0.1", 40000), ("10.0.0.2", 80), segments)
    headers, payloads = t.batch()
    return [(headers[i:i + 4], payloads) for i in range(0, len(headers), 4)]


def test_restore_in_long_http_messages() -> None:
    batches = long_messages()
    expected = run(batches)
    assert len(expected["wire.transactions"]) == 6
    assert all(r["error"] is None for _, r, _ in expected["wire.transactions"])
    got = run(batches, cuts=set(range(len(batches))))
    assert_same(expected, got, "long messages")


def test_a_dropped_state_fails_the_comparison() -> None:
    """The control: the same cuts with the state thrown away must lose records (else the
    comparison above could not fail)."""
    capture = "chrissanders/http_espn.pcapng"
    batches = batches_of(capture)
    cuts = set(range(6, len(batches), 7))
    expected = run(batches)
    dropped = run(batches, cuts=cuts, mode="drop")
    with pytest.raises(AssertionError):
        assert_same(expected, dropped, capture)
    # and in the records themselves, not only in the counters
    assert expected["wire.transactions"] != dropped["wire.transactions"]
    assert expected["wire.connections"] != dropped["wire.connections"]


def test_shared_references_stay_shared() -> None:
    batches = batches_of("chrissanders/http_espn.pcapng")
    seen = []

    def check(old: Rig, new: Rig) -> None:
        stats = new.l7.stats
        assert stats is not old.l7.stats
        assert new.l7.dns.stats is stats
        sessions = _sessions(new)
        for s in sessions:
            assert s.ctx.stats is stats and s.dispatcher is new.l7
            assert s.ctx.options is new.options  # an external: the restorer's own
            if s.analyzer is not None:
                assert s.analyzer.ctx is s.ctx
        # a connection is registered under both directions (the core's index); each
        # session's id comes from the tracker's reference to its connection, one object
        assert new.tracker.index_entries == 2 * new.tracker.open_connections
        for h, s in new.tracker.sessions.items():
            assert s.ctx.connection_id.__self__ is new.tracker.refs[h]
        seen.append(len(sessions))

    run(batches, cuts={3, 8}, check=check)
    assert seen and max(seen) > 0


# --- the layout ----------------------------------------------------------------------------------


ENGINE_OPTIONS = EngineOptions(l7=L7Options(), packet_partitions=1, observation_partitions=4)


def run_engine(batches: list[tuple[np.ndarray, bytes]], cuts: set[int] = frozenset(),
               sockets: bool = False, snapshots: list | None = None) -> dict[str, Any]:
    """As ``run``, with processors/engine.py's Engine and its snapshot/restore."""
    sink = RecordingSink()
    engine = Engine("local", 0, ENGINE_OPTIONS, sink)
    if sockets:
        for event in SOCKET_EVENTS:
            engine.socket_event(event)
        # and the kernel drops' join, holding a row (its fields are in the layout)
        engine.drops = DropJoin()
        engine.drops.add({"ts_us": 1, "first_ts_us": 1, "last_ts_us": 1, "reason": "netfilter_drop", "count": 1,
                          "protocol": 6, "src_ip": "192.0.2.1", "src_port": 1, "dst_ip": "192.0.2.2", "dst_port": 2})
    for i, (headers, payloads) in enumerate(batches):
        engine.feed(headers, payloads)
        if i in cuts:
            data = engine.snapshot()
            if snapshots is not None:
                snapshots.append(data)
            engine = Engine.restore(data, ENGINE_OPTIONS, sink)
    report = engine.finish()
    return {**sink.out, "report": [report]}


@pytest.mark.parametrize("capture", KEY_CAPTURES)
def test_engine_restore_gives_the_same_records(capture: str) -> None:
    batches = batches_of(capture)
    expected = run_engine(batches)
    got = run_engine(batches, cuts=set(range(0, len(batches), 3)), sockets=False)
    assert_same(expected, got, capture)


def test_an_engine_checkpointed_before_the_flow_table_restores_with_one() -> None:
    """A checkpoint of this format written before engines had ``flows`` (the UDP flows):
    restored, its engine has an empty flow table, and the flows after it are records."""
    batches = batches_of(KEY_CAPTURES[0])
    sink = RecordingSink()
    engine = Engine("local", 0, ENGINE_OPTIONS, sink)
    del engine.flows  # what the older code's engine was
    old = engine.snapshot()
    assert "flows" not in state_layout(old)["wirestream.processors.engine:Engine"]
    restored = Engine.restore(old, ENGINE_OPTIONS, sink)
    assert restored.flows.open_flows == 0
    for headers, payloads in batches:
        restored.feed(headers, payloads)
    restored.finish()
    assert sink.out.get(FLOWS) == run_engine(batches).get(FLOWS) and sink.out.get(FLOWS)


def test_l7_state_checkpointed_before_partition_sharing_restores_with_it() -> None:
    """A checkpoint written before the L7 dispatcher and its connections' contexts had
    ``shared`` (what a partition's connections share: Kafka's topic names): restored, the
    dispatcher and every open connection's context have one, and the records after it
    are the same."""
    batches = batches_of(KEY_CAPTURES[0])
    half = len(batches) // 2
    sink = RecordingSink()
    engine = Engine("local", 0, ENGINE_OPTIONS, sink)
    for headers, payloads in batches[:half]:
        engine.feed(headers, payloads)
    sessions = list(engine.tracker.sessions.values())
    assert sessions, "no open L7 session to checkpoint"
    del engine.tracker.l7.shared  # what the older code's dispatcher and contexts were
    for session in sessions:
        del session.ctx.shared
    old = engine.snapshot()
    assert "shared" not in state_layout(old)["wirestream.processors.l7.session:L7Dispatcher"]
    restored = Engine.restore(old, ENGINE_OPTIONS, sink)
    assert restored.tracker.l7.shared == {}
    assert all(s.ctx.shared == {} for s in restored.tracker.sessions.values())
    for headers, payloads in batches[half:]:
        restored.feed(headers, payloads)
    report = restored.finish()
    assert sink.out
    assert_same(run_engine(batches), {**sink.out, "report": [report]}, KEY_CAPTURES[0])


def full_run_layout() -> dict[str, list[str]]:
    """Classes and fields of an engine's state over a full-featured run: TCP, HTTP, TLS,
    DNS over UDP and TCP, the observer and the socket join, snapshotted after every batch."""
    merged: dict[str, set[str]] = {}
    for capture in KEY_CAPTURES:
        snapshots: list[bytes] = []
        run_engine(batches_of(capture, 16), cuts=set(range(10_000)), sockets=True,
                   snapshots=snapshots)
        for data in snapshots:
            for cls, fields in state_layout(data).items():
                merged.setdefault(cls, set()).update(fields)
    return {cls: sorted(fields) for cls, fields in sorted(merged.items())}


def test_layout_is_the_committed_one() -> None:
    layout = {"format_version": STATE_FORMAT_VERSION, "classes": full_run_layout()}
    if os.environ.get("WIRESTREAM_WRITE_LAYOUT"):
        LAYOUT_PATH.write_text(json.dumps(layout, indent=1) + "\n")
    committed = json.loads(LAYOUT_PATH.read_text())
    assert committed == layout, (
        "the classes or fields of the engine state changed: a checkpoint written by the "
        "previous code may not restore into this one (decode refuses unknown slots; a new "
        "field would be missing on restore). Consider raising STATE_FORMAT_VERSION in "
        f"processors/state_codec.py, then regenerate the layout file:\n  {REGENERATE}")


# --- the codec itself -----------------------------------------------------------------------------


class Color(Enum):
    RED = "red"


@dataclass(frozen=True)
class Frozen:
    a: int
    b: tuple


class Point(NamedTuple):
    x: int
    y: str


def test_every_int_of_the_small_value_table_round_trips() -> None:
    """The small ints (ports, windows, flags: -1024 to 65535) are written from a table
    made at the first encode; each entry, its edges and the values past them read back."""
    value = list(range(-1100, 65600))
    assert decode_state(encode_state(value, {}), {}) == value
    assert encode_state([65535], {}) != encode_state([65536], {})


def test_values_round_trip() -> None:
    shared = [1, 2]
    value = {
        "ints": [0, -1, 1 << 62, -(1 << 63), 1 << 64, -(1 << 100)],
        "floats": [0.5, float("inf")],
        "bools": (True, False, None),
        "bytes": (b"", b"\x00\xff", bytearray(b"ab")),
        "str": "é",
        "set": {1, 2, 3}, "frozenset": frozenset({"a"}),
        "deque": deque([1, 2], maxlen=5),
        "counter": Counter({"a": 2}), "od": OrderedDict([("z", 1), ("a", 2)]),
        "dd": defaultdict(list, {"k": [1]}),
        (1, b"x"): "tuple key", 7: "int key", b"k": "bytes key",
        "shared": (shared, shared),
        "np": np.int64(5),
    }
    got = decode_state(encode_state(value, {}), {})
    expected = dict(value, np=5)
    assert got == expected
    assert type(got["deque"]) is deque and got["deque"].maxlen == 5
    assert type(got["counter"]) is Counter and type(got["od"]) is OrderedDict
    assert got["dd"].default_factory is list and type(got["bytes"][2]) is bytearray
    assert got["shared"][0] is got["shared"][1]
    assert list(got["od"]) == ["z", "a"]


def test_cycles_and_processors_objects() -> None:
    sink = Recorder()
    rig = Rig(sink, L7Options()).fresh()
    a = {"self": None}
    a["self"] = a
    got = decode_state(encode_state({"a": a, "state": rig.state()}, rig.externals()),
                       {"sink": sink, "options": rig.options, "rig": rig})
    assert got["a"]["self"] is got["a"]
    tracker = got["state"]["tracker"]
    assert tracker.on_record.__self__ is rig and tracker.on_record.__func__ is Rig.on_record


def test_classes_of_other_modules_are_refused() -> None:
    # only classes of wirestream.processors are state; a test's dataclass is not
    with pytest.raises(StateError, match=r"root\['x'\]: unsupported type .*Frozen"):
        encode_state({"x": Frozen(1, ())}, {})


@pytest.mark.parametrize(("value", "message"), [
    ({"f": lambda: 1}, r"root\['f'\]: lambda"),
    ([1, (2, (x for x in []))], r"root\[1\]\[1\]: unsupported type generator"),
    ({"k": {"n": open}}, r"root\['k'\]\['n'\]: unsupported callable"),
    ({"c": Color.RED}, r"root\['c'\]: enum .*Color is not of wirestream.processors"),
    ({"p": Point(1, "a")}, r"root\['p'\]: unsupported type"),
    ({"m": memoryview(b"x")}, r"root\['m'\]: unsupported type memoryview"),
])
def test_unencodable_values_name_their_path(value: Any, message: str) -> None:
    with pytest.raises(StateError, match=message):
        encode_state(value, {})


def test_a_closure_in_the_state_names_its_path() -> None:
    sink = Recorder()
    rig = Rig(sink, L7Options()).fresh()
    rig.l7.dns.emit = lambda topic, key, record: None
    with pytest.raises(StateError, match=r"root\['tracker'\]\.l7\.dns\.emit: lambda"):
        encode_state(rig.state(), rig.externals())
    rig.l7.dns.emit = partial(print, "x")
    with pytest.raises(StateError, match=r"root\['tracker'\]\.l7\.dns\.emit\.func: unsupported callable"):
        encode_state(rig.state(), rig.externals())


def _small_state() -> tuple[bytes, dict[str, object]]:
    batches = batches_of("chrissanders/http_post.pcapng", 8)
    sink = Recorder()
    rig = Rig(sink, L7Options()).fresh()
    for b in batches[:3]:
        rig.feed(*b)
    return encode_state(rig.state(), rig.externals()), rig.externals()


def _reframe(body: bytes, version: int = STATE_FORMAT_VERSION) -> bytes:
    return struct.pack(">4sHI", b"WSES", version, zlib.crc32(body)) + body


def test_bad_bytes_are_state_errors() -> None:
    data, ext = _small_state()
    assert decode_state(data, ext) is not None
    for bad in (b"", b"WSES", b"garbage" * 10, data[:-1], data[: len(data) // 2], data + b"\0",
                _reframe(data[10:], version=STATE_FORMAT_VERSION + 1), bytearray(data[:20])):
        with pytest.raises(StateError):
            decode_state(bad, ext)
    with pytest.raises(StateError, match="another version"):
        decode_state(_reframe(data[10:], version=1), ext)
    with pytest.raises(StateError, match="external 'sink'"):
        decode_state(data, {"options": ext["options"], "rig": ext["rig"]})
    for cut in range(10, len(data), max(1, len(data) // 200)):  # truncated bodies, valid CRC
        with pytest.raises(StateError):
            decode_state(_reframe(data[10:cut]), ext)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_bodies_are_state_errors_or_states(data: st.DataObject) -> None:
    """Bytes changed inside the Avro body (the CRC recomputed, so that they reach the
    decoder): a state or a StateError, nothing else."""
    state, ext = _STATE
    body = bytearray(state[10:])
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    try:
        decode_state(_reframe(bytes(body)), ext)
    except StateError:
        pass


_STATE = _small_state()


def _obj_node(cls: str, fields: list[str], values: list[Any]) -> bytes:
    body = io.BytesIO()
    fastavro.schemaless_writer(body, state_codec._schema(), {
        "shapes": [{"cls": cls, "fields": fields}],
        "root": ("wirestream.state.Obj", {"shape": 0, "id": 0, "values": values})})
    return _reframe(body.getvalue())


@pytest.mark.parametrize(("cls", "fields", "message"), [
    ("os:system", [], "not a module of wirestream.processors"),
    ("builtins:object", [], "not a module of wirestream.processors"),
    ("wirestream.processors.k8s_enrichment:threading.Thread", ["x"], "not defined there"),
    ("wirestream.processors.connection_tracker:ConnRef", ["cid", "evil"], "no slot for \\['evil'\\]"),
    ("wirestream.processors.connection_tracker:ConnRef.__init__", [], "not a plain name"),
    ("wirestream.processors.nothere:X", [], "no such module"),
    ("wirestream.processors.findings:Finding", [], "not a state class"),
])
def test_decode_refuses_other_classes(cls: str, fields: list[str], message: str) -> None:
    with pytest.raises(StateError, match=message):
        decode_state(_obj_node(cls, fields, [None] * len(fields)), {})


@pytest.mark.parametrize("core_state", [b"", b"WSTK", b"garbage" * 20])
def test_a_damaged_tracker_state_is_a_state_error(monkeypatch: pytest.MonkeyPatch, core_state: bytes) -> None:
    """The compiled core's bytes inside a snapshot are checked too: damage is a StateError."""
    tracker = ConnectionTracker(print)
    ext = {"out": print}
    good = decode_state(encode_state(tracker, ext), ext)
    assert isinstance(good, ConnectionTracker) and good.open_connections == 0

    def bad(self: ConnectionTracker) -> None:
        self._core_state = core_state

    monkeypatch.setattr(ConnectionTracker, "_state_prepare", bad)
    with pytest.raises(StateError, match="connection tracker"):
        decode_state(encode_state(tracker, ext), ext)


def test_decode_refuses_dunder_methods_and_foreign_functions() -> None:
    def encoded(root: Any) -> bytes:
        body = io.BytesIO()
        fastavro.schemaless_writer(body, state_codec._schema(), {"shapes": [], "root": root})
        return _reframe(body.getvalue())

    ref = ("wirestream.state.Dict", {"kind": "dict", "id": 0, "factory": None, "keys": [], "values": []})
    with pytest.raises(StateError, match="not allowed"):
        decode_state(encoded(("wirestream.state.Method", {"obj": ref, "name": "__class__"})), {})
    with pytest.raises(StateError, match="not a module"):
        decode_state(encoded(("wirestream.state.Function", {"module": "os", "qualname": "system"})), {})
    with pytest.raises(StateError, match="not a module"):
        decode_state(encoded(("wirestream.state.Function", {"module": "builtins", "qualname": "eval"})), {})
    with pytest.raises(StateError, match="unknown node"):
        decode_state(encoded(("wirestream.state.Ref", {"id": 3})), {})
    with pytest.raises(StateError):
        decode_state(encoded(("wirestream.state.Dict", {"kind": "defaultdict", "id": 0, "keys": [], "values": [],
                                       "factory": ("wirestream.state.Function", {"module": "builtins",
                                                                "qualname": "print"})})), {})


def test_a_matcher_alone_round_trips() -> None:
    # the DNS matcher's core state (bytes, rust/src/l7/dns/state.rs) and its bound emit
    sink = Recorder()
    rig = Rig(sink, L7Options()).fresh()
    m: DnsMatcher = rig.l7.dns
    query = bytes.fromhex("abcd01000001000000000000") + b"\x01a\x07example\x00\x00\x01\x00\x01"
    m.on_datagram(1_000, "10.0.0.1", 40000, "10.0.0.53", 53, query)
    got = decode_state(encode_state(m, rig.externals()), rig.externals())
    assert got.pending == m.pending == 1 and got.emit.__self__ is not rig.l7
    assert got._core.snapshot() == m._core.snapshot() and got._core_state == b""


def test_a_damaged_dns_core_state_is_a_state_error() -> None:
    rig = Rig(Recorder(), L7Options()).fresh()
    m: DnsMatcher = rig.l7.dns
    m._core_state = b"WSDN" + bytes(20)
    with pytest.raises(StateError, match="dns matcher"):
        m._state_restored()


def test_the_bytes_are_canonical_avro_of_the_schema() -> None:
    """The codec writes and reads Avro binary itself (for speed); fastavro, reading the
    bytes with schemas/engine_state.avsc and writing the datum again, gives the same
    bytes: a later engine can use any Avro library."""
    snapshots: list[bytes] = []
    for capture in ("chrissanders/http_espn.pcapng", "zeek-tls/hrr.pcap",
                    "chrissanders/dns_tcp.pcapng"):
        run(batches_of(capture, 16), cuts={1, 3, 8}, sockets=True, snapshots=snapshots)
    snapshots.append(encode_state({"v": [1.5, -(1 << 70), bytearray(b"x"), Counter(a=1),
                                         deque([1], maxlen=3), frozenset({2})]}, {}))
    for data in snapshots:
        body = io.BytesIO()
        fastavro.schemaless_writer(body, state_codec._schema(), state_codec.read_avro(data))
        assert body.getvalue() == data[10:]


def test_a_restore_inside_a_long_chunked_body_gives_the_same_records() -> None:
    """The core's parser state is plain data: a restore in the middle of a chunked body
    of any length (here 1 MiB, in chunks of every size, cut inside chunk-size lines,
    chunk data and the line ends) goes on exactly, without resynchronising."""
    big = bytes(range(256)) * 4096  # 1 MiB
    sizes = [1, 7, 4096, 1400, 13, 65536, 3000]
    parts, i, k = [], 0, 0
    while i < len(big):
        n = sizes[k % len(sizes)]
        parts.append(b"%x;k=%d\r\n" % (len(big[i:i + n]), k) + big[i:i + n] + b"\r\n")
        i += n
        k += 1
    chunked = b"".join(parts) + b"0\r\nX-Sum: 1\r\n\r\n"
    messages = [
        (0, b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n"),
        (1, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked),
        (0, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n"),
        (1, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    ]
    t = Traffic()
    segments = [(d, m[i:i + 1400]) for d, m in messages for i in range(0, len(m), 1400)]
    t.tcp(("10.0.0.1", 40000), ("10.0.0.2", 80), segments)
    headers, payloads = t.batch()
    batches = [(headers[i:i + 40], payloads) for i in range(0, len(headers), 40)]
    expected = run(batches)
    txns = [r for _, r, _ in expected["wire.transactions"]]
    assert [(r["path"], r["error"], r["response_body_size"]) for r in txns] == [
        ("/chunked", None, len(big)), ("/after", None, 5)]
    got = run(batches, cuts=set(range(len(batches))))
    assert_same(expected, got, "long chunked body")
    assert not any(k.startswith("http_parse_error") or k == "http_gaps"
                   for k in got["final"][0]["l7"][0])


def test_processors_namedtuples_and_frozen_dataclasses_round_trip() -> None:
    from wirestream.processors.l7.dns import DnsAnswer

    answer = DnsAnswer(*[f"f{i}" if f != "ttl" else 60 for i, f in enumerate(DnsAnswer._fields)])
    options = L7Options(redact=False, body_cap=10)
    got = decode_state(encode_state({"a": [answer, answer], "o": (options, options)}, {}), {})
    assert got["a"][0] == answer and type(got["a"][0]) is DnsAnswer
    assert got["o"][0] == options and got["o"][0] is got["o"][1]  # a dataclass is shared
    with pytest.raises(AttributeError, match="cannot assign"):
        got["o"][0].redact = True  # still frozen
