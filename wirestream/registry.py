"""An embedded, Confluent-compatible schema registry.

When no ``--registry`` is configured, wirestream serves this one itself, so that every
topic is written in the Confluent wire format and any Confluent client (Kafka Connect,
ksqlDB, Flink, ``confluent_kafka.schema_registry``) can read it.

It implements the subset of the Confluent Schema Registry REST API that clients use to
write and read Avro (see https://docs.confluent.io/platform/current/schema-registry/develop/api.html):

- ``POST /subjects/{subject}/versions``  register (idempotent: same schema, same id)
- ``POST /subjects/{subject}``           look a schema up under a subject
- ``GET  /schemas/ids/{id}``              (and ``/schemas/ids/{id}/versions``, ``/subjects``)
- ``GET  /schemas/types``
- ``GET  /subjects``, ``/subjects/{subject}/versions``, ``/subjects/{subject}/versions/{v|latest}``
- ``DELETE /subjects/{subject}``
- ``GET|PUT /config`` and ``/config/{subject}``   (stored, not enforced)

State is kept in memory for the life of the process that serves it: like the embedded
broker, it is for one machine and one run. Ids are assigned in registration order and a
schema that is already known (compared in canonical form) keeps its id across subjects,
as Confluent's registry does.

It binds ``127.0.0.1`` by default. Bound to any other address it requires HTTP basic
auth (``credentials``): anyone who can reach it could otherwise register schemas, or
delete the subjects every record's schema id points at. It serves TLS with ``certfile``
and ``keyfile``, and requires client certificates signed by ``client_ca`` if given.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
import selectors
import ssl
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from wirestream.registry_client_security import is_loopback_host

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def _canonical(schema_str: str) -> str:
    """Compare schemas by their parsed JSON, not their whitespace."""
    try:
        return json.dumps(json.loads(schema_str), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return schema_str


@dataclass
class _Version:
    subject: str
    version: int
    schema_id: int


@dataclass
class RegistryStore:
    """The registry's data: schemas by id and versions by subject. Thread-safe."""

    schemas: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (text, type)
    ids_by_canonical: dict[tuple[str, str], int] = field(default_factory=dict)
    subjects: dict[str, list[_Version]] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=lambda: {"": "BACKWARD"})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, subject: str, schema_str: str, schema_type: str) -> _Version:
        with self.lock:
            key = (_canonical(schema_str), schema_type)
            schema_id = self.ids_by_canonical.get(key)
            if schema_id is None:
                schema_id = len(self.schemas) + 1
                self.schemas[schema_id] = (schema_str, schema_type)
                self.ids_by_canonical[key] = schema_id
            versions = self.subjects.setdefault(subject, [])
            for v in versions:
                if v.schema_id == schema_id:
                    return v
            v = _Version(subject, len(versions) + 1 if not versions else versions[-1].version + 1, schema_id)
            versions.append(v)
            return v

    def lookup(self, subject: str, schema_str: str, schema_type: str) -> _Version | None:
        with self.lock:
            schema_id = self.ids_by_canonical.get((_canonical(schema_str), schema_type))
            for v in self.subjects.get(subject, []):
                if v.schema_id == schema_id:
                    return v
            return None


class _HttpError(Exception):
    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def _subject_not_found(subject: str) -> _HttpError:
    return _HttpError(404, 40401, f"Subject '{subject}' not found.")


