//! Zeek's view of a TCP connection, for the `conn.log` fields of a `wire.connections`
//! record: `conn_state`, `history` and `missed_bytes`, and which side Zeek calls the
//! originator.
//!
//! The reference is Zeek's TCP analysis (`TCPSessionAdapter::Process` and its
//! `UpdateStateMachine`, `TCP_Endpoint`'s history helpers, `TCP_Reassembler`'s gaps,
//! `TCPAnalyzer::WantConnection` and `conn/main.zeek`'s `conn_state` function), written
//! again here per packet: one endpoint state machine per side, the history letters with
//! Zeek's once-per-direction and log-scale rules, and the content gaps an ACK reveals.
//! docs/zeek.md has the rules in prose and where this differs from Zeek.
//!
//! Cost per packet: a few compares and stores on two fixed-size endpoints; a history
//! letter is a byte pushed into an inline buffer (no allocation per connection).

use super::connection::{ACK, FIN, RST, SYN};

// Zeek's EndpointState, in Zeek's order.
pub const INACTIVE: u8 = 0;
pub const SYN_SENT: u8 = 1;
pub const SYN_ACK_SENT: u8 = 2;
pub const PARTIAL: u8 = 3;
pub const ESTABLISHED: u8 = 4;
pub const CLOSED: u8 = 5;
pub const RESET: u8 = 6;

/// Zeek's TOO_LARGE_SEQ_DELTA: a SYN or RST this far from the last sequence number is
/// not trusted.
const TOO_LARGE_SEQ_DELTA: i32 = 1_048_576;
/// Letters kept per connection; further ones are dropped (Zeek has no limit, but a
/// connection's state must stay bounded). A normal history is under 15 letters.
pub const MAX_HISTORY: usize = 32;
/// Out-of-order blocks remembered per direction for the gap accounting; a block that
/// does not fit is forgotten (its bytes then count as missed if an ACK passes them).
pub const MAX_BLOCKS: usize = 4;

// History masks (Zeek's HIST_*), for the originator; the responder's are << 16.
const H_SYN: u32 = 0x1;
const H_FIN: u32 = 0x2;
const H_RST: u32 = 0x4;
const H_FIN_RST: u32 = 0x8;
const H_DATA: u32 = 0x10;
const H_ACK: u32 = 0x20;
const H_MULTI: u32 = 0x40;

// Log-scale counters of an endpoint (Zeek's rxmt, win0, gap counters).
const SC_RXMT: usize = 0;
const SC_WIN0: usize = 1;
const SC_GAP: usize = 2;

/// TCP ports Zeek's default scripts register for their analyzers (`likely_server_ports`):
/// a connection whose first packet is not a pure SYN and comes from one of these is
/// taken as coming from the responder. Sorted (binary search).
pub const LIKELY_SERVER_PORTS: [u16; 47] = [
    21, 22, 23, 25, 53, 80, 81, 88, 110, 135, 137, 139, 143, 389, 443, 445, 502, 512, 513, 514,
    563, 585, 587, 614, 631, 636, 989, 990, 992, 993, 995, 1080, 1434, 2811, 3128, 3306, 3389,
    5060, 5222, 5223, 5269, 5432, 5900, 6379, 8000, 8080, 8888,
];

pub fn likely_server_port(p: u16) -> bool {
    LIKELY_SERVER_PORTS.binary_search(&p).is_ok()
}

#[inline]
fn seq_delta(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

/// One side as Zeek's `TCP_Endpoint` sees it (the fields conn.log depends on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    pub state: u8,
    pub prev_state: u8,
    pub start_seq: u32,
    pub last_seq: u32,
    /// highest sequence number the peer acknowledged of this side's data
    pub ack_seq: u32,
    pub fin_cnt: u32,
    /// sequence number one past this side's FIN
    pub fin_seq: u32,
    /// relative sequence numbers of the last SYN, FIN and RST (Zeek's hist_last_*)
    pub hist_last: [u32; 3],
    /// (count, next threshold) of retransmissions, zero windows and gaps
    pub scaled: [(u32, u32); 3],
    /// the reassembly's next expected sequence number (Zeek's last_reassem_seq)
    pub next: u32,
    /// data seen above `next`: (start, end) sequence ranges, unordered
    pub blocks: [(u32, u32); MAX_BLOCKS],
    pub n_blocks: u8,
}

