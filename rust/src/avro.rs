//! Avro binary encoding of output records, compiled from their schema.
//!
//! Takes a parsed Avro schema (JSON) and gives a [`Writer`]: an encoder tree, one
//! [`Node`] per type, that encodes a record (any [`Datum`]: a Python dict through
//! `python_avro.rs`, a JSON value here for defaults and tests) into Avro binary exactly
//! as fastavro's `schemaless_writer` does. Every output record the packet worker
//! publishes goes through it (`wirestream/avro_writer.py`, `wirestream/codec.py`):
//! walking a compiled tree in Rust is several times cheaper than fastavro's per-record
//! schema walk or the straight-line Python this replaces.
//!
//! The subset compiled (everything `schemas/*.avsc` use for records written this way):
//! records (nested, recursive through named references), the primitives, enums, fixed,
//! arrays, maps, one-branch unions and two-branch unions of which one branch is
//! `"null"` (the `["null", T]` of an optional field), and field defaults. Anything else
//! (a union of two non-null types, whose branch fastavro picks by trying each in turn;
//! logical types, which fastavro converts from Python objects) is refused with a
//! [`SchemaError`], and the caller uses fastavro.
//!
//! The encoding (https://avro.apache.org/docs/1.11.1/specification/#binary-encoding):
//! `int`/`long` zig-zag then base-128 varint; `float`/`double` little-endian IEEE;
//! `string`/`bytes` a long length then the bytes; `boolean` one byte; a union's branch
//! index as a long then the value; enums their symbol's index; fixed its bytes. Maps and
//! arrays as fastavro writes them: nothing but `0` when empty, else one block (its
//! positive count, no byte size) then `0`.
//!
//! Value rules are the Python writer's this replaces (the same records encode, the same
//! ones fail): a boolean is the value's truth; an `int` is written as a long (fastavro
//! does not range-check it either); a missing field takes its default, pre-encoded at
//! compile time, and a missing field without one is an error (fastavro would write null
//! for an optional one; a record missing a field is a bug upstream). Errors name the
//! path of the value from the record (`http.headers["Host"]`, `answers[2].ttl`).

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

/// Index of a node in [`Writer`]'s arena (named types are referenced by index, which
/// lets a record contain itself).
pub type NodeId = usize;

/// Nesting beyond this many records/arrays/maps is refused, in schemas and in values
/// (a record that contains itself would otherwise recurse until the stack overflows).
pub const MAX_DEPTH: usize = 100;

/// One type of the compiled schema.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed { size: usize },
    Enum { symbols: Vec<String> },
    Array(NodeId),
    Map(NodeId),
    /// A two-branch union with a `"null"` branch: its index, then the other branch.
    Nullable { null_index: u8, other: NodeId },
    /// A one-branch union: branch index 0, then the value.
    Single(NodeId),
    Record { fields: Vec<Field> },
    /// A named type being compiled (replaced when its definition is complete).
    Pending,
}

/// One field of a record.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    /// Index of the field in [`Writer::field_names`], over all records of the schema
    /// (the Python side keeps one interned name per id).
    pub id: usize,
    pub node: NodeId,
    /// The encoding of the field's default, written when a record lacks the field.
    pub default: Option<Vec<u8>>,
}

/// The schema is not one this module compiles (or not a valid schema).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError(pub String);

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SchemaError {}

/// Why a value does not encode.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault<E> {
    /// A value of the wrong kind (a str where an int goes): Python's `TypeError`.
    Type(String),
    /// A value of the right kind that does not fit (out of range, unknown enum symbol,
    /// missing field): Python's `ValueError`.
    Value(String),
    /// An error of the datum's own (a Python exception raised while reading it).
    Source(E),
}

/// One step of the path from the record to the value that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Field(String),
    Index(usize),
    Key(String),
}

/// A value that does not encode, and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodeError<E> {
    pub fault: Fault<E>,
    /// Innermost step first (pushed while the error unwinds).
    steps: Vec<Step>,
}

impl<E> EncodeError<E> {
    fn at(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// `a.b[3]["k"]`: the path from the record to the value (empty for the record).
    pub fn path(&self) -> String {
        let mut s = String::new();
        for step in self.steps.iter().rev() {
            match step {
                Step::Field(name) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(name);
                }
                Step::Index(i) => s.push_str(&format!("[{i}]")),
                Step::Key(k) => s.push_str(&format!("[{k:?}]")),
            }
        }
        s
    }
}

