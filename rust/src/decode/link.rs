//! The link layer: where the network layer starts, and which one it is.
//!
//! Link types are tcpdump.org's LINKTYPE_* numbers; [`SUPPORTED`] is the list the capture
//! readers check a file against and the error messages name.
//!
//! Besides Ethernet, cooked and raw IP: FDDI (10, LLC/SNAP after the 13-byte MAC header,
//! non-LLC frames are `non_ip`), PPP (9) and PPP in HDLC framing (50; with or without the
//! `FF 03` address/control bytes, a compressed 1-byte protocol field, or Cisco HDLC when
//! the first byte is 0x0F/0x8F, as libpcap documents LINKTYPE_PPP_HDLC), PPPoE without
//! Ethernet (PPP_ETHER, 51), Cisco HDLC (104), and 802.11 data frames with LLC/SNAP, plain
//! (105), after a radiotap header (127, whose flags say whether the 802.11 header is
//! padded to 4 bytes), a Prism header (119) or an AVS header (163). 802.11 frames that are
//! not data, carry no data (null functions), are protected (encrypted), or are A-MSDUs
//! (which Wireshark splits, we do not) are `non_ip`. An 802.11 FCS at the end of a frame
//! is harmless: lengths come from the IP headers. PPI (192: CACE's Per-Packet Information,
//! Kismet's and AirPcap's) wraps an 802.11 or Ethernet frame in a header of its own.
//!
//! Firewall logs: Linux netfilter's NFLOG (239: `tcpdump -i nflog:N`, what an iptables or
//! nftables `log group N` rule sends) and OpenBSD's pflog (117). Each carries one IP
//! packet behind a header of the logging system's own.

use super::Drop;
use crate::bytes::{array, be16, be32, le32, u8_at};

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
pub const LINKTYPE_PPP: i64 = 9;
pub const LINKTYPE_FDDI: i64 = 10;
pub const LINKTYPE_PPP_HDLC: i64 = 50;
pub const LINKTYPE_PPP_ETHER: i64 = 51;
pub const LINKTYPE_C_HDLC: i64 = 104;
pub const LINKTYPE_IEEE802_11: i64 = 105;
pub const LINKTYPE_IEEE802_11_PRISM: i64 = 119;
pub const LINKTYPE_IEEE802_11_RADIOTAP: i64 = 127;
pub const LINKTYPE_IEEE802_11_AVS: i64 = 163;
pub const LINKTYPE_PPI: i64 = 192;
pub const LINKTYPE_PFLOG: i64 = 117;
pub const LINKTYPE_NFLOG: i64 = 239;

/// The link types the decoder understands, with the names error messages give them.
pub const SUPPORTED: [(i64, &str); 22] = [
    (LINKTYPE_NULL, "BSD loopback (null)"),
    (LINKTYPE_ETHERNET, "Ethernet"),
    (LINKTYPE_PPP, "PPP"),
    (LINKTYPE_FDDI, "FDDI"),
    (LINKTYPE_PPP_HDLC, "PPP in HDLC framing"),
    (LINKTYPE_PPP_ETHER, "PPPoE"),
    (LINKTYPE_C_HDLC, "Cisco HDLC"),
    (LINKTYPE_IEEE802_11, "802.11"),
    (LINKTYPE_IEEE802_11_PRISM, "802.11 with Prism header"),
    (LINKTYPE_IEEE802_11_RADIOTAP, "802.11 with radiotap header"),
    (LINKTYPE_IEEE802_11_AVS, "802.11 with AVS header"),
    (LINKTYPE_PPI, "802.11 or Ethernet with PPI header"),
    (LINKTYPE_RAW_DLT12, "raw IP"),
    (LINKTYPE_RAW_DLT14, "raw IP"),
    (LINKTYPE_RAW, "raw IP"),
    (LINKTYPE_LOOP, "OpenBSD loopback"),
    (LINKTYPE_LINUX_SLL, "Linux cooked v1"),
    (LINKTYPE_IPV4, "raw IPv4"),
    (LINKTYPE_IPV6, "raw IPv6"),
    (LINKTYPE_LINUX_SLL2, "Linux cooked v2"),
    (LINKTYPE_PFLOG, "OpenBSD pflog"),
    (LINKTYPE_NFLOG, "Linux netfilter log (NFLOG)"),
];

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86DD;
pub const ETH_MPLS_UC: u16 = 0x8847;
pub const ETH_MPLS_MC: u16 = 0x8848;
pub const ETH_PPPOE_SESSION: u16 = 0x8864;
/// 802.1Q, 802.1ad (QinQ), legacy QinQ: 4 bytes per tag
const ETH_VLAN_TAGS: [u16; 4] = [0x8100, 0x88A8, 0x9100, 0x9200];

