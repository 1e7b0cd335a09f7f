"""``wirestream produce pcap|live|drops|tls-plaintext``: publish packets (kernel drops, TLS
plaintext) for processors
running elsewhere."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from wirestream.commands import common
from wirestream.config import Settings


def add_parser(sub: common.Subparsers, defaults: Settings) -> argparse.ArgumentParser:
    p = sub.add_parser("produce", help="publish packets to wire.packets",
                       description="Publish packets to wire.packets (batched, partitioned by connection).")
    psub = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    pp = psub.add_parser("pcap", help="replay capture files",
                         description="Replay capture files into wire.packets, then send end-of-input markers.")
    pp.add_argument("files", nargs="+", metavar="FILE")
    pp.add_argument("--snaplen", type=int, default=defaults.payload_snaplen, metavar="BYTES",
                    help="payload bytes kept per packet (default: %(default)s)")
    common.add_kafka_args(pp, defaults)
    pp.set_defaults(run=run_pcap)
    pp = psub.add_parser(
        "live", help="capture live traffic into wire.packets and wire.sockets",
        description="Capture live traffic (as `wirestream capture` does: eBPF or AF_PACKET, see its --help) "
                    "and publish it for processors running elsewhere, until SIGTERM/Ctrl-C, --duration or "
                    "--count; then send end-of-input markers. This is what the capture DaemonSet runs.")
    common.add_live_args(pp)
    pp.add_argument("--snaplen", type=int, default=defaults.payload_snaplen, metavar="BYTES",
                    help="payload bytes kept per packet (default: %(default)s)")
    pp.add_argument("--stats-interval", type=float, default=10.0, metavar="SECONDS",
                    help="publish capture counters on wire.stats this often (default: %(default)s)")
    pp.add_argument("--source-name", default=os.environ.get("WIRESTREAM_SOURCE_NAME") or os.uname().nodename,
                    help="name of this source in the records (default: $WIRESTREAM_SOURCE_NAME, else the host name)")
    common.add_kafka_args(pp, defaults, required=True)
    pp.set_defaults(run=run_live)
    pp = psub.add_parser(
        "drops", help="count kernel packet drops with their reason into wire.drops",
        description="Count the packets the kernel drops (tracepoint skb:kfree_skb, with its drop reason: "
                    "Linux 5.17+), per 5-tuple, reason, interface and network namespace, in the kernel; "
                    "publish the counts to wire.drops every --interval, until SIGTERM/Ctrl-C or --duration. "
                    "Needs eBPF (bcc, root; `wirestream doctor` says). Firewall drops have reason "
                    "netfilter_drop; packets whose sender was answered (a REJECT rule, a closed port) are "
                    "marked refused (docs/records.md, wire.drops).")
    pp.add_argument("--interval", type=float, default=5.0, metavar="SECONDS",
                    help="drain the kernel's counts and publish them this often (default: %(default)s)")
    pp.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    pp.add_argument("--max-rows", type=int, default=16384, metavar="N",
                    help="distinct (5-tuple, reason, interface) rows counted per interval; drops beyond "
                         "are counted as drops_overflow (default: %(default)s)")
    pp.add_argument("--include-not-specified", action="store_true",
                    help="also count frees with reason NOT_SPECIFIED (plain kfree_skb(): mostly not drops, "
                         "and frequent)")
    pp.add_argument("--cost", action="store_true",
                    help="turn on the kernel's BPF run statistics (sysctl kernel.bpf_stats_enabled) while "
                         "running and print the programs' runs and mean ns per run at the end")
    pp.add_argument("--source-name", default=os.environ.get("WIRESTREAM_SOURCE_NAME") or os.uname().nodename,
                    help="name of this source in the records (default: $WIRESTREAM_SOURCE_NAME, else the host name)")
    common.add_kafka_args(pp, defaults, required=True)
    pp.set_defaults(run=run_drops)
    pp = psub.add_parser(
        "tls-plaintext", help="TLS plaintext from OpenSSL uprobes into wire.tls-plaintext",
        description="Read what processes write to and read from TLS connections through OpenSSL "
                    "(uprobes on libssl.so.3's SSL_write/SSL_read/SSL_write_ex/SSL_read_ex), with the process, "
                    "thread and TCP connection, and publish the chunks to wire.tls-plaintext (partitioned like "
                    "wire.packets), until SIGTERM/Ctrl-C or --duration. Needs eBPF with uprobes (bcc, root; "
                    "`wirestream doctor` says). The topic holds plaintext: keep it as secret as wire.packets.")
    pp.add_argument("--libssl", action="append", type=Path, default=None, metavar="PATH",
                    help="a libssl.so.3 to probe (repeat for several: a container's own copy as "
                         "/proc/PID/root/...; default: the dynamic linker's, from ldconfig -p)")
    pp.add_argument("--pid", type=int, default=None, help="only this process (default: every process but this one)")
    pp.add_argument("--max-data", type=int, default=4096, metavar="BYTES",
                    help="plaintext bytes kept per SSL call, a power of two up to 16384; the true length is "
                         "always reported (default: %(default)s)")
    pp.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    pp.add_argument("--cost", action="store_true",
                    help="turn on the kernel's BPF run statistics (sysctl kernel.bpf_stats_enabled) while "
                         "running and print the programs' runs and mean ns per run at the end")
    pp.add_argument("--source-name", default=os.environ.get("WIRESTREAM_SOURCE_NAME") or os.uname().nodename,
                    help="name of this source in the records (default: $WIRESTREAM_SOURCE_NAME, else the host name)")
    common.add_kafka_args(pp, defaults, required=True)
    pp.set_defaults(run=run_tls_plaintext)
    return p


def run_pcap(args: argparse.Namespace) -> int:
    from wirestream.broker import partition_count
    from wirestream.errors import CaptureFileError
    from wirestream.producers.pcap_replay import replay_files
    from wirestream.runtime import Runtime
    from wirestream.topics import PACKETS

    settings = common.settings_from_args(args)
    failed = 0
    with Runtime(settings) as rt:
        if rt.embedded_broker is not None:
            print(f"wirestream: note: embedded broker at {rt.bootstrap} stops when this command ends",
                  file=sys.stderr)
        partitions = partition_count(rt.bootstrap, PACKETS)
        # Each file is a source of its own, named so that sources from several hosts and
        # runs never collide.
        for source_id, r in replay_files(
            args.files, rt.bootstrap, rt.codec, partitions,
            lambda _i: f"{os.uname().nodename}-{os.getpid()}-{time.time_ns()}", settings.payload_snaplen,
        ):
            if isinstance(r, CaptureFileError):
                common.print_error(r)
                failed += 1
                continue
            dropped = ", ".join(f"{k}={v}" for k, v in sorted(r.dropped.items())) or "none"
            print(f"{r.path}: {r.frames} frames, {r.packets} packets published as source {source_id}; "
                  f"not published: {dropped}")
    return common.EXIT_ERROR if failed else common.EXIT_OK


def run_live(args: argparse.Namespace) -> int:
    from wirestream.broker import ensure_topics, partition_count
    from wirestream.codec import AvroCodec
    from wirestream.producers.live_capture import open_capture, run_capture
    from wirestream.topics import LIVE_TOPICS, PACKETS

    live = open_capture(common.capture_options(args, args.stats_interval))
    if live.fallback_reason:
        print(f"wirestream produce live: {live.mode}: {live.fallback_reason}", file=sys.stderr)
    ensure_topics(args.bootstrap, LIVE_TOPICS, args.partitions, replication_factor=args.replication_factor)
    codec = AvroCodec(args.registry)
    partitions = partition_count(args.bootstrap, PACKETS)
    source_id = f"{args.source_name}-{os.getpid()}-{time.time_ns()}"
    publisher, socket_publisher = live.publishers(args.bootstrap, codec, partitions, source_id,
                                                  f"live {args.source_name}")
    stop = common.StopOnSignal()
    print(f"wirestream produce live: capturing on {live.rings_text()} ({live.mode}) as source {source_id}",
          file=sys.stderr, flush=True)
    try:
        r = run_capture(live, publisher, socket_publisher, stop=stop)
    finally:
        live.close()
    dropped = ", ".join(f"{k}={v}" for k, v in sorted(r.dropped.items())) or "none"
    print(f"{r.frames} frames, {r.packets} packets published; dropped: {dropped}")
    return common.EXIT_OK


BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"


@contextlib.contextmanager
def _bpf_stats(enabled: bool) -> Iterator[None]:
    """The kernel's BPF run-time statistics on while inside (``--cost``), then as they were."""
    if not enabled:
        yield
        return
    with open(BPF_STATS) as f:
        was = f.read().strip()
    with open(BPF_STATS, "w") as f:
        f.write("1")
    try:
        yield
    finally:
        with open(BPF_STATS, "w") as f:
            f.write(was)


