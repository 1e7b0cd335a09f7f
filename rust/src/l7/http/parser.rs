//! The HTTP/1.x message grammar and framing of one direction, as a pull parser.
//!
//! Takes the bytes of one direction in order, in any slicing; gives events
//! ([`Ev`]): a message begins, its head (start line and header fields) is complete, body
//! bytes (de-chunked), trailer fields, the message is complete, or a parse error with a
//! reason (the `http_parse_error.<reason>` counter suffix). The caller decides how the
//! body of a message is delimited once it has seen the head ([`Parser::set_body`]),
//! because that depends on the other direction (a response to HEAD has no body, a 2xx to
//! CONNECT starts a tunnel); [`framing`] says what the head alone says (RFC 9112
//! section 6).
//!
//! Hand-written rather than `httparse`: the analyser needs what a head cut short (by
//! the end of the connection, a gap or a parse error) already said (the method and the
//! first bytes of the target, the complete header lines: `partial`), an early verdict on
//! bytes that cannot start a message (the first byte that is no method prefix), lines
//! ending in a bare LF, and trailers; `httparse` parses complete heads only.
//!
//! Lenient where an observer must be (we record, we do not enforce): a line may end in
//! LF alone, bytes after `Connection: close` are parsed, repeated equal Content-Length
//! values are one. Strict where llhttp is (its verdicts are what the Python analyser
//! gave): a request method it does not know, a target that is not origin-form (`/...`),
//! `*`, absolute-form (`scheme://...`) or, for CONNECT, authority-form, a header name that
//! is not a token, a CR not followed by LF, and Content-Length together with
//! Transfer-Encoding are parse errors. Except for start lines: one that Wireshark's
//! dissector takes for a request or status line although llhttp refuses it (`OPTIONS`
//! alone, `GET /` without version, `HTTP/1.` as version, `HTTP/1 404`: `tolerated_line`)
//! is a head flagged `malformed`, so that it pairs as it does in tshark and Zeek.
//! Bounded: a head (and a trailer block) is at most
//! `max_head` bytes (`header_too_large`), a chunk-size line at most [`MAX_CHUNK_LINE`].

/// Longest chunk-size line (with extensions) accepted.
pub const MAX_CHUNK_LINE: usize = 4096;

/// The request methods llhttp knows (its HTTP set; `PRI`, the HTTP/2 preface, is not a
/// method of HTTP/1). A request whose first bytes are no prefix of one of these is an
/// `invalid_method` parse error at once.
pub const METHODS: [&[u8]; 35] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
    b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"SEARCH",
    b"REPORT", b"MKACTIVITY", b"CHECKOUT", b"MERGE", b"M-SEARCH", b"NOTIFY", b"SUBSCRIBE",
    b"UNSUBSCRIBE", b"PURGE", b"MKCALENDAR", b"LINK", b"UNLINK", b"SOURCE", b"QUERY", b"ACL",
    b"BIND", b"UNBIND", b"REBIND",
];

pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Which start line this direction's messages have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
}

/// How the body of the message whose head was just read ends (the caller's decision).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// No body: the message is complete with its head.
    None,
    Length(u64),
    Chunked,
    /// Until the connection ends (a response without Content-Length or chunked coding).
    Close,
}

/// A complete head.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// Request: the method; response: empty.
    pub method: Vec<u8>,
    /// Request: the target, as sent.
    pub target: Vec<u8>,
    /// Response: the status code.
    pub status: u16,
    /// "1.1" or "1.0" (a tolerated start line without `HTTP/1.1`: 0).
    pub minor: u8,
    pub fields: Fields,
    /// The start line is not HTTP/1.x grammar but one Wireshark's dissector still takes
    /// for a request or status line (see `tolerated_line`): counted `http_malformed`.
    pub malformed: bool,
}

/// What a head alone says about its body (RFC 9112 section 6.3), and about an upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    /// Transfer-Encoding present (then Content-Length is ignored).
    pub te: bool,
    /// ... and its last coding is chunked.
    pub chunked: bool,
    pub length: Option<u64>,
    /// `Upgrade:` present and `Connection:` has the `upgrade` token.
    pub upgrade: bool,
}

/// The head's framing fields, or the reason they are broken and the index of the field
/// that broke them (llhttp stops there: the fields before it are the message's).
pub fn framing(fields: &Fields) -> Result<Framing, (&'static str, usize)> {
    let mut f = Framing { te: false, chunked: false, length: None, upgrade: false };
    let mut upgrade_field = false;
    let mut conn_upgrade = false;
    for (i, (name, value)) in fields.iter().enumerate() {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if f.length.is_some() {
                // RFC 9112 section 6.3 rule 3 lets a recipient read such a message by its
                // Transfer-Encoding, but it is the shape of request smuggling and llhttp
                // (whose verdicts the Python analyser gave) refuses it: so do we
                return Err(("content_length_with_transfer_encoding", i));
            }
            f.te = true;
            // the last coding of the last Transfer-Encoding field decides
            if let Some(last) = value.rsplit(|&b| b == b',').map(trim).find(|t| !t.is_empty()) {
                f.chunked = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(value).ok_or(("invalid_content_length", i))?;
            if f.te {
                return Err(("content_length_with_transfer_encoding", i));
            }
            if f.length.is_some_and(|m| m != n) {
                return Err(("duplicate_content_length", i));
            }
            f.length = Some(n);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_field = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            conn_upgrade |= value.split(|&b| b == b',').any(|t| trim(t).eq_ignore_ascii_case(b"upgrade"));
        }
    }
    f.upgrade = upgrade_field && conn_upgrade;
    Ok(f)
}

