"""producers.capture_file: pcap/pcapng (plain and gzip) frames, timestamps and damage.

Every capture is built at test time by ``tests/captures.py``. Where tshark can read a file
the frame numbers and timestamps are checked against ``tshark -T fields -e
frame.time_epoch``; deliberately damaged files are only checked against what we wrote.
"""

from __future__ import annotations

import functools
import gzip
import random
import struct
from decimal import Decimal

import captures as cap
import pytest
from helpers import requires_tshark, tshark_rows
from wirestream.producers.capture_file import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_RAW,
    open_capture,
)

from wirestream.errors import CaptureFileError


def sample_records(n: int = 5) -> list[cap.Record]:
    """n Ethernet frames (TCP and UDP, v4 and v6) with sub-µs timestamps; one snapped short."""
    recs = cap.timed(_sample_frames(n))
    ts, data = recs[-1]
    recs[-1] = (ts, data[:40], len(data))  # captured with a snap length: orig_len > caplen
    return recs


@functools.cache
def _sample_frames(n: int) -> tuple[bytes, ...]:
    frames = []
    for i in range(n):
        if i % 2:
            frames.append(cap.ethernet(cap.udp(cap.CLIENT6, cap.SERVER6, sport=41000 + i, payload=b"u" * i)))
        else:
            frames.append(cap.ethernet(cap.tcp(sport=40000 + i, seq=i, payload=b"t" * (10 * i))))
    return tuple(frames)


def read_all(path: str):
    with open_capture(str(path)) as reader:
        frames = list(reader)
    return reader, frames


def check_frames(path, records: list[cap.Record], linktype: int, fmt: str) -> None:
    """The reader yields exactly the records written, numbered from 1, ts to the µs."""
    reader, frames = read_all(path)
    assert reader.format == fmt
    assert not reader.problems
    assert [f.number for f in frames] == list(range(1, len(records) + 1))
    for f, rec in zip(frames, records, strict=True):
        ts_ns, data = rec[0], rec[1]
        assert f.ts_us == ts_ns // 1000
        assert f.linktype == linktype
        assert f.data == data
        assert f.orig_len == (rec[2] if len(rec) > 2 else len(data))


# --- good files ---------------------------------------------------------------------------


@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("nanosecond", [False, True], ids=["us", "ns"])
def test_pcap_timestamps_and_numbers(tmp_path, nanosecond, big_endian):
    """pcap in µs and ns magic, both byte orders: every frame, number and µs timestamp."""
    recs = sample_records()
    path = cap.write_pcap(tmp_path / "a.pcap", recs, LINKTYPE_ETHERNET, nanosecond, big_endian)
    check_frames(path, recs, LINKTYPE_ETHERNET, "pcap")


