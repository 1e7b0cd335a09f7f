use super::*;

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    v.push(seq);
    v.extend_from_slice(payload);
    v
}

const CAPS: u32 = 0x0000_0200 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH | CLIENT_CONNECT_WITH_DB
    | CLIENT_PLUGIN_AUTH_LENENC;

fn greeting(caps: u32) -> Vec<u8> {
    let mut p = vec![0x0a];
    p.extend_from_slice(b"10.11.6-MariaDB\0");
    p.extend_from_slice(&7u32.to_le_bytes());
    p.extend_from_slice(b"12345678\0");
    p.extend_from_slice(&(caps as u16).to_le_bytes());
    p.push(45);
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    p.push(21);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(b"abcdefghijkl\0");
    p.extend_from_slice(b"mysql_native_password\0");
    packet(0, &p)
}

fn response(caps: u32, user: &str, db: &str) -> Vec<u8> {
    let mut p = caps.to_le_bytes().to_vec();
    p.extend_from_slice(&(1u32 << 24).to_le_bytes());
    p.push(45);
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(user.as_bytes());
    p.push(0);
    p.push(20);
    p.extend_from_slice(b"hunter2-scramble-xxx");
    p.extend_from_slice(db.as_bytes());
    p.push(0);
    p.extend_from_slice(b"mysql_native_password\0");
    packet(1, &p)
}

