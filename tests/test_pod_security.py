"""deploy/kustomize at least privilege: the Pod Security Standards, field by field.

The test API server (tests/k8s_cluster.py) is Kubernetes 1.20, older than Pod Security
admission (1.23+), so the standard is encoded here control by control, each with the
fields it restricts and the values it allows, as the standard states them:
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (the "Baseline" and
"Restricted" tables). Every workload of every build must pass "restricted", except the
capture DaemonSet, whose "baseline" violations must be exactly the documented exemptions
(host namespaces, read-only hostPath volumes, and the capabilities ``wirestream doctor``
names: wirestream/doctor.py, asked by running doctor itself without any capability).

What is built: both overlays, and the base with the optional components
(deploy/kustomize/components): the checks cover every workload anyone can deploy from here.
Beside the standard: credentials come from Secret files (no Secret values in the
manifests, no passwords in the environment), every file setting points into a mounted
Secret, a read-only root filesystem has somewhere to write, the NetworkPolicies allow
only DNS, Kafka, the registry and the API server, every namespaced object is in its
namespace, and the two Kafka identities: the sinks mount only their own Secret (user
wirestream-sinks), every other workload only the main one (user wirestream); the Strimzi
KafkaUsers' ACLs cover wirestream's topics and groups and nothing else, and the sinks'
only the output topics (nothing on wire.packets, wire.sockets, wire.checkpoints, which
hold payloads in clear, nor on the processors' own topics).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from helpers import require_or_skip
from wirestream.processors.app import changelog_topic

from wirestream import doctor
from wirestream.topics import (
    ALERTS,
    ALL_TOPICS,
    CALL_CHAINS,
    CHECKPOINTS,
    DEAD_LETTER,
    DERIVED_TOPICS,
    K8S_IDENTITY,
    K8S_POLICIES,
    OBSERVATIONS,
    OUTPUT_TOPICS,
    PACKETS,
    PARQUET_SINK_TOPICS,
    SERVICE_METRICS,
    SIEM_SINK_TOPICS,
    SOCKETS,
    STATS,
    TLS_PLAINTEXT,
)

REPO = Path(__file__).resolve().parent.parent
KUSTOMIZE = REPO / "deploy" / "kustomize"
PSS = "https://kubernetes.io/docs/concepts/security/pod-security-standards/"

#: What is built: the overlays, and the base with the optional components (listed before
#: the Kafka ones: their patches reach only the workloads already there).
BUILDS: dict[str, dict[str, list[str]]] = {
    "external-kafka": {"resources": ["overlays/external-kafka"], "components": []},
    "strimzi": {"resources": ["overlays/strimzi"], "components": []},
    "base+sinks+scram+registry+sys-admin": {
        "resources": ["base"],
        "components": ["components/sinks", "components/kafka-scram-tls", "components/registry-auth",
                       "components/capture-sys-admin"]},
    "base+sinks+mtls+fd-snapshots": {"resources": ["base"], "components": [
        "components/sinks", "components/kafka-mtls", "components/capture-fd-snapshots"]},
}
POD_KINDS = {"Pod", "Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job", "CronJob"}
CAPTURE = "wirestream-capture"


# --- the Pod Security Standards ---------------------------------------------------------------
# A violation: (control, field, offending value). Controls and fields are named as in the
# standard's tables; "containers[NAME]" stands for spec.containers[*], spec.initContainers[*]
# and spec.ephemeralContainers[*] (every control covers all three).

Violation = tuple[str, str, Any]

#: Baseline, "Capabilities": what may be added (the container runtime's default set).
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
#: Baseline, "Sysctls": the safe set.
BASELINE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                    "net.ipv4.tcp_keepalive_probes"}
#: Baseline, "SELinux": the types a pod or container may set (user and role: none).
BASELINE_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
#: Restricted, "Volume Types": the only volume sources allowed.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}
VOLUME_KEYS_NOT_SOURCES = {"name"}

BASELINE_CONTROLS = ("HostProcess", "Host Namespaces", "Privileged Containers", "Capabilities",
                     "HostPath Volumes", "Host Ports", "AppArmor", "SELinux", "/proc Mount Type", "Seccomp",
                     "Sysctls")
RESTRICTED_CONTROLS = ("Volume Types", "Privilege Escalation", "Running as Non-root",
                       "Running as Non-root user", "Seccomp (restricted)", "Capabilities (restricted)")


def _containers(spec: dict) -> list[tuple[str, dict]]:
    """(field prefix, container) of spec.containers, initContainers, ephemeralContainers."""
    return [(f"spec.{key}[{c.get('name')}]", c) for key in ("containers", "initContainers", "ephemeralContainers")
            for c in spec.get(key) or []]


def baseline_violations(meta: dict, spec: dict) -> list[Violation]:
    """The Baseline profile's controls (PSS, "Baseline"), in the standard's order."""
    out: list[Violation] = []
    psc = spec.get("securityContext") or {}
    containers = _containers(spec)
    # HostProcess: windowsOptions.hostProcess undefined/nil or false.
    for where, sc in [("spec.securityContext", psc)] + [(f"{p}.securityContext", c.get("securityContext") or {})
                                                         for p, c in containers]:
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(("HostProcess", f"{where}.windowsOptions.hostProcess", True))
    # Host Namespaces: spec.hostNetwork, spec.hostPID, spec.hostIPC undefined/nil or false.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(("Host Namespaces", f"spec.{field}", True))
    for prefix, c in containers:
        sc = c.get("securityContext") or {}
        # Privileged Containers: securityContext.privileged undefined/nil or false.
        if sc.get("privileged"):
            out.append(("Privileged Containers", f"{prefix}.securityContext.privileged", True))
        # Capabilities: capabilities.add undefined/nil or within the default set.
        for cap in (sc.get("capabilities") or {}).get("add") or []:
            if cap not in BASELINE_CAPABILITIES:
                out.append(("Capabilities", f"{prefix}.securityContext.capabilities.add", cap))
        # Host Ports: ports[*].hostPort undefined/nil, 0 (or a known list: none here).
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(("Host Ports", f"{prefix}.ports[*].hostPort", port["hostPort"]))
        # /proc Mount Type: procMount undefined/nil or Default.
        if sc.get("procMount") not in (None, "Default"):
            out.append(("/proc Mount Type", f"{prefix}.securityContext.procMount", sc["procMount"]))
    # HostPath Volumes: spec.volumes[*].hostPath undefined/nil.
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            out.append(("HostPath Volumes", f"spec.volumes[{v['name']}].hostPath", v["hostPath"].get("path")))
    # AppArmor: appArmorProfile.type undefined/nil, RuntimeDefault, Localhost; the
    # annotation container.apparmor.security.beta.kubernetes.io/* runtime/default, localhost/*.
    for where, sc in [("spec.securityContext", psc)] + [(f"{p}.securityContext", c.get("securityContext") or {})
                                                         for p, c in containers]:
        kind = (sc.get("appArmorProfile") or {}).get("type")
        if kind not in (None, "RuntimeDefault", "Localhost"):
            out.append(("AppArmor", f"{where}.appArmorProfile.type", kind))
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            out.append(("AppArmor", f"metadata.annotations[{key}]", value))
    # SELinux: seLinuxOptions.type in the allowed set; .user and .role undefined/"".
    for where, sc in [("spec.securityContext", psc)] + [(f"{p}.securityContext", c.get("securityContext") or {})
                                                         for p, c in containers]:
        se = sc.get("seLinuxOptions") or {}
        if se.get("type", "") not in BASELINE_SELINUX_TYPES:
            out.append(("SELinux", f"{where}.seLinuxOptions.type", se["type"]))
        for field in ("user", "role"):
            if se.get(field):
                out.append(("SELinux", f"{where}.seLinuxOptions.{field}", se[field]))
    # Seccomp: seccompProfile.type undefined/nil, RuntimeDefault, Localhost (not Unconfined).
    for where, sc in [("spec.securityContext", psc)] + [(f"{p}.securityContext", c.get("securityContext") or {})
                                                         for p, c in containers]:
        kind = (sc.get("seccompProfile") or {}).get("type")
        if kind not in (None, "RuntimeDefault", "Localhost"):
            out.append(("Seccomp", f"{where}.seccompProfile.type", kind))
    # Sysctls: spec.securityContext.sysctls[*].name undefined/nil or in the safe set.
    for s in psc.get("sysctls") or []:
        if s.get("name") not in BASELINE_SYSCTLS:
            out.append(("Sysctls", "spec.securityContext.sysctls[*].name", s.get("name")))
    return out


def restricted_violations(meta: dict, spec: dict) -> list[Violation]:
    """The Restricted profile: everything of Baseline, plus its own controls (PSS, "Restricted")."""
    out = baseline_violations(meta, spec)
    psc = spec.get("securityContext") or {}
    # Volume Types: only configMap, csi, downwardAPI, emptyDir, ephemeral,
    # persistentVolumeClaim, projected, secret.
    for v in spec.get("volumes") or []:
        for source in set(v) - VOLUME_KEYS_NOT_SOURCES - RESTRICTED_VOLUME_TYPES:
            out.append(("Volume Types", f"spec.volumes[{v['name']}]", source))
    for prefix, c in _containers(spec):
        sc = c.get("securityContext") or {}
        # Privilege Escalation: allowPrivilegeEscalation must be false (set, not defaulted).
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(("Privilege Escalation", f"{prefix}.securityContext.allowPrivilegeEscalation",
                        sc.get("allowPrivilegeEscalation")))
        # Running as Non-root: runAsNonRoot true on the pod, or on every container (a
        # container's may be undefined if the pod's is true; it may never be false).
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(("Running as Non-root", f"{prefix}.securityContext.runAsNonRoot", non_root))
        # Seccomp: RuntimeDefault or Localhost on the pod, or on every container
        # (containers may leave it undefined only if the pod sets it).
        kind = (sc.get("seccompProfile") or {}).get("type") or (psc.get("seccompProfile") or {}).get("type")
        if kind not in ("RuntimeDefault", "Localhost"):
            out.append(("Seccomp (restricted)", f"{prefix}.securityContext.seccompProfile.type", kind))
        # Capabilities: drop must include ALL; add only NET_BIND_SERVICE.
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(("Capabilities (restricted)", f"{prefix}.securityContext.capabilities.drop",
                        caps.get("drop")))
        for cap in caps.get("add") or []:
            if cap != "NET_BIND_SERVICE":
                out.append(("Capabilities (restricted)", f"{prefix}.securityContext.capabilities.add", cap))
    # Running as Non-root user: runAsUser undefined/nil or non-zero, pod and containers.
    for where, sc in [("spec.securityContext", psc)] + [(f"{p}.securityContext", c.get("securityContext") or {})
                                                         for p, c in _containers(spec)]:
        if sc.get("runAsUser") == 0:
            out.append(("Running as Non-root user", f"{where}.runAsUser", 0))
    return out


# --- building ---------------------------------------------------------------------------------


def build(kustomize: str, name: str) -> list[dict]:
    """The objects of build ``name`` (BUILDS): an overlay, or a kustomization made here of
    the base and components (relative paths: kustomize refuses absolute ones)."""
    parts = BUILDS[name]
    with tempfile.TemporaryDirectory(prefix="wirestream-kustomize-") as tmp:
        rel = os.path.relpath(KUSTOMIZE, tmp)
        Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [f"{rel}/{p}" for p in parts["resources"]],
            "components": [f"{rel}/{p}" for p in parts["components"]]}))
        r = subprocess.run([kustomize, "build", tmp], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"kustomize build {name}: {r.stderr}"
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module")
def built(kustomize) -> dict[str, list[dict]]:
    return {name: build(kustomize, name) for name in BUILDS}


def pod_template(obj: dict) -> tuple[dict, dict]:
    """(metadata, spec) of the pods a workload makes."""
    if obj["kind"] == "Pod":
        return obj.get("metadata") or {}, obj["spec"]
    if obj["kind"] == "CronJob":
        tpl = obj["spec"]["jobTemplate"]["spec"]["template"]
    else:
        tpl = obj["spec"]["template"]
    return tpl.get("metadata") or {}, tpl["spec"]


def workloads(objs: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] in POD_KINDS}


def configmap(objs: list[dict]) -> dict[str, str]:
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "wirestream"]
    return cm["data"]


# --- what doctor says capture needs --------------------------------------------------------------


def run_doctor(caps: list[str] | None, probe: bool = False) -> dict:
    """``wirestream doctor --json`` as root with only ``caps`` (Linux names, CAP_ prefix
    dropped, lower case) in its bounding set, so that it has those and no others (None:
    none at all)."""
    if shutil.which("setpriv") is None:
        require_or_skip("setpriv (util-linux) is not installed")
    if os.geteuid() != 0:
        require_or_skip("running doctor with chosen capabilities needs root")
    bounding = "-all" + "".join(f",+{c.lower()}" for c in caps or [])
    cmd = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", f"--bounding-set={bounding}", "--",
           sys.executable, "-m", "wirestream", "doctor", "--json"] + ([] if probe else ["--no-probe"])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def doctor_needs() -> tuple[set[str], set[str]]:
    """(what capture needs, the fallback for old kernels) as ``wirestream doctor`` says
    them when it has no capability: its "privileges" advice names what to grant, its eBPF
    reason names the alternative in parentheses. Kubernetes names (no CAP_ prefix)."""
    report = run_doctor(None)
    (privileges,) = [c for c in report["checks"] if c["name"] == "privileges"]
    assert not privileges["ok"], privileges
    grant = privileges["detail"].split("grant", 1)[1]
    needed = set(re.findall(r"CAP_([A-Z_]+)", grant))
    reason = report["capture_modes"]["ebpf_packets"]["reason"]
    fallback = set(re.findall(r"\(or CAP_([A-Z_]+)\)", reason))
    # Both are doctor's own capability list, which is all it knows of.
    assert {f"CAP_{c}" for c in needed | fallback} <= set(doctor.CAPABILITIES), (needed, fallback)
    assert needed and fallback == {"SYS_ADMIN"}, (needed, fallback)
    return needed, fallback


# --- the checker itself ---------------------------------------------------------------------------

GOOD_POD: dict = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "c", "image": "x", "securityContext": {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}}],
    "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "s", "secret": {"secretName": "s"}}],
}


def _set(path: str, value: Any) -> Any:
    def mutate(spec: dict) -> None:
        *parents, last = path.split(".")
        node = spec
        for key in parents:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        node[last] = value
    return mutate


# (control the mutation must trip, level, mutation): each control of both profiles at least once.
MUTATIONS: list[tuple[str, str, Any]] = [
    ("HostProcess", "baseline", _set("securityContext.windowsOptions", {"hostProcess": True})),
    ("Host Namespaces", "baseline", _set("hostNetwork", True)),
    ("Host Namespaces", "baseline", _set("hostPID", True)),
    ("Host Namespaces", "baseline", _set("hostIPC", True)),
    ("Privileged Containers", "baseline", _set("containers.0.securityContext.privileged", True)),
    ("Capabilities", "baseline", _set("containers.0.securityContext.capabilities", {"drop": ["ALL"],
                                                                                    "add": ["SYS_ADMIN"]})),
    ("HostPath Volumes", "baseline", _set("volumes", [{"name": "h", "hostPath": {"path": "/"}}])),
    ("Host Ports", "baseline", _set("containers.0.ports", [{"containerPort": 80, "hostPort": 80}])),
    ("AppArmor", "baseline", _set("securityContext.appArmorProfile", {"type": "Unconfined"})),
    ("SELinux", "baseline", _set("securityContext.seLinuxOptions", {"type": "spc_t"})),
    ("SELinux", "baseline", _set("containers.0.securityContext.seLinuxOptions", {"user": "system_u"})),
    ("/proc Mount Type", "baseline", _set("containers.0.securityContext.procMount", "Unmasked")),
    ("Seccomp", "baseline", _set("securityContext.seccompProfile", {"type": "Unconfined"})),
    ("Sysctls", "baseline", _set("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}])),
    ("Volume Types", "restricted", _set("volumes", [{"name": "n", "nfs": {"server": "x", "path": "/"}}])),
    ("Privilege Escalation", "restricted", _set("containers.0.securityContext.allowPrivilegeEscalation", True)),
    ("Running as Non-root", "restricted", _set("securityContext.runAsNonRoot", False)),
    ("Running as Non-root user", "restricted", _set("containers.0.securityContext.runAsUser", 0)),
    ("Seccomp (restricted)", "restricted", _set("securityContext.seccompProfile", None)),
    ("Capabilities (restricted)", "restricted", _set("containers.0.securityContext.capabilities",
                                                     {"drop": ["NET_RAW"]})),
    ("Capabilities (restricted)", "restricted", _set("containers.0.securityContext.capabilities",
                                                     {"drop": ["ALL"], "add": ["CHOWN"]})),
]


def test_checker_passes_a_restricted_pod() -> None:
    assert restricted_violations({}, GOOD_POD) == []


def test_checker_covers_every_control() -> None:
    assert {c for c, _, _ in MUTATIONS} == set(BASELINE_CONTROLS) | set(RESTRICTED_CONTROLS)


@pytest.mark.parametrize(("control", "level", "mutate"), MUTATIONS,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(MUTATIONS)])
def test_checker_catches(control, level, mutate) -> None:
    """Each control trips on a violation of it (a checker that passes everything is no check),
    at its own level: baseline controls at both levels, restricted ones only at restricted."""
    spec = copy.deepcopy(GOOD_POD)
    mutate(spec)
    restricted = {c for c, _, _ in restricted_violations({}, spec)}
    baseline = {c for c, _, _ in baseline_violations({}, spec)}
    assert control in restricted, restricted
    assert (control in baseline) == (level == "baseline"), baseline


def test_checker_apparmor_annotation() -> None:
    meta = {"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}}
    assert [c for c, _, _ in baseline_violations(meta, GOOD_POD)] == ["AppArmor"]
    meta = {"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "localhost/wirestream"}}
    assert baseline_violations(meta, GOOD_POD) == []


# --- the manifests ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILDS)
def test_workloads_are_restricted(built, name) -> None:
    """Every workload but capture passes "restricted"."""
    objs = workloads(built[name])
    assert {"wirestream-processors", "wirestream-windows", "wirestream-chains", "wirestream-watcher", CAPTURE} <= set(objs)
    if "components/sinks" in BUILDS[name]["components"]:
        assert "wirestream-sink-parquet" in objs
    for wname, obj in objs.items():
        if wname == CAPTURE:
            continue
        assert restricted_violations(*pod_template(obj)) == [], f"{name}: {wname} is not restricted ({PSS})"


@pytest.mark.parametrize("name", BUILDS)
def test_capture_is_baseline_plus_what_it_needs(built, name, doctor_needs) -> None:
    """The capture DaemonSet's only departures from "baseline": the node's network and pid
    namespaces, read-only hostPaths, and exactly the capabilities doctor names (plus
    CAP_SYS_ADMIN, doctor's alternative, where components/capture-sys-admin adds it, and
    CAP_SYS_PTRACE with the fd snapshots, where components/capture-fd-snapshots turns them on)."""
    needed, fallback = doctor_needs
    meta, spec = pod_template(workloads(built[name])[CAPTURE])
    found = baseline_violations(meta, spec)
    caps = {v for c, _, v in found if c == "Capabilities"}
    components = BUILDS[name]["components"]
    expected_caps = needed | (fallback if "components/capture-sys-admin" in components else set())
    # reading other processes' /proc/PID/fd for the fd snapshots, only where they are on
    fd_snapshots = "components/capture-fd-snapshots" in components
    if fd_snapshots:
        expected_caps |= {"SYS_PTRACE"}
    assert caps == expected_caps
    (capture,) = spec["containers"]
    interval = capture["args"][capture["args"].index("--fd-snapshot-interval") + 1]
    assert (float(interval) > 0) == fd_snapshots
    assert {(c, f) for c, f, _ in found if c == "Host Namespaces"} == {
        ("Host Namespaces", "spec.hostNetwork"), ("Host Namespaces", "spec.hostPID")}
    host_paths = {v for c, _, v in found if c == "HostPath Volumes"}
    assert host_paths == {"/sys/kernel/tracing", "/sys/fs/cgroup", "/lib/modules", "/usr/src"}
    assert {c for c, _, _ in found} == {"Capabilities", "Host Namespaces", "HostPath Volumes"}, found
    # Never privileged; everything else as tight as capture allows.
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec.get("automountServiceAccountToken") is False
    host_volumes = {v["name"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert all(mounts[v].get("readOnly") is True for v in host_volumes), mounts


def test_capture_capabilities_are_enough_and_each_needed(built, doctor_needs) -> None:
    """doctor, given exactly the DaemonSet's capabilities, proves every capture mode by
    compiling and loading a socket filter and attaching a tracepoint program; without
    CAP_BPF or CAP_PERFMON eBPF is refused, without CAP_NET_RAW AF_PACKET is."""
    spec = pod_template(workloads(built["strimzi"])[CAPTURE])[1]
    caps = spec["containers"][0]["securityContext"]["capabilities"]["add"]
    report = run_doctor(caps, probe=True)
    checks = {c["name"]: c for c in report["checks"]}
    if not checks.get("bcc", {}).get("ok") or not checks.get("kernel headers", {}).get("ok"):
        require_or_skip(f"no eBPF here to prove it with: {checks.get('bcc')}, {checks.get('kernel headers')}")
    modes = report["capture_modes"]
    assert all(m["available"] for m in modes.values()), modes
    assert checks["ebpf probe"]["ok"] and checks["tracepoint probe"]["ok"], checks
    for cap, mode in (("BPF", "ebpf_packets"), ("PERFMON", "ebpf_packets"), ("NET_RAW", "af_packet")):
        without = run_doctor([c for c in caps if c != cap])["capture_modes"]
        assert not without[mode]["available"], (cap, without)


SOCK_OPS_PROBE = """\
from wirestream.doctor import kernel_headers, load_bcc
from wirestream.producers.socket_events import SocketEventSource
kernel_headers()
source = SocketEventSource(load_bcc())
try:
    print(source.sock_ops_unavailable or "attached")
