//! The live capture's ring reader: the frames of `TPACKET_V3` blocks, decoded and batched.
//!
//! A Linux packet socket with a `PACKET_RX_RING` (TPACKET_V3) shares a ring of fixed-size
//! blocks with the kernel (`producers/af_packet.py` sets it up and maps it). The kernel
//! fills a block with frames and hands it over by setting `TP_STATUS_USER` in the block's
//! status; we walk its frames (`tpacket3_hdr`: next offset, time, snap and wire lengths,
//! link-layer offset, then the `sockaddr_ll` with the device type and packet type) and
//! give the block back by writing `TP_STATUS_KERNEL`. Layouts are those of
//! `<linux/if_packet.h>`, in the host's byte order.
//!
//! The walk is over memory the kernel also writes: only blocks the status word says are
//! ours are read (acquire load), and they are given back with a release store, as
//! libpcap does. Every offset inside a block is checked against the block: a wrong
//! offset ends that block's walk, it never reads outside it.

use crate::batch::Batcher;
use crate::bytes::array;
use crate::decode::link::{LINKTYPE_ETHERNET, LINKTYPE_RAW};
use crate::decode::{Decoder, Frame};

const TP_STATUS_USER: u32 = 1;
/// sll_pkttype of a packet this host sent
const PACKET_OUTGOING: u8 = 4;
/// Loopback's device type. A packet socket sees a loopback packet twice, once as it is
/// sent (PACKET_OUTGOING) and once as it is received; capture keeps the received copy,
/// as tcpdump -i lo shows each packet once.
pub const ARPHRD_LOOPBACK: u16 = 772;
/// offset of the block status word in a block (`tpacket_block_desc.hdr.bh1.block_status`)
const BLOCK_STATUS: usize = 8;

/// The link type of what the socket returns for an ARPHRD_* device type (`SOCK_RAW`
/// returns the frame from the link-layer header on; devices without one, like tun or
/// WireGuard, return the IP packet); -1: not decoded (`unsupported_linktype`).
pub fn linktype_of_hatype(hatype: u16) -> i64 {
    match hatype {
        1 | 772 => LINKTYPE_ETHERNET, // ARPHRD_ETHER (veth, bridges, bonds), ARPHRD_LOOPBACK
        65534 | 519 | 768 | 769 | 512 => LINKTYPE_RAW, // ARPHRD_NONE, RAWIP, TUNNEL, TUNNEL6, PPP (IP, no header)
        774 => 10,  // ARPHRD_FDDI
        801 => 105, // ARPHRD_IEEE80211
        802 => 119, // ARPHRD_IEEE80211_PRISM
        803 => 127, // ARPHRD_IEEE80211_RADIOTAP
        _ => -1,
    }
}

/// One frame of a block, as the kernel describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingFrame<'a> {
    pub ts_us: i64,
    pub hatype: u16,
    pub pkttype: u8,
    pub wire_len: u32,
    pub data: &'a [u8],
}

fn ne32(b: &[u8], at: usize) -> Option<u32> {
    array(b, at).map(u32::from_ne_bytes)
}

fn ne16(b: &[u8], at: usize) -> Option<u16> {
    array(b, at).map(u16::from_ne_bytes)
}

/// The frames of one block the kernel handed over (`block` is the whole block).
pub fn walk_block<'a>(block: &'a [u8], mut each: impl FnMut(RingFrame<'a>)) {
    let (Some(num), Some(first)) = (ne32(block, 12), ne32(block, 16)) else { return };
    let mut off = first as usize;
    for _ in 0..num {
        let Some(frame) = ring_frame(block, off) else { return };
        each(frame);
        let Some(next) = ne32(block, off).filter(|n| *n > 0) else { return };
        off += next as usize;
    }
}

/// The `tpacket3_hdr` at `off`, and its `sockaddr_ll` at `off + 48`.
fn ring_frame(block: &[u8], off: usize) -> Option<RingFrame<'_>> {
    let sec = ne32(block, off.checked_add(4)?)?;
    let nsec = ne32(block, off + 8)?;
    let snaplen = ne32(block, off + 12)? as usize;
    let wire_len = ne32(block, off + 16)?;
    let mac = usize::from(ne16(block, off + 24)?);
    let hatype = ne16(block, off + 56)?;
    let pkttype = *block.get(off + 58)?;
    let start = off + mac;
    let end = start.saturating_add(snaplen).min(block.len());
    let data = block.get(start..end).unwrap_or(&[]);
    Some(RingFrame { ts_us: i64::from(sec) * 1_000_000 + i64::from(nsec / 1000), hatype, pkttype, wire_len, data })
}

