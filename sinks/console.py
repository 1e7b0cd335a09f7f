"""Human-readable output of ``wirestream analyze``: progress bars and summary tables.

Its heavy imports (rich, the windows' merge: numpy, ~0.25 s) are made where they are
used, so that :data:`SUMMARY_FIELDS` can be imported before the workers start;
:func:`preload` makes them ahead, in a thread, while the command waits."""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wirestream.topics import (
    ALERTS,
    CONNECTIONS,
    DNS,
    FLOWS,
    MESSAGING,
    PACKETS_STAGE,
    QUERIES,
    SERVICE_METRICS,
    TLS,
    TRANSACTIONS,
)

if TYPE_CHECKING:
    from rich.console import Console
    from wirestream.processors.service_windows import ServiceSummary

#: What the summary (tables and ``--json``) reads of the records of these topics; the
#: others (connections: ``top_trouble`` shows them whole; alerts and service metrics:
#: few) it reads whole. ``analyze`` keeps only these fields in memory
#: (``wirestream.analyze.analyze(fields=...)``): not a transaction's headers and bodies.
SUMMARY_FIELDS: dict[str, frozenset[str]] = {
    TRANSACTIONS: frozenset({"client_ip", "client_port", "server_ip", "server_port", "method", "host",
                             "path", "status", "latency_us", "response_body_size", "error", "tls"}),
    DNS: frozenset({"client_ip", "server_ip", "transport", "query_name", "query_type", "rcode",
                    "latency_us", "answers"}),
    TLS: frozenset({"client_ip", "client_port", "server_ip", "server_port", "server_name", "version",
                    "cipher_suite", "alpn", "handshake_ms", "resumed", "alert"}),
    FLOWS: frozenset({"transport", "client_ip", "client_port", "server_ip", "server_port", "ip_version", "service",
                      "packets_c2s", "packets_s2c", "bytes_c2s", "bytes_s2c", "frame_bytes_c2s", "frame_bytes_s2c",
                      "conn_state", "icmp_type", "icmp_code", "path_mtu", "quoted_transport", "quoted_src_ip",
                      "quoted_src_port", "quoted_dst_ip", "quoted_dst_port", "policy_verdict", "cross_zone",
                      "drops"}),
    QUERIES: frozenset({"client_ip", "client_port", "server_ip", "server_port", "protocol", "operation",
                        "statement", "status", "error", "latency_us", "rows"}),
    MESSAGING: frozenset({"api", "client_id", "own_traffic", "topic", "status", "error", "latency_us", "records",
                          "api_key", "acks", "client_ip", "client_port", "server_ip", "server_port", "error_code"}),
}
#: The identity fields the HTML report's map names nodes by (sinks/html_report.py)
_NODE_FIELDS = frozenset({"client_workload", "client_namespace", "server_service", "server_workload",
                          "server_namespace"})
for _topic in (TRANSACTIONS, QUERIES, MESSAGING):
    SUMMARY_FIELDS[_topic] = SUMMARY_FIELDS[_topic] | _NODE_FIELDS


def preload() -> None:
    """Import what the summary needs (rich, the windows' merge), ahead of it."""
    import rich.console  # noqa: F401
    import rich.table  # noqa: F401
    import wirestream.processors.service_windows  # noqa: F401


_STATE_TROUBLE = {"refused": 3, "reset": 2, "half_open": 2, "incomplete_handshake": 2, "timeout": 1}


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[Callable[[str, int], Callable[[int, int], None]] | None]:
    """Yield a factory of per-file progress callbacks (or None when disabled)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
        transient=True,
    ) as progress:

        def factory(path: str, _unused: int) -> Callable[[int, int], None]:
            task = progress.add_task(f"replaying {path}", total=None)

            def update(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            return update

        yield factory


def trouble_key(rec: dict[str, Any]) -> tuple:
    """Sort connections worst first: retransmission rate, then resets/refusals, zero windows."""
    return (
        rec.get("retransmission_rate") or 0.0,
        _STATE_TROUBLE.get(rec.get("state", ""), 0),
        rec.get("zero_window") or 0,
        rec.get("retransmissions") or 0,
        rec.get("duplicate_acks") or 0,
    )


def _us(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1_000_000:
        return f"{value / 1e6:.2f} s"
    if value >= 1000:
        return f"{value / 1000:.1f} ms"
    return f"{value:.0f} µs"


def _endpoint(ip: str, port: int) -> str:
    """``ip:port``, an IPv6 address in brackets, escaped for rich (which would take
    ``[fd00::1]`` for a markup tag and print nothing of it)."""
    return f"\\[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _text(value: Any) -> str:
    """A record's text (a host, a path, a name: what the wire said) as rich prints it
    literally: ``[...]`` in it is not markup."""
    from rich.markup import escape

    return "-" if value is None or value == "" else escape(str(value))


def _status_class(t: dict[str, Any]) -> str:
    if t.get("error"):
        return str(t["error"])
    return f"{t['status'] // 100}xx" if t.get("status") else "-"


def l7_summary(records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Counts a user looks at first: HTTP outcomes, DNS rcodes, TLS versions."""
    tx = records.get(TRANSACTIONS, [])
    dns = records.get(DNS, [])
    tls = records.get(TLS, [])
    return {
        "http": dict(Counter(_status_class(t) for t in tx).most_common()),
        "dns": dict(Counter(d["rcode"] or "no_response" for d in dns).most_common()),
        "tls": dict(Counter(h["version"] or "unknown" for h in tls).most_common()),
    }


