//! Tunnels: the inner packet of an encapsulation is the packet.
//!
//! After an IP header, [`in_ip`] says whether it carries a tunnel and where the inner
//! network layer starts; before an IP header (an ethertype that is not IPv4/IPv6),
//! [`below_ip`] does the same for PPPoE sessions and MPLS. The decoder loops over these
//! (mod.rs, `from_network`) until it reaches a TCP/UDP header that is not a tunnel's, so
//! tunnels nest in any order, at most [`MAX_DEPTH`] deep (`tunnel_too_deep` beyond).
//! Each decapsulated layer is counted under its kind (`tunnel_<kind>`, [`Tunnel::name`]).
//!
//! What is decoded, as Wireshark's dissectors decode it by default (epan/dissectors):
//! - IP-in-IP: IP protocol 4 (IPv4) and 41 (IPv6) in IPv4 or IPv6, after IPv6 extension
//!   headers too (4in4, 6in4, 4in6, 6in6);
//! - GRE (IP protocol 47), version 0 (RFC 2784/2890, and RFC 1701's routing entries):
//!   checksum, key and sequence fields skipped, then the protocol type as an ethertype:
//!   IPv4, IPv6, 0x6558 transparent Ethernet bridging, MPLS, and ERSPAN: 0x88BE is type II
//!   (an 8-byte header, version 1) when the GRE sequence bit is set and type I (Ethernet
//!   right after GRE) when it is not, as Wireshark tells them apart; 0x22EB is type III
//!   (12 bytes, version 2, plus 8 bytes of platform-specific subheader when its O bit is
//!   set; frame type 0 is Ethernet, 2 is IP). Version 1 (PPTP's enhanced GRE, RFC 2637)
//!   carries PPP: decoded when its protocol type is 0x880B;
//! - UDP: VXLAN on 4789 (and 8472, below), Geneve on 6081 (options skipped by their
//!   length; protocol type 0x6558 Ethernet, or an ethertype such as IPv4/IPv6), Teredo on
//!   3544 (the authentication and origin indicators skipped, then IPv6), GTP-U on 2152
//!   (version 1 G-PDUs, message type 255: the optional sequence/N-PDU/next-extension
//!   fields and the extension header chain skipped, then IPv4 or IPv6 by the first nibble;
//!   other GTP-U messages, echo requests for one, stay plain UDP packets). As Wireshark's
//!   UDP dissector, the lower port is tried first, then the higher; of the other
//!   protocols on a lower port only DNS (53) is known here: a DNS datagram from or to a
//!   tunnel's port stays DNS, as in tshark;
//! - under IP: PPPoE sessions (ethertype 0x8864; PPP protocol 0x0021 IPv4, 0x0057 IPv6,
//!   0x0281/0x0283 MPLS) and MPLS (0x8847/0x8848: the label stack down to the bottom of
//!   stack bit; then IPv4 for an explicit-null label 0, IPv6 for label 2, otherwise the
//!   first nibble: 4 IPv4, 6 IPv6, else an Ethernet pseudo-wire without a control word
//!   when an IP/MPLS/PPPoE ethertype is where its ethertype would be, else, for a first
//!   nibble 0, a control word then Ethernet. Wireshark's default ("PW Ethernet
//!   (heuristic)") tells the two apart by whether the first 12 bytes are two MAC
//!   addresses of vendors it knows (its OUI database): the same on real MACs, but we do
//!   not carry that database); VLAN tags in any inner Ethernet header, as in the outer one.
//!
//! VXLAN on 8472: tshark does not decode it by default (its VXLAN dissector registers
//! 4789 only; 8472 needs `-d udp.port==8472,vxlan`). We decode it anyway: 8472 is what the
//! Linux kernel uses when `ip link add ... type vxlan` is given no `dstport`, and what
//! Flannel and Cilium use, so on a Kubernetes node it is the common case; no other
//! protocol is registered on 8472 that a node's capture would carry.
//!
//! Where the bytes end: the inner layers are read within the outer IP payload (the outer
//! IP header's length; for a UDP tunnel the UDP length), so an Ethernet trailer or FCS is
//! never read as inner bytes. A tunnel header cut off or malformed (a wrong version, a
//! GRE routing list running off the end, an extension chain with a zero length) is
//! `bad_tunnel`; the inner headers keep their own reasons (`truncated_ip`, ...). An inner
//! IP fragment is reassembled as an outer one is (keyed on the inner IP header): the
//! reassembled datagram is decoded from there on.

