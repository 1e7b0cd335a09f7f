//! Unit tests of the DNS core: parser texts and named errors (pointer loops, truncated,
//! random and mutated messages), the matcher's transactions, the TCP framing, the state.

use super::matcher::{Matcher, Transport};
use super::message::{parse, read_name, Reason, MAX_NAME_WIRE};
use super::state;
use super::tcp::TcpDns;

fn header(id: u16, flags: u16, qd: u16, an: u16) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [id, flags, qd, an, 0, 0] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v
}

fn wire_name(name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    if name != "." {
        for l in name.split('.') {
            v.push(l.len() as u8);
            v.extend_from_slice(l.as_bytes());
        }
    }
    v.push(0);
    v
}

fn question(name: &str, qtype: u16) -> Vec<u8> {
    let mut v = wire_name(name);
    v.extend_from_slice(&qtype.to_be_bytes());
    v.extend_from_slice(&1u16.to_be_bytes());
    v
}

fn rr(name: &[u8], rrtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
    let mut v = name.to_vec();
    v.extend_from_slice(&rrtype.to_be_bytes());
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(&ttl.to_be_bytes());
    v.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    v.extend_from_slice(rdata);
    v
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut v = header(id, 0x0100, 1, 0);
    v.extend(question(name, 1));
    v
}

fn response(id: u16, name: &str, addrs: &[[u8; 4]]) -> Vec<u8> {
    let mut v = header(id, 0x8180, 1, addrs.len() as u16);
    v.extend(question(name, 1));
    for a in addrs {
        v.extend(rr(&[0xc0, 0x0c], 1, 300, a));
    }
    v
}

fn reason(data: &[u8]) -> Reason {
    match parse(data) {
        Err(e) => e.reason,
        Ok(m) => panic!("parsed: {m:?}"),
    }
}

#[test]
fn query_and_response() {
    let m = parse(&query(0x1234, "www.Example.com")).unwrap();
    assert_eq!((m.id, m.flags), (0x1234, 0x0100));
    assert_eq!(m.questions, vec![("www.Example.com".to_string(), 1)]);
    let r = parse(&response(7, "a.example", &[[192, 0, 2, 1], [192, 0, 2, 2]])).unwrap();
    let got: Vec<_> = r.answers.iter().map(|a| (a.name.as_str(), a.rrtype, a.ttl, a.data.as_str())).collect();
    assert_eq!(got, vec![("a.example", 1, 300, "192.0.2.1"), ("a.example", 1, 300, "192.0.2.2")]);
}

#[test]
fn pointer_loops_and_bad_names() {
    for (wire, want) in [
        (&b"\xc0\x0c"[..], Reason::BadPointer),
        (b"\x01a\xc0\x0c", Reason::BadPointer),
        (b"\xc0\x0e\xc0\x0c", Reason::BadPointer),
        (b"\x01a\xc0\x20", Reason::BadPointer),
        (b"\x80\0", Reason::BadLabelType),
        (b"\x03ab", Reason::Truncated),
        (b"\x01a", Reason::Truncated),
        (b"\xc0", Reason::Truncated),
    ] {
        let mut data = header(1, 0x0100, 1, 0);
        data.extend_from_slice(wire);
        if want != Reason::Truncated {
            data.extend_from_slice(b"\0\x01\0\x01");
        }
        let e = parse(&data).unwrap_err();
        assert_eq!((e.reason, e.header), (want, Some((1, 0x0100))), "{wire:?}");
    }
    // name@12 = "a" + ptr->20; name@20 = "b" + ptr->12
    let mut data = header(1, 0x0100, 1, 0);
    data.extend_from_slice(b"\x01a\xc0\x14\0\x01\0\x01\x01b\xc0\x0c");
    assert_eq!(reason(&data), Reason::BadPointer);
}

#[test]
fn name_length_limit_and_escapes() {
    let ok = [&"a".repeat(63)[..], &"a".repeat(63), &"a".repeat(63), &"b".repeat(61)].join(".");
    assert_eq!(wire_name(&ok).len(), MAX_NAME_WIRE);
    assert_eq!(parse(&query(1, &ok)).unwrap().questions[0].0, ok);
    assert_eq!(reason(&query(1, &format!("{ok}c"))), Reason::NameTooLong);
    let (text, end) = read_name(b"\x03a.b\x04c d\xff\0", 0).unwrap();
    assert_eq!((text.as_str(), end), ("a\\.b.c\\032d\\255", 10));
    assert_eq!(read_name(b"\0", 0).unwrap(), (".".to_string(), 1));
}

