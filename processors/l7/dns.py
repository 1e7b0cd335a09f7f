"""DNS over UDP and TCP: parse messages, match queries with responses, emit ``wire.dns``.

One record per query (topic ``wire.dns``, schema ``dns.avsc``): the question, the
response code and answers, and the latency from query to response. The latency is
Wireshark's ``dns.time`` and the response code its ``dns.flags.rcode``; the tests check
both against ``tshark`` on every capture in ``tests/data``.

Pieces:

- :func:`parse_message` decodes one DNS message (RFC 1035 section 4) into a
  :class:`DnsMessage`, or raises :class:`DnsParseError` with a short named reason.
- :class:`DnsMatcher` pairs queries with responses for one processor partition (UDP
  datagrams directly, TCP messages through :class:`DnsTcpAnalyzer`), times queries out
  and emits the records.
- :class:`DnsTcpAnalyzer` cuts the reassembled byte streams of a TCP connection into
  messages (RFC 1035 section 4.2.2 / RFC 7766: a 2-byte length before each message).
- :func:`is_dns_port` says which UDP datagrams are DNS.

Matching (how ``dns.time`` is defined)
--------------------------------------
Wireshark (tshark 4.0 here) keeps transactions per conversation (the two address:port
endpoints; one TCP connection) and transaction id. Measured on the captures and on
crafted ones (``tests/test_dns.py``), it behaves as follows; we do the same unless noted:

- A query whose id is already waiting for an answer in that conversation, less than
  5 s (``dns.retransmission_timer``) after the *first* query of the transaction, is a
  retransmission (``dns.retransmission``): no new record, the record counts it in
  ``retransmissions``, and the latency runs from the first query, as ``dns.time`` does.
- The same query 5 s or more after the first one starts a new transaction; the old one
  is never answered in Wireshark. We emit the old one at once without a response and
  count ``dns_query_superseded``; the response then measures from the new query.
- The first response to a waiting transaction answers it; a second response with the
  same id is a duplicate (``dns.retransmit_response_in``, no ``dns.time``): counted in
  ``dns_duplicate_response``, no record. Continuations of a zone transfer (AXFR/IXFR
  over TCP send many messages with one id) are counted as ``dns_xfr_continuation``.
- A query sent again after its response is a new transaction (Wireshark agrees).
- A response with no waiting query (``dns.unsolicited``) is counted in
  ``dns_unmatched_response``.

Where we differ from Wireshark, on purpose:

- Our key also holds the question (name, case-insensitively as RFC 4343 says, and
  type): a client that sends A and AAAA queries with the same id gets two transactions
  and two correct latencies, where Wireshark calls the second query a retransmission
  of the first and times both responses from the first query. A response whose
  question matches no waiting query of its id is not taken as their answer (resolvers
  check the question too, and it is the signature of a spoofing attempt): it is counted
  in ``dns_question_mismatch`` and the query keeps waiting. A response without a
  question section (some servers answer FORMERR/NOTIMP that way) answers the oldest
  waiting query with its id, as in Wireshark.
- Wireshark waits forever; we wait ``L7Options.dns_timeout_us`` (10 s) of capture time
  and then emit the query without a response (``error: no_response``, counted in
  ``dns_no_response``); a response after that is an unmatched response (and
  ``dns_late_response``), whether or not :meth:`DnsMatcher.tick` ran in between.
- A response that does not parse but whose 12-byte header does is still taken as the
  answer of the single waiting query with its id (``error: parse_error``, ``rcode`` from
  the header, ``answers`` empty), so that a server sending malformed answers is not
  reported as a server that does not answer. Wireshark gives such frames no ``dns.time``.
- ``rcode`` is the 4-bit header code, as ``dns.flags.rcode`` (the EDNS extended code
  bits in the OPT record are not added).

Over TCP a message's time is the capture time of the segment that carried its last byte:
Wireshark shows a reassembled message in the frame where reassembly completes and
measures ``dns.time`` between those frames (checked on ``dns_tcp`` and ``dns_axfr``,
whose first byte or length prefix travel in an earlier segment).

Ports
-----
Only UDP port 53 (either side) is DNS: :func:`is_dns_port`. tshark decodes UDP 5353 as
mDNS and 5355 as LLMNR (``mdns``/``llmnr`` filters, ``dns.*`` fields): their queries go
to a multicast group and the answers come from the responder's own address, so they are
no conversation and tshark shows ``dns.time`` for neither (only for the rare unicast mDNS
exchange); they are link-local name resolution, not the resolver traffic this topic
measures. tshark also runs a heuristic DNS dissector on UDP payloads of any port; we do
not guess from payloads (cost, false positives). In ``tests/data`` every frame tshark
decodes as DNS uses port 53.

State and counters
------------------
A matcher holds at most ``MAX_PENDING`` waiting queries (the oldest is emitted with
``error: evicted``, ``dns_pending_overflow``) and as many recently answered slots (for
duplicate detection, forgotten after the timeout). Nothing raises on bad input; counters
(the partition's ``stats``): ``dns_queries``, ``dns_responses``, ``dns_answered``,
``dns_no_response``, ``dns_gap``, ``dns_evicted`` (records by outcome);
``dns_query_retransmission``, ``dns_query_superseded``, ``dns_duplicate_response``,
``dns_xfr_continuation``, ``dns_unmatched_response``, ``dns_late_response``,
``dns_question_mismatch`` (messages that made no record); ``dns_parse_error`` and
``dns_parse_error.<reason>``; over TCP ``dns_tcp_gap``, ``dns_tcp_partial_message``,
``dns_tcp_bytes_after_gap``, ``dns_tcp_wrong_direction``.

What is not parsed: the authority and additional sections (no field needs them; damage
there is not detected), EDNS options, DNSSEC. Names are in presentation format (RFC 1035
section 5.1: ``\\.`` and ``\\DDD`` escapes), the root is ``.`` (tshark prints ``<Root>``).
"""

