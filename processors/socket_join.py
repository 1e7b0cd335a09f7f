"""Join kernel socket events (``wire.sockets``) into connection records.

Live eBPF capture publishes, next to the packets, what the kernel knows about each
socket: which process connected or accepted it, and every segment it retransmitted
(``producers/socket_events.py``). Both topics are partitioned by the same connection
key, so the worker tracking a connection's packets also holds its socket events, here,
until the connection record is emitted; then :meth:`SocketJoin.annotate` fills:

- ``client_pid``/``client_process``/``client_container_id``: the process whose
  ``connect()`` opened the client's socket;
- ``server_pid``/``server_process``/``server_container_id``: the process whose
  ``accept()`` returned the server's socket;
- ``client_syscalls``/``server_syscalls``: the data syscalls (calls, bytes, time inside
  them, per direction) each process made on its socket, counted in the kernel and
  published as cumulative ``io`` events every few seconds and with the ``close``;
- ``kernel_retransmissions``: segments the kernel retransmitted on either socket
  (sock_ops ``RETRANS_CB`` with its segment count, else ``tcp:tcp_retransmit_skb``),
  to compare with ``retransmissions`` seen on the wire.
  They differ where the capture point does not see what the kernel sends (a capture on
  another host, offloads) or where the kernel retransmits something that never reached
  the wire (a full qdisc).

Events arrive independently of the packets; the record waits for them for the
connection's close linger (10 s of capture time by default), which is far more than the
delay between the two topics in a live capture. State is bounded: entries leave with the
final record of their connection, and the table is cleared (counted) if it ever grows
past ``max_entries`` (events of connections that were never seen on the wire).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

Endpoints = tuple[str, int, str, int]  # local ip, local port, remote ip, remote port

#: which events say whose socket it is (state changes carry the connect()ing process)
_OWNER_KINDS = ("accept", "connect", "state", "retransmit")
#: the data-syscall counters of io and close events (schemas/socket_event.avsc), which are
#: also the fields of a record's ``client_syscalls``/``server_syscalls``
SYSCALL_FIELDS = ("send_calls", "recv_calls", "send_bytes", "recv_bytes", "send_time_us", "recv_time_us")


class SocketJoin:
    """The socket events of one source on one partition."""

    def __init__(self, max_entries: int = 1 << 18) -> None:
        self.max_entries = max_entries
        self._owners: dict[Endpoints, dict[str, Any]] = {}
        self._retransmits: Counter[Endpoints] = Counter()
        self._syscalls: dict[Endpoints, dict[str, int]] = {}
        self.events = 0
        self.counters: Counter[str] = Counter()

    def _state_restored(self) -> None:
        """A checkpoint written before the data-syscall counts restores without them."""
        if not hasattr(self, "_syscalls"):
            self._syscalls = {}

    def add(self, event: dict[str, Any]) -> None:
        """Take one ``SocketEvent`` record (not an end-of-input marker)."""
        self.events += 1
        key = (event["local_ip"], event["local_port"], event["remote_ip"], event["remote_port"])
        kind = event["kind"]
        if kind == "fd_snapshot":  # about a container, not a connection
            return
        if kind == "retransmit":
            self._retransmits[key] += event["segments"] or 1
        elif kind in ("io", "close") and (event.get("send_calls") or event.get("recv_calls")):
            # Cumulative counts of one socket: the latest reading is the one with the most
            # calls (an io reading can arrive after the close that carries the last ones).
            known = self._syscalls.get(key)
            if known is None and len(self._syscalls) >= self.max_entries:
                # sockets of connections never seen on the wire (another interface)
                self.counters["socket_join_cleared"] += len(self._syscalls)
                self._syscalls.clear()
            calls = event["send_calls"] + event["recv_calls"]
            if known is None or calls >= known["send_calls"] + known["recv_calls"]:
                self._syscalls[key] = {f: event[f] for f in SYSCALL_FIELDS}
        if event["pid"] is not None and kind in _OWNER_KINDS and key not in self._owners:
            if len(self._owners) >= self.max_entries:
                self.counters["socket_join_cleared"] += len(self._owners)
                self._owners.clear()
                self._retransmits.clear()
                self._syscalls.clear()
            self._owners[key] = {"pid": event["pid"], "process": event["process"],
                                 "container_id": event["container_id"]}

    def annotate(self, record: dict[str, Any]) -> None:
        """Fill the process and kernel fields of a ``wire.connections`` record; a final
        record takes its connection's entries away."""
        client: Endpoints = (record["client_ip"], record["client_port"], record["server_ip"], record["server_port"])
        server: Endpoints = (record["server_ip"], record["server_port"], record["client_ip"], record["client_port"])
        take = self._owners.pop if record["final"] else self._owners.get
        for side, key in (("client", client), ("server", server)):
            owner = take(key, None)
            if owner is not None:
                record[f"{side}_pid"] = owner["pid"]
                record[f"{side}_process"] = owner["process"]
                record[f"{side}_container_id"] = owner["container_id"]
                self.counters[f"joined_{side}_process"] += 1
            syscalls = self._syscalls.pop(key, None) if record["final"] else self._syscalls.get(key)
            record[f"{side}_syscalls"] = dict(syscalls) if syscalls is not None else None
        if record["final"]:
            kernel = record["kernel_retransmissions"] = self._retransmits.pop(client, 0) + self._retransmits.pop(server, 0)
            if kernel != record.get("retransmissions", kernel):
                # Normal when the capture point does not see every transmission (see the
                # module's docstring); a count that grows on a single-host capture is not.
                self.counters["retransmissions_differ_from_kernel"] += 1
        else:
            record["kernel_retransmissions"] = self._retransmits[client] + self._retransmits[server]
