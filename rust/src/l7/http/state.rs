//! One HTTP connection's state as bytes (a checkpoint's part), and back.
//!
//! `WSHT`, a version (u16 BE), the CRC-32 of the body (u32 BE), then the body: every
//! field of the [`Connection`] (its sides, their parsers, the queued and in-progress
//! transactions), little-endian, in a fixed order (an option is a presence byte, then its
//! value; bytes are a u64 length, then the bytes). The parser state is plain data, so a
//! restore continues exactly where the snapshot was, in the middle of a head or a body of
//! any length (the Python analyser had to replay logged bytes into a fresh llhttp
//! parser). Decoding checks every length against what is left and every tag, so bytes
//! that are not such a state give an error, never a panic or an unbounded allocation.
//! Taken between calls, when no completed transaction or counter is waiting to be taken.
//!
//! When the connection's records are redacted, so is what is final of its transactions
//! ([`redact::at_rest`]: the values of sensitive headers, the targets, the bodies of
//! requests that have ended, as their records will show them), so that a checkpoint holds
//! no more in clear than it must: the parsers' partial heads, bodies still arriving,
//! resync tails and held bytes stay as sent (redacting them would change what the
//! restored parser reads; docs/checkpoints.md, "What a checkpoint holds").

use std::collections::{BTreeMap, VecDeque};

use super::parser::{Fields, Kind, Parser, St};
use super::redact;
use super::session::{Connection, Mode, Side, Txn, ERRORS};

pub const MAGIC: &[u8; 4] = b"WSHT";
/// Version of this encoding: bump it with any change of the fields (2: a transaction's
/// `req_body_redacted`; 3: a transaction's `malformed` and the connection's `orphans`;
/// versions 1 and 2 are still read: their transactions are as sent, resp. well-formed,
/// and no orphan response is waiting for its lost request).
pub const VERSION: u16 = 3;

use crate::state_bytes::{frame, unframe, Res, R, W};

/// Header fields: a count, then each name and value as bytes.
trait WriteFields {
    fn fields(&mut self, f: &Fields);
}

impl WriteFields for W {
    fn fields(&mut self, f: &Fields) {
        self.u64(f.len() as u64);
        for (n, v) in f {
            self.bytes(n);
            self.bytes(v);
        }
    }
}

trait ReadFields {
    fn fields(&mut self) -> Res<Fields>;
}

impl ReadFields for R<'_> {
    fn fields(&mut self) -> Res<Fields> {
        let n = self.count(16)?;
        let mut f = Vec::with_capacity(n);
        for _ in 0..n {
            f.push((self.bytes()?, self.bytes()?));
        }
        Ok(f)
    }
}

fn write_txn(w: &mut W, t: &Txn, version: u16) {
    w.i64(t.req_ts);
    w.oi64(t.req_end_ts);
    w.obytes(t.method.as_deref());
    w.bytes(&t.url);
    w.b(t.minor.is_some());
    w.u8(t.minor.unwrap_or(0));
    w.fields(&t.req_headers);
    w.bytes(&t.req_body);
    w.u64(t.req_size);
    w.b(t.req_done);
    w.oi64(t.resp_ts);
    w.oi64(t.resp_end_ts);
    w.b(t.status.is_some());
    w.u16(t.status.unwrap_or(0));
    w.fields(&t.resp_headers);
    w.bytes(&t.resp_body);
    w.u64(t.resp_size);
    w.b(t.resp_done);
    w.b(t.error.is_some());
    w.u8(t.error.unwrap_or(0));
    w.obytes(t.upgrade.as_deref());
    w.b(t.emitted);
    w.b(t.orphan);
    w.b(t.queued);
    if version >= 2 {
        w.ou8(t.req_body_redacted);
    }
    if version >= 3 {
        w.b(t.malformed);
    }
}

