"""Kernel packet drops with their reason -> ``wire.drops``.

The kernel side is ``bpf/packet_drops.c``: the ``skb:kfree_skb`` tracepoint (its
``reason`` field, Linux 5.17+) counts each dropped packet in a BPF hash map keyed by
(5-tuple, reason, interface, netns, refused); nothing crosses to user space per packet.
:class:`DropSource` drains the map every interval (two maps take turns, so no count is
lost between a read and a delete) and :class:`DropPublisher` publishes one ``Drop``
record (schemas/drop.avsc) per row, to the ``wire.drops`` partition of the 5-tuple's
canonical connection key: the same partition as the connection's wire.packets and
wire.sockets records, so a processor can join a connection's drops onto it.

Why aggregate in the kernel rather than send an event per drop: a drop storm (a SYN
flood against a firewall, a full qdisc) is exactly when per-event output would cost the
most and lose the most; a hash update costs about the same as the tracepoint itself and
memory is fixed by ``max_rows``. What is lost is the per-packet time (each row has the
first and last drop of its interval) and rows beyond ``max_rows`` distinct keys per
interval (counted: ``drops_overflow``).

Reason names are this kernel's own: ``enum skb_drop_reason`` from its BTF, else the
tracepoint's print format in tracefs (which lists them symbolically); nothing is
hard-coded, the numbering changes between kernel versions.

Refused, not dropped (``refused: true``): the packet was answered. ``icmp:icmp_send``
fires for an ICMP error about that skb (a firewall ``reject`` with ICMP, a UDP datagram
to a closed port) just before the skb is freed; a TCP segment to a port with no socket
(reason ``no_socket``) is answered by a RST unless it is a RST itself. A ``reject with
tcp reset`` rule answers through ``nf_send_reset``, which has no tracepoint: it is seen
only where fentry programs load (``rejects_tcp_reset`` in :attr:`DropSource.features`);
elsewhere such packets are counted as ``netfilter_drop`` with ``refused: false``.
"""

from __future__ import annotations

import ctypes
import os
import re
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from wirestream.codec import AvroCodec
from wirestream.kafka import WireProducer, add_counts
from wirestream.packet_block import canonical_key, partition_for
from wirestream.topics import DROPS, STATS

from .btf import BTF, VMLINUX_BTF, BTFError

TRACEFS_EVENTS = Path("/sys/kernel/tracing/events")
KFREE_SKB_FORMAT = TRACEFS_EVENTS / "skb" / "kfree_skb" / "format"
ICMP_SEND = TRACEFS_EVENTS / "icmp" / "icmp_send"
#: functions a REJECT answers through (fentry, where the kernel allows it)
REJECT_FUNCTIONS = ("nf_send_reset", "nf_send_unreach", "nf_send_reset6", "nf_send_unreach6")

#: ``struct drop_key`` of bpf/packet_drops.c: saddr[16], daddr[16], netns, ifindex,
#: reason, sport, dport, l3proto, l4proto, flags
KEY_STRUCT = struct.Struct("=16s16sIIIHHHBB")
assert KEY_STRUCT.size == 52
#: ``struct drop_value``: count, first_ns, last_ns, ifname[16]
VALUE_STRUCT = struct.Struct("=QQQ16s")
assert VALUE_STRUCT.size == 40
FLAG_REJECTED, FLAG_TCP_RST = 1, 2
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
PORT_PROTOCOLS = (6, 17, 132)
#: the most bytes of a struct read at once onto the BPF stack (bpf/packet_drops.c)
SPAN_MAX = 192
#: ``stage`` of this producer's reports on wire.stats
STAGE = "producer.drops"
REASON_NOT_SPECIFIED = "not_specified"


def load_error(exc: Exception) -> str:
    """The last line of a bcc load error, without bcc's misleading guess: bcc says "Need
    super-user privileges to run" for any EPERM, which root gets too when the kernel
    refuses the program type (fentry on some VM kernels)."""
    lines = str(exc).strip().splitlines()
    text = lines[-1] if lines else type(exc).__name__
    if "super-user" in text and os.geteuid() == 0:
        return "the kernel refused to load it (EPERM, although running as root)"
    return text


#: fentry on the function a `reject with tcp reset` rule answers through
REJECT_PROBE = b"KFUNC_PROBE(nf_send_reset, void *net, void *sk, void *oldskb, int hook) { return 0; }"


def fentry_unavailable(bcc: Any) -> str | None:
    """None if fentry programs on the REJECT functions load here, otherwise why not.
    Probed with a program of its own: bcc attaches a program's tracepoints as it loads
    it, so a full program whose fentry part fails would leave them attached."""
    if not bcc.BPF.support_kfunc():
        return "this bcc/kernel has no fentry (kfunc) support"
    try:
        bcc.BPF(text=REJECT_PROBE).cleanup()
    except Exception as exc:
        return f"fentry on {REJECT_FUNCTIONS[0]} does not load: {load_error(exc)}"
    return None


