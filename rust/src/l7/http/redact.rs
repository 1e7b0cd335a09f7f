//! Redaction and findings of an HTTP transaction: header maps, request targets, bodies.
//!
//! Takes the header pairs as sent (bytes), the request target (text) and the kept
//! bodies; gives the `wire.transactions` header maps (lower-case names, repeated names
//! joined with ", ", RFC 9110 section 5.3, values masked by the kind of header when
//! redaction is on), the target with token-like parameters and URL passwords masked, the
//! bodies with card numbers and token-like form/JSON values masked, and the `Finding`
//! bits of the credentials and PII they carried. It runs once per transaction on every
//! header and body, so it is compiled (it was ~3 s of a 10 s engine profile in Python).
//! The rules (what is masked, what is deliberately kept) are stated in
//! `processors/l7/redact.py`, its Python face.
//!
//! Text is handled as Python's `str` methods did before (the records must not change):
//! values are UTF-8 with invalid sequences replaced (U+FFFD per maximal subpart, as
//! CPython's "replace" handler), names Latin-1, "whitespace" is `str.isspace`'s.

use std::borrow::Cow;
use std::collections::HashMap;

use super::parser::Fields;
use super::session::Txn;

pub const REDACTED: &str = "[REDACTED]";

/// Kinds of sensitive header (0: not sensitive).
pub const KEEP: u8 = 0;
pub const AUTH: u8 = 1;
pub const COOKIE: u8 = 2;
pub const SET_COOKIE: u8 = 3;
pub const SECRET: u8 = 4;

/// `processors.findings.Finding` bits (their values are part of the observation rows).
pub const BASIC_CREDENTIALS_BIT: u8 = 1;
pub const BEARER_TOKEN_BIT: u8 = 2;

const SECRET_HEADERS: &[&str] = & [
    "x-api-key", "api-key", "apikey", "x-apikey", "x-auth-token", "x-access-token",
    "x-amz-security-token", "x-goog-api-key", "x-vault-token", "x-auth", "x-auth-key",
    "x-csrf-token", "x-xsrf-token", "x-session-id", "x-amz-credential", "x-client-secret",
    "x-hub-signature", "x-hub-signature-256", "x-signature", "x-consumer-key", "private-token",
];
// Substrings of header names that mark the value as a secret. Not "auth": that would
// mask WWW-Authenticate / Proxy-Authenticate, which are challenges, not credentials.
const SECRET_NAME_PARTS: &[&str] = & ["token", "secret", "password", "passwd", "api-key", "api_key",
    "apikey", "credential", "private-key", "session-id", "sessionid"];

const SECRET_PARAMS: &[&str] = & [
    "token", "access_token", "refresh_token", "id_token", "auth_token", "api_key", "apikey",
    "api-key", "key", "password", "passwd", "pwd", "pass", "secret", "client_secret",
    "session", "sessionid", "session_id", "auth", "signature", "sig", "code", "jwt", "otp",
    "x-amz-signature", "x-amz-security-token", "x-amz-credential", "x-goog-signature",
    "x-goog-credential", "jsessionid", "phpsessid", "aspsessionid", "sid",
];
const SECRET_PARAM_PARTS: &[&str] = & ["token", "secret", "password", "passwd", "apikey", "api_key",
    "api-key", "signature", "sessid", "credential"];

/// Python's `str.isspace` (and `\s` of a `str` regex): Unicode White_Space plus the
/// information separators U+001C..U+001F, which Rust's `char::is_whitespace` leaves out.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Header names seen on nearly every message, none of them sensitive: [`header_kind`]
/// answers them without its substring searches (a dozen per name, most of the cost of a
/// header block's redaction). A test checks that the searches would say KEEP for each.
pub const COMMON_NAMES: &[&str] = &[
    "host", "user-agent", "accept", "accept-encoding", "accept-language", "accept-ranges",
    "connection", "keep-alive", "content-type", "content-length", "content-encoding",
    "transfer-encoding", "date", "server", "cache-control", "pragma", "expires", "etag",
    "last-modified", "if-modified-since", "if-none-match", "vary", "location", "referer",
    "origin", "age", "via", "range", "content-range", "upgrade", "x-forwarded-for",
    "x-forwarded-proto", "x-request-id", "x-real-ip", "access-control-allow-origin",
    "strict-transport-security", "x-content-type-options", "x-frame-options",
];

/// The position of `name` (lower-case) in [`COMMON_NAMES`].
pub fn common_name(name: &str) -> Option<usize> {
    COMMON_NAMES.iter().position(|n| *n == name)
}

/// Which kind of redaction the header `name` (lower-case) needs; 0 = none.
pub fn header_kind(name: &str) -> u8 {
    if common_name(name).is_some() {
        return KEEP;
    }
    kind_by_rules(name)
}

/// [`header_kind`] by its rules alone.
fn kind_by_rules(name: &str) -> u8 {
    match name {
        "authorization" | "proxy-authorization" => AUTH,
        "cookie" => COOKIE,
        "set-cookie" => SET_COOKIE,
        _ if SECRET_HEADERS.contains(&name) => SECRET,
        _ if SECRET_NAME_PARTS.iter().any(|p| name.contains(p)) => SECRET,
        _ => KEEP,
    }
}

/// An auth scheme is a short HTTP token (RFC 9110 section 11.1). A longer first word is
/// more likely a raw credential without a scheme, so it is masked as a whole.
fn is_scheme(s: &str) -> bool {
    let b = s.as_bytes();
    let first_ok = b.first().is_some_and(u8::is_ascii_alphabetic);
    first_ok
        && b.len() <= 24
        && b.iter().skip(1).all(|&c| c.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&c))
}

fn mask_auth(value: &str) -> String {
    let v = value.trim_matches(py_space);
    if let Some(sp) = v.find(' ') {
        if let Some(scheme) = v.get(..sp).filter(|s| !s.is_empty() && is_scheme(s)) {
            return format!("{scheme} {REDACTED}");
        }
    }
    REDACTED.to_string()
}

fn mask_cookie(value: &str) -> String {
    let parts: Vec<Cow<str>> = value
        .split(';')
        .map(|part| match part.split_once('=') {
            Some((name, _)) => Cow::Owned(format!("{name}={REDACTED}")),
            None => Cow::Borrowed(part),
        })
        .collect();
    parts.join(";")
}

fn mask_one_set_cookie(value: &str) -> String {
    // The first name=value pair is the cookie; what follows ';' are its attributes.
    match value.split_once('=') {
        None => REDACTED.to_string(),
        Some((name, rest)) => {
            let attrs = rest.find(';').and_then(|s| rest.get(s..)).unwrap_or("");
            format!("{name}={REDACTED}{attrs}")
        }
    }
}