impl Endpoint {
    fn new() -> Self {
        Endpoint { scaled: [(0, 1); 3], ..Endpoint::default() }
    }

    fn set_state(&mut self, s: u8) {
        if s != self.state {
            self.prev_state = self.state;
            self.state = s;
        }
    }

    /// Zeek's InitStartSeq + InitAckSeq + InitLastSeq; the reassembly starts after the
    /// (real or assumed) SYN.
    fn init_seqs(&mut self, start: u32, last: u32) {
        self.start_seq = start;
        self.ack_seq = start;
        self.last_seq = last;
        self.next = start.wrapping_add(1);
        self.n_blocks = 0;
    }

    fn no_data_acked(&self) -> bool {
        self.ack_seq == self.start_seq || self.ack_seq == self.start_seq.wrapping_add(1)
    }

    fn clean(&self) -> bool {
        self.state == ESTABLISHED || (self.state == CLOSED && self.prev_state == ESTABLISHED)
    }

    /// Data [seq, seq + len) seen (Zeek's reassembler's NewBlock, as far as the gaps go).
    fn data(&mut self, seq: u32, len: u32) {
        let end = seq.wrapping_add(len);
        if seq_delta(end, self.next) <= 0 {
            return; // old data
        }
        if seq_delta(seq, self.next) <= 0 {
            self.next = end;
            self.absorb();
        } else if usize::from(self.n_blocks) < MAX_BLOCKS {
            self.blocks[usize::from(self.n_blocks)] = (seq, end);
            self.n_blocks += 1;
        }
    }

    /// Blocks that now start at or below `next` extend it.
    fn absorb(&mut self) {
        let mut i = 0;
        while i < usize::from(self.n_blocks) {
            let (s, e) = self.blocks[i];
            if seq_delta(s, self.next) <= 0 {
                if seq_delta(e, self.next) > 0 {
                    self.next = e;
                }
                self.n_blocks -= 1;
                self.blocks[i] = self.blocks[usize::from(self.n_blocks)];
                i = 0; // `next` moved: look again from the start
            } else {
                i += 1;
            }
        }
    }

    /// The lowest block starting below `upto`, removed.
    fn take_block_below(&mut self, upto: u32) -> Option<(u32, u32)> {
        let mut best: Option<usize> = None;
        for i in 0..usize::from(self.n_blocks) {
            let s = self.blocks[i].0;
            if seq_delta(s, upto) < 0 && best.is_none_or(|b| seq_delta(s, self.blocks[b].0) < 0) {
                best = Some(i);
            }
        }
        let b = best?;
        let out = self.blocks[b];
        self.n_blocks -= 1;
        self.blocks[b] = self.blocks[usize::from(self.n_blocks)];
        Some(out)
    }
}

/// Zeek's state of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zeek {
    /// false after a restore from a checkpoint written before this existed: the
    /// record's Zeek fields are then null
    pub known: bool,
    pub started: bool,
    /// index of the flow (the connection's `flows`) Zeek calls the originator
    pub orig: u8,
    /// by flow index
    pub ep: [Endpoint; 2],
    /// Zeek's hist_seen (by role: originator low 16 bits, responder high)
    pub hist_seen: u32,
    pub history: [u8; MAX_HISTORY],
    pub history_len: u8,
    pub missed_bytes: u64,
}

