"""MySQL and MariaDB: one ``wire.queries`` record per command, and one per login.

A MySQL response cannot be framed without the command it answers, so the compiled core
(``rust/src/l7/mysql``) is the whole connection: packet framing both ways and the
pairing of each command with its response (OK, ERR, result sets counted row by row,
prepared statements' answers, multi-results, LOCAL INFILE). :class:`MysqlAnalyzer` turns
its events into records:

- **Login.** The server's handshake, the client's response (user, database, auth plugin;
  the auth response itself is never read) and the server's OK or ERR are one ``STARTUP``
  record, ``auth_method`` the plugin (the server's switch wins: ``caching_sha2_password``,
  ``mysql_native_password``, ``ed25519``...). A client's SSL request hands both
  directions to the TLS analyser (a ``wire.tls`` record), as Wireshark's ``mysql`` does;
  with a key log, the plaintext comes back to a MySQL analyser that goes on from the SSL
  request (records marked ``tls``).
- **Commands.** ``COM_QUERY``: its SQL; ``COM_STMT_PREPARE``: a ``PREPARE`` record with
  the statement's SQL; ``COM_STMT_EXECUTE``: the prepared statement's SQL (remembered by
  id per connection); the others by name (``PING``, ``USE``, ``RESET_CONNECTION``...).
  The operation is the SQL's first keyword (MySQL has no command tag), ``rows`` the
  rows of the result sets or an OK's affected rows, ``error_code`` the error number
  (``1146``) and ``error`` its message. ``COM_STMT_CLOSE``, ``COM_STMT_SEND_LONG_DATA``
  and ``COM_QUIT`` get no response and no record.
- **Redaction** (on by default): MySQL's lexical rules (``'...'`` and ``"..."`` are both
  strings, backticks quote names, ``#`` comments): literals become ``?``. The binary
  protocol's parameters are never read.
- **Bad input.** A packet that fits no state stops the connection's parsing
  (``mysql_parse_error.<reason>``) until a gap; a gap sends the commands waiting out as
  ``no_reply`` and resynchronises on the next command. A capture that starts
  mid-connection begins at the first command packet (``mysql.resync_skipped``).
"""

from __future__ import annotations

import re

from wirestream._core import MysqlConnection, redact_sql

from wirestream.topics import QUERIES

from .base import CoreBackedAnalyzer, StreamAnalyzer, StreamContext, query_record

#: Characters of a statement in a record at most.
MAX_STATEMENT = 4096
COM_INIT_DB, COM_QUERY, COM_STMT_PREPARE, COM_STMT_EXECUTE, LOGIN = 0x02, 0x03, 0x16, 0x17, 0xFF
#: Command bytes of the records that are not SQL, by name.
COMMAND_NAMES = {
    0x04: "FIELD_LIST", 0x05: "CREATE_DB", 0x06: "DROP_DB", 0x07: "REFRESH", 0x08: "SHUTDOWN",
    0x09: "STATISTICS", 0x0A: "PROCESS_INFO", 0x0C: "PROCESS_KILL", 0x0D: "DEBUG", 0x0E: "PING",
    0x11: "CHANGE_USER", 0x12: "BINLOG_DUMP", 0x1A: "STMT_RESET", 0x1B: "SET_OPTION", 0x1C: "STMT_FETCH",
    0x1F: "RESET_CONNECTION", 0xFA: "STMT_BULK_EXECUTE",
}
_FIRST_WORD = re.compile(r"[\s(]*([A-Za-z]+)")
_USE = re.compile(r"\s*USE\s+`?([^`\s;]+)`?", re.IGNORECASE)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