fn parse_length(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Without leading and trailing spaces and tabs.
pub fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |e| e + 1);
    v.get(start..end).unwrap_or_default()
}

/// What the parser says, one event per [`Parser::step`].
#[derive(Debug, PartialEq, Eq)]
pub enum Ev {
    /// Every byte given was consumed.
    More,
    /// A message starts at the returned position (its first byte is not consumed yet).
    Begin,
    /// Its head is complete: call [`Parser::set_body`] before the next step.
    Head(Head),
    /// Body bytes `data[a..b]` (de-chunked).
    Body(usize, usize),
    /// The trailer fields of a chunked message.
    Trailers(Fields),
    Complete,
    Error(&'static str),
}

/// Where the parser is (serialised by `state.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum St {
    /// Between messages (CR and LF are skipped, as llhttp does).
    Idle,
    /// Reading a head into `buf`.
    Head,
    /// Waiting for [`Parser::set_body`].
    Decide,
    Length(u64),
    /// Reading a chunk-size line into `buf`.
    ChunkLine,
    ChunkData(u64),
    /// The line end after a chunk's data (`buf` holds a CR seen).
    ChunkEnd,
    /// Reading the trailer block into `buf`.
    Trailers,
    Close,
    /// The next step says Complete.
    Complete,
    /// After an error: nothing more until [`Parser::reset`].
    Failed,
    /// ... an error in the head (whose bytes stay in `buf` for [`Parser::partial`]).
    FailedHead,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parser {
    pub kind: Kind,
    pub st: St,
    /// The head (or the trailer block, or the chunk-size line) read so far.
    pub buf: Vec<u8>,
    /// Where the line being read starts in `buf`.
    pub line_start: usize,
    /// The field line being read has had its colon (its value is being read).
    pub colon: bool,
    pub max_head: usize,
}

impl Parser {
    pub fn new(kind: Kind, max_head: usize) -> Self {
        Parser { kind, st: St::Idle, buf: Vec::new(), line_start: 0, colon: false, max_head }
    }

    /// A fresh parser: a message starts at the next byte.
    pub fn reset(&mut self) {
        self.st = St::Idle;
        self.buf.clear();
        self.line_start = 0;
        self.colon = false;
    }

    /// Inside the start line or header block of a message.
    pub fn in_head(&self) -> bool {
        self.st == St::Head
    }

    /// Between messages.
    pub fn idle(&self) -> bool {
        self.st == St::Idle
    }

    /// The body of the message whose head was just given ([`Ev::Head`]) ends so.
    pub fn set_body(&mut self, body: Body) {
        self.buf.clear();
        self.line_start = 0;
        self.st = match body {
            Body::None | Body::Length(0) => St::Complete,
            Body::Length(n) => St::Length(n),
            Body::Chunked => St::ChunkLine,
            Body::Close => St::Close,
        };
    }

    /// The next event from `d[pos..]`, and where to go on.
    pub fn step(&mut self, d: &[u8], mut pos: usize) -> (Ev, usize) {
        let n = d.len();
        loop {
            match self.st {
                St::Complete => {
                    self.st = St::Idle;
                    return (Ev::Complete, pos);
                }
                St::Failed | St::FailedHead | St::Decide => return (Ev::More, n),
                _ if pos >= n => return (Ev::More, n),
                St::Idle => {
                    let rest = d.get(pos..).unwrap_or_default();
                    match rest.iter().position(|&b| b != b'\r' && b != b'\n') {
                        None => return (Ev::More, n),
                        Some(i) => {
                            self.st = St::Head;
                            self.buf.clear();
                            self.line_start = 0;
                            self.colon = false;
                            return (Ev::Begin, pos + i);
                        }
                    }
                }
                St::Head => {
                    let (ev, at) = self.head_bytes(d, pos);
                    match ev {
                        Some(ev) => return (ev, at),
                        None => pos = at,
                    }
                }
                St::Length(left) => {
                    let take = left.min((n - pos) as u64) as usize;
                    let left = left - take as u64;
                    self.st = if left == 0 { St::Complete } else { St::Length(left) };
                    return (Ev::Body(pos, pos + take), pos + take);
                }
                St::Close => return (Ev::Body(pos, n), n),
                St::ChunkData(left) => {
                    let take = left.min((n - pos) as u64) as usize;
                    let left = left - take as u64;
                    self.st = if left == 0 { St::ChunkEnd } else { St::ChunkData(left) };
                    self.buf.clear();
                    return (Ev::Body(pos, pos + take), pos + take);
                }
                St::ChunkEnd => {
                    let b = d.get(pos).copied().unwrap_or(0);
                    pos += 1;
                    match b {
                        b'\r' if self.buf.is_empty() => self.buf.push(b'\r'),
                        b'\n' => {
                            self.buf.clear();
                            self.st = St::ChunkLine;
                        }
                        _ => return self.fail("invalid_chunk_data_end", pos),
                    }
                }
                St::ChunkLine => {
                    let rest = d.get(pos..).unwrap_or_default();
                    match rest.iter().position(|&b| b == b'\n') {
                        None => {
                            self.buf.extend_from_slice(rest);
                            if self.buf.len() > MAX_CHUNK_LINE {
                                return self.fail("invalid_chunk_size", n);
                            }
                            return (Ev::More, n);
                        }
                        Some(i) => {
                            self.buf.extend_from_slice(rest.get(..i).unwrap_or_default());
                            pos += i + 1;
                            match chunk_size(&self.buf) {
                                None => return self.fail("invalid_chunk_size", pos),
                                Some(0) => {
                                    self.buf.clear();
                                    self.line_start = 0;
                                    self.st = St::Trailers;
                                }
                                Some(size) => {
                                    self.buf.clear();
                                    self.st = St::ChunkData(size);
                                }
                            }
                        }
                    }
                }
                St::Trailers => {
                    let (ev, at) = self.block_bytes(d, pos);
                    match ev {
                        Some(ev) => return (ev, at),
                        None => pos = at,
                    }
                }
            }
        }
    }