class DropsUnavailable(Exception):
    """The kernel cannot give drops with reasons here (says why)."""


def program_text() -> str:
    return resources.files("wirestream.bpf").joinpath("packet_drops.c").read_text()


def _short(name: str) -> str:
    """An enumerator's name as the tracepoint prints it, in lower case:
    SKB_DROP_REASON_NO_SOCKET -> no_socket, SKB_DROP_REASON_SKB_CSUM -> skb_csum,
    SKB_CONSUMED -> consumed."""
    for prefix in ("SKB_DROP_REASON_", "SKB_"):
        if name.startswith(prefix):
            return name[len(prefix):].lower()
    return name.lower()


def reasons_from_tracefs(fmt: str) -> dict[int, str]:
    """Value -> name from the kfree_skb format's ``__print_symbolic(REC->reason, {2,
    "NOT_SPECIFIED"}, ...)``."""
    m = re.search(r"__print_symbolic\(REC->reason,(.*)\)", fmt, re.S)
    if not m:
        return {}
    return {int(v): n.lower() for v, n in re.findall(r"\{\s*(\d+)\s*,\s*\"([A-Z0-9_]+)\"\s*\}", m.group(1))}


def drop_reasons(btf: BTF | None) -> dict[int, str]:
    """This kernel's ``enum skb_drop_reason``: value -> short lower-case name."""
    if btf is not None:
        try:
            return {v: _short(n) for v, n in btf.enum("skb_drop_reason").items() if v >= 0}
        except BTFError:
            pass
    try:
        return reasons_from_tracefs(KFREE_SKB_FORMAT.read_text())
    except OSError:
        return {}


def unavailable() -> str | None:
    """None if drop reasons can be traced here, otherwise why not (for doctor and tests)."""
    try:
        fmt = KFREE_SKB_FORMAT.read_text()
    except OSError:
        return f"no skb:kfree_skb tracepoint at {KFREE_SKB_FORMAT} (tracefs not mounted?)"
    if "skb_drop_reason reason" not in fmt:
        return "skb:kfree_skb has no reason field (Linux 5.17+ needed)"
    try:  # the header only: parsing all of it takes most of a second
        with VMLINUX_BTF.open("rb") as f:
            magic = f.read(2)
    except OSError as exc:
        return f"cannot read kernel BTF {VMLINUX_BTF}: {exc.strerror} (CONFIG_DEBUG_INFO_BTF)"
    if magic != b"\x9f\xeb":
        return f"{VMLINUX_BTF}: not BTF"
    return None


def kernel_offsets(btf: BTF) -> dict[str, int]:
    """The struct member offsets bpf/packet_drops.c reads, for this kernel."""
    fields = {
        "OFF_SKB_HEAD": ("sk_buff", "head", 8), "OFF_SKB_NETWORK_HEADER": ("sk_buff", "network_header", 2),
        "OFF_SKB_TRANSPORT_HEADER": ("sk_buff", "transport_header", 2), "OFF_SKB_DEV": ("sk_buff", "dev", 8),
        "OFF_SKB_IIF": ("sk_buff", "skb_iif", 4), "OFF_SKB_SK": ("sk_buff", "sk", 8),
        "OFF_DEV_IFINDEX": ("net_device", "ifindex", 4), "OFF_DEV_NAME": ("net_device", "name", 16),
        "OFF_DEV_NET": ("net_device", "nd_net.net", 8), "OFF_NET_INUM": ("net", "ns.inum", 4),
        "OFF_SK_NET": ("sock", "__sk_common.skc_net.net", 8),
    }
    out = {}
    for macro, (struct_name, path, size) in fields.items():
        got = btf.size(struct_name, path)
        if got != size:  # the program reads exactly `size` bytes there
            raise BTFError(f"struct {struct_name}.{path} is {got} bytes in this kernel, expected {size}")
        out[macro] = btf.offset(struct_name, path)
    # One read for all of a struct's fields where they are close together (the program's
    # stack is 512 bytes): SKB_SPAN_*, DEV_SPAN_*.
    for span, prefix in (("SKB_SPAN", "OFF_SKB_"), ("DEV_SPAN", "OFF_DEV_")):
        members = [(out[m], fields[m][2]) for m in fields if m.startswith(prefix)]
        start = min(off for off, _ in members)
        length = max(off + size for off, size in members) - start
        if length <= SPAN_MAX:
            out[f"{span}_START"], out[f"{span}_LEN"] = start, length
    return out


@dataclass
class Row:
    """One drained row of the kernel's map."""

    key: tuple
    count: int
    first_ns: int
    last_ns: int
    ifname: str


