//! TLS 1.3 record protection (RFC 8446 §5.2-5.4, §7.1-7.3).
//!
//! Takes a traffic secret from the key log and the negotiated suite; gives the record
//! key and IV (HKDF-Expand-Label "key"/"iv"), the next-generation secret of a KeyUpdate
//! ("traffic upd"), and opens records: nonce = IV XOR the record's sequence number, the
//! additional data is the 5-byte record header, and the inner plaintext ends with its
//! real content type followed by zero padding.

use hkdf::Hkdf;
use sha2::{Sha256, Sha384};

use super::cipher::{xor_nonce, Aead, Alg, Hash, TAG};
use super::Drop;

/// A TLS 1.3 cipher suite we decrypt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suite {
    pub alg: Alg,
    pub hash: Hash,
}

/// TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256; the CCM
/// suites (0x1304, 0x1305) are not decrypted.
pub fn suite(id: u16) -> Option<Suite> {
    match id {
        0x1301 => Some(Suite { alg: Alg::Aes128Gcm, hash: Hash::Sha256 }),
        0x1302 => Some(Suite { alg: Alg::Aes256Gcm, hash: Hash::Sha384 }),
        0x1303 => Some(Suite { alg: Alg::ChaCha20Poly1305, hash: Hash::Sha256 }),
        _ => None,
    }
}

/// HKDF-Expand-Label(secret, label, context, len) (RFC 8446 §7.1); None if the secret is
/// shorter than the hash (HKDF refuses such a PRK) or `len` is too long.
pub fn expand_label(hash: Hash, secret: &[u8], label: &str, context: &[u8], len: usize) -> Option<Vec<u8>> {
    let full = format!("tls13 {label}");
    let mut info = Vec::with_capacity(4 + full.len() + context.len());
    info.extend_from_slice(&u16::try_from(len).ok()?.to_be_bytes());
    info.push(u8::try_from(full.len()).ok()?);
    info.extend_from_slice(full.as_bytes());
    info.push(u8::try_from(context.len()).ok()?);
    info.extend_from_slice(context);
    let mut out = vec![0u8; len];
    match hash {
        Hash::Sha256 => Hkdf::<Sha256>::from_prk(secret).ok()?.expand(&info, &mut out).ok()?,
        Hash::Sha384 => Hkdf::<Sha384>::from_prk(secret).ok()?.expand(&info, &mut out).ok()?,
    }
    Some(out)
}

/// The keys of one direction under one traffic secret.
pub struct Keys {
    aead: Aead,
    iv: [u8; 12],
}

impl Keys {
    /// From a traffic secret (its length must be the suite's hash length).
    pub fn new(suite: Suite, secret: &[u8]) -> Option<Keys> {
        if secret.len() != suite.hash.size() {
            return None;
        }
        let key = expand_label(suite.hash, secret, "key", b"", suite.alg.key_len())?;
        let iv = expand_label(suite.hash, secret, "iv", b"", 12)?;
        Some(Keys { aead: Aead::new(suite.alg, &key)?, iv: iv.try_into().ok()? })
    }

    /// Open one record (`header` is its 5 bytes, `body` the rest): the real content type
    /// and the plaintext without padding.
    pub fn open(&self, seq: u64, header: &[u8; 5], body: &[u8]) -> Result<(u8, Vec<u8>), Drop> {
        if body.len() < TAG + 1 {
            return Err(Drop::Malformed);
        }
        let mut inner = self.aead.open(&xor_nonce(&self.iv, seq), header, body).ok_or(Drop::BadMac)?;
        // TLSInnerPlaintext: content, then ContentType, then zeros (padding).
        let end = inner.iter().rposition(|&b| b != 0).ok_or(Drop::Malformed)?;
        let ctype = inner[end];
        inner.truncate(end);
        Ok((ctype, inner))
    }

    #[cfg(test)]
    pub fn seal(&self, seq: u64, ctype: u8, plaintext: &[u8]) -> Vec<u8> {
        let len = (plaintext.len() + 1 + TAG) as u16;
        let mut rec = vec![23, 3, 3];
        rec.extend_from_slice(&len.to_be_bytes());
        let mut inner = plaintext.to_vec();
        inner.push(ctype);
        let header: [u8; 5] = rec[..5].try_into().unwrap_or_default();
        rec.extend(self.aead.seal(&xor_nonce(&self.iv, seq), &header, &inner));
        rec
    }
}

/// The secret of the next generation after a KeyUpdate (RFC 8446 §7.2).
pub fn next_secret(hash: Hash, secret: &[u8]) -> Option<Vec<u8>> {
    expand_label(hash, secret, "traffic upd", b"", hash.size())
}
