"""NetworkPolicy intent against traffic, end to end, against a real API server.

Namespaces, pods (API objects with their IPs patched in: there is no kubelet, see
tests/k8s_cluster.py) and NetworkPolicies of every selector kind, the traps among them
(namespaceSelector and podSelector in one peer against two peers, a podSelector peer
alone meaning the policy's own namespace, an empty podSelector, named ports on TCP and
UDP, ipBlock with except, default deny both ways), are created in kube-apiserver;
``wirestream k8s-watch --once`` publishes them; a capture of connections and UDP flows
between those pods (and hosts outside) is analysed with ``wirestream analyze``'s
pipeline, and every record's ``policy_verdict`` and ``policy_names`` are checked against
what Kubernetes' semantics say; and the ``policy_violation`` alerts the pipeline publishes
on ``wire.alerts`` are those of the established denied ones.

The API server is 1.20: ``endPort`` (1.21+) is dropped by it, so port ranges are only in
test_network_policy.py; namespaces carry no ``kubernetes.io/metadata.name`` label (1.21+),
which the evaluator supplies, as newer API servers do.
"""

from __future__ import annotations

import datetime
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import needs
from k8s_cluster import ApiServer, apiserver_unavailable
from synthetic_http import http_connection, request, response, unanswered_syn, write_frames
from wirestream.processors.k8s_enrichment import Enricher, IdentityFeed, IdentityIndex
from wirestream.processors.network_policy import K8S_POLICIES

from wirestream.analyze import analyze
from wirestream.codec import AvroCodec
from wirestream.config import Settings
from wirestream.reader import TopicReader
from wirestream.topics import ALERTS, CONNECTIONS, FLOWS, K8S_IDENTITY

UNAVAILABLE = apiserver_unavailable()
pytestmark = needs(UNAVAILABLE and f"no Kubernetes API server: {UNAVAILABLE}")

# np-*: names no other test's pods or policies use (the broker is the session's)
SHOP, DATA, DEV = "np-shop", "np-data", "np-dev"
WEB, API, STATSD = "10.246.1.1", "10.246.1.2", "10.246.1.3"
DB, DATA_WEB = "10.246.2.1", "10.246.2.2"
DEV_WEB = "10.246.3.1"
PARTNER, PARTNER_EXCEPT, OUTSIDE = "198.51.100.10", "198.51.100.200", "203.0.113.5"


def _rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(int(ts), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def cluster():
    with ApiServer() as api:
        yield api


def _pod(core, ns: str, name: str, ip: str, labels: dict, ports: list[dict], started: float) -> None:
    """A running pod with its IP, as a kubelet would leave it (there is no kubelet here)."""
    core.create_namespaced_pod(ns, {"metadata": {"name": name, "labels": labels},
                                    "spec": {"nodeName": "node-a",
                                             "containers": [{"name": "c", "image": "x", "ports": ports}]}})
    core.patch_namespaced_pod_status(name, ns, {"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": _rfc3339(started)}})


def _policy(net, ns: str, name: str, spec: dict) -> None:
    net.create_namespaced_network_policy(ns, {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                              "metadata": {"name": name}, "spec": spec})


def _build(cluster: ApiServer) -> None:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=cluster.kubeconfig)
    core, net = client.CoreV1Api(api), client.NetworkingV1Api(api)
    for ns, labels in ((SHOP, {"team": "shop"}), (DATA, {"team": "data"}), (DEV, {"env": "dev"})):
        core.create_namespace({"metadata": {"name": ns, "labels": labels}})
    started = time.time() - 600
    _pod(core, SHOP, "web-1", WEB, {"app": "web"}, [], started)
    _pod(core, SHOP, "api-1", API, {"app": "api"},
         [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}], started)
    _pod(core, SHOP, "statsd-1", STATSD, {"app": "statsd"},
         [{"name": "statsd", "containerPort": 8125, "protocol": "UDP"}], started)
    _pod(core, DATA, "db-0", DB, {"app": "db"}, [{"name": "pg", "containerPort": 5432}], started)
    _pod(core, DATA, "web-x", DATA_WEB, {"app": "web"}, [], started)
    _pod(core, DEV, "web-d", DEV_WEB, {"app": "web"}, [], started)
    # ONE peer with both selectors: web pods of team=data namespaces only; a named port
    _policy(net, SHOP, "api-and", {
        "podSelector": {"matchLabels": {"app": "api"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "data"}},
                               "podSelector": {"matchLabels": {"app": "web"}}}],
                     "ports": [{"port": "http"}]}]})
    # TWO peers: any pod of a team=shop namespace, or a web pod of np-data (podSelector alone)
    _policy(net, DATA, "db-or", {
        "podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "shop"}}},
                              {"podSelector": {"matchLabels": {"app": "web"}}}],
                     "ports": [{"port": 5432, "protocol": "TCP"}]}]})
    # an empty podSelector, both types, no rules: default deny of everything in np-dev
    _policy(net, DEV, "deny-all", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
    # egress of shop's web pods: a partner network but its upper half, and every pod of any
    # namespace (namespaceSelector {}), expressed with matchExpressions
    _policy(net, SHOP, "web-egress", {
        "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "198.51.100.0/24", "except": ["198.51.100.128/25"]}}]},
                   {"to": [{"namespaceSelector": {}}]}]})
    # from everywhere (from: []) to a named UDP port
    _policy(net, SHOP, "statsd-in", {
        "podSelector": {"matchLabels": {"app": "statsd"}},
        "ingress": [{"from": [], "ports": [{"port": "statsd", "protocol": "UDP"}]}]})


