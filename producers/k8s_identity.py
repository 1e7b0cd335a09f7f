"""Kubernetes objects -> IP identities: what ``wirestream k8s-watch`` publishes.

:class:`IdentityState` holds the objects the watcher has seen (pods, services,
EndpointSlices, nodes, and the ReplicaSets and Jobs that own pods) and, for each change,
says which IPs now have a different identity. It knows nothing about Kafka or the API
server (``producers/k8s_watch.py`` does), so it is a plain state machine:

    changes = state.apply("Pod", "ADDED", pod)   # -> [(ip, identity record or None)]

An identity record (schemas/k8s_identity.avsc) is one of

- ``pod``: pod, namespace, labels, workload kind and name (ReplicaSet -> Deployment,
  StatefulSet, DaemonSet, Job -> CronJob; a bare pod is its own workload), node, zone,
  the services whose EndpointSlices list it, its containers' ports (what NetworkPolicy
  named ports resolve to), and ``valid_from_us``: when the pod started
  (``status.startTime``, else its creation);
- ``service``: a ClusterIP, with its service and the pod IPs backing it;
- ``node``: a node's InternalIP.

``None`` means the IP has no identity any more: the watcher publishes the pod's last
record with ``deleted_ts_us`` set (so processors know until when it held the IP), then a
tombstone. Pods with ``hostNetwork`` share their node's IP and are not published.
"""

from __future__ import annotations

import datetime
import json
import time
from collections import defaultdict
from typing import Any

Obj = dict[str, Any]
Identity = dict[str, Any]

ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def parse_time_us(value: Any) -> int | None:
    """An API timestamp -> µs since the epoch. The API server writes RFC 3339
    (``2026-11-27T06:50:00Z``); the client's models, once serialized, ISO 8601 with an
    offset (``+00:00``); a model field may still be a ``datetime``."""
    if not value:
        return None
    if isinstance(value, datetime.datetime):
        moment = value
    else:
        moment = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


class IdentityState:
    """The cluster as far as identities go; :meth:`apply` returns what changed."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], Obj] = {}
        self.services: dict[tuple[str, str], Obj] = {}
        self.slices: dict[tuple[str, str], Obj] = {}
        self.nodes: dict[str, Obj] = {}
        self.owners: dict[tuple[str, str, str], tuple[str, str]] = {}  # (kind, ns, name) -> owner (kind, name)
        self.published: dict[str, Identity] = {}  # ip -> the identity last published

    # --- input ------------------------------------------------------------------------------

    def apply(self, kind: str, event: str, obj: Obj) -> list[tuple[str, Identity | None]]:
        """Take one watch event (``ADDED``, ``MODIFIED``, ``DELETED``) of one object."""
        deleted = event == "DELETED"
        ns, name = _key(obj)
        if kind == "Pod":
            self._put(self.pods, (ns, name), obj, deleted)
        elif kind == "Service":
            self._put(self.services, (ns, name), obj, deleted)
        elif kind == "EndpointSlice":
            self._put(self.slices, (ns, name), obj, deleted)
        elif kind == "Node":
            self._put(self.nodes, name, obj, deleted)
        elif kind in ("ReplicaSet", "Job"):
            owner = _controller(obj)
            if deleted or owner is None:
                self.owners.pop((kind, ns, name), None)
            else:
                self.owners[(kind, ns, name)] = owner
        else:
            raise ValueError(f"unexpected kind {kind!r}")
        return self._diff(deleted_pod=obj if kind == "Pod" and deleted else None)

    @staticmethod
    def _put(table: dict, key: Any, obj: Obj, deleted: bool) -> None:
        if deleted:
            table.pop(key, None)
        else:
            table[key] = obj

    # --- identities -------------------------------------------------------------------------

    def identities(self) -> dict[str, Identity]:
        """IP -> identity of everything known now."""
        out: dict[str, Identity] = {}
        backing: dict[str, set[str]] = defaultdict(set)  # pod ip -> "ns/service"
        endpoints: dict[tuple[str, str], list[str]] = defaultdict(list)
        for (ns, _), s in self.slices.items():
            service = ((s.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
            if not service:
                continue
            for ep in s.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready") is False:
                    continue
                for ip in ep.get("addresses") or []:
                    backing[ip].add(f"{ns}/{service}")
                    endpoints[(ns, service)].append(ip)
        for name, node in self.nodes.items():
            for addr in (node.get("status") or {}).get("addresses") or []:
                if addr.get("type") == "InternalIP" and addr.get("address"):
                    out[addr["address"]] = {"kind": "node", "node": name, "zone": _zone(node)}
        for (ns, name), pod in self.pods.items():
            spec, status = pod.get("spec") or {}, pod.get("status") or {}
            if spec.get("hostNetwork") or status.get("phase") in ("Succeeded", "Failed"):
                continue
            ips = [p.get("ip") for p in status.get("podIPs") or [] if p.get("ip")] or \
                  ([status["podIP"]] if status.get("podIP") else [])
            node = spec.get("nodeName")
            workload_kind, workload = self._workload(pod)
            meta = pod.get("metadata") or {}
            for ip in ips:
                services = sorted(backing.get(ip, ()))
                out[ip] = {
                    "kind": "pod", "pod": name, "namespace": ns, "uid": meta.get("uid"),
                    "labels": dict(meta.get("labels") or {}), "workload_kind": workload_kind,
                    "workload": workload, "node": node,
                    "zone": _zone(self.nodes[node]) if node in self.nodes else None,
                    "services": services, "container_ports": _container_ports(spec),
                    "valid_from_us": parse_time_us(status.get("startTime"))
                    or parse_time_us(meta.get("creationTimestamp")),
                }
        for (ns, name), svc in self.services.items():
            spec = svc.get("spec") or {}
            ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
            for ip in ips:
                if ip and ip != "None":
                    out[ip] = {"kind": "service", "service": name, "namespace": ns,
                               "endpoints": sorted(endpoints.get((ns, name), []))}
        return out

    def _workload(self, pod: Obj) -> tuple[str, str]:
        """(kind, name) of the workload that owns ``pod``, through ReplicaSets and Jobs."""
        ns, name = _key(pod)
        owner = _controller(pod)
        if owner is None:
            return "Pod", name
        kind, owner_name = owner
        # A ReplicaSet belongs to a Deployment, a Job to a CronJob, when they say so.
        while kind in ("ReplicaSet", "Job") and (kind, ns, owner_name) in self.owners:
            kind, owner_name = self.owners[(kind, ns, owner_name)]
        return kind, owner_name

    def _diff(self, deleted_pod: Obj | None) -> list[tuple[str, Identity | None]]:
        now = self.identities()
        changes: list[tuple[str, Identity | None]] = []
        for ip, ident in now.items():
            if self.published.get(ip) != ident:
                changes.append((ip, ident))
        for ip in [ip for ip in self.published if ip not in now]:
            gone = dict(self.published[ip])
            # Until when it held the IP: the pod's deletion time, else now.
            ts = None
            if deleted_pod is not None and gone.get("uid") == (deleted_pod.get("metadata") or {}).get("uid"):
                ts = parse_time_us((deleted_pod.get("metadata") or {}).get("deletionTimestamp"))
            gone["deleted_ts_us"] = ts or time.time_ns() // 1000
            changes.append((ip, gone))
            changes.append((ip, None))
        for ip, ident in changes:
            if ident is None:
                self.published.pop(ip, None)
            elif "deleted_ts_us" not in ident:
                self.published[ip] = ident
        return changes


def _controller(obj: Obj) -> tuple[str, str] | None:
    """(kind, name) of the controlling owner reference, if any."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    for ref in refs:
        if ref.get("controller"):
            return ref.get("kind", ""), ref.get("name", "")
    return (refs[0].get("kind", ""), refs[0].get("name", "")) if refs else None


