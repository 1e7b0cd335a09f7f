use super::hpack::{huffman_decode, Decoder, HpackError};
use super::tables::CODES;
use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn pairs(b: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, String)> {
    b.iter().map(|(n, v)| (String::from_utf8_lossy(n).into(), String::from_utf8_lossy(v).into())).collect()
}

fn p(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

#[test]
fn every_huffman_code_decodes_to_its_symbol() {
    for (symbol, &(code, bits)) in CODES.iter().enumerate().take(256) {
        // the code, then padding of ones to a byte boundary
        let total = bits as usize + (8 - bits as usize % 8) % 8;
        let value: u64 = ((code as u64) << (total - bits as usize)) | ((1u64 << (total - bits as usize)) - 1);
        let bytes: Vec<u8> = (0..total / 8).rev().map(|i| (value >> (i * 8)) as u8).collect();
        let mut out = Vec::new();
        huffman_decode(&bytes, &mut out).unwrap_or_else(|e| panic!("symbol {symbol}: {e:?}"));
        assert_eq!(out, vec![symbol as u8]);
    }
    let mut out = Vec::new();
    assert_eq!(huffman_decode(&[0x00], &mut out), Err(HpackError::BadHuffman), "padding of zeros");
    assert_eq!(huffman_decode(&[0xff, 0xff, 0xff, 0xff], &mut out), Err(HpackError::BadHuffman), "EOS");
}

#[test]
fn rfc7541_c4_requests_with_huffman() {
    let mut d = Decoder::default();
    let b = d.decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")).unwrap();
    assert_eq!(pairs(&b.headers), p(&[(":method", "GET"), (":scheme", "http"), (":path", "/"),
                                      (":authority", "www.example.com")]));
    let b = d.decode(&hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
    assert_eq!(pairs(&b.headers), p(&[(":method", "GET"), (":scheme", "http"), (":path", "/"),
                                      (":authority", "www.example.com"), ("cache-control", "no-cache")]));
    let b = d.decode(&hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf")).unwrap();
    assert_eq!(pairs(&b.headers), p(&[(":method", "GET"), (":scheme", "https"), (":path", "/index.html"),
                                      (":authority", "www.example.com"), ("custom-key", "custom-value")]));
    assert_eq!(d.len(), 3);
    // a decoder that missed the first blocks: the dynamic references are unknown, counted
    let mut late = Decoder::default();
    let b = late.decode(&hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
    assert_eq!((b.unknown, b.headers.len()), (1, 4));
}

#[test]
fn malformed_blocks_are_named_errors() {
    let mut d = Decoder::default();
    assert_eq!(d.decode(&[0x80]), Err(HpackError::BadIndex));
    assert_eq!(d.decode(&[0x41, 0x85, 0x61]), Err(HpackError::Truncated));
    assert_eq!(d.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]), Err(HpackError::Overflow));
    assert_eq!(d.decode(&[0x3f, 0xe1, 0xff, 0x7f]), Err(HpackError::BadIndex), "a size update over the limit");
}

// --- frames ---------------------------------------------------------------------------

fn frame_of(typ: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, typ, flags];
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A literal header without indexing, name and value raw (HPACK §6.2.2).
fn lit(name: &str, value: &str) -> Vec<u8> {
    let mut v = vec![0x00, name.len() as u8];
    v.extend_from_slice(name.as_bytes());
    v.push(value.len() as u8);
    v.extend_from_slice(value.as_bytes());
    v
}

fn grpc_message(len: usize) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&(len as u32).to_be_bytes());
    v.extend(std::iter::repeat_n(7u8, len));
    v
}

fn run(conn: &Connection, conv: &[(usize, Vec<u8>)]) -> Vec<Event> {
    let mut whole = Vec::new();
    let mut a = conn.clone();
    for (i, (d, data)) in conv.iter().enumerate() {
        a.feed(*d, data, i as i64, &mut whole);
    }
    a.close(&mut whole);
    let mut bytewise = Vec::new();
    let mut b = conn.clone();
    for (i, (d, data)) in conv.iter().enumerate() {
        for x in data {
            b.feed(*d, std::slice::from_ref(x), i as i64, &mut bytewise);
        }
    }
    b.close(&mut bytewise);
    assert_eq!(whole, bytewise);
    whole
}

