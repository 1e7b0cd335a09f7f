//! Decapsulation on hand-built frames: every encapsulation, nesting, the depth limit,
//! and every truncation of every encapsulation (a named drop, never a panic).

use super::link::*;
use super::tunnel::*;
use super::*;

const MAC: [u8; 12] = [0xaa; 12];

/// IPv4 with these addresses' last bytes (the inner ones differ from the outer ones).
fn ipv4_from(src: u8, dst: u8, proto: u8, l4: &[u8]) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut v = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, src, 10, 0, 0, dst];
    v[2..4].copy_from_slice(&total.to_be_bytes());
    v.extend_from_slice(l4);
    v
}

fn ipv4(proto: u8, l4: &[u8]) -> Vec<u8> {
    ipv4_from(1, 2, proto, l4)
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

/// The inner TCP segment every case carries: port 40000 -> 80, seq 7, "hello".
fn tcp() -> Vec<u8> {
    let mut v = vec![0x9c, 0x40, 0, 80, 0, 0, 0, 7, 0, 0, 0, 9, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0];
    v.extend_from_slice(b"hello");
    v
}

/// The inner packet: IPv4 192.0.2.x would do, but distinct last bytes 33 -> 44 suffice.
fn inner4() -> Vec<u8> {
    ipv4_from(33, 44, 6, &tcp())
}

fn inner6() -> Vec<u8> {
    ipv6(6, &tcp())
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = sport.to_be_bytes().to_vec();
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

fn ethernet(etype: u16, net: &[u8]) -> Vec<u8> {
    let mut v = MAC.to_vec();
    v.extend_from_slice(&etype.to_be_bytes());
    v.extend_from_slice(net);
    v
}

fn vxlan(port: u16, inner_eth: &[u8]) -> Vec<u8> {
    let mut h = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
    h.extend_from_slice(inner_eth);
    udp(51000, port, &h)
}

fn geneve(proto: u16, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut h = vec![(options.len() / 4) as u8, 0];
    h.extend_from_slice(&proto.to_be_bytes());
    h.extend_from_slice(&[0, 0, 42, 0]);
    h.extend_from_slice(options);
    h.extend_from_slice(payload);
    udp(51000, UDP_GENEVE, &h)
}

fn gre(flags: u16, proto: u16, extra: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut h = flags.to_be_bytes().to_vec();
    h.extend_from_slice(&proto.to_be_bytes());
    h.extend_from_slice(extra);
    h.extend_from_slice(payload);
    h
}

fn mpls(labels: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        let bos = if i + 1 == labels.len() { 0x100 } else { 0 };
        v.extend_from_slice(&((l << 12) | bos | 64).to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

fn pppoe(proto: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x11, 0, 0, 7];
    v.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    v.extend_from_slice(&proto.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn gtpu(flags: u8, kind: u8, opt: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut h = vec![flags, kind];
    h.extend_from_slice(&((opt.len() + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 9]);
    h.extend_from_slice(opt);
    h.extend_from_slice(payload);
    udp(UDP_GTPU, UDP_GTPU, &h)
}

/// A frame's packet (or drop reason) and the decoder's counters after it.
type Outcome = (Result<(Packet, Vec<u8>), Drop>, Vec<(&'static str, u64)>);

fn run(linktype: i64, data: &[u8]) -> Outcome {
    let mut d = Decoder::new(65535);
    let f = Frame { number: 1, ts_us: 5, linktype, data, orig_len: data.len() as u32 };
    let out = d.decode(&f).map(|(p, payload)| (p, payload.to_vec()));
    let result = match out {
        Some(x) => Ok(x),
        None => Err(d.dropped().first().map(|(n, _)| *Drop::ALL.iter().find(|r| r.name() == *n).unwrap()).unwrap()),
    };
    (result, d.counters())
}

/// The packet is the inner TCP segment, and the tunnel layers were counted.
fn assert_inner(linktype: i64, frame: &[u8], version: u8, counted: &[(&str, u64)]) {
    let (result, counters) = run(linktype, frame);
    let (p, payload) = result.unwrap_or_else(|e| panic!("{e:?} for {frame:02x?}"));
    assert_eq!((p.ip_version, p.proto, p.src_port, p.dst_port, p.seq), (version, 6, 40000, 80, 7));
    assert_eq!(payload, b"hello");
    if version == 4 {
        assert_eq!((p.src_ip[3], p.dst_ip[3]), (33, 44));
    } else {
        assert_eq!(p.dst_ip[15], 2);
    }
    assert_eq!(counters, counted.to_vec());
}

fn eth_inner4() -> Vec<u8> {
    ethernet(0x0800, &inner4())
}

#[test]
fn vxlan_on_both_ports() {
    for port in [UDP_VXLAN, UDP_VXLAN_LINUX] {
        let f = ethernet(0x0800, &ipv4(17, &vxlan(port, &eth_inner4())));
        assert_inner(LINKTYPE_ETHERNET, &f, 4, &[("tunnel_vxlan", 1)]);
    }
    // the tunnel port on the source side (the lower port is tried first)
    let mut v = vxlan(UDP_VXLAN, &ethernet(0x86dd, &inner6()));
    v[..4].copy_from_slice(&[0x12, 0xb5, 0xc3, 0x50]); // 4789 -> 50000
    assert_inner(LINKTYPE_RAW, &ipv4(17, &v), 6, &[("tunnel_vxlan", 1)]);
}

#[test]
fn dns_from_a_tunnel_port_stays_dns() {
    // a resolver that picked 4789 as its source port: the lower port, 53, decides
    let (result, counters) = run(LINKTYPE_RAW, &ipv4(17, &udp(UDP_VXLAN, 53, &[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])));
    let (p, payload) = result.unwrap();
    assert_eq!((p.src_port, p.dst_port, payload.len(), counters), (UDP_VXLAN, 53, 12, vec![]));
}

#[test]
fn vxlan_inner_vlan_and_ethernet_trailer() {
    // inner Ethernet with a VLAN tag; the outer frame padded (the trailer is not inner bytes)
    let mut tagged = MAC.to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0, 5, 0x08, 0x00]);
    tagged.extend_from_slice(&inner4());
    let mut f = ethernet(0x0800, &ipv4(17, &vxlan(UDP_VXLAN, &tagged)));
    f.extend_from_slice(&[0xee; 10]);
    assert_inner(LINKTYPE_ETHERNET, &f, 4, &[("tunnel_vxlan", 1)]);
}

#[test]
fn geneve_with_options_and_ip_payloads() {
    let opts = [0x01, 0x02, 0x80, 0x01, 1, 2, 3, 4];
    assert_inner(LINKTYPE_RAW, &ipv4(17, &geneve(0x6558, &opts, &eth_inner4())), 4, &[("tunnel_geneve", 1)]);
    assert_inner(LINKTYPE_RAW, &ipv6(17, &geneve(0x0800, &[], &inner4())), 4, &[("tunnel_geneve", 1)]);
    assert_inner(LINKTYPE_RAW, &ipv4(17, &geneve(0x86dd, &opts, &inner6())), 6, &[("tunnel_geneve", 1)]);
    // version 1 is not Geneve as we know it
    let mut bad = ipv4(17, &geneve(0x0800, &[], &inner4()));
    bad[28] = 0x40;
    assert_eq!(run(LINKTYPE_RAW, &bad).0.unwrap_err(), Drop::BadTunnel);
}

#[test]
fn gre_flags_and_protocol_types() {
    // plain, checksum, key, sequence, all three
    for (flags, extra) in [(0u16, vec![]), (0x8000, vec![0; 4]), (0x2000, vec![0, 0, 0, 42]), (0x1000, vec![0, 0, 0, 1]),
                           (0xB000, vec![0; 12])] {
        assert_inner(LINKTYPE_RAW, &ipv4(47, &gre(flags, 0x0800, &extra, &inner4())), 4, &[("tunnel_gre", 1)]);
        assert_inner(LINKTYPE_RAW, &ipv6(47, &gre(flags, 0x86dd, &extra, &inner6())), 6, &[("tunnel_gre", 1)]);
        assert_inner(LINKTYPE_RAW, &ipv4(47, &gre(flags, 0x6558, &extra, &eth_inner4())), 4, &[("tunnel_gre", 1)]);
    }
    // RFC 1701 routing: one entry of 4 bytes, then the NULL entry
    let routing = [0, 0, 0, 0, 0x08, 0x00, 0, 4, 1, 2, 3, 4, 0, 0, 0, 0];
    assert_inner(LINKTYPE_RAW, &ipv4(47, &gre(0x4000, 0x0800, &routing, &inner4())), 4, &[("tunnel_gre", 1)]);
    // PPTP's enhanced GRE: key, sequence, then PPP with address/control
    let mut ppp = vec![0xff, 0x03, 0x00, 0x21];
    ppp.extend_from_slice(&inner4());
    let f = ipv4(47, &gre(0x3001, 0x880B, &[0, 30, 0, 1, 0, 0, 0, 5], &ppp));
    assert_inner(LINKTYPE_RAW, &f, 4, &[("tunnel_gre", 1)]);
    // GRE version 2 does not exist; an unknown protocol type is not IP
    assert_eq!(run(LINKTYPE_RAW, &ipv4(47, &gre(0x0002, 0x0800, &[], &inner4()))).0.unwrap_err(), Drop::BadTunnel);
    assert_eq!(run(LINKTYPE_RAW, &ipv4(47, &gre(0, 0x0806, &[], &[0; 28]))).0.unwrap_err(), Drop::NonIp);
}

#[test]
fn erspan_types_one_two_three() {
    // type I: no sequence bit, Ethernet right after GRE
    assert_inner(LINKTYPE_RAW, &ipv4(47, &gre(0, ETH_ERSPAN_2, &[], &eth_inner4())), 4, &[("tunnel_erspan", 1)]);
    // type II: sequence, then an 8-byte header of version 1
    let mut h2 = vec![0, 0, 0, 1, 0x10, 0x64, 0x00, 0x05, 0, 0, 0, 0];
    h2.extend_from_slice(&eth_inner4());
    assert_inner(LINKTYPE_RAW, &ipv4(47, &gre(0x1000, ETH_ERSPAN_2, &[], &h2)), 4, &[("tunnel_erspan", 1)]);
    let mut wrong = h2.clone();
    wrong[4] = 0x20;
    assert_eq!(run(LINKTYPE_RAW, &ipv4(47, &gre(0x1000, ETH_ERSPAN_2, &[], &wrong))).0.unwrap_err(), Drop::BadTunnel);
    // type III: 12 bytes of version 2, with and without the platform subheader
    for o in [0u8, 1] {
        let mut h3 = vec![0x20, 0x64, 0x00, 0x05, 0, 0, 0, 1, 0, 0, 0, o];
        if o == 1 {
            h3.extend_from_slice(&[0; 8]);
        }
        h3.extend_from_slice(&eth_inner4());
        assert_inner(LINKTYPE_RAW, &ipv6(47, &gre(0x1000, ETH_ERSPAN_3, &[0, 0, 0, 1], &h3)), 4, &[("tunnel_erspan", 1)]);
    }
}

#[test]
fn ip_in_ip_every_combination() {
    assert_inner(LINKTYPE_RAW, &ipv4(4, &inner4()), 4, &[("tunnel_ipip", 1)]);
    assert_inner(LINKTYPE_RAW, &ipv4(41, &inner6()), 6, &[("tunnel_ipip", 1)]);
    assert_inner(LINKTYPE_RAW, &ipv6(4, &inner4()), 4, &[("tunnel_ipip", 1)]);
    assert_inner(LINKTYPE_RAW, &ipv6(41, &inner6()), 6, &[("tunnel_ipip", 1)]);
    // after an IPv6 destination options header
    let mut ext = vec![41, 0, 0, 0, 0, 0, 0, 0];
    ext.extend_from_slice(&inner6());
    assert_inner(LINKTYPE_RAW, &ipv6(60, &ext), 6, &[("tunnel_ipip", 1)]);
    // the inner header's version must be the one the protocol number says
    assert_eq!(run(LINKTYPE_RAW, &ipv4(4, &inner6())).0.unwrap_err(), Drop::BadIpVersion);
}

#[test]
fn teredo_with_and_without_indicators() {
    assert_inner(LINKTYPE_RAW, &ipv4(17, &udp(UDP_TEREDO, 40001, &inner6())), 6, &[("tunnel_teredo", 1)]);
    let mut origin = vec![0, 0, 0xf2, 0x27, 1, 2, 3, 4];
    origin.extend_from_slice(&inner6());
    assert_inner(LINKTYPE_RAW, &ipv4(17, &udp(40001, UDP_TEREDO, &origin)), 6, &[("tunnel_teredo", 1)]);
    // authentication: client id of 2 bytes, authentication value of 3, nonce, confirmation
    let mut auth = vec![0, 1, 2, 3, 9, 9, 8, 8, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0];
    auth.extend_from_slice(&origin);
    assert_inner(LINKTYPE_RAW, &ipv4(17, &udp(40001, UDP_TEREDO, &auth)), 6, &[("tunnel_teredo", 1)]);
    assert_eq!(run(LINKTYPE_RAW, &ipv4(17, &udp(40001, UDP_TEREDO, &inner4()))).0.unwrap_err(), Drop::BadTunnel);
}

#[test]
fn gtpu_g_pdus_and_other_messages() {
    assert_inner(LINKTYPE_RAW, &ipv4(17, &gtpu(0x30, 255, &[], &inner4())), 4, &[("tunnel_gtpu", 1)]);
    // sequence number flag, then a PDU session container extension (1 word) and the end
    assert_inner(LINKTYPE_RAW, &ipv4(17, &gtpu(0x36, 255, &[0, 1, 0, 0x85, 1, 0x10, 1, 0], &inner6())), 6,
                 &[("tunnel_gtpu", 1)]);
    // an echo request is a plain UDP packet
    let (result, counters) = run(LINKTYPE_RAW, &ipv4(17, &gtpu(0x32, 1, &[0, 1, 0, 0], &[])));
    assert_eq!((result.unwrap().0.dst_port, counters), (UDP_GTPU, vec![]));
    // an extension header of length 0, and GTP version 2
    assert_eq!(run(LINKTYPE_RAW, &ipv4(17, &gtpu(0x34, 255, &[0, 0, 0, 0x85, 0, 0, 0, 0], &inner4()))).0.unwrap_err(),
               Drop::BadTunnel);
    assert_eq!(run(LINKTYPE_RAW, &ipv4(17, &gtpu(0x50, 255, &[], &inner4()))).0.unwrap_err(), Drop::BadTunnel);
}

#[test]
fn pppoe_and_mpls() {
    assert_inner(LINKTYPE_ETHERNET, &ethernet(0x8864, &pppoe(0x0021, &inner4())), 4, &[("tunnel_pppoe", 1)]);
    assert_inner(LINKTYPE_ETHERNET, &ethernet(0x8864, &pppoe(0x0057, &inner6())), 6, &[("tunnel_pppoe", 1)]);
    // LCP is not IP; PPPoE discovery (0x8863) is not a session
    assert_eq!(run(LINKTYPE_ETHERNET, &ethernet(0x8864, &pppoe(0xc021, &[1, 1, 0, 4]))).0.unwrap_err(), Drop::NonIp);
    assert_eq!(run(LINKTYPE_ETHERNET, &ethernet(0x8863, &[0x11, 9, 0, 0, 0, 0])).0.unwrap_err(), Drop::NonIp);
    // MPLS: a stack of 3 to IPv4, one to IPv6, explicit nulls, a pseudo-wire with a control word
    assert_inner(LINKTYPE_ETHERNET, &ethernet(0x8847, &mpls(&[100, 200, 300], &inner4())), 4, &[("tunnel_mpls", 1)]);
    assert_inner(LINKTYPE_ETHERNET, &ethernet(0x8848, &mpls(&[16], &inner6())), 6, &[("tunnel_mpls", 1)]);
    assert_inner(LINKTYPE_ETHERNET, &ethernet(0x8847, &mpls(&[0], &inner4())), 4, &[("tunnel_mpls", 1)]);
    let mut pw = vec![0, 0, 0, 1];
    pw.extend_from_slice(&eth_inner4());
    assert_inner(LINKTYPE_ETHERNET, &ethernet(0x8847, &mpls(&[17, 18], &pw)), 4, &[("tunnel_mpls", 1)]);
    // and without one, the destination MAC's first nibble 0 or not
    let mut nocw = eth_inner4();
    assert_inner(LINKTYPE_ETHERNET, &ethernet(0x8847, &mpls(&[17], &nocw)), 4, &[("tunnel_mpls", 1)]);
    nocw[0] = 0x00;
    assert_inner(LINKTYPE_ETHERNET, &ethernet(0x8847, &mpls(&[17], &nocw)), 4, &[("tunnel_mpls", 1)]);
    // a stack without its bottom
    let mut open = mpls(&[1, 2], &[]);
    open[6] = 0;
    assert_eq!(run(LINKTYPE_ETHERNET, &ethernet(0x8847, &open)).0.unwrap_err(), Drop::BadTunnel);
}

#[test]
fn link_types_that_carry_ip() {
    let snap4 = {
        let mut v = vec![0xAA, 0xAA, 0x03, 0, 0, 0, 0x08, 0x00];
        v.extend_from_slice(&inner4());
        v
    };
    // FDDI: frame control (LLC), two addresses, LLC/SNAP; an SMT frame is not IP
    let mut fddi = vec![0x50];
    fddi.extend_from_slice(&[1; 12]);
    fddi.extend_from_slice(&snap4);
    assert_inner(LINKTYPE_FDDI, &fddi, 4, &[]);
    fddi[0] = 0x41;
    assert_eq!(run(LINKTYPE_FDDI, &fddi).0.unwrap_err(), Drop::NonIp);
    // PPP with and without address/control, a compressed protocol field; PPP-in-HDLC; Cisco
    for head in [vec![0xff, 0x03, 0x00, 0x21], vec![0x00, 0x21], vec![0x21]] {
        let mut f = head.clone();
        f.extend_from_slice(&inner4());
        assert_inner(LINKTYPE_PPP, &f, 4, &[]);
        assert_inner(LINKTYPE_PPP_HDLC, &f, 4, &[]);
    }
    for linktype in [LINKTYPE_C_HDLC, LINKTYPE_PPP_HDLC] {
        let mut f = vec![0x0f, 0x00, 0x86, 0xdd];
        f.extend_from_slice(&inner6());
        assert_inner(linktype, &f, 6, &[]);
    }
    assert_inner(LINKTYPE_PPP_ETHER, &pppoe(0x0021, &inner4()), 4, &[]);
    // 802.11: a data frame from the DS, a QoS data frame (WDS: 4 addresses), padded after
    // radiotap; a beacon, a null function and a protected frame are not IP
    let mut data = vec![0x08, 0x02, 0, 0];
    data.extend_from_slice(&[2; 20]);
    data.extend_from_slice(&snap4);
    assert_inner(LINKTYPE_IEEE802_11, &data, 4, &[]);
    let mut qos = vec![0x88, 0x03, 0, 0];
    qos.extend_from_slice(&[2; 26]);
    qos.extend_from_slice(&[0, 0]); // QoS control
    let mut radiotap = vec![0, 0, 16, 0, 0x03, 0, 0, 0]; // TSFT and flags present
    radiotap.extend_from_slice(&[0; 8]); // TSFT (at 8, aligned)
    radiotap[2] = 17;
    radiotap.push(0x20); // flags: data padding
    let mut f = radiotap.clone();
    f.extend_from_slice(&qos); // 32 bytes: already a multiple of 4
    f.extend_from_slice(&snap4);
    assert_inner(LINKTYPE_IEEE802_11_RADIOTAP, &f, 4, &[]);
    // a QoS data frame of 26 bytes (3 addresses) is padded to 28 when the flag says so
    let mut qos3 = vec![0x88, 0x01, 0, 0];
    qos3.extend_from_slice(&[2; 20]);
    qos3.extend_from_slice(&[0, 0, 0xee, 0xee]);
    qos3.extend_from_slice(&snap4);
    let mut f = radiotap.clone();
    f.extend_from_slice(&qos3);
    assert_inner(LINKTYPE_IEEE802_11_RADIOTAP, &f, 4, &[]);
    let mut prism = vec![0x44, 0, 0, 0, 144, 0, 0, 0];
    prism.resize(144, 0);
    prism.extend_from_slice(&data);
    assert_inner(LINKTYPE_IEEE802_11_PRISM, &prism, 4, &[]);
    let mut avs = vec![0x80, 0x21, 0x10, 0x01, 0, 0, 0, 64];
    avs.resize(64, 0);
    avs.extend_from_slice(&data);
    assert_inner(LINKTYPE_IEEE802_11_AVS, &avs, 4, &[]);
    for (fc0, fc1) in [(0x80, 0x00), (0x48, 0x01), (0x08, 0x42)] {
        let mut other = data.clone();
        other[0] = fc0;
        other[1] = fc1;
        assert_eq!(run(LINKTYPE_IEEE802_11, &other).0.unwrap_err(), Drop::NonIp);
    }
}

/// `net` (IPv4 or IPv6) in one more tunnel, of a kind chosen by `kind`.
fn wrap(kind: usize, net: &[u8]) -> Vec<u8> {
    let (etype, proto) = if net[0] >> 4 == 4 { (0x0800, 4) } else { (0x86dd, 41) };
    let eth = ethernet(etype, net);
    match kind % 6 {
        0 => ipv4(17, &vxlan(UDP_VXLAN, &eth)),
        1 => ipv4(47, &gre(0x2000, etype, &[0, 0, 0, 1], net)),
        2 => ipv6(proto, net),
        3 => ipv4(17, &geneve(0x6558, &[], &eth)),
        4 => ipv4(17, &gtpu(0x30, 255, &[], net)),
        _ => ipv6(47, &gre(0, 0x6558, &[], &eth)),
    }
}

#[test]
fn nested_tunnels_and_the_depth_limit() {
    // VXLAN in GRE in IPv6-in-IPv4... up to the limit: the innermost packet
    let mut net = inner4();
    for kind in 0..MAX_DEPTH as usize {
        net = wrap(kind, &net);
    }
    let f = ethernet(0x8847, &mpls(&[5], &net)); // one more layer than the IP ones
    let (result, _) = run(LINKTYPE_ETHERNET, &f);
    assert_eq!(result.unwrap_err(), Drop::TunnelTooDeep);
    let f = ethernet(if net[0] >> 4 == 4 { 0x0800 } else { 0x86dd }, &net);
    let (result, counters) = run(LINKTYPE_ETHERNET, &f);
    assert_eq!((result.unwrap().0.src_ip[3]), 33);
    let total: u64 = counters.iter().map(|(_, n)| n).sum();
    assert_eq!(total, MAX_DEPTH as u64);
    // one more is too deep
    let deeper = ethernet(0x0800, &wrap(0, &net));
    assert_eq!(run(LINKTYPE_ETHERNET, &deeper).0.unwrap_err(), Drop::TunnelTooDeep);
    // MPLS in PPPoE in VXLAN: link-layer encapsulations inside IP ones
    let inner_eth = ethernet(0x8864, &pppoe(0x0281, &mpls(&[9], &inner4())));
    let f = ethernet(0x0800, &ipv4(17, &vxlan(UDP_VXLAN, &inner_eth)));
    assert_inner(LINKTYPE_ETHERNET, &f, 4, &[("tunnel_vxlan", 1), ("tunnel_pppoe", 1), ("tunnel_mpls", 1)]);
}

#[test]
fn an_inner_fragment_is_reassembled() {
    // the inner IPv4 datagram in two fragments, each in its own VXLAN frame
    let whole = inner4();
    let l4 = &whole[20..];
    let frag = |from: usize, to: usize, more: bool| {
        let mut v = ipv4_from(33, 44, 6, &l4[from..to]);
        v[4..6].copy_from_slice(&[0x12, 0x34]);
        let field = (from / 8) as u16 | if more { 0x2000 } else { 0 };
        v[6..8].copy_from_slice(&field.to_be_bytes());
        ethernet(0x0800, &ipv4(17, &vxlan(UDP_VXLAN, &ethernet(0x0800, &v))))
    };
    let mut d = Decoder::new(65535);
    let first = frag(0, 16, true);
    let last = frag(16, l4.len(), false);
    let f1 = Frame { number: 1, ts_us: 0, linktype: LINKTYPE_ETHERNET, data: &first, orig_len: 0 };
    let f2 = Frame { number: 2, ts_us: 1, linktype: LINKTYPE_ETHERNET, data: &last, orig_len: 0 };
    assert!(d.decode(&f1).is_none());
    let (p, payload) = d.decode(&f2).unwrap();
    assert_eq!((p.src_ip[3], p.dst_port, p.frame, payload.as_ref()), (33, 80, 2, &b"hello"[..]));
    assert!(d.counters().contains(&("tunnel_vxlan", 2)));
    assert!(d.counters().contains(&("ip_datagrams_reassembled", 1)));
}

#[test]
fn a_fragmented_outer_packet_is_decapsulated_after_reassembly() {
    let outer = ipv4(17, &vxlan(UDP_VXLAN, &eth_inner4()));
    let l4 = &outer[20..];
    let frag = |from: usize, to: usize, more: bool| {
        let mut v = ipv4(17, &l4[from..to]);
        v[4..6].copy_from_slice(&[0x43, 0x21]);
        v[6..8].copy_from_slice(&((from / 8) as u16 | if more { 0x2000 } else { 0 }).to_be_bytes());
        v
    };
    let (a, b) = (frag(0, 32, true), frag(32, l4.len(), false));
    let mut d = Decoder::new(65535);
    assert!(d.decode(&Frame { number: 1, ts_us: 0, linktype: LINKTYPE_RAW, data: &a, orig_len: 0 }).is_none());
    let (p, payload) = d.decode(&Frame { number: 2, ts_us: 0, linktype: LINKTYPE_RAW, data: &b, orig_len: 0 }).unwrap();
    assert_eq!((p.src_ip[3], payload.as_ref()), (33, &b"hello"[..]));
    assert!(d.counters().contains(&("tunnel_vxlan", 1)));
}

#[test]
fn a_fragment_in_a_tunnel_in_a_reassembled_datagram_is_a_named_drop() {
    // the inner packet is a fragment; the outer VXLAN datagram is fragmented too
    let mut inner = inner4();
    inner[6] = 0x20; // MF
    let outer = ipv4(17, &vxlan(UDP_VXLAN, &ethernet(0x0800, &inner)));
    let l4 = &outer[20..];
    let frag = |from: usize, to: usize, more: bool| {
        let mut v = ipv4(17, &l4[from..to]);
        v[4..6].copy_from_slice(&[0x55, 0x66]);
        v[6..8].copy_from_slice(&((from / 8) as u16 | if more { 0x2000 } else { 0 }).to_be_bytes());
        v
    };
    let (a, b) = (frag(0, 32, true), frag(32, l4.len(), false));
    let mut d = Decoder::new(65535);
    for (i, f) in [a, b].iter().enumerate() {
        assert!(d.decode(&Frame { number: i as u64 + 1, ts_us: 0, linktype: LINKTYPE_RAW, data: f, orig_len: 0 }).is_none());
    }
    assert_eq!(d.dropped(), vec![("ip_fragment", 1), ("tunnel_fragment", 1)]);
    assert!(d.counters().contains(&("ip_datagrams_reassembled", 1)));
}

/// Every encapsulation, each cut at every byte: a packet (a snapped payload) or a named
/// drop, never a panic; and cut inside a tunnel header, `bad_tunnel` or a truncation.
#[test]
fn every_truncation_of_every_encapsulation() {
    let mut erspan3 = vec![0x20, 0x64, 0x00, 0x05, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
    erspan3.extend_from_slice(&eth_inner4());
    let cases: Vec<(i64, Vec<u8>)> = vec![
        (LINKTYPE_ETHERNET, ethernet(0x0800, &ipv4(17, &vxlan(UDP_VXLAN, &eth_inner4())))),
        (LINKTYPE_RAW, ipv4(17, &geneve(0x6558, &[1, 2, 0x80, 1, 1, 2, 3, 4], &eth_inner4()))),
        (LINKTYPE_RAW, ipv4(47, &gre(0xB000, 0x86dd, &[0; 12], &inner6()))),
        (LINKTYPE_RAW, ipv4(47, &gre(0x4000, 0x0800, &[0, 0, 0, 0, 8, 0, 0, 4, 1, 2, 3, 4, 0, 0, 0, 0], &inner4()))),
        (LINKTYPE_RAW, ipv6(47, &gre(0x1000, ETH_ERSPAN_3, &[0, 0, 0, 1], &erspan3))),
        (LINKTYPE_RAW, ipv6(41, &inner6())),
        (LINKTYPE_RAW, ipv4(17, &udp(1, UDP_TEREDO, &[0, 1, 1, 1, 9, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 1, 2, 3, 4, 5, 6]
            .iter().copied().chain(inner6()).collect::<Vec<u8>>()))),
        (LINKTYPE_RAW, ipv4(17, &gtpu(0x34, 255, &[0, 0, 0, 0x85, 1, 0x10, 1, 0], &inner4()))),
        (LINKTYPE_ETHERNET, ethernet(0x8864, &pppoe(0x0281, &mpls(&[100, 200], &inner4())))),
        (LINKTYPE_ETHERNET, ethernet(0x8847, &mpls(&[3], &[0, 0, 0, 0].iter().copied().chain(eth_inner4()).collect::<Vec<u8>>()))),
        (LINKTYPE_IEEE802_11_RADIOTAP, {
            let mut f = vec![0, 0, 9, 0, 0x02, 0, 0, 0, 0x20, 0x88, 0x01, 0, 0];
            f.extend_from_slice(&[2; 20]);
            f.extend_from_slice(&[0, 0, 0, 0, 0xAA, 0xAA, 0x03, 0, 0, 0, 0x08, 0x00]);
            f.extend_from_slice(&inner4());
            f
        }),
    ];
    let named: Vec<&str> = Drop::ALL.iter().map(|d| d.name()).collect();
    for (linktype, frame) in &cases {
        let (whole, _) = run(*linktype, frame);
        assert_eq!(whole.unwrap_or_else(|e| panic!("{e:?} {linktype} {frame:02x?}")).1, b"hello");
        for cut in 0..frame.len() {
            let mut d = Decoder::new(65535);
            let f = Frame { number: 1, ts_us: 0, linktype: *linktype, data: &frame[..cut], orig_len: 0 };
            match d.decode(&f) {
                // only the payload may be cut: the packet is the inner one
                Some((p, payload)) => assert!(p.dst_port == 80 && payload.len() < 5, "{cut} {frame:02x?}"),
                None => {
                    let dropped = d.dropped();
                    assert_eq!(dropped.len(), 1);
                    assert!(named.contains(&dropped[0].0));
                }
            }
        }
    }
}

/// xorshift: deterministic garbage without a dependency
fn rng(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn hostile_nested_tunnels_never_panic() {
    // nested encapsulations with random bytes changed and random cuts
    let mut s = 0x1234_5678_9abc_def1u64;
    let mut d = Decoder::new(65535);
    for i in 0..100_000u64 {
        let mut net = inner4();
        for _ in 0..rng(&mut s) % 12 {
            net = wrap(rng(&mut s) as usize, &net);
        }
        let mut f = ethernet(if net[0] >> 4 == 4 { 0x0800 } else { 0x86dd }, &net);
        for _ in 0..1 + rng(&mut s) % 4 {
            let at = (rng(&mut s) as usize) % f.len();
            f[at] = rng(&mut s) as u8;
        }
        f.truncate((rng(&mut s) as usize) % (f.len() + 1));
        let frame = Frame { number: i, ts_us: i as i64, linktype: LINKTYPE_ETHERNET, data: &f, orig_len: 0 };
        if let Some((p, payload)) = d.decode(&frame) {
            assert!(payload.len() <= p.payload_len as usize);
        }
    }
}

/// The tunnel path of a frame's packet: (kind, id, outer IP version, last bytes of the
/// outer source and destination) per layer, outermost first.
fn path_of(linktype: i64, data: &[u8]) -> Vec<(&'static str, Option<u32>, u8, u8, u8)> {
    let mut d = Decoder::new(65535);
    let f = Frame { number: 1, ts_us: 5, linktype, data, orig_len: data.len() as u32 };
    assert!(d.decode(&f).is_some(), "{:?}", d.dropped());
    let last = |a: &[u8; 16], v: u8| if v == 4 { a[3] } else { a[15] };
    d.path().iter().map(|l| (l.kind.kind_name(), l.id, l.ip_version, last(&l.src, l.ip_version), last(&l.dst, l.ip_version)))
        .collect()
}

#[test]
fn every_layer_says_its_identifier_and_outer_addresses() {
    let vx = ethernet(0x0800, &ipv4(17, &vxlan(UDP_VXLAN, &eth_inner4())));
    assert_eq!(path_of(LINKTYPE_ETHERNET, &vx), [("vxlan", Some(0x2a), 4, 1, 2)]);
    let gen = ipv6(17, &geneve(0x6558, &[0; 8], &eth_inner4()));
    assert_eq!(path_of(LINKTYPE_RAW, &gen), [("geneve", Some(0x2a), 6, 1, 2)]);
    // GRE: a key behind a checksum; none without the K bit; PPTP's call id
    let keyed = ipv4(47, &gre(0xA000, 0x0800, &[0, 0, 0, 0, 0, 0, 1, 2], &inner4()));
    assert_eq!(path_of(LINKTYPE_RAW, &keyed), [("gre", Some(0x102), 4, 1, 2)]);
    assert_eq!(path_of(LINKTYPE_RAW, &ipv4(47, &gre(0, 0x0800, &[], &inner4()))), [("gre", None, 4, 1, 2)]);
    let mut ppp = vec![0xff, 0x03, 0x00, 0x21];
    ppp.extend_from_slice(&inner4());
    let pptp = ipv4(47, &gre(0x3001, 0x880B, &[0, 30, 0, 9, 0, 0, 0, 5], &ppp));
    assert_eq!(path_of(LINKTYPE_RAW, &pptp), [("gre", Some(9), 4, 1, 2)]);
    // ERSPAN II and III: the session id (0x005 here: the low 10 bits)
    let mut h2 = vec![0, 0, 0, 1, 0x10, 0x64, 0x00, 0x05, 0, 0, 0, 0];
    h2.extend_from_slice(&eth_inner4());
    assert_eq!(path_of(LINKTYPE_RAW, &ipv4(47, &gre(0x1000, ETH_ERSPAN_2, &[], &h2)))[0].1, Some(5));
    let mut h3 = vec![0x20, 0x64, 0x04, 0x07, 0, 0, 0, 1, 0, 0, 0, 0];
    h3.extend_from_slice(&eth_inner4());
    assert_eq!(path_of(LINKTYPE_RAW, &ipv4(47, &gre(0x1000, ETH_ERSPAN_3, &[0, 0, 0, 1], &h3)))[0].1, Some(7));
    assert_eq!(path_of(LINKTYPE_RAW, &ipv6(4, &inner4())), [("ipip", None, 6, 1, 2)]);
    assert_eq!(path_of(LINKTYPE_RAW, &ipv4(17, &gtpu(0x30, 255, &[], &inner4()))), [("gtpu", Some(9), 4, 1, 2)]);
    // below IP: PPPoE's session id (7) and MPLS's top label, no addresses
    let pppoe_f = ethernet(0x8864, &pppoe(0x0021, &inner4()));
    assert_eq!(path_of(LINKTYPE_ETHERNET, &pppoe_f), [("pppoe", Some(7), 0, 0, 0)]);
    let mpls_f = ethernet(0x8847, &mpls(&[100, 200], &inner4()));
    assert_eq!(path_of(LINKTYPE_ETHERNET, &mpls_f), [("mpls", Some(100), 0, 0, 0)]);
    // nested, outermost first: MPLS in PPPoE in VXLAN
    let inner_eth = ethernet(0x8864, &pppoe(0x0281, &mpls(&[9], &inner4())));
    let f = ethernet(0x0800, &ipv4(17, &vxlan(UDP_VXLAN, &inner_eth)));
    let kinds: Vec<_> = path_of(LINKTYPE_ETHERNET, &f).iter().map(|l| l.0).collect();
    assert_eq!(kinds, ["vxlan", "pppoe", "mpls"]);
    // a plain packet has none, even right after a tunneled one
    let mut d = Decoder::new(65535);
    d.decode(&Frame { number: 1, ts_us: 0, linktype: LINKTYPE_ETHERNET, data: &vx, orig_len: 0 }).unwrap();
    let plain = eth_inner4();
    d.decode(&Frame { number: 2, ts_us: 0, linktype: LINKTYPE_ETHERNET, data: &plain, orig_len: 0 }).unwrap();
    assert!(d.path().is_empty());
}
