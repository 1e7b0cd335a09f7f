//! Per-partition batches of decoded packets: a header block and a payload blob each.
//!
//! A packet goes to the partition of its flow ([`crate::layout::partition_of`]), in
//! capture order. A partition's batch is complete when it holds `batch_packets` packets
//! or `batch_bytes` payload bytes, whichever first; complete batches queue in
//! [`Batcher::ready`] in the order they completed, for the publisher to send.

use std::collections::HashMap;

use crate::decode::tunnel::{write_path, Layer};
use crate::layout::{partition_of, Packet, RECORD_SIZE};

/// The largest payload one packet brings (an IP datagram's), the room a batch keeps
/// beyond `batch_bytes` so that the packet completing it fits without a reallocation.
const MAX_PAYLOAD: usize = 1 << 16;

/// A complete batch: what one `PacketBatch` message carries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub partition: u32,
    pub count: u32,
    /// `count` packed 80-byte headers
    pub headers: Vec<u8>,
    /// the captured payloads, at the headers' `payload_off`
    pub payloads: Vec<u8>,
    /// Empty when no packet of the batch came through a tunnel; else one little-endian
    /// u32 per packet: 0 for none, `i` for the `i`-th path of `tunnel_paths`.
    pub tunnel_of: Vec<u8>,
    /// The distinct tunnel paths of the batch's packets ([`write_path`]), back to back.
    pub tunnel_paths: Vec<u8>,
}

/// The packet being added to `b` (its `count`-th) came through `path`: write its number
/// in the batch's path table (`numbers`: path bytes -> number, for this batch; a batch
/// holds few distinct paths, an overlay's node pairs), the packets before it without one
/// if it is the first.
#[cold]
#[inline(never)]
fn add_path(b: &mut Batch, numbers: &mut HashMap<Vec<u8>, u32>, path: &[Layer]) {
    if b.tunnel_of.is_empty() {
        numbers.clear();
        b.tunnel_of.resize(b.count as usize * 4, 0);
    }
    let number = if path.is_empty() {
        0
    } else {
        let mut bytes = Vec::with_capacity(1 + path.len() * crate::decode::tunnel::LAYER_SIZE);
        write_path(path, &mut bytes);
        let next = numbers.len() as u32 + 1;
        *numbers.entry(bytes).or_insert_with_key(|bytes| {
            b.tunnel_paths.extend_from_slice(bytes);
            next
        })
    };
    b.tunnel_of.extend_from_slice(&number.to_le_bytes());
}

/// Collects packets per partition until a batch is complete.
#[derive(Debug)]
pub struct Batcher {
    partitions: u32,
    batch_packets: u32,
    batch_bytes: usize,
    open: Vec<Batch>,
    /// per partition, the path numbers of its open batch (see `add_path`)
    path_numbers: Vec<HashMap<Vec<u8>, u32>>,
    /// complete batches not yet taken, oldest first
    pub ready: Vec<Batch>,
    /// packets added since the start
    pub packets: u64,
}

impl Batcher {
    pub fn new(partitions: u32, batch_packets: u32, batch_bytes: usize) -> Self {
        let partitions = partitions.max(1);
        Batcher {
            partitions,
            batch_packets: batch_packets.max(1),
            batch_bytes,
            open: (0..partitions).map(|p| Batch { partition: p, ..Batch::default() }).collect(),
            path_numbers: (0..partitions).map(|_| HashMap::new()).collect(),
            ready: Vec::new(),
            packets: 0,
        }
    }

    /// Add one packet, its captured payload and the tunnel layers it came through
    /// (outermost first; empty for most) to its partition's batch.
    pub fn add(&mut self, packet: &Packet, payload: &[u8], path: &[Layer]) {
        let part = partition_of(packet, self.partitions);
        let Some(b) = self.open.get_mut(part as usize) else { return };
        if b.headers.capacity() == 0 {
            // Room for a whole batch at once: growing by doubling would copy it again.
            b.headers.reserve(RECORD_SIZE * self.batch_packets.min(1 << 16) as usize);
            b.payloads.reserve(self.batch_bytes.min(16 << 20) + MAX_PAYLOAD);
        }
        packet.write(&mut b.headers, b.payloads.len() as u32, payload.len() as u32);
        b.payloads.extend_from_slice(payload);
        if !path.is_empty() || !b.tunnel_of.is_empty() {
            if let Some(numbers) = self.path_numbers.get_mut(part as usize) {
                add_path(b, numbers, path);
            }
        }
        b.count += 1;
        self.packets += 1;
        if b.count >= self.batch_packets || b.payloads.len() >= self.batch_bytes {
            let done = std::mem::replace(b, Batch { partition: part, ..Batch::default() });
            self.ready.push(done);
        }
    }

