//! The Python classes of the TCP tracker (`wirestream._core.TcpTracker`; the typed
//! wrapper Python code uses is `processors/connection_tracker.py`) and of one stream's
//! reassembly (`wirestream._core.StreamReassembler`, `processors/reassembly.py`).
//!
//! A batch goes in as the header block and the payload blob (any contiguous buffers: a
//! numpy structured array is read in place, without a copy) and comes out as an iterator of
//! events, in order: `(0, record)` a `wire.connections` record (a dict, as
//! schemas/connection.avsc, Zeek's conn.log fields included: docs/zeek.md); `(1, handle, version, ip0, port0, ip1, port1,
//! connection_id, community_id)` an L7 session opens; `(2, handle, d, data, ts_us)` the next bytes of
//! side `d`'s stream; `(6, handle, d, missing, ts_us)` bytes of it never captured;
//! `(3, handle, ts_us, connection_id)` it closes (after its streams' last data and gaps,
//! before the record); `(4, handle, now_us)` a sweep's tick; `(5, handle,
//! connection_id)` its id changed. The loop runs without the GIL; the events are made
//! into tuples one at a time as the caller takes them (in-order data sliced from the blob
//! then), and must all be taken before the next call.
//!
//! A session whose analyser is HTTP/1, or TLS without a key log, can be *attached*
//! (`l7_attach(handle, core)`, its `HttpConnection` or `TlsConnection`): its in-order data
//! and ticks then go to that core here, as the events are taken (from the next one on: the
//! caller attaches a session while it handles the chunk that told its protocol), without
//! a Python `bytes` per chunk or a Python call, and what completed comes out as `(7,
//! handle, out, ts_us, handoff)` (`out` what the core's `data` or `tick` would have
//! returned, or None; `handoff` true when the connection switched to HTTP/2: it is
//! detached, and the caller takes the handoff). A gap or the close of an attached
//! connection detaches it and comes out as usual (so that every event of a connection
//! keeps its order; the caller attaches it again after a gap). Attachments are not state:
//! a restored tracker has none until the caller attaches again. An attached HTTP/1 session
//! is closed (its `(3, ...)` event) as soon as both sides' FINs are in and both streams are
//! delivered up to them (the core's `Ended`), not after the connection's linger: no later
//! byte can come, HTTP/1's records do not use the close's time, and the session's memory
//! goes then (HTTP/1 only: a TLS connection stays open to the record for the uprobes'
//! plaintext, processors/tls_plaintext_join.py, which may come late). (Whether a session is
//! attached at that event depends only on the stream, never on how it was batched.)

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};
use pyo3::types::{PyBytes, PyDict, PyTuple};
use std::collections::HashMap;

use crate::python::buffer_bytes;
use crate::python_http::PyHttpConnection;
use crate::python_tls::PyTlsConnection;
use crate::reassembly::{Chunk, Reassembler, Sink, DEFAULT_MAX_BUFFER};
use crate::tcp::connection::{ip_text, Record, COUNT_NAMES};
use crate::tcp::state;
use crate::tcp::tracker::{Event, Tracker};

#[pyclass(module = "wirestream._core", name = "TcpTracker")]
pub struct PyTcpTracker {
    inner: Tracker,
    source_id: String,
    /// handle -> the compiled core its data and ticks go to directly (see the module doc)
    attached: HashMap<u64, AttachedCore>,
    /// The last call's events not yet taken (PyTcpEvents), and the blob their data is in.
    pending: std::vec::IntoIter<Event>,
    pending_blob: Option<PyBuffer<u8>>,
}

/// The analyser core an attached session's data and ticks go to.
enum AttachedCore {
    Http(Py<PyHttpConnection>),
    Tls(Py<PyTlsConnection>),
}

