"""The ``wirestream`` command: the top-level parser, and dispatch to the sub-commands.

Each sub-command is a module of :mod:`wirestream.commands` (its options and what it
does). Every sub-command has ``--help`` with examples. Errors are one line on stderr
naming the input and the problem, with a non-zero exit code; no tracebacks for expected
failures.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from wirestream.commands import COMMANDS
from wirestream.commands.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    INTERRUPT_RAISED,
    interrupt_once,
    kafka_given,
)
from wirestream.config import Settings
from wirestream.errors import UsageError, WirestreamError

_DESCRIPTION = """\
wirestream: network observability as streams on Kafka.

Packets (capture files, or live capture) are published to Kafka in batches; processors
join them into TCP connection records (and, as they are added, L7 transactions, DNS,
TLS, service windows and alerts) on output topics that anyone can subscribe to.

With no --bootstrap, wirestream starts an embedded Kafka-protocol broker and schema
registry on 127.0.0.1 for the duration of the command.
"""

_EPILOG = """\
examples:
  wirestream analyze capture.pcapng                 # whole pipeline, summary tables
  wirestream analyze a.pcap b.pcap.gz --out out/    # also write out/wire.connections.jsonl ...
  wirestream broker                                 # embedded broker + registry, foreground
  wirestream produce pcap capture.pcap --bootstrap 127.0.0.1:9092 --registry http://127.0.0.1:8081
  wirestream process --bootstrap 127.0.0.1:9092 --registry http://127.0.0.1:8081
  wirestream tail wire.connections --bootstrap 127.0.0.1:9092 --registry http://127.0.0.1:8081

environment: WIRESTREAM_BOOTSTRAP, WIRESTREAM_REGISTRY, WIRESTREAM_PARTITIONS,
WIRESTREAM_GROUP, WIRESTREAM_IDLE_TIMEOUT set the defaults of the matching flags;
WIRESTREAM_KAFKA_* the Kafka security (TLS, SASL, mutual TLS: docs/security.md).
"""


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="wirestream", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_PrintVersion)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub, defaults)
    return parser


class _PrintVersion(argparse.Action):
    """``--version``: the package metadata is read only when asked (~40 ms otherwise spent
    in every command and every worker process)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"wirestream {_version()}")
        parser.exit()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("wirestream")
    except Exception:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM behaves like Ctrl-C: the context managers stop what was started.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt_once)
    try:
        if hasattr(args, "kafka_security_protocol"):
            from wirestream import kafka_security

            kafka_security.export_flags(args)  # for this process's clients and its workers
        command = getattr(args, "kafka_required", None)
        if command and not kafka_given(args, command, args.kafka_hint):
            return EXIT_USAGE
        return args.run(args)
    except UsageError as exc:
        print(f"wirestream {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WirestreamError as exc:
        print(f"wirestream: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("wirestream: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        # A Ctrl-C whose handler ran inside an extension's C code (the compiled core's,
        # confluent-kafka's) can come out as that code's error caused by the
        # KeyboardInterrupt (a SystemError "returned a result with an exception set"), or
        # as an error of its own that dropped it (INTERRUPT_RAISED says the interrupt was
        # raised): it is the interrupt all the same.
        if _caused_by_interrupt(exc) or INTERRUPT_RAISED.is_set():
            print("wirestream: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        raise


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 8:
        if isinstance(cause, KeyboardInterrupt):
            return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False

