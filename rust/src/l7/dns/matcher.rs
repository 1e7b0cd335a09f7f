//! DNS query/response matching for one processor partition: Wireshark's `dns.time`
//! transactions (docs/l7.md, `processors/l7/dns.py` says where we differ on purpose).
//!
//! Takes parsed messages ([`super::message`]) with their capture time and roles (UDP
//! datagrams: the QR bit says who is the client; TCP messages: the connection's roles,
//! from [`super::tcp`]); gives [`Record`]s (one per query: answered, superseded, timed
//! out, evicted, closed with its connection or at the end of input) and named counters,
//! both taken by the caller after each call ([`Matcher::take`]).
//!
//! A transaction is keyed by the conversation (TCP connection id or none, the two
//! endpoints, the transaction id) and the question (lower-case name, type). State is
//! bounded: at most `max_pending` waiting queries (the oldest is evicted) and as many
//! recently answered conversations (for telling duplicates from unsolicited responses).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::message::{parse, Answer, Message, FLAG_TC, QR};

/// Wireshark's `dns.retransmission_timer` (5 s): a repeated query less than this long
/// after the first query of its transaction is a retransmission.
pub const RETRANSMISSION_WINDOW_US: i64 = 5_000_000;
/// Waiting queries per matcher; beyond it the oldest is given up (`error: evicted`).
pub const MAX_PENDING: usize = 100_000;
const IXFR: u16 = 251;
const AXFR: u16 = 252;

/// One Wireshark transaction slot: a TCP connection is its own conversation (port reuse).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Conv {
    pub cid: Option<String>,
    pub client_ip: String,
    pub client_port: u16,
    pub server_ip: String,
    pub server_port: u16,
    pub id: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// How a query ended without a response: the record's `error` and its counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    NoResponse,
    Gap,
    Evicted,
}

impl Close {
    fn counter(self) -> &'static str {
        match self {
            Close::NoResponse => "dns_no_response",
            Close::Gap => "dns_gap",
            Close::Evicted => "dns_evicted",
        }
    }
    pub fn error(self) -> &'static str {
        match self {
            Close::NoResponse => "no_response",
            Close::Gap => "gap",
            Close::Evicted => "evicted",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub conv: Conv,
    /// lower-case name (RFC 4343): the question part of the key, with `qtype`
    pub lname: String,
    pub name: String,
    pub qtype: u16,
    pub opcode: u16,
    pub transport: Transport,
    pub ts_us: i64,
    pub retransmissions: u64,
}

/// One `wire.dns` record's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub query: Query,
    pub response_ts_us: Option<i64>,
    pub rcode: Option<u16>,
    pub truncated: bool,
    pub answers: Vec<Answer>,
    pub error: Option<&'static str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answered {
    pub seq: u64,
    pub ts_us: i64,
    pub qtype: u16,
}

type QKey = (Conv, String, u16);

#[derive(Debug, Default)]
pub struct Matcher {
    pub timeout_us: i64,
    pub max_pending: usize,
    /// Order of the next waiting query / answered slot.
    pub next_seq: u64,
    /// Waiting queries in arrival order (a retransmission does not move its transaction).
    pub pending: BTreeMap<u64, Query>,
    index: HashMap<QKey, u64>,
    /// The same queries by conversation, oldest first (almost always one).
    by_conv: HashMap<Conv, Vec<u64>>,
    /// Waiting TCP queries by connection, to close them with their connection.
    by_connection: HashMap<String, BTreeSet<u64>>,
    /// Recently answered conversations, least recently answered first.
    pub answered: HashMap<Conv, Answered>,
    pub answered_order: BTreeMap<u64, Conv>,
    pub out: Vec<Record>,
    pub counts: Vec<(&'static str, u64)>,
}

/// `(id, flags, message)`: the message is None when only the header parsed.
type Parsed = (u16, u16, Option<Message>);

impl Matcher {
    pub fn new(timeout_us: i64, max_pending: usize) -> Self {
        Matcher { timeout_us, max_pending, ..Matcher::default() }
    }

    pub fn count(&mut self, name: &'static str, n: u64) {
        if let Some(c) = self.counts.iter_mut().find(|(k, _)| *k == name) {
            c.1 += n;
        } else {
            self.counts.push((name, n));
        }
    }