use super::ip::{Ip, PROTO_TCP, PROTO_UDP};
use super::link::{ethernet_at, ppp, pppoe_session, Network, ETH_IPV4, ETH_IPV6, ETH_MPLS_MC, ETH_MPLS_UC,
                  ETH_PPPOE_SESSION};
use super::Drop;
use crate::bytes::{be16, be32, u8_at};

/// At most this many tunnel layers in one frame (a deeper one is `tunnel_too_deep`).
pub const MAX_DEPTH: u8 = 8;

pub const PROTO_IPV4_IN_IP: u8 = 4;
pub const PROTO_IPV6_IN_IP: u8 = 41;
pub const PROTO_GRE: u8 = 47;

pub const UDP_VXLAN: u16 = 4789;
pub const UDP_VXLAN_LINUX: u16 = 8472;
pub const UDP_GENEVE: u16 = 6081;
pub const UDP_TEREDO: u16 = 3544;
pub const UDP_GTPU: u16 = 2152;
const UDP_DNS: u16 = 53;

pub const ETH_TEB: u16 = 0x6558;
pub const ETH_ERSPAN_2: u16 = 0x88BE;
pub const ETH_ERSPAN_3: u16 = 0x22EB;
pub const ETH_PPP: u16 = 0x880B;

/// A kind of encapsulation, counted once per decapsulated layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    Vxlan,
    Geneve,
    Gre,
    Erspan,
    IpInIp,
    Teredo,
    GtpU,
    Pppoe,
    Mpls,
}

impl Tunnel {
    pub const ALL: [Tunnel; 9] = [
        Tunnel::Vxlan,
        Tunnel::Geneve,
        Tunnel::Gre,
        Tunnel::Erspan,
        Tunnel::IpInIp,
        Tunnel::Teredo,
        Tunnel::GtpU,
        Tunnel::Pppoe,
        Tunnel::Mpls,
    ];

    /// The counter's name (in the decoder's counters and `wire.stats`).
    pub fn name(self) -> &'static str {
        match self {
            Tunnel::Vxlan => "tunnel_vxlan",
            Tunnel::Geneve => "tunnel_geneve",
            Tunnel::Gre => "tunnel_gre",
            Tunnel::Erspan => "tunnel_erspan",
            Tunnel::IpInIp => "tunnel_ipip",
            Tunnel::Teredo => "tunnel_teredo",
            Tunnel::GtpU => "tunnel_gtpu",
            Tunnel::Pppoe => "tunnel_pppoe",
            Tunnel::Mpls => "tunnel_mpls",
        }
    }
}

impl Tunnel {
    /// The layer's kind as the records name it (`tunnel[].kind`) and its code in a
    /// batch's `tunnel_paths` (docs/packet-layout.md): 1 + its index in [`Tunnel::ALL`].
    pub fn kind_name(self) -> &'static str {
        &self.name()["tunnel_".len()..]
    }

    pub fn code(self) -> u8 {
        self as u8 + 1
    }
}

/// One tunnel layer a packet came through, outermost first: what the records' `tunnel`
/// list says of it. `id` is the layer's own identifier where it has one (VXLAN and Geneve
/// VNI, GRE key, ERSPAN session, GTP-U TEID, PPPoE session, MPLS top label); the outer
/// addresses are those of the IP header that carried it (none for PPPoE and MPLS, which
/// sit below IP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layer {
    pub kind: Tunnel,
    pub id: Option<u32>,
    /// 4 or 6; 0 when the layer is below IP
    pub ip_version: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// Bytes one layer takes in a batch's `tunnel_paths` (see [`write_path`]).
pub const LAYER_SIZE: usize = 40;

impl Layer {
    /// The layer of the tunnel `kind` that the IP packet `ip` (in `d`) carries.
    #[cold]
    pub fn in_ip(d: &[u8], ip: &Ip, kind: Tunnel) -> Layer {
        Layer { kind, id: id_in_ip(d, ip, kind), ip_version: ip.version, src: ip.src, dst: ip.dst }
    }