from __future__ import annotations

import re
import socket
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from wirestream.topics import DNS

from .base import Emit, L7Options, StreamAnalyzer, StreamContext

# --- protocol constants -------------------------------------------------------------------

#: The UDP port whose datagrams are DNS (see module docstring, "Ports").
DNS_PORT = 53

#: Wireshark's ``dns.retransmission_timer`` (seconds, default 5): a repeated query less
#: than this long after the first query of its transaction is a retransmission.
RETRANSMISSION_WINDOW_US = 5_000_000

#: Queries waiting for an answer, per matcher; beyond it the oldest is given up
#: (``error: evicted``, counted in ``dns_pending_overflow``).
MAX_PENDING = 100_000

HEADER_LEN = 12
MAX_NAME_WIRE = 255  # RFC 1035 section 2.3.4, length octets and the root byte included
MAX_POINTERS = 127  # more compression jumps than labels could ever need

QR = 0x8000
FLAG_TC = 0x0200

TYPE_NAMES: dict[int, str] = {
    1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG", 9: "MR",
    10: "NULL", 11: "WKS", 12: "PTR", 13: "HINFO", 14: "MINFO", 15: "MX", 16: "TXT",
    17: "RP", 18: "AFSDB", 19: "X25", 20: "ISDN", 21: "RT", 22: "NSAP", 23: "NSAP-PTR",
    24: "SIG", 25: "KEY", 26: "PX", 27: "GPOS", 28: "AAAA", 29: "LOC", 30: "NXT", 31: "EID",
    32: "NIMLOC", 33: "SRV", 34: "ATMA", 35: "NAPTR", 36: "KX", 37: "CERT", 38: "A6",
    39: "DNAME", 40: "SINK", 41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP", 45: "IPSECKEY",
    46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 49: "DHCID", 50: "NSEC3", 51: "NSEC3PARAM",
    52: "TLSA", 53: "SMIMEA", 55: "HIP", 56: "NINFO", 57: "RKEY", 58: "TALINK", 59: "CDS",
    60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB", 65: "HTTPS",
    99: "SPF", 104: "NID", 105: "L32", 106: "L64", 107: "LP", 108: "EUI48", 109: "EUI64",
    249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR", 253: "MAILB", 254: "MAILA",
    255: "ANY", 256: "URI", 257: "CAA", 258: "AVC", 259: "DOA", 260: "AMTRELAY",
    32768: "TA", 32769: "DLV",
}
RCODE_NAMES: dict[int, str] = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 11: "DSOTYPENI",
}
OPCODE_NAMES: dict[int, str] = {
    0: "QUERY", 1: "IQUERY", 2: "STATUS", 4: "NOTIFY", 5: "UPDATE", 6: "DSO",
}
#: Counter of each way a query ends without a response (the record's ``error``).
_CLOSE_COUNTERS = {"no_response": "dns_no_response", "gap": "dns_gap", "evicted": "dns_evicted"}
_XFR_TYPES = frozenset({251, 252})  # IXFR, AXFR: one query, many response messages