class _Handler(BaseHTTPRequestHandler):
    server: _RegistryHTTPServer
    protocol_version = "HTTP/1.1"
    # The headers and the body go out in two writes: with Nagle's algorithm the body waits
    # for the ACK of the headers, which a keep-alive client delays by 40 ms. That was
    # 40 ms per request (0.5 s to register wirestream's schemas at start-up).
    disable_nagle_algorithm = True

    # Routes: (method, regex over the path) -> method name
    _ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
        (m, re.compile(p), h)
        for m, p, h in (
            ("GET", r"^/?$", "_root"),
            ("GET", r"^/schemas/types/?$", "_types"),
            ("GET", r"^/schemas/ids/(\d+)/?$", "_schema_by_id"),
            ("GET", r"^/schemas/ids/(\d+)/schema/?$", "_raw_schema_by_id"),
            ("GET", r"^/schemas/ids/(\d+)/versions/?$", "_versions_of_id"),
            ("GET", r"^/schemas/ids/(\d+)/subjects/?$", "_subjects_of_id"),
            ("GET", r"^/subjects/?$", "_subjects"),
            ("GET", r"^/subjects/([^/]+)/versions/?$", "_versions"),
            ("GET", r"^/subjects/([^/]+)/versions/([^/]+)/?$", "_version"),
            ("GET", r"^/subjects/([^/]+)/versions/([^/]+)/schema/?$", "_version_raw"),
            ("POST", r"^/subjects/([^/]+)/versions/?$", "_register"),
            ("POST", r"^/subjects/([^/]+)/?$", "_lookup"),
            ("DELETE", r"^/subjects/([^/]+)/?$", "_delete_subject"),
            ("GET", r"^/config/?$", "_get_config"),
            ("PUT", r"^/config/?$", "_put_config"),
            ("GET", r"^/config/([^/]+)/?$", "_get_config"),
            ("PUT", r"^/config/([^/]+)/?$", "_put_config"),
        )
    )

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the registry is quiet; errors go back to the client as JSON

    def _authorized(self) -> bool:
        """True if the server needs no credentials or the request's basic auth matches."""
        expected = self.server.credentials
        if expected is None:
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        # compare_digest on both, always: the time taken says nothing of which one is wrong
        ok_user = hmac.compare_digest(user.encode(), expected[0].encode())
        ok_password = hmac.compare_digest(password.encode(), expected[1].encode())
        return bool(sep) and ok_user and ok_password

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        body: Any = None
        length = int(self.headers.get("Content-Length") or 0)
        extra_headers: dict[str, str] = {}
        try:
            # the body is read before the credentials are checked: on a keep-alive
            # connection, an unread body would be taken for the next request
            raw = self.rfile.read(length) if length else b""
            if not self._authorized():
                extra_headers["WWW-Authenticate"] = 'Basic realm="wirestream schema registry"'
                raise _HttpError(401, 401, "Unauthorized")  # Confluent's answer, word for word
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    raise _HttpError(400, 400, f"request body is not JSON: {exc}") from None
            for m, pattern, handler in self._ROUTES:
                match = pattern.match(path)
                if m == method and match:
                    args = [unquote(g) for g in match.groups()]
                    status, payload = getattr(self, handler)(*args, body=body)
                    break
            else:
                raise _HttpError(404, 404, f"no such endpoint: {method} {path}")
        except _HttpError as exc:
            status, payload = exc.status, {"error_code": exc.error_code, "message": exc.message}
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", _CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    # --- handlers: each returns (status, json payload) ---

    @property
    def store(self) -> RegistryStore:
        return self.server.store

    def _root(self, body: Any) -> tuple[int, Any]:
        return 200, {}

    def _types(self, body: Any) -> tuple[int, Any]:
        return 200, ["AVRO", "JSON", "PROTOBUF"]

    def _schema(self, schema_id: str) -> tuple[str, str]:
        found = self.store.schemas.get(int(schema_id))
        if found is None:
            raise _HttpError(404, 40403, f"Schema {schema_id} not found")
        return found

    def _schema_by_id(self, schema_id: str, body: Any) -> tuple[int, Any]:
        text, schema_type = self._schema(schema_id)
        payload: dict[str, Any] = {"schema": text}
        if schema_type != "AVRO":
            payload["schemaType"] = schema_type
        return 200, payload

    def _raw_schema_by_id(self, schema_id: str, body: Any) -> tuple[int, Any]:
        return 200, json.loads(self._schema(schema_id)[0])

    def _versions_of_id(self, schema_id: str, body: Any) -> tuple[int, Any]:
        self._schema(schema_id)
        sid = int(schema_id)
        return 200, [
            {"subject": v.subject, "version": v.version}
            for versions in self.store.subjects.values()
            for v in versions
            if v.schema_id == sid
        ]

    def _subjects_of_id(self, schema_id: str, body: Any) -> tuple[int, Any]:
        return 200, sorted({v["subject"] for v in self._versions_of_id(schema_id, body)[1]})

    def _subjects(self, body: Any) -> tuple[int, Any]:
        return 200, sorted(s for s, v in self.store.subjects.items() if v)

    def _versions(self, subject: str, body: Any) -> tuple[int, Any]:
        versions = self.store.subjects.get(subject)
        if not versions:
            raise _subject_not_found(subject)
        return 200, [v.version for v in versions]

    def _find_version(self, subject: str, version: str) -> _Version:
        versions = self.store.subjects.get(subject)
        if not versions:
            raise _subject_not_found(subject)
        if version in ("latest", "-1"):
            return versions[-1]
        for v in versions:
            if str(v.version) == version:
                return v
        raise _HttpError(404, 40402, f"Version {version} not found.")

    def _describe(self, v: _Version) -> dict[str, Any]:
        text, schema_type = self.store.schemas[v.schema_id]
        payload: dict[str, Any] = {
            "subject": v.subject,
            "version": v.version,
            "id": v.schema_id,
            "schema": text,
        }
        if schema_type != "AVRO":
            payload["schemaType"] = schema_type
        return payload

    def _version(self, subject: str, version: str, body: Any) -> tuple[int, Any]:
        return 200, self._describe(self._find_version(subject, version))

    def _version_raw(self, subject: str, version: str, body: Any) -> tuple[int, Any]:
        v = self._find_version(subject, version)
        return 200, json.loads(self.store.schemas[v.schema_id][0])

    def _schema_from_body(self, body: Any) -> tuple[str, str]:
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise _HttpError(422, 42201, "request must be a JSON object with a 'schema' string")
        schema_type = body.get("schemaType") or "AVRO"
        if schema_type == "AVRO":
            try:
                import fastavro

                fastavro.parse_schema(json.loads(body["schema"]))
            except Exception as exc:  # any parse failure is the client's invalid schema
                raise _HttpError(422, 42201, f"Invalid schema: {exc}") from None
        return body["schema"], schema_type

    def _register(self, subject: str, body: Any) -> tuple[int, Any]:
        text, schema_type = self._schema_from_body(body)
        v = self.store.register(subject, text, schema_type)
        return 200, {"id": v.schema_id, "version": v.version, "subject": subject}

    def _lookup(self, subject: str, body: Any) -> tuple[int, Any]:
        text, schema_type = self._schema_from_body(body)
        if subject not in self.store.subjects:
            raise _subject_not_found(subject)
        v = self.store.lookup(subject, text, schema_type)
        if v is None:
            raise _HttpError(404, 40403, "Schema not found")
        return 200, self._describe(v)

    def _delete_subject(self, subject: str, body: Any) -> tuple[int, Any]:
        with self.store.lock:
            versions = self.store.subjects.pop(subject, None)
        if not versions:
            raise _subject_not_found(subject)
        return 200, [v.version for v in versions]

    def _get_config(self, subject: str = "", body: Any = None) -> tuple[int, Any]:
        level = self.store.config.get(subject)
        if level is None:
            if subject:
                raise _HttpError(404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured")
            level = "BACKWARD"
        return 200, {"compatibilityLevel": level}

    def _put_config(self, subject: str = "", body: Any = None) -> tuple[int, Any]:
        level = (body or {}).get("compatibility") if isinstance(body, dict) else None
        if not isinstance(level, str):
            raise _HttpError(422, 42203, "request must be a JSON object with a 'compatibility' string")
        self.store.config[subject] = level.upper()
        return 200, {"compatibility": level.upper()}


#: How long a client may take over its TLS handshake before the connection is dropped
_HANDSHAKE_TIMEOUT_S = 10.0


class _RegistryHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    store: RegistryStore
    credentials: tuple[str, str] | None = None
    ssl_context: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        """With TLS, the handshake happens here, in the connection's own thread: a slow
        or silent client must not hold up ``accept`` for the others."""
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(_HANDSHAKE_TIMEOUT_S)
        tls = self.ssl_context.wrap_socket(request, server_side=True)
        tls.settimeout(None)
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def serve_until_woken(self) -> None:
        """``serve_forever``, but stopped at once by :meth:`wake`: ``shutdown`` waits for
        the loop's next poll, up to its interval, and every ``analyze`` waited for it
        (30-50 ms of a small capture's 0.5 s)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fd == self._wake_read for key, _ in ready):
                    return
                self._handle_request_noblock()

    def server_activate(self) -> None:
        super().server_activate()
        self._wake_read, self._wake_write = os.pipe()

    def wake(self) -> None:
        """End :meth:`serve_until_woken` (from another thread)."""
        os.write(self._wake_write, b"\0")

    def server_close(self) -> None:
        super().server_close()
        # once: a second close of the same numbers could close another file's
        fds, self._wake_read, self._wake_write = (self._wake_read, self._wake_write), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that goes away mid-connection (a worker stopped or killed while its
        keep-alive connection is open) is normal, not a traceback on the console; so is a
        client that does not trust our certificate, or has none when one is required (a
        TLS error, its problem to report)."""
        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class EmbeddedSchemaRegistry:
    """Serve a Confluent-compatible schema registry on ``127.0.0.1`` in a background thread.

    Use as a context manager, or call :meth:`start` and :meth:`stop`::

        with EmbeddedSchemaRegistry() as registry:
            print(registry.url)   # http://127.0.0.1:PORT

    ``credentials=(user, password)`` requires HTTP basic auth; it is required when
    ``host`` is not a loopback address (:class:`ValueError` otherwise). ``certfile`` and
    ``keyfile`` (PEM) serve https; ``client_ca`` (PEM) then also requires a client
    certificate signed by it. :attr:`url` never holds the credentials.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 credentials: tuple[str, str] | None = None,
                 certfile: str | None = None, keyfile: str | None = None,
                 client_ca: str | None = None) -> None:
        if credentials is None and not is_loopback_host(host):
            raise ValueError(f"the embedded schema registry serves {host} only with basic auth "
                             "(credentials=): off loopback anyone could change the schemas")
        if credentials is not None and (not credentials[0] or not credentials[1]):
            raise ValueError("the embedded schema registry's credentials need a user and a password")
        if client_ca is not None and certfile is None:
            raise ValueError("client_ca (client certificates) needs certfile: TLS")
        context: ssl.SSLContext | None = None
        if certfile is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certfile, keyfile)
            if client_ca is not None:
                context.load_verify_locations(client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
        self._server = _RegistryHTTPServer((host, port), _Handler)
        self._server.store = RegistryStore()
        self._server.credentials = credentials
        self._server.ssl_context = context
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{'https' if self._server.ssl_context else 'http'}://{host}:{port}"

    def start(self) -> EmbeddedSchemaRegistry:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_until_woken, name="schema-registry",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.wake()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> EmbeddedSchemaRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
