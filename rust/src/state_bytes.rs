//! The byte codec the checkpoint states share (tracker, HTTP, TLS, DNS): a writer, a
//! checked reader, and the envelope around a body.
//!
//! Takes a state module's fields, gives bytes: the envelope is a 4-byte magic, a version
//! (u16 BE) and the CRC-32 of the body (u32 BE), then the body. The body is little-endian
//! (what every machine we run on is, so writing is a copy), in the fixed order the state
//! module writes; an option is a presence byte then its value (fixed-size options always
//! carry the value, zero when absent, so each field has one size; variable ones only when
//! present); bytes are a u64 length then the bytes. Reading checks every length and count
//! against what is left and every flag, so bytes that are not such a state give an error
//! (a `String` naming the state), never a panic and never an allocation larger than the
//! input. Each state module keeps its own magic, version and domain helpers.

pub type Res<T> = Result<T, String>;

/// The body being written.
pub struct W(pub Vec<u8>);

impl W {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn b(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Bytes as they are (no length: the reader knows the size).
    pub fn raw(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    pub fn oi64(&mut self, v: Option<i64>) {
        self.b(v.is_some());
        self.i64(v.unwrap_or(0));
    }
    pub fn ou64(&mut self, v: Option<u64>) {
        self.b(v.is_some());
        self.u64(v.unwrap_or(0));
    }
    pub fn ou8(&mut self, v: Option<u8>) {
        self.b(v.is_some());
        self.u8(v.unwrap_or(0));
    }
    pub fn ou32(&mut self, v: Option<u32>) {
        self.b(v.is_some());
        self.u32(v.unwrap_or(0));
    }
    /// A u64 length, then the bytes.
    pub fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v);
    }
    /// A presence byte, then (only if present) the bytes.
    pub fn obytes(&mut self, v: Option<&[u8]>) {
        self.b(v.is_some());
        if let Some(v) = v {
            self.bytes(v);
        }
    }
    /// A presence byte, then (only if present) the text as bytes.
    pub fn ostr(&mut self, v: Option<&str>) {
        self.obytes(v.map(str::as_bytes));
    }
}

/// A body being read; `what` names the state in errors ("HTTP", "tracker").
pub struct R<'a> {
    what: &'static str,
    pub d: &'a [u8],
    pub at: usize,
}

impl<'a> R<'a> {
    pub fn new(what: &'static str, d: &'a [u8]) -> Self {
        R { what, d, at: 0 }
    }
    /// An error naming this state.
    pub fn err(&self, why: &str) -> String {
        format!("{} state damaged ({why})", self.what)
    }
    /// Whether every byte was read.
    pub fn done(&self) -> bool {
        self.at == self.d.len()
    }
    fn left(&self) -> usize {
        self.d.len().saturating_sub(self.at)
    }
    pub fn take<const N: usize>(&mut self) -> Res<[u8; N]> {
        let v = crate::bytes::array::<N>(self.d, self.at).ok_or_else(|| self.err("truncated"))?;
        self.at += N;
        Ok(v)
    }
    /// The next `n` bytes (borrowed).
    pub fn slice(&mut self, n: usize) -> Res<&'a [u8]> {
        let end = self.at.checked_add(n).ok_or_else(|| self.err("length"))?;
        let s = self.d.get(self.at..end).ok_or_else(|| self.err("truncated"))?;
        self.at = end;
        Ok(s)
    }
    pub fn u8(&mut self) -> Res<u8> {
        Ok(self.take::<1>()?[0])
    }
    pub fn b(&mut self) -> Res<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(self.err(&format!("bad flag {t}"))),
        }
    }
    pub fn u16(&mut self) -> Res<u16> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    pub fn u32(&mut self) -> Res<u32> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    pub fn u64(&mut self) -> Res<u64> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    pub fn i64(&mut self) -> Res<i64> {
        Ok(i64::from_le_bytes(self.take()?))
    }
    pub fn oi64(&mut self) -> Res<Option<i64>> {
        let some = self.b()?;
        let v = self.i64()?;
        Ok(some.then_some(v))
    }
    pub fn ou64(&mut self) -> Res<Option<u64>> {
        let some = self.b()?;
        let v = self.u64()?;
        Ok(some.then_some(v))
    }
    pub fn ou8(&mut self) -> Res<Option<u8>> {
        let some = self.b()?;
        let v = self.u8()?;
        Ok(some.then_some(v))
    }
    pub fn ou32(&mut self) -> Res<Option<u32>> {
        let some = self.b()?;
        let v = self.u32()?;
        Ok(some.then_some(v))
    }
    /// A count of items of at least `min_size` bytes each: no larger than what is left,
    /// so a damaged count cannot make the caller allocate more than the input's size.
    pub fn count(&mut self, min_size: usize) -> Res<usize> {
        let n = self.u64()?;
        let left = self.left() / min_size.max(1);
        if n > left as u64 {
            return Err(self.err("a count exceeds its bytes"));
        }
        Ok(n as usize)
    }
    /// A u64 length, then the bytes.
    pub fn bytes(&mut self) -> Res<Vec<u8>> {
        let n = self.count(1)?;
        Ok(self.slice(n)?.to_vec())
    }
    pub fn obytes(&mut self) -> Res<Option<Vec<u8>>> {
        Ok(if self.b()? { Some(self.bytes()?) } else { None })
    }
    /// A u64 length, then UTF-8 text.
    pub fn string(&mut self) -> Res<String> {
        String::from_utf8(self.bytes()?).map_err(|_| self.err("text"))
    }
    pub fn ostr(&mut self) -> Res<Option<String>> {
        Ok(if self.b()? { Some(self.string()?) } else { None })
    }
}

