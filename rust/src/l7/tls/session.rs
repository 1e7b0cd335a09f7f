//! One TLS connection: the record layer of both directions, handshake message framing,
//! and the handshake state machine; at most one [`Handshake`] per connection.
//!
//! Takes in-order bytes, gaps, ticks and the end of a connection whose client direction
//! is known; gives the handshake summary (in `out`) and named counters (in `counts`),
//! taken by the caller after each call ([`Connection::take`]). Layers, as in Zeek's
//! `ssl` analyser and Wireshark's `packet-tls.c`:
//!
//! 1. **Record layer**, per direction ([`Side`]): 5-byte header `type(1) version(2)
//!    length(2)`. Records we cannot or need not read (application data, heartbeat,
//!    anything after the sender's ChangeCipherSpec in TLS <= 1.2) are *skipped* by length,
//!    without buffering: a long download costs one header parse per record.
//! 2. **Handshake layer**, per direction: the bodies of plaintext handshake records are
//!    streamed, as they arrive, into a per-direction buffer cut into messages (4-byte
//!    header `type(1) length(3)`) — one message may span records and TCP segments, one
//!    record may hold several messages, and a ServerHello is read before the rest of its
//!    record arrives.
//! 3. **Handshake state machine**, per connection ([`Phase`]):
//!
//! ```text
//!     START --ClientHello--> CLIENT_HELLO --ServerHello--> SERVER_HELLO --finished--> DONE
//!                                 |                             ^
//!                                 +--HelloRetryRequest--> RETRY +--ClientHello--> RETRY_HELLO
//!                                                                     --ServerHello--^
//!     START --ServerHello--> SERVER_HELLO   (the ClientHello was not captured)
//!     any phase --fatal alert / encrypted alert / close / timeout--> DONE
//! ```
//!
//! The summary is produced on entering DONE. After DONE the record layer keeps running
//! (cheaply) only to count encrypted alerts and renegotiations. When the handshake
//! finishes, how alerts, resumption, gaps and errors are told: docs/l7.md and the
//! comments where each is handled. No input panics; a malformed record header or hello,
//! or a handshake message longer than [`MAX_HANDSHAKE`], stops parsing that direction
//! (the other one goes on) and is counted.

use std::sync::Arc;

use super::hello::{parse_client_hello, parse_server_hello, ClientHello, ServerHello};
use super::record::*;
use crate::bytes::be16;
use crate::tls_decrypt::{Decryptor, KeyLog, Params};

/// Handshake phases (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Start,
    ClientHello,
    /// HelloRetryRequest seen, the second ClientHello not yet.
    Retry,
    /// Second ClientHello seen, the real ServerHello not yet.
    RetryHello,
    ServerHello,
    Done,
}

impl Phase {
    pub const ALL: [Phase; 6] =
        [Phase::Start, Phase::ClientHello, Phase::Retry, Phase::RetryHello, Phase::ServerHello, Phase::Done];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::ClientHello => "client_hello",
            Phase::Retry => "retry",
            Phase::RetryHello => "retry_hello",
            Phase::ServerHello => "server_hello",
            Phase::Done => "done",
        }
    }
}

/// The level of the alert that the record reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertLevel {
    Warning,
    Fatal,
    /// A level byte neither 1 nor 2 (`unknown_N`).
    Unknown(u8),
    /// An alert we could not read (after the sender switched to ciphertext).
    Encrypted,
}

impl AlertLevel {
    pub fn from_byte(level: u8) -> Self {
        match level {
            1 => AlertLevel::Warning,
            2 => AlertLevel::Fatal,
            n => AlertLevel::Unknown(n),
        }
    }

    pub fn name(self) -> String {
        match self {
            AlertLevel::Warning => "warning".into(),
            AlertLevel::Fatal => "fatal".into(),
            AlertLevel::Unknown(n) => format!("unknown_{n}"),
            AlertLevel::Encrypted => "encrypted".into(),
        }
    }
}

