"""Socket and syscall context (issue 19, part 6) on the real kernel.

* The data syscalls a process makes on a connection's socket are counted in the kernel
  (``bpf/socket_events.c``: write, writev, sendto, sendmsg, read, readv, recvfrom,
  recvmsg), published on ``wire.sockets`` as ``io`` events while the socket is open and
  with its ``close``, and joined onto the connection record as ``client_syscalls`` and
  ``server_syscalls``. A client and a server started here (on loopback) make a known
  number of send calls with known sizes through every send syscall; the counts read back
  from the broker are those, and the time the client spent blocked in ``recv`` while
  the server slept is in ``recv_time_us``.
* Open descriptors per container (``producers/fd_snapshot.py``): a process moved into a
  cgroup named as a container runtime names it, holding a known number of sockets and
  files, is one ``fd_snapshot`` row with that container id and those counts, published
  through the broker.

The full pipeline (``wirestream capture`` into connection records) is checked in
test_live_capture.py.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import ebpf_unavailable, require_or_skip
from wirestream.processors.socket_join import SYSCALL_FIELDS, SocketJoin
from wirestream.producers.fd_snapshot import container_of_cgroup, take_snapshot

from wirestream.codec import AvroCodec
from wirestream.reader import TopicReader
from wirestream.topics import SOCKETS

SERVER_SLEEP_S = 0.3
RESPONSE = 1234
# client: one call of each send syscall, 7,000 bytes in all; then half-close, read the
# response (the server sleeps first: the client waits inside recv), and keep the socket
# open until told, so that an io reading sees it open; then close.
CLIENT = """
import os, socket, sys
port = int(sys.argv[1])
c = socket.create_connection(("127.0.0.1", port))
fd = c.fileno()
os.write(fd, b"a" * 1000)             # write
c.send(b"b" * 2000)                   # sendto
c.sendmsg([b"c" * 3000])              # sendmsg
os.writev(fd, [b"d" * 500, b"e" * 500])  # writev
c.shutdown(socket.SHUT_WR)
got = 0
while chunk := c.recv(65536):         # recvfrom
    got += len(chunk)
print(c.getsockname()[1], got, flush=True)
sys.stdin.readline()                  # the test reads the kernel's counts meanwhile
c.close()
print("closed", flush=True)
"""
SERVER = f"""
import os, socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
got = 0
while True:                           # read, readv and recvmsg in turn, until EOF
    data = os.read(c.fileno(), 1500)
    if not data:
        break
    got += len(data)
    buf = bytearray(700)
    n = os.readv(c.fileno(), [buf])
    got += n
    if n == 0:
        break
    data, *_ = c.recvmsg(900)
    got += len(data)
    if not data:
        break
