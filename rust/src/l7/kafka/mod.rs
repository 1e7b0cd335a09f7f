//! The Kafka protocol (https://kafka.apache.org/protocol) over one TCP connection.
//!
//! A Kafka connection is a sequence of *frames*, each a big-endian int32 size and that
//! many bytes; the client's frames are requests (a header — API key, API version,
//! correlation id, client id — and the API's body), the server's are responses (the
//! correlation id of the request it answers, and the body). A response says nothing of
//! its API: its layout is that of the request with its correlation id, so the parser
//! keeps the requests waiting ([`Connection::pending`]) and reads each response with its
//! request's API and version. Brokers answer a connection's requests in order; a
//! Produce request with `acks=0` gets no answer.
//!
//! What a [`Message`] keeps: the API, version, correlation id and client id; the topics
//! (names, or ids for the versions that name topics by id, resolved through the
//! connection's Metadata responses when they were seen), partitions, the record counts
//! and bytes of Produce requests and Fetch responses (read from the record batches'
//! headers, [`records`], never decompressed nor kept), the group of the consumer-group
//! calls, the error codes of the response (the first non-zero one and how many), the
//! throttle time. Bodies of the other APIs are read whole when at most [`MAX_BODY`]
//! bytes ([`bodies`]); Produce requests and Fetch responses as they stream ([`walk`]).
//! SASL's authentication bytes are never read.
//!
//! Versions: every version of every API the current Apache Kafka speaks, flexible
//! versions (KIP-482: compact lengths, tagged fields, header v2/v1) included
//! ([`apis`]). A frame whose body cannot be read (an unknown version's layout, garbage)
//! still gives its header's message, with the reason in [`Message::parse_error`].
//!
//! Resynchronisation: the framing is robust — a gap inside a frame whose size is known
//! costs that frame's body only. A gap beyond it, a frame whose header is not a plausible
//! request (or a response to no waiting request), or a capture that starts
//! mid-connection puts the direction out of step: it then waits for a chunk of bytes (a
//! TCP segment's payload: clients and brokers write whole frames) that starts with a
//! plausible frame, and skips the chunks before (counted in [`Direction::skipped`]).
//! Never panics.

pub mod apis;
pub mod bodies;
pub mod records;
#[cfg(test)]
mod tests;
pub mod walk;
pub mod wire;

use std::collections::{HashMap, VecDeque};

use crate::state_bytes::{frame, unframe, Res, R, W};
use records::RecordScan;
use walk::{Stage, Walk};
use wire::{Cur, Short};

/// A frame bigger than this is garbage (Kafka's `socket.request.max.bytes` is 100 MB;
/// a fetch's response is bounded by `fetch.max.bytes`, 50 MB by default).
pub const MAX_FRAME: usize = 256 * 1024 * 1024;
/// Bodies read whole at most (other than Produce requests and Fetch responses); a bigger
/// one is skipped, its message marked `body_too_large`.
pub const MAX_BODY: usize = 1024 * 1024;
/// Bytes of a header at most (a client id is an int16-length string).
const MAX_HEADER: usize = 40 * 1024;
/// Requests waiting for their response at most (the oldest are forgotten beyond).
pub const MAX_PENDING: usize = 1024;
/// Topics named per message at most (the others counted in [`Message::topics_more`]).
pub const MAX_TOPICS: usize = 64;
/// Topic ids remembered per connection at most.
pub const MAX_TOPIC_IDS: usize = 4096;
/// Bytes kept of a client id, a group id, a topic name.
pub const KEEP_TEXT: usize = 256;

