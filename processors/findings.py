"""What the analysers find in clear, and how healthy a retransmission rate is.

One place for the vocabulary the packet processors and the per-service windows share:

- :class:`Finding`: credentials and personal data a cleartext HTTP transaction carried
  (the HTTP analyser's core finds them as it builds the record, rust/src/l7/http/redact.rs,
  which repeats these bit values; ``processors.observations`` carries them to the
  windows as the ``findings`` byte of an observation row, ``processors.detections``
  raises ``cleartext_credentials`` / ``pii_in_cleartext`` from their per-client counts);
- :class:`RecordWithFindings`: an output record together with its findings;
- :func:`health_band`: the band of a retransmission rate, in connection records
  (``processors.tcp_connection``), service windows and the ``retransmission_band`` alert.
"""

from __future__ import annotations

from enum import IntFlag
from typing import Any


class Finding(IntFlag):
    """Findings bits. The values are the observation rows' ``findings`` byte (one byte:
    at most 8 kinds), so they must not change while observation batches are in flight;
    the compiled core sets them (``rust/src/l7/http/redact.rs``'s ``*_BIT``)."""

    BASIC_CREDENTIALS = 1  # Authorization: Basic
    BEARER_TOKEN = 2  # Authorization: Bearer
    PASSWORD_IN_FORM = 4  # a non-empty password field in a form or JSON request body
    CARD_NUMBER = 8  # a Luhn-valid payment card number in a body
    OTHER_PII = 16  # a formatted US social security number in a form or JSON body
    # a request or status line Wireshark takes although it is not HTTP/1.x grammar
    # (no version, `HTTP/1.` as version, no target, ...): paired and flagged, not dropped
    HTTP_MALFORMED = 32


NO_FINDINGS = Finding(0)
CREDENTIALS = Finding.BASIC_CREDENTIALS | Finding.BEARER_TOKEN | Finding.PASSWORD_IN_FORM
PII = Finding.CARD_NUMBER | Finding.OTHER_PII

# The same bits as plain ints, for the code that runs per transaction: IntFlag arithmetic
# runs in Python, ~1.2 µs per ``|`` against ~40 ns for ints (CPython 3.11, timeit), and
# nearly every transaction finds nothing. A Finding is made once something was found.
BASIC_CREDENTIALS_BIT = int(Finding.BASIC_CREDENTIALS)
BEARER_TOKEN_BIT = int(Finding.BEARER_TOKEN)
PASSWORD_IN_FORM_BIT = int(Finding.PASSWORD_IN_FORM)
CARD_NUMBER_BIT = int(Finding.CARD_NUMBER)
OTHER_PII_BIT = int(Finding.OTHER_PII)
HTTP_MALFORMED_BIT = int(Finding.HTTP_MALFORMED)

#: The per-client counter of each finding in a window (and the alert evidence's names).
COUNTER_NAMES: dict[Finding, str] = {
    Finding.BASIC_CREDENTIALS: "basic_credentials",
    Finding.BEARER_TOKEN: "bearer_tokens",
    Finding.PASSWORD_IN_FORM: "passwords_in_forms",
    Finding.CARD_NUMBER: "card_numbers",
    Finding.OTHER_PII: "other_pii",
    Finding.HTTP_MALFORMED: "http_malformed",
}
#: (bit as a plain int, counter name), for the windows' loop over an observation's byte
FINDING_COUNTERS: tuple[tuple[int, str], ...] = tuple((int(f), n) for f, n in COUNTER_NAMES.items())


class RecordWithFindings(dict[str, Any]):
    """An output record (the topic schema's fields, as a dict) and what the analyser
    found in it (:attr:`findings`), which only the detections read.

    The findings are an attribute, not a key, so that they cannot leak: the Avro
    encoders write the schema's fields from the mapping, and sinks and consumers copy
    the mapping, so an attribute reaches neither the output schema nor anything
    downstream. And the analysers' ``emit(topic, key, record)`` callback stays one
    signature for every protocol: the record is all there is to hand on. A record with
    nothing found stays a plain dict (no copy on the common path)."""

    __slots__ = ("findings",)

    def __init__(self, fields: dict[str, Any], findings: Finding) -> None:
        super().__init__(fields)
        self.findings = findings


def findings_of(record: dict[str, Any]) -> Finding:
    """The findings an output record carries (none for a plain record)."""
    return record.findings if isinstance(record, RecordWithFindings) else NO_FINDINGS


#: Retransmission-rate bands, best first.
HEALTH_BANDS = ("healthy", "degraded", "severe")


def health_band(rate: float) -> str:
    """Band of a retransmission rate (retransmitted data packets / data packets):
    healthy below 1 %, degraded below 5 %, severe from 5 % (schemas/connection.avsc)."""
    return "healthy" if rate < 0.01 else "degraded" if rate < 0.05 else "severe"
