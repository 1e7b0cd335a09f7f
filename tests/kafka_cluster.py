"""A real Apache Kafka (KRaft) cluster on loopback ports, for the tests and for
``scripts/kafka run``.

``with ApacheKafka(brokers=3) as kafka: kafka.bootstrap`` -> ``"127.0.0.1:P1,127.0.0.1:P2,..."``.
Each node is a combined broker and controller (``process.roles=broker,controller``), a
child JVM of this process with its own data and log directory under one temporary
directory. The jars come from ``scripts/kafka fetch`` (Maven Central, cached in
/var/lib/wirestream/kafka); :func:`kafka_unavailable` says why a cluster cannot be had.

The three-broker cluster is set up as a production cluster would be for durability:
replication factor 3 for every topic (the default ones and the internal ones),
``min.insync.replicas=2``, so that a record acknowledged with ``acks=all`` is on at least
two brokers, and a broker can be killed (:meth:`ApacheKafka.kill`, SIGKILL) or stopped
(:meth:`~ApacheKafka.stop`, SIGTERM) and brought back (:meth:`~ApacheKafka.restart`)
while clients go on. The one-broker variant has replication 1. What is made smaller than
Kafka's defaults is only what makes a test cluster start fast and fit two cores: heap,
threads, internal topics' partition counts, the log cleaner's buffer, no initial
rebalance delay.

The JVMs are killed with this process however it ends (Linux's parent-death signal, as
wirestream.processes does for its own children), so a dead pytest leaves no broker behind.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from wirestream.loopback_ports import free_ports

REPO = Path(__file__).resolve().parent.parent
#: the release scripts/kafka fetches unless WIRESTREAM_KAFKA_VERSION says otherwise
KAFKA_VERSION = os.environ.get("WIRESTREAM_KAFKA_VERSION") or "4.4.0"
KAFKA_CACHE = Path(os.environ.get("WIRESTREAM_KAFKA_CACHE") or "/var/lib/wirestream/kafka")

#: the topic the readiness check creates and writes to (and leaves: it is tiny)
READY_TOPIC = "wirestream.cluster-ready"


def kafka_lib(fetch: bool = True) -> Path | None:
    """The directory of the Kafka jars: ``$WIRESTREAM_KAFKA_LIB``, else the cache of
    ``scripts/kafka fetch``, which is run when the cache is empty and ``fetch`` (a few
    seconds; scripts/install --test has normally done it). None if there are none."""
    given = os.environ.get("WIRESTREAM_KAFKA_LIB")
    if given:
        return Path(given) if (Path(given) / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file() else None
    lib = KAFKA_CACHE / KAFKA_VERSION / "lib"
    if (lib / ".complete").is_file():
        return lib
    if fetch and shutil.which("mvn") and shutil.which("java"):
        proc = subprocess.run([str(REPO / "scripts" / "kafka"), "fetch"], capture_output=True, text=True)
        if proc.returncode == 0 and (lib / ".complete").is_file():
            return lib
    return None


def kafka_unavailable() -> str | None:
    """None if an Apache Kafka cluster can be started here, otherwise why not."""
    if not shutil.which("java"):
        return "no Java (Apache Kafka needs Java 17 or newer)"
    if kafka_lib() is None:
        return (f"no Apache Kafka {KAFKA_VERSION} jars (scripts/kafka fetch: needs Maven and Maven Central; "
                "scripts/install --test runs it)")
    return None


# --- child processes that die with us ------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl


def _kill_when_parent_dies() -> None:
    # Between fork and exec: only this async-signal-safe call. SIGKILL, not the SIGTERM of
    # wirestream.processes.die_with_parent: a test cluster's data is thrown away, and three
    # brokers asked to shut down cleanly together wait on each other for many seconds.
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


LOG4J2 = """\
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
appender.file.type = File
appender.file.name = file
appender.file.fileName = {path}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
# the lines that say a node started, was fenced or unfenced, and who leads what
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
logger.cluster.name = org.apache.kafka.controller.ClusterControlManager
logger.cluster.level = INFO
"""


class OAuthValidation:
    """How the ``OAUTH`` listener verifies tokens: the identity provider's JWK set, and the
    issuer and audience a token must name (its ``sub`` is the principal)."""

    def __init__(self, jwks_url: str, issuer: str, audience: str) -> None:
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience


class SecureListeners:
    """Two more listeners on every node, besides PLAINTEXT (the tests' admin door, whose
    anonymous principal is a super user): ``SCRAM``, SASL_SSL with SCRAM-SHA-512, and
    ``MTLS``, SSL that requires a client certificate (its CN is the principal: a
    certificate for CN=wirestream is ``User:wirestream``). An authorizer
    (``StandardAuthorizer``) denies what no ACL allows; users and ACLs are added with
    :meth:`ApacheKafka.add_scram_user` and :meth:`ApacheKafka.allow_prefixed`.

    ``ca``: the CA's PEM certificate (to verify client certificates); ``keystore``: one PEM
    file with the brokers' unencrypted PKCS#8 key and certificate chain (Kafka's PEM
    key store, KIP-651), for 127.0.0.1."""

    def __init__(self, ca: str | Path, keystore: str | Path, oauth: OAuthValidation | None = None) -> None:
        self.ca = str(ca)
        self.keystore = str(keystore)
        #: with it, a third secure listener, ``OAUTH``: SASL_SSL with OAUTHBEARER, tokens
        #: verified with an identity provider's keys
        self.oauth = oauth

    def jvm_options(self) -> list[str]:
        # Kafka fetches a JWK set only from URLs the JVM is told it may (since 4.0)
        return [f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={self.oauth.jwks_url}"] if self.oauth else []

    def properties(self, plain: int, scram: int, mtls: int, controller: int, oauth: int) -> dict[str, str]:
        listeners = f"PLAINTEXT://127.0.0.1:{plain},SCRAM://127.0.0.1:{scram},MTLS://127.0.0.1:{mtls}"
        protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SCRAM:SASL_SSL,MTLS:SSL"
        extra: dict[str, str] = {}
        if self.oauth is not None:
            listeners += f",OAUTH://127.0.0.1:{oauth}"
            protocols += ",OAUTH:SASL_SSL"
            extra = {
                "listener.name.oauth.sasl.enabled.mechanisms": "OAUTHBEARER",
                "listener.name.oauth.oauthbearer.sasl.jaas.config":
                    "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;",
                "listener.name.oauth.oauthbearer.sasl.server.callback.handler.class":
                    "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler",
                "sasl.oauthbearer.jwks.endpoint.url": self.oauth.jwks_url,
                "sasl.oauthbearer.expected.audience": self.oauth.audience,
                "sasl.oauthbearer.expected.issuer": self.oauth.issuer,
            }
        return {
            "listeners": f"{listeners},CONTROLLER://127.0.0.1:{controller}",
            "advertised.listeners": listeners,
            "listener.security.protocol.map": protocols,
            **extra,
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.scram.sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.scram.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": self.keystore,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": self.ca,
            "listener.name.mtls.ssl.client.auth": "required",
            # CN=wirestream,O=... -> User:wirestream (the default is the whole DN)
            "ssl.principal.mapping.rules": "RULE:^CN=([a-zA-Z0-9._-]+).*$/$1/,DEFAULT",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # the PLAINTEXT and CONTROLLER listeners' principal: the brokers themselves and
            # the tests' admin client
            "super.users": "User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
        }


def _addresses(ports: list[int]) -> str:
    """Loopback listeners on ``ports``, comma-separated (librdkafka's bootstrap.servers)."""
    return ",".join(f"127.0.0.1:{p}" for p in ports)


class KafkaClusterError(RuntimeError):
    """The cluster did not start or recover in time; the message has the logs' tails."""


class ApacheKafka:
    """``brokers`` combined broker+controller nodes of Apache Kafka on 127.0.0.1.

    ``workdir``: where the nodes keep data and logs (default: a new temporary directory,
    removed by :meth:`close` unless :attr:`keep` is set, as the test fixtures do when a
    test using it failed). A given ``workdir`` is kept, and a cluster started again on it
    keeps its data (``scripts/kafka run --dir``). ``config``: more broker settings, for
    every node.
    """

    def __init__(self, brokers: int = 3, workdir: str | Path | None = None, heap_mb: int = 384,
                 config: dict[str, str] | None = None, log_level: str | None = None,
                 secure: SecureListeners | None = None) -> None:
        if brokers < 1:
            raise ValueError(f"brokers must be 1 or more, not {brokers}")
        self.brokers = brokers
        #: what wirestream's --replication-factor should be on this cluster
        self.replication_factor = min(3, brokers)
        self.min_insync_replicas = 2 if brokers >= 3 else 1
        #: a given directory: its data is for later runs (stopped cleanly, kept)
        self.persistent = workdir is not None
        #: keep the directory on close (the logs of a failed test)
        self.keep = self.persistent
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="wirestream-kafka-"))
        self.heap_mb = heap_mb
        self.extra_config = dict(config or {})
        self.log_level = log_level or os.environ.get("WIRESTREAM_KAFKA_LOG_LEVEL") or "WARN"
        ports_file = self.workdir / "ports"
        if ports_file.is_file():  # a kept directory: the same ports (the metadata names them)
            ports = [int(p) for p in ports_file.read_text().split()]
        else:
            ports = free_ports(5 * brokers)
        self.ports = ports[:brokers]  # clients
        self.controller_ports = ports[brokers:2 * brokers]
        #: with ``secure``: each node's SASL_SSL (SCRAM-SHA-512) and SSL (mutual TLS) listeners
        self.secure = secure
        self.scram_ports = ports[2 * brokers:3 * brokers]
        self.mtls_ports = ports[3 * brokers:4 * brokers]
        self.oauth_ports = ports[4 * brokers:5 * brokers]
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * brokers
        # Every JVM is started from this one thread, which lives until close(): the
        # parent-death signal fires when the *thread* that forked a child ends, and a test
        # may well restart a broker from a thread of its own.
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-spawner")
        self._lib: Path | None = None

    # --- addresses ---------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """Every node's client listener, comma-separated (librdkafka's bootstrap.servers)."""
        return _addresses(self.ports)

    @property
    def scram_bootstrap(self) -> str:
        """The SASL_SSL listeners (SCRAM-SHA-512 over TLS), with ``secure``."""
        return _addresses(self.scram_ports)

    @property
    def oauth_bootstrap(self) -> str:
        """The SASL_SSL listeners with OAUTHBEARER, with ``secure`` and its ``oauth``."""
        return _addresses(self.oauth_ports)

    @property
    def mtls_bootstrap(self) -> str:
        """The SSL listeners that require a client certificate, with ``secure``."""
        return _addresses(self.mtls_ports)

    def node_bootstrap(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i]}"

    def node_id(self, i: int) -> int:
        """The Kafka node.id of node ``i`` (0-based index here, 1-based ids there)."""
        return i + 1

    def log_path(self, i: int) -> Path:
        return self.workdir / f"node-{i}" / "server.log"

    # --- configuration -----------------------------------------------------------------

    def _properties(self, i: int) -> dict[str, str]:
        rf, isr = str(self.replication_factor), str(self.min_insync_replicas)
        voters = ",".join(f"{self.node_id(j)}@127.0.0.1:{p}" for j, p in enumerate(self.controller_ports))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id(i)),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.ports[i]},CONTROLLER://127.0.0.1:{self.controller_ports[i]}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.ports[i]}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.workdir / f"node-{i}" / "data"),
            # durability as in production: every topic on 3 brokers, an acks=all write on 2
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            # fast and small: a test's groups join at once; internal topics with few
            # partitions (created on first use, 50 each by default); fewer threads
            "group.initial.rebalance.delay.ms": "0",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.num.partitions": "4",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),  # 128 MiB by default, in a small heap
            # a killed broker is fenced (its partitions led elsewhere) after 5 s, not 9, and
            # it can register again that much sooner when restarted
            "broker.session.timeout.ms": "5000",
            "broker.heartbeat.interval.ms": "1000",
        }
        if self.secure is not None:
            props.update(self.secure.properties(self.ports[i], self.scram_ports[i], self.mtls_ports[i],
                                                self.controller_ports[i], self.oauth_ports[i]))
        props.update(self.extra_config)
        # for experiments: WIRESTREAM_TEST_KAFKA_BROKER_CONFIG="name=value,name=value" on every node
        for item in filter(None, (os.environ.get("WIRESTREAM_TEST_KAFKA_BROKER_CONFIG") or "").split(",")):
            name, _, value = item.partition("=")
            props[name.strip()] = value.strip()
        return props

    def _jvm(self, main: str, *args: str, log4j: Path | None = None) -> list[str]:
        assert self._lib is not None
        java = shutil.which("java") or "java"
        opts = [f"-Xmx{self.heap_mb}m", "-Xms64m", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError",
                # C1 only: a JVM that starts in ~2 s, not one tuned for peak throughput
                "-XX:TieredStopAtLevel=1", "-Xshare:auto", "-Djava.awt.headless=true"]
        if log4j is not None:
            opts.append(f"-Dlog4j2.configurationFile={log4j}")
        if self.secure is not None:
            opts += self.secure.jvm_options()
        return [java, *opts, "-cp", f"{self._lib}/*", main, *args]

    def _prepare(self) -> None:
        """Write every node's configuration and format its storage, once."""
        self._lib = kafka_lib()
        if self._lib is None:
            raise KafkaClusterError(kafka_unavailable() or "no Apache Kafka")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "ports").write_text(" ".join(map(str, self.ports + self.controller_ports)))
        id_file = self.workdir / "cluster-id"
        if not id_file.is_file():
            # a Kafka cluster id: 16 random bytes, base64url without padding
            import base64

            id_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        cluster_id = id_file.read_text().strip()
        formats = []
        for i in range(self.brokers):
            node = self.workdir / f"node-{i}"
            node.mkdir(exist_ok=True)
            props = node / "server.properties"
            props.write_text("".join(f"{k}={v}\n" for k, v in self._properties(i).items()))
            (node / "log4j2.properties").write_text(LOG4J2.format(level=self.log_level, path=self.log_path(i)))
            if (node / "data" / "meta.properties").is_file():
                continue  # formatted before (a kept directory)
            # all nodes at once: each format is a JVM start (~1 s of CPU)
            formats.append((i, subprocess.Popen(
                # (--cluster-id=ID: an id may start with "-", which a separate argument
                # would make an option: "expected one argument")
                self._jvm("kafka.tools.StorageTool", "format", "--ignore-formatted", f"--cluster-id={cluster_id}",
                          "-c", str(props), log4j=node / "log4j2.properties"),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_kill_when_parent_dies)))
        for i, proc in formats:
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise KafkaClusterError(f"formatting node {i} failed:\n{out.decode(errors='replace')[-3000:]}")

    # --- life cycle --------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> ApacheKafka:
        """Format what is not formatted, start every node, wait until the cluster is ready
        (:meth:`wait_ready`)."""
        try:
            self._prepare()
            for i in range(self.brokers):
                self._start_node(i)
            self.wait_ready(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _start_node(self, i: int) -> None:
        node = self.workdir / f"node-{i}"
        cmd = self._jvm("kafka.Kafka", str(node / "server.properties"), log4j=node / "log4j2.properties")
        out = open(node / "stdout.log", "ab")  # noqa: SIM115 - the child holds it

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True,  # Ctrl-C goes to us; we stop them
                                    preexec_fn=_kill_when_parent_dies)

        try:
            self._procs[i] = self._spawner.submit(spawn).result()
        finally:
            out.close()

    def alive(self, i: int) -> bool:
        proc = self._procs[i]
        return proc is not None and proc.poll() is None

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (a crash: no controlled shutdown, nothing flushed)."""
        proc, self._procs[i] = self._procs[i], None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

    def stop(self, i: int, timeout: float = 60.0) -> None:
        """SIGTERM node ``i`` and wait for its controlled shutdown (leadership moved away
        first); SIGKILL after ``timeout`` seconds."""
        proc, self._procs[i] = self._procs[i], None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)

    def restart(self, i: int, timeout: float = 120.0) -> None:
        """Start node ``i`` again (stopping it first if it runs) on its data, and wait
        until it is back in the cluster's metadata (registered and unfenced)."""
        self.stop(i)
        self._start_node(i)
        self.wait_serving(i, timeout)

    def close(self) -> None:
        """Kill every node (test data: nothing to shut down cleanly for) and remove the
        working directory unless :attr:`keep`; a :attr:`persistent` cluster is stopped
        (SIGTERM) and kept."""
        if self.persistent:
            # data that is kept: a controlled shutdown, all nodes at once, then SIGKILL
            for proc in self._procs:
                if proc is not None and proc.poll() is None:
                    proc.terminate()
            deadline = time.monotonic() + 30
            for proc in self._procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    if proc is not None:
                        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for i in range(self.brokers):
            self.kill(i)
        self._spawner.shutdown(wait=True)
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ApacheKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- waiting -----------------------------------------------------------------------

    def _admin(self, bootstrap: str | None = None) -> Any:
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": bootstrap or self.bootstrap, "socket.timeout.ms": 5000,
                            "log_level": 0, "logger": _Quiet()})

    def _check_alive(self) -> None:
        for i, proc in enumerate(self._procs):
            if proc is not None and proc.poll() is not None:
                raise KafkaClusterError(f"node {i} exited with code {proc.returncode}\n{self.logs_tail()}")

    def wait_brokers(self, timeout: float, ids: set[int] | None = None) -> None:
        """Wait until the metadata lists the brokers ``ids`` (default: all of them)."""
        ids = ids or {self.node_id(i) for i in range(self.brokers)}
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(Exception):
                seen = set(self._admin().list_topics(timeout=2).brokers)
                if ids <= seen:
                    return
            time.sleep(0.3)
        raise KafkaClusterError(f"brokers {sorted(ids - seen)} not in the metadata after {timeout:.0f} s "
                                f"(seen: {sorted(seen)})\n{self.logs_tail()}")

    def wait_serving(self, i: int, timeout: float = 120.0) -> None:
        """Wait until node ``i`` itself answers a metadata request listing itself: a KRaft
        broker serves clients once it has caught up with the metadata log and the
        controller has unfenced it. (The cluster's metadata still lists a killed broker
        until its session times out: no sign that it is back.)"""
        deadline = time.monotonic() + timeout
        me = self.node_id(i)
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(Exception):
                if me in self._admin(self.node_bootstrap(i)).list_topics(timeout=2).brokers:
                    return
            time.sleep(0.3)
        raise KafkaClusterError(f"node {i} does not serve after {timeout:.0f} s\n{self.logs_tail()}")

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until every broker is in the metadata and a topic with the cluster's
        replication factor can be created and written to with ``acks=all``."""
        from confluent_kafka import KafkaException, Producer
        from confluent_kafka.admin import NewTopic

        deadline = time.monotonic() + timeout
        self.wait_brokers(timeout)
        admin = self._admin()
        while True:
            self._check_alive()
            try:
                fut = admin.create_topics([NewTopic(READY_TOPIC, 1, self.replication_factor)],
                                          operation_timeout=10, request_timeout=15)[READY_TOPIC]
                fut.result()
                break
            except KafkaException as exc:
                if exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
                    break
                if time.monotonic() > deadline:
                    raise KafkaClusterError(f"cannot create {READY_TOPIC}: {exc}\n{self.logs_tail()}") from None
                time.sleep(0.5)
        producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all", "log_level": 0,
                             "logger": _Quiet(), "message.timeout.ms": int(max(1.0, deadline - time.monotonic()) * 1000)})
        errors: list[Any] = []
        producer.produce(READY_TOPIC, b"ready", on_delivery=lambda err, _msg: errors.append(err))
        producer.flush(max(1.0, deadline - time.monotonic()))
        if not errors or errors[0] is not None:
            raise KafkaClusterError(f"cannot write to {READY_TOPIC} with acks=all: {errors or 'timed out'}\n"
                                    f"{self.logs_tail()}")

    def wait_topics(self, topics: Iterable[str], timeout: float = 60.0) -> None:
        """Wait until every broker's metadata has ``topics``, each partition with a leader
        (a broker learns of a new topic from the controller a moment after it is created)."""
        wanted = set(topics)
        deadline = time.monotonic() + timeout
        missing: set[str] = wanted
        while time.monotonic() < deadline:
            self._check_alive()
            missing = set()
            for i in range(self.brokers):
                if not self.alive(i):
                    continue
                with contextlib.suppress(Exception):
                    md = self._admin(self.node_bootstrap(i)).list_topics(timeout=5).topics
                    missing |= {t for t in wanted if t not in md or not md[t].partitions
                                or any(p.leader < 0 for p in md[t].partitions.values())}
                    continue
                missing |= wanted
            if not missing:
                return
            time.sleep(0.2)
        raise KafkaClusterError(f"topics not in every broker's metadata after {timeout:.0f} s: {sorted(missing)}")

    def wait_in_sync(self, timeout: float = 120.0) -> None:
        """Wait until every partition of every topic has all its replicas in sync (after a
        broker came back: until then a second failure can lose acknowledged records)."""
        deadline = time.monotonic() + timeout
        lagging: list[str] = []
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(Exception):
                md = self._admin().list_topics(timeout=5)
                lagging = [f"{t.topic}[{p.id}] isr={sorted(p.isrs)} replicas={sorted(p.replicas)}"
                           for t in md.topics.values() for p in t.partitions.values()
                           if set(p.isrs) != set(p.replicas) or p.leader < 0]
                if not lagging and len(md.brokers) == self.brokers:
                    return
            time.sleep(0.5)
        raise KafkaClusterError(f"replicas not in sync after {timeout:.0f} s: {lagging[:10]}\n{self.logs_tail()}")

    # --- users and ACLs (with ``secure``) ------------------------------------------------

    def add_scram_user(self, name: str, password: str) -> None:
        """A SCRAM-SHA-512 user (through the PLAINTEXT listener, as a super user)."""
        from confluent_kafka.admin import (
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialUpsertion,
        )

        upsert = UserScramCredentialUpsertion(name, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                              password.encode())
        admin = self._admin()  # held until the futures resolve: a destroyed client fails them
        for fut in admin.alter_user_scram_credentials([upsert]).values():
            fut.result()

    def allow_prefixed(self, principal: str, topics: Iterable[str] = (), groups: Iterable[str] = (),
                       operations: Iterable[str] = ("ALL",)) -> None:
        """ACLs that allow ``principal`` (``User:NAME``) ``operations`` (names of
        confluent-kafka's ``AclOperation``: ALL, READ, WRITE, DESCRIBE, ...) on the topics
        and the consumer groups whose names start with one of the given prefixes."""
        from confluent_kafka.admin import (
            AclBinding,
            AclOperation,
            AclPermissionType,
            ResourcePatternType,
            ResourceType,
        )

        bindings = [AclBinding(kind, prefix, ResourcePatternType.PREFIXED, principal, "*", AclOperation[op],
                               AclPermissionType.ALLOW)
                    for kind, prefixes in ((ResourceType.TOPIC, list(topics)), (ResourceType.GROUP, list(groups)))
                    for prefix in prefixes for op in operations]
        admin = self._admin()
        for fut in admin.create_acls(bindings).values():
            fut.result()

    def allow_all(self, principal: str) -> None:
        """ACLs that allow ``principal`` every operation on every topic and group."""
        from confluent_kafka.admin import (
            AclBinding,
            AclOperation,
            AclPermissionType,
            ResourcePatternType,
            ResourceType,
        )

        admin = self._admin()
        bindings = [AclBinding(kind, "*", ResourcePatternType.LITERAL, principal, "*", AclOperation.ALL,
                               AclPermissionType.ALLOW) for kind in (ResourceType.TOPIC, ResourceType.GROUP)]
        for fut in admin.create_acls(bindings).values():
            fut.result()

    # --- what went wrong ---------------------------------------------------------------

    def logs_tail(self, lines: int = 30) -> str:
        """The last lines of every node's log, for a failure message."""
        parts = [f"Apache Kafka logs in {self.workdir}:"]
        for i in range(self.brokers):
            for path in (self.log_path(i), self.workdir / f"node-{i}" / "stdout.log"):
                if path.is_file() and path.stat().st_size:
                    tail = path.read_text(errors="replace").splitlines()[-lines:]
                    parts.append(f"--- node {i}: {path.name} ---")
                    parts.extend(tail)
        return "\n".join(parts)


class _Quiet:
    """librdkafka logs each refused connection while a node is down or starting."""

    def log(self, *args: object, **kwargs: object) -> None:
        pass

    def __getattr__(self, name: str) -> object:
        return self.log


def create_wirestream_topics(kafka: ApacheKafka, partitions: int = 4) -> None:
    """wirestream's topics, as ``wirestream process`` creates them, with the cluster's
    replication factor (the tests' fixtures; ``scripts/kafka run``)."""
    from wirestream.broker import ensure_topics
    from wirestream.topics import ALL_TOPICS

    ensure_topics(kafka.bootstrap, ALL_TOPICS, partitions, replication_factor=kafka.replication_factor)
    kafka.wait_topics(ALL_TOPICS)


def main(argv: list[str] | None = None) -> int:
    """``scripts/kafka run``: a cluster in the foreground until Ctrl-C."""
    p = argparse.ArgumentParser(prog="scripts/kafka run", description="Run Apache Kafka (KRaft) on loopback ports "
                                "until Ctrl-C, with wirestream's topics created.")
    p.add_argument("--brokers", type=int, choices=(1, 3), default=3, help="nodes (default: %(default)s)")
    p.add_argument("--dir", metavar="DIR", help="keep data and logs here (default: a temporary directory, removed)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of wirestream's topics (default: 4)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))  # wirestream, when run without the venv's editable install
    t0 = time.monotonic()
    with ApacheKafka(args.brokers, workdir=args.dir) as kafka:
        create_wirestream_topics(kafka, args.partitions)
        print(f"Apache Kafka {KAFKA_VERSION}: {kafka.brokers} broker(s) ready in {time.monotonic() - t0:.1f} s; "
              f"data and logs in {kafka.workdir}")
        print(f"replication factor {kafka.replication_factor}, min.insync.replicas {kafka.min_insync_replicas}")
        print(f"export WIRESTREAM_BOOTSTRAP={kafka.bootstrap} "
              f"WIRESTREAM_REPLICATION_FACTOR={kafka.replication_factor}")
        print("serving until Ctrl-C", flush=True)
        stop = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.append(1))
        while not stop:
            time.sleep(0.5)
            for i in range(kafka.brokers):
                if not kafka.alive(i):
                    print(f"node {i} exited\n{kafka.logs_tail()}", file=sys.stderr)
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
