//! The Python class of the HTTP/1.x analyser's core (`wirestream._core.HttpConnection`);
//! the `StreamAnalyzer` Python code uses is `processors/l7/http.py`.
//!
//! Each hook (`data`, `gap`, `tick`, `close`) returns None when nothing completed and no
//! counter moved (the usual case for a request segment), else `(transactions, counts)`:
//! `transactions` a list of `(record, findings)`: the `wire.transactions` record as a
//! dict (a copy of the constructor's `template` with the core's fields set, else those
//! alone, in the schema's order; `connection_id` None, for the caller to set: it is
//! computed on demand in Python), its header maps and target already redacted when the
//! connection redacts, and so are its bodies (bytes, None when empty)
//! ([`crate::l7::http::redact`]); `findings` the `Finding` bits of what its request
//! headers and bodies carried in clear (an int, read before redaction); `counts` a list
//! of `(counter, increment)`. Building the record here saves the Python per-header and
//! per-body work (~12 µs a small keep-alive transaction with redaction, docs/core.md).
//! `snapshot()` / `HttpConnection.restore(bytes, redact, endpoints)` are the checkpoint
//! (rust/src/l7/http/state.rs; the record context is the analyser's, given again); a
//! connection that redacts writes what is final of its transactions redacted.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::intern;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::l7::http::redact;
use crate::l7::http::session::Mode;
use crate::l7::http::{state, Connection, Txn, ERRORS, MAX_HELD, MAX_PENDING};

#[pyclass(module = "wirestream._core", name = "HttpConnection")]
pub struct PyHttpConnection {
    inner: Connection,
    /// Redact header values, target and bodies.
    redact: bool,
    /// The records' client_ip, client_port, server_ip, server_port.
    endpoints: [PyObject; 4],
    /// What each record starts as, copied (None: an empty dict): the analyser's dict of
    /// every field at its schema default, so that a record is one table made at once,
    /// never grown key by key as the fields the core and then the Python side set come in.
    template: Option<Py<PyDict>>,
}

/// The Python strings of [`redact::COMMON_NAMES`], made once: a header map's names are
/// mostly these, and a string made once is not decoded and hashed again for each record.
static COMMON_NAMES: GILOnceCell<Vec<Py<PyString>>> = GILOnceCell::new();

pub(crate) fn map_dict<'py>(py: Python<'py>, map: &redact::HeaderMap<'_>) -> PyResult<Bound<'py, PyDict>> {
    let common = COMMON_NAMES.get_or_init(py, || {
        redact::COMMON_NAMES.iter().map(|n| PyString::intern(py, n).unbind()).collect()
    });
    let d = PyDict::new(py);
    for (n, v) in map {
        match redact::common_name(n).and_then(|i| common.get(i)) {
            Some(name) => d.set_item(name.bind(py), v.as_ref())?,
            None => d.set_item(n.as_ref(), v.as_ref())?,
        }
    }
    Ok(d)
}

