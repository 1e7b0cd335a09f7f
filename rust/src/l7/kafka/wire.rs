//! Kafka's primitive types, read from a byte slice (https://kafka.apache.org/protocol#protocol_types).
//!
//! Big-endian integers; `string` is an int16 length (−1: null) and UTF-8 bytes; `bytes`
//! and `records` an int32 length (−1: null); an array an int32 count (−1: null). In a
//! message's *flexible* versions (KIP-482) the same fields are *compact*: lengths and
//! counts are unsigned varints holding N + 1 (0: null), and every struct ends with its
//! tagged fields (a varint count, then per field a varint tag, a varint size and the
//! bytes). Every read says [`Short::Need`] when the slice ends first: the caller decides
//! whether more bytes may come (a message still arriving) or the message is truncated.

/// Why a read did not give a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Short {
    /// The bytes end before the value does.
    Need,
    /// The bytes cannot be this value (the reason is a drop reason's suffix).
    Bad(&'static str),
}

pub type P<T> = Result<T, Short>;

/// Elements of an array at most (a count above is garbage, whatever the frame's length).
pub const MAX_COUNT: usize = 1 << 20;

/// A reading position in a slice.
pub struct Cur<'a> {
    pub d: &'a [u8],
    pub p: usize,
}

impl<'a> Cur<'a> {
    pub fn new(d: &'a [u8]) -> Self {
        Cur { d, p: 0 }
    }

    pub fn left(&self) -> usize {
        self.d.len() - self.p
    }

    pub fn take(&mut self, n: usize) -> P<&'a [u8]> {
        if self.left() < n {
            return Err(Short::Need);
        }
        let s = &self.d[self.p..self.p + n];
        self.p += n;
        Ok(s)
    }

    pub fn skip(&mut self, n: usize) -> P<()> {
        self.take(n).map(|_| ())
    }

    pub fn i8(&mut self) -> P<i8> {
        Ok(self.take(1)?[0] as i8)
    }

    pub fn i16(&mut self) -> P<i16> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> P<i32> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn i64(&mut self) -> P<i64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    pub fn uuid(&mut self) -> P<[u8; 16]> {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.take(16)?);
        Ok(a)
    }

    /// An unsigned varint of at most 32 bits (5 bytes), as Kafka's lengths and tags are.
    pub fn uvarint(&mut self) -> P<u32> {
        let mut v: u64 = 0;
        for i in 0..5 {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return u32::try_from(v).map_err(|_| Short::Bad("varint"));
            }
        }
        Err(Short::Bad("varint"))
    }

    /// A length or count: compact (varint N + 1) or int16/int32; None for null.
    fn length(&mut self, flex: bool, wide: bool) -> P<Option<usize>> {
        if flex {
            let n = self.uvarint()?;
            return Ok(if n == 0 { None } else { Some(n as usize - 1) });
        }
        let n = if wide { self.i32()? } else { i32::from(self.i16()?) };
        match n {
            -1 => Ok(None),
            n if n < 0 => Err(Short::Bad("negative_length")),
            n => Ok(Some(n as usize)),
        }
    }

    /// A (nullable) string's bytes.
    pub fn string(&mut self, flex: bool) -> P<Option<&'a [u8]>> {
        match self.length(flex, false)? {
            None => Ok(None),
            Some(n) => self.take(n).map(Some),
        }
    }

    pub fn skip_string(&mut self, flex: bool) -> P<()> {
        self.string(flex).map(|_| ())
    }

    /// A (nullable) bytes or records field's length, the bytes not read.
    pub fn bytes_len(&mut self, flex: bool) -> P<Option<usize>> {
        self.length(flex, true)
    }

    pub fn skip_bytes(&mut self, flex: bool) -> P<()> {
        if let Some(n) = self.bytes_len(flex)? {
            self.skip(n)?;
        }
        Ok(())
    }

    /// An array's element count (None: a null array); a count that the rest of the
    /// bytes cannot hold at `min_size` bytes per element is an error, not a wait.
    pub fn count(&mut self, flex: bool) -> P<Option<usize>> {
        let n = self.length(flex, true)?;
        if let Some(n) = n {
            if n > MAX_COUNT {
                return Err(Short::Bad("array_count"));
            }
        }
        Ok(n)
    }

    /// A struct's tagged fields (flexible versions only), skipped.
    pub fn tagged(&mut self, flex: bool) -> P<()> {
        if !flex {
            return Ok(());
        }
        let n = self.uvarint()?;
        for _ in 0..n {
            self.uvarint()?; // the tag
            let size = self.uvarint()? as usize;
            self.skip(size)?;
        }
        Ok(())
    }
}

/// A topic id as Kafka prints it (`kafka-topics --describe`): URL-safe base64, no padding.
pub fn topic_id_text(id: &[u8; 16]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(22);
    for chunk in id.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
