//! The Python class of the MySQL parser (`wirestream._core.MysqlConnection`);
//! `processors/l7/mysql.py` turns its events into `wire.queries` records.
//!
//! `data(direction, bytes, ts_us)` returns the events the bytes completed, each a tuple:
//! `("done", command, text, cut, database, plugin, ok, error_code, sqlstate, message,
//! rows, results, affected, request_ts_us, response_ts_us, request_bytes,
//! response_bytes, pipelined)` for a command (or the login: command 255) and its outcome
//! (`ok` None: no response), `("tls", direction, bytes)` after TLS was agreed,
//! `("ssl_request",)`, `("parse_error", reason)`. `gap(direction, ts_us)` and
//! `close(ts_us)` return the commands that go out without a response.
//! `snapshot()` / `restore(bytes)` are the checkpoint.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::python_resp::direction;
use crate::l7::mysql::{Connection, Event};

#[pyclass(module = "wirestream._core", name = "MysqlConnection")]
pub struct PyMysqlConnection {
    inner: Connection,
}

fn event_tuple<'py>(py: Python<'py>, e: &Event) -> PyResult<Bound<'py, PyTuple>> {
    match e {
        Event::Done(d) => {
            let items: Vec<Bound<'py, PyAny>> = vec![
                "done".into_pyobject(py)?.into_any(),
                d.command.into_pyobject(py)?.into_any(),
                PyBytes::new(py, &d.text).into_any(),
                d.cut.into_pyobject(py)?.to_owned().into_any(),
                PyBytes::new(py, &d.database).into_any(),
                PyBytes::new(py, &d.plugin).into_any(),
                d.ok.into_pyobject(py)?.into_any(),
                d.error_code.into_pyobject(py)?.into_any(),
                PyBytes::new(py, &d.sqlstate).into_any(),
                PyBytes::new(py, &d.message).into_any(),
                d.rows.into_pyobject(py)?.into_any(),
                d.results.into_pyobject(py)?.into_any(),
                d.affected.into_pyobject(py)?.into_any(),
                d.request_ts_us.into_pyobject(py)?.into_any(),
                d.response_ts_us.into_pyobject(py)?.into_any(),
                d.request_bytes.into_pyobject(py)?.into_any(),
                d.response_bytes.into_pyobject(py)?.into_any(),
                d.pipelined.into_pyobject(py)?.to_owned().into_any(),
            ];
            PyTuple::new(py, items)
        }
        Event::Tls(d, data) => ("tls", *d, PyBytes::new(py, data)).into_pyobject(py),
        Event::SslRequest => ("ssl_request",).into_pyobject(py),
        Event::Error(e) => ("parse_error", e.name()).into_pyobject(py),
    }
}

fn event_list<'py>(py: Python<'py>, events: &[Event]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for e in events {
        list.append(event_tuple(py, e)?)?;
    }
    Ok(list)
}

#[pymethods]
impl PyMysqlConnection {
    /// `client`: the direction (0 or 1) of the client; `started`: the connection was
    /// seen from its start (the server's handshake first), else it waits for a command.
    #[new]
    #[pyo3(signature = (client, started = true))]
    fn new(client: usize, started: bool) -> PyResult<Self> {
        Ok(PyMysqlConnection { inner: Connection::new(direction(client)?, started) })
    }

    #[getter]
    fn client(&self) -> usize {
        self.inner.client
    }

    /// Chunks skipped while waiting for a packet start (a gap, a mid-connection start).
    #[getter]
    fn skipped(&self) -> u64 {
        self.inner.skipped
    }

    fn data<'py>(&mut self, py: Python<'py>, direction: usize, data: &[u8], ts_us: i64) -> PyResult<Bound<'py, PyList>> {
        let d = self::direction(direction)?;
        let mut out = Vec::new();
        self.inner.feed(d, data, ts_us, &mut out);
        event_list(py, &out)
    }

    fn gap<'py>(&mut self, py: Python<'py>, direction: usize, ts_us: i64) -> PyResult<Bound<'py, PyList>> {
        let d = self::direction(direction)?;
        let mut out = Vec::new();
        self.inner.gap(d, ts_us, &mut out);
        event_list(py, &out)
    }

    fn close<'py>(&mut self, py: Python<'py>, ts_us: i64) -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::new();
        self.inner.close(ts_us, &mut out);
        event_list(py, &out)
    }

    /// The connection inside TLS after the client's SSL request (for decrypted plaintext).
    fn after_ssl(&self) -> Self {
        PyMysqlConnection { inner: self.inner.after_ssl() }
    }

    fn snapshot<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.snapshot())
    }

    #[staticmethod]
    fn restore(data: &[u8]) -> PyResult<Self> {
        Ok(PyMysqlConnection { inner: Connection::restore(data).map_err(PyValueError::new_err)? })
    }
}
