"""The vocabulary of a TCP connection's analysis, for Python code that reads its records.

The analysis itself — Wireshark 4.0's TCP sequence analysis per packet (the reference is
``packet-tcp.c``, ``tcp_analyze_sequence_number`` and ``dissect_tcp``, checked against
``tshark`` 4.0.17 frame by frame; docs/tcp-analysis.md has the rules in prose) and the
``wire.connections`` record it gives — is the compiled core's (``rust/src/tcp/
connection.rs``), driven by :class:`~.connection_tracker.ConnectionTracker`. What stays
here are the names of its values: completeness bits, why a record is written, the
record's ``state``.
"""

from __future__ import annotations

import hashlib
from enum import Enum

# tcp.completeness bits (the record's ``lifecycle``)
C_SYN, C_SYNACK, C_ACK, C_DATA, C_FIN, C_RST = 1, 2, 4, 8, 16, 32


class EndedBy(Enum):
    """Why a connection's record is being written (``processors.connection_tracker``)."""

    CLOSE = "close"  # both FINs or a RST, then quiet for the linger time (or ports reused)
    TIMEOUT = "timeout"  # idle past the idle timeout, or evicted to bound memory
    END_OF_INPUT = "end_of_input"  # still open when the input ended
    OPEN = "open"  # not ended: an interim record of a connection that goes on


class State(Enum):
    """A connection record's ``state``; the values are the record's strings."""

    COMPLETE = "complete"
    RESET = "reset"
    REFUSED = "refused"
    INCOMPLETE_HANDSHAKE = "incomplete_handshake"  # a SYN never answered
    HALF_OPEN = "half_open"  # a SYN-ACK never acknowledged
    OPEN = "open"  # interim record
    TIMEOUT = "timeout"
    OPEN_AT_END = "open_at_end"


def connection_id(client_ip: str, client_port: int, server_ip: str, server_port: int, start_ts_us: int) -> str:
    """The id a connection's record carries (the core computes the same: blake2b, 8 bytes,
    of the endpoints and the start time; the same capture replayed gives the same ids)."""
    text = f"{client_ip}|{client_port}|{server_ip}|{server_port}|{start_ts_us}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
