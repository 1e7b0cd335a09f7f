"""TLS plaintext from OpenSSL uprobes -> ``wire.tls-plaintext`` (issue 19, live half).

The kernel side is ``bpf/tls_plaintext.c``: uprobes/uretprobes on libssl.so.3's
SSL_write, SSL_read, SSL_write_ex and SSL_read_ex, attached to the library file (every
process mapping it), and socket tracepoints that tell which TCP connection the SSL call
did its I/O on (the program's header says how). :class:`TlsPlaintextSource` loads it and
reads its ring buffer; :class:`TlsPlaintextPublisher` turns the chunks into
``TlsPlaintext`` records (schemas/tls_plaintext.avsc) and publishes each to the
``wire.tls-plaintext`` partition of its connection: the canonical key and partition
function of ``wire.packets`` and ``wire.sockets``, so the processor that holds a
connection's packets also gets its plaintext.

Chunks whose connection is not known (an SSL object over a memory BIO, a socket whose
4-tuple the tracepoints never showed) cannot be partitioned: they are counted as
``tls_plaintext_unresolved``, not published.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import secrets
import struct
import subprocess
import time
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from wirestream.producers.packet_drops import prog_run_stats
from wirestream.producers.socket_events import ProcessLookup, _address

from wirestream.codec import AvroCodec
from wirestream.kafka import WireProducer
from wirestream.packet_block import PROTO_TCP, canonical_key, partition_for
from wirestream.topics import TLS_PLAINTEXT

#: ``struct event`` of bpf/tls_plaintext.c up to ``data`` (96 bytes): ts_ns, skaddr, ssl,
#: tid, tgid, len, captured, family, sport, dport, direction, fn, saddr[16], daddr[16], comm[16]
HEADER_STRUCT = struct.Struct("=QQQIIIIHHHBB16s16s16s")
assert HEADER_STRUCT.size == 96

#: the probed functions: symbol -> (entry program, bpf/tls_plaintext.c FN_*)
FUNCTIONS = {
    "SSL_write": ("enter_write", 1),
    "SSL_read": ("enter_read", 2),
    "SSL_write_ex": ("enter_write_ex", 3),
    "SSL_read_ex": ("enter_read_ex", 4),
    # no chunk: which socket the SSL object uses, when the first SSL_read makes no syscall
    "SSL_do_handshake": ("enter_handshake", 5),
}
FUNCTION_NAMES = {fn: name for name, (_prog, fn) in FUNCTIONS.items() if fn != 5}
DIRECTIONS = {1: "send", 2: "recv"}
DEFAULT_MAX_DATA = 4096
LIBSSL = "libssl.so.3"


class TlsPlaintextUnavailable(Exception):
    """Uprobes cannot be used here; the message says why."""


def program_text() -> str:
    return resources.files("wirestream.bpf").joinpath("tls_plaintext.c").read_text()


def find_libssl() -> list[Path]:
    """The libssl.so.3 files of this machine's dynamic linker (``ldconfig -p``), real
    paths, each once. Processes of containers map their own copies: pass those with
    ``--libssl`` (as /proc/PID/root/...)."""
    found: list[Path] = []
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    for line in out.splitlines():
        name, _, path = line.strip().partition(" => ")
        if name.split(" ", 1)[0] == LIBSSL and path:
            real = Path(os.path.realpath(path))
            if real.exists() and real not in found:
                found.append(real)
    if not found:
        for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib"):
            p = Path(d) / LIBSSL
            if p.exists() and Path(os.path.realpath(p)) not in found:
                found.append(Path(os.path.realpath(p)))
    return found


class TlsPlaintextSource:
    """The loaded uprobes and tracepoints and their ring buffer. Needs bcc and root.

    ``libraries``: the libssl.so.3 files to probe (default: :func:`find_libssl`);
    ``pid``: only this process (default: every process, except this one);
    ``max_data``: bytes copied per call (a power of two, at most 16384)."""

    def __init__(self, bcc: Any, libraries: list[Path] | None = None, pid: int | None = None,
                 max_data: int = DEFAULT_MAX_DATA, ring_pages: int = 1024) -> None:
        if max_data < 16 or max_data > 16384 or max_data & (max_data - 1):
            raise TlsPlaintextUnavailable(f"max_data must be a power of two in [16, 16384], not {max_data}")
        libraries = libraries if libraries is not None else find_libssl()
        if not libraries:
            raise TlsPlaintextUnavailable(f"no {LIBSSL} found (ldconfig -p); name it with --libssl")
        for lib in libraries:
            if not lib.exists():
                raise TlsPlaintextUnavailable(f"{lib}: no such file")
        cflags = [f"-DRINGBUF_PAGES={ring_pages}", f"-DMAX_DATA={max_data}", f"-DSELF_TGID={os.getpid()}"]
        if pid is not None:
            cflags.append(f"-DTARGET_TGID={pid}")
        self.max_data = max_data
        self.libraries = libraries
        try:
            self.bpf = bcc.BPF(text=program_text().encode(), cflags=cflags)
        except Exception as exc:
            raise TlsPlaintextUnavailable(f"bpf/tls_plaintext.c does not load: {exc}") from None
        try:
            for lib in libraries:
                for sym, (prog, _fn) in FUNCTIONS.items():
                    self.bpf.attach_uprobe(name=str(lib).encode(), sym=sym.encode(), fn_name=prog.encode())
                    self.bpf.attach_uretprobe(name=str(lib).encode(), sym=sym.encode(), fn_name=b"leave")
        except Exception as exc:
            self.bpf.cleanup()
            raise TlsPlaintextUnavailable(f"cannot attach uprobes to {lib} {sym}: {exc}") from None
        self._events: list[bytes] = []
        events = self._events

        def on_event(ctx: Any, data: Any, size: int) -> None:
            events.append(ctypes.string_at(data, size))

        self._callback = on_event  # bcc keeps a ctypes wrapper; we keep the function alive
        self.bpf[b"events"].open_ring_buffer(on_event)

    def poll(self, timeout_ms: int = 0) -> list[bytes]:
        """Raw events that arrived since the last call, after waiting ``timeout_ms`` (less
        if the ring fills up): the kernel side does not wake the reader for every chunk
        (bpf/tls_plaintext.c), so a chunk waits up to ``timeout_ms`` here."""
        if timeout_ms:
            self.bpf.ring_buffer_poll(timeout_ms)  # returns early only on a forced wakeup
        self.bpf.ring_buffer_consume()
        out = self._events[:]
        self._events.clear()
        return out

    def lost(self) -> int:
        """Chunks the kernel could not put in the ring buffer (it was full), so far."""
        return int(sum(self.bpf[b"lost"][ctypes.c_int(0)]))

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """Program name -> (runs, total ns) from the kernel's BPF statistics (all zero
        unless sysctl kernel.bpf_stats_enabled is 1 while running)."""
        return program_stats(self.bpf)

    def close(self) -> None:
        self.bpf.cleanup()


def program_stats(bpf: Any) -> dict[str, tuple[int, int]]:
    """(runs, run time ns) of each loaded program of a bcc ``BPF``."""
    out = {}
    for name, fn in bpf.funcs.items():
        stats = prog_run_stats(fn.fd)
        if stats is not None:
            out[name.decode() if isinstance(name, bytes) else str(name)] = stats
    return out


class TlsPlaintextPublisher:
    """Resolve raw chunks into ``TlsPlaintext`` records and publish them."""

    def __init__(self, bootstrap: str, codec: AvroCodec, partitions: int, source_id: str,
                 lookup: ProcessLookup | None = None) -> None:
        self.partitions = partitions
        self.source_id = source_id
        self.lookup = lookup or ProcessLookup()
        self._encode = codec.encoder(TLS_PLAINTEXT)
        self.kafka = WireProducer(bootstrap, **{"linger.ms": 50})
        self._salt = secrets.token_bytes(16)
        self._clock_offset_ns = time.time_ns() - time.monotonic_ns()
        #: (tgid, ssl, direction) -> (chunks, bytes) so far: the seq/offset of the next chunk
        self._streams: dict[tuple[int, int, int], tuple[int, int]] = {}
        self._sent_to = [0] * partitions
        self.published: Counter[str] = Counter()  # by direction
        self.dropped: Counter[str] = Counter()

    def add(self, raw_events: list[bytes]) -> None:
        for raw in raw_events:
            if len(raw) < HEADER_STRUCT.size:
                self.dropped["tls_plaintext_malformed"] += 1
                continue
            self._add(HEADER_STRUCT.unpack_from(raw), raw[HEADER_STRUCT.size:])
        self.kafka.poll(0)

    def _add(self, h: tuple, data: bytes) -> None:
        (ts_ns, _skaddr, ssl, tid, tgid, length, captured, family, sport, dport, direction, fn,
         saddr, daddr, comm) = h
        key = (tgid, ssl, direction)
        seq, offset = self._streams.get(key, (0, 0))
        if len(self._streams) > 1 << 18:  # bounded; a stream forgotten restarts its numbering
            self._streams.clear()
        self._streams[key] = (seq + 1, offset + length)
        if not family or not sport or not dport:
            self.dropped["tls_plaintext_unresolved"] += 1
            return
        ver, local, ltext = _address(family, saddr)
        _, remote, rtext = _address(family, daddr)
        data = data[:captured]
        thread_name = comm.split(b"\0", 1)[0].decode(errors="replace")
        record: dict[str, Any] = {
            "source_id": self.source_id,
            "ts_us": (ts_ns + self._clock_offset_ns) // 1000,
            "pid": tgid, "tid": tid, "process": self.lookup.process_name(tgid, tid, thread_name),
            "function": FUNCTION_NAMES.get(fn, ""),
            "direction": DIRECTIONS.get(direction, ""),
            "ip_version": ver,
            "local_ip": ltext, "local_port": sport, "remote_ip": rtext, "remote_port": dport,
            "stream_id": self._stream_id(tgid, ssl),
            "seq": seq, "offset": offset, "length": length,
            "data": data, "truncated": len(data) < length,
            "end_of_input": False, "chunks_before": 0,
        }
        part = partition_for(canonical_key(PROTO_TCP, local, sport, remote, dport), self.partitions)
        self.kafka.produce(TLS_PLAINTEXT, self._encode(record), None, part)
        self._sent_to[part] += 1
        self.published[record["direction"]] += 1

    def _stream_id(self, tgid: int, ssl: int) -> int:
        digest = hashlib.blake2b(struct.pack("<IQ", tgid, ssl), digest_size=8, key=self._salt).digest()
        return int.from_bytes(digest, "little") >> 1  # a non-negative Avro long

    def finish(self, timeout: float = 60.0) -> None:
        """An end-of-input marker on every partition; wait until the broker has everything."""
        for part in range(self.partitions):
            self.kafka.produce(TLS_PLAINTEXT, self._encode({
                "source_id": self.source_id, "ts_us": time.time_ns() // 1000,
                "end_of_input": True, "chunks_before": self._sent_to[part],
            }), None, part)
        self.kafka.flush(timeout, undelivered="broker_undelivered_at_exit")
