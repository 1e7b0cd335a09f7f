"""Wireshark as the referee: per-stream figures from ``tshark`` for a capture file.

``tshark -2`` (two passes, as the Wireshark GUI) gives, for every frame, the conversation's
``tcp.completeness`` and ``initial_rtt`` as the user sees them; the per-frame analysis
flags are counted per ``tcp.stream``.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache

from helpers import TSHARK, tshark_rows

FLAG_FIELDS = {
    "retransmissions": "tcp.analysis.retransmission",
    "fast_retransmissions": "tcp.analysis.fast_retransmission",
    "spurious_retransmissions": "tcp.analysis.spurious_retransmission",
    "duplicate_acks": "tcp.analysis.duplicate_ack",
    "out_of_order": "tcp.analysis.out_of_order",
    "lost_segments": "tcp.analysis.lost_segment",
    "zero_window": "tcp.analysis.zero_window",
    "zero_window_probes": "tcp.analysis.zero_window_probe",
    "window_full": "tcp.analysis.window_full",
    "keep_alives": "tcp.analysis.keep_alive",
}


@dataclass
class Stream:
    stream: int
    first_ts_us: int = 0
    endpoints: frozenset = frozenset()
    frames: int = 0
    completeness: int = 0
    initial_rtt_us: int | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FLAG_FIELDS, 0))
    ack_rtts_us: list[float] = field(default_factory=list)


def _us(epoch: str) -> int:
    """frame.time_epoch (seconds, up to ns digits) -> integer µs, truncated like the producer."""
    return int(Decimal(epoch) * 1_000_000)


STREAM_FIELDS = [
    "tcp.stream", "frame.time_epoch", "ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst",
    "tcp.dstport", "tcp.completeness", "tcp.analysis.initial_rtt", "tcp.analysis.ack_rtt",
    *FLAG_FIELDS.values(),
]


def tshark_tcp_frames(path: str, fields: list[str]) -> list[dict[str, str]]:
    """One dict per TCP frame (``tshark -2``, first occurrence of each field)."""
    (rows,) = tshark_rows([path], fields, "tcp && !icmp && !icmpv6", ("-2", "-E", "occurrence=f"))
    return [dict(zip(fields, row, strict=True)) for row in rows]


def tshark_streams(path: str) -> dict[int, Stream]:
    return streams_from_rows(tshark_tcp_frames(path, STREAM_FIELDS))


def streams_from_rows(rows: list[dict[str, str]]) -> dict[int, Stream]:
    streams: dict[int, Stream] = {}
    for row in rows:
        sid = int(row["tcp.stream"])
        s = streams.get(sid)
        src = row["ip.src"] or row["ipv6.src"]
        dst = row["ip.dst"] or row["ipv6.dst"]
        if s is None:
            s = streams[sid] = Stream(sid, _us(row["frame.time_epoch"]),
                                      frozenset({(src, int(row["tcp.srcport"])), (dst, int(row["tcp.dstport"]))}))
        s.frames += 1
        s.completeness = int(row["tcp.completeness"] or 0)  # the last frame's value wins
        if row["tcp.analysis.initial_rtt"]:
            irtt = round(Decimal(row["tcp.analysis.initial_rtt"]) * 1_000_000)
            # tshark -2 can show a negative iRTT when a SYN comes after the first ACK (its
            # 2nd pass sees the later SYN's time); a one-pass stream processor cannot.
            if irtt > 0:
                s.initial_rtt_us = irtt
        if row["tcp.analysis.ack_rtt"]:
            s.ack_rtts_us.append(float(Decimal(row["tcp.analysis.ack_rtt"]) * 1_000_000))
        for name, fld in FLAG_FIELDS.items():
            if row[fld]:
                s.counts[name] += 1
    return streams


def tshark_conversation_count(path: str) -> int:
    """Rows of ``tshark -q -z conv,tcp`` (one per tcp.stream in Wireshark 4.0)."""
    out = subprocess.run([TSHARK, "-n", "-q", "-r", path, "-z", "conv,tcp"],
                         capture_output=True, text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if "<->" in line)


def match_records(records: list[dict], streams: dict[int, Stream]) -> dict[int, dict]:
    """Pair each tshark stream with our connection record (same endpoints, same first packet)."""
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        ep = frozenset({(r["client_ip"], r["client_port"]), (r["server_ip"], r["server_port"])})
        by_key[(ep, r["start_ts_us"])].append(r)
    matched = {}
    for sid, s in streams.items():
        candidates = by_key.get((s.endpoints, s.first_ts_us), [])
        if candidates:
            matched[sid] = candidates.pop(0)
    return matched


# --- one call for every per-stream and per-direction check (tests/test_tcp_edge_cases.py) ---

DIRECTION_FIELDS = ["tcp.len", "tcp.window_size"]


@dataclass
class Direction:
    """One side of a tcp.stream, as tshark shows its frames."""

    packets: int = 0
    bytes: int = 0
    windows: list[int] = field(default_factory=list)  # tcp.window_size (after scaling)


def directions_from_rows(rows: list[dict[str, str]]) -> dict[tuple[int, tuple[str, int]], Direction]:
    """(tcp.stream, (sender address, sender port)) -> that sender's frames."""
    out: dict[tuple[int, tuple[str, int]], Direction] = defaultdict(Direction)
    for row in rows:
        src = (row["ip.src"] or row["ipv6.src"], int(row["tcp.srcport"]))
        d = out[(int(row["tcp.stream"]), src)]
        d.packets += 1
        d.bytes += int(row["tcp.len"] or 0)
        d.windows.append(int(row["tcp.window_size"]))
    return out


