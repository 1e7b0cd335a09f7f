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

import dataclasses
import os
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
from wirestream.producers.pcap_replay import replay_files
from wirestream.reader import TopicReader, end_offsets
from wirestream.runtime import Runtime
from wirestream.topics import (
    OBSERVATIONS,
    OUTPUT_TOPICS,
    PACKETS,
    PACKETS_STAGE,
    STATS,
    WINDOWS_STAGE,
)


class ProcessingTimeout(WirestreamError):
    """The processors stopped making progress before reporting end of input."""


@dataclass
class AnalyzeResult:
    files: list[Any] = field(default_factory=list)  # ReplayResult, or CaptureResult for live capture
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
    workers: int | None = None,
    progress: ProgressFactory | None = None,
    stall_timeout_s: float = 120.0,
    keep_bodies: bool = True,
) -> AnalyzeResult:
    """Replay ``paths`` through the pipeline and collect every output record.

    ``workers=None`` starts :func:`default_workers` processor workers.

    ``keep_bodies=False`` runs the workers with a response body cap of 0: transactions
    keep their body sizes but not the response bytes, which the tables do not show and
    which, for a big capture, are gigabytes to move through Kafka and decode for nothing.
    Request bodies are kept: credentials and card numbers are detected there."""
    started = time.monotonic()
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

    def feed(rt: Runtime, run_id: str, partitions: int) -> dict[str, Any]:
        sources: dict[str, Any] = {}
        for source_id, replay in replay_files(
            paths, rt.bootstrap, rt.codec, partitions, lambda i: f"{run_id}-{i}",
            settings.payload_snaplen, progress=(lambda path: progress(path, 0)) if progress else None,
        ):
            if isinstance(replay, CaptureFileError):
                result.failed.append(replay)
                continue
            sources[source_id] = replay
            result.files.append(replay)
        return sources

    run_pipeline(result, settings, feed, workers, stall_timeout_s, keep_bodies)
    result.elapsed_s = time.monotonic() - started
    return result


#: Publishes the sources of a run: (runtime, run id, wire.packets partitions) -> the
#: results of the sources it published, by source id (each id starts with the run id).
Feeder = Callable[[Runtime, str, int], dict[str, Any]]


def run_pipeline(result: AnalyzeResult, settings: Settings, feed: Feeder, workers: int | None = None,
                 stall_timeout_s: float = 120.0, keep_bodies: bool = True) -> None:
    """Bring up Kafka and processor workers for one run, let ``feed`` publish its sources,
    and collect every output record and final report of those sources into ``result``.

    Shared by ``analyze`` (files) and ``capture`` (live)."""
    run_id = uuid.uuid4().hex[:12]
    worker_settings = settings if keep_bodies else dataclasses.replace(settings, response_body_cap=0)
    with Runtime(settings, worker_grace_s=0.5) as rt:
        result.bootstrap, result.registry = rt.bootstrap, rt.registry_url
        start = end_offsets(rt.bootstrap, (*OUTPUT_TOPICS, STATS))
        partitions = partition_count(rt.bootstrap, PACKETS)
        observation_partitions = partition_count(rt.bootstrap, OBSERVATIONS) if settings.windows else 0
        common = ["--only-source-prefix", run_id, *worker_settings.worker_args()]
        if rt.embedded_broker is not None:
            # A group join takes about half the session timeout on the embedded broker;
            # its own workers may answer within 2 s (Apache Kafka would refuse it).
            common += ["--session-timeout", "2"]
        rt.start_workers(workers or default_workers(partitions), group=f"wirestream-analyze-{run_id}",
                         extra_args=["--role", "packets", *common])
        if settings.windows:
            # One process for the windows (they are light), apart from the packet workers:
            # see processors.app.create_app.
            rt.start_workers(1, group=f"wirestream-analyze-{run_id}",  # its Faust group: ...-windows
                             extra_args=["--role", "windows", *common])
        source_ids = feed(rt, run_id, partitions)
        if source_ids:
            result.stats, result.records = _wait_and_collect(
                rt, start, source_ids, partitions, observation_partitions, stall_timeout_s)
        else:
            result.records = {t: [] for t in OUTPUT_TOPICS}


def default_workers(partitions: int) -> int:
    """One worker per CPU, but no more than there are partitions to share.

    A worker is one Python process: one core at most. On 2 cores, 2 workers finish a
    1M-packet HTTP capture in ~60 s where 1 takes ~80 s (bench/README.md), though the
    producer and the broker share those cores too."""
    return max(1, min(os.cpu_count() or 1, partitions))


def _wait_and_collect(
    rt: Runtime,
    start: dict[tuple[str, int], int],
    source_ids: dict[str, Any],
    partitions: int,
    observation_partitions: int,
    stall_timeout_s: float,
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Read wire.stats and the output topics together until every (source, partition) has
    a final processor report and exactly the records those reports count have arrived.

    Output records are read (and decoded) while the workers are still busy, rather than
    all at the end: with L7 on, there are several records per connection to read.
    """
    # final reports still to come: (stage, source, partition)
    waiting = {(PACKETS_STAGE, s, p) for s in source_ids for p in range(partitions)}
    waiting |= {(WINDOWS_STAGE, s, q) for s in source_ids for q in range(observation_partitions)}
    stats: list[dict[str, Any]] = []
    records: dict[str, list[dict[str, Any]]] = {t: [] for t in OUTPUT_TOPICS}
    expected: dict[str, int] = defaultdict(int)
    last_progress = time.monotonic()

    def done() -> bool:
        return not waiting and all(len(records[t]) >= n for t, n in expected.items())

    with TopicReader(rt.bootstrap, rt.codec, [STATS, *OUTPUT_TOPICS], start) as reader:
        while not done():
            msgs = reader.poll(0.2, 10_000)
            for m in msgs:
                rec = m.record
                if rec is None or rec.get("source_id", "") not in source_ids:
                    continue
                last_progress = time.monotonic()
                if m.topic != STATS:
                    records[m.topic].append(rec)
                    continue
                stats.append(rec)
                key = (rec["stage"], rec["source_id"], rec["partition"])
                if key in waiting and rec["final"]:
                    waiting.discard(key)
                    for topic, n in rec["emitted"].items():
                        expected[topic] += n
            if not msgs:
                dead = rt.dead_worker()
                if dead:
                    raise ProcessingTimeout(dead)
                if time.monotonic() - last_progress > stall_timeout_s:
                    if waiting:
                        raise ProcessingTimeout(
                            f"processors sent no end-of-input report for {len(waiting)} partition(s) "
                            f"within {stall_timeout_s:.0f} s (logs in {rt.workdir})"
                        )
                    missing = {t: n - len(records[t]) for t, n in expected.items() if len(records[t]) < n}
                    raise ProcessingTimeout(f"output records missing after {stall_timeout_s:.0f} s: {missing}")
    return stats, records
