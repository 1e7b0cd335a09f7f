//! The decoder on hand-built frames: fields, every drop reason, and hostile bytes.

use super::link::*;
use super::*;

const MAC: [u8; 12] = [0xaa; 12];

fn ipv4(proto: u8, l4: &[u8]) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut v = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
    v[2..4].copy_from_slice(&total.to_be_bytes());
    v.extend_from_slice(l4);
    v
}

fn ipv6(next: u8, l4: &[u8]) -> Vec<u8> {
    let mut v = vec![0x60, 0, 0, 0];
    v.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    v.extend_from_slice(&[next, 64]);
    v.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    v.extend_from_slice(l4);
    v
}

fn tcp(flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let hlen = 20 + options.len();
    let mut v = vec![0x9c, 0x40, 0, 80, 0, 0, 0, 7, 0, 0, 0, 9, ((hlen / 4) as u8) << 4, flags, 0xff, 0xff, 0, 0, 0, 0];
    v.extend_from_slice(options);
    v.extend_from_slice(payload);
    v
}

fn udp(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x30, 0x39, 0, 53];
    v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

/// An SCTP packet from port 40000 to 2905 with verification tag 0x01020304 and `chunks`
/// (type, value): each chunk's length is its header's 4 bytes and the value, padded to 4.
fn sctp(chunks: &[(u8, &[u8])]) -> Vec<u8> {
    let mut v = vec![0x9c, 0x40, 0x0b, 0x59, 1, 2, 3, 4, 0xde, 0xad, 0xbe, 0xef];
    for (kind, value) in chunks {
        v.extend_from_slice(&[*kind, 0]);
        v.extend_from_slice(&((4 + value.len()) as u16).to_be_bytes());
        v.extend_from_slice(value);
        v.resize(v.len().next_multiple_of(4), 0);
    }
    v
}

fn ethernet(etype: u16, net: &[u8]) -> Vec<u8> {
    let mut v = MAC.to_vec();
    v.extend_from_slice(&etype.to_be_bytes());
    v.extend_from_slice(net);
    v
}

fn decode(linktype: i64, data: &[u8]) -> Result<(Packet, Vec<u8>), Drop> {
    let frame = Frame { number: 1, ts_us: 5, linktype, data, orig_len: data.len() as u32 };
    decode_frame(&frame, 65535, &mut Walk::default()).map(|(p, payload)| (p, payload.to_vec()))
}

#[test]
fn ethernet_ipv4_tcp_fields() {
    let (p, payload) = decode(LINKTYPE_ETHERNET, &ethernet(0x0800, &ipv4(6, &tcp(0x18, &[], b"hello")))).unwrap();
    assert_eq!((p.src_port, p.dst_port, p.seq, p.ack, p.window, p.tcp_flags), (40000, 80, 7, 9, 0xffff, 0x18));
    assert_eq!((p.ip_version, p.proto, p.payload_len, p.wscale, p.options), (4, 6, 5, -1, 0));
    assert_eq!(p.src_ip[..4], [10, 0, 0, 1]);
    assert_eq!(p.src_ip[4..], [0; 12]);
    assert_eq!(payload, b"hello");
}

#[test]
fn vlan_tags_are_skipped() {
    let inner = ethernet(0x0800, &ipv4(17, &udp(b"q")));
    let mut tagged = MAC.to_vec();
    tagged.extend_from_slice(&[0x88, 0xa8, 0, 1, 0x81, 0x00, 0, 2]);
    tagged.extend_from_slice(&inner[12..]);
    let (p, payload) = decode(LINKTYPE_ETHERNET, &tagged).unwrap();
    assert_eq!((p.proto, p.dst_port, payload.as_slice()), (17, 53, &b"q"[..]));
}

