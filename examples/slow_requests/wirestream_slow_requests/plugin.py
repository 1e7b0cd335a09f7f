"""For each HTTP request slower than a threshold: one record on example.slow-requests."""

from __future__ import annotations

import os
from typing import Any

from wirestream.plugins import Emit, Processor

TOPIC = "example.slow-requests"

SCHEMA = {
    "type": "record",
    "name": "SlowRequest",
    "namespace": "example",
    "fields": [
        {"name": "service", "type": "string", "doc": "namespace/name, or the server's ip:port"},
        {"name": "method", "type": ["null", "string"], "default": None},
        {"name": "path", "type": ["null", "string"], "default": None},
        {"name": "status", "type": ["null", "int"], "default": None},
        {"name": "latency_us", "type": "long"},
        {"name": "request_ts_us", "type": "long"},
    ],
}


class SlowRequests(Processor):
    name = "slow-requests"
    inputs = ["wire.transactions"]
    outputs = {TOPIC: SCHEMA}

    def __init__(self, threshold_us: int | None = None) -> None:
        self.threshold_us = threshold_us or int(os.environ.get("SLOW_REQUEST_US", "1000000"))

    def process(self, topic: str, key: str | None, record: dict[str, Any], emit: Emit) -> None:
        latency = record.get("latency_us")
        if latency is None or latency < self.threshold_us:
            return
        service = record.get("server_service") or f"{record['server_ip']}:{record['server_port']}"
        emit(TOPIC, key, {"service": service, "method": record.get("method"), "path": record.get("path"),
                          "status": record.get("status"), "latency_us": latency,
                          "request_ts_us": record["request_ts_us"]})
