"""Bring up what a command needs: a broker, a registry, topics and processor workers.

:class:`Runtime` is a context manager: everything it started is stopped on exit, also on
Ctrl-C and on errors, so no embedded broker or worker outlives the command.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wirestream.broker import EmbeddedBroker, check_reachable, ensure_topics
from wirestream.codec import AvroCodec
from wirestream.config import Settings
from wirestream.processes import die_with_parent
from wirestream.registry import EmbeddedSchemaRegistry
from wirestream.topics import ALL_TOPICS, TOPIC_SCHEMAS

#: Where a worker started here keeps Faust's data directory (see processors.app).
DATADIR_ENV = "WIRESTREAM_FAUST_DATADIR"


class Runtime:
    """The Kafka side of one command run."""

    def __init__(self, settings: Settings, worker_grace_s: float = 10.0) -> None:
        self.settings = settings
        self.bootstrap = settings.bootstrap or ""
        self.registry_url = settings.registry or ""
        self.embedded_broker: EmbeddedBroker | None = None
        self.embedded_registry: EmbeddedSchemaRegistry | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="wirestream-"))
        self._codec: AvroCodec | None = None
        #: How long workers get to shut down cleanly on exit. ``analyze`` sets it low: its
        #: workers are in a group of their own, with nothing left to commit once it is done.
        self.worker_grace_s = worker_grace_s

    def __enter__(self) -> Runtime:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop()
        # The work directory holds the broker's and the workers' logs: kept when the run
        # failed (error messages point there), removed otherwise.
        if exc_type is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def start(self) -> None:
        if not self.bootstrap:
            self.embedded_broker = EmbeddedBroker(log_path=self.workdir / "broker.log").start()
            self.bootstrap = self.embedded_broker.bootstrap
        check_reachable(self.bootstrap)
        if not self.registry_url:
            self.embedded_registry = EmbeddedSchemaRegistry().start()
            self.registry_url = self.embedded_registry.url
        ensure_topics(self.bootstrap, ALL_TOPICS, self.settings.partitions,
                      replication_factor=self.settings.replication_factor)
        for topic in ALL_TOPICS:  # fail early (and clearly) if the registry is unusable
            if topic in TOPIC_SCHEMAS:  # the dead-letter topic holds raw bytes, no schema
                self.codec.register(topic)

    @property
    def codec(self) -> AvroCodec:
        if self._codec is None:
            self._codec = AvroCodec(self.registry_url)
        return self._codec

    def start_workers(self, count: int, group: str, extra_args: list[str] | None = None) -> None:
        """Start ``count`` processor worker processes (``wirestream process``) in one group."""
        for _ in range(count):
            i = len(self.workers)
            log = open(self.workdir / f"worker-{i}.log", "wb")  # noqa: SIM115
            cmd = [
                sys.executable, "-m", "wirestream", "process",
                "--bootstrap", self.bootstrap,
                "--registry", self.registry_url,
                "--group", group,
                *(extra_args or []),
            ]
            env = {**os.environ, DATADIR_ENV: str(self.workdir / f"worker-{i}-data")}
            self.workers.append(
                subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, env=env, preexec_fn=die_with_parent())
            )
            log.close()

    def dead_worker(self) -> str | None:
        """If the embedded broker or a worker has exited, say so (a worker: with the tail
        of its log). Waiting for their reports would only time out."""
        if self.embedded_broker is not None and (code := self.embedded_broker.exit_code()) is not None:
            return f"the embedded broker exited with code {code} (log: {self.workdir / 'broker.log'})"
        for i, w in enumerate(self.workers):
            if w.poll() is not None:
                tail = (self.workdir / f"worker-{i}.log").read_text(errors="replace")[-2000:]
                return f"processor worker {i} exited with code {w.returncode}:\n{tail}"
        return None

    def stop(self) -> None:
        """Stop workers (SIGTERM, then SIGKILL after ``worker_grace_s``), registry and broker."""
        for w in self.workers:
            if w.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.worker_grace_s
        for w in self.workers:
            try:
                w.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.pid, signal.SIGKILL)
                w.wait()
        self.workers = []
        if self.embedded_registry is not None:
            self.embedded_registry.stop()
            self.embedded_registry = None
        if self.embedded_broker is not None:
            self.embedded_broker.stop()
            self.embedded_broker = None
