"""``wirestream analyze``: the whole pipeline, one command, on capture files.

1. start processor workers (``wirestream process --assign``: each given its partitions,
   in no consumer group) while Kafka (the embedded broker unless ``--bootstrap``), the
   schema registry and the topics come up;
2. read each file into packet batches and hand each to the worker of its partition (the
   producer runs here, while the workers are still starting, then in parallel with
   them): by pipe on the run's own embedded broker, through ``wire.packets`` on a Kafka
   the user named (wirestream/packet_pipe.py says why);
3. wait until the processors report end of input for every partition of every file
   (their final ``wire.stats`` records): no fixed sleeps;
4. read exactly the output records they reported, as they come (while the workers
   work; by pipe, while step 2 still reads the files, in a thread of its own: ``Feed``),
   each streamed to ``DIR/<topic>.jsonl`` (``jsonl_dir``) as it is read, and return them
   (or the fields of them the caller asked for) for the summary.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wirestream.broker import partition_count
from wirestream.config import Settings
from wirestream.errors import CaptureFileError, WirestreamError
from wirestream.packet_pipe import WorkerGone
from wirestream.producers.capture_file import open_capture
from wirestream.runtime import Runtime
from wirestream.topics import (
    CALL_CHAINS,
    CONNECTIONS,
    DROPS,
    OBSERVATIONS,
    OUTPUT_TOPICS,
    PACKETS,
    PACKETS_STAGE,
    SOCKETS,
    STATS,
    TRANSACTIONS,
    WINDOWS_STAGE,
)

if TYPE_CHECKING:
    from wirestream.processors.call_chains import ChainBuilder
    from wirestream.processors.output import OutputPublisher
    from wirestream.sinks.jsonl import JsonlWriter

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
    #: the call-chain builder's final wire.stats report (stage processor.chains), kept out
    #: of ``stats``: those are the workers' reports, which the summary's stage table sums
    chain_report: dict[str, Any] | None = None
    #: the folder the records were streamed to as JSON lines while they were read
    #: (``jsonl_dir``), None if they were not
    jsonl_dir: str | None = None
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
    jsonl_dir: str | os.PathLike[str] | None = None,
    fields: dict[str, frozenset[str]] | None = None,
    chains: bool = True,
    packets_by_pipe: bool = True,
) -> AnalyzeResult:
    """Replay ``paths`` through the pipeline and collect every output record.

    ``workers=None`` chooses the processor workers by the input's size (one for a small
    input, else :func:`default_workers`).

    ``after_feed`` is called once the files are published, while the workers finish: the
    command can prepare its output then (the summary's imports), in time it would wait.

    ``keep_bodies=False`` runs the workers with a response body cap of 0: transactions
    keep their body sizes but not the response bytes, which the tables do not show and
    which, for a big capture, are gigabytes to move through Kafka and decode for nothing.
    Request bodies are kept: credentials and card numbers are detected there.

    ``jsonl_dir``: every output record is written to ``jsonl_dir/<topic>.jsonl`` as it is
    read (:class:`wirestream.sinks.jsonl.JsonlWriter`), while the workers still work,
    instead of after the run; the files appear when the run has succeeded.

    ``fields`` (topic -> field names): ``result.records`` of those topics hold only those
    fields (decoded alone: the others are skipped, unless ``jsonl_dir`` needs them);
    what a summary needs of big records, without their header maps and bodies.

    ``chains``: the run's HTTP transactions are linked into call chains in this process
    (:func:`build_chains`), published to ``wire.call-chains`` and kept in
    ``result.records["wire.call-chains"]``.

    ``packets_by_pipe``: on the run's own embedded broker, the packet batches go to the
    workers by pipe (see :func:`run_pipeline`); False publishes them to ``wire.packets``
    there too (for comparison: the records are the same)."""
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
            alive=rt.dead_worker, pipes=rt.packet_pipes, producer_config=rt.producer_config,
        ):
            if isinstance(replay, CaptureFileError):
                result.failed.append(replay)
                continue
            sources[source_id] = replay
            result.files.append(replay)
        return sources

    input_bytes = sum(os.path.getsize(p) for p in paths)
    run_pipeline(result, settings, feed, workers, stall_timeout_s, keep_bodies, input_bytes=input_bytes,
                 after_feed=after_feed, jsonl_dir=jsonl_dir, fields=fields, chains=chains,
                 packets_by_pipe=packets_by_pipe)
    result.elapsed_s = time.monotonic() - started
    return result


#: Publishes the sources of a run: (runtime, run id, wire.packets partitions) -> the
#: results of the sources it published, by source id (each id starts with the run id).
Feeder = Callable[[Runtime, str, int], dict[str, Any]]


def run_pipeline(result: AnalyzeResult, settings: Settings, feed: Feeder, workers: int | None = None,
                 stall_timeout_s: float = 120.0, keep_bodies: bool = True,
                 input_bytes: int | None = None, after_feed: Callable[[], None] | None = None,
                 jsonl_dir: str | os.PathLike[str] | None = None,
                 fields: dict[str, frozenset[str]] | None = None, chains: bool = False,
                 packets_by_pipe: bool = False) -> None:
    """Bring up Kafka and processor workers for one run, let ``feed`` publish its sources,
    and collect every output record and final report of those sources into ``result``.

    Shared by ``analyze`` (files; ``input_bytes``: their size, which chooses how many
    workers) and ``capture`` (live).

    The workers are assigned their partitions (no consumer group: a join costs seconds)
    and started first, while the embedded broker starts: they import, then wait for the
    broker and the topics, while this process creates the topics and ``feed`` publishes.

    ``jsonl_dir``, ``fields`` and ``chains``: as for :func:`analyze`.

    ``packets_by_pipe``: on the run's own embedded broker, the workers take their packet
    batches from pipes (``rt.packet_pipes``, which ``feed`` hands to its publisher)
    rather than from ``wire.packets``: that broker keeps nothing after the run, and the
    hop through it was the largest cost after the analysis (wirestream/packet_pipe.py). Against a
    Kafka the user named, the packets are published there as ever.
    """
    writer = None
    if jsonl_dir is not None:
        # opened first: a folder that cannot be written fails the run before it starts
        from wirestream.sinks.jsonl import JsonlWriter

        writer = JsonlWriter(jsonl_dir, (*OUTPUT_TOPICS, CALL_CHAINS) if chains else OUTPUT_TOPICS)
    try:
        _run(result, settings, feed, workers, stall_timeout_s, keep_bodies, input_bytes, after_feed,
             writer, fields, chains, packets_by_pipe)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    if writer is not None:
        writer.close()
        result.jsonl_dir = os.fspath(jsonl_dir)  # type: ignore[arg-type]


def _run(result: AnalyzeResult, settings: Settings, feed: Feeder, workers: int | None,
         stall_timeout_s: float, keep_bodies: bool, input_bytes: int | None,
         after_feed: Callable[[], None] | None, writer: JsonlWriter | None,
         fields: dict[str, frozenset[str]] | None, chains: bool = False, packets_by_pipe: bool = False) -> None:
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
            starts = {(t, p): 0 for t in (PACKETS, SOCKETS, DROPS, OBSERVATIONS, *OUTPUT_TOPICS, STATS)
                      for p in range(partitions)}
            pipes = _start_workers(rt, run_id, worker_settings, workers, partitions, observation_partitions,
                                   starts, input_bytes, packets_pipe=packets_by_pipe)
            if pipes:
                from wirestream.packet_pipe import PacketPipes

                rt.packet_pipes = PacketPipes(pipes, alive=rt.dead_worker)
            rt.start()
        else:
            # A shared Kafka: its topics may hold earlier runs' data and have other
            # partition counts. The workers start where this run's input will begin.
            from wirestream.reader import end_offsets

            rt.start()
            partitions = partition_count(rt.bootstrap, PACKETS)
            observation_partitions = partition_count(rt.bootstrap, OBSERVATIONS) if settings.windows else 0
            starts = end_offsets(rt.bootstrap, (PACKETS, SOCKETS, DROPS, OBSERVATIONS, *OUTPUT_TOPICS, STATS))
            _start_workers(rt, run_id, worker_settings, workers, partitions, observation_partitions,
                           starts, input_bytes)
        result.bootstrap, result.registry = rt.bootstrap, rt.registry_url
        wanted = fields
        if chains and fields is not None:
            # the chains need the trace headers and the pids (a connection's, from the
            # socket join of live capture), which a summary does not show: decoded for
            # them, cut off again once the chains are built
            from wirestream.processors.call_chains import CONNECTION_FIELDS, TRANSACTION_FIELDS

            extra = {TRANSACTIONS: TRANSACTION_FIELDS, CONNECTIONS: CONNECTION_FIELDS}
            wanted = {**fields, **{t: fields[t] | f for t, f in extra.items() if t in fields}}
        # By pipe, the input is fed from a thread while this one reads the records as they
        # come: reading and writing them (--out's lines) is then done beside the workers'
        # work, not after it. Through a broker, fed first (see Feed).
        pipes = rt.packet_pipes
        builder = on_record = chains_publisher = None
        if chains:
            # fed as the records come (beside the workers' work) rather than all at the end:
            # the whole run is one window, held whole (as result.records is)
            from wirestream.processors.call_chains import HOP_FIELDS, ChainBuilder

            builder = ChainBuilder(max_held=sys.maxsize)
            # What of a transaction only the builder's ``add`` reads (its headers' trace
            # context, its times, connection id, pids, pods) is not held to the end: the
            # run keeps, and the builder holds, a copy of the record without it. A copy,
            # not the record cut in place: a dict keeps the table it grew to, and
            # transactions are most of what this process holds (on the bench capture,
            # 69,363 of them: with the headers popped, peak 376 -> 350 MB; with the copy
            # instead, 273 -> 245 MB, the reader's strings shared already).
            summary = fields.get(TRANSACTIONS) if fields is not None else None
            kept = summary | HOP_FIELDS | {"source_id"} if summary is not None else None
            # Its producer started now, not when the chains are ready: an idempotent
            # producer (on a shared Kafka) whose first record comes the moment it starts
            # waits 0.5 s for its producer id (librdkafka's timer: the first record's
            # topic lookup was in flight when the broker came up); by the end it has it.
            chains_publisher = _chains_publisher(rt)

            def on_record(topic: str, record: dict[str, Any]) -> dict[str, Any]:
                if topic == TRANSACTIONS:
                    if kept is None:
                        builder.add(record)
                        return record
                    keep = {k: v for k, v in record.items() if k in kept}
                    builder.add(record, keep)
                    return keep
                if topic == CONNECTIONS:
                    builder.add_connection(record)
                return record

        feeding = Feed(lambda: feed(rt, run_id, partitions), in_background=pipes is not None)
        try:
            result.stats, result.records = _wait_and_collect(
                rt, starts, run_id, feeding, partitions, observation_partitions, stall_timeout_s,
                writer, wanted, after_feed, on_record)
        finally:
            if pipes is not None and not feeding.done.is_set():
                pipes.stop("the run stopped")  # the feeding thread's next write ends it
                feeding.done.wait(5.0)
        if chains:
            result.records[CALL_CHAINS] = build_chains(builder, rt, run_id, result, chains_publisher)
            if writer is not None:
                for chain in result.records[CALL_CHAINS]:
                    writer.write(CALL_CHAINS, chain)
            if fields is not None and CONNECTIONS in fields:
                # (transactions were kept cut as they came: on_record) cut in place: the
                # run's serial tail
                extra = wanted[CONNECTIONS] - fields[CONNECTIONS] - {"source_id"}
                for r in result.records[CONNECTIONS]:
                    for k in extra:
                        r.pop(k, None)


def _chains_publisher(rt: Runtime) -> OutputPublisher:
    from wirestream.processors.output import OutputPublisher
    from wirestream.topics import CHAINS_STAGE

    return OutputPublisher(rt.bootstrap, rt.codec, CHAINS_STAGE, **rt.producer_config)


def build_chains(builder: ChainBuilder, rt: Runtime, run_id: str,
                 result: AnalyzeResult | None = None,
                 publisher: OutputPublisher | None = None) -> list[dict[str, Any]]:
    """The call chains of one run's transactions (processors/call_chains.py), which
    ``builder`` holds (taken in, with the connections, as they were collected), published
    to ``wire.call-chains`` (key: the root's transaction id) and returned.

    The whole run is one window: every transaction is in, so the chains are those of
    :meth:`ChainBuilder.flush`, with no lateness to wait for. The builder's counters go to
    ``wire.stats`` as a final report of stage ``processor.chains``, source ``RUN_ID``
    (also ``result.chain_report``). ``publisher``: the one to publish with, started
    early (else one is started here)."""
    chains = builder.flush()
    if chains or builder.counters.get("received"):  # (any transaction)
        if publisher is None:
            publisher = _chains_publisher(rt)
        for chain in chains:
            publisher.emit(CALL_CHAINS, chain["root_id"], chain)
        report = publisher.publish_stats(**_chain_stats(builder, run_id, publisher.emitted))
        if result is not None:
            result.chain_report = report
    return chains


def _chain_stats(builder: Any, source_id: str, emitted: dict[str, int]) -> dict[str, Any]:
    counters = dict(builder.counters)
    return {"source_id": source_id, "partition": -1, "received": counters.pop("received", 0),
            "emitted": {CALL_CHAINS: emitted.get(CALL_CHAINS, 0)},
            "dropped": {"evicted": counters.pop("evicted", 0)}, "counters": counters, "final": True}


#: Input (capture files) up to this size is processed by one worker process, with the
#: windows in a thread of it: a Python process costs ~0.5 s of CPU to start (imports),
#: more than a second worker saves on a small input on 2 cores (docs/architecture.md).
SMALL_INPUT_BYTES = 16 * 1024 * 1024


def _start_workers(rt: Runtime, run_id: str, settings: Settings, workers: int | None, partitions: int,
                   observation_partitions: int, starts: dict[tuple[str, int], int],
                   input_bytes: int | None, packets_pipe: bool = False) -> dict[int, Any]:
    """Start the worker processes of one run, each assigned its share of the packet
    partitions (worker i: partitions i, i + n, ...), from the offsets in ``starts``
    (missing: the beginning).

    One worker for a small input, else one worker per CPU (:func:`default_workers`); the
    windows in a thread of the last one, not in a process of their own: a process is
    ~0.2 s of CPU to start and ~50 MB, more than the windows' own work on most captures
    (measured, alternated, on the HTTPS bench capture: CPU 2.3-3.3 -> 2.1-2.4 s, wall
    1.5-2.2 -> 1.4-1.6 s, peak 319-326 -> 268-273 MB; on the HTTP one the same wall within
    noise, 455 -> 408 MB).

    ``packets_pipe``: the packet workers read their packet batches from their stdin;
    returned: partition -> the writing end of its worker's pipe (else empty); and every
    worker writes its records and reports to a pipe of ``rt.record_pipes``."""
    if workers is None:
        small = input_bytes is not None and input_bytes <= SMALL_INPUT_BYTES
        workers = 1 if small else default_workers(partitions)
    workers = max(1, min(workers, partitions))
    from wirestream.commands.process import format_offsets

    common = ["--only-source-prefix", run_id, *settings.worker_args()]
    if starts:
        common += ["--start-offsets", format_offsets(
            {k: v for k, v in starts.items() if k[0] in (PACKETS, SOCKETS, DROPS, OBSERVATIONS)})]
    group = f"wirestream-analyze-{run_id}"  # names the workers' own reports; no group is joined
    windows_args = ["--assign-windows", ",".join(map(str, range(observation_partitions)))]
    pipes: dict[int, Any] = {}
    for i in range(workers):
        owned = range(i, partitions, workers)
        assign = ["--assign", ",".join(map(str, owned))]
        if observation_partitions and i == workers - 1:
            role = ["--role", "all", *assign, *windows_args]
        else:
            role = ["--role", "packets", *assign]
        rt.start_workers(1, group, [*role, *common], static=True, packets_pipe=packets_pipe,
                         records_pipe=packets_pipe)
        if packets_pipe:
            pipes.update(dict.fromkeys(owned, rt.workers[-1].stdin))
    return pipes


def default_workers(partitions: int) -> int:
    """One worker per CPU, but no more than there are partitions to share.

    A worker is one Python process: one core at most. On 2 cores, 2 workers finish a
    1M-packet HTTP capture in ~60 s where 1 takes ~80 s (bench/README.md), though the
    producer and the broker share those cores too."""
    return max(1, min(os.cpu_count() or 1, partitions))


#: how long a thread holds the GIL while another wants it (Python's default: 5 ms), while
#: a thread feeds the workers beside the collector (:class:`Feed`)
FEED_SWITCH_INTERVAL_S = 0.0005


class Feed:
    """A run's input being fed (``Feeder``), for the reader of its records to ask about.

    ``in_background``: fed by a thread of its own while the caller reads the records as
    they come (analyze on its own broker, by pipe: its writes wait on the workers, and the
    pipes stop it when the run stops: :meth:`PacketPipes.stop`); else fed at once, before
    the records are read (a feeder that must run in the main thread: live capture, which
    stops on Ctrl-C; a producer to a user's Kafka, which nothing could stop midway)."""

    def __init__(self, run: Callable[[], dict[str, Any]], in_background: bool) -> None:
        self._run = run
        self._sources: dict[str, Any] = {}
        self._error: BaseException | None = None
        self.done = threading.Event()
        self._switch_interval: float | None = None
        if in_background:
            # The feeding thread wants the GIL back after every write to a pipe and every
            # read of the file (both release it); with the collector busy in Python, each
            # of those waits lasted up to the switch interval, while the workers' input
            # ran dry. (Process-wide: set back when the feed is done.)
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(FEED_SWITCH_INTERVAL_S)
            threading.Thread(target=self._feed, name="feed", daemon=True).start()
        else:
            self._feed()

    def _feed(self) -> None:
        try:
            self._sources = self._run()
        except Exception as exc:  # raised in the reader's thread (sources())
            self._error = exc
        finally:
            if self._switch_interval is not None:
                sys.setswitchinterval(self._switch_interval)
            self.done.set()

    def sources(self) -> dict[str, Any] | None:
        """None while feeding; then the sources fed, by source id; or the feed's error."""
        if not self.done.is_set():
            return None
        if self._error is not None:
            raise self._error
        return self._sources


def _fed_sources(rt: Runtime, feeding: Feed) -> dict[str, Any] | None:
    """``feeding.sources()``, where a failed feed's error is that of the broker or worker
    that died, if one did: the workers start at once and the input is published while they
    do, and what their death made the feeder raise is not what the user needs to read."""
    try:
        return feeding.sources()
    except Exception as exc:
        dead = rt.dead_worker()
        if dead is None and isinstance(exc, WorkerGone):
            # its pipe closed as it exited: its exit status follows in a moment
            deadline = time.monotonic() + 5.0
            while dead is None and time.monotonic() < deadline:
                time.sleep(0.05)
                dead = rt.dead_worker()
        if dead:
            raise ProcessingTimeout(dead) from None
        raise


def _wait_and_collect(
    rt: Runtime,
    start: dict[tuple[str, int], int],
    run_id: str,
    feeding: Feed,
    partitions: int,
    observation_partitions: int,
    stall_timeout_s: float,
    writer: JsonlWriter | None = None,
    fields: dict[str, frozenset[str]] | None = None,
    after_feed: Callable[[], None] | None = None,
    on_record: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Read wire.stats and the output topics together until every (source, partition) of
    the run has a final processor report and exactly the records those reports count have
    arrived. The sources are those ``feeding`` fed (each named ``RUN_ID-...``).

    Output records are read (and decoded, and written to ``writer``) while the workers are
    still busy, rather than all at the end: with L7 on, there are several records per
    connection to read. A fetch waits at most 50 ms and a poll returns what has arrived,
    so the run ends tens of milliseconds after its last report is written. While the
    input is still being fed (in the background), the run's records are those whose
    source id starts with the run's; the reports still to come are known once it is fed
    (``after_feed`` is then called).

    ``fields``: the records kept of those topics hold only those fields, and only they are
    decoded. With a ``writer``, a record's line is made from the message's bytes by the
    compiled core's writing thread (``JsonlWriter.write_message``), so a transaction's
    bodies and headers are never made into objects, and every JSON text is made beside
    this thread rather than by it: a record decoded whole anyway (a connection: the
    summary ranks them by most of their fields) too, since the core writes its ~100 small
    fields in less time (3.7 us on the HTTP bench capture) than orjson took here with its
    line encoder (6.8 us), and handing it over costs ~1 us.

    ``on_record(topic, record)`` is called for each output record kept, as it comes; the
    record it returns is the one kept (the same, or a smaller copy).
    """
    from wirestream.errors import DecodeError
    from wirestream.reader import TopicReader
    from wirestream.record_pipe import RecordPipeReader

    prefix = f"{run_id}-"
    source_ids: dict[str, Any] | None = None  # known once fed
    # final reports still to come, once the sources are known: (stage, source, partition)
    waiting: set[tuple[str, str, int]] | None = None
    finals: dict[tuple[str, str, int], dict[str, Any]] = {}  # those that came
    stats: list[dict[str, Any]] = []
    records: dict[str, list[dict[str, Any]]] = {t: [] for t in OUTPUT_TOPICS}
    expected: dict[str, int] = defaultdict(int)
    last_progress = time.monotonic()
    fields = {t: frozenset(f) | {"source_id"} for t, f in (fields or {}).items()}
    write_message = writer.write_message if writer is not None else None
    codec = rt.codec
    undecodable, first_error = 0, ""

    def done() -> bool:
        return waiting is not None and not waiting and all(len(records[t]) >= n for t, n in expected.items())

    def count(key: tuple[str, str, int]) -> None:
        for topic, n in finals[key]["emitted"].items():
            expected[topic] += n

    reader: TopicReader | RecordPipeReader
    if rt.record_pipes:  # the workers' records come by pipe (wirestream/record_pipe.py)
        codec = rt.codec
        reader = RecordPipeReader(rt.record_pipes, codec.decode, {t: codec.decoder(f) for t, f in fields.items()},
                                  raw=writer is not None)
    else:
        reader = TopicReader(rt.bootstrap, rt.codec, [STATS, *OUTPUT_TOPICS], start, fetch_wait_ms=50,
                             fields=fields, raw=writer is not None)
    with reader:
        while not done():
            if source_ids is None and (source_ids := _fed_sources(rt, feeding)) is not None:
                if after_feed is not None:
                    after_feed()
                waiting = {(PACKETS_STAGE, s, p) for s in source_ids for p in range(partitions)}
                waiting |= {(WINDOWS_STAGE, s, q) for s in source_ids for q in range(observation_partitions)}
                for key in waiting & finals.keys():
                    waiting.discard(key)
                    count(key)
                if isinstance(reader, RecordPipeReader):
                    # the feed's own reports (a file's producer's) went to wire.stats, which
                    # only the workers' pipes are read for here: taken from the feed itself
                    stats += [report for source in source_ids.values()
                              if (report := getattr(source, "report", None)) is not None]
                last_progress = time.monotonic()  # the stall timeout counts from the end of the input
                if not source_ids:
                    break  # nothing was fed (every file failed): no record will come
                continue
            msgs = reader.poll(0.2, 10_000)
            for msg in msgs:
                rec = msg.record
                if rec is None:
                    # another run's, or this run's and lost: which, the timeout's error says
                    undecodable += 1
                    first_error = first_error or f"{msg.topic}/{msg.partition}@{msg.offset}: {msg.error}"
                    continue
                source = rec.get("source_id", "")
                if not source.startswith(prefix) or (source_ids is not None and source not in source_ids):
                    continue
                last_progress = time.monotonic()
                topic = msg.topic
                if topic != STATS:
                    if write_message is not None:
                        try:
                            write_message(topic, msg.value, codec)
                        except DecodeError as exc:  # (the record decoded: a damaged framing)
                            undecodable += 1
                            first_error = first_error or f"{topic}/{msg.partition}@{msg.offset}: {exc}"
                            continue
                    if on_record is not None:
                        rec = on_record(topic, rec)
                    records[topic].append(rec)
                    continue
                stats.append(rec)
                key = (rec["stage"], source, rec["partition"])
                if rec["final"] and key not in finals:
                    finals[key] = rec
                    if waiting is not None and key in waiting:
                        waiting.discard(key)
                        count(key)
            if not msgs:
                dead = rt.dead_worker()
                if dead:
                    raise ProcessingTimeout(dead)
                if waiting is not None and time.monotonic() - last_progress > stall_timeout_s:
                    if waiting:
                        raise ProcessingTimeout(
                            f"processors sent no end-of-input report for {len(waiting)} partition(s) "
                            f"within {stall_timeout_s:.0f} s (logs in {rt.workdir})"
                        )
                    missing = {t: n - len(records[t]) for t, n in expected.items() if len(records[t]) < n}
                    raise ProcessingTimeout(
                        f"output records missing after {stall_timeout_s:.0f} s: {missing}"
                        + (f" ({undecodable} record(s) could not be decoded, the first {first_error})"
                           if undecodable else ""))
    return stats, records
