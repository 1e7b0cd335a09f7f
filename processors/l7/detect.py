"""Which protocol a TCP connection speaks, from its first bytes — never from the port.

``detect(data)`` looks at the first bytes one side sent and answers with the protocol
and whether that side is the client. Wireshark decides HTTP and TLS by port (plus
optional heuristics); we look at the bytes, so HTTP on port 8000 or TLS on 8443 are
found without configuration. DNS over TCP has no recognisable first bytes (a length
prefix), so it is the one protocol chosen by port (53). Redis is recognised from a
client's first command: a RESP array of bulk strings (``*<n>\r\n$<len>\r\n``), what
every Redis client library sends (the replies alone are not told from other protocols'
lines, so a capture that starts mid-connection waits for the client's next command).
PostgreSQL is recognised from the client's startup packet (a length, then protocol 3.x
or the code of an SSLRequest, GSSENCRequest or CancelRequest), or, for a capture that
starts mid-connection, from a whole ``Query`` or ``Parse`` message whose length and
NUL-terminated texts agree exactly (Wireshark decides ``pgsql`` by port 5432). MySQL's
server speaks first: its handshake packet (sequence 0, protocol 10, a version string
starting with a digit) makes it the server; mid-connection, a whole ``COM_QUERY`` packet
(sequence 0, command 3, printable SQL, the length agreeing) makes the sender the client
(Wireshark decides ``mysql`` by port 3306). A Kafka client's request is a frame (a
big-endian int32 size) whose header names an API Kafka has (a key of 0 to 94 and a
version of at most two above Kafka 4.4's highest for it), a correlation id and a client
id of printable bytes (or none; not empty);
a capture that starts mid-connection recognises the client's next request (Wireshark
decides ``kafka`` by port 9092).
"""

from __future__ import annotations

import re
from enum import Enum

from wirestream._core import (
    kafka_api,  # rust/src/l7/kafka/apis.rs
    looks_like_tls_client_hello,  # rust/src/l7/tls/record.rs
)

#: Request methods of HTTP/1.1 (RFC 9110) and the common WebDAV/extension ones.
HTTP_METHODS = frozenset(
    b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH PROPFIND PROPPATCH MKCOL COPY "
    b"MOVE LOCK UNLOCK SEARCH REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE "
    b"UNSUBSCRIBE PURGE LINK UNLINK SOURCE".split()
)
_LONGEST_METHOD = max(len(m) for m in HTTP_METHODS)

#: Bytes needed before a "no" is final (a method token plus its space).
NEED = _LONGEST_METHOD + 1


class Verdict(Enum):
    H2_PREFACE = "h2_preface"        # this side is an HTTP/2 client (prior knowledge: h2c, gRPC)
    HTTP_REQUEST = "http_request"    # this side is an HTTP client
    HTTP_RESPONSE = "http_response"  # this side is an HTTP server
    TLS_CLIENT_HELLO = "tls_client"  # this side is a TLS client
    TLS_SERVER = "tls_server"        # a TLS handshake record from the server side
    RESP_COMMAND = "resp_command"    # this side is a Redis client (a RESP command array)
    PG_STARTUP = "pg_startup"        # this side is a PostgreSQL client (a startup packet)
    PG_MESSAGE = "pg_message"        # a PostgreSQL client's Query or Parse, mid-connection
    MYSQL_GREETING = "mysql_greeting"  # this side is a MySQL server (its handshake, protocol 10)
    MYSQL_COMMAND = "mysql_command"    # a MySQL client's COM_QUERY, mid-connection
    KAFKA_REQUEST = "kafka_request"    # this side is a Kafka client (a request's frame)
    UNKNOWN = "unknown"
    NEED_MORE = "need_more"


#: HTTP/2's client connection preface (RFC 9113 §3.4)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: a RESP command: an array of 1 to 1,048,576 elements whose first is a bulk string
_RESP_COMMAND = re.compile(rb"\*[1-9][0-9]{0,6}\r\n\$[0-9]{1,9}\r\n")
_RESP_PREFIX = re.compile(rb"\*(?:[1-9][0-9]{0,6}(?:\r(?:\n(?:\$(?:[0-9]{1,9}\r?)?)?)?)?)?")


#: PostgreSQL's startup codes: SSLRequest, GSSENCRequest (8-byte packets), CancelRequest (16)
_PG_SPECIAL = {80877103: 8, 80877104: 8, 80877102: 16}
#: A startup packet's limit (PostgreSQL's MAX_STARTUP_PACKET_LENGTH)
_PG_MAX_STARTUP = 10_000