time.sleep({SERVER_SLEEP_S})
c.sendall(b"r" * {RESPONSE})         # sendto, once (loopback takes it whole)
c.close()
print(got, flush=True)
"""


def _published(broker: Any, registry: Any, source_id: str) -> list[dict]:
    """What a publisher of ``source_id`` put on wire.sockets (2 partitions), its two
    end-of-input markers included (all there, or the test fails)."""
    events: list[dict] = []
    with TopicReader(broker.bootstrap, AvroCodec(registry.url), [SOCKETS], "beginning") as reader:
        ends, deadline = 0, time.monotonic() + 30
        while ends < 2 and time.monotonic() < deadline:
            for m in reader.poll(0.5):
                if m.record["source_id"] == source_id:
                    ends += m.record["end_of_input"]
                    events.append(m.record)
    assert ends == 2, f"end-of-input markers of {source_id}: {ends} of 2"
    return events


def _source():
    reason = ebpf_unavailable()
    if reason:
        require_or_skip(f"eBPF socket events are not possible here: {reason}")
    from wirestream.producers.socket_events import SocketEventSource

    from wirestream.doctor import load_bcc

    source = SocketEventSource(load_bcc())
    if not source.syscalls:
        source.close()
        require_or_skip("this kernel has no syscall tracepoints (CONFIG_FTRACE_SYSCALLS)")
    return source


def test_data_syscalls_are_counted_per_socket_and_joined_onto_the_connection(broker, registry) -> None:
    from wirestream.producers.socket_events import SocketEventPublisher

    source = _source()
    source_id = f"syscalls-{os.getpid()}-{time.time_ns()}"
    publisher = SocketEventPublisher(broker.bootstrap, AvroCodec(registry.url), 2, source_id)
    server = client = None
    try:
        server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())
        client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        client_port, got = map(int, client.stdout.readline().split())
        assert got == RESPONSE
        assert int(server.stdout.readline()) == 7000
        server.wait(timeout=10)
        publisher.add(source.poll(0))
        publisher.add_io(source.io_table())  # the client's socket is still open: an io event
        client.stdin.write("close\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "closed"
        client.wait(timeout=10)
        time.sleep(0.1)
        publisher.add(source.poll(0))
        publisher.finish()
    finally:
        for p in (client, server):
            if p is not None and p.poll() is None:
                p.kill()
        source.close()
    assert not publisher.dropped.get("socket_event_malformed"), publisher.dropped

    events = _published(broker, registry, source_id)
    ours = [e for e in events if not e["end_of_input"]
            and {e["local_port"], e["remote_port"]} == {client_port, port}]
    by_kind: dict[tuple[str, int], list[dict]] = {}
    for e in ours:
        by_kind.setdefault((e["kind"], e["pid"]), []).append(e)

    def counts(e: dict) -> dict:
        return {f: e[f] for f in SYSCALL_FIELDS}

    # the client: 4 send calls (write, sendto, sendmsg, writev) of 7,000 bytes; 1,234
    # bytes received, blocked for the server's sleep; the io reading while it was open
    # already had all of it, and the close says the same
    (io,) = by_kind[("io", client.pid)]
    (client_close,) = by_kind[("close", client.pid)]
    assert io["local_port"] == client_port and io["fd"] is not None and io["process"]
    c = counts(client_close)
    assert counts(io) == c
    assert (c["send_calls"], c["send_bytes"], c["recv_bytes"]) == (4, 7000, RESPONSE), c
    assert c["recv_calls"] >= 2  # the data, then end of file
    assert SERVER_SLEEP_S * 1e6 <= c["recv_time_us"] < 10e6, c
    assert c["send_time_us"] < SERVER_SLEEP_S * 1e6, c
    # the server: 7,000 bytes read through read/readv/recvmsg, one send of the response
    (server_close,) = by_kind[("close", server.pid)]
    s = counts(server_close)
    assert server_close["local_port"] == port and server_close["remote_port"] == client_port
    assert (s["recv_bytes"], s["send_calls"], s["send_bytes"]) == (7000, 1, RESPONSE), s
    assert s["recv_calls"] >= 3
    # other sockets' events carry no counts but their own
    assert all(e["send_calls"] == e["recv_calls"] == 0 for e in ours if e["kind"] not in ("io", "close"))

    # joined: each side of the connection record gets its process's counts
    join = SocketJoin()
    for e in events:
        if not e["end_of_input"]:
            join.add(e)
    record = {"client_ip": "127.0.0.1", "client_port": client_port, "server_ip": "127.0.0.1",
              "server_port": port, "final": True}
    join.annotate(record)
    assert record["client_pid"] == client.pid and record["server_pid"] == server.pid
    assert record["client_syscalls"] == c and record["server_syscalls"] == s


def test_syscall_join_keeps_the_latest_cumulative_reading() -> None:
    """io readings are cumulative: a late reading with fewer calls than the close's does
    not replace it; an interim record gets what is known so far, the final one takes it."""
    join = SocketJoin()

    def event(kind: str, calls: int) -> dict:
        return {"kind": kind, "local_ip": "10.0.0.1", "local_port": 40000, "remote_ip": "10.0.0.2",
                "remote_port": 80, "pid": 7, "process": "p", "container_id": None, "segments": 0,
                "send_calls": calls, "recv_calls": 1, "send_bytes": 10 * calls, "recv_bytes": 5,
                "send_time_us": 3, "recv_time_us": 4}

    join.add(event("io", 2))
    interim = {"client_ip": "10.0.0.1", "client_port": 40000, "server_ip": "10.0.0.2", "server_port": 80,
               "final": False}
    join.annotate(interim)
    assert interim["client_syscalls"]["send_calls"] == 2 and interim["server_syscalls"] is None
    join.add(event("close", 5))
    join.add(event("io", 4))  # read before the close, published after it
    final = dict(interim, final=True)
    join.annotate(final)
    assert final["client_syscalls"] == {"send_calls": 5, "recv_calls": 1, "send_bytes": 50, "recv_bytes": 5,
                                        "send_time_us": 3, "recv_time_us": 4}
    again = dict(interim, final=True)
    join.annotate(again)
    assert again["client_syscalls"] is None  # the entry left with the final record


def test_a_socket_join_checkpointed_before_syscall_counts_restores() -> None:
    from wirestream.processors.state_codec import decode_state, encode_state

    join = SocketJoin()
    del join._syscalls  # as a checkpoint of the previous version holds it
    restored = decode_state(encode_state(join, {}), {})
    restored.add({"kind": "close", "local_ip": "10.0.0.1", "local_port": 1, "remote_ip": "10.0.0.2",
                  "remote_port": 2, "pid": 1, "process": "p", "container_id": None, "segments": 0,
                  **dict.fromkeys(SYSCALL_FIELDS, 1)})
    assert restored._syscalls


HOLDER = """
import os, socket, sys
held = [socket.socket() for _ in range(3)]                                   # TCP
held += [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]  # UDP
held += list(socket.socketpair())                                            # unix, 2 fds
files = [open(os.devnull) for _ in range(4)]
print(len(os.listdir("/proc/self/fd")) - 1, flush=True)  # less listdir's own descriptor
sys.stdin.readline()
"""


def _cgroup2_root() -> Path | None:
    from wirestream.producers.socket_events import cgroup2_mount

    return cgroup2_mount()


def test_fd_snapshot_counts_a_containers_descriptors_and_sockets(broker, registry) -> None:
    root = _cgroup2_root()
    if os.geteuid() != 0 or root is None:
        require_or_skip("the fd snapshot test needs root and a cgroup v2 hierarchy to make a container's cgroup in")
    container = secrets.token_hex(32)
    cgroup = root / f"wirestream-test-docker-{container}.scope"
    assert container_of_cgroup(f"/system.slice/docker-{container}.scope") == container
    cgroup.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        (cgroup / "cgroup.procs").write_text(str(holder.pid))
        open_fds = int(holder.stdout.readline())
        snapshot = take_snapshot()
        rows = {r.container_id: r for r in snapshot.rows}
        row = rows[container]
        assert (row.processes, row.open_fds, row.open_sockets) == (1, open_fds, 7), row
        assert rows[None].processes > 1  # this test and everything else outside containers

        from wirestream.producers.socket_events import SocketEventPublisher

        source_id = f"fds-{os.getpid()}-{time.time_ns()}"
        publisher = SocketEventPublisher(broker.bootstrap, AvroCodec(registry.url), 2, source_id)
        publisher.add_fd_snapshot(snapshot.rows)
        publisher.finish()
    finally:
        holder.kill()
        holder.wait()
        for _ in range(50):  # the cgroup can go once its last process is reaped
            try:
                cgroup.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    published = [e for e in _published(broker, registry, source_id) if e["kind"] == "fd_snapshot"]
    assert len(published) == len(snapshot.rows)
    (mine,) = [r for r in published if r["container_id"] == container]
    assert (mine["processes"], mine["open_fds"], mine["open_sockets"]) == (1, open_fds, 7)
    assert mine["pid"] is None and mine["local_port"] == 0


@pytest.mark.parametrize("path, container", [
    ("/kubepods.slice/kubepods-burstable.slice/cri-containerd-" + "ab" * 32 + ".scope", "ab" * 32),
    ("/docker/" + "0f" * 32, "0f" * 32),
    ("/user.slice/user-0.slice/session-1.scope", None),
])
def test_container_of_cgroup(path: str, container: str | None) -> None:
    assert container_of_cgroup(path) == container


def test_the_console_tables() -> None:
    from types import SimpleNamespace

    from rich.console import Console
    from wirestream.producers.fd_snapshot import ContainerFds
    from wirestream.sinks.console import print_fd_snapshot, print_syscalls

    console = Console(record=True, width=200)
    conns = [{"client_ip": "10.0.0.1", "client_port": 40000, "server_ip": "10.0.0.2", "server_port": 80,
              "client_process": "curl", "server_process": "nginx", "server_syscalls": None,
              "client_syscalls": {"send_calls": 1, "recv_calls": 3, "send_bytes": 80, "recv_bytes": 900,
                                  "send_time_us": 5, "recv_time_us": 700}},
             {"client_ip": "10.0.0.1", "client_port": 40001, "server_ip": "10.0.0.2", "server_port": 80}]
    print_syscalls(conns, 10, console)
    rows = [ContainerFds(None, 70, 300, 4), ContainerFds("ab" * 32, 2, 40, 25)]
    print_fd_snapshot([SimpleNamespace(fd_snapshot=rows)], 10, console)
    text = console.export_text()
    assert "top 1 of 1" in text and "1/3 calls, 80/900 B, 5 µs/700 µs" in text and "nginx" in text
    lines = [line for line in text.splitlines() if "abababababab" in line or "(no container)" in line]
    assert "abababababab" in lines[0] and "25" in lines[0]  # most sockets first
    console = Console(record=True)
    print_syscalls(conns[1:], 10, console)
    print_fd_snapshot([SimpleNamespace(fd_snapshot=[])], 10, console)
    assert console.export_text() == ""  # nothing counted: no tables


def test_fd_snapshot_counts_the_processes_it_may_not_read() -> None:
    """Without CAP_SYS_PTRACE, the descriptors of a process with capabilities the reader
    lacks cannot be listed (what capture in the base DaemonSet would meet): counted as
    unreadable, not as a container with no descriptors."""
    import shutil

    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        require_or_skip("needs root and setpriv (util-linux) to drop the capabilities")
    code = ("from wirestream.producers.fd_snapshot import take_snapshot; s = take_snapshot(); "
            "print(s.unreadable, sum(r.processes for r in s.rows))")
    r = subprocess.run([setpriv, "--bounding-set", "-all", "--inh-caps", "-all", "--", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    unreadable, counted = map(int, r.stdout.split())
    full = take_snapshot()
    # Every root process with capabilities (this test's own shell and pytest at least) is
    # unreadable without them; with them, at most processes of another user namespace
    # (a sandbox's init) are.
    assert unreadable > full.unreadable and unreadable >= 2, (unreadable, full.unreadable)
    total = sum(row.processes for row in full.rows) + full.unreadable
    assert abs((counted + unreadable) - total) <= 10, (counted, unreadable, total)  # processes come and go
