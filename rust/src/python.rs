//! The Python API of the packet path (`wirestream._core`): thin classes over the Rust
//! readers, decoder and batcher. The typed wrappers Python code imports are
//! `producers/capture_file.py`, `producers/decode.py` and `producers/publisher.py`.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::batch::{Batch, Batcher};
use crate::capture_file::{CaptureFile, DEFAULT_CHUNK};
use crate::decode::link::SUPPORTED;
use crate::decode::{Decoder, Frame};
use crate::layout::Packet;
use crate::replay::{pump, ReplayStats};
use crate::ring::{Feed, Ring};

/// A contiguous buffer's bytes (a batch's header block or payload blob, a numpy array),
/// read in place while `buffer` lives; `what` names it in the error. One for every class
/// of the core that reads a batch (`python_tcp`, `python_dns`, `python_flow`).
pub(crate) fn buffer_bytes<'a>(buffer: &'a PyBuffer<u8>, what: &str) -> PyResult<&'a [u8]> {
    if !buffer.is_c_contiguous() {
        return Err(PyValueError::new_err(format!("the {what} must be a contiguous buffer")));
    }
    // SAFETY: `buffer` keeps the exporter's memory alive and its shape fixed until it is
    // dropped, which the returned borrow cannot outlive; we only read it.
    Ok(unsafe { std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes()) })
}

/// `{link type: name}` of the link types the decoder understands.
#[pyfunction]
pub fn supported_linktypes(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    for (n, name) in SUPPORTED {
        d.set_item(n, name)?;
    }
    Ok(d)
}

fn counts<'py>(py: Python<'py>, items: &[(&'static str, u64)]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, n) in items {
        d.set_item(name, n)?;
    }
    Ok(d)
}

/// One capture file being read. Open with `open_capture`.
#[pyclass(module = "wirestream._core", name = "CaptureReader")]
pub struct PyCaptureReader {
    file: Option<CaptureFile>,
    #[pyo3(get)]
    format: String,
    #[pyo3(get)]
    size: u64,
    stats: ReplayStats,
}

/// Open a capture file; raises `wirestream.errors.CaptureFileError(path, problem)`.
#[pyfunction]
#[pyo3(signature = (path, chunk = DEFAULT_CHUNK))]
pub fn open_capture(py: Python<'_>, path: &str, chunk: usize) -> PyResult<PyCaptureReader> {
    match py.allow_threads(|| CaptureFile::open(path, chunk)) {
        Ok(file) => Ok(PyCaptureReader { format: file.format.clone(), size: file.size, file: Some(file),
                                         stats: ReplayStats::default() }),
        Err(problem) => {
            let cls = py.import("wirestream.errors")?.getattr("CaptureFileError")?;
            Err(PyErr::from_value(cls.call1((path, problem.0))?))
        }
    }
}

fn frame_tuple<'py>(py: Python<'py>, f: &Frame<'_>) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, [
        f.number.into_pyobject(py)?.into_any(),
        f.ts_us.into_pyobject(py)?.into_any(),
        f.linktype.into_pyobject(py)?.into_any(),
        PyBytes::new(py, f.data).into_any(),
        f.orig_len.into_pyobject(py)?.into_any(),
    ])
}

fn batch_list<'py>(py: Python<'py>, batches: Vec<Batch>) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for b in batches {
        list.append((
            b.partition,
            b.count,
            PyBytes::new(py, &b.headers),
            PyBytes::new(py, &b.payloads),
            PyBytes::new(py, &b.tunnel_of),
            PyBytes::new(py, &b.tunnel_paths),
        ))?;
    }
    Ok(list)
}

#[pymethods]
impl PyCaptureReader {
    /// Bytes read from the file on disk (compressed bytes for gzip), for progress.
    #[getter]
    fn bytes_read(&self) -> u64 {
        self.file.as_ref().map_or(self.size, |f| f.bytes_read())
    }

