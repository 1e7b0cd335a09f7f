//! UDP, ICMP and SCTP flows: Zeek's conn.log notion of a connection for transports
//! without one (and for SCTP, whose associations no analyser here or in Zeek follows).
//!
//! A [`FlowTable`] takes the UDP, ICMP/ICMPv6 and SCTP rows of each batch's header block
//! (80-byte records, `layout.rs`; an ICMP row's ports are the Community ID's, its `seq`
//! the type and code, its `ack` the rest of the header; an SCTP row's `tcp_flags` the
//! chunk types it carries, docs/packet-layout.md) and keeps
//! one [`Flow`] per protocol and pair of endpoints: packets, payload bytes and frame bytes
//! per direction, first and last packet time, and what the first datagrams are
//! ([`Service`]). An ICMP flow is an exchange (an echo request and its replies: one flow,
//! as the Community ID's ports pair them) or the messages of one type and code between
//! two hosts; an error (unreachable, time exceeded, packet too big, ...) keeps the
//! datagram it quotes ([`Quoted`]: the flow it is about, whose Community ID is the quoted
//! one's) and the path MTU it reports. It is not added to the quoted flow's record: the
//! error travels between other endpoints (a router and the sender), so it is on another
//! partition than the flow it quotes. An SCTP flow is an association's packets between
//! two endpoints (addresses and ports); the chunk types each side sent ([`Flow::chunks`])
//! give its `conn_state` (setup, shutdown, abort: [`Flow::conn_state`]).
//!
//! A flow ends ([`Ended`]) when it has been idle for the inactivity
//! timeout (capture time; Zeek's `udp_inactivity_timeout`, one minute), when memory is
//! bounded (the flows idle longest go first), or at end of input.
//!
//! The client (Zeek's originator) is the sender of the first packet, unless its port is a
//! well-known server port and the other's is not (Zeek flips such a flow,
//! `likely_server_ports`: a capture that starts with a DNS answer still has the resolver
//! as server); of an ICMP exchange, the sender of the request type (the echo requester,
//! even if the capture starts with its reply); of SCTP, the sender of the INIT (the
//! receiver of an INIT ACK, if the capture starts with it), else the first sender.
//!
//! Everything is deterministic: flows that end together are given in the order they
//! started (ties: the order they were created), so the same input gives the same records
//! in the same order, and a table restored from [`FlowTable::snapshot`] goes on as the
//! original would have.

use std::collections::HashMap;

use crate::bytes::array;
use crate::layout::RECORD_SIZE;
use crate::state_bytes::{frame, unframe, Res, R, W};

const PROTO_UDP: u8 = 17;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMP6: u8 = 58;
const PROTO_SCTP: u8 = 132;
/// SCTP chunk types as an SCTP row's `tcp_flags` bits (decode/transport.rs: bit `1 << type`)
const SCTP_INIT: u16 = 1 << 1;
const SCTP_INIT_ACK: u16 = 1 << 2;
const SCTP_ABORT: u16 = 1 << 6;
const SCTP_SHUTDOWN: u16 = 1 << 7;
const SCTP_SHUTDOWN_ACK: u16 = 1 << 8;
const SCTP_SHUTDOWN_COMPLETE: u16 = 1 << 14;
/// ICMP types that ask (their counterpart answers): echo, timestamp, information,
/// address mask, router solicitation; ICMPv6 echo, multicast listener query, router and
/// neighbor solicitation, node information query, home agent address discovery.
const ICMP4_REQUESTS: [u8; 5] = [8, 13, 15, 17, 10];
const ICMP6_REQUESTS: [u8; 6] = [128, 130, 133, 135, 139, 144];
/// Zeek's `udp_inactivity_timeout`.
pub const INACTIVITY_TIMEOUT_US: i64 = 60_000_000;
/// How often (capture time) idle flows are looked for.
pub const SWEEP_INTERVAL_US: i64 = 5_000_000;
/// Flows held per table; beyond, those idle longest end (`evicted`).
pub const MAX_FLOWS: usize = 100_000;
/// Datagrams of a flow looked at for its service before giving up.
const SERVICE_ATTEMPTS: u8 = 4;
/// The ports whose flows Zeek turns around when they are the first sender's and not the
/// receiver's: the UDP services of its analysers, and those [`Service`] knows.
pub const LIKELY_SERVER_PORTS: [u16; 20] =
    [53, 67, 69, 123, 137, 138, 161, 162, 443, 500, 514, 1812, 1813, 1900, 3478, 4500, 5353, 5355, 5683, 2152];

const MAGIC: &[u8; 4] = b"WSUF";
/// 3: SCTP flows' chunk types; version 2 snapshots (no SCTP) still restore
const VERSION: u16 = 3;

/// An endpoint: the 16-byte address field (IPv4 in the first 4) and the port.
pub type Endpoint = ([u8; 16], u16);

/// What a flow's datagrams are, from their bytes and ports (Zeek's `service` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Dns,
    Dhcp,
    Ntp,
    Quic,
    Syslog,
    Snmp,
    Ssdp,
}

impl Service {
    const ALL: [Service; 7] =
        [Service::Dns, Service::Dhcp, Service::Ntp, Service::Quic, Service::Syslog, Service::Snmp, Service::Ssdp];

