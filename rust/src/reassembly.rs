//! TCP stream reassembly: the in-order bytes of one direction of a connection.
//!
//! Takes every segment of one direction as captured (retransmitted, overlapping, out of
//! order, truncated by the snap length) and the peer's acknowledgement numbers; gives, to
//! a [`Sink`], the next bytes of the stream exactly once and in order
//! ([`Sink::data`]) and gaps where bytes were never captured ([`Sink::gap`]), each with
//! the capture time (`ts`) of the segment that carried the bytes (an analyser takes
//! "first request byte" and "last response byte" times from it). The tracker
//! (`tcp/tracker.rs`) runs two per L7 connection; `wirestream._core.StreamReassembler`
//! (`python_tcp.rs`) is the same code for Python (`processors/reassembly.py`).
//!
//! The rules, in the order [`Reassembler::segment`] applies them (those of the Python
//! implementation this replaces, call for call):
//!
//! - The stream starts at [`Reassembler::next_seq`], which the owner sets to ISN + 1 when
//!   the TCP analysis knows the ISN. Left unset (capture started mid-connection), the
//!   first data segment seen starts the stream.
//! - Data at or before the expected sequence number is trimmed to its new part (a
//!   retransmission that also carries new bytes delivers only those; a pure
//!   retransmission delivers nothing). Sequence numbers compare modulo 2^32.
//! - Data beyond the expected number waits in a small out-of-order buffer (the longest
//!   version of a segment, if retransmitted); when the hole is filled the buffer drains.
//!   Wireshark does the same with `tcp.reassemble_out_of_order`.
//! - A hole becomes a **gap** (the bytes are declared lost and delivery resumes after
//!   them) when the peer has already acknowledged bytes beyond it (the receiver got them,
//!   the capture did not), when the buffer exceeds its bound, or when the stream ends.
//!   Holding data forever for bytes that will never come would stall every later message.
//! - A segment truncated by the capture's snap length delivers its captured part and a
//!   gap for the rest.
//!
//! Memory per direction is bounded by `max_buffer` bytes of out-of-order data, and by
//! [`MAX_PENDING_SEGMENTS`] buffered segments (segments whose bytes were not captured
//! at all weigh nothing in bytes; hostile input could otherwise buffer without bound).
//!
//! Delivered data is a [`Chunk`]: a range of the segment being given (the common,
//! in-order case: the tracker hands Python a slice of the batch's payload blob, no copy
//! here) or bytes the buffer owned.

use std::collections::BTreeMap;

/// Half the sequence space: `a` is after `b` when `a - b` (mod 2^32) is below it.
pub const HALF: u32 = 0x8000_0000;

/// The default bound of the out-of-order buffer, in bytes.
pub const DEFAULT_MAX_BUFFER: u64 = 1 << 20;

/// At most this many segments wait in the buffer; one more skips the first hole, as the
/// byte bound does (only segments of (nearly) uncaptured bytes can reach it first).
pub const MAX_PENDING_SEGMENTS: usize = 1 << 14;

/// `a - b` in sequence space: positive when `a` is after `b` (modulo 2^32).
#[inline]
pub fn seq_diff(a: u32, b: u32) -> i64 {
    let d = a.wrapping_sub(b);
    if d >= HALF {
        i64::from(d) - (1i64 << 32)
    } else {
        i64::from(d)
    }
}

/// `seq + n` in sequence space.
#[inline]
fn seq_add(seq: u32, n: i64) -> u32 {
    (i64::from(seq).wrapping_add(n) & 0xFFFF_FFFF) as u32
}

/// Bytes delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// `len` bytes at `at` of the data given to the current [`Reassembler::segment`] call.
    Input { at: usize, len: usize },
    /// Bytes that waited in the buffer (or that a restored state carried).
    Owned(Vec<u8>),
}

