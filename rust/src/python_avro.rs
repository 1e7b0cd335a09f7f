//! The Python classes of the Avro encoder and decoder (`wirestream._core.AvroWriter`,
//! `AvroReader`; Python code reaches them through `wirestream.avro_writer.compile_writer`
//! and `wirestream.avro_reader.compile_reader`).
//!
//! `AvroWriter(schema_json, prefix)` compiles the schema ([`crate::avro`]); calling it
//! with a record (a `dict`, or a `dict` subclass such as
//! `processors.findings.RecordWithFindings`, or any other mapping) gives `prefix` followed
//! by the record's Avro binary encoding, as `bytes`. A schema outside the compiled subset
//! raises `ValueError` (the Python wrapper turns it into `UnsupportedSchema`).
//!
//! Values are read from Python objects as the Python writer this replaces read them:
//! fields by name (one interned `str` per field, so a lookup in a dict whose keys are
//! literals compares pointers), a dict's own storage (`PyDict_GetItem`: a subclass's
//! `__getitem__`/`__missing__` are not called), ints through `__index__` (bool too),
//! doubles through `__float__`, strings as UTF-8, bytes from `bytes`, `bytearray` or
//! any byte buffer, arrays from any iterable but `str`/`bytes`/`dict`, maps from
//! mappings. A value that does not fit raises `TypeError` (wrong kind) or `ValueError`
//! (out of range, missing field, bad enum symbol) naming the record and the path of the
//! value (`Transaction.request_headers["Host"]: expected str, got int`).

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::mpsc::TrySendError;
use std::sync::{Arc, Mutex};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyKeyError, PyOSError, PyOverflowError, PyTypeError, PyUnicodeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyFloat, PyList, PyMapping, PyString, PyTuple};

use crate::avro::{Datum, EncodeError, Fault, Writer};
use crate::avro_read::{Build, ReadError, Reader};
use crate::line_files::{Job, LineFiles};

type Res<T> = Result<T, Fault<PyErr>>;

/// A Python value being encoded, and the interned field names of its schema.
struct PyDatum<'a, 'py> {
    obj: Bound<'py, PyAny>,
    names: &'a [Py<PyString>],
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".to_owned())
}

impl<'a, 'py> PyDatum<'a, 'py> {
    fn child(&self, obj: Bound<'py, PyAny>) -> Self {
        PyDatum { obj, names: self.names }
    }

    fn got(&self, expected: &str) -> Fault<PyErr> {
        Fault::Type(format!("expected {expected}, got {}", type_name(&self.obj)))
    }
}

impl Datum for PyDatum<'_, '_> {
    type Error = PyErr;

    fn is_null(&self) -> bool {
        self.obj.is_none()
    }

    fn truthy(&self) -> Res<bool> {
        self.obj.is_truthy().map_err(Fault::Source)
    }

    fn long(&self) -> Res<i64> {
        let py = self.obj.py();
        // PyLong_AsLongLong: an int (or bool, or anything with __index__); a float is refused
        self.obj.extract::<i64>().map_err(|e| {
            if e.is_instance_of::<PyOverflowError>(py) {
                Fault::Value(format!("{} does not fit an Avro long", self.obj))
            } else if e.is_instance_of::<PyTypeError>(py) {
                self.got("int")
            } else {
                Fault::Source(e)
            }
        })
    }

    fn double(&self) -> Res<f64> {
        if let Ok(f) = self.obj.downcast::<PyFloat>() {
            return Ok(f.value());
        }
        let py = self.obj.py();
        self.obj.extract::<f64>().map_err(|e| {
            if e.is_instance_of::<PyOverflowError>(py) {
                Fault::Value(format!("{} does not fit an Avro double", self.obj))
            } else if e.is_instance_of::<PyTypeError>(py) {
                self.got("float")
            } else {
                Fault::Source(e)
            }
        })
    }

