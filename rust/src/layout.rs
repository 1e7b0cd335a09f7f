//! The packed packet-header layout of `wire.packets` batches, and the partition of a flow.
//!
//! Layout version 1 (`wirestream/packet_block.py` `PACKET_STRUCT`, docs/packet-layout.md):
//! little-endian, no padding, 80 bytes per packet. The partition of a packet is the
//! CRC-32 of its canonical connection key modulo the partition count: the same partition
//! for both directions of a flow, in every producer (a contract with the processors,
//! `packet_block.canonical_key` / `partition_for` compute the same in Python).

/// Bytes per packed header.
pub const RECORD_SIZE: usize = 80;

/// One decoded packet: the layout's fields except where its payload sits in a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Packet {
    pub ts_us: i64,
    pub frame: u32,
    pub wire_len: u32,
    pub payload_len: u32,
    pub seq: u32,
    pub ack: u32,
    /// 4 bytes then zeros for IPv4, 16 for IPv6
    pub src_ip: [u8; 16],
    pub dst_ip: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub window: u16,
    pub tcp_flags: u16,
    pub ip_version: u8,
    pub proto: u8,
    pub wscale: i8,
    pub options: u8,
}

impl Packet {
    /// Append this packet's 80-byte record, its payload being at `payload_off` in the
    /// batch's blob and `payload_caplen` bytes long.
    pub fn write(&self, out: &mut Vec<u8>, payload_off: u32, payload_caplen: u32) {
        out.extend_from_slice(&self.ts_us.to_le_bytes());
        for v in [self.frame, self.wire_len, self.payload_len, payload_off, payload_caplen, self.seq, self.ack] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.src_ip);
        out.extend_from_slice(&self.dst_ip);
        for v in [self.src_port, self.dst_port, self.window, self.tcp_flags] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&[self.ip_version, self.proto, self.wscale as u8, self.options]);
    }

    /// The address bytes Python sees: 4 for IPv4, 16 for IPv6.
    pub fn addr_len(&self) -> usize {
        if self.ip_version == 4 {
            4
        } else {
            16
        }
    }
}

/// The connection key both directions share: proto, then the two endpoints
/// (16-byte address, big-endian port) in sorted order.
pub fn canonical_key(proto: u8, ip_a: &[u8; 16], port_a: u16, ip_b: &[u8; 16], port_b: u16) -> [u8; 37] {
    let mut a = [0u8; 18];
    let mut b = [0u8; 18];
    a[..16].copy_from_slice(ip_a);
    a[16..].copy_from_slice(&port_a.to_be_bytes());
    b[..16].copy_from_slice(ip_b);
    b[16..].copy_from_slice(&port_b.to_be_bytes());
    if b < a {
        std::mem::swap(&mut a, &mut b);
    }
    let mut key = [0u8; 37];
    key[0] = proto;
    key[1..19].copy_from_slice(&a);
    key[19..].copy_from_slice(&b);
    key
}

/// The partition of a packet's flow (CRC-32 of the canonical key, zlib's CRC).
pub fn partition_of(p: &Packet, partitions: u32) -> u32 {
    let key = canonical_key(p.proto, &p.src_ip, p.src_port, &p.dst_ip, p.dst_port);
    crc32fast::hash(&key) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_80_bytes_in_field_order() {
        let p = Packet { ts_us: -2, frame: 1, wscale: -1, ip_version: 4, proto: 6, ..Packet::default() };
        let mut out = Vec::new();
        p.write(&mut out, 7, 9);
        assert_eq!(out.len(), RECORD_SIZE);
        assert_eq!(out[..8], (-2i64).to_le_bytes());
        assert_eq!(out[16 + 4..16 + 8], 7u32.to_le_bytes());
        assert_eq!(out[76..], [4, 6, 0xff, 0]);
    }

    #[test]
    fn both_directions_share_a_key() {
        let a = [10u8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let b = [10u8, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(canonical_key(6, &a, 80, &b, 4000), canonical_key(6, &b, 4000, &a, 80));
        // Python: zlib.crc32(packet_block.canonical_key(6, a, 80, b, 4000)) == 2463535881
        let p = Packet { proto: 6, src_ip: b, src_port: 4000, dst_ip: a, dst_port: 80, ..Packet::default() };
        assert_eq!(partition_of(&p, u32::MAX), 2_463_535_881);
        assert_eq!(partition_of(&p, 4), 2_463_535_881 % 4);
    }

    #[test]
    fn an_sctp_association_is_on_one_partition_and_not_on_its_udp_twins_key() {
        let a = [10u8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let b = [10u8, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let out = Packet { proto: 132, src_ip: a, src_port: 40000, dst_ip: b, dst_port: 2905, ..Packet::default() };
        let back = Packet { src_ip: b, src_port: 2905, dst_ip: a, dst_port: 40000, ..out };
        for n in 1..64 {
            assert_eq!(partition_of(&out, n), partition_of(&back, n));
        }
        // the protocol is in the key: SCTP and UDP between the same endpoints are two flows
        assert_ne!(canonical_key(132, &a, 40000, &b, 2905), canonical_key(17, &a, 40000, &b, 2905));
    }
}
