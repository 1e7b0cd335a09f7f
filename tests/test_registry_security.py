"""The schema registry client over basic auth and TLS, against the embedded registry serving
real HTTPS with a CA made here (tests/tls_certs.py), and against Confluent's own client.

Every test checks that the password (right or wrong) is in no error message, and an
autouse fixture checks that it is in no log record and nothing on stdout/stderr.
"""

from __future__ import annotations

import logging
import os
import secrets
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from helpers import DATA, free_port
from tls_certs import CA, issue, make_ca, self_signed

from wirestream.codec import AvroCodec
from wirestream.registry import EmbeddedSchemaRegistry
from wirestream.registry_client_security import (
    ENV_CA,
    ENV_CERT,
    ENV_KEY,
    ENV_PASSWORD,
    ENV_PASSWORD_FILE,
    ENV_USERNAME,
    RegistryAuthError,
    RegistryConfigError,
    RegistrySecurity,
    RegistryTLSError,
    RegistryUnreachable,
    describe_registry_security,
    redact_url,
)
from wirestream.topics import STATS

USER = "wirestream"
# Characters that need care in a URL (percent-encoding) and in basic auth (":"), and a
# random part so that finding it anywhere in the output can only mean it leaked.
PASSWORD = f"p@ss:w/rd%{secrets.token_hex(8)}"
WRONG = f"wrong-{secrets.token_hex(8)}"
SECRETS = (PASSWORD, WRONG, quote(PASSWORD, safe=""))
ALL_ENV = (ENV_USERNAME, ENV_PASSWORD_FILE, ENV_PASSWORD, ENV_CA, ENV_CERT, ENV_KEY, "WIRESTREAM_REGISTRY")

STATS_RECORD = {"stage": "test", "instance": "h:1", "source_id": "s", "partition": 3, "ts_us": 123,
                "final": True, "received": 7, "emitted": {"wire.connections": 2}, "dropped": {"garbage": 1},
                "counters": {}}


class Pki:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.ca: CA = make_ca(d / "ca")
        self.server = issue(self.ca, d / "server", "registry")  # SAN 127.0.0.1, ::1, localhost
        self.client = issue(self.ca, d / "client", "client", ["wirestream"], client=True)
        self.other_ca: CA = make_ca(d / "other", "another CA")
        self.wrong_host = issue(self.ca, d / "wrong-host", "elsewhere", ["registry.example.com"])
        self.password_file = d / "password"
        self.password_file.write_text(PASSWORD + "\n")  # as `echo` writes it: the newline is not the password
        self.wrong_file = d / "wrong"
        self.wrong_file.write_text(WRONG)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure(pki: Pki) -> Iterator[EmbeddedSchemaRegistry]:
    """Basic auth and TLS."""
    cert, key = pki.server
    with EmbeddedSchemaRegistry(credentials=(USER, PASSWORD), certfile=str(cert), keyfile=str(key)) as r:
        yield r


@pytest.fixture(scope="module")
def mutual(pki: Pki) -> Iterator[EmbeddedSchemaRegistry]:
    """Basic auth and mutual TLS (a client certificate signed by the test CA required)."""
    cert, key = pki.server
    with EmbeddedSchemaRegistry(credentials=(USER, PASSWORD), certfile=str(cert), keyfile=str(key),
                                client_ca=str(pki.ca.cert)) as r:
        yield r


@pytest.fixture(autouse=True)
def _no_secret_anywhere(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                        capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    """No inherited WIRESTREAM_REGISTRY_* settings; afterwards, no secret in the logs or output."""
    for name in ALL_ENV:
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.DEBUG)
    yield
    out, err = capfd.readouterr()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in SECRETS:
        assert secret not in logged
        assert secret not in out + err


def _env(monkeypatch: pytest.MonkeyPatch, pki: Pki, password_file: Path | None = None,
         ca: Path | None = None, client: bool = False) -> None:
    monkeypatch.setenv(ENV_USERNAME, USER)
    monkeypatch.setenv(ENV_PASSWORD_FILE, str(password_file or pki.password_file))
    monkeypatch.setenv(ENV_CA, str(ca or pki.ca.cert))
    if client:
        monkeypatch.setenv(ENV_CERT, str(pki.client[0]))
        monkeypatch.setenv(ENV_KEY, str(pki.client[1]))


