//! The MySQL (and MariaDB) client/server protocol over one TCP connection.
//!
//! Unlike PostgreSQL's, a MySQL response cannot be framed without knowing the command it
//! answers (a result set is a column count, that many column definitions, maybe an EOF,
//! rows, an EOF or OK; a prepared statement's answer has its own shape), so this module
//! is the whole connection: a packet framer per direction and one state machine that
//! pairs each command with its response and gives back [`Event`]s: a login, a command
//! with its outcome, TLS bytes after an SSL request, a parse error.
//!
//! The protocol (https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html,
//! https://mariadb.com/kb/en/clientserver-protocol/): a packet is a 3-byte little-endian
//! payload length, a sequence number and the payload; a payload of exactly 2^24 - 1 bytes
//! continues in the next packet (one logical packet). The server speaks first (the
//! handshake: protocol 10, its version, capabilities, auth plugin); the client answers
//! with its capabilities, user, auth response (never read here), database and plugin —
//! or with a short SSL request, after which both directions are TLS (handed back as
//! they come, for the TLS analyser, as Wireshark's `mysql` hands them to `tls`). The
//! server may switch the auth plugin (0xFE) or ask for more (0x01, caching_sha2's fast
//! path or full authentication); OK (0x00) or ERR (0xFF) ends the login. Then each
//! command (sequence 0, first byte the command) gets one response: OK, ERR, a result
//! set (column count, column definitions, an EOF unless both sides set
//! CLIENT_DEPRECATE_EOF, rows, then an EOF or an OK with header 0xFE), LOCAL INFILE's
//! file request (0xFB), or for COM_STMT_PREPARE the statement's id and its parameter and
//! column definitions. SERVER_MORE_RESULTS_EXISTS in the final status says another
//! result follows (multi-statements, stored procedures). COM_STMT_CLOSE,
//! COM_STMT_SEND_LONG_DATA and COM_QUIT get none.
//!
//! Quirks handled where they are: whether the EOF after column definitions is sent is
//! decided from the packet itself (an EOF is 0xFE with a payload under 9 bytes; a row
//! never is), so a capture that missed the handshake still frames results; an ERR may
//! end a result set in the middle of its rows (a query killed or timed out).
//!
//! Bad input: a packet that fits no state stops the connection's parsing until a gap
//! (named [`ParseError`]). After a gap — and for a capture that starts mid-connection —
//! the client's direction resumes at the next chunk (a segment's payload) that starts
//! with a command packet (sequence 0, a known command), the server's at the next chunk
//! after it that starts with a packet of sequence 1. Bounded: payloads are kept up to
//! [`KEEP_CLIENT`]/[`KEEP_SERVER`] bytes, at most [`MAX_PENDING`] commands wait, at most
//! [`MAX_STATEMENTS`] prepared statements are remembered. Never panics.

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use crate::state_bytes::{frame, unframe, Res, R, W};

/// Bytes kept of a client packet's payload (a query's text beyond is cut).
pub const KEEP_CLIENT: usize = 8192;
/// Bytes kept of a server packet's payload (an error message, the handshake).
pub const KEEP_SERVER: usize = 1024;
/// Commands waiting for their response at most (the oldest beyond go out unanswered).
pub const MAX_PENDING: usize = 1024;
/// Prepared statements remembered per connection at most.
pub const MAX_STATEMENTS: usize = 1024;
/// A payload this long continues in the next packet.
const MAX_PAYLOAD: usize = 0xFF_FFFF;

pub const COM_QUIT: u8 = 0x01;
pub const COM_INIT_DB: u8 = 0x02;
pub const COM_QUERY: u8 = 0x03;
pub const COM_STMT_PREPARE: u8 = 0x16;
pub const COM_STMT_EXECUTE: u8 = 0x17;
pub const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
pub const COM_STMT_CLOSE: u8 = 0x19;
/// The login, as an event's command.
pub const LOGIN: u8 = 0xFF;

const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_COMPRESS: u32 = 0x20;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x20_0000;
const CLIENT_DEPRECATE_EOF: u32 = 0x100_0000;
/// Capability bit 0: set by MySQL; a MariaDB server (10.2+) clears it to say its
/// handshake carries MariaDB's extended capabilities (and the client's response, then,
/// its own), in the last 4 of the handshake's 10 reserved bytes / at byte 28 of the response
const CLIENT_MYSQL: u32 = 0x1;
/// MariaDB's MARIADB_CLIENT_CACHE_METADATA (1 << 36: bit 4 of the extended
/// capabilities, MariaDB 10.6+, asked for by Connector/C 3.3+): a result set's column
/// count is followed by a byte saying whether its column definitions follow; a prepared
/// statement's executes leave them out (the prepare sent them)
const MARIADB_CLIENT_CACHE_METADATA: u32 = 1 << 4;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x8;

/// Commands a client sends (COM_SLEEP .. COM_RESET_CONNECTION, and MariaDB's bulk execute).
fn known_command(c: u8) -> bool {
    (0x01..=0x1f).contains(&c) || c == 0xfa
}