/// Several Set-Cookie values joined with ", " (a header map) are split at ", name=" only
/// (the regex `,\s*(?=[^=;,\s]+=)` the Python code used), so that the comma inside
/// "Expires=Wed, 21 Oct 2015 07:28:00 GMT" is not a split point.
fn split_set_cookies(value: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut last = 0;
    let mut chars = value.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != ',' {
            continue;
        }
        let rest = value.get(i + 1..).unwrap_or("");
        let ws: usize = rest.chars().take_while(|&c| py_space(c)).map(char::len_utf8).sum();
        let after = rest.get(ws..).unwrap_or("");
        let name: usize = after
            .chars()
            .take_while(|&c| !matches!(c, '=' | ';' | ',') && !py_space(c))
            .map(char::len_utf8)
            .sum();
        if name > 0 && after.get(name..).is_some_and(|s| s.starts_with('=')) {
            pieces.push(value.get(last..i).unwrap_or(""));
            last = i + 1 + ws;
            // the scan goes on after the match (the whitespace), as re.split's does
            while chars.peek().is_some_and(|&(j, _)| j < last) {
                chars.next();
            }
        }
    }
    pieces.push(value.get(last..).unwrap_or(""));
    pieces
}

fn mask_set_cookie(value: &str) -> String {
    if !value.contains(',') {
        return mask_one_set_cookie(value);
    }
    split_set_cookies(value).into_iter().map(mask_one_set_cookie).collect::<Vec<_>>().join(", ")
}

/// Mask `value` of a header of the given [`header_kind`] (non-zero).
pub fn redact_value(kind: u8, value: &str) -> String {
    match kind {
        AUTH => mask_auth(value),
        COOKIE => mask_cookie(value),
        SET_COOKIE => mask_set_cookie(value),
        _ => REDACTED.to_string(),
    }
}

/// A header name as the map's key: Latin-1 text, lower-cased (as `bytes.decode("latin-1")
/// .lower()`; within Latin-1 every letter has a one-letter lower case).
fn lower_name(name: &[u8]) -> String {
    if name.is_ascii() {
        // (one allocation: the lower-cased bytes become the string, ASCII so UTF-8)
        return String::from_utf8(name.to_ascii_lowercase()).unwrap_or_default();
    }
    name.iter().flat_map(|&b| char::from(b).to_lowercase()).collect()
}

/// A header map as the record shows it: `(lower-case name, value)` pairs. Both borrow
/// from the message's fields when they can (a common name is one of [`COMMON_NAMES`], a
/// value valid UTF-8 and neither redacted nor joined): no allocation per header then.
pub type HeaderMap<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// `name` in lower case: the [`COMMON_NAMES`] entry it spells in any case, else as sent
/// when already lower-case ASCII, else lower-cased.
fn lower_name_cow(name: &[u8]) -> (Cow<'_, str>, bool) {
    if let Some(common) = COMMON_NAMES.iter().find(|c| c.as_bytes().eq_ignore_ascii_case(name)) {
        return (Cow::Borrowed(common), true);
    }
    if !name.iter().any(|b| b.is_ascii_uppercase() || !b.is_ascii()) {
        if let Ok(text) = std::str::from_utf8(name) {
            return (Cow::Borrowed(text), false);
        }
    }
    (Cow::Owned(lower_name(name)), false)
}

/// Header pairs -> [(lower-case name, value)] in first-seen order (a Python dict's),
/// repeated names joined with ", " (RFC 9110 section 5.3). Redaction is per value, before
/// joining: joined Set-Cookie values cannot be split reliably again.
pub fn header_map(pairs: &[(Vec<u8>, Vec<u8>)], redact: bool) -> HeaderMap<'_> {
    let mut out: HeaderMap<'_> = Vec::with_capacity(pairs.len());
    // Header blocks are small: a linear search for a repeated name is the cheapest; the
    // index only bounds the cost of a hostile block of thousands of headers.
    let mut index: Option<HashMap<String, usize>> = None;
    for (name, raw) in pairs {
        let (lname, common) = lower_name_cow(name);
        let mut value = String::from_utf8_lossy(raw);
        if redact && !common {
            // (the common names are all KEEP: header_kind)
            let kind = kind_by_rules(&lname);
            if kind != KEEP {
                value = Cow::Owned(redact_value(kind, &value));
            }
        }
        if out.len() == 32 && index.is_none() {
            index = Some(out.iter().enumerate().map(|(i, (n, _))| (n.to_string(), i)).collect());
        }
        let found = match &index {
            Some(ix) => ix.get(lname.as_ref()).copied(),
            None => out.iter().position(|(n, _)| *n == lname),
        };
        match found.and_then(|i| out.get_mut(i)) {
            Some((_, v)) => {
                let v = v.to_mut();
                v.push_str(", ");
                v.push_str(&value);
            }
            None => {
                if let Some(ix) = index.as_mut() {
                    ix.insert(lname.to_string(), out.len());
                }
                out.push((lname, value));
            }
        }
    }
    out
}

/// The value of `name` in a header map.
pub fn get<'a>(map: &'a [(Cow<'_, str>, Cow<'_, str>)], name: &str) -> Option<&'a str> {
    map.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_ref())
}

/// Credentials the request headers (the map as recorded) carried: `Finding` bits.
pub fn header_findings(req: &[(Cow<'_, str>, Cow<'_, str>)]) -> u8 {
    let auth = get(req, "authorization")
        .filter(|a| !a.is_empty())
        .or_else(|| get(req, "proxy-authorization"))
        .filter(|a| !a.is_empty());
    let Some(auth) = auth else { return 0 };
    let scheme = auth.split(' ').next().unwrap_or("").to_lowercase();
    match scheme.as_str() {
        "basic" => BASIC_CREDENTIALS_BIT,
        "bearer" => BEARER_TOKEN_BIT,
        _ => 0,
    }
}

// ------------------------------------------------------------ query / form parameters

