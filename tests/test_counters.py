"""Counters on wire.stats add up: each report counts its own part, once.

Consumers of ``wire.stats`` (``analyze``'s summary, dashboards) sum the final reports of a
stage over its sources, partitions and workers. A count that a worker carried into every
report would come out multiplied by the number of partitions.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from confluent_kafka import Consumer, TopicPartition
from helpers import DATA
from wirestream.processors.output import OutputPublisher
from wirestream.processors.packet_pipeline import PacketPipeline

from wirestream.codec import AvroCodec
from wirestream.reader import TopicReader, end_offsets
from wirestream.topics import PACKETS, STATS

CAPTURE = str(DATA / "chrissanders" / "http_espn.pcapng")
STAGE = "test.counters"


def _raw_messages(bootstrap: str, start: dict[tuple[str, int], int]) -> list[tuple[int, bytes]]:
    """Every wire.packets message from ``start`` on, as (partition, value). The producer has
    finished: read until nothing more comes (the embedded broker's ListOffsets(LATEST) can
    answer short, so its end offsets are not used as the end)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-counters",
                         "enable.auto.commit": False, "log_level": 3})
    try:
        consumer.assign([TopicPartition(t, p, o) for (t, p), o in start.items()])
        out: list[tuple[int, bytes]] = []
        idle = 0
        while idle < 6:
            msgs = consumer.consume(500, 0.5)
            idle = 0 if msgs else idle + 1
            out += [(m.partition(), m.value()) for m in msgs if not m.error()]
        return out
    finally:
        consumer.close()


def test_a_worker_drop_is_reported_once_whatever_the_partitions(broker, registry) -> None:
    """One undecodable wire.packets message, then a capture over 4 partitions: the four
    final reports together count ``malformed_batch`` once, not four times."""
    packets_start = end_offsets(broker.bootstrap, [PACKETS])
    stats_start = end_offsets(broker.bootstrap, [STATS])
    produced = subprocess.run(
        [sys.executable, "-m", "wirestream", "produce", "pcap", CAPTURE,
         "--bootstrap", broker.bootstrap, "--registry", registry.url],
        capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert produced.returncode == 0, produced.stderr
    source = re.search(r"as source (\S+);", produced.stdout).group(1)

    codec = AvroCodec(registry.url)
    publisher = OutputPublisher(broker.bootstrap, codec, STAGE)
    pipeline = PacketPipeline(codec, publisher, source_prefix=source)
    pipeline.handle(0, b"\x00not a batch")  # names no source: the worker's own drop
    messages = _raw_messages(broker.bootstrap, packets_start)
    ends = {p for p, value in messages
            if (b := codec.decode(value))["source_id"] == source and b["end_of_input"]}
    partitions = {p for p, _ in messages}
    assert ends == partitions == {0, 1, 2, 3}
    for part, value in messages:
        pipeline.handle(part, value)
    publisher.flush()

    finals = []
    with TopicReader(broker.bootstrap, codec, [STATS], stats_start) as reader:
        for _ in range(100):
            for m in reader.poll(0.2):
                r = m.record
                if r is not None and r["stage"] == STAGE and r["source_id"] == source and r["final"]:
                    finals.append(r)
            if len(finals) == len(partitions):
                break
    assert sorted(r["partition"] for r in finals) == sorted(partitions)
    assert sum(r["dropped"].get("malformed_batch", 0) for r in finals) == 1
    assert sum(r["received"] for r in finals) == 956  # every packet counted once, too


def _stage_rows(output: str) -> dict[str, str]:
    """The 'Counters by stage' table's processor rows, by stage name (a row's wrapped
    continuation lines, whose first cell is empty, joined to it)."""
    table = output.split("Counters by stage", 1)[1]
    rows: dict[str, str] = {}
    current = None
    for line in table.splitlines():
        m = re.match(r"\W*(processor\.\w+)\s", line)
        if m:
            current = m.group(1)
            rows[current] = line
        elif current and re.match(r"│\s+│", line):
            rows[current] += line
        else:
            current = None
    return rows


def test_counters_by_stage_shows_each_stage_its_own_outputs() -> None:
    """The packet workers' topics are on the packets row, the windows' on the windows row."""
    run = subprocess.run([sys.executable, "-m", "wirestream", "analyze", CAPTURE],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = _stage_rows(run.stdout)
    assert set(rows) == {"processor.packets", "processor.windows"}, run.stdout
    assert "→ wire.connections" in rows["processor.packets"]
    assert "→ wire.service-metrics" not in rows["processor.packets"]
    assert "→ wire.service-metrics" in rows["processor.windows"]
    assert "wire.connections" not in rows["processor.windows"]
    assert "wire.transactions" not in rows["processor.windows"]


def test_the_json_summary_totals_each_stage() -> None:
    """`analyze --json` gives each processor stage's totals: the connections and
    transactions are the packet workers', the service metrics the windows'."""
    run = subprocess.run([sys.executable, "-m", "wirestream", "analyze", "--json", CAPTURE],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    stages = summary["stages"]
    assert set(stages) == {"processor.packets", "processor.windows"}
    packets, windows = stages["processor.packets"], stages["processor.windows"]
    assert packets["received"] == 956
    assert packets["emitted"]["wire.connections"] == summary["records"]["wire.connections"]
    assert packets["emitted"]["wire.transactions"] == summary["records"]["wire.transactions"]
    assert "wire.service-metrics" not in packets["emitted"]
    assert set(windows["emitted"]) <= {"wire.service-metrics", "wire.alerts"}
    assert windows["emitted"]["wire.service-metrics"] == summary["records"]["wire.service-metrics"]