impl Chunk {
    pub fn len(&self) -> usize {
        match self {
            Chunk::Input { len, .. } => *len,
            Chunk::Owned(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where the reassembler delivers.
pub trait Sink {
    /// The next bytes of the stream (never empty), captured at `ts`.
    fn data(&mut self, chunk: Chunk, ts: i64);
    /// `missing` bytes of the stream that were never captured (> 0).
    fn gap(&mut self, missing: u64, ts: i64);
}

/// A segment waiting beyond a hole: its captured bytes, capture time, and the bytes of
/// it the capture did not keep (snap length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub data: Vec<u8>,
    pub ts: i64,
    pub tail: u64,
}

impl Pending {
    fn length(&self) -> i64 {
        (self.data.len() as u64).saturating_add(self.tail) as i64
    }
}

/// In-order delivery of one direction of a TCP connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reassembler {
    pub max_buffer: u64,
    /// Sequence number of the next byte to deliver (None: the first segment's).
    pub next_seq: Option<u32>,
    /// The latest ACK the other side sent for this stream.
    pub peer_ack: Option<u32>,
    /// seq -> segment beyond a hole
    pub pending: BTreeMap<u32, Pending>,
    pub pending_bytes: u64,
    pub delivered: u64,
    pub gap_bytes: u64,
    pub duplicate_bytes: u64,
    pub finished: bool,
}

impl Default for Reassembler {
    fn default() -> Self {
        Reassembler::new(DEFAULT_MAX_BUFFER)
    }
}

/// Where a segment's data comes from as it is cut: the caller's input, or owned bytes.
enum Src<'a> {
    Input(&'a [u8], usize),
    Owned(Vec<u8>),
}

impl Src<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Src::Input(d, _) => d,
            Src::Owned(v) => v,
        }
    }

    /// Without its first `n` bytes.
    fn skip(self, n: usize) -> Self {
        match self {
            Src::Input(d, at) => {
                let n = n.min(d.len());
                Src::Input(d.get(n..).unwrap_or_default(), at + n)
            }
            Src::Owned(mut v) => {
                v.drain(..n.min(v.len()));
                Src::Owned(v)
            }
        }
    }

    fn chunk(self) -> Chunk {
        match self {
            Src::Input(d, at) => Chunk::Input { at, len: d.len() },
            Src::Owned(v) => Chunk::Owned(v),
        }
    }
}

impl Reassembler {
    pub fn new(max_buffer: u64) -> Self {
        Reassembler {
            max_buffer,
            next_seq: None,
            peer_ack: None,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            delivered: 0,
            gap_bytes: 0,
            duplicate_bytes: 0,
            finished: false,
        }
    }

    // --- input ------------------------------------------------------------------------------

    /// The peer acknowledged up to `ack`: a hole below it will never be filled. The latest
    /// ACK is kept (an old one arriving reordered only delays a gap).
    pub fn ack(&mut self, ack: u32, sink: &mut impl Sink) {
        self.peer_ack = Some(ack);
        if let Some(nxt) = self.next_seq {
            if !self.pending.is_empty() && seq_diff(ack, nxt) > 0 {
                self.skip_hole(Some(ack), sink);
            }
        }
    }