/// `urllib.parse.unquote_to_bytes`: "%XX" (two hex digits) is a byte, any other '%' itself.
fn percent_decode(s: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if b == b'%' {
            if let Some(h) = s.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(h);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
}

/// `urllib.parse.unquote_plus` (UTF-8, errors replaced): '+' is a space; each run of
/// ASCII is percent-decoded and decoded as UTF-8 on its own, other characters stay.
fn unquote_plus(name: &str) -> String {
    let s = name.replace('+', " ");
    if !s.contains('%') {
        return s;
    }
    let mut out = String::with_capacity(s.len());
    let mut run: Vec<u8> = Vec::new();
    let mut bytes = Vec::new();
    for c in s.chars() {
        if c.is_ascii() {
            run.push(c as u8);
        } else {
            if !run.is_empty() {
                bytes.clear();
                percent_decode(&run, &mut bytes);
                out.push_str(&String::from_utf8_lossy(&bytes));
                run.clear();
            }
            out.push(c);
        }
    }
    if !run.is_empty() {
        bytes.clear();
        percent_decode(&run, &mut bytes);
        out.push_str(&String::from_utf8_lossy(&bytes));
    }
    out
}

/// A token-like parameter name (`access_token`, `api_key`, `password`, `sig`, ...).
pub fn secret_param(name: &str) -> bool {
    let decoded;
    let name = if name.contains(['%', '+']) {
        decoded = unquote_plus(name);
        decoded.as_str()
    } else {
        name
    };
    let low = name.to_lowercase();
    SECRET_PARAMS.contains(&low.as_str()) || SECRET_PARAM_PARTS.iter().any(|p| low.contains(p))
}

/// `a=1&token=x` -> `a=1&token=[REDACTED]`; None when nothing is masked.
pub fn mask_params(text: &str, sep: char) -> Option<String> {
    let mut changed = false;
    let parts: Vec<Cow<str>> = text
        .split(sep)
        .map(|param| match param.split_once('=') {
            Some((name, value)) if !value.is_empty() && secret_param(name) => {
                changed = true;
                Cow::Owned(format!("{name}={REDACTED}"))
            }
            _ => Cow::Borrowed(param),
        })
        .collect();
    changed.then(|| parts.join(&sep.to_string()))
}

/// The request target with token-like query (and `;name=`) parameters and URL passwords
/// masked; None when nothing is.
pub fn redact_target(target: &str) -> Option<String> {
    let q = target.find('?');
    let path = q.and_then(|q| target.get(..q)).unwrap_or(target);
    let mut new_path = Cow::Borrowed(path);
    // absolute-form (proxy requests): scheme://user:password@host/...
    if path.contains('@') {
        if let Some(s) = path.find("://") {
            let a0 = s + 3;
            let rest = path.get(a0..).unwrap_or("");
            let authority = rest.find('/').and_then(|e| rest.get(..e)).unwrap_or(rest);
            if let Some(at) = authority.rfind('@') {
                if let Some(colon) = authority.get(..at).and_then(|a| a.find(':')) {
                    new_path = Cow::Owned(format!("{}{}{REDACTED}{}", path.get(..a0).unwrap_or(""),
                        authority.get(..=colon).unwrap_or(""), rest.get(at..).unwrap_or("")));
                }
            }
        }
    }
    if new_path.contains(';') {
        // /app;jsessionid=...
        if let Some(p) = mask_params(&new_path, ';') {
            new_path = Cow::Owned(p);
        }
    }
    let Some(q) = q else {
        return match new_path {
            Cow::Owned(p) => Some(p),
            Cow::Borrowed(_) => None,
        };
    };
    let query = target.get(q + 1..).unwrap_or("");
    let new_query = mask_params(query, '&');
    if matches!(new_path, Cow::Borrowed(_)) && new_query.is_none() {
        return None;
    }
    Some(format!("{new_path}?{}", new_query.as_deref().unwrap_or(query)))
}

// ------------------------------------------------------------------------------ bodies
//
// Bodies are bytes, searched as Python's bytes regexes did (ASCII classes, ASCII case
// folding); each regex of processors/l7/redact.py is a hand-written scan here, with the
// regex it replaces in its comment.

pub const PASSWORD_IN_FORM_BIT: u8 = 4;
pub const CARD_NUMBER_BIT: u8 = 8;
pub const OTHER_PII_BIT: u8 = 16;
/// A start line tolerated as Wireshark does, not HTTP/1.x grammar (`Txn::malformed`).
pub const HTTP_MALFORMED_BIT: u8 = 32;
/// Every `Finding` bit.
pub const ALL_FINDINGS: u8 =
    BASIC_CREDENTIALS_BIT | BEARER_TOKEN_BIT | PASSWORD_IN_FORM_BIT | CARD_NUMBER_BIT | OTHER_PII_BIT | HTTP_MALFORMED_BIT;

const FORM_TYPE: &str = "x-www-form-urlencoded";
const BINARY_TYPES: &[&str] = &["image/", "audio/", "video/", "font/", "application/octet-stream",
    "application/zip", "application/gzip", "application/x-gzip", "application/pdf", "application/wasm",
    "application/x-protobuf", "application/grpc"];
// A JSON body is searched for token-like keys only if it contains one of these, and only
// if it is small: credentials and tokens travel in small JSON documents (logins, token
// responses), and a scan of every large API response would cost more than it finds.
const JSON_HINTS: &[&[u8]] = &[b"pass", b"pwd", b"secret", b"token", b"key", b"sess", b"auth", b"sig", b"cred"];
const JSON_MAX: usize = 4096;
const PASSWORD_NAMES: &[&[u8]] = &[b"password", b"passwd", b"pwd", b"pass"];

fn is_digit(b: Option<&u8>) -> bool {
    b.is_some_and(u8::is_ascii_digit)
}

/// `\s` of a bytes regex.
fn is_bspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// The first `needle` in `hay` at or after `from` (memchr's `memmem`: a vectorised
/// search). A byte loop looking for the needle's first byte was most of a JSON body's
/// findings: 66 us for the four password words over a 16 KiB body whose text holds a
/// `p` twice a line, ~4 us with `memmem` (`body_findings_timing` below).
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return Some(from);
    }
    memchr::memmem::find(hay.get(from..)?, needle).map(|i| from + i)
}

/// True if `digits` (only 0-9) passes the Luhn check used by card numbers.
pub fn luhn_valid(digits: &[u8]) -> bool {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    const DOUBLE: [u32; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];
    let mut total = 0u32;
    for (i, &c) in digits.iter().rev().enumerate() {
        let d = u32::from(c - b'0');
        total += if i % 2 == 1 { DOUBLE.get(d as usize).copied().unwrap_or(0) } else { d };
    }
    total.is_multiple_of(10)
}

/// Replace all but the last 4 digits of `run` with '*', separators kept.
fn mask_digits(run: &mut [u8]) {
    let mut keep = 4;
    for b in run.iter_mut().rev() {
        if b.is_ascii_digit() {
            if keep > 0 {
                keep -= 1;
            } else {
                *b = b'*';
            }
        }
    }
}

/// `(?<![0-9])[2-6](?:[ -]?[0-9]){min,18}` at `s` of `run`, then (`to_end`) `$`: the end
/// of the match. The repetition is greedy and nothing after it can fail but `$`, so the
/// match is the longest run of groups (a separator only counts followed by a digit).
fn card_at(run: &[u8], s: usize, min: usize, to_end: bool) -> Option<usize> {
    if !matches!(run.get(s), Some(b'2'..=b'6')) || (s > 0 && is_digit(run.get(s - 1))) {
        return None;
    }
    let mut e = s + 1;
    let mut groups = 0;
    while groups < 18 {
        let step = match run.get(e) {
            Some(b' ' | b'-') if is_digit(run.get(e + 1)) => 2,
            Some(c) if c.is_ascii_digit() => 1,
            _ => break,
        };
        e += step;
        groups += 1;
    }
    (groups >= min && (!to_end || e == run.len())).then_some(e)
}

