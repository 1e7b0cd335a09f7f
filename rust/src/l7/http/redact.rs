//! Redaction of the head of an HTTP transaction: header maps, request targets, and the
//! findings the request headers carry (Authorization schemes).
//!
//! Takes the header pairs as sent (bytes) and the request target (text); gives the
//! `wire.transactions` header maps (lower-case names, repeated names joined with ", ",
//! RFC 9110 section 5.3, values masked by the kind of header when redaction is on), the
//! target with token-like parameters and URL passwords masked, and the `Finding` bits of
//! the credentials the headers carried. It runs once per transaction on every header, so
//! it is compiled (it was ~3 s of a 10 s engine profile in Python). The rules are those
//! docs/redaction.md states (what is masked, what is deliberately kept); bodies are
//! `processors/l7/redact.py`'s.
//!
//! Text is handled as Python's `str` methods did before (the records must not change):
//! values are UTF-8 with invalid sequences replaced (U+FFFD per maximal subpart, as
//! CPython's "replace" handler), names Latin-1, "whitespace" is `str.isspace`'s.

use std::borrow::Cow;
use std::collections::HashMap;

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

/// Which kind of redaction the header `name` (lower-case) needs; 0 = none.
pub fn header_kind(name: &str) -> u8 {
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
        return String::from_utf8_lossy(&name.to_ascii_lowercase()).into_owned();
    }
    name.iter().flat_map(|&b| char::from(b).to_lowercase()).collect()
}

/// Header pairs -> [(lower-case name, value)] in first-seen order (a Python dict's),
/// repeated names joined with ", " (RFC 9110 section 5.3). Redaction is per value, before
/// joining: joined Set-Cookie values cannot be split reliably again.
pub fn header_map(pairs: &[(Vec<u8>, Vec<u8>)], redact: bool) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(pairs.len());
    // Header blocks are small: a linear search for a repeated name is the cheapest; the
    // index only bounds the cost of a hostile block of thousands of headers.
    let mut index: Option<HashMap<String, usize>> = None;
    for (name, raw) in pairs {
        let lname = lower_name(name);
        let mut value = String::from_utf8_lossy(raw).into_owned();
        if redact {
            let kind = header_kind(&lname);
            if kind != KEEP {
                value = redact_value(kind, &value);
            }
        }
        if out.len() == 32 && index.is_none() {
            index = Some(out.iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect());
        }
        let found = match &index {
            Some(ix) => ix.get(&lname).copied(),
            None => out.iter().position(|(n, _)| *n == lname),
        };
        match found.and_then(|i| out.get_mut(i)) {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(&value);
            }
            None => {
                if let Some(ix) = index.as_mut() {
                    ix.insert(lname.clone(), out.len());
                }
                out.push((lname, value));
            }
        }
    }
    out
}

/// The value of `name` in a header map.
pub fn get<'a>(map: &'a [(String, String)], name: &str) -> Option<&'a str> {
    map.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Credentials the request headers (the map as recorded) carried: `Finding` bits.
pub fn header_findings(req: &[(String, String)]) -> u8 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, value: &str) -> String {
        let map = header_map(&[(name.as_bytes().to_vec(), value.as_bytes().to_vec())], true);
        map.into_iter().next().map(|(_, v)| v).unwrap_or_default()
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
                   vec![("a".to_string(), "1, 2".to_string()), ("b".to_string(), "\u{fffd}".to_string())]);
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
        let m = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert_eq!(header_findings(&m("authorization", "Basic [REDACTED]")), BASIC_CREDENTIALS_BIT);
        assert_eq!(header_findings(&m("proxy-authorization", "BEARER x")), BEARER_TOKEN_BIT);
        assert_eq!(header_findings(&m("authorization", "")), 0);
        assert_eq!(header_findings(&m("host", "Basic x")), 0);
    }

    #[test]
    fn random_input_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = "a=;,% +@:/?&\u{1c}\u{e9}\u{20ac}01fF\t";
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
            let _ = header_map(&[(s.as_bytes().to_vec(), s.as_bytes().to_vec())], true);
        }
    }
}
