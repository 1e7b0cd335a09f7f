"""Call chains: the inbound HTTP request of a process and the outbound requests it made
while serving it, as a tree (``wire.call-chains``, ``schemas/call_chain.avsc``).

I/O-free: :class:`ChainBuilder` takes ``wire.transactions`` records (decoded dicts) with
:meth:`ChainBuilder.add` and hands back finished chains from :meth:`ChainBuilder.advance`
(event time: a chain is finished when its root's response is older than the watermark
by ``lateness``) and :meth:`ChainBuilder.flush` (end of input). ``wirestream chains``
runs it on the topic; ``wirestream analyze`` on the transactions of its run.

A transaction's parent is searched among the transactions held, by these rules, in
order of confidence; the first that finds one decides, and the hop says which (``link``):

1. ``trace`` (B3): the transaction's B3 parent span id (``x-b3-parentspanid``, or the
   single ``b3`` header's fourth field) is the span id of another request of the same
   trace id: that request is the one the caller was serving.
2. ``trace`` (W3C ``traceparent``): its ``parent-id`` is the caller's own span, which no
   inbound request carries, so: a request of the same trace id whose server is this
   request's client (same IP; same pid when both are known) and which contains it in
   time (started before it, answered after it); the innermost such one.
3. ``pid``: live eBPF capture knows the processes: a request served by the process
   (``server_pid``) that made this one (``client_pid``), on the same source (node), that
   contains it in time; the innermost.
4. ``address``: no pids (capture files): a request served at this request's client IP
   that contains it in time, the innermost. A guess when the IP hosts several processes
   (a node's address, loopback): ``candidates`` on the hop says how many requests fitted.
   One guess is ruled out: a request to the very server (address and port) that served
   the one it would be a call of. On one host (loopback, a node's address) a server's
   clients share its IP, so every request to it "contains" its concurrent ones in time:
   a load generator against a local server made thousands of such chains (2,087 on the
   bench's wrk + nginx capture), while a server calling its own listener while serving is
   rare, and the ``pid`` rule (which this does not limit) still sees it.

Pids: ``wire.transactions`` records do not carry them yet (the packet workers' socket
join fills ``wire.connections`` records only), so the builder also takes connection
records (:meth:`ChainBuilder.add_connection`) and gives a transaction the pids of its
connection (same ``connection_id``) when it has none of its own. A connection record comes
at the connection's close (plus the close linger), after its transactions: the lateness
covers that in a stream; a one-shot run has all of them before it links.

Transactions are identified by ``transaction_id`` (:func:`transaction_id`): a hash of the
connection id and the request time, stable across runs of the same input; it is computed
here from the record, not carried by ``wire.transactions``.

State is bounded: at most ``max_held`` transactions are held; past that the oldest (by
request time) is dropped and counted in ``counters["evicted"]``. A transaction whose
parent was already published (it came later than ``lateness`` after its parent ended)
becomes the root of a chain of its own.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: how a hop was linked to its parent (``root``: it has none)
LINK_ROOT = "root"
LINK_TRACE = "trace"
LINK_PID = "pid"
LINK_ADDRESS = "address"

DEFAULT_LATENESS_US = 15_000_000
DEFAULT_MAX_HELD = 200_000


def transaction_id(record: Mapping[str, Any]) -> str:
    """The stable id of one ``wire.transactions`` record: blake2b of its connection id
    and request time (a connection's requests have distinct request times), 16 hex digits."""
    raw = f"{record['connection_id']}|{record['request_ts_us']}".encode()
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class TraceContext:
    """What a request's trace headers say: its trace id, its span id (B3), the span id of
    its caller (B3 parent span, or W3C parent-id), and which format (``b3``, ``w3c``)."""

    trace_id: str
    span_id: str | None
    parent_span_id: str | None
    kind: str


def trace_context(headers: Mapping[str, str]) -> TraceContext | None:
    """The trace context of a request's (lower-cased) headers; None without one or when
    it is malformed. B3 is preferred: it names the span that was served."""
    single = headers.get("b3")
    if single:
        parts = single.strip().split("-")
        # b3: TRACEID-SPANID[-SAMPLED[-PARENTSPANID]]; "0"/"1"/"d" alone is sampling only
        if len(parts) >= 2 and _hex(parts[0]) and _hex(parts[1]):
            parent = parts[3].lower() if len(parts) >= 4 and _hex(parts[3]) else None
            return TraceContext(parts[0].lower(), parts[1].lower(), parent, "b3")
    trace = headers.get("x-b3-traceid")
    span = headers.get("x-b3-spanid")
    if trace and span and _hex(trace) and _hex(span):
        parent = headers.get("x-b3-parentspanid")
        return TraceContext(trace.strip().lower(), span.strip().lower(),
                            parent.strip().lower() if parent and _hex(parent) else None, "b3")
    tp = headers.get("traceparent")
    if tp:
        parts = tp.strip().lower().split("-")
        # 00-TRACEID(32)-PARENTID(16)-FLAGS(2); an all-zero id is invalid (W3C 3.2.2)
        if (len(parts) >= 4 and len(parts[1]) == 32 and len(parts[2]) == 16 and _hex(parts[1])
                and _hex(parts[2]) and parts[1].strip("0") and parts[2].strip("0")):
            return TraceContext(parts[1], None, parts[2], "w3c")
    return None


def _hex(s: str) -> bool:
    s = s.strip()
    return bool(s) and all(c in "0123456789abcdefABCDEF" for c in s)


@dataclass(slots=True)
class _Txn:
    id: str
    rec: Mapping[str, Any]
    source_id: str
    start: int
    end: int  # the response's time, else the request's
    trace: TraceContext | None
    #: what linking reads of the record, read once when it is added (linking runs in
    #: ``analyze``'s serial tail, after the workers are done: ~13 dict lookups a
    #: transaction were a third of it): whether it was answered, its addresses (None when
    #: the record lacks them), its connection id, its own pids and process names, and its
    #: server's port
    answered: bool = False
    client_ip: str | None = None
    server_ip: str | None = None
    connection_id: str = ""
    own_pids: tuple[Any, Any, Any, Any] = (None, None, None, None)
    server_port: int = 0
    parent: str | None = None
    link: str = LINK_ROOT
    candidates: int = 0
    children: list[str] = field(default_factory=list)
    client_pid: int | None = None
    server_pid: int | None = None
    client_process: str | None = None
    server_process: str | None = None
    #: False when no transaction of its pid's or address's bucket can enclose it
    #: (:meth:`_Bucket.screen`): most cannot, and are not looked for one by one
    may_have_parent: bool = True


#: the fields of a connection record a chain needs (its pids)
CONNECTION_FIELDS = frozenset({"connection_id", "source_id", "client_pid", "client_process", "server_pid",
                               "server_process"})

#: the fields of a transaction a chain needs (what ``analyze`` decodes for it)
TRANSACTION_FIELDS = frozenset({
    "connection_id", "source_id", "client_ip", "client_port", "server_ip", "server_port",
    "request_ts_us", "response_ts_us", "method", "path", "host", "status", "latency_us",
    "error", "request_headers", "client_pid", "client_process", "server_pid", "server_process",
    "server_service", "server_pod", "client_pod",
})
#: the fields of a transaction a chain's hops are made of (:meth:`ChainBuilder._record`),
#: read from the record held; the others of :data:`TRANSACTION_FIELDS` are read once, by
#: :meth:`ChainBuilder.add`: a caller may hold a smaller record (``add(record, keep=...)``)
HOP_FIELDS = frozenset({"client_ip", "client_port", "server_ip", "server_port", "server_service", "method",
                        "path", "host", "status", "error", "latency_us"})


class ChainBuilder:
    """Links transactions into call chains (see the module's docstring).

    ``min_hops``: chains of fewer hops are not returned (a request that called nothing is
    no chain; counted in ``counters["single_transactions"]``)."""

    def __init__(self, lateness_us: int = DEFAULT_LATENESS_US, max_held: int = DEFAULT_MAX_HELD,
                 min_hops: int = 2) -> None:
        if max_held < 1:
            raise ValueError(f"max_held must be at least 1, not {max_held}")
        self.lateness_us = lateness_us
        self.max_held = max_held
        self.min_hops = min_hops
        self._held: dict[str, _Txn] = {}
        #: connection id -> (client pid, client process, server pid, server process), from
        #: wire.connections records; bounded like the transactions (oldest out first)
        self._conn_pids: dict[str, tuple[Any, Any, Any, Any]] = {}
        self.counters: dict[str, int] = defaultdict(int)

    def __len__(self) -> int:
        return len(self._held)

    def add(self, record: Mapping[str, Any], keep: Mapping[str, Any] | None = None) -> str:
        """Hold one ``wire.transactions`` record; return its transaction id. ``keep``: what
        is held of it for the chain's hops instead of the record itself (a mapping with at
        least its :data:`HOP_FIELDS`; ``analyze`` keeps a smaller copy of each record)."""
        tid = transaction_id(record)
        self.counters["received"] += 1
        if tid in self._held:
            # a record emitted again (a packet worker's restart): taken in once
            self.counters["duplicates"] += 1
            return tid
        start = int(record["request_ts_us"])
        resp = record.get("response_ts_us")
        headers = record.get("request_headers") or {}
        get = record.get
        self._held[tid] = _Txn(tid, record if keep is None else keep, get("source_id", ""), start,
                               int(resp) if resp is not None else start, trace_context(headers),
                               resp is not None, get("client_ip"), get("server_ip"), get("connection_id", ""),
                               (get("client_pid"), get("client_process"), get("server_pid"), get("server_process")),
                               int(get("server_port") or 0))
        if len(self._held) > self.max_held:
            oldest = min(self._held.values(), key=lambda t: t.start)
            del self._held[oldest.id]
            self.counters["evicted"] += 1
        return tid

    def add_connection(self, record: Mapping[str, Any]) -> None:
        """Take the pids of a ``wire.connections`` record (live eBPF capture's socket join)
        for the transactions of that connection; records without pids are ignored."""
        if record.get("client_pid") is None and record.get("server_pid") is None:
            return
        cid = record["connection_id"]
        self._conn_pids.pop(cid, None)
        self._conn_pids[cid] = (record.get("client_pid"), record.get("client_process"),
                                record.get("server_pid"), record.get("server_process"))
        if len(self._conn_pids) > self.max_held:
            del self._conn_pids[next(iter(self._conn_pids))]
            self.counters["connections_evicted"] += 1

    def advance(self, watermark_us: int) -> list[dict[str, Any]]:
        """The chains whose root (and so every hop) ended more than ``lateness`` before
        ``watermark_us``; their transactions are let go."""
        return self._emit(lambda root_end: root_end + self.lateness_us < watermark_us)

    def flush(self) -> list[dict[str, Any]]:
        """Every chain still held (end of input)."""
        return self._emit(None)

    # -- linking ---------------------------------------------------------------------------

    def _link(self) -> None:
        held = list(self._held.values())
        by_span: dict[tuple[str, str], list[_Txn]] = defaultdict(list)
        by_trace: dict[str, list[_Txn]] = defaultdict(list)
        by_pid: dict[tuple[str, int], list[_Txn]] = defaultdict(list)
        by_port: dict[tuple[str, str], dict[int, list[_Txn]]] = defaultdict(lambda: defaultdict(list))
        conn_pids = self._conn_pids
        for t in held:
            t.parent, t.link, t.candidates, t.children = None, LINK_ROOT, 0, []
            t.client_pid, t.client_process, t.server_pid, t.server_process = t.own_pids
            conn = conn_pids.get(t.connection_id) if conn_pids else None
            if conn is not None:
                if t.client_pid is None:
                    t.client_pid, t.client_process = conn[0], conn[1]
                if t.server_pid is None:
                    t.server_pid, t.server_process = conn[2], conn[3]
            if t.trace is not None:
                by_trace[t.trace.trace_id].append(t)
                if t.trace.span_id:
                    by_span[(t.trace.trace_id, t.trace.span_id)].append(t)
            if t.server_pid is not None:
                by_pid[(t.source_id, int(t.server_pid))].append(t)
            by_port[(t.source_id, t.server_ip if t.server_ip is not None else "")][t.server_port].append(t)
        # the pid and address buckets can hold most of what is held (every request of a
        # busy server, all of them on loopback): sorted by start, so that a transaction's
        # possible parents are looked for among those that started at most the bucket's
        # longest duration before it, not among all (_Bucket.enclosing). An address's
        # requests are bucketed by server port (the address rule skips the port a request
        # itself went to, when its client is on its server's address)
        pids = {k: _Bucket(v) for k, v in by_pid.items()}
        ips = {k: {port: _Bucket(v) for port, v in ports.items()} for k, ports in by_port.items()}
        # each transaction's buckets, looked up once per client (and port skipped): few
        asked: list[list[_Bucket]] = []
        found: dict[tuple[Any, ...], list[_Bucket]] = {}
        for t in held:
            key = _buckets_key(t)
            buckets = found.get(key)
            if buckets is None:
                buckets = found[key] = _buckets_of(key, pids, ips)
            asked.append(buckets)
        # each bucket screens, all at once, those that look for an encloser in it
        asking: dict[int, tuple[_Bucket, list[_Txn]]] = {}
        for t, buckets in zip(held, asked, strict=True):
            t.may_have_parent = False  # (until one of its buckets may enclose it)
            for bucket in buckets:
                asking.setdefault(id(bucket), (bucket, []))[1].append(t)
        for bucket, ts in asking.values():
            for t, may in zip(ts, bucket.screen(ts), strict=True):
                if may:
                    t.may_have_parent = True
        for t, buckets in zip(held, asked, strict=True):
            parent, link, n = self._find_parent(t, buckets, by_span, by_trace)
            if parent is not None:
                t.parent, t.link, t.candidates = parent.id, link, n
                parent.children.append(t.id)

    def _find_parent(self, t: _Txn, buckets: list[_Bucket], by_span: dict,
                     by_trace: dict) -> tuple[_Txn | None, str, int]:
        """``t``'s parent, how it was linked and among how many; ``buckets``: those the
        pid and address rules look in (:func:`_buckets_of`)."""
        tc = t.trace
        if tc is not None and tc.kind == "b3" and tc.parent_span_id:
            found = [p for p in by_span.get((tc.trace_id, tc.parent_span_id), ()) if p is not t]
            if found:
                return min(found, key=lambda p: abs(t.start - p.start)), LINK_TRACE, len(found)
        client_ip = t.client_ip if t.client_ip is not None else ""
        client_pid = t.client_pid
        if tc is not None:
            found = [p for p in by_trace.get(tc.trace_id, ())
                     if p.server_ip == client_ip and _same_pid(client_pid, p.server_pid)
                     and _contains(p, t)]
            if found:
                return _innermost(found), LINK_TRACE, len(found)
        if not t.may_have_parent:  # (nothing in its bucket lasts around it)
            return None, LINK_ROOT, 0
        # by pid when the client's is known (another process's request is no parent),
        # else by address
        found = [p for bucket in buckets for p in bucket.enclosing(t) if _compatible(p, t)]
        if found:
            return _innermost(found), LINK_PID if client_pid is not None else LINK_ADDRESS, len(found)
        return None, LINK_ROOT, 0

    # -- output ----------------------------------------------------------------------------

    def _emit(self, ready: Callable[[int], bool] | None) -> list[dict[str, Any]]:
        """The chains whose end is ``ready`` (None: all of them), in their roots' order."""
        if not self._held:
            return []
        self._link()
        held = self._held
        roots = [t for t in held.values() if t.parent is None]
        if self.min_hops > 1:
            # most requests called nothing and were called by nothing: no chain, no tree
            # to walk, no order (the run's serial tail in analyze: 160,000 of them on the
            # keep-alive bench capture)
            alone = [t for t in roots if not t.children and (ready is None or ready(t.end))]
            for t in alone:
                del held[t.id]
            self.counters["single_transactions"] += len(alone)
            roots = [t for t in roots if t.children]
        chains = []
        for root in sorted(roots, key=lambda t: t.start):
            if root.children:
                members = self._tree(root)
                end = max(m.end for m in members)
            else:  # (min_hops 1: a request alone is a chain)
                members, end = [root], root.end
            if ready is not None and not ready(end):
                continue
            for m in members:
                # (the connection's pids stay: a keep-alive connection's later requests
                # need them; they leave oldest first)
                del self._held[m.id]
            if len(members) < self.min_hops:
                self.counters["single_transactions"] += 1
                continue
            chains.append(self._record(root, members))
            self.counters["chains"] += 1
            self.counters["hops"] += len(members)
            for m in members:
                if m.parent is not None:
                    self.counters[f"links.{m.link}"] += 1
        return chains

    def _tree(self, root: _Txn) -> list[_Txn]:
        """``root`` and its descendants, depth first, children in request order."""
        out, stack = [], [root]
        while stack:
            t = stack.pop()
            out.append(t)
            kids = sorted((self._held[c] for c in t.children), key=lambda k: k.start, reverse=True)
            stack.extend(kids)
        return out

    def _record(self, root: _Txn, members: list[_Txn]) -> dict[str, Any]:
        depth = {root.id: 0}
        hops = []
        for m in members:
            if m.parent is not None:
                depth[m.id] = depth[m.parent] + 1
            r = m.rec
            response_ts = m.end if m.answered else None
            latency = r.get("latency_us")
            if latency is None and response_ts is not None:
                latency = response_ts - m.start
            hops.append({
                "transaction_id": m.id,
                "parent_id": m.parent,
                "depth": depth[m.id],
                "link": m.link,
                "candidates": m.candidates,
                "connection_id": m.connection_id,
                "client_ip": r.get("client_ip", ""),
                "client_port": int(r.get("client_port") or 0),
                "client_pid": m.client_pid,
                "client_process": m.client_process,
                "server_ip": r.get("server_ip", ""),
                "server_port": int(r.get("server_port") or 0),
                "server_pid": m.server_pid,
                "server_process": m.server_process,
                "server_service": r.get("server_service"),
                "method": r.get("method"),
                "path": r.get("path"),
                "host": r.get("host"),
                "status": r.get("status"),
                "error": r.get("error"),
                "request_ts_us": m.start,
                "response_ts_us": response_ts,
                "latency_us": latency,
                "offset_us": m.start - root.start,
            })
        trace = next((m.trace.trace_id for m in members if m.trace is not None), None)
        return {
            "root_id": root.id,
            "trace_id": trace,
            "source_id": root.source_id,
            "start_ts_us": root.start,
            "end_ts_us": max(m.end for m in members),
            "hop_count": len(hops),
            "max_depth": max(h["depth"] for h in hops),
            "hops": hops,
        }


class _Bucket:
    """Transactions sorted by start, and their longest duration: the ones that can enclose
    a transaction started at most that long before it."""

    __slots__ = ("txns", "starts", "ends", "longest")

    #: windows wider than this are narrowed with numpy before the exact test: on one busy
    #: address (every request of a loopback benchmark) a window holds thousands
    WIDE = 32

    def __init__(self, txns: list[_Txn]) -> None:
        self.txns = sorted(txns, key=lambda p: p.start)
        self.starts = [p.start for p in self.txns]
        # when each can be an encloser until (a request without a response cannot: -1)
        self.ends = np.fromiter((p.end if p.answered else -1 for p in self.txns),
                                dtype=np.int64, count=len(self.txns))
        self.longest = max((p.end - p.start for p in self.txns), default=0)

    def screen(self, ts: list[_Txn]) -> list[bool]:
        """For each of ``ts`` (transactions that look for their encloser in this bucket),
        whether any transaction of the bucket can enclose it:
        one that started before it and ends no earlier, or started with it and ends later
        (what :func:`_contains` asks, but for the response). One vectorized test for all:
        the longest end over each one's window of :meth:`enclosing` (a sparse table of
        range maxima), where testing one by one cost ~10 µs each on a busy address."""
        starts = np.asarray(self.starts, dtype=np.int64)
        q_start = np.fromiter((t.start for t in ts), dtype=np.int64, count=len(ts))
        q_end = np.fromiter((t.end for t in ts), dtype=np.int64, count=len(ts))
        lo = np.searchsorted(starts, q_start - self.longest, "left")
        same = np.searchsorted(starts, q_start, "left")  # [lo, same): started before it
        hi = np.searchsorted(starts, q_start, "right")  # [same, hi): started with it
        longest_end = _RangeMax(self.ends)
        may = (longest_end(lo, same) >= q_end) | (longest_end(same, hi) > q_end)
        return may.tolist()  # type: ignore[no-any-return]

    def enclosing(self, t: _Txn) -> list[_Txn]:
        """The transactions of the bucket that strictly enclose ``t`` in time."""
        hi = bisect.bisect_right(self.starts, t.start)
        lo = bisect.bisect_left(self.starts, t.start - self.longest, 0, hi)
        if hi - lo > self.WIDE:
            txns = self.txns
            candidates: Iterable[_Txn] = [txns[lo + i] for i in np.flatnonzero(self.ends[lo:hi] >= t.end).tolist()]
        else:
            candidates = self.txns[lo:hi]
        return [p for p in candidates if _contains(p, t)]


def _buckets_key(t: _Txn) -> tuple[str, int | None, str, int | None]:
    """What decides where ``t`` looks for its encloser (:func:`_buckets_of`): its source
    and client pid when known, else its client address and the port it skips there (the
    port ``t`` itself went to when its client is on its server's address: a request is
    not taken for a call that the server it went to made while serving, the module's
    docstring, rule 4)."""
    if t.client_pid is not None:
        return (t.source_id, int(t.client_pid), "", None)
    same_host = t.client_ip is not None and t.client_ip == t.server_ip
    return (t.source_id, None, t.client_ip if t.client_ip is not None else "", t.server_port if same_host else None)


def _buckets_of(key: tuple[str, int | None, str, int | None], by_pid: dict[tuple[str, int], _Bucket],
                by_ip: dict[tuple[str, str], dict[int, _Bucket]]) -> list[_Bucket]:
    """The buckets a transaction of ``key`` (:func:`_buckets_key`) looks for its encloser
    in: its client pid's when known, else those of every port served at its client's
    address but the one it skips."""
    source, pid, client_ip, skipped = key
    if pid is not None:
        bucket = by_pid.get((source, pid))
        return [bucket] if bucket is not None else []
    return [bucket for port, bucket in by_ip.get((source, client_ip), {}).items() if port != skipped]


class _RangeMax:
    """The maximum of ``values[lo:hi]`` for many (lo, hi) at once (-1 for an empty range):
    a sparse table, level k holding the maxima of the runs of 2^k values."""

    def __init__(self, values: np.ndarray) -> None:
        self.levels = [values]
        width = 1
        while 2 * width <= len(values):
            last = self.levels[-1]
            self.levels.append(np.maximum(last[:-width], last[width:]))
            width *= 2

    def __call__(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        size = hi - lo
        out = np.full(len(lo), -1, dtype=np.int64)
        # each range is covered by two runs of 2^k values, k = floor(log2(size))
        k = np.where(size > 0, np.log2(np.maximum(size, 1)).astype(np.int64), -1)
        for level_k in np.unique(k[k >= 0]).tolist():
            at = np.flatnonzero(k == level_k)
            level = self.levels[level_k]
            out[at] = np.maximum(level[lo[at]], level[hi[at] - (1 << level_k)])
        return out


def _same_pid(a: Any, b: Any) -> bool:
    return a is None or b is None or int(a) == int(b)


def _contains(p: _Txn, t: _Txn) -> bool:
    """``p`` strictly encloses ``t`` in time (so no two transactions contain each other:
    the links form a forest). A request without a response ends at its request."""
    if p is t or not p.answered:
        return False
    if not (p.start <= t.start and t.end <= p.end):
        return False
    return (p.start, -p.end) < (t.start, -t.end)


def _compatible(p: _Txn, t: _Txn) -> bool:
    """Requests of two different traces are not linked by pid or address."""
    return p.trace is None or t.trace is None or p.trace.trace_id == t.trace.trace_id


def _innermost(found: Iterable[_Txn]) -> _Txn:
    return max(found, key=lambda p: (p.start, -p.end))


def chain_tree_lines(chain: Mapping[str, Any]) -> list[str]:
    """A chain as an indented tree, a line per hop: method, server, path, status,
    latency, when it started after the root, and how it was linked."""
    lines = [f"chain {chain['root_id']}  trace {chain.get('trace_id') or '-'}  source {chain['source_id']}  "
             f"{chain['hop_count']} hops"]
    for h in chain["hops"]:
        latency = f"{h['latency_us'] / 1000:.3f} ms" if h.get("latency_us") is not None else "no response"
        server = f"{h['server_ip']}:{h['server_port']}"
        if h.get("server_process"):
            server += f" ({h['server_process']}[{h.get('server_pid')}])"
        elif h.get("server_service"):
            server += f" ({h['server_service']})"
        link = "" if h["link"] == LINK_ROOT else f"  [{h['link']}" + (
            f", {h['candidates']} candidates]" if h.get("candidates", 0) > 1 else "]")
        lines.append(f"{'  ' * h['depth']}{'└─ ' if h['depth'] else ''}{h.get('method') or '?'} "
                     f"{server}{h.get('path') or ''} -> {h.get('status') or '-'}  {latency}  "
                     f"+{h['offset_us'] / 1000:.3f} ms  id {h['transaction_id']}{link}")
    return lines
