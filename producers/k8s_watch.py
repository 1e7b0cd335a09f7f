"""``wirestream k8s-watch``: list+watch the API server, publish IP identities to Kafka.

One thread per resource (pods, services, EndpointSlices, nodes, ReplicaSets, Jobs) runs
:class:`ResourceWatch`: list, then watch from the list's resourceVersion, and again:

- a watch that ends (the server's timeout) resumes from the last resourceVersion seen;
- ``410 Gone`` (the version is too old, e.g. after a long disconnection or an API server
  restart) relists; objects missing from the new list are reported as deleted, so a
  deletion that happened while we were away is not lost;
- network errors and API server restarts retry with exponential backoff (0.2 s doubling
  to 10 s), then relist.

Events go through one queue to the main loop, which applies them to an
:class:`~producers.k8s_identity.IdentityState` and publishes every IP whose identity
changed to the compacted topic ``wire.k8s-identity`` (key: the IP), with a tombstone
when an IP has no identity any more. NetworkPolicies and namespaces (their labels) go to
:class:`~producers.k8s_identity.PolicyObjects` and the compacted topic
``wire.k8s-policies`` (key: ``namespace/name``, or the namespace's name), which the
processors evaluate connections against (processors/network_policy.py). Configuration:
in-cluster (service account) or a kubeconfig.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from wirestream.processors.network_policy import K8S_POLICIES

from wirestream.codec import AvroCodec
from wirestream.kafka import WireProducer
from wirestream.topics import K8S_IDENTITY

from .k8s_identity import Identity, IdentityState, PolicyObjects

log = logging.getLogger(__name__)

#: kind -> (API class name, list function for all namespaces, or for the cluster)
RESOURCES: dict[str, tuple[str, str]] = {
    "Node": ("CoreV1Api", "list_node"),
    "ReplicaSet": ("AppsV1Api", "list_replica_set_for_all_namespaces"),
    "Job": ("BatchV1Api", "list_job_for_all_namespaces"),
    "Pod": ("CoreV1Api", "list_pod_for_all_namespaces"),
    "Service": ("CoreV1Api", "list_service_for_all_namespaces"),
    "EndpointSlice": ("DiscoveryV1Api", "list_endpoint_slice_for_all_namespaces"),
    # what NetworkPolicies say, and the namespace labels their namespaceSelectors match
    "Namespace": ("CoreV1Api", "list_namespace"),
    "NetworkPolicy": ("NetworkingV1Api", "list_network_policy_for_all_namespaces"),
}
#: kinds a watcher may be refused (a role from before they were watched): refused, they
#: count as listed, with nothing in them, so the identities are still complete and synced
OPTIONAL_KINDS = frozenset({"Namespace", "NetworkPolicy"})
BACKOFF_START_S, BACKOFF_MAX_S = 0.2, 10.0
WATCH_TIMEOUT_S = 60  # the server ends a watch after this; we resume from where it was


def load_api_client(kubeconfig: str | None = None) -> Any:
    """An ApiClient: from ``kubeconfig`` if given, else in-cluster, else ~/.kube/config."""
    from kubernetes import client, config

    if kubeconfig:
        api = config.new_client_from_config(config_file=kubeconfig)
    else:
        try:
            config.load_incluster_config()
            api = client.ApiClient()
        except config.ConfigException:
            api = config.new_client_from_config()
    if not api.configuration.verify_ssl:
        # The kubeconfig says insecure-skip-tls-verify: say so once, not on every request.
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        log.warning("k8s-watch: TLS certificate of %s not verified (insecure-skip-tls-verify)",
                    api.configuration.host)
    return api


class ResourceWatch(threading.Thread):
    """List+watch one kind forever (until :meth:`stop`), putting events on ``out``:
    ``(kind, "ADDED"|"MODIFIED"|"DELETED", object as a dict)``, and ``(kind, "SYNCED", None)``
    after each complete list."""

    def __init__(self, api_client: Any, kind: str, out: queue.Queue) -> None:
        super().__init__(name=f"watch-{kind}", daemon=True)
        from kubernetes import client

        api_name, list_name = RESOURCES[kind]
        self.kind = kind
        self.list = getattr(getattr(client, api_name)(api_client), list_name)
        self.serialize = api_client.sanitize_for_serialization
        self.out = out
        self.known: dict[str, dict[str, Any]] = {}  # uid -> last object (for relist diffs)
        self.counters: Counter[str] = Counter()
        self._stop = threading.Event()
        self._watch: Any = None

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        backoff = BACKOFF_START_S
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._relist()
                    backoff = BACKOFF_START_S
                self._watch = watch.Watch()
                for ev in self._watch.stream(self.list, resource_version=version, timeout_seconds=WATCH_TIMEOUT_S,
                                             allow_watch_bookmarks=True):
                    if self._stop.is_set():
                        return
                    kind = ev["type"]
                    obj = ev["raw_object"]
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise ApiException(status=410, reason="Gone")
                        raise RuntimeError(f"watch error: {obj}")
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if kind == "BOOKMARK":
                        continue
                    self._emit(kind, obj)
                backoff = BACKOFF_START_S
            except ApiException as exc:
                if exc.status == 410:
                    # Our resourceVersion is too old (compacted, or the server restarted
                    # and lost its watch cache): start over from a fresh list.
                    self.counters["relists_410"] += 1
                    version = None
                    continue
                if exc.status == 403 and self.kind in OPTIONAL_KINDS:
                    if not self.counters["forbidden"]:
                        log.warning("k8s-watch: the API server refuses to list %s (403): the watcher's role "
                                    "needs get/list/watch on namespaces and networkpolicies.networking.k8s.io "
                                    "(deploy/kustomize/base/rbac.yaml); policy verdicts stay null until it has "
                                    "them", self.kind)
                        self.out.put((self.kind, "FORBIDDEN", None))
                    self.counters["forbidden"] += 1
                    self._stop.wait(BACKOFF_MAX_S)  # the role may be granted later: ask again now and then
                    version = None
                    continue
                self._retry(f"API error {exc.status} {exc.reason}", backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                version = None
            except Exception as exc:  # network: refused, reset, timeout, server restarting
                if self._stop.is_set():
                    return
                self._retry(f"{type(exc).__name__}: {exc}", backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                version = None  # relist: events may have been missed while we were away

    def _retry(self, why: str, delay: float) -> None:
        self.counters["watch_errors"] += 1
        log.warning("k8s watch %s: %s; retrying in %.1f s", self.kind, why, delay)
        self._stop.wait(delay)

    def _relist(self) -> str:
        result = self.list(watch=False)
        items = [self.serialize(item) for item in result.items]
        self.counters["lists"] += 1
        seen = set()
        for obj in items:
            uid = (obj.get("metadata") or {}).get("uid") or str(id(obj))
            seen.add(uid)
            self._emit("MODIFIED" if uid in self.known else "ADDED", obj)
        for uid in [u for u in self.known if u not in seen]:
            # Deleted while we were not watching.
            self.counters["deleted_while_away"] += 1
            self._emit("DELETED", self.known[uid])
        self.out.put((self.kind, "SYNCED", None))
        return str(result.metadata.resource_version)

    def _emit(self, event: str, obj: dict[str, Any]) -> None:
        uid = (obj.get("metadata") or {}).get("uid") or ""
        if event == "DELETED":
            self.known.pop(uid, None)
        else:
            self.known[uid] = obj
        self.out.put((self.kind, event, obj))


def ensure_policy_topic(bootstrap: str) -> bool:
    """Create ``wire.k8s-policies`` (compacted, one partition) if it does not exist; True
    if it was created. One partition: a small table every processor reads whole, in the
    order the watcher saw the changes."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    from wirestream.broker import admin_client
    from wirestream.config import Settings
    from wirestream.kafka_security import raise_if_fatal

    admin = admin_client(bootstrap)
    if K8S_POLICIES in admin.list_topics(timeout=15).topics:
        return False  # an operator's (Strimzi's KafkaTopic) or ours: left as it is
    replication = Settings.from_env().replication_factor
    futures = admin.create_topics([NewTopic(K8S_POLICIES, num_partitions=1, replication_factor=replication,
                                            config={"cleanup.policy": "compact"})],
                                  operation_timeout=15, request_timeout=15)
    try:
        futures[K8S_POLICIES].result()
    except KafkaException as exc:
        if exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
            return False
        raise_if_fatal(exc.args[0], f"creating topic {K8S_POLICIES} at {bootstrap}")
        raise
    return True


