"""Redaction of secrets in HTTP records: credentials, cookies, tokens and card numbers.

Applied by the HTTP analyser when ``L7Options.redact`` is on (the default): header
values and request targets by the compiled core as it builds the record
(``rust/src/l7/http/redact.rs``), bodies here. What is masked, and what is deliberately
kept visible:

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

Cost matters (it runs once per transaction with a body): the body functions never run
a regular expression over a body unless a cheap C-speed test (``bytes.translate`` +
``bytes.find``, ``bytes.lower`` + ``in``) found something worth looking at.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from wirestream._core import HttpConnection

from ..findings import CARD_NUMBER_BIT, OTHER_PII_BIT, PASSWORD_IN_FORM_BIT

REDACTED = "[REDACTED]"
_REDACTED_B = b"[REDACTED]"

# ------------------------------------------------------------- headers and targets
# The compiled core redacts header values and request targets as it builds each record
# (rust/src/l7/http/redact.rs); these are its functions, for the body code below and
# for tests.

#: Kinds of sensitive header (0: not sensitive), as :func:`header_kind` gives them.
KEEP, AUTH, COOKIE, SET_COOKIE, SECRET = 0, 1, 2, 3, 4

#: Which kind of redaction the header ``name`` (lower-case) needs; 0 = none.
header_kind: Callable[[str], int] = HttpConnection.header_kind
#: Is ``name`` a token-like parameter (or JSON member) name (``access_token``, ``sig``...)?
_secret_param: Callable[[str], bool] = HttpConnection.secret_param


def _mask_params(text: str, sep: str) -> str:
    """``a=1&token=x`` -> ``a=1&token=[REDACTED]``; unchanged text is returned as is."""
    masked = HttpConnection.mask_params(text, sep)
    return text if masked is None else masked


def redact_target(target: str) -> str:
    """The request target with token-like query (and ``;name=``) parameters and URL
    passwords masked (``target`` itself when nothing is)."""
    masked = HttpConnection.redact_target(target)
    return target if masked is None else masked


# ------------------------------------------------------------------------------ bodies

# Only ever run over a run of digits and separators found by _candidate_runs.
_CARD = re.compile(rb"(?<![0-9])[2-6](?:[ -]?[0-9]){12,18}")
# digits and the separators a card number may contain -> '0', anything else -> '.'
_RUN_CLASS = bytes(48 if 48 <= b <= 57 or b in (32, 45) else 46 for b in range(256))
_THIRTEEN = b"0" * 13
_CARD_TAIL = re.compile(rb"(?<![0-9])[2-6](?:[ -]?[0-9]){7,18}$")
_DOUBLE = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)
_FORM_TYPE = "x-www-form-urlencoded"
_BINARY_TYPES = ("image/", "audio/", "video/", "font/", "application/octet-stream",
                 "application/zip", "application/gzip", "application/x-gzip",
                 "application/pdf", "application/wasm", "application/x-protobuf",
                 "application/grpc")
# A JSON body is searched for token-like keys only if it contains one of these (each a
# C-speed find, still ~1.5 ns/byte each here); and only if it is small: credentials and
# tokens travel in small JSON documents (logins, token responses), and a scan of every
# large API response would cost more than the rest of the pipeline.
_JSON_HINTS = (b"pass", b"pwd", b"secret", b"token", b"key", b"sess", b"auth", b"sig", b"cred")
_JSON_MAX = 4096
_JSON_STRING_MEMBER = re.compile(rb'"([^"\\]{1,64})"(\s*:\s*)"((?:[^"\\]|\\.)*)"')


def luhn_valid(digits: str) -> bool:
    """True if ``digits`` (only 0-9) passes the Luhn check used by card numbers."""
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    odd = False
    for ch in reversed(digits):
        d = ord(ch) - 48
        total += _DOUBLE[d] if odd else d
        odd = not odd
    return total % 10 == 0


def _mask_digits(run: bytes) -> bytes:
    """Replace all but the last 4 digits of ``run`` with '*', separators kept."""
    keep = 4
    out = bytearray(run)
    for i in range(len(out) - 1, -1, -1):
        if 48 <= out[i] <= 57:
            if keep:
                keep -= 1
            else:
                out[i] = 42  # '*'
    return bytes(out)


def _card_end(card: bytes, whole: bool) -> int:
    """Length of the card number at the start of ``card`` (digits and single separators,
    as matched by _CARD), or 0. The regex is greedy, so a valid number followed by another
    digit group ("4111 1111 1111 1111 2024") is found by trying the prefixes that end at a
    separator; ``whole`` is False when the match was cut inside a longer digit sequence."""
    digits = card.replace(b" ", b"").replace(b"-", b"").decode()
    if whole and luhn_valid(digits):
        return len(card)
    n = 0
    for i, b in enumerate(card):
        if b == 32 or b == 45:
            if 13 <= n <= 19 and luhn_valid(digits[:n]):
                return i
        else:
            n += 1
    return 0


def _candidate_runs(body: bytes, truncated: bool) -> list[tuple[int, int]]:
    """(start, end) of every run of digits and separators long enough for a card number
    (13+ bytes); plus, when the body was cut, the run at its very end, whatever its length.

    Digits and separators both map to '0' in _RUN_CLASS, so ``find`` of 13 zeros (C speed,
    ~0.5 ns a byte) finds the long runs; a regex like ``[0-9 -]{13,}`` takes ~25 ns a byte,
    and a Python loop over every short number of a JSON document more still."""
    cls = body.translate(_RUN_CLASS)
    n = len(cls)
    runs = []
    i = cls.find(_THIRTEEN)
    while i >= 0:
        start = cls.rfind(b".", 0, i) + 1
        end = cls.find(b".", i)
        if end < 0:
            end = n
        runs.append((start, end))
        i = cls.find(_THIRTEEN, end)
    if truncated and (not runs or runs[-1][1] != n):
        start = cls.rfind(b".") + 1
        if start < n:
            runs.append((start, n))
    return runs


def _mask_cards(body: bytes, truncated: bool) -> bytes:
    """``body`` with its card numbers masked (``body`` itself if there are none), to a
    fixed point: the 4 digits a masked number keeps can begin another number with the
    digits after them ("2901428292418 290142829" -> "*********2418 290142829", and
    2418 290142829 is Luhn-valid too), which another pass would mask. Masking until a pass
    finds nothing makes redaction idempotent; the extra pass only runs after a mask."""
    current = _mask_cards_once(body, truncated)
    while current is not body:
        body, current = current, _mask_cards_once(current, truncated)
    return current


def _mask_cards_once(body: bytes, truncated: bool) -> bytes:
    out: list[bytes] = []
    done = 0  # body[:done] is in `out`
    n = len(body)
    for start, end in _candidate_runs(body, truncated):
        run = body[start:end]
        p = 0
        while (m := _CARD.search(run, p)) is not None:
            s, e = m.span()
            # directly followed by a digit: cut at 19 digits inside a longer number
            whole = e == len(run) or not 48 <= run[e] <= 57
            k = _card_end(m.group(), whole)
            if k:
                out.append(body[done : start + s])
                out.append(_mask_digits(run[s : s + k]))
                done = start + s + k
                p = s + k
            else:
                p = s + 1
        if truncated and end == n:
            # The body cap cut the body inside this run: the last digits of a card number
            # may be missing, so Luhn cannot tell. Mask a card-like tail of 8+ digits.
            m = _CARD_TAIL.search(run, max(p, done - start))
            if m is not None:
                s = m.start()
                out.append(body[done : start + s])
                out.append(_mask_digits(m.group()))
                done = n
    if not out:
        return body
    out.append(body[done:])
    return b"".join(out)


def _mask_json(body: bytes) -> bytes:
    def repl(m: re.Match[bytes]) -> bytes:
        if _secret_param(m.group(1).decode("latin-1")):
            return b'"' + m.group(1) + b'"' + m.group(2) + b'"' + _REDACTED_B + b'"'
        return m.group()

    return _JSON_STRING_MEMBER.sub(repl, body)


def redact_body(body: bytes, content_type: str | None = None, truncated: bool = False) -> bytes:
    """``body`` with card numbers masked, and for form-encoded / JSON bodies (by
    ``content_type``) the values of token-like parameters. ``truncated``: the body was
    cut (body cap), so a digit run at its very end is masked without the Luhn check."""
    if not body:
        return body
    if content_type:
        ct = content_type.lower()
        if _FORM_TYPE in ct and b"=" in body:
            text = body.decode("latin-1")  # round-trips any byte
            masked = _mask_params(text, "&")
            if masked is not text:
                body = masked.encode("latin-1")
        elif "json" in ct and len(body) <= _JSON_MAX:
            low = body.lower()
            for hint in _JSON_HINTS:
                if low.find(hint) >= 0:
                    body = _mask_json(body)
                    break
    if content_type and content_type.lower().startswith(_BINARY_TYPES):
        # Images, audio, archives, octet streams: a card number there is neither likely
        # nor readable, and scanning megabytes of them costs more than all the parsing.
        return body
    return _mask_cards(body, truncated)


# ----------------------------------------------------------------------- findings
# What redaction would hide is also what a security team wants to hear about when it
# crosses the network in clear: detections (processors.detections) count it per client.

_PASSWORD_NAMES = (b"password", b"passwd", b"pwd", b"pass")
_FORM_PASSWORD = re.compile(rb"(?:^|&)[^=&]*(?:password|passwd|pwd|pass)[^=&]*=[^&]", re.I)
_JSON_PASSWORD = re.compile(rb'"[^"]{0,64}(?:password|passwd|pwd|pass)[^"]{0,64}"\s*:\s*"[^"]', re.I)
#: US social security number, formatted (area 001-899 except 666, group and serial not 0)
_SSN = re.compile(rb"(?<![0-9-])(?!000|666|9)[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}(?![0-9-])")


def body_findings(body: bytes, content_type: str | None = None) -> int:
    """``processors.findings.Finding`` bits of what ``body`` carries in clear (as an int:
    this runs per body): PASSWORD_IN_FORM (a non-empty password-like field of a form or
    JSON body; the caller decides whether the body was a request's), OTHER_PII (a
    formatted US social security number in a form or JSON body), CARD_NUMBER (a
    Luhn-valid card number, in any body that is not binary).

    It runs on every body, so the costly looks are kept to where they pay: field names
    and SSNs only in form and JSON bodies (what users type in), cards behind the same
    C-speed digit-run scan the redaction uses."""
    if not body:
        return 0
    ct = content_type.lower() if content_type else ""
    if ct.startswith(_BINARY_TYPES):
        return 0
    found = 0
    if _FORM_TYPE in ct or "json" in ct:
        low = body.lower()
        if any(name in low for name in _PASSWORD_NAMES):
            pattern = _FORM_PASSWORD if _FORM_TYPE in ct else _JSON_PASSWORD
            if pattern.search(body):
                found |= PASSWORD_IN_FORM_BIT
        if b"-" in body and _SSN.search(body):
            found |= OTHER_PII_BIT
    if _candidate_runs(body, False) and _mask_cards(body, False) is not body:
        found |= CARD_NUMBER_BIT
    return found
