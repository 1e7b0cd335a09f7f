//! The transport layer: TCP and UDP headers, the TCP options of SYN segments, the
//! ICMP/ICMPv6 header (its type and code, as the packed layout carries them), and SCTP's
//! common header with the types of the chunks after it.

use super::ip::{Ip, PROTO_ICMP, PROTO_ICMP6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use super::Drop;
use crate::bytes::{be16, be32, u8_at};
use crate::community_id::icmp_ports;

const SYN: u16 = 2;

// options bits of the layout (packet_block.OPT_*)
const OPT_SACK_PERM: u8 = 1;
const OPT_SACK: u8 = 2;
const OPT_TIMESTAMP: u8 = 4;
const OPT_MSS: u8 = 8;
const OPT_WSCALE: u8 = 16;

/// SCTP's common header: source and destination port, verification tag, checksum.
const SCTP_HEADER: usize = 12;
/// The `tcp_flags` bit of SCTP chunk types above 14 (AUTH, I-DATA, ASCONF, RE-CONFIG,
/// FORWARD-TSN, PAD, ...); types 0 (DATA) to 14 (SHUTDOWN COMPLETE) are bit `1 << type`.
pub const SCTP_CHUNK_OTHER: u16 = 1 << 15;

/// A transport header, decoded. UDP has zero seq/ack/window/flags/options and wscale -1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transport {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub flags: u16,
    pub wscale: i8,
    pub options: u8,
    /// the payload's true length, from the IP/UDP headers (not what was captured)
    pub payload_len: u32,
    /// where the payload starts in the frame
    pub start: usize,
}

/// Decode the TCP or UDP header after `ip`.
pub fn parse(d: &[u8], ip: &Ip) -> Result<Transport, Drop> {
    match ip.proto {
        PROTO_TCP => tcp(d, ip),
        PROTO_UDP => udp(d, ip),
        PROTO_ICMP if ip.version == 4 => icmp(d, ip),
        PROTO_ICMP6 if ip.version == 6 => icmp(d, ip),
        PROTO_SCTP => sctp(d, ip),
        _ => Err(Drop::UnsupportedTransport),
    }
}

fn tcp(d: &[u8], ip: &Ip) -> Result<Transport, Drop> {
    let off = ip.off;
    if d.len() < off.saturating_add(20) {
        return Err(Drop::TruncatedTransport);
    }
    let t = Drop::TruncatedTransport;
    let sport = be16(d, off).ok_or(t)?;
    let dport = be16(d, off + 2).ok_or(t)?;
    let seq = be32(d, off + 4).ok_or(t)?;
    let ack = be32(d, off + 8).ok_or(t)?;
    let doff = u8_at(d, off + 12).ok_or(t)?;
    let flags8 = u8_at(d, off + 13).ok_or(t)?;
    let window = be16(d, off + 14).ok_or(t)?;
    let hlen = usize::from(doff >> 4) * 4;
    if hlen < 20 {
        return Err(t);
    }
    let flags = u16::from(flags8) | (u16::from(doff & 1) << 8); // NS bit
    // Options are negotiated on SYNs (window scale, SACK-permitted, MSS); other segments'
    // options (timestamps, SACK blocks) are not used downstream, so not parsed.
    let (wscale, options) = if flags & SYN != 0 && hlen > 20 && d.len() >= off + hlen {
        tcp_options(d, off + 20, off + hlen)
    } else {
        (-1, 0)
    };
    Ok(Transport {
        sport,
        dport,
        seq,
        ack,
        window,
        flags,
        wscale,
        options,
        payload_len: floor_len(ip.l4_len - hlen as i64),
        start: off + hlen,
    })
}

fn udp(d: &[u8], ip: &Ip) -> Result<Transport, Drop> {
    let off = ip.off;
    let t = Drop::TruncatedTransport;
    if d.len() < off.saturating_add(8) {
        return Err(t);
    }
    let sport = be16(d, off).ok_or(t)?;
    let dport = be16(d, off + 2).ok_or(t)?;
    let ulen = be16(d, off + 4).ok_or(t)?;
    // a UDP length under its own header's is a lie: the IP header's length then
    let len = if ulen >= 8 { i64::from(ulen) } else { ip.l4_len };
    Ok(Transport {
        sport,
        dport,
        seq: 0,
        ack: 0,
        window: 0,
        flags: 0,
        wscale: -1,
        options: 0,
        payload_len: floor_len(len - 8),
        start: off + 8,
    })
}

