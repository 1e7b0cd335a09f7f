"""Snapshot and restore of the analysis state: a restricted, safe "pickle into Avro".

:func:`encode_state` walks an object graph (an engine: connection tracker, L7 dispatcher,
observer, ... and everything they hold) and writes it as one ``EngineState`` datum of
``schemas/engine_state.avsc``; :func:`decode_state` builds a fresh graph from the bytes.
docs/checkpoints.md (## Format) documents the encoding node by node; in short:

- plain values (None, bool, int, float, bytes, str) are Avro primitives; containers
  (list, tuple, set, frozenset, deque, dict, Counter, defaultdict, OrderedDict, bytearray)
  and objects of classes of ``wirestream.processors`` are records; an object's class and
  field names are written once per *shape* (class + field list) in a table, not per object;
- every mutable node (object, dict, list, set, deque) gets an id when first seen and is a
  ``Ref`` afterwards, so sharing and cycles survive a restore (one ``stats`` Counter
  shared by the dispatcher, the DNS matcher and every stream context stays one object);
- callables are only bound methods, ``functools.partial`` of them, and module-level
  functions/classes: a closure or lambda is refused (with the path to it), since its
  code and cells cannot be restored safely;
- ``externals`` name the objects that are not state (the output sink, options, the
  Kubernetes enricher): they are written as their name and given back by the restorer.

Decoding is restricted: it creates only instances of classes defined in modules of
``wirestream.processors`` (with ``object.__new__``, no ``__init__``), the listed stdlib
containers, and looks up functions only there (or builtin types, as defaultdict
factories). It calls nothing else from the data. Anything else, and any malformed input,
is a :class:`StateError`. A class may name fields that are not state in a class attribute
``_state_exclude`` and rebuild them in a ``_state_restored()`` method, called once the
whole graph is decoded (the HTTP analyser's llhttp parsers, see ``l7/http.py``).
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import re
import struct
import sys
import types
import zlib
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Mapping
from enum import Enum, Flag
from importlib import resources
from operator import attrgetter
from typing import Any

import fastavro

from wirestream.errors import WirestreamError

#: Version of the encoding (the envelope, the schema and the node rules). A change of
#: the state's classes or fields is a change of the format too: see LAYOUT_FILE.
STATE_FORMAT_VERSION = 1

#: First bytes of every encoded state, then the version (u16) and the CRC-32 of the
#: Avro body (u32), big-endian.
MAGIC = b"WSES"
_HEADER = struct.Struct(">4sHI")

#: Generated: the classes and fields the state of a full-featured run uses
#: (tests/test_state_codec.py checks it; regenerate as it says).
LAYOUT_FILE = "engine_state_layout.json"

#: Modules whose classes may be instantiated, and functions looked up, on decode.
ALLOWED_PREFIX = "wirestream.processors"

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_NONE_TYPE = type(None)

#: Builtin callables a defaultdict may have as its factory.
_BUILTIN_FACTORIES: dict[str, Callable[[], Any]] = {
    f.__name__: f for f in (int, float, str, bytes, bool, list, dict, set, frozenset, tuple)
}
_COLLECTIONS_FACTORIES: dict[str, Callable[[], Any]] = {
    f.__name__: f for f in (Counter, OrderedDict, deque, defaultdict)
}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class StateError(WirestreamError):
    """A state that cannot be encoded (the message names the path of the value) or bytes
    that are not a state this version can restore."""


class _Unencodable(StateError):
    """Raised inside the walk; collects the path on its way out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.parts: list[str] = []


# --- the schema -------------------------------------------------------------------------------


@functools.cache
def _schema() -> Any:
    text = resources.files("wirestream.schemas").joinpath("engine_state.avsc").read_text("utf-8")
    return fastavro.parse_schema(json.loads(text))


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def _allowed_module(module: str) -> bool:
    return module == ALLOWED_PREFIX or module.startswith(ALLOWED_PREFIX + ".")


# --- encode -----------------------------------------------------------------------------------

