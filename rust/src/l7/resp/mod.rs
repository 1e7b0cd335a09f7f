//! RESP, the Redis serialization protocol (RESP2 and RESP3), over one TCP connection.
//!
//! One [`Stream`] per direction: a streaming parser that takes the bytes as they come
//! (any split, one byte at a time included) and gives back each complete top-level value
//! as a [`Message`]: its type, the first [`KEEP_ARGS`] scalar elements of a top-level
//! aggregate (a command's name, its key, one more) or the scalar itself, each cut at
//! [`KEEP_BYTES`], the aggregate's length, an error's text, an integer's value and the
//! message's size on the wire. Nothing else is kept: a 500 MB bulk string is counted
//! past, not stored, so memory per direction is bounded by the line limit and the depth.
//!
//! The grammar (https://redis.io/docs/latest/develop/reference/protocol-spec/): a type
//! byte, then a line ended by CRLF: `+` simple string, `-` error, `:` integer, `_` null,
//! `,` double, `#` boolean, `(` big number; `$` bulk string, `!` bulk error, `=` verbatim
//! string: a length line, that many bytes, CRLF (`$-1` is RESP2's null); `*` array, `~`
//! set, `>` push: a count line then that many values (`*-1` is RESP2's null array); `%`
//! map and `|` attribute: a count of pairs, then twice that many values. An attribute is
//! not a reply: it precedes one, which is the message. A client may also send an
//! "inline command" (a plain line, as telnet does): only on the client's direction.
//!
//! Quirks as Redis handles them: a line of RESP must end with CRLF (a lone LF is an
//! error, except for inline commands, which Redis also ends at a lone LF); lengths are
//! bounded by Redis's own limits (`proto-max-bulk-len`, 512 MB; at most 2^32 elements).
//! RESP3's *streamed* values (the spec's "Streamed strings" and "Streamed aggregates":
//! no server of Redis's own sends them yet, proxies and other servers may): a string of
//! unknown length `$?` followed by chunks `;<len>` CRLF, the bytes, CRLF, ended by `;0`;
//! an aggregate of unknown length (`*?`, `~?`, `%?`, `>?`) whose values are ended by a
//! `.` line. They are one value each, as if their length had been given (the chunks' bytes
//! counted, the first [`KEEP_BYTES`] kept; the elements counted as they come). A streamed
//! attribute, error or verbatim string is not in the spec: an error.
//!
//! An error stops the direction: RESP has no resynchronisation point a parser can trust
//! (a bulk string may hold anything), so nothing more is parsed until a gap resets it
//! ([`Stream::gap`]), after which the parser waits for the start of a line that begins a
//! value (a command array on the client's side) before parsing again. Never panics.

#[cfg(test)]
mod tests;

use crate::state_bytes::{frame, unframe, Res, R, W};

/// A line (type byte to CRLF) longer than this is an error (Redis: 64 KiB for inline).
pub const MAX_LINE: usize = 64 * 1024;
/// A bulk string longer than this is an error (Redis's `proto-max-bulk-len`).
pub const MAX_BULK: i64 = 512 * 1024 * 1024;
/// Elements of one aggregate at most.
pub const MAX_ELEMENTS: i64 = 1 << 32;
/// Nesting at most (Redis replies nest a few levels; deeper is garbage or an attack).
pub const MAX_DEPTH: usize = 64;
/// Scalars kept of a top-level aggregate (command name, key, one more).
pub const KEEP_ARGS: usize = 3;
/// Bytes kept of each kept scalar and of an error's text.
pub const KEEP_BYTES: usize = 256;

/// The type of a top-level value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Simple,
    Error,
    Integer,
    Null,
    Double,
    Boolean,
    BigNumber,
    Bulk,
    BulkError,
    Verbatim,
    Array,
    Set,
    Push,
    Map,
    Inline,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Simple => "simple",
            Kind::Error => "error",
            Kind::Integer => "integer",
            Kind::Null => "null",
            Kind::Double => "double",
            Kind::Boolean => "boolean",
            Kind::BigNumber => "big_number",
            Kind::Bulk => "bulk",
            Kind::BulkError => "bulk_error",
            Kind::Verbatim => "verbatim",
            Kind::Array => "array",
            Kind::Set => "set",
            Kind::Push => "push",
            Kind::Map => "map",
            Kind::Inline => "inline",
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Option<Kind> {
        const ALL: [Kind; 15] = [
            Kind::Simple, Kind::Error, Kind::Integer, Kind::Null, Kind::Double, Kind::Boolean,
            Kind::BigNumber, Kind::Bulk, Kind::BulkError, Kind::Verbatim, Kind::Array, Kind::Set,
            Kind::Push, Kind::Map, Kind::Inline,
        ];
        ALL.get(c as usize).copied()
    }

    /// An error reply (`-` or `!`).
    pub fn is_error(self) -> bool {
        matches!(self, Kind::Error | Kind::BulkError)
    }
}

