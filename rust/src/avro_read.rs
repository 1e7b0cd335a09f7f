//! Avro binary decoding of records, on the schema tree the encoder compiles.
//!
//! Takes a compiled schema ([`crate::avro::Writer`]: the same compilation, so the same
//! subset) and optionally the names of the top-level fields wanted, and gives a
//! [`Reader`]: it decodes one Avro binary body into values of a [`Build`]er's making
//! (Python objects through `python_avro.rs`, JSON values here for tests). Every process
//! that reads topics (`analyze`'s collector, the windows worker, sinks, `tail`, the
//! client API) decodes every record it reads (`wirestream/avro_reader.py`,
//! `wirestream/codec.py`); walking the compiled tree in Rust is several times cheaper
//! than the generated straight-line Python this replaces.
//!
//! Values are those of the Python reader it replaces (and fastavro's): a record is a dict
//! of its fields in the schema's order, `null` None, `boolean` True for the byte 1 (any
//! other byte False), `int`/`long` an int, `float`/`double` a float, `string` a str
//! (strict UTF-8), `bytes` and `fixed` bytes, an enum its symbol (a str), an array a
//! list, a map a dict. Map and array blocks with a negative count (followed by the
//! block's byte size, as other writers may send them) are read too.
//!
//! With fields named, the other top-level fields are stepped over without building
//! anything: their strings are not checked for UTF-8 (that is what makes the reader of
//! a few fields of a big record cheap), everything else is (bounds, varints, branches).
//!
//! Malformed input is an error, never a panic: a body that ends early, a varint beyond
//! 64 bits, a negative length, a union branch or enum index that does not exist, a
//! string that is not UTF-8, nesting deeper than [`MAX_DEPTH`]. A hostile count cannot
//! make it allocate or loop beyond the input: a block of `n` items whose type takes at
//! least `m` bytes must fit `n * m` bytes of what is left, and items that take no bytes
//! at all (an array of nulls) are limited to [`MAX_EMPTY_ITEMS`] per body.

use std::fmt;

use crate::avro::{Node, NodeId, SchemaError, Writer, MAX_DEPTH};

/// Items of zero size (nulls, records of nulls) one body may hold: a count of them is
/// not bounded by the bytes left, so it is bounded by this.
pub const MAX_EMPTY_ITEMS: u64 = 1 << 20;

/// What the decoder builds values with. Containers are made empty, then filled.
pub trait Build {
    type Value;
    type Error;
    fn null(&mut self) -> Result<Self::Value, Self::Error>;
    fn boolean(&mut self, b: bool) -> Result<Self::Value, Self::Error>;
    fn long(&mut self, n: i64) -> Result<Self::Value, Self::Error>;
    fn double(&mut self, x: f64) -> Result<Self::Value, Self::Error>;
    fn string(&mut self, s: &str) -> Result<Self::Value, Self::Error>;
    fn bytes(&mut self, b: &[u8]) -> Result<Self::Value, Self::Error>;
    /// An enum's symbol.
    fn symbol(&mut self, s: &str) -> Result<Self::Value, Self::Error>;
    fn list(&mut self) -> Result<Self::Value, Self::Error>;
    fn push(&mut self, list: &mut Self::Value, item: Self::Value) -> Result<(), Self::Error>;
    fn map(&mut self) -> Result<Self::Value, Self::Error>;
    fn insert(&mut self, map: &mut Self::Value, key: &str, value: Self::Value) -> Result<(), Self::Error>;
    fn record(&mut self) -> Result<Self::Value, Self::Error>;
    /// Field `name` (number `id` of [`Writer::field_names`]) of a record.
    fn set(&mut self, record: &mut Self::Value, id: usize, name: &str, value: Self::Value) -> Result<(), Self::Error>;

    // A builder that writes its output as it goes (the JSON line: `crate::avro_json`)
    // needs a member's key before its value, and the end of a container; one that builds
    // values (Python objects) has them from `set`, `push` and `insert`, and ignores these.

