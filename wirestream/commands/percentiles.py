"""``wirestream percentiles``: a service's windows merged into one set of percentiles."""

from __future__ import annotations

import argparse
import json
import sys
import time

from wirestream.commands import common
from wirestream.config import Settings


def add_parser(sub: common.Subparsers, defaults: Settings) -> argparse.ArgumentParser:
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
    p.add_argument("--from", dest="from_ts", type=common.timestamp_us, metavar="TIME",
                   help="windows starting at or after this capture time (ISO 8601 UTC, or Unix seconds)")
    p.add_argument("--to", dest="to_ts", type=common.timestamp_us, metavar="TIME",
                   help="windows ending at or before this capture time")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS",
                   help="stop reading after this long without a new record (default: %(default)s)")
    common.add_kafka_args(p, defaults, required=True)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from wirestream.codec import AvroCodec
    from wirestream.processors.service_windows import merge_windows
    from wirestream.reader import TopicReader
    from wirestream.topics import SERVICE_METRICS

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
        return common.EXIT_ERROR
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
        return common.EXIT_OK
    print(f"{out['service']}: {out['windows']} windows from {out['from_ts_us']} to {out['to_ts_us']} "
          f"(capture time, µs); {out['connections']:,} connections, {out['requests']:,} requests, "
          f"4xx {out['errors_4xx']:,}, 5xx {out['errors_5xx']:,}, 429 {out['status_429']:,}; "
          f"worst health {out['worst_health']}")
    print(f"{'':16}{'p50':>14}{'p90':>14}{'p99':>14}")
    for name in ("handshake_rtt_us", "latency_us"):
        q = out[name]
        print(f"{name:16}" + "".join(f"{'-' if q[k] is None else format(q[k], ',.1f'):>14}"
                                     for k in ("p50", "p90", "p99")))
    return common.EXIT_OK
