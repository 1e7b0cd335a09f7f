//! Read pcap and pcapng capture files (optionally gzip-compressed) frame by frame.
//!
//! [`CaptureFile::open`] checks the file and its header: file-level problems (missing,
//! empty, not a capture, an unsupported link type for the whole file) are an
//! [`OpenError`] naming the problem. Damage inside an otherwise valid file (a truncated
//! last record, a block with an impossible length) ends or skips the damaged part and is
//! counted in [`CaptureFile::problems`] under a named reason; the frames before it are
//! kept.
//!
//! Formats:
//! - pcap: <https://www.ietf.org/archive/id/draft-gharris-opsawg-pcap-01.html>
//!   (magic a1b2c3d4 = microseconds, a1b23c4d = nanoseconds, either byte order)
//! - pcapng: <https://www.ietf.org/archive/id/draft-tuexen-opsawg-pcapng-05.html>
//!   (SHB, IDB with if_tsresol/if_tsoffset, EPB, SPB and the obsolete PB; other blocks
//!   skipped)
//!
//! Written by hand rather than with `pcap-file`: that crate stops at the first error with
//! one error type, where wirestream keeps the frames before a damaged record and names the
//! damage (`truncated_record`, `truncated_block`, `corrupt_block_length`,
//! `corrupt_packet_block`, `corrupt_record_header`, `truncated_gzip`, the counters
//! `wire.stats` reports); it neither reads a gzip stream cut short up to the cut, nor
//! numbers the packet blocks it cannot use as Wireshark does (they keep their frame
//! number). gzip is `flate2` (multi-member, as Python's and Wireshark's readers).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;

use crate::bytes::{u8_at, Endian};
use crate::decode::link::SUPPORTED;
use crate::decode::Frame;

/// Read this much at a time: bounded memory on files of any size.
pub const DEFAULT_CHUNK: usize = 8 << 20;
/// A pcapng block or pcap record longer than this is corruption.
const MAX_BLOCK: u32 = 256 << 20;
const PCAPNG_SHB: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
const BOM_LE: [u8; 4] = [0x4d, 0x3c, 0x2b, 0x1a];
const BOM_BE: [u8; 4] = [0x1a, 0x2b, 0x3c, 0x4d];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Damage inside a file, by the name its counter has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// the file ends inside a pcap record
    TruncatedRecord,
    /// a pcap record header claims an impossible length: reading stops there
    CorruptRecordHeader,
    /// the file ends inside a pcapng block
    TruncatedBlock,
    /// a pcapng block length under its type's fixed fields, not a multiple of 4, or huge
    CorruptBlockLength,
    /// a section header with a byte-order magic that is neither
    CorruptSectionHeader,
    /// a packet block naming an undescribed interface, or longer than its block
    CorruptPacketBlock,
    /// the gzip stream is cut short or corrupt (or the file could not be read on)
    TruncatedGzip,
}

impl Problem {
    pub const ALL: [Problem; 7] = [
        Problem::TruncatedRecord,
        Problem::CorruptRecordHeader,
        Problem::TruncatedBlock,
        Problem::CorruptBlockLength,
        Problem::CorruptSectionHeader,
        Problem::CorruptPacketBlock,
        Problem::TruncatedGzip,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Problem::TruncatedRecord => "truncated_record",
            Problem::CorruptRecordHeader => "corrupt_record_header",
            Problem::TruncatedBlock => "truncated_block",
            Problem::CorruptBlockLength => "corrupt_block_length",
            Problem::CorruptSectionHeader => "corrupt_section_header",
            Problem::CorruptPacketBlock => "corrupt_packet_block",
            Problem::TruncatedGzip => "truncated_gzip",
        }
    }
}

/// Why a file cannot be read at all: the problem, as the error message says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenError(pub String);

/// A pcapng interface: link type, timestamp units per second (`None`: more than 10^38,
/// every timestamp rounds to 0 µs), offset in seconds.
#[derive(Clone, Copy, Debug)]
struct Interface {
    linktype: i64,
    units: Option<u128>,
    offset_s: i64,
}

#[derive(Debug)]
enum Layout {
    Pcap { endian: Endian, ns: bool, linktype: i64 },
    Pcapng { endian: Endian, interfaces: Vec<Interface> },
}

/// The outcome of looking at the buffer for the next record.
enum Step {
    /// a frame: its data at `buf[start..start + len]`
    Frame { start: usize, len: usize, ts_us: i64, linktype: i64, orig_len: u32 },
    /// a record consumed without a frame (an IDB, an unusable packet block, ...)
    Skip,
    /// the record is not all in the buffer yet
    NeedMore,
    /// damage that ends the file
    Stop,
}