impl<E> From<Fault<E>> for EncodeError<E> {
    fn from(fault: Fault<E>) -> Self {
        EncodeError { fault, steps: Vec::new() }
    }
}

type Res<T, E> = Result<T, Fault<E>>;

/// What the encoder reads a value through. Each method either gives the value as the
/// schema's type wants it, or says why it cannot ([`Fault::Type`] naming what it got).
pub trait Datum: Sized {
    type Error;
    fn is_null(&self) -> bool;
    /// The value's truth (a boolean field is written as `bool(value)`).
    fn truthy(&self) -> Res<bool, Self::Error>;
    fn long(&self) -> Res<i64, Self::Error>;
    fn double(&self) -> Res<f64, Self::Error>;
    /// Calls `f` with the UTF-8 bytes of a string.
    fn with_str<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Res<R, Self::Error>;
    /// Calls `f` with the bytes of a bytes value.
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Res<R, Self::Error>;
    /// The field `name` (number `id` of [`Writer::field_names`]) of a record, `None` if
    /// the record lacks it.
    fn field(&self, id: usize, name: &str) -> Res<Option<Self>, Self::Error>;
    /// The items of an array.
    fn items(&self) -> Res<Vec<Self>, Self::Error>;
    /// The entries (key, value) of a map.
    fn entries(&self) -> Res<Vec<(Self, Self)>, Self::Error>;
}

/// Appends an Avro `long`: zig-zag, then base-128 varint, low group first.
pub fn write_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7F) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn write_len<E>(out: &mut Vec<u8>, n: usize) -> Res<(), E> {
    let n = i64::try_from(n).map_err(|_| Fault::Value(format!("length {n} does not fit an Avro long")))?;
    write_long(out, n);
    Ok(())
}

fn write_blob<E>(out: &mut Vec<u8>, b: &[u8]) -> Res<(), E> {
    write_len(out, b.len())?;
    out.extend_from_slice(b);
    Ok(())
}

/// A compiled schema.
#[derive(Debug, Clone)]
pub struct Writer {
    nodes: Vec<Node>,
    root: NodeId,
    field_names: Vec<String>,
    name: String,
}

const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];

fn primitive(t: &str) -> Option<Node> {
    Some(match t {
        "null" => Node::Null,
        "boolean" => Node::Boolean,
        "int" => Node::Int,
        "long" => Node::Long,
        "float" => Node::Float,
        "double" => Node::Double,
        "bytes" => Node::Bytes,
        "string" => Node::String,
        _ => return None,
    })
}

struct Compiler {
    nodes: Vec<Node>,
    named: HashMap<String, NodeId>,
    field_names: Vec<String>,
    /// (record node, field index, default): encoded once every type is complete.
    defaults: Vec<(NodeId, usize, Value)>,
}

fn err<T>(msg: impl Into<String>) -> Result<T, SchemaError> {
    Err(SchemaError(msg.into()))
}

impl Compiler {
    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The full name of a named type and the namespace its contents inherit.
    fn full_name(obj: &serde_json::Map<String, Value>, ns: &str) -> Result<(String, String), SchemaError> {
        let Some(name) = obj.get("name").and_then(Value::as_str) else {
            return err("a named type without a name");
        };
        if let Some((space, _)) = name.rsplit_once('.') {
            return Ok((name.to_owned(), space.to_owned()));
        }
        let space = match obj.get("namespace") {
            Some(Value::String(s)) => s.as_str(),
            Some(Value::Null) | None => ns,
            Some(_) => return err(format!("{name}: namespace is not a string")),
        };
        let full = if space.is_empty() { name.to_owned() } else { format!("{space}.{name}") };
        Ok((full, space.to_owned()))
    }

    fn define(&mut self, full: String) -> Result<NodeId, SchemaError> {
        if self.named.contains_key(&full) || PRIMITIVES.contains(&full.as_str()) {
            return err(format!("type {full} defined twice"));
        }
        let id = self.push(Node::Pending);
        self.named.insert(full, id);
        Ok(id)
    }

