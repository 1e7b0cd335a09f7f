//! The Python class of the HTTP/2 parser (`wirestream._core.H2Connection`);
//! `processors/l7/http2.py` turns its streams into `wire.transactions` records.
//!
//! `data(direction, bytes, ts_us)` returns the events the bytes completed: a finished
//! stream as a dict (the record's fields the core knows: `stream_id`, `method`,
//! `scheme`, `authority`, `path` (redacted with the HTTP/1 rules unless `redact` is off),
//! `status`, `request_headers`, `response_headers` (pseudo-headers left out, values
//! redacted; response trailers are in `trailers`), the four timestamps, body sizes,
//! `grpc_status`, `grpc_message`, gRPC message counts, `unknown_headers`, `error`),
//! `("parse_error", reason)` or `("hpack_error", reason)`. `gap(direction)`,
//! `close()` (the open streams, unanswered), `snapshot()` / `restore(bytes, redact)`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::python_resp::direction;
use crate::l7::h2::{Connection, Event, Stream};
use crate::l7::http::redact::{header_map, redact_target};
use crate::python_http::map_dict;

#[pyclass(module = "wirestream._core", name = "H2Connection")]
pub struct PyH2Connection {
    inner: Connection,
    redact: bool,
}

/// The value of a pseudo-header (or header) `name` in a decoded block.
fn pseudo(block: &[(Vec<u8>, Vec<u8>)], name: &[u8]) -> Option<String> {
    block.iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

fn regular(block: &[(Vec<u8>, Vec<u8>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    block.iter().filter(|(n, _)| n.first() != Some(&b':')).cloned().collect()
}

fn stream_dict<'py>(py: Python<'py>, s: &Stream, redact: bool) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let path = pseudo(&s.request, b":path");
    let path = match (&path, redact) {
        (Some(p), true) => Some(redact_target(p).unwrap_or_else(|| p.clone())),
        _ => path,
    };
    d.set_item("stream_id", s.id)?;
    d.set_item("method", pseudo(&s.request, b":method"))?;
    d.set_item("scheme", pseudo(&s.request, b":scheme"))?;
    d.set_item("authority", pseudo(&s.request, b":authority").or_else(|| pseudo(&s.request, b"host")))?;
    d.set_item("path", path)?;
    d.set_item("status", pseudo(&s.response, b":status").and_then(|v| v.parse::<u16>().ok()))?;
    d.set_item("request_headers", map_dict(py, &header_map(&regular(&s.request), redact))?)?;
    d.set_item("response_headers", map_dict(py, &header_map(&regular(&s.response), redact))?)?;
    d.set_item("trailers", map_dict(py, &header_map(&regular(&s.trailers), redact))?)?;
    // gRPC's status: the trailers', or a trailers-only response's headers'
    let status_of = |block: &[(Vec<u8>, Vec<u8>)]| pseudo(block, b"grpc-status").and_then(|v| v.trim().parse::<u32>().ok());
    d.set_item("grpc_status", status_of(&s.trailers).or_else(|| status_of(&s.response)))?;
    d.set_item("grpc_message", pseudo(&s.trailers, b"grpc-message").or_else(|| pseudo(&s.response, b"grpc-message")))?;
    d.set_item("grpc_request_messages", s.messages[0].count)?;
    d.set_item("grpc_response_messages", s.messages[1].count)?;
    d.set_item("request_ts_us", s.request_ts_us)?;
    d.set_item("request_end_ts_us", s.request_end_ts_us)?;
    d.set_item("response_ts_us", s.response_ts_us)?;
    d.set_item("response_end_ts_us", s.response_end_ts_us)?;
    d.set_item("request_body_size", s.request_body)?;
    d.set_item("response_body_size", s.response_body)?;
    d.set_item("unknown_headers", s.unknown_headers)?;
    d.set_item("error", s.error.as_deref())?;
    Ok(d)
}

fn events<'py>(py: Python<'py>, out: &[Event], redact: bool) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for e in out {
        match e {
            Event::Done(s) => list.append(stream_dict(py, s, redact)?)?,
            Event::Error(e) => list.append(("parse_error", e.name()))?,
            Event::Hpack(name) => list.append(("hpack_error", *name))?,
        }
    }
    Ok(list)
}

#[pymethods]
impl PyH2Connection {
    #[classattr]
    const MAX_STREAMS: usize = crate::l7::h2::MAX_STREAMS;

    /// `client`: the direction of the client (it sends the preface); `started`: the
    /// connection was seen from its start; `redact`: the HTTP/1 redaction of header
    /// values and targets.
    #[new]
    #[pyo3(signature = (client, started = true, redact = true))]
    fn new(client: usize, started: bool, redact: bool) -> PyResult<Self> {
        Ok(PyH2Connection { inner: Connection::new(direction(client)?, started), redact })
    }

    fn data<'py>(&mut self, py: Python<'py>, direction: usize, data: &[u8], ts_us: i64) -> PyResult<Bound<'py, PyList>> {
        let d = self::direction(direction)?;
        let mut out = Vec::new();
        self.inner.feed(d, data, ts_us, &mut out);
        events(py, &out, self.redact)
    }

    fn gap(&mut self, direction: usize) -> PyResult<()> {
        self.inner.gap(self::direction(direction)?);
        Ok(())
    }

    fn close<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::new();
        self.inner.close(&mut out);
        events(py, &out, self.redact)
    }

    /// The HTTP/1.1 request this connection was upgraded from (`Upgrade: h2c`): stream 1.
    #[pyo3(signature = (method, path, authority, request_ts_us, request_end_ts_us, request_body))]
    fn upgraded(&mut self, method: &str, path: &str, authority: Option<&str>, request_ts_us: i64,
                request_end_ts_us: i64, request_body: u64) {
        let mut request = vec![
            (b":method".to_vec(), method.as_bytes().to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":path".to_vec(), path.as_bytes().to_vec()),
        ];
        if let Some(a) = authority {
            request.push((b":authority".to_vec(), a.as_bytes().to_vec()));
        }
        self.inner.upgraded(request, request_ts_us, request_end_ts_us, request_body);
    }

    fn open_streams(&self) -> usize {
        self.inner.open_streams()
    }

    fn snapshot<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.snapshot())
    }

    #[staticmethod]
    #[pyo3(signature = (data, redact = true))]
    fn restore(data: &[u8], redact: bool) -> PyResult<Self> {
        Ok(PyH2Connection { inner: Connection::restore(data).map_err(PyValueError::new_err)?, redact })
    }
}