/// Counts the bytes read from the file (compressed bytes for gzip), for progress.
struct Counting {
    file: File,
    pos: Arc<AtomicU64>,
}

impl Read for Counting {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(out)?;
        self.pos.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// One open capture file, read frame by frame with [`CaptureFile::next_frame`].
pub struct CaptureFile {
    /// "pcap" or "pcapng", with "+gzip" when compressed
    pub format: String,
    /// bytes on disk, for progress
    pub size: u64,
    /// every link type the file declares (pcap: one; pcapng: one per interface)
    pub linktypes: BTreeSet<i64>,
    problems: [u64; Problem::ALL.len()],
    source: Option<Box<dyn Read + Send + Sync>>,
    raw_pos: Arc<AtomicU64>,
    chunk: usize,
    /// read buffer: the file's bytes at `..end` (the rest is room for the next read, kept
    /// between reads so that it is not zero-filled again for every chunk)
    store: Vec<u8>,
    end: usize,
    /// the next record starts here
    pos: usize,
    layout: Layout,
    /// the last frame number given (packet blocks that could not be used count too)
    number: u64,
    done: bool,
}

impl CaptureFile {
    /// Open `path` (pcap or pcapng, plain or gzip) and check its header.
    pub fn open(path: &str, chunk: usize) -> Result<CaptureFile, OpenError> {
        let meta = std::fs::metadata(path).map_err(|e| open_problem(&e))?;
        if meta.is_dir() {
            return Err(OpenError("is a directory, not a capture file".into()));
        }
        let mut file = File::open(path).map_err(|e| open_problem(&e))?;
        let size = meta.len();
        if size == 0 {
            return Err(OpenError("empty file".into()));
        }
        let mut magic = [0u8; 2];
        let got = read_up_to(&mut file, &mut magic).map_err(|e| open_problem(&e))?;
        let compressed = got == 2 && magic == GZIP_MAGIC;
        file.seek(SeekFrom::Start(0)).map_err(|e| open_problem(&e))?;
        let raw_pos = Arc::new(AtomicU64::new(0));
        let counting = Counting { file, pos: Arc::clone(&raw_pos) };
        let mut source: Box<dyn Read + Send + Sync> =
            if compressed { Box::new(MultiGzDecoder::new(counting)) } else { Box::new(counting) };
        let mut head = [0u8; 24];
        let got = read_up_to(&mut source, &mut head)
            .map_err(|e| OpenError(format!("damaged gzip data ({})", strerror(&e))))?;
        let head = head.get(..got).unwrap_or(&[]);
        let layout = layout_of(head)?;
        let mut linktypes = BTreeSet::new();
        if let Layout::Pcap { linktype, .. } = layout {
            linktypes.insert(linktype);
        }
        let format = format!("{}{}", if matches!(layout, Layout::Pcap { .. }) { "pcap" } else { "pcapng" },
                             if compressed { "+gzip" } else { "" });
        let mut store = Vec::with_capacity(chunk.min(DEFAULT_CHUNK) + 64);
        store.extend_from_slice(head);
        let pos = if matches!(layout, Layout::Pcap { .. }) { 24 } else { 0 };
        Ok(CaptureFile {
            format,
            size,
            linktypes,
            problems: [0; Problem::ALL.len()],
            source: Some(source),
            raw_pos,
            chunk: chunk.max(1),
            end: store.len(),
            store,
            pos,
            layout,
            number: 0,
            done: false,
        })
    }

    /// Close the file: no more frames; what was counted stays readable.
    pub fn close(&mut self) {
        self.source = None;
        self.done = true;
        self.store = Vec::new();
        self.end = 0;
        self.pos = 0;
    }

    /// Bytes read from the file on disk (compressed bytes for gzip).
    pub fn bytes_read(&self) -> u64 {
        self.raw_pos.load(Ordering::Relaxed)
    }

    /// The non-zero problem counters, by name.
    pub fn problems(&self) -> Vec<(&'static str, u64)> {
        Problem::ALL
            .iter()
            .zip(self.problems.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(p, n)| (p.name(), *n))
            .collect()
    }

    /// Frames given so far, counting packet blocks that could not be used (frame numbers).
    pub fn frames_read(&self) -> u64 {
        self.number
    }

