//! The text of an Avro `bytes` value (a captured HTTP body) for people, as a JSON string
//! literal: UTF-8 with each undecodable sequence replaced by U+FFFD, then escaped.
//!
//! Takes bytes, gives the JSON literal of their text exactly as `json.dumps(b.decode(
//! "utf-8", "replace"), ensure_ascii=False)` and orjson write it. `sinks/jsonl.py`
//! writes the bodies of every `wire.transactions` record of an `analyze --out` run as
//! text; decoding 64 KB bodies in Python and re-encoding the `str` with orjson was ~2 s
//! of a bench run, the literal made here in one pass is handed to orjson as a
//! `Fragment`. (Only the literal: a Python `str` made from Rust text is decoded again by
//! CPython, slower than its own `decode`.)
//!
//! Replacement rule (Unicode's "maximal subpart" practice, which CPython's UTF-8 decoder
//! and Rust's [`std::str::Utf8Chunks`] both follow): one U+FFFD per maximal prefix of a
//! well-formed sequence that is cut short or continued wrongly (`E2 82 41` -> U+FFFD `A`),
//! one per byte that cannot start a sequence (a lone continuation byte, `C0`, `C1`,
//! `F5`-`FF`); surrogates (`ED A0`-`ED BF`) and overlong forms are not well-formed.
//! `tests/test_analyze_output.py` checks it against Python on random bytes.
//!
//! Escapes (JSON, RFC 8259, as `json` and orjson write them): `"` and `\` backslashed,
//! `\b \t \n \f \r` by name, the other controls below U+0020 as `\u00xx` (lowercase
//! hex); everything else, DEL and non-ASCII included, as it is.

const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether a byte is written as it is: ASCII, not a control, not `"` or `\`.
const fn plain(c: u8) -> bool {
    c >= 0x20 && c < 0x80 && c != b'"' && c != b'\\'
}

/// Whether each of the 8 bytes of `w`, all ASCII (the caller has checked that no byte
/// has its high bit), is [`plain`]: none below 0x20, no `"`, no `\` (the usual "has a
/// zero byte" bit tricks, exact about whether there is one for ASCII bytes).
#[inline]
fn ascii_word_is_plain(w: u64) -> bool {
    let below_space = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let s = w ^ (ONES * u64::from(b'\\'));
    let backslash = s.wrapping_sub(ONES) & !s;
    (below_space | quote | backslash) & HIGHS == 0
}

/// What a byte asks of the byte after it to lead a multi-byte sequence: that byte minus
/// `second` must be below `span` (one unsigned compare: a range check without two
/// branches), and the sequence is then `len` bytes long (Unicode 15, table 3-7). A byte
/// that cannot lead one (ASCII, a continuation byte, `C0`, `C1`, `F5`-`FF`) has span 0:
/// no byte passes.
#[derive(Clone, Copy)]
struct Lead {
    second: u8,
    span: u8,
    len: u8,
}

const fn lead(c: u8) -> Lead {
    let (lo, hi, len) = match c {
        0xC2..=0xDF => (0x80, 0xBF, 2),
        0xE0 => (0xA0, 0xBF, 3), // no overlong forms
        0xE1..=0xEC | 0xEE..=0xEF => (0x80, 0xBF, 3),
        0xED => (0x80, 0x9F, 3), // no surrogates
        0xF0 => (0x90, 0xBF, 4),
        0xF1..=0xF3 => (0x80, 0xBF, 4),
        0xF4 => (0x80, 0x8F, 4), // nothing above U+10FFFF
        _ => return Lead { second: 0, span: 0, len: 1 },
    };
    Lead { second: lo, span: hi - lo + 1, len }
}

const fn leads() -> [Lead; 256] {
    let mut t = [Lead { second: 0, span: 0, len: 1 }; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = lead(c as u8);
        c += 1;
    }
    t
}

static LEADS: [Lead; 256] = leads();

/// What one byte that is not part of a valid multi-byte sequence is written as: up to 6
/// bytes (`\u00xx`), padded to 8 so that it is one fixed-size copy, and their count.
type Entry = ([u8; 8], usize);