impl Default for Zeek {
    fn default() -> Self {
        Zeek {
            known: true, started: false, orig: 0, ep: [Endpoint::new(), Endpoint::new()], hist_seen: 0,
            history: [0; MAX_HISTORY], history_len: 0, missed_bytes: 0,
        }
    }
}

impl Zeek {
    /// Zeek's state is unknown (restored from an older checkpoint).
    pub fn unknown() -> Self {
        Zeek { known: false, ..Zeek::default() }
    }

    fn add(&mut self, c: u8) {
        let n = usize::from(self.history_len);
        if n < MAX_HISTORY {
            self.history[n] = c;
            self.history_len += 1;
        }
    }

    fn is_orig(&self, i: usize) -> bool {
        i == usize::from(self.orig)
    }

    /// Zeek's CheckHistory: the letter once per role; true if it was seen before.
    fn check(&mut self, i: usize, mask: u32, code: u8) -> bool {
        let (mask, code) = if self.is_orig(i) { (mask, code) } else { (mask << 16, code.to_ascii_lowercase()) };
        if self.hist_seen & mask == 0 {
            self.hist_seen |= mask;
            self.add(code);
            false
        } else {
            true
        }
    }

    /// Zeek's AddHistory for endpoint `i`.
    fn add_for(&mut self, i: usize, code: u8) {
        let code = if self.is_orig(i) { code } else { code.to_ascii_lowercase() };
        self.add(code);
    }

    /// Zeek's ScaledHistoryEntry (base 10): the letter at the 1st, 10th, 100th, ...
    fn scaled(&mut self, i: usize, which: usize, code: u8) {
        let (count, thresh) = &mut self.ep[i].scaled[which];
        *count = count.wrapping_add(1);
        if *count == *thresh {
            match thresh.checked_mul(10) {
                Some(t) => *thresh = t,
                None => *count = 0, // as Zeek on wrap-around: counter reset, threshold kept
            }
            self.add_for(i, code);
        }
    }

    fn flip(&mut self) {
        self.orig = 1 - self.orig;
        self.add(b'^');
    }

    fn update_history(&mut self, i: usize, flags: u16, rel_seq: u32, len: u32) {
        let (syn, fin, rst) = (flags & SYN != 0, flags & FIN != 0, flags & RST != 0);
        let bits = u8::from(syn) + u8::from(fin) + u8::from(rst);
        if bits > 1 {
            if fin && rst {
                self.check(i, H_FIN_RST, b'I');
            } else {
                self.check(i, H_MULTI, b'Q');
            }
        } else if bits == 1 {
            if syn {
                let code = if flags & ACK != 0 { b'H' } else { b'S' };
                if self.check(i, H_SYN, code) && rel_seq != self.ep[i].hist_last[0] {
                    self.add_for(i, code);
                }
                self.ep[i].hist_last[0] = rel_seq;
            }
            if fin {
                // a FIN's sequence number is after its data
                let at = rel_seq.wrapping_add(len);
                if self.check(i, H_FIN, b'F') && at != self.ep[i].hist_last[1] {
                    self.add_for(i, b'F');
                }
                self.ep[i].hist_last[1] = at;
            }
            if rst {
                if self.check(i, H_RST, b'R') && rel_seq != self.ep[i].hist_last[2] {
                    self.add_for(i, b'R');
                }
                self.ep[i].hist_last[2] = rel_seq;
            }
        } else if len > 0 {
            self.check(i, H_DATA, b'D');
        } else if flags & ACK != 0 {
            self.check(i, H_ACK, b'A');
        }
    }