/// One request or response, as much of it as a record needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    pub response: bool,
    pub correlation_id: i32,
    /// −1 for a response whose request was not seen
    pub api_key: i16,
    pub api_version: i16,
    pub client_id: Option<String>,
    /// Bytes on the wire, size field included.
    pub size: u64,
    pub topics: Vec<String>,
    pub topics_more: u32,
    pub partitions: u32,
    /// Records (Produce request, Fetch response): data records of the complete batches.
    pub records: Option<u64>,
    /// Bytes of the record sets.
    pub record_bytes: Option<u64>,
    pub batches: u32,
    pub partial_batches: u32,
    pub compression: Option<u8>,
    pub group_id: Option<String>,
    pub acks: Option<i16>,
    pub transactional: bool,
    /// The first non-zero error code of the response (0: none).
    pub error_code: i16,
    /// Non-zero error codes in the response (top level, topics, partitions, groups).
    pub errors: u32,
    pub throttle_ms: Option<i32>,
    /// Why the body (or part of it) could not be read.
    pub parse_error: Option<&'static str>,
    /// A Metadata response's topic ids with their names (id as Kafka prints it, name), at
    /// most [`MAX_TOPIC_IDS`]: for the analyser to name the ids other connections use.
    /// (Not in a checkpoint: a whole-read body's message goes out as it is read.)
    pub topic_ids: Vec<(String, String)>,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(KEEP_TEXT)]).into_owned()
}

impl Message {
    pub fn add_topic(&mut self, name: String) {
        if self.topics.contains(&name) {
            return;
        }
        if self.topics.len() < MAX_TOPICS {
            let mut name = name;
            name.truncate(KEEP_TEXT);
            self.topics.push(name);
        } else {
            self.topics_more += 1;
        }
    }

    pub fn error(&mut self, code: i16) {
        if code != 0 {
            self.errors += 1;
            if self.error_code == 0 {
                self.error_code = code;
            }
        }
    }

    fn scanned(&mut self, scan: &RecordScan, len: usize) {
        *self.records.get_or_insert(0) += scan.records;
        *self.record_bytes.get_or_insert(0) += len as u64;
        self.batches += scan.batches;
        self.partial_batches += scan.partial;
        if self.compression.is_none() {
            self.compression = scan.compression;
        }
    }
}

/// Topic ids (the versions that name topics by id) and their names, learnt from the
/// connection's Metadata responses.
#[derive(Clone, Debug, Default)]
pub struct TopicNames {
    map: HashMap<[u8; 16], String>,
}

impl TopicNames {
    pub fn learn(&mut self, id: [u8; 16], name: String) {
        if id == [0; 16] {
            return;
        }
        if self.map.len() >= MAX_TOPIC_IDS && !self.map.contains_key(&id) {
            self.map.clear(); // bounded: start again (the next Metadata response refills it)
        }
        self.map.insert(id, name);
    }

    /// The topic's name if known, else its id as Kafka prints it.
    pub fn text(&self, id: &[u8; 16]) -> String {
        self.map.get(id).cloned().unwrap_or_else(|| wire::topic_id_text(id))
    }
}

/// A version a client of this API could send: at most two above the highest Kafka 4.4
/// speaks (a newer client), for recognising a request among other bytes.
pub fn plausible_version(key: i16, version: i16) -> bool {
    apis::highest(key).is_some_and(|h| (0..=h.saturating_add(2)).contains(&version))
}

/// A request waiting for its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    pub correlation_id: i32,
    pub api_key: i16,
    pub api_version: i16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Size,
    Header,
    Body,
    Walk,
    Skip,
}

/// One direction's framing.
#[derive(Clone, Debug)]
pub struct Direction {
    response: bool,
    phase: Phase,
    buf: Vec<u8>,
    pos: usize,
    /// Bytes of the current frame not yet taken from the input.
    remaining: usize,
    msg: Message,
    walk: Option<Walk>,
    scan: Option<RecordScan>,
    scan_len: usize,
    /// In step with the frames (false: waiting for a chunk that starts one).
    sync: bool,
    /// Bytes skipped while out of step.
    pub skipped: u64,
    /// Frames whose header was not plausible (the direction then went out of step).
    pub bad_frames: u64,
}

/// What a direction's feed needs of the connection.
struct Shared<'a> {
    pending: &'a mut VecDeque<Pending>,
    names: &'a mut TopicNames,
}

impl Direction {
    fn new(response: bool) -> Self {
        Direction {
            response,
            phase: Phase::Size,
            buf: Vec::new(),
            pos: 0,
            remaining: 0,
            msg: Message::default(),
            walk: None,
            scan: None,
            scan_len: 0,
            sync: true,
            skipped: 0,
            bad_frames: 0,
        }
    }