    fn with_str<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Res<R> {
        let Ok(s) = self.obj.downcast::<PyString>() else {
            return Err(self.got("str"));
        };
        match s.to_str() {
            Ok(text) => Ok(f(text.as_bytes())),
            Err(e) if e.is_instance_of::<PyUnicodeError>(self.obj.py()) => {
                Err(Fault::Value(format!("not encodable as UTF-8 ({e})")))
            }
            Err(e) => Err(Fault::Source(e)),
        }
    }

    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Res<R> {
        if let Ok(b) = self.obj.downcast::<PyBytes>() {
            return Ok(f(b.as_bytes()));
        }
        if let Ok(b) = self.obj.downcast::<PyByteArray>() {
            return Ok(f(&b.to_vec()));
        }
        if self.obj.is_instance_of::<PyString>() {
            return Err(self.got("bytes"));
        }
        match PyBuffer::<u8>::get(&self.obj) {
            Ok(buf) => Ok(f(&buf.to_vec(self.obj.py()).map_err(Fault::Source)?)),
            Err(_) => Err(self.got("bytes")),
        }
    }

    fn field(&self, id: usize, name: &str) -> Res<Option<Self>> {
        let py = self.obj.py();
        let owned;
        let key = match self.names.get(id) {
            Some(k) => k.bind(py),
            None => {
                owned = PyString::new(py, name);
                &owned
            }
        };
        if let Ok(d) = self.obj.downcast::<PyDict>() {
            return match d.get_item(key) {
                Ok(v) => Ok(v.map(|v| self.child(v))),
                Err(e) => Err(Fault::Source(e)),
            };
        }
        if let Ok(m) = self.obj.downcast::<PyMapping>() {
            return match m.get_item(key) {
                Ok(v) => Ok(Some(self.child(v))),
                Err(e) if e.is_instance_of::<PyKeyError>(py) => Ok(None),
                Err(e) => Err(Fault::Source(e)),
            };
        }
        Err(self.got("a dict (a record)"))
    }

    fn items(&self) -> Res<Vec<Self>> {
        if let Ok(l) = self.obj.downcast::<PyList>() {
            return Ok(l.iter().map(|v| self.child(v)).collect());
        }
        if let Ok(t) = self.obj.downcast::<PyTuple>() {
            return Ok(t.iter().map(|v| self.child(v)).collect());
        }
        // iterable, but not as an array: a str would be its characters, a dict its keys
        if self.obj.is_instance_of::<PyString>()
            || self.obj.is_instance_of::<PyBytes>()
            || self.obj.is_instance_of::<PyByteArray>()
            || self.obj.is_instance_of::<PyDict>()
        {
            return Err(self.got("a list"));
        }
        let iter = self.obj.try_iter().map_err(|_| self.got("a list"))?;
        iter.map(|v| v.map(|v| self.child(v)).map_err(Fault::Source)).collect()
    }

    fn entries(&self) -> Res<Vec<(Self, Self)>> {
        if let Ok(d) = self.obj.downcast::<PyDict>() {
            // collected before any value is read: reading one may run Python code
            // (`__index__`), which must not find the dict mid-iteration
            return Ok(d.iter().map(|(k, v)| (self.child(k), self.child(v))).collect());
        }
        if let Ok(m) = self.obj.downcast::<PyMapping>() {
            let items = m.items().map_err(Fault::Source)?;
            return items
                .iter()
                .map(|kv| {
                    let (k, v) = kv.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>().map_err(Fault::Source)?;
                    Ok((self.child(k), self.child(v)))
                })
                .collect();
        }
        Err(self.got("a dict (a map)"))
    }
}

/// The Python exception for an encoding error: `TypeError`/`ValueError` naming the
/// record and the path; an error Python raised while a value was read keeps its type if
/// it is neither (the original as the cause otherwise).
fn to_pyerr(py: Python<'_>, record: &str, e: EncodeError<PyErr>) -> PyErr {
    let path = e.path();
    let at = if path.is_empty() { record.to_owned() } else { format!("{record}.{path}") };
    match e.fault {
        Fault::Type(m) => PyTypeError::new_err(format!("{at}: {m}")),
        Fault::Value(m) => PyValueError::new_err(format!("{at}: {m}")),
        Fault::Source(err) => {
            let new = if err.is_instance_of::<PyTypeError>(py) {
                PyTypeError::new_err(format!("{at}: {err}"))
            } else if err.is_instance_of::<PyValueError>(py) {
                PyValueError::new_err(format!("{at}: {err}"))
            } else {
                return err;
            };
            new.set_cause(py, Some(err));
            new
        }
    }
}

