"""The ``wirestream`` command.

Every sub-command has ``--help`` with examples. Errors are one line on stderr naming the
input and the problem, with a non-zero exit code; no tracebacks for expected failures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from wirestream.config import Settings
from wirestream.errors import UsageError, WirestreamError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_DESCRIPTION = """\
wirestream: network observability as streams on Kafka.

Packets (capture files, or live capture) are published to Kafka in batches; processors
join them into TCP connection records (and, as they are added, L7 transactions, DNS,
TLS, service windows and alerts) on output topics that anyone can subscribe to.

With no --bootstrap, wirestream starts an embedded Kafka-protocol broker and schema
registry on 127.0.0.1 for the duration of the command.
"""

_EPILOG = """\
examples:
  wirestream analyze capture.pcapng                 # whole pipeline, summary tables
  wirestream analyze a.pcap b.pcap.gz --out out/    # also write out/wire.connections.jsonl ...
  wirestream broker                                 # embedded broker + registry, foreground
  wirestream produce pcap capture.pcap --bootstrap 127.0.0.1:9092 --registry http://127.0.0.1:8081
  wirestream process --bootstrap 127.0.0.1:9092 --registry http://127.0.0.1:8081
  wirestream tail wire.connections --bootstrap 127.0.0.1:9092 --registry http://127.0.0.1:8081