    /// Bytes held by this direction (bounded by [`MAX_BODY`] plus one chunk).
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    fn reset(&mut self) {
        self.phase = Phase::Size;
        self.buf.clear();
        self.pos = 0;
        self.remaining = 0;
        self.walk = None;
        self.scan = None;
        self.msg = Message::default();
    }

    fn out_of_step(&mut self) {
        self.reset();
        self.sync = false;
    }

    /// Moves up to `want` bytes of `data` (and of the frame) into the buffer.
    fn take(&mut self, data: &mut &[u8], want: usize) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let k = want.min(data.len()).min(self.remaining);
        self.buf.extend_from_slice(&data[..k]);
        *data = &data[k..];
        self.remaining -= k;
    }

    fn feed(&mut self, mut data: &[u8], sh: &mut Shared, out: &mut Vec<Message>) {
        if !self.sync {
            if !self.starts_frame(data, sh) {
                self.skipped += data.len() as u64;
                return;
            }
            self.sync = true;
        }
        loop {
            match self.phase {
                Phase::Size => {
                    if data.is_empty() {
                        return;
                    }
                    self.remaining = 4 - self.buf.len();
                    self.take(&mut data, 4);
                    if self.buf.len() < 4 {
                        return;
                    }
                    let size = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
                    self.buf.clear();
                    let least = if self.response { 4 } else { 10 };
                    if !(least..=MAX_FRAME).contains(&size) {
                        self.bad_frames += 1;
                        self.out_of_step();
                        self.skipped += data.len() as u64;
                        return;
                    }
                    self.remaining = size;
                    self.msg = Message { response: self.response, size: size as u64 + 4, ..Default::default() };
                    self.phase = Phase::Header;
                }
                Phase::Header => {
                    self.take(&mut data, MAX_HEADER);
                    match self.header(sh) {
                        Ok(used) => {
                            self.pos = used;
                            self.body_mode();
                        }
                        Err(Short::Need) if self.remaining > 0 && self.buf.len() < MAX_HEADER => return,
                        Err(_) => {
                            self.bad_frames += 1;
                            self.out_of_step();
                            self.skipped += data.len() as u64;
                            return;
                        }
                    }
                }
                Phase::Body => {
                    self.take(&mut data, usize::MAX);
                    if self.remaining > 0 {
                        return;
                    }
                    let body = &self.buf[self.pos..];
                    let mut c = Cur::new(body);
                    let m = &mut self.msg;
                    let r = if self.response {
                        bodies::response(m.api_key, m.api_version, &mut c, m, sh.names)
                    } else {
                        bodies::request(m.api_key, m.api_version, &mut c, m, sh.names)
                    };
                    match r {
                        Ok(()) => {}
                        Err(Short::Need) => m.parse_error = Some("truncated"),
                        Err(Short::Bad(why)) => m.parse_error = Some(why),
                    }
                    self.finish(sh, out);
                }
                Phase::Walk => {
                    if !self.walk_step(&mut data, sh.names) {
                        return;
                    }
                    if self.walk.as_ref().is_some_and(|w| w.stage == Stage::Done) {
                        self.phase = Phase::Skip; // bytes after the body, if any, are skipped
                    }
                }
                Phase::Skip => {
                    self.buf.clear();
                    self.pos = 0;
                    let k = self.remaining.min(data.len());
                    data = &data[k..];
                    self.remaining -= k;
                    if self.remaining > 0 {
                        return;
                    }
                    self.finish(sh, out);
                }
            }
        }
    }

    /// One step of a streamed body; false when it needs more bytes.
    fn walk_step(&mut self, data: &mut &[u8], names: &TopicNames) -> bool {
        if let Some(scan) = self.scan.as_mut() {
            // a record set: from the buffer first, then straight from the input
            let k = scan.feed(&self.buf[self.pos..]);
            self.pos += k;
            if scan.left > 0 {
                let k = scan.feed(&data[..data.len().min(self.remaining)]);
                *data = &data[k..];
                self.remaining -= k;
            }
            if scan.left > 0 {
                return false;
            }
            let scan = self.scan.take().unwrap_or_default();
            self.msg.scanned(&scan, self.scan_len);
            return true;
        }
        let walk = self.walk.as_mut().expect("a walk in the walk phase");
        let mut c = Cur::new(&self.buf[self.pos..]);
        match walk.step(&mut c, &mut self.msg, names) {
            Ok(Some(n)) => {
                self.pos += c.p;
                if n > self.buf.len() - self.pos + self.remaining {
                    self.msg.parse_error = Some("records_beyond_frame");
                    self.phase = Phase::Skip;
                    return true;
                }
                self.scan = Some(RecordScan::new(n));
                self.scan_len = n;
                true
            }
            Ok(None) => {
                self.pos += c.p;
                true
            }
            Err(Short::Need) => {
                if self.remaining == 0 {
                    self.msg.parse_error = Some("truncated");
                    self.phase = Phase::Skip;
                    return true;
                }
                if self.buf.len() - self.pos > MAX_BODY {
                    self.msg.parse_error = Some("element_too_large");
                    self.phase = Phase::Skip;
                    return true;
                }
                if data.is_empty() {
                    return false;
                }
                // compact, then take the next bytes of the frame
                self.buf.drain(..self.pos);
                self.pos = 0;
                let want = data.len();
                self.take(data, want);
                true
            }
            Err(Short::Bad(why)) => {
                self.msg.parse_error = Some(why);
                self.phase = Phase::Skip;
                true
            }
        }
    }

    /// Reads the frame's header from the buffer; the bytes it used.
    fn header(&mut self, sh: &mut Shared) -> wire::P<usize> {
        let mut c = Cur::new(&self.buf);
        if self.response {
            let corr = c.i32()?;
            // responses come in the order of the requests: the ones before it got none
            let Some(i) = sh.pending.iter().position(|p| p.correlation_id == corr) else {
                return Err(Short::Bad("no_request"));
            };
            let p = sh.pending[i];
            // ApiVersions' response header is v0 whatever its version
            if p.api_key != apis::API_VERSIONS && apis::flexible(p.api_key, p.api_version) {
                c.tagged(true)?;
            }
            sh.pending.drain(..=i);
            self.msg.correlation_id = corr;
            self.msg.api_key = p.api_key;
            self.msg.api_version = p.api_version;
        } else {
            let (key, version, corr) = (c.i16()?, c.i16()?, c.i32()?);
            if apis::name(key).is_none() || !(0..=apis::MAX_VERSION).contains(&version) {
                return Err(Short::Bad("request_header"));
            }
            // the client id is an int16-length string even in header v2
            let client = c.string(false)?;
            if apis::flexible(key, version) {
                c.tagged(true)?;
            }
            self.msg.api_key = key;
            self.msg.api_version = version;
            self.msg.correlation_id = corr;
            self.msg.client_id = client.map(text);
        }
        Ok(c.p)
    }

    /// How the body after the header is read.
    fn body_mode(&mut self) {
        let m = &self.msg;
        let body = self.buf.len() - self.pos + self.remaining;
        if walk::streamed(self.response, m.api_key) {
            self.walk = Some(Walk::new(m.api_key, m.api_version, apis::flexible(m.api_key, m.api_version)));
            self.phase = Phase::Walk;
        } else if !bodies::reads(self.response, m.api_key) {
            self.phase = Phase::Skip;
        } else if body > MAX_BODY {
            self.msg.parse_error = Some("body_too_large");
            self.phase = Phase::Skip;
        } else {
            self.phase = Phase::Body;
        }
    }

    /// The frame is over: its message goes out, and a request waits for its response.
    fn finish(&mut self, sh: &mut Shared, out: &mut Vec<Message>) {
        let mut msg = std::mem::take(&mut self.msg);
        if msg.api_key < 0 {
            self.reset(); // a response cut by a gap before its header: nothing to say
            return;
        }
        if let Some(scan) = self.scan.take() {
            // the frame ended inside a record set (a truncated body): what was seen counts
            msg.scanned(&scan, self.scan_len - scan.left);
        }
        if self.walk.as_ref().is_some_and(|w| w.stage != Stage::Done) && msg.parse_error.is_none() {
            msg.parse_error = Some("truncated");
        }
        let no_response = msg.api_key == apis::PRODUCE && msg.acks == Some(0);
        if !self.response && !no_response {
            if sh.pending.len() >= MAX_PENDING {
                sh.pending.pop_front();
            }
            sh.pending.push_back(Pending {
                correlation_id: msg.correlation_id,
                api_key: msg.api_key,
                api_version: msg.api_version,
            });
        }
        out.push(msg);
        self.reset();
    }

    /// Whether `data` starts with a plausible frame: a request's header of a known API,
    /// or a response to a waiting request.
    fn starts_frame(&self, data: &[u8], sh: &Shared) -> bool {
        let mut c = Cur::new(data);
        let (Ok(size), Ok(a)) = (c.i32(), c.i32()) else { return false };
        let least = if self.response { 4 } else { 10 };
        if size < least || size as usize > MAX_FRAME {
            return false;
        }
        if self.response {
            return sh.pending.iter().any(|p| p.correlation_id == a);
        }
        let (key, version) = ((a >> 16) as i16, a as i16);
        if !plausible_version(key, version) {
            return false;
        }
        // a plausible client id: null, or a length within the frame of printable bytes
        // (not empty: a response's bytes read as a header often give a length of 0)
        let Ok(_corr) = c.i32() else { return false };
        match c.i16() {
            Ok(-1) => true,
            Ok(n) if n > 0 && (n as i32) <= size - 10 => {
                let id = &data[14..data.len().min(14 + n as usize)];
                id.iter().all(|b| (0x20..0x7F).contains(b))
            }
            _ => false,
        }
    }

    /// `n` bytes of this direction were never captured. Inside a frame of known size the
    /// frame's message goes out marked `gap` and the next frame is read in step;
    /// otherwise the direction is out of step until a chunk starts a frame.
    fn gap(&mut self, n: usize, sh: &mut Shared, out: &mut Vec<Message>) {
        match self.phase {
            Phase::Size => self.out_of_step(),
            Phase::Header => {
                if n <= self.remaining && self.response {
                    // the response's request is unknown: its frame is skipped
                    self.remaining -= n;
                    self.msg.parse_error = Some("gap");
                    self.phase = Phase::Skip;
                    self.buf.clear();
                    self.pos = 0;
                    // (its message has no API: not given out)
                    self.msg.api_key = -1;
                } else {
                    self.out_of_step();
                }
            }
            Phase::Body | Phase::Walk | Phase::Skip => {
                if n <= self.remaining {
                    self.remaining -= n;
                    self.msg.parse_error = Some("gap");
                    self.scan = None;
                    self.phase = Phase::Skip;
                    if self.remaining == 0 {
                        self.finish(sh, out);
                    }
                } else {
                    self.msg.parse_error = Some("gap");
                    self.scan = None;
                    self.finish(sh, out);
                    self.out_of_step();
                }
            }
        }
    }

    fn write(&self, w: &mut W) {
        w.b(self.response);
        w.u8(match self.phase {
            Phase::Size => 0,
            Phase::Header => 1,
            Phase::Body => 2,
            Phase::Walk => 3,
            Phase::Skip => 4,
        });
        w.bytes(&self.buf[self.pos..]);
        w.u64(self.remaining as u64);
        write_message(w, &self.msg);
        match &self.walk {
            None => w.u8(0),
            Some(k) => {
                w.u8(1);
                w.u16(k.api as u16);
                w.u16(k.version as u16);
                w.b(k.flex);
                w.u8(k.stage as u8);
                w.u64(k.topics_left as u64);
                w.u64(k.parts_left as u64);
            }
        }
        match &self.scan {
            None => w.u8(0),
            Some(s) => {
                w.u8(1);
                s.write(w);
            }
        }
        w.u64(self.scan_len as u64);
        w.b(self.sync);
        w.u64(self.skipped);
        w.u64(self.bad_frames);
    }

    fn read(r: &mut R) -> Res<Direction> {
        let response = r.b()?;
        let phase = match r.u8()? {
            0 => Phase::Size,
            1 => Phase::Header,
            2 => Phase::Body,
            3 => Phase::Walk,
            4 => Phase::Skip,
            _ => return Err(r.err("bad phase")),
        };
        let buf = r.bytes()?;
        let remaining = r.u64()? as usize;
        let msg = read_message(r)?;
        let walk = match r.u8()? {
            0 => None,
            _ => {
                let (api, version, flex) = (r.u16()? as i16, r.u16()? as i16, r.b()?);
                let stage = match r.u8()? {
                    0 => Stage::Prefix,
                    1 => Stage::TopicHead,
                    2 => Stage::PartHead,
                    3 => Stage::PartTail,
                    4 => Stage::TopicTail,
                    5 => Stage::End,
                    6 => Stage::Done,
                    _ => return Err(r.err("bad walk stage")),
                };
                let (topics_left, parts_left) = (r.u64()? as usize, r.u64()? as usize);
                Some(Walk { api, version, flex, stage, topics_left, parts_left })
            }
        };
        let scan = match r.u8()? {
            0 => None,
            _ => Some(RecordScan::read(r)?),
        };
        let scan_len = r.u64()? as usize;
        if (phase == Phase::Walk && walk.is_none()) || buf.len() > MAX_BODY + MAX_HEADER + 65536 {
            return Err(r.err("inconsistent direction"));
        }
        Ok(Direction {
            response,
            phase,
            buf,
            pos: 0,
            remaining,
            msg,
            walk,
            scan,
            scan_len,
            sync: r.b()?,
            skipped: r.u64()?,
            bad_frames: r.u64()?,
        })
    }
}