fn ok(seq: u8, affected: u8, status: u16) -> Vec<u8> {
    let mut p = vec![0x00, affected, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    packet(seq, &p)
}

fn eof(seq: u8, status: u16) -> Vec<u8> {
    let mut p = vec![0xfe, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    packet(seq, &p)
}

fn ok_fe(seq: u8, status: u16) -> Vec<u8> {
    let mut p = vec![0xfe, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    packet(seq, &p)
}

fn err(seq: u8, code: u16, state: &str, msg: &str) -> Vec<u8> {
    let mut p = vec![0xff];
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    p.extend_from_slice(state.as_bytes());
    p.extend_from_slice(msg.as_bytes());
    packet(seq, &p)
}

fn command(c: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![c];
    p.extend_from_slice(body);
    packet(0, &p)
}

fn result_set(columns: u8, rows: u8, eofs: bool) -> Vec<u8> {
    let mut v = packet(1, &[columns]);
    let mut seq = 2;
    for _ in 0..columns {
        v.extend(packet(seq, b"\x03def\x04shop\x05items\x05items\x02id\x02id\x0c?\0\x0b\0\0\0\x03\0\0\0\0\0"));
        seq += 1;
    }
    if eofs {
        v.extend(eof(seq, 2));
        seq += 1;
    }
    for _ in 0..rows {
        v.extend(packet(seq, b"\x0242\x03bob"));
        seq += 1;
    }
    v.extend(if eofs { eof(seq, 2) } else { ok_fe(seq, 2) });
    v
}

fn done(e: &Event) -> &Done {
    match e {
        Event::Done(d) => d,
        other => panic!("not a command: {other:?}"),
    }
}

/// Feeds a conversation (direction, bytes) whole and one byte at a time: the same events.
fn run(conn: &Connection, conversation: &[(usize, Vec<u8>)]) -> Vec<Event> {
    let mut whole = Vec::new();
    let mut a = conn.clone();
    for (i, (d, data)) in conversation.iter().enumerate() {
        a.feed(*d, data, i as i64, &mut whole);
    }
    a.close(99, &mut whole);
    let mut bytewise = Vec::new();
    let mut b = conn.clone();
    for (i, (d, data)) in conversation.iter().enumerate() {
        for x in data {
            b.feed(*d, std::slice::from_ref(x), i as i64, &mut bytewise);
        }
    }
    b.close(99, &mut bytewise);
    assert_eq!(whole, bytewise);
    whole
}

fn session(eofs: bool) -> Vec<(usize, Vec<u8>)> {
    let caps = if eofs { CAPS } else { CAPS | CLIENT_DEPRECATE_EOF };
    let mut prepare_ok = vec![0x00];
    prepare_ok.extend_from_slice(&9u32.to_le_bytes());
    prepare_ok.extend_from_slice(&2u16.to_le_bytes()); // columns
    prepare_ok.extend_from_slice(&1u16.to_le_bytes()); // params
    prepare_ok.extend_from_slice(&[0, 0, 0]);
    let mut prepared = packet(1, &prepare_ok);
    let def = b"\x03def\0\0\0\x01?\0\x0c?\0\0\0\0\0\xfd\x80\0\0\0\0";
    prepared.extend(packet(2, def));
    let mut seq = 3;
    if eofs {
        prepared.extend(eof(seq, 2));
        seq += 1;
    }
    for _ in 0..2 {
        prepared.extend(packet(seq, def));
        seq += 1;
    }
    if eofs {
        prepared.extend(eof(seq, 2));
    }
    let mut execute = 9u32.to_le_bytes().to_vec();
    execute.extend_from_slice(&[0, 1, 0, 0, 0, 0, 1, 3, 0, 42, 0, 0, 0]);
    vec![
        (1, greeting(caps)),
        (0, response(caps, "app", "shop")),
        (1, ok(2, 0, 2)),
        (0, command(COM_QUERY, b"SELECT id, name FROM items WHERE id > 1")),
        (1, result_set(2, 3, eofs)),
        (0, command(COM_QUERY, b"INSERT INTO items VALUES (7, 'x')")),
        (1, ok(1, 1, 2)),
        (0, command(COM_QUERY, b"SELECT * FROM nope")),
        (1, err(1, 1146, "42S02", "Table 'shop.nope' doesn't exist")),
        (0, command(COM_STMT_PREPARE, b"SELECT id, name FROM items WHERE id = ?")),
        (1, prepared),
        (0, command(COM_STMT_EXECUTE, &execute)),
        (1, result_set(2, 1, eofs)),
        (0, command(COM_STMT_CLOSE, &9u32.to_le_bytes())),
        (0, command(0x0e, b"")),
        (1, ok(1, 0, 2)),
        (0, command(COM_QUIT, b"")),
    ]
}

#[test]
fn a_session_with_and_without_eof_packets() {
    for eofs in [true, false] {
        let events = run(&Connection::new(0, true), &session(eofs));
        let d: Vec<&Done> = events.iter().map(done).collect();
        type Summary = (u8, Option<bool>, u64, Option<u64>, Option<u16>);
        let summary: Vec<Summary> = d.iter().map(|c| (c.command, c.ok, c.rows, c.affected, c.error_code)).collect();
        assert_eq!(summary, vec![
            (LOGIN, Some(true), 0, None, None),
            // (a result set's end: an EOF has no affected rows, an OK with 0xFE header has)
            (COM_QUERY, Some(true), 3, if eofs { None } else { Some(0) }, None),
            (COM_QUERY, Some(true), 0, Some(1), None),
            (COM_QUERY, Some(false), 0, None, Some(1146)),
            (COM_STMT_PREPARE, Some(true), 0, None, None),
            (COM_STMT_EXECUTE, Some(true), 1, if eofs { None } else { Some(0) }, None),
            (0x0e, Some(true), 0, Some(0), None),
        ], "eofs {eofs}");
        assert_eq!((d[0].text.as_slice(), d[0].database.as_slice(), d[0].plugin.as_slice()),
                   (&b"app"[..], &b"shop"[..], &b"mysql_native_password"[..]));
        assert_eq!(d[3].sqlstate, b"42S02");
        assert_eq!(d[3].message, b"Table 'shop.nope' doesn't exist");
        assert_eq!(d[5].text, b"SELECT id, name FROM items WHERE id = ?", "an execute has its prepared text");
        assert!(!format!("{events:?}").contains("hunter2"));
        assert_eq!(d[1].request_ts_us, 3);
        assert_eq!(d[1].response_ts_us, 4);
    }
}

#[test]
fn multi_results_and_a_refused_login() {
    let mut conv = vec![(1, greeting(CAPS)), (0, response(CAPS, "app", "")), (1, ok(2, 0, 2))];
    let mut two = result_set(1, 2, true);
    // the first result's final EOF says more results follow
    let n = two.len();
    two[n - 2] |= SERVER_MORE_RESULTS_EXISTS as u8;
    two.extend(ok(7, 0, 2));
    conv.push((0, command(COM_QUERY, b"CALL p()")));
    conv.push((1, two));
    let events = run(&Connection::new(0, true), &conv);
    assert_eq!(events.len(), 2);
    assert_eq!((done(&events[1]).rows, done(&events[1]).results, done(&events[1]).ok), (2, 1, Some(true)));
    let events = run(&Connection::new(0, true), &[(1, greeting(CAPS)), (0, response(CAPS, "app", "db")),
                                                    (1, packet(2, b"\xfecaching_sha2_password\0xxxx")),
                                                    (0, packet(3, b"scramble")),
                                                    (1, err(4, 1045, "28000", "Access denied for user 'app'"))]);
    let login = done(&events[0]);
    assert_eq!((login.command, login.ok, login.error_code), (LOGIN, Some(false), Some(1045)));
    assert_eq!(login.plugin, b"caching_sha2_password");
}

#[test]
fn compression_is_named_not_misread() {
    let caps = CAPS | CLIENT_COMPRESS;
    let events = run(&Connection::new(0, true), &[(1, greeting(caps)), (0, response(caps, "app", "db")),
                                                   (1, ok(2, 0, 2)), (0, b"\x0d\0\0\0\x09\0\0compressed".to_vec())]);
    assert_eq!(done(&events[0]).ok, Some(true));
    assert_eq!(events[1], Event::Error(ParseError::Compressed));
    assert_eq!(events.len(), 2);
}

#[test]
fn ssl_request_hands_both_directions_to_tls() {
    let mut conn = Connection::new(0, true);
    let mut out = Vec::new();
    conn.feed(1, &greeting(CAPS | CLIENT_SSL), 0, &mut out);
    let mut ssl = (CAPS | CLIENT_SSL).to_le_bytes().to_vec();
    ssl.extend_from_slice(&[0; 28]);
    conn.feed(0, &packet(1, &ssl), 1, &mut out);
    conn.feed(0, b"\x16\x03\x01hello", 2, &mut out);
    conn.feed(1, b"\x16\x03\x03there", 3, &mut out);
    // inside TLS (decrypted): the real response, then the server's OK: the login
    let mut inside = conn.after_ssl();
    let mut events = Vec::new();
    inside.feed(0, &response(CAPS | CLIENT_SSL, "app", "shop"), 5, &mut events);
    inside.feed(1, &ok(3, 0, 2), 6, &mut events);
    assert_eq!((done(&events[0]).command, done(&events[0]).ok, done(&events[0]).plugin.as_slice()),
               (LOGIN, Some(true), &b"mysql_native_password"[..]));
    conn.close(4, &mut out);
    // (no login record outside: it happened inside TLS)
    assert_eq!(out, vec![Event::SslRequest, Event::Tls(0, b"\x16\x03\x01hello".to_vec()),
                         Event::Tls(1, b"\x16\x03\x03there".to_vec())]);
}

#[test]
fn mid_connection_and_gaps_resynchronise() {
    let mut conn = Connection::new(0, false);
    let mut out = Vec::new();
    conn.feed(1, b"rest of a result", 0, &mut out);
    conn.feed(0, b"more of a query", 1, &mut out);
    conn.feed(0, &command(COM_QUERY, b"SELECT 1"), 2, &mut out);
    conn.feed(1, &result_set(1, 1, false), 3, &mut out);
    assert_eq!(conn.skipped, 2);
    assert_eq!(out.len(), 1);
    assert_eq!((done(&out[0]).rows, done(&out[0]).ok), (1, Some(true)));
    conn.feed(0, &command(COM_QUERY, b"SELECT 2"), 4, &mut out);
    conn.gap(1, 5, &mut out);
    assert_eq!(done(&out[1]).ok, None, "the query waiting at the gap goes out unanswered");
    conn.feed(1, b"tail", 6, &mut out);
    conn.feed(0, &command(COM_QUERY, b"SELECT 3"), 7, &mut out);
    conn.feed(1, &ok(1, 0, 2), 8, &mut out);
    assert_eq!(done(&out[2]).text, b"SELECT 3");
}

#[test]
fn bad_packets_stop_parsing_until_a_gap() {
    let mut conn = Connection::new(0, true);
    let mut out = Vec::new();
    conn.feed(1, &packet(0, b"\x09not a handshake"), 0, &mut out);
    assert_eq!(out, vec![Event::Error(ParseError::BadHandshake)]);
    let mut conn = Connection::new(0, false);
    out.clear();
    conn.feed(0, &command(COM_QUERY, b"SELECT 1"), 0, &mut out);
    conn.feed(0, &packet(3, b"\x03x"), 1, &mut out);
    assert_eq!(out, vec![Event::Error(ParseError::BadCommand)]);
    conn.close(2, &mut out);
    assert_eq!(done(&out[1]).ok, None);
}

#[test]
fn long_queries_are_cut_and_multi_packet_payloads_joined() {
    let mut conn = Connection::new(0, false);
    let mut out = Vec::new();
    let mut body = vec![COM_QUERY];
    body.extend(std::iter::repeat_n(b'x', MAX_PAYLOAD - 1));
    let mut data = packet(0, &body);
    data.extend(packet(1, b"tail"));
    conn.feed(0, &data, 0, &mut out);
    conn.feed(1, &ok(2, 0, 2), 1, &mut out);
    let d = done(&out[0]);
    assert!(d.cut && d.text.len() == KEEP_CLIENT - 1);
    assert_eq!(d.request_bytes, (MAX_PAYLOAD + 4 + 4 + 4) as u64);
}

#[test]
fn snapshot_restores_mid_response() {
    let conv = session(true);
    let mut conn = Connection::new(0, true);
    let mut out = Vec::new();
    for (i, (d, data)) in conv.iter().enumerate().take(4) {
        conn.feed(*d, data, i as i64, &mut out);
    }
    let rs = &conv[4].1;
    conn.feed(1, &rs[..rs.len() / 2], 4, &mut out);
    let mut restored = Connection::restore(&conn.snapshot()).expect("restores");
    assert_eq!(restored, conn);
    restored.feed(1, &rs[rs.len() / 2..], 4, &mut out);
    assert_eq!(done(&out[1]).rows, 3);
    assert!(Connection::restore(b"junk").is_err());
    let snap = conn.snapshot();
    for n in 0..snap.len() {
        let _ = Connection::restore(&snap[..n]);
    }
}

#[test]
fn fuzzed_input_never_panics_and_stays_bounded() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let real = session(false);
    for round in 0..2000 {
        let mut conn = Connection::new(0, round % 3 != 0);
        let mut out = Vec::new();
        for (i, (d, data)) in real.iter().enumerate() {
            let mut data = data.clone();
            if next() % 4 == 0 && !data.is_empty() {
                let at = (next() as usize) % data.len();
                data[at] = next() as u8;
            }
            if next() % 8 == 0 {
                data.truncate((next() as usize) % (data.len() + 1));
            }
            if round % 2 == 1 {
                data = (0..(next() % 64)).map(|_| next() as u8).collect();
            }
            for chunk in data.chunks(1 + (next() % 23) as usize) {
                conn.feed(*d, chunk, i as i64, &mut out);
            }
            if next() % 40 == 0 {
                conn.gap((next() % 2) as usize, i as i64, &mut out);
            }
        }
        assert!(conn.pending.len() <= MAX_PENDING && conn.statements.len() <= MAX_STATEMENTS);
        let _ = Connection::restore(&conn.snapshot()).expect("a snapshot restores");
        conn.close(100, &mut out);
    }
}