/// Why a direction stopped parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// a line longer than [`MAX_LINE`]
    LineTooLong,
    /// a byte that starts no RESP value
    BadType,
    /// a length or count that is not a number, or out of bounds
    BadLength,
    /// an integer line that is not one
    BadInteger,
    /// nesting deeper than [`MAX_DEPTH`]
    TooDeep,
    /// a line or bulk string not ended by CRLF
    MissingCrlf,
    /// a streamed value the spec does not have (`!?`, `=?`, `|?`), or a streamed
    /// string's chunk header (`;<len>`) or an aggregate's end (`.`) out of place
    Streamed,
}

impl ParseError {
    pub fn name(self) -> &'static str {
        match self {
            ParseError::LineTooLong => "line_too_long",
            ParseError::BadType => "bad_type",
            ParseError::BadLength => "bad_length",
            ParseError::BadInteger => "bad_integer",
            ParseError::TooDeep => "too_deep",
            ParseError::MissingCrlf => "missing_crlf",
            ParseError::Streamed => "streamed",
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Option<ParseError> {
        const ALL: [ParseError; 7] = [
            ParseError::LineTooLong, ParseError::BadType, ParseError::BadLength, ParseError::BadInteger,
            ParseError::TooDeep, ParseError::MissingCrlf, ParseError::Streamed,
        ];
        ALL.get(c as usize).copied()
    }
}

/// One complete top-level value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    pub kind: Option<Kind>,
    /// the first [`KEEP_ARGS`] scalars of a top-level aggregate, or the scalar itself
    /// (an inline command's words), each at most [`KEEP_BYTES`]
    pub args: Vec<Vec<u8>>,
    /// elements of a top-level aggregate (pairs of a map), 0 for a scalar
    pub elements: u64,
    /// an error's text, at most [`KEEP_BYTES`]
    pub error: Option<Vec<u8>>,
    /// an integer reply's value
    pub integer: Option<i64>,
    /// the message's bytes on the wire (its attributes included)
    pub bytes: u64,
}

/// An aggregate being read: how many values it still needs (a streamed one: how many it
/// has had, until its `.` line).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Frame {
    remaining: u64,
    attribute: bool,
    streamed: bool,
    /// a map: two values per element
    map: bool,
    seen: u64,
}