    /// The layer of a PPPoE session or MPLS stack at `net` (below IP: no addresses).
    #[cold]
    pub fn below_ip(d: &[u8], net: Network, kind: Tunnel) -> Layer {
        let id = match kind {
            Tunnel::Pppoe => be16(d, net.off + 2).map(u32::from),
            Tunnel::Mpls => be32(d, net.off).map(|entry| entry >> 12),
            _ => None,
        };
        Layer { kind, id, ip_version: 0, src: [0; 16], dst: [0; 16] }
    }
}

/// The identifier of the tunnel header after `ip` (it was decoded already: the offsets
/// are known to be within `d`, and a missing byte just means no identifier).
fn id_in_ip(d: &[u8], ip: &Ip, kind: Tunnel) -> Option<u32> {
    let udp_payload = ip.off + 8;
    match kind {
        // VNI: bytes 4..7 of the VXLAN and of the Geneve header
        Tunnel::Vxlan | Tunnel::Geneve => be32(d, udp_payload + 4).map(|v| v >> 8),
        Tunnel::GtpU => be32(d, udp_payload + 4), // TEID
        Tunnel::Gre | Tunnel::Erspan => gre_id(d, ip.off, kind),
        Tunnel::IpInIp | Tunnel::Teredo | Tunnel::Pppoe | Tunnel::Mpls => None,
    }
}

/// A GRE header's key (version 1, PPTP: its call id), or an ERSPAN II/III session id.
fn gre_id(d: &[u8], off: usize, kind: Tunnel) -> Option<u32> {
    let flags = be16(d, off)?;
    if flags & 0x7 == 1 {
        return be32(d, off + 4).map(|key| key & 0xFFFF); // payload length, call id
    }
    let mut pos = off + 4;
    if flags & (GRE_C | GRE_R) != 0 {
        pos += 4;
    }
    let key = if flags & GRE_K != 0 {
        pos += 4;
        be32(d, pos - 4)
    } else {
        None
    };
    if kind == Tunnel::Erspan && flags & GRE_R == 0 {
        if flags & GRE_S != 0 {
            pos += 4;
        }
        let proto = be16(d, off + 2)?;
        // type II and III: the session id is the low 10 bits of the header's 2nd 16 bits;
        // type I (0x88BE without a sequence number) has no header
        if proto == ETH_ERSPAN_3 || flags & GRE_S != 0 {
            return be16(d, pos + 2).map(|v| u32::from(v & 0x3FF));
        }
    }
    key
}

/// Append a packet's tunnel path to `out` as a batch's `tunnel_paths` holds it: the layer
/// count (1 byte), then per layer, outermost first, 40 bytes: kind code (1), IP version
/// of the outer addresses (1: 4, 6, or 0 below IP), flags (1: bit 0 set when `id` is
/// there), 0 (1), id (4, little-endian), source address (16), destination address (16),
/// addresses as the packet layout carries them.
pub fn write_path(path: &[Layer], out: &mut Vec<u8>) {
    out.push(path.len().min(usize::from(u8::MAX)) as u8);
    for layer in path.iter().take(usize::from(u8::MAX)) {
        out.extend_from_slice(&[layer.kind.code(), layer.ip_version, u8::from(layer.id.is_some()), 0]);
        out.extend_from_slice(&layer.id.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&layer.src);
        out.extend_from_slice(&layer.dst);
    }
}

/// One decapsulation: its kind, the inner network layer, and where the tunnel's bytes end
/// (the inner layers are read up to there).
pub type Inner = (Tunnel, Network, usize);

/// The tunnel the IP packet `ip` carries, if any.
#[inline]
pub fn in_ip(d: &[u8], ip: &Ip) -> Result<Option<Inner>, Drop> {
    match ip.proto {
        PROTO_TCP => Ok(None),
        PROTO_UDP => udp(d, ip),
        PROTO_IPV4_IN_IP | PROTO_IPV6_IN_IP | PROTO_GRE => ip_payload(d, ip).map(Some),
        _ => Ok(None),
    }
}

