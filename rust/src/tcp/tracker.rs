//! The table of open TCP connections of one input partition.
//!
//! Takes whole batches of packed headers (`layout.rs`, 80 bytes each); each TCP packet
//! is routed to its [`Connection`], found by its address/port pair in either direction.
//! A pure SYN whose ISN differs from the one known for that side starts a new
//! connection on the same ports, as Wireshark starts a new `tcp.stream`; nothing else
//! does (Wireshark 4.0 has no "closed" rule).
//!
//! Gives [`Event`]s, in order: connection records (a closed connection quiet for
//! `close_linger_us` of capture time, or whose ports a new connection takes; an open one
//! idle for `idle_timeout_us`; interim records every `interim_us`; everything at the end
//! of input; the least recently active one when `max_connections` are held), and, for
//! the L7 analysers (Python), each connection's session opening, its stream data and gaps
//! (from its first payload byte on), ticks and its close — always before the connection's
//! record — and [`Event::Ended`] once both streams can take no more bytes (the caller may
//! close its session then, rather than after the linger).
//!
//! An L7 connection's two directions are reassembled here ([`Reassembler`], one per
//! direction, starting after each side's base sequence number when the analysis knows
//! it): Python gets [`Event::Data`] and [`Event::Gap`] in the order the stream gives them,
//! and nothing for packets that add no new bytes (pure ACKs, retransmissions). When the
//! connection ends, both streams are finished (their buffered data and last gaps) before
//! its [`Event::Close`]. In-order data is a range of the batch's payload blob
//! ([`Chunk::Input`]), sliced when the Python list is built; only data that waited
//! out of order is copied.
//!
//! Expiry runs on capture time, so a file replayed and a live capture behave alike, and
//! state stays bounded by the connections active within the timeouts.

use std::collections::{BTreeMap, HashMap};

use super::connection::{Connection, EndedBy, Record, ACK, FIN, SYN};
use crate::bytes::array;
use crate::layout::RECORD_SIZE;
use crate::reassembly::{Chunk, Reassembler, Sink};

/// Sweep for expired connections at most this often (capture time). A sweep walks every
/// held connection; packets of an expired connection are caught per packet anyway.
pub const SWEEP_INTERVAL_US: i64 = 5_000_000;

const PROTO_TCP: u8 = 6;

/// The counters a tracker keeps (`wire.stats` names), in the order they are reported.
pub const COUNTER_NAMES: [&str; 5] =
    ["non_tcp_packets", "connections_opened", "evicted_for_memory", "idle_timeouts", "interim_records"];

/// One packed header's fields the tracker reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hdr {
    pub ts: i64,
    pub payload_len: u32,
    pub off: u32,
    pub caplen: u32,
    pub seq: u32,
    pub ack: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub window: u16,
    pub flags: u16,
    pub version: u8,
    pub proto: u8,
    pub wscale: i8,
}

impl Hdr {
    /// The header at record `i` of a header block (None past its end).
    pub fn read(block: &[u8], i: usize) -> Option<Hdr> {
        let at = i.checked_mul(RECORD_SIZE)?;
        let r: [u8; RECORD_SIZE] = array(block, at)?;
        let u32at = |o: usize| u32::from_le_bytes([r[o], r[o + 1], r[o + 2], r[o + 3]]);
        let u16at = |o: usize| u16::from_le_bytes([r[o], r[o + 1]]);
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&r[36..52]);
        dst.copy_from_slice(&r[52..68]);
        Some(Hdr {
            ts: i64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]),
            payload_len: u32at(16),
            off: u32at(20),
            caplen: u32at(24),
            seq: u32at(28),
            ack: u32at(32),
            src,
            dst,
            sport: u16at(68),
            dport: u16at(70),
            window: u16at(72),
            flags: u16at(74),
            version: r[76],
            proto: r[77],
            wscale: r[78] as i8,
        })
    }
}