const fn entry(c: u8) -> Entry {
    let mut e = [0u8; 8];
    if c >= 0x80 {
        // a byte that does not lead a valid sequence: U+FFFD
        e[0] = 0xEF;
        e[1] = 0xBF;
        e[2] = 0xBD;
        return (e, 3);
    }
    if plain(c) {
        e[0] = c;
        return (e, 1);
    }
    e[0] = b'\\';
    let named = match c {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        b'\t' => b't',
        b'\n' => b'n',
        0x0C => b'f',
        b'\r' => b'r',
        _ => 0,
    };
    if named != 0 {
        e[1] = named;
        return (e, 2);
    }
    let digits = b"0123456789abcdef";
    e[1] = b'u';
    e[2] = b'0';
    e[3] = b'0';
    e[4] = digits[(c >> 4) as usize];
    e[5] = digits[(c & 0xF) as usize];
    (e, 6)
}

const fn table() -> [Entry; 256] {
    let mut t = [([0u8; 8], 0usize); 256];
    let mut c = 0;
    while c < 256 {
        t[c] = entry(c as u8);
        c += 1;
    }
    t
}

static ESCAPED: [Entry; 256] = table();

/// Append the text of `b` to `out` (UTF-8), each maximal invalid subpart replaced by
/// U+FFFD, each character JSON escapes escaped. One pass; 8 bytes at a
/// time over plain ASCII; every other byte but the lead of a valid-looking multi-byte
/// sequence is one table lookup and one fixed-size copy, without a branch on its value.
/// A random (binary, compressed) body is half invalid bytes and controls, and a fifth of
/// its bytes are leads: branches on each byte's value were mispredicted at every other
/// byte (18 ns a byte, twice `String::from_utf8_lossy`, which escapes nothing); then a
/// branch on "is a lead" at every fifth (7-10 ns); now the one branch is on "a lead whose
/// second byte fits", taken at one byte in twenty of random data (3-4.5 ns a byte;
/// `cargo test --release --lib timing_of_a_64kb_body -- --ignored --nocapture`).
fn decode(b: &[u8], out: &mut Vec<u8>) {
    let table = &ESCAPED;
    // the most a byte can become (`\u00xx`), and the fixed copy's 8 bytes of room
    let start = out.len();
    let room = b.len().saturating_mul(6).saturating_add(8);
    out.resize(start.saturating_add(room), 0);
    let mut o = start;
    let mut i = 0;
    while i < b.len() {
        if let Some(w) = crate::bytes::array::<8>(b, i) {
            let x = u64::from_le_bytes(w);
            if x & HIGHS == 0 {
                // 8 ASCII bytes: copied at once when none needs escaping, else each by
                // the table, all 8 without looking at the word again (JSON bodies have a
                // quote every few bytes: 2-3 -> 1-1.7 ns a byte)
                if ascii_word_is_plain(x) {
                    if let Some(dst) = out.get_mut(o..o + 8) {
                        dst.copy_from_slice(&w);
                    }
                    o += 8;
                } else {
                    for c in w {
                        let (bytes, n) = &table[usize::from(c)];
                        if let Some(dst) = out.get_mut(o..o + 8) {
                            dst.copy_from_slice(bytes);
                        }
                        o += n;
                    }
                }
                i += 8;
                continue;
            }
        }
        let c = b.get(i).copied().unwrap_or(0);
        let Lead { second, span, len } = LEADS[usize::from(c)];
        if b.get(i + 1).copied().unwrap_or(0).wrapping_sub(second) < span {
            // the lead of a multi-byte sequence, its second byte right: valid, or its
            // maximal valid prefix is one U+FFFD, as CPython's decoder and Rust's
            // Utf8Chunks have it (a lead with a wrong second byte is a prefix of one byte:
            // the table's U+FFFD below, as for any byte that leads nothing)
            let len = usize::from(len);
            let mut k = 2;
            while k < len && (0x80..=0xBF).contains(&b.get(i + k).copied().unwrap_or(0)) {
                k += 1;
            }
            if k == len {
                if let (Some(dst), Some(src)) = (out.get_mut(o..o + len), b.get(i..i + len)) {
                    dst.copy_from_slice(src);
                }
                o += len;
            } else {
                if let Some(dst) = out.get_mut(o..o + 3) {
                    dst.copy_from_slice(REPLACEMENT);
                }
                o += 3;
            }
            i += k;
            continue;
        }
        let (bytes, n) = &table[usize::from(c)];
        if let Some(dst) = out.get_mut(o..o + 8) {
            dst.copy_from_slice(bytes);
        }
        o += n;
        i += 1;
    }
    out.truncate(o);
}