environment: WIRESTREAM_BOOTSTRAP, WIRESTREAM_REGISTRY, WIRESTREAM_PARTITIONS,
WIRESTREAM_GROUP, WIRESTREAM_IDLE_TIMEOUT set the defaults of the matching flags.
"""


def _add_kafka_args(p: argparse.ArgumentParser, defaults: Settings) -> None:
    g = p.add_argument_group("Kafka")
    g.add_argument("--bootstrap", default=defaults.bootstrap, metavar="HOST:PORT[,...]",
                   help="Kafka bootstrap servers (default: $WIRESTREAM_BOOTSTRAP, else start the embedded broker)")
    g.add_argument("--registry", default=defaults.registry, metavar="URL",
                   help="Confluent-compatible schema registry (default: $WIRESTREAM_REGISTRY, else serve one embedded)")
    g.add_argument("--partitions", type=int, default=defaults.partitions, metavar="N",
                   help="partitions for topics wirestream creates (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="wirestream", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"wirestream {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # analyze ------------------------------------------------------------------------
    p = sub.add_parser(
        "analyze", help="run the whole pipeline on capture files and print a summary",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Replay capture files (pcap or pcapng, optionally gzip-compressed) through Kafka and the
processors, wait until every packet has been processed, then print the connections
ranked by trouble, the HTTP transactions, DNS queries and TLS handshakes found in them,
and every stage's counters.

Link types: Ethernet (with 802.1Q/QinQ tags), Linux cooked v1/v2, raw IP, BSD null and
loopback. Connection records follow Wireshark's TCP analysis (see docs/records.md); L7
records are checked against tshark too (docs/l7.md).""",
        epilog="""\
examples:
  wirestream analyze tests/data/chrissanders/tcp_retransmissions.pcapng
  wirestream analyze big.pcap.gz --out results/ --workers 2
  wirestream analyze login.pcapng --no-redact --body-cap 0   # see credentials, skip bodies
  wirestream analyze capture.pcap --bootstrap kafka:9092 --registry http://registry:8081""",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="capture files to analyse")
    _add_pipeline_args(p, defaults)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    # capture ------------------------------------------------------------------------
    p = sub.add_parser(
        "capture", help="capture live traffic (eBPF, or AF_PACKET) through the whole pipeline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Capture this machine's traffic and run it through Kafka and the processors, like
analyze does with a file, until --duration, --count or Ctrl-C; then print the same
summary (connections, HTTP/DNS/TLS, services, counters).

Modes (--mode; `wirestream doctor` says which work here):
  ebpf       an eBPF socket filter on each packet ring (loopback duplicates and non-IP
             frames dropped in the kernel, snap length applied there), plus socket
             events from tracepoints on wire.sockets: TCP state changes, retransmissions,
             connect/accept/close with pid, process, cgroup -> container, netns. Connection
             records then carry client/server pid and process and kernel_retransmissions.
  af_packet  the same packet rings without eBPF: packets only, no process identity.
  auto       ebpf if possible, else af_packet, saying why in one line (the default).

Needs (root has them all):
  CAP_NET_RAW        packet sockets (both modes)
  CAP_BPF, CAP_PERFMON  loading the eBPF programs (or CAP_SYS_ADMIN on older kernels)
  CAP_NET_ADMIN      attaching the sock_ops program to the cgroup (segment counts)
  CAP_SYS_ADMIN      --netns (entering another network namespace)
Kernel: Linux >= 5.8 (BPF ring buffer) with BTF or a kernel header tree for bcc
(scripts/bcc-headers), tracefs mounted, tracepoints sock:inet_sock_set_state and
tcp:tcp_retransmit_skb; bcc from Debian's python3-bpfcc. Nothing else: no kprobes.

Loss is counted, never silent: frames the ring had no room for (ring_full), socket
events the BPF ring buffer had no room for (socket_events_lost) and waits on a slow
broker (backpressure_waits) are on wire.stats (stage producer.live) every 5 s and in
the summary. Memory is bounded by --ring-mb and the Kafka client's queue.""",
        epilog="""\
examples:
  sudo wirestream capture --duration 30                   # every interface, 30 s
  sudo wirestream capture --iface eth0 --out results/     # until Ctrl-C, JSONL files too
  sudo wirestream capture --netns blue --iface veth0 --count 100000
  sudo wirestream capture --mode af_packet --no-l7 --bootstrap kafka:9092 --registry http://registry:8081""",
    )
    _add_live_args(p)
    _add_pipeline_args(p, defaults)

    # broker -------------------------------------------------------------------------
    p = sub.add_parser("broker", help="run the embedded broker and schema registry in the foreground",
                       description="Start the embedded Kafka-protocol broker (tansu, in memory) and schema "
                                   "registry, print their addresses, and serve until Ctrl-C.")
    p.add_argument("--port", type=int, default=0, help="broker port (default: a free port)")
    p.add_argument("--registry-port", type=int, default=0, help="registry port (default: a free port)")
    p.add_argument("--partitions", type=int, default=defaults.partitions, metavar="N",
                   help="partitions of the topics it creates (default: %(default)s)")

    # produce ------------------------------------------------------------------------
    p = sub.add_parser("produce", help="publish packets to wire.packets",
                       description="Publish packets to wire.packets (batched, partitioned by connection).")
    psub = p.add_subparsers(dest="source", metavar="SOURCE")
    pp = psub.add_parser("pcap", help="replay capture files",
                         description="Replay capture files into wire.packets, then send end-of-input markers.")
    pp.add_argument("files", nargs="+", metavar="FILE")
    pp.add_argument("--snaplen", type=int, default=defaults.payload_snaplen, metavar="BYTES",
                    help="payload bytes kept per packet (default: %(default)s)")
    _add_kafka_args(pp, defaults)
    pp = psub.add_parser(
        "live", help="capture live traffic into wire.packets and wire.sockets",
        description="Capture live traffic (as `wirestream capture` does: eBPF or AF_PACKET, see its --help) "
                    "and publish it for processors running elsewhere, until SIGTERM/Ctrl-C, --duration or "
                    "--count; then send end-of-input markers. This is what the capture DaemonSet runs.")
    _add_live_args(pp)
    pp.add_argument("--snaplen", type=int, default=defaults.payload_snaplen, metavar="BYTES",
                    help="payload bytes kept per packet (default: %(default)s)")
    pp.add_argument("--stats-interval", type=float, default=10.0, metavar="SECONDS",
                    help="publish capture counters on wire.stats this often (default: %(default)s)")
    pp.add_argument("--source-name", default=os.environ.get("WIRESTREAM_SOURCE_NAME") or os.uname().nodename,
                    help="name of this source in the records (default: $WIRESTREAM_SOURCE_NAME, else the host name)")
    _add_kafka_args(pp, defaults)

    # process ------------------------------------------------------------------------
    p = sub.add_parser(
        "process", help="run a processor worker (Faust) against Kafka",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Run one processor worker: consume wire.packets, publish wire.connections,
wire.transactions, wire.dns, wire.tls, and, from those, per-service windows on
wire.service-metrics and detections on wire.alerts; counters on wire.stats. Start
several with the same --group to share the partitions.""",
    )
    p.add_argument("--group", default=defaults.group, help="consumer group / Faust app id (default: %(default)s)")
    p.add_argument("--role", choices=("all", "packets", "windows"), default="all",
                   help="packets: the packet processors only; windows: the per-service windows "
                        "only (give it a --group of its own); all: both in one process "
                        "(default: %(default)s)")
    p.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout_s, metavar="SECONDS",
                   help="idle timeout in capture time (default: %(default)s)")
    p.add_argument("--interim", type=float, default=0.0, metavar="SECONDS",
                   help="emit interim records for connections open longer than this (default: off)")
    _add_l7_args(p, defaults)
    _add_window_args(p, defaults)
    p.add_argument("--plugin", action="append", default=[], metavar="NAME",
                   help="also run this processor plugin in the worker (repeatable; `wirestream plugin list`)")
    p.add_argument("--only-source-prefix", default="", help=argparse.SUPPRESS)
    p.add_argument("--response-body-cap", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--loglevel", default="warning", help="worker log level (default: %(default)s)")
    _add_kafka_args(p, defaults)

    # percentiles --------------------------------------------------------------------
    p = sub.add_parser(
        "percentiles", help="merge a service's windows and print its percentiles",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Read wire.service-metrics, merge the t-digests of every window of a service that lies in
[--from, --to) and print P50/P90/P99 of handshake RTT and request latency, with the
summed counts. Windows are merged across sources and processor replicas too.""",
        epilog="""\
examples:
  wirestream percentiles --service 10.0.0.5:80
  wirestream percentiles --service shop/checkout --from 2026-11-27T10:00:00 --to 2026-11-27T11:00:00
  wirestream percentiles --service 10.0.0.5:80 --from 1795737470 --json""",
    )
    p.add_argument("--service", required=True, help="service name (namespace/name) or server ip:port")
    p.add_argument("--from", dest="from_ts", type=_timestamp_us, metavar="TIME",
                   help="windows starting at or after this capture time (ISO 8601 UTC, or Unix seconds)")
    p.add_argument("--to", dest="to_ts", type=_timestamp_us, metavar="TIME",
                   help="windows ending at or before this capture time")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS",
                   help="stop reading after this long without a new record (default: %(default)s)")
    _add_kafka_args(p, defaults)

    # doctor -------------------------------------------------------------------------
    p = sub.add_parser(
        "doctor", help="what this machine offers for live capture (eBPF, AF_PACKET), and why not",
        description="Check the kernel (BTF, tracefs), bcc, kernel headers, capabilities and raw "
                    "sockets, one line each with what to fix, then say which capture modes work. "
                    "By default it proves eBPF by compiling and loading a tiny socket filter.",
    )
    p.add_argument("--no-probe", action="store_true", help="do not compile and load a test BPF program")
    p.add_argument("--json", action="store_true", help="print JSON")

    # k8s-watch ----------------------------------------------------------------------
    p = sub.add_parser(
        "k8s-watch", help="publish Kubernetes identities (IP -> pod, service, node) to wire.k8s-identity",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
List and watch pods, services, EndpointSlices and nodes (and the ReplicaSets and Jobs
that own pods) and publish, for every pod IP, ClusterIP and node IP, what it is:
pod, namespace, labels, workload (Deployment through its ReplicaSet, StatefulSet,
DaemonSet, CronJob through its Job), node and zone; a ClusterIP's service and backing
pods. Topic wire.k8s-identity is compacted and keyed by IP; a deleted pod's last record
says when it ended, then a tombstone follows. The processors read it as a table and fill
the client_/server_ pod, namespace, workload, node and server_service of every record,
for the time of the record (pod IPs are reused).

Survives watch expiry (410 Gone: relist), API server restarts and network errors
(exponential backoff, relist, deletions missed meanwhile are published). Needs list and
watch on those resources (deploy/kustomize/base has the ClusterRole).""",
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
    _add_kafka_args(p, defaults)

    # replay -------------------------------------------------------------------------
    p = sub.add_parser(
        "replay", help="reprocess a time range of wire.packets into fresh output (backfill)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Read again what the producers published to wire.packets (and wire.sockets) between
--from and --to, and run it through the processors' pipeline in this process, with a
consumer of its own (the live processors' offsets are untouched), into the usual output
topics. Output keys are deterministic and the values those of the first run for the same
packets: a downstream that keeps one value per key ends with each record once. Use the
same L7 options as the live processors to get the same records.""",
        epilog="""\
examples:
  wirestream replay --from 2026-11-27T06:00:00Z --to 2026-11-27T07:00:00Z
  wirestream replay --from 1795738000 --source node-a-   # one producer's sources only""",
    )
    p.add_argument("--topic", default="wire.packets", choices=("wire.packets",),
                   help="the raw topic to replay (wire.sockets comes with it)")
    p.add_argument("--from", dest="from_ts", type=_timestamp_us, metavar="TIME",
                   help="published at or after (ISO 8601 or Unix seconds; default: the oldest kept)")
    p.add_argument("--to", dest="to_ts", type=_timestamp_us, metavar="TIME",
                   help="published before (default: now)")
    p.add_argument("--source", default="", metavar="PREFIX", help="only sources whose id starts with this")
    _add_l7_args(p, defaults)
    _add_kafka_args(p, defaults)

    # sink ---------------------------------------------------------------------------
    p = sub.add_parser("sink", help="feed output topics to a destination (data lake, ...)",
                       description="Consume output topics and write them to a destination, at least once "
                                   "(offsets committed after each successful write), each record once.")
    ssub = p.add_subparsers(dest="sink", metavar="DESTINATION")
    sp = ssub.add_parser(
        "parquet", help="Parquet files by topic/date/hour (a data lake; query with DuckDB, Spark, ...)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Write output topics as Parquet files DIR/<topic>/date=YYYY-MM-DD/hour=HH/part-*.parquet
(the record's own time, UTC), with the topic's schema plus _key and _fingerprint.
Records delivered twice (at-least-once, a replay) are written once; undecodable
messages go to wire.dead-letter; a destination that fails is retried with backoff while
nothing more is consumed. Runs until Ctrl-C/SIGTERM.""",
        epilog="""\
examples:
  wirestream sink parquet --out /data/wirestream
  duckdb -c "SELECT status, count(*) FROM read_parquet('/data/wirestream/wire.transactions/*/*/*.parquet') GROUP BY 1"
""")
    sp.add_argument("--out", required=True, metavar="DIR", help="root directory of the files")
    sp.add_argument("--topics", default="wire.connections,wire.transactions,wire.dns,wire.tls,"
                                        "wire.service-metrics,wire.alerts",
                    help="comma-separated (default: every output topic)")
    sp.add_argument("--group", default="wirestream-sink-parquet", help="consumer group (default: %(default)s)")
    sp.add_argument("--flush-seconds", type=float, default=30.0, metavar="S",
                    help="write at least this often (default: %(default)s)")
    _add_kafka_args(sp, defaults)
    sp = ssub.add_parser(
        "siem", help="alerts (or any topic) as ECS JSON or CEF, over syslog TCP/UDP or to an HEC collector",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Send records to a SIEM: Elastic Common Schema JSON (--format ecs) or ArcSight CEF
(--format cef), over syslog (RFC 5424, TCP with one message per line, or UDP) or to a
Splunk HEC-style HTTP collector. At least once: offsets are committed after a batch is
sent; a destination that fails is retried with backoff.""",
        epilog="""\
examples:
  wirestream sink siem --url syslog+tcp://siem.internal:514 --format cef
  wirestream sink siem --url syslog+udp://10.0.0.5:514 --format ecs --topics wire.alerts,wire.tls
  wirestream sink siem --url https://splunk:8088/services/collector/event --token $HEC_TOKEN""")
    sp.add_argument("--url", required=True, help="syslog+tcp://HOST:PORT, syslog+udp://HOST:PORT or http(s)://...")
    sp.add_argument("--format", dest="fmt", choices=("ecs", "cef"), default="ecs", help="default: %(default)s")
    sp.add_argument("--topics", default="wire.alerts", help="comma-separated (default: %(default)s)")
    sp.add_argument("--token", default=os.environ.get("WIRESTREAM_HEC_TOKEN", ""),
                    help="HEC token (default: $WIRESTREAM_HEC_TOKEN)")
    sp.add_argument("--group", default="wirestream-sink-siem", help="consumer group (default: %(default)s)")
    _add_kafka_args(sp, defaults)
    sp = ssub.add_parser(
        "prometheus", help="per-service series for Prometheus on /metrics",
        description="Serve per-service series (requests, errors, retransmission ratio, latency and handshake "
                    "quantiles) and alert counts from wire.service-metrics and wire.alerts on an HTTP "
                    "endpoint for Prometheus to scrape, with a cap on the number of service label values.")
    sp.add_argument("--listen", default="0.0.0.0:9108", metavar="HOST:PORT", help="default: %(default)s")
    sp.add_argument("--max-services", type=int, default=500, metavar="N",
                    help="service label values kept; further services go to service=\"other\" (default: %(default)s)")
    sp.add_argument("--group", default="wirestream-sink-prometheus", help="consumer group (default: %(default)s)")
    _add_kafka_args(sp, defaults)

    # plugin -------------------------------------------------------------------------
    p = sub.add_parser("plugin", help="list and run installed processor plugins",
                       description="Processor plugins are Python packages that register a class in the "
                                   "'wirestream.processors' entry point group (see wirestream/plugins.py and "
                                   "examples/slow_requests).")
    plsub = p.add_subparsers(dest="plugin_command", metavar="ACTION")
    plsub.add_parser("list", help="installed plugins, with their inputs and outputs")
    pr = plsub.add_parser("run", help="run a plugin (a consumer group named after it) until Ctrl-C")
    pr.add_argument("name", help="the plugin's entry point name")
    pr.add_argument("--group", default=None, help="consumer group (default: wirestream-plugin-NAME)")
    _add_kafka_args(pr, defaults)

    # tail ---------------------------------------------------------------------------
    p = sub.add_parser("tail", help="decode a topic and print JSON lines",
                       description="Decode a wirestream topic (Avro, Confluent wire format) and print one "
                                   "JSON object per record.")
    p.add_argument("topic", metavar="TOPIC", help="e.g. wire.connections, wire.stats")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest record (default: new records only)")
    p.add_argument("-n", "--max", type=int, default=0, metavar="N", help="stop after N records")
    p.add_argument("--where", action="append", default=[], metavar="COND",
                   help="only records where FIELD OP VALUE holds, OP one of == != >= <= > < ~ (regular "
                        "expression); repeatable, all must hold (e.g. --where 'status>=500' --where 'path~^/api')")
    p.add_argument("--service", metavar="NAME",
                   help="only records of this service (namespace/name, or the server's ip:port)")
    p.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                   help="stop after this long without a record (default: follow forever)")
    _add_kafka_args(p, defaults)
    return parser