def _udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + udp + payload


#: client port -> (client, server, port, verdict, policy names, a policy_violation expected)
TCP = {
    41001: (DATA_WEB, API, 8080, "allowed", ["np-shop/api-and"], False),  # both selectors of the one peer fit
    41002: (WEB, API, 8080, "denied", ["np-shop/api-and"], True),  # the pod fits, its namespace not
    41003: (DB, API, 8080, "denied", ["np-shop/api-and"], True),  # the namespace fits, the pod not
    41004: (DATA_WEB, API, 9090, "denied", ["np-shop/api-and"], True),  # "http" is 8080, not 9090
    41005: (WEB, DB, 5432, "allowed", ["np-data/db-or", "np-shop/web-egress"], False),  # the namespace peer
    41006: (DATA_WEB, DB, 5432, "allowed", ["np-data/db-or"], False),  # the pod peer, its own namespace
    41007: (DEV_WEB, DB, 5432, "denied", ["np-data/db-or", "np-dev/deny-all"], True),  # neither; dev denies egress
    41008: (WEB, PARTNER, 443, "allowed", ["np-shop/web-egress"], False),  # ipBlock
    41009: (WEB, PARTNER_EXCEPT, 443, "denied", ["np-shop/web-egress"], True),  # ipBlock except
    41010: (OUTSIDE, WEB, 80, "no_policy", [], False),  # web is isolated for egress only
    41011: (OUTSIDE, DEV_WEB, 80, "denied", ["np-dev/deny-all"], True),
}
UDP = {
    42001: (WEB, STATSD, 8125, "allowed", ["np-shop/statsd-in", "np-shop/web-egress"], False),  # named UDP port
    42002: (DEV_WEB, STATSD, 8125, "denied", ["np-dev/deny-all"], True),
    42003: (WEB, STATSD, 8126, "denied", ["np-shop/statsd-in"], True),
}
BLOCKED_SYN = 41012  # dev -> api: denied, and it did not get through: no violation


def _capture(path: str, t0: int) -> str:
    frames = []
    for i, (cport, (client, server, port, *_)) in enumerate(sorted(TCP.items())):
        frames += http_connection(client, cport, server, port, t0 + i * 100_000,
                                  [(request(host="np.test"), response(200, body=b"ok"), 500)])
    frames += unanswered_syn(DEV_WEB, BLOCKED_SYN, API, 8080, t0 + 5_000_000)
    for i, (cport, (client, server, port, *_)) in enumerate(sorted(UDP.items())):
        t = t0 + 6_000_000 + i * 100_000
        frames += [(t, _udp(client, cport, server, port, b"hits:1|c")), (t + 300, _udp(server, port, client, cport, b"ok"))]
    frames.append((t0 + 7_000_000, _udp(OUTSIDE, 40000, PARTNER, 9999, b"x")))  # no pod on either end
    return write_frames(path, frames)


def _published(broker, registry, want: set[str], timeout: float = 30.0) -> dict[str, dict | None]:
    codec = AvroCodec(registry.url)
    seen: dict[str, dict | None] = {}
    deadline = time.monotonic() + timeout
    with TopicReader(broker.bootstrap, codec, [K8S_POLICIES]) as reader:
        while not want <= set(seen):
            assert time.monotonic() < deadline, f"{K8S_POLICIES}: {want - set(seen)} not published"
            for m in reader.poll(0.3):
                seen[(m.key or b"").decode()] = m.record
    return seen


