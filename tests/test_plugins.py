"""Processor plugins: the example plugin (examples/slow_requests), installed by
scripts/install --test, found through its entry point and run against the broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from helpers import needs, publish, transaction

from wirestream import plugins
from wirestream.codec import AvroCodec
from wirestream.reader import TopicReader
from wirestream.topics import TRANSACTIONS

pytestmark = needs(None if "slow-requests" in plugins.installed()
                   else "the example plugin is not installed (scripts/install --test installs it)")
OUT = "example.slow-requests"


def _transaction(source: str, n: int, latency_us: int) -> dict:
    return transaction(source, n, server_ip="10.0.0.9", server_port=8080, path=f"/slow/{n}", latency_us=latency_us)


def test_plugin_list_shows_inputs_and_outputs() -> None:
    r = subprocess.run([sys.executable, "-m", "wirestream", "plugin", "list"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and f"slow-requests: {TRANSACTIONS} -> {OUT}" in r.stdout, r.stdout + r.stderr


def test_unknown_plugin_is_a_clear_error() -> None:
    with pytest.raises(plugins.PluginError, match="no plugin 'nope'.*installed: .*slow-requests"):
        plugins.load("nope")


def test_example_plugin_runs_against_the_broker(broker, registry) -> None:
    source = f"plugin-{uuid.uuid4().hex[:8]}"
    latencies = [2_000_000, 10_000, 700_000, 50_000, 3_500_000]
    publish(broker, registry, TRANSACTIONS, [_transaction(source, n, latency) for n, latency in enumerate(latencies)])
    env = {**os.environ, "WIRESTREAM_BOOTSTRAP": broker.bootstrap, "WIRESTREAM_REGISTRY": registry.url,
           "SLOW_REQUEST_US": "500000"}
    proc = subprocess.Popen([sys.executable, "-m", "wirestream", "plugin", "run", "slow-requests",
                             "--group", f"g-{source}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert "running slow-requests" in proc.stderr.readline()
        got: dict[str, dict] = {}
        deadline = time.monotonic() + 60
        while len(got) < 3 and time.monotonic() < deadline:
            # its topic appears with its first record
            try:
                with TopicReader(broker.bootstrap, AvroCodec(registry.url), [OUT]) as reader:
                    for _ in range(10):
                        for m in reader.poll(0.3):
                            if m.key and m.key.decode().startswith(source):
                                got[m.key.decode()] = m.record
            except Exception:
                time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert {k: (r["service"], r["latency_us"], r["path"]) for k, r in got.items()} == {
        f"{source}-{n}": ("10.0.0.9:8080", latency, f"/slow/{n}")
        for n, latency in enumerate(latencies) if latency >= 500_000}


def test_example_plugin_runs_inside_a_processor_worker(broker, registry) -> None:
    source = f"inworker-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "WIRESTREAM_BOOTSTRAP": broker.bootstrap, "WIRESTREAM_REGISTRY": registry.url,
           "SLOW_REQUEST_US": "500000"}
    worker = subprocess.Popen([sys.executable, "-m", "wirestream", "process", "--role", "packets",
                               "--group", f"w-{source}", "--plugin", "slow-requests"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        latencies = [900_000, 20_000, 1_200_000]
        publish(broker, registry, TRANSACTIONS,
                [_transaction(source, n, latency) for n, latency in enumerate(latencies)])
        got: dict[str, dict] = {}
        deadline = time.monotonic() + 90
        while len(got) < 2 and time.monotonic() < deadline:
            assert worker.poll() is None, worker.stderr.read()
            with TopicReader(broker.bootstrap, AvroCodec(registry.url), [OUT]) as reader:
                for _ in range(10):
                    for m in reader.poll(0.3):
                        if m.key and m.key.decode().startswith(source):
                            got[m.key.decode()] = m.record
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    assert sorted(got) == [f"{source}-0", f"{source}-2"]
