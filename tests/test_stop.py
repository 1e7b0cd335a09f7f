"""Stopping everything: Ctrl-C and an error mid-run leave no process behind.

The claim (README "What analyze does", 5; wirestream/runtime.py): ``analyze`` and
``capture`` stop everything they started -- the embedded broker (``tansu``, its own
session) and the processor workers (``wirestream process``, Faust, each in its own
session) -- also on Ctrl-C or an error.

The commands run as a user runs them: a subprocess in its own process group, Ctrl-C being
SIGINT to that group (what a terminal sends; the broker and the workers are in sessions
of their own, so it reaches only the command). Every process the command starts is found
by a marker in its environment (``WIRESTREAM_TEST_STOP=<uuid>``, inherited by every
descendant, whatever its session or parent after it is orphaned) in ``/proc/*/environ``:
the test first sees the broker and the workers running, interrupts or breaks the run,
and then requires that none is left once the command has exited.

The error mid-run is one the code says it handles: a processor worker that dies
(``Runtime.dead_worker`` -> ``ProcessingTimeout``: one clear line, exit code 1).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers import DATA, require_or_skip, tagged_processes
from netns import IP

#: a large real capture (many connections, HTTP), given several times: a run of some seconds
BIG = str(DATA / "chrissanders" / "http_espn.pcapng")
#: Enough input that analyze is still busy when the tests interrupt it (~1 s after its
#: workers are up), also on a slow CI machine: every test here ends the run early, so more
#: costs nothing. 20 copies were enough until the L7 analysers moved into the compiled
#: core; 100 (a 2 s run here) were not once the one-shot got faster still: CI killed the
#: broker while analyze was writing its summary, all records already in, and it rightly
#: exited 0. 1,000 are a ~20 s run.
COPIES = 1000
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130
#: how long a command may take to exit once interrupted (it waits 0.5 s for its workers,
#: 0.5 s for the broker, then kills them)
PROMPT_S = 15.0


class Command:
    """``python -m wirestream ARGS`` in its own process group, tagged."""

    def __init__(self, *args: str) -> None:
        self.tag = uuid.uuid4().hex
        self.proc = subprocess.Popen([sys.executable, "-m", "wirestream", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     process_group=0,
                                     env={**os.environ, "WIRESTREAM_TEST_STOP": self.tag})
        self.seen: dict[int, str] = {}  # every tagged process seen while it ran

    def children(self) -> dict[int, str]:
        now = {pid: cmd for pid, cmd in tagged_processes(self.tag).items() if pid != self.proc.pid}
        self.seen.update(now)
        return now

    def wait_for(self, what, timeout: float = 90.0) -> dict[int, str]:
        """Until ``what(children)`` holds; the children then."""
        deadline = time.monotonic() + timeout
        while True:
            children = self.children()
            if what(children):
                return children
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(f"the command ended first (exit {self.proc.returncode}): {err}\n{out[-500:]}")
            assert time.monotonic() < deadline, f"not reached in {timeout} s; children: {children}"
            time.sleep(0.1)

    def interrupt(self) -> None:
        """Ctrl-C in the terminal: SIGINT to the command's process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def finish(self, timeout: float = PROMPT_S) -> tuple[float, str, str]:
        """Wait for the command to exit: (seconds it took, stdout, stderr)."""
        t0 = time.monotonic()
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"did not exit within {timeout} s") from None
        return time.monotonic() - t0, out, err

    def left(self) -> dict[int, str]:
        """Tagged processes still alive after the command exited."""
        return tagged_processes(self.tag)

    def __enter__(self) -> Command:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        """Test clean-up only: kill the command and whatever it left."""
        running = self.proc.returncode is None
        for pid in [*self.left(), *([self.proc.pid] if running else [])]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if running:
            self.proc.communicate()


def _broker(children: dict[int, str]) -> list[int]:
    return [pid for pid, cmd in children.items() if "tansu" in cmd.split(" ", 1)[0]]


