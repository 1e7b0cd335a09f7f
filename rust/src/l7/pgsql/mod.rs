//! PostgreSQL's frontend/backend protocol (version 3) over one TCP connection.
//!
//! One [`Stream`] per direction: a streaming framer that takes the bytes as they come
//! (any split, one byte at a time included) and gives back each complete message as a
//! [`Message`]: its type and the few fields a record needs (a query's text, a prepared
//! statement's and a portal's names, a command tag, an error's severity, SQLSTATE code
//! and text, an authentication request's method...). Nothing else is kept: a message's
//! body is kept only up to [`KEEP_BODY`] bytes, and only for the types whose fields are
//! read, so memory per direction is bounded whatever the lengths say. The rows of a
//! result (`DataRow`) and COPY's data (`CopyData`) are counted, not given one by one:
//! the next message of the direction carries how many there were and their bytes.
//!
//! The protocol (https://www.postgresql.org/docs/current/protocol-message-formats.html):
//! a message is a type byte, a big-endian int32 length that counts itself but not the
//! type byte, then the body. The client's first message has no type byte: a startup
//! message (length, protocol 3.x as int32, then `name\0value\0` pairs and a NUL), or
//! one of the special requests with a code in place of the version: `SSLRequest`
//! (80877103), `GSSENCRequest` (80877104), `CancelRequest` (80877102). The server
//! answers an SSLRequest with one byte, no message: `S` (TLS follows, both directions)
//! or `N` (go on in cleartext); a GSSENCRequest with `G` or `N`.
//!
//! Quirks as PostgreSQL handles them: a startup packet is at most 10,000 bytes
//! (`MAX_STARTUP_PACKET_LENGTH`) and any message at most 1 GB (`PQ_LARGE_MESSAGE_LIMIT`);
//! the server's message type bytes overlap the client's (`D` is DataRow from the
//! server, Describe from the client; `E` ErrorResponse / Execute; `C` CommandComplete /
//! Close; `S` ParameterStatus / Sync), so each direction has its own table; very old
//! servers answer an SSLRequest with an `E` message instead of a byte (it is parsed as
//! one). After `S` the bytes of each direction are TLS records, given back as they are
//! (kind [`Kind::Tls`]) for the TLS analyser, as Wireshark's `pgsql` hands them to
//! `tls`. After `G` they are GSSAPI-encrypted: nothing more is parsed.
//!
//! An error (a type byte the direction does not send, a length out of bounds) stops the
//! direction until a gap ([`Stream::gap`]). After a gap — and for a capture that starts
//! mid-connection — the parser resynchronises at the start of the next chunk of bytes
//! (a TCP segment's payload: clients and servers write whole messages, so segments
//! usually start with one) whose first five bytes are a valid header; the chunks before
//! it are skipped (counted in [`Stream::skipped`]). Never panics.

#[cfg(test)]
mod tests;

use crate::state_bytes::{frame, unframe, Res, R, W};

/// A startup packet longer than this is an error (PostgreSQL's own limit).
pub const MAX_STARTUP: u32 = 10_000;
/// A message longer than this is an error (PostgreSQL's `PQ_LARGE_MESSAGE_LIMIT`).
pub const MAX_MESSAGE: u32 = (1 << 30) - 1;
/// Bytes kept of a message's body (the fields are read from them; a query's text
/// beyond is cut, and the message says so).
pub const KEEP_BODY: usize = 8192;
const PROTOCOL_SSL: u32 = 80_877_103;
const PROTOCOL_GSS: u32 = 80_877_104;
const PROTOCOL_CANCEL: u32 = 80_877_102;

/// Message types the client sends (after its startup message).
const FRONTEND_TYPES: &[u8] = b"QPBEDCSHXFpdcf";
/// Message types the server sends.
const BACKEND_TYPES: &[u8] = b"RSKZTDCEN123nsItGHWdcAVv";