/// Length of the card number at the start of `card` (digits and single separators, as
/// matched by [`card_at`]), or 0. The match is greedy, so a valid number followed by
/// another digit group ("4111 1111 1111 1111 2024") is found by trying the prefixes that
/// end at a separator; `whole` is false when the match was cut inside a longer digit
/// sequence.
fn card_end(card: &[u8], whole: bool) -> usize {
    let digits: Vec<u8> = card.iter().copied().filter(u8::is_ascii_digit).collect();
    if whole && luhn_valid(&digits) {
        return card.len();
    }
    let mut n = 0;
    for (i, &b) in card.iter().enumerate() {
        if b == b' ' || b == b'-' {
            if (13..=19).contains(&n) && luhn_valid(digits.get(..n).unwrap_or_default()) {
                return i;
            }
        } else {
            n += 1;
        }
    }
    0
}

/// A byte of a card number as written: a digit or a separator.
fn card_byte(b: u8) -> bool {
    b.is_ascii_digit() || b == b' ' || b == b'-'
}

/// The shortest run that can hold a card number (13 digits).
const MIN_RUN: usize = 13;

/// (start, end) of every run of digits and separators long enough for a card number
/// (13+ bytes); plus, when the body was cut, the run at its very end, whatever its length.
///
/// Every run of 13+ bytes holds one of every 13 positions, so only those are looked at
/// (a run is then measured from there): ~1 byte in 13 of a page of text, where a card
/// number is rare (it was the cost of every text body's scan, twice per body: findings
/// and redaction).
fn candidate_runs(body: &[u8], truncated: bool) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let n = body.len();
    let mut probe = MIN_RUN - 1;
    while let Some(&b) = body.get(probe) {
        if !card_byte(b) {
            probe += MIN_RUN;
            continue;
        }
        // (the byte before the previous probe, or before a run found, is not a card byte)
        let start = body.get(..probe).unwrap_or_default().iter().rposition(|&c| !card_byte(c)).map_or(0, |i| i + 1);
        let end = body.get(probe..).unwrap_or_default().iter().position(|&c| !card_byte(c)).map_or(n, |i| probe + i);
        if end - start >= MIN_RUN {
            runs.push((start, end));
        }
        // the next run starts after `end` (a byte that is not a card byte): its probe
        probe = end + MIN_RUN;
    }
    if truncated {
        let start = body.iter().rposition(|&c| !card_byte(c)).map_or(0, |i| i + 1);
        if start < n && runs.last().is_none_or(|&(_, e)| e != n) {
            runs.push((start, n));
        }
    }
    runs
}

/// One pass of card masking; None when nothing was masked.
fn mask_cards_once(body: &[u8], truncated: bool) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let n = body.len();
    let mut done = 0; // body[..done] is settled (masked or kept) in `out`
    for (start, end) in candidate_runs(body, truncated) {
        let run = body.get(start..end).unwrap_or_default();
        let mut p = 0;
        while let Some((s, e)) = (p..run.len()).find_map(|s| card_at(run, s, 12, false).map(|e| (s, e))) {
            // directly followed by a digit: cut at 19 digits inside a longer number
            let whole = e == run.len() || !is_digit(run.get(e));
            let k = card_end(run.get(s..e).unwrap_or_default(), whole);
            if k > 0 {
                let o = out.get_or_insert_with(|| body.to_vec());
                if let Some(card) = o.get_mut(start + s..start + s + k) {
                    mask_digits(card);
                }
                done = start + s + k;
                p = s + k;
            } else {
                p = s + 1;
            }
        }
        if truncated && end == n {
            // The body cap cut the body inside this run: the last digits of a card number
            // may be missing, so Luhn cannot tell. Mask a card-like tail of 8+ digits.
            let from = p.max(done.saturating_sub(start));
            if let Some(s) = (from..run.len()).find(|&s| card_at(run, s, 7, true).is_some()) {
                let o = out.get_or_insert_with(|| body.to_vec());
                if let Some(tail) = o.get_mut(start + s..n) {
                    mask_digits(tail);
                }
                done = n;
            }
        }
    }
    out
}

/// `body` with its card numbers masked (None if there are none), to a fixed point: the 4
/// digits a masked number keeps can begin another number with the digits after them
/// ("2901428292418 290142829" -> "*********2418 290142829", and 2418 290142829 is
/// Luhn-valid too), which another pass would mask. Masking until a pass finds nothing
/// makes redaction idempotent; the extra pass only runs after a mask.
fn mask_cards(body: &[u8], truncated: bool) -> Option<Vec<u8>> {
    let mut current = mask_cards_once(body, truncated)?;
    while let Some(next) = mask_cards_once(&current, truncated) {
        current = next;
    }
    Some(current)
}

fn latin1(b: &[u8]) -> String {
    b.iter().map(|&c| char::from(c)).collect()
}

/// `"name"\s*:\s*"value"` members (`"([^"\\]{1,64})"(\s*:\s*)"((?:[^"\\]|\\.)*)"`,
/// searched left to right) whose name is token-like get the value `[REDACTED]`.
fn mask_json(body: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0; // body[..copied] is in `out`
    let mut i = 0;
    while i < body.len() {
        if body.get(i) != Some(&b'"') {
            i += 1;
            continue;
        }
        let Some(m) = json_member(body, i) else {
            i += 1;
            continue;
        };
        let name = body.get(i + 1..m.name_end).unwrap_or_default();
        if secret_param(&latin1(name)) {
            let o = out.get_or_insert_with(Vec::new);
            o.extend_from_slice(body.get(copied..m.value_start).unwrap_or_default());
            o.extend_from_slice(REDACTED.as_bytes());
            copied = m.end - 1; // the closing quote
        }
        i = m.end;
    }
    let mut o = out?;
    o.extend_from_slice(body.get(copied..).unwrap_or_default());
    Some(o)
}

struct Member {
    name_end: usize,
    value_start: usize,
    end: usize,
}

fn json_member(body: &[u8], i: usize) -> Option<Member> {
    let at = |k: usize| body.get(k).copied();
    let mut k = i + 1;
    while at(k).is_some_and(|c| c != b'"' && c != b'\\') && k - i <= 64 {
        k += 1;
    }
    if k == i + 1 || at(k) != Some(b'"') {
        return None;
    }
    let name_end = k;
    k += 1;
    while at(k).is_some_and(is_bspace) {
        k += 1;
    }
    if at(k) != Some(b':') {
        return None;
    }
    k += 1;
    while at(k).is_some_and(is_bspace) {
        k += 1;
    }
    if at(k) != Some(b'"') {
        return None;
    }
    k += 1;
    let value_start = k;
    loop {
        match at(k)? {
            b'"' => return Some(Member { name_end, value_start, end: k + 1 }),
            b'\\' => {
                // `\\.`: any byte but a newline
                if at(k + 1).is_none_or(|c| c == b'\n') {
                    return None;
                }
                k += 2;
            }
            _ => k += 1,
        }
    }
}