/// Why a direction was given up (counted as `tls_parse_error.<reason>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    BadRecord,
    RecordOverflow,
    HandshakeTooLong,
    BadClientHello,
    BadServerHello,
    Truncated,
}

impl Reason {
    fn counter(self) -> &'static str {
        match self {
            Reason::BadRecord => "tls_parse_error.bad_record",
            Reason::RecordOverflow => "tls_parse_error.record_overflow",
            Reason::HandshakeTooLong => "tls_parse_error.handshake_too_long",
            Reason::BadClientHello => "tls_parse_error.bad_client_hello",
            Reason::BadServerHello => "tls_parse_error.bad_server_hello",
            Reason::Truncated => "tls_parse_error.truncated",
        }
    }
}

/// The record's `error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    Gap,
    ParseError,
}

impl Error {
    pub fn name(self) -> &'static str {
        match self {
            Error::Gap => "gap",
            Error::ParseError => "parse_error",
        }
    }
}

/// What one handshake gives: the fields of its `wire.tls` record that are not the
/// connection's (addresses, id) nor names from the tables (cipher suite, alert).
#[derive(Clone, Debug, PartialEq)]
pub struct Handshake {
    pub server_name: Option<String>,
    /// Negotiated version (ServerHello), None without one.
    pub version: Option<u16>,
    pub cipher: Option<u16>,
    pub alpn: Option<String>,
    pub alpn_offered: Vec<String>,
    pub hello_ts: i64,
    pub client_hello_seen: bool,
    pub handshake_ms: Option<f64>,
    pub established: bool,
    /// Alert description (plaintext alerts only).
    pub alert: Option<u8>,
    pub alert_level: Option<AlertLevel>,
    /// "client" / "server".
    pub alert_from: Option<&'static str>,
    pub resumed: bool,
    pub hello_retry_request: bool,
    pub error: Option<Error>,
}

/// One TLS connection (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    pub client: u8,
    /// A handshake not finished this long (capture time) after its hello is reported.
    pub timeout: i64,
    pub sides: [Side; 2],
    pub phase: Phase,
    pub closed: bool,
    /// First ClientHello (or ServerHello, if no ClientHello was seen).
    pub hello_ts: Option<i64>,
    pub client_hello_seen: bool,
    pub client_hello: Option<ClientHello>,
    /// The last one (HelloRetryRequest, then the real one).
    pub server_hello: Option<ServerHello>,
    pub hrr: bool,
    pub resumed: bool,
    /// Certificate/ServerKeyExchange/CertificateRequest/ServerHelloDone from the server.
    pub full_handshake: bool,
    /// When the handshake finished.
    pub end_ts: Option<i64>,
    pub alert: Option<u8>,
    pub alert_level: Option<AlertLevel>,
    pub alert_from: Option<u8>,
    pub alert_ts: Option<i64>,
    pub error: Option<Error>,
    pub renegotiation_counted: bool,
    /// Decryption with a key log (`--tls-keylog`): the raw bytes of both directions also
    /// go to it, after this parser has read its hellos (crate::tls_decrypt).
    pub decrypt: Option<Box<Decryptor>>,
    /// Without a key log: application-data records seen (each one a
    /// `tls_decrypt_drop.no_key`, counted at the end of the connection).
    pub undecrypted: u64,
    /// The handshake summary, once emitted (taken by the caller).
    pub out: Option<Handshake>,
    /// Counter increments since the last [`Connection::take`].
    pub counts: Vec<(&'static str, u64)>,
}

impl Connection {
    pub fn new(client: u8, timeout: i64) -> Self {
        Connection {
            client: client & 1,
            timeout,
            sides: [Side::default(), Side::default()],
            phase: Phase::Start,
            closed: false,
            hello_ts: None,
            client_hello_seen: false,
            client_hello: None,
            server_hello: None,
            hrr: false,
            resumed: false,
            full_handshake: false,
            end_ts: None,
            alert: None,
            alert_level: None,
            alert_from: None,
            alert_ts: None,
            error: None,
            renegotiation_counted: false,
            decrypt: None,
            undecrypted: 0,
            out: None,
            counts: Vec::new(),
        }
    }