def _postgres_startup(data: bytes) -> Verdict:
    """A client's first packet (``data[0]`` is 0): PostgreSQL's startup or special request?"""
    if len(data) < 8:
        # what can be told already: a length of at most 10,000 (00 00 ≤27 ..), then 3.x
        # (00 03 ..) or a special request's code (04 d2 ..)
        head = data.ljust(8, b"\0")
        plausible = (head[1] == 0 and head[2] <= 0x27 and (len(data) <= 4 or head[4] in (0, 4))
                     and (len(data) <= 5 or (head[4], head[5]) in ((0, 3), (4, 0xD2))))
        return Verdict.NEED_MORE if plausible else Verdict.UNKNOWN
    length = int.from_bytes(data[:4], "big")
    code = int.from_bytes(data[4:8], "big")
    if code >> 16 == 3 and 8 < length <= _PG_MAX_STARTUP and (len(data) < 9 or data[8] != 0):
        # protocol 3.x: name/value pairs follow, the first a parameter's name ("user"):
        # not a NUL — where a Kafka Metadata request v0–2 (key 3, the same first bytes)
        # has the high byte of its correlation id
        return Verdict.PG_STARTUP
    if _PG_SPECIAL.get(code) == length:
        return Verdict.PG_STARTUP
    return Verdict.UNKNOWN


def _postgres_message(data: bytes) -> bool:
    """A whole Query (``Q``) or Parse (``P``) message, lengths and texts agreeing: a
    PostgreSQL client seen from the middle of its connection."""
    if len(data) < 6:
        return False
    length = int.from_bytes(data[1:5], "big")
    if length < 5 or len(data) < length + 1:
        return False
    body = data[5:length + 1]
    if data[0] == 0x51:  # Query: the text and its NUL, nothing else
        return body.find(b"\0") == len(body) - 1
    # Parse: statement name, text, int16 count of parameter types, their int32 OIDs
    name_end = body.find(b"\0")
    text_end = body.find(b"\0", name_end + 1) if name_end >= 0 else -1
    if text_end < 0 or len(body) < text_end + 3:
        return False
    types = int.from_bytes(body[text_end + 1:text_end + 3], "big")
    return len(body) == text_end + 3 + 4 * types


def _mysql(data: bytes) -> Verdict | None:
    """A MySQL server's handshake or a client's whole COM_QUERY packet, if ``data`` starts
    with one (a 3-byte little-endian length, sequence 0)."""
    if len(data) < 6 or data[3] != 0:
        return None
    length = int.from_bytes(data[:3], "little")
    if data[4] == 0x0A and 30 <= length <= 1024 and 0x30 <= data[5] <= 0x39:
        version_end = data.find(b"\0", 5, 5 + 64)
        if version_end > 5 and data[5:version_end].isascii() and data[5:version_end].decode().isprintable():
            return Verdict.MYSQL_GREETING
    if data[4] == 0x03 and length + 4 == len(data) and length > 1:
        text = data[5:]
        # SQL: printable ASCII and white space (UTF-8 text beyond ASCII is rare in a
        # statement's first segment; such a capture waits for the next plain command)
        if text.strip() and all(0x20 <= c < 0x7F or c in (0x09, 0x0A, 0x0D) for c in text):
            return Verdict.MYSQL_COMMAND
    return None


#: A Kafka request's frame at most (the broker's socket.request.max.bytes is 100 MB)
_KAFKA_MAX_FRAME = 256 * 1024 * 1024
#: Bytes of a request's frame before its client id: size, API key and version,
#: correlation id, the client id's length
_KAFKA_HEAD = 14


def _kafka_version(key: int, version: int) -> bool:
    """A version a client of API ``key`` could send (at most two above Kafka 4.4's highest)."""
    api = kafka_api(key)
    return api is not None and 0 <= version <= api[1] + 2


def _kafka(data: bytes) -> Verdict:
    """A Kafka request's frame, if ``data`` starts with one (``data[0]`` < 16: a size
    below 256 MB): the header of an API Kafka has, in a version it has, and a client id
    of printable bytes (or none; not empty: a response read as a request's header, as a
    capture that starts mid-connection may first show, often gives a length of 0)."""
    if len(data) < _KAFKA_HEAD:
        # worth waiting for only as a small request (a connection's first: ApiVersions,
        # Metadata), whose size and header agree so far
        head = data.ljust(_KAFKA_HEAD, b"\0")
        size = int.from_bytes(head[:4], "big")
        plausible = (head[1] == 0 and (len(data) < 4 or size >= 10)
                     and (len(data) < 8 or _kafka_version(int.from_bytes(head[4:6], "big", signed=True),
                                                          int.from_bytes(head[6:8], "big", signed=True))))
        return Verdict.NEED_MORE if plausible else Verdict.UNKNOWN
    size = int.from_bytes(data[:4], "big")
    key = int.from_bytes(data[4:6], "big", signed=True)
    version = int.from_bytes(data[6:8], "big", signed=True)
    if not 10 <= size <= _KAFKA_MAX_FRAME or not _kafka_version(key, version):
        return Verdict.UNKNOWN
    id_length = int.from_bytes(data[12:14], "big", signed=True)
    if id_length == -1:
        return Verdict.KAFKA_REQUEST
    if id_length <= 0 or id_length > size - 10:
        return Verdict.UNKNOWN
    client_id = data[14:14 + id_length]
    if not all(0x20 <= c < 0x7F for c in client_id):
        return Verdict.UNKNOWN
    return Verdict.KAFKA_REQUEST if len(client_id) == id_length or len(data) >= 4096 else Verdict.NEED_MORE


