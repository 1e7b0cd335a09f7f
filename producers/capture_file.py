"""Read pcap and pcapng capture files (optionally gzip-compressed) frame by frame.

:func:`open_capture` checks the file and returns a :class:`CaptureReader`; iterating it
yields :class:`Frame` tuples. File-level problems (missing, empty, not a capture, an
unsupported link type for the whole file) raise :class:`CaptureFileError` with the path
and the problem; damage inside an otherwise valid file (a truncated last record, a block
with an impossible length) ends or skips the damaged part and is counted in
``reader.problems`` under a named reason (``truncated_record``, ``corrupt_record_header``,
``truncated_block``, ``corrupt_block_length``, ``corrupt_section_header``,
``corrupt_packet_block``, ``truncated_gzip``).

The reading is the compiled core's (``rust/src/capture_file.rs``, docs/core.md): this
module is its typed Python face. A replay does not iterate frames in Python at all: it
hands :attr:`CaptureReader.core` to the core's read -> decode -> batch loop
(``producers/pcap_replay.py``).

Formats:
- pcap: https://www.ietf.org/archive/id/draft-gharris-opsawg-pcap-01.html
  (magic a1b2c3d4 = microseconds, a1b23c4d = nanoseconds, either byte order)
- pcapng: https://www.ietf.org/archive/id/draft-tuexen-opsawg-pcapng-05.html
  (SHB, IDB with if_tsresol/if_tsoffset, EPB, SPB and the obsolete PB; other blocks skipped)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import NamedTuple

from wirestream import _core

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

#: {link type: name}, the core's list (error messages name them)
SUPPORTED_LINKTYPES: dict[int, str] = _core.supported_linktypes()

#: bytes read from the file at a time (bounded memory on files of any size); tests make
#: it tiny to split records across reads
_CHUNK = 8 << 20


class Frame(NamedTuple):
    """One captured frame: link-layer bytes as captured, and where it came from."""

    number: int  # 1-based, as Wireshark numbers frames
    ts_us: int  # microseconds since the epoch
    linktype: int
    data: bytes
    orig_len: int


class CaptureReader:
    """Iterate the frames of one capture file. Use :func:`open_capture` to make one."""

    def __init__(self, path: str, core: _core.CaptureReader) -> None:
        self.path = path
        #: the compiled reader, for the core's own loops (``pcap_replay``)
        self.core = core
        self.format: str = core.format  # "pcap" or "pcapng", with "+gzip" when compressed
        self.size: int = core.size  # bytes on disk, for progress

    @property
    def problems(self) -> Counter[str]:
        """Damage found so far, by name."""
        return Counter(self.core.problems())

    @property
    def linktypes(self) -> set[int]:
        """The link types the file declares (pcap: one; pcapng: one per interface)."""
        return set(self.core.linktypes())

    @property
    def frames_read(self) -> int:
        """Frame numbers given so far (unusable packet blocks keep their number too)."""
        return int(self.core.frames_read)

    @property
    def bytes_read(self) -> int:
        """Position in the file on disk (compressed bytes for gzip), for progress bars."""
        return int(self.core.bytes_read)

    def close(self) -> None:
        self.core.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        next_frame = self.core.next_frame
        while (t := next_frame()) is not None:
            yield Frame(*t)


def open_capture(path: str) -> CaptureReader:
    """Open a pcap or pcapng file (plain or gzip) and check its header.

    Raises :class:`CaptureFileError` naming the file and the problem.
    """
    path = str(path)
    return CaptureReader(path, _core.open_capture(path, _CHUNK))


#: pcapng Decryption Secrets Block (block type 0x0000000A) and its TLS key log type ("TLSK")
_DSB, _TLS_KEY_LOG = 0x0000000A, 0x544C534B
#: the blocks that hold packets: secrets are looked for before the first of them
_PACKET_BLOCKS = frozenset({0x00000002, 0x00000003, 0x00000006})
#: at most this many bytes of blocks are walked looking for secrets
_SECRETS_SCAN_LIMIT = 64 << 20


def tls_secrets(path: str) -> bytes:
    """The TLS key log lines of a pcapng file's Decryption Secrets Blocks (what
    ``editcap --inject-secrets tls,KEYS`` and Wireshark write; the NSS key log format),
    b"" when it has none or is not pcapng. Read are the blocks before the first packet,
    where those tools put them (secrets of other kinds, SSH or WireGuard, are skipped).
    Raises OSError if the file cannot be read; a malformed block ends the search."""
    import gzip
    import struct

    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        f = gzip.open(raw) if compressed else raw  # type: ignore[assignment]
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"\x0a\x0d\x0d\x0a":
            return b""
        order = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}.get(head[8:12])
        if order is None:
            return b""
        (length,) = struct.unpack(order + "I", head[4:8])
        f.read(max(length - 12, 0))
        secrets, walked = [], length
        while walked < _SECRETS_SCAN_LIMIT:
            header = f.read(8)
            if len(header) < 8:
                break
            kind, length = struct.unpack(order + "II", header)
            if length < 12 or kind in _PACKET_BLOCKS:
                break
            body = f.read(length - 8)
            if len(body) < length - 8:
                break
            walked += length
            if kind == 0x0A0D0D0A:  # a new section may change the byte order
                order = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}.get(body[:4], order)
            elif kind == _DSB and len(body) >= 12:
                secrets_type, secrets_len = struct.unpack(order + "II", body[:8])
                if secrets_type == _TLS_KEY_LOG and 8 + secrets_len <= len(body) - 4:
                    secrets.append(body[8:8 + secrets_len].rstrip(b"\0"))
        return b"\n".join(secrets)