impl Frame {
    fn sized(remaining: u64, attribute: bool) -> Self {
        Frame { remaining, attribute, streamed: false, map: false, seen: 0 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// reading a line (type byte to LF)
    Line,
    /// reading a bulk string's bytes: how many are left, its kind, whether it is a
    /// streamed string's chunk
    Bulk { remaining: u64, kind: Kind, streamed: bool },
    /// the CRLF after a bulk string: how many of its two bytes were read
    BulkEnd { seen: u8, kind: Kind, streamed: bool },
    /// a streamed string: its next chunk's header line (`;<len>`) is due
    Streamed { kind: Kind },
}

/// One direction of a RESP connection.
#[derive(Clone, Debug)]
pub struct Stream {
    /// inline commands are the client's only
    client: bool,
    state: State,
    line: Vec<u8>,
    stack: Vec<Frame>,
    msg: Message,
    /// the current bulk string's kept bytes
    bulk: Vec<u8>,
    /// stopped by this error until a gap
    broken: Option<ParseError>,
    /// after a gap: skipping to the start of a value
    resync: bool,
    /// the last byte seen while resynchronising (a value starts after a LF)
    after_lf: bool,
}

impl Stream {
    pub fn new(client: bool) -> Self {
        Stream {
            client,
            state: State::Line,
            line: Vec::new(),
            stack: Vec::new(),
            msg: Message::default(),
            bulk: Vec::new(),
            broken: None,
            resync: false,
            after_lf: false,
        }
    }

    /// The error that stopped this direction, if any.
    pub fn broken(&self) -> Option<ParseError> {
        self.broken
    }

    /// Bytes of this direction were never captured: forget the value being read and
    /// skip to the start of a line that begins a value (a command array on the client's
    /// side: `*`; any RESP type on the server's).
    pub fn gap(&mut self) {
        self.state = State::Line;
        self.line.clear();
        self.stack.clear();
        self.msg = Message::default();
        self.bulk.clear();
        self.broken = None;
        self.resync = true;
        self.after_lf = false;
    }

    /// Parse `data`; each complete message (or the error that stops the direction) is
    /// pushed to `out`. Bytes after an error are ignored until [`Stream::gap`].
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Result<Message, ParseError>>) {
        let mut pos = 0;
        while pos < data.len() && self.broken.is_none() {
            if self.resync {
                pos = self.skip_to_value(data, pos);
                continue;
            }
            match self.state {
                State::Line | State::Streamed { .. } => {
                    let rest = &data[pos..];
                    match rest.iter().position(|&b| b == b'\n') {
                        None => {
                            if self.line.len() + rest.len() > MAX_LINE {
                                self.fail(ParseError::LineTooLong, out);
                                return;
                            }
                            self.line.extend_from_slice(rest);
                            self.msg.bytes += rest.len() as u64;
                            pos = data.len();
                        }
                        Some(nl) => {
                            if self.line.len() + nl > MAX_LINE {
                                self.fail(ParseError::LineTooLong, out);
                                return;
                            }
                            self.line.extend_from_slice(&rest[..nl]);
                            self.msg.bytes += nl as u64 + 1;
                            pos += nl + 1;
                            let line = std::mem::take(&mut self.line);
                            let result = self.on_line(&line, out);
                            self.line = line;
                            self.line.clear();
                            if let Err(e) = result {
                                self.fail(e, out);
                                return;
                            }
                        }
                    }
                }
                State::Bulk { remaining, kind, streamed } => {
                    let take = remaining.min((data.len() - pos) as u64) as usize;
                    let keep = KEEP_BYTES.saturating_sub(self.bulk.len()).min(take);
                    self.bulk.extend_from_slice(&data[pos..pos + keep]);
                    pos += take;
                    self.msg.bytes += take as u64;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::BulkEnd { seen: 0, kind, streamed }
                    } else {
                        State::Bulk { remaining: left, kind, streamed }
                    };
                }
                State::BulkEnd { seen, kind, streamed } => {
                    let want = if seen == 0 { b'\r' } else { b'\n' };
                    if data[pos] != want {
                        self.fail(ParseError::MissingCrlf, out);
                        return;
                    }
                    pos += 1;
                    self.msg.bytes += 1;
                    if seen == 0 {
                        self.state = State::BulkEnd { seen: 1, kind, streamed };
                    } else if streamed {
                        self.state = State::Streamed { kind }; // the next chunk (its bytes kept on)
                    } else {
                        self.state = State::Line;
                        let value = std::mem::take(&mut self.bulk);
                        self.scalar(kind, &value, None, out);
                    }
                }
            }
        }
    }

    fn fail(&mut self, e: ParseError, out: &mut Vec<Result<Message, ParseError>>) {
        self.broken = Some(e);
        self.line.clear();
        self.bulk.clear();
        self.stack.clear();
        self.msg = Message::default();
        out.push(Err(e));
    }

    /// While resynchronising: the position of the first byte of a value that starts a
    /// line, or the end of `data`.
    fn skip_to_value(&mut self, data: &[u8], mut pos: usize) -> usize {
        while pos < data.len() {
            let b = data[pos];
            if self.after_lf && (if self.client { b == b'*' } else { starts_value(b) }) {
                self.resync = false;
                self.after_lf = false;
                return pos;
            }
            self.after_lf = b == b'\n';
            pos += 1;
        }
        pos
    }