/// What a message is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// a message with a type byte (the byte)
    Typed(u8),
    /// the client's startup message (protocol 3.x)
    Startup,
    SslRequest,
    GssRequest,
    Cancel,
    /// the server's one-byte answer to an SSLRequest or GSSENCRequest (`S`, `G`, `N`)
    SslAnswer(u8),
    /// bytes after TLS was agreed: TLS records, as they came
    Tls(Vec<u8>),
}

impl Kind {
    /// The name Python sees: the type byte as a one-character string, or a word.
    pub fn name(&self) -> String {
        match self {
            Kind::Typed(t) => (*t as char).to_string(),
            Kind::Startup => "startup".into(),
            Kind::SslRequest => "ssl_request".into(),
            Kind::GssRequest => "gss_request".into(),
            Kind::Cancel => "cancel".into(),
            Kind::SslAnswer(_) => "ssl_answer".into(),
            Kind::Tls(_) => "tls".into(),
        }
    }
}

/// Why a direction stopped parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// a type byte this direction never sends
    BadType,
    /// a length below 4 or above the limit
    BadLength,
    /// a startup packet with a protocol version or request code PostgreSQL does not know
    BadStartup,
}

impl ParseError {
    pub fn name(self) -> &'static str {
        match self {
            ParseError::BadType => "bad_type",
            ParseError::BadLength => "bad_length",
            ParseError::BadStartup => "bad_startup",
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Option<ParseError> {
        [ParseError::BadType, ParseError::BadLength, ParseError::BadStartup].get(c as usize).copied()
    }
}

/// One complete message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub kind: Kind,
    /// the fields a record needs, by type (docs: [`Stream::finish`])
    pub fields: Vec<Vec<u8>>,
    /// a number the type carries: a startup's protocol code, an authentication
    /// request's method, Execute's row limit, ReadyForQuery's status byte, ...
    pub int: Option<i64>,
    /// the message's bytes on the wire
    pub bytes: u64,
    /// the body was longer than [`KEEP_BODY`]: its last field may be cut
    pub cut: bool,
    /// DataRow and CopyData messages of this direction since its previous message
    pub data_messages: u64,
    /// their bytes on the wire
    pub data_bytes: u64,
}

/// Where a direction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// the client before its startup message: messages without a type byte
    Startup,
    /// typed messages
    Messages,
    /// the server after an SSLRequest or GSSENCRequest: one byte answers it
    Answer,
    /// TLS was agreed: bytes pass through
    Tls,
    /// GSSAPI encryption was agreed: nothing can be read
    Encrypted,
}

impl Phase {
    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Option<Phase> {
        [Phase::Startup, Phase::Messages, Phase::Answer, Phase::Tls, Phase::Encrypted].get(c as usize).copied()
    }
}

/// One direction of a PostgreSQL connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Stream {
    frontend: bool,
    phase: Phase,
    /// the header being read: type byte (not in the startup phase) and length
    head: [u8; 5],
    head_len: u8,
    /// the body's bytes still to come, once the header is complete
    remaining: u32,
    /// the message's type byte (0: a startup-phase message)
    typ: u8,
    /// the body's length
    length: u32,
    /// the body's kept bytes
    body: Vec<u8>,
    /// whether this message's body is kept at all
    keep: bool,
    data_messages: u64,
    data_bytes: u64,
    broken: Option<ParseError>,
    /// after a gap or a mid-connection start: waiting for a chunk that starts a message
    resync: bool,
    /// chunks skipped while resynchronising
    pub skipped: u64,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A NUL-terminated string from `pos` (to the end of the kept bytes if it has no NUL);
/// `pos` moves past it.
fn cstr<'a>(body: &'a [u8], pos: &mut usize) -> &'a [u8] {
    let rest = body.get(*pos..).unwrap_or(&[]);
    match rest.iter().position(|&b| b == 0) {
        Some(n) => {
            *pos += n + 1;
            &rest[..n]
        }
        None => {
            *pos = body.len();
            rest
        }
    }
}

