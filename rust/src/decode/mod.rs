//! Decode captured frames down to TCP/UDP headers: link layer -> IP -> transport.
//!
//! One decoded packet is a [`Packet`]: the fields of one 80-byte record of the batch layout
//! (`wirestream/packet_block.py`, docs/packet-layout.md) and its captured payload. A frame
//! that is not IPv4/IPv6 TCP or UDP, or is damaged, gives no packet: it is counted under a
//! named [`Drop`] reason instead (the names are those of `wire.stats`).
//!
//! Written by hand rather than with `etherparse`: the rules here are wirestream's own and
//! must stay exactly as they were (Linux cooked v1/v2 and BSD null/loop families, TSO's
//! zero IP lengths trusted to the capture, the IPv6 extension walk ending at ESP or at a
//! fragment header (reassembled, below), SYN-only option parsing with the window-scale clamp,
//! a payload length from the IP/UDP headers even when the frame was snapped);
//! `etherparse` rejects or re-interprets several of these (it validates lengths against
//! the slice, which a snapped frame fails), and its error kinds do not map onto the drop
//! reasons the counters report. The whole decoder is ~300 lines of checked reads.
//!
//! Tunnels are decapsulated (`tunnel.rs`): the packet of a VXLAN, Geneve, GRE/ERSPAN,
//! IP-in-IP, Teredo, GTP-U, PPPoE or MPLS frame is its inner packet, nested tunnels
//! included (at most `tunnel::MAX_DEPTH` layers), each layer counted per kind.
//!
//! IP fragments are reassembled (`fragments.rs`): a fragment's frame gives no packet (it
//! is counted as `ip_fragment`), the frame of the fragment that completes its datagram
//! gives the reassembled datagram's packet, whose payload is then owned bytes; every
//! other packet's payload is borrowed from its frame, without a copy.

pub mod fragments;
pub mod ip;
pub mod link;
pub mod transport;
pub mod tunnel;

use std::borrow::Cow;

use crate::layout::Packet;
use fragments::{Limits, Reassembler};
use ip::Ip;
use link::{Network, ETH_IPV4, ETH_IPV6};
use tunnel::{Layer, Tunnel};

/// Why a frame gave no packet; [`Drop::name`] is the counter's name in `wire.stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// link-layer payload is not IPv4/IPv6 (ARP, LLDP, STP, ...)
    NonIp,
    /// a link type we do not decode
    UnsupportedLinktype,
    /// IP payload is not TCP, UDP, ICMP/ICMPv6 or SCTP (IGMP, ESP, AH, OSPF, ...)
    UnsupportedTransport,
    /// an IP fragment held for reassembly: its bytes go out in the reassembled datagram,
    /// on the frame of the fragment that completes it (or are counted as timed out/evicted)
    IpFragment,
    /// a fragment that cannot be part of a datagram: beyond 65535 bytes, or a non-last
    /// fragment of zero or not a multiple of 8 bytes, or an IPv6 fragment of a jumbogram
    IpFragmentBad,
    /// frame too short for its link-layer header
    TruncatedLink,
    /// IP header cut off, or a bad header length
    TruncatedIp,
    /// TCP/UDP header cut off, or a bad TCP data offset
    TruncatedTransport,
    /// the version nibble is neither 4 nor 6
    BadIpVersion,
    /// a tunnel's header cut off or malformed (VXLAN, Geneve, GRE/ERSPAN, Teredo, GTP-U,
    /// PPPoE, MPLS)
    BadTunnel,
    /// more than `tunnel::MAX_DEPTH` tunnels in one another
    TunnelTooDeep,
    /// an IP fragment inside a tunnel inside a reassembled datagram (a second level of
    /// reassembly, which we do not do)
    TunnelFragment,
}

impl Drop {
    pub const ALL: [Drop; 12] = [
        Drop::NonIp,
        Drop::UnsupportedLinktype,
        Drop::UnsupportedTransport,
        Drop::IpFragment,
        Drop::IpFragmentBad,
        Drop::TruncatedLink,
        Drop::TruncatedIp,
        Drop::TruncatedTransport,
        Drop::BadIpVersion,
        Drop::BadTunnel,
        Drop::TunnelTooDeep,
        Drop::TunnelFragment,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Drop::NonIp => "non_ip",
            Drop::UnsupportedLinktype => "unsupported_linktype",
            Drop::UnsupportedTransport => "unsupported_transport",
            Drop::IpFragment => "ip_fragment",
            Drop::IpFragmentBad => "ip_fragment_bad",
            Drop::TruncatedLink => "truncated_link",
            Drop::TruncatedIp => "truncated_ip",
            Drop::TruncatedTransport => "truncated_transport",
            Drop::BadIpVersion => "bad_ip_version",
            Drop::BadTunnel => "bad_tunnel",
            Drop::TunnelTooDeep => "tunnel_too_deep",
            Drop::TunnelFragment => "tunnel_fragment",
        }
    }
}

/// A decoded packet and its captured payload (borrowed from the frame, or owned).
pub type Decoded<'a> = (Packet, Cow<'a, [u8]>);

