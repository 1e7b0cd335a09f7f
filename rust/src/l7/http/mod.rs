//! HTTP/1.x over one TCP connection: one completed transaction per request/response pair.
//!
//! Takes the reassembled bytes of both directions of a connection whose client side is
//! known (and its gaps, ticks of capture time and its end); gives the transactions,
//! request and response paired, with their timing, headers, capped bodies and error, and
//! named counters. It is the per-chunk work of the L7 path (it was ~47% of the packet
//! worker's CPU in Python over llhttp, with a Python callback per header and body chunk).
//! The `wire.transactions` record is built here too (`python_http`), with its header
//! maps, its redaction and its findings ([`redact`]).
//!
//! - [`parser`]: the message grammar and framing of one direction (a pull parser);
//! - [`session`]: pairing and the per-direction PARSE/RESYNC/WAIT/TUNNEL machine;
//! - [`state`]: the connection's state as checkpoint bytes, and back;
//! - [`redact`]: header maps, redaction of header values, targets and bodies, findings.

pub mod parser;
pub mod redact;
pub mod session;
pub mod state;

pub use session::{Connection, Txn, ERRORS, MAX_HELD, MAX_PENDING};

#[cfg(test)]
mod tests;
