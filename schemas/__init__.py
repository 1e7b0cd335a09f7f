"""Avro schemas of every wirestream topic, loaded from the ``*.avsc`` files beside this module.

The files are the contract: field names, types and docs live there, not in code.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

#: Schema file (without ``.avsc``) for each record name used in this package.
SCHEMA_FILES: tuple[str, ...] = (
    "packet_batch",
    "connection",
    "transaction",
    "dns",
    "tls",
    "service_metrics",
    "alert",
    "stats",
    "observation_batch",
)


@cache
def schema_text(name: str) -> str:
    """Return the canonical JSON text of schema ``name`` (e.g. ``"connection"``)."""
    raw = resources.files(__name__).joinpath(f"{name}.avsc").read_text(encoding="utf-8")
    return json.dumps(json.loads(raw), separators=(",", ":"))


def schema_dict(name: str) -> dict[str, Any]:
    """Return schema ``name`` as a dict (a fresh copy)."""
    return json.loads(schema_text(name))