impl AttachedCore {
    /// `data`'s output, and whether the connection switched protocol (HTTP/1's `Upgrade:
    /// h2c`: the caller takes the handoff and the session is detached).
    fn data<'py>(&self, py: Python<'py>, d: u8, data: &[u8], ts: i64) -> PyResult<(Option<Bound<'py, PyTuple>>, bool)> {
        Ok(match self {
            AttachedCore::Http(core) => {
                let mut core = core.bind(py).borrow_mut();
                let out = core.data(py, d, data, ts)?;
                (out, core.has_handoff())
            }
            AttachedCore::Tls(core) => (core.bind(py).borrow_mut().data(py, d, data, ts)?, false),
        })
    }

    fn tick<'py>(&self, py: Python<'py>, now: i64) -> PyResult<Option<Bound<'py, PyTuple>>> {
        match self {
            AttachedCore::Http(core) => core.bind(py).borrow_mut().tick(py, now),
            AttachedCore::Tls(core) => core.bind(py).borrow_mut().tick(py, now),
        }
    }

    fn object(&self) -> &PyObject {
        match self {
            AttachedCore::Http(core) => core.as_any(),
            AttachedCore::Tls(core) => core.as_any(),
        }
    }
}

/// The record as a dict; its keys are interned (made once per process, not per record).
fn record_dict<'py>(py: Python<'py>, r: &Record, source_id: &str) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item(intern!(py, "connection_id"), &r.connection_id)?;
    d.set_item(intern!(py, "source_id"), source_id)?;
    d.set_item(intern!(py, "client_ip"), &r.client_ip)?;
    d.set_item(intern!(py, "client_port"), r.client_port)?;
    d.set_item(intern!(py, "server_ip"), &r.server_ip)?;
    d.set_item(intern!(py, "server_port"), r.server_port)?;
    d.set_item(intern!(py, "ip_version"), r.ip_version)?;
    d.set_item(intern!(py, "start_ts_us"), r.start_ts_us)?;
    d.set_item(intern!(py, "end_ts_us"), r.end_ts_us)?;
    d.set_item(intern!(py, "lifecycle"), r.lifecycle)?;
    d.set_item(intern!(py, "state"), r.state)?;
    d.set_item(intern!(py, "final"), r.final_)?;
    d.set_item(intern!(py, "handshake_seen"), r.handshake_seen)?;
    d.set_item(intern!(py, "handshake_rtt_us"), r.handshake_rtt_us)?;
    d.set_item(intern!(py, "packets_c2s"), r.packets[0])?;
    d.set_item(intern!(py, "packets_s2c"), r.packets[1])?;
    d.set_item(intern!(py, "bytes_c2s"), r.bytes[0])?;
    d.set_item(intern!(py, "bytes_s2c"), r.bytes[1])?;
    d.set_item(intern!(py, "goodput_bytes_c2s"), r.goodput[0])?;
    d.set_item(intern!(py, "goodput_bytes_s2c"), r.goodput[1])?;
    for (name, n) in COUNT_NAMES.iter().zip(r.counts) {
        d.set_item(name, n)?;
    }
    d.set_item(intern!(py, "data_packets"), r.data_packets)?;
    d.set_item(intern!(py, "retransmission_rate"), r.retransmission_rate)?;
    d.set_item(intern!(py, "health"), r.health)?;
    d.set_item(intern!(py, "rtt_samples"), r.rtt_samples)?;
    d.set_item(intern!(py, "rtt_min_us"), r.rtt_min_us)?;
    d.set_item(intern!(py, "rtt_max_us"), r.rtt_max_us)?;
    d.set_item(intern!(py, "rtt_avg_us"), r.rtt_avg_us)?;
    d.set_item(intern!(py, "rtt_jitter_us"), r.rtt_jitter_us)?;
    d.set_item(intern!(py, "ttfb_us"), r.ttfb_us)?;
    d.set_item(intern!(py, "min_window_c2s"), r.min_window[0])?;
    d.set_item(intern!(py, "avg_window_c2s"), r.avg_window[0])?;
    d.set_item(intern!(py, "min_window_s2c"), r.min_window[1])?;
    d.set_item(intern!(py, "avg_window_s2c"), r.avg_window[1])?;
    d.set_item(intern!(py, "window_scale_c2s"), r.window_scale[0])?;
    d.set_item(intern!(py, "window_scale_s2c"), r.window_scale[1])?;
    d.set_item(intern!(py, "community_id"), &r.community_id)?;
    d.set_item(intern!(py, "conn_state"), r.conn_state)?;
    d.set_item(intern!(py, "history"), r.history.as_deref())?;
    d.set_item(intern!(py, "missed_bytes"), r.missed_bytes)?;
    d.set_item(intern!(py, "orig_is_server"), r.orig_is_server)?;
    Ok(d)
}

