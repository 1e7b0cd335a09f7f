"""wirestream replay: reprocessing a raw topic gives exactly the first run's records.

A capture goes through `analyze` on the shared broker (its producer publishes
wire.packets, its workers publish the records); `replay` then reads the same packet
batches back from wire.packets and processes them again in-process. A consumer of the
output topics then sees every record exactly twice, with the same key and value: a sink
keeping one value per key ends with each record once.
"""

from __future__ import annotations

import json
import time
from collections import Counter

from helpers import DATA
from wirestream.processors.l7.base import L7Options

from wirestream.analyze import analyze
from wirestream.codec import AvroCodec
from wirestream.config import Settings
from wirestream.reader import TopicReader, end_offsets
from wirestream.replay import replay
from wirestream.topics import CONNECTIONS, DNS, TLS, TRANSACTIONS

CAPTURE = str(DATA / "chrissanders" / "http_espn.pcapng")
TOPICS = (CONNECTIONS, TRANSACTIONS, DNS, TLS)


def _records(broker, registry, start: dict, source: str, expected: int) -> list[tuple[str, bytes, str]]:
    out = []
    deadline = time.monotonic() + 60
    with TopicReader(broker.bootstrap, AvroCodec(registry.url), TOPICS, start) as reader:
        while len(out) < expected and time.monotonic() < deadline:
            for m in reader.poll(0.3):
                if m.record is not None and m.record["source_id"] == source:
                    out.append((m.topic, m.key, json.dumps(m.record, sort_keys=True, default=str)))
    return out


def test_replay_yields_exactly_the_first_runs_records(broker, registry) -> None:
    published_from = time.time_ns() // 1000
    before = end_offsets(broker.bootstrap, TOPICS)
    settings = Settings(bootstrap=broker.bootstrap, registry=registry.url, windows=False)
    first = analyze([CAPTURE], settings, workers=1)
    (source,) = {r["source_id"] for r in first.records[CONNECTIONS]}
    first_run = Counter((t, json.dumps(r, sort_keys=True, default=str)) for t in TOPICS for r in first.records[t])
    expected = sum(first_run.values())
    assert expected > 90 and max(first_run.values()) == 1  # connections, HTTP, DNS; all distinct

    run = replay(broker.bootstrap, registry.url, from_us=published_from, source_prefix=source,
                 l7_options=L7Options(redact=settings.redact, body_cap=settings.body_cap))
    assert run.by_topic["wire.packets"] > 0
    assert sum(run.emitted[t] for t in TOPICS) == expected
    # Both runs' records, as a downstream consumer sees them: each record twice, same key
    # and value; nothing the first run did not have.
    both = _records(broker, registry, before, source, 2 * expected)
    assert len(both) == 2 * expected
    keys = Counter((t, key) for t, key, _ in both)
    values = Counter((t, value) for t, _, value in both)
    assert values == Counter({v: 2 for v in first_run})
    assert all(n % 2 == 0 for n in keys.values())
