//! One HTTP/1.x connection: request/response pairing and the per-direction state machine.
//!
//! Takes the in-order bytes of both directions (and gaps, ticks of capture time, the
//! connection's end); gives the completed transactions ([`Txn`], one per request, in
//! the order they complete) and named counter increments, both taken by the caller after
//! every call ([`Connection::take`]). The grammar is [`super::parser`]'s; this module
//! decides what the parser of one direction cannot know on its own, the way Zeek's HTTP
//! analyser does:
//!
//! - which request a response answers: responses pair FIFO with the queued requests
//!   (keep-alive and pipelining), and a 1xx interim response (`100 Continue`, `103 Early
//!   Hints`) is not the final response of its request;
//! - that a response to `HEAD` has no body whatever its `Content-Length` says, and that
//!   a `2xx` response to `CONNECT` is followed by tunnelled bytes, not a body;
//! - where a close-delimited body ends (the connection's end, [`Connection::close`]);
//! - what to do with bytes after `101 Switching Protocols` or an accepted `CONNECT`
//!   (they are not HTTP/1: counted and ignored; after a switch to `h2c`, HTTP/2 without
//!   TLS, they are handed over, [`Connection::handoff`], for the HTTP/2 analyser);
//! - how to go on after missing bytes ([`Connection::gap`]) or a parse error: the
//!   transaction in progress ends with `error`, then bytes are dropped until something
//!   that starts a message (a request line, `HTTP/1.x NNN`, or at a line start a start
//!   line Wireshark takes: [`find_resync`]) and a fresh parser takes over; a request lost
//!   in a gap keeps its response from pairing with the next request, whether its answer
//!   comes before the gap is reported (`orphans`) or after (a stand-in in the queue).
//!
//! Each direction is an explicit small state machine ([`Mode`]):
//!
//! ```text
//! PARSE --gap / parse error--> RESYNC --message start found--> PARSE
//! PARSE --Upgrade or CONNECT request (client side)--> WAIT --answer not 101/2xx--> PARSE
//! PARSE / WAIT --101, or 2xx to CONNECT--> TUNNEL (until the end)
//! ```
//!
//! Bounded: queued requests ([`MAX_PENDING`]), stored body bytes (the caps), header
//! blocks (`max_header_bytes`), resync tails and held bytes ([`MAX_HELD`]). Never
//! panics: every slice of input is taken with `get`.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

use super::parser::{framing, Body, Ev, Fields, Kind, Parser, St};

/// Requests waiting for their response; past this the oldest is dropped (counted).
pub const MAX_PENDING: usize = 1000;
/// Client bytes held after an Upgrade/CONNECT request until the answer says what they are.
pub const MAX_HELD: usize = 64 * 1024;
/// Resync bytes kept for a message start split across segments: a request line (its
/// target up to 8 KiB), a status line start.
pub const REQ_TAIL_LIMIT: usize = 8192 + 64;
pub const RESP_TAIL_LIMIT: usize = 16;

/// The state of one direction (the machine in the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The parser reads the bytes.
    Parse,
    /// After a gap or a parse error: looking for a message start.
    Resync,
    /// Client bytes held until the answer to an Upgrade/CONNECT request.
    Wait,
    /// After 101 or an accepted CONNECT: not HTTP/1, counted and ignored.
    Tunnel,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Parse => "parse",
            Mode::Resync => "resync",
            Mode::Wait => "wait",
            Mode::Tunnel => "tunnel",
        }
    }
}

/// An HTTP/1.1 request upgraded to HTTP/2 (`Upgrade: h2c` answered `101`, RFC 7540
/// section 3.2): what the HTTP/2 analyser needs to go on. The request is HTTP/2's stream
/// 1 (its response comes as HTTP/2 frames), and the bytes after the request and after
/// the 101 are HTTP/2 (the client's preface, the server's SETTINGS...). Taken by the
/// caller right after the call that made it (never in a checkpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handoff {
    pub method: Vec<u8>,
    pub target: Vec<u8>,
    pub host: Option<Vec<u8>>,
    pub req_ts: i64,
    pub req_end_ts: i64,
    pub req_size: u64,
    /// the bytes after the request (the client's) and after the 101 (the server's)
    pub client_bytes: Vec<u8>,
    pub server_bytes: Vec<u8>,
}

/// Why a transaction is incomplete (the record's `error`).
pub const ERRORS: [&str; 4] = ["gap", "parse_error", "truncated", "no_response"];

/// One request and what is known of its response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// First request byte.
    pub req_ts: i64,
    /// Last request byte.
    pub req_end_ts: Option<i64>,
    pub method: Option<Vec<u8>>,
    /// The request target, as sent (set with `method`).
    pub url: Vec<u8>,
    /// Minor version of HTTP/1 (known once the request head is complete).
    pub minor: Option<u8>,
    pub req_headers: Fields,
    /// Stored body bytes (up to the cap); `req_size` counts past it.
    pub req_body: Vec<u8>,
    pub req_size: u64,
    pub req_done: bool,
    /// First byte of the (final) response.
    pub resp_ts: Option<i64>,
    /// Last response byte.
    pub resp_end_ts: Option<i64>,
    /// Of the final response.
    pub status: Option<u16>,
    pub resp_headers: Fields,
    pub resp_body: Vec<u8>,
    pub resp_size: u64,
    pub resp_done: bool,
    /// Index into [`ERRORS`].
    pub error: Option<u8>,
    pub upgrade: Option<Vec<u8>>,
    pub emitted: bool,
    /// A response without a request (never reported).
    pub orphan: bool,
    /// In the pending queue.
    pub queued: bool,
    /// `Some(bits)`: `req_body` is already what the record shows (it was redacted when a
    /// checkpoint was written: `state.rs`, `redact::at_rest`), and `bits` are the
    /// `Finding` bits of the body as it was sent. None: `req_body` is as sent.
    pub req_body_redacted: Option<u8>,
    /// A start line (request or final response) Wireshark takes although it is not
    /// HTTP/1.x grammar (`parser::tolerated_line`): the `HTTP_MALFORMED` finding.
    pub malformed: bool,
}