/// `AvroWriter(schema_json, prefix=b"")`: `writer(record) -> bytes`.
#[pyclass(module = "wirestream._core", name = "AvroWriter", frozen)]
pub struct PyAvroWriter {
    writer: Writer,
    names: Vec<Py<PyString>>,
    prefix: Vec<u8>,
}

thread_local! {
    /// The encoding buffer of this thread's calls: its capacity is kept from record to
    /// record, so that a record costs no allocation and no regrowth, only the copy into
    /// its `bytes`.
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A buffer that grew beyond this (one huge record) is not kept.
const MAX_KEPT: usize = 1 << 20;

impl PyAvroWriter {
    fn write<'py>(&self, record: &Bound<'py, PyAny>, out: &mut Vec<u8>) -> PyResult<Bound<'py, PyBytes>> {
        let py = record.py();
        out.clear();
        out.extend_from_slice(&self.prefix);
        let datum = PyDatum { obj: record.clone(), names: &self.names };
        self.writer.encode(&datum, out).map_err(|e| to_pyerr(py, self.writer.name(), e))?;
        Ok(PyBytes::new(py, out))
    }
}

#[pymethods]
impl PyAvroWriter {
    #[new]
    #[pyo3(signature = (schema_json, prefix = b"".as_slice()))]
    fn new(py: Python<'_>, schema_json: &str, prefix: &[u8]) -> PyResult<Self> {
        let writer = Writer::from_json(schema_json).map_err(|e| PyValueError::new_err(e.0))?;
        let names = writer.field_names().iter().map(|n| PyString::intern(py, n).unbind()).collect();
        Ok(PyAvroWriter { writer, names, prefix: prefix.to_vec() })
    }

    fn __call__<'py>(&self, record: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        BUFFER.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => {
                let result = self.write(record, &mut buf);
                if buf.capacity() > MAX_KEPT {
                    *buf = Vec::new();
                }
                result
            }
            // re-entered (a value's __index__ encoding another record): a buffer of its own
            Err(_) => self.write(record, &mut Vec::new()),
        })
    }

    /// The encoding of `record` in two parts, without its bytes field `field`'s value:
    /// `(head, tail)`, the encoding being `head + record[field] + tail` (the prefix
    /// included). For a writer that sends the three as they are (`os.writev`): a packet
    /// batch's payloads are never copied into its message.
    fn split<'py>(&self, record: &Bound<'py, PyAny>, field: &str) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let py = record.py();
        let mut out = self.prefix.clone();
        let datum = PyDatum { obj: record.clone(), names: &self.names };
        let at = self.writer.encode_split(&datum, field, &mut out).map_err(|e| to_pyerr(py, self.writer.name(), e))?;
        let (head, tail) = out.split_at(at);
        Ok((PyBytes::new(py, head), PyBytes::new(py, tail)))
    }

    /// The schema's (root record's) name.
    #[getter]
    fn name(&self) -> &str {
        self.writer.name()
    }

    /// The bytes every encoding starts with.
    #[getter]
    fn prefix<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.prefix)
    }

    fn __repr__(&self) -> String {
        format!("<AvroWriter {}>", self.writer.name())
    }
}

