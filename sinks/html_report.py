"""``analyze FILE --html REPORT.html``: one self-contained HTML file to look at.

What it shows, each view naming the topic and fields it is computed from (so that a
user can get the same numbers from ``--out``'s JSON lines):

- **a service map**: nodes are the servers' services (their Kubernetes service or
  workload when known, else ``ip:port``, as the windows name them) and the clients
  (their workload, else their address); an edge is what one client sent one service:
  connections, requests (HTTP/1, HTTP/2 and gRPC transactions, database and cache
  queries, Kafka calls), the error rate, latency P50/P99, handshake RTT P50/P99, the
  retransmission rate and the worst health band of its connections; coloured by that
  band. Clicking an edge lists its connections (worst first) and its slowest requests;
- **time series per service** over the capture's windows (requests, errors, P99, one
  point per window), with the alerts on the same time axis;
- **the tables** analyze prints (connections ranked by trouble, transactions, DNS, TLS,
  queries, Kafka calls, services), sortable and filterable.

Aggregated, not every record: at most :data:`MAX_EDGES` edges, :data:`EDGE_ROWS` rows of
detail per edge, :data:`TABLE_ROWS` rows per table, :data:`MAX_SERIES` services' series,
so a capture of a million packets makes a report of a few megabytes. Self-contained:
the data is a JSON block, the drawing is this module's own script and SVG (no library,
nothing fetched when it is opened; the page's Content-Security-Policy forbids it).
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from wirestream.processors.findings import HEALTH_BANDS
from wirestream.processors.observations import service_of
from wirestream.sinks.console import trouble_key

from wirestream.topics import (
    ALERTS,
    CONNECTIONS,
    DNS,
    MESSAGING,
    QUERIES,
    SERVICE_METRICS,
    TLS,
    TRANSACTIONS,
)

#: Edges drawn at most (the busiest: connections plus requests).
MAX_EDGES = 120
#: Connections and slowest requests listed per edge.
EDGE_ROWS = 20
#: Rows per table.
TABLE_ROWS = 1000
#: Services with a time series of their own (the busiest).
MAX_SERIES = 24

_BAND = {band: i for i, band in enumerate(HEALTH_BANDS)}


def client_node(record: dict[str, Any]) -> str:
    """A client as a node: its workload (``namespace/name``) when known, else its address."""
    workload = record.get("client_workload")
    if workload:
        ns = record.get("client_namespace")
        return f"{ns}/{workload}" if ns else workload
    return record["client_ip"]


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (as the tables' P50/P99), None without values."""
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


class _Edge:
    __slots__ = ("client", "server", "conns", "calls", "latencies", "errors", "handshakes", "retrans", "data")

    def __init__(self, client: str, server: str) -> None:
        self.client, self.server = client, server
        self.conns: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.latencies: list[float] = []
        self.errors = 0
        self.handshakes: list[float] = []
        self.retrans = 0
        self.data = 0


def _call_row(topic: str, r: dict[str, Any]) -> dict[str, Any]:
    """A request of any L7 topic as one table row: what, status, latency."""
    if topic == TRANSACTIONS:
        what = f"{r.get('method') or ''} {r.get('host') or ''}{r.get('path') or ''}".strip()
        status = r.get("status") if r.get("status") is not None else (r.get("error") or "no response")
    elif topic == QUERIES:
        what = f"{r.get('protocol')}: {r.get('statement') or r.get('operation')}"
        status = r.get("error_code") or r.get("status")
    else:
        what = f"kafka: {r.get('api')} {r.get('topic') or ''}".strip()
        status = r.get("error") or r.get("status")
    return {"client": f"{r['client_ip']}:{r['client_port']}", "what": what[:200], "status": str(status),
            "latency_us": r.get("latency_us")}


def _failed(topic: str, r: dict[str, Any]) -> bool:
    if topic == TRANSACTIONS:
        return bool(r.get("error")) or (r.get("status") or 0) >= 500
    return r.get("status") == "error"


