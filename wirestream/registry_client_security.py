"""How wirestream's schema registry client authenticates and encrypts: basic auth and TLS.

Read from the environment (not flags) so that every process of a run gets the same
configuration: processor workers, sinks and plugins are child processes that inherit it,
and each makes its own registry client (:class:`wirestream.codec.RegistryClient`).

==================================  ========================================================
``WIRESTREAM_REGISTRY_USERNAME``    HTTP basic auth user
``WIRESTREAM_REGISTRY_PASSWORD_FILE``  a file holding the password (a Kubernetes Secret
                                    mounted as a file); one trailing newline is ignored
``WIRESTREAM_REGISTRY_PASSWORD``    the password itself (discouraged: the environment of a
                                    process is readable by its user, ``/proc/PID/environ``)
``user:password@`` in the URL       also accepted (URL-encoded); never printed: every
                                    message shows the URL through :func:`redact_url`
``WIRESTREAM_REGISTRY_CA``          PEM file of the CA(s) that sign the registry's
                                    certificate; replaces the system's trust store
``WIRESTREAM_REGISTRY_CERT``        PEM client certificate (mutual TLS); the key in it, or in
``WIRESTREAM_REGISTRY_KEY``         a PEM key file (unencrypted)
==================================  ========================================================

The environment's user wins over one in the URL; the password file over the password
variable. TLS always verifies the certificate and checks the host name: there is no
switch to turn that off.

Errors are :class:`~wirestream.errors.RegistryError` subclasses, each one line that names
the registry without credentials: :class:`RegistryConfigError` (a file that cannot be
read), :class:`RegistryAuthError` (401/403), :class:`RegistryTLSError` (certificate not
trusted, wrong host, handshake refused), :class:`RegistryUnreachable`.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from wirestream.errors import RegistryError

ENV_USERNAME = "WIRESTREAM_REGISTRY_USERNAME"
ENV_PASSWORD_FILE = "WIRESTREAM_REGISTRY_PASSWORD_FILE"
ENV_PASSWORD = "WIRESTREAM_REGISTRY_PASSWORD"
ENV_CA = "WIRESTREAM_REGISTRY_CA"
ENV_CERT = "WIRESTREAM_REGISTRY_CERT"
ENV_KEY = "WIRESTREAM_REGISTRY_KEY"

#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: the
#: certificate is trusted, but for another name or address
_NAME_MISMATCH = (62, 64)


class RegistryConfigError(RegistryError):
    """The registry client's security settings cannot be used (a file missing or invalid)."""


class RegistryAuthError(RegistryError):
    """The registry refused the credentials (HTTP 401) or the user's rights (HTTP 403)."""


class RegistryTLSError(RegistryError):
    """The TLS connection to the registry failed: certificate not trusted, wrong host, or
    the handshake refused (e.g. a client certificate required)."""


class RegistryUnreachable(RegistryError):
    """No answer from the registry: connection refused, timeout, unknown host."""


def redact_url(url: str) -> str:
    """``url`` (or a comma-separated list of URLs) with any password replaced by ``***``:
    the form in which a registry URL may be logged or put in an error message."""
    return ",".join(_redact_one(u) for u in url.split(","))


def _redact_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    # The authority ends at the first "/", "?" or "#"; the userinfo at its last "@" (a
    # password may hold "@" or ":", but not unencoded "/", per RFC 3986).
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{hostport}{tail}"