    /// Decrypt this connection's records with `keylog`'s secrets (from the start: call it
    /// before the first bytes).
    pub fn with_keylog(mut self, keylog: Option<Arc<KeyLog>>) -> Self {
        self.decrypt = keylog.map(|k| Box::new(Decryptor::new(k, self.client)));
        self
    }

    /// What decryption needs from the hellos, once the (real) ServerHello was read.
    pub fn decrypt_params(&self) -> Option<Params> {
        let sh = self.server_hello.as_ref().filter(|sh| !sh.retry)?;
        let ch = self.client_hello.as_ref()?;
        Some(Params { version: sh.version, cipher: sh.cipher, client_random: ch.random, server_random: sh.random, etm: sh.etm })
    }

    /// Plaintext of application data decrypted since the last call: (direction, bytes,
    /// capture time of the segment that completed its record).
    pub fn take_plain(&mut self) -> Vec<(u8, Vec<u8>, i64)> {
        self.decrypt.as_mut().map(|d| std::mem::take(&mut d.plain)).unwrap_or_default()
    }

    fn server(&self) -> u8 {
        1 - self.client
    }

    /// The summary (if emitted since the last call) and the counter increments.
    pub fn take(&mut self) -> (Option<Handshake>, Vec<(&'static str, u64)>) {
        (self.out.take(), std::mem::take(&mut self.counts))
    }

    fn count(&mut self, name: &'static str) {
        if let Some(c) = self.counts.iter_mut().find(|c| c.0 == name) {
            c.1 += 1;
        } else {
            self.counts.push((name, 1));
        }
    }

    // --- the hooks ------------------------------------------------------------------------

    /// In-order bytes of direction `d` (0/1), captured at `ts`.
    pub fn data(&mut self, d: u8, data: &[u8], ts: i64) {
        if self.closed || data.is_empty() {
            return;
        }
        self.feed(usize::from(d & 1), data, ts);
        if self.decrypt.is_some() {
            let params = self.decrypt_params();
            if let Some(dec) = self.decrypt.as_mut() {
                dec.feed(d, data, ts, params.as_ref());
            }
        }
    }

    /// `missing` bytes of direction `d` were never captured.
    pub fn gap(&mut self, d: u8, missing: u64) {
        if self.closed || missing == 0 {
            return;
        }
        if let Some(dec) = self.decrypt.as_mut() {
            dec.gap(d);
        }
        let d = usize::from(d & 1);
        let side = &mut self.sides[d];
        if side.state == Reading::Dead {
            return;
        }
        if side.body_left >= missing {
            // The hole is inside a record body: the record layer stays in step (the next
            // header is where the length said). A skipped body loses nothing; a handshake
            // body loses the message in progress, and the rest of the record is skipped
            // because the message boundaries in it are lost too.
            side.body_left -= missing;
            side.base = side.base.wrapping_add(missing);
            if side.body_hs {
                side.body_hs = false;
                side.hs.clear();
                side.hs_ts = None;
                self.gap_error();
            }
            return;
        }
        let lost = (side.buf.len() as u64).wrapping_add(side.body_left).wrapping_add(missing);
        side.base = side.base.wrapping_add(lost);
        side.buf.clear();
        side.chunks.clear();
        side.body_left = 0;
        side.body_hs = false;
        side.hs.clear();
        side.hs_ts = None;
        side.state = Reading::Resync;
        self.gap_error();
    }

    /// Capture time has advanced to `now`.
    pub fn tick(&mut self, now: i64) {
        // A handshake that has not finished after the response timeout is reported now
        // (with handshake_ms null) rather than when the idle connection is finally closed.
        if let Some(hello) = self.hello_ts {
            if !self.closed
                && !matches!(self.phase, Phase::Start | Phase::Done)
                && now.saturating_sub(hello) >= self.timeout
            {
                self.count("tls_timeout");
                self.emit();
            }
        }
    }

    /// The connection ended: report a handshake still in progress.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        // Decryption is counted once per connection, here: per record it would make every
        // encrypted segment report a counter.
        if let Some(dec) = self.decrypt.as_mut() {
            let counts = dec.take_counts();
            self.counts.extend(counts);
        } else if self.undecrypted > 0 {
            self.counts.push(("tls_decrypt_drop.no_key", self.undecrypted));
            self.undecrypted = 0;
        }
        if self.phase == Phase::Done {
            return;
        }
        for d in 0..2 {
            // The connection ended inside a handshake/alert record or message: the
            // handshake was cut short (capture end, or the peer gave up).
            let s = &self.sides[d];
            if s.state == Reading::Parse && (!s.hs.is_empty() || !s.buf.is_empty() || s.body_hs) {
                self.count_error(Reason::Truncated);
            }
        }
        if self.hello_ts.is_none() {
            self.count("tls_no_hello");
            self.phase = Phase::Done;
            return;
        }
        self.emit();
    }

