"""wire.queries in the sinks: the SIEM mappings (ECS and CEF) and analyze's summary
(the queries table, its status line and ``--json``'s ``queries``).

The records are made by hand, as processors/l7/redis.py writes them, and checked against
schemas/query.avsc first, so that the sinks are tested on records the topic can hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate
from rich.console import Console
from wirestream.sinks import console
from wirestream.sinks.siem import cef_event, ecs_event

from wirestream.topics import CONNECTIONS, DNS, MESSAGING, QUERIES, TRANSACTIONS

SCHEMA = fastavro.parse_schema(json.loads((Path(__file__).parent.parent / "schemas/query.avsc").read_text()))
LONG_KEY = "session:" + "x" * 80  # a statement longer than the table shows


def query(**over: Any) -> dict[str, Any]:
    """A wire.queries record (a GET answered with a value), ``over`` replacing fields."""
    record = {
        "query_id": "0123456789abcdef", "source_id": "run-1", "connection_id": "conn-1",
        "community_id": "1:LQU9qZlK+B5F3KDmev6m5PMibrg=", "client_ip": "10.0.0.1", "client_port": 40000,
        "server_ip": "10.0.0.2", "server_port": 6379, "protocol": "redis", "operation": "GET",
        "statement": "GET user:1", "target": "user:1", "status": "ok", "error": None, "reply_type": "bulk",
        "rows": 1, "request_bytes": 31, "response_bytes": 11, "request_ts_us": 1_700_000_000_000_000,
        "response_ts_us": 1_700_000_000_000_250, "latency_us": 250, "pipelined": False,
        "client_pod": None, "client_namespace": None, "client_workload": None, "client_node": None,
        "client_pid": None, "client_process": None, "server_pod": None, "server_namespace": None,
        "server_workload": None, "server_node": None, "server_pid": None, "server_process": None,
        "server_service": None, "tunnel": [], "client_zone": None, "server_zone": None, "cross_zone": None,
    }
    record.update(over)
    validate(record, SCHEMA, raise_errors=True)
    return record


WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
OK = query()
ERROR = query(query_id="1", operation="HGETALL", statement="HGETALL user:1", status="error", error=WRONGTYPE,
              reply_type="error", rows=None, response_ts_us=1_700_000_000_001_500, latency_us=1_500)
NO_REPLY = query(query_id="2", operation="BLPOP", statement="BLPOP jobs ?", target="jobs", status="no_reply",
                 reply_type=None, rows=None, response_bytes=None, response_ts_us=None, latency_us=None)


# -- ECS -------------------------------------------------------------------------------------


def test_ecs_of_an_answered_query() -> None:
    doc = ecs_event(QUERIES, OK)
    assert doc["@timestamp"] == "2023-11-14T22:13:20.000000Z"  # request_ts_us
    assert doc["event"] == {"kind": "event", "category": ["database", "network"], "module": "wirestream",
                            "dataset": QUERIES, "type": ["info"], "action": "GET", "outcome": "success",
                            "duration": 250_000}
    assert doc["source"] == {"ip": "10.0.0.1", "port": 40000}
    assert doc["destination"] == {"ip": "10.0.0.2", "port": 6379}
    assert doc["network"] == {"transport": "tcp", "community_id": OK["community_id"], "protocol": "redis"}
    assert "error" not in doc and "http" not in doc and "service" not in doc
    assert doc["wirestream"]["statement"] == "GET user:1" and doc["wirestream"]["target"] == "user:1"


def test_ecs_of_an_error_reply_and_of_no_reply() -> None:
    doc = ecs_event(QUERIES, ERROR)
    assert doc["event"]["outcome"] == "failure" and doc["event"]["type"] == ["info", "error"]
    assert doc["event"]["action"] == "HGETALL" and doc["event"]["duration"] == 1_500_000
    assert doc["error"] == {"message": WRONGTYPE}
    doc = ecs_event(QUERIES, NO_REPLY)
    # no reply: neither a success nor known to have failed, and no duration to give
    assert doc["event"]["outcome"] == "unknown" and doc["event"]["type"] == ["info"]
    assert "duration" not in doc["event"] and "error" not in doc
    served = ecs_event(QUERIES, query(server_service="cache/redis", client_pid=42, client_process="app"))
    assert served["service"] == {"name": "cache/redis"} and served["process"] == {"pid": 42, "name": "app"}


PG_ERROR = query(query_id="3", server_port=5432, protocol="postgresql", operation="SELECT",
                 statement="SELECT * FROM nope WHERE id = ?", target="shop", status="error",
                 error='relation "nope" does not exist', error_code="42P01", reply_type=None, rows=None,
                 db_user="app")


def test_ecs_and_cef_of_a_postgresql_error() -> None:
    doc = ecs_event(QUERIES, PG_ERROR)
    assert doc["error"] == {"message": 'relation "nope" does not exist', "code": "42P01"}
    assert doc["user"] == {"name": "app"} and doc["network"]["protocol"] == "postgresql"
    cef = cef_event(QUERIES, PG_ERROR)
    assert " app=postgresql act=SELECT outcome=failure cs1Label=statement cs1=SELECT * FROM nope WHERE id \\= ? " in cef
    assert " suser=app" in cef


def test_ecs_of_the_other_topics_has_no_query_fields() -> None:
    tx = {"client_ip": "10.0.0.1", "client_port": 40000, "server_ip": "10.0.0.2", "server_port": 80,
          "method": "GET", "path": "/", "host": "h", "status": 200, "request_ts_us": 1}
    for topic in (TRANSACTIONS, CONNECTIONS):
        doc = ecs_event(topic, tx)
        assert doc["event"]["category"] == ["network"]
        assert "action" not in doc["event"] and "outcome" not in doc["event"]
        assert "protocol" not in doc["network"]


# -- CEF -------------------------------------------------------------------------------------


def test_cef_of_an_answered_query() -> None:
    assert cef_event(QUERIES, OK) == (
        "CEF:0|wirestream|wirestream|0.1.0|wire.queries|queries|1|rt=1700000000000 src=10.0.0.1 spt=40000 "
        "dst=10.0.0.2 dpt=6379 proto=TCP app=redis act=GET outcome=success cs1Label=statement "
        "cs1=GET user:1 out=31 in=11")


def test_cef_of_an_error_reply_escapes_it() -> None:
    error = "ERR wrong number of arguments for 'set' command\nx=y"
    cef = cef_event(QUERIES, query(operation="SET", statement="SET a=b ?", target="a=b", status="error",
                                   error=error, reply_type="error", rows=None))
    assert " act=SET outcome=failure cs1Label=statement cs1=SET a\\=b ? " in cef
    assert " reason=ERR wrong number of arguments for 'set' command\\nx\\=y out=31 in=11" in cef
    cef = cef_event(QUERIES, NO_REPLY)
    assert " outcome=unknown " in cef and "reason=" not in cef and " in=" not in cef and " out=31" in cef


def test_cef_of_a_transaction_keeps_cs1_the_status() -> None:
    tx = {"client_ip": "10.0.0.1", "client_port": 40000, "server_ip": "10.0.0.2", "server_port": 80,
          "method": "GET", "path": "/", "status": 503, "request_ts_us": 1_000}
    cef = cef_event(TRANSACTIONS, tx)
    assert "cs1Label=status cs1=503" in cef and "act=" not in cef and "outcome=" not in cef


# -- the summary -----------------------------------------------------------------------------


@dataclass
class File:
    path: str = "x.pcap"
    format: str = "pcap"
    frames: int = 10
    packets: int = 9
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass
class Result:
    records: dict[str, list[dict[str, Any]]]
    files: list[File] = field(default_factory=lambda: [File()])
    stats: list[dict[str, Any]] = field(default_factory=list)
    failed: list[Any] = field(default_factory=list)
    elapsed_s: float = 1.0


def _queries() -> list[dict[str, Any]]:
    """Four calls: a slow error, a fast GET, one never answered, a SET of a long key; one
    more WRONGTYPE and an ERR, so that the most seen error reply is WRONGTYPE."""
    return [
        OK, NO_REPLY, ERROR,
        query(query_id="3", operation="SET", statement=f"SET {LONG_KEY} ?", target=LONG_KEY, reply_type="simple",
              latency_us=12_000, response_ts_us=1_700_000_000_012_000),
        query(query_id="4", operation="LPUSH", statement="LPUSH user:1 ?", status="error", error=WRONGTYPE,
              reply_type="error", rows=None, latency_us=90, response_ts_us=1_700_000_000_000_090),
        query(query_id="5", operation="EVAL", statement="EVAL", target=None, status="error",
              error="ERR Error running script", reply_type="error", rows=None, latency_us=40,
              response_ts_us=1_700_000_000_000_040),
        query(query_id="6", operation="LRANGE", statement="LRANGE [list] ? ?", target="[list]", reply_type="array",
              rows=1_234, latency_us=2_000_000, response_ts_us=1_700_000_002_000_000),
    ]


def test_the_queries_table_shows_a_sqlstate() -> None:
    out = Console(record=True, width=200)
    console.print_queries({QUERIES: [PG_ERROR]}, 5, out)
    cells = [c.strip() for c in _row(out.export_text(), "42P01").split("│")[1:-1]]
    assert cells[2:4] == ["postgresql", "SELECT"] and cells[5].startswith('error: 42P01 relation "nope"')


def _row(text: str, needle: str) -> str:
    (line,) = [line for line in text.splitlines() if needle in line]
    return line


def test_the_queries_table_and_its_line() -> None:
    out = Console(record=True, width=200)
    console.print_queries({QUERIES: _queries()}, 5, out)
    text = out.export_text()
    assert "Queries (databases and caches), slowest first (top 5 of 7)" in text
    cells = [c.strip() for c in _row(text, "LRANGE").split("│")[1:-1]]
    # a key with brackets is printed as it is, not taken for markup
    assert cells == ["10.0.0.1:40000", "10.0.0.2:6379", "redis", "LRANGE", "LRANGE [list] ? ?", "ok", "2.00 s",
                     "1,234"]
    cut = f"SET {LONG_KEY}"[:59] + "…"  # 60 characters
    assert [c.strip() for c in _row(text, "SET session:").split("│")[1:-1]] == [
        "10.0.0.1:40000", "10.0.0.2:6379", "redis", "SET", cut, "ok", "12.0 ms", "1"]
    assert [c.strip() for c in _row(text, "HGETALL").split("│")[1:-1]][5:] == [
        f"error: {WRONGTYPE[:39]}…", "1.5 ms", "-"]
    order = [op for line in text.splitlines() for op in ("LRANGE", "SET", "HGETALL", "GET ", "LPUSH", "EVAL", "BLPOP")
             if f"│ {op}" in line]
    assert order == ["LRANGE", "SET", "HGETALL", "GET ", "LPUSH"]  # slowest first, top 5
    assert _row(text, "queries: 7;") == (
        f"queries: 7; ok 3, error 3, no_reply 1; most seen errors: {WRONGTYPE[:39]}… ×2; "
        "ERR Error running script ×1")
    out = Console(record=True, width=200)
    console.print_queries({QUERIES: _queries()}, 100, out)
    text = out.export_text()
    assert "(top 7 of 7)" in text
    # no latency: after all those with one
    assert text.splitlines()[-3].startswith("│ 10.0.0.1:40000") and "BLPOP" in text.splitlines()[-3]
    assert [c.strip() for c in _row(text, "BLPOP").split("│")[1:-1]][5:] == ["no reply", "-", "-"]
    out = Console(record=True, width=200)
    console.print_queries({QUERIES: [OK]}, 100, out)
    assert out.export_text().splitlines()[-1] == "queries: 1; ok 1"  # no error: no error part


@pytest.mark.parametrize("records", [{}, {QUERIES: []}])
def test_nothing_is_printed_without_queries(records: dict[str, list[dict[str, Any]]]) -> None:
    out = Console(record=True, width=200)
    console.print_queries(records, 10, out)
    assert out.export_text() == ""
    out = Console(record=True, width=200)
    console.print_summary(Result(records), console=out)
    text = out.export_text()
    assert "Counters by stage" in text and "Queries" not in text and "queries:" not in text


def test_the_summary_shows_the_queries_after_the_l7_tables() -> None:
    dns = {"client_ip": "10.0.0.1", "server_ip": "10.0.0.53", "transport": "udp", "query_name": "x.test",
           "query_type": "A", "rcode": "NOERROR", "latency_us": 5, "answers": []}
    out = Console(record=True, width=200)
    console.print_summary(Result({DNS: [dns], QUERIES: _queries()}), top=3, console=out)
    text = out.export_text()
    assert text.index("DNS queries") < text.index("Queries (databases and caches), slowest first (top 3 of 7)") \
        < text.index("queries: 7;") < text.index("Counters by stage")


def test_the_summary_json() -> None:
    empty = console.summary_json(Result({}))
    assert empty["queries"] == {"count": 0, "by_status": {}, "by_operation": {}, "slowest": []}
    assert list(empty) == ["files", "failed", "records", "connection_states", "flows", "top_trouble", "l7",
                           "queries", "query_operations", "messaging", "services", "topology", "alerts", "stages", "stats",
                           "elapsed_s"]
    assert empty["query_operations"] == []
    assert empty["messaging"]["count"] == 0
    summary = console.summary_json(Result({QUERIES: _queries()}))["queries"]
    assert summary["count"] == 7
    assert summary["by_status"] == {"ok": 3, "error": 3, "no_reply": 1}
    assert summary["by_operation"] == {"GET": 1, "BLPOP": 1, "HGETALL": 1, "SET": 1, "LPUSH": 1, "EVAL": 1,
                                       "LRANGE": 1}
    # the slowest of those with a latency: the unanswered BLPOP has none
    assert summary["slowest"] == [
        {"operation": "LRANGE", "statement": "LRANGE [list] ? ?", "latency_us": 2_000_000, "status": "ok"},
        {"operation": "SET", "statement": f"SET {LONG_KEY} ?", "latency_us": 12_000, "status": "ok"},
        {"operation": "HGETALL", "statement": "HGETALL user:1", "latency_us": 1_500, "status": "error"},
        {"operation": "GET", "statement": "GET user:1", "latency_us": 250, "status": "ok"},
        {"operation": "LPUSH", "statement": "LPUSH user:1 ?", "latency_us": 90, "status": "error"},
        {"operation": "EVAL", "statement": "EVAL", "latency_us": 40, "status": "error"},
    ]
    many = [query(query_id=str(i), operation=f"OP{i % 25}", latency_us=i, response_ts_us=OK["request_ts_us"] + i)
            for i in range(50)]
    summary = console.summary_json(Result({QUERIES: many}))["queries"]
    assert len(summary["by_operation"]) == 20 and summary["by_operation"]["OP0"] == 2
    assert [s["latency_us"] for s in summary["slowest"]] == list(range(49, 39, -1))
    json.dumps(summary)  # as --json writes it


def test_the_summary_needs_only_the_query_fields() -> None:
    """``analyze`` keeps only console.SUMMARY_FIELDS[QUERIES] of each record: the summary of
    records cut to them is the summary of the whole records."""
    keep = console.SUMMARY_FIELDS[QUERIES]
    cut = [{k: v for k, v in q.items() if k in keep} for q in _queries()]
    assert len(keep) < len(OK) / 2
    for top in (3, 100):
        whole, part = Console(record=True, width=200), Console(record=True, width=200)
        console.print_summary(Result({QUERIES: _queries()}), top=top, console=whole)
        console.print_summary(Result({QUERIES: cut}), top=top, console=part)
        assert whole.export_text() == part.export_text()
    assert console.summary_json(Result({QUERIES: cut}))["queries"] == \
        console.summary_json(Result({QUERIES: _queries()}))["queries"]


def _operation_windows(queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scope-operation window records of ``queries`` (one window), made as the
    windows worker makes them: the observation rows, keyed by the observer's operation key."""
    from wirestream.processors.detections import Thresholds
    from wirestream.processors.observations import OBSERVE, Observer, service_of
    from wirestream.processors.service_windows import Window

    observer = Observer(lambda *a: None, "run-1", 0, 1, 1)
    windows: dict[str, Window] = {}
    for q in queries:
        row = OBSERVE[QUERIES](q)
        if row is None:
            continue
        key = observer.operation_key(service_of(q), q["protocol"], q["operation"])
        windows.setdefault(key, Window(1_700_000_000_000_000, 10_000_000)).add((*row[:3], key, *row[4:]), Thresholds())
    return [w.record("run-1", key) for key, w in windows.items()]