def _print_costs(program_stats: dict[str, tuple[int, int]]) -> None:
    """``--cost``: runs and ns per run of each BPF program, from the kernel's statistics."""
    for name, (runs, ns) in sorted(program_stats.items()):
        print(f"cost {name}: {runs} runs, {ns / runs if runs else 0:.0f} ns/run")


def run_drops(args: argparse.Namespace) -> int:
    from wirestream.broker import ensure_topics, partition_count
    from wirestream.codec import AvroCodec
    from wirestream.doctor import kernel_headers, load_bcc
    from wirestream.errors import UsageError
    from wirestream.producers.packet_drops import DropPublisher, DropSource, DropsUnavailable
    from wirestream.topics import DROP_TOPICS, DROPS

    if args.interval <= 0:
        raise UsageError(f"--interval must be more than 0, not {args.interval}")
    if args.max_rows < 1:
        raise UsageError(f"--max-rows must be at least 1, not {args.max_rows}")
    try:
        kernel_headers()  # exports BCC_KERNEL_SOURCE when scripts/bcc-headers made the tree
        bcc = load_bcc()
        source = DropSource(bcc, max_rows=args.max_rows, include_not_specified=args.include_not_specified)
    except (ImportError, DropsUnavailable) as exc:
        common.print_error(f"produce drops: {exc}")
        return common.EXIT_ERROR
    try:
        with _bpf_stats(args.cost):
            ensure_topics(args.bootstrap, DROP_TOPICS, args.partitions, replication_factor=args.replication_factor)
            # rows go to the partition of their connection's canonical key: the same as its
            # wire.packets records when both topics have the same partition count, as created
            partitions = partition_count(args.bootstrap, DROPS)
            source_id = f"{args.source_name}-{os.getpid()}-{time.time_ns()}"
            publisher = DropPublisher(args.bootstrap, AvroCodec(args.registry), partitions, source_id, source.reasons)
            stop = common.StopOnSignal()
            missing = ", ".join(f"{k}: {v}" for k, v in source.features.items() if v) or "none"
            print(f"wirestream produce drops: counting drops as source {source_id}, every {args.interval:g} s "
                  f"(not available here: {missing})", file=sys.stderr, flush=True)
            started = time.monotonic()
            next_drain = started + args.interval
            while not stop():
                now = time.monotonic()
                if args.duration is not None and now - started >= args.duration:
                    break
                if now >= next_drain:
                    publisher.publish(source.drain())
                    publisher.publish_stats(source.overflow(), source.not_specified(), final=False)
                    next_drain = now + args.interval
                time.sleep(min(0.1, max(0.0, next_drain - now)))
            publisher.publish(source.drain())
            publisher.publish_stats(source.overflow(), source.not_specified(), final=True)
            publisher.flush()
            by_reason = ", ".join(f"{k}={v}" for k, v in publisher.dropped_packets.most_common()) or "none"
            print(f"{publisher.published} records published; packets dropped by reason: {by_reason}; "
                  f"drops_overflow={source.overflow()} not_specified_seen={source.not_specified()}")
            if args.cost:
                _print_costs(source.program_stats())
    finally:
        source.close()
    return common.EXIT_OK