fn write_message(w: &mut W, m: &Message) {
    w.b(m.response);
    w.u32(m.correlation_id as u32);
    w.u16(m.api_key as u16);
    w.u16(m.api_version as u16);
    w.ostr(m.client_id.as_deref());
    w.u64(m.size);
    w.u64(m.topics.len() as u64);
    for t in &m.topics {
        w.ostr(Some(t));
    }
    w.u32(m.topics_more);
    w.u32(m.partitions);
    w.ou64(m.records);
    w.ou64(m.record_bytes);
    w.u32(m.batches);
    w.u32(m.partial_batches);
    w.ou8(m.compression);
    w.ostr(m.group_id.as_deref());
    w.ou32(m.acks.map(|a| a as u16 as u32));
    w.b(m.transactional);
    w.u16(m.error_code as u16);
    w.u32(m.errors);
    w.ou32(m.throttle_ms.map(|t| t as u32));
    w.ostr(m.parse_error);
}

/// The reasons a message's body could not be read (restored as the same names).
const PARSE_ERRORS: &[&str] = &[
    "truncated",
    "gap",
    "body_too_large",
    "element_too_large",
    "records_beyond_frame",
    "negative_length",
    "array_count",
    "varint",
    "unknown_version",
    "bad_value",
];

fn read_message(r: &mut R) -> Res<Message> {
    let mut m = Message {
        response: r.b()?,
        correlation_id: r.u32()? as i32,
        api_key: r.u16()? as i16,
        api_version: r.u16()? as i16,
        client_id: r.ostr()?,
        size: r.u64()?,
        ..Default::default()
    };
    let n = r.count(1)?;
    for _ in 0..n.min(MAX_TOPICS) {
        m.topics.push(r.ostr()?.unwrap_or_default());
    }
    m.topics_more = r.u32()?;
    m.partitions = r.u32()?;
    m.records = r.ou64()?;
    m.record_bytes = r.ou64()?;
    m.batches = r.u32()?;
    m.partial_batches = r.u32()?;
    m.compression = r.ou8()?;
    m.group_id = r.ostr()?;
    m.acks = r.ou32()?.map(|a| a as u16 as i16);
    m.transactional = r.b()?;
    m.error_code = r.u16()? as i16;
    m.errors = r.u32()?;
    m.throttle_ms = r.ou32()?.map(|t| t as i32);
    m.parse_error = match r.ostr()? {
        None => None,
        Some(s) => Some(PARSE_ERRORS.iter().find(|e| **e == s).copied().unwrap_or("bad_value")),
    };
    Ok(m)
}