/// The command's name, for records of commands that are not SQL.
pub fn command_name(c: u8) -> &'static str {
    match c {
        0x01 => "QUIT",
        0x02 => "USE",
        0x03 => "QUERY",
        0x04 => "FIELD_LIST",
        0x05 => "CREATE_DB",
        0x06 => "DROP_DB",
        0x07 => "REFRESH",
        0x08 => "SHUTDOWN",
        0x09 => "STATISTICS",
        0x0a => "PROCESS_INFO",
        0x0c => "PROCESS_KILL",
        0x0d => "DEBUG",
        0x0e => "PING",
        0x11 => "CHANGE_USER",
        0x12 => "BINLOG_DUMP",
        0x16 => "PREPARE",
        0x17 => "EXECUTE",
        0x1a => "STMT_RESET",
        0x1b => "SET_OPTION",
        0x1c => "STMT_FETCH",
        0x1f => "RESET_CONNECTION",
        0xfa => "STMT_BULK_EXECUTE",
        0xff => "STARTUP",
        _ => "COMMAND",
    }
}

/// Why the connection's parsing stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// the server's first packet is not a protocol 10 handshake
    BadHandshake,
    /// a client packet in the command phase that is no command
    BadCommand,
    /// a server packet that fits no state of the response
    BadResponse,
    /// the client and server agreed on compression (CLIENT_COMPRESS): not read
    Compressed,
}

impl ParseError {
    pub fn name(self) -> &'static str {
        match self {
            ParseError::BadHandshake => "bad_handshake",
            ParseError::BadCommand => "bad_command",
            ParseError::BadResponse => "bad_response",
            ParseError::Compressed => "compressed",
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Option<ParseError> {
        [ParseError::BadHandshake, ParseError::BadCommand, ParseError::BadResponse, ParseError::Compressed]
            .get(c as usize)
            .copied()
    }
}

/// A command (or the login) and its outcome.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Done {
    /// the command byte (COM_QUERY...), [`LOGIN`] for the login
    pub command: u8,
    /// COM_QUERY's and COM_STMT_PREPARE's SQL (COM_STMT_EXECUTE: the prepared one's,
    /// if it was seen), COM_INIT_DB's database; the login: the user
    pub text: Vec<u8>,
    /// the text was longer than what is kept
    pub cut: bool,
    /// the login: the database asked for
    pub database: Vec<u8>,
    /// the login: the auth plugin (the server's switch, else the client's)
    pub plugin: Vec<u8>,
    /// None: no response (the connection ended, a gap); Some(true) OK, Some(false) ERR
    pub ok: Option<bool>,
    pub error_code: Option<u16>,
    pub sqlstate: Vec<u8>,
    pub message: Vec<u8>,
    /// rows of the result sets
    pub rows: u64,
    /// result sets (0: an OK)
    pub results: u32,
    /// the OK's affected rows (the last OK's)
    pub affected: Option<u64>,
    pub request_ts_us: i64,
    pub response_ts_us: i64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// sent while another command still waited for its response
    pub pipelined: bool,
}

/// What the connection gives back.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Done(Done),
    /// bytes of a direction after TLS was agreed
    Tls(usize, Vec<u8>),
    /// the client asked for TLS
    SslRequest,
    Error(ParseError),
}

/// One direction's packet framing.
#[derive(Clone, Debug, Default, PartialEq)]
struct Framer {
    head: [u8; 4],
    head_len: u8,
    /// payload bytes of this packet still to come
    remaining: u32,
    /// the logical packet: kept payload, its length, its wire bytes, its first sequence
    payload: Vec<u8>,
    length: u64,
    bytes: u64,
    seq: u8,
    /// the current packet's payload is 2^24 - 1 bytes: the logical packet goes on
    continued: bool,
}

/// A complete logical packet.
struct Packet {
    seq: u8,
    payload: Vec<u8>,
    length: u64,
    bytes: u64,
}

impl Framer {
    /// Reads from `data[pos..]`; returns the new position and a packet if one completed.
    fn step(&mut self, data: &[u8], mut pos: usize, keep: usize) -> (usize, Option<Packet>) {
        if self.head_len < 4 {
            let take = (4 - self.head_len as usize).min(data.len() - pos);
            let at = self.head_len as usize;
            self.head[at..at + take].copy_from_slice(&data[pos..pos + take]);
            self.head_len += take as u8;
            pos += take;
            if self.head_len < 4 {
                return (pos, None);
            }
            let len = u32::from_le_bytes([self.head[0], self.head[1], self.head[2], 0]);
            if !self.continued {
                self.seq = self.head[3];
            }
            self.remaining = len;
            self.length += len as u64;
            self.bytes += 4;
            self.continued = len as usize == MAX_PAYLOAD;
        }
        let take = (self.remaining as usize).min(data.len() - pos);
        if self.payload.len() < keep {
            let room = keep - self.payload.len();
            self.payload.extend_from_slice(&data[pos..pos + take.min(room)]);
        }
        self.remaining -= take as u32;
        self.bytes += take as u64;
        pos += take;
        if self.remaining > 0 {
            return (pos, None);
        }
        self.head_len = 0;
        if self.continued {
            return (pos, None);
        }
        let p = Packet { seq: self.seq, payload: std::mem::take(&mut self.payload), length: self.length, bytes: self.bytes };
        self.length = 0;
        self.bytes = 0;
        (pos, Some(p))
    }

    fn reset(&mut self) {
        *self = Framer::default();
    }

