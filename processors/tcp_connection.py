"""One TCP connection: Wireshark's TCP sequence analysis, packet by packet.

The reference is Wireshark 4.0's ``packet-tcp.c`` (``tcp_analyze_sequence_number`` and
``dissect_tcp``), checked against ``tshark`` 4.0.17 frame by frame; docs/tcp-analysis.md
has the rules in prose. The order of the checks below is Wireshark's, and it matters:
e.g. a keep-alive is never a retransmission, a spurious retransmission is recognised
before fast retransmission, and "0" means "not known yet" for ``nextseq`` and ``lastack``
exactly as in Wireshark (so a sequence number that wraps to exactly 0 behaves as there).

Input: one packet at a time (:meth:`TcpConnection.on_packet`). Output: counters on the
object, turned into a ``wire.connections`` record by :meth:`TcpConnection.to_record`.
"""

from __future__ import annotations

import hashlib
import math
from enum import Enum
from typing import Any

from wirestream.packet_block import ACK, FIN, RST, SYN, ip_text

from .findings import health_band

M32 = 0xFFFFFFFF
HALF = 0x80000000
MAX_UNACKED_SEGMENTS = 10_000  # Wireshark's TCP_MAX_UNACKED_SEGMENTS

# Per-packet analysis flags (Wireshark's TCP_A_*), kept as one int per packet.
A_RETRANSMISSION = 0x0001
A_LOST_PACKET = 0x0002
A_ACK_LOST_PACKET = 0x0004
A_KEEP_ALIVE = 0x0008
A_DUPLICATE_ACK = 0x0010
A_ZERO_WINDOW = 0x0020
A_ZERO_WINDOW_PROBE = 0x0040
A_ZERO_WINDOW_PROBE_ACK = 0x0080
A_KEEP_ALIVE_ACK = 0x0100
A_OUT_OF_ORDER = 0x0200
A_FAST_RETRANSMISSION = 0x0400
A_WINDOW_UPDATE = 0x0800
A_WINDOW_FULL = 0x1000
A_SPURIOUS_RETRANSMISSION = 0x4000
#: Packets that Wireshark marks with ``tcp.analysis.retransmission``.
ANY_RETRANSMISSION = A_RETRANSMISSION | A_FAST_RETRANSMISSION | A_SPURIOUS_RETRANSMISSION

_NO_COUNTS: dict[str, int] = dict.fromkeys(
    ("retransmissions", "fast_retransmissions", "spurious_retransmissions", "duplicate_acks",
     "out_of_order", "lost_segments", "zero_window", "zero_window_probes", "window_full",
     "keep_alives"), 0)

# tcp.completeness bits
C_SYN, C_SYNACK, C_ACK, C_DATA, C_FIN, C_RST = 1, 2, 4, 8, 16, 32

# window scale: -1 not known (no SYN seen), -2 no scaling (a SYN without the option).
# Not an Enum: the field is also the shift count (>= 0) itself, and is read per packet.
WS_UNKNOWN = -1
WS_NONE = -2


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

# Seq comparisons modulo 2^32 (Wireshark's GT_SEQ/LT_SEQ/LE_SEQ).
#   GT_SEQ(a, b)  <=>  (b - a) & M32 >= HALF