    /// A segment of `length` payload bytes at `seq` of which `data` were captured (data
    /// beyond `length` is not the segment's and is ignored).
    pub fn segment(&mut self, seq: u32, data: &[u8], length: u32, ts: i64, sink: &mut impl Sink) {
        if self.finished || length == 0 {
            return;
        }
        let data = data.get(..length as usize).unwrap_or(data);
        let mut length = i64::from(length);
        let mut seq = seq;
        let nxt = *self.next_seq.get_or_insert(seq); // mid-stream start: the first data we see begins the stream
        let mut off = seq_diff(seq, nxt);
        let mut src = Src::Input(data, 0);
        if off == 0 && self.pending.is_empty() {
            // the common case: the next bytes, in order
            self.deliver(seq, src, length, ts, sink);
            return;
        }
        if off < 0 {
            // starts before what we have delivered: keep only the new part
            if off + length <= 0 {
                self.duplicate_bytes = self.duplicate_bytes.saturating_add(length as u64);
                return;
            }
            self.duplicate_bytes = self.duplicate_bytes.saturating_add((-off) as u64);
            src = src.skip((-off) as usize);
            length += off;
            seq = nxt;
            off = 0;
        }
        if off == 0 {
            self.deliver(seq, src, length, ts, sink);
            self.drain(sink);
            return;
        }
        // Beyond a hole: keep it (the longest version, if retransmitted) until the hole fills.
        let captured = src.bytes();
        let keep = self.pending.get(&seq).is_none_or(|old| old.length() < length);
        if keep {
            if let Some(old) = self.pending.get(&seq) {
                self.pending_bytes = self.pending_bytes.saturating_sub(old.data.len() as u64);
            }
            let tail = (length as u64).saturating_sub(captured.len() as u64);
            self.pending_bytes = self.pending_bytes.saturating_add(captured.len() as u64);
            self.pending.insert(seq, Pending { data: captured.to_vec(), ts, tail });
        }
        if let Some(peer_ack) = self.peer_ack {
            if seq_diff(peer_ack, nxt) > 0 {
                self.skip_hole(Some(peer_ack), sink); // the receiver already had the missing bytes
            }
        }
        while (self.pending_bytes > self.max_buffer || self.pending.len() > MAX_PENDING_SEGMENTS)
            && !self.pending.is_empty()
        {
            self.skip_hole(None, sink);
        }
    }

    /// The stream ended (FIN, RST, timeout, end of input): deliver what is buffered.
    pub fn finish(&mut self, sink: &mut impl Sink) {
        while !self.pending.is_empty() {
            self.skip_hole(None, sink);
        }
        self.finished = true;
    }

    // --- internals ----------------------------------------------------------------------------

    fn deliver(&mut self, seq: u32, src: Src<'_>, length: i64, ts: i64, sink: &mut impl Sink) {
        let captured = src.bytes().len() as i64;
        if captured > 0 {
            self.delivered = self.delivered.saturating_add(captured as u64);
            sink.data(src.chunk(), ts);
        }
        if captured < length {
            // truncated by the snap length: the rest was never captured
            let missing = (length - captured) as u64;
            self.gap_bytes = self.gap_bytes.saturating_add(missing);
            sink.gap(missing, ts);
        }
        self.next_seq = Some(seq_add(seq, length));
    }

    /// The buffered segment first after `nxt` in sequence order (the least `seq - nxt`,
    /// from -2^31 up): keys ordered from `nxt - 2^31`, wrapping.
    fn first_pending(&self, nxt: u32) -> Option<u32> {
        let start = nxt.wrapping_sub(HALF);
        self.pending.range(start..).next().or_else(|| self.pending.range(..start).next()).map(|(s, _)| *s)
    }

    /// Deliver buffered segments that now continue the stream.
    fn drain(&mut self, sink: &mut impl Sink) {
        while let Some(nxt) = self.next_seq {
            if self.pending.is_empty() {
                return;
            }
            if let Some(p) = self.pending.remove(&nxt) {
                self.pending_bytes = self.pending_bytes.saturating_sub(p.data.len() as u64);
                let length = p.length();
                self.deliver(nxt, Src::Owned(p.data), length, p.ts, sink);
                continue;
            }
            // A buffered segment may overlap what was just delivered: trim it.
            let Some(s) = self.first_pending(nxt) else { return };
            if seq_diff(s, nxt) > 0 {
                return;
            }
            let Some(p) = self.pending.remove(&s) else { return };
            self.pending_bytes = self.pending_bytes.saturating_sub(p.data.len() as u64);
            let length = p.length();
            let over = seq_diff(nxt, s);
            if over < length {
                self.duplicate_bytes = self.duplicate_bytes.saturating_add(over as u64);
                self.deliver(nxt, Src::Owned(p.data).skip(over as usize), length - over, p.ts, sink);
            } else {
                self.duplicate_bytes = self.duplicate_bytes.saturating_add(length as u64);
            }
        }
    }