def detect(data: bytes) -> Verdict:
    """Classify the first bytes one side of a connection sent."""
    if not data:
        return Verdict.NEED_MORE
    b0 = data[0]
    mysql = _mysql(data)  # (first: a handshake's length byte can look like anything below)
    if mysql is not None:
        return mysql
    if b0 == 0x00:  # a big-endian length below 16 MB: PostgreSQL's startup packet, or Kafka's
        postgres = _postgres_startup(data)
        if postgres is Verdict.PG_STARTUP:
            return postgres
        kafka = _kafka(data)
        if kafka is Verdict.UNKNOWN:
            return postgres
        return kafka if kafka is Verdict.KAFKA_REQUEST or postgres is Verdict.UNKNOWN else Verdict.NEED_MORE
    if b0 < 0x10:  # a Kafka request of 16 MB or more (a big Produce, mid-connection)
        return _kafka(data)
    if b0 in (0x50, 0x51) and _postgres_message(data):  # "P", "Q" (no HTTP method fits)
        return Verdict.PG_MESSAGE
    if b0 == 0x2A:  # "*": a RESP array
        if _RESP_COMMAND.match(data):
            return Verdict.RESP_COMMAND
        prefix = _RESP_PREFIX.match(data)
        return Verdict.NEED_MORE if prefix is not None and prefix.end() == len(data) else Verdict.UNKNOWN
    if b0 == 0x16 or b0 & 0x80:
        # A TLS handshake record (type 22, version 3.x) or an SSLv2-compatible ClientHello
        # (high bit set in the 2-byte length).
        hello = looks_like_tls_client_hello(data)
        if hello is None:
            return Verdict.NEED_MORE
        if hello:
            return Verdict.TLS_CLIENT_HELLO
        # A capture that starts after the ClientHello: the server's ServerHello.
        if len(data) >= 6 and b0 == 0x16 and data[1] == 3 and data[2] <= 4 and data[5] == 2:
            return Verdict.TLS_SERVER
        return Verdict.UNKNOWN
    if b0 == 0x48:  # "HTTP/1." starts a response ("HEAD " is a method: checked below)
        if data[:7] == b"HTTP/1.":
            return Verdict.HTTP_RESPONSE
        # a status line Wireshark takes with a version of another spelling ("HTTP/1 200",
        # "HTTP/0.9 200"): HTTP/ and a digit (rust/src/l7/http/parser.rs, tolerated_line)
        if len(data) >= 6 and data[:5] == b"HTTP/" and 0x30 <= data[5] <= 0x39:
            return Verdict.HTTP_RESPONSE
        if len(data) < 7 and b"HTTP/1."[: len(data)] == data:
            return Verdict.NEED_MORE
    if not 0x41 <= b0 <= 0x5A:  # methods are upper-case tokens
        return Verdict.UNKNOWN
    if b0 == 0x50:  # "P": HTTP/2's connection preface ("PRI * HTTP/2.0..." is no HTTP/1 method)
        if data[:len(H2_PREFACE)] == H2_PREFACE[:len(data)]:
            return Verdict.H2_PREFACE if len(data) >= len(H2_PREFACE) else Verdict.NEED_MORE
    space = data.find(b" ", 0, NEED)
    # A method and the end of its line is a request line Wireshark takes ("OPTIONS" with
    # no target, as scanners send it): the first of space, CR, LF ends the method.
    ends = [i for i in (space, data.find(b"\r", 0, NEED), data.find(b"\n", 0, NEED)) if i >= 0]
    space = min(ends, default=-1)
    if space < 0:
        if len(data) < NEED and data.isupper():
            return Verdict.NEED_MORE
        return Verdict.UNKNOWN
    return Verdict.HTTP_REQUEST if data[:space] in HTTP_METHODS else Verdict.UNKNOWN