#[test]
fn ipv6_extension_headers_are_walked() {
    // hop-by-hop (8 bytes) then destination options (16 bytes) then TCP
    let mut ext = vec![60, 0, 0, 0, 0, 0, 0, 0];
    ext.extend_from_slice(&[6, 1]);
    ext.extend_from_slice(&[0; 14]);
    ext.extend_from_slice(&tcp(0x10, &[], b"xy"));
    let (p, payload) = decode(LINKTYPE_RAW, &ipv6(0, &ext)).unwrap();
    assert_eq!((p.ip_version, p.proto, p.payload_len), (6, 6, 2));
    assert_eq!(payload, b"xy");
    assert_eq!(decode(LINKTYPE_RAW, &ipv6(44, &[6, 0, 0, 1, 0, 0, 0, 0])).unwrap_err(), Drop::IpFragment);
    assert_eq!(decode(LINKTYPE_RAW, &ipv6(50, &[0; 16])).unwrap_err(), Drop::UnsupportedTransport);
    assert_eq!(decode(LINKTYPE_RAW, &ipv6(0, &[])).unwrap_err(), Drop::TruncatedIp);
}

#[test]
fn null_and_loop_families_in_either_byte_order() {
    let v6 = ipv6(17, &udp(b""));
    for (linktype, family) in [(LINKTYPE_NULL, 30u32.to_le_bytes()), (LINKTYPE_NULL, 24u32.to_be_bytes()),
                               (LINKTYPE_LOOP, 28u32.to_be_bytes()), (LINKTYPE_LOOP, 10u32.to_le_bytes())] {
        let mut f = family.to_vec();
        f.extend_from_slice(&v6);
        assert_eq!(decode(linktype, &f).unwrap().0.ip_version, 6);
    }
    let mut f = 2u32.to_le_bytes().to_vec();
    f.extend_from_slice(&ipv4(6, &tcp(2, &[], b"")));
    assert_eq!(decode(LINKTYPE_NULL, &f).unwrap().0.ip_version, 4);
    let mut f = 7u32.to_le_bytes().to_vec();
    f.extend_from_slice(&ipv4(6, &tcp(2, &[], b"")));
    assert_eq!(decode(LINKTYPE_NULL, &f).unwrap_err(), Drop::NonIp);
}

#[test]
fn linux_cooked_v1_and_v2() {
    let net = ipv4(17, &udp(b"abc"));
    let mut sll = vec![0u8; 14];
    sll.extend_from_slice(&[0x08, 0x00]);
    sll.extend_from_slice(&net);
    assert_eq!(decode(LINKTYPE_LINUX_SLL, &sll).unwrap().1, b"abc");
    let mut sll2 = vec![0x08, 0x00];
    sll2.extend_from_slice(&[0; 18]);
    sll2.extend_from_slice(&net);
    assert_eq!(decode(LINKTYPE_LINUX_SLL2, &sll2).unwrap().1, b"abc");
    assert_eq!(decode(LINKTYPE_LINUX_SLL2, &sll2[..19]).unwrap_err(), Drop::TruncatedLink);
}

/// An NFLOG frame: header, a packet-header TLV, the payload TLV, a timestamp TLV, with
/// TLV lengths and types written by `put` (the capturing host's byte order).
fn nflog(family: u8, net: &[u8], put: fn(u16) -> [u8; 2]) -> Vec<u8> {
    let mut f = vec![family, 0, 0, 5];
    let mut tlv = |kind: u16, value: &[u8]| {
        f.extend_from_slice(&put(4 + value.len() as u16));
        f.extend_from_slice(&put(kind));
        f.extend_from_slice(value);
        f.resize(f.len().div_ceil(4) * 4, 0);
    };
    tlv(1, &[0x08, 0x00, 3, 0]);
    tlv(9, net);
    tlv(3, &[0; 16]);
    f
}

