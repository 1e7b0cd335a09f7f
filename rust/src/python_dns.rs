//! The Python classes of the DNS analyser's core (`wirestream._core.DnsMatcher` and
//! `wirestream._core.DnsTcp`); `processors/l7/dns.py` wraps them in the `DnsMatcher` and
//! `DnsTcpAnalyzer` the rest of the Python code uses.
//!
//! Every input method (`udp_batch`, `datagram`, `tcp_data`, `tcp_gap`, `tcp_close`,
//! `tick`, `flush`) returns None when no record completed and no counter moved, else
//! `(records, counts)`: `records` a list of `(key, record)` with `record` a dict of the
//! `schemas/dns.avsc` fields the analyser knows (the dispatcher adds `source_id` and the
//! identity fields), `counts` a list of `(counter, increment)`. `udp_batch` reads a
//! batch's UDP header rows (80-byte records, rust/src/layout.rs) and its payload blob in
//! place: one call per batch, not per datagram. `snapshot()` / `restore(bytes)` are the
//! checkpoint (rust/src/l7/dns/state.rs).

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use pyo3::intern;

use crate::bytes::{array, le32, Endian};
use crate::community_id;
use crate::l7::dns::matcher::{Matcher, Record, MAX_PENDING};
use crate::l7::dns::message::{self, opcode_name, rcode_name, type_name};
use crate::l7::dns::state;
use crate::l7::dns::tcp::TcpDns;
use crate::layout::RECORD_SIZE;
use crate::python::buffer_bytes;
use crate::tcp::connection::ip_text;

/// The UDP port whose datagrams are DNS (processors/l7/dns.py, "Ports").
const DNS_PORT: u16 = 53;

#[pyclass(module = "wirestream._core", name = "DnsMatcher")]
pub struct PyDnsMatcher {
    inner: Matcher,
    /// seed of the records' Community ID (a setting: not in the checkpoint bytes)
    community_id_seed: u16,
}

#[pyclass(module = "wirestream._core", name = "DnsTcp")]
pub struct PyDnsTcp {
    inner: TcpDns,
}

fn record_dict<'py>(py: Python<'py>, r: &Record, seed: u16) -> PyResult<(String, Bound<'py, PyDict>)> {
    let q = &r.query;
    let c = &q.conv;
    let d = PyDict::new(py);
    d.set_item(intern!(py, "connection_id"), c.cid.as_deref())?;
    d.set_item(intern!(py, "client_ip"), &c.client_ip)?;
    d.set_item(intern!(py, "client_port"), c.client_port)?;
    d.set_item(intern!(py, "server_ip"), &c.server_ip)?;
    d.set_item(intern!(py, "server_port"), c.server_port)?;
    d.set_item(intern!(py, "transport"), q.transport.name())?;
    d.set_item(intern!(py, "query_id"), c.id)?;
    d.set_item(intern!(py, "query_name"), &q.name)?;
    let qtype = if q.qtype != 0 { type_name(q.qtype) } else { "".into() };
    d.set_item(intern!(py, "query_type"), qtype.as_ref())?;
    d.set_item(intern!(py, "rcode"), r.rcode.map(rcode_name).as_deref())?;
    let answers = PyList::empty(py);
    for a in &r.answers {
        let ad = PyDict::new(py);
        ad.set_item(intern!(py, "name"), &a.name)?;
        ad.set_item(intern!(py, "type"), type_name(a.rrtype).as_ref())?;
        ad.set_item(intern!(py, "ttl"), a.ttl)?;
        ad.set_item(intern!(py, "data"), &a.data)?;
        answers.append(ad)?;
    }
    d.set_item(intern!(py, "answers"), answers)?;
    d.set_item(intern!(py, "query_ts_us"), q.ts_us)?;
    d.set_item(intern!(py, "response_ts_us"), r.response_ts_us)?;
    d.set_item(intern!(py, "latency_us"), r.response_ts_us.map(|t| t - q.ts_us))?;
    d.set_item(intern!(py, "opcode"), opcode_name(q.opcode).as_ref())?;
    d.set_item(intern!(py, "truncated"), r.truncated)?;
    d.set_item(intern!(py, "retransmissions"), q.retransmissions)?;
    d.set_item(intern!(py, "error"), r.error)?;
    // once per record: the query's flow (UDP), or its TCP connection's (the same id as
    // that connection's record)
    let proto = if c.cid.is_some() { community_id::PROTO_TCP } else { community_id::PROTO_UDP };
    let cmid = community_id::of_text(seed, &c.client_ip, c.client_port, &c.server_ip, c.server_port, proto);
    d.set_item(intern!(py, "community_id"), cmid)?;
    // UDP: keyed by the conversation and the transaction id
    let key = match &c.cid {
        Some(cid) => cid.clone(),
        None => format!("{}:{}>{}:{}#{}", c.client_ip, c.client_port, c.server_ip, c.server_port, c.id),
    };
    Ok((key, d))
}

