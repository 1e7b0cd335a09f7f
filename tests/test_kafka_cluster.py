"""wirestream on a real three-broker Apache Kafka cluster (tests/kafka_cluster.py): the
topics it creates are replicated as a production cluster needs, what a producer was told
is written survives a broker crash, and ``analyze --bootstrap`` gives the records the
embedded broker gives.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from helpers import DATA
from kafka_cluster import ApacheKafka

from wirestream.kafka import consumer_config, producer_config
from wirestream.loopback_ports import ephemeral_range, free_ports
from wirestream.topics import ALL_TOPICS, CHECKPOINTS, OUTPUT_TOPICS, TOPIC_CONFIGS

#: captures for the analyze comparison: many HTTP connections, DNS over UDP and TCP, TLS
ANALYZE_CAPTURES = [DATA / "chrissanders" / "http_espn.pcapng", DATA / "chrissanders" / "dns_tcp.pcapng",
                    DATA / "chrissanders" / "dns_lab.pcapng"]


def _admin(kafka: ApacheKafka) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka.bootstrap, "socket.timeout.ms": 10_000})


def test_wirestream_topics_are_replicated_three_times_and_need_two_in_sync(kafka_cluster: ApacheKafka) -> None:
    """Every topic wirestream creates (``--replication-factor 3``): 3 replicas of each
    partition, all in sync, on 3 different brokers; ``min.insync.replicas`` 2, so that an
    ``acks=all`` write is on two brokers; the topics' own configuration (compaction, the
    checkpoints' message size) applied."""
    admin = _admin(kafka_cluster)
    md = admin.list_topics(timeout=10)
    assert sorted(md.brokers) == [1, 2, 3]
    for name in ALL_TOPICS:
        topic = md.topics[name]
        assert len(topic.partitions) == 4, name
        for p in topic.partitions.values():
            assert len(set(p.replicas)) == 3 and set(p.isrs) == set(p.replicas), (name, p)
    resources = [ConfigResource("topic", name) for name in ALL_TOPICS]
    for resource, fut in admin.describe_configs(resources).items():
        config = {k: v.value for k, v in fut.result().items()}
        assert config["min.insync.replicas"] == "2", resource
        for key, value in TOPIC_CONFIGS.get(resource.name, {}).items():
            assert config[key] == value, (resource, key)
    assert TOPIC_CONFIGS[CHECKPOINTS]["cleanup.policy"] == "compact"


