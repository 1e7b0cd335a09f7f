"""Kafka: one ``wire.messaging`` record per request and its response.

The bytes are the compiled core's (``rust/src/l7/kafka``: the frames of both directions,
each request's header and the fields a record needs of its body, each response read
with its request's API and version; record sets counted from their batches' headers,
never kept). :class:`KafkaAnalyzer` pairs what it gives:

- **Pairing.** A response carries its request's correlation id; a broker answers a
  connection's requests in order, so the requests before the one answered got no
  response (``no_reply``, as those still waiting when the connection ends). A Produce
  request with ``acks=0`` is answered by nothing: its record goes out at once with
  status ``sent``. Latency is the response's capture time less the request's.
- **What a record says** (docs/records.md, ``wire.messaging``): the API (``Produce``,
  ``Fetch``, ``Metadata``, ``JoinGroup``...), its version, the correlation id, the
  client id, the topics and partitions, the records and their bytes (a Produce
  request's, a Fetch response's), the consumer group, the response's first non-zero
  error code by its Kafka name and how many partitions or topics had one, the throttle
  time. ``own_traffic`` marks wirestream's own clients (client ids starting with
  ``wirestream``), so that a capture of a node running wirestream can tell its own
  pipeline's calls apart from the applications'.
- **Bad input.** A body the core could not read still gives its header's record, with
  ``parse_error``; frames out of step are skipped until a chunk starts one (counted:
  ``kafka.skipped_bytes``). State is bounded: at most :data:`MAX_PENDING` requests wait
  (the oldest beyond go out as ``no_reply``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

from wirestream._core import KafkaConnection

from wirestream.topics import MESSAGING

from .base import CoreBackedAnalyzer, StreamContext

#: Requests waiting for their response at most (the core keeps as many).
MAX_PENDING = KafkaConnection.MAX_PENDING
#: Client ids of wirestream's own Kafka clients start with this.
OWN_CLIENT_PREFIX = "wirestream"
#: Topic ids named per partition at most (StreamContext.shared["kafka.topic_names"])
MAX_TOPIC_NAMES = 10_000

#: Kafka's error codes (org.apache.kafka.common.protocol.Errors), by code.
ERRORS: dict[int, str] = dict(enumerate("""
NONE OFFSET_OUT_OF_RANGE CORRUPT_MESSAGE UNKNOWN_TOPIC_OR_PARTITION INVALID_FETCH_SIZE
LEADER_NOT_AVAILABLE NOT_LEADER_OR_FOLLOWER REQUEST_TIMED_OUT BROKER_NOT_AVAILABLE
REPLICA_NOT_AVAILABLE MESSAGE_TOO_LARGE STALE_CONTROLLER_EPOCH OFFSET_METADATA_TOO_LARGE
NETWORK_EXCEPTION COORDINATOR_LOAD_IN_PROGRESS COORDINATOR_NOT_AVAILABLE NOT_COORDINATOR
INVALID_TOPIC_EXCEPTION RECORD_LIST_TOO_LARGE NOT_ENOUGH_REPLICAS NOT_ENOUGH_REPLICAS_AFTER_APPEND
INVALID_REQUIRED_ACKS ILLEGAL_GENERATION INCONSISTENT_GROUP_PROTOCOL INVALID_GROUP_ID
UNKNOWN_MEMBER_ID INVALID_SESSION_TIMEOUT REBALANCE_IN_PROGRESS INVALID_COMMIT_OFFSET_SIZE
TOPIC_AUTHORIZATION_FAILED GROUP_AUTHORIZATION_FAILED CLUSTER_AUTHORIZATION_FAILED
INVALID_TIMESTAMP UNSUPPORTED_SASL_MECHANISM ILLEGAL_SASL_STATE UNSUPPORTED_VERSION
TOPIC_ALREADY_EXISTS INVALID_PARTITIONS INVALID_REPLICATION_FACTOR INVALID_REPLICA_ASSIGNMENT
INVALID_CONFIG NOT_CONTROLLER INVALID_REQUEST UNSUPPORTED_FOR_MESSAGE_FORMAT POLICY_VIOLATION
OUT_OF_ORDER_SEQUENCE_NUMBER DUPLICATE_SEQUENCE_NUMBER INVALID_PRODUCER_EPOCH INVALID_TXN_STATE
INVALID_PRODUCER_ID_MAPPING INVALID_TRANSACTION_TIMEOUT CONCURRENT_TRANSACTIONS
TRANSACTION_COORDINATOR_FENCED TRANSACTIONAL_ID_AUTHORIZATION_FAILED SECURITY_DISABLED
OPERATION_NOT_ATTEMPTED KAFKA_STORAGE_ERROR LOG_DIR_NOT_FOUND SASL_AUTHENTICATION_FAILED
UNKNOWN_PRODUCER_ID REASSIGNMENT_IN_PROGRESS DELEGATION_TOKEN_AUTH_DISABLED
DELEGATION_TOKEN_NOT_FOUND DELEGATION_TOKEN_OWNER_MISMATCH DELEGATION_TOKEN_REQUEST_NOT_ALLOWED
DELEGATION_TOKEN_AUTHORIZATION_FAILED DELEGATION_TOKEN_EXPIRED INVALID_PRINCIPAL_TYPE
NON_EMPTY_GROUP GROUP_ID_NOT_FOUND FETCH_SESSION_ID_NOT_FOUND INVALID_FETCH_SESSION_EPOCH
LISTENER_NOT_FOUND TOPIC_DELETION_DISABLED FENCED_LEADER_EPOCH UNKNOWN_LEADER_EPOCH
UNSUPPORTED_COMPRESSION_TYPE STALE_BROKER_EPOCH OFFSET_NOT_AVAILABLE MEMBER_ID_REQUIRED
PREFERRED_LEADER_NOT_AVAILABLE GROUP_MAX_SIZE_REACHED FENCED_INSTANCE_ID
ELIGIBLE_LEADERS_NOT_AVAILABLE ELECTION_NOT_NEEDED NO_REASSIGNMENT_IN_PROGRESS
GROUP_SUBSCRIBED_TO_TOPIC INVALID_RECORD UNSTABLE_OFFSET_COMMIT THROTTLING_QUOTA_EXCEEDED
PRODUCER_FENCED RESOURCE_NOT_FOUND DUPLICATE_RESOURCE UNACCEPTABLE_CREDENTIAL
INCONSISTENT_VOTER_SET INVALID_UPDATE_VERSION FEATURE_UPDATE_FAILED
PRINCIPAL_DESERIALIZATION_FAILURE SNAPSHOT_NOT_FOUND POSITION_OUT_OF_RANGE UNKNOWN_TOPIC_ID
DUPLICATE_BROKER_REGISTRATION BROKER_ID_NOT_REGISTERED INCONSISTENT_TOPIC_ID
INCONSISTENT_CLUSTER_ID TRANSACTIONAL_ID_NOT_FOUND FETCH_SESSION_TOPIC_ID_ERROR
INELIGIBLE_REPLICA NEW_LEADER_ELECTED OFFSET_MOVED_TO_TIERED_STORAGE FENCED_MEMBER_EPOCH
UNRELEASED_INSTANCE_ID UNSUPPORTED_ASSIGNOR STALE_MEMBER_EPOCH MISMATCHED_ENDPOINT_TYPE
UNSUPPORTED_ENDPOINT_TYPE UNKNOWN_CONTROLLER_ID UNKNOWN_SUBSCRIPTION_ID TELEMETRY_TOO_LARGE
INVALID_REGISTRATION TRANSACTION_ABORTABLE INVALID_RECORD_STATE SHARE_SESSION_NOT_FOUND
INVALID_SHARE_SESSION_EPOCH FENCED_STATE_EPOCH INVALID_VOTER_KEY DUPLICATE_VOTER VOTER_NOT_FOUND
""".split()))
ERRORS[-1] = "UNKNOWN_SERVER_ERROR"


def error_name(code: int) -> str:
    """A Kafka error code's name (``ERROR_<code>`` for one this table does not know)."""
    return ERRORS.get(code, f"ERROR_{code}")