def _add_live_args(p: argparse.ArgumentParser) -> None:
    """What to capture live, and until when (capture, produce live)."""
    p.add_argument("--iface", "-i", action="append", default=[], metavar="NAME",
                   help="interface to capture on (repeatable; default: every interface)")
    p.add_argument("--netns", metavar="NAME|PATH",
                   help="capture inside this network namespace (a name from `ip netns`, or a path "
                        "such as /proc/PID/ns/net)")
    p.add_argument("--mode", choices=("auto", "ebpf", "af_packet"), default="auto",
                   help="capture mode (default: %(default)s)")
    p.add_argument("--no-socket-events", dest="socket_events", action="store_false",
                   help="eBPF mode: packets only, no wire.sockets")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    p.add_argument("--count", type=int, default=None, metavar="N", help="stop after N TCP/UDP packets")
    p.add_argument("--ring-mb", type=int, default=32, metavar="MB",
                   help="packet ring memory, shared among the interfaces (default: %(default)s)")


def _capture_options(args: argparse.Namespace, stats_interval_s: float = 5.0) -> Any:
    from wirestream.producers.live_capture import CaptureOptions

    return CaptureOptions(
        interfaces=args.iface, netns=args.netns, payload_snaplen=args.snaplen, mode=args.mode,
        socket_events=args.socket_events, ring_mb=args.ring_mb, duration_s=args.duration,
        max_packets=args.count, stats_interval_s=stats_interval_s)


