//! One TLS connection's state as bytes (a checkpoint's part), and back.
//!
//! `WSTL`, a version (u16 BE), the CRC-32 of the body (u32 BE), then the body: every
//! field of the [`Connection`] (its two record-layer sides with their unparsed bytes,
//! the hellos seen, the handshake's progress), little-endian, in a fixed order (an option
//! is a presence byte, then its value; bytes are a u64 length, then the bytes). A
//! restore continues exactly where the snapshot was, inside a record or a handshake
//! message split across segments. Decoding checks every length against what is left and
//! every tag, so bytes that are not such a state give an error, never a panic or an
//! unbounded allocation. Taken between calls, when no summary, counter or plaintext is
//! waiting to be taken.
//!
//! Version 2 (issue 19, decryption with a key log) adds the hellos' randoms, the
//! ServerHello's encrypt_then_mac and, at the
//! end, the count of records not decrypted for want of a key log and the decryptor's
//! state: per direction its partial record, why it stopped, ChangeCipherSpec seen,
//! sequence number, TLS 1.3 key phase and KeyUpdate count; its drop counters. No key
//! material: a restore derives the keys again from the key log it is given (the
//! `--tls-keylog` file, read again by the restored process) and the randoms. Version 1
//! still restores (randoms zero, no decryptor: such a connection's records count as
//! `no_key`); a decryptor's state restored without a key log is dropped the same way.

use std::sync::Arc;

use super::hello::{ClientHello, ServerHello};
use super::record::{Reading, Side};
use super::session::{AlertLevel, Connection, Error, Phase};
use crate::tls_decrypt::stream::Dir;
use crate::tls_decrypt::{Decryptor, Drop, KeyLog};

pub const MAGIC: &[u8; 4] = b"WSTL";
/// Version of this encoding: bump it with any change of the fields.
pub const VERSION: u16 = 2;

use crate::state_bytes::{frame, unframe, Res, R, W};

/// A list of texts: a count, then each as bytes.
trait WriteStrs {
    fn strs(&mut self, v: &[String]);
}

impl WriteStrs for W {
    fn strs(&mut self, v: &[String]) {
        self.u64(v.len() as u64);
        for s in v {
            self.bytes(s.as_bytes());
        }
    }
}

trait ReadStrs {
    fn strs(&mut self) -> Res<Vec<String>>;
}

impl ReadStrs for R<'_> {
    fn strs(&mut self) -> Res<Vec<String>> {
        let n = self.count(8)?;
        (0..n).map(|_| self.string()).collect()
    }
}

fn write_side(w: &mut W, s: &Side) {
    w.bytes(&s.buf);
    w.u64(s.base);
    w.u64(s.chunks.len() as u64);
    for (off, ts) in &s.chunks {
        w.u64(*off);
        w.i64(*ts);
    }
    w.u64(s.body_left);
    w.b(s.body_hs);
    w.bytes(&s.hs);
    w.oi64(s.hs_ts);
    w.u8(match s.state {
        Reading::Parse => 0,
        Reading::Resync => 1,
        Reading::Dead => 2,
    });
    w.u64(s.records);
    for f in [s.ccs, s.encrypted, s.finished, s.sent_app_data] {
        w.b(f);
    }
}

fn read_side(r: &mut R<'_>) -> Res<Side> {
    let buf = r.bytes()?;
    let base = r.u64()?;
    let n = r.count(16)?;
    let mut chunks = Vec::with_capacity(n);
    for _ in 0..n {
        chunks.push((r.u64()?, r.i64()?));
    }
    Ok(Side {
        buf,
        base,
        chunks,
        body_left: r.u64()?,
        body_hs: r.b()?,
        hs: r.bytes()?,
        hs_ts: r.oi64()?,
        state: match r.u8()? {
            0 => Reading::Parse,
            1 => Reading::Resync,
            2 => Reading::Dead,
            t => return Err(format!("bad record-layer state {t} in the TLS state")),
        },
        records: r.u64()?,
        ccs: r.b()?,
        encrypted: r.b()?,
        finished: r.b()?,
        sent_app_data: r.b()?,
    })
}

