//! DNS over UDP and TCP (docs/l7.md): message parsing, query/response matching with
//! Wireshark's `dns.time` rules, the TCP length framing, and their checkpoint encoding.
//!
//! - [`message`]: one message's bytes -> header, questions, answers as text, or a named
//!   parse error;
//! - [`matcher`]: the per-partition transactions -> `wire.dns` records and counters;
//! - [`tcp`]: a connection's reassembled streams -> whole messages for the matcher;
//! - [`state`]: the matcher's and a connection's state as versioned, CRC-checked bytes.
//!
//! The Python face is `python_dns` (`wirestream._core.DnsMatcher`, `DnsTcp`), wrapped by
//! `processors/l7/dns.py`.

pub mod matcher;
pub mod message;
pub mod state;
pub mod tcp;

#[cfg(test)]
mod tests;