/// Form bodies: the values of token-like parameters, on the body as Latin-1 text.
fn mask_form(body: &[u8]) -> Option<Vec<u8>> {
    let masked = mask_params(&latin1(body), '&')?;
    // every char is Latin-1 (the body's bytes, or the ASCII mask)
    Some(masked.chars().map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?')).collect())
}

fn content_type(ct: Option<&str>) -> String {
    ct.map(str::to_lowercase).unwrap_or_default()
}

fn is_binary(ct: &str) -> bool {
    BINARY_TYPES.iter().any(|t| ct.starts_with(t))
}

/// `body` with card numbers masked, and for form-encoded / JSON bodies (by
/// `content_type`) the values of token-like parameters; None when nothing is masked.
/// `truncated`: the body was cut (body cap), so a digit run at its very end is masked
/// without the Luhn check.
pub fn redact_body(body: &[u8], content_type: Option<&str>, truncated: bool) -> Option<Vec<u8>> {
    if body.is_empty() {
        return None;
    }
    let ct = self::content_type(content_type.filter(|c| !c.is_empty()));
    let mut masked: Option<Vec<u8>> = None;
    if ct.contains(FORM_TYPE) && body.contains(&b'=') {
        masked = mask_form(body);
    } else if ct.contains("json") && body.len() <= JSON_MAX {
        let low = body.to_ascii_lowercase();
        if JSON_HINTS.iter().any(|h| find(&low, h, 0).is_some()) {
            masked = mask_json(body);
        }
    }
    if is_binary(&ct) {
        // Images, audio, archives, octet streams: a card number there is neither likely
        // nor readable, and scanning megabytes of them costs more than all the parsing.
        return masked;
    }
    match masked {
        Some(m) => Some(mask_cards(&m, truncated).unwrap_or(m)),
        None => mask_cards(body, truncated),
    }
}

/// `(?:^|&)[^=&]*(?:password|passwd|pwd|pass)[^=&]*=[^&]` (ASCII case-insensitive): a
/// parameter whose name holds a password word, with a non-empty value.
fn form_password(low: &[u8]) -> bool {
    low.split(|&b| b == b'&').any(|param| match param.iter().position(|&b| b == b'=') {
        Some(eq) => {
            let name = param.get(..eq).unwrap_or_default();
            eq + 1 < param.len() && PASSWORD_NAMES.iter().any(|w| find(name, w, 0).is_some())
        }
        None => false,
    })
}

/// `"[^"]{0,64}(?:password|passwd|pwd|pass)[^"]{0,64}"\s*:\s*"[^"]` (ASCII
/// case-insensitive), from any quote: a member whose name holds a password word (at most
/// 64 bytes either side of it) with a non-empty string value.
fn json_password(low: &[u8]) -> bool {
    let mut i = 0;
    while let Some(q) = find(low, b"\"", i) {
        i = q + 1;
        let Some(close) = find(low, b"\"", i) else { return false };
        let name = low.get(i..close).unwrap_or_default();
        let word_fits = PASSWORD_NAMES.iter().any(|w| {
            let mut from = 0;
            while let Some(o) = find(name, w, from) {
                if o <= 64 && name.len() - o - w.len() <= 64 {
                    return true;
                }
                from = o + 1;
            }
            false
        });
        if !word_fits {
            continue;
        }
        let mut k = close + 1;
        while low.get(k).copied().is_some_and(is_bspace) {
            k += 1;
        }
        if low.get(k) != Some(&b':') {
            continue;
        }
        k += 1;
        while low.get(k).copied().is_some_and(is_bspace) {
            k += 1;
        }
        if low.get(k) == Some(&b'"') && low.get(k + 1).is_some_and(|&c| c != b'"') {
            return true;
        }
    }
    false
}

/// `(?<![0-9-])(?!000|666|9)[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}(?![0-9-])`: a US
/// social security number, formatted (area 001-899 except 666, group and serial not 0).
fn has_ssn(body: &[u8]) -> bool {
    // A match's first dash is at its start + 3: only the dashes' positions are tried
    // (memchr finds them), not every position of the body (47 us for a 16 KiB body with
    // a dash, ~4 us this way).
    memchr::memchr_iter(b'-', body).any(|dash| dash.checked_sub(3).is_some_and(|s| ssn_at(body, s)))
}

/// A formatted US social security number (`ddd-dd-dddd`, not inside a longer run of
/// digits and dashes, none of the never-issued area/group/serial values) starts at `s`.
fn ssn_at(body: &[u8], s: usize) -> bool {
    let dig = |k: usize| is_digit(body.get(k));
    let digit_or_dash = |k: Option<usize>| k.and_then(|k| body.get(k)).is_some_and(|&c| c.is_ascii_digit() || c == b'-');
    let g = |a: usize, b: usize| body.get(s + a..s + b).unwrap_or_default();
    !digit_or_dash(s.checked_sub(1))
        && (0..3).all(|k| dig(s + k))
        && body.get(s + 3) == Some(&b'-')
        && dig(s + 4) && dig(s + 5)
        && body.get(s + 6) == Some(&b'-')
        && (7..11).all(|k| dig(s + k))
        && !digit_or_dash(Some(s + 11))
        && g(0, 3) != b"000" && g(0, 3) != b"666" && body.get(s) != Some(&b'9')
        && g(4, 6) != b"00" && g(7, 11) != b"0000"
}

/// `Finding` bits of what `body` carries in clear: PASSWORD_IN_FORM (a non-empty
/// password-like field of a form or JSON body; the caller decides whether the body was a
/// request's), OTHER_PII (a formatted US social security number in a form or JSON body),
/// CARD_NUMBER (a Luhn-valid card number, in any body that is not binary).
pub fn body_findings(body: &[u8], content_type: Option<&str>) -> u8 {
    if body.is_empty() {
        return 0;
    }
    let ct = self::content_type(content_type);
    if is_binary(&ct) {
        return 0;
    }
    let mut found = 0;
    let form = ct.contains(FORM_TYPE);
    if form || ct.contains("json") {
        let low = body.to_ascii_lowercase();
        if PASSWORD_NAMES.iter().any(|w| find(&low, w, 0).is_some())
            && (if form { form_password(&low) } else { json_password(&low) })
        {
            found |= PASSWORD_IN_FORM_BIT;
        }
        if body.contains(&b'-') && has_ssn(body) {
            found |= OTHER_PII_BIT;
        }
    }
    if mask_cards_once(body, false).is_some() {
        found |= CARD_NUMBER_BIT;
    }
    found
}

// ------------------------------------------------- a transaction's record, and at rest

/// What the record of a transaction shows of its payload (header maps, target, bodies)
/// and the `Finding` bits of what it carried in clear: the one place that decides both,
/// for the record (`python_http`) and for the redaction of a checkpoint ([`at_rest`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Shown<'a> {
    pub req_headers: HeaderMap<'a>,
    pub resp_headers: HeaderMap<'a>,
    pub path: Cow<'a, str>,
    pub req_body: Cow<'a, [u8]>,
    pub resp_body: Cow<'a, [u8]>,
    pub findings: u8,
}