/// What a live capture's frames came to: the counts `wire.stats` reports.
#[derive(Clone, Debug, Default)]
pub struct Feed {
    /// the eBPF filter already dropped loopback's sent copies in the kernel: only without
    /// it are they dropped here
    pub user_filter: bool,
    /// loopback TCP/UDP ports of our own pipeline (embedded broker, registry): capturing
    /// them would publish our own publishing, without end
    pub own_ports: Vec<u16>,
    /// frames read (loopback copies not counted), also the frame numbers
    pub frames: u64,
    pub loopback_copies: u64,
    pub own_packets: u64,
    pub first_ts_us: Option<i64>,
    pub last_ts_us: Option<i64>,
}

impl Feed {
    /// One frame of a ring: filtered, decoded and batched.
    pub fn frame(&mut self, f: &RingFrame<'_>, decoder: &mut Decoder, batcher: &mut Batcher) {
        self.last_ts_us = Some(f.ts_us);
        if self.user_filter && f.pkttype == PACKET_OUTGOING && f.hatype == ARPHRD_LOOPBACK {
            self.loopback_copies += 1;
            return;
        }
        self.frames += 1;
        let frame = Frame {
            number: self.frames,
            ts_us: f.ts_us,
            linktype: linktype_of_hatype(f.hatype),
            data: f.data,
            orig_len: f.wire_len,
        };
        if let Some((packet, payload)) = decoder.decode(&frame) {
            if f.hatype == ARPHRD_LOOPBACK
                && (self.own_ports.contains(&packet.src_port) || self.own_ports.contains(&packet.dst_port))
            {
                self.own_packets += 1;
                return;
            }
            batcher.add(&packet, &payload, decoder.path());
        }
        self.first_ts_us.get_or_insert(f.ts_us);
    }
}

/// A mapped ring: `block_count` blocks of `block_size` bytes at `base`.
pub struct Ring {
    pub base: *mut u8,
    pub len: usize,
    pub block_size: usize,
    pub block_count: usize,
}

// SAFETY: a Ring is only a description of a mapping that its user keeps alive while it
// drains (the Python binding holds the buffer for the whole call); moving that
// description to another thread (the GIL released) reads the same shared memory.
unsafe impl Send for Ring {}

