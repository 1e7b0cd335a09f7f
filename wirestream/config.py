"""Settings shared by every command. Each has a flag and an environment variable.

| setting            | flag              | environment                  | default |
|--------------------|-------------------|------------------------------|---------|
| Kafka bootstrap    | ``--bootstrap``   | ``WIRESTREAM_BOOTSTRAP``     | none: start the embedded broker |
| schema registry    | ``--registry``    | ``WIRESTREAM_REGISTRY``      | none: serve the embedded registry |
| partitions         | ``--partitions``  | ``WIRESTREAM_PARTITIONS``    | 4 (for topics wirestream creates) |
| processor group    | ``--group``       | ``WIRESTREAM_GROUP``         | ``wirestream-processors`` |
| idle timeout       | ``--idle-timeout``| ``WIRESTREAM_IDLE_TIMEOUT``  | 300 s of capture time |
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass
class Settings:
    bootstrap: str | None = None
    registry: str | None = None
    partitions: int = 4
    group: str = "wirestream-processors"
    idle_timeout_s: float = 300.0
    payload_snaplen: int = 65535

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            bootstrap=_env("WIRESTREAM_BOOTSTRAP"),
            registry=_env("WIRESTREAM_REGISTRY"),
            partitions=int(_env("WIRESTREAM_PARTITIONS", "4") or 4),
            group=_env("WIRESTREAM_GROUP", "wirestream-processors") or "wirestream-processors",
            idle_timeout_s=float(_env("WIRESTREAM_IDLE_TIMEOUT", "300") or 300),
        )
