//! Decode captured frames down to TCP/UDP headers: link layer -> IP -> transport.
//!
//! One decoded packet is a [`Packet`]: the fields of one 80-byte record of the batch layout
//! (`wirestream/packet_block.py`, docs/packet-layout.md) and its captured payload. A frame
//! that is not IPv4/IPv6 TCP or UDP, or is damaged, gives no packet: it is counted under a
//! named [`Drop`] reason instead (the names are those of `wire.stats`).
//!
//! Written by hand rather than with `etherparse`: the rules here are wirestream's own and
//! must stay exactly as they were (Linux cooked v1/v2 and BSD null/loop families, TSO's
//! zero IP lengths trusted to the capture, the IPv6 extension walk ending at ESP or a
//! fragment with its own drop reason, SYN-only option parsing with the window-scale clamp,
//! a payload length from the IP/UDP headers even when the frame was snapped);
//! `etherparse` rejects or re-interprets several of these (it validates lengths against
//! the slice, which a snapped frame fails), and its error kinds do not map onto the drop
//! reasons the counters report. The whole decoder is ~300 lines of checked reads.

pub mod ip;
pub mod link;
pub mod transport;

use crate::layout::Packet;

/// Why a frame gave no packet; [`Drop::name`] is the counter's name in `wire.stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// link-layer payload is not IPv4/IPv6 (ARP, LLDP, STP, ...)
    NonIp,
    /// a link type we do not decode
    UnsupportedLinktype,
    /// IP payload is not TCP or UDP (ICMP, IGMP, ESP, ...)
    UnsupportedTransport,
    /// an IP fragment (no reassembly yet: counted, not analysed)
    IpFragment,
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
    pub const ALL: [Drop; 8] = [
        Drop::NonIp,
        Drop::UnsupportedLinktype,
        Drop::UnsupportedTransport,
        Drop::IpFragment,
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
            Drop::TruncatedLink => "truncated_link",
            Drop::TruncatedIp => "truncated_ip",
            Drop::TruncatedTransport => "truncated_transport",
            Drop::BadIpVersion => "bad_ip_version",
        }
    }
}

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

/// Decodes frames and counts what it drops. Holds only counters; one per source.
#[derive(Clone, Debug)]
pub struct Decoder {
    /// payload bytes kept per packet (the rest is only counted in `payload_len`)
    pub payload_snaplen: usize,
    dropped: [u64; Drop::ALL.len()],
}

impl Decoder {
    pub fn new(payload_snaplen: usize) -> Self {
        Decoder { payload_snaplen, dropped: [0; Drop::ALL.len()] }
    }

    /// The packet of `frame` with its captured payload, or `None` (counted under its reason).
    pub fn decode<'a>(&mut self, frame: &Frame<'a>) -> Option<(Packet, &'a [u8])> {
        match decode_frame(frame, self.payload_snaplen) {
            Ok(decoded) => Some(decoded),
            Err(reason) => {
                self.count(reason);
                None
            }
        }
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
}

/// Link -> IP -> transport, then the payload cut at the snap length.
fn decode_frame<'a>(frame: &Frame<'a>, snaplen: usize) -> Result<(Packet, &'a [u8]), Drop> {
    let d = frame.data;
    let net = link::network_offset(frame.linktype, d)?;
    let ip = ip::parse(d, net)?;
    let tr = transport::parse(d, &ip)?;
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