fn read_txn(r: &mut R<'_>, version: u16) -> Res<Txn> {
    let mut t = Txn {
        req_ts: r.i64()?,
        req_end_ts: r.oi64()?,
        method: r.obytes()?,
        url: r.bytes()?,
        ..Txn::default()
    };
    let some = r.b()?;
    let minor = r.u8()?;
    t.minor = some.then_some(minor);
    t.req_headers = r.fields()?;
    t.req_body = r.bytes()?;
    t.req_size = r.u64()?;
    t.req_done = r.b()?;
    t.resp_ts = r.oi64()?;
    t.resp_end_ts = r.oi64()?;
    let some = r.b()?;
    let status = r.u16()?;
    t.status = some.then_some(status);
    t.resp_headers = r.fields()?;
    t.resp_body = r.bytes()?;
    t.resp_size = r.u64()?;
    t.resp_done = r.b()?;
    let some = r.b()?;
    let error = r.u8()?;
    if usize::from(error) >= ERRORS.len() {
        return Err("bad error code in the HTTP state".into());
    }
    t.error = some.then_some(error);
    t.upgrade = r.obytes()?;
    t.emitted = r.b()?;
    t.orphan = r.b()?;
    t.queued = r.b()?;
    if version >= 2 {
        t.req_body_redacted = r.ou8()?;
        if t.req_body_redacted.is_some_and(|bits| bits & !redact::ALL_FINDINGS != 0) {
            return Err("bad findings in the HTTP state".into());
        }
    }
    if version >= 3 {
        t.malformed = r.b()?;
    }
    Ok(t)
}

fn write_st(w: &mut W, st: St) {
    let (tag, v) = match st {
        St::Idle => (0, 0),
        St::Head => (1, 0),
        St::Decide => (2, 0),
        St::Length(n) => (3, n),
        St::ChunkLine => (4, 0),
        St::ChunkData(n) => (5, n),
        St::ChunkEnd => (6, 0),
        St::Trailers => (7, 0),
        St::Close => (8, 0),
        St::Complete => (9, 0),
        St::Failed => (10, 0),
        St::FailedHead => (11, 0),
    };
    w.u8(tag);
    w.u64(v);
}

fn read_st(r: &mut R<'_>) -> Res<St> {
    let tag = r.u8()?;
    let v = r.u64()?;
    Ok(match tag {
        0 => St::Idle,
        1 => St::Head,
        2 => St::Decide,
        3 => St::Length(v),
        4 => St::ChunkLine,
        5 => St::ChunkData(v),
        6 => St::ChunkEnd,
        7 => St::Trailers,
        8 => St::Close,
        9 => St::Complete,
        10 => St::Failed,
        11 => St::FailedHead,
        t => return Err(format!("bad parser state {t} in the HTTP state")),
    })
}

fn write_side(w: &mut W, s: &Side) {
    write_st(w, s.parser.st);
    w.bytes(&s.parser.buf);
    w.u64(s.parser.line_start as u64);
    w.b(s.parser.colon);
    w.u64(s.parser.max_head as u64);
    w.u8(match s.mode {
        Mode::Parse => 0,
        Mode::Resync => 1,
        Mode::Wait => 2,
        Mode::Tunnel => 3,
    });
    w.ou64(s.cur);
    w.bytes(&s.tail);
    w.i64(s.ts);
    w.i64(s.last_ts);
    w.u64(s.cap);
    w.u16(s.status);
    w.b(s.switch);
    w.b(s.bogus_101);
}

fn read_side(r: &mut R<'_>, kind: Kind) -> Res<Side> {
    let st = read_st(r)?;
    let buf = r.bytes()?;
    let line_start = r.u64()? as usize;
    let colon = r.b()?;
    let max_head = r.u64()? as usize;
    if line_start > buf.len() {
        return Err("bad line start in the HTTP state".into());
    }
    let mode = match r.u8()? {
        0 => Mode::Parse,
        1 => Mode::Resync,
        2 => Mode::Wait,
        3 => Mode::Tunnel,
        t => return Err(format!("bad mode {t} in the HTTP state")),
    };
    Ok(Side {
        parser: Parser { kind, st, buf, line_start, colon, max_head },
        mode,
        cur: r.ou64()?,
        tail: r.bytes()?,
        ts: r.i64()?,
        last_ts: r.i64()?,
        cap: r.u64()?,
        status: r.u16()?,
        switch: r.b()?,
        bogus_101: r.b()?,
    })
}