/// Decoded values as Python objects (`crate::avro_read`): records and maps are dicts,
/// record keys the schema's interned field names.
struct PyBuild<'a, 'py> {
    py: Python<'py>,
    names: &'a [Py<PyString>],
    strings: &'a mut StringCache,
    /// `AvroReader.views`: the message read, as a memoryview, and where its bytes start;
    /// a bytes value of at least [`VIEW_MIN`] bytes is a slice of it, not a copy
    source: Option<(Bound<'py, PyAny>, usize, usize)>,
}

/// The smallest bytes value `AvroReader.views` gives as a view: a smaller one is copied
/// (a memoryview costs more than copying a few bytes, and small values, a tunnel table,
/// are read as `bytes` by Python code)
const VIEW_MIN: usize = 4096;

/// Short strings a reader has made, to be given again (one more reference) when the same
/// text comes again, rather than made anew. A collector holding tens of thousands of
/// records (`wirestream analyze`'s summary fields) holds the same addresses, hosts,
/// methods, paths, states and source ids over and over: on the bench capture, one object
/// each instead of one per record took its peak from 306 to 273 MB. Bounded:
/// strings of at most [`StringCache::MAX_LEN`] bytes, [`StringCache::MAX_ENTRIES`] of
/// them, all let go when full (a stream of ever-new values costs a lookup and an insert
/// each, and never holds more than that).
#[derive(Default)]
struct StringCache {
    map: std::collections::HashMap<Box<[u8]>, Py<PyString>, FxBuild>,
}

impl StringCache {
    const MAX_LEN: usize = 64;
    const MAX_ENTRIES: usize = 8192;

    fn get<'py>(&mut self, py: Python<'py>, s: &str) -> Bound<'py, PyString> {
        if s.len() > Self::MAX_LEN {
            return PyString::new(py, s);
        }
        if let Some(found) = self.map.get(s.as_bytes()) {
            return found.bind(py).clone();
        }
        if self.map.len() >= Self::MAX_ENTRIES {
            self.map.clear();
        }
        let made = PyString::new(py, s);
        self.map.insert(s.as_bytes().into(), made.clone().unbind());
        made
    }
}

/// FxHash (rustc's): for short keys several times cheaper than the default SipHash, and a
/// cache of a reader's own decoded strings needs no defence against chosen collisions
/// beyond its bound (a worst case is a slower lookup, never more memory).
#[derive(Default, Clone, Copy)]
struct FxBuild;

impl std::hash::BuildHasher for FxBuild {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher(0)
    }
}

struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let word = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Obj<'py> = Bound<'py, PyAny>;

impl<'py> Build for PyBuild<'_, 'py> {
    type Value = Obj<'py>;
    type Error = PyErr;

    fn null(&mut self) -> PyResult<Obj<'py>> {
        Ok(self.py.None().into_bound(self.py))
    }

    fn boolean(&mut self, b: bool) -> PyResult<Obj<'py>> {
        Ok(pyo3::types::PyBool::new(self.py, b).to_owned().into_any())
    }

    fn long(&mut self, n: i64) -> PyResult<Obj<'py>> {
        Ok(n.into_pyobject(self.py)?.into_any())
    }

    fn double(&mut self, x: f64) -> PyResult<Obj<'py>> {
        Ok(PyFloat::new(self.py, x).into_any())
    }

    fn string(&mut self, s: &str) -> PyResult<Obj<'py>> {
        Ok(self.strings.get(self.py, s).into_any())
    }

    fn bytes(&mut self, b: &[u8]) -> PyResult<Obj<'py>> {
        if let Some((view, base, len)) = &self.source {
            // (b is a slice of the message's bytes: its offset in them)
            let start = (b.as_ptr() as usize).wrapping_sub(*base);
            if b.len() >= VIEW_MIN && start.checked_add(b.len()).is_some_and(|end| end <= *len) {
                let slice = pyo3::types::PySlice::new(self.py, start as isize, (start + b.len()) as isize, 1);
                return view.get_item(slice);
            }
        }
        Ok(PyBytes::new(self.py, b).into_any())
    }

    fn symbol(&mut self, s: &str) -> PyResult<Obj<'py>> {
        Ok(self.strings.get(self.py, s).into_any())
    }

    fn list(&mut self) -> PyResult<Obj<'py>> {
        Ok(PyList::empty(self.py).into_any())
    }

    fn push(&mut self, list: &mut Obj<'py>, item: Obj<'py>) -> PyResult<()> {
        list.downcast::<PyList>()?.append(item)
    }

    fn map(&mut self) -> PyResult<Obj<'py>> {
        Ok(PyDict::new(self.py).into_any())
    }

    fn insert(&mut self, map: &mut Obj<'py>, key: &str, value: Obj<'py>) -> PyResult<()> {
        map.downcast::<PyDict>()?.set_item(self.strings.get(self.py, key), value)
    }

    fn record(&mut self) -> PyResult<Obj<'py>> {
        Ok(PyDict::new(self.py).into_any())
    }

    fn set(&mut self, record: &mut Obj<'py>, id: usize, name: &str, value: Obj<'py>) -> PyResult<()> {
        let d = record.downcast::<PyDict>()?;
        match self.names.get(id) {
            Some(key) => d.set_item(key.bind(self.py), value),
            None => d.set_item(PyString::new(self.py, name), value),
        }
    }
}

