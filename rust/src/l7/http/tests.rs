//! Connection-level tests: pairing, pipelining, bodiless responses, tunnels, gaps,
//! garbage, bounds, and random/truncated/mutated input (never a panic).

use super::session::{Connection, Mode};
use super::state;
use super::Txn;

fn conn() -> Connection {
    Connection::new(0, 65536, 65536, 65536, 60_000_000)
}

fn summary(out: &[Txn]) -> Vec<(String, String, Option<u16>, Option<&'static str>)> {
    out.iter()
        .map(|t| {
            (String::from_utf8_lossy(t.method.as_deref().unwrap_or_default()).into_owned(),
             String::from_utf8_lossy(&t.url).into_owned(),
             t.status,
             t.error.map(|e| super::ERRORS[usize::from(e)]))
        })
        .collect()
}

fn s(m: &str, u: &str, st: Option<u16>, e: Option<&'static str>) -> (String, String, Option<u16>, Option<&'static str>) {
    (m.into(), u.into(), st, e)
}

#[test]
fn keep_alive_and_pipelining_pair_in_order() {
    let mut c = conn();
    c.data(0, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nHEAD /3 HTTP/1.1\r\n\r\nGET /4 HTTP/1.1\r\n\r\n", 1);
    c.data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\noneHTTP/1.1 404 NF\r\nContent-Length: 4\r\n\r\ntwo!\
HTTP/1.1 200 OK\r\nContent-Length: 9999\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfour", 2);
    let (out, _) = c.take();
    assert_eq!(summary(&out), vec![s("GET", "/1", Some(200), None), s("GET", "/2", Some(404), None),
                                   s("HEAD", "/3", Some(200), None), s("GET", "/4", Some(200), None)]);
    assert_eq!(out[3].resp_body, b"four");
}

#[test]
fn chunked_with_trailers_split_everywhere() {
    let resp: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Checksum: abc\r\n\r\n";
    for i in 1..resp.len() {
        let mut c = conn();
        c.data(0, b"GET / HTTP/1.1\r\n\r\n", 1);
        c.data(1, &resp[..i], 2);
        c.data(1, &resp[i..], 3);
        let (out, _) = c.take();
        assert_eq!(out.len(), 1, "split at {i}");
        assert_eq!(out[0].resp_body, b"hello, world");
        assert_eq!(out[0].resp_size, 12);
        assert!(out[0].resp_headers.iter().any(|(n, v)| n == b"X-Checksum" && v == b"abc"));
    }
}

#[test]
fn interim_head_tunnel_and_close_delimited() {
    let mut c = conn();
    c.data(0, b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", 1);
    c.data(1, b"HTTP/1.1 100 Continue\r\n\r\n", 2);
    c.data(0, b"ab", 3);
    c.data(1, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 4);
    c.data(0, b"GET /eof HTTP/1.0\r\n\r\n", 5);
    c.data(1, b"HTTP/1.0 200 OK\r\n\r\nuntil the end", 6);
    let (out, counts) = c.take();
    assert_eq!(summary(&out), vec![s("PUT", "/f", Some(201), None)]);
    assert!(counts.contains(&("http_interim_responses", 1)));
    c.close();
    let (out, _) = c.take();
    assert_eq!(out[0].resp_body, b"until the end");

    let mut c = conn();
    c.data(0, b"CONNECT h:443 HTTP/1.1\r\n\r\n\x16\x03\x01", 1);
    c.data(1, b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03", 2);
    c.data(0, b"GET / HTTP/1.1\r\n\r\n", 3);
    c.close();
    let (out, counts) = c.take();
    assert_eq!(out[0].upgrade.as_deref(), Some(b"tunnel".as_slice()));
    assert!(counts.contains(&("http_tunnel_bytes_ignored", 3 + 2 + 18)));
    assert_eq!((c.req.mode, c.resp.mode), (Mode::Tunnel, Mode::Tunnel));
}

#[test]
fn gaps_and_garbage_resynchronise() {
    let mut c = conn();
    c.data(0, b"GET /1 HTTP/1.1\r\n\r\n\x00\x01 not http\r\n\r\nGET /2 HTTP/1.1\r\nBad Header\r\n\r\nGET /3 HTTP/1.1\r\n\r\n", 1);
    c.data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2);
    let (out, counts) = c.take();
    assert_eq!(summary(&out), vec![s("GET", "/1", Some(200), None), s("GET", "/2", Some(400), Some("parse_error")),
                                   s("GET", "/3", Some(200), None)]);
    assert!(counts.contains(&("http_parse_error", 2)));
    assert!(counts.contains(&("http_parse_error.invalid_method", 1)));

    let mut c = conn();
    c.data(0, b"GET /a HTTP/1.1\r\n\r\n", 1);
    c.gap(1, 5000);
    c.data(0, b"GET /b HTTP/1.1\r\n\r\n", 2);
    c.data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", 3);
    let (out, _) = c.take();
    assert_eq!(summary(&out), vec![s("GET", "/a", None, Some("gap")), s("GET", "/b", Some(200), None)]);
}

#[test]
fn pending_and_held_are_bounded() {
    let mut c = conn();
    let one: &[u8] = b"GET /x HTTP/1.1\r\n\r\n";
    c.data(0, &one.repeat(super::MAX_PENDING + 5), 1);
    assert_eq!(c.pending.len(), super::MAX_PENDING);
    let (_, counts) = c.take();
    assert!(counts.contains(&("http_pending_dropped", 5)));
    c.close();
    assert_eq!(c.take().0.len(), super::MAX_PENDING);
    assert!(c.txns.is_empty());

    let mut c = conn();
    let mut d = b"CONNECT h:443 HTTP/1.1\r\n\r\n".to_vec();
    d.extend(std::iter::repeat_n(0x16, super::MAX_HELD + 100));
    c.data(0, &d, 1);
    assert_eq!(c.held.len(), super::MAX_HELD);
}

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

const PIECES: [&[u8]; 14] = [
    b"GET /f HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: y\r\n\r\n",
    b"HEAD / HTTP/1.1\r\n\r\n", b"HTTP/1.1 204 No\r\n\r\n", b"HTTP/1.1 100 Continue\r\n\r\n",
    b"CONNECT h:1 HTTP/1.1\r\n\r\n", b"HTTP/1.1 101 S\r\n\r\n",
    b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nclose-delimited", b"\r\n", b"HTTP/1.", b"\x00\xff",
    b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
];

#[test]
fn random_truncated_and_mutated_input_never_panics_and_restores_exactly() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..400 {
        let mut a = Connection::new(0, 7, 7, 256, 1_000_000);
        let mut ts = 0;
        for step in 0..30 {
            ts += 1000;
            let mut chunk = PIECES[(rng(&mut seed) as usize) % PIECES.len()].to_vec();
            match rng(&mut seed) % 4 {
                0 => chunk.truncate((rng(&mut seed) as usize) % (chunk.len() + 1)),
                1 => {
                    let i = (rng(&mut seed) as usize) % chunk.len();
                    chunk[i] = rng(&mut seed) as u8;
                }
                2 => chunk = (0..rng(&mut seed) % 64).map(|_| rng(&mut seed) as u8).collect(),
                _ => {}
            }
            let dir = (rng(&mut seed) % 2) as u8;
            match rng(&mut seed) % 10 {
                0 => a.gap(dir, 1 + rng(&mut seed) % 5000),
                1 => a.tick(ts + (rng(&mut seed) % 100_000_000) as i64),
                _ => a.data(dir, &chunk, ts),
            }
            a.take();
            if step % 7 == 3 {
                let b = state::restore(&state::snapshot(&a, false)).unwrap();
                assert_eq!(a, b);
                a = b;
            }
            assert!(a.txns.len() <= a.pending.len() + 4, "transactions are freed");
        }
        a.close();
        a.take();
        assert!(a.pending.is_empty());
    }
}

#[test]
#[ignore]
fn timing() {
    let req: &[u8] = b"GET /api/v1/items/12345?page=2 HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nAccept-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n";
    let resp: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Type: text/html\r\nContent-Length: 48\r\nConnection: keep-alive\r\n\r\n<html><body><p>item 12345: widget</p></body></html>";
    let mut c = conn();
    let n: u32 = std::env::var("HTTP_TIMING_N").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let t0 = std::time::Instant::now();
    for i in 0..n {
        c.data(0, req, i64::from(i));
        c.data(1, &resp[..resp.len() - 3], i64::from(i));
        c.take();
    }
    eprintln!("{:?} per pair", t0.elapsed() / n);
}

#[test]
#[ignore]
fn timing_parser() {
    use super::parser::{Body, Ev, Kind, Parser};
    let req: &[u8] = b"GET /api/v1/items/12345?page=2 HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nAccept-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n";
    let mut p = Parser::new(Kind::Request, 65536);
    let t0 = std::time::Instant::now();
    let mut n = 0;
    for _ in 0..100_000 {
        let mut pos = 0;
        loop {
            let (ev, at) = p.step(req, pos);
            pos = at;
            match ev {
                Ev::More => break,
                Ev::Head(h) => { n += h.fields.len(); p.set_body(Body::None) }
                _ => {}
            }
        }
    }
    eprintln!("{:?} per request head ({n})", t0.elapsed() / 100_000);
}

/// What the records of `out` say (`redact::shown` with redaction, and every other field):
/// what a worker restored from a redacted checkpoint must reproduce exactly.
pub(super) fn records(out: &[Txn]) -> Vec<String> {
    out.iter()
        .map(|t| {
            let rest = Txn {
                req_headers: Vec::new(),
                resp_headers: Vec::new(),
                url: Vec::new(),
                req_body: Vec::new(),
                resp_body: Vec::new(),
                req_body_redacted: None,
                ..t.clone()
            };
            format!("{:?} {rest:?}", super::redact::shown(t, true))
        })
        .collect()
}

const SECRET_PIECES: [&[u8]; 12] = [
    b"POST /login?access_token=qT0k&x=1 HTTP/1.1\r\nAuthorization: Bearer s3cr3t\r\nCookie: sid=c00k; a\r\n\
Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 47\r\n\r\nuser=a&password=hunter2&card=4111111111111111&",
    b"GET /app;jsessionid=J5?code=abc HTTP/1.1\r\nX-Api-Key: k3y\r\nAuthorization: \xff\xfeBasic x\r\n\r\n",
    b"PUT /j HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"password\": \"p\", \"n\": \"4111 1111 1111 1111\"}",
    b"GET http://u:pw@h/x HTTP/1.1\r\nProxy-Authorization: raw\r\nCookie: =;;b=\xe9\r\n\r\n",
    b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\npay 4111\r\n8\r\n11111111\r\n0\r\nX-Token: t\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nSet-Cookie: s=1; Path=/\r\nSet-Cookie: t=2\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 401 No\r\nWWW-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /?pa%73sword=x HTTP/1.1\r\nCookie: k=v\r\nCookie: m=n\r\n\r\n", b"\r\n", b"\x00garbage",
];

#[test]
fn redacted_checkpoints_give_the_same_records_whatever_the_input() {
    // Two connections get the same random input (secrets, odd encodings, truncation,
    // mutation, gaps, ticks); one is written to a redacted checkpoint and restored after
    // every step: both must give the same records and counters, step by step.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..300 {
        let cap = [7, 16, 64, 65536][round % 4];
        let mut a = Connection::new(0, cap, cap, 512, 1_000_000);
        let mut b = a.clone();
        let mut ts = 0;
        for step in 0..30 {
            ts += 1000;
            let mut chunk = SECRET_PIECES[(rng(&mut seed) as usize) % SECRET_PIECES.len()].to_vec();
            match rng(&mut seed) % 5 {
                0 => chunk.truncate((rng(&mut seed) as usize) % (chunk.len() + 1)),
                1 => chunk = chunk.split_off((rng(&mut seed) as usize) % (chunk.len() + 1)),
                2 => {
                    let i = (rng(&mut seed) as usize) % chunk.len();
                    chunk[i] = rng(&mut seed) as u8;
                }
                _ => {}
            }
            let dir = (rng(&mut seed) % 2) as u8;
            let what = rng(&mut seed) % 12;
            let missing = 1 + rng(&mut seed) % 100;
            let now = ts + (rng(&mut seed) % 3_000_000) as i64;
            for c in [&mut a, &mut b] {
                match what {
                    0 => c.gap(dir, missing),
                    1 => c.tick(now),
                    _ => c.data(dir, &chunk, ts),
                }
            }
            let (out_a, counts_a) = a.take();
            let (out_b, counts_b) = b.take();
            assert_eq!(records(&out_a), records(&out_b), "round {round} step {step}");
            assert_eq!(counts_a, counts_b);
            b = state::restore(&state::snapshot(&b, true)).unwrap();
        }
        a.close();
        b.close();
        assert_eq!(records(&a.take().0), records(&b.take().0), "round {round}: the end");
    }
}