    fn reference(&self, name: &str, ns: &str) -> Result<NodeId, SchemaError> {
        let qualified = if name.contains('.') || ns.is_empty() { None } else { Some(format!("{ns}.{name}")) };
        qualified
            .and_then(|q| self.named.get(&q))
            .or_else(|| self.named.get(name))
            .copied()
            .ok_or_else(|| SchemaError(format!("unknown type {name:?}")))
    }

    fn is_null_branch(s: &Value) -> bool {
        match s {
            Value::String(t) => t == "null",
            Value::Object(o) => o.get("type").and_then(Value::as_str) == Some("null") && !o.contains_key("logicalType"),
            _ => false,
        }
    }

    fn compile(&mut self, s: &Value, ns: &str, depth: usize) -> Result<NodeId, SchemaError> {
        if depth > MAX_DEPTH {
            return err(format!("schema nested deeper than {MAX_DEPTH} levels"));
        }
        match s {
            Value::String(t) => match primitive(t) {
                Some(node) => Ok(self.push(node)),
                None => self.reference(t, ns),
            },
            Value::Array(branches) => self.union(branches, ns, depth),
            Value::Object(obj) => self.complex(obj, ns, depth),
            other => err(format!("not a schema: {other}")),
        }
    }

    fn union(&mut self, branches: &[Value], ns: &str, depth: usize) -> Result<NodeId, SchemaError> {
        if branches.iter().any(Value::is_array) {
            return err("a union directly inside a union");
        }
        match branches {
            [only] => {
                let b = self.compile(only, ns, depth + 1)?;
                Ok(self.push(Node::Single(b)))
            }
            [a, b] if Self::is_null_branch(a) != Self::is_null_branch(b) => {
                let (null_index, other) = if Self::is_null_branch(a) { (0, b) } else { (1, a) };
                let other = self.compile(other, ns, depth + 1)?;
                Ok(self.push(Node::Nullable { null_index, other }))
            }
            _ => err(format!(
                "union {} (only [T] and [\"null\", T] are compiled)",
                Value::Array(branches.to_vec())
            )),
        }
    }

    fn complex(&mut self, obj: &serde_json::Map<String, Value>, ns: &str, depth: usize) -> Result<NodeId, SchemaError> {
        if let Some(lt) = obj.get("logicalType") {
            // fastavro converts Python objects (datetime, Decimal, UUID) for these
            return err(format!("logical type {lt}"));
        }
        let t = match obj.get("type") {
            Some(Value::String(t)) => t.as_str(),
            // {"type": {"type": "map", ...}} and {"type": ["null", ...]}: the inner schema
            Some(inner @ (Value::Object(_) | Value::Array(_))) => return self.compile(inner, ns, depth + 1),
            _ => return err("a schema object without a type"),
        };
        if let Some(node) = primitive(t) {
            return Ok(self.push(node));
        }
        match t {
            "record" | "error" => {
                let (full, space) = Self::full_name(obj, ns)?;
                let id = self.define(full.clone())?;
                let Some(Value::Array(fields)) = obj.get("fields") else {
                    return err(format!("record {full} without a fields array"));
                };
                let mut out = Vec::with_capacity(fields.len());
                for (i, f) in fields.iter().enumerate() {
                    let Some(name) = f.get("name").and_then(Value::as_str) else {
                        return err(format!("record {full}: field {i} without a name"));
                    };
                    if out.iter().any(|g: &Field| g.name == name) {
                        return err(format!("record {full}: field {name} twice"));
                    }
                    let Some(ft) = f.get("type") else {
                        return err(format!("record {full}: field {name} without a type"));
                    };
                    let node = self.compile(ft, &space, depth + 1)?;
                    if let Some(d) = f.get("default") {
                        self.defaults.push((id, i, d.clone()));
                    }
                    self.field_names.push(name.to_owned());
                    out.push(Field { name: name.to_owned(), id: self.field_names.len() - 1, node, default: None });
                }
                if let Some(slot) = self.nodes.get_mut(id) {
                    *slot = Node::Record { fields: out };
                }
                Ok(id)
            }
            "enum" => {
                let (full, _) = Self::full_name(obj, ns)?;
                let Some(Value::Array(symbols)) = obj.get("symbols") else {
                    return err(format!("enum {full} without symbols"));
                };
                let symbols = symbols
                    .iter()
                    .map(|s| s.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| SchemaError(format!("enum {full}: a symbol is not a string")))?;
                let id = self.define(full)?;
                if let Some(slot) = self.nodes.get_mut(id) {
                    *slot = Node::Enum { symbols };
                }
                Ok(id)
            }
            "fixed" => {
                let (full, _) = Self::full_name(obj, ns)?;
                let size = obj
                    .get("size")
                    .and_then(Value::as_u64)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| SchemaError(format!("fixed {full} without a size")))?;
                let id = self.define(full)?;
                if let Some(slot) = self.nodes.get_mut(id) {
                    *slot = Node::Fixed { size };
                }
                Ok(id)
            }
            "array" => {
                let Some(items) = obj.get("items") else { return err("an array without items") };
                let items = self.compile(items, ns, depth + 1)?;
                Ok(self.push(Node::Array(items)))
            }
            "map" => {
                let Some(values) = obj.get("values") else { return err("a map without values") };
                let values = self.compile(values, ns, depth + 1)?;
                Ok(self.push(Node::Map(values)))
            }
            name => self.reference(name, ns),
        }
    }
}

