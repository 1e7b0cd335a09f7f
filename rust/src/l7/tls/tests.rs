//! Unit tests of the TLS analyser: handshakes built byte by byte, split at every byte,
//! and truncated, random and mutated input (never a panic, at most one summary).

use super::hello::{parse_client_hello, parse_server_hello, HRR_RANDOM};
use super::record::{looks_like_client_hello, Reading};
use super::session::{AlertLevel, Connection, Error, Handshake, Phase};
use super::state::{restore, snapshot};

fn rec(ctype: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ctype, 3, 3];
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn hs(mtype: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![mtype];
    v.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    v.extend_from_slice(body);
    v
}

fn ext(etype: u16, data: &[u8]) -> Vec<u8> {
    let mut v = etype.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn vec16(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

fn client_hello(sni: &str, alpn: &[&str], versions: &[u16], session_id: &[u8]) -> Vec<u8> {
    let mut exts = Vec::new();
    let mut name = vec![0u8];
    name.extend_from_slice(&vec16(sni.as_bytes()));
    exts.extend(ext(0, &vec16(&name)));
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p.as_bytes());
        }
        exts.extend(ext(16, &vec16(&list)));
    }
    if !versions.is_empty() {
        let mut list = vec![(versions.len() * 2) as u8];
        for v in versions {
            list.extend_from_slice(&v.to_be_bytes());
        }
        exts.extend(ext(43, &list));
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(session_id.len() as u8);
    body.extend_from_slice(session_id);
    body.extend_from_slice(&vec16(&[0x13, 0x01, 0xc0, 0x2f]));
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&vec16(&exts));
    hs(1, &body)
}

fn server_hello(cipher: u16, version: Option<u16>, session_id: &[u8], random: [u8; 32], alpn: Option<&str>) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(v) = version {
        exts.extend(ext(43, &v.to_be_bytes()));
    }
    if let Some(p) = alpn {
        let mut list = vec![p.len() as u8];
        list.extend_from_slice(p.as_bytes());
        exts.extend(ext(16, &vec16(&list)));
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&random);
    body.push(session_id.len() as u8);
    body.extend_from_slice(session_id);
    body.extend_from_slice(&cipher.to_be_bytes());
    body.push(0);
    body.extend_from_slice(&vec16(&exts));
    hs(2, &body)
}

/// (direction, bytes, ts) of a full TLS 1.2 handshake, then application data.
fn tls12() -> Vec<(u8, Vec<u8>, i64)> {
    let mut flight = server_hello(0xc02f, None, &[], [1; 32], Some("h2"));
    flight.extend(hs(11, &[0; 40]));
    flight.extend(hs(14, &[]));
    vec![
        (0, rec(22, &client_hello("www.example.com", &["h2", "http/1.1"], &[], &[])), 1000),
        (1, rec(22, &flight), 2000),
        (0, [rec(22, &hs(16, &[0; 33])), rec(20, &[1]), rec(22, &[0; 40])].concat(), 3000),
        (1, [rec(20, &[1]), rec(22, &[0; 40])].concat(), 4000),
        (0, rec(23, &[0; 100]), 5000),
    ]
}

fn tls13() -> Vec<(u8, Vec<u8>, i64)> {
    vec![
        (0, rec(22, &client_hello("a.example", &["h2"], &[0x0304, 0x0303], &[9; 32])), 1000),
        (1, [rec(22, &server_hello(0x1301, Some(0x0304), &[9; 32], [2; 32], None)), rec(20, &[1]),
             rec(23, &[0; 200])].concat(), 2000),
        (0, [rec(20, &[1]), rec(23, &[0; 53])].concat(), 3000),
        (1, rec(23, &[0; 300]), 4000),
    ]
}