#[test]
fn every_truncation_is_named() {
    let full = response(9, "a.example", &[[192, 0, 2, 1], [192, 0, 2, 2]]);
    assert!(parse(&full).is_ok());
    for cut in 0..full.len() {
        let e = parse(&full[..cut]).unwrap_err();
        assert_eq!(e.reason, Reason::Truncated);
        assert_eq!(e.header, if cut < 12 { None } else { Some((9, 0x8180)) });
    }
}

#[test]
fn rdata_texts() {
    let mut soa = wire_name("ns.example");
    soa.extend(wire_name("host.example"));
    for v in [2024u32, 900, 600, 86400, 3600] {
        soa.extend_from_slice(&v.to_be_bytes());
    }
    let mut mx = vec![0, 10];
    mx.extend(wire_name("mx.example"));
    let mut srv = vec![0, 0, 0, 100, 1, 0x85];
    srv.extend(wire_name("dc.example"));
    let mut v6 = [0u8; 16];
    v6[..4].copy_from_slice(&[0x20, 1, 0x0d, 0xb8]);
    v6[15] = 1;
    let answers: Vec<(u16, Vec<u8>)> = vec![
        (28, v6.to_vec()), (15, mx), (16, b"\x05v=spf\x04 -al\x02l\xff".to_vec()), (6, soa), (33, srv),
        (12, wire_name("host.example")), (65, vec![0, 1, 0]), (4660, vec![0xde, 0xad]), (16, vec![]),
    ];
    let mut data = header(1, 0x8180, 1, answers.len() as u16);
    data.extend(question("x.example", 255));
    for (t, rd) in &answers {
        data.extend(rr(&[0xc0, 0x0c], *t, 1, rd));
    }
    let m = parse(&data).unwrap();
    let got: Vec<&str> = m.answers.iter().map(|a| a.data.as_str()).collect();
    assert_eq!(got, vec!["2001:db8::1", "10 mx.example", "v=spf -all\\xff",
                         "ns.example host.example 2024 900 600 86400 3600", "0 100 389 dc.example",
                         "host.example", "000100", "dead", ""]);
    for (t, rd) in [(1u16, &b"\x01\x02\x03"[..]), (15, b"\x00"), (16, b"\x05ab")] {
        let mut data = header(1, 0x8180, 1, 1);
        data.extend(question("x.example", 1));
        data.extend(rr(&[0xc0, 0x0c], t, 1, rd));
        assert_eq!(reason(&data), Reason::BadRdata);
    }
}

/// A tiny deterministic generator (no dependency): xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_and_mutated_messages_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let base = response(3, "www.example.com", &[[10, 0, 0, 1], [10, 0, 0, 2]]);
    let mut m = Matcher::new(10_000_000, 8);
    let mut tcp = TcpDns::new(0, ("10.0.0.1".into(), 4000), ("10.0.0.2".into(), 53));
    for i in 0..20_000u64 {
        let data: Vec<u8> = if i % 2 == 0 {
            let n = (rng.next() % 300) as usize;
            (0..n).map(|_| rng.next() as u8).collect()
        } else {
            let mut d = base.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % d.len();
                d[at] = rng.next() as u8;
            }
            d.truncate((rng.next() as usize) % (d.len() + 1));
            d
        };
        let _ = parse(&data);
        m.on_datagram(i as i64 * 1000, "10.0.0.1", 4000, "10.0.0.2", 53, &data);
        let mut cid = || Ok::<_, ()>("c".to_string());
        let _ = tcp.data(&mut m, (i % 2) as u8, &data, i as i64, &mut cid);
        if i % 97 == 0 {
            tcp.gap(&mut m, (i % 2) as u8);
        }
        assert!(m.pending_len() <= 8);
    }
    let snap = state::snapshot_matcher(&m);
    let back = state::restore_matcher(&snap).unwrap();
    assert_eq!(state::snapshot_matcher(&back), snap);
}