finally:
    source.close()
"""


def test_capture_net_admin_is_for_sock_ops(built) -> None:
    """doctor does not check CAP_NET_ADMIN: capture's own socket-event source, run with the
    DaemonSet's capabilities, attaches its sock_ops program to the cgroup; without
    CAP_NET_ADMIN it cannot (and counts retransmissions per skb instead)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        require_or_skip("running capture with chosen capabilities needs root and setpriv")
    caps = pod_template(workloads(built["strimzi"])[CAPTURE])[1]["containers"][0]["securityContext"][
        "capabilities"]["add"]
    results = {}
    for name, chosen in (("all", caps), ("without NET_ADMIN", [c for c in caps if c != "NET_ADMIN"])):
        bounding = "-all" + "".join(f",+{c.lower()}" for c in chosen)
        r = subprocess.run(["setpriv", "--inh-caps=-all", "--ambient-caps=-all", f"--bounding-set={bounding}", "--",
                            sys.executable, "-c", SOCK_OPS_PROBE], capture_output=True, text=True, timeout=120)
        if r.returncode != 0 and ("bcc" in r.stderr and "not installed" in r.stderr):
            require_or_skip(f"no bcc here: {r.stderr.strip().splitlines()[-1]}")
        assert r.returncode == 0, r.stderr
        results[name] = r.stdout.strip()
    assert results["all"] == "attached", results
    assert results["without NET_ADMIN"] != "attached", results