# Per class of object: how to read its fields. Computed once per class (the MRO walk).
class _ClassInfo:
    __slots__ = ("name", "slots", "has_dict", "exclude", "namedtuple", "getter")

    def __init__(self, cls: type) -> None:
        self.name = _qualname(cls)
        exclude = frozenset(getattr(cls, "_state_exclude", ()))
        self.exclude = exclude
        slots: list[str] = []
        for klass in reversed(cls.__mro__):
            declared = klass.__dict__.get("__slots__", ())
            if isinstance(declared, str):
                declared = (declared,)
            for s in declared:
                if s in ("__dict__", "__weakref__") or s in exclude or s in slots:
                    continue
                # a private slot's attribute is stored under its mangled name
                if s.startswith("__") and not s.endswith("__"):
                    s = f"_{klass.__name__.lstrip('_')}{s}"
                slots.append(s)
        self.slots = tuple(slots)
        self.has_dict = cls.__dictoffset__ != 0 and not issubclass(cls, tuple)
        self.namedtuple = issubclass(cls, tuple) and hasattr(cls, "_fields")
        # every slot at once, at C speed, when all are set (the usual case)
        self.getter = attrgetter(*slots) if len(slots) > 1 else None


_CLASS_INFO: dict[type, _ClassInfo] = {}