def _workers(children: dict[int, str], roles: tuple[str, ...] = ("packets", "all")) -> list[int]:
    """The packet workers (``--role all``: the one with the windows in a thread)."""
    return [pid for pid, cmd in children.items()
            if " process " in cmd and any(f"--role {role}" in cmd for role in roles)]


def _running(children: dict[int, str]) -> bool:
    """The broker and every worker (2 packet workers, one of them with the windows) are up."""
    return len(_broker(children)) == 1 and len(_workers(children)) == 2 and len(_workers(children, ("all",))) == 1


def _analyze(tmp_path: Path) -> Command:
    return Command("analyze", *[BIG] * COPIES, "--workers", "2", "--json", "--no-progress",
                   "--out", str(tmp_path / "out"))


def _the_error_line(err: str) -> str:
    """The one ``wirestream: error:`` line a failed command printed (asserted one)."""
    said = [line for line in err.splitlines() if line.startswith("wirestream: error: ")]
    assert len(said) == 1, err
    return said[0]


def _assert_nothing_left(cmd: Command) -> None:
    left = cmd.left()
    assert not left, f"left running after the command exited: {left}"
    assert _broker(cmd.seen) and _workers(cmd.seen), f"the test saw no broker/worker: {cmd.seen}"


def test_ctrl_c_mid_analyze_stops_the_broker_and_the_workers(tmp_path) -> None:
    with _analyze(tmp_path) as cmd:
        cmd.wait_for(_running)
        time.sleep(1.0)  # replaying and processing
        assert cmd.proc.poll() is None, "analyze finished before it could be interrupted"
        cmd.interrupt()
        took, out, err = cmd.finish()
        assert cmd.proc.returncode == EXIT_INTERRUPTED, err
        # (librdkafka may add lines: the file publishers' clients outlive the broker)
        assert "wirestream: interrupted" in err.splitlines(), err
        assert "Traceback" not in err, err
        assert out == "", "a summary of an interrupted run"
        assert took < PROMPT_S
        _assert_nothing_left(cmd)


def test_a_worker_dying_mid_analyze_is_one_clear_error_and_stops_everything(tmp_path) -> None:
    with _analyze(tmp_path) as cmd:
        children = cmd.wait_for(_running)
        time.sleep(1.0)
        assert cmd.proc.poll() is None, "analyze finished before a worker could be killed"
        for pid in _workers(children):
            os.kill(pid, signal.SIGKILL)  # an OOM kill, a crash in native code
        took, out, err = cmd.finish(timeout=60)
        assert cmd.proc.returncode == EXIT_ERROR, err
        said = _the_error_line(err)
        assert said.startswith("wirestream: error: processor worker ") and said.endswith(
            "exited with code -9:"), err  # then the tail of the worker's log
        assert "Traceback" not in err.split(said, 1)[0], err
        _assert_nothing_left(cmd)


def test_ctrl_c_held_down_mid_analyze_still_stops_everything(tmp_path) -> None:
    """Ctrl-C pressed again and again (every 50 ms) until analyze exits: some of the
    presses land while it is stopping what it started."""
    with _analyze(tmp_path) as cmd:
        cmd.wait_for(_running)
        time.sleep(1.0)
        assert cmd.proc.poll() is None, "analyze finished before it could be interrupted"
        deadline = time.monotonic() + PROMPT_S
        while cmd.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                cmd.interrupt()
            time.sleep(0.05)
        took, out, err = cmd.finish()
        left = cmd.left()
        assert not left, f"left running after the command exited: {left}"
        assert cmd.proc.returncode == EXIT_INTERRUPTED, err


