//! `FlowTable` (the UDP, ICMP and SCTP flows of `flow.rs`) for `processors/flows.py`, and the Community
//! ID for records Python builds itself: the same function the core's own records use, so
//! that no second implementation can disagree with it.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::community_id;
use crate::flow::{Ended, FlowTable};
use crate::python::buffer_bytes;
use crate::tcp::connection::{connection_id, ip_text};

const PROTO_UDP: u8 = 17;
const PROTO_SCTP: u8 = 132;

/// The Community ID v1 of a flow between `(ip0, port0)` and `(ip1, port1)` (addresses as
/// text) over IP protocol `proto`, with `seed`; None if either is not an address or they
/// are of different families.
#[pyfunction]
#[pyo3(signature = (seed, ip0, port0, ip1, port1, proto))]
pub fn community_id_of(seed: u16, ip0: &str, port0: u16, ip1: &str, port1: u16, proto: u8) -> Option<String> {
    community_id::of_text(seed, ip0, port0, ip1, port1, proto)
}

/// The UDP, ICMP and SCTP flows of one source on one partition; records come back as dicts (the
/// `wire.flows` fields the table knows: no identity, no source id).
#[pyclass(name = "FlowTable", module = "wirestream._core")]
pub struct PyFlowTable {
    inner: FlowTable,
    #[pyo3(get, set)]
    community_id_seed: u16,
}

#[pymethods]
impl PyFlowTable {
    #[new]
    #[pyo3(signature = (timeout_us = crate::flow::INACTIVITY_TIMEOUT_US, max_flows = crate::flow::MAX_FLOWS,
                        community_id_seed = 0))]
    fn new(timeout_us: i64, max_flows: usize, community_id_seed: u16) -> Self {
        PyFlowTable { inner: FlowTable::new(timeout_us, max_flows), community_id_seed }
    }

    /// A batch's header block (80 bytes per packet; rows other than UDP, ICMP and SCTP are skipped) and
    /// payload blob, read in place; the records of the flows that ended, in order.
    fn process<'py>(&mut self, py: Python<'py>, headers: &Bound<'py, PyAny>,
                    payloads: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let hbuf = PyBuffer::<u8>::get(headers)?;
        let pbuf = PyBuffer::<u8>::get(payloads)?;
        let (block, blob) = (buffer_bytes(&hbuf, "header block")?, buffer_bytes(&pbuf, "payload blob")?);
        let inner = &mut self.inner;
        py.allow_threads(|| inner.process(block, blob));
        self.records(py)
    }

    /// End of input: the records of every flow still held, in the order they started.
    fn flush<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.inner.flush();
        self.records(py)
    }

    #[getter]
    fn open_flows(&self) -> usize {
        self.inner.open_flows()
    }

    #[getter]
    fn evicted(&self) -> u64 {
        self.inner.evicted
    }

    /// The table's state as bytes (versioned, CRC-checked).
    fn snapshot(&self) -> Vec<u8> {
        self.inner.snapshot()
    }

    /// The table a `snapshot()` was taken of (ValueError: bytes that are not one).
    #[staticmethod]
    #[pyo3(signature = (data, community_id_seed = 0))]
    fn restore(data: &[u8], community_id_seed: u16) -> PyResult<Self> {
        let inner = FlowTable::restore(data).map_err(PyValueError::new_err)?;
        Ok(PyFlowTable { inner, community_id_seed })
    }
}

impl PyFlowTable {
    fn records<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for e in self.inner.take() {
            out.append(record(py, &e, self.community_id_seed)?)?;
        }
        Ok(out)
    }
}

