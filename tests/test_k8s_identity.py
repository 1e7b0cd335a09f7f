"""Kubernetes objects -> IP identities, and identities resolved at the time of a record.

The objects here are what the API server returns (as dicts); the whole path against a
real API server is in test_k8s_watch.py.
"""

from __future__ import annotations

from wirestream.processors.k8s_enrichment import Enricher, IdentityIndex
from wirestream.producers.k8s_identity import IdentityState, parse_time_us


def _meta(name: str, ns: str = "shop", uid: str | None = None, owner: tuple[str, str] | None = None,
          **extra: object) -> dict:
    meta: dict = {"name": name, "namespace": ns, "uid": uid or f"uid-{name}", **extra}
    if owner:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    return meta


def _pod(name: str, ip: str, owner: tuple[str, str] | None = None, node: str = "node-a",
         start: str = "2026-11-27T06:00:00Z", uid: str | None = None) -> dict:
    return {"metadata": _meta(name, uid=uid, owner=owner, labels={"app": "web"}),
            "spec": {"nodeName": node},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": start}}


def test_pod_identity_names_its_workload_through_the_replicaset() -> None:
    state = IdentityState()
    state.apply("Node", "ADDED", {"metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z1"}},
                                  "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.10"}]}})
    state.apply("ReplicaSet", "ADDED", {"metadata": _meta("web-5d4f", owner=("Deployment", "web"))})
    changes = dict(state.apply("Pod", "ADDED", _pod("web-5d4f-abcde", "10.1.0.5", owner=("ReplicaSet", "web-5d4f"))))
    ident = changes["10.1.0.5"]
    assert (ident["pod"], ident["namespace"], ident["workload_kind"], ident["workload"], ident["node"],
            ident["zone"]) == ("web-5d4f-abcde", "shop", "Deployment", "web", "node-a", "z1")
    assert ident["valid_from_us"] == parse_time_us("2026-11-27T06:00:00Z")
    assert state.published["192.168.0.10"] == {"kind": "node", "node": "node-a", "zone": "z1"}


def test_owner_arriving_after_the_pod_updates_its_workload() -> None:
    state = IdentityState()
    first = dict(state.apply("Pod", "ADDED", _pod("job-x-1", "10.1.0.6", owner=("Job", "job-x"))))
    assert first["10.1.0.6"]["workload"] == "job-x"
    later = dict(state.apply("Job", "ADDED", {"metadata": _meta("job-x", owner=("CronJob", "nightly"))}))
    assert (later["10.1.0.6"]["workload_kind"], later["10.1.0.6"]["workload"]) == ("CronJob", "nightly")
    assert state.apply("Job", "MODIFIED", {"metadata": _meta("job-x", owner=("CronJob", "nightly"))}) == []


def test_services_clusterip_and_endpoints() -> None:
    state = IdentityState()
    state.apply("Pod", "ADDED", _pod("web-1", "10.1.0.5"))
    state.apply("Service", "ADDED", {"metadata": _meta("web"), "spec": {"clusterIP": "10.96.0.20"}})
    changes = dict(state.apply("EndpointSlice", "ADDED", {
        "metadata": _meta("web-abc", labels={"kubernetes.io/service-name": "web"}),
        "endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"ready": True}}]}))
    assert changes["10.96.0.20"] == {"kind": "service", "service": "web", "namespace": "shop",
                                     "endpoints": ["10.1.0.5"]}
    assert changes["10.1.0.5"]["services"] == ["shop/web"]


def test_deleted_pod_says_until_when_then_tombstone() -> None:
    state = IdentityState()
    pod = _pod("web-1", "10.1.0.5")
    state.apply("Pod", "ADDED", pod)
    pod["metadata"]["deletionTimestamp"] = "2026-11-27T06:10:00Z"
    changes = state.apply("Pod", "DELETED", pod)
    assert [ip for ip, _ in changes] == ["10.1.0.5", "10.1.0.5"]
    assert changes[0][1]["deleted_ts_us"] == parse_time_us("2026-11-27T06:10:00Z")
    assert changes[1][1] is None
    assert "10.1.0.5" not in state.published


def test_host_network_and_finished_pods_have_no_ip_identity() -> None:
    state = IdentityState()
    host = _pod("agent", "192.168.0.10")
    host["spec"]["hostNetwork"] = True
    done = _pod("batch", "10.1.0.9")
    done["status"]["phase"] = "Succeeded"
    assert state.apply("Pod", "ADDED", host) == []
    assert state.apply("Pod", "ADDED", done) == []


def _record(kind: str, **fields: object) -> dict:
    base = {"kind": kind, "uid": None, "pod": None, "namespace": None, "workload": None, "node": None,
            "service": None, "services": [], "valid_from_us": None, "deleted_ts_us": None}
    return {**base, **fields}


def test_index_resolves_an_ip_at_the_time_of_the_record_across_reuse() -> None:
    index = IdentityIndex()
    old = _record("pod", uid="a", pod="web-1", namespace="shop", workload="web", node="n1", valid_from_us=1_000_000_000)
    index.add("10.1.0.5", old)
    index.add("10.1.0.5", {**old, "deleted_ts_us": 2_000_000_000})
    index.add("10.1.0.5", None)  # tombstone
    new = _record("pod", uid="b", pod="db-0", namespace="data", workload="db", node="n2", valid_from_us=2_500_000_000)
    index.add("10.1.0.5", new)
    assert index.lookup("10.1.0.5", 1_500_000_000)["pod"] == "web-1"
    assert index.lookup("10.1.0.5", 2_200_000_000) is None  # between the two pods
    assert index.lookup("10.1.0.5", 3_000_000_000)["pod"] == "db-0"
    assert index.lookup("10.1.0.5", 500_000_000) is None  # before any pod
    assert index.lookup("10.9.9.9", 3_000_000_000) is None


def test_index_closes_a_pod_when_the_next_one_takes_its_ip() -> None:
    """The deletion record may be missing (compacted away); the next pod ends the previous."""
    index = IdentityIndex()
    index.add("10.1.0.5", _record("pod", uid="a", pod="web-1", valid_from_us=1_000_000_000))
    index.add("10.1.0.5", _record("pod", uid="b", pod="web-2", valid_from_us=2_000_000_000))
    assert index.lookup("10.1.0.5", 1_900_000_000)["pod"] == "web-1"
    assert index.lookup("10.1.0.5", 2_100_000_000)["pod"] == "web-2"


def test_enricher_fills_both_sides_and_the_service_of_a_clusterip() -> None:
    index = IdentityIndex()
    index.add("10.1.0.5", _record("pod", uid="a", pod="web-1", namespace="shop", workload="web", node="n1",
                                  valid_from_us=0))
    index.add("10.96.0.20", _record("service", service="api", namespace="shop"))
    rec = {"client_ip": "10.1.0.5", "server_ip": "10.96.0.20", "start_ts_us": 5}
    Enricher(index).enrich("wire.connections", rec)
    assert (rec["client_pod"], rec["client_namespace"], rec["client_workload"], rec["client_node"]) == \
        ("web-1", "shop", "web", "n1")
    assert (rec["server_service"], rec["server_namespace"]) == ("api", "shop")
    assert "server_pod" not in rec
