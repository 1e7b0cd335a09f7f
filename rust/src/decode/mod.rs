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
//! IP fragments are reassembled (`fragments.rs`): a fragment's frame gives no packet (it
//! is counted as `ip_fragment`), the frame of the fragment that completes its datagram
//! gives the reassembled datagram's packet, whose payload is then owned bytes; every
//! other packet's payload is borrowed from its frame, without a copy.

pub mod fragments;
pub mod ip;
pub mod link;
pub mod transport;

use std::borrow::Cow;

use crate::layout::Packet;
use fragments::{Limits, Reassembler};
use ip::Ip;

/// Why a frame gave no packet; [`Drop::name`] is the counter's name in `wire.stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// link-layer payload is not IPv4/IPv6 (ARP, LLDP, STP, ...)
    NonIp,
    /// a link type we do not decode
    UnsupportedLinktype,
    /// IP payload is not TCP, UDP or ICMP/ICMPv6 (IGMP, ESP, SCTP, ...)
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
}

impl Drop {
    pub const ALL: [Drop; 9] = [
        Drop::NonIp,
        Drop::UnsupportedLinktype,
        Drop::UnsupportedTransport,
        Drop::IpFragment,
        Drop::IpFragmentBad,
        Drop::TruncatedLink,
        Drop::TruncatedIp,
        Drop::TruncatedTransport,
        Drop::BadIpVersion,
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

/// Decodes frames and counts what it drops; holds the fragments being reassembled.
/// One per source.
#[derive(Clone, Debug)]
pub struct Decoder {
    /// payload bytes kept per packet (the rest is only counted in `payload_len`)
    pub payload_snaplen: usize,
    dropped: [u64; Drop::ALL.len()],
    fragments: Reassembler,
}

impl Decoder {
    pub fn new(payload_snaplen: usize) -> Self {
        Self::with_limits(payload_snaplen, Limits::default())
    }

    /// A decoder whose fragment reassembly has these bounds.
    pub fn with_limits(payload_snaplen: usize, limits: Limits) -> Self {
        Decoder { payload_snaplen, dropped: [0; Drop::ALL.len()], fragments: Reassembler::new(limits) }
    }

    /// The packet of `frame` with its captured payload (borrowed from the frame, owned for
    /// a reassembled datagram), or `None`: counted under its reason, or a fragment held.
    /// Every frame that gives no packet is counted once.
    pub fn decode<'a>(&mut self, frame: &Frame<'a>) -> Option<Decoded<'a>> {
        match decode_frame(frame, self.payload_snaplen) {
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
        let net = link::network_offset(frame.linktype, frame.data)?;
        let piece = fragments::parse(frame.data, net)?;
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
        let (packet, payload) = transport_packet(frame, &ip, &dg.data, self.payload_snaplen)?;
        Ok(Some((packet, Cow::Owned(payload.to_vec()))))
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
    /// fragments of the datagrams not complete yet, at this moment).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = self.fragments.counters;
        [
            ("ip_datagrams_reassembled", c.reassembled),
            ("ip_fragments_timed_out", c.timed_out),
            ("ip_fragments_evicted", c.evicted),
            ("ip_fragment_overlaps", c.overlaps),
            ("ip_fragment_overlap_conflicts", c.overlap_conflicts),
            ("ip_fragments_held", self.fragments.held_fragments()),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

/// Link -> IP -> transport, then the payload cut at the snap length.
fn decode_frame<'a>(frame: &Frame<'a>, snaplen: usize) -> Result<(Packet, &'a [u8]), Drop> {
    let d = frame.data;
    let net = link::network_offset(frame.linktype, d)?;
    let ip = ip::parse(d, net)?;
    transport_packet(frame, &ip, d, snaplen)
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