@pytest.mark.parametrize("name", BUILDS)
def test_secrets_are_files(built, name) -> None:
    """No Secret values in the manifests, no password in the environment; every file
    setting (WIRESTREAM_*_FILE, *_CA, *_CERT, *_KEY) names a file that a Secret volume
    mounted in every container provides."""
    objs = built[name]
    assert not [o for o in objs if o["kind"] == "Secret"]
    cm = configmap(objs)
    secretish = re.compile(r"PASSWORD|TOKEN|SECRET")
    for key in cm:
        assert not secretish.search(key) or key.endswith("_FILE"), f"{key} in the ConfigMap"
    file_settings = {k: v for k, v in cm.items()
                     if re.fullmatch(r"WIRESTREAM_\w+_(FILE|CA|CERT|KEY)", k)}
    if name.startswith("base+sinks+mtls"):
        assert set(file_settings) == {"WIRESTREAM_KAFKA_CA", "WIRESTREAM_KAFKA_CERT", "WIRESTREAM_KAFKA_KEY"}
    else:
        assert {"WIRESTREAM_KAFKA_SASL_PASSWORD_FILE", "WIRESTREAM_KAFKA_CA"} <= set(file_settings)
    for wname, obj in workloads(objs).items():
        spec = pod_template(obj)[1]
        for c in spec["containers"]:
            files: dict[str, int] = {}  # path -> mode, of the files Secret volumes provide
            for env in c.get("env") or []:
                assert not secretish.search(env["name"]) or env["name"].endswith("_FILE"), (wname, env)
            volumes = {v["name"]: v for v in spec.get("volumes") or []}
            for m in c.get("volumeMounts") or []:
                v = volumes[m["name"]]
                if "secret" in v:
                    sources, mode = [v["secret"]], v["secret"].get("defaultMode")
                elif "projected" in v:
                    sources = [s["secret"] for s in v["projected"]["sources"] if "secret" in s]
                    mode = v["projected"].get("defaultMode")
                else:
                    continue
                assert m.get("readOnly") is True, (wname, m)
                for s in sources:
                    assert s.get("items"), f"{wname}: mount only the keys used, not the whole Secret {s}"
                    for item in s["items"]:
                        files[f"{m['mountPath']}/{item['path']}"] = mode
            for key, path in file_settings.items():
                assert path in files, f"{name}: {wname}: {key}={path} is not a mounted Secret file"
                # 0440: readable by the owner and fsGroup, not by others
                assert files[path] == 0o440, (wname, path, oct(files[path] or 0))
        if spec.get("securityContext", {}).get("runAsUser", 0) != 0:
            assert spec["securityContext"].get("fsGroup"), f"{wname}: Secret files unreadable without fsGroup"