    fn fail(&mut self, reason: &'static str, at: usize) -> (Ev, usize) {
        self.st = St::Failed;
        (Ev::Error(reason), at)
    }

    fn fail_head(&mut self, reason: &'static str, at: usize) -> (Ev, usize) {
        self.st = St::FailedHead;
        (Ev::Error(reason), at)
    }

    /// Append head bytes up to the end of the head (a blank line); check the start line
    /// as early as it can be.
    fn head_bytes(&mut self, d: &[u8], pos: usize) -> (Option<Ev>, usize) {
        let rest = d.get(pos..).unwrap_or_default();
        // (the first byte of a head is never a line end: Idle skips those)
        let first_line = self.line_start == 0;
        let (take, lf) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (rest.len(), false),
        };
        let old_len = self.buf.len();
        self.buf.extend_from_slice(rest.get(..take).unwrap_or_default());
        let at = pos + take;
        if self.buf.len() > self.max_head {
            let (ev, at) = self.fail_head("header_too_large", at);
            return (Some(ev), at);
        }
        // A CR ends its line (llhttp: "missing expected LF"): checked where it comes, so
        // that what follows can be resynchronised on.
        let fresh = self.buf.get(old_len.saturating_sub(1)..).unwrap_or_default();
        if fresh.windows(2).any(|w| w.first() == Some(&b'\r') && w.get(1) != Some(&b'\n')) {
            let (ev, at) = self.fail_head("missing_lf", at);
            return (Some(ev), at);
        }
        if !first_line {
            // the field line so far: a token, a colon, a value without control
            // characters (llhttp stops at the first byte that breaks one)
            let folded = self.buf.get(self.line_start).is_some_and(|&b| b == b' ' || b == b'\t');
            let from = old_len.max(self.line_start);
            let mut bad = None;
            for (i, &b) in self.buf.get(from..).unwrap_or_default().iter().enumerate() {
                if b == b'\r' || b == b'\n' {
                    continue;
                }
                if folded || self.colon {
                    if (b < b' ' && b != b'\t') || b == 0x7f {
                        bad = Some("invalid_header_value");
                        break;
                    }
                } else if b == b':' {
                    if from + i == self.line_start {
                        bad = Some("invalid_header_token");
                        break;
                    }
                    self.colon = true;
                } else if !tchar(b) {
                    bad = Some("invalid_header_token");
                    break;
                }
            }
            if let Some(reason) = bad {
                let (ev, at) = self.fail_head(reason, at);
                return (Some(ev), at);
            }
        }
        if first_line {
            let line = self.buf.as_slice();
            let ok = if lf { start_line(self.kind, line).is_ok() } else { start_prefix(self.kind, line) };
            if !ok {
                let reason = start_line(self.kind, line).err().unwrap_or("invalid_start_line");
                let (ev, at) = self.fail_head(reason, at);
                return (Some(ev), at);
            }
        }
        if !lf {
            return (None, at);
        }
        let line = self.buf.get(self.line_start..).unwrap_or_default();
        let blank = line == b"\n" || line == b"\r\n";
        if !blank && !first_line {
            // a field line is checked as soon as it is complete, as llhttp does (its
            // bytes were checked as they came): it has its colon, or it is folded
            let folded = line.first().is_some_and(|&b| b == b' ' || b == b'\t');
            if !folded && !self.colon {
                let (ev, at) = self.fail_head("invalid_header_token", at);
                return (Some(ev), at);
            }
        }
        self.line_start = self.buf.len();
        self.colon = false;
        if !blank || first_line {
            return (None, at);
        }
        match parse_head(self.kind, &self.buf) {
            Ok(head) => {
                self.st = St::Decide;
                (Some(Ev::Head(head)), at)
            }
            Err(reason) => {
                let (ev, at) = self.fail_head(reason, at);
                (Some(ev), at)
            }
        }
    }