class _Encoder:
    def __init__(self, externals: Mapping[str, object]) -> None:
        self.externals = {id(obj): name for name, obj in externals.items()}
        self.keep = list(externals.values())  # (ids are only unique while alive)
        self.memo: dict[int, int] = {}  # id(object) -> node id
        self.shapes: dict[tuple[str, tuple[str, ...]], int] = {}

    def _new_id(self, obj: Any) -> int:
        memo = self.memo
        nid = memo[id(obj)] = len(memo)
        return nid

    # Each value is a Value branch: a plain Python value for the primitives, else the
    # (record name, record) tuple notation of fastavro (no guessing of the union branch).
    def value(self, v: Any) -> Any:
        t = type(v)
        if t is int:
            if _INT64_MIN <= v <= _INT64_MAX:
                return v
            return ("wirestream.state.BigInt", {"text": str(v)})
        if t is str or t is _NONE_TYPE or t is bool or t is float or t is bytes:
            return v
        i = id(v)
        name = self.externals.get(i)
        if name is not None:
            return ("wirestream.state.External", {"name": name})
        nid = self.memo.get(i)
        if nid is not None:
            return ("wirestream.state.Ref", {"id": nid})
        handler = _ENCODERS.get(t)
        if handler is None:
            handler = _handler_for(t)
        return handler(self, v)

    def items(self, values: Any) -> list[Any]:
        out = []
        value = self.value
        i = 0
        try:
            for i, x in enumerate(values):  # noqa: B007 (i names the failing item)
                tx = type(x)
                if tx is str or tx is _NONE_TYPE or tx is bool or tx is float or tx is bytes or (
                        tx is int and _INT64_MIN <= x <= _INT64_MAX):
                    out.append(x)
                else:
                    out.append(value(x))
        except _Unencodable as exc:
            exc.parts.append(f"[{i}]")
            raise
        return out

    def seq(self, v: Any) -> Any:
        t = type(v)
        kind = _SEQ_KINDS[t]
        nid = -1 if t is tuple or t is frozenset else self._new_id(v)
        if t is set or t is frozenset:
            items = self.items(_sorted(v))
        else:
            items = self.items(v)
        maxlen = v.maxlen if t is deque else None
        return ("wirestream.state.Seq", {"kind": kind, "id": nid, "maxlen": maxlen, "items": items})

    def dict(self, v: Any) -> Any:
        t = type(v)
        nid = self._new_id(v)
        factory = None
        if t is defaultdict:
            try:
                factory = self.value(v.default_factory)
            except _Unencodable as exc:
                exc.parts.append(".default_factory")
                raise
        keys = self.items(v.keys())
        try:
            values = self.items(v.values())
        except _Unencodable as exc:
            # the path names the key (the items() index is of no help to a reader)
            index = int(exc.parts.pop()[1:-1])
            exc.parts.append(f"[{list(v)[index]!r}]")
            raise
        return ("wirestream.state.Dict", {"kind": _DICT_KINDS[t], "id": nid, "factory": factory,
                         "keys": keys, "values": values})

    def bytearray(self, v: bytearray) -> Any:
        # (a bytearray is mutable, but nothing in the state shares one: no id)
        return ("wirestream.state.ByteArray", {"data": bytes(v)})

    def obj(self, v: Any) -> Any:
        t = type(v)
        info = _CLASS_INFO.get(t)
        if info is None:
            info = _CLASS_INFO[t] = _ClassInfo(t)
        if info.namedtuple:
            names: tuple[str, ...] = t._fields
            raw: Any = tuple(v)
            nid = -1
        else:
            nid = self._new_id(v)
            names = info.slots
            raw = None
            if info.getter is not None:
                try:
                    raw = info.getter(v)
                except AttributeError:  # an unset slot: those that are set
                    raw = None
            elif names:
                try:
                    raw = (getattr(v, names[0]),)
                except AttributeError:
                    raw = None
            if raw is None and names:
                present = [s for s in names if hasattr(v, s)]
                names = tuple(present)
                raw = tuple(getattr(v, s) for s in present)
            elif not names:
                raw = ()
            if info.has_dict:
                d = v.__dict__
                if info.exclude:
                    d = {k: x for k, x in d.items() if k not in info.exclude}
                if d:
                    names = names + tuple(d)
                    raw = tuple(raw) + tuple(d.values())
        shape_key = (info.name, names)
        shape = self.shapes.get(shape_key)
        if shape is None:
            shape = self.shapes[shape_key] = len(self.shapes)
        try:
            values = self.items(raw)
        except _Unencodable as exc:
            exc.parts[-1] = "." + names[int(exc.parts[-1][1:-1])]
            raise
        return ("wirestream.state.Obj", {"shape": shape, "id": nid, "values": values})

    def enum(self, v: Enum) -> Any:
        t = type(v)
        if not _allowed_module(t.__module__):
            raise _Unencodable(f"enum {_qualname(t)} is not of {ALLOWED_PREFIX}")
        name = v.name
        if name is not None and t.__members__.get(name) is v:
            return ("wirestream.state.Enum", {"cls": _qualname(t), "name": name, "value": None})
        if isinstance(v, Flag):
            return ("wirestream.state.Enum", {"cls": _qualname(t), "name": None, "value": int(v.value)})
        raise _Unencodable(f"enum value {v!r} has no name")

    def method(self, v: types.MethodType) -> Any:
        name = v.__func__.__name__
        if name.startswith("__"):
            raise _Unencodable(f"bound method {name}")
        owner = v.__self__
        if isinstance(owner, type):
            raise _Unencodable(f"class method {v.__qualname__}")
        try:
            obj = self.value(owner)
        except _Unencodable as exc:
            exc.parts.append(f".__self__ (of {name})")
            raise
        return ("wirestream.state.Method", {"obj": obj, "name": name})

    def partial(self, v: functools.partial) -> Any:
        try:
            func = self.value(v.func)
        except _Unencodable as exc:
            exc.parts.append(".func")
            raise
        args = self.items(v.args)
        kwargs = {k: self.value(x) for k, x in v.keywords.items()}
        return ("wirestream.state.Partial", {"func": func, "args": args, "kwargs": kwargs})

    def function(self, v: Any) -> Any:
        module = getattr(v, "__module__", None) or ""
        qualname = getattr(v, "__qualname__", "")
        if "<" in qualname:  # <lambda>, <locals>: a closure or lambda
            raise _Unencodable(f"{'lambda' if '<lambda>' in qualname else 'closure'} "
                               f"{module}:{qualname} (use a bound method or functools.partial)")
        if module == "builtins" and _BUILTIN_FACTORIES.get(qualname) is v:
            pass
        elif module == "collections" and _COLLECTIONS_FACTORIES.get(qualname) is v:
            pass
        elif not _allowed_module(module):
            raise _Unencodable(f"function {module}:{qualname} is not of {ALLOWED_PREFIX}")
        return ("wirestream.state.Function", {"module": module, "qualname": qualname})


def _sorted(v: Any) -> Any:
    # Sets are written sorted when they can be, so that equal states encode to equal bytes.
    if len(v) < 2:
        return v
    try:
        return sorted(v)
    except TypeError:
        return v


_SEQ_KINDS: dict[type, str] = {list: "list", tuple: "tuple", set: "set",
                               frozenset: "frozenset", deque: "deque"}