impl RecordScan {
    fn write(&self, w: &mut W) {
        let (head, skip) = self.state();
        w.u64(self.left as u64);
        w.bytes(head);
        w.u64(skip as u64);
        w.u64(self.records);
        w.u32(self.batches);
        w.u64(self.control_records);
        w.u32(self.partial);
        w.ou8(self.compression);
        w.b(self.bad);
    }

    fn read(r: &mut R) -> Res<RecordScan> {
        let left = r.u64()? as usize;
        let head = r.bytes()?;
        let skip = r.u64()? as usize;
        if head.len() > 61 {
            return Err(r.err("bad record scan"));
        }
        let mut s = RecordScan::restored(left, head, skip);
        s.records = r.u64()?;
        s.batches = r.u32()?;
        s.control_records = r.u64()?;
        s.partial = r.u32()?;
        s.compression = r.ou8()?;
        s.bad = r.b()?;
        Ok(s)
    }
}

const MAGIC: &[u8; 4] = b"WSKF";
const VERSION: u16 = 1;

/// One Kafka connection: the client's direction carries the requests.
#[derive(Clone, Debug)]
pub struct Connection {
    pub client: usize,
    pub dirs: [Direction; 2],
    pub pending: VecDeque<Pending>,
    pub names: TopicNames,
}

