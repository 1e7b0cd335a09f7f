//! The DNS matcher's and a DNS-over-TCP connection's state as bytes (a checkpoint's
//! part), and back.
//!
//! `WSDN` (matcher) or `WSDT` (TCP framing), a version (u16 BE), the CRC-32 of the body
//! (u32 BE), then the body, little-endian, in a fixed order (an option is a presence
//! byte then its value; strings and bytes a u64 length then the bytes). The matcher's
//! indexes (by conversation, by connection, by key) are rebuilt from the waiting queries
//! on restore. Decoding checks every length against what is left and every tag, so bytes
//! that are not such a state give an error, never a panic or an unbounded allocation.
//! Taken between calls, when no record or counter is waiting to be taken.

use super::matcher::{Answered, Conv, Matcher, Query, Transport};
use super::tcp::TcpDns;

pub const MATCHER_MAGIC: &[u8; 4] = b"WSDN";
pub const TCP_MAGIC: &[u8; 4] = b"WSDT";
/// Version of this encoding: bump it with any change of the fields.
pub const VERSION: u16 = 1;

use crate::state_bytes::{frame, unframe, Res, R, W};

/// A conversation key: the connection id (if any), the two ends and the DNS id.
trait WriteConv {
    fn conv(&mut self, c: &Conv);
}

impl WriteConv for W {
    fn conv(&mut self, c: &Conv) {
        self.ostr(c.cid.as_deref());
        self.bytes(c.client_ip.as_bytes());
        self.u16(c.client_port);
        self.bytes(c.server_ip.as_bytes());
        self.u16(c.server_port);
        self.u16(c.id);
    }
}

trait ReadConv {
    fn conv(&mut self) -> Res<Conv>;
}

impl ReadConv for R<'_> {
    fn conv(&mut self) -> Res<Conv> {
        Ok(Conv {
            cid: self.ostr()?,
            client_ip: self.string()?,
            client_port: self.u16()?,
            server_ip: self.string()?,
            server_port: self.u16()?,
            id: self.u16()?,
        })
    }
}

pub fn snapshot_matcher(m: &Matcher) -> Vec<u8> {
    let mut w = W(Vec::new());
    w.i64(m.timeout_us);
    w.u64(m.max_pending as u64);
    w.u64(m.next_seq);
    w.u64(m.pending.len() as u64);
    for (&seq, q) in &m.pending {
        w.u64(seq);
        w.conv(&q.conv);
        w.bytes(q.name.as_bytes());
        w.u16(q.qtype);
        w.u16(q.opcode);
        w.u8(u8::from(q.transport == Transport::Tcp));
        w.i64(q.ts_us);
        w.u64(q.retransmissions);
    }
    w.u64(m.answered_order.len() as u64);
    for (&seq, conv) in &m.answered_order {
        let a = m.answered.get(conv).copied().unwrap_or(Answered { seq, ts_us: 0, qtype: 0 });
        w.u64(seq);
        w.conv(conv);
        w.i64(a.ts_us);
        w.u16(a.qtype);
    }
    frame(MATCHER_MAGIC, VERSION, &w.0)
}

pub fn restore_matcher(data: &[u8]) -> Res<Matcher> {
    let mut r = R::new("DNS", unframe("DNS", MATCHER_MAGIC, VERSION, data)?);
    let timeout_us = r.i64()?;
    let max_pending = usize::try_from(r.u64()?).map_err(|_| "DNS state damaged (max_pending)")?;
    let mut m = Matcher::new(timeout_us, max_pending);
    m.next_seq = r.u64()?;
    let n = r.count(1)?;
    for _ in 0..n {
        let seq = r.u64()?;
        let conv = r.conv()?;
        let name = r.string()?;
        let qtype = r.u16()?;
        let opcode = r.u16()?;
        let transport = if r.b()? { Transport::Tcp } else { Transport::Udp };
        let ts_us = r.i64()?;
        let retransmissions = r.u64()?;
        if seq >= m.next_seq || m.pending.contains_key(&seq) {
            return Err("DNS state damaged (query order)".into());
        }
        let lname = name.to_ascii_lowercase();
        m.insert(seq, Query { conv, lname, name, qtype, opcode, transport, ts_us, retransmissions });
    }
    let n = r.count(1)?;
    for _ in 0..n {
        let seq = r.u64()?;
        let conv = r.conv()?;
        let ts_us = r.i64()?;
        let qtype = r.u16()?;
        if seq >= m.next_seq || m.answered_order.contains_key(&seq) || m.answered.contains_key(&conv) {
            return Err("DNS state damaged (answered order)".into());
        }
        m.answered.insert(conv.clone(), Answered { seq, ts_us, qtype });
        m.answered_order.insert(seq, conv);
    }
    if r.at != r.d.len() {
        return Err("DNS state damaged (trailing bytes)".into());
    }
    Ok(m)
}

pub fn snapshot_tcp(t: &TcpDns) -> Vec<u8> {
    let mut w = W(Vec::new());
    w.u8(t.client_direction);
    w.bytes(t.client.0.as_bytes());
    w.u16(t.client.1);
    w.bytes(t.server.0.as_bytes());
    w.u16(t.server.1);
    for d in 0..2 {
        w.bytes(&t.buf[d]);
        w.u8(u8::from(t.stopped[d]));
    }
    w.ostr(t.connection_id.as_deref());
    frame(TCP_MAGIC, VERSION, &w.0)
}

pub fn restore_tcp(data: &[u8]) -> Res<TcpDns> {
    let mut r = R::new("DNS", unframe("DNS", TCP_MAGIC, VERSION, data)?);
    let client_direction = r.u8()?;
    if client_direction > 1 {
        return Err("DNS state damaged (direction)".into());
    }
    let client = (r.string()?, r.u16()?);
    let server = (r.string()?, r.u16()?);
    let mut t = TcpDns::new(client_direction, client, server);
    for d in 0..2 {
        t.buf[d] = r.bytes()?;
        t.stopped[d] = r.b()?;
    }
    t.connection_id = r.ostr()?;
    if r.at != r.d.len() {
        return Err("DNS state damaged (trailing bytes)".into());
    }
    Ok(t)
}
