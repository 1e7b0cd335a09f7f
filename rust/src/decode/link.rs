//! The link layer: where the network layer starts, and which one it is.
//!
//! Link types are tcpdump.org's LINKTYPE_* numbers; [`SUPPORTED`] is the list the capture
//! readers check a file against and the error messages name.

use super::Drop;
use crate::bytes::{be16, be32, le32, u8_at};

pub const LINKTYPE_NULL: i64 = 0;
pub const LINKTYPE_ETHERNET: i64 = 1;
/// DLT_RAW on most BSDs / Linux
pub const LINKTYPE_RAW_DLT12: i64 = 12;
/// DLT_RAW on OpenBSD
pub const LINKTYPE_RAW_DLT14: i64 = 14;
pub const LINKTYPE_RAW: i64 = 101;
pub const LINKTYPE_LOOP: i64 = 108;
pub const LINKTYPE_LINUX_SLL: i64 = 113;
pub const LINKTYPE_IPV4: i64 = 228;
pub const LINKTYPE_IPV6: i64 = 229;
pub const LINKTYPE_LINUX_SLL2: i64 = 276;

/// The link types the decoder understands, with the names error messages give them.
pub const SUPPORTED: [(i64, &str); 10] = [
    (LINKTYPE_NULL, "BSD loopback (null)"),
    (LINKTYPE_ETHERNET, "Ethernet"),
    (LINKTYPE_RAW_DLT12, "raw IP"),
    (LINKTYPE_RAW_DLT14, "raw IP"),
    (LINKTYPE_RAW, "raw IP"),
    (LINKTYPE_LOOP, "OpenBSD loopback"),
    (LINKTYPE_LINUX_SLL, "Linux cooked v1"),
    (LINKTYPE_IPV4, "raw IPv4"),
    (LINKTYPE_IPV6, "raw IPv6"),
    (LINKTYPE_LINUX_SLL2, "Linux cooked v2"),
];

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86DD;
/// 802.1Q, 802.1ad (QinQ), legacy QinQ: 4 bytes per tag
const ETH_VLAN_TAGS: [u16; 4] = [0x8100, 0x88A8, 0x9100, 0x9200];

/// BSD address families: AF_INET is 2 everywhere, AF_INET6 differs per OS
/// (Linux 10, NetBSD/OpenBSD 24, FreeBSD 28, macOS 30).
const AF_INET: u32 = 2;
const AF_INET6: [u32; 4] = [10, 24, 28, 30];

/// The network layer's ethertype (0: not IP, dropped as `non_ip` by the IP layer) and
/// where it starts in the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    pub etype: u16,
    pub off: usize,
}

/// Find the network layer of a frame of `linktype`.
pub fn network_offset(linktype: i64, d: &[u8]) -> Result<Network, Drop> {
    match linktype {
        LINKTYPE_ETHERNET => ethernet(d),
        LINKTYPE_LINUX_SLL => {
            // 16-byte header, protocol last
            let etype = be16(d, 14).ok_or(Drop::TruncatedLink)?;
            Ok(Network { etype, off: 16 })
        }
        LINKTYPE_LINUX_SLL2 => {
            // 20-byte header, protocol first
            if d.len() < 20 {
                return Err(Drop::TruncatedLink);
            }
            let etype = be16(d, 0).ok_or(Drop::TruncatedLink)?;
            Ok(Network { etype, off: 20 })
        }
        LINKTYPE_RAW | LINKTYPE_RAW_DLT12 | LINKTYPE_RAW_DLT14 | LINKTYPE_IPV4 | LINKTYPE_IPV6 => raw_ip(d),
        LINKTYPE_NULL | LINKTYPE_LOOP => null_loop(linktype, d),
        _ => Err(Drop::UnsupportedLinktype),
    }
}

fn ethernet(d: &[u8]) -> Result<Network, Drop> {
    if d.len() < 14 {
        return Err(Drop::TruncatedLink);
    }
    let mut off = 12;
    let mut etype = be16(d, off).ok_or(Drop::TruncatedLink)?;
    while ETH_VLAN_TAGS.contains(&etype) {
        off += 4;
        etype = be16(d, off).ok_or(Drop::TruncatedLink)?;
    }
    Ok(Network { etype, off: off + 2 })
}

/// Raw IP: the version nibble says which.
fn raw_ip(d: &[u8]) -> Result<Network, Drop> {
    let first = u8_at(d, 0).ok_or(Drop::TruncatedLink)?;
    let etype = match first >> 4 {
        4 => ETH_IPV4,
        6 => ETH_IPV6,
        _ => return Err(Drop::BadIpVersion),
    };
    Ok(Network { etype, off: 0 })
}

/// BSD null / OpenBSD loop: a 4-byte address family.
///
/// The family is in the capturing host's byte order for NULL, network order for LOOP;
/// a family value is small, so it is read whichever way fits.
fn null_loop(linktype: i64, d: &[u8]) -> Result<Network, Drop> {
    let (le, be) = (le32(d, 0).ok_or(Drop::TruncatedLink)?, be32(d, 0).ok_or(Drop::TruncatedLink)?);
    let (first, other) = if linktype == LINKTYPE_LOOP { (be, le) } else { (le, be) };
    let family = if first > 0xFFFF { other } else { first };
    let etype = if family == AF_INET {
        ETH_IPV4
    } else if AF_INET6.contains(&family) {
        ETH_IPV6
    } else {
        0
    };
    Ok(Network { etype, off: 4 })
}