def connection_id(client_ip: str, client_port: int, server_ip: str, server_port: int, start_ts_us: int) -> str:
    """Stable connection id: the same capture replayed gives the same ids (and message keys)."""
    text = f"{client_ip}|{client_port}|{server_ip}|{server_port}|{start_ts_us}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class Flow:
    """One direction of a connection: Wireshark's ``tcp_flow_t`` plus our counters."""

    __slots__ = (
        "ip", "port", "base_seq_set", "base_seq", "window", "win_scale", "is_first_ack",
        "lastsegmentflags", "segments", "lastack", "lastacktime", "lastnondupack",
        "dupacknum", "nextseq", "nextseqframe", "nextseqtime", "maxseqtobeacked",
        "packets", "bytes", "goodput", "data_packets", "retrans_data_packets",
        "first_payload_ts", "fin", "win_min", "win_sum", "win_count",
    )

    def __init__(self, ip: bytes, port: int) -> None:
        self.ip = ip
        self.port = port
        self.base_seq_set = False
        self.base_seq = 0
        self.window = M32  # G_MAXUINT32: "no window seen yet"
        self.win_scale = WS_UNKNOWN
        self.is_first_ack = False
        self.lastsegmentflags = 0
        # unacked segments [seq, nextseq, ts_us, frame], oldest first; None when empty
        # (no list is held per idle flow: memory with 100k open connections)
        self.segments: list[list[int]] | None = None
        self.lastack = 0
        self.lastacktime = 0
        self.lastnondupack = 0
        self.dupacknum = 0
        self.nextseq = 0
        self.nextseqframe = 0
        self.nextseqtime = 0
        self.maxseqtobeacked = 0
        self.packets = 0
        self.bytes = 0
        self.goodput = 0
        self.data_packets = 0
        self.retrans_data_packets = 0
        self.first_payload_ts: int | None = None
        self.fin = False
        self.win_min: int | None = None
        self.win_sum = 0
        self.win_count = 0