/// The bytes of a chunk: `Input` is a range of `input` (a batch's blob, a segment).
fn chunk_slice<'a>(chunk: &'a Chunk, input: &'a [u8]) -> &'a [u8] {
    match chunk {
        Chunk::Input { at, len } => at.checked_add(*len).and_then(|end| input.get(*at..end)).unwrap_or_default(),
        Chunk::Owned(v) => v,
    }
}

/// [`chunk_slice`] as a Python `bytes`.
fn chunk_bytes<'py>(py: Python<'py>, chunk: &Chunk, input: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, chunk_slice(chunk, input))
}

impl PyTcpTracker {
    /// The next event of the last call as a Python tuple, or None when they are all out.
    /// An attached session's data and ticks go to its core here, as they come (see the
    /// module doc): made one at a time, as the caller takes them, so that a session the
    /// caller attaches while it handles an event gets the *next* chunk of the same batch.
    fn next_event<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let PyTcpTracker { pending, pending_blob, attached, source_id, inner } = self;
        let blob = match pending_blob {
            Some(b) => buffer_bytes(b, "payload blob")?,
            None => &[],
        };
        for e in pending.by_ref() {
            let item: Bound<'py, PyTuple> = match e {
                Event::Record(r) => (0, record_dict(py, &r, source_id)?).into_pyobject(py)?,
                Event::Data { handle, d, data, ts } => match attached.get(&handle) {
                    Some(core) => {
                        let (out, handoff) = core.data(py, d, chunk_slice(&data, blob), ts)?;
                        if handoff {
                            attached.remove(&handle);
                        } else if out.is_none() {
                            continue;
                        }
                        (7, handle, out, ts, handoff).into_pyobject(py)?
                    }
                    None => (2, handle, d, chunk_bytes(py, &data, blob), ts).into_pyobject(py)?,
                },
                Event::Gap { handle, d, missing, ts } => {
                    attached.remove(&handle);
                    (6, handle, d, missing, ts).into_pyobject(py)?
                }
                Event::Open { handle, version, ips, ports, cid, community_id, .. } => (
                    1, handle, version, ip_text(&ips[0], version), ports[0], ip_text(&ips[1], version), ports[1], cid,
                    community_id,
                ).into_pyobject(py)?,
                Event::Close { handle, ts, cid } => {
                    attached.remove(&handle);
                    (3, handle, ts, cid).into_pyobject(py)?
                }
                Event::Ended { handle, ts, cid } => {
                    // An attached session's streams can take no more bytes: it closes now,
                    // not when the connection's record is emitted (after the linger), and
                    // its reassembly and session state go (no Close follows). Other
                    // sessions close with the record: their analysers' records carry the
                    // close's time, which the linger's last packets set.
                    // (TLS sessions stay to the record: the uprobes' plaintext of a
                    // connection joins it while it is open, and may come late.)
                    if !matches!(attached.get(&handle), Some(AttachedCore::Http(_))) {
                        continue;
                    }
                    attached.remove(&handle);
                    inner.l7_ignore(handle);
                    (3, handle, ts, cid).into_pyobject(py)?
                }
                Event::Tick { handle, now } => match attached.get(&handle) {
                    Some(core) => {
                        let Some(out) = core.tick(py, now)? else { continue };
                        (7, handle, Some(out), now, false).into_pyobject(py)?
                    }
                    None => (4, handle, now).into_pyobject(py)?,
                },
                Event::Id { handle, cid } => (5, handle, cid).into_pyobject(py)?,
            };
            return Ok(Some(item));
        }
        *pending_blob = None; // (the batch's blob is let go with its last event)
        Ok(None)
    }

    /// The events of the call just made, to be taken through the returned iterator;
    /// `blob`: the payload blob of the batch (None after a sweep or flush, whose data is
    /// all owned). Events an earlier iterator left are dropped, as a list would have been.
    fn start_events(slf: &Bound<'_, Self>, blob: Option<PyBuffer<u8>>) -> PyTcpEvents {
        let mut this = slf.borrow_mut();
        this.pending = this.inner.take_events().into_iter();
        this.pending_blob = blob;
        PyTcpEvents { tracker: slf.clone().unbind() }
    }
}