const GAP: u8 = 0;
const PARSE_ERROR: u8 = 1;
const TRUNCATED: u8 = 2;
const NO_RESPONSE: u8 = 3;

/// One direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    pub parser: Parser,
    pub mode: Mode,
    /// The transaction whose message is being parsed (None: between messages).
    pub cur: Option<u64>,
    /// RESYNC: bytes kept for a message start split across segments.
    pub tail: Vec<u8>,
    /// Capture time of the bytes being parsed.
    pub ts: i64,
    /// ... of the last byte seen in this direction.
    pub last_ts: i64,
    /// Body bytes kept per message.
    pub cap: u64,
    /// Status of the response being parsed (interim ones included; 0 before its status).
    pub status: u16,
    /// The message being parsed switches protocols when it completes (an Upgrade or
    /// CONNECT request; a 101, or a 2xx to CONNECT).
    pub switch: bool,
    /// The response being parsed is a 101 without its upgrade fields (see `head`).
    pub bogus_101: bool,
}

impl Side {
    fn new(kind: Kind, cap: u64, max_header: usize) -> Self {
        Side {
            parser: Parser::new(kind, max_header),
            mode: Mode::Parse,
            cur: None,
            tail: Vec::new(),
            ts: 0,
            last_ts: 0,
            cap,
            status: 0,
            switch: false,
            bogus_101: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Req,
    Resp,
}

/// The connection's HTTP state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Which direction (0 or 1) sends the requests.
    pub client: u8,
    pub timeout: i64,
    /// (boxed: a B-tree node holds room for 11 entries, and a connection keeps its map's
    /// first node while it lives: 11 boxes, not 11 transactions of ~400 bytes each)
    pub txns: BTreeMap<u64, Box<Txn>>,
    pub next_id: u64,
    /// Requests whose final response has not ended yet, oldest first.
    pub pending: VecDeque<u64>,
    pub req: Side,
    pub resp: Side,
    /// WAIT: bytes after an Upgrade/CONNECT request, their capture time, the request,
    /// and whether bytes were lost after them.
    pub held: Vec<u8>,
    pub held_ts: i64,
    pub wait_txn: Option<u64>,
    pub wait_gap: bool,
    /// Responses that began with no request queued since the last request began: the
    /// answers to requests lost in a gap the request direction has not reported yet (its
    /// reassembler reports a hole when the server acknowledges past it, which may be after
    /// the answer was read). A request gap between requests claims one instead of queueing
    /// a stand-in, whose slot would take the next request's response.
    pub orphans: u64,
    /// Completed transactions and counter increments, for the caller (see `take`).
    pub out: Vec<Txn>,
    pub counts: Vec<(&'static str, u64)>,
    /// Transactions that may have no reference left (freed at the end of a call).
    garbage: Vec<u64>,
    /// A switch to HTTP/2 (`h2c`) the caller has not taken yet.
    pub handoff: Option<Handoff>,
}

impl Connection {
    pub fn new(client: u8, body_cap: u64, response_body_cap: u64, max_header_bytes: usize, timeout_us: i64) -> Self {
        Connection {
            client,
            timeout: timeout_us,
            txns: BTreeMap::new(),
            next_id: 0,
            pending: VecDeque::new(),
            req: Side::new(Kind::Request, body_cap, max_header_bytes),
            resp: Side::new(Kind::Response, response_body_cap, max_header_bytes),
            held: Vec::new(),
            held_ts: 0,
            wait_txn: None,
            wait_gap: false,
            orphans: 0,
            out: Vec::new(),
            counts: Vec::new(),
            garbage: Vec::new(),
            handoff: None,
        }
    }

    /// The completed transactions and counter increments since the last call.
    pub fn take(&mut self) -> (Vec<Txn>, Vec<(&'static str, u64)>) {
        (std::mem::take(&mut self.out), std::mem::take(&mut self.counts))
    }

    fn dir(&self, direction: u8) -> Dir {
        if direction == self.client {
            Dir::Req
        } else {
            Dir::Resp
        }
    }

    fn side(&mut self, d: Dir) -> &mut Side {
        match d {
            Dir::Req => &mut self.req,
            Dir::Resp => &mut self.resp,
        }
    }

    fn count(&mut self, name: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        match self.counts.iter_mut().find(|(k, _)| *k == name) {
            Some((_, v)) => *v += n,
            None => self.counts.push((name, n)),
        }
    }

    fn txn(&mut self, id: u64) -> &mut Txn {
        // Every id the state refers to is in the map (it is freed only once no longer
        // referred to); a placeholder keeps a broken invariant from panicking.
        self.txns.entry(id).or_default()
    }

    fn new_txn(&mut self, t: Txn) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.txns.insert(id, Box::new(t));
        id
    }

    fn push_pending(&mut self, id: u64) {
        self.txn(id).queued = true;
        self.pending.push_back(id);
    }

    fn pop_front(&mut self) -> Option<u64> {
        let id = self.pending.pop_front()?;
        self.txn(id).queued = false;
        self.garbage.push(id);
        Some(id)
    }

    /// Free the transactions nothing refers to any more.
    fn collect(&mut self) {
        while let Some(id) = self.garbage.pop() {
            let live = self.txns.get(&id).is_some_and(|t| t.queued)
                || self.req.cur == Some(id)
                || self.resp.cur == Some(id)
                || self.wait_txn == Some(id);
            if !live {
                self.txns.remove(&id);
            }
        }
    }

    // -- the hooks --------------------------------------------------------------------

    /// In-order bytes of `direction`, carried by a segment captured at `ts`.
    pub fn data(&mut self, direction: u8, data: &[u8], ts: i64) {
        if data.is_empty() {
            return;
        }
        let d = self.dir(direction);
        self.side_data(d, data, ts);
        self.collect();
    }

    /// `missing` bytes of `direction` were never captured.
    pub fn gap(&mut self, direction: u8, missing: u64) {
        self.count("http_gaps", 1);
        let d = self.dir(direction);
        if self.side(d).mode == Mode::Tunnel {
            self.count("http_tunnel_bytes_ignored", missing);
        }
        match d {
            Dir::Req => {
                if self.req.mode == Mode::Wait {
                    // The held bytes are no longer contiguous with what follows.
                    self.wait_gap = true;
                    self.collect();
                    return;
                }
                if self.req.mode == Mode::Parse && self.req.cur.is_none() {
                    // Between requests: the bytes lost are the start of a request. Queue a
                    // stand-in (never reported) so that its response does not pair with
                    // the requests after it; unless its response was already read (an
                    // orphan, see `orphans`): then there is no slot to keep.
                    self.count("http_requests_lost_in_gap", 1);
                    if self.orphans > 0 {
                        self.orphans -= 1;
                        self.count("http_lost_requests_answered", 1);
                        self.side_gap(d);
                        self.collect();
                        return;
                    }
                    let ts = self.req.last_ts;
                    let id = self.new_txn(Txn { req_ts: ts, req_end_ts: Some(ts), req_done: true, ..Txn::default() });
                    self.push_pending(id);
                }
            }
            Dir::Resp => {
                if self.resp.mode == Mode::Parse && self.resp.cur.is_none() {
                    if let Some(&t) = self.pending.front() {
                        if self.txn(t).req_done {
                            // Between responses: the bytes lost are the start of the
                            // response to the oldest queued request, which cannot be
                            // resynchronised on. (Pairing it with the next response seen
                            // would shift every pair after it; Wireshark, which pairs a
                            // response with the latest request, agrees on the next pair.)
                            self.lost_response(t);
                        }
                    }
                }
            }
        }
        self.side_gap(d);
        self.collect();
    }

    /// Capture time has advanced: requests unanswered for the timeout are emitted.
    pub fn tick(&mut self, now: i64) {
        while let Some(&id) = self.pending.front() {
            let resp_cur = self.resp.cur;
            let t = self.txn(id);
            // FIFO: if the oldest request is not overdue (or its answer is arriving, or
            // it is still being sent), none behind it is.
            if resp_cur == Some(id) || !t.req_done || now.saturating_sub(t.req_end_ts.unwrap_or(now)) < self.timeout {
                break;
            }
            self.pop_front();
            self.unanswered(id);
        }
        self.collect();
    }

    /// The connection ended: everything still pending is emitted.
    pub fn close(&mut self) {
        if let Some(t) = self.resp.cur {
            if self.resp.mode == Mode::Parse {
                if self.resp.parser.st != St::Close {
                    // cut short: the header block, or the body of announced length, is
                    // not complete
                    if !self.txn(t).orphan {
                        self.count("http_truncated", 1);
                    }
                    self.abort(Dir::Resp, TRUNCATED);
                } else {
                    // a body delimited by the connection's end, which this is
                    self.resp.cur = None;
                    let ts = self.resp.last_ts;
                    self.finish_response(t, ts);
                }
            }
        }
        if let Some(id) = self.req.cur {
            if self.req.mode == Mode::Parse {
                // cut short by the end of the connection
                self.fill_partial(Dir::Req, id);
                self.req.cur = None;
                self.garbage.push(id);
                let ts = self.req.last_ts;
                let t = self.txn(id);
                t.req_done = true;
                t.req_end_ts = Some(ts);
                if t.method.is_none() {
                    t.emitted = true;
                } else if t.resp_done {
                    // answered early (see the test of an early response)
                    t.error.get_or_insert(TRUNCATED);
                    self.emit(id);
                }
                // else still queued: reported below as no_response
            }
        }
        while let Some(id) = self.pop_front() {
            self.unanswered(id);
        }
        self.collect();
    }

    // -- bytes in ---------------------------------------------------------------------

    fn side_data(&mut self, d: Dir, data: &[u8], ts: i64) {
        {
            let s = self.side(d);
            s.ts = ts;
            if ts > s.last_ts {
                s.last_ts = ts;
            }
        }
        let mut buf: Cow<'_, [u8]> = Cow::Borrowed(data);
        let mut pos = 0;
        while pos < buf.len() {
            match self.side(d).mode {
                Mode::Parse => pos = self.parse(d, &buf, pos),
                Mode::Resync => {
                    let limit = if d == Dir::Req { REQ_TAIL_LIMIT } else { RESP_TAIL_LIMIT };
                    let rest = buf.get(pos..).unwrap_or_default();
                    let joined = if self.side(d).tail.is_empty() {
                        None
                    } else {
                        let mut v = std::mem::take(&mut self.side(d).tail);
                        v.extend_from_slice(rest);
                        Some(v)
                    };
                    // (no tail: these bytes start a line, the first after a gap or a
                    // line end)
                    let at_line_start = joined.is_none();
                    let hay: &[u8] = joined.as_deref().unwrap_or(rest);
                    match find_resync(d, hay, at_line_start) {
                        None => {
                            let tail = keep_tail(hay, limit).to_vec();
                            self.count("http_resync_bytes_dropped", (hay.len() - tail.len()) as u64);
                            self.side(d).tail = tail;
                            return;
                        }
                        Some(m) => {
                            self.count("http_resync_bytes_dropped", m as u64);
                            self.restart(d);
                            match joined {
                                Some(v) => {
                                    buf = Cow::Owned(v);
                                    pos = m;
                                }
                                None => pos += m,
                            }
                        }
                    }
                }
                Mode::Wait | Mode::Tunnel => {
                    self.idle(d, &buf, pos);
                    return;
                }
            }
        }
    }

    /// PARSE: feed `data[pos..]` to the parser; return where to go on (the end, a
    /// resync point, or where the mode changed).
    fn parse(&mut self, d: Dir, data: &[u8], mut pos: usize) -> usize {
        let slice_start = pos;
        // where the message in progress began, if in this slice
        let mut begin_at: Option<usize> = None;
        loop {
            let (ev, at) = self.side(d).parser.step(data, pos);
            pos = at;
            match ev {
                Ev::More => return data.len(),
                Ev::Begin => {
                    begin_at = Some(at);
                    self.begin(d);
                }
                Ev::Head(h) => {
                    if let Err(reason) = self.head(d, h) {
                        return self.error(d, data, slice_start, begin_at, reason);
                    }
                }
                Ev::Body(a, b) => self.body(d, data.get(a..b).unwrap_or_default()),
                Ev::Trailers(fields) => {
                    // trailer fields are reported with the header fields (as Wireshark
                    // lists them)
                    if let Some(id) = self.side(d).cur {
                        let t = self.txn(id);
                        match d {
                            Dir::Req => t.req_headers.extend(fields),
                            Dir::Resp => t.resp_headers.extend(fields),
                        }
                    }
                }
                Ev::Complete => match self.complete(d, data, pos) {
                    Ok(None) => {}
                    Ok(Some(end)) => return end,
                    Err(reason) => return self.error(d, data, slice_start, begin_at, reason),
                },
                Ev::Error(reason) => return self.error(d, data, slice_start, begin_at, reason),
            }
            if self.side(d).mode != Mode::Parse {
                return pos;
            }
        }
    }

    /// WAIT / TUNNEL: bytes that are not parsed (held while waiting).
    fn idle(&mut self, d: Dir, data: &[u8], mut pos: usize) {
        let n = data.len();
        if d == Dir::Req && self.req.mode == Mode::Wait {
            let room = MAX_HELD.saturating_sub(self.held.len());
            if room > 0 {
                let chunk = data.get(pos..n.min(pos.saturating_add(room))).unwrap_or_default();
                if self.held.is_empty() {
                    self.held_ts = self.req.ts;
                }
                self.held.extend_from_slice(chunk);
                pos += chunk.len();
            }
        }
        self.count("http_tunnel_bytes_ignored", n.saturating_sub(pos) as u64);
    }

    /// A fresh parser: a message starts at the next byte.
    fn restart(&mut self, d: Dir) {
        if let Some(id) = self.side(d).cur.take() {
            self.garbage.push(id);
        }
        let s = self.side(d);
        s.mode = Mode::Parse;
        s.parser.reset();
        s.switch = false;
        s.bogus_101 = false;
        s.status = 0;
    }

    // -- the parser's events ----------------------------------------------------------

    fn begin(&mut self, d: Dir) {
        match d {
            Dir::Req => {
                let ts = self.req.ts;
                let id = self.new_txn(Txn { req_ts: ts, ..Txn::default() });
                self.req.cur = Some(id);
                self.orphans = 0; // (see `orphans`: a request was seen since)
                self.req.switch = false;
                if self.pending.len() >= MAX_PENDING {
                    if let Some(dropped) = self.pop_front() {
                        self.txn(dropped).emitted = true; // never emitted: its slot is gone
                        self.count("http_pending_dropped", 1);
                    }
                }
                self.push_pending(id);
            }
            Dir::Resp => {
                let ts = self.resp.ts;
                let id = match self.pending.front() {
                    Some(&id) => id,
                    None => {
                        self.count("http_orphan_responses", 1);
                        self.orphans += 1;
                        self.new_txn(Txn { req_ts: ts, orphan: true, ..Txn::default() })
                    }
                };
                let t = self.txn(id);
                t.resp_headers.clear(); // (after an interim response: the final one's only)
                t.resp_ts = Some(ts);
                self.resp.cur = Some(id);
                self.resp.status = 0;
                self.resp.switch = false;
                self.resp.bogus_101 = false;
            }
        }
    }

    fn head(&mut self, d: Dir, h: super::parser::Head) -> Result<(), &'static str> {
        let Some(id) = self.side(d).cur else {
            self.side(d).parser.set_body(Body::None);
            return Ok(());
        };
        let f = framing(&h.fields);
        let mut h = h;
        if let Err((_, at)) = f {
            h.fields.truncate(at); // the fields before the broken one are the message's
        }
        let f = f.map_err(|(reason, _)| reason);
        if h.malformed {
            // tolerated as Wireshark does (parser::tolerated_line): paired, flagged
            self.count("http_malformed", 1);
        }
        match d {
            Dir::Req => {
                let t = self.txn(id);
                t.malformed |= h.malformed;
                t.method = Some(h.method);
                t.url = h.target;
                t.minor = Some(h.minor);
                t.req_headers = h.fields;
                let f = f?;
                let connect = t.method.as_deref() == Some(b"CONNECT");
                let body = if connect || f.upgrade {
                    // A CONNECT request, or one with "Upgrade:" (websocket, h2c), ends
                    // with its head; what the client sends next depends on the answer
                    // (101 / 2xx: another protocol; anything else: more HTTP/1), so it is
                    // held (see `complete`). (A body of an Upgrade request is not read,
                    // as llhttp under httptools did not.)
                    self.req.switch = true;
                    Body::None
                } else if f.te {
                    if !f.chunked {
                        // RFC 9112 section 6.3: a request whose last coding is not
                        // chunked has no determinable length
                        return Err("invalid_transfer_encoding");
                    }
                    Body::Chunked
                } else {
                    Body::Length(f.length.unwrap_or(0))
                };
                self.req.parser.set_body(body);
            }
            Dir::Resp => {
                let status = h.status;
                self.resp.status = status;
                let t = self.txn(id);
                t.resp_headers = h.fields;
                let interim = (100..200).contains(&status) && status != 101;
                if !interim {
                    t.malformed |= h.malformed && !t.orphan;
                    t.status = Some(status);
                    if status == 101 {
                        t.upgrade = Some(upgrade_name(t));
                    } else if (200..300).contains(&status) && t.method.as_deref() == Some(b"CONNECT") {
                        t.upgrade = Some(b"tunnel".to_vec());
                    }
                }
                let head_only = !t.orphan && t.method.as_deref() == Some(b"HEAD");
                let connect = !t.orphan && t.method.as_deref() == Some(b"CONNECT");
                let f = f?;
                let body = if status == 101 && !f.upgrade {
                    // A 101 without `Upgrade:` and `Connection: upgrade`: llhttp ends the
                    // message and stops, and httptools called that a parse error (the
                    // Python analyser's verdict, kept): see `complete`.
                    self.resp.bogus_101 = true;
                    Body::None
                } else if status == 101 || (connect && (200..300).contains(&status)) {
                    // the rest is not HTTP/1: a tunnel once this message completes
                    self.resp.switch = true;
                    Body::None
                } else if head_only || (100..200).contains(&status) || status == 204 || status == 304 {
                    // RFC 9110 sections 9.3.2, 15.2, 15.3.5, 15.4.5: no body, whatever
                    // Content-Length says (it is the length a GET would have had)
                    Body::None
                } else if f.te {
                    if f.chunked {
                        Body::Chunked
                    } else {
                        Body::Close // RFC 9112 section 6.3 rule 4 (responses)
                    }
                } else if let Some(n) = f.length {
                    Body::Length(n)
                } else {
                    // RFC 9112 section 6.3 rule 8: until the connection closes
                    Body::Close
                };
                self.resp.parser.set_body(body);
            }
        }
        Ok(())
    }

    fn body(&mut self, d: Dir, chunk: &[u8]) {
        let Some(id) = self.side(d).cur else { return };
        let cap = self.side(d).cap;
        let t = self.txn(id);
        let (stored, size) = match d {
            Dir::Req => (&mut t.req_body, &mut t.req_size),
            Dir::Resp => (&mut t.resp_body, &mut t.resp_size),
        };
        *size += chunk.len() as u64;
        let room = cap.saturating_sub(stored.len() as u64) as usize;
        if room > 0 {
            stored.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        }
    }

    /// A message is complete; Some(end) if the rest of `data` is not for the parser, an
    /// error if what follows must be resynchronised on.
    fn complete(&mut self, d: Dir, data: &[u8], pos: usize) -> Result<Option<usize>, &'static str> {
        let Some(id) = self.side(d).cur.take() else { return Ok(None) };
        self.garbage.push(id);
        match d {
            Dir::Req => {
                let ts = self.req.ts;
                let t = self.txn(id);
                t.req_done = true;
                t.req_end_ts = Some(ts);
                if t.resp_done {
                    // answered before it was complete (an early error response)
                    self.emit(id);
                }
                if std::mem::take(&mut self.req.switch) {
                    self.req.mode = Mode::Wait;
                    self.wait_txn = Some(id);
                    self.wait_gap = false;
                    self.held.clear();
                    self.held_ts = self.req.ts;
                    self.idle(Dir::Req, data, pos);
                    if self.txn(id).resp_done {
                        self.settle_wait(id); // already answered (early response)
                    }
                    return Ok(Some(data.len()));
                }
                Ok(None)
            }
            Dir::Resp => {
                let status = self.resp.status;
                if (100..200).contains(&status) && status != 101 {
                    // 100 Continue, 102, 103 Early Hints: interim, the final response
                    // follows (RFC 9110 section 15.2)
                    self.count("http_interim_responses", 1);
                    return Ok(None);
                }
                let ts = self.resp.ts;
                // a switch to HTTP/2 without TLS: what the HTTP/2 analyser needs of the
                // request (read before the record takes its fields)
                let h2c = {
                    let t = self.txn(id);
                    (t.upgrade.as_deref() == Some(&b"h2c"[..]) && t.req_done).then(|| Handoff {
                        method: t.method.clone().unwrap_or_default(),
                        target: t.url.clone(),
                        host: t
                            .req_headers
                            .iter()
                            .find(|(n, _)| n.eq_ignore_ascii_case(b"host"))
                            .map(|(_, v)| v.to_vec()),
                        req_ts: t.req_ts,
                        req_end_ts: t.req_end_ts.unwrap_or(t.req_ts),
                        req_size: t.req_size,
                        ..Handoff::default()
                    })
                };
                self.finish_response(id, ts);
                if std::mem::take(&mut self.resp.bogus_101) {
                    return Err("pause_on_connect_upgrade");
                }
                if std::mem::take(&mut self.resp.switch) {
                    // 101 Switching Protocols, or a tunnel after CONNECT: the rest is not
                    // HTTP/1
                    if let Some(mut h) = h2c {
                        // HTTP/2 follows: its bytes are handed over, not ignored
                        h.client_bytes = std::mem::take(&mut self.held);
                        h.server_bytes = data.get(pos..).unwrap_or_default().to_vec();
                        self.start_tunnel();
                        self.count("http_upgrades_h2c", 1);
                        self.handoff = Some(h);
                        return Ok(Some(data.len()));
                    }
                    self.start_tunnel();
                    self.idle(Dir::Resp, data, pos);
                    return Ok(Some(data.len()));
                }
                Ok(None)
            }
        }
    }

