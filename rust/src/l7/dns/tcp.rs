//! DNS over TCP: the 2-byte length framing (RFC 1035 section 4.2.2, RFC 7766) of both
//! directions of one connection.
//!
//! Takes the connection's reassembled bytes and gaps, per direction; gives whole
//! messages to the partition's [`Matcher`] (their time is that of the segment carrying
//! their last byte: Wireshark shows a reassembled message in the frame where reassembly
//! completes). Per direction, two states: reading (collect the length and the message it
//! announces, across any segment boundaries) until a gap, then stopped: after lost bytes
//! there is no way to know where the next length prefix starts (a length is any two
//! bytes), so that direction is not parsed again and what follows is only counted. A gap
//! in the server's direction also closes the connection's waiting queries with
//! `error: gap` (their answers may have been in the hole). Held bytes are at most one
//! unfinished message (64 KiB + 2) per direction.

use super::message::HEADER_LEN;
use super::matcher::{Close, Matcher, Transport};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpDns {
    /// The direction (0 or 1) that sends the queries.
    pub client_direction: u8,
    pub client: (String, u16),
    pub server: (String, u16),
    /// Bytes of each direction not yet consumed: at most one unfinished message.
    pub buf: [Vec<u8>; 2],
    /// After a gap: the direction is no longer parsed.
    pub stopped: [bool; 2],
    /// Asked of the tracker at the first message (the roles are settled by then).
    pub connection_id: Option<String>,
}

impl TcpDns {
    pub fn new(client_direction: u8, client: (String, u16), server: (String, u16)) -> Self {
        TcpDns { client_direction, client, server, buf: [Vec::new(), Vec::new()], stopped: [false; 2], connection_id: None }
    }

    /// In-order bytes of `direction`, captured at `ts_us`. `cid` gives the connection id
    /// when the first message completes.
    pub fn data<E>(&mut self, m: &mut Matcher, direction: u8, data: &[u8], ts_us: i64,
                   cid: &mut dyn FnMut() -> Result<String, E>) -> Result<(), E> {
        let d = usize::from(direction & 1);
        if self.stopped[d] {
            m.count("dns_tcp_bytes_after_gap", data.len() as u64);
            return Ok(());
        }
        let mut pending = std::mem::take(&mut self.buf[d]);
        let owned = !pending.is_empty();
        if owned {
            pending.extend_from_slice(data);
        }
        let buf: &[u8] = if owned { &pending } else { data };
        let mut pos = 0usize;
        while let (Some(&hi), Some(&lo)) = (buf.get(pos), buf.get(pos + 1)) {
            let end = pos + 2 + ((usize::from(hi) << 8) | usize::from(lo));
            let Some(msg) = buf.get(pos + 2..end) else { break };
            self.message(m, d, msg, ts_us, cid)?;
            pos = end;
        }
        if owned {
            // in place: a long message in many small segments is not copied again per segment
            pending.drain(..pos.min(pending.len()));
            self.buf[d] = pending;
        } else {
            self.buf[d] = data.get(pos..).unwrap_or_default().to_vec();
        }
        Ok(())
    }

    fn message<E>(&mut self, m: &mut Matcher, d: usize, msg: &[u8], ts_us: i64,
                  cid: &mut dyn FnMut() -> Result<String, E>) -> Result<(), E> {
        if msg.len() < HEADER_LEN {
            m.count("dns_parse_error", 1);
            m.count("dns_parse_error.truncated", 1);
            return Ok(());
        }
        // Queries come from the client and responses from the server (RFC 7766); a
        // message the other way round (DSO push, RFC 8490, or garbage) is not matched.
        let from_server = d != usize::from(self.client_direction);
        let is_response = msg.get(2).is_some_and(|b| b & 0x80 != 0);
        if is_response != from_server {
            m.count("dns_tcp_wrong_direction", 1);
            return Ok(());
        }
        if self.connection_id.is_none() {
            self.connection_id = Some(cid()?);
        }
        m.on_message(Transport::Tcp, ts_us, (&self.client.0, self.client.1), (&self.server.0, self.server.1),
                     msg, self.connection_id.as_deref());
        Ok(())
    }

    /// Bytes of `direction` were never captured.
    pub fn gap(&mut self, m: &mut Matcher, direction: u8) {
        let d = usize::from(direction & 1);
        if self.stopped[d] {
            return;
        }
        m.count("dns_tcp_gap", 1);
        if !self.buf[d].is_empty() {
            m.count("dns_tcp_partial_message", 1);
            self.buf[d] = Vec::new();
        }
        self.stopped[d] = true;
        if direction != self.client_direction {
            if let Some(cid) = &self.connection_id {
                m.close_connection(cid, Close::Gap);
            }
        }
    }

    /// The connection ended: its waiting queries are closed.
    pub fn close(&mut self, m: &mut Matcher) {
        for b in &mut self.buf {
            if !b.is_empty() {
                m.count("dns_tcp_partial_message", 1);
                *b = Vec::new();
            }
        }
        if let Some(cid) = &self.connection_id {
            let server_stopped = self.stopped[usize::from(1 - (self.client_direction & 1))];
            m.close_connection(cid, if server_stopped { Close::Gap } else { Close::NoResponse });
        }
    }
}
