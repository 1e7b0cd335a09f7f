//! One connection's decryptor: frames each direction's records itself, keeps the
//! sequence numbers and key phases, and opens the records with the key log's secrets.
//!
//! Takes the raw in-order bytes of both directions (and gaps), after the handshake parser
//! (`l7::tls::session`) has seen them, with the [`Params`] it learned from the hellos;
//! gives the plaintext of application-data records (`plain`, taken by the caller after
//! each call) and, per [`Drop`] reason, the records it could not open.
//!
//! - TLS 1.2: a direction's records are ciphertext after its ChangeCipherSpec, with
//!   sequence numbers from 0 (its encrypted Finished is record 0). A second
//!   ChangeCipherSpec (renegotiation: new randoms we do not follow) stops the direction.
//! - TLS 1.3: every type-23 record after the ServerHello is protected; a direction's
//!   records are under its handshake traffic secret until its Finished, then under its
//!   application traffic secret, sequence numbers restarting at 0. Rather than parse the
//!   encrypted handshake, the switch is found by trial: a record the handshake key does
//!   not open is tried with the application key at sequence 0 (one extra AEAD check per
//!   direction per connection). A KeyUpdate moves to the next generation of the secret.
//! - Records are framed by their 5-byte headers; a record is opened when complete (its
//!   plaintext carries the capture time of the segment that completed it). A gap stops
//!   the direction (its framing and sequence number are lost; counted once as `gap`).
//!
//! Keys are derived on first use and cached (`keys`, never in a snapshot): a restored
//! decryptor derives them again from the key log, the randoms and the KeyUpdate count.

use std::sync::Arc;

use super::keylog::KeyLog;
use super::{tls12, tls13, Drop};

const CT_CCS: u8 = 20;
const CT_HANDSHAKE: u8 = 22;
const CT_APPLICATION_DATA: u8 = 23;
const CT_HEARTBEAT: u8 = 24;
const HS_KEY_UPDATE: u8 = 24;
/// Largest record body (TLS 1.2's TLSCiphertext; TLS 1.3 allows less).
const MAX_RECORD: usize = (1 << 14) + 2048;

/// What the handshake told us, needed to pick the keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub version: u16,
    pub cipher: u16,
    pub client_random: [u8; 32],
    pub server_random: [u8; 32],
    /// encrypt_then_mac negotiated (TLS 1.2 CBC suites).
    pub etm: bool,
}

enum Keys {
    V12(tls12::Keys),
    V13 {
        suite: tls13::Suite,
        handshake: Option<tls13::Keys>,
        app: Option<tls13::Keys>,
        /// The current application traffic secret (for the next KeyUpdate).
        app_secret: Option<Vec<u8>>,
    },
}

/// One direction.
#[derive(Default)]
pub struct Dir {
    /// Bytes of a record not yet complete.
    pub buf: Vec<u8>,
    /// Why this direction stopped (no more records are framed).
    pub dead: Option<Drop>,
    /// TLS 1.2: ChangeCipherSpec sent (records are ciphertext).
    pub ccs: bool,
    /// Sequence number of the next protected record under the current keys.
    pub seq: u64,
    /// TLS 1.3: under the application traffic keys.
    pub app: bool,
    /// TLS 1.3: KeyUpdates of this direction so far.
    pub generation: u32,
    /// Derived keys, or why there are none (a cache: not state).
    keys: Option<Result<Keys, Drop>>,
}

/// One connection's decryptor (see the module doc).
pub struct Decryptor {
    keylog: Arc<KeyLog>,
    /// The client's direction (0/1).
    pub client: u8,
    pub dirs: [Dir; 2],
    /// Records not opened, by [`Drop::index`].
    pub drops: [u64; 8],
    /// Records opened (of any content type).
    pub decrypted: u64,
    /// Plaintext of application data since the last take: (direction, bytes, capture time).
    pub plain: Vec<(u8, Vec<u8>, i64)>,
}

impl Decryptor {
    pub fn new(keylog: Arc<KeyLog>, client: u8) -> Self {
        Decryptor { keylog, client: client & 1, dirs: Default::default(), drops: [0; 8], decrypted: 0, plain: Vec::new() }
    }

    fn drop(&mut self, why: Drop) {
        self.drops[why.index()] += 1;
    }

    /// `missing` bytes of direction `d` were never captured.
    pub fn gap(&mut self, d: u8) {
        let dir = &mut self.dirs[usize::from(d & 1)];
        if dir.dead.is_none() {
            dir.dead = Some(Drop::Gap);
            dir.buf = Vec::new();
            self.drop(Drop::Gap);
        }
    }

