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

The same feed reads ``wire.k8s-policies`` (NetworkPolicies and namespace labels) into the
index's :class:`~.network_policy.PolicyTable`; once it holds anything, connection and
flow records also get ``policy_verdict`` and ``policy_names``
(:mod:`.network_policy`: the declared policies evaluated for the record's two ends), and
:meth:`Enricher.enrich` returns the ``policy_violation`` alert of traffic that got through
although denied. Policies are evaluated as they are *now* (as read), not as they were at
the record's time: unlike pod IPs, they are not kept as a history.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from wirestream.codec import AvroCodec
from wirestream.errors import DecodeError, RegistryError
from wirestream.kafka import consumer_config
from wirestream.kafka_security import raise_if_fatal
from wirestream.reader import partitions_of
from wirestream.topics import (
    CONNECTIONS,
    DNS,
    FLOWS,
    K8S_IDENTITY,
    MESSAGING,
    QUERIES,
    RECORD_TIME,
    TLS,
    TRANSACTIONS,
)

from .network_policy import K8S_POLICIES, PolicyError, PolicyTable, endpoint_of, violation_alert

log = logging.getLogger(__name__)

#: the records with client and server endpoints; each is resolved at its RECORD_TIME
ENRICHED_TOPICS = (CONNECTIONS, FLOWS, TRANSACTIONS, DNS, TLS, QUERIES, MESSAGING)
#: the records that get a NetworkPolicy verdict (a transaction, query, handshake is on one)
POLICY_TOPICS = (CONNECTIONS, FLOWS)
#: the tables the feed reads
TABLES = (K8S_IDENTITY, K8S_POLICIES)
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
        #: wire.k8s-policies (the feed replaces what the table holds under this lock)
        self.policies = PolicyTable()
        self.policy_lock = threading.Lock()

    def add_policy(self, key: str, record: dict[str, Any] | None) -> None:
        """Take one ``wire.k8s-policies`` message (``None``: a tombstone, a deletion).
        Raises :class:`~.network_policy.PolicyError` for a policy that cannot be read."""
        with self.policy_lock:
            self.policies.add(key, record)

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
        self.policy_verdicts: dict[str, int] = {}

    def enrich(self, topic: str, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Fill ``record``'s identity (and policy) fields; return the alerts it raises: a
        ``policy_violation`` (wire.alerts) when its traffic got through although the
        policies deny it. The engine publishes them (see docs/kubernetes.md for the hook)."""
        if topic not in ENRICHED_TOPICS or not self.index.records:
            return []
        ts = record.get(RECORD_TIME[topic]) or record.get("start_ts_us") or 0
        found = False
        idents = {}
        for side in ("client", "server"):
            ident = idents[side] = self.index.lookup(record[f"{side}_ip"], ts)
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
        if topic in POLICY_TOPICS and self.index.policies.known:
            return self._policy(topic, record, idents)
        return []

    def _policy(self, topic: str, record: dict[str, Any], idents: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
        client = endpoint_of(record["client_ip"], idents["client"])
        server = endpoint_of(record["server_ip"], idents["server"])
        if not (client.is_pod or server.is_pod):
            return []  # policies select pods: traffic between two non-pods is none of theirs
        server_kind = (idents["server"] or {}).get("kind")
        if server_kind == "service":
            # a ClusterIP before DNAT: which backend pod got it (what ingress rules are
            # about, and egress rules' pod selectors) is not known here
            return []
        protocol = (record.get("transport") or "tcp").upper()  # wire.connections: TCP
        with self.index.policy_lock:
            decision = self.index.policies.evaluate(client, server, record.get("server_port"), protocol)
        record["policy_verdict"] = decision.verdict
        record["policy_names"] = list(decision.policies)
        self.policy_verdicts[decision.verdict] = self.policy_verdicts.get(decision.verdict, 0) + 1
        alert = violation_alert(topic, record)
        return [alert] if alert is not None else []


class IdentityFeed(threading.Thread):
    """Read ``wire.k8s-identity`` (and ``wire.k8s-policies``) into an index: all of it at
    :meth:`start` (which returns once the index has caught up with the topics' ends), then
    whatever comes next.

    No idle work: where nothing publishes identities (no ``k8s-watch``: a laptop, a
    capture file), the topics are empty and polling them would cost a packet worker ~7 % of
    its CPU for nothing. So the feed reads only once a topic has records: until then it
    looks at the partitions' end offsets every :attr:`recheck_s` seconds (a watcher started
    later is still picked up, its identities a few seconds late); from the first record
    on, it reads continuously. ``wire.k8s-policies`` is created by the first watcher that
    publishes policies: if it is not there when reading starts, it is looked for again
    every :attr:`recheck_s` seconds."""

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

    def _end_offsets(self, topics: tuple[str, ...] = TABLES) -> dict[tuple[str, int], tuple[int, int]]:
        """(topic, partition) -> (its first offset, its end offset) now (no partitions of a
        topic: it does not exist yet)."""
        self.end_checks += 1
        ends = {}
        for tp in partitions_of(self.bootstrap, topics):
            ends[(tp.topic, tp.partition)] = self._consumer.get_watermark_offsets(tp, timeout=10)
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

    def _consume(self, ends: dict[tuple[str, int], tuple[int, int]]) -> None:
        # From the first offset as a number, not OFFSET_BEGINNING: the client would look
        # it up first, which takes ~0.5 s on the embedded broker.
        self._consumer.assign([TopicPartition(t, p, low) for (t, p), (low, _high) in sorted(ends.items())])
        pending = {tp: high for tp, (low, high) in ends.items() if high > low}
        has_policies = any(t == K8S_POLICIES for t, _ in ends)
        next_look = time.monotonic() + self.recheck_s
        while not self._stopping.is_set():
            self.polls += 1
            if not has_policies and time.monotonic() >= next_look:
                next_look = time.monotonic() + self.recheck_s
                has_policies = self._assign_policies()
            for msg in self._consumer.consume(1000, 0.2):
                if msg.error():
                    raise_if_fatal(msg.error(), f"reading {msg.topic()}")
                    continue
                self._take(msg)
                tp = (msg.topic(), msg.partition())
                if tp in pending and msg.offset() + 1 >= pending[tp]:
                    del pending[tp]
                    if not pending:
                        self._caught_up.set()

    def _assign_policies(self) -> bool:
        """Start reading wire.k8s-policies if it exists now."""
        try:
            ends = self._end_offsets((K8S_POLICIES,))
        except Exception as exc:  # the broker away for a moment: look again later
            log.debug("%s: end offsets not known (%s)", K8S_POLICIES, exc)
            return False
        if ends:
            self._consumer.incremental_assign([TopicPartition(t, p, low) for (t, p), (low, _) in sorted(ends.items())])
        return bool(ends)

    def _take(self, msg: Any) -> None:
        key = (msg.key() or b"").decode(errors="replace")
        topic = msg.topic()
        value = msg.value()
        try:
            record = None if value is None else self.codec.decode(value)
            if topic == K8S_POLICIES:
                self.index.add_policy(key, record)
            else:
                self.index.add(key, record)
        except (DecodeError, RegistryError, PolicyError) as exc:
            self.malformed += 1
            log.warning("skipping a %s message for %s: %s", topic, key, exc)
