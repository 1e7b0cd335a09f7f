"""PostgreSQL on the wire: ``wire.queries`` against a real PostgreSQL server.

A PostgreSQL server of the test's own on loopback (Debian's ``postgresql``, run as the
``postgres`` user in a fresh cluster, SCRAM passwords, TLS on); tcpdump records its port
while two clients run a known workload:

* ``psql`` (libpq's simple query protocol): DDL, a multi-statement transaction, an
  error (a missing table), a COPY out;
* psycopg 3 (the extended protocol: Parse/Bind/Describe/Execute/Sync): parameterised
  INSERT and SELECT, a server-side prepared statement executed three times, a bad cast
  (error 22P02), a pipeline of five INSERTs, a pipeline whose second statement fails
  (the third is skipped by the server), a wrong password (28P01), a TLS connection.

Then ``wirestream analyze`` reads the capture (with and without ``--no-redact``). The
referees:

* tshark's ``pgsql`` dissector (``-d tcp.port==P,pgsql``), connection by connection:
  every simple query it shows is a record with that text, every Execute a record with
  the text its portal was bound to (Parse → Bind → Execute, as tshark shows them), its
  command tags are the records' command tags, in order, and its ErrorResponses' SQLSTATE
  codes the records' error codes, in order;
* what the clients got: rows counts, the errors psycopg raised (SQLSTATE), which
  statements the pipelines sent together, the login's method and the refused login;
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
PSQL = shutil.which("psql")


def _pg_bin() -> Path | None:
    """The server's programs: Debian keeps them in /usr/lib/postgresql/<version>/bin."""
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "postgres").exists() and (d / "initdb").exists():
            return d
    return None


PG_BIN = _pg_bin()


