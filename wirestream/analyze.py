"""``wirestream analyze``: the whole pipeline, one command, on capture files.

1. start processor workers (``wirestream process --assign``: each given its partitions,
   in no consumer group) while Kafka (the embedded broker unless ``--bootstrap``), the
   schema registry and the topics come up;
2. replay each file into ``wire.packets`` (the producer runs here, while the workers are
   still starting, then in parallel with them);
3. wait until the processors report end of input for every partition of every file
   (their final ``wire.stats`` records): no fixed sleeps;
4. read exactly the output records they reported, write ``DIR/<topic>.jsonl``, and return
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
from typing import TYPE_CHECKING, Any

from wirestream.broker import consume_available, partition_count
from wirestream.config import Settings
from wirestream.errors import CaptureFileError, DecodeError, RegistryError, WirestreamError
from wirestream.producers.capture_file import open_capture
from wirestream.runtime import Runtime
from wirestream.topics import (
    OBSERVATIONS,
    OUTPUT_TOPICS,
    PACKETS,
    PACKETS_STAGE,
    SOCKETS,
    STATS,
    WINDOWS_STAGE,
)

if TYPE_CHECKING:
    from wirestream.codec import AvroCodec

# Imported where they are used, after the workers are started: confluent_kafka, the
# producer (numpy, the codec) take ~0.2 s to import, and every worker needs ~0.5 s to
# start; the command starts them first (run_pipeline).


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
    after_feed: Callable[[], None] | None = None,
) -> AnalyzeResult:
    """Replay ``paths`` through the pipeline and collect every output record.

    ``workers=None`` chooses the processor workers by the input's size (one for a small
    input, else :func:`default_workers`).

    ``after_feed`` is called once the files are published, while the workers finish: the
    command can prepare its output then (the summary's imports), in time it would wait.

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
        from wirestream.producers.pcap_replay import replay_files

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

    input_bytes = sum(os.path.getsize(p) for p in paths)
    run_pipeline(result, settings, feed, workers, stall_timeout_s, keep_bodies, input_bytes=input_bytes,
                 after_feed=after_feed)
    result.elapsed_s = time.monotonic() - started
    return result


#: Publishes the sources of a run: (runtime, run id, wire.packets partitions) -> the
#: results of the sources it published, by source id (each id starts with the run id).
Feeder = Callable[[Runtime, str, int], dict[str, Any]]


def run_pipeline(result: AnalyzeResult, settings: Settings, feed: Feeder, workers: int | None = None,
                 stall_timeout_s: float = 120.0, keep_bodies: bool = True,
                 input_bytes: int | None = None, after_feed: Callable[[], None] | None = None) -> None:
    """Bring up Kafka and processor workers for one run, let ``feed`` publish its sources,
    and collect every output record and final report of those sources into ``result``.

    Shared by ``analyze`` (files; ``input_bytes``: their size, which chooses how many
    workers) and ``capture`` (live).

    The workers are assigned their partitions (no consumer group: a join costs seconds)
    and started first, while the embedded broker starts: they import, then wait for the
    broker and the topics, while this process creates the topics and ``feed`` publishes.
    """
    run_id = uuid.uuid4().hex[:12]
    worker_settings = settings if keep_bodies else dataclasses.replace(settings, response_body_cap=0)
    with Runtime(settings, worker_grace_s=0.5, autostart=False) as rt:
        rt.launch()
        if rt.embedded_broker is not None:
            # A broker of our own, just launched: the topics will be created by rt.start()
            # with settings.partitions partitions, and every partition starts empty. Offset
            # 0 is given as a number: "from the beginning" would make each consumer look it
            # up first, which costs ~0.5 s on the embedded broker.
            partitions = settings.partitions
            observation_partitions = settings.partitions if settings.windows else 0
            starts = {(t, p): 0 for t in (PACKETS, SOCKETS, OBSERVATIONS, *OUTPUT_TOPICS, STATS)
                      for p in range(partitions)}
            _start_workers(rt, run_id, worker_settings, workers, partitions, observation_partitions,
                           starts, input_bytes)
            rt.start()
        else:
            # A shared Kafka: its topics may hold earlier runs' data and have other
            # partition counts. The workers start where this run's input will begin.
            from wirestream.reader import end_offsets

            rt.start()
            partitions = partition_count(rt.bootstrap, PACKETS)
            observation_partitions = partition_count(rt.bootstrap, OBSERVATIONS) if settings.windows else 0
            starts = end_offsets(rt.bootstrap, (PACKETS, SOCKETS, OBSERVATIONS, *OUTPUT_TOPICS, STATS))
            _start_workers(rt, run_id, worker_settings, workers, partitions, observation_partitions,
                           starts, input_bytes)
        result.bootstrap, result.registry = rt.bootstrap, rt.registry_url
        try:
            source_ids = feed(rt, run_id, partitions)
        except Exception:
            # The workers start at once and the input is published while they do: the
            # broker or a worker may die while it is. That is the error to report, not
            # what it made the producer raise.
            dead = rt.dead_worker()
            if dead:
                raise ProcessingTimeout(dead) from None
            raise
        if after_feed is not None:
            after_feed()
        if source_ids:
            result.stats, result.records = _wait_and_collect(
                rt, starts, source_ids, partitions, observation_partitions, stall_timeout_s)
        else:
            result.records = {t: [] for t in OUTPUT_TOPICS}


#: Input (capture files) up to this size is processed by one worker process, with the
#: windows in a thread of it: a Python process costs ~0.5 s of CPU to start (imports),
#: more than a second worker saves on a small input on 2 cores (docs/architecture.md).
SMALL_INPUT_BYTES = 16 * 1024 * 1024


def _start_workers(rt: Runtime, run_id: str, settings: Settings, workers: int | None, partitions: int,
                   observation_partitions: int, starts: dict[tuple[str, int], int],
                   input_bytes: int | None) -> None:
    """Start the worker processes of one run, each assigned its share of the packet
    partitions (worker i: partitions i, i + n, ...), from the offsets in ``starts``
    (missing: the beginning).

    One worker for a small input, with the windows in a thread of it; else one worker per
    CPU (:func:`default_workers`) and the windows in a process of their own."""
    if workers is None:
        small = input_bytes is not None and input_bytes <= SMALL_INPUT_BYTES
        workers = 1 if small else default_workers(partitions)
    workers = max(1, min(workers, partitions))
    from wirestream.commands.process import format_offsets

    common = ["--only-source-prefix", run_id, *settings.worker_args()]
    if starts:
        common += ["--start-offsets", format_offsets(
            {k: v for k, v in starts.items() if k[0] in (PACKETS, SOCKETS, OBSERVATIONS)})]
    group = f"wirestream-analyze-{run_id}"  # names the workers' own reports; no group is joined
    windows_args = ["--assign-windows", ",".join(map(str, range(observation_partitions)))]
    alone = workers == 1 and observation_partitions > 0
    for i in range(workers):
        assign = ["--assign", ",".join(str(p) for p in range(i, partitions, workers))]
        if alone:
            rt.start_workers(1, group, ["--role", "all", *assign, *windows_args, *common], static=True)
        else:
            rt.start_workers(1, group, ["--role", "packets", *assign, *common], static=True)
    if observation_partitions and not alone:
        rt.start_workers(1, group, ["--role", "windows", *windows_args, *common], static=True)


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

    with _RunReader(rt.bootstrap, rt.codec, [STATS, *OUTPUT_TOPICS], start) as reader:
        while not done():
            msgs = reader.poll(0.2, 10_000)
            for topic, rec in msgs:
                if rec is None or rec.get("source_id", "") not in source_ids:
                    continue
                last_progress = time.monotonic()
                if topic != STATS:
                    records[topic].append(rec)
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


class _RunReader:
    """The output topics and wire.stats of one run, from the offsets where it began.

    Not :class:`wirestream.reader.TopicReader`, whose fetches wait up to 500 ms for data
    and whose poll waits for its whole timeout unless ``max_messages`` arrive: the last
    final report was seen 0.4 s after it was written. Here a fetch waits at most 50 ms
    and a poll returns what has arrived: a run ends as soon as its last report is written."""

    def __init__(self, bootstrap: str, codec: AvroCodec, topics: list[str],
                 start: dict[tuple[str, int], int]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from wirestream.kafka import consumer_config
        from wirestream.reader import partitions_of

        self.codec = codec
        self._consumer = Consumer({**consumer_config(bootstrap), "fetch.wait.max.ms": 50})
        self._consumer.assign([TopicPartition(tp.topic, tp.partition,
                                              start.get((tp.topic, tp.partition), OFFSET_BEGINNING))
                               for tp in partitions_of(bootstrap, topics)])

    def poll(self, timeout: float, max_messages: int) -> list[tuple[str, dict[str, Any] | None]]:
        """(topic, record) of the messages read; record None when it cannot be decoded."""
        out: list[tuple[str, dict[str, Any] | None]] = []
        decode = self.codec.decode
        for msg in consume_available(self._consumer, max_messages, timeout):
            if msg.error():
                continue  # transient fetch errors are retried by the client
            try:
                out.append((msg.topic(), decode(msg.value())))
            except (DecodeError, RegistryError):
                out.append((msg.topic(), None))
        return out

    def __enter__(self) -> _RunReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._consumer.close()