/// One captured frame as the readers give it.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// 1-based, as Wireshark numbers frames
    pub number: u64,
    /// microseconds since the epoch
    pub ts_us: i64,
    /// LINKTYPE_* of the frame's interface (-1: unknown, e.g. a device type we do not map)
    pub linktype: i64,
    pub data: &'a [u8],
    pub orig_len: u32,
}

/// What one frame's walk through its layers leaves besides its packet: the tunnels it
/// decapsulated (counted per kind), and where its IP fragment is when it is one.
#[derive(Clone, Debug, Default)]
pub struct Walk {
    pub tunnels: [u64; Tunnel::ALL.len()],
    /// the tunnel layers of the frame being decoded, outermost first (bounded by
    /// [`tunnel::MAX_DEPTH`]); empty for a plain packet
    pub path: Vec<Layer>,
    /// the fragment's IP header, and the end of the bytes it is read within (a prefix of
    /// the frame: a tunnel's payload ends where its outer header says)
    pub fragment: Option<(Network, usize)>,
}

/// Decodes frames and counts what it drops; holds the fragments being reassembled.
/// One per source.
#[derive(Clone, Debug)]
pub struct Decoder {
    /// payload bytes kept per packet (the rest is only counted in `payload_len`)
    pub payload_snaplen: usize,
    dropped: [u64; Drop::ALL.len()],
    fragments: Reassembler,
    walk: Walk,
}

impl Decoder {
    pub fn new(payload_snaplen: usize) -> Self {
        Self::with_limits(payload_snaplen, Limits::default())
    }

    /// A decoder whose fragment reassembly has these bounds.
    pub fn with_limits(payload_snaplen: usize, limits: Limits) -> Self {
        Decoder {
            payload_snaplen,
            dropped: [0; Drop::ALL.len()],
            fragments: Reassembler::new(limits),
            walk: Walk::default(),
        }
    }

    /// The packet of `frame` with its captured payload (borrowed from the frame, owned for
    /// a reassembled datagram), or `None`: counted under its reason, or a fragment held.
    /// Every frame that gives no packet is counted once.
    pub fn decode<'a>(&mut self, frame: &Frame<'a>) -> Option<Decoded<'a>> {
        self.walk.path.clear();
        match decode_frame(frame, self.payload_snaplen, &mut self.walk) {
            Ok((packet, payload)) => Some((packet, Cow::Borrowed(payload))),
            Err(Drop::IpFragment) => match self.fragment(frame) {
                Ok(Some(decoded)) => Some(decoded),
                Ok(None) => {
                    self.count(Drop::IpFragment);
                    None
                }
                Err(reason) => {
                    self.count(reason);
                    None
                }
            },
            Err(reason) => {
                self.count(reason);
                None
            }
        }
    }

    /// A fragment into the reassembler; the packet of its datagram if it completed it.
    #[cold]
    fn fragment<'a>(&mut self, frame: &Frame<'a>) -> Result<Option<Decoded<'a>>, Drop> {
        let (net, end) = self.walk.fragment.take().ok_or(Drop::IpFragmentBad)?;
        let piece = fragments::parse(frame.data.get(..end).ok_or(Drop::TruncatedIp)?, net)?;
        let Some(dg) = self.fragments.add(piece, frame.ts_us)? else { return Ok(None) };
        let (proto, off) = if dg.version == 6 {
            // the fragmentable part may start with extension headers; a fragment header
            // inside a reassembled datagram is not a datagram we can decode
            ip::walk_ext(&dg.data, dg.proto, 0)
                .map_err(|e| if e == Drop::IpFragment { Drop::IpFragmentBad } else { e })?
        } else {
            (dg.proto, 0)
        };
        let l4_len = dg.data.len().saturating_sub(off) as i64;
        let ip = Ip { version: dg.version, proto, src: dg.src, dst: dg.dst, l4_len, off };
        // the datagram may carry a tunnel (an overlay's outer packet fragmented on a path
        // with a smaller MTU): decapsulated as in a frame; a fragment inside it is not
        // reassembled again
        let (packet, payload) = match tunnel::in_ip(&dg.data, &ip)? {
            None => transport_packet(frame, &ip, &dg.data, self.payload_snaplen)?,
            Some((kind, inner, end)) => {
                self.walk.tunnels[kind as usize] += 1;
                self.walk.path.push(Layer::in_ip(&dg.data, &ip, kind));
                let d = dg.data.get(..end).ok_or(Drop::BadTunnel)?;
                from_network(frame, d, inner, self.payload_snaplen, &mut self.walk, 1).map_err(|e| {
                    if e == Drop::IpFragment {
                        self.walk.fragment = None;
                        Drop::TunnelFragment
                    } else {
                        e
                    }
                })?
            }
        };
        Ok(Some((packet, Cow::Owned(payload.to_vec()))))
    }

    /// The tunnel layers the last packet [`Decoder::decode`] gave came through, outermost
    /// first (for a reassembled datagram: those of the fragment that completed it, then the
    /// datagram's own).
    pub fn path(&self) -> &[Layer] {
        &self.walk.path
    }

    fn count(&mut self, reason: Drop) {
        if let Some(c) = self.dropped.get_mut(reason as usize) {
            *c += 1;
        }
    }

    /// The non-zero drop counters, by name.
    pub fn dropped(&self) -> Vec<(&'static str, u64)> {
        Drop::ALL
            .iter()
            .zip(self.dropped.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| (r.name(), *n))
            .collect()
    }

    /// The non-zero counters of fragment reassembly, by name (`ip_fragments_held`: the
    /// fragments of the datagrams not complete yet, at this moment), then of the tunnels
    /// decapsulated (`tunnel_<kind>`: frames, once per layer of that kind).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = self.fragments.counters;
        let tunnels = Tunnel::ALL.iter().zip(self.walk.tunnels.iter()).map(|(t, n)| (t.name(), *n));
        [
            ("ip_datagrams_reassembled", c.reassembled),
            ("ip_fragments_timed_out", c.timed_out),
            ("ip_fragments_evicted", c.evicted),
            ("ip_fragment_overlaps", c.overlaps),
            ("ip_fragment_overlap_conflicts", c.overlap_conflicts),
            ("ip_fragments_held", self.fragments.held_fragments()),
        ]
        .into_iter()
        .chain(tunnels)
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