#[test]
fn nflog_in_either_host_byte_order_and_pflog() {
    let net = ipv4(17, &udp(b"abcde")); // 33 bytes: the payload TLV is padded
    for put in [u16::to_le_bytes as fn(u16) -> [u8; 2], u16::to_be_bytes] {
        assert_eq!(decode(LINKTYPE_NFLOG, &nflog(2, &net, put)).unwrap().1, b"abcde");
        assert_eq!(decode(LINKTYPE_NFLOG, &nflog(7, &net, put)).unwrap_err(), Drop::NonIp);
    }
    let v6 = ipv6(6, &tcp(0x18, &[], b"xyz"));
    assert_eq!(decode(LINKTYPE_NFLOG, &nflog(10, &v6, u16::to_le_bytes)).unwrap().1, b"xyz");
    // no payload TLV; a TLV shorter than its own header
    assert_eq!(decode(LINKTYPE_NFLOG, &nflog(2, &net, u16::to_le_bytes)[..12]).unwrap_err(), Drop::NonIp);
    assert_eq!(decode(LINKTYPE_NFLOG, &[2, 0, 0, 5, 2, 0, 9, 0, 0xff]).unwrap_err(), Drop::TruncatedLink);

    // pflog: its length 61 (the packet at 64), BSD's families
    let mut pf = vec![61, 2];
    pf.resize(64, 0);
    pf.extend_from_slice(&net);
    assert_eq!(decode(LINKTYPE_PFLOG, &pf).unwrap().1, b"abcde");
    let mut pf6 = vec![100, 28];
    pf6.resize(100, 0);
    pf6.extend_from_slice(&v6);
    assert_eq!(decode(LINKTYPE_PFLOG, &pf6).unwrap().1, b"xyz");
    assert_eq!(decode(LINKTYPE_PFLOG, &pf[..63]).unwrap_err(), Drop::TruncatedLink);
    pf[0] = 44;
    assert_eq!(decode(LINKTYPE_PFLOG, &pf).unwrap_err(), Drop::TruncatedLink);
}

#[test]
fn ppi_wraps_ethernet_or_802_11() {
    let net = ipv4(17, &udp(b"abc"));
    let mut f = vec![0, 0, 8, 0, 1, 0, 0, 0]; // version, flags, length 8, Ethernet
    f.extend_from_slice(&ethernet(0x0800, &net));
    assert_eq!(decode(LINKTYPE_PPI, &f).unwrap().1, b"abc");
    f[4] = 105; // 802.11: a data frame, then LLC/SNAP
    f.truncate(8);
    f.extend_from_slice(&[0x08, 0x02, 0, 0]);
    f.extend_from_slice(&[0; 20]);
    f.extend_from_slice(&[0xAA, 0xAA, 0x03, 0, 0, 0, 0x08, 0x00]);
    f.extend_from_slice(&net);
    assert_eq!(decode(LINKTYPE_PPI, &f).unwrap().1, b"abc");
    f[4] = 192; // PPI in PPI: not read
    assert_eq!(decode(LINKTYPE_PPI, &f).unwrap_err(), Drop::UnsupportedLinktype);
    f[4] = 147; // a link type the decoder does not read
    assert_eq!(decode(LINKTYPE_PPI, &f).unwrap_err(), Drop::UnsupportedLinktype);
    assert_eq!(decode(LINKTYPE_PPI, &f[..7]).unwrap_err(), Drop::TruncatedLink);
    f[2] = 200; // a header longer than the frame
    assert_eq!(decode(LINKTYPE_PPI, &f).unwrap_err(), Drop::TruncatedLink);
}

#[test]
fn syn_options_and_the_window_scale_clamp() {
    // MSS, SACK-permitted, timestamps, NOP, window scale 15 (clamped to 14)
    let opts = [2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 15];
    let (p, _) = decode(LINKTYPE_RAW, &ipv4(6, &tcp(0x02, &opts, b""))).unwrap();
    assert_eq!((p.wscale, p.options), (14, 1 | 4 | 8 | 16));
    // the same options on a non-SYN segment are not read
    let (p, _) = decode(LINKTYPE_RAW, &ipv4(6, &tcp(0x10, &opts, b""))).unwrap();
    assert_eq!((p.wscale, p.options), (-1, 0));
    // a malformed option ends the walk, keeping what came before
    let bad = [2, 4, 5, 0xb4, 3, 1, 0, 0];
    assert_eq!(decode(LINKTYPE_RAW, &ipv4(6, &tcp(0x02, &bad, b""))).unwrap().0.options, 8);
}

#[test]
fn a_snapped_frame_keeps_its_true_payload_length() {
    let frame = ethernet(0x0800, &ipv4(6, &tcp(0x18, &[], &[7u8; 100])));
    let (p, payload) = decode(LINKTYPE_ETHERNET, &frame[..frame.len() - 60]).unwrap();
    assert_eq!((p.payload_len, payload.len()), (100, 40));
    let f = Frame { number: 1, ts_us: 0, linktype: LINKTYPE_ETHERNET, data: &frame, orig_len: 0 };
    assert_eq!(decode_frame(&f, 10, &mut Walk::default()).unwrap().1.len(), 10);
}

