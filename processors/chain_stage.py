"""``wirestream chains``: the call-chain stage. Consumes ``wire.transactions`` and
``wire.connections`` (for their pids: live capture's socket join fills those) (every
partition, as a consumer group: several instances share them, but a chain's hops must
then meet in one instance, see below), links them with
:class:`wirestream.processors.call_chains.ChainBuilder` and publishes ``wire.call-chains``;
counters on ``wire.stats`` (stage ``processor.chains``) every ``stats_interval_s`` and
finally.

Built on :class:`wirestream.sinks.base.BatchSink` (consume, decode, write, commit after
the write, dead letters): its "destination" is the builder and ``wire.call-chains``.

Time: event time. The watermark is the latest response time seen; a chain is published
once its root ended ``lateness`` before it. A stream that goes quiet (the end of a capture
file, a night without traffic) would hold its last chains forever, so after
``idle_flush_s`` of wall time without a transaction everything held is published.

What is not guaranteed: the transactions held in memory are not checkpointed. Their
input offsets are committed when they were taken in, so a crash loses the chains not yet
published (a restarted stage starts from the committed offsets). wire.transactions is
keyed (and partitioned) by connection id, so the hops of one chain are on different
partitions: run one instance (it reads every partition), or several only if losing the
links between hops that land in different instances is acceptable.
"""

from __future__ import annotations

import time
from typing import Any

from wirestream.processors.call_chains import DEFAULT_LATENESS_US, DEFAULT_MAX_HELD, ChainBuilder
from wirestream.processors.output import OutputPublisher
from wirestream.sinks.base import BatchSink, Item

from wirestream.topics import CALL_CHAINS, CHAINS_STAGE, CONNECTIONS, TRANSACTIONS


class ChainStage(BatchSink):
    name = "chains"

    def __init__(self, bootstrap: str, registry: str, group: str = "wirestream-chains",
                 lateness_us: int = DEFAULT_LATENESS_US, max_held: int = DEFAULT_MAX_HELD,
                 idle_flush_s: float = 10.0, stats_interval_s: float = 10.0, from_beginning: bool = True,
                 min_hops: int = 2) -> None:
        # write (link, publish) at least every second: a chain is due when the watermark
        # passes it, and the batch is what moves the watermark
        super().__init__(bootstrap, registry, [TRANSACTIONS, CONNECTIONS], group, flush_records=5_000, flush_seconds=1.0,
                         from_beginning=from_beginning)
        self.builder = ChainBuilder(lateness_us=lateness_us, max_held=max_held, min_hops=min_hops)
        self.publisher = OutputPublisher(bootstrap, self.codec, CHAINS_STAGE)
        self.source_id = f"chains:{group}"
        self.watermark_us = 0
        self.idle_flush_s = idle_flush_s
        self.stats_interval_s = stats_interval_s
        self.last_record = time.monotonic()
        #: the group has given this instance its partitions (a join takes seconds: idle
        #: time counts from then)
        self.assigned = False
        self._last_stats = time.monotonic()

    def write(self, batch: list[Item]) -> None:
        add = self.builder.add
        for item in batch:
            rec = item.record
            self.written[item.topic] += 1
            if item.topic == CONNECTIONS:
                self.builder.add_connection(rec)
                continue
            add(rec)
            end = rec.get("response_ts_us") or rec.get("request_ts_us") or 0
            if end > self.watermark_us:
                self.watermark_us = end
        self.last_record = time.monotonic()
        self._publish(self.builder.advance(self.watermark_us))

    def step(self, timeout: float = 0.5) -> None:
        super().step(timeout)
        now = time.monotonic()
        if not self.assigned and self._consumer.assignment():
            self.assigned = True
            self.last_record = now
        if len(self.builder) and now - self.last_record >= self.idle_flush_s and not self._batch:
            self.counters["idle_flushes"] += 1
            self._publish(self.builder.flush())
        if now - self._last_stats >= self.stats_interval_s:
            self.report(final=False)

    def _publish(self, chains: list[dict[str, Any]]) -> None:
        for chain in chains:
            self.publisher.emit(CALL_CHAINS, chain["root_id"], chain)
        if chains:
            # delivered before the batch's offsets are committed (BatchSink commits after write)
            self.publisher.flush()

    def report(self, final: bool) -> dict[str, Any]:
        """Counters since the start (the builder's, and dead letters) to ``wire.stats``."""
        counters = dict(self.builder.counters)
        counters.update(self.counters)
        counters["held"] = len(self.builder)
        received = counters.pop("received", 0)
        evicted = counters.pop("evicted", 0)
        self._last_stats = time.monotonic()
        return self.publisher.publish_stats(
            source_id=self.source_id, partition=-1, received=received,
            emitted={CALL_CHAINS: self.publisher.emitted.get(CALL_CHAINS, 0)},
            dropped={"evicted": evicted} if evicted else {}, counters=counters, final=final)

    def close_destination(self) -> None:
        """At the end: every chain still held is published, then the final report."""
        self._publish(self.builder.flush())
        self.report(final=True)
