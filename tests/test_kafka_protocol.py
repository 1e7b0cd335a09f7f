"""The Kafka protocol on the wire: ``wire.messaging`` against a real Apache Kafka broker.

A three-node Apache Kafka 4.4 cluster of the test's own (tests/kafka_cluster.py, its
PLAINTEXT listeners, replication factor 3, automatic topic creation off: a client talks
to the leader of each partition, the group's coordinator, any node for metadata);
tcpdump records the three ports while clients run a known workload:

* librdkafka (confluent-kafka) at its newest versions: an admin client creating a topic
  of three partitions, a producer (lz4) of 50 records, a producer with ``acks=0`` of 5,
  a producer to a topic that does not exist, a consumer group reading everything back
  and committing, and wirestream's own producer (``own_traffic``);
* kafka-python (the pure-Python client) told to speak Kafka 2.1's versions, which
  Wireshark 4.0 dissects whole: a producer (gzip) of 30 records and a consumer group;
* Apache Kafka's own Java clients (kafka-clients 4.4): Produce v13 and Fetch v18, which
  name topics by id, and the consumer-group protocol of KIP-848 (ConsumerGroupHeartbeat).

Then ``wirestream analyze`` reads the capture. The referees:

* tshark's ``kafka`` dissector: every request it shows is, connection by connection and
  in order, a record with the same API key, version, correlation id and client id; every
  response it decodes is that record's response, with the same first non-zero error
  code; for the versions it dissects whole, the records it shows in each Produce
  request and Fetch response are the record's count, and the topics it names are the
  record's;
* what the clients did: records produced and consumed per client, the acks=0 requests,
  the missing topic's error, the groups, the compression each producer used.

And through the broker's SASL_SSL listener (TLS, SCRAM-SHA-512): kafka-python logging
its TLS secrets (Python's ``SSLContext.keylog_filename``), ``analyze --tls-keylog``
reads the Kafka inside — records marked ``tls``, the SASL calls recorded and their
authentication bytes never read.
"""

from __future__ import annotations

import json
import shutil
import signal
import ssl
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from helpers import analyze_to, import_or_require, needs, read_jsonl, stop_process, tcpdump_loopback
from kafka_cluster import ApacheKafka, kafka_lib, kafka_unavailable

TSHARK = shutil.which("tshark")
TCPDUMP = shutil.which("tcpdump")
JAVA_CLIENTS = Path(__file__).parent / "kafka_clients" / "JavaClients.java"


def _missing() -> str | None:
    for name, path in (("tcpdump", TCPDUMP), ("tshark", TSHARK)):
        if not path:
            return f"{name} is not installed (scripts/install --test installs it)"
    import os

    if os.geteuid() != 0:
        return "tcpdump on loopback needs root"
    return kafka_unavailable()


pytestmark = needs(_missing())

#: kafka-python at Kafka 2.1's versions: Produce v7, Fetch v10, Metadata v7 (tshark 4.0 dissects them)
LEGACY_VERSION = (2, 1)
SECRET = "secret-value-5f2c"


class Run:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.pcap = d / "kafka.pcap"
        self.ports: list[int] = []  # the brokers' client listeners
        self.produced: Counter[str] = Counter()  # records acknowledged, per client id
        self.consumed: Counter[str] = Counter()
        self.missing_topic_error = ""
        self.java = ""
        self.payments_id = ""  # the topic's id as Kafka prints it