def test_operation_windows_and_their_table() -> None:
    records = _operation_windows(_queries() + [query(query_id=f"g{i}", latency_us=100 + i) for i in range(20)])
    by_op = {r["operation"]: r for r in records}
    assert {r["scope"] for r in records} == {"operation"}
    assert set(by_op) == {"GET", "HGETALL", "SET", "LPUSH", "EVAL", "LRANGE", "BLPOP"}
    get = by_op["GET"]
    assert (get["service"], get["operation_protocol"], get["operation_service"]) == (
        "op:10.0.0.2:6379>redis:GET", "redis", "10.0.0.2:6379")
    assert (get["requests"], by_op["LPUSH"]["errors_4xx"], by_op["BLPOP"]["requests"]) == (21, 1, 1)
    out = Console(record=True, width=200)
    console.print_operations({console.SERVICE_METRICS: records}, 3, out)
    text = out.export_text()
    assert "Operations (database, cache, gRPC and Kafka calls) by p99 latency (top 3 of 7)" in text
    rows = [line for line in text.splitlines() if "10.0.0.2:6379" in line]
    assert [[c.strip() for c in line.split("│")[1:-1]][2] for line in rows] == ["LRANGE", "SET", "HGETALL"]
    assert [c.strip() for c in rows[0].split("│")[1:-1]][3:] == ["1", "0", "2.00 s", "2.00 s", "2.00 s"]
    summary = console.summary_json(Result({console.SERVICE_METRICS: records}))["query_operations"]
    assert summary[0]["operation"] == "LRANGE" and summary[0]["requests"] == 1


