//! One TCP connection: Wireshark 4.0's TCP sequence analysis, packet by packet.
//!
//! The reference is Wireshark 4.0's `packet-tcp.c` (`tcp_analyze_sequence_number` and
//! `dissect_tcp`), checked against `tshark` 4.0.17 frame by frame by the oracle tests;
//! docs/tcp-analysis.md has the rules in prose. The order of the checks is Wireshark's
//! and it matters: a keep-alive is never a retransmission, a spurious retransmission is
//! recognised before a fast retransmission, and 0 means "not known yet" for `nextseq` and
//! `lastack` exactly as in Wireshark (a sequence number that wraps to exactly 0 behaves as
//! there). Written by hand: no crate does Wireshark's analysis.
//!
//! Input: one packet at a time ([`Connection::on_packet`]). Output: counters, turned into
//! the values of a `wire.connections` record by [`Connection::record`].

use std::fmt::Write as _;
use std::net::Ipv6Addr;

use blake2::digest::{Update, VariableOutput};
use blake2::Blake2bVar;

use crate::community_id;

use super::zeek::Zeek;

pub const FIN: u16 = 1;
pub const SYN: u16 = 2;
pub const RST: u16 = 4;
pub const ACK: u16 = 16;

const HALF: u32 = 0x8000_0000;
/// Wireshark's TCP_MAX_UNACKED_SEGMENTS.
pub const MAX_UNACKED_SEGMENTS: usize = 10_000;

// Per-packet analysis flags (Wireshark's TCP_A_*).
pub const A_RETRANSMISSION: u32 = 0x0001;
pub const A_LOST_PACKET: u32 = 0x0002;
pub const A_ACK_LOST_PACKET: u32 = 0x0004;
pub const A_KEEP_ALIVE: u32 = 0x0008;
pub const A_DUPLICATE_ACK: u32 = 0x0010;
pub const A_ZERO_WINDOW: u32 = 0x0020;
pub const A_ZERO_WINDOW_PROBE: u32 = 0x0040;
pub const A_ZERO_WINDOW_PROBE_ACK: u32 = 0x0080;
pub const A_KEEP_ALIVE_ACK: u32 = 0x0100;
pub const A_OUT_OF_ORDER: u32 = 0x0200;
pub const A_FAST_RETRANSMISSION: u32 = 0x0400;
pub const A_WINDOW_UPDATE: u32 = 0x0800;
pub const A_WINDOW_FULL: u32 = 0x1000;
pub const A_SPURIOUS_RETRANSMISSION: u32 = 0x4000;
/// Packets that Wireshark marks with `tcp.analysis.retransmission`.
pub const ANY_RETRANSMISSION: u32 = A_RETRANSMISSION | A_FAST_RETRANSMISSION | A_SPURIOUS_RETRANSMISSION;

/// Names of the analysis counters, in the record's field order.
pub const COUNT_NAMES: [&str; 10] = [
    "retransmissions", "fast_retransmissions", "spurious_retransmissions", "duplicate_acks",
    "out_of_order", "lost_segments", "zero_window", "zero_window_probes", "window_full",
    "keep_alives",
];

// tcp.completeness bits
pub const C_SYN: u8 = 1;
pub const C_SYNACK: u8 = 2;
pub const C_ACK: u8 = 4;
pub const C_DATA: u8 = 8;
pub const C_FIN: u8 = 16;
pub const C_RST: u8 = 32;

/// Window scale not known (no SYN seen).
pub const WS_UNKNOWN: i8 = -1;
/// No scaling (a SYN without the option).
pub const WS_NONE: i8 = -2;

/// `a > b` modulo 2^32 (Wireshark's GT_SEQ(a, b)).
#[inline]
fn gt_seq(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) >= HALF
}

/// Why a connection's record is written (`processors/tcp_connection.py` `EndedBy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndedBy {
    Close,
    Timeout,
    EndOfInput,
    Open,
}

/// A segment not yet acknowledged: sequence range and capture time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    pub seq: u32,
    pub end: u32,
    pub ts: i64,
}

