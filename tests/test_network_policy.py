"""NetworkPolicy semantics (processors/network_policy.py), trap by trap, as a table.

Each row: the policies of a small cluster, a connection (client, server, port, protocol),
and what Kubernetes' semantics say of it: verdict and the policies that decided it. The
same semantics against a real API server (objects published by k8s-watch, connections
from a capture): test_k8s_policy.py.
"""

from __future__ import annotations

import json

import pytest
from wirestream.processors.k8s_enrichment import Enricher, IdentityIndex
from wirestream.processors.network_policy import (
    ALLOWED,
    DENIED,
    NO_POLICY,
    ContainerPort,
    Endpoint,
    PolicyError,
    PolicyTable,
    selector_matches,
    violation_alert,
)
from wirestream.producers.k8s_identity import PolicyObjects

# The cluster: namespaces shop (team=shop, env=prod), data (team=data, env=prod), dev (env=dev).
NAMESPACES = {"shop": {"team": "shop", "env": "prod"}, "data": {"team": "data", "env": "prod"},
              "dev": {"env": "dev"}}
WEB = Endpoint("10.0.1.1", "shop", "web-1", {"app": "web", "tier": "front"})
API = Endpoint("10.0.1.2", "shop", "api-1", {"app": "api", "tier": "back"},
               (ContainerPort("http", 8080, "TCP"), ContainerPort("metrics", 9090, "TCP"),
                ContainerPort("dns", 5353, "UDP")))
DB = Endpoint("10.0.2.1", "data", "db-0", {"app": "db"}, (ContainerPort("pg", 5432, "TCP"),))
DATA_WEB = Endpoint("10.0.2.2", "data", "web-x", {"app": "web", "tier": "front"})  # app=web, another namespace
DEV_WEB = Endpoint("10.0.3.1", "dev", "web-d", {"app": "web"})
OUTSIDE = Endpoint("203.0.113.7")  # no pod
OFFICE = Endpoint("192.168.10.20")  # no pod, in 192.168.10.0/24
OFFICE_PRINTER = Endpoint("192.168.10.99")  # no pod, in the except


def policy(name: str, ns: str = "shop", pod_selector: dict | None = None, **spec: object) -> dict:
    return {"namespace": ns, "name": name, "spec": {"podSelector": pod_selector or {}, **spec}}


def to_api(*peers: dict, ports: list | None = None) -> dict:
    rule: dict = {"from": list(peers)}
    if ports is not None:
        rule["ports"] = ports
    return rule


API_SEL = {"matchLabels": {"app": "api"}}
DB_SEL = {"matchLabels": {"app": "db"}}
DENY_ALL_INGRESS = policy("deny-all", policyTypes=["Ingress"])  # empty podSelector: every pod of shop