/// The end of the IP payload in `d`: the IP header's length, within the captured bytes.
fn ip_end(d: &[u8], ip: &Ip) -> usize {
    let end = (ip.off as i64).saturating_add(ip.l4_len.max(0));
    usize::try_from(end).map_or(d.len(), |e| e.min(d.len()))
}

#[cold]
fn ip_payload(d: &[u8], ip: &Ip) -> Result<Inner, Drop> {
    let end = ip_end(d, ip);
    match ip.proto {
        PROTO_IPV4_IN_IP => Ok((Tunnel::IpInIp, Network { etype: ETH_IPV4, off: ip.off }, end)),
        PROTO_IPV6_IN_IP => Ok((Tunnel::IpInIp, Network { etype: ETH_IPV6, off: ip.off }, end)),
        _ => gre(&d[..end], ip.off).map(|(kind, net)| (kind, net, end)),
    }
}

/// The tunnel kind of a UDP port.
#[inline]
fn udp_port(port: u16) -> Option<Tunnel> {
    match port {
        UDP_VXLAN | UDP_VXLAN_LINUX => Some(Tunnel::Vxlan),
        UDP_GENEVE => Some(Tunnel::Geneve),
        UDP_TEREDO => Some(Tunnel::Teredo),
        UDP_GTPU => Some(Tunnel::GtpU),
        _ => None,
    }
}

/// A UDP datagram on a tunnel's port: its inner packet (`None`: not a tunnel, or a GTP-U
/// message that is not a G-PDU, which stays a UDP packet).
#[inline]
fn udp(d: &[u8], ip: &Ip) -> Result<Option<Inner>, Drop> {
    // a cut-off UDP header is the transport layer's to report
    let (Some(sport), Some(dport)) = (be16(d, ip.off), be16(d, ip.off.saturating_add(2))) else {
        return Ok(None);
    };
    let (low, high) = if sport <= dport { (sport, dport) } else { (dport, sport) };
    let Some(kind) = udp_port(low).or_else(|| udp_port(high)) else { return Ok(None) };
    if low == UDP_DNS {
        // Wireshark gives the datagram to the lower port's dissector, DNS: a resolver that
        // picked a tunnel's port as its source port is still DNS
        return Ok(None);
    }
    udp_tunnel(d, ip, kind)
}

