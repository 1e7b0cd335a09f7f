//! An Avro body straight to its JSON line: the bytes `sinks/jsonl.py`'s `to_json_line`
//! writes for the record the body decodes to, without making the record.
//!
//! `analyze --out` writes every record of a run as a JSON line. Decoding each into a
//! Python dict and encoding that again cost the analyze process ~17 µs per record for the
//! dict and 4–30 µs for the line (bench/README.md); walking the body once on the reader's
//! compiled schema ([`crate::avro_read::Reader`] with this [`Build`]er) gives the line
//! directly.
//!
//! The text is Python's `json.dumps(record, separators=(",", ":"), ensure_ascii=False)`
//! with bytes as their UTF-8 text (`avro_text`): fields and map entries in the body's
//! order, strings escaped as `json` escapes them, integers in decimal, `true`/`false`/
//! `null`, and floats as Python's `repr` writes them (the shortest digits that read back
//! the same, exponent form below 1e-4 and from 1e16, `NaN` and `Infinity` as `json`
//! writes them). `tests/test_analyze_output.py` checks it against `to_json_line` on the
//! records of real captures and on random floats.

use std::convert::Infallible;
use std::io::Write;

use crate::avro_read::Build;
use crate::avro_text::json_string;

/// A value's JSON text; a container's until it is closed by its parent (or the caller).
pub struct Piece {
    text: Vec<u8>,
    /// The byte that closes it (`]` or `}`), 0 for a scalar.
    close: u8,
    empty: bool,
}

impl Piece {
    fn scalar(text: Vec<u8>) -> Piece {
        Piece { text, close: 0, empty: true }
    }

    fn open(start: u8, close: u8) -> Piece {
        Piece { text: vec![start], close, empty: true }
    }

    /// The finished text (a container closed).
    pub fn finish(mut self) -> Vec<u8> {
        if self.close != 0 {
            self.text.push(self.close);
        }
        self.text
    }

    fn append(&mut self, key: Option<&[u8]>, value: Piece) {
        if !self.empty {
            self.text.push(b',');
        }
        self.empty = false;
        if let Some(key) = key {
            json_string(key, &mut self.text);
            self.text.push(b':');
        }
        self.text.extend_from_slice(&value.text);
        if value.close != 0 {
            self.text.push(value.close);
        }
    }
}

/// The builder of JSON text.
pub struct JsonLine;

impl Build for JsonLine {
    type Value = Piece;
    type Error = Infallible;

    fn null(&mut self) -> Result<Piece, Infallible> {
        Ok(Piece::scalar(b"null".to_vec()))
    }
    fn boolean(&mut self, b: bool) -> Result<Piece, Infallible> {
        Ok(Piece::scalar(if b { b"true".to_vec() } else { b"false".to_vec() }))
    }
    fn long(&mut self, n: i64) -> Result<Piece, Infallible> {
        let mut text = Vec::with_capacity(20);
        let _ = write!(text, "{n}");
        Ok(Piece::scalar(text))
    }
    fn double(&mut self, x: f64) -> Result<Piece, Infallible> {
        let mut text = Vec::with_capacity(24);
        python_float(x, &mut text);
        Ok(Piece::scalar(text))
    }
    fn string(&mut self, s: &str) -> Result<Piece, Infallible> {
        let mut text = Vec::with_capacity(s.len() + 2);
        json_string(s.as_bytes(), &mut text);
        Ok(Piece::scalar(text))
    }
    fn bytes(&mut self, b: &[u8]) -> Result<Piece, Infallible> {
        let mut text = Vec::with_capacity(b.len() + 2);
        json_string(b, &mut text);
        Ok(Piece::scalar(text))
    }
    fn symbol(&mut self, s: &str) -> Result<Piece, Infallible> {
        self.string(s)
    }
    fn list(&mut self) -> Result<Piece, Infallible> {
        Ok(Piece::open(b'[', b']'))
    }
    fn push(&mut self, list: &mut Piece, item: Piece) -> Result<(), Infallible> {
        list.append(None, item);
        Ok(())
    }
    fn map(&mut self) -> Result<Piece, Infallible> {
        Ok(Piece::open(b'{', b'}'))
    }
    fn insert(&mut self, map: &mut Piece, key: &str, value: Piece) -> Result<(), Infallible> {
        map.append(Some(key.as_bytes()), value);
        Ok(())
    }
    fn record(&mut self) -> Result<Piece, Infallible> {
        Ok(Piece::open(b'{', b'}'))
    }
    fn set(&mut self, record: &mut Piece, _id: usize, name: &str, value: Piece) -> Result<(), Infallible> {
        record.append(Some(name.as_bytes()), value);
        Ok(())
    }
}