@pytest.mark.parametrize("name", BUILDS)
def test_read_only_root_has_somewhere_to_write(built, name) -> None:
    """A read-only root filesystem, with emptyDir at /tmp (tempfile, Faust's default data
    directory), and Faust's data directory and the Parquet sink's output on writable volumes."""
    for wname, obj in workloads(built[name]).items():
        spec = pod_template(obj)[1]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, wname
            writable = {m["mountPath"] for m in c.get("volumeMounts") or []
                        if not m.get("readOnly") and ({"emptyDir", "persistentVolumeClaim"} & set(volumes[m["name"]]))}
            assert "/tmp" in writable, wname
            paths = [e["value"] for e in c.get("env") or [] if e["name"] == "WIRESTREAM_FAUST_DATADIR"]
            args = c.get("args") or []
            if "--out" in args:
                paths.append(args[args.index("--out") + 1])
            for path in paths:
                assert any(path == w or path.startswith(w + "/") for w in writable), (wname, path, writable)


def _port(address: str, default: int) -> int:
    return urlsplit(address if "//" in address else f"//{address}").port or default


@pytest.mark.parametrize("name", ["external-kafka", "strimzi"])
def test_network_policy(built, name) -> None:
    """Every pod: no ingress; egress to DNS, to Kafka on the bootstrap's port, to the
    registry on its URL's port; the watcher alone to the API server's ports."""
    objs = built[name]
    policies = [o["spec"] for o in objs if o["kind"] == "NetworkPolicy"]
    cm = configmap(objs)
    deny = [p for p in policies if p["podSelector"] == {} and set(p["policyTypes"]) == {"Ingress", "Egress"}]
    assert deny and not any(p.get("ingress") for p in policies), policies
    egress = [(p["podSelector"], rule) for p in policies for rule in p.get("egress") or []]
    for _, rule in egress:
        assert rule.get("to") and rule.get("ports"), f"an egress rule open to everything: {rule}"
    ports_all = {port["port"] for sel, rule in egress if sel == {} for port in rule["ports"]}
    kafka_ports = {_port(b, 9092) for b in cm["WIRESTREAM_BOOTSTRAP"].split(",")}
    registry = urlsplit(cm["WIRESTREAM_REGISTRY"])
    registry_port = registry.port or (443 if registry.scheme == "https" else 80)
    assert ports_all == {53} | kafka_ports | {registry_port}, ports_all
    assert kafka_ports == {9093}  # the TLS listener
    anywhere = [(sel, rule) for sel, rule in egress
                if any(t.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for t in rule["to"])]
    assert [sel for sel, _ in anywhere] == [{"matchLabels": {"app.kubernetes.io/name": "wirestream-watcher"}}]
    assert {port["port"] for _, rule in anywhere for port in rule["ports"]} == {443, 6443}


