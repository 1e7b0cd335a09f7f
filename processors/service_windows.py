"""Per-service tumbling windows in event time, with t-digest percentiles, and detections.

Input: ``wire.observations`` batches (``processors.observations``), keyed by service, so
one task sees all of a service. Output: one ``wire.service-metrics`` record per source,
service and window, and the ``wire.alerts`` of that window (``processors.detections``).

Event time is capture time. A window ``[start, start + length)`` closes when the
watermark passes its end plus the allowed lateness. The watermark of a source is the
*lowest* of its packet partitions' watermarks (each batch carries its sender's), because
packet partitions are processed at different speeds. An observation for a window that
has already closed is counted (``late_observations``), not added.

State lives in a key-value store (the Faust table ``service-windows``; a dict in tests),
written after every batch: one entry per open window and one per source (watermarks,
packet partitions done, last health band per service). Every entry remembers the offset
of the last batch it took in, so a batch that is read again after a restart (Kafka
delivers at least once) changes nothing: a worker killed mid-window and replaced gives the
same windows as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import struct
from array import array
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from fastdigest import TDigest

from wirestream.topics import ALERTS, SERVICE_METRICS

from .detections import Thresholds, WindowCounts, detect, detect_imbalance
from .findings import FINDING_COUNTERS, HEALTH_BANDS, health_band
from .observations import (
    CONNECTION,
    DNS_QUERY,
    NODE_PAIR,
    OPERATION,
    QUERY_ERROR,
    TRANSACTION,
    ZONE_PAIR,
    topology_scope,
    unpack_rows,
)
from .tcp_connection import State

log = logging.getLogger(__name__)
Emit = Callable[[str, str | None, dict[str, Any]], None]

#: digest size: 1000 centroids keep P99 within ~0.2 % on 100k lognormal values
DIGEST_CENTROIDS = 1000
#: values a window's digest takes in at once (PartitionDigest): a merge costs ~0.4 ms
#: (0.57 us a value at 1,000, 0.39 at 2,000), and the values waiting are stored with the
#: window after every batch (8 bytes each: at most 16 KB a partition, beside its digest's 16)
PENDING_VALUES = 2 * DIGEST_CENTROIDS
#: per window, distinct recent (client, request) pairs followed for retry detection
MAX_RETRY_KEYS = 20_000
#: per window, the server pods (replicas) whose share is kept; more are counted together
#: under ``backends_over_limit`` (a service of 1,000 replicas is not one window's business)
MAX_BACKENDS = 1000

_STATE = struct.Struct("<II")  # window state: JSON length, (before per-partition digests) the RTT digest's
#: connection states counted per window (an observation's state is the record's string)
_CONNECTION_STATES = tuple(s.value for s in (State.RESET, State.REFUSED,
                                             State.INCOMPLETE_HANDSHAKE, State.HALF_OPEN))
_COUNTS = ("connections", "requests", "errors_4xx", "errors_5xx", "status_429", "retrans_data",
           "data_packets", "zero_window_connections", "zero_windows", "no_response",
           "dns_queries", "bytes", "backends_over_limit", "slow_requests", "query_errors", *_CONNECTION_STATES)


@dataclass
class WindowOptions:
    length_us: int = 10_000_000
    #: how far behind the watermark an observation may be and still count
    lateness_us: int = 15_000_000
    thresholds: Thresholds = field(default_factory=Thresholds)


class Window:
    """The aggregates of one service in one window."""

    def __init__(self, start_us: int, length_us: int) -> None:
        self.start_us = start_us
        self.length_us = length_us
        self.offset = -1  # of the last batch taken in
        self.counts: dict[str, int] = dict.fromkeys(_COUNTS, 0)
        #: the digests, per packet partition: the observations of a service come from every
        #: packet partition, interleaved as their workers happen to run, and a t-digest
        #: past its centroid budget depends on the order of its values (two runs of one
        #: capture gave percentiles that differed in the decimals). Kept apart
        #: (:class:`PartitionDigest`: a function of its partition's values alone) and merged
        #: in partition order when the window is emitted (:meth:`digest`), they give the
        #: same percentiles whatever the interleaving, a replay after a restart too.
        self.rtt: dict[int, PartitionDigest] = {}
        self.latency: dict[int, PartitionDigest] = {}
        self.clients: dict[str, dict[str, Any]] = {}
        #: server pod -> [requests, connections, bytes of its connections]
        self.backends: dict[str, list[int]] = {}
        self.last_request: dict[tuple[str, int], int] = {}  # (client, request crc) -> ts last seen
        self.newest = 0  # latest request time seen
        self.pruned_at = 0

    def add(self, row: tuple, t: Thresholds, partition: int = 0) -> None:
        """Add one observation (a ``processors.observations.ROW_DTYPE`` row) sent by
        packet partition ``partition``."""
        (kind, findings, status, _service, client, state, request, ts, value,
         retrans_data, data_packets, zero_window, backend, nbytes) = row
        c = self.counts
        if backend:
            b = self.backends.get(backend)
            if b is None and len(self.backends) < MAX_BACKENDS:
                b = self.backends[backend] = [0, 0, 0]
            if b is None:
                c["backends_over_limit"] += 1
            elif kind == CONNECTION:
                b[1] += 1
                b[2] += nbytes
            else:
                b[0] += 1
        if kind == TRANSACTION:
            c["requests"] += 1
            if 400 <= status < 500:
                c["errors_4xx"] += 1
                if status in (401, 403):
                    self._bump(client, "auth_failures")
                elif status == 429:
                    c["status_429"] += 1
                    self._bump(client, "rate_limited")
            elif status >= 500:
                c["errors_5xx"] += 1
            if state == "no_response":
                c["no_response"] += 1
            elif value >= 0:
                _part(self.latency, partition).update(float(value))
                if value >= t.slow_request_us:
                    c["slow_requests"] += 1
            if state == QUERY_ERROR:
                c["query_errors"] += 1
            if findings:
                for bit, name in FINDING_COUNTERS:
                    if findings & bit:
                        self._bump(client, name)
            if ts > self.newest:
                self.newest = ts
            key = (client, request)
            last = self.last_request.get(key)
            if last is not None and 0 <= ts - last <= t.retry_interval_us:
                self._bump(client, "retries")
            if last is not None or len(self.last_request) < MAX_RETRY_KEYS:
                self.last_request[key] = ts
        elif kind == CONNECTION:
            c["connections"] += 1
            c["bytes"] += nbytes
            c["retrans_data"] += retrans_data
            c["data_packets"] += data_packets
            if zero_window:
                c["zero_window_connections"] += 1
                c["zero_windows"] += zero_window
            if state in _CONNECTION_STATES:
                c[state] += 1
            if value >= 0:
                _part(self.rtt, partition).update(float(value))
        elif kind == DNS_QUERY:
            # A resolver's queries are its requests; an unanswered one has no latency.
            c["dns_queries"] += 1
            c["requests"] += 1
            if value < 0:
                c["no_response"] += 1
            else:
                _part(self.latency, partition).update(float(value))
                if value >= t.slow_request_us:
                    c["slow_requests"] += 1
            if state == "NXDOMAIN":
                self._bump(client, "nxdomain")

    @staticmethod
    def digest(parts: dict[int, PartitionDigest]) -> TDigest:
        """The window's digest of one measure: its partitions' merged in partition order."""
        merged = None
        for p in sorted(parts):
            d = parts[p].digest()
            merged = d if merged is None else merge_digests(merged, d)
        return merged if merged is not None else TDigest(max_centroids=DIGEST_CENTROIDS)

    def _bump(self, ip: str, counter: str) -> dict[str, Any]:
        """Count one of ``counter`` for client ``ip`` (clients with nothing to count are
        not kept: the state is written after every batch)."""
        k = self.clients.get(ip)
        if k is None:
            k = self.clients[ip] = {}
        k[counter] = k.get(counter, 0) + 1
        return k

    def prune(self, t: Thresholds) -> None:
        """Forget requests too old to be retried again: once per retry interval of capture
        time (amortised O(1) per request), keeping two intervals (observations from
        different packet partitions arrive slightly out of order)."""
        if self.newest - self.pruned_at < t.retry_interval_us:
            return
        horizon = self.newest - 2 * t.retry_interval_us
        self.last_request = {k: ts for k, ts in self.last_request.items() if ts >= horizon}
        self.pruned_at = self.newest

    # -- the store keeps bytes: a small JSON part, then the partitions' digests
    # (PartitionDigest.to_bytes), in the order the JSON part's "digests" lists them
    # ([measure, packet partition, length]). The recent requests for retry detection are
    # not stored: they are many, they matter for a second, and after a restart retries are
    # counted again from there.

    def dumps(self) -> bytes:
        parts = [(name, p, d.to_bytes()) for name, digests in (("rtt", self.rtt), ("latency", self.latency))
                 for p, d in sorted(digests.items())]
        head = json.dumps({"start": self.start_us, "length": self.length_us, "offset": self.offset,
                           "counts": self.counts, "clients": self.clients, "backends": self.backends,
                           "digests": [[name, p, len(b)] for name, p, b in parts]},
                          separators=(",", ":")).encode()
        return b"".join((_STATE.pack(len(head), 0), head, *(b for _, _, b in parts)))

    @classmethod
    def loads(cls, data: bytes) -> Window:
        n_head, n_rtt = _STATE.unpack_from(data)
        pos = _STATE.size
        d = json.loads(data[pos:pos + n_head])
        pos += n_head
        w = cls(d["start"], d["length"])
        w.offset = d["offset"]
        w.counts.update(d["counts"])
        w.clients = d["clients"]
        w.backends = d.get("backends", {})  # a window stored before replicas were counted
        if "digests" not in d:  # stored before the digests were kept per packet partition
            w.rtt = {-1: PartitionDigest(bytes(data[pos:pos + n_rtt]))}
            w.latency = {-1: PartitionDigest(bytes(data[pos + n_rtt:]))}
            return w
        for name, p, n in d["digests"]:
            (w.rtt if name == "rtt" else w.latency)[p] = PartitionDigest.from_bytes(data[pos:pos + n])
            pos += n
        return w

    def detection_input(self) -> WindowCounts:
        return WindowCounts(self.start_us, self.length_us, self.counts, self.clients)

    def spread(self) -> dict[str, Any]:
        """How the window's requests (or, for a service without requests, its connections)
        spread over the server pods: per pod its counts, the imbalance (the busiest pod's
        load over the mean; None below two pods), the busiest pod and its share."""
        backends = self.backends
        basis = 0 if any(b[0] for b in backends.values()) else 1
        total = sum(b[basis] for b in backends.values())
        rows = [{"pod": pod, "requests": b[0], "connections": b[1], "bytes": b[2]}
                for pod, b in sorted(backends.items())]
        out: dict[str, Any] = {"backends": rows, "backend_imbalance": None, "hot_backend": None,
                               "hot_backend_share": None}
        if len(backends) >= 2 and total:
            hot = max(sorted(backends), key=lambda pod: backends[pod][basis])
            out.update(backend_imbalance=backends[hot][basis] / (total / len(backends)), hot_backend=hot,
                       hot_backend_share=backends[hot][basis] / total)
        return out

    def record(self, source_id: str, service: str) -> dict[str, Any]:
        c = self.counts
        rate = c["retrans_data"] / c["data_packets"] if c["data_packets"] else 0.0
        scope = topology_scope(service)
        rec: dict[str, Any] = {
            "service": service,
            "source_id": source_id,
            "window_start_ts_us": self.start_us,
            "window_end_ts_us": self.start_us + self.length_us,
            "connections": c["connections"],
            "requests": c["requests"],
            "errors_4xx": c["errors_4xx"],
            "errors_5xx": c["errors_5xx"],
            "status_429": c["status_429"],
            "retransmission_rate": rate,
            "health": health_band(rate),
        }
        for name, parts in (("handshake_rtt", self.rtt), ("latency", self.latency)):
            digest = self.digest(parts)
            empty = digest.is_empty()
            for q in (50, 90, 99):
                rec[f"{name}_p{q}_us"] = None if empty else digest.quantile(q / 100)
            rec[f"{name}_digest"] = None if empty else digest_json(digest)
        rec["bytes"] = c["bytes"]
        rec["slow_requests"] = c["slow_requests"]
        rec["query_errors"] = c["query_errors"]
        rec["scope"] = scope or "service"
        rec.update(operation=None, operation_protocol=None, operation_service=None)
        if scope is None:
            rec.update(self.spread())
        elif scope == "operation":
            # op:SERVICE>PROTOCOL:OPERATION (">" and ":" are in no operation name)
            rec.update(backends=[], backend_imbalance=None, hot_backend=None, hot_backend_share=None)
            of, _, operation = service[len(OPERATION):].rpartition(">")
            protocol, _, name = operation.partition(":")
            rec.update(operation=name, operation_protocol=protocol, operation_service=of)
        else:
            rec.update(backends=[], backend_imbalance=None, hot_backend=None, hot_backend_share=None)
            client, server = service[len(ZONE_PAIR if scope == "zone_pair" else NODE_PAIR):].split(">", 1)
            side = "zone" if scope == "zone_pair" else "node"
            rec[f"client_{side}"], rec[f"server_{side}"] = client, server
            if scope == "zone_pair":
                rec["cross_zone"] = client != server
        return rec


class PartitionDigest:
    """The t-digest of one measure of one packet partition's observations in a window,
    a function of those values alone: not of the batches they came in, nor of when or how
    often the window was stored. A fastdigest object updated value by value is no such
    thing (its ``to_bytes`` compresses what it has buffered, so where the window was
    stored shows), so no object lives on: the values wait here, and every
    :data:`PENDING_VALUES` of them are merged at once (:func:`merge_digests`) into the
    digest kept as bytes."""

    __slots__ = ("compressed", "pending")
    _HEAD = struct.Struct("<I")  # length of the compressed digest's bytes (0: none yet)

    def __init__(self, compressed: bytes = b"", pending: list[float] | None = None) -> None:
        self.compressed = compressed
        self.pending: list[float] = pending if pending is not None else []

    def update(self, value: float) -> None:
        pending = self.pending
        pending.append(value)
        if len(pending) >= PENDING_VALUES:
            self.compressed = self._merged().to_bytes()
            self.pending = []

    def _merged(self) -> TDigest:
        """A new object of every value: the compressed ones and the pending ones."""
        if not self.pending:
            if not self.compressed:
                return TDigest(max_centroids=DIGEST_CENTROIDS)
            return TDigest.from_bytes(self.compressed)
        new = TDigest.from_values(self.pending, max_centroids=DIGEST_CENTROIDS)
        return new if not self.compressed else merge_digests(TDigest.from_bytes(self.compressed), new)

    def digest(self) -> TDigest:
        """Every value's digest (a new object; this one unchanged)."""
        return self._merged()

    def to_bytes(self) -> bytes:
        return b"".join((self._HEAD.pack(len(self.compressed)), self.compressed,
                         array("d", self.pending).tobytes()))

    @classmethod
    def from_bytes(cls, data: bytes) -> PartitionDigest:
        (n,) = cls._HEAD.unpack_from(data)
        start = cls._HEAD.size
        pending = array("d")
        pending.frombytes(data[start + n:])
        return cls(bytes(data[start:start + n]), pending.tolist())