// -- tolerance (issue 18 part 6): start lines Wireshark takes, gaps that tshark pairs over

fn ok(body: &str, status: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

#[test]
fn tolerated_start_lines_pair_and_are_flagged() {
    for (req, resp, method, url, status) in [
        (b"OPTIONS\r\nHost: h\r\n\r\n".as_slice(), ok("x", "200 OK"), "OPTIONS", "", 200),
        (b"GET / HTTP/1.\r\n\r\n", ok("", "400 Bad Request"), "GET", "/", 400),
        (b"GET /scan\r\n\r\n", ok("", "404 Not Found"), "GET", "/scan", 404),
        (b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1. 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(), "GET", "/", 200),
        (b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 302Found\r\nContent-Length: 0\r\n\r\n".to_vec(), "GET", "/", 302),
    ] {
        let mut c = conn();
        c.data(0, req, 1);
        c.data(0, b"GET /next HTTP/1.1\r\n\r\n", 2);
        c.data(1, &resp, 3);
        c.data(1, &ok("n", "200 OK"), 4);
        c.close();
        let (out, counts) = c.take();
        let what = String::from_utf8_lossy(req);
        assert_eq!(summary(&out), vec![s(method, url, Some(status), None), s("GET", "/next", Some(200), None)], "{what}");
        assert!(out[0].malformed && !out[1].malformed, "{what}");
        assert!(counts.contains(&("http_malformed", 1)), "{what}: {counts:?}");
        assert!(!counts.iter().any(|(k, _)| k.starts_with("http_parse_error")), "{what}: {counts:?}");
        let shown = super::redact::shown(&out[0], true);
        assert_eq!(shown.findings & super::redact::HTTP_MALFORMED_BIT, super::redact::HTTP_MALFORMED_BIT);
        assert_eq!(super::redact::shown(&out[1], true).findings, 0);
    }
}

#[test]
fn a_malformed_orphan_or_interim_response_does_not_flag_the_request() {
    let mut c = conn();
    c.data(0, b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n", 1);
    c.data(1, b"HTTP/1. 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 2);
    let (out, counts) = c.take();
    assert_eq!(summary(&out), vec![s("PUT", "/f", Some(201), None)]);
    assert!(!out[0].malformed);
    assert!(counts.contains(&("http_malformed", 1)));
}

/// tshark's pairs for the gap cases (tests/test_l7_tolerance.py checks them against
/// tshark on captures): the client's hole is reported when the server acknowledges past
/// it, which is after the server's answer to the lost request was read.
#[test]
fn a_lost_request_answered_before_its_gap_is_reported_takes_no_slot() {
    // /1 lost; its 200 comes (an orphan), then the gap, then /2 and its 404
    let mut c = conn();
    c.data(1, &ok("one", "200 OK"), 2);
    c.gap(0, 27);
    c.data(0, b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n", 3);
    c.data(1, &ok("two", "404 NF"), 4);
    c.close();
    let (out, counts) = c.take();
    assert_eq!(summary(&out), vec![s("GET", "/2", Some(404), None)]);
    assert!(counts.contains(&("http_lost_requests_answered", 1)), "{counts:?}");
    assert!(counts.contains(&("http_requests_lost_in_gap", 1)));
    assert_eq!(c.orphans, 0);

    // mid-connection: /1 and its 200, /2 lost and its 404 read, /3 and its 500
    let mut c = conn();
    c.data(0, b"GET /1 HTTP/1.1\r\n\r\n", 1);
    c.data(1, &ok("1", "200 OK"), 2);
    c.data(1, &ok("2", "404 NF"), 4);
    c.gap(0, 19);
    c.data(0, b"GET /3 HTTP/1.1\r\n\r\n", 5);
    c.data(1, &ok("3", "500 E"), 6);
    c.close();
    let (out, _) = c.take();
    assert_eq!(summary(&out), vec![s("GET", "/1", Some(200), None), s("GET", "/3", Some(500), None)]);
}

#[test]
fn a_gap_reported_before_the_answer_keeps_its_stand_in() {
    // the other order of the same events: the stand-in takes the lost request's answer
    let mut c = conn();
    c.data(0, b"GET /1 HTTP/1.1\r\n\r\n", 1);
    c.data(1, &ok("1", "200 OK"), 2);
    c.gap(0, 19);
    c.data(1, &ok("2", "404 NF"), 4);
    c.data(0, b"GET /3 HTTP/1.1\r\n\r\n", 5);
    c.data(1, &ok("3", "500 E"), 6);
    c.close();
    let (out, counts) = c.take();
    assert_eq!(summary(&out), vec![s("GET", "/1", Some(200), None), s("GET", "/3", Some(500), None)]);
    assert!(!counts.iter().any(|(k, _)| *k == "http_lost_requests_answered"));
}

#[test]
fn an_orphan_before_a_request_is_no_answer_to_a_later_gap() {
    // a response with nothing asked (a capture starting mid-connection), then a request:
    // a gap after that request is a request of its own, whose answer comes later
    let mut c = conn();
    c.data(1, &ok("?", "200 OK"), 1);
    c.data(0, b"GET /1 HTTP/1.1\r\n\r\n", 2);
    assert_eq!(c.orphans, 0);
    c.gap(0, 19);
    c.data(0, b"GET /3 HTTP/1.1\r\n\r\n", 3);
    c.data(1, &[ok("1", "200 OK"), ok("2", "404 NF"), ok("3", "500 E")].concat(), 4);
    c.close();
    let (out, _) = c.take();
    assert_eq!(summary(&out), vec![s("GET", "/1", Some(200), None), s("GET", "/3", Some(500), None)]);
}

#[test]
fn every_gap_case_survives_a_checkpoint_at_every_step() {
    // the orphan count is state: a snapshot between the answer and the gap keeps it
    type Step = Box<dyn Fn(&mut Connection)>;
    let steps: Vec<Step> = vec![
        Box::new(|c| c.data(0, b"GET /1 HTTP/1.1\r\n\r\n", 1)),
        Box::new(|c| c.data(1, &ok("1", "200 OK"), 2)),
        Box::new(|c| c.data(1, &ok("2", "404 NF"), 4)),
        Box::new(|c| c.gap(0, 19)),
        Box::new(|c| c.data(0, b"OPTIONS\r\n\r\n", 5)),
        Box::new(|c| c.data(1, &ok("3", "500 E"), 6)),
        Box::new(|c| c.close()),
    ];
    let mut whole = conn();
    let mut expected = Vec::new();
    for step in &steps {
        step(&mut whole);
        expected.extend(whole.take().0);
    }
    assert_eq!(summary(&expected), vec![s("GET", "/1", Some(200), None), s("OPTIONS", "", Some(500), None)]);
    for cut in 0..steps.len() {
        let mut c = conn();
        let mut got = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            if i == cut {
                c = state::restore(&state::snapshot(&c, true)).unwrap();
            }
            step(&mut c);
            got.extend(c.take().0);
        }
        assert_eq!(got, expected, "checkpoint before step {cut}");
    }
}

#[test]
fn resync_finds_tolerated_lines_at_line_starts_only() {
    use super::session::{find_resync, Dir};
    assert_eq!(find_resync(Dir::Req, b"OPTIONS\r\n\r\n", true), Some(0));
    assert_eq!(find_resync(Dir::Req, b"OPTIONS\r\n\r\n", false), None); // mid-line
    assert_eq!(find_resync(Dir::Req, b"body\r\nGET /\r\n", false), Some(6));
    assert_eq!(find_resync(Dir::Req, b"body GET /\r\n", true), None);
    assert_eq!(find_resync(Dir::Req, b"GET /", true), None); // its line end not yet
    // the strict start comes first
    assert_eq!(find_resync(Dir::Req, b"xGET /a HTTP/1.1\r\nGET /\r\n", false), Some(1));
    assert_eq!(find_resync(Dir::Req, b"x\nGET /\r\nGET /a HTTP/1.1\r\n", false), Some(2));
    assert_eq!(find_resync(Dir::Resp, b"yy\r\nHTTP/1. 200 OK\r\n", false), Some(4));
    assert_eq!(find_resync(Dir::Resp, b"yy HTTP/1. 200 OK\r\n", true), None);

    // after a gap, the first line of what follows
    let mut c = conn();
    c.data(0, b"GET /1 HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc", 1);
    c.gap(0, 97);
    c.data(0, b"GET /2\r\n\r\n", 2);
    c.data(1, &[ok("1", "200 OK"), ok("2", "404 NF")].concat(), 3);
    c.close();
    let (out, _) = c.take();
    assert_eq!(summary(&out), vec![s("GET", "/1", Some(200), Some("gap")), s("GET", "/2", Some(404), None)]);
}
