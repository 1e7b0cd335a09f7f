"""What a packet worker does with each ``wire.packets`` / ``wire.sockets`` / ``wire.drops`` /
``wire.tls-plaintext`` message:
decode it, route it to the :class:`~.engine.Engine` of its (source, partition), and,
when that source's input on the partition has ended, report on ``wire.stats`` (which is
how ``wirestream analyze`` knows a source has been processed).

Independent of how messages are consumed: the packet worker (``processors.packet_worker``,
which also checkpoints each partition's engines) and ``wirestream replay`` both use it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from wirestream.codec import AvroCodec
from wirestream.errors import DecodeError, RegistryError
from wirestream.packet_block import decode_batch
from wirestream.registry_client_security import (
    RegistryAuthError,
    RegistryConfigError,
    RegistryTLSError,
)
from wirestream.topics import DROPS, PACKETS_STAGE, SOCKETS, TLS_PLAINTEXT

from .drop_join import DropJoin
from .engine import Engine, EngineOptions, restore_partition_state, snapshot_engines
from .k8s_enrichment import Enricher
from .output import OutputPublisher
from .tls_plaintext_join import PlaintextRouter

STAGE = PACKETS_STAGE
log = logging.getLogger(__name__)


class PacketPipeline:
    """The engines of one worker, by (source, partition), and their reports.

    :meth:`handle` and :meth:`handle_socket_event` raise ``RegistryError`` when the schema
    registry cannot be asked, *before* anything changed: the caller waits and hands the
    same message again (a packet batch that cannot be decoded yet is not lost)."""

    def __init__(self, codec: AvroCodec, publisher: OutputPublisher,
                 options: EngineOptions | None = None, source_prefix: str = "",
                 enricher: Enricher | None = None) -> None:
        self.codec = codec
        self.publisher = publisher
        self.options = options or EngineOptions()
        # Only sources whose id starts with this (analyze's own workers on a shared Kafka).
        self.source_prefix = source_prefix
        self.enricher = enricher  # Kubernetes identities (None: records go out without)
        self.engines: dict[tuple[str, int], Engine] = {}
        # Messages of a partition this worker could not use that belong to no source (an
        # undecodable batch names none). Each is reported once, in the next final report
        # of that partition, then forgotten: consumers of wire.stats sum the reports, so a
        # count carried into every report would be multiplied.
        self.dropped: dict[int, Counter[str]] = {}
        # The kernel drops of each partition (wire.drops), one join shared by the
        # partition's engines: drops have a source id of their own, not the capture's.
        self.drop_joins: dict[int, DropJoin] = {}
        # The TLS plaintext chunks of each partition (wire.tls-plaintext, uprobes) waiting
        # for an engine that tracks their connection: another source id too.
        self.plaintext_routers: dict[int, PlaintextRouter] = {}

    def drop_join(self, partition: int) -> DropJoin:
        join = self.drop_joins.get(partition)
        if join is None:
            # Rows wait as long as a connection's final record can come after its last
            # packet (processors/drop_join.py).
            join = self.drop_joins[partition] = DropJoin(
                horizon_us=self.options.idle_timeout_us + self.options.close_linger_us)
        return join

    def plaintext_router(self, partition: int) -> PlaintextRouter:
        router = self.plaintext_routers.get(partition)
        if router is None:
            router = self.plaintext_routers[partition] = PlaintextRouter()
        return router

    def drop_counters(self) -> Counter[str]:
        """The drop joins' counters summed over the partitions held (``drops_unjoined``,
        ``drops_joined``, ...) and ``drops_pending``: drops held, not joined yet; the
        plaintext routers' likewise (``tls_plaintext_joined``, ``tls_plaintext_unjoined``,
        ``tls_plaintext_pending``)."""
        total: Counter[str] = Counter()
        for join in self.drop_joins.values():
            total.update(join.counters)
            total["drops_pending"] += join.pending
        for router in self.plaintext_routers.values():
            total.update(router.counters)
            total["tls_plaintext_pending"] += router.waiting
        return total

    def _engine(self, source_id: str, partition: int) -> Engine:
        key = (source_id, partition)
        engine = self.engines.get(key)
        if engine is None:
            engine = self.engines[key] = Engine(source_id, partition, self.options, self.publisher,
                                                self.enricher, self.drop_join(partition))
        return engine

    def _drop(self, partition: int, reason: str) -> None:
        self.dropped.setdefault(partition, Counter())[reason] += 1

    def _decoded(self, partition: int, value: bytes | None, topic: str, reason: str) -> dict[str, Any] | None:
        """One message of ``topic`` decoded, or None when it cannot be: counted as
        ``reason`` with a warning that names the topic (``RegistryError`` is raised: the caller waits)."""
        try:
            return self.codec.decode(value)
        except DecodeError as exc:
            self._drop(partition, reason)
            log.warning("skipping a %s message on partition %d: %s", topic, partition, exc)
            return None

    def handle(self, partition: int, value: bytes | None) -> None:
        """Process one ``wire.packets`` message. Counts bad input; raises only ``RegistryError``."""
        try:
            # (the headers and payloads as views of the message: not copied out of it)
            batch = self.codec.decode_views(value)
            headers, payloads = decode_batch(batch)
        except (DecodeError, ValueError) as exc:
            self._drop(partition, "malformed_batch")
            log.warning("skipping a wire.packets message on partition %d: %s", partition, exc)
            return
        source_id = batch["source_id"]
        if not source_id.startswith(self.source_prefix):
            self._drop(partition, "other_source")
            return
        engine = self._engine(source_id, partition)
        engine.feed(headers, payloads, batch["count"], batch.get("tunnel_of", b""), bytes(batch.get("tunnel_paths", b"")))
        router = self.plaintext_routers.get(partition)
        if router is not None and router.pending:  # plaintext that came before its connection's packets
            router.retry(self.partition_engines(partition))
        self.publisher.poll()
        if batch["end_of_input"]:
            engine.end_of_packets(batch)
            if engine.complete:
                self.end_of_input(source_id, partition)

    def handle_socket_event(self, partition: int, value: bytes | None) -> None:
        """Process one ``wire.sockets`` message. Counts bad input; raises only ``RegistryError``."""
        event = self._decoded(partition, value, SOCKETS, "malformed_socket_event")
        if event is None:
            return
        source_id = event["source_id"]
        if not source_id.startswith(self.source_prefix):
            self._drop(partition, "other_source")
            return
        engine = self._engine(source_id, partition)
        engine.socket_event(event)
        if event["end_of_input"] and engine.complete:
            self.end_of_input(source_id, partition)

    def handle_drop(self, partition: int, value: bytes | None) -> None:
        """Process one ``wire.drops`` message (any source: the drops producer is not the
        capture). Counts bad input; raises only ``RegistryError``."""
        drop = self._decoded(partition, value, DROPS, "malformed_drop")
        if drop is not None:
            self.drop_join(partition).add(drop)

    def handle_tls_plaintext(self, partition: int, value: bytes | None) -> None:
        """Process one ``wire.tls-plaintext`` message (any source: the uprobes producer is
        not the capture). Counts bad input; raises only ``RegistryError``."""
        chunk = self._decoded(partition, value, TLS_PLAINTEXT, "malformed_tls_plaintext")
        if chunk is not None:
            self.plaintext_router(partition).add(chunk, self.partition_engines(partition))

    def finish_all(self) -> None:
        """End every source still open, as its end marker would (a replay whose time range
        ends inside a source). A source waiting for its socket events' end marker ends with
        what it has."""
        for source_id, partition in list(self.engines):
            self.end_of_input(source_id, partition)

    def end_of_input(self, source_id: str, partition: int) -> None:
        """Finish the engine of ``source_id`` on ``partition`` and send its final report."""
        engine = self.engines.pop((source_id, partition))  # this source is done on this partition
        report = engine.finish()
        dropped = report.dropped
        dropped.update(self.dropped.pop(partition, {}))  # the partition's own drops, in this report only
        self.publisher.publish_stats(
            source_id=source_id,
            partition=partition,
            received=report.received,
            emitted=report.emitted,
            dropped=dict(dropped),
            counters=report.counters,
            final=True,
        )

    # --- checkpoints: a partition's engines, saved and restored together ----------------------

    def partition_engines(self, partition: int) -> list[Engine]:
        return [e for (_, p), e in self.engines.items() if p == partition]

    def snapshot_partition(self, partition: int) -> bytes:
        """``partition``'s engines and its drop join (:meth:`restore_partition` takes it)."""
        return snapshot_engines(self.partition_engines(partition), self.drop_joins.get(partition),
                                self.plaintext_routers.get(partition))

    def restore_partition(self, partition: int, state: bytes) -> None:
        """Replace ``partition``'s engines and drop join by those of a snapshot of them
        (:meth:`snapshot_partition`; a snapshot of engines alone restores too)."""
        self.forget_partition(partition)
        engines, join, router = restore_partition_state(state, self.options, self.publisher, self.enricher)
        if router is not None:
            self.plaintext_routers[partition] = router
        for engine in engines:
            if engine.partition != partition:
                from .state_codec import StateError

                raise StateError(f"a checkpoint of partition {partition} holds an engine of "
                                 f"partition {engine.partition}")
        # The engines share their partition's drop join, the snapshot's last item; a
        # checkpoint from before drops were joined has none: a new one for all of them.
        join = join or next((e.drops for e in engines if e.drops is not None), None) or self.drop_join(partition)
        self.drop_joins[partition] = join
        for engine in engines:
            engine.drops = join
            self.engines[(engine.source_id, partition)] = engine

    def take_partition(self, partition: int) -> tuple[dict[tuple[str, int], Engine], Counter[str], DropJoin | None,
                                                      PlaintextRouter | None]:
        """Remove ``partition``'s engines, unreported drops, drop join and plaintext
        router, and hand them over (to be given back with :meth:`put_partition` if the
        partition comes back unchanged)."""
        engines = {k: e for k, e in self.engines.items() if k[1] == partition}
        for key in engines:
            del self.engines[key]
        return (engines, self.dropped.pop(partition, Counter()), self.drop_joins.pop(partition, None),
                self.plaintext_routers.pop(partition, None))

    def put_partition(self, partition: int, engines: dict[tuple[str, int], Engine],
                      dropped: Counter[str], join: DropJoin | None = None,
                      router: PlaintextRouter | None = None) -> None:
        self.forget_partition(partition)
        self.engines.update(engines)
        if join is not None:
            self.drop_joins[partition] = join
        if router is not None:
            self.plaintext_routers[partition] = router
        if dropped:
            self.dropped[partition] = dropped

    def forget_partition(self, partition: int) -> None:
        """Drop ``partition``'s engines (another worker owns it now)."""
        for key in [k for k in self.engines if k[1] == partition]:
            del self.engines[key]
        self.dropped.pop(partition, None)
        self.drop_joins.pop(partition, None)
        self.plaintext_routers.pop(partition, None)



