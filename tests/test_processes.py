"""wirestream/processes.py: children that never outlive the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from wirestream.processes import die_with_parent

_PARENT = """
import subprocess, sys, time
from wirestream.processes import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=die_with_parent())
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_child_goes_when_its_parent_is_killed_outright() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its parent's SIGKILL"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_child_whose_parent_died_before_it_asked_for_the_signal_goes_at_once() -> None:
    """The window between fork and prctl: a child already orphaned by then gets no
    parent-death signal; it must notice and go. Simulated by running the pre-exec step in
    a process whose parent is not the one that made it."""
    step = die_with_parent()  # made here: this process is "the parent"
    middle = os.fork()
    if middle == 0:  # a process between: its child's parent is not this test's process
        grandchild = os.fork()
        if grandchild == 0:
            step()
            os._exit(0)  # survived: the step did not see the orphaning
        _, status = os.waitpid(grandchild, 0)
        os._exit(9 if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL else 1)
    _, status = os.waitpid(middle, 0)
    assert os.WEXITSTATUS(status) == 9, "the orphaned child went on to exec"


def test_a_child_of_a_living_parent_is_left_alone() -> None:
    step = die_with_parent()
    child = os.fork()
    if child == 0:
        step()
        os._exit(0)
    _, status = os.waitpid(child, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