def acl_operations(acls: list[dict], kind: str, name: str) -> set[str]:
    """The operations Strimzi ``simple`` ACLs ``acls`` allow on resource ``kind`` ``name``
    (literal ACLs match the name, prefix ones its start)."""
    ops: set[str] = set()
    for acl in acls:
        r = acl["resource"]
        if r["type"] == kind and (name == r["name"] if r.get("patternType", "literal") == "literal"
                                  else name.startswith(r["name"])):
            ops |= set(acl["operations"])
    return ops


def kafka_users(objs: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == "KafkaUser"}


#: Topics that hold what the wire carried in clear or the processors' own state: the
#: captured packets and socket events, the checkpoints (reassembly buffers and partial HTTP
#: messages: docs/checkpoints.md), the observations and the identity table.
NOT_FOR_SINKS = (PACKETS, SOCKETS, TLS_PLAINTEXT, CHECKPOINTS, OBSERVATIONS, K8S_IDENTITY, K8S_POLICIES)
#: The topics the sinks read by default: the Parquet sink's, the SIEM sink's, the
#: Prometheus sink's (sinks/prometheus.py: service metrics and alerts), and the stats.
#: And the call chains (`wirestream chains`), which a sink reads when given --topics.
SINK_TOPICS = set(PARQUET_SINK_TOPICS) | set(SIEM_SINK_TOPICS) | {SERVICE_METRICS, ALERTS, STATS, CALL_CHAINS}
#: The sinks' default consumer groups (wirestream/commands/sink.py).
SINK_GROUPS = ("wirestream-sink-parquet", "wirestream-sink-siem", "wirestream-sink-prometheus")
MAIN_SECRET, SINKS_SECRET, CA_SECRET = "wirestream-kafka-user", "wirestream-kafka-sinks-user", "wirestream-kafka-ca"


