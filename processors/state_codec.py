"""Snapshot and restore of the analysis state: a restricted, safe "pickle into Avro".

:func:`encode_state` walks an object graph (an engine: connection tracker, L7 dispatcher,
observer, ... and everything they hold) and writes it as one ``EngineState`` datum of
``schemas/engine_state.avsc`` (Avro binary, written and read here directly: fastavro's
generic union handling was the larger part of the cost; :func:`read_avro` reads the same
bytes with fastavro); :func:`decode_state` builds a fresh graph from the bytes.
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
whole graph is decoded. A class whose state lives outside Python (the compiled core's
TCP tracker, see ``connection_tracker.py``, and HTTP analyser, ``l7/http.py``) has a ``_state_prepare()`` method, called before its fields are
read, that puts that state into a field as bytes (the core's own versioned, checked
encoding); its ``_state_restored()`` rebuilds the core object from them.
"""

from __future__ import annotations

import functools
import gc
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

from wirestream.avro_writer import zigzag as _varlong  # an Avro long: zigzag, then a varint
from wirestream.errors import WirestreamError

#: Version of the encoding (the envelope, the schema and the node rules). A change of
#: the state's classes or fields is a change of the format too: see LAYOUT_FILE.
STATE_FORMAT_VERSION = 4

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
    __slots__ = ("name", "slots", "has_dict", "exclude", "namedtuple", "getter", "prepare")

    def __init__(self, cls: type) -> None:
        self.name = _qualname(cls)
        # called before the fields are read: state held outside Python (the compiled
        # core's tracker) is put into a field as bytes
        self.prepare = getattr(cls, "_state_prepare", None)
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


# --- Avro binary, written and read directly -------------------------------------------------
#
# The walk writes Avro binary itself (and the decoder reads it while building the graph):
# through fastavro's generic union resolution, 100 000 open connections took a minute
# each way. The bytes are the canonical Avro encoding of the schema (one block per array
# and map, positive counts); tests/test_state_codec.py checks that fastavro reads them and
# writes the same bytes again.

# Union branch indexes of Value, as written (the zigzag varint of the index: one byte).
_T_NULL, _T_BOOL, _T_LONG, _T_DOUBLE, _T_BYTES, _T_STRING = 0x00, 0x02, 0x04, 0x06, 0x08, 0x0A
_T_SEQ, _T_DICT, _T_OBJ, _T_REF, _T_ENUM, _T_METHOD = 0x0C, 0x0E, 0x10, 0x12, 0x14, 0x16
_T_PARTIAL, _T_FUNCTION, _T_EXTERNAL, _T_BIGINT, _T_BYTEARRAY = 0x18, 0x1A, 0x1C, 0x1E, 0x20
_DOUBLE = struct.Struct("<d")


# Small ints are most of the values (ports, windows, flags, counters, lengths):
# precomputed, when the first state is encoded (~40 ms: not at import, in every process
# that imports the engine and may never write a checkpoint, as an `analyze` worker).
_CACHE_LO, _CACHE_HI = -1024, 1 << 16
_LONGS: list[bytes] = []
_VALUE_LONGS: list[bytes] = []


def _make_small_longs() -> None:
    if not _LONGS:  # (filled in place: the lists are bound by name in the loops)
        _LONGS.extend(_varlong(n) for n in range(_CACHE_LO, _CACHE_HI))
        _VALUE_LONGS.extend(bytes([_T_LONG]) + b for b in _LONGS)


def _vlong(n: int) -> bytes:
    if _CACHE_LO <= n < _CACHE_HI:
        return _LONGS[n - _CACHE_LO]
    return _varlong(n)