fn int32_at(body: &[u8], pos: usize) -> Option<i64> {
    crate::bytes::array::<4>(body, pos).map(|b| i32::from_be_bytes(b) as i64)
}

impl Stream {
    /// `frontend`: the client's direction. `started`: the connection was seen from its
    /// start (the client's first bytes are a startup message); otherwise the client's
    /// direction waits for a typed message.
    pub fn new(frontend: bool, started: bool) -> Self {
        Stream {
            frontend,
            phase: if frontend && started { Phase::Startup } else { Phase::Messages },
            head: [0; 5],
            head_len: 0,
            remaining: 0,
            typ: 0,
            length: 0,
            body: Vec::new(),
            keep: false,
            data_messages: 0,
            data_bytes: 0,
            broken: None,
            resync: !started,
            skipped: 0,
        }
    }

    /// The error that stopped this direction, if any.
    pub fn broken(&self) -> Option<ParseError> {
        self.broken
    }

    /// Bytes of this direction were never captured: forget the message being read and
    /// wait for a chunk that starts one. (TLS bytes are not ours: a gap in them is the
    /// TLS analyser's.)
    pub fn gap(&mut self) {
        if matches!(self.phase, Phase::Tls | Phase::Encrypted) {
            return;
        }
        self.phase = if self.phase == Phase::Answer { Phase::Messages } else { self.phase };
        if self.phase == Phase::Startup {
            self.phase = Phase::Messages;
        }
        self.head_len = 0;
        self.remaining = 0;
        self.body.clear();
        self.keep = false;
        self.broken = None;
        self.resync = true;
    }