impl Ring {
    /// Walk every block the kernel has handed over, from `next` on, giving each back
    /// after its frames are read; return the next block to look at (still the kernel's).
    ///
    /// # Safety
    /// `base..base + len` must be a live mapping of the ring (the caller holds it), and
    /// the blocks must be laid out as `PACKET_RX_RING` with TPACKET_V3 lays them out.
    pub unsafe fn drain(&self, mut next: usize, mut each: impl FnMut(RingFrame<'_>)) -> usize {
        if self.block_size < 64 || self.block_count == 0 || self.block_size.saturating_mul(self.block_count) > self.len {
            return next;
        }
        for _ in 0..self.block_count {
            let block_base = self.base.add(next % self.block_count * self.block_size);
            // The status word is written by the kernel: an atomic load, acquire so that
            // the block's frames are read after it.
            let status = &*(block_base.add(BLOCK_STATUS) as *const std::sync::atomic::AtomicU32);
            if status.load(std::sync::atomic::Ordering::Acquire) & TP_STATUS_USER == 0 {
                break;
            }
            let block = std::slice::from_raw_parts(block_base as *const u8, self.block_size);
            walk_block(block, &mut each);
            // TP_STATUS_KERNEL: the kernel's again (release: our reads are done)
            status.store(0, std::sync::atomic::Ordering::Release);
            next = (next + 1) % self.block_count;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block of `frames` (hatype, pkttype, bytes), laid out as the kernel does.
    fn block(frames: &[(u16, u8, Vec<u8>)], size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        b[8..12].copy_from_slice(&TP_STATUS_USER.to_ne_bytes());
        b[12..16].copy_from_slice(&(frames.len() as u32).to_ne_bytes());
        b[16..20].copy_from_slice(&48u32.to_ne_bytes());
        let mut off = 48;
        for (i, (hatype, pkttype, data)) in frames.iter().enumerate() {
            let mac = 80usize;
            let next = (mac + data.len() + 15) & !15;
            let last = i + 1 == frames.len();
            b[off..off + 4].copy_from_slice(&(if last { 0 } else { next as u32 }).to_ne_bytes());
            b[off + 4..off + 8].copy_from_slice(&(1_000u32 + i as u32).to_ne_bytes());
            b[off + 8..off + 12].copy_from_slice(&5_000u32.to_ne_bytes());
            b[off + 12..off + 16].copy_from_slice(&(data.len() as u32).to_ne_bytes());
            b[off + 16..off + 20].copy_from_slice(&(data.len() as u32 + 10).to_ne_bytes());
            b[off + 24..off + 26].copy_from_slice(&(mac as u16).to_ne_bytes());
            b[off + 56..off + 58].copy_from_slice(&hatype.to_ne_bytes());
            b[off + 58] = *pkttype;
            b[off + mac..off + mac + data.len()].copy_from_slice(data);
            off += next;
        }
        b
    }

    #[test]
    fn a_block_is_walked_frame_by_frame() {
        let b = block(&[(1, 0, b"abc".to_vec()), (772, 4, b"de".to_vec())], 4096);
        let mut seen = Vec::new();
        walk_block(&b, |f| seen.push((f.ts_us, f.hatype, f.pkttype, f.wire_len, f.data.to_vec())));
        assert_eq!(seen, vec![(1_000_000_005, 1, 0, 13, b"abc".to_vec()), (1_001_000_005, 772, 4, 12, b"de".to_vec())]);
    }

    #[test]
    fn a_ring_gives_blocks_back_and_stops_at_the_kernels() {
        let size = 4096;
        let mut ring = [block(&[(1, 0, b"x".to_vec())], size), block(&[(1, 0, b"y".to_vec())], size), vec![0; size]]
            .concat();
        let r = Ring { base: ring.as_mut_ptr(), len: ring.len(), block_size: size, block_count: 3 };
        let mut n = 0;
        let next = unsafe { r.drain(0, |_| n += 1) };
        assert_eq!((next, n), (2, 2));
        assert_eq!(ring[8..12], [0, 0, 0, 0]);
        assert_eq!(ring[size + 8..size + 12], [0, 0, 0, 0]);
    }

    #[test]
    fn hostile_offsets_stay_inside_the_block() {
        let mut b = block(&[(1, 0, b"abc".to_vec()), (1, 0, b"def".to_vec())], 512);
        b[12..16].copy_from_slice(&1000u32.to_ne_bytes()); // more frames than there are
        b[48 + 24..48 + 26].copy_from_slice(&60000u16.to_ne_bytes()); // mac past the end
        let mut seen = Vec::new();
        walk_block(&b, |f| seen.push(f.data.to_vec()));
        assert_eq!(seen, vec![b"".to_vec(), b"def".to_vec()]);
        let mut s = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let mut g = b.clone();
            for _ in 0..8 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let at = (s as usize) % g.len();
                g[at] = (s >> 32) as u8;
            }
            walk_block(&g, |f| assert!(f.data.len() <= 512));
        }
    }

    #[test]
    fn loopback_copies_and_own_ports_are_left_out() {
        let mut feed = Feed { user_filter: true, own_ports: vec![9092], ..Feed::default() };
        let mut d = Decoder::new(65535);
        let mut b = Batcher::new(1, 100, 1 << 20);
        let f = RingFrame { ts_us: 1, hatype: ARPHRD_LOOPBACK, pkttype: PACKET_OUTGOING, wire_len: 0, data: &[] };
        feed.frame(&f, &mut d, &mut b);
        assert_eq!((feed.loopback_copies, feed.frames, feed.first_ts_us, feed.last_ts_us), (1, 0, None, Some(1)));
        let g = RingFrame { pkttype: 0, ts_us: 2, ..f };
        feed.frame(&g, &mut d, &mut b); // empty: truncated_link, still a frame
        assert_eq!((feed.frames, feed.first_ts_us), (1, Some(2)));
    }
}