CASES = [
    # --- isolation -------------------------------------------------------------------------------
    pytest.param([], WEB, API, 8080, "TCP", NO_POLICY, (), id="no-policy-at-all"),
    pytest.param([DENY_ALL_INGRESS], WEB, API, 8080, "TCP", DENIED, ("shop/deny-all",),
                 id="empty-podSelector-selects-every-pod-of-its-namespace"),
    pytest.param([DENY_ALL_INGRESS], API, DB, 5432, "TCP", NO_POLICY, (),
                 id="a-policy-isolates-pods-of-its-own-namespace-only"),
    pytest.param([policy("api-in", pod_selector=API_SEL, ingress=[to_api({"podSelector": {}})])],
                 API, DB, 5432, "TCP", NO_POLICY, (),
                 id="policyTypes-default-ingress-only-client-not-egress-isolated"),
    pytest.param([policy("api-out", pod_selector=API_SEL, egress=[{"to": [{"podSelector": {}}]}])],
                 API, DB, 5432, "TCP", DENIED, ("shop/api-out",),
                 id="policyTypes-default-has-Egress-when-egress-rules-exist"),
    pytest.param([policy("api-out", pod_selector=API_SEL, egress=[{"to": [{"podSelector": {}}]}])],
                 WEB, API, 8080, "TCP", DENIED, ("shop/api-out",),
                 id="policyTypes-default-also-isolates-ingress-with-no-ingress-rules"),
    pytest.param([policy("no-egress", pod_selector=API_SEL, policyTypes=["Egress"])],
                 API, DB, 5432, "TCP", DENIED, ("shop/no-egress",), id="Egress-type-without-rules-denies-all-egress"),
    pytest.param([policy("no-egress", pod_selector=API_SEL, policyTypes=["Egress"])],
                 WEB, API, 8080, "TCP", NO_POLICY, (), id="Egress-only-policy-leaves-ingress-open"),
    pytest.param([policy("allow-all", policyTypes=["Ingress"], ingress=[{}])], WEB, API, 1, "TCP", ALLOWED,
                 ("shop/allow-all",), id="rule-{}-allows-everything"),
    # --- peers ---------------------------------------------------------------------------------
    pytest.param([policy("from-web", pod_selector=API_SEL, ingress=[to_api({"podSelector": {"matchLabels": {"app": "web"}}})])],
                 WEB, API, 8080, "TCP", ALLOWED, ("shop/from-web",), id="podSelector-peer-same-namespace"),
    pytest.param([policy("from-web", pod_selector=API_SEL, ingress=[to_api({"podSelector": {"matchLabels": {"app": "web"}}})])],
                 DATA_WEB, API, 8080, "TCP", DENIED, ("shop/from-web",),
                 id="podSelector-peer-alone-never-matches-other-namespaces"),
    pytest.param([policy("and", pod_selector=API_SEL, ingress=[to_api(
                     {"namespaceSelector": {"matchLabels": {"team": "data"}}, "podSelector": {"matchLabels": {"app": "db"}}})])],
                 DATA_WEB, API, 8080, "TCP", DENIED, ("shop/and",),
                 id="ns-and-pod-selector-in-ONE-peer-need-both-(namespace-fits-pod-not)"),
    pytest.param([policy("and", pod_selector=API_SEL, ingress=[to_api(
                     {"namespaceSelector": {"matchLabels": {"team": "data"}}, "podSelector": {"matchLabels": {"app": "web"}}})])],
                 WEB, API, 8080, "TCP", DENIED, ("shop/and",),
                 id="ns-and-pod-selector-in-ONE-peer-need-both-(pod-fits-namespace-not)"),
    pytest.param([policy("and", pod_selector=API_SEL, ingress=[to_api(
                     {"namespaceSelector": {"matchLabels": {"team": "data"}}, "podSelector": {"matchLabels": {"app": "web"}}})])],
                 DATA_WEB, API, 8080, "TCP", ALLOWED, ("shop/and",), id="ns-and-pod-selector-in-ONE-peer-both-fit"),
    pytest.param([policy("or", pod_selector=API_SEL, ingress=[to_api(
                     {"namespaceSelector": {"matchLabels": {"team": "data"}}}, {"podSelector": {"matchLabels": {"app": "web"}}})])],
                 DB, API, 8080, "TCP", ALLOWED, ("shop/or",), id="TWO-peers-either:-the-namespace-one"),
    pytest.param([policy("or", pod_selector=API_SEL, ingress=[to_api(
                     {"namespaceSelector": {"matchLabels": {"team": "data"}}}, {"podSelector": {"matchLabels": {"app": "web"}}})])],
                 WEB, API, 8080, "TCP", ALLOWED, ("shop/or",), id="TWO-peers-either:-the-pod-one"),
    pytest.param([policy("or", pod_selector=API_SEL, ingress=[to_api(
                     {"namespaceSelector": {"matchLabels": {"team": "data"}}}, {"podSelector": {"matchLabels": {"app": "web"}}})])],
                 DEV_WEB, API, 8080, "TCP", DENIED, ("shop/or",), id="TWO-peers-neither"),
    pytest.param([policy("any-ns", pod_selector=API_SEL, ingress=[to_api({"namespaceSelector": {}})])],
                 DEV_WEB, API, 8080, "TCP", ALLOWED, ("shop/any-ns",), id="namespaceSelector-{}-is-every-namespace"),
    pytest.param([policy("any-ns", pod_selector=API_SEL, ingress=[to_api({"namespaceSelector": {}})])],
                 OUTSIDE, API, 8080, "TCP", DENIED, ("shop/any-ns",), id="namespaceSelector-{}-is-pods-only-not-outside"),
    pytest.param([policy("by-name", pod_selector=API_SEL, ingress=[to_api(
                     {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dev"}}})])],
                 DEV_WEB, API, 8080, "TCP", ALLOWED, ("shop/by-name",), id="namespace-name-label-kubernetes.io/metadata.name"),
    pytest.param([policy("from-all", pod_selector=API_SEL, ingress=[{"from": []}])],
                 OUTSIDE, API, 8080, "TCP", ALLOWED, ("shop/from-all",), id="empty-from-list-is-every-source"),
    pytest.param([policy("office", pod_selector=API_SEL, ingress=[to_api(
                     {"ipBlock": {"cidr": "192.168.10.0/24", "except": ["192.168.10.96/28"]}})])],
                 OFFICE, API, 8080, "TCP", ALLOWED, ("shop/office",), id="ipBlock-cidr"),
    pytest.param([policy("office", pod_selector=API_SEL, ingress=[to_api(
                     {"ipBlock": {"cidr": "192.168.10.0/24", "except": ["192.168.10.96/28"]}})])],
                 OFFICE_PRINTER, API, 8080, "TCP", DENIED, ("shop/office",), id="ipBlock-except"),
    pytest.param([policy("pods-net", pod_selector=API_SEL, ingress=[to_api({"ipBlock": {"cidr": "10.0.0.0/16"}})])],
                 DEV_WEB, API, 8080, "TCP", ALLOWED, ("shop/pods-net",), id="ipBlock-names-pod-IPs-too-(declared-intent)"),
    pytest.param([policy("v6", pod_selector=API_SEL, ingress=[to_api({"ipBlock": {"cidr": "::/0"}})])],
                 OFFICE, API, 8080, "TCP", DENIED, ("shop/v6",), id="ipBlock-IPv6-never-matches-IPv4"),
    # --- ports ---------------------------------------------------------------------------------
    pytest.param([policy("p", pod_selector=API_SEL, ingress=[to_api({"podSelector": {}}, ports=[{"port": 8080}])])],
                 WEB, API, 8080, "TCP", ALLOWED, ("shop/p",), id="port-protocol-defaults-to-TCP"),
    pytest.param([policy("p", pod_selector=API_SEL, ingress=[to_api({"podSelector": {}}, ports=[{"port": 8080}])])],
                 WEB, API, 8080, "UDP", DENIED, ("shop/p",), id="port-protocol-default-TCP-does-not-allow-UDP"),
    pytest.param([policy("p", pod_selector=API_SEL, ingress=[to_api({"podSelector": {}}, ports=[{"port": 8080}])])],
                 WEB, API, 8081, "TCP", DENIED, ("shop/p",), id="port-other-number"),
    pytest.param([policy("named", pod_selector=API_SEL, ingress=[to_api({"podSelector": {}}, ports=[{"port": "http"}])])],
                 WEB, API, 8080, "TCP", ALLOWED, ("shop/named",), id="named-port-resolved-on-the-server-pod"),
    pytest.param([policy("named", pod_selector=API_SEL, ingress=[to_api({"podSelector": {}}, ports=[{"port": "http"}])])],
                 WEB, API, 9090, "TCP", DENIED, ("shop/named",), id="named-port-is-one-number-not-any-container-port"),
    pytest.param([policy("named", pod_selector=API_SEL, ingress=[to_api({"podSelector": {}},
                                                                        ports=[{"port": "dns", "protocol": "TCP"}])])],
                 WEB, API, 5353, "TCP", DENIED, ("shop/named",), id="named-port-protocol-must-fit-the-container-port"),
    pytest.param([policy("named", pod_selector=API_SEL, ingress=[to_api({"podSelector": {}},
                                                                        ports=[{"port": "dns", "protocol": "UDP"}])])],
                 WEB, API, 5353, "UDP", ALLOWED, ("shop/named",), id="named-UDP-port"),
    pytest.param([policy("range", pod_selector=API_SEL, ingress=[to_api({"podSelector": {}},
                                                                        ports=[{"port": 8000, "endPort": 8100}])])],
                 WEB, API, 8080, "TCP", ALLOWED, ("shop/range",), id="endPort-range-inside"),
    pytest.param([policy("range", pod_selector=API_SEL, ingress=[to_api({"podSelector": {}},
                                                                        ports=[{"port": 8000, "endPort": 8100}])])],
                 WEB, API, 8101, "TCP", DENIED, ("shop/range",), id="endPort-range-outside"),
    pytest.param([policy("udp-any", pod_selector=API_SEL, ingress=[to_api({"podSelector": {}}, ports=[{"protocol": "UDP"}])])],
                 WEB, API, 12345, "UDP", ALLOWED, ("shop/udp-any",), id="port-left-out-is-every-port-of-the-protocol"),
    pytest.param([policy("any-port", pod_selector=API_SEL, ingress=[to_api({"podSelector": {}})])],
                 WEB, API, 31337, "SCTP", ALLOWED, ("shop/any-port",), id="rule-without-ports-is-every-port-and-protocol"),
    pytest.param([policy("any-port", pod_selector=API_SEL, ingress=[to_api({"podSelector": {}})])],
                 WEB, API, None, "ICMP", ALLOWED, ("shop/any-port",), id="ICMP-passes-a-rule-without-ports"),
    pytest.param([policy("p", pod_selector=API_SEL, ingress=[to_api({"podSelector": {}}, ports=[{"port": 8080}])])],
                 WEB, API, None, "ICMP", DENIED, ("shop/p",), id="ICMP-never-passes-a-rule-with-ports"),
    # --- egress and ingress together, additivity --------------------------------------------------
    pytest.param([policy("web-out", pod_selector={"matchLabels": {"app": "web"}}, policyTypes=["Egress"],
                         egress=[{"to": [{"namespaceSelector": {"matchLabels": {"team": "data"}}}], "ports": [{"port": "pg"}]}])],
                 WEB, DB, 5432, "TCP", ALLOWED, ("shop/web-out",), id="egress-named-port-resolved-on-the-destination"),
    pytest.param([policy("web-out", pod_selector={"matchLabels": {"app": "web"}}, policyTypes=["Egress"],
                         egress=[{"to": [{"namespaceSelector": {}}]}]),
                  policy("db-in", ns="data", pod_selector=DB_SEL, ingress=[to_api({"podSelector": {}})])],
                 WEB, DB, 5432, "TCP", DENIED, ("data/db-in",), id="egress-allows-but-ingress-denies"),
    pytest.param([policy("web-out", pod_selector={"matchLabels": {"app": "web"}}, policyTypes=["Egress"],
                         egress=[{"to": [{"podSelector": {}}]}]),
                  policy("db-in", ns="data", pod_selector=DB_SEL, ingress=[to_api({"podSelector": {}})])],
                 WEB, DB, 5432, "TCP", DENIED, ("data/db-in", "shop/web-out"),
                 id="egress-podSelector-alone-is-its-own-namespace-both-deny"),
    pytest.param([policy("web-out", pod_selector={"matchLabels": {"app": "web"}}, policyTypes=["Egress"],
                         egress=[{"to": [{"podSelector": {}, "namespaceSelector": {}}]}]),
                  policy("db-in", ns="data", pod_selector=DB_SEL, ingress=[to_api({"namespaceSelector": {"matchLabels": {"team": "shop"}}})])],
                 WEB, DB, 5432, "TCP", ALLOWED, ("data/db-in", "shop/web-out"), id="both-sides-allow-names-both"),
    pytest.param([policy("web-out", pod_selector={"matchLabels": {"app": "web"}}, policyTypes=["Egress"],
                         egress=[{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}])],
                 WEB, OUTSIDE, 443, "TCP", ALLOWED, ("shop/web-out",), id="egress-to-outside-by-ipBlock"),
    pytest.param([policy("web-out", pod_selector={"matchLabels": {"app": "web"}}, policyTypes=["Egress"],
                         egress=[{"to": [{"namespaceSelector": {}}]}])],
                 WEB, OUTSIDE, 443, "TCP", DENIED, ("shop/web-out",), id="egress-selector-peers-never-match-outside"),
    pytest.param([DENY_ALL_INGRESS, policy("from-web", pod_selector=API_SEL,
                                           ingress=[to_api({"podSelector": {"matchLabels": {"app": "web"}}})])],
                 WEB, API, 8080, "TCP", ALLOWED, ("shop/from-web",), id="policies-add-up:-one-rule-of-one-is-enough"),
    pytest.param([policy("a", pod_selector=API_SEL, policyTypes=["Ingress"]), policy("b", policyTypes=["Ingress"])],
                 WEB, API, 8080, "TCP", DENIED, ("shop/a", "shop/b"), id="denied-names-every-isolating-policy"),
    # --- matchExpressions ----------------------------------------------------------------------
    pytest.param([policy("expr", pod_selector=API_SEL, ingress=[to_api({"podSelector": {"matchExpressions": [
                     {"key": "tier", "operator": "In", "values": ["front", "edge"]},
                     {"key": "canary", "operator": "DoesNotExist"}]}})])],
                 WEB, API, 8080, "TCP", ALLOWED, ("shop/expr",), id="matchExpressions-In-DoesNotExist"),
    pytest.param([policy("expr", pod_selector={"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]},
                         policyTypes=["Ingress"])],
                 WEB, API, 8080, "TCP", DENIED, ("shop/expr",), id="matchExpressions-NotIn-selects-the-api"),
    pytest.param([policy("expr", pod_selector={"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["api"]}]},
                         policyTypes=["Ingress"])],
                 WEB, API, 8080, "TCP", NO_POLICY, (), id="matchExpressions-NotIn-excludes-the-api"),
    pytest.param([policy("expr", pod_selector={"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
                         policyTypes=["Ingress"]),
                  ],
                 OUTSIDE, API, 8080, "TCP", DENIED, ("shop/expr",), id="matchExpressions-Exists"),
    pytest.param([policy("expr", pod_selector=API_SEL, ingress=[to_api({"namespaceSelector": {"matchExpressions": [
                     {"key": "env", "operator": "In", "values": ["prod"]}]}})])],
                 DEV_WEB, API, 8080, "TCP", DENIED, ("shop/expr",), id="namespace-matchExpressions"),
]


def _table(policies: list[dict]) -> PolicyTable:
    table = PolicyTable()
    for ns, labels in NAMESPACES.items():
        table.add(ns, {"kind": "Namespace", "name": ns, "labels": labels})
    for p in policies:
        table.add(f"{p['namespace']}/{p['name']}", {"kind": "NetworkPolicy", "namespace": p["namespace"],
                                                    "name": p["name"], "spec": json.dumps(p["spec"])})
    return table


@pytest.mark.parametrize(("policies", "client", "server", "port", "protocol", "verdict", "names"), CASES)
def test_policy_semantics(policies, client, server, port, protocol, verdict, names) -> None:
    decision = _table(policies).evaluate(client, server, port, protocol)
    assert (decision.verdict, decision.policies) == (verdict, names)


@pytest.mark.parametrize(("selector", "labels", "matches"), [
    ({}, {}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),  # missing key: not in
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
    ({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]}, {"a": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}, {"a": "2"}, False),  # not a LabelSelector operator
    (None, {"a": "1"}, False),
])
def test_label_selectors(selector, labels, matches) -> None:
    assert selector_matches(selector, labels) is matches


def test_policy_spec_without_policyTypes_defaults_like_the_api_server() -> None:
    table = _table([policy("web-out", pod_selector={"matchLabels": {"app": "web"}},
                           egress=[{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}])])
    (p,) = table.policies.values()
    assert (p.ingress_isolates, p.egress_isolates) == (True, True)


def test_tombstones_and_label_changes_take_effect() -> None:
    table = _table([DENY_ALL_INGRESS])
    assert table.evaluate(WEB, API, 8080, "TCP").verdict == DENIED
    table.add("shop/deny-all", None)
    assert table.evaluate(WEB, API, 8080, "TCP").verdict == NO_POLICY
    table = _table([policy("prod-only", pod_selector=API_SEL,
                           ingress=[to_api({"namespaceSelector": {"matchLabels": {"env": "prod"}}})])])
    assert table.evaluate(DEV_WEB, API, 8080, "TCP").verdict == DENIED
    table.add("dev", {"kind": "Namespace", "name": "dev", "labels": {"env": "prod"}})  # relabelled
    assert table.evaluate(DEV_WEB, API, 8080, "TCP").verdict == ALLOWED


def test_an_unreadable_policy_is_said_and_forgotten() -> None:
    table = _table([DENY_ALL_INGRESS])
    with pytest.raises(PolicyError, match=r"shop/deny-all.*not a CIDR"):
        table.add("shop/deny-all", {"kind": "NetworkPolicy", "namespace": "shop", "name": "deny-all",
                                    "spec": json.dumps({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "x"}}]}]})})
    assert table.policies == {} and table.unreadable == 1


def test_watcher_publishes_policies_and_namespace_labels_only_when_they_change() -> None:
    objs = PolicyObjects()
    ns = {"metadata": {"name": "shop", "uid": "u1", "labels": {"team": "shop"}, "resourceVersion": "1"},
          "status": {"phase": "Active"}}
    ((key, rec),) = objs.apply("Namespace", "ADDED", ns)
    assert (key, rec["kind"], rec["labels"], rec["namespace"]) == ("shop", "Namespace", {"team": "shop"}, None)
    ns2 = {**ns, "metadata": {**ns["metadata"], "resourceVersion": "2"}, "status": {"phase": "Terminating"}}
    assert objs.apply("Namespace", "MODIFIED", ns2) == []  # status only
    pol = {"metadata": {"name": "deny", "namespace": "shop", "uid": "u2"},
           "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    ((key, rec),) = objs.apply("NetworkPolicy", "ADDED", pol)
    assert key == "shop/deny" and json.loads(rec["spec"]) == pol["spec"]
    assert objs.apply("NetworkPolicy", "DELETED", pol) == [("shop/deny", None)]
    assert objs.apply("NetworkPolicy", "DELETED", pol) == []


# --- enrichment and the alert ---------------------------------------------------------------------


def _ident(ep: Endpoint) -> dict:
    return {"kind": "pod", "uid": ep.pod, "pod": ep.pod, "namespace": ep.namespace, "workload": ep.pod,
            "node": "n1", "services": [], "labels": dict(ep.labels), "valid_from_us": 0,
            "container_ports": [{"name": p.name, "port": p.port, "protocol": p.protocol} for p in ep.ports]}


def _connection(client: Endpoint, server: Endpoint, port: int, **fields: object) -> dict:
    return {"connection_id": "c1", "source_id": "s", "client_ip": client.ip, "client_port": 40000,
            "server_ip": server.ip, "server_port": port, "start_ts_us": 5, "final": True,
            "handshake_seen": True, "bytes_c2s": 10, "bytes_s2c": 10, "community_id": "1:x", **fields}


def _enricher(policies: list[dict], *pods: Endpoint) -> Enricher:
    index = IdentityIndex()
    for ep in pods:
        index.add(ep.ip, _ident(ep))
    index.policies = _table(policies)
    return Enricher(index)


def test_enricher_sets_the_verdict_and_raises_the_violation() -> None:
    enricher = _enricher([policy("named", pod_selector=API_SEL, ingress=[to_api({"podSelector": {}}, ports=[{"port": "http"}])])],
                         WEB, API)
    ok = _connection(WEB, API, 8080)
    assert enricher.enrich("wire.connections", ok) == []
    assert (ok["policy_verdict"], ok["policy_names"]) == (ALLOWED, ["shop/named"])
    bad = _connection(WEB, API, 9090)
    (alert,) = enricher.enrich("wire.connections", bad)
    assert bad["policy_verdict"] == DENIED
    assert (alert["kind"], alert["connection_id"], alert["community_id"]) == ("policy_violation", "c1", "1:x")
    assert alert["evidence"]["policies"] == "shop/named"
    assert "shop/web-1 reached shop/api-1" in alert["summary"]
    flow = {"flow_id": "f1", "source_id": "s", "transport": "udp", "client_ip": WEB.ip, "client_port": 5000,
            "server_ip": API.ip, "server_port": 5353, "start_ts_us": 5, "packets_c2s": 1, "packets_s2c": 1}
    (alert,) = enricher.enrich("wire.flows", flow)  # the rule's ports are TCP's
    assert (flow["policy_verdict"], alert["connection_id"]) == (DENIED, "f1")


def test_enricher_leaves_the_verdict_null_when_it_cannot_be_known() -> None:
    enricher = _enricher([DENY_ALL_INGRESS], WEB, API)
    between_outsiders = _connection(OUTSIDE, OFFICE, 80)
    assert enricher.enrich("wire.connections", between_outsiders) == []
    assert "policy_verdict" not in between_outsiders
    enricher.index.add("10.96.0.9", {"kind": "service", "service": "api", "namespace": "shop"})
    to_clusterip = _connection(WEB, Endpoint("10.96.0.9"), 80)
    enricher.enrich("wire.connections", to_clusterip)
    assert "policy_verdict" not in to_clusterip
    enricher.index.policies.known = False  # no k8s-watch publishing policies
    rec = _connection(WEB, API, 8080)
    enricher.enrich("wire.connections", rec)
    assert "policy_verdict" not in rec and rec["server_pod"] == "api-1"
    txn = {"client_ip": WEB.ip, "server_ip": API.ip, "request_ts_us": 5}
    enricher.index.policies.known = True
    enricher.enrich("wire.transactions", txn)
    assert "policy_verdict" not in txn


@pytest.mark.parametrize(("fields", "alerts"), [
    ({}, True),
    ({"final": False}, False),  # an interim record: the final one raises it
    ({"handshake_seen": False, "bytes_s2c": 0}, False),  # blocked: only the SYN went
    ({"handshake_seen": False, "bytes_c2s": 5, "bytes_s2c": 5}, True),  # mid-stream, data both ways
    ({"policy_verdict": ALLOWED}, False),
])
def test_violation_only_for_established_denied_traffic(fields, alerts) -> None:
    rec = {**_connection(WEB, API, 8080), "policy_verdict": DENIED, "policy_names": ["shop/x"], **fields}
    assert (violation_alert("wire.connections", rec) is not None) is alerts


def test_the_feed_picks_up_a_policy_table_created_after_it_started(registry) -> None:
    """Identities already there, no wire.k8s-policies yet (a watcher of before policies,
    or none so far): the feed reads identities, looks for the policy topic now and then,
    and reads it once a watcher created it; a malformed policy is skipped, counted."""
    import time

    from wirestream.processors.k8s_enrichment import IdentityFeed
    from wirestream.processors.network_policy import K8S_POLICIES
    from wirestream.producers.k8s_watch import ensure_policy_topic
    from wirestream.schemas import schema_dict

    from wirestream.broker import EmbeddedBroker, ensure_topics
    from wirestream.codec import AvroCodec
    from wirestream.kafka import WireProducer
    from wirestream.topics import ALL_TOPICS, K8S_IDENTITY

    with EmbeddedBroker() as own:  # no wire.k8s-policies, whatever other tests made
        ensure_topics(own.bootstrap, [t for t in ALL_TOPICS if t != K8S_POLICIES], 2)
        codec = AvroCodec(registry.url)
        producer = WireProducer(own.bootstrap)
        producer.produce(K8S_IDENTITY, codec.encode(K8S_IDENTITY, {**_ident(API), "ip": API.ip, "source": "t"}),
                         key=API.ip.encode())
        assert producer.flush(10) == 0
        index = IdentityIndex()
        feed = IdentityFeed(own.bootstrap, codec, index, recheck_s=0.2)
        feed.start(timeout=15)
        try:
            assert index.records == 1 and not index.policies.known
            assert ensure_policy_topic(own.bootstrap) is True
            assert ensure_policy_topic(own.bootstrap) is False  # there now: left as it is
            encode = codec.encoder_for_schema(K8S_POLICIES, schema_dict("k8s_policy"))
            for key, rec in [("shop", {"kind": "Namespace", "name": "shop", "labels": {"team": "shop"}}),
                             ("shop/bad", {"kind": "NetworkPolicy", "namespace": "shop", "name": "bad",
                                           "spec": '{"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "x"}}]}]}'}),
                             ("shop/deny-all", {"kind": "NetworkPolicy", "namespace": "shop", "name": "deny-all",
                                                "spec": json.dumps(DENY_ALL_INGRESS["spec"])})]:
                producer.produce(K8S_POLICIES, encode(rec), key=key.encode())
            assert producer.flush(10) == 0
            deadline = time.monotonic() + 15
            while "shop/deny-all" not in index.policies.policies:
                assert time.monotonic() < deadline, "the feed did not pick up wire.k8s-policies"
                time.sleep(0.1)
            assert index.policies.namespaces == {"shop": {"team": "shop"}}
            assert feed.malformed == 1 and "shop/bad" not in index.policies.policies
            rec = _connection(WEB, API, 8080)
            Enricher(index).enrich("wire.connections", rec)
            assert (rec["policy_verdict"], rec["policy_names"]) == (DENIED, ["shop/deny-all"])
        finally:
            feed.stop()
            feed.join(5)
