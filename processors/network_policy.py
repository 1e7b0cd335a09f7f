"""Kubernetes NetworkPolicy (``networking.k8s.io/v1``) evaluated against one connection.

Pure and I/O-free: :class:`PolicyTable` holds the policies and namespace labels that
``wirestream k8s-watch`` publishes on ``wire.k8s-policies`` (schemas/k8s_policy.avsc),
and :meth:`PolicyTable.evaluate` says, for a connection between two endpoints (a pod as
``wire.k8s-identity`` describes it, or a bare IP), whether the declared policies allow it:

    table.add("shop/deny-all", record)          # a message of wire.k8s-policies
    decision = table.evaluate(client, server, 5432, "TCP")
    decision.verdict, decision.policies          # "denied", ("shop/deny-all",)

Kubernetes' semantics, as the API documents them (and the traps they hold):

- a pod is *isolated* for ingress (egress) only if some policy of its namespace selects it
  (``podSelector``; ``{}`` selects every pod of the namespace) with ``Ingress``
  (``Egress``) in its ``policyTypes``. ``policyTypes`` left out means ``Ingress``, plus
  ``Egress`` if the policy has egress rules (the API server's defaulting);
- a connection is allowed iff egress from the client allows it (or the client is not
  egress-isolated, or is no pod) AND ingress to the server allows it (or the server is not
  ingress-isolated, or is no pod); policies are additive: one rule of one policy is enough;
- a rule's ``from``/``to`` left out or empty: every source/destination; ``ports`` left out
  or empty: every port and protocol;
- a peer: ``podSelector`` alone (pods of the policy's namespace), ``namespaceSelector``
  alone (every pod of those namespaces; ``{}``: all namespaces), both in ONE peer entry
  (pods matching both), or ``ipBlock`` (``cidr`` minus ``except``). Two entries are
  alternatives. Selector peers match pods only, never a bare IP;
- a port: ``protocol`` defaults to TCP; ``port`` a number (with ``endPort``: a range), a
  name (resolved against the destination pod's container ports: name, protocol and number
  must all fit), or left out (every port of that protocol);
- selectors: ``matchLabels`` and ``matchExpressions`` (``In``, ``NotIn``, ``Exists``,
  ``DoesNotExist``), all of which must hold.

What this is not: the policies are intent, evaluated as declared. A CNI may enforce more
(Cilium's or Calico's own policy kinds, not read here) or less (a CNI without policy
support enforces nothing: exactly what the ``policy_violation`` detection is for).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# the compacted table k8s-watch publishes policies and namespace labels to (re-exported)
from wirestream.topics import K8S_POLICIES as K8S_POLICIES

ALLOWED, DENIED, NO_POLICY = "allowed", "denied", "no_policy"
#: the label the API server (1.21+; always from 1.22) puts on every namespace
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

Labels = Mapping[str, str]


@dataclass(frozen=True)
class ContainerPort:
    name: str | None
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Endpoint:
    """One end of a connection: its IP, and if it is a pod, what policies select it by."""

    ip: str
    namespace: str | None = None  # None: not a pod (an external host, a node, a ClusterIP)
    pod: str | None = None
    labels: Labels = field(default_factory=dict)
    ports: tuple[ContainerPort, ...] = ()

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


@dataclass(frozen=True)
class Decision:
    """``verdict``: allowed, denied or no_policy; ``policies``: ``namespace/name`` of the
    policies that decided it (those whose rules allowed it; when denied, those that
    isolate the side that denies and allowed nothing), sorted."""

    verdict: str
    policies: tuple[str, ...]


class PolicyError(ValueError):
    """A policy record that cannot be read (says which and why)."""


# --- selectors ----------------------------------------------------------------------------------


def selector_matches(selector: Mapping[str, Any] | None, labels: Labels) -> bool:
    """A ``LabelSelector`` against ``labels``. ``{}`` matches everything; ``None`` (no
    selector at all) nothing: callers decide what an absent selector means."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In":
            ok = key in labels and labels[key] in values
        elif op == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif op == "Exists":
            ok = key in labels
        elif op == "DoesNotExist":
            ok = key not in labels
        else:  # the API server rejects other operators; a record that has one matches nothing
            return False
        if not ok:
            return False
    return True


