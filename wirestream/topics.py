"""Topic names and which schema each topic carries.

Raw topics carry batches (many packet records per message); output topics carry one
record per message, keyed by connection id or service.
"""

from __future__ import annotations

PACKETS = "wire.packets"
#: kernel socket/syscall events of live capture, co-partitioned with wire.packets
SOCKETS = "wire.sockets"
#: packets the kernel dropped, counted per 5-tuple and reason (`wirestream produce drops`),
#: co-partitioned with wire.packets
DROPS = "wire.drops"
#: TLS plaintext chunks from OpenSSL uprobes (`wirestream produce tls-plaintext`),
#: co-partitioned with wire.packets; as secret as the packets
TLS_PLAINTEXT = "wire.tls-plaintext"
CONNECTIONS = "wire.connections"
#: UDP flows (Zeek's conn.log notion of a connection); TCP connections are on CONNECTIONS
FLOWS = "wire.flows"
TRANSACTIONS = "wire.transactions"
DNS = "wire.dns"
TLS = "wire.tls"
#: database and cache calls (Redis, PostgreSQL, MySQL), one record per command and its reply
QUERIES = "wire.queries"
#: message-broker calls (the Kafka protocol), one record per request and its response
MESSAGING = "wire.messaging"
SERVICE_METRICS = "wire.service-metrics"
ALERTS = "wire.alerts"
#: call chains: an HTTP request and the requests made while serving it (`wirestream chains`)
CALL_CHAINS = "wire.call-chains"
STATS = "wire.stats"
#: IP -> Kubernetes identity (compacted; published by `wirestream k8s-watch`)
K8S_IDENTITY = "wire.k8s-identity"
#: NetworkPolicies and namespace labels (k8s-watch), read whole by every processor
K8S_POLICIES = "wire.k8s-policies"
#: what sinks could not decode or convert, with the reason in the headers (raw bytes)
DEAD_LETTER = "wire.dead-letter"
#: internal: connection/transaction/DNS facts re-keyed by service for the windows
OBSERVATIONS = "wire.observations"
#: internal: the packet workers' per-partition state with the input offsets it covers
#: (compacted; partition N holds the checkpoints of wire.packets partition N)
CHECKPOINTS = "wire.checkpoints"

#: topic -> schema file name in ``wirestream.schemas``
TOPIC_SCHEMAS: dict[str, str] = {
    PACKETS: "packet_batch",
    SOCKETS: "socket_event",
    DROPS: "drop",
    TLS_PLAINTEXT: "tls_plaintext",
    K8S_IDENTITY: "k8s_identity",
    K8S_POLICIES: "k8s_policy",
    CONNECTIONS: "connection",
    FLOWS: "flow",
    TRANSACTIONS: "transaction",
    DNS: "dns",
    TLS: "tls",
    QUERIES: "query",
    MESSAGING: "messaging",
    SERVICE_METRICS: "service_metrics",
    ALERTS: "alert",
    CALL_CHAINS: "call_chain",
    STATS: "stats",
    OBSERVATIONS: "observation_batch",
}

RAW_TOPICS: tuple[str, ...] = (PACKETS, SOCKETS, DROPS, TLS_PLAINTEXT)
OUTPUT_TOPICS: tuple[str, ...] = (
    CONNECTIONS,
    FLOWS,
    TRANSACTIONS,
    DNS,
    TLS,
    QUERIES,
    MESSAGING,
    SERVICE_METRICS,
    ALERTS,
)
INTERNAL_TOPICS: tuple[str, ...] = (OBSERVATIONS, CHECKPOINTS)
#: tables: compacted, read whole by every processor
TABLE_TOPICS: tuple[str, ...] = (K8S_IDENTITY, K8S_POLICIES)
#: derived from output topics by a stage of its own (`wirestream chains`; analyze builds them
#: in its own process): not among OUTPUT_TOPICS, which the packet workers publish
DERIVED_TOPICS: tuple[str, ...] = (CALL_CHAINS,)
ALL_TOPICS: tuple[str, ...] = (RAW_TOPICS + OUTPUT_TOPICS + DERIVED_TOPICS + (STATS, DEAD_LETTER)
                               + INTERNAL_TOPICS + TABLE_TOPICS)
#: what `wirestream produce live` publishes to (created when missing)
LIVE_TOPICS: tuple[str, ...] = (PACKETS, SOCKETS, STATS)
#: what `wirestream produce drops` publishes to (created when missing)
DROP_TOPICS: tuple[str, ...] = (DROPS, STATS)
#: what `wirestream produce tls-plaintext` publishes to (created when missing)
TLS_PLAINTEXT_TOPICS: tuple[str, ...] = (TLS_PLAINTEXT,)
#: what `wirestream replay` reads again, in the order it reads each partition: socket
#: events first, so that a connection's are in before its record is emitted
REPLAY_TOPICS: tuple[str, ...] = (SOCKETS, PACKETS)
#: the default --topics of the sinks: the Parquet sink keeps every output topic, the SIEM
#: sink sends the alerts
PARQUET_SINK_TOPICS: tuple[str, ...] = OUTPUT_TOPICS
SIEM_SINK_TOPICS: tuple[str, ...] = (ALERTS,)
#: topic -> Kafka topic configuration wirestream creates it with
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    K8S_IDENTITY: {"cleanup.policy": "compact"},
    K8S_POLICIES: {"cleanup.policy": "compact"},
    # One record per partition and group, rewritten every few seconds: only the newest
    # counts. A busy partition's state can be several MB.
    CHECKPOINTS: {"cleanup.policy": "compact", "max.message.bytes": str(64 * 1024 * 1024)},
}


#: ``stage`` of the processors' reports on wire.stats: one final report per source and
#: wire.packets partition, and one per source and wire.observations partition
PACKETS_STAGE = "processor.packets"
WINDOWS_STAGE = "processor.windows"
#: ``stage`` of `wirestream chains`' reports
CHAINS_STAGE = "processor.chains"


#: the field of each output topic holding the time its record is about (the connection's
#: first packet, the request, the query, the ClientHello, the window, the alert), in µs
RECORD_TIME: dict[str, str] = {
    CONNECTIONS: "start_ts_us",
    FLOWS: "start_ts_us",
    TRANSACTIONS: "request_ts_us",
    DNS: "query_ts_us",
    TLS: "client_hello_ts_us",
    QUERIES: "request_ts_us",
    MESSAGING: "request_ts_us",
    SERVICE_METRICS: "window_start_ts_us",
    ALERTS: "ts_us",
    CALL_CHAINS: "start_ts_us",
}


def record_time_us(topic: str, record: dict) -> int | None:
    """The time ``record`` of ``topic`` is about (``ts_us`` for topics not listed)."""
    return record.get(RECORD_TIME.get(topic, "ts_us"))


def subject_for(topic: str) -> str:
    """Schema-registry subject of a topic's values (Confluent TopicNameStrategy)."""
    return f"{topic}-value"
