//! ClientHello and ServerHello bodies -> the fields the handshake record needs.
//!
//! Takes one complete handshake message body; gives a [`ClientHello`] / [`ServerHello`],
//! or `Err(Malformed)` when the body is shorter than its own length fields say (any
//! length field, in any extension we read or skip). Every read is bounds-checked: no
//! input panics. Trailing bytes after the extension block are ignored, as before.

use super::record::tls13_draft;
use crate::bytes::{be16, u8_at};

// Extensions (IANA "TLS ExtensionType Values").
pub const EXT_SERVER_NAME: u16 = 0;
pub const EXT_ALPN: u16 = 16;
pub const EXT_ENCRYPT_THEN_MAC: u16 = 22;
pub const EXT_PRE_SHARED_KEY: u16 = 41;
pub const EXT_SUPPORTED_VERSIONS: u16 = 43;

/// ServerHello.random of a HelloRetryRequest: SHA-256("HelloRetryRequest") (RFC 8446 §4.1.3).
pub const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// A handshake message is shorter than its own length fields say.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

type Res<T> = Result<T, Malformed>;

/// Bounds-checked big-endian reader over `buf`: overruns are `Malformed`.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(Malformed)?;
        let v = self.buf.get(self.pos..end).ok_or(Malformed)?;
        self.pos = end;
        Ok(v)
    }
    fn u8(&mut self) -> Res<u8> {
        let v = u8_at(self.buf, self.pos).ok_or(Malformed)?;
        self.pos += 1;
        Ok(v)
    }
    fn u16(&mut self) -> Res<u16> {
        let v = be16(self.buf, self.pos).ok_or(Malformed)?;
        self.pos += 2;
        Ok(v)
    }
    fn vec8(&mut self) -> Res<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Res<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    /// The next `opaque<0..2^16-1>` as a reader of its own (no copy).
    fn sub16(&mut self) -> Res<Reader<'a>> {
        Ok(Reader::new(self.vec16()?))
    }
    /// The `Extension extensions<..>` block that ends a hello (absent in SSL 3.0). All of
    /// it is framed before any is read: a damaged block is malformed whatever came first.
    fn extensions(&mut self) -> Res<Vec<(u16, Reader<'a>)>> {
        let mut out = Vec::new();
        if self.remaining() == 0 {
            return Ok(out);
        }
        let mut block = self.sub16()?;
        while block.remaining() > 0 {
            let etype = block.u16()?;
            out.push((etype, block.sub16()?));
        }
        Ok(out)
    }
}

/// A hello's 32 random bytes (`take(32)` gave exactly 32).
fn random(raw: &[u8]) -> [u8; 32] {
    let mut r = [0u8; 32];
    r.copy_from_slice(raw.get(..32).unwrap_or(&[0u8; 32]));
    r
}

/// Host names and ALPN ids are ASCII; anything else stays visible and lossless as
/// `\xNN` (Python's "backslashreplace", which the records always used).
pub fn text(raw: &[u8]) -> String {
    let mut s = String::with_capacity(raw.len());
    for &b in raw {
        if b.is_ascii() {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    pub version: u16,
    /// ClientHello.random: the key log's index (zeros for an SSLv2-compatible hello).
    pub random: [u8; 32],
    pub session_id: Vec<u8>,
    pub server_name: Option<String>,
    pub alpn: Vec<String>,
    /// pre_shared_key extension (TLS 1.3 resumption offer).
    pub psk: bool,
    /// supported_versions.
    pub versions: Vec<u16>,
}

pub fn parse_client_hello(body: &[u8]) -> Res<ClientHello> {
    let mut r = Reader::new(body);
    let version = r.u16()?;
    let random = random(r.take(32)?);
    let session_id = r.vec8()?;
    let suites = r.vec16()?;
    r.vec8()?; // compression methods
    if session_id.len() > 32 || suites.len() % 2 != 0 {
        return Err(Malformed);
    }
    let mut ch = ClientHello { version, random, session_id: session_id.to_vec(), ..ClientHello::default() };
    for (etype, mut ext) in r.extensions()? {
        match etype {
            EXT_SERVER_NAME if ch.server_name.is_none() => {
                let mut names = ext.sub16()?;
                while names.remaining() > 0 {
                    let name_type = names.u8()?;
                    let name = names.vec16()?;
                    if name_type == 0 && ch.server_name.is_none() {
                        ch.server_name = Some(text(name)); // host_name
                    }
                }
            }
            EXT_ALPN => {
                let mut protocols = ext.sub16()?;
                while protocols.remaining() > 0 {
                    ch.alpn.push(text(protocols.vec8()?));
                }
            }
            EXT_PRE_SHARED_KEY => ch.psk = true,
            EXT_SUPPORTED_VERSIONS => {
                let mut versions = Reader::new(ext.vec8()?);
                while versions.remaining() > 0 {
                    ch.versions.push(versions.u16()?);
                }
            }
            _ => {}
        }
    }
    Ok(ch)
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerHello {
    /// Negotiated: supported_versions if present, else the legacy field.
    pub version: u16,
    /// ServerHello.random (TLS 1.2 key derivation).
    pub random: [u8; 32],
    pub session_id: Vec<u8>,
    pub cipher: u16,
    /// A HelloRetryRequest.
    pub retry: bool,
    pub alpn: Option<String>,
    pub psk: bool,
    /// encrypt_then_mac (RFC 7366): how TLS 1.2 CBC records are protected.
    pub etm: bool,
}

pub fn parse_server_hello(body: &[u8]) -> Res<ServerHello> {
    let mut r = Reader::new(body);
    let version = r.u16()?;
    let random = random(r.take(32)?);
    let retry = random == HRR_RANDOM;
    // Before draft 22, a TLS 1.3 ServerHello had no legacy_session_id_echo and no
    // compression method, and its version field was the negotiated version (draft 22
    // moved it to supported_versions): Wireshark reads it so (packet-tls-utils.c).
    let old_draft = tls13_draft(version).is_some_and(|d| d < 22) && version >> 8 == 0x7F;
    let session_id = if old_draft { &[][..] } else { r.vec8()? };
    let cipher = r.u16()?;
    if !old_draft {
        r.u8()?; // compression method
    }
    if session_id.len() > 32 {
        return Err(Malformed);
    }
    let mut sh = ServerHello { version, random, session_id: session_id.to_vec(), cipher, retry, ..ServerHello::default() };
    for (etype, mut ext) in r.extensions()? {
        match etype {
            // The ServerHello form: one selected_version.
            EXT_SUPPORTED_VERSIONS => sh.version = ext.u16()?,
            EXT_ALPN => {
                let mut protocols = ext.sub16()?;
                if protocols.remaining() > 0 {
                    sh.alpn = Some(text(protocols.vec8()?));
                }
            }
            EXT_PRE_SHARED_KEY => sh.psk = true,
            EXT_ENCRYPT_THEN_MAC => sh.etm = true,
            _ => {}
        }
    }
    Ok(sh)
}