def _container_ports(spec: Obj) -> list[dict[str, Any]]:
    """The pod's containers' ports: a NetworkPolicy's named port (``port: http``) means
    the destination pod's container port of that name."""
    return [{"name": p.get("name"), "port": int(p["containerPort"]), "protocol": p.get("protocol") or "TCP"}
            for c in spec.get("containers") or [] for p in c.get("ports") or [] if p.get("containerPort")]


def _zone(node: Obj) -> str | None:
    labels = (node.get("metadata") or {}).get("labels") or {}
    return next((labels[k] for k in ZONE_LABELS if k in labels), None)


class PolicyObjects:
    """NetworkPolicies and namespaces' labels: what ``wire.k8s-policies`` publishes
    (schemas/k8s_policy.avsc). :meth:`apply` returns ``[(key, record or None)]`` for what
    changed: key ``namespace/name`` for a policy, the name for a namespace (no ``/`` in a
    namespace name), ``None`` for a deletion (a tombstone). A namespace's status changing
    (phase, conditions) is no change: its labels are all a policy reads of it."""

    KINDS = ("Namespace", "NetworkPolicy")

    def __init__(self) -> None:
        self.published: dict[str, Identity] = {}  # key -> record last published (without times)

    def apply(self, kind: str, event: str, obj: Obj) -> list[tuple[str, Identity | None]]:
        meta = obj.get("metadata") or {}
        name = meta.get("name") or ""
        if kind == "Namespace":
            key = name
            record: Identity = {"kind": kind, "namespace": None, "name": name, "uid": meta.get("uid"),
                                "labels": dict(meta.get("labels") or {}), "spec": None}
        elif kind == "NetworkPolicy":
            ns = meta.get("namespace") or ""
            key = f"{ns}/{name}"
            # sorted keys: the same spec is the same text, whichever way it was read (the
            # watch's raw object, the list's client models)
            record = {"kind": kind, "namespace": ns, "name": name, "uid": meta.get("uid"),
                      "labels": dict(meta.get("labels") or {}),
                      "spec": json.dumps(obj.get("spec") or {}, sort_keys=True, separators=(",", ":"))}
        else:
            raise ValueError(f"unexpected kind {kind!r}")
        if not name:
            raise ValueError(f"a {kind} without a name")
        if event == "DELETED":
            if self.published.pop(key, None) is None:
                return []
            return [(key, None)]
        if self.published.get(key) == record:
            return []
        self.published[key] = record
        return [(key, {**record, "resource_version": meta.get("resourceVersion")})]