/// BSD address families: AF_INET is 2 everywhere, AF_INET6 differs per OS
/// (Linux 10, NetBSD/OpenBSD 24, FreeBSD 28, macOS 30).
const AF_INET: u32 = 2;
const AF_INET6: [u32; 4] = [10, 24, 28, 30];

/// The ethertype of a BSD address family (0: not IP, `non_ip`).
fn bsd_family_etype(family: u32) -> u16 {
    if family == AF_INET {
        ETH_IPV4
    } else if AF_INET6.contains(&family) {
        ETH_IPV6
    } else {
        0
    }
}

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
        _ => other_linktype(linktype, d),
    }
}

/// The link types off the common path (kept out of line: the common ones stay as short).
#[cold]
fn other_linktype(linktype: i64, d: &[u8]) -> Result<Network, Drop> {
    let t = Drop::TruncatedLink;
    match linktype {
        LINKTYPE_FDDI => {
            // frame control, destination, source; then LLC for asynchronous LLC frames
            let fc = u8_at(d, 0).ok_or(t)?;
            if d.len() < 13 {
                return Err(t);
            }
            if fc & 0x30 != 0x10 {
                return Err(Drop::NonIp); // SMT and MAC frames
            }
            llc_snap(d, 13)
        }
        LINKTYPE_PPP | LINKTYPE_PPP_HDLC => {
            let first = u8_at(d, 0).ok_or(t)?;
            if first == 0x0F || first == 0x8F {
                cisco_hdlc(d)
            } else {
                ppp(d, if first == 0xFF && u8_at(d, 1) == Some(0x03) { 2 } else { 0 })
            }
        }
        LINKTYPE_C_HDLC => cisco_hdlc(d),
        LINKTYPE_PPP_ETHER => pppoe_session(d, 0),
        LINKTYPE_NFLOG => nflog(d),
        LINKTYPE_PFLOG => pflog(d),
        LINKTYPE_IEEE802_11 => ieee80211(d, 0, false),
        LINKTYPE_IEEE802_11_RADIOTAP => radiotap(d),
        LINKTYPE_PPI => ppi(d),
        LINKTYPE_IEEE802_11_PRISM | LINKTYPE_IEEE802_11_AVS => {
            // AVS (its magic 0x8021100x, big-endian) gives its length; Prism's is 144
            let magic = be32(d, 0).ok_or(t)?;
            let len = if magic & 0xFFFF_FFF0 == 0x8021_1000 { be32(d, 4).ok_or(t)? as usize } else { 144 };
            ieee80211(d, len, false)
        }
        _ => Err(Drop::UnsupportedLinktype),
    }
}

/// Little-endian u16 (radiotap's byte order).
fn le16(d: &[u8], at: usize) -> Option<u16> {
    array(d, at).map(u16::from_le_bytes)
}