    /// A whole line, without its LF.
    fn on_line(&mut self, line: &[u8], out: &mut Vec<Result<Message, ParseError>>) -> Result<(), ParseError> {
        if let State::Streamed { kind } = self.state {
            return self.chunk_header(kind, line, out);
        }
        let Some(&t) = line.first() else {
            // An empty line: Redis skips empty inline commands; a RESP value cannot be one.
            return if self.client && self.stack.is_empty() { Ok(()) } else { Err(ParseError::MissingCrlf) };
        };
        if t == b'.' && line == b".\r" {
            // the end of a streamed aggregate: a value of its parent (or the message)
            if !self.stack.last().is_some_and(|f| f.streamed) {
                return Err(ParseError::Streamed);
            }
            self.stack.pop();
            self.value_done(out);
            return Ok(());
        }
        if !starts_value(t) {
            if self.client && self.stack.is_empty() {
                self.inline(line, out);
                return Ok(());
            }
            return Err(ParseError::BadType);
        }
        let body = line.strip_suffix(b"\r").ok_or(ParseError::MissingCrlf)?;
        let text = &body[1..];
        match t {
            b'+' => self.scalar(Kind::Simple, text, None, out),
            b'-' => self.scalar(Kind::Error, text, None, out),
            b':' => {
                let n = parse_int(text).ok_or(ParseError::BadInteger)?;
                self.scalar(Kind::Integer, text, Some(n), out)
            }
            b'_' => self.scalar(Kind::Null, b"", None, out),
            b',' => self.scalar(Kind::Double, text, None, out),
            b'#' => self.scalar(Kind::Boolean, text, None, out),
            b'(' => self.scalar(Kind::BigNumber, text, None, out),
            b'$' | b'!' | b'=' => {
                if text == b"?" && t == b'$' {
                    self.bulk.clear();
                    self.state = State::Streamed { kind: Kind::Bulk };
                    return Ok(());
                }
                if text.first() == Some(&b'?') {
                    return Err(ParseError::Streamed);
                }
                let n = parse_int(text).ok_or(ParseError::BadLength)?;
                if n == -1 && t == b'$' {
                    self.scalar(Kind::Null, b"", None, out);
                } else if !(0..=MAX_BULK).contains(&n) {
                    return Err(ParseError::BadLength);
                } else {
                    let kind = match t {
                        b'$' => Kind::Bulk,
                        b'!' => Kind::BulkError,
                        _ => Kind::Verbatim,
                    };
                    self.bulk.clear();
                    self.state = State::Bulk { remaining: n as u64, kind, streamed: false };
                    if n == 0 {
                        self.state = State::BulkEnd { seen: 0, kind, streamed: false };
                    }
                }
            }
            _ => {
                // * ~ > % |
                if text == b"?" && t != b'|' {
                    let kind = match t {
                        b'*' => Kind::Array,
                        b'~' => Kind::Set,
                        b'>' => Kind::Push,
                        _ => Kind::Map,
                    };
                    if self.stack.is_empty() {
                        self.msg.kind = Some(kind);
                        self.msg.elements = 0;
                    }
                    if self.stack.len() >= MAX_DEPTH {
                        return Err(ParseError::TooDeep);
                    }
                    self.stack.push(Frame { remaining: 0, attribute: false, streamed: true, map: t == b'%', seen: 0 });
                    return Ok(());
                }
                if text.first() == Some(&b'?') {
                    return Err(ParseError::Streamed);
                }
                let n = parse_int(text).ok_or(ParseError::BadLength)?;
                if n == -1 && t == b'*' {
                    self.scalar(Kind::Null, b"", None, out);
                    return Ok(());
                }
                if !(0..=MAX_ELEMENTS).contains(&n) {
                    return Err(ParseError::BadLength);
                }
                let (kind, values) = match t {
                    b'*' => (Kind::Array, n as u64),
                    b'~' => (Kind::Set, n as u64),
                    b'>' => (Kind::Push, n as u64),
                    b'%' => (Kind::Map, 2 * n as u64),
                    _ => (Kind::Map, 2 * n as u64), // | attribute: a map that precedes a value
                };
                let attribute = t == b'|';
                if self.stack.is_empty() && !attribute {
                    self.msg.kind = Some(kind);
                    self.msg.elements = n as u64;
                }
                if values == 0 {
                    self.value_done(out);
                } else {
                    if self.stack.len() >= MAX_DEPTH {
                        return Err(ParseError::TooDeep);
                    }
                    self.stack.push(Frame::sized(values, attribute));
                }
            }
        }
        Ok(())
    }

