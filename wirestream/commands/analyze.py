"""``wirestream analyze FILE...``: the whole pipeline on capture files, then a summary."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

from wirestream.commands import common
from wirestream.config import Settings
from wirestream.gc_policy import collect_rarely


def add_parser(sub: common.Subparsers, defaults: Settings) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "analyze", help="run the whole pipeline on capture files and print a summary",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Replay capture files (pcap or pcapng, optionally gzip-compressed) through Kafka and the
processors, wait until every packet has been processed, then print the connections
ranked by trouble, the HTTP/1.x and HTTP/2 transactions (gRPC calls with their status),
DNS queries, TLS handshakes, Redis, PostgreSQL and MySQL calls (wire.queries, with
per-operation latency percentiles), Kafka requests per API (wire.messaging) found in
them, and every stage's counters.

Link types: Ethernet (with 802.1Q/QinQ tags), Linux cooked v1/v2, raw IP, BSD null and
loopback, PPP (and in HDLC framing), PPPoE, Cisco HDLC, FDDI, 802.11 (plain, radiotap,
Prism, AVS, PPI), and firewall logs: Linux NFLOG (tcpdump -i nflog:N), OpenBSD pflog. Tunnels are decoded, the inner flow being the connection: VXLAN, Geneve,
GRE/ERSPAN, IP-in-IP, Teredo, GTP-U, PPPoE, MPLS (docs/core.md, "Tunnels"). TCP and UDP
flows and ICMP exchanges are records. Connection records follow Wireshark's TCP analysis (see docs/records.md); L7
records are checked against tshark too (docs/l7.md).""",
        epilog="""\
examples:
  wirestream analyze tests/data/chrissanders/tcp_retransmissions.pcapng
  wirestream analyze big.pcap.gz --out results/ --workers 2
  wirestream analyze capture.pcap --zeek zeek-logs/      # also conn.log, http.log, dns.log, ssl.log
  wirestream analyze login.pcapng --no-redact --body-cap 0   # see credentials, skip bodies
  wirestream analyze capture.pcap --bootstrap kafka:9092 --registry http://registry:8081""",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="capture files to analyse")
    common.add_pipeline_args(p, defaults)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--zeek", metavar="DIR", help="also write Zeek logs: DIR/conn.log, http.log, dns.log, ssl.log "
                                                 "(docs/downstream.md)")
    p.add_argument("--zeek-json", action="store_true", help="with --zeek: Zeek's JSON lines instead of TSV")
    p.add_argument("--no-chains", action="store_true",
                   help="do not link the HTTP transactions into call chains (wire.call-chains): the chains "
                        "need every transaction's request headers decoded")
    p.add_argument("--chains", dest="print_chains", action="store_true",
                   help="print the call chains as trees after the summary (wirestream chain's format)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    import threading

    from wirestream.analyze import analyze
    from wirestream.sinks import console

    # analyze holds the output records it reads (hundreds of thousands of small dicts)
    collect_rarely()
    settings = common.settings_from_args(args)
    show_progress = not args.no_progress and not args.json and sys.stderr.isatty()
    # The summary's imports (rich, the windows' merge: ~0.25 s) are made once the files are
    # published, while the workers finish (unless the progress bars need rich first):
    # analyze starts its workers first thing, and every import before that delays them.
    bars: Any = contextlib.nullcontext()
    if show_progress:
        bars = console.progress_bars(enabled=True)

    def import_the_summary() -> None:
        # while the workers finish: this process only reads their records then
        threading.Thread(target=console.preload, name="import-summary", daemon=True).start()

    # --zeek: the Zeek logs are made from the run's JSON lines (--out's, else a temporary
    # folder's), L7 records first so that each connection's service is known
    stack = contextlib.ExitStack()
    jsonl_dir = args.out or None
    if args.zeek and jsonl_dir is None:
        import tempfile

        jsonl_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="wirestream-zeek-"))
    settings = _with_embedded_secrets(args.files, settings, stack)
    with stack, bars as progress:
        # The records are written to --out as they are read; in memory, the summary keeps
        # only what it shows (console.SUMMARY_FIELDS): no bodies, no header maps.
        result = analyze(args.files, settings, workers=args.workers, progress=progress,
                         keep_bodies=bool(args.out), after_feed=import_the_summary,
                         jsonl_dir=jsonl_dir, fields=console.SUMMARY_FIELDS, chains=not args.no_chains)
        if args.zeek and result.files:
            from wirestream.errors import WirestreamError
            from wirestream.sinks.zeek import convert_jsonl

            try:
                convert_jsonl(jsonl_dir, args.zeek, json_lines=args.zeek_json)
            except OSError as exc:
                raise WirestreamError(f"--zeek {args.zeek}: cannot write the Zeek logs: "
                                      f"{exc.strerror or exc}") from None
    for err in result.failed:
        common.print_error(err)
    if result.failed and not result.files:
        # Nothing was read: the error lines are the whole answer (a summary of nothing,
        # all zeros, would read as if the file had been analysed and held no traffic).
        return common.EXIT_ERROR
    if args.html:
        common.write_html_report(args.html, result)
    console.report(result, as_json=args.json, top=args.top, out_dir=args.out)
    if args.print_chains and not args.json:
        from wirestream.processors.call_chains import chain_tree_lines
        from wirestream.topics import CALL_CHAINS

        chains = result.records.get(CALL_CHAINS, [])
        print(f"\nCall chains: {len(chains)}")
        for chain in chains:
            print("\n".join(chain_tree_lines(chain)))
    return common.EXIT_ERROR if result.failed else common.EXIT_OK


def _with_embedded_secrets(files: list[str], settings: Any, stack: contextlib.ExitStack) -> Any:
    """``settings`` with a key log that also holds the TLS secrets embedded in the pcapng
    files (Decryption Secrets Blocks, as Wireshark uses them), when any has some: written
    to a private temporary file (0600 in a 0700 directory, removed at the end) that the
    workers read as ``--tls-keylog``, after the user's own key log if one was given."""
    import dataclasses
    import tempfile

    from wirestream.producers.capture_file import tls_secrets

    found = []
    for path in files:
        try:
            found.append(tls_secrets(path))
        except (OSError, EOFError):
            pass  # the replay names an unreadable file; secrets are not its business
    embedded = b"\n".join(s for s in found if s)
    if not embedded:
        return settings
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="wirestream-keys-"))
    keylog = os.path.join(folder, "keylog")
    fd = os.open(keylog, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        if settings.tls_keylog:
            with open(settings.tls_keylog, "rb") as own:
                out.write(own.read().rstrip(b"\n") + b"\n")
        out.write(embedded + b"\n")
    return dataclasses.replace(settings, tls_keylog=keylog)
