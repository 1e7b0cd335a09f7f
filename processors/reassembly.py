"""TCP stream reassembly: the in-order bytes of one direction of a connection.

The implementation is the compiled core's (``rust/src/reassembly.rs``, whose doc comment
lists the rules: trimming of retransmissions, the bounded out-of-order buffer, gaps when
the peer acknowledged beyond a hole, when the buffer overflows and at the end, snap-length
truncation). The connection tracker runs it inside the core for every L7 connection
(``rust/src/tcp/tracker.rs``) and hands Python only the resulting data and gaps; this
module gives the same reassembler to Python code and tests:

``StreamReassembler(deliver, gap, max_buffer=1 << 20)`` calls ``deliver(data, ts_us)``
with the next bytes of the stream exactly once and in order, and ``gap(missing, ts_us)``
where bytes were never captured, before the call that caused them returns. ``ts_us`` is
the capture time of the segment that carried the bytes. Its ``next_seq`` (settable: ISN +
1 when the handshake is known; None, the first data segment seen starts the stream),
``peer_ack``, ``segment(seq, data, length, ts_us)``, ``ack(ack)``, ``finish()`` and the
counters ``delivered``, ``gap_bytes``, ``duplicate_bytes``, ``pending_bytes`` are those
of the Python class it replaces.
"""

from __future__ import annotations

from collections.abc import Callable

from wirestream._core import StreamReassembler

__all__ = ["HALF", "M32", "Deliver", "Gap", "StreamReassembler", "seq_diff"]

M32 = 0xFFFFFFFF
HALF = 0x80000000

Deliver = Callable[[bytes, int], None]
Gap = Callable[[int, int], None]


def seq_diff(a: int, b: int) -> int:
    """``a - b`` in sequence space: positive when ``a`` is after ``b`` (modulo 2^32)."""
    d = (a - b) & M32
    return d - (1 << 32) if d >= HALF else d