    /// A parse error in `data` (in a slice that began at `slice_start`): end the
    /// message, find where to go on.
    fn error(&mut self, d: Dir, data: &[u8], slice_start: usize, begin_at: Option<usize>, reason: &'static str) -> usize {
        self.count("http_parse_error", 1);
        self.count(reason_counter(reason), 1);
        if self.side(d).cur.is_some() {
            self.abort(d, PARSE_ERROR);
        }
        // Go on at the next message start after the start of the failing one (its own
        // start line is never parsed twice, nor are those of the messages before it).
        let failed_at = begin_at.unwrap_or(slice_start).min(data.len());
        let from = begin_at.map_or(slice_start, |b| b + 1).min(data.len());
        if let Some(m) = find_resync(d, data.get(from..).unwrap_or_default(), false) {
            self.count("http_resync_bytes_dropped", (from + m - failed_at) as u64);
            self.restart(d);
            return from + m;
        }
        let limit = if d == Dir::Req { REQ_TAIL_LIMIT } else { RESP_TAIL_LIMIT };
        let tail = keep_tail(data.get(failed_at..).unwrap_or_default(), limit).to_vec();
        self.count("http_resync_bytes_dropped", (data.len() - failed_at - tail.len()) as u64);
        let s = self.side(d);
        s.mode = Mode::Resync;
        s.tail = tail;
        data.len()
    }