#[test]
fn tso_zero_lengths_trust_the_capture() {
    let mut net = ipv4(6, &tcp(0x10, &[], b"12345"));
    net[2] = 0;
    net[3] = 0;
    assert_eq!(decode(LINKTYPE_RAW, &net).unwrap().0.payload_len, 5);
}

#[test]
fn sctp_is_a_packet_its_chunk_types_in_the_flags() {
    // DATA (0) with 5 bytes of user data (padded), SACK (3), an AUTH (15: "other")
    let chunks = sctp(&[(0, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, b'h', b'e', b'l', b'l', b'o']), (3, &[0; 12]), (15, &[])]);
    let (p, payload) = decode(LINKTYPE_ETHERNET, &ethernet(0x0800, &ipv4(132, &chunks))).unwrap();
    assert_eq!((p.proto, p.src_port, p.dst_port, p.seq, p.ack), (132, 40000, 2905, 0x0102_0304, 0));
    assert_eq!((p.tcp_flags, p.window, p.wscale, p.options), (1 | 1 << 3 | 1 << 15, 0, -1, 0));
    assert_eq!((p.payload_len as usize, payload.as_slice()), (chunks.len() - 12, &chunks[12..]));
    // IPv6: an INIT (1) alone, after a destination-options header
    let mut ext = vec![132, 0, 1, 4, 0, 0, 0, 0];
    ext.extend_from_slice(&sctp(&[(1, &[0; 16])]));
    let (p, payload) = decode(LINKTYPE_RAW, &ipv6(60, &ext)).unwrap();
    assert_eq!((p.ip_version, p.proto, p.tcp_flags, p.payload_len, payload.len()), (6, 132, 1 << 1, 20, 20));
    // SHUTDOWN COMPLETE (14) and ABORT (6): no value; a chunk length under 4 ends the walk
    let (p, _) = decode(LINKTYPE_RAW, &ipv4(132, &sctp(&[(14, &[]), (6, &[])]))).unwrap();
    assert_eq!(p.tcp_flags, 1 << 14 | 1 << 6);
    let mut bad = sctp(&[(10, &[1, 2, 3, 4])]);
    bad.extend_from_slice(&[6, 0, 0, 2, 11, 0, 0, 4]); // ABORT with length 2, then COOKIE ACK
    assert_eq!(decode(LINKTYPE_RAW, &ipv4(132, &bad)).unwrap().0.tcp_flags, 1 << 10 | 1 << 6);
    // no chunks at all: still a packet (a bare common header), no flags
    let (p, payload) = decode(LINKTYPE_RAW, &ipv4(132, &sctp(&[]))).unwrap();
    assert_eq!((p.tcp_flags, p.payload_len, payload.len()), (0, 0, 0));
}

#[test]
fn an_sctp_packet_snapped_keeps_its_length_and_the_chunk_types_captured() {
    let frame = ethernet(0x0800, &ipv4(132, &sctp(&[(0, &[7u8; 100]), (3, &[0; 12])])));
    // cut inside the DATA chunk: its type is seen, the SACK after it is not
    let (p, payload) = decode(LINKTYPE_ETHERNET, &frame[..frame.len() - 60]).unwrap();
    assert_eq!((p.payload_len, payload.len(), p.tcp_flags), (120, 60, 1));
    let f = Frame { number: 1, ts_us: 0, linktype: LINKTYPE_ETHERNET, data: &frame, orig_len: 0 };
    let (p, payload) = decode_frame(&f, 10, &mut Walk::default()).unwrap();
    // the snap length cuts the payload, not the walk over the frame's chunks
    assert_eq!((payload.len(), p.tcp_flags), (10, 1 | 1 << 3));
}