def assert_matches_tshark(path: str, records: list[dict] | None = None,
                          skip_streams: Collection[int] = ()) -> tuple[dict[int, Stream], dict[int, dict]]:
    """Our records for ``path`` agree with tshark on every stream, as in test_tcp_oracle,
    plus per direction: packets, payload bytes, and min/avg of ``tcp.window_size``.

    ``records`` defaults to ``local_connections(path)``. Streams in ``skip_streams`` are not
    compared (nor is the record count then). Returns (tshark streams, stream -> record).
    """
    import pytest

    if records is None:
        from local_pipeline import local_connections

        records = local_connections(path)
    rows = tshark_tcp_frames(path, STREAM_FIELDS + DIRECTION_FIELDS)
    streams = streams_from_rows(rows)
    directions = directions_from_rows(rows)
    name = path.rsplit("/", 1)[-1]
    if not skip_streams:
        assert len(records) == len(streams), f"{len(records)} records, {len(streams)} tcp.streams in {name}"
    matched = match_records(records, streams)
    for sid, s in streams.items():
        if sid in skip_streams:
            continue
        where = f"tcp.stream {sid} of {name}"
        assert sid in matched, f"{where} has no record"
        r = matched[sid]
        assert r["lifecycle"] == s.completeness, f"lifecycle on {where}"
        if s.initial_rtt_us is None:
            assert r["handshake_rtt_us"] is None, f"handshake_rtt_us on {where}"
        else:
            assert r["handshake_rtt_us"] == pytest.approx(s.initial_rtt_us, abs=1), f"handshake_rtt_us on {where}"
        for fname in FLAG_FIELDS:
            assert r[fname] == s.counts[fname], f"{fname} on {where}"
        assert r["packets_c2s"] + r["packets_s2c"] == s.frames, f"packets on {where}"
        assert r["rtt_samples"] == len(s.ack_rtts_us), f"rtt_samples on {where}"
        if s.ack_rtts_us:
            assert r["rtt_min_us"] == pytest.approx(min(s.ack_rtts_us), abs=1), f"rtt_min_us on {where}"
            assert r["rtt_max_us"] == pytest.approx(max(s.ack_rtts_us), abs=1), f"rtt_max_us on {where}"
            assert r["rtt_avg_us"] == pytest.approx(sum(s.ack_rtts_us) / len(s.ack_rtts_us), abs=1), \
                f"rtt_avg_us on {where}"
        for side, peer in (("c2s", (r["client_ip"], r["client_port"])), ("s2c", (r["server_ip"], r["server_port"]))):
            d = directions.get((sid, peer), Direction())
            assert r[f"packets_{side}"] == d.packets, f"packets_{side} on {where}"
            assert r[f"bytes_{side}"] == d.bytes, f"bytes_{side} on {where}"
            if d.windows:
                assert r[f"min_window_{side}"] == min(d.windows), f"min_window_{side} on {where}"
                assert r[f"avg_window_{side}"] == pytest.approx(sum(d.windows) / len(d.windows)), \
                    f"avg_window_{side} on {where}"
            else:
                assert r[f"min_window_{side}"] is None and r[f"avg_window_{side}"] is None, where
    return streams, matched