def _add_pipeline_args(p: argparse.ArgumentParser, defaults: Settings) -> None:
    """Options of the commands that run the whole pipeline and print a summary
    (analyze, capture)."""
    p.add_argument("--out", metavar="DIR", help="also write every output topic to DIR/<topic>.jsonl")
    p.add_argument("--workers", type=_at_least_one, default=None, metavar="N",
                   help="processor worker processes (default: one per CPU, at most one per "
                        "partition of wire.packets)")
    p.add_argument("--top", type=int, default=15, metavar="N",
                   help="rows in each table: connections, HTTP, DNS, TLS (default: %(default)s)")
    p.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout_s, metavar="SECONDS",
                   help="close a connection after this much capture time without packets (default: %(default)s)")
    p.add_argument("--snaplen", type=int, default=defaults.payload_snaplen, metavar="BYTES",
                   help="payload bytes kept per packet for L7 analysis (default: %(default)s)")
    _add_l7_args(p, defaults)
    _add_window_args(p, defaults)
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")
    _add_kafka_args(p, defaults)


def _add_window_args(p: argparse.ArgumentParser, defaults: Settings) -> None:
    g = p.add_argument_group("service windows and detections (wire.service-metrics, wire.alerts)")
    g.add_argument("--no-windows", dest="windows", action="store_false", default=defaults.windows,
                   help="no per-service windows and no detections")
    g.add_argument("--window", type=float, default=defaults.window_s, metavar="SECONDS",
                   help="tumbling window length, in capture time (default: %(default)s)")
    g.add_argument("--lateness", type=float, default=defaults.lateness_s, metavar="SECONDS",
                   help="how long after its end a window still takes records in; must cover "
                        "the 10 s a closed connection is held back (default: %(default)s)")
    g.add_argument("--alert-threshold", action="append", default=list(defaults.alert_thresholds),
                   metavar="NAME=VALUE",
                   help="change a detection threshold, e.g. errors_5xx=5 (repeatable; names in "
                        "docs/windows.md)")