def test_operations_per_service_are_bounded() -> None:
    from wirestream.processors.observations import MAX_OPERATIONS_PER_SERVICE, Observer

    observer = Observer(lambda *a: None, "run-1", 0, 1, 1)
    keys = {observer.operation_key("svc", "redis", f"CMD{i}") for i in range(MAX_OPERATIONS_PER_SERVICE + 10)}
    assert len(keys) == MAX_OPERATIONS_PER_SERVICE + 1 and "op:svc>redis:other" in keys
    assert observer.operation_key("svc", "redis", "<script>") == "op:svc>redis:other"


def test_kafka_calls_in_the_summary() -> None:
    """analyze's Kafka table and ``messaging`` in --json, from wire.messaging records
    (checked against schemas/messaging.avsc first)."""
    schema = fastavro.parse_schema(json.loads((Path(__file__).parent.parent / "schemas/messaging.avsc").read_text()))

    def call(api: str, key: int, status: str, latency: int | None, records: int | None = None,
             error: str | None = None, own: bool = False) -> dict[str, Any]:
        r = {"message_id": "m", "source_id": "s", "connection_id": "c", "client_ip": "10.0.0.1", "client_port": 4,
             "server_ip": "10.0.0.2", "server_port": 9092, "protocol": "kafka", "api": api, "api_key": key,
             "api_version": 9, "correlation_id": 1, "client_id": "wirestream" if own else "app", "own_traffic": own,
             "topic": "orders", "topics": ["orders"], "records": records, "status": status,
             "error_code": 3 if error else None, "error": error, "request_bytes": 10, "request_ts_us": 1,
             "latency_us": latency, "tunnel": []}
        fastavro.validation.validate(r, schema, raise_errors=True)
        return r

    calls = [call("Produce", 0, "ok", 2_000, 5), call("Produce", 0, "sent", None, 2),
             call("Fetch", 1, "ok", 500_000, 7), call("Metadata", 3, "error", 1_000, error="UNKNOWN_TOPIC_OR_PARTITION"),
             call("Produce", 0, "ok", 1_000, 1, own=True)]
    summary = console.summary_json(Result({MESSAGING: calls}))["messaging"]
    assert summary["by_api"] == {"Produce": 3, "Fetch": 1, "Metadata": 1}
    assert summary["records_produced"] == {"orders": 8} and summary["records_fetched"] == {"orders": 7}
    assert summary["errors"] == {"UNKNOWN_TOPIC_OR_PARTITION": 1} and summary["own_traffic"] == 1
    out = Console(record=True, width=160)
    console.print_messaging({MESSAGING: calls}, out)
    text = out.export_text()
    assert "Kafka calls by API (5; wirestream's own: 1)" in text
    produce = next(line for line in text.splitlines() if "Produce" in line)
    assert [c.strip() for c in produce.split("│")[1:-1]] == ["Produce", "3", "0", "0", "2.0 ms", "2.0 ms", "8"]
    assert "Kafka errors: UNKNOWN_TOPIC_OR_PARTITION ×1" in text
    empty = Console(record=True)
    console.print_messaging({}, empty)
    assert empty.export_text() == ""


