"""Read pcap and pcapng capture files (optionally gzip-compressed) frame by frame.

:func:`open_capture` checks the file and returns a :class:`CaptureReader`; iterating it
yields :class:`Frame` tuples. File-level problems (missing, empty, not a capture, an
unsupported link type for the whole file) raise :class:`CaptureFileError` with the path
and the problem; damage inside an otherwise valid file (a truncated last record, a block
with an impossible length) ends or skips the damaged part and is counted in
``reader.problems`` under a named reason.

Formats:
- pcap: https://www.ietf.org/archive/id/draft-gharris-opsawg-pcap-01.html
  (magic a1b2c3d4 = microseconds, a1b23c4d = nanoseconds, either byte order)
- pcapng: https://www.ietf.org/archive/id/draft-tuexen-opsawg-pcapng-05.html
  (SHB, IDB with if_tsresol/if_tsoffset, EPB, SPB and the obsolete PB; other blocks skipped)
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

from wirestream.errors import CaptureFileError

#: Link types the decoder understands (LINKTYPE_* numbers of tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_DLT12 = 12  # DLT_RAW on most BSDs / Linux
LINKTYPE_RAW_DLT14 = 14  # DLT_RAW on OpenBSD
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

SUPPORTED_LINKTYPES: dict[int, str] = {
    LINKTYPE_NULL: "BSD loopback (null)",
    LINKTYPE_ETHERNET: "Ethernet",
    LINKTYPE_RAW_DLT12: "raw IP",
    LINKTYPE_RAW_DLT14: "raw IP",
    LINKTYPE_RAW: "raw IP",
    LINKTYPE_LOOP: "OpenBSD loopback",
    LINKTYPE_LINUX_SLL: "Linux cooked v1",
    LINKTYPE_IPV4: "raw IPv4",
    LINKTYPE_IPV6: "raw IPv6",
    LINKTYPE_LINUX_SLL2: "Linux cooked v2",
}

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1),
    b"\x4d\x3c\xb2\xa1": ("<", 1000),  # nanoseconds: divide by 1000 to get µs
    b"\xa1\xb2\x3c\x4d": (">", 1000),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_GZIP_MAGIC = b"\x1f\x8b"

_CHUNK = 8 << 20  # read 8 MiB at a time: bounded memory on files of any size
_MAX_BLOCK = 256 << 20  # a pcapng block or pcap record longer than this is corruption
# Smallest valid total length of the pcapng blocks we parse: 12 bytes of framing plus
# their fixed fields (SHB 16, IDB 8, EPB 20, SPB 4, PB 20).
_MIN_BLOCK = {0x0A0D0D0A: 28, 1: 20, 6: 32, 3: 16, 2: 32}


class Frame(NamedTuple):
    """One captured frame: link-layer bytes as captured, and where it came from."""

    number: int  # 1-based, as Wireshark numbers frames
    ts_us: int  # microseconds since the epoch
    linktype: int
    data: bytes
    orig_len: int


class CaptureReader:
    """Iterate the frames of one capture file. Use :func:`open_capture` to make one."""

    def __init__(self, path: str, stream: BinaryIO, fmt: str, size: int) -> None:
        self.path = path
        self.format = fmt  # "pcap" or "pcapng", with "+gzip" when compressed
        self.size = size  # bytes on disk, for progress
        self._stream = stream
        self.problems: Counter[str] = Counter()
        self.frames_read = 0
        self.linktypes: set[int] = set()

    @property
    def bytes_read(self) -> int:
        """Position in the file on disk (compressed bytes for gzip), for progress bars."""
        raw = getattr(self._stream, "fileobj", None) or self._stream
        try:
            return raw.tell()
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        if self.format.startswith("pcapng"):
            return self._pcapng_frames()
        return self._pcap_frames()

    # --- chunked reading -------------------------------------------------------------

    def _chunks(self) -> Iterator[bytes]:
        # read1, not read: GzipFile.read(n) throws away everything it decompressed when
        # it hits the cut end of a truncated stream, which would lose the frames before
        # the damage; read1 returns what it has and raises on the next call. zlib.error
        # (corrupt deflate data) is not an OSError, so it is named.
        read = getattr(self._stream, "read1", self._stream.read)
        while True:
            try:
                data = read(_CHUNK)
            except (EOFError, gzip.BadGzipFile, OSError, zlib.error) as exc:
                # A gzip stream cut short: keep what was read, count the damage.
                self.problems["truncated_gzip"] += 1
                del exc
                return
            if not data:
                return
            yield data

    # --- pcap ------------------------------------------------------------------------

    def _pcap_frames(self) -> Iterator[Frame]:
        chunks = self._chunks()
        buf = b""
        for chunk in chunks:
            buf += chunk
            if len(buf) >= 24:
                break
        endian, divisor = _PCAP_MAGICS[buf[:4]]
        _vmaj, _vmin, _tz, _sig, _snap, network = struct.unpack_from(endian + "HHiIII", buf, 4)
        linktype = network & 0x0FFFFFFF  # upper bits may carry FCS length info
        self.linktypes.add(linktype)
        rec = struct.Struct(endian + "IIII")
        pos = 24
        number = 0
        while True:
            end = len(buf)
            # parse every complete record in the buffer
            while pos + 16 <= end:
                ts_sec, ts_frac, incl_len, orig_len = rec.unpack_from(buf, pos)
                if incl_len > _MAX_BLOCK:
                    self.problems["corrupt_record_header"] += 1
                    return
                if pos + 16 + incl_len > end:
                    break
                number += 1
                data = buf[pos + 16 : pos + 16 + incl_len]
                pos += 16 + incl_len
                yield Frame(number, ts_sec * 1_000_000 + ts_frac // divisor, linktype, data, orig_len)
            self.frames_read = number
            nxt = next(chunks, None)
            if nxt is None:
                if pos < end:
                    self.problems["truncated_record"] += 1
                return
            buf = buf[pos:] + nxt
            pos = 0

    # --- pcapng ----------------------------------------------------------------------

    def _pcapng_frames(self) -> Iterator[Frame]:
        chunks = self._chunks()
        buf = b""
        pos = 0
        endian = "<"
        interfaces: list[tuple[int, int, int]] = []  # (linktype, ts units per second, ts offset s)
        number = 0
        # (two per-packet unpacks, compiled once per byte order rather than per call)
        block_head, epb_head = _BLOCK_HEAD[endian], _EPB_HEAD[endian]
        while True:
            end = len(buf)
            while pos + 12 <= end:
                if buf[pos : pos + 4] == _PCAPNG_SHB:
                    # A section header: byte order comes from its byte-order magic.
                    bom = buf[pos + 8 : pos + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        endian = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        endian = ">"
                    else:
                        self.problems["corrupt_section_header"] += 1
                        return
                    block_head, epb_head = _BLOCK_HEAD[endian], _EPB_HEAD[endian]
                    interfaces = []  # interface ids are per section
                btype, blen = block_head(buf, pos)
                # A block shorter than its type's fixed fields (e.g. an EPB of 16 bytes)
                # would make struct.unpack_from below read past the block (struct.error
                # at the end of the file): a corrupt length, as tshark says.
                if blen < _MIN_BLOCK.get(btype, 12) or blen % 4 or blen > _MAX_BLOCK:
                    self.problems["corrupt_block_length"] += 1
                    return
                if pos + blen > end:
                    break
                body = pos + 8
                if btype == 6:  # Enhanced Packet Block
                    iface, ts_hi, ts_lo, cap_len, orig_len = epb_head(buf, body)
                    number += 1
                    if iface >= len(interfaces) or body + 20 + cap_len > pos + blen - 4:
                        self.problems["corrupt_packet_block"] += 1
                    else:
                        linktype, units, offset = interfaces[iface]
                        ts = (ts_hi << 32) | ts_lo
                        ts_us = ts * 1_000_000 // units if units != 1_000_000 else ts
                        yield Frame(number, ts_us + offset * 1_000_000, linktype,
                                    buf[body + 20 : body + 20 + cap_len], orig_len)
                elif btype == 3:  # Simple Packet Block: no timestamp, interface 0
                    (orig_len,) = struct.unpack_from(endian + "I", buf, body)
                    number += 1
                    if not interfaces:
                        self.problems["corrupt_packet_block"] += 1
                    else:
                        cap_len = min(orig_len, blen - 16)
                        yield Frame(number, 0, interfaces[0][0], buf[body + 4 : body + 4 + cap_len], orig_len)
                elif btype == 2:  # obsolete Packet Block
                    iface, _drops, ts_hi, ts_lo, cap_len, orig_len = struct.unpack_from(endian + "HHIIII", buf, body)
                    number += 1
                    if iface >= len(interfaces):
                        self.problems["corrupt_packet_block"] += 1
                    else:
                        linktype, units, offset = interfaces[iface]
                        ts = (ts_hi << 32) | ts_lo
                        yield Frame(number, ts * 1_000_000 // units + offset * 1_000_000, linktype,
                                    buf[body + 20 : body + 20 + cap_len], orig_len)
                elif btype == 1:  # Interface Description Block
                    linktype, _res, _snap = struct.unpack_from(endian + "HHI", buf, body)
                    units, offset = _idb_options(buf, body + 8, pos + blen - 4, endian)
                    interfaces.append((linktype, units, offset))
                    self.linktypes.add(linktype)
                pos += blen
            self.frames_read = number
            nxt = next(chunks, None)
            if nxt is None:
                if pos < end:
                    self.problems["truncated_block"] += 1
                return
            buf = buf[pos:] + nxt
            pos = 0


_BLOCK_HEAD = {e: struct.Struct(e + "II").unpack_from for e in "<>"}  # block type, length
_EPB_HEAD = {e: struct.Struct(e + "IIIII").unpack_from for e in "<>"}  # iface, ts, caplen, len


def _idb_options(buf: bytes, pos: int, end: int, endian: str) -> tuple[int, int]:
    """Return (timestamp units per second, timestamp offset in seconds) from IDB options."""
    units, offset = 1_000_000, 0  # default resolution is microseconds
    while pos + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", buf, pos)
        if code == 0:
            break
        value = buf[pos + 4 : pos + 4 + length]
        if code == 9 and length >= 1:  # if_tsresol
            r = value[0]
            units = 2 ** (r & 0x7F) if r & 0x80 else 10 ** r
        elif code == 14 and length == 8:  # if_tsoffset
            (offset,) = struct.unpack(endian + "q", value)
        pos += 4 + ((length + 3) & ~3)
    return units, offset


def open_capture(path: str) -> CaptureReader:
    """Open a pcap or pcapng file (plain or gzip) and check its header.

    Raises :class:`CaptureFileError` naming the file and the problem.
    """
    try:
        size = os.path.getsize(path)
        raw: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by CaptureReader
    except FileNotFoundError:
        raise CaptureFileError(path, "no such file") from None
    except IsADirectoryError:
        raise CaptureFileError(path, "is a directory, not a capture file") from None
    except PermissionError:
        raise CaptureFileError(path, "permission denied") from None
    except OSError as exc:
        raise CaptureFileError(path, exc.strerror or str(exc)) from None
    if os.path.isdir(path):
        raw.close()
        raise CaptureFileError(path, "is a directory, not a capture file")
    if size == 0:
        raw.close()
        raise CaptureFileError(path, "empty file")
    compressed = raw.read(2) == _GZIP_MAGIC

    def fresh_stream() -> BinaryIO:
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw  # type: ignore[return-value]

    try:
        head = fresh_stream().read(24)
    except (OSError, EOFError, zlib.error) as exc:  # (zlib.error is not an OSError)
        raw.close()
        raise CaptureFileError(path, f"damaged gzip data ({exc})") from None
    if head[:4] in _PCAP_MAGICS:
        fmt = "pcap"
        if len(head) < 24:
            raw.close()
            raise CaptureFileError(path, "truncated pcap file header")
        endian = _PCAP_MAGICS[head[:4]][0]
        linktype = struct.unpack_from(endian + "I", head, 20)[0] & 0x0FFFFFFF
        if linktype not in SUPPORTED_LINKTYPES:
            raw.close()
            raise CaptureFileError(path, f"unsupported link type {linktype} ({_supported_text()})")
    elif head[:4] == _PCAPNG_SHB:
        fmt = "pcapng"
        if len(head) < 12 or head[8:12] not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
            raw.close()
            raise CaptureFileError(path, "not a valid pcapng section header")
    else:
        raw.close()
        raise CaptureFileError(path, "not a pcap or pcapng capture file (unknown magic number)")
    stream = fresh_stream()
    fmt += "+gzip" if compressed else ""
    return CaptureReader(path, stream, fmt, size)


def _supported_text() -> str:
    names = sorted({f"{n} {name}" for n, name in SUPPORTED_LINKTYPES.items()})
    return "supported: " + ", ".join(names)
