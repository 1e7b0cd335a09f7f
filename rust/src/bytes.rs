//! Checked reads of fixed-size integers from untrusted bytes.
//!
//! Every parser of the core reads through these: an offset past the end gives `None`,
//! never a panic, whatever the input (the input is hostile network traffic or a damaged
//! file).

/// The `N` bytes at `at`, or `None` when they are not all there.
#[inline]
pub fn array<const N: usize>(d: &[u8], at: usize) -> Option<[u8; N]> {
    let end = at.checked_add(N)?;
    d.get(at..end)?.try_into().ok()
}

/// One byte at `at`.
#[inline]
pub fn u8_at(d: &[u8], at: usize) -> Option<u8> {
    d.get(at).copied()
}

/// Big-endian (network order) u16 at `at`.
#[inline]
pub fn be16(d: &[u8], at: usize) -> Option<u16> {
    array(d, at).map(u16::from_be_bytes)
}

/// Big-endian (network order) u32 at `at`.
#[inline]
pub fn be32(d: &[u8], at: usize) -> Option<u32> {
    array(d, at).map(u32::from_be_bytes)
}

/// Little-endian u32 at `at`.
#[inline]
pub fn le32(d: &[u8], at: usize) -> Option<u32> {
    array(d, at).map(u32::from_le_bytes)
}

/// The byte order of a capture file's section (pcap: from its magic; pcapng: per section,
/// from the section header's byte-order magic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endian {
    Little,
    Big,
}

impl Endian {
    #[inline]
    pub fn u16(self, d: &[u8], at: usize) -> Option<u16> {
        let b = array(d, at)?;
        Some(match self {
            Endian::Little => u16::from_le_bytes(b),
            Endian::Big => u16::from_be_bytes(b),
        })
    }

    #[inline]
    pub fn u32(self, d: &[u8], at: usize) -> Option<u32> {
        let b = array(d, at)?;
        Some(match self {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        })
    }

    #[inline]
    pub fn i64(self, d: &[u8], at: usize) -> Option<i64> {
        let b = array(d, at)?;
        Some(match self {
            Endian::Little => i64::from_le_bytes(b),
            Endian::Big => i64::from_be_bytes(b),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_none() {
        let d = [1u8, 2, 3];
        assert_eq!(be16(&d, 1), Some(0x0203));
        assert_eq!(be16(&d, 2), None);
        assert_eq!(be32(&d, 0), None);
        assert_eq!(le32(&d, usize::MAX), None);
        assert_eq!(u8_at(&d, 3), None);
        assert_eq!(Endian::Little.u16(&d, 0), Some(0x0201));
        assert_eq!(Endian::Big.i64(&d, 0), None);
    }
}
