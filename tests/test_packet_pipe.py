"""Packet batches by pipe (wirestream/packet_pipe.py): what ``analyze`` on its own embedded
broker uses instead of ``wire.packets``.

The framing through a real pipe (order, partitions, messages bigger than the pipe, a
writer that dies mid-message, a reader that is gone, a run that is gone while the pipe
is full), and the claim that matters: the records of an analyze whose workers read their
packets from pipes are those of one whose packets went through the broker.
"""

from __future__ import annotations

import json
import os
import random
import select
import threading
import time
from collections import Counter

import pytest
from helpers import DATA, gather

from wirestream.analyze import analyze
from wirestream.config import Settings
from wirestream.packet_pipe import (
    IOV_MAX,
    PIPE_BYTES,
    PacketPipeReader,
    PacketPipes,
    WorkerGone,
    enlarge,
    write_parts,
)
from wirestream.topics import CONNECTIONS, DNS, FLOWS, SERVICE_METRICS, TLS, TRANSACTIONS


def _pipe() -> tuple:
    r, w = os.pipe()
    return os.fdopen(r, "rb", buffering=0), os.fdopen(w, "wb", buffering=0)


def _read_all(reader: PacketPipeReader, want: int) -> list:
    return gather(lambda: reader.consume(16, 0.2), want)


def test_messages_arrive_in_order_with_their_partitions() -> None:
    rd, wr = _pipe()
    pipes = PacketPipes({0: wr, 1: wr, 2: wr})
    # sizes around the frame header, empty (an end marker), and bigger than the pipe
    values = [(i % 3, bytes([i % 251]) * size) for i, size in
              enumerate([0, 1, 7, 8, 9, 1000, 65536, PIPE_BYTES + 17, 3 * PIPE_BYTES, 5, 0, 12345])]
    writer = threading.Thread(target=lambda: [pipes.send(p, v) for p, v in values])
    reader = PacketPipeReader(rd)
    writer.start()
    got = _read_all(reader, len(values))
    writer.join(10)
    assert [(m.topic(), m.partition(), m.value()) for m in got] == [("wire.packets", p, v) for p, v in values]
    offsets = Counter()
    for m in got:  # each partition's messages numbered 0, 1, ... as a partition's offsets
        assert m.offset() == offsets[m.partition()] and m.error() is None
        offsets[m.partition()] += 1
    wr.close()
    assert reader.consume(1, 0.2) == [] and not reader.closed_early