class MysqlAnalyzer(CoreBackedAnalyzer):
    """MySQL over one TCP connection; ``client_direction`` is the client's (the server
    speaks first). ``started``: the connection was seen from its start."""

    protocol = "mysql"
    _core_class = MysqlConnection

    def __init__(self, ctx: StreamContext, client_direction: int, started: bool = True,
                 core: MysqlConnection | None = None) -> None:
        super().__init__(ctx)
        self.client = client_direction
        self.stats = ctx.stats
        self.redact = ctx.options.redact
        # (core: a connection taken over inside TLS, MysqlConnection.after_ssl)
        self._core = core if core is not None else MysqlConnection(client_direction, started)
        self._core_state = b""
        self.user: str | None = None
        self.database: str | None = None
        self.tls: StreamAnalyzer | None = None  # after an SSL request
        self.seq = 0

    # -- StreamAnalyzer hooks ------------------------------------------------------------

    def on_data(self, direction: int, data: bytes, ts_us: int) -> None:
        if self.tls is not None:
            self.tls.on_data(direction, data, ts_us)
            return
        self._events(self._core.data(direction, data, ts_us), ts_us)

    def on_gap(self, direction: int, missing: int, ts_us: int) -> None:
        if self.tls is not None:
            self.tls.on_gap(direction, missing, ts_us)
            return
        self.stats["mysql.gaps"] += 1
        events = self._core.gap(direction, ts_us)
        self.stats["mysql.unanswered_after_gap"] += len(events)
        self._events(events, ts_us)

    def on_close(self, ts_us: int) -> None:
        if self.tls is not None:
            self.tls.on_close(ts_us)
        self._events(self._core.close(ts_us), ts_us)
        if self._core.skipped:
            self.stats["mysql.resync_skipped"] += self._core.skipped

    def tick(self, now_us: int) -> None:
        if self.tls is not None:
            self.tls.tick(now_us)

    # -- events ----------------------------------------------------------------------------

    def _events(self, events: list[tuple], ts_us: int) -> None:
        for event in events:
            kind = event[0]
            if kind == "done":
                self._done(event, ts_us)
            elif kind == "tls":
                self._tls(event[1], event[2], ts_us)
            elif kind == "ssl_request":
                self.stats["mysql.ssl_requests"] += 1
            else:
                self.stats[f"mysql_parse_error.{event[1]}"] += 1
                self.stats["mysql_parse_error"] += 1

    def _done(self, event: tuple, ts_us: int) -> None:
        (_, command, text, cut, database, plugin, ok, error_code, _sqlstate, message, rows, results, affected,
         request_ts, response_ts, request_bytes, response_bytes, pipelined) = event
        if command == LOGIN:
            self.user = _text(text) or None
            self.database = _text(database) or None
            operation, statement = "STARTUP", "STARTUP"
        elif command in (COM_QUERY, COM_STMT_EXECUTE):
            statement = self._statement(text, cut)
            match = _FIRST_WORD.match(statement)
            operation = match.group(1).upper() if match else ("EXECUTE" if command == COM_STMT_EXECUTE else "QUERY")
            if ok and operation == "USE":
                use = _USE.match(_text(text))
                if use:
                    self.database = use.group(1)
        elif command == COM_STMT_PREPARE:
            operation, statement = "PREPARE", self._statement(text, cut)
        elif command == COM_INIT_DB:
            operation, statement = "USE", f"USE {_text(text)}"
            if ok:
                self.database = _text(text)
        else:
            operation = statement = COMMAND_NAMES.get(command, f"COMMAND_{command:#04x}")
        status = "no_reply" if ok is None else "ok" if ok else "error"
        answered = ok is not None
        self.seq += 1
        record = query_record(self.ctx, self.client, self.seq, "mysql")
        record.update({
            "operation": operation,
            "statement": statement,
            "target": self.database,
            "status": status,
            "error": _text(message)[:256] if ok is False else None,
            "reply_type": None if not answered else "error" if not ok else "result_set" if results else "ok",
            "rows": (rows if results else affected) if ok else None,
            "request_bytes": request_bytes,
            "response_bytes": response_bytes if answered else None,
            "request_ts_us": request_ts,
            "response_ts_us": response_ts if answered else None,
            "latency_us": max(0, response_ts - request_ts) if answered else None,
            "pipelined": pipelined,
            "db_user": self.user,
            "error_code": str(error_code) if ok is False and error_code is not None else None,
            "auth_method": (_text(plugin) or None) if command == LOGIN else None,
        })
        self.stats["mysql_queries"] += 1
        if status == "error":
            self.stats["mysql.errors"] += 1
        self.ctx.emit(QUERIES, record["connection_id"], record)

    def _statement(self, text: bytes, cut: bool) -> str:
        if self.redact:
            statement = redact_sql(text, "mysql")
        else:
            statement = " ".join(_text(text).split())
        if cut or len(statement) > MAX_STATEMENT:
            statement = statement[:MAX_STATEMENT] + " …"
        return statement

    def _tls(self, direction: int, data: bytes, ts_us: int) -> None:
        if self.tls is None:
            # (imported here: tls.py imports the SQL analysers for decrypted plaintext)
            from .tls import TlsAnalyzer

            tls = self.tls = TlsAnalyzer(self.ctx, self.client)
            self.stats["l7_connections.tls_in_mysql"] += 1
            plain = tls._decrypted
            if plain is not None:
                # decrypting (a key log): the plaintext goes on where the SSL request left
                # off, with the client's real login response (no handshake to recognise)
                plain.preset(MysqlAnalyzer(plain.ctx, self.client, core=self._core.after_ssl()))
        self.tls.on_data(direction, data, ts_us)


class MysqlMidConnection(MysqlAnalyzer):
    """A MySQL connection whose capture began after its login (its first client bytes
    were a command packet)."""

    def __init__(self, ctx: StreamContext, client_direction: int) -> None:
        super().__init__(ctx, client_direction, started=False)