_DICT_KINDS: dict[type, str] = {dict: "dict", Counter: "Counter", defaultdict: "defaultdict",
                                OrderedDict: "OrderedDict"}

_ENCODERS: dict[type, Callable[[_Encoder, Any], Any]] = {
    **dict.fromkeys(_SEQ_KINDS, _Encoder.seq),
    **dict.fromkeys(_DICT_KINDS, _Encoder.dict),
    bytearray: _Encoder.bytearray,
    types.MethodType: _Encoder.method,
    functools.partial: _Encoder.partial,
    types.FunctionType: _Encoder.function,
}


def _handler_for(t: type) -> Callable[[_Encoder, Any], Any]:
    """The encoder of a type met for the first time (then cached in _ENCODERS)."""
    handler: Callable[[_Encoder, Any], Any]
    if isinstance(t, type) and issubclass(t, Enum):
        handler = _Encoder.enum
    elif t is type or issubclass(t, type):
        handler = _Encoder.function  # a class as a value (a defaultdict factory)
    elif t in (types.BuiltinFunctionType,):
        handler = _unsupported_callable
    elif _allowed_module(t.__module__) and (
            t.__new__ is object.__new__ or (issubclass(t, tuple) and hasattr(t, "_fields"))):
        handler = _Encoder.obj
    else:
        handler = _unsupported
    _ENCODERS[t] = handler
    return handler


def _unsupported(enc: _Encoder, v: Any) -> Any:
    t = type(v)
    module = t.__module__
    what = t.__qualname__ if module == "builtins" else f"{module}.{t.__qualname__}"
    if type(v).__module__.startswith("numpy"):
        what += " (convert numpy values to Python numbers before they are kept)"
    raise _Unencodable(f"unsupported type {what}")


def _unsupported_callable(enc: _Encoder, v: Any) -> Any:
    raise _Unencodable(f"unsupported callable {v!r} (a builtin method or function)")


def _numpy_scalar(enc: _Encoder, v: Any) -> Any:
    # numpy integers and floats are written as the Python number they equal (restored as
    # int / float: the analysers compare and add them, never ask for their numpy type).
    return enc.value(v.item())


try:  # numpy scalars (a value read from a packet batch without .tolist())
    import numpy as _np

    for _t in (_np.int8, _np.int16, _np.int32, _np.int64, _np.uint8, _np.uint16, _np.uint32,
               _np.uint64, _np.float32, _np.float64, _np.bool_):
        _ENCODERS[_t] = _numpy_scalar
except ImportError:  # pragma: no cover
    pass


def encode_state(root: object, externals: Mapping[str, object]) -> bytes:
    """The bytes of the object graph ``root`` (see the module's docstring). Raises
    :class:`StateError` naming the path of a value that cannot be encoded."""
    enc = _Encoder(externals)
    try:
        tree = enc.value(root)
    except _Unencodable as exc:
        path = "root" + "".join(reversed(exc.parts))
        raise StateError(f"{path}: {exc.reason}") from None
    except RecursionError:
        raise StateError("root: the state is nested too deeply to encode") from None
    shapes = [{"cls": cls, "fields": list(fields)} for (cls, fields) in enc.shapes]
    body = io.BytesIO()
    fastavro.schemaless_writer(body, _schema(), {"shapes": shapes, "root": tree})
    data = body.getvalue()
    return _HEADER.pack(MAGIC, STATE_FORMAT_VERSION, zlib.crc32(data)) + data


# --- decode -----------------------------------------------------------------------------------


def _resolve(module: str, qualname: str) -> Any:
    """``module:qualname`` of an allowed module, without calling anything but the import
    of that (our own) module."""
    if not _allowed_module(module):
        raise StateError(f"{module}:{qualname}: not a module of {ALLOWED_PREFIX}")
    parts = qualname.split(".")
    if not all(_NAME.match(p) and not p.startswith("__") for p in parts):
        raise StateError(f"{module}:{qualname}: not a plain name")
    mod = sys.modules.get(module)
    if mod is None:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            raise StateError(f"{module}: no such module (checkpoint written by another version)") from None
    obj: Any = mod
    for p in parts:
        obj = obj.__dict__.get(p) if isinstance(obj, (types.ModuleType, type)) else None
        if obj is None:
            raise StateError(f"{module}:{qualname}: not found (checkpoint written by another version)")
    if getattr(obj, "__module__", None) != module:
        raise StateError(f"{module}:{qualname}: not defined there")
    return obj