#[cold]
fn udp_tunnel(d: &[u8], ip: &Ip, kind: Tunnel) -> Result<Option<Inner>, Drop> {
    let b = Drop::BadTunnel;
    let ulen = usize::from(be16(d, ip.off.saturating_add(4)).ok_or(Drop::TruncatedTransport)?);
    let end = if ulen >= 8 { (ip.off + ulen).min(d.len()) } else { ip_end(d, ip) };
    let d = d.get(..end).ok_or(b)?;
    let off = ip.off + 8;
    let net = match kind {
        Tunnel::Vxlan => {
            // flags (the I bit), 3 reserved, VNI (3), 1 reserved: Wireshark checks no flag
            if d.len() < off + 8 {
                return Err(b);
            }
            ethernet_at(d, off + 8)?
        }
        Tunnel::Geneve => geneve(d, off)?,
        Tunnel::Teredo => teredo(d, off)?,
        Tunnel::GtpU => match gtpu(d, off)? {
            Some(net) => net,
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    Ok(Some((kind, net, end)))
}

/// Geneve (RFC 8926): version 0, options length in 4-byte words, protocol type.
fn geneve(d: &[u8], off: usize) -> Result<Network, Drop> {
    let b = Drop::BadTunnel;
    let first = u8_at(d, off).ok_or(b)?;
    let proto = be16(d, off + 2).ok_or(b)?;
    if first >> 6 != 0 {
        return Err(b);
    }
    let start = off + 8 + usize::from(first & 0x3F) * 4;
    if d.len() < start {
        return Err(b);
    }
    by_ethertype(d, proto, start)
}

/// The network layer an ethertype-typed payload starts (Ethernet for 0x6558).
fn by_ethertype(d: &[u8], etype: u16, off: usize) -> Result<Network, Drop> {
    if etype == ETH_TEB {
        ethernet_at(d, off)
    } else {
        Ok(Network { etype, off })
    }
}

/// Teredo (RFC 4380 section 5.1.1): an optional authentication indicator (0x0001, client
/// id and authentication value lengths, them, an 8-byte nonce and a confirmation byte),
/// an optional origin indication (0x0000, port, address: 8 bytes), then IPv6.
fn teredo(d: &[u8], mut off: usize) -> Result<Network, Drop> {
    let b = Drop::BadTunnel;
    if be16(d, off).ok_or(b)? == 0x0001 {
        let id_len = usize::from(u8_at(d, off + 2).ok_or(b)?);
        let au_len = usize::from(u8_at(d, off + 3).ok_or(b)?);
        off += 4 + id_len + au_len + 9;
    }
    if be16(d, off).ok_or(b)? == 0x0000 {
        off += 8;
    }
    if u8_at(d, off).ok_or(b)? >> 4 != 6 {
        return Err(b);
    }
    Ok(Network { etype: ETH_IPV6, off })
}

/// GTP-U (3GPP TS 29.281): a G-PDU's inner IP packet; `None` for other messages.
fn gtpu(d: &[u8], off: usize) -> Result<Option<Network>, Drop> {
    let b = Drop::BadTunnel;
    let flags = u8_at(d, off).ok_or(b)?;
    let kind = u8_at(d, off + 1).ok_or(b)?;
    if d.len() < off + 8 || flags >> 5 != 1 || flags & 0x10 == 0 {
        // not version 1, or GTP' (protocol type 0)
        return Err(b);
    }
    if kind != 255 {
        return Ok(None);
    }
    let mut pos = off + 8;
    if flags & 0x07 != 0 {
        // sequence number (2), N-PDU number (1), next extension header type (1): all
        // there when any of E, S, PN is set
        // (the next extension header type means something only when E is set)
        let mut next = if flags & 0x04 != 0 { u8_at(d, pos + 3).ok_or(b)? } else { 0 };
        pos += 4;
        while next != 0 {
            // length in 4-byte units, the next type in its last byte
            let len = usize::from(u8_at(d, pos).ok_or(b)?) * 4;
            if len == 0 {
                return Err(b);
            }
            next = u8_at(d, pos + len - 1).ok_or(b)?;
            pos += len;
        }
    }
    Ok(Some(ip_by_nibble(d, pos)?))
}

/// An IP packet at `off` told by its version nibble (`non_ip` when it is neither).
fn ip_by_nibble(d: &[u8], off: usize) -> Result<Network, Drop> {
    match u8_at(d, off).ok_or(Drop::TruncatedIp)? >> 4 {
        4 => Ok(Network { etype: ETH_IPV4, off }),
        6 => Ok(Network { etype: ETH_IPV6, off }),
        _ => Err(Drop::NonIp),
    }
}

const GRE_C: u16 = 0x8000;
const GRE_R: u16 = 0x4000;
const GRE_K: u16 = 0x2000;
const GRE_S: u16 = 0x1000;
const GRE_A: u16 = 0x0080;

/// GRE at `off` (`d` ends with the IP payload): its inner network layer.
fn gre(d: &[u8], off: usize) -> Result<(Tunnel, Network), Drop> {
    let b = Drop::BadTunnel;
    let flags = be16(d, off).ok_or(b)?;
    let proto = be16(d, off + 2).ok_or(b)?;
    let mut pos = off + 4;
    match flags & 0x7 {
        0 => {
            if flags & (GRE_C | GRE_R) != 0 {
                pos += 4; // checksum and offset (RFC 1701: both there if either bit is)
            }
            if flags & GRE_K != 0 {
                pos += 4;
            }
            if flags & GRE_S != 0 {
                pos += 4;
            }
            if flags & GRE_R != 0 {
                // source route entries: family (2), offset (1), length (1), the route;
                // the list ends with a NULL entry (family 0, length 0)
                loop {
                    let family = be16(d, pos).ok_or(b)?;
                    let len = usize::from(u8_at(d, pos + 3).ok_or(b)?);
                    pos += 4 + len;
                    if family == 0 && len == 0 {
                        break;
                    }
                }
            }
        }
        1 => {
            // enhanced GRE (PPTP): key (payload length, call id) always, sequence and
            // acknowledgment numbers when their bits are set; the payload is PPP
            if proto != ETH_PPP || flags & GRE_K == 0 {
                return Err(b);
            }
            pos += 4;
            if flags & GRE_S != 0 {
                pos += 4;
            }
            if flags & GRE_A != 0 {
                pos += 4;
            }
            if d.len() < pos {
                return Err(b);
            }
            let address = be16(d, pos) == Some(0xFF03);
            return Ok((Tunnel::Gre, ppp(d, pos + if address { 2 } else { 0 })?));
        }
        _ => return Err(b),
    }
    if d.len() < pos {
        return Err(b);
    }
    match proto {
        ETH_ERSPAN_2 => {
            if flags & GRE_S == 0 {
                return Ok((Tunnel::Erspan, ethernet_at(d, pos)?)); // type I: no header
            }
            if u8_at(d, pos).ok_or(b)? >> 4 != 1 || d.len() < pos + 8 {
                return Err(b);
            }
            Ok((Tunnel::Erspan, ethernet_at(d, pos + 8)?))
        }
        ETH_ERSPAN_3 => {
            let ver = u8_at(d, pos).ok_or(b)? >> 4;
            let last = be16(d, pos + 10).ok_or(b)?;
            if ver != 2 {
                return Err(b);
            }
            let start = pos + 12 + if last & 1 != 0 { 8 } else { 0 };
            if d.len() < start {
                return Err(b);
            }
            match (last >> 10) & 0x1F {
                0 => Ok((Tunnel::Erspan, ethernet_at(d, start)?)),
                2 => Ok((Tunnel::Erspan, ip_by_nibble(d, start)?)),
                _ => Err(Drop::NonIp),
            }
        }
        ETH_PPP => Ok((Tunnel::Gre, ppp(d, pos)?)),
        _ => Ok((Tunnel::Gre, by_ethertype(d, proto, pos)?)),
    }
}

/// A network layer below IP: a PPPoE session or an MPLS label stack (`non_ip` for any
/// other ethertype).
#[cold]
pub fn below_ip(d: &[u8], net: Network) -> Result<(Tunnel, Network), Drop> {
    match net.etype {
        ETH_PPPOE_SESSION => Ok((Tunnel::Pppoe, pppoe_session(d, net.off)?)),
        ETH_MPLS_UC | ETH_MPLS_MC => Ok((Tunnel::Mpls, mpls(d, net.off)?)),
        _ => Err(Drop::NonIp),
    }
}

/// An MPLS label stack (RFC 3032) at `off`, and what follows its bottom entry.
fn mpls(d: &[u8], mut off: usize) -> Result<Network, Drop> {
    let b = Drop::BadTunnel;
    let label = loop {
        let entry = be32(d, off).ok_or(b)?;
        off += 4;
        if entry & 0x100 != 0 {
            break entry >> 12;
        }
    };
    match label {
        0 => return Ok(Network { etype: ETH_IPV4, off }), // IPv4 explicit null
        2 => return Ok(Network { etype: ETH_IPV6, off }), // IPv6 explicit null
        _ => {}
    }
    let nibble = u8_at(d, off).ok_or(b)? >> 4;
    match nibble {
        4 => return Ok(Network { etype: ETH_IPV4, off }),
        6 => return Ok(Network { etype: ETH_IPV6, off }),
        _ => {}
    }
    // an Ethernet pseudo-wire (RFC 4448), with a control word (4 bytes, its first nibble 0:
    // RFC 4385) or without: Ethernet where an ethertype we decode is at its place
    if let Ok(net) = ethernet_at(d, off) {
        if decodable(net.etype) {
            return Ok(net);
        }
    }
    if nibble == 0 {
        return ethernet_at(d, off + 4);
    }
    Err(Drop::NonIp)
}

/// An ethertype the decoder goes on with.
fn decodable(etype: u16) -> bool {
    matches!(etype, ETH_IPV4 | ETH_IPV6 | ETH_MPLS_UC | ETH_MPLS_MC | ETH_PPPOE_SESSION)
}
