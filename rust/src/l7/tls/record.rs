//! The TLS record layer's constants, header checks and per-direction state.
//!
//! Takes the first bytes of a stream (or of a segment after a gap); gives "is this a
//! ClientHello / a plausible record header". [`Side`] is what one direction's record
//! layer remembers between segments (unparsed bytes, the body in progress, handshake
//! bytes not yet cut into messages, the capture times of buffered segments). Reads go
//! through `crate::bytes`: no input panics.

use crate::bytes::{be16, u8_at};

// Record content types (RFC 8446 §5.1, RFC 6520).
pub const CT_CHANGE_CIPHER_SPEC: u8 = 20;
pub const CT_ALERT: u8 = 21;
pub const CT_HANDSHAKE: u8 = 22;
pub const CT_APPLICATION_DATA: u8 = 23;
pub const CT_HEARTBEAT: u8 = 24;

// Handshake message types (RFC 8446 §4, RFC 5246 §7.4).
pub const HS_HELLO_REQUEST: u8 = 0;
pub const HS_CLIENT_HELLO: u8 = 1;
pub const HS_SERVER_HELLO: u8 = 2;
pub const HS_CERTIFICATE: u8 = 11;
pub const HS_SERVER_KEY_EXCHANGE: u8 = 12;
pub const HS_CERTIFICATE_REQUEST: u8 = 13;
pub const HS_SERVER_HELLO_DONE: u8 = 14;

/// Server messages that only a full (not resumed) TLS <= 1.2 handshake sends.
pub fn full_handshake_server_message(mtype: u8) -> bool {
    matches!(mtype, HS_CERTIFICATE | HS_SERVER_KEY_EXCHANGE | HS_CERTIFICATE_REQUEST | HS_SERVER_HELLO_DONE)
}

/// Largest record body: TLSCiphertext of TLS 1.2 (2^14 + 2048, RFC 5246 §6.2.3); TLS 1.3
/// allows less (2^14 + 256), so one limit serves both.
pub const MAX_RECORD: u64 = (1 << 14) + 2048;
/// Largest handshake message accepted (a certificate chain is the usual big one).
pub const MAX_HANDSHAKE: u64 = 256 * 1024;
/// Smallest ClientHello body: version 2 + random 32 + session_id 1 + suites 2+2 +
/// compression 1+1.
pub const MIN_CLIENT_HELLO: u64 = 41;

pub const TLS13: u16 = 0x0304;

/// TLS 1.3, or one of its drafts (0x7fNN, and Facebook's 0xfb17 and 0xfb1a).
pub fn is_tls13(version: u16) -> bool {
    version == TLS13 || tls13_draft(version).is_some()
}

/// The draft of TLS 1.3 a version number names, as Wireshark's `tls13_draft_version`
/// (packet-tls-utils.c) reads it: 0x7fNN is draft NN, Facebook's 0xfb17 and 0xfb1a are
/// drafts 23 and 26; None for anything else (the RFC's 0x0304 included).
pub fn tls13_draft(version: u16) -> Option<u8> {
    match version {
        0xFB17 => Some(23),
        0xFB1A => Some(26),
        v if v >> 8 == 0x7F => Some((v & 0xFF) as u8),
        _ => None,
    }
}

/// Is `data` (the first bytes one side sent) the start of a TLS ClientHello? `Some(true)`
/// / `Some(false)`, or `None` when more bytes are needed to say.
///
/// Checks the record header (handshake, version 3.x, a plausible length), the handshake
/// header (ClientHello, a plausible length) and the client_version (3.x); also accepts an
/// SSLv2-compatible ClientHello (2-byte header with the high bit set, message type 1,
/// version 2 or 3.x). Every prefix of a ClientHello shorter than the checks need is
/// `None`, never a wrong "no".
pub fn looks_like_client_hello(data: &[u8]) -> Option<bool> {
    let at = |i: usize| u8_at(data, i);
    let b0 = at(0)?;
    if b0 == CT_HANDSHAKE {
        if at(1)? != 3 {
            return Some(false);
        }
        if at(2)? > 4 {
            return Some(false);
        }
        let length = u64::from(be16(data, 3)?);
        if !(4..=MAX_RECORD).contains(&length) {
            return Some(false);
        }
        if at(5)? != HS_CLIENT_HELLO {
            return Some(false);
        }
        let hs_len = u64::from(at(6)?) << 16 | u64::from(at(7)?) << 8 | u64::from(at(8)?);
        if !(MIN_CLIENT_HELLO..=MAX_HANDSHAKE).contains(&hs_len) {
            return Some(false);
        }
        let major = at(9)?;
        let minor = at(10)?;
        return Some(major == 3 && minor <= 4);
    }
    if b0 & 0x80 != 0 {
        // SSLv2 record header: 15-bit length, then msg_type 1 = CLIENT-HELLO.
        let b1 = at(1)?;
        let b2 = at(2)?;
        if b2 != 1 || ((u16::from(b0 & 0x7F) << 8) | u16::from(b1)) < 9 {
            return Some(false);
        }
        let major = at(3)?;
        let minor = at(4)?;
        return Some((major, minor) == (0, 2) || (major == 3 && minor <= 4));
    }
    Some(false)
}

/// Could a TLS record start at `data[0]`? (resynchronisation after a gap)
pub fn plausible_record_header(data: &[u8]) -> bool {
    match (u8_at(data, 0), u8_at(data, 1), u8_at(data, 2), be16(data, 3)) {
        (Some(ctype), Some(major), Some(minor), Some(length)) => {
            (CT_CHANGE_CIPHER_SPEC..=CT_HEARTBEAT).contains(&ctype)
                && major == 3
                && minor <= 4
                && length > 0
                && u64::from(length) <= MAX_RECORD
        }
        _ => false,
    }
}

/// What the record layer of one direction does with its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reading {
    /// Reading records.
    #[default]
    Parse,
    /// Lost our place after a gap: waiting for a segment that starts a record.
    Resync,
    /// Gave up on this direction after a parse error.
    Dead,
}

/// Record-layer state of one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Side {
    /// Unparsed bytes: at most one record we read (alert/CCS), or a partial header.
    pub buf: Vec<u8>,
    /// Stream offset of `buf[0]` (only used to find capture times).
    pub base: u64,
    /// (stream offset, capture time) of the segments whose bytes are in `buf`.
    pub chunks: Vec<(u64, i64)>,
    /// Bytes still to come of the current record's body.
    pub body_left: u64,
    /// ... a plaintext handshake body (else it is skipped unread).
    pub body_hs: bool,
    /// Plaintext handshake bytes not yet cut into messages.
    pub hs: Vec<u8>,
    /// Capture time of the first byte of `hs`.
    pub hs_ts: Option<i64>,
    pub state: Reading,
    pub records: u64,
    /// Sent ChangeCipherSpec.
    pub ccs: bool,
    /// Records after the CCS are ciphertext (TLS <= 1.2).
    pub encrypted: bool,
    /// Sent its encrypted Finished (TLS <= 1.2).
    pub finished: bool,
    /// Sent a type-23 record.
    pub sent_app_data: bool,
}

impl Side {
    /// Capture time of the segment that carried stream byte `offset` (still in buf).
    pub fn ts_at(&self, offset: u64) -> i64 {
        for c in self.chunks.iter().skip(1).rev() {
            if c.0 <= offset {
                return c.1;
            }
        }
        self.chunks.first().map_or(0, |c| c.1)
    }
}
