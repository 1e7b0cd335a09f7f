"""Redis (RESP2 and RESP3): one ``wire.queries`` record per command and its reply.

The bytes are the compiled core's (``rust/src/l7/resp``: a streaming parser per
direction that keeps a message's type, size, first three scalars, error text and
integer, and counts a 500 MB value past without storing it). :class:`RedisAnalyzer`
pairs what it gives:

- **Pairing.** Redis answers a connection's commands in order, so replies pair with the
  oldest waiting command (pipelining: a command sent while others wait is marked
  ``pipelined``). Latency is the reply's capture time less the command's.
- **Pub/sub.** After ``SUBSCRIBE``/``PSUBSCRIBE``/``SSUBSCRIBE`` the server also sends
  messages no command asked for (RESP2: arrays ``message``/``pmessage``/``smessage``;
  RESP3: push values ``>``): they are counted per channel, one record per channel at
  the connection's end (operation ``message``, ``rows`` = messages), not paired. The
  confirmation of a (un)subscription to several channels comes once per channel: the
  first answers the command, the others are counted (``redis.subscribe_confirmations``).
  RESP3 pushes (``invalidate`` of client-side caching too) never answer a command.
- **Redaction** (on by default): a record shows the command and its key, the other
  arguments as ``?`` (``SET user:1 ?``); for commands whose first argument is not a key
  (``AUTH``, ``HELLO``, ``EVAL`` scripts, ``CONFIG SET``...) no argument at all. With
  ``--no-redact`` the statement has the first three arguments as sent. Values and
  replies' contents are never in the record; errors are, as Redis wrote them (their text
  has no values).
- **Bad input.** A malformed message stops its direction (``redis_parse_error.<reason>``,
  a drop reason) until a gap; a gap resets the direction and the commands waiting
  (``redis.unanswered_after_gap``). State is bounded: at most :data:`MAX_PENDING`
  waiting commands (the oldest beyond are emitted with status ``no_reply``), at most
  :data:`MAX_CHANNELS` channels counted.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from wirestream._core import RespConnection

from wirestream.topics import QUERIES

from .base import CoreBackedAnalyzer, StreamContext, query_record

#: Commands waiting for their reply at most; the oldest beyond go out as ``no_reply``.
MAX_PENDING = 10_000
#: Pub/sub channels counted per connection at most (the others are counted together).
MAX_CHANNELS = 1_000
#: Commands whose first argument is not a key: nothing of theirs goes in the record
#: (AUTH and HELLO carry passwords; EVAL a script; CONFIG, CLIENT and the like settings).
NO_KEY = frozenset({
    "AUTH", "HELLO", "PING", "ECHO", "SELECT", "QUIT", "RESET", "INFO", "CONFIG", "CLIENT",
    "COMMAND", "DBSIZE", "FLUSHALL", "FLUSHDB", "SAVE", "BGSAVE", "BGREWRITEAOF", "LASTSAVE",
    "MULTI", "EXEC", "DISCARD", "UNWATCH", "SCRIPT", "FUNCTION", "EVAL", "EVALSHA", "EVAL_RO",
    "EVALSHA_RO", "FCALL", "FCALL_RO", "ACL", "CLUSTER", "DEBUG", "MONITOR", "SLOWLOG",
    "LATENCY", "MEMORY", "MODULE", "REPLICAOF", "SLAVEOF", "SHUTDOWN", "SWAPDB", "TIME",
    "ROLE", "WAIT", "WAITAOF", "READONLY", "READWRITE", "SCAN", "RANDOMKEY", "KEYS",
    "PUBSUB", "LOLWUT", "SYNC", "PSYNC", "FAILOVER",
})
#: Commands whose first argument is a channel (the record's target), not a key.
CHANNEL_COMMANDS = frozenset({"PUBLISH", "SPUBLISH", "SUBSCRIBE", "SSUBSCRIBE", "PSUBSCRIBE",
                              "UNSUBSCRIBE", "SUNSUBSCRIBE", "PUNSUBSCRIBE"})
_SUBSCRIBE_REPLIES = frozenset({b"subscribe", b"psubscribe", b"ssubscribe", b"unsubscribe", b"punsubscribe",
                                b"sunsubscribe"})
_MESSAGES = {b"message": 1, b"smessage": 1, b"pmessage": 2}  # -> index of the channel


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


class _Command:
    __slots__ = ("operation", "statement", "target", "ts_us", "size", "pipelined", "seq", "confirms")

    def __init__(self, operation: str, statement: str, target: str | None, ts_us: int, size: int,
                 pipelined: bool, seq: int, confirms: int) -> None:
        self.operation = operation
        self.statement = statement
        self.target = target
        self.ts_us = ts_us
        self.size = size
        self.pipelined = pipelined
        self.seq = seq
        self.confirms = confirms  # replies a (un)subscription still gets (one per channel)


class RedisAnalyzer(CoreBackedAnalyzer):
    """Redis over one TCP connection; ``client_direction`` sends the commands."""

    protocol = "redis"
    _core_class = RespConnection

    def __init__(self, ctx: StreamContext, client_direction: int) -> None:
        super().__init__(ctx)
        self.client = client_direction
        self.stats = ctx.stats
        self.redact = ctx.options.redact
        self._core = RespConnection(client_direction)
        self._core_state = b""
        self.pending: deque[_Command] = deque()
        self.channels: Counter[str] = Counter()  # pub/sub messages received per channel
        self.subscribed = False  # a (un)subscription was confirmed: pub/sub mode
        self.last_ts_us = 0
        self.seq = 0

    # -- StreamAnalyzer hooks ------------------------------------------------------------

    def on_data(self, direction: int, data: bytes, ts_us: int) -> None:
        self.last_ts_us = ts_us
        for message in self._core.data(direction, data):
            if len(message) == 2:  # ("parse_error", reason): this direction stops
                self.stats[f"redis_parse_error.{message[1]}"] += 1
                self.stats["redis_parse_error"] += 1
            elif direction == self.client:
                self._command(message, ts_us)
            else:
                self._reply(message, ts_us)

    def on_gap(self, direction: int, missing: int, ts_us: int) -> None:
        self._core.gap(direction)
        self.stats["redis.gaps"] += 1
        # which reply answers which command is unknown now: the waiting ones go out unanswered
        self.stats["redis.unanswered_after_gap"] += len(self.pending)
        while self.pending:
            self._emit(self.pending.popleft(), None, ts_us)

    def on_close(self, ts_us: int) -> None:
        while self.pending:
            self._emit(self.pending.popleft(), None, ts_us)
        for channel, n in self.channels.items():
            self._emit_messages(channel, n, ts_us)
        self.channels.clear()

    # -- commands and replies ---------------------------------------------------------------

    def _command(self, message: tuple, ts_us: int) -> None:
        kind, args, elements, _error, _integer, size = message
        if kind not in ("array", "inline") or not args:
            self.stats["redis.not_a_command"] += 1
            return
        name = _text(args[0]).upper()
        target: str | None = None
        if name not in NO_KEY and elements > 1 and len(args) > 1:
            target = _text(args[1])
        if self.redact:
            statement = " ".join([name] + ([target] if target is not None else [])
                                 + ["?"] * (elements - 1 - (target is not None)))
        else:
            statement = " ".join(_text(a) for a in args) + (" …" if elements > len(args) else "")
        confirms = max(1, elements - 1) if name in ("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE",
                                                     "PUNSUBSCRIBE", "SUNSUBSCRIBE") else 0
        self.seq += 1
        cmd = _Command(name, statement[:1024], target, ts_us, size, bool(self.pending), self.seq, confirms)
        if len(self.pending) >= MAX_PENDING:
            self.stats["redis.pending_overflow"] += 1
            self._emit(self.pending.popleft(), None, ts_us)
        self.pending.append(cmd)

    def _reply(self, message: tuple, ts_us: int) -> None:
        kind, args, elements, error, integer, size = message
        first = args[0].lower() if args else b""
        if kind == "push" or (kind == "array" and first in _MESSAGES and self.subscribed):
            if first in _MESSAGES and len(args) > _MESSAGES[first]:
                self._count_message(_text(args[_MESSAGES[first]]))
            elif kind == "push" and first in _SUBSCRIBE_REPLIES:
                self._confirm(message, ts_us)  # RESP3 sends (un)subscribe confirmations as pushes
            else:
                self.stats["redis.push"] += 1
            return
        if kind == "array" and first in _SUBSCRIBE_REPLIES:
            self._confirm(message, ts_us)
            return
        if not self.pending:
            self.stats["redis.reply_without_command"] += 1
            return
        self._emit(self.pending.popleft(), message, ts_us)

    def _confirm(self, message: tuple, ts_us: int) -> None:
        """One channel's (un)subscription confirmed: the first answers the command."""
        self.subscribed = True
        head = self.pending[0] if self.pending else None
        if head is not None and head.confirms > 0:
            if head.seq != -1:  # its first confirmation: the command's reply
                self._emit(head, message, ts_us)
                head.seq = -1
            head.confirms -= 1
            if head.confirms == 0:
                self.pending.popleft()
            return
        self.stats["redis.subscribe_confirmations"] += 1

    def _count_message(self, channel: str) -> None:
        if channel in self.channels or len(self.channels) < MAX_CHANNELS:
            self.channels[channel] += 1
        else:
            self.stats["redis.channels_overflow"] += 1

    # -- records ---------------------------------------------------------------------------

    def _base(self, seq: int, ts_us: int) -> dict[str, Any]:
        record = query_record(self.ctx, self.client, seq, "redis")
        record["request_ts_us"] = ts_us
        return record

    def _emit(self, cmd: _Command, reply: tuple | None, ts_us: int) -> None:
        record = self._base(cmd.seq, cmd.ts_us)
        record.update(operation=cmd.operation, statement=cmd.statement, target=cmd.target,
                      request_bytes=cmd.size, pipelined=cmd.pipelined)
        if reply is None:
            record.update(status="no_reply", error=None, reply_type=None, rows=None, response_bytes=None,
                          response_ts_us=None, latency_us=None)
        else:
            kind, _args, elements, error, integer, size = reply
            failed = error is not None
            record.update(
                status="error" if failed else "ok",
                error=_text(error)[:256] if failed else None,
                # Redis's errors start with their code, upper case (ERR, WRONGTYPE, NOAUTH, MOVED)
                error_code=_text(error.split(b" ", 1)[0])[:32] if failed and error else None,
                reply_type=kind,
                # what the reply holds: an aggregate's elements, an integer reply's value
                # (DEL's keys deleted, INCR's new value...), 1 for a value, 0 for a null
                rows=None if failed else elements if kind in ("array", "set", "map", "push") else (
                    integer if kind == "integer" else (0 if kind == "null" else 1)),
                response_bytes=size, response_ts_us=ts_us, latency_us=max(0, ts_us - cmd.ts_us))
        self.stats["redis_queries"] += 1
        if record["status"] == "error":
            self.stats["redis.errors"] += 1
        self.ctx.emit(QUERIES, record["connection_id"], record)

    def _emit_messages(self, channel: str, n: int, ts_us: int) -> None:
        """The pub/sub messages one channel delivered on this connection."""
        self.seq += 1
        record = self._base(self.seq, ts_us)
        record.update(operation="message", statement="message", target=channel, request_bytes=None,
                      pipelined=False, status="ok", error=None, reply_type="push", rows=n, response_bytes=None,
                      response_ts_us=ts_us, latency_us=None)
        self.stats["redis_queries"] += 1
        self.ctx.emit(QUERIES, record["connection_id"], record)
