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
  ``WIRESTREAM_TEST_KAFKA_LISTENER`` chooses the cluster's listener the tests and their
  commands use: ``plaintext`` (default), ``scram`` (SASL_SSL with SCRAM-SHA-512: the
  ``WIRESTREAM_KAFKA_*`` settings are set for the session, as a user sets them) or
  ``mtls`` (SSL with a client certificate); scripts/test's second run uses ``scram``.
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
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# tests/ on sys.path, here and nowhere else: the tests import their shared modules
# (helpers, oracle, captures, netns, ...) as plain top-level modules.
sys.path.insert(0, os.path.dirname(__file__))

from helpers import REQUIRE_ALL, require_or_skip  # noqa: E402
from kafka_cluster import ApacheKafka, SecureListeners, create_wirestream_topics, kafka_unavailable  # noqa: E402
from tls_certs import issue, make_ca  # noqa: E402

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


#: in the Apache modes, the listener the tests use: plaintext, scram or mtls
TEST_LISTENER = os.environ.get("WIRESTREAM_TEST_KAFKA_LISTENER", "plaintext") or "plaintext"
if TEST_LISTENER not in ("plaintext", "scram", "mtls"):
    raise pytest.UsageError(f"WIRESTREAM_TEST_KAFKA_LISTENER={TEST_LISTENER}: plaintext, scram or mtls")


class SecureAccess:
    """A test cluster's secure listeners, and the client settings for each: a user
    ``wirestream`` (SCRAM-SHA-512 password, and a client certificate for CN=wirestream)
    allowed everything (the ACLs that allow only wirestream's topics and groups are tested
    in tests/test_kafka_security.py)."""

    def __init__(self, kafka: ApacheKafka, files: Path, ca: Path, cert: Path, key: Path) -> None:
        self.bootstraps = {"plaintext": kafka.bootstrap, "scram": kafka.scram_bootstrap, "mtls": kafka.mtls_bootstrap}
        password = files / "password"
        password.write_text(secrets.token_urlsafe(18))
        kafka.add_scram_user("wirestream", password.read_text())
        kafka.allow_all("User:wirestream")
        self.env = {
            "plaintext": {},
            "scram": {"WIRESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "WIRESTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                      "WIRESTREAM_KAFKA_SASL_USERNAME": "wirestream",
                      "WIRESTREAM_KAFKA_SASL_PASSWORD_FILE": str(password), "WIRESTREAM_KAFKA_CA": str(ca)},
            "mtls": {"WIRESTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "WIRESTREAM_KAFKA_CA": str(ca),
                     "WIRESTREAM_KAFKA_CERT": str(cert), "WIRESTREAM_KAFKA_KEY": str(key)},
        }


class _Through:
    """A cluster seen through one of its listeners: ``.bootstrap`` is that listener's."""

    def __init__(self, kafka: ApacheKafka, bootstrap: str) -> None:
        self._kafka = kafka
        self.bootstrap = bootstrap

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kafka, name)


def _apache_kafka(brokers: int) -> Iterator[ApacheKafka]:
    reason = kafka_unavailable()
    if reason is not None:
        require_or_skip(f"Apache Kafka: {reason}")
    # every test cluster has its TLS+SCRAM and mutual-TLS listeners, with a CA of its own
    # (its keys and the SCRAM password are removed with the cluster: not left in /tmp)
    files = Path(tempfile.mkdtemp(prefix="wirestream-kafka-tls-"))
    try:
        ca = make_ca(files)
        cert, key = issue(ca, files, "broker")
        keystore = files / "broker-keystore.pem"  # Kafka's PEM key store: the key, then the chain
        keystore.write_text(key.read_text() + cert.read_text())
        client_cert, client_key = issue(ca, files, "wirestream", ["wirestream"], client=True)
        with ApacheKafka(brokers, secure=SecureListeners(ca.cert, keystore)) as kafka:
            _LIVE.append(kafka)
            try:
                kafka.access = SecureAccess(kafka, files, ca.cert, client_cert, client_key)
                create_wirestream_topics(kafka, 4)
                yield kafka
            finally:
                _LIVE.remove(kafka)
                # clients the tests left for the garbage collector go before the brokers do
                # (else librdkafka logs 'Connection refused' at the end of the session)
                gc.collect()
    finally:
        shutil.rmtree(files, ignore_errors=True)


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
    kafka = request.getfixturevalue(_APACHE_FIXTURES[TEST_KAFKA])
    yield kafka if TEST_LISTENER == "plaintext" else _Through(kafka, kafka.access.bootstraps[TEST_LISTENER])


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
    security = kafka.access.env[TEST_LISTENER]  # the listener's TLS and SASL settings
    names = ("WIRESTREAM_BOOTSTRAP", "WIRESTREAM_REGISTRY", "WIRESTREAM_REPLICATION_FACTOR", *security)
    saved = {k: os.environ.get(k) for k in names}
    os.environ["WIRESTREAM_BOOTSTRAP"] = kafka.access.bootstraps[TEST_LISTENER]
    os.environ["WIRESTREAM_REGISTRY"] = registry.url
    os.environ["WIRESTREAM_REPLICATION_FACTOR"] = str(kafka.replication_factor)
    os.environ.update(security)
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


@pytest.fixture(scope="session")
def kustomize() -> str:
    """The kustomize binary (scripts/kube-apiserver builds it), for the manifest tests."""
    from k8s_cluster import apiserver_unavailable, k8s_tool

    path = k8s_tool("kustomize")
    if path is None:
        require_or_skip(f"no kustomize: {apiserver_unavailable()}")
    return path
