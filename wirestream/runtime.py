"""Bring up what a command needs: a broker, a registry, topics and processor workers.

:class:`Runtime` is a context manager: everything it started is stopped on exit, also on
Ctrl-C and on errors, so no embedded broker or worker outlives the command.

Start-up in two steps, so that a one-shot run (``analyze``) overlaps them: :meth:`launch`
chooses the embedded broker's port and starts it, and serves the embedded registry, all
without waiting; workers can be started right then (they wait for the broker and the
topics themselves); :meth:`start` waits for the broker, creates the topics and registers
the schemas.
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
from typing import TYPE_CHECKING, BinaryIO

from wirestream.broker import EmbeddedBroker, check_reachable, ensure_topics
from wirestream.config import IDEMPOTENCE_ENV, Settings
from wirestream.kafka_security import check_for_embedded
from wirestream.packet_pipe import enlarge
from wirestream.processes import die_with_parent
from wirestream.registry import EmbeddedSchemaRegistry
from wirestream.topics import ALL_TOPICS, TOPIC_SCHEMAS

if TYPE_CHECKING:
    from wirestream.codec import AvroCodec
    from wirestream.packet_pipe import PacketPipes

#: Where a worker started here keeps Faust's data directory (see processors.app).
DATADIR_ENV = "WIRESTREAM_FAUST_DATADIR"


class Runtime:
    """The Kafka side of one command run."""

    def __init__(self, settings: Settings, worker_grace_s: float = 10.0, autostart: bool = True) -> None:
        """``autostart=False``: entering the context does not :meth:`start` (the caller
        calls :meth:`launch`, starts workers, then :meth:`start`)."""
        self.settings = settings
        self.bootstrap = settings.bootstrap or ""
        self.registry_url = settings.registry or ""
        self.autostart = autostart
        self.embedded_broker: EmbeddedBroker | None = None
        self.embedded_registry: EmbeddedSchemaRegistry | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._static_workers: set[int] = set()  # pids of statically assigned workers
        #: where a run's packet batches go when its workers read them from pipes
        #: (analyze on its own broker; wirestream/packet_pipe.py), else None
        self.packet_pipes: PacketPipes | None = None
        #: the reading ends of the workers' record pipes, if they were started with them
        #: (analyze on its own broker; wirestream/record_pipe.py)
        self.record_pipes: list[BinaryIO] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="wirestream-"))
        self._codec: AvroCodec | None = None
        #: How long workers get to shut down cleanly on exit. ``analyze`` sets it low: its
        #: workers are in a group of their own, with nothing left to commit once it is done.
        self.worker_grace_s = worker_grace_s

    def __enter__(self) -> Runtime:
        if self.autostart:
            try:
                self.start()
            except BaseException:
                self.stop()
                raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.stop()
        # The work directory holds the broker's and the workers' logs: kept when the run
        # failed (error messages point there) and there is a log to read, removed otherwise:
        # a run that failed before starting anything left an empty folder in /tmp, and an
        # interrupted one (Ctrl-C, SIGTERM: no error points anywhere) a folder of logs.
        failed = exc_type is not None and not issubclass(exc_type, KeyboardInterrupt)
        if not failed or not any(self.workdir.iterdir()):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def launch(self) -> None:
        """Start the embedded broker (if no bootstrap is configured) and the embedded
        registry (if no registry is), without waiting: their addresses are known from here
        on. Idempotent."""
        if not self.bootstrap:
            check_for_embedded()  # Kafka security settings are for an external Kafka
            self.embedded_broker = EmbeddedBroker(log_path=self.workdir / "broker.log").launch()
            self.bootstrap = self.embedded_broker.bootstrap
        if not self.registry_url:
            # bound at once (connections wait in its backlog), served from a thread
            self.embedded_registry = EmbeddedSchemaRegistry().start()
            self.registry_url = self.embedded_registry.url

    def start(self) -> None:
        """Launch (if not yet), wait for the broker, create the topics, register the schemas."""
        self.launch()
        if self.embedded_broker is not None:
            # Ours, listening: creating the topics is the first request (a separate
            # reachability check would cost a client of its own, ~0.1 s).
            self.embedded_broker.wait_listening()
        else:
            check_reachable(self.bootstrap)
        ensure_topics(self.bootstrap, ALL_TOPICS, self.settings.partitions,
                      replication_factor=self.settings.replication_factor)
        for topic in ALL_TOPICS:  # fail early (and clearly) if the registry is unusable
            if topic in TOPIC_SCHEMAS:  # the dead-letter topic holds raw bytes, no schema
                self.codec.register(topic)

    @property
    def producer_config(self) -> dict[str, object]:
        """librdkafka settings for this process's own producers of a run (a file's
        reports, the call chains): no idempotence unless :attr:`idempotent`."""
        return {} if self.idempotent else {"enable.idempotence": False}

    @property
    def idempotent(self) -> bool:
        """Whether the run's producers (this process's and its workers') are idempotent:
        not on the run's own embedded broker. Idempotence keeps a partition's order across
        a leader change, which one broker never has, and a new idempotent producer waits
        0.5–1 s for its producer id before its first delivery (librdkafka asks for it on a
        timer): a wait on the critical path of a short run, once per file, per worker and
        for the chains."""
        return self.embedded_broker is None

    def _worker_env(self, i: int) -> dict[str, str]:
        # The registry's URL in the environment, not on the command line: it may hold a
        # user and password (https://user:pw@...), and a command line shows in ps.
        env = {**os.environ, DATADIR_ENV: str(self.workdir / f"worker-{i}-data"),
               "WIRESTREAM_REGISTRY": self.registry_url}
        if not self.idempotent:
            env[IDEMPOTENCE_ENV] = "0"
        return env

    @property
    def codec(self) -> AvroCodec:
        if self._codec is None:
            # imported here: the codec's compiled readers and writers are not needed to
            # launch the broker and the workers, which analyze does first
            from wirestream.codec import AvroCodec

            self._codec = AvroCodec(self.registry_url)
        return self._codec

    def start_workers(self, count: int, group: str, extra_args: list[str] | None = None,
                      static: bool = False, packets_pipe: bool = False, records_pipe: bool = False) -> None:
        """Start ``count`` processor worker processes (``wirestream process``) in one group
        (``static``: workers with ``--assign``, in no group, stopped without a grace;
        ``packets_pipe``: each reads its packet batches from its stdin, a pipe this
        process writes: ``self.workers[i].stdin``, wirestream/packet_pipe.py;
        ``records_pipe``: each writes its output records and reports to a pipe this
        process reads: ``self.record_pipes``, wirestream/record_pipe.py)."""
        for _ in range(count):
            i = len(self.workers)
            log = open(self.workdir / f"worker-{i}.log", "wb")  # noqa: SIM115
            read_end = write_end = None
            if records_pipe:
                read_end, write_end = os.pipe()
                # 1 MiB: a worker's flush (up to 1 MiB of records) is written while this
                # process is busy decoding the last one, not in 64 KiB steps it waits on
                enlarge(read_end)
            cmd = [
                sys.executable, "-m", "wirestream", "process",
                "--bootstrap", self.bootstrap,
                "--group", group,
                *(extra_args or []),
                *(["--packets-from-stdin"] if packets_pipe else []),
                *(["--records-to-fd", str(write_end)] if write_end is not None else []),
            ]
            env = self._worker_env(i)
            try:
                self.workers.append(
                    subprocess.Popen(cmd, stdin=subprocess.PIPE if packets_pipe else subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                     preexec_fn=die_with_parent(),
                                     pass_fds=(write_end,) if write_end is not None else ())
                )
            except BaseException:
                if read_end is not None:
                    os.close(read_end)
                raise
            finally:
                # the worker's end is the worker's alone: the pipe ends when it exits
                if write_end is not None:
                    os.close(write_end)
            if read_end is not None:
                self.record_pipes.append(os.fdopen(read_end, "rb", buffering=0))
            if static:
                self._static_workers.add(self.workers[-1].pid)
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
        """Stop workers (SIGTERM, then SIGKILL after ``worker_grace_s``; statically assigned
        ones: SIGKILL), registry and broker."""
        for w in self.workers:
            if w.poll() is None:
                # A statically assigned worker (--assign) has nothing to commit or hand
                # over (no group, no checkpoints), and what it published has been read or
                # is not wanted any more: it is killed, not asked (a Python process with
                # its Kafka clients takes ~0.15 s to exit cleanly).
                static = w.pid in self._static_workers
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.pid, signal.SIGKILL if static else signal.SIGTERM)
        deadline = time.monotonic() + self.worker_grace_s
        for w in self.workers:
            try:
                w.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.pid, signal.SIGKILL)
                w.wait()
            if w.stdin is not None:  # a packet pipe (what is left in it is not wanted)
                with contextlib.suppress(OSError):
                    w.stdin.close()
        self.workers = []
        self._static_workers = set()
        for stream in self.record_pipes:  # (their readers' threads end with them)
            with contextlib.suppress(OSError):
                stream.close()
        self.record_pipes = []
        if self.embedded_registry is not None:
            self.embedded_registry.stop()
            self.embedded_registry = None
        if self.embedded_broker is not None:
            self.embedded_broker.stop()
            self.embedded_broker = None