# rdata rendered as a domain name
_NAME_RDATA = frozenset({2, 3, 4, 5, 7, 8, 9, 12, 39})
# rdata rendered as "preference name"
_PREF_NAME_RDATA = frozenset({15, 18, 21, 36})  # MX, AFSDB, RT, KX
_TXT_RDATA = frozenset({16, 99})  # TXT, SPF


def type_name(rrtype: int) -> str:
    """``A``, ``AAAA``, ...; unknown types as ``TYPE123`` (RFC 3597)."""
    name = TYPE_NAMES.get(rrtype)
    return name if name is not None else f"TYPE{rrtype}"


def rcode_name(rcode: int) -> str:
    name = RCODE_NAMES.get(rcode)
    return name if name is not None else f"RCODE{rcode}"


def opcode_name(opcode: int) -> str:
    name = OPCODE_NAMES.get(opcode)
    return name if name is not None else f"OPCODE{opcode}"


def is_dns_port(sport: int, dport: int) -> bool:
    """Whether a UDP datagram between these ports goes to the DNS matcher (port 53)."""
    return sport == DNS_PORT or dport == DNS_PORT


# --- message parser -----------------------------------------------------------------------

_header = struct.Struct("!HHHHHH").unpack_from
_u16 = struct.Struct("!H").unpack_from
_qtail = struct.Struct("!HH").unpack_from  # QTYPE, QCLASS
_rrhead = struct.Struct("!HHIH").unpack_from  # TYPE, CLASS, TTL, RDLENGTH
_soa_tail = struct.Struct("!IIIII").unpack_from
_srv = struct.Struct("!HHH").unpack_from

# Bytes that need an escape in a presentation-format label: anything outside printable
# ASCII, and backslash. A dot inside a label is caught by counting dots (see _name).
_NEEDS_ESCAPE = re.compile(rb"[^\x21-\x5b\x5d-\x7e.]")