    fn count(&mut self, problem: Problem) {
        if let Some(c) = self.problems.get_mut(problem as usize) {
            *c += 1;
        }
    }

    /// The next frame, or `None` at the end of the file (or at damage that ends it).
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        loop {
            if self.done {
                return None;
            }
            let step = match self.layout {
                Layout::Pcap { endian, ns, linktype } => self.pcap_record(endian, ns, linktype),
                Layout::Pcapng { .. } => self.pcapng_block(),
            };
            match step {
                Step::Frame { start, len, ts_us, linktype, orig_len } => {
                    let data = self.data().get(start..start + len).unwrap_or(&[]);
                    return Some(Frame { number: self.number, ts_us, linktype, data, orig_len });
                }
                Step::Skip => {}
                Step::Stop => self.done = true,
                Step::NeedMore => {
                    if !self.fill() {
                        if self.pos < self.end {
                            let cut = if matches!(self.layout, Layout::Pcap { .. }) {
                                Problem::TruncatedRecord
                            } else {
                                Problem::TruncatedBlock
                            };
                            self.count(cut);
                        }
                        self.done = true;
                    }
                }
            }
        }
    }

    /// The bytes read and not yet dropped.
    #[inline]
    fn data(&self) -> &[u8] {
        self.store.get(..self.end).unwrap_or(&[])
    }

