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

import re
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from wirestream.packet_block import partition_for
from wirestream.topics import CONNECTIONS, DNS, MESSAGING, QUERIES, TRANSACTIONS

from .findings import findings_of

#: What a row of an observation batch is: a byte of the packed batch layout (not an
#: Enum: it is written and read per record as a plain int).
CONNECTION, TRANSACTION, DNS_QUERY = 0, 1, 2

#: Send what is pending for a partition (if anything, else an empty batch: event time
#: must advance everywhere) when the watermark moved this much since the last batch
#: sent there, or when this many rows are waiting.
HEARTBEAT_US = 1_000_000
FLUSH_ROWS = 4096

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


#: One observation: ``kind`` (CONNECTION, TRANSACTION, DNS_QUERY); ``findings``
#: (``processors.findings.Finding`` bits);
#: ``status`` (HTTP, 0: none); ``service``, ``client``, ``state`` (connection state,
#: transaction error or DNS rcode; "" none): indexes into the batch's strings;
#: ``request``: CRC-32 of the request's method, host and target (retry detection);
#: ``ts_us`` event time (connection end, request start, query time); ``value_us``
#: handshake RTT, request latency or DNS latency (-1: none); then the connection's
#: retransmitted data packets, data packets and zero windows; ``backend``: the server pod
#: that answered (index into the strings, "" unknown: the service's spread over its
#: replicas); ``bytes``: a connection's bytes both ways, a transaction's body bytes.
#:
#: A topology observation is a CONNECTION row whose ``service`` is a pair of zones or
#: nodes (:func:`topology_keys`): the windows keep it as a service of its own.
ROW_DTYPE = np.dtype([
    ("kind", "u1"), ("findings", "u1"), ("status", "<u2"), ("service", "<u4"), ("client", "<u4"),
    ("state", "<u4"), ("request", "<u4"), ("ts_us", "<i8"), ("value_us", "<i8"),
    ("retrans_data", "<i8"), ("data_packets", "<i8"), ("zero_window", "<i8"),
    ("backend", "<u4"), ("bytes", "<i8"),
])
#: the columns that are indexes into a batch's strings
TEXT_COLUMNS = (3, 4, 5, 12)

#: The prefixes of a topology window's key (``zone:A>B``, ``node:A>B``: ">" is in neither
#: a label value nor a node name, and no service key starts so), and of an operation's
#: (``op:SERVICE>PROTOCOL:OPERATION``, :func:`operation_key`).
ZONE_PAIR, NODE_PAIR, OPERATION = "zone:", "node:", "op:"
#: Operations with windows of their own per service at most (the others share
#: ``PROTOCOL:other``): a Redis command or a SQL keyword is whatever a client sent.
MAX_OPERATIONS_PER_SERVICE = 64
#: An operation name that gets a window of its own (``SELECT``, ``CREATE TABLE``,
#: ``BEGIN;INSERT;COMMIT``, ``HGETALL``, gRPC's ``package.Service/Method``); anything
#: else is ``other``.
_OPERATION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ ;./]{0,127}")


def topology_keys(r: dict[str, Any]) -> list[str]:
    """The topology windows a connection record counts in: its (client zone, server zone)
    and (client node, server node) pairs, where enrichment knows both ends."""
    keys = []
    cz, sz = r.get("client_zone"), r.get("server_zone")
    if cz and sz:
        keys.append(f"{ZONE_PAIR}{cz}>{sz}")
    cn, sn = r.get("client_node"), r.get("server_node")
    if cn and sn:
        keys.append(f"{NODE_PAIR}{cn}>{sn}")
    return keys


def topology_scope(key: str) -> str | None:
    """``zone_pair``/``node_pair`` for a topology window's key, ``operation`` for an
    operation's, None for a service's."""
    if key.startswith(ZONE_PAIR):
        return "zone_pair"
    if key.startswith(NODE_PAIR):
        return "node_pair"
    if key.startswith(OPERATION):
        return "operation"
    return None
ROW_FIELDS = ROW_DTYPE.names

Row = tuple  # in ROW_DTYPE order, with the three text fields still as str


def _observe_connection(r: dict[str, Any]) -> Row:
    data = r.get("data_packets", 0)
    rtt = r["handshake_rtt_us"]
    return (CONNECTION, 0, 0, service_of(r), r["client_ip"], r["state"], 0, r["end_ts_us"],
            -1 if rtt is None else rtt, round(r["retransmission_rate"] * data), data,
            r["zero_window"], r.get("server_pod") or "", r["bytes_c2s"] + r["bytes_s2c"])