    fn write(&self, w: &mut W) {
        w.raw(&self.head);
        w.u8(self.head_len);
        w.u32(self.remaining);
        w.bytes(&self.payload);
        w.u64(self.length);
        w.u64(self.bytes);
        w.u8(self.seq);
        w.b(self.continued);
    }

    fn read(r: &mut R) -> Res<Framer> {
        let f = Framer {
            head: r.take::<4>()?,
            head_len: r.u8()?,
            remaining: r.u32()?,
            payload: r.bytes()?,
            length: r.u64()?,
            bytes: r.u64()?,
            seq: r.u8()?,
            continued: r.b()?,
        };
        if f.head_len > 4 || f.payload.len() > KEEP_CLIENT || f.remaining as usize > MAX_PAYLOAD {
            return Err(r.err("bad packet position"));
        }
        Ok(f)
    }
}

/// Where the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// waiting for the server's handshake
    Greeting,
    /// the handshake seen: waiting for the client's response
    Response,
    /// the client answered: authentication until OK or ERR
    Auth,
    Command,
    /// TLS was agreed: bytes pass through
    Tls,
}

/// The response being read for the oldest waiting command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resp {
    First,
    /// column definitions still to come
    Columns(u64),
    /// after the definitions: an EOF, unless CLIENT_DEPRECATE_EOF (then the first row)
    ColumnsEnd,
    Rows,
    /// COM_STMT_PREPARE: parameter definitions to come, then columns
    PrepareParams(u64, u64),
    /// ... the EOF after the parameters (if any), then columns
    PrepareParamsEnd(u64),
    PrepareColumns(u64),
    PrepareColumnsEnd,
    /// LOCAL INFILE: the client sends the file then an empty packet; then the server's OK
    LocalInfile,
}

impl Resp {
    fn write(self, w: &mut W) {
        let (tag, a, b) = match self {
            Resp::First => (0, 0, 0),
            Resp::Columns(n) => (1, n, 0),
            Resp::ColumnsEnd => (2, 0, 0),
            Resp::Rows => (3, 0, 0),
            Resp::PrepareParams(p, c) => (4, p, c),
            Resp::PrepareParamsEnd(c) => (5, c, 0),
            Resp::PrepareColumns(c) => (6, c, 0),
            Resp::PrepareColumnsEnd => (7, 0, 0),
            Resp::LocalInfile => (8, 0, 0),
        };
        w.u8(tag);
        w.u64(a);
        w.u64(b);
    }

    fn read(r: &mut R) -> Res<Resp> {
        let tag = r.u8()?;
        let a = r.u64()?;
        let b = r.u64()?;
        Ok(match tag {
            0 => Resp::First,
            1 => Resp::Columns(a),
            2 => Resp::ColumnsEnd,
            3 => Resp::Rows,
            4 => Resp::PrepareParams(a, b),
            5 => Resp::PrepareParamsEnd(a),
            6 => Resp::PrepareColumns(a),
            7 => Resp::PrepareColumnsEnd,
            8 => Resp::LocalInfile,
            _ => return Err(r.err("bad response state")),
        })
    }
}

/// A length-encoded integer at `pos` (moves past it).
fn lenenc(p: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *p.get(*pos)?;
    let (n, size) = match first {
        0..=0xfa => (first as u64, 1),
        0xfc => (u16::from_le_bytes(crate::bytes::array(p, *pos + 1)?) as u64, 3),
        0xfd => {
            let b: [u8; 3] = crate::bytes::array(p, *pos + 1)?;
            (u32::from_le_bytes([b[0], b[1], b[2], 0]) as u64, 4)
        }
        0xfe => (u64::from_le_bytes(crate::bytes::array(p, *pos + 1)?), 9),
        _ => return None,
    };
    *pos += size;
    Some(n)
}

/// A NUL-terminated string at `pos` (to the end if it has no NUL); moves past it.
fn cstr(p: &[u8], pos: &mut usize) -> Vec<u8> {
    let rest = p.get(*pos..).unwrap_or(&[]);
    let n = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    *pos += (n + 1).min(rest.len());
    rest[..n].to_vec()
}

/// An EOF packet: 0xFE and less than 9 bytes (a row or an OK is never that short with
/// that first byte).
fn is_eof(p: &Packet) -> bool {
    p.payload.first() == Some(&0xfe) && p.length < 9
}

/// The status flags of an EOF (0xFE, warnings, status) or an OK (header, two lenenc
/// integers, status); for an OK also its affected rows. `deprecate_eof`: a short 0xFE
/// packet is an OK (CLIENT_DEPRECATE_EOF), not an EOF.
fn status_of(p: &Packet, deprecate_eof: bool) -> (u16, Option<u64>) {
    let d = &p.payload;
    if is_eof(p) && !deprecate_eof {
        return (crate::bytes::array::<2>(d, 3).map(u16::from_le_bytes).unwrap_or(0), None);
    }
    let mut pos = 1;
    let affected = lenenc(d, &mut pos);
    let _insert_id = lenenc(d, &mut pos);
    (crate::bytes::array::<2>(d, pos).map(u16::from_le_bytes).unwrap_or(0), affected)
}

