//! HTTP/2 (RFC 9113) and gRPC over one TCP connection: one transaction per stream.
//!
//! Each direction is a frame parser (a 9-byte header: 24-bit length, type, flags, 31-bit
//! stream id; the client's first 24 bytes are the connection preface) with its HPACK
//! decoder ([`hpack`]). Streams gather what a record needs: the request's and the
//! response's header blocks (HEADERS + CONTINUATION, decoded in order: the dynamic table
//! depends on every block, PUSH_PROMISE's included), the body sizes (DATA less padding),
//! the trailers, gRPC's length-prefixed messages counted each way, RST_STREAM's error
//! code. A stream is done when both sides ended it (END_STREAM), when either reset it,
//! or, for the streams above a GOAWAY's last stream id, when the server said it would
//! not process them; the connection's end finishes the rest (no response).
//!
//! gRPC (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md): a request
//! `POST /package.Service/Method` with `content-type: application/grpc...`; messages
//! framed as a compressed flag, a 4-byte length and the message; the status in the
//! trailers (`grpc-status`, `grpc-message`), or in the only header block of a
//! "trailers-only" response.
//!
//! Quirks as Wireshark handles them: a capture that starts mid-connection has no
//! preface and no HPACK context: the parser resynchronises at the first chunk that starts
//! with a plausible frame header, and the headers it cannot decode (dynamic table entries
//! it never saw) are counted per stream, not guessed. Bad input (a preface that is not
//! HTTP/2's, a header block that does not decode) is a named error; a direction whose
//! framing breaks stops until a gap. Bounded: [`MAX_STREAMS`] open streams (the oldest
//! beyond are finished), header blocks of at most [`MAX_BLOCK`] bytes. Never panics.

pub mod hpack;
pub mod tables;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crate::state_bytes::{frame, unframe, Res, R, W};
use hpack::Decoder;

/// The client's connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Streams open at once at most (the oldest beyond are finished without a response).
pub const MAX_STREAMS: usize = 1024;
/// A header block (HEADERS and its CONTINUATIONs) larger than this is not decoded.
pub const MAX_BLOCK: usize = 256 * 1024;
/// A frame longer than the default SETTINGS_MAX_FRAME_SIZE is only plausible as a
/// resynchronisation point if at most this long.
const RESYNC_MAX_FRAME: u32 = 16_384;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const PUSH_PROMISE: u8 = 5;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// An HTTP/2 error code's name (RFC 9113 §7), for a reset or GOAWAY.
pub fn error_name(code: u32) -> String {
    match code {
        0 => "NO_ERROR".into(),
        1 => "PROTOCOL_ERROR".into(),
        2 => "INTERNAL_ERROR".into(),
        3 => "FLOW_CONTROL_ERROR".into(),
        4 => "SETTINGS_TIMEOUT".into(),
        5 => "STREAM_CLOSED".into(),
        6 => "FRAME_SIZE_ERROR".into(),
        7 => "REFUSED_STREAM".into(),
        8 => "CANCEL".into(),
        9 => "COMPRESSION_ERROR".into(),
        10 => "CONNECT_ERROR".into(),
        11 => "ENHANCE_YOUR_CALM".into(),
        12 => "INADEQUATE_SECURITY".into(),
        13 => "HTTP_1_1_REQUIRED".into(),
        c => format!("0x{c:x}"),
    }
}

/// Why a direction stopped parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// the client's first bytes are not the HTTP/2 preface
    BadPreface,
    /// a CONTINUATION that continues nothing, or another frame inside a header block
    BadContinuation,
}

impl ParseError {
    pub fn name(self) -> &'static str {
        match self {
            ParseError::BadPreface => "bad_preface",
            ParseError::BadContinuation => "bad_continuation",
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Option<ParseError> {
        [ParseError::BadPreface, ParseError::BadContinuation].get(c as usize).copied()
    }
}

/// gRPC messages of one direction of a stream: a 5-byte prefix, then its length's bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Messages {
    pub count: u64,
    prefix: [u8; 5],
    prefix_len: u8,
    /// bytes of the current message still to come
    left: u64,
}

