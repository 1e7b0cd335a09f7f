use super::*;

fn feed_all(s: &mut Stream, data: &[u8]) -> Vec<Result<Message, ParseError>> {
    let mut out = Vec::new();
    s.feed(data, &mut out);
    out
}

/// The same messages whatever the split: whole, and one byte at a time.
fn parse(client: bool, data: &[u8]) -> Vec<Result<Message, ParseError>> {
    let whole = feed_all(&mut Stream::new(client), data);
    let mut s = Stream::new(client);
    let mut bytewise = Vec::new();
    for b in data {
        s.feed(std::slice::from_ref(b), &mut bytewise);
    }
    assert_eq!(whole, bytewise);
    whole
}

fn ok(m: &Result<Message, ParseError>) -> &Message {
    m.as_ref().expect("a message")
}

#[test]
fn a_command_array_keeps_name_key_and_one_more() {
    let out = parse(true, b"*4\r\n$3\r\nSET\r\n$5\r\nmykey\r\n$5\r\nvalue\r\n$2\r\nEX\r\n");
    assert_eq!(out.len(), 1);
    let m = ok(&out[0]);
    assert_eq!(m.kind, Some(Kind::Array));
    assert_eq!(m.elements, 4);
    assert_eq!(m.args, vec![b"SET".to_vec(), b"mykey".to_vec(), b"value".to_vec()]);
    assert_eq!(m.bytes, 43);
}

#[test]
fn replies_of_every_resp2_and_resp3_type() {
    let data = b"+OK\r\n-WRONGTYPE Operation\r\n:42\r\n$-1\r\n*-1\r\n$0\r\n\r\n_\r\n,3.14\r\n#t\r\n(12345678901234567890\r\n!5\r\nERR x\r\n=7\r\ntxt:abc\r\n%1\r\n+k\r\n:1\r\n~2\r\n:1\r\n:2\r\n>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n";
    let out = parse(false, data);
    let kinds: Vec<Kind> = out.iter().map(|m| ok(m).kind.unwrap()).collect();
    assert_eq!(kinds, vec![Kind::Simple, Kind::Error, Kind::Integer, Kind::Null, Kind::Null, Kind::Bulk, Kind::Null,
                           Kind::Double, Kind::Boolean, Kind::BigNumber, Kind::BulkError, Kind::Verbatim, Kind::Map,
                           Kind::Set, Kind::Push]);
    assert_eq!(ok(&out[1]).error.as_deref(), Some(&b"WRONGTYPE Operation"[..]));
    assert_eq!(ok(&out[2]).integer, Some(42));
    assert_eq!(ok(&out[10]).error.as_deref(), Some(&b"ERR x"[..]));
    assert_eq!(ok(&out[12]).elements, 1);
    assert_eq!(ok(&out[14]).args[0], b"message");
    let total: u64 = out.iter().map(|m| ok(m).bytes).sum();
    assert_eq!(total, data.len() as u64);
}

#[test]
fn an_attribute_precedes_the_reply_it_belongs_to() {
    let out = parse(false, b"|1\r\n+key-popularity\r\n*2\r\n:1\r\n:2\r\n*2\r\n:3\r\n|1\r\n+a\r\n+b\r\n:4\r\n");
    assert_eq!(out.len(), 1);
    let m = ok(&out[0]);
    assert_eq!(m.kind, Some(Kind::Array));
    assert_eq!(m.elements, 2);
}

#[test]
fn nested_arrays_keep_only_top_level_scalars() {
    let out = parse(false, b"*3\r\n:1\r\n*2\r\n+a\r\n+b\r\n+c\r\n");
    let m = ok(&out[0]);
    assert_eq!(m.args, vec![b"1".to_vec(), b"c".to_vec()]);
}