/// Linux netfilter log (NFLOG, libpcap's LINKTYPE_NFLOG): a 4-byte header (address family,
/// version, resource id), then TLVs: a length (its 4-byte TLV header included) and a
/// type, both in the capturing host's byte order, each TLV padded to 4 bytes. The packet
/// is the payload TLV's (type 9), IPv4 or IPv6 as the family says (Linux's AF_INET 2,
/// AF_INET6 10; a bridge's or another family's packet is `non_ip`, as is a log message
/// without its payload, the rule's copy size 0).
///
/// Which host wrote them, the frame does not say. Wireshark takes the file's byte order
/// (its reader swaps the TLVs of a file from the other order, as libpcap's does); we take
/// the order whose TLVs tile the frame exactly, little-endian tried first, which is the
/// same on every file but one whose frames were copied in from a host of the other order
/// (docs/core.md). When neither tiles it (the frame cut by the snapshot length, inside
/// the payload): little-endian, whose payload TLV may then be cut (the IP layer says
/// `truncated_ip` if the packet is).
fn nflog(d: &[u8]) -> Result<Network, Drop> {
    const NFULA_PAYLOAD: u16 = 9;
    const HEADER: usize = 4;
    let family = u8_at(d, 0).ok_or(Drop::TruncatedLink)?;
    if d.len() < HEADER {
        return Err(Drop::TruncatedLink);
    }
    // Under one byte order: None if the TLVs do not tile the frame (one shorter than its
    // header; with `exact`, one past the frame's end), else where the payload TLV's
    // value starts (None: there is none).
    let tiles = |get: fn(&[u8], usize) -> Option<u16>, exact: bool| -> Option<Option<usize>> {
        let mut pos = HEADER;
        let mut payload = None;
        while d.len().saturating_sub(pos) > 4 {
            let len = usize::from(get(d, pos)?);
            let kind = get(d, pos + 2)? & 0x7FFF; // (the top bit: netlink's "nested" flag)
            if len < 4 || (exact && d.len() - pos < len) {
                return None;
            }
            if kind == NFULA_PAYLOAD && payload.is_none() {
                payload = Some(pos + 4);
            }
            pos = pos.saturating_add(len.div_ceil(4) * 4);
        }
        Some(payload)
    };
    let tiling = tiles(le16, true).or_else(|| tiles(be16, true)).or_else(|| tiles(le16, false));
    let off = tiling.ok_or(Drop::TruncatedLink)?.ok_or(Drop::NonIp)?;
    let etype = match family {
        2 => ETH_IPV4,
        10 => ETH_IPV6,
        _ => 0,
    };
    Ok(Network { etype, off })
}

/// OpenBSD pflog: a `struct pfloghdr`, whose layout differs from OS to OS and release to
/// release, but whose first byte is its length and second its address family (BSD's:
/// AF_INET 2, AF_INET6 24, 28 or 30). The packet starts after it, at the length rounded
/// up to 4 bytes (BPF_WORDALIGN, as tcpdump reads it); a length under 45 bytes (the
/// shortest header, tcpdump's MIN_PFLOG_HDRLEN) is `truncated_link`.
fn pflog(d: &[u8]) -> Result<Network, Drop> {
    const MIN_HEADER: usize = 45;
    let t = Drop::TruncatedLink;
    let len = usize::from(u8_at(d, 0).ok_or(t)?);
    let family = u32::from(u8_at(d, 1).ok_or(t)?);
    let off = len.div_ceil(4) * 4;
    if len < MIN_HEADER || d.len() < off {
        return Err(t);
    }
    Ok(Network { etype: bsd_family_etype(family), off })
}

/// Cisco HDLC: address, control, then an ethertype.
fn cisco_hdlc(d: &[u8]) -> Result<Network, Drop> {
    let etype = be16(d, 2).ok_or(Drop::TruncatedLink)?;
    Ok(Network { etype, off: 4 })
}

/// The ethertype of a PPP protocol number (0: one we do not decode, `non_ip`).
pub fn ppp_etype(proto: u16) -> u16 {
    match proto {
        0x0021 => ETH_IPV4,
        0x0057 => ETH_IPV6,
        0x0281 => ETH_MPLS_UC,
        0x0283 => ETH_MPLS_MC,
        _ => 0,
    }
}

/// A PPP header at `off`: its protocol field is 2 bytes, or 1 when compressed (RFC 1661
/// section 6.5: an odd first byte).
pub fn ppp(d: &[u8], off: usize) -> Result<Network, Drop> {
    let t = Drop::TruncatedLink;
    let first = u8_at(d, off).ok_or(t)?;
    if first & 1 == 1 {
        return Ok(Network { etype: ppp_etype(u16::from(first)), off: off + 1 });
    }
    let proto = be16(d, off).ok_or(t)?;
    Ok(Network { etype: ppp_etype(proto), off: off + 2 })
}

/// A PPPoE session header at `off` (RFC 2516: version/type 0x11, code 0) and its PPP
/// protocol field; a header that is not a session's is `bad_tunnel`.
pub fn pppoe_session(d: &[u8], off: usize) -> Result<Network, Drop> {
    let b = Drop::BadTunnel;
    let vt = u8_at(d, off).ok_or(b)?;
    let code = u8_at(d, off.saturating_add(1)).ok_or(b)?;
    let proto = be16(d, off.saturating_add(6)).ok_or(b)?;
    if vt != 0x11 || code != 0 {
        return Err(b);
    }
    Ok(Network { etype: ppp_etype(proto), off: off + 8 })
}

