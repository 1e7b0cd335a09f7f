use super::*;

fn msg(t: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![t];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut v = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&body);
    v
}

/// The same messages whatever the split: whole, and one byte at a time.
fn parse(conn: &Connection, d: usize, data: &[u8]) -> Vec<Result<Message, ParseError>> {
    let mut a = conn.clone();
    let mut whole = Vec::new();
    a.feed(d, data, &mut whole);
    let mut b = conn.clone();
    let mut bytewise = Vec::new();
    for x in data {
        b.feed(d, std::slice::from_ref(x), &mut bytewise);
    }
    // TLS pass-through gives the bytes back in the pieces they came in: compare them joined
    let join = |v: &[Result<Message, ParseError>]| -> Vec<Result<Message, ParseError>> {
        let mut out: Vec<Result<Message, ParseError>> = Vec::new();
        for m in v {
            if let (Some(Ok(Message { kind: Kind::Tls(prev), bytes, .. })), Ok(Message { kind: Kind::Tls(more), .. })) = (out.last_mut(), m) {
                prev.extend_from_slice(more);
                *bytes += more.len() as u64;
                continue;
            }
            out.push(m.clone());
        }
        out
    };
    assert_eq!(join(&whole), join(&bytewise));
    whole
}

/// A connection past its startup message.
fn ready(client: usize) -> Connection {
    let mut c = Connection::new(client, true);
    let mut out = Vec::new();
    c.feed(client, &startup(&[("user", "u")]), &mut out);
    assert_eq!(out.len(), 1);
    c
}

fn ok(m: &Result<Message, ParseError>) -> &Message {
    m.as_ref().expect("a message")
}

#[test]
fn startup_then_simple_query() {
    let conn = Connection::new(0, true);
    let mut data = startup(&[("user", "app"), ("database", "shop"), ("application_name", "psql")]);
    data.extend(msg(b'Q', b"SELECT 1\0"));
    let out = parse(&conn, 0, &data);
    assert_eq!(out.len(), 2);
    let s = ok(&out[0]);
    assert_eq!(s.kind, Kind::Startup);
    assert_eq!(s.fields, vec![b"app".to_vec(), b"shop".to_vec(), b"psql".to_vec()]);
    assert_eq!(s.int, Some(196_608));
    let q = ok(&out[1]);
    assert_eq!(q.kind, Kind::Typed(b'Q'));
    assert_eq!(q.fields, vec![b"SELECT 1".to_vec()]);
    assert_eq!(q.bytes, 14);
}

#[test]
fn rows_are_counted_into_the_next_message() {
    let conn = Connection::new(0, true);
    let mut data = msg(b'T', b"\0\x01a\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0");
    for _ in 0..3 {
        data.extend(msg(b'D', b"\0\x01\0\0\0\x011"));
    }
    data.extend(msg(b'C', b"SELECT 3\0"));
    data.extend(msg(b'Z', b"I"));
    let out = parse(&conn, 1, &data);
    let kinds: Vec<Kind> = out.iter().map(|m| ok(m).kind.clone()).collect();
    assert_eq!(kinds, vec![Kind::Typed(b'T'), Kind::Typed(b'C'), Kind::Typed(b'Z')]);
    assert_eq!(ok(&out[0]).int, Some(1));
    let c = ok(&out[1]);
    assert_eq!((c.data_messages, c.data_bytes), (3, 3 * 12));
    assert_eq!(c.fields, vec![b"SELECT 3".to_vec()]);
    assert_eq!(ok(&out[2]).int, Some(b'I' as i64));
    assert_eq!(ok(&out[2]).data_messages, 0);
}