    /// Analyse one packet sent by flow `i`; `ports`: the flows' ports; `captured`: all of
    /// its payload was captured (Zeek's reassembler skips a truncated segment).
    #[allow(clippy::too_many_arguments)]
    pub fn packet(&mut self, i: usize, ports: [u16; 2], seq: u32, ack: u32, len: u32, captured: bool, flags: u16,
                  window: u16) {
        let i = i.min(1);
        let p = 1 - i;
        let (syn, fin, rst, ackf) = (flags & SYN != 0, flags & FIN != 0, flags & RST != 0, flags & ACK != 0);
        if !self.started {
            // TCPAnalyzer::WantConnection: the sender of the first packet is the
            // originator, unless it does not open with a pure SYN and its port is a
            // likely server port (ties: not for a SYN-ACK, and only toward a higher port).
            self.started = true;
            self.orig = i as u8;
            let (src, dst) = (ports[i], ports[p]);
            if (!syn || ackf) && likely_server_port(src) {
                let flip = if likely_server_port(dst) { !syn && src < dst } else { true };
                if flip {
                    self.flip();
                }
            }
        }
        let mut seg = len;
        if syn {
            seg = seg.wrapping_add(1);
        }
        if fin {
            seg = seg.wrapping_add(1);
        }
        if rst {
            seg = seg.wrapping_sub(len); // a RST's data is not part of the stream
        }
        let seq_end = seq.wrapping_add(seg);

        // init_endpoint
        let e = &mut self.ep[i];
        match e.state {
            INACTIVE => {
                if syn {
                    e.init_seqs(seq, seq_end);
                } else {
                    // a partial connection: numbered as if after a SYN; its first packet
                    // is not a duplicate
                    e.init_seqs(seq.wrapping_sub(1), seq);
                }
            }
            SYN_SENT | SYN_ACK_SENT if syn && seq != e.start_seq => e.init_seqs(seq, seq_end),
            ESTABLISHED | PARTIAL if syn => e.init_seqs(seq, seq_end),
            RESET if syn && e.prev_state == INACTIVE => e.init_seqs(seq, seq_end),
            _ => {}
        }
        let rel = seq_delta(seq, e.start_seq);
        let underflow = rel < 0;
        self.update_history(i, flags, rel as u32, len);

        // update_window: a zero window, unless with or after a RST or after the peer's FIN
        if window == 0 && !rst && self.ep[p].state != CLOSED && self.ep[i].state != RESET {
            self.scaled(i, SC_WIN0, b'W');
        }
        if fin {
            let e = &mut self.ep[i];
            e.fin_cnt = e.fin_cnt.saturating_add(1);
            e.fin_seq = seq_end;
        }

        // the ACK: the peer's numbering starts from it if the peer is not known yet
        let mut acked = None;
        if ackf {
            let peer = &mut self.ep[p];
            if peer.state == INACTIVE {
                let base = ack.wrapping_sub(1);
                peer.init_seqs(base, base);
            } else if seq_delta(ack, peer.start_seq) >= 0 {
                let delta = seq_delta(ack, peer.ack_seq);
                // an ACK of 0 far ahead is more likely broken than a wrap
                if !rst && (ack != 0 || delta <= TOO_LARGE_SEQ_DELTA) && delta > 0 {
                    peer.ack_seq = ack; // RSTs' acks are not trusted
                }
                acked = Some(ack);
            }
        }

        // update_last_seq
        let e = &mut self.ep[i];
        let delta_last = seq_delta(seq_end, e.last_seq);
        if (syn || rst) && !(-TOO_LARGE_SEQ_DELTA..=TOO_LARGE_SEQ_DELTA).contains(&delta_last) {
            // an outlandish SYN or RST sequence number: not trusted
        } else if fin && e.last_seq == e.start_seq.wrapping_add(1) {
            e.last_seq = seq_end;
        } else if e.state == RESET {
            // nothing after a RST is trusted
        } else if delta_last > 0 {
            e.last_seq = seq_end;
        } else if len > 0 {
            self.scaled(i, SC_RXMT, b'T');
        }

        self.state_machine(i, seq, len, flags);

        if let Some(a) = acked {
            self.ack_received(p, a);
        }
        if len > 0 && captured && !rst && !underflow {
            let data_seq = if syn { seq.wrapping_add(1) } else { seq };
            self.ep[i].data(data_seq, len);
        }
    }

