"""Human-readable output of ``wirestream analyze``: progress bars and summary tables."""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from wirestream.topics import CONNECTIONS

_STATE_TROUBLE = {"refused": 3, "reset": 2, "half_open": 2, "incomplete_handshake": 2, "timeout": 1}


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[Callable[[str, int], Callable[[int, int], None]] | None]:
    """Yield a factory of per-file progress callbacks (or None when disabled)."""
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
        transient=True,
    ) as progress:

        def factory(path: str, _unused: int) -> Callable[[int, int], None]:
            task = progress.add_task(f"replaying {path}", total=None)

            def update(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            return update

        yield factory


def trouble_key(rec: dict[str, Any]) -> tuple:
    """Sort connections worst first: retransmission rate, then resets/refusals, zero windows."""
    return (
        rec.get("retransmission_rate") or 0.0,
        _STATE_TROUBLE.get(rec.get("state", ""), 0),
        rec.get("zero_window") or 0,
        rec.get("retransmissions") or 0,
        rec.get("duplicate_acks") or 0,
    )


def _us(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1_000_000:
        return f"{value / 1e6:.2f} s"
    if value >= 1000:
        return f"{value / 1000:.1f} ms"
    return f"{value:.0f} µs"


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def summary_json(result: Any) -> dict[str, Any]:
    conns = result.records.get(CONNECTIONS, [])
    return {
        "files": [
            {"path": f.path, "format": f.format, "frames": f.frames, "packets": f.packets,
             "dropped": dict(f.dropped)}
            for f in result.files
        ],
        "failed": [str(e) for e in result.failed],
        "records": {t: len(v) for t, v in result.records.items()},
        "connection_states": dict(Counter(c["state"] for c in conns)),
        "top_trouble": sorted(conns, key=trouble_key, reverse=True)[:10],
        "stats": result.stats,
        "elapsed_s": round(result.elapsed_s, 3),
    }


def print_summary(result: Any, top: int = 15, out_dir: str | None = None, console: Console | None = None) -> None:
    # Piped or redirected output gets a fixed, wide layout instead of rich's 80 columns.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    conns = result.records.get(CONNECTIONS, [])
    frames = sum(f.frames for f in result.files)
    packets = sum(f.packets for f in result.files)
    states = Counter(c["state"] for c in conns)
    console.print(
        f"[bold]{len(result.files)} file(s)[/], {frames:,} frames, {packets:,} TCP/UDP packets, "
        f"{len(conns):,} TCP connections in {result.elapsed_s:.1f} s"
    )
    if conns:
        console.print("states: " + ", ".join(f"{k} {v:,}" for k, v in states.most_common()))
        retrans = sum(c["retransmissions"] for c in conns)
        console.print(f"retransmissions: {retrans:,}; degraded/severe connections: "
                      f"{sum(1 for c in conns if c['health'] != 'healthy'):,}")

        table = Table(title=f"Connections ranked by trouble (top {min(top, len(conns))} of {len(conns):,})")
        for col, kw in (
            ("client", {}), ("server", {}), ("state", {}), ("pkts c→s/s→c", {"justify": "right"}),
            ("bytes c→s/s→c", {"justify": "right"}), ("retrans", {"justify": "right"}),
            ("rate", {"justify": "right"}), ("dup ack", {"justify": "right"}),
            ("zero win", {"justify": "right"}), ("handshake", {"justify": "right"}), ("health", {}),
        ):
            table.add_column(col, **kw)
        colour = {"healthy": "green", "degraded": "yellow", "severe": "red"}
        for c in sorted(conns, key=trouble_key, reverse=True)[:top]:
            table.add_row(
                _endpoint(c["client_ip"], c["client_port"]),
                _endpoint(c["server_ip"], c["server_port"]),
                c["state"],
                f"{c['packets_c2s']:,}/{c['packets_s2c']:,}",
                f"{c['bytes_c2s']:,}/{c['bytes_s2c']:,}",
                str(c["retransmissions"]),
                f"{c['retransmission_rate'] * 100:.1f}%",
                str(c.get("duplicate_acks", 0)),
                str(c.get("zero_window", 0)),
                _us(c["handshake_rtt_us"]),
                f"[{colour.get(c['health'], 'white')}]{c['health']}[/]",
            )
        console.print(table)

    stats = Table(title="Counters by stage")
    stats.add_column("stage")
    stats.add_column("received", justify="right")
    stats.add_column("emitted", justify="right")
    stats.add_column("dropped / not analysed (reason = count)")
    for f in result.files:
        stats.add_row(
            f"producer.pcap {f.path}", f"{f.frames:,} frames", f"{f.packets:,} packets",
            ", ".join(f"{k} = {v:,}" for k, v in sorted(f.dropped.items())) or "-",
        )
    received: Counter[str] = Counter()
    emitted: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    counters: Counter[str] = Counter()
    for s in result.stats:
        if s["stage"].startswith("processor"):
            received[s["stage"]] += s["received"]
            emitted.update(s["emitted"])
            dropped.update(s["dropped"])
            counters.update(s["counters"])
    for stage in sorted(received):
        stats.add_row(
            stage, f"{received[stage]:,} packets",
            ", ".join(f"{v:,} → {t}" for t, v in sorted(emitted.items())) or "0",
            ", ".join(f"{k} = {v:,}" for k, v in sorted(dropped.items())) or "-",
        )
    console.print(stats)
    if counters:
        console.print("processor counters: " + ", ".join(
            f"{k} {v:,}" for k, v in sorted(counters.items()) if k != "batches_expected"))
    if out_dir:
        console.print(f"records written to {out_dir}/<topic>.jsonl")