/// The connection's state as bytes. Take the completed transactions first (`take`).
/// `redact`: the connection's records are redacted; then so is what is final of its
/// transactions (the module doc). The connection itself is not changed.
pub fn snapshot(c: &Connection, redact: bool) -> Vec<u8> {
    encode(c, redact, VERSION)
}

/// [`snapshot`] in the layout of `version` (the tests write version 1 with it).
fn encode(c: &Connection, redact: bool, version: u16) -> Vec<u8> {
    let mut w = W(Vec::with_capacity(256));
    w.u8(c.client);
    w.i64(c.timeout);
    w.u64(c.next_id);
    w.u64(c.txns.len() as u64);
    for (id, t) in &c.txns {
        w.u64(*id);
        match redact.then(|| redact::at_rest(t)).flatten() {
            Some(r) => write_txn(&mut w, &r, version),
            None => write_txn(&mut w, t, version),
        }
    }
    w.u64(c.pending.len() as u64);
    for id in &c.pending {
        w.u64(*id);
    }
    write_side(&mut w, &c.req);
    write_side(&mut w, &c.resp);
    w.bytes(&c.held);
    w.i64(c.held_ts);
    w.ou64(c.wait_txn);
    w.b(c.wait_gap);
    if version >= 3 {
        w.u64(c.orphans);
    }
    frame(MAGIC, version, &w.0)
}

