//! IP fragment reassembly, IPv4 and IPv6, before transport decoding.
//!
//! A datagram is keyed as the RFCs say: IPv4 by (source, destination, protocol,
//! identification) (RFC 791, RFC 815), IPv6 by (source, destination, identification of the
//! Fragment header) (RFC 8200 section 4.5). Its fragments are held until the datagram is
//! complete (every byte from 0 to the end the last fragment gives); the reassembled
//! datagram then goes to the transport decoder as if it had come whole, on the frame of the
//! fragment that completed it (as tshark shows it).
//!
//! Overlaps follow Wireshark's reassembly (`epan/reassemble.c`): the fragments are laid out
//! by offset (equal offsets in arrival order) and each byte comes from the first of them
//! that covers it, so the lowest offset wins and, at the same offset, the first received.
//! An overlap is counted (`ip_fragment_overlaps`), and one whose bytes differ from what is
//! held is also counted as a conflict (`ip_fragment_overlap_conflicts`): Wireshark flags
//! both and still reassembles. A second last fragment that gives another end is a
//! conflict too; the first end is kept.
//!
//! Bounded: a datagram not complete within [`Limits::timeout_us`] of its first fragment,
//! in capture time (30 s, Linux's `ipfrag_time`; tshark has no time limit, it holds the
//! fragments of a file to its end), is given up and its fragments counted as
//! `ip_fragments_timed_out`; beyond [`Limits::max_datagrams`] datagrams or
//! [`Limits::max_bytes`] bytes held, the oldest datagram is evicted
//! (`ip_fragments_evicted`). Expiry is checked when a fragment arrives, so frames that are
//! not fragments pay nothing.

use std::collections::HashMap;

use super::ip::{ext_header_len, IPV6_FRAGMENT};
use super::link::{Network, ETH_IPV4, ETH_IPV6};
use super::Drop;
use crate::bytes::{array, be16, be32, u8_at};

/// The largest datagram (its fragmentable part): IPv4's total length field, IPv6's payload
/// length field (RFC 8200: a longer reassembly is discarded).
const MAX_DATAGRAM: usize = 65535;

/// The bounds of the reassembly table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// capture-time µs from a datagram's first fragment until it is given up
    pub timeout_us: i64,
    /// fragment bytes held, all datagrams together
    pub max_bytes: usize,
    /// datagrams held
    pub max_datagrams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // 4 MiB is Linux's ipfrag_high_thresh; 1024 datagrams keep a fragment flood's
        // table scans short.
        Limits { timeout_us: 30_000_000, max_bytes: 4 << 20, max_datagrams: 1024 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    V4 { src: [u8; 4], dst: [u8; 4], proto: u8, id: u16 },
    V6 { src: [u8; 16], dst: [u8; 16], id: u32 },
}

/// One fragment as its frame carries it.
#[derive(Clone, Copy, Debug)]
pub struct Piece<'a> {
    key: Key,
    version: u8,
    src: [u8; 16],
    dst: [u8; 16],
    /// IPv4: the protocol; IPv6: the Next Header of the Fragment header
    proto: u8,
    /// in bytes, in the fragmentable part
    offset: usize,
    more: bool,
    data: &'a [u8],
}

/// A reassembled datagram: the IP payload (IPv6: the fragmentable part, which may start
/// with extension headers of type `proto`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub version: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    pub data: Vec<u8>,
}

/// The fragment in the IP header at `net` (which the IP layer found to be a fragment).
pub fn parse(d: &[u8], net: Network) -> Result<Piece<'_>, Drop> {
    match net.etype {
        ETH_IPV4 => ipv4(d, net.off),
        ETH_IPV6 => ipv6(d, net.off),
        _ => Err(Drop::NonIp),
    }
}

