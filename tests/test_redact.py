"""Redaction of HTTP records: headers and request targets (the compiled core,
rust/src/l7/http/redact.rs), bodies (processors/l7/redact.py)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wirestream._core import HttpConnection
from wirestream.processors.l7.redact import (
    REDACTED,
    header_kind,
    luhn_valid,
    redact_body,
    redact_target,
)

# Test card numbers published by the card networks (Luhn-valid, never issued).
VISA = "4111111111111111"
MASTERCARD = "5555555555554444"
AMEX = "378282246310005"
DISCOVER = "6011111111111117"
VISA13 = "4222222222222"

# ---------------------------------------------------------------------------- headers


def recorded_header(name: str, value: str) -> str:
    """One header's value as the HTTP analyser records it, with redaction on: the
    core's header map itself, so a change to its per-header rule shows here."""
    (recorded,) = HttpConnection.header_map([(name.encode(), value.encode())], True).values()
    return recorded


@pytest.mark.parametrize(("value", "expected"), [
    ("Basic dXNlcjpwYXNzd29yZA==", "Basic [REDACTED]"),
    ("Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "Bearer [REDACTED]"),
    ("Digest username=\"u\", realm=\"r\", response=\"abc\"", "Digest [REDACTED]"),
    ("NTLM TlRMTVNTUAABAAAAB4IIog==", "NTLM [REDACTED]"),
    ("AWS4-HMAC-SHA256 Credential=AKIA/20240101/us-east-1/s3/aws4_request, Signature=ff",
     "AWS4-HMAC-SHA256 [REDACTED]"),
    ("  Basic   x  ", "Basic [REDACTED]"),
    ("rawtokenwithoutscheme", REDACTED),  # no scheme: nothing to keep
    ("eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJlLXRoYXQtaXMtbG9uZw== x", REDACTED),  # not a token
    ("", REDACTED),
])
def test_authorization_keeps_the_scheme(value: str, expected: str) -> None:
    assert recorded_header("Authorization", value) == expected
    assert recorded_header("proxy-authorization", value) == expected


def test_cookie_values_masked_names_kept() -> None:
    assert recorded_header("Cookie", "sid=abc123; theme=dark;lang=en") == (
        "sid=[REDACTED]; theme=[REDACTED];lang=[REDACTED]")
    assert recorded_header("cookie", "flag") == "flag"  # no value to mask


def test_set_cookie_attributes_kept() -> None:
    v = "session=s3cr3t; Path=/; Expires=Wed, 21 Oct 2015 07:28:00 GMT; Secure; HttpOnly"
    assert recorded_header("Set-Cookie", v) == (
        "session=[REDACTED]; Path=/; Expires=Wed, 21 Oct 2015 07:28:00 GMT; Secure; HttpOnly")
    # several Set-Cookie values joined with ", " (as in a header map)
    joined = "a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT, b=2; SameSite=Lax, c=3"
    assert recorded_header("set-cookie", joined) == (
        "a=[REDACTED]; Expires=Wed, 21 Oct 2015 07:28:00 GMT, b=[REDACTED]; SameSite=Lax, "
        "c=[REDACTED]")


@pytest.mark.parametrize("name", [
    "X-Api-Key", "api-key", "apikey", "X-Auth-Token", "x-access-token", "X-Amz-Security-Token",
    "X-CSRF-Token", "X-Goog-Api-Key", "X-Vault-Token", "x-my-secret-thing", "X-Custom-Token",
    "X-Client-Password", "X-Service-Credentials", "Private-Token", "x-session-id",
])
def test_secret_headers_masked_whole(name: str) -> None:
    assert recorded_header(name, "Bearer abc") == REDACTED


@pytest.mark.parametrize("name", [
    "Host", "User-Agent", "Accept", "Content-Type", "WWW-Authenticate", "Proxy-Authenticate",
    "X-Request-Id", "Keyboard", "X-Authenticated-User",
])
def test_other_headers_untouched(name: str) -> None:
    assert header_kind(name.lower()) == 0
    assert recorded_header(name, "Basic x") == "Basic x"


def test_redact_headers_map() -> None:
    # raw names as on the wire: the map's keys are lower-cased
    pairs = [(b"Host", b"h"), (b"Authorization", b"Basic x"), (b"Cookie", b"a=1"),
             (b"X-Api-Key", b"k")]
    assert HttpConnection.header_map(pairs, True) == {
        "host": "h", "authorization": "Basic [REDACTED]", "cookie": "a=[REDACTED]",
        "x-api-key": REDACTED}


# ---------------------------------------------------------------------------- targets


@pytest.mark.parametrize(("target", "expected"), [
    ("/", "/"),
    ("/search?q=shoes&page=2", "/search?q=shoes&page=2"),
    ("/cb?code=abc&state=xyz", "/cb?code=[REDACTED]&state=xyz"),
    ("/api?access_token=t&x=1&api_key=k&apikey=k2&key=k3",
     "/api?access_token=[REDACTED]&x=1&api_key=[REDACTED]&apikey=[REDACTED]&key=[REDACTED]"),
    ("/login?user=bob&password=hunter2&pwd=x&passwd=y",
     "/login?user=bob&password=[REDACTED]&pwd=[REDACTED]&passwd=[REDACTED]"),
    ("/s3/obj?X-Amz-Credential=AK&X-Amz-Signature=ff&X-Amz-Expires=60",
     "/s3/obj?X-Amz-Credential=[REDACTED]&X-Amz-Signature=[REDACTED]&X-Amz-Expires=60"),
    ("/x?Session=1&SessionId=2&sig=3&signature=4&auth=5&client_secret=6&TOKEN=7",
     "/x?Session=[REDACTED]&SessionId=[REDACTED]&sig=[REDACTED]&signature=[REDACTED]"
     "&auth=[REDACTED]&client_secret=[REDACTED]&TOKEN=[REDACTED]"),
    ("/x?my_refresh_token=1&pa%73sword=2&monkey=3&keyword=4",
     "/x?my_refresh_token=[REDACTED]&pa%73sword=[REDACTED]&monkey=3&keyword=4"),
    ("/x?token=&token", "/x?token=&token"),  # no value: nothing to hide
    ("/app;jsessionid=ABC123?x=1", "/app;jsessionid=[REDACTED]?x=1"),
    ("http://user:pass@proxy.example/x?a=1", "http://user:[REDACTED]@proxy.example/x?a=1"),
    ("http://user@host/", "http://user@host/"),
    ("/email/bob@example.com", "/email/bob@example.com"),
    ("example.com:443", "example.com:443"),
])
def test_redact_target(target: str, expected: str) -> None:
    assert redact_target(target) == expected


def test_unchanged_target_is_the_same_object() -> None:
    t = "/search?q=shoes&page=2"
    assert redact_target(t) is t


# ------------------------------------------------------------------------------ cards


@pytest.mark.parametrize("number", [VISA, MASTERCARD, AMEX, DISCOVER, VISA13, "79927398713"])
def test_luhn_valid(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize("number", ["4111111111111112", "1234567812345678", "", "41x1", "٤١"])
def test_luhn_invalid(number: str) -> None:
    assert not luhn_valid(number)


@pytest.mark.parametrize(("body", "expected"), [
    (f"card={VISA}".encode(), b"card=************1111"),
    (b"4111 1111 1111 1111", b"**** **** **** 1111"),
    (b"5555-5555-5555-4444.", b"****-****-****-4444."),
    (f"{AMEX} and {DISCOVER}".encode(), b"***********0005 and ************1117"),
    (f"[{VISA13}]".encode(), b"[*********2222]"),
    # a valid number followed by another digit group
    (b"4111 1111 1111 1111 2024", b"**** **** **** 1111 2024"),
])
def test_card_numbers_keep_last_four(body: bytes, expected: bytes) -> None:
    assert redact_body(body) == expected


@pytest.mark.parametrize("body", [
    b"4111111111111112",  # Luhn-invalid
    b"ts=1700000000123 id=1234567812345670",  # epoch ms; a Luhn-valid id starting with 1
    b"41111111111111111111111",  # 23 digits: no card
    b"4111  1111 1111 1111",  # two spaces: not one number
    b"phone 555-123-4567, zip 90210, year 2024",
    b"no digits at all",
    b"",
])
def test_not_card_numbers(body: bytes) -> None:
    assert redact_body(body) is body


def test_card_cut_by_the_body_cap() -> None:
    # the last digits are beyond the cap: Luhn cannot tell, mask what is there
    assert redact_body(b"pay 411111111111", truncated=True) == b"pay ********1111"
    assert redact_body(b"pay 411111111111") == b"pay 411111111111"
    assert redact_body(b"n=4111111", truncated=True) == b"n=4111111"  # too short to tell


def test_form_body_passwords() -> None:
    body = b"user=bob&password=hunter2&remember=1&client_secret=s&card=4111111111111111"
    assert redact_body(body, "application/x-www-form-urlencoded; charset=UTF-8") == (
        b"user=bob&password=[REDACTED]&remember=1&client_secret=[REDACTED]"
        b"&card=************1111")
    # the same bytes as text/plain: only the card
    assert redact_body(body, "text/plain").endswith(b"card=************1111")
    assert b"hunter2" in redact_body(body, "text/plain")


def test_json_body_secrets() -> None:
    body = (b'{"username": "bob", "password": "hun\\"ter2", "access_token":"t",'
            b' "keyword": "shoes", "n": 1}')
    assert redact_body(body, "application/json") == (
        b'{"username": "bob", "password": "[REDACTED]", "access_token":"[REDACTED]",'
        b' "keyword": "shoes", "n": 1}')
    plain = b'{"name": "widget", "price": 12}'
    assert redact_body(plain, "application/json") is plain


def test_body_fast_path_costs_little() -> None:
    # A body with no run of 4 digits is returned without any regex: same object.
    body = b"<p>" + b"lorem ipsum dolor sit amet 12 34 " * 2000 + b"</p>"
    assert redact_body(body, "text/html") is body


# ----------------------------------------------------------------------- properties

_card_text = st.lists(st.one_of(
    st.sampled_from([VISA, MASTERCARD, AMEX, DISCOVER, "4111 1111 1111 1111", "1700000000123"]),
    st.text(alphabet="0123456789 -abc=&,\n", max_size=30)), max_size=8).map("".join)


@settings(max_examples=300, deadline=None, database=None)
@given(text=_card_text)
def test_cards_never_survive(text: str) -> None:
    """No Luhn-valid 13-19 digit run starting 2-6 is left; lengths never change."""
    out = redact_body(text.encode())
    assert len(out) == len(text.encode())
    assert redact_body(out) == out  # idempotent
    for m in re.finditer(rb"(?<![0-9])[2-6][0-9]{12,18}(?![0-9])", out):
        assert not luhn_valid(m.group().decode())


@settings(max_examples=300, deadline=None, database=None)
@given(body=st.binary(max_size=300), ct=st.sampled_from(
    [None, "application/json", "application/x-www-form-urlencoded", "text/html"]),
    truncated=st.booleans())
def test_body_never_raises(body: bytes, ct: str | None, truncated: bool) -> None:
    redact_body(body, ct, truncated)


@settings(max_examples=300, deadline=None, database=None)
@given(target=st.text(max_size=80), name=st.text(max_size=20), value=st.text(max_size=40))
def test_target_and_headers_never_raise(target: str, name: str, value: str) -> None:
    redact_target(target)
    recorded_header(name, value)


def test_kept_last_digits_do_not_begin_a_card_left_for_a_second_pass() -> None:
    """Found by test_cards_never_survive in CI: the 4 digits a masked number keeps, with
    the digits after them, made another Luhn-valid number."""
    out = redact_body(b"2901428292418 290142829")
    assert redact_body(out) == out
    assert not luhn_valid("2418290142829") or b"2418 29014" not in out