    /// Drop what was parsed and read one more chunk; false at the end of the input.
    fn fill(&mut self) -> bool {
        let Some(source) = self.source.as_mut() else { return false };
        let pos = self.pos.min(self.end);
        self.store.copy_within(pos..self.end, 0);
        self.end -= pos;
        self.pos = 0;
        let room = self.end + self.chunk;
        if self.store.len() < room {
            self.store.resize(room, 0);
        }
        let mut got = 0;
        let mut failed = false;
        while got < self.chunk {
            let Some(dst) = self.store.get_mut(self.end + got..room) else { break };
            match source.read(dst) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // A gzip stream cut short or corrupt (or a read error): keep what was
                    // read, count the damage, read no more.
                    failed = true;
                    break;
                }
            }
        }
        self.end += got;
        if failed {
            self.count(Problem::TruncatedGzip);
            self.source = None;
        } else if got == 0 {
            self.source = None;
        }
        got > 0
    }

    // --- pcap ----------------------------------------------------------------------------

    fn pcap_record(&mut self, endian: Endian, ns: bool, linktype: i64) -> Step {
        let pos = self.pos;
        let b = self.data();
        let (Some(ts_sec), Some(ts_frac), Some(incl_len), Some(orig_len)) =
            (endian.u32(b, pos), endian.u32(b, pos + 4), endian.u32(b, pos + 8), endian.u32(b, pos + 12))
        else {
            return Step::NeedMore;
        };
        if incl_len > MAX_BLOCK {
            self.count(Problem::CorruptRecordHeader);
            return Step::Stop;
        }
        let start = pos + 16;
        let len = incl_len as usize;
        if start + len > self.end {
            return Step::NeedMore;
        }
        self.pos = start + len;
        self.number += 1;
        let frac_us = if ns { ts_frac / 1000 } else { ts_frac };
        let ts_us = i64::from(ts_sec) * 1_000_000 + i64::from(frac_us);
        Step::Frame { start, len, ts_us, linktype, orig_len }
    }

    // --- pcapng --------------------------------------------------------------------------

    fn pcapng_block(&mut self) -> Step {
        let pos = self.pos;
        if pos + 12 > self.end {
            return Step::NeedMore;
        }
        if self.data().get(pos..pos + 4) == Some(&PCAPNG_SHB[..]) {
            // A section header: its byte-order magic says the byte order of the section;
            // interface ids are per section.
            let endian = match self.data().get(pos + 8..pos + 12) {
                Some(m) if m == BOM_LE => Endian::Little,
                Some(m) if m == BOM_BE => Endian::Big,
                _ => {
                    self.count(Problem::CorruptSectionHeader);
                    return Step::Stop;
                }
            };
            self.layout = Layout::Pcapng { endian, interfaces: Vec::new() };
        }
        let Layout::Pcapng { endian, .. } = self.layout else { return Step::Stop };
        let (Some(btype), Some(blen)) = (endian.u32(self.data(), pos), endian.u32(self.data(), pos + 4)) else {
            return Step::NeedMore;
        };
        // A block shorter than its type's fixed fields (e.g. an EPB of 16 bytes) is a
        // corrupt length, as tshark says.
        if blen < min_block(btype) || blen % 4 != 0 || blen > MAX_BLOCK {
            self.count(Problem::CorruptBlockLength);
            return Step::Stop;
        }
        let blen = blen as usize;
        if pos + blen > self.end {
            return Step::NeedMore;
        }
        self.pos = pos + blen;
        let body = pos + 8;
        let block_end = pos + blen - 4; // before the trailing length
        match btype {
            6 => self.enhanced_packet(endian, body, block_end),
            3 => self.simple_packet(endian, body, blen),
            2 => self.obsolete_packet(endian, body, block_end),
            1 => {
                self.interface_description(endian, body, block_end);
                Step::Skip
            }
            _ => Step::Skip,
        }
    }

    fn interface(&self, id: usize) -> Option<Interface> {
        match &self.layout {
            Layout::Pcapng { interfaces, .. } => interfaces.get(id).copied(),
            Layout::Pcap { .. } => None,
        }
    }

    fn unusable_packet(&mut self) -> Step {
        self.count(Problem::CorruptPacketBlock);
        Step::Skip
    }

    fn enhanced_packet(&mut self, e: Endian, body: usize, block_end: usize) -> Step {
        let b = self.data();
        let (Some(iface), Some(ts_hi), Some(ts_lo), Some(cap_len), Some(orig_len)) =
            (e.u32(b, body), e.u32(b, body + 4), e.u32(b, body + 8), e.u32(b, body + 12), e.u32(b, body + 16))
        else {
            return Step::Stop; // cannot be: the block length was checked against the EPB's
        };
        self.number += 1;
        let start = body + 20;
        let len = cap_len as usize;
        let Some(ifc) = self.interface(iface as usize).filter(|_| start + len <= block_end) else {
            return self.unusable_packet();
        };
        let ts_us = timestamp_us(ifc, (u64::from(ts_hi) << 32) | u64::from(ts_lo));
        Step::Frame { start, len, ts_us, linktype: ifc.linktype, orig_len }
    }

    /// A Simple Packet Block: no timestamp (0), interface 0, captured length from the block.
    fn simple_packet(&mut self, e: Endian, body: usize, blen: usize) -> Step {
        let Some(orig_len) = e.u32(self.data(), body) else { return Step::Stop };
        self.number += 1;
        let Some(ifc) = self.interface(0) else { return self.unusable_packet() };
        let len = (orig_len as usize).min(blen - 16);
        Step::Frame { start: body + 4, len, ts_us: 0, linktype: ifc.linktype, orig_len }
    }

    /// The obsolete Packet Block: a 16-bit interface id, a drops count, then as an EPB.
    /// Its captured length is cut at the block's end (not checked, as the reader before).
    fn obsolete_packet(&mut self, e: Endian, body: usize, block_end: usize) -> Step {
        let b = self.data();
        let (Some(iface), Some(ts_hi), Some(ts_lo), Some(cap_len), Some(orig_len)) =
            (e.u16(b, body), e.u32(b, body + 4), e.u32(b, body + 8), e.u32(b, body + 12), e.u32(b, body + 16))
        else {
            return Step::Stop;
        };
        self.number += 1;
        let Some(ifc) = self.interface(usize::from(iface)) else { return self.unusable_packet() };
        let start = body + 20;
        let len = (cap_len as usize).min(block_end.saturating_sub(start));
        let ts_us = timestamp_us(ifc, (u64::from(ts_hi) << 32) | u64::from(ts_lo));
        Step::Frame { start, len, ts_us, linktype: ifc.linktype, orig_len }
    }

    fn interface_description(&mut self, e: Endian, body: usize, block_end: usize) {
        let Some(linktype) = e.u16(self.data(), body) else { return };
        let (units, offset_s) = idb_options(self.data(), e, body + 8, block_end);
        let ifc = Interface { linktype: i64::from(linktype), units, offset_s };
        if let Layout::Pcapng { interfaces, .. } = &mut self.layout {
            interfaces.push(ifc);
        }
        self.linktypes.insert(i64::from(linktype));
    }
}

/// Smallest valid total length of the pcapng blocks we parse: 12 bytes of framing plus
/// their fixed fields (SHB 16, IDB 8, EPB 20, SPB 4, PB 20).
fn min_block(btype: u32) -> u32 {
    match btype {
        0x0A0D_0D0A => 28,
        1 => 20,
        6 => 32,
        3 => 16,
        2 => 32,
        _ => 12,
    }
}