# --- L7: HTTP pairs, DNS answers and TLS handshakes as tshark reports them ----------------

AGG = "\x1f"  # tshark -E aggregator: a byte that cannot occur in a URI or a name


L7_FIELDS = [
    "frame.number", "tcp.stream", "ip.src", "ipv6.src", "ip.dst", "ipv6.dst",
    "http.request.method", "http.request.uri", "http.request_in", "http.response.code",
    "dns.flags.response", "dns.id", "dns.qry.name", "dns.flags.rcode", "dns.time",
    "dns.response_to", "dns.retransmission",
    "tls.handshake.type", "tls.handshake.extensions_server_name", "tls.handshake.version",
    "tls.handshake.extensions.supported_version", "tls.handshake.ciphersuite",
]
L7_FILTER = ("http.request || http.response || (dns.flags.response == 1 && dns.time) "
             "|| (dns.flags.response == 0 && (udp.port == 53 || tcp.port == 53)) "
             "|| tls.handshake.type == 1 || tls.handshake.type == 2")


@cache
def tshark_l7_rows(path: str) -> list[dict[str, list[str]]]:
    """One tshark run per capture for all L7 checks: one dict per HTTP/DNS/TLS-handshake
    frame; each field is the list of all its occurrences in the frame."""
    (rows,) = tshark_rows([path], L7_FIELDS, L7_FILTER, ("-E", "occurrence=a", "-E", f"aggregator={AGG}"))
    return [{f: (v.split(AGG) if v else []) for f, v in zip(L7_FIELDS, values, strict=True)} for values in rows]


def tshark_http_pairs(path: str, unanswered: bool = False) -> dict[int, list[tuple[str, str, int | None]]]:
    """tcp.stream -> every (method, uri, status) request/response pair tshark pairs, and
    with ``unanswered`` every request no response pairs with, as (method, uri, None).

    A response names its request's frame (``http.request_in``); a frame may carry several
    pipelined requests, taken in order by the responses that point to that frame.
    """
    requests: dict[int, list[tuple[str, str]]] = {}
    stream_of: dict[int, int] = {}
    rows = tshark_l7_rows(path)
    for row in rows:
        if not row["http.request.method"]:
            continue
        frame = int(row["frame.number"][0])
        stream_of[frame] = int(row["tcp.stream"][0])
        methods, uris = row["http.request.method"], row["http.request.uri"]
        # a request line without a URI (a bare "OPTIONS", which tshark still shows as a
        # request) has no http.request.uri: an empty one, rather than no request at all
        requests[frame] = list(zip(methods, [*uris, *[""] * (len(methods) - len(uris))], strict=False))
    pairs: dict[int, list[tuple[str, str, int | None]]] = defaultdict(list)
    for row in rows:
        if not row["http.response.code"]:
            continue
        stream = int(row["tcp.stream"][0])
        for req_in, code in zip(row["http.request_in"], row["http.response.code"], strict=False):
            reqs = requests.get(int(req_in))
            if reqs:
                method, uri = reqs.pop(0)
                pairs[stream].append((method, uri, int(code)))
    if unanswered:
        for frame, left in requests.items():
            pairs[stream_of[frame]].extend((method, uri, None) for method, uri in left)
    return dict(pairs)