    // --- record layer -----------------------------------------------------------------------

    fn feed(&mut self, d: usize, mut data: &[u8], ts: i64) {
        let side = &mut self.sides[d];
        if side.state == Reading::Dead {
            return;
        }
        if side.body_left > 0 && !side.body_hs {
            // The body of a record we do not read.
            let n = side.body_left.min(data.len() as u64);
            side.body_left -= n;
            side.base = side.base.wrapping_add(n);
            data = data.get(n as usize..).unwrap_or_default();
            if data.is_empty() {
                return;
            }
        }
        if side.state == Reading::Resync {
            // After a gap we do not know where records start; segments usually begin with
            // one, so take the first segment that starts with a plausible header.
            if !plausible_record_header(data) {
                side.base = side.base.wrapping_add(data.len() as u64);
                return;
            }
            side.state = Reading::Parse;
            self.count("tls_resync");
        }
        let side = &mut self.sides[d];
        let pos;
        if side.buf.is_empty() {
            // The common case: parse straight from the segment, keep only a leftover.
            side.chunks.clear();
            side.chunks.push((side.base, ts));
            pos = self.records(d, data);
            let side = &mut self.sides[d];
            if side.state != Reading::Dead {
                side.buf.extend_from_slice(data.get(pos..).unwrap_or_default());
            }
        } else {
            let at = side.base.wrapping_add(side.buf.len() as u64);
            side.chunks.push((at, ts));
            let mut buf = std::mem::take(&mut side.buf);
            buf.extend_from_slice(data);
            pos = self.records(d, &buf);
            let side = &mut self.sides[d];
            if side.state != Reading::Dead {
                buf.drain(..pos.min(buf.len()));
                side.buf = buf;
            }
        }
        let side = &mut self.sides[d];
        side.base = side.base.wrapping_add(pos as u64);
        while side.chunks.len() > 1 && side.chunks.get(1).is_some_and(|c| c.0 <= side.base) {
            side.chunks.remove(0);
        }
    }