/// `AvroReader(schema_json, fields=None)`: `reader(data, offset=0) -> record`.
///
/// Decodes the Avro binary body of one record that starts at `data[offset]` (`data` a
/// `bytes`, so that a Confluent-framed message is read without copying its body); with
/// `fields` (an iterable of names), a dict of only those fields of the root record, the
/// others stepped over. A schema outside the compiled subset raises `ValueError` (the
/// Python wrapper turns it into `UnsupportedSchema`); a malformed body raises
/// `ValueError` saying what is wrong and at which offset.
#[pyclass(module = "wirestream._core", name = "AvroReader", frozen)]
pub struct PyAvroReader {
    // (shared with the JSON lines thread's jobs: `JsonLinesFiles.write_avro`)
    reader: Arc<Reader>,
    names: Vec<Py<PyString>>,
    // (see `__call__` for its lock)
    strings: Mutex<StringCache>,
}

impl PyAvroReader {
    fn read<'py>(&self, data: &[u8], offset: usize, build: &mut PyBuild<'_, 'py>) -> PyResult<Bound<'py, PyAny>> {
        self.reader.read(data, offset, build).map_err(|e| match e {
            ReadError::Malformed { .. } => self.malformed(&e),
            ReadError::Source(err) => err,
        })
    }

    /// The `ValueError` of a malformed body: the schema's name, what is wrong, and where.
    fn malformed(&self, e: &dyn std::fmt::Display) -> PyErr {
        PyValueError::new_err(format!("{}: {e}", self.reader.schema().name()))
    }
}

/// A body's offset given from Python: a negative one is a `ValueError`.
fn body_offset(offset: i64) -> PyResult<usize> {
    usize::try_from(offset).map_err(|_| PyValueError::new_err(format!("negative offset {offset}")))
}

#[pymethods]
impl PyAvroReader {
    #[new]
    #[pyo3(signature = (schema_json, fields = None))]
    fn new(py: Python<'_>, schema_json: &str, fields: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let fields: Option<Vec<String>> = match fields {
            None => None,
            Some(f) => Some(f.try_iter()?.map(|n| n?.extract::<String>()).collect::<PyResult<_>>()?),
        };
        let reader = Reader::from_json(schema_json, fields.as_deref()).map_err(|e| PyValueError::new_err(e.0))?;
        let names = reader.schema().field_names().iter().map(|n| PyString::intern(py, n).unbind()).collect();
        Ok(PyAvroReader { reader: Arc::new(reader), names, strings: Mutex::default() })
    }

    #[pyo3(signature = (data, offset = 0))]
    fn __call__<'py>(&self, py: Python<'py>, data: &[u8], offset: i64) -> PyResult<Bound<'py, PyAny>> {
        let offset = body_offset(offset)?;
        // Held with the GIL, so never contended, except by a call made while this one runs
        // (a finalizer run by a garbage collection inside it, or another thread the
        // interpreter switched to then): that call gets a cache of its own, for once.
        let mut held = self.strings.try_lock().ok();
        let mut spare = StringCache::default();
        let strings = match held.as_deref_mut() {
            Some(cache) => cache,
            None => &mut spare,
        };
        let mut build = PyBuild { py, names: &self.names, strings, source: None };
        self.read(data, offset, &mut build)
    }

    /// `views(data, offset=0) -> record`: as a call, except that a bytes value of 4 KiB
    /// or more is a `memoryview` of `data` (read-only, holding `data`), not a copy: a
    /// packet batch's payloads go to the core as they came in the message.
    #[pyo3(signature = (data, offset = 0))]
    fn views<'py>(&self, data: &Bound<'py, PyBytes>, offset: i64) -> PyResult<Bound<'py, PyAny>> {
        let py = data.py();
        let offset = body_offset(offset)?;
        let bytes = data.as_bytes();
        let view = pyo3::types::PyMemoryView::from(data.as_any())?.into_any();
        let mut spare = StringCache::default();
        let mut build = PyBuild {
            py, names: &self.names, strings: &mut spare,
            source: Some((view, bytes.as_ptr() as usize, bytes.len())),
        };
        self.read(bytes, offset, &mut build)
    }

    /// `json_line(data, offset=0) -> bytes`: the body's record as its JSON line, newline
    /// included, the bytes `sinks/jsonl.py`'s `to_json_line` writes for the record this
    /// reader would give (`crate::avro_json`), without making it. Whole records only (a
    /// reader of some fields refuses); a malformed body raises `ValueError` as `__call__`.
    #[pyo3(signature = (data, offset = 0))]
    fn json_line<'py>(&self, py: Python<'py>, data: &[u8], offset: i64) -> PyResult<Bound<'py, PyBytes>> {
        let offset = body_offset(offset)?;
        if self.reader.selects_fields() {
            return Err(PyValueError::new_err("json_line is for a reader of whole records"));
        }
        let mut out = Vec::new();
        let line = crate::avro_json::json_line(&self.reader, data, offset, &mut out).map_err(|e| match e {
            ReadError::Malformed { .. } => self.malformed(&e),
            ReadError::Source(never) => match never {},
        })?;
        Ok(PyBytes::new(py, line))
    }

    /// The schema's (root record's) name.
    #[getter]
    fn name(&self) -> &str {
        self.reader.schema().name()
    }

    fn __repr__(&self) -> String {
        format!("<AvroReader {}>", self.reader.schema().name())
    }
}

