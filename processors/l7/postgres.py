"""PostgreSQL: one ``wire.queries`` record per query, and one per login.

The bytes are the compiled core's (``rust/src/l7/pgsql``: a framer per direction that
keeps each message's type and the few fields a record needs, and counts result rows
without giving them one by one). :class:`PostgresAnalyzer` pairs what it gives, as the
server answers (https://www.postgresql.org/docs/current/protocol-flow.html):

- **Login.** The startup message (user, database), the server's authentication request
  (its method: ``trust``, ``password``, ``md5``, ``scram-sha-256``...; the password or
  SASL exchange itself is never read) and the first ``ReadyForQuery`` (or the error that
  refused the login, SQLSTATE class 28) make one record, operation ``STARTUP``, with
  ``auth_method``. An ``SSLRequest`` answered ``S`` hands both directions to the TLS
  analyser (a ``wire.tls`` record; decrypted with a key log, the queries come back here
  marked ``tls``), as Wireshark's ``pgsql`` hands them to ``tls``; answered ``N``, the
  login goes on in cleartext (``pgsql.ssl_refused``).
- **Simple query** (``Query``): one record per message, whatever it holds (``BEGIN;
  INSERT ...; COMMIT`` is one record whose operation is ``BEGIN;INSERT;COMMIT``),
  complete at ``ReadyForQuery``. Its command tags (``INSERT 0 1``) give the operation
  and the rows; an ``ErrorResponse`` its SQLSTATE code and message.
- **Extended query** (``Parse``/``Bind``/``Describe``/``Execute``/``Sync``, what most
  drivers send): one record per ``Execute``, the statement being the text its portal was
  bound to (named statements and portals are remembered per connection), complete at its
  ``CommandComplete`` (or ``PortalSuspended``: a row limit was reached). A ``Parse``
  followed by ``Sync`` without an ``Execute`` (a driver preparing a statement) is a
  record ``PREPARE``. Responses come in the order of the messages, so each response
  answers the oldest message waiting for it; pipelined batches (several ``Execute``
  before a ``Sync``) pair the same way (``pipelined``).
- **Errors.** An ``ErrorResponse`` in an extended batch fails the statement its message
  belonged to (a syntax error at ``Parse`` fails the ``Execute`` that would have run
  it); the server then skips everything up to the ``Sync``: those ``Execute`` are records
  with status ``skipped`` (they did not run).
- **Redaction** (on by default): the statement's literals are ``?`` (``rust/src/l7/sql.rs``:
  strings, dollar quotes, numbers; comments dropped), so statements differing only in
  their values read the same; ``--no-redact`` keeps the text as sent. Parameters of the
  extended protocol (``$1``) are never read. Statements are cut at :data:`MAX_STATEMENT`.
- **Bad input.** A malformed message stops its direction (``pgsql_parse_error.<reason>``)
  until a gap; a gap resets the direction, and the queries waiting go out ``no_reply``.
  A capture that starts mid-connection begins at the first chunk that starts a message
  (``pgsql.resync_skipped``), the statements prepared before it unknown. State is
  bounded: :data:`MAX_PENDING` messages waiting, :data:`MAX_NAMES` statement and portal
  names remembered.
"""

from __future__ import annotations

import re
from collections import deque

from wirestream._core import PgConnection, redact_sql

from wirestream.topics import QUERIES

from .base import CoreBackedAnalyzer, StreamAnalyzer, StreamContext, query_record

#: Messages waiting for their response at most; the oldest beyond go out ``no_reply``.
MAX_PENDING = 10_000
#: Prepared statements and portals remembered per connection (each) at most.
MAX_NAMES = 1_000
#: Characters of a statement in a record at most.
MAX_STATEMENT = 4096
#: Authentication requests (``AuthenticationXXX``'s code) by the method they ask for.
AUTH_METHODS = {2: "kerberos", 3: "password", 5: "md5", 7: "gss", 9: "sspi"}
#: Client messages the server answers with one message of this type.
_ANSWERS = {"P": "1", "B": "2", "C": "3"}
#: Pending entries a ReadyForQuery completes.
_READY = frozenset({"Q", "F", "S", "startup"})
#: Client messages the server skips after an error in an extended batch, until its Sync.
_SKIPPED = frozenset({"P", "B", "D", "E", "C", "H"})
_FIRST_WORD = re.compile(r"[\s(]*([A-Za-z]+)")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