impl Messages {
    fn feed(&mut self, mut d: &[u8]) {
        while !d.is_empty() {
            if self.left > 0 {
                let take = (self.left as usize).min(d.len());
                self.left -= take as u64;
                d = &d[take..];
                continue;
            }
            let take = (5 - self.prefix_len as usize).min(d.len());
            let at = self.prefix_len as usize;
            self.prefix[at..at + take].copy_from_slice(&d[..take]);
            self.prefix_len += take as u8;
            d = &d[take..];
            if self.prefix_len == 5 {
                self.count += 1;
                self.left = u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]) as u64;
                self.prefix_len = 0;
            }
        }
    }

    fn write(&self, w: &mut W) {
        w.u64(self.count);
        w.raw(&self.prefix);
        w.u8(self.prefix_len);
        w.u64(self.left);
    }

    fn read(r: &mut R) -> Res<Messages> {
        let m = Messages { count: r.u64()?, prefix: r.take::<5>()?, prefix_len: r.u8()?, left: r.u64()? };
        if m.prefix_len > 4 {
            return Err(r.err("bad gRPC prefix"));
        }
        Ok(m)
    }
}

/// One stream: a request and its response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stream {
    pub id: u32,
    /// the header blocks as decoded: request, response (the first non-1xx), trailers
    pub request: Vec<(Vec<u8>, Vec<u8>)>,
    pub response: Vec<(Vec<u8>, Vec<u8>)>,
    pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
    pub request_ts_us: i64,
    /// when the request ended (END_STREAM), the response's first header block, its end
    pub request_end_ts_us: Option<i64>,
    pub response_ts_us: Option<i64>,
    pub response_end_ts_us: Option<i64>,
    pub request_body: u64,
    pub response_body: u64,
    /// gRPC messages: [client's, server's]
    pub messages: [Messages; 2],
    /// headers that referred to dynamic table entries never seen
    pub unknown_headers: u32,
    /// what went wrong: "rst_stream CANCEL by client", "goaway REFUSED", an HPACK error...
    pub error: Option<String>,
    ended: [bool; 2],
}

impl Stream {
    fn write(&self, w: &mut W) {
        w.u32(self.id);
        for block in [&self.request, &self.response, &self.trailers] {
            w.u64(block.len() as u64);
            for (n, v) in block {
                w.bytes(n);
                w.bytes(v);
            }
        }
        w.i64(self.request_ts_us);
        w.oi64(self.request_end_ts_us);
        w.oi64(self.response_ts_us);
        w.oi64(self.response_end_ts_us);
        w.u64(self.request_body);
        w.u64(self.response_body);
        self.messages[0].write(w);
        self.messages[1].write(w);
        w.u32(self.unknown_headers);
        w.ostr(self.error.as_deref());
        w.b(self.ended[0]);
        w.b(self.ended[1]);
    }

    fn read(r: &mut R) -> Res<Stream> {
        let id = r.u32()?;
        let mut blocks: [Vec<(Vec<u8>, Vec<u8>)>; 3] = Default::default();
        for block in blocks.iter_mut() {
            let n = r.count(16)?;
            for _ in 0..n {
                let name = r.bytes()?;
                let value = r.bytes()?;
                block.push((name, value));
            }
        }
        let [request, response, trailers] = blocks;
        Ok(Stream {
            id,
            request,
            response,
            trailers,
            request_ts_us: r.i64()?,
            request_end_ts_us: r.oi64()?,
            response_ts_us: r.oi64()?,
            response_end_ts_us: r.oi64()?,
            request_body: r.u64()?,
            response_body: r.u64()?,
            messages: [Messages::read(r)?, Messages::read(r)?],
            unknown_headers: r.u32()?,
            error: r.ostr()?,
            ended: [r.b()?, r.b()?],
        })
    }
}

/// What the connection gives back.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// a stream finished (its response complete, reset, refused, or the connection ended)
    Done(Box<Stream>),
    /// a direction's framing stopped
    Error(ParseError),
    /// a header block that did not decode (the name of the HPACK error)
    Hpack(&'static str),
}