    /// Declare the bytes before the first buffered segment lost (or up to `upto`).
    fn skip_hole(&mut self, upto: Option<u32>, sink: &mut impl Sink) {
        let Some(nxt) = self.next_seq else { return };
        let Some(first) = self.first_pending(nxt) else { return };
        let mut target = first;
        if let Some(upto) = upto {
            if seq_diff(upto, first) < 0 {
                target = upto; // acknowledged up to `upto` only; the hole may partly fill
            }
        }
        let missing = seq_diff(target, nxt);
        if missing > 0 {
            self.gap_bytes = self.gap_bytes.saturating_add(missing as u64);
            let ts = self.pending.get(&first).map_or(0, |p| p.ts);
            sink.gap(missing as u64, ts);
            self.next_seq = Some(target);
        }
        self.drain(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M32: u32 = u32::MAX;

    /// Rebuilds the stream as delivered (input chunks resolved against the segment given).
    #[derive(Default)]
    struct Rec {
        parts: Vec<(Option<Vec<u8>>, u64, i64)>,
        input: Vec<u8>,
    }

    impl Sink for Rec {
        fn data(&mut self, chunk: Chunk, ts: i64) {
            assert!(!chunk.is_empty());
            let bytes = match chunk {
                Chunk::Input { at, len } => self.input[at..at + len].to_vec(),
                Chunk::Owned(v) => v,
            };
            let n = bytes.len() as u64;
            self.parts.push((Some(bytes), n, ts));
        }
        fn gap(&mut self, missing: u64, ts: i64) {
            assert!(missing > 0);
            self.parts.push((None, missing, ts));
        }
    }

    impl Rec {
        fn stream(&self) -> Vec<u8> {
            self.parts.iter().filter_map(|p| p.0.clone()).flatten().collect()
        }
        fn layout(&self) -> Vec<u8> {
            let mut out = Vec::new();
            for (d, n, _) in &self.parts {
                match d {
                    Some(d) => out.extend_from_slice(d),
                    None => out.extend(std::iter::repeat_n(b'?', *n as usize)),
                }
            }
            out
        }
        fn positions(&self) -> Vec<Option<u8>> {
            let mut out = Vec::new();
            for (d, n, _) in &self.parts {
                match d {
                    Some(d) => out.extend(d.iter().map(|b| Some(*b))),
                    None => out.extend(std::iter::repeat_n(None, *n as usize)),
                }
            }
            out
        }
        fn times(&self) -> Vec<i64> {
            self.parts.iter().map(|p| p.2).collect()
        }
    }

    fn seg(r: &mut Reassembler, k: &mut Rec, seq: u32, data: &[u8], length: u32, ts: i64) {
        k.input = data.to_vec();
        r.segment(seq, data, length, ts, k);
    }

    #[test]
    fn seq_diff_wraps() {
        assert_eq!(seq_diff(5, M32 - 4), 10);
        assert_eq!(seq_diff(M32 - 4, 5), -10);
        assert_eq!(seq_diff(100, 100), 0);
        assert_eq!(seq_diff(HALF, 0), -(1i64 << 31));
        assert_eq!(seq_diff(HALF - 1, 0), (1i64 << 31) - 1);
    }

    #[test]
    fn in_order_after_syn_and_wrap() {
        let (mut r, mut k) = (Reassembler::default(), Rec::default());
        let isn = M32 - 2;
        r.next_seq = Some(isn.wrapping_add(1));
        seg(&mut r, &mut k, isn.wrapping_add(1), b"abc", 3, 1);
        seg(&mut r, &mut k, isn.wrapping_add(4), b"def", 3, 2); // crosses 2^32
        assert_eq!(k.stream(), b"abcdef");
        assert_eq!(k.times(), [1, 2]);
    }

    #[test]
    fn retransmission_and_overlap_deliver_only_new_bytes() {
        let (mut r, mut k) = (Reassembler::default(), Rec::default());
        r.next_seq = Some(1000);
        seg(&mut r, &mut k, 1000, b"hello", 5, 1);
        seg(&mut r, &mut k, 1000, b"hello", 5, 2);
        seg(&mut r, &mut k, 1003, b"lo world", 8, 3);
        assert_eq!(k.stream(), b"hello world");
        assert_eq!(r.duplicate_bytes, 7);
        // the trimmed segment is delivered as a range of its input, not copied
        assert_eq!(k.parts.len(), 2);
    }

    #[test]
    fn out_of_order_waits_for_the_hole() {
        let (mut r, mut k) = (Reassembler::default(), Rec::default());
        r.next_seq = Some(1);
        seg(&mut r, &mut k, 6, b"world", 5, 2);
        assert_eq!(k.stream(), b"");
        assert_eq!(r.pending_bytes, 5);
        seg(&mut r, &mut k, 1, b"hello", 5, 1);
        assert_eq!(k.stream(), b"helloworld");
        assert_eq!(k.times(), [1, 2]);
        assert_eq!(r.pending_bytes, 0);
    }

    #[test]
    fn hole_acknowledged_by_the_peer_is_a_gap() {
        let (mut r, mut k) = (Reassembler::default(), Rec::default());
        r.next_seq = Some(1);
        seg(&mut r, &mut k, 1, b"aaaa", 4, 1);
        seg(&mut r, &mut k, 9, b"cccc", 4, 3);
        r.ack(13, &mut k);
        assert_eq!(k.layout(), b"aaaa????cccc");
        assert_eq!(k.times(), [1, 3, 3]); // the gap has the time of the segment after it
    }

    #[test]
    fn ack_before_the_out_of_order_segment_also_gaps() {
        let (mut r, mut k) = (Reassembler::default(), Rec::default());
        r.next_seq = Some(1);
        seg(&mut r, &mut k, 1, b"aaaa", 4, 1);
        r.ack(9, &mut k);
        seg(&mut r, &mut k, 9, b"cccc", 4, 3);
        assert_eq!(k.layout(), b"aaaa????cccc");
    }

    #[test]
    fn partial_ack_gaps_only_up_to_it() {
        let (mut r, mut k) = (Reassembler::default(), Rec::default());
        r.next_seq = Some(1);
        seg(&mut r, &mut k, 11, b"k", 1, 3);
        r.ack(5, &mut k); // bytes 1..4 lost; 5..10 may still come
        assert_eq!(k.layout(), b"????");
        seg(&mut r, &mut k, 5, b"efghij", 6, 4);
        assert_eq!(k.layout(), b"????efghijk");
    }

    #[test]
    fn buffer_bound_forces_a_gap() {
        let (mut r, mut k) = (Reassembler::new(10), Rec::default());
        r.next_seq = Some(1);
        seg(&mut r, &mut k, 1, b"a", 1, 1);
        seg(&mut r, &mut k, 5, b"0123456789", 10, 2);
        seg(&mut r, &mut k, 15, b"X", 1, 3);
        assert_eq!(k.layout(), b"a???0123456789X");
        assert_eq!(r.pending_bytes, 0);
    }

    #[test]
    fn finish_delivers_what_is_buffered_after_a_gap() {
        let (mut r, mut k) = (Reassembler::default(), Rec::default());
        r.next_seq = Some(1);
        seg(&mut r, &mut k, 3, b"cd", 2, 2);
        r.finish(&mut k);
        assert_eq!(k.layout(), b"??cd");
        seg(&mut r, &mut k, 1, b"ab", 2, 3);
        assert_eq!(k.layout(), b"??cd");
    }

    #[test]
    fn snaplen_truncation_is_a_gap_for_the_missing_tail() {
        let (mut r, mut k) = (Reassembler::default(), Rec::default());
        r.next_seq = Some(1);
        seg(&mut r, &mut k, 1, b"abc", 6, 1);
        seg(&mut r, &mut k, 7, b"xyz", 3, 2);
        assert_eq!(k.layout(), b"abc???xyz");
        // truncated and out of order: the tail's gap comes when it drains
        let (mut r, mut k) = (Reassembler::default(), Rec::default());
        r.next_seq = Some(1);
        seg(&mut r, &mut k, 4, b"d", 3, 2);
        seg(&mut r, &mut k, 1, b"abc", 3, 1);
        seg(&mut r, &mut k, 7, b"g", 1, 3);
        assert_eq!(k.layout(), b"abcd??g");
    }

    #[test]
    fn mid_stream_start() {
        let (mut r, mut k) = (Reassembler::default(), Rec::default());
        seg(&mut r, &mut k, 123456, b"late", 4, 1);
        seg(&mut r, &mut k, 123460, b"r", 1, 2);
        assert_eq!(k.stream(), b"later");
    }

    #[test]
    fn longest_retransmission_is_kept_and_overlaps_trimmed_on_drain() {
        let (mut r, mut k) = (Reassembler::default(), Rec::default());
        r.next_seq = Some(1);
        seg(&mut r, &mut k, 5, b"ef", 2, 2);
        seg(&mut r, &mut k, 5, b"efgh", 4, 3); // longer: replaces
        seg(&mut r, &mut k, 5, b"e", 1, 4); // shorter: ignored
        seg(&mut r, &mut k, 7, b"ghij", 4, 5); // overlaps the kept one by 2
        assert_eq!(r.pending_bytes, 8);
        seg(&mut r, &mut k, 1, b"abcd", 4, 1);
        assert_eq!(k.stream(), b"abcdefghij");
        assert_eq!(k.times(), [1, 3, 5]);
        assert_eq!(r.duplicate_bytes, 2);
        assert_eq!(r.pending_bytes, 0);
    }

    /// A small deterministic generator (no dependency).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn below(&mut self, n: u64) -> u64 {
            if n == 0 { 0 } else { self.next() % n }
        }
    }

