"""Join kernel packet drops (``wire.drops``) onto connection and flow records.

``wirestream produce drops`` counts the packets the kernel dropped per (5-tuple, reason,
interface, netns) and drain interval, and publishes each row to the ``wire.drops``
partition of the 5-tuple's canonical connection key: the partition of that connection's
``wire.packets``. The packet worker holds one :class:`DropJoin` per packet partition
(drops come from their own producer, whose source id is not the capture's, so the join
is shared by every engine of the partition) and each engine asks it for the drops of a
connection or flow as its record leaves (:meth:`DropJoin.annotate`):

- ``drops`` (reason -> packets): the rows of the record's 5-tuple, either direction,
  whose interval [first_ts_us, last_ts_us] overlaps the connection's
  [start_ts_us - slack, end_ts_us + slack]. The slack covers the drop producer's clock
  (monotonic time shifted once to the epoch) against the capture's, and packets dropped
  on their way out just after the last one the capture saw.
- **Cumulative per connection**: an interim record (``final: false``) carries every
  drop of its connection so far, and leaves the rows where they are; the final record
  carries them all and takes them away. So the last record of a connection has its
  total, and summing the records of a connection would count drops more than once
  (as its packet counters).

Rows that no record claimed once they are old (their last drop, or the last interim
record that matched them, more than ``horizon_us`` behind the newest time the join has
seen, from drop rows and records alike) leave, counted as ``drops_unjoined``: they stay
only on ``wire.drops``. ``horizon_us`` is the idle timeout plus the close linger (the
longest a connection's final record can come after its last packet), so a connection
whose packets stop at its drops is emitted before its rows are old. A connection that
goes on for longer than that after a drop keeps it only if an interim record claims it
in time (``--interim``); otherwise that drop is counted unjoined.

State is bounded: past ``max_rows`` rows, the oldest half is let go (counted as
``drops_evicted``, in packets, and ``drop_rows_evicted``). I/O-free: a checkpoint holds
the join with its partition's engines (processors/state_codec.py).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any

#: IP protocol numbers of the transports whose records carry ports (as drop rows)
_PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}

#: (protocol, lower endpoint, higher endpoint): both directions of a 5-tuple
TupleKey = tuple[int, tuple[str, int], tuple[str, int]]


def _ip(text: str) -> str:
    """One text form per address (IPv6 written by two libraries may differ)."""
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return text


def tuple_key(protocol: int, ip_a: str, port_a: int, ip_b: str, port_b: int) -> TupleKey:
    a, b = (_ip(ip_a), port_a), (_ip(ip_b), port_b)
    return (protocol, a, b) if a <= b else (protocol, b, a)


class DropJoin:
    """The drop rows of one packet partition, waiting for their connection's record."""

    def __init__(self, horizon_us: int = 310_000_000, slack_us: int = 2_000_000,
                 max_rows: int = 1 << 16) -> None:
        self.horizon_us = horizon_us
        self.slack_us = slack_us
        self.max_rows = max_rows
        #: tuple -> rows [first_ts_us, last_ts_us, reason, count, kept_until_us]
        self._rows: dict[TupleKey, list[list[Any]]] = {}
        self.held = 0  # rows in _rows
        self.clock_us = 0  # the newest time seen (drop rows' ts_us, records' end_ts_us)
        self._next_expiry_us = 0
        self.counters: Counter[str] = Counter()

    # --- input ----------------------------------------------------------------------------

    def add(self, drop: dict[str, Any]) -> None:
        """Take one ``Drop`` record (schemas/drop.avsc)."""
        self.counters["drop_rows"] += 1
        protocol = drop.get("protocol")
        if protocol not in _PROTOCOLS.values() or drop.get("src_port") is None or drop.get("dst_port") is None:
            # ICMP, ARP, ...: no connection or flow of ours has their 5-tuple
            self.counters["drops_unjoined"] += drop["count"]
            self._advance(drop["ts_us"])
            return
        key = tuple_key(protocol, drop["src_ip"], drop["src_port"], drop["dst_ip"], drop["dst_port"])
        first = drop["first_ts_us"] or drop["ts_us"]
        last = drop["last_ts_us"] or drop["ts_us"]
        if self.held >= self.max_rows:
            self._evict()
        self._rows.setdefault(key, []).append([first, last, drop["reason"], drop["count"], last])
        self.held += 1
        self._advance(drop["ts_us"])

    # --- output ---------------------------------------------------------------------------

    def annotate(self, topic_protocol: str, record: dict[str, Any]) -> None:
        """Set ``record["drops"]`` (a ``wire.connections`` record: ``topic_protocol``
        "tcp"; a ``wire.flows`` record: its ``transport``). A final record takes its
        rows away; an interim one keeps them (cumulative per connection)."""
        record["drops"] = {}
        protocol = _PROTOCOLS.get(topic_protocol)
        if not self._rows or protocol is None:
            self._advance(record.get("end_ts_us", 0))
            return
        key = tuple_key(protocol, record["client_ip"], record["client_port"],
                        record["server_ip"], record["server_port"])
        rows = self._rows.get(key)
        end = record["end_ts_us"]
        if rows:
            start_bound, end_bound = record["start_ts_us"] - self.slack_us, end + self.slack_us
            final = record.get("final", True)
            counts: Counter[str] = Counter()
            left = []
            for row in rows:
                if row[1] >= start_bound and row[0] <= end_bound:
                    counts[row[2]] += row[3]
                    if not final:
                        row[4] = max(row[4], end)  # a live connection claimed it: keep it
                        left.append(row)
                else:
                    left.append(row)
            if counts:
                record["drops"] = dict(sorted(counts.items()))
                if final:
                    self.counters["drops_joined"] += sum(counts.values())
            self.held -= len(rows) - len(left)
            if left:
                self._rows[key] = left
            else:
                del self._rows[key]
        self._advance(end)

    @property
    def pending(self) -> int:
        """Dropped packets held, not (yet) joined."""
        return sum(row[3] for rows in self._rows.values() for row in rows)

    # --- age and bounds -------------------------------------------------------------------

    def _advance(self, ts_us: int) -> None:
        if ts_us > self.clock_us:
            self.clock_us = ts_us
        if self.clock_us >= self._next_expiry_us:
            # A sweep per second of time at most: each looks at every row.
            self._next_expiry_us = self.clock_us + 1_000_000
            self._expire(self.clock_us - self.horizon_us)

    def _expire(self, older_than_us: int) -> None:
        for key in list(self._rows):
            rows = self._rows[key]
            left = [row for row in rows if row[4] >= older_than_us]
            if len(left) != len(rows):
                self.counters["drops_unjoined"] += sum(row[3] for row in rows if row[4] < older_than_us)
                self.held -= len(rows) - len(left)
                if left:
                    self._rows[key] = left
                else:
                    del self._rows[key]

    def _evict(self) -> None:
        """Let the older half of the rows go (a drop storm on tuples no connection has)."""
        kept = sorted(row[4] for rows in self._rows.values() for row in rows)
        cut = kept[len(kept) // 2]
        before = self.held
        for key in list(self._rows):
            rows = self._rows[key]
            left = [row for row in rows if row[4] > cut]
            if len(left) != len(rows):
                self.counters["drops_evicted"] += sum(row[3] for row in rows if row[4] <= cut)
                self.held -= len(rows) - len(left)
                if left:
                    self._rows[key] = left
                else:
                    del self._rows[key]
        self.counters["drop_rows_evicted"] += before - self.held