def is_sink(obj: dict) -> bool:
    """A workload of `wirestream sink ...`, by what it runs (not by a label the manifests
    could forget)."""
    return any((c.get("args") or [None])[0] == "sink" for c in pod_template(obj)[1]["containers"])


def mounted_secrets(spec: dict) -> set[str]:
    """The Secrets a pod's containers mount (secret and projected volumes)."""
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    names: set[str] = set()
    for c in spec["containers"]:
        for m in c.get("volumeMounts") or []:
            v = volumes[m["name"]]
            if "secret" in v:
                names.add(v["secret"]["secretName"])
            for source in (v.get("projected") or {}).get("sources") or []:
                if "secret" in source:
                    names.add(source["secret"]["name"])
    return names


def kafka_username(container: dict, cm: dict[str, str]) -> str | None:
    """The SASL user a container runs as: its env overrides the ConfigMap (envFrom)."""
    user = cm.get("WIRESTREAM_KAFKA_SASL_USERNAME")
    for env in container.get("env") or []:
        if env["name"] == "WIRESTREAM_KAFKA_SASL_USERNAME":
            user = env["value"]
    return user


@pytest.mark.parametrize("name", BUILDS)
def test_sinks_have_their_own_kafka_identity(built, name) -> None:
    """The sinks read only output topics: they mount the sinks' Secret and run as user
    wirestream-sinks (SCRAM) or with the sinks' certificate (mutual TLS), never with the
    credentials that can read wire.packets and wire.checkpoints; every other workload
    mounts the main Secret and never the sinks'."""
    objs = built[name]
    cm = configmap(objs)
    scram = cm["WIRESTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    loads = workloads(objs)
    sinks = {w for w, o in loads.items() if is_sink(o)}
    assert bool(sinks) == ("components/sinks" in BUILDS[name]["components"]), sinks
    for wname, obj in loads.items():
        spec = pod_template(obj)[1]
        secrets = mounted_secrets(spec) - {"wirestream-registry"}
        own = SINKS_SECRET if wname in sinks else MAIN_SECRET
        assert secrets == {own, CA_SECRET}, f"{name}: {wname} mounts {sorted(secrets)}, not {own} and the CA"
        (container,) = spec["containers"]
        user = kafka_username(container, cm)
        if scram:
            assert user == ("wirestream-sinks" if wname in sinks else "wirestream"), (name, wname, user)
        else:  # mutual TLS: the certificate is the identity, no user name anywhere
            assert user is None, (name, wname, user)


@pytest.mark.parametrize("name", BUILDS)
def test_objects_are_in_their_namespace(built, name) -> None:
    """Everything namespaced is in namespace wirestream (the Strimzi resources in kafka),
    components included: a component has no namespace of its own to give (the base's
    applies to the base only), so an object without one lands in kubectl's current one."""
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for o in built[name]:
        if o["kind"] in cluster_scoped:
            continue
        want = "kafka" if o["apiVersion"].startswith("kafka.strimzi.io/") else "wirestream"
        assert o["metadata"].get("namespace") == want, f"{name}: {o['kind']}/{o['metadata']['name']}"


def test_strimzi_users_and_topics(built) -> None:
    """TLS + SCRAM-SHA-512 towards Strimzi; two KafkaUsers. wirestream (capture,
    processors, watcher) may use its topics (wire.*: every one of them a KafkaTopic), the
    windows' changelog of the default group, and consumer groups wirestream-*;
    wirestream-sinks may read the output topics and the stats, write the dead letters, and
    use the groups wirestream-sink-*; nothing on the topics that carry payloads (packets,
    sockets, checkpoints) or are the processors' own. Nothing else for either (no cluster
    ACL, no wildcard)."""
    objs = built["strimzi"]
    cm = configmap(objs)
    assert cm["WIRESTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert cm["WIRESTREAM_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert cm["WIRESTREAM_BOOTSTRAP"] == "wirestream-kafka-bootstrap.kafka.svc:9093"
    topics = {o["spec"]["topicName"] for o in objs if o["kind"] == "KafkaTopic"}
    assert set(ALL_TOPICS) <= topics, set(ALL_TOPICS) - topics
    users = kafka_users(objs)
    # The users the workloads authenticate as: the ConfigMap's, and the sinks' (the sinks
    # component is not in the overlay: its SCRAM build says what user the sinks are).
    sink_build = built["base+sinks+scram+registry+sys-admin"]
    (sink,) = [o for o in workloads(sink_build).values() if is_sink(o)]
    sinks_user = kafka_username(pod_template(sink)[1]["containers"][0], configmap(sink_build))
    assert set(users) == {cm["WIRESTREAM_KAFKA_SASL_USERNAME"], sinks_user} == {"wirestream", "wirestream-sinks"}
    for user in users.values():
        assert user["metadata"]["namespace"] == "kafka"
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "wirestream"
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
        assert user["spec"]["authorization"]["type"] == "simple"
        acls = user["spec"]["authorization"]["acls"]
        for acl in acls:
            r = acl["resource"]
            assert r["type"] in ("topic", "group"), acl
            assert r["name"].startswith(("wire.", "wirestream-")) and r["name"] not in ("*", "wire", "wirestream"), acl
        assert not acl_operations(acls, "topic", "payments.orders")
        assert not acl_operations(acls, "group", "payments-oncall")
        assert not {"Alter", "AlterConfigs", "Delete", "All"} & {op for acl in acls for op in acl["operations"]}

    main = users["wirestream"]["spec"]["authorization"]["acls"]
    for topic in topics:
        assert {"Describe", "Read", "Write"} <= acl_operations(main, "topic", topic), topic
        assert "Create" not in acl_operations(main, "topic", topic), f"{topic} is a KafkaTopic: no need to create it"
    group = cm["WIRESTREAM_GROUP"]
    assert {"Create", "Describe", "Read", "Write"} <= acl_operations(main, "topic", changelog_topic(group))
    assert {"Describe", "Read"} <= acl_operations(main, "group", group)

    sinks = users["wirestream-sinks"]["spec"]["authorization"]["acls"]
    for topic in NOT_FOR_SINKS:
        assert acl_operations(sinks, "topic", topic) == set(), f"wirestream-sinks may use {topic}"
    assert set(OUTPUT_TOPICS) | set(DERIVED_TOPICS) | {STATS} == SINK_TOPICS
    for topic in SINK_TOPICS:
        assert acl_operations(sinks, "topic", topic) == {"Describe", "Read"}, topic
    assert acl_operations(sinks, "topic", DEAD_LETTER) == {"Describe", "Write"}
    # Literal topics: a wire.* topic added later is not the sinks' until named.
    assert all(a["resource"].get("patternType", "literal") == "literal" for a in sinks
               if a["resource"]["type"] == "topic"), sinks
    assert not acl_operations(sinks, "topic", "wire.future")
    for g in SINK_GROUPS:
        assert {"Describe", "Read"} <= acl_operations(sinks, "group", g), g
    assert not acl_operations(sinks, "group", group), "the sinks may not join the processors' group"
    assert not acl_operations(sinks, "topic", changelog_topic(group))
