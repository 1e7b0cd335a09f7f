"""``wirestream sink parquet|siem|prometheus``: output topics to a destination."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from wirestream.commands import common
from wirestream.config import Settings
from wirestream.errors import UsageError, WirestreamError
from wirestream.topics import PARQUET_SINK_TOPICS, SIEM_SINK_TOPICS


def add_parser(sub: common.Subparsers, defaults: Settings) -> argparse.ArgumentParser:
    p = sub.add_parser("sink", help="feed output topics to a destination (data lake, ...)",
                       description="Consume output topics and write them to a destination, at least once "
                                   "(offsets committed after each successful write), each record once.")
    ssub = p.add_subparsers(dest="sink", metavar="DESTINATION", required=True)
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
    sp.add_argument("--topics", default=",".join(PARQUET_SINK_TOPICS),
                    help="comma-separated (default: every output topic)")
    sp.add_argument("--group", default="wirestream-sink-parquet", help="consumer group (default: %(default)s)")
    sp.add_argument("--flush-seconds", type=float, default=30.0, metavar="S",
                    help="write at least this often (default: %(default)s)")
    common.add_kafka_args(sp, defaults, required=True)
    sp.set_defaults(run=run_parquet)
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
    sp.add_argument("--topics", default=",".join(SIEM_SINK_TOPICS), help="comma-separated (default: %(default)s)")
    sp.add_argument("--token", default=os.environ.get("WIRESTREAM_HEC_TOKEN", ""),
                    help="HEC token (default: $WIRESTREAM_HEC_TOKEN)")
    sp.add_argument("--group", default="wirestream-sink-siem", help="consumer group (default: %(default)s)")
    common.add_kafka_args(sp, defaults, required=True)
    sp.set_defaults(run=run_siem)
    sp = ssub.add_parser(
        "prometheus", help="per-service series for Prometheus on /metrics",
        description="Serve per-service series (requests, errors, retransmission ratio, latency and handshake "
                    "quantiles) and alert counts from wire.service-metrics and wire.alerts on an HTTP "
                    "endpoint for Prometheus to scrape, with a cap on the number of service label values.")
    sp.add_argument("--listen", default="0.0.0.0:9108", metavar="HOST:PORT", help="default: %(default)s")
    sp.add_argument("--max-services", type=int, default=500, metavar="N",
                    help="service label values kept; further services go to service=\"other\" (default: %(default)s)")
    sp.add_argument("--group", default="wirestream-sink-prometheus", help="consumer group (default: %(default)s)")
    common.add_kafka_args(sp, defaults, required=True)
    sp.set_defaults(run=run_prometheus)
    return p


def run_parquet(args: argparse.Namespace) -> int:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise WirestreamError("the Parquet sink needs pyarrow: pip install 'wirestream[lake]'") from None
    from wirestream.sinks.parquet import ParquetSink

    sink = ParquetSink(args.bootstrap, args.registry, args.out, args.topics.split(","), group=args.group,
                       flush_seconds=args.flush_seconds)
    return _run(sink)


def run_siem(args: argparse.Namespace) -> int:
    from wirestream.sinks.siem import SiemSink

    try:
        sink = SiemSink(args.bootstrap, args.registry, args.url, args.fmt, args.topics.split(","),
                        group=args.group, token=args.token)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return _run(sink)


def run_prometheus(args: argparse.Namespace) -> int:
    from wirestream.sinks.prometheus import PrometheusSink

    host, _, port = args.listen.rpartition(":")
    sink = PrometheusSink(args.bootstrap, args.registry, host or "0.0.0.0", int(port), group=args.group,
                          max_services=args.max_services)
    print(f"wirestream sink prometheus: serving http://{host or '0.0.0.0'}:{sink.port}/metrics",
          file=sys.stderr, flush=True)
    return _run(sink)


def _run(sink: Any) -> int:
    """Until Ctrl-C/SIGTERM; then what was written."""
    sink.run(stop=common.StopOnSignal())
    print(f"written: {dict(sink.written)}; {dict(sink.counters)}")
    return common.EXIT_OK