@dataclass
class DnsAnswer:
    client: str
    server: str
    query_id: int
    name: str
    rcode: int
    time_us: int


def tshark_dns_answers(path: str) -> list[DnsAnswer]:
    """Every DNS response tshark matched to its query (it then shows ``dns.time``)."""
    out = []
    for row in tshark_l7_rows(path):
        if not row["dns.time"]:
            continue
        server = (row["ip.src"] or row["ipv6.src"])[0]
        client = (row["ip.dst"] or row["ipv6.dst"])[0]
        # DNS over TCP can carry several messages in one frame: one answer per message.
        for i, qid in enumerate(row["dns.id"]):
            if i >= len(row["dns.time"]):
                break
            out.append(DnsAnswer(client, server, int(qid, 0), row["dns.qry.name"][i] if i < len(row["dns.qry.name"]) else "",
                                 int(row["dns.flags.rcode"][i]),
                                 round(Decimal(row["dns.time"][i]) * 1_000_000)))
    return out


def tshark_dns_unanswered(path: str) -> list[tuple[str, str, int, str]]:
    """(client, server, id, name) of every DNS query on port 53 that no response of the
    capture answers (none names it in ``dns.response_to``) and that tshark does not call a
    retransmission (a repeat within ``dns.retransmission_timer``, 5 s)."""
    rows = tshark_l7_rows(path)
    answered = {int(f) for row in rows for f in row["dns.response_to"]}
    out = []
    for row in rows:
        if not row["dns.id"] or "1" in row["dns.flags.response"]:
            continue
        # Several messages in one frame (DNS over TCP) cannot be told apart by these
        # per-frame fields; no capture here has such a query frame.
        assert len(row["dns.id"]) == 1, f"frame {row['frame.number']}: several DNS queries in one frame"
        if int(row["frame.number"][0]) in answered or row["dns.retransmission"]:
            continue
        client = (row["ip.src"] or row["ipv6.src"])[0]
        server = (row["ip.dst"] or row["ipv6.dst"])[0]
        out.append((client, server, int(row["dns.id"][0], 0), row["dns.qry.name"][0]))
    return out


@dataclass
class TlsHandshake:
    stream: int
    server_name: str | None = None
    version: int | None = None       # negotiated, as a number (0x0304 for TLS 1.3)
    cipher_suite: int | None = None


def tshark_tls_handshakes(path: str) -> dict[int, TlsHandshake]:
    """tcp.stream -> SNI of the ClientHello and version/cipher suite of the ServerHello."""
    out: dict[int, TlsHandshake] = {}
    for row in tshark_l7_rows(path):
        if not row["tls.handshake.type"]:
            continue
        stream = int(row["tcp.stream"][0])
        h = out.setdefault(stream, TlsHandshake(stream))
        types = row["tls.handshake.type"]
        if "1" in types and h.server_name is None and row["tls.handshake.extensions_server_name"]:
            h.server_name = row["tls.handshake.extensions_server_name"][0]
        if "2" in types:
            # ClientHello and ServerHello never share a frame (they go opposite ways). The
            # last ServerHello wins: a HelloRetryRequest is a ServerHello too. TLS 1.3 puts
            # the real version in supported_versions; legacy_version says 1.2.
            sv = row["tls.handshake.extensions.supported_version"]
            h.version = int((sv or row["tls.handshake.version"])[-1], 0)
            h.cipher_suite = int(row["tls.handshake.ciphersuite"][-1], 0)
    return out