def strip_userinfo(url: str) -> str:
    """``url`` without ``user:password@``: what goes on the wire as the request target's base."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return f"{scheme}{sep}{rest[:end].rpartition('@')[2]}{rest[end:]}"


def _read_secret_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryConfigError(f"schema registry {what} file {path}: cannot read it "
                                  f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    # `echo pw > file` adds a newline that is no part of the password; a Secret has none
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


@dataclass(frozen=True)
class RegistrySecurity:
    """The registry client's credentials and TLS files. ``password`` never appears in
    ``repr`` or :meth:`describe`."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: where the password came from, for :meth:`describe`: "file PATH", "environment", "URL"
    password_source: str = ""
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_env(cls, url: str = "", environ: Mapping[str, str] | None = None) -> RegistrySecurity:
        """Read the ``WIRESTREAM_REGISTRY_*`` variables (and ``user:password@`` of the
        first URL of ``url``). Raises :class:`RegistryConfigError` for a password file
        that cannot be read, a user without a password, or a key without a certificate."""
        env = os.environ if environ is None else environ
        username = env.get(ENV_USERNAME) or None
        password: str | None = None
        source = ""
        if env.get(ENV_PASSWORD_FILE):
            password, source = _read_secret_file(env[ENV_PASSWORD_FILE], "password"), f"file {env[ENV_PASSWORD_FILE]}"
        elif ENV_PASSWORD in env:
            password, source = env[ENV_PASSWORD], f"${ENV_PASSWORD}"
        first = url.split(",", 1)[0].strip()
        if first:
            parts = urlsplit(first)
            if parts.username is not None and username is None:
                username = unquote(parts.username)
                if password is None:
                    password, source = unquote(parts.password or ""), "the URL"
        if username is not None and password is None:
            raise RegistryConfigError(f"${ENV_USERNAME} is set but no password: set ${ENV_PASSWORD_FILE} "
                                      f"(or ${ENV_PASSWORD})")
        if username is None and password is not None:
            raise RegistryConfigError(f"a schema registry password is set ({source}) but no user: "
                                      f"set ${ENV_USERNAME}")
        cert, key = env.get(ENV_CERT) or None, env.get(ENV_KEY) or None
        if key and not cert:
            raise RegistryConfigError(f"${ENV_KEY} is set but not ${ENV_CERT} (the client certificate)")
        return cls(username, password, source, env.get(ENV_CA) or None, cert, key)

    def authorization(self) -> str | None:
        """The ``Authorization`` header's value, or None without credentials."""
        if self.username is None:
            return None
        token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
        return f"Basic {token}"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the registry's certificate against ``ca`` (the
        system's trust store without it) and checks the host name; with ``cert``, presents
        that client certificate. Raises :class:`RegistryConfigError` for a file that
        cannot be loaded."""
        try:
            context = ssl.create_default_context(cafile=self.ca)
        except (OSError, ssl.SSLError) as exc:
            raise RegistryConfigError(f"schema registry CA file {self.ca} ({ENV_CA}): cannot load it "
                                      f"({_reason(exc)})") from None
        if self.cert:
            def no_passphrase() -> bytes:
                # Without a callback OpenSSL would prompt on the terminal: a worker would hang.
                raise RegistryConfigError(f"schema registry client key {self.key or self.cert} is encrypted: "
                                          "give an unencrypted key file")

            try:
                context.load_cert_chain(self.cert, self.key, password=no_passphrase)
            except RegistryConfigError:
                raise
            except (OSError, ssl.SSLError) as exc:
                files = f"{self.cert}" + (f" / key {self.key}" if self.key else "")
                raise RegistryConfigError(f"schema registry client certificate {files} ({ENV_CERT}, {ENV_KEY}): "
                                          f"cannot load it ({_reason(exc)})") from None
        return context

    def describe(self) -> str:
        """One line without secrets, e.g. ``basic auth as user 'x' (password from file
        /run/secrets/pw), CA /etc/ca.pem, client certificate /etc/c.pem (key /etc/k.pem)``."""
        parts = []
        if self.username is not None:
            parts.append(f"basic auth as user {self.username!r} (password from {self.password_source})")
        else:
            parts.append("no authentication")
        parts.append(f"CA {self.ca}" if self.ca else "the system's CAs (if https)")
        if self.cert:
            parts.append(f"client certificate {self.cert}" + (f" (key {self.key})" if self.key else ""))
        return ", ".join(parts)


def describe_registry_security(url: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """What the registry client will do, without secrets, for ``doctor``: the (redacted)
    URL and :meth:`RegistrySecurity.describe`, or the configuration problem. Reads
    ``WIRESTREAM_REGISTRY`` when ``url`` is None. Never raises."""
    env = os.environ if environ is None else environ
    url = env.get("WIRESTREAM_REGISTRY", "") if url is None else url
    where = f"registry {redact_url(url)}: " if url else "registry (embedded unless --registry): "
    try:
        security = RegistrySecurity.from_env(url, env)
        if any(u.strip().startswith("https:") for u in url.split(",")) or security.ca or security.cert:
            security.ssl_context()  # load the files now: a bad one is doctor's to report
    except RegistryError as exc:
        return f"{where}PROBLEM: {exc}"
    text = where + security.describe()
    if security.username is not None and url and not url.strip().startswith("https:") and not _loopback(url):
        text += "; WARNING: credentials sent in cleartext (http, not https)"
    return text


def _loopback(url: str) -> bool:
    return is_loopback_host(urlsplit(url.split(",", 1)[0].strip()).hostname or "")


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reason(exc: BaseException) -> str:
    """The useful part of an OpenSSL or OS error, no errno noise."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return str(exc.verify_message or exc.reason or exc).rstrip(".")
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc).replace("_", " ").lower() if exc.reason else str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def connection_error(url: str, exc: BaseException, security: RegistrySecurity) -> RegistryError:
    """The named error for a request to ``url`` that failed with ``exc`` (no answer)."""
    where = f"schema registry {redact_url(url)}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _NAME_MISMATCH:
            return RegistryTLSError(f"{where}: its TLS certificate is not for host "
                                    f"{urlsplit(url).hostname!r} ({_reason(exc)})")
        hint = (f"it is not signed by the CA in {security.ca}" if security.ca
                else f"set {ENV_CA} to the PEM file of the CA that signed it")
        return RegistryTLSError(f"{where}: TLS certificate not trusted ({_reason(exc)}): {hint}")
    if isinstance(exc, ssl.SSLError):
        reason = "the registry closed the connection" if isinstance(exc, ssl.SSLEOFError) else _reason(exc)
        hint = ""
        if isinstance(exc, ssl.SSLEOFError) or "certificate required" in reason or "handshake failure" in reason or "unknown ca" in reason:
            hint = (f": the registry may require a client certificate ({ENV_CERT}, {ENV_KEY})" if not security.cert
                    else f": the registry may not accept the client certificate {security.cert}")
        elif "wrong version number" in reason or "record layer failure" in reason:
            hint = ": is it serving https on that port?"
        return RegistryTLSError(f"{where}: TLS handshake failed ({reason}){hint}")
    if urlsplit(url).scheme == "https" and isinstance(exc, ConnectionResetError):
        # With TLS 1.3 a server that rejects the client's certificate says so after the
        # client's side of the handshake completed: the client sees a reset, not an alert.
        hint = (f"; the registry may require a client certificate ({ENV_CERT}, {ENV_KEY})" if not security.cert
                else f"; the registry may not accept the client certificate {security.cert}")
        return RegistryTLSError(f"{where}: connection reset during TLS ({_reason(exc)}){hint}")
    if urlsplit(url).scheme == "http" and isinstance(exc, ConnectionResetError):
        # what a TLS-only server does with a request in clear (RemoteDisconnected is one too)
        return RegistryUnreachable(f"{where} unreachable: {_reason(exc)} (does it serve https only?)")
    return RegistryUnreachable(f"{where} unreachable: {_reason(exc)}")


def auth_error(url: str, status: int, security: RegistrySecurity) -> RegistryAuthError:
    """The named error for an HTTP 401 or 403 from ``url``."""
    where = f"schema registry {redact_url(url)}"
    if status == 403:
        return RegistryAuthError(f"{where}: user {security.username!r} is not allowed that request (HTTP 403)")
    if security.username is None:
        return RegistryAuthError(f"{where} requires authentication (HTTP 401): set {ENV_USERNAME} and "
                                 f"{ENV_PASSWORD_FILE}")
    return RegistryAuthError(f"{where} refused the password of user {security.username!r} "
                             f"(from {security.password_source}) (HTTP 401)")