    /// Complete every partition's non-empty batch (at the end of the input).
    pub fn flush(&mut self) {
        for b in self.open.iter_mut().filter(|b| b.count > 0) {
            let part = b.partition;
            self.ready.push(std::mem::replace(b, Batch { partition: part, ..Batch::default() }));
        }
    }

    /// Take the complete batches, oldest first.
    pub fn take_ready(&mut self) -> Vec<Batch> {
        std::mem::take(&mut self.ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(sport: u16) -> Packet {
        let mut p = Packet { ip_version: 4, proto: 6, src_port: sport, dst_port: 80, ..Packet::default() };
        p.src_ip[..4].copy_from_slice(&[10, 0, 0, 1]);
        p.dst_ip[..4].copy_from_slice(&[10, 0, 0, 2]);
        p
    }

    #[test]
    fn a_batch_completes_at_its_packet_count() {
        let mut b = Batcher::new(1, 2, 1 << 20);
        b.add(&packet(1), b"ab", &[]);
        assert!(b.ready.is_empty());
        b.add(&packet(1), b"cde", &[]);
        let ready = b.take_ready();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].count, 2);
        assert_eq!(ready[0].payloads, b"abcde");
        assert_eq!(ready[0].headers.len(), 160);
        // the second header's payload offset (at byte 20) is 2, its caplen 3
        assert_eq!(ready[0].headers[80 + 20..80 + 28], [2, 0, 0, 0, 3, 0, 0, 0]);
    }

    #[test]
    fn a_batch_completes_at_its_byte_count_and_flush_takes_the_rest() {
        let mut b = Batcher::new(4, 100, 4);
        b.add(&packet(1), b"abcd", &[]);
        assert_eq!(b.ready.len(), 1);
        b.add(&packet(2), b"x", &[]);
        b.flush();
        assert_eq!(b.take_ready().len(), 2);
        b.flush();
        assert!(b.ready.is_empty());
    }

    #[test]
    fn tunnel_paths_are_numbered_once_per_batch() {
        use crate::decode::tunnel::{Tunnel, LAYER_SIZE};
        let vxlan = |vni| Layer { kind: Tunnel::Vxlan, id: Some(vni), ip_version: 4, src: [1; 16], dst: [2; 16] };
        let mut b = Batcher::new(1, 5, 1 << 20);
        b.add(&packet(1), b"", &[]);
        b.add(&packet(1), b"", &[vxlan(7)]);
        b.add(&packet(1), b"", &[vxlan(8)]);
        b.add(&packet(1), b"", &[vxlan(7)]);
        b.add(&packet(1), b"", &[]);
        let ready = b.take_ready();
        let numbers: Vec<u32> =
            ready[0].tunnel_of.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(numbers, [0, 1, 2, 1, 0]);
        assert_eq!(ready[0].tunnel_paths.len(), 2 * (1 + LAYER_SIZE));
        // kind code, IP version, id flag, 0, then the VNI
        assert_eq!(ready[0].tunnel_paths[..9], [1, 1, 4, 1, 0, 7, 0, 0, 0]);
    }

    #[test]
    fn a_batch_without_tunnels_has_no_tunnel_table() {
        let mut b = Batcher::new(1, 2, 1 << 20);
        b.add(&packet(1), b"", &[]);
        b.add(&packet(1), b"", &[]);
        let ready = b.take_ready();
        assert!(ready[0].tunnel_of.is_empty() && ready[0].tunnel_paths.is_empty());
    }

    #[test]
    fn both_directions_go_to_one_partition() {
        let p = packet(1234);
        let mut q = p;
        std::mem::swap(&mut q.src_ip, &mut q.dst_ip);
        std::mem::swap(&mut q.src_port, &mut q.dst_port);
        assert_eq!(partition_of(&p, 7), partition_of(&q, 7));
    }
}
