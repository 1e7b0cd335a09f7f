"""What several commands share: exit codes, option groups, argument types, settings from
the parsed options, and the stop flag of the long-running commands."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from wirestream.config import Settings
from wirestream.errors import UsageError, WirestreamError

if TYPE_CHECKING:
    from wirestream.processors.detections import Thresholds
    from wirestream.processors.service_windows import WindowOptions
    from wirestream.producers.live_capture import CaptureOptions

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: what ``ArgumentParser.add_subparsers`` returns (argparse has no public name for it)
Subparsers = argparse._SubParsersAction


def add_kafka_args(p: argparse.ArgumentParser, defaults: Settings, required: bool = False,
                   hint: str = "") -> None:
    """--bootstrap, --registry, --partitions, --replication-factor. ``required``: the
    command needs an existing Kafka and registry (no embedded one); ``cli.main`` checks
    that they were given and answer (:func:`kafka_given`, with ``hint``) before the
    command runs."""
    if required:
        p.set_defaults(kafka_required=p.prog.removeprefix("wirestream "), kafka_hint=hint)
    g = p.add_argument_group("Kafka")
    g.add_argument("--bootstrap", default=defaults.bootstrap, metavar="HOST:PORT[,...]",
                   help="Kafka bootstrap servers (default: $WIRESTREAM_BOOTSTRAP, else start the embedded broker)")
    g.add_argument("--registry", default=defaults.registry, metavar="URL",
                   help="Confluent-compatible schema registry (default: $WIRESTREAM_REGISTRY, else serve one embedded)")
    g.add_argument("--partitions", type=int, default=defaults.partitions, metavar="N",
                   help="partitions for topics wirestream creates (default: %(default)s)")
    g.add_argument("--replication-factor", type=replication_factor, default=defaults.replication_factor,
                   metavar="N",
                   help="replicas of the topics wirestream creates: 3 on a production cluster "
                        "(default: $WIRESTREAM_REPLICATION_FACTOR, else -1: the broker's "
                        "default.replication.factor)")
    from wirestream import kafka_security

    kafka_security.add_flags(p)


def add_live_args(p: argparse.ArgumentParser) -> None:
    """What to capture live, and until when (capture, produce live)."""
    p.add_argument("--iface", "-i", action="append", default=[], metavar="NAME",
                   help="interface to capture on (repeatable; default: every interface)")
    p.add_argument("--netns", metavar="NAME|PATH",
                   help="capture inside this network namespace (a name from `ip netns`, or a path "
                        "such as /proc/PID/ns/net)")
    p.add_argument("--mode", choices=("auto", "ebpf", "af_packet"), default="auto",
                   help="capture mode (default: %(default)s)")
    p.add_argument("--no-socket-events", dest="socket_events", action="store_false",
                   help="eBPF mode: packets only, no wire.sockets")
    p.add_argument("--fd-snapshot-interval", type=float, default=30.0, metavar="SECONDS",
                   help="eBPF mode: publish the open file descriptors and sockets of every container "
                        "(wire.sockets fd_snapshot events) at the start and every SECONDS; 0: never "
                        "(default: %(default)s)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    p.add_argument("--count", type=int, default=None, metavar="N", help="stop after N TCP/UDP packets")
    p.add_argument("--ring-mb", type=int, default=32, metavar="MB",
                   help="packet ring memory, shared among the interfaces (default: %(default)s)")
    # the default is live_capture.SOCKET_RING_MB, not imported here: loading the capture
    # code is for the commands that run it
    p.add_argument("--socket-ring-mb", type=float, default=4, metavar="MB",
                   help="eBPF mode: socket-event ring buffer memory, rounded down to a power-of-two "
                        "number of pages (default: %(default)s)")


def add_exposure_args(p: argparse.ArgumentParser, listen: str, token_help: str, exposed: str) -> None:
    """The options of a command that serves HTTP (``sink prometheus``, ``ui``): where
    (``--listen``, default ``listen``) and how it is guarded off loopback (a token, TLS,
    or said to need neither). ``exposed``: what anyone who reaches an unguarded one gets."""
    p.add_argument("--listen", default=listen, metavar="HOST:PORT",
                   help="address to serve on (default: %(default)s; any other than loopback needs --token-file, "
                        "--cert/--key or --allow-unauthenticated)")
    p.add_argument("--token-file", metavar="FILE", help=token_help)
    p.add_argument("--cert", metavar="PEM", help="serve HTTPS with this certificate")
    p.add_argument("--key", metavar="PEM", help="the certificate's key (default: in --cert's file)")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help=f"serve a non-loopback address with neither token nor TLS (anyone who reaches it {exposed})")


def listen_address(text: str, example: str) -> tuple[str, int]:
    """``--listen``'s HOST:PORT as (host, port); an empty host is every address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--listen {text}: HOST:PORT, e.g. {example}")
    return host or "0.0.0.0", int(port)