    pub fn name(self) -> &'static str {
        match self {
            Service::Dns => "dns",
            Service::Dhcp => "dhcp",
            Service::Ntp => "ntp",
            Service::Quic => "quic",
            Service::Syslog => "syslog",
            Service::Snmp => "snmp",
            Service::Ssdp => "ssdp",
        }
    }

    /// What datagram `p` between ports `sport` and `dport` is, or None. Each check wants
    /// the port its protocol is on as well as a header that fits, except DHCP (its magic
    /// cookie is enough) and QUIC (a long header with a known version).
    pub fn of(p: &[u8], sport: u16, dport: u16) -> Option<Service> {
        let on = |port: u16| sport == port || dport == port;
        let n = p.len();
        if n >= 12 && (on(53) || on(5353) || on(5355)) {
            let opcode = (p[2] >> 3) & 0x0F;
            let qdcount = u16::from_be_bytes([p[4], p[5]]);
            if matches!(opcode, 0 | 1 | 2 | 4 | 5) && (qdcount >= 1 || p[2] & 0x80 != 0) {
                return Some(Service::Dns);
            }
        }
        if n >= 240 && p[236..240] == [0x63, 0x82, 0x53, 0x63] {
            return Some(Service::Dhcp);
        }
        if n >= 48 && on(123) && (1..=4).contains(&((p[0] >> 3) & 0x07)) {
            return Some(Service::Ntp);
        }
        if n >= 5 && p[0] & 0xC0 == 0xC0 {
            let version = u32::from_be_bytes([p[1], p[2], p[3], p[4]]);
            // v1 (RFC 9000), v2 (RFC 9369), the drafts 0xff0000XX
            if version == 1 || version == 0x6B33_43CF || version >> 8 == 0x00FF_0000 {
                return Some(Service::Quic);
            }
        }
        if n >= 3 && on(514) && p[0] == b'<' && p[1].is_ascii_digit() {
            return Some(Service::Syslog);
        }
        if n >= 2 && (on(161) || on(162)) && p[0] == 0x30 {
            return Some(Service::Snmp);
        }
        if on(1900) && (p.starts_with(b"M-SEARCH ") || p.starts_with(b"NOTIFY ") || p.starts_with(b"HTTP/1.1 ")) {
            return Some(Service::Ssdp);
        }
        None
    }
}

/// Why a flow's record is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndedBy {
    Timeout,
    Evicted,
    EndOfInput,
}

impl EndedBy {
    pub fn name(self) -> &'static str {
        match self {
            EndedBy::Timeout => "timeout",
            EndedBy::Evicted => "evicted",
            EndedBy::EndOfInput => "end_of_input",
        }
    }
}

/// One flow's counters; index 0 of each pair is the client's direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// 17 UDP, 1 ICMP, 58 ICMPv6, 132 SCTP
    pub proto: u8,
    pub client: Endpoint,
    pub server: Endpoint,
    pub version: u8,
    pub start_ts_us: i64,
    pub end_ts_us: i64,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub frame_bytes: [u64; 2],
    pub service: Option<Service>,
    /// ICMP: the type and code of the client's first message (of the first message, if
    /// the client sent none)
    pub icmp: Option<IcmpMessage>,
    /// ICMP errors: the datagram the first one quotes
    pub quoted: Option<Quoted>,
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big": the smallest MTU reported
    pub path_mtu: Option<u32>,
    /// SCTP: the chunk types each side sent (the rows' `tcp_flags`, or-ed)
    pub chunks: [u16; 2],
    attempts: u8,
    /// creation order: ties between flows that start at the same time
    seq: u64,
}

/// An ICMP message's type and code, and which side sent it (0: the client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpMessage {
    pub icmp_type: u8,
    pub code: u8,
    pub side: u8,
}

/// What an ICMP error quotes: the IP header and the first 8 bytes of the datagram that
/// caused it (RFC 792, RFC 4443): its protocol, addresses and, for TCP/UDP, ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub version: u8,
    pub proto: u8,
    pub src: Endpoint,
    pub dst: Endpoint,
}

impl Quoted {
    /// The quoted datagram at the start of an error's payload, if its IP header is there.
    fn parse(p: &[u8]) -> Option<Quoted> {
        let version = p.first()? >> 4;
        let (proto, src, dst, l4) = match version {
            4 => {
                let ihl = usize::from(p[0] & 0x0F) * 4;
                let (s, d): ([u8; 4], [u8; 4]) = (array(p, 12)?, array(p, 16)?);
                let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
                src[..4].copy_from_slice(&s);
                dst[..4].copy_from_slice(&d);
                (*p.get(9)?, src, dst, ihl.max(20))
            }
            6 => (*p.get(6)?, array(p, 8)?, array(p, 24)?, 40),
            _ => return None,
        };
        // ports of TCP, UDP and SCTP, when the 8 quoted transport bytes are there
        let ports = match proto {
            6 | 17 | PROTO_SCTP => array::<4>(p, l4).map(|b| (u16::from_be_bytes([b[0], b[1]]), u16::from_be_bytes([b[2], b[3]]))),
            _ => None,
        };
        let (sport, dport) = ports.unwrap_or((0, 0));
        Some(Quoted { version, proto, src: (src, sport), dst: (dst, dport) })
    }
}

/// Whether ICMP type `t` of protocol `proto` is an error (it quotes a datagram).
fn icmp_error(proto: u8, t: u8) -> bool {
    if proto == PROTO_ICMP6 {
        matches!(t, 1..=4)
    } else {
        matches!(t, 3 | 4 | 5 | 11 | 12)
    }
}

