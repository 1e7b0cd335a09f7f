"""A Faust transport tuned for short fetch waits.

Faust hard-codes a 1.5 s consumer fetch wait (``fetch_max_wait_ms=1500``) and the embedded
broker does not answer a waiting fetch early, so a caught-up worker would idle up to 1.5 s
per fetch. This transport is Faust's aiokafka transport with that wait set from
``FETCH_MAX_WAIT_MS`` (50 ms by default, ``WIRESTREAM_FETCH_WAIT_MS`` to change).
It is registered under the URL scheme ``wirestream://``.
"""

from __future__ import annotations

import os
from typing import Any

from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

FETCH_MAX_WAIT_MS = int(os.environ.get("WIRESTREAM_FETCH_WAIT_MS", "50"))
SCHEME = "wirestream"


class ShortFetchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = fetch_wait_ms  # read by aiokafka's Fetcher at start()
        return consumer


class ShortFetchConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ShortFetchConsumerThread:
        return ShortFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = ShortFetchConsumer


#: the wait this process's consumers use (see :func:`register`)
fetch_wait_ms = FETCH_MAX_WAIT_MS


def register(wait_ms: int | None = None) -> None:
    """Make ``wirestream://host:port`` broker URLs resolve to this transport, whose
    consumers wait up to ``wait_ms`` (default :data:`FETCH_MAX_WAIT_MS`) per fetch."""
    global fetch_wait_ms
    fetch_wait_ms = FETCH_MAX_WAIT_MS if wait_ms is None else wait_ms
    drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
