//! TLS 1.2 record protection (RFC 5246 §5, §6.2.3, §6.3; RFC 5288, RFC 7905, RFC 7366).
//!
//! Takes the master secret (`CLIENT_RANDOM` line of the key log), both randoms and the
//! suite; gives each direction's keys from the key block
//! (`PRF(master, "key expansion", server_random + client_random)`) and opens records.
//!
//! - AES-GCM: the nonce is the 4-byte salt from the key block then the record's 8-byte
//!   explicit nonce; ChaCha20-Poly1305: the 12-byte IV XOR the sequence number. The
//!   additional data is `seq(8) type(1) version(2) plaintext length(2)`.
//! - AES-CBC with HMAC-SHA1/SHA256/SHA384: the record is an explicit IV then the CBC
//!   ciphertext. MAC-then-encrypt (the default): the plaintext ends with the HMAC of
//!   `seq type version length plaintext`, then the padding; with the encrypt_then_mac
//!   extension (RFC 7366, which OpenSSL negotiates by default) the HMAC of
//!   `seq type version length IV+ciphertext` follows the ciphertext and is checked
//!   first. Padding and MAC are checked (a mismatch is `bad_mac`); we are a passive
//!   reader, so the timing of the check does not matter here.
use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Sha256, Sha384};

use super::cipher::{xor_nonce, Aead, Alg, Hash, TAG};
use super::Drop;

/// The HMAC of a CBC suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacHash {
    Sha1,
    Sha256,
    Sha384,
}

impl MacHash {
    fn size(self) -> usize {
        match self {
            MacHash::Sha1 => 20,
            MacHash::Sha256 => 32,
            MacHash::Sha384 => 48,
        }
    }
}

/// How a suite protects records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    Aead(Alg),
    /// AES-CBC (16- or 32-byte key) with an HMAC.
    Cbc { key_len: usize, mac: MacHash },
}

/// A TLS 1.2 suite we decrypt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suite {
    pub protection: Protection,
    /// The PRF's hash.
    pub hash: Hash,
}

impl Suite {
    /// (MAC key, encryption key, fixed IV) bytes per direction in the key block: AEAD
    /// suites have no MAC key and a GCM salt (4) or ChaCha20's IV (12); CBC suites of TLS
    /// 1.2 have no fixed IV (each record carries its own).
    fn lengths(self) -> (usize, usize, usize) {
        match self.protection {
            Protection::Aead(Alg::ChaCha20Poly1305) => (0, 32, 12),
            Protection::Aead(alg) => (0, alg.key_len(), 4),
            Protection::Cbc { key_len, mac } => (mac.size(), key_len, 0),
        }
    }
}

/// The (EC)DHE and RSA key exchanges with AES-GCM (RFC 5288, 5289), ChaCha20-Poly1305
/// (RFC 7905) and AES-CBC (RFC 5246, 4492, 5289): the key exchange does not matter, the
/// master secret is in the key log.
pub fn suite(id: u16) -> Option<Suite> {
    let aead = |alg, hash| Some(Suite { protection: Protection::Aead(alg), hash });
    let cbc = |key_len, mac, hash| Some(Suite { protection: Protection::Cbc { key_len, mac }, hash });
    match id {
        // TLS_RSA / DHE_RSA / ECDHE_ECDSA / ECDHE_RSA _WITH_AES_128_GCM_SHA256
        0x009C | 0x009E | 0xC02B | 0xC02F => aead(Alg::Aes128Gcm, Hash::Sha256),
        // ... _WITH_AES_256_GCM_SHA384
        0x009D | 0x009F | 0xC02C | 0xC030 => aead(Alg::Aes256Gcm, Hash::Sha384),
        // ECDHE_RSA / ECDHE_ECDSA / DHE_RSA _WITH_CHACHA20_POLY1305_SHA256
        0xCCA8..=0xCCAA => aead(Alg::ChaCha20Poly1305, Hash::Sha256),
        // RSA / DHE_RSA / ECDHE_ECDSA / ECDHE_RSA _WITH_AES_128_CBC_SHA
        0x002F | 0x0033 | 0xC009 | 0xC013 => cbc(16, MacHash::Sha1, Hash::Sha256),
        // ... _WITH_AES_256_CBC_SHA
        0x0035 | 0x0039 | 0xC00A | 0xC014 => cbc(32, MacHash::Sha1, Hash::Sha256),
        // RSA / DHE_RSA _WITH_AES_128/256_CBC_SHA256, ECDHE_ECDSA / ECDHE_RSA _WITH_AES_128_CBC_SHA256
        0x003C | 0x0067 | 0xC023 | 0xC027 => cbc(16, MacHash::Sha256, Hash::Sha256),
        0x003D | 0x006B => cbc(32, MacHash::Sha256, Hash::Sha256),
        // ECDHE_ECDSA / ECDHE_RSA _WITH_AES_256_CBC_SHA384
        0xC024 | 0xC028 => cbc(32, MacHash::Sha384, Hash::Sha384),
        _ => None,
    }
}