def merge_digests(a: TDigest, b: TDigest) -> TDigest:
    """``a`` and ``b`` merged into a new digest, always the same for the same two: their
    centroids as the weighted values of a new digest (min, max, sum and count kept).

    Not fastdigest's ``merge``: measured here (fastdigest 0.12), the same two digests
    merged 300 times in one process, with other digests made in between, gave two
    different results, about a third of the time the other one (the percentiles of one
    capture's windows differed from run to run). ``from_values`` gave the same digest
    every time, weighted too; the quantiles are those of ``merge`` where it agrees."""
    ca, cb = a.centroids, b.centroids  # (mean, count) pairs
    if not ca or not cb:
        return TDigest.from_bytes((b if not ca else a).to_bytes())
    d = TDigest.from_values([m for m, _ in ca] + [m for m, _ in cb], w=[c for _, c in ca] + [c for _, c in cb],
                            max_centroids=max(a.max_centroids, b.max_centroids)).to_dict()
    d.update(min=min(a.min(), b.min()), max=max(a.max(), b.max()), sum=a.sum() + b.sum(),
             n_values=a.n_values + b.n_values)
    return TDigest.from_dict(d)


def _part(parts: dict[int, PartitionDigest], partition: int) -> PartitionDigest:
    d = parts.get(partition)
    if d is None:
        d = parts[partition] = PartitionDigest()
    return d