fn done(e: &Event) -> &Stream {
    match e {
        Event::Done(s) => s,
        other => panic!("not a stream: {other:?}"),
    }
}

fn grpc_call() -> Vec<(usize, Vec<u8>)> {
    let mut req_headers = vec![0x83, 0x86]; // :method POST, :scheme http
    req_headers.extend(lit(":path", "/helloworld.Greeter/SayHello"));
    req_headers.extend(lit(":authority", "localhost:50051"));
    req_headers.extend(lit("content-type", "application/grpc"));
    req_headers.extend(lit("te", "trailers"));
    let mut client = PREFACE.to_vec();
    client.extend(frame_of(4, 0, 0, b""));
    client.extend(frame_of(HEADERS, END_HEADERS, 1, &req_headers));
    let mut data = grpc_message(10);
    data.extend(grpc_message(3));
    client.extend(frame_of(DATA, END_STREAM, 1, &data));
    let mut resp = vec![0x88]; // :status 200
    resp.extend(lit("content-type", "application/grpc"));
    let mut server = frame_of(4, 0, 0, b"");
    server.extend(frame_of(HEADERS, END_HEADERS, 1, &resp));
    // a padded DATA frame holding one message
    let mut padded = vec![4];
    padded.extend(grpc_message(20));
    padded.extend([0; 4]);
    server.extend(frame_of(DATA, PADDED, 1, &padded));
    let mut trailers = lit("grpc-status", "0");
    trailers.extend(lit("grpc-message", ""));
    server.extend(frame_of(HEADERS, END_HEADERS | END_STREAM, 1, &trailers));
    vec![(0, client), (1, server)]
}

#[test]
fn a_grpc_call_is_one_stream() {
    let events = run(&Connection::new(0, true), &grpc_call());
    assert_eq!(events.len(), 1);
    let s = done(&events[0]);
    assert_eq!(s.id, 1);
    assert_eq!(pairs(&s.request)[..3], p(&[(":method", "POST"), (":scheme", "http"),
                                           (":path", "/helloworld.Greeter/SayHello")])[..]);
    assert_eq!(pairs(&s.response)[0], (":status".into(), "200".into()));
    assert_eq!(pairs(&s.trailers)[0], ("grpc-status".into(), "0".into()));
    assert_eq!((s.messages[0].count, s.messages[1].count), (2, 1));
    assert_eq!((s.request_body, s.response_body), (23, 25)); // (messages with their 5-byte prefixes)
    assert_eq!((s.request_ts_us, s.response_ts_us, s.response_end_ts_us), (0, Some(1), Some(1)));
    assert!(s.error.is_none());
}

#[test]
fn resets_goaway_and_close() {
    let mut client = PREFACE.to_vec();
    for id in [1u32, 3, 5] {
        let mut h = vec![0x82, 0x86, 0x84]; // GET http /
        h.extend(lit(":authority", "a"));
        client.extend(frame_of(HEADERS, END_HEADERS | END_STREAM, id, &h));
    }
    let mut server = frame_of(RST_STREAM, 0, 1, &8u32.to_be_bytes());
    let mut goaway = 1u32.to_be_bytes().to_vec();
    goaway.extend(0u32.to_be_bytes());
    server.extend(frame_of(GOAWAY, 0, 0, &goaway));
    let events = run(&Connection::new(0, true), &[(0, client), (1, server)]);
    let errors: Vec<(u32, Option<String>)> = events.iter().map(|e| (done(e).id, done(e).error.clone())).collect();
    assert_eq!(errors, vec![(1, Some("rst_stream CANCEL by server".into())),
                            (3, Some("goaway NO_ERROR (not processed)".into())),
                            (5, Some("goaway NO_ERROR (not processed)".into()))]);
}

