"""Shared fixtures: a real embedded broker (tansu over TCP) and the embedded registry."""

from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/ helpers: oracle, local_pipeline, captures

from wirestream.broker import EmbeddedBroker, ensure_topics  # noqa: E402
from wirestream.registry import EmbeddedSchemaRegistry  # noqa: E402
from wirestream.topics import ALL_TOPICS  # noqa: E402

DATA = Path(__file__).parent / "data"


def real_captures() -> list[str]:
    """Every capture copied into tests/data (see tests/data/README.md for their origin)."""
    return sorted(glob.glob(str(DATA / "*" / "*.pcap*")))


@pytest.fixture(scope="session")
def broker() -> EmbeddedBroker:
    with EmbeddedBroker() as b:
        ensure_topics(b.bootstrap, ALL_TOPICS, 4)
        yield b


@pytest.fixture(scope="session")
def registry() -> EmbeddedSchemaRegistry:
    with EmbeddedSchemaRegistry() as r:
        yield r


requires_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