    /// Parse the records in `data` (the bytes of direction `d` from stream offset
    /// `sides[d].base`); return how many bytes were consumed (the rest is a partial
    /// alert/CCS record or header, kept for the next segment).
    fn records(&mut self, d: usize, data: &[u8]) -> usize {
        let mut pos = 0usize;
        let end = data.len();
        let is_client = d == usize::from(self.client);
        while self.sides[d].state == Reading::Parse && pos < end {
            let side = &mut self.sides[d];
            if side.body_left > 0 {
                let n = side.body_left.min((end - pos) as u64) as usize;
                side.body_left -= n as u64;
                pos += n;
                if side.body_hs {
                    // Handshake bodies go to the message layer as they arrive: a ServerHello
                    // is read even if the Certificate after it in the record is never complete.
                    side.body_hs = side.body_left > 0;
                    side.hs.extend_from_slice(data.get(pos - n..pos).unwrap_or_default());
                    let record_end = side.base.wrapping_add(pos as u64);
                    self.handshake_messages(d, record_end);
                }
                continue;
            }
            if end - pos < 5 {
                break;
            }
            let b0 = data.get(pos).copied().unwrap_or(0);
            if side.records == 0 && is_client && b0 & 0x80 != 0 {
                // SSLv2-compatible ClientHello (2-byte header, msg_type 1): not parsed, but
                // the handshake starts here and the server's reply is still read.
                if data.get(pos + 2) != Some(&HS_CLIENT_HELLO) {
                    self.fail(d, Reason::BadRecord);
                    break;
                }
                let length = (u64::from(b0 & 0x7F) << 8) | u64::from(data.get(pos + 1).copied().unwrap_or(0));
                side.records += 1;
                let ts = side.ts_at(side.base.wrapping_add(pos as u64));
                side.body_left = length;
                self.count("tls_sslv2_client_hello");
                if self.phase == Phase::Start {
                    self.hello_ts = Some(ts);
                    self.client_hello_seen = true;
                    let version = be16(data, pos + 3).unwrap_or(0);
                    self.client_hello = Some(ClientHello { version, ..ClientHello::default() });
                    self.phase = Phase::ClientHello;
                }
                pos += 2;
                continue;
            }
            let ctype = b0;
            let major = data.get(pos + 1).copied().unwrap_or(0);
            let minor = data.get(pos + 2).copied().unwrap_or(0);
            let length = u64::from(be16(data, pos + 3).unwrap_or(0));
            if !(CT_CHANGE_CIPHER_SPEC..=CT_HEARTBEAT).contains(&ctype) || major != 3 || minor > 4 {
                self.fail(d, Reason::BadRecord);
                break;
            }
            if length > MAX_RECORD {
                self.fail(d, Reason::RecordOverflow);
                break;
            }
            let rec_ts = side.ts_at(side.base.wrapping_add(pos as u64));
            if ctype == CT_APPLICATION_DATA || ctype == CT_HEARTBEAT || side.encrypted {
                side.records += 1;
                side.body_left = length;
                pos += 5;
                self.opaque_record(d, ctype, length, rec_ts);
                continue;
            }
            if ctype == CT_HANDSHAKE {
                side.records += 1;
                side.body_left = length;
                side.body_hs = length > 0;
                pos += 5;
                continue;
            }
            let length = length as usize; // <= MAX_RECORD
            if end - pos < 5 + length {
                break; // an alert or CCS record (a few bytes): wait for all of it
            }
            side.records += 1;
            let body_start = pos + 5;
            pos = body_start + length;
            if ctype == CT_ALERT {
                self.alert_record(d, data.get(body_start..pos).unwrap_or_default(), rec_ts);
            } else if ctype == CT_CHANGE_CIPHER_SPEC {
                self.change_cipher_spec(d);
            }
            // heartbeat is opaque; nothing else passes the type check
        }
        pos
    }