/// The whole connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    pub client: usize,
    phase: Phase,
    framers: [Framer; 2],
    /// commands waiting for their response, the oldest first
    pending: VecDeque<Done>,
    resp: Resp,
    /// the login being made
    login: Option<Done>,
    /// prepared statements: (id, text, cut), the oldest first
    statements: VecDeque<(u32, Vec<u8>, bool)>,
    /// the server's capabilities (its handshake's), to be and-ed with the client's
    server_caps: u32,
    /// MariaDB's extended capabilities of the server (0 from a MySQL server)
    server_ext_caps: u32,
    /// MariaDB's metadata caching agreed: column counts carry a "metadata follows" byte
    cache_metadata: bool,
    /// CLIENT_COMPRESS agreed: nothing after the login can be read
    compressed: bool,
    /// whether result sets and prepares go without EOF packets (CLIENT_DEPRECATE_EOF):
    /// from the handshake, else learnt from the first result set; None: not known yet
    deprecate_eof: Option<bool>,
    broken: Option<ParseError>,
    /// per direction: waiting for a chunk that starts a packet
    resync: [bool; 2],
    /// chunks skipped while resynchronising
    pub skipped: u64,
    /// the capture time of the data being fed
    now: i64,
}

pub const MAGIC: &[u8; 4] = b"WSMY";
/// Version of the checkpoint bytes: bump it with any change of the fields.
pub const VERSION: u16 = 1;

impl Connection {
    /// `client`: the direction (0 or 1) of the client; `started`: the connection was
    /// seen from its start (the server's handshake comes first), else both directions
    /// wait for a command and its response.
    pub fn new(client: usize, started: bool) -> Self {
        Connection {
            client: client.min(1),
            phase: if started { Phase::Greeting } else { Phase::Command },
            framers: [Framer::default(), Framer::default()],
            pending: VecDeque::new(),
            resp: Resp::First,
            login: None,
            statements: VecDeque::new(),
            server_caps: 0,
            server_ext_caps: 0,
            cache_metadata: false,
            compressed: false,
            deprecate_eof: None,
            broken: None,
            resync: [!started, !started],
            skipped: 0,
            now: 0,
        }
    }

    pub fn broken(&self) -> Option<ParseError> {
        self.broken
    }

    /// Bytes of `direction` were never captured: the commands waiting go out without a
    /// response, and both directions wait for the next command and its response.
    pub fn gap(&mut self, direction: usize, ts_us: i64, out: &mut Vec<Event>) {
        if self.phase == Phase::Tls {
            let _ = direction;
            return;
        }
        self.flush(ts_us, out);
        self.framers[0].reset();
        self.framers[1].reset();
        self.resync = [true, true];
        self.broken = None;
        self.phase = Phase::Command;
    }

    /// The connection ended: what waits goes out without a response.
    pub fn close(&mut self, ts_us: i64, out: &mut Vec<Event>) {
        self.flush(ts_us, out);
    }

    fn flush(&mut self, _ts_us: i64, out: &mut Vec<Event>) {
        if let Some(login) = self.login.take() {
            if self.phase != Phase::Tls {
                out.push(Event::Done(login)); // (after an SSL request the login is inside TLS)
            }
        }
        while let Some(cmd) = self.pending.pop_front() {
            out.push(Event::Done(cmd));
        }
        self.resp = Resp::First;
    }

    /// The connection inside TLS, after the client's SSL request: it waits for the client's
    /// real handshake response, knowing the server's handshake (for the plaintext of a
    /// decrypted TLS session: docs/l7.md, "MySQL and MariaDB").
    pub fn after_ssl(&self) -> Connection {
        let mut c = Connection::new(self.client, true);
        c.phase = Phase::Response;
        c.server_caps = self.server_caps;
        c.server_ext_caps = self.server_ext_caps;
        c.login = self.login.clone();
        c
    }

    /// Parse `data` of `direction`, captured at `ts_us`.
    pub fn feed(&mut self, direction: usize, data: &[u8], ts_us: i64, out: &mut Vec<Event>) {
        let d = direction.min(1);
        self.now = ts_us;
        if self.phase == Phase::Tls {
            if !data.is_empty() {
                out.push(Event::Tls(d, data.to_vec()));
            }
            return;
        }
        if self.broken.is_some() {
            return;
        }
        let client = d == self.client;
        if self.resync[d] {
            if !self.starts_packet(client, data) {
                self.skipped += 1;
                return;
            }
            self.resync[d] = false;
        }
        let keep = if client { KEEP_CLIENT } else { KEEP_SERVER };
        let mut pos = 0;
        while pos < data.len() {
            let (next, packet) = self.framers[d].step(data, pos, keep);
            pos = next;
            if let Some(p) = packet {
                if client {
                    self.client_packet(p, out);
                } else {
                    self.server_packet(p, out);
                }
                if self.broken.is_some() {
                    return;
                }
                if self.phase == Phase::Tls {
                    if pos < data.len() {
                        out.push(Event::Tls(d, data[pos..].to_vec()));
                    }
                    return;
                }
            }
        }
    }

    /// After a gap: the client resumes at a command packet; the server at a packet of
    /// a sequence above 0 once a command waits.
    fn starts_packet(&self, client: bool, data: &[u8]) -> bool {
        let Some(h) = crate::bytes::array::<5>(data, 0) else { return false };
        let len = u32::from_le_bytes([h[0], h[1], h[2], 0]);
        if len == 0 {
            return false;
        }
        if client {
            h[3] == 0 && known_command(h[4])
        } else {
            // (sequence 1 usually; more after a command of several packets)
            h[3] >= 1 && !self.pending.is_empty()
        }
    }

