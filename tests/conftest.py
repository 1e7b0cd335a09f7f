"""Shared fixtures: a real embedded broker (tansu over TCP) and the embedded registry; the
hook that turns a missing requirement into a skip, or a failure under
``WIRESTREAM_REQUIRE=all`` (tests/helpers.py)."""

from __future__ import annotations

import os
import sys

import pytest

# tests/ on sys.path, here and nowhere else: the tests import their shared modules
# (helpers, oracle, captures, netns, ...) as plain top-level modules.
sys.path.insert(0, os.path.dirname(__file__))

from helpers import REQUIRE_ALL, require_or_skip  # noqa: E402

from wirestream.broker import EmbeddedBroker, ensure_topics  # noqa: E402
from wirestream.registry import EmbeddedSchemaRegistry  # noqa: E402
from wirestream.topics import ALL_TOPICS  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(missing): the test needs something from the machine; "
                            "missing is None when it is there, else what is missing (tests/helpers.py)")


def _missing(item: pytest.Item) -> str | None:
    """What the first of the item's ``needs`` marks says is missing, or None."""
    return next((m.args[0] for m in item.iter_markers("needs") if m.args and m.args[0] is not None), None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Without WIRESTREAM_REQUIRE: a plain skip mark, reported at the test as skipif was.
    if not REQUIRE_ALL:
        for item in items:
            missing = _missing(item)
            if missing is not None:
                item.add_marker(pytest.mark.skip(reason=missing))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Under WIRESTREAM_REQUIRE=all: a failure, before the fixtures are set up (a test that
    # cannot run does not start the broker for nothing).
    missing = _missing(item) if REQUIRE_ALL else None
    if missing is not None:
        require_or_skip(missing)


@pytest.fixture(scope="session")
def broker() -> EmbeddedBroker:
    with EmbeddedBroker() as b:
        ensure_topics(b.bootstrap, ALL_TOPICS, 4)
        yield b


@pytest.fixture(scope="session")
def registry() -> EmbeddedSchemaRegistry:
    with EmbeddedSchemaRegistry() as r:
        yield r