    /// The trailer block: field lines up to a blank line.
    fn block_bytes(&mut self, d: &[u8], pos: usize) -> (Option<Ev>, usize) {
        let rest = d.get(pos..).unwrap_or_default();
        let (take, lf) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (rest.len(), false),
        };
        self.buf.extend_from_slice(rest.get(..take).unwrap_or_default());
        let at = pos + take;
        if self.buf.len() > self.max_head {
            let (ev, at) = self.fail("header_too_large", at);
            return (Some(ev), at);
        }
        if !lf {
            return (None, at);
        }
        let line = self.buf.get(self.line_start..).unwrap_or_default();
        let blank = line == b"\n" || line == b"\r\n";
        self.line_start = self.buf.len();
        if !blank {
            return (None, at);
        }
        let block = std::mem::take(&mut self.buf);
        self.line_start = 0;
        match parse_fields(split_lines(&block)) {
            (fields, None) => {
                self.st = St::Complete;
                if fields.is_empty() {
                    (None, at)
                } else {
                    (Some(Ev::Trailers(fields)), at)
                }
            }
            (_, Some(reason)) => {
                let (ev, at) = self.fail(reason, at);
                (Some(ev), at)
            }
        }
    }

    /// What the head read so far says, for a message cut short (by the connection's
    /// end, a gap or a parse error): the request's method and as much of its target as
    /// came (None if not one byte of it), the response's status (0 if not read), and the
    /// header fields of the complete lines before the first broken one.
    pub fn partial(&self) -> Partial {
        let mut p = Partial::default();
        if self.st != St::Head && self.st != St::FailedHead {
            return p;
        }
        let mut lines = split_lines(&self.buf);
        let Some(first) = lines.next() else { return p };
        match self.kind {
            Kind::Request => {
                if let Some(sp) = first.iter().position(|&b| b == b' ') {
                    let method = first.get(..sp).unwrap_or_default();
                    if METHODS.contains(&method) {
                        let rest = first.get(sp + 1..).unwrap_or_default();
                        let end = rest.iter().position(|&b| b == b' ' || b == b'\r').unwrap_or(rest.len());
                        let target = rest.get(..end).unwrap_or_default();
                        if !target.is_empty() && target_ok(method, target, end < rest.len()) {
                            p.method = Some(method.to_vec());
                            p.target = target.to_vec();
                        }
                    }
                }
            }
            Kind::Response => {
                if let Some(code) = first.get(9..12) {
                    if first.starts_with(b"HTTP/") && code.iter().all(u8::is_ascii_digit) {
                        p.status = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
                    }
                }
            }
        }
        // The fields whose next line has begun: httptools reported a field when the next
        // one started (or at the end of the head), and that is what the Python analyser
        // recorded of a head cut short. The last line is either the partial one (it has
        // begun) or, when only a line end of the next came, the last complete field.
        let mut all: Vec<&[u8]> = lines.collect();
        all.pop();
        p.fields = parse_fields(all.into_iter()).0;
        p
    }
}

/// A head cut short (see [`Parser::partial`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Partial {
    pub method: Option<Vec<u8>>,
    pub target: Vec<u8>,
    pub status: u16,
    pub fields: Fields,
}

/// The lines of a head (without their CR LF / LF), the blank last one excluded.
fn split_lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = buf.strip_suffix(b"\n").unwrap_or(buf);
    body.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
}

/// A byte of a request target: no whitespace, no control character.
fn url_byte(b: u8) -> bool {
    b > b' ' && b != 0x7f
}

/// Is `target` (all of it if `complete`, else its first bytes) a request target of a
/// form llhttp accepts: origin-form `/...`, `*`, absolute-form `scheme://...`, or anything
/// after CONNECT (authority-form, `host:port`)?
fn target_ok(method: &[u8], target: &[u8], complete: bool) -> bool {
    if !target.iter().all(|&b| url_byte(b)) {
        return false;
    }
    if method == b"CONNECT" || matches!(target.first(), None | Some(b'/' | b'*')) {
        return !(complete && target.is_empty());
    }
    // absolute-form: a scheme (a letter, then letters, digits, + - .), then "://"
    let scheme = target.iter().take_while(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b)).count();
    if !target.first().is_some_and(u8::is_ascii_alphabetic) {
        return false;
    }
    let after = target.get(scheme..).unwrap_or_default();
    let k = after.len().min(3);
    if after.get(..k) != b"://".get(..k) {
        return false;
    }
    !complete || after.len() > 3
}

/// Could `line` (no LF yet) still become a valid start line? (llhttp stops at the
/// first byte that cannot continue one.)
fn start_prefix(kind: Kind, line: &[u8]) -> bool {
    strict_prefix(kind, line) || tolerated_prefix(kind, line)
}

/// Could `line` (no LF yet) still become a [`tolerated_line`]?
fn tolerated_prefix(kind: Kind, line: &[u8]) -> bool {
    // (a CR is the last byte read at most: one followed by anything else is `missing_lf`)
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return false;
    }
    match kind {
        Kind::Request => {
            let Some(sp) = line.iter().position(|&b| b == b' ') else {
                return METHODS.iter().any(|m| m.starts_with(line));
            };
            if !METHODS.contains(&line.get(..sp).unwrap_or_default()) {
                return false;
            }
            let rest = line.get(sp + 1..).unwrap_or_default();
            let Some(end) = rest.iter().position(|&b| b == b' ') else {
                return rest.iter().all(|&b| url_byte(b));
            };
            let version = rest.get(end + 1..).unwrap_or_default();
            let version = version.get(version.iter().take_while(|&&b| b == b' ' || b == b'\t').count()..).unwrap_or_default();
            let k = version.len().min(5);
            rest.get(..end).unwrap_or_default().iter().all(|&b| url_byte(b)) && version.get(..k) == b"HTTP/".get(..k)
        }
        Kind::Response => {
            let k = line.len().min(5);
            if line.get(..k) != b"HTTP/".get(..k) {
                return false;
            }
            let Some(sp) = line.iter().position(|&b| b == b' ') else { return true };
            let after = line.get(sp..).unwrap_or_default();
            let rest = after.get(after.iter().take_while(|&&b| b == b' ').count()..).unwrap_or_default();
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            digits <= 3 && (digits == rest.len() || digits == 3)
        }
    }
}