    /// In-order bytes of direction `d`, captured at `ts`.
    pub fn feed(&mut self, d: u8, data: &[u8], ts: i64, params: Option<&Params>) {
        let d = usize::from(d & 1);
        if self.dirs[d].dead.is_some() {
            return;
        }
        let mut buf = std::mem::take(&mut self.dirs[d].buf);
        buf.extend_from_slice(data);
        let mut pos = 0;
        while let Some(header) = buf.get(pos..pos + 5) {
            let header: [u8; 5] = [header[0], header[1], header[2], header[3], header[4]];
            let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if !(CT_CCS..=CT_HEARTBEAT).contains(&header[0]) || header[1] != 3 || length > MAX_RECORD {
                // Not a record header: the handshake parser counts why; we stop here.
                self.dirs[d].dead = Some(Drop::Malformed);
                self.drop(Drop::Malformed);
                return;
            }
            let Some(body) = buf.get(pos + 5..pos + 5 + length) else { break };
            self.record(d, header, body, ts, params);
            pos += 5 + length;
            if self.dirs[d].dead.is_some() {
                return;
            }
        }
        buf.drain(..pos);
        self.dirs[d].buf = buf;
    }

    fn record(&mut self, d: usize, header: [u8; 5], body: &[u8], ts: i64, params: Option<&Params>) {
        let ctype = header[0];
        let Some(p) = params else {
            if ctype == CT_APPLICATION_DATA {
                self.drop(Drop::NoHandshake); // 0-RTT data, or the hellos were not read
            }
            return;
        };
        match p.version {
            0x0303 => self.record12(d, header, body, ts, p),
            0x0304 => {
                if ctype == CT_APPLICATION_DATA {
                    self.record13(d, header, body, ts, p);
                }
            }
            _ => {
                let dir = &mut self.dirs[d];
                if ctype == CT_CCS {
                    dir.ccs = true;
                } else if ctype == CT_APPLICATION_DATA || (dir.ccs && ctype != CT_HEARTBEAT) {
                    self.drop(Drop::UnsupportedVersion);
                }
            }
        }
    }

    fn record12(&mut self, d: usize, header: [u8; 5], body: &[u8], ts: i64, p: &Params) {
        let ctype = header[0];
        if ctype == CT_CCS {
            let dir = &mut self.dirs[d];
            if dir.ccs {
                dir.dead = Some(Drop::Renegotiation);
                self.drop(Drop::Renegotiation);
            }
            let dir = &mut self.dirs[d];
            dir.ccs = true;
            dir.seq = 0;
            return;
        }
        if ctype == CT_HEARTBEAT || (!self.dirs[d].ccs && ctype != CT_APPLICATION_DATA) {
            return; // plaintext handshake/alert: the handshake parser reads those
        }
        if !self.dirs[d].ccs {
            self.drop(Drop::NoHandshake); // application data before the ChangeCipherSpec
            return;
        }
        if let Err(why) = self.ensure_keys(d, p) {
            if ctype == CT_APPLICATION_DATA {
                self.drop(why);
            }
            return;
        }
        let dir = &mut self.dirs[d];
        let Some(Ok(Keys::V12(keys))) = &dir.keys else { return };
        let version = u16::from_be_bytes([header[1], header[2]]);
        let result = keys.open(dir.seq, ctype, version, body, p.etm);
        dir.seq = dir.seq.wrapping_add(1); // the sequence number counts every record, opened or not
        match result {
            Ok(plain) => {
                self.decrypted += 1;
                if ctype == CT_APPLICATION_DATA && !plain.is_empty() {
                    self.plain.push((d as u8, plain, ts));
                }
            }
            Err(why) => self.drop(why),
        }
    }

