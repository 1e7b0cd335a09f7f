"""Shared fixtures: a real embedded broker (tansu over TCP) and the embedded registry; a
real Apache Kafka cluster; the hook that turns a missing requirement into a skip, or a
failure under ``WIRESTREAM_REQUIRE=all`` (tests/helpers.py).

Kafka, three ways (all session-scoped, with wirestream's topics created, 4 partitions):

* ``broker``: what the tests run against. The embedded broker (tansu, wirestream's
  default), or, with ``WIRESTREAM_TEST_KAFKA=apache``, the three-broker Apache Kafka
  cluster below (``apache-single``: the one-broker one). In the Apache modes
  ``WIRESTREAM_BOOTSTRAP`` is set for the whole session too, so that a command the tests
  run without ``--bootstrap`` (``wirestream analyze``) uses the cluster and not an
  embedded broker of its own; scripts/test runs the end-to-end tests a second time so.
* ``kafka_cluster``: three brokers (replication factor 3, ``min.insync.replicas=2``);
  a :class:`kafka_cluster.ApacheKafka`: ``.bootstrap``, ``.kill(i)``, ``.stop(i)``,
  ``.restart(i)``, ``.wait_in_sync()``, ``.replication_factor``.
* ``kafka_single``: one broker (replication factor 1).

Without Java or the Kafka jars (scripts/kafka fetch) the Apache ones skip, saying why, or
fail under ``WIRESTREAM_REQUIRE=all``. When a test using one fails, the tails of the
brokers' logs are added to its report and their directory is kept.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator

import pytest

# tests/ on sys.path, here and nowhere else: the tests import their shared modules
# (helpers, oracle, captures, netns, ...) as plain top-level modules.
sys.path.insert(0, os.path.dirname(__file__))

from helpers import REQUIRE_ALL, require_or_skip  # noqa: E402
from kafka_cluster import ApacheKafka, create_wirestream_topics, kafka_unavailable  # noqa: E402

from wirestream.broker import EmbeddedBroker, ensure_topics  # noqa: E402
from wirestream.registry import EmbeddedSchemaRegistry  # noqa: E402
from wirestream.topics import ALL_TOPICS  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(missing): the test needs something from the machine; "
                            "missing is None when it is there, else what is missing (tests/helpers.py)")


def _missing(item: pytest.Item) -> str | None:
    """What the first of the item's ``needs`` marks says is missing, or None."""
    return next((m.args[0] for m in item.iter_markers("needs") if m.args and m.args[0] is not None), None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Without WIRESTREAM_REQUIRE: a plain skip mark, reported at the test as skipif was.
    if not REQUIRE_ALL:
        for item in items:
            missing = _missing(item)
            if missing is not None:
                item.add_marker(pytest.mark.skip(reason=missing))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Under WIRESTREAM_REQUIRE=all: a failure, before the fixtures are set up (a test that
    # cannot run does not start the broker for nothing).
    missing = _missing(item) if REQUIRE_ALL else None
    if missing is not None:
        require_or_skip(missing)


#: which Kafka the ``broker`` fixture is: embedded (default), apache (3 brokers), apache-single
TEST_KAFKA = os.environ.get("WIRESTREAM_TEST_KAFKA", "embedded") or "embedded"
_APACHE_FIXTURES = {"apache": "kafka_cluster", "apache-single": "kafka_single"}
if TEST_KAFKA != "embedded" and TEST_KAFKA not in _APACHE_FIXTURES:
    raise pytest.UsageError(f"WIRESTREAM_TEST_KAFKA={TEST_KAFKA}: embedded, apache or apache-single")


#: the Apache Kafka clusters running (for the failure reports)
_LIVE: list[ApacheKafka] = []


def _apache_kafka(brokers: int) -> Iterator[ApacheKafka]:
    reason = kafka_unavailable()
    if reason is not None:
        require_or_skip(f"Apache Kafka: {reason}")
    with ApacheKafka(brokers) as kafka:
        _LIVE.append(kafka)
        try:
            create_wirestream_topics(kafka, 4)
            yield kafka
        finally:
            _LIVE.remove(kafka)
            # clients the tests left for the garbage collector go before the brokers do
            # (else librdkafka logs 'Connection refused' at the end of the session)
            gc.collect()


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[ApacheKafka]:
    """Three Apache Kafka brokers: replication factor 3, min.insync.replicas 2."""
    yield from _apache_kafka(3)


@pytest.fixture(scope="session")
def kafka_single() -> Iterator[ApacheKafka]:
    """One Apache Kafka broker: replication factor 1."""
    yield from _apache_kafka(1)


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker | ApacheKafka]:
    """The Kafka the tests run against (``.bootstrap``): see the module's docstring."""
    if TEST_KAFKA == "embedded":
        with EmbeddedBroker() as b:
            ensure_topics(b.bootstrap, ALL_TOPICS, 4)
            yield b
        return
    yield request.getfixturevalue(_APACHE_FIXTURES[TEST_KAFKA])


@pytest.fixture(scope="session", autouse=TEST_KAFKA != "embedded")
def _commands_use_apache_kafka(request: pytest.FixtureRequest) -> Iterator[None]:
    """In the Apache modes: every wirestream command a test runs talks to the cluster and
    to the session's registry (the environment is inherited by the commands run as
    processes). One registry, as in a deployment: records a command writes to the shared
    topics carry schema ids that every later reader can resolve (with a registry of its
    own per command, ``analyze`` would leave records whose ids mean another schema, or
    nothing, to the tests after it)."""
    kafka = request.getfixturevalue(_APACHE_FIXTURES[TEST_KAFKA])
    registry = request.getfixturevalue("registry")
    names = ("WIRESTREAM_BOOTSTRAP", "WIRESTREAM_REGISTRY", "WIRESTREAM_REPLICATION_FACTOR")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["WIRESTREAM_BOOTSTRAP"] = kafka.bootstrap
    os.environ["WIRESTREAM_REGISTRY"] = registry.url
    os.environ["WIRESTREAM_REPLICATION_FACTOR"] = str(kafka.replication_factor)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # A failed test that ran against Apache Kafka: the brokers' log tails in its report,
    # and their directory kept for a closer look.
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    if TEST_KAFKA == "embedded" and not {"broker", *_APACHE_FIXTURES.values()} & set(item.fixturenames):
        return
    for kafka in _LIVE:
        kafka.keep = True
        report.sections.append((f"Apache Kafka, {kafka.brokers} broker(s)", kafka.logs_tail(20)))


@pytest.fixture(scope="session")
def registry() -> EmbeddedSchemaRegistry:
    with EmbeddedSchemaRegistry() as r:
        yield r