fn ipv4(d: &[u8], off: usize) -> Result<Piece<'_>, Drop> {
    let t = Drop::TruncatedIp;
    let ihl = usize::from(u8_at(d, off).ok_or(t)? & 0x0F) * 4;
    let total = usize::from(be16(d, off.saturating_add(2)).ok_or(t)?);
    let id = be16(d, off.saturating_add(4)).ok_or(t)?;
    let frag = be16(d, off.saturating_add(6)).ok_or(t)?;
    let proto = u8_at(d, off.saturating_add(9)).ok_or(t)?;
    let s4 = array::<4>(d, off.saturating_add(12)).ok_or(t)?;
    let d4 = array::<4>(d, off.saturating_add(16)).ok_or(t)?;
    if ihl < 20 || total < ihl {
        // a fragment must say its length (no TSO zero here): its bytes are placed by it
        return Err(t);
    }
    // a snapped fragment cannot be reassembled
    let data = d.get(off.saturating_add(ihl)..off.saturating_add(total)).ok_or(t)?;
    let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
    src[..4].copy_from_slice(&s4);
    dst[..4].copy_from_slice(&d4);
    Ok(Piece {
        key: Key::V4 { src: s4, dst: d4, proto, id },
        version: 4,
        src,
        dst,
        proto,
        offset: usize::from(frag & 0x1FFF) * 8,
        more: frag & 0x2000 != 0,
        data,
    })
}

fn ipv6(d: &[u8], off: usize) -> Result<Piece<'_>, Drop> {
    let t = Drop::TruncatedIp;
    let plen = usize::from(be16(d, off.saturating_add(4)).ok_or(t)?);
    let mut proto = u8_at(d, off.saturating_add(6)).ok_or(t)?;
    let src = array::<16>(d, off.saturating_add(8)).ok_or(t)?;
    let dst = array::<16>(d, off.saturating_add(24)).ok_or(t)?;
    if plen == 0 {
        // a jumbogram has no Fragment header (RFC 2675), and TSO does not fragment
        return Err(Drop::IpFragmentBad);
    }
    let end = off.saturating_add(40).saturating_add(plen);
    let mut pos = off.saturating_add(40);
    // the unfragmentable part: the headers before the Fragment header
    while proto != IPV6_FRAGMENT {
        let len = ext_header_len(d, pos, proto)?;
        proto = u8_at(d, pos).ok_or(t)?;
        pos = pos.saturating_add(len);
    }
    let next = u8_at(d, pos).ok_or(t)?;
    let field = be16(d, pos.saturating_add(2)).ok_or(t)?;
    let id = be32(d, pos.saturating_add(4)).ok_or(t)?;
    let data = d.get(pos.saturating_add(8)..end).ok_or(t)?;
    Ok(Piece {
        key: Key::V6 { src, dst, id },
        version: 6,
        src,
        dst,
        proto: next,
        offset: usize::from(field & 0xFFF8),
        more: field & 1 != 0,
        data,
    })
}

#[derive(Clone, Debug)]
struct Part {
    offset: usize,
    data: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Pending {
    first_ts_us: i64,
    /// arrival order of the first fragment: the oldest is evicted first
    order: u64,
    version: u8,
    src: [u8; 16],
    dst: [u8; 16],
    /// IPv4: the key's; IPv6: the offset-0 fragment's Next Header (RFC 8200 section 4.5)
    proto: Option<u8>,
    /// the end the last fragment (M clear) gives
    total: Option<usize>,
    /// in arrival order
    parts: Vec<Part>,
    bytes: usize,
}

impl Pending {
    /// The parts' indices by offset, equal offsets in arrival order (Wireshark's order).
    fn by_offset(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.parts.len()).collect();
        order.sort_by_key(|&i| self.parts.get(i).map_or(0, |p| p.offset));
        order
    }

    /// Whether every byte from 0 to the end is held.
    fn complete(&self) -> bool {
        let Some(total) = self.total else { return false };
        let mut pos = 0;
        for part in self.by_offset().iter().filter_map(|&i| self.parts.get(i)) {
            if part.offset > pos {
                return false;
            }
            pos = pos.max(part.offset + part.data.len());
        }
        pos >= total
    }

    /// The datagram's bytes: each byte from the first part (by offset) that covers it.
    fn assemble(&self, total: usize) -> Vec<u8> {
        let mut out = vec![0u8; total];
        let mut filled = 0;
        for part in self.by_offset().iter().filter_map(|&i| self.parts.get(i)) {
            let end = (part.offset + part.data.len()).min(total);
            if end > filled {
                let from = filled.max(part.offset);
                if let (Some(dst), Some(src)) =
                    (out.get_mut(from..end), part.data.get(from - part.offset..end - part.offset))
                {
                    dst.copy_from_slice(src);
                }
                filled = end;
            }
        }
        out
    }
}

