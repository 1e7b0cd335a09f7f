"""Write output records as JSON lines: ``DIR/<topic>.jsonl``, one object per line.

Field names are the Avro field names; addresses are text and times integers, as in the
records themselves. Byte fields (captured bodies) are written as text, decoded as UTF-8
with undecodable bytes replaced (``\\ufffd``), since these files are for people and tools
like ``jq``; the Avro topics keep the exact bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from wirestream.topics import OUTPUT_TOPICS


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, default=_default, separators=(",", ":"), ensure_ascii=False)


def write_jsonl(out_dir: str | os.PathLike[str], records: dict[str, list[dict[str, Any]]]) -> list[Path]:
    """Write one file per output topic (empty topics give empty files); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for topic in OUTPUT_TOPICS:
        path = out / f"{topic}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for rec in records.get(topic, []):
                f.write(to_json_line(rec))
                f.write("\n")
        paths.append(path)
    return paths
