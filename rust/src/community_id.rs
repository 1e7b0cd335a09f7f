//! Community ID v1 of a flow (Corelight's community-id-spec): the one string Zeek,
//! Suricata, Wireshark, Elastic (ECS `network.community_id`) and the rest compute for the
//! same 5-tuple, so that a SIEM joins their records and ours on it.
//!
//! Takes the flow's addresses (4 or 16 bytes, network order), IP protocol number and
//! ports (for ICMP/ICMPv6: type and code), and a seed; gives `"1:" + base64(SHA-1(seed .
//! saddr . daddr . proto . 0 . sport . dport))` with the endpoints ordered so that the
//! smaller (address, port) comes first (the id has no direction). ICMP and ICMPv6 map
//! type/code to ports as Zeek does: a request/reply type pair becomes (type, counterpart
//! type), so both directions of an echo get the same id; any other type is (type, code)
//! and one-way (not reordered). Protocols without ports hash no ports.
//!
//! SHA-1 is the `sha1` crate (RustCrypto, the family of the `blake2` we already use);
//! base64 is written here: 20 bytes, standard alphabet with padding, a dozen lines where a
//! crate would be a dependency for one call. Called once per connection record, L7
//! session and DNS transaction, never per packet: 0.11 µs per id, 0.16 µs from text addresses
//! (the `cost` test below, release build, 2 shared cores).

use sha1::{Digest, Sha1};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// Zeek's ICMPv4 request/reply pairs (echo, router, timestamp, information, mask).
fn icmp4_counterpart(t: u8) -> Option<u8> {
    Some(match t {
        8 => 0,
        0 => 8,
        13 => 14,
        14 => 13,
        15 => 16,
        16 => 15,
        10 => 9,
        9 => 10,
        17 => 18,
        18 => 17,
        _ => return None,
    })
}

/// Zeek's ICMPv6 pairs (echo, MLD, router and neighbour discovery, who-are-you, HAAD).
fn icmp6_counterpart(t: u8) -> Option<u8> {
    Some(match t {
        128 => 129,
        129 => 128,
        130 => 131,
        131 => 130,
        133 => 134,
        134 => 133,
        135 => 136,
        136 => 135,
        139 => 140,
        140 => 139,
        144 => 145,
        145 => 144,
        _ => return None,
    })
}