    /// `{name: count}` of the damage found so far.
    fn problems<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        counts(py, &self.file.as_ref().map(|f| f.problems()).unwrap_or_default())
    }

    /// The link types the file declares.
    fn linktypes(&self) -> Vec<i64> {
        self.file.as_ref().map(|f| f.linktypes.iter().copied().collect()).unwrap_or_default()
    }

    /// Frame numbers given so far (packet blocks that could not be used count too).
    #[getter]
    fn frames_read(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.frames_read())
    }

    /// Frames a replay (`pump`) has read, and its first and last timestamps.
    #[getter]
    fn frames(&self) -> u64 {
        self.stats.frames
    }

    #[getter]
    fn first_ts_us(&self) -> Option<i64> {
        self.stats.first_ts_us
    }

    #[getter]
    fn last_ts_us(&self) -> Option<i64> {
        self.stats.last_ts_us
    }

    /// `(number, ts_us, linktype, data, orig_len)` of the next frame, None at the end.
    fn next_frame<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(file) = self.file.as_mut() else { return Ok(None) };
        match file.next_frame() {
            Some(f) => Ok(Some(frame_tuple(py, &f)?)),
            None => Ok(None),
        }
    }

    /// Read, decode and batch up to `max_frames` frames (without the GIL); return the
    /// complete batches `[(partition, count, headers, payloads)]` and whether the file is
    /// done. At the end, the batcher still holds the incomplete batches (`flush`).
    fn pump<'py>(
        &mut self,
        py: Python<'py>,
        decoder: &Bound<'py, PyFrameDecoder>,
        batcher: &Bound<'py, PyBatcher>,
        max_frames: u64,
    ) -> PyResult<(Bound<'py, PyList>, bool)> {
        let Some(file) = self.file.as_mut() else { return Err(PyValueError::new_err("the capture file is closed")) };
        let mut dec = decoder.borrow_mut();
        let mut bat = batcher.borrow_mut();
        let stats = &mut self.stats;
        let (dec, bat) = (&mut dec.inner, &mut bat.inner);
        let done = py.allow_threads(|| pump(file, dec, bat, stats, max_frames));
        Ok((batch_list(py, bat.take_ready())?, done))
    }

    /// Close the file (the reader gives no more frames; its counts stay readable).
    fn close(&mut self) {
        if let Some(f) = self.file.as_mut() {
            f.close();
        }
    }
}

/// Decodes frames to packet headers; holds its drop counters and the IP fragments being
/// reassembled.
#[pyclass(module = "wirestream._core", name = "FrameDecoder")]
pub struct PyFrameDecoder {
    inner: Decoder,
}

fn fields_tuple<'py>(py: Python<'py>, p: &Packet) -> PyResult<Bound<'py, PyTuple>> {
    let src = PyBytes::new(py, p.src_ip.get(..p.addr_len()).unwrap_or(&p.src_ip));
    let dst = PyBytes::new(py, p.dst_ip.get(..p.addr_len()).unwrap_or(&p.dst_ip));
    PyTuple::new(py, [
        p.ts_us.into_pyobject(py)?.into_any(),
        p.frame.into_pyobject(py)?.into_any(),
        p.wire_len.into_pyobject(py)?.into_any(),
        p.payload_len.into_pyobject(py)?.into_any(),
        p.seq.into_pyobject(py)?.into_any(),
        p.ack.into_pyobject(py)?.into_any(),
        src.into_any(),
        dst.into_any(),
        p.src_port.into_pyobject(py)?.into_any(),
        p.dst_port.into_pyobject(py)?.into_any(),
        p.window.into_pyobject(py)?.into_any(),
        p.tcp_flags.into_pyobject(py)?.into_any(),
        p.ip_version.into_pyobject(py)?.into_any(),
        p.proto.into_pyobject(py)?.into_any(),
        p.wscale.into_pyobject(py)?.into_any(),
        p.options.into_pyobject(py)?.into_any(),
    ])
}

#[pymethods]
impl PyFrameDecoder {
    #[new]
    #[pyo3(signature = (payload_snaplen = 65535))]
    fn new(payload_snaplen: usize) -> Self {
        PyFrameDecoder { inner: Decoder::new(payload_snaplen) }
    }

    #[getter]
    fn payload_snaplen(&self) -> usize {
        self.inner.payload_snaplen
    }

    /// `(fields, payload)` of a TCP/UDP frame, else None (and the reason is counted).
    fn decode<'py>(
        &mut self,
        py: Python<'py>,
        linktype: i64,
        data: &[u8],
        ts_us: i64,
        orig_len: u32,
        number: u64,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let frame = Frame { number, ts_us, linktype, data, orig_len };
        let Some((packet, payload)) = self.inner.decode(&frame) else { return Ok(None) };
        let fields = fields_tuple(py, &packet)?;
        Ok(Some(PyTuple::new(py, [fields.into_any(), PyBytes::new(py, &payload).into_any()])?))
    }

    /// `{reason: count}` of the frames dropped so far.
    fn dropped<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        counts(py, &self.inner.dropped())
    }

    /// `{counter: value}` of IP fragment reassembly so far (non-zero ones): datagrams
    /// reassembled, fragments timed out, evicted, overlapping, held now.
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        counts(py, &self.inner.counters())
    }
}

/// Per-partition batches of packets (see `wirestream.producers.publisher`).
#[pyclass(module = "wirestream._core", name = "Batcher")]
pub struct PyBatcher {
    inner: Batcher,
}

/// A 16-byte address field from the bytes Python gives (4 or 16, zero-padded).
fn address(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    for (dst, src) in a.iter_mut().zip(b) {
        *dst = *src;
    }
    a
}

