"""DVWA's cleartext login (a real capture): the CSRF token leaves no trace in our output.

The login form posts ``user_token=<32 hex digits>``, DVWA's anti-CSRF token, next to the
password. tests/test_analyze_e2e.py checks that the password and the session cookie are
masked; here the token: it is in the capture's bytes (so the check cannot pass because
the token is simply not there), it is in the records of a ``--no-redact`` run (so the
search would find it where we put it), and it is nowhere in what a default run writes:
any output topic, with the bodies kept (``--out``), nor the summary.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DATA

CAPTURE = DATA / "chrissanders" / "http_dvwa_clearlogin.pcapng"


def token_in_capture() -> str:
    """The ``user_token`` value of the login POST, read from the capture's raw bytes."""
    found = set(re.findall(rb"user_token=([0-9a-f]{32})", CAPTURE.read_bytes()))
    assert len(found) == 1, found
    return found.pop().decode()


def analyze(out: Path, *flags: str) -> str:
    """Run analyze with ``--out``; return everything it wrote: summary and output topics."""
    proc = subprocess.run(
        [sys.executable, "-m", "wirestream", "analyze", str(CAPTURE), "--out", str(out), "--json",
         "--no-progress", "--workers", "1", *flags],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(out.glob("*.jsonl"))
    assert any(f.name == "wire.transactions.jsonl" and f.stat().st_size for f in files), files
    return proc.stdout + proc.stderr + "".join(f.read_text() for f in files)


@pytest.fixture(scope="module")
def token() -> str:
    return token_in_capture()


def test_the_token_is_in_the_capture_and_in_an_unredacted_run(token: str, tmp_path: Path) -> None:
    assert token.encode() in CAPTURE.read_bytes()
    written = analyze(tmp_path, "--no-redact")
    assert f"user_token={token}" in written  # the POST body, kept in clear on request


def test_the_token_is_nowhere_in_the_output_by_default(token: str, tmp_path: Path) -> None:
    written = analyze(tmp_path)
    assert "user_token=" in written  # the form field is still there, its value is not
    assert token not in written
    # nor a recognisable part of it (a mask that kept a prefix or suffix would leak it)
    pieces = {token[i:i + 8] for i in range(len(token) - 7)}
    assert not [p for p in pieces if p in written]