    fn fail(&mut self, e: ParseError, out: &mut Vec<Event>) {
        self.broken = Some(e);
        out.push(Event::Error(e));
    }

    // --- the client's packets ----------------------------------------------------------

    fn client_packet(&mut self, p: Packet, out: &mut Vec<Event>) {
        match self.phase {
            Phase::Greeting => {
                // a client speaking first: not MySQL (or a capture that missed the
                // handshake: then the command is read as one)
                self.phase = Phase::Command;
                self.client_packet(p, out);
            }
            Phase::Response => self.handshake_response(p, out),
            Phase::Auth => {
                // auth data (a scramble, a password over TLS or RSA-encrypted): never read
                if let Some(login) = self.login.as_mut() {
                    login.request_bytes += p.bytes;
                }
            }
            Phase::Command => {
                if let Some(Resp::LocalInfile) = self.pending.front().map(|_| self.resp) {
                    // the file's contents, then an empty packet
                    if let Some(head) = self.pending.front_mut() {
                        head.request_bytes += p.bytes;
                    }
                    if p.length == 0 {
                        self.resp = Resp::First;
                    }
                    return;
                }
                let Some(&command) = p.payload.first() else {
                    self.fail(ParseError::BadCommand, out);
                    return;
                };
                if p.seq != 0 || !known_command(command) {
                    self.fail(ParseError::BadCommand, out);
                    return;
                }
                self.command(command, p, out);
            }
            Phase::Tls => {}
        }
    }

    fn handshake_response(&mut self, p: Packet, out: &mut Vec<Event>) {
        let d = &p.payload;
        let caps = crate::bytes::array::<4>(d, 0).map(u32::from_le_bytes).unwrap_or(0);
        let mut login = Done {
            command: LOGIN,
            request_ts_us: self.now,
            request_bytes: p.bytes,
            ..Done::default()
        };
        if caps & CLIENT_SSL != 0 && p.length == 32 {
            // the SSL request: the real response, and the login, are inside TLS (the
            // connection's wire.tls record is its record; decrypted, `after_ssl` reads on)
            out.push(Event::SslRequest);
            self.phase = Phase::Tls;
            return;
        }
        let mut pos = 32;
        login.text = cstr(d, &mut pos);
        // the auth response (skipped, never kept)
        let auth_len = if caps & CLIENT_PLUGIN_AUTH_LENENC != 0 {
            lenenc(d, &mut pos).unwrap_or(0)
        } else if caps & CLIENT_SECURE_CONNECTION != 0 {
            let n = d.get(pos).copied().unwrap_or(0) as u64;
            pos += 1;
            n
        } else {
            let _ = cstr(d, &mut pos);
            0
        };
        pos = pos.saturating_add(auth_len as usize);
        if caps & CLIENT_CONNECT_WITH_DB != 0 {
            login.database = cstr(d, &mut pos);
        }
        if caps & CLIENT_PLUGIN_AUTH != 0 {
            login.plugin = cstr(d, &mut pos);
        }
        self.deprecate_eof = Some(caps & self.server_caps & CLIENT_DEPRECATE_EOF != 0);
        // capabilities (4), max packet (4), charset (1), reserved (19), MariaDB's extended (4)
        let client_ext = if caps & CLIENT_MYSQL == 0 {
            crate::bytes::array::<4>(d, 28).map(u32::from_le_bytes).unwrap_or(0)
        } else {
            0
        };
        self.cache_metadata = client_ext & self.server_ext_caps & MARIADB_CLIENT_CACHE_METADATA != 0;
        self.compressed = caps & self.server_caps & CLIENT_COMPRESS != 0;
        if let Some(prev) = self.login.take() {
            // the server's handshake named a plugin; the client's choice wins
            if login.plugin.is_empty() {
                login.plugin = prev.plugin;
            }
        }
        self.login = Some(login);
        self.phase = Phase::Auth;
    }

    fn command(&mut self, command: u8, p: Packet, out: &mut Vec<Event>) {
        let body = &p.payload[1..];
        let mut cmd = Done {
            command,
            request_ts_us: self.now,
            request_bytes: p.bytes,
            pipelined: !self.pending.is_empty(),
            ..Done::default()
        };
        match command {
            COM_QUERY | COM_STMT_PREPARE | COM_INIT_DB => {
                // MariaDB and MySQL 8 with query attributes put a parameter count first
                // only when CLIENT_QUERY_ATTRIBUTES was agreed: not asked for by the
                // clients we know of; the text is the rest
                cmd.text = body.to_vec();
                cmd.cut = p.length as usize > p.payload.len();
            }
            COM_STMT_EXECUTE | COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA | 0x1a | 0x1c | 0xfa => {
                let id = crate::bytes::array::<4>(body, 0).map(u32::from_le_bytes).unwrap_or(0);
                let known = self.statements.iter().find(|(i, _, _)| *i == id).cloned();
                if command == COM_STMT_CLOSE {
                    self.statements.retain(|(i, _, _)| *i != id);
                }
                if let Some((_, text, cut)) = known {
                    cmd.text = text;
                    cmd.cut = cut;
                }
            }
            _ => {}
        }
        // commands without a response
        if matches!(command, COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA | COM_QUIT) {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            if let Some(old) = self.pending.pop_front() {
                out.push(Event::Done(old));
            }
            self.resp = Resp::First;
        }
        self.pending.push_back(cmd);
    }