    /// A streamed string's chunk header (`;<len>`): `;0` ends the string.
    fn chunk_header(&mut self, kind: Kind, line: &[u8], out: &mut Vec<Result<Message, ParseError>>)
        -> Result<(), ParseError> {
        let body = line.strip_suffix(b"\r").ok_or(ParseError::MissingCrlf)?;
        let Some(text) = body.strip_prefix(b";") else { return Err(ParseError::Streamed) };
        let n = parse_int(text).ok_or(ParseError::BadLength)?;
        if n == 0 {
            self.state = State::Line;
            let value = std::mem::take(&mut self.bulk);
            self.scalar(kind, &value, None, out);
        } else if !(1..=MAX_BULK).contains(&n) {
            return Err(ParseError::BadLength);
        } else {
            self.state = State::Bulk { remaining: n as u64, kind, streamed: true };
        }
        Ok(())
    }

    /// An inline command: its words are the message.
    fn inline(&mut self, line: &[u8], out: &mut Vec<Result<Message, ParseError>>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut words = line.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty());
        let mut msg = std::mem::take(&mut self.msg);
        msg.kind = Some(Kind::Inline);
        for w in words.by_ref() {
            msg.elements += 1;
            if msg.args.len() < KEEP_ARGS {
                msg.args.push(w[..w.len().min(KEEP_BYTES)].to_vec());
            }
        }
        if msg.elements > 0 {
            out.push(Ok(msg));
        }
    }

    /// A scalar value ended: kept if it is the message or one of its first elements.
    fn scalar(&mut self, kind: Kind, text: &[u8], integer: Option<i64>, out: &mut Vec<Result<Message, ParseError>>) {
        let cut = &text[..text.len().min(KEEP_BYTES)];
        match self.stack.len() {
            0 => {
                self.msg.kind = Some(kind);
                self.msg.args = vec![cut.to_vec()];
                if kind.is_error() {
                    self.msg.error = Some(cut.to_vec());
                }
                self.msg.integer = integer;
            }
            1 if !self.stack[0].attribute && self.msg.args.len() < KEEP_ARGS => {
                self.msg.args.push(cut.to_vec());
            }
            _ => {}
        }
        self.value_done(out);
    }

    /// A value (scalar or aggregate) ended: count it in its parent; a top-level one is a
    /// message, unless it was an attribute (the message is the value after it).
    fn value_done(&mut self, out: &mut Vec<Result<Message, ParseError>>) {
        loop {
            let depth = self.stack.len();
            let Some(top) = self.stack.last_mut() else {
                if self.msg.kind.is_some() {
                    out.push(Ok(std::mem::take(&mut self.msg)));
                }
                return;
            };
            if top.streamed {
                // counted as they come; its `.` line ends it
                top.seen += 1;
                if depth == 1 {
                    self.msg.elements = if top.map { top.seen / 2 } else { top.seen };
                }
                return;
            }
            top.remaining -= 1;
            if top.remaining > 0 {
                return;
            }
            let frame = self.stack.pop().expect("a frame was just looked at");
            if frame.attribute {
                // An attribute's map is done: it is not a value of its parent (nor, at
                // the top, the message): the value after it is.
                return;
            }
        }
    }

    // --- checkpoint ------------------------------------------------------------------

    fn write(&self, w: &mut W) {
        w.b(self.client);
        match self.state {
            State::Line => w.u8(0),
            State::Bulk { remaining, kind, streamed } => {
                w.u8(1);
                w.u64(remaining);
                w.u8(kind.code());
                w.b(streamed);
            }
            State::BulkEnd { seen, kind, streamed } => {
                w.u8(2);
                w.u8(seen);
                w.u8(kind.code());
                w.b(streamed);
            }
            State::Streamed { kind } => {
                w.u8(3);
                w.u8(kind.code());
            }
        }
        w.bytes(&self.line);
        w.u64(self.stack.len() as u64);
        for f in &self.stack {
            w.u64(f.remaining);
            w.b(f.attribute);
            w.b(f.streamed);
            w.b(f.map);
            w.u64(f.seen);
        }
        w.ou8(self.msg.kind.map(Kind::code));
        w.u64(self.msg.args.len() as u64);
        for a in &self.msg.args {
            w.bytes(a);
        }
        w.u64(self.msg.elements);
        w.obytes(self.msg.error.as_deref());
        w.oi64(self.msg.integer);
        w.u64(self.msg.bytes);
        w.bytes(&self.bulk);
        w.ou8(self.broken.map(ParseError::code));
        w.b(self.resync);
        w.b(self.after_lf);
    }

    /// `version`: of the checkpoint (1: before streamed values).
    fn read(r: &mut R, version: u16) -> Res<Stream> {
        let v2 = version >= 2;
        let client = r.b()?;
        let kind_of = |c: u8, r: &R| Kind::from_code(c).ok_or_else(|| r.err("bad kind"));
        let state = match r.u8()? {
            0 => State::Line,
            1 => {
                let remaining = r.u64()?;
                let c = r.u8()?;
                let streamed = v2 && r.b()?;
                State::Bulk { remaining, kind: kind_of(c, r)?, streamed }
            }
            2 => {
                let seen = r.u8()?;
                let c = r.u8()?;
                let streamed = v2 && r.b()?;
                if seen > 1 {
                    return Err(r.err("bad bulk end"));
                }
                State::BulkEnd { seen, kind: kind_of(c, r)?, streamed }
            }
            3 if v2 => {
                let c = r.u8()?;
                State::Streamed { kind: kind_of(c, r)? }
            }
            _ => return Err(r.err("bad state")),
        };
        let line = r.bytes()?;
        if line.len() > MAX_LINE {
            return Err(r.err("line too long"));
        }
        let depth = r.count(9)?;
        if depth > MAX_DEPTH {
            return Err(r.err("too deep"));
        }
        let mut stack = Vec::with_capacity(depth);
        for _ in 0..depth {
            let remaining = r.u64()?;
            let attribute = r.b()?;
            let mut f = Frame::sized(remaining, attribute);
            if v2 {
                f.streamed = r.b()?;
                f.map = r.b()?;
                f.seen = r.u64()?;
            }
            stack.push(f);
        }
        let kind = match r.ou8()? {
            Some(c) => Some(kind_of(c, r)?),
            None => None,
        };
        let nargs = r.count(8)?;
        if nargs > KEEP_ARGS {
            return Err(r.err("too many arguments"));
        }
        let mut args = Vec::with_capacity(nargs);
        for _ in 0..nargs {
            args.push(r.bytes()?);
        }
        let elements = r.u64()?;
        let error = r.obytes()?;
        let integer = r.oi64()?;
        let bytes = r.u64()?;
        let bulk = r.bytes()?;
        let broken = match r.ou8()? {
            Some(c) => Some(ParseError::from_code(c).ok_or_else(|| r.err("bad error"))?),
            None => None,
        };
        let resync = r.b()?;
        let after_lf = r.b()?;
        Ok(Stream {
            client,
            state,
            line,
            stack,
            msg: Message { kind, args, elements, error, integer, bytes },
            bulk,
            broken,
            resync,
            after_lf,
        })
    }
}

