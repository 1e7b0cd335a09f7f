"""DNS over UDP and TCP: parse messages, match queries with responses, emit ``wire.dns``.

One record per query (topic ``wire.dns``, schema ``dns.avsc``): the question, the
response code and answers, and the latency from query to response. The latency is
Wireshark's ``dns.time`` and the response code its ``dns.flags.rcode``; the tests check
both against ``tshark`` on every capture in ``tests/data``.

The work is the compiled core's (``rust/src/l7/dns``: ``message.rs`` parses, ``matcher.rs``
matches, ``tcp.rs`` frames DNS over TCP, ``state.rs`` is the checkpoint; the Python face
is ``rust/src/python_dns.rs``). This module is the Python API over it:

- :func:`parse_message` decodes one DNS message (RFC 1035 section 4) into a
  :class:`DnsMessage`, or raises :class:`DnsParseError` with a short named reason.
- :class:`DnsMatcher` pairs queries with responses for one processor partition (a batch's
  UDP rows at once through :meth:`DnsMatcher.datagrams`, read in place by the core; TCP
  messages through :class:`DnsTcpAnalyzer`), times queries out and emits the records,
  which the core builds.
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

from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from wirestream._core import DnsMatcher as _CoreMatcher
from wirestream._core import DnsTcp as _CoreTcp

from wirestream.topics import DNS

from ..state_codec import StateError
from .base import Emit, L7Options, StreamAnalyzer, StreamContext

#: The UDP port whose datagrams are DNS (see module docstring, "Ports").
DNS_PORT = 53

#: Wireshark's ``dns.retransmission_timer`` (seconds, default 5): a repeated query less
#: than this long after the first query of its transaction is a retransmission.
RETRANSMISSION_WINDOW_US = 5_000_000

#: Queries waiting for an answer, per matcher; beyond it the oldest is given up
#: (``error: evicted``, counted in ``dns_pending_overflow``).
MAX_PENDING: int = _CoreMatcher.MAX_PENDING

HEADER_LEN = 12
#: RFC 1035 section 2.3.4, length octets and the root byte included
MAX_NAME_WIRE: int = _CoreMatcher.MAX_NAME_WIRE

QR = 0x8000
FLAG_TC = 0x0200

#: ``A``, ``AAAA``, ...; unknown types as ``TYPE123`` (RFC 3597).
type_name = _CoreMatcher.type_name
#: ``NOERROR``, ...; unknown codes as ``RCODE12``.
rcode_name = _CoreMatcher.rcode_name
#: ``QUERY``, ...; unknown opcodes as ``OPCODE3``.
opcode_name = _CoreMatcher.opcode_name


def is_dns_port(sport: int, dport: int) -> bool:
    """Whether a UDP datagram between these ports goes to the DNS matcher (port 53)."""
    return sport == DNS_PORT or dport == DNS_PORT


# --- message parser -----------------------------------------------------------------------


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


def parse_message(data: bytes) -> DnsMessage:
    """Decode the header, questions and answers of one DNS message (the core's parser,
    ``rust/src/l7/dns/message.rs``).

    Raises :class:`DnsParseError` when the message is cut short or malformed. Bytes after
    the answer section (authority, additional, trailing padding such as the two bytes
    Windows appends to AXFR queries in ``dns_axfr``) are not examined.
    """
    res = _CoreMatcher.parse(bytes(data))
    if res[0] is not None:
        raise DnsParseError(res[0], res[1])
    _, ident, flags, questions, answers, ancount, nscount, arcount = res
    return DnsMessage(ident, flags, questions, [DnsAnswer(*a) for a in answers], ancount,
                      nscount, arcount)


# --- query/response matching --------------------------------------------------------------


class DnsMatcher:
    """Pairs DNS queries with their responses for one processor partition.

    UDP datagrams arrive a batch at a time through :meth:`datagrams` (or one by one
    through :meth:`on_datagram`), TCP messages through :class:`DnsTcpAnalyzer`. A record
    is emitted when a query is answered, superseded, times out (:meth:`tick`), its TCP
    connection ends or the input ends (:meth:`flush`). The transactions are the core's;
    every counter it names goes to ``stats`` (the DNS-over-TCP ones too: ``stats`` is the
    partition's, which the TCP analysers' contexts share).
    """

    # The core is state too: its bytes go into a snapshot (_state_prepare) and it is
    # rebuilt from them on restore (_state_restored); processors/state_codec.py.
    _state_exclude = ("_core",)

    def __init__(self, emit: Emit, options: L7Options, stats: Counter[str],
                 max_pending: int = MAX_PENDING) -> None:
        self.emit = emit
        self.options = options
        self.stats = stats
        self._core = _CoreMatcher(options.dns_timeout_us, max_pending, options.community_id_seed)
        self._core_state = b""

    @property
    def max_pending(self) -> int:
        return self._core.max_pending

    @max_pending.setter
    def max_pending(self, value: int) -> None:
        self._core.max_pending = value

    @property
    def pending(self) -> int:
        """Queries waiting for an answer."""
        return self._core.pending

    # -- input -----------------------------------------------------------------------------

    def datagrams(self, udp: np.ndarray, payloads: bytes | memoryview | np.ndarray) -> None:
        """A batch's UDP rows (``wire.packets`` headers) and its payload blob: those on port
        53 are matched (read in place by the core), the others counted in
        ``udp_not_analysed``."""
        if not len(udp):
            return
        if isinstance(payloads, np.ndarray):
            payloads = np.ascontiguousarray(payloads).view(np.uint8)
        out = self._core.udp_batch(np.ascontiguousarray(udp).view(np.uint8), payloads)
        if out is not None:
            self._done(out)

    def on_datagram(self, ts_us: int, src_ip: str, src_port: int, dst_ip: str,
                    dst_port: int, payload: bytes) -> None:
        """One UDP datagram on a DNS port. The QR bit says who is the client."""
        out = self._core.datagram(ts_us, src_ip, src_port, dst_ip, dst_port, payload)
        if out is not None:
            self._done(out)

    def _done(self, out: tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, int]]]) -> None:
        records, counts = out
        stats = self.stats
        for name, n in counts:
            stats[name] += n
        emit = self.emit
        for key, record in records:
            emit(DNS, key, record)

    # -- time ------------------------------------------------------------------------------

    def tick(self, now_us: int) -> None:
        """Emit the queries unanswered for ``options.dns_timeout_us`` of capture time."""
        out = self._core.tick(now_us)
        if out is not None:
            self._done(out)

    def flush(self) -> None:
        """End of input: emit every waiting query without a response."""
        out = self._core.flush()
        if out is not None:
            self._done(out)

    # -- checkpoints -----------------------------------------------------------------------

    def _state_prepare(self) -> None:
        self._core_state = self._core.snapshot()

    def _state_restored(self) -> None:
        try:
            self._core = _CoreMatcher.restore(self._core_state)
        except ValueError as exc:
            raise StateError(f"dns matcher: {exc}") from None
        # a setting, not in the core's bytes: the worker's options (handed in on restore)
        self._core.community_id_seed = self.options.community_id_seed
        self._core_state = b""


# --- DNS over TCP ------------------------------------------------------------------------


class DnsTcpAnalyzer(StreamAnalyzer):
    """Cuts both directions of a DNS-over-TCP connection into messages for the matcher
    (the core's framing, ``rust/src/l7/dns/tcp.rs``).

    Per direction, a two-state machine: reading (collect the 2-byte length and the
    message it announces, across any segment boundaries) until a gap, then stopped: after
    lost bytes there is no way to know where the next length prefix starts (a length is
    any two bytes), so that direction is not parsed again and what follows is counted.
    A gap in the server's direction also closes the connection's waiting queries with
    ``error: gap``: their answers may have been in the hole.
    """

    protocol = "dns"
    _state_exclude = ("_core",)

    def __init__(self, ctx: StreamContext, client_direction: int, matcher: DnsMatcher) -> None:
        super().__init__(ctx)
        self.matcher = matcher
        self.client_direction = client_direction
        c, s = client_direction, 1 - client_direction
        self._core = _CoreTcp(client_direction, ctx.ips[c], ctx.ports[c], ctx.ips[s], ctx.ports[s])
        self._core_state = b""

    def on_data(self, direction: int, data: bytes, ts_us: int) -> None:
        # The connection id is asked at the first message, once the tracker has settled
        # the roles.
        matcher = self.matcher
        out = matcher._core.tcp_data(self._core, direction, data, ts_us, self.ctx.connection_id)
        if out is not None:
            matcher._done(out)

    def on_gap(self, direction: int, missing: int, ts_us: int) -> None:
        matcher = self.matcher
        out = matcher._core.tcp_gap(self._core, direction)
        if out is not None:
            matcher._done(out)

    def tick(self, now_us: int) -> None:
        # Timeouts are the matcher's (shared with UDP); an O(1) check when nothing is due.
        self.matcher.tick(now_us)

    def on_close(self, ts_us: int) -> None:
        matcher = self.matcher
        out = matcher._core.tcp_close(self._core)
        if out is not None:
            matcher._done(out)

    def _state_prepare(self) -> None:
        self._core_state = self._core.snapshot()

    def _state_restored(self) -> None:
        try:
            self._core = _CoreTcp.restore(self._core_state)
        except ValueError as exc:
            raise StateError(f"dns tcp analyser: {exc}") from None
        self._core_state = b""