def test_a_large_checkpoint_is_written_on_three_brokers(kafka_cluster: ApacheKafka) -> None:
    """A 5 MiB record (a busy partition's state), five times the broker's default message
    size: accepted with ``acks=all`` by a topic with the checkpoint topic's configuration
    (its own topic, not wire.checkpoints: the workers read that one), and read back whole."""
    topic = f"test.checkpoints.{uuid.uuid4().hex[:8]}"
    admin = _admin(kafka_cluster)  # kept: a client destroyed too early fails its futures
    admin.create_topics([NewTopic(topic, 1, 3, config=TOPIC_CONFIGS[CHECKPOINTS])])[topic].result()
    value = uuid.uuid4().bytes * (5 * 1024 * 1024 // 16)
    errors: list[KafkaError | None] = []
    producer = Producer(producer_config(kafka_cluster.bootstrap, **{"message.max.bytes": 8 * 1024 * 1024}))
    producer.produce(topic, value, b"group/source/0", on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(60)
    assert errors == [None]
    consumer = Consumer(consumer_config(kafka_cluster.bootstrap) | {"fetch.max.bytes": 16 * 1024 * 1024,
                                                                    "receive.message.max.bytes": 20 * 1024 * 1024})
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            got = [m for m in consumer.consume(1, 1.0) if m.error() is None]
    finally:
        consumer.close()
    assert got and got[0].value() == value


def _leader_of(kafka: ApacheKafka, topic: str, partition: int) -> int:
    """The index (0-based, as ApacheKafka.kill takes) of the partition's leader."""
    md = _admin(kafka).list_topics(topic, timeout=10)
    return md.topics[topic].partitions[partition].leader - 1


def test_a_killed_broker_loses_nothing_the_producer_was_told_is_written(kafka_cluster: ApacheKafka) -> None:
    """While a producer with wirestream's settings (``acks=all``: librdkafka's default,
    which wirestream.kafka.producer_config keeps) writes numbered records, the leader is
    SIGKILLed, then restarted; once it has caught up, the new leader is killed too, so
    that the records must be read from replicas that the first crash and the restart
    touched. Every record whose delivery was acknowledged is there, in the order it was
    written (a repeat after a retry is allowed: wirestream's producers are at least once).
    The cluster is whole again afterwards (other tests share it)."""
    topic = f"test.kill.{uuid.uuid4().hex[:8]}"
    partitions = 3
    admin = _admin(kafka_cluster)
    admin.create_topics([NewTopic(topic, partitions, 3)])[topic].result()
    acked: dict[int, list[int]] = defaultdict(list)  # partition -> values, in ack order
    failed: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()
    written = 0

    def produce() -> None:
        nonlocal written
        # wirestream's producer settings; the delivery report of every record, not only of
        # failures (WireProducer's), to know which were acknowledged
        producer = Producer(producer_config(kafka_cluster.bootstrap, **{"message.timeout.ms": 120_000}))

        def on_delivery(err: KafkaError | None, msg: Any) -> None:
            with lock:
                if err is None:
                    acked[msg.partition()].append(int(msg.value()))
                else:
                    failed.append(err.name())

        n = 0
        while not stop.is_set() and n < 200_000:
            producer.produce(topic, str(n).encode(), partition=n % partitions, on_delivery=on_delivery)
            n += 1
            written = n
            producer.poll(0)
            time.sleep(0.0005)
        producer.flush(120)

    def acked_count() -> int:
        with lock:
            return sum(len(v) for v in acked.values())

    def wait_for_more_acks(more: int, timeout: float = 60) -> None:
        target = acked_count() + more
        deadline = time.monotonic() + timeout
        while acked_count() < target:
            assert time.monotonic() < deadline, f"{acked_count()} acknowledged, waited for {target}"
            time.sleep(0.05)

    thread = threading.Thread(target=produce)
    thread.start()
    first = second = None
    try:
        wait_for_more_acks(2000)
        first = _leader_of(kafka_cluster, topic, 0)
        kafka_cluster.kill(first)
        wait_for_more_acks(2000)  # the others lead now, after the controller fenced it
        kafka_cluster.restart(first)
        kafka_cluster.wait_in_sync()
        wait_for_more_acks(2000)
        second = _leader_of(kafka_cluster, topic, 0)
        kafka_cluster.kill(second)
        wait_for_more_acks(1000)
    finally:
        stop.set()
        thread.join(180)
    # Read everything back from the two brokers that are up; whatever is found, the cluster
    # is whole again afterwards (the tests after this one share it).
    got: dict[int, list[int]] = defaultdict(list)
    try:
        consumer = Consumer(consumer_config(kafka_cluster.bootstrap))
        try:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
            deadline = time.monotonic() + 120
            while any(set(acked[p]) - set(got[p]) for p in range(partitions)) and time.monotonic() < deadline:
                for m in consumer.consume(1000, 1.0):
                    if m.error() is None:
                        got[m.partition()].append(int(m.value()))
        finally:
            consumer.close()
    finally:
        if second is not None:
            kafka_cluster.restart(second)
        kafka_cluster.wait_in_sync()
    assert not failed, f"deliveries failed: {failed[:5]}"
    assert acked_count() >= 7000 and written >= acked_count()
    for p in range(partitions):
        missing = sorted(set(acked[p]) - set(got[p]))
        assert not missing, f"partition {p}: {len(missing)} acknowledged records missing, e.g. {missing[:10]}"
        firsts = list(dict.fromkeys(got[p]))  # repeats after a retry dropped
        assert firsts == sorted(firsts), f"partition {p}: out of order"


def _analyze(out: Path, *args: str) -> dict[str, list[str]]:
    """Run ``wirestream analyze`` on ANALYZE_CAPTURES; return each output topic's records
    as sorted JSON lines, the run's id (in source ids and connection ids) replaced."""
    proc = subprocess.run([sys.executable, "-m", "wirestream", "analyze", *map(str, ANALYZE_CAPTURES),
                           "--out", str(out), "--json", "--no-progress", *args],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # analyze's sources are <run id>-<index of the file>
    run_ids = {m.group(1) for line in (out / "wire.connections.jsonl").read_text().split("\n")[:-1]
               if (m := re.fullmatch(r"([0-9a-f]{12})-\d+", json.loads(line)["source_id"]))}
    assert len(run_ids) == 1, run_ids
    run_id = run_ids.pop()

    def without_run_id(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(run_id, "RUN")
        if isinstance(value, dict):
            return {k: without_run_id(v) for k, v in value.items()}
        if isinstance(value, list):
            return [without_run_id(v) for v in value]
        return value

    records: dict[str, list[str]] = {}
    # lines are split at "\n" only: str.splitlines would also split inside a body that
    # holds U+2028 or U+0085
    for topic in OUTPUT_TOPICS:
        lines = (out / f"{topic}.jsonl").read_text().split("\n")[:-1]
        records[topic] = sorted(json.dumps(without_run_id(json.loads(line)), sort_keys=True) for line in lines)
    return records


def test_analyze_on_the_cluster_gives_the_records_of_the_embedded_broker(kafka_cluster: ApacheKafka,
                                                                          tmp_path: Path) -> None:
    """``analyze --bootstrap <cluster>`` and ``analyze`` (embedded broker): the same records
    on every output topic, field by field."""
    apache = _analyze(tmp_path / "apache", "--bootstrap", kafka_cluster.bootstrap,
                      "--replication-factor", str(kafka_cluster.replication_factor))
    embedded = _analyze(tmp_path / "embedded")
    assert sum(len(v) for v in embedded.values()) > 50
    for topic in OUTPUT_TOPICS:
        assert apache[topic] == embedded[topic], topic


@pytest.mark.parametrize("value", ["0", "-2", "x"])
def test_replication_factor_must_be_positive_or_minus_one(value: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "wirestream", "analyze", "x.pcap", "--replication-factor", value],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert "--replication-factor" in proc.stderr


def test_the_brokers_default_replication_on_a_single_broker(kafka_single: ApacheKafka,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-broker variant: wirestream's topics with one replica (``-1``, the default of
    ``--replication-factor``, is the broker's ``default.replication.factor``: 1 there). The
    factor asked for reaches the broker, given or from ``WIRESTREAM_REPLICATION_FACTOR``:
    two replicas on one broker are refused (the embedded broker would accept them)."""
    from confluent_kafka import KafkaException

    from wirestream.broker import ensure_topics

    for given, env in ((2, None), (None, "2")):
        if env is not None:
            monkeypatch.setenv("WIRESTREAM_REPLICATION_FACTOR", env)
        with pytest.raises(KafkaException) as refused:
            ensure_topics(kafka_single.bootstrap, [f"test.rf2.{uuid.uuid4().hex[:8]}"], 1, replication_factor=given)
        assert refused.value.args[0].name() == "INVALID_REPLICATION_FACTOR"
    monkeypatch.delenv("WIRESTREAM_REPLICATION_FACTOR")

    topic = f"test.default-rf.{uuid.uuid4().hex[:8]}"
    assert ensure_topics(kafka_single.bootstrap, [topic], 2, replication_factor=-1) == [topic]
    admin = _admin(kafka_single)
    deadline = time.monotonic() + 30
    while topic not in (md := admin.list_topics(timeout=10)).topics and time.monotonic() < deadline:
        time.sleep(0.2)  # the broker's metadata follows the controller's a moment later
    assert sorted(md.brokers) == [1]
    for name in (*ALL_TOPICS, topic):
        assert all(p.replicas == [1] for p in md.topics[name].partitions.values()), name


def test_the_clusters_ports_are_distinct_free_and_outside_the_ephemeral_range() -> None:
    """A cluster's 15 ports (5 listeners x 3 nodes) never repeat (a CI run failed when one
    node's PLAINTEXT port was another's MTLS port), and none is one the kernel could give
    an outgoing connection's local end before the JVM binds it."""
    low, high = ephemeral_range()
    for _ in range(50):
        ports = free_ports(15)
        assert len(set(ports)) == 15
        assert all(not low <= p <= high for p in ports)
        for p in ports:  # each bindable once chosen: the probes are closed
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))