class TcpConnection:
    """State and counters of one TCP conversation (one Wireshark ``tcp.stream``)."""

    __slots__ = (
        "key", "version", "flows", "first_ts", "last_ts", "completeness", "first_bits",
        "ts_mru_syn", "ts_first_rtt", "client", "syn_sender", "synack_sender",
        "counts", "rtt_n", "rtt_sum", "rtt_sumsq", "rtt_min", "rtt_max", "closed_ts",
        "rst_seen", "rst_after_fins", "interim_emitted", "source_id", "l7",
    )

    def __init__(self, key: tuple, version: int, src: bytes, sport: int, dst: bytes, dport: int,
                 ts: int, source_id: str = "") -> None:
        self.key = key
        self.version = version
        # flows[0] = sender of the first packet ("A" in tshark's conv table)
        self.flows = (Flow(src, sport), Flow(dst, dport))
        self.first_ts = ts
        self.last_ts = ts
        self.completeness = 0
        self.first_bits = 0  # completeness bits of the first packet (see to_record)
        self.ts_mru_syn = 0
        self.ts_first_rtt = 0
        self.syn_sender: int | None = None  # index of the flow that sent the first pure SYN
        self.synack_sender: int | None = None
        # Packets per Wireshark analysis flag; created on the first flagged packet, since
        # most connections never have one (memory: ~270 bytes per open connection).
        self.counts: dict[str, int] | None = None
        self.rtt_n = 0
        self.rtt_sum = 0
        self.rtt_sumsq = 0
        self.rtt_min: int | None = None
        self.rtt_max: int | None = None
        self.closed_ts: int | None = None  # capture time at which both FINs or a RST were seen
        self.rst_seen = False
        self.rst_after_fins = False  # FIN both ways, then a RST: still a complete close
        self.interim_emitted = 0
        self.source_id = source_id
        self.l7: Any = None  # the L7 session (processors/l7/session.py), from the first payload

    # ------------------------------------------------------------------------------------
    def on_packet(self, d: int, ts: int, frame: int, seq: int, ack: int, seglen: int,
                  flags: int, window: int, wscale: int, is_new: bool) -> int:
        """Analyse one packet sent by flow ``d`` (0 or 1); return its analysis flags."""
        fwd = self.flows[d]
        rev = self.flows[1 - d]
        self.last_ts = ts
        syn_ack = flags & (SYN | ACK)

        # --- tcp.completeness (dissect_tcp); the first packet only counts a pure SYN ---
        if is_new:
            self.completeness = (C_SYN | (C_DATA if seglen else 0)) if syn_ack == SYN else 0
            # Wireshark's 2nd pass adds the 1st packet's ordinary bits too (see lifecycle).
            self.first_bits = _ordinary_bits(flags, seglen)
        else:
            self.completeness |= _ORDINARY_BITS[(flags & _BITS_MASK) | (_BITS_DATA if seglen else 0)]

        # --- tcp_analyze_sequence_number ----------------------------------------------
        ta = 0
        if not fwd.base_seq_set:
            fwd.base_seq = seq if flags & SYN else (seq - 1) & M32
            fwd.base_seq_set = True
        if not rev.base_seq_set and flags & ACK:
            rev.base_seq = (ack - 1) & M32
            rev.base_seq_set = True

        nextseq = fwd.nextseq
        no_sfr = not flags & (SYN | FIN | RST)
        if seglen == 1 and seq == nextseq and rev.window == 0:
            ta = A_ZERO_WINDOW_PROBE
        else:
            if window == 0 and no_sfr:
                ta |= A_ZERO_WINDOW
            if nextseq and (nextseq - seq) & M32 >= HALF and not flags & RST:
                ta |= A_LOST_PACKET
            if seglen <= 1 and seq == (nextseq - 1) & M32 and no_sfr:
                ta |= A_KEEP_ALIVE
            if seglen == 0 and no_sfr and seq == nextseq and ack == fwd.lastack:
                if window and window != fwd.window:
                    ta |= A_WINDOW_UPDATE
            if seglen > 0 and rev.win_scale != WS_UNKNOWN and no_sfr:
                shift = 0 if rev.is_first_ack or rev.win_scale == WS_NONE else rev.win_scale
                if (seq + seglen) & M32 == (rev.lastack + ((rev.window << shift) & M32)) & M32:
                    ta |= A_WINDOW_FULL
            if seglen == 0 and no_sfr and window == fwd.window and seq == nextseq and ack == fwd.lastack:
                if window and rev.lastsegmentflags & A_KEEP_ALIVE:
                    ta |= A_KEEP_ALIVE_ACK
                elif window == 0 and rev.lastsegmentflags & A_ZERO_WINDOW_PROBE:
                    ta |= A_ZERO_WINDOW_PROBE_ACK
                elif window:
                    fwd.dupacknum = 1 if fwd.dupacknum == M32 else fwd.dupacknum + 1
                    ta |= A_DUPLICATE_ACK

        # finished_fwd: ACK bookkeeping
        if ack != fwd.lastack:
            fwd.lastnondupack = frame
            fwd.dupacknum = 0
        if rev.maxseqtobeacked and (rev.maxseqtobeacked - ack) & M32 >= HALF and flags & ACK:
            if rev.maxseqtobeacked > rev.nextseq:  # plain unsigned compare, as in Wireshark
                rev.maxseqtobeacked = rev.nextseq
                ta |= A_ACK_LOST_PACKET
            else:
                if rev.dupacknum == 0:
                    ta |= A_ACK_LOST_PACKET
                rev.dupacknum = M32

        # retransmission family
        if (seglen > 0 or flags & (SYN | FIN)) and not ta & A_KEEP_ALIVE:
            seq_not_advanced = nextseq != 0 and (seq - nextseq) & M32 >= HALF
            if seglen > 1 and (nextseq - 1) & M32 == seq:
                seq_not_advanced = False
            behind_ack = (seq + seglen - rev.lastack) & M32  # LE_SEQ(seq + len, peer's ack)
            if seglen > 0 and rev.lastack and (behind_ack == 0 or behind_ack >= HALF):
                ta |= A_SPURIOUS_RETRANSMISSION
            elif seq_not_advanced:
                if rev.dupacknum >= 2 and rev.lastack == seq and 0 <= ts - rev.lastacktime < 20_000:
                    ta |= A_FAST_RETRANSMISSION
                else:
                    thres = self.ts_first_rtt or 3_000
                    if (0 <= ts - fwd.nextseqtime < thres
                            and nextseq != (seq + seglen + (1 if flags & (SYN | FIN) else 0)) & M32):
                        ta |= A_OUT_OF_ORDER
                    else:
                        ta |= A_RETRANSMISSION

        # updates after classification
        end = (seq + seglen) & M32
        if seglen or flags & (SYN | FIN):
            if flags & (SYN | FIN):
                end = (end + 1) & M32
            if fwd.segments is None:
                fwd.segments = [[seq, end, ts, frame]]
            elif len(fwd.segments) < MAX_UNACKED_SEGMENTS:
                fwd.segments.append([seq, end, ts, frame])
        if (not nextseq or (nextseq - end) & M32 >= HALF) and not ta & A_ZERO_WINDOW_PROBE:
            fwd.nextseq = end
            fwd.nextseqframe = frame
            fwd.nextseqtime = ts
        if (seq == fwd.maxseqtobeacked or not fwd.maxseqtobeacked) and not ta & A_ZERO_WINDOW_PROBE:
            fwd.maxseqtobeacked = fwd.nextseq
        fwd.window = window
        fwd.lastack = ack
        fwd.lastacktime = ts
        fwd.lastsegmentflags = ta

        # ACKed segments -> ACK RTT (only an exact match of a segment end gives a sample;
        # newest to oldest, so the oldest exact match wins, as in Wireshark)
        segs = rev.segments
        if segs:
            rtt = None
            keep = []
            for s in reversed(segs):
                if ack == s[1]:
                    rtt = ts - s[2]  # exact match: an RTT sample; the segment is acked
                    continue
                behind_end = (ack - s[1]) & M32 >= HALF  # LT_SEQ(ack, segment end)
                if behind_end:
                    if (s[0] - ack) & M32 >= HALF:  # GT_SEQ(ack, segment start): partial ack
                        s[0] = ack
                    keep.append(s)
                # else: ack is beyond the segment end: acked without a sample
            if len(keep) != len(segs):
                keep.reverse()
                rev.segments = keep or None
            if rtt:  # Wireshark does not show a zero ack_rtt
                self.rtt_n += 1
                self.rtt_sum += rtt
                self.rtt_sumsq += rtt * rtt
                if self.rtt_min is None or rtt < self.rtt_min:
                    self.rtt_min = rtt
                if self.rtt_max is None or rtt > self.rtt_max:
                    self.rtt_max = rtt

        # --- after the analysis in dissect_tcp -------------------------------------------
        if flags & SYN:
            if syn_ack == SYN:
                self.ts_mru_syn = ts
                if self.syn_sender is None:
                    self.syn_sender = d
            elif self.synack_sender is None:
                self.synack_sender = d
            fwd.is_first_ack = True
        if syn_ack == ACK:
            if self.ts_mru_syn and not self.ts_first_rtt:
                self.ts_first_rtt = ts - self.ts_mru_syn
            fwd.is_first_ack = False
        if wscale >= 0:
            fwd.win_scale = wscale
        if flags & SYN:
            # verify_tcp_window_scaling: scaling only if both SYNs carried the option
            if fwd.win_scale == WS_UNKNOWN:
                fwd.win_scale = rev.win_scale = WS_NONE
            elif syn_ack == SYN | ACK and rev.win_scale == WS_NONE:
                fwd.win_scale = WS_NONE

        # --- our counters ------------------------------------------------------------------
        fwd.packets += 1
        if seglen:
            fwd.bytes += seglen
            fwd.data_packets += 1
            if fwd.first_payload_ts is None:
                fwd.first_payload_ts = ts
            if ta & ANY_RETRANSMISSION:
                fwd.retrans_data_packets += 1
            else:
                fwd.goodput += seglen
        # tcp.window_size: SYN windows are never scaled
        win = window << fwd.win_scale if not flags & SYN and fwd.win_scale >= 0 else window
        if fwd.win_min is None or win < fwd.win_min:
            fwd.win_min = win
        fwd.win_sum += win
        fwd.win_count += 1
        if flags & FIN:
            fwd.fin = True
        if flags & RST and not self.rst_seen:
            self.rst_seen = True
            self.rst_after_fins = fwd.fin and rev.fin
        if (self.rst_seen or (fwd.fin and rev.fin)) and self.closed_ts is None:
            self.closed_ts = ts
        if ta:
            c = self.counts
            if c is None:
                c = self.counts = dict(_NO_COUNTS)
            if ta & ANY_RETRANSMISSION:
                c["retransmissions"] += 1
                if ta & A_FAST_RETRANSMISSION:
                    c["fast_retransmissions"] += 1
                if ta & A_SPURIOUS_RETRANSMISSION:
                    c["spurious_retransmissions"] += 1
            if ta & A_DUPLICATE_ACK:
                c["duplicate_acks"] += 1
            if ta & A_OUT_OF_ORDER:
                c["out_of_order"] += 1
            if ta & A_LOST_PACKET:
                c["lost_segments"] += 1
            if ta & A_ZERO_WINDOW:
                c["zero_window"] += 1
            if ta & A_ZERO_WINDOW_PROBE:
                c["zero_window_probes"] += 1
            if ta & A_WINDOW_FULL:
                c["window_full"] += 1
            if ta & A_KEEP_ALIVE:
                c["keep_alives"] += 1
        return ta

    # ------------------------------------------------------------------------------------
    def is_syn_retransmission(self, d: int, seq: int) -> bool | None:
        """For a pure SYN from flow ``d``: True if it repeats the known ISN (same
        conversation), False if the ISN differs (a new conversation on the same ports),
        None if that side's base sequence number is not known yet."""
        fwd = self.flows[d]
        if not fwd.base_seq_set:
            return None
        if seq == fwd.base_seq:
            fwd.nextseq = fwd.maxseqtobeacked  # Wireshark restores nextseq (its issue 17616)
            return True
        return False

    def lifecycle(self) -> int:
        """``tcp.completeness`` as Wireshark shows it on the last frame (two-pass, as the GUI).

        Wireshark's first pass ignores the first packet's bits unless it is a pure SYN;
        its second pass adds them back. With more than one packet, that is what a user
        sees on the last frame (``tshark -2``).
        """
        if self.flows[0].packets + self.flows[1].packets > 1:
            return self.completeness | self.first_bits
        return self.completeness

    def roles(self) -> tuple[int, bool]:
        """(index of the client flow, whether the client is known from a SYN)."""
        if self.syn_sender is not None:
            return self.syn_sender, True
        if self.synack_sender is not None:
            return 1 - self.synack_sender, True
        a, b = self.flows
        # Best guess without a handshake: a well-known port is the server's; otherwise
        # the side that sent the first packet we saw is the client.
        if b.port < 1024 <= a.port:
            return 0, False
        if a.port < 1024 <= b.port:
            return 1, False
        return 0, False

    def state(self, ended_by: EndedBy) -> State:
        """Connection state, from what was seen and why the record is written."""
        life = self.lifecycle()
        if self.rst_seen:
            if life & C_SYN and not life & C_SYNACK and not life & C_DATA:
                return State.REFUSED
            return State.COMPLETE if self.rst_after_fins else State.RESET
        a, b = self.flows
        if a.fin and b.fin:
            return State.COMPLETE
        if life & C_SYN and not life & C_SYNACK and not (life & (C_ACK | C_DATA | C_FIN)):
            return State.INCOMPLETE_HANDSHAKE
        if life & C_SYNACK and not life & (C_ACK | C_DATA | C_FIN):
            return State.HALF_OPEN
        if ended_by is EndedBy.OPEN:
            return State.OPEN
        return State.TIMEOUT if ended_by is EndedBy.TIMEOUT else State.OPEN_AT_END

    def connection_id(self) -> str:
        """The id this connection's record carries (L7 records of the connection too)."""
        ci, _ = self.roles()
        c, s = self.flows[ci], self.flows[1 - ci]
        return connection_id(ip_text(c.ip, self.version), c.port,
                             ip_text(s.ip, self.version), s.port, self.first_ts)

    def to_record(self, ended_by: EndedBy, final: bool = True) -> dict[str, Any]:
        """The ``wire.connections`` record (fields of schemas/connection.avsc)."""
        ci, _ = self.roles()
        c, s = self.flows[ci], self.flows[1 - ci]
        client_ip = ip_text(c.ip, self.version)
        server_ip = ip_text(s.ip, self.version)
        life = self.lifecycle()
        data_packets = c.data_packets + s.data_packets
        retrans_data = c.retrans_data_packets + s.retrans_data_packets
        rate = retrans_data / data_packets if data_packets else 0.0
        rtt_avg = self.rtt_sum / self.rtt_n if self.rtt_n else None
        jitter = None
        if self.rtt_n:
            var = self.rtt_sumsq / self.rtt_n - rtt_avg * rtt_avg
            jitter = math.sqrt(var) if var > 0 else 0.0
        ttfb = None
        if c.first_payload_ts is not None and s.first_payload_ts is not None:
            ttfb = s.first_payload_ts - c.first_payload_ts
        rec: dict[str, Any] = {
            "connection_id": connection_id(client_ip, c.port, server_ip, s.port, self.first_ts),
            "source_id": self.source_id,
            "client_ip": client_ip,
            "client_port": c.port,
            "server_ip": server_ip,
            "server_port": s.port,
            "ip_version": self.version,
            "start_ts_us": self.first_ts,
            "end_ts_us": self.last_ts,
            "lifecycle": life,
            "state": self.state(ended_by).value,
            "final": final,
            "handshake_seen": life & (C_SYN | C_SYNACK | C_ACK) == (C_SYN | C_SYNACK | C_ACK),
            "handshake_rtt_us": self.ts_first_rtt or None,
            "packets_c2s": c.packets,
            "packets_s2c": s.packets,
            "bytes_c2s": c.bytes,
            "bytes_s2c": s.bytes,
            "goodput_bytes_c2s": c.goodput,
            "goodput_bytes_s2c": s.goodput,
            **(self.counts or _NO_COUNTS),
            "data_packets": data_packets,
            "retransmission_rate": rate,
            "health": health_band(rate),
            "rtt_samples": self.rtt_n,
            "rtt_min_us": self.rtt_min,
            "rtt_max_us": self.rtt_max,
            "rtt_avg_us": rtt_avg,
            "rtt_jitter_us": jitter,
            "ttfb_us": ttfb,
            "min_window_c2s": c.win_min,
            "avg_window_c2s": c.win_sum / c.win_count if c.win_count else None,
            "min_window_s2c": s.win_min,
            "avg_window_s2c": s.win_sum / s.win_count if s.win_count else None,
            "window_scale_c2s": c.win_scale if c.win_scale >= 0 else None,
            "window_scale_s2c": s.win_scale if s.win_scale >= 0 else None,
        }
        return rec


def _ordinary_bits(flags: int, seglen: int) -> int:
    """Completeness bits of a packet that does not open a conversation (Wireshark 4.0)."""
    bits = 0
    syn_ack = flags & (SYN | ACK)
    if syn_ack == SYN | ACK:
        bits |= C_SYNACK
    elif syn_ack == ACK:
        bits |= C_DATA if seglen else C_ACK
    if flags & (FIN | ACK) == FIN | ACK:
        bits |= C_FIN
    if flags & RST:
        bits |= C_RST
    return bits


# _ordinary_bits for every combination of FIN/SYN/RST/ACK and "has payload", looked up
# per packet instead of computed.
_BITS_MASK = FIN | SYN | RST | ACK
_BITS_DATA = 0x20
_ORDINARY_BITS = tuple(
    _ordinary_bits(i & _BITS_MASK, i & _BITS_DATA) for i in range(2 * _BITS_DATA)
)