#: A gRPC status as the windows count it, the HTTP status grpc-gateway maps it to
#: (runtime.HTTPStatusFromCode): a gRPC call answers HTTP 200 whatever its outcome.
GRPC_HTTP_STATUS = {1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400,
                    12: 501, 13: 500, 14: 503, 15: 500, 16: 401}


def _observe_transaction(r: dict[str, Any]) -> Row:
    latency = r["latency_us"]
    status = r["status"] or 0
    grpc = r.get("grpc_status")
    if grpc:  # (0 is OK: the HTTP status stands)
        status = GRPC_HTTP_STATUS.get(grpc, 500)
    request = f"{r['method']} {r['host'] or ''}{r['path'] or ''}"
    # The findings are about secrets sent in cleartext: a transaction read from decrypted
    # TLS (--tls-keylog) sent them encrypted, so the windows do not count them.
    findings = 0 if r.get("tls") else int(findings_of(r))
    return (TRANSACTION, findings, status, service_of(r), r["client_ip"],
            r["error"] or "", zlib.crc32(request.encode("utf-8", "replace")), r["request_ts_us"],
            -1 if latency is None else latency, 0, 0, 0, r.get("server_pod") or "",
            (r.get("request_body_size") or 0) + (r.get("response_body_size") or 0))


def _observe_dns(r: dict[str, Any]) -> Row:
    # The service of a DNS query is the resolver it asked.
    latency = r["latency_us"]
    return (DNS_QUERY, 0, 0, service_of(r), r["client_ip"], r["rcode"] or (r["error"] or ""),
            0, r["query_ts_us"], -1 if latency is None else latency, 0, 0, 0, r.get("server_pod") or "", 0)


#: a query's error reply as the windows count a request's status: authentication refused
#: as 401 (``auth_failures``), any other error reply as 400 (the command was refused: a
#: client's error, as Redis's WRONGTYPE or an unknown command), 500 for PostgreSQL's
#: server-side SQLSTATE classes
_QUERY_AUTH_ERRORS = ("NOAUTH", "WRONGPASS", "NOPERM")
#: The observation state of a database or cache call answered by an error.
QUERY_ERROR = "query_error"
_SERVER_SQLSTATE_CLASSES = frozenset({"53", "57", "58", "XX"})
#: MySQL's error numbers of a refused login (access denied: wrong password, no such
#: user; 1698 without a password) and of the server's own trouble (too many
#: connections, shutting down, out of memory, lock wait timeout, deadlock)
_MYSQL_AUTH_ERRORS = frozenset({"1045", "1698"})
_MYSQL_SERVER_ERRORS = frozenset({"1040", "1053", "1037", "1041", "1203", "1205", "1213"})


def _observe_query(r: dict[str, Any]) -> Row | None:
    """A database or cache call is a request to the server's service: counted, timed and
    its errors counted like an HTTP request's (status above), in the same windows. Pub/sub
    deliveries (``message`` records) are not requests: not observed."""
    if r["operation"] == "message" or r["status"] == "skipped":  # (skipped: a statement that never ran)
        return None
    latency = r["latency_us"]
    status = 0
    if r["status"] == "error":
        # PostgreSQL's SQLSTATE class 28: invalid authorization (a refused login)
        code = r.get("error_code") or ""
        if r["protocol"] == "mysql":
            auth, server = code in _MYSQL_AUTH_ERRORS, code in _MYSQL_SERVER_ERRORS
        else:
            # SQLSTATE classes of the server's own trouble (out of resources, shutting
            # down, I/O, internal) are its failures, as an HTTP 5xx; the rest the client's
            auth = (r["error"] or "").startswith(_QUERY_AUTH_ERRORS) or code.startswith("28")
            server = r["protocol"] == "postgresql" and code[:2] in _SERVER_SQLSTATE_CLASSES
        status = 401 if auth else 500 if server else 400
    # The request's identity is the call itself (its query_id): the windows' retry
    # detection must not take a second GET of the same key for a retry. Its state says
    # "no_response" or "query_error" (the windows' query_errors).
    state = "no_response" if r["status"] == "no_reply" else QUERY_ERROR if r["status"] == "error" else ""
    return (TRANSACTION, 0, status, service_of(r), r["client_ip"], state, zlib.crc32(r["query_id"].encode()),
            r["request_ts_us"], -1 if latency is None else latency, 0, 0, 0, r.get("server_pod") or "",
            (r.get("request_bytes") or 0) + (r.get("response_bytes") or 0))