    /// Before the value of field `name` of `record` is read.
    fn before_field(&mut self, _record: &mut Self::Value, _name: &str) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Before an item of `list` is read.
    fn before_item(&mut self, _list: &mut Self::Value) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Before the value of `key` in `map` is read.
    fn before_entry(&mut self, _map: &mut Self::Value, _key: &str) -> Result<(), Self::Error> {
        Ok(())
    }
    /// After the last member of a record, list or map.
    fn end(&mut self, _container: &mut Self::Value) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Why a body does not decode.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadError<E> {
    /// The bytes are not a body of the schema: what is wrong, at which offset of the
    /// buffer.
    Malformed { offset: usize, what: String },
    /// The builder's own error (Python could not make an object).
    Source(E),
}

impl<E: fmt::Display> fmt::Display for ReadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Malformed { offset, what } => write!(f, "{what} at offset {offset}"),
            ReadError::Source(e) => e.fmt(f),
        }
    }
}

type Res<T, E> = Result<T, ReadError<E>>;

fn bad<T, E>(offset: usize, what: impl Into<String>) -> Res<T, E> {
    Err(ReadError::Malformed { offset, what: what.into() })
}

/// The body being read, and what is left of the zero-size item budget.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    empty_items: u64,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take<E>(&mut self, n: usize) -> Res<&'a [u8], E> {
        let start = self.pos;
        match start.checked_add(n).and_then(|end| self.buf.get(start..end)) {
            Some(s) => {
                self.pos = start + n;
                Ok(s)
            }
            None => bad(start, format!("truncated: {n} bytes wanted, {} left", self.left())),
        }
    }

    fn array<const N: usize, E>(&mut self) -> Res<[u8; N], E> {
        match crate::bytes::array(self.buf, self.pos) {
            Some(a) => {
                self.pos += N;
                Ok(a)
            }
            None => bad(self.pos, format!("truncated: {N} bytes wanted, {} left", self.left())),
        }
    }

    fn byte<E>(&mut self) -> Res<u8, E> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => bad(self.pos, "truncated: the body ended"),
        }
    }

    /// An Avro `long`: base-128 varint (low group first), then zig-zag.
    #[inline]
    fn long<E>(&mut self) -> Res<i64, E> {
        let start = self.pos;
        let mut z: u64 = 0;
        let mut shift = 0u32;
        loop {
            let Some(&b) = self.buf.get(self.pos) else {
                return bad(start, "truncated: the body ended inside a varint");
            };
            self.pos += 1;
            // the tenth byte holds the 64th bit only
            if shift == 63 && b > 1 {
                return bad(start, "varint beyond 64 bits");
            }
            z |= u64::from(b & 0x7F) << shift;
            if b < 0x80 {
                break;
            }
            shift += 7;
        }
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    /// A string/bytes length: a long that must not be negative.
    fn length<E>(&mut self) -> Res<usize, E> {
        let start = self.pos;
        let n = self.long()?;
        usize::try_from(n).or_else(|_| bad(start, format!("negative length {n}")))
    }

    /// The item count of the next block of an array or map, `None` at the block of 0
    /// that ends it. A negative count is followed by the block's size in bytes (skipped:
    /// items are read one by one either way). `item_min`: the fewest bytes an item takes.
    fn block<E>(&mut self, item_min: usize) -> Res<Option<u64>, E> {
        let start = self.pos;
        let n = self.long()?;
        if n == 0 {
            return Ok(None);
        }
        if n < 0 {
            self.long()?;
        }
        let count = n.unsigned_abs();
        if item_min == 0 {
            if count > self.empty_items {
                return bad(start, format!("{count} items of no size (at most {MAX_EMPTY_ITEMS} in a body)"));
            }
            self.empty_items -= count;
        } else if count > (self.left() / item_min) as u64 {
            return bad(start, format!("truncated: {count} items in {} bytes", self.left()));
        }
        Ok(Some(count))
    }
}

/// A compiled schema's decoder.
#[derive(Debug, Clone)]
pub struct Reader {
    schema: Writer,
    /// The fewest bytes a value of each node takes (a lower bound: 0 inside a cycle).
    min_size: Vec<usize>,
    /// With fields named: whether each field of the root record is built.
    selected: Option<Vec<bool>>,
}

