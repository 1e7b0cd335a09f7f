"""The watcher's ``410 Gone`` relist, provoked for real (producers/k8s_watch.py).

The claim: a watch that ends resumes from the last resourceVersion it saw; when that
version is too old (``410 Gone``: compacted, or the API server restarted and lost its
watch cache) the watcher relists, publishes what changed while it was away, and reports
objects missing from the new list as deleted.

How a real 410 comes about here (a real kube-apiserver and etcd, tests/k8s_cluster.py):
``wirestream k8s-watch`` runs as a separate process and is paused (SIGSTOP: a process
descheduled, a VM frozen) for longer than its watches last, so the API server ends each
watch while the watcher cannot resume it. Meanwhile a pod is deleted, one is created and
one relabelled, and the API server is restarted: its new watch cache starts at etcd's
current revision, after every version the watcher has seen. When the watcher resumes it
watches from its old versions and the API server answers each with 410 "too old resource
version". Nothing in the watcher is replaced: its watches only time out sooner
(``WATCH_TIMEOUT_S`` 2 s instead of 60, so the test takes seconds), and its per-kind
counters are printed at exit (a subclass that only records the instances).

Then: the relist counters say 410 (and no watch error), the deletion was noticed in the
diff (``deleted_while_away``), and ``wire.k8s-identity`` carries the three changes.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from helpers import needs
from k8s_cluster import ApiServer, apiserver_unavailable

from wirestream.codec import AvroCodec
from wirestream.reader import TopicReader
from wirestream.topics import K8S_IDENTITY

UNAVAILABLE = apiserver_unavailable()
pytestmark = needs(UNAVAILABLE and f"no Kubernetes API server: {UNAVAILABLE}")

NS = "relist"
KEPT_IP, GONE_IP, NEW_IP = "10.245.1.5", "10.245.1.6", "10.245.1.7"
WATCH_TIMEOUT_S = 2

# `wirestream k8s-watch` with short watches, printing each kind's counters at exit.
WATCHER = textwrap.dedent(f"""
    import atexit, json, sys
    import wirestream.producers.k8s_watch as k8s_watch
    from wirestream.cli import main

    k8s_watch.WATCH_TIMEOUT_S = {WATCH_TIMEOUT_S}
    watches = []

    class Recorded(k8s_watch.ResourceWatch):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            watches.append(self)

    k8s_watch.ResourceWatch = Recorded
    atexit.register(lambda: print("counters " + json.dumps({{w.kind: dict(w.counters) for w in watches}}),
                                  file=sys.stderr, flush=True))
    sys.exit(main(["k8s-watch", *sys.argv[1:]]))
""")


def _rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(int(ts), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pod(core, name: str, ip: str, labels: dict[str, str]):
    """A running pod with its IP, as a kubelet would leave it (there is no kubelet here)."""
    pod = core.create_namespaced_pod(NS, {
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]}})
    core.patch_namespaced_pod_status(name, NS, {"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": _rfc3339(time.time())}})
    return pod


def _identities(broker, registry, until, timeout: float = 30.0) -> dict[str, list[dict]]:
    """wire.k8s-identity records by IP, from the beginning, read until ``until(by_ip)``."""
    by_ip: dict[str, list[dict]] = {}
    deadline = time.monotonic() + timeout
    with TopicReader(broker.bootstrap, AvroCodec(registry.url), [K8S_IDENTITY]) as reader:
        while not until(by_ip):
            for m in reader.poll(0.3):
                if m.record is not None and m.record["source"] == "relist-test":
                    by_ip.setdefault(m.record["ip"], []).append(m.record)
            assert time.monotonic() < deadline, f"not published within {timeout} s: {by_ip}"
    return by_ip


def test_a_watch_resumed_from_a_version_gone_relists_and_publishes_what_changed(broker, registry) -> None:
    from kubernetes import client, config

    with ApiServer() as cluster:
        core = client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
        core.create_namespace({"metadata": {"name": NS}})
        kept = _pod(core, "kept", KEPT_IP, {"app": "kept", "rev": "1"})
        gone = _pod(core, "gone", GONE_IP, {"app": "gone"})

        env = {**os.environ, "WIRESTREAM_BOOTSTRAP": broker.bootstrap, "WIRESTREAM_REGISTRY": registry.url}
        watcher = subprocess.Popen([sys.executable, "-c", WATCHER, "--kubeconfig", cluster.kubeconfig,
                                    "--cluster-name", "relist-test"],
                                   env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            for line in watcher.stderr:
                if "synced" in line:
                    break
            else:
                raise AssertionError(f"watcher ended: exit {watcher.wait()}")
            _identities(broker, registry, lambda by_ip: KEPT_IP in by_ip and GONE_IP in by_ip)

            os.kill(watcher.pid, signal.SIGSTOP)
            try:
                # Every watch the watcher had open ends (server side) while it cannot resume.
                time.sleep(WATCH_TIMEOUT_S + 2)
                core.delete_namespaced_pod("gone", NS, grace_period_seconds=0)
                new = _pod(core, "new", NEW_IP, {"app": "new"})
                core.patch_namespaced_pod("kept", NS, {"metadata": {"labels": {"rev": "2"}}})
                # A new watch cache, starting after every version the watcher has seen.
                cluster.restart_apiserver()
            finally:
                os.kill(watcher.pid, signal.SIGCONT)

            def complete(by_ip: dict[str, list[dict]]) -> bool:
                return (any(r["uid"] == new.metadata.uid for r in by_ip.get(NEW_IP, []))
                        and any(r["uid"] == gone.metadata.uid and r["deleted_ts_us"] for r in by_ip.get(GONE_IP, []))
                        and any(r["labels"].get("rev") == "2" for r in by_ip.get(KEPT_IP, [])))

            by_ip = _identities(broker, registry, complete)
        finally:
            if watcher.poll() is None:
                os.kill(watcher.pid, signal.SIGCONT)
                watcher.terminate()
            _, err = watcher.communicate(timeout=30)

    (line,) = [ln for ln in err.splitlines() if ln.startswith("counters ")]
    counters = json.loads(line.split(" ", 1)[1])
    pods = counters["Pod"]
    # the watcher was told 410 and relisted (not an error path: those log "retrying")
    assert pods.get("relists_410", 0) >= 1, counters
    assert pods.get("watch_errors", 0) == 0, (counters, err)
    assert pods["lists"] >= 2, counters
    # the pod deleted while it was away is found by the relist's diff
    assert pods.get("deleted_while_away") == 1, counters
    assert "retrying" not in err, err

    (new_record,) = [r for r in by_ip[NEW_IP] if r["uid"] == new.metadata.uid]
    assert (new_record["pod"], new_record["namespace"]) == ("new", NS)
    assert by_ip[KEPT_IP][-1]["uid"] == kept.metadata.uid and by_ip[KEPT_IP][-1]["labels"]["rev"] == "2"
    assert by_ip[GONE_IP][-1]["pod"] == "gone"