#: Kafka error codes of a refused client (authentication, authorisation: SASL_AUTHENTICATION_FAILED,
#: TOPIC_/GROUP_/CLUSTER_/TRANSACTIONAL_ID_AUTHORIZATION_FAILED, DELEGATION_TOKEN_AUTH_DISABLED...)
_KAFKA_AUTH_ERRORS = frozenset({29, 30, 31, 53, 58, 61, 65})
#: ... of the brokers' own trouble: unknown server error, a leader or coordinator not
#: there (yet), too few in-sync replicas, a timeout, a storage error
_KAFKA_SERVER_ERRORS = frozenset({-1, 5, 7, 8, 14, 15, 19, 20, 56})
#: ... that are steps of the consumer-group protocol, not failures: a first JoinGroup is
#: answered MEMBER_ID_REQUIRED, heartbeats REBALANCE_IN_PROGRESS while a group
#: rebalances, a call to a broker that is not (or no longer) the group's coordinator
#: NOT_COORDINATOR (the client looks it up again); their records say error, the windows
#: do not count them as one
_KAFKA_PROTOCOL_STEPS = frozenset({16, 27, 79})


def _observe_messaging(r: dict[str, Any]) -> Row | None:
    """A Kafka call is a request to the broker's service, counted and timed like a
    query; its error codes as HTTP statuses: refused access 401, the broker's trouble
    503, the consumer-group protocol's steps none, the rest 400. A Fetch waits on the
    broker for data (``fetch.max.wait.ms``, a long poll): its latency is not the
    service's (its operation's window has it). acks=0 Produce requests (``sent``)
    have no response to time."""
    code = r.get("error_code")
    status = 0
    if r["status"] == "error" and code not in _KAFKA_PROTOCOL_STEPS:
        status = 401 if code in _KAFKA_AUTH_ERRORS else 503 if code in _KAFKA_SERVER_ERRORS else 400
    latency = r["latency_us"]
    if latency is None or r["api_key"] == 1:
        latency = -1
    state = "no_response" if r["status"] == "no_reply" else QUERY_ERROR if status else ""
    return (TRANSACTION, 0, status, service_of(r), r["client_ip"], state, zlib.crc32(r["message_id"].encode()),
            r["request_ts_us"], latency, 0, 0, 0, r.get("server_pod") or "",
            (r.get("request_bytes") or 0) + (r.get("response_bytes") or 0))


OBSERVE: dict[str, Callable[[dict[str, Any]], Row | None]] = {
    CONNECTIONS: _observe_connection,
    TRANSACTIONS: _observe_transaction,
    DNS: _observe_dns,
    QUERIES: _observe_query,
    MESSAGING: _observe_messaging,
}


class _Pending:
    """Rows for one observation partition, their texts interned."""

    __slots__ = ("rows", "strings", "index")

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.strings: list[str] = []
        self.index: dict[str, int] = {}

    def add(self, row: Row) -> None:
        # (spelled out, not a loop over the four texts: this runs for every record a
        # packet worker emits, and the loop with its list and unpacking took twice as long)
        index, strings = self.index, self.strings
        service, client, state, backend = row[3], row[4], row[5], row[12]
        if (s := index.get(service)) is None:
            s = index[service] = len(strings)
            strings.append(service)
        if (c := index.get(client)) is None:
            c = index[client] = len(strings)
            strings.append(client)
        if (t := index.get(state)) is None:
            t = index[state] = len(strings)
            strings.append(state)
        if (b := index.get(backend)) is None:
            b = index[backend] = len(strings)
            strings.append(backend)
        self.rows.append((row[0], row[1], row[2], s, c, t, row[6], row[7], row[8], row[9], row[10], row[11],
                          b, row[13]))


#: one row of ROW_DTYPE (packed, little-endian): struct packs a row in about half the
#: time numpy takes to make a structured array of tuples
_ROW = struct.Struct("<BBHIIIIqqqqqIq")
assert _ROW.size == ROW_DTYPE.itemsize


def pack_rows(rows: list[Row]) -> bytes:
    pack = _ROW.pack
    return b"".join([pack(*row) for row in rows])


def unpack_rows(batch: dict[str, Any]) -> list[tuple]:
    """The rows of a batch as tuples (ROW_DTYPE order), text fields as str.
    Raises ValueError on a batch whose rows do not fit its count or its strings."""
    n = batch["count"]
    if not n:
        return []
    arr = np.frombuffer(batch["rows"], dtype=ROW_DTYPE)
    if len(arr) != n:
        raise ValueError(f"{len(batch['rows'])} bytes of rows for {n} observations")
    strings = batch["strings"]
    cols = [arr[name].tolist() for name in ROW_FIELDS]
    try:
        for k in TEXT_COLUMNS:
            cols[k] = [strings[i] for i in cols[k]]
    except IndexError:
        raise ValueError("an observation refers to a string the batch does not have") from None
    return list(zip(*cols, strict=True))