_SEQ_KINDS: dict[type, int] = {list: 0, tuple: 1, set: 2, frozenset: 3, deque: 4}
_SEQ_KIND_NAMES = ("list", "tuple", "set", "frozenset", "deque")
_DICT_KINDS: dict[type, int] = {dict: 0, Counter: 1, defaultdict: 2, OrderedDict: 3}
_DICT_KIND_NAMES = ("dict", "Counter", "defaultdict", "OrderedDict")
# A tuple or frozenset: no id (-1), no maxlen.
_VALUE_SEQ_HEAD = {tuple: bytes([_T_SEQ, 2, 1, 0]), frozenset: bytes([_T_SEQ, 6, 1, 0])}


class _Writer:
    def __init__(self, externals: Mapping[str, object]) -> None:
        _make_small_longs()
        self.externals = {id(obj): name for name, obj in externals.items()}
        self.keep = list(externals.values())  # (ids are only unique while alive)
        self.memo: dict[int, int] = {}  # id(object) -> node id
        self.shapes: dict[tuple[str, tuple[str, ...]], int] = {}
        self.out = bytearray()
        self.strings: dict[str, bytes] = {}  # str -> its Value encoding
        self.class_shapes: dict[type, int] = {}  # shape of the objects with every slot set

    def _new_id(self, obj: Any) -> bytes:
        memo = self.memo
        nid = memo[id(obj)] = len(memo)
        return _vlong(nid)

    def raw_string(self, s: str) -> None:
        try:
            b = s.encode()
        except UnicodeEncodeError:
            raise _Unencodable("a string that is not valid Unicode") from None
        self.out += _vlong(len(b))
        self.out += b

    def value(self, v: Any) -> None:
        """Write ``v`` as a Value."""
        t = type(v)
        out = self.out
        if t is int:
            if _CACHE_LO <= v < _CACHE_HI:
                out += _VALUE_LONGS[v - _CACHE_LO]
            elif _INT64_MIN <= v <= _INT64_MAX:
                out.append(_T_LONG)
                out += _varlong(v)
            else:
                out.append(_T_BIGINT)
                self.raw_string(str(v))
            return
        if t is str:
            enc = self.strings.get(v)
            if enc is None:
                try:
                    b = v.encode()
                except UnicodeEncodeError:
                    raise _Unencodable("a string that is not valid Unicode") from None
                enc = self.strings[v] = bytes([_T_STRING]) + _vlong(len(b)) + b
            out += enc
            return
        if v is None:
            out.append(_T_NULL)
            return
        if t is bool:
            out += b"\x02\x01" if v else b"\x02\x00"
            return
        if t is float:
            out.append(_T_DOUBLE)
            out += _DOUBLE.pack(v)
            return
        if t is bytes:
            out.append(_T_BYTES)
            out += _vlong(len(v))
            out += v
            return
        i = id(v)
        name = self.externals.get(i)
        if name is not None:
            out.append(_T_EXTERNAL)
            self.raw_string(name)
            return
        nid = self.memo.get(i)
        if nid is not None:
            out.append(_T_REF)
            out += _vlong(nid)
            return
        handler = _ENCODERS.get(t)
        if handler is None:
            handler = _handler_for(t)
        handler(self, v)

    def items(self, values: Any, n: int) -> None:
        """Write an array of ``n`` Values."""
        out = self.out
        if n:
            out += _vlong(n)
            value = self.value
            longs = _VALUE_LONGS
            i = 0
            strings = self.strings
            try:
                for i, x in enumerate(values):  # noqa: B007 (i names the failing item)
                    # (the common cases of value(), inlined: most fields are these)
                    t = type(x)
                    if t is int and _CACHE_LO <= x < _CACHE_HI:
                        out += longs[x - _CACHE_LO]
                    elif x is None:
                        out.append(_T_NULL)
                    elif t is int and _INT64_MIN <= x <= _INT64_MAX:
                        out.append(_T_LONG)
                        out += _varlong(x)
                    elif t is bool:
                        out += b"\x02\x01" if x else b"\x02\x00"
                    elif t is str and x in strings:
                        out += strings[x]
                    else:
                        value(x)
            except _Unencodable as exc:
                exc.parts.append(f"[{i}]")
                raise
        out.append(0)

    def seq(self, v: Any) -> None:
        t = type(v)
        out = self.out
        head = _VALUE_SEQ_HEAD.get(t)
        if head is not None:
            out += head
        else:
            out.append(_T_SEQ)
            out.append(_SEQ_KINDS[t] << 1)
            out += self._new_id(v)
            maxlen = v.maxlen if t is deque else None
            if maxlen is None:
                out.append(0)
            else:
                out.append(2)
                out += _vlong(maxlen)
        self.items(_sorted(v) if t is set or t is frozenset else v, len(v))

    def dict(self, v: Any) -> None:
        t = type(v)
        out = self.out
        out.append(_T_DICT)
        out.append(_DICT_KINDS[t] << 1)
        out += self._new_id(v)
        if t is defaultdict:
            try:
                self.value(v.default_factory)
            except _Unencodable as exc:
                exc.parts.append(".default_factory")
                raise
        else:
            out.append(_T_NULL)
        n = len(v)
        self.items(v.keys(), n)
        try:
            self.items(v.values(), n)
        except _Unencodable as exc:
            # the path names the key (the index in the values is of no help to a reader)
            index = int(exc.parts.pop()[1:-1])
            exc.parts.append(f"[{list(v)[index]!r}]")
            raise

    def bytearray(self, v: bytearray) -> None:
        # (a bytearray is mutable, but nothing in the state shares one: no id)
        self.out.append(_T_BYTEARRAY)
        self.out += _vlong(len(v))
        self.out += v

    def obj(self, v: Any) -> None:
        t = type(v)
        info = _CLASS_INFO.get(t)
        if info is None:
            info = _CLASS_INFO[t] = _ClassInfo(t)
        if info.prepare is not None:
            v._state_prepare()
        out = self.out
        shape = -1
        if info.namedtuple:
            names: tuple[str, ...] = t._fields
            raw: Any = v
            nid = b"\x01"  # -1
        elif info.getter is not None and not info.has_dict:
            # the usual case, a class with slots, all set: its shape is known by class
            nid = self._new_id(v)
            names = info.slots
            try:
                raw = info.getter(v)
                shape = self.class_shapes.get(t, -1)
            except AttributeError:
                names = tuple(s for s in names if hasattr(v, s))
                raw = tuple(getattr(v, s) for s in names)
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
            else:
                raw = ()
            if raw is None:
                names = tuple(s for s in names if hasattr(v, s))
                raw = tuple(getattr(v, s) for s in names)
            if info.has_dict:
                d = v.__dict__
                if info.exclude:
                    d = {k: x for k, x in d.items() if k not in info.exclude}
                if d:
                    names = names + tuple(d)
                    raw = tuple(raw) + tuple(d.values())
        if shape < 0:
            shapes = self.shapes
            key = (info.name, names)
            shape = shapes.get(key, -1)
            if shape < 0:
                shape = shapes[key] = len(shapes)
            if names is info.slots and not info.has_dict:
                self.class_shapes[t] = shape
        out.append(_T_OBJ)
        out += _vlong(shape)
        out += nid
        try:
            self.items(raw, len(names))
        except _Unencodable as exc:
            exc.parts[-1] = "." + names[int(exc.parts[-1][1:-1])]
            raise

    def enum(self, v: Enum) -> None:
        t = type(v)
        if not _allowed_module(t.__module__):
            raise _Unencodable(f"enum {_qualname(t)} is not of {ALLOWED_PREFIX}")
        name = v.name
        if name is not None and t.__members__.get(name) is v:
            self.out.append(_T_ENUM)
            self.raw_string(_qualname(t))
            self.out.append(2)
            self.raw_string(name)
            self.out.append(0)
        elif isinstance(v, Flag):
            self.out.append(_T_ENUM)
            self.raw_string(_qualname(t))
            self.out.append(0)
            self.out.append(2)
            self.out += _varlong(int(v.value))
        else:
            raise _Unencodable(f"enum value {v!r} has no name")

    def method(self, v: types.MethodType) -> None:
        name = v.__func__.__name__
        if name.startswith("__"):
            raise _Unencodable(f"bound method {name}")
        owner = v.__self__
        if isinstance(owner, type):
            raise _Unencodable(f"class method {v.__qualname__}")
        self.out.append(_T_METHOD)
        try:
            self.value(owner)
        except _Unencodable as exc:
            exc.parts.append(f".__self__ (of {name})")
            raise
        self.raw_string(name)

    def partial(self, v: functools.partial) -> None:
        if isinstance(v.func, type):
            raise _Unencodable(f"a partial of the class {_qualname(v.func)} (the decoder refuses it)")
        self.out.append(_T_PARTIAL)
        try:
            self.value(v.func)
        except _Unencodable as exc:
            exc.parts.append(".func")
            raise
        self.items(v.args, len(v.args))
        kwargs = v.keywords
        if kwargs:
            self.out += _vlong(len(kwargs))
            for k, x in kwargs.items():
                self.raw_string(k)
                try:
                    self.value(x)
                except _Unencodable as exc:
                    exc.parts.append(f".keywords[{k!r}]")
                    raise
        self.out.append(0)

    def function(self, v: Any) -> None:
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
        self.out.append(_T_FUNCTION)
        self.raw_string(module)
        self.raw_string(qualname)

    def numpy_scalar(self, v: Any) -> None:
        # numpy integers and floats are written as the Python number they equal (restored
        # as int / float: the analysers compare and add them, never ask for their type).
        self.value(v.item())