def capture_options(args: argparse.Namespace, stats_interval_s: float = 5.0) -> CaptureOptions:
    """The live capture that ``add_live_args`` options (and ``--snaplen``) describe."""
    from wirestream.producers.live_capture import CaptureOptions, ring_pages_of_mb

    try:
        socket_ring_pages = ring_pages_of_mb(args.socket_ring_mb)
    except ValueError:
        raise UsageError(f"--socket-ring-mb must be more than 0, not {args.socket_ring_mb}") from None
    return CaptureOptions(
        interfaces=args.iface, netns=args.netns, payload_snaplen=args.snaplen, mode=args.mode,
        socket_events=args.socket_events, ring_mb=args.ring_mb,
        socket_ring_pages=socket_ring_pages, duration_s=args.duration,
        max_packets=args.count, stats_interval_s=stats_interval_s,
        fd_snapshot_interval_s=max(0.0, args.fd_snapshot_interval))


def add_pipeline_args(p: argparse.ArgumentParser, defaults: Settings) -> None:
    """Options of the commands that run the whole pipeline and print a summary
    (analyze, capture)."""
    p.add_argument("--out", metavar="DIR", help="also write every output topic to DIR/<topic>.jsonl")
    p.add_argument("--workers", type=at_least_one, default=None, metavar="N",
                   help="processor worker processes (default: one per CPU, at most one per "
                        "partition of wire.packets)")
    p.add_argument("--top", type=at_least_one, default=15, metavar="N",
                   help="rows in each table: connections, HTTP, DNS, TLS, queries, operations (default: %(default)s)")
    p.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout_s, metavar="SECONDS",
                   help="close a connection after this much capture time without packets (default: %(default)s)")
    p.add_argument("--snaplen", type=int, default=defaults.payload_snaplen, metavar="BYTES",
                   help="payload bytes kept per packet for L7 analysis (default: %(default)s)")
    add_l7_args(p, defaults)
    add_window_args(p, defaults)
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")
    p.add_argument("--html", metavar="REPORT.html",
                   help="also write a self-contained HTML report: a service map (click an edge for its connections "
                        "and slowest requests), time series per service with the alerts, sortable tables; opens "
                        "offline in any browser")
    add_kafka_args(p, defaults)


def write_html_report(path: str, result: Any) -> None:
    """``--html``: the report of a run's records (sinks/html_report.py)."""
    from wirestream.sinks import html_report

    names = ", ".join(os.path.basename(f.path) for f in result.files) or "no file"
    try:
        size = html_report.write(path, result.records, f"wirestream: {names}", stats=result.stats)
    except OSError as exc:
        raise WirestreamError(f"--html {path}: cannot write the report: {exc.strerror or exc}") from None
    print(f"HTML report: {path} ({size / 1e6:.1f} MB)", file=sys.stderr)