    #[test]
    fn any_segmentation_retransmission_and_reordering_gives_the_stream() {
        let mut g = Lcg(42);
        for _ in 0..500 {
            let n = 1 + g.below(400) as usize;
            let data: Vec<u8> = (0..n).map(|_| g.next() as u8).collect();
            let mut bounds: Vec<usize> = (0..g.below(30)).map(|_| 1 + g.below(n as u64) as usize).collect();
            bounds.extend([0, n]);
            bounds.sort_unstable();
            bounds.dedup();
            bounds.retain(|b| *b <= n);
            let mut sent: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
            for _ in 0..g.below(5) {
                let a = g.below(n as u64) as usize;
                let b = a + 1 + g.below((n - a) as u64) as usize;
                sent.push((a, b));
            }
            for i in (1..sent.len()).rev() {
                sent.swap(i, g.below(i as u64 + 1) as usize);
            }
            let isn = g.next() as u32 ^ ((g.next() as u32) << 16);
            let (mut r, mut k) = (Reassembler::default(), Rec::default());
            r.next_seq = Some(isn.wrapping_add(1));
            for (ts, (a, b)) in sent.iter().enumerate() {
                seg(&mut r, &mut k, isn.wrapping_add(1 + *a as u32), &data[*a..*b], (b - a) as u32, ts as i64);
            }
            r.finish(&mut k);
            assert_eq!(k.layout(), data);
            assert_eq!(r.gap_bytes, 0);
        }
    }

