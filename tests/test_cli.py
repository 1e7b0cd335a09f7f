"""The ``wirestream`` command itself: what it says for bad input and missing sub-commands,
every command's ``--help``, and the packages a non-editable install carries."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from wirestream.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
#: the console script pyproject.toml installs, next to the interpreter running the tests
WIRESTREAM = Path(sys.executable).parent / "wirestream"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(WIRESTREAM), *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("content", [b"this is not a capture file\n" * 10, None],
                         ids=["garbage", "missing"])
def test_analyze_of_an_unreadable_file_is_one_error_line(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "not-a-capture"
    if content is not None:
        path.write_bytes(content)
    proc = run("analyze", str(path), "--no-progress")
    assert proc.returncode == 1, proc
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    # one line, naming the file and saying what is wrong with it: no summary of nothing
    assert len(lines) == 1, lines
    assert lines[0].startswith("wirestream: error: ") and str(path) in lines[0], lines
    expected = "no such file" if content is None else "not a pcap or pcapng capture file"
    assert expected in lines[0]
    assert proc.stdout == ""
    assert "Counters by stage" not in proc.stdout + proc.stderr


def test_analyze_json_of_an_unreadable_file_prints_no_json(tmp_path: Path) -> None:
    proc = run("analyze", str(tmp_path / "missing.pcap"), "--json")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip() == f"wirestream: error: {tmp_path / 'missing.pcap'}: no such file"


@pytest.mark.parametrize("top", ["0", "-1"])
def test_analyze_top_must_be_a_row_or_more(top: str) -> None:
    """(``--top -1`` once printed every row but the last: a slice, not a count.)"""
    proc = run("analyze", "--top", top, "tests/data/chrissanders/http_espn.pcapng")
    assert proc.returncode == 2
    assert f"argument --top: must be 1 or more, not {top}" in proc.stderr


@pytest.mark.parametrize("args, metavar", [((), "COMMAND"), (("produce",), "SOURCE"),
                                           (("sink",), "DESTINATION"), (("plugin",), "ACTION")])
def test_a_missing_sub_command_is_a_usage_error(args: tuple[str, ...], metavar: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"usage: {' '.join(('wirestream', *args))} ")
    assert f"the following arguments are required: {metavar}" in proc.stderr


def _commands() -> list[tuple[str, ...]]:
    """Every command and sub-command, as the argument lists that name it."""
    found = []

    def walk(parser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, child in action.choices.items():
                    found.append((*path, name))
                    walk(child, (*path, name))

    walk(build_parser(), ())
    return found


COMMANDS = _commands()


def test_every_command_is_there() -> None:
    assert COMMANDS == [
        ("analyze",), ("capture",), ("broker",), ("produce",), ("produce", "pcap"), ("produce", "live"),
        ("produce", "drops"), ("produce", "tls-plaintext"),
        ("process",), ("chains",), ("chain",), ("percentiles",), ("doctor",), ("k8s-watch",), ("replay",), ("sink",),
        ("sink", "parquet"), ("sink", "siem"), ("sink", "prometheus"), ("sink", "zeek"), ("ui",), ("plugin",),
        ("plugin", "list"),
        ("plugin", "run"), ("tail",),
    ]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: wirestream {' '.join(command)} ")
    assert "-h, --help" in out


def test_every_command_runs_something() -> None:
    """Each command (and sub-command) parses to a function that runs it."""
    parser = build_parser()
    leaves = [c for c in COMMANDS if not any(o[:len(c)] == c and len(o) > len(c) for o in COMMANDS)]
    required = {("analyze",): ["x.pcap"], ("produce", "pcap"): ["x.pcap"], ("percentiles",): ["--service", "s"],
                ("sink", "parquet"): ["--out", "d"], ("sink", "siem"): ["--url", "syslog+udp://h:1"],
                ("sink", "zeek"): ["--out", "d"], ("plugin", "run"): ["name"], ("tail",): ["wire.stats"]}
    for command in leaves:
        args = parser.parse_args([*command, *required.get(command, [])])
        assert callable(args.run), command


def test_every_package_is_installed() -> None:
    """pyproject.toml lists every package of the source tree: setuptools installs only
    those (an unlisted sub-package works in the editable install the tests use, and is
    missing from the Docker image)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = set()
    for package, directory in config["package-dir"].items():
        for init in (ROOT / directory).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / directory)
            on_disk.add(".".join((package, *relative.parts)))
    assert sorted(on_disk - set(config["packages"])) == []


@pytest.mark.parametrize("args", [("process",), ("tail", "wire.stats"), ("replay",), ("percentiles", "--service", "a"),
                                  ("sink", "parquet", "--out", "/nonexistent"),
                                  ("sink", "siem", "--url", "tcp://127.0.0.1:1"),
                                  ("sink", "prometheus"), ("plugin", "run", "x"), ("produce", "live"),
                                  ("k8s-watch",)], ids=" ".join)
def test_commands_that_need_a_kafka_say_so_when_none_is_given(args: tuple[str, ...]) -> None:
    """No embedded broker for these (they join a running pipeline): one line, exit 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WIRESTREAM_")}
    proc = subprocess.run([sys.executable, "-m", "wirestream", *args], capture_output=True, text=True,
                          timeout=30, env=env)
    assert proc.returncode == 2, proc.stderr
    name = " ".join(a for a in args[:2] if not a.startswith(("-", "wire.", "x")))
    assert proc.stderr.splitlines() == [
        f"wirestream: error: {name} needs --bootstrap and --registry (or WIRESTREAM_BOOTSTRAP and "
        f"WIRESTREAM_REGISTRY)" + ("; start them with 'wirestream broker'" if name in ("process", "k8s-watch") else "")]


def test_an_interrupt_an_extension_replaced_by_its_own_error_is_still_an_interrupt(monkeypatch, capsys) -> None:
    """A Ctrl-C raised while an extension's C code runs can come out as that code's error,
    the KeyboardInterrupt dropped (confluent-kafka's AdminClient, interrupted as it reads
    its configuration: "TypeError: expected configuration property name as type unicode
    string", seen in CI): still exit 130, "interrupted". Without an interrupt, the same
    error is a crash (it propagates)."""
    import argparse
    import signal

    from wirestream import cli
    from wirestream.commands import common

    def interrupted_in_c(args: argparse.Namespace) -> int:
        try:
            common.interrupt_once(signal.SIGINT, None)
        except KeyboardInterrupt:
            pass  # dropped, as the extension's PyErr_Format does: no __context__ left
        raise TypeError("expected configuration property name as type unicode string")

    def plain_error(args: argparse.Namespace) -> int:
        raise TypeError("a bug")

    class Parser:
        def __init__(self, run) -> None:
            self.run = run

        def parse_args(self, argv):
            return argparse.Namespace(command="test", run=self.run)

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        monkeypatch.setattr(cli, "build_parser", lambda: Parser(plain_error))
        with pytest.raises(TypeError, match="a bug"):
            cli.main([])
        monkeypatch.setattr(cli, "build_parser", lambda: Parser(interrupted_in_c))
        assert cli.main([]) == common.EXIT_INTERRUPTED
        assert "interrupted" in capsys.readouterr().err
    finally:
        common.INTERRUPT_RAISED.clear()
        for sig, handler in saved.items():
            signal.signal(sig, handler)