/// `JsonLinesFiles(paths)`: JSON lines files written by a thread of their own
/// (`crate::line_files`): `write_avro(file, reader, data, offset)` queues the JSON line
/// of an Avro body (made by that thread, as `AvroReader.json_line` makes it),
/// `write_line(file, line)` a line made by the caller; each file's lines in the order
/// queued (by one Python thread). Jobs are handed to the thread in batches; a full queue
/// makes the caller wait with the GIL let go. `close()` writes what is queued and returns
/// `(lines per file, malformed bodies, the first one's error or None)`; a failed write
/// raises `OSError` there.
#[pyclass(module = "wirestream._core", name = "JsonLinesFiles", frozen)]
pub struct PyJsonLinesFiles {
    files: Mutex<Option<LineFiles>>,
}

impl PyJsonLinesFiles {
    fn queue(&self, py: Python<'_>, job: Job) -> PyResult<()> {
        let closed = || PyValueError::new_err("the JSON lines files are closed");
        let ready = {
            let mut files = self.files.lock().map_err(|_| closed())?;
            files.as_mut().ok_or_else(closed)?.push(job)
        };
        // (the lock let go: a full queue is waited on without it)
        let Some((sender, batch)) = ready else { return Ok(()) };
        let stopped = || PyOSError::new_err("the JSON lines thread has stopped");
        match sender.try_send(batch) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(batch)) => py.allow_threads(move || sender.send(batch)).map_err(|_| stopped()),
            Err(TrySendError::Disconnected(_)) => Err(stopped()),
        }
    }
}

#[pymethods]
impl PyJsonLinesFiles {
    #[new]
    fn new(paths: Vec<PathBuf>) -> PyResult<Self> {
        let files = LineFiles::create(&paths).map_err(PyOSError::new_err)?;
        Ok(PyJsonLinesFiles { files: Mutex::new(Some(files)) })
    }

    fn write_avro(&self, py: Python<'_>, file: usize, reader: PyRef<'_, PyAvroReader>, data: &[u8],
                  offset: usize) -> PyResult<()> {
        if reader.reader.selects_fields() {
            return Err(PyValueError::new_err("json lines are made by a reader of whole records"));
        }
        let job = Job::Avro { file, reader: Arc::clone(&reader.reader), data: data.to_vec(), offset };
        drop(reader);
        self.queue(py, job)
    }