impl Flow {
    /// An ICMP message of this flow from `side`: its type and code (the client's first),
    /// an error's quoted datagram (the first), a reported MTU (the smallest).
    fn icmp_message(&mut self, row: &Row, side: u8, payload: &[u8]) {
        let (icmp_type, code) = ((row.seq >> 8) as u8, row.seq as u8);
        if self.icmp.is_none_or(|m| m.side != 0 && side == 0) {
            self.icmp = Some(IcmpMessage { icmp_type, code, side });
        }
        if !icmp_error(self.proto, icmp_type) {
            return;
        }
        if self.quoted.is_none() {
            self.quoted = Quoted::parse(payload);
        }
        // RFC 1191: the next-hop MTU in the low 16 bits of the unused word of a
        // "fragmentation needed"; RFC 4443: Packet Too Big's 32-bit MTU
        let mtu = match (self.proto, icmp_type, code) {
            (PROTO_ICMP, 3, 4) => row.ack & 0xFFFF,
            (PROTO_ICMP6, 2, _) => row.ack,
            _ => 0,
        };
        if mtu > 0 {
            self.path_mtu = Some(self.path_mtu.map_or(mtu, |m| m.min(mtu)));
        }
    }

    /// Zeek's `conn_state` (base/protocols/conn/main.zeek): of a UDP flow SF both sides
    /// sent, S0 only the originator, SHR only the responder (a flow it turned around); of
    /// an ICMP flow OTH; of an SCTP flow, [`Flow::sctp_state`].
    pub fn conn_state(&self) -> &'static str {
        if self.proto == PROTO_SCTP {
            return self.sctp_state();
        }
        if self.proto != PROTO_UDP {
            return "OTH"; // Zeek: every ICMP "connection"
        }
        match (self.packets[0] > 0, self.packets[1] > 0) {
            (true, true) => "SF",
            (true, false) => "S0",
            (false, true) => "SHR",
            (false, false) => "OTH",
        }
    }

    /// Zeek's TCP states read off an SCTP association's chunks (Zeek itself has no SCTP
    /// analyser: its conn.log says OTH of any "unknown_transport"). INIT is the SYN,
    /// INIT ACK the SYN-ACK (the association is then established: the cookie exchange
    /// after it cannot fail but by ABORT), ABORT the RST, SHUTDOWN the FIN, and a
    /// SHUTDOWN ACK or SHUTDOWN COMPLETE the close's answer (RFC 9260 sections 5 and 9):
    /// OTH no INIT from the client (a capture that starts inside the association); S0 an
    /// INIT unanswered; REJ an INIT answered by ABORT (no listener: section 8.4); RSTOS0
    /// the client's ABORT before an answer; RSTO / RSTR an established association aborted
    /// by the client / the server; SF one shut down (SHUTDOWN ACK or COMPLETE seen); S2 /
    /// S3 a SHUTDOWN from the client / the server unanswered; S1 established, open.
    fn sctp_state(&self) -> &'static str {
        let [c, s] = self.chunks;
        if c & SCTP_INIT == 0 {
            return "OTH";
        }
        if s & SCTP_INIT_ACK == 0 {
            return match (c & SCTP_ABORT != 0, s & SCTP_ABORT != 0) {
                (_, true) => "REJ",
                (true, false) => "RSTOS0",
                (false, false) => "S0",
            };
        }
        let all = c | s;
        if c & SCTP_ABORT != 0 {
            "RSTO"
        } else if s & SCTP_ABORT != 0 {
            "RSTR"
        } else if all & (SCTP_SHUTDOWN_ACK | SCTP_SHUTDOWN_COMPLETE) != 0 {
            "SF"
        } else if c & SCTP_SHUTDOWN != 0 {
            "S2"
        } else if s & SCTP_SHUTDOWN != 0 {
            "S3"
        } else {
            "S1"
        }
    }
}

/// A flow whose record is due, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub flow: Flow,
    pub ended_by: EndedBy,
}

/// The fields of a packed header that a flow needs.
struct Row {
    ts: i64,
    flags: u16,
    seq: u32,
    ack: u32,
    wire_len: u32,
    payload_len: u32,
    off: u32,
    caplen: u32,
    src: Endpoint,
    dst: Endpoint,
    version: u8,
    proto: u8,
}

impl Row {
    fn read(block: &[u8], i: usize) -> Option<Row> {
        let r: [u8; RECORD_SIZE] = array(block, i.checked_mul(RECORD_SIZE)?)?;
        let u32at = |o: usize| u32::from_le_bytes([r[o], r[o + 1], r[o + 2], r[o + 3]]);
        let u16at = |o: usize| u16::from_le_bytes([r[o], r[o + 1]]);
        let ip = |o: usize| -> [u8; 16] { array(&r, o).unwrap_or([0; 16]) };
        Some(Row {
            ts: i64::from_le_bytes(array(&r, 0)?),
            flags: u16at(74),
            seq: u32at(28),
            ack: u32at(32),
            wire_len: u32at(12),
            payload_len: u32at(16),
            off: u32at(20),
            caplen: u32at(24),
            src: (ip(36), u16at(68)),
            dst: (ip(52), u16at(70)),
            version: r[76],
            proto: r[77],
        })
    }
}

/// (protocol, IP version, lower endpoint, higher endpoint)
type Key = (u8, u8, Endpoint, Endpoint);

fn key(proto: u8, version: u8, a: Endpoint, b: Endpoint) -> Key {
    if a <= b {
        (proto, version, a, b)
    } else {
        (proto, version, b, a)
    }
}