def test_policy_verdicts_and_violations_against_a_real_api_server(cluster, broker, registry, tmp_path) -> None:
    _build(cluster)
    _run_watcher(cluster, broker, registry)

    policies = _published(broker, registry, {SHOP, DATA, DEV, "np-shop/api-and", "np-data/db-or",
                                             "np-dev/deny-all", "np-shop/web-egress", "np-shop/statsd-in"})
    assert policies[DATA]["kind"] == "Namespace" and policies[DATA]["labels"]["team"] == "data"
    assert policies["np-dev/deny-all"]["source"] == "np-test"

    t0 = int((time.time() - 60) * 1e6)
    capture = _capture(str(tmp_path / "np.pcap"), t0)
    result = analyze([capture], Settings(bootstrap=broker.bootstrap, registry=registry.url, windows=False), workers=1)
    conns = {r["client_port"]: r for r in result.records[CONNECTIONS]}
    flows = {r["client_port"]: r for r in result.records[FLOWS]}

    got = {p: (conns[p]["policy_verdict"], conns[p]["policy_names"]) for p in TCP}
    assert got == {p: (v, names) for p, (*_, v, names, _alert) in TCP.items()}
    got = {p: (flows[p]["policy_verdict"], flows[p]["policy_names"]) for p in UDP}
    assert got == {p: (v, names) for p, (*_, v, names, _alert) in UDP.items()}
    assert (conns[BLOCKED_SYN]["policy_verdict"], conns[BLOCKED_SYN]["policy_names"]) == \
        ("denied", ["np-dev/deny-all", "np-shop/api-and"])
    assert flows[40000]["policy_verdict"] is None  # neither end is a pod
    assert conns[41001]["server_pod"] == "api-1"  # the identity and the verdict are the same lookup

    # The alerts the pipeline published (wire.alerts), one per established denied
    # connection or two-way flow, found by the Community ID of the record they are about
    by_community = {r["community_id"]: port for records in (conns, flows) for port, r in records.items()}
    violations = [a for a in result.records[ALERTS] if a["kind"] == "policy_violation"]
    alerts = {by_community[a["community_id"]]: a for a in violations}
    assert len(alerts) == len(violations)
    want = {p for table in (TCP, UDP) for p, row in table.items() if row[-1]}
    assert set(alerts) == want
    a = alerts[41002]
    assert (a["kind"], a["severity"], a["connection_id"], a["community_id"]) == \
        ("policy_violation", "critical", conns[41002]["connection_id"], conns[41002]["community_id"])
    assert a["evidence"]["policies"] == "np-shop/api-and"
    assert "np-shop/web-1 reached np-shop/api-1" in a["summary"]


def test_pods_container_ports_are_published_for_named_ports(cluster, broker, registry) -> None:
    """What the named ports above resolved against: the pod's container ports on
    wire.k8s-identity (the previous test ran the watcher)."""
    codec = AvroCodec(registry.url)
    deadline = time.monotonic() + 30
    with TopicReader(broker.bootstrap, codec, [K8S_IDENTITY]) as reader:
        while True:
            found = [m.record for m in reader.poll(0.3) if m.record is not None and m.record["ip"] == STATSD]
            if found:
                break
            assert time.monotonic() < deadline, "no identity of the statsd pod"
    assert found[-1]["container_ports"] == [{"name": "statsd", "port": 8125, "protocol": "UDP"}]


def _run_watcher(cluster: ApiServer, broker, registry, kubeconfig: str | None = None) -> str:
    env = {**os.environ, "WIRESTREAM_BOOTSTRAP": broker.bootstrap, "WIRESTREAM_REGISTRY": registry.url}
    watch = subprocess.run([sys.executable, "-m", "wirestream", "k8s-watch", "--kubeconfig", kubeconfig or cluster.kubeconfig,
                            "--cluster-name", "np-test", "--once"], env=env, capture_output=True, text=True,
                           timeout=120)
    # synced, published, and out cleanly (it used to abort in the interpreter's
    # finalisation now and then, its watch threads still reading: it leaves by os._exit)
    assert "synced" in watch.stderr and watch.returncode == 0, (watch.returncode, watch.stderr)
    return watch.stderr


def test_policy_deleted_while_no_watcher_ran_is_tombstoned(cluster, broker, registry) -> None:
    """A watcher starting over does not know what the last one published: it reads the
    topic, and what the API server no longer has gets its tombstone; the processors'
    table then forgets it."""
    from kubernetes import client, config

    net = client.NetworkingV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
    net.delete_namespaced_network_policy("statsd-in", SHOP)
    err = _run_watcher(cluster, broker, registry)
    assert "'deleted_while_away': 1" in err, err
    seen = _published(broker, registry, {"np-shop/statsd-in", "np-shop/web-egress"})
    assert seen["np-shop/statsd-in"] is None  # the last message: a tombstone
    assert seen["np-shop/web-egress"] is not None

    index = IdentityIndex()
    feed = IdentityFeed(broker.bootstrap, AvroCodec(registry.url), index, recheck_s=0.5)
    feed.start(timeout=30)
    try:
        flow = {"flow_id": "f", "source_id": "s", "transport": "udp", "client_ip": WEB, "client_port": 42003,
                "server_ip": STATSD, "server_port": 8126, "start_ts_us": int(time.time() * 1e6),
                "packets_c2s": 1, "packets_s2c": 1}
        assert Enricher(index).enrich(FLOWS, flow) == []
    finally:
        feed.stop()
        feed.join(5)
    # statsd is not isolated any more; web's egress policy still allows any pod
    assert (flow["policy_verdict"], flow["policy_names"]) == ("allowed", ["np-shop/web-egress"])


