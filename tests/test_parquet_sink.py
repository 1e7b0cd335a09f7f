"""The data-lake sink against the real broker: DuckDB over its Parquet files agrees with
the topics; a destination that is down for a while loses nothing; a replay of the same
packets writes nothing twice; an undecodable message goes to the dead-letter topic; files
and directories are private (0600, 0700) whatever the umask."""

from __future__ import annotations

import os
import stat
import threading
import time
import uuid
from collections import Counter

from confluent_kafka import Consumer, Producer
from helpers import DATA, import_or_require, publish, transaction
from wirestream.processors.l7.base import L7Options

from wirestream.analyze import analyze
from wirestream.config import Settings
from wirestream.kafka import group_consumer_config, producer_config
from wirestream.replay import replay
from wirestream.topics import CONNECTIONS, DEAD_LETTER, TRANSACTIONS

duckdb = import_or_require("duckdb")
import_or_require("pyarrow")
from wirestream.sinks.parquet import ParquetSink  # noqa: E402

CAPTURE = str(DATA / "chrissanders" / "http_espn.pcapng")


def _run_sink(sink: ParquetSink, until, timeout: float = 90.0) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop.is_set,), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not until() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(120)
    assert until(), f"sink did not get there in {timeout} s: {dict(sink.written)} {dict(sink.counters)}"


def _query(out, sql: str, topic: str) -> list[tuple]:
    glob = str(out / topic / "*" / "*" / "*.parquet")
    return duckdb.sql(sql.replace("FILES", f"read_parquet('{glob}', hive_partitioning=1)")).fetchall()


def test_parquet_sink_agrees_with_topics_survives_an_outage_and_writes_each_record_once(
        broker, registry, tmp_path) -> None:
    published_from = time.time_ns() // 1000
    settings = Settings(bootstrap=broker.bootstrap, registry=registry.url, windows=False)
    first = analyze([CAPTURE], settings, workers=1)
    (source,) = {r["source_id"] for r in first.records[CONNECTIONS]}
    garbage = b"not avro at all " + uuid.uuid4().hex.encode()
    producer = Producer(producer_config(broker.bootstrap))  # with the session's TLS/SASL, if any
    producer.produce(TRANSACTIONS, garbage, key=b"bad")
    producer.flush(10)

    out = tmp_path / "lake"
    out.mkdir()
    (out / CONNECTIONS).write_text("the destination is down")  # mkdir there fails: an outage
    group = f"lake-{uuid.uuid4().hex[:8]}"
    sink = ParquetSink(broker.bootstrap, registry.url, out, [CONNECTIONS, TRANSACTIONS], group=group,
                       flush_seconds=1.0)

    def repair_later() -> None:
        # back once the sink has failed to write twice (it retries with backoff meanwhile)
        deadline = time.monotonic() + 60
        while sink.counters["write_retries"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        (out / CONNECTIONS).unlink()

    threading.Thread(target=repair_later, daemon=True).start()

    def ours_written() -> bool:
        try:
            n = _query(out, f"SELECT count(*) FROM FILES WHERE source_id = '{source}'", CONNECTIONS)[0][0]
        except duckdb.Error:
            return False
        return n >= len(first.records[CONNECTIONS]) and sink.counters["dead_letters"] >= 1
    _run_sink(sink, ours_written)
    assert sink.counters["write_retries"] >= 2  # it did meet the outage

    def check() -> None:
        conns = _query(out, f"SELECT count(*), count(DISTINCT connection_id) FROM FILES WHERE source_id = '{source}'",
                       CONNECTIONS)[0]
        assert conns == (len(first.records[CONNECTIONS]),) * 2
        statuses = dict(_query(out, f"SELECT status, count(*) FROM FILES WHERE source_id = '{source}' GROUP BY 1",
                               TRANSACTIONS))
        assert statuses == dict(Counter(t["status"] for t in first.records[TRANSACTIONS]))

    check()

    # The same packets again (a replay): the same records come again; none is written twice,
    # also by a new sink instance that only knows the files.
    replay(broker.bootstrap, registry.url, from_us=published_from, source_prefix=source,
           l7_options=L7Options(redact=settings.redact, body_cap=settings.body_cap))
    again = ParquetSink(broker.bootstrap, registry.url, out, [CONNECTIONS, TRANSACTIONS], group=group,
                        flush_seconds=1.0)
    expected_dupes = len(first.records[CONNECTIONS]) + len(first.records[TRANSACTIONS])
    _run_sink(again, lambda: again.counters["duplicates_skipped"] >= expected_dupes)
    check()

    # the undecodable message, with its origin and reason
    consumer = Consumer(group_consumer_config(broker.bootstrap, f"dlq-{group}", from_beginning=True))
    consumer.subscribe([DEAD_LETTER])
    found = None
    deadline = time.monotonic() + 30
    while found is None and time.monotonic() < deadline:
        for msg in consumer.consume(100, 0.5):
            if not msg.error() and msg.value() == garbage:
                found = dict(msg.headers())
    consumer.close()
    assert found is not None and found["topic"] == TRANSACTIONS.encode() and b"Error" in found["error"], found


def test_files_are_private_whatever_the_umask(broker, registry, tmp_path) -> None:
    """Files 0600 in directories 0700 (all those the sink creates, the root too), with a
    umask that would leave everything world-writable; other modes when asked."""
    source = f"modes-{uuid.uuid4().hex[:8]}"
    records = [transaction(source, n) for n in range(3)]
    publish(broker, registry, TRANSACTIONS, records)

    def ours(root) -> bool:
        try:
            return _query(root, f"SELECT count(*) FROM FILES WHERE source_id = '{source}'", TRANSACTIONS)[0][0] == 3
        except duckdb.Error:
            return False

    old = os.umask(0)
    try:
        for root, file_mode, dir_mode in ((tmp_path / "lake" / "nested", 0o600, 0o700),
                                          (tmp_path / "shared", 0o640, 0o750)):
            sink = ParquetSink(broker.bootstrap, registry.url, root, [TRANSACTIONS], group=f"{source}-{file_mode:o}",
                               flush_seconds=0.5, file_mode=file_mode, dir_mode=dir_mode)
            _run_sink(sink, lambda root=root: ours(root))
            made = [root, *(p for p in root.rglob("*") if p.is_dir())]
            if root.parent != tmp_path:
                made.append(root.parent)  # lake/, made on the way to lake/nested
            files = list(root.rglob("*.parquet"))
            assert files and len(made) >= 4  # root, topic, date, hour
            assert {stat.S_IMODE(os.stat(d).st_mode) for d in made} == {dir_mode}, [
                (str(d), oct(os.stat(d).st_mode)) for d in made]
            assert {stat.S_IMODE(os.stat(f).st_mode) for f in files} == {file_mode}
            assert not list(root.rglob(".*.tmp"))
    finally:
        os.umask(old)


def test_every_topic_schema_has_an_arrow_schema() -> None:
    """A schema may name a record type it defined in an earlier field (connection.avsc's
    server_syscalls is a SocketSyscalls): the Arrow schema resolves it."""
    import json

    from wirestream.schemas import schema_text
    from wirestream.sinks.parquet import arrow_schema

    from wirestream.topics import OUTPUT_TOPICS, TOPIC_SCHEMAS

    for topic in OUTPUT_TOPICS:
        arrow_schema(json.loads(schema_text(TOPIC_SCHEMAS[topic])))
    connections = arrow_schema(json.loads(schema_text("connection")))
    assert connections.field("server_syscalls").type == connections.field("client_syscalls").type