/// What the reassembler has counted (events, not frames: the frames are the decoder's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub reassembled: u64,
    /// fragments of the datagrams given up after the time limit
    pub timed_out: u64,
    /// fragments of the datagrams evicted by the count or memory limit
    pub evicted: u64,
    /// fragments that overlapped bytes already held
    pub overlaps: u64,
    /// of those, the ones whose bytes differed (or a second, different end)
    pub overlap_conflicts: u64,
}

/// The table of datagrams being reassembled.
#[derive(Clone, Debug, Default)]
pub struct Reassembler {
    pub limits: Limits,
    pub counters: Counters,
    table: HashMap<Key, Pending>,
    held_bytes: usize,
    next_order: u64,
    /// the earliest capture time at which a held datagram times out
    next_expiry: Option<i64>,
}

impl Reassembler {
    pub fn new(limits: Limits) -> Self {
        Reassembler { limits, ..Default::default() }
    }

    /// Fragments held now (of datagrams not complete yet).
    pub fn held_fragments(&self) -> u64 {
        self.table.values().map(|p| p.parts.len() as u64).sum()
    }

    /// Take one fragment seen at `ts_us`: the datagram if it is now complete, `None` if the
    /// fragment is held, or why it was refused (a bad fragment: not held).
    pub fn add(&mut self, piece: Piece<'_>, ts_us: i64) -> Result<Option<Datagram>, Drop> {
        self.expire(ts_us);
        let len = piece.data.len();
        let end = piece.offset.saturating_add(len);
        // RFC 791/8200: a fragment with more to come carries a multiple of 8 bytes (so not
        // 0), and no datagram is longer than 65535 bytes.
        if end > MAX_DATAGRAM || (piece.more && (len == 0 || !len.is_multiple_of(8))) {
            return Err(Drop::IpFragmentBad);
        }
        if !self.table.contains_key(&piece.key) {
            while self.table.len() >= self.limits.max_datagrams.max(1) {
                self.evict_oldest();
            }
        }
        while self.held_bytes.saturating_add(len) > self.limits.max_bytes && !self.table.is_empty() {
            self.evict_oldest();
        }
        let order = self.next_order;
        let pending = self.table.entry(piece.key).or_insert_with(|| Pending {
            first_ts_us: ts_us,
            order,
            version: piece.version,
            src: piece.src,
            dst: piece.dst,
            proto: if piece.version == 4 { Some(piece.proto) } else { None },
            total: None,
            parts: Vec::new(),
            bytes: 0,
        });
        if pending.parts.is_empty() {
            self.next_order += 1;
            let expiry = ts_us.saturating_add(self.limits.timeout_us);
            self.next_expiry = Some(self.next_expiry.map_or(expiry, |e| e.min(expiry)));
        }
        let (mut overlap, mut conflict) = (false, false);
        for part in &pending.parts {
            let from = part.offset.max(piece.offset);
            let to = (part.offset + part.data.len()).min(end);
            if from < to {
                overlap = true;
                let held = part.data.get(from - part.offset..to - part.offset);
                conflict |= held != piece.data.get(from - piece.offset..to - piece.offset);
            }
        }
        if !piece.more {
            match pending.total {
                None => pending.total = Some(end),
                Some(t) if t != end => conflict = true,
                Some(_) => {}
            }
        }
        self.counters.overlaps += u64::from(overlap);
        self.counters.overlap_conflicts += u64::from(conflict);
        if piece.offset == 0 {
            pending.proto.get_or_insert(piece.proto);
        }
        pending.parts.push(Part { offset: piece.offset, data: piece.data.to_vec() });
        pending.bytes += len;
        self.held_bytes += len;
        if !pending.complete() {
            return Ok(None);
        }
        let Some(done) = self.table.remove(&piece.key) else { return Ok(None) };
        self.held_bytes = self.held_bytes.saturating_sub(done.bytes);
        self.counters.reassembled += 1;
        let total = done.total.unwrap_or(0);
        Ok(Some(Datagram {
            version: done.version,
            src: done.src,
            dst: done.dst,
            proto: done.proto.unwrap_or(piece.proto),
            data: done.assemble(total),
        }))
    }

