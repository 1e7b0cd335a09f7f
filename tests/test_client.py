"""wirestream.client and tail's filters, against the real broker and registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from helpers import publish, transaction

from wirestream.broker import EmbeddedBroker, ensure_topics
from wirestream.client import condition, subscribe, where
from wirestream.errors import UsageError
from wirestream.topics import TRANSACTIONS


def _transaction(source: str, n: int, status: int, path: str) -> dict:
    return transaction(source, n, status=status, path=path, request_headers={"host": "shop.test"})


def test_conditions() -> None:
    rec = {"status": 503, "method": "POST", "path": "/api/pay", "request_headers": {"host": "a"}, "x": None}
    assert condition("status>=500")(rec) and not condition("status<500")(rec)
    assert condition("method==POST")(rec) and condition("method=POST")(rec) and not condition("method!=POST")(rec)
    assert condition("path~^/api")(rec) and not condition("path~^/static")(rec)
    assert condition("request_headers.host==a")(rec)
    assert not condition("missing==1")(rec) and not condition("x>3")(rec)  # absent or null: no match
    assert not condition("method>3")(rec)  # not comparable: no match, no error
    with pytest.raises(UsageError):
        condition("status is big")
    with pytest.raises(UsageError):
        condition("path~(")
    assert where("status>=500", service="10.0.0.2:80")({"status": 500, "server_ip": "10.0.0.2", "server_port": 80})


def test_subscribe_filters_and_commits_what_was_taken(broker, registry) -> None:
    source = f"client-{uuid.uuid4().hex[:8]}"
    records = [_transaction(source, n, 500 if n % 3 == 0 else 200, f"/p/{n}") for n in range(30)]
    group = f"g-{source}"
    bad = where("status>=500", f"source_id=={source}")
    with subscribe([TRANSACTIONS], group, broker.bootstrap, registry.url, from_beginning=True, where=bad) as sub:
        publish(broker, registry, TRANSACTIONS, records)
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 10 and time.monotonic() < deadline:
            got += sub.poll(0.5)
        assert sorted(r.value["connection_id"] for r in got) == sorted(
            r["connection_id"] for r in records if r["status"] == 500)
        assert all(r.topic == TRANSACTIONS and r.key for r in got)
    # the same group again: everything was committed at close, nothing comes back
    with subscribe([TRANSACTIONS], group, broker.bootstrap, registry.url, from_beginning=True, where=bad) as sub:
        again = []
        end = time.monotonic() + 4
        while time.monotonic() < end:
            again += sub.poll(0.5)
        assert again == []
    # another group gets them all
    with subscribe([TRANSACTIONS], group + "-other", broker.bootstrap, registry.url, from_beginning=True,
                   where=where(f"source_id=={source}")) as sub:
        other = []
        deadline = time.monotonic() + 30
        while len(other) < 30 and time.monotonic() < deadline:
            other += sub.poll(0.5)
        assert len(other) == 30


def test_tail_where_and_service(broker, registry) -> None:
    source = f"tail-{uuid.uuid4().hex[:8]}"
    publish(broker, registry, TRANSACTIONS, [_transaction(source, n, 404 if n < 2 else 200, f"/x/{n}") for n in range(6)])
    env = {**os.environ, "WIRESTREAM_BOOTSTRAP": broker.bootstrap, "WIRESTREAM_REGISTRY": registry.url}
    r = subprocess.run([sys.executable, "-m", "wirestream", "tail", TRANSACTIONS, "--from-beginning", "--timeout", "3",
                        "--where", f"source_id=={source}", "--where", "status>=400", "--service", "10.0.0.2:80"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(x["path"] for x in lines) == ["/x/0", "/x/1"]
    bad = subprocess.run([sys.executable, "-m", "wirestream", "tail", TRANSACTIONS, "--where", "status is 5"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cannot read the condition" in bad.stderr


def test_tail_names_a_mistyped_topic_and_waits_for_one_of_its_own(registry, monkeypatch) -> None:
    """A name the brokers do not have is an error that says what it may have meant; one of
    wirestream's own topics that no worker has created yet is waited for (saying so), then
    read from its start."""
    from confluent_kafka.admin import AdminClient, NewTopic

    # its own broker (a topic is deleted and created again): the embedded one, plaintext,
    # whatever Kafka and security settings the suite runs with
    for var in [v for v in os.environ if v.startswith("WIRESTREAM_KAFKA_")]:
        monkeypatch.delenv(var)
    with EmbeddedBroker() as own:
        ensure_topics(own.bootstrap, [TRANSACTIONS], 1)
        env = {**os.environ, "WIRESTREAM_BOOTSTRAP": own.bootstrap, "WIRESTREAM_REGISTRY": registry.url}
        typo = subprocess.run([sys.executable, "-m", "wirestream", "tail", "wire.transaction"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert typo.returncode == 1, typo.stderr
        assert typo.stderr.strip() == (f"wirestream: error: no topic wire.transaction at {own.bootstrap}; "
                                       "did you mean wire.transactions?")

        admin = AdminClient({"bootstrap.servers": own.bootstrap})
        admin.delete_topics([TRANSACTIONS])[TRANSACTIONS].result(10)
        tail = subprocess.Popen([sys.executable, "-m", "wirestream", "tail", TRANSACTIONS, "--timeout", "20", "-n", "1"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert tail.stderr is not None
            said = tail.stderr.readline()
            assert said.startswith(f"wirestream: waiting for topic {TRANSACTIONS} to be created at {own.bootstrap}")
            admin.create_topics([NewTopic(TRANSACTIONS, 1, 1)])[TRANSACTIONS].result(10)
            publish(own, registry, TRANSACTIONS, [_transaction("late", 0, 200, "/late")])
            out, err = tail.communicate(timeout=60)
        finally:
            tail.kill()
        assert tail.returncode == 0, err
        assert json.loads(out)["path"] == "/late"  # written before tail assigned it: read from the start