/// One direction: Wireshark's `tcp_flow_t` plus our counters.
#[derive(Clone, Debug, PartialEq)]
pub struct Flow {
    pub ip: [u8; 16],
    pub port: u16,
    pub base_seq_set: bool,
    pub base_seq: u32,
    /// u32::MAX: no window seen yet (Wireshark's G_MAXUINT32)
    pub window: u32,
    pub win_scale: i8,
    pub is_first_ack: bool,
    pub lastsegmentflags: u32,
    pub segments: Vec<Seg>,
    pub lastack: u32,
    pub lastacktime: i64,
    pub dupacknum: u32,
    pub nextseq: u32,
    pub nextseqtime: i64,
    pub maxseqtobeacked: u32,
    pub packets: u64,
    pub bytes: u64,
    pub goodput: u64,
    pub data_packets: u64,
    pub retrans_data_packets: u64,
    pub first_payload_ts: Option<i64>,
    pub fin: bool,
    pub win_min: Option<u64>,
    pub win_sum: u64,
    pub win_count: u64,
}

impl Flow {
    pub fn new(ip: [u8; 16], port: u16) -> Self {
        Flow {
            ip, port, base_seq_set: false, base_seq: 0, window: u32::MAX, win_scale: WS_UNKNOWN,
            is_first_ack: false, lastsegmentflags: 0, segments: Vec::new(), lastack: 0,
            lastacktime: 0, dupacknum: 0, nextseq: 0, nextseqtime: 0, maxseqtobeacked: 0,
            packets: 0, bytes: 0, goodput: 0, data_packets: 0, retrans_data_packets: 0,
            first_payload_ts: None, fin: false, win_min: None, win_sum: 0, win_count: 0,
        }
    }
}

/// State and counters of one TCP conversation (one Wireshark `tcp.stream`).
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    pub version: u8,
    /// flows[0]: the sender of the first packet ("A" in tshark's conversation table)
    pub flows: [Flow; 2],
    pub first_ts: i64,
    pub last_ts: i64,
    pub completeness: u8,
    /// completeness bits of the first packet (see `lifecycle`)
    pub first_bits: u8,
    pub ts_mru_syn: i64,
    pub ts_first_rtt: i64,
    pub syn_sender: Option<u8>,
    pub synack_sender: Option<u8>,
    pub counts: [u64; 10],
    pub rtt_n: u64,
    pub rtt_sum: i64,
    pub rtt_sumsq: i128,
    pub rtt_min: Option<i64>,
    pub rtt_max: Option<i64>,
    /// capture time at which both FINs or a RST were seen
    pub closed_ts: Option<i64>,
    pub rst_seen: bool,
    /// FIN both ways, then a RST: still a complete close
    pub rst_after_fins: bool,
    pub interim_emitted: u64,
    /// Zeek's view of the connection (conn.log's conn_state, history, missed_bytes)
    pub zeek: Zeek,
}

/// The values of a `wire.connections` record (schemas/connection.avsc), source_id aside.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub connection_id: String,
    /// Community ID v1 of the connection (crate::community_id)
    pub community_id: String,
    pub client_ip: String,
    pub client_port: u16,
    pub server_ip: String,
    pub server_port: u16,
    pub ip_version: u8,
    pub start_ts_us: i64,
    pub end_ts_us: i64,
    pub lifecycle: u8,
    pub state: &'static str,
    pub final_: bool,
    pub handshake_seen: bool,
    pub handshake_rtt_us: Option<i64>,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub goodput: [u64; 2],
    pub counts: [u64; 10],
    pub data_packets: u64,
    pub retransmission_rate: f64,
    pub health: &'static str,
    pub rtt_samples: u64,
    pub rtt_min_us: Option<i64>,
    pub rtt_max_us: Option<i64>,
    pub rtt_avg_us: Option<f64>,
    pub rtt_jitter_us: Option<f64>,
    pub ttfb_us: Option<i64>,
    pub min_window: [Option<u64>; 2],
    pub avg_window: [Option<f64>; 2],
    pub window_scale: [Option<i8>; 2],
    /// Zeek's conn.log fields (None: not known, the connection was restored from a
    /// checkpoint written before they existed)
    pub conn_state: Option<&'static str>,
    pub history: Option<String>,
    pub missed_bytes: Option<u64>,
    /// Zeek's originator is this record's server
    pub orig_is_server: Option<bool>,
}