    /// Give up the datagrams whose time is over at `now_us`.
    fn expire(&mut self, now_us: i64) {
        match self.next_expiry {
            Some(e) if now_us >= e => {}
            _ => return,
        }
        let timeout = self.limits.timeout_us;
        let (mut lost, mut freed) = (0u64, 0usize);
        self.table.retain(|_, p| {
            let keep = now_us < p.first_ts_us.saturating_add(timeout);
            if !keep {
                lost += p.parts.len() as u64;
                freed += p.bytes;
            }
            keep
        });
        self.counters.timed_out += lost;
        self.held_bytes = self.held_bytes.saturating_sub(freed);
        self.next_expiry = self.table.values().map(|p| p.first_ts_us.saturating_add(timeout)).min();
    }

    fn evict_oldest(&mut self) {
        let Some(key) = self.table.iter().min_by_key(|(_, p)| p.order).map(|(k, _)| *k) else { return };
        if let Some(p) = self.table.remove(&key) {
            self.counters.evicted += p.parts.len() as u64;
            self.held_bytes = self.held_bytes.saturating_sub(p.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::link::LINKTYPE_RAW;
    use super::super::{Decoder, Drop, Frame};
    use super::*;

    /// A UDP datagram from 10.0.0.1:5353 to 10.0.0.2:53 with `n` payload bytes.
    fn udp(n: usize) -> Vec<u8> {
        let mut v = vec![0x14, 0xe9, 0, 53];
        v.extend_from_slice(&((8 + n) as u16).to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend((0..n).map(|i| (i % 251) as u8));
        v
    }

    /// The IPv4 fragment of `l4` at `[from, to)`, more to come when `more`.
    fn v4(l4: &[u8], id: u16, from: usize, to: usize, more: bool) -> Vec<u8> {
        let data = &l4[from..to];
        let mut v = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        v[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        v[4..6].copy_from_slice(&id.to_be_bytes());
        let field = (from / 8) as u16 | if more { 0x2000 } else { 0 };
        v[6..8].copy_from_slice(&field.to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    /// The IPv6 fragment of `part` (the fragmentable part, of first type `next`) at
    /// `[from, to)`, behind a hop-by-hop header (unfragmentable part).
    fn v6(part: &[u8], next: u8, id: u32, from: usize, to: usize, more: bool) -> Vec<u8> {
        let data = &part[from..to];
        let mut v = vec![0x60, 0, 0, 0];
        v.extend_from_slice(&((8 + 8 + data.len()) as u16).to_be_bytes());
        v.extend_from_slice(&[0, 64]); // hop-by-hop first
        v.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        v.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        v.extend_from_slice(&[IPV6_FRAGMENT, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop: PadN
        v.push(next);
        v.push(0);
        v.extend_from_slice(&((from as u16) | u16::from(more)).to_be_bytes());
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    /// Decode `frames` in order (timestamps 1 s apart from `ts0`); the packets and payloads.
    fn run(dec: &mut Decoder, frames: &[Vec<u8>]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        for (i, data) in frames.iter().enumerate() {
            let frame = Frame {
                number: i as u64 + 1,
                ts_us: i as i64 * 1_000_000,
                linktype: LINKTYPE_RAW,
                data,
                orig_len: data.len() as u32,
            };
            if let Some((p, payload)) = dec.decode(&frame) {
                out.push((p.frame, p.payload_len, payload.into_owned()));
            }
        }
        out
    }

    fn counter(dec: &Decoder, name: &str) -> u64 {
        dec.counters().iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v)
    }

    fn dropped(dec: &Decoder, name: &str) -> u64 {
        dec.dropped().iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v)
    }

    #[test]
    fn in_order_and_reversed() {
        let l4 = udp(3000);
        let cuts = [(0, 1480, true), (1480, 2960, true), (2960, 3008, false)];
        let frags: Vec<Vec<u8>> = cuts.iter().map(|&(a, b, m)| v4(&l4, 7, a, b, m)).collect();
        for order in [vec![0, 1, 2], vec![2, 1, 0], vec![1, 2, 0]] {
            let mut dec = Decoder::new(65535);
            let frames: Vec<Vec<u8>> = order.iter().map(|&i| frags[i].clone()).collect();
            let out = run(&mut dec, &frames);
            // one packet, on the frame that completed the datagram, with the whole payload
            assert_eq!(out, vec![(3, 3000, l4[8..].to_vec())], "order {order:?}");
            assert_eq!(dropped(&dec, "ip_fragment"), 2);
            assert_eq!(counter(&dec, "ip_datagrams_reassembled"), 1);
            assert_eq!(counter(&dec, "ip_fragments_held"), 0);
        }
    }

    #[test]
    fn the_snap_length_applies_to_the_reassembled_payload() {
        let l4 = udp(100);
        let mut dec = Decoder::new(10);
        let out = run(&mut dec, &[v4(&l4, 1, 0, 56, true), v4(&l4, 1, 56, 108, false)]);
        assert_eq!(out, vec![(2, 100, l4[8..18].to_vec())]);
    }

    #[test]
    fn overlaps_keep_the_lowest_offset_then_the_first_received() {
        let l4 = udp(200);
        let mut other = l4.clone();
        other[40..80].iter_mut().for_each(|b| *b = 0xEE);
        let mut dec = Decoder::new(65535);
        // [0,64) then [32,96) of other bytes (overlapping [32,64) differently, and adding
        // [64,96) whose bytes are other's), then the rest
        let frames = [v4(&l4, 9, 0, 64, true), v4(&other, 9, 32, 96, true), v4(&l4, 9, 96, 208, false)];
        let out = run(&mut dec, &frames);
        let mut expect = l4[8..].to_vec();
        expect[56..72].iter_mut().for_each(|b| *b = 0xEE); // l4[64..80]: only the second had them
        assert_eq!(out, vec![(3, 200, expect)]);
        assert_eq!((counter(&dec, "ip_fragment_overlaps"), counter(&dec, "ip_fragment_overlap_conflicts")), (1, 1));
    }

    #[test]
    fn duplicates_are_overlaps_without_conflict() {
        let l4 = udp(100);
        let mut dec = Decoder::new(65535);
        let a = v4(&l4, 3, 0, 56, true);
        let out = run(&mut dec, &[a.clone(), a, v4(&l4, 3, 56, 108, false)]);
        assert_eq!(out, vec![(3, 100, l4[8..].to_vec())]);
        assert_eq!((counter(&dec, "ip_fragment_overlaps"), counter(&dec, "ip_fragment_overlap_conflicts")), (1, 0));
        assert_eq!(dropped(&dec, "ip_fragment"), 2);
    }

    #[test]
    fn a_missing_fragment_times_out() {
        let l4 = udp(100);
        let mut dec = Decoder::with_limits(65535, Limits { timeout_us: 5_000_000, ..Limits::default() });
        let at = |dec: &mut Decoder, ts_us: i64, data: &[u8]| {
            let frame = Frame { number: 1, ts_us, linktype: LINKTYPE_RAW, data, orig_len: 0 };
            dec.decode(&frame).map(|(p, _)| p.frame)
        };
        // datagram 1's last fragment never comes; datagram 2 starts at 3 s
        assert_eq!(at(&mut dec, 0, &v4(&l4, 1, 0, 56, true)), None);
        assert_eq!(at(&mut dec, 3_000_000, &v4(&l4, 2, 0, 56, true)), None);
        assert_eq!(at(&mut dec, 4_999_999, &v4(&l4, 3, 0, 56, true)), None);
        assert_eq!((counter(&dec, "ip_fragments_timed_out"), counter(&dec, "ip_fragments_held")), (0, 3));
        // at 5 s datagram 1's time is over (checked when a fragment comes), not datagram 2's
        assert_eq!(at(&mut dec, 5_000_000, &v4(&l4, 1, 56, 108, false)), None);
        assert_eq!((counter(&dec, "ip_fragments_timed_out"), counter(&dec, "ip_fragments_held")), (1, 3));
        // datagram 2 still completes within its 5 s
        assert_eq!(at(&mut dec, 7_999_999, &v4(&l4, 2, 56, 108, false)), Some(1));
        assert_eq!(dropped(&dec, "ip_fragment"), 4);
    }

    #[test]
    fn too_many_datagrams_evict_the_oldest() {
        let l4 = udp(100);
        let mut dec = Decoder::with_limits(65535, Limits { max_datagrams: 3, ..Limits::default() });
        let firsts: Vec<Vec<u8>> = (0..5).map(|id| v4(&l4, id, 0, 56, true)).collect();
        assert!(run(&mut dec, &firsts).is_empty());
        assert_eq!((counter(&dec, "ip_fragments_evicted"), counter(&dec, "ip_fragments_held")), (2, 3));
        // the evicted datagram 0 no longer completes; datagram 4 does
        let out = run(&mut dec, &[v4(&l4, 0, 56, 108, false), v4(&l4, 4, 56, 108, false)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].2, l4[8..].to_vec());
    }

    #[test]
    fn the_memory_limit_evicts_the_oldest() {
        let l4 = udp(3000);
        let mut dec = Decoder::with_limits(65535, Limits { max_bytes: 2000, ..Limits::default() });
        assert!(run(&mut dec, &[v4(&l4, 1, 0, 1480, true), v4(&l4, 2, 0, 1480, true)]).is_empty());
        assert_eq!((counter(&dec, "ip_fragments_evicted"), counter(&dec, "ip_fragments_held")), (1, 1));
    }

    #[test]
    fn bad_fragments_are_named_drops() {
        let l4 = udp(200);
        let mut dec = Decoder::new(65535);
        let mut beyond = v4(&l4, 1, 0, 16, false);
        beyond[6..8].copy_from_slice(&0x1FFFu16.to_be_bytes()); // offset 65528 + 16 bytes
        let not_eight = v4(&l4, 2, 0, 20, true);
        let empty = v4(&l4, 3, 0, 0, true);
        let mut snapped = v4(&l4, 4, 0, 64, true);
        snapped.truncate(50);
        assert!(run(&mut dec, &[beyond, not_eight, empty, snapped]).is_empty());
        assert_eq!(dropped(&dec, "ip_fragment_bad"), 3);
        assert_eq!(dropped(&dec, "truncated_ip"), 1);
        assert_eq!(counter(&dec, "ip_fragments_held"), 0);
    }

    #[test]
    fn ipv6_with_extension_headers_before_and_after_the_fragment_header() {
        // fragmentable part: destination options (8 bytes) then UDP
        let mut part = vec![17, 0, 1, 4, 0, 0, 0, 0];
        part.extend_from_slice(&udp(300));
        let dest_opts = 60;
        let frags = [
            v6(&part, dest_opts, 77, 0, 160, true),
            v6(&part, dest_opts, 77, 160, 304, true),
            v6(&part, dest_opts, 77, 304, part.len(), false),
        ];
        let mut dec = Decoder::new(65535);
        let out = run(&mut dec, &[frags[2].clone(), frags[0].clone(), frags[1].clone()]);
        assert_eq!(out, vec![(3, 300, part[16..].to_vec())]);
        assert_eq!(counter(&dec, "ip_datagrams_reassembled"), 1);
    }

    #[test]
    fn an_ipv6_atomic_fragment_is_the_whole_datagram() {
        let part = udp(40);
        let mut dec = Decoder::new(65535);
        let out = run(&mut dec, &[v6(&part, 17, 5, 0, part.len(), false)]);
        assert_eq!(out, vec![(1, 40, part[8..].to_vec())]);
        assert!(dec.counters().is_empty());
    }

    #[test]
    fn ipv4_and_ipv6_keys_do_not_mix() {
        // same id, other protocol: another datagram (RFC 791's key includes the protocol)
        let l4 = udp(100);
        let mut tcp_proto = v4(&l4, 1, 56, 108, false);
        tcp_proto[9] = 6;
        let mut dec = Decoder::new(65535);
        assert!(run(&mut dec, &[v4(&l4, 1, 0, 56, true), tcp_proto]).is_empty());
        assert_eq!(counter(&dec, "ip_fragments_held"), 2);
    }

    #[test]
    fn hostile_fragments_do_not_panic() {
        let l4 = udp(300);
        let seeds = [v4(&l4, 1, 0, 160, true), v6(&l4, 17, 1, 0, 160, true), v6(&l4, 17, 1, 160, 308, false)];
        let mut dec = Decoder::with_limits(64, Limits { max_datagrams: 8, max_bytes: 4096, timeout_us: 3 });
        let mut x: u32 = 12345;
        let mut frames = Vec::new();
        for i in 0..3000 {
            let mut f = seeds[i % seeds.len()].clone();
            for _ in 0..3 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let at = (x >> 8) as usize % f.len();
                f[at] = (x >> 20) as u8;
            }
            if x.is_multiple_of(5) {
                f.truncate((x >> 4) as usize % (f.len() + 1));
            }
            frames.push(f);
        }
        let out = run(&mut dec, &frames);
        let dropped: u64 = dec.dropped().iter().map(|(_, n)| n).sum();
        assert_eq!(out.len() as u64 + dropped, frames.len() as u64);
        let _ = Drop::ALL;
    }
}