def _sorted(v: Any) -> Any:
    # Sets are written sorted when they can be, so that equal states encode to equal bytes.
    if len(v) < 2:
        return v
    try:
        return sorted(v)
    except TypeError:
        return v


_ENCODERS: dict[type, Callable[[_Writer, Any], None]] = {
    **dict.fromkeys(_SEQ_KINDS, _Writer.seq),
    **dict.fromkeys(_DICT_KINDS, _Writer.dict),
    bytearray: _Writer.bytearray,
    types.MethodType: _Writer.method,
    functools.partial: _Writer.partial,
    types.FunctionType: _Writer.function,
}


def _handler_for(t: type) -> Callable[[_Writer, Any], None]:
    """The encoder of a type met for the first time (then cached in _ENCODERS)."""
    handler: Callable[[_Writer, Any], None]
    if issubclass(t, Enum):
        handler = _Writer.enum
    elif issubclass(t, type):
        handler = _Writer.function  # a class as a value (a defaultdict factory)
    elif t is types.BuiltinFunctionType:
        handler = _unsupported_callable
    elif _allowed_module(t.__module__) and (
            t.__new__ is object.__new__ or (issubclass(t, tuple) and hasattr(t, "_fields"))):
        handler = _Writer.obj
    else:
        handler = _unsupported
    _ENCODERS[t] = handler
    return handler


