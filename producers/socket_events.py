"""Kernel socket and syscall events -> ``wire.sockets``.

The kernel side is ``bpf/socket_events.c`` (tracepoints: TCP state changes,
retransmissions, connect/accept/close). Its events arrive through a BPF ring buffer
(:class:`SocketEventSource`); :class:`SocketEventPublisher` turns them into
``SocketEvent`` records (schemas/socket_event.avsc) and publishes each to the
``wire.sockets`` partition of its connection: the same canonical key and partition
function as ``wire.packets``, so the processor that tracks a connection's packets also
receives its socket events and can join them (``processors/socket_join.py``).

What is resolved here, in user space:
- the 4-tuple of events that carry only the kernel socket (connect, close): from the
  socket's state changes, which carry it. An event whose socket never shows its 4-tuple
  (a connect that failed before a port was chosen) is counted, not published
  (``socket_event_unresolved``);
- the container id, from the cgroup id (the inode of the cgroup's directory in cgroup2)
  and the container runtimes' directory names;
- the network namespace, from ``/proc/PID/ns/net``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import secrets
import socket
import struct
import time
import zlib
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from wirestream.codec import AvroCodec
from wirestream.doctor import SYSCALL_TRACEPOINTS, TRACEFS
from wirestream.kafka import WireProducer
from wirestream.packet_block import PROTO_TCP, canonical_key, partition_for
from wirestream.topics import SOCKETS

from .fd_snapshot import ContainerFds, container_of_cgroup

#: ``struct event`` of bpf/socket_events.c (144 bytes): ts_ns, skaddr, cgroup_id, pid
#: (thread), tgid (process), kind, ret, fd, family, sport, dport, oldstate, newstate,
#: saddr[16], daddr[16], comm[16], segments, then a close's data syscalls: send_calls,
#: recv_calls, send_bytes, recv_bytes, send_ns, recv_ns
EVENT_STRUCT = struct.Struct("=QQQIIIiIHHHBB16s16s16sIIIQQQQ")
assert EVENT_STRUCT.size == 144

#: ``struct io_counts`` of bpf/socket_events.c: skaddr, cgroup_id, send_bytes, recv_bytes,
#: send_ns, recv_ns, send_calls, recv_calls
IO_STRUCT = struct.Struct("=QQQQQQII")
assert IO_STRUCT.size == 56

EVENT_KINDS = {1: "state", 2: "retransmit", 3: "connect", 4: "accept", 5: "close", 6: "io"}
EV_STATE, EV_RETRANSMIT, EV_CONNECT, EV_ACCEPT, EV_CLOSE, EV_IO = 1, 2, 3, 4, 5, 6
#: the data-syscall counters of a close or io event, in record field order
IO_FIELDS = ("send_calls", "recv_calls", "send_bytes", "recv_bytes", "send_time_us", "recv_time_us")
_NO_IO = (0, 0, 0, 0, 0, 0)

#: include/net/tcp_states.h
TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
    11: "CLOSING", 12: "NEW_SYN_RECV",
}

TCP_SYN_SENT, TCP_CLOSE, TCP_LISTEN = 2, 7, 10
AF_INET, AF_INET6 = 2, 10
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
_MAX_SOCKETS = 1 << 18  # remembered kernel sockets (4-tuples); cleared when full
_MAX_PENDING = 1 << 14  # events waiting for their socket's 4-tuple
_PENDING_MAX_AGE_NS = 2_000_000_000


def cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup on current systems,
    /sys/fs/cgroup/unified on "hybrid" ones (v1 controllers beside it); None if nowhere.
    bpf_get_current_cgroup_id() and sock_ops attachment are about this hierarchy."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "cgroup2":
                    return Path(fields[1])
    except OSError:
        pass
    return None


def program_text() -> str:
    return resources.files("wirestream.bpf").joinpath("socket_events.c").read_text()


TRACEFS_EVENTS = TRACEFS / "events"
#: the syscall tracepoints bpf/socket_events.c attaches (all or none: WITH_SYSCALLS)
BPF_F_ALLOW_MULTI = 2  # attach next to other programs on the cgroup (Cilium, systemd), not instead


class SocketEventSource:
    """The loaded tracepoint programs, the sock_ops program on the root cgroup, and their
    ring buffer. Needs bcc and root. :meth:`close` detaches the sock_ops program: unlike
    tracepoints, a cgroup attachment outlives the process that made it."""

    def __init__(self, bcc: Any, ring_pages: int = 1024, cgroup: Path | None = None) -> None:
        """``ring_pages``: ring buffer size in pages (a power of two; 1024 = 4 MiB,
        ~40k events)."""
        cflags = [f"-DRINGBUF_PAGES={ring_pages}"]
        self.syscalls = all((TRACEFS_EVENTS / name).is_dir() for name in SYSCALL_TRACEPOINTS)
        if self.syscalls:
            cflags.append("-DWITH_SYSCALLS")
        self.bpf = bcc.BPF(text=program_text().encode(), cflags=cflags)
        self._bcc = bcc
        self._sock_ops: tuple[Any, int] | None = None
        #: why retransmissions are counted per skb rather than per segment, if they are
        self.sock_ops_unavailable: str | None = None
        try:
            cgroup = cgroup or cgroup2_mount()
            if cgroup is None:
                raise OSError("no cgroup v2 hierarchy is mounted")
            fn = self.bpf.load_func(b"sock_ops", bcc.BPF.SOCK_OPS)
            cgroup_fd = os.open(cgroup, os.O_RDONLY)
            try:
                bcc.BPF.attach_func(fn, cgroup_fd, bcc.BPFAttachType.CGROUP_SOCK_OPS, BPF_F_ALLOW_MULTI)
            except Exception:
                os.close(cgroup_fd)
                raise
            self._sock_ops = (fn, cgroup_fd)
        except Exception as exc:  # cgroup v1, an old kernel: tracepoints still work
            self.sock_ops_unavailable = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        self._events: list[bytes] = []
        events = self._events

        def on_event(ctx: Any, data: Any, size: int) -> None:
            events.append(ctypes.string_at(data, size))

        self._callback = on_event  # bcc keeps a ctypes wrapper; we keep the function alive
        self.bpf[b"events"].open_ring_buffer(on_event)

    def poll(self, timeout_ms: int = 0) -> list[bytes]:
        """Raw events that arrived since the last call (``timeout_ms``: wait for one)."""
        self.bpf.ring_buffer_consume() if timeout_ms == 0 else self.bpf.ring_buffer_poll(timeout_ms)
        out = self._events[:]
        self._events.clear()
        return out

    def io_table(self) -> list[tuple[int, tuple]]:
        """The kernel's per-socket data-syscall counts: ((tgid << 32) | fd, IO_STRUCT
        fields) for every socket with calls so far (empty without the syscall tracepoints)."""
        if not self.syscalls:
            return []
        out = []
        for key, value in self.bpf[b"io_stats"].items():
            out.append((int(key.value), IO_STRUCT.unpack(bytes(value))))
        return out

    def lost(self) -> int:
        """Events the kernel could not put in the ring buffer (it was full), so far."""
        return int(sum(self.bpf[b"lost"][ctypes.c_int(0)]))

    def close(self) -> None:
        if self._sock_ops is not None:
            fn, cgroup_fd = self._sock_ops
            self._sock_ops = None
            try:
                self._bcc.BPF.detach_func(fn, cgroup_fd, self._bcc.BPFAttachType.CGROUP_SOCK_OPS)
            finally:
                os.close(cgroup_fd)
        self.bpf.cleanup()


class ProcessLookup:
    """Container id of a cgroup id, network namespace of a pid; cached, bounded."""

    def __init__(self, cgroup_root: Path | None = None) -> None:
        self.cgroup_root = cgroup_root or cgroup2_mount()
        self._cgroup_paths: dict[int, str] = {}
        self._scanned = 0.0
        self._netns: dict[int, tuple[float, Any]] = {}
        self._names: dict[int, tuple[float, Any]] = {}

    def container_id(self, cgroup_id: int) -> str | None:
        path = self._cgroup_paths.get(cgroup_id)
        if path is None and time.monotonic() - self._scanned > 1.0:  # a new cgroup: rescan, not too often
            self._scan()
            path = self._cgroup_paths.get(cgroup_id)
        return container_of_cgroup(path) if path else None

    def _scan(self) -> None:
        self._scanned = time.monotonic()
        paths: dict[int, str] = {}
        if self.cgroup_root is None:
            return
        root = str(self.cgroup_root)
        for dirpath, _dirs, _files in os.walk(root):
            try:
                paths[os.stat(dirpath).st_ino] = dirpath[len(root):] or "/"
            except OSError:
                continue
        self._cgroup_paths = paths

    def process_name(self, tgid: int, tid: int, thread_name: str) -> str:
        """The process's name: ``comm`` of its main thread. Events carry the name of the
        thread that made them (librdkafka's "rdk:broker-1", a tokio worker), which is
        the process name only for the main thread."""
        if tid == tgid:
            return thread_name
        return self._per_process(self._names, tgid, "comm", thread_name)  # type: ignore[return-value]

    def netns(self, pid: int) -> int | None:
        """Network namespace inode of a process (None once it is gone)."""
        return self._per_process(self._netns, pid, "ns/net", None)  # type: ignore[return-value]

    def _per_process(self, cache: dict[int, tuple[float, Any]], pid: int, what: str, gone: Any) -> Any:
        # Cached for a few seconds only: pids are reused.
        now = time.monotonic()
        hit = cache.get(pid)
        if hit is not None and now - hit[0] < 5.0:
            return hit[1]
        if len(cache) > 65536:
            cache.clear()
        try:
            if what == "ns/net":
                value = os.stat(f"/proc/{pid}/ns/net").st_ino
            else:
                with open(f"/proc/{pid}/{what}") as f:
                    value = f.read().rstrip("\n")
        except OSError:
            value = gone  # the process is gone already
        cache[pid] = (now, value)
        return value


def _address(family: int, raw: bytes) -> tuple[int, bytes, str]:
    """(ip_version, 16-byte header-field form, text) of a tracepoint address."""
    if family == AF_INET:
        return 4, raw[:4] + b"\0" * 12, socket.inet_ntop(socket.AF_INET, raw[:4])
    # An IPv6 socket talking IPv4 (dual stack) shows v4-mapped addresses; on the wire,
    # and so in wire.packets, the packets are IPv4.
    if raw.startswith(_V4_MAPPED):
        return 4, raw[12:16] + b"\0" * 12, socket.inet_ntop(socket.AF_INET, raw[12:16])
    return 6, raw, socket.inet_ntop(socket.AF_INET6, raw)


class SocketEventPublisher:
    """Resolve raw kernel events into ``SocketEvent`` records and publish them."""

    def __init__(self, bootstrap: str, codec: AvroCodec, partitions: int, source_id: str,
                 lookup: ProcessLookup | None = None) -> None:
        self.partitions = partitions
        self.source_id = source_id
        self.lookup = lookup or ProcessLookup()
        self._encode = codec.encoder(SOCKETS)
        self.kafka = WireProducer(bootstrap, **{"linger.ms": 50})  # delivery_errors: its counter
        self._salt = secrets.token_bytes(16)
        # wall clock = monotonic + offset (bpf_ktime_get_ns is CLOCK_MONOTONIC)
        self._clock_offset_ns = time.time_ns() - time.monotonic_ns()
        self._sockets: dict[int, tuple] = {}  # skaddr -> (ver, local16, lport, remote16, rport, ltext, rtext)
        self._pending: dict[int, list[tuple]] = {}  # skaddr -> events waiting for its 4-tuple
        self._closed: dict[int, tuple] = {}  # skaddr -> 4-tuple of a socket in TCP CLOSE whose fd may be open
        self._io_seen: dict[int, tuple] = {}  # (tgid << 32) | fd -> data-syscall counts last published
        self._sent_to = [0] * partitions
        self.published: Counter[str] = Counter()  # by kind
        self.dropped: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()  # events that are not about a connection

    # --- raw events -----------------------------------------------------------------------

    def add(self, raw_events: list[bytes]) -> None:
        for raw in raw_events:
            try:
                ev = EVENT_STRUCT.unpack(raw)
            except struct.error:
                self.dropped["socket_event_malformed"] += 1
                continue
            self._add(ev)
        self.kafka.poll(0)

    def _add(self, ev: tuple) -> None:
        kind, skaddr, family = ev[5], ev[1], ev[8]
        if kind in (EV_STATE, EV_RETRANSMIT, EV_ACCEPT):
            ver, local, ltext = _address(family, ev[13])
            _, remote, rtext = _address(family, ev[14])
            lport, rport = ev[9], ev[10]
            if not lport or not rport:
                # CLOSE -> SYN_SENT: connect() has not chosen the source port yet (the
                # process comes with SYN_SENT -> ESTABLISHED). A listening socket's
                # changes have no peer. Neither belongs to a connection.
                if kind == EV_STATE and (ev[12] in (TCP_SYN_SENT, TCP_LISTEN) or ev[11] == TCP_LISTEN):
                    self.skipped["not_a_connection"] += 1
                    if ev[12] == TCP_SYN_SENT and skaddr in self._pending:
                        # A new connect() on a kernel socket address: what still waits for
                        # that address belongs to its previous life (a refused connect's
                        # connect event, which comes after its SYN_SENT -> CLOSE): it must
                        # not be released under the new connection's 4-tuple and pid.
                        self.dropped["socket_event_stale"] += len(self._pending.pop(skaddr))
                    if ev[12] == TCP_SYN_SENT:
                        self._closed.pop(skaddr, None)  # the address's new life begins
                    return
                self.dropped["socket_event_unresolved"] += 1
                return
            tup = (ver, local, lport, remote, rport, ltext, rtext)
            if skaddr and kind != EV_ACCEPT:
                if len(self._sockets) >= _MAX_SOCKETS:
                    self._sockets.clear()
                self._sockets[skaddr] = tup
                self._closed.pop(skaddr, None)
                for waiting in self._pending.pop(skaddr, ()):
                    self._publish(waiting, tup)
            self._publish(ev, tup)
            if kind == EV_STATE and ev[12] == TCP_CLOSE:  # the kernel may reuse the address
                gone = self._sockets.pop(skaddr, None)
                if gone is not None:
                    # An fd can outlive its connection's TCP state (a half-closed socket
                    # goes to CLOSE through TIME_WAIT before the process calls close()):
                    # its close and io events still belong to this 4-tuple.
                    if len(self._closed) >= _MAX_SOCKETS:
                        self._closed.clear()
                    self._closed[skaddr] = gone
            return
        # connect / close: only the kernel socket is known
        tup = self._sockets.get(skaddr) if skaddr else None
        if tup is None and kind == EV_CLOSE:
            tup = self._closed.pop(skaddr, None)
        if tup is not None:
            self._publish(ev, tup)
        elif skaddr and len(self._pending) < _MAX_PENDING:
            self._pending.setdefault(skaddr, []).append(ev)
        else:
            self.dropped["socket_event_unresolved"] += 1

    def expire_pending(self, now_ns: int | None = None, everything: bool = False) -> None:
        """Give up on events whose socket did not show its 4-tuple in time (counted)."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        for skaddr in list(self._pending):
            events = self._pending[skaddr]
            if everything or now - events[0][0] > _PENDING_MAX_AGE_NS:
                self.dropped["socket_event_unresolved"] += len(events)
                del self._pending[skaddr]

    # --- records ----------------------------------------------------------------------------

    def add_io(self, rows: list[tuple[int, tuple]]) -> None:
        """Publish an ``io`` event for every socket whose data-syscall counts changed since
        the last call (``SocketEventSource.io_table()``: cumulative counts per process and
        fd); the close event carries each socket's last counts."""
        now = time.monotonic_ns()
        if len(self._io_seen) > _MAX_SOCKETS:
            self._io_seen.clear()
        for key, (skaddr, cgroup_id, send_bytes, recv_bytes, send_ns, recv_ns, send_calls, recv_calls) in rows:
            counts = (send_calls, recv_calls, send_bytes, recv_bytes, send_ns, recv_ns)
            seen = self._io_seen.get(key)
            if seen == counts:
                continue
            self._io_seen[key] = counts
            tup = (self._sockets.get(skaddr) or self._closed.get(skaddr)) if skaddr else None
            if tup is None:
                if seen is None:  # once per socket, not once per reading
                    self.dropped["socket_io_unresolved"] += 1
                continue
            tgid = key >> 32
            self._publish((now, skaddr, cgroup_id, 0, tgid, EV_IO, 0, key & 0xFFFFFFFF, 0, 0, 0, 0, 0,
                           b"", b"", b"", 0, *counts), tup)
        self.kafka.poll(0)

    def add_fd_snapshot(self, rows: list[ContainerFds], ts_us: int | None = None) -> None:
        """Publish one ``fd_snapshot`` event per container (``producers/fd_snapshot.py``):
        its open file descriptors and sockets, on the partition of its container id."""
        ts = time.time_ns() // 1000 if ts_us is None else ts_us
        for row in rows:
            record = self._blank(ts, "fd_snapshot")
            record.update(container_id=row.container_id, processes=row.processes, open_fds=row.open_fds,
                          open_sockets=row.open_sockets)
            part = zlib.crc32((row.container_id or "").encode()) % self.partitions
            self.kafka.produce(SOCKETS, self._encode(record), None, part)
            self._sent_to[part] += 1
            self.published["fd_snapshot"] += 1
        self.kafka.poll(0)

    def _blank(self, ts_us: int, kind: str) -> dict[str, Any]:
        return {
            "source_id": self.source_id, "ts_us": ts_us, "kind": kind, "ip_version": 4,
            "local_ip": "", "local_port": 0, "remote_ip": "", "remote_port": 0,
            "old_state": None, "new_state": None,
            "pid": None, "tid": None, "process": None, "cgroup_id": None, "container_id": None,
            "netns": None, "fd": None, "ret": None, "segments": 0, "socket_id": 0,
            "end_of_input": False, "events_before": 0,
            **dict.fromkeys(IO_FIELDS, 0), "processes": None, "open_fds": None, "open_sockets": None,
        }

    def _publish(self, ev: tuple, tup: tuple) -> None:
        (ts_ns, skaddr, cgroup_id, tid, tgid, kind, ret, fd, _family, _sp, _dp,
         oldstate, newstate, _sa, _da, comm, segments) = ev[:17]
        ver, local, lport, remote, rport, ltext, rtext = tup
        record = self._blank((ts_ns + self._clock_offset_ns) // 1000, EVENT_KINDS[kind])
        record.update({
            "ip_version": ver,
            "local_ip": ltext, "local_port": lport, "remote_ip": rtext, "remote_port": rport,
            "old_state": TCP_STATES.get(oldstate) if kind == EV_STATE else None,
            "new_state": TCP_STATES.get(newstate) if kind in (EV_STATE, EV_RETRANSMIT) else None,
            "fd": fd if kind in (EV_CONNECT, EV_ACCEPT, EV_CLOSE, EV_IO) else None,
            "ret": ret if kind in (EV_CONNECT, EV_RETRANSMIT) else None,
            "segments": segments if kind == EV_RETRANSMIT else 0,
            "socket_id": self._socket_id(skaddr) if skaddr else 0,
        })
        if kind in (EV_CLOSE, EV_IO):
            send_calls, recv_calls, send_bytes, recv_bytes, send_ns, recv_ns = ev[17:23]
            record.update(send_calls=send_calls, recv_calls=recv_calls, send_bytes=send_bytes,
                          recv_bytes=recv_bytes, send_time_us=send_ns // 1000, recv_time_us=recv_ns // 1000)
            if kind == EV_CLOSE:  # the socket's last counts: its fd may be reused
                self._io_seen.pop((tgid << 32) | fd, None)
        if tgid:
            thread_name = comm.split(b"\0", 1)[0].decode(errors="replace")
            record.update(pid=tgid, tid=tid or None, process=self.lookup.process_name(tgid, tid, thread_name),
                          cgroup_id=cgroup_id, container_id=self.lookup.container_id(cgroup_id),
                          netns=self.lookup.netns(tgid))
        part = partition_for(canonical_key(PROTO_TCP, local, lport, remote, rport), self.partitions)
        self.kafka.produce(SOCKETS, self._encode(record), None, part)
        self._sent_to[part] += 1
        self.published[record["kind"]] += 1

    def _socket_id(self, skaddr: int) -> int:
        digest = hashlib.blake2b(skaddr.to_bytes(8, "little"), digest_size=8, key=self._salt).digest()
        return int.from_bytes(digest, "little") >> 1  # a non-negative Avro long

    def finish(self, timeout: float = 60.0) -> None:
        """Publish what is resolvable, then an end-of-input marker on every partition;
        wait until the broker has everything."""
        self.expire_pending(everything=True)
        for part in range(self.partitions):
            # the other fields take their schema defaults
            self.kafka.produce(SOCKETS, self._encode({
                "source_id": self.source_id, "ts_us": time.time_ns() // 1000, "kind": "end_of_input",
                "end_of_input": True, "events_before": self._sent_to[part],
            }), None, part)
        self.kafka.flush(timeout, undelivered="broker_undelivered_at_exit")
