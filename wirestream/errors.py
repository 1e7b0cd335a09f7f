"""Named errors. Each says what went wrong and where, in one line, without a traceback."""

from __future__ import annotations


class WirestreamError(Exception):
    """Base of every error wirestream reports to the user as one line."""


class CaptureFileError(WirestreamError):
    """A capture file cannot be read at all (missing, empty, not a capture, bad link type)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class BrokerUnreachable(WirestreamError):
    """The Kafka bootstrap servers did not answer in time."""


class BrokerStartError(WirestreamError):
    """The embedded broker could not be started."""


class RegistryError(WirestreamError):
    """The schema registry is unreachable or refused a request."""


class DecodeError(WirestreamError):
    """A Kafka message is not a valid Confluent-framed Avro record."""


class UsageError(WirestreamError):
    """A command-line value that cannot be used (exit status 2)."""
