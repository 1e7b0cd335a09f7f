//! HPACK (RFC 7541): the header block decoder of one direction of an HTTP/2 connection.
//!
//! A header block is a sequence of representations: an index into the static or the
//! dynamic table (`1xxxxxxx`), a literal added to the dynamic table (`01xxxxxx`), a
//! dynamic table size update (`001xxxxx`), a literal not added (`0000xxxx`) or never to
//! be added (`0001xxxx`). Integers have an N-bit prefix (§5.1), strings a Huffman flag
//! and a 7-bit-prefix length (§5.2). The dynamic table is the decoder's state: entries
//! are added at the front, evicted from the back when their sizes (name + value + 32)
//! exceed the table's size, which the encoder sets with size updates up to the limit our
//! peer announced (SETTINGS_HEADER_TABLE_SIZE; we accept up to [`MAX_TABLE_SIZE`]).
//!
//! A capture that starts mid-connection has no dynamic table: an index past the static
//! table and what we hold is unknown. As Wireshark does, that header is counted, not
//! guessed ([`Block::unknown`]), and decoding goes on (the literals still add their
//! entries, so the table fills and later blocks decode). Any other malformation is an
//! error for that block. Never panics; the table is bounded.

use std::collections::VecDeque;

use super::tables::{CODES, STATIC};
use crate::state_bytes::{Res, R, W};

/// The largest dynamic table we keep (an encoder may not exceed what its peer allowed;
/// 64 KiB is above what servers and clients announce).
pub const MAX_TABLE_SIZE: usize = 64 * 1024;
/// A header block's decoded headers may not exceed this (names and values).
pub const MAX_LIST_SIZE: usize = 256 * 1024;

/// Why a header block could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HpackError {
    /// an integer or a string runs past the block's end
    Truncated,
    /// an integer too large for a length or an index
    Overflow,
    /// index 0, or a size update above the limit
    BadIndex,
    /// a Huffman string with EOS or bad padding
    BadHuffman,
    /// the headers exceed [`MAX_LIST_SIZE`]
    TooLarge,
}

impl HpackError {
    pub fn name(self) -> &'static str {
        match self {
            HpackError::Truncated => "hpack_truncated",
            HpackError::Overflow => "hpack_overflow",
            HpackError::BadIndex => "hpack_bad_index",
            HpackError::BadHuffman => "hpack_bad_huffman",
            HpackError::TooLarge => "hpack_too_large",
        }
    }
}

/// A header: name and value.
pub type Header = (Vec<u8>, Vec<u8>);

/// A decoded header block.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Block {
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// references to dynamic table entries we never saw (a capture from the middle)
    pub unknown: u32,
}

/// The decoder of one direction.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoder {
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { table: VecDeque::new(), size: 0, max_size: 4096 }
    }
}

fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// An integer with an `n`-bit prefix at `d[*pos]` (§5.1).
fn integer(d: &[u8], pos: &mut usize, n: u8) -> Result<usize, HpackError> {
    let first = *d.get(*pos).ok_or(HpackError::Truncated)?;
    *pos += 1;
    let mask = ((1u16 << n) - 1) as u8;
    let mut value = (first & mask) as usize;
    if value < mask as usize {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let b = *d.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        if shift > 28 {
            return Err(HpackError::Overflow);
        }
        value = value.checked_add(((b & 0x7f) as usize) << shift).ok_or(HpackError::Overflow)?;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// A string literal at `d[*pos]` (§5.2).
fn string(d: &[u8], pos: &mut usize) -> Result<Vec<u8>, HpackError> {
    let huffman = d.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(d, pos, 7)?;
    let end = pos.checked_add(len).ok_or(HpackError::Overflow)?;
    let raw = d.get(*pos..end).ok_or(HpackError::Truncated)?;
    *pos = end;
    if huffman {
        let mut out = Vec::with_capacity(len * 8 / 5);
        huffman_decode(raw, &mut out)?;
        Ok(out)
    } else {
        Ok(raw.to_vec())
    }
}

/// The canonical decoding of the Huffman code: per code length, the first code and the
/// symbols of that length in code order (the code is canonical: RFC 7541 Appendix B).
struct Canonical {
    /// per length (index = bits): first code, count, offset into `symbols`
    first: [u32; 31],
    count: [u32; 31],
    offset: [u32; 31],
    symbols: [u16; 257],
}

fn canonical() -> &'static Canonical {
    static TABLE: std::sync::OnceLock<Canonical> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut order: Vec<u16> = (0..257u16).collect();
        order.sort_by_key(|&s| (CODES[s as usize].1, CODES[s as usize].0));
        let mut c = Canonical { first: [0; 31], count: [0; 31], offset: [0; 31], symbols: [0; 257] };
        for (i, &s) in order.iter().enumerate() {
            c.symbols[i] = s;
            let (code, bits) = CODES[s as usize];
            let b = bits as usize;
            if c.count[b] == 0 {
                c.first[b] = code;
                c.offset[b] = i as u32;
            }
            c.count[b] += 1;
        }
        c
    })
}