fn packet_of(fields: &Bound<'_, PyTuple>) -> PyResult<Packet> {
    if fields.len() != 16 {
        return Err(PyValueError::new_err("a decoded packet has 16 fields"));
    }
    let src: Vec<u8> = fields.get_item(6)?.extract()?;
    let dst: Vec<u8> = fields.get_item(7)?.extract()?;
    Ok(Packet {
        ts_us: fields.get_item(0)?.extract()?,
        frame: fields.get_item(1)?.extract()?,
        wire_len: fields.get_item(2)?.extract()?,
        payload_len: fields.get_item(3)?.extract()?,
        seq: fields.get_item(4)?.extract()?,
        ack: fields.get_item(5)?.extract()?,
        src_ip: address(&src),
        dst_ip: address(&dst),
        src_port: fields.get_item(8)?.extract()?,
        dst_port: fields.get_item(9)?.extract()?,
        window: fields.get_item(10)?.extract()?,
        tcp_flags: fields.get_item(11)?.extract()?,
        ip_version: fields.get_item(12)?.extract()?,
        proto: fields.get_item(13)?.extract()?,
        wscale: fields.get_item(14)?.extract()?,
        options: fields.get_item(15)?.extract()?,
    })
}

#[pymethods]
impl PyBatcher {
    #[new]
    fn new(partitions: u32, batch_packets: u32, batch_bytes: usize) -> Self {
        PyBatcher { inner: Batcher::new(partitions, batch_packets, batch_bytes) }
    }

    /// Packets added since the start.
    #[getter]
    fn packets(&self) -> u64 {
        self.inner.packets
    }

    /// Add one decoded packet (`FrameDecoder.decode` fields); return the batches it
    /// completed (none or one).
    fn add<'py>(&mut self, py: Python<'py>, fields: &Bound<'py, PyTuple>, payload: &[u8]) -> PyResult<Bound<'py, PyList>> {
        let packet = packet_of(fields)?;
        self.inner.add(&packet, payload, &[]);
        batch_list(py, self.inner.take_ready())
    }

    /// Complete every non-empty batch; return all complete batches.
    fn flush<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.inner.flush();
        batch_list(py, self.inner.take_ready())
    }
}

/// A live capture's frames from its rings: filtered, decoded and batched in the core,
/// with the counts `wire.stats` reports (see `producers/live_capture.py`).
#[pyclass(module = "wirestream._core", name = "RingFeed")]
pub struct PyRingFeed {
    feed: Feed,
}

#[pymethods]
impl PyRingFeed {
    /// `user_filter`: drop loopback's sent copies here (no eBPF filter did);
    /// `own_ports`: loopback ports whose packets are left out (our own pipeline's).
    #[new]
    #[pyo3(signature = (user_filter, own_ports = Vec::new()))]
    fn new(user_filter: bool, own_ports: Vec<u16>) -> Self {
        PyRingFeed { feed: Feed { user_filter, own_ports, ..Feed::default() } }
    }

    /// Frames read (loopback copies left out).
    #[getter]
    fn frames(&self) -> u64 {
        self.feed.frames
    }

    #[getter]
    fn loopback_copies(&self) -> u64 {
        self.feed.loopback_copies
    }

    #[getter]
    fn own_packets(&self) -> u64 {
        self.feed.own_packets
    }

    #[getter]
    fn first_ts_us(&self) -> Option<i64> {
        self.feed.first_ts_us
    }

    #[getter]
    fn last_ts_us(&self) -> Option<i64> {
        self.feed.last_ts_us
    }

    /// Read every block of `ring` (a writable mapping of a TPACKET_V3 ring: `block_count`
    /// blocks of `block_size` bytes) the kernel has handed over, from block `next_block`
    /// on, without the GIL; give each block back. Returns the next block to look at and
    /// the batches completed.
    #[allow(clippy::too_many_arguments)]
    fn drain<'py>(
        &mut self,
        py: Python<'py>,
        ring: &Bound<'py, PyAny>,
        next_block: usize,
        block_size: usize,
        block_count: usize,
        decoder: &Bound<'py, PyFrameDecoder>,
        batcher: &Bound<'py, PyBatcher>,
    ) -> PyResult<(usize, Bound<'py, PyList>)> {
        let buffer = PyBuffer::<u8>::get(ring)?;
        if buffer.readonly() || !buffer.is_c_contiguous() {
            return Err(PyValueError::new_err("the ring must be a writable, contiguous mapping"));
        }
        let ring = Ring { base: buffer.buf_ptr() as *mut u8, len: buffer.len_bytes(), block_size, block_count };
        let mut dec = decoder.borrow_mut();
        let mut bat = batcher.borrow_mut();
        let (feed, dec, bat) = (&mut self.feed, &mut dec.inner, &mut bat.inner);
        // SAFETY: `buffer` keeps the mapping alive (and unclosable) until it is dropped,
        // after the drain; the layout is the kernel's TPACKET_V3 ring (af_packet.py).
        let next = {
            let bat = &mut *bat;
            py.allow_threads(move || unsafe { ring.drain(next_block, |f| feed.frame(&f, dec, bat)) })
        };
        drop(buffer);
        Ok((next, batch_list(py, bat.take_ready())?))
    }
}