    /// The fields of a head cut short, as far as they came (the parser's `partial`).
    fn fill_partial(&mut self, d: Dir, id: u64) {
        let p = self.side(d).parser.partial();
        if d == Dir::Resp && self.resp.parser.st != St::Decide && (p.status != 0 || self.resp.parser.in_head()) {
            self.resp.status = p.status;
        }
        let t = self.txn(id);
        match d {
            Dir::Req => {
                if t.method.is_none() && p.method.is_some() {
                    t.method = p.method;
                    t.url = p.target;
                }
                if t.req_headers.is_empty() {
                    t.req_headers = p.fields;
                }
            }
            Dir::Resp => {
                if t.resp_headers.is_empty() {
                    t.resp_headers = p.fields;
                }
            }
        }
    }

    /// End the message in progress (gap, parse error, truncation).
    fn abort(&mut self, d: Dir, error: u8) {
        let Some(id) = self.side(d).cur else { return };
        self.fill_partial(d, id);
        self.side(d).cur = None;
        self.garbage.push(id);
        match d {
            Dir::Req => {
                let ts = self.req.last_ts;
                let resp_cur = self.resp.cur;
                let t = self.txn(id);
                t.error.get_or_insert(error);
                t.req_done = true;
                t.req_end_ts = Some(ts);
                if t.method.is_none() {
                    // Not even a request line: nothing to report. After a gap it stays
                    // queued as a stand-in (a request did start, its response will come);
                    // garbage is taken off the queue (no telling whether anything answers
                    // it).
                    t.emitted = true;
                    if error == GAP {
                        self.count("http_requests_lost_in_gap", 1);
                        return;
                    }
                    if self.pending.back() == Some(&id) && resp_cur != Some(id) {
                        self.pending.pop_back();
                        self.txn(id).queued = false;
                    }
                    return;
                }
                // An incomplete request stays queued: its response (typically a 400)
                // still pairs with it, and the requests after it keep their responses.
                if t.resp_done {
                    self.emit(id);
                }
            }
            Dir::Resp => {
                let status = self.resp.status;
                let ts = self.resp.last_ts;
                let t = self.txn(id);
                if t.orphan {
                    return;
                }
                t.error.get_or_insert(error);
                if t.status.is_none() && (status >= 200 || status == 101) {
                    // the status line may have been read before the headers broke
                    t.status = Some(status);
                }
                self.finish_response(id, ts);
            }
        }
    }