#[test]
fn extended_protocol_fields() {
    let conn = ready(1);
    let mut data = msg(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17");
    data.extend(msg(b'B', b"p1\0s1\0\0\0\0\x01\0\0\0\x0142\0\0"));
    data.extend(msg(b'D', b"Pp1\0"));
    data.extend(msg(b'E', b"p1\0\0\0\0\x05"));
    data.extend(msg(b'S', b""));
    let out = parse(&conn, 1, &data);
    let m: Vec<&Message> = out.iter().map(ok).collect();
    assert_eq!(m[0].fields, vec![b"s1".to_vec(), b"SELECT $1".to_vec()]);
    assert_eq!(m[1].fields, vec![b"p1".to_vec(), b"s1".to_vec()]);
    assert_eq!((m[2].kind.clone(), m[2].int, m[2].fields.clone()), (Kind::Typed(b'D'), Some(b'P' as i64), vec![b"p1".to_vec()]));
    assert_eq!((m[3].int, m[3].fields.clone()), (Some(5), vec![b"p1".to_vec()]));
    assert_eq!(m[4].kind, Kind::Typed(b'S'));
}

#[test]
fn errors_keep_severity_code_and_message() {
    let conn = Connection::new(0, true);
    let data = msg(b'E', b"SERREUR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0P15\0\0");
    let out = parse(&conn, 1, &data);
    assert_eq!(ok(&out[0]).fields, vec![b"ERROR".to_vec(), b"42P01".to_vec(), b"relation \"nope\" does not exist".to_vec()]);
}

#[test]
fn authentication_requests_and_no_password() {
    let conn = Connection::new(0, true);
    let out = parse(&conn, 1, &msg(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0SCRAM-SHA-256-PLUS\0\0"));
    assert_eq!(ok(&out[0]).int, Some(10));
    assert_eq!(ok(&out[0]).fields, vec![b"SCRAM-SHA-256".to_vec(), b"SCRAM-SHA-256-PLUS".to_vec()]);
    let mut c = Connection::new(0, false);
    let mut out = Vec::new();
    c.feed(0, &msg(b'p', b"hunter2\0"), &mut out);
    assert_eq!(ok(&out[0]).kind, Kind::Typed(b'p'));
    assert!(ok(&out[0]).fields.is_empty());
    assert!(!format!("{:?}", c).contains("hunter2"));
}

#[test]
fn ssl_request_accepted_hands_both_directions_to_tls() {
    let mut conn = Connection::new(0, true);
    let mut out = Vec::new();
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    conn.feed(0, &ssl, &mut out);
    assert_eq!(ok(&out[0]).kind, Kind::SslRequest);
    out.clear();
    conn.feed(1, b"S\x16\x03\x03", &mut out);
    assert_eq!(ok(&out[0]).kind, Kind::SslAnswer(b'S'));
    assert_eq!(ok(&out[1]).kind, Kind::Tls(b"\x16\x03\x03".to_vec()));
    out.clear();
    conn.feed(0, b"\x16\x03\x01\x00\x05hello", &mut out);
    assert_eq!(ok(&out[0]).kind, Kind::Tls(b"\x16\x03\x01\x00\x05hello".to_vec()));
}

#[test]
fn ssl_request_refused_goes_on_in_cleartext() {
    let mut conn = Connection::new(0, true);
    let mut out = Vec::new();
    conn.feed(0, &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], &mut out);
    conn.feed(1, b"N", &mut out);
    conn.feed(0, &startup(&[("user", "u")]), &mut out);
    conn.feed(1, &msg(b'R', b"\0\0\0\0"), &mut out);
    let kinds: Vec<Kind> = out.iter().map(|m| ok(m).kind.clone()).collect();
    assert_eq!(kinds, vec![Kind::SslRequest, Kind::SslAnswer(b'N'), Kind::Startup, Kind::Typed(b'R')]);
}

#[test]
fn long_bodies_are_cut_not_stored() {
    let conn = ready(0);
    let mut q = b"SELECT '".to_vec();
    q.extend(std::iter::repeat_n(b'x', 100_000));
    q.extend_from_slice(b"'\0");
    let mut c = conn.clone();
    let mut out = Vec::new();
    c.feed(0, &msg(b'Q', &q)[..50_000], &mut out);
    assert!(out.is_empty());
    assert!(c.streams[0].body.len() <= KEEP_BODY);
    let out = parse(&conn, 0, &msg(b'Q', &q));
    assert!(ok(&out[0]).cut);
    assert_eq!(ok(&out[0]).fields[0].len(), KEEP_BODY);
    assert_eq!(ok(&out[0]).bytes, q.len() as u64 + 5);
}

#[test]
fn bad_input_stops_the_direction_until_a_gap() {
    let mut conn = Connection::new(0, true);
    let mut out = Vec::new();
    conn.feed(1, b"\x01\0\0\0\x05x", &mut out);
    assert_eq!(out, vec![Err(ParseError::BadType)]);
    conn.feed(1, &msg(b'Z', b"I"), &mut out);
    assert_eq!(out.len(), 1);
    conn.streams[1].gap();
    conn.feed(1, b"garbage", &mut out);
    conn.feed(1, &msg(b'Z', b"I"), &mut out);
    assert_eq!(conn.streams[1].skipped, 1);
    assert_eq!(ok(&out[1]).kind, Kind::Typed(b'Z'));
    let mut c = Connection::new(0, true);
    out.clear();
    c.feed(0, &[0, 0, 0, 8, 0, 2, 0, 0], &mut out);
    assert_eq!(out, vec![Err(ParseError::BadStartup)]);
    let mut c = Connection::new(0, true);
    out.clear();
    c.feed(0, &[0, 1, 0, 0, 0, 3, 0, 0], &mut out);
    assert_eq!(out, vec![Err(ParseError::BadLength)]);
    let mut c = Connection::new(0, false);
    out.clear();
    c.feed(0, b"Q\xff\xff\xff\xff", &mut out);
    assert!(out.is_empty()); // not a plausible start: skipped
}

#[test]
fn mid_connection_start_waits_for_a_message_start() {
    let mut conn = Connection::new(0, false);
    let mut out = Vec::new();
    conn.feed(0, b"rest of an earlier message", &mut out);
    conn.feed(0, &msg(b'Q', b"SELECT 2\0"), &mut out);
    conn.feed(1, b"\0\0more", &mut out);
    conn.feed(1, &msg(b'C', b"SELECT 1\0"), &mut out);
    let kinds: Vec<Kind> = out.iter().map(|m| ok(m).kind.clone()).collect();
    assert_eq!(kinds, vec![Kind::Typed(b'Q'), Kind::Typed(b'C')]);
}

#[test]
fn snapshot_restores_mid_message() {
    let mut conn = Connection::new(0, true);
    let mut data = startup(&[("user", "u")]);
    data.extend(msg(b'Q', b"SELECT 42\0"));
    let mut out = Vec::new();
    conn.feed(0, &data[..data.len() - 4], &mut out);
    let restored = Connection::restore(&conn.snapshot()).expect("restores");
    assert_eq!(restored, conn);
    let mut r = restored;
    let mut rest = Vec::new();
    r.feed(0, &data[data.len() - 4..], &mut rest);
    assert_eq!(ok(&rest[0]).fields, vec![b"SELECT 42".to_vec()]);
    assert!(Connection::restore(b"garbage").is_err());
    let snap = conn.snapshot();
    for n in 0..snap.len() {
        let _ = Connection::restore(&snap[..n]);
    }
}

#[test]
fn fuzzed_input_never_panics_and_stays_bounded() {
    // a deterministic xorshift: garbage, then truncated and length-damaged real messages
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut real = startup(&[("user", "u"), ("database", "d")]);
    real.extend(msg(b'Q', b"SELECT 1\0"));
    real.extend(msg(b'P', b"\0SELECT $1\0\0\0"));
    real.extend(msg(b'E', b"SERROR\0C0A000\0Mx\0\0"));
    for round in 0..2000 {
        let mut data: Vec<u8> = if round % 2 == 0 {
            (0..(next() % 300)).map(|_| next() as u8).collect()
        } else {
            let mut d = real.clone();
            let i = (next() as usize) % d.len();
            d[i] = next() as u8;
            d.truncate((next() as usize) % (d.len() + 1));
            d
        };
        data.extend((0..(next() % 20)).map(|_| next() as u8));
        let mut conn = Connection::new((round % 2) as usize, round % 3 != 0);
        let mut out = Vec::new();
        for chunk in data.chunks(1 + (next() % 17) as usize) {
            conn.feed((next() % 2) as usize, chunk, &mut out);
            if next() % 50 == 0 {
                conn.streams[(next() % 2) as usize].gap();
            }
        }
        for s in &conn.streams {
            assert!(s.body.len() <= KEEP_BODY);
        }
        let _ = Connection::restore(&conn.snapshot()).expect("a snapshot restores");
    }
}
