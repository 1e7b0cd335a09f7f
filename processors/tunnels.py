"""The outer path of overlay traffic: which tunnels a flow's packets came through.

A node's pod-to-pod traffic crosses the wire inside VXLAN, Geneve, IP-in-IP or GRE: the
decoder analyses the inner packet (the pods' flow) and the producer keeps, per batch, the
tunnel layers each packet came through (``tunnel_of`` / ``tunnel_paths`` of
``wire.packets``, docs/packet-layout.md). :class:`TunnelPaths` remembers, per inner flow,
the path of its first tunneled packet, and :meth:`TunnelPaths.path_of` gives it to every
record of that flow (connections, flows, DNS, TLS, HTTP transactions) as the record's
``tunnel`` list: one entry per layer, outermost first, with its kind, its identifier
(VNI, GRE key, ...) and the outer addresses turned to the record's client and server
sides, so the node pair that carried a pod's connection reads off the record.

Nothing of this runs for traffic that came through no tunnel: a batch without tunnels has
an empty ``tunnel_of``, and records get no ``tunnel`` until a tunneled packet was seen
(the Avro default is the empty list).

Why here and not in the compiled core's tracker: the path is per flow, not per packet, and
it is needed by records of every topic: one small table beside the trackers, keyed as the
records are (transport, then the two endpoints in order), costs nothing per packet of a
plain capture and keeps the core's checkpoint formats unchanged. It is checkpointed with
the engine (processors/state_codec.py).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from wirestream.packet_block import ip_text

#: Bytes of one layer in ``tunnel_paths`` (rust/src/decode/tunnel.rs, ``write_path``).
LAYER_SIZE = 40
_LAYER = struct.Struct("<BBBxI16s16s")

#: Layer kind codes (1 + the index in the core's ``Tunnel::ALL``) as records name them.
KINDS = ("vxlan", "geneve", "gre", "erspan", "ipip", "teredo", "gtpu", "pppoe", "mpls")

#: Flows whose path is remembered at once, per engine; the oldest goes first beyond it
#: (counted as ``tunnel_paths_evicted``). A flow's entry goes with its final record.
MAX_FLOWS = 100_000

PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP = 6, 17, 1, 58, 132
_PROTO_OF = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "sctp": PROTO_SCTP}

#: One layer as stored: (kind, id or None, outer source, outer destination): the
#: addresses as text, None below IP (PPPoE, MPLS).
Layer = tuple[str, int | None, str | None, str | None]
Endpoint = tuple[str, int]

#: What tells a flow direction and its path apart in a batch.
_DISTINCT = np.dtype([("proto", "u1"), ("ip_version", "u1"), ("src_ip", "S16"), ("src_port", "<u2"),
                      ("dst_ip", "S16"), ("dst_port", "<u2"), ("path", "<u4")])
FlowKey = tuple[int, Endpoint, Endpoint]


class TunnelPathError(ValueError):
    """A batch's tunnel table is malformed (its producer wrote something else)."""


def parse_paths(data: bytes) -> list[tuple[Layer, ...]]:
    """The paths of a batch's ``tunnel_paths``, in order (path ``i`` is at index ``i - 1``)."""
    paths: list[tuple[Layer, ...]] = []
    pos, end = 0, len(data)
    while pos < end:
        count = data[pos]
        pos += 1
        if pos + count * LAYER_SIZE > end:
            raise TunnelPathError(f"tunnel path {len(paths) + 1} runs past the table's {end} bytes")
        layers = []
        for _ in range(count):
            code, version, flags, ident, src, dst = _LAYER.unpack_from(data, pos)
            pos += LAYER_SIZE
            if not 1 <= code <= len(KINDS) or version not in (0, 4, 6):
                raise TunnelPathError(f"tunnel path {len(paths) + 1}: unknown layer kind {code} or IP version {version}")
            if version:
                layers.append((KINDS[code - 1], ident if flags & 1 else None, ip_text(src, version), ip_text(dst, version)))
            else:
                layers.append((KINDS[code - 1], ident if flags & 1 else None, None, None))
        paths.append(tuple(layers))
    return paths


