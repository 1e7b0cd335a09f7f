"""Child processes that never outlive the command that started them.

The embedded broker and the processor workers run in sessions of their own (so that
Ctrl-C in a terminal reaches the command, which then stops them in order). A command that
is killed outright (SIGKILL, the OOM killer, a CI time-out) gets no chance to stop them:
they would be left running, orphaned. Linux's parent-death signal closes that gap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_prctl = _libc.prctl


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets SIGTERM when its
    parent dies, however it dies."""
    parent = os.getpid()

    def term_when_parent_dies() -> None:
        # Runs in the child between fork and exec: only async-signal-safe calls.
        # The signal is sent when the *thread* that forked ends; every caller forks from the
        # thread that also stops the child (a Runtime or an EmbeddedBroker's owner).
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        # A parent that died between the fork and the call above sends nothing: the
        # child, already orphaned, goes at once (SIGKILL: before exec, a SIGTERM would
        # reach only the handler the child inherited from Python, which just sets a flag).
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return term_when_parent_dies
