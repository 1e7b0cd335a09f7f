"""A real Kubernetes API server for the tests: etcd + kube-apiserver on loopback.

``scripts/kube-apiserver`` builds the API server once (Debian's kubernetes 1.20.2 source,
Debian's Go), with kubectl of the same release and kustomize beside it (:func:`k8s_tool`),
and caches them outside the repository; :func:`apiserver_unavailable` says why the tests
cannot run when it cannot be had. :class:`ApiServer` starts etcd and the API
server on free ports with a static admin token, writes a kubeconfig, and serves
``discovery.k8s.io/v1`` EndpointSlices through a CRD (1.20 only has ``v1beta1``, which is
turned off so the CRD can take the group). Nothing runs pods: there is no kubelet. Tests
create Deployments, ReplicaSets, Pods (their ``podIP`` through the status subresource),
Services and EndpointSlices themselves.

:meth:`ApiServer.restart_apiserver` kills the API server (etcd keeps the state) and
starts it again on the same port: what a watch must survive.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from wirestream.loopback_ports import free_ports

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "scripts" / "kube-apiserver"
TOKEN = "wirestream-test-admin-token"


def permissive_crd(group: str, version: str, kind: str, approval: str | None = None) -> dict:
    """A namespaced CustomResourceDefinition serving ``kind`` in ``group``/``version`` that
    accepts any fields: a stand-in, it validates nothing. ``approval``: the
    ``api-approved.kubernetes.io`` annotation that a ``*.k8s.io`` group needs."""
    plural = kind.lower() + "s"
    metadata: dict = {"name": f"{plural}.{group}"}
    if approval:
        metadata["annotations"] = {"api-approved.kubernetes.io": approval}
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": metadata,
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"},
                     "versions": [{"name": version, "served": True, "storage": True, "schema": schema}]}}


ENDPOINTSLICE_CRD = permissive_crd("discovery.k8s.io", "v1", "EndpointSlice",
                                   "unapproved, test stand-in for the built-in discovery.k8s.io/v1 API")


@functools.cache
def apiserver_binary() -> str | None:
    """The cached kube-apiserver, building it if needed (None if that fails; tried once
    per test run)."""
    if os.geteuid() != 0:
        return None
    r = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800)
    path = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else ""
    return path if path and os.access(path, os.X_OK) else None


def k8s_tool(name: str) -> str | None:
    """``kubectl`` or ``kustomize`` as scripts/kube-apiserver installs them beside the API
    server (None if it could not): the tests use these, not whatever is on PATH."""
    binary = apiserver_binary()
    path = Path(binary).parent / name if binary else None
    return str(path) if path and os.access(path, os.X_OK) else None


def apiserver_unavailable() -> str | None:
    """None if a real API server can be run here, otherwise why not."""
    if os.geteuid() != 0:
        return "building and running kube-apiserver needs root (apt packages, /var/lib cache)"
    if shutil.which("etcd") is None and not BUILD_SCRIPT.exists():
        return "etcd is not installed"
    if apiserver_binary() is None:
        return "scripts/kube-apiserver could not build kube-apiserver, kubectl or kustomize (see its output)"
    if shutil.which("etcd") is None:
        return "etcd is not installed (Debian: etcd-server)"
    return None


class ApiServer:
    """etcd + kube-apiserver on free loopback ports; :attr:`kubeconfig` to talk to it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wirestream-k8s-"))
        self.etcd_port, self.etcd_peer_port, self.port = free_ports(3)
        self.kubeconfig = str(self.dir / "kubeconfig")
        self.url = f"https://127.0.0.1:{self.port}"
        self._etcd: subprocess.Popen | None = None
        self._apiserver: subprocess.Popen | None = None

    def __enter__(self) -> ApiServer:
        try:
            self._start_etcd()
            self._keys()
            self._start_apiserver()
            self._write_kubeconfig()
            self.create_crd(ENDPOINTSLICE_CRD)
            self._wait_for("/apis/discovery.k8s.io/v1")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- processes ----------------------------------------------------------------------------

    def _start_etcd(self) -> None:
        log = open(self.dir / "etcd.log", "w")
        self._etcd = subprocess.Popen(
            ["etcd", "--data-dir", str(self.dir / "etcd"), "--name", "test",
             "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
             "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
             "--listen-peer-urls", f"http://127.0.0.1:{self.etcd_peer_port}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.etcd_peer_port}",
             "--initial-cluster", f"test=http://127.0.0.1:{self.etcd_peer_port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.etcd_port}/health", timeout=1) as r:
                    if b"true" in r.read():
                        return
            if self._etcd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not start: {(self.dir / 'etcd.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def _keys(self) -> None:
        subprocess.run(["openssl", "genrsa", "-out", str(self.dir / "sa.key"), "2048"], check=True,
                       capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(self.dir / "sa.key"), "-pubout", "-out",
                        str(self.dir / "sa.pub")], check=True, capture_output=True)
        (self.dir / "tokens.csv").write_text(f'{TOKEN},admin,admin,"system:masters"\n')

    def _start_apiserver(self) -> None:
        binary = apiserver_binary()
        if binary is None:
            raise RuntimeError("no kube-apiserver (scripts/kube-apiserver)")
        log = open(self.dir / "apiserver.log", "a")
        self._apiserver = subprocess.Popen(
            [binary, "--etcd-servers", f"http://127.0.0.1:{self.etcd_port}",
             "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
             "--secure-port", str(self.port), "--cert-dir", str(self.dir / "certs"),
             "--token-auth-file", str(self.dir / "tokens.csv"), "--authorization-mode", "RBAC",
             "--service-account-key-file", str(self.dir / "sa.pub"),
             "--service-account-signing-key-file", str(self.dir / "sa.key"),
             "--service-account-issuer", "https://kubernetes.default.svc",
             "--service-cluster-ip-range", "10.96.0.0/16", "--allow-privileged",
             # no token controller runs here: pods need no service account token
             "--disable-admission-plugins", "ServiceAccount",
             # EndpointSlices v1 come from a CRD: 1.20's built-in group must be off
             "--runtime-config", "discovery.k8s.io/v1beta1=false"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_for("/readyz", timeout=60)

    def _wait_for(self, path: str, timeout: float = 30) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + timeout
        while True:
            try:
                req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {TOKEN}"})
                with urllib.request.urlopen(req, timeout=2, context=ctx) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if (self._apiserver is not None and self._apiserver.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"kube-apiserver: {path} not ready: "
                                   f"{(self.dir / 'apiserver.log').read_text()[-3000:]}")
            time.sleep(0.2)

    def _write_kubeconfig(self) -> None:
        Path(self.kubeconfig).write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{server: "{self.url}", insecure-skip-tls-verify: true}}
users:
- name: admin
  user: {{token: "{TOKEN}"}}
contexts:
- name: test
  context: {{cluster: test, user: admin}}
current-context: test
""")

    def stop_apiserver(self) -> None:
        if self._apiserver is not None and self._apiserver.poll() is None:
            os.killpg(self._apiserver.pid, signal.SIGKILL)
            self._apiserver.wait(timeout=10)

    def restart_apiserver(self, down_s: float = 0.0) -> None:
        """Kill the API server and start it again on the same port (etcd keeps the state)."""
        self.stop_apiserver()
        time.sleep(down_s)
        self._start_apiserver()

    def close(self) -> None:
        self.stop_apiserver()
        if self._etcd is not None and self._etcd.poll() is None:
            os.killpg(self._etcd.pid, signal.SIGKILL)
            self._etcd.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- helpers ------------------------------------------------------------------------------

    def create_crd(self, manifest: dict) -> None:
        """Create a CustomResourceDefinition (through the Python client: no kubectl needed)."""
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=self.kubeconfig)
        client.ApiextensionsV1Api(api).create_custom_resource_definition(manifest)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """``kubectl --kubeconfig ... args``, with the kubectl scripts/kube-apiserver built."""
        kubectl = k8s_tool("kubectl")
        if kubectl is None:
            raise RuntimeError("no kubectl (scripts/kube-apiserver builds it)")
        return subprocess.run([kubectl, "--kubeconfig", self.kubeconfig, *args], input=input,
                              capture_output=True, text=True, check=check, timeout=60)