/// A pcapng timestamp in µs since the epoch: `ts` in the interface's units, plus its
/// offset. Out of the i64 range (a hostile file) it saturates.
fn timestamp_us(ifc: Interface, ts: u64) -> i64 {
    let us: i128 = match ifc.units {
        Some(1_000_000) => i128::from(ts),
        Some(units) => (u128::from(ts) * 1_000_000 / units) as i128,
        None => 0,
    };
    let total = us + i128::from(ifc.offset_s) * 1_000_000;
    i64::try_from(total).unwrap_or(if total < 0 { i64::MIN } else { i64::MAX })
}

/// (timestamp units per second, timestamp offset in seconds) from an IDB's options.
fn idb_options(b: &[u8], e: Endian, mut pos: usize, end: usize) -> (Option<u128>, i64) {
    let mut units = Some(1_000_000u128); // the default resolution is microseconds
    let mut offset = 0i64;
    while pos + 4 <= end {
        let (Some(code), Some(length)) = (e.u16(b, pos), e.u16(b, pos + 2)) else { break };
        if code == 0 {
            break;
        }
        let value = pos + 4;
        if code == 9 && length >= 1 {
            // if_tsresol: a power of 10, or of 2 when the top bit is set
            if let Some(r) = u8_at(b, value) {
                units = if r & 0x80 != 0 { Some(1u128 << (r & 0x7F)) } else { 10u128.checked_pow(u32::from(r)) };
            }
        } else if code == 14 && length == 8 {
            // if_tsoffset
            if let Some(o) = e.i64(b, value) {
                offset = o;
            }
        }
        pos += 4 + ((usize::from(length) + 3) & !3);
    }
    (units, offset)
}

/// The file's layout from its first (up to) 24 bytes, or why it is not a capture file.
fn layout_of(head: &[u8]) -> Result<Layout, OpenError> {
    let magic = head.get(..4);
    let pcap = match magic {
        Some([0xd4, 0xc3, 0xb2, 0xa1]) => Some((Endian::Little, false)),
        Some([0xa1, 0xb2, 0xc3, 0xd4]) => Some((Endian::Big, false)),
        Some([0x4d, 0x3c, 0xb2, 0xa1]) => Some((Endian::Little, true)),
        Some([0xa1, 0xb2, 0x3c, 0x4d]) => Some((Endian::Big, true)),
        _ => None,
    };
    if let Some((endian, ns)) = pcap {
        let network = endian.u32(head, 20).ok_or_else(|| OpenError("truncated pcap file header".into()))?;
        // the upper bits may carry FCS length information
        let linktype = i64::from(network & 0x0FFF_FFFF);
        if !SUPPORTED.iter().any(|(n, _)| *n == linktype) {
            return Err(OpenError(format!("unsupported link type {linktype} ({})", supported_text())));
        }
        return Ok(Layout::Pcap { endian, ns, linktype });
    }
    if magic == Some(&PCAPNG_SHB[..]) {
        return match head.get(8..12) {
            Some(m) if m == BOM_LE => Ok(Layout::Pcapng { endian: Endian::Little, interfaces: Vec::new() }),
            Some(m) if m == BOM_BE => Ok(Layout::Pcapng { endian: Endian::Big, interfaces: Vec::new() }),
            _ => Err(OpenError("not a valid pcapng section header".into())),
        };
    }
    Err(OpenError("not a pcap or pcapng capture file (unknown magic number)".into()))
}

/// "supported: 0 BSD loopback (null), 1 Ethernet, 9 PPP, ..." (by number).
pub fn supported_text() -> String {
    let mut types = SUPPORTED.to_vec();
    types.sort_unstable();
    let names: Vec<String> = types.iter().map(|(n, name)| format!("{n} {name}")).collect();
    format!("supported: {}", names.join(", "))
}

/// Read until `out` is full or the input ends; the count read.
fn read_up_to(r: &mut dyn Read, out: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while let Some(dst) = out.get_mut(got..).filter(|d| !d.is_empty()) {
        match r.read(dst) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The problem of a file that cannot be opened, as the messages have always said it.
fn open_problem(e: &io::Error) -> OpenError {
    OpenError(match e.kind() {
        io::ErrorKind::NotFound => "no such file".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::IsADirectory => "is a directory, not a capture file".into(),
        _ => strerror(e),
    })
}

/// An I/O error's text without Rust's " (os error N)" suffix (the C library's strerror).
fn strerror(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(at) => text.get(..at).unwrap_or(&text).to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests;