    /// A record we skip by length: its type and size still tell us things.
    fn opaque_record(&mut self, d: usize, ctype: u8, length: u64, ts: i64) {
        match ctype {
            CT_ALERT => {
                // After the sender's ChangeCipherSpec: encrypted.
                self.count("tls_encrypted_alerts");
                if self.handshake_pending() {
                    self.set_alert(d, None, AlertLevel::Encrypted, ts);
                    self.emit();
                }
            }
            CT_HANDSHAKE => {
                // An encrypted handshake record (TLS <= 1.2).
                if !self.sides[d].finished {
                    self.sides[d].finished = true; // the first one after the CCS is the Finished
                    if self.sides.iter().all(|s| s.finished) && self.handshake_pending() {
                        self.finished(ts);
                    }
                } else if !self.renegotiation_counted {
                    // Another encrypted handshake message: HelloRequest/ClientHello of a
                    // renegotiation, which is out of scope (and unreadable anyway).
                    self.renegotiation_counted = true;
                    self.count("tls_renegotiation");
                }
            }
            CT_APPLICATION_DATA => {
                self.sides[d].sent_app_data = true;
                if self.decrypt.is_none() {
                    self.undecrypted += 1;
                }
                if !self.handshake_pending() {
                    return;
                }
                if !self.tls13() {
                    // TLS <= 1.2: the first application data, either direction (False
                    // Start included: the client sends before the server's Finished).
                    self.finished(ts);
                } else if d == usize::from(self.client) && self.sides[usize::from(self.server())].sent_app_data {
                    // TLS 1.3 quirk: every record after the ServerHello is type 23 (the
                    // server's encrypted flight too). The client's first record after the
                    // server's flight is its Finished (or Certificate) — or an encrypted
                    // alert, which has exactly 2 bytes of alert + 1 of content type + the
                    // AEAD tag (a client rejecting the server's certificate). Padded alerts
                    // are not recognised.
                    let ccm8 = self.server_hello.as_ref().is_some_and(|sh| sh.cipher == 0x1305);
                    let tag = if ccm8 { 8 } else { 16 }; // TLS_AES_128_CCM_8_SHA256: 8 bytes
                    if length == 3 + tag {
                        self.count("tls_encrypted_alerts");
                        self.set_alert(d, None, AlertLevel::Encrypted, ts);
                        self.emit();
                    } else {
                        self.finished(ts);
                    }
                }
                // else: the server's flight, or the client's 0-RTT early data: not finished yet
            }
            _ => {}
        }
    }

    fn change_cipher_spec(&mut self, d: usize) {
        self.sides[d].ccs = true;
        if self.tls13() {
            return; // the middlebox-compatibility dummy CCS (RFC 8446 D.4): no effect
        }
        let side = &mut self.sides[d];
        side.encrypted = true;
        side.hs.clear(); // a message cut by a CCS cannot be completed
        side.hs_ts = None;
        if d == usize::from(self.server()) && self.phase == Phase::ServerHello && !self.full_handshake {
            // ServerHello [NewSessionTicket] ChangeCipherSpec: the abbreviated handshake.
            self.resumed = true;
        }
    }

    fn alert_record(&mut self, d: usize, body: &[u8], ts: i64) {
        let [level, description] = body else {
            // Not one plaintext alert (those are exactly level + description): we missed
            // the sender's switch to ciphertext, or it is garbage. Either way unreadable.
            self.count("tls_encrypted_alerts");
            if self.handshake_pending() {
                self.set_alert(d, None, AlertLevel::Encrypted, ts);
                self.emit();
            }
            return;
        };
        let (level, description) = (*level, *description);
        self.count("tls_alerts");
        if !self.handshake_pending() {
            return;
        }
        // A warning (e.g. unrecognized_name before a ServerHello) is recorded but the
        // handshake goes on; a later fatal alert replaces it; a fatal one ends it.
        if self.alert.is_none() || (level == 2 && self.alert_level != Some(AlertLevel::Fatal)) {
            self.set_alert(d, Some(description), AlertLevel::from_byte(level), ts);
        }
        if level == 2 {
            self.emit();
        }
    }

    // --- handshake layer --------------------------------------------------------------------

    /// Cut complete messages off `sides[d].hs`; the last record ends at `record_end`.
    fn handshake_messages(&mut self, d: usize, record_end: u64) {
        loop {
            let side = &mut self.sides[d];
            if side.hs.len() < 4 {
                break;
            }
            if side.hs_ts.is_none() {
                // the message starts in the record just added
                self.message_start(d, record_end);
            }
            let side = &mut self.sides[d];
            let head = crate::bytes::array::<4>(&side.hs, 0).unwrap_or_default();
            let mtype = head[0];
            let mlen = u64::from(head[1]) << 16 | u64::from(head[2]) << 8 | u64::from(head[3]);
            if mlen > MAX_HANDSHAKE {
                self.fail(d, Reason::HandshakeTooLong);
                return;
            }
            let total = 4 + mlen as usize;
            if side.hs.len() < total {
                return;
            }
            let body: Vec<u8> = side.hs.drain(..total).skip(4).collect();
            let ts = side.hs_ts.take().unwrap_or(0);
            self.message(d, mtype, &body, ts);
            if self.sides[d].state != Reading::Parse {
                return;
            }
        }
        let side = &self.sides[d];
        if !side.hs.is_empty() && side.hs_ts.is_none() {
            self.message_start(d, record_end);
        }
    }

