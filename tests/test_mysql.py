"""MySQL (MariaDB) on the wire: ``wire.queries`` against a real MariaDB server.

A MariaDB server of the test's own on loopback (Debian's ``mariadb-server``, run as the
``mysql`` user with a fresh data directory, TLS on); tcpdump records its port while
MySQL Connector/Python (the pure-Python protocol) runs a known workload: DDL, INSERTs
with the values in the text (the connector interpolates them), a SELECT of rows, a
missing table (error 1146), a server-side prepared statement executed twice (the binary
protocol), a stored procedure returning two result sets, a PING, a wrong password
(1045), and the ``mariadb`` command-line client over TLS; and MariaDB Connector/C
(libmariadb, through ctypes) executing a prepared statement three times with MariaDB's
metadata caching.

Then ``wirestream analyze`` reads the capture (with and without ``--no-redact``). The
referees:

* tshark's ``mysql`` dissector (``-d tcp.port==P,mysql``, read as PDML), connection by
  connection: every command it shows that gets a response is a record with that
  command and text, in order, and its error packets' codes are the records' error
  codes, in order;
* what the client got: rows, affected rows, the errors' numbers, the procedure's result
  sets, the login's plugin and the refused login;
* the TLS connection is a ``wire.tls`` record and no query;
* no literal or password is in the redacted records.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    analyze_to,
    free_port,
    import_or_require,
    needs,
    pdml_messages,
    read_jsonl,
    stop_process,
    tcpdump_loopback,
    wait_port,
)
from tls_certs import self_signed

TSHARK = shutil.which("tshark")
TCPDUMP = shutil.which("tcpdump")
MARIADBD = shutil.which("mariadbd") or ("/usr/sbin/mariadbd" if Path("/usr/sbin/mariadbd").exists() else None)
INSTALL_DB = shutil.which("mariadb-install-db")
CLIENT = shutil.which("mariadb")


def _missing() -> str | None:
    for name, path in (("mariadbd", MARIADBD), ("mariadb-install-db", INSTALL_DB), ("mariadb", CLIENT),
                       ("tcpdump", TCPDUMP), ("tshark", TSHARK)):
        if not path:
            return f"{name} is not installed (scripts/install --test installs mariadb-server)"
    if os.geteuid() != 0:
        return "tcpdump on loopback needs root"
    try:
        pwd.getpwnam("mysql")
    except KeyError:
        return "no mysql user (Debian's mariadb-server package makes it)"
    return None


pytestmark = needs(_missing())

USER = "app"
PASSWORD = "my-secret-4b7d"
SECRET = "literal-secret-31f0"
DATABASE = "shop"


class Run:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.pcap = d / "mysql.pcap"
        self.port = 0
        self.ports: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.got: dict[str, Any] = {}
        self.keylog = d / "keys.log"


def _server(r: Run, home: Path) -> subprocess.Popen:
    """A fresh data directory owned by the mysql user in ``home``, TLS on, on r.port; the
    test's user and database made over the root socket."""
    my = pwd.getpwnam("mysql")
    data, sock = home / "data", home / "mysqld.sock"
    cert, key = self_signed(home / "tls", "localhost")
    for p in (home, cert.parent, cert, key):
        os.chown(p, my.pw_uid, my.pw_gid)
    subprocess.run([INSTALL_DB, "--no-defaults", "--user=mysql", f"--datadir={data}", "--skip-test-db",
                    "--auth-root-authentication-method=socket"], check=True, capture_output=True, timeout=300)
    server = subprocess.Popen(
        [MARIADBD, "--no-defaults", "--user=mysql", f"--datadir={data}", f"--socket={sock}", f"--port={r.port}",
         "--bind-address=127.0.0.1", f"--pid-file={home / 'mysqld.pid'}", f"--ssl-cert={cert}", f"--ssl-key={key}",
         "--skip-log-bin", "--innodb-buffer-pool-size=16M", "--skip-name-resolve"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(r.port, server, "mariadbd", timeout=90)
    setup = (f"CREATE DATABASE {DATABASE}; CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'; "
             f"GRANT ALL ON {DATABASE}.* TO '{USER}'@'127.0.0.1';")
    subprocess.run([CLIENT, "--no-defaults", "-S", str(sock), "-u", "root", "-e", setup], check=True,
                   capture_output=True, timeout=60)
    return server


def _libmariadb_executes(port: int, sql: str, times: int) -> list[int]:
    """MariaDB Connector/C (Debian's libmariadb3, through ctypes: no headers needed)
    prepares ``sql`` and executes it ``times`` times over the binary protocol; the rows
    each execute returned. Connector/C asks for MariaDB's metadata caching
    (MARIADB_CLIENT_CACHE_METADATA): the executes after the first come without their
    column definitions."""
    import ctypes
    import ctypes.util

    lib = ctypes.CDLL(ctypes.util.find_library("mariadb") or "libmariadb.so.3")
    p = ctypes.c_void_p
    lib.mysql_init.restype = p
    lib.mysql_init.argtypes = [p]
    lib.mysql_real_connect.restype = p
    lib.mysql_real_connect.argtypes = [p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                       ctypes.c_uint, ctypes.c_char_p, ctypes.c_ulong]
    lib.mysql_error.restype = ctypes.c_char_p
    lib.mysql_error.argtypes = [p]
    lib.mysql_stmt_init.restype = p
    lib.mysql_stmt_init.argtypes = [p]
    lib.mysql_stmt_prepare.argtypes = [p, ctypes.c_char_p, ctypes.c_ulong]
    for name in ("mysql_stmt_execute", "mysql_stmt_store_result", "mysql_stmt_free_result", "mysql_stmt_close"):
        getattr(lib, name).argtypes = [p]
    lib.mysql_stmt_num_rows.restype = ctypes.c_ulonglong
    lib.mysql_stmt_num_rows.argtypes = [p]
    lib.mysql_close.argtypes = [p]
    mysql = lib.mysql_init(None)
    if not lib.mysql_real_connect(mysql, b"127.0.0.1", USER.encode(), PASSWORD.encode(), DATABASE.encode(), port,
                                  None, 0):
        raise AssertionError(f"libmariadb: {lib.mysql_error(mysql)!r}")
    stmt = lib.mysql_stmt_init(mysql)
    assert lib.mysql_stmt_prepare(stmt, sql.encode(), len(sql)) == 0, lib.mysql_error(mysql)
    rows = []
    for _ in range(times):
        assert lib.mysql_stmt_execute(stmt) == 0, lib.mysql_error(mysql)
        assert lib.mysql_stmt_store_result(stmt) == 0, lib.mysql_error(mysql)
        rows.append(lib.mysql_stmt_num_rows(stmt))
        lib.mysql_stmt_free_result(stmt)
    lib.mysql_stmt_close(stmt)
    lib.mysql_close(mysql)
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    connector = import_or_require("mysql.connector")
    d = tmp_path_factory.mktemp("mysql")
    r = Run(d)
    r.port = free_port()
    home = Path(tempfile.mkdtemp(prefix="wirestream-mysql-"))
    server = None
    tcpdump = None
    params = dict(host="127.0.0.1", port=r.port, user=USER, password=PASSWORD, database=DATABASE, use_pure=True,
                  ssl_disabled=True)
    try:
        server = _server(r, home)
        tcpdump = tcpdump_loopback(r.pcap, r.port)
        conn = connector.connect(**params)
        cur = conn.cursor()
        cur.execute("SELECT CONNECTION_ID(), @@port")
        cur.fetchall()
        cur.execute("SELECT SUBSTRING_INDEX(USER(), '@', -1)")
        cur.fetchall()
        cur.execute("CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(64))")
        cur.execute("INSERT INTO items VALUES (%s, %s), (%s, %s)", (1, SECRET, 2, "b"))
        r.got["inserted"] = cur.rowcount
        conn.commit()
        cur.execute("SELECT id, name FROM items ORDER BY id")
        r.got["selected"] = len(cur.fetchall())
        try:
            cur.execute("SELECT * FROM nope")
        except connector.Error as exc:
            r.errors["missing"] = exc.errno
        prepared = conn.cursor(prepared=True)
        for i in (1, 2):
            prepared.execute("SELECT name FROM items WHERE id = %s", (i,))
            assert prepared.fetchall()
        prepared.close()
        cur.execute("CREATE PROCEDURE two() BEGIN SELECT 1; SELECT 2, 3; END")
        results = 0
        cur.callproc("two")
        with warnings.catch_warnings():  # (the connector renames stored_results in a later release)
            warnings.simplefilter("ignore", DeprecationWarning)
            for result in cur.stored_results():
                result.fetchall()
                results += 1
        r.got["procedure_results"] = results
        conn.ping()
        r.ports["connector"] = conn._socket.sock.getsockname()[1]
        r.got["cached_metadata_rows"] = _libmariadb_executes(r.port, "SELECT id, name FROM items ORDER BY id", 3)
        cur.close()
        conn.close()
        try:
            connector.connect(**dict(params, password="wrong-" + PASSWORD))
        except connector.Error as exc:
            r.errors["login"] = exc.errno
        # TLS with the client's secrets logged (Python's ssl honours SSLKEYLOGFILE in the
        # default context the connector makes), for the decryption test
        os.environ["SSLKEYLOGFILE"] = str(r.keylog)
        try:
            conn = connector.connect(**dict(params, ssl_disabled=False, ssl_verify_cert=False))
            r.ports["tls_connector"] = conn._socket.sock.getsockname()[1]
            cur = conn.cursor()
            cur.execute("SELECT %s, @@version", (SECRET,))
            cur.fetchall()
            cur.close()
            conn.close()
        finally:
            del os.environ["SSLKEYLOGFILE"]
        tls = subprocess.run([CLIENT, "--no-defaults", "-h", "127.0.0.1", "-P", str(r.port), "-u", USER,
                              f"-p{PASSWORD}", "--ssl", "-N", "-e",
                              "SELECT SUBSTRING_INDEX(USER(), '@', -1), @@ssl_cipher IS NOT NULL"],
                             capture_output=True, text=True, timeout=60)
        assert tls.returncode == 0, tls.stderr
        r.got["tls"] = tls.stdout.strip()
        time.sleep(1.0)
        stop_process(tcpdump, signal.SIGINT)
    finally:
        if tcpdump is not None:
            stop_process(tcpdump, signal.SIGINT)
        if server is not None:
            stop_process(server)
        shutil.rmtree(home, ignore_errors=True)
    return r


@pytest.fixture(scope="module")
def queries(run: Run, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("mysql-analyze")
    analyze_to(run.pcap, out, "--no-redact")
    return read_jsonl(out / "wire.queries.jsonl")


@pytest.fixture(scope="module")
def redacted(run: Run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mysql-analyze-redacted")
    analyze_to(run.pcap, out)
    return out


def _of(queries: list[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    return sorted((q for q in queries if q["client_port"] == port), key=lambda q: q["request_ts_us"])


def _tshark_messages(run: Run) -> dict[int, list[tuple[str, dict[str, str], str]]]:
    """tshark's mysql messages per connection (its client port), in order."""
    return pdml_messages(run.pcap, run.port, "mysql")


#: commands tshark shows that get no response, hence no record: QUIT, SEND_LONG_DATA, STMT_CLOSE
NO_RESPONSE = {"1", "24", "25"}


def _commands(messages: list[tuple[str, dict[str, str], str]]) -> list[tuple[str, int | None]]:
    """What the client asked, as tshark shows it, each with the row packets of its answer
    (None for an answer without a result set): the text of queries, "PREPARE <text>",
    an execute's prepared text (its statement id traced to the PREPARE's answer), the
    other commands by number."""
    statements: dict[str, str] = {}
    out: list[list] = []
    preparing: str | None = None
    for side, f, showname in messages:
        if side == "c" and "mysql.command" in f:
            command = f["mysql.command"]
            if command in NO_RESPONSE:
                continue
            text = " ".join(f.get("mysql.query", "").split())
            if command == "3":
                out.append([text, None])
            elif command == "22":
                out.append([f"PREPARE {text}", None])
                preparing = text
            elif command == "23":
                out.append([statements[f["mysql.stmt_id"]], None])
            else:
                out.append([f"command {command}", None])
        elif side == "s" and out:
            if preparing is not None and "mysql.stmt_id" in f:
                statements[f["mysql.stmt_id"]] = preparing
                preparing = None
            if showname.endswith("row packet"):
                out[-1][1] = (out[-1][1] or 0) + 1
    return [(text, rows) for text, rows in out]


OPERATION_COMMANDS = {"PING": "14", "STMT_RESET": "26", "USE": "2"}


def test_every_command_tshark_shows_is_a_record(run: Run, queries: list[dict[str, Any]]) -> None:
    conns = _tshark_messages(run)
    port = run.ports["connector"]
    checked = 0
    for client, messages in conns.items():
        records = [q for q in _of(queries, client) if q["operation"] != "STARTUP"]
        ours = []
        for q in records:
            if q["operation"] == "PREPARE":
                text = f"PREPARE {q['statement']}"
            elif q["operation"] in OPERATION_COMMANDS:
                text = f"command {OPERATION_COMMANDS[q['operation']]}"
            else:
                text = q["statement"]
            ours.append((text, q["rows"] if q["reply_type"] == "result_set" else None))
        assert ours == _commands(messages), client
        codes = [f["mysql.error_code"] for side, f, _ in messages if side == "s" and "mysql.error_code" in f]
        assert [q["error_code"] for q in _of(queries, client) if q["error_code"]] == codes, client
        checked += len(ours)
    assert port in conns and checked >= 15
    for q in queries:
        assert q["protocol"] == "mysql" and q["server_port"] == run.port and q["client_ip"] == "127.0.0.1"
        if q["status"] in ("ok", "error"):
            assert q["latency_us"] == q["response_ts_us"] - q["request_ts_us"] >= 0, q


def test_what_the_client_got(run: Run, queries: list[dict[str, Any]]) -> None:
    records = _of(queries, run.ports["connector"])
    login = records[0]
    assert (login["operation"], login["status"], login["auth_method"], login["db_user"], login["target"]) == (
        "STARTUP", "ok", "mysql_native_password", USER, DATABASE)
    by = {q["statement"]: q for q in records}
    assert by[f"INSERT INTO items VALUES (1, '{SECRET}'), (2, 'b')"]["rows"] == run.got["inserted"] == 2
    assert by["SELECT id, name FROM items ORDER BY id"]["rows"] == run.got["selected"] == 2
    missing = by["SELECT * FROM nope"]
    assert (missing["status"], missing["error_code"]) == ("error", str(run.errors["missing"]))
    assert "doesn't exist" in missing["error"]
    executes = [q for q in records if q["statement"] == "SELECT name FROM items WHERE id = ?"]
    assert [(q["operation"], q["reply_type"], q["rows"]) for q in executes] == [
        ("PREPARE", "ok", None), ("SELECT", "result_set", 1), ("SELECT", "result_set", 1)]
    call = by["CALL two()"]
    # two result sets (the procedure's SELECTs, one row each) and the CALL's own OK
    assert (call["reply_type"], call["rows"], run.got["procedure_results"]) == ("result_set", 2, 2)
    refused = [q for q in queries if q["operation"] == "STARTUP" and q["status"] == "error"]
    assert [(q["error_code"], q["db_user"]) for q in refused] == [(str(run.errors["login"]), USER)]
    assert "Access denied" in refused[0]["error"]


def test_the_tls_connection_is_a_tls_record(run: Run, queries: list[dict[str, Any]], redacted: Path) -> None:
    tls = [json.loads(line) for line in (redacted / "wire.tls.jsonl").open()]
    ours = [t for t in tls if t["server_port"] == run.port]
    assert len(ours) == 2 and all(t["version"] and t["cipher_suite"] for t in ours)
    assert not {t["client_port"] for t in ours} & {q["client_port"] for q in queries}


def test_queries_inside_tls_with_the_clients_key_log(run: Run, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The connector's TLS connection decrypted with the key log it wrote: the same
    analyser reads on after the SSL request (the login response inside TLS, then the
    commands), its records marked tls."""
    out = tmp_path_factory.mktemp("mysql-analyze-tls")
    analyze_to(run.pcap, out, "--tls-keylog", str(run.keylog), "--no-redact")
    inside = [q for q in read_jsonl(out / "wire.queries.jsonl") if q["client_port"] == run.ports["tls_connector"]]
    assert inside[0]["operation"] == "STARTUP" and inside[0]["db_user"] == USER
    assert inside[0]["auth_method"] == "mysql_native_password"
    assert all(q["tls"] and q["status"] == "ok" for q in inside)
    assert f"SELECT '{SECRET}', @@version" in {q["statement"] for q in inside}


def test_redacted_records_hold_no_literal_or_password(run: Run, redacted: Path) -> None:
    records = [json.loads(line) for line in (redacted / "wire.queries.jsonl").open()]
    statements = {q["statement"] for q in records}
    assert "INSERT INTO items VALUES (?, ?), (?, ?)" in statements
    assert "SELECT SUBSTRING_INDEX(USER(), ?, -?)" in statements
    for path in redacted.glob("*.jsonl"):
        text = path.read_text()
        assert SECRET not in text and PASSWORD not in text, path.name
    # the windows count the commands as requests, the refused login as one of their errors
    windows = [json.loads(line) for line in (redacted / "wire.service-metrics.jsonl").open()]
    windows = [w for w in windows if w.get("scope", "service") == "service" and w["service"].endswith(f":{run.port}")]
    assert sum(w["requests"] for w in windows) == len(records)
    assert sum(w["errors_4xx"] for w in windows) == sum(1 for q in records if q["status"] == "error") == 2


def test_mariadb_metadata_caching(run: Run, queries: list[dict[str, Any]]) -> None:
    """Connector/C negotiates MariaDB's metadata caching: the executes after the first
    answer with a column count saying no definitions follow. Every execute is a record
    with the rows the client got."""
    assert run.got["cached_metadata_rows"] == [2, 2, 2]
    executes = sorted((q for q in queries if q["statement"] == "SELECT id, name FROM items ORDER BY id"
                       and q["operation"] == "SELECT"), key=lambda q: q["request_ts_us"])
    assert [(q["status"], q["rows"]) for q in executes[-3:]] == [("ok", 2)] * 3