impl Writer {
    /// Compile a schema given as JSON text.
    pub fn from_json(text: &str) -> Result<Writer, SchemaError> {
        let schema: Value = serde_json::from_str(text).map_err(|e| SchemaError(format!("schema is not JSON: {e}")))?;
        Writer::new(&schema)
    }

    /// Compile a parsed schema.
    pub fn new(schema: &Value) -> Result<Writer, SchemaError> {
        let mut c = Compiler { nodes: Vec::new(), named: HashMap::new(), field_names: Vec::new(), defaults: Vec::new() };
        let root = c.compile(schema, "", 0)?;
        let name = match schema {
            Value::Object(o) => o.get("name").and_then(Value::as_str).unwrap_or("record"),
            Value::String(t) => t.as_str(),
            _ => "union",
        };
        let mut w = Writer { nodes: c.nodes, root, field_names: c.field_names, name: name.to_owned() };
        if w.nodes.contains(&Node::Pending) {
            return err("a named type used before its definition was complete");
        }
        // Defaults last: a record's field may default to a value of a type defined after it.
        for (record, i, value) in c.defaults {
            let Some(Node::Record { fields }) = w.nodes.get(record) else { continue };
            let Some(field) = fields.get(i) else { continue };
            let mut bytes = Vec::new();
            let fname = field.name.clone();
            w.node(field.node, &value, &mut bytes, 0).map_err(|e| {
                let what = match e.fault {
                    Fault::Type(m) | Fault::Value(m) => m,
                    Fault::Source(never) => match never {},
                };
                SchemaError(format!("field {fname}: default {value} does not fit its type: {what}"))
            })?;
            if let Some(Node::Record { fields }) = w.nodes.get_mut(record) {
                if let Some(f) = fields.get_mut(i) {
                    f.default = Some(bytes);
                }
            }
        }
        Ok(w)
    }

    /// The name of every record field, by [`Field::id`].
    pub fn field_names(&self) -> &[String] {
        &self.field_names
    }

    /// The schema's name (its root record's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root type (the record a message holds).
    pub fn root(&self) -> NodeId {
        self.root
    }

