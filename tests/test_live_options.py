"""``--socket-ring-mb`` (capture, produce live) sizes the socket events' BPF ring buffer:
parsed into ``CaptureOptions.socket_ring_pages``, a power of two pages as the kernel
requires. That ``open_capture`` hands it to the kernel is tests/test_live_loss.py's (a
one-page buffer overflows there)."""

from __future__ import annotations

import mmap
import subprocess
import sys

import pytest
from wirestream.producers.af_packet import CaptureError
from wirestream.producers.live_capture import CaptureOptions, open_capture, ring_pages_of_mb

from wirestream.cli import build_parser
from wirestream.commands import common

MIB_PAGES = (1 << 20) // mmap.PAGESIZE


def options(*argv: str) -> CaptureOptions:
    return common.capture_options(build_parser().parse_args(list(argv)))


def test_megabytes_are_a_power_of_two_pages_rounded_down() -> None:
    assert ring_pages_of_mb(4) == 4 * MIB_PAGES
    assert ring_pages_of_mb(3) == 2 * MIB_PAGES  # 3 MiB: 2 fit, 4 do not
    assert ring_pages_of_mb(1.5) == MIB_PAGES
    assert ring_pages_of_mb(0.001) == 1  # less than a page: one page
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            ring_pages_of_mb(bad)


@pytest.mark.parametrize("command", [["capture"], ["produce", "live"]])
def test_both_live_commands_take_socket_ring_mb(command: list[str]) -> None:
    assert options(*command, "--socket-ring-mb", "1").socket_ring_pages == MIB_PAGES
    assert options(*command, "--socket-ring-mb", "0.004").socket_ring_pages == 1
    # without the option: the default of the Python API
    assert options(*command).socket_ring_pages == CaptureOptions().socket_ring_pages == 4 * MIB_PAGES


def test_a_ring_of_no_size_is_a_usage_error() -> None:
    # a process of its own: the command installs its signal handlers
    done = subprocess.run([sys.executable, "-m", "wirestream", "capture", "--socket-ring-mb", "0"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == common.EXIT_USAGE, done.stderr
    assert "--socket-ring-mb must be more than 0, not 0.0" in done.stderr


def test_open_capture_refuses_a_ring_not_a_power_of_two_pages() -> None:
    with pytest.raises(CaptureError, match="power of two pages, not 3"):
        open_capture(CaptureOptions(socket_ring_pages=3))
