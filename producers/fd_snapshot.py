"""Open file descriptors and sockets per container, from ``/proc``.

A snapshot of what every process of the node holds open, grouped by the container its
cgroup names (docker, containerd, CRI-O: the same rule as the socket events' container
id), processes outside any container in one row with no container id. Published on
``wire.sockets`` as ``fd_snapshot`` events every ``--fd-snapshot-interval`` seconds by
live eBPF capture (``producers/socket_events.py``), so that a container leaking sockets
or descriptors shows up next to the connections it makes.

Read from ``/proc/PID/fd`` (one ``readlink`` per descriptor: a socket reads
``socket:[inode]``), not from the kernel's tables through eBPF: a snapshot every half
minute costs far less than counting every ``open``/``close`` of the machine. A process
that exits while it is read is skipped; one whose descriptors cannot be read (another
user namespace without privileges) is counted in ``unreadable``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope, /docker/<id>, kubepods/.../<id>
_CONTAINER_ID = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?$")


@dataclass(frozen=True)
class ContainerFds:
    """What the processes of one container (None: of no container) hold open."""

    container_id: str | None
    processes: int
    open_fds: int
    open_sockets: int


@dataclass
class FdSnapshot:
    rows: list[ContainerFds]
    unreadable: int  # processes whose fds could not be listed (not gone: forbidden)


def container_of_cgroup(path: str) -> str | None:
    """The container id in a cgroup path, if any (innermost first)."""
    for part in reversed(path.split("/")):
        m = _CONTAINER_ID.search(part)
        if m:
            return m.group(1)
    return None


def _cgroup_path(pid_dir: Path) -> str:
    """The process's cgroup v2 path (``0::/...``), else its first v1 hierarchy's."""
    text = (pid_dir / "cgroup").read_text()
    first = ""
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        path = rest.partition(":")[2]
        if hierarchy == "0":
            return path
        first = first or path
    return first


def take_snapshot(proc: Path = Path("/proc")) -> FdSnapshot:
    """Count every process's open descriptors and sockets, per container."""
    totals: dict[str | None, list[int]] = {}
    unreadable = 0
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        pid_dir = Path(entry.path)
        try:
            container = container_of_cgroup(_cgroup_path(pid_dir))
            fds = sockets = 0
            with os.scandir(pid_dir / "fd") as it:
                for fd in it:
                    fds += 1
                    try:
                        if os.readlink(fd.path).startswith("socket:"):
                            sockets += 1
                    except FileNotFoundError:
                        pass  # closed while we read: still counted as open when listed
        except FileNotFoundError:
            continue  # the process exited
        except PermissionError:
            # Listing /proc/PID/fd takes only the owner's uid; reading its links takes
            # ptrace read access (CAP_SYS_PTRACE, or every capability the process has,
            # in its user namespace): a process we cannot read is left out, counted.
            unreadable += 1
            continue
        except OSError:
            continue  # a zombie, or gone in between: nothing to count
        row = totals.setdefault(container, [0, 0, 0])
        row[0] += 1
        row[1] += fds
        row[2] += sockets
    rows = [ContainerFds(cid, p, f, s) for cid, (p, f, s) in totals.items()]
    rows.sort(key=lambda r: (r.container_id is not None, r.container_id or ""))
    return FdSnapshot(rows, unreadable)
