"""Free loopback ports for services we start ourselves: the embedded broker, and the
test services (Kafka brokers, etcd, kube-apiserver, ...).

A port from ``bind(0)``, released at once, may come back from the next ``bind(0)``, and
lies in the kernel's ephemeral range, where any outgoing connection's local end can take
it between the probe and the service's own bind. All of it happened in CI: one Kafka
node's PLAINTEXT port was another's MTLS port; kube-apiserver found its port taken; the
embedded broker (tansu) failed its bind with ``AddrInUse`` while something, probably a
connection to that very port that the kernel gave that port as its own local end (a TCP
self-connect), made the port look open. So ports are chosen below the ephemeral range
(handed out only to whoever binds them by number), at random, and a call asking for
several holds each probe until all are chosen, so they are distinct.
"""

from __future__ import annotations

import math
import random
import socket
from collections.abc import Iterator
from pathlib import Path


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default if unknown)."""
    try:
        low, high = (int(p) for p in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return low, high


def free_ports(n: int, kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports of ``host`` (TCP, or UDP with ``socket.SOCK_DGRAM``), free
    right now, outside the ephemeral range (inside it, from the kernel, only when that
    range leaves no room)."""
    low, high = ephemeral_range()
    first, last = (10000, low - 1) if low - 10000 >= 4 * n else (high + 1, 65535)
    held: list[socket.socket] = []
    try:
        for port in _shuffled(first, last):
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            held.append(s)
            if len(held) == n:
                return [int(h.getsockname()[1]) for h in held]
        # no room outside the ephemeral range (a machine whose range is nearly every
        # port, or every such port taken): the kernel's choice, each held until all are
        while len(held) < n:
            s = socket.socket(socket.AF_INET, kind)
            held.append(s)
            s.bind((host, 0))
        return [int(h.getsockname()[1]) for h in held]
    finally:
        for h in held:
            h.close()


def _shuffled(first: int, last: int) -> Iterator[int]:
    """Every port of first..last once, in a random order: a random start and a random
    stride prime to the range's size (cheap: analyze chooses its broker's port at start)."""
    size = last + 1 - first
    if size <= 0:
        return
    start, stride = random.randrange(size), random.randrange(1, size) if size > 1 else 1
    while math.gcd(stride, size) != 1:
        stride += 1
    for i in range(size):
        yield first + (start + i * stride) % size


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port of ``host`` free right now (TCP, or UDP with ``socket.SOCK_DGRAM``), outside
    the ephemeral range."""
    return free_ports(1, kind, host)[0]
