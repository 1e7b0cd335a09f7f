"""`analyze --no-l7`: TCP connections only, no HTTP/DNS/TLS analysis at all.

Two runs of `wirestream analyze` on the same real captures, which hold HTTP, DNS (over UDP,
which only the L7 stage turns into records) and TLS: with L7 analysis they give
transactions, DNS queries and TLS handshakes and the L7 stage's counters; with ``--no-l7``
they give the same connection records and nothing of L7 (no records, no L7 counters).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import DATA

from wirestream.topics import CONNECTIONS, DNS, TLS, TRANSACTIONS

# HTTP and DNS (a page load: 61 transactions, its name lookups), TLS 1.2 handshakes
CAPTURES = [str(DATA / "chrissanders" / "http_espn.pcapng"), str(DATA / "zeek-tls" / "ecdhe.pcap")]
L7_TOPICS = (TRANSACTIONS, DNS, TLS)
# what the L7 stage counts (processors/l7): per-protocol counters and drop reasons
L7_COUNTER_PREFIXES = ("http_", "dns_", "tls_", "l7_", "udp_not_analysed", "tcp_gap_bytes")


def analyze(out: Path, *flags: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "wirestream", "analyze", *CAPTURES, "--out", str(out), "--json",
         "--no-progress", "--workers", "1", *flags],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def records(out: Path, topic: str) -> list[dict[str, Any]]:
    with open(out / f"{topic}.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def l7_counters(summary: dict[str, Any]) -> dict[str, int]:
    """The L7 counters and drop reasons in the packet processors' reports."""
    found: dict[str, int] = {}
    for s in summary["stats"]:
        if s["stage"] != "processor.packets":
            continue
        for name, n in {**s["counters"], **s["dropped"]}.items():
            if name.startswith(L7_COUNTER_PREFIXES):
                found[name] = found.get(name, 0) + n
    return found


def comparable(connections: list[dict[str, Any]]) -> list[str]:
    """Connection records without what names the run (its source id and ids derived from it)."""
    return sorted(json.dumps({k: v for k, v in r.items() if k not in ("source_id", "connection_id")},
                             sort_keys=True) for r in connections)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    result = {}
    for name, flags in (("l7", ()), ("no_l7", ("--no-l7",))):
        out = tmp_path_factory.mktemp(name)
        result[name] = (out, analyze(out, *flags))
    return result


def test_with_l7_the_captures_give_transactions_dns_and_tls(runs) -> None:
    """The control: these captures do hold what --no-l7 must leave out."""
    out, summary = runs["l7"]
    for topic in L7_TOPICS:
        assert records(out, topic), f"no {topic} records with L7 analysis on"
        assert summary["records"][topic] == len(records(out, topic))
    assert len(records(out, TRANSACTIONS)) == 61  # http_espn's 61 transactions (tshark)
    counters = l7_counters(summary)
    assert any(k.startswith("http_") for k in counters), counters
    assert any(k.startswith("dns_") for k in counters), counters
    assert any(k.startswith("l7_connections.") for k in counters), counters


def test_no_l7_gives_the_same_connections_and_nothing_of_l7(runs) -> None:
    l7_out, l7_summary = runs["l7"]
    out, summary = runs["no_l7"]
    for topic in L7_TOPICS:
        assert records(out, topic) == [], f"{topic} records with --no-l7"
        assert summary["records"].get(topic, 0) == 0, topic
    assert l7_counters(summary) == {}, "L7 counters with --no-l7"
    connections = records(out, CONNECTIONS)
    assert len(connections) == len(records(l7_out, CONNECTIONS)) > 0
    assert comparable(connections) == comparable(records(l7_out, CONNECTIONS))
    assert summary["records"][CONNECTIONS] == l7_summary["records"][CONNECTIONS]