def _missing() -> str | None:
    for name, path in (("postgresql (initdb, postgres)", PG_BIN), ("psql", PSQL), ("tcpdump", TCPDUMP),
                       ("tshark", TSHARK)):
        if not path:
            return f"{name} is not installed (scripts/install --test installs it)"
    if os.geteuid() != 0:
        return "tcpdump on loopback needs root"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user (Debian's postgresql package makes it)"
    return None


pytestmark = needs(_missing())

USER = "wsuser"
PASSWORD = "pg-secret-9c1e"
SECRET = "literal-secret-77aa"
DATABASE = "postgres"


class Run:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.pcap = d / "postgres.pcap"
        self.port = 0
        self.ports: dict[str, int] = {}  # workload part -> client port
        self.errors: dict[str, str] = {}  # workload part -> SQLSTATE the client got
        self.keylog = d / "keys.log"


def _server(r: Run, home: Path) -> subprocess.Popen:
    """A fresh cluster owned by the postgres user in ``home`` (a directory that user can
    reach: pytest's are root's only), SCRAM for TCP, TLS on, on r.port."""
    pg = pwd.getpwnam("postgres")
    data, sock = home / "data", home / "sock"
    sock.mkdir()
    pwfile = home / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    cert, key = self_signed(home / "tls", "localhost")
    for p in (home, sock, pwfile, cert.parent, cert, key):
        os.chown(p, pg.pw_uid, pg.pw_gid)
    os.chmod(key, 0o600)
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data), "-U", USER,
                    f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True, timeout=120)
    return subprocess.Popen(
        ["runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D", str(data), "-p", str(r.port),
         "-k", str(sock), "-c", "listen_addresses=127.0.0.1", "-c", "ssl=on", "-c", f"ssl_cert_file={cert}",
         "-c", f"ssl_key_file={key}", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _psql(r: Run, *commands: str) -> subprocess.CompletedProcess:
    args = [PSQL, "-X", "-h", "127.0.0.1", "-p", str(r.port), "-U", USER, "-d", DATABASE, "-v", "ON_ERROR_STOP=0"]
    for c in commands:
        args += ["-c", c]
    env = dict(os.environ, PGPASSWORD=PASSWORD, PGSSLMODE="disable", PGAPPNAME="psql-test")
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)


def _client_port(conn: Any) -> int:
    return conn.execute("SELECT inet_client_port()").fetchone()[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    psycopg = import_or_require("psycopg")
    d = tmp_path_factory.mktemp("postgres")
    r = Run(d)
    r.port = free_port()
    home = Path(tempfile.mkdtemp(prefix="wirestream-postgres-"))
    server = _server(r, home)
    tcpdump = None
    dsn = f"host=127.0.0.1 port={r.port} user={USER} password={PASSWORD} dbname={DATABASE}"
    try:
        wait_port(r.port, server, "postgres", timeout=60)
        tcpdump = tcpdump_loopback(r.pcap, r.port)
        # the simple query protocol: psql, one connection for all its -c commands
        done = _psql(r, "SELECT inet_client_port()",
                     "CREATE TABLE items (id int PRIMARY KEY, name text)",
                     f"BEGIN; INSERT INTO items VALUES (1, '{SECRET}'); COMMIT",
                     "SELECT * FROM nope",
                     "COPY items TO STDOUT")
        r.ports["psql"] = int(done.stdout.split("\n")[2].strip())
        assert "42P01" in done.stderr or "does not exist" in done.stderr, done.stderr
        assert SECRET in done.stdout
        # the extended protocol: psycopg 3
        with psycopg.connect(dsn + " sslmode=disable application_name=psycopg-test", autocommit=True) as conn:
            r.ports["psycopg"] = _client_port(conn)
            cur = conn.cursor()
            cur.execute("INSERT INTO items VALUES (%s, %s)", (2, SECRET))
            assert cur.rowcount == 1
            cur.execute("SELECT id, name FROM items WHERE id > %s ORDER BY id", (0,))
            assert len(cur.fetchall()) == 2
            for i in range(3):  # a named, server-side prepared statement: one Parse, three Execute
                cur.execute("SELECT name FROM items WHERE id = %s", (1 + i % 2,), prepare=True)
                assert cur.fetchone() is not None
            try:
                cur.execute("SELECT %s::int", ("not-a-number",))
            except psycopg.errors.InvalidTextRepresentation as exc:
                r.errors["cast"] = exc.sqlstate
            with conn.pipeline():  # five INSERTs sent together, one Sync
                for i in range(10, 15):
                    cur.execute("INSERT INTO items VALUES (%s, %s)", (i, SECRET))
            try:
                with conn.pipeline() as p:  # the second fails: the third is skipped
                    cur.execute("INSERT INTO items VALUES (%s, %s)", (20, "a"))
                    cur.execute("INSERT INTO items VALUES (%s, %s)", (20, "duplicate"))
                    cur.execute("INSERT INTO items VALUES (%s, %s)", (21, "never"))
                    p.sync()
            except psycopg.errors.UniqueViolation as exc:
                r.errors["pipeline"] = exc.sqlstate
        try:
            psycopg.connect(f"host=127.0.0.1 port={r.port} user={USER} password=wrong-{PASSWORD} "
                            f"dbname={DATABASE} sslmode=disable")
        except psycopg.OperationalError as exc:
            r.errors["login"] = "28P01" if "password authentication failed" in str(exc) else str(exc)
        # TLS, the client logging its secrets (libpq 18's sslkeylogfile: psycopg's binary
        # wheels bundle it) for the decryption test
        with psycopg.connect(dsn + f" sslmode=require sslkeylogfile={r.keylog}") as conn:
            r.ports["tls"] = _client_port(conn)
            conn.execute("SELECT 1")
            conn.execute("SELECT %s::text", (SECRET,))
        time.sleep(1.0)
        stop_process(tcpdump, signal.SIGINT)
    finally:
        if tcpdump is not None:
            stop_process(tcpdump, signal.SIGINT)
        stop_process(server)
        shutil.rmtree(home, ignore_errors=True)
    return r


@pytest.fixture(scope="module")
def queries(run: Run, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The records with the statements as sent (the referee compares texts)."""
    out = tmp_path_factory.mktemp("pg-analyze")
    assert analyze_to(run.pcap, out, "--no-redact")["records"].get("wire.queries", 0) > 0
    return read_jsonl(out / "wire.queries.jsonl")


@pytest.fixture(scope="module")
def redacted(run: Run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pg-analyze-redacted")
    analyze_to(run.pcap, out)
    return out


def _of(queries: list[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    return sorted((q for q in queries if q["client_port"] == port), key=lambda q: q["request_ts_us"])


def _tshark_messages(run: Run) -> dict[int, list[tuple[str, dict[str, str]]]]:
    """tshark's pgsql messages per connection (its client port), in order: (direction
    ``c``/``s``, the first value of each pgsql field of the message)."""
    return {port: [(side, f) for side, f, _ in messages if "pgsql.type" in f]
            for port, messages in pdml_messages(run.pcap, run.port, "pgsql").items()}


def _executed(messages: list[tuple[str, dict[str, str]]]) -> list[str]:
    """The texts of what the client had executed, as tshark shows the messages: simple
    queries, and each Execute's portal traced back through its Bind to its Parse."""
    statements: dict[str, str] = {}
    portals: dict[str, str] = {}
    out = []
    for side, f in messages:
        if side != "c":
            continue
        kind = f["pgsql.type"]
        if kind == "Simple query":
            out.append(f["pgsql.query"])
        elif kind == "Parse":
            statements[f.get("pgsql.statement", "")] = f["pgsql.query"]
        elif kind == "Bind":
            portals[f.get("pgsql.portal", "")] = statements[f.get("pgsql.statement", "")]
        elif kind == "Execute":
            out.append(portals[f.get("pgsql.portal", "")])
    return [" ".join(t.split()) for t in out]


NOT_EXECUTED = ("STARTUP", "PREPARE", "CANCEL")


def test_every_query_tshark_shows_is_a_record(run: Run, queries: list[dict[str, Any]]) -> None:
    conns = _tshark_messages(run)
    assert {run.ports["psql"], run.ports["psycopg"]} <= set(conns)
    checked = 0
    for port, messages in conns.items():
        records = _of(queries, port)
        executed = [q for q in records if q["operation"] not in NOT_EXECUTED]
        # every simple query and Execute, with its text, in order
        assert [q["statement"] for q in executed] == _executed(messages), port
        # the server's command tags, in order
        tags = [f["pgsql.tag"] for side, f in messages if side == "s" and f["pgsql.type"] == "Command completion"]
        assert [t for q in records if q["command_tag"] for t in q["command_tag"].split("; ")] == tags, port
        # its errors' SQLSTATE codes, in order
        codes = [f["pgsql.code"] for side, f in messages if side == "s" and f["pgsql.type"] == "Error"]
        assert [q["error_code"] for q in records if q["error_code"]] == codes, port
        checked += len(executed)
    assert checked >= 20
    for q in queries:
        assert q["protocol"] == "postgresql" and q["server_port"] == run.port and q["client_ip"] == "127.0.0.1"
        if q["status"] in ("ok", "error"):
            assert q["latency_us"] == q["response_ts_us"] - q["request_ts_us"] >= 0, q


def test_logins_and_their_method(run: Run, queries: list[dict[str, Any]]) -> None:
    logins = {q["client_port"]: q for q in queries if q["operation"] == "STARTUP"}
    for part in ("psql", "psycopg"):
        login = logins[run.ports[part]]
        assert (login["status"], login["auth_method"], login["db_user"], login["target"]) == (
            "ok", "scram-sha-256", USER, DATABASE), login
        assert all(q["db_user"] == USER and q["target"] == DATABASE for q in _of(queries, run.ports[part]))
    (refused,) = [q for q in logins.values() if q["status"] == "error"]
    assert refused["error_code"] == run.errors["login"] == "28P01"
    assert "password authentication failed" in refused["error"]
    # the TLS connection: its SSLRequest was answered S, and it is a wire.tls record
    assert run.ports["tls"] not in {q["client_port"] for q in queries}


def test_what_the_clients_got(run: Run, queries: list[dict[str, Any]]) -> None:
    psql = _of(queries, run.ports["psql"])
    by_statement = {q["statement"]: q for q in psql}
    assert by_statement["COPY items TO STDOUT"]["rows"] == 1
    assert by_statement["SELECT * FROM nope"]["error_code"] == "42P01"
    multi = by_statement[f"BEGIN; INSERT INTO items VALUES (1, '{SECRET}'); COMMIT"]
    assert (multi["operation"], multi["command_tag"], multi["rows"]) == ("BEGIN;INSERT;COMMIT",
                                                                         "BEGIN; INSERT 0 1; COMMIT", 1)
    ext = _of(queries, run.ports["psycopg"])
    ops = [(q["operation"], q["status"], q["rows"], q["error_code"]) for q in ext]
    assert ops[:8] == [("STARTUP", "ok", None, None), ("SELECT", "ok", 1, None), ("INSERT", "ok", 1, None),
                       ("SELECT", "ok", 2, None), ("PREPARE", "ok", None, None), ("SELECT", "ok", 1, None),
                       ("SELECT", "ok", 1, None), ("SELECT", "ok", 1, None)]
    assert ops[8] == ("SELECT", "error", None, run.errors["cast"])
    # the five INSERTs of the first pipeline: sent together, the first alone in waiting
    pipeline = ext[9:14]
    assert [(q["operation"], q["status"], q["pipelined"]) for q in pipeline] == (
        [("INSERT", "ok", False)] + [("INSERT", "ok", True)] * 4)
    # the second pipeline: ok, the duplicate key, then the INSERT the server skipped
    assert [(q["status"], q["error_code"]) for q in ext[14:17]] == [
        ("ok", None), ("error", run.errors["pipeline"]), ("skipped", None)]
    assert ext[16]["latency_us"] is None and len(ext) == 17


def test_the_tls_connection_is_a_tls_record(run: Run, redacted: Path) -> None:
    tls = [json.loads(line) for line in (redacted / "wire.tls.jsonl").open()]
    (record,) = [t for t in tls if t["client_port"] == run.ports["tls"]]
    assert record["server_port"] == run.port and record["version"] and record["cipher_suite"]


def test_redacted_records_hold_no_literal_or_password(run: Run, redacted: Path) -> None:
    records = [json.loads(line) for line in (redacted / "wire.queries.jsonl").open()]
    statements = {q["statement"] for q in records}
    assert "BEGIN; INSERT INTO items VALUES (?, ?); COMMIT" in statements
    assert "SELECT $1::int" in statements and "INSERT INTO items VALUES ($1, $2)" in statements
    for path in redacted.glob("*.jsonl"):
        text = path.read_text()
        assert SECRET not in text and PASSWORD not in text, path.name
    # the windows count the queries as requests (not the skipped one), their errors as 4xx
    windows = [json.loads(line) for line in (redacted / "wire.service-metrics.jsonl").open()]
    windows = [w for w in windows if w.get("scope", "service") == "service" and w["service"].endswith(f":{run.port}")]
    assert sum(w["requests"] for w in windows) == sum(1 for q in records if q["status"] != "skipped")
    assert sum(w["errors_4xx"] for w in windows) == sum(1 for q in records if q["status"] == "error") == 4


def test_each_operation_has_windows_of_its_own(run: Run, redacted: Path) -> None:
    """Per-operation windows (scope operation): each operation's calls, errors and latency
    percentiles, from the same records as its service's windows."""
    from collections import Counter

    records = [json.loads(line) for line in (redacted / "wire.queries.jsonl").open()]
    windows = [json.loads(line) for line in (redacted / "wire.service-metrics.jsonl").open()]
    ops = [w for w in windows if w["scope"] == "operation" and w["operation_service"].endswith(f":{run.port}")]
    calls: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for w in ops:
        assert w["operation_protocol"] == "postgresql"
        assert w["service"] == f"op:{w['operation_service']}>postgresql:{w['operation']}"
        calls[w["operation"]] += w["requests"]
        errors[w["operation"]] += w["errors_4xx"] + w["errors_5xx"]
        latencies = [q["latency_us"] for q in records if q["operation"] == w["operation"] and q["latency_us"]]
        assert w["latency_p99_us"] is None or w["latency_p99_us"] <= max(latencies)
    assert calls == Counter(q["operation"] for q in records if q["status"] != "skipped")
    assert errors == Counter(q["operation"] for q in records if q["status"] == "error")
    assert {"STARTUP", "SELECT", "INSERT", "CREATE TABLE", "BEGIN;INSERT;COMMIT", "COPY", "PREPARE"} <= set(calls)


def test_query_errors_are_counted_and_their_burst_detected(run: Run, redacted: Path,
                                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    records = read_jsonl(redacted / "wire.queries.jsonl")
    errors = sum(1 for q in records if q["status"] == "error")
    windows = [w for w in read_jsonl(redacted / "wire.service-metrics.jsonl") if w["scope"] == "service"]
    assert sum(w["query_errors"] for w in windows) == errors == 4
    # the defaults (20 errors, 20 % of the calls) are not reached by 4 of 27; with 1 and 0 % they are
    assert not [a for a in read_jsonl(redacted / "wire.alerts.jsonl") if a["kind"] == "query_error_burst"]
    out = tmp_path_factory.mktemp("pg-analyze-alerts")
    analyze_to(run.pcap, out, "--alert-threshold", "query_errors=1", "--alert-threshold", "query_errors_share=0")
    fired = [a for a in read_jsonl(out / "wire.alerts.jsonl") if a["kind"] == "query_error_burst"]
    assert fired and sum(int(a["evidence"]["query_errors"]) for a in fired) == 4
    assert all(a["severity"] == "warning" and "database and cache calls failed" in a["summary"] for a in fired)


def test_queries_inside_tls_with_the_clients_key_log(run: Run, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The TLS connection (after its SSLRequest, answered S) decrypted with the key log
    libpq wrote: the same analyser reads the login and the queries inside, marked tls."""
    if not run.keylog.exists() or not run.keylog.read_text().strip():
        pytest.skip("this libpq does not write sslkeylogfile (libpq 18 does)")
    out = tmp_path_factory.mktemp("pg-analyze-tls")
    analyze_to(run.pcap, out, "--tls-keylog", str(run.keylog), "--no-redact")
    inside = [q for q in read_jsonl(out / "wire.queries.jsonl") if q["client_port"] == run.ports["tls"]]
    # (psycopg outside autocommit: its first query opens a transaction, the block's end commits)
    assert [q["operation"] for q in inside] == ["STARTUP", "BEGIN", "SELECT", "SELECT", "SELECT", "COMMIT"]
    assert all(q["status"] == "ok" and q["tls"] for q in inside)
    assert inside[0]["auth_method"] == "scram-sha-256" and inside[0]["db_user"] == USER
    assert inside[-2]["statement"] == "SELECT $1::text"
    (tls,) = [t for t in read_jsonl(out / "wire.tls.jsonl") if t["client_port"] == run.ports["tls"]]
    assert tls["connection_id"] == inside[0]["connection_id"]