/// One direction's framing.
#[derive(Clone, Debug, Default, PartialEq)]
struct Dir {
    /// preface bytes still expected (the client's, at the start)
    preface: u8,
    head: [u8; 9],
    head_len: u8,
    /// the frame being read: length, type, flags, stream
    len: u32,
    typ: u8,
    flags: u8,
    stream: u32,
    /// its payload bytes still to come
    remaining: u32,
    /// the payload kept (header-bearing and control frames)
    payload: Vec<u8>,
    /// DATA: the pad length is the first byte (PADDED); then its data bytes still to come
    pad_pending: bool,
    data_left: u32,
    /// a header block being assembled: its stream, END_STREAM of its HEADERS, whether it
    /// is a PUSH_PROMISE's (decoded for the table only)
    block: Vec<u8>,
    block_stream: u32,
    block_end_stream: bool,
    block_push: bool,
    block_open: bool,
    block_too_large: bool,
    hpack: Decoder,
    broken: Option<ParseError>,
    resync: bool,
}

impl Dir {
    fn write(&self, w: &mut W) {
        w.u8(self.preface);
        w.raw(&self.head);
        w.u8(self.head_len);
        w.u32(self.len);
        w.u8(self.typ);
        w.u8(self.flags);
        w.u32(self.stream);
        w.u32(self.remaining);
        w.bytes(&self.payload);
        w.b(self.pad_pending);
        w.u32(self.data_left);
        w.bytes(&self.block);
        w.u32(self.block_stream);
        w.b(self.block_end_stream);
        w.b(self.block_push);
        w.b(self.block_open);
        w.b(self.block_too_large);
        self.hpack.write(w);
        w.ou8(self.broken.map(ParseError::code));
        w.b(self.resync);
    }

    fn read(r: &mut R) -> Res<Dir> {
        let d = Dir {
            preface: r.u8()?,
            head: r.take::<9>()?,
            head_len: r.u8()?,
            len: r.u32()?,
            typ: r.u8()?,
            flags: r.u8()?,
            stream: r.u32()?,
            remaining: r.u32()?,
            payload: r.bytes()?,
            pad_pending: r.b()?,
            data_left: r.u32()?,
            block: r.bytes()?,
            block_stream: r.u32()?,
            block_end_stream: r.b()?,
            block_push: r.b()?,
            block_open: r.b()?,
            block_too_large: r.b()?,
            hpack: Decoder::read(r)?,
            broken: match r.ou8()? {
                Some(c) => Some(ParseError::from_code(c).ok_or_else(|| r.err("bad error"))?),
                None => None,
            },
            resync: r.b()?,
        };
        if d.preface as usize > PREFACE.len() || d.head_len > 9 || d.block.len() > MAX_BLOCK || d.payload.len() > MAX_BLOCK {
            return Err(r.err("bad frame position"));
        }
        Ok(d)
    }
}

/// The whole connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    pub client: usize,
    dirs: [Dir; 2],
    streams: BTreeMap<u32, Stream>,
    /// the server's GOAWAY: last stream id it processes, its error code
    goaway: Option<(u32, u32)>,
    now: i64,
}

