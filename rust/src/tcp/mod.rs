//! TCP: the per-partition connection tracker ([`tracker`]) and Wireshark 4.0's sequence
//! analysis of each connection ([`connection`]); [`state`] is their checkpoint encoding; [`zeek`]
//! is Zeek's view of each connection (conn.log's `conn_state`, `history`, `missed_bytes`).
//! The tracker also reassembles both streams of each L7 connection (`crate::reassembly`)
//! and hands the L7 analysers (Python, `processors/l7/`) their in-order data and gaps as
//! events.

pub mod connection;
pub mod state;
pub mod tracker;
pub mod zeek;
