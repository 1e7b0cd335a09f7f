//! The Python class of the HTTP/1.x analyser's core (`wirestream._core.HttpConnection`);
//! the `StreamAnalyzer` Python code uses is `processors/l7/http.py`, which builds the
//! records (header maps, redaction, findings) from what this returns.
//!
//! Each hook (`data`, `gap`, `tick`, `close`) returns None when nothing completed and no
//! counter moved (the usual case for a request segment), else `(transactions, counts)`:
//! `transactions` a list of tuples `(method, target, version, request_headers,
//! request_body, request_body_size, response_headers, response_body, response_body_size,
//! status, request_ts, ttfb, response_end_ts, error, upgrade)`
//! (headers as lists of `(name, value)` bytes pairs as sent, bodies None when empty,
//! response headers None when there is no final status), `counts` a list of `(counter,
//! increment)`. `snapshot()` / `HttpConnection.restore(bytes)` are the checkpoint
//! (rust/src/l7/http/state.rs).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::l7::http::session::Mode;
use crate::l7::http::{state, Connection, Txn, ERRORS, MAX_HELD, MAX_PENDING};

#[pyclass(module = "wirestream._core", name = "HttpConnection")]
pub struct PyHttpConnection {
    inner: Connection,
}

fn headers<'py>(py: Python<'py>, fields: &[(Vec<u8>, Vec<u8>)]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for (n, v) in fields {
        list.append((PyBytes::new(py, n), PyBytes::new(py, v)))?;
    }
    Ok(list)
}

fn opt_bytes<'py>(py: Python<'py>, b: &[u8]) -> Option<Bound<'py, PyBytes>> {
    (!b.is_empty()).then(|| PyBytes::new(py, b))
}

/// Last request byte -> first byte of the final response; an early response (before the
/// request ended) counts as 0, not negative.
fn ttfb(t: &Txn) -> Option<i64> {
    match (t.resp_ts, t.req_end_ts) {
        (Some(a), Some(b)) if t.resp_done => Some(a.saturating_sub(b).max(0)),
        _ => None,
    }
}

fn txn_tuple<'py>(py: Python<'py>, t: &Txn) -> PyResult<Bound<'py, PyTuple>> {
    let method = t.method.as_deref().map(|m| String::from_utf8_lossy(m).into_owned());
    let version = t.minor.map(|m| if m == 1 { "1.1" } else { "1.0" });
    let resp_headers = if t.status.is_some() && !t.resp_headers.is_empty() {
        Some(headers(py, &t.resp_headers)?)
    } else {
        None // (the headers of an interim response alone are not the response's)
    };
    let upgrade = t.upgrade.as_deref().map(|u| String::from_utf8_lossy(u).into_owned());
    let error = t.error.and_then(|e| ERRORS.get(usize::from(e)).copied());
    let items: Vec<PyObject> = vec![
        method.into_pyobject(py)?.into_any().unbind(),
        PyBytes::new(py, &t.url).into_any().unbind(),
        version.into_pyobject(py)?.into_any().unbind(),
        headers(py, &t.req_headers)?.into_any().unbind(),
        opt_bytes(py, &t.req_body).into_pyobject(py)?.into_any().unbind(),
        t.req_size.into_pyobject(py)?.into_any().unbind(),
        resp_headers.into_pyobject(py)?.into_any().unbind(),
        opt_bytes(py, &t.resp_body).into_pyobject(py)?.into_any().unbind(),
        t.resp_size.into_pyobject(py)?.into_any().unbind(),
        t.status.into_pyobject(py)?.into_any().unbind(),
        t.req_ts.into_pyobject(py)?.into_any().unbind(),
        ttfb(t).into_pyobject(py)?.into_any().unbind(),
        t.resp_end_ts.into_pyobject(py)?.into_any().unbind(),
        error.into_pyobject(py)?.into_any().unbind(),
        upgrade.into_pyobject(py)?.into_any().unbind(),
    ];
    PyTuple::new(py, items)
}

impl PyHttpConnection {
    fn result<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        if self.inner.out.is_empty() && self.inner.counts.is_empty() {
            return Ok(None);
        }
        let (out, counts) = self.inner.take();
        let txns = PyList::empty(py);
        for t in &out {
            txns.append(txn_tuple(py, t)?)?;
        }
        let counts = PyList::new(py, counts)?;
        Ok(Some(PyTuple::new(py, [txns.into_any(), counts.into_any()])?))
    }

    fn side(&self, direction: u8) -> &crate::l7::http::session::Side {
        if direction == self.inner.client {
            &self.inner.req
        } else {
            &self.inner.resp
        }
    }
}

#[pymethods]
impl PyHttpConnection {
    #[new]
    fn new(client_direction: u8, body_cap: u64, response_body_cap: u64, max_header_bytes: usize,
           response_timeout_us: i64) -> PyResult<Self> {
        if client_direction > 1 {
            return Err(PyValueError::new_err("client_direction is 0 or 1"));
        }
        Ok(PyHttpConnection {
            inner: Connection::new(client_direction, body_cap, response_body_cap, max_header_bytes, response_timeout_us),
        })
    }

    #[classattr]
    const MAX_PENDING: usize = MAX_PENDING;
    #[classattr]
    const MAX_HELD: usize = MAX_HELD;

    fn data<'py>(&mut self, py: Python<'py>, direction: u8, data: &[u8], ts_us: i64) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.inner.data(direction, data, ts_us);
        self.result(py)
    }

    fn gap<'py>(&mut self, py: Python<'py>, direction: u8, missing: u64) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.inner.gap(direction, missing);
        self.result(py)
    }

    fn tick<'py>(&mut self, py: Python<'py>, now_us: i64) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.inner.tick(now_us);
        self.result(py)
    }

    fn close<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.inner.close();
        self.result(py)
    }

    /// The state as bytes (rust/src/l7/http/state.rs).
    fn snapshot<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &state::snapshot(&self.inner))
    }

    #[staticmethod]
    fn restore(data: &[u8]) -> PyResult<Self> {
        state::restore(data).map(|inner| PyHttpConnection { inner }).map_err(PyValueError::new_err)
    }

    // -- introspection (tests, bounds) ------------------------------------------------

    /// Requests waiting for their response.
    fn pending_count(&self) -> usize {
        self.inner.pending.len()
    }

    /// Client bytes held while an Upgrade/CONNECT request waits for its answer.
    fn held_bytes(&self) -> usize {
        self.inner.held.len()
    }

    /// The state of `direction`: "parse", "resync", "wait" or "tunnel".
    fn mode(&self, direction: u8) -> &'static str {
        self.side(direction).mode.name()
    }

    /// Resync bytes kept (a message start split across segments) and their bound.
    fn tail_len(&self, direction: u8) -> (usize, usize) {
        let limit = if direction == self.inner.client {
            crate::l7::http::session::REQ_TAIL_LIMIT
        } else {
            crate::l7::http::session::RESP_TAIL_LIMIT
        };
        (self.side(direction).tail.len(), limit)
    }

    /// Inside a message's head / body in `direction`.
    fn in_head(&self, direction: u8) -> bool {
        let s = self.side(direction);
        s.mode == Mode::Parse && s.cur.is_some() && s.parser.in_head()
    }

    fn in_body(&self, direction: u8) -> bool {
        let s = self.side(direction);
        s.mode == Mode::Parse && s.cur.is_some() && !s.parser.in_head()
    }
}