    fn side_gap(&mut self, d: Dir) {
        if self.side(d).mode == Mode::Tunnel {
            return;
        }
        if self.side(d).cur.is_some() {
            self.abort(d, GAP);
        }
        let s = self.side(d);
        s.cur = None;
        s.mode = Mode::Resync;
        s.tail.clear();
    }

    // -- transactions -----------------------------------------------------------------

    /// The final response to `id` has ended (or was cut).
    fn finish_response(&mut self, id: u64, ts: i64) {
        let t = self.txn(id);
        t.resp_done = true;
        t.resp_end_ts = Some(ts);
        if self.pending.front() == Some(&id) {
            self.pop_front();
        }
        let t = self.txn(id);
        if t.orphan {
            return;
        }
        let upgrade = t.upgrade.is_some();
        if t.req_done {
            self.emit(id);
        }
        if self.wait_txn == Some(id) && !upgrade {
            self.settle_wait(id);
        }
    }

    /// The response to `id` began in bytes not captured.
    fn lost_response(&mut self, id: u64) {
        self.pop_front();
        let t = self.txn(id);
        t.resp_done = true;
        t.error.get_or_insert(GAP);
        if t.req_done {
            self.emit(id);
        }
    }

    /// The Upgrade/CONNECT request `id` was answered: switch or go on with HTTP/1. The
    /// held client bytes are parsed now, before the next response begins, so that it
    /// finds its request queued.
    fn settle_wait(&mut self, id: u64) {
        if self.txn(id).upgrade.is_some() {
            self.start_tunnel();
        } else if self.req.mode == Mode::Wait {
            self.resume();
        }
    }

