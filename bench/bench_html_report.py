"""The HTML report of a big capture: its size, and how long Chromium takes to open it.

Issue 21's target: the report of a 1M-packet capture opens in under 3 s in Chromium and
stays under 20 MB (it is aggregated: at most 120 edges, 1,000 rows a table, 24 series).

1. a synthetic capture (tests/synthetic_http.py: keep-alive HTTP/1.1, ``--services``
   services, ``--requests`` requests in all, their latencies drawn at random; about two
   packets per request plus each connection's handshake and close);
2. ``wirestream analyze CAP --html REPORT --json`` (wall time printed, not the target);
3. the report's size;
4. headless Chromium (Debian's, through Playwright): the time from opening the file to
   the map, the series and the tables drawn (best of ``--runs``).

    .venv/bin/python bench/bench_html_report.py [--requests 500000] [--services 40] [--runs 3] [--keep DIR]

Exit status: 0 done and within the targets; 1 a target missed; 2 a tool or a run failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from synthetic_http import Service, write_capture  # noqa: E402

MAX_OPEN_S = 3.0
MAX_BYTES = 20_000_000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=500_000)
    ap.add_argument("--services", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", metavar="DIR", help="keep the capture and the report in DIR")
    args = ap.parse_args()
    chromium = shutil.which("chromium")
    if not chromium:
        print("no chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    work = Path(args.keep or tempfile.mkdtemp(prefix="wirestream-bench-report-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    per = args.requests // args.services
    services = [Service(f"10.0.{i // 250}.{i % 250 + 1}", 8000 + i, rng.integers(500, 80_000, per), connections=50)
                for i in range(args.services)]
    cap = work / "big.pcap"
    write_capture(str(cap), services)
    report = work / "report.html"
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "wirestream", "analyze", str(cap), "--html", str(report), "--json",
                           "--no-progress"], capture_output=True, text=True)
    analyze_s = time.perf_counter() - t
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return 2
    summary = json.loads(proc.stdout)
    packets = sum(f.get("packets", 0) for f in summary.get("files", []))
    size = report.stat().st_size
    from playwright.sync_api import sync_playwright

    opens = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless=new"])
        for _ in range(args.runs):
            page = browser.new_context(offline=True).new_page()
            t = time.perf_counter()
            page.goto(report.as_uri(), wait_until="load")
            page.wait_for_selector("#tables table")
            opens.append(time.perf_counter() - t)
            assert page.locator("#service-map .edge").count() > 0
            page.close()
        browser.close()
    best = min(opens)
    print(f"capture: {packets:,} packets, {args.requests:,} requests to {args.services} services ({cap.stat().st_size / 1e6:.0f} MB)")
    print(f"analyze --html: {analyze_s:.1f} s wall")
    print(f"report: {size / 1e6:.2f} MB (target < {MAX_BYTES / 1e6:.0f} MB)")
    print(f"Chromium opens and draws it: best {best:.2f} s of {', '.join(f'{o:.2f}' for o in opens)} "
          f"(target < {MAX_OPEN_S:.0f} s)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if best < MAX_OPEN_S and size < MAX_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
