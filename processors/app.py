"""The Faust application: processor workers that consume ``wire.packets``.

Run it with ``wirestream process`` (several workers may join the same group; partitions
are shared among them). An agent reads like what it does::

    for each batch of packets on wire.packets:
        track the TCP connections of its partition, and publish closed ones
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile

import faust

from wirestream.codec import AvroCodec
from wirestream.runtime import DATADIR_ENV
from wirestream.topics import PACKETS

from . import faust_transport
from .l7.base import L7Options
from .output import OutputPublisher
from .packet_pipeline import STAGE, PacketPipeline


def create_app(
    bootstrap: str,
    registry_url: str,
    group: str = "wirestream-processors",
    idle_timeout_s: float = 300.0,
    close_linger_s: float = 10.0,
    interim_s: float = 0.0,
    source_prefix: str = "",
    l7_options: L7Options | None = None,
) -> faust.App:
    faust_transport.register()
    # Faust makes a data directory even for memory tables: not in the current directory,
    # but in the work directory of the command that started us, or a temporary one.
    datadir = os.environ.get(DATADIR_ENV) or tempfile.mkdtemp(prefix="wirestream-faust-")
    app = faust.App(
        group,
        broker=f"{faust_transport.SCHEME}://{bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,  # no web server: several workers can run on one host
        # A group join takes about half the session timeout on the embedded broker.
        broker_session_timeout=2.0,
        broker_heartbeat_interval=0.5,
        broker_request_timeout=30.0,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,  # wirestream creates its topics before workers start
        producer_max_batch_size=1,  # exact table recovery on the embedded broker
        store="memory://",
        datadir=datadir,
    )
    packets = app.topic(PACKETS, value_serializer="raw", key_serializer="raw")
    state: dict[str, PacketPipeline] = {}

    @app.on_configured.connect
    def _quiet(app: faust.App, conf: object, **kwargs: object) -> None:
        logging.getLogger("faust").setLevel(logging.WARNING)

    def pipeline() -> PacketPipeline:
        # Created in the worker (not at import), after fork-safe startup.
        if "p" not in state:
            codec = AvroCodec(registry_url)
            state["p"] = PacketPipeline(
                codec,
                OutputPublisher(bootstrap, codec, STAGE),
                idle_timeout_us=int(idle_timeout_s * 1e6),
                close_linger_us=int(close_linger_s * 1e6),
                interim_us=int(interim_s * 1e6),
                source_prefix=source_prefix,
                l7_options=l7_options,
            )
        return state["p"]

    @app.agent(packets, name="analyse-packets")
    async def analyse_packets(batches: faust.Stream) -> None:
        """For each batch of packets: track TCP connections and their L7 transactions;
        at end of input, report."""
        async for event in batches.events():
            pipeline().handle(event.message.partition, event.value)

    return app


def run_worker(app: faust.App, loglevel: str = "warning") -> None:
    """Run a Faust worker for ``app`` in the foreground until SIGINT/SIGTERM."""
    from faust.worker import Worker

    # Connection state is many small long-lived objects: with the default thresholds the
    # cyclic GC rescans them all the time (~19 % of the CPU with 100k open connections).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
