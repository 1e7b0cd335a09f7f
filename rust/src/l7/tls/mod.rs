//! TLS handshake analysis over one TCP connection: one handshake summary per connection,
//! from the cleartext only (no keys, no decryption).
//!
//! Takes the reassembled bytes of both directions of a connection whose client side is
//! known (and its gaps, ticks of capture time and its end); gives at most one
//! [`Handshake`] (SNI, offered/selected ALPN, negotiated version and cipher suite,
//! timing, alert, resumption, HelloRetryRequest, error) and named counters. It is the
//! per-segment work of the TLS path (record headers of every encrypted record of a long
//! download included), moved here from Python (issue 16); the `wire.tls` record, the
//! cipher suite and alert names stay Python (`processors/l7/tls.py`,
//! `processors/l7/tls_names.py`, generated from tshark), once per handshake.
//!
//! - [`record`]: protocol constants, the record-header checks (ClientHello detection,
//!   resynchronisation) and the record-layer state of one direction;
//! - [`hello`]: ClientHello / ServerHello parsing (bounds-checked reader);
//! - [`session`]: the record layer, handshake message framing and the handshake state
//!   machine of a connection;
//! - [`state`]: the connection's state as checkpoint bytes, and back.

pub mod hello;
pub mod record;
pub mod session;
pub mod state;

pub use record::looks_like_client_hello;
pub use session::{Connection, Handshake, Phase};

#[cfg(test)]
mod tests;