fn min_size(schema: &Writer, id: NodeId, sizes: &mut [Option<usize>], visiting: &mut [bool]) -> usize {
    if let Some(Some(n)) = sizes.get(id) {
        return *n;
    }
    if visiting.get(id).copied().unwrap_or(true) {
        return 0;
    }
    if let Some(v) = visiting.get_mut(id) {
        *v = true;
    }
    let n = match schema.node_at(id) {
        None | Some(Node::Null | Node::Pending) => 0,
        Some(Node::Boolean | Node::Int | Node::Long | Node::Enum { .. } | Node::Bytes | Node::String) => 1,
        Some(Node::Array(_) | Node::Map(_) | Node::Nullable { .. }) => 1,
        Some(Node::Float) => 4,
        Some(Node::Double) => 8,
        Some(Node::Fixed { size }) => *size,
        Some(Node::Single(b)) => 1 + min_size(schema, *b, sizes, visiting),
        Some(Node::Record { fields }) => {
            fields.iter().fold(0usize, |acc, f| acc.saturating_add(min_size(schema, f.node, sizes, visiting)))
        }
    };
    if let Some(v) = visiting.get_mut(id) {
        *v = false;
    }
    if let Some(slot) = sizes.get_mut(id) {
        *slot = Some(n);
    }
    n
}

impl Reader {
    /// The decoder of `schema`; with `fields`, of records holding only those of the
    /// root record's fields (names the schema lacks are ignored).
    pub fn new(schema: Writer, fields: Option<&[String]>) -> Result<Reader, SchemaError> {
        let count = schema.node_count();
        let mut sizes = vec![None; count];
        let mut visiting = vec![false; count];
        let min_size = (0..count).map(|id| min_size(&schema, id, &mut sizes, &mut visiting)).collect();
        let selected = match fields {
            None => None,
            Some(names) => match schema.node_at(schema.root()) {
                Some(Node::Record { fields }) => Some(fields.iter().map(|f| names.contains(&f.name)).collect()),
                _ => return Err(SchemaError("fields of a schema that is not a record".into())),
            },
        };
        Ok(Reader { schema, min_size, selected })
    }

    /// Compile a schema given as JSON text.
    pub fn from_json(text: &str, fields: Option<&[String]>) -> Result<Reader, SchemaError> {
        Reader::new(Writer::from_json(text)?, fields)
    }

    /// Whether it reads some fields of the root record only.
    pub fn selects_fields(&self) -> bool {
        self.selected.is_some()
    }

    /// The compiled schema (its field names, its name).
    pub fn schema(&self) -> &Writer {
        &self.schema
    }

    /// Decode the body that starts at `buf[offset]`. Bytes after it are not looked at.
    pub fn read<B: Build>(&self, buf: &[u8], offset: usize, b: &mut B) -> Res<B::Value, B::Error> {
        if offset > buf.len() {
            return bad(offset, format!("offset past the end of {} bytes", buf.len()));
        }
        let mut cur = Cursor { buf, pos: offset, empty_items: MAX_EMPTY_ITEMS };
        let root = self.schema.root();
        match (&self.selected, self.schema.node_at(root)) {
            (Some(selected), Some(Node::Record { fields })) => {
                let mut record = b.record().map_err(ReadError::Source)?;
                for (f, &wanted) in fields.iter().zip(selected) {
                    if wanted {
                        b.before_field(&mut record, &f.name).map_err(ReadError::Source)?;
                        let v = self.value(f.node, &mut cur, b, 1)?;
                        b.set(&mut record, f.id, &f.name, v).map_err(ReadError::Source)?;
                    } else {
                        self.skip(f.node, &mut cur, 1)?;
                    }
                }
                b.end(&mut record).map_err(ReadError::Source)?;
                Ok(record)
            }
            _ => self.value(root, &mut cur, b, 0),
        }
    }

    fn item_min(&self, id: NodeId) -> usize {
        self.min_size.get(id).copied().unwrap_or(0)
    }