    /// The answer to the Upgrade/CONNECT request was not a switch: the held bytes are
    /// HTTP/1 again.
    fn resume(&mut self) {
        let held = std::mem::take(&mut self.held);
        let ts = self.held_ts;
        if let Some(id) = self.wait_txn.take() {
            self.garbage.push(id);
        }
        self.restart(Dir::Req);
        if self.wait_gap {
            self.req.mode = Mode::Resync;
            self.req.tail.clear();
        }
        if !held.is_empty() {
            self.side_data(Dir::Req, &held, ts);
        }
    }

    fn start_tunnel(&mut self) {
        self.count("http_tunnels", 1);
        self.resp.mode = Mode::Tunnel;
        if let Some(id) = self.resp.cur.take() {
            self.garbage.push(id);
        }
        self.count("http_tunnel_bytes_ignored", self.held.len() as u64);
        self.held.clear();
        if let Some(id) = self.wait_txn.take() {
            self.garbage.push(id);
        }
        self.req.mode = Mode::Tunnel;
        if let Some(id) = self.req.cur.take() {
            self.garbage.push(id);
        }
    }

    fn unanswered(&mut self, id: u64) {
        let t = self.txn(id);
        if t.method.is_none() {
            // a stand-in for a request lost in a gap
            t.emitted = true;
            return;
        }
        if t.error.is_none() {
            t.error = Some(NO_RESPONSE);
            self.count("http_no_response", 1);
        }
        self.emit(id);
        if self.wait_txn == Some(id) && self.req.mode == Mode::Wait {
            self.resume();
        }
    }