def _tag_rows(tag: str) -> int | None:
    """The rows a command tag counts (``SELECT 3``, ``INSERT 0 1``, ``COPY 5``), if any."""
    last = tag.rpartition(" ")[2]
    return int(last) if last.isdigit() else None


def _tag_verb(tag: str) -> str:
    """The command of a tag: its words before the counts (``INSERT 0 1`` → ``INSERT``)."""
    words = tag.split()
    while words and words[-1].isdigit():
        words.pop()
    return " ".join(words) or tag


class _Query:
    """One query (or login) being answered."""

    __slots__ = ("kind", "text", "cut", "ts_us", "size", "pipelined", "seq", "tags", "rows", "response_bytes",
                 "error", "error_code", "empty", "prepare", "executed", "emitted")

    def __init__(self, kind: str, ts_us: int, size: int, pipelined: bool, seq: int) -> None:
        self.kind = kind  # Q, E (extended), F (function call), startup
        self.text: bytes | None = None
        self.cut = False
        self.ts_us = ts_us
        self.size = size
        self.pipelined = pipelined
        self.seq = seq
        self.tags: list[str] = []
        self.rows = 0  # DataRow messages received
        self.response_bytes = 0
        self.error: tuple[str, str] | None = None  # (SQLSTATE, message)
        self.empty = False
        self.prepare = False
        self.executed = False
        self.emitted = False