def digest_json(d: TDigest) -> str:
    """A digest as the JSON in ``wire.service-metrics`` (fastdigest's ``to_dict``:
    centroids as ``{"m": mean, "c": count}``, readable without fastdigest)."""
    return json.dumps(d.to_dict(), separators=(",", ":"))


def digest_from_json(text: str) -> TDigest:
    return TDigest.from_dict(json.loads(text))


class _Source:
    """Per source: watermark of each packet partition, which are done, open windows."""

    def __init__(self) -> None:
        self.offset = -1
        self.partitions = 0  # packet partitions the source has
        self.watermarks: dict[int, int] = {}
        # packet partition -> sequence of its last batch taken in (a restarted packet
        # worker sends the batches since its last checkpoint again, the same ones)
        self.sequences: dict[int, int] = {}
        self.done: set[int] = set()
        self.open: dict[str, int] = {}  # window key -> window start
        self.health: dict[str, str] = {}  # service -> band of its last window with data
        self.imbalanced: dict[str, int] = {}  # service -> windows in a row with a hot replica
        self.late = 0
        self.malformed = 0
        self.duplicates = 0  # observation batches received twice (see handle)
        self.emitted: dict[str, int] = {SERVICE_METRICS: 0, ALERTS: 0}

    def dumps(self) -> bytes:
        return json.dumps({
            "offset": self.offset, "partitions": self.partitions,
            "watermarks": self.watermarks, "sequences": self.sequences,
            "done": sorted(self.done), "open": self.open,
            "health": self.health, "late": self.late, "malformed": self.malformed,
            "duplicates": self.duplicates, "imbalanced": self.imbalanced,
            "emitted": self.emitted,
        }, separators=(",", ":")).encode()

    @classmethod
    def loads(cls, data: bytes) -> _Source:
        d = json.loads(data)
        s = cls()
        s.offset, s.partitions, s.late = d["offset"], d["partitions"], d["late"]
        s.watermarks = {int(k): v for k, v in d["watermarks"].items()}
        s.sequences = {int(k): v for k, v in d.get("sequences", {}).items()}
        s.done = set(d["done"])
        s.open, s.health, s.emitted = d["open"], d["health"], d["emitted"]
        s.malformed = d.get("malformed", 0)
        s.duplicates = d.get("duplicates", 0)
        s.imbalanced = d.get("imbalanced", {})
        return s

    def watermark(self) -> int | None:
        """Lowest watermark over all packet partitions; None until each has reported."""
        if self.partitions == 0 or len(self.watermarks) < self.partitions:
            return None
        return min(self.watermarks.values())

    def finished(self) -> bool:
        return self.partitions > 0 and len(self.done) >= self.partitions