/// The UDP flows of one source on one partition.
#[derive(Clone, Debug)]
pub struct FlowTable {
    flows: HashMap<Key, Flow>,
    pub timeout_us: i64,
    pub max_flows: usize,
    next_sweep: i64,
    next_seq: u64,
    /// flows ended to bound memory, in all
    pub evicted: u64,
    /// flows ended, in the order their records are due; taken with [`FlowTable::take`]
    ended: Vec<Ended>,
}

impl Default for FlowTable {
    fn default() -> Self {
        FlowTable::new(INACTIVITY_TIMEOUT_US, MAX_FLOWS)
    }
}

impl FlowTable {
    pub fn new(timeout_us: i64, max_flows: usize) -> Self {
        FlowTable {
            flows: HashMap::new(),
            timeout_us,
            max_flows: max_flows.max(1),
            next_sweep: i64::MIN,
            next_seq: 0,
            evicted: 0,
            ended: Vec::new(),
        }
    }

    pub fn open_flows(&self) -> usize {
        self.flows.len()
    }

    /// A batch: its header block (80 bytes per packet; rows other than UDP, ICMP and
    /// SCTP are skipped) and payload blob.
    pub fn process(&mut self, block: &[u8], blob: &[u8]) {
        let mut now = i64::MIN;
        for i in 0..block.len() / RECORD_SIZE {
            let Some(row) = Row::read(block, i) else { break };
            if matches!((row.proto, row.version), (PROTO_UDP | PROTO_SCTP, _) | (PROTO_ICMP, 4) | (PROTO_ICMP6, 6)) {
                now = now.max(row.ts);
                self.packet(&row, blob);
            }
        }
        if now != i64::MIN && now >= self.next_sweep {
            self.next_sweep = now.saturating_add(SWEEP_INTERVAL_US);
            self.expire(now);
        }
        if self.flows.len() > self.max_flows {
            self.evict();
        }
    }

    fn packet(&mut self, row: &Row, blob: &[u8]) {
        let (src, dst) = (row.src, row.dst);
        let key = key(row.proto, row.version, src, dst);
        if let Some(flow) = self.flows.get(&key) {
            if row.ts.saturating_sub(flow.end_ts_us) > self.timeout_us {
                // idle past the timeout: its record, and a new flow from this packet
                if let Some(flow) = self.flows.remove(&key) {
                    self.ended.push(Ended { flow, ended_by: EndedBy::Timeout });
                }
            }
        }
        let seq = &mut self.next_seq;
        let flow = self.flows.entry(key).or_insert_with(|| {
            *seq += 1;
            let flip = if row.proto == PROTO_UDP {
                LIKELY_SERVER_PORTS.contains(&src.1) && !LIKELY_SERVER_PORTS.contains(&dst.1)
            } else if row.proto == PROTO_SCTP {
                // an INIT ACK first: its receiver sent the INIT (an INIT's sender is the
                // client, and so is the first sender of an association seen midway)
                row.flags & SCTP_INIT_ACK != 0 && row.flags & SCTP_INIT == 0
            } else {
                // a reply first: the requester (its port is the request type) is the client
                let requests: &[u8] = if row.proto == PROTO_ICMP6 { &ICMP6_REQUESTS } else { &ICMP4_REQUESTS };
                !requests.iter().any(|t| u16::from(*t) == src.1) && requests.iter().any(|t| u16::from(*t) == dst.1)
            };
            let (client, server) = if flip { (dst, src) } else { (src, dst) };
            Flow {
                proto: row.proto,
                client,
                server,
                version: row.version,
                start_ts_us: row.ts,
                end_ts_us: row.ts,
                packets: [0; 2],
                bytes: [0; 2],
                frame_bytes: [0; 2],
                service: None,
                icmp: None,
                quoted: None,
                path_mtu: None,
                chunks: [0; 2],
                attempts: 0,
                seq: *seq,
            }
        });
        let side = usize::from(src != flow.client);
        flow.packets[side] += 1;
        flow.bytes[side] += u64::from(row.payload_len);
        flow.frame_bytes[side] += u64::from(row.wire_len);
        flow.start_ts_us = flow.start_ts_us.min(row.ts);
        flow.end_ts_us = flow.end_ts_us.max(row.ts);
        let start = row.off as usize;
        let payload = || blob.get(start..start.saturating_add(row.caplen as usize)).unwrap_or(&[]);
        if row.proto == PROTO_SCTP {
            // no service: Zeek analyses no SCTP, and UDP's byte checks do not fit chunks
            flow.chunks[side] |= row.flags;
        } else if row.proto != PROTO_UDP {
            flow.icmp_message(row, side as u8, payload());
        } else if flow.service.is_none() && flow.attempts < SERVICE_ATTEMPTS && row.caplen > 0 {
            flow.attempts += 1;
            flow.service = Service::of(payload(), src.1, dst.1);
        }
    }

    /// End the flows idle for the timeout at capture time `now_us`.
    pub fn expire(&mut self, now_us: i64) {
        let timeout = self.timeout_us;
        self.end_where(|f| now_us.saturating_sub(f.end_ts_us) > timeout, EndedBy::Timeout);
    }

    /// End every flow (end of input).
    pub fn flush(&mut self) {
        self.end_where(|_| true, EndedBy::EndOfInput);
    }

    fn end_where(&mut self, due: impl Fn(&Flow) -> bool, why: EndedBy) {
        let mut keys: Vec<(i64, u64, Key)> =
            self.flows.iter().filter(|(_, f)| due(f)).map(|(k, f)| (f.start_ts_us, f.seq, *k)).collect();
        keys.sort_unstable();
        for (_, _, key) in keys {
            if let Some(flow) = self.flows.remove(&key) {
                self.ended.push(Ended { flow, ended_by: why });
            }
        }
    }