    /// Zeek's TCP_Reassembler::AckReceived for endpoint `i`'s data: bytes the peer
    /// acknowledged that were never seen are a content gap.
    fn ack_received(&mut self, i: usize, ack: u32) {
        let e = &self.ep[i];
        let mut upto = ack;
        if e.fin_cnt > 0 && seq_delta(upto, e.fin_seq) >= 0 {
            upto = e.fin_seq.wrapping_sub(1); // the FIN's own sequence number is no data
        }
        if seq_delta(upto, e.next) <= 0 {
            return;
        }
        // gaps are reported only on an established (or cleanly closing) connection
        let report = self.ep[i].clean() && self.ep[1 - i].clean();
        loop {
            let e = &mut self.ep[i];
            let Some((s, end)) = e.take_block_below(upto) else { break };
            let gap = seq_delta(s, e.next);
            if gap > 0 {
                self.gap(i, report, gap as u32);
            }
            let e = &mut self.ep[i];
            if seq_delta(end, e.next) > 0 {
                e.next = end;
            }
        }
        let e = &mut self.ep[i];
        let gap = seq_delta(upto, e.next);
        if gap > 0 {
            e.next = upto;
            self.gap(i, report, gap as u32);
        }
    }

    fn gap(&mut self, i: usize, report: bool, len: u32) {
        if report {
            self.missed_bytes = self.missed_bytes.saturating_add(u64::from(len));
            self.scaled(i, SC_GAP, b'G');
        }
    }

    /// Zeek's UpdateStateMachine, for a packet of endpoint `i`.
    fn state_machine(&mut self, i: usize, seq: u32, len: u32, flags: u16) {
        let p = 1 - i;
        let (syn, fin, rst, ackf) = (flags & SYN != 0, flags & FIN != 0, flags & RST != 0, flags & ACK != 0);
        let is_orig = self.is_orig(i);
        match self.ep[i].state {
            INACTIVE => {
                if syn {
                    if is_orig {
                        self.ep[i].set_state(if ackf { SYN_ACK_SENT } else { SYN_SENT });
                    } else {
                        if !ackf && self.ep[p].state == SYN_ACK_SENT && seq == self.ep[i].start_seq {
                            // a SYN after the SYN-ACK that answers it: the roles flip
                            self.flip();
                            self.ep[p].set_state(ESTABLISHED);
                        }
                        if self.ep[p].state == SYN_SENT {
                            self.ep[p].set_state(ESTABLISHED);
                        }
                        self.ep[i].set_state(ESTABLISHED);
                    }
                }
                if fin {
                    self.ep[i].set_state(CLOSED);
                }
                if rst {
                    self.ep[i].set_state(RESET);
                }
                if self.ep[i].state == INACTIVE {
                    let orig = usize::from(self.orig);
                    if !is_orig && len == 0 && self.ep[orig].state == SYN_SENT {
                        // an ACK of the SYN before the SYN-ACK: not a partial connection
                    } else if ackf && self.ep[p].state == ESTABLISHED {
                        self.ep[i].set_state(ESTABLISHED); // the SYN was missed
                    } else {
                        self.ep[i].set_state(PARTIAL);
                    }
                }
            }
            SYN_SENT | SYN_ACK_SENT => {
                if fin {
                    self.ep[i].set_state(CLOSED);
                }
                if rst {
                    self.ep[i].set_state(RESET);
                }
            }
            ESTABLISHED | PARTIAL => {
                if syn && self.ep[i].state == PARTIAL && self.ep[p].state == INACTIVE && !ackf {
                    self.ep[i].set_state(SYN_SENT);
                }
                if fin && !rst {
                    self.ep[i].set_state(CLOSED);
                    if self.ep[p].state == RESET && self.ep[p].prev_state == CLOSED {
                        // the peer's FIN then RST was a normal close after all
                        self.ep[p].set_state(CLOSED);
                    }
                }
                if rst {
                    self.ep[i].set_state(RESET);
                }
            }
            // after FINs both ways a RST changes nothing
            CLOSED if rst && self.ep[p].state != CLOSED => self.ep[i].set_state(RESET),
            _ => {}
        }
    }

