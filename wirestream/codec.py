"""Avro in the Confluent wire format: one magic byte 0, a 4-byte big-endian schema id, then
the Avro binary body (https://docs.confluent.io/platform/current/schema-registry/fundamentals/serdes-develop/index.html#wire-format).

:class:`AvroCodec` registers wirestream's schemas under ``<topic>-value`` subjects on first
use, and decodes any message by the schema id it carries, so records written by other
Confluent clients decode too.
"""

from __future__ import annotations

import io
import json
import logging
import ssl
import struct
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

from wirestream.avro_reader import compile_reader
from wirestream.avro_writer import UnsupportedSchema, compile_writer
from wirestream.errors import DecodeError, RegistryError
from wirestream.registry_client_security import (
    RegistrySecurity,
    auth_error,
    connection_error,
    redact_url,
)
from wirestream.schemas import schema_text
from wirestream.topics import TOPIC_SCHEMAS, subject_for

_HEADER = struct.Struct(">bI")
MAGIC_BYTE = 0

log = logging.getLogger(__name__)

Encoder = Callable[[dict[str, Any]], bytes]
#: ``read(message, offset) -> record``: decode the Avro body that starts at ``offset``
BodyReader = Callable[[bytes, int], dict[str, Any]]


class _Encoders(dict[str, Encoder]):
    """topic -> encoder of a wirestream topic, made (and its schema registered) on first
    use. A dict, so that a lookup in a per-record path is one subscript, no Python call."""

    def __init__(self, make: Callable[[str], Encoder]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, topic: str) -> Encoder:
        enc = self[topic] = self._make(topic)
        return enc