def test_the_broker_dying_mid_analyze_is_one_clear_error_and_stops_everything(tmp_path) -> None:
    """The embedded broker killed mid-run: analyze says so at once (it does not wait out its
    stall timeout blaming the processors) and stops the workers."""
    with _analyze(tmp_path) as cmd:
        children = cmd.wait_for(_running)
        time.sleep(1.0)
        assert cmd.proc.poll() is None, "analyze finished before the broker could be killed"
        for pid in _broker(children):
            os.kill(pid, signal.SIGKILL)
        took, out, err = cmd.finish(timeout=60)
        assert cmd.proc.returncode == EXIT_ERROR, err
        assert "the embedded broker exited" in _the_error_line(err), err
        assert took < 30, f"took {took:.1f} s to notice"
        _assert_nothing_left(cmd)


def test_analyze_killed_outright_takes_the_broker_and_the_workers_with_it(tmp_path) -> None:
    """SIGKILL (the OOM killer, a CI time-out) gives analyze no chance to clean up: the
    broker and the workers, in sessions of their own, go on their parent's death alone
    (wirestream/processes.py)."""
    with _analyze(tmp_path) as cmd:
        cmd.wait_for(_running)
        assert cmd.proc.poll() is None, "analyze finished before it could be killed"
        cmd.proc.kill()
        cmd.proc.communicate()
        deadline = time.monotonic() + PROMPT_S  # SIGTERM, then each stops as on Ctrl-C
        while cmd.left() and time.monotonic() < deadline:
            time.sleep(0.1)
        _assert_nothing_left(cmd)


@pytest.fixture
def empty_netns():
    """A network namespace of this test's own (nothing but ``lo``), to capture in."""
    if os.geteuid() != 0:
        require_or_skip("live capture and network namespaces need root")
    name = f"ws-stop-{uuid.uuid4().hex[:6]}"
    subprocess.run([IP, "netns", "add", name], check=True, capture_output=True, timeout=10)
    try:
        subprocess.run([IP, "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=10)
        yield name
    finally:
        subprocess.run([IP, "netns", "del", name], capture_output=True, timeout=10)


def _capture(netns: str) -> Command:
    return Command("capture", "--netns", netns, "-i", "lo", "--mode", "af_packet", "--workers", "2", "--json")


@pytest.mark.parametrize("second", [None, 0.1], ids=["ctrl-c", "ctrl-c-twice"])
def test_ctrl_c_ends_a_capture_and_stops_everything(empty_netns, second) -> None:
    """The first Ctrl-C ends the capture and the pipeline finishes it (exit 0, the
    summary); a second one interrupts that too (exit 130), also when it comes before the
    capture loop saw the first. Either way nothing is left. (Not tested: two at the very
    same moment, which the kernel delivers as one signal.)"""
    with _capture(empty_netns) as cmd:
        cmd.wait_for(_running)
        cmd.interrupt()
        if second is not None:
            # inside the clean-up the first one started (0.2-0.5 s here), or, on a busy
            # machine, still in the capture loop. (A second Ctrl-C after the command's
            # last moment finds Python finalising: it dies of the signal.)
            time.sleep(second)
            assert cmd.proc.poll() is None, "finished before the second Ctrl-C"
            cmd.interrupt()
        took, out, err = cmd.finish(timeout=120 if second is None else PROMPT_S)
        if second is None:
            assert cmd.proc.returncode == EXIT_OK, err
            assert '"files"' in out, out
        else:
            assert cmd.proc.returncode == EXIT_INTERRUPTED, err
            assert "wirestream: interrupted" in err.splitlines(), err
        assert "Traceback" not in err, err
        _assert_nothing_left(cmd)


def test_a_worker_dying_mid_capture_is_one_clear_error_and_stops_everything(empty_netns) -> None:
    with _capture(empty_netns) as cmd:
        children = cmd.wait_for(_running)
        for pid in _workers(children):
            os.kill(pid, signal.SIGKILL)
        cmd.interrupt()  # the capture ends; collecting its records finds the dead workers
        took, out, err = cmd.finish(timeout=60)
        assert cmd.proc.returncode == EXIT_ERROR, err
        said = _the_error_line(err)
        assert said.startswith("wirestream: error: processor worker ") and said.endswith(
            "exited with code -9:"), err
        _assert_nothing_left(cmd)
