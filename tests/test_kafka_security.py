"""wirestream on an Apache Kafka that requires TLS and authentication, and has ACLs.

A real Apache Kafka (tests/kafka_cluster.py) with, besides its PLAINTEXT listener (the
tests' admin door), a SASL_SSL listener (SCRAM-SHA-512) and an SSL listener that requires
a client certificate; an authorizer that denies what no ACL allows; a user ``wirestream``
whose ACLs allow wirestream's topics (``wire.``, ``wirestream``) and groups (``wirestream``)
only, and a user ``outsider`` with no ACL. Certificates come from a CA the test makes
(tests/tls_certs.py); the brokers' certificate names 127.0.0.1, which clients check.

Through each secure listener, the pipeline runs as a user would run it:

* ``analyze`` (producer, packet workers, windows, the collector: librdkafka clients) gives
  the same records as on the embedded broker;
* ``produce pcap`` into a ``wirestream process`` worker (the windows as a Faust agent:
  aiokafka) gives every partition's final report, and ``tail`` and the client API read
  the output.

A wrong password, a broker certificate from an unknown CA, and a user without ACLs each
end the command with one clear line and a non-zero exit, well before any timeout of the
pipeline, and no secret appears in anything a command printed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import require_or_skip
from kafka_cluster import ApacheKafka, OAuthValidation, SecureListeners, kafka_unavailable
from oidc_provider import AUDIENCE, OidcProvider
from tls_certs import issue, make_ca, self_signed

from wirestream import kafka_security
from wirestream.kafka_security import KafkaSecurityError, load

CAPTURE = str(Path(__file__).parent / "data" / "chrissanders" / "http_espn.pcapng")
PASSWORD = "wS-" + secrets.token_urlsafe(18)  # what must never be printed
OUTSIDER_PASSWORD = "oS-" + secrets.token_urlsafe(18)
READER_PASSWORD = "rS-" + secrets.token_urlsafe(18)
OAUTH_SECRET = "cS-" + secrets.token_urlsafe(18)  # the service account's client secret


class Secure:
    """The secure cluster and the client settings for each of its listeners."""

    def __init__(self, kafka: ApacheKafka, files: Path, ca: Path, client_cert: Path, client_key: Path,
                 idp: OidcProvider) -> None:
        self.kafka = kafka
        self.idp = idp
        self.oauth_secret_file = files / "client-secret"
        self.oauth_secret_file.write_text(OAUTH_SECRET)
        self.files = files
        self.ca = ca
        self.client_cert = client_cert
        self.client_key = client_key
        self.password_file = files / "password"
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)

    def scram_env(self, password_file: Path | None = None, ca: Path | None = None,
                  user: str = "wirestream") -> dict[str, str]:
        return {"WIRESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "WIRESTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "WIRESTREAM_KAFKA_SASL_USERNAME": user,
                "WIRESTREAM_KAFKA_SASL_PASSWORD_FILE": str(password_file or self.password_file),
                "WIRESTREAM_KAFKA_CA": str(ca or self.ca)}

    def mtls_env(self) -> dict[str, str]:
        return {"WIRESTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "WIRESTREAM_KAFKA_CA": str(self.ca),
                "WIRESTREAM_KAFKA_CERT": str(self.client_cert), "WIRESTREAM_KAFKA_KEY": str(self.client_key)}

    def oauth_env(self, secret_file: Path | None = None) -> dict[str, str]:
        return {"WIRESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "WIRESTREAM_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
                "WIRESTREAM_KAFKA_OAUTH_TOKEN_URL": self.idp.token_url,
                "WIRESTREAM_KAFKA_OAUTH_CLIENT_ID": "wirestream",
                "WIRESTREAM_KAFKA_OAUTH_CLIENT_SECRET_FILE": str(secret_file or self.oauth_secret_file),
                "WIRESTREAM_KAFKA_CA": str(self.ca)}

    def listener(self, name: str) -> tuple[str, dict[str, str]]:
        if name == "scram":
            return self.kafka.scram_bootstrap, self.scram_env()
        if name == "oauth":
            return self.kafka.oauth_bootstrap, self.oauth_env()
        return self.kafka.mtls_bootstrap, self.mtls_env()


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    reason = kafka_unavailable()
    if reason:
        require_or_skip(f"no Apache Kafka: {reason}")
    files = tmp_path_factory.mktemp("kafka-tls")
    ca = make_ca(files)
    cert, key = issue(ca, files, "broker")
    keystore = files / "broker-keystore.pem"  # Kafka's PEM key store: the key, then the chain
    keystore.write_text(key.read_text() + cert.read_text())
    client_cert, client_key = issue(ca, files, "wirestream", ["wirestream"], client=True)
    idp = OidcProvider({"wirestream": OAUTH_SECRET})
    kafka = ApacheKafka(brokers=1, secure=SecureListeners(ca.cert, keystore,
                                                          OAuthValidation(idp.jwks_url, idp.issuer, AUDIENCE)))
    with idp, kafka:
        kafka.add_scram_user("wirestream", PASSWORD)
        kafka.add_scram_user("outsider", OUTSIDER_PASSWORD)
        kafka.add_scram_user("reader", READER_PASSWORD)
        kafka.allow_prefixed("User:wirestream", topics=["wire.", "wirestream"], groups=["wirestream"])
        # may read wirestream's topics, not write them
        kafka.allow_prefixed("User:reader", topics=["wire."], groups=["wirestream"], operations=["READ", "DESCRIBE"])
        try:
            yield Secure(kafka, files, ca.cert, client_cert, client_key, idp)
        except BaseException:
            kafka.keep = True  # the logs of a failed test
            raise


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """A wirestream command with ``env`` added to a clean copy of ours (no WIRESTREAM_KAFKA_*)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("WIRESTREAM_KAFKA_")}
    return subprocess.run([sys.executable, "-m", "wirestream", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**base, **(env or {})})


