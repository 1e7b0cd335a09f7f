//! TLS decryption with an NSS key log (`SSLKEYLOGFILE`, as Wireshark reads it): the
//! plaintext of captured TLS 1.2 and 1.3 connections, for the L7 analysers.
//!
//! Takes the key log's bytes (once per process) and, per connection, the client and
//! server randoms, the negotiated version and cipher suite (from the handshake parser,
//! `l7::tls::session`) and the raw bytes of both directions; gives the plaintext of the
//! application-data records, in order, with the capture time of the record, and the
//! records it could not decrypt counted by [`Drop`] reason. One file per concern:
//!
//! - [`keylog`]: the NSS key log format -> secrets by client random (bad lines counted);
//! - [`cipher`]: the AEADs (RustCrypto's `aes-gcm`, `chacha20poly1305`) and hashes;
//! - [`tls13`]: HKDF-Expand-Label, traffic keys and IVs, the per-record nonce, the inner
//!   plaintext's content type and padding (RFC 8446 §5, §7);
//! - [`tls12`]: the TLS 1.2 PRF, the key block, the AEAD and AES-CBC record formats
//!   (RFC 5246, 5288, 7905; encrypt_then_mac, RFC 7366);
//! - [`stream`]: one connection's decryptor: its own record framing per direction,
//!   sequence numbers, the switch from handshake to application keys, KeyUpdate.
//!
//! No input panics; key material never leaves memory (not in errors, counters or
//! checkpoints: a snapshot keeps sequence numbers and phases, a restore derives the keys
//! again from the key log).

pub mod cipher;
pub mod keylog;
pub mod stream;
pub mod tls12;
pub mod tls13;

pub use keylog::KeyLog;
pub use stream::{Decryptor, Params};

/// Why a record was not decrypted (counted as `tls_decrypt_drop.<name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Drop {
    /// No key log given, or the connection's client random (or the secret the record
    /// needs) is not in it.
    NoKey,
    /// A cipher suite we do not decrypt (CCM, 3DES, RC4, Camellia, export, NULL, ...).
    UnsupportedSuite,
    /// A protocol version we do not decrypt (SSL 3.0, TLS 1.0/1.1, TLS 1.3 drafts).
    UnsupportedVersion,
    /// The AEAD tag did not verify: wrong key, or damaged bytes.
    BadMac,
    /// The record followed a gap in the capture (its framing or sequence number is lost).
    Gap,
    /// Too short for its cipher's nonce and tag, or a TLS 1.3 record with no content type.
    Malformed,
    /// Encrypted before the ServerHello was read (0-RTT early data, or a missed hello).
    NoHandshake,
    /// A second handshake on the connection (TLS <= 1.2 renegotiation).
    Renegotiation,
}

impl Drop {
    pub const ALL: [Drop; 8] = [
        Drop::NoKey,
        Drop::UnsupportedSuite,
        Drop::UnsupportedVersion,
        Drop::BadMac,
        Drop::Gap,
        Drop::Malformed,
        Drop::NoHandshake,
        Drop::Renegotiation,
    ];

    pub fn counter(self) -> &'static str {
        match self {
            Drop::NoKey => "tls_decrypt_drop.no_key",
            Drop::UnsupportedSuite => "tls_decrypt_drop.unsupported_suite",
            Drop::UnsupportedVersion => "tls_decrypt_drop.unsupported_version",
            Drop::BadMac => "tls_decrypt_drop.bad_mac",
            Drop::Gap => "tls_decrypt_drop.gap",
            Drop::Malformed => "tls_decrypt_drop.malformed",
            Drop::NoHandshake => "tls_decrypt_drop.no_handshake",
            Drop::Renegotiation => "tls_decrypt_drop.renegotiation",
        }
    }

    pub fn index(self) -> usize {
        Drop::ALL.iter().position(|d| *d == self).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
