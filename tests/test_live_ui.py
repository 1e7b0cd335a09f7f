"""``wirestream ui``: the live view, against records published to the broker while the
page is open in a real browser (headless Chromium, Debian's, driven by Playwright).

The connection records are analyze's, of a bundled capture: some published before the
page loads, the connections of one more server after; that server's node and edge must
appear on the open page by itself (it fetches the data again every refresh interval),
with its connection count. Loopback by default; a token, when given, is needed for the
page and for its data (``?token=``, which the page passes on); a non-loopback address
without protection is refused.
"""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import DATA, analyze_to, import_or_require, needs, publish, read_jsonl, start_in_thread
from wirestream.sinks.live_ui import LiveUi

from wirestream.broker import EmbeddedBroker, ensure_topics
from wirestream.cli import build_parser
from wirestream.topics import ALL_TOPICS, CONNECTIONS

CHROMIUM = shutil.which("chromium")
REFRESH_S = 1.0


@pytest.fixture(scope="module")
def quiet_broker() -> Any:
    """A broker of this module's own: the view reads whole topics, which the shared
    broker's other tests fill with records of their own."""
    with EmbeddedBroker() as b:
        ensure_topics(b.bootstrap, ALL_TOPICS, 4)
        yield b


@pytest.fixture(scope="module")
def connections(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("live-ui")
    analyze_to(DATA / "chrissanders" / "http_espn.pcapng", out)
    records = read_jsonl(out / "wire.connections.jsonl")
    for r in records:  # a run of its own: ids no other test's records have
        r["connection_id"] = f"{r['connection_id']}-{uuid.uuid4().hex[:6]}"
    return records


def _start(broker: Any, registry: Any, **kw: Any) -> tuple[LiveUi, Callable[[], None]]:
    ui = LiveUi(broker.bootstrap, registry.url, "127.0.0.1", 0, group=f"ui-{uuid.uuid4().hex[:8]}",
                refresh_s=REFRESH_S, from_beginning=True, **kw)
    return ui, start_in_thread(ui.run)


@needs(None if CHROMIUM else "no chromium (scripts/install --test installs Debian's)")
def test_records_published_after_the_page_loads_appear_on_it(quiet_broker, registry, connections) -> None:
    broker = quiet_broker
    sync_api = import_or_require("playwright.sync_api")
    server = lambda r: f"{r['server_ip']}:{r['server_port']}"  # noqa: E731
    per_server = Counter(server(r) for r in connections)
    late = min(per_server, key=lambda s: (per_server[s], s))  # one server's connections come later
    early = [r for r in connections if server(r) != late]
    publish(broker, registry, CONNECTIONS, early)
    ui, stop_ui = _start(broker, registry)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"http://127.0.0.1:{ui.port}/")
                nodes = page.locator("#service-map .node")
                deadline = time.monotonic() + 60
                # the early records: every server but the late one (the first page may
                # have been served before the group had read them all)
                while nodes.count() != len(per_server) - 1 + 1:  # (+ the one client)
                    assert time.monotonic() < deadline, nodes.count()
                    time.sleep(0.2)
                assert page.locator(f'#service-map .node[data-node="{late}"]').count() == 0
                published = time.monotonic()
                publish(broker, registry, CONNECTIONS, [r for r in connections if server(r) == late])
                node = page.locator(f'#service-map .node[data-node="{late}"]')
                while node.count() == 0:
                    # the consumer's batch (up to 1 s), then the page's next refresh
                    assert time.monotonic() - published < 10 * REFRESH_S, "the late server never appeared"
                    time.sleep(0.1)
                data = page.evaluate("fetch('data.json').then(r => r.json())")
                late_edge = next(e for e in data["edges"] if e["target"] == late)
                assert late_edge["connections"] == per_server[late]
                assert data["live"]["refresh_s"] == REFRESH_S
                assert errors == []
            finally:
                browser.close()
    finally:
        stop_ui()


def test_a_token_guards_the_page_and_its_data(broker, registry, connections) -> None:
    ui, stop_ui = _start(broker, registry, token="s3cret-ui-token")
    try:
        base = f"http://127.0.0.1:{ui.port}"
        for path in ("/", "/data.json"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base + path, timeout=10)
            assert refused.value.code == 401
            with urllib.request.urlopen(f"{base}{path}?token=s3cret-ui-token", timeout=10) as resp:
                assert resp.status == 200
            req = urllib.request.Request(base + path, headers={"Authorization": "Bearer s3cret-ui-token"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/?token=wrong", timeout=10)
    finally:
        stop_ui()


def test_loopback_by_default_and_protected_elsewhere(broker, registry, tmp_path: Path) -> None:
    assert build_parser().parse_args(["ui"]).listen == "127.0.0.1:8080"
    with pytest.raises(ValueError, match="not a loopback address"):
        LiveUi(broker.bootstrap, registry.url, "0.0.0.0", 0)