def _window_options(args: argparse.Namespace) -> Any:
    from wirestream.processors.detections import Thresholds
    from wirestream.processors.service_windows import WindowOptions

    try:
        thresholds = Thresholds.parse(args.alert_threshold)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return WindowOptions(length_us=int(args.window * 1e6), lateness_us=int(args.lateness * 1e6),
                         thresholds=thresholds)


def _timestamp_us(text: str) -> int:
    """Unix seconds (``1795737470.5``) or ISO 8601 (UTC unless it says otherwise)."""
    import datetime

    try:
        return int(float(text) * 1_000_000)
    except ValueError:
        pass
    try:
        t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (ISO 8601 or Unix seconds)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)
    return int(t.timestamp() * 1_000_000)


def _at_least_one(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {n}")
    return n


def _add_l7_args(p: argparse.ArgumentParser, defaults: Settings) -> None:
    g = p.add_argument_group("L7 analysis (HTTP/1.x, DNS, TLS; protocols recognised from the bytes)")
    g.add_argument("--no-l7", dest="l7", action="store_false", default=defaults.l7,
                   help="TCP connections only: no wire.transactions, wire.dns, wire.tls")
    g.add_argument("--no-redact", dest="redact", action="store_false", default=defaults.redact,
                   help="keep credentials, cookies, tokens and card numbers in clear "
                        "(only for a trusted pipeline; default: masked)")
    g.add_argument("--body-cap", type=int, default=defaults.body_cap, metavar="BYTES",
                   help="HTTP body bytes kept per message; sizes are always recorded "
                        "(default: %(default)s)")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("wirestream")
    except Exception:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    # SIGTERM behaves like Ctrl-C: the context managers stop what was started.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"wirestream {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WirestreamError as exc:
        print(f"wirestream: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("wirestream: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class _StopOnSignal:
    """For long-running commands (capture, produce live, k8s-watch, sinks, plugins):
    SIGINT/SIGTERM ask them to stop cleanly; calling it says whether one has.
    ``second_interrupts``: a second signal interrupts the clean-up too."""

    def __init__(self, second_interrupts: bool = False) -> None:
        self.asked = False
        self.second_interrupts = second_interrupts
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.asked and self.second_interrupts:
            raise KeyboardInterrupt
        self.asked = True

    def __call__(self) -> bool:
        return self.asked


def _settings(args: argparse.Namespace) -> Settings:
    s = Settings.from_env()
    s.bootstrap = args.bootstrap or None
    s.registry = args.registry or None
    s.partitions = args.partitions
    if hasattr(args, "idle_timeout"):
        s.idle_timeout_s = args.idle_timeout
    if hasattr(args, "snaplen"):
        s.payload_snaplen = args.snaplen
    if hasattr(args, "l7"):
        s.l7, s.redact, s.body_cap = args.l7, args.redact, args.body_cap
    if hasattr(args, "window"):
        _window_options(args)  # a bad threshold fails here, before anything starts
        s.window_s, s.lateness_s, s.alert_thresholds = args.window, args.lateness, args.alert_threshold
        s.windows = args.windows
    return s


def cmd_analyze(args: argparse.Namespace) -> int:
    from wirestream.analyze import analyze
    from wirestream.sinks import console
    from wirestream.sinks.jsonl import write_jsonl

    # analyze holds every output record it reads (hundreds of thousands of small dicts):
    # with the default thresholds the cyclic GC rescans them over and over (~30 % of the
    # decoding time). They hold no cycles; collect rarely.
    gc.set_threshold(50_000, 20, 100)
    settings = _settings(args)
    show_progress = not args.no_progress and not args.json and sys.stderr.isatty()
    with console.progress_bars(enabled=show_progress) as progress:
        result = analyze(args.files, settings, workers=args.workers, progress=progress,
                         keep_bodies=bool(args.out))
    for err in result.failed:
        print(f"wirestream: error: {err}", file=sys.stderr)
    if args.out:
        write_jsonl(args.out, result.records)
    if args.json:
        json.dump(console.summary_json(result), sys.stdout, indent=2)
        print()
    else:
        console.print_summary(result, top=args.top, out_dir=args.out)
    return EXIT_ERROR if result.failed else EXIT_OK


def cmd_capture(args: argparse.Namespace) -> int:
    from wirestream.capture import capture
    from wirestream.sinks import console
    from wirestream.sinks.jsonl import write_jsonl

    gc.set_threshold(50_000, 20, 100)  # as analyze: many small records, no cycles
    settings = _settings(args)
    options = _capture_options(args)
    def notice(live: Any, phase: str) -> None:
        if phase == "opened" and live.fallback_reason:
            what = "AF_PACKET capture, no socket events" if live.mode == "af_packet" else "packets only"
            print(f"wirestream capture: {what}: {live.fallback_reason}", file=sys.stderr)
        if phase == "capturing":
            print(f"wirestream capture: capturing on {live.rings_text()} ({live.mode}); Ctrl-C to stop",
                  file=sys.stderr, flush=True)

    # The first Ctrl-C (or SIGTERM) ends the capture; the pipeline then finishes what was
    # captured. A second one interrupts that too.
    stop = _StopOnSignal(second_interrupts=True)
    result = capture(options, settings, workers=args.workers, stop=stop,
                     notice=notice, keep_bodies=bool(args.out))
    if args.out:
        write_jsonl(args.out, result.records)
    if args.json:
        json.dump(console.summary_json(result), sys.stdout, indent=2)
        print()
    else:
        console.print_summary(result, top=args.top, out_dir=args.out)
    return EXIT_OK


def cmd_broker(args: argparse.Namespace) -> int:
    from wirestream.broker import EmbeddedBroker, ensure_topics
    from wirestream.registry import EmbeddedSchemaRegistry
    from wirestream.topics import ALL_TOPICS

    with EmbeddedBroker(port=args.port or None) as broker, \
            EmbeddedSchemaRegistry(port=args.registry_port) as registry:
        ensure_topics(broker.bootstrap, ALL_TOPICS, args.partitions)
        print(f"broker:   {broker.bootstrap}")
        print(f"registry: {registry.url}")
        print(f"export WIRESTREAM_BOOTSTRAP={broker.bootstrap} WIRESTREAM_REGISTRY={registry.url}")
        print("serving until Ctrl-C", flush=True)
        while True:
            time.sleep(3600)


def cmd_produce(args: argparse.Namespace) -> int:
    from wirestream.broker import partition_count
    from wirestream.errors import CaptureFileError
    from wirestream.producers.pcap_replay import replay_capture
    from wirestream.producers.publisher import PacketBatchPublisher
    from wirestream.runtime import Runtime
    from wirestream.topics import PACKETS

    if args.source == "live":
        return _produce_live(args)
    if args.source != "pcap":
        print("wirestream: error: choose a source: wirestream produce pcap FILE... | produce live", file=sys.stderr)
        return EXIT_USAGE
    settings = _settings(args)
    failed = 0
    with Runtime(settings) as rt:
        if rt.embedded_broker is not None:
            print(f"wirestream: note: embedded broker at {rt.bootstrap} stops when this command ends",
                  file=sys.stderr)
        partitions = partition_count(rt.bootstrap, PACKETS)
        for path in args.files:
            source_id = f"{os.uname().nodename}-{os.getpid()}-{time.time_ns()}"
            publisher = PacketBatchPublisher(rt.bootstrap, rt.codec, partitions, source_id, path)
            try:
                r = replay_capture(path, publisher, settings.payload_snaplen)
            except CaptureFileError as exc:
                print(f"wirestream: error: {exc}", file=sys.stderr)
                failed += 1
                continue
            dropped = ", ".join(f"{k}={v}" for k, v in sorted(r.dropped.items())) or "none"
            print(f"{path}: {r.frames} frames, {r.packets} packets published as source {source_id}; "
                  f"not published: {dropped}")
    return EXIT_ERROR if failed else EXIT_OK


def _produce_live(args: argparse.Namespace) -> int:
    if not _kafka_given(args, "produce live"):
        return EXIT_USAGE
    from wirestream.broker import ensure_topics, partition_count
    from wirestream.codec import AvroCodec
    from wirestream.producers.live_capture import open_capture, run_capture
    from wirestream.topics import PACKETS, SOCKETS, STATS

    live = open_capture(_capture_options(args, args.stats_interval))
    if live.fallback_reason:
        print(f"wirestream produce live: {live.mode}: {live.fallback_reason}", file=sys.stderr)
    ensure_topics(args.bootstrap, [PACKETS, SOCKETS, STATS], args.partitions)
    codec = AvroCodec(args.registry)
    partitions = partition_count(args.bootstrap, PACKETS)
    source_id = f"{args.source_name}-{os.getpid()}-{time.time_ns()}"
    publisher, socket_publisher = live.publishers(args.bootstrap, codec, partitions, source_id,
                                                  f"live {args.source_name}")
    stop = _StopOnSignal()
    print(f"wirestream produce live: capturing on {live.rings_text()} ({live.mode}) as source {source_id}",
          file=sys.stderr, flush=True)
    try:
        r = run_capture(live, publisher, socket_publisher, stop=stop)
    finally:
        live.close()
    dropped = ", ".join(f"{k}={v}" for k, v in sorted(r.dropped.items())) or "none"
    print(f"{r.frames} frames, {r.packets} packets published; dropped: {dropped}")
    return EXIT_OK


def _kafka_given(args: argparse.Namespace, command: str, hint: str = "") -> bool:
    """For commands that need an existing Kafka and registry: False (after saying so)
    when they were not given; else True once the broker answers (BrokerUnreachable if not)."""
    if not args.bootstrap or not args.registry:
        print(f"wirestream: error: {command} needs --bootstrap and --registry (or WIRESTREAM_BOOTSTRAP and "
              f"WIRESTREAM_REGISTRY){hint}", file=sys.stderr)
        return False
    from wirestream.broker import check_reachable

    check_reachable(args.bootstrap)
    return True


def cmd_process(args: argparse.Namespace) -> int:
    from wirestream.processors.app import create_app, run_worker

    if not _kafka_given(args, "process", "; start them with 'wirestream broker'"):
        return EXIT_USAGE
    from wirestream.broker import ensure_topics, partition_count
    from wirestream.processors.app import changelog_topic
    from wirestream.processors.l7.base import L7Options
    from wirestream.topics import ALL_TOPICS, OBSERVATIONS, PACKETS, SOCKETS

    # Missing topics are created (an operator's existing ones are left as they are).
    ensure_topics(args.bootstrap, ALL_TOPICS, args.partitions)
    if args.plugin:
        from wirestream.plugins import load

        for name in args.plugin:  # a plugin's own topics: ours to create too
            ensure_topics(args.bootstrap, list(load(name).outputs), args.partitions)
    packet_partitions = partition_count(args.bootstrap, PACKETS)
    if args.role != "windows":
        # The packet agent joins wire.sockets to wire.packets partition by partition: Faust
        # gives one worker the same partition of both only if their counts are equal.
        ensure_topics(args.bootstrap, [SOCKETS], packet_partitions)
        socket_partitions = partition_count(args.bootstrap, SOCKETS)
        if socket_partitions != packet_partitions:
            raise WirestreamError(
                f"{SOCKETS} has {socket_partitions} partitions and {PACKETS} {packet_partitions}: "
                "they must be equal (socket events are joined to packets partition by partition)")
    l7 = (L7Options(redact=args.redact, body_cap=args.body_cap, response_body_cap=args.response_body_cap)
          if args.l7 else None)
    observation_partitions = partition_count(args.bootstrap, OBSERVATIONS)
    if args.role != "packets":
        # Faust does not create topics here (topic_allow_declare=False): the windows'
        # changelog is ours to create, with one partition per observation partition.
        ensure_topics(args.bootstrap, [changelog_topic(args.group)], observation_partitions)
    app = create_app(args.bootstrap, args.registry, group=args.group, idle_timeout_s=args.idle_timeout,
                     interim_s=args.interim, source_prefix=args.only_source_prefix, l7_options=l7,
                     packet_partitions=packet_partitions,
                     observation_partitions=observation_partitions,
                     window_options=_window_options(args), windows=args.windows, role=args.role,
                     plugins=tuple(args.plugin))
    run_worker(app, loglevel=args.loglevel)
    return EXIT_OK


def cmd_k8s_watch(args: argparse.Namespace) -> int:
    if not _kafka_given(args, "k8s-watch", "; start them with 'wirestream broker'"):
        return EXIT_USAGE
    from wirestream.broker import ensure_topics
    from wirestream.codec import AvroCodec
    from wirestream.producers.k8s_watch import IdentityPublisher, load_api_client, run_watcher
    from wirestream.topics import K8S_IDENTITY

    ensure_topics(args.bootstrap, [K8S_IDENTITY], args.partitions)
    try:
        api = load_api_client(args.kubeconfig)
    except Exception as exc:  # no kubeconfig, no in-cluster service account
        raise WirestreamError(f"no Kubernetes API to watch: {exc}") from None
    source = args.cluster_name or api.configuration.host
    publisher = IdentityPublisher(args.bootstrap, AvroCodec(args.registry), source)
    stop = _StopOnSignal()

    def synced() -> None:
        print(f"wirestream k8s-watch: {source}: synced; {dict(publisher.published)} published",
              file=sys.stderr, flush=True)
        if args.once:
            stop.asked = True

    run_watcher(api, publisher, stop=stop, on_synced=synced)
    return EXIT_OK


def cmd_percentiles(args: argparse.Namespace) -> int:
    from wirestream.codec import AvroCodec
    from wirestream.processors.service_windows import merge_windows
    from wirestream.reader import TopicReader
    from wirestream.topics import SERVICE_METRICS

    if not _kafka_given(args, "percentiles"):
        return EXIT_USAGE
    records = []
    last = time.monotonic()
    with TopicReader(args.bootstrap, AvroCodec(args.registry), [SERVICE_METRICS], "beginning") as r:
        while time.monotonic() - last < args.timeout:
            msgs = r.poll(0.5, 10_000)
            if msgs:
                last = time.monotonic()
            records += [m.record for m in msgs if m.record is not None and m.record["service"] == args.service]
    merged = merge_windows(records, args.service, args.from_ts, args.to_ts).get(args.service)
    if merged is None:
        print(f"wirestream: no windows of {args.service} in that time range "
              f"({len(records)} of this service in {SERVICE_METRICS})", file=sys.stderr)
        return EXIT_ERROR
    out = {
        "service": merged.service, "windows": merged.windows,
        "from_ts_us": merged.first_start_us, "to_ts_us": merged.last_end_us,
        "connections": merged.connections, "requests": merged.requests,
        "errors_4xx": merged.errors_4xx, "errors_5xx": merged.errors_5xx,
        "status_429": merged.status_429, "worst_health": merged.worst_health,
        "handshake_rtt_us": merged.quantiles("handshake_rtt"), "latency_us": merged.quantiles("latency"),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return EXIT_OK
    print(f"{out['service']}: {out['windows']} windows from {out['from_ts_us']} to {out['to_ts_us']} "
          f"(capture time, µs); {out['connections']:,} connections, {out['requests']:,} requests, "
          f"4xx {out['errors_4xx']:,}, 5xx {out['errors_5xx']:,}, 429 {out['status_429']:,}; "
          f"worst health {out['worst_health']}")
    print(f"{'':16}{'p50':>14}{'p90':>14}{'p99':>14}")
    for name in ("handshake_rtt_us", "latency_us"):
        q = out[name]
        print(f"{name:16}" + "".join(f"{'-' if q[k] is None else format(q[k], ',.1f'):>14}"
                                     for k in ("p50", "p90", "p99")))
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from wirestream.doctor import diagnose

    report = diagnose(probe=not args.no_probe)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return EXIT_OK
    width = max(len(c.name) for c in report.checks) + 1
    for c in report.checks:
        print(f"{'ok ' if c.ok else 'NO '} {c.name:{width}} {c.detail}")
    print()
    for name, mode in report.as_dict()["capture_modes"].items():  # type: ignore[union-attr]
        print(f"{name:19} {'available' if mode['available'] else 'unavailable: ' + mode['reason']}")
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    if not _kafka_given(args, "replay"):
        return EXIT_USAGE
    from wirestream.processors.l7.base import L7Options
    from wirestream.replay import replay

    l7 = L7Options(redact=args.redact, body_cap=args.body_cap) if args.l7 else None

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\rreplayed {done:,} of {total:,} messages", end="", file=sys.stderr, flush=True)

    run = replay(args.bootstrap, args.registry, args.from_ts, args.to_ts, source_prefix=args.source,
                 l7_options=l7, progress=progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    emitted = ", ".join(f"{n:,} -> {t}" for t, n in sorted(run.emitted.items())) or "nothing"
    print(f"replayed {run.by_topic['wire.packets']:,} packet batches and {run.by_topic['wire.sockets']:,} "
          f"socket events in {run.elapsed_s:.1f} s: {emitted}")
    return EXIT_OK


def cmd_sink(args: argparse.Namespace) -> int:
    if args.sink not in ("parquet", "siem", "prometheus"):
        print("wirestream: error: choose a destination: wirestream sink parquet|siem|prometheus ...",
              file=sys.stderr)
        return EXIT_USAGE
    if not _kafka_given(args, "sink"):
        return EXIT_USAGE
    sink: Any
    if args.sink == "prometheus":
        from wirestream.sinks.prometheus import PrometheusSink

        host, _, port = args.listen.rpartition(":")
        sink = PrometheusSink(args.bootstrap, args.registry, host or "0.0.0.0", int(port), group=args.group,
                              max_services=args.max_services)
        print(f"wirestream sink prometheus: serving http://{host or '0.0.0.0'}:{sink.port}/metrics",
              file=sys.stderr, flush=True)
    elif args.sink == "siem":
        from wirestream.sinks.siem import SiemSink

        try:
            sink = SiemSink(args.bootstrap, args.registry, args.url, args.fmt, args.topics.split(","),
                            group=args.group, token=args.token)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    else:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise WirestreamError("the Parquet sink needs pyarrow: pip install 'wirestream[lake]'") from None
        from wirestream.sinks.parquet import ParquetSink

        sink = ParquetSink(args.bootstrap, args.registry, args.out, args.topics.split(","), group=args.group,
                           flush_seconds=args.flush_seconds)
    sink.run(stop=_StopOnSignal())
    print(f"written: {dict(sink.written)}; {dict(sink.counters)}")
    return EXIT_OK


def cmd_plugin(args: argparse.Namespace) -> int:
    from wirestream import plugins

    if args.plugin_command == "list":
        eps = plugins.installed()
        if not eps:
            print(f"no plugins installed (entry point group {plugins.ENTRY_POINT_GROUP})")
        for name in sorted(eps):
            plugin = plugins.load(name)
            print(f"{name}: {', '.join(plugin.inputs)} -> {', '.join(plugin.outputs) or '-'}  ({eps[name].value})")
        return EXIT_OK
    if args.plugin_command != "run":
        print("wirestream: error: wirestream plugin list | run NAME", file=sys.stderr)
        return EXIT_USAGE
    if not _kafka_given(args, "plugin run"):
        return EXIT_USAGE
    plugin = plugins.load(args.name)
    stop = _StopOnSignal()
    print(f"wirestream plugin: running {args.name}: {', '.join(plugin.inputs)} -> {', '.join(plugin.outputs)}",
          file=sys.stderr, flush=True)
    counters = plugins.run_plugin(plugin, args.bootstrap, args.registry, stop=stop,
                                  group=args.group, partitions=args.partitions)
    print(f"{args.name}: {dict(counters)}")
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    from wirestream.codec import AvroCodec
    from wirestream.reader import TopicReader
    from wirestream.sinks.jsonl import to_json_line

    if not _kafka_given(args, "tail"):
        return EXIT_USAGE
    from wirestream.client import where

    keep = where(*args.where, service=args.service) if args.where or args.service else None
    codec = AvroCodec(args.registry)
    count = 0
    last = time.monotonic()
    with TopicReader(args.bootstrap, codec, [args.topic], "beginning" if args.from_beginning else "end") as r:
        while True:
            msgs = r.poll(0.5)
            for m in msgs:
                if m.record is None:
                    print(f"wirestream: skipped undecodable record {m.topic}/{m.partition}@{m.offset}: {m.error}",
                          file=sys.stderr)
                    continue
                if keep is not None and not keep(m.record):
                    continue
                print(to_json_line(m.record), flush=True)
                count += 1
                if args.max and count >= args.max:
                    return EXIT_OK
            if msgs:
                last = time.monotonic()
            elif args.timeout and time.monotonic() - last > args.timeout:
                return EXIT_OK


_COMMANDS = {
    "analyze": cmd_analyze,
    "broker": cmd_broker,
    "capture": cmd_capture,
    "k8s-watch": cmd_k8s_watch,
    "produce": cmd_produce,
    "process": cmd_process,
    "percentiles": cmd_percentiles,
    "doctor": cmd_doctor,
    "tail": cmd_tail,
    "replay": cmd_replay,
    "sink": cmd_sink,
    "plugin": cmd_plugin,
}
