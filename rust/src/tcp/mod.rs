//! TCP: the per-partition connection tracker ([`tracker`]) and Wireshark 4.0's sequence
//! analysis of each connection ([`connection`]); [`state`] is their checkpoint encoding.
//! Stream reassembly and the L7 analysers are Python still (`processors/reassembly.py`,
//! `processors/l7/`): the tracker hands them each L7 connection's packets as events.

pub mod connection;
pub mod state;
pub mod tracker;