/// The events of one `process`/`sweep`/`flush` call, in order (see the module doc): an
/// iterator, made one event at a time.
#[pyclass(module = "wirestream._core", name = "TcpEvents")]
pub struct PyTcpEvents {
    tracker: Py<PyTcpTracker>,
}

#[pymethods]
impl PyTcpEvents {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.tracker.bind(py).borrow_mut().next_event(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.tracker)
    }
}

#[pymethods]
impl PyTcpTracker {
    #[new]
    #[pyo3(signature = (source_id = String::new(), idle_timeout_us = 300_000_000, close_linger_us = 10_000_000,
                        interim_us = 0, max_connections = 1_000_000, l7 = false, community_id_seed = 0))]
    fn new(source_id: String, idle_timeout_us: i64, close_linger_us: i64, interim_us: i64, max_connections: u64,
           l7: bool, community_id_seed: u16) -> Self {
        let mut inner = Tracker::new(idle_timeout_us, close_linger_us, interim_us, max_connections, l7);
        inner.community_id_seed = community_id_seed;
        PyTcpTracker { inner, source_id, attached: HashMap::new(), pending: Vec::new().into_iter(), pending_blob: None }
    }

    /// Seed of the records' Community ID: a setting, not in `snapshot()`'s bytes (set it
    /// again after `restore`).
    #[getter]
    fn community_id_seed(&self) -> u16 {
        self.inner.community_id_seed
    }

    #[setter]
    fn set_community_id_seed(&mut self, seed: u16) {
        self.inner.community_id_seed = seed;
    }

    /// Analyse a batch's header block (80 bytes per packet) and payload blob (any
    /// contiguous buffers, read in place); return its events, in order, as an iterator
    /// (taken before the next call).
    #[pyo3(signature = (headers, payloads = None))]
    fn process(slf: &Bound<'_, Self>, headers: &Bound<'_, PyAny>, payloads: Option<&Bound<'_, PyAny>>)
        -> PyResult<PyTcpEvents> {
        let py = slf.py();
        let hbuf = PyBuffer::<u8>::get(headers)?;
        let block = buffer_bytes(&hbuf, "header block")?;
        let pbuf = payloads.map(PyBuffer::<u8>::get).transpose()?;
        let blob = match &pbuf {
            Some(b) => buffer_bytes(b, "payload blob")?,
            None => &[],
        };
        {
            let mut this = slf.borrow_mut();
            let inner = &mut this.inner;
            py.allow_threads(|| inner.process(block, blob));
        }
        // the blob is read again as the events are taken, for the in-order data's bytes
        Ok(Self::start_events(slf, pbuf))
    }

    /// Expire what is due at capture time `now_us` (as the batches do on their own).
    fn sweep(slf: &Bound<'_, Self>, now_us: i64) -> PyTcpEvents {
        slf.borrow_mut().inner.sweep(now_us);
        Self::start_events(slf, None)
    }

    /// End of input: every connection still held.
    fn flush(slf: &Bound<'_, Self>) -> PyTcpEvents {
        slf.borrow_mut().inner.flush();
        Self::start_events(slf, None)
    }

    /// No more L7 events for this connection (its session gave up); its reassembly is
    /// freed.
    fn l7_ignore(&mut self, handle: u64) {
        self.attached.remove(&handle);
        self.inner.l7_ignore(handle);
    }

    /// From now on, the in-order data and ticks of `handle` go to `core` (its session's
    /// analyser's `HttpConnection` or `TlsConnection`) as the events are taken; see the
    /// module doc. Attaching a handle that is not held is a no-op.
    fn l7_attach(&mut self, handle: u64, core: &Bound<'_, PyAny>) -> PyResult<()> {
        let core = if let Ok(http) = core.downcast::<PyHttpConnection>() {
            AttachedCore::Http(http.clone().unbind())
        } else if let Ok(tls) = core.downcast::<PyTlsConnection>() {
            AttachedCore::Tls(tls.clone().unbind())
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err("an HttpConnection or a TlsConnection is attached"));
        };
        if self.inner.conns.contains_key(&handle) {
            self.attached.insert(handle, core);
        }
        Ok(())
    }

    /// Handles attached (tests).
    #[getter]
    fn attached_count(&self) -> usize {
        self.attached.len()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for core in self.attached.values() {
            visit.call(core.object())?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.attached.clear();
    }

    /// The id of a held connection (None if it is not held).
    fn connection_id(&self, handle: u64) -> Option<String> {
        self.inner.conns.get(&handle).map(|c| c.connection_id())
    }

    #[getter]
    fn open_connections(&self) -> usize {
        self.inner.open_connections()
    }

    /// Entries of the (direction -> connection) index: twice the connections held.
    #[getter]
    fn index_entries(&self) -> usize {
        self.inner.index.len()
    }

    #[getter]
    fn packets(&self) -> u64 {
        self.inner.packets
    }

    #[getter]
    fn emitted(&self) -> u64 {
        self.inner.emitted
    }

    #[getter]
    fn source_id(&self) -> &str {
        &self.source_id
    }

    /// `{name: count}` of what was counted (non-TCP packets, opened, evicted, ...).
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, n) in self.inner.counter_items() {
            d.set_item(name, n)?;
        }
        Ok(d)
    }

    /// The state as bytes (versioned, CRC-checked): `TcpTracker.restore` takes them back.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        if !self.inner.events.is_empty() || !self.pending.as_slice().is_empty() {
            return Err(PyValueError::new_err("events not taken yet"));
        }
        let mut out = state::snapshot(&self.inner);
        let sid = self.source_id.as_bytes();
        out.extend_from_slice(sid);
        out.extend_from_slice(&(sid.len() as u32).to_le_bytes());
        Ok(PyBytes::new(py, &out))
    }

    /// A tracker from `snapshot()`'s bytes; ValueError for anything else.
    #[staticmethod]
    fn restore(data: &[u8]) -> PyResult<Self> {
        let err = |m: String| PyValueError::new_err(m);
        let n = data.len();
        let len_at = n.checked_sub(4).ok_or_else(|| err("not a tracker state (too short)".into()))?;
        let sid_len = crate::bytes::le32(data, len_at).unwrap_or(u32::MAX) as usize;
        let sid_at = len_at.checked_sub(sid_len).ok_or_else(|| err("not a tracker state (bad source id)".into()))?;
        let source_id = std::str::from_utf8(data.get(sid_at..len_at).unwrap_or_default())
            .map_err(|_| err("not a tracker state (source id not UTF-8)".into()))?
            .to_string();
        let inner = state::restore(data.get(..sid_at).unwrap_or_default()).map_err(err)?;
        Ok(PyTcpTracker { inner, source_id, attached: HashMap::new(), pending: Vec::new().into_iter(), pending_blob: None })
    }
}