def _unsupported(enc: _Writer, v: Any) -> None:
    t = type(v)
    module = t.__module__
    what = t.__qualname__ if module == "builtins" else f"{module}.{t.__qualname__}"
    if module.startswith("numpy"):
        what += " (convert numpy values to Python numbers before they are kept)"
    raise _Unencodable(f"unsupported type {what}")


def _unsupported_callable(enc: _Writer, v: Any) -> None:
    raise _Unencodable(f"unsupported callable {v!r} (a builtin method or function)")


try:  # numpy scalars (a value read from a packet batch without .tolist())
    import numpy as _np

    for _t in (_np.int8, _np.int16, _np.int32, _np.int64, _np.uint8, _np.uint16, _np.uint32,
               _np.uint64, _np.float32, _np.float64, _np.bool_):
        _ENCODERS[_t] = _Writer.numpy_scalar
except ImportError:  # pragma: no cover
    pass


def encode_state(root: object, externals: Mapping[str, object]) -> bytes:
    """The bytes of the object graph ``root`` (see the module's docstring). Raises
    :class:`StateError` naming the path of a value that cannot be encoded."""
    w = _Writer(externals)
    # Millions of small objects are made on the way (the bytes); a cyclic GC pass among
    # them costs more than the walk (measured: 3x with 100 000 open connections).
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        w.value(root)
    except _Unencodable as exc:
        path = "root" + "".join(reversed(exc.parts))
        raise StateError(f"{path}: {exc.reason}") from None
    except RecursionError:
        raise StateError("root: the state is nested too deeply to encode") from None
    finally:
        if gc_was_on:
            gc.enable()
    head = bytearray()
    if w.shapes:
        head += _vlong(len(w.shapes))
        for cls, fields in w.shapes:
            for s in (cls,):
                b = s.encode()
                head += _vlong(len(b)) + b
            if fields:
                head += _vlong(len(fields))
                for f in fields:
                    b = f.encode()
                    head += _vlong(len(b)) + b
            head.append(0)
    head.append(0)
    body = bytes(head + w.out)
    return _HEADER.pack(MAGIC, STATE_FORMAT_VERSION, zlib.crc32(body)) + body


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
    __slots__ = ("name", "cls", "fields", "namedtuple", "restored", "has_dict")

    def __init__(self, cls_name: str, fields: list[str]) -> None:
        module, _, qualname = cls_name.partition(":")
        cls = _resolve(module, qualname)
        if not isinstance(cls, type) or issubclass(cls, (Enum, BaseException)):
            raise StateError(f"{cls_name}: not a state class")
        self.namedtuple = issubclass(cls, tuple) and hasattr(cls, "_fields")
        self.has_dict = False
        if self.namedtuple:
            if tuple(fields) != cls._fields:
                raise StateError(f"{cls_name}: fields {fields} are not {list(cls._fields)} "
                                 "(checkpoint written by another version)")
        elif cls.__new__ is not object.__new__:
            raise StateError(f"{cls_name}: not a state class")
        else:
            info = _CLASS_INFO.get(cls) or _CLASS_INFO.setdefault(cls, _ClassInfo(cls))
            # all fields in __dict__ (no slots): filled at once
            self.has_dict = info.has_dict and not info.slots
            if not info.has_dict:
                unknown = set(fields) - set(info.slots)
                if unknown:
                    raise StateError(f"{cls_name}: no slot for {sorted(unknown)} "
                                     "(checkpoint written by another version)")
        for f in fields:
            if not isinstance(f, str) or not _NAME.match(f) or f.startswith("__"):
                raise StateError(f"{cls_name}: bad field name {f!r}")
        self.name = cls_name
        self.cls = cls
        self.fields = tuple(fields)
        self.restored = getattr(cls, "_state_restored", None) is not None


