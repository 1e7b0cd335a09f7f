"""How every wirestream Kafka client encrypts and authenticates: configured once, applied
the same way to all of them.

wirestream's clients are confluent-kafka (librdkafka) producers, consumers and admin
clients, and the Faust worker of the windows (aiokafka). All of them take their security
from one place, this module, which reads it from the environment, so that a command and
every worker process it starts (they inherit the environment) use the same settings. The
command-line flags (``--kafka-security-protocol``, ``--kafka-ca``, ...) are written into
the environment when a command starts (:func:`export_flags`).

| setting                        | environment                            | librdkafka property          |
|--------------------------------|----------------------------------------|------------------------------|
| protocol                       | ``WIRESTREAM_KAFKA_SECURITY_PROTOCOL`` | ``security.protocol``        |
| SASL mechanism                 | ``WIRESTREAM_KAFKA_SASL_MECHANISM``    | ``sasl.mechanism``           |
| SASL user                      | ``WIRESTREAM_KAFKA_SASL_USERNAME``     | ``sasl.username``            |
| SASL password, from a file     | ``WIRESTREAM_KAFKA_SASL_PASSWORD_FILE``| ``sasl.password``            |
| SASL password (discouraged)    | ``WIRESTREAM_KAFKA_SASL_PASSWORD``     | ``sasl.password``            |
| CA to verify the brokers with  | ``WIRESTREAM_KAFKA_CA``                | ``ssl.ca.location``          |
| client certificate (mTLS)      | ``WIRESTREAM_KAFKA_CERT``              | ``ssl.certificate.location`` |
| client key (mTLS)              | ``WIRESTREAM_KAFKA_KEY``               | ``ssl.key.location``         |
| client key's password, file    | ``WIRESTREAM_KAFKA_KEY_PASSWORD_FILE`` | ``ssl.key.password``         |
| OAUTHBEARER: token endpoint    | ``WIRESTREAM_KAFKA_OAUTH_TOKEN_URL``   | ``sasl.oauthbearer.token.endpoint.url`` (and ``sasl.oauthbearer.method=oidc``) |
| OAUTHBEARER: client id         | ``WIRESTREAM_KAFKA_OAUTH_CLIENT_ID``   | ``sasl.oauthbearer.client.id`` |
| OAUTHBEARER: secret, from file | ``WIRESTREAM_KAFKA_OAUTH_CLIENT_SECRET_FILE`` | ``sasl.oauthbearer.client.secret`` |
| OAUTHBEARER: scope             | ``WIRESTREAM_KAFKA_OAUTH_SCOPE``       | ``sasl.oauthbearer.scope``   |
| anything else                  | ``WIRESTREAM_KAFKA_CONFIG``: a file of librdkafka ``name=value`` lines |  |

The file is read first; the variables above override it. Brokers' certificates are
verified against the CA (the system's CAs when none is given) and their host names
checked (``ssl.endpoint.identification.algorithm=https``, librdkafka's default), for
both client libraries. Secrets (passwords, keys) are read from files or the environment,
never taken as flag values (they would show in ``ps``), and never printed:
:meth:`KafkaSecurity.describe` says which mechanism, user and files, not what is in them.

The embedded broker listens on loopback only and speaks plaintext: these settings are
for an external Kafka (``--bootstrap``), and a command that would start the embedded
broker with them set refuses (:func:`check_for_embedded`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wirestream.errors import UsageError, WirestreamError

if TYPE_CHECKING:
    import ssl

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")

CONFIG_ENV = "WIRESTREAM_KAFKA_CONFIG"
PROTOCOL_ENV = "WIRESTREAM_KAFKA_SECURITY_PROTOCOL"
MECHANISM_ENV = "WIRESTREAM_KAFKA_SASL_MECHANISM"
USERNAME_ENV = "WIRESTREAM_KAFKA_SASL_USERNAME"
PASSWORD_ENV = "WIRESTREAM_KAFKA_SASL_PASSWORD"
PASSWORD_FILE_ENV = "WIRESTREAM_KAFKA_SASL_PASSWORD_FILE"
CA_ENV = "WIRESTREAM_KAFKA_CA"
CERT_ENV = "WIRESTREAM_KAFKA_CERT"
KEY_ENV = "WIRESTREAM_KAFKA_KEY"
KEY_PASSWORD_FILE_ENV = "WIRESTREAM_KAFKA_KEY_PASSWORD_FILE"
OAUTH_TOKEN_URL_ENV = "WIRESTREAM_KAFKA_OAUTH_TOKEN_URL"
OAUTH_CLIENT_ID_ENV = "WIRESTREAM_KAFKA_OAUTH_CLIENT_ID"
OAUTH_SECRET_FILE_ENV = "WIRESTREAM_KAFKA_OAUTH_CLIENT_SECRET_FILE"
OAUTH_SCOPE_ENV = "WIRESTREAM_KAFKA_OAUTH_SCOPE"

#: environment variable -> the librdkafka property it sets (its value is the property's)
ENV_PROPERTIES = {
    PROTOCOL_ENV: "security.protocol",
    MECHANISM_ENV: "sasl.mechanism",
    USERNAME_ENV: "sasl.username",
    PASSWORD_ENV: "sasl.password",
    CA_ENV: "ssl.ca.location",
    CERT_ENV: "ssl.certificate.location",
    KEY_ENV: "ssl.key.location",
    OAUTH_TOKEN_URL_ENV: "sasl.oauthbearer.token.endpoint.url",
    OAUTH_CLIENT_ID_ENV: "sasl.oauthbearer.client.id",
    OAUTH_SCOPE_ENV: "sasl.oauthbearer.scope",
}
#: environment variable -> the librdkafka property set to the contents of the file it names
ENV_SECRET_FILES = {
    PASSWORD_FILE_ENV: "sasl.password",
    KEY_PASSWORD_FILE_ENV: "ssl.key.password",
    OAUTH_SECRET_FILE_ENV: "sasl.oauthbearer.client.secret",
}
#: every variable this module reads
ALL_ENV = (CONFIG_ENV, *ENV_PROPERTIES, *ENV_SECRET_FILES)

#: command-line flag -> the environment variable it sets (no flag takes a secret's value)
FLAG_ENV = {
    "kafka_config": CONFIG_ENV,
    "kafka_security_protocol": PROTOCOL_ENV,
    "kafka_sasl_mechanism": MECHANISM_ENV,
    "kafka_sasl_username": USERNAME_ENV,
    "kafka_sasl_password_file": PASSWORD_FILE_ENV,
    "kafka_ca": CA_ENV,
    "kafka_cert": CERT_ENV,
    "kafka_key": KEY_ENV,
    "kafka_key_password_file": KEY_PASSWORD_FILE_ENV,
}


class KafkaSecurityError(UsageError):
    """The Kafka security settings cannot be used (a missing file, an unknown mechanism,
    a password without a user, ...): the message names the setting, never a secret."""


def is_secret(name: str) -> bool:
    """Whether librdkafka property ``name`` holds a secret (never printed)."""
    name = name.lower()
    return any(word in name for word in ("password", "secret", "token", "jaas")) or name in (
        "ssl.key.pem", "ssl_key", "ssl.keystore.password")


@dataclass(frozen=True)
class KafkaSecurity:
    """The security properties of wirestream's Kafka clients, in librdkafka's names."""

    properties: Mapping[str, str]

    @property
    def protocol(self) -> str:
        return self.properties.get("security.protocol", "PLAINTEXT").upper()

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def mechanism(self) -> str:
        return self.properties.get("sasl.mechanism", "PLAIN").upper() if self.uses_sasl else ""

    @property
    def configured(self) -> bool:
        """Whether anything was set (an empty configuration: plaintext, no authentication)."""
        return bool(self.properties)

    def librdkafka(self) -> dict[str, str]:
        """The properties for a confluent-kafka client's configuration."""
        return dict(self.properties)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A Python TLS context equivalent to the librdkafka properties (for aiokafka):
        the CA (else the system's), host names checked unless
        ``ssl.endpoint.identification.algorithm`` is ``none``, the client certificate."""
        if not self.uses_tls:
            return None
        import ssl

        props = self.properties
        ctx = ssl.create_default_context(cafile=props.get("ssl.ca.location"))
        if props.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
            ctx.check_hostname = False
        if props.get("enable.ssl.certificate.verification", "true").lower() in ("false", "0"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        cert = props.get("ssl.certificate.location")
        if cert:
            ctx.load_cert_chain(cert, props.get("ssl.key.location"), props.get("ssl.key.password"))
        return ctx

    def faust_credentials(self) -> Any:
        """Faust's ``broker_credentials`` for these settings (None: plaintext). For
        OAUTHBEARER, a token provider (:class:`wirestream.oauth.OidcTokenProvider`) made
        from the same ``sasl.oauthbearer.*`` properties librdkafka reads."""
        import faust

        if not self.configured or self.protocol == "PLAINTEXT":
            return None
        context = self.ssl_context()
        if not self.uses_sasl:
            return faust.SSLCredentials(context)
        if self.mechanism == "OAUTHBEARER":
            from wirestream.oauth import OidcTokenProvider

            # aiokafka takes a token provider object: ours fetches tokens as librdkafka
            # does from the same sasl.oauthbearer.* properties
            return faust.OAuthCredentials(oauth_cb=OidcTokenProvider(self.properties), ssl_context=context)
        creds = faust.SASLCredentials(username=self.properties.get("sasl.username"),
                                      password=self.properties.get("sasl.password"),
                                      ssl_context=context, mechanism=self.mechanism)
        if not self.uses_tls:  # SASL over plaintext (faust picks SASL_SSL only with a context)
            from faust.types.auth import AuthProtocol

            creds.protocol = AuthProtocol.SASL_PLAINTEXT
        return creds

    def describe(self) -> str:
        """One line for ``doctor`` and errors: the protocol, mechanism, user and files,
        never a secret."""
        props = self.properties
        if self.protocol == "PLAINTEXT":
            text = "PLAINTEXT: not encrypted, not authenticated"
        else:
            parts = [self.protocol]
            if self.uses_sasl and self.mechanism == "OAUTHBEARER":
                parts.append(f"SASL OAUTHBEARER, tokens of client {props.get('sasl.oauthbearer.client.id')!r} "
                             f"from {props.get('sasl.oauthbearer.token.endpoint.url')}")
            elif self.uses_sasl:
                user = props.get("sasl.username")
                parts.append(f"SASL {self.mechanism}" + (f" as user {user!r}" if user else ""))
            if self.uses_tls:
                ca = props.get("ssl.ca.location")
                verify = props.get("enable.ssl.certificate.verification", "true").lower() not in ("false", "0")
                if not verify:
                    parts.append("broker certificates NOT verified")
                else:
                    parts.append(f"brokers verified with CA {ca}" if ca else "brokers verified with the system's CAs")
                    if props.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
                        parts.append("host names NOT checked")
                if props.get("ssl.certificate.location"):
                    parts.append(f"client certificate {props['ssl.certificate.location']}")
            text = ", ".join(parts)
        others = sorted(k for k in props if k not in _DESCRIBED and not is_secret(k))
        if others:
            text += f"; also {', '.join(others)}"
        return text


_DESCRIBED = {"security.protocol", "sasl.mechanism", "sasl.username", "ssl.ca.location",
              "sasl.oauthbearer.method", "sasl.oauthbearer.client.id", "sasl.oauthbearer.token.endpoint.url",
              "ssl.certificate.location", "ssl.key.location", "ssl.endpoint.identification.algorithm",
              "enable.ssl.certificate.verification"}


def read_properties(path: str) -> dict[str, str]:
    """A librdkafka-style properties file: ``name=value`` lines; ``#`` and ``!`` start
    comments; blank lines are skipped. Raises :class:`KafkaSecurityError` naming the file
    and line (never the line's value: it may be a password)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise KafkaSecurityError(f"${CONFIG_ENV} (--kafka-config): cannot read {path}: {exc.strerror}") from None
    props: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise KafkaSecurityError(f"{path}, line {n}: not a name=value property")
        props[name.strip()] = value.strip()
    return props


def _read_secret(env: str, path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise KafkaSecurityError(f"${env}: cannot read {path}: {exc.strerror}") from None


def load(environ: Mapping[str, str] | None = None) -> KafkaSecurity:
    """The settings in ``environ`` (default: this process's environment), checked.

    Raises :class:`KafkaSecurityError` for an unknown protocol or mechanism, SASL without
    a user or password, a client certificate without its key, or a file that cannot be
    read: at start, in one line, rather than as a client's failure to connect later."""
    env = os.environ if environ is None else environ
    props: dict[str, str] = {}
    if env.get(CONFIG_ENV):
        props.update(read_properties(env[CONFIG_ENV]))
    for var, prop in ENV_PROPERTIES.items():
        if env.get(var):
            props[prop] = env[var]
    for var, prop in ENV_SECRET_FILES.items():
        if env.get(var):
            props[prop] = _read_secret(var, env[var])
    if env.get(OAUTH_TOKEN_URL_ENV):  # a token endpoint: librdkafka's OIDC client credentials
        props.setdefault("sasl.oauthbearer.method", "oidc")
    security = KafkaSecurity(props)
    _check(security)
    return security


def _check(security: KafkaSecurity) -> None:
    props = security.properties
    protocol = props.get("security.protocol", "PLAINTEXT")
    if protocol.upper() not in SECURITY_PROTOCOLS:
        raise KafkaSecurityError(f"Kafka security protocol {protocol!r}: not one of {', '.join(SECURITY_PROTOCOLS)}")
    if security.uses_sasl:
        if security.mechanism not in SASL_MECHANISMS:
            raise KafkaSecurityError(f"SASL mechanism {props.get('sasl.mechanism')!r}: not one of "
                                     f"{', '.join(SASL_MECHANISMS)}")
        if security.mechanism == "OAUTHBEARER":
            missing = [p for p in ("sasl.oauthbearer.token.endpoint.url", "sasl.oauthbearer.client.id",
                                   "sasl.oauthbearer.client.secret") if not props.get(p)]
            if props.get("sasl.oauthbearer.method", "").lower() != "oidc" or missing:
                raise KafkaSecurityError(
                    "SASL OAUTHBEARER needs an identity provider: sasl.oauthbearer.method=oidc with a token "
                    f"endpoint, a client id and a client secret (${OAUTH_TOKEN_URL_ENV}, ${OAUTH_CLIENT_ID_ENV}, "
                    f"${OAUTH_SECRET_FILE_ENV}, or the --kafka-config file)"
                    + (f"; missing: {', '.join(missing)}" if missing else ""))
        elif not (props.get("sasl.username") and props.get("sasl.password")):
            raise KafkaSecurityError(f"SASL {security.mechanism} needs a user and a password "
                                     f"(${USERNAME_ENV} and ${PASSWORD_FILE_ENV}, or --kafka-sasl-username and "
                                     "--kafka-sasl-password-file)")
    elif any(k.startswith("sasl.") for k in props):
        raise KafkaSecurityError(f"SASL settings are given but the protocol is {protocol}: "
                                 "use SASL_SSL (or SASL_PLAINTEXT)")
    if not security.uses_tls and any(k.startswith("ssl.") for k in props):
        raise KafkaSecurityError(f"TLS settings (CA, certificate) are given but the protocol is {protocol}: "
                                 "use SSL or SASL_SSL")
    if bool(props.get("ssl.certificate.location")) != bool(props.get("ssl.key.location")):
        raise KafkaSecurityError("a client certificate needs its key, and a key its certificate "
                                 f"(${CERT_ENV} and ${KEY_ENV})")
    for prop in ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location"):
        path = props.get(prop)
        if path and not os.access(path, os.R_OK):
            raise KafkaSecurityError(f"{prop}: cannot read {path}")


def security() -> KafkaSecurity:
    """This process's settings (:func:`load` of ``os.environ``)."""
    return load()


def client_properties() -> dict[str, str]:
    """The librdkafka properties every confluent-kafka client of this process adds."""
    return load().librdkafka()


def add_flags(p: argparse.ArgumentParser) -> None:
    """The Kafka security flags of a command that talks to Kafka. Each sets its
    environment variable (:func:`export_flags`), for this process and its workers."""
    g = p.add_argument_group("Kafka security (for an external Kafka; see docs/security.md)")
    g.add_argument("--kafka-security-protocol", type=str.upper, choices=SECURITY_PROTOCOLS, metavar="PROTOCOL",
                   help=f"{' | '.join(SECURITY_PROTOCOLS)} (default: ${PROTOCOL_ENV}, else PLAINTEXT)")
    g.add_argument("--kafka-sasl-mechanism", type=str.upper, choices=SASL_MECHANISMS, metavar="MECHANISM",
                   help=f"{' | '.join(SASL_MECHANISMS)} (default: ${MECHANISM_ENV}, else PLAIN)")
    g.add_argument("--kafka-sasl-username", metavar="USER", help=f"SASL user (default: ${USERNAME_ENV})")
    g.add_argument("--kafka-sasl-password-file", metavar="FILE",
                   help=f"file holding the SASL password (default: ${PASSWORD_FILE_ENV}; "
                        "no flag takes the password itself: it would show in ps)")
    g.add_argument("--kafka-ca", metavar="PEM", help=f"CA certificate(s) to verify the brokers with (default: ${CA_ENV}, "
                                                     "else the system's CAs)")
    g.add_argument("--kafka-cert", metavar="PEM", help=f"client certificate, for mutual TLS (default: ${CERT_ENV})")
    g.add_argument("--kafka-key", metavar="PEM", help=f"client certificate's key (default: ${KEY_ENV})")
    g.add_argument("--kafka-key-password-file", metavar="FILE",
                   help=f"file holding the key's password, if it is encrypted (default: ${KEY_PASSWORD_FILE_ENV})")
    g.add_argument("--kafka-config", metavar="FILE",
                   help=f"librdkafka name=value properties for anything else (default: ${CONFIG_ENV})")


def export_flags(args: argparse.Namespace) -> None:
    """Write the security flags given on the command line into the environment (the
    workers a command starts inherit it), then check the result (:func:`load`)."""
    given = False
    for attr, var in FLAG_ENV.items():
        value = getattr(args, attr, None)
        if value:
            os.environ[var] = str(value)
            given = True
    if given or any(os.environ.get(v) for v in ALL_ENV):
        load()


def check_for_embedded() -> None:
    """Refuse to start the embedded broker while Kafka security settings are set: they are
    for an external Kafka, and the embedded broker (loopback, plaintext) would not
    understand them."""
    set_vars = [v for v in ALL_ENV if os.environ.get(v)]
    if set_vars and load().protocol != "PLAINTEXT":
        raise KafkaSecurityError(
            f"Kafka security settings are set ({', '.join(set_vars)}) but no --bootstrap: they are for an "
            "external Kafka. Give --bootstrap, or unset them to run on the embedded broker "
            "(loopback only, plaintext)")


class KafkaAccessError(WirestreamError):
    """The brokers refused this client: authentication failed, TLS could not be set up
    (an unknown CA, a host name that does not match), or an ACL does not allow what it
    asked. Fatal: retrying cannot help, and a client would otherwise wait forever."""


#: librdkafka error names that no retry can fix
FATAL_ERROR_NAMES = frozenset({
    "_AUTHENTICATION", "_SSL", "SASL_AUTHENTICATION_FAILED", "TOPIC_AUTHORIZATION_FAILED",
    "GROUP_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED", "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
    "DELEGATION_TOKEN_AUTHORIZATION_FAILED", "ILLEGAL_SASL_STATE", "UNSUPPORTED_SASL_MECHANISM",
})


def is_fatal(error: Any) -> bool:
    """Whether confluent-kafka ``KafkaError`` ``error`` is one no retry can fix."""
    return error is not None and error.name() in FATAL_ERROR_NAMES


def access_error(error: Any, where: str) -> KafkaAccessError:
    """A :class:`KafkaAccessError` for confluent-kafka ``KafkaError`` ``error``, saying
    what the client was doing (``where``) and with which security settings."""
    return KafkaAccessError(f"{where}: {error.str()} ({security().describe()})")


def raise_if_fatal(error: Any, where: str) -> None:
    """Raise :func:`access_error` when ``error`` is fatal (:func:`is_fatal`)."""
    if is_fatal(error):
        raise access_error(error, where)
