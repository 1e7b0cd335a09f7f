"""TCP stream reassembly: the in-order bytes of one direction of a connection.

Input is every segment of one direction as captured (retransmitted, overlapping,
out of order, truncated by the snap length); output is calls to ``deliver(data, ts_us)``
with the next bytes of the stream exactly once and in order, and ``gap(missing, ts_us)``
where bytes were never captured. ``ts_us`` is the capture time of the segment that
carried the bytes (an analyser takes "first request byte" and "last response byte" times
from it).

The rules, in the order :meth:`StreamReassembler.segment` applies them:

- The stream starts at :attr:`StreamReassembler.next_seq`, which the owner sets to
  ISN + 1 when the TCP analysis knows the ISN (``l7/session.py``). Left unset (capture
  started mid-connection), the first data segment seen starts the stream.
- Data at or before the expected sequence number is trimmed to its new part (a
  retransmission that also carries new bytes delivers only those; a pure retransmission
  delivers nothing). Sequence numbers compare modulo 2^32.
- Data beyond the expected number waits in a small out-of-order buffer; when the hole is
  filled the buffer drains. Wireshark does the same with ``tcp.reassemble_out_of_order``.
- A hole becomes a **gap** (the bytes are declared lost and delivery resumes after them)
  when the peer has already acknowledged bytes beyond it (the receiver got them, the
  capture did not), when the buffer exceeds its bound, or when the stream ends. Holding
  data forever for bytes that will never come would stall every later message.
- A segment truncated by the capture's snap length delivers its captured part and a gap
  for the rest.

Memory per direction is bounded by ``max_buffer`` bytes of out-of-order data.
"""

from __future__ import annotations

from collections.abc import Callable

M32 = 0xFFFFFFFF
HALF = 0x80000000

Deliver = Callable[[bytes, int], None]
Gap = Callable[[int, int], None]


def seq_diff(a: int, b: int) -> int:
    """``a - b`` in sequence space: positive when ``a`` is after ``b`` (modulo 2^32)."""
    d = (a - b) & M32
    return d - (1 << 32) if d >= HALF else d


class StreamReassembler:
    """In-order delivery of one direction of a TCP connection."""

    __slots__ = ("deliver", "gap", "max_buffer", "next_seq", "peer_ack", "pending",
                 "pending_bytes", "delivered", "gap_bytes", "duplicate_bytes", "finished")

    def __init__(self, deliver: Deliver, gap: Gap, max_buffer: int = 1 << 20) -> None:
        self.deliver = deliver
        self.gap = gap
        self.max_buffer = max_buffer
        # Sequence number of the next byte to deliver (None: the first segment's).
        self.next_seq: int | None = None
        self.peer_ack: int | None = None  # highest ACK the other side sent for this stream
        # seq -> (data, ts_us, missing tail bytes) of segments beyond a hole
        self.pending: dict[int, tuple[bytes, int, int]] = {}
        self.pending_bytes = 0
        self.delivered = 0
        self.gap_bytes = 0
        self.duplicate_bytes = 0
        self.finished = False

    # --- input ---------------------------------------------------------------------------

    def ack(self, ack: int) -> None:
        """The peer acknowledged up to ``ack``: a hole below it will never be filled.

        The latest ACK is kept (an old one arriving reordered only delays a gap)."""
        self.peer_ack = ack
        if self.pending and self.next_seq is not None and seq_diff(ack, self.next_seq) > 0:
            self._skip_hole(ack)

    def segment(self, seq: int, data: bytes, length: int, ts_us: int) -> None:
        """A segment of ``length`` payload bytes of which ``data`` were captured."""
        if self.finished or not length:
            return
        nxt = self.next_seq
        if nxt is None:  # mid-stream start: the first data we see begins the stream
            nxt = self.next_seq = seq
        off = seq_diff(seq, nxt)
        if off == 0 and not self.pending:  # the common case: the next bytes, in order
            self._deliver(seq, data, length, ts_us)
            return
        if off < 0:  # starts before what we have delivered: keep only the new part
            if off + length <= 0:
                self.duplicate_bytes += length
                return
            self.duplicate_bytes += -off
            data = data[-off:]
            length += off
            seq = nxt
            off = 0
        if off == 0:
            self._deliver(seq, data, length, ts_us)
            self._drain()
            return
        # Beyond a hole: keep it (the longest version, if retransmitted) until the hole fills.
        old = self.pending.get(seq)
        if old is None or len(old[0]) + old[2] < length:
            if old is not None:
                self.pending_bytes -= len(old[0])
            self.pending[seq] = (data, ts_us, length - len(data))
            self.pending_bytes += len(data)
        if self.peer_ack is not None and seq_diff(self.peer_ack, nxt) > 0:
            self._skip_hole(self.peer_ack)  # the receiver already had the missing bytes
        while self.pending_bytes > self.max_buffer and self.pending:
            self._skip_hole(None)

    def finish(self) -> None:
        """The stream ended (FIN, RST, timeout, end of input): deliver what is buffered."""
        while self.pending:
            self._skip_hole(None)
        self.finished = True

    # --- internals -------------------------------------------------------------------------

    def _deliver(self, seq: int, data: bytes, length: int, ts_us: int) -> None:
        if data:
            self.deliver(data, ts_us)
            self.delivered += len(data)
        if len(data) < length:  # truncated by the snap length: the rest was never captured
            missing = length - len(data)
            self.gap_bytes += missing
            self.gap(missing, ts_us)
        self.next_seq = (seq + length) & M32

    def _drain(self) -> None:
        """Deliver buffered segments that now continue the stream."""
        pending = self.pending
        while pending:
            nxt = self.next_seq
            seg = pending.pop(nxt, None)
            if seg is None:
                # A buffered segment may overlap what was just delivered: trim it.
                for s in sorted(pending, key=lambda s: seq_diff(s, nxt)):
                    if seq_diff(s, nxt) > 0:
                        return
                    data, ts, tail = pending.pop(s)
                    self.pending_bytes -= len(data)
                    length = len(data) + tail
                    over = seq_diff(nxt, s)
                    if over < length:
                        self.duplicate_bytes += over
                        self._deliver(nxt, data[over:], length - over, ts)
                        break
                    self.duplicate_bytes += length
                else:
                    return
                continue
            data, ts, tail = seg
            self.pending_bytes -= len(data)
            self._deliver(nxt, data, len(data) + tail, ts)

    def _skip_hole(self, upto: int | None) -> None:
        """Declare the bytes before the first buffered segment lost (or up to ``upto``)."""
        nxt = self.next_seq
        first = min(self.pending, key=lambda s: seq_diff(s, nxt))
        target = first
        if upto is not None and seq_diff(upto, first) < 0:
            target = upto  # acknowledged up to ``upto`` only; the hole may partly fill
        missing = seq_diff(target, nxt)
        if missing > 0:
            self.gap_bytes += missing
            self.gap(missing, self.pending[first][1])
            self.next_seq = target
        self._drain()
