//! One DNS message (RFC 1035 section 4) decoded: the header, the questions and the
//! answers, the names in presentation format and each answer's data as text.
//!
//! Takes the message bytes (a UDP payload, or one length-framed message of a TCP
//! stream); gives a [`Message`] or a [`ParseError`] whose `reason` is one of the named
//! counters (`truncated`, `bad_pointer`, `bad_label_type`, `name_too_long`, `bad_rdata`)
//! and whose `header` is the id and flags when the 12-byte header was there (a response
//! whose body is damaged still answers its query, docs/l7.md). Hostile input cannot make
//! it loop or panic: compression pointers must point strictly before the previous jump
//! target (the rule BIND applies), so they cannot loop, and every read is bounds-checked.
//! The texts are those Wireshark-comparable tests fixed for the former Python parser
//! (`tests/test_dns.py`): `\.`/`\DDD` label escapes, the root as `.`, `TYPE123` for
//! unknown types, rdata of unknown types as lowercase hex.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::bytes::{be16, be32, u8_at};

pub const HEADER_LEN: usize = 12;
/// RFC 1035 section 2.3.4, length octets and the root byte included.
pub const MAX_NAME_WIRE: usize = 255;
/// More compression jumps than labels could ever need.
pub const MAX_POINTERS: u32 = 127;

pub const QR: u16 = 0x8000;
pub const FLAG_TC: u16 = 0x0200;

/// Why a message did not parse: the suffix of the `dns_parse_error.<reason>` counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Truncated,
    BadPointer,
    BadLabelType,
    NameTooLong,
    BadRdata,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Truncated => "truncated",
            Reason::BadPointer => "bad_pointer",
            Reason::BadLabelType => "bad_label_type",
            Reason::NameTooLong => "name_too_long",
            Reason::BadRdata => "bad_rdata",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub reason: Reason,
    /// (id, flags) when the 12-byte header was there.
    pub header: Option<(u16, u16)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    pub rrtype: u16,
    pub ttl: u32,
    pub data: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    pub flags: u16,
    /// (name as sent, numeric type) of each question.
    pub questions: Vec<(String, u16)>,
    pub answers: Vec<Answer>,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

type Res<T> = Result<T, Reason>;

/// Presentation text of one label (RFC 1035 section 5.1): `.` and `\` escaped with a
/// backslash, bytes outside printable ASCII as `\DDD`.
fn push_label(out: &mut String, label: &[u8]) {
    for &b in label {
        if b == b'.' || b == b'\\' {
            out.push('\\');
            out.push(char::from(b));
        } else if (0x21..=0x7e).contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\{b:03}");
        }
    }
}

/// Read the domain name at `off`: its text and the offset after it (after its first
/// pointer, or its root byte).
///
/// Compression pointers (RFC 1035 section 4.1.4) must point strictly below the previous
/// jump target (the first time: below the name's start): names are only ever compressed
/// against earlier names, and strictly decreasing targets cannot loop.
pub fn read_name(buf: &[u8], mut off: usize) -> Res<(String, usize)> {
    let mut text = String::new();
    let mut end: Option<usize> = None;
    let mut limit = off;
    let mut wire = 1usize; // the root byte
    let mut jumps = 0u32;
    loop {
        let length = u8_at(buf, off).ok_or(Reason::Truncated)?;
        if length == 0 {
            off += 1;
            break;
        }
        if length >= 0xC0 {
            let low = u8_at(buf, off + 1).ok_or(Reason::Truncated)?;
            let target = (usize::from(length & 0x3F) << 8) | usize::from(low);
            if end.is_none() {
                end = Some(off + 2);
            }
            jumps += 1;
            if target >= limit || jumps > MAX_POINTERS {
                return Err(Reason::BadPointer);
            }
            limit = target;
            off = target;
            continue;
        }
        if length > 63 {
            // 0x40 (EDNS0 extended label, deprecated by RFC 6891) and 0x80
            return Err(Reason::BadLabelType);
        }
        let length = usize::from(length);
        wire += length + 1;
        if wire > MAX_NAME_WIRE {
            return Err(Reason::NameTooLong);
        }
        let first = off + 1;
        off = first + length;
        let label = buf.get(first..off).ok_or(Reason::Truncated)?;
        if !text.is_empty() {
            text.push('.');
        }
        push_label(&mut text, label);
    }
    if text.is_empty() {
        text.push('.');
    }
    Ok((text, end.unwrap_or(off)))
}