class DnsParseError(ValueError):
    """A message that is not valid DNS. ``reason`` is a short name used in counters:
    ``truncated``, ``bad_pointer``, ``bad_label_type``, ``name_too_long``, ``bad_rdata``.
    ``header`` is ``(id, flags)`` when at least the 12-byte header was there."""

    def __init__(self, reason: str, header: tuple[int, int] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.header = header


class DnsAnswer(NamedTuple):
    name: str
    type: str
    ttl: int
    data: str


@dataclass(slots=True)
class DnsMessage:
    id: int
    flags: int
    #: (name, numeric type) of each question; the name as sent (case preserved)
    questions: list[tuple[str, int]]
    answers: list[DnsAnswer]
    ancount: int = 0
    nscount: int = 0
    arcount: int = 0

    @property
    def is_response(self) -> bool:
        return bool(self.flags & QR)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    @property
    def truncated(self) -> bool:
        return bool(self.flags & FLAG_TC)


def _escape_label(label: bytes) -> str:
    out = []
    for b in label:
        if b in (0x2E, 0x5C):  # "." and "\" are escaped with a backslash
            out.append("\\" + chr(b))
        elif 0x21 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


def _labels_text(labels: list[bytes]) -> str:
    raw = b".".join(labels)
    # Fast path: printable ASCII and no dot inside a label (dots = labels - 1).
    if _NEEDS_ESCAPE.search(raw) is None and raw.count(b".") == len(labels) - 1:
        return raw.decode("ascii")
    return ".".join(_escape_label(label) for label in labels)


#: Per message: offset -> (text, wire length, pointer jumps) of the name found there.
_NameCache = dict[int, tuple[str, int, int]]


def _name(buf: bytes, off: int, cache: _NameCache) -> tuple[str, int]:
    """Read the domain name at ``off``; return it as text and the offset after it.

    Compression pointers (RFC 1035 section 4.1.4) must point strictly before the
    previous jump target (the rule BIND applies): names are only ever compressed against
    earlier names, and strictly decreasing targets cannot loop. ``cache`` holds the
    names already read in this message by offset (the start of each name and each
    pointer target), so the usual ``C0 0C`` owner names cost one dict lookup.
    """
    start = off
    n = len(buf)
    labels: list[bytes] = []
    end = -1  # where the name ends in place: after its first pointer, or its root byte
    limit = off  # the next pointer must point below this
    wire = 1  # the root byte
    jumps = 0
    marks: list[tuple[int, int, int, int]] | None = None  # jump targets, to cache them
    suffix: tuple[str, int, int] | None = None  # a cached name reached through a pointer
    while True:
        if off >= n:
            raise DnsParseError("truncated")
        length = buf[off]
        if length == 0:
            off += 1
            break
        if length >= 0xC0:
            if off + 1 >= n:
                raise DnsParseError("truncated")
            target = ((length & 0x3F) << 8) | buf[off + 1]
            if end < 0:
                end = off + 2
            jumps += 1
            if target >= limit or jumps > MAX_POINTERS:
                raise DnsParseError("bad_pointer")
            suffix = cache.get(target)
            if suffix is not None:
                break
            if marks is None:
                marks = []
            marks.append((target, len(labels), wire, jumps))
            limit = off = target
            continue
        if length > 63:  # 0x40 (EDNS0 extended label, RFC 6891 deprecated it) and 0x80
            raise DnsParseError("bad_label_type")
        wire += length + 1
        if wire > MAX_NAME_WIRE:
            raise DnsParseError("name_too_long")
        first = off + 1
        off = first + length
        if off > n:
            raise DnsParseError("truncated")
        labels.append(buf[first:off])
    if end < 0:
        end = off
    tail = ""
    if suffix is not None:
        tail, suffix_wire, suffix_jumps = suffix
        wire += suffix_wire - 1
        jumps += suffix_jumps
        if wire > MAX_NAME_WIRE:
            raise DnsParseError("name_too_long")
        if jumps > MAX_POINTERS:
            raise DnsParseError("bad_pointer")
        if tail == ".":
            tail = ""
    if marks:
        for target, index, wire_before, jumps_before in marks:
            part = _labels_text(labels[index:]) if index < len(labels) else ""
            cache[target] = (_join(part, tail), wire - wire_before + 1, jumps - jumps_before)
    text = _join(_labels_text(labels) if labels else "", tail)
    cache[start] = (text, wire, jumps)
    return text, end


def _join(head: str, tail: str) -> str:
    if head and tail:
        return f"{head}.{tail}"
    return head or tail or "."


def _rdata_text(buf: bytes, rrtype: int, off: int, rdend: int, cache: _NameCache) -> str:
    """Presentation text of one record's data; raises ``bad_rdata`` when it does not fit."""
    rdlen = rdend - off
    if rrtype == 1:
        if rdlen != 4:
            raise DnsParseError("bad_rdata")
        return socket.inet_ntop(socket.AF_INET, buf[off:rdend])
    if rrtype == 28:
        if rdlen != 16:
            raise DnsParseError("bad_rdata")
        return socket.inet_ntop(socket.AF_INET6, buf[off:rdend])
    if rrtype in _NAME_RDATA:
        text, after = _name(buf, off, cache)
        if after > rdend:
            raise DnsParseError("bad_rdata")
        return text
    if rrtype in _PREF_NAME_RDATA:
        if rdlen < 3:
            raise DnsParseError("bad_rdata")
        text, after = _name(buf, off + 2, cache)
        if after > rdend:
            raise DnsParseError("bad_rdata")
        return f"{_u16(buf, off)[0]} {text}"
    if rrtype in _TXT_RDATA:
        # One or more <character-string>s (a length byte, then the bytes); as one string,
        # the way SPF/DKIM consumers concatenate them (RFC 7208 section 3.3).
        parts = []
        p = off
        while p < rdend:
            q = p + 1 + buf[p]
            if q > rdend:
                raise DnsParseError("bad_rdata")
            parts.append(buf[p + 1:q])
            p = q
        return b"".join(parts).decode("utf-8", "backslashreplace")
    if rrtype == 6:  # SOA: mname rname serial refresh retry expire minimum (as dig prints it)
        mname, p = _name(buf, off, cache)
        rname, p = _name(buf, p, cache)
        if p + 20 > rdend:
            raise DnsParseError("bad_rdata")
        serial, refresh, retry, expire, minimum = _soa_tail(buf, p)
        return f"{mname} {rname} {serial} {refresh} {retry} {expire} {minimum}"
    if rrtype == 33:  # SRV: priority weight port target
        if rdlen < 7:
            raise DnsParseError("bad_rdata")
        prio, weight, port = _srv(buf, off)
        target, after = _name(buf, off + 6, cache)
        if after > rdend:
            raise DnsParseError("bad_rdata")
        return f"{prio} {weight} {port} {target}"
    return buf[off:rdend].hex()


def parse_message(data: bytes) -> DnsMessage:
    """Decode the header, questions and answers of one DNS message.

    Raises :class:`DnsParseError` when the message is cut short or malformed. Bytes after
    the answer section (authority, additional, trailing padding such as the two bytes
    Windows appends to AXFR queries in ``dns_axfr``) are not examined.
    """
    buf = bytes(data)
    n = len(buf)
    if n < HEADER_LEN:
        raise DnsParseError("truncated")
    ident, flags, qdcount, ancount, nscount, arcount = _header(buf, 0)
    cache: _NameCache = {}
    try:
        off = HEADER_LEN
        questions: list[tuple[str, int]] = []
        for _ in range(qdcount):
            qname, off = _name(buf, off, cache)
            if off + 4 > n:
                raise DnsParseError("truncated")
            questions.append((qname, _qtail(buf, off)[0]))
            off += 4
        answers: list[DnsAnswer] = []
        for _ in range(ancount):
            # Fast path for the usual owner name, a bare pointer to a name already read.
            hit = None
            if off + 1 < n and buf[off] >= 0xC0:
                target = ((buf[off] & 0x3F) << 8) | buf[off + 1]
                if target < off:
                    hit = cache.get(target)
            if hit is not None and hit[2] < MAX_POINTERS:
                rname = hit[0]
                off += 2
            else:
                rname, off = _name(buf, off, cache)
            if off + 10 > n:
                raise DnsParseError("truncated")
            rrtype, _rrclass, ttl, rdlen = _rrhead(buf, off)
            off += 10
            rdend = off + rdlen
            if rdend > n:
                raise DnsParseError("truncated")
            answers.append(DnsAnswer(rname, type_name(rrtype), ttl,
                                     _rdata_text(buf, rrtype, off, rdend, cache)))
            off = rdend
    except DnsParseError as exc:
        exc.header = (ident, flags)
        raise
    return DnsMessage(ident, flags, questions, answers, ancount, nscount, arcount)


# --- query/response matching --------------------------------------------------------------

#: (connection_id or None, client_ip, client_port, server_ip, server_port, id): one
#: Wireshark transaction slot. A TCP connection is its own conversation (port reuse).
_Conv = tuple[str | None, str, int, str, int, int]


@dataclass(slots=True, eq=False)
class _Query:
    conv: _Conv
    qkey: tuple[str, int]  # (lower-case name, type): the question part of the key
    name: str
    qtype: int
    opcode: int
    transport: str
    ts_us: int
    retransmissions: int = 0


@dataclass(slots=True)
class _Answered:
    ts_us: int
    qtype: int


class DnsMatcher:
    """Pairs DNS queries with their responses for one processor partition.

    UDP datagrams arrive through :meth:`on_datagram`, TCP messages through
    :meth:`on_message` (from :class:`DnsTcpAnalyzer`). A record is emitted when a query
    is answered, superseded, times out (:meth:`tick`), its TCP connection ends
    (:meth:`close_connection`) or the input ends (:meth:`flush`).
    """

    def __init__(self, emit: Emit, options: L7Options, stats: Counter[str],
                 max_pending: int = MAX_PENDING) -> None:
        self.emit = emit
        self.options = options
        self.stats = stats
        self.max_pending = max_pending
        # Waiting queries in arrival order (= query time order: a retransmission does
        # not move its transaction), for the timeout sweep and the cap.
        self._pending: OrderedDict[tuple[_Conv, tuple[str, int]], _Query] = OrderedDict()
        # The same queries by conversation and id (almost always one per slot).
        self._by_conv: dict[_Conv, list[_Query]] = {}
        # Waiting TCP queries by connection, to close them with their connection.
        self._by_connection: dict[str, dict[tuple, _Query]] = {}
        # Recently answered slots, to tell a duplicate response from an unsolicited one.
        self._answered: OrderedDict[_Conv, _Answered] = OrderedDict()

    # -- input -----------------------------------------------------------------------------

    def on_datagram(self, ts_us: int, src_ip: str, src_port: int, dst_ip: str,
                    dst_port: int, payload: bytes) -> None:
        """One UDP datagram on a DNS port. The QR bit says who is the client."""
        parsed = self._parse(payload)
        if parsed is None:
            return
        if parsed[1] & QR:
            self._dispatch(parsed, ts_us, None, "udp", dst_ip, dst_port, src_ip, src_port)
        else:
            self._dispatch(parsed, ts_us, None, "udp", src_ip, src_port, dst_ip, dst_port)

    def on_message(self, transport: str, ts_us: int, client_ip: str, client_port: int,
                   server_ip: str, server_port: int, msg_bytes: bytes,
                   connection_id: str | None) -> None:
        """One whole DNS message whose roles the caller knows (TCP: the connection's)."""
        parsed = self._parse(msg_bytes)
        if parsed is not None:
            self._dispatch(parsed, ts_us, connection_id, transport, client_ip, client_port,
                           server_ip, server_port)

    def _parse(self, data: bytes) -> tuple[int, int, DnsMessage | None] | None:
        """``(id, flags, message)``; the message is None when only the header parsed; None
        when not even that. Errors are counted."""
        try:
            msg = parse_message(data)
        except DnsParseError as exc:
            self.stats["dns_parse_error"] += 1
            self.stats[f"dns_parse_error.{exc.reason}"] += 1
            if exc.header is None:
                return None
            return exc.header[0], exc.header[1], None
        return msg.id, msg.flags, msg

    def _dispatch(self, parsed: tuple[int, int, DnsMessage | None], ts_us: int,
                  connection_id: str | None, transport: str, client_ip: str, client_port: int,
                  server_ip: str, server_port: int) -> None:
        ident, flags, msg = parsed
        conv: _Conv = (connection_id, client_ip, client_port, server_ip, server_port, ident)
        if not flags & QR:
            if msg is not None:  # a query we cannot read is only counted (no question to key)
                self._query(ts_us, conv, transport, msg)
        elif msg is not None:
            self._response(ts_us, conv, msg)
        else:
            self._broken_response(ts_us, conv, flags)

    # -- state machine ---------------------------------------------------------------------

    def _query(self, ts_us: int, conv: _Conv, transport: str, msg: DnsMessage) -> None:
        stats = self.stats
        stats["dns_queries"] += 1
        if msg.questions:
            name, qtype = msg.questions[0]
        else:  # no question (a cookie-only query, or an odd opcode): keyed by id alone
            name, qtype = "", 0
        qkey = (name.lower(), qtype)
        old = self._pending.get((conv, qkey))
        if old is not None:
            if ts_us - old.ts_us < RETRANSMISSION_WINDOW_US:
                old.retransmissions += 1
                stats["dns_query_retransmission"] += 1
                return
            # Wireshark starts a new transaction and never answers the old one.
            stats["dns_query_superseded"] += 1
            self._close(old, "no_response")
        if len(self._pending) >= self.max_pending:
            stats["dns_pending_overflow"] += 1
            self._close(next(iter(self._pending.values())), "evicted")
        q = _Query(conv, qkey, name, qtype, msg.opcode, transport, ts_us)
        self._pending[(conv, qkey)] = q
        slot = self._by_conv.get(conv)
        if slot is None:
            self._by_conv[conv] = [q]
        else:
            slot.append(q)
        if conv[0] is not None:
            self._by_connection.setdefault(conv[0], {})[(conv, qkey)] = q

    def _response(self, ts_us: int, conv: _Conv, msg: DnsMessage) -> None:
        stats = self.stats
        stats["dns_responses"] += 1
        slot = self._by_conv.get(conv)
        if slot is not None:
            if msg.questions:
                name, qtype = msg.questions[0]
                qkey = (name.lower(), qtype)
                q = next((q for q in slot if q.qkey == qkey), None)
            else:
                q = slot[0]  # no question section: the oldest query with this id
            if q is not None:
                if not self._late(q, ts_us):
                    self._answer(q, ts_us, msg.flags, msg.answers, None)
                return
            stats["dns_question_mismatch"] += 1
            return
        self._unanswerable(conv, msg.questions[0][1] if msg.questions else 0)

    def _broken_response(self, ts_us: int, conv: _Conv, flags: int) -> None:
        """A response whose header parsed but the rest did not: it answers the query with
        its id if there is exactly one (nothing else to tell several apart)."""
        stats = self.stats
        stats["dns_responses"] += 1
        slot = self._by_conv.get(conv)
        if slot is not None and len(slot) == 1:
            if not self._late(slot[0], ts_us):
                self._answer(slot[0], ts_us, flags, [], "parse_error")
        elif slot is not None:  # several queries share the id: cannot tell which
            stats["dns_unmatched_response"] += 1
        else:
            self._unanswerable(conv, 0)

    def _late(self, q: _Query, ts_us: int) -> bool:
        """Whether the response comes after the query timed out. Checked here, not left
        to :meth:`tick`, so that the records do not depend on how often tick runs (a
        query and a late answer can be in one batch)."""
        if ts_us - q.ts_us < self.options.dns_timeout_us:
            return False
        self._close(q, "no_response")
        self.stats["dns_unmatched_response"] += 1
        self.stats["dns_late_response"] += 1
        return True

    def _unanswerable(self, conv: _Conv, qtype: int) -> None:
        """A response with no waiting query: a duplicate, a zone-transfer continuation or
        unsolicited."""
        answered = self._answered.get(conv)
        if answered is None:
            self.stats["dns_unmatched_response"] += 1
        elif answered.qtype in _XFR_TYPES and conv[0] is not None:
            self.stats["dns_xfr_continuation"] += 1
        else:
            self.stats["dns_duplicate_response"] += 1

    def _answer(self, q: _Query, ts_us: int, flags: int, answers: list[DnsAnswer],
                error: str | None) -> None:
        self.stats["dns_answered"] += 1
        self._forget(q)
        answered = self._answered
        answered[q.conv] = _Answered(ts_us, q.qtype)
        answered.move_to_end(q.conv)
        if len(answered) > self.max_pending:
            answered.popitem(last=False)
        self._emit(q, ts_us, rcode_name(flags & 0xF), bool(flags & FLAG_TC),
                   [{"name": a.name, "type": a.type, "ttl": a.ttl, "data": a.data}
                    for a in answers], error)

    def _close(self, q: _Query, error: str) -> None:
        """Emit a query that will get no response."""
        self.stats[_CLOSE_COUNTERS[error]] += 1
        self._forget(q)
        self._emit(q, None, None, False, [], error)

    def _forget(self, q: _Query) -> None:
        del self._pending[(q.conv, q.qkey)]
        slot = self._by_conv[q.conv]
        if len(slot) == 1:
            del self._by_conv[q.conv]
        else:
            slot.remove(q)
        cid = q.conv[0]
        if cid is not None:
            queries = self._by_connection[cid]
            del queries[(q.conv, q.qkey)]
            if not queries:
                del self._by_connection[cid]

    def _emit(self, q: _Query, response_ts_us: int | None, rcode: str | None,
              truncated: bool, answers: list[dict[str, Any]], error: str | None) -> None:
        cid, client_ip, client_port, server_ip, server_port, ident = q.conv
        record = {
            "connection_id": cid,
            "client_ip": client_ip,
            "client_port": client_port,
            "server_ip": server_ip,
            "server_port": server_port,
            "transport": q.transport,
            "query_id": ident,
            "query_name": q.name,
            "query_type": type_name(q.qtype) if q.qtype else "",
            "rcode": rcode,
            "answers": answers,
            "query_ts_us": q.ts_us,
            "response_ts_us": response_ts_us,
            "latency_us": None if response_ts_us is None else response_ts_us - q.ts_us,
            "opcode": opcode_name(q.opcode),
            "truncated": truncated,
            "retransmissions": q.retransmissions,
            "error": error,
        }
        if cid is None:  # UDP: the conversation and the transaction id
            cid = f"{client_ip}:{client_port}>{server_ip}:{server_port}#{ident}"
        self.emit(DNS, cid, record)

    # -- time ------------------------------------------------------------------------------

    def tick(self, now_us: int) -> None:
        """Emit the queries unanswered for ``options.dns_timeout_us`` of capture time."""
        timeout = self.options.dns_timeout_us
        pending = self._pending
        while pending:
            q = next(iter(pending.values()))
            if now_us - q.ts_us < timeout:
                break
            self._close(q, "no_response")
        answered = self._answered
        while answered:
            conv, a = next(iter(answered.items()))
            if now_us - a.ts_us < timeout:
                break
            del answered[conv]

    def close_connection(self, connection_id: str, error: str = "no_response") -> None:
        """A TCP connection ended: its waiting queries can no longer be answered."""
        queries = self._by_connection.get(connection_id)
        if queries:
            for q in list(queries.values()):
                self._close(q, error)

    def flush(self) -> None:
        """End of input: emit every waiting query without a response."""
        pending = self._pending
        while pending:
            self._close(next(iter(pending.values())), "no_response")
        self._answered.clear()

    @property
    def pending(self) -> int:
        return len(self._pending)


# --- DNS over TCP ------------------------------------------------------------------------


class _Framing(Enum):
    """The state of one direction of a DNS-over-TCP connection."""

    READING = "reading"  # cutting the bytes into length-prefixed messages
    STOPPED = "stopped"  # after a gap: where the next length prefix starts is unknown


# Looked at per segment: a module global costs what the booleans did, the class
# attribute ``_Framing.STOPPED`` ~200 ns more on CPython 3.11 (see l7/http.py).
_READING, _STOPPED = _Framing.READING, _Framing.STOPPED


class DnsTcpAnalyzer(StreamAnalyzer):
    """Cuts both directions of a DNS-over-TCP connection into messages for the matcher.

    Per direction, a two-state machine: READING (collect the 2-byte length and the
    message it announces, across any segment boundaries) until a gap, then STOPPED: after
    lost bytes there is no way to know where the next length prefix starts (a length is
    any two bytes), so that direction is not parsed again and what follows is counted.
    A gap in the server's direction also closes the connection's waiting queries with
    ``error: gap``: their answers may have been in the hole.
    """

    protocol = "dns"

    def __init__(self, ctx: StreamContext, client_direction: int, matcher: DnsMatcher) -> None:
        super().__init__(ctx)
        self.matcher = matcher
        self.client_direction = client_direction
        c, s = client_direction, 1 - client_direction
        self.client = (ctx.ips[c], ctx.ports[c])
        self.server = (ctx.ips[s], ctx.ports[s])
        # Bytes of each direction not yet consumed: at most one unfinished message.
        self._buf = [bytearray(), bytearray()]
        self._framing = [_READING, _READING]
        self._connection_id: str | None = None

    @property
    def connection_id(self) -> str:
        # Asked at the first message, once the tracker has settled the roles.
        if self._connection_id is None:
            self._connection_id = self.ctx.connection_id()
        return self._connection_id

    def on_data(self, direction: int, data: bytes, ts_us: int) -> None:
        if self._framing[direction] is _STOPPED:
            self.ctx.stats["dns_tcp_bytes_after_gap"] += len(data)
            return
        pending = self._buf[direction]
        if pending:
            pending += data  # amortised: a long message in many segments is copied once
            buf: bytes | bytearray = pending
        else:
            buf = data  # common case: whole messages in one segment, no copy
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
            if end > n:
                break
            # Complete: its time is that of the segment carrying its last byte, this one.
            self._message(direction, bytes(buf[pos + 2:end]), ts_us)
            pos = end
        if buf is pending:
            del pending[:pos]
        elif pos < n:
            pending += buf[pos:]

    def _message(self, direction: int, msg: bytes, ts_us: int) -> None:
        stats = self.ctx.stats
        if len(msg) < HEADER_LEN:
            stats["dns_parse_error"] += 1
            stats["dns_parse_error.truncated"] += 1
            return
        # Queries come from the client and responses from the server (RFC 7766); a
        # message the other way round (DSO push, RFC 8490, or garbage) is not matched.
        from_server = direction != self.client_direction
        if bool(msg[2] & 0x80) != from_server:
            stats["dns_tcp_wrong_direction"] += 1
            return
        self.matcher.on_message("tcp", ts_us, self.client[0], self.client[1], self.server[0],
                                self.server[1], msg, self.connection_id)

    def on_gap(self, direction: int, missing: int, ts_us: int) -> None:
        if self._framing[direction] is _STOPPED:
            return
        stats = self.ctx.stats
        stats["dns_tcp_gap"] += 1
        if self._buf[direction]:
            stats["dns_tcp_partial_message"] += 1
            self._buf[direction] = bytearray()
        self._framing[direction] = _STOPPED
        if direction != self.client_direction and self._connection_id is not None:
            self.matcher.close_connection(self._connection_id, "gap")

    def tick(self, now_us: int) -> None:
        # Timeouts are the matcher's (shared with UDP); an O(1) check when nothing is due.
        self.matcher.tick(now_us)

    def on_close(self, ts_us: int) -> None:
        for direction in (0, 1):
            if self._buf[direction]:
                self.ctx.stats["dns_tcp_partial_message"] += 1
                self._buf[direction] = bytearray()
        if self._connection_id is not None:
            server_stopped = self._framing[1 - self.client_direction] is _STOPPED
            self.matcher.close_connection(self._connection_id,
                                          "gap" if server_stopped else "no_response")
