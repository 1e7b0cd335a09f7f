"""The example plugin's rule, on plain records (no Kafka needed)."""

from wirestream_slow_requests.plugin import TOPIC, SlowRequests


def test_only_slow_requests_are_emitted() -> None:
    out = []
    plugin = SlowRequests(threshold_us=500_000)
    base = {"server_ip": "10.0.0.2", "server_port": 80, "request_ts_us": 1, "method": "GET", "path": "/"}
    plugin.process("wire.transactions", "c1", {**base, "latency_us": 900_000, "status": 200},
                   lambda *a: out.append(a))
    plugin.process("wire.transactions", "c2", {**base, "latency_us": 100_000, "status": 200},
                   lambda *a: out.append(a))
    plugin.process("wire.transactions", "c3", {**base, "latency_us": None, "status": None},
                   lambda *a: out.append(a))
    assert [(t, k, r["service"], r["latency_us"]) for t, k, r in out] == [(TOPIC, "c1", "10.0.0.2:80", 900_000)]