def build(records: dict[str, list[dict[str, Any]]], title: str,
          stats: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The report's data: the map, the series, the alerts and the tables (with the
    stages' counters when ``stats``, the run's wire.stats reports, are given)."""
    edges: dict[tuple[str, str], _Edge] = {}

    def edge(r: dict[str, Any]) -> _Edge:
        key = (client_node(r), service_of(r))
        e = edges.get(key)
        if e is None:
            e = edges[key] = _Edge(*key)
        return e

    conns = records.get(CONNECTIONS, [])
    for c in conns:
        e = edge(c)
        e.conns.append(c)
        if c.get("handshake_rtt_us") is not None:
            e.handshakes.append(c["handshake_rtt_us"])
        e.retrans += c.get("retransmissions") or 0
        e.data += c.get("data_packets") or 0
    for topic in (TRANSACTIONS, QUERIES, MESSAGING):
        for r in records.get(topic, []):
            if topic == MESSAGING and r.get("status") == "sent":
                continue  # (acks=0: no answer to time)
            e = edge(r)
            e.calls.append(_call_row(topic, r))
            if r.get("latency_us") is not None and not (topic == MESSAGING and r.get("api_key") == 1):
                e.latencies.append(r["latency_us"])  # (a Kafka fetch's latency is its long poll)
            e.errors += _failed(topic, r)
    ranked = sorted(edges.values(), key=lambda e: -(len(e.conns) + len(e.calls)))[:MAX_EDGES]
    out_edges = []
    for i, e in enumerate(ranked):
        bands = [c.get("health") for c in e.conns if c.get("health") in _BAND]
        worst = max(bands, key=_BAND.__getitem__) if bands else None
        requests = len(e.calls)
        out_edges.append({
            "id": i, "source": e.client, "target": e.server,
            "connections": len(e.conns), "requests": requests, "errors": e.errors,
            "error_rate": e.errors / requests if requests else None,
            "latency_p50_us": _percentile(e.latencies, 0.5), "latency_p99_us": _percentile(e.latencies, 0.99),
            "handshake_rtt_p50_us": _percentile(e.handshakes, 0.5),
            "handshake_rtt_p99_us": _percentile(e.handshakes, 0.99),
            "retransmission_rate": e.retrans / e.data if e.data else None,
            "health": worst,
            "conns": [_conn_row(c) for c in sorted(e.conns, key=trouble_key, reverse=True)[:EDGE_ROWS]],
            "slowest": sorted(e.calls, key=lambda c: -(c["latency_us"] or 0))[:EDGE_ROWS],
        })
    nodes: dict[str, dict[str, Any]] = {}
    for e in out_edges:
        for name, kind in ((e["source"], "client"), (e["target"], "service")):
            n = nodes.setdefault(name, {"id": name, "client": False, "service": False, "requests": 0,
                                        "connections": 0})
            n[kind] = True
            n["requests"] += e["requests"]
            n["connections"] += e["connections"]
    return {
        "title": title,
        "nodes": list(nodes.values()),
        "edges": out_edges,
        "edges_total": len(edges),
        "series": _series(records.get(SERVICE_METRICS, [])),
        "alerts": [{"t": a.get("ts_us"), "service": a.get("service"), "kind": a.get("kind"),
                    "severity": a.get("severity"), "summary": a.get("summary")}
                   for a in sorted(records.get(ALERTS, []), key=lambda a: a.get("ts_us") or 0)][:TABLE_ROWS],
        "tables": _tables(records) + _services_table(records.get(SERVICE_METRICS, [])) + _counters_table(stats),
    }


def _conn_row(c: dict[str, Any]) -> dict[str, Any]:
    return {"client": f"{c['client_ip']}:{c['client_port']}", "server": f"{c['server_ip']}:{c['server_port']}",
            "state": c.get("state"), "health": c.get("health"), "retransmissions": c.get("retransmissions"),
            "retransmission_rate": c.get("retransmission_rate"), "handshake_rtt_us": c.get("handshake_rtt_us"),
            "zero_window": c.get("zero_window"), "bytes": (c.get("bytes_c2s") or 0) + (c.get("bytes_s2c") or 0)}


def _series(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One series per service (its windows in time order; the busiest services)."""
    by_service: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for w in windows:
        if w.get("scope", "service") == "service":
            by_service[w["service"]].append(w)
    busiest = sorted(by_service.items(), key=lambda kv: -sum(w["requests"] + w["connections"] for w in kv[1]))
    return [{"service": service, "points": [
        {"t": w["window_start_ts_us"], "requests": w["requests"], "connections": w["connections"],
         "errors": w["errors_4xx"] + w["errors_5xx"], "latency_p50_us": w.get("latency_p50_us"),
         "latency_p99_us": w.get("latency_p99_us"), "retransmission_rate": w.get("retransmission_rate")}
        for w in sorted(ws, key=lambda w: w["window_start_ts_us"])]} for service, ws in busiest[:MAX_SERIES]]


#: table -> (topic, its caption, columns (field, heading)); rows as the records' fields
_TABLES: dict[str, tuple[str, str, tuple[tuple[str, str], ...]]] = {
    "connections": (CONNECTIONS, "TCP connections, worst first (retransmission rate, resets, zero windows)", (
        ("client", "client"), ("server", "server"), ("state", "state"), ("health", "health"),
        ("retransmissions", "retrans"), ("retransmission_rate", "retrans rate"),
        ("handshake_rtt_us", "handshake µs"), ("zero_window", "zero windows"), ("bytes", "bytes"))),
    "transactions": (TRANSACTIONS, "HTTP/1.x and HTTP/2 transactions, slowest first", (
        ("client_ip", "client"), ("server", "server"), ("method", "method"), ("host", "host"), ("path", "path"),
        ("status", "status"), ("latency_us", "latency µs"), ("error", "error"))),
    "queries": (QUERIES, "Database and cache calls, slowest first", (
        ("client_ip", "client"), ("server", "server"), ("protocol", "protocol"), ("operation", "operation"),
        ("statement", "statement"), ("status", "status"), ("latency_us", "latency µs"), ("rows", "rows"))),
    "messaging": (MESSAGING, "Kafka calls, slowest first", (
        ("client_id", "client id"), ("server", "broker"), ("api", "API"), ("topic", "topic"),
        ("status", "status"), ("error", "error"), ("latency_us", "latency µs"), ("records", "records"))),
    "dns": (DNS, "DNS queries, slowest first", (
        ("client_ip", "client"), ("server_ip", "server"), ("query_name", "name"), ("query_type", "type"),
        ("rcode", "rcode"), ("latency_us", "latency µs"))),
    "tls": (TLS, "TLS handshakes, slowest first", (
        ("client_ip", "client"), ("server", "server"), ("server_name", "SNI"), ("version", "version"),
        ("cipher_suite", "cipher suite"), ("handshake_ms", "handshake ms"), ("alert", "alert"))),
}