fn strict_prefix(kind: Kind, line: &[u8]) -> bool {
    match kind {
        Kind::Request => {
            let Some(sp) = line.iter().position(|&b| b == b' ') else {
                return METHODS.iter().any(|m| m.starts_with(line));
            };
            if !METHODS.contains(&line.get(..sp).unwrap_or_default()) {
                return false;
            }
            let method = line.get(..sp).unwrap_or_default();
            let rest = line.get(sp + 1..).unwrap_or_default();
            let Some(sp2) = rest.iter().position(|&b| b == b' ') else {
                return target_ok(method, rest, false);
            };
            if !target_ok(method, rest.get(..sp2).unwrap_or_default(), true) {
                return false;
            }
            let version = rest.get(sp2 + 1..).unwrap_or_default();
            version_prefix(version.strip_suffix(b"\r").unwrap_or(version), version.ends_with(b"\r"))
        }
        Kind::Response => {
            let k = line.len().min(8);
            if !version_prefix(line.get(..k).unwrap_or_default(), false) {
                return false;
            }
            match line.get(8) {
                None => return true,
                Some(b' ') => {}
                Some(_) => return false,
            }
            let code = line.get(9..line.len().min(12)).unwrap_or_default();
            if !code.iter().all(u8::is_ascii_digit) {
                return false;
            }
            match line.get(12) {
                None | Some(b' ') | Some(b'\r') => {}
                Some(_) => return false,
            }
            let reason = line.get(13..).unwrap_or_default();
            let reason = reason.strip_suffix(b"\r").unwrap_or(reason);
            !reason.iter().any(|&b| b < b' ' && b != b'\t')
        }
    }
}

/// Could `v` become `HTTP/1.0` or `HTTP/1.1`? (`done`: it is complete, a CR follows.)
fn version_prefix(v: &[u8], done: bool) -> bool {
    let ok = [b"HTTP/1.1".as_slice(), b"HTTP/1.0"].iter().any(|full| full.starts_with(v));
    ok && (!done || v.len() == 8)
}

/// A complete start line (with its line end), as a head without fields: HTTP/1.x grammar,
/// else a line Wireshark still takes for a start line ([`tolerated_line`], `malformed`),
/// else the strict grammar's reason.
fn start_line(kind: Kind, line: &[u8]) -> Result<Head, &'static str> {
    strict_start_line(kind, line).or_else(|reason| tolerated_line(kind, line).ok_or(reason))
}

/// The start lines Wireshark's HTTP dissector takes (`is_http_request_or_reply` in
/// epan/dissectors/packet-http.c, and its request/response line dissectors), which
/// tshark and Zeek pair with their answer although they are not HTTP/1.x grammar:
///
/// - a request line is a known method, then (after a space) anything: no target
///   (`OPTIONS`), a target and no version (HTTP/0.9's `GET /`), a version that is not
///   `HTTP/1.0` or `HTTP/1.1` (`HTTP/1.`, `HTTP/1.2`, `HTTP/2.0`), a target that is not
///   origin-, absolute- or asterisk-form (`index.html`). Kept stricter than Wireshark
///   where a line would be garbage taken for a request: the method is one llhttp knows,
///   the target has no control character, the version (what follows the target) starts
///   with `HTTP/` and has no control character;
/// - a status line is `HTTP/` and a version of any spelling (`HTTP/1.`, `HTTP/1`,
///   `HTTP/0.9`), one or more spaces, a three-digit code followed by the end of the line,
///   a space or a reason glued to it (`200OK`), a reason without control characters.
///
/// The minor version is 1 for a version that starts `HTTP/1.1`, else 0.
fn tolerated_line(kind: Kind, line: &[u8]) -> Option<Head> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return None;
    }
    let minor = |v: &[u8]| u8::from(v.starts_with(b"HTTP/1.1"));
    match kind {
        Kind::Request => {
            let sp = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
            let method = line.get(..sp)?;
            if !METHODS.contains(&method) {
                return None;
            }
            let rest = line.get(sp + 1..).unwrap_or_default();
            let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
            let target = rest.get(..end)?;
            if !target.iter().all(|&b| url_byte(b)) {
                return None;
            }
            let version = trim(rest.get(end + 1..).unwrap_or_default());
            if !(version.is_empty() || version.starts_with(b"HTTP/")) {
                return None;
            }
            Some(Head {
                method: method.to_vec(),
                target: target.to_vec(),
                minor: minor(version),
                malformed: true,
                ..Head::default()
            })
        }
        Kind::Response => {
            if !line.starts_with(b"HTTP/") {
                return None;
            }
            let sp = line.iter().position(|&b| b == b' ')?;
            let after = line.get(sp..)?;
            let skip = after.iter().take_while(|&&b| b == b' ').count();
            let rest = after.get(skip..)?;
            let code = rest.get(..3)?;
            if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(u8::is_ascii_digit) {
                return None;
            }
            let status = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
            Some(Head { status, minor: minor(line), malformed: true, ..Head::default() })
        }
    }
}

/// Is `line` (with or without its line end) a start line Wireshark takes that is not
/// HTTP/1.x grammar? (resynchronisation after a gap: `session::find_resync`)
pub fn tolerated_start(kind: Kind, line: &[u8]) -> bool {
    strict_start_line(kind, line).is_err() && tolerated_line(kind, line).is_some()
}