def add_l7_args(p: argparse.ArgumentParser, defaults: Settings) -> None:
    g = p.add_argument_group("L7 analysis (HTTP/1.x, HTTP/2 and gRPC, DNS, TLS, Redis, PostgreSQL, MySQL; protocols recognised from the bytes)")
    g.add_argument("--no-l7", dest="l7", action="store_false", default=defaults.l7,
                   help="TCP connections only: no wire.transactions, wire.dns, wire.tls")
    g.add_argument("--no-redact", dest="redact", action="store_false", default=defaults.redact,
                   help="keep credentials, cookies, tokens and card numbers in clear "
                        "(only for a trusted pipeline; default: masked)")
    g.add_argument("--body-cap", type=int, default=defaults.body_cap, metavar="BYTES",
                   help="HTTP body bytes kept per message; sizes are always recorded "
                        "(default: %(default)s)")
    g.add_argument("--community-id-seed", type=seed_arg, default=defaults.community_id_seed, metavar="N",
                   help="seed (0-65535) of the records' community_id, the Community ID v1 of their "
                        "flow; use the seed your Zeek/Suricata use (default: %(default)s)")
    g.add_argument("--tls-keylog", metavar="KEYS", default=defaults.tls_keylog,
                   help="NSS key log (what SSLKEYLOGFILE writes) to decrypt TLS 1.2 (AES-GCM, "
                        "ChaCha20-Poly1305) and TLS 1.3 with: HTTP/1.x inside is analysed, its "
                        "transactions marked tls (the file is a secret: it is read, never shown)")


def tls_keylog_path(path: str | None) -> str | None:
    """``--tls-keylog``'s file, made absolute (workers read it too), after checking that it
    can be read: a bad path fails here, before anything starts. The error names the path
    and the reason, never the contents."""
    if not path:
        return None
    path = os.path.abspath(path)
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise WirestreamError(f"--tls-keylog {path}: cannot read the key log: {exc.strerror or exc}") from None
    keylog = load_tls_keylog_file(path)
    if keylog.entries == 0:  # the wrong file, most likely: say so rather than decrypt nothing silently
        print(f"wirestream: warning: --tls-keylog {path}: no TLS secrets in it ({keylog.bad} lines not "
              "understood): nothing will be decrypted", file=sys.stderr)
    return path


def load_tls_keylog_file(path: str) -> Any:
    from wirestream._core import TlsKeyLog

    try:
        return TlsKeyLog.load(path)
    except OSError as exc:  # the core's message: the path and the OS error
        raise WirestreamError(f"--tls-keylog {exc}") from None


def load_tls_keylog(path: str | None) -> Any:
    """The parsed key log of ``--tls-keylog`` (``_core.TlsKeyLog``, its bytes in this
    process's memory only), or None."""
    if not path:
        return None
    return load_tls_keylog_file(os.path.abspath(path))


def add_window_args(p: argparse.ArgumentParser, defaults: Settings) -> None:
    g = p.add_argument_group("service windows and detections (wire.service-metrics, wire.alerts)")
    g.add_argument("--no-windows", dest="windows", action="store_false", default=defaults.windows,
                   help="no per-service windows and no detections")
    g.add_argument("--window", type=float, default=defaults.window_s, metavar="SECONDS",
                   help="tumbling window length, in capture time (default: %(default)s)")
    g.add_argument("--lateness", type=float, default=defaults.lateness_s, metavar="SECONDS",
                   help="how long after its end a window still takes records in; must cover "
                        "the 10 s a closed connection is held back (default: %(default)s)")
    g.add_argument("--alert-threshold", action="append", default=list(defaults.alert_thresholds),
                   metavar="NAME=VALUE",
                   help="change a detection threshold, e.g. errors_5xx=5 (repeatable; names in "
                        "docs/windows.md)")


def window_options(args: argparse.Namespace) -> WindowOptions:
    """The windows and detections that ``add_window_args`` options describe."""
    from wirestream.processors.service_windows import WindowOptions

    return WindowOptions(length_us=int(args.window * 1e6), lateness_us=int(args.lateness * 1e6),
                         thresholds=alert_thresholds(args))


