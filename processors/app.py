"""The Faust application: the per-service windows and processor plugins.

Run it with ``wirestream process --role windows`` (several workers may join the same
group; partitions are shared among them, the windows' table recovered from its changelog).
An agent reads like what it does::

    for each batch of observations on wire.observations:
        add them to their service's window, and close the windows the watermark has passed

The packet workers are not Faust agents (``processors.packet_worker``). The workers of one
``analyze`` or ``capture`` run keep their windows without Faust
(``processors.windows_worker``): no group, no changelog, none of Faust's start-up.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import faust

from wirestream import kafka_security
from wirestream.codec import AvroCodec
from wirestream.errors import DecodeError, RegistryError
from wirestream.gc_policy import collect_rarely
from wirestream.runtime import DATADIR_ENV
from wirestream.topics import OBSERVATIONS, WINDOWS_STAGE

from . import faust_transport
from .output import OutputPublisher
from .service_windows import ServiceWindows, WindowOptions
from .windows_worker import publish_final_report

WINDOWS_TABLE = "service-windows"
log = logging.getLogger(__name__)


def create_app(
    bootstrap: str,
    registry_url: str,
    group: str = "wirestream-processors",
    observation_partitions: int = 4,
    window_options: WindowOptions | None = None,
    windows: bool = True,
    plugins: tuple[str, ...] = (),
    session_timeout_s: float = 10.0,
) -> faust.App:
    """The Faust app of the per-service windows (``windows``) and of processor
    ``plugins`` (entry point names). Its topics (and the windows' changelog topic,
    :func:`changelog_topic`) must exist: wirestream creates them, Faust does not.

    The packet workers are not Faust agents: see :mod:`.packet_worker`. Keep the windows
    in a process of their own (``--role windows``): the embedded broker's cost per fetch
    grows with the partitions named in it, and the packet workers fetch all the time."""
    # The windows take batches and emit per window: a fetch may wait longer, which saves
    # the broker a request per partition every 50 ms (docs/embedded-broker.md).
    faust_transport.register(max(faust_transport.FETCH_MAX_WAIT_MS, 500) if windows else None)
    # Faust makes a data directory even for memory tables: not in the current directory,
    # but in the work directory of the command that started us, or a temporary one, ours
    # to remove when the process ends (every worker started by hand left one in /tmp).
    datadir = os.environ.get(DATADIR_ENV)
    if not datadir:
        datadir = tempfile.mkdtemp(prefix="wirestream-faust-")
        atexit.register(shutil.rmtree, datadir, ignore_errors=True)
    app = faust.App(
        group,
        broker=f"{faust_transport.SCHEME}://{bootstrap}",
        broker_client_id="wirestream-faust",  # wire.messaging's own_traffic (processors/l7/kafka.py)
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,  # no web server: several workers can run on one host
        # A group join takes about half the session timeout on the embedded broker, so
        # analyze asks for 2 s there; Apache Kafka refuses less than 6 s
        # (group.min.session.timeout.ms).
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=max(0.5, session_timeout_s / 4),
        broker_request_timeout=30.0,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,  # wirestream creates its topics before workers start
        producer_max_batch_size=1,  # exact table recovery on the embedded broker
        producer_max_request_size=4 * 1024 * 1024,  # a busy window's state (digests, clients)
        store="memory://",
        datadir=datadir,
        # TLS and SASL as every other client of this process (wirestream.kafka_security)
        broker_credentials=kafka_security.security().faust_credentials(),
    )
    state: dict[str, Any] = {}

    @app.on_configured.connect
    def _quiet(app: faust.App, conf: object, **kwargs: object) -> None:
        logging.getLogger("faust").setLevel(logging.WARNING)

    def codec() -> AvroCodec:
        if "codec" not in state:
            state["codec"] = AvroCodec(registry_url)
        return state["codec"]

    if windows:
        _windows_agent(app, state, codec, bootstrap, observation_partitions, window_options)
    for name in plugins:
        _plugin_agent(app, codec, bootstrap, name)
    return app


def _plugin_agent(app: faust.App, codec: Callable[[], AvroCodec], bootstrap: str,
                  name: str) -> None:
    """Run processor plugin ``name`` (wirestream/plugins.py) inside this worker: an agent on
    its inputs, its outputs encoded with its own schemas. The inputs come in batches; a
    batch's outputs are delivered before Faust may commit its inputs (at least once, as
    :func:`wirestream.plugins.run_plugin`)."""
    from wirestream.kafka import WireProducer
    from wirestream.plugins import BATCH_RECORDS, BATCH_WAIT_S, check_delivered, load, plugin_emit

    plugin = load(name)
    inputs = app.topic(*plugin.inputs, value_serializer="raw", key_serializer="raw")

    @app.agent(inputs, name=f"plugin-{name}")
    async def run_plugin(messages: faust.Stream) -> None:
        """For each batch of records of the plugin's inputs: hand them to the plugin, one by
        one, then wait until what it emitted is delivered."""
        producer = WireProducer(bootstrap, **{"linger.ms": 20})
        emit = plugin_emit(plugin, codec(), producer)
        # take_events acks a batch's events (so they may be committed) when the next batch
        # is asked for, after the flush below.
        async for batch in messages.take_events(BATCH_RECORDS, within=BATCH_WAIT_S):
            for event in batch:
                try:
                    record = codec().decode(event.value)
                except (DecodeError, RegistryError) as exc:
                    log.warning("plugin %s: skipping an undecodable message: %s", name, exc)
                    continue
                key = event.key.decode(errors="replace") if event.key is not None else None
                plugin.process(event.message.topic, key, record, emit)
            check_delivered(plugin, producer)


def _windows_agent(app: faust.App, state: dict[str, Any], codec: Callable[[], AvroCodec],
                   bootstrap: str, observation_partitions: int,
                   window_options: WindowOptions | None) -> None:
    observations = app.topic(OBSERVATIONS, value_serializer="raw", key_serializer="raw")
    # Open windows and per-source watermarks; restored from its changelog on restart.
    window_table = app.Table(WINDOWS_TABLE, default=None, partitions=observation_partitions,
                             key_type=bytes, value_type=bytes)  # raw: the app default

    @app.on_partitions_revoked.connect
    def _partitions_moved(app: faust.App, revoked: object, **kwargs: object) -> None:
        if "w" in state:
            state["w"][0].clear_cache()  # the table is the truth; our copies may go stale

    def windows() -> tuple[ServiceWindows, OutputPublisher]:
        if "w" not in state:
            publisher = OutputPublisher(bootstrap, codec(), WINDOWS_STAGE)
            state["w"] = (ServiceWindows(BytesKeys(window_table), publisher.emit, window_options),
                          publisher)
        return state["w"]

    @app.agent(observations, name="service-windows")
    async def service_windows(batches: faust.Stream) -> None:
        """For each batch of observations: add them to their service's window, close the
        windows the watermark has passed (metrics and alerts); at end of input, report."""
        async for event in batches.events():
            msg = event.message
            try:
                batch = codec().decode(event.value)
            except (DecodeError, RegistryError) as exc:
                log.warning("skipping a wire.observations message at %d/%d: %s",
                            msg.partition, msg.offset, exc)
                continue
            w, publisher = windows()
            done = w.handle(batch, msg.partition, msg.offset)
            publisher.poll()
            if done is not None:
                publish_final_report(publisher, batch["source_id"], msg.partition, done)


def changelog_topic(group: str) -> str:
    """The Kafka topic of the windows table of consumer group ``group`` (Faust's naming)."""
    return f"{group}-{WINDOWS_TABLE}-changelog"


class BytesKeys(MutableMapping[str, bytes]):
    """A Faust table with bytes keys (its raw serializer), used with str keys."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def __getitem__(self, key: str) -> bytes:
        value = self.table[key.encode()]
        if value is None:
            raise KeyError(key)
        return value  # type: ignore[no-any-return]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.table.get(key.encode())
        return default if value is None else value

    def __setitem__(self, key: str, value: bytes) -> None:
        self.table[key.encode()] = value

    def __delitem__(self, key: str) -> None:
        del self.table[key.encode()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.table.get(key.encode()) is not None

    def __iter__(self) -> Iterator[str]:
        return (k.decode() for k in self.table)

    def __len__(self) -> int:
        return len(self.table)


def run_worker(app: faust.App, loglevel: str = "warning") -> None:
    """Run a Faust worker for ``app`` in the foreground until SIGINT/SIGTERM."""
    from faust.worker import Worker

    # Connection state is many small long-lived objects (wirestream/gc_policy.py).
    collect_rarely(freeze=True)
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