/// What a [`Reassembler`] gave during one call, handed to the Python callbacks after it.
#[derive(Default)]
struct Collected(Vec<(Option<Chunk>, u64, i64)>);

impl Sink for Collected {
    fn data(&mut self, chunk: Chunk, ts: i64) {
        self.0.push((Some(chunk), 0, ts));
    }
    fn gap(&mut self, missing: u64, ts: i64) {
        self.0.push((None, missing, ts));
    }
}

/// A Python integer as a sequence number (modulo 2^32, as TCP's).
fn seq32(v: i64) -> u32 {
    (v & 0xFFFF_FFFF) as u32
}

/// One direction's reassembly for Python (crate::reassembly): `deliver(data, ts_us)` and
/// `gap(missing, ts_us)` are called, in order, before the call that caused them returns.
#[pyclass(module = "wirestream._core", name = "StreamReassembler")]
pub struct PyStreamReassembler {
    inner: Reassembler,
    #[pyo3(get, set)]
    deliver: PyObject,
    #[pyo3(get, set)]
    gap: PyObject,
}

impl PyStreamReassembler {
    fn hand_over(&self, py: Python<'_>, out: Collected, input: &[u8]) -> PyResult<()> {
        for (chunk, missing, ts) in out.0 {
            match chunk {
                Some(c) => self.deliver.call1(py, (chunk_bytes(py, &c, input), ts))?,
                None => self.gap.call1(py, (missing, ts))?,
            };
        }
        Ok(())
    }
}