def _error(exc_info: pytest.ExceptionInfo[BaseException]) -> str:
    """The one line the user sees; checked for the secrets and for being one line."""
    text = str(exc_info.value)
    assert "\n" not in text
    for secret in SECRETS:
        assert secret not in text
    return text


def _url_with(registry: EmbeddedSchemaRegistry, password: str) -> str:
    return registry.url.replace("://", f"://{USER}:{quote(password, safe='')}@", 1)


# --- it works ---------------------------------------------------------------------------------


def test_right_password_and_ca_encode_and_decode(secure: EmbeddedSchemaRegistry, pki: Pki,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering (POST) and fetching by id (GET, a codec that has not seen the schema)
    both go through basic auth over verified TLS."""
    assert secure.url.startswith("https://127.0.0.1:")
    _env(monkeypatch, pki)
    message = AvroCodec(secure.url).encode(STATS, STATS_RECORD)
    assert AvroCodec(secure.url).decode(message) == STATS_RECORD


def test_password_in_the_url_works_and_is_never_shown(secure: EmbeddedSchemaRegistry, pki: Pki,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CA, str(pki.ca.cert))
    url = _url_with(secure, PASSWORD)
    message = AvroCodec(url).encode(STATS, STATS_RECORD)
    assert AvroCodec(url).decode(message) == STATS_RECORD
    assert redact_url(url) == secure.url.replace("://", f"://{USER}:***@")

    with pytest.raises(RegistryAuthError) as exc:
        AvroCodec(_url_with(secure, WRONG)).register(STATS)
    text = _error(exc)
    assert f"schema registry https://{USER}:***@127.0.0.1:" in text
    assert f"refused the password of user '{USER}' (from the URL) (HTTP 401)" in text


def test_password_from_the_environment_variable(secure: EmbeddedSchemaRegistry, pki: Pki,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_USERNAME, USER)
    monkeypatch.setenv(ENV_PASSWORD, PASSWORD)
    monkeypatch.setenv(ENV_CA, str(pki.ca.cert))
    assert AvroCodec(secure.url).register(STATS) > 0


def test_client_certificate(mutual: EmbeddedSchemaRegistry, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutual TLS: with the certificate it works; without, one clear line that says a
    client certificate may be what is missing."""
    _env(monkeypatch, pki, client=True)
    message = AvroCodec(mutual.url).encode(STATS, STATS_RECORD)
    assert AvroCodec(mutual.url).decode(message) == STATS_RECORD

    monkeypatch.delenv(ENV_CERT)
    monkeypatch.delenv(ENV_KEY)
    with pytest.raises(RegistryTLSError) as exc:
        AvroCodec(mutual.url).register(STATS)
    text = _error(exc)
    assert text.startswith(f"schema registry {mutual.url}: ")
    assert ENV_CERT in text

    # a certificate the registry's CA did not sign
    rogue_cert, rogue_key = issue(pki.other_ca, pki.dir / "rogue-client", "rogue", ["x"], client=True)
    monkeypatch.setenv(ENV_CERT, str(rogue_cert))
    monkeypatch.setenv(ENV_KEY, str(rogue_key))
    with pytest.raises(RegistryTLSError) as exc:
        AvroCodec(mutual.url).register(STATS)
    assert f"client certificate {rogue_cert}" in _error(exc)


def test_a_child_process_gets_the_same_configuration(secure: EmbeddedSchemaRegistry, pki: Pki,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers are child processes: the environment is all they need."""
    _env(monkeypatch, pki)
    code = f"from wirestream.codec import AvroCodec; print(AvroCodec({secure.url!r}).register({STATS!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == AvroCodec(secure.url).register(STATS)


# --- what goes wrong says so ------------------------------------------------------------------


def test_wrong_password(secure: EmbeddedSchemaRegistry, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, pki)
    message = AvroCodec(secure.url).encode(STATS, STATS_RECORD)

    _env(monkeypatch, pki, password_file=pki.wrong_file)
    with pytest.raises(RegistryAuthError) as exc:
        AvroCodec(secure.url).register(STATS)
    assert _error(exc) == (f"schema registry {secure.url} refused the password of user '{USER}' "
                           f"(from file {pki.wrong_file}) (HTTP 401)")
    # Reading: a refused password is the registry's error, not a message that cannot be
    # decoded (a reader would count it bad and skip it, for every message).
    with pytest.raises(RegistryAuthError) as exc:
        AvroCodec(secure.url).decode(message)
    _error(exc)


def test_a_worker_does_not_wait_for_a_registry_that_refuses_it(secure: EmbeddedSchemaRegistry, pki: Pki,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A packet worker waits (with backoff) while the registry is unreachable; a refused
    password is raised at once: waiting does not fix it, and the worker would hang."""
    from wirestream.processors.packet_pipeline import when_registry_answers

    _env(monkeypatch, pki, password_file=pki.wrong_file)
    t0 = time.monotonic()
    with pytest.raises(RegistryAuthError):
        # (were it waited for, it would give up after 5 s and return False, not raise)
        when_registry_answers(lambda: AvroCodec(secure.url).register(STATS), "partition 0",
                              stopping=lambda: time.monotonic() - t0 > 5)
    assert time.monotonic() - t0 < 5
    # unreachable: waited for (here, until told to stop), not raised
    waits: Counter[str] = Counter()
    stop_after = time.monotonic() + 1.0
    assert not when_registry_answers(lambda: AvroCodec("http://127.0.0.1:9").register(STATS), "partition 0",
                                     stopping=lambda: time.monotonic() > stop_after, waits=waits)
    assert waits["registry_waits"] >= 1


def test_no_credentials(secure: EmbeddedSchemaRegistry, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CA, str(pki.ca.cert))
    with pytest.raises(RegistryAuthError) as exc:
        AvroCodec(secure.url).register(STATS)
    assert _error(exc) == (f"schema registry {secure.url} requires authentication (HTTP 401): "
                           f"set {ENV_USERNAME} and {ENV_PASSWORD_FILE}")


def test_unknown_ca(secure: EmbeddedSchemaRegistry, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """No CA given (the system's trust store, which does not know the test CA), then
    another CA: refused before any credentials are sent."""
    _env(monkeypatch, pki)
    monkeypatch.delenv(ENV_CA)
    with pytest.raises(RegistryTLSError) as exc:
        AvroCodec(secure.url).register(STATS)
    text = _error(exc)
    assert text.startswith(f"schema registry {secure.url}: TLS certificate not trusted (")
    assert text.endswith(f"set {ENV_CA} to the PEM file of the CA that signed it")

    monkeypatch.setenv(ENV_CA, str(pki.other_ca.cert))
    with pytest.raises(RegistryTLSError) as exc:
        AvroCodec(secure.url).register(STATS)
    assert _error(exc).endswith(f"it is not signed by the CA in {pki.other_ca.cert}")


def test_self_signed_registry_is_refused_unless_its_certificate_is_the_ca(pki: Pki, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path, "self")
    with EmbeddedSchemaRegistry(credentials=(USER, PASSWORD), certfile=str(cert), keyfile=str(key)) as r:
        _env(monkeypatch, pki)  # the test CA: not the one that signed it
        with pytest.raises(RegistryTLSError):
            AvroCodec(r.url).register(STATS)
        monkeypatch.setenv(ENV_CA, str(cert))
        assert AvroCodec(r.url).register(STATS) > 0


def test_hostname_is_checked(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """A certificate from the right CA but for another host name is refused."""
    cert, key = pki.wrong_host
    with EmbeddedSchemaRegistry(credentials=(USER, PASSWORD), certfile=str(cert), keyfile=str(key)) as r:
        _env(monkeypatch, pki)
        with pytest.raises(RegistryTLSError) as exc:
            AvroCodec(r.url).register(STATS)
        assert _error(exc).startswith(f"schema registry {r.url}: its TLS certificate is not for host '127.0.0.1' (")


def test_unreachable(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # free a moment ago: nothing listens on it
    monkeypatch.setenv(ENV_CA, str(pki.ca.cert))
    url = f"https://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}"
    with pytest.raises(RegistryUnreachable) as exc:
        AvroCodec(url).register(STATS)
    assert _error(exc) == f"schema registry https://{USER}:***@127.0.0.1:{port} unreachable: Connection refused"


def test_https_and_http_mixed_up(registry: EmbeddedSchemaRegistry, secure: EmbeddedSchemaRegistry) -> None:
    url = registry.url.replace("http://", "https://")
    with pytest.raises(RegistryTLSError) as exc:
        AvroCodec(url).register(STATS)
    assert _error(exc).startswith(f"schema registry {url}: TLS handshake failed (")

    url = secure.url.replace("https://", "http://")
    with pytest.raises(RegistryUnreachable) as exc:
        AvroCodec(url).register(STATS)
    assert _error(exc).endswith("(does it serve https only?)")


def test_configuration_problems_are_named(pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          secure: EmbeddedSchemaRegistry) -> None:
    missing = tmp_path / "no-such-file"
    _env(monkeypatch, pki, password_file=missing)
    with pytest.raises(RegistryConfigError) as exc:
        AvroCodec(secure.url)
    assert _error(exc) == f"schema registry password file {missing}: cannot read it (No such file or directory)"

    monkeypatch.delenv(ENV_PASSWORD_FILE)
    with pytest.raises(RegistryConfigError) as exc:
        AvroCodec(secure.url)
    assert ENV_PASSWORD_FILE in _error(exc)

    _env(monkeypatch, pki, ca=missing)
    with pytest.raises(RegistryConfigError) as exc:
        AvroCodec(secure.url).register(STATS)
    assert _error(exc).startswith(f"schema registry CA file {missing} ({ENV_CA}): cannot load it")

    # an encrypted key: one line, not OpenSSL's passphrase prompt (a worker would hang on it)
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.client[1].read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"key-passphrase")))
    _env(monkeypatch, pki, client=True)
    monkeypatch.setenv(ENV_KEY, str(encrypted))
    with pytest.raises(RegistryConfigError) as exc:
        AvroCodec(secure.url).register(STATS)
    assert _error(exc) == f"schema registry client key {encrypted} is encrypted: give an unencrypted key file"


def test_the_cli_says_one_line_and_fails(broker: object, secure: EmbeddedSchemaRegistry, pki: Pki,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``wirestream produce pcap`` registers every schema first: with the right password
    it publishes, with a wrong one it exits non-zero with one line and no traceback."""
    capture = str(DATA / "chrissanders" / "udp_dnsrequest.pcapng")
    cmd = [sys.executable, "-m", "wirestream", "produce", "pcap", capture,
           "--bootstrap", broker.bootstrap, "--registry", secure.url]  # type: ignore[attr-defined]
    _env(monkeypatch, pki)
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, env=os.environ.copy())
    assert ok.returncode == 0, ok.stderr
    assert "packets published" in ok.stdout

    _env(monkeypatch, pki, password_file=pki.wrong_file)
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, env=os.environ.copy())
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr
    assert f"schema registry {secure.url} refused the password of user '{USER}'" in bad.stderr
    errors = [line for line in bad.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, bad.stderr
    for secret in SECRETS:
        assert secret not in bad.stdout + bad.stderr


# --- the embedded registry --------------------------------------------------------------------


def test_embedded_registry_needs_credentials_off_loopback() -> None:
    with pytest.raises(ValueError, match="only with basic auth"):
        EmbeddedSchemaRegistry(host="0.0.0.0")  # noqa: S104 - the refusal is the test
    with EmbeddedSchemaRegistry() as r:  # loopback, as before: open, plain http
        assert r.url.startswith("http://127.0.0.1:")
        assert AvroCodec(r.url).register(STATS) == 1


def test_embedded_registry_answers_401_as_confluent_does(secure: EmbeddedSchemaRegistry, pki: Pki) -> None:
    import httpx

    with httpx.Client(verify=ssl.create_default_context(cafile=pki.ca.cert)) as client:
        assert client.get(f"{secure.url}/subjects", auth=(USER, PASSWORD)).status_code == 200
        for auth in ((USER, WRONG), (USER, ""), ("someone", PASSWORD), None):
            answer = client.get(f"{secure.url}/subjects", auth=auth)
            assert answer.status_code == 401
            assert answer.json() == {"error_code": 401, "message": "Unauthorized"}
            assert answer.headers["WWW-Authenticate"].startswith("Basic ")
        # a refused POST's body is read, not taken for the next request on the connection
        refused = client.post(f"{secure.url}/subjects/x-value/versions", json={"schema": '"string"'},
                              auth=(USER, WRONG))
        assert refused.status_code == 401
        assert client.get(f"{secure.url}/subjects", auth=(USER, PASSWORD)).status_code == 200


# --- Confluent's client -----------------------------------------------------------------------


def test_confluent_client_with_basic_auth_and_ca(secure: EmbeddedSchemaRegistry, pki: Pki,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Confluent's serializer writes, wirestream reads; wirestream writes, Confluent's
    deserializer reads; both through basic auth over TLS. A wrong password is a 401 to it."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.schema_registry.error import SchemaRegistryError
    from confluent_kafka.serialization import MessageField, SerializationContext
    from wirestream.schemas import schema_text

    _env(monkeypatch, pki)
    config = {"url": secure.url, "basic.auth.user.info": f"{USER}:{PASSWORD}", "ssl.ca.location": str(pki.ca.cert)}
    context = SerializationContext(STATS, MessageField.VALUE)
    confluent = SchemaRegistryClient(config)
    theirs = AvroSerializer(confluent, schema_text("stats"))(STATS_RECORD, context)
    assert AvroCodec(secure.url).decode(theirs) == STATS_RECORD
    ours = AvroCodec(secure.url).encode(STATS, STATS_RECORD)
    assert AvroDeserializer(SchemaRegistryClient(config))(ours, context) == STATS_RECORD
    assert ours[1:5] == theirs[1:5]  # one schema, one id

    wrong = SchemaRegistryClient({**config, "basic.auth.user.info": f"{USER}:{WRONG}"})
    with pytest.raises(SchemaRegistryError) as exc:
        wrong.get_subjects()
    assert exc.value.http_status_code == 401


def test_confluent_client_with_client_certificate(mutual: EmbeddedSchemaRegistry, pki: Pki) -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    client = SchemaRegistryClient({"url": mutual.url, "basic.auth.user.info": f"{USER}:{PASSWORD}",
                                   "ssl.ca.location": str(pki.ca.cert),
                                   "ssl.certificate.location": str(pki.client[0]),
                                   "ssl.key.location": str(pki.client[1])})
    assert isinstance(client.get_subjects(), list)


# --- doctor's line ----------------------------------------------------------------------------


def test_describe_says_what_without_secrets(pki: Pki, tmp_path: Path) -> None:
    env = {"WIRESTREAM_REGISTRY": f"https://{USER}:{quote(PASSWORD, safe='')}@reg.example:8081",
           ENV_CA: str(pki.ca.cert), ENV_CERT: str(pki.client[0]), ENV_KEY: str(pki.client[1])}
    assert describe_registry_security(environ=env) == (
        f"registry https://{USER}:***@reg.example:8081: basic auth as user '{USER}' (password from the URL), "
        f"CA {pki.ca.cert}, client certificate {pki.client[0]} (key {pki.client[1]})")

    env = {ENV_USERNAME: USER, ENV_PASSWORD_FILE: str(pki.password_file)}
    assert describe_registry_security("http://reg.example:8081", env) == (
        f"registry http://reg.example:8081: basic auth as user '{USER}' (password from file {pki.password_file}), "
        "the system's CAs (if https); WARNING: credentials sent in cleartext (http, not https)")
    assert describe_registry_security("", {}) == (
        "registry (embedded unless --registry): no authentication, the system's CAs (if https)")

    missing = tmp_path / "missing.pem"
    text = describe_registry_security("https://reg.example:8081", {ENV_CA: str(missing)})
    assert text.startswith(f"registry https://reg.example:8081: PROBLEM: schema registry CA file {missing}")

    security = RegistrySecurity.from_env("", {ENV_USERNAME: USER, ENV_PASSWORD: PASSWORD})
    assert PASSWORD not in repr(security) and PASSWORD not in security.describe()


def test_redact_url() -> None:
    assert redact_url("https://u:p%40ss@h:1/x?q=1") == "https://u:***@h:1/x?q=1"
    assert redact_url("http://u:a@b@h:1,http://h2:2") == "http://u:***@h:1,http://h2:2"
    assert redact_url("http://h:1/path@x") == "http://h:1/path@x"  # an "@" after the host is no userinfo