class DropSource:
    """The loaded kfree_skb (and icmp_send, and where possible fentry REJECT) programs
    with their two counting maps. Needs bcc and root."""

    def __init__(self, bcc: Any, max_rows: int = 16384, include_not_specified: bool = False) -> None:
        why = unavailable()
        if why:
            raise DropsUnavailable(why)
        btf = BTF()
        self.reasons = drop_reasons(btf)
        not_specified = [v for v, n in self.reasons.items() if n == REASON_NOT_SPECIFIED]
        if len(not_specified) != 1:
            raise DropsUnavailable("this kernel's enum skb_drop_reason has no NOT_SPECIFIED")
        cflags = [f"-D{k}={v}" for k, v in kernel_offsets(btf).items()] + [
            f"-DMAX_ROWS={max_rows}", f"-DREASON_NOT_SPECIFIED={not_specified[0]}"]
        if include_not_specified:
            cflags.append("-DWITH_NOT_SPECIFIED")
        #: what this kernel lets us tell; doctor prints these
        self.features: dict[str, str | None] = {}
        if ICMP_SEND.is_dir():
            cflags.append("-DWITH_ICMP_SEND")
            self.features["refused_icmp"] = None
        else:
            self.features["refused_icmp"] = "no icmp:icmp_send tracepoint"
        self.features["rejects_tcp_reset"] = fentry_unavailable(bcc)
        if self.features["rejects_tcp_reset"] is None:
            cflags.append("-DWITH_REJECT")
        self.bpf = bcc.BPF(text=program_text().encode(), cflags=cflags)
        self._maps = (self.bpf[b"drops0"], self.bpf[b"drops1"])
        self._active = self.bpf[b"active"]
        self._which = 0
        #: how long a program may still be running on the map just switched away from
        self.grace_s = 0.005

    def drain(self) -> list[Row]:
        """Switch the programs to the other map, then read and clear the one they left."""
        old = self._which
        self._which = 1 - old
        self._active[ctypes.c_int(0)] = ctypes.c_uint32(self._which)
        # A program that read `active` just before the switch may still add to the old
        # map; tracepoint programs run to completion in microseconds.
        time.sleep(self.grace_s)
        table = self._maps[old]
        rows = []
        for k, v in table.items():
            kb = bytes(k)  # ctypes struct -> its 52 bytes
            vb = bytes(v)
            key = KEY_STRUCT.unpack(kb)
            count, first_ns, last_ns, ifname = VALUE_STRUCT.unpack(vb)
            rows.append(Row(key, count, first_ns, last_ns, ifname.split(b"\0", 1)[0].decode(errors="replace")))
        table.clear()
        return rows

    def _percpu_sum(self, name: bytes) -> int:
        return int(sum(self.bpf[name][ctypes.c_int(0)]))

    def overflow(self) -> int:
        """Drops not counted so far because the map was full (``max_rows`` keys)."""
        return self._percpu_sum(b"overflow")

    def not_specified(self) -> int:
        """kfree_skb calls with reason NOT_SPECIFIED seen so far (left out unless asked)."""
        return self._percpu_sum(b"unspecified")

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """Per loaded program: (runs, total ns), from the kernel's BPF statistics
        (counted only while sysctl kernel.bpf_stats_enabled=1)."""
        out = {}
        for name, fn in self.bpf.funcs.items():
            stats = prog_run_stats(fn.fd)
            if stats is not None:
                out[name.decode()] = stats
        return out

    def close(self) -> None:
        self.bpf.cleanup()


# --- the kernel's per-program run statistics ---------------------------------------------

_SYS_BPF = 321  # x86_64
_BPF_OBJ_GET_INFO_BY_FD = 15
#: offsets in struct bpf_prog_info (include/uapi/linux/bpf.h): run_time_ns, run_cnt
_RUN_TIME_NS_OFFSET, _RUN_CNT_OFFSET = 192, 200
_INFO_SIZE = 208


def prog_run_stats(prog_fd: int) -> tuple[int, int] | None:
    """(run count, total run time in ns) of a loaded BPF program, or None if the kernel
    does not say (non-x86_64, old kernel)."""
    if os.uname().machine != "x86_64":
        return None
    info = ctypes.create_string_buffer(_INFO_SIZE)
    # union bpf_attr.info: bpf_fd u32, info_len u32, info u64
    attr = struct.pack("=IIQ", prog_fd, _INFO_SIZE, ctypes.addressof(info))
    attr_buf = ctypes.create_string_buffer(attr, 128)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_BPF, _BPF_OBJ_GET_INFO_BY_FD, attr_buf, 128) != 0:
        return None
    run_ns, runs = struct.unpack_from("=QQ", info.raw, _RUN_TIME_NS_OFFSET)
    return runs, run_ns


