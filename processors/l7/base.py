"""What every L7 analyser gets and gives: the shared interface of ``processors/l7``.

A TCP analyser sees one connection as two byte streams. Direction ``0`` is the sender of
the first packet of the connection, ``1`` the other side; the analyser decides from the
bytes which side is the client (who sent the request or the ClientHello) and fills
``client_*``/``server_*`` from :attr:`StreamContext.ips` / :attr:`StreamContext.ports`.

Records are emitted as plain dicts through :attr:`StreamContext.emit` with the fields of
the topic's schema that the analyser knows; the caller adds ``source_id`` and the
identity fields (pod, process, ...) that enrichment fills later.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: emit(topic, key, record)
Emit = Callable[[str, str, dict[str, Any]], None]


@dataclass(frozen=True)
class L7Options:
    """Switches shared by all L7 analysers (``wirestream process``/``analyze`` options)."""

    #: Mask credentials, cookies, API keys, token-like query parameters and card numbers.
    redact: bool = True
    #: Bytes of each HTTP body kept in the record (true sizes are always recorded).
    body_cap: int = 64 * 1024
    #: ... of response bodies, when different (``analyze`` without ``--out`` keeps
    #: request bodies, where credentials and card numbers are detected, but not responses).
    response_body_cap: int | None = None
    #: A request still unanswered this long (capture time) is emitted with ``no_response``.
    response_timeout_us: int = 60_000_000
    #: A DNS query unanswered this long is emitted with a null response.
    dns_timeout_us: int = 10_000_000
    #: Largest HTTP header block accepted before the message is a ``parse_error``.
    max_header_bytes: int = 64 * 1024
    #: Seed of the DNS records' Community ID (``--community-id-seed``; the TCP
    #: tracker's is ``EngineOptions.community_id_seed``, set from the same setting).
    community_id_seed: int = 0
    #: TLS key log (``--tls-keylog``, an NSS key log read once: ``_core.TlsKeyLog``):
    #: TLS connections whose secrets it has are decrypted and their HTTP/1.x analysed
    #: (records marked ``tls``). None: no decryption. Its repr shows counts only.
    tls_keylog: Any = None


@dataclass
class StreamContext:
    """One TCP connection as an analyser sees it."""

    #: Text addresses of the sender of direction 0 and of direction 1.
    ips: tuple[str, str]
    ports: tuple[int, int]
    #: The ``connection_id`` the connection's own record carries (computed on demand,
    #: because the client/server roles can be settled after the first payload).
    connection_id: Callable[[], str]
    emit: Emit
    options: L7Options
    #: Named counters: parse errors by protocol and reason, records by kind, ...
    stats: Counter[str] = field(default_factory=Counter)
    #: The connection's Community ID (the core computes it once, at the session's
    #: start); every L7 record of the connection carries it. None in a session restored
    #: from a checkpoint written before the field existed.
    community_id: str | None = None
    #: What the connections of one partition share (L7Dispatcher.shared): Kafka's topic
    #: names by topic id (``kafka.topic_names``), learnt from any connection's Metadata.
    shared: dict[str, Any] = field(default_factory=dict)

    def _state_restored(self) -> None:
        # a context of a checkpoint written before ``shared`` existed: one of its own
        if "shared" not in self.__dict__:
            self.shared = {}


class StreamAnalyzer:
    """Base class of TCP analysers. Subclasses override the ``on_*`` hooks."""

    #: Short protocol name, used in counters (``http``, ``tls``, ``dns``).
    protocol = "tcp"

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx

    def on_data(self, direction: int, data: bytes, ts_us: int) -> None:
        """In-order bytes of one direction; ``ts_us`` is the capture time of the segment
        that carried them. Called once per (part of a) segment, in capture order."""

    def on_gap(self, direction: int, missing: int, ts_us: int) -> None:
        """``missing`` bytes of this direction were never captured. The analyser ends
        the message in progress with ``error: gap`` and resynchronises on the next
        message boundary it can recognise."""

    def tick(self, now_us: int) -> None:
        """Capture time has advanced (called from the tracker's periodic sweep): emit
        what has timed out (``no_response``)."""

    def on_close(self, ts_us: int) -> None:
        """The connection ended (FIN/RST, idle timeout or end of input): emit everything
        still pending. No more calls follow."""

    def direct_core(self) -> Any:
        """The compiled core the connection tracker may hand this connection's in-order
        data and ticks to itself, without this analyser's hooks (``TcpTracker.l7_attach``);
        what completed then comes back through :meth:`on_core_output`. None (the default):
        everything goes through the hooks."""
        return None

    def on_core_output(self, out: Any, ts_us: int, handoff: bool) -> None:
        """What the :meth:`direct_core` returned for data or a tick the tracker gave it
        (None: nothing but the handoff); ``handoff``: the core switched protocol, and the
        tracker gives the rest to the hooks again."""
        raise NotImplementedError


class CoreBackedAnalyzer(StreamAnalyzer):
    """An analyser whose parsing state is a compiled-core object (``self._core``, with
    ``snapshot()`` and a ``restore(bytes)`` of its class): the core's own versioned bytes
    go into a checkpoint (``_state_prepare``) and the object is rebuilt from them on
    restore (``_state_restored``); processors/state_codec.py. Subclasses set ``_core``
    and ``_core_state = b""`` in ``__init__`` and may override :meth:`_restore_core`."""

    _state_exclude = ("_core",)
    #: the core's class (its ``restore(bytes)`` rebuilds one)
    _core_class: Any = None
    _core: Any
    _core_state: bytes

    def _restore_core(self, data: bytes) -> Any:
        return self._core_class.restore(data)

    def _state_prepare(self) -> None:
        self._core_state = self._core.snapshot()

    def _state_restored(self) -> None:
        from ..state_codec import StateError  # (state_codec does not import the analysers)

        try:
            self._core = self._restore_core(self._core_state)
        except ValueError as exc:
            raise StateError(f"{self.protocol} analyser: {exc}") from None
        self._core_state = b""


def query_record(ctx: StreamContext, client: int, seq: int, protocol: str) -> dict[str, Any]:
    """The fields every ``wire.queries`` record of a connection shares (its ids, its two
    ends, the protocol, the SQL fields null), for the analysers to complete: the
    ``query_id`` is a hash of the connection id and the call's number on it."""
    import hashlib

    cid = ctx.connection_id()
    return {
        "query_id": hashlib.blake2b(f"{cid}:{seq}".encode(), digest_size=8).hexdigest(),
        "connection_id": cid,
        "community_id": ctx.community_id,
        "client_ip": ctx.ips[client], "client_port": ctx.ports[client],
        "server_ip": ctx.ips[1 - client], "server_port": ctx.ports[1 - client],
        "protocol": protocol,
        # cleartext; inside decrypted TLS (tls.DecryptedStream) the context marks it true
        "tls": False,
        "db_user": None, "error_code": None, "command_tag": None, "auth_method": None,
    }
