"""Kubernetes identity on every record: ``wire.k8s-identity`` read as a table.

Every packet worker reads the whole compacted topic (:class:`IdentityFeed`, a consumer
of all partitions from the beginning, outside the consumer group) into an
:class:`IdentityIndex`, and keeps reading it. Before a connection, transaction, DNS or
TLS record is published, :class:`Enricher` fills its ``client_``/``server_`` ``pod``,
``namespace``, ``workload`` and ``node``, and ``server_service`` when the server is a
ClusterIP (or a pod backing exactly one service).

Pod IPs are reused, so the index keeps a short history per IP: each pod's identity is
valid from its start until its deletion (or until the next pod on that IP started), and
a record gets the identity its IP had **at the record's own time** (the connection's
first packet, the request, the query, the ClientHello), not at processing time. Replaying
last week's capture therefore names last week's pods, as long as the topic still holds
them (compaction keeps the newest record per IP; see docs/kubernetes.md).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from wirestream.codec import AvroCodec
from wirestream.errors import DecodeError, RegistryError
from wirestream.kafka import consumer_config
from wirestream.kafka_security import raise_if_fatal
from wirestream.reader import partitions_of
from wirestream.topics import CONNECTIONS, DNS, FLOWS, K8S_IDENTITY, RECORD_TIME, TLS, TRANSACTIONS

log = logging.getLogger(__name__)

#: the records with client and server endpoints; each is resolved at its RECORD_TIME
ENRICHED_TOPICS = (CONNECTIONS, FLOWS, TRANSACTIONS, DNS, TLS)
#: a pod's start time has a resolution of one second: accept packets that much earlier
START_GRACE_US = 1_000_000
MAX_HISTORY = 8  # identities kept per IP


@dataclass
class _Entry:
    key: str  # pod uid, or the service/node it names
    from_us: int
    to_us: int | None
    identity: dict[str, Any]


class IdentityIndex:
    """IP -> identities over time."""

    def __init__(self) -> None:
        self._by_ip: dict[str, list[_Entry]] = {}
        self._lock = threading.Lock()
        self.records = 0

    def add(self, ip: str, record: dict[str, Any] | None) -> None:
        """Take one ``wire.k8s-identity`` message (``None``: a tombstone, which changes
        nothing: the record before it already said when the identity ended)."""
        if record is None:
            return
        self.records += 1
        key = record.get("uid") or f"{record['kind']}:{record.get('namespace')}/{record.get('service') or record.get('node')}"
        with self._lock:
            entries = self._by_ip.setdefault(ip, [])
            if record.get("deleted_ts_us"):
                for e in reversed(entries):
                    if e.key == key:
                        e.to_us = record["deleted_ts_us"]
                        break
                return
            if entries and entries[-1].key == key:
                entries[-1].identity = record  # the same pod, changed (labels, services)
                entries[-1].to_us = None
                return
            start = record.get("valid_from_us") or 0
            if entries and entries[-1].to_us is None:
                entries[-1].to_us = start  # the next pod on this IP ends the previous one
            entries.append(_Entry(key, start, None, record))
            if len(entries) > MAX_HISTORY:
                del entries[0]

    def lookup(self, ip: str, ts_us: int) -> dict[str, Any] | None:
        """The identity ``ip`` had at ``ts_us``, if any."""
        entries = self._by_ip.get(ip)
        if not entries:
            return None
        with self._lock:
            for e in reversed(entries):
                if e.from_us - START_GRACE_US <= ts_us and (e.to_us is None or ts_us < e.to_us):
                    return e.identity
        return None


class Enricher:
    """Fill a record's Kubernetes identity fields from an :class:`IdentityIndex`."""

    def __init__(self, index: IdentityIndex) -> None:
        self.index = index
        self.enriched = 0

    def enrich(self, topic: str, record: dict[str, Any]) -> None:
        if topic not in ENRICHED_TOPICS or not self.index.records:
            return
        ts = record.get(RECORD_TIME[topic]) or record.get("start_ts_us") or 0
        found = False
        for side in ("client", "server"):
            ident = self.index.lookup(record[f"{side}_ip"], ts)
            if ident is None:
                continue
            found = True
            kind = ident["kind"]
            if kind == "pod":
                record[f"{side}_pod"] = ident["pod"]
                record[f"{side}_namespace"] = ident["namespace"]
                record[f"{side}_workload"] = ident["workload"]
                record[f"{side}_node"] = ident["node"]
                record[f"{side}_zone"] = ident.get("zone")
                services = ident.get("services") or []
                if side == "server" and len(services) == 1:
                    record["server_service"] = services[0].split("/", 1)[1]
            elif kind == "node":
                record[f"{side}_node"] = ident["node"]
                record[f"{side}_zone"] = ident.get("zone")
            elif kind == "service" and side == "server":
                # a ClusterIP: the connection was made to the service, before any DNAT
                record["server_service"] = ident["service"]
                record["server_namespace"] = ident["namespace"]
        if found:
            # known only when both ends' zones are (a ClusterIP has none: DNAT picks the pod)
            zones = record.get("client_zone"), record.get("server_zone")
            record["cross_zone"] = None if None in zones else zones[0] != zones[1]
        self.enriched += found