/// What the tracker gives, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A connection record.
    Record(Box<Record>),
    /// The connection's first payload byte: its L7 session starts. `base`: each side's
    /// base sequence number, if known (the stream starts after it).
    Open { handle: u64, version: u8, ips: [[u8; 16]; 2], ports: [u16; 2], base: [Option<u32>; 2], cid: String,
           community_id: String },
    /// The next bytes of side `d`'s stream, captured at `ts` (`Chunk::Input`: a range of
    /// the payload blob of the batch being processed).
    Data { handle: u64, d: u8, data: Chunk, ts: i64 },
    /// `missing` bytes of side `d`'s stream were never captured.
    Gap { handle: u64, d: u8, missing: u64, ts: i64 },
    /// The connection ended: its session finishes (before the connection's record).
    Close { handle: u64, ts: i64, cid: String },
    /// Both sides sent their FIN and both streams are delivered up to it, nothing waiting
    /// out of order: no byte can be added to either stream any more. The caller may close
    /// its session now rather than with the record (the linger keeps the connection for
    /// late ACKs and retransmissions, which add nothing to the streams); if it does, it
    /// calls [`Tracker::l7_ignore`] and no [`Event::Close`] follows.
    Ended { handle: u64, ts: i64, cid: String },
    /// The periodic sweep reached the connection: its analyser may time things out.
    Tick { handle: u64, now: i64 },
    /// The connection's id changed (the handshake told who the client is).
    Id { handle: u64, cid: String },
}

/// Whether a connection has an L7 session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L7State {
    None = 0,
    Active = 1,
    /// Python gave up on it (nothing we know): no more events.
    Ignored = 2,
}

/// The reassemblers' sink: their output as events of one direction of one connection.
struct StreamSink<'a> {
    events: &'a mut Vec<Event>,
    handle: u64,
    d: u8,
    /// where the segment's captured bytes start in the batch's blob
    blob_off: usize,
}

impl Sink for StreamSink<'_> {
    fn data(&mut self, chunk: Chunk, ts: i64) {
        let data = match chunk {
            Chunk::Input { at, len } => Chunk::Input { at: self.blob_off.saturating_add(at), len },
            owned => owned,
        };
        self.events.push(Event::Data { handle: self.handle, d: self.d, data, ts });
    }

    fn gap(&mut self, missing: u64, ts: i64) {
        self.events.push(Event::Gap { handle: self.handle, d: self.d, missing, ts });
    }
}

type Key = ([u8; 16], u16, [u8; 16], u16);

/// The connection tracker of one partition of one source.
#[derive(Clone, Debug, PartialEq)]
pub struct Tracker {
    pub idle_timeout_us: i64,
    pub close_linger_us: i64,
    pub interim_us: i64,
    pub max_connections: u64,
    /// L7 analysis on: give session events
    pub l7: bool,
    /// handle (opening order) -> connection: the held connections in the order they
    /// were opened (an eviction tie picks the same one again after a restore)
    pub conns: BTreeMap<u64, Connection>,
    pub l7_state: BTreeMap<u64, L7State>,
    /// the two directions' reassembly of each `Active` L7 connection
    pub streams: BTreeMap<u64, Box<[Reassembler; 2]>>,
    /// (src, sport, dst, dport) -> handle, under both directions
    pub index: HashMap<Key, u64>,
    pub next_handle: u64,
    pub packets: u64,
    pub emitted: u64,
    /// counters of COUNTER_NAMES, None until first counted (a Counter's keys)
    pub counters: [Option<u64>; 5],
    pub now: i64,
    pub next_sweep: i64,
    pub events: Vec<Event>,
    /// seed of the records' Community ID (a setting, not state: the checkpoint bytes do
    /// not hold it, the owner sets it again after a restore)
    pub community_id_seed: u16,
}

impl Tracker {
    pub fn new(idle_timeout_us: i64, close_linger_us: i64, interim_us: i64, max_connections: u64, l7: bool) -> Self {
        Tracker {
            idle_timeout_us, close_linger_us, interim_us, max_connections, l7,
            conns: BTreeMap::new(), l7_state: BTreeMap::new(), streams: BTreeMap::new(), index: HashMap::new(), next_handle: 0,
            packets: 0, emitted: 0, counters: [None; 5], now: 0, next_sweep: 0, events: Vec::new(),
            community_id_seed: 0,
        }
    }

    fn count(&mut self, i: usize, n: u64) {
        if let Some(c) = self.counters.get_mut(i) {
            *c = Some(c.unwrap_or(0).saturating_add(n));
        }
    }

