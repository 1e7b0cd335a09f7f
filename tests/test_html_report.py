"""``analyze --html``: the report, opened in a real browser without a network.

The report of a bundled capture (tests/data/chrissanders/http_espn.pcapng: one client,
13 web servers) and of a generated one (three services of 10 connections each, their
requests' latencies known, over several windows) is opened in headless Chromium (Debian's
``chromium``, driven by Playwright from PyPI), offline: every request the page makes must
be for the file itself. Against the run's own JSON lines (``--out``): the map has one
node per client and service and one edge per client/service pair, with the connections
and requests of that pair; clicking an edge lists its connections and slowest requests;
each service's time series has one point per window; the tables sort and filter. A
screenshot of each is kept in the test's directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from helpers import DATA, analyze_to, import_or_require, needs, read_jsonl
from synthetic_http import Service, write_capture

CHROMIUM = shutil.which("chromium")
pytestmark = needs(None if CHROMIUM else "no chromium (scripts/install --test installs Debian's)")


def _report(pcap: Path, tmp: Path) -> tuple[Path, Path, dict[str, Any]]:
    out = tmp / "out"
    html = tmp / "report.html"
    analyze_to(pcap, out, "--html", str(html))
    text = html.read_text()
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text,
                                re.S).group(1).replace("<\\/", "</"))
    return out, html, data


def _pairs(out: Path) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
    """Connections and requests per (client, service), from the JSON lines (no Kubernetes
    identity here: a client is its address, a service its ip:port)."""
    conns = Counter((r["client_ip"], f"{r['server_ip']}:{r['server_port']}")
                    for r in read_jsonl(out / "wire.connections.jsonl"))
    reqs = Counter((r["client_ip"], f"{r['server_ip']}:{r['server_port']}")
                   for r in read_jsonl(out / "wire.transactions.jsonl"))
    return conns, reqs


def _browse(html: Path, shot: Path, check: Any) -> None:
    """Open ``html`` offline in headless Chromium, run ``check(page)``, keep a screenshot."""
    sync_api = import_or_require("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        try:
            context = browser.new_context(offline=True, viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            errors: list[str] = []
            requests: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.as_uri())
            check(page)
            page.screenshot(path=str(shot), full_page=True)
            assert errors == []
            assert requests == [html.as_uri()]  # nothing fetched: the file is the whole report
        finally:
            browser.close()


def _check_map(page: Any, data: dict[str, Any], conns: Counter, reqs: Counter) -> None:
    edges = {(e["source"], e["target"]): e for e in data["edges"]}
    assert set(edges) == set(conns) | set(reqs)
    for pair, e in edges.items():
        assert (e["connections"], e["requests"]) == (conns[pair], reqs[pair]), pair
    nodes = {n for pair in edges for n in pair}
    assert {n["id"] for n in data["nodes"]} == nodes
    assert page.locator("#service-map .node").count() == len(nodes)
    assert page.locator("#service-map .edge").count() == len(edges)
    # clicking an edge shows its connections (worst first) and slowest requests
    for e in sorted(data["edges"], key=lambda e: -e["requests"])[:3]:
        page.locator(f'#service-map .edge-hit[data-edge="{e["id"]}"]').dispatch_event("click")
        assert page.inner_text("#edge-detail h3") == f"{e['source']} → {e['target']}"
        assert page.locator("#edge-connections tbody tr").count() == min(20, e["connections"])
        assert page.locator("#edge-requests tbody tr").count() == min(20, e["requests"])


def _check_series(page: Any, out: Path) -> None:
    windows = Counter(w["service"] for w in read_jsonl(out / "wire.service-metrics.jsonl")
                      if w.get("scope", "service") == "service")
    assert windows
    charts = page.locator("svg.series")
    assert charts.count() == min(len(windows), 24)
    for i in range(charts.count()):
        chart = charts.nth(i)
        assert chart.locator(".point").count() == windows[chart.get_attribute("data-service")]


def test_the_report_of_a_capture(tmp_path: Path) -> None:
    out, html, data = _report(DATA / "chrissanders" / "http_espn.pcapng", tmp_path)
    assert html.stat().st_size < 1_000_000
    conns, reqs = _pairs(out)

    def check(page: Any) -> None:
        _check_map(page, data, conns, reqs)
        _check_series(page, out)
        # the connections table: every connection, sortable and filterable
        rows = page.locator("#table-connections tbody tr")
        assert rows.count() == sum(conns.values())
        page.locator("#table-connections th", has_text="bytes").click()
        first = page.locator("#table-connections tbody tr").first.locator("td").last.inner_text()
        assert int(first) == min(r["bytes_c2s"] + r["bytes_s2c"] for r in read_jsonl(out / "wire.connections.jsonl"))
        server = "205.234.218.129:80"
        page.fill('input[data-table="table-connections"]', server)
        assert rows.count() == conns[("172.16.0.122", server)]
        # the transactions table: as many as the records
        assert page.locator("#table-transactions tbody tr").count() == sum(reqs.values())
        # the services (one row each, their windows' requests) and the stages' counters
        windows = [w for w in read_jsonl(out / "wire.service-metrics.jsonl") if w.get("scope", "service") == "service"]
        assert page.locator("#table-services tbody tr").count() == len({w["service"] for w in windows})
        services = {t["name"]: t for t in data["tables"]}["services"]
        assert sum(r[3] for r in services["rows"]) == sum(w["requests"] for w in windows)
        assert "processor.packets" in page.inner_text("#table-counters")

    _browse(html, tmp_path / "report.png", check)


def test_the_report_of_several_services_over_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    services = [Service(f"10.0.0.{i + 1}", 8080 + i, rng.integers(1_000, 50_000 * (i + 1), 400), connections=10)
                for i in range(3)]
    pcap = tmp_path / "services.pcap"
    write_capture(str(pcap), services)
    out, html, data = _report(pcap, tmp_path)
    conns, reqs = _pairs(out)
    assert len({s for _c, s in conns}) == 3

    def check(page: Any) -> None:
        _check_map(page, data, conns, reqs)
        _check_series(page, out)
        # every service's latency, as the windows of its own
        for svc in services:
            edges = [e for e in data["edges"] if e["target"] == f"{svc.ip}:{svc.port}"]
            assert sum(e["requests"] for e in edges) == len(svc.latencies_us)

    _browse(html, tmp_path / "report.png", check)
    assert os.path.getsize(tmp_path / "report.png") > 10_000
