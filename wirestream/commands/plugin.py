"""``wirestream plugin list|run``: installed processor plugins."""

from __future__ import annotations

import argparse
import sys

from wirestream.commands import common
from wirestream.config import Settings


def add_parser(sub: common.Subparsers, defaults: Settings) -> argparse.ArgumentParser:
    p = sub.add_parser("plugin", help="list and run installed processor plugins",
                       description="Processor plugins are Python packages that register a class in the "
                                   "'wirestream.processors' entry point group (see wirestream/plugins.py and "
                                   "examples/slow_requests).")
    plsub = p.add_subparsers(dest="plugin_command", metavar="ACTION", required=True)
    pl = plsub.add_parser("list", help="installed plugins, with their inputs and outputs")
    pl.set_defaults(run=run_list)
    pr = plsub.add_parser("run", help="run a plugin (a consumer group named after it) until Ctrl-C")
    pr.add_argument("name", help="the plugin's entry point name")
    pr.add_argument("--group", default=None, help="consumer group (default: wirestream-plugin-NAME)")
    common.add_kafka_args(pr, defaults, required=True)
    pr.set_defaults(run=run_plugin)
    return p


def run_list(args: argparse.Namespace) -> int:
    from wirestream import plugins

    eps = plugins.installed()
    if not eps:
        print(f"no plugins installed (entry point group {plugins.ENTRY_POINT_GROUP})")
    for name in sorted(eps):
        plugin = plugins.load(name)
        print(f"{name}: {', '.join(plugin.inputs)} -> {', '.join(plugin.outputs) or '-'}  ({eps[name].value})")
    return common.EXIT_OK


def run_plugin(args: argparse.Namespace) -> int:
    from wirestream import plugins

    plugin = plugins.load(args.name)
    stop = common.StopOnSignal()
    print(f"wirestream plugin: running {args.name}: {', '.join(plugin.inputs)} -> {', '.join(plugin.outputs)}",
          file=sys.stderr, flush=True)
    counters = plugins.run_plugin(plugin, args.bootstrap, args.registry, stop=stop,
                                  group=args.group, partitions=args.partitions)
    print(f"{args.name}: {dict(counters)}")
    return common.EXIT_OK
