"""deploy/kustomize: every overlay builds, and a real API server accepts what it builds.

``kustomize build`` (what ``kubectl kustomize`` runs) builds each overlay; ``kubectl apply
--dry-run=server`` runs the API server's validation, defaulting and admission on every
object without storing it. Both are the ones scripts/kube-apiserver installs beside the API
server (kustomize v5, kubectl of the API server's release), not whatever is on PATH. The
Strimzi overlay's KafkaTopic and KafkaUser resources need Strimzi's CRDs; permissive
stand-ins for them are installed first (the real ones validate more fields, which this test
cannot check without Strimzi). The optional components (deploy/kustomize/components) are
built onto the base and dry-run too. tests/test_pod_security.py checks what the builds say
(Pod Security Standards, Secrets, NetworkPolicies, ACLs).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import require_or_skip
from k8s_cluster import ApiServer, apiserver_unavailable, permissive_crd
from test_pod_security import BUILDS, build

KUSTOMIZE = Path(__file__).resolve().parent.parent / "deploy" / "kustomize"
OVERLAYS = sorted(p.name for p in (KUSTOMIZE / "overlays").iterdir() if (p / "kustomization.yaml").exists())

STRIMZI_CRDS = [permissive_crd("kafka.strimzi.io", "v1beta2", kind) for kind in ("KafkaTopic", "KafkaUser")]


def _build(kustomize: str, overlay: str) -> str:
    r = subprocess.run([kustomize, "build", str(KUSTOMIZE / "overlays" / overlay)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds(kustomize, overlay) -> None:
    out = _build(kustomize, overlay)
    kinds = {line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("kind:")}
    assert {"Namespace", "DaemonSet", "Deployment", "ClusterRole", "ClusterRoleBinding", "ConfigMap",
            "NetworkPolicy"} <= kinds
    assert "image: ghcr.io/wirestream/wirestream:" in out
    assert "WIRESTREAM_BOOTSTRAP" in out


@pytest.fixture(scope="module")
def cluster():
    reason = apiserver_unavailable()
    if reason:
        require_or_skip(f"no Kubernetes API server: {reason}")
    with ApiServer() as api:
        for crd in STRIMZI_CRDS:
            api.create_crd(crd)
        # Server-side dry run does not create the namespaces the objects go into.
        for ns in ("wirestream", "kafka"):
            api.kubectl("create", "namespace", ns)
        yield api


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_server_accepts_overlay(kustomize, cluster, overlay) -> None:
    r = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=_build(kustomize, overlay), check=False)
    assert r.returncode == 0, r.stderr
    assert "daemonset.apps/wirestream-capture created (server dry run)" in r.stdout, r.stdout
    if overlay == "strimzi":  # the two Kafka identities (tests/test_pod_security.py checks their ACLs)
        for user in ("wirestream", "wirestream-sinks"):
            assert f"kafkauser.kafka.strimzi.io/{user} created (server dry run)" in r.stdout, r.stdout


@pytest.mark.parametrize("name", [n for n in BUILDS if BUILDS[n]["components"]])
def test_api_server_accepts_components(kustomize, cluster, name) -> None:
    """The base with the optional components (sinks, mutual TLS, registry auth, CAP_SYS_ADMIN)."""
    objs = build(kustomize, name)
    r = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(objs), check=False)
    assert r.returncode == 0, r.stderr
    assert "deployment.apps/wirestream-sink-parquet created (server dry run)" in r.stdout, r.stdout