/// HMAC over the concatenation of `parts`.
fn hmac_of(mac: MacHash, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let Ok(mut m) = <M as hmac::digest::KeyInit>::new_from_slice(key) else { return Vec::new() };
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().to_vec()
    }
    match mac {
        MacHash::Sha1 => run::<Hmac<Sha1>>(key, parts),
        MacHash::Sha256 => run::<Hmac<Sha256>>(key, parts),
        MacHash::Sha384 => run::<Hmac<Sha384>>(key, parts),
    }
}

/// Equal, in time independent of where they differ (habit: this is a reader, not a peer).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn p_hash<M: Mac + hmac::digest::KeyInit + Clone>(secret: &[u8], seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let Ok(base) = <M as hmac::digest::KeyInit>::new_from_slice(secret) else {
        return out; // HMAC takes keys of any length: not reached
    };
    let mut a = {
        let mut m = base.clone();
        m.update(seed);
        m.finalize().into_bytes().to_vec()
    };
    while out.len() < len {
        let mut m = base.clone();
        m.update(&a);
        m.update(seed);
        out.extend_from_slice(&m.finalize().into_bytes());
        let mut m = base.clone();
        m.update(&a);
        a = m.finalize().into_bytes().to_vec();
    }
    out.truncate(len);
    out
}

/// PRF(secret, label, seed) of TLS 1.2 (RFC 5246 §5): P_hash over HMAC of the suite's hash.
pub fn prf(hash: Hash, secret: &[u8], label: &[u8], seed: &[u8], len: usize) -> Vec<u8> {
    let mut full = Vec::with_capacity(label.len() + seed.len());
    full.extend_from_slice(label);
    full.extend_from_slice(seed);
    match hash {
        Hash::Sha256 => p_hash::<Hmac<Sha256>>(secret, &full, len),
        Hash::Sha384 => p_hash::<Hmac<Sha384>>(secret, &full, len),
    }
}

/// One direction's record keys.
pub struct Keys {
    suite: Suite,
    cipher: Cipher,
}

enum Cipher {
    Aead { aead: Aead, iv: Vec<u8> },
    Cbc { key: Vec<u8>, mac_key: Vec<u8>, mac: MacHash },
}

/// (client keys, server keys) from the master secret and the randoms.
pub fn keys(suite: Suite, master: &[u8], client_random: &[u8; 32], server_random: &[u8; 32]) -> Option<(Keys, Keys)> {
    let (m, k, i) = suite.lengths();
    let mut seed = Vec::with_capacity(64);
    seed.extend_from_slice(server_random);
    seed.extend_from_slice(client_random);
    let block = prf(suite.hash, master, b"key expansion", &seed, 2 * (m + k + i));
    let part = |from: usize, n: usize| block.get(from..from + n);
    // client MAC key, server MAC key, client key, server key, client IV, server IV
    let side = |n: usize| -> Option<Keys> {
        let (mac_key, key, iv) = (part(n * m, m)?, part(2 * m + n * k, k)?, part(2 * (m + k) + n * i, i)?);
        let cipher = match suite.protection {
            Protection::Aead(alg) => Cipher::Aead { aead: Aead::new(alg, key)?, iv: iv.to_vec() },
            Protection::Cbc { mac, .. } => Cipher::Cbc { key: key.to_vec(), mac_key: mac_key.to_vec(), mac },
        };
        Some(Keys { suite, cipher })
    };
    Some((side(0)?, side(1)?))
}

fn aad(seq: u64, ctype: u8, version: u16, len: usize) -> Result<[u8; 13], Drop> {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = ctype;
    aad[9..11].copy_from_slice(&version.to_be_bytes());
    aad[11..].copy_from_slice(&u16::try_from(len).map_err(|_| Drop::Malformed)?.to_be_bytes());
    Ok(aad)
}

fn cbc_decrypt(key: &[u8], iv: &[u8], ct: &[u8]) -> Result<Vec<u8>, Drop> {
    let mut buf = ct.to_vec();
    let n = match key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(|_| Drop::Malformed)?
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map(|p| p.len()),
        _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(|_| Drop::Malformed)?
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map(|p| p.len()),
    }
    .map_err(|_| Drop::Malformed)?;
    buf.truncate(n);
    Ok(buf)
}