#[test]
fn inline_commands_on_the_clients_side_only() {
    let out = parse(true, b"PING\r\nSET a  b\n\r\n");
    assert_eq!(out.len(), 2);
    assert_eq!(ok(&out[0]).kind, Some(Kind::Inline));
    assert_eq!(ok(&out[1]).args, vec![b"SET".to_vec(), b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(parse(false, b"PING\r\n"), vec![Err(ParseError::BadType)]);
}

#[test]
fn a_huge_bulk_string_is_counted_not_stored() {
    let mut s = Stream::new(false);
    let mut out = Vec::new();
    s.feed(b"$100000000\r\n", &mut out);
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..95 {
        s.feed(&chunk, &mut out);
    }
    assert!(s.bulk.len() <= KEEP_BYTES);
    s.feed(&vec![b'x'; 100_000_000 - 95 * (1 << 20)], &mut out);
    s.feed(b"\r\n", &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(ok(&out[0]).bytes, 100_000_000 + 14);
    assert_eq!(ok(&out[0]).args[0].len(), KEEP_BYTES);
}

#[test]
fn errors_stop_the_direction_until_a_gap() {
    for (data, err) in [
        (&b"$abc\r\n"[..], ParseError::BadLength),
        (b"$600000000\r\n", ParseError::BadLength),
        (b"*-2\r\n", ParseError::BadLength),
        (b":12a\r\n", ParseError::BadInteger),
        (b"+OK\n", ParseError::MissingCrlf),
        (b"$3\r\nabcX\r\n", ParseError::MissingCrlf),
        (b"!?\r\n", ParseError::Streamed),
        (b"|?\r\n", ParseError::Streamed),
        (b".\r\n", ParseError::Streamed),
        (b"$?\r\n:1\r\n", ParseError::Streamed),
        (b"$?\r\n;-3\r\n", ParseError::BadLength),
        (b"$?\r\n;2\r\nabc\r\n", ParseError::MissingCrlf),
        (b"?\r\n", ParseError::BadType),
        (b"*99999999999\r\n", ParseError::BadLength),
        (b":99999999999999999999\r\n", ParseError::BadInteger),
    ] {
        let out = parse(false, data);
        assert_eq!(out, vec![Err(err)], "{:?}", String::from_utf8_lossy(data));
    }
    let mut s = Stream::new(false);
    let mut deep = Vec::new();
    for _ in 0..=MAX_DEPTH {
        deep.extend_from_slice(b"*1\r\n");
    }
    assert_eq!(feed_all(&mut s, &deep), vec![Err(ParseError::TooDeep)]);
    assert_eq!(feed_all(&mut s, b"+OK\r\n"), vec![]); // stopped
    s.gap();
    // after a gap: what is left of a value is skipped to the next line that starts one
    let out = feed_all(&mut s, b"tail of something\r\n+OK\r\n");
    assert_eq!(out.len(), 1);
    assert_eq!(ok(&out[0]).kind, Some(Kind::Simple));
}

#[test]
fn a_long_line_is_an_error_not_memory() {
    let mut s = Stream::new(true);
    let mut out = Vec::new();
    for _ in 0..100 {
        s.feed(&[b'a'; 1024], &mut out);
    }
    assert_eq!(out, vec![Err(ParseError::LineTooLong)]);
    assert!(s.line.capacity() <= 2 * MAX_LINE);
}

#[test]
fn the_client_resynchronises_at_a_command_array() {
    let mut s = Stream::new(true);
    s.gap();
    let out = feed_all(&mut s, b"3\r\nfoo\r\n*1\r\n$4\r\nPING\r\n");
    assert_eq!(out.len(), 1);
    assert_eq!(ok(&out[0]).args, vec![b"PING".to_vec()]);
}

#[test]
fn a_checkpoint_at_every_byte_gives_the_same_messages() {
    let data = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n0123456789\r\n|1\r\n+a\r\n+b\r\n%1\r\n+x\r\n:1\r\nPING\r\n";
    let mut straight = Connection::new(0);
    let mut want = Vec::new();
    straight.streams[0].feed(data, &mut want);
    for cut in 0..data.len() {
        let mut c = Connection::new(0);
        let mut got = Vec::new();
        c.streams[0].feed(&data[..cut], &mut got);
        let mut c = Connection::restore(&c.snapshot()).expect("its own snapshot");
        c.streams[0].feed(&data[cut..], &mut got);
        assert_eq!(got, want, "cut at {cut}");
    }
    assert!(Connection::restore(b"WSRS garbage").is_err());
    let snap = Connection::new(1).snapshot();
    for n in 0..snap.len() {
        assert!(Connection::restore(&snap[..n]).is_err());
    }
}

#[test]
fn random_bytes_never_panic_and_stay_bounded() {
    // a small LCG: deterministic garbage, and mutations of valid messages
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) as u32
    };
    let valid = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n%1\r\n+a\r\n*1\r\n:5\r\n$5\r\nhello\r\n";
    for round in 0..5000 {
        let mut data = valid.to_vec();
        for _ in 0..(next() % 6) {
            let i = next() as usize % data.len();
            data[i] = next() as u8;
        }
        if round % 3 == 0 {
            data = (0..(next() % 300)).map(|_| next() as u8).collect();
        }
        for client in [true, false] {
            let mut s = Stream::new(client);
            let mut out = Vec::new();
            let mut pos = 0;
            while pos < data.len() {
                let n = 1 + next() as usize % 7;
                s.feed(&data[pos..(pos + n).min(data.len())], &mut out);
                pos += n;
                if next() % 50 == 0 {
                    s.gap();
                }
            }
            assert!(s.stack.len() <= MAX_DEPTH && s.line.len() <= MAX_LINE && s.bulk.len() <= KEEP_BYTES);
            let c = Connection { client: 0, streams: [s.clone(), Stream::new(false)] };
            let back = Connection::restore(&c.snapshot()).expect("its own snapshot");
            assert_eq!(format!("{:?}", back.streams[0]), format!("{s:?}"));
        }
    }
}


#[test]
fn streamed_strings_and_aggregates_are_one_value_each() {
    // the spec's examples: a streamed string of three chunks, a streamed array and map
    // (https://github.com/redis/redis-specifications/blob/master/protocol/RESP3.md)
    let data = b"$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;1\r\nd\r\n;0\r\n*?\r\n:1\r\n:2\r\n:3\r\n.\r\n%?\r\n+a\r\n:1\r\n+b\r\n:2\r\n.\r\n*2\r\n~?\r\n+x\r\n.\r\n$?\r\n;1\r\ny\r\n;0\r\n*?\r\n.\r\n";
    let out = parse(false, data);
    assert_eq!(out.len(), 5, "{out:?}");
    let s = ok(&out[0]);
    assert_eq!((s.kind, s.args.clone()), (Some(Kind::Bulk), vec![b"Hello word".to_vec()]));
    let a = ok(&out[1]);
    assert_eq!((a.kind, a.elements, a.args.len()), (Some(Kind::Array), 3, 3));
    let m = ok(&out[2]);
    assert_eq!((m.kind, m.elements), (Some(Kind::Map), 2));
    // nested: an array of a streamed set and a streamed string
    let n = ok(&out[3]);
    assert_eq!((n.kind, n.elements), (Some(Kind::Array), 2));
    assert_eq!((ok(&out[4]).kind, ok(&out[4]).elements), (Some(Kind::Array), 0));
    let total: u64 = out.iter().map(|m| ok(m).bytes).sum();
    assert_eq!(total, data.len() as u64);
    // a checkpoint in the middle of every one of them
    for cut in 1..data.len() {
        let mut c = Connection::new(1);
        let mut got = Vec::new();
        c.streams[0].feed(&data[..cut], &mut got);
        let mut c = Connection::restore(&c.snapshot()).expect("restores");
        c.streams[0].feed(&data[cut..], &mut got);
        assert_eq!(got, out, "cut at {cut}");
    }
}

#[test]
fn a_checkpoint_of_the_version_before_streamed_values_restores() {
    // version 1: a stream in the middle of a bulk string inside an array
    let mut w = W(Vec::new());
    w.u8(0); // client direction
    for client in [true, false] {
        w.b(client);
        w.u8(1); // Bulk
        w.u64(2);
        w.u8(Kind::Bulk.code());
        w.bytes(b"");
        w.u64(1); // one frame
        w.u64(1);
        w.b(false);
        w.ou8(Some(Kind::Array.code()));
        w.u64(1);
        w.bytes(b"GET");
        w.u64(2);
        w.obytes(None);
        w.oi64(None);
        w.u64(17);
        w.bytes(b"k");
        w.ou8(None);
        w.b(false);
        w.b(false);
    }
    let old = frame(MAGIC, 1, &w.0);
    let mut c = Connection::restore(&old).expect("a version 1 checkpoint restores");
    let mut out = Vec::new();
    c.streams[0].feed(b"ey\r\n", &mut out);
    let m = ok(&out[0]);
    assert_eq!(m.args, vec![b"GET".to_vec(), b"key".to_vec()]);
}