def print_l7(records: dict[str, list[dict[str, Any]]], top: int, console: Console) -> None:
    """HTTP transactions (slowest and failed first), DNS and TLS summaries."""
    tx = records.get(TRANSACTIONS, [])
    dns = records.get(DNS, [])
    tls = records.get(TLS, [])
    summary = l7_summary(records)
    from rich.table import Table

    if tx:
        decrypted = sum(1 for t in tx if t.get("tls"))
        console.print(f"HTTP: {len(tx):,} transactions" + (f" ({decrypted:,} decrypted from TLS, marked 🔒)" if decrypted else "")
                      + "; " + ", ".join(f"{k} {v:,}" for k, v in summary["http"].items()))
        table = Table(title=f"HTTP transactions, errors and slowest first (top {min(top, len(tx))} of {len(tx):,})")
        for col, kw in (("client", {}), ("server", {}), ("method", {}), ("host", {}), ("path", {"max_width": 48}),
                        ("status", {"justify": "right"}), ("latency", {"justify": "right"}),
                        ("resp bytes", {"justify": "right"}), ("error", {})):
            table.add_column(col, **kw)

        def badness(t: dict[str, Any]) -> tuple:
            return (t.get("error") is not None, (t.get("status") or 0) >= 500, (t.get("status") or 0) >= 400,
                    t.get("latency_us") or 0)

        for t in heapq.nlargest(top, tx, key=badness):
            status = t.get("status")
            colour = "red" if (status or 0) >= 500 or t.get("error") else "yellow" if (status or 0) >= 400 else "green"
            table.add_row(
                _endpoint(t["client_ip"], t["client_port"]), _endpoint(t["server_ip"], t["server_port"]),
                # 🔒: read from TLS decrypted with the key log (--tls-keylog)
                _text(t.get("method")) + (" 🔒" if t.get("tls") else ""), _text(t.get("host")), _text(t.get("path")),
                f"[{colour}]{status if status is not None else '-'}[/]", _us(t.get("latency_us")),
                f"{t.get('response_body_size', 0):,}", _text(t.get("error")) if t.get("error") else "",
            )
        console.print(table)
    if dns:
        console.print(f"DNS: {len(dns):,} queries; " + ", ".join(f"{k} {v:,}" for k, v in summary["dns"].items()))
        table = Table(title=f"DNS queries, failures and slowest first (top {min(top, len(dns))} of {len(dns):,})")
        for col, kw in (("client", {}), ("server", {}), ("transport", {}), ("name", {"max_width": 48}),
                        ("type", {}), ("rcode", {}), ("latency", {"justify": "right"}), ("answers", {"justify": "right"})):
            table.add_column(col, **kw)

        def dns_badness(d: dict[str, Any]) -> tuple:
            return (d["rcode"] is None, d["rcode"] not in (None, "NOERROR"), d.get("latency_us") or 0)

        for d in heapq.nlargest(top, dns, key=dns_badness):
            table.add_row(d["client_ip"], d["server_ip"], d["transport"], _text(d["query_name"]), _text(d["query_type"]),
                          d["rcode"] or "[red]no response[/]", _us(d.get("latency_us")), str(len(d["answers"])))
        console.print(table)
    if tls:
        console.print(f"TLS: {len(tls):,} handshakes; " + ", ".join(f"{k} {v:,}" for k, v in summary["tls"].items()))
        table = Table(title=f"TLS handshakes (top {min(top, len(tls))} of {len(tls):,}, alerts first)")
        for col, kw in (("client", {}), ("server", {}), ("SNI", {}), ("version", {}), ("cipher suite", {}),
                        ("ALPN", {}), ("handshake", {"justify": "right"}), ("resumed", {}), ("alert", {})):
            table.add_column(col, **kw)
        for h in heapq.nlargest(top, tls, key=lambda h: (h.get("alert") is not None, h.get("handshake_ms") or 0)):
            ms = h.get("handshake_ms")
            table.add_row(
                _endpoint(h["client_ip"], h["client_port"]), _endpoint(h["server_ip"], h["server_port"]),
                _text(h.get("server_name")), _text(h.get("version")), _text(h.get("cipher_suite")),
                _text(h.get("alpn")), "-" if ms is None else f"{ms:.1f} ms", "yes" if h.get("resumed") else "no",
                f"[red]{h['alert']}[/]" if h.get("alert") else "",
            )
        console.print(table)


#: characters of a statement (and of an error reply) the queries table shows
STATEMENT_WIDTH = 60
ERROR_WIDTH = 40