pub const MAGIC: &[u8; 4] = b"WSH2";
/// Version of the checkpoint bytes: bump it with any change of the fields.
pub const VERSION: u16 = 1;

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Connection {
    /// `client`: the direction of the client (it sends the preface); `started`: the
    /// connection was seen from its start, else both directions resynchronise.
    pub fn new(client: usize, started: bool) -> Self {
        let client = client.min(1);
        let mut dirs = [Dir::default(), Dir::default()];
        if started {
            dirs[client].preface = PREFACE.len() as u8;
        } else {
            dirs[0].resync = true;
            dirs[1].resync = true;
        }
        Connection { client, dirs, streams: BTreeMap::new(), goaway: None, now: 0 }
    }

    /// An HTTP/1.1 request upgraded to this connection (`Upgrade: h2c` answered 101, RFC
    /// 7540 section 3.2): it is stream 1, sent and ended by the client; the server's
    /// response on stream 1 answers it. `request`: its pseudo-header fields.
    pub fn upgraded(&mut self, request: Vec<(Vec<u8>, Vec<u8>)>, request_ts_us: i64, request_end_ts_us: i64,
                    request_body: u64) {
        let mut s = Stream {
            id: 1,
            request,
            request_ts_us,
            request_end_ts_us: Some(request_end_ts_us),
            request_body,
            ..Stream::default()
        };
        s.ended[0] = true;
        self.streams.insert(1, s);
    }

    /// Open streams (for tests and bounds).
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Bytes of `direction` were never captured: the frame in progress is lost (and with
    /// a header block, the HPACK context: later blocks may refer to what it added).
    pub fn gap(&mut self, direction: usize) {
        let d = &mut self.dirs[direction.min(1)];
        let hpack = std::mem::take(&mut d.hpack);
        *d = Dir { hpack, resync: true, ..Dir::default() };
    }

    /// The connection ended: every open stream is done.
    pub fn close(&mut self, out: &mut Vec<Event>) {
        let streams = std::mem::take(&mut self.streams);
        for (_, s) in streams {
            out.push(Event::Done(Box::new(s)));
        }
    }

    /// Whether a chunk starts with a frame header this direction could plausibly send.
    fn starts_frame(data: &[u8]) -> bool {
        let Some(h) = crate::bytes::array::<9>(data, 0) else { return false };
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        let stream = be32(&h[5..9]);
        let typ = h[3];
        len <= RESYNC_MAX_FRAME
            && stream & 0x8000_0000 == 0
            && match typ {
                DATA | HEADERS | RST_STREAM | CONTINUATION => stream != 0,
                4 | 6 | GOAWAY => stream == 0,
                2 | PUSH_PROMISE | 8 => true,
                _ => false,
            }
    }

    pub fn feed(&mut self, direction: usize, data: &[u8], ts_us: i64, out: &mut Vec<Event>) {
        let d = direction.min(1);
        self.now = ts_us;
        let mut pos = 0;
        {
            let dir = &mut self.dirs[d];
            if dir.broken.is_some() {
                return;
            }
            if dir.resync {
                if !Self::starts_frame(data) {
                    return;
                }
                dir.resync = false;
            }
            while dir.preface > 0 && pos < data.len() {
                let at = PREFACE.len() - dir.preface as usize;
                if data[pos] != PREFACE[at] {
                    dir.broken = Some(ParseError::BadPreface);
                    out.push(Event::Error(ParseError::BadPreface));
                    return;
                }
                dir.preface -= 1;
                pos += 1;
            }
        }
        while pos < data.len() {
            pos = self.step(d, data, pos, out);
            if self.dirs[d].broken.is_some() {
                return;
            }
        }
    }

    /// Reads header or payload bytes of `d` from `pos`; returns where it stopped.
    fn step(&mut self, d: usize, data: &[u8], mut pos: usize, out: &mut Vec<Event>) -> usize {
        let dir = &mut self.dirs[d];
        if dir.head_len < 9 {
            let take = (9 - dir.head_len as usize).min(data.len() - pos);
            let at = dir.head_len as usize;
            dir.head[at..at + take].copy_from_slice(&data[pos..pos + take]);
            dir.head_len += take as u8;
            pos += take;
            if dir.head_len < 9 {
                return pos;
            }
            let h = dir.head;
            dir.len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
            dir.typ = h[3];
            dir.flags = h[4];
            dir.stream = be32(&h[5..9]) & 0x7fff_ffff;
            dir.remaining = dir.len;
            dir.payload.clear();
            dir.pad_pending = dir.typ == DATA && dir.flags & PADDED != 0;
            dir.data_left = if dir.pad_pending { 0 } else { dir.len };
            if dir.block_open && dir.typ != CONTINUATION {
                dir.broken = Some(ParseError::BadContinuation);
                out.push(Event::Error(ParseError::BadContinuation));
                return pos;
            }
            if dir.remaining == 0 {
                self.frame_done(d, out);
                return pos;
            }
        }
        let dir = &mut self.dirs[d];
        let take = (dir.remaining as usize).min(data.len() - pos);
        let chunk = &data[pos..pos + take];
        dir.remaining -= take as u32;
        pos += take;
        if dir.typ == DATA {
            self.data_bytes(d, chunk);
        } else if dir.payload.len() < MAX_BLOCK {
            let room = MAX_BLOCK - dir.payload.len();
            dir.payload.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        if self.dirs[d].remaining == 0 {
            self.frame_done(d, out);
        }
        pos
    }

    /// DATA payload bytes as they come: the pad length, then the data (counted, gRPC
    /// messages framed), then the padding.
    fn data_bytes(&mut self, d: usize, mut chunk: &[u8]) {
        let dir = &mut self.dirs[d];
        if dir.pad_pending && !chunk.is_empty() {
            let pad = chunk[0] as u32;
            dir.pad_pending = false;
            dir.data_left = dir.len.saturating_sub(1 + pad);
            chunk = &chunk[1..];
        }
        let n = (dir.data_left as usize).min(chunk.len());
        dir.data_left -= n as u32;
        let id = dir.stream;
        let client = d == self.client;
        if let Some(s) = self.streams.get_mut(&id) {
            if client {
                s.request_body += n as u64;
            } else {
                s.response_body += n as u64;
            }
            s.messages[usize::from(!client)].feed(&chunk[..n]);
        }
    }

    fn frame_done(&mut self, d: usize, out: &mut Vec<Event>) {
        let dir = &mut self.dirs[d];
        dir.head_len = 0;
        let (typ, flags, id) = (dir.typ, dir.flags, dir.stream);
        let payload = std::mem::take(&mut dir.payload);
        let client = d == self.client;
        match typ {
            DATA if flags & END_STREAM != 0 => self.end(id, client, out),
            HEADERS | PUSH_PROMISE => {
                // the fragment: after the pad length, the priority (HEADERS) or the promised
                // stream (PUSH_PROMISE), before the padding
                let mut start = 0usize;
                let mut pad = 0usize;
                if flags & PADDED != 0 {
                    pad = payload.first().copied().unwrap_or(0) as usize;
                    start = 1;
                }
                if typ == HEADERS && flags & PRIORITY != 0 {
                    start += 5;
                }
                if typ == PUSH_PROMISE {
                    start += 4;
                }
                let end = payload.len().saturating_sub(pad).max(start.min(payload.len()));
                let fragment = payload.get(start.min(end)..end).unwrap_or(&[]);
                let dir = &mut self.dirs[d];
                dir.block.clear();
                dir.block_too_large = dir.len as usize > MAX_BLOCK;
                dir.block.extend_from_slice(fragment);
                dir.block_stream = id;
                dir.block_end_stream = typ == HEADERS && flags & END_STREAM != 0;
                dir.block_push = typ == PUSH_PROMISE;
                dir.block_open = true;
                if flags & END_HEADERS != 0 {
                    self.block_done(d, out);
                }
            }
            CONTINUATION => {
                let dir = &mut self.dirs[d];
                if !dir.block_open || dir.block_stream != id {
                    dir.broken = Some(ParseError::BadContinuation);
                    out.push(Event::Error(ParseError::BadContinuation));
                    return;
                }
                if dir.block.len() + payload.len() > MAX_BLOCK {
                    dir.block_too_large = true;
                } else {
                    dir.block.extend_from_slice(&payload);
                }
                if flags & END_HEADERS != 0 {
                    self.block_done(d, out);
                }
            }
            RST_STREAM => {
                let code = crate::bytes::array::<4>(&payload, 0).map(u32::from_be_bytes).unwrap_or(0);
                if let Some(mut s) = self.streams.remove(&id) {
                    s.error = Some(format!("rst_stream {} by {}", error_name(code), if client { "client" } else { "server" }));
                    if s.response_end_ts_us.is_none() && s.response_ts_us.is_some() {
                        s.response_end_ts_us = Some(self.now);
                    }
                    out.push(Event::Done(Box::new(s)));
                }
            }
            GOAWAY if !client => {
                let last = crate::bytes::array::<4>(&payload, 0).map(|b| u32::from_be_bytes(b) & 0x7fff_ffff).unwrap_or(0);
                let code = crate::bytes::array::<4>(&payload, 4).map(u32::from_be_bytes).unwrap_or(0);
                self.goaway = Some((last, code));
                // the client's streams above `last` were not, and will not be, processed
                let refused: Vec<u32> = self.streams.range(last.saturating_add(1)..).map(|(&k, _)| k).collect();
                for k in refused {
                    if let Some(mut s) = self.streams.remove(&k) {
                        s.error = Some(format!("goaway {} (not processed)", error_name(code)));
                        out.push(Event::Done(Box::new(s)));
                    }
                }
            }
            _ => {} // SETTINGS, PING, WINDOW_UPDATE, PRIORITY, extensions: nothing to pair
        }
    }

    /// A complete header block of `d`: decoded (always: the table depends on it), then
    /// the stream's request, response or trailers.
    fn block_done(&mut self, d: usize, out: &mut Vec<Event>) {
        let client = d == self.client;
        let dir = &mut self.dirs[d];
        dir.block_open = false;
        let block = std::mem::take(&mut dir.block);
        let (id, end_stream, push) = (dir.block_stream, dir.block_end_stream, dir.block_push);
        let decoded = if dir.block_too_large { Err(hpack::HpackError::TooLarge) } else { dir.hpack.decode(&block) };
        if push {
            if let Err(e) = decoded {
                out.push(Event::Hpack(e.name()));
            }
            return;
        }
        let now = self.now;
        if client && !self.streams.contains_key(&id) {
            if self.streams.len() >= MAX_STREAMS {
                if let Some((&oldest, _)) = self.streams.iter().next() {
                    if let Some(s) = self.streams.remove(&oldest) {
                        out.push(Event::Done(Box::new(s)));
                    }
                }
            }
            self.streams.insert(id, Stream { id, request_ts_us: now, ..Stream::default() });
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return; // a server's block for a stream we never saw open (mid-connection)
        };
        match decoded {
            Ok(b) => {
                s.unknown_headers += b.unknown;
                if client {
                    if s.request.is_empty() {
                        s.request = b.headers;
                    } else {
                        s.request.extend(b.headers); // request trailers
                    }
                } else {
                    let informational = b.headers.iter().any(|(n, v)| n == b":status" && v.first() == Some(&b'1'));
                    if informational {
                        return; // 100 Continue, 103 Early Hints: the final response follows
                    }
                    if s.response_ts_us.is_none() {
                        s.response_ts_us = Some(now);
                        s.response = b.headers;
                    } else {
                        s.trailers = b.headers;
                    }
                }
            }
            Err(e) => {
                s.error.get_or_insert_with(|| e.name().to_string());
                if !client && s.response_ts_us.is_none() {
                    s.response_ts_us = Some(now);
                }
                out.push(Event::Hpack(e.name()));
            }
        }
        if end_stream {
            self.end(id, client, out);
        }
    }

    /// One side ended the stream: with both, it is done.
    fn end(&mut self, id: u32, client: bool, out: &mut Vec<Event>) {
        let now = self.now;
        let done = match self.streams.get_mut(&id) {
            Some(s) => {
                s.ended[usize::from(!client)] = true;
                if client {
                    s.request_end_ts_us = Some(now);
                } else {
                    s.response_end_ts_us = Some(now);
                }
                !client || s.ended[1]
            }
            None => false,
        };
        // the server's end of the stream completes it (a client still sending is
        // answered already: gRPC's server may answer before the request stream ends)
        if done {
            if let Some(s) = self.streams.remove(&id) {
                out.push(Event::Done(Box::new(s)));
            }
        }
    }

    // --- checkpoint ------------------------------------------------------------------

    pub fn snapshot(&self) -> Vec<u8> {
        let mut w = W(Vec::new());
        w.u8(self.client as u8);
        self.dirs[0].write(&mut w);
        self.dirs[1].write(&mut w);
        w.u64(self.streams.len() as u64);
        for s in self.streams.values() {
            s.write(&mut w);
        }
        w.b(self.goaway.is_some());
        let (last, code) = self.goaway.unwrap_or((0, 0));
        w.u32(last);
        w.u32(code);
        w.i64(self.now);
        frame(MAGIC, VERSION, &w.0)
    }

    pub fn restore(data: &[u8]) -> Res<Connection> {
        let body = unframe("HTTP/2 connection", MAGIC, VERSION, data)?;
        let mut r = R::new("HTTP/2 connection", body);
        let client = r.u8()? as usize;
        if client > 1 {
            return Err(r.err("bad client direction"));
        }
        let dirs = [Dir::read(&mut r)?, Dir::read(&mut r)?];
        let n = r.count(64)?;
        if n > MAX_STREAMS {
            return Err(r.err("too many streams"));
        }
        let mut streams = BTreeMap::new();
        for _ in 0..n {
            let s = Stream::read(&mut r)?;
            streams.insert(s.id, s);
        }
        let has_goaway = r.b()?;
        let last = r.u32()?;
        let code = r.u32()?;
        let now = r.i64()?;
        if !r.done() {
            return Err(r.err("bytes after the state"));
        }
        Ok(Connection { client, dirs, streams, goaway: has_goaway.then_some((last, code)), now })
    }
}