# --- records ------------------------------------------------------------------------------------


def _ip_text(l3proto: int, raw: bytes) -> tuple[int | None, str | None, bytes]:
    if l3proto == ETH_P_IP:
        return 4, socket.inet_ntop(socket.AF_INET, raw[:4]), raw[:4] + b"\0" * 12
    if l3proto == ETH_P_IPV6:
        return 6, socket.inet_ntop(socket.AF_INET6, raw), raw
    return None, None, raw


class DropPublisher:
    """Drained rows -> ``Drop`` records on ``wire.drops``."""

    def __init__(self, bootstrap: str, codec: AvroCodec, partitions: int, source_id: str,
                 reasons: dict[int, str]) -> None:
        self.partitions = partitions
        self.source_id = source_id
        self.reasons = reasons
        self._encode = codec.encoder(DROPS)
        self._encode_stats = codec.encoder(STATS)
        self.kafka = WireProducer(bootstrap, **{"linger.ms": 50})
        self._clock_offset_ns = time.time_ns() - time.monotonic_ns()
        self.published = 0
        self.dropped_packets: Counter[str] = Counter()  # reason -> packets, over the run

    def record(self, row: Row, now_us: int) -> tuple[dict[str, Any], int]:
        """The record of one row, and its partition."""
        saddr, daddr, netns, ifindex, reason, sport, dport, l3proto, l4proto, flags = row.key
        version, src, src16 = _ip_text(l3proto, saddr)
        _, dst, dst16 = _ip_text(l3proto, daddr)
        name = self.reasons.get(reason, f"reason_{reason}")
        ports = version is not None and (l4proto in PORT_PROTOCOLS or l4proto in (1, 58))
        tcp_rst = bool(flags & FLAG_TCP_RST)
        # The stack answers a TCP segment for which there is no socket with a RST, unless
        # it is a RST (tcp_v4_send_reset / tcp_v6_send_reset); ICMP errors are marked by
        # the kernel program (icmp:icmp_send).
        refused = bool(flags & FLAG_REJECTED) or (name == "no_socket" and l4proto == 6 and not tcp_rst)
        rec = {
            "source_id": self.source_id,
            "ts_us": now_us,
            "first_ts_us": (row.first_ns + self._clock_offset_ns) // 1000,
            "last_ts_us": (row.last_ns + self._clock_offset_ns) // 1000,
            "reason": name,
            "refused": refused,
            "count": row.count,
            "ip_version": version,
            "ethertype": l3proto,
            "protocol": l4proto if version is not None else None,
            "src_ip": src, "src_port": sport if ports else None,
            "dst_ip": dst, "dst_port": dport if ports else None,
            "tcp_rst": tcp_rst,
            "interface": row.ifname or None,
            "ifindex": ifindex,
            "netns": netns or None,
        }
        if version is not None and l4proto in PORT_PROTOCOLS:
            part = partition_for(canonical_key(l4proto, src16, sport, dst16, dport), self.partitions)
        else:
            part = partition_for(canonical_key(l4proto, src16, 0, dst16, 0), self.partitions)
        return rec, part

    def publish(self, rows: list[Row]) -> None:
        now_us = time.time_ns() // 1000
        for row in rows:
            rec, part = self.record(row, now_us)
            self.kafka.produce(DROPS, self._encode(rec), None, part)
            self.published += 1
            self.dropped_packets[rec["reason"]] += row.count
        self.kafka.poll(0)

    def publish_stats(self, overflow: int, not_specified: int, final: bool) -> dict[str, Any]:
        """This producer's totals since the start on ``wire.stats`` (stage
        ``producer.drops``): ``received`` the drops counted, ``emitted`` the records,
        ``dropped`` the drops the kernel map had no room for (``drops_overflow``) and
        delivery errors, ``counters`` the NOT_SPECIFIED frees seen (not drops, left out)."""
        record = {
            "stage": STAGE,
            "instance": f"{socket.gethostname()}:{os.getpid()}",
            "source_id": self.source_id,
            "partition": -1,
            "ts_us": time.time_ns() // 1000,
            "final": final,
            "received": sum(self.dropped_packets.values()),
            "emitted": {DROPS: self.published},
            "dropped": add_counts({"drops_overflow": overflow} if overflow else {}, self.kafka.delivery_errors),
            "counters": {"not_specified_seen": not_specified,
                         **{f"reason.{k}": v for k, v in self.dropped_packets.items()}},
        }
        self.kafka.produce(STATS, self._encode_stats(record), self.source_id.encode())
        return record

    def flush(self, timeout: float = 60.0) -> None:
        self.kafka.flush(timeout, undelivered="broker_undelivered_at_exit")