/// The record's view of `t`, redacted when `redact`. Findings are of the values as sent
/// (the bodies before redaction; the header maps as recorded, which keep the scheme of
/// an Authorization value).
pub fn shown(t: &Txn, redact: bool) -> Shown<'_> {
    let req_headers = header_map(&t.req_headers, redact);
    // (the headers of an interim response alone are not the response's)
    let resp_headers = if t.status.is_some() && !t.resp_headers.is_empty() {
        header_map(&t.resp_headers, redact)
    } else {
        Vec::new()
    };
    let mut findings = header_findings(&req_headers);
    if t.malformed {
        findings |= HTTP_MALFORMED_BIT;
    }
    let cut = |size: u64, body: &[u8]| size > body.len() as u64;
    let req_ct = get(&req_headers, "content-type");
    let req_body = match t.req_body_redacted {
        // redacted when a checkpoint was written: already the record's, findings kept
        Some(bits) => {
            findings |= bits;
            Cow::Borrowed(t.req_body.as_slice())
        }
        None => {
            findings |= body_findings(&t.req_body, req_ct);
            match redact.then(|| redact_body(&t.req_body, req_ct, cut(t.req_size, &t.req_body))).flatten() {
                Some(b) => Cow::Owned(b),
                None => Cow::Borrowed(t.req_body.as_slice()),
            }
        }
    };
    let resp_ct = get(&resp_headers, "content-type");
    // A password field in a response is not one the client sent.
    findings |= body_findings(&t.resp_body, resp_ct) & !PASSWORD_IN_FORM_BIT;
    let resp_body = match redact.then(|| redact_body(&t.resp_body, resp_ct, cut(t.resp_size, &t.resp_body))).flatten() {
        Some(b) => Cow::Owned(b),
        None => Cow::Borrowed(t.resp_body.as_slice()),
    };
    let url = String::from_utf8_lossy(&t.url);
    let path = match redact.then(|| redact_target(&url)).flatten() {
        Some(p) => Cow::Owned(p),
        None => url,
    };
    Shown { req_headers, resp_headers, path, req_body, resp_body, findings }
}

/// Header pairs with the values of sensitive headers replaced by their redacted form,
/// where that form is a fixed point (redacting it again gives it back: so the record
/// built from it is the one built from the value as sent); None when nothing changes.
/// Values are final once in a transaction (a head in progress is in the parser's buffer),
/// and nothing but the record reads a sensitive value (framing and `Upgrade:` are not).
fn fields_at_rest(fields: &Fields) -> Option<Fields> {
    let mut out: Option<Fields> = None;
    for (i, (name, raw)) in fields.iter().enumerate() {
        let kind = header_kind(&lower_name(name));
        if kind == KEEP {
            continue;
        }
        let once = redact_value(kind, &String::from_utf8_lossy(raw));
        if once.as_bytes() == raw.as_slice() || redact_value(kind, &once) != once {
            continue; // already redacted, or a value whose mask is not a fixed point
        }
        if let Some(pair) = out.get_or_insert_with(|| fields.clone()).get_mut(i) {
            pair.1 = once.into_bytes();
        }
    }
    out
}

/// The request target in its redacted form, if that is a fixed point (see
/// [`fields_at_rest`]); None when nothing changes.
fn target_at_rest(url: &[u8]) -> Option<Vec<u8>> {
    let once = redact_target(&String::from_utf8_lossy(url))?;
    if once.as_bytes() == url {
        return None;
    }
    match redact_target(&once) {
        Some(twice) if twice != once => None,
        _ => Some(once.into_bytes()),
    }
}