    #[test]
    fn lost_segments_become_gaps_and_everything_else_is_in_place() {
        let mut g = Lcg(7);
        for _ in 0..500 {
            let n = 1 + g.below(300) as usize;
            let data: Vec<u8> = (0..n).map(|_| g.next() as u8).collect();
            let mut bounds: Vec<usize> = (0..g.below(20)).map(|_| 1 + g.below(n as u64) as usize).collect();
            bounds.extend([0, n]);
            bounds.sort_unstable();
            bounds.dedup();
            let mut segs: Vec<(usize, usize)> =
                bounds.windows(2).map(|w| (w[0], w[1])).filter(|_| g.below(5) != 0).collect();
            for i in (1..segs.len()).rev() {
                segs.swap(i, g.below(i as u64 + 1) as usize);
            }
            let (mut r, mut k) = (Reassembler::new(64), Rec::default());
            r.next_seq = Some(1);
            for (ts, (a, b)) in segs.iter().enumerate() {
                seg(&mut r, &mut k, 1 + *a as u32, &data[*a..*b], (b - a) as u32, ts as i64);
                if g.below(10) < 3 {
                    r.ack(1 + g.below(n as u64 + 1) as u32, &mut k);
                }
            }
            r.finish(&mut k);
            let got = k.positions();
            let end = segs.iter().map(|s| s.1).max().unwrap_or(0);
            assert_eq!(got.len(), end);
            let mut received = vec![false; end];
            for (a, b) in &segs {
                received[*a..*b].iter_mut().for_each(|x| *x = true);
            }
            for (i, byte) in got.iter().enumerate() {
                assert!(byte.is_none() || *byte == Some(data[i]));
                assert!(byte.is_none() || received[i]);
            }
            assert!(end == 0 || got[end - 1].is_some());
            let gaps: u64 = k.parts.iter().filter(|p| p.0.is_none()).map(|p| p.1).sum();
            assert_eq!(gaps, r.gap_bytes);
            assert_eq!(r.gap_bytes as usize, got.iter().filter(|b| b.is_none()).count());
            assert_eq!(r.delivered as usize, end - r.gap_bytes as usize);
        }
    }

