"""Kubernetes identity end to end, against a real API server (tests/k8s_cluster.py).

The test creates what a cluster would have (nodes, a Deployment with its ReplicaSet and
pod, a StatefulSet pod, a Service with its EndpointSlice), runs ``wirestream k8s-watch``
as a separate process, and analyses a capture made with those pods' IPs:

* records carry the right pod, namespace, workload (the Deployment, through the
  ReplicaSet), node, and service (traffic to the ClusterIP);
* after a pod is deleted and its IP reused by another pod, traffic after the reuse gets
  the new identity and traffic before it keeps the old one;
* the API server killed and restarted mid-watch: changes made right after it is back
  (while the watcher is still backing off) are all published.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time

import pytest
from helpers import needs
from k8s_cluster import ApiServer, apiserver_unavailable
from synthetic_http import http_connection, request, response, write_frames

from wirestream.analyze import analyze
from wirestream.codec import AvroCodec
from wirestream.config import Settings
from wirestream.reader import TopicReader
from wirestream.topics import CONNECTIONS, K8S_IDENTITY, TRANSACTIONS

UNAVAILABLE = apiserver_unavailable()
pytestmark = needs(UNAVAILABLE and f"no Kubernetes API server: {UNAVAILABLE}")

NS = "shop"
WEB_IP, DB_IP, LATE_IP = "10.244.1.5", "10.244.2.7", "10.244.3.9"
WEB_SERVICE_IP = "10.96.0.50"


def _rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(int(ts), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def cluster():
    with ApiServer() as api:
        yield api


@pytest.fixture(scope="module")
def kube(cluster):
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=cluster.kubeconfig)
    return {"core": client.CoreV1Api(api), "apps": client.AppsV1Api(api),
            "custom": client.CustomObjectsApi(api)}


def _owner(kind: str, obj) -> list[dict]:
    api_version = "apps/v1" if kind in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet") else "v1"
    return [{"apiVersion": api_version, "kind": kind, "name": obj.metadata.name, "uid": obj.metadata.uid,
             "controller": True}]


def _workload(kube, kind: str, name: str):
    spec = {"selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}
    if kind == "Deployment":
        return kube["apps"].create_namespaced_deployment(NS, {"metadata": {"name": name}, "spec": spec})
    if kind == "StatefulSet":
        return kube["apps"].create_namespaced_stateful_set(NS, {"metadata": {"name": name},
                                                               "spec": {**spec, "serviceName": name}})
    raise ValueError(kind)


def _replicaset(kube, deployment, name: str):
    spec = {"selector": {"matchLabels": {"app": deployment.metadata.name}},
            "template": {"metadata": {"labels": {"app": deployment.metadata.name}},
                         "spec": {"containers": [{"name": "c", "image": "x"}]}}}
    return kube["apps"].create_namespaced_replica_set(
        NS, {"metadata": {"name": name, "ownerReferences": _owner("Deployment", deployment)}, "spec": spec})


def _pod(kube, name: str, ip: str, node: str, owner: list[dict], app: str, started: float):
    """A pod as a kubelet would leave it: scheduled, running, with its IP (no kubelet here)."""
    pod = kube["core"].create_namespaced_pod(NS, {
        "metadata": {"name": name, "labels": {"app": app}, "ownerReferences": owner},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}})
    kube["core"].patch_namespaced_pod_status(name, NS, {"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": _rfc3339(started)}})
    return pod


def _node(kube, name: str, ip: str, zone: str) -> None:
    kube["core"].create_node({"metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}}})
    kube["core"].patch_node_status(name, {"status": {"addresses": [{"type": "InternalIP", "address": ip}]}})


class Watcher:
    """``wirestream k8s-watch`` in a subprocess."""

    def __init__(self, cluster: ApiServer, broker, registry) -> None:
        env = {**os.environ, "WIRESTREAM_BOOTSTRAP": broker.bootstrap, "WIRESTREAM_REGISTRY": registry.url}
        self.proc = subprocess.Popen([sys.executable, "-m", "wirestream", "k8s-watch", "--kubeconfig",
                                      cluster.kubeconfig, "--cluster-name", "test"],
                                     env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        for line in self.proc.stderr:
            if "synced" in line:
                break
            assert time.monotonic() < deadline, "watcher did not sync"
        else:
            raise AssertionError(f"watcher ended: exit {self.proc.wait()}")

    def stop(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return err


def _identities(broker, registry, until, timeout: float = 60.0) -> dict[str, list[dict]]:
    """Every wire.k8s-identity record so far, by IP, read until ``until(records)`` holds."""
    codec = AvroCodec(registry.url)
    by_ip: dict[str, list[dict]] = {}
    deadline = time.monotonic() + timeout
    with TopicReader(broker.bootstrap, codec, [K8S_IDENTITY]) as reader:
        while True:
            for m in reader.poll(0.3):
                if m.record is not None:
                    by_ip.setdefault(m.record["ip"], []).append(m.record)
            if until(by_ip):
                return by_ip
            assert time.monotonic() < deadline, f"identities not there in {timeout} s: {by_ip.keys()}"


def test_records_carry_kubernetes_identity_at_their_own_time(cluster, kube, broker, registry, tmp_path) -> None:
    now = time.time()
    kube["core"].create_namespace({"metadata": {"name": NS}})
    _node(kube, "node-a", "192.168.50.10", "zone-1")
    _node(kube, "node-b", "192.168.50.11", "zone-2")
    web = _workload(kube, "Deployment", "web")
    rs = _replicaset(kube, web, "web-5d4f8")
    _pod(kube, "web-5d4f8-x2x9q", WEB_IP, "node-a", _owner("ReplicaSet", rs), "web", now - 300)
    db = _workload(kube, "StatefulSet", "db")
    _pod(kube, "db-0", DB_IP, "node-b", _owner("StatefulSet", db), "db", now - 300)
    kube["core"].create_namespaced_service(NS, {"metadata": {"name": "web"}, "spec": {
        "clusterIP": WEB_SERVICE_IP, "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    kube["custom"].create_namespaced_custom_object("discovery.k8s.io", "v1", NS, "endpointslices", {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abcde", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [WEB_IP], "conditions": {"ready": True}, "nodeName": "node-a"}]})

    watcher = Watcher(cluster, broker, registry)
    try:
        # db-0 goes away; its IP goes to a pod of another Deployment, which starts 5 s later.
        kube["core"].delete_namespaced_pod("db-0", NS, grace_period_seconds=0)
        deleted_at = time.time()
        cache = _workload(kube, "Deployment", "cache")
        cache_rs = _replicaset(kube, cache, "cache-7c9b")
        cache_pod = _pod(kube, "cache-7c9b-kq2lp", DB_IP, "node-a", _owner("ReplicaSet", cache_rs), "cache",
                         deleted_at + 5)
        _identities(broker, registry, lambda by_ip: any(r["uid"] == cache_pod.metadata.uid
                                                         for r in by_ip.get(DB_IP, [])))
    finally:
        watcher.stop()

    before, after = int((deleted_at - 60) * 1e6), int((deleted_at + 60) * 1e6)
    frames = [
        *http_connection(WEB_IP, 40001, DB_IP, 5432, before, [(b"query 1\n", b"rows\n", 500)]),
        *http_connection(DB_IP, 40002, WEB_SERVICE_IP, 80, before + 50_000,
                         [(request(host="web.shop"), response(200, body=b"ok"), 800)]),
        *http_connection(WEB_IP, 40003, DB_IP, 6379, after, [(b"GET k\r\n", b"$1\r\nv\r\n", 300)]),
    ]
    capture = write_frames(str(tmp_path / "pods.pcap"), frames)
    settings = Settings(bootstrap=broker.bootstrap, registry=registry.url)
    result = analyze([capture], settings, workers=1)
    conns = {r["client_port"]: r for r in result.records[CONNECTIONS]}
    assert set(conns) == {40001, 40002, 40003}

    first = conns[40001]  # web -> db-0, before db-0 was deleted
    assert (first["client_pod"], first["client_namespace"], first["client_workload"], first["client_node"]) == \
        ("web-5d4f8-x2x9q", NS, "web", "node-a")
    assert (first["server_pod"], first["server_workload"], first["server_node"]) == ("db-0", "db", "node-b")

    to_service = conns[40002]  # db-0 -> the web service's ClusterIP
    assert (to_service["client_pod"], to_service["server_service"], to_service["server_namespace"]) == \
        ("db-0", "web", NS)
    (txn,) = [t for t in result.records[TRANSACTIONS] if t["client_port"] == 40002]
    assert (txn["server_service"], txn["client_workload"]) == ("web", "db")

    reused = conns[40003]  # web -> the same IP, now the cache pod's
    assert (reused["server_pod"], reused["server_workload"], reused["server_node"]) == \
        ("cache-7c9b-kq2lp", "cache", "node-a")
    assert (reused["client_workload"], reused["client_pod"]) == ("web", "web-5d4f8-x2x9q")

    # zones, from the nodes' topology.kubernetes.io/zone labels: web (node-a, zone-1) to
    # db-0 (node-b, zone-2) crosses zones; to the cache pod on node-a it does not; to a
    # ClusterIP the server's zone is not known (which pod gets it is decided by DNAT)
    assert (first["client_zone"], first["server_zone"], first["cross_zone"]) == ("zone-1", "zone-2", True)
    assert (reused["client_zone"], reused["server_zone"], reused["cross_zone"]) == ("zone-1", "zone-1", False)
    assert (to_service["client_zone"], to_service["server_zone"], to_service["cross_zone"]) == ("zone-2", None, None)
    assert txn["cross_zone"] is None
    # and the windows between zones and between nodes (docs/windows.md, "Topology")
    pairs = {(m["scope"], m["service"]): m for m in result.records["wire.service-metrics"] if m["scope"] != "service"}
    assert set(pairs) == {("zone_pair", "zone:zone-1>zone-2"), ("zone_pair", "zone:zone-1>zone-1"),
                          ("node_pair", "node:node-a>node-b"), ("node_pair", "node:node-a>node-a")}
    assert pairs["zone_pair", "zone:zone-1>zone-2"]["connections"] == 1
    assert pairs["zone_pair", "zone:zone-1>zone-2"]["cross_zone"] is True
    assert pairs["zone_pair", "zone:zone-1>zone-2"]["handshake_rtt_p50_us"] == first["handshake_rtt_us"]
    assert pairs["node_pair", "node:node-a>node-a"]["bytes"] == reused["bytes_c2s"] + reused["bytes_s2c"]


def test_watch_survives_an_api_server_restart(cluster, kube, broker, registry) -> None:
    ns = kube["core"].list_namespace().items
    if not any(n.metadata.name == NS for n in ns):
        kube["core"].create_namespace({"metadata": {"name": NS}})
    watcher = Watcher(cluster, broker, registry)
    try:
        cluster.restart_apiserver(down_s=1.0)
        # Right away, while the watcher is still backing off: a new pod, a deleted pod.
        late = _pod(kube, "late-1", LATE_IP, "node-a", [], "late", time.time())
        kube["core"].delete_namespaced_pod("web-5d4f8-x2x9q", NS, grace_period_seconds=0)

        def complete(by_ip: dict[str, list[dict]]) -> bool:
            return (any(r["uid"] == late.metadata.uid for r in by_ip.get(LATE_IP, []))
                    and any(r["pod"] == "web-5d4f8-x2x9q" and r["deleted_ts_us"] for r in by_ip.get(WEB_IP, [])))

        by_ip = _identities(broker, registry, complete, timeout=90)
    finally:
        err = watcher.stop()
    (late_record,) = [r for r in by_ip[LATE_IP] if r["uid"] == late.metadata.uid]
    assert (late_record["pod"], late_record["workload_kind"], late_record["workload"]) == ("late-1", "Pod", "late-1")
    assert "retrying" in err, err  # it did lose the API server, and came back
