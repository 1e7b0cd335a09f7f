"""UDP, ICMP and SCTP flows: Zeek's conn.log notion of a connection for transports without
one (SCTP has associations, but neither Zeek nor wirestream analyses them).

The flow table itself is the compiled core's (``rust/src/flow.rs``: the rules, in its
module comment): per pair of endpoints, packets, payload bytes and frame bytes per
direction, the first and last packet time, the service its first datagrams show, Zeek's
direction (the likely-server-ports flip) and ``conn_state``; of ICMP, the exchange (an
echo and its replies are one flow), the type and code, and of an error the datagram it
quotes and the path MTU it reports; of SCTP, an association's packets between two
endpoints, its client the sender of the INIT, its ``conn_state`` from the chunk types each
side sent (setup, shutdown, abort; docs/records.md, "SCTP flows"). A flow's record is due when
it has been idle for the inactivity timeout (capture time; Zeek's
``udp_inactivity_timeout``, one minute), when memory is bounded (the flows idle longest
go first, ``ended_by`` ``evicted``), or at end of input.

A :class:`FlowTracker` hands each batch's header block to it (its UDP, ICMP and SCTP rows
are read in place) and gives the
records of the flows that ended to the engine, with their source id.

tshark's ``conv,udp`` has no timeout and no direction: its conversation of a pair of
endpoints is the sum of our flows of that pair (docs/records.md, ``wire.flows``); so is
its ``conv,sctp``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from wirestream._core import FlowTable

from .state_codec import StateError

#: Zeek's udp_inactivity_timeout
INACTIVITY_TIMEOUT_US = 60_000_000
#: flows held per engine; beyond, those idle longest are emitted (``evicted``)
MAX_FLOWS = 100_000


class FlowTracker:
    """The UDP, ICMP and SCTP flows of one source on one partition; records go to ``emit``."""

    # The core is state too: its bytes go into a snapshot (_state_prepare) and it is
    # rebuilt from them on restore (_state_restored); processors/state_codec.py.
    _state_exclude = ("_core",)

    def __init__(self, emit: Callable[[dict[str, Any]], None], source_id: str, community_id_seed: int = 0,
                 timeout_us: int = INACTIVITY_TIMEOUT_US, max_flows: int = MAX_FLOWS) -> None:
        self.emit = emit
        self.source_id = source_id
        self.community_id_seed = community_id_seed
        self.emitted = 0
        self._core = FlowTable(timeout_us, max_flows, community_id_seed)
        self._core_state = b""  # the core's bytes, in a snapshot only

    def process(self, headers: np.ndarray, payloads: bytes | np.ndarray) -> None:
        """One batch (``wirestream.packet_block`` headers, capture order; rows other than
        UDP, ICMP and SCTP are skipped by the core)."""
        if len(headers):
            # the core reads rows and payloads in place, as bytes
            if isinstance(payloads, np.ndarray):
                payloads = np.ascontiguousarray(payloads).view(np.uint8)
            self._emit_all(self._core.process(np.ascontiguousarray(headers).view(np.uint8), payloads))

    def flush(self) -> None:
        """End of input: every flow still held, in the order they started."""
        self._emit_all(self._core.flush())

    def _emit_all(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            record["source_id"] = self.source_id
            self.emit(record)
        self.emitted += len(records)

    def set_community_id_seed(self, seed: int) -> None:
        """Seed of the records' Community ID from now on (a restored engine takes its
        worker's setting, not the checkpoint's)."""
        self.community_id_seed = self._core.community_id_seed = seed

    @property
    def open_flows(self) -> int:
        return self._core.open_flows

    @property
    def evicted(self) -> int:
        return self._core.evicted

    # --- checkpoints ------------------------------------------------------------------------

    def _state_prepare(self) -> None:
        self._core_state = self._core.snapshot()

    def _state_restored(self) -> None:
        try:
            self._core = FlowTable.restore(self._core_state, self.community_id_seed)
        except ValueError as exc:
            raise StateError(f"UDP flow table: {exc}") from None
        self._core_state = b""
