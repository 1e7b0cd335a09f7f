"""deploy/kustomize: every overlay builds, and a real API server accepts what it builds.

``kubectl apply --dry-run=server`` runs the API server's validation, defaulting and
admission on every object without storing it. The Strimzi overlay's KafkaTopic resources
need Strimzi's CRD; a permissive stand-in for it is installed first (the real one
validates more fields, which this test cannot check without Strimzi).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from k8s_cluster import ApiServer, apiserver_unavailable

KUSTOMIZE = Path(__file__).resolve().parent.parent / "deploy" / "kustomize"
OVERLAYS = sorted(p.name for p in (KUSTOMIZE / "overlays").iterdir() if (p / "kustomization.yaml").exists())

KAFKATOPIC_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: kafkatopics.kafka.strimzi.io
spec:
  group: kafka.strimzi.io
  scope: Namespaced
  names: {plural: kafkatopics, singular: kafkatopic, kind: KafkaTopic, listKind: KafkaTopicList}
  versions:
  - name: v1beta2
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"""

requires_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


def _build(overlay: str) -> str:
    r = subprocess.run(["kubectl", "kustomize", str(KUSTOMIZE / "overlays" / overlay)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@requires_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds(overlay) -> None:
    out = _build(overlay)
    kinds = {line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("kind:")}
    assert {"Namespace", "DaemonSet", "Deployment", "ClusterRole", "ClusterRoleBinding", "ConfigMap"} <= kinds
    assert "image: ghcr.io/wirestream/wirestream:" in out
    assert "WIRESTREAM_BOOTSTRAP" in out


@pytest.fixture(scope="module")
def cluster():
    reason = apiserver_unavailable()
    if reason:
        pytest.skip(f"no Kubernetes API server: {reason}")
    with ApiServer() as api:
        api.create_crd(KAFKATOPIC_CRD)
        # Server-side dry run does not create the namespaces the objects go into.
        for ns in ("wirestream", "kafka"):
            api.kubectl("create", "namespace", ns)
        yield api


@requires_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_server_accepts_overlay(cluster, overlay) -> None:
    r = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=_build(overlay), check=False)
    assert r.returncode == 0, r.stderr
    assert "daemonset.apps/wirestream-capture created (server dry run)" in r.stdout, r.stdout
