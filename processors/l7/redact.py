"""Redaction of secrets in HTTP records: credentials, cookies, tokens and card numbers.

Applied by the compiled core as it builds each HTTP record when ``L7Options.redact`` is
on (the default): ``rust/src/l7/http/redact.rs`` is the one implementation, and this
module its Python face (thin wrappers, for tests and other callers). What is masked,
and what is deliberately kept visible:

- ``Authorization`` / ``Proxy-Authorization``: the credentials; the auth *scheme* stays
  (``Basic [REDACTED]``), because detections need to know that a Basic credential
  crossed the network in cleartext.
- ``Cookie``: every cookie value (names stay). ``Set-Cookie``: the cookie's value; the
  attributes (``Path``, ``Secure``, ``HttpOnly``, ``SameSite``, ...) stay, so that missing
  ``Secure``/``HttpOnly`` flags can still be reported.
- API-key style headers (``X-Api-Key``, ``X-Auth-Token``, ``X-Amz-Security-Token``, any
  name containing ``token``, ``secret``, ``password``, ``api-key``, ...): the whole value.
- Query parameters of the request target with token-like names (``access_token``,
  ``api_key``, ``password``, ``sig``, ``X-Amz-Signature``, ...), ``;jsessionid=``-style
  path parameters, and the password of ``user:password@`` in absolute-form targets.
- Bodies: payment card numbers (13-19 digits, optionally separated by single spaces or
  dashes, Luhn-valid, starting with a card-network digit 2-6) keep their last 4 digits
  (``************1111``); in ``application/x-www-form-urlencoded`` bodies the values of
  the same token-like parameters; in JSON bodies up to 4 KiB the string values of
  token-like keys.

Cost matters (it runs once per transaction, on every body): the core scans bodies with
hand-written byte loops (the regular expressions the Python version used are in their
comments), JSON bodies only when small and holding a hint of a secret.
"""

from __future__ import annotations

from collections.abc import Callable

from wirestream._core import HttpConnection

REDACTED = "[REDACTED]"

# ------------------------------------------------------------- headers and targets
# The compiled core redacts header values and request targets as it builds each record
# (rust/src/l7/http/redact.rs); these are its functions, for tests and other callers.

#: Kinds of sensitive header (0: not sensitive), as :func:`header_kind` gives them.
KEEP, AUTH, COOKIE, SET_COOKIE, SECRET = 0, 1, 2, 3, 4

#: Which kind of redaction the header ``name`` (lower-case) needs; 0 = none.
header_kind: Callable[[str], int] = HttpConnection.header_kind


def redact_target(target: str) -> str:
    """The request target with token-like query (and ``;name=``) parameters and URL
    passwords masked (``target`` itself when nothing is)."""
    masked = HttpConnection.redact_target(target)
    return target if masked is None else masked


# ------------------------------------------------------------------------------ bodies
# The core redacts and reads the bodies as it builds each record too (same file); these
# are its functions, for tests and other callers.


def luhn_valid(digits: str) -> bool:
    """True if ``digits`` (only 0-9) passes the Luhn check used by card numbers."""
    return HttpConnection.luhn_valid(digits)


def redact_body(body: bytes, content_type: str | None = None, truncated: bool = False) -> bytes:
    """``body`` with card numbers masked, and for form-encoded / JSON bodies (by
    ``content_type``) the values of token-like parameters (``body`` itself when nothing
    is). ``truncated``: the body was cut (body cap), so a digit run at its very end is
    masked without the Luhn check."""
    masked = HttpConnection.redact_body(body, content_type, truncated)
    return body if masked is None else masked


# What redaction would hide is also what a security team wants to hear about when it
# crosses the network in clear: detections (processors.detections) count it per client.

#: ``processors.findings.Finding`` bits of what ``body`` carries in clear (as an int):
#: PASSWORD_IN_FORM (a non-empty password-like field of a form or JSON body; the caller
#: decides whether the body was a request's), OTHER_PII (a formatted US social security
#: number in a form or JSON body), CARD_NUMBER (a Luhn-valid card number, in any body
#: that is not binary).
body_findings: Callable[..., int] = HttpConnection.body_findings
