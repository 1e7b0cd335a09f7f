#!/usr/bin/env python3
"""Per-call cost of ``bpf/tls_plaintext.c``: the uprobes on libssl.so.3 and the socket
tracepoints it adds.

A local nginx serves HTTPS on loopback (tests/tls_certs.py's self-signed certificate);
a Python client in this process (never probed: the source leaves its own process out)
makes ``--requests`` keep-alive requests for a body of ``--body`` bytes while the programs
run, for each ``--max-data``: nginx's SSL calls are the ones measured. The kernel's BPF statistics (sysctl kernel.bpf_stats_enabled,
on for the run, restored after) give each program's runs and run time; the per-chunk
cost is the entry uprobe + the return uprobe (`leave`), which copies the data. The
uprobe's own trap (a breakpoint and a return trampoline, ~1-3 µs per probed call on
x86_64) is not in these figures: it is measured as the client's wall time with and
without the probes.

    sudo .venv/bin/python bench/bench_tls_uprobes.py
    sudo .venv/bin/python bench/bench_tls_uprobes.py --requests 5000 --body 100000 --max-data 4096 16384
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tls_certs import self_signed  # noqa: E402
from wirestream.producers.tls_plaintext import TlsPlaintextSource  # noqa: E402

from wirestream.doctor import kernel_headers, load_bcc  # noqa: E402

BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"
CONF = """
worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log; daemon off; user root;
events {{ worker_connections 64; }}
http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;
  uwsgi_temp_path {d}/u; scgi_temp_path {d}/s; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};
    location / {{ root {d}/www; }} }} }}
"""


def client(port: int, requests: int) -> float:
    """Seconds for ``requests`` GETs of /body on one connection."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
    started = time.perf_counter()
    for _ in range(requests):
        conn.request("GET", "/body")
        conn.getresponse().read()
    conn.close()
    return time.perf_counter() - started


def run_client(port: int, requests: int, result: list[float]) -> None:
    result.append(client(port, requests))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--body", type=int, default=20000, help="response body bytes")
    ap.add_argument("--max-data", type=int, nargs="+", default=[4096, 16384])
    args = ap.parse_args()
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    kernel_headers()
    bcc = load_bcc()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        cert, key = self_signed(d, "nginx")
        (d / "www").mkdir()
        (d / "www" / "body").write_bytes(b"x" * args.body)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        (d / "nginx.conf").write_text(CONF.format(d=d, port=port, cert=cert, key=key))
        nginx = subprocess.Popen([nginx_bin, "-c", str(d / "nginx.conf"), "-p", str(d)])
        stats_was = Path(BPF_STATS).read_text().strip()
        try:
            time.sleep(0.5)
            client(port, 50)  # warm up
            bare = client(port, args.requests)
            print(f"no probes: {args.requests} requests of {args.body} bytes in {bare:.2f} s "
                  f"({bare / args.requests * 1e6:.0f} µs per request)")
            Path(BPF_STATS).write_text("1")
            for max_data in args.max_data:
                source = TlsPlaintextSource(bcc, max_data=max_data)
                try:
                    # the client in a thread, the ring drained here as the producer does
                    result: list[float] = []
                    worker = threading.Thread(target=run_client, args=(port, args.requests, result))
                    worker.start()
                    chunks = 0
                    while worker.is_alive():
                        chunks += len(source.poll(20))
                    worker.join()
                    chunks += len(source.poll(100))
                    wall = result[0]
                    stats = source.program_stats()
                    lost = source.lost()
                finally:
                    source.close()
                print(f"\n--max-data {max_data}: {wall:.2f} s ({wall / args.requests * 1e6:.0f} µs per request, "
                      f"+{(wall - bare) / args.requests * 1e6:.0f} µs); {chunks} chunks, lost {lost}")
                for name, (runs, ns) in sorted(stats.items()):
                    print(f"  {name:40} {runs:9} runs {ns / runs if runs else 0:8.0f} ns/run")
                # the uprobes' run time over the chunks they made (the runs that return at
                # once, for the process left out or a call that moved nothing, included)
                probes = sum(ns for name, (_runs, ns) in stats.items() if not name.startswith("tracepoint"))
                print(f"  uprobes per chunk: {probes / chunks if chunks else 0:.0f} ns")
        finally:
            Path(BPF_STATS).write_text(stats_was)
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