class PostgresAnalyzer(CoreBackedAnalyzer):
    """PostgreSQL over one TCP connection; ``client_direction`` sends the startup message
    and the queries. ``started``: the connection was seen from its start."""

    protocol = "postgresql"
    _core_class = PgConnection

    def __init__(self, ctx: StreamContext, client_direction: int, started: bool = True) -> None:
        super().__init__(ctx)
        self.client = client_direction
        self.stats = ctx.stats
        self.redact = ctx.options.redact
        self._core = PgConnection(client_direction, started)
        self._core_state = b""
        self.pending: deque[tuple[str, _Query | None]] = deque()
        self.building: _Query | None = None  # the extended batch's query before its Execute
        self.statements: dict[bytes, tuple[bytes, bool]] = {}  # name -> (text, cut)
        self.portals: dict[bytes, tuple[bytes, bool]] = {}
        self.outstanding = 0  # queries neither answered nor emitted
        self.user: str | None = None
        self.database: str | None = None
        self.auth_method: str | None = None
        self.tls: StreamAnalyzer | None = None  # after an SSLRequest answered S
        self.seq = 0
        # an extended batch failed before its Sync was sent: the server skips what the
        # client sends until that Sync
        self.skipping = False

    # -- StreamAnalyzer hooks ------------------------------------------------------------

    def on_data(self, direction: int, data: bytes, ts_us: int) -> None:
        client = direction == self.client
        for message in self._core.data(direction, data):
            kind = message[0]
            if kind == "parse_error":
                self.stats[f"pgsql_parse_error.{message[1]}"] += 1
                self.stats["pgsql_parse_error"] += 1
            elif kind == "tls":
                self._tls(direction, message[1][0], ts_us)
            elif client:
                self._frontend(message, ts_us)
            else:
                self._backend(message, ts_us)

    def on_gap(self, direction: int, missing: int, ts_us: int) -> None:
        if self.tls is not None:
            self.tls.on_gap(direction, missing, ts_us)
            return
        self._core.gap(direction)
        self.stats["pgsql.gaps"] += 1
        # which response answers which message is unknown now: the waiting ones go out unanswered
        self._flush_unanswered(ts_us, "pgsql.unanswered_after_gap")
        self.building = None
        self.skipping = False

    def on_close(self, ts_us: int) -> None:
        if self.tls is not None:
            self.tls.on_close(ts_us)
        self._flush_unanswered(ts_us, "pgsql.unanswered_at_close")
        skipped = self._core.skipped(0) + self._core.skipped(1)
        if skipped:
            self.stats["pgsql.resync_skipped"] += skipped

    def tick(self, now_us: int) -> None:
        if self.tls is not None:
            self.tls.tick(now_us)

    # -- the client's messages -------------------------------------------------------------

    def _new(self, kind: str, ts_us: int, size: int) -> _Query:
        self.seq += 1
        query = _Query(kind, ts_us, size, self.outstanding > 0, self.seq)
        self.outstanding += 1
        return query

    def _expect(self, kind: str, query: _Query | None, ts_us: int) -> None:
        if len(self.pending) >= MAX_PENDING:
            self.stats["pgsql.pending_overflow"] += 1
            _, oldest = self.pending.popleft()
            if oldest is not None and not oldest.emitted:
                self._emit(oldest, "no_reply", ts_us)
        self.pending.append((kind, query))

    def _building(self, ts_us: int, size: int) -> _Query:
        query = self.building
        if query is None:
            query = self.building = self._new("E", ts_us, size)
        else:
            query.size += size
        return query

    def _frontend(self, message: tuple, ts_us: int) -> None:
        kind = message[0]
        if self.skipping and kind in _SKIPPED:
            self._skipped(message, ts_us)
            return
        if kind == "S" and self.skipping:
            self.skipping = False
            if self.building is not None:  # parsed or bound after the error: never ran
                self._discard(self.building)
                self.building = None
        self._message(message, ts_us)

    def _skipped(self, message: tuple, ts_us: int) -> None:
        """A message the server skips (an earlier one of its batch failed): an Execute is a
        ``skipped`` record now (no answer will come); the others answer nothing."""
        before = len(self.pending)
        self._message(message, ts_us)
        while len(self.pending) > before:
            kind, query = self.pending.pop()
            if kind == "E" and query is not None and not query.emitted:
                self._emit(query, "skipped", ts_us)

    def _discard(self, query: _Query) -> None:
        if not query.emitted:
            query.emitted = True
            self.outstanding -= 1

    def _message(self, message: tuple, ts_us: int) -> None:
        kind, fields, number, size, cut, _data_messages, data_bytes = message
        if kind == "Q":
            query = self._new("Q", ts_us, size)
            query.text, query.cut = fields[0], cut
            self._expect("Q", query, ts_us)
        elif kind == "P":
            name, text = fields
            query = self._building(ts_us, size)
            query.text, query.cut, query.prepare = text, cut, True
            self._remember(self.statements, name, (text, cut))
            self._expect("P", query, ts_us)
        elif kind == "B":
            portal, statement = fields
            query = self._building(ts_us, size)
            known = self.statements.get(statement)
            if query.text is None and known is not None:
                query.text, query.cut = known
            if query.text is not None:
                self._remember(self.portals, portal, (query.text, query.cut))
            self._expect("B", query, ts_us)
        elif kind == "D":
            self._expect("D", self._building(ts_us, size), ts_us)
        elif kind == "E":
            query = self._building(ts_us, size)
            if query.text is None:
                known = self.portals.get(fields[0])
                if known is not None:
                    query.text, query.cut = known
            query.executed = True
            self.building = None
            self._expect("E", query, ts_us)
        elif kind == "S":
            query, self.building = self.building, None
            self._expect("S", query, ts_us)
        elif kind == "C":
            (self.statements if number == ord("S") else self.portals).pop(fields[0], None)
            self._expect("C", None, ts_us)
        elif kind == "F":
            query = self._new("F", ts_us, size)
            query.text = f"function {number}".encode()
            self._expect("F", query, ts_us)
        elif kind == "startup":
            user, database, _application = fields
            self.user = _text(user) or None
            self.database = _text(database) or self.user  # PostgreSQL's default: the user's name
            query = self._new("startup", ts_us, size)
            self._expect("startup", query, ts_us)
        elif kind in ("c", "f"):  # CopyDone, CopyFail: the COPY's data was part of its query
            if self.pending and self.pending[0][1] is not None:
                self.pending[0][1].size += size + data_bytes
        elif kind == "ssl_request":
            self.stats["pgsql.ssl_requests"] += 1
        elif kind == "gss_request":
            self.stats["pgsql.gss_requests"] += 1
        elif kind == "cancel":
            # a connection of its own that asks to cancel another's query; no answer
            query = self._new("startup", ts_us, size)
            query.text = b"CANCEL"
            self._emit(query, "ok", ts_us, operation="CANCEL")
        # H (Flush), X (Terminate), p (password / SASL: never read) need no pairing

    @staticmethod
    def _remember(names: dict[bytes, tuple[bytes, bool]], name: bytes, value: tuple[bytes, bool]) -> None:
        names.pop(name, None)
        if len(names) >= MAX_NAMES:
            names.pop(next(iter(names)))
        names[name] = value

    # -- the server's messages -------------------------------------------------------------

    def _backend(self, message: tuple, ts_us: int) -> None:
        kind, fields, number, size, _cut, data_messages, data_bytes = message
        pending = self.pending
        head = pending[0] if pending else None
        if head is not None and head[1] is not None:
            head[1].response_bytes += size + data_bytes
            head[1].rows += data_messages
        if kind == "Z":
            self._ready(ts_us)
        elif kind == "C":
            if head is not None and head[0] in ("E", "Q") and head[1] is not None:
                head[1].tags.append(_text(fields[0]))
                if head[0] == "E":
                    pending.popleft()
                    self._emit(head[1], "ok", ts_us)
            else:
                self.stats["pgsql.out_of_sync"] += 1
        elif kind == "E":
            self._error(fields, ts_us)
        elif kind in ("1", "2", "3"):
            if head is not None and _ANSWERS.get(head[0]) == kind:
                pending.popleft()
            else:
                self.stats["pgsql.out_of_sync"] += 1
        elif kind in ("T", "n"):
            if head is not None and head[0] == "D":  # Describe's answer (after t for a statement)
                pending.popleft()
        elif kind == "s":  # PortalSuspended: Execute's row limit reached
            if head is not None and head[0] == "E" and head[1] is not None:
                pending.popleft()
                self._emit(head[1], "ok", ts_us)
        elif kind == "I":  # EmptyQueryResponse
            if head is not None and head[1] is not None and head[0] in ("E", "Q"):
                head[1].empty = True
                if head[0] == "E":
                    pending.popleft()
                    self._emit(head[1], "ok", ts_us)
        elif kind == "R":
            if number == 0:
                self.auth_method = self.auth_method or "trust"
            elif number == 10:
                mechanisms = [_text(m) for m in fields]
                self.auth_method = "scram-sha-256" if "SCRAM-SHA-256" in mechanisms else (
                    mechanisms[0].lower() if mechanisms else "sasl")
            elif number in AUTH_METHODS:
                self.auth_method = AUTH_METHODS[number]
        elif kind == "ssl_answer":
            self.stats["pgsql.ssl_accepted" if number == ord("S") else
                       "pgsql.gss_accepted" if number == ord("G") else "pgsql.ssl_refused"] += 1
        elif kind == "N":
            self.stats["pgsql.notices"] += 1
        elif kind == "A":
            self.stats["pgsql.notifications"] += 1
        # S (ParameterStatus), K (BackendKeyData), t, V, G/H/W/c (COPY), v: nothing to pair

    def _ready(self, ts_us: int) -> None:
        """ReadyForQuery: the Query, Sync, function call or login it ends is complete."""
        pending = self.pending
        while pending:
            kind, query = pending.popleft()
            if kind in _READY:
                if query is not None and not query.emitted:
                    if kind != "S" or query.prepare or query.error is not None:
                        self._emit(query, "error" if query.error is not None else "ok", ts_us)
                    else:  # a Describe or Bind without Execute: nothing to report
                        self.outstanding -= 1
                        query.emitted = True
                return
            # before the message it answers, one whose response never came: out of sync
            self.stats["pgsql.out_of_sync"] += 1
            if query is not None and not query.emitted and kind == "E":
                self._emit(query, "no_reply", ts_us)
        self.stats["pgsql.ready_without_query"] += 1

    def _error(self, fields: list[bytes], ts_us: int) -> None:
        severity, code, text = (_text(f) for f in fields)
        pending = self.pending
        if not pending:
            self.stats["pgsql.error_without_query"] += 1  # FATAL shutdown, idle timeout...
            return
        kind, query = pending[0]
        if query is None:  # a Close or a bare Sync failed
            query = self._new("E", ts_us, 0)
        query.error = (code, text)
        if kind in ("Q", "F"):
            return  # its ReadyForQuery completes it
        if kind == "startup":  # the login was refused; the server closes the connection
            pending.popleft()
            self._emit(query, "error", ts_us)
            return
        # An extended batch: this statement failed, and the server skips every message up
        # to the Sync (whose ReadyForQuery follows): the Execute among them did not run.
        self._emit(query, "error", ts_us)
        while pending and pending[0][0] != "S":
            _, other = pending.popleft()
            if other is not None and not other.emitted and other.executed:
                self._emit(other, "skipped", ts_us)
        if pending and pending[0][1] is not None and pending[0][1].emitted:
            pending[0] = ("S", None)
        if not pending:
            # the Sync is not sent yet (a pipeline still sending): what comes before it is skipped
            self.skipping = True
            if self.building is not None and self.building is not query:
                self._discard(self.building)
            self.building = None
        if severity in ("FATAL", "PANIC"):
            self.stats["pgsql.fatal"] += 1

    def _flush_unanswered(self, ts_us: int, counter: str) -> None:
        for _, query in self.pending:
            if query is not None and not query.emitted:
                self.stats[counter] += 1
                self._emit(query, "no_reply", ts_us)
        self.pending.clear()

    # -- records ---------------------------------------------------------------------------

    def _operation(self, query: _Query) -> str:
        if query.kind == "startup":
            return "STARTUP"
        if query.kind == "F":
            return "FUNCTION CALL"
        if query.tags:
            verbs: list[str] = []
            for tag in query.tags:
                verb = _tag_verb(tag)
                if not verbs or verbs[-1] != verb:
                    verbs.append(verb)
            return ";".join(verbs)
        if query.empty:
            return "EMPTY"
        if query.prepare and not query.executed:
            return "PREPARE"
        match = _FIRST_WORD.match(_text(query.text or b""))
        return match.group(1).upper() if match else "EXECUTE"

    def _statement(self, query: _Query) -> str:
        if query.kind == "startup":
            return "STARTUP" if query.text is None else _text(query.text)
        if query.text is None:
            return ""  # an Execute of a portal bound before the capture started
        if self.redact and query.kind != "F":
            text = redact_sql(query.text)
        else:
            text = " ".join(_text(query.text).split())
        if query.cut or len(text) > MAX_STATEMENT:
            text = text[:MAX_STATEMENT] + " …"
        return text

    def _emit(self, query: _Query, status: str, ts_us: int, operation: str | None = None) -> None:
        query.emitted = True
        self.outstanding -= 1
        ctx = self.ctx
        rows: int | None = None
        counted = [_tag_rows(t) for t in query.tags]
        if any(n is not None for n in counted):
            rows = sum(n for n in counted if n is not None)
        elif query.rows:
            rows = query.rows
        answered = status in ("ok", "error")
        error_code, error = query.error if query.error is not None else (None, None)
        record = query_record(ctx, self.client, query.seq, "postgresql")
        record.update({
            "operation": operation or self._operation(query),
            "statement": self._statement(query),
            "target": self.database,
            "status": status,
            "error": error[:256] if error is not None else None,
            "reply_type": None,
            "rows": rows if status == "ok" else None,
            "request_bytes": query.size,
            "response_bytes": query.response_bytes if answered else None,
            "request_ts_us": query.ts_us,
            "response_ts_us": ts_us if answered else None,
            "latency_us": max(0, ts_us - query.ts_us) if answered else None,
            "pipelined": query.pipelined,
            "db_user": self.user,
            "error_code": error_code or None,
            "command_tag": "; ".join(query.tags)[:256] or None,
            "auth_method": self.auth_method if query.kind == "startup" and query.text is None else None,
        })
        self.stats["pgsql_queries"] += 1
        if status == "error":
            self.stats["pgsql.errors"] += 1
        ctx.emit(QUERIES, record["connection_id"], record)

    # -- TLS after an SSLRequest ---------------------------------------------------------------

    def _tls(self, direction: int, data: bytes, ts_us: int) -> None:
        if self.tls is None:
            from .tls import TlsAnalyzer  # (tls.py imports this module for decrypted plaintext)

            self.tls = TlsAnalyzer(self.ctx, self.client)
            self.stats["l7_connections.tls_in_postgresql"] += 1
        self.tls.on_data(direction, data, ts_us)


class PostgresMidConnection(PostgresAnalyzer):
    """A PostgreSQL connection whose capture began after its startup (its first client
    bytes were a Query or Parse message): no login record, statements prepared before
    the capture unknown."""

    def __init__(self, ctx: StreamContext, client_direction: int) -> None:
        super().__init__(ctx, client_direction, started=False)