#[test]
fn a_header_block_across_continuations_and_bad_input() {
    let mut h = vec![0x82, 0x86, 0x84];
    h.extend(lit(":authority", "example"));
    let mut client = PREFACE.to_vec();
    client.extend(frame_of(HEADERS, END_STREAM, 1, &h[..3]));
    client.extend(frame_of(CONTINUATION, END_HEADERS, 1, &h[3..]));
    let server = frame_of(HEADERS, END_HEADERS | END_STREAM, 1, &[0x8d]); // :status 404
    let events = run(&Connection::new(0, true), &[(0, client), (1, server)]);
    let s = done(&events[0]);
    assert_eq!(pairs(&s.request)[3], (":authority".into(), "example".into()));
    assert_eq!(pairs(&s.response), p(&[(":status", "404")]));
    // not HTTP/2
    let events = run(&Connection::new(0, true), &[(0, b"GET / HTTP/1.1\r\n\r\n".to_vec())]);
    assert_eq!(events, vec![Event::Error(ParseError::BadPreface)]);
    // a DATA frame inside a header block
    let mut client = PREFACE.to_vec();
    client.extend(frame_of(HEADERS, 0, 1, &h));
    client.extend(frame_of(DATA, 0, 1, b"x"));
    let events = run(&Connection::new(0, true), &[(0, client)]);
    assert_eq!(events[0], Event::Error(ParseError::BadContinuation));
}

#[test]
fn mid_connection_resynchronises_and_counts_unknown_headers() {
    let mut conn = Connection::new(0, false);
    let mut out = Vec::new();
    conn.feed(0, b"middle of a frame", 0, &mut out);
    let mut h = vec![0x82, 0xbe]; // GET, then a dynamic entry we never saw
    h.extend(lit(":path", "/x"));
    conn.feed(0, &frame_of(HEADERS, END_HEADERS | END_STREAM, 7, &h), 1, &mut out);
    conn.feed(1, &frame_of(HEADERS, END_HEADERS | END_STREAM, 7, &[0x88]), 2, &mut out);
    let s = done(&out[0]);
    assert_eq!((s.id, s.unknown_headers), (7, 1));
    assert_eq!(pairs(&s.response), p(&[(":status", "200")]));
}

#[test]
fn snapshot_restores_mid_stream() {
    let conv = grpc_call();
    let mut conn = Connection::new(0, true);
    let mut out = Vec::new();
    conn.feed(0, &conv[0].1, 0, &mut out);
    let server = &conv[1].1;
    conn.feed(1, &server[..server.len() - 7], 1, &mut out);
    let mut restored = Connection::restore(&conn.snapshot()).expect("restores");
    assert_eq!(restored, conn);
    restored.feed(1, &server[server.len() - 7..], 1, &mut out);
    assert_eq!(done(&out[0]).messages[1].count, 1);
    assert!(Connection::restore(b"junk").is_err());
    let snap = conn.snapshot();
    for n in 0..snap.len() {
        let _ = Connection::restore(&snap[..n]);
    }
}

#[test]
fn fuzzed_input_never_panics_and_stays_bounded() {
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let real = grpc_call();
    for round in 0..2000 {
        let mut conn = Connection::new(0, round % 3 != 0);
        let mut out = Vec::new();
        for (i, (d, data)) in real.iter().enumerate() {
            let mut data = data.clone();
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % data.len();
                data[at] = next() as u8;
            }
            if round % 2 == 1 {
                data = (0..(next() % 200)).map(|_| next() as u8).collect();
            }
            for chunk in data.chunks(1 + (next() % 31) as usize) {
                conn.feed(*d, chunk, i as i64, &mut out);
                if next() % 50 == 0 {
                    conn.gap((next() % 2) as usize);
                }
            }
        }
        assert!(conn.open_streams() <= MAX_STREAMS);
        let _ = Connection::restore(&conn.snapshot()).expect("a snapshot restores");
        conn.close(&mut out);
        let mut d = Decoder::default();
        let junk: Vec<u8> = (0..(next() % 100)).map(|_| next() as u8).collect();
        let _ = d.decode(&junk);
    }
}