class ServiceWindows:
    """The windows of one observation partition (one Faust task)."""

    def __init__(self, store: MutableMapping[str, bytes], emit: Emit,
                 options: WindowOptions | None = None) -> None:
        self.store = store
        self.emit = emit
        self.options = options or WindowOptions()
        # Write-through copies of what is in the store, so that a batch does not parse
        # its windows back from bytes. Cleared when partitions move (Faust rebalance).
        self._windows: dict[str, Window] = {}
        self._sources: dict[str, _Source] = {}

    def clear_cache(self) -> None:
        self._windows.clear()
        self._sources.clear()

    def _load_window(self, wkey: str) -> Window | None:
        w = self._windows.get(wkey)
        if w is None:
            raw = self.store.get(wkey)
            if raw is None:
                return None
            w = self._windows[wkey] = Window.loads(raw)
        return w

    def _forget(self, key: str) -> None:
        self._windows.pop(key, None)
        self._sources.pop(key, None)
        if key in self.store:
            del self.store[key]

    def handle(self, batch: dict[str, Any], partition: int, offset: int) -> dict[str, Any] | None:
        """Take in one observation batch read at ``partition``/``offset``. When it
        completes its source (every packet partition has sent end of input), flush that
        source's windows and return what its final stats report needs (``emitted`` per
        topic, ``late_observations``, ``malformed_observation_batches``); else None."""
        source_id = batch["source_id"]
        skey = f"s|{source_id}|{partition}"  # offsets are per partition
        src = self._sources.get(skey)
        if src is None:
            raw = self.store.get(skey)
            src = _Source.loads(raw) if raw is not None else _Source()
        if src.offset >= offset:
            return None  # read again after a restart: already applied
        p = batch["packet_partition"]
        if batch["sequence"] <= src.sequences.get(p, -1):
            # Sent again by a packet worker that took over from a checkpoint older than
            # this batch: identical to the one taken in, so skipped.
            src.duplicates += 1
            src.offset = offset
            self.store[skey] = src.dumps()
            self._sources[skey] = src
            return None
        src.sequences[p] = batch["sequence"]
        opts = self.options
        length = opts.length_us
        src.partitions = batch["packet_partitions"]
        closed_before = self._close_point(src)
        touched: dict[str, Window] = {}
        try:
            rows = unpack_rows(batch)
        except ValueError as exc:  # damaged: its watermark and end of input still count
            log.warning("observation batch %s/%d at offset %d: %s", source_id, partition, offset, exc)
            src.malformed += 1
            rows = []
        for o in rows:
            ts = o[7]
            start = ts - ts % length
            if closed_before is not None and start + length <= closed_before:
                src.late += 1
                continue
            wkey = f"w|{source_id}|{start}|{o[3]}"
            w = touched.get(wkey)
            if w is None:
                w = self._load_window(wkey)
                if w is None and wkey in src.open:
                    # Open before this batch but no longer stored: emitted while this
                    # batch was first processed, before a restart. It has these items.
                    continue
                if w is None:
                    w = Window(start, length)
                touched[wkey] = w
            if w.offset >= offset:
                continue  # this window already took this batch in before a restart
            w.add(o, opts.thresholds, p)
            src.open[wkey] = start
        src.watermarks[p] = max(src.watermarks.get(p, 0), batch["watermark_ts_us"])
        if batch["end_of_input"]:
            src.done.add(p)
        for wkey, w in touched.items():
            if w.offset < offset:
                w.offset = offset
                w.prune(opts.thresholds)
                self.store[wkey] = w.dumps()
                self._windows[wkey] = w
        if src.finished():
            closing = list(src.open.items())
        else:
            close_point = self._close_point(src)
            closing = ([] if close_point is None else
                       [(k, start) for k, start in src.open.items() if start + length <= close_point])
        # oldest first: a service's health band changes are detected in time order
        for wkey, _start in sorted(closing, key=lambda kv: (kv[1], kv[0])):
            self._emit_window(source_id, src, wkey, touched)
        src.offset = offset
        if src.finished():
            self._forget(skey)
            return {"emitted": dict(src.emitted), "late_observations": src.late,
                    "malformed_observation_batches": src.malformed,
                    "duplicate_observation_batches": src.duplicates}
        self.store[skey] = src.dumps()
        self._sources[skey] = src
        return None

    def _close_point(self, src: _Source) -> int | None:
        """Windows ending at or before this are closed."""
        wm = src.watermark()
        return None if wm is None else wm - self.options.lateness_us

    def _emit_window(self, source_id: str, src: _Source, wkey: str,
                     touched: dict[str, Window]) -> None:
        w = touched.get(wkey) or self._load_window(wkey)
        if w is None:  # already emitted (and deleted) before a restart
            del src.open[wkey]
            return
        service = wkey.split("|", 3)[3]
        record = w.record(source_id, service)
        self.emit(SERVICE_METRICS, service, record)
        src.emitted[SERVICE_METRICS] += 1
        if record["scope"] != "service":  # a zone or node pair, an operation: measured, not judged
            del src.open[wkey]
            self._forget(wkey)
            return
        t = self.options.thresholds
        imbalance = record["backend_imbalance"]
        # sustained: this many windows in a row, each with enough requests to tell
        if (imbalance is not None and imbalance >= t.backend_imbalance
                and w.counts["requests"] + w.counts["connections"] >= t.backend_imbalance_min_requests):
            src.imbalanced[service] = src.imbalanced.get(service, 0) + 1
        else:
            src.imbalanced.pop(service, None)
        alert = detect_imbalance(w.detection_input(), source_id, service, record, src.imbalanced.get(service, 0), t)
        if alert is not None:
            self.emit(ALERTS, service, alert)
            src.emitted[ALERTS] += 1
        previous = src.health.get(service)
        for alert in detect(w.detection_input(), source_id, service, previous,
                            self.options.thresholds):
            self.emit(ALERTS, service, alert)
            src.emitted[ALERTS] += 1
        if w.counts["data_packets"] >= self.options.thresholds.retrans_min_data_packets:
            src.health[service] = health_band(w.counts["retrans_data"] / w.counts["data_packets"])
        del src.open[wkey]
        self._forget(wkey)