/// Numeric type -> mnemonic; unknown types as `TYPE123` (RFC 3597).
pub fn type_name(rrtype: u16) -> std::borrow::Cow<'static, str> {
    let name = match rrtype {
        1 => "A", 2 => "NS", 3 => "MD", 4 => "MF", 5 => "CNAME", 6 => "SOA", 7 => "MB", 8 => "MG",
        9 => "MR", 10 => "NULL", 11 => "WKS", 12 => "PTR", 13 => "HINFO", 14 => "MINFO", 15 => "MX",
        16 => "TXT", 17 => "RP", 18 => "AFSDB", 19 => "X25", 20 => "ISDN", 21 => "RT", 22 => "NSAP",
        23 => "NSAP-PTR", 24 => "SIG", 25 => "KEY", 26 => "PX", 27 => "GPOS", 28 => "AAAA", 29 => "LOC",
        30 => "NXT", 31 => "EID", 32 => "NIMLOC", 33 => "SRV", 34 => "ATMA", 35 => "NAPTR", 36 => "KX",
        37 => "CERT", 38 => "A6", 39 => "DNAME", 40 => "SINK", 41 => "OPT", 42 => "APL", 43 => "DS",
        44 => "SSHFP", 45 => "IPSECKEY", 46 => "RRSIG", 47 => "NSEC", 48 => "DNSKEY", 49 => "DHCID",
        50 => "NSEC3", 51 => "NSEC3PARAM", 52 => "TLSA", 53 => "SMIMEA", 55 => "HIP", 56 => "NINFO",
        57 => "RKEY", 58 => "TALINK", 59 => "CDS", 60 => "CDNSKEY", 61 => "OPENPGPKEY", 62 => "CSYNC",
        63 => "ZONEMD", 64 => "SVCB", 65 => "HTTPS", 99 => "SPF", 104 => "NID", 105 => "L32",
        106 => "L64", 107 => "LP", 108 => "EUI48", 109 => "EUI64", 249 => "TKEY", 250 => "TSIG",
        251 => "IXFR", 252 => "AXFR", 253 => "MAILB", 254 => "MAILA", 255 => "ANY", 256 => "URI",
        257 => "CAA", 258 => "AVC", 259 => "DOA", 260 => "AMTRELAY", 32768 => "TA", 32769 => "DLV",
        _ => return std::borrow::Cow::Owned(format!("TYPE{rrtype}")),
    };
    std::borrow::Cow::Borrowed(name)
}

pub fn rcode_name(rcode: u16) -> std::borrow::Cow<'static, str> {
    let name = match rcode {
        0 => "NOERROR", 1 => "FORMERR", 2 => "SERVFAIL", 3 => "NXDOMAIN", 4 => "NOTIMP",
        5 => "REFUSED", 6 => "YXDOMAIN", 7 => "YXRRSET", 8 => "NXRRSET", 9 => "NOTAUTH",
        10 => "NOTZONE", 11 => "DSOTYPENI",
        _ => return std::borrow::Cow::Owned(format!("RCODE{rcode}")),
    };
    std::borrow::Cow::Borrowed(name)
}

pub fn opcode_name(opcode: u16) -> std::borrow::Cow<'static, str> {
    let name = match opcode {
        0 => "QUERY", 1 => "IQUERY", 2 => "STATUS", 4 => "NOTIFY", 5 => "UPDATE", 6 => "DSO",
        _ => return std::borrow::Cow::Owned(format!("OPCODE{opcode}")),
    };
    std::borrow::Cow::Borrowed(name)
}

/// A name inside rdata that must end within it.
fn rdata_name(buf: &[u8], off: usize, rdend: usize) -> Res<String> {
    let (text, after) = read_name(buf, off)?;
    if after > rdend {
        return Err(Reason::BadRdata);
    }
    Ok(text)
}