/// Link -> IP (-> tunnels -> IP) -> transport, then the payload cut at the snap length.
fn decode_frame<'a>(frame: &Frame<'a>, snaplen: usize, walk: &mut Walk) -> Result<(Packet, &'a [u8]), Drop> {
    let d = frame.data;
    let net = link::network_offset(frame.linktype, d)?;
    from_network(frame, d, net, snaplen, walk, 0)
}

/// From the network layer `net` in `d` (inside `depth` tunnels) down to the transport,
/// through every tunnel on the way. An IP fragment's header is left in `walk.fragment`.
#[inline]
fn from_network<'d>(
    frame: &Frame<'_>,
    mut d: &'d [u8],
    mut net: Network,
    snaplen: usize,
    walk: &mut Walk,
    mut depth: u8,
) -> Result<(Packet, &'d [u8]), Drop> {
    loop {
        let next = if net.etype == ETH_IPV4 || net.etype == ETH_IPV6 {
            let ip = match ip::parse(d, net) {
                Ok(ip) => ip,
                Err(Drop::IpFragment) => {
                    walk.fragment = Some((net, d.len()));
                    return Err(Drop::IpFragment);
                }
                Err(e) => return Err(e),
            };
            match tunnel::in_ip(d, &ip)? {
                None => return transport_packet(frame, &ip, d, snaplen),
                Some((kind, inner, end)) => {
                    push_in_ip(&mut walk.path, d, &ip, kind);
                    d = d.get(..end).ok_or(Drop::BadTunnel)?;
                    (kind, inner)
                }
            }
        } else {
            let (kind, inner) = tunnel::below_ip(d, net)?;
            push_below_ip(&mut walk.path, d, net, kind);
            (kind, inner)
        };
        walk.tunnels[next.0 as usize] += 1;
        depth += 1;
        if depth > tunnel::MAX_DEPTH {
            return Err(Drop::TunnelTooDeep);
        }
        net = next.1;
    }
}

// Keeping a layer is out of line: the plain path's loop must not carry the Vec's growth.
#[cold]
#[inline(never)]
fn push_in_ip(path: &mut Vec<Layer>, d: &[u8], ip: &Ip, kind: Tunnel) {
    path.push(Layer::in_ip(d, ip, kind));
}

#[cold]
#[inline(never)]
fn push_below_ip(path: &mut Vec<Layer>, d: &[u8], net: Network, kind: Tunnel) {
    path.push(Layer::below_ip(d, net, kind));
}

/// The transport header after `ip` in `d` (the frame, or a reassembled datagram) and the
/// payload cut at the snap length.
#[inline]
fn transport_packet<'d>(frame: &Frame<'_>, ip: &Ip, d: &'d [u8], snaplen: usize) -> Result<(Packet, &'d [u8]), Drop> {
    let tr = transport::parse(d, ip)?;
    let available = d.len().saturating_sub(tr.start);
    let caplen = (tr.payload_len as usize).min(available).min(snaplen);
    let payload = d.get(tr.start..tr.start + caplen).unwrap_or(&[]);
    let packet = Packet {
        ts_us: frame.ts_us,
        frame: frame.number as u32,
        wire_len: frame.orig_len,
        payload_len: tr.payload_len,
        seq: tr.seq,
        ack: tr.ack,
        src_ip: ip.src,
        dst_ip: ip.dst,
        src_port: tr.sport,
        dst_port: tr.dport,
        window: tr.window,
        tcp_flags: tr.flags,
        ip_version: ip.version,
        proto: ip.proto,
        wscale: tr.wscale,
        options: tr.options,
    };
    Ok((packet, payload))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tunnel_tests;