/// `t` as a checkpoint holds it when the records are redacted: what is final of it in
/// the form its record will show, so that a restored worker emits the same record: the
/// values of sensitive headers and the target (once in a transaction they never change),
/// and the request body once the request has ended (complete, or cut by a gap, a parse
/// error or the end), with the findings of the body as sent. A body still arriving, and
/// every response body, stay as sent: their record's redaction depends on bytes not seen
/// yet (the cap, a card number across segments). None when nothing changes.
pub fn at_rest(t: &Txn) -> Option<Txn> {
    let req_headers = fields_at_rest(&t.req_headers);
    let resp_headers = fields_at_rest(&t.resp_headers);
    let url = target_at_rest(&t.url);
    let final_request = t.req_done && t.method.is_some() && !t.emitted && !t.orphan;
    let body = if final_request && t.req_body_redacted.is_none() && !t.req_body.is_empty() {
        // the content type as the record reads it (redaction never changes it)
        let map = header_map(req_headers.as_ref().unwrap_or(&t.req_headers), true);
        let ct = get(&map, "content-type");
        let cut = t.req_size > t.req_body.len() as u64;
        redact_body(&t.req_body, ct, cut).map(|b| (b, body_findings(&t.req_body, ct)))
    } else {
        None
    };
    if req_headers.is_none() && resp_headers.is_none() && url.is_none() && body.is_none() {
        return None;
    }
    let mut r = t.clone();
    if let Some(h) = req_headers {
        r.req_headers = h;
    }
    if let Some(h) = resp_headers {
        r.resp_headers = h;
    }
    if let Some(u) = url {
        r.url = u;
    }
    if let Some((b, bits)) = body {
        r.req_body = b;
        r.req_body_redacted = Some(bits);
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_common_names_are_kept_by_the_rules_too() {
        use super::{header_kind, kind_by_rules, lower_name, COMMON_NAMES, KEEP};
        for name in COMMON_NAMES {
            assert_eq!(*name, lower_name(name.as_bytes()), "{name} must be lower-case to match");
            assert_eq!(kind_by_rules(name), KEEP, "{name}");
        }
        for name in ["authorization", "cookie", "set-cookie", "x-api-key", "x-my-token", "session-id"] {
            assert_ne!(header_kind(name), KEEP, "{name}");
            assert_eq!(header_kind(name), kind_by_rules(name), "{name}");
        }
        assert_eq!(lower_name(b"Content-Type"), "content-type");
        assert_eq!(lower_name(b"X-\xc3\x89"), "x-\u{e3}\u{89}");
    }

    /// The byte-by-byte scan that `candidate_runs` replaced: the reference it must equal.
    fn candidate_runs_byte_by_byte(body: &[u8], truncated: bool) -> Vec<(usize, usize)> {
        let mut runs = Vec::new();
        let mut start = 0;
        for (i, &b) in body.iter().enumerate() {
            if !card_byte(b) {
                if i - start >= 13 {
                    runs.push((start, i));
                }
                start = i + 1;
            }
        }
        let n = body.len();
        if n >= start + 13 || (truncated && start < n) {
            runs.push((start, n));
        }
        runs
    }

    #[test]
    fn find_equals_a_window_by_window_search() {
        let reference = |hay: &[u8], needle: &[u8], from: usize| -> Option<usize> {
            if needle.is_empty() {
                return Some(from);
            }
            hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
        };
        let hays: [&[u8]; 6] = [b"", b"p", b"pass", b"ppasspass", b"xxpasswdpwd", b"a\"pwd\":\"pa"];
        let needles: [&[u8]; 5] = [b"", b"p", b"pass", b"passwd", b"pwd"];
        for hay in hays {
            for needle in needles {
                for from in 0..=hay.len() + 1 {
                    assert_eq!(find(hay, needle, from), reference(hay, needle, from),
                               "{hay:?} {needle:?} from {from}");
                }
            }
        }
    }

    #[test]
    fn has_ssn_equals_a_try_at_every_position() {
        // bodies of SSN-shaped pieces (their digits at times 0, 6 or 9), digits, dashes,
        // spaces and letters, in random order
        let mut rng = crate::test_rng::XorShift(0x2545_f491_4f6c_dd1d);
        let (mut with, mut without) = (0, 0);
        for round in 0..100_000 {
            let mut body = Vec::new();
            for _ in 0..rng.below(6) {
                match rng.below(5) {
                    0 | 1 => {
                        for (k, &c) in b"ddd-dd-dddd".iter().enumerate() {
                            body.push(if c == b'-' { b'-' } else if rng.below(8) == 0 {
                                [b'0', b'6', b'9'][rng.below(3) as usize]
                            } else {
                                b'1' + ((rng.below(9) as usize + k) % 9) as u8
                            });
                        }
                    }
                    2 => body.extend((0..rng.below(4)).map(|_| b'0' + rng.below(10) as u8)),
                    3 => body.push([b'-', b' '][rng.below(2) as usize]),
                    _ => body.push(b'a' + rng.below(26) as u8),
                }
            }
            let every = (0..body.len()).any(|s| ssn_at(&body, s));
            assert_eq!(has_ssn(&body), every, "round {round}: {:?}", String::from_utf8_lossy(&body));
            if every { with += 1 } else { without += 1 }
        }
        assert!(with > 1000 && without > 1000, "{with} {without}");
    }

    #[test]
    fn candidate_runs_equal_a_byte_by_byte_scan() {
        // bodies of digits, separators and letters in random runs, of every length from 0
        // to 200, cut or not
        let mut rng = crate::test_rng::XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let len = rng.below(200) as usize;
            let mut body = Vec::with_capacity(len);
            while body.len() < len {
                let run = 1 + rng.below(24) as usize;
                let kind = rng.below(4);
                for _ in 0..run {
                    body.push(match kind {
                        0 | 1 => b'0' + rng.below(10) as u8,
                        2 => [b' ', b'-', b'7'][rng.below(3) as usize],
                        _ => b'a' + rng.below(26) as u8,
                    });
                }
            }
            body.truncate(len);
            for truncated in [false, true] {
                assert_eq!(candidate_runs(&body, truncated), candidate_runs_byte_by_byte(&body, truncated),
                           "round {round}: {:?} truncated {truncated}", String::from_utf8_lossy(&body));
            }
        }
    }

    use super::*;

    fn one(name: &str, value: &str) -> String {
        let pairs = [(name.as_bytes().to_vec(), value.as_bytes().to_vec())];
        let map = header_map(&pairs, true);
        map.into_iter().next().map(|(_, v)| v.into_owned()).unwrap_or_default()
    }

    #[test]
    fn authorization_keeps_the_scheme() {
        assert_eq!(one("Authorization", "Basic dXNlcg=="), "Basic [REDACTED]");
        assert_eq!(one("Authorization", "  Basic   x  "), "Basic [REDACTED]");
        assert_eq!(one("Authorization", "\u{1c}Basic x"), "Basic [REDACTED]");
        assert_eq!(one("Authorization", "rawtoken"), REDACTED);
        assert_eq!(one("Authorization", ""), REDACTED);
        assert_eq!(one("Authorization", "abcdefghijabcdefghijabcde x"), REDACTED);
    }

    #[test]
    fn cookies() {
        assert_eq!(one("Cookie", "sid=abc; theme=dark;lang"), "sid=[REDACTED]; theme=[REDACTED];lang");
        let joined = "a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT, b=2; SameSite=Lax, c=3";
        assert_eq!(one("set-cookie", joined),
                   "a=[REDACTED]; Expires=Wed, 21 Oct 2015 07:28:00 GMT, b=[REDACTED]; SameSite=Lax, c=[REDACTED]");
        assert_eq!(one("set-cookie", ",,=, x"), ",,=[REDACTED]");
        assert_eq!(split_set_cookies("a=1,b=2,  c=3, =4"), vec!["a=1", "b=2", "c=3, =4"]);
    }

    #[test]
    fn maps_join_repeats_in_first_seen_order() {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![(b"A".to_vec(), b"1".to_vec()), (b"B".to_vec(), b"\xff".to_vec()),
                                                 (b"a".to_vec(), b"2".to_vec())];
        assert_eq!(header_map(&pairs, false),
                   vec![(Cow::from("a"), Cow::from("1, 2")), (Cow::from("b"), Cow::from("\u{fffd}"))]);
        // common names in any case, and lower-case names, borrowed; others lower-cased
        let names: Vec<(Vec<u8>, Vec<u8>)> = ["CONTENT-type", "x-mine", "X-Mine2", "\u{e9}"].iter()
            .map(|n| (n.as_bytes().to_vec(), b"v".to_vec())).collect();
        let map = header_map(&names, true);
        let shown: Vec<(&str, bool)> = map.iter().map(|(n, v)| (n.as_ref(), matches!(n, Cow::Borrowed(_)) && matches!(v, Cow::Borrowed(_)))).collect();
        assert_eq!(shown, vec![("content-type", true), ("x-mine", true), ("x-mine2", false), ("\u{e3}\u{a9}", false)]);  // (bytes as Latin-1: lower_name)
        // many names: the index path
        let many: Vec<(Vec<u8>, Vec<u8>)> = (0..100).map(|i| (format!("H{}", i % 40).into_bytes(), b"v".to_vec())).collect();
        let map = header_map(&many, true);
        assert_eq!(map.len(), 40);
        assert_eq!(get(&map, "h0"), Some("v, v, v"));
        assert_eq!(lower_name(b"\xc0X"), "\u{e0}x");
    }

    #[test]
    fn targets() {
        assert_eq!(redact_target("/search?q=1"), None);
        assert_eq!(redact_target("/cb?code=abc&state=x").as_deref(), Some("/cb?code=[REDACTED]&state=x"));
        assert_eq!(redact_target("/x?pa%73sword=2&a+b=3").as_deref(), Some("/x?pa%73sword=[REDACTED]&a+b=3"));
        assert_eq!(redact_target("/app;jsessionid=A?x=1").as_deref(), Some("/app;jsessionid=[REDACTED]?x=1"));
        assert_eq!(redact_target("http://u:p@h/x?a=1").as_deref(), Some("http://u:[REDACTED]@h/x?a=1"));
        assert_eq!(redact_target("http://u@h/"), None);
        assert_eq!(unquote_plus("%%41+%e2%82%ac%zz%"), "%A \u{20ac}%zz%");
        assert_eq!(unquote_plus("%e2\u{e9}%82"), "\u{fffd}\u{e9}\u{fffd}");
    }

    #[test]
    fn findings() {
        let m = |k: &'static str, v: &'static str| vec![(Cow::from(k), Cow::from(v))];
        assert_eq!(header_findings(&m("authorization", "Basic [REDACTED]")), BASIC_CREDENTIALS_BIT);
        assert_eq!(header_findings(&m("proxy-authorization", "BEARER x")), BEARER_TOKEN_BIT);
        assert_eq!(header_findings(&m("authorization", "")), 0);
        assert_eq!(header_findings(&m("host", "Basic x")), 0);
    }

    #[test]
    fn cards_keep_their_last_four() {
        let r = |b: &[u8], t| redact_body(b, None, t);
        assert_eq!(r(b"card=4111111111111111", false).as_deref(), Some(&b"card=************1111"[..]));
        assert_eq!(r(b"4111 1111 1111 1111 2024", false).as_deref(), Some(&b"**** **** **** 1111 2024"[..]));
        assert_eq!(r(b"4111111111111112", false), None);
        assert_eq!(r(b"41111111111111111111111", false), None);
        assert_eq!(r(b"pay 411111111111", true).as_deref(), Some(&b"pay ********1111"[..]));
        assert_eq!(r(b"pay 411111111111", false), None);
        assert_eq!(r(b"n=4111111", true), None);
        let once = r(b"2901428292418 290142829", false).unwrap_or_default();
        assert_eq!(r(&once, false), None);
        assert!(luhn_valid(b"79927398713") && !luhn_valid(b"") && !luhn_valid(b"41x1"));
    }

    #[test]
    fn forms_and_json() {
        let form = Some("application/x-www-form-urlencoded");
        assert_eq!(redact_body(b"user=bob&password=hunter2", form, false).as_deref(),
                   Some(&b"user=bob&password=[REDACTED]"[..]));
        let json = Some("application/json");
        let name64 = format!("{{\"{}token\": \"v\"}}", "a".repeat(59));
        assert_eq!(redact_body(name64.as_bytes(), json, false).map(|b| String::from_utf8_lossy(&b).into_owned()),
                   Some(format!("{{\"{}token\": \"[REDACTED]\"}}", "a".repeat(59))));
        assert_eq!(redact_body(br#"{"password": "hun\"ter", "n": 1}"#, json, false).as_deref(),
                   Some(&br#"{"password": "[REDACTED]", "n": 1}"#[..]));
        assert_eq!(redact_body(b"4111111111111111", Some("image/png"), false), None);
        assert_eq!(body_findings(b"user=a&password=secret", form), PASSWORD_IN_FORM_BIT);
        assert_eq!(body_findings(b"user=a&password=", form), 0);
        assert_eq!(body_findings(br#"{"pass": "x"}"#, json), PASSWORD_IN_FORM_BIT);
        assert_eq!(body_findings(b"name=x&ssn=078-05-1120", form), OTHER_PII_BIT);
        assert_eq!(body_findings(b"ssn=000-12-3456&b=666-12-3456&c=900-12-3456", form), 0);
        assert_eq!(body_findings(b"pay 4111 1111 1111 1111", None), CARD_NUMBER_BIT);
    }

    #[test]
    fn random_input_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = "a=;,% +@:/?&\u{1c}\u{e9}\u{20ac}01fF\t\"\\-4111pass";
        let chars: Vec<char> = alphabet.chars().collect();
        for _ in 0..3000 {
            let mut s = String::new();
            for _ in 0..(seed % 24) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push(chars.get((seed % chars.len() as u64) as usize).copied().unwrap_or('a'));
            }
            for kind in [AUTH, COOKIE, SET_COOKIE, SECRET] {
                let _ = redact_value(kind, &s);
            }
            let _ = redact_target(&s);
            for ct in [None, Some("application/json"), Some("application/x-www-form-urlencoded")] {
                for cut in [false, true] {
                    let _ = redact_body(s.as_bytes(), ct, cut);
                    // truncated inputs: every prefix of the bytes
                    let _ = redact_body(s.as_bytes().get(..s.len() / 2).unwrap_or_default(), ct, cut);
                }
                let _ = body_findings(s.as_bytes(), ct);
            }
            let _ = header_map(&[(s.as_bytes().to_vec(), s.as_bytes().to_vec())], true);
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test --release --lib body_findings_timing -- --ignored --nocapture`: the
    /// findings of the bench capture's text bodies (bench/make_http_capture.sh).
    #[test]
    #[ignore]
    fn body_findings_timing() {
        let line: &[u8] = b"wirestream benchmark payload 0123456789 abcdefghijklmnopqrstuvwxyz\n";
        // and a JSON API's answer: dashes (dates, UUIDs) make the SSN search run
        let api: &[u8] = br#"{"id":"3f2c1a9e-7b4d-4e2a-9c1f-0a1b2c3d4e5f","at":"2026-12-05T18:00:00Z","n":12},"#;
        for (ct, text, n) in [("text/plain", line, 100usize), ("text/html", line, 2048),
                              ("application/json", line, 16384), ("application/json", api, 16384)] {
            let body: Vec<u8> = text.iter().copied().cycle().take(n).collect();
            let rounds = 20_000;
            let t0 = std::time::Instant::now();
            let mut f = 0;
            for _ in 0..rounds {
                f |= body_findings(std::hint::black_box(&body), Some(ct));
            }
            let t1 = std::time::Instant::now();
            for _ in 0..rounds {
                f |= redact_body(std::hint::black_box(&body), Some(ct), false).map_or(0, |b| b.len() as u8);
            }
            eprintln!("{ct} {n} B: findings {:?}, redaction {:?} per body {f}", (t1 - t0) / rounds,
                      t1.elapsed() / rounds);
        }
    }
}