    // --- the server's packets ----------------------------------------------------------

    fn server_packet(&mut self, p: Packet, out: &mut Vec<Event>) {
        match self.phase {
            Phase::Greeting => self.greeting(p, out),
            Phase::Response => {
                // the server closing with an error before the client answered
                if p.payload.first() == Some(&0xff) {
                    let mut login = self.login.take().unwrap_or_default();
                    login.command = LOGIN;
                    Self::error_into(&mut login, &p);
                    login.response_ts_us = self.now;
                    out.push(Event::Done(login));
                }
            }
            Phase::Auth => self.auth(p, out),
            Phase::Command => self.response(p, out),
            Phase::Tls => {}
        }
    }

    fn greeting(&mut self, p: Packet, out: &mut Vec<Event>) {
        let d = &p.payload;
        match d.first() {
            Some(0x0a) => {
                let mut pos = 1;
                let _version = cstr(d, &mut pos);
                // connection id (4), scramble (8), filler (1), caps low (2), charset (1),
                // status (2), caps high (2), scramble length (1), reserved (10), scramble
                // part 2 (at least 13), plugin name
                pos += 4 + 8 + 1;
                let low = crate::bytes::array::<2>(d, pos).map(u16::from_le_bytes).unwrap_or(0) as u32;
                let high = crate::bytes::array::<2>(d, pos + 5).map(u16::from_le_bytes).unwrap_or(0) as u32;
                self.server_caps = low | high << 16;
                pos += 2 + 1 + 2 + 2;
                // a MariaDB server's extended capabilities: the reserved bytes' last 4
                if low & CLIENT_MYSQL == 0 {
                    self.server_ext_caps = crate::bytes::array::<4>(d, pos + 1 + 6).map(u32::from_le_bytes).unwrap_or(0);
                }
                let scramble = d.get(pos).copied().unwrap_or(0) as usize;
                pos += 1 + 10 + scramble.saturating_sub(8).max(13);
                let plugin = cstr(d, &mut pos);
                self.login = Some(Done { command: LOGIN, plugin, ..Done::default() });
                self.phase = Phase::Response;
            }
            Some(0xff) => {
                // refused before any handshake ("Host is not allowed to connect", too many connections)
                let mut login = Done { command: LOGIN, request_ts_us: self.now, ..Done::default() };
                Self::error_into(&mut login, &p);
                login.response_ts_us = self.now;
                out.push(Event::Done(login));
            }
            _ => self.fail(ParseError::BadHandshake, out),
        }
    }

    fn auth(&mut self, p: Packet, out: &mut Vec<Event>) {
        let Some(login) = self.login.as_mut() else {
            self.phase = Phase::Command;
            return;
        };
        login.response_bytes += p.bytes;
        match p.payload.first() {
            Some(0x00) => {
                login.ok = Some(true);
                login.response_ts_us = self.now;
                out.push(Event::Done(self.login.take().unwrap_or_default()));
                self.phase = Phase::Command;
                if self.compressed {
                    // every packet from here on is inside a compressed packet
                    self.fail(ParseError::Compressed, out);
                }
            }
            Some(0xff) => {
                Self::error_into(login, &p);
                login.response_ts_us = self.now;
                out.push(Event::Done(self.login.take().unwrap_or_default()));
                self.phase = Phase::Command;
            }
            Some(0xfe) => {
                // an auth switch: the plugin the server wants
                let mut pos = 1;
                let plugin = cstr(&p.payload, &mut pos);
                if !plugin.is_empty() {
                    login.plugin = plugin;
                }
            }
            _ => {} // 0x01: more data (caching_sha2_password's fast or full path)
        }
    }

    fn error_into(done: &mut Done, p: &Packet) {
        let d = &p.payload;
        done.ok = Some(false);
        done.error_code = crate::bytes::array::<2>(d, 1).map(u16::from_le_bytes);
        let mut pos = 3;
        if d.get(3) == Some(&b'#') {
            done.sqlstate = d.get(4..9).unwrap_or(&[]).to_vec();
            pos = 9;
        }
        done.message = d.get(pos..).unwrap_or(&[]).iter().copied().take(512).collect();
    }