    /// The events produced since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn expiry_floor(&self) -> i64 {
        self.idle_timeout_us.min(self.close_linger_us)
    }

    /// Analyse a batch of packed headers (UDP and other packets are counted and skipped);
    /// `blob` is the batch's payload blob (the L7 streams' bytes). A trailing partial
    /// record is ignored.
    pub fn process(&mut self, block: &[u8], blob: &[u8]) {
        let n = block.len() / RECORD_SIZE;
        if n == 0 {
            return;
        }
        let mut tcp = 0u64;
        let mut last_ts = None;
        for i in 0..n {
            let Some(h) = Hdr::read(block, i) else { break };
            if h.proto != PROTO_TCP {
                continue;
            }
            tcp += 1;
            self.packet(&h, blob);
            last_ts = Some(h.ts);
        }
        self.count(0, n as u64 - tcp);
        let Some(ts) = last_ts else { return };
        self.packets += tcp;
        self.now = ts;
        if ts >= self.next_sweep {
            self.sweep(ts);
        }
    }

    fn packet(&mut self, h: &Hdr, blob: &[u8]) {
        let key: Key = (h.src, h.sport, h.dst, h.dport);
        let mut handle = self.index.get(&key).copied();
        // Expire a connection already due before routing this packet to it, so whether a
        // quiet gap splits the stream does not depend on where the batches fell.
        if let Some(hd) = handle {
            let due = self.conns.get(&hd).is_some_and(|c| h.ts.saturating_sub(c.last_ts) >= self.expiry_floor());
            if due && self.expire_if_due(hd, h.ts) {
                handle = None;
            }
        }
        let mut is_new = false;
        let mut hd = match handle {
            Some(hd) => hd,
            None => {
                is_new = true;
                self.open(h, false)
            }
        };
        let Some(conn) = self.conns.get_mut(&hd) else { return };
        let f0 = &conn.flows[0];
        let mut d = if h.sport == f0.port && h.src == f0.ip { 0 } else { 1 };
        if h.flags & (SYN | ACK) == SYN && !is_new && conn.is_syn_retransmission(d, h.seq) == Some(false) {
            // A new ISN on known ports: a new connection (Wireshark: ports reused).
            self.close(hd, EndedBy::Close);
            hd = self.open(h, true);
            d = 0;
        }
        let l7 = self.l7;
        let state = if l7 { self.l7_state.get(&hd).copied().unwrap_or(L7State::None) } else { L7State::None };
        let Some(conn) = self.conns.get_mut(&hd) else { return };
        let client_before = conn.client();
        conn.on_packet(d, h.ts, h.seq, h.ack, h.payload_len, h.flags, h.window, h.wscale, is_new);
        if !l7 {
            return;
        }
        match state {
            L7State::Ignored => return,
            L7State::Active => {
                if conn.client() != client_before {
                    self.events.push(Event::Id { handle: hd, cid: conn.connection_id() });
                }
            }
            L7State::None => {
                if h.payload_len == 0 {
                    return;
                }
                // after on_packet: it sets the stream bases
                let [a, b] = &conn.flows;
                self.events.push(Event::Open {
                    handle: hd,
                    version: conn.version,
                    ips: [a.ip, b.ip],
                    ports: [a.port, b.port],
                    base: [a.base_seq_set.then_some(a.base_seq), b.base_seq_set.then_some(b.base_seq)],
                    cid: conn.connection_id(),
                    // once per L7 connection, copied to its L7 records
                    community_id: conn.community_id(self.community_id_seed),
                });
                self.l7_state.insert(hd, L7State::Active);
                // The streams start where the analysis says each side's data starts (ISN + 1
                // after a SYN; the first sequence or acknowledgement number seen otherwise).
                let mut streams = Box::new([Reassembler::default(), Reassembler::default()]);
                for (stream, flow) in streams.iter_mut().zip(&conn.flows) {
                    if flow.base_seq_set {
                        stream.next_seq = Some(flow.base_seq.wrapping_add(1));
                    }
                }
                self.streams.insert(hd, streams);
            }
        }
        let Some([s0, s1]) = self.streams.get_mut(&hd).map(|s| &mut **s) else { return };
        let (own, other) = if d == 0 { (s0, s1) } else { (s1, s0) };
        let events = &mut self.events;
        if h.flags & ACK != 0 {
            // side d's ACK acknowledges the other side's stream
            other.ack(h.ack, &mut StreamSink { events, handle: hd, d: 1 - d as u8, blob_off: 0 });
        }
        if h.payload_len > 0 {
            // TCP Fast Open: the SYN's data starts after the SYN's own sequence number
            let seq = if h.flags & SYN != 0 { h.seq.wrapping_add(1) } else { h.seq };
            let off = h.off as usize;
            let data = off.checked_add(h.caplen as usize).and_then(|end| blob.get(off..end)).unwrap_or_default();
            own.segment(seq, data, h.payload_len, h.ts, &mut StreamSink { events, handle: hd, d: d as u8, blob_off: off });
        }
        // (only a segment with a FIN or data can complete the streams)
        if h.flags & FIN != 0 || h.payload_len > 0 {
            let [f0, f1] = &conn.flows;
            let delivered = |s: &Reassembler, f: &super::connection::Flow| {
                // the FIN counts one in Wireshark's nextseq: the stream's next byte is the FIN's
                f.fin && s.pending.is_empty() && s.next_seq.is_some_and(|n| n.wrapping_add(1) == f.nextseq)
            };
            let (s0, s1) = if d == 0 { (&*own, &*other) } else { (&*other, &*own) };
            if delivered(s0, f0) && delivered(s1, f1) {
                events.push(Event::Ended { handle: hd, ts: conn.last_ts, cid: conn.connection_id() });
            }
        }
    }

    fn open(&mut self, h: &Hdr, reused: bool) -> u64 {
        if self.conns.len() as u64 >= self.max_connections.max(1) {
            // Bounded state: close the least recently active connection (the first
            // opened of those on a tie).
            let mut oldest: Option<(u64, i64)> = None;
            for (&hd, c) in &self.conns {
                if oldest.is_none_or(|(_, ts)| c.last_ts < ts) {
                    oldest = Some((hd, c.last_ts));
                }
            }
            if let Some((hd, _)) = oldest {
                self.count(2, 1);
                self.close(hd, EndedBy::Timeout);
            }
        }
        let mut conn = Connection::new(h.version, h.src, h.sport, h.dst, h.dport, h.ts);
        if reused {
            conn.completeness = 1; // Wireshark presets SYN on a reused-port conversation
        }
        let hd = self.next_handle;
        self.next_handle += 1;
        self.conns.insert(hd, conn);
        self.index.insert((h.src, h.sport, h.dst, h.dport), hd);
        self.index.insert((h.dst, h.dport, h.src, h.sport), hd);
        self.count(1, 1);
        hd
    }

    fn close(&mut self, hd: u64, ended_by: EndedBy) {
        let Some(conn) = self.conns.remove(&hd) else { return };
        let [a, b] = &conn.flows;
        for key in [(a.ip, a.port, b.ip, b.port), (b.ip, b.port, a.ip, a.port)] {
            if self.index.get(&key) == Some(&hd) {
                self.index.remove(&key);
            }
        }
        self.emitted += 1;
        if self.l7_state.remove(&hd) == Some(L7State::Active) {
            // the streams end: what they buffered, and their last gaps, before the close
            if let Some(streams) = self.streams.remove(&hd) {
                for (d, mut stream) in streams.into_iter().enumerate() {
                    stream.finish(&mut StreamSink { events: &mut self.events, handle: hd, d: d as u8, blob_off: 0 });
                }
            }
            self.events.push(Event::Close { handle: hd, ts: conn.last_ts, cid: conn.connection_id() });
        }
        self.events.push(Event::Record(Box::new(conn.record(ended_by, true, self.community_id_seed))));
    }

    /// Emit `hd` if it is closed and past its linger time, or idle past the timeout.
    fn expire_if_due(&mut self, hd: u64, now: i64) -> bool {
        let Some(conn) = self.conns.get(&hd) else { return false };
        let quiet = now.saturating_sub(conn.last_ts);
        if conn.closed_ts.is_some() && quiet >= self.close_linger_us {
            self.close(hd, EndedBy::Close);
        } else if quiet >= self.idle_timeout_us {
            self.count(3, 1);
            self.close(hd, EndedBy::Timeout);
        } else {
            return false;
        }
        true
    }

    /// Emit closed connections past their linger time and idle ones past the timeout;
    /// interim records; ticks for the L7 sessions.
    pub fn sweep(&mut self, now: i64) {
        self.next_sweep = now.saturating_add(SWEEP_INTERVAL_US);
        let handles: Vec<u64> = self.conns.keys().copied().collect();
        for hd in handles {
            if self.expire_if_due(hd, now) {
                continue;
            }
            if self.l7_state.get(&hd) == Some(&L7State::Active) {
                self.events.push(Event::Tick { handle: hd, now });
            }
            let interim = self.interim_us;
            let Some(conn) = self.conns.get_mut(&hd) else { continue };
            let due = (conn.interim_emitted as i64).saturating_add(1).saturating_mul(interim);
            if interim > 0 && conn.closed_ts.is_none() && now.saturating_sub(conn.first_ts) >= due {
                conn.interim_emitted += 1;
                let rec = conn.record(EndedBy::Open, false, self.community_id_seed);
                self.emitted += 1;
                self.count(4, 1);
                self.events.push(Event::Record(Box::new(rec)));
            }
        }
    }

    /// End of input: emit every connection still held.
    pub fn flush(&mut self) {
        let handles: Vec<u64> = self.conns.keys().copied().collect();
        let now = self.now;
        for hd in handles {
            // Already due: as a sweep would have said.
            if !self.expire_if_due(hd, now) {
                let closed = self.conns.get(&hd).is_some_and(|c| c.closed_ts.is_some());
                self.close(hd, if closed { EndedBy::Close } else { EndedBy::EndOfInput });
            }
        }
    }

    /// Python gave up on the connection's L7 session: no more events for it, and its
    /// reassembly is freed.
    pub fn l7_ignore(&mut self, hd: u64) {
        if let Some(s) = self.l7_state.get_mut(&hd) {
            *s = L7State::Ignored;
        }
        self.streams.remove(&hd);
    }

    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    /// The counters that were counted, by name.
    pub fn counter_items(&self) -> Vec<(&'static str, u64)> {
        COUNTER_NAMES.iter().zip(self.counters.iter()).filter_map(|(n, c)| c.map(|c| (*n, c))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::connection::FIN;
    use crate::layout::Packet;

    #[allow(clippy::too_many_arguments)]
    fn pkt(ts: i64, a: u8, sport: u16, b: u8, dport: u16, seq: u32, ack: u32, flags: u16, len: u32) -> Packet {
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[10, 0, 0, a]);
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[10, 0, 0, b]);
        Packet { ts_us: ts, seq, ack, src_ip: src, dst_ip: dst, src_port: sport, dst_port: dport, tcp_flags: flags,
                 payload_len: len, window: 1000, ip_version: 4, proto: 6, wscale: -1, ..Packet::default() }
    }

    fn block(ps: &[Packet]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in ps {
            p.write(&mut out, 0, 0);
        }
        out
    }

    /// Packets with payload: the header block and the blob.
    fn with_payload(ps: &[(Packet, &[u8])]) -> (Vec<u8>, Vec<u8>) {
        let (mut out, mut blob) = (Vec::new(), Vec::new());
        for (p, data) in ps {
            p.write(&mut out, blob.len() as u32, data.len() as u32);
            blob.extend_from_slice(data);
        }
        (out, blob)
    }

    /// The L7 events as text, with the data resolved against the blob.
    fn l7_events(events: &[Event], blob: &[u8]) -> Vec<String> {
        events.iter().filter_map(|e| match e {
            Event::Data { d, data, ts, .. } => Some(format!("data {d} {} @{ts}", String::from_utf8_lossy(match data {
                Chunk::Input { at, len } => &blob[*at..*at + *len],
                Chunk::Owned(v) => v,
            }))),
            Event::Gap { d, missing, ts, .. } => Some(format!("gap {d} {missing} @{ts}")),
            Event::Open { base, .. } => Some(format!("open {base:?}")),
            Event::Close { ts, .. } => Some(format!("close @{ts}")),
            Event::Ended { ts, .. } => Some(format!("ended @{ts}")),
            _ => None,
        }).collect()
    }

    #[test]
    fn ended_once_both_fins_are_in_and_both_streams_delivered_up_to_them() {
        let mut t = Tracker::new(300_000_000, 10_000_000, 0, 1000, true);
        let (b, blob) = with_payload(&[
            (pkt(0, 1, 4000, 2, 80, 100, 0, SYN, 0), b""),
            (pkt(10, 2, 80, 1, 4000, 500, 101, SYN | ACK, 0), b""),
            (pkt(20, 1, 4000, 2, 80, 101, 501, ACK, 3), b"GET"),
            (pkt(30, 2, 80, 1, 4000, 504, 104, ACK | FIN, 2), b"ok"), // 3 bytes before it not captured yet
            (pkt(40, 1, 4000, 2, 80, 104, 501, ACK | FIN, 0), b""), // both FINs: a hole remains
            (pkt(50, 2, 80, 1, 4000, 501, 105, ACK, 3), b"abc"), // the hole filled: ended
            (pkt(60, 1, 4000, 2, 80, 105, 507, ACK, 0), b""), // the last ACK (the linger's)
            (pkt(70, 2, 80, 1, 4000, 506, 105, ACK | FIN, 0), b""), // a FIN retransmitted
        ]);
        t.process(&b, &blob);
        let ev = t.take_events();
        assert_eq!(l7_events(&ev, &blob), ["open [Some(100), Some(500)]", "data 0 GET @20", "data 1 abc @50", "data 1 ok @30",
                                            "ended @50", "ended @70"]);
        // the caller closes the session (l7_ignore): its record comes alone, no Close
        t.l7_ignore(0);
        assert!(t.streams.is_empty());
        t.flush();
        let ev = t.take_events();
        assert_eq!(l7_events(&ev, &blob), Vec::<String>::new());
        assert_eq!(records(&ev).len(), 1);
        // a side that sent nothing after its SYN is delivered once its FIN is in
        let mut t = Tracker::new(300_000_000, 10_000_000, 0, 1000, true);
        let (b, blob) = with_payload(&[
            (pkt(0, 1, 4000, 2, 80, 100, 0, SYN, 0), b""),
            (pkt(10, 2, 80, 1, 4000, 500, 101, SYN | ACK, 0), b""),
            (pkt(20, 1, 4000, 2, 80, 101, 501, ACK | FIN, 4), b"PING"),
            (pkt(30, 2, 80, 1, 4000, 501, 106, ACK | FIN, 0), b""),
        ]);
        t.process(&b, &blob);
        assert_eq!(l7_events(&t.take_events(), &blob), ["open [Some(100), Some(500)]", "data 0 PING @20", "ended @30"]);
    }

    #[test]
    fn l7_streams_are_reassembled_in_the_tracker() {
        let mut t = Tracker::new(300_000_000, 10_000_000, 0, 1000, true);
        let (b, blob) = with_payload(&[
            (pkt(0, 1, 4000, 2, 80, 100, 0, SYN, 0), b""),
            (pkt(10, 2, 80, 1, 4000, 500, 101, SYN | ACK, 0), b""),
            (pkt(20, 1, 4000, 2, 80, 101, 501, ACK, 0), b""),
            (pkt(30, 1, 4000, 2, 80, 105, 501, ACK, 4), b"EFGH"), // out of order
            (pkt(40, 1, 4000, 2, 80, 101, 501, ACK, 6), b"ABCDEF"), // fills the hole, overlaps
            (pkt(50, 2, 80, 1, 4000, 501, 109, ACK, 3), b"xyz"),
            (pkt(60, 2, 80, 1, 4000, 510, 109, ACK, 2), b"uv"), // 6 bytes lost before
            (pkt(70, 1, 4000, 2, 80, 109, 504, ACK, 0), b""), // pure ACK: no event
            (pkt(80, 1, 4000, 2, 80, 109, 512, ACK | FIN, 0), b""), // FIN, acks beyond the hole
        ]);
        t.process(&b, &blob);
        let mut ev = t.take_events();
        t.flush();
        ev.extend(t.take_events());
        assert_eq!(l7_events(&ev, &blob), [
            "open [Some(100), Some(500)]",
            "data 0 ABCDEF @40", // delivered whole, then the buffered one's new part
            "data 0 GH @30",
            "data 1 xyz @50",
            "gap 1 6 @60",
            "data 1 uv @60",
            "close @80",
        ]);
    }

    #[test]
    fn buffered_data_is_finished_before_the_close_and_ignore_frees() {
        let mut t = Tracker::new(300_000_000, 10_000_000, 0, 1000, true);
        let (b, blob) = with_payload(&[
            (pkt(0, 1, 4000, 2, 80, 100, 0, SYN, 0), b""),
            (pkt(10, 2, 80, 1, 4000, 500, 101, SYN | ACK, 0), b""),
            (pkt(20, 1, 4000, 2, 80, 103, 501, ACK, 2), b"cd"),
            (pkt(30, 1, 5000, 2, 80, 7, 9, ACK, 3), b"abc"), // mid-stream start
        ]);
        t.process(&b, &blob);
        assert_eq!(t.streams.len(), 2);
        assert_eq!(l7_events(&t.take_events(), &blob), ["open [Some(100), Some(500)]", "open [Some(6), Some(8)]",
                                                          "data 0 abc @30"]);
        t.l7_ignore(1);
        assert_eq!(t.streams.len(), 1);
        t.flush();
        assert_eq!(l7_events(&t.take_events(), &blob), ["gap 0 2 @20", "data 0 cd @20", "close @20"]);
    }

    fn records(events: &[Event]) -> Vec<&Record> {
        events.iter().filter_map(|e| if let Event::Record(r) = e { Some(r.as_ref()) } else { None }).collect()
    }

    #[test]
    fn community_id_of_the_session_and_the_record_with_the_seed() {
        let packets = [(pkt(0, 1, 4000, 2, 80, 100, 0, SYN, 0), &b""[..]), (pkt(10, 2, 80, 1, 4000, 500, 101, SYN | ACK, 0), b""),
                       (pkt(20, 1, 4000, 2, 80, 101, 501, ACK, 2), b"hi")];
        let mut ids = Vec::new();
        for seed in [0u16, 7] {
            let mut t = Tracker::new(300_000_000, 10_000_000, 0, 1000, true);
            t.community_id_seed = seed;
            let (b, blob) = with_payload(&packets);
            t.process(&b, &blob);
            t.flush();
            let ev = t.take_events();
            let open = ev.iter().find_map(|e| if let Event::Open { community_id, .. } = e { Some(community_id.clone()) } else { None });
            let rec = records(&ev)[0].community_id.clone();
            // the session's (copied to its L7 records) is the record's
            assert_eq!(open.as_deref(), Some(rec.as_str()));
            let (a, b) = ([10u8, 0, 0, 1], [10u8, 0, 0, 2]);
            assert_eq!(rec, crate::community_id::community_id(seed, &a, &b, 6, Some((4000, 80)), false));
            ids.push(rec);
        }
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn both_directions_one_connection_and_port_reuse() {
        let mut t = Tracker::new(300_000_000, 10_000_000, 0, 1000, true);
        t.process(&block(&[
            pkt(0, 1, 4000, 2, 80, 100, 0, SYN, 0),
            pkt(10, 2, 80, 1, 4000, 500, 101, SYN | ACK, 0),
            pkt(20, 1, 4000, 2, 80, 101, 501, ACK, 5),
            pkt(30, 1, 4000, 2, 80, 9000, 0, SYN, 0), // new ISN: a new connection
        ]), &[]);
        assert_eq!(t.open_connections(), 1);
        let ev = t.take_events();
        assert!(matches!(ev[0], Event::Open { .. }));
        assert!(matches!(ev[2], Event::Close { .. }));
        assert_eq!(records(&ev).len(), 1);
        assert_eq!(records(&ev)[0].packets, [2, 1]);
        t.flush();
        let ev = t.take_events();
        assert_eq!(records(&ev)[0].state, "incomplete_handshake");
        assert_eq!(t.open_connections(), 0);
        assert!(t.index.is_empty());
    }

    #[test]
    fn eviction_and_idle_timeout() {
        let mut t = Tracker::new(1_000, 500, 0, 2, false);
        t.process(&block(&[pkt(0, 1, 1, 2, 80, 1, 0, SYN, 0), pkt(1, 1, 2, 2, 80, 1, 0, SYN, 0),
                           pkt(2, 1, 3, 2, 80, 1, 0, SYN, 0)]), &[]);
        assert_eq!(t.open_connections(), 2);
        assert_eq!(t.counter_items(), vec![("non_tcp_packets", 0), ("connections_opened", 3), ("evicted_for_memory", 1)]);
        t.process(&block(&[pkt(10_000_000, 1, 9, 2, 80, 1, 0, SYN, 0)]), &[]);
        assert_eq!(t.open_connections(), 1);
        assert_eq!(records(&t.take_events()).len(), 3);
    }

    #[test]
    fn garbage_does_not_panic() {
        let mut t = Tracker::new(0, 0, 1, 0, true);
        let mut seed = 12345u64;
        let mut data = vec![0u8; RECORD_SIZE * 50 + 7];
        for b in data.iter_mut() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = (seed >> 33) as u8;
        }
        for i in 0..50 {
            data[i * RECORD_SIZE + 77] = 6;
        }
        let blob = data.clone();
        t.process(&data, &blob[..100]);
        t.flush();
    }
}