fn endpoints(endpoints: &Bound<'_, PyTuple>) -> PyResult<[PyObject; 4]> {
    if endpoints.len() != 4 {
        return Err(PyValueError::new_err("endpoints is (client_ip, client_port, server_ip, server_port)"));
    }
    let item = |i| endpoints.get_item(i).map(|o| o.unbind());
    Ok([item(0)?, item(1)?, item(2)?, item(3)?])
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

impl PyHttpConnection {
    /// `(record, header findings)` of a completed transaction (see the module doc).
    fn record<'py>(&self, py: Python<'py>, t: &Txn) -> PyResult<Bound<'py, PyTuple>> {
        let redact::Shown { req_headers: req, resp_headers: resp, path, req_body, resp_body, findings: found } =
            redact::shown(t, self.redact);
        let method = t.method.as_deref().map(String::from_utf8_lossy);
        // HTTP/1.0 for any minor version but 1; a request cut before its version is 1.1
        let protocol = if t.minor.is_none_or(|m| m == 1) { intern!(py, "http/1.1") } else { intern!(py, "http/1.0") };
        let upgrade = t.upgrade.as_deref().map(String::from_utf8_lossy);
        let error = t.error.and_then(|e| ERRORS.get(usize::from(e)).copied());
        let [client_ip, client_port, server_ip, server_port] = &self.endpoints;
        let d = match &self.template {
            Some(template) => template.bind(py).copy()?,
            None => PyDict::new(py),
        };
        d.set_item(intern!(py, "connection_id"), py.None())?;
        d.set_item(intern!(py, "protocol"), protocol)?;
        d.set_item(intern!(py, "client_ip"), client_ip)?;
        d.set_item(intern!(py, "client_port"), client_port)?;
        d.set_item(intern!(py, "server_ip"), server_ip)?;
        d.set_item(intern!(py, "server_port"), server_port)?;
        d.set_item(intern!(py, "request_ts_us"), t.req_ts)?;
        d.set_item(intern!(py, "response_ts_us"), t.resp_end_ts)?;
        d.set_item(intern!(py, "method"), method)?;
        d.set_item(intern!(py, "path"), path)?;
        d.set_item(intern!(py, "host"), redact::get(&req, "host"))?;
        d.set_item(intern!(py, "status"), t.status)?;
        d.set_item(intern!(py, "request_headers"), map_dict(py, &req)?)?;
        d.set_item(intern!(py, "response_headers"), map_dict(py, &resp)?)?;
        d.set_item(intern!(py, "request_body"), opt_bytes(py, &req_body))?;
        d.set_item(intern!(py, "response_body"), opt_bytes(py, &resp_body))?;
        d.set_item(intern!(py, "request_body_size"), t.req_size)?;
        d.set_item(intern!(py, "response_body_size"), t.resp_size)?;
        d.set_item(intern!(py, "latency_us"), t.resp_end_ts.map(|e| i128::from(e) - i128::from(t.req_ts)))?;
        d.set_item(intern!(py, "ttfb_us"), ttfb(t))?;
        d.set_item(intern!(py, "error"), error)?;
        d.set_item(intern!(py, "upgrade"), upgrade)?;
        PyTuple::new(py, [d.into_any(), found.into_pyobject(py)?.into_any()])
    }

    fn result<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        if self.inner.out.is_empty() && self.inner.counts.is_empty() {
            return Ok(None);
        }
        let (out, counts) = self.inner.take();
        let txns = PyList::empty(py);
        for t in &out {
            txns.append(self.record(py, t)?)?;
        }
        let counts = PyList::new(py, counts)?;
        Ok(Some(PyTuple::new(py, [txns.into_any(), counts.into_any()])?))
    }

    /// The last call switched the connection to HTTP/2 (`take_handoff` has it).
    pub(crate) fn has_handoff(&self) -> bool {
        self.inner.handoff.is_some()
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
    /// `redact`: mask header values and the target in the records; `endpoints`: the
    /// records' `(client_ip, client_port, server_ip, server_port)`; `template`: a dict each
    /// record starts as a copy of (its values shared, not copied: immutable ones only).
    #[new]
    #[pyo3(signature = (client_direction, body_cap, response_body_cap, max_header_bytes, response_timeout_us,
                        redact, endpoints, template = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(client_direction: u8, body_cap: u64, response_body_cap: u64, max_header_bytes: usize,
           response_timeout_us: i64, redact: bool, endpoints: &Bound<'_, PyTuple>,
           template: Option<Py<PyDict>>) -> PyResult<Self> {
        if client_direction > 1 {
            return Err(PyValueError::new_err("client_direction is 0 or 1"));
        }
        Ok(PyHttpConnection {
            inner: Connection::new(client_direction, body_cap, response_body_cap, max_header_bytes, response_timeout_us),
            redact,
            endpoints: self::endpoints(endpoints)?,
            template,
        })
    }

    #[classattr]
    const MAX_PENDING: usize = MAX_PENDING;
    #[classattr]
    const MAX_HELD: usize = MAX_HELD;

    /// (also called by the TCP tracker for its attached sessions, rust/src/python_tcp.rs,
    /// with bytes of its own: no Python `bytes` made)
    pub(crate) fn data<'py>(&mut self, py: Python<'py>, direction: u8, data: &[u8], ts_us: i64) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.inner.data(direction, data, ts_us);
        self.result(py)
    }

    fn gap<'py>(&mut self, py: Python<'py>, direction: u8, missing: u64) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.inner.gap(direction, missing);
        self.result(py)
    }

    pub(crate) fn tick<'py>(&mut self, py: Python<'py>, now_us: i64) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.inner.tick(now_us);
        self.result(py)
    }

    fn close<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.inner.close();
        self.result(py)
    }

    /// The state as bytes (rust/src/l7/http/state.rs); when the connection redacts, what is
    /// final of its transactions is held redacted, as the records will show it.
    fn snapshot<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &state::snapshot(&self.inner, self.redact))
    }

    /// A connection from `snapshot()` bytes; `redact`, `endpoints` and `template` as for
    /// the constructor.
    #[staticmethod]
    #[pyo3(signature = (data, redact, endpoints, template = None))]
    fn restore(data: &[u8], redact: bool, endpoints: &Bound<'_, PyTuple>, template: Option<Py<PyDict>>) -> PyResult<Self> {
        let endpoints = self::endpoints(endpoints)?;
        let inner = state::restore(data).map_err(PyValueError::new_err)?;
        Ok(PyHttpConnection { inner, redact, endpoints, template })
    }

    // -- the redaction of the records, for tests and the Python wrappers ------------------

    /// Header pairs (bytes, as sent) -> {lower-case name: value}, repeated names joined
    /// with ", ", values masked by kind when `redact` (as in the records).
    #[staticmethod]
    fn header_map<'py>(py: Python<'py>, pairs: Vec<(Vec<u8>, Vec<u8>)>, redact: bool) -> PyResult<Bound<'py, PyDict>> {
        map_dict(py, &redact::header_map(&pairs, redact))
    }

    /// The kind of redaction a (lower-case) header name needs: 0 none, 1 Authorization,
    /// 2 Cookie, 3 Set-Cookie, 4 a secret as a whole.
    #[staticmethod]
    fn header_kind(name: &str) -> u8 {
        redact::header_kind(name)
    }

    /// The request target with token-like parameters and URL passwords masked; None when
    /// nothing is.
    #[staticmethod]
    fn redact_target(target: &str) -> Option<String> {
        redact::redact_target(target)
    }

    /// `text` split at `sep` with the values of token-like `name=value` parameters masked
    /// (form bodies use it too); None when nothing is.
    #[staticmethod]
    fn mask_params(text: &str, sep: char) -> Option<String> {
        redact::mask_params(text, sep)
    }

    /// A token-like parameter (or JSON member) name: `access_token`, `password`, ...
    #[staticmethod]
    fn secret_param(name: &str) -> bool {
        redact::secret_param(name)
    }

    /// A body with card numbers (and in form / JSON bodies token-like values) masked;
    /// None when nothing is. `truncated`: the body cap cut it.
    #[staticmethod]
    #[pyo3(signature = (body, content_type=None, truncated=false))]
    fn redact_body<'py>(py: Python<'py>, body: &[u8], content_type: Option<&str>, truncated: bool) -> Option<Bound<'py, PyBytes>> {
        redact::redact_body(body, content_type, truncated).map(|b| PyBytes::new(py, &b))
    }

    /// `Finding` bits of what a body carries in clear (password fields, SSNs, cards).
    #[staticmethod]
    #[pyo3(signature = (body, content_type=None))]
    fn body_findings(body: &[u8], content_type: Option<&str>) -> u8 {
        redact::body_findings(body, content_type)
    }

    /// True if `digits` (only ASCII 0-9) passes the Luhn check of card numbers.
    #[staticmethod]
    fn luhn_valid(digits: &str) -> bool {
        redact::luhn_valid(digits.as_bytes())
    }

    /// `Finding` bits of the credentials a (recorded) request header map carries.
    #[staticmethod]
    fn header_findings(headers: Vec<(String, String)>) -> u8 {
        let map: redact::HeaderMap<'_> = headers.into_iter().map(|(n, v)| (n.into(), v.into())).collect();
        redact::header_findings(&map)
    }

    // -- introspection (tests, bounds) ------------------------------------------------

    /// A switch to HTTP/2 (`Upgrade: h2c` answered 101) made by the last call, taken:
    /// None, or (method, target, host, request ts, request end ts, request size, the
    /// client's bytes after the request, the server's after the 101) for the HTTP/2
    /// analyser (processors/l7/http.py).
    #[allow(clippy::type_complexity)]
    fn take_handoff<'py>(&mut self, py: Python<'py>)
        -> Option<(String, String, Option<String>, i64, i64, u64, Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let h = self.inner.handoff.take()?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Some((text(&h.method), text(&h.target), h.host.as_deref().map(text), h.req_ts, h.req_end_ts, h.req_size,
              PyBytes::new(py, &h.client_bytes), PyBytes::new(py, &h.server_bytes)))
    }

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