    /// The first byte of a message (`hs[0]`) is in the record ending at `record_end`.
    fn message_start(&mut self, d: usize, record_end: u64) {
        let side = &mut self.sides[d];
        let ts = side.ts_at(record_end.wrapping_sub(side.hs.len() as u64));
        side.hs_ts = Some(ts);
        if d == usize::from(self.client) && side.hs.first() == Some(&HS_CLIENT_HELLO) && self.hello_ts.is_none() {
            // The handshake starts here even if the ClientHello turns out truncated or
            // malformed: the record is still emitted, with what we know.
            self.hello_ts = Some(ts);
            self.client_hello_seen = true;
        }
    }

    fn message(&mut self, d: usize, mtype: u8, body: &[u8], ts: i64) {
        let from_client = d == usize::from(self.client);
        if mtype == HS_CLIENT_HELLO && from_client {
            self.client_hello(d, body, ts);
        } else if mtype == HS_SERVER_HELLO && !from_client {
            self.server_hello(d, body, ts);
        } else if !from_client && full_handshake_server_message(mtype) {
            self.full_handshake = true;
        } else if mtype == HS_CLIENT_HELLO || mtype == HS_SERVER_HELLO {
            self.count("tls_unexpected_message"); // a hello from the wrong side
        } else if mtype == HS_HELLO_REQUEST && !from_client && self.phase != Phase::Start {
            self.renegotiation();
        }
        // Everything else (client Certificate/KeyExchange/CertificateVerify, server
        // NewSessionTicket/CertificateStatus, ...) carries nothing the record needs.
    }

    fn client_hello(&mut self, d: usize, body: &[u8], ts: i64) {
        let retry = match self.phase {
            Phase::Start => false,
            Phase::Retry => true,
            _ => {
                // A plaintext ClientHello while a handshake is already under way or done:
                // a renegotiation (or a client restarting): one record per handshake.
                self.renegotiation();
                return;
            }
        };
        let Ok(ch) = parse_client_hello(body) else {
            if !retry {
                self.phase = Phase::ClientHello; // it was a ClientHello: the handshake started
            }
            self.fail(d, Reason::BadClientHello);
            return;
        };
        if retry {
            // The second ClientHello repeats the first with a new key share; keep what the
            // first said, fill in what it lacked.
            match &mut self.client_hello {
                Some(first) => {
                    if first.server_name.as_deref().is_none_or(str::is_empty) {
                        first.server_name = ch.server_name;
                    }
                    if first.alpn.is_empty() {
                        first.alpn = ch.alpn;
                    }
                    first.psk = ch.psk;
                    if !ch.versions.is_empty() {
                        first.versions = ch.versions;
                    }
                }
                None => self.client_hello = Some(ch),
            }
            self.phase = Phase::RetryHello;
            return;
        }
        self.client_hello = Some(ch);
        self.hello_ts = Some(ts);
        self.phase = Phase::ClientHello;
    }

    fn server_hello(&mut self, d: usize, body: &[u8], ts: i64) {
        if !matches!(self.phase, Phase::Start | Phase::ClientHello | Phase::Retry | Phase::RetryHello) {
            self.count("tls_unexpected_message"); // a second ServerHello
            return;
        }
        let Ok(sh) = parse_server_hello(body) else {
            self.fail(d, Reason::BadServerHello);
            return;
        };
        if self.phase == Phase::Start {
            self.hello_ts = Some(ts); // we never saw the ClientHello
        }
        if sh.retry {
            if self.hrr {
                self.count("tls_unexpected_message"); // a second HRR is illegal
                return;
            }
            self.hrr = true;
            self.count("tls_hello_retry_requests");
            self.server_hello = Some(sh); // version and suite now; the real ServerHello confirms
            self.phase = Phase::Retry;
            return;
        }
        if is_tls13(sh.version) {
            self.resumed = sh.psk; // TLS 1.3 resumption: the ServerHello carries pre_shared_key
        } else if let Some(ch) = &self.client_hello {
            // TLS <= 1.2: the server resumes the session the client named. Quirk: a TLS 1.3
            // server always echoes the client's (random) legacy_session_id for middlebox
            // compatibility (RFC 8446 D.4), so this rule must not be used for 1.3.
            if !ch.session_id.is_empty() && sh.session_id == ch.session_id {
                self.resumed = true;
            }
        }
        self.server_hello = Some(sh);
        self.phase = Phase::ServerHello;
    }