impl Connection {
    pub fn new(client: usize) -> Self {
        let dirs = if client == 0 {
            [Direction::new(false), Direction::new(true)]
        } else {
            [Direction::new(true), Direction::new(false)]
        };
        Connection { client, dirs, pending: VecDeque::new(), names: TopicNames::default() }
    }

    /// The messages that the bytes of direction `d` complete.
    pub fn feed(&mut self, d: usize, data: &[u8], out: &mut Vec<Message>) {
        let mut sh = Shared { pending: &mut self.pending, names: &mut self.names };
        self.dirs[d].feed(data, &mut sh, out);
    }

    /// `n` bytes of direction `d` were never captured.
    pub fn gap(&mut self, d: usize, n: usize, out: &mut Vec<Message>) {
        let mut sh = Shared { pending: &mut self.pending, names: &mut self.names };
        self.dirs[d].gap(n, &mut sh, out);
    }

    pub fn snapshot(&self) -> Vec<u8> {
        let mut w = W(Vec::new());
        w.u8(self.client as u8);
        for d in &self.dirs {
            d.write(&mut w);
        }
        w.u64(self.pending.len() as u64);
        for p in &self.pending {
            w.u32(p.correlation_id as u32);
            w.u16(p.api_key as u16);
            w.u16(p.api_version as u16);
        }
        w.u64(self.names.map.len() as u64);
        for (id, name) in &self.names.map {
            w.raw(id);
            w.ostr(Some(name));
        }
        frame(MAGIC, VERSION, &w.0)
    }

    pub fn restore(data: &[u8]) -> Res<Connection> {
        let body = unframe("Kafka connection", MAGIC, VERSION, data)?;
        let mut r = R::new("Kafka connection", body);
        let client = r.u8()? as usize;
        if client > 1 {
            return Err(r.err("bad client direction"));
        }
        let a = Direction::read(&mut r)?;
        let b = Direction::read(&mut r)?;
        if a.response == (client == 0) || b.response != (client == 0) {
            return Err(r.err("directions do not match the client"));
        }
        let mut pending = VecDeque::new();
        for _ in 0..r.count(8)?.min(MAX_PENDING) {
            pending.push_back(Pending {
                correlation_id: r.u32()? as i32,
                api_key: r.u16()? as i16,
                api_version: r.u16()? as i16,
            });
        }
        let mut names = TopicNames::default();
        for _ in 0..r.count(17)? {
            let id: [u8; 16] = r.take::<16>()?;
            let name = r.ostr()?.unwrap_or_default();
            names.learn(id, name);
        }
        if !r.done() {
            return Err(r.err("bytes after the state"));
        }
        Ok(Connection { client, dirs: [a, b], pending, names })
    }
}