/// Completeness bits of a packet that does not open a conversation (Wireshark 4.0).
pub fn ordinary_bits(flags: u16, seglen: u32) -> u8 {
    let mut bits = 0;
    let syn_ack = flags & (SYN | ACK);
    if syn_ack == SYN | ACK {
        bits |= C_SYNACK;
    } else if syn_ack == ACK {
        bits |= if seglen > 0 { C_DATA } else { C_ACK };
    }
    if flags & (FIN | ACK) == FIN | ACK {
        bits |= C_FIN;
    }
    if flags & RST != 0 {
        bits |= C_RST;
    }
    bits
}

/// Address bytes as text, as Python's `socket.inet_ntop` (glibc) writes them.
pub fn ip_text(ip: &[u8; 16], version: u8) -> String {
    if version == 4 {
        return ipv4_text([ip[0], ip[1], ip[2], ip[3]]);
    }
    // glibc writes "::a.b.c.d" for an IPv4-compatible address (the longest zero run is
    // the first 6 words) and "::ffff:a.b.c.d" for a mapped one; Rust only the latter.
    if ip[..12].iter().all(|&b| b == 0) && (ip[12] != 0 || ip[13] != 0) {
        return format!("::{}.{}.{}.{}", ip[12], ip[13], ip[14], ip[15]);
    }
    Ipv6Addr::from(*ip).to_string()
}

/// Dotted-quad text of an IPv4 address (`Ipv4Addr`'s `to_string`, written directly: its
/// formatting machinery was ~3 % of a packet worker's HTTP analysis, a text per
/// connection and record).
fn ipv4_text(a: [u8; 4]) -> String {
    let mut s = String::with_capacity(15);
    for (i, b) in a.into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if b >= 100 {
            s.push(char::from(b'0' + b / 100));
        }
        if b >= 10 {
            s.push(char::from(b'0' + b / 10 % 10));
        }
        s.push(char::from(b'0' + b % 10));
    }
    s
}

