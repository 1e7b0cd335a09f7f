"""Which protocol a TCP connection speaks, from its first bytes — never from the port.

``detect(data)`` looks at the first bytes one side sent and answers with the protocol
and whether that side is the client. Wireshark decides HTTP and TLS by port (plus
optional heuristics); we look at the bytes, so HTTP on port 8000 or TLS on 8443 are
found without configuration. DNS over TCP has no recognisable first bytes (a length
prefix), so it is the one protocol chosen by port (53). Redis is recognised from a
client's first command: a RESP array of bulk strings (``*<n>\r\n$<len>\r\n``), what
every Redis client library sends (the replies alone are not told from other protocols'
lines, so a capture that starts mid-connection waits for the client's next command).
"""

from __future__ import annotations

import re
from enum import Enum

from wirestream._core import looks_like_tls_client_hello  # rust/src/l7/tls/record.rs

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
    HTTP_REQUEST = "http_request"    # this side is an HTTP client
    HTTP_RESPONSE = "http_response"  # this side is an HTTP server
    TLS_CLIENT_HELLO = "tls_client"  # this side is a TLS client
    TLS_SERVER = "tls_server"        # a TLS handshake record from the server side
    RESP_COMMAND = "resp_command"    # this side is a Redis client (a RESP command array)
    UNKNOWN = "unknown"
    NEED_MORE = "need_more"


#: a RESP command: an array of 1 to 1,048,576 elements whose first is a bulk string
_RESP_COMMAND = re.compile(rb"\*[1-9][0-9]{0,6}\r\n\$[0-9]{1,9}\r\n")
_RESP_PREFIX = re.compile(rb"\*(?:[1-9][0-9]{0,6}(?:\r(?:\n(?:\$(?:[0-9]{1,9}\r?)?)?)?)?)?")


def detect(data: bytes) -> Verdict:
    """Classify the first bytes one side of a connection sent."""
    if not data:
        return Verdict.NEED_MORE
    b0 = data[0]
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
