//! The Python class of the RESP (Redis) parser (`wirestream._core.RespConnection`);
//! `processors/l7/redis.py` pairs its commands and replies into `wire.queries` records.
//!
//! `data(direction, bytes)` returns the messages that direction completed, each a tuple
//! `(kind, args, elements, error, integer, size)` (rust/src/l7/resp: `kind` the type
//! name, `args` the kept scalars as bytes, `size` its bytes on the wire), or, when the
//! direction stops on malformed input, `("parse_error", reason)`. `gap(direction)`
//! resets a direction after bytes that were never captured. `snapshot()` /
//! `restore(bytes)` are the checkpoint.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::l7::resp::{Connection, Message, ParseError};

#[pyclass(module = "wirestream._core", name = "RespConnection")]
pub struct PyRespConnection {
    inner: Connection,
}

/// A direction argument (0 or 1), or the Python error that says it is not one (shared by
/// the L7 parsers' classes: python_pgsql, python_mysql, python_h2).
pub(crate) fn direction(d: usize) -> PyResult<usize> {
    if d > 1 {
        return Err(PyValueError::new_err(format!("a direction is 0 or 1, not {d}")));
    }
    Ok(d)
}

fn message_tuple<'py>(py: Python<'py>, m: &Message) -> PyResult<Bound<'py, PyTuple>> {
    let args = PyList::empty(py);
    for a in &m.args {
        args.append(PyBytes::new(py, a))?;
    }
    let error = m.error.as_deref().map(|e| PyBytes::new(py, e));
    (m.kind.map(|k| k.name()).unwrap_or("null"), args, m.elements, error, m.integer, m.bytes).into_pyobject(py)
}

#[pymethods]
impl PyRespConnection {
    #[classattr]
    const KEEP_ARGS: usize = crate::l7::resp::KEEP_ARGS;
    #[classattr]
    const KEEP_BYTES: usize = crate::l7::resp::KEEP_BYTES;

    /// `client`: the direction (0 or 1) that sends the commands.
    #[new]
    fn new(client: usize) -> PyResult<Self> {
        Ok(PyRespConnection { inner: Connection::new(direction(client)?) })
    }

    #[getter]
    fn client(&self) -> usize {
        self.inner.client
    }

    fn data<'py>(&mut self, py: Python<'py>, direction: usize, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        let d = self::direction(direction)?;
        let mut out: Vec<Result<Message, ParseError>> = Vec::new();
        self.inner.streams[d].feed(data, &mut out);
        let list = PyList::empty(py);
        for item in &out {
            match item {
                Ok(m) => list.append(message_tuple(py, m)?)?,
                Err(e) => list.append(("parse_error", e.name()).into_pyobject(py)?)?,
            }
        }
        Ok(list)
    }

    fn gap(&mut self, direction: usize) -> PyResult<()> {
        let d = self::direction(direction)?;
        self.inner.streams[d].gap();
        Ok(())
    }

    /// The reason a direction stopped (malformed input), if it did.
    fn broken(&self, direction: usize) -> PyResult<Option<&'static str>> {
        Ok(self.inner.streams[self::direction(direction)?].broken().map(ParseError::name))
    }

    fn snapshot<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.snapshot())
    }

    #[staticmethod]
    fn restore(data: &[u8]) -> PyResult<Self> {
        Ok(PyRespConnection { inner: Connection::restore(data).map_err(PyValueError::new_err)? })
    }
}
