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

/// What the builder hands back for a value: nothing of its text (that is already in
/// the line); for a container, whether a member was written yet (the next one is then
/// preceded by a comma) and the byte that closes it.
pub struct Mark {
    empty: bool,
    close: u8,
}

const SCALAR: Mark = Mark { empty: true, close: 0 };

/// The builder of a JSON line: writes each value into one buffer as the reader meets it
/// (a key before its value, a container's closing byte after its last member: the
/// reader's `before_*` and `end` calls), so that no value has a buffer of its own and
/// no text is copied again into its parent's (a connection record's ~100 small fields
/// were as many allocations and copies: 10–13 µs a line through `AvroReader.json_line`,
/// 5–7 now).
#[derive(Default)]
pub struct JsonLine {
    /// The text written so far: after `Reader::read`, the record's JSON (no newline).
    pub out: Vec<u8>,
}

impl JsonLine {
    fn open(&mut self, start: u8, close: u8) -> Mark {
        self.out.push(start);
        Mark { empty: true, close }
    }

    fn member(&mut self, container: &mut Mark) {
        if !container.empty {
            self.out.push(b',');
        }
        container.empty = false;
    }
}

impl Build for JsonLine {
    type Value = Mark;
    type Error = Infallible;

    fn null(&mut self) -> Result<Mark, Infallible> {
        self.out.extend_from_slice(b"null");
        Ok(SCALAR)
    }
    fn boolean(&mut self, b: bool) -> Result<Mark, Infallible> {
        self.out.extend_from_slice(if b { b"true" } else { b"false" });
        Ok(SCALAR)
    }
    fn long(&mut self, n: i64) -> Result<Mark, Infallible> {
        decimal(n, &mut self.out);
        Ok(SCALAR)
    }
    fn double(&mut self, x: f64) -> Result<Mark, Infallible> {
        python_float(x, &mut self.out);
        Ok(SCALAR)
    }
    fn string(&mut self, s: &str) -> Result<Mark, Infallible> {
        json_string(s.as_bytes(), &mut self.out);
        Ok(SCALAR)
    }
    fn bytes(&mut self, b: &[u8]) -> Result<Mark, Infallible> {
        json_string(b, &mut self.out);
        Ok(SCALAR)
    }
    fn symbol(&mut self, s: &str) -> Result<Mark, Infallible> {
        self.string(s)
    }
    fn list(&mut self) -> Result<Mark, Infallible> {
        Ok(self.open(b'[', b']'))
    }
    fn push(&mut self, _list: &mut Mark, _item: Mark) -> Result<(), Infallible> {
        Ok(())
    }
    fn map(&mut self) -> Result<Mark, Infallible> {
        Ok(self.open(b'{', b'}'))
    }
    fn insert(&mut self, _map: &mut Mark, _key: &str, _value: Mark) -> Result<(), Infallible> {
        Ok(())
    }
    fn record(&mut self) -> Result<Mark, Infallible> {
        Ok(self.open(b'{', b'}'))
    }
    fn set(&mut self, _record: &mut Mark, _id: usize, _name: &str, _value: Mark) -> Result<(), Infallible> {
        Ok(())
    }
    fn before_field(&mut self, record: &mut Mark, name: &str) -> Result<(), Infallible> {
        self.member(record);
        json_string(name.as_bytes(), &mut self.out);
        self.out.push(b':');
        Ok(())
    }
    fn before_item(&mut self, list: &mut Mark) -> Result<(), Infallible> {
        self.member(list);
        Ok(())
    }
    fn before_entry(&mut self, map: &mut Mark, key: &str) -> Result<(), Infallible> {
        self.before_field(map, key)
    }
    fn end(&mut self, container: &mut Mark) -> Result<(), Infallible> {
        if container.close != 0 {
            self.out.push(container.close);
        }
        Ok(())
    }
}

/// `n` in decimal, as `write!("{n}")` writes it without the formatting machinery (most
/// of a connection record's ~100 fields are integers).
fn decimal(n: i64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            *d = b'0' + (m % 10) as u8;
        }
        m /= 10;
        if m == 0 || i == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(digits.get(i..).unwrap_or_default());
}

/// The JSON line (newline included) of the body at `data[offset]`, read by `reader`,
/// into `out` (cleared first: a caller writing many lines keeps one buffer).
pub fn json_line<'a>(reader: &crate::avro_read::Reader, data: &[u8], offset: usize, out: &'a mut Vec<u8>)
    -> Result<&'a [u8], crate::avro_read::ReadError<Infallible>> {
    out.clear();
    let mut line = JsonLine { out: std::mem::take(out) };
    let read = reader.read(data, offset, &mut line);
    *out = line.out;
    read?;
    out.push(b'\n');
    Ok(out)
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
///
/// A tie needs two strings of that length to read back as `x`, which two strings of 15
/// digits or fewer never do (they are further apart than two normal doubles are); so the
/// exact string is only made for 16 and 17 digits, and for subnormal numbers.
fn python_digits(x: f64) -> String {
    let shortest = format!("{x:e}");
    let digits = shortest.split('e').next().unwrap_or("").bytes().filter(u8::is_ascii_digit).count();
    if digits <= 15 && x >= f64::MIN_POSITIVE {
        return shortest;
    }
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
    fn the_exact_digits_are_only_needed_past_15() {
        // python_digits skips the correctly rounded string below 16 digits: the full
        // comparison, on doubles of every exponent and of few digits, never picks it there
        let mut rng = crate::test_rng::XorShift(0x2545_F491_4F6C_DD1D);
        for k in 0..300_000 {
            let x = match k % 3 {
                0 => f64::from_bits(rng.next_u64() >> 1),
                1 => (rng.below(1 << 40) as f64) / 10f64.powi(rng.below(30) as i32),
                _ => (rng.below(100_000) as f64) * 2f64.powi(rng.below(200) as i32 - 100),
            };
            if !x.is_finite() || x <= 0.0 {
                continue;
            }
            let shortest = format!("{x:e}");
            let digits = shortest.split('e').next().unwrap().bytes().filter(u8::is_ascii_digit).count();
            let rounded = format!("{:.*e}", digits - 1, x);
            let full = if rounded != shortest && rounded.parse::<f64>() == Ok(x) { rounded } else { shortest };
            assert_eq!(python_digits(x), full, "{x:e}");
        }
    }

    #[test]
    fn integers_as_format_writes_them() {
        let mut rng = crate::test_rng::XorShift(0x9E37_79B9_7F4A_7C15);
        let mut edges = vec![0i64, 1, -1, 9, 10, -10, 99, 100, i64::MAX, i64::MIN, i64::MIN + 1];
        edges.extend((0..19).map(|k| 10i64.pow(k)).flat_map(|p| [p - 1, p, -p, 1 - p]));
        edges.extend((0..100_000).map(|_| rng.next_u64() as i64 >> (rng.below(64) as u32)));
        for n in edges {
            let mut out = b"x".to_vec();
            decimal(n, &mut out);
            assert_eq!(out, format!("x{n}").into_bytes());
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
        let mut out = b"the last line".to_vec();
        let line = json_line(&reader, &body, 0, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(line.to_vec()).unwrap(),
            r#"{"a":-7,"s":"é\"\n","b":"a�","m":{"k\u0001":3,"z":0},"l":[{"x":1.5,"ok":true},{"x":1e-07,"ok":false}],"e":null}"#.to_owned() + "\n"
        );
    }
}
