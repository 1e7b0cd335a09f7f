//! The AEADs and hashes of the suites we decrypt, over RustCrypto's crates.
//!
//! Takes a key and, per record, a 12-byte nonce, the additional data and ciphertext+tag;
//! gives the plaintext or `None` (tag mismatch). Keys of the wrong length are `None` at
//! construction, never a panic.

use aes_gcm::aead::{Aead as _, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use chacha20poly1305::ChaCha20Poly1305;

/// The record protection algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl Alg {
    pub fn key_len(self) -> usize {
        match self {
            Alg::Aes128Gcm => 16,
            Alg::Aes256Gcm | Alg::ChaCha20Poly1305 => 32,
        }
    }
}

/// The hash of the suite's PRF (TLS 1.2) or HKDF (TLS 1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
}

impl Hash {
    pub fn size(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
        }
    }
}

/// Tag length of every AEAD here.
pub const TAG: usize = 16;

/// A keyed AEAD (boxed: the AES key schedules are large).
pub enum Aead {
    Aes128(Box<Aes128Gcm>),
    Aes256(Box<Aes256Gcm>),
    ChaCha(Box<ChaCha20Poly1305>),
}

impl Aead {
    pub fn new(alg: Alg, key: &[u8]) -> Option<Self> {
        Some(match alg {
            Alg::Aes128Gcm => Aead::Aes128(Box::new(Aes128Gcm::new_from_slice(key).ok()?)),
            Alg::Aes256Gcm => Aead::Aes256(Box::new(Aes256Gcm::new_from_slice(key).ok()?)),
            Alg::ChaCha20Poly1305 => Aead::ChaCha(Box::new(ChaCha20Poly1305::new_from_slice(key).ok()?)),
        })
    }

    /// Decrypt and verify `ct` (ciphertext then tag).
    pub fn open(&self, nonce: &[u8; 12], aad: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
        let payload = Payload { msg: ct, aad };
        match self {
            Aead::Aes128(c) => c.decrypt(nonce.into(), payload).ok(),
            Aead::Aes256(c) => c.decrypt(nonce.into(), payload).ok(),
            Aead::ChaCha(c) => c.decrypt(nonce.into(), payload).ok(),
        }
    }

    /// Encrypt (tests build records with it).
    #[cfg(test)]
    pub fn seal(&self, nonce: &[u8; 12], aad: &[u8], pt: &[u8]) -> Vec<u8> {
        let payload = Payload { msg: pt, aad };
        match self {
            Aead::Aes128(c) => c.encrypt(nonce.into(), payload),
            Aead::Aes256(c) => c.encrypt(nonce.into(), payload),
            Aead::ChaCha(c) => c.encrypt(nonce.into(), payload),
        }
        .unwrap_or_default()
    }
}

/// `iv` XOR the sequence number, big-endian, right-aligned (RFC 8446 §5.3, RFC 7905 §2).
pub fn xor_nonce(iv: &[u8; 12], seq: u64) -> [u8; 12] {
    let mut n = *iv;
    for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    n
}