def _cut(text: str | None, width: int) -> str | None:
    """``text`` at most ``width`` characters, an ellipsis marking what was cut."""
    if text is None or len(text) <= width:
        return text
    return text[:width - 1] + "…"


def _slowest(queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Queries slowest first; those without a latency (no reply, pub/sub messages) last."""
    return sorted(queries, key=lambda q: (q.get("latency_us") is not None, q.get("latency_us") or 0), reverse=True)


def queries_summary(queries: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``--json`` says of wire.queries: counts by status and operation (the 20 most
    seen), and the 10 slowest of those with a latency."""
    return {
        "count": len(queries),
        "by_status": dict(Counter(q["status"] for q in queries).most_common()),
        "by_operation": dict(Counter(q["operation"] for q in queries).most_common(20)),
        "slowest": [{"operation": q["operation"], "statement": q["statement"], "latency_us": q["latency_us"],
                     "status": q["status"]}
                    for q in _slowest(queries)[:10] if q.get("latency_us") is not None],
    }


def messaging_summary(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``--json`` says of wire.messaging: counts by status, API and error, and the
    records produced and fetched per topic."""
    produced: Counter[str] = Counter()
    fetched: Counter[str] = Counter()
    for c in calls:
        if c.get("records") and c.get("status") in ("ok", "sent"):
            (produced if c["api_key"] == 0 else fetched)[c.get("topic") or "?"] += c["records"]
    return {
        "count": len(calls),
        "own_traffic": sum(1 for c in calls if c.get("own_traffic")),
        "by_status": dict(Counter(c["status"] for c in calls).most_common()),
        "by_api": dict(Counter(c["api"] for c in calls).most_common(20)),
        "errors": dict(Counter(c["error"] for c in calls if c.get("error")).most_common(10)),
        "records_produced": dict(produced.most_common(20)),
        "records_fetched": dict(fetched.most_common(20)),
    }


def print_messaging(records: dict[str, list[dict[str, Any]]], console: Console) -> None:
    """Kafka calls (wire.messaging) per API: how many, errors, latency, records; then the
    most seen errors; nothing without them."""
    calls = records.get(MESSAGING, [])
    if not calls:
        return
    from rich.table import Table

    by_api: dict[str, list[dict[str, Any]]] = {}
    for c in calls:
        by_api.setdefault(c["api"], []).append(c)
    table = Table(title=f"Kafka calls by API ({len(calls):,}; wirestream's own: "
                        f"{sum(1 for c in calls if c.get('own_traffic')):,})")
    for col in ("API", "calls", "errors", "no reply", "p50", "p99", "records"):
        table.add_column(col, justify="left" if col == "API" else "right")
    for api, group in sorted(by_api.items(), key=lambda kv: -len(kv[1])):
        latencies = sorted(c["latency_us"] for c in group if c.get("latency_us") is not None)
        errors = sum(1 for c in group if c["status"] == "error")
        p50, p99 = (_us(latencies[min(len(latencies) - 1, int(q * len(latencies)))]) if latencies else "-"
                    for q in (0.5, 0.99))
        n_records = sum(c.get("records") or 0 for c in group)
        table.add_row(_text(api), f"{len(group):,}", f"[red]{errors:,}[/]" if errors else "0",
                      f"{sum(1 for c in group if c['status'] == 'no_reply'):,}", p50, p99,
                      f"{n_records:,}" if n_records else "-")
    console.print(table)
    errors_seen = Counter(c["error"] for c in calls if c.get("error"))
    if errors_seen:
        console.print("Kafka errors: " + "; ".join(f"{_text(e)} ×{n:,}" for e, n in errors_seen.most_common(5)))


def print_queries(records: dict[str, list[dict[str, Any]]], top: int, console: Console) -> None:
    """Database and cache calls (wire.queries), slowest first, and one line of their
    statuses and most seen error replies; nothing without them."""
    queries = records.get(QUERIES, [])
    if not queries:
        return
    from rich.table import Table

    table = Table(title=f"Queries (databases and caches), slowest first (top {min(top, len(queries))} "
                        f"of {len(queries):,})")
    for col, kw in (("client", {}), ("server", {}), ("protocol", {}), ("operation", {}), ("statement", {}),
                    ("status / error", {}), ("latency", {"justify": "right"}), ("rows", {"justify": "right"})):
        table.add_column(col, **kw)
    for q in _slowest(queries)[:top]:
        status = q.get("status")
        if status == "error":
            # SQLSTATE before the message (Redis's code is the message's first word already)
            code = f"{_text(q['error_code'])} " if q.get("error_code") and q.get("protocol") != "redis" else ""
            shown = f"[red]error: {code}{_text(_cut(q.get('error'), ERROR_WIDTH))}[/]"
        elif status == "no_reply":
            shown = "[yellow]no reply[/]"
        else:
            shown = _text(status)
        rows = q.get("rows")
        table.add_row(_endpoint(q["client_ip"], q["client_port"]), _endpoint(q["server_ip"], q["server_port"]),
                      _text(q.get("protocol")), _text(q.get("operation")),
                      _text(_cut(q.get("statement"), STATEMENT_WIDTH)), shown, _us(q.get("latency_us")),
                      "-" if rows is None else f"{rows:,}")
    console.print(table)
    statuses = Counter(q["status"] for q in queries)
    errors = Counter(q["error"] for q in queries if q.get("status") == "error" and q.get("error"))
    console.print(f"queries: {len(queries):,}; " + ", ".join(f"{k} {v:,}" for k, v in statuses.most_common())
                  + ("; most seen errors: " + "; ".join(f"{_text(_cut(e, ERROR_WIDTH))} ×{n:,}"
                                                        for e, n in errors.most_common(3)) if errors else ""))


def _operations(records: dict[str, list[dict[str, Any]]]) -> list[tuple[dict[str, Any], ServiceSummary]]:
    """Operations' windows (database and cache calls per operation) merged over the run,
    slowest p99 first: (one of its window records, for its names; the merge)."""
    from wirestream.processors.service_windows import merge_windows

    windows = [r for r in records.get(SERVICE_METRICS, []) if r.get("scope") == "operation"]
    names = {r["service"]: r for r in windows}
    merged = merge_windows(windows)

    def p99(s: ServiceSummary) -> float:
        return s.quantiles("latency")["p99"] or 0.0

    return [(names[k], s) for k, s in sorted(merged.items(), key=lambda kv: (-p99(kv[1]), kv[0]))]


def _operation_json(r: dict[str, Any], s: ServiceSummary) -> dict[str, Any]:
    return {"service": r["operation_service"], "protocol": r["operation_protocol"], "operation": r["operation"],
            "windows": s.windows, "requests": s.requests, "errors": s.errors_4xx + s.errors_5xx,
            "latency_us": s.quantiles("latency")}


def print_operations(records: dict[str, list[dict[str, Any]]], top: int, console: Console) -> None:
    """Per operation of each database, cache or gRPC service (its windows merged): calls,
    errors and latency percentiles, slowest p99 first; nothing without operation windows."""
    ops = _operations(records)
    if not ops:
        return
    from rich.table import Table

    table = Table(title=f"Operations (database, cache, gRPC and Kafka calls) by p99 latency (top {min(top, len(ops))} "
                        f"of {len(ops):,})")
    for col, kw in (("service", {}), ("protocol", {}), ("operation", {}), ("calls", {"justify": "right"}),
                    ("errors", {"justify": "right"}), ("p50", {"justify": "right"}), ("p90", {"justify": "right"}),
                    ("p99", {"justify": "right"})):
        table.add_column(col, **kw)
    for r, s in ops[:top]:
        q = s.quantiles("latency")
        errors = s.errors_4xx + s.errors_5xx
        table.add_row(_text(r["operation_service"]), _text(r["operation_protocol"]), _text(r["operation"]),
                      f"{s.requests:,}", f"[red]{errors:,}[/]" if errors else "0", _us(q["p50"]), _us(q["p90"]),
                      _us(q["p99"]))
    console.print(table)


def _services(records: dict[str, list[dict[str, Any]]]) -> list[ServiceSummary]:
    """Services over the whole run, busiest first."""
    from wirestream.processors.service_windows import merge_windows

    windows = [r for r in records.get(SERVICE_METRICS, []) if r.get("scope", "service") == "service"]
    merged = merge_windows(windows)
    return sorted(merged.values(), key=lambda s: (-(s.requests + s.connections), s.service))


def _topology(records: dict[str, list[dict[str, Any]]]) -> list[tuple[str, ServiceSummary, int]]:
    """Zone pairs then node pairs over the whole run: (scope, merged windows, bytes)."""
    from wirestream.processors.service_windows import merge_windows

    out = []
    for scope in ("zone_pair", "node_pair"):
        windows = [r for r in records.get(SERVICE_METRICS, []) if r.get("scope") == scope]
        nbytes: dict[str, int] = {}
        for r in windows:
            nbytes[r["service"]] = nbytes.get(r["service"], 0) + (r.get("bytes") or 0)
        merged = merge_windows(windows)
        out += [(scope, m, nbytes[m.service]) for m in sorted(merged.values(), key=lambda m: m.service)]
    return out


def _topology_json(scope: str, s: ServiceSummary, nbytes: int) -> dict[str, Any]:
    client, server = s.service.split(":", 1)[1].split(">", 1)
    return {"scope": scope, "client": client, "server": server, "windows": s.windows,
            "connections": s.connections, "bytes": nbytes, "handshake_rtt_us": s.quantiles("handshake_rtt")}


def _service_json(s: ServiceSummary) -> dict[str, Any]:
    return {
        "service": s.service, "windows": s.windows, "connections": s.connections,
        "requests": s.requests, "errors_4xx": s.errors_4xx, "errors_5xx": s.errors_5xx,
        "status_429": s.status_429, "worst_health": s.worst_health,
        "handshake_rtt_us": s.quantiles("handshake_rtt"), "latency_us": s.quantiles("latency"),
    }


_SEVERITY = {"critical": 0, "warning": 1, "info": 2}


def _kubernetes_lines(records: dict[str, list[dict[str, Any]]]) -> list[str]:
    """What Kubernetes identity added, when it did: NetworkPolicy verdicts of connections
    and flows (and the violations raised), and how many crossed zones."""
    from collections import Counter

    both = records.get(CONNECTIONS, []) + records.get(FLOWS, [])
    lines = []
    verdicts = Counter(r.get("policy_verdict") for r in both if r.get("policy_verdict"))
    if verdicts:
        violations = sum(1 for a in records.get(ALERTS, []) if a.get("kind") == "policy_violation")
        lines.append("network policy (connections and flows): " + ", ".join(
            f"{k} {v:,}" for k, v in sorted(verdicts.items())) + f"; violations {violations:,}")
    zoned = [r["cross_zone"] for r in both if r.get("cross_zone") is not None]
    if zoned:
        lines.append(f"cross-zone: {sum(zoned):,} of {len(zoned):,} connections and flows whose zones are known")
    return lines


def print_topology(records: dict[str, list[dict[str, Any]]], console: Console) -> None:
    """Connections between zones and between nodes (known from Kubernetes identity)."""
    from rich.table import Table

    pairs = _topology(records)
    if not pairs:
        return
    table = Table(title="Between zones and nodes (handshake RTT from the merged t-digests of their windows)")
    for col in ("between", "client side", "server side", "conns", "bytes", "handshake p50/p90/p99"):
        table.add_column(col, justify="right" if col in ("conns", "bytes", "handshake p50/p90/p99") else "left")
    for scope, s, nbytes in pairs:
        client, server = s.service.split(":", 1)[1].split(">", 1)
        kind = "zones" if scope == "zone_pair" else "nodes"
        rtt = s.quantiles("handshake_rtt")
        table.add_row(kind + (" (cross-zone)" if scope == "zone_pair" and client != server else ""),
                      _text(client), _text(server), f"{s.connections:,}", f"{nbytes:,}",
                      "/".join(_us(rtt[k]) for k in ("p50", "p90", "p99")))
    console.print(table)


def print_services(records: dict[str, list[dict[str, Any]]], top: int, console: Console) -> None:
    """Per-service table (windows merged over the run) and the alerts."""
    from rich.table import Table

    services = _services(records)
    if services:
        table = Table(title=f"Services, busiest first (top {min(top, len(services))} of {len(services):,}; "
                            "percentiles from the merged t-digests of their windows)")
        for col in ("service", "windows", "conns", "requests", "4xx", "5xx", "429", "error rate",
                    "handshake p50/p90/p99", "latency p50/p90/p99", "worst health"):
            table.add_column(col, justify="left" if col in ("service", "worst health") else "right")
        colour = {"healthy": "green", "degraded": "yellow", "severe": "red"}
        for s in services[:top]:
            rtt, lat = s.quantiles("handshake_rtt"), s.quantiles("latency")
            table.add_row(
                s.service, str(s.windows), f"{s.connections:,}", f"{s.requests:,}",
                f"{s.errors_4xx:,}", f"{s.errors_5xx:,}", f"{s.status_429:,}",
                f"{(s.errors_4xx + s.errors_5xx) / s.requests:.1%}" if s.requests else "-",
                "/".join(_us(rtt[k]) for k in ("p50", "p90", "p99")),
                "/".join(_us(lat[k]) for k in ("p50", "p90", "p99")),
                f"[{colour.get(s.worst_health, 'white')}]{s.worst_health}[/]",
            )
        console.print(table)
    alerts = records.get(ALERTS, [])
    if alerts:
        console.print("alerts: " + ", ".join(f"{k} {v:,}" for k, v in
                                             Counter(a["kind"] for a in alerts).most_common()))
        table = Table(title=f"Alerts, most severe first (top {min(top, len(alerts))} of {len(alerts):,})")
        for col in ("severity", "kind", "service", "window start", "summary"):
            table.add_column(col)
        ordered = sorted(alerts, key=lambda a: (_SEVERITY.get(a["severity"], 3), a["ts_us"], a["kind"]))
        for a in ordered[:top]:
            table.add_row(a["severity"], a["kind"], a["service"] or "",
                          a["evidence"].get("window_start_ts_us", ""), a["summary"])
        console.print(table)


def _live_json(f: Any) -> dict[str, Any]:
    """What a live capture adds to a source's summary: mode, kernel and ring counters."""
    if not f.format.startswith("live"):
        return {}
    return {"mode": f.mode, "fallback_reason": f.fallback_reason, "counters": dict(f.counters),
            "socket_events": dict(f.socket_events), "capture_s": round(f.elapsed_s, 3),
            "capture_cpu_s": round(f.cpu_s, 3),
            "fd_snapshot": [dataclasses.asdict(row) for row in getattr(f, "fd_snapshot", [])]}


@dataclass
class StageTotals:
    """One processor stage's final reports on ``wire.stats``, summed over its sources,
    partitions and workers. Each report counts only its own part (see
    ``PacketPipeline.end_of_input``), so the sum is the stage's total."""

    received: int = 0
    emitted: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)


def processor_totals(stats: list[dict[str, Any]]) -> dict[str, StageTotals]:
    """Sum the processor stages' final ``wire.stats`` reports, stage by stage (sorted by
    name). A final report sent twice for one (stage, source, partition) counts once: a
    packet worker that took over from a checkpoint sends again, identical, the report its
    crashed predecessor sent after that checkpoint (docs/checkpoints.md)."""
    totals: dict[str, StageTotals] = {}
    finals = {}
    for s in stats:
        if s["stage"].startswith("processor") and s["final"]:
            finals[(s["stage"], s["source_id"], s["partition"])] = s
    for s in finals.values():
        total = totals.setdefault(s["stage"], StageTotals())
        total.received += s["received"]
        total.emitted.update(s["emitted"])
        total.dropped.update(s["dropped"])
        total.counters.update(s["counters"])
    return dict(sorted(totals.items()))


def _icmp_error(f: dict[str, Any]) -> bool:
    return f.get("quoted_transport") is not None


def print_flows(records: dict[str, list[dict[str, Any]]], top: int, console: Console) -> None:
    """UDP flows and ICMP exchanges: ICMP errors first (they name the flow they are about
    and a path MTU), then the busiest."""
    flows = records.get(FLOWS, [])
    if not flows:
        return
    from rich.table import Table

    kinds = Counter(f["transport"] for f in flows)
    services = Counter(f["service"] for f in flows if f.get("service"))
    errors = sum(1 for f in flows if _icmp_error(f))
    console.print(f"flows: {', '.join(f'{k} {v:,}' for k, v in kinds.most_common())}"
                  + (f"; services {', '.join(f'{k} {v:,}' for k, v in services.most_common())}" if services else "")
                  + (f"; [red]ICMP errors {errors:,}[/]" if errors else ""))
    table = Table(title=f"UDP and ICMP flows, ICMP errors and busiest first (top {min(top, len(flows))} of {len(flows):,})")
    for col, kw in (("client", {}), ("server", {}), ("proto", {}), ("service / ICMP", {}),
                    ("pkts c→s/s→c", {"justify": "right"}), ("bytes c→s/s→c", {"justify": "right"}),
                    ("state", {}), ("about", {})):
        table.add_column(col, **kw)

    def rank(f: dict[str, Any]) -> tuple:
        return (_icmp_error(f), f["frame_bytes_c2s"] + f["frame_bytes_s2c"])

    for f in heapq.nlargest(top, flows, key=rank):
        icmp = f["transport"] == "icmp"
        what = f"type {f['icmp_type']} code {f['icmp_code']}" if icmp else (f.get("service") or "-")
        about = ""
        if _icmp_error(f):
            quoted = (_endpoint(f["quoted_src_ip"], f["quoted_src_port"]) if f.get("quoted_src_port") is not None
                      else f["quoted_src_ip"])
            to = (_endpoint(f["quoted_dst_ip"], f["quoted_dst_port"]) if f.get("quoted_dst_port") is not None
                  else f["quoted_dst_ip"])
            about = f"[red]{f['quoted_transport']} {quoted} → {to}[/]"
            if f.get("path_mtu"):
                about += f", path MTU {f['path_mtu']}"
        table.add_row(
            f["client_ip"] if icmp else _endpoint(f["client_ip"], f["client_port"]),
            f["server_ip"] if icmp else _endpoint(f["server_ip"], f["server_port"]),
            "icmpv6" if icmp and f["ip_version"] == 6 else f["transport"], what,
            f"{f['packets_c2s']:,}/{f['packets_s2c']:,}", f"{f['bytes_c2s']:,}/{f['bytes_s2c']:,}",
            f["conn_state"], about,
        )
    console.print(table)
    print_drops(flows, "flows", top, console)


def print_syscalls(conns: list[dict[str, Any]], top: int, console: Console) -> None:
    """Live eBPF capture: the connections whose processes spent longest inside data
    syscalls on their sockets (``client_syscalls``/``server_syscalls``), per side calls,
    bytes and time (a receive's time includes waiting for the peer)."""
    counted = [c for c in conns if c.get("client_syscalls") or c.get("server_syscalls")]
    if not counted:
        return

    def spent(c: dict[str, Any]) -> int:
        return sum(s["send_time_us"] + s["recv_time_us"] for s in (c.get("client_syscalls"),
                                                                      c.get("server_syscalls")) if s)

    def side(s: dict[str, Any] | None) -> str:
        if not s:
            return "-"
        return (f"{s['send_calls']:,}/{s['recv_calls']:,} calls, {s['send_bytes']:,}/{s['recv_bytes']:,} B, "
                f"{_us(s['send_time_us'])}/{_us(s['recv_time_us'])}")

    from rich.table import Table

    table = Table(title=f"Socket syscalls by time inside them (top {min(top, len(counted))} of {len(counted):,};"
                        " send/recv)")
    for col in ("client", "process", "client's calls, bytes, time", "server", "process", "server's"):
        table.add_column(col)
    for c in heapq.nlargest(top, counted, key=spent):
        table.add_row(_endpoint(c["client_ip"], c["client_port"]), str(c.get("client_process") or "-"),
                      side(c.get("client_syscalls")), _endpoint(c["server_ip"], c["server_port"]),
                      str(c.get("server_process") or "-"), side(c.get("server_syscalls")))
    console.print(table)


def print_fd_snapshot(files: list[Any], top: int, console: Console) -> None:
    """Live eBPF capture: open descriptors and sockets per container, as last counted."""
    rows = [row for f in files for row in getattr(f, "fd_snapshot", [])]
    if not rows:
        return
    from rich.table import Table

    table = Table(title=f"Open descriptors by container, most sockets first (top {min(top, len(rows))} "
                        f"of {len(rows):,})")
    for col, kw in (("container", {}), ("processes", {"justify": "right"}), ("open fds", {"justify": "right"}),
                    ("sockets", {"justify": "right"})):
        table.add_column(col, **kw)
    for row in heapq.nlargest(top, rows, key=lambda r: r.open_sockets):
        table.add_row(row.container_id[:12] if row.container_id else "(no container)", f"{row.processes:,}",
                      f"{row.open_fds:,}", f"{row.open_sockets:,}")
    console.print(table)


def print_drops(records: list[dict[str, Any]], what: str, top: int, console: Console) -> None:
    """One line under a table when any of its records had packets dropped by the kernel
    (``drops``, from wire.drops): the total by reason, then the records that had most."""
    dropped = [r for r in records if r.get("drops")]
    if not dropped:
        return
    by_reason: Counter[str] = Counter()
    for r in dropped:
        by_reason.update(r["drops"])
    worst = heapq.nsmallest(top, dropped, key=lambda r: -sum(r["drops"].values()))
    console.print(
        f"[yellow]kernel drops[/] on {len(dropped):,} {what}: "
        + ", ".join(f"{k} {v:,}" for k, v in by_reason.most_common()) + "; most: "
        + "; ".join(f"{_endpoint(r['client_ip'], r['client_port'])} → {_endpoint(r['server_ip'], r['server_port'])} "
                    + ", ".join(f"{k} {v:,}" for k, v in sorted(r["drops"].items())) for r in worst))


def summary_json(result: Any) -> dict[str, Any]:
    conns = result.records.get(CONNECTIONS, [])
    return {
        "files": [
            {"path": f.path, "format": f.format, "frames": f.frames, "packets": f.packets,
             "dropped": dict(f.dropped), **_live_json(f)}
            for f in result.files
        ],
        "failed": [str(e) for e in result.failed],
        "records": {t: len(v) for t, v in result.records.items()},
        "connection_states": dict(Counter(c["state"] for c in conns)),
        "flows": dict(Counter(f["transport"] for f in result.records.get(FLOWS, []))),
        "top_trouble": heapq.nlargest(10, conns, key=trouble_key),
        "l7": l7_summary(result.records),
        # always there (zeros without queries), so that a reader's keys do not come and go
        "queries": queries_summary(result.records.get(QUERIES, [])),
        "query_operations": [_operation_json(*o) for o in _operations(result.records)],
        "messaging": messaging_summary(result.records.get(MESSAGING, [])),
        "services": [_service_json(s) for s in _services(result.records)],
        "topology": [_topology_json(*t) for t in _topology(result.records)],
        "alerts": dict(Counter(a["kind"] for a in result.records.get(ALERTS, [])).most_common()),
        "stages": {stage: {"received": t.received, "emitted": dict(t.emitted),
                           "dropped": dict(t.dropped), "counters": dict(t.counters)}
                   for stage, t in processor_totals(result.stats).items()},
        "stats": result.stats,
        "elapsed_s": round(result.elapsed_s, 3),
    }


def report(result: Any, *, as_json: bool, top: int, out_dir: str | None) -> None:
    """What ``analyze`` and ``capture`` end with: the records to ``DIR/<topic>.jsonl``
    (``out_dir``), unless the run streamed them there already (``result.jsonl_dir``),
    and the summary as JSON or as tables on stdout."""
    if out_dir and getattr(result, "jsonl_dir", None) != out_dir:
        from wirestream.sinks.jsonl import write_jsonl

        write_jsonl(out_dir, result.records)
    if as_json:
        json.dump(summary_json(result), sys.stdout, indent=2)
        print()
    else:
        print_summary(result, top=top, out_dir=out_dir)


def print_summary(result: Any, top: int = 15, out_dir: str | None = None, console: Console | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    # Piped or redirected output gets a fixed, wide layout instead of rich's 80 columns.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    conns = result.records.get(CONNECTIONS, [])
    frames = sum(f.frames for f in result.files)
    packets = sum(f.packets for f in result.files)
    states = Counter(c["state"] for c in conns)
    live = [f for f in result.files if f.format.startswith("live")]
    what = (f"live capture on {live[0].path} ({live[0].mode})" if live
            else f"{len(result.files)} file(s)")
    console.print(
        f"[bold]{what}[/], {frames:,} frames, {packets:,} TCP/UDP/ICMP/SCTP packets, "
        f"{len(conns):,} TCP connections in {result.elapsed_s:.1f} s"
    )
    for f in live:
        c = f.counters
        lost = {k: v for k, v in f.dropped.items() if k in ("ring_full", "socket_events_lost") and v}
        console.print(
            f"capture ({f.mode}): {c.get('ring_packets', 0):,} frames through the ring, "
            f"{', '.join(f'{k} {v:,}' for k, v in lost.items()) or 'nothing lost'}; "
            f"{f.cpu_s / max(1, f.frames) * 1e6:.1f} µs CPU per frame"
            + (f"; GSO super-packets {c['gso_packets']:,} ({c['gso_segments']:,} segments)"
               if c.get("gso_packets") else "")
            + (f"; socket events {sum(f.socket_events.values()):,} "
               f"({', '.join(f'{k} {v:,}' for k, v in sorted(f.socket_events.items()))})"
               if f.socket_events else ""))
    if conns:
        console.print("states: " + ", ".join(f"{k} {v:,}" for k, v in states.most_common()))
        retrans = sum(c["retransmissions"] for c in conns)
        console.print(f"retransmissions: {retrans:,}; degraded/severe connections: "
                      f"{sum(1 for c in conns if c['health'] != 'healthy'):,}")
    for line in _kubernetes_lines(result.records):
        console.print(line)
    if conns:
        table = Table(title=f"Connections ranked by trouble (top {min(top, len(conns))} of {len(conns):,})")
        for col, kw in (
            ("client", {}), ("server", {}), ("state", {}), ("pkts c→s/s→c", {"justify": "right"}),
            ("bytes c→s/s→c", {"justify": "right"}), ("retrans", {"justify": "right"}),
            ("rate", {"justify": "right"}), ("dup ack", {"justify": "right"}),
            ("zero win", {"justify": "right"}), ("handshake", {"justify": "right"}), ("health", {}),
        ):
            table.add_column(col, **kw)
        colour = {"healthy": "green", "degraded": "yellow", "severe": "red"}
        for c in heapq.nlargest(top, conns, key=trouble_key):
            table.add_row(
                _endpoint(c["client_ip"], c["client_port"]),
                _endpoint(c["server_ip"], c["server_port"]),
                c["state"],
                f"{c['packets_c2s']:,}/{c['packets_s2c']:,}",
                f"{c['bytes_c2s']:,}/{c['bytes_s2c']:,}",
                str(c["retransmissions"]),
                f"{c['retransmission_rate'] * 100:.1f}%",
                str(c.get("duplicate_acks", 0)),
                str(c.get("zero_window", 0)),
                _us(c["handshake_rtt_us"]),
                f"[{colour.get(c['health'], 'white')}]{c['health']}[/]",
            )
        console.print(table)
        print_drops(conns, "connections", top, console)
        print_syscalls(conns, top, console)
    print_fd_snapshot(result.files, top, console)
    print_flows(result.records, top, console)
    print_l7(result.records, top, console)
    print_queries(result.records, top, console)
    print_messaging(result.records, console)
    print_operations(result.records, top, console)
    print_services(result.records, top, console)
    print_topology(result.records, console)

    stats = Table(title="Counters by stage")
    stats.add_column("stage")
    stats.add_column("received", justify="right")
    stats.add_column("emitted", justify="right")
    stats.add_column("dropped / not analysed (reason = count)")
    for f in result.files:
        stats.add_row(
            f"producer.{'live' if f.format.startswith('live') else 'pcap'} {f.path}",
            f"{f.frames:,} frames", f"{f.packets:,} packets",
            ", ".join(f"{k} = {v:,}" for k, v in sorted(f.dropped.items())) or "-",
        )
    by_stage = processor_totals(result.stats)
    for stage, total in by_stage.items():
        stats.add_row(
            # the windows stage reads observation batches, not packets: it reports no count
            stage, f"{total.received:,} packets" if stage == PACKETS_STAGE else "-",
            ", ".join(f"{v:,} → {t}" for t, v in sorted(total.emitted.items())) or "0",
            ", ".join(f"{k} = {v:,}" for k, v in sorted(total.dropped.items())) or "-",
        )
    console.print(stats)
    counters: Counter[str] = Counter()
    for total in by_stage.values():
        counters.update(total.counters)
    if counters:
        console.print("processor counters: " + ", ".join(
            f"{k} {v:,}" for k, v in sorted(counters.items()) if k != "batches_expected"))
    if out_dir:
        console.print(f"records written to {out_dir}/<topic>.jsonl")