fn strict_start_line(kind: Kind, line: &[u8]) -> Result<Head, &'static str> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match kind {
        Kind::Request => {
            let sp = line.iter().position(|&b| b == b' ').ok_or("invalid_method")?;
            let method = line.get(..sp).unwrap_or_default();
            if !METHODS.contains(&method) {
                return Err("invalid_method");
            }
            let rest = line.get(sp + 1..).unwrap_or_default();
            let sp2 = rest.iter().position(|&b| b == b' ').ok_or("invalid_url")?;
            let target = rest.get(..sp2).unwrap_or_default();
            if !target_ok(method, target, true) {
                return Err("invalid_url");
            }
            let minor = version(rest.get(sp2 + 1..).unwrap_or_default()).ok_or("invalid_version")?;
            Ok(Head { method: method.to_vec(), target: target.to_vec(), minor, ..Head::default() })
        }
        Kind::Response => {
            let minor = version(line.get(..8).unwrap_or_default()).ok_or("invalid_version")?;
            if line.get(8) != Some(&b' ') {
                return Err("invalid_status");
            }
            let code = line.get(9..12).ok_or("invalid_status")?;
            if !code.iter().all(u8::is_ascii_digit) {
                return Err("invalid_status");
            }
            // a reason phrase follows a space (it may be empty)
            match line.get(12) {
                None | Some(b' ') => {}
                Some(_) => return Err("invalid_status"),
            }
            if line.get(13..).unwrap_or_default().iter().any(|&b| b < b' ' && b != b'\t') {
                return Err("invalid_status");
            }
            let status = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
            Ok(Head { status, minor, ..Head::default() })
        }
    }
}

/// `HTTP/1.0` or `HTTP/1.1`: the minor version.
fn version(v: &[u8]) -> Option<u8> {
    match v {
        b"HTTP/1.1" => Some(1),
        b"HTTP/1.0" => Some(0),
        _ => None,
    }
}

/// A token character (RFC 9110 section 5.6.2): what a field name is made of.
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Field lines -> (name, value) pairs, up to the first broken line (and its reason).
/// A line starting with a space or tab continues the previous value (obsolete line
/// folding, RFC 9112 section 5.2: replaced by a space).
fn parse_fields<'a>(lines: impl Iterator<Item = &'a [u8]>) -> (Fields, Option<&'static str>) {
    let mut out: Fields = Vec::new();
    for line in lines {
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            match out.last_mut() {
                Some((_, value)) => {
                    let more = trim(line);
                    if more.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
                        return (out, Some("invalid_header_value"));
                    }
                    if !more.is_empty() {
                        value.push(b' ');
                        value.extend_from_slice(more);
                    }
                    continue;
                }
                None => return (out, Some("invalid_header_token")),
            }
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return (out, Some("invalid_header_token"));
        };
        let name = line.get(..colon).unwrap_or_default();
        if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
            return (out, Some("invalid_header_token"));
        }
        let value = trim(line.get(colon + 1..).unwrap_or_default());
        if value.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return (out, Some("invalid_header_value"));
        }
        out.push((name.to_vec(), value.to_vec()));
    }
    (out, None)
}

fn parse_head(kind: Kind, buf: &[u8]) -> Result<Head, &'static str> {
    let mut lines = split_lines(buf);
    let first = lines.next().ok_or("invalid_start_line")?;
    let mut head = start_line(kind, first)?;
    let (fields, err) = parse_fields(lines);
    if let Some(reason) = err {
        return Err(reason);
    }
    head.fields = fields;
    Ok(head)
}