    fn types(&self) -> &'static [u8] {
        if self.frontend { FRONTEND_TYPES } else { BACKEND_TYPES }
    }

    /// Whether a chunk starts with a header this direction could send.
    fn starts_message(&self, data: &[u8]) -> bool {
        match crate::bytes::array::<5>(data, 0) {
            Some(h) => {
                let len = be32(&h[1..]);
                self.types().contains(&h[0]) && (4..=MAX_MESSAGE).contains(&len)
            }
            None => false,
        }
    }

    /// Parse `data`; each complete message (or the error that stops the direction) is
    /// pushed to `out`. Bytes after an error are ignored until [`Stream::gap`].
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Result<Message, ParseError>>) {
        if self.resync {
            if !self.starts_message(data) {
                self.skipped += 1;
                return;
            }
            self.resync = false;
        }
        let mut pos = 0;
        while pos < data.len() && self.broken.is_none() {
            match self.phase {
                Phase::Tls => {
                    out.push(Ok(self.message(Kind::Tls(data[pos..].to_vec()), Vec::new(), None, (data.len() - pos) as u64, false)));
                    return;
                }
                Phase::Encrypted => return,
                Phase::Answer => {
                    let b = data[pos];
                    if matches!(b, b'S' | b'N' | b'G') {
                        pos += 1;
                        out.push(Ok(self.message(Kind::SslAnswer(b), Vec::new(), Some(b as i64), 1, false)));
                        self.phase = match b {
                            b'S' => Phase::Tls,
                            b'G' => Phase::Encrypted,
                            _ => Phase::Messages,
                        };
                    } else {
                        // an old server's ErrorResponse in place of the byte
                        self.phase = Phase::Messages;
                    }
                }
                Phase::Startup if self.head_len == 0 && data[pos] == 0x16 => {
                    // The client's TLS ClientHello after its SSLRequest (a startup
                    // message's length starts with a zero byte; a TLS record with 22).
                    self.phase = Phase::Tls;
                }
                Phase::Startup | Phase::Messages => pos = self.framed(data, pos, out),
            }
        }
    }

    /// Reads header and body bytes from `pos`; returns where it stopped.
    fn framed(&mut self, data: &[u8], mut pos: usize, out: &mut Vec<Result<Message, ParseError>>) -> usize {
        let startup = self.phase == Phase::Startup;
        let head_size: u8 = if startup { 4 } else { 5 };
        if self.head_len < head_size {
            let take = ((head_size - self.head_len) as usize).min(data.len() - pos);
            let at = self.head_len as usize;
            self.head[at..at + take].copy_from_slice(&data[pos..pos + take]);
            self.head_len += take as u8;
            pos += take;
            if self.head_len < head_size {
                return pos;
            }
            let (typ, length) = if startup { (0, be32(&self.head[..4])) } else { (self.head[0], be32(&self.head[1..5])) };
            if !startup && !self.types().contains(&typ) {
                self.fail(ParseError::BadType, out);
                return pos;
            }
            let max = if startup { MAX_STARTUP } else { MAX_MESSAGE };
            if length < if startup { 8 } else { 4 } || length > max {
                self.fail(ParseError::BadLength, out);
                return pos;
            }
            self.typ = typ;
            self.length = length;
            self.remaining = length - 4;
            self.keep = self.keeps(typ);
            self.body.clear();
        }
        let take = (self.remaining as usize).min(data.len() - pos);
        if self.keep && self.body.len() < KEEP_BODY {
            let room = KEEP_BODY - self.body.len();
            self.body.extend_from_slice(&data[pos..pos + take.min(room)]);
        }
        self.remaining -= take as u32;
        pos += take;
        if self.remaining == 0 {
            self.finish(out);
            self.head_len = 0;
            self.body.clear();
        }
        pos
    }

    /// Whether a type's body has fields we read (never a password message's: `p`).
    fn keeps(&self, typ: u8) -> bool {
        if typ == 0 {
            return true;
        }
        if self.frontend {
            matches!(typ, b'Q' | b'P' | b'B' | b'E' | b'D' | b'C' | b'F')
        } else {
            matches!(typ, b'R' | b'C' | b'E' | b'N' | b'Z' | b'S' | b'A' | b'K' | b'v' | b'T')
        }
    }

    fn fail(&mut self, e: ParseError, out: &mut Vec<Result<Message, ParseError>>) {
        self.broken = Some(e);
        self.head_len = 0;
        self.body.clear();
        out.push(Err(e));
    }

    fn message(&mut self, kind: Kind, fields: Vec<Vec<u8>>, int: Option<i64>, bytes: u64, cut: bool) -> Message {
        let m = Message {
            kind,
            fields,
            int,
            bytes,
            cut,
            data_messages: self.data_messages,
            data_bytes: self.data_bytes,
        };
        self.data_messages = 0;
        self.data_bytes = 0;
        m
    }

    /// A message is complete: read its fields.
    ///
    /// Client: `Q` [query]; `P` [statement name, query]; `B` [portal, statement name];
    /// `E` [portal], int = row limit; `D`/`C` [name], int = `S` (statement) or `P`
    /// (portal); `F` int = function OID; startup [user, database, application_name],
    /// int = protocol code. Server: `R` int = authentication request (SASL: [its
    /// mechanisms]); `C` [tag]; `E`/`N` [severity, SQLSTATE, message]; `Z` int = status;
    /// `S` [name, value]; `A` [channel], int = PID; `K` int = PID; `v` int = newest
    /// minor version; `T` int = columns. The others: no fields.
    fn finish(&mut self, out: &mut Vec<Result<Message, ParseError>>) {
        let size = self.length as u64 + if self.typ == 0 { 0 } else { 1 };
        let typ = self.typ;
        if (typ == b'D' && !self.frontend) || typ == b'd' {
            self.data_messages += 1;
            self.data_bytes += size;
            return;
        }
        let body = std::mem::take(&mut self.body);
        let cut = self.keep && (self.length as usize - 4) > body.len();
        let mut pos = 0;
        let mut fields: Vec<Vec<u8>> = Vec::new();
        let mut int = None;
        let kind = if typ == 0 {
            let code = int32_at(&body, 0).map(|v| v as u32).unwrap_or(0);
            int = Some(code as i64);
            pos = 4;
            match code {
                PROTOCOL_SSL => Kind::SslRequest,
                PROTOCOL_GSS => Kind::GssRequest,
                PROTOCOL_CANCEL => Kind::Cancel,
                c if c >> 16 == 3 => {
                    let (mut user, mut database, mut app) = (Vec::new(), Vec::new(), Vec::new());
                    while pos < body.len() {
                        let name = cstr(&body, &mut pos);
                        if name.is_empty() {
                            break;
                        }
                        let value = cstr(&body, &mut pos).to_vec();
                        match name {
                            b"user" => user = value,
                            b"database" => database = value,
                            b"application_name" => app = value,
                            _ => {}
                        }
                    }
                    fields = vec![user, database, app];
                    Kind::Startup
                }
                _ => {
                    self.fail(ParseError::BadStartup, out);
                    return;
                }
            }
        } else if self.frontend {
            match typ {
                b'Q' => fields.push(cstr(&body, &mut pos).to_vec()),
                b'P' | b'B' => {
                    let a = cstr(&body, &mut pos).to_vec();
                    let b = cstr(&body, &mut pos).to_vec();
                    fields = vec![a, b];
                }
                b'E' => {
                    fields.push(cstr(&body, &mut pos).to_vec());
                    int = int32_at(&body, pos);
                }
                b'D' | b'C' => {
                    int = body.first().map(|&b| b as i64);
                    pos = 1;
                    fields.push(cstr(&body, &mut pos).to_vec());
                }
                b'F' => int = int32_at(&body, 0),
                _ => {}
            }
            Kind::Typed(typ)
        } else {
            match typ {
                b'R' => {
                    int = int32_at(&body, 0);
                    if int == Some(10) {
                        pos = 4;
                        while pos < body.len() {
                            let mech = cstr(&body, &mut pos);
                            if mech.is_empty() {
                                break;
                            }
                            fields.push(mech.to_vec());
                        }
                    }
                }
                b'C' => fields.push(cstr(&body, &mut pos).to_vec()),
                b'E' | b'N' => {
                    // (field type, text) pairs to a zero byte; V (never localised) is
                    // preferred to S for the severity
                    let (mut severity, mut code, mut text) = (Vec::new(), Vec::new(), Vec::new());
                    let mut localised = Vec::new();
                    while pos < body.len() && body[pos] != 0 {
                        let t = body[pos];
                        pos += 1;
                        let v = cstr(&body, &mut pos);
                        match t {
                            b'V' => severity = v.to_vec(),
                            b'S' => localised = v.to_vec(),
                            b'C' => code = v.to_vec(),
                            b'M' => text = v.to_vec(),
                            _ => {}
                        }
                    }
                    if severity.is_empty() {
                        severity = localised;
                    }
                    fields = vec![severity, code, text];
                }
                b'Z' => int = body.first().map(|&b| b as i64),
                b'S' => {
                    let a = cstr(&body, &mut pos).to_vec();
                    let b = cstr(&body, &mut pos).to_vec();
                    fields = vec![a, b];
                }
                b'A' => {
                    int = int32_at(&body, 0);
                    pos = 4;
                    fields.push(cstr(&body, &mut pos).to_vec());
                }
                b'K' | b'v' => int = int32_at(&body, 0),
                b'T' => int = crate::bytes::array::<2>(&body, 0).map(|b| i16::from_be_bytes(b) as i64),
                _ => {}
            }
            Kind::Typed(typ)
        };
        if kind == Kind::SslRequest || kind == Kind::GssRequest {
            // the client waits for the answer, then sends a startup message or TLS
            self.phase = Phase::Startup;
        } else if typ == 0 {
            self.phase = Phase::Messages;
        }
        let m = self.message(kind, fields, int, size, cut);
        out.push(Ok(m));
    }

    // --- checkpoint ------------------------------------------------------------------

    fn write(&self, w: &mut W) {
        w.b(self.frontend);
        w.u8(self.phase.code());
        w.raw(&self.head);
        w.u8(self.head_len);
        w.u32(self.remaining);
        w.u8(self.typ);
        w.u32(self.length);
        w.bytes(&self.body);
        w.b(self.keep);
        w.u64(self.data_messages);
        w.u64(self.data_bytes);
        w.ou8(self.broken.map(ParseError::code));
        w.b(self.resync);
        w.u64(self.skipped);
    }

    fn read(r: &mut R) -> Res<Stream> {
        let frontend = r.b()?;
        let c = r.u8()?;
        let phase = Phase::from_code(c).ok_or_else(|| r.err("bad phase"))?;
        let head = r.take::<5>()?;
        let head_len = r.u8()?;
        let remaining = r.u32()?;
        let typ = r.u8()?;
        let length = r.u32()?;
        let body = r.bytes()?;
        if head_len > 5 || body.len() > KEEP_BODY || remaining > MAX_MESSAGE || length > MAX_MESSAGE {
            return Err(r.err("bad message position"));
        }
        let keep = r.b()?;
        let data_messages = r.u64()?;
        let data_bytes = r.u64()?;
        let broken = match r.ou8()? {
            Some(c) => Some(ParseError::from_code(c).ok_or_else(|| r.err("bad error"))?),
            None => None,
        };
        let resync = r.b()?;
        let skipped = r.u64()?;
        Ok(Stream {
            frontend, phase, head, head_len, remaining, typ, length, body, keep, data_messages, data_bytes,
            broken, resync, skipped,
        })
    }
}