    fn emit(&mut self, id: u64) {
        let t = self.txn(id);
        if t.emitted {
            return;
        }
        t.emitted = true;
        if t.method.is_none() {
            return; // no request line was parsed: there is no request to report
        }
        // the record is built from the fields as they are now; nothing reads them after
        let rec = Txn {
            req_headers: std::mem::take(&mut t.req_headers),
            req_body: std::mem::take(&mut t.req_body),
            resp_headers: std::mem::take(&mut t.resp_headers),
            resp_body: std::mem::take(&mut t.resp_body),
            url: std::mem::take(&mut t.url),
            ..t.clone()
        };
        self.out.push(rec);
    }
}

/// The protocol a 101 switches to: the first one of the response's (else the
/// request's) `Upgrade:` ("websocket", "h2c", "tls/1.2"), lower-cased.
fn upgrade_name(t: &Txn) -> Vec<u8> {
    for fields in [&t.resp_headers, &t.req_headers] {
        for (name, value) in fields {
            if name.eq_ignore_ascii_case(b"upgrade") {
                let first = value.split(|&b| b == b',').next().unwrap_or_default();
                let v = super::parser::trim(first).to_ascii_lowercase();
                return if v.is_empty() { b"unknown".to_vec() } else { v };
            }
        }
    }
    b"unknown".to_vec()
}

/// What to keep of unmatched resync bytes: a message start not complete yet can only be
/// in the bytes after the last line feed.
fn keep_tail(buf: &[u8], limit: usize) -> &[u8] {
    let tail = match buf.iter().rposition(|&b| b == b'\n') {
        Some(nl) => buf.get(nl + 1..).unwrap_or_default(),
        None => buf,
    };
    tail.get(tail.len().saturating_sub(limit)..).unwrap_or_default()
}