/// An ICMP or ICMPv6 message (docs/packet-layout.md, "ICMP"): the ports are the Community
/// ID's (the type, and the counterpart type of a request/reply pair or else the code), so
/// that a request and its reply are one flow on one partition; `seq` holds the exact type
/// and code (`type << 8 | code`), `ack` the rest of the 8-byte header (an echo's
/// identifier and sequence, an unreachable's next-hop MTU, a Packet Too Big's MTU), and
/// the payload is what follows the 8 bytes (an error's quoted datagram).
fn icmp(d: &[u8], ip: &Ip) -> Result<Transport, Drop> {
    let off = ip.off;
    let t = Drop::TruncatedTransport;
    if d.len() < off.saturating_add(8) {
        return Err(t);
    }
    let (icmp_type, code) = (u8_at(d, off).ok_or(t)?, u8_at(d, off + 1).ok_or(t)?);
    let (sport, dport, _) = icmp_ports(ip.proto, icmp_type, code);
    Ok(Transport {
        sport,
        dport,
        seq: u32::from(icmp_type) << 8 | u32::from(code),
        ack: be32(d, off + 4).ok_or(t)?,
        window: 0,
        flags: 0,
        wscale: -1,
        options: 0,
        payload_len: floor_len(ip.l4_len - 8),
        start: off + 8,
    })
}

/// An SCTP packet (RFC 9260; docs/packet-layout.md, "SCTP"): the ports of its common
/// header, its verification tag in `seq`, and in `tcp_flags` which chunk types it carries
/// (bit `1 << type` for DATA 0 to SHUTDOWN COMPLETE 14, [`SCTP_CHUNK_OTHER`] for any
/// other), so that the flow table tells an association's setup, shutdown and abort
/// without its bytes; the payload is the chunks (everything after the 12 bytes), cut at
/// the snap length as UDP's.
fn sctp(d: &[u8], ip: &Ip) -> Result<Transport, Drop> {
    let off = ip.off;
    let t = Drop::TruncatedTransport;
    if d.len() < off.saturating_add(SCTP_HEADER) {
        return Err(t);
    }
    let payload_len = floor_len(ip.l4_len - SCTP_HEADER as i64);
    Ok(Transport {
        sport: be16(d, off).ok_or(t)?,
        dport: be16(d, off + 2).ok_or(t)?,
        seq: be32(d, off + 4).ok_or(t)?,
        ack: 0,
        window: 0,
        flags: sctp_chunk_types(d, off + SCTP_HEADER, payload_len as usize),
        wscale: -1,
        options: 0,
        payload_len,
        start: off + SCTP_HEADER,
    })
}

/// The chunk types of the `len` bytes of chunks at `pos` (as far as they were captured),
/// as `tcp_flags` bits. A chunk's length covers its 4-byte header and value, not the
/// padding to a multiple of 4; a length under 4 is malformed and ends the walk (what was
/// read before is kept).
fn sctp_chunk_types(d: &[u8], mut pos: usize, len: usize) -> u16 {
    let end = pos.saturating_add(len).min(d.len());
    let mut types = 0u16;
    while pos.saturating_add(4) <= end {
        let (Some(kind), Some(length)) = (u8_at(d, pos), be16(d, pos + 2)) else { break };
        types |= if kind <= 14 { 1 << kind } else { SCTP_CHUNK_OTHER };
        if length < 4 {
            break;
        }
        pos = pos.saturating_add((usize::from(length) + 3) & !3);
    }
    types
}

/// A length from headers, floored at 0 (and at most u32: frames are under 256 MiB).
fn floor_len(len: i64) -> u32 {
    u32::try_from(len.max(0)).unwrap_or(u32::MAX)
}

/// The window-scale shift (or -1) and the options bitmask of a TCP options area.
/// Malformed options end the walk; what was read before is kept.
pub fn tcp_options(d: &[u8], mut pos: usize, end: usize) -> (i8, u8) {
    let mut wscale = -1i8;
    let mut options = 0u8;
    while pos < end {
        let Some(kind) = u8_at(d, pos) else { break };
        match kind {
            0 => break, // end of options
            1 => {
                pos += 1; // NOP
                continue;
            }
            _ => {}
        }
        if pos + 1 >= end {
            break;
        }
        let Some(length) = u8_at(d, pos + 1).map(usize::from) else { break };
        if length < 2 || pos + length > end {
            break;
        }
        match (kind, length) {
            (3, 3) => {
                // RFC 7323: the shift is capped at 14; Wireshark shows larger values but
                // uses 14 for the window computation.
                wscale = u8_at(d, pos + 2).map_or(-1, |s| s.min(14) as i8);
                options |= OPT_WSCALE;
            }
            (2, _) => options |= OPT_MSS,
            (4, _) => options |= OPT_SACK_PERM,
            (5, _) => options |= OPT_SACK,
            (8, _) => options |= OPT_TIMESTAMP,
            _ => {}
        }
        pos += length;
    }
    (wscale, options)
}