fn write_ch(w: &mut W, ch: Option<&ClientHello>) {
    w.b(ch.is_some());
    if let Some(ch) = ch {
        w.u16(ch.version);
        w.raw(&ch.random);
        w.bytes(&ch.session_id);
        w.ostr(ch.server_name.as_deref());
        w.strs(&ch.alpn);
        w.b(ch.psk);
        w.u64(ch.versions.len() as u64);
        for v in &ch.versions {
            w.u16(*v);
        }
    }
}

fn read_ch(r: &mut R<'_>, v: u16) -> Res<Option<ClientHello>> {
    if !r.b()? {
        return Ok(None);
    }
    let version = r.u16()?;
    let random = if v >= 2 { r.take::<32>()? } else { [0; 32] };
    let session_id = r.bytes()?;
    let server_name = r.ostr()?;
    let alpn = r.strs()?;
    let psk = r.b()?;
    let n = r.count(2)?;
    let versions = (0..n).map(|_| r.u16()).collect::<Res<Vec<u16>>>()?;
    Ok(Some(ClientHello { version, random, session_id, server_name, alpn, psk, versions }))
}

fn write_sh(w: &mut W, sh: Option<&ServerHello>) {
    w.b(sh.is_some());
    if let Some(sh) = sh {
        w.u16(sh.version);
        w.raw(&sh.random);
        w.bytes(&sh.session_id);
        w.u16(sh.cipher);
        w.b(sh.retry);
        w.ostr(sh.alpn.as_deref());
        w.b(sh.psk);
        w.b(sh.etm);
    }
}

fn read_sh(r: &mut R<'_>, v: u16) -> Res<Option<ServerHello>> {
    if !r.b()? {
        return Ok(None);
    }
    Ok(Some(ServerHello {
        version: r.u16()?,
        random: if v >= 2 { r.take::<32>()? } else { [0; 32] },
        session_id: r.bytes()?,
        cipher: r.u16()?,
        retry: r.b()?,
        alpn: r.ostr()?,
        psk: r.b()?,
        etm: v >= 2 && r.b()?,
    }))
}

/// The connection's state as bytes. Take the summary and counters first (`take`).
pub fn snapshot(c: &Connection) -> Vec<u8> {
    let mut w = W(Vec::with_capacity(256));
    w.u8(c.client);
    w.i64(c.timeout);
    for s in &c.sides {
        write_side(&mut w, s);
    }
    w.u8(Phase::ALL.iter().position(|p| *p == c.phase).unwrap_or(0) as u8);
    w.b(c.closed);
    w.oi64(c.hello_ts);
    w.b(c.client_hello_seen);
    write_ch(&mut w, c.client_hello.as_ref());
    write_sh(&mut w, c.server_hello.as_ref());
    for f in [c.hrr, c.resumed, c.full_handshake] {
        w.b(f);
    }
    w.oi64(c.end_ts);
    w.b(c.alert.is_some());
    w.u8(c.alert.unwrap_or(0));
    // alert level: 0 none, 1 warning, 2 fatal, 3 unknown (then its byte), 4 encrypted
    match c.alert_level {
        None => w.u8(0),
        Some(AlertLevel::Warning) => w.u8(1),
        Some(AlertLevel::Fatal) => w.u8(2),
        Some(AlertLevel::Unknown(n)) => {
            w.u8(3);
            w.u8(n);
        }
        Some(AlertLevel::Encrypted) => w.u8(4),
    }
    w.u8(c.alert_from.map_or(2, |d| d & 1));
    w.oi64(c.alert_ts);
    w.u8(match c.error {
        None => 0,
        Some(Error::Gap) => 1,
        Some(Error::ParseError) => 2,
    });
    w.b(c.renegotiation_counted);
    w.u64(c.undecrypted);
    w.b(c.decrypt.is_some());
    if let Some(dec) = &c.decrypt {
        write_decryptor(&mut w, dec);
    }
    frame(MAGIC, VERSION, &w.0)
}