class _Shape:
    __slots__ = ("cls", "fields", "namedtuple", "restored")

    def __init__(self, cls_name: str, fields: list[str]) -> None:
        module, _, qualname = cls_name.partition(":")
        cls = _resolve(module, qualname)
        if not isinstance(cls, type) or issubclass(cls, (Enum, BaseException)):
            raise StateError(f"{cls_name}: not a state class")
        self.namedtuple = issubclass(cls, tuple) and hasattr(cls, "_fields")
        if self.namedtuple:
            if tuple(fields) != cls._fields:
                raise StateError(f"{cls_name}: fields {fields} are not {list(cls._fields)} "
                                 "(checkpoint written by another version)")
        elif cls.__new__ is not object.__new__:
            raise StateError(f"{cls_name}: not a state class")
        else:
            info = _CLASS_INFO.get(cls) or _CLASS_INFO.setdefault(cls, _ClassInfo(cls))
            if not info.has_dict:
                unknown = set(fields) - set(info.slots)
                if unknown:
                    raise StateError(f"{cls_name}: no slot for {sorted(unknown)} "
                                     "(checkpoint written by another version)")
        for f in fields:
            if not isinstance(f, str) or not _NAME.match(f) or f.startswith("__"):
                raise StateError(f"{cls_name}: bad field name {f!r}")
        self.cls = cls
        self.fields = tuple(fields)
        self.restored = getattr(cls, "_state_restored", None) is not None