    fn evict(&mut self) {
        let excess = self.flows.len().saturating_sub(self.max_flows);
        let mut idle: Vec<(i64, u64, Key)> = self.flows.iter().map(|(k, f)| (f.end_ts_us, f.seq, *k)).collect();
        idle.sort_unstable();
        let mut out: Vec<Flow> = idle.into_iter().take(excess).filter_map(|(_, _, k)| self.flows.remove(&k)).collect();
        out.sort_unstable_by_key(|f| (f.start_ts_us, f.seq));
        self.evicted += out.len() as u64;
        self.ended.extend(out.into_iter().map(|flow| Ended { flow, ended_by: EndedBy::Evicted }));
    }

    /// The flows ended since the last call, in the order their records are due.
    pub fn take(&mut self) -> Vec<Ended> {
        std::mem::take(&mut self.ended)
    }

    // --- checkpoints ---------------------------------------------------------------------

    /// The table's state (flows held, settings, counters), versioned and CRC-checked.
    /// Flows already ended must have been taken.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut w = W(Vec::with_capacity(64 + self.flows.len() * 96));
        w.i64(self.timeout_us);
        w.u64(self.max_flows as u64);
        w.i64(self.next_sweep);
        w.u64(self.next_seq);
        w.u64(self.evicted);
        let mut flows: Vec<&Flow> = self.flows.values().collect();
        flows.sort_unstable_by_key(|f| f.seq); // the same table, the same bytes
        w.u64(flows.len() as u64);
        for f in flows {
            w.u8(f.proto);
            for (ip, port) in [f.client, f.server] {
                w.raw(&ip);
                w.u16(port);
            }
            w.u8(f.version);
            w.i64(f.start_ts_us);
            w.i64(f.end_ts_us);
            for v in f.packets.iter().chain(&f.bytes).chain(&f.frame_bytes) {
                w.u64(*v);
            }
            w.ou8(f.service.and_then(|s| Service::ALL.iter().position(|x| *x == s)).map(|i| i as u8));
            w.b(f.icmp.is_some());
            if let Some(m) = f.icmp {
                w.raw(&[m.icmp_type, m.code, m.side]);
            }
            w.b(f.quoted.is_some());
            if let Some(q) = f.quoted {
                w.raw(&[q.version, q.proto]);
                for (ip, port) in [q.src, q.dst] {
                    w.raw(&ip);
                    w.u16(port);
                }
            }
            w.ou32(f.path_mtu);
            w.u16(f.chunks[0]);
            w.u16(f.chunks[1]);
            w.u8(f.attempts);
            w.u64(f.seq);
        }
        frame(MAGIC, VERSION, &w.0)
    }

    /// The table a [`FlowTable::snapshot`] was taken of (this version's, or version 2's:
    /// a checkpoint from before SCTP, whose flows have no chunk types); an error says what
    /// is wrong.
    pub fn restore(data: &[u8]) -> Res<FlowTable> {
        // the envelope's version (magic, then a big-endian u16; state_bytes::frame)
        let format = match data.get(4..6) {
            Some(&[a, b]) if &data[..4] == MAGIC && u16::from_be_bytes([a, b]) == 2 => 2,
            _ => VERSION,
        };
        let mut r = R::new("UDP flow table", unframe("UDP flow table", MAGIC, format, data)?);
        let mut t = FlowTable::new(r.i64()?, r.u64()? as usize);
        t.next_sweep = r.i64()?;
        t.next_seq = r.u64()?;
        t.evicted = r.u64()?;
        let n = r.count(91)?;
        for _ in 0..n {
            let proto = r.u8()?;
            let client = (r.take::<16>()?, r.u16()?);
            let server = (r.take::<16>()?, r.u16()?);
            let version = r.u8()?;
            let (start_ts_us, end_ts_us) = (r.i64()?, r.i64()?);
            let mut v = [0u64; 6];
            for x in &mut v {
                *x = r.u64()?;
            }
            let service = match r.ou8()? {
                None => None,
                Some(i) => Some(*Service::ALL.get(i as usize).ok_or_else(|| r.err("service"))?),
            };
            let icmp = if r.b()? {
                let [icmp_type, code, side] = r.take::<3>()?;
                Some(IcmpMessage { icmp_type, code, side })
            } else {
                None
            };
            let quoted = if r.b()? {
                let [version, qproto] = r.take::<2>()?;
                let src = (r.take::<16>()?, r.u16()?);
                let dst = (r.take::<16>()?, r.u16()?);
                Some(Quoted { version, proto: qproto, src, dst })
            } else {
                None
            };
            let path_mtu = r.ou32()?;
            let chunks = if format >= 3 { [r.u16()?, r.u16()?] } else { [0; 2] };
            let flow = Flow {
                proto,
                client,
                server,
                version,
                start_ts_us,
                end_ts_us,
                packets: [v[0], v[1]],
                bytes: [v[2], v[3]],
                frame_bytes: [v[4], v[5]],
                service,
                icmp,
                quoted,
                path_mtu,
                chunks,
                attempts: r.u8()?,
                seq: r.u64()?,
            };
            t.flows.insert(key(proto, version, client, server), flow);
        }
        if !r.done() {
            return Err(r.err("trailing bytes"));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Packet;

    fn ip4(last: u8) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, 0, 0, last]);
        a
    }

    /// A UDP packet: `(ts, src, sport, dst, dport, payload)`, addresses 10.0.0.x.
    type Udp<'a> = (i64, u8, u16, u8, u16, &'a [u8]);

    /// A header block and blob of UDP packets.
    fn batch(ps: &[Udp]) -> (Vec<u8>, Vec<u8>) {
        let (mut block, mut blob) = (Vec::new(), Vec::new());
        for &(ts, s, sp, d, dp, payload) in ps {
            let p = Packet {
                ts_us: ts,
                frame: 1,
                wire_len: 42 + payload.len() as u32,
                payload_len: payload.len() as u32,
                src_ip: ip4(s),
                dst_ip: ip4(d),
                src_port: sp,
                dst_port: dp,
                ip_version: 4,
                proto: PROTO_UDP,
                wscale: -1,
                ..Packet::default()
            };
            p.write(&mut block, blob.len() as u32, payload.len() as u32);
            blob.extend_from_slice(payload);
        }
        (block, blob)
    }

    fn run(t: &mut FlowTable, ps: &[Udp]) -> Vec<Ended> {
        let (block, blob) = batch(ps);
        t.process(&block, &blob);
        t.take()
    }

    const DNS_Q: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01";
    const DNS_R: &[u8] = b"\x12\x34\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01";

    #[test]
    fn a_query_and_its_answer_are_one_flow() {
        let mut t = FlowTable::default();
        assert!(run(&mut t, &[(1000, 1, 40000, 2, 53, DNS_Q), (2000, 2, 53, 1, 40000, DNS_R)]).is_empty());
        t.flush();
        let [e] = t.take().try_into().unwrap();
        let f = e.flow;
        assert_eq!((f.client, f.server), ((ip4(1), 40000), (ip4(2), 53)));
        assert_eq!((f.packets, f.bytes, f.start_ts_us, f.end_ts_us), ([1, 1], [19, 19], 1000, 2000));
        assert_eq!((f.service, f.conn_state(), e.ended_by), (Some(Service::Dns), "SF", EndedBy::EndOfInput));
    }

    #[test]
    fn an_answer_first_is_turned_around() {
        let mut t = FlowTable::default();
        run(&mut t, &[(1000, 2, 53, 1, 40000, DNS_R)]);
        t.flush();
        let [e] = t.take().try_into().unwrap();
        assert_eq!((e.flow.client, e.flow.packets, e.flow.conn_state()), ((ip4(1), 40000), [0, 1], "SHR"));
    }

    #[test]
    fn idle_past_the_timeout_is_a_new_flow_and_the_sweep_ends_the_idle() {
        let mut t = FlowTable::default();
        run(&mut t, &[(0, 1, 1000, 2, 2000, b"a"), (0, 3, 1000, 2, 2000, b"b")]);
        let ended = run(&mut t, &[(60_000_001, 1, 1000, 2, 2000, b"c")]);
        // the first flow's own packet ends it; the sweep after the batch ends the other
        let kinds: Vec<_> = ended.iter().map(|e| (e.flow.client.0[3], e.ended_by)).collect();
        assert_eq!(kinds, vec![(1, EndedBy::Timeout), (3, EndedBy::Timeout)]);
        assert_eq!(t.open_flows(), 1);
    }

    #[test]
    fn memory_is_bounded_the_idle_longest_go_first() {
        let mut t = FlowTable::new(INACTIVITY_TIMEOUT_US, 2);
        let ended = run(&mut t, &[(10, 1, 1, 2, 2, b""), (5, 3, 1, 2, 2, b""), (20, 4, 1, 2, 2, b"")]);
        assert_eq!(ended.len(), 1);
        assert_eq!((ended[0].flow.client.0[3], ended[0].ended_by, t.evicted), (3, EndedBy::Evicted, 1));
    }

    #[test]
    fn snapshot_and_restore_go_on_as_the_original() {
        let ps: Vec<Udp> = (0..50)
            .map(|i| (i64::from(i) * 1_000_000, (i % 7) as u8, 5000 + (i % 5) as u16, 99, 53, if i % 2 == 0 { DNS_Q } else { b"x" }))
            .collect();
        let mut a = FlowTable::default();
        let mut out_a = run(&mut a, &ps[..20]);
        let data = a.snapshot();
        let mut b = FlowTable::restore(&data).unwrap();
        assert_eq!(b.snapshot(), data);
        let mut out_b = out_a.clone();
        out_a.extend(run(&mut a, &ps[20..]));
        out_b.extend(run(&mut b, &ps[20..]));
        a.flush();
        b.flush();
        out_a.extend(a.take());
        out_b.extend(b.take());
        assert_eq!(out_a, out_b);
        assert!(FlowTable::restore(&data[..data.len() - 1]).is_err());
        assert!(FlowTable::restore(b"garbage").is_err());
    }

    /// An ICMPv4 row from 10.0.0.`s` to 10.0.0.`d` as the decoder writes it; `msg`:
    /// type, code and the rest of the header.
    fn icmp_row(ts: i64, (s, d): (u8, u8), (icmp_type, code, rest): (u8, u8, u32), payload: &[u8],
                out: &mut (Vec<u8>, Vec<u8>)) {
        let (sport, dport, _) = crate::community_id::icmp_ports(PROTO_ICMP, icmp_type, code);
        let p = Packet {
            ts_us: ts,
            wire_len: 42 + payload.len() as u32,
            payload_len: payload.len() as u32,
            seq: u32::from(icmp_type) << 8 | u32::from(code),
            ack: rest,
            src_ip: ip4(s),
            dst_ip: ip4(d),
            src_port: sport,
            dst_port: dport,
            ip_version: 4,
            proto: PROTO_ICMP,
            wscale: -1,
            ..Packet::default()
        };
        p.write(&mut out.0, out.1.len() as u32, payload.len() as u32);
        out.1.extend_from_slice(payload);
    }

    #[test]
    fn an_echo_and_its_reply_are_one_icmp_flow_even_reply_first() {
        let mut t = FlowTable::default();
        let mut b = (Vec::new(), Vec::new());
        icmp_row(100, (2, 1), (0, 0, 0x0001_0001), b"ping", &mut b); // the reply came first
        icmp_row(200, (1, 2), (8, 0, 0x0001_0002), b"ping", &mut b);
        icmp_row(300, (2, 1), (0, 0, 0x0001_0002), b"ping", &mut b);
        t.process(&b.0, &b.1);
        t.flush();
        let [e] = t.take().try_into().unwrap();
        let f = e.flow;
        assert_eq!((f.proto, f.client.0[3], f.packets, f.conn_state()), (PROTO_ICMP, 1, [1, 2], "OTH"));
        assert_eq!(f.icmp.map(|m| (m.icmp_type, m.code)), Some((8, 0)));
        assert_eq!((f.quoted, f.path_mtu), (None, None));
    }

    #[test]
    fn an_error_keeps_what_it_quotes_and_the_smallest_mtu() {
        // a router (.9) tells .1 its UDP datagram to .2:53 needs fragmenting, twice
        let mut quoted = vec![0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        quoted.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 40, 0, 0]);
        let mut t = FlowTable::default();
        let mut b = (Vec::new(), Vec::new());
        icmp_row(100, (9, 1), (3, 4, 1400), &quoted, &mut b);
        icmp_row(200, (9, 1), (3, 4, 1280), &quoted, &mut b);
        icmp_row(300, (9, 1), (3, 3, 0), &quoted[..10], &mut b); // another code: another flow; quote cut short
        t.process(&b.0, &b.1);
        t.flush();
        let ended = t.take();
        assert_eq!(ended.len(), 2);
        let f = &ended[0].flow;
        assert_eq!((f.client.0[3], f.packets, f.path_mtu), (9, [2, 0], Some(1280)));
        let q = f.quoted.unwrap();
        assert_eq!((q.proto, q.src, q.dst), (17, (ip4(1), 40000), (ip4(2), 53)));
        assert_eq!((ended[1].flow.icmp.unwrap().code, ended[1].flow.quoted, ended[1].flow.path_mtu), (3, None, None));
        // the same table state, checkpointed, gives the same bytes back
        let mut t2 = FlowTable::default();
        t2.process(&b.0, &b.1);
        let data = t2.snapshot();
        assert_eq!(FlowTable::restore(&data).unwrap().snapshot(), data);
    }

    /// An SCTP row from 10.0.0.`s`:`sp` to 10.0.0.`d`:`dp` carrying chunk types `chunks`
    /// (decode/transport.rs's `tcp_flags` bits) and `len` bytes of chunks.
    fn sctp_row(ts: i64, (s, sp): (u8, u16), (d, dp): (u8, u16), chunks: &[u8], len: u32,
                out: &mut (Vec<u8>, Vec<u8>)) {
        let p = Packet {
            ts_us: ts,
            wire_len: 46 + len,
            payload_len: len,
            seq: 0xA1B2_C3D4,
            src_ip: ip4(s),
            dst_ip: ip4(d),
            src_port: sp,
            dst_port: dp,
            tcp_flags: chunks.iter().fold(0, |f, t| f | 1 << t),
            ip_version: 4,
            proto: PROTO_SCTP,
            wscale: -1,
            ..Packet::default()
        };
        p.write(&mut out.0, out.1.len() as u32, 0);
    }

    /// An SCTP packet of [`sctp_flow`]: whether the client sends it, its chunk types.
    type Sctp<'a> = (bool, &'a [u8]);

    /// The one flow of SCTP packets between 10.0.0.1:5000 and 10.0.0.2:2905.
    fn sctp_flow(ps: &[Sctp]) -> Flow {
        let mut t = FlowTable::default();
        let mut b = (Vec::new(), Vec::new());
        for (i, (client, chunks)) in ps.iter().enumerate() {
            let (c, s) = ((1, 5000), (2, 2905));
            let (from, to) = if *client { (c, s) } else { (s, c) };
            sctp_row(i as i64 * 1000, from, to, chunks, 20, &mut b);
        }
        t.process(&b.0, &b.1);
        t.flush();
        let [e] = t.take().try_into().unwrap();
        e.flow
    }

    #[test]
    fn an_sctp_association_is_one_flow_its_state_from_its_chunks() {
        // INIT, INIT ACK, COOKIE ECHO + DATA, COOKIE ACK + SACK, SHUTDOWN, SHUTDOWN ACK,
        // SHUTDOWN COMPLETE
        let whole: [Sctp; 7] =
            [(true, &[1]), (false, &[2]), (true, &[10, 0]), (false, &[11, 3]), (true, &[7]), (false, &[8]), (true, &[14])];
        let f = sctp_flow(&whole);
        assert_eq!((f.proto, f.client, f.server), (PROTO_SCTP, (ip4(1), 5000), (ip4(2), 2905)));
        assert_eq!((f.packets, f.bytes, f.frame_bytes), ([4, 3], [80, 60], [264, 198]));
        assert_eq!((f.conn_state(), f.service, f.icmp), ("SF", None, None));
        assert_eq!(f.chunks, [1 << 1 | 1 << 10 | 1 | 1 << 7 | 1 << 14, 1 << 2 | 1 << 11 | 1 << 3 | 1 << 8]);
        let cases: [(&[Sctp], &str); 10] = [
            (&whole[..1], "S0"),
            (&[(true, &[1]), (false, &[6])], "REJ"),
            (&[(true, &[1]), (true, &[6])], "RSTOS0"),
            (&whole[..4], "S1"),
            (&whole[..5], "S2"),
            (&[(true, &[1]), (false, &[2]), (false, &[7])], "S3"),
            (&[(true, &[1]), (false, &[2]), (true, &[6])], "RSTO"),
            (&[(true, &[1]), (false, &[2]), (true, &[0]), (false, &[6])], "RSTR"),
            (&[(true, &[0]), (false, &[3])], "OTH"), // seen midway: no INIT
            (&whole[..6], "SF"), // the SHUTDOWN ACK answers the close
        ];
        for (ps, state) in cases {
            assert_eq!(sctp_flow(ps).conn_state(), state, "{ps:?}");
        }
        // the capture starts with the INIT ACK: its receiver is the client
        let f = sctp_flow(&whole[1..]);
        assert_eq!((f.client, f.packets, f.conn_state()), ((ip4(1), 5000), [3, 3], "OTH"));
        let f = sctp_flow(&[(false, &[2]), (true, &[1])]);
        assert_eq!((f.client, f.conn_state()), ((ip4(1), 5000), "S1"));
    }

    #[test]
    fn sctp_chunks_survive_a_snapshot_and_a_version_2_snapshot_restores() {
        let mut t = FlowTable::default();
        let mut b = (Vec::new(), Vec::new());
        sctp_row(10, (1, 5000), (2, 2905), &[1], 20, &mut b);
        sctp_row(20, (2, 2905), (1, 5000), &[2], 20, &mut b);
        t.process(&b.0, &b.1);
        let data = t.snapshot();
        let mut r = FlowTable::restore(&data).unwrap();
        assert_eq!(r.snapshot(), data);
        r.flush();
        assert_eq!(r.take()[0].flow.conn_state(), "S1");
        // version 2 (before SCTP): the same flow's bytes without the 4 bytes of chunk
        // types, just before its attempts (1 byte) and creation order (8 bytes)
        let mut body = unframe("", MAGIC, VERSION, &data).unwrap().to_vec();
        body.drain(body.len() - 13..body.len() - 9);
        let old = frame(MAGIC, 2, &body);
        let mut r = FlowTable::restore(&old).unwrap();
        r.flush();
        let [e] = r.take().try_into().unwrap();
        assert_eq!((e.flow.chunks, e.flow.packets, e.flow.conn_state()), ([0, 0], [1, 1], "OTH"));
        assert!(FlowTable::restore(&frame(MAGIC, 1, &body)).unwrap_err().contains("version 1"));
    }

    #[test]
    fn an_icmp_error_quoting_sctp_keeps_its_ports() {
        let mut quoted = vec![0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 132, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        quoted.extend_from_slice(&[0x13, 0x88, 0x0b, 0x59, 1, 2, 3, 4]);
        let mut t = FlowTable::default();
        let mut b = (Vec::new(), Vec::new());
        icmp_row(100, (2, 1), (3, 3, 0), &quoted, &mut b);
        t.process(&b.0, &b.1);
        t.flush();
        let q = t.take()[0].flow.quoted.unwrap();
        assert_eq!((q.proto, q.src, q.dst), (PROTO_SCTP, (ip4(1), 5000), (ip4(2), 2905)));
    }

    #[test]
    fn services_from_bytes_and_ports() {
        let mut dhcp = vec![0u8; 244];
        dhcp[236..240].copy_from_slice(&[0x63, 0x82, 0x53, 0x63]);
        let mut ntp = vec![0u8; 48];
        ntp[0] = 0x23;
        let quic = [0xC3, 0, 0, 0, 1, 8];
        let cases: [(&[u8], u16, u16, Option<Service>); 9] = [
            (DNS_Q, 40000, 53, Some(Service::Dns)),
            (DNS_Q, 40000, 54, None),
            (&dhcp, 68, 67, Some(Service::Dhcp)),
            (&ntp, 40000, 123, Some(Service::Ntp)),
            (&quic, 50000, 443, Some(Service::Quic)),
            (b"<34>Oct 11", 5000, 514, Some(Service::Syslog)),
            (b"\x30\x26\x02", 5000, 161, Some(Service::Snmp)),
            (b"M-SEARCH * HTTP/1.1\r\n", 5000, 1900, Some(Service::Ssdp)),
            (b"", 5000, 53, None),
        ];
        for (p, sp, dp, want) in cases {
            assert_eq!(Service::of(p, sp, dp), want, "{p:?} {sp} {dp}");
        }
    }

    #[test]
    fn garbage_rows_never_panic() {
        let mut t = FlowTable::default();
        let mut block = vec![0xFFu8; RECORD_SIZE * 3 + 5];
        for i in 0..3 {
            block[i * RECORD_SIZE + 77] = PROTO_UDP;
        }
        t.process(&block, &[]);
        t.flush();
        assert_eq!(t.take().len(), 1);
    }
}