/// A byte that begins a RESP value.
fn starts_value(b: u8) -> bool {
    matches!(b, b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' | b'$' | b'!' | b'=' | b'*' | b'~' | b'>' | b'%' | b'|')
}

/// A decimal integer as RESP writes it (an optional sign, digits), or None.
fn parse_int(text: &[u8]) -> Option<i64> {
    let (neg, digits) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        n = n.checked_mul(10)?.checked_add((d - b'0') as i64)?;
    }
    Some(if neg { -n } else { n })
}

/// The two directions of a connection: the client's (commands) and the server's (replies).
#[derive(Clone, Debug)]
pub struct Connection {
    pub client: usize,
    pub streams: [Stream; 2],
}

pub const MAGIC: &[u8; 4] = b"WSRS";
/// Version of the checkpoint bytes: bump it with any change of the fields (2: streamed
/// values; version 1's are read too).
pub const VERSION: u16 = 2;

impl Connection {
    pub fn new(client: usize) -> Self {
        let client = client.min(1);
        Connection { client, streams: [Stream::new(client == 0), Stream::new(client == 1)] }
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
        // a checkpoint of the version before streamed values restores too
        let (body, version) = match unframe("RESP connection", MAGIC, VERSION, data) {
            Ok(body) => (body, VERSION),
            Err(e) => match unframe("RESP connection", MAGIC, 1, data) {
                Ok(body) => (body, 1),
                Err(_) => return Err(e),
            },
        };
        let mut r = R::new("RESP connection", body);
        let client = r.u8()? as usize;
        if client > 1 {
            return Err(r.err("bad client direction"));
        }
        let a = Stream::read(&mut r, version)?;
        let b = Stream::read(&mut r, version)?;
        if !r.done() {
            return Err(r.err("bytes after the state"));
        }
        Ok(Connection { client, streams: [a, b] })
    }
}