class _Decoder:
    def __init__(self, shapes: list[dict[str, Any]], externals: Mapping[str, object]) -> None:
        self.shapes = [_Shape(s["cls"], s["fields"]) for s in shapes]
        self.externals = externals
        self.nodes: list[Any] = []  # node id -> object
        self.restored: list[Any] = []  # objects whose _state_restored runs at the end

    def value(self, node: Any) -> Any:
        if type(node) is tuple:
            kind, rec = node
            return _DECODERS[kind](self, rec)
        return node

    def _register(self, nid: int, obj: Any) -> None:
        if nid != len(self.nodes):
            raise StateError(f"node id {nid} out of order")
        self.nodes.append(obj)

    def seq(self, rec: dict[str, Any]) -> Any:
        kind = rec["kind"]
        value = self.value
        nid = rec["id"]
        if kind == "tuple":
            return tuple([value(x) for x in rec["items"]])
        if kind == "frozenset":
            return frozenset([value(x) for x in rec["items"]])
        out: Any
        if kind == "list":
            out = []
        elif kind == "set":
            out = set()
        else:
            out = deque(maxlen=rec["maxlen"])
        self._register(nid, out)
        if kind == "set":
            out.update([value(x) for x in rec["items"]])
        else:
            out.extend([value(x) for x in rec["items"]])
        return out

    def dict(self, rec: dict[str, Any]) -> Any:
        kind = rec["kind"]
        out: Any
        if kind == "dict":
            out = {}
        elif kind == "Counter":
            out = Counter()
        elif kind == "OrderedDict":
            out = OrderedDict()
        else:
            factory = self.value(rec["factory"])
            if factory is not None and not (
                    factory in _BUILTIN_FACTORIES.values()
                    or factory in _COLLECTIONS_FACTORIES.values()
                    or _allowed_module(getattr(factory, "__module__", ""))):
                raise StateError(f"defaultdict factory {factory!r} not allowed")
            out = defaultdict(factory)
        self._register(rec["id"], out)
        keys, values = rec["keys"], rec["values"]
        if len(keys) != len(values):
            raise StateError("a dict with more keys than values")
        value = self.value
        for k, x in zip(keys, values, strict=True):
            out[value(k)] = value(x)
        return out

    def obj(self, rec: dict[str, Any]) -> Any:
        shape: _Shape = self.shapes[rec["shape"]]
        values = rec["values"]
        if len(values) != len(shape.fields):
            raise StateError(f"{_qualname(shape.cls)}: {len(values)} values for "
                             f"{len(shape.fields)} fields")
        value = self.value
        if shape.namedtuple:
            return tuple.__new__(shape.cls, [value(x) for x in values])
        obj = object.__new__(shape.cls)
        self._register(rec["id"], obj)
        setattr_ = object.__setattr__
        for name, x in zip(shape.fields, values, strict=True):
            setattr_(obj, name, value(x))
        if shape.restored:
            self.restored.append(obj)
        return obj

    def ref(self, rec: dict[str, Any]) -> Any:
        nid = rec["id"]
        if not 0 <= nid < len(self.nodes):
            raise StateError(f"reference to unknown node {nid}")
        return self.nodes[nid]

    def enum(self, rec: dict[str, Any]) -> Any:
        module, _, qualname = rec["cls"].partition(":")
        cls = _resolve(module, qualname)
        if not isinstance(cls, type) or not issubclass(cls, Enum):
            raise StateError(f"{rec['cls']}: not an enum")
        name = rec["name"]
        if name is not None:
            member = cls.__members__.get(name)
            if member is None:
                raise StateError(f"{rec['cls']}: no member {name} (checkpoint written by another version)")
            return member
        if issubclass(cls, Flag) and rec["value"] is not None:
            try:
                return cls(rec["value"])
            except ValueError:
                raise StateError(f"{rec['cls']}: no value {rec['value']}") from None
        raise StateError(f"{rec['cls']}: a member without a name")

    def method(self, rec: dict[str, Any]) -> Any:
        name = rec["name"]
        if not _NAME.match(name) or name.startswith("__"):
            raise StateError(f"method {name!r} not allowed")
        external = type(rec["obj"]) is tuple and rec["obj"][0] == "wirestream.state.External"
        obj = self.value(rec["obj"])
        func = getattr(type(obj), name, None)
        if external:
            bound = getattr(obj, name, None)
            if not callable(bound):
                raise StateError(f"external has no method {name}")
            return bound
        if not isinstance(func, types.FunctionType):
            raise StateError(f"{_qualname(type(obj))}.{name}: not a method (checkpoint written by another version)")
        return types.MethodType(func, obj)

    def partial(self, rec: dict[str, Any]) -> Any:
        func = self.value(rec["func"])
        if not callable(func) or not isinstance(
                func, (types.MethodType, types.FunctionType, functools.partial, type)):
            raise StateError("partial of something not callable")
        value = self.value
        return functools.partial(func, *[value(x) for x in rec["args"]],
                                 **{k: value(x) for k, x in rec["kwargs"].items()})

    def function(self, rec: dict[str, Any]) -> Any:
        module, qualname = rec["module"], rec["qualname"]
        if module == "builtins" and qualname in _BUILTIN_FACTORIES:
            return _BUILTIN_FACTORIES[qualname]
        if module == "collections" and qualname in _COLLECTIONS_FACTORIES:
            return _COLLECTIONS_FACTORIES[qualname]
        f = _resolve(module, qualname)
        if not isinstance(f, (types.FunctionType, type)):
            raise StateError(f"{module}:{qualname}: not a function")
        return f

    def external(self, rec: dict[str, Any]) -> Any:
        name = rec["name"]
        try:
            return self.externals[name]
        except KeyError:
            raise StateError(f"the state needs the external {name!r}, which the restorer did not pass") from None

    def bigint(self, rec: dict[str, Any]) -> int:
        text = rec["text"]
        if not re.fullmatch(r"-?[0-9]{1,4000}", text):
            raise StateError("a bad big integer")
        return int(text)

    def bytearray(self, rec: dict[str, Any]) -> bytearray:
        return bytearray(rec["data"])


# (fastavro names the union's records by their full names)
_DECODERS: dict[str, Callable[[_Decoder, dict[str, Any]], Any]] = {
    f"wirestream.state.{name}": f for name, f in (
        ("Seq", _Decoder.seq), ("Dict", _Decoder.dict), ("Obj", _Decoder.obj),
        ("Ref", _Decoder.ref), ("Enum", _Decoder.enum), ("Method", _Decoder.method),
        ("Partial", _Decoder.partial), ("Function", _Decoder.function),
        ("External", _Decoder.external), ("BigInt", _Decoder.bigint),
        ("ByteArray", _Decoder.bytearray))
}