class IdentityFeed(threading.Thread):
    """Read ``wire.k8s-identity`` into an index: all of it at :meth:`start` (which returns
    once the index has caught up with the topic's end), then whatever comes next.

    No idle work: where nothing publishes identities (no ``k8s-watch``: a laptop, a
    capture file), the topic is empty and polling it would cost a packet worker ~7 % of its
    CPU for nothing. So the feed reads only once the topic has records: until then it
    looks at the partitions' end offsets every :attr:`recheck_s` seconds (a watcher started
    later is still picked up, its identities a few seconds late); from the first record
    on, it reads continuously."""

    #: how often an empty topic is looked at again
    RECHECK_S = 15.0

    def __init__(self, bootstrap: str, codec: AvroCodec, index: IdentityIndex,
                 recheck_s: float | None = None) -> None:
        super().__init__(name="k8s-identity-feed", daemon=True)
        self.bootstrap = bootstrap
        self.codec = codec
        self.index = index
        self.recheck_s = self.RECHECK_S if recheck_s is None else recheck_s
        self._consumer = Consumer(consumer_config(bootstrap))  # assigned: joins no group
        self._stopping = threading.Event()  # not _stop: a method of Thread (join calls it)
        self.malformed = 0
        self.polls = 0  # consume calls made (tests: none while the topic is empty)
        self.end_checks = 0  # times the end offsets were looked at
        self._caught_up = threading.Event()
        self._ends = self._end_offsets()

    def _end_offsets(self) -> dict[int, tuple[int, int]]:
        """partition -> (its first offset, its end offset) now (no partitions: the topic
        does not exist yet)."""
        self.end_checks += 1
        ends = {}
        for tp in partitions_of(self.bootstrap, [K8S_IDENTITY]):
            ends[tp.partition] = self._consumer.get_watermark_offsets(tp, timeout=10)
        return ends

    def start(self, timeout: float = 30.0) -> None:  # type: ignore[override]
        super().start()
        if not self._caught_up.wait(timeout):
            log.warning("wire.k8s-identity: not caught up after %.0f s; enriching with what is read", timeout)

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        try:
            ends = self._ends
            while not any(high > low for low, high in ends.values()):  # empty: look again later
                self._caught_up.set()
                if self._stopping.wait(self.recheck_s):
                    return
                try:
                    ends = self._end_offsets()
                except Exception as exc:  # the broker away for a moment: look again later
                    log.debug("wire.k8s-identity: end offsets not known (%s)", exc)
            self._consume(ends)
        finally:
            self._consumer.close()

    def _consume(self, ends: dict[int, tuple[int, int]]) -> None:
        # From the first offset as a number, not OFFSET_BEGINNING: the client would look
        # it up first, which takes ~0.5 s on the embedded broker.
        self._consumer.assign([TopicPartition(K8S_IDENTITY, p, low) for p, (low, _high) in sorted(ends.items())])
        pending = {p: high for p, (low, high) in ends.items() if high > low}
        while not self._stopping.is_set():
            self.polls += 1
            for msg in self._consumer.consume(1000, 0.2):
                if msg.error():
                    raise_if_fatal(msg.error(), f"reading {K8S_IDENTITY}")
                    continue
                ip = (msg.key() or b"").decode(errors="replace")
                value = msg.value()
                if value is None:
                    self.index.add(ip, None)
                else:
                    try:
                        self.index.add(ip, self.codec.decode(value))
                    except (DecodeError, RegistryError) as exc:
                        self.malformed += 1
                        log.warning("skipping a wire.k8s-identity message for %s: %s", ip, exc)
                if msg.partition() in pending and msg.offset() + 1 >= pending[msg.partition()]:
                    del pending[msg.partition()]
                    if not pending:
                        self._caught_up.set()
