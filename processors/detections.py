"""Detections: conditions on a closed service window that raise a ``wire.alerts`` record.

Each detector reads one window's aggregates (:class:`WindowCounts`: plain counts, which
``processors.service_windows.Window`` hands over) and returns at most one alert per
condition per service (or per service and client) per window, with the counts that
triggered it as evidence: a storm of a thousand resets is one alert saying "1000", not a
thousand alerts. Thresholds are :class:`Thresholds`
fields, settable with ``--alert-threshold NAME=VALUE`` (``wirestream process`` and
``analyze``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .findings import COUNTER_NAMES, CREDENTIALS, PII, health_band


@dataclass
class Thresholds:
    """When each detector fires (per service, or per service and client, per window)."""

    #: data packets a window needs before its retransmission band means anything
    retrans_min_data_packets: int = 100
    #: connections that saw a zero window
    zero_window_connections: int = 10
    #: connections reset or refused
    reset_connections: int = 20
    #: SYNs never answered plus handshakes never completed
    half_open_connections: int = 50
    #: 5xx responses, at least this many and this share of the requests
    errors_5xx: int = 10
    errors_5xx_share: float = 0.1
    #: 401 and 403 responses to one client
    auth_failures_per_client: int = 20
    #: 429 responses to one client
    rate_limited_per_client: int = 10
    #: the same request (method, host, target) repeated by one client within
    #: ``retry_interval_us`` of the previous one, this many times
    retries_per_client: int = 10
    retry_interval_us: int = 1_000_000
    #: requests that got no response
    timeouts: int = 5
    #: requests (HTTP, DNS, database and cache calls) slower than ``slow_request_us`` ...
    slow_request_us: int = 1_000_000
    #: ... at least this many in a window
    slow_requests: int = 10
    #: database and cache calls answered by an error, at least this many and this share of
    #: the window's requests (a deploy's broken query, a constraint violated in a loop)
    query_errors: int = 20
    query_errors_share: float = 0.2
    #: NXDOMAIN answers to one client
    nxdomain_per_client: int = 20
    #: a service's busiest replica carries this many times the mean load of its replicas
    #: (requests, or connections without requests) ...
    backend_imbalance: float = 2.0
    #: ... in windows of at least this many requests plus connections ...
    backend_imbalance_min_requests: int = 100
    #: ... this many windows in a row
    backend_imbalance_windows: int = 3

    @classmethod
    def parse(cls, assignments: list[str]) -> Thresholds:
        """``["errors_5xx=5", "timeouts=1"]`` -> Thresholds with those fields changed."""
        t = cls()
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for a in assignments:
            name, sep, value = a.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in fields:
                raise ValueError(f"unknown alert threshold {a!r} (known: {', '.join(fields)})")
            try:
                setattr(t, name, float(value) if fields[name].type == "float" else int(value))
            except ValueError:
                raise ValueError(f"alert threshold {name} needs a number, not {value!r}") from None
        return t


# (in Finding order: the order of the alerts' evidence and summaries)
_CREDENTIAL_COUNTERS = tuple(COUNTER_NAMES[f] for f in CREDENTIALS)
_PII_COUNTERS = tuple(COUNTER_NAMES[f] for f in PII)


def alert_id(*parts: object) -> str:
    """Stable id: the same condition in the same window always has the same id, so a
    window re-emitted after a restart does not count as a new alert downstream."""
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class WindowCounts:
    """What the detectors read of one closed window of one service: plain counts, so
    that detecting needs nothing of how the windows are kept."""

    start_us: int
    length_us: int
    #: service-wide counters (``processors.service_windows``' ``_COUNTS``)
    counts: Mapping[str, int]
    #: per client IP, the counters of what only that client did (auth failures, 429s,
    #: retries, NXDOMAINs, findings by ``processors.findings.COUNTER_NAMES``)
    clients: Mapping[str, Mapping[str, int]]


def detect(w: WindowCounts, source_id: str, service: str, previous_health: str | None,
           t: Thresholds) -> Iterator[dict[str, Any]]:
    """The alerts of one closed window."""
    window = f"{w.start_us}-{w.start_us + w.length_us}"

    def alert(kind: str, severity: str, summary: str, client: str | None = None,
              **evidence: object) -> dict[str, Any]:
        ev = {"window_start_ts_us": str(w.start_us), "window_end_ts_us": str(w.start_us + w.length_us)}
        if client is not None:
            ev["client"] = client
        ev.update((k, str(v)) for k, v in evidence.items())
        return {
            "alert_id": alert_id(source_id, kind, service, client, window),
            "source_id": source_id,
            "ts_us": w.start_us + w.length_us,
            "kind": kind,
            "severity": severity,
            "summary": summary,
            "connection_id": None,
            "service": service,
            "evidence": ev,
            # about a service's window, not one connection: no connection or Community ID
            "community_id": None,
        }

    c = w.counts
    if c["data_packets"] >= t.retrans_min_data_packets:
        rate = c["retrans_data"] / c["data_packets"]
        band = health_band(rate)
        if band != "healthy" and band != previous_health:
            yield alert("retransmission_band", "critical" if band == "severe" else "warning",
                        f"{service}: retransmissions {rate:.1%} of data packets, now {band}"
                        f" (was {previous_health or 'unknown'})",
                        rate=f"{rate:.6f}", band=band, previous_band=previous_health or "unknown",
                        retransmitted=c["retrans_data"], data_packets=c["data_packets"])
    if c["zero_window_connections"] >= t.zero_window_connections:
        yield alert("zero_window_storm", "warning",
                    f"{service}: {c['zero_window_connections']} connections hit a zero window "
                    "(a receiver cannot keep up)",
                    connections=c["zero_window_connections"], zero_windows=c["zero_windows"],
                    threshold=t.zero_window_connections)
    resets = c["reset"] + c["refused"]
    if resets >= t.reset_connections:
        yield alert("reset_storm", "warning",
                    f"{service}: {resets} connections reset or refused",
                    reset=c["reset"], refused=c["refused"], connections=c["connections"],
                    threshold=t.reset_connections)
    half_open = c["incomplete_handshake"] + c["half_open"]
    if half_open >= t.half_open_connections:
        yield alert("syn_flood", "critical",
                    f"{service}: {half_open} half-open connections (SYNs without a completed "
                    "handshake)",
                    unanswered_syns=c["incomplete_handshake"], half_open=c["half_open"],
                    connections=c["connections"], threshold=t.half_open_connections)
    requests = c["requests"]
    if c["errors_5xx"] >= t.errors_5xx and c["errors_5xx"] >= t.errors_5xx_share * requests:
        yield alert("errors_5xx_spike", "critical",
                    f"{service}: {c['errors_5xx']} of {requests} responses were 5xx",
                    errors_5xx=c["errors_5xx"], requests=requests, threshold=t.errors_5xx,
                    share_threshold=t.errors_5xx_share)
    if c.get("slow_requests", 0) >= t.slow_requests:
        yield alert("slow_requests", "warning",
                    f"{service}: {c['slow_requests']} requests slower than {t.slow_request_us / 1000:g} ms",
                    slow_requests=c["slow_requests"], requests=requests, threshold_us=t.slow_request_us)
    if c.get("query_errors", 0) >= t.query_errors and c["query_errors"] >= t.query_errors_share * requests:
        yield alert("query_error_burst", "warning",
                    f"{service}: {c['query_errors']} of {requests} database and cache calls failed",
                    query_errors=c["query_errors"], requests=requests, threshold=t.query_errors,
                    share_threshold=t.query_errors_share)
    if c["no_response"] >= t.timeouts:
        yield alert("request_timeouts", "warning",
                    f"{service}: {c['no_response']} requests got no response",
                    no_response=c["no_response"], requests=requests, threshold=t.timeouts)
    for client in sorted(w.clients):
        k = w.clients[client]
        if k.get("auth_failures", 0) >= t.auth_failures_per_client:
            yield alert("auth_failure_burst", "warning",
                        f"{client} got {k['auth_failures']} 401/403 responses from {service}",
                        client, auth_failures=k["auth_failures"],
                        threshold=t.auth_failures_per_client)
        if k.get("rate_limited", 0) >= t.rate_limited_per_client:
            yield alert("rate_limited", "info",
                        f"{service} answered {client} with 429 {k['rate_limited']} times",
                        client, status_429=k["rate_limited"], threshold=t.rate_limited_per_client)
        if k.get("retries", 0) >= t.retries_per_client:
            yield alert("retry_storm", "warning",
                        f"{client} repeated the same request to {service} {k['retries']} times "
                        f"within {t.retry_interval_us / 1e6:g} s each",
                        client, retries=k["retries"], threshold=t.retries_per_client)
        creds = {name: k[name] for name in _CREDENTIAL_COUNTERS if k.get(name)}
        if creds:
            yield alert("cleartext_credentials", "critical",
                        f"{client} sent credentials to {service} without TLS ("
                        + ", ".join(f"{n} {v}" for n, v in creds.items()) + ")",
                        client, **creds)
        pii = {name: k[name] for name in _PII_COUNTERS if k.get(name)}
        if pii:
            yield alert("pii_in_cleartext", "critical",
                        f"payment card numbers or other PII between {client} and {service} "
                        "without TLS (" + ", ".join(f"{n} {v}" for n, v in pii.items()) + ")",
                        client, **pii)
        if k.get("nxdomain", 0) >= t.nxdomain_per_client:
            yield alert("nxdomain_burst", "warning",
                        f"{client} got {k['nxdomain']} NXDOMAIN answers from {service}",
                        client, nxdomain=k["nxdomain"], service_queries=c["dns_queries"],
                        threshold=t.nxdomain_per_client)


def detect_imbalance(w: WindowCounts, source_id: str, service: str, record: Mapping[str, Any], streak: int,
                     t: Thresholds) -> dict[str, Any] | None:
    """``backend_imbalance``: one replica of a service carried ``t.backend_imbalance`` times
    its replicas' mean load for ``t.backend_imbalance_windows`` windows in a row
    (``streak``: the windows so far, this one included). Raised once per streak, at the
    window that makes it sustained; the window's record has the per-pod shares."""
    if streak != t.backend_imbalance_windows:
        return None
    window = f"{w.start_us}-{w.start_us + w.length_us}"
    hot, share = record["hot_backend"], record["hot_backend_share"]
    return {
        "alert_id": alert_id(source_id, "backend_imbalance", service, None, window),
        "source_id": source_id,
        "ts_us": w.start_us + w.length_us,
        "kind": "backend_imbalance",
        "severity": "warning",
        "summary": (f"{service}: replica {hot} carried {record['backend_imbalance']:.1f}x the mean load of "
                    f"{len(record['backends'])} replicas ({share:.0%}) for {streak} windows in a row"),
        "connection_id": None,
        "service": service,
        "evidence": {"window_start_ts_us": str(w.start_us), "window_end_ts_us": str(w.start_us + w.length_us),
                     "hot_backend": str(hot), "imbalance": f"{record['backend_imbalance']:.3f}",
                     "share": f"{share:.4f}", "replicas": str(len(record["backends"])), "windows": str(streak),
                     "threshold": str(t.backend_imbalance)},
        "community_id": None,
    }