impl PyDnsMatcher {
    fn result<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        if self.inner.out.is_empty() && self.inner.counts.is_empty() {
            return Ok(None);
        }
        let (out, counts) = self.inner.take();
        let records = PyList::empty(py);
        for r in &out {
            records.append(record_dict(py, r, self.community_id_seed)?)?;
        }
        let counts = PyList::new(py, counts)?;
        Ok(Some(PyTuple::new(py, [records.into_any(), counts.into_any()])?))
    }
}

#[pymethods]
impl PyDnsMatcher {
    #[new]
    #[pyo3(signature = (timeout_us, max_pending = MAX_PENDING, community_id_seed = 0))]
    fn new(timeout_us: i64, max_pending: usize, community_id_seed: u16) -> Self {
        PyDnsMatcher { inner: Matcher::new(timeout_us, max_pending), community_id_seed }
    }

    /// Seed of the records' Community ID: a setting, not in `snapshot()`'s bytes (set it
    /// again after `restore`).
    #[getter]
    fn get_community_id_seed(&self) -> u16 {
        self.community_id_seed
    }

    #[setter]
    fn set_community_id_seed(&mut self, seed: u16) {
        self.community_id_seed = seed;
    }

    #[classattr]
    const MAX_PENDING: usize = MAX_PENDING;
    #[classattr]
    const MAX_NAME_WIRE: usize = message::MAX_NAME_WIRE;

