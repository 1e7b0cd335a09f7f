//! The Community ID for the records Python builds itself (`processors/flows.py`'s UDP
//! flows): the same function as the core's own records use, so that no second
//! implementation can disagree with it.

use pyo3::prelude::*;

use crate::community_id;

/// The Community ID v1 of a flow between `(ip0, port0)` and `(ip1, port1)` (addresses as
/// text) over IP protocol `proto`, with `seed`; None if either is not an address or they
/// are of different families.
#[pyfunction]
#[pyo3(signature = (seed, ip0, port0, ip1, port1, proto))]
pub fn community_id_of(seed: u16, ip0: &str, port0: u16, ip1: &str, port1: u16, proto: u8) -> Option<String> {
    community_id::of_text(seed, ip0, port0, ip1, port1, proto)
}
