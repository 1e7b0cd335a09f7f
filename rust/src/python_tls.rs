//! The Python class of the TLS analyser's core (`wirestream._core.TlsConnection`) and
//! `looks_like_tls_client_hello`; the `StreamAnalyzer` Python code uses is
//! `processors/l7/tls.py`, which builds the `wire.tls` record (names of versions,
//! cipher suites and alerts from its tables) from what this returns.
//!
//! Each hook (`data`, `gap`, `tick`, `close`) returns None when no handshake completed
//! and no counter moved (the usual case for an encrypted segment), else `(handshake,
//! counts)`: `handshake` None or the tuple `(server_name, version_id, cipher_suite_id,
//! alpn, alpn_offered, client_hello_ts_us, client_hello_seen, handshake_ms, established,
//! alert_description, alert_level, alert_from, resumed, hello_retry_request, error)`,
//! `counts` a list of `(counter, increment)`. `snapshot()` / `TlsConnection.restore(bytes)`
//! are the checkpoint (rust/src/l7/tls/state.rs).
//!
//! Decryption (issue 19): `KeyLog.load(path)` reads an NSS key log once per process
//! (its bytes stay in this process's memory; no message shows them); a `TlsConnection`
//! given it decrypts, and `take_plaintext()` returns what was decrypted since the last
//! call, `[(direction, bytes, ts_us), ...]`, for the HTTP analyser. The counters of
//! decryption (`tls_decrypted_records`, `tls_decrypt_drop.<reason>`) come with the
//! connection's end (`close`).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use std::sync::Arc;

use crate::l7::tls::record::{Reading, MAX_RECORD};
use crate::l7::tls::{looks_like_client_hello, state, Connection, Handshake};
use crate::tls_decrypt::KeyLog;

/// A parsed NSS key log, shared by every connection of the process.
#[pyclass(module = "wirestream._core", name = "TlsKeyLog", frozen)]
pub struct PyKeyLog {
    inner: Arc<KeyLog>,
}

#[pymethods]
impl PyKeyLog {
    /// From the key log's bytes.
    #[new]
    fn new(data: &[u8]) -> Self {
        PyKeyLog { inner: Arc::new(KeyLog::parse(data)) }
    }

    /// Read and parse the file at `path`; an OSError naming the path (never its contents).
    #[staticmethod]
    fn load(path: std::path::PathBuf) -> PyResult<Self> {
        let data = std::fs::read(&path).map_err(|e| {
            pyo3::exceptions::PyOSError::new_err(format!("{}: cannot read the TLS key log: {e}", path.display()))
        })?;
        Ok(PyKeyLog { inner: Arc::new(KeyLog::parse(&data)) })
    }

    /// Secrets taken (lines).
    #[getter]
    fn entries(&self) -> u64 {
        self.inner.entries
    }

    /// Lines of labels we do not use (early traffic, exporter, ...).
    #[getter]
    fn ignored(&self) -> u64 {
        self.inner.ignored
    }

    /// Lines that are not key log entries (skipped).
    #[getter]
    fn bad(&self) -> u64 {
        self.inner.bad
    }

    /// Client randoms with at least one secret.
    #[getter]
    fn sessions(&self) -> usize {
        self.inner.by_random.len()
    }

    /// Counts only: a key log's repr must not show a secret.
    fn __repr__(&self) -> String {
        format!("TlsKeyLog(sessions={}, entries={}, ignored={}, bad={})", self.inner.by_random.len(), self.inner.entries, self.inner.ignored, self.inner.bad)
    }
}

#[pyclass(module = "wirestream._core", name = "TlsConnection")]
pub struct PyTlsConnection {
    inner: Connection,
}

fn handshake_tuple<'py>(py: Python<'py>, h: Handshake) -> PyResult<Bound<'py, PyTuple>> {
    let items: Vec<PyObject> = vec![
        h.server_name.into_pyobject(py)?.into_any().unbind(),
        h.version.into_pyobject(py)?.into_any().unbind(),
        h.cipher.into_pyobject(py)?.into_any().unbind(),
        h.alpn.into_pyobject(py)?.into_any().unbind(),
        h.alpn_offered.into_pyobject(py)?.into_any().unbind(),
        h.hello_ts.into_pyobject(py)?.into_any().unbind(),
        h.client_hello_seen.into_pyobject(py)?.to_owned().into_any().unbind(),
        h.handshake_ms.into_pyobject(py)?.into_any().unbind(),
        h.established.into_pyobject(py)?.to_owned().into_any().unbind(),
        h.alert.into_pyobject(py)?.into_any().unbind(),
        h.alert_level.map(|l| l.name()).into_pyobject(py)?.into_any().unbind(),
        h.alert_from.into_pyobject(py)?.into_any().unbind(),
        h.resumed.into_pyobject(py)?.to_owned().into_any().unbind(),
        h.hello_retry_request.into_pyobject(py)?.to_owned().into_any().unbind(),
        h.error.map(|e| e.name()).into_pyobject(py)?.into_any().unbind(),
    ];
    PyTuple::new(py, items)
}