    /// Zeek's TCP_Endpoint::Size: payload bytes from the sequence numbers.
    fn size(&self, i: usize) -> u64 {
        let (e, peer) = (&self.ep[i], &self.ep[1 - i]);
        if e.prev_state == SYN_SENT && e.state == RESET && peer.state == INACTIVE && !e.no_data_acked() {
            return 0;
        }
        let last = i64::from(seq_delta(e.last_seq, e.start_seq)).max(0);
        let ack = i64::from(seq_delta(e.ack_seq, e.start_seq)).max(0);
        let mut size = (last.max(ack) as u64).saturating_sub(1); // the SYN
        if e.fin_cnt > 0 && size != 0 {
            size -= 1; // the FIN
        }
        size
    }

    pub fn history_str(&self) -> &str {
        std::str::from_utf8(&self.history[..usize::from(self.history_len)]).unwrap_or_default()
    }

    /// `^?S[^HAFGIQ]*R.*`, the whole history (conn/main.zeek's test for RSTOS0).
    fn syn_then_rst(&self) -> bool {
        let h = &self.history[..usize::from(self.history_len)];
        let h = h.strip_prefix(b"^").unwrap_or(h);
        let Some(rest) = h.strip_prefix(b"S") else { return false };
        for &c in rest {
            if c == b'R' {
                return true;
            }
            if b"HAFGIQ".contains(&c) {
                return false;
            }
        }
        false
    }

