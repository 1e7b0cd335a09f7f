"""``wirestream capture``: live capture through the whole pipeline, one command.

Like ``analyze``, but the source is this machine's traffic (``producers.live_capture``)
until ``--duration``, ``--count`` or Ctrl-C: the rings are opened first (so a machine
that cannot capture fails before Kafka starts), then Kafka, the registry and the
processor workers come up together (the workers statically assigned, as analyze's:
``analyze.run_pipeline``), the capture runs, and its output records are collected.
The input's size is not known in advance: one packet worker per CPU.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from wirestream.analyze import AnalyzeResult, run_pipeline
from wirestream.config import Settings
from wirestream.producers.live_capture import (
    CaptureOptions,
    CaptureResult,
    LiveCapture,
    open_capture,
    run_capture,
)
from wirestream.runtime import Runtime

#: called once the capture is opened (the mode is known), and again when it starts reading
Notice = Callable[[LiveCapture, str], None]


def capture(
    options: CaptureOptions,
    settings: Settings,
    workers: int | None = None,
    stop: Callable[[], bool] | None = None,
    notice: Notice | None = None,
    progress: Callable[[CaptureResult], None] | None = None,
    stall_timeout_s: float = 120.0,
    keep_bodies: bool = True,
) -> AnalyzeResult:
    """Capture live traffic through the pipeline; return every output record."""
    started = time.monotonic()
    live = open_capture(options)
    if notice is not None:
        notice(live, "opened")
    result = AnalyzeResult()

    def feed(rt: Runtime, run_id: str, partitions: int) -> dict[str, Any]:
        source_id = f"{run_id}-live"
        publisher, socket_publisher = live.publishers(rt.bootstrap, rt.codec, partitions, source_id,
                                                      f"live {live.rings_text()}")
        if notice is not None:
            notice(live, "capturing")
        captured = run_capture(live, publisher, socket_publisher, stop=stop, progress=progress,
                               own_ports=_own_ports(rt))
        result.files.append(captured)
        return {source_id: captured}

    try:
        run_pipeline(result, settings, feed, workers, stall_timeout_s, keep_bodies)
    finally:
        live.close()
    result.elapsed_s = time.monotonic() - started
    return result


def _own_ports(rt: Runtime) -> frozenset[int]:
    """Ports of the broker and registry this run talks to, when they are on loopback."""
    ports = set()
    for address in rt.bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        if port.isdigit() and host in ("127.0.0.1", "localhost", "[::1]", "::1"):
            ports.add(int(port))
    # urlsplit: the registry's URL may hold user:password@ before the host
    registry = urlsplit(rt.registry_url.split(",", 1)[0].strip())
    with contextlib.suppress(ValueError):  # a port that is not a number
        if registry.port and registry.hostname in ("127.0.0.1", "localhost", "::1"):
            ports.add(registry.port)
    return frozenset(ports)