def test_kafka_calls_in_the_siem_formats() -> None:
    call = {"message_id": "m", "source_id": "s", "connection_id": "c", "client_ip": "10.0.0.1", "client_port": 40000,
            "server_ip": "10.0.0.2", "server_port": 9092, "protocol": "kafka", "api": "Metadata", "api_key": 3,
            "api_version": 12, "correlation_id": 4, "client_id": "billing-svc", "own_traffic": False,
            "topic": "ghost", "topics": ["ghost", "orders"], "status": "error", "error_code": 3,
            "error": "UNKNOWN_TOPIC_OR_PARTITION", "errors": 1, "request_bytes": 40, "response_bytes": 90,
            "request_ts_us": 1_700_000_000_000_000, "latency_us": 1500, "tunnel": []}
    doc = ecs_event(MESSAGING, call)
    assert doc["event"]["action"] == "Metadata" and doc["event"]["outcome"] == "failure"
    assert doc["event"]["duration"] == 1_500_000 and doc["network"]["protocol"] == "kafka"
    assert doc["error"] == {"message": "UNKNOWN_TOPIC_OR_PARTITION", "code": "3"}
    assert doc["user_agent"] == {"name": "billing-svc"} and doc["wirestream"]["topics"] == ["ghost", "orders"]
    cef = cef_event(MESSAGING, call)
    assert cef.startswith("CEF:0|wirestream|wirestream|")
    for part in ("app=kafka", "act=Metadata", "outcome=failure", "cs1Label=topics cs1=ghost,orders",
                 "reason=UNKNOWN_TOPIC_OR_PARTITION", "requestClientApplication=billing-svc", "out=40", "in=90"):
        assert part in cef, part