/// `x` as Python's `repr` (and `json.dumps`) writes it.
///
/// Python (`float_repr_style` "short") writes the shortest digits that read back as the
/// same double, as Rust's `{:e}` does; it places the decimal point itself when the
/// exponent `e` of `d.ddd × 10^e` is in -4..16 (`1e-05`, `0.0001`, `1000000000000000.0`,
/// `1e+16`), with `.0` after a whole number, and otherwise writes `d.ddde±XX` with at
/// least two exponent digits. `json` writes the non-finite ones as `NaN`, `Infinity`,
/// `-Infinity`.
pub fn python_float(x: f64, out: &mut Vec<u8>) {
    if x.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if x.is_infinite() {
        out.extend_from_slice(if x > 0.0 { b"Infinity" } else { b"-Infinity" });
        return;
    }
    if x == 0.0 {
        out.extend_from_slice(if x.is_sign_negative() { b"-0.0" } else { b"0.0" });
        return;
    }
    let sci = python_digits(x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    if x < 0.0 {
        out.push(b'-');
    }
    if !(-4..16).contains(&exp) {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs());
    } else if exp >= 0 {
        let whole = exp as usize + 1;
        if digits.len() <= whole {
            out.extend_from_slice(&digits);
            out.extend(std::iter::repeat_n(b'0', whole - digits.len()));
            out.extend_from_slice(b".0");
        } else {
            out.extend_from_slice(&digits[..whole]);
            out.push(b'.');
            out.extend_from_slice(&digits[whole..]);
        }
    } else {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', (-exp - 1) as usize));
        out.extend_from_slice(&digits);
    }
}

/// The shortest digits of `x` (> 0) that read back as `x`, in `{:e}` form ("1.2345e-7"),
/// as Python chooses them. Rust's `{:e}` gives digits of that length that read back, but
/// when `x` lies exactly halfway between two such strings (562949953421312.25) it may
/// take the upper one, where Python takes the correctly rounded one (ties to even:
/// 562949953421312.2). So the correctly rounded string of that length (`{:.N$e}`, exact,
/// ties to even, as Python's `%e`) is taken whenever it reads back as `x` too.
fn python_digits(x: f64) -> String {
    let shortest = format!("{x:e}");
    let digits = shortest.split('e').next().unwrap_or("").bytes().filter(u8::is_ascii_digit).count();
    let rounded = format!("{:.*e}", digits.saturating_sub(1), x);
    if rounded != shortest && rounded.parse::<f64>() == Ok(x) {
        rounded
    } else {
        shortest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::Writer;
    use crate::avro_read::Reader;

    fn float(x: f64) -> String {
        let mut out = Vec::new();
        python_float(x, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn floats_as_python_writes_them() {
        // (each checked against CPython 3.11's repr)
        for (x, want) in [
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (2.5e-7, "2.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (123456.789, "123456.789"),
            (1e100, "1e+100"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (0.3333333333333333, "0.3333333333333333"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
            (100.0, "100.0"),
            (0.02, "0.02"),
            (2f64.powi(49) + 0.25, "562949953421312.2"), // a tie: Python rounds it to even
            (1e23, "1e+23"),
            (2f64.powi(53), "9007199254740992.0"),
        ] {
            assert_eq!(float(x), want, "{x:e}");
        }
    }

    #[test]
    fn a_body_gives_the_line_python_writes() {
        let schema = serde_json::json!({"type": "record", "name": "R", "fields": [
            {"name": "a", "type": "long"},
            {"name": "s", "type": ["null", "string"]},
            {"name": "b", "type": "bytes"},
            {"name": "m", "type": {"type": "map", "values": "long"}},
            {"name": "l", "type": {"type": "array", "items": {"type": "record", "name": "I",
                "fields": [{"name": "x", "type": "double"}, {"name": "ok", "type": "boolean"}]}}},
            {"name": "e", "type": ["null", "double"]}
        ]});
        let writer = Writer::new(&schema).unwrap();
        let datum = serde_json::json!({"a": -7, "s": "é\"\n", "b": "a\u{00ff}", "m": {"k\u{1}": 3, "z": 0},
                                        "l": [{"x": 1.5, "ok": true}, {"x": 1e-7, "ok": false}], "e": null});
        let mut body = Vec::new();
        writer.encode(&datum, &mut body).unwrap();
        let reader = Reader::new(writer, None).unwrap();
        let line = reader.read(&body, 0, &mut JsonLine).unwrap().finish();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            r#"{"a":-7,"s":"é\"\n","b":"a�","m":{"k\u0001":3,"z":0},"l":[{"x":1.5,"ok":true},{"x":1e-07,"ok":false}],"e":null}"#
        );
    }
}
