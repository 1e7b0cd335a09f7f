"""The sub-commands of ``wirestream``, one module each.

A command module has ``add_parser(sub, defaults)``, which adds its parser (options, help,
examples) to the top-level sub-parsers and sets ``run`` (what it does, given the parsed
arguments; an exit code) as that parser's default; a command with sub-commands of its own
sets one ``run`` per sub-command. Options several commands share are in
:mod:`wirestream.commands.common`. Modules import what they run only inside ``run``, so
that ``--help`` and ``wirestream doctor`` stay fast and need no Kafka client.
"""

from __future__ import annotations

from wirestream.commands import (
    analyze,
    broker,
    capture,
    chains,
    doctor,
    k8s_watch,
    percentiles,
    plugin,
    process,
    produce,
    replay,
    sink,
    tail,
    ui,
)

#: in the order ``wirestream --help`` lists them
COMMANDS = (analyze, capture, broker, produce, process, chains, percentiles, doctor, k8s_watch, replay, sink,
            ui, plugin, tail)

__all__ = ["COMMANDS"]
