"""Struct member offsets and enum values of the running kernel, from its BTF.

bcc compiles programs against a kernel header tree, and on machines whose kernel has no
headers package that tree is another version's (scripts/bcc-headers installs Debian's
6.1 headers for a 6.18 kernel). A program that reads kernel structs (``struct sk_buff``
in ``bpf/packet_drops.c``) must therefore not take their layout from the headers: it
takes the offsets this module reads from ``/sys/kernel/btf/vmlinux`` (the running
kernel's own type information, ``CONFIG_DEBUG_INFO_BTF``) and gets them as ``-D``
macros.

Only what is needed is decoded: the type table is walked once (about 0.2 s for a
vmlinux BTF of ~150k types) and structs, unions, enums and typedefs are kept by name.
Format: Documentation/bpf/btf.rst.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

BTF_MAGIC = 0xEB9F
(KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD, KIND_TYPEDEF,
 KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC,
 KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64) = range(1, 20)
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


class BTFError(Exception):
    """The kernel's BTF is missing, damaged, or lacks a type or member asked for."""


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int  # 0: not a bitfield


@dataclass(frozen=True)
class Type:
    kind: int
    name: str
    size_or_type: int  # size for INT/STRUCT/UNION/ENUM, referenced type for PTR/TYPEDEF/...
    members: tuple[Member, ...] = ()
    values: tuple[tuple[str, int], ...] = ()  # ENUM/ENUM64
    nelems: int = 0  # ARRAY
    elem_type: int = 0  # ARRAY


class BTF:
    """The types of one BTF blob (by default the running kernel's)."""

    def __init__(self, path: Path = VMLINUX_BTF) -> None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BTFError(f"cannot read kernel BTF {path}: {exc.strerror} (CONFIG_DEBUG_INFO_BTF)") from None
        if len(data) < 24:
            raise BTFError(f"{path}: too short for a BTF header")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BTFError(f"{path}: not BTF (magic {magic:#x}, or not little-endian)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._strings = data[hdr_len + str_off: hdr_len + str_off + str_len]
        self._types: list[Type | None] = [None]  # id 0 is void
        self._by_name: dict[tuple[int, str], int] = {}
        self._parse(data, hdr_len + type_off, hdr_len + type_off + type_len)

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def _parse(self, data: bytes, pos: int, end: int) -> None:
        unpack3 = struct.Struct("<III").unpack_from
        while pos < end:
            name_off, info, size_or_type = unpack3(data, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kind_flag = info >> 31
            members: tuple[Member, ...] = ()
            values: tuple[tuple[str, int], ...] = ()
            nelems = elem = 0
            if kind == KIND_INT or kind == KIND_VAR or kind == KIND_DECL_TAG:
                pos += 4
            elif kind == KIND_ARRAY:
                elem, _index, nelems = unpack3(data, pos)
                pos += 12
            elif kind in (KIND_STRUCT, KIND_UNION):
                ms = []
                for _ in range(vlen):
                    m_name, m_type, m_off = unpack3(data, pos)
                    pos += 12
                    if kind_flag:
                        ms.append(Member(self._str(m_name), m_type, m_off & 0xFFFFFF, m_off >> 24))
                    else:
                        ms.append(Member(self._str(m_name), m_type, m_off, 0))
                members = tuple(ms)
            elif kind == KIND_ENUM:
                vs = []
                for _ in range(vlen):
                    v_name, v_val = struct.unpack_from("<Ii", data, pos)
                    pos += 8
                    vs.append((self._str(v_name), v_val))
                values = tuple(vs)
            elif kind == KIND_ENUM64:
                vs = []
                for _ in range(vlen):
                    v_name, lo, hi = unpack3(data, pos)
                    pos += 12
                    vs.append((self._str(v_name), hi << 32 | lo))
                values = tuple(vs)
            elif kind == KIND_FUNC_PROTO:
                pos += 8 * vlen
            elif kind == KIND_DATASEC:
                pos += 12 * vlen
            elif kind not in (KIND_PTR, KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST,
                              KIND_RESTRICT, KIND_FUNC, KIND_FLOAT, KIND_TYPE_TAG):
                raise BTFError(f"unknown BTF kind {kind} at type {len(self._types)}")
            name = self._str(name_off) if name_off else ""
            type_id = len(self._types)
            self._types.append(Type(kind, name, size_or_type, members, values, nelems, elem))
            if name and kind in (KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_TYPEDEF):
                self._by_name.setdefault((kind, name), type_id)

    # --- queries ------------------------------------------------------------------------------

    def type(self, type_id: int) -> Type:
        t = self._types[type_id]
        if t is None:
            raise BTFError("void has no members")
        return t

    def resolve(self, type_id: int) -> int:
        """Through typedefs and qualifiers to the type itself."""
        while type_id and self.type(type_id).kind in _MODIFIERS:
            type_id = self.type(type_id).size_or_type
        return type_id

    def struct_id(self, name: str) -> int:
        for kind in (KIND_STRUCT, KIND_UNION):
            if (kind, name) in self._by_name:
                return self._by_name[kind, name]
        raise BTFError(f"the kernel's BTF has no struct {name}")

    def enum(self, name: str) -> dict[int, str]:
        """Value -> name of an enum (``skb_drop_reason``)."""
        for kind in (KIND_ENUM, KIND_ENUM64):
            if (kind, name) in self._by_name:
                return {v: n for n, v in self._types[self._by_name[kind, name]].values}  # type: ignore[union-attr]
        raise BTFError(f"the kernel's BTF has no enum {name}")

    def _find(self, type_id: int, name: str) -> tuple[int, Member] | None:
        """(bit offset, member) of ``name`` in a struct/union, looking into anonymous
        members (the kernel nests fields in anonymous unions and struct_group()s)."""
        t = self.type(self.resolve(type_id))
        for m in t.members:
            if m.name == name:
                return m.bit_offset, m
        for m in t.members:
            if not m.name:
                found = self._find(m.type_id, name)
                if found is not None:
                    return m.bit_offset + found[0], found[1]
        return None

    def offset(self, struct_name: str, path: str) -> int:
        """Byte offset of member ``path`` (``"a.b.c"``, through nested structs) in struct
        ``struct_name``. Raises BTFError if a member is missing or a bitfield."""
        type_id = self.struct_id(struct_name)
        bits = 0
        for part in path.split("."):
            found = self._find(type_id, part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path} in this kernel's BTF")
            off, member = found
            if member.bitfield_size:
                raise BTFError(f"struct {struct_name}.{path} is a bitfield")
            bits += off
            type_id = member.type_id
        if bits % 8:
            raise BTFError(f"struct {struct_name}.{path} is not byte-aligned")
        return bits // 8

    def size(self, struct_name: str, path: str) -> int:
        """Size in bytes of member ``path`` of struct ``struct_name`` (ints, pointers, arrays
        of those, structs)."""
        type_id = self.struct_id(struct_name)
        for part in path.split("."):
            found = self._find(type_id, part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path} in this kernel's BTF")
            type_id = found[1].type_id
        return self._sizeof(type_id)

    def _sizeof(self, type_id: int) -> int:
        t = self.type(self.resolve(type_id))
        if t.kind == KIND_PTR:
            return 8
        if t.kind == KIND_ARRAY:
            return t.nelems * self._sizeof(t.elem_type)
        return t.size_or_type