/// Bytes as Python's `decode("utf-8", "backslashreplace")` gives them: each byte of an
/// invalid sequence as `\xNN`.
fn utf8_backslash(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// The 16 bytes of an IPv6 address as glibc's `inet_ntop` writes them.
fn ipv6_text(d: &[u8]) -> Res<String> {
    let ip: [u8; 16] = d.try_into().map_err(|_| Reason::BadRdata)?;
    Ok(crate::tcp::connection::ip_text(&ip, 6))
}

/// Presentation text of one record's data (`buf[off..rdend]`); `bad_rdata` when it does
/// not fit its type.
fn rdata_text(buf: &[u8], rrtype: u16, off: usize, rdend: usize) -> Res<String> {
    let rd = buf.get(off..rdend).ok_or(Reason::Truncated)?;
    let rdlen = rd.len();
    Ok(match rrtype {
        1 => match rd {
            [a, b, c, d] => Ipv4Addr::new(*a, *b, *c, *d).to_string(),
            _ => return Err(Reason::BadRdata),
        },
        28 => ipv6_text(rd)?,
        // NS MD MF CNAME MB MG MR PTR DNAME: a domain name
        2 | 3 | 4 | 5 | 7 | 8 | 9 | 12 | 39 => rdata_name(buf, off, rdend)?,
        // MX AFSDB RT KX: preference and name
        15 | 18 | 21 | 36 => {
            if rdlen < 3 {
                return Err(Reason::BadRdata);
            }
            let pref = be16(buf, off).ok_or(Reason::BadRdata)?;
            format!("{pref} {}", rdata_name(buf, off + 2, rdend)?)
        }
        // TXT SPF: one or more <character-string>s as one string, the way SPF/DKIM
        // consumers concatenate them (RFC 7208 section 3.3).
        16 | 99 => {
            let mut joined = Vec::with_capacity(rdlen);
            let mut p = 0usize;
            while p < rdlen {
                let len = usize::from(rd.get(p).copied().unwrap_or(0));
                let part = rd.get(p + 1..p + 1 + len).ok_or(Reason::BadRdata)?;
                joined.extend_from_slice(part);
                p += 1 + len;
            }
            utf8_backslash(&joined)
        }
        6 => {
            // SOA: mname rname serial refresh retry expire minimum (as dig prints it)
            let (mname, p) = read_name(buf, off)?;
            let (rname, p) = read_name(buf, p)?;
            if p + 20 > rdend {
                return Err(Reason::BadRdata);
            }
            let v = |i: usize| be32(buf, p + 4 * i).ok_or(Reason::BadRdata);
            format!("{mname} {rname} {} {} {} {} {}", v(0)?, v(1)?, v(2)?, v(3)?, v(4)?)
        }
        33 => {
            // SRV: priority weight port target
            if rdlen < 7 {
                return Err(Reason::BadRdata);
            }
            let v = |i: usize| be16(buf, off + 2 * i).ok_or(Reason::BadRdata);
            format!("{} {} {} {}", v(0)?, v(1)?, v(2)?, rdata_name(buf, off + 6, rdend)?)
        }
        _ => {
            let mut hex = String::with_capacity(2 * rdlen);
            for b in rd {
                let _ = write!(hex, "{b:02x}");
            }
            hex
        }
    })
}

/// Decode the header, questions and answers of one DNS message. Bytes after the answer
/// section (authority, additional, trailing padding such as the two bytes Windows
/// appends to AXFR queries in `dns_axfr`) are not examined.
pub fn parse(buf: &[u8]) -> Result<Message, ParseError> {
    let h = |i: usize| be16(buf, 2 * i);
    let (Some(id), Some(flags), Some(qd), Some(an), Some(ns), Some(ar)) = (h(0), h(1), h(2), h(3), h(4), h(5)) else {
        return Err(ParseError { reason: Reason::Truncated, header: None });
    };
    body(buf, qd, an)
        .map(|(questions, answers)| Message { id, flags, questions, answers, ancount: an, nscount: ns, arcount: ar })
        .map_err(|reason| ParseError { reason, header: Some((id, flags)) })
}

type Sections = (Vec<(String, u16)>, Vec<Answer>);

fn body(buf: &[u8], qdcount: u16, ancount: u16) -> Res<Sections> {
    let n = buf.len();
    let mut off = HEADER_LEN;
    let mut questions = Vec::with_capacity(usize::from(qdcount.min(4)));
    for _ in 0..qdcount {
        let (qname, after) = read_name(buf, off)?;
        off = after;
        if off + 4 > n {
            return Err(Reason::Truncated);
        }
        questions.push((qname, be16(buf, off).ok_or(Reason::Truncated)?));
        off += 4;
    }
    let mut answers = Vec::with_capacity(usize::from(ancount.min(16)));
    for _ in 0..ancount {
        let (name, after) = read_name(buf, off)?;
        off = after;
        if off + 10 > n {
            return Err(Reason::Truncated);
        }
        let rrtype = be16(buf, off).ok_or(Reason::Truncated)?;
        let ttl = be32(buf, off + 4).ok_or(Reason::Truncated)?;
        let rdlen = usize::from(be16(buf, off + 8).ok_or(Reason::Truncated)?);
        off += 10;
        let rdend = off + rdlen;
        if rdend > n {
            return Err(Reason::Truncated);
        }
        let data = rdata_text(buf, rrtype, off, rdend)?;
        answers.push(Answer { name, rrtype, ttl, data });
        off = rdend;
    }
    Ok((questions, answers))
}