    fn record13(&mut self, d: usize, header: [u8; 5], body: &[u8], ts: i64, p: &Params) {
        if let Err(why) = self.ensure_keys(d, p) {
            self.drop(why);
            return;
        }
        let dir = &mut self.dirs[d];
        let Some(Ok(Keys::V13 { handshake, app, .. })) = &dir.keys else { return };
        let opened = if dir.app {
            app.as_ref().ok_or(Drop::NoKey).and_then(|k| k.open(dir.seq, &header, body))
        } else {
            let first = handshake.as_ref().ok_or(Drop::NoKey).and_then(|k| k.open(dir.seq, &header, body));
            match first {
                Ok(v) => Ok(v),
                // Not under the handshake key: the first record under the application key?
                Err(Drop::BadMac | Drop::NoKey) if app.is_some() => {
                    match app.as_ref().ok_or(Drop::NoKey).and_then(|k| k.open(0, &header, body)) {
                        Ok(v) => {
                            dir.app = true;
                            dir.seq = 0;
                            Ok(v)
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        };
        match opened {
            Ok((ctype, plain)) => {
                let dir = &mut self.dirs[d];
                dir.seq = dir.seq.wrapping_add(1);
                self.decrypted += 1;
                if ctype == CT_APPLICATION_DATA && !plain.is_empty() {
                    self.plain.push((d as u8, plain, ts));
                } else if ctype == CT_HANDSHAKE && self.dirs[d].app && has_key_update(&plain) {
                    self.key_update(d, p);
                }
                // alerts (close_notify) and NewSessionTicket carry nothing for the analysers
            }
            Err(why) => self.drop(why),
        }
    }

    /// The sender moved to the next generation of its application traffic secret.
    fn key_update(&mut self, d: usize, p: &Params) {
        let dir = &mut self.dirs[d];
        dir.generation = dir.generation.saturating_add(1);
        dir.seq = 0;
        if let Some(Ok(Keys::V13 { suite, app, app_secret, .. })) = &mut dir.keys {
            let next = app_secret.as_ref().and_then(|s| tls13::next_secret(suite.hash, s));
            *app = next.as_ref().and_then(|s| tls13::Keys::new(*suite, s));
            *app_secret = next;
        } else {
            dir.keys = None;
            let _ = self.ensure_keys(d, p);
        }
    }

    /// Derive direction `d`'s keys if not done yet.
    fn ensure_keys(&mut self, d: usize, p: &Params) -> Result<(), Drop> {
        if self.dirs[d].keys.is_none() {
            let keys = self.derive(d, p);
            self.dirs[d].keys = Some(keys);
        }
        match &self.dirs[d].keys {
            Some(Ok(_)) => Ok(()),
            Some(Err(why)) => Err(*why),
            None => Err(Drop::NoKey),
        }
    }

    fn derive(&self, d: usize, p: &Params) -> Result<Keys, Drop> {
        let from_client = d == usize::from(self.client);
        if p.version == 0x0303 {
            let suite = tls12::suite(p.cipher).ok_or(Drop::UnsupportedSuite)?;
            let secrets = self.keylog.get(&p.client_random).ok_or(Drop::NoKey)?;
            let master = secrets.master.as_ref().ok_or(Drop::NoKey)?;
            let (client, server) = tls12::keys(suite, master, &p.client_random, &p.server_random).ok_or(Drop::NoKey)?;
            return Ok(Keys::V12(if from_client { client } else { server }));
        }
        let suite = tls13::suite(p.cipher).ok_or(Drop::UnsupportedSuite)?;
        let secrets = self.keylog.get(&p.client_random).ok_or(Drop::NoKey)?;
        let (hs, app) = if from_client {
            (&secrets.client_handshake, &secrets.client_traffic)
        } else {
            (&secrets.server_handshake, &secrets.server_traffic)
        };
        let mut app_secret = app.clone();
        for _ in 0..self.dirs[d].generation {
            app_secret = app_secret.and_then(|s| tls13::next_secret(suite.hash, &s));
        }
        let handshake = hs.as_ref().and_then(|s| tls13::Keys::new(suite, s));
        let app = app_secret.as_ref().and_then(|s| tls13::Keys::new(suite, s));
        if handshake.is_none() && app.is_none() {
            return Err(Drop::NoKey);
        }
        Ok(Keys::V13 { suite, handshake, app, app_secret })
    }
}

// Clone, Debug and PartialEq over the state only: the keys are a cache (a clone derives
// them again), and a secret must never reach a Debug string.
impl Clone for Dir {
    fn clone(&self) -> Self {
        Dir { buf: self.buf.clone(), dead: self.dead, ccs: self.ccs, seq: self.seq, app: self.app, generation: self.generation, keys: None }
    }
}

impl PartialEq for Dir {
    fn eq(&self, o: &Self) -> bool {
        (&self.buf, self.dead, self.ccs, self.seq, self.app, self.generation) == (&o.buf, o.dead, o.ccs, o.seq, o.app, o.generation)
    }
}

impl std::fmt::Debug for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dir")
            .field("buffered", &self.buf.len())
            .field("dead", &self.dead)
            .field("ccs", &self.ccs)
            .field("seq", &self.seq)
            .field("app", &self.app)
            .field("generation", &self.generation)
            .finish()
    }
}

impl Clone for Decryptor {
    fn clone(&self) -> Self {
        Decryptor {
            keylog: self.keylog.clone(),
            client: self.client,
            dirs: self.dirs.clone(),
            drops: self.drops,
            decrypted: self.decrypted,
            plain: self.plain.clone(),
        }
    }
}

impl PartialEq for Decryptor {
    fn eq(&self, o: &Self) -> bool {
        (self.client, &self.dirs, self.drops, self.decrypted, &self.plain) == (o.client, &o.dirs, o.drops, o.decrypted, &o.plain)
    }
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("client", &self.client)
            .field("dirs", &self.dirs)
            .field("drops", &self.drops)
            .field("decrypted", &self.decrypted)
            .field("plain_chunks", &self.plain.len())
            .finish()
    }
}

impl Decryptor {
    /// The counter increments of this connection's decryption (taken once, at its end):
    /// `tls_decrypted_records` and `tls_decrypt_drop.<reason>`.
    pub fn take_counts(&mut self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        if self.decrypted > 0 {
            out.push(("tls_decrypted_records", self.decrypted));
        }
        for why in Drop::ALL {
            let n = self.drops[why.index()];
            if n > 0 {
                out.push((why.counter(), n));
            }
        }
        self.decrypted = 0;
        self.drops = [0; 8];
        out
    }
}

/// Does this handshake plaintext hold a KeyUpdate message?
fn has_key_update(plain: &[u8]) -> bool {
    let mut pos = 0;
    while let (Some(&mtype), Some(len)) = (plain.get(pos), plain.get(pos + 1..pos + 4)) {
        if mtype == HS_KEY_UPDATE {
            return true;
        }
        pos += 4 + (usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]));
    }
    false
}
