"""Zeek-format logs (``sinks/zeek.py``): a real ``analyze --zeek`` run on bundled captures,
its logs read back as ``zeek-cut`` reads them (the parser is here: zeek-cut is not
installable), their values checked against the records of the same run; the JSON form;
the text rules (escaping, unset and empty); and the Kafka sink on the broker.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from helpers import DATA
from wirestream.sinks.zeek import (
    LOG_FIELDS,
    ZeekLogWriter,
    conn_fields,
    convert_jsonl,
    flow_uid,
    tsv_value,
    uid_of,
)

from wirestream.topics import CONNECTIONS, DNS, FLOWS, TLS, TRANSACTIONS

CAPTURES = [str(DATA / "chrissanders/http_espn.pcapng"), str(DATA / "chrissanders/dns_tcp.pcapng"),
            str(DATA / "chrissanders/dns_lab.pcapng"), str(DATA / "zeek-tls/hrr.pcap"),
            str(DATA / "zeek-tls/tls-early-alert.pcap")]


def read_zeek_tsv(path: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """A Zeek ASCII log as zeek-cut reads it: the header's directives, then each row as
    {field: text}. Checks the format on the way: the directives in Zeek's order, as many
    types as fields, as many values in every row, the ``#close`` line last."""
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "", "the file ends with a newline"
    lines = lines[:-1]
    assert lines[0] == "#separator \\x09", lines[0]
    sep = "\t"
    header: dict[str, str] = {}
    rows: list[dict[str, str]] = []
    fields: list[str] = []
    for line in lines[1:]:
        if line.startswith("#"):
            key, _, value = line[1:].partition(sep)
            header[key] = value
            if key == "fields":
                fields = value.split(sep)
            elif key == "types":
                assert len(value.split(sep)) == len(fields), "as many types as fields"
            continue
        assert fields, "a row before #fields"
        values = line.split(sep)
        assert len(values) == len(fields), (path.name, line)
        rows.append(dict(zip(fields, values, strict=True)))
    assert list(header) == ["set_separator", "empty_field", "unset_field", "path", "open", "fields", "types",
                            "close"], list(header)
    assert lines[-1].startswith("#close\t")
    assert (header["set_separator"], header["empty_field"], header["unset_field"]) == (",", "(empty)", "-")
    for ts in (header["open"], header["close"]):
        time.strptime(ts, "%Y-%m-%d-%H-%M-%S")
    return header, rows


def jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("zeek_run")
    jdir, zdir = out / "jsonl", out / "zeek"
    proc = subprocess.run([sys.executable, "-m", "wirestream", "analyze", *CAPTURES, "--out", str(jdir),
                           "--zeek", str(zdir), "--json", "--no-progress"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return jdir, zdir


def test_the_logs_are_zeeks_format(analyzed: tuple[Path, Path]) -> None:
    jdir, zdir = analyzed
    assert sorted(p.name for p in zdir.iterdir()) == ["conn.log", "dns.log", "http.log", "ssl.log"]
    for log, fields in LOG_FIELDS.items():
        header, rows = read_zeek_tsv(zdir / f"{log}.log")
        assert header["path"] == log
        assert header["fields"].split("\t") == [n for n, _ in fields]
        assert header["types"].split("\t") == [t for _, t in fields]
        assert rows
    # the file mode: the logs hold what the wire carried
    assert (zdir / "conn.log").stat().st_mode & 0o777 == 0o600


def test_conn_log_values_are_the_records(analyzed: tuple[Path, Path]) -> None:
    jdir, zdir = analyzed
    records = [r for r in jsonl(jdir / f"{CONNECTIONS}.jsonl") if r["final"]]
    _, all_rows = read_zeek_tsv(zdir / "conn.log")
    rows = [row for row in all_rows if row["proto"] == "tcp"]  # wire.flows' lines: the next test
    assert len(rows) == len(records) > 20
    by_uid = {row["uid"]: row for row in rows}
    assert len(by_uid) == len(rows), "one uid per connection"
    flipped = 0
    for r in records:
        row = by_uid[uid_of(r["connection_id"])]
        o, p = ("server", "client") if r["orig_is_server"] else ("client", "server")
        flipped += bool(r["orig_is_server"])
        assert (row["id.orig_h"], row["id.orig_p"]) == (r[f"{o}_ip"], str(r[f"{o}_port"]))
        assert (row["id.resp_h"], row["id.resp_p"]) == (r[f"{p}_ip"], str(r[f"{p}_port"]))
        assert row["ts"] == f"{r['start_ts_us'] / 1e6:.6f}"
        assert row["proto"] == "tcp"
        assert row["conn_state"] == r["conn_state"]
        assert row["history"] == (r["history"] or "-")
        assert row["missed_bytes"] == str(r["missed_bytes"])
        pkts = (r["packets_s2c"], r["packets_c2s"]) if r["orig_is_server"] else (r["packets_c2s"], r["packets_s2c"])
        assert (row["orig_pkts"], row["resp_pkts"]) == tuple(map(str, pkts))
        assert row["community_id"] == r["community_id"]
        if r["end_ts_us"] > r["start_ts_us"]:
            assert float(row["duration"]) == pytest.approx((r["end_ts_us"] - r["start_ts_us"]) / 1e6, abs=1e-6)
        else:
            assert row["duration"] == row["orig_bytes"] == "-"
        assert row["local_orig"] == row["tunnel_parents"] == row["orig_ip_bytes"] == "-"
    # the espn capture's lossy connection, with its gap
    assert any(row["missed_bytes"] == "3038" and row["history"] == "ShADadg" for row in rows)


def test_udp_flows_are_conn_log_lines_that_dns_log_joins(analyzed: tuple[Path, Path]) -> None:
    """Every wire.flows record is a conn.log line (Zeek's UDP fields), and each DNS query
    over UDP has its flow's uid."""
    jdir, zdir = analyzed
    flows = jsonl(jdir / f"{FLOWS}.jsonl")
    _, rows = read_zeek_tsv(zdir / "conn.log")
    udp = {row["uid"]: row for row in rows if row["proto"] == "udp"}
    assert len(udp) == len(flows) > 5
    for f in flows:
        row = udp[flow_uid(f["client_ip"], f["client_port"], f["server_ip"], f["server_port"], "udp")]
        assert (row["id.orig_h"], row["id.orig_p"], row["id.resp_h"], row["id.resp_p"]) == (
            f["client_ip"], str(f["client_port"]), f["server_ip"], str(f["server_port"]))
        assert (row["orig_pkts"], row["resp_pkts"]) == (str(f["packets_c2s"]), str(f["packets_s2c"]))
        assert (row["conn_state"], row["service"], row["community_id"]) == (
            f["conn_state"], f["service"] or "-", f["community_id"])
        assert row["history"] == ("D" if f["bytes_c2s"] else "") + ("d" if f["bytes_s2c"] else "")
    for d in jsonl(jdir / f"{DNS}.jsonl"):
        if not d["connection_id"]:
            uid = flow_uid(d["client_ip"], d["client_port"], d["server_ip"], d["server_port"], "udp")
            assert udp[uid]["service"] == "dns"


def test_l7_logs_share_the_connections_uid(analyzed: tuple[Path, Path]) -> None:
    jdir, zdir = analyzed
    _, conns = read_zeek_tsv(zdir / "conn.log")
    service = {row["uid"]: row["service"] for row in conns}
    txs = jsonl(jdir / f"{TRANSACTIONS}.jsonl")
    _, http = read_zeek_tsv(zdir / "http.log")
    assert len(http) == len(txs) > 10
    depth: dict[str, int] = defaultdict(int)
    for tx, row in zip(txs, http, strict=True):
        uid = uid_of(tx["connection_id"])
        depth[uid] += 1
        assert row["uid"] == uid and "http" in service[uid].split(",")
        assert row["trans_depth"] == str(depth[uid])
        assert (row["method"], row["uri"], row["status_code"]) == (
            tx["method"] or "-", tx["path"] or "-", str(tx["status"]) if tx["status"] is not None else "-")
        assert row["host"] == (tx["host"] or "-")
        assert row["response_body_len"] == str(tx["response_body_size"])
    assert max(depth.values()) > 1  # keep-alive connections: depths 1, 2, ...
    tls = jsonl(jdir / f"{TLS}.jsonl")
    _, ssl = read_zeek_tsv(zdir / "ssl.log")
    assert len(ssl) == len(tls) >= 2
    for t, row in zip(tls, ssl, strict=True):
        assert row["uid"] == uid_of(t["connection_id"]) and "ssl" in service[row["uid"]].split(",")
        assert row["server_name"] == (t["server_name"] or "-")
        assert row["established"] == ("T" if t["established"] else "F")
        if t["version"] == "TLS 1.3":
            assert row["version"] == "TLSv13"
    dns = jsonl(jdir / f"{DNS}.jsonl")
    _, dlog = read_zeek_tsv(zdir / "dns.log")
    assert len(dlog) == len(dns) > 5
    tcp = 0
    for d, row in zip(dns, dlog, strict=True):
        assert row["query"] == d["query_name"] and row["proto"] == d["transport"]
        assert row["trans_id"] == str(d["query_id"]) and row["qtype_name"] == d["query_type"]
        if d["connection_id"]:
            tcp += 1
            assert row["uid"] == uid_of(d["connection_id"]) and "dns" in service[row["uid"]].split(",")
        else:
            assert row["uid"] == flow_uid(d["client_ip"], d["client_port"], d["server_ip"], d["server_port"], "udp")
        if d["answers"]:
            assert row["answers"].split(",") == [a["data"].replace(",", "\\x2c") for a in d["answers"]]
    assert tcp  # dns_tcp: queries over TCP share their connection's uid


def test_json_logs(analyzed: tuple[Path, Path], tmp_path: Path) -> None:
    jdir, _ = analyzed
    convert_jsonl(jdir, tmp_path, json_lines=True)
    conns = [c for c in jsonl(tmp_path / "conn.log") if c["proto"] == "tcp"]
    records = {uid_of(r["connection_id"]): r for r in jsonl(jdir / f"{CONNECTIONS}.jsonl") if r["final"]}
    assert len(conns) == len(records)
    flows = [c for c in jsonl(tmp_path / "conn.log") if c["proto"] == "udp"]
    assert len(flows) == len(jsonl(jdir / f"{FLOWS}.jsonl")) and all(isinstance(c["id.resp_p"], int) for c in flows)
    names = {n for n, _ in LOG_FIELDS["conn"]}
    for c in conns:
        assert set(c) <= names and "local_orig" not in c  # unset fields are left out
        r = records[c["uid"]]
        assert c["ts"] == r["start_ts_us"] / 1e6 and isinstance(c["id.orig_p"], int)
        assert c["conn_state"] == r["conn_state"]
    assert all("tags" in h and h["tags"] == [] for h in jsonl(tmp_path / "http.log"))


def test_text_rules() -> None:
    assert tsv_value(None, "string") == "-"
    assert tsv_value("", "string") == "(empty)"
    assert tsv_value("-", "string") == "\\x2d"
    assert tsv_value("a\tb\\c\n", "string") == "a\\x09b\\x5cc\\x0a"
    assert tsv_value([], "set[string]") == "(empty)"
    assert tsv_value(["a,b", "c"], "vector[string]") == "a\\x2cb,c"
    assert tsv_value([1.5, 2.0], "vector[interval]") == "1.500000,2.000000"
    assert tsv_value(True, "bool") == "T" and tsv_value(False, "bool") == "F"
    assert tsv_value(1.25, "time") == "1.250000"
    assert uid_of("17bf937638105b6c") == uid_of("17bf937638105b6c") != uid_of("17bf937638105b6d")
    assert uid_of("17bf937638105b6c").startswith("C") and len(uid_of("17bf937638105b6c")) <= 12


def test_orig_is_server_swaps_the_sides() -> None:
    r = {"connection_id": "00000000000000ff", "client_ip": "10.0.0.1", "client_port": 8080,
         "server_ip": "10.0.0.2", "server_port": 45000, "start_ts_us": 1_000_000, "end_ts_us": 1_500_000,
         "packets_c2s": 3, "packets_s2c": 5, "goodput_bytes_c2s": 10, "goodput_bytes_s2c": 20,
         "conn_state": "OTH", "history": "^dA", "missed_bytes": 0, "orig_is_server": True, "community_id": None}
    f = conn_fields(r, ["http"])
    assert (f["id.orig_h"], f["id.orig_p"], f["id.resp_p"]) == ("10.0.0.2", 45000, 8080)
    assert (f["orig_pkts"], f["resp_pkts"], f["orig_bytes"], f["resp_bytes"]) == (5, 3, 20, 10)
    assert f["service"] == "http" and f["duration"] == 0.5


def test_a_second_run_appends_a_header_block(tmp_path: Path) -> None:
    rec = {"connection_id": "00000000000000ff", "client_ip": "10.0.0.1", "client_port": 1, "server_ip": "10.0.0.2",
           "server_port": 80, "start_ts_us": 0, "end_ts_us": 0, "packets_c2s": 1, "packets_s2c": 0,
           "conn_state": "S0", "history": "S", "missed_bytes": 0, "orig_is_server": False, "final": True}
    for _ in range(2):
        w = ZeekLogWriter(tmp_path)
        w.write(CONNECTIONS, rec)
        w.close()
    text = (tmp_path / "conn.log").read_text()
    assert text.count("#fields\t") == 2 and text.count("#close\t") == 2
    rows = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(rows) == 2 and all(len(row.split("\t")) == len(LOG_FIELDS["conn"]) for row in rows)


def test_the_kafka_sink_writes_the_logs(broker, registry, tmp_path: Path) -> None:
    """``wirestream sink zeek`` against the test broker: a run's records (published by an
    analyze on this broker) come out in conn.log with their uids."""
    from wirestream.sinks.zeek import ZeekSink

    from wirestream.analyze import analyze
    from wirestream.config import Settings

    settings = Settings(bootstrap=broker.bootstrap, registry=registry.url)
    result = analyze([str(DATA / "chrissanders/tcp_handshake.pcapng"), str(DATA / "zeek-tls/hrr.pcap")], settings,
                     workers=1, jsonl_dir=tmp_path / "jsonl")
    assert not result.failed
    want = {uid_of(r["connection_id"]) for r in jsonl(tmp_path / "jsonl" / f"{CONNECTIONS}.jsonl") if r["final"]}
    sink = ZeekSink(broker.bootstrap, registry.url, str(tmp_path / "zeek"), group=f"zeek-test-{time.time_ns()}",
                    flush_records=1, flush_seconds=0.1)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            sink.step(0.2)
            sink.writer.flush()
            text = (tmp_path / "zeek" / "conn.log").read_text() if (tmp_path / "zeek" / "conn.log").exists() else ""
            if all(u in text for u in want) and "ssl" in text:
                break
    finally:
        sink.run(stop=lambda: True)  # the last flush, then #close
    _, rows = read_zeek_tsv(tmp_path / "zeek" / "conn.log")
    assert want <= {row["uid"] for row in rows}
    _, ssl = read_zeek_tsv(tmp_path / "zeek" / "ssl.log")
    assert {row["uid"] for row in ssl} & want