fn write_decryptor(w: &mut W, dec: &Decryptor) {
    w.u8(dec.client);
    for d in &dec.dirs {
        w.bytes(&d.buf);
        w.u8(d.dead.map_or(0, |why| why.index() as u8 + 1));
        w.b(d.ccs);
        w.u64(d.seq);
        w.b(d.app);
        w.u32(d.generation);
    }
    for n in dec.drops {
        w.u64(n);
    }
    w.u64(dec.decrypted);
}

fn read_decryptor(r: &mut R<'_>, keylog: Arc<KeyLog>) -> Res<Decryptor> {
    let client = r.u8()?;
    if client > 1 {
        return Err("bad client direction in the TLS decryption state".into());
    }
    let mut dec = Decryptor::new(keylog, client);
    for i in 0..2 {
        let mut d = Dir::default();
        d.buf = r.bytes()?;
        d.dead = match r.u8()? {
            0 => None,
            n => Some(*Drop::ALL.get(usize::from(n) - 1).ok_or("bad drop reason in the TLS decryption state")?),
        };
        d.ccs = r.b()?;
        d.seq = r.u64()?;
        d.app = r.b()?;
        d.generation = r.u32()?;
        dec.dirs[i] = d;
    }
    for n in dec.drops.iter_mut() {
        *n = r.u64()?;
    }
    dec.decrypted = r.u64()?;
    Ok(dec)
}

/// A connection from [`snapshot`]'s bytes (this version's or version 1's), decrypting
/// again with `keylog` if it was decrypting; an error for anything else.
pub fn restore(data: &[u8], keylog: Option<Arc<KeyLog>>) -> Res<Connection> {
    // The older version is read by this code too: ask the envelope for the one written.
    let v = match data.get(4..6) {
        Some(&[a, b]) if data.get(..4) == Some(MAGIC) && matches!(u16::from_be_bytes([a, b]), 1..=VERSION) => {
            u16::from_be_bytes([a, b])
        }
        _ => VERSION,
    };
    let body = unframe("TLS", MAGIC, v, data)?;
    let mut r = R::new("TLS", body);
    let client = r.u8()?;
    if client > 1 {
        return Err("bad client direction in the TLS state".into());
    }
    let timeout = r.i64()?;
    let mut c = Connection::new(client, timeout);
    c.sides = [read_side(&mut r)?, read_side(&mut r)?];
    c.phase = *Phase::ALL.get(usize::from(r.u8()?)).ok_or("bad phase in the TLS state")?;
    c.closed = r.b()?;
    c.hello_ts = r.oi64()?;
    c.client_hello_seen = r.b()?;
    c.client_hello = read_ch(&mut r, v)?;
    c.server_hello = read_sh(&mut r, v)?;
    c.hrr = r.b()?;
    c.resumed = r.b()?;
    c.full_handshake = r.b()?;
    c.end_ts = r.oi64()?;
    let has_alert = r.b()?;
    let alert = r.u8()?;
    c.alert = has_alert.then_some(alert);
    c.alert_level = match r.u8()? {
        0 => None,
        1 => Some(AlertLevel::Warning),
        2 => Some(AlertLevel::Fatal),
        3 => Some(AlertLevel::Unknown(r.u8()?)),
        4 => Some(AlertLevel::Encrypted),
        t => return Err(format!("bad alert level {t} in the TLS state")),
    };
    c.alert_from = match r.u8()? {
        2 => None,
        d @ (0 | 1) => Some(d),
        t => return Err(format!("bad alert side {t} in the TLS state")),
    };
    c.alert_ts = r.oi64()?;
    c.error = match r.u8()? {
        0 => None,
        1 => Some(Error::Gap),
        2 => Some(Error::ParseError),
        t => return Err(format!("bad error {t} in the TLS state")),
    };
    c.renegotiation_counted = r.b()?;
    if v >= 2 {
        c.undecrypted = r.u64()?;
        if r.b()? {
            let dec = read_decryptor(&mut r, keylog.clone().unwrap_or_default())?;
            if keylog.is_some() {
                c.decrypt = Some(Box::new(dec));
            }
        }
    }
    if r.at != body.len() {
        return Err("trailing bytes after the TLS state".into());
    }
    Ok(c)
}