@dataclass
class ServiceSummary:
    """Windows of one service merged over a time range (``wirestream percentiles``,
    the analyze table): counts add up, digests merge."""

    service: str
    windows: int = 0
    first_start_us: int = 0
    last_end_us: int = 0
    connections: int = 0
    requests: int = 0
    errors_4xx: int = 0
    errors_5xx: int = 0
    status_429: int = 0
    worst_health: str = "healthy"
    handshake_rtt: TDigest | None = None
    latency: TDigest | None = None

    def quantiles(self, name: str) -> dict[str, float | None]:
        d: TDigest | None = getattr(self, name)
        if d is None or d.is_empty():
            return {"p50": None, "p90": None, "p99": None}
        return {f"p{q}": d.quantile(q / 100) for q in (50, 90, 99)}


_BAND_ORDER = {band: i for i, band in enumerate(HEALTH_BANDS)}


def merge_windows(records: Iterable[dict[str, Any]], service: str | None = None,
                  from_us: int | None = None, to_us: int | None = None) -> dict[str, ServiceSummary]:
    """Merge ``wire.service-metrics`` records per service. With ``from_us``/``to_us``,
    only windows that lie inside ``[from_us, to_us)`` count (a digest cannot be split)."""
    out: dict[str, ServiceSummary] = {}
    for r in records:
        if service is not None and r["service"] != service:
            continue
        if from_us is not None and r["window_start_ts_us"] < from_us:
            continue
        if to_us is not None and r["window_end_ts_us"] > to_us:
            continue
        s = out.get(r["service"])
        if s is None:
            s = out[r["service"]] = ServiceSummary(r["service"], first_start_us=r["window_start_ts_us"])
        s.windows += 1
        s.first_start_us = min(s.first_start_us, r["window_start_ts_us"])
        s.last_end_us = max(s.last_end_us, r["window_end_ts_us"])
        for name in ("connections", "requests", "errors_4xx", "errors_5xx", "status_429"):
            setattr(s, name, getattr(s, name) + r[name])
        if _BAND_ORDER.get(r["health"], 0) > _BAND_ORDER[s.worst_health]:
            s.worst_health = r["health"]
        for name in ("handshake_rtt", "latency"):
            text = r.get(f"{name}_digest")
            if text:
                d = digest_from_json(text)
                mine = getattr(s, name)
                setattr(s, name, d if mine is None else merge_digests(mine, d))
    return out
