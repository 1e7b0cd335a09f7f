//! The Python class of the Kafka protocol parser (`wirestream._core.KafkaConnection`);
//! `processors/l7/kafka.py` pairs its requests and responses into `wire.messaging`
//! records.
//!
//! `data(direction, bytes)` and `gap(direction, missing)` return the messages that the
//! direction completed, each a dict of [`Message`]'s fields (rust/src/l7/kafka).
//! `snapshot()` / `restore(bytes)` are the checkpoint.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::l7::kafka::records::compression_name;
use crate::l7::kafka::{apis, Connection, Message};
use crate::python_resp::direction;

#[pyclass(module = "wirestream._core", name = "KafkaConnection")]
pub struct PyKafkaConnection {
    inner: Connection,
}

fn message_dict<'py>(py: Python<'py>, m: &Message) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("response", m.response)?;
    d.set_item("correlation_id", m.correlation_id)?;
    d.set_item("api_key", m.api_key)?;
    d.set_item("api", apis::name(m.api_key))?;
    d.set_item("api_version", m.api_version)?;
    d.set_item("client_id", m.client_id.as_deref())?;
    d.set_item("size", m.size)?;
    d.set_item("topics", PyList::new(py, &m.topics)?)?;
    d.set_item("topics_more", m.topics_more)?;
    d.set_item("partitions", m.partitions)?;
    d.set_item("records", m.records)?;
    d.set_item("record_bytes", m.record_bytes)?;
    d.set_item("batches", m.batches)?;
    d.set_item("partial_batches", m.partial_batches)?;
    d.set_item("compression", m.compression.map(compression_name))?;
    d.set_item("group_id", m.group_id.as_deref())?;
    d.set_item("acks", m.acks)?;
    d.set_item("transactional", m.transactional)?;
    d.set_item("error_code", m.error_code)?;
    d.set_item("errors", m.errors)?;
    d.set_item("throttle_ms", m.throttle_ms)?;
    d.set_item("parse_error", m.parse_error)?;
    d.set_item("topic_ids", PyList::new(py, &m.topic_ids)?)?;
    Ok(d)
}

fn message_list<'py>(py: Python<'py>, out: &[Message]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for m in out {
        list.append(message_dict(py, m)?)?;
    }
    Ok(list)
}

#[pymethods]
impl PyKafkaConnection {
    #[classattr]
    const MAX_PENDING: usize = crate::l7::kafka::MAX_PENDING;
    #[classattr]
    const MAX_BODY: usize = crate::l7::kafka::MAX_BODY;

    /// `client`: the direction (0 or 1) that sends the requests.
    #[new]
    fn new(client: usize) -> PyResult<Self> {
        Ok(PyKafkaConnection { inner: Connection::new(direction(client)?) })
    }

    #[getter]
    fn client(&self) -> usize {
        self.inner.client
    }

    fn data<'py>(&mut self, py: Python<'py>, direction: usize, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        let d = self::direction(direction)?;
        let mut out = Vec::new();
        self.inner.feed(d, data, &mut out);
        message_list(py, &out)
    }

    fn gap<'py>(&mut self, py: Python<'py>, direction: usize, missing: usize) -> PyResult<Bound<'py, PyList>> {
        let d = self::direction(direction)?;
        let mut out = Vec::new();
        self.inner.gap(d, missing, &mut out);
        message_list(py, &out)
    }

    /// Bytes a direction skipped while out of step, and its frames with a header that
    /// was not plausible.
    fn skipped(&self, direction: usize) -> PyResult<(u64, u64)> {
        let d = &self.inner.dirs[self::direction(direction)?];
        Ok((d.skipped, d.bad_frames))
    }

    /// Bytes held (both directions' buffers) and requests waiting.
    fn held(&self) -> (usize, usize) {
        (self.inner.dirs[0].held() + self.inner.dirs[1].held(), self.inner.pending.len())
    }

    fn snapshot<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.snapshot())
    }

    #[staticmethod]
    fn restore(data: &[u8]) -> PyResult<Self> {
        Ok(PyKafkaConnection { inner: Connection::restore(data).map_err(PyValueError::new_err)? })
    }
}

/// A Kafka API key's name and the highest version Kafka 4.4 speaks, if it is one.
#[pyfunction]
pub fn kafka_api(key: i16) -> Option<(&'static str, i16)> {
    Some((apis::name(key)?, apis::highest(key)?))
}
