//! The NSS key log format (what `SSLKEYLOGFILE` makes OpenSSL, NSS, BoringSSL, curl,
//! Firefox and Chrome write; Wireshark's `tls.keylog_file`).
//!
//! Takes the file's bytes; gives the secrets by client random and how many lines were
//! read, ignored and bad. One entry a line: `LABEL <client random, 64 hex> <secret, hex>`;
//! `#` starts a comment line; blank lines and CRLF endings are fine. Labels:
//! `CLIENT_RANDOM` (the TLS <= 1.2 master secret, 48 bytes),
//! `CLIENT_HANDSHAKE_TRAFFIC_SECRET`, `SERVER_HANDSHAKE_TRAFFIC_SECRET`,
//! `CLIENT_TRAFFIC_SECRET_0`, `SERVER_TRAFFIC_SECRET_0` (TLS 1.3, 32 or 48 bytes: the
//! suite's hash length). Other labels of the format (`CLIENT_EARLY_TRAFFIC_SECRET`,
//! `EXPORTER_SECRET`, `RSA`, ...) are counted as ignored; a line that is none of these
//! (wrong field count, bad hex, wrong lengths) is counted bad and skipped, never fatal.
//! Nothing here puts a secret into a message.

use std::collections::HashMap;

/// The secrets logged for one client random.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    /// TLS <= 1.2 master secret.
    pub master: Option<Vec<u8>>,
    pub client_handshake: Option<Vec<u8>>,
    pub server_handshake: Option<Vec<u8>>,
    pub client_traffic: Option<Vec<u8>>,
    pub server_traffic: Option<Vec<u8>>,
}

impl std::fmt::Debug for Secrets {
    // Which secrets are there, never their bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("master", &self.master.is_some())
            .field("client_handshake", &self.client_handshake.is_some())
            .field("server_handshake", &self.server_handshake.is_some())
            .field("client_traffic", &self.client_traffic.is_some())
            .field("server_traffic", &self.server_traffic.is_some())
            .finish()
    }
}

/// A parsed key log.
#[derive(Clone, Debug, Default)]
pub struct KeyLog {
    pub by_random: HashMap<[u8; 32], Secrets>,
    /// Entries taken.
    pub entries: u64,
    /// Lines of a label we do not use.
    pub ignored: u64,
    /// Lines that are not key log entries.
    pub bad: u64,
}

/// Labels of the format that we do not need.
const IGNORED: [&str; 6] = [
    "CLIENT_EARLY_TRAFFIC_SECRET",
    "EARLY_EXPORTER_SECRET",
    "EXPORTER_SECRET",
    "RSA",
    "PMS_CLIENT_RANDOM",
    "RSA_SESSION_ID",
];

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    s.chunks_exact(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

impl KeyLog {
    pub fn parse(data: &[u8]) -> KeyLog {
        let mut log = KeyLog::default();
        for line in data.split(|&b| b == b'\n') {
            let line = line.trim_ascii();
            if line.is_empty() || line.first() == Some(&b'#') {
                continue;
            }
            let fields: Vec<&[u8]> = line.split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty()).collect();
            let [label, random, secret] = fields[..] else {
                log.bad += 1;
                continue;
            };
            if IGNORED.iter().any(|l| l.as_bytes() == label) {
                log.ignored += 1;
                continue;
            }
            let (Some(random), Some(secret)) = (unhex(random), unhex(secret)) else {
                log.bad += 1;
                continue;
            };
            let Ok(random) = <[u8; 32]>::try_from(random.as_slice()) else {
                log.bad += 1;
                continue;
            };
            let tls13_len = matches!(secret.len(), 32 | 48);
            let entry = log.by_random.entry(random).or_default();
            let slot = match label {
                b"CLIENT_RANDOM" if secret.len() == 48 => &mut entry.master,
                b"CLIENT_HANDSHAKE_TRAFFIC_SECRET" if tls13_len => &mut entry.client_handshake,
                b"SERVER_HANDSHAKE_TRAFFIC_SECRET" if tls13_len => &mut entry.server_handshake,
                b"CLIENT_TRAFFIC_SECRET_0" if tls13_len => &mut entry.client_traffic,
                b"SERVER_TRAFFIC_SECRET_0" if tls13_len => &mut entry.server_traffic,
                _ => {
                    log.bad += 1;
                    continue;
                }
            };
            *slot = Some(secret);
            log.entries += 1;
        }
        // A bad line may have created an empty entry before it was refused.
        log.by_random.retain(|_, s| *s != Secrets::default());
        log
    }

    pub fn get(&self, client_random: &[u8; 32]) -> Option<&Secrets> {
        self.by_random.get(client_random)
    }
}