    #[test]
    fn hostile_input_never_panics_and_stays_bounded() {
        let mut g = Lcg(99);
        for round in 0..200 {
            let (mut r, mut k) = (Reassembler::new(1 + g.below(4096)), Rec::default());
            if round % 2 == 0 {
                r.next_seq = Some(g.next() as u32);
            }
            for ts in 0..300 {
                let seq = if g.below(2) == 0 { g.next() as u32 ^ ((g.next() as u32) << 20) } else {
                    r.next_seq.unwrap_or(0).wrapping_add(g.below(3000) as u32).wrapping_sub(1000)
                };
                let len = g.below(2000) as usize;
                let data: Vec<u8> = (0..len).map(|_| g.next() as u8).collect();
                let length = match g.below(4) {
                    0 => u32::MAX - g.below(10) as u32,
                    1 => (len as u32).saturating_sub(g.below(100) as u32), // data longer than the segment
                    _ => len as u32 + g.below(50) as u32,
                };
                seg(&mut r, &mut k, seq, &data, length, ts);
                if g.below(3) == 0 {
                    r.ack(g.next() as u32, &mut k);
                }
                assert!(r.pending_bytes <= r.max_buffer);
                assert!(r.pending.len() <= MAX_PENDING_SEGMENTS);
                assert_eq!(r.pending_bytes, r.pending.values().map(|p| p.data.len() as u64).sum::<u64>());
            }
            r.finish(&mut k);
            assert!(r.pending.is_empty());
            let delivered: u64 = k.parts.iter().filter(|p| p.0.is_some()).map(|p| p.1).sum();
            assert_eq!(delivered, r.delivered);
        }
    }

    #[test]
    fn many_uncaptured_segments_are_bounded_by_count() {
        let (mut r, mut k) = (Reassembler::default(), Rec::default());
        r.next_seq = Some(0);
        for i in 0..(MAX_PENDING_SEGMENTS as u32 + 10) {
            seg(&mut r, &mut k, 10 + i * 10, b"", 5, i64::from(i)); // nothing captured
        }
        assert!(r.pending.len() <= MAX_PENDING_SEGMENTS);
        assert!(r.gap_bytes > 0);
    }
}