    /// The records and counters since the last call.
    pub fn take(&mut self) -> (Vec<Record>, Vec<(&'static str, u64)>) {
        (std::mem::take(&mut self.out), std::mem::take(&mut self.counts))
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Parse; errors are counted. None when not even the header parsed.
    fn parse(&mut self, data: &[u8]) -> Option<Parsed> {
        match parse(data) {
            Ok(m) => Some((m.id, m.flags, Some(m))),
            Err(e) => {
                self.count("dns_parse_error", 1);
                self.count(parse_error_counter(e.reason), 1);
                e.header.map(|(id, flags)| (id, flags, None))
            }
        }
    }

    /// One UDP datagram on a DNS port. The QR bit says who is the client.
    pub fn on_datagram(&mut self, ts_us: i64, src_ip: &str, src_port: u16, dst_ip: &str, dst_port: u16, payload: &[u8]) {
        let Some(parsed) = self.parse(payload) else { return };
        let conv = if parsed.1 & QR != 0 {
            Conv { cid: None, client_ip: dst_ip.to_owned(), client_port: dst_port, server_ip: src_ip.to_owned(), server_port: src_port, id: parsed.0 }
        } else {
            Conv { cid: None, client_ip: src_ip.to_owned(), client_port: src_port, server_ip: dst_ip.to_owned(), server_port: dst_port, id: parsed.0 }
        };
        self.dispatch(parsed, ts_us, conv, Transport::Udp);
    }

    /// One whole message whose roles the caller knows (TCP: the connection's).
    pub fn on_message(&mut self, transport: Transport, ts_us: i64, client: (&str, u16), server: (&str, u16),
                      msg: &[u8], cid: Option<&str>) {
        let Some(parsed) = self.parse(msg) else { return };
        let conv = Conv {
            cid: cid.map(str::to_owned),
            client_ip: client.0.to_owned(),
            client_port: client.1,
            server_ip: server.0.to_owned(),
            server_port: server.1,
            id: parsed.0,
        };
        self.dispatch(parsed, ts_us, conv, transport);
    }

    fn dispatch(&mut self, parsed: Parsed, ts_us: i64, conv: Conv, transport: Transport) {
        let (_, flags, msg) = parsed;
        match (flags & QR == 0, msg) {
            // a query we cannot read is only counted (no question to key it by)
            (true, Some(m)) => self.query(ts_us, conv, transport, m),
            (true, None) => {}
            (false, Some(m)) => self.response(ts_us, conv, m),
            (false, None) => self.broken_response(ts_us, conv, flags),
        }
    }

    fn query(&mut self, ts_us: i64, conv: Conv, transport: Transport, msg: Message) {
        self.count("dns_queries", 1);
        let opcode = (msg.flags >> 11) & 0xF;
        // no question (a cookie-only query, or an odd opcode): keyed by id alone
        let (name, qtype) = msg.questions.into_iter().next().unwrap_or_default();
        let lname = name.to_ascii_lowercase();
        let key = (conv, lname, qtype);
        if let Some(&seq) = self.index.get(&key) {
            let first_ts = self.pending.get(&seq).map_or(ts_us, |q| q.ts_us);
            if ts_us - first_ts < RETRANSMISSION_WINDOW_US {
                if let Some(q) = self.pending.get_mut(&seq) {
                    q.retransmissions += 1;
                }
                self.count("dns_query_retransmission", 1);
                return;
            }
            // Wireshark starts a new transaction and never answers the old one.
            self.count("dns_query_superseded", 1);
            self.close(seq, Close::NoResponse);
        }
        if self.pending.len() >= self.max_pending {
            self.count("dns_pending_overflow", 1);
            if let Some(&oldest) = self.pending.keys().next() {
                self.close(oldest, Close::Evicted);
            }
        }
        let (conv, lname, qtype) = key;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.insert(seq, Query { conv, lname, name, qtype, opcode, transport, ts_us, retransmissions: 0 });
    }

    /// Index a waiting query (also used on restore).
    pub fn insert(&mut self, seq: u64, q: Query) {
        self.index.insert((q.conv.clone(), q.lname.clone(), q.qtype), seq);
        self.by_conv.entry(q.conv.clone()).or_default().push(seq);
        if let Some(cid) = &q.conv.cid {
            self.by_connection.entry(cid.clone()).or_default().insert(seq);
        }
        self.pending.insert(seq, q);
    }

    fn response(&mut self, ts_us: i64, conv: Conv, msg: Message) {
        self.count("dns_responses", 1);
        if let Some(slot) = self.by_conv.get(&conv) {
            let found = match msg.questions.first() {
                Some((name, qtype)) => {
                    let lname = name.to_ascii_lowercase();
                    slot.iter().copied().find(|s| {
                        self.pending.get(s).is_some_and(|q| q.qtype == *qtype && q.lname == lname)
                    })
                }
                None => slot.first().copied(), // no question section: the oldest query with this id
            };
            match found {
                Some(seq) => {
                    if !self.late(seq, ts_us) {
                        self.answer(seq, ts_us, msg.flags, msg.answers, None);
                    }
                }
                None => self.count("dns_question_mismatch", 1),
            }
            return;
        }
        self.unanswerable(&conv);
    }

    /// A response whose header parsed but the rest did not: it answers the query with
    /// its id if there is exactly one (nothing else to tell several apart).
    fn broken_response(&mut self, ts_us: i64, conv: Conv, flags: u16) {
        self.count("dns_responses", 1);
        match self.by_conv.get(&conv).map(|s| s.as_slice()) {
            Some(&[seq]) => {
                if !self.late(seq, ts_us) {
                    self.answer(seq, ts_us, flags, Vec::new(), Some("parse_error"));
                }
            }
            // several queries share the id: cannot tell which
            Some(_) => self.count("dns_unmatched_response", 1),
            None => self.unanswerable(&conv),
        }
    }

    /// Whether the response comes after the query timed out. Checked here, not left to
    /// `tick`, so that the records do not depend on how often tick runs.
    fn late(&mut self, seq: u64, ts_us: i64) -> bool {
        let Some(q) = self.pending.get(&seq) else { return true };
        if ts_us - q.ts_us < self.timeout_us {
            return false;
        }
        self.close(seq, Close::NoResponse);
        self.count("dns_unmatched_response", 1);
        self.count("dns_late_response", 1);
        true
    }

    /// A response with no waiting query: a duplicate, a zone-transfer continuation (AXFR/
    /// IXFR over TCP: many messages with one id) or unsolicited.
    fn unanswerable(&mut self, conv: &Conv) {
        match self.answered.get(conv) {
            None => self.count("dns_unmatched_response", 1),
            Some(a) if (a.qtype == IXFR || a.qtype == AXFR) && conv.cid.is_some() => {
                self.count("dns_xfr_continuation", 1)
            }
            Some(_) => self.count("dns_duplicate_response", 1),
        }
    }

    fn answer(&mut self, seq: u64, ts_us: i64, flags: u16, answers: Vec<Answer>, error: Option<&'static str>) {
        self.count("dns_answered", 1);
        let Some(q) = self.forget(seq) else { return };
        let aseq = self.next_seq;
        self.next_seq += 1;
        if let Some(old) = self.answered.insert(q.conv.clone(), Answered { seq: aseq, ts_us, qtype: q.qtype }) {
            self.answered_order.remove(&old.seq);
        }
        self.answered_order.insert(aseq, q.conv.clone());
        if self.answered.len() > self.max_pending {
            if let Some((_, conv)) = self.answered_order.pop_first() {
                self.answered.remove(&conv);
            }
        }
        self.out.push(Record {
            query: q,
            response_ts_us: Some(ts_us),
            rcode: Some(flags & 0xF),
            truncated: flags & FLAG_TC != 0,
            answers,
            error,
        });
    }

    /// Emit a query that will get no response.
    fn close(&mut self, seq: u64, how: Close) {
        self.count(how.counter(), 1);
        if let Some(q) = self.forget(seq) {
            self.out.push(Record { query: q, response_ts_us: None, rcode: None, truncated: false, answers: Vec::new(), error: Some(how.error()) });
        }
    }

    fn forget(&mut self, seq: u64) -> Option<Query> {
        let q = self.pending.remove(&seq)?;
        self.index.remove(&(q.conv.clone(), q.lname.clone(), q.qtype));
        if let Some(slot) = self.by_conv.get_mut(&q.conv) {
            slot.retain(|&s| s != seq);
            if slot.is_empty() {
                self.by_conv.remove(&q.conv);
            }
        }
        if let Some(cid) = &q.conv.cid {
            if let Some(set) = self.by_connection.get_mut(cid) {
                set.remove(&seq);
                if set.is_empty() {
                    self.by_connection.remove(cid);
                }
            }
        }
        Some(q)
    }

    /// Emit the queries unanswered for `timeout_us` of capture time; forget answered
    /// slots as old.
    pub fn tick(&mut self, now_us: i64) {
        while let Some((&seq, q)) = self.pending.first_key_value() {
            if now_us - q.ts_us < self.timeout_us {
                break;
            }
            self.close(seq, Close::NoResponse);
        }
        while let Some((&aseq, conv)) = self.answered_order.first_key_value() {
            let due = self.answered.get(conv).is_none_or(|a| now_us - a.ts_us >= self.timeout_us);
            if !due {
                break;
            }
            let conv = conv.clone();
            self.answered_order.remove(&aseq);
            self.answered.remove(&conv);
        }
    }

    /// A TCP connection ended: its waiting queries can no longer be answered.
    pub fn close_connection(&mut self, cid: &str, how: Close) {
        let seqs: Vec<u64> = self.by_connection.get(cid).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for seq in seqs {
            self.close(seq, how);
        }
    }

    /// End of input: emit every waiting query without a response.
    pub fn flush(&mut self) {
        while let Some((&seq, _)) = self.pending.first_key_value() {
            self.close(seq, Close::NoResponse);
        }
        self.answered.clear();
        self.answered_order.clear();
    }
}

fn parse_error_counter(reason: super::message::Reason) -> &'static str {
    use super::message::Reason::*;
    match reason {
        Truncated => "dns_parse_error.truncated",
        BadPointer => "dns_parse_error.bad_pointer",
        BadLabelType => "dns_parse_error.bad_label_type",
        NameTooLong => "dns_parse_error.name_too_long",
        BadRdata => "dns_parse_error.bad_rdata",
    }
}