/// The envelope: magic, version (u16 BE), CRC-32 of the body (u32 BE), the body.
pub fn frame(magic: &[u8; 4], version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 10);
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The body inside [`frame`]'s envelope, after checking its magic, version and CRC;
/// `what` names the state in errors.
pub fn unframe<'a>(what: &str, magic: &[u8; 4], version: u16, data: &'a [u8]) -> Res<&'a [u8]> {
    let an = if what.starts_with(['A', 'E', 'H', 'I', 'O', 'U']) { "an" } else { "a" };
    let head: [u8; 10] = crate::bytes::array(data, 0).ok_or_else(|| format!("not {an} {what} state (too short)"))?;
    if &head[..4] != magic {
        return Err(format!("not {an} {what} state (bad magic)"));
    }
    let got = u16::from_be_bytes([head[4], head[5]]);
    if got != version {
        return Err(format!(
            "{what} state version {got}, this build reads only {version} (written by another version of wirestream)"
        ));
    }
    let body = data.get(10..).unwrap_or_default();
    if crc32fast::hash(body) != u32::from_be_bytes([head[6], head[7], head[8], head[9]]) {
        return Err(format!("{what} state damaged (CRC mismatch)"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_envelope() {
        let mut w = W(Vec::new());
        w.u8(7);
        w.oi64(Some(-3));
        w.obytes(Some(b"ab"));
        w.ou32(None);
        let bytes = frame(b"TEST", 3, &w.0);
        let body = unframe("test", b"TEST", 3, &bytes).unwrap();
        let mut r = R::new("test", body);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.oi64().unwrap(), Some(-3));
        assert_eq!(r.obytes().unwrap(), Some(b"ab".to_vec()));
        assert_eq!(r.ou32().unwrap(), None);
        assert!(r.done());
        let e = unframe("test", b"TEST", 4, &bytes).unwrap_err();
        assert!(e.contains("version 3") && e.contains("reads only 4"), "{e}");
        assert!(unframe("HTTP", b"XEST", 3, &bytes).unwrap_err().contains("not an HTTP state"));
    }

    #[test]
    fn truncated_and_random_input_is_an_error_never_a_panic() {
        let mut w = W(Vec::new());
        w.bytes(b"hello");
        w.u64(9);
        let good = frame(b"TEST", 1, &w.0);
        for n in 0..good.len() {
            assert!(unframe("test", b"TEST", 1, &good[..n]).is_err());
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut d = Vec::new();
            for _ in 0..(x % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                d.push(x as u8);
            }
            let mut r = R::new("test", &d);
            let _ = (r.bytes(), r.count(3), r.obytes(), r.string(), r.ou64());
        }
        // a huge count is refused before any allocation
        let mut r = R::new("test", &[0xff; 8]);
        assert!(r.bytes().is_err());
    }
}