class Observer:
    """Batches the observations of one (source, packet partition) per observation
    partition; call :meth:`flush` after each processed packet batch (it sends when a
    batch is worth sending) and with ``end_of_input`` at the end."""

    #: per service, the operation keys it has windows for (created at the first query:
    #: a checkpoint written before operation windows existed restores without it)
    _operations: dict[str, set[str]] | None = None

    def __init__(self, send: Send, source_id: str, packet_partition: int, packet_partitions: int,
                 partitions: int) -> None:
        self.send = send
        self.source_id = source_id
        self.packet_partition = packet_partition
        self.packet_partitions = packet_partitions
        self.partitions = partitions
        self.watermark = 0
        self._pending = [_Pending() for _ in range(partitions)]
        self._sequence = [0] * partitions
        self._sent_watermark = [-1] * partitions
        self._partition_of: dict[str, int] = {}
        self.observed = 0

    def observe(self, topic: str, record: dict[str, Any]) -> None:
        """Take what the windows need from an output record (if it is of a kind they use)."""
        extract = OBSERVE.get(topic)
        if extract is None or not record.get("final", True):
            return  # interim connection records are not counted: the final one will be
        row = extract(record)
        if row is None:
            return
        self._add(row)
        if topic == CONNECTIONS:
            for key in topology_keys(record):
                # the same connection, counted again in its zone pair's and node pair's windows
                self._add((*row[:3], key, *row[4:12], "", row[13]))
        elif topic == QUERIES:
            # the same call, counted again in its operation's window (per-operation percentiles)
            key = self.operation_key(row[3], record["protocol"], record["operation"])
            self._add((*row[:3], key, *row[4:12], "", row[13]))
        elif topic == MESSAGING:
            # the same call in its API's window (protocol kafka, operation Produce, Fetch...),
            # with its latency (a Fetch's too: its long polls are that window's to show)
            key = self.operation_key(row[3], "kafka", record["api"])
            latency = -1 if record["latency_us"] is None else record["latency_us"]
            self._add((*row[:3], key, *row[4:8], latency, *row[9:12], "", row[13]))
        elif topic == TRANSACTIONS and record.get("grpc_service"):
            # a gRPC call: its method's window (protocol grpc, operation package.Service/Method)
            key = self.operation_key(row[3], "grpc", f"{record['grpc_service']}/{record['grpc_method']}")
            self._add((*row[:3], key, *row[4:12], "", row[13]))

    def operation_key(self, service: str, protocol: str, operation: str) -> str:
        """The window key of a call's operation, ``op:SERVICE>PROTOCOL:OPERATION``: at
        most :data:`MAX_OPERATIONS_PER_SERVICE` per service, the rest ``PROTOCOL:other``."""
        if not _OPERATION_NAME.fullmatch(operation):
            operation = "other"
        key = f"{OPERATION}{service}>{protocol}:{operation}"
        if self._operations is None:
            self._operations = {}
        seen = self._operations.get(service)
        if seen is None:
            if len(self._operations) >= 10_000:  # services: bounded too (a scan of many ports)
                self._operations.clear()
            seen = self._operations[service] = set()
        if key not in seen:
            if len(seen) >= MAX_OPERATIONS_PER_SERVICE:
                return f"{OPERATION}{service}>{protocol}:other"
            seen.add(key)
        return key

    def _add(self, row: Row) -> None:
        service = row[3]
        part = self._partition_of.get(service)
        if part is None:
            if len(self._partition_of) > 100_000:
                self._partition_of.clear()
            part = self._partition_of[service] = partition_for(service.encode(), self.partitions)
        self._pending[part].add(row)
        self.observed += 1

    def advance(self, ts_us: int) -> None:
        """The packet processor has seen capture time ``ts_us`` on its partition."""
        if ts_us > self.watermark:
            self.watermark = ts_us

    def flush(self, end_of_input: bool = False) -> None:
        for part in range(self.partitions):
            pending = self._pending[part]
            # Not after every packet batch: each message costs the windows two table
            # writes. Enough rows, a second of capture time, or the end.
            if (not end_of_input and len(pending.rows) < FLUSH_ROWS
                    and self.watermark - self._sent_watermark[part] < HEARTBEAT_US):
                continue
            self.send(part, {
                "source_id": self.source_id,
                "packet_partition": self.packet_partition,
                "packet_partitions": self.packet_partitions,
                "sequence": self._sequence[part],
                "watermark_ts_us": self.watermark,
                "end_of_input": end_of_input,
                "count": len(pending.rows),
                "strings": pending.strings,
                "rows": pack_rows(pending.rows),
            })
            self._sequence[part] += 1
            self._sent_watermark[part] = self.watermark
            self._pending[part] = _Pending()