class _Reader:
    """Reads the Avro binary of an ``EngineState`` and builds the graph as it goes."""

    def __init__(self, data: bytes, externals: Mapping[str, object]) -> None:
        self.data = data
        self.pos = 0
        self.externals = externals
        self.nodes: list[Any] = []  # node id -> object
        self.restored: list[Any] = []  # objects whose _state_restored runs at the end
        self.shapes: list[_Shape] = []

    # -- Avro primitives --------------------------------------------------------------------

    def long(self) -> int:
        data = self.data
        pos = self.pos
        b = data[pos]
        pos += 1
        if b < 0x80:
            self.pos = pos
            return (b >> 1) ^ -(b & 1)
        z = b & 0x7F
        shift = 7
        while True:
            b = data[pos]
            pos += 1
            z |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift > 63:
                raise StateError("a long of more than 10 bytes")
        self.pos = pos
        if z >> 64:
            raise StateError("a long out of range")
        return (z >> 1) ^ -(z & 1)

    def raw_bytes(self) -> bytes:
        n = self.long()
        pos = self.pos
        end = pos + n
        if n < 0 or end > len(self.data):
            raise StateError("a byte string past the end (truncated?)")
        self.pos = end
        return self.data[pos:end]

    def raw_string(self) -> str:
        return self.raw_bytes().decode()

    def optional(self, read: Callable[[], Any]) -> Any:
        """A ``["null", X]`` union (not a Value): branch 0 is null, 1 is ``read()``."""
        tag = self.data[self.pos]
        self.pos += 1
        if tag == 0:
            return None
        if tag != 2:
            raise StateError(f"a bad optional branch ({tag:#x})")
        return read()

    def _blocks(self) -> Any:
        """The item counts of an array's or a map's blocks."""
        while True:
            n = self.long()
            if n == 0:
                return
            if n < 0:  # a block with its size in bytes (allowed by Avro; we never write it)
                n = -n
                self.long()
            yield n

    def strings(self) -> list[str]:
        out = []
        for n in self._blocks():
            for _ in range(n):
                out.append(self.raw_string())
        return out

    def items(self) -> list[Any]:
        value = self.value
        out: list[Any] = []
        while True:  # (_blocks inlined: an array per object and container)
            n = self.long()
            if n == 0:
                return out
            if n < 0:
                n = -n
                self.long()
            out += [value() for _ in range(n)]

    # -- Value --------------------------------------------------------------------------------

    def value(self) -> Any:
        data = self.data
        pos = self.pos
        tag = data[pos]
        if tag == _T_LONG:
            b = data[pos + 1]
            if b < 0x80:  # (a one-byte long, inlined: the most common value)
                self.pos = pos + 2
                return (b >> 1) ^ -(b & 1)
            self.pos = pos + 1
            return self.long()
        self.pos = pos + 1
        if tag == _T_STRING:
            return self.raw_string()
        if tag == _T_NULL:
            return None
        if tag == _T_BOOL:
            b = data[self.pos]
            self.pos += 1
            if b > 1:
                raise StateError("a bad boolean")
            return b == 1
        if tag == _T_DOUBLE:
            pos = self.pos
            self.pos = pos + 8
            return _DOUBLE.unpack_from(data, pos)[0]
        if tag == _T_BYTES:
            return self.raw_bytes()
        reader = _READERS.get(tag)
        if reader is None:
            raise StateError(f"a bad Value branch ({tag:#x})")
        return reader(self)

    def _register(self, nid: int, obj: Any) -> None:
        if nid != len(self.nodes):
            raise StateError(f"node id {nid} out of order")
        self.nodes.append(obj)

    def seq(self) -> Any:
        kind = self.long()
        nid = self.long()
        maxlen = self.optional(self.long)
        if kind == 1 or kind == 3:  # tuple, frozenset: values
            if nid != -1 or maxlen is not None:
                raise StateError("a tuple with an id")
            items = self.items()
            return tuple(items) if kind == 1 else frozenset(items)
        out: Any
        if kind == 0:
            out = []
        elif kind == 2:
            out = set()
        elif kind == 4:
            if maxlen is not None and (type(maxlen) is not int or maxlen < 0):
                raise StateError("a bad deque bound")
            out = deque(maxlen=maxlen)
        else:
            raise StateError(f"a bad sequence kind {kind}")
        self._register(nid, out)
        if kind == 2:
            out.update(self.items())
        else:
            out.extend(self.items())
        return out

    def dict(self) -> Any:
        kind = self.long()
        nid = self.long()
        out: Any
        if kind == 0:
            out = {}
        elif kind == 1:
            out = Counter()
        elif kind == 2:
            out = defaultdict()
        elif kind == 3:
            out = OrderedDict()
        else:
            raise StateError(f"a bad dict kind {kind}")
        self._register(nid, out)
        factory = self.value()
        if kind == 2:
            if factory is not None and not (
                    any(factory is f for f in _BUILTIN_FACTORIES.values())
                    or any(factory is f for f in _COLLECTIONS_FACTORIES.values())
                    or (isinstance(factory, (type, types.FunctionType))
                        and _allowed_module(getattr(factory, "__module__", "")))):
                raise StateError(f"defaultdict factory {factory!r} not allowed")
            out.default_factory = factory
        elif factory is not None:
            raise StateError("a factory for a dict that is not a defaultdict")
        keys = self.items()
        values = self.items()
        if len(keys) != len(values):
            raise StateError("a dict with more keys than values")
        for k, x in zip(keys, values, strict=True):
            out[k] = x
        return out

    def obj(self) -> Any:
        index = self.long()
        if not 0 <= index < len(self.shapes):
            raise StateError(f"a bad shape {index}")
        shape = self.shapes[index]
        nid = self.long()
        fields = shape.fields
        if shape.namedtuple:
            if nid != -1:
                raise StateError("a NamedTuple with an id")
            values = self.items()
            if len(values) != len(fields):
                raise StateError(f"{shape.name}: {len(values)} values for {len(fields)} fields")
            return tuple.__new__(shape.cls, values)
        obj = object.__new__(shape.cls)
        self._register(nid, obj)
        values = self.items()
        if len(values) != len(fields):
            raise StateError(f"{shape.name}: {len(values)} values for {len(fields)} fields")
        if shape.has_dict:
            obj.__dict__.update(zip(fields, values, strict=True))
        else:
            setattr_ = object.__setattr__
            for name, x in zip(fields, values, strict=True):
                setattr_(obj, name, x)
        if shape.restored:
            self.restored.append(obj)
        return obj

    def ref(self) -> Any:
        nid = self.long()
        if not 0 <= nid < len(self.nodes):
            raise StateError(f"reference to unknown node {nid}")
        return self.nodes[nid]

    def enum(self) -> Any:
        cls_name = self.raw_string()
        name = self.optional(self.raw_string)
        value = self.optional(self.long)
        module, _, qualname = cls_name.partition(":")
        cls = _resolve(module, qualname)
        if not isinstance(cls, type) or not issubclass(cls, Enum):
            raise StateError(f"{cls_name}: not an enum")
        if type(name) is str:
            member = cls.__members__.get(name)
            if member is None:
                raise StateError(f"{cls_name}: no member {name} (checkpoint written by another version)")
            return member
        if name is None and issubclass(cls, Flag) and type(value) is int:
            try:
                return cls(value)
            except ValueError:
                raise StateError(f"{cls_name}: no value {value}") from None
        raise StateError(f"{cls_name}: a member without a name")

    def method(self) -> Any:
        external = self.data[self.pos] == _T_EXTERNAL
        obj = self.value()
        name = self.raw_string()
        if not _NAME.match(name) or name.startswith("__"):
            raise StateError(f"method {name!r} not allowed")
        if external:
            bound = getattr(obj, name, None)
            if not callable(bound):
                raise StateError(f"the external has no method {name}")
            return bound
        func = getattr(type(obj), name, None)
        if not isinstance(func, types.FunctionType) or not _allowed_module(func.__module__):
            raise StateError(f"{_qualname(type(obj))}.{name}: not a method "
                             "(checkpoint written by another version)")
        return types.MethodType(func, obj)

    def partial(self) -> Any:
        func = self.value()
        # (not a class: a partial would be a way to construct any class of ours with
        # arguments from the data)
        if not isinstance(func, (types.MethodType, types.FunctionType, functools.partial)):
            raise StateError("a partial of something that is not a function")
        args = self.items()
        kwargs = {}
        for n in self._blocks():
            for _ in range(n):
                k = self.raw_string()
                kwargs[k] = self.value()
        return functools.partial(func, *args, **kwargs)

    def function(self) -> Any:
        module = self.raw_string()
        qualname = self.raw_string()
        if module == "builtins" and qualname in _BUILTIN_FACTORIES:
            return _BUILTIN_FACTORIES[qualname]
        if module == "collections" and qualname in _COLLECTIONS_FACTORIES:
            return _COLLECTIONS_FACTORIES[qualname]
        f = _resolve(module, qualname)
        if not isinstance(f, (types.FunctionType, type)) or (
                isinstance(f, type) and issubclass(f, BaseException)):
            raise StateError(f"{module}:{qualname}: not a function")
        return f

    def external(self) -> Any:
        name = self.raw_string()
        try:
            return self.externals[name]
        except KeyError:
            raise StateError(f"the state needs the external {name!r}, which the restorer did not pass") from None

    def bigint(self) -> int:
        text = self.raw_string()
        if not re.fullmatch(r"-?[0-9]{1,4000}", text):
            raise StateError("a bad big integer")
        return int(text)

    def bytearray(self) -> bytearray:
        return bytearray(self.raw_bytes())

    def state(self) -> Any:
        """The whole ``EngineState``: the shapes, then the root."""
        for n in self._blocks():
            for _ in range(n):
                cls = self.raw_string()
                self.shapes.append(_Shape(cls, self.strings()))
        root = self.value()
        if self.pos != len(self.data):
            raise StateError("engine state has trailing bytes")
        return root