/// Stable connection id: blake2b (8-byte digest) of the endpoints and the start time, as
/// `processors/tcp_connection.py` `connection_id` (the same capture gives the same ids).
pub fn connection_id(client_ip: &str, client_port: u16, server_ip: &str, server_port: u16, start_ts_us: i64) -> String {
    let text = format!("{client_ip}|{client_port}|{server_ip}|{server_port}|{start_ts_us}");
    let mut out = [0u8; 8];
    if let Ok(mut h) = Blake2bVar::new(8) {
        h.update(text.as_bytes());
        let _ = h.finalize_variable(&mut out);
    }
    let mut s = String::with_capacity(16);
    for b in out {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The band of a retransmission rate (processors/findings.py `health_band`).
pub fn health_band(rate: f64) -> &'static str {
    if rate < 0.01 {
        "healthy"
    } else if rate < 0.05 {
        "degraded"
    } else {
        "severe"
    }
}

impl Connection {
    pub fn new(version: u8, src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, ts: i64) -> Self {
        Connection {
            version, flows: [Flow::new(src, sport), Flow::new(dst, dport)], first_ts: ts, last_ts: ts,
            completeness: 0, first_bits: 0, ts_mru_syn: 0, ts_first_rtt: 0, syn_sender: None,
            synack_sender: None, counts: [0; 10], rtt_n: 0, rtt_sum: 0, rtt_sumsq: 0, rtt_min: None,
            rtt_max: None, closed_ts: None, rst_seen: false, rst_after_fins: false, interim_emitted: 0,
            zeek: Zeek::default(),
        }
    }

    /// Analyse one packet sent by flow `d` (0 or 1); return its analysis flags.
    #[allow(clippy::too_many_arguments)]
    pub fn on_packet(&mut self, d: usize, ts: i64, seq: u32, ack: u32, seglen: u32, flags: u16,
                     window: u16, wscale: i8, is_new: bool) -> u32 {
        let d = d.min(1);
        let ports = [self.flows[0].port, self.flows[1].port];
        // Zeek's view; a payload the capture (or our snap length) cut short still counts
        // as seen: its bytes were on the wire, and are no gap (docs/zeek.md)
        self.zeek.packet(d, ports, seq, ack, seglen, true, flags, window);
        let [f0, f1] = &mut self.flows;
        let (fwd, rev) = if d == 0 { (f0, f1) } else { (f1, f0) };
        self.last_ts = ts;
        let syn_ack = flags & (SYN | ACK);
        let window = u32::from(window);

        // --- tcp.completeness (dissect_tcp); the first packet only counts a pure SYN ---
        if is_new {
            self.completeness = if syn_ack == SYN { C_SYN | if seglen > 0 { C_DATA } else { 0 } } else { 0 };
            // Wireshark's 2nd pass adds the 1st packet's ordinary bits too (see lifecycle).
            self.first_bits = ordinary_bits(flags, seglen);
        } else {
            self.completeness |= ordinary_bits(flags, seglen);
        }

        // --- tcp_analyze_sequence_number ---
        let mut ta = 0u32;
        if !fwd.base_seq_set {
            fwd.base_seq = if flags & SYN != 0 { seq } else { seq.wrapping_sub(1) };
            fwd.base_seq_set = true;
        }
        if !rev.base_seq_set && flags & ACK != 0 {
            rev.base_seq = ack.wrapping_sub(1);
            rev.base_seq_set = true;
        }

        let nextseq = fwd.nextseq;
        let no_sfr = flags & (SYN | FIN | RST) == 0;
        if seglen == 1 && seq == nextseq && rev.window == 0 {
            ta = A_ZERO_WINDOW_PROBE;
        } else {
            if window == 0 && no_sfr {
                ta |= A_ZERO_WINDOW;
            }
            if nextseq != 0 && gt_seq(seq, nextseq) && flags & RST == 0 {
                ta |= A_LOST_PACKET;
            }
            if seglen <= 1 && seq == nextseq.wrapping_sub(1) && no_sfr {
                ta |= A_KEEP_ALIVE;
            }
            if seglen == 0 && no_sfr && seq == nextseq && ack == fwd.lastack && window != 0 && window != fwd.window {
                ta |= A_WINDOW_UPDATE;
            }
            if seglen > 0 && rev.win_scale != WS_UNKNOWN && no_sfr {
                let shift = if rev.is_first_ack || rev.win_scale == WS_NONE { 0 } else { rev.win_scale.clamp(0, 31) as u32 };
                let scaled = ((u64::from(rev.window) << shift) & 0xFFFF_FFFF) as u32;
                if seq.wrapping_add(seglen) == rev.lastack.wrapping_add(scaled) {
                    ta |= A_WINDOW_FULL;
                }
            }
            if seglen == 0 && no_sfr && window == fwd.window && seq == nextseq && ack == fwd.lastack {
                if window != 0 && rev.lastsegmentflags & A_KEEP_ALIVE != 0 {
                    ta |= A_KEEP_ALIVE_ACK;
                } else if window == 0 && rev.lastsegmentflags & A_ZERO_WINDOW_PROBE != 0 {
                    ta |= A_ZERO_WINDOW_PROBE_ACK;
                } else if window != 0 {
                    fwd.dupacknum = if fwd.dupacknum == u32::MAX { 1 } else { fwd.dupacknum + 1 };
                    ta |= A_DUPLICATE_ACK;
                }
            }
        }

        // finished_fwd: ACK bookkeeping
        if ack != fwd.lastack {
            fwd.dupacknum = 0;
        }
        if rev.maxseqtobeacked != 0 && gt_seq(ack, rev.maxseqtobeacked) && flags & ACK != 0 {
            if rev.maxseqtobeacked > rev.nextseq {
                // plain unsigned compare, as in Wireshark
                rev.maxseqtobeacked = rev.nextseq;
                ta |= A_ACK_LOST_PACKET;
            } else {
                if rev.dupacknum == 0 {
                    ta |= A_ACK_LOST_PACKET;
                }
                rev.dupacknum = u32::MAX;
            }
        }

        // retransmission family
        if (seglen > 0 || flags & (SYN | FIN) != 0) && ta & A_KEEP_ALIVE == 0 {
            let mut seq_not_advanced = nextseq != 0 && gt_seq(nextseq, seq);
            if seglen > 1 && nextseq.wrapping_sub(1) == seq {
                seq_not_advanced = false;
            }
            let behind_ack = seq.wrapping_add(seglen).wrapping_sub(rev.lastack); // LE_SEQ(seq + len, peer's ack)
            if seglen > 0 && rev.lastack != 0 && (behind_ack == 0 || behind_ack >= HALF) {
                ta |= A_SPURIOUS_RETRANSMISSION;
            } else if seq_not_advanced {
                let since_ack = ts.saturating_sub(rev.lastacktime);
                if rev.dupacknum >= 2 && rev.lastack == seq && (0..20_000).contains(&since_ack) {
                    ta |= A_FAST_RETRANSMISSION;
                } else {
                    let thres = if self.ts_first_rtt != 0 { self.ts_first_rtt } else { 3_000 };
                    let since_next = ts.saturating_sub(fwd.nextseqtime);
                    let syn_fin = u32::from(flags & (SYN | FIN) != 0);
                    if 0 <= since_next && since_next < thres && nextseq != seq.wrapping_add(seglen).wrapping_add(syn_fin) {
                        ta |= A_OUT_OF_ORDER;
                    } else {
                        ta |= A_RETRANSMISSION;
                    }
                }
            }
        }

        // updates after classification
        let mut end = seq.wrapping_add(seglen);
        if seglen > 0 || flags & (SYN | FIN) != 0 {
            if flags & (SYN | FIN) != 0 {
                end = end.wrapping_add(1);
            }
            if fwd.segments.len() < MAX_UNACKED_SEGMENTS {
                fwd.segments.push(Seg { seq, end, ts });
            }
        }
        if (nextseq == 0 || gt_seq(end, nextseq)) && ta & A_ZERO_WINDOW_PROBE == 0 {
            fwd.nextseq = end;
            fwd.nextseqtime = ts;
        }
        if (seq == fwd.maxseqtobeacked || fwd.maxseqtobeacked == 0) && ta & A_ZERO_WINDOW_PROBE == 0 {
            fwd.maxseqtobeacked = fwd.nextseq;
        }
        fwd.window = window;
        fwd.lastack = ack;
        fwd.lastacktime = ts;
        fwd.lastsegmentflags = ta;

        // ACKed segments -> ACK RTT (only an exact match of a segment end gives a sample;
        // the oldest exact match wins, as in Wireshark, which walks newest to oldest)
        if !rev.segments.is_empty() {
            let mut rtt: Option<i64> = None;
            rev.segments.retain_mut(|s| {
                if ack == s.end {
                    if rtt.is_none() {
                        rtt = Some(ts.saturating_sub(s.ts));
                    }
                    return false;
                }
                if gt_seq(s.end, ack) {
                    // LT_SEQ(ack, segment end): still (partly) outstanding
                    if gt_seq(ack, s.seq) {
                        s.seq = ack; // partial ack
                    }
                    return true;
                }
                false // ack beyond the segment end: acked without a sample
            });
            if rev.segments.is_empty() {
                rev.segments = Vec::new(); // give the memory back (100k idle connections)
            }
            if let Some(rtt) = rtt.filter(|&r| r != 0) {
                // Wireshark does not show a zero ack_rtt
                self.rtt_n += 1;
                self.rtt_sum = self.rtt_sum.saturating_add(rtt);
                self.rtt_sumsq = self.rtt_sumsq.saturating_add(i128::from(rtt) * i128::from(rtt));
                self.rtt_min = Some(self.rtt_min.map_or(rtt, |m| m.min(rtt)));
                self.rtt_max = Some(self.rtt_max.map_or(rtt, |m| m.max(rtt)));
            }
        }

        // --- after the analysis in dissect_tcp ---
        if flags & SYN != 0 {
            if syn_ack == SYN {
                self.ts_mru_syn = ts;
                if self.syn_sender.is_none() {
                    self.syn_sender = Some(d as u8);
                }
            } else if self.synack_sender.is_none() {
                self.synack_sender = Some(d as u8);
            }
            fwd.is_first_ack = true;
        }
        if syn_ack == ACK {
            if self.ts_mru_syn != 0 && self.ts_first_rtt == 0 {
                self.ts_first_rtt = ts.saturating_sub(self.ts_mru_syn);
            }
            fwd.is_first_ack = false;
        }
        if wscale >= 0 {
            fwd.win_scale = wscale;
        }
        if flags & SYN != 0 {
            // verify_tcp_window_scaling: scaling only if both SYNs carried the option
            if fwd.win_scale == WS_UNKNOWN {
                fwd.win_scale = WS_NONE;
                rev.win_scale = WS_NONE;
            } else if syn_ack == SYN | ACK && rev.win_scale == WS_NONE {
                fwd.win_scale = WS_NONE;
            }
        }

        // --- our counters ---
        fwd.packets += 1;
        if seglen > 0 {
            fwd.bytes += u64::from(seglen);
            fwd.data_packets += 1;
            if fwd.first_payload_ts.is_none() {
                fwd.first_payload_ts = Some(ts);
            }
            if ta & ANY_RETRANSMISSION != 0 {
                fwd.retrans_data_packets += 1;
            } else {
                fwd.goodput += u64::from(seglen);
            }
        }
        // tcp.window_size: SYN windows are never scaled
        let win = if flags & SYN == 0 && fwd.win_scale >= 0 {
            u64::from(window) << fwd.win_scale.min(32) as u32
        } else {
            u64::from(window)
        };
        fwd.win_min = Some(fwd.win_min.map_or(win, |m| m.min(win)));
        fwd.win_sum = fwd.win_sum.saturating_add(win);
        fwd.win_count += 1;
        if flags & FIN != 0 {
            fwd.fin = true;
        }
        if flags & RST != 0 && !self.rst_seen {
            self.rst_seen = true;
            self.rst_after_fins = fwd.fin && rev.fin;
        }
        if (self.rst_seen || (fwd.fin && rev.fin)) && self.closed_ts.is_none() {
            self.closed_ts = Some(ts);
        }
        if ta != 0 {
            let c = &mut self.counts;
            if ta & ANY_RETRANSMISSION != 0 {
                c[0] += 1;
                if ta & A_FAST_RETRANSMISSION != 0 {
                    c[1] += 1;
                }
                if ta & A_SPURIOUS_RETRANSMISSION != 0 {
                    c[2] += 1;
                }
            }
            for (i, bit) in [A_DUPLICATE_ACK, A_OUT_OF_ORDER, A_LOST_PACKET, A_ZERO_WINDOW,
                             A_ZERO_WINDOW_PROBE, A_WINDOW_FULL, A_KEEP_ALIVE].into_iter().enumerate() {
                if ta & bit != 0 {
                    c[3 + i] += 1;
                }
            }
        }
        ta
    }

    /// For a pure SYN from flow `d`: Some(true) if it repeats the known ISN (same
    /// conversation), Some(false) if the ISN differs (a new conversation on the same
    /// ports), None if that side's base sequence number is not known yet.
    pub fn is_syn_retransmission(&mut self, d: usize, seq: u32) -> Option<bool> {
        let fwd = &mut self.flows[d.min(1)];
        if !fwd.base_seq_set {
            return None;
        }
        if seq == fwd.base_seq {
            fwd.nextseq = fwd.maxseqtobeacked; // Wireshark restores nextseq (its issue 17616)
            return Some(true);
        }
        Some(false)
    }

    /// `tcp.completeness` as Wireshark shows it on the last frame (two-pass, as the GUI).
    pub fn lifecycle(&self) -> u8 {
        if self.flows[0].packets + self.flows[1].packets > 1 {
            self.completeness | self.first_bits
        } else {
            self.completeness
        }
    }

    /// Index of the client flow.
    pub fn client(&self) -> usize {
        if let Some(s) = self.syn_sender {
            return usize::from(s.min(1));
        }
        if let Some(s) = self.synack_sender {
            return 1 - usize::from(s.min(1));
        }
        // Without a handshake: a well-known port is the server's; otherwise the side
        // that sent the first packet we saw is the client.
        let (a, b) = (&self.flows[0], &self.flows[1]);
        if a.port < 1024 && 1024 <= b.port {
            1
        } else {
            0
        }
    }

    /// The record's `state`, from what was seen and why the record is written.
    pub fn state(&self, ended_by: EndedBy) -> &'static str {
        let life = self.lifecycle();
        if self.rst_seen {
            if life & C_SYN != 0 && life & C_SYNACK == 0 && life & C_DATA == 0 {
                return "refused";
            }
            return if self.rst_after_fins { "complete" } else { "reset" };
        }
        if self.flows[0].fin && self.flows[1].fin {
            return "complete";
        }
        if life & C_SYN != 0 && life & C_SYNACK == 0 && life & (C_ACK | C_DATA | C_FIN) == 0 {
            return "incomplete_handshake";
        }
        if life & C_SYNACK != 0 && life & (C_ACK | C_DATA | C_FIN) == 0 {
            return "half_open";
        }
        match ended_by {
            EndedBy::Open => "open",
            EndedBy::Timeout => "timeout",
            _ => "open_at_end",
        }
    }

    /// The id this connection's record carries (its L7 records too).
    pub fn connection_id(&self) -> String {
        let ci = self.client();
        let (c, s) = (&self.flows[ci], &self.flows[1 - ci]);
        connection_id(&ip_text(&c.ip, self.version), c.port, &ip_text(&s.ip, self.version), s.port, self.first_ts)
    }

    /// The connection's Community ID v1 with `seed` (it has no direction: the same for
    /// either side as client).
    pub fn community_id(&self, seed: u16) -> String {
        let [a, b] = &self.flows;
        community_id::of_flow(seed, self.version, &a.ip, a.port, &b.ip, b.port, community_id::PROTO_TCP)
    }

    /// The `wire.connections` record's values (`seed`: of its Community ID).
    pub fn record(&self, ended_by: EndedBy, final_: bool, seed: u16) -> Record {
        let ci = self.client();
        let (c, s) = (&self.flows[ci], &self.flows[1 - ci]);
        let client_ip = ip_text(&c.ip, self.version);
        let server_ip = ip_text(&s.ip, self.version);
        let life = self.lifecycle();
        let data_packets = c.data_packets + s.data_packets;
        let retrans = c.retrans_data_packets + s.retrans_data_packets;
        let rate = if data_packets > 0 { retrans as f64 / data_packets as f64 } else { 0.0 };
        let (rtt_avg, jitter) = if self.rtt_n > 0 {
            let n = self.rtt_n as f64;
            let avg = self.rtt_sum as f64 / n;
            let var = self.rtt_sumsq as f64 / n - avg * avg;
            (Some(avg), Some(if var > 0.0 { var.sqrt() } else { 0.0 }))
        } else {
            (None, None)
        };
        let ttfb = match (c.first_payload_ts, s.first_payload_ts) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let avg = |f: &Flow| if f.win_count > 0 { Some(f.win_sum as f64 / f.win_count as f64) } else { None };
        let scale = |f: &Flow| if f.win_scale >= 0 { Some(f.win_scale) } else { None };
        let mut counts = [0u64; 10];
        counts.copy_from_slice(&self.counts);
        let z = &self.zeek;
        Record {
            connection_id: connection_id(&client_ip, c.port, &server_ip, s.port, self.first_ts),
            community_id: self.community_id(seed),
            client_port: c.port,
            server_port: s.port,
            client_ip,
            server_ip,
            ip_version: self.version,
            start_ts_us: self.first_ts,
            end_ts_us: self.last_ts,
            lifecycle: life,
            state: self.state(ended_by),
            final_,
            handshake_seen: life & (C_SYN | C_SYNACK | C_ACK) == (C_SYN | C_SYNACK | C_ACK),
            handshake_rtt_us: if self.ts_first_rtt != 0 { Some(self.ts_first_rtt) } else { None },
            packets: [c.packets, s.packets],
            bytes: [c.bytes, s.bytes],
            goodput: [c.goodput, s.goodput],
            counts,
            data_packets,
            retransmission_rate: rate,
            health: health_band(rate),
            rtt_samples: self.rtt_n,
            rtt_min_us: self.rtt_min,
            rtt_max_us: self.rtt_max,
            rtt_avg_us: rtt_avg,
            rtt_jitter_us: jitter,
            ttfb_us: ttfb,
            min_window: [c.win_min, s.win_min],
            avg_window: [avg(c), avg(s)],
            window_scale: [scale(c), scale(s)],
            conn_state: z.known.then(|| z.conn_state()),
            history: (z.known && z.history_len > 0).then(|| z.history_str().to_string()),
            missed_bytes: z.known.then_some(z.missed_bytes),
            orig_is_server: z.known.then_some(usize::from(z.orig) != ci),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn ipv4_text_is_what_ipv4addr_writes() {
        let mut rng = crate::test_rng::XorShift(0x9E37_79B9_7F4A_7C15);
        let edges = [0u8, 1, 9, 10, 11, 99, 100, 101, 199, 200, 249, 250, 255];
        for a in edges {
            for b in edges {
                let ip = [a, b, b, a];
                assert_eq!(ipv4_text(ip), Ipv4Addr::from(ip).to_string());
            }
        }
        for _ in 0..100_000 {
            let ip = (rng.below(1 << 32) as u32).to_be_bytes();
            assert_eq!(ipv4_text(ip), Ipv4Addr::from(ip).to_string());
        }
    }

    fn v4(a: u8) -> [u8; 16] {
        let mut ip = [0u8; 16];
        ip[..4].copy_from_slice(&[10, 0, 0, a]);
        ip
    }

    #[test]
    fn ids_are_pythons() {
        // hashlib.blake2b(b"10.0.0.1|40000|10.0.0.2|80|1000", digest_size=8).hexdigest()
        assert_eq!(connection_id("10.0.0.1", 40000, "10.0.0.2", 80, 1000), "17bf937638105b6c");
        assert_eq!(connection_id("a", 1, "b", 2, 3).len(), 16);
    }

    #[test]
    fn addresses_as_inet_ntop() {
        assert_eq!(ip_text(&v4(1), 4), "10.0.0.1");
        let mut six = [0u8; 16];
        six[15] = 1;
        assert_eq!(ip_text(&six, 6), "::1");
        six[12] = 1;
        assert_eq!(ip_text(&six, 6), "::1.0.0.1");
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12] = 10;
        assert_eq!(ip_text(&mapped, 6), "::ffff:10.0.0.0");
        six = [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(ip_text(&six, 6), "2001:db8::1");
    }

    #[test]
    fn a_handshake_and_a_retransmission() {
        let mut c = Connection::new(4, v4(1), 40000, v4(2), 80, 0);
        c.on_packet(0, 1, 100, 0, 0, SYN, 65535, 7, true);
        c.on_packet(1, 1000, 500, 101, 0, SYN | ACK, 65535, 7, false);
        c.on_packet(0, 2001, 101, 501, 0, ACK, 512, -1, false);
        c.on_packet(0, 3000, 101, 501, 10, ACK, 512, -1, false);
        let ta = c.on_packet(0, 90_000, 101, 501, 10, ACK, 512, -1, false);
        assert_ne!(ta & A_RETRANSMISSION, 0);
        c.on_packet(1, 91_000, 501, 111, 0, ACK, 512, -1, false);
        let r = c.record(EndedBy::EndOfInput, true, 0);
        assert_eq!(r.client_port, 40000);
        assert!(r.handshake_seen);
        assert_eq!(r.handshake_rtt_us, Some(2000));
        assert_eq!(r.counts[0], 1);
        assert_eq!(r.data_packets, 2);
        assert_eq!(r.rtt_samples, 3);
        assert_eq!(r.state, "open_at_end");
        assert_eq!(r.window_scale, [Some(7), Some(7)]);
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let mut c = Connection::new(6, [0xff; 16], 0, [0; 16], 65535, i64::MAX);
        for (i, flags) in [0u16, 0xffff, SYN, SYN | ACK, FIN | ACK, RST].into_iter().enumerate() {
            c.on_packet(i % 2, if i % 2 == 0 { i64::MIN } else { i64::MAX }, u32::MAX, 0, u32::MAX, flags, 0, 127, i == 0);
        }
        let _ = c.record(EndedBy::Timeout, false, 0);
        let _ = c.connection_id();
    }
}
