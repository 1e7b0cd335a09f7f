"""Settings shared by every command. Each has a flag and an environment variable.

| setting            | flag                     | environment                       | default |
|--------------------|--------------------------|-----------------------------------|---------|
| Kafka bootstrap    | ``--bootstrap``          | ``WIRESTREAM_BOOTSTRAP``          | none: start the embedded broker |
| schema registry    | ``--registry``           | ``WIRESTREAM_REGISTRY``           | none: serve the embedded registry |
| partitions         | ``--partitions``         | ``WIRESTREAM_PARTITIONS``         | 4 (for topics wirestream creates) |
| replication factor | ``--replication-factor`` | ``WIRESTREAM_REPLICATION_FACTOR`` | -1: the broker's ``default.replication.factor`` (for topics wirestream creates) |
| processor group    | ``--group``              | ``WIRESTREAM_GROUP``              | ``wirestream-processors`` |
| idle timeout       | ``--idle-timeout``       | ``WIRESTREAM_IDLE_TIMEOUT``       | 300 s of capture time |
| L7 analysis        | ``--no-l7``              | ``WIRESTREAM_L7`` (0/1)           | on (HTTP, DNS, TLS) |
| redaction          | ``--no-redact``          | ``WIRESTREAM_REDACT`` (0/1)       | on: credentials, cookies, tokens, card numbers masked |
| HTTP body cap      | ``--body-cap``           | ``WIRESTREAM_BODY_CAP``           | 65536 bytes kept per body (true size always recorded) |
| Community ID seed  | ``--community-id-seed``  | ``WIRESTREAM_COMMUNITY_ID_SEED``  | 0 (0-65535; the records' ``community_id``) |
| TLS key log        | ``--tls-keylog``         | (none: a flag only)               | none: TLS is not decrypted |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

#: Set to ``0`` by a command for the processes it starts against its own embedded broker
#: (wirestream/runtime.py): their producers without idempotence (one broker: no leader
#: change to keep a partition's order across, and a new idempotent producer waits
#: 0.5–1 s for its producer id before its first delivery). Not a user setting.
IDEMPOTENCE_ENV = "WIRESTREAM_IDEMPOTENCE"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass
class Settings:
    bootstrap: str | None = None
    registry: str | None = None
    partitions: int = 4
    #: replicas of the topics wirestream creates; -1: the broker's default.replication.factor
    replication_factor: int = -1
    group: str = "wirestream-processors"
    idle_timeout_s: float = 300.0
    payload_snaplen: int = 65535
    l7: bool = True
    redact: bool = True
    body_cap: int = 65536
    response_body_cap: int | None = None  # None: body_cap
    windows: bool = True
    window_s: float = 10.0
    lateness_s: float = 15.0
    alert_thresholds: list[str] = field(default_factory=list)
    #: seed of the records' Community ID (community-id-spec; 0 as Zeek's and Suricata's default)
    community_id_seed: int = 0
    #: NSS key log file (``SSLKEYLOGFILE``) to decrypt TLS with: its path only; each worker
    #: reads the file itself and keeps its bytes in memory (never logged, never copied)
    tls_keylog: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            bootstrap=_env("WIRESTREAM_BOOTSTRAP"),
            registry=_env("WIRESTREAM_REGISTRY"),
            partitions=int(_env("WIRESTREAM_PARTITIONS", "4") or 4),
            replication_factor=int(_env("WIRESTREAM_REPLICATION_FACTOR", "-1") or -1),
            group=_env("WIRESTREAM_GROUP", "wirestream-processors") or "wirestream-processors",
            idle_timeout_s=float(_env("WIRESTREAM_IDLE_TIMEOUT", "300") or 300),
            l7=_env("WIRESTREAM_L7", "1") not in ("0", "false", "no", "off"),
            redact=_env("WIRESTREAM_REDACT", "1") not in ("0", "false", "no", "off"),
            body_cap=int(_env("WIRESTREAM_BODY_CAP", "65536") or 65536),
            windows=_env("WIRESTREAM_WINDOWS", "1") not in ("0", "false", "no", "off"),
            window_s=float(_env("WIRESTREAM_WINDOW", "10") or 10),
            lateness_s=float(_env("WIRESTREAM_LATENESS", "15") or 15),
            alert_thresholds=[a for a in (_env("WIRESTREAM_ALERT_THRESHOLDS") or "").split(",") if a],
            community_id_seed=community_id_seed(_env("WIRESTREAM_COMMUNITY_ID_SEED", "0") or "0",
                                                "WIRESTREAM_COMMUNITY_ID_SEED"),
        )

    def worker_args(self) -> list[str]:
        """``wirestream process`` options that carry these settings to a worker."""
        args = ["--idle-timeout", str(self.idle_timeout_s), "--body-cap", str(self.body_cap),
                "--window", str(self.window_s), "--lateness", str(self.lateness_s)]
        if self.replication_factor != -1:  # the topics a worker creates (the windows' changelog)
            args += ["--replication-factor", str(self.replication_factor)]
        if not self.windows:
            args.append("--no-windows")
        if self.response_body_cap is not None:
            args += ["--response-body-cap", str(self.response_body_cap)]
        for a in self.alert_thresholds:
            args += ["--alert-threshold", a]
        if not self.l7:
            args.append("--no-l7")
        if not self.redact:
            args.append("--no-redact")
        if self.community_id_seed:
            args += ["--community-id-seed", str(self.community_id_seed)]
        if self.tls_keylog:
            args += ["--tls-keylog", self.tls_keylog]
        return args


def community_id_seed(text: str, where: str = "") -> int:
    """A Community ID seed: an integer 0-65535 (the spec hashes it as 2 bytes); ``where``
    (the setting's name) prefixes the error."""
    prefix = f"{where}: " if where else ""
    try:
        seed = int(text)
    except ValueError:
        raise ValueError(f"{prefix}the Community ID seed must be an integer 0-65535, not {text!r}") from None
    if not 0 <= seed <= 0xFFFF:
        raise ValueError(f"{prefix}the Community ID seed must be 0-65535, not {seed}")
    return seed