_READERS: dict[int, Callable[[_Reader], Any]] = {
    _T_SEQ: _Reader.seq, _T_DICT: _Reader.dict, _T_OBJ: _Reader.obj, _T_REF: _Reader.ref,
    _T_ENUM: _Reader.enum, _T_METHOD: _Reader.method, _T_PARTIAL: _Reader.partial,
    _T_FUNCTION: _Reader.function, _T_EXTERNAL: _Reader.external, _T_BIGINT: _Reader.bigint,
    _T_BYTEARRAY: _Reader.bytearray,
}


def _body(data: bytes) -> bytes:
    """The Avro body of encoded bytes (envelope checked)."""
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
    body = data[_HEADER.size:]
    if zlib.crc32(body) != crc:
        raise StateError("engine state damaged or truncated (CRC mismatch)")
    return body


def decode_state(data: bytes, externals: Mapping[str, object]) -> object:
    """A fresh object graph from :func:`encode_state`'s bytes; ``externals`` gives back the
    objects encoded by name. Raises :class:`StateError` (and nothing else) for bytes that
    are not a state this version can restore."""
    reader = _Reader(_body(data), externals)
    gc_was_on = gc.isenabled()
    gc.disable()  # (as in encode_state)
    try:
        root = reader.state()
        for obj in reader.restored:
            obj._state_restored()
    except StateError:
        raise
    except IndexError:
        raise StateError("engine state truncated") from None
    except Exception as exc:  # noqa: BLE001 - malformed input must not escape as anything else
        raise StateError(f"engine state not restorable: {type(exc).__name__}: {exc}") from None
    finally:
        if gc_was_on:
            gc.enable()
    return root


def read_avro(data: bytes) -> dict[str, Any]:
    """The ``EngineState`` of encoded bytes as fastavro reads it (records in unions as
    ``(name, record)``): for tools and tests, not for restoring."""
    body = _body(data)
    stream = io.BytesIO(body)
    try:
        datum = fastavro.schemaless_reader(stream, _schema(), None, return_record_name=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad state
        raise StateError(f"engine state not readable: {type(exc).__name__}: {exc}") from None
    if stream.tell() != len(body):
        raise StateError("engine state has trailing bytes")
    return datum


# --- layout -----------------------------------------------------------------------------------


def state_layout(data: bytes) -> dict[str, list[str]]:
    """What an encoded state depends on in the code, ``name -> sorted names``: each class
    with the fields of its objects, each enum with the members used (``enum <cls>``), and
    the methods and functions referred to (``methods``, ``functions``). A rename of any of
    them makes older checkpoints unrestorable."""
    datum = read_avro(data)
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
