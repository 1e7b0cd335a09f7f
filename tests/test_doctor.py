"""``wirestream doctor`` on this machine: every check answers, and its verdicts hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import REQUIRE_ALL, needs, require_or_skip

from wirestream.doctor import diagnose, load_bcc


def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wirestream", "doctor", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_json_report_has_every_check_and_mode() -> None:
    proc = doctor("--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    names = {c["name"] for c in report["checks"]}
    assert {"kernel", "privileges", "btf", "tracefs", "bcc", "kernel headers", "af_packet"} <= names
    for mode in report["capture_modes"].values():
        assert mode["available"] or mode["reason"], "an unavailable mode says why"


@needs(None if os.geteuid() == 0 else "raw packet sockets need root (CAP_NET_RAW)")
def test_af_packet_is_available_as_root() -> None:
    assert diagnose(probe=False).af_packet


def test_ebpf_verdict_is_proven_by_loading_a_program() -> None:
    """Where bcc and headers are present, 'available' means a socket filter really loaded;
    anywhere else the verdict names the missing piece."""
    r = diagnose(probe=True)
    checks = {c.name: c for c in r.checks}
    if r.ebpf:
        assert checks["ebpf probe"].ok
    else:
        assert r.ebpf_reason in ("bcc is not installed", "no kernel headers for bcc to compile against",
                                 "needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)",
                                 "a socket filter does not compile or load")
        assert not REQUIRE_ALL, f"WIRESTREAM_REQUIRE=all, and eBPF is unavailable: {r.ebpf_reason}"


def test_socket_events_verdict_is_proven_by_attaching_a_tracepoint() -> None:
    r = diagnose(probe=True)
    checks = {c.name: c for c in r.checks}
    if r.socket_events:
        assert checks["tracepoints"].ok and checks["tracepoint probe"].ok
    else:
        assert r.socket_events_reason
        assert not REQUIRE_ALL, f"WIRESTREAM_REQUIRE=all, and socket events are unavailable: {r.socket_events_reason}"


def test_missing_headers_are_named(tmp_path) -> None:
    env = dict(os.environ, BCC_KERNEL_SOURCE=str(tmp_path / "nowhere"))
    proc = doctor("--no-probe", env=env)
    assert proc.returncode == 0
    assert "NO  kernel headers" in proc.stdout
    assert "no kernel headers for bcc to compile against" in proc.stdout or "bcc is not installed" in proc.stdout


def test_bcc_loads_into_this_python_when_debian_has_it() -> None:
    try:
        bcc = load_bcc()
    except ImportError as exc:
        require_or_skip(f"no bcc here: {exc}")
    assert hasattr(bcc, "BPF")
