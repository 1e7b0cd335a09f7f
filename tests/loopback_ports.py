"""Free loopback ports for the test services (Kafka brokers, etcd, kube-apiserver, ...).

A port from ``bind(0)``, released at once, may come back from the next ``bind(0)``, and
lies in the kernel's ephemeral range, where any outgoing connection's local end can take
it between the probe and the service's own bind. Both happened in CI: one Kafka node's
PLAINTEXT port was another's MTLS port; kube-apiserver found its port taken. So ports
are chosen below the ephemeral range (handed out only to whoever binds them by number),
at random, and a call asking for several holds each probe until all are chosen, so they
are distinct.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default if unknown)."""
    try:
        low, high = (int(p) for p in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return low, high


def free_ports(n: int, kind: int = socket.SOCK_STREAM) -> list[int]:
    """``n`` distinct loopback ports (TCP, or UDP with ``socket.SOCK_DGRAM``), free right
    now, outside the ephemeral range."""
    low, high = ephemeral_range()
    first, last = (10000, low - 1) if low - 10000 >= 4 * n else (high + 1, 65535)
    held: list[socket.socket] = []
    try:
        for port in random.sample(range(first, last + 1), last + 1 - first):
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
            if len(held) == n:
                return [int(h.getsockname()[1]) for h in held]
        raise RuntimeError(f"fewer than {n} free loopback ports in {first}-{last}")
    finally:
        for h in held:
            h.close()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port free right now (TCP, or UDP with ``socket.SOCK_DGRAM``), outside
    the ephemeral range."""
    return free_ports(1, kind)[0]
