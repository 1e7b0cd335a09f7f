//! Known-answer tests (RFC 8448 for TLS 1.3, the published TLS 1.2 PRF vector) and the
//! decryptor over records built with the same crates: framing across segments, sequence
//! numbers, the TLS 1.3 key switch and KeyUpdate, and every drop reason.

use std::sync::Arc;

use super::cipher::Hash;
use super::keylog::KeyLog;
use super::stream::{Decryptor, Params};
use super::{tls12, tls13, Drop};

fn h(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

// RFC 8448 §3 (Simple 1-RTT Handshake), TLS_AES_128_GCM_SHA256.
const C_HS: &str = "b3 ed db 12 6e 06 7f 35 a7 80 b3 ab f4 5e 2d 8f 3b 1a 95 07 38 f5 2e 96 00 74 6a 0e 27 a5 5a 21";
const S_HS: &str = "b6 7b 7d 69 0c c1 6c 4e 75 e5 42 13 cb 2d 37 b4 e9 c9 12 bc de d9 10 5d 42 be fd 59 d3 91 ad 38";
const S_AP: &str = "a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43";
const C_FINISHED_RECORD: &str = "17 03 03 00 35 75 ec 4d c2 38 cc e6 0b 29 80 44 a7 1e 21 9c 56 cc 77 b0 51 7f e9
    b9 3c 7a 4b fc 44 d8 7f 38 f8 03 38 ac 98 fc 46 de b3 84 bd 1c ae ac ab 68 67 d7 26 c4 05 46";
const C_FINISHED: &str = "14 00 00 20 a8 ec 43 6d 67 76 34 ae 52 5a c1 fc eb e1 1a 03 9e c1 76 94 fa c6 e9
    85 27 b6 42 f2 ed d5 ce 61";
const S_APP_RECORD: &str = "17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00 5f c4 a4 69 32 fc 32 25 d0
    5f 82 aa 1b 36 e3 0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8 fc c4 9c 4b f2 e5 f0 a2 1c 00 47 c2 ab
    f3 32 54 0d d0 32 e1 67 c2 95 5d";

#[test]
fn hkdf_expand_label_rfc8448() {
    let key = |s: &str, label: &str, n| tls13::expand_label(Hash::Sha256, &h(s), label, b"", n).unwrap();
    assert_eq!(key(S_HS, "key", 16), h("3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc"));
    assert_eq!(key(S_HS, "iv", 12), h("5d 31 3e b2 67 12 76 ee 13 00 0b 30"));
    assert_eq!(key(C_HS, "key", 16), h("db fa a6 93 d1 76 2c 5b 66 6a f5 d9 50 25 8d 01"));
    assert_eq!(key(C_HS, "iv", 12), h("5b d3 c7 1b 83 6e 0b 76 bb 73 26 5f"));
    assert_eq!(key(S_AP, "key", 16), h("9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56"));
    assert_eq!(key(S_AP, "iv", 12), h("cf 78 2b 88 dd 83 54 9a ad f1 e9 84"));
}

#[test]
fn tls13_records_rfc8448() {
    let suite = tls13::suite(0x1301).unwrap();
    // The client's Finished: record 0 under the client handshake traffic secret.
    let rec = h(C_FINISHED_RECORD);
    let header: [u8; 5] = rec[..5].try_into().unwrap();
    let keys = tls13::Keys::new(suite, &h(C_HS)).unwrap();
    assert_eq!(keys.open(0, &header, &rec[5..]), Ok((22, h(C_FINISHED))));
    assert_eq!(keys.open(1, &header, &rec[5..]), Err(Drop::BadMac)); // wrong sequence number
    // The server's application data (50 bytes 00..31): record 1 under its application
    // secret (record 0 was the NewSessionTicket).
    let rec = h(S_APP_RECORD);
    let header: [u8; 5] = rec[..5].try_into().unwrap();
    let keys = tls13::Keys::new(suite, &h(S_AP)).unwrap();
    assert_eq!(keys.open(1, &header, &rec[5..]), Ok((23, (0u8..50).collect())));
    // A secret of the wrong length for the suite's hash is no key, not a panic.
    assert!(tls13::Keys::new(tls13::suite(0x1302).unwrap(), &h(S_AP)).is_none());
}

#[test]
fn tls12_prf_known_answer() {
    // The TLS 1.2 PRF (SHA-256) test vector published on the IETF TLS list.
    let out = tls12::prf(Hash::Sha256, &h("9b be 43 6b a9 40 f0 17 b1 76 52 84 9a 71 db 35"), b"test label",
        &h("a0 ba 9f 93 6c da 31 18 27 a6 f7 96 ff d5 19 8c"), 100);
    assert_eq!(out, h("e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a6b301791e90d35c9c9a46b4e14
        baf9af0fa022f7077def17abfd3797c0564bab4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff701
        87347b66"));
    // SHA-384 (the AES-256-GCM suites), checked against Python's hmac module.
    let master: Vec<u8> = (0u8..48).collect();
    assert_eq!(tls12::prf(Hash::Sha384, &master, b"key expansion", &[0u8; 64], 72), h("a1125e7ba3d40267cbac61183b8a
        8e6ae3278e7d2167f04cd34bed8db3499fa37e03c7992a3c54740c3675e7a53a445baa4c437ffbc43fdccc229e6355ed9af4ff
        a814120f9d6394"));
}

#[test]
fn keylog_lines() {
    let cr = "aa".repeat(32);
    let text = format!(
        "# a comment\r\n\nCLIENT_RANDOM {cr} {}\r\nCLIENT_HANDSHAKE_TRAFFIC_SECRET {cr} {}\n\
         SERVER_TRAFFIC_SECRET_0 {cr} {}\nCLIENT_EARLY_TRAFFIC_SECRET {cr} {}\nEXPORTER_SECRET {cr} {}\n\
         CLIENT_RANDOM {cr}\nCLIENT_RANDOM zz {}\nCLIENT_RANDOM {} {}\nCLIENT_RANDOM {cr} 0102\n\
         SERVER_HANDSHAKE_TRAFFIC_SECRET {cr} 0g{}\nWHATEVER {cr} 00\n",
        "11".repeat(48), "22".repeat(32), "33".repeat(48), "44".repeat(32), "55".repeat(32), "11".repeat(48),
        "bb".repeat(31), "11".repeat(48), "22".repeat(31)
    );
    let log = KeyLog::parse(text.as_bytes());
    assert_eq!((log.entries, log.ignored, log.bad), (3, 2, 6));
    let s = log.get(&[0xaa; 32]).unwrap();
    assert_eq!(s.master.as_deref(), Some(&[0x11; 48][..]));
    assert_eq!(s.client_handshake.as_deref(), Some(&[0x22; 32][..]));
    assert_eq!(s.server_traffic.as_deref(), Some(&[0x33; 48][..]));
    assert!(s.server_handshake.is_none() && s.client_traffic.is_none());
    assert_eq!(log.by_random.len(), 1);
    // The Debug form says which secrets there are, never their bytes.
    assert!(!format!("{s:?}").contains("17"));
    assert_eq!(KeyLog::parse(b"").entries, 0);
}

const CR: [u8; 32] = [7; 32];
const SR: [u8; 32] = [9; 32];

fn params(version: u16, cipher: u16) -> Params {
    Params { version, cipher, client_random: CR, server_random: SR, etm: false }
}

fn record(ctype: u8, body: &[u8]) -> Vec<u8> {
    let mut r = vec![ctype, 3, 3];
    r.extend_from_slice(&(body.len() as u16).to_be_bytes());
    r.extend_from_slice(body);
    r
}

/// A TLS 1.2 client flight: CCS, Finished (record 0), then application data records.
fn tls12_flight(keys: &tls12::Keys, data: &[&[u8]]) -> Vec<u8> {
    let mut out = record(20, &[1]);
    out.extend(record(22, &keys.seal(0, 22, 0x0303, &[20, 0, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [0; 8])));
    for (i, d) in data.iter().enumerate() {
        let seq = i as u64 + 1;
        out.extend(record(23, &keys.seal(seq, 23, 0x0303, d, seq.to_be_bytes())));
    }
    out
}

#[test]
fn tls12_connection_in_any_segmentation() {
    for cipher in [0xC02F_u16, 0xC030, 0xCCA8, 0xC013, 0xC014, 0xC027, 0xC028] {
        let master = [3u8; 48];
        let log = Arc::new(KeyLog::parse(format!("CLIENT_RANDOM {} {}\n", hex(&CR), hex(&master)).as_bytes()));
        let suite = tls12::suite(cipher).unwrap();
        let (ck, sk) = tls12::keys(suite, &master, &CR, &SR).unwrap();
        let client = tls12_flight(&ck, &[b"GET / HTTP/1.1\r\n\r\n", b"second"]);
        let server = tls12_flight(&sk, &[b"HTTP/1.1 200 OK\r\n\r\n"]);
        for step in [1, 7, 100, 10_000] {
            let mut dec = Decryptor::new(log.clone(), 0);
            let p = params(0x0303, cipher);
            for (i, chunk) in client.chunks(step).enumerate() {
                dec.feed(0, chunk, i as i64, Some(&p));
            }
            for chunk in server.chunks(step) {
                dec.feed(1, chunk, 50, Some(&p));
            }
            let plain: Vec<(u8, Vec<u8>)> = dec.plain.iter().map(|(d, b, _)| (*d, b.clone())).collect();
            assert_eq!(plain, vec![
                (0, b"GET / HTTP/1.1\r\n\r\n".to_vec()),
                (0, b"second".to_vec()),
                (1, b"HTTP/1.1 200 OK\r\n\r\n".to_vec()),
            ], "suite {cipher:#x} step {step}");
            assert_eq!(dec.decrypted, 5);
            assert_eq!(dec.drops, [0; 8]);
        }
    }
}

#[test]
fn tls12_drops_are_named() {
    let master = [3u8; 48];
    let suite = tls12::suite(0xC02F).unwrap();
    let (ck, _) = tls12::keys(suite, &master, &CR, &SR).unwrap();
    let flight = tls12_flight(&ck, &[b"one", b"two"]);
    let count = |log: &str, cipher: u16, version: u16, bytes: &[u8]| {
        let mut dec = Decryptor::new(Arc::new(KeyLog::parse(log.as_bytes())), 0);
        dec.feed(0, bytes, 0, Some(&params(version, cipher)));
        assert!(dec.plain.is_empty());
        dec.drops
    };
    let ok_log = format!("CLIENT_RANDOM {} {}\n", hex(&CR), hex(&master));
    let other_log = format!("CLIENT_RANDOM {} {}\n", hex(&SR), hex(&master));
    let wrong_log = format!("CLIENT_RANDOM {} {}\n", hex(&CR), hex(&[4u8; 48]));
    let nth = |d: Drop, n: u64| {
        let mut a = [0u64; 8];
        a[d.index()] = n;
        a
    };
    assert_eq!(count(&other_log, 0xC02F, 0x0303, &flight), nth(Drop::NoKey, 2));
    assert_eq!(count(&wrong_log, 0xC02F, 0x0303, &flight), nth(Drop::BadMac, 3)); // Finished too
    assert_eq!(count(&ok_log, 0x000A, 0x0303, &flight), nth(Drop::UnsupportedSuite, 2)); // 3DES
    assert_eq!(count(&ok_log, 0xC02F, 0x0301, &flight), nth(Drop::UnsupportedVersion, 3));
    // A damaged record: its tag fails, the next one still opens (sequence numbers go on).
    let mut damaged = flight.clone();
    let last = damaged.len() - 1;
    let second_app = last - (5 + 8 + 3 + 16);
    damaged[second_app - 1] ^= 1; // inside the first application record's tag
    let mut dec = Decryptor::new(Arc::new(KeyLog::parse(ok_log.as_bytes())), 0);
    dec.feed(0, &damaged, 0, Some(&params(0x0303, 0xC02F)));
    assert_eq!(dec.drops, nth(Drop::BadMac, 1));
    assert_eq!(dec.plain.len(), 1);
    assert_eq!(dec.plain[0].1, b"two");
    // A gap stops the direction, counted once; a second CCS is a renegotiation.
    let mut dec = Decryptor::new(Arc::new(KeyLog::parse(ok_log.as_bytes())), 0);
    dec.gap(0);
    dec.feed(0, &flight, 0, Some(&params(0x0303, 0xC02F)));
    assert_eq!(dec.drops, nth(Drop::Gap, 1));
    let mut dec = Decryptor::new(Arc::new(KeyLog::parse(ok_log.as_bytes())), 0);
    dec.feed(0, &[flight.clone(), record(20, &[1])].concat(), 0, Some(&params(0x0303, 0xC02F)));
    assert_eq!(dec.drops, nth(Drop::Renegotiation, 1));
    assert_eq!(dec.plain.len(), 2);
    // Application data with no handshake read.
    let mut dec = Decryptor::new(Arc::new(KeyLog::parse(ok_log.as_bytes())), 0);
    dec.feed(0, &flight, 0, None);
    assert_eq!(dec.drops, nth(Drop::NoHandshake, 2));
}

#[test]
fn tls12_cbc_encrypt_then_mac_and_mac_then_encrypt() {
    let master = [8u8; 48];
    let log = Arc::new(KeyLog::parse(format!("CLIENT_RANDOM {} {}\n", hex(&CR), hex(&master)).as_bytes()));
    for cipher in [0xC013_u16, 0xC028] {
        let suite = tls12::suite(cipher).unwrap();
        let (ck, _) = tls12::keys(suite, &master, &CR, &SR).unwrap();
        // every plaintext length around a block boundary
        let texts: Vec<Vec<u8>> = (0..40).map(|n| (0..n as u8).collect()).collect();
        for etm in [false, true] {
            let mut bytes = record(20, &[1]);
            bytes.extend(record(22, &ck.seal_etm(0, 22, 0x0303, &[20, 0, 0, 0], [1; 8], etm)));
            for (i, t) in texts.iter().enumerate() {
                bytes.extend(record(23, &ck.seal_etm(i as u64 + 1, 23, 0x0303, t, [i as u8; 8], etm)));
            }
            let p = Params { etm, ..params(0x0303, cipher) };
            let mut dec = Decryptor::new(log.clone(), 0);
            dec.feed(0, &bytes, 0, Some(&p));
            let got: Vec<Vec<u8>> = dec.plain.iter().map(|(_, b, _)| b.clone()).collect();
            assert_eq!(got, texts[1..].to_vec(), "suite {cipher:#x} etm {etm}"); // (empty records give no chunk)
            assert_eq!(dec.drops, [0; 8]);
            // the other MAC order does not open them: bad_mac (or malformed), never a panic
            let mut dec = Decryptor::new(log.clone(), 0);
            dec.feed(0, &bytes, 0, Some(&Params { etm: !etm, ..params(0x0303, cipher) }));
            assert!(dec.plain.is_empty());
            assert_eq!(dec.drops[Drop::BadMac.index()] + dec.drops[Drop::Malformed.index()], 41); // Finished too
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn tls13_connection_switches_keys_and_follows_key_updates() {
    for cipher in [0x1301_u16, 0x1302, 0x1303] {
        let suite = tls13::suite(cipher).unwrap();
        let n = suite.hash.size();
        let (chs, shs, cap, sap) = (vec![1u8; n], vec![2u8; n], vec![3u8; n], vec![4u8; n]);
        let log = format!(
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET {r} {}\nSERVER_HANDSHAKE_TRAFFIC_SECRET {r} {}\n\
             CLIENT_TRAFFIC_SECRET_0 {r} {}\nSERVER_TRAFFIC_SECRET_0 {r} {}\n",
            hex(&chs), hex(&shs), hex(&cap), hex(&sap), r = hex(&CR));
        let log = Arc::new(KeyLog::parse(log.as_bytes()));
        let k = |s: &[u8]| tls13::Keys::new(suite, s).unwrap();
        // Server: EncryptedExtensions..Finished in two records, a NewSessionTicket and
        // data under the application key, a KeyUpdate, data under the next generation.
        let sap1 = tls13::next_secret(suite.hash, &sap).unwrap();
        let mut server = record(20, &[1]); // the middlebox-compatibility CCS
        server.extend(k(&shs).seal(0, 22, b"\x08\x00\x00\x02\x00\x00"));
        server.extend(k(&shs).seal(1, 22, b"\x14\x00\x00\x04abcd"));
        server.extend(k(&sap).seal(0, 22, b"\x04\x00\x00\x01\x00"));
        server.extend(k(&sap).seal(1, 23, b"HTTP/1.1 200 OK\r\n"));
        server.extend(k(&sap).seal(2, 22, b"\x18\x00\x00\x01\x00"));
        server.extend(k(&sap1).seal(0, 23, b"more"));
        let mut client = record(20, &[1]);
        client.extend(k(&chs).seal(0, 22, b"\x14\x00\x00\x04abcd"));
        client.extend(k(&cap).seal(0, 23, b"GET / HTTP/1.1\r\n"));
        for step in [3, 10_000] {
            let mut dec = Decryptor::new(log.clone(), 1);
            let p = params(0x0304, cipher);
            for c in server.chunks(step) {
                dec.feed(0, c, 1, Some(&p));
            }
            for c in client.chunks(step) {
                dec.feed(1, c, 2, Some(&p));
            }
            let plain: Vec<(u8, Vec<u8>)> = dec.plain.iter().map(|(d, b, _)| (*d, b.clone())).collect();
            assert_eq!(plain, vec![
                (0, b"HTTP/1.1 200 OK\r\n".to_vec()),
                (0, b"more".to_vec()),
                (1, b"GET / HTTP/1.1\r\n".to_vec()),
            ], "suite {cipher:#x} step {step}");
            assert_eq!((dec.decrypted, dec.drops), (8, [0; 8]));
            assert_eq!(dec.dirs[0].generation, 1);
        }
        // Only the application secrets logged: the handshake records are dropped as
        // no_key... unless the application key opens them (it does not).
        let app_only = format!("CLIENT_TRAFFIC_SECRET_0 {r} {}\n", hex(&cap), r = hex(&CR));
        let mut dec = Decryptor::new(Arc::new(KeyLog::parse(app_only.as_bytes())), 1);
        dec.feed(1, &client, 0, Some(&params(0x0304, cipher)));
        assert_eq!(dec.plain.len(), 1);
        assert_eq!(dec.drops[Drop::BadMac.index()], 1);
    }
}

#[test]
fn garbage_never_panics() {
    let log = Arc::new(KeyLog::parse(format!("CLIENT_RANDOM {} {}\n", hex(&CR), "00".repeat(48)).as_bytes()));
    let mut x: u32 = 12345;
    for round in 0..300 {
        let mut bytes = Vec::new();
        for _ in 0..(round % 40) * 7 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            bytes.push((x >> 16) as u8);
        }
        // Mostly record-shaped garbage: a valid header, random body.
        let mut rec = record([20u8, 21, 22, 23, 24][round % 5], &bytes);
        rec.extend_from_slice(&bytes);
        for version in [0x0303, 0x0304, 0x0302] {
            for cipher in [0xC02F, 0xCCA8, 0x1301, 0x1303, 0x0035] {
                let mut dec = Decryptor::new(log.clone(), 0);
                dec.feed(0, &rec, 0, Some(&params(version, cipher)));
                dec.feed(1, &bytes, 0, Some(&params(version, cipher)));
            }
        }
    }
}

// --- through the handshake parser, and its checkpoint -----------------------------------

use crate::l7::tls::{state, Connection};

fn handshake_record(version_minor: u8, mtype: u8, body: &[u8]) -> Vec<u8> {
    let mut msg = vec![mtype, 0, (body.len() >> 8) as u8, body.len() as u8];
    msg.extend_from_slice(body);
    let mut r = vec![22, 3, version_minor];
    r.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    r.extend(msg);
    r
}

/// A TLS 1.2 ECDHE-RSA-AES128-GCM connection: (direction, bytes) in order.
fn tls12_connection(master: &[u8; 48]) -> Vec<(u8, Vec<u8>)> {
    let mut ch = vec![3, 3];
    ch.extend_from_slice(&CR);
    ch.extend_from_slice(&[0, 0, 2, 0xC0, 0x2F, 1, 0]);
    let mut sh = vec![3, 3];
    sh.extend_from_slice(&SR);
    sh.extend_from_slice(&[0, 0xC0, 0x2F, 0]);
    let (ck, sk) = tls12::keys(tls12::suite(0xC02F).unwrap(), master, &CR, &SR).unwrap();
    vec![
        (0, handshake_record(1, 1, &ch)),
        (1, handshake_record(3, 2, &sh)),
        (0, tls12_flight(&ck, &[b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"])),
        (1, tls12_flight(&sk, &[b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])),
    ]
}

fn plaintext_of(c: &mut Connection) -> Vec<(u8, Vec<u8>)> {
    c.take_plain().into_iter().map(|(d, b, _)| (d, b)).collect()
}

#[test]
fn connection_decrypts_and_its_snapshots_hold_no_key() {
    let master = [0x5a; 48];
    let log = Arc::new(KeyLog::parse(format!("CLIENT_RANDOM {} {}\n", hex(&CR), hex(&master)).as_bytes()));
    let flow = tls12_connection(&master);
    let mut whole = Connection::new(0, 1_000_000).with_keylog(Some(log.clone()));
    let mut expected = Vec::new();
    for (d, bytes) in &flow {
        whole.data(*d, bytes, 1);
        expected.extend(plaintext_of(&mut whole));
    }
    assert_eq!(expected.len(), 3);
    assert_eq!(expected[2], (1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()));
    whole.close();
    let (_, counts) = whole.take();
    assert!(counts.contains(&("tls_decrypted_records", 5)), "{counts:?}");
    assert!(!counts.iter().any(|c| c.0.starts_with("tls_decrypt_drop")));

    // In 5-byte pieces, snapshot and restore after every one: the same plaintext, and no
    // snapshot holds the master secret or a key of the key block.
    let block = tls12::prf(Hash::Sha256, &master, b"key expansion", &[SR, CR].concat(), 40);
    let mut c = Connection::new(0, 1_000_000).with_keylog(Some(log.clone()));
    let mut got = Vec::new();
    for (d, bytes) in &flow {
        for piece in bytes.chunks(5) {
            c.data(*d, piece, 1);
            got.extend(plaintext_of(&mut c));
            let _ = c.take();
            let snap = state::snapshot(&c);
            for secret in [&master[..16], &block[..16], &block[16..32], &block[32..36], &block[36..40]] {
                assert!(!snap.windows(secret.len()).any(|w| w == secret), "key material in a snapshot");
            }
            let restored = state::restore(&snap, Some(log.clone())).unwrap();
            assert_eq!(restored, c);
            c = restored;
        }
    }
    assert_eq!(got, expected);
    // Restored without a key log: no decryption, its records count as no_key.
    let mut c = Connection::new(0, 1_000_000).with_keylog(Some(log));
    c.data(0, &flow[0].1, 1);
    c.data(1, &flow[1].1, 1);
    let mut c = state::restore(&state::snapshot(&c), None).unwrap();
    assert!(c.decrypt.is_none());
    c.data(0, &flow[2].1, 1);
    c.close();
    let (_, counts) = c.take();
    assert!(counts.contains(&("tls_decrypt_drop.no_key", 2)), "{counts:?}");
}

/// A TLS connection's state as version 1 wrote it (the build before decryption): a TLS 1.2
/// handshake of tests/test_tls_decrypt.py's capture, after its ClientHello and ServerHello.
const V1_STATE: &str = "5753544c0001339b9d8c000087930300000000000000000000000093000000000000000100000000000000\
    000000000000000010f5692ad56106000000000000000000000000000000000000000000000000000000000100000000000000000000\
    000000000000000000fd04000000000000010000000000000000000000000000007ff9692ad561060000000000000000000000000000\
    000000000000000000000000000004000000000000000000000004000110f5692ad56106000101030300000000000000000001000000\
    000000000800000000000000687474702f312e310000000000000000000103032000000000000000d4806be8fd48521979f1577846f1\
    18858602d5563a83d5af062656c1f40bf2372fc000010800000000000000687474702f312e310000000100000000000000000000000002\
    0000000000000000000000";

#[test]
fn a_version_1_state_still_restores() {
    let v1 = h(V1_STATE);
    let log = Arc::new(KeyLog::parse(b""));
    for keylog in [None, Some(log)] {
        let mut c = state::restore(&v1, keylog).unwrap();
        assert_eq!(c.phase, crate::l7::tls::Phase::ServerHello);
        assert_eq!(c.server_hello.as_ref().map(|s| (s.version, s.cipher, s.random)), Some((0x0303, 0xC02F, [0; 32])));
        assert!(c.decrypt.is_none()); // no decryptor state in version 1: not decrypted
        c.data(1, &record(20, &[1]), 5);
        c.data(1, &record(23, &[0; 40]), 6);
        c.close();
        let (hs, counts) = c.take();
        assert!(hs.is_some());
        assert!(counts.contains(&("tls_decrypt_drop.no_key", 1)), "{counts:?}");
    }
    // and a version this build does not know is refused, naming it
    let mut v9 = v1.clone();
    v9[5] = 9;
    assert!(state::restore(&v9, None).unwrap_err().contains("version 9"));
}

#[test]
fn garbage_through_the_handshake_parser_never_panics() {
    // Real hellos, then damaged copies of the real encrypted flights (every byte flipped in
    // turn, truncations), through Connection with a key log: counted, never a panic.
    let master = [0x5a; 48];
    let log = Arc::new(KeyLog::parse(format!("CLIENT_RANDOM {} {}\n", hex(&CR), hex(&master)).as_bytes()));
    let flow = tls12_connection(&master);
    let total: usize = flow.iter().map(|(_, b)| b.len()).sum();
    for flip in (0..total).step_by(3) {
        let mut c = Connection::new(0, 1_000_000).with_keylog(Some(log.clone()));
        let mut at = 0;
        for (d, bytes) in &flow {
            let mut b = bytes.clone();
            if (at..at + b.len()).contains(&flip) {
                b[flip - at] ^= 0x41;
            }
            at += bytes.len();
            c.data(*d, &b[..b.len() - (flip % 3)], 1);
            let _ = c.take_plain();
        }
        c.gap(1, 10);
        c.data(1, &[23, 3, 3, 0, 40], 2);
        c.close();
        let _ = c.take();
    }
}