#[pymethods]
impl PyStreamReassembler {
    /// The callbacks for the cycle collector (they are often bound methods of the object
    /// that holds this reassembler).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.deliver)?;
        visit.call(&self.gap)
    }

    #[new]
    #[pyo3(signature = (deliver, gap, max_buffer = DEFAULT_MAX_BUFFER))]
    fn new(deliver: PyObject, gap: PyObject, max_buffer: u64) -> Self {
        PyStreamReassembler { inner: Reassembler::new(max_buffer), deliver, gap }
    }

    /// A segment of `length` payload bytes at `seq`, of which `data` were captured.
    fn segment(&mut self, py: Python<'_>, seq: i64, data: &[u8], length: u32, ts_us: i64) -> PyResult<()> {
        let mut out = Collected::default();
        self.inner.segment(seq32(seq), data, length, ts_us, &mut out);
        self.hand_over(py, out, data)
    }

    /// The peer acknowledged up to `ack`.
    fn ack(&mut self, py: Python<'_>, ack: i64) -> PyResult<()> {
        let mut out = Collected::default();
        self.inner.ack(seq32(ack), &mut out);
        self.hand_over(py, out, &[])
    }

    /// The stream ended: deliver what is buffered (after gaps for the holes).
    fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
        let mut out = Collected::default();
        self.inner.finish(&mut out);
        self.hand_over(py, out, &[])
    }

    /// Sequence number of the next byte to deliver (None: the first segment's).
    #[getter]
    fn next_seq(&self) -> Option<u32> {
        self.inner.next_seq
    }

    #[setter]
    fn set_next_seq(&mut self, v: Option<i64>) {
        self.inner.next_seq = v.map(seq32);
    }

    #[getter]
    fn peer_ack(&self) -> Option<u32> {
        self.inner.peer_ack
    }

    #[getter]
    fn max_buffer(&self) -> u64 {
        self.inner.max_buffer
    }

    #[getter]
    fn pending_bytes(&self) -> u64 {
        self.inner.pending_bytes
    }

    #[getter]
    fn delivered(&self) -> u64 {
        self.inner.delivered
    }

    #[getter]
    fn gap_bytes(&self) -> u64 {
        self.inner.gap_bytes
    }

    #[getter]
    fn duplicate_bytes(&self) -> u64 {
        self.inner.duplicate_bytes
    }

    #[getter]
    fn finished(&self) -> bool {
        self.inner.finished
    }
}