/// The two directions of a connection: the client's and the server's.
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    pub client: usize,
    pub streams: [Stream; 2],
}

pub const MAGIC: &[u8; 4] = b"WSPG";
/// Version of the checkpoint bytes: bump it with any change of the fields.
pub const VERSION: u16 = 1;

impl Connection {
    /// `client`: the direction (0 or 1) that sends the startup message and the queries;
    /// `started`: the connection was seen from its start.
    pub fn new(client: usize, started: bool) -> Self {
        let client = client.min(1);
        let mut streams = [Stream::new(client == 0, started), Stream::new(client == 1, started)];
        // the server's direction needs no resynchronisation when the connection was seen
        // from its start; from the middle, it waits for a message start as the client's
        streams[1 - client].resync = !started;
        Connection { client, streams }
    }

    /// Parse `data` of `direction`. An SSLRequest or GSSENCRequest of the client makes
    /// the server's next byte its answer.
    pub fn feed(&mut self, direction: usize, data: &[u8], out: &mut Vec<Result<Message, ParseError>>) {
        let d = direction.min(1);
        let start = out.len();
        self.streams[d].feed(data, out);
        if d == self.client
            && out[start..].iter().any(|m| matches!(m, Ok(Message { kind: Kind::SslRequest | Kind::GssRequest, .. })))
        {
            let server = &mut self.streams[1 - d];
            if server.phase == Phase::Messages && server.head_len == 0 {
                server.phase = Phase::Answer;
            }
        }
    }

    pub fn snapshot(&self) -> Vec<u8> {
        let mut w = W(Vec::new());
        w.u8(self.client as u8);
        for s in &self.streams {
            s.write(&mut w);
        }
        frame(MAGIC, VERSION, &w.0)
    }

    pub fn restore(data: &[u8]) -> Res<Connection> {
        let body = unframe("PostgreSQL connection", MAGIC, VERSION, data)?;
        let mut r = R::new("PostgreSQL connection", body);
        let client = r.u8()? as usize;
        if client > 1 {
            return Err(r.err("bad client direction"));
        }
        let a = Stream::read(&mut r)?;
        let b = Stream::read(&mut r)?;
        if !r.done() {
            return Err(r.err("bytes after the state"));
        }
        Ok(Connection { client, streams: [a, b] })
    }
}