# --- one policy ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _IpBlock:
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    excepts: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def contains(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if addr.version != self.cidr.version or addr not in self.cidr:
            return False
        return not any(addr in e for e in self.excepts if e.version == addr.version)


@dataclass(frozen=True)
class _Peer:
    pod_selector: Mapping[str, Any] | None
    namespace_selector: Mapping[str, Any] | None
    ip_block: _IpBlock | None


@dataclass(frozen=True)
class _Rule:
    peers: tuple[_Peer, ...] | None  # None: from/to left out or empty, every peer
    ports: tuple[Mapping[str, Any], ...] | None  # None: every port


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    pod_selector: Mapping[str, Any]
    ingress_isolates: bool
    egress_isolates: bool
    ingress: tuple[_Rule, ...]
    egress: tuple[_Rule, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, namespace: str, name: str, spec: Mapping[str, Any]) -> Policy:
        """A NetworkPolicy ``spec`` as the API returns it (camelCase)."""
        where = f"NetworkPolicy {namespace}/{name}"
        ingress_rules = spec.get("ingress") or []
        egress_rules = spec.get("egress") or []
        types = spec.get("policyTypes")
        if not types:  # the API server's defaulting, for a spec that did not go through it
            types = ["Ingress"] + (["Egress"] if egress_rules else [])
        return cls(namespace, name, spec.get("podSelector") or {},
                   "Ingress" in types, "Egress" in types,
                   tuple(_rule(r, "from", where) for r in ingress_rules),
                   tuple(_rule(r, "to", where) for r in egress_rules))

    def selects(self, pod: Endpoint) -> bool:
        return pod.namespace == self.namespace and selector_matches(self.pod_selector, pod.labels)


def _rule(rule: Mapping[str, Any], peers_key: str, where: str) -> _Rule:
    peers = rule.get(peers_key) or []
    ports = rule.get("ports") or []
    return _Rule(tuple(_peer(p, where) for p in peers) or None, tuple(ports) or None)


def _peer(peer: Mapping[str, Any], where: str) -> _Peer:
    block = peer.get("ipBlock")
    ip_block = None
    if block is not None:
        try:
            ip_block = _IpBlock(ipaddress.ip_network(block["cidr"], strict=False),
                                tuple(ipaddress.ip_network(e, strict=False) for e in block.get("except") or []))
        except (KeyError, ValueError) as exc:
            raise PolicyError(f"{where}: ipBlock {block!r} is not a CIDR: {exc}") from None
    return _Peer(peer.get("podSelector"), peer.get("namespaceSelector"), ip_block)


# --- the table ----------------------------------------------------------------------------------


class PolicyTable:
    """The policies and namespace labels of a cluster, as ``wire.k8s-policies`` has them.

    ``known`` turns true with the first record read: from then on the watcher has
    published its namespaces, so a cluster with no policy at all is ``no_policy``, not
    unknown."""

    def __init__(self) -> None:
        self.policies: dict[str, Policy] = {}  # "namespace/name" -> policy
        # namespace -> its policies: a policy selects pods of its own namespace only, so a
        # record looks at those of its two ends' namespaces, not at every policy
        self._by_namespace: dict[str, list[Policy]] = {}
        self.namespaces: dict[str, dict[str, str]] = {}  # name -> labels
        self.known = False
        self.unreadable = 0

    def add(self, key: str, record: Mapping[str, Any] | None) -> None:
        """One message of ``wire.k8s-policies``: key ``namespace/name`` (a NetworkPolicy)
        or ``name`` (a Namespace; a namespace name has no ``/``); ``None`` is a tombstone."""
        self.known = True
        is_policy = "/" in key
        if record is None:
            (self.policies if is_policy else self.namespaces).pop(key, None)
            self._by_namespace.clear()
            return
        if record.get("kind") == "Namespace":
            self.namespaces[record["name"]] = dict(record.get("labels") or {})
            return
        try:
            spec = json.loads(record.get("spec") or "{}")
            policy = Policy.parse(record["namespace"], record["name"], spec)
        except (json.JSONDecodeError, PolicyError, KeyError, TypeError, AttributeError) as exc:
            # A policy we cannot read decides nothing; forget any older version of it
            # rather than go on enforcing what it used to say.
            self.unreadable += 1
            self.policies.pop(key, None)
            self._by_namespace.clear()
            raise PolicyError(f"wire.k8s-policies {key}: {type(exc).__name__}: {exc}") from None
        self.policies[key] = policy
        self._by_namespace.clear()

    def _in_namespace(self, namespace: str | None) -> list[Policy]:
        if not self._by_namespace and self.policies:  # rebuilt after a change
            for p in self.policies.values():
                self._by_namespace.setdefault(p.namespace, []).append(p)
        return self._by_namespace.get(namespace or "", [])

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        labels = dict(self.namespaces.get(namespace) or {})
        labels.setdefault(NAMESPACE_NAME_LABEL, namespace)
        return labels

    # --- evaluation -----------------------------------------------------------------------------

    def evaluate(self, client: Endpoint, server: Endpoint, port: int | None, protocol: str) -> Decision:
        """Whether the policies allow ``client`` to reach ``server`` on ``port``/``protocol``
        (``TCP``, ``UDP``, ``SCTP``; anything else, e.g. ``ICMP``, only passes rules without
        ports)."""
        sides: list[tuple[bool, tuple[str, ...]]] = []  # (allowed, deciding policies) per isolated side
        if client.is_pod:
            isolating = [p for p in self._in_namespace(client.namespace) if p.egress_isolates and p.selects(client)]
            if isolating:
                allowing = tuple(p.key for p in isolating
                                 if any(self._rule_allows(r, p, server, server, port, protocol) for r in p.egress))
                sides.append((bool(allowing), allowing or tuple(p.key for p in isolating)))
        if server.is_pod:
            isolating = [p for p in self._in_namespace(server.namespace) if p.ingress_isolates and p.selects(server)]
            if isolating:
                allowing = tuple(p.key for p in isolating
                                 if any(self._rule_allows(r, p, client, server, port, protocol) for r in p.ingress))
                sides.append((bool(allowing), allowing or tuple(p.key for p in isolating)))
        if not sides:
            return Decision(NO_POLICY, ())
        denying = [names for ok, names in sides if not ok]
        if denying:
            return Decision(DENIED, tuple(sorted({n for names in denying for n in names})))
        return Decision(ALLOWED, tuple(sorted({n for _, names in sides for n in names})))

    def _rule_allows(self, rule: _Rule, policy: Policy, peer: Endpoint, destination: Endpoint,
                     port: int | None, protocol: str) -> bool:
        """``peer``: the other end (the source for ingress, the destination for egress);
        ``destination``: the pod whose container ports name the port."""
        if rule.ports is not None and not any(_port_matches(p, destination, port, protocol) for p in rule.ports):
            return False
        return rule.peers is None or any(self._peer_matches(p, policy, peer) for p in rule.peers)

    def _peer_matches(self, peer: _Peer, policy: Policy, ep: Endpoint) -> bool:
        if peer.ip_block is not None:
            # declared intent: an ipBlock names IPs, whether or not a pod holds them
            return peer.ip_block.contains(ep.ip)
        if ep.namespace is None:
            return False  # selectors name pods, never a bare IP
        if peer.namespace_selector is not None:
            if not selector_matches(peer.namespace_selector, self.namespace_labels(ep.namespace)):
                return False
        elif ep.namespace != policy.namespace:  # podSelector alone: the policy's own namespace
            return False
        if peer.pod_selector is not None:
            return selector_matches(peer.pod_selector, ep.labels)
        return peer.namespace_selector is not None  # an empty peer {} is invalid: matches nothing


def _port_matches(entry: Mapping[str, Any], destination: Endpoint, port: int | None, protocol: str) -> bool:
    if (entry.get("protocol") or "TCP").upper() != protocol.upper():
        return False
    want = entry.get("port")
    if want is None:
        return True  # every port of this protocol
    if port is None:
        return False
    if isinstance(want, str) and not want.isdigit():
        # a named port: the destination pod's container port of that name and protocol
        return any(cp.name == want and cp.protocol.upper() == protocol.upper() and cp.port == port
                   for cp in destination.ports)
    first = int(want)
    end = entry.get("endPort")
    return first <= port <= int(end) if end is not None else port == first


def endpoint_of(ip: str, identity: Mapping[str, Any] | None) -> Endpoint:
    """The :class:`Endpoint` of an IP from its ``wire.k8s-identity`` record (None or not a
    pod: a bare IP)."""
    if identity is None or identity.get("kind") != "pod":
        return Endpoint(ip)
    return Endpoint(ip, identity.get("namespace"), identity.get("pod"), dict(identity.get("labels") or {}),
                    tuple(ContainerPort(p.get("name"), int(p["port"]), p.get("protocol") or "TCP")
                          for p in identity.get("container_ports") or []))


def established(record: Mapping[str, Any]) -> bool:
    """Traffic got through: a TCP connection whose handshake completed or that carried
    data both ways; a UDP/SCTP/ICMP flow with packets both ways."""
    if "handshake_seen" in record:  # wire.connections
        return bool(record["handshake_seen"]) or (record.get("bytes_c2s", 0) > 0 and record.get("bytes_s2c", 0) > 0)
    return record.get("packets_c2s", 0) > 0 and record.get("packets_s2c", 0) > 0


def violation_alert(topic: str, record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``policy_violation`` alert (wire.alerts) of a record whose traffic got through
    although the policies deny it: the enforcement does not do what was declared. Only a
    connection's final record (interim ones would repeat it) and a flow's record; the id is
    stable (source, connection), so a record emitted again after a restart is the same
    alert."""
    from .detections import alert_id

    if record.get("policy_verdict") != DENIED or not established(record):
        return None
    if "final" in record and not record["final"]:
        return None
    conn_id = record.get("connection_id") or record.get("flow_id")
    client = f"{record['client_ip']}:{record.get('client_port')}"
    server = f"{record['server_ip']}:{record.get('server_port')}"
    who_c = f"{record.get('client_namespace')}/{record.get('client_pod')}" if record.get("client_pod") else client
    who_s = f"{record.get('server_namespace')}/{record.get('server_pod')}" if record.get("server_pod") else server
    names = list(record.get("policy_names") or [])
    transport = record.get("transport") or "tcp"
    evidence = {"client": client, "server": server, "transport": transport, "policies": ",".join(names),
                "topic": topic}
    for side in ("client", "server"):
        for f in ("pod", "namespace"):
            if record.get(f"{side}_{f}"):
                evidence[f"{side}_{f}"] = str(record[f"{side}_{f}"])
    return {
        "alert_id": alert_id(record.get("source_id", ""), "policy_violation", conn_id),
        "source_id": record.get("source_id", ""),
        "ts_us": record.get("start_ts_us") or 0,
        "kind": "policy_violation",
        "severity": "critical",
        "summary": f"{who_c} reached {who_s} ({transport}/{record.get('server_port')}) although "
                   f"NetworkPolicy {', '.join(names)} denies it",
        "connection_id": conn_id,
        "service": record.get("server_service"),
        "evidence": evidence,
        "community_id": record.get("community_id"),
    }