class KafkaAnalyzer(CoreBackedAnalyzer):
    """Kafka over one TCP connection; ``client_direction`` sends the requests."""

    protocol = "kafka"
    _core_class = KafkaConnection

    def __init__(self, ctx: StreamContext, client_direction: int) -> None:
        super().__init__(ctx)
        self.client = client_direction
        self.stats = ctx.stats
        self._core = KafkaConnection(client_direction)
        self._core_state = b""
        #: correlation id -> (request message, capture time), in the order sent
        self.pending: OrderedDict[int, tuple[dict[str, Any], int]] = OrderedDict()
        self.seq = 0
        self.skipped = [0, 0]

    # -- StreamAnalyzer hooks ------------------------------------------------------------

    def on_data(self, direction: int, data: bytes, ts_us: int) -> None:
        self._messages(self._core.data(direction, data), ts_us)
        self._count_skipped(direction)

    def on_gap(self, direction: int, missing: int, ts_us: int) -> None:
        self.stats["kafka.gaps"] += 1
        self._messages(self._core.gap(direction, missing), ts_us)

    def on_close(self, ts_us: int) -> None:
        for request, ts in self.pending.values():
            self._emit(request, ts, None, None)
        self.pending.clear()

    # -- requests and responses ------------------------------------------------------------

    def _count_skipped(self, direction: int) -> None:
        skipped, _bad = self._core.skipped(direction)
        if skipped != self.skipped[direction]:
            self.stats["kafka.skipped_bytes"] += skipped - self.skipped[direction]
            self.skipped[direction] = skipped

    def _topic_names(self) -> dict[str, str]:
        """Topic id (as Kafka prints it) -> name, shared by the partition's connections:
        a client asks for metadata on one connection and fetches by id on another."""
        shared = self.ctx.shared
        names = shared.get("kafka.topic_names")
        if names is None:
            names = shared["kafka.topic_names"] = {}
        return names

    def _messages(self, messages: list[dict[str, Any]], ts_us: int) -> None:
        for m in messages:
            if m["topic_ids"]:
                names = self._topic_names()
                if len(names) + len(m["topic_ids"]) > MAX_TOPIC_NAMES:
                    names.clear()  # bounded: the next Metadata responses fill it again
                names.update(m["topic_ids"])
            if m["parse_error"]:
                self.stats[f"kafka_parse_error.{m['parse_error']}"] += 1
            if not m["response"]:
                self._request(m, ts_us)
            else:
                self._response(m, ts_us)

    def _request(self, m: dict[str, Any], ts_us: int) -> None:
        if m["api_key"] == 0 and m["acks"] == 0:  # acks=0: no response will come
            self._emit(m, ts_us, None, None)
            return
        if m["correlation_id"] in self.pending:  # a client reusing a correlation id
            self.stats["kafka.correlation_id_reused"] += 1
            self._emit(*self.pending.pop(m["correlation_id"]), None, None)
        if len(self.pending) >= MAX_PENDING:
            self.stats["kafka.pending_overflow"] += 1
            _, (old, ts) = self.pending.popitem(last=False)
            self._emit(old, ts, None, None)
        self.pending[m["correlation_id"]] = (m, ts_us)

    def _response(self, m: dict[str, Any], ts_us: int) -> None:
        corr = m["correlation_id"]
        if corr not in self.pending:
            self.stats["kafka.response_without_request"] += 1
            return
        # in order: the requests sent before the one answered got no response
        while self.pending:
            c, (request, ts) = self.pending.popitem(last=False)
            if c == corr:
                self._emit(request, ts, m, ts_us)
                return
            self.stats["kafka.unanswered"] += 1
            self._emit(request, ts, None, None)

    # -- records ---------------------------------------------------------------------------

    def _emit(self, req: dict[str, Any], req_ts: int, resp: dict[str, Any] | None, resp_ts: int | None) -> None:
        self.seq += 1
        cid = self.ctx.connection_id()
        client_id = req["client_id"]
        topics = list(req["topics"])
        if resp is not None:  # (a Metadata request for all topics names them in its response)
            topics += [t for t in resp["topics"] if t not in topics]
        names = self._topic_names()
        if names:  # topics named by an id another connection's Metadata response named
            topics = list(dict.fromkeys(names.get(t, t) for t in topics))
        if req["api_key"] == 1 and resp is not None:
            records, record_bytes = resp["records"], resp["record_bytes"]  # Fetch: what came back
            compression = resp["compression"]
        else:
            records, record_bytes, compression = req["records"], req["record_bytes"], req["compression"]
        if resp is None:
            status = "sent" if req["api_key"] == 0 and req["acks"] == 0 else "no_reply"
            error_code = None
        else:
            error_code = resp["error_code"] or None
            status = "error" if error_code else "ok"
        record = {
            "message_id": hashlib.blake2b(f"{cid}:{self.seq}".encode(), digest_size=8).hexdigest(),
            "connection_id": cid,
            "community_id": self.ctx.community_id,
            "client_ip": self.ctx.ips[self.client], "client_port": self.ctx.ports[self.client],
            "server_ip": self.ctx.ips[1 - self.client], "server_port": self.ctx.ports[1 - self.client],
            "protocol": "kafka",
            "tls": False,
            "api": req["api"] or f"api_{req['api_key']}",
            "api_key": req["api_key"],
            "api_version": req["api_version"],
            "correlation_id": req["correlation_id"],
            "client_id": client_id,
            "own_traffic": bool(client_id) and client_id.startswith(OWN_CLIENT_PREFIX),
            "topic": topics[0] if topics else None,
            "topics": topics,
            "partitions": max(req["partitions"], resp["partitions"] if resp is not None else 0) or None,
            "records": records,
            "record_bytes": record_bytes,
            "compression": compression,
            "group_id": req["group_id"] or (resp["group_id"] if resp is not None else None),
            "acks": req["acks"],
            "transactional": req["transactional"],
            "status": status,
            "error_code": error_code,
            "error": error_name(error_code) if error_code else None,
            "errors": resp["errors"] if resp is not None else None,
            "throttle_ms": resp["throttle_ms"] if resp is not None else None,
            "parse_error": req["parse_error"] or (resp["parse_error"] if resp is not None else None),
            "request_bytes": req["size"],
            "response_bytes": resp["size"] if resp is not None else None,
            "request_ts_us": req_ts,
            "response_ts_us": resp_ts,
            "latency_us": max(0, resp_ts - req_ts) if resp_ts is not None else None,
        }
        self.stats["kafka_requests"] += 1
        if status == "error":
            self.stats["kafka.errors"] += 1
        self.ctx.emit(MESSAGING, cid, record)