/// Where the first message start is in `hay`: a request line (a method llhttp knows, a
/// target of 1 to 8192 non-space bytes, `HTTP/1.0` or `HTTP/1.1`, a line end) or a
/// status line start (`HTTP/1.x NNN`). A match may be anywhere (garbage does not end
/// in '\n').
pub fn find_start(d: Dir, hay: &[u8]) -> Option<usize> {
    match d {
        Dir::Resp => {
            let mut from = 0;
            while let Some(i) = find(hay.get(from..)?, b"HTTP/1.") {
                let at = from + i;
                let tail = hay.get(at + 7..at + 12);
                if let Some(&[minor, sp, a, b, c]) = tail {
                    if (minor == b'0' || minor == b'1') && sp == b' ' && [a, b, c].iter().all(u8::is_ascii_digit) {
                        return Some(at);
                    }
                }
                from = at + 1;
            }
            None
        }
        Dir::Req => {
            let mut from = 0;
            while let Some(i) = find(hay.get(from..)?, b" HTTP/1.") {
                let at = from + i; // the space before the version
                from = at + 1;
                let ok_version = matches!(hay.get(at + 8), Some(b'0' | b'1'))
                    && (hay.get(at + 9) == Some(&b'\n')
                        || (hay.get(at + 9) == Some(&b'\r') && hay.get(at + 10) == Some(&b'\n')));
                if !ok_version {
                    continue;
                }
                // the target: the non-whitespace run before the space
                let before = hay.get(..at).unwrap_or_default();
                let start = before.iter().rposition(|b| b.is_ascii_whitespace() || *b == 0x0b).map_or(0, |p| p + 1);
                let target_len = at - start;
                if target_len == 0 || target_len > 8192 || start == 0 || hay.get(start - 1) != Some(&b' ') {
                    continue;
                }
                let head = hay.get(..start - 1).unwrap_or_default();
                // the longest method ending there (M-SEARCH before SEARCH, UNLOCK before LOCK)
                let best = super::parser::METHODS.iter().filter(|m| head.ends_with(m)).map(|m| m.len()).max();
                if let Some(len) = best {
                    return Some(start - 1 - len);
                }
            }
            None
        }
    }
}

/// Where resynchronisation goes on in `hay`: the first message start [`find_start`]
/// finds, or a start line Wireshark takes that is not HTTP/1.x grammar (`OPTIONS`,
/// `GET /`, `HTTP/1. 200`: `parser::tolerated_start`) if one comes first. Such a line
/// counts only where a line starts (`hay[0]` if `at_line_start`, else after a line feed)
/// and once its line end came: tshark likewise looks for a start line at the start of a
/// segment only, and a looser pattern anywhere would find requests in bodies.
pub fn find_resync(d: Dir, hay: &[u8], at_line_start: bool) -> Option<usize> {
    let strict = find_start(d, hay);
    let kind = if d == Dir::Req { Kind::Request } else { Kind::Response };
    let limit = strict.unwrap_or(hay.len());
    let mut start = if at_line_start { Some(0) } else { None };
    let mut from = 0;
    loop {
        let line_start = match start.take() {
            Some(s) => s,
            None => match hay.get(from..limit).unwrap_or_default().iter().position(|&b| b == b'\n') {
                Some(i) => from + i + 1,
                None => return strict,
            },
        };
        if line_start >= limit {
            return strict;
        }
        let rest = hay.get(line_start..).unwrap_or_default();
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else { return strict };
        if super::parser::tolerated_start(kind, rest.get(..lf + 1).unwrap_or_default()) {
            return Some(line_start);
        }
        from = line_start + lf;
    }
}

/// The first occurrence of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while let Some(i) = hay.get(from..)?.iter().position(|&b| b == first) {
        let at = from + i;
        if hay.get(at..at + needle.len()) == Some(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The counter of a parse error reason.
pub fn reason_counter(reason: &'static str) -> &'static str {
    match reason {
        "invalid_method" => "http_parse_error.invalid_method",
        "invalid_url" => "http_parse_error.invalid_url",
        "invalid_version" => "http_parse_error.invalid_version",
        "invalid_status" => "http_parse_error.invalid_status",
        "invalid_start_line" => "http_parse_error.invalid_start_line",
        "invalid_header_token" => "http_parse_error.invalid_header_token",
        "invalid_header_value" => "http_parse_error.invalid_header_value",
        "invalid_content_length" => "http_parse_error.invalid_content_length",
        "duplicate_content_length" => "http_parse_error.duplicate_content_length",
        "invalid_transfer_encoding" => "http_parse_error.invalid_transfer_encoding",
        "invalid_chunk_size" => "http_parse_error.invalid_chunk_size",
        "invalid_chunk_data_end" => "http_parse_error.invalid_chunk_data_end",
        "header_too_large" => "http_parse_error.header_too_large",
        "missing_lf" => "http_parse_error.missing_lf",
        "pause_on_connect_upgrade" => "http_parse_error.pause_on_connect_upgrade",
        "content_length_with_transfer_encoding" => "http_parse_error.content_length_with_transfer_encoding",
        _ => "http_parse_error.unknown",
    }
}
