"""`wirestream analyze` end to end: real embedded broker over TCP, registry, Faust worker.

One run analyses every capture in tests/data; each file's records are then checked
against tshark for every TCP stream.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from helpers import TAG_VARIABLE, real_captures, requires_tshark, tagged_processes
from oracle import match_records, tshark_conversation_count, tshark_streams
from wirestream.sinks.jsonl import to_json_line

from wirestream.topics import DNS, OUTPUT_TOPICS, TLS, TRANSACTIONS

CAPTURES = real_captures()


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wirestream", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict[str, list[dict]]]:
    out = tmp_path_factory.mktemp("analyze")
    proc = run_cli("analyze", *CAPTURES, "--out", str(out), "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    by_source: dict[str, list[dict]] = defaultdict(list)
    with open(out / "wire.connections.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            by_source[rec["source_id"]].append(rec)
    # analyze numbers its sources <run>-<index of the file on the command line>
    by_file = {}
    for source_id, recs in by_source.items():
        by_file[CAPTURES[int(source_id.rsplit("-", 1)[1])]] = recs
    return out, summary, by_file


@pytest.fixture(scope="module")
def l7_by_file(analyzed) -> dict[str, dict[str, list[dict]]]:
    """capture -> L7 topic -> the records analyze wrote for that capture."""
    out, _, _ = analyzed
    result: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for topic in (TRANSACTIONS, DNS, TLS):
        with open(out / f"{topic}.jsonl") as f:
            for line in f:
                rec = json.loads(line)
                result[CAPTURES[int(rec["source_id"].rsplit("-", 1)[1])]][topic].append(rec)
    return result


def test_every_output_topic_written(analyzed) -> None:
    """--out writes one JSON-lines file per output topic."""
    out, summary, _ = analyzed
    for topic in OUTPUT_TOPICS:
        assert (out / f"{topic}.jsonl").is_file()
    assert summary["records"]["wire.connections"] == sum(1 for _ in open(out / "wire.connections.jsonl"))


def test_counters_account_for_every_frame(analyzed) -> None:
    """Per file: frames = published packets + dropped by named reason; processors saw them all."""
    _, summary, _ = analyzed
    for f in summary["files"]:
        assert f["frames"] == f["packets"] + sum(f["dropped"].values()), f["path"]
    processed = sum(s["received"] for s in summary["stats"] if s["stage"] == "processor.packets")
    assert processed == sum(f["packets"] for f in summary["files"])


@requires_tshark
@pytest.mark.parametrize("path", CAPTURES, ids=[os.path.relpath(p, os.path.dirname(__file__)) for p in CAPTURES])
def test_connections_match_tshark(analyzed, path: str) -> None:
    """Same stream count as tshark -z conv,tcp; per stream lifecycle, iRTT, retransmissions."""
    _, _, by_file = analyzed
    records = by_file.get(path, [])
    streams = tshark_streams(path)
    assert len(records) == tshark_conversation_count(path)
    matched = match_records(records, streams)
    assert set(matched) == set(streams)
    for sid, s in streams.items():
        r = matched[sid]
        assert r["lifecycle"] == s.completeness, f"stream {sid}"
        if s.initial_rtt_us is None:
            assert r["handshake_rtt_us"] is None, f"stream {sid}"
        else:
            assert abs(r["handshake_rtt_us"] - s.initial_rtt_us) <= 1, f"stream {sid}"
        assert r["retransmissions"] == s.counts["retransmissions"], f"stream {sid}"


@pytest.mark.parametrize("path", CAPTURES, ids=[os.path.relpath(p, os.path.dirname(__file__)) for p in CAPTURES])
def test_l7_records_through_the_broker_equal_the_in_process_run(l7_by_file, path: str) -> None:
    """The L7 records analyze wrote (Kafka, Avro, workers, 4 partitions) are the records of
    the in-process pipeline that tests/test_l7_oracle.py checks against tshark."""
    from local_pipeline import local_l7

    local = local_l7(path)
    for topic in (TRANSACTIONS, DNS, TLS):
        def norm(records: list[dict]) -> list[str]:
            return sorted(json.dumps({k: v for k, v in r.items() if k != "source_id"}, sort_keys=True)
                          for r in records)

        ours = [json.loads(to_json_line(r)) for r in local.get(topic, [])]
        assert norm(l7_by_file[path][topic]) == norm(ours), f"{topic} of {path}"


def test_credentials_in_a_real_login_are_redacted_by_default(l7_by_file) -> None:
    """DVWA's cleartext login (a real capture): the password, CSRF token and session
    cookie do not leave the processor; the request is still there, with its sizes."""
    path = next(p for p in CAPTURES if p.endswith("http_dvwa_clearlogin.pcapng"))
    posts = [t for t in l7_by_file[path][TRANSACTIONS] if t["method"] == "POST"]
    assert posts
    for t in posts:
        body = t["request_body"]
        assert "password=[REDACTED]" in body and "admin" in body  # the user name stays
        assert t["request_body_size"] == 88  # its Content-Length (tshark: http.content_length)
        assert "PHPSESSID=[REDACTED]" in t["request_headers"]["cookie"]


def test_bad_inputs_fail_in_one_line(tmp_path: Path) -> None:
    """Missing, empty, non-capture and unsupported-link-type files: one line each, exit 1, no traceback."""
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("this is not a capture\n" * 10)
    header = bytes.fromhex("d4c3b2a1020004000000000000000000ffff0000") + (147).to_bytes(4, "little")
    odd = tmp_path / "usr147.pcap"
    odd.write_bytes(header)
    start = time.monotonic()
    proc = run_cli("analyze", str(tmp_path / "missing.pcap"), str(empty), str(text), str(odd), "--no-progress")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("wirestream: error:")]
    assert len(lines) == 4, proc.stderr
    assert "missing.pcap: no such file" in lines[0]
    assert "empty.pcap: empty file" in lines[1]
    assert "notes.txt: not a pcap or pcapng capture file" in lines[2]
    assert "usr147.pcap: unsupported link type 147" in lines[3]
    assert time.monotonic() - start < 15  # nothing was started for files that cannot be read


def test_truncated_capture_is_analysed_up_to_the_damage(tmp_path: Path) -> None:
    """A capture cut mid-record: the complete frames are analysed, the rest counted."""
    src = Path(CAPTURES[0]).parent / "tcp_handshake.pcapng"
    data = src.read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[:-40])
    proc = run_cli("analyze", str(cut), "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    f = summary["files"][0]
    assert f["dropped"] == {"truncated_block": 1}
    assert f["packets"] == 2 and summary["records"]["wire.connections"] == 1


def test_unreachable_bootstrap_is_a_clear_error() -> None:
    """--bootstrap pointing nowhere: a one-line error within seconds, not a hang."""
    start = time.monotonic()
    proc = run_cli("analyze", CAPTURES[0], "--bootstrap", "127.0.0.1:1", "--no-progress", timeout=60)
    assert proc.returncode == 1
    assert "no Kafka broker answered at 127.0.0.1:1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - start < 20


def test_no_process_left_running_after_analyze() -> None:
    """The embedded broker and the workers are gone when analyze returns (found by a
    marker in their environment, so other runs on the machine do not count;
    tests/test_stop.py shows the marker finds them while they run)."""
    tag = uuid.uuid4().hex
    proc = subprocess.run([sys.executable, "-m", "wirestream", "analyze", CAPTURES[0], "--no-progress"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          env={**os.environ, TAG_VARIABLE: tag})
    assert proc.returncode == 0, proc.stderr
    assert tagged_processes(tag) == {}