def alert_thresholds(args: argparse.Namespace) -> Thresholds:
    """The detection thresholds of ``--alert-threshold`` (:class:`UsageError` if one is
    wrong). Not through the windows' module: it imports numpy, ~0.1 s that ``analyze``
    would spend before starting its workers."""
    from wirestream.processors.detections import Thresholds

    try:
        return Thresholds.parse(args.alert_threshold)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def timestamp_us(text: str) -> int:
    """Unix seconds (``1795737470.5``) or ISO 8601 (UTC unless it says otherwise)."""
    import datetime

    try:
        return int(float(text) * 1_000_000)
    except ValueError:
        pass
    try:
        t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (ISO 8601 or Unix seconds)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)
    return int(t.timestamp() * 1_000_000)


def seed_arg(text: str) -> int:
    """A Community ID seed (0-65535), for argparse."""
    from wirestream.config import community_id_seed

    try:
        return community_id_seed(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def at_least_one(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {n}")
    return n


def replication_factor(text: str) -> int:
    """-1 (the broker's default) or 1 and more."""
    n = int(text)
    if n < 1 and n != -1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, or -1 for the broker's default, not {n}")
    return n


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The environment's settings, overridden by the options this command has."""
    s = Settings.from_env()
    s.bootstrap = args.bootstrap or None
    s.registry = args.registry or None
    s.partitions = args.partitions
    s.replication_factor = args.replication_factor
    if hasattr(args, "idle_timeout"):
        s.idle_timeout_s = args.idle_timeout
    if hasattr(args, "snaplen"):
        s.payload_snaplen = args.snaplen
    if hasattr(args, "l7"):
        s.l7, s.redact, s.body_cap = args.l7, args.redact, args.body_cap
        s.community_id_seed = args.community_id_seed
        s.tls_keylog = tls_keylog_path(args.tls_keylog)
    if hasattr(args, "window"):
        alert_thresholds(args)  # a bad threshold fails here, before anything starts
        s.window_s, s.lateness_s, s.alert_thresholds = args.window, args.lateness, args.alert_threshold
        s.windows = args.windows
    return s


def kafka_given(args: argparse.Namespace, command: str, hint: str = "") -> bool:
    """For commands that need an existing Kafka and registry: False (after saying so)
    when they were not given; else True once the broker answers (BrokerUnreachable if not)."""
    if not args.bootstrap or not args.registry:
        print(f"wirestream: error: {command} needs --bootstrap and --registry (or WIRESTREAM_BOOTSTRAP and "
              f"WIRESTREAM_REGISTRY){hint}", file=sys.stderr)
        return False
    from wirestream.broker import check_reachable

    check_reachable(args.bootstrap)
    return True


#: Set once :func:`interrupt_once` has raised its KeyboardInterrupt. Raised while an
#: extension's C code runs, the interrupt can come out as that code's own error with no
#: trace of it: confluent-kafka's configuration parsing, interrupted as it reads a key,
#: raises "TypeError: expected configuration property name as type unicode string" (its
#: PyErr_Format clears the KeyboardInterrupt). ``main`` reads this to tell.
INTERRUPT_RAISED = threading.Event()


def interrupt_once(signum: int, frame: object) -> None:
    """Signal handler: interrupt the command (KeyboardInterrupt), once. Later SIGINT and
    SIGTERM are ignored: the interrupt starts the clean-up (``Runtime.stop``: workers,
    registry, broker), and Ctrl-C held down must not break into it and leave processes
    behind. The clean-up has time limits of its own (SIGKILL after a grace period)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    INTERRUPT_RAISED.set()
    raise KeyboardInterrupt


class StopOnSignal:
    """For long-running commands (capture, produce live, k8s-watch, sinks, plugins):
    SIGINT/SIGTERM ask them to stop cleanly; calling it says whether one has.
    ``second_interrupts``: a second signal interrupts the clean-up too."""

    def __init__(self, second_interrupts: bool = False) -> None:
        self.asked = False
        self.second_interrupts = second_interrupts
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.asked and self.second_interrupts:
            interrupt_once(signum, frame)
        self.asked = True

    def __call__(self) -> bool:
        return self.asked


def print_error(message: Any) -> None:
    """One line on stderr, as every expected failure is reported."""
    print(f"wirestream: error: {message}", file=sys.stderr)