#: How long a worker waits before asking an unreachable schema registry again (doubling
#: from the first to the last).
REGISTRY_BACKOFF_S = (0.2, 5.0)


def when_registry_answers(call: Callable[[], object], waiting: str, *,
                          stopping: Callable[[], bool] = lambda: False,
                          waits: Counter[str] | None = None) -> bool:
    """``call()``, waiting (with backoff) while the schema registry is unreachable, with a
    one-line warning per retry that says what is ``waiting``. A registry that refuses this
    client (password, TLS, configuration) is raised at once: no wait fixes it. Returns False if
    ``stopping()`` said to give up first (``call`` did not complete). Each wait is counted
    as ``registry_waits`` in ``waits``."""
    delay, most = REGISTRY_BACKOFF_S
    while True:
        try:
            call()
            return True
        except (RegistryAuthError, RegistryTLSError, RegistryConfigError):
            raise  # a refused password or certificate does not get better by waiting
        except RegistryError as exc:
            if waits is not None:
                waits["registry_waits"] += 1
            log.warning("schema registry unavailable (%s): %s waits, retrying in %.1f s", exc, waiting, delay)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if stopping():
                    return False
                time.sleep(0.05)
            delay = min(delay * 2, most)


def handle_when_registry_answers(handle: Callable[[int, bytes | None], None], partition: int,
                                 value: bytes | None, *, stopping: Callable[[], bool] = lambda: False,
                                 waits: Counter[str] | None = None) -> bool:
    """``handle(partition, value)``, waiting while the schema registry is unreachable
    (:func:`when_registry_answers`): a batch that cannot be decoded yet is not dropped, and
    the worker never commits past it. False: stopped first, the message not processed."""
    return when_registry_answers(lambda: handle(partition, value), f"partition {partition}",
                                 stopping=stopping, waits=waits)
