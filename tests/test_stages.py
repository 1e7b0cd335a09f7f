"""The stages run as separate processes against one broker: broker, process, produce, tail."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import DATA, requires_tshark
from oracle import tshark_conversation_count


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "wirestream", *args]


@requires_tshark
def test_broker_process_produce_tail(tmp_path: Path) -> None:
    """Records published by a separate worker are read back by `tail`, one per tcp.stream."""
    capture = str(DATA / "chrissanders" / "http_espn.pcapng")
    broker = subprocess.Popen(_cli("broker", "--partitions", "3"), stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    procs = [broker]
    try:
        env = dict(os.environ)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = broker.stdout.readline()
            if line.startswith("export "):
                for kv in line.split()[1:]:
                    k, v = kv.split("=", 1)
                    env[k] = v
                break
        assert "WIRESTREAM_BOOTSTRAP" in env, "broker did not print its address"
        worker = subprocess.Popen(_cli("process", "--group", "stage-test"), env=env, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=open(tmp_path / "worker.log", "w"))
        procs.append(worker)
        produced = subprocess.run(_cli("produce", "pcap", capture), env=env, capture_output=True, text=True,
                                  timeout=60)
        assert produced.returncode == 0, produced.stderr
        assert "956 frames, 956 packets published" in produced.stdout
        expected = tshark_conversation_count(capture)
        tail = subprocess.run(
            _cli("tail", "wire.connections", "--from-beginning", "-n", str(expected), "--timeout", "60"),
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert tail.returncode == 0, tail.stderr
        records = [json.loads(line) for line in tail.stdout.splitlines()]
        assert len(records) == expected, (tmp_path / "worker.log").read_text()[-2000:]
        assert len({r["connection_id"] for r in records}) == expected
        stats = subprocess.run(_cli("tail", "wire.stats", "--from-beginning", "--timeout", "3"),
                               env=env, capture_output=True, text=True, timeout=60)
        stages = [json.loads(line) for line in stats.stdout.splitlines()]
        finals = [s for s in stages if s["stage"] == "processor.packets" and s["final"]]
        assert len(finals) == 3  # one end-of-input report per partition
        assert sum(s["emitted"]["wire.connections"] for s in finals) == expected
        assert any(s["stage"] == "producer.pcap" and s["received"] == 956 for s in stages)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def test_process_without_kafka_settings_explains_itself() -> None:
    """`process` with no broker configured says what to do instead of hanging."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WIRESTREAM_")}
    proc = subprocess.run(_cli("process"), env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "wirestream broker" in proc.stderr


def test_help_teaches() -> None:
    """Every command has --help with examples."""
    for args in (("--help",), ("analyze", "--help"), ("produce", "pcap", "--help"), ("process", "--help"),
                 ("tail", "--help"), ("broker", "--help")):
        proc = subprocess.run(_cli(*args), capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0 and "usage: wirestream" in proc.stdout, args
    assert "examples:" in subprocess.run(_cli("analyze", "--help"), capture_output=True, text=True).stdout