impl PyTlsConnection {
    fn result<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        if self.inner.out.is_none() && self.inner.counts.is_empty() {
            return Ok(None);
        }
        let (out, counts) = self.inner.take();
        let hs = match out {
            Some(h) => handshake_tuple(py, h)?.into_any(),
            None => py.None().into_bound(py),
        };
        let counts = counts.into_pyobject(py)?.into_any();
        Ok(Some(PyTuple::new(py, [hs, counts])?))
    }
}

#[pymethods]
impl PyTlsConnection {
    #[new]
    #[pyo3(signature = (client_direction, response_timeout_us, keylog=None))]
    fn new(client_direction: u8, response_timeout_us: i64, keylog: Option<&PyKeyLog>) -> PyResult<Self> {
        if client_direction > 1 {
            return Err(PyValueError::new_err("client_direction is 0 or 1"));
        }
        let inner = Connection::new(client_direction, response_timeout_us).with_keylog(keylog.map(|k| k.inner.clone()));
        Ok(PyTlsConnection { inner })
    }

    /// Plaintext decrypted since the last call: `[(direction, bytes, ts_us), ...]`.
    fn take_plaintext<'py>(&mut self, py: Python<'py>) -> Vec<(u8, Bound<'py, PyBytes>, i64)> {
        self.inner.take_plain().into_iter().map(|(d, b, ts)| (d, PyBytes::new(py, &b), ts)).collect()
    }

    /// Decrypting (given a key log, or restored with one)?
    fn decrypting(&self) -> bool {
        self.inner.decrypt.is_some()
    }

    #[classattr]
    const MAX_RECORD: u64 = MAX_RECORD;

    /// (also called by the TCP tracker for its attached sessions, rust/src/python_tcp.rs,
    /// with bytes of its own: no Python `bytes` made)
    pub(crate) fn data<'py>(&mut self, py: Python<'py>, direction: u8, data: &[u8], ts_us: i64) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.inner.data(direction, data, ts_us);
        self.result(py)
    }

    fn gap<'py>(&mut self, py: Python<'py>, direction: u8, missing: i64) -> PyResult<Option<Bound<'py, PyTuple>>> {
        if missing > 0 {
            self.inner.gap(direction, missing.unsigned_abs());
        }
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

    /// The state as bytes (rust/src/l7/tls/state.rs).
    fn snapshot<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &state::snapshot(&self.inner))
    }

    /// From `snapshot()`'s bytes; `keylog`: decrypt again (the keys are not in the bytes).
    #[staticmethod]
    #[pyo3(signature = (data, keylog=None))]
    fn restore(data: &[u8], keylog: Option<&PyKeyLog>) -> PyResult<Self> {
        state::restore(data, keylog.map(|k| k.inner.clone())).map(|inner| PyTlsConnection { inner }).map_err(PyValueError::new_err)
    }

    // -- introspection (tests, bounds) ------------------------------------------------

    /// The handshake phase: "start", "client_hello", "retry", "retry_hello",
    /// "server_hello" or "done".
    fn phase(&self) -> &'static str {
        self.inner.phase.name()
    }

    /// The server sent a message only a full (not resumed) TLS <= 1.2 handshake sends
    /// (Certificate, ServerKeyExchange, CertificateRequest, ServerHelloDone).
    fn full_handshake(&self) -> bool {
        self.inner.full_handshake
    }

    /// The record layer of `direction`: "parse", "resync" or "dead".
    fn reading(&self, direction: u8) -> &'static str {
        match self.inner.sides[usize::from(direction & 1)].state {
            Reading::Parse => "parse",
            Reading::Resync => "resync",
            Reading::Dead => "dead",
        }
    }

    /// Bytes buffered in `direction`: (unparsed record bytes, handshake bytes not yet a
    /// complete message).
    fn buffered(&self, direction: u8) -> (usize, usize) {
        let s = &self.inner.sides[usize::from(direction & 1)];
        (s.buf.len(), s.hs.len())
    }
}

/// Is `data` (the first bytes one side sent) the start of a TLS ClientHello? True /
/// False, or None when more bytes are needed to say (rust/src/l7/tls/record.rs).
#[pyfunction]
pub fn looks_like_tls_client_hello(data: &[u8]) -> Option<bool> {
    looks_like_client_hello(data)
}