    /// A batch's UDP rows (header records, any contiguous buffer) and its payload blob:
    /// the datagrams on port 53 go to the matcher, the others are counted
    /// (`udp_not_analysed`).
    fn udp_batch<'py>(&mut self, py: Python<'py>, headers: &Bound<'py, PyAny>, payloads: &Bound<'py, PyAny>)
                      -> PyResult<Option<Bound<'py, PyTuple>>> {
        let hbuf = PyBuffer::<u8>::get(headers)?;
        let block = buffer_bytes(&hbuf, "header block")?;
        let pbuf = PyBuffer::<u8>::get(payloads)?;
        let blob = buffer_bytes(&pbuf, "payload blob")?;
        let le = Endian::Little;
        let mut skipped = 0u64;
        for row in block.chunks_exact(RECORD_SIZE) {
            // layout.rs: ts 0, payload_off 20, payload_caplen 24, src_ip 36, dst_ip 52,
            // src_port 68, dst_port 70, ip_version 76
            let fields = (le.i64(row, 0), le32(row, 20), le32(row, 24), array::<16>(row, 36), array::<16>(row, 52),
                          le.u16(row, 68), le.u16(row, 70), row.get(76).copied());
            let (Some(ts), Some(off), Some(caplen), Some(src), Some(dst), Some(sport), Some(dport), Some(ver)) = fields else {
                continue;
            };
            if sport != DNS_PORT && dport != DNS_PORT {
                skipped += 1;
                continue;
            }
            let (off, caplen) = (off as usize, caplen as usize);
            let payload = blob.get(off..off.saturating_add(caplen)).unwrap_or_default();
            self.inner.on_datagram(ts, &ip_text(&src, ver), sport, &ip_text(&dst, ver), dport, payload);
        }
        if skipped > 0 {
            self.inner.count("udp_not_analysed", skipped);
        }
        self.result(py)
    }

    /// One UDP datagram on a DNS port. The QR bit says who is the client.
    #[allow(clippy::too_many_arguments)] // the Python method's arguments, as the tests call it
    fn datagram<'py>(&mut self, py: Python<'py>, ts_us: i64, src_ip: &str, src_port: u16, dst_ip: &str,
                     dst_port: u16, payload: &[u8]) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.inner.on_datagram(ts_us, src_ip, src_port, dst_ip, dst_port, payload);
        self.result(py)
    }

    /// In-order bytes of one direction of a DNS-over-TCP connection; `connection_id()`
    /// is called at its first whole message.
    fn tcp_data<'py>(&mut self, py: Python<'py>, mut tcp: PyRefMut<'_, PyDnsTcp>, direction: u8, data: &[u8],
                     ts_us: i64, connection_id: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let mut cid = || connection_id.call0()?.extract::<String>();
        tcp.inner.data(&mut self.inner, direction, data, ts_us, &mut cid)?;
        self.result(py)
    }

    fn tcp_gap<'py>(&mut self, py: Python<'py>, mut tcp: PyRefMut<'_, PyDnsTcp>, direction: u8)
                    -> PyResult<Option<Bound<'py, PyTuple>>> {
        tcp.inner.gap(&mut self.inner, direction);
        self.result(py)
    }

    fn tcp_close<'py>(&mut self, py: Python<'py>, mut tcp: PyRefMut<'_, PyDnsTcp>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        tcp.inner.close(&mut self.inner);
        self.result(py)
    }

    /// Emit the queries unanswered for the timeout (capture time).
    fn tick<'py>(&mut self, py: Python<'py>, now_us: i64) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.inner.tick(now_us);
        self.result(py)
    }

    /// End of input: every waiting query without a response.
    fn flush<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.inner.flush();
        self.result(py)
    }

    /// Queries waiting for an answer.
    #[getter]
    fn pending(&self) -> usize {
        self.inner.pending_len()
    }

    #[getter]
    fn get_max_pending(&self) -> usize {
        self.inner.max_pending
    }

    #[setter]
    fn set_max_pending(&mut self, v: usize) {
        self.inner.max_pending = v;
    }

    /// The state as bytes (rust/src/l7/dns/state.rs).
    fn snapshot<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &state::snapshot_matcher(&self.inner))
    }

    #[staticmethod]
    fn restore(data: &[u8]) -> PyResult<Self> {
        state::restore_matcher(data).map(|inner| PyDnsMatcher { inner, community_id_seed: 0 }).map_err(PyValueError::new_err)
    }

    /// One message decoded: `(None, id, flags, [(qname, qtype)], [(name, type, ttl,
    /// data)], ancount, nscount, arcount)`, or `(reason, (id, flags) or None)`.
    #[staticmethod]
    fn parse<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyTuple>> {
        match message::parse(data) {
            Ok(m) => {
                let answers: Vec<(String, String, u32, String)> = m.answers.into_iter()
                    .map(|a| (a.name, type_name(a.rrtype).into_owned(), a.ttl, a.data)).collect();
                (None::<&str>, m.id, m.flags, m.questions, answers, m.ancount, m.nscount, m.arcount).into_pyobject(py)
            }
            Err(e) => (Some(e.reason.name()), e.header).into_pyobject(py),
        }
    }

    /// `A`, `AAAA`, ...; unknown types as `TYPE123` (RFC 3597).
    #[staticmethod]
    fn type_name(rrtype: u16) -> String {
        type_name(rrtype).into_owned()
    }

    #[staticmethod]
    fn rcode_name(rcode: u16) -> String {
        rcode_name(rcode).into_owned()
    }

    #[staticmethod]
    fn opcode_name(opcode: u16) -> String {
        opcode_name(opcode).into_owned()
    }
}

#[pymethods]
impl PyDnsTcp {
    #[new]
    fn new(client_direction: u8, client_ip: String, client_port: u16, server_ip: String, server_port: u16) -> PyResult<Self> {
        if client_direction > 1 {
            return Err(PyValueError::new_err("client_direction is 0 or 1"));
        }
        Ok(PyDnsTcp { inner: TcpDns::new(client_direction, (client_ip, client_port), (server_ip, server_port)) })
    }

    /// The connection id, once a message asked for it.
    #[getter]
    fn connection_id(&self) -> Option<&str> {
        self.inner.connection_id.as_deref()
    }

    /// Whether `direction` stopped being parsed (after a gap).
    fn stopped(&self, direction: u8) -> bool {
        self.inner.stopped.get(usize::from(direction)).copied().unwrap_or(false)
    }

    /// Bytes held in `direction` (the start of an unfinished message).
    fn held(&self, direction: u8) -> usize {
        self.inner.buf.get(usize::from(direction)).map_or(0, Vec::len)
    }

    fn snapshot<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &state::snapshot_tcp(&self.inner))
    }

    #[staticmethod]
    fn restore(data: &[u8]) -> PyResult<Self> {
        state::restore_tcp(data).map(|inner| PyDnsTcp { inner }).map_err(PyValueError::new_err)
    }
}