impl Keys {
    /// Open one record of content type `ctype` and header version `version`; `etm`: the
    /// encrypt_then_mac extension was negotiated (CBC suites only).
    pub fn open(&self, seq: u64, ctype: u8, version: u16, body: &[u8], etm: bool) -> Result<Vec<u8>, Drop> {
        match &self.cipher {
            Cipher::Aead { aead, iv } => {
                let (nonce, ct) = if self.suite.protection == Protection::Aead(Alg::ChaCha20Poly1305) {
                    let iv: [u8; 12] = iv.as_slice().try_into().map_err(|_| Drop::Malformed)?;
                    (xor_nonce(&iv, seq), body)
                } else {
                    let explicit = body.get(..8).ok_or(Drop::Malformed)?;
                    let mut nonce = [0u8; 12];
                    nonce[..4].copy_from_slice(iv.get(..4).ok_or(Drop::Malformed)?);
                    nonce[4..].copy_from_slice(explicit);
                    (nonce, &body[8..])
                };
                let plain_len = ct.len().checked_sub(TAG).ok_or(Drop::Malformed)?;
                aead.open(&nonce, &aad(seq, ctype, version, plain_len)?, ct).ok_or(Drop::BadMac)
            }
            Cipher::Cbc { key, mac_key, mac } => {
                let ml = mac.size();
                if etm {
                    let split = body.len().checked_sub(ml).ok_or(Drop::Malformed)?;
                    let (sealed, tag) = body.split_at(split);
                    let want = hmac_of(*mac, mac_key, &[&aad(seq, ctype, version, sealed.len())?, sealed]);
                    if !same(&want, tag) {
                        return Err(Drop::BadMac);
                    }
                    if sealed.len() < 32 || !sealed.len().is_multiple_of(16) {
                        return Err(Drop::Malformed);
                    }
                    let mut plain = cbc_decrypt(key, &sealed[..16], &sealed[16..])?;
                    let pad = usize::from(*plain.last().ok_or(Drop::Malformed)?);
                    let keep = plain.len().checked_sub(pad + 1).ok_or(Drop::BadMac)?;
                    if !plain[keep..].iter().all(|&b| usize::from(b) == pad) {
                        return Err(Drop::BadMac);
                    }
                    plain.truncate(keep);
                    return Ok(plain);
                }
                if body.len() < 32 || !body.len().is_multiple_of(16) {
                    return Err(Drop::Malformed);
                }
                let mut plain = cbc_decrypt(key, &body[..16], &body[16..])?;
                let pad = usize::from(*plain.last().ok_or(Drop::Malformed)?);
                let keep = plain.len().checked_sub(pad + 1 + ml).ok_or(Drop::BadMac)?;
                if !plain[keep + ml..].iter().all(|&b| usize::from(b) == pad) {
                    return Err(Drop::BadMac);
                }
                let want = hmac_of(*mac, mac_key, &[&aad(seq, ctype, version, keep)?, &plain[..keep]]);
                if !same(&want, &plain[keep..keep + ml]) {
                    return Err(Drop::BadMac);
                }
                plain.truncate(keep);
                Ok(plain)
            }
        }
    }

    /// Protect one record (tests build records with it); `explicit` is the GCM explicit
    /// nonce or the CBC IV's first 8 bytes.
    #[cfg(test)]
    pub fn seal(&self, seq: u64, ctype: u8, version: u16, plaintext: &[u8], explicit: [u8; 8]) -> Vec<u8> {
        self.seal_etm(seq, ctype, version, plaintext, explicit, false)
    }

    #[cfg(test)]
    pub fn seal_etm(&self, seq: u64, ctype: u8, version: u16, plaintext: &[u8], explicit: [u8; 8], etm: bool) -> Vec<u8> {
        use aes::cipher::BlockEncryptMut;
        let aad = aad(seq, ctype, version, plaintext.len()).unwrap_or_default();
        match &self.cipher {
            Cipher::Aead { aead, iv } => {
                if self.suite.protection == Protection::Aead(Alg::ChaCha20Poly1305) {
                    let iv: [u8; 12] = iv.as_slice().try_into().unwrap_or_default();
                    aead.seal(&xor_nonce(&iv, seq), &aad, plaintext)
                } else {
                    let mut nonce = [0u8; 12];
                    nonce[..4].copy_from_slice(&iv[..4]);
                    nonce[4..].copy_from_slice(&explicit);
                    let mut out = explicit.to_vec();
                    out.extend(aead.seal(&nonce, &aad, plaintext));
                    out
                }
            }
            Cipher::Cbc { key, mac_key, mac } => {
                let iv = [explicit, explicit].concat();
                let mut inner = plaintext.to_vec();
                if !etm {
                    inner.extend(hmac_of(*mac, mac_key, &[&aad, plaintext]));
                }
                let pad = 15 - inner.len() % 16;
                inner.extend(std::iter::repeat_n(pad as u8, pad + 1));
                let n = inner.len();
                let mut ct = inner.clone();
                let _ = match key.len() {
                    16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(key, &iv).unwrap().encrypt_padded_mut::<NoPadding>(&mut ct, n).map(|_| ()),
                    _ => cbc::Encryptor::<aes::Aes256>::new_from_slices(key, &iv).unwrap().encrypt_padded_mut::<NoPadding>(&mut ct, n).map(|_| ()),
                };
                let mut out = iv.clone();
                out.extend(ct);
                if etm {
                    let aad = self::aad(seq, ctype, version, out.len()).unwrap_or_default();
                    let tag = hmac_of(*mac, mac_key, &[&aad, &out]);
                    out.extend(tag);
                }
                out
            }
        }
    }
}