fn run(events: &[(u8, Vec<u8>, i64)]) -> (Option<Handshake>, Vec<(&'static str, u64)>, Connection) {
    let mut c = Connection::new(0, 60_000_000);
    let mut out = None;
    let mut counts = Vec::new();
    for (d, data, ts) in events {
        c.data(*d, data, *ts);
        let (h, n) = c.take();
        assert!(out.is_none() || h.is_none(), "one summary per connection");
        out = out.or(h);
        counts.extend(n);
    }
    c.close();
    let (h, n) = c.take();
    assert!(out.is_none() || h.is_none());
    counts.extend(n);
    (out.or(h), counts, c)
}

fn counted(counts: &[(&str, u64)], name: &str) -> u64 {
    counts.iter().filter(|c| c.0 == name).map(|c| c.1).sum()
}

#[test]
fn tls12_full_handshake() {
    let (h, counts, _) = run(&tls12());
    let h = h.unwrap();
    assert_eq!(h.server_name.as_deref(), Some("www.example.com"));
    assert_eq!((h.version, h.cipher, h.alpn.as_deref()), (Some(0x0303), Some(0xc02f), Some("h2")));
    assert_eq!(h.alpn_offered, ["h2", "http/1.1"]);
    assert_eq!(h.handshake_ms, Some(3.0)); // both Finished: the server's at 4000
    assert!(h.established && !h.resumed && h.error.is_none());
    assert_eq!(counted(&counts, "tls_handshakes"), 1);
    assert_eq!(counted(&counts, "tls_established"), 1);
}

#[test]
fn tls13_ends_at_the_clients_finished() {
    let (h, _, _) = run(&tls13());
    let h = h.unwrap();
    assert_eq!(h.version, Some(0x0304));
    assert_eq!(h.handshake_ms, Some(2.0));
    assert!(!h.resumed, "the legacy session id echo is not a 1.3 resumption");
}

#[test]
fn every_split_gives_the_same_summary() {
    for events in [tls12(), tls13()] {
        let (want, _, _) = run(&events);
        let stream: Vec<(u8, Vec<u8>, i64)> = events
            .iter()
            .flat_map(|(d, data, ts)| data.iter().map(move |b| (*d, vec![*b], *ts)))
            .collect();
        let (got, _, _) = run(&stream);
        assert_eq!(got, want);
        for (i, (d, data, ts)) in events.iter().enumerate() {
            for cut in 1..data.len() {
                let mut ev = events.clone();
                ev[i] = (*d, data[..cut].to_vec(), *ts);
                ev.insert(i + 1, (*d, data[cut..].to_vec(), *ts));
                assert_eq!(run(&ev).0, want, "cut at {cut} of event {i}");
            }
        }
    }
}

#[test]
fn hello_retry_request_and_fatal_alert() {
    let hrr = server_hello(0x1302, Some(0x0304), &[], HRR_RANDOM, None);
    let ev = vec![
        (0, rec(22, &client_hello("x", &[], &[0x0304], &[])), 10),
        (1, rec(22, &hrr), 20),
        (0, rec(22, &client_hello("", &["h2"], &[0x0304], &[])), 30),
        (1, rec(21, &[2, 40]), 40),
    ];
    let (h, counts, _) = run(&ev);
    let h = h.unwrap();
    assert!(h.hello_retry_request && !h.established);
    assert_eq!(h.server_name.as_deref(), Some("x"));
    assert_eq!(h.alpn_offered, ["h2"]);
    assert_eq!((h.alert, h.alert_level, h.alert_from), (Some(40), Some(AlertLevel::Fatal), Some("server")));
    assert_eq!(h.handshake_ms, Some(0.03));
    assert_eq!(counted(&counts, "tls_hello_retry_requests"), 1);
}

#[test]
fn gaps_and_garbage() {
    let mut c = Connection::new(0, 1);
    c.data(0, b"\x16\x03\x01\x00\x10\x01\x00\x00", 1);
    c.gap(0, 5);
    c.gap(0, 5000);
    assert_eq!(c.sides[0].state, Reading::Resync);
    c.data(0, b"garbage", 2);
    c.data(0, &rec(23, b"abc"), 3);
    assert_eq!(c.sides[0].state, Reading::Parse);
    c.data(1, b"\x00\x01\x02\x03\x04\x05", 4);
    assert_eq!(c.sides[1].state, Reading::Dead);
    c.close();
    // The first application-data record (after the resync) ends the handshake.
    let (h, counts) = c.take();
    let h = h.unwrap();
    assert_eq!((h.error, h.established, h.handshake_ms), (Some(Error::Gap), true, Some(0.002)));
    assert_eq!(counted(&counts, "tls_resync"), 1);
    assert_eq!(counted(&counts, "tls_gap"), 2);
    assert_eq!(counted(&counts, "tls_parse_error.bad_record"), 1);
}

#[test]
fn looks_like() {
    let ch = rec(22, &client_hello("a", &[], &[], &[]));
    assert_eq!(looks_like_client_hello(&ch), Some(true));
    for i in 0..11 {
        assert_eq!(looks_like_client_hello(&ch[..i]), None, "{i}");
    }
    assert_eq!(looks_like_client_hello(b"GET / HTTP/1.1"), Some(false));
    assert_eq!(looks_like_client_hello(b"\x80\x2e\x01\x03\x01"), Some(true));
    assert_eq!(looks_like_client_hello(b"\x80\x2e\x01"), None);
}

/// A tiny deterministic generator (no dependency).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn truncated_random_and_mutated_input_never_panics() {
    let mut rng = Rng(42);
    let ch = client_hello("host", &["h2"], &[0x0304], &[1; 8]);
    for n in 0..ch.len() {
        let _ = parse_client_hello(&ch[4..n.max(4)]);
        let _ = parse_server_hello(&ch[4..n.max(4)]);
    }
    for events in [tls12(), tls13()] {
        for _ in 0..400 {
            let mut c = Connection::new((rng.next() & 1) as u8, 1000);
            let mut ev = events.clone();
            for _ in 0..1 + rng.next() % 4 {
                let i = rng.next() as usize % ev.len();
                let data = &mut ev[i].1;
                if data.is_empty() {
                    continue;
                }
                let j = rng.next() as usize % data.len();
                match rng.next() % 3 {
                    0 => data[j] ^= (rng.next() as u8) | 1,
                    1 => data.truncate(j),
                    _ => data.insert(j, rng.next() as u8),
                }
            }
            let mut summaries = 0;
            for (d, data, ts) in &ev {
                if rng.next().is_multiple_of(5) {
                    c.gap(*d, 1 + rng.next() % 300);
                }
                c.data(*d, data, *ts);
                c.tick(*ts);
                summaries += usize::from(c.take().0.is_some());
            }
            c.close();
            summaries += usize::from(c.take().0.is_some());
            assert!(summaries <= 1);
        }
    }
    for _ in 0..2000 {
        let mut c = Connection::new(0, 1000);
        for k in 0..8 {
            let len = rng.next() as usize % 64;
            let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if k == 0 && rng.next().is_multiple_of(2) {
                data.splice(0..0, [22, 3, 3, 0, 40, 1, 0, 0, 36]);
            }
            c.data((k & 1) as u8, &data, k);
        }
        c.close();
    }
}