    fn value<B: Build>(&self, id: NodeId, cur: &mut Cursor<'_>, b: &mut B, depth: usize) -> Res<B::Value, B::Error> {
        let Some(node) = self.schema.node_at(id) else {
            return bad(cur.pos, format!("schema node {id} missing"));
        };
        let src = ReadError::Source;
        match node {
            Node::Null | Node::Pending => b.null().map_err(src),
            // what the Python reader did (`buf[pos] == 1`); fastavro too for 0 and 1
            Node::Boolean => {
                let v = cur.byte()? == 1;
                b.boolean(v).map_err(src)
            }
            Node::Int | Node::Long => {
                let n = cur.long()?;
                b.long(n).map_err(src)
            }
            Node::Float => {
                let x = f32::from_le_bytes(cur.array()?);
                b.double(f64::from(x)).map_err(src)
            }
            Node::Double => {
                let x = f64::from_le_bytes(cur.array()?);
                b.double(x).map_err(src)
            }
            Node::String => {
                let start = cur.pos;
                let n = cur.length()?;
                let raw = cur.take(n)?;
                match std::str::from_utf8(raw) {
                    Ok(s) => b.string(s).map_err(src),
                    Err(e) => bad(start, format!("a string that is not UTF-8 (byte {} of {n})", e.valid_up_to())),
                }
            }
            Node::Bytes => {
                let n = cur.length()?;
                let raw = cur.take(n)?;
                b.bytes(raw).map_err(src)
            }
            Node::Fixed { size } => {
                let raw = cur.take(*size)?;
                b.bytes(raw).map_err(src)
            }
            Node::Enum { symbols } => {
                let start = cur.pos;
                let i = cur.long()?;
                match usize::try_from(i).ok().and_then(|i| symbols.get(i)) {
                    Some(s) => b.symbol(s).map_err(src),
                    None => bad(start, format!("enum index {i} of {} symbols", symbols.len())),
                }
            }
            Node::Nullable { null_index, other } => {
                let start = cur.pos;
                let branch = cur.long()?;
                if branch == i64::from(*null_index) {
                    b.null().map_err(src)
                } else if branch == 1 - i64::from(*null_index) {
                    self.value(*other, cur, b, depth)
                } else {
                    bad(start, format!("union branch {branch} of 2"))
                }
            }
            Node::Single(branch) => {
                let start = cur.pos;
                match cur.long()? {
                    0 => self.value(*branch, cur, b, depth),
                    n => bad(start, format!("union branch {n} of 1")),
                }
            }
            Node::Record { fields } => {
                if depth >= MAX_DEPTH {
                    return bad(cur.pos, format!("nested deeper than {MAX_DEPTH} levels"));
                }
                let mut record = b.record().map_err(src)?;
                for f in fields {
                    b.before_field(&mut record, &f.name).map_err(src)?;
                    let v = self.value(f.node, cur, b, depth + 1)?;
                    b.set(&mut record, f.id, &f.name, v).map_err(src)?;
                }
                b.end(&mut record).map_err(src)?;
                Ok(record)
            }
            Node::Array(items) => {
                if depth >= MAX_DEPTH {
                    return bad(cur.pos, format!("nested deeper than {MAX_DEPTH} levels"));
                }
                let mut list = b.list().map_err(src)?;
                let min = self.item_min(*items);
                while let Some(count) = cur.block(min)? {
                    for _ in 0..count {
                        b.before_item(&mut list).map_err(src)?;
                        let v = self.value(*items, cur, b, depth + 1)?;
                        b.push(&mut list, v).map_err(src)?;
                    }
                }
                b.end(&mut list).map_err(src)?;
                Ok(list)
            }
            Node::Map(values) => {
                if depth >= MAX_DEPTH {
                    return bad(cur.pos, format!("nested deeper than {MAX_DEPTH} levels"));
                }
                let mut map = b.map().map_err(src)?;
                let min = self.item_min(*values).saturating_add(1); // the key's length at least
                while let Some(count) = cur.block(min)? {
                    for _ in 0..count {
                        let start = cur.pos;
                        let n = cur.length()?;
                        let raw = cur.take(n)?;
                        let Ok(key) = std::str::from_utf8(raw) else {
                            return bad(start, "a map key that is not UTF-8");
                        };
                        b.before_entry(&mut map, key).map_err(src)?;
                        let v = self.value(*values, cur, b, depth + 1)?;
                        b.insert(&mut map, key, v).map_err(src)?;
                    }
                }
                b.end(&mut map).map_err(src)?;
                Ok(map)
            }
        }
    }

