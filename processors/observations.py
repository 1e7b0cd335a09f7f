"""What the per-service windows need from each output record, re-keyed by service.

The packet processors see records of *connections* (partitioned by connection key); the
windows must see everything of a *service* in one place. So, as a packet processor emits
a connection, transaction or DNS record, :class:`Observer` reduces it to an
``Observation`` (a dozen fields) and sends it, batched, to the ``wire.observations``
partition of its service. The windows (``processors.service_windows``) consume that
topic: they never decode full records again, and a restarted windows task replays
exactly the same input.

Every batch carries the sender's watermark (the latest capture time it has processed)
so that event time moves on also for observation partitions with no traffic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wirestream.packet_block import partition_for
from wirestream.topics import CONNECTIONS, DNS, TRANSACTIONS

CONNECTION, TRANSACTION, DNS_QUERY = 0, 1, 2

# findings bits (see schemas/observation_batch.avsc)
BASIC_CREDENTIALS, BEARER_TOKEN, PASSWORD_IN_FORM, CARD_NUMBER, OTHER_PII = 1, 2, 4, 8, 16

#: Send a batch with no items to a partition when the watermark moved this much since
#: the last batch sent there: event time must advance everywhere, but not for free.
HEARTBEAT_US = 1_000_000

Send = Callable[[int, dict[str, Any]], None]  # (observation partition, batch record)


def service_of(record: dict[str, Any]) -> str:
    """The service a record belongs to: the Kubernetes service or workload of its server
    when known (``namespace/name``), else the server's ``ip:port``."""
    name = record.get("server_service") or record.get("server_workload")
    if name:
        ns = record.get("server_namespace")
        return f"{ns}/{name}" if ns else name
    ip = record["server_ip"]
    port = record["server_port"]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _observe_connection(r: dict[str, Any]) -> dict[str, Any]:
    data = r.get("data_packets", 0)
    return {
        "kind": CONNECTION, "service": service_of(r), "client": r["client_ip"],
        "ts_us": r["end_ts_us"], "value_us": r["handshake_rtt_us"], "status": 0,
        "state": r["state"], "retrans_data": round(r["retransmission_rate"] * data),
        "data_packets": data, "zero_window": r["zero_window"], "request": "", "findings": 0,
    }


def _observe_transaction(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": TRANSACTION, "service": service_of(r), "client": r["client_ip"],
        "ts_us": r["request_ts_us"], "value_us": r["latency_us"], "status": r["status"] or 0,
        "state": r["error"] or "", "retrans_data": 0, "data_packets": 0, "zero_window": 0,
        "request": f"{r['method']} {r['host'] or ''}{r['path'] or ''}",
        "findings": r.pop("_findings", 0),
    }


def _observe_dns(r: dict[str, Any]) -> dict[str, Any]:
    # The service of a DNS query is the resolver it asked.
    return {
        "kind": DNS_QUERY, "service": service_of(r), "client": r["client_ip"],
        "ts_us": r["query_ts_us"], "value_us": r["latency_us"], "status": 0,
        "state": r["rcode"] or (r["error"] or ""), "retrans_data": 0, "data_packets": 0,
        "zero_window": 0, "request": r["query_name"], "findings": 0,
    }


OBSERVE: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    CONNECTIONS: _observe_connection,
    TRANSACTIONS: _observe_transaction,
    DNS: _observe_dns,
}


class Observer:
    """Batches the observations of one (source, packet partition) per observation
    partition; :meth:`flush` after each processed packet batch."""

    def __init__(self, send: Send, source_id: str, packet_partition: int, packet_partitions: int,
                 partitions: int) -> None:
        self.send = send
        self.source_id = source_id
        self.packet_partition = packet_partition
        self.packet_partitions = packet_partitions
        self.partitions = partitions
        self.watermark = 0
        self._items: list[list[dict[str, Any]]] = [[] for _ in range(partitions)]
        self._sequence = [0] * partitions
        self._sent_watermark = [-1] * partitions
        self._partition_of: dict[str, int] = {}
        self.observed = 0

    def observe(self, topic: str, record: dict[str, Any]) -> None:
        """Take what the windows need from an output record (if it is of a kind they use)."""
        extract = OBSERVE.get(topic)
        if extract is None or not record.get("final", True):
            return  # interim connection records are not counted: the final one will be
        obs = extract(record)
        part = self._partition_of.get(obs["service"])
        if part is None:
            if len(self._partition_of) > 100_000:
                self._partition_of.clear()
            part = self._partition_of[obs["service"]] = partition_for(
                obs["service"].encode(), self.partitions)
        self._items[part].append(obs)
        self.observed += 1

    def advance(self, ts_us: int) -> None:
        """The packet processor has seen capture time ``ts_us`` on its partition."""
        if ts_us > self.watermark:
            self.watermark = ts_us

    def flush(self, end_of_input: bool = False) -> None:
        for part in range(self.partitions):
            items = self._items[part]
            if (not items and not end_of_input
                    and self.watermark - self._sent_watermark[part] < HEARTBEAT_US):
                continue
            self.send(part, {
                "source_id": self.source_id,
                "packet_partition": self.packet_partition,
                "packet_partitions": self.packet_partitions,
                "sequence": self._sequence[part],
                "watermark_ts_us": self.watermark,
                "end_of_input": end_of_input,
                "items": items,
            })
            self._sequence[part] += 1
            self._sent_watermark[part] = self.watermark
            self._items[part] = []
