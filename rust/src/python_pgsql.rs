//! The Python class of the PostgreSQL parser (`wirestream._core.PgConnection`) and the
//! SQL redaction (`wirestream._core.redact_sql`); `processors/l7/postgres.py` pairs the
//! messages into `wire.queries` records.
//!
//! `data(direction, bytes)` returns the messages that direction completed, each a tuple
//! `(kind, fields, int, size, cut, data_messages, data_bytes)` (rust/src/l7/pgsql:
//! `kind` the type byte as a one-character string or `startup`, `ssl_request`,
//! `gss_request`, `cancel`, `ssl_answer`, `tls`; `fields` bytes), or, when the
//! direction stops on malformed input, `("parse_error", reason)`. `gap(direction)`
//! resets a direction after bytes that were never captured. `snapshot()` /
//! `restore(bytes)` are the checkpoint.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::python_resp::direction;
use crate::l7::pgsql::{Connection, Kind, Message, ParseError};

#[pyclass(module = "wirestream._core", name = "PgConnection")]
pub struct PyPgConnection {
    inner: Connection,
}

fn message_tuple<'py>(py: Python<'py>, m: &Message) -> PyResult<Bound<'py, PyTuple>> {
    let fields = PyList::empty(py);
    if let Kind::Tls(data) = &m.kind {
        fields.append(PyBytes::new(py, data))?;
    }
    for f in &m.fields {
        fields.append(PyBytes::new(py, f))?;
    }
    (m.kind.name(), fields, m.int, m.bytes, m.cut, m.data_messages, m.data_bytes).into_pyobject(py)
}

#[pymethods]
impl PyPgConnection {
    #[classattr]
    const KEEP_BODY: usize = crate::l7::pgsql::KEEP_BODY;

    /// `client`: the direction (0 or 1) that sends the startup message and the queries;
    /// `started`: the connection was seen from its start (False: the capture began in
    /// its middle, and both directions wait for a chunk that starts a message).
    #[new]
    #[pyo3(signature = (client, started = true))]
    fn new(client: usize, started: bool) -> PyResult<Self> {
        Ok(PyPgConnection { inner: Connection::new(direction(client)?, started) })
    }

    #[getter]
    fn client(&self) -> usize {
        self.inner.client
    }

    fn data<'py>(&mut self, py: Python<'py>, direction: usize, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        let d = self::direction(direction)?;
        let mut out: Vec<Result<Message, ParseError>> = Vec::new();
        self.inner.feed(d, data, &mut out);
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

    /// Chunks a direction skipped while waiting for the start of a message.
    fn skipped(&self, direction: usize) -> PyResult<u64> {
        Ok(self.inner.streams[self::direction(direction)?].skipped)
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
        Ok(PyPgConnection { inner: Connection::restore(data).map_err(PyValueError::new_err)? })
    }
}

/// SQL text with its literals as `?`, comments dropped, white space collapsed
/// (rust/src/l7/sql.rs), by the lexical rules of `dialect`: `postgresql` or `mysql`.
#[pyfunction]
#[pyo3(signature = (text, dialect = "postgresql"))]
pub fn redact_sql(text: &[u8], dialect: &str) -> PyResult<String> {
    use crate::l7::sql::{redact_as, Dialect};
    let dialect = match dialect {
        "postgresql" => Dialect::Postgres,
        "mysql" => Dialect::Mysql,
        other => return Err(PyValueError::new_err(format!("no SQL dialect {other:?}: postgresql or mysql"))),
    };
    Ok(redact_as(text, dialect))
}
