//! The network layer: IPv4 and IPv6 (with its extension headers) down to the transport.

use super::link::{Network, ETH_IPV4, ETH_IPV6};
use super::Drop;
use crate::bytes::{array, be16, u8_at};

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMP6: u8 = 58;
/// SCTP (RFC 9260): a packet row like UDP's, its chunk types in `tcp_flags` (transport.rs)
pub const PROTO_SCTP: u8 = 132;

// IPv6 extension headers walked through (RFC 8200 section 4); ESP (50) ends the walk.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;
const IPV6_AH: u8 = 51;
const IPV6_MOBILITY: u8 = 135;

/// An IP header, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ip {
    pub version: u8,
    /// the transport protocol (after IPv6 extension headers)
    pub proto: u8,
    /// addresses as the layout carries them: IPv4's 4 bytes then zeros, or IPv6's 16
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// the transport's length by the IP header (may be negative on a lying header; the
    /// transport layer floors the payload at 0)
    pub l4_len: i64,
    /// where the transport header starts
    pub off: usize,
}

/// Decode the IP header at `net`.
pub fn parse(d: &[u8], net: Network) -> Result<Ip, Drop> {
    match net.etype {
        ETH_IPV4 => ipv4(d, net.off),
        ETH_IPV6 => ipv6(d, net.off),
        _ => Err(Drop::NonIp),
    }
}

fn ipv4(d: &[u8], off: usize) -> Result<Ip, Drop> {
    let n = d.len();
    if n < off.saturating_add(20) {
        return Err(Drop::TruncatedIp);
    }
    let vihl = u8_at(d, off).ok_or(Drop::TruncatedIp)?;
    let total_len = be16(d, off + 2).ok_or(Drop::TruncatedIp)?;
    let frag = be16(d, off + 6).ok_or(Drop::TruncatedIp)?;
    let proto = u8_at(d, off + 9).ok_or(Drop::TruncatedIp)?;
    if vihl >> 4 != 4 {
        return Err(Drop::BadIpVersion);
    }
    let ihl = usize::from(vihl & 0x0F) * 4;
    if ihl < 20 || n < off + ihl {
        return Err(Drop::TruncatedIp);
    }
    if frag & 0x3FFF != 0 {
        // MF set or a non-zero fragment offset
        return Err(Drop::IpFragment);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&array::<4>(d, off + 12).ok_or(Drop::TruncatedIp)?);
    dst[..4].copy_from_slice(&array::<4>(d, off + 16).ok_or(Drop::TruncatedIp)?);
    // total_len 0 happens with TSO on the capturing host: trust the capture then.
    let total = if total_len != 0 { i64::from(total_len) } else { (n - off) as i64 };
    Ok(Ip { version: 4, proto, src, dst, l4_len: total - ihl as i64, off: off + ihl })
}

fn ipv6(d: &[u8], off: usize) -> Result<Ip, Drop> {
    let n = d.len();
    if n < off.saturating_add(40) {
        return Err(Drop::TruncatedIp);
    }
    if u8_at(d, off).ok_or(Drop::TruncatedIp)? >> 4 != 6 {
        return Err(Drop::BadIpVersion);
    }
    let plen = be16(d, off + 4).ok_or(Drop::TruncatedIp)?;
    let proto = u8_at(d, off + 6).ok_or(Drop::TruncatedIp)?;
    let src = array::<16>(d, off + 8).ok_or(Drop::TruncatedIp)?;
    let dst = array::<16>(d, off + 24).ok_or(Drop::TruncatedIp)?;
    // 0 = jumbogram or TSO: the capture says
    let l4_len = if plen != 0 { i64::from(plen) } else { (n - off - 40) as i64 };
    let (proto, end) = walk_ext(d, proto, off + 40)?;
    Ok(Ip { version: 6, proto, src, dst, l4_len: l4_len - end.saturating_sub(off + 40) as i64, off: end })
}

/// Walk the IPv6 extension headers from `off` (the first one of type `proto`) to the
/// transport: `(transport protocol, where its header starts)`; the walk ends at the first
/// header that is not an extension header (TCP, UDP, a tunnelled IP packet, GRE, or one
/// we do not decode, which the transport layer drops). A fragment header ends the
/// walk with `IpFragment` (the reassembler takes over), unless it is an atomic fragment
/// (offset 0, M clear: RFC 8200 section 4.5, RFC 6946), which is the whole datagram.
pub fn walk_ext(d: &[u8], mut proto: u8, mut off: usize) -> Result<(u8, usize), Drop> {
    while proto != PROTO_TCP && proto != PROTO_UDP {
        let ext_len = match proto {
            IPV6_FRAGMENT => {
                // offset (13 bits) and M (the lowest bit); the 2 reserved bits are ignored
                let field = be16(d, off.saturating_add(2)).ok_or(Drop::TruncatedIp)?;
                if field & 0xFFF9 != 0 {
                    return Err(Drop::IpFragment);
                }
                8
            }
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_MOBILITY | IPV6_AH => {
                ext_header_len(d, off, proto)?
            }
            _ => break,
        };
        proto = u8_at(d, off).ok_or(Drop::TruncatedIp)?;
        off = off.saturating_add(ext_len);
    }
    Ok((proto, off))
}

/// The length of the (non-fragment) extension header of type `proto` at `off`;
/// any other protocol is not one we decode.
pub fn ext_header_len(d: &[u8], off: usize, proto: u8) -> Result<usize, Drop> {
    match proto {
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_MOBILITY => {
            Ok((usize::from(ext_length_byte(d, off)?) + 1) * 8)
        }
        IPV6_AH => Ok((usize::from(ext_length_byte(d, off)?) + 2) * 4),
        _ => Err(Drop::UnsupportedTransport),
    }
}

/// The length byte of an extension header (its second byte): both bytes must be there.
fn ext_length_byte(d: &[u8], off: usize) -> Result<u8, Drop> {
    u8_at(d, off.saturating_add(1)).ok_or(Drop::TruncatedIp)
}