def test_watcher_role_may_list_and_watch_what_k8s_watch_watches(cluster) -> None:
    """deploy/kustomize/base/rbac.yaml in the API server: the watcher's service account
    may list and watch every kind k8s-watch watches (policies and namespaces included),
    and change none of them."""
    from wirestream.producers.k8s_watch import RESOURCES

    if cluster.kubectl("get", "namespace", "wirestream", check=False).returncode != 0:
        cluster.kubectl("create", "namespace", "wirestream")
    rbac = (Path(__file__).resolve().parent.parent / "deploy" / "kustomize" / "base" / "rbac.yaml").read_text()
    cluster.kubectl("apply", "-n", "wirestream", "-f", "-", input=rbac)
    resource = {"Node": "nodes", "ReplicaSet": "replicasets.apps", "Job": "jobs.batch", "Pod": "pods",
                "Service": "services", "EndpointSlice": "endpointslices.discovery.k8s.io",
                "Namespace": "namespaces", "NetworkPolicy": "networkpolicies.networking.k8s.io"}
    assert set(resource) == set(RESOURCES)  # a kind watched without a row here fails

    def can(verb: str, what: str) -> str:
        r = cluster.kubectl("auth", "can-i", verb, what, "--all-namespaces",
                            "--as", "system:serviceaccount:wirestream:wirestream-watcher", check=False)
        return r.stdout.strip()

    assert {(k, v): can(v, r) for k, r in resource.items() for v in ("list", "watch")} == \
        {(k, v): "yes" for k in resource for v in ("list", "watch")}
    assert can("create", "networkpolicies.networking.k8s.io") == "no"
    assert can("update", "namespaces") == "no"


def _service_account_kubeconfig(cluster: ApiServer, path: Path) -> str:
    """A kubeconfig that is the watcher's service account (a TokenRequest token: no
    token controller runs here), as in a pod of deploy/kustomize."""
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
    token = core.create_namespaced_service_account_token("wirestream-watcher", "wirestream", {
        "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600}}).status.token
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{server: "{cluster.url}", insecure-skip-tls-verify: true}}
users:
- name: watcher
  user: {{token: "{token}"}}
contexts:
- name: test
  context: {{cluster: test, user: watcher}}
current-context: test
""")
    return str(path)


def test_watcher_as_its_service_account_with_the_manifests_role_and_an_older_one(
        cluster, broker, registry, tmp_path) -> None:
    """k8s-watch run as the watcher's service account: with deploy/kustomize's role it
    lists everything; with a role from before policies (no namespaces, no
    networkpolicies) the identities still sync, the refusal is said once, and what the
    policy table holds is left alone (not tombstoned: not seen is not deleted)."""
    rbac = (Path(__file__).resolve().parent.parent / "deploy" / "kustomize" / "base" / "rbac.yaml").read_text()
    if cluster.kubectl("get", "namespace", "wirestream", check=False).returncode != 0:
        cluster.kubectl("create", "namespace", "wirestream")
    cluster.kubectl("apply", "-n", "wirestream", "-f", "-", input=rbac)
    kubeconfig = _service_account_kubeconfig(cluster, tmp_path / "watcher.kubeconfig")

    err = _run_watcher(cluster, broker, registry, kubeconfig)
    assert "refuses" not in err and "'NetworkPolicy': 4" in err and "'Namespace':" in err, err

    old = rbac.replace("resources: [pods, services, nodes, namespaces]", "resources: [pods, services, nodes]")
    old = old.replace("- apiGroups: [networking.k8s.io]\n  resources: [networkpolicies]\n  verbs: [get, list, watch]\n", "")
    assert "namespaces" not in old and "networkpolicies" not in old
    cluster.kubectl("apply", "-n", "wirestream", "-f", "-", input=old)
    try:
        err = _run_watcher(cluster, broker, registry, kubeconfig)
    finally:
        cluster.kubectl("apply", "-n", "wirestream", "-f", "-", input=rbac)
    assert "refuses to list NetworkPolicy (403)" in err and "refuses to list Namespace (403)" in err, err
    assert "'forbidden_NetworkPolicy': 1" in err and "'pod': 6" in err, err
    assert "deleted_while_away" not in err and "policy_tombstones" not in err, err
    seen = _published(broker, registry, {"np-shop/web-egress", SHOP})
    assert seen["np-shop/web-egress"] is not None and seen[SHOP] is not None