    fn renegotiation(&mut self) {
        if !self.renegotiation_counted {
            self.renegotiation_counted = true;
            self.count("tls_renegotiation");
        }
    }

    // --- state helpers ------------------------------------------------------------------------

    /// Is this (going to be) TLS 1.3? From the ServerHello/HRR, else from the offer.
    fn tls13(&self) -> bool {
        match (&self.server_hello, &self.client_hello) {
            (Some(sh), _) => is_tls13(sh.version),
            (None, Some(ch)) => ch.versions.iter().any(|&v| is_tls13(v)),
            (None, None) => false,
        }
    }

    fn handshake_pending(&self) -> bool {
        self.hello_ts.is_some() && self.phase != Phase::Done
    }

    fn set_alert(&mut self, d: usize, description: Option<u8>, level: AlertLevel, ts: i64) {
        self.alert = description;
        self.alert_level = Some(level);
        self.alert_from = Some(d as u8);
        self.alert_ts = Some(ts);
    }

    fn gap_error(&mut self) {
        self.count("tls_gap");
        if self.phase != Phase::Done && self.error.is_none() {
            self.error = Some(Error::Gap);
        }
    }

    fn finished(&mut self, ts: i64) {
        self.end_ts = Some(ts);
        self.emit();
    }

    fn count_error(&mut self, reason: Reason) {
        self.count("tls_parse_error");
        self.count(reason.counter());
        if self.phase != Phase::Done && self.error.is_none() {
            self.error = Some(Error::ParseError);
        }
    }

    /// Give up on direction `d`: count, drop its buffers, keep the other one going.
    fn fail(&mut self, d: usize, reason: Reason) {
        self.count_error(reason);
        let side = &mut self.sides[d];
        side.state = Reading::Dead;
        side.buf = Vec::new();
        side.hs = Vec::new();
        side.chunks = Vec::new();
        side.body_left = 0;
        side.body_hs = false;
    }

    fn emit(&mut self) {
        let Some(hello_ts) = self.hello_ts else { return };
        if self.phase == Phase::Done {
            return;
        }
        self.phase = Phase::Done;
        let established = self.end_ts.is_some();
        let end = if established { self.end_ts } else { self.alert_ts };
        let handshake_ms = match end {
            Some(end) if self.client_hello_seen => Some(end.wrapping_sub(hello_ts) as f64 / 1000.0),
            _ => None,
        };
        let (ch, sh) = (self.client_hello.as_ref(), self.server_hello.as_ref());
        let client = self.client;
        self.out = Some(Handshake {
            server_name: ch.and_then(|c| c.server_name.clone()),
            version: sh.map(|s| s.version),
            cipher: sh.map(|s| s.cipher),
            alpn: sh.and_then(|s| s.alpn.clone()),
            alpn_offered: ch.map(|c| c.alpn.clone()).unwrap_or_default(),
            hello_ts,
            client_hello_seen: self.client_hello_seen,
            handshake_ms,
            established,
            alert: self.alert,
            alert_level: self.alert_level,
            alert_from: self.alert_from.map(|d| if d == client { "client" } else { "server" }),
            resumed: self.resumed,
            hello_retry_request: self.hrr,
            error: self.error,
        });
        self.count("tls_handshakes");
        if established {
            self.count("tls_established");
        }
        if self.resumed {
            self.count("tls_resumed");
        }
    }
}