    fn response(&mut self, p: Packet, out: &mut Vec<Event>) {
        let Some(head) = self.pending.front_mut() else {
            // a response to nothing we saw (a capture from the middle): wait for a command
            self.resync[1 - self.client] = true;
            self.framers[1 - self.client].reset();
            return;
        };
        head.response_bytes += p.bytes;
        let first = p.payload.first().copied();
        match self.resp {
            Resp::First => match first {
                Some(0xff) => {
                    Self::error_into(head, &p);
                    self.finish(out);
                }
                Some(0x00) if head.command == COM_STMT_PREPARE => {
                    // statement id (4), columns (2), parameters (2), filler, warnings
                    let d = &p.payload;
                    let id = crate::bytes::array::<4>(d, 1).map(u32::from_le_bytes).unwrap_or(0);
                    let columns = crate::bytes::array::<2>(d, 5).map(u16::from_le_bytes).unwrap_or(0) as u64;
                    let params = crate::bytes::array::<2>(d, 7).map(u16::from_le_bytes).unwrap_or(0) as u64;
                    let (text, cut) = (head.text.clone(), head.cut);
                    self.statements.retain(|(i, _, _)| *i != id);
                    if self.statements.len() >= MAX_STATEMENTS {
                        self.statements.pop_front();
                    }
                    self.statements.push_back((id, text, cut));
                    if params > 0 {
                        self.resp = Resp::PrepareParams(params, columns);
                    } else {
                        self.prepare_columns(columns, out);
                    }
                }
                Some(0x00) | Some(0xfe) => {
                    // an OK (0xFE: as an OK when CLIENT_DEPRECATE_EOF, or an old EOF)
                    let (status, affected) = status_of(&p, self.deprecate_eof == Some(true));
                    head.affected = affected.or(head.affected);
                    if status & SERVER_MORE_RESULTS_EXISTS == 0 {
                        self.finish(out);
                    }
                }
                Some(0xfb) => self.resp = Resp::LocalInfile,
                Some(_) => {
                    let mut pos = 0;
                    match lenenc(&p.payload, &mut pos) {
                        Some(n) if n > 0 => {
                            head.results += 1;
                            // MariaDB's metadata caching: 0 after the count, no column
                            // definitions follow (an EOF still does, without DEPRECATE_EOF)
                            let defined = !self.cache_metadata || p.payload.get(pos) != Some(&0);
                            self.resp = if defined { Resp::Columns(n) } else { Resp::ColumnsEnd };
                        }
                        _ => self.fail(ParseError::BadResponse, out),
                    }
                }
                None => self.fail(ParseError::BadResponse, out),
            },
            Resp::Columns(n) => {
                if first == Some(0xff) {
                    Self::error_into(head, &p);
                    self.finish(out);
                } else {
                    self.resp = if n > 1 { Resp::Columns(n - 1) } else { Resp::ColumnsEnd };
                }
            }
            Resp::ColumnsEnd => {
                self.resp = Resp::Rows;
                let eof = is_eof(&p);
                self.deprecate_eof.get_or_insert(!eof);
                if !eof {
                    // CLIENT_DEPRECATE_EOF: no EOF after the definitions: this is a row (or the end)
                    self.response(Packet { bytes: 0, ..p }, out);
                }
            }
            Resp::Rows => match first {
                Some(0xff) => {
                    Self::error_into(head, &p);
                    self.finish(out);
                }
                Some(0xfe) if p.length < MAX_PAYLOAD as u64 => {
                    let (status, affected) = status_of(&p, self.deprecate_eof == Some(true));
                    head.affected = affected.or(head.affected);
                    if status & SERVER_MORE_RESULTS_EXISTS != 0 {
                        self.resp = Resp::First;
                    } else {
                        self.finish(out);
                    }
                }
                _ => head.rows += 1,
            },
            Resp::PrepareParams(n, columns) => {
                if n > 1 {
                    self.resp = Resp::PrepareParams(n - 1, columns);
                } else if self.deprecate_eof == Some(true) {
                    self.prepare_columns(columns, out);
                } else {
                    self.resp = Resp::PrepareParamsEnd(columns);
                }
            }
            Resp::PrepareParamsEnd(columns) => {
                if is_eof(&p) {
                    self.deprecate_eof.get_or_insert(false);
                    self.prepare_columns(columns, out);
                } else if columns > 0 {
                    // no EOF (CLIENT_DEPRECATE_EOF): this was the first column definition
                    self.deprecate_eof.get_or_insert(true);
                    self.prepare_column_read(columns, out);
                } else {
                    self.fail(ParseError::BadResponse, out);
                }
            }
            Resp::PrepareColumns(n) => self.prepare_column_read(n, out),
            Resp::PrepareColumnsEnd => {
                if is_eof(&p) {
                    self.finish(out);
                } else {
                    // not known to send EOFs and none came: the prepare ended with its
                    // last definition, and this packet answers the next command
                    self.deprecate_eof.get_or_insert(true);
                    if let Some(h) = self.pending.front_mut() {
                        h.response_bytes -= p.bytes;
                    }
                    self.finish(out);
                    self.response(p, out);
                }
            }
            Resp::LocalInfile => {
                // the server's answer after the client's file
                if first == Some(0xff) {
                    Self::error_into(head, &p);
                }
                let (_, affected) = status_of(&p, self.deprecate_eof == Some(true));
                head.affected = affected.or(head.affected);
                self.finish(out);
            }
        }
    }

    /// After a prepare's parameters (and their EOF): its columns, or the end.
    fn prepare_columns(&mut self, columns: u64, out: &mut Vec<Event>) {
        if columns > 0 {
            self.resp = Resp::PrepareColumns(columns);
        } else {
            self.finish(out);
        }
    }

    /// A prepare's column definition was read, `left` of them before it: with the last,
    /// the prepare is done (without EOFs) or waits for its EOF.
    fn prepare_column_read(&mut self, left: u64, out: &mut Vec<Event>) {
        if left > 1 {
            self.resp = Resp::PrepareColumns(left - 1);
        } else if self.deprecate_eof == Some(true) {
            self.finish(out);
        } else {
            self.resp = Resp::PrepareColumnsEnd;
        }
    }

