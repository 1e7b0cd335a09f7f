"""``wirestream analyze``: the whole pipeline, one command, on capture files.

1. bring up Kafka (embedded broker unless ``--bootstrap``), the schema registry and topics;
2. start processor workers (``wirestream process``) in a consumer group of this run;
3. replay each file into ``wire.packets`` (the producer runs here, in parallel with them);
4. wait until the processors report end of input for every partition of every file
   (their final ``wire.stats`` records): no fixed sleeps;
5. read exactly the output records they reported, write ``DIR/<topic>.jsonl``, and return
   everything for the summary.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wirestream.broker import partition_count
from wirestream.config import Settings
from wirestream.errors import CaptureFileError, WirestreamError
from wirestream.producers.capture_file import open_capture
from wirestream.producers.pcap_replay import ReplayResult, replay_capture
from wirestream.producers.publisher import PacketBatchPublisher
from wirestream.reader import TopicReader, end_offsets
from wirestream.runtime import Runtime
from wirestream.topics import OUTPUT_TOPICS, PACKETS, STATS

PROCESSOR_STAGE = "processor.packets"


class ProcessingTimeout(WirestreamError):
    """The processors stopped making progress before reporting end of input."""


@dataclass
class AnalyzeResult:
    files: list[ReplayResult] = field(default_factory=list)
    failed: list[CaptureFileError] = field(default_factory=list)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    stats: list[dict[str, Any]] = field(default_factory=list)
    bootstrap: str = ""
    registry: str = ""
    elapsed_s: float = 0.0


ProgressFactory = Callable[[str, int], Callable[[int, int], None]]


def analyze(
    paths: list[str],
    settings: Settings,
    workers: int = 1,
    progress: ProgressFactory | None = None,
    stall_timeout_s: float = 120.0,
) -> AnalyzeResult:
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:12]
    result = AnalyzeResult()
    # Check every file before starting anything: an unreadable input fails in milliseconds.
    readable = []
    for path in paths:
        try:
            open_capture(path).close()
            readable.append(path)
        except CaptureFileError as exc:
            result.failed.append(exc)
    if not readable:
        result.records = {t: [] for t in OUTPUT_TOPICS}
        return result
    paths = readable
    with Runtime(settings, worker_grace_s=0.5) as rt:
        result.bootstrap, result.registry = rt.bootstrap, rt.registry_url
        start = end_offsets(rt.bootstrap, (*OUTPUT_TOPICS, STATS))
        source_ids: dict[str, ReplayResult] = {}
        rt.start_workers(
            workers,
            group=f"wirestream-analyze-{run_id}",
            extra_args=["--only-source-prefix", run_id, "--idle-timeout", str(settings.idle_timeout_s)],
        )
        partitions = partition_count(rt.bootstrap, PACKETS)
        for i, path in enumerate(paths):
            source_id = f"{run_id}-{i}"
            publisher = PacketBatchPublisher(rt.bootstrap, rt.codec, partitions, source_id, path)
            try:
                replay = replay_capture(
                    path, publisher, settings.payload_snaplen,
                    progress=progress(path, 0) if progress else None,
                )
            except CaptureFileError as exc:
                result.failed.append(exc)
                continue
            source_ids[source_id] = replay
            result.files.append(replay)
        if source_ids:
            result.stats, emitted = _wait_for_processors(rt, start, source_ids, partitions, stall_timeout_s)
            result.records = _collect_outputs(rt, start, set(source_ids), emitted, stall_timeout_s)
        else:
            result.records = {t: [] for t in OUTPUT_TOPICS}
    result.elapsed_s = time.monotonic() - started
    return result


def _wait_for_processors(
    rt: Runtime,
    start: dict[tuple[str, int], int],
    source_ids: dict[str, ReplayResult],
    partitions: int,
    stall_timeout_s: float,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Read wire.stats until every (source, partition) has a final processor report."""
    waiting = {(s, p) for s in source_ids for p in range(partitions)}
    stats: list[dict[str, Any]] = []
    emitted: dict[str, int] = defaultdict(int)
    last_progress = time.monotonic()
    with TopicReader(rt.bootstrap, rt.codec, [STATS], start) as reader:
        while waiting:
            msgs = reader.poll(0.2)
            for m in msgs:
                rec = m.record
                if rec is None or rec["source_id"] not in source_ids:
                    continue
                stats.append(rec)
                if rec["stage"] == PROCESSOR_STAGE and rec["final"]:
                    waiting.discard((rec["source_id"], rec["partition"]))
                    for topic, n in rec["emitted"].items():
                        emitted[topic] += n
                last_progress = time.monotonic()
            if not msgs:
                dead = rt.dead_worker()
                if dead:
                    raise ProcessingTimeout(dead)
                if time.monotonic() - last_progress > stall_timeout_s:
                    raise ProcessingTimeout(
                        f"processors sent no end-of-input report for {len(waiting)} partition(s) "
                        f"within {stall_timeout_s:.0f} s (logs in {rt.workdir})"
                    )
    return stats, dict(emitted)


def _collect_outputs(
    rt: Runtime,
    start: dict[tuple[str, int], int],
    source_ids: set[str],
    emitted: dict[str, int],
    stall_timeout_s: float,
) -> dict[str, list[dict[str, Any]]]:
    """Read exactly the records the processors said they emitted for our sources."""
    records: dict[str, list[dict[str, Any]]] = {t: [] for t in OUTPUT_TOPICS}
    expected = {t: emitted.get(t, 0) for t in OUTPUT_TOPICS}
    topics = [t for t, n in expected.items() if n]
    if not topics:
        return records
    last_progress = time.monotonic()
    with TopicReader(rt.bootstrap, rt.codec, topics, start) as reader:
        while any(len(records[t]) < expected[t] for t in topics):
            msgs = reader.poll(0.2, 10_000)
            for m in msgs:
                if m.record is not None and m.record.get("source_id", "") in source_ids:
                    records[m.topic].append(m.record)
                    last_progress = time.monotonic()
            if not msgs and time.monotonic() - last_progress > stall_timeout_s:
                missing = {t: expected[t] - len(records[t]) for t in topics if len(records[t]) < expected[t]}
                raise ProcessingTimeout(f"output records missing after {stall_timeout_s:.0f} s: {missing}")
    return records