    /// Node `id` of the compiled schema (the decoder of `avro_read.rs` walks the same tree).
    pub fn node_at(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// How many nodes the compiled schema has.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Append the encoding of `datum` to `out`. On error `out` holds a partial encoding.
    pub fn encode<D: Datum>(&self, datum: &D, out: &mut Vec<u8>) -> Result<(), EncodeError<D::Error>> {
        self.node(self.root, datum, out, 0)
    }

    /// [`encode`](Self::encode), except that the bytes of the root record's field `name`
    /// (a `bytes` field) are left out: only their length is written, and the returned
    /// offset of `out` is where they belong. The encoding is `out[..at]`, the field's
    /// bytes, `out[at..]`: a writer that sends the three as they are (a gathered write)
    /// never copies a big field (a packet batch's payloads) into the encoding.
    pub fn encode_split<D: Datum>(&self, datum: &D, name: &str, out: &mut Vec<u8>) -> Result<usize, EncodeError<D::Error>> {
        let Some(Node::Record { fields }) = self.nodes.get(self.root) else {
            return Err(Fault::Value("the schema's root is not a record".into()).into());
        };
        let mut at = None;
        for f in fields {
            if f.name == name && self.nodes.get(f.node) == Some(&Node::Bytes) {
                let value = self.value_of(f, datum)?;
                let Some(v) = value else {
                    return Err(EncodeError::from(Fault::Value("missing (it is sent beside)".into())).at(Step::Field(f.name.clone())));
                };
                let len: Result<(), EncodeError<D::Error>> = v.with_bytes(|b| write_len(out, b.len())).and_then(|r| r).map_err(Into::into);
                len.map_err(|e| e.at(Step::Field(f.name.clone())))?;
                at = Some(out.len());
            } else {
                self.field(f, datum, out, 1)?;
            }
        }
        at.ok_or_else(|| Fault::Value(format!("no bytes field {name:?} at the top of the record")).into())
    }

    /// The value of field `f` of record `d` (None: the record lacks it).
    fn value_of<D: Datum>(&self, f: &Field, d: &D) -> Result<Option<D>, EncodeError<D::Error>> {
        match d.field(f.id, &f.name) {
            Ok(v) => Ok(v),
            // not a record at all: the record's error, not its field's
            Err(fault @ Fault::Type(_)) => Err(fault.into()),
            Err(fault) => Err(EncodeError::from(fault).at(Step::Field(f.name.clone()))),
        }
    }

    /// Field `f` of record `d`: its value's encoding, or its default's.
    fn field<D: Datum>(&self, f: &Field, d: &D, out: &mut Vec<u8>, depth: usize) -> Result<(), EncodeError<D::Error>> {
        match self.value_of(f, d)? {
            Some(v) => self.node(f.node, &v, out, depth),
            None => match &f.default {
                Some(bytes) => {
                    out.extend_from_slice(bytes);
                    Ok(())
                }
                None => Err(Fault::Value("missing (and the schema gives no default)".into()).into()),
            },
        }
        .map_err(|e| e.at(Step::Field(f.name.clone())))
    }

    fn node<D: Datum>(&self, id: NodeId, d: &D, out: &mut Vec<u8>, depth: usize) -> Result<(), EncodeError<D::Error>> {
        let Some(node) = self.nodes.get(id) else {
            return Err(Fault::Value(format!("schema node {id} missing")).into());
        };
        match node {
            Node::Null | Node::Pending => {}
            Node::Boolean => out.push(u8::from(d.truthy()?)),
            Node::Int | Node::Long => write_long(out, d.long()?),
            Node::Double => out.extend_from_slice(&d.double()?.to_le_bytes()),
            Node::Float => {
                let v = d.double()?;
                let f = v as f32;
                if f.is_infinite() && v.is_finite() {
                    return Err(Fault::Value(format!("{v} is out of range for an Avro float")).into());
                }
                out.extend_from_slice(&f.to_le_bytes());
            }
            Node::String => d.with_str(|s| write_blob(out, s))??,
            Node::Bytes => d.with_bytes(|b| write_blob(out, b))??,
            Node::Fixed { size } => d.with_bytes(|b| {
                if b.len() != *size {
                    return Err(Fault::Value(format!("{} bytes for a fixed of {size}", b.len())));
                }
                out.extend_from_slice(b);
                Ok(())
            })??,
            Node::Enum { symbols } => {
                let index = d.with_str(|s| symbols.iter().position(|sym| sym.as_bytes() == s))?;
                let Some(index) = index else {
                    let got = d.with_str(|s| String::from_utf8_lossy(s).into_owned())?;
                    return Err(Fault::Value(format!("{got:?} is not a symbol of {symbols:?}")).into());
                };
                write_len(out, index)?;
            }
            Node::Nullable { null_index, other } => {
                if d.is_null() {
                    write_long(out, i64::from(*null_index));
                } else {
                    write_long(out, i64::from(1 - *null_index));
                    self.node(*other, d, out, depth)?;
                }
            }
            Node::Single(branch) => {
                out.push(0);
                self.node(*branch, d, out, depth)?;
            }
            Node::Record { fields } => {
                if depth >= MAX_DEPTH {
                    return Err(Fault::Value(format!("nested deeper than {MAX_DEPTH} levels")).into());
                }
                for f in fields {
                    self.field(f, d, out, depth + 1)?;
                }
            }
            Node::Array(items) => {
                if depth >= MAX_DEPTH {
                    return Err(Fault::Value(format!("nested deeper than {MAX_DEPTH} levels")).into());
                }
                let values = d.items()?;
                if !values.is_empty() {
                    write_len(out, values.len())?;
                    for (i, v) in values.iter().enumerate() {
                        self.node(*items, v, out, depth + 1).map_err(|e| e.at(Step::Index(i)))?;
                    }
                }
                out.push(0);
            }
            Node::Map(values) => {
                if depth >= MAX_DEPTH {
                    return Err(Fault::Value(format!("nested deeper than {MAX_DEPTH} levels")).into());
                }
                let entries = d.entries()?;
                if !entries.is_empty() {
                    write_len(out, entries.len())?;
                    for (k, v) in &entries {
                        k.with_str(|s| write_blob(out, s))
                            .and_then(|r| r)
                            .map_err(|f| match f {
                                Fault::Type(m) => Fault::Type(format!("a map key: {m}")),
                                other => other,
                            })?;
                        self.node(*values, v, out, depth + 1).map_err(|e| {
                            let key = k.with_str(|s| String::from_utf8_lossy(s).into_owned()).unwrap_or_default();
                            e.at(Step::Key(key))
                        })?;
                    }
                }
                out.push(0);
            }
        }
        Ok(())
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON value as a datum: a field's default (Avro gives them as JSON), and values in
/// tests. Truth and the rest follow Python's reading of the same value.
impl Datum for Value {
    type Error = std::convert::Infallible;

    fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    fn truthy(&self) -> Res<bool, Self::Error> {
        Ok(match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        })
    }

    fn long(&self) -> Res<i64, Self::Error> {
        match self {
            Value::Number(n) => match n.as_i64() {
                Some(x) => Ok(x),
                None if n.is_u64() => Err(Fault::Value(format!("{n} does not fit an Avro long"))),
                None => Err(Fault::Type(format!("expected an integer, got {n}"))),
            },
            Value::Bool(b) => Ok(i64::from(*b)),
            other => Err(Fault::Type(format!("expected an integer, got {}", json_kind(other)))),
        }
    }

    fn double(&self) -> Res<f64, Self::Error> {
        match self {
            Value::Number(n) => n.as_f64().ok_or_else(|| Fault::Value(format!("{n} is not a double"))),
            Value::Bool(b) => Ok(f64::from(u8::from(*b))),
            other => Err(Fault::Type(format!("expected a number, got {}", json_kind(other)))),
        }
    }

    fn with_str<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Res<R, Self::Error> {
        match self {
            Value::String(s) => Ok(f(s.as_bytes())),
            other => Err(Fault::Type(format!("expected a string, got {}", json_kind(other)))),
        }
    }

    /// Avro's JSON form of bytes: a string whose code points 0-255 are the bytes.
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Res<R, Self::Error> {
        match self {
            Value::String(s) => {
                let b = s
                    .chars()
                    .map(|c| u8::try_from(u32::from(c)).ok())
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(|| Fault::Value("a code point above 255 in a bytes value".into()))?;
                Ok(f(&b))
            }
            other => Err(Fault::Type(format!("expected bytes (a string), got {}", json_kind(other)))),
        }
    }

    fn field(&self, _id: usize, name: &str) -> Res<Option<Self>, Self::Error> {
        match self {
            Value::Object(o) => Ok(o.get(name).cloned()),
            other => Err(Fault::Type(format!("expected an object (a record), got {}", json_kind(other)))),
        }
    }

    fn items(&self) -> Res<Vec<Self>, Self::Error> {
        match self {
            Value::Array(a) => Ok(a.clone()),
            other => Err(Fault::Type(format!("expected an array, got {}", json_kind(other)))),
        }
    }

    fn entries(&self) -> Res<Vec<(Self, Self)>, Self::Error> {
        match self {
            Value::Object(o) => Ok(o.iter().map(|(k, v)| (Value::String(k.clone()), v.clone())).collect()),
            other => Err(Fault::Type(format!("expected an object (a map), got {}", json_kind(other)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(schema: Value, datum: Value) -> Result<Vec<u8>, EncodeError<std::convert::Infallible>> {
        let w = Writer::new(&schema).map_err(|e| EncodeError::from(Fault::Value(e.0)))?;
        let mut out = Vec::new();
        w.encode(&datum, &mut out)?;
        Ok(out)
    }

    fn long(n: i64) -> Vec<u8> {
        let mut v = Vec::new();
        write_long(&mut v, n);
        v
    }

    #[test]
    fn longs_are_zigzag_varints() {
        assert_eq!(long(0), [0]);
        assert_eq!(long(-1), [1]);
        assert_eq!(long(1), [2]);
        assert_eq!(long(-64), [0x7F]);
        assert_eq!(long(64), [0x80, 0x01]);
        assert_eq!(long(i64::MAX), [0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
        assert_eq!(long(i64::MIN), [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    }

    #[test]
    fn primitives() {
        assert_eq!(enc(json!("null"), json!(null)).unwrap(), b"");
        assert_eq!(enc(json!("boolean"), json!(true)).unwrap(), [1]);
        assert_eq!(enc(json!("boolean"), json!(0)).unwrap(), [0]);
        assert_eq!(enc(json!("int"), json!(-3)).unwrap(), [5]);
        assert_eq!(enc(json!("double"), json!(1.5)).unwrap(), 1.5f64.to_le_bytes());
        assert_eq!(enc(json!("float"), json!(2)).unwrap(), 2f32.to_le_bytes());
        assert_eq!(enc(json!("string"), json!("hé")).unwrap(), b"\x06h\xc3\xa9");
        assert_eq!(enc(json!("bytes"), json!("\u{00ff}a")).unwrap(), b"\x04\xffa");
        assert!(enc(json!("float"), json!(1e300)).is_err());
    }

    #[test]
    fn split_leaves_a_bytes_field_out_of_the_encoding() {
        let schema = json!({"type": "record", "name": "B", "fields": [
            {"name": "a", "type": "long"}, {"name": "p", "type": "bytes"},
            {"name": "z", "type": "string", "default": "d"}]});
        let w = Writer::new(&schema).unwrap();
        let datum = json!({"a": 3, "p": "payload"});
        let mut whole = Vec::new();
        w.encode(&datum, &mut whole).unwrap();
        let mut out = Vec::new();
        let at = w.encode_split(&datum, "p", &mut out).unwrap();
        assert_eq!([&out[..at], b"payload", &out[at..]].concat(), whole);
        assert_eq!(out.len(), whole.len() - 7);
        assert!(w.encode_split(&datum, "a", &mut Vec::new()).is_err()); // not a bytes field
        assert!(w.encode_split(&datum, "q", &mut Vec::new()).is_err()); // no such field
        assert!(w.encode_split(&json!({"a": 3}), "p", &mut Vec::new()).is_err()); // missing
    }

    #[test]
    fn record_with_unions_maps_arrays_and_defaults() {
        let schema = json!({"type": "record", "name": "R", "namespace": "x", "fields": [
            {"name": "a", "type": "long"},
            {"name": "b", "type": ["null", "string"], "default": null},
            {"name": "c", "type": {"type": "map", "values": "long"}, "default": {}},
            {"name": "d", "type": {"type": "array", "items": "string"}},
            {"name": "e", "type": ["long", "null"]},
            {"name": "f", "type": ["string"]},
            {"name": "g", "type": {"type": "enum", "name": "E", "symbols": ["x", "y"]}, "default": "y"},
            {"name": "h", "type": {"type": "fixed", "name": "F", "size": 2}},
            {"name": "i", "type": ["null", "E"]},
            {"name": "j", "type": {"type": {"type": "array", "items": "x.F"}}, "default": ["ab"]},
        ]});
        let got = enc(schema.clone(), json!({"a": 1, "c": {"k": 2}, "d": ["p", "q"], "e": null, "f": "s",
                                             "h": "hi", "i": "x"}))
        .unwrap();
        let want: Vec<u8> = [
            &[2][..],                      // a
            &[0],                          // b: default null
            &[2, 2, b'k', 4, 0],           // c: one block of one entry, then 0
            &[4, 2, b'p', 2, b'q', 0],     // d
            &[2],                          // e: null is branch 1
            &[0, 2, b's'],                 // f
            &[2],                          // g: default "y", index 1
            b"hi",                         // h
            &[2, 0],                       // i: branch 1, symbol 0
            &[2, b'a', b'b', 0],           // j: default
        ]
        .concat();
        assert_eq!(got, want);
        let empty = enc(schema, json!({"a": 1, "c": {}, "d": [], "e": 5, "f": "", "h": "hi", "i": null})).unwrap();
        assert_eq!(empty, [&[2, 0, 0, 0, 0, 10, 0, 0, 2], &b"hi"[..], &[0, 2, b'a', b'b', 0]].concat());
    }

    #[test]
    fn errors_name_the_path() {
        let schema = json!({"type": "record", "name": "R", "fields": [
            {"name": "m", "type": {"type": "map", "values": {"type": "array", "items": {
                "type": "record", "name": "S", "fields": [{"name": "n", "type": "long"}]}}}}]});
        let e = enc(schema.clone(), json!({"m": {"k": [{"n": 1}, {"n": "x"}]}})).unwrap_err();
        assert_eq!(e.path(), "m[\"k\"][1].n");
        assert!(matches!(e.fault, Fault::Type(_)));
        let e = enc(schema.clone(), json!({"m": {"k": [{}]}})).unwrap_err();
        assert_eq!(e.path(), "m[\"k\"][0].n");
        assert!(matches!(e.fault, Fault::Value(_)));
        let e = enc(schema, json!({"m": {"k": [{"n": u64::MAX}]}})).unwrap_err();
        assert!(matches!(e.fault, Fault::Value(_)));
    }

    #[test]
    fn recursive_records_and_depth() {
        let schema = json!({"type": "record", "name": "N", "fields": [
            {"name": "next", "type": ["null", "N"]}]});
        assert_eq!(enc(schema.clone(), json!({"next": {"next": null}})).unwrap(), [2, 0]);
        let mut v = json!({"next": null});
        for _ in 0..(MAX_DEPTH + 5) {
            v = json!({"next": v});
        }
        assert!(enc(schema, v).is_err());
    }

    #[test]
    fn schemas_outside_the_subset_are_refused() {
        for s in [
            json!(["string", "long"]),
            json!(["null", "string", "long"]),
            json!([]),
            json!(["null", ["null", "long"]]),
            json!({"type": "long", "logicalType": "timestamp-micros"}),
            json!({"type": "record", "name": "R", "fields": [{"name": "x", "type": "Nope"}]}),
            json!({"type": "record", "name": "R", "fields": [{"name": "x", "type": "long", "default": "s"}]}),
            json!({"type": "record", "name": "R", "fields": [{"name": "x"}]}),
            json!({"type": "record", "name": "R", "fields": [{"name": "R", "type": {"type": "fixed", "name": "R", "size": 1}}]}),
            json!({"type": "fixed", "name": "F"}),
            json!(7),
        ] {
            assert!(Writer::new(&s).is_err(), "{s}");
        }
        assert!(Writer::from_json("{").is_err());
    }

    #[test]
    fn every_schema_of_the_repository_compiles_except_the_engine_state() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("avsc") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let compiled = Writer::from_json(&text);
            // engine_state.avsc's Value union has 17 branches; processors/state_codec.py
            // writes it itself
            assert_eq!(compiled.is_ok(), !path.ends_with("engine_state.avsc"), "{path:?}");
            n += 1;
        }
        assert!(n >= 10);
    }

    #[test]
    fn random_schemas_and_values_never_panic() {
        // xorshift: deterministic pseudo-random JSON of small depth
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        fn gen(r: &mut dyn FnMut() -> u64, depth: u32) -> Value {
            let names = ["null", "long", "string", "R", "type", "fields", "name", "items", "values", "map", "array", "record"];
            match r() % if depth > 3 { 4 } else { 7 } {
                0 => Value::Null,
                1 => json!(r() as i64),
                2 => json!(names[(r() % names.len() as u64) as usize]),
                3 => json!(r().is_multiple_of(2)),
                4 => Value::Array((0..r() % 3).map(|_| gen(r, depth + 1)).collect()),
                _ => {
                    let mut o = serde_json::Map::new();
                    for _ in 0..r() % 4 {
                        let k = names[(r() % names.len() as u64) as usize];
                        o.insert(k.into(), gen(r, depth + 1));
                    }
                    Value::Object(o)
                }
            }
        }
        for _ in 0..20_000 {
            let s = gen(&mut next, 0);
            let d = gen(&mut next, 0);
            if let Ok(w) = Writer::new(&s) {
                let mut out = Vec::new();
                let _ = w.encode(&d, &mut out);
            }
        }
    }
}