def test_gathered_writes_put_every_part_in_order_through_partial_writes() -> None:
    """write_parts, from a non-blocking writer whose pipe is often full (each write then
    takes part of a buffer): more parts than one writev takes, empty ones among them."""
    rng = random.Random(7)
    parts = [rng.randbytes(rng.choice([0, 1, 8, 100, 5000, 70_000])) for _ in range(3 * IOV_MAX + 5)]
    r, w = os.pipe()
    os.set_blocking(w, False)
    got = bytearray()
    reader = threading.Thread(target=lambda: [got.extend(b) for b in iter(lambda: os.read(r, 1 << 16), b"")])
    reader.start()
    views = [memoryview(p) for p in parts]
    done = calls = 0
    while done < len(views):
        try:
            done = write_parts(w, views, done)
            calls += 1
        except BlockingIOError:
            select.select([], [w], [], 1)
    os.close(w)
    reader.join(10)
    os.close(r)
    assert bytes(got) == b"".join(parts)
    # more calls than whole writes would need (ceil(parts / IOV_MAX)): partial writes
    # happened (~38 MB through a pipe of 64 KiB), and were carried on from where they cut
    assert calls > -(-len(parts) // IOV_MAX)


def test_pipes_are_enlarged_to_a_batch() -> None:
    """Packet and record pipes hold 1 MiB (about a batch, a worker's flush), not 64 KiB."""
    import fcntl

    r, w = os.pipe()
    enlarge(r)
    with open("/proc/sys/fs/pipe-max-size") as f:
        limit = int(f.read())
    assert fcntl.fcntl(w, 1032) == min(PIPE_BYTES, limit)  # F_GETPIPE_SZ
    os.close(r)
    os.close(w)


def test_a_writer_gone_mid_message_is_noticed_and_what_came_before_is_kept() -> None:
    rd, wr = _pipe()
    PacketPipes({0: wr}).send(0, b"whole")
    wr.write(b"\x00\x00\x00\x00\x10\x00\x00\x00half")  # 16 bytes announced, 4 sent
    wr.close()
    reader = PacketPipeReader(rd)
    assert [m.value() for m in _read_all(reader, 1)] == [b"whole"]
    reader._thread.join(5)
    assert reader.closed_early
    assert reader.consume(1, 0.1) == []


def test_a_reader_gone_is_a_named_error() -> None:
    rd, wr = _pipe()
    pipes = PacketPipes({3: wr})
    rd.close()
    with pytest.raises(WorkerGone, match="partition 3 is gone"):
        pipes.send(3, b"x" * 100)


def test_a_full_pipe_asks_whether_the_run_is_alive() -> None:
    """A worker that cannot take more (stuck behind a dead broker) must not hold the
    writer forever: while the pipe is full the writer asks ``alive``, and stops with its
    answer."""
    rd, wr = _pipe()
    answers = iter([None, None, "the embedded broker exited with code 1"])
    pipes = PacketPipes({0: wr}, alive=lambda: next(answers))
    started = time.monotonic()
    with pytest.raises(WorkerGone, match="embedded broker exited"):
        for _ in range(64):  # nobody reads: the pipe fills
            pipes.send(0, b"y" * 65536)
    assert time.monotonic() - started < 10
    rd.close()


def test_a_stopped_writer_raises_at_its_next_write() -> None:
    """The run has stopped (its reader failed, or Ctrl-C): the thread feeding its input
    must end at its next write, even while the pipe is full."""
    rd, wr = _pipe()
    pipes = PacketPipes({0: wr}, alive=lambda: None)
    pipes.send(0, b"x")
    pipes.stop("the run stopped")
    with pytest.raises(WorkerGone, match="the run stopped"):
        pipes.send(0, b"y")
    # one waiting on a full pipe: within half a second of the stop
    rd2, wr2 = _pipe()
    full = PacketPipes({0: wr2}, alive=lambda: None)
    errors: list[BaseException] = []

    def fill() -> None:
        try:
            while True:
                full.send(0, b"z" * 65536)
        except WorkerGone as exc:
            errors.append(exc)

    writer = threading.Thread(target=fill)
    writer.start()
    time.sleep(0.3)  # nobody reads: it waits on the full pipe
    assert writer.is_alive()
    full.stop("stopped while full")
    writer.join(5)
    assert not writer.is_alive() and "stopped while full" in str(errors[0])
    for f in (rd, rd2):
        f.close()


# --- analyze: the same records by pipe as through the broker ----------------------------------

#: the records compared (the windows' percentiles and alert counts depend on the order in
#: which the windows worker sees its batches, which differs from run to run either way)
COMPARED = (CONNECTIONS, FLOWS, TRANSACTIONS, DNS, TLS)


def _lines(result) -> dict[str, Counter[str]]:
    (run,) = {r["source_id"].rsplit("-", 1)[0] for r in result.records[CONNECTIONS]}
    return {t: Counter(json.dumps(r, sort_keys=True, default=str).replace(run, "RUN") for r in result.records[t])
            for t in COMPARED}


@pytest.mark.parametrize("workers", [1, 2])
def test_analyze_by_pipe_gives_the_records_the_broker_path_gives(workers: int) -> None:
    captures = [str(DATA / "chrissanders" / name)
                for name in ("http_espn.pcapng", "dns_tcp.pcapng", "tcp_dupack.pcapng", "http_ip4and6.pcapng")]
    # (with 2 workers the windows are a process of their own, with its own record pipe)
    settings = Settings()
    piped = analyze(captures, settings, workers=workers, chains=False)
    brokered = analyze(captures, settings, workers=workers, chains=False, packets_by_pipe=False)
    assert not piped.failed and not brokered.failed
    assert sum(f.packets for f in piped.files) == sum(f.packets for f in brokered.files) > 900
    by_pipe, by_broker = _lines(piped), _lines(brokered)
    assert sum(len(c) for c in by_pipe.values()) > 100
    assert by_pipe == by_broker
    # every packet reached a worker, and each source's every partition reported its end
    received = sum(s["received"] for s in piped.stats if s["stage"] == "processor.packets" and s["final"])
    assert received == sum(f.packets for f in piped.files)
    # every stage's final reports are there, the files' producers' too (theirs went to
    # wire.stats, which a run by pipe does not read: taken from the feed itself)
    def finals(result) -> Counter[str]:
        return Counter(s["stage"] for s in result.stats if s["final"])

    assert finals(piped) == finals(brokered)
    assert sum(n for stage, n in finals(piped).items() if stage.startswith("producer")) == len(captures)
    # the windows' records and final reports came back too
    assert piped.records[SERVICE_METRICS] and brokered.records[SERVICE_METRICS]
    windows_finals = {(s["source_id"], s["partition"]) for s in piped.stats
                      if s["stage"] == "processor.windows" and s["final"]}
    assert len(windows_finals) == len(captures) * settings.partitions


def test_records_are_read_while_the_input_is_still_fed(tmp_path, monkeypatch) -> None:
    """By pipe, analyze reads (and writes to --out) the records of the files already fed
    while it still feeds the next: the second file's replay waits until records of the
    first have been written, which would never happen if the records were only read
    after the last file. The first file's final reports arrive before the input is known
    whole, and still count: the run ends with every record."""
    from wirestream.sinks.jsonl import JsonlWriter

    written: list[str] = []
    for name in ("write", "write_line", "write_message"):
        original = getattr(JsonlWriter, name)

        def spy(self, topic, *args, _original=original):
            written.append(topic)
            return _original(self, topic, *args)

        monkeypatch.setattr(JsonlWriter, name, spy)
    captures = [str(DATA / "chrissanders" / name) for name in ("http_espn.pcapng", "dns_tcp.pcapng")]
    seen_before_second: list[int] = []

    def progress(path: str, _index: int):
        if path == captures[1]:
            deadline = time.monotonic() + 20
            while not written and time.monotonic() < deadline:
                time.sleep(0.05)
            seen_before_second.append(len(written))
        return lambda done, total: None

    settings = Settings(windows=False)
    result = analyze(captures, settings, workers=1, chains=False, progress=progress, jsonl_dir=tmp_path / "out")
    assert not result.failed and seen_before_second and seen_before_second[0] > 0
    plain = analyze(captures, settings, workers=1, chains=False)
    assert _lines(result) == _lines(plain)
    finals = {(s["source_id"], s["partition"]) for s in result.stats
              if s["stage"] == "processor.packets" and s["final"]}
    assert len({source for source, _ in finals}) == 2
    assert len(finals) == 2 * settings.partitions


def test_a_background_feed_shortens_the_gil_switch_interval_while_it_feeds() -> None:
    """While a thread feeds the workers beside the collector, the GIL changes hands after
    FEED_SWITCH_INTERVAL_S (the feeding thread wants it back after every pipe write);
    the process's own interval comes back when the feed is done, also when it failed."""
    import sys

    from wirestream.analyze import FEED_SWITCH_INTERVAL_S, Feed

    before = sys.getswitchinterval()
    assert FEED_SWITCH_INTERVAL_S < before
    seen: list[float] = []

    def run() -> dict:
        seen.append(sys.getswitchinterval())
        return {"source": 1}

    feeding = Feed(run, in_background=True)
    assert feeding.done.wait(10) and feeding.sources() == {"source": 1}
    assert seen == [pytest.approx(FEED_SWITCH_INTERVAL_S)] and sys.getswitchinterval() == pytest.approx(before)

    def fail() -> dict:
        raise WorkerGone("gone")

    feeding = Feed(fail, in_background=True)
    assert feeding.done.wait(10)
    with pytest.raises(WorkerGone):
        feeding.sources()
    assert sys.getswitchinterval() == pytest.approx(before)
    Feed(run, in_background=False)  # fed in the caller's thread: the interval is not touched
    assert seen[-1] == pytest.approx(before)
