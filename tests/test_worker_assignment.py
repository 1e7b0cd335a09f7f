"""A packet worker of a group told to stop while the broker is away during its assignment.

On assignment a worker reads each partition's newest checkpoint before processing it,
and while the broker is away it tries again (starting without the state would split the
connections in progress). Told to stop meanwhile (SIGTERM: a rolling update, a scale
down), it must stop trying and leave those partitions unassigned -- not retry forever
and make Kubernetes kill it.
"""

from __future__ import annotations

import threading
import time
import uuid

from confluent_kafka import Consumer, TopicPartition
from helpers import free_port
from wirestream.processors.engine import EngineOptions
from wirestream.processors.packet_worker import PacketWorker, WorkerOptions

from wirestream.kafka import consumer_config
from wirestream.topics import PACKETS, SOCKETS


def test_a_worker_told_to_stop_while_the_broker_is_away_leaves_its_new_partitions_unassigned() -> None:
    away = f"127.0.0.1:{free_port()}"  # nothing listens there: the broker is away
    worker = PacketWorker(away, "http://127.0.0.1:9", f"away-{uuid.uuid4().hex[:8]}", EngineOptions(),
                          WorkerOptions(checkpoint_read_timeout_s=1.0))
    consumer = Consumer(consumer_config(away) | {"group.id": "unused", "log_level": 0})
    asked = threading.Event()
    worker._stopping = asked.is_set
    partitions = [TopicPartition(topic, part) for part in (0, 1) for topic in (PACKETS, SOCKETS)]
    done = threading.Event()

    def assign() -> None:
        worker._on_assign(consumer, partitions)
        done.set()

    threading.Thread(target=assign, daemon=True).start()
    time.sleep(1.5)  # it tries, and tries again: the broker is away
    assert not done.is_set()
    assert worker.counters["broker_waits"] >= 1
    asked.set()  # SIGTERM
    assert done.wait(10), "still trying to read a checkpoint after being told to stop"
    assert consumer.assignment() == []
    assert worker.positions == {}
    consumer.close()