    /// The head command is answered.
    fn finish(&mut self, out: &mut Vec<Event>) {
        if let Some(mut cmd) = self.pending.pop_front() {
            if cmd.ok.is_none() {
                cmd.ok = Some(true);
            }
            cmd.response_ts_us = self.now;
            out.push(Event::Done(cmd));
        }
        self.resp = Resp::First;
    }

    // --- checkpoint ------------------------------------------------------------------

    pub fn snapshot(&self) -> Vec<u8> {
        let mut w = W(Vec::new());
        w.u8(self.client as u8);
        w.u8(match self.phase {
            Phase::Greeting => 0,
            Phase::Response => 1,
            Phase::Auth => 2,
            Phase::Command => 3,
            Phase::Tls => 4,
        });
        for f in &self.framers {
            f.write(&mut w);
        }
        w.u64(self.pending.len() as u64);
        for c in &self.pending {
            write_done(&mut w, c);
        }
        self.resp.write(&mut w);
        w.b(self.login.is_some());
        if let Some(l) = &self.login {
            write_done(&mut w, l);
        }
        w.u64(self.statements.len() as u64);
        for (id, text, cut) in &self.statements {
            w.u32(*id);
            w.bytes(text);
            w.b(*cut);
        }
        w.u32(self.server_caps);
        w.b(self.compressed);
        w.ou8(self.deprecate_eof.map(u8::from));
        w.ou8(self.broken.map(ParseError::code));
        w.b(self.resync[0]);
        w.b(self.resync[1]);
        w.u64(self.skipped);
        w.i64(self.now);
        // (added after version 1's first layout: a checkpoint without them restores)
        w.u32(self.server_ext_caps);
        w.b(self.cache_metadata);
        frame(MAGIC, VERSION, &w.0)
    }

    pub fn restore(data: &[u8]) -> Res<Connection> {
        let body = unframe("MySQL connection", MAGIC, VERSION, data)?;
        let mut r = R::new("MySQL connection", body);
        let client = r.u8()? as usize;
        if client > 1 {
            return Err(r.err("bad client direction"));
        }
        let phase = match r.u8()? {
            0 => Phase::Greeting,
            1 => Phase::Response,
            2 => Phase::Auth,
            3 => Phase::Command,
            4 => Phase::Tls,
            _ => return Err(r.err("bad phase")),
        };
        let framers = [Framer::read(&mut r)?, Framer::read(&mut r)?];
        let n = r.count(64)?;
        if n > MAX_PENDING {
            return Err(r.err("too many commands"));
        }
        let mut pending = VecDeque::with_capacity(n);
        for _ in 0..n {
            pending.push_back(read_done(&mut r)?);
        }
        let resp = Resp::read(&mut r)?;
        let login = if r.b()? { Some(read_done(&mut r)?) } else { None };
        let n = r.count(13)?;
        if n > MAX_STATEMENTS {
            return Err(r.err("too many statements"));
        }
        let mut statements = VecDeque::with_capacity(n);
        for _ in 0..n {
            let id = r.u32()?;
            let text = r.bytes()?;
            let cut = r.b()?;
            statements.push_back((id, text, cut));
        }
        let server_caps = r.u32()?;
        let compressed = r.b()?;
        let deprecate_eof = r.ou8()?.map(|v| v != 0);
        let broken = match r.ou8()? {
            Some(c) => Some(ParseError::from_code(c).ok_or_else(|| r.err("bad error"))?),
            None => None,
        };
        let resync = [r.b()?, r.b()?];
        let skipped = r.u64()?;
        let now = r.i64()?;
        let (server_ext_caps, cache_metadata) = if r.done() { (0, false) } else { (r.u32()?, r.b()?) };
        if !r.done() {
            return Err(r.err("bytes after the state"));
        }
        Ok(Connection {
            client, phase, framers, pending, resp, login, statements, server_caps, server_ext_caps, cache_metadata,
            compressed, deprecate_eof, broken, resync, skipped, now,
        })
    }
}

fn write_done(w: &mut W, d: &Done) {
    w.u8(d.command);
    w.bytes(&d.text);
    w.b(d.cut);
    w.bytes(&d.database);
    w.bytes(&d.plugin);
    w.ou8(d.ok.map(u8::from));
    w.ou32(d.error_code.map(u32::from));
    w.bytes(&d.sqlstate);
    w.bytes(&d.message);
    w.u64(d.rows);
    w.u32(d.results);
    w.ou64(d.affected);
    w.i64(d.request_ts_us);
    w.i64(d.response_ts_us);
    w.u64(d.request_bytes);
    w.u64(d.response_bytes);
    w.b(d.pipelined);
}

fn read_done(r: &mut R) -> Res<Done> {
    Ok(Done {
        command: r.u8()?,
        text: r.bytes()?,
        cut: r.b()?,
        database: r.bytes()?,
        plugin: r.bytes()?,
        ok: r.ou8()?.map(|v| v != 0),
        error_code: r.ou32()?.map(|v| v as u16),
        sqlstate: r.bytes()?,
        message: r.bytes()?,
        rows: r.u64()?,
        results: r.u32()?,
        affected: r.ou64()?,
        request_ts_us: r.i64()?,
        response_ts_us: r.i64()?,
        request_bytes: r.u64()?,
        response_bytes: r.u64()?,
        pipelined: r.b()?,
    })
}