def no_secret_in(*texts: str) -> None:
    for text in texts:
        for secret in (PASSWORD, OUTSIDER_PASSWORD, READER_PASSWORD, OAUTH_SECRET):
            assert secret not in text, "a password was printed"


def connection_rows(out: Path) -> Counter[str]:
    """The connection records of an ``analyze --out`` run, without what names the run."""
    rows: Counter[str] = Counter()
    with open(out / "wire.connections.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            rec.pop("source_id", None)
            rows[json.dumps(rec, sort_keys=True)] += 1
    return rows


@pytest.fixture(scope="module")
def embedded_analyze(tmp_path_factory: pytest.TempPathFactory) -> Counter[str]:
    out = tmp_path_factory.mktemp("embedded")
    proc = run("analyze", CAPTURE, "--out", str(out), "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return connection_rows(out)


# --- the pipeline through each secure listener ----------------------------------------------


@pytest.mark.parametrize("listener", ["scram", "mtls", "oauth"])
def test_analyze_through_a_secure_listener_gives_the_embedded_brokers_records(
        secure: Secure, embedded_analyze: Counter[str], registry, tmp_path: Path, listener: str) -> None:
    bootstrap, env = secure.listener(listener)
    out = tmp_path / "out"
    if listener == "scram":  # the flags, this time (the environment for mTLS)
        flags = ["--kafka-security-protocol", "SASL_SSL", "--kafka-sasl-mechanism", "SCRAM-SHA-512",
                 "--kafka-sasl-username", "wirestream", "--kafka-sasl-password-file", str(secure.password_file),
                 "--kafka-ca", str(secure.ca)]
        env = {}
    else:
        flags = []
    proc = run("analyze", CAPTURE, "--bootstrap", bootstrap, "--registry", registry.url, "--out", str(out),
               "--json", "--no-progress", *flags, env=env)
    no_secret_in(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = connection_rows(out)
    assert got == embedded_analyze
    assert sum(got.values()) > 0


@pytest.mark.parametrize("listener", ["scram", "mtls", "oauth"])
def test_produce_process_tail_and_the_client_through_a_secure_listener(
        secure: Secure, registry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, listener: str) -> None:
    from wirestream.client import subscribe
    from wirestream.codec import AvroCodec
    from wirestream.reader import TopicReader, partitions_of
    from wirestream.topics import CONNECTIONS, STATS, WINDOWS_STAGE

    bootstrap, env = secure.listener(listener)
    for name, value in env.items():  # this process's clients (the reader, the client API)
        monkeypatch.setenv(name, value)
    group = f"wirestream-sec-{uuid.uuid4().hex[:6]}"
    kafka = ["--bootstrap", bootstrap, "--registry", registry.url]
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - the child holds it
    worker = subprocess.Popen([sys.executable, "-m", "wirestream", "process", *kafka, "--group", group,
                               "--window", "10", "--lateness", "2"],
                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ}, start_new_session=True)
    log.close()
    try:
        codec = AvroCodec(registry.url)
        deadline = time.monotonic() + 60
        # the worker creates the topics; a reader assigns the partitions that exist
        while {tp.topic for tp in partitions_of(bootstrap, [CONNECTIONS, STATS])} != {CONNECTIONS, STATS}:
            assert time.monotonic() < deadline and worker.poll() is None, "the worker made no topics"
            time.sleep(0.5)
        reader = TopicReader(bootstrap, codec, [CONNECTIONS, STATS], "beginning")
        with reader:
            proc = run("produce", "pcap", CAPTURE, *kafka, env=env)
            no_secret_in(proc.stdout, proc.stderr)
            assert proc.returncode == 0, proc.stderr[-3000:]
            # the worker's group is new: it also reads what earlier tests left in wire.packets
            source = re.search(r"as source (\S+);", proc.stdout).group(1)
            connections, finals, seen = [], set(), Counter()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and worker.poll() is None and len(finals) < 4:
                for m in reader.poll(0.5, 1000):
                    seen[(m.record["source_id"], m.topic, m.record.get("stage"))] += 1
                    if m.record["source_id"] != source:
                        continue
                    if m.topic == CONNECTIONS:
                        connections.append(m.record)
                    elif m.record["final"] and m.record["stage"] == WINDOWS_STAGE:  # after the packets'
                        finals.add(m.record["partition"])
        worker_log = (tmp_path / "worker.log").read_text(errors="replace")
        assert worker.poll() is None, f"the worker exited:\n{worker_log[-3000:]}"
        assert len(finals) == 4, (source, dict(seen))
        assert connections

        # tail, as a user reads a topic
        proc = run("tail", CONNECTIONS, "--from-beginning", "--timeout", "5", "--where", f"source_id=={source}",
                   *kafka, env=env)
        no_secret_in(proc.stdout, proc.stderr)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(proc.stdout.splitlines()) == len(connections)

        # the client API, in a consumer group of its own
        with subscribe([CONNECTIONS], f"wirestream-client-{uuid.uuid4().hex[:6]}", bootstrap, registry.url,
                       from_beginning=True) as sub:
            got = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(got) < len(connections):
                got += [r for r in sub.poll(1.0) if r.value and r.value["source_id"] == source]
        assert len(got) == len(connections)

        # a sink (Parquet files), in a consumer group of its own, until it has them all
        out = tmp_path / "parquet"
        sink = subprocess.Popen([sys.executable, "-m", "wirestream", "sink", "parquet", "--out", str(out),
                                 "--topics", CONNECTIONS, "--flush-seconds", "1",
                                 "--group", f"wirestream-sink-{uuid.uuid4().hex[:6]}", *kafka],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ}, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and sink.poll() is None and \
                    len(parquet_rows(out, source)) < len(connections):
                time.sleep(0.5)
        finally:
            sink.terminate()
            sink_out = sink.communicate(timeout=30)[0].decode(errors="replace")
        no_secret_in(sink_out)
        assert len(parquet_rows(out, source)) == len(connections), sink_out[-3000:]

        # replay: the same packets again, through this process's pipeline, into the same topics
        proc = run("replay", "--source", source, *kafka, env=env)
        no_secret_in(proc.stdout, proc.stderr)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with TopicReader(bootstrap, codec, [CONNECTIONS], "beginning") as again:
            replayed, idle = [], 0
            while idle < 6 and len(replayed) < 2 * len(connections):
                msgs = again.poll(0.5, 1000)
                idle = 0 if msgs else idle + 1
                replayed += [m.record for m in msgs if m.record["source_id"] == source]
        assert sorted(map(canonical, replayed)) == sorted(map(canonical, connections * 2))
        no_secret_in((tmp_path / "worker.log").read_text(errors="replace"))
    finally:
        worker.terminate()
        worker.wait(30)


def canonical(record: dict) -> str:
    return json.dumps(record, sort_keys=True, default=str)


def parquet_rows(root: Path, source: str) -> list[dict]:
    """The rows of ``source`` in the Parquet files under ``root`` (finished files only)."""
    import pyarrow.parquet as pq

    rows = []
    for path in root.rglob("*.parquet"):
        rows += [r for r in pq.read_table(path).to_pylist() if r.get("source_id") == source]
    return rows


# --- refusals: one line, non-zero, quickly -----------------------------------------------------


def assert_refused(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    no_secret_in(proc.stdout, proc.stderr)
    assert proc.returncode not in (0, None), proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr  # one line, no traceback, no librdkafka noise
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    return lines[0]


def test_a_wrong_password_is_one_clear_line(secure: Secure, registry, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text(OUTSIDER_PASSWORD)  # a real password, of another user: still never printed
    t0 = time.monotonic()
    proc = run("tail", "wire.connections", "--timeout", "3", "--bootstrap", secure.kafka.scram_bootstrap,
               "--registry", registry.url, env=secure.scram_env(password_file=wrong), timeout=60)
    line = assert_refused(proc, "authentication")
    assert "SCRAM-SHA-512" in line and "wirestream" in line  # the mechanism and user, not the secret
    assert time.monotonic() - t0 < 30


def test_a_wrong_oauth_client_secret_is_one_clear_line(secure: Secure, registry, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-secret"
    wrong.write_text(PASSWORD)
    before = secure.idp.refused
    proc = run("tail", "wire.connections", "--timeout", "3", "--bootstrap", secure.kafka.oauth_bootstrap,
               "--registry", registry.url, env=secure.oauth_env(secret_file=wrong), timeout=60)
    assert_refused(proc, "refused this client", "OAUTHBEARER")
    assert secure.idp.refused > before  # the provider was asked, and said no


def test_a_broker_certificate_from_an_unknown_ca_is_refused(secure: Secure, registry, tmp_path: Path) -> None:
    rogue_ca, _ = self_signed(tmp_path, "rogue")  # a CA that did not sign the brokers' certificate
    proc = run("analyze", CAPTURE, "--no-progress", "--bootstrap", secure.kafka.scram_bootstrap,
               "--registry", registry.url, env=secure.scram_env(ca=rogue_ca), timeout=60)
    assert_refused(proc, "certificate")


def test_mutual_tls_without_a_client_certificate_is_refused(secure: Secure, registry) -> None:
    env = secure.mtls_env()
    del env["WIRESTREAM_KAFKA_CERT"], env["WIRESTREAM_KAFKA_KEY"]
    proc = run("tail", "wire.connections", "--timeout", "3", "--bootstrap", secure.kafka.mtls_bootstrap,
               "--registry", registry.url, env=env, timeout=60)
    assert_refused(proc, "refused this client", "bad certificate")


def test_a_user_without_acls_is_one_clear_line(secure: Secure, registry, tmp_path: Path) -> None:
    pw = tmp_path / "outsider"
    pw.write_text(OUTSIDER_PASSWORD)
    env = secure.scram_env(password_file=pw, user="outsider")
    t0 = time.monotonic()
    proc = run("produce", "pcap", CAPTURE, "--bootstrap", secure.kafka.scram_bootstrap, "--registry",
               registry.url, env=env, timeout=120)
    assert_refused(proc, "authoriz")
    proc = run("analyze", CAPTURE, "--no-progress", "--bootstrap", secure.kafka.scram_bootstrap,
               "--registry", registry.url, env=env, timeout=120)
    assert_refused(proc, "authoriz")
    assert time.monotonic() - t0 < 90


def test_a_user_who_may_only_read_cannot_publish(secure: Secure, registry, tmp_path: Path) -> None:
    pw = tmp_path / "reader"
    pw.write_text(READER_PASSWORD)
    env = secure.scram_env(password_file=pw, user="reader")
    kafka = ["--bootstrap", secure.kafka.scram_bootstrap, "--registry", registry.url]
    # the topics exist (made by the tests above, or now by the user who may): no CREATE asked
    assert run("produce", "pcap", CAPTURE, *kafka, env=secure.scram_env()).returncode == 0
    proc = run("produce", "pcap", CAPTURE, *kafka, env=env, timeout=120)
    assert_refused(proc, "writing to wire.packets", "authorization", "'reader'")
    # and what it may do, it can
    proc = run("tail", "wire.packets", "--from-beginning", "-n", "1", "--timeout", "10", *kafka, env=env)
    no_secret_in(proc.stdout, proc.stderr)
    assert proc.returncode == 0 and proc.stdout.count("\n") == 1, proc.stderr


def test_security_settings_without_bootstrap_are_refused(secure: Secure) -> None:
    proc = run("analyze", CAPTURE, "--no-progress", env=secure.scram_env())
    line = assert_refused(proc, "external kafka")
    assert "--bootstrap" in line


# --- the settings themselves --------------------------------------------------------------------


def test_settings_from_a_file_and_the_environment(tmp_path: Path) -> None:
    conf = tmp_path / "client.properties"
    conf.write_text("# librdkafka names\nsecurity.protocol=SASL_SSL\nsasl.mechanism=PLAIN\n"
                    f"sasl.username=fromfile\nsasl.password={PASSWORD}\nclient.rack=r1\n")
    ca = make_ca(tmp_path)
    env = {"WIRESTREAM_KAFKA_CONFIG": str(conf), "WIRESTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
           "WIRESTREAM_KAFKA_CA": str(ca.cert)}
    s = load(env)
    props = s.librdkafka()
    assert props["sasl.mechanism"] == "SCRAM-SHA-256"  # the environment overrides the file
    assert props["sasl.username"] == "fromfile" and props["sasl.password"] == PASSWORD
    assert props["client.rack"] == "r1" and props["ssl.ca.location"] == str(ca.cert)
    text = s.describe()
    assert "SCRAM-SHA-256" in text and "fromfile" in text and str(ca.cert) in text and "client.rack" in text
    no_secret_in(text, repr(s.faust_credentials()))
    ctx = s.ssl_context()
    assert ctx is not None and ctx.check_hostname


@pytest.mark.parametrize(("env", "words"), [
    ({"WIRESTREAM_KAFKA_SECURITY_PROTOCOL": "TLS"}, "not one of"),
    ({"WIRESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "WIRESTREAM_KAFKA_SASL_USERNAME": "u"}, "password"),
    ({"WIRESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "WIRESTREAM_KAFKA_SASL_MECHANISM": "GSSAPI"},
     "not one of"),
    ({"WIRESTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "WIRESTREAM_KAFKA_CERT": "/etc/hostname"}, "key"),
    ({"WIRESTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "WIRESTREAM_KAFKA_CA": "/nonexistent/ca.pem"},
     "/nonexistent/ca.pem"),
    ({"WIRESTREAM_KAFKA_CA": "/etc/hostname"}, "protocol is PLAINTEXT"),
    ({"WIRESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "WIRESTREAM_KAFKA_SASL_USERNAME": "u",
      "WIRESTREAM_KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"}, "/nonexistent/pw"),
])
def test_unusable_settings_are_named(env: dict[str, str], words: str) -> None:
    with pytest.raises(KafkaSecurityError, match=words):
        load(env)


def test_a_properties_file_line_that_is_not_a_property_is_named_not_shown(tmp_path: Path) -> None:
    conf = tmp_path / "bad.properties"
    conf.write_text(f"security.protocol=SSL\n{PASSWORD}\n")
    with pytest.raises(KafkaSecurityError) as info:
        load({"WIRESTREAM_KAFKA_CONFIG": str(conf)})
    assert "line 2" in str(info.value)
    no_secret_in(str(info.value))


def test_help_names_the_flags_and_takes_no_secret_values() -> None:
    proc = run("analyze", "--help")
    assert proc.returncode == 0
    for flag in kafka_security.FLAG_ENV:
        assert "--" + flag.replace("_", "-") in proc.stdout
    assert "--kafka-sasl-password " not in proc.stdout  # only ...-password-file


def test_doctor_says_which_security_without_the_secret(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    proc = run("doctor", "--no-probe", env={"WIRESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                                            "WIRESTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                                            "WIRESTREAM_KAFKA_SASL_USERNAME": "wirestream",
                                            "WIRESTREAM_KAFKA_SASL_PASSWORD": PASSWORD,
                                            "WIRESTREAM_KAFKA_KEY_PASSWORD_FILE": str(pw)})
    assert proc.returncode == 0, proc.stderr
    no_secret_in(proc.stdout, proc.stderr)
    (line,) = [x for x in proc.stdout.splitlines() if "kafka security" in x]
    assert line.startswith("ok ") and "SASL_SSL" in line and "SCRAM-SHA-512 as user 'wirestream'" in line
    proc = run("doctor", "--no-probe", "--json", env={"WIRESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                                                      "WIRESTREAM_KAFKA_SASL_PASSWORD": PASSWORD})
    no_secret_in(proc.stdout, proc.stderr)
    (check,) = [c for c in json.loads(proc.stdout)["checks"] if c["name"] == "kafka security"]
    assert not check["ok"] and "needs a user and a password" in check["detail"]


def test_the_embedded_broker_command_refuses_security_settings(secure: Secure) -> None:
    proc = run("broker", env=secure.scram_env(), timeout=60)
    assert_refused(proc, "external kafka")


def test_the_token_provider_of_the_faust_worker_keeps_its_token_and_names_no_secret() -> None:
    """aiokafka's OAUTHBEARER tokens come from wirestream.oauth.OidcTokenProvider, made from
    the properties librdkafka reads: one token per lifetime, refusals named without secrets."""
    from wirestream.oauth import OAuthError, OidcTokenProvider

    with OidcProvider({"wirestream": OAUTH_SECRET}) as idp:
        props = {"sasl.oauthbearer.token.endpoint.url": idp.token_url, "sasl.oauthbearer.client.id": "wirestream",
                 "sasl.oauthbearer.client.secret": OAUTH_SECRET}
        provider = OidcTokenProvider(props)
        first = provider.current()
        assert provider.current() == first and idp.issued == ["wirestream"]  # kept, not fetched again
        assert first.count(".") == 2  # a JWT
        no_secret_in(repr(provider))
        assert first not in repr(provider)
        with pytest.raises(OAuthError) as info:
            OidcTokenProvider({**props, "sasl.oauthbearer.client.secret": PASSWORD}).current()
        assert "HTTP 401" in str(info.value) and "'wirestream'" in str(info.value)
        no_secret_in(str(info.value))
    with pytest.raises(OAuthError, match="unreachable"):
        OidcTokenProvider(props).current()


def test_oauthbearer_needs_an_identity_provider() -> None:
    with pytest.raises(KafkaSecurityError, match="sasl.oauthbearer.client.secret"):
        load({"WIRESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "WIRESTREAM_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
              "WIRESTREAM_KAFKA_OAUTH_TOKEN_URL": "https://idp.example/token",
              "WIRESTREAM_KAFKA_OAUTH_CLIENT_ID": "wirestream"})
    with pytest.raises(KafkaSecurityError, match="method=oidc"):
        load({"WIRESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "WIRESTREAM_KAFKA_SASL_MECHANISM": "OAUTHBEARER"})