def _consume(conf: dict[str, Any], topic: str, want: int) -> int:
    from confluent_kafka import Consumer

    consumer = Consumer({**conf, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got, deadline = 0, time.time() + 60
    while got < want and time.time() < deadline:
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            assert m.value().decode().startswith(("secret-value", "fire-"))
            got += 1
    consumer.commit(asynchronous=False)
    consumer.close()
    return got


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from wirestream.kafka import producer_config

    kafka_python = import_or_require("kafka")
    d = tmp_path_factory.mktemp("kafka-protocol")
    r = Run(d)
    with ApacheKafka(brokers=3, config={"auto.create.topics.enable": "false"}) as kafka:
        r.ports = list(kafka.ports)
        tcpdump = tcpdump_loopback(r.pcap, *r.ports)
        try:
            boot = kafka.bootstrap
            admin = AdminClient({"bootstrap.servers": boot, "client.id": "py-admin"})
            for f in admin.create_topics([NewTopic("orders", 3, 3), NewTopic("payments", 1, 3)]).values():
                f.result(30)

            def produce(client: str, n: int, **conf: Any) -> None:
                acked = []
                p = Producer({"bootstrap.servers": boot, "client.id": client, "linger.ms": 5, **conf})
                for i in range(n):
                    p.produce("orders", key=f"k{i}", value=f"{SECRET}-{i}",
                              on_delivery=lambda err, _m: acked.append(err))
                assert p.flush(30) == 0
                r.produced[client] = sum(e is None for e in acked)

            produce("py-producer", 50, **{"compression.type": "lz4"})
            produce("py-acks0", 5, acks=0)
            legacy = kafka_python.KafkaProducer(bootstrap_servers=boot, client_id="py-legacy-producer",
                                                api_version=LEGACY_VERSION, compression_type="gzip", linger_ms=5)
            sent = [legacy.send("orders", key=f"k{i}".encode(), value=f"{SECRET}-{i}".encode()) for i in range(30)]
            legacy.flush(30)
            r.produced["py-legacy-producer"] = sum(f.succeeded() for f in sent)
            legacy.close()
            # a topic that does not exist (and is not created): the producer is told so
            errors = []
            p = Producer({"bootstrap.servers": boot, "client.id": "py-lost", "message.timeout.ms": 3000})
            p.produce("no-such-topic", value=b"x", on_delivery=lambda err, _m: errors.append(err))
            p.flush(10)
            r.missing_topic_error = str(errors[0]) if errors else ""
            # wirestream's own producer (its client id marks its calls)
            own = Producer(producer_config(boot, **{"compression.type": "none"}))
            own.produce("orders", value=f"{SECRET}-own")
            assert own.flush(30) == 0
            total = sum(r.produced.values()) + 1
            r.consumed["py-consumer"] = _consume({"bootstrap.servers": boot, "client.id": "py-consumer",
                                                  "group.id": "billing"}, "orders", total)
            consumer = kafka_python.KafkaConsumer("orders", bootstrap_servers=boot, client_id="py-legacy-consumer",
                                                  group_id="audit", api_version=LEGACY_VERSION,
                                                  auto_offset_reset="earliest", enable_auto_commit=False)
            got, deadline = 0, time.time() + 60
            while got < total and time.time() < deadline:
                got += sum(len(batch) for batch in consumer.poll(timeout_ms=500).values())
            consumer.commit()
            consumer.close()
            r.consumed["py-legacy-consumer"] = got
            from confluent_kafka import TopicCollection

            described = admin.describe_topics(TopicCollection(["payments"]))["payments"].result(30)
            # as Kafka prints it: URL-safe base64 (librdkafka's str() is the standard alphabet)
            r.payments_id = str(described.topic_id).replace("+", "-").replace("/", "_")
            lib = kafka_lib()
            java = subprocess.run(["java", "-cp", f"{lib}/*", str(JAVA_CLIENTS), boot, "payments", "20", "ledger"],
                                  capture_output=True, text=True, timeout=240)
            assert java.returncode == 0, java.stderr[-3000:]
            r.java = java.stdout
            time.sleep(1.0)
        finally:
            stop_process(tcpdump, signal.SIGINT)
    return r


@pytest.fixture(scope="module")
def analyzed(run: Run, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("kafka-analyze")
    summary = analyze_to(run.pcap, out)
    assert summary["records"].get("wire.messaging", 0) > 0, summary["records"]
    return out, summary


@pytest.fixture(scope="module")
def messages(analyzed: tuple[Path, dict[str, Any]]) -> list[dict[str, Any]]:
    return read_jsonl(analyzed[0] / "wire.messaging.jsonl")


def _tshark(run: Run) -> list[dict[str, Any]]:
    """tshark's Kafka PDUs in capture order: side, client port, and the fields' values."""
    fields = ["tcp.srcport", "tcp.dstport", "kafka.request_key", "kafka.request.version", "kafka.response_key",
              "kafka.correlation_id", "kafka.client_id", "kafka.error", "kafka.topic_name", "_ws.expert.message",
              "kafka.message_value"]
    decode_as = [x for p in run.ports for x in ("-d", f"tcp.port=={p},kafka")]
    out = subprocess.run([TSHARK or "tshark", "-r", str(run.pcap), *decode_as, "-Y", "kafka",
                          "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|", "-E", "separator=\t",
                          *[x for f in fields for x in ("-e", f)]],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    pdus = []
    for line in out.split("\n"):  # (not splitlines: a value may hold a form feed)
        if not line:
            continue
        v = dict(zip(fields, line.split("\t"), strict=True))
        # one line per frame; a frame with several PDUs aggregates them (none here:
        # clients and the broker write one frame per segment, and loopback's MTU is 64 KiB)
        from_client = int(v["tcp.dstport"]) in run.ports
        pdus.append({"client": from_client, "port": int(v["tcp.srcport"] if from_client else v["tcp.dstport"]), **v})
    return pdus


def test_every_request_tshark_shows_is_a_record_in_order(run: Run, messages: list[dict[str, Any]]) -> None:
    seen: dict[int, list[tuple]] = defaultdict(list)
    for p in _tshark(run):
        if p["client"] and p["kafka.request_key"]:
            for key, version, corr, client in zip(p["kafka.request_key"].split("|"), p["kafka.request.version"].split("|"),
                                                  p["kafka.correlation_id"].split("|"), p["kafka.client_id"].split("|"),
                                                  strict=True):
                seen[p["port"]].append((int(key), int(version), int(corr), client))
    ours: dict[int, list[tuple]] = defaultdict(list)
    for m in sorted(messages, key=lambda m: (m["request_ts_us"], m["correlation_id"])):
        ours[m["client_port"]].append((m["api_key"], m["api_version"], m["correlation_id"], m["client_id"]))
    assert sum(len(v) for v in seen.values()) > 100
    assert set(ours) == set(seen)
    for port, requests in seen.items():
        assert ours[port] == requests, port


def test_responses_and_their_errors_are_the_ones_tshark_decodes(run: Run, messages: list[dict[str, Any]]) -> None:
    by_call = {(m["client_port"], m["correlation_id"]): m for m in messages}
    checked = 0
    for p in _tshark(run):
        if p["client"] or not p["kafka.response_key"] or "Unsupported" in p["_ws.expert.message"]:
            continue
        if "|" in p["kafka.response_key"]:
            continue  # (several PDUs in one frame: their fields cannot be told apart here)
        m = by_call[(p["port"], int(p["kafka.correlation_id"]))]
        assert m["api_key"] == int(p["kafka.response_key"])
        assert m["status"] in ("ok", "error"), m
        codes = [int(c) for c in p["kafka.error"].split("|") if c]
        first = next((c for c in codes if c != 0), None)
        assert m["error_code"] == first, (m, codes)
        checked += 1
    assert checked > 15


def test_records_produced_and_fetched_are_the_ones_tshark_counts(run: Run, messages: list[dict[str, Any]]) -> None:
    """In the versions tshark dissects whole (librdkafka at Kafka 2.1's), each Produce
    request's and Fetch response's records (tshark: one value per record, decompressed)
    are the record's count, and the topics the same."""
    by_call = {(m["client_port"], m["correlation_id"]): m for m in messages}
    checked = Counter()
    for p in _tshark(run):
        key = p["kafka.request_key"] if p["client"] else p["kafka.response_key"]
        if key not in ("0", "1") or "Unsupported" in p["_ws.expert.message"] or "|" in key:
            continue
        if (key == "0") != p["client"]:
            continue  # a Produce response, a Fetch request
        m = by_call[(p["port"], int(p["kafka.correlation_id"]))]
        values = [v for v in p["kafka.message_value"].split("|") if v]
        assert m["records"] == len(values), (m, len(values))
        topics = {t for t in p["kafka.topic_name"].split("|") if t}
        if key == "0":
            assert set(m["topics"]) == topics
        else:  # (the record names its request's topics too: an incremental fetch's answer may name none)
            assert topics <= set(m["topics"])
        checked[m["client_id"]] += m["records"]
    assert checked["py-legacy-producer"] == run.produced["py-legacy-producer"] == 30
    assert checked["py-legacy-consumer"] == run.consumed["py-legacy-consumer"]


def test_what_the_clients_did(run: Run, messages: list[dict[str, Any]]) -> None:
    produced: Counter[str] = Counter()
    fetched: Counter[str] = Counter()
    for m in messages:
        if m["api"] == "Produce" and m["status"] in ("ok", "sent"):
            produced[m["client_id"]] += m["records"]
        if m["api"] == "Fetch" and m["status"] == "ok":
            fetched[m["client_id"]] += m["records"]
    for client in ("py-producer", "py-acks0", "py-legacy-producer"):
        assert produced[client] == run.produced[client], client
    assert produced["wirestream"] == 1
    assert "produced 20" in run.java and "consumed 20" in run.java
    assert produced["java-producer"] == 20
    total = sum(run.produced.values()) + 1
    assert fetched["py-consumer"] == run.consumed["py-consumer"] == total
    assert fetched["py-legacy-consumer"] == run.consumed["py-legacy-consumer"] == total
    assert fetched["java-consumer"] == 20
    # acks=0: no response, by design
    acks0 = [m for m in messages if m["client_id"] == "py-acks0" and m["api"] == "Produce"]
    assert acks0 and all(m["status"] == "sent" and m["acks"] == 0 and m["latency_us"] is None for m in acks0)
    # compression as each producer asked
    codecs = {m["client_id"]: m["compression"] for m in messages if m["api"] == "Produce" and m["records"]}
    assert codecs["py-producer"] == "lz4" and codecs["py-legacy-producer"] == "gzip"
    assert codecs["java-producer"] == "zstd"
    # the topic that does not exist: the broker said so (librdkafka gave up on its record)
    assert run.missing_topic_error
    lost = [m for m in messages if m["client_id"] == "py-lost" and m["api"] == "Metadata" and m["status"] == "error"]
    assert lost and {m["error"] for m in lost} == {"UNKNOWN_TOPIC_OR_PARTITION"}
    assert all("no-such-topic" in m["topics"] for m in lost)
    # consumer groups: the classic protocol (librdkafka) and KIP-848's (the Java consumer)
    groups = {(m["client_id"], m["api"]): m["group_id"] for m in messages if m["group_id"]}
    assert groups[("py-consumer", "JoinGroup")] == "billing"
    assert groups[("py-consumer", "OffsetCommit")] == "billing"
    assert groups[("py-legacy-consumer", "SyncGroup")] == "audit"
    assert groups[("java-consumer", "ConsumerGroupHeartbeat")] == "ledger"
    assert groups[("java-consumer", "OffsetCommit")] == "ledger"
    # wirestream's own calls are marked, and only they
    assert {m["client_id"] for m in messages if m["own_traffic"]} == {"wirestream"}


def test_topics_named_by_id(run: Run, messages: list[dict[str, Any]]) -> None:
    """Produce v13 and Fetch v13+ name topics by id: a record names the topic when a
    Metadata response on the same connection told its name, else by its id as Kafka
    prints it (the Java clients ask for metadata on a connection of their own)."""
    assert len(run.payments_id) == 22
    java = [m for m in messages if m["client_id"] == "java-producer" and m["api"] == "Produce"]
    assert java and {m["api_version"] for m in java} == {13}
    assert all(m["topics"] in (["payments"], [run.payments_id]) for m in java)
    fetch = [m for m in messages if m["client_id"] == "java-consumer" and m["api"] == "Fetch" and m["records"]]
    assert fetch and max(m["api_version"] for m in fetch) >= 17
    assert all(m["topics"] in (["payments"], [run.payments_id]) for m in fetch)


def test_no_value_is_in_a_record(messages: list[dict[str, Any]]) -> None:
    assert SECRET not in json.dumps(messages)


def test_latency_and_sizes(messages: list[dict[str, Any]]) -> None:
    for m in messages:
        assert m["request_bytes"] > 8
        if m["status"] in ("ok", "error"):
            assert m["response_bytes"] >= 8 and m["latency_us"] >= 0
            assert m["response_ts_us"] >= m["request_ts_us"]
        assert m["parse_error"] is None, m


def test_each_api_has_windows_of_its_own(run: Run, analyzed: tuple[Path, dict[str, Any]],
                                         messages: list[dict[str, Any]]) -> None:
    """Kafka calls are requests to the broker's service, and each API has its operation
    windows (protocol kafka): their request counts are the records'. A Fetch's long poll
    is in its own window's latency, not in the service's."""
    windows = read_jsonl(analyzed[0] / "wire.service-metrics.jsonl")
    services = {f"127.0.0.1:{p}" for p in run.ports}  # (each broker is a service of its own here)
    ops: Counter[str] = Counter()
    fetch_p99 = 0.0
    for w in windows:
        if w.get("scope") == "operation" and w.get("operation_protocol") == "kafka":
            assert w["operation_service"] in services
            ops[w["operation"]] += w["requests"]
            if w["operation"] == "Fetch":
                fetch_p99 = max(fetch_p99, w["latency_p99_us"] or 0)
    counted = Counter(m["api"] for m in messages)  # (acks=0 requests too: sent, untimed)
    assert ops == counted
    # librdkafka's and kafka-python's fetches wait up to 500 ms for data
    assert fetch_p99 > 100_000
    brokers = [w for w in windows if w["scope"] == "service" and w["service"] in services]
    assert sum(w["requests"] for w in brokers) == sum(counted.values())
    # the service's latency digests hold every timed call but the Fetches (their long
    # polls), exactly: as many latencies, the same sum
    timed = [m["latency_us"] for m in messages if m["latency_us"] is not None and m["api"] != "Fetch"]
    digests = [json.loads(w["latency_digest"]) for w in brokers if w["latency_digest"]]
    assert sum(d["mass"] for d in digests) == len(timed)
    assert sum(d["sum"] for d in digests) == pytest.approx(sum(timed))
    summary = analyzed[1]["messaging"]
    assert summary["count"] == len(messages)
    assert summary["own_traffic"] == sum(m["own_traffic"] for m in messages) > 0
    assert summary["records_produced"]["orders"] == sum(run.produced.values()) + 1


# --- inside TLS: the SASL_SSL listener, with the client's key log ---------------------------

TLS_PASSWORD = "scram-pass-7c1e-not-in-records"


class TlsRun:
    def __init__(self, d: Path) -> None:
        self.pcap = d / "kafka-tls.pcap"
        self.keylog = d / "keys.log"
        self.produced = 0
        self.consumed = 0


@pytest.fixture(scope="module")
def tls_run(tmp_path_factory: pytest.TempPathFactory) -> TlsRun:
    from confluent_kafka.admin import AdminClient, NewTopic
    from kafka_cluster import SecureListeners
    from tls_certs import issue, make_ca

    kafka_python = import_or_require("kafka")
    d = tmp_path_factory.mktemp("kafka-tls-protocol")
    r = TlsRun(d)
    ca = make_ca(d)
    cert, key = issue(ca, d, "broker")
    keystore = d / "broker-keystore.pem"  # Kafka's PEM key store: the key, then the chain
    keystore.write_text(key.read_text() + cert.read_text())
    with ApacheKafka(brokers=1, secure=SecureListeners(ca.cert, keystore)) as kafka:
        kafka.add_scram_user("app", TLS_PASSWORD)
        kafka.allow_prefixed("User:app", topics=["audit"], groups=["audit"])
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        for f in admin.create_topics([NewTopic("audit", 1, 1)]).values():
            f.result(30)
        tcpdump = tcpdump_loopback(r.pcap, kafka.scram_ports[0])
        try:
            context = ssl.create_default_context(cafile=str(ca.cert))
            context.keylog_filename = str(r.keylog)  # the client's TLS secrets (NSS key log)
            common = {"bootstrap_servers": kafka.scram_bootstrap, "security_protocol": "SASL_SSL",
                      "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "app",
                      "sasl_plain_password": TLS_PASSWORD, "ssl_context": context}
            producer = kafka_python.KafkaProducer(client_id="tls-producer", **common)
            sent = [producer.send("audit", value=f"{SECRET}-tls-{i}".encode()) for i in range(10)]
            producer.flush(30)
            r.produced = sum(f.succeeded() for f in sent)
            producer.close()
            consumer = kafka_python.KafkaConsumer("audit", client_id="tls-consumer", group_id="audit",
                                                  auto_offset_reset="earliest", enable_auto_commit=False, **common)
            deadline = time.time() + 60
            while r.consumed < r.produced and time.time() < deadline:
                r.consumed += sum(len(b) for b in consumer.poll(timeout_ms=500).values())
            consumer.commit()
            consumer.close()
            time.sleep(1.0)
        finally:
            stop_process(tcpdump, signal.SIGINT)
    return r


def test_kafka_inside_tls_with_the_clients_key_log(tls_run: TlsRun, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert tls_run.produced == tls_run.consumed == 10
    # without the key log: TLS handshakes, no Kafka
    plain = tmp_path_factory.mktemp("kafka-tls-nokeys")
    summary = analyze_to(tls_run.pcap, plain)
    assert summary["records"].get("wire.tls", 0) > 0 and not summary["records"].get("wire.messaging")
    out = tmp_path_factory.mktemp("kafka-tls-keys")
    analyze_to(tls_run.pcap, out, "--tls-keylog", str(tls_run.keylog))
    messages = read_jsonl(out / "wire.messaging.jsonl")
    assert messages and all(m["tls"] for m in messages)
    apis = Counter(m["api"] for m in messages)
    assert apis["SaslHandshake"] >= 2 and apis["SaslAuthenticate"] >= 4  # SCRAM: two rounds per connection
    assert all(m["status"] == "ok" for m in messages if m["api"].startswith("Sasl"))
    produced = sum(m["records"] for m in messages if m["api"] == "Produce" and m["status"] == "ok")
    fetched = sum(m["records"] or 0 for m in messages if m["api"] == "Fetch" and m["status"] == "ok")
    assert produced == fetched == 10
    assert {m["group_id"] for m in messages if m["api"] == "JoinGroup"} == {"audit"}
    text = json.dumps(messages)
    assert TLS_PASSWORD not in text and SECRET not in text