/// Huffman-decodes `src` into `out` (§5.2: the padding is at most 7 bits, all ones).
pub fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let t = canonical();
    let mut code: u32 = 0;
    let mut bits: usize = 0;
    for &byte in src {
        for i in (0..8).rev() {
            code = (code << 1) | ((byte >> i) & 1) as u32;
            bits += 1;
            if bits > 30 {
                return Err(HpackError::BadHuffman);
            }
            if t.count[bits] > 0 && code >= t.first[bits] && code - t.first[bits] < t.count[bits] {
                let symbol = t.symbols[(t.offset[bits] + code - t.first[bits]) as usize];
                if symbol == 256 {
                    return Err(HpackError::BadHuffman); // EOS inside a string
                }
                out.push(symbol as u8);
                code = 0;
                bits = 0;
            }
        }
    }
    // the padding: fewer than 8 bits, the most significant bits of EOS (all ones)
    if bits > 7 || code != (1u32 << bits) - 1 {
        return Err(HpackError::BadHuffman);
    }
    Ok(())
}

impl Decoder {
    /// Entries held (for tests and bounds).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn evict(&mut self) {
        while self.size > self.max_size {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= entry_size(&n, &v),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }

    fn add(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = entry_size(&name, &value);
        if size > self.max_size {
            // larger than the table: it empties the table (§4.4)
            self.table.clear();
            self.size = 0;
            return;
        }
        self.size += size;
        self.table.push_front((name, value));
        self.evict();
    }

    /// The entry at `index` (1-based, static then dynamic); None: a dynamic entry we
    /// never saw.
    fn get(&self, index: usize) -> Result<Option<Header>, HpackError> {
        if index == 0 {
            return Err(HpackError::BadIndex);
        }
        if index <= STATIC.len() {
            let (n, v) = STATIC[index - 1];
            return Ok(Some((n.to_vec(), v.to_vec())));
        }
        Ok(self.table.get(index - STATIC.len() - 1).cloned())
    }

    /// Decode one complete header block.
    pub fn decode(&mut self, d: &[u8]) -> Result<Block, HpackError> {
        let mut block = Block::default();
        let mut pos = 0;
        let mut total = 0usize;
        while pos < d.len() {
            let b = d[pos];
            let header = if b & 0x80 != 0 {
                let index = integer(d, &mut pos, 7)?;
                self.get(index)?
            } else if b & 0xe0 == 0x20 {
                let size = integer(d, &mut pos, 5)?;
                if size > MAX_TABLE_SIZE {
                    return Err(HpackError::BadIndex);
                }
                self.max_size = size;
                self.evict();
                continue;
            } else {
                // a literal: with incremental indexing (6-bit prefix), or not (4-bit)
                let indexing = b & 0xc0 == 0x40;
                let index = integer(d, &mut pos, if indexing { 6 } else { 4 })?;
                let name = if index == 0 { Some(string(d, &mut pos)?) } else { self.get(index)?.map(|(n, _)| n) };
                let value = string(d, &mut pos)?;
                match name {
                    Some(name) => {
                        if indexing {
                            self.add(name.clone(), value.clone());
                        }
                        Some((name, value))
                    }
                    None => {
                        // its name was an entry we never saw: the table still gets an
                        // entry (under an unknown name) so that later indexes line up
                        if indexing {
                            self.add(b"?".to_vec(), value);
                        }
                        None
                    }
                }
            };
            match header {
                Some((name, value)) => {
                    total += name.len() + value.len();
                    if total > MAX_LIST_SIZE {
                        return Err(HpackError::TooLarge);
                    }
                    block.headers.push((name, value));
                }
                None => block.unknown += 1,
            }
        }
        Ok(block)
    }

    pub fn write(&self, w: &mut W) {
        w.u64(self.max_size as u64);
        w.u64(self.table.len() as u64);
        for (n, v) in &self.table {
            w.bytes(n);
            w.bytes(v);
        }
    }

    pub fn read(r: &mut R) -> Res<Decoder> {
        let max_size = r.u64()? as usize;
        if max_size > MAX_TABLE_SIZE {
            return Err(r.err("HPACK table too large"));
        }
        let n = r.count(16)?;
        let mut table = VecDeque::with_capacity(n);
        let mut size = 0;
        for _ in 0..n {
            let name = r.bytes()?;
            let value = r.bytes()?;
            size += entry_size(&name, &value);
            table.push_back((name, value));
        }
        if size > max_size {
            return Err(r.err("HPACK table over its size"));
        }
        Ok(Decoder { table, size, max_size })
    }
}