fn record<'py>(py: Python<'py>, e: &Ended, seed: u16) -> PyResult<Bound<'py, PyDict>> {
    let f = &e.flow;
    let ((cip, cport), (sip, sport)) = (f.client, f.server);
    let (client_ip, server_ip) = (ip_text(&cip, f.version), ip_text(&sip, f.version));
    let d = PyDict::new(py);
    d.set_item(intern!(py, "flow_id"), connection_id(&client_ip, cport, &server_ip, sport, f.start_ts_us))?;
    // Zeek's proto names: "icmp" for ICMPv6 too (the IP version tells them apart); SCTP,
    // which Zeek calls unknown_transport, by its name (sinks/zeek.py writes Zeek's)
    let transport = match f.proto {
        PROTO_UDP => "udp",
        PROTO_SCTP => "sctp",
        _ => "icmp",
    };
    d.set_item(intern!(py, "transport"), transport)?;
    d.set_item(intern!(py, "client_ip"), &client_ip)?;
    d.set_item(intern!(py, "client_port"), cport)?;
    d.set_item(intern!(py, "server_ip"), &server_ip)?;
    d.set_item(intern!(py, "server_port"), sport)?;
    d.set_item(intern!(py, "ip_version"), f.version)?;
    d.set_item(intern!(py, "start_ts_us"), f.start_ts_us)?;
    d.set_item(intern!(py, "end_ts_us"), f.end_ts_us)?;
    d.set_item(intern!(py, "packets_c2s"), f.packets[0])?;
    d.set_item(intern!(py, "packets_s2c"), f.packets[1])?;
    d.set_item(intern!(py, "bytes_c2s"), f.bytes[0])?;
    d.set_item(intern!(py, "bytes_s2c"), f.bytes[1])?;
    d.set_item(intern!(py, "frame_bytes_c2s"), f.frame_bytes[0])?;
    d.set_item(intern!(py, "frame_bytes_s2c"), f.frame_bytes[1])?;
    d.set_item(intern!(py, "service"), f.service.map(|s| s.name()))?;
    d.set_item(intern!(py, "conn_state"), f.conn_state())?;
    d.set_item(intern!(py, "ended_by"), e.ended_by.name())?;
    let n = if f.version == 4 { 4 } else { 16 };
    let cid = match f.icmp {
        // the client's message type and code, in the client's direction (one-way types
        // keep it: an error's id is the sender's)
        Some(m) if m.side == 0 => community_id::of_icmp(seed, &cip[..n], &sip[..n], f.proto, m.icmp_type, m.code),
        Some(m) => community_id::of_icmp(seed, &sip[..n], &cip[..n], f.proto, m.icmp_type, m.code),
        // UDP and SCTP: the ports, as TCP's (the Community ID spec)
        None => community_id::community_id(seed, &cip[..n], &sip[..n], f.proto, Some((cport, sport)), false),
    };
    d.set_item(intern!(py, "community_id"), cid)?;
    d.set_item(intern!(py, "icmp_type"), f.icmp.map(|m| m.icmp_type))?;
    d.set_item(intern!(py, "icmp_code"), f.icmp.map(|m| m.code))?;
    d.set_item(intern!(py, "path_mtu"), f.path_mtu)?;
    match f.quoted {
        Some(q) => {
            let qn = if q.version == 4 { 4 } else { 16 };
            let transport = match q.proto {
                6 => "tcp".to_string(),
                17 => "udp".to_string(),
                PROTO_SCTP => "sctp".to_string(),
                1 | 58 => "icmp".to_string(),
                other => other.to_string(),
            };
            let ports = matches!(q.proto, 6 | 17 | PROTO_SCTP);
            d.set_item(intern!(py, "quoted_transport"), transport)?;
            d.set_item(intern!(py, "quoted_src_ip"), ip_text(&q.src.0, q.version))?;
            d.set_item(intern!(py, "quoted_src_port"), ports.then_some(q.src.1))?;
            d.set_item(intern!(py, "quoted_dst_ip"), ip_text(&q.dst.0, q.version))?;
            d.set_item(intern!(py, "quoted_dst_port"), ports.then_some(q.dst.1))?;
            let qcid = ports.then(|| {
                community_id::community_id(seed, &q.src.0[..qn], &q.dst.0[..qn], q.proto, Some((q.src.1, q.dst.1)), false)
            });
            d.set_item(intern!(py, "quoted_community_id"), qcid)?;
        }
        None => {
            for k in ["quoted_transport", "quoted_src_ip", "quoted_src_port", "quoted_dst_ip", "quoted_dst_port",
                      "quoted_community_id"] {
                d.set_item(k, py.None())?;
            }
        }
    }
    Ok(d)
}