@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("tsresol", [6, 9, 3], ids=["us", "ns", "ms"])
def test_pcapng_if_tsresol(tmp_path, tsresol, big_endian):
    """pcapng with if_tsresol default (µs), 9 (ns) and 3 (ms), both byte orders."""
    recs = sample_records()
    if tsresol == 3:  # a ms clock cannot carry finer timestamps: write what it can hold
        recs = [(r[0] // 1_000_000 * 1_000_000, *r[1:]) for r in recs]
    path = cap.write_pcapng(tmp_path / "a.pcapng", recs, LINKTYPE_ETHERNET, tsresol, big_endian)
    check_frames(path, recs, LINKTYPE_ETHERNET, "pcapng")


def two_section_pcapng() -> tuple[bytes, list[tuple[cap.Record, int]]]:
    """Section 1 (LE): Ethernet µs + raw IP ns interfaces; section 2 (BE): Linux cooked ns.

    Returns the file and the (record, link type) of each frame in file order.
    """
    eth = cap.timed([cap.ethernet(cap.tcp()), cap.ethernet(cap.udp())])
    raw = cap.timed([cap.raw(cap.tcp(cap.CLIENT6, cap.SERVER6))], start_ns=cap.BASE_NS + 500_000_123)
    cooked = cap.timed([cap.sll(cap.udp()), cap.sll(cap.tcp())], start_ns=cap.BASE_NS + 9_000_000_000)
    data = (cap.pcapng_section([(LINKTYPE_ETHERNET, 6), (LINKTYPE_RAW, 9)],
                               [(0, eth[0]), (1, raw[0]), (0, eth[1])])
            # interface ids restart per section: id 0 is now Linux cooked, in ns
            + cap.pcapng_section([(LINKTYPE_LINUX_SLL, 9)], [(0, r) for r in cooked], big_endian=True))
    return data, [(eth[0], 1), (raw[0], 101), (eth[1], 1), (cooked[0], 113), (cooked[1], 113)]


def test_pcapng_two_sections_and_interfaces(tmp_path):
    """Two sections (LE then BE), 2 + 1 interfaces: link type and clock per interface, per section."""
    data, expected = two_section_pcapng()
    path = tmp_path / "two.pcapng"
    path.write_bytes(data)
    reader, frames = read_all(path)
    assert not reader.problems
    assert reader.linktypes == {LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL}
    assert [(f.number, f.ts_us, f.linktype, f.data) for f in frames] == [
        (i, rec[0] // 1000, lt, rec[1]) for i, (rec, lt) in enumerate(expected, 1)]


def test_pcapng_if_tsoffset_and_simple_packet_block(tmp_path):
    """if_tsoffset seconds are added to EPB times; a Simple Packet Block yields ts 0 on iface 0."""
    rec = (cap.BASE_NS, cap.ethernet(cap.tcp()))
    offset = 1_000_000_000
    data = (cap.shb() + cap.idb(LINKTYPE_ETHERNET, 9, tsoffset=offset)
            + cap.epb(rec, tsresol=9, tsoffset=offset) + cap.spb(cap.ethernet(cap.udp())))
    path = tmp_path / "offset.pcapng"
    path.write_bytes(data)
    reader, frames = read_all(path)
    assert not reader.problems
    assert [(f.number, f.ts_us) for f in frames] == [(1, cap.BASE_NS // 1000), (2, 0)]
    assert frames[1].data == cap.ethernet(cap.udp())


def test_gzip_pcap_and_pcapng(tmp_path):
    """gzip-compressed pcap (ns) and pcapng (ns) read like the plain files, format '+gzip'."""
    recs = sample_records(7)
    path = cap.write_pcap_gz(tmp_path / "a.pcap.gz", recs, LINKTYPE_ETHERNET, nanosecond=True)
    check_frames(path, recs, LINKTYPE_ETHERNET, "pcap+gzip")
    path = cap.write_pcapng_gz(tmp_path / "a.pcapng.gz", recs, LINKTYPE_ETHERNET, tsresol=9)
    check_frames(path, recs, LINKTYPE_ETHERNET, "pcapng+gzip")


def test_frames_span_read_chunks(tmp_path, monkeypatch):
    """Records split across read chunks (tiny chunk size) are reassembled, pcap and pcapng."""
    import wirestream.producers.capture_file as cf

    monkeypatch.setattr(cf, "_CHUNK", 7)
    recs = sample_records(6)
    check_frames(cap.write_pcap(tmp_path / "c.pcap", recs, 1), recs, 1, "pcap")
    check_frames(cap.write_pcapng(tmp_path / "c.pcapng", recs, 1), recs, 1, "pcapng")


@requires_tshark
def test_tshark_agrees_on_numbers_and_timestamps(tmp_path):
    """Every readable variant: our frame numbers and µs times equal tshark's frame.time_epoch."""
    recs = sample_records(7)
    paths = [cap.write_pcap(tmp_path / f"{ns}{be}.pcap", recs, LINKTYPE_ETHERNET, ns, be)
             for ns in (False, True) for be in (False, True)]
    paths.append(cap.write_pcap_gz(tmp_path / "a.pcap.gz", recs, LINKTYPE_ETHERNET, nanosecond=True))
    paths.append(cap.write_pcapng_gz(tmp_path / "a.pcapng.gz", recs, LINKTYPE_ETHERNET, tsresol=9))
    two = tmp_path / "two.pcapng"  # covers pcapng µs and ns, little- and big-endian
    two.write_bytes(two_section_pcapng()[0])
    paths.append(str(two))
    for path, rows in zip(paths, tshark_rows(paths, ["frame.number", "frame.time_epoch"]), strict=True):
        _reader, frames = read_all(path)
        assert len(frames) == len(rows) > 0, path
        theirs = [(int(num), int(Decimal(epoch) * 1_000_000)) for num, epoch in rows]
        assert [(f.number, f.ts_us) for f in frames] == theirs, path


# --- files that cannot be read at all -----------------------------------------------------


def assert_capture_error(path, *words: str) -> None:
    with pytest.raises(CaptureFileError) as info:
        open_capture(str(path))
    err = info.value
    assert err.path == str(path)
    assert str(err).startswith(f"{path}: ")
    for word in words:
        assert word in err.problem, err.problem


def test_missing_file(tmp_path):
    """A missing file -> CaptureFileError 'no such file'."""
    assert_capture_error(tmp_path / "nope.pcap", "no such file")


def test_empty_file(tmp_path):
    """An empty file -> CaptureFileError 'empty file'."""
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    assert_capture_error(path, "empty file")


def test_directory(tmp_path):
    """A directory -> CaptureFileError 'is a directory'."""
    assert_capture_error(tmp_path, "is a directory")


@pytest.mark.parametrize("content", [
    random.Random(7).randbytes(4096),
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"just some text\nnot a capture\n" * 10,
    gzip.compress(b"a gzip file holding text, not a capture\n" * 4, mtime=0),
], ids=["random", "http", "text", "gzip-text"])
def test_not_a_capture(tmp_path, content):
    """Random bytes, a text file, gzip of text -> 'not a pcap or pcapng capture file'."""
    path = tmp_path / "x.pcap"
    path.write_bytes(content)
    assert_capture_error(path, "not a pcap or pcapng")


@pytest.mark.parametrize("length", [4, 10, 23])
def test_truncated_pcap_global_header(tmp_path, length):
    """A pcap global header cut short -> 'truncated pcap file header'."""
    path = tmp_path / "short.pcap"
    path.write_bytes(cap.pcap_header(LINKTYPE_ETHERNET)[:length])
    assert_capture_error(path, "truncated pcap file header")


def test_bad_pcapng_byte_order_magic(tmp_path):
    """A pcapng section header with a wrong byte-order magic -> 'not a valid pcapng section header'."""
    data = bytearray(cap.pcapng_bytes(sample_records(1), LINKTYPE_ETHERNET))
    data[8:12] = b"\x00\x11\x22\x33"
    path = tmp_path / "bom.pcapng"
    path.write_bytes(bytes(data))
    assert_capture_error(path, "not a valid pcapng section header")


@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
def test_unsupported_pcap_linktype(tmp_path, big_endian):
    """pcap link type 147 (user-defined) -> 'unsupported link type 147' listing the supported ones."""
    path = cap.write_pcap(tmp_path / "user.pcap", sample_records(1), 147, big_endian=big_endian)
    assert_capture_error(path, "unsupported link type 147", "supported:", "1 Ethernet")


def test_gzip_header_damaged(tmp_path):
    """A gzip file cut inside its first deflate bytes -> 'damaged gzip data'."""
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(gzip.compress(cap.pcap_bytes(sample_records(), 1), mtime=0)[:12])
    assert_capture_error(path, "damaged gzip data")


# --- damage inside a valid file: counted, earlier frames kept -----------------------------


@pytest.mark.parametrize("cut", [1, 60, 104 + 1, 104 + 12], ids=["data-1", "data-60", "header-1", "header-12"])
def test_truncated_last_record(tmp_path, cut):
    """pcap cut inside the last record (its data or its header) -> earlier frames, truncated_record 1."""
    recs = cap.timed([cap.ethernet(cap.tcp(payload=b"p" * 50))] * 3)  # 104-byte frames
    data = cap.pcap_bytes(recs, LINKTYPE_ETHERNET)
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[: len(data) - cut])
    reader, frames = read_all(path)
    assert [(f.number, f.ts_us) for f in frames] == [(1, recs[0][0] // 1000), (2, recs[1][0] // 1000)]
    assert reader.problems == {"truncated_record": 1}


def test_pcap_impossible_record_length(tmp_path):
    """A pcap record header claiming > 256 MiB -> stops there, counted corrupt_record_header."""
    recs = sample_records(3)
    data = bytearray(cap.pcap_bytes(recs, LINKTYPE_ETHERNET))
    second = 24 + 16 + len(recs[0][1])
    struct.pack_into("<I", data, second + 8, 0xFFFFFFF0)
    path = tmp_path / "huge.pcap"
    path.write_bytes(bytes(data))
    reader, frames = read_all(path)
    assert [f.number for f in frames] == [1]
    assert reader.problems == {"corrupt_record_header": 1}


@pytest.mark.parametrize("bad_len", [7, 8, 16, 0xFFFFFFF0], ids=["odd", "under-12", "short-epb", "huge"])
@pytest.mark.parametrize("where", ["middle", "last"])
def test_pcapng_corrupt_block_length(tmp_path, bad_len, where):
    """A pcapng EPB with an impossible length -> earlier frames kept, corrupt_block_length 1, no raise."""
    recs = sample_records(4)
    blocks = [cap.shb(), cap.idb(LINKTYPE_ETHERNET)] + [cap.epb(r) for r in recs]
    victim = 4 if where == "middle" else 5  # the 3rd or the 4th EPB
    blk = bytearray(blocks[victim])
    struct.pack_into("<I", blk, 4, bad_len)
    blocks[victim] = bytes(blk)
    path = tmp_path / "badlen.pcapng"
    path.write_bytes(b"".join(blocks))
    reader, frames = read_all(path)
    assert [f.data for f in frames] == [r[1] for r in recs[: victim - 2]]
    assert reader.problems == {"corrupt_block_length": 1}


def test_pcapng_truncated_last_block(tmp_path):
    """A pcapng cut inside its last EPB -> earlier frames, truncated_block 1."""
    recs = sample_records(3)
    data = cap.pcapng_bytes(recs, LINKTYPE_ETHERNET)
    path = tmp_path / "cut.pcapng"
    path.write_bytes(data[:-10])
    reader, frames = read_all(path)
    assert [f.number for f in frames] == [1, 2]
    assert reader.problems == {"truncated_block": 1}


def test_pcapng_packet_on_unknown_interface(tmp_path):
    """An EPB naming an interface that was never described -> skipped, corrupt_packet_block 1."""
    recs = sample_records(3)
    data = (cap.shb() + cap.idb(LINKTYPE_ETHERNET) + cap.epb(recs[0]) + cap.epb(recs[1], iface=3)
            + cap.epb(recs[2]))
    path = tmp_path / "iface.pcapng"
    path.write_bytes(data)
    reader, frames = read_all(path)
    assert [f.number for f in frames] == [1, 3]  # numbering still counts the bad block
    assert reader.problems == {"corrupt_packet_block": 1}


def _big_random_pcap(n: int = 60) -> tuple[list[cap.Record], bytes]:
    """n frames with incompressible payloads, so a cut in the gzip is a cut in the frames."""
    rnd = random.Random(11)
    recs = cap.timed([cap.ethernet(cap.udp(payload=rnd.randbytes(1400))) for _ in range(n)], step_ns=1000)
    return recs, cap.pcap_bytes(recs, LINKTYPE_ETHERNET)


def test_gzip_cut_in_the_middle(tmp_path):
    """A gzip pcap cut halfway -> the frames before the cut (a prefix), truncated_gzip 1."""
    recs, data = _big_random_pcap()
    gz = gzip.compress(data, mtime=0)
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(gz[: len(gz) // 2])
    reader, frames = read_all(path)
    assert reader.problems["truncated_gzip"] == 1
    assert set(reader.problems) <= {"truncated_gzip", "truncated_record"}
    assert len(recs) // 4 < len(frames) < len(recs)
    assert [f.data for f in frames] == [r[1] for r in recs[: len(frames)]]
    assert [f.number for f in frames] == list(range(1, len(frames) + 1))


def test_gzip_pcapng_cut_in_the_middle(tmp_path):
    """A gzip pcapng cut halfway -> earlier frames, truncated_gzip 1 (and the cut block)."""
    rnd = random.Random(12)
    recs = cap.timed([cap.ethernet(cap.udp(payload=rnd.randbytes(1400))) for _ in range(60)])
    gz = gzip.compress(cap.pcapng_bytes(recs, LINKTYPE_ETHERNET, tsresol=9), mtime=0)
    path = tmp_path / "cut.pcapng.gz"
    path.write_bytes(gz[: len(gz) // 2])
    reader, frames = read_all(path)
    assert reader.problems["truncated_gzip"] == 1
    assert set(reader.problems) <= {"truncated_gzip", "truncated_block"}
    assert len(recs) // 4 < len(frames) < len(recs)
    assert [(f.ts_us, f.data) for f in frames] == [(r[0] // 1000, r[1]) for r in recs[: len(frames)]]


def test_gzip_corrupt_deflate_data(tmp_path):
    """Invalid deflate data (zlib.error) after good frames -> no exception, those frames, truncated_gzip 1."""
    recs, data = _big_random_pcap(20)
    # A second gzip member whose first deflate block has the reserved block type 3: zlib
    # rejects it ("invalid block type") once the first member has been fully read.
    bad_member = gzip.compress(b"", mtime=0)[:10] + b"\xff" * 32
    path = tmp_path / "corrupt.pcap.gz"
    path.write_bytes(gzip.compress(data, mtime=0) + bad_member)
    reader, frames = read_all(path)
    assert [f.data for f in frames] == [r[1] for r in recs]
    assert reader.problems == {"truncated_gzip": 1}


def test_gzip_trailer_missing(tmp_path):
    """A gzip stream missing only its 8-byte trailer -> every frame, truncated_gzip 1."""
    recs, data = _big_random_pcap(20)
    gz = gzip.compress(data, mtime=0)
    path = tmp_path / "notrailer.pcap.gz"
    path.write_bytes(gz[:-8])
    reader, frames = read_all(path)
    assert [f.data for f in frames] == [r[1] for r in recs]
    assert reader.problems == {"truncated_gzip": 1}