/// Append the JSON string literal (quotes included) of the text of `b`.
pub fn json_string(b: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    // A short text with nothing to escape (a field name, a method, an address) is copied
    // as it is: `decode` would make room for 6 bytes a byte first.
    if b.len() <= 32 && b.iter().all(|&c| plain(c)) {
        out.extend_from_slice(b);
    } else {
        decode(b, out);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(b: &[u8]) -> String {
        let mut out = Vec::new();
        json_string(b, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn text(b: &[u8]) -> String {
        serde_json::from_str(&lit(b)).unwrap()
    }

    #[test]
    fn replacement_follows_maximal_subparts() {
        assert_eq!(text(b"ab"), "ab");
        assert_eq!(text(b"\xe2\x82A"), "\u{FFFD}A");
        assert_eq!(text(b"\xed\xa0\x80"), "\u{FFFD}\u{FFFD}\u{FFFD}");
        assert_eq!(text(b"\xc0\xaf"), "\u{FFFD}\u{FFFD}");
        assert_eq!(text(b"\xf0\x9f\x98"), "\u{FFFD}");
        assert_eq!(text(b"\xff\x80"), "\u{FFFD}\u{FFFD}");
        assert_eq!(text(b"\xf4\x90\x80\x80\xf0\x9f\x98\x80"), "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{1F600}");
    }

    #[test]
    fn literals_escape_as_json_does() {
        assert_eq!(lit(b""), "\"\"");
        assert_eq!(lit(b"a\"b\\c/\x7f"), "\"a\\\"b\\\\c/\x7f\"");
        assert_eq!(lit(b"\x00\x08\t\n\x0b\x0c\r\x1f"), "\"\\u0000\\b\\t\\n\\u000b\\f\\r\\u001f\"");
        assert_eq!(lit("é\u{2028}".as_bytes()), "\"é\u{2028}\"");
        assert_eq!(lit(b"\n\xff\n"), "\"\\n\u{FFFD}\\n\"");
    }

    /// The literal as the definition has it: Rust's lossy decoding (maximal subparts,
    /// as CPython), then JSON's escapes.
    fn reference(b: &[u8]) -> String {
        let mut want = String::from("\"");
        for ch in String::from_utf8_lossy(b).chars() {
            match ch {
                '"' => want.push_str("\\\""),
                '\\' => want.push_str("\\\\"),
                '\u{8}' => want.push_str("\\b"),
                '\t' => want.push_str("\\t"),
                '\n' => want.push_str("\\n"),
                '\u{c}' => want.push_str("\\f"),
                '\r' => want.push_str("\\r"),
                c if (c as u32) < 0x20 => want.push_str(&format!("\\u{:04x}", c as u32)),
                c => want.push(c),
            }
        }
        want.push('"');
        want
    }

    #[test]
    fn long_texts_that_grow_many_times_their_size() {
        // all escapes (6 bytes a byte), all invalid (3), mixed with plain runs and valid
        // sequences: the room made as the text grows must always be enough
        let mut rng = crate::test_rng::XorShift(0x2545_f491_4f6c_dd1d);
        let pieces: [&[u8]; 7] = [b"\x01", b"\"", b"\xff", "é".as_bytes(), "\u{1F600}".as_bytes(), b"plain text ", b"\xe2\x82"];
        for round in 0..300 {
            let len = rng.below(5000) as usize;
            let mut b = Vec::new();
            while b.len() < len {
                let piece = pieces[rng.below(pieces.len() as u64) as usize];
                for _ in 0..1 + rng.below(40) {
                    b.extend_from_slice(piece);
                }
            }
            assert_eq!(lit(&b), reference(&b), "round {round}");
            // and after something already in the buffer
            let mut out = b"prefix".to_vec();
            json_string(&b, &mut out);
            assert_eq!(out.get(..6), Some(&b"prefix"[..]));
            assert_eq!(String::from_utf8(out[6..].to_vec()).unwrap(), reference(&b));
        }
        assert_eq!(lit(&[1u8; 10_000]), reference(&[1u8; 10_000]));
    }

    #[test]
    fn every_lead_with_every_second_byte() {
        // each byte at or above 0x80, followed by every byte, then third and fourth
        // bytes inside and outside the continuation range, and cut short at each length
        for c in 0x80..=0xFFu8 {
            assert_eq!(lit(&[c]), reference(&[c]), "{c:02x}");
            for n in 0..=0xFFu8 {
                assert_eq!(lit(&[c, n]), reference(&[c, n]), "{c:02x} {n:02x}");
                for t in [0x41, 0x7F, 0x80, 0x9F, 0xA0, 0xBF, 0xC0, 0xF0] {
                    for b in [vec![c, n, t], vec![c, n, t, 0x80], vec![c, n, t, 0xC3], vec![b'x', c, n, t, 0xBF, b'y']] {
                        assert_eq!(lit(&b), reference(&b), "{b:02x?}");
                    }
                }
            }
        }
    }

    #[test]
    fn escapes_anywhere_in_long_runs() {
        // every position of a word, and words on either side of it
        let base = b"abcdefghijklmnopqrstuvwxyz0123456789".to_vec();
        for special in [b'"', b'\\', b'\n', 0x00, 0x1F, 0x7F, 0x20, 0xFF] {
            for at in 0..base.len() {
                let mut b = base.clone();
                b[at] = special;
                let mut want = String::from("\"");
                for ch in String::from_utf8_lossy(&b).chars() {
                    match ch {
                        '"' => want.push_str("\\\""),
                        '\\' => want.push_str("\\\\"),
                        '\n' => want.push_str("\\n"),
                        c if (c as u32) < 0x20 => want.push_str(&format!("\\u{:04x}", c as u32)),
                        c => want.push(c),
                    }
                }
                want.push('"');
                assert_eq!(lit(&b), want, "{special} at {at}");
            }
        }
    }

    #[test]
    fn random_bytes_give_valid_utf8_literals() {
        let mut state = 0x1234_5678_9ABC_DEF1u64;
        for _ in 0..20_000 {
            let b: Vec<u8> = (0..(state % 50))
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            state = state.wrapping_add(1);
            assert_eq!(text(&b), String::from_utf8_lossy(&b));
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test --release timing -- --ignored --nocapture`: ns per byte.
    #[test]
    #[ignore]
    fn timing_of_a_64kb_body() {
        let mut state = 0x1234_5678_9ABC_DEF1u64;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let text = b"wirestream benchmark payload 0123456789 abcdefghijklmnopqrstuvwxyz\n".repeat(1000);
        let json = br#"{"id":"3f2a9c1e-7b4d-4e8a-9c3f-1a2b3c4d5e6f","date":"2026-12-06","v":[1,2,3]}"#.repeat(800);
        for (name, b) in [("random", &random), ("text", &text), ("json", &json)] {
            let mut out = Vec::new();
            let t = std::time::Instant::now();
            for _ in 0..100 {
                out.clear();
                json_string(b, &mut out);
            }
            let json = t.elapsed().as_nanos() as f64 / 100.0 / b.len() as f64;
            let t = std::time::Instant::now();
            let mut n = 0;
            for _ in 0..100 {
                n += String::from_utf8_lossy(b).len();
            }
            let std = t.elapsed().as_nanos() as f64 / 100.0 / b.len() as f64;
            println!("{name}: json_string {json:.2} ns/byte, from_utf8_lossy {std:.2} ns/byte ({n})");
        }
    }
}