def flow_key(proto: int, a: Endpoint, b: Endpoint) -> FlowKey:
    """The key both directions of a flow share (the records' endpoints, in order)."""
    return (proto, a, b) if a <= b else (proto, b, a)


def record_key(record: dict[str, Any]) -> FlowKey | None:
    """The flow key of an output record, from its endpoints and transport (TCP when the
    record kind has none: connections, transactions, TLS)."""
    client = (record.get("client_ip"), record.get("client_port"))
    server = (record.get("server_ip"), record.get("server_port"))
    if client[0] is None or server[0] is None:
        return None
    transport = record.get("transport", "tcp")
    if transport == "icmp":  # Zeek's name for ICMPv6 too
        proto = PROTO_ICMPV6 if record.get("ip_version") == 6 or ":" in client[0] else PROTO_ICMP
    else:
        proto = _PROTO_OF.get(transport, PROTO_TCP)
    return flow_key(proto, client, server)


class TunnelPaths:
    """Per inner flow, the tunnel path of its first tunneled packet (see the module)."""

    def __init__(self, max_flows: int = MAX_FLOWS) -> None:
        self.max_flows = max_flows
        #: flow key -> (the inner source endpoint of the packet the path was seen on, path)
        self.paths: dict[FlowKey, tuple[Endpoint, tuple[Layer, ...]]] = {}
        self.evicted = 0
        self.malformed = 0  # batches whose tunnel table could not be read

    def observe(self, headers: np.ndarray, tunnel_of: bytes, tunnel_paths: bytes) -> None:
        """One batch's headers and its tunnel table (``tunnel_of`` empty: no tunnel)."""
        if not tunnel_of:
            return
        try:
            if len(tunnel_of) != 4 * len(headers):
                raise TunnelPathError(f"tunnel_of has {len(tunnel_of)} bytes for {len(headers)} packets")
            numbers = np.frombuffer(tunnel_of, dtype="<u4")
            paths = parse_paths(tunnel_paths)
            if numbers.size and int(numbers.max()) > len(paths):
                raise TunnelPathError(f"a packet names tunnel path {int(numbers.max())} of {len(paths)}")
        except TunnelPathError:
            self.malformed += 1  # the packets are analysed all the same, without their path
            return
        rows = np.flatnonzero(numbers)
        if not rows.size:
            return
        # One Python step per distinct (flow direction, path) of the batch, not per packet:
        # an overlay's batch holds a few node pairs' worth of paths.
        table = np.empty(rows.size, dtype=_DISTINCT)
        picked = headers[rows]
        for name in _DISTINCT.names[:-1]:
            table[name] = picked[name]
        table["path"] = numbers[rows]
        _, first = np.unique(table, return_index=True)
        for i in np.sort(first):
            proto, version, src_ip, src_port, dst_ip, dst_port, path = table[i].tolist()
            src = (ip_text(src_ip, version), src_port)
            key = flow_key(proto, src, (ip_text(dst_ip, version), dst_port))
            if key in self.paths:
                continue  # the first path stays (a flow that moves between paths keeps it)
            if len(self.paths) >= self.max_flows:
                del self.paths[next(iter(self.paths))]
                self.evicted += 1
            self.paths[key] = (src, paths[path - 1])

    def path_of(self, record: dict[str, Any], final: bool = False) -> list[dict[str, Any]]:
        """The record's ``tunnel`` list (empty: its flow came through no tunnel); ``final``:
        the flow's last record, after which its entry is forgotten."""
        key = record_key(record)
        if key is None:
            return []
        entry = self.paths.pop(key, None) if final else self.paths.get(key)
        if entry is None:
            return []
        src, layers = entry
        # outer addresses as seen on the client's side of the record: the path was taken
        # from whichever direction came first
        from_client = src == (record["client_ip"], record["client_port"])
        return [
            {
                "kind": kind,
                "id": ident,
                "outer_client_ip": outer_src if from_client else outer_dst,
                "outer_server_ip": outer_dst if from_client else outer_src,
            }
            for kind, ident, outer_src, outer_dst in layers
        ]

