"""Container ids from cgroup ids, and process names, as socket events resolve them.

The kernel's cgroup id is the inode number of the cgroup's directory in the cgroup v2
tree; here the tree is a real directory tree laid out as container runtimes lay it out
(systemd driver: docker, containerd, CRI-O scopes; cgroupfs driver: plain ids)."""

from __future__ import annotations

import os

from wirestream.producers.socket_events import ProcessLookup

CID = "4f3c2b1a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b"


def test_container_ids_of_runtime_layouts(tmp_path) -> None:
    layouts = {
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{CID}.scope": CID,
        f"system.slice/docker-{CID}.scope": CID,
        f"kubepods.slice/kubepods-pod2.slice/crio-{CID}.scope": CID,
        f"kubepods/besteffort/pod3/{CID}": CID,
        "user.slice/user-0.slice/session-1.scope": None,
    }
    inodes = {}
    for rel in layouts:
        path = tmp_path / rel
        path.mkdir(parents=True)
        inodes[rel] = os.stat(path).st_ino
    lookup = ProcessLookup(cgroup_root=tmp_path)
    for rel, expected in layouts.items():
        assert lookup.container_id(inodes[rel]) == expected, rel
    assert lookup.container_id(123456789) is None  # not a cgroup of this tree


def test_process_name_is_the_main_threads(tmp_path) -> None:
    lookup = ProcessLookup(cgroup_root=tmp_path)
    me = os.getpid()
    with open(f"/proc/{me}/comm") as f:
        name = f.read().strip()
    assert lookup.process_name(me, me, "whatever-thread") == "whatever-thread"  # the main thread: its own
    assert lookup.process_name(me, me + 1, "rdk:broker-1") == name  # another thread: the process's
    assert lookup.process_name(2**22 + 12345, 2**22 + 12346, "gone") == "gone"  # the process has exited
    assert lookup.netns(me) == os.stat(f"/proc/{me}/ns/net").st_ino
