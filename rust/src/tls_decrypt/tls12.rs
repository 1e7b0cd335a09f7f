//! TLS 1.2 record protection for the AEAD suites (RFC 5246 §5 and §6.3, RFC 5288, RFC
//! 7905).
//!
//! Takes the master secret (`CLIENT_RANDOM` line of the key log), both randoms and the
//! suite; gives each direction's key and IV from the key block
//! (`PRF(master, "key expansion", server_random + client_random)`: no MAC keys for AEAD
//! suites) and opens records. AES-GCM: the nonce is the 4-byte salt from the key block
//! then the record's 8-byte explicit nonce. ChaCha20-Poly1305: the nonce is the 12-byte
//! IV XOR the sequence number. The additional data is `seq(8) type(1) version(2)
//! plaintext length(2)`. CBC suites are not decrypted (`unsupported_suite`).

use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha384};

use super::cipher::{xor_nonce, Aead, Alg, Hash, TAG};
use super::Drop;

/// A TLS 1.2 AEAD suite we decrypt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suite {
    pub alg: Alg,
    /// The PRF's hash.
    pub hash: Hash,
}

impl Suite {
    /// IV bytes in the key block: the GCM salt (4), or ChaCha20's whole IV (12).
    fn iv_len(self) -> usize {
        if self.alg == Alg::ChaCha20Poly1305 {
            12
        } else {
            4
        }
    }
}

/// The (EC)DHE and RSA key exchanges with AES-GCM (RFC 5288, 5289) and ChaCha20-Poly1305
/// (RFC 7905): the key exchange does not matter, the master secret is in the key log.
pub fn suite(id: u16) -> Option<Suite> {
    let (alg, hash) = match id {
        // TLS_RSA / DHE_RSA / ECDHE_ECDSA / ECDHE_RSA _WITH_AES_128_GCM_SHA256
        0x009C | 0x009E | 0xC02B | 0xC02F => (Alg::Aes128Gcm, Hash::Sha256),
        // ... _WITH_AES_256_GCM_SHA384
        0x009D | 0x009F | 0xC02C | 0xC030 => (Alg::Aes256Gcm, Hash::Sha384),
        // ECDHE_RSA / ECDHE_ECDSA / DHE_RSA _WITH_CHACHA20_POLY1305_SHA256
        0xCCA8..=0xCCAA => (Alg::ChaCha20Poly1305, Hash::Sha256),
        _ => return None,
    };
    Some(Suite { alg, hash })
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
    aead: Aead,
    iv: Vec<u8>,
}

/// (client keys, server keys) from the master secret and the randoms.
pub fn keys(suite: Suite, master: &[u8], client_random: &[u8; 32], server_random: &[u8; 32]) -> Option<(Keys, Keys)> {
    let (k, i) = (suite.alg.key_len(), suite.iv_len());
    let mut seed = Vec::with_capacity(64);
    seed.extend_from_slice(server_random);
    seed.extend_from_slice(client_random);
    let block = prf(suite.hash, master, b"key expansion", &seed, 2 * k + 2 * i);
    let part = |from: usize, n: usize| block.get(from..from + n);
    let client = Keys { suite, aead: Aead::new(suite.alg, part(0, k)?)?, iv: part(2 * k, i)?.to_vec() };
    let server = Keys { suite, aead: Aead::new(suite.alg, part(k, k)?)?, iv: part(2 * k + i, i)?.to_vec() };
    Some((client, server))
}

impl Keys {
    /// Open one record of content type `ctype` and header version `version`.
    pub fn open(&self, seq: u64, ctype: u8, version: u16, body: &[u8]) -> Result<Vec<u8>, Drop> {
        let (nonce, ct) = if self.suite.alg == Alg::ChaCha20Poly1305 {
            let iv: [u8; 12] = self.iv.as_slice().try_into().map_err(|_| Drop::Malformed)?;
            (xor_nonce(&iv, seq), body)
        } else {
            let explicit = body.get(..8).ok_or(Drop::Malformed)?;
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(self.iv.get(..4).ok_or(Drop::Malformed)?);
            nonce[4..].copy_from_slice(explicit);
            (nonce, &body[8..])
        };
        let plain_len = ct.len().checked_sub(TAG).ok_or(Drop::Malformed)?;
        let mut aad = [0u8; 13];
        aad[..8].copy_from_slice(&seq.to_be_bytes());
        aad[8] = ctype;
        aad[9..11].copy_from_slice(&version.to_be_bytes());
        aad[11..].copy_from_slice(&u16::try_from(plain_len).map_err(|_| Drop::Malformed)?.to_be_bytes());
        self.aead.open(&nonce, &aad, ct).ok_or(Drop::BadMac)
    }

    #[cfg(test)]
    pub fn seal(&self, seq: u64, ctype: u8, version: u16, plaintext: &[u8], explicit: [u8; 8]) -> Vec<u8> {
        let mut aad = [0u8; 13];
        aad[..8].copy_from_slice(&seq.to_be_bytes());
        aad[8] = ctype;
        aad[9..11].copy_from_slice(&version.to_be_bytes());
        aad[11..].copy_from_slice(&(plaintext.len() as u16).to_be_bytes());
        if self.suite.alg == Alg::ChaCha20Poly1305 {
            let iv: [u8; 12] = self.iv.as_slice().try_into().unwrap_or_default();
            self.aead.seal(&xor_nonce(&iv, seq), &aad, plaintext)
        } else {
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(&self.iv[..4]);
            nonce[4..].copy_from_slice(&explicit);
            let mut out = explicit.to_vec();
            out.extend(self.aead.seal(&nonce, &aad, plaintext));
            out
        }
    }
}