    /// conn/main.zeek's `conn_state` for TCP.
    pub fn conn_state(&self) -> &'static str {
        let (o, r) = (usize::from(self.orig), 1 - usize::from(self.orig));
        let (os, rs) = (self.ep[o].state, self.ep[r].state);
        let o_inactive = os == INACTIVE || os == PARTIAL;
        let r_inactive = rs == INACTIVE || rs == PARTIAL;
        if rs == RESET {
            if os == SYN_SENT || os == SYN_ACK_SENT || (os == RESET && self.size(o) == 0 && self.size(r) == 0) {
                "REJ"
            } else if o_inactive {
                "RSTRH"
            } else {
                "RSTR"
            }
        } else if os == RESET {
            if r_inactive {
                if self.syn_then_rst() { "RSTOS0" } else { "OTH" }
            } else {
                "RSTO"
            }
        } else if rs == CLOSED && os == CLOSED {
            "SF"
        } else if os == CLOSED {
            if r_inactive { "SH" } else { "S2" }
        } else if rs == CLOSED {
            if o_inactive { "SHR" } else { "S3" }
        } else if os == SYN_SENT && rs == INACTIVE {
            "S0"
        } else if os == ESTABLISHED && rs == ESTABLISHED {
            "S1"
        } else {
            "OTH"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packets as (from flow, seq, ack, len, flags); flow 0 port 40000, flow 1 port 80.
    fn run(packets: &[(usize, u32, u32, u32, u16)]) -> Zeek {
        run_ports([40000, 80], packets)
    }

    fn run_ports(ports: [u16; 2], packets: &[(usize, u32, u32, u32, u16)]) -> Zeek {
        let mut z = Zeek::default();
        for &(i, seq, ack, len, flags) in packets {
            z.packet(i, ports, seq, ack, len, true, flags, 1000);
        }
        z
    }

    fn hs() -> Vec<(usize, u32, u32, u32, u16)> {
        vec![(0, 100, 0, 0, SYN), (1, 500, 101, 0, SYN | ACK), (0, 101, 501, 0, ACK)]
    }

    #[test]
    fn normal_connection_is_sf() {
        let mut p = hs();
        p.extend([(0, 101, 501, 10, ACK), (1, 501, 111, 0, ACK), (1, 501, 111, 20, ACK), (0, 111, 521, 0, ACK | FIN),
                  (1, 521, 112, 0, ACK | FIN), (0, 112, 522, 0, ACK)]);
        let z = run(&p);
        assert_eq!(z.history_str(), "ShADadFf");
        assert_eq!(z.conn_state(), "SF");
        assert_eq!(z.missed_bytes, 0);
        assert_eq!((z.size(0), z.size(1)), (10, 20));
    }

    #[test]
    fn the_simple_states() {
        assert_eq!(run(&[(0, 100, 0, 0, SYN)]).conn_state(), "S0");
        let z = run(&[(0, 100, 0, 0, SYN), (1, 0, 101, 0, RST | ACK)]);
        assert_eq!((z.conn_state(), z.history_str()), ("REJ", "Sr"));
        assert_eq!(run(&hs()).conn_state(), "S1");
        let mut p = hs();
        p.push((0, 101, 501, 0, ACK | FIN));
        assert_eq!(run(&p).conn_state(), "S2");
        let mut p = hs();
        p.push((1, 501, 101, 0, ACK | FIN));
        assert_eq!(run(&p).conn_state(), "S3");
        let mut p = hs();
        p.push((0, 101, 501, 0, RST));
        assert_eq!(run(&p).conn_state(), "RSTO");
        let mut p = hs();
        p.push((1, 501, 101, 0, RST));
        assert_eq!(run(&p).conn_state(), "RSTR");
        let z = run(&[(0, 100, 0, 0, SYN), (0, 101, 0, 0, RST)]);
        assert_eq!((z.conn_state(), z.history_str()), ("RSTOS0", "SR"));
        let z = run(&[(0, 100, 0, 0, SYN), (0, 101, 0, 0, FIN)]);
        assert_eq!((z.conn_state(), z.history_str()), ("SH", "SF"));
    }

    #[test]
    fn a_syn_ack_first_flips_toward_the_server_port() {
        // the SYN-ACK from port 80 comes first: port 80 is a likely server port
        let z = run_ports([80, 40000], &[(0, 500, 101, 0, SYN | ACK), (0, 501, 101, 0, RST)]);
        assert_eq!(z.orig, 1);
        assert_eq!((z.history_str(), z.conn_state()), ("^hr", "RSTRH"));
        let z = run_ports([80, 40000], &[(0, 500, 101, 0, SYN | ACK), (0, 501, 101, 0, FIN | ACK)]);
        assert_eq!((z.history_str(), z.conn_state()), ("^hf", "SHR"));
        // mid-stream: data from port 80 first, then the client's ACK
        let z = run_ports([80, 40000], &[(0, 1000, 7, 10, ACK), (1, 7, 1010, 0, ACK)]);
        assert_eq!((z.history_str(), z.conn_state()), ("^dA", "OTH"));
        // both likely server ports and a SYN-ACK: no flip
        let z = run_ports([443, 80], &[(0, 500, 101, 0, SYN | ACK)]);
        assert_eq!((z.orig, z.history_str()), (0, "H"));
    }

    #[test]
    fn the_syn_after_its_syn_ack_flips() {
        // unknown ports: the SYN-ACK's sender is first the originator, then the SYN
        // (its ISN the SYN-ACK acknowledged) flips the roles
        let z = run_ports([5000, 6000], &[(0, 500, 101, 0, SYN | ACK), (1, 100, 0, 0, SYN), (1, 101, 501, 0, ACK)]);
        assert_eq!(z.orig, 1);
        assert_eq!(z.history_str(), "Hs^A");
        assert_eq!(z.conn_state(), "S1");
    }

    #[test]
    fn repeats_of_syn_fin_rst_only_with_a_new_sequence_number() {
        let z = run(&[(0, 100, 0, 0, SYN), (0, 100, 0, 0, SYN), (0, 100, 0, 0, SYN)]);
        assert_eq!(z.history_str(), "S");
        let mut p = hs();
        p.extend([(1, 501, 101, 0, RST), (1, 501, 101, 0, RST), (1, 600, 101, 0, RST)]);
        assert_eq!(run(&p).history_str(), "ShArr");
    }

    #[test]
    fn retransmissions_and_zero_windows_on_a_log_scale() {
        let mut z = run(&hs());
        z.packet(0, [40000, 80], 101, 501, 10, true, ACK, 1000);
        for _ in 0..100 {
            z.packet(0, [40000, 80], 101, 501, 10, true, ACK, 1000); // retransmitted
        }
        assert_eq!(z.history_str(), "ShADTTT"); // 1st, 10th, 100th
        for _ in 0..9 {
            z.packet(1, [40000, 80], 501, 111, 0, true, ACK, 0);
        }
        assert_eq!(z.history_str(), "ShADTTTaw");
        z.packet(1, [40000, 80], 501, 111, 0, true, ACK, 0);
        assert_eq!(z.history_str(), "ShADTTTaww");
        let (count, thresh) = z.ep[1].scaled[SC_WIN0];
        assert_eq!((count, thresh), (10, 100));
    }

    #[test]
    fn multi_flag_and_inconsistent_packets() {
        let mut p = hs();
        p.extend([(0, 101, 501, 0, FIN | RST), (1, 501, 101, 0, SYN | FIN)]);
        assert_eq!(run(&p).history_str(), "ShAIq");
    }

    #[test]
    fn gaps_are_counted_when_acked_and_established() {
        let mut p = hs();
        // client sends 101..111, then 121..131 (121 never seen... 111..121 lost), the
        // server acknowledges 131: 10 bytes missed
        p.extend([(0, 101, 501, 10, ACK), (0, 121, 501, 10, ACK), (1, 501, 131, 0, ACK)]);
        let z = run(&p);
        assert_eq!(z.missed_bytes, 10);
        assert_eq!(z.history_str(), "ShADaG");
        // the hole filled before the ACK: nothing missed
        let mut p = hs();
        p.extend([(0, 101, 501, 10, ACK), (0, 121, 501, 10, ACK), (0, 111, 501, 10, ACK), (1, 501, 131, 0, ACK)]);
        assert_eq!(run(&p).missed_bytes, 0);
        // an ACK beyond everything seen: the unseen tail is missed too
        let mut p = hs();
        p.extend([(0, 101, 501, 10, ACK), (1, 501, 151, 0, ACK)]);
        assert_eq!(run(&p).missed_bytes, 40);
        // a partial connection (no handshake) reports no gaps, as Zeek
        let z = run(&[(0, 101, 501, 10, ACK), (1, 501, 151, 0, ACK)]);
        assert_eq!(z.missed_bytes, 0);
        // the ACK of a FIN: the FIN's own sequence number is no data
        let mut p = hs();
        p.extend([(0, 101, 501, 10, ACK | FIN), (1, 501, 112, 0, ACK)]);
        assert_eq!(run(&p).missed_bytes, 0);
    }

    #[test]
    fn fin_then_rst_after_both_fins_is_still_sf() {
        let mut p = hs();
        p.extend([(0, 101, 501, 0, ACK | FIN), (1, 501, 102, 0, ACK | FIN), (0, 102, 502, 0, RST)]);
        assert_eq!(run(&p).conn_state(), "SF");
    }

    #[test]
    fn the_history_is_bounded() {
        let mut z = run(&hs());
        for k in 0..100u32 {
            z.packet(1, [40000, 80], 1000 + k * 7, 101, 0, true, RST, 1000);
        }
        assert_eq!(usize::from(z.history_len), MAX_HISTORY);
        assert!(LIKELY_SERVER_PORTS.windows(2).all(|w| w[0] < w[1]));
    }
}
