"""``wirestream doctor``: which live capture modes this machine offers, and why not."""

from __future__ import annotations

import argparse
import json

from wirestream.commands import common
from wirestream.config import Settings


def add_parser(sub: common.Subparsers, defaults: Settings) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "doctor", help="what this machine offers for live capture (eBPF, AF_PACKET), and why not",
        description="Check the kernel (BTF, tracefs), bcc, kernel headers, capabilities and raw "
                    "sockets, one line each with what to fix, then say which capture modes work. "
                    "By default it proves eBPF by compiling and loading a tiny socket filter. "
                    "Also: how Kafka and the schema registry would be reached (TLS, SASL, client "
                    "certificates, from the WIRESTREAM_KAFKA_* and WIRESTREAM_REGISTRY_* settings), "
                    "without the secrets.",
    )
    p.add_argument("--no-probe", action="store_true", help="do not compile and load a test BPF program")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from wirestream.doctor import diagnose

    report = diagnose(probe=not args.no_probe)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return common.EXIT_OK
    width = max(len(c.name) for c in report.checks) + 1
    for c in report.checks:
        print(f"{'ok ' if c.ok else 'NO '} {c.name:{width}} {c.detail}")
    print()
    for name, mode in report.as_dict()["capture_modes"].items():  # type: ignore[union-attr]
        print(f"{name:19} {'available' if mode['available'] else 'unavailable: ' + mode['reason']}")
    return common.EXIT_OK