def run_tls_plaintext(args: argparse.Namespace) -> int:
    from wirestream.broker import ensure_topics, partition_count
    from wirestream.codec import AvroCodec
    from wirestream.doctor import kernel_headers, load_bcc
    from wirestream.producers.tls_plaintext import (
        TlsPlaintextPublisher,
        TlsPlaintextSource,
        TlsPlaintextUnavailable,
    )
    from wirestream.topics import TLS_PLAINTEXT, TLS_PLAINTEXT_TOPICS

    try:
        kernel_headers()  # exports BCC_KERNEL_SOURCE when scripts/bcc-headers made the tree
        bcc = load_bcc()
        source = TlsPlaintextSource(bcc, libraries=args.libssl, pid=args.pid, max_data=args.max_data)
    except (ImportError, TlsPlaintextUnavailable) as exc:
        common.print_error(f"produce tls-plaintext: {exc}")
        return common.EXIT_ERROR
    try:
        with _bpf_stats(args.cost):
            ensure_topics(args.bootstrap, TLS_PLAINTEXT_TOPICS, args.partitions,
                          replication_factor=args.replication_factor)
            partitions = partition_count(args.bootstrap, TLS_PLAINTEXT)
            source_id = f"{args.source_name}-{os.getpid()}-{time.time_ns()}"
            publisher = TlsPlaintextPublisher(args.bootstrap, AvroCodec(args.registry), partitions, source_id)
            stop = common.StopOnSignal()
            libraries = ", ".join(str(p) for p in source.libraries)
            print(f"wirestream produce tls-plaintext: probing {libraries} as source {source_id}",
                  file=sys.stderr, flush=True)
            started = time.monotonic()
            while not stop():
                if args.duration is not None and time.monotonic() - started >= args.duration:
                    break
                publisher.add(source.poll(100))
            publisher.add(source.poll())
            publisher.finish()
            published = ", ".join(f"{k}={v}" for k, v in sorted(publisher.published.items())) or "none"
            dropped = ", ".join(f"{k}={v}" for k, v in sorted(publisher.dropped.items())) or "none"
            print(f"chunks published: {published}; not published: {dropped}; lost in the kernel: {source.lost()}")
            if args.cost:
                _print_costs(source.program_stats())
    finally:
        source.close()
    return common.EXIT_OK