/// A chunk-size line (without its LF): the size, None if broken.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let rest = trim(line.get(digits..).unwrap_or_default());
    // chunk extensions: `;name[=value]`, not interpreted
    if !(rest.is_empty() || rest.first() == Some(&b';')) || rest.iter().any(|&b| b < b' ' && b != b'\t') {
        return None;
    }
    line.get(..digits)?.iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16)?;
        n.checked_mul(16)?.checked_add(u64::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event of `d` fed in pieces of `step` bytes, with `body` as every message's
    /// body decision (None: by its framing).
    fn events(kind: Kind, d: &[u8], step: usize) -> Vec<String> {
        let mut p = Parser::new(kind, 1024);
        let mut out = Vec::new();
        let mut body = Vec::new();
        for chunk in d.chunks(step.max(1)) {
            let mut pos = 0;
            loop {
                let (ev, at) = p.step(chunk, pos);
                pos = at;
                match ev {
                    Ev::More => break,
                    Ev::Body(a, b) => body.extend_from_slice(&chunk[a..b]),
                    Ev::Head(h) => {
                        let f = framing(&h.fields).unwrap();
                        let b = if f.te && f.chunked {
                            Body::Chunked
                        } else if let Some(n) = f.length {
                            Body::Length(n)
                        } else if kind == Kind::Response && h.status != 204 {
                            Body::Close
                        } else {
                            Body::None
                        };
                        out.push(format!("head {} {} {} {}", String::from_utf8_lossy(&h.method),
                                         String::from_utf8_lossy(&h.target), h.status, h.fields.len()));
                        p.set_body(b);
                    }
                    Ev::Complete => {
                        out.push(format!("complete {}", String::from_utf8_lossy(&body)));
                        body.clear();
                    }
                    Ev::Error(r) => {
                        out.push(format!("error {r}"));
                        return out;
                    }
                    Ev::Trailers(t) => out.push(format!("trailers {}", t.len())),
                    Ev::Begin => out.push("begin".into()),
                }
            }
        }
        if !body.is_empty() {
            out.push(format!("body {}", String::from_utf8_lossy(&body)));
        }
        out
    }

    const REQS: &[u8] = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.0\nContent-Length: 3\n\nxyz\r\n\
        PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n0\r\nT: 1\r\n\r\n";

    #[test]
    fn requests_in_any_slicing() {
        let whole = events(Kind::Request, REQS, REQS.len());
        assert_eq!(whole, vec!["begin", "head GET /a 0 1", "complete ", "begin", "head POST /b 0 1",
                               "complete xyz", "begin", "head PUT /c 0 1", "trailers 1", "complete abc"]);
        for step in 1..REQS.len() {
            assert_eq!(events(Kind::Request, REQS, step), whole, "step {step}");
        }
    }

    #[test]
    fn responses() {
        let d = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\nHTTP/1.0 200 \r\n\r\nrest";
        assert_eq!(events(Kind::Response, d, 7), vec!["begin", "head   200 1", "complete ok", "begin",
                                                      "head   204 0", "complete ", "begin", "head   200 0", "body rest"]);
    }

    #[test]
    fn errors_have_reasons() {
        assert_eq!(events(Kind::Request, b"\x00GET", 10), vec!["begin", "error invalid_method"]);
        // (a version Wireshark takes, `HTTP/2.0`, is tolerated: see `tolerated_*`)
        assert_eq!(events(Kind::Request, b"GET / FTP/1.0\r\n", 10), vec!["begin", "error invalid_version"]);
        assert_eq!(events(Kind::Request, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 100),
                   vec!["begin", "error invalid_header_token"]);
        assert_eq!(events(Kind::Response, b"XTTP/1.1", 3), vec!["begin", "error invalid_version"]);
        assert_eq!(events(Kind::Response, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 100)
                       .last().unwrap(), "error invalid_chunk_size");
        let long = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 2000]].concat();
        assert_eq!(events(Kind::Request, &long, 100).last().unwrap(), "error header_too_large");
    }

    /// The heads of `d` fed in pieces of `step` bytes (bodies by Content-Length), as
    /// (method, target, status, minor, malformed), or the error.
    /// (method, target, status, minor, malformed) of a head.
    type Seen = (String, String, u16, u8, bool);

    fn heads(kind: Kind, d: &[u8], step: usize) -> Result<Vec<Seen>, &'static str> {
        let mut p = Parser::new(kind, 1024);
        let mut out = Vec::new();
        for chunk in d.chunks(step.max(1)) {
            let mut pos = 0;
            loop {
                let (ev, at) = p.step(chunk, pos);
                pos = at;
                match ev {
                    Ev::More => break,
                    Ev::Head(h) => {
                        let n = framing(&h.fields).ok().and_then(|f| f.length).unwrap_or(0);
                        out.push((String::from_utf8_lossy(&h.method).into_owned(),
                                  String::from_utf8_lossy(&h.target).into_owned(), h.status, h.minor, h.malformed));
                        p.set_body(Body::Length(n));
                    }
                    Ev::Error(r) => return Err(r),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn tolerated_request_lines_are_heads_flagged_malformed() {
        let h = |m: &str, t: &str, minor: u8| (m.to_string(), t.to_string(), 0u16, minor, true);
        let cases: [(&[u8], _); 9] = [
            (b"OPTIONS\r\nHost: h\r\n\r\n", h("OPTIONS", "", 0)),              // no target, no version
            (b"OPTIONS \r\n\r\n", h("OPTIONS", "", 0)),
            (b"GET / HTTP/1.\r\nHost: h\r\n\r\n", h("GET", "/", 0)),        // version cut short
            (b"GET /\r\n\r\n", h("GET", "/", 0)),                             // HTTP/0.9 style
            (b"GET /x \n\n", h("GET", "/x", 0)),
            (b"GET / HTTP/2.0\r\n\r\n", h("GET", "/", 0)),
            (b"GET index.html HTTP/1.1\r\n\r\n", h("GET", "index.html", 1)), // not origin-form
            (b"HEAD /  HTTP/1.1\r\n\r\n", h("HEAD", "/", 1)),                 // two spaces
            (b"POST /p HTTP/1.1.1\r\nContent-Length: 2\r\n\r\nabGET / HTTP/1.1\r\n\r\n", h("POST", "/p", 1)),
        ];
        for (d, want) in cases {
            for step in 1..=d.len() {
                let got = heads(Kind::Request, d, step);
                let got = got.unwrap_or_else(|e| panic!("{:?} step {step}: {e}", String::from_utf8_lossy(d)));
                assert_eq!(got.first(), Some(&want), "{:?} step {step}", String::from_utf8_lossy(d));
            }
        }
        // the next request after a tolerated one is read as usual
        let two = heads(Kind::Request, b"POST /p HTTP/1.1.1\r\nContent-Length: 2\r\n\r\nabGET / HTTP/1.1\r\n\r\n", 5);
        assert_eq!(two.unwrap().get(1), Some(&("GET".to_string(), "/".to_string(), 0, 1, false)));
        // well-formed lines are not flagged
        assert_eq!(heads(Kind::Request, b"GET / HTTP/1.0\r\n\r\n", 3).unwrap(),
                   vec![("GET".to_string(), "/".to_string(), 0, 0, false)]);
    }

    #[test]
    fn tolerated_status_lines_are_heads_flagged_malformed() {
        let h = |status: u16, minor: u8| (String::new(), String::new(), status, minor, true);
        let cases: [(&[u8], _); 6] = [
            (b"HTTP/1. 200 OK\r\nContent-Length: 0\r\n\r\n", h(200, 0)),
            (b"HTTP/1 404 Not Found\r\n\r\n", h(404, 0)),
            (b"HTTP/1.1  200 OK\r\n\r\n", h(200, 1)),
            (b"HTTP/1.1 200OK\r\n\r\n", h(200, 1)),
            (b"HTTP/0.9 500\n\n", h(500, 0)),
            (b"HTTP/2 204 \r\n\r\n", h(204, 0)),
        ];
        for (d, want) in cases {
            for step in 1..=d.len() {
                let got = heads(Kind::Response, d, step);
                let got = got.unwrap_or_else(|e| panic!("{:?} step {step}: {e}", String::from_utf8_lossy(d)));
                assert_eq!(got.first(), Some(&want), "{:?} step {step}", String::from_utf8_lossy(d));
            }
        }
        assert_eq!(heads(Kind::Response, b"HTTP/1.1 200\r\n\r\n", 4).unwrap(),
                   vec![(String::new(), String::new(), 200, 1, false)]);
    }

    #[test]
    fn what_wireshark_would_not_take_is_still_an_error() {
        for (kind, d, reason) in [
            (Kind::Request, b"FOO / HTTP/1.1\r\n".as_slice(), "invalid_method"),
            (Kind::Request, b"GETX / HTTP/1.1\r\n", "invalid_method"),
            (Kind::Request, b"GET /\x01 HTTP/1.1\r\n", "invalid_url"),
            (Kind::Request, b"GET / FTP/1.0\r\n", "invalid_version"),
            (Kind::Response, b"HTTP/1.1 2000 OK\r\n", "invalid_status"),
            (Kind::Response, b"HTTP/1.1 abc\r\n", "invalid_status"),
            (Kind::Response, b"HTTP/1.1\r\n", "invalid_status"),
            (Kind::Response, b"HTTX/1.1 200 OK\r\n", "invalid_version"),
            (Kind::Response, b"HTTP/1.1 200 O\x01K\r\n", "invalid_status"),
        ] {
            for step in 1..=d.len() {
                assert_eq!(heads(kind, d, step), Err(reason), "{:?} step {step}", String::from_utf8_lossy(d));
            }
        }
    }

    #[test]
    fn framing_rules() {
        let f = |fields: &[(&str, &str)]| {
            framing(&fields.iter().map(|(a, b)| (a.as_bytes().to_vec(), b.as_bytes().to_vec())).collect())
        };
        assert_eq!(f(&[("Content-Length", "nope")]), Err(("invalid_content_length", 0)));
        assert_eq!(f(&[("Content-Length", "5"), ("content-length", "6")]), Err(("duplicate_content_length", 1)));
        assert_eq!(f(&[("Content-Length", "5"), ("Transfer-Encoding", "chunked")]),
                   Err(("content_length_with_transfer_encoding", 1)));
        let x = f(&[("Transfer-Encoding", "gzip, chunked")]).unwrap();
        assert!(x.te && x.chunked && x.length.is_none());
        assert!(!f(&[("Transfer-Encoding", "chunked, gzip")]).unwrap().chunked);
        assert!(f(&[("Upgrade", "websocket"), ("Connection", "keep-alive, Upgrade")]).unwrap().upgrade);
        assert!(!f(&[("Upgrade", "websocket")]).unwrap().upgrade);
    }

    #[test]
    fn partial_heads() {
        let mut p = Parser::new(Kind::Request, 1024);
        let d = b"GET /pa";
        let (ev, at) = p.step(d, 0);
        assert_eq!((ev, at), (Ev::Begin, 0));
        assert_eq!(p.step(d, 0).0, Ev::More);
        let part = p.partial();
        assert_eq!((part.method.as_deref(), part.target.as_slice()), (Some(b"GET".as_slice()), b"/pa".as_slice()));
        let d = b"th HTTP/1.1\r\nHost: h\r\nX-Cut: y";
        assert_eq!(p.step(d, 0).0, Ev::More);
        let part = p.partial();
        assert_eq!(part.target, b"/path");
        assert_eq!(part.fields, vec![(b"Host".to_vec(), b"h".to_vec())]);
        let mut p = Parser::new(Kind::Response, 1024);
        p.step(b"HTTP/1.1 404", 0);
        p.step(b"HTTP/1.1 404", 0);
        assert_eq!(p.partial().status, 404);
    }

    /// A tiny deterministic generator (no dependency): xorshift.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn random_truncated_and_mutated_input_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let samples: [&[u8]; 2] = [REQS, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: y\r\n\r\n"];
        for round in 0..3000 {
            let kind = if round % 2 == 0 { Kind::Request } else { Kind::Response };
            let mut d = samples[round % 2].to_vec();
            match rng(&mut seed) % 3 {
                0 => d.truncate((rng(&mut seed) as usize) % (d.len() + 1)),
                1 => {
                    for _ in 0..4 {
                        let i = (rng(&mut seed) as usize) % d.len();
                        d[i] = rng(&mut seed) as u8;
                    }
                }
                _ => d = (0..(rng(&mut seed) % 200)).map(|_| rng(&mut seed) as u8).collect(),
            }
            let step = 1 + (rng(&mut seed) as usize) % 17;
            let mut p = Parser::new(kind, 256);
            for chunk in d.chunks(step) {
                let mut pos = 0;
                for _ in 0..10_000 {
                    let (ev, at) = p.step(chunk, pos);
                    assert!(at <= chunk.len() && at >= pos);
                    pos = at;
                    match ev {
                        Ev::More => break,
                        Ev::Head(h) => p.set_body(match framing(&h.fields) {
                            Ok(f) if f.chunked => Body::Chunked,
                            Ok(f) => Body::Length(f.length.unwrap_or(0)),
                            Err(_) => Body::None,
                        }),
                        Ev::Error(_) => {
                            let _ = p.partial();
                            p.reset();
                        }
                        _ => {}
                    }
                }
                let _ = p.partial();
            }
        }
    }
}