def _read(data: bytes) -> dict[str, Any]:
    """The ``EngineState`` datum of encoded bytes (envelope checked)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise StateError(f"a state is bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise StateError(f"not an engine state: {len(data)} bytes")
    magic, version, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise StateError("not an engine state (bad magic)")
    if version != STATE_FORMAT_VERSION:
        raise StateError(f"engine state format {version}, this version reads "
                         f"{STATE_FORMAT_VERSION} (checkpoint written by another version)")
    body = memoryview(data)[_HEADER.size:]
    if zlib.crc32(body) != crc:
        raise StateError("engine state damaged or truncated (CRC mismatch)")
    stream = io.BytesIO(body)
    try:
        datum = fastavro.schemaless_reader(stream, _schema(), None, return_record_name=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad state
        raise StateError(f"engine state not readable: {type(exc).__name__}: {exc}") from None
    if stream.tell() != len(body):
        raise StateError("engine state has trailing bytes")
    return datum


def decode_state(data: bytes, externals: Mapping[str, object]) -> object:
    """A fresh object graph from :func:`encode_state`'s bytes; ``externals`` gives back the
    objects encoded by name. Raises :class:`StateError` (and nothing else) for bytes that
    are not a state this version can restore."""
    datum = _read(data)
    try:
        dec = _Decoder(datum["shapes"], externals)
        root = dec.value(datum["root"])
        for obj in dec.restored:
            obj._state_restored()
    except StateError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed input must not escape as anything else
        raise StateError(f"engine state not restorable: {type(exc).__name__}: {exc}") from None
    return root


# --- layout -----------------------------------------------------------------------------------


def state_layout(data: bytes) -> dict[str, list[str]]:
    """What an encoded state depends on in the code, ``name -> sorted names``: each class
    with the fields of its objects, each enum with the members used (``enum <cls>``), and
    the methods and functions referred to (``methods``, ``functions``). A rename of any of
    them makes older checkpoints unrestorable."""
    datum = _read(data)
    shapes = datum["shapes"]
    out: dict[str, set[str]] = {}
    for shape in shapes:
        out.setdefault(shape["cls"], set()).update(shape["fields"])
    ids: dict[int, str] = {}  # node id -> class, of the objects
    owners: list[tuple[Any, str]] = []  # (the obj node of a Method, its name)
    stack = [datum["root"]]
    while stack:
        node = stack.pop()
        if type(node) is not tuple:
            continue
        kind, rec = node
        kind = kind.rpartition(".")[2]
        if kind == "Seq":
            stack.extend(rec["items"])
        elif kind == "Dict":
            stack.extend(rec["keys"])
            stack.extend(rec["values"])
            stack.append(rec["factory"])
        elif kind == "Obj":
            ids[rec["id"]] = shapes[rec["shape"]]["cls"]
            stack.extend(rec["values"])
        elif kind == "Enum":
            module, _, qualname = rec["cls"].partition(":")
            # every member (any may be in a later state), as the code has them now
            out[f"enum {rec['cls']}"] = set(_resolve(module, qualname).__members__)
        elif kind == "Method":
            owners.append((rec["obj"], rec["name"]))
            stack.append(rec["obj"])
        elif kind == "Partial":
            stack.append(rec["func"])
            stack.extend(rec["args"])
            stack.extend(rec["kwargs"].values())
        elif kind == "Function":
            out.setdefault("functions", set()).add(f"{rec['module']}:{rec['qualname']}")
    for obj, name in owners:
        kind, rec = obj if type(obj) is tuple else ("", {})
        kind = kind.rpartition(".")[2]
        if kind == "External":
            owner = f"external {rec['name']}"
        elif kind in ("Obj", "Ref"):
            owner = ids.get(rec["id"], "?")
        else:
            owner = "?"
        out.setdefault("methods", set()).add(f"{owner}.{name}")
    return {name: sorted(names) for name, names in sorted(out.items())}


def read_layout() -> dict[str, Any]:
    """The committed layout file (``schemas/engine_state_layout.json``)."""
    text = resources.files("wirestream.schemas").joinpath(LAYOUT_FILE).read_text("utf-8")
    return json.loads(text)