def _tables(records: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for name, (topic, caption, columns) in _TABLES.items():
        rows = records.get(topic, [])
        if not rows:
            continue
        if topic == CONNECTIONS:
            picked = [_conn_row(c) for c in sorted(rows, key=trouble_key, reverse=True)[:TABLE_ROWS]]
        else:
            key = "handshake_ms" if topic == TLS else "latency_us"
            picked = []
            for r in sorted(rows, key=lambda r: -(r.get(key) or 0))[:TABLE_ROWS]:
                row = dict(r)
                if "server_port" in r:
                    row["server"] = f"{r['server_ip']}:{r['server_port']}"
                picked.append(row)
        fields = [f for f, _ in columns]
        out.append({"name": name, "caption": caption, "topic": topic, "total": len(rows),
                    "columns": [h for _, h in columns], "fields": fields,
                    "rows": [[_cell(r.get(f)) for f in fields] for r in picked]})
    return out


def _services_table(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per service over its windows (as analyze's "Services" table)."""
    rows: dict[str, list[Any]] = {}
    for w in windows:
        if w.get("scope", "service") != "service":
            continue
        r = rows.setdefault(w["service"], [w["service"], 0, 0, 0, 0, 0, None, None])
        r[1] += 1
        r[2] += w["connections"]
        r[3] += w["requests"]
        r[4] += w["errors_4xx"]
        r[5] += w["errors_5xx"]
        if w.get("latency_p99_us") is not None:
            r[6] = max(r[6] or 0, w["latency_p99_us"])
        if w.get("health") in _BAND and (r[7] is None or _BAND[w["health"]] > _BAND[r[7]]):
            r[7] = w["health"]
    if not rows:
        return []
    picked = sorted(rows.values(), key=lambda r: -(r[2] + r[3]))[:TABLE_ROWS]
    return [{"name": "services", "caption": "Services, busiest first", "topic": SERVICE_METRICS,
             "total": len(rows), "columns": ["service", "windows", "connections", "requests", "4xx", "5xx",
                                             "worst window P99 µs", "worst health"],
             "fields": ["service", "window_start_ts_us", "connections", "requests", "errors_4xx", "errors_5xx",
                        "latency_p99_us", "health"],
             "rows": [[_cell(v) for v in r] for r in picked]}]


def _counters_table(stats: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The processor stages' counters (their final wire.stats reports), as analyze's table."""
    if not stats:
        return []
    from wirestream.sinks.console import processor_totals

    rows = [[stage, total.received, ", ".join(f"{v:,} → {t}" for t, v in sorted(total.emitted.items())),
             ", ".join(f"{k} = {v:,}" for k, v in sorted(total.dropped.items())) or "-",
             ", ".join(f"{k} {v:,}" for k, v in sorted(total.counters.items()))]
            for stage, total in processor_totals(stats).items()]
    return [{"name": "counters", "caption": "Counters by stage", "topic": "wire.stats", "total": len(rows),
             "columns": ["stage", "received", "emitted", "dropped (reason = count)", "counters"],
             "fields": ["stage", "received", "emitted", "dropped", "counters"], "rows": rows}]


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 6)
    if v is None or isinstance(v, (int, str, bool)):
        return v
    return str(v)


def render(data: dict[str, Any], live: bool = False) -> str:
    """The HTML page: the data as JSON (``</`` escaped), the script and the styles inline.
    ``live``: the page may fetch ``data.json`` from where it came from (wirestream ui),
    nothing else."""
    blob = json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")
    connect = " connect-src 'self';" if live else ""
    here = Path(__file__).parent
    script = (here / "html_report.js").read_text()
    style = (here / "html_report.css").read_text()
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            f"script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:;{connect}\">\n"
            f"<title>{html.escape(data['title'])}</title>\n<style>{style}</style></head>\n"
            f"<body>\n<script type=\"application/json\" id=\"report-data\">{blob}</script>\n"
            f"<script>{script}</script>\n</body></html>\n")


def write(path: str | Path, records: dict[str, list[dict[str, Any]]], title: str,
          stats: list[dict[str, Any]] | None = None) -> int:
    """Write the report of ``records`` (and the run's ``stats``) to ``path``; its size in bytes."""
    text = render(build(records, title, stats))
    Path(path).write_text(text, encoding="utf-8")
    return len(text.encode())