    fn write_line(&self, py: Python<'_>, file: usize, line: &[u8]) -> PyResult<()> {
        self.queue(py, Job::Line { file, line: line.to_vec() })
    }

    fn close(&self, py: Python<'_>) -> PyResult<(Vec<u64>, u64, Option<String>)> {
        let files = self.files.lock().ok().and_then(|mut f| f.take());
        let Some(mut files) = files else { return Ok((Vec::new(), 0, None)) };
        let outcome = py.allow_threads(move || files.close());
        if let Some(err) = outcome.io_error {
            return Err(PyOSError::new_err(format!("writing the JSON lines: {err}")));
        }
        Ok((outcome.lines, outcome.malformed, outcome.first_malformed))
    }
}

/// `json_text(data) -> bytes`: the JSON string literal of `data.decode("utf-8",
/// "replace")`, as
/// `json.dumps(..., ensure_ascii=False)` and orjson write it (`crate::avro_text`).
#[pyfunction]
pub fn json_text<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
    let mut out = Vec::new();
    crate::avro_text::json_string(data, &mut out);
    PyBytes::new(py, &out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyo3::types::PyDictMethods;

    const SCHEMA: &str = r#"{"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "long"},
        {"name": "s", "type": ["null", "string"], "default": null},
        {"name": "b", "type": "bytes", "default": ""},
        {"name": "m", "type": {"type": "map", "values": "double"}, "default": {}},
        {"name": "l", "type": {"type": "array", "items": "boolean"}, "default": []}]}"#;

    fn write(py: Python<'_>, record: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
        let w = PyAvroWriter::new(py, SCHEMA, b"P")?;
        Ok(w.__call__(record)?.as_bytes().to_vec())
    }

    #[test]
    fn dicts_encode_and_errors_name_the_path() {
        pyo3::prepare_freethreaded_python();
        Python::with_gil(|py| {
            let d = PyDict::new(py);
            d.set_item("a", 3).unwrap();
            assert_eq!(write(py, d.as_any()).unwrap(), b"P\x06\x00\x00\x00\x00");
            d.set_item("s", "x").unwrap();
            d.set_item("b", PyBytes::new(py, b"yz")).unwrap();
            let m = PyDict::new(py);
            m.set_item("k", 1).unwrap();
            d.set_item("m", &m).unwrap();
            d.set_item("l", vec![true, false]).unwrap();
            let mut want = b"P\x06\x02\x02x\x04yz\x02\x02k".to_vec();
            want.extend_from_slice(&1f64.to_le_bytes());
            want.extend_from_slice(b"\x00\x04\x01\x00\x00");
            assert_eq!(write(py, d.as_any()).unwrap(), want);

            m.set_item("j", "no").unwrap();
            let e = write(py, d.as_any()).unwrap_err();
            assert!(e.is_instance_of::<PyTypeError>(py));
            assert_eq!(e.value(py).to_string(), "R.m[\"j\"]: expected float, got str");
            m.del_item("j").unwrap();

            d.set_item("a", 1u128 << 70).unwrap();
            let e = write(py, d.as_any()).unwrap_err();
            assert!(e.is_instance_of::<PyValueError>(py));
            assert!(e.value(py).to_string().starts_with("R.a: "));
            d.set_item("a", 1.5).unwrap();
            assert!(write(py, d.as_any()).unwrap_err().is_instance_of::<PyTypeError>(py));
            d.del_item("a").unwrap();
            assert!(write(py, d.as_any()).unwrap_err().is_instance_of::<PyValueError>(py));
            assert!(write(py, 5i64.into_pyobject(py).unwrap().as_any()).unwrap_err().is_instance_of::<PyTypeError>(py));
        });
    }

    #[test]
    fn schemas_outside_the_subset_are_value_errors() {
        pyo3::prepare_freethreaded_python();
        Python::with_gil(|py| {
            let e = PyAvroWriter::new(py, r#"["string", "long"]"#, b"").err().unwrap();
            assert!(e.is_instance_of::<PyValueError>(py));
            assert!(PyAvroWriter::new(py, "{", b"").is_err());
        });
    }
}