#[test]
fn every_drop_reason() {
    let v4 = ipv4(6, &tcp(0x10, &[], b""));
    let mut frag = v4.clone();
    frag[6] = 0x20; // MF
    let mut bad_ihl = v4.clone();
    bad_ihl[0] = 0x44;
    let mut bad_doff = v4.clone();
    bad_doff[20 + 12] = 0x40;
    let cases: Vec<(i64, Vec<u8>, Drop)> = vec![
        (LINKTYPE_ETHERNET, ethernet(0x0806, &[0; 28]), Drop::NonIp),
        (147, v4.clone(), Drop::UnsupportedLinktype),
        (-1, v4.clone(), Drop::UnsupportedLinktype),
        (LINKTYPE_RAW, ipv4(2, &[0x11, 0, 0, 0, 0, 0, 0, 0]), Drop::UnsupportedTransport), // IGMP
        (LINKTYPE_RAW, ipv4(1, &[8, 0, 0]), Drop::TruncatedTransport), // ICMP: 8 header bytes
        (LINKTYPE_RAW, frag, Drop::IpFragment),
        (LINKTYPE_ETHERNET, vec![0; 13], Drop::TruncatedLink),
        (LINKTYPE_ETHERNET, ethernet(0x8100, &[]), Drop::TruncatedLink),
        (LINKTYPE_NULL, vec![2, 0, 0], Drop::TruncatedLink),
        (LINKTYPE_RAW, vec![], Drop::TruncatedLink),
        (LINKTYPE_RAW, v4[..19].to_vec(), Drop::TruncatedIp),
        (LINKTYPE_RAW, bad_ihl, Drop::TruncatedIp),
        (LINKTYPE_RAW, v4[..30].to_vec(), Drop::TruncatedTransport),
        (LINKTYPE_RAW, bad_doff, Drop::TruncatedTransport),
        (LINKTYPE_RAW, ipv4(17, &[0; 7]), Drop::TruncatedTransport),
        (LINKTYPE_RAW, ipv4(132, &sctp(&[])[..11]), Drop::TruncatedTransport), // SCTP: 12 header bytes
        (LINKTYPE_RAW, ipv6(132, &sctp(&[])[..4]), Drop::TruncatedTransport),
        (LINKTYPE_RAW, vec![0x50; 40], Drop::BadIpVersion),
        (LINKTYPE_ETHERNET, ethernet(0x0800, &[0x60; 20]), Drop::BadIpVersion),
    ];
    let mut d = Decoder::new(65535);
    for (linktype, data, reason) in &cases {
        assert_eq!(decode(*linktype, data).unwrap_err(), *reason, "{linktype} {data:?}");
        let f = Frame { number: 1, ts_us: 0, linktype: *linktype, data, orig_len: 0 };
        assert!(d.decode(&f).is_none());
    }
    let total: u64 = d.dropped().iter().map(|(_, n)| n).sum();
    assert_eq!(total, cases.len() as u64);
}

/// xorshift: deterministic garbage without a dependency
fn rng(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn hostile_bytes_never_panic() {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let good = [
        ethernet(0x0800, &ipv4(6, &tcp(0x02, &[2, 4, 5, 0xb4, 1, 3, 3, 7], b"abc"))),
        ethernet(0x86dd, &ipv6(0, &[17, 0, 0, 0, 0, 0, 0, 0, 0x30, 0x39, 0, 53, 0, 9, 0, 0, 1])),
        ethernet(0x0800, &ipv4(132, &sctp(&[(1, &[0; 16]), (0, b"abcdefgh"), (3, &[0; 12])]))),
    ];
    let mut d = Decoder::new(65535);
    for i in 0..200_000u64 {
        let linktype = SUPPORTED[(rng(&mut s) % SUPPORTED.len() as u64) as usize].0;
        let data: Vec<u8> = if i % 2 == 0 {
            let n = (rng(&mut s) % 96) as usize;
            (0..n).map(|_| rng(&mut s) as u8).collect()
        } else {
            let mut f = good[(i / 2 % good.len() as u64) as usize].clone();
            for _ in 0..1 + rng(&mut s) % 4 {
                let at = (rng(&mut s) as usize) % f.len();
                f[at] = rng(&mut s) as u8;
            }
            f.truncate((rng(&mut s) as usize) % (f.len() + 1));
            f
        };
        let f = Frame { number: i, ts_us: 0, linktype, data: &data, orig_len: 0 };
        if let Some((p, payload)) = d.decode(&f) {
            assert!(payload.len() <= p.payload_len as usize);
        }
    }
}
