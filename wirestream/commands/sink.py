"""``wirestream sink parquet|siem|prometheus|zeek``: output topics to a destination."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from wirestream.commands import common
from wirestream.config import Settings
from wirestream.errors import UsageError, WirestreamError
from wirestream.topics import PARQUET_SINK_TOPICS, SIEM_SINK_TOPICS

#: the environment variables tokens come from (named here too: --help says them, and the
#: sinks' modules, which pull in Kafka, are loaded only when a sink runs)
HEC_TOKEN_ENV = "WIRESTREAM_HEC_TOKEN"
TOKEN_ENV = "WIRESTREAM_PROMETHEUS_TOKEN"


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
    sp.add_argument("--file-mode", type=_mode, default=0o600, metavar="OCTAL",
                    help="mode of the files, whatever the umask (default: 600: the records hold what the wire "
                         "carried; 640 to let a group read them)")
    sp.add_argument("--dir-mode", type=_mode, default=0o700, metavar="OCTAL",
                    help="mode of the directories the sink creates (default: 700; 750 for a group)")
    common.add_kafka_args(sp, defaults, required=True)
    sp.set_defaults(run=run_parquet)
    sp = ssub.add_parser(
        "siem", help="alerts (or any topic) as ECS JSON or CEF, over syslog TLS/TCP/UDP or to an HEC collector",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Send records to a SIEM: Elastic Common Schema JSON (--format ecs) or ArcSight CEF
(--format cef), over syslog (RFC 5425 over TLS with octet-counted framing, RFC 5424 over
TCP with one message per line, or UDP) or to a Splunk HEC-style HTTP collector. TLS
(syslog+tls://, https://) verifies the collector's certificate against --ca (else the
system's CAs) and its name against the URL's host. At least once: offsets are committed
after a batch is sent; a destination that fails is retried with backoff; one whose
certificate is not trusted stops the sink with an error, nothing committed.""",
        epilog="""\
examples:
  wirestream sink siem --url syslog+tls://siem.internal:6514 --format cef --ca /etc/wirestream/siem-ca.pem
  wirestream sink siem --url syslog+tls://siem.internal:6514 --ca ca.pem --cert client.pem --key client.key
  wirestream sink siem --url syslog+udp://10.0.0.5:514 --format ecs --topics wire.alerts,wire.tls
  wirestream sink siem --url https://splunk:8088/services/collector/event --token-file /run/secrets/hec-token""")
    sp.add_argument("--url", required=True,
                    help="syslog+tls://HOST[:PORT] (6514), syslog+tcp://HOST[:PORT], syslog+udp://HOST[:PORT] (514) "
                         "or http(s)://...")
    sp.add_argument("--format", dest="fmt", choices=("ecs", "cef"), default="ecs", help="default: %(default)s")
    sp.add_argument("--topics", default=",".join(SIEM_SINK_TOPICS), help="comma-separated (default: %(default)s)")
    sp.add_argument("--token-file", metavar="FILE",
                    help=f"file holding the HEC token (default: ${HEC_TOKEN_ENV})")
    # A token's value on the command line shows in `ps` and shell histories: still taken,
    # for the scripts that pass it so, with a warning, and no longer shown in --help.
    sp.add_argument("--token", default=None, help=argparse.SUPPRESS)
    g = sp.add_argument_group("TLS (syslog+tls://, https://)")
    g.add_argument("--ca", metavar="PEM", help="CA certificate(s) to verify the collector with (default: the system's)")
    g.add_argument("--cert", metavar="PEM", help="client certificate, for collectors that require one")
    g.add_argument("--key", metavar="PEM", help="the client certificate's key (default: in --cert's file)")
    g.add_argument("--insecure", action="store_true",
                   help="https:// only: do not verify the collector's certificate (logs a warning)")
    sp.add_argument("--group", default="wirestream-sink-siem", help="consumer group (default: %(default)s)")
    common.add_kafka_args(sp, defaults, required=True)
    sp.set_defaults(run=run_siem)
    sp = ssub.add_parser(
        "prometheus", help="per-service series for Prometheus on /metrics",
        description="Serve per-service series (requests, errors, retransmission ratio, latency and handshake "
                    "quantiles) and alert counts from wire.service-metrics and wire.alerts on an HTTP "
                    "endpoint for Prometheus to scrape, with a cap on the number of service label values.")
    common.add_exposure_args(
        sp, "127.0.0.1:9108",
        f"require 'Authorization: Bearer TOKEN', the token read from FILE (default: ${TOKEN_ENV})",
        "reads the metrics")
    sp.add_argument("--max-services", type=int, default=500, metavar="N",
                    help="service label values kept; further services go to service=\"other\" (default: %(default)s)")
    sp.add_argument("--group", default="wirestream-sink-prometheus", help="consumer group (default: %(default)s)")
    common.add_kafka_args(sp, defaults, required=True)
    sp.set_defaults(run=run_prometheus)
    sp = ssub.add_parser(
        "zeek", help="Zeek logs: conn.log, http.log, dns.log, ssl.log (TSV or JSON), for zeek-cut, RITA, Zui",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Append wire.connections, wire.transactions, wire.dns and wire.tls to DIR/conn.log,
http.log, dns.log and ssl.log in Zeek's format: TSV with Zeek's header (#fields, #types,
... and #close when the sink stops), or Zeek's JSON lines (--json). The uid of a
connection is the same in its conn.log line and its L7 lines. docs/downstream.md has the
field mapping. Runs until Ctrl-C/SIGTERM.""",
        epilog="""\
examples:
  wirestream sink zeek --out /var/log/wirestream-zeek
  zeek-cut id.orig_h id.resp_h conn_state history < /var/log/wirestream-zeek/conn.log
""")
    sp.add_argument("--out", required=True, metavar="DIR", help="directory of the logs")
    sp.add_argument("--json", dest="zeek_json", action="store_true", help="Zeek's JSON lines instead of TSV")
    sp.add_argument("--topics", default="wire.transactions,wire.dns,wire.tls,wire.connections",
                    help="comma-separated (default: %(default)s)")
    sp.add_argument("--group", default="wirestream-sink-zeek", help="consumer group (default: %(default)s)")
    sp.add_argument("--file-mode", type=_mode, default=0o600, metavar="OCTAL",
                    help="mode of the log files it creates (default: 600; 640 to let a group read them)")
    common.add_kafka_args(sp, defaults, required=True)
    sp.set_defaults(run=run_zeek)
    return p


def run_parquet(args: argparse.Namespace) -> int:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise WirestreamError("the Parquet sink needs pyarrow: pip install 'wirestream[lake]'") from None
    from wirestream.sinks.parquet import ParquetSink

    sink = ParquetSink(args.bootstrap, args.registry, args.out, args.topics.split(","), group=args.group,
                       flush_seconds=args.flush_seconds, file_mode=args.file_mode, dir_mode=args.dir_mode)
    return _run(sink)


def run_zeek(args: argparse.Namespace) -> int:
    from wirestream.sinks.zeek import ZeekSink

    try:
        sink = ZeekSink(args.bootstrap, args.registry, args.out, json_lines=args.zeek_json,
                        topics=args.topics.split(","), group=args.group, file_mode=args.file_mode)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise WirestreamError(f"cannot write Zeek logs in {args.out}: {exc.strerror or exc}") from None
    return _run(sink)


def run_siem(args: argparse.Namespace) -> int:
    from wirestream.sinks.siem import SiemSink, read_token

    try:
        if args.token is not None:
            if args.token_file:
                raise ValueError("--token and --token-file: give one (--token-file: a value on the command "
                                 "line shows in ps)")
            logging.getLogger("wirestream.sinks.siem").warning(
                "--token shows the HEC token to anyone who can list processes: use --token-file FILE or $%s",
                HEC_TOKEN_ENV)
            token = args.token
        else:
            token = read_token(args.token_file, HEC_TOKEN_ENV)
        sink = SiemSink(args.bootstrap, args.registry, args.url, args.fmt, args.topics.split(","),
                        group=args.group, token=token, ca=args.ca, cert=args.cert, key=args.key,
                        insecure=args.insecure)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return _run(sink)


def run_prometheus(args: argparse.Namespace) -> int:
    from wirestream.sinks.prometheus import PrometheusSink
    from wirestream.sinks.siem import read_token

    host, port = common.listen_address(args.listen, "127.0.0.1:9108")
    try:
        token = read_token(args.token_file, TOKEN_ENV)
        sink = PrometheusSink(args.bootstrap, args.registry, host, port, group=args.group,
                              max_services=args.max_services, token=token, cert=args.cert, key=args.key,
                              allow_unauthenticated=args.allow_unauthenticated)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise WirestreamError(f"cannot serve on {args.listen}: {exc.strerror or exc}") from None
    protection = ", ".join(p for p, on in (("bearer token required", token), ("TLS", args.cert)) if on) \
        or "no authentication"
    print(f"wirestream sink prometheus: serving {sink.scheme}://{host}:{sink.port}/metrics "
          f"({protection})", file=sys.stderr, flush=True)
    return _run(sink)


def _mode(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 600") from None


def _run(sink: Any) -> int:
    """Until Ctrl-C/SIGTERM; then what was written."""
    sink.run(stop=common.StopOnSignal())
    print(f"written: {dict(sink.written)}; {dict(sink.counters)}")
    return common.EXIT_OK