class IdentityPublisher:
    """Publish identities to ``wire.k8s-identity`` (key = IP) and policies and namespaces to
    ``wire.k8s-policies`` (key = namespace/name, or the namespace): value = record or
    tombstone."""

    def __init__(self, bootstrap: str, codec: AvroCodec, source: str) -> None:
        self._encode = codec.encoder(K8S_IDENTITY)
        # created here when missing with one partition (the k8s-watch command creates only
        # the identity topic; analyze creates every table topic): docs/kubernetes.md,
        # "Network policy: intent against traffic"
        ensure_policy_topic(bootstrap)
        self._encode_policy = codec.encoder(K8S_POLICIES)
        self.kafka = WireProducer(bootstrap, **{"linger.ms": 20})
        self.bootstrap = bootstrap
        self.source = source
        self.published: Counter[str] = Counter()

    def policy_keys_in_topic(self, timeout: float = 30.0) -> set[str]:
        """The keys ``wire.k8s-policies`` holds a live record of (its last message is no
        tombstone): what an earlier watcher published. Read to the topic's end; after
        ``timeout`` seconds, what was read so far (with a warning)."""
        from confluent_kafka import Consumer, TopicPartition

        from wirestream.kafka import consumer_config
        from wirestream.kafka_security import raise_if_fatal
        from wirestream.reader import partitions_of

        consumer = Consumer(consumer_config(self.bootstrap))
        live: dict[str, bool] = {}
        try:
            ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)
                    for tp in partitions_of(self.bootstrap, [K8S_POLICIES])}
            pending = {p: high for p, (low, high) in ends.items() if high > low}
            if pending:
                consumer.assign([TopicPartition(K8S_POLICIES, p, low) for p, (low, _) in ends.items()])
            deadline = time.monotonic() + timeout
            while pending:
                if time.monotonic() > deadline:
                    log.warning("k8s-watch: %s not read to its end in %.0f s: objects deleted while no "
                                "watcher ran may keep their records", K8S_POLICIES, timeout)
                    break
                for msg in consumer.consume(1000, 0.2):
                    if msg.error():
                        raise_if_fatal(msg.error(), f"reading {K8S_POLICIES}")
                        continue
                    live[(msg.key() or b"").decode(errors="replace")] = msg.value() is not None
                    if msg.partition() in pending and msg.offset() + 1 >= pending[msg.partition()]:
                        del pending[msg.partition()]
        finally:
            consumer.close()
        return {key for key, alive in live.items() if alive}

    def publish_policy(self, key: str, record: dict[str, Any] | None) -> None:
        """One NetworkPolicy or namespace (``PolicyObjects.apply``'s output)."""
        if record is None:
            value = None
            self.published["policy_tombstones"] += 1
        else:
            value = self._encode_policy({**record, "source": self.source, "published_ts_us": time.time_ns() // 1000})
            self.published[record["kind"]] += 1
        self.kafka.produce(K8S_POLICIES, value, key.encode())
        self.kafka.poll(0)

    def publish(self, ip: str, ident: Identity | None) -> None:
        if ident is None:
            value = None
            self.published["tombstones"] += 1
        else:
            value = self._encode(identity_record(ip, ident, self.source))
            self.published["deleted" if ident.get("deleted_ts_us") else ident["kind"]] += 1
        self.kafka.produce(K8S_IDENTITY, value, ip.encode())
        self.kafka.poll(0)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for the broker; return how many identities were not delivered in time."""
        return self.kafka.flush(timeout)


def identity_record(ip: str, ident: Identity, source: str) -> dict[str, Any]:
    """The ``K8sIdentity`` Avro record of one IP."""
    return {
        "ip": ip, "kind": ident["kind"], "source": source,
        "pod": ident.get("pod"), "namespace": ident.get("namespace"), "uid": ident.get("uid"),
        "labels": ident.get("labels") or {}, "workload_kind": ident.get("workload_kind"),
        "workload": ident.get("workload"), "node": ident.get("node"), "zone": ident.get("zone"),
        "service": ident.get("service"), "services": ident.get("services") or [],
        "endpoints": ident.get("endpoints") or [],
        "valid_from_us": ident.get("valid_from_us"), "deleted_ts_us": ident.get("deleted_ts_us"),
        "published_ts_us": time.time_ns() // 1000,
        "container_ports": ident.get("container_ports") or [],
    }


def run_watcher(api_client: Any, publisher: IdentityPublisher, stop: Callable[[], bool],
                on_synced: Callable[[], None] | None = None,
                kinds: tuple[str, ...] = tuple(RESOURCES)) -> IdentityState:
    """Watch ``kinds`` and publish identity changes until ``stop()``. ``on_synced`` is
    called once every kind has been listed (the published state is then complete)."""
    events: queue.Queue = queue.Queue(maxsize=100_000)  # bounded: watches block when full
    watches = [ResourceWatch(api_client, kind, events) for kind in kinds]
    for w in watches:
        w.start()
    state = IdentityState()
    policies = PolicyObjects()
    # What an earlier watcher published: whatever of it the first lists do not have was
    # deleted while no watcher ran, and gets its tombstone once they are in (a policy
    # left behind would go on deciding verdicts for ever).
    policy_kinds = set(PolicyObjects.KINDS) & set(kinds)
    leftover = publisher.policy_keys_in_topic() if policy_kinds else set()
    synced: set[str] = set()
    try:
        while not stop():
            try:
                kind, event, obj = events.get(timeout=0.2)
            except queue.Empty:
                continue
            if event in ("SYNCED", "FORBIDDEN"):
                if event == "FORBIDDEN":
                    # nothing seen of this kind: what the topic holds of it is not known
                    # to be gone, and keeps its records
                    publisher.published[f"forbidden_{kind}"] += 1
                    leftover = set()
                if kind not in synced:
                    synced.add(kind)
                    if leftover and policy_kinds <= synced:
                        for key in sorted(leftover - set(policies.published)):
                            publisher.published["deleted_while_away"] += 1
                            publisher.publish_policy(key, None)
                        leftover = set()
                    if len(synced) == len(kinds):
                        publisher.flush()
                        if on_synced is not None:
                            on_synced()
                continue
            try:
                if kind in PolicyObjects.KINDS:
                    for key, record in policies.apply(kind, event, obj):
                        publisher.publish_policy(key, record)
                    continue
                changes = state.apply(kind, event, obj)
            except (KeyError, TypeError, ValueError) as exc:  # an object we cannot read: skip it
                publisher.published["unreadable_objects"] += 1
                log.warning("k8s-watch: skipping a %s %s event: %s: %s", kind, event, type(exc).__name__, exc)
                continue
            for ip, ident in changes:
                publisher.publish(ip, ident)
    finally:
        for w in watches:
            w.stop()
        publisher.flush()
    return state