    /// Step over a value without building it (strings are not checked for UTF-8).
    fn skip<E>(&self, id: NodeId, cur: &mut Cursor<'_>, depth: usize) -> Res<(), E> {
        let Some(node) = self.schema.node_at(id) else {
            return bad(cur.pos, format!("schema node {id} missing"));
        };
        match node {
            Node::Null | Node::Pending => {}
            Node::Boolean => {
                cur.byte()?;
            }
            Node::Int | Node::Long => {
                cur.long()?;
            }
            Node::Float => {
                cur.take(4)?;
            }
            Node::Double => {
                cur.take(8)?;
            }
            Node::String | Node::Bytes => {
                let n = cur.length()?;
                cur.take(n)?;
            }
            Node::Fixed { size } => {
                cur.take(*size)?;
            }
            Node::Enum { symbols } => {
                let start = cur.pos;
                let i = cur.long()?;
                if usize::try_from(i).map_or(true, |i| i >= symbols.len()) {
                    return bad(start, format!("enum index {i} of {} symbols", symbols.len()));
                }
            }
            Node::Nullable { null_index, other } => {
                let start = cur.pos;
                let branch = cur.long()?;
                if branch == 1 - i64::from(*null_index) {
                    self.skip(*other, cur, depth)?;
                } else if branch != i64::from(*null_index) {
                    return bad(start, format!("union branch {branch} of 2"));
                }
            }
            Node::Single(branch) => {
                let start = cur.pos;
                match cur.long()? {
                    0 => self.skip(*branch, cur, depth)?,
                    n => return bad(start, format!("union branch {n} of 1")),
                }
            }
            Node::Record { fields } => {
                if depth >= MAX_DEPTH {
                    return bad(cur.pos, format!("nested deeper than {MAX_DEPTH} levels"));
                }
                for f in fields {
                    self.skip(f.node, cur, depth + 1)?;
                }
            }
            Node::Array(_) | Node::Map(_) => {
                if depth >= MAX_DEPTH {
                    return bad(cur.pos, format!("nested deeper than {MAX_DEPTH} levels"));
                }
                let (item, key) = match node {
                    Node::Array(items) => (*items, false),
                    Node::Map(values) => (*values, true),
                    _ => return Ok(()),
                };
                let min = self.item_min(item).saturating_add(usize::from(key));
                loop {
                    let start = cur.pos;
                    let n = cur.long()?;
                    if n == 0 {
                        break;
                    }
                    if n < 0 {
                        // a block with its size in bytes: one jump
                        let size = cur.length()?;
                        cur.take(size)?;
                        continue;
                    }
                    cur.pos = start;
                    let Some(count) = cur.block(min)? else { break };
                    for _ in 0..count {
                        if key {
                            let k = cur.length()?;
                            cur.take(k)?;
                        }
                        self.skip(item, cur, depth + 1)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::convert::Infallible;

    /// Values as JSON (bytes as an array of numbers).
    struct Json;

    impl Build for Json {
        type Value = Value;
        type Error = Infallible;
        fn null(&mut self) -> Result<Value, Infallible> {
            Ok(Value::Null)
        }
        fn boolean(&mut self, b: bool) -> Result<Value, Infallible> {
            Ok(json!(b))
        }
        fn long(&mut self, n: i64) -> Result<Value, Infallible> {
            Ok(json!(n))
        }
        fn double(&mut self, x: f64) -> Result<Value, Infallible> {
            Ok(json!(x))
        }
        fn string(&mut self, s: &str) -> Result<Value, Infallible> {
            Ok(json!(s))
        }
        fn bytes(&mut self, b: &[u8]) -> Result<Value, Infallible> {
            Ok(json!(b))
        }
        fn symbol(&mut self, s: &str) -> Result<Value, Infallible> {
            Ok(json!(s))
        }
        fn list(&mut self) -> Result<Value, Infallible> {
            Ok(json!([]))
        }
        fn push(&mut self, list: &mut Value, item: Value) -> Result<(), Infallible> {
            if let Value::Array(a) = list {
                a.push(item);
            }
            Ok(())
        }
        fn map(&mut self) -> Result<Value, Infallible> {
            Ok(json!({}))
        }
        fn insert(&mut self, map: &mut Value, key: &str, value: Value) -> Result<(), Infallible> {
            if let Value::Object(o) = map {
                o.insert(key.to_owned(), value);
            }
            Ok(())
        }
        fn record(&mut self) -> Result<Value, Infallible> {
            Ok(json!({}))
        }
        fn set(&mut self, record: &mut Value, _id: usize, name: &str, value: Value) -> Result<(), Infallible> {
            self.insert(record, name, value)
        }
    }

    fn reader(schema: Value, fields: Option<&[&str]>) -> Reader {
        let fields: Option<Vec<String>> = fields.map(|f| f.iter().map(|s| s.to_string()).collect());
        Reader::new(Writer::new(&schema).unwrap(), fields.as_deref()).unwrap()
    }

    fn read(r: &Reader, body: &[u8]) -> Res<Value, Infallible> {
        r.read(body, 0, &mut Json)
    }

    fn encode(schema: &Value, datum: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        Writer::new(schema).unwrap().encode(datum, &mut out).unwrap();
        out
    }

    fn schema() -> Value {
        json!({"type": "record", "name": "R", "namespace": "x", "fields": [
            {"name": "a", "type": "long"},
            {"name": "b", "type": ["null", "string"], "default": null},
            {"name": "c", "type": {"type": "map", "values": "long"}, "default": {}},
            {"name": "d", "type": {"type": "array", "items": "string"}},
            {"name": "e", "type": ["long", "null"]},
            {"name": "f", "type": ["string"]},
            {"name": "g", "type": {"type": "enum", "name": "E", "symbols": ["x", "y"]}, "default": "y"},
            {"name": "h", "type": "boolean"},
            {"name": "i", "type": ["null", "E"]},
            {"name": "k", "type": "double"},
            {"name": "l", "type": "float"},
            {"name": "m", "type": {"type": "fixed", "name": "F", "size": 2}},
            {"name": "n", "type": "bytes"},
        ]})
    }

    fn datum() -> Value {
        json!({"a": -300, "b": "hé", "c": {"k": 2, "j": i64::MIN}, "d": ["p", "q"], "e": null, "f": "s",
               "g": "y", "h": true, "i": "x", "k": 1.5, "l": 0.25, "m": "hi", "n": "\u{00ff}a"})
    }

    #[test]
    fn what_the_encoder_writes_reads_back() {
        let s = schema();
        let body = encode(&s, &datum());
        let mut want = datum();
        want["m"] = json!(b"hi");
        want["n"] = json!([255, 97]);
        assert_eq!(read(&reader(s.clone(), None), &body).unwrap(), want);
        let some = read(&reader(s, Some(&["a", "n", "nope"])), &body).unwrap();
        assert_eq!(some, json!({"a": -300, "n": [255, 97]}));
    }

    #[test]
    fn every_cut_of_a_body_is_an_error() {
        let s = schema();
        let body = encode(&s, &datum());
        let (whole, some) = (reader(s.clone(), None), reader(s, Some(&["a"])));
        for cut in 0..body.len() {
            assert!(matches!(read(&whole, &body[..cut]), Err(ReadError::Malformed { .. })), "{cut}");
            assert!(read(&some, &body[..cut]).is_err(), "{cut}");
        }
        assert!(whole.read(&body, body.len() + 1, &mut Json).is_err());
    }

    #[test]
    fn varints_longs_and_lengths() {
        let r = reader(json!("long"), None);
        for n in [0, -1, 1, 63, -64, 64, i64::MAX, i64::MIN] {
            let mut b = Vec::new();
            crate::avro::write_long(&mut b, n);
            assert_eq!(read(&r, &b).unwrap(), json!(n));
        }
        assert!(read(&r, &[0xFF; 10]).is_err()); // continues past the 10th byte
        assert!(read(&r, &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02]).is_err());
        assert!(read(&r, &[0x80]).is_err());
        let s = reader(json!("string"), None);
        assert!(read(&s, &[1]).is_err()); // length -1
        assert!(read(&s, &[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
        let e = read(&s, b"\x04\xc3\x28").unwrap_err();
        assert_eq!(e.to_string(), "a string that is not UTF-8 (byte 0 of 2) at offset 0");
        assert!(read(&s, b"\x06\xed\xa0\x80").is_err()); // a surrogate, as Python refuses it
    }

    #[test]
    fn unions_enums_blocks_and_bounds() {
        let r = reader(json!({"type": "record", "name": "R", "fields": [{"name": "x", "type": ["null", "long"]}]}), None);
        assert_eq!(read(&r, b"\x02\x04").unwrap(), json!({"x": 2}));
        let e = read(&r, b"\x04\x02").unwrap_err();
        assert!(e.to_string().contains("union branch 2"), "{e}");
        let en = reader(json!({"type": "enum", "name": "E", "symbols": ["a"]}), None);
        assert!(read(&en, b"\x02").is_err());
        assert!(read(&en, b"\x01").is_err());
        // negative counts with byte sizes
        let m = reader(json!({"type": "map", "values": "long"}), None);
        assert_eq!(read(&m, b"\x03\x06\x02k\x02\x02j\x04\x00").unwrap(), json!({"k": 1, "j": 2}));
        // a count beyond the bytes left, an i64::MIN count
        assert!(read(&m, b"\xFE\xFF\xFF\xFF\x0F\x00").is_err());
        assert!(read(&m, &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0, 0]).is_err());
        // nulls take no bytes: their count is bounded by MAX_EMPTY_ITEMS
        let nulls = reader(json!({"type": "array", "items": "null"}), None);
        assert_eq!(read(&nulls, b"\x06\x00").unwrap(), json!([null, null, null]));
        assert!(read(&nulls, b"\xFE\xFF\xFF\xFF\x0F\x00").is_err());
        let mut many = Vec::new();
        for _ in 0..5 {
            crate::avro::write_long(&mut many, (MAX_EMPTY_ITEMS / 4) as i64);
        }
        many.push(0);
        assert!(read(&nulls, &many).is_err());
        let skip = reader(json!({"type": "record", "name": "R", "fields": [
            {"name": "n", "type": {"type": "array", "items": "null"}}, {"name": "x", "type": "long"}]}), Some(&["x"]));
        assert!(read(&skip, &many).is_err());
    }

    #[test]
    fn deep_recursive_records_are_refused() {
        let s = json!({"type": "record", "name": "N", "fields": [{"name": "next", "type": ["null", "N"]}]});
        let r = reader(s, None);
        assert_eq!(read(&r, b"\x02\x00").unwrap(), json!({"next": {"next": null}}));
        let deep = [vec![2u8; MAX_DEPTH + 5], vec![0]].concat();
        assert!(read(&r, &deep).is_err());
    }

    #[test]
    fn fields_of_a_schema_that_is_not_a_record_are_refused() {
        assert!(Reader::new(Writer::new(&json!("long")).unwrap(), Some(&[])).is_err());
    }

    #[test]
    fn random_bodies_never_panic() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let s = schema();
        let body = encode(&s, &datum());
        let readers = [reader(s.clone(), None), reader(s, Some(&["d", "n"]))];
        for _ in 0..20_000 {
            let mut b = body.clone();
            for _ in 0..(next() % 4) {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            b.truncate((next() as usize) % (b.len() + 8));
            for r in &readers {
                let _ = read(r, &b);
            }
            let junk: Vec<u8> = (0..next() % 64).map(|_| next() as u8).collect();
            for r in &readers {
                let _ = read(r, &junk);
            }
        }
    }
}