#[test]
fn matching_retransmission_duplicate_and_timeout() {
    let mut m = Matcher::new(10_000_000, 100);
    m.on_datagram(0, "c", 1, "s", 53, &query(1, "a.example"));
    m.on_datagram(1_000_000, "c", 1, "s", 53, &query(1, "a.example")); // retransmission
    m.on_datagram(1_500_000, "s", 53, "c", 1, &response(1, "A.example", &[[1, 2, 3, 4]]));
    m.on_datagram(1_600_000, "s", 53, "c", 1, &response(1, "a.example", &[[1, 2, 3, 4]])); // duplicate
    m.on_datagram(2_000_000, "c", 2, "s", 53, &query(2, "b.example"));
    m.on_datagram(2_100_000, "s", 53, "c", 2, &response(2, "other.example", &[])); // mismatch
    m.tick(12_000_000);
    let (out, counts) = m.take();
    let got: Vec<_> = out.iter().map(|r| (r.query.name.as_str(), r.response_ts_us, r.query.retransmissions, r.error)).collect();
    assert_eq!(got, vec![("a.example", Some(1_500_000), 1, None), ("b.example", None, 0, Some("no_response"))]);
    for (name, n) in [("dns_query_retransmission", 1), ("dns_duplicate_response", 1), ("dns_question_mismatch", 1),
                      ("dns_no_response", 1), ("dns_answered", 1), ("dns_queries", 3)] {
        assert!(counts.contains(&(name, n)), "{name}: {counts:?}");
    }
}

#[test]
fn tcp_framing_across_segments_and_gap() {
    let mut m = Matcher::new(10_000_000, 100);
    let mut t = TcpDns::new(0, ("c".into(), 5000), ("s".into(), 53));
    let mut cid = || Ok::<_, ()>("conn".to_string());
    let q = query(5, "t.example");
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend(&q);
    for (i, b) in framed.iter().enumerate() {
        t.data(&mut m, 0, &[*b], i as i64, &mut cid).unwrap();
    }
    assert_eq!(m.pending_len(), 1);
    assert_eq!(m.pending.values().next().map(|q| (q.transport, q.ts_us)), Some((Transport::Tcp, framed.len() as i64 - 1)));
    let snap = state::snapshot_tcp(&t);
    assert_eq!(state::restore_tcp(&snap).unwrap(), t);
    t.gap(&mut m, 1);
    assert_eq!(m.pending_len(), 0);
    let (out, _) = m.take();
    assert_eq!(out[0].error, Some("gap"));
}

#[test]
fn damaged_states_are_errors() {
    let mut m = Matcher::new(1, 2);
    m.on_datagram(0, "c", 1, "s", 53, &query(1, "a.example"));
    let snap = state::snapshot_matcher(&m);
    for cut in 0..snap.len() {
        assert!(state::restore_matcher(&snap[..cut]).is_err());
    }
    let mut bad = snap.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(state::restore_matcher(&bad).is_err());
    assert!(state::restore_tcp(&snap).is_err());
}

#[test]
fn tcp_two_messages_and_a_half_in_one_segment() {
    let mut m = Matcher::new(10_000_000, 100);
    let mut t = TcpDns::new(1, ("c".into(), 5000), ("s".into(), 53));
    let mut cid = || Ok::<_, ()>("conn".to_string());
    let mut stream = Vec::new();
    for (id, name) in [(1, "a.example"), (2, "b.example"), (3, "c.example")] {
        let q = query(id, name);
        stream.extend((q.len() as u16).to_be_bytes());
        stream.extend(q);
    }
    let cut = stream.len() - 5;
    t.data(&mut m, 1, &stream[..cut], 10, &mut cid).unwrap();
    assert_eq!((m.pending_len(), t.buf[1].len()), (2, stream.len() / 3 - 5));
    t.data(&mut m, 1, &stream[cut..cut + 2], 11, &mut cid).unwrap();
    t.data(&mut m, 1, &stream[cut + 2..], 12, &mut cid).unwrap();
    assert_eq!((m.pending_len(), t.buf[1].len()), (3, 0));
    // a response from the client's side is not matched
    t.data(&mut m, 1, &[0, 12, 0, 1, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0], 13, &mut cid).unwrap();
    t.close(&mut m);
    let (out, counts) = m.take();
    assert_eq!(out.len(), 3);
    assert!(counts.contains(&("dns_tcp_wrong_direction", 1)), "{counts:?}");
}
