"""Topic names and which schema each topic carries.

Raw topics carry batches (many packet records per message); output topics carry one
record per message, keyed by connection id or service.
"""

from __future__ import annotations

PACKETS = "wire.packets"
CONNECTIONS = "wire.connections"
TRANSACTIONS = "wire.transactions"
DNS = "wire.dns"
TLS = "wire.tls"
SERVICE_METRICS = "wire.service-metrics"
ALERTS = "wire.alerts"
STATS = "wire.stats"

#: topic -> schema file name in ``wirestream.schemas``
TOPIC_SCHEMAS: dict[str, str] = {
    PACKETS: "packet_batch",
    CONNECTIONS: "connection",
    TRANSACTIONS: "transaction",
    DNS: "dns",
    TLS: "tls",
    SERVICE_METRICS: "service_metrics",
    ALERTS: "alert",
    STATS: "stats",
}

RAW_TOPICS: tuple[str, ...] = (PACKETS,)
OUTPUT_TOPICS: tuple[str, ...] = (
    CONNECTIONS,
    TRANSACTIONS,
    DNS,
    TLS,
    SERVICE_METRICS,
    ALERTS,
)
ALL_TOPICS: tuple[str, ...] = RAW_TOPICS + OUTPUT_TOPICS + (STATS,)


def subject_for(topic: str) -> str:
    """Schema-registry subject of a topic's values (Confluent TopicNameStrategy)."""
    return f"{topic}-value"