#[test]
fn snapshot_round_trip_continues_exactly() {
    let events = tls12();
    for cut in 0..events.len() {
        let mut a = Connection::new(0, 60_000_000);
        for (d, data, ts) in &events[..cut] {
            // split the last event in two so that the snapshot holds a partial record
            let (x, y) = data.split_at(data.len() / 2);
            a.data(*d, x, *ts);
            a.data(*d, y, *ts);
        }
        let half = events.get(cut).map(|(d, data, ts)| (*d, data[..data.len() / 2].to_vec(), *ts));
        if let Some((d, x, ts)) = &half {
            a.data(*d, x, *ts);
        }
        a.take();
        let mut b = restore(&snapshot(&a), None).unwrap();
        assert_eq!(a, b);
        for c in [&mut a, &mut b] {
            if let Some((d, _, ts)) = &half {
                let data = &events[cut].1;
                c.data(*d, &data[data.len() / 2..], *ts);
            }
            for (d, data, ts) in events.iter().skip(cut + 1) {
                c.data(*d, data, *ts);
            }
            c.close();
        }
        assert_eq!(a.take(), b.take());
        assert_eq!(snapshot(&a), snapshot(&b));
        assert_eq!(a.phase, Phase::Done);
    }
}

#[test]
fn damaged_state_is_an_error_never_a_panic() {
    let mut a = Connection::new(1, 5);
    for (d, data, ts) in &tls13()[..2] {
        a.data(1 - d, &data[..data.len() - 3], *ts);
    }
    a.take();
    let good = snapshot(&a);
    assert!(restore(&good, None).is_ok());
    for n in 0..good.len() {
        assert!(restore(&good[..n], None).is_err());
    }
    let mut rng = Rng(7);
    for _ in 0..2000 {
        let mut bad = good.clone();
        let i = rng.next() as usize % bad.len();
        bad[i] ^= (rng.next() as u8) | 1;
        let _ = restore(&bad, None);
        let body = &bad[10..];
        let mut fixed = bad[..6].to_vec();
        fixed.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
        fixed.extend_from_slice(body);
        if let Ok(mut c) = restore(&fixed, None) {
            for (d, data, ts) in tls13() {
                c.data(d, &data, ts);
            }
            c.close();
        }
    }
}

// -- TLS 1.3 drafts (issue 18 part 6): the versions tshark reports

/// A ServerHello of a TLS 1.3 draft before 22: the version field is the negotiated
/// version, no session id echo, no compression method.
fn server_hello_old_draft(version: u16, cipher: u16) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    body.extend_from_slice(&[5; 32]);
    body.extend_from_slice(&cipher.to_be_bytes());
    body.extend_from_slice(&vec16(&ext(51, &[0; 8]))); // key_share (not read)
    hs(2, &body)
}