/// A connection from [`snapshot`]'s bytes; an error for anything else.
pub fn restore(data: &[u8]) -> Res<Connection> {
    // the version this build reads that the bytes say (anything else: unframe's error)
    let version = match data.get(4..6) {
        Some(&[0, 1]) => 1,
        Some(&[0, 2]) => 2,
        _ => VERSION,
    };
    let body = unframe("HTTP", MAGIC, version, data)?;
    let mut r = R::new("HTTP", body);
    let client = r.u8()?;
    let timeout = r.i64()?;
    let mut c = Connection::new(client, 0, 0, 0, timeout);
    c.next_id = r.u64()?;
    let n = r.count(100)?;
    let mut txns = BTreeMap::new();
    for _ in 0..n {
        let id = r.u64()?;
        if id >= c.next_id || txns.contains_key(&id) {
            return Err("bad transaction id in the HTTP state".into());
        }
        txns.insert(id, Box::new(read_txn(&mut r, version)?));
    }
    let known = |id: u64| -> Res<u64> {
        if txns.contains_key(&id) {
            Ok(id)
        } else {
            Err("an unknown transaction in the HTTP state".into())
        }
    };
    let n = r.count(8)?;
    let mut pending = VecDeque::with_capacity(n);
    for _ in 0..n {
        pending.push_back(known(r.u64()?)?);
    }
    let req = read_side(&mut r, Kind::Request)?;
    let resp = read_side(&mut r, Kind::Response)?;
    for id in [req.cur, resp.cur].into_iter().flatten() {
        known(id)?;
    }
    c.held = r.bytes()?;
    c.held_ts = r.i64()?;
    c.wait_txn = r.ou64()?.map(known).transpose()?;
    c.wait_gap = r.b()?;
    if version >= 3 {
        c.orphans = r.u64()?;
    }
    if r.at != body.len() {
        return Err("trailing bytes after the HTTP state".into());
    }
    c.txns = txns;
    c.pending = pending;
    c.req = req;
    c.resp = resp;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::http::tests::records;

    fn sample() -> Connection {
        let mut c = Connection::new(0, 64, 64, 1024, 1_000_000);
        c.data(0, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", 1);
        c.data(1, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", 2);
        c.take();
        c
    }

    #[test]
    fn round_trip_continues_exactly() {
        let mut a = sample();
        let mut b = restore(&snapshot(&a, false)).unwrap();
        assert_eq!(a, b);
        for c in [&mut a, &mut b] {
            c.data(1, b"lo\r\n0\r\n\r\nHTTP/1.1 204 No\r\n\r\n", 3);
            c.data(0, b"defghij", 4);
        }
        assert_eq!(a.take(), b.take());
        assert_eq!(snapshot(&a, false), snapshot(&b, false));
    }

    #[test]
    fn damage_is_an_error_never_a_panic() {
        for good in [snapshot(&sample(), false), snapshot(&waiting(), true), encode(&waiting(), false, 1)] {
            damage(&good);
        }
    }

    fn damage(good: &[u8]) {
        assert!(restore(good).is_ok());
        for n in 0..good.len() {
            assert!(restore(&good[..n]).is_err());
        }
        let mut seed = 7u64;
        for _ in 0..2000 {
            let mut bad = good.to_vec();
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let i = (seed >> 33) as usize % bad.len();
            bad[i] ^= (seed >> 13) as u8 | 1;
            let _ = restore(&bad); // CRC or structure: an error (or, rarely, a state)
            // the body without the CRC check: every structural check holds too
            let body = &bad[10..];
            let mut fixed = bad[..6].to_vec();
            fixed.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
            fixed.extend_from_slice(body);
            if let Ok(mut c) = restore(&fixed) {
                c.data(0, b"GET / HTTP/1.1\r\n\r\n", 9);
                c.data(1, b"HTTP/1.1 200 OK\r\n\r\n", 9);
                c.close();
            }
        }
    }

    /// A request with credentials, complete and waiting for its response, and a second
    /// one (pipelined) whose head is complete and whose body is still arriving.
    const REQUEST: &[u8] = b"POST /login?access_token=qT0kenInQuery&x=1 HTTP/1.1\r\nHost: shop\r\n\
Authorization: Bearer s3cretBearerValue\r\nCookie: session=c00kieSecret; theme=dark\r\nX-Api-Key: ap1KeySecret\r\n\
Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 59\r\n\r\n\
user=alice&password=hunter2Secret&card=4111111111111111&x=1";
    const SECOND: &[u8] = b"POST /upload HTTP/1.1\r\nAuthorization: Basic dXNlcjpzZWNvbmQ=\r\nContent-Length: 100\r\n\r\n\
password=stillArriving";
    const RESPONSES: &[u8] = b"HTTP/1.1 200 OK\r\nSet-Cookie: next=setC00kie; Path=/\r\nContent-Length: 2\r\n\r\nok\
HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    const FINAL: [&[u8]; 5] = [b"s3cretBearerValue", b"c00kieSecret", b"ap1KeySecret", b"qT0kenInQuery", b"hunter2Secret"];
    const CARD: &[u8] = b"4111111111111111";

    fn has(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn waiting() -> Connection {
        let mut c = Connection::new(0, 65536, 65536, 65536, 60_000_000);
        c.data(0, REQUEST, 1);
        c.data(0, SECOND, 2);
        assert!(c.take().0.is_empty());
        assert_eq!(c.pending.len(), 2);
        c
    }

    #[test]
    fn a_waiting_request_is_held_redacted_and_gives_the_same_record() {
        let live = waiting();
        let clear = snapshot(&live, false);
        let redacted = snapshot(&live, true);
        for secret in FINAL.iter().chain([&CARD, &&b"dXNlcjpzZWNvbmQ="[..]]) {
            assert!(has(&clear, secret), "{}", String::from_utf8_lossy(secret));
            assert!(!has(&redacted, secret), "{}", String::from_utf8_lossy(secret));
        }
        // what the records will show instead, and what stays: the body still arriving
        for shown in [&b"Bearer [REDACTED]"[..], b"session=[REDACTED]; theme=[REDACTED]", b"access_token=[REDACTED]",
                      b"password=[REDACTED]", b"************1111", b"Basic [REDACTED]", b"password=stillArriving"] {
            assert!(has(&redacted, shown), "{}", String::from_utf8_lossy(shown));
        }
        let mut outs = Vec::new();
        for bytes in [None, Some(clear), Some(redacted.clone())] {
            let mut c = match bytes {
                None => live.clone(),
                Some(b) => restore(&b).unwrap(),
            };
            c.data(0, &[b'x'; 78], 3);
            c.data(1, RESPONSES, 4);
            let (out, _) = c.take();
            assert_eq!(out.len(), 2);
            outs.push(records(&out));
        }
        assert_eq!(outs[0], outs[1]);
        assert_eq!(outs[0], outs[2]);
        // the findings of what was sent are kept: bearer, password in form, card number
        assert!(outs[2][0].contains("findings: 14"), "{}", outs[2][0]);
        // a checkpoint of the restored connection is the same bytes (nothing is redacted twice)
        assert_eq!(snapshot(&restore(&redacted).unwrap(), true), redacted);
        // the connection itself is not changed by a redacted snapshot
        assert_eq!(snapshot(&live, false), snapshot(&waiting(), false));
    }

    #[test]
    fn a_redacted_checkpoint_at_every_byte_gives_the_same_records() {
        let stream: Vec<(u8, &[u8])> = vec![(0, REQUEST), (1, b"HTTP/1.1 100 Continue\r\n\r\n"), (0, SECOND),
                                            (0, &[b'y'; 78]), (1, RESPONSES)];
        let bytes: Vec<(u8, u8)> = stream.iter().flat_map(|&(d, m)| m.iter().map(move |&b| (d, b))).collect();
        let feed = |c: &mut Connection, part: &[(u8, u8)], out: &mut Vec<String>| {
            for run in part.chunk_by(|x, y| x.0 == y.0) {
                let data: Vec<u8> = run.iter().map(|&(_, b)| b).collect();
                c.data(run[0].0, &data, 5);
                out.extend(records(&c.take().0));
            }
        };
        // body caps: whole bodies, and bodies cut inside the password and the card number
        for cap in [65536, 32, 50] {
            let mut expected = Vec::new();
            let mut c = Connection::new(0, cap, cap, 65536, 60_000_000);
            feed(&mut c, &bytes, &mut expected);
            assert_eq!(expected.len(), 2);
            for cut in 0..=bytes.len() {
                let mut got = Vec::new();
                let mut c = Connection::new(0, cap, cap, 65536, 60_000_000);
                feed(&mut c, &bytes[..cut], &mut got);
                let mut c = restore(&snapshot(&c, true)).unwrap();
                feed(&mut c, &bytes[cut..], &mut got);
                assert_eq!(got, expected, "cap {cap}, cut at byte {cut}");
            }
        }
    }

    #[test]
    fn versions_1_and_2_are_still_read() {
        let live = waiting();
        for version in [1u16, 2] {
            let old = encode(&live, false, version);
            assert_eq!(&old[4..6], &version.to_be_bytes());
            assert_eq!(restore(&old).unwrap(), live, "version {version}");
        }
        let mut other = snapshot(&live, false);
        other[4..6].copy_from_slice(&4u16.to_be_bytes());
        let err = restore(&other).unwrap_err();
        assert!(err.contains("version 4") && err.contains("reads only 3"), "{err}");
    }

    #[test]
    fn version_3_keeps_malformed_and_orphans() {
        // a tolerated request line waiting for its answer, an orphan response read
        let mut c = Connection::new(0, 1024, 1024, 8192, 1_000_000);
        c.data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 1);
        c.data(0, b"OPTIONS\r\nHost: h\r\n\r\n", 2);
        let _ = c.take();
        assert!(c.txns.values().any(|t| t.malformed));
        let c2 = restore(&snapshot(&c, false)).unwrap();
        assert_eq!(c2, c);
        // an older version cannot say either: restored as well-formed, no orphan
        let old = restore(&encode(&c, false, 2)).unwrap();
        assert!(!old.txns.values().any(|t| t.malformed));
        let mut c = Connection::new(0, 1024, 1024, 8192, 1_000_000);
        c.data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 1);
        assert_eq!(c.orphans, 1);
        assert_eq!(restore(&snapshot(&c, false)).unwrap().orphans, 1);
        assert_eq!(restore(&encode(&c, false, 2)).unwrap().orphans, 0);
    }
}
