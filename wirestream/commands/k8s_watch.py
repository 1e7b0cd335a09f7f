"""``wirestream k8s-watch``: Kubernetes identities (IP -> pod, service, node) onto Kafka."""

from __future__ import annotations

import argparse
import os
import sys

from wirestream.commands import common
from wirestream.config import Settings
from wirestream.errors import WirestreamError


def add_parser(sub: common.Subparsers, defaults: Settings) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "k8s-watch", help="publish Kubernetes identities (IP -> pod, service, node) and NetworkPolicies",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
List and watch pods, services, EndpointSlices and nodes (and the ReplicaSets and Jobs
that own pods) and publish, for every pod IP, ClusterIP and node IP, what it is:
pod, namespace, labels, workload (Deployment through its ReplicaSet, StatefulSet,
DaemonSet, CronJob through its Job), node and zone; a ClusterIP's service and backing
pods. Topic wire.k8s-identity is compacted and keyed by IP; a deleted pod's last record
says when it ended, then a tombstone follows. The processors read it as a table and fill
the client_/server_ pod, namespace, workload, node, zone and server_service of every
record, for the time of the record (pod IPs are reused).

Also NetworkPolicies and namespaces' labels, on wire.k8s-policies (compacted, keyed by
namespace/name or namespace): the processors evaluate each connection and flow against
them (policy_verdict, policy_names; a policy_violation alert for traffic that got
through although denied: docs/kubernetes.md).

Survives watch expiry (410 Gone: relist), API server restarts and network errors
(exponential backoff, relist, deletions missed meanwhile are published). Needs list and
watch on those resources and on networkpolicies and namespaces (deploy/kustomize/base has
the ClusterRole; without the latter two it says so and publishes identities only).""",
        epilog="""\
examples:
  wirestream k8s-watch                                  # in a pod: its service account
  wirestream k8s-watch --kubeconfig ~/.kube/config --cluster-name prod
  wirestream k8s-watch --once                           # publish the current state and exit""",
    )
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG") or None, metavar="FILE",
                   help="kubeconfig (default: $KUBECONFIG, else in-cluster, else ~/.kube/config)")
    p.add_argument("--cluster-name", default="", metavar="NAME", help="recorded as the source of each identity")
    p.add_argument("--once", action="store_true", help="exit once the current state is published")
    common.add_kafka_args(p, defaults, required=True, hint="; start them with 'wirestream broker'")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from wirestream.broker import ensure_topics
    from wirestream.codec import AvroCodec
    from wirestream.producers.k8s_watch import IdentityPublisher, load_api_client, run_watcher
    from wirestream.topics import K8S_IDENTITY

    ensure_topics(args.bootstrap, [K8S_IDENTITY], args.partitions, replication_factor=args.replication_factor)
    try:
        api = load_api_client(args.kubeconfig)
    except Exception as exc:  # no kubeconfig, no in-cluster service account
        raise WirestreamError(f"no Kubernetes API to watch: {exc}") from None
    source = args.cluster_name or api.configuration.host
    publisher = IdentityPublisher(args.bootstrap, AvroCodec(args.registry), source)
    stop = common.StopOnSignal()

    def synced() -> None:
        print(f"wirestream k8s-watch: {source}: synced; {dict(publisher.published)} published",
              file=sys.stderr, flush=True)
        if args.once:
            stop.asked = True

    run_watcher(api, publisher, stop=stop, on_synced=synced)
    if args.once:
        # The kubernetes client's watch threads may still sit in a streaming read; torn
        # down by interpreter finalisation they abort the process now and then (SIGABRT
        # after "synced", about 1 run in 10). Everything is published and flushed: leave.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(common.EXIT_OK)
    return common.EXIT_OK