/// 802.2 LLC at `off`: only SNAP (AA AA 03, any OUI: 00-00-00 and 802.1H's 00-00-F8)
/// carries an ethertype; other SAPs are `non_ip`.
fn llc_snap(d: &[u8], off: usize) -> Result<Network, Drop> {
    let head = array::<3>(d, off).ok_or(Drop::TruncatedLink)?;
    if head != [0xAA, 0xAA, 0x03] {
        return Err(Drop::NonIp);
    }
    let etype = be16(d, off + 6).ok_or(Drop::TruncatedLink)?;
    Ok(Network { etype, off: off + 8 })
}

/// A radiotap header (little-endian; its length at 2), then 802.11. Its Flags field
/// (present bit 1, after the 8-byte-aligned TSFT when bit 0 is present) says whether the
/// 802.11 header is padded to a multiple of 4 bytes (0x20).
fn radiotap(d: &[u8]) -> Result<Network, Drop> {
    let t = Drop::TruncatedLink;
    let len = usize::from(le16(d, 2).ok_or(t)?);
    let present = le32(d, 4).ok_or(t)?;
    // extended presence bitmaps follow while bit 31 is set
    let mut pos = 4;
    while le32(d, pos).ok_or(t)? & 0x8000_0000 != 0 {
        pos += 4;
    }
    pos += 4;
    if present & 1 != 0 {
        pos = pos.div_ceil(8) * 8 + 8;
    }
    let padded = present & 2 != 0 && u8_at(d, pos).ok_or(t)? & 0x20 != 0;
    if len < 8 || pos > len {
        return Err(t);
    }
    ieee80211(d, len, padded)
}

/// PPI (Per-Packet Information): version, flags, the header's length (little-endian, its
/// fields included) and the link type of the frame after it (little-endian, 32 bits),
/// read as any frame of that link type (802.11, radiotap or Ethernet in practice); PPI
/// inside PPI is `unsupported_linktype` (one level: the decoder does not recurse).
fn ppi(d: &[u8]) -> Result<Network, Drop> {
    let t = Drop::TruncatedLink;
    let len = usize::from(le16(d, 2).ok_or(t)?);
    let inner = i64::from(le32(d, 4).ok_or(t)?);
    if len < 8 || d.len() < len {
        return Err(t);
    }
    if inner == LINKTYPE_PPI {
        return Err(Drop::UnsupportedLinktype);
    }
    let net = network_offset(inner, &d[len..])?;
    Ok(Network { etype: net.etype, off: net.off + len })
}

/// An 802.11 MAC header at `off` (data frames only), then LLC/SNAP.
fn ieee80211(d: &[u8], off: usize, padded: bool) -> Result<Network, Drop> {
    let t = Drop::TruncatedLink;
    let fc0 = u8_at(d, off).ok_or(t)?;
    let fc1 = u8_at(d, off.saturating_add(1)).ok_or(t)?;
    let (kind, subtype) = ((fc0 >> 2) & 3, fc0 >> 4);
    // not a data frame, a data frame without data (null function, CF-*), or protected
    if kind != 2 || subtype & 0x4 != 0 || fc1 & 0x40 != 0 {
        return Err(Drop::NonIp);
    }
    let mut h = 24;
    if fc1 & 0x03 == 0x03 {
        h += 6; // to and from DS: a fourth address
    }
    if subtype & 0x8 != 0 {
        // QoS data: a QoS control field (its A-MSDU bit: several frames we do not split),
        // and an HT control field when the order bit is set
        if u8_at(d, off.saturating_add(h)).ok_or(t)? & 0x80 != 0 {
            return Err(Drop::NonIp);
        }
        h += 2;
        if fc1 & 0x80 != 0 {
            h += 4;
        }
    }
    if padded {
        h = h.div_ceil(4) * 4;
    }
    llc_snap(d, off.saturating_add(h))
}

fn ethernet(d: &[u8]) -> Result<Network, Drop> {
    ethernet_at(d, 0)
}

/// An Ethernet header at `base` (a frame's, or one a tunnel carries), VLAN tags skipped.
#[inline]
pub fn ethernet_at(d: &[u8], base: usize) -> Result<Network, Drop> {
    if d.len() < base.saturating_add(14) {
        return Err(Drop::TruncatedLink);
    }
    let mut off = base + 12;
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
    Ok(Network { etype: bsd_family_etype(family), off: 4 })
}