class RegistryHTTPError(Exception):
    """The registry answered with an error (an HTTP status of 400 or more) other than
    401/403, which are :class:`RegistryAuthError`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status


class RegistryClient:
    """The two calls of the Confluent Schema Registry REST API that :class:`AvroCodec`
    makes: register a schema under a subject, and fetch a schema by id.

    Not ``confluent_kafka.schema_registry.SchemaRegistryClient``: importing that (authlib,
    httpx, cryptography) takes ~0.25 s of CPU, in every process that encodes or decodes
    (each processor worker), for two requests per schema that the codec caches anyway.
    Plain ``http.client`` on one keep-alive connection; a comma-separated list of URLs
    works as with Confluent's client (the next one is tried when one is unreachable).

    Basic auth and TLS (CA, client certificate) come from ``security``, by default the
    ``WIRESTREAM_REGISTRY_*`` environment and ``user:password@`` in the URL
    (:mod:`wirestream.registry_client_security`). Failures are one-line
    :class:`RegistryError` subclasses that name the URL without its password.
    """

    def __init__(self, url: str, timeout: float = 10.0, security: RegistrySecurity | None = None) -> None:
        self.urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
        if not self.urls:
            raise RegistryError("no schema registry URL")
        self.timeout = timeout
        self.security = security if security is not None else RegistrySecurity.from_env(self.urls[0])
        self._authorization = self.security.authorization()
        self._ssl_context: ssl.SSLContext | None = None  # made on the first https connection
        self._lock = threading.Lock()  # one request at a time on the shared connection
        self._conn: Any = None  # http.client.HTTP(S)Connection to self.urls[0]
        self._warned_cleartext = False

    def register_schema(self, subject: str, schema_str: str) -> int:
        """``POST /subjects/{subject}/versions``: the id of ``schema_str`` (Avro)."""
        answer = self._request("POST", f"/subjects/{quote(subject, safe='')}/versions",
                               {"schema": schema_str})
        return int(answer["id"])

    def get_schema(self, schema_id: int) -> str:
        """``GET /schemas/ids/{id}``: the schema's text."""
        return str(self._request("GET", f"/schemas/ids/{int(schema_id)}")["schema"])

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        """One request, on a fresh connection if the kept one was closed meanwhile
        (a keep-alive connection the server dropped fails once, harmlessly)."""
        import http.client

        data = json.dumps(body).encode() if body is not None else None
        with self._lock:
            last: Exception | None = None
            last_url = self.urls[0]
            # The most telling TLS error seen: when a server refuses the handshake (no client
            # certificate), one attempt reads its alert and the next may see only the close.
            tls: tuple[str, ssl.SSLError] | None = None
            for attempt in range(len(self.urls) + 1):
                last_url = self.urls[0]
                parts = urlsplit(last_url)
                headers = {"Accept": "application/vnd.schemaregistry.v1+json, application/json"}
                if data is not None:
                    headers["Content-Type"] = "application/vnd.schemaregistry.v1+json"
                if self._authorization is not None:
                    headers["Authorization"] = self._authorization
                    if parts.scheme != "https" and not self._warned_cleartext:
                        self._warned_cleartext = True
                        if parts.hostname not in ("127.0.0.1", "::1", "localhost"):
                            log.warning("schema registry %s: basic auth credentials go in cleartext (http, "
                                        "not https)", redact_url(last_url))
                try:
                    conn = self._connection(parts)
                    conn.request(method, parts.path + path, body=data, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                except ssl.SSLCertVerificationError as exc:
                    # not retried: another connection gets the same certificate
                    self._close()
                    raise connection_error(last_url, exc, self.security) from None
                except (OSError, http.client.HTTPException) as exc:
                    self._close()
                    last = exc
                    if isinstance(exc, ssl.SSLError) and (tls is None or isinstance(tls[1], ssl.SSLEOFError)):
                        tls = (last_url, exc)
                    if attempt and len(self.urls) > 1:
                        self.urls.append(self.urls.pop(0))  # unreachable: the next URL
                    continue
                if response.will_close:
                    self._close()
                if response.status in (401, 403):
                    raise auth_error(last_url, response.status, self.security)
                try:
                    answer = json.loads(payload) if payload else {}
                except ValueError:
                    answer = {}
                if response.status >= 400:
                    message = answer.get("message") if isinstance(answer, dict) else None
                    raise RegistryHTTPError(response.status, str(message or response.reason))
                return answer
            assert last is not None
            url, exc = tls if tls is not None else (last_url, last)
            raise connection_error(url, exc, self.security) from None

    def _connection(self, parts: Any) -> Any:
        if self._conn is None:
            import http.client

            port = parts.port
            if parts.scheme == "https":
                if self._ssl_context is None:
                    self._ssl_context = self.security.ssl_context()
                self._conn = http.client.HTTPSConnection(parts.hostname, port, timeout=self.timeout,
                                                         context=self._ssl_context)
            else:
                self._conn = http.client.HTTPConnection(parts.hostname, port, timeout=self.timeout)
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class AvroCodec:
    """Encode records for a topic and decode Confluent-framed Avro messages.

    ``registry_url`` is any Confluent-compatible registry (wirestream's embedded one
    included). Schema lookups are cached: after the first message of a schema, encoding
    and decoding touch only the compiled core's ``AvroWriter``/``AvroReader`` (fastavro
    for a schema outside their subset).

    Credentials and TLS files come from the environment (or ``user:password@`` in the
    URL): :mod:`wirestream.registry_client_security`. ``registry_url`` is kept as given;
    messages show it through ``redact_url``.
    """

    def __init__(self, registry_url: str, security: RegistrySecurity | None = None) -> None:
        self.registry_url = registry_url
        self._where = f"schema registry {redact_url(registry_url)}"  # for messages: no password
        self._client = RegistryClient(registry_url, timeout=10, security=security)
        #: topic -> its encoder, cached: ``codec.encoders[topic](record)``. Filled on
        #: first use for wirestream topics, by :meth:`encoder_for_schema` for others.
        self.encoders: dict[str, Encoder] = _Encoders(self._make_encoder)
        #: (schema id, the fields decoded or None for all) -> reader
        self._readers: dict[tuple[int, frozenset[str] | None], BodyReader] = {}
        self._schemas: dict[int, Any] = {}  # schema id -> the writer's schema (JSON)

    def register(self, topic: str) -> int:
        """Register the value schema of wirestream topic ``topic``; return its schema id."""
        try:
            schema_name = TOPIC_SCHEMAS[topic]
        except KeyError:
            raise RegistryError(f"no wirestream schema for topic {topic!r}") from None
        return self.register_schema(subject_for(topic), schema_text(schema_name))

    def register_schema(self, subject: str, schema_json: str) -> int:
        """Register any Avro schema under ``subject``; return its schema id."""
        try:
            return self._client.register_schema(subject, schema_json)
        except RegistryError:
            raise  # already named: auth, TLS, unreachable
        except RegistryHTTPError as exc:
            raise RegistryError(f"{self._where} refused {subject}: {exc}") from None
        except Exception as exc:  # an answer that is not the protocol's (no "id")
            raise RegistryError(f"{self._where}: bad answer registering {subject}: {exc!r}") from None

    def encoder(self, topic: str) -> Encoder:
        """Return a function that encodes one record of ``topic`` (cached per topic)."""
        return self.encoders[topic]

    def _make_encoder(self, topic: str) -> Encoder:
        schema_id = self.register(topic)
        return make_encoder(schema_id, json.loads(schema_text(TOPIC_SCHEMAS[topic])))

    def encoder_for_schema(self, topic: str, schema: dict[str, Any]) -> Encoder:
        """An encoder for a topic that is not wirestream's (a plugin's), with its own
        Avro ``schema``, registered under the topic's subject."""
        enc = self.encoders.get(topic)  # .get: not made from wirestream's schemas if missing
        if enc is None:
            schema_id = self.register_schema(subject_for(topic), json.dumps(schema, separators=(",", ":")))
            enc = self.encoders[topic] = make_encoder(schema_id, schema)
        return enc

    def encode(self, topic: str, record: dict[str, Any]) -> bytes:
        return self.encoder(topic)(record)

    def _reader(self, schema_id: int, fields: frozenset[str] | None = None) -> BodyReader:
        reader = self._readers.get((schema_id, fields))
        if reader is None:
            schema = self._schemas.get(schema_id)
            if schema is None:
                try:
                    text = self._client.get_schema(schema_id)
                except RegistryError:
                    raise  # already named: auth, TLS, unreachable (never "unknown schema")
                except RegistryHTTPError as exc:
                    if exc.status != 404:  # a registry in trouble does not make the message bad
                        raise RegistryError(f"{self._where}: schema id {schema_id}: {exc}") from None
                    raise DecodeError(f"unknown schema id {schema_id}: {exc}") from None
                except Exception as exc:  # an answer that is not the protocol's (no "schema")
                    raise RegistryError(f"{self._where}: bad answer for schema id {schema_id}: {exc!r}") from None
                schema = self._schemas[schema_id] = json.loads(text)
            reader = self._readers[(schema_id, fields)] = make_reader(schema, fields)
        return reader

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """Decode one Confluent-framed Avro message. Raises :class:`DecodeError` if malformed."""
        return self._decode(data, None)

    def decode_views(self, data: bytes | None) -> dict[str, Any]:
        """:meth:`decode`, with each bytes value of 4 KiB or more a read-only
        ``memoryview`` of ``data`` rather than a copy of its bytes (the compiled reader's
        ``views``): a packet batch's headers and payloads go to the core as they came in
        the message. Raises :class:`DecodeError` if malformed."""
        return self._read(data, None, views=True)  # type: ignore[no-any-return]

    def decoder(self, fields: frozenset[str] | None = None) -> Callable[[bytes | None], dict[str, Any]]:
        """``decode`` that builds only ``fields`` of a record (those the record has): the
        others are skipped in the body, never made into objects. For a reader that needs a
        few fields of big records (``analyze``'s summary: no header maps, no bodies).

        A malformed body raises :class:`DecodeError` as with :meth:`decode`, except where
        only a skipped field is wrong in a way that skipping cannot see (a string that is
        not UTF-8)."""
        if fields is None:
            return self.decode
        fields = frozenset(fields)
        return lambda data: self._decode(data, fields)

    def json_line(self, data: bytes | None) -> bytes:
        """The JSON line of a message's record, newline included: the bytes
        ``sinks/jsonl.py``'s ``to_json_line`` writes for :meth:`decode`'s record. The
        compiled reader writes it from the body without making the record
        (``rust/src/avro_json.rs``); a schema outside its subset is decoded, then
        written. Raises :class:`DecodeError` if malformed."""
        return self._read(data, None, json_line=True)  # type: ignore[return-value]

    def body_reader(self, data: bytes | None) -> tuple[BodyReader, int]:
        """The whole-record reader of a Confluent-framed message's schema and the offset
        of its body, for a writer that reads the body elsewhere (``JsonlWriter.
        write_message``: the compiled reader's ``AvroReader`` is read by the core's JSON
        lines thread). Raises :class:`DecodeError` if the framing is bad."""
        return self._framed(data, None), _HEADER.size

    def _decode(self, data: bytes | None, fields: frozenset[str] | None) -> dict[str, Any]:
        return self._read(data, fields)  # type: ignore[return-value]

    def _read(self, data: bytes | None, fields: frozenset[str] | None, json_line: bool = False,
              views: bool = False) -> Any:
        """The record of a Confluent-framed message (``fields`` only, if given; big bytes
        values as views of ``data`` if ``views`` and the reader can), or its JSON line;
        :class:`DecodeError` when the framing or the body is malformed."""
        reader = self._framed(data, fields)
        body = data if type(data) is bytes else bytes(data)
        try:
            if views and (read_views := getattr(reader, "views", None)) is not None:
                return read_views(body, _HEADER.size)
            if not json_line:
                return reader(body, _HEADER.size)
            line = getattr(reader, "json_line", None)
            if line is not None:
                return line(body, _HEADER.size)
            from wirestream.sinks.jsonl import to_json_line

            return (to_json_line(reader(body, _HEADER.size)) + "\n").encode()
        except Exception as exc:  # EOFError, ValueError, IndexError, UnicodeDecodeError... on bad bytes
            raise DecodeError(f"malformed Avro body for schema id {_HEADER.unpack_from(body)[1]}: {exc}") from None

    def _framed(self, data: bytes | None, fields: frozenset[str] | None) -> BodyReader:
        """The reader of a Confluent-framed message's schema (``fields`` only, if given);
        :class:`DecodeError` when the framing is bad."""
        if data is None or len(data) < _HEADER.size:
            raise DecodeError("message too short for the Confluent wire format")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise DecodeError(f"bad magic byte {magic} (not Confluent-framed Avro)")
        return self._reader(schema_id, fields)


def make_reader(schema: Any, fields: frozenset[str] | None = None) -> BodyReader:
    """Build a reader for the Avro bodies of ``schema`` (the writer's schema, as JSON);
    with ``fields``, records of only those top-level fields.

    The compiled reader (:mod:`wirestream.avro_reader`: the compiled core's, same records
    as fastavro, ~3x faster than the generated Python it replaced on a transaction record)
    when the schema is in its subset, fastavro otherwise."""
    try:
        return compile_reader(schema, fields)
    except UnsupportedSchema:
        pass
    import fastavro  # the fallback only: its import is ~50 ms of every worker's start-up

    parsed = fastavro.parse_schema(schema)
    read = fastavro.schemaless_reader

    def decode(data: bytes, offset: int) -> dict[str, Any]:
        return read(io.BytesIO(memoryview(data)[offset:]), parsed, None)  # type: ignore[no-any-return]

    if fields is None:
        return decode

    def decode_fields(data: bytes, offset: int) -> dict[str, Any]:
        record = decode(data, offset)
        return {k: v for k, v in record.items() if k in fields}

    return decode_fields


def make_encoder(schema_id: int, schema: Any) -> Encoder:
    """Build an encoder that frames the Avro encoding of a record with ``schema_id``.

    The compiled writer (:mod:`wirestream.avro_writer`: the compiled core's, ~10x faster than fastavro, same bytes) when the
    schema is in its subset, fastavro otherwise."""
    header = _HEADER.pack(MAGIC_BYTE, schema_id)
    try:
        return compile_writer(schema, header)
    except UnsupportedSchema:
        pass
    import fastavro

    parsed_schema = fastavro.parse_schema(schema)
    writer = fastavro.schemaless_writer

    def encode(record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(header)
        writer(buf, parsed_schema, record)
        return buf.getvalue()

    return encode