/// ClientHello offering `versions` with early data, 0-RTT application data, the server's
/// flight (`sh`, a compatibility CCS unless `ccs` is false, encrypted records), the
/// client's Finished.
fn early_data(versions: &[u16], sh: Vec<u8>, ccs: bool) -> Vec<(u8, Vec<u8>, i64)> {
    let mut ch = client_hello("draft.example", &["h2"], versions, &[]);
    // early_data (42) and a pre_shared_key (41, last) appended to the extensions: lengths fixed below
    let extra = [ext(42, &[]), ext(41, &[0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])].concat();
    let body_len = ch.len() - 4 + extra.len();
    ch[1..4].copy_from_slice(&(body_len as u32).to_be_bytes()[1..]);
    let ext_at = 4 + 2 + 32 + 1 + 2 + 4 + 2; // version, random, sid(0), suites(4), compression
    let ext_len = u16::from_be_bytes([ch[ext_at], ch[ext_at + 1]]) as usize + extra.len();
    ch[ext_at..ext_at + 2].copy_from_slice(&(ext_len as u16).to_be_bytes());
    ch.extend(extra);
    let mut flight = rec(22, &sh);
    if ccs {
        flight.extend(rec(20, &[1]));
    }
    flight.extend(rec(23, &[0; 200]));
    vec![
        (0, [rec(22, &ch), rec(23, &[0; 80])].concat(), 1000), // 0-RTT data
        (1, flight, 2000),
        (0, rec(23, &[0; 53]), 3000),
        (1, rec(23, &[0; 300]), 4000),
    ]
}

#[test]
fn draft_versions_from_supported_versions_and_old_server_hellos() {
    // draft 22 and later (and Facebook's): the selected version in supported_versions
    for v in [0x7f16u16, 0x7f17, 0x7f1c, 0xfb17, 0xfb1a] {
        let sh = server_hello(0x1301, Some(v), &[], [3; 32], None);
        let (h, _, _) = run(&early_data(&[0x0304, v, 0x0303], sh, true));
        let h = h.unwrap();
        assert_eq!((h.version, h.cipher), (Some(v), Some(0x1301)), "{v:#x}");
        assert!(h.established && h.error.is_none(), "{v:#x}");
        assert_eq!(h.handshake_ms, Some(2.0), "{v:#x}: ends at the client's Finished, not its 0-RTT data");
    }
    // before draft 22: the ServerHello's own version, its shorter layout, no CCS
    for v in [0x7f0eu16, 0x7f12, 0x7f15] {
        let (h, counts, _) = run(&early_data(&[v], server_hello_old_draft(v, 0x1302), false));
        let h = h.unwrap();
        assert_eq!((h.version, h.cipher), (Some(v), Some(0x1302)), "{v:#x}");
        assert!(h.established && h.error.is_none(), "{v:#x}: {counts:?}");
        assert_eq!(h.handshake_ms, Some(2.0));
    }
}

#[test]
fn draft_numbers_are_wiresharks() {
    use super::record::{is_tls13, tls13_draft};
    assert_eq!(tls13_draft(0x7f17), Some(23));
    assert_eq!(tls13_draft(0x7f0e), Some(14));
    assert_eq!(tls13_draft(0xfb17), Some(23));
    assert_eq!(tls13_draft(0xfb1a), Some(26));
    assert_eq!(tls13_draft(0x0304), None);
    assert_eq!(tls13_draft(0xfb18), None);
    assert!(is_tls13(0xfb1a) && is_tls13(0x7f12) && is_tls13(0x0304) && !is_tls13(0x0303));
    // an old-draft ServerHello parses; the same bytes under a legacy version do not say so
    let sh = parse_server_hello(&server_hello_old_draft(0x7f12, 0x1301)[4..]).unwrap();
    assert_eq!((sh.version, sh.cipher, sh.session_id.len()), (0x7f12, 0x1301, 0));
}

#[test]
fn every_split_of_a_draft_handshake_gives_the_same_summary() {
    let sh = server_hello(0x1301, Some(0xfb17), &[], [3; 32], None);
    for events in [early_data(&[0xfb17], sh, true), early_data(&[0x7f12], server_hello_old_draft(0x7f12, 0x1301), false)] {
        let (want, _, _) = run(&events);
        assert!(want.as_ref().is_some_and(|h| h.established));
        for (i, (d, data, ts)) in events.iter().enumerate() {
            for cut in 1..data.len() {
                let mut ev = events.clone();
                ev[i] = (*d, data[..cut].to_vec(), *ts);
                ev.insert(i + 1, (*d, data[cut..].to_vec(), *ts));
                assert_eq!(run(&ev).0, want, "cut at {cut} of event {i}");
            }
        }
    }
}