/// The ports an ICMP/ICMPv6 message stands for, and whether it is one-way.
pub fn icmp_ports(proto: u8, icmp_type: u8, code: u8) -> (u16, u16, bool) {
    let other = if proto == PROTO_ICMP6 { icmp6_counterpart(icmp_type) } else { icmp4_counterpart(icmp_type) };
    match other {
        Some(o) => (u16::from(icmp_type), u16::from(o), false),
        None => (u16::from(icmp_type), u16::from(code), true),
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(data: &[u8], out: &mut String) {
    for chunk in data.chunks(3) {
        let b = [chunk.first().copied().unwrap_or(0), chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
}

/// The Community ID of a flow. `saddr`/`daddr`: 4 or 16 bytes each (the same length);
/// `ports`: (source, destination) for TCP, UDP and SCTP, None for a protocol without
/// ports; `one_way`: keep the given order (ICMP types without a counterpart).
pub fn community_id(seed: u16, saddr: &[u8], daddr: &[u8], proto: u8, ports: Option<(u16, u16)>, one_way: bool) -> String {
    let (sp, dp) = ports.unwrap_or((0, 0));
    // (address, port) compared as Python compares the packed bytes: address first
    let flip = !one_way && (saddr > daddr || (saddr == daddr && ports.is_some() && sp > dp));
    let (a, b, pa, pb) = if flip { (daddr, saddr, dp, sp) } else { (saddr, daddr, sp, dp) };
    let mut h = Sha1::new();
    h.update(seed.to_be_bytes());
    h.update(a);
    h.update(b);
    h.update([proto, 0]);
    if ports.is_some() {
        h.update(pa.to_be_bytes());
        h.update(pb.to_be_bytes());
    }
    let digest = h.finalize();
    let mut s = String::with_capacity(30);
    s.push_str("1:");
    base64(&digest, &mut s);
    s
}

/// The Community ID of a transport flow between `(ip0, port0)` and `(ip1, port1)` as the
/// core holds addresses (16 bytes, an IPv4 address in the first 4 with `version` 4).
pub fn of_flow(seed: u16, version: u8, ip0: &[u8; 16], port0: u16, ip1: &[u8; 16], port1: u16, proto: u8) -> String {
    let n = if version == 4 { 4 } else { 16 };
    community_id(seed, &ip0[..n], &ip1[..n], proto, Some((port0, port1)), false)
}

/// The same from addresses as text (`inet_ntop`'s, as the DNS records hold them); None if
/// either is not an address or they are of different families.
pub fn of_text(seed: u16, ip0: &str, port0: u16, ip1: &str, port1: u16, proto: u8) -> Option<String> {
    use std::net::IpAddr;
    let ports = Some((port0, port1));
    Some(match (ip0.parse::<IpAddr>().ok()?, ip1.parse::<IpAddr>().ok()?) {
        (IpAddr::V4(a), IpAddr::V4(b)) => community_id(seed, &a.octets(), &b.octets(), proto, ports, false),
        (IpAddr::V6(a), IpAddr::V6(b)) => community_id(seed, &a.octets(), &b.octets(), proto, ports, false),
        _ => return None,
    })
}

/// The Community ID of an ICMP (`proto` 1) or ICMPv6 (58) message.
pub fn of_icmp(seed: u16, saddr: &[u8], daddr: &[u8], proto: u8, icmp_type: u8, code: u8) -> String {
    let (sp, dp, one_way) = icmp_ports(proto, icmp_type, code);
    community_id(seed, saddr, daddr, proto, Some((sp, dp)), one_way)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(s: &str) -> Vec<u8> {
        match s.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    fn flow(seed: u16, proto: u8, s: &str, d: &str, sp: u16, dp: u16) -> String {
        community_id(seed, &ip(s), &ip(d), proto, Some((sp, dp)), false)
    }

    fn icmp(seed: u16, proto: u8, s: &str, d: &str, t: u8, c: u8) -> String {
        of_icmp(seed, &ip(s), &ip(d), proto, t, c)
    }

    #[test]
    fn base64_padding() {
        for (data, want) in [(&b""[..], ""), (b"f", "Zg=="), (b"fo", "Zm8="), (b"foo", "Zm9v"), (b"foobar", "Zm9vYmFy")] {
            let mut s = String::new();
            base64(data, &mut s);
            assert_eq!(s, want);
        }
    }

    // The spec's baseline (baseline/baseline_deflt.json, baseline_seed1.json): every
    // vector in both directions.
    #[test]
    fn spec_tcp_udp_sctp_both_directions() {
        let cases: [(u8, &str, &str, u16, u16, &str, &str); 4] = [
            (PROTO_TCP, "128.232.110.120", "66.35.250.204", 34855, 80,
             "1:LQU9qZlK+B5F3KDmev6m5PMibrg=", "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
            (PROTO_UDP, "192.168.1.52", "8.8.8.8", 54585, 53,
             "1:d/FP5EW3wiY1vCndhwleRRKHowQ=", "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
            (PROTO_SCTP, "192.168.170.8", "192.168.170.56", 7, 7,
             "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=", "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg="),
            (PROTO_TCP, "2001:470:e5bf:dead:4957:2174:e82c:4887", "2607:f8b0:400c:c03::1a", 63943, 25,
             "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=", "1:eJYTW6AOzFLlSUoESovMjnu7rMw="),
        ];
        for (proto, s, d, sp, dp, seed0, seed1) in cases {
            assert_eq!(flow(0, proto, s, d, sp, dp), seed0);
            assert_eq!(flow(0, proto, d, s, dp, sp), seed0);
            assert_eq!(flow(1, proto, s, d, sp, dp), seed1);
            assert_eq!(flow(1, proto, d, s, dp, sp), seed1);
        }
    }

    #[test]
    fn spec_port_less_protocol() {
        for (s, d) in [("10.1.12.1", "10.1.12.2"), ("10.1.12.2", "10.1.12.1")] {
            assert_eq!(community_id(0, &ip(s), &ip(d), 46, None, false), "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw=");
            assert_eq!(community_id(1, &ip(s), &ip(d), 46, None, false), "1:rYir8gphR31noO9iDRQmF/BteEI=");
        }
    }

    #[test]
    fn spec_icmp_echo_request_and_reply_one_id() {
        // echo request 192.168.0.89 -> .1, and its reply
        assert_eq!(icmp(0, PROTO_ICMP, "192.168.0.89", "192.168.0.1", 8, 0), "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=");
        assert_eq!(icmp(0, PROTO_ICMP, "192.168.0.1", "192.168.0.89", 0, 0), "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=");
        assert_eq!(icmp(1, PROTO_ICMP, "192.168.0.89", "192.168.0.1", 8, 0), "1:03g6IloqVBdcZlPyX8r0hgoE7kA=");
        assert_eq!(icmp(1, PROTO_ICMP, "192.168.0.1", "192.168.0.89", 0, 0), "1:03g6IloqVBdcZlPyX8r0hgoE7kA=");
        // time exceeded: one-way, (type, code)
        assert_eq!(icmp(0, PROTO_ICMP, "10.0.0.1", "10.0.0.2", 11, 0), "1:YHxtAirCG//0OzkcVAukqKQN9xM=");
        assert_eq!(icmp(1, PROTO_ICMP, "10.0.0.1", "10.0.0.2", 11, 0), "1:XjUibYHaafLQ3pxQeiMI8g25q20=");
    }

    #[test]
    fn icmp_one_way_is_not_reordered() {
        // port unreachable from the larger address: the communityid package's values
        assert_eq!(icmp(0, PROTO_ICMP, "10.0.0.2", "10.0.0.1", 3, 3), "1:LhjXG72oBqb/FpYqPl9LboG4/B4=");
        assert_eq!(icmp(0, PROTO_ICMP, "10.0.0.1", "10.0.0.2", 3, 3), "1:sn6MAmXQ6UD1gYE1XbV3XTNewrk=");
    }

    #[test]
    fn spec_icmp6() {
        let (a, b) = ("fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea");
        // neighbour solicitation and its advertisement: one id
        assert_eq!(icmp(0, PROTO_ICMP6, a, b, 135, 0), "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=");
        assert_eq!(icmp(0, PROTO_ICMP6, b, a, 136, 0), "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=");
        assert_eq!(icmp(0, PROTO_ICMP6, b, a, 135, 0), "1:zavyT/cezQr1fmImYCwYnMXbgck=");
        assert_eq!(icmp(0, PROTO_ICMP6, a, b, 136, 0), "1:zavyT/cezQr1fmImYCwYnMXbgck=");
        assert_eq!(icmp(1, PROTO_ICMP6, a, b, 135, 0), "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY=");
        // echo request and reply
        let (c, d) = ("3ffe:507:0:1:200:86ff:fe05:80da", "3ffe:501:0:1001::2");
        assert_eq!(icmp(0, PROTO_ICMP6, c, d, 128, 0), "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=");
        assert_eq!(icmp(0, PROTO_ICMP6, d, c, 129, 0), "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=");
        assert_eq!(icmp(1, PROTO_ICMP6, d, c, 129, 0), "1:GfZxjAkDk2MkegpBYHV6tadtFXQ=");
        // router solicitation / advertisement to multicast groups
        assert_eq!(icmp(0, PROTO_ICMP6, "fe80::200:86ff:fe05:80da", "ff02::2", 133, 0), "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0=");
        assert_eq!(icmp(0, PROTO_ICMP6, "fe80::260:97ff:fe07:69ea", "ff02::1", 134, 0), "1:pkvHqCL88/tg1k4cPigmZXUtL00=");
        // one-way: time exceeded, destination unreachable (type, code)
        assert_eq!(icmp(0, PROTO_ICMP6, "3ffe:501:1800:2345::2", "3ffe:507:0:1:200:86ff:fe05:80da", 3, 0),
                   "1:2ObVBgIn28oZvibYZhZMBgh7WdQ=");
        assert_eq!(icmp(0, PROTO_ICMP6, "3ffe:501:410:0:2c0:dfff:fe47:33e", "3ffe:507:0:1:200:86ff:fe05:80da", 1, 4),
                   "1:hLZd0XGWojozrvxqE0dWB1iM6R0=");
        assert_eq!(icmp(1, PROTO_ICMP6, "3ffe:501:410:0:2c0:dfff:fe47:33e", "3ffe:507:0:1:200:86ff:fe05:80da", 1, 4),
                   "1:W8MHwXpWzpoSTD+cGcaJr4u0ys8=");
    }

    #[test]
    fn equal_addresses_ordered_by_port_and_core_addresses() {
        let want = "1:WaobEo3Uyp/JjlL9QX3lvrl1Oag=";
        assert_eq!(flow(0, PROTO_TCP, "10.0.0.1", "10.0.0.1", 80, 1234), want);
        assert_eq!(flow(0, PROTO_TCP, "10.0.0.1", "10.0.0.1", 1234, 80), want);
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(of_flow(0, 4, &a, 80, &a, 1234, PROTO_TCP), want);
        let (x, y): ([u8; 16], [u8; 16]) = (ip("::1").try_into().unwrap(), ip("::2").try_into().unwrap());
        assert_eq!(of_flow(65535, 6, &y, 53, &x, 53, PROTO_UDP), "1:n5plnVYlZRuq+LEsB+wksq5bsHs=");
        assert_eq!(of_text(65535, "::2", 53, "::1", 53, PROTO_UDP).as_deref(), Some("1:n5plnVYlZRuq+LEsB+wksq5bsHs="));
        assert_eq!(of_text(0, "10.0.0.1", 80, "10.0.0.1", 1234, PROTO_TCP).as_deref(), Some(want));
        assert_eq!(of_text(0, "10.0.0.1", 80, "::1", 1234, PROTO_TCP), None);
        assert_eq!(of_text(0, "not an address", 80, "10.0.0.1", 1234, PROTO_TCP), None);
    }

    /// The cost per id (run: `cargo test --release --lib community_id -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn cost() {
        let (a, b) = (ip("10.0.0.1"), ip("192.168.17.250"));
        let (x, y): ([u8; 16], [u8; 16]) = (ip("2001:db8::1").try_into().unwrap(), ip("2001:db8::2").try_into().unwrap());
        let n = 1_000_000u32;
        let t = std::time::Instant::now();
        let mut total = 0usize;
        for i in 0..n {
            total += community_id(0, &a, &b, PROTO_TCP, Some((i as u16, 80)), false).len();
        }
        let v4 = t.elapsed().as_nanos() as f64 / f64::from(n);
        let t = std::time::Instant::now();
        for i in 0..n {
            total += of_flow(0, 6, &x, i as u16, &y, 443, PROTO_TCP).len();
        }
        let v6 = t.elapsed().as_nanos() as f64 / f64::from(n);
        let t = std::time::Instant::now();
        for i in 0..n {
            total += of_text(0, "192.168.1.52", i as u16, "8.8.8.8", 53, PROTO_UDP).map_or(0, |s| s.len());
        }
        let text = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!("ns per id: IPv4 {v4:.0}, IPv6 {v6:.0}, from text (DNS) {text:.0} ({total})");
    }
}
