//! SQL text for records: literals replaced by `?` (the default: values are secrets, and
//! statements that differ only in their values then read the same), comments dropped,
//! runs of white space made one space. Two dialects ([`Dialect`]): PostgreSQL's and
//! MySQL's, whose quotes and comments differ.
//!
//! PostgreSQL's lexical rules (https://www.postgresql.org/docs/current/sql-syntax-lexical.html):
//! string constants `'...'` (a quote doubled inside), with a prefix `E` (backslash
//! escapes), `B`/`X` (bit strings), `N`, `U&`; dollar-quoted strings `$tag$...$tag$`
//! (`$1` is a parameter, kept); numeric constants (`42`, `3.5`, `.5`, `1e-3`, `0x1F`,
//! `1_000`) that are not part of a name; quoted identifiers `"..."`, kept; comments
//! `-- ...` and `/* ... */` (which nest). Text that is not valid SQL is still redacted
//! the same way (an unterminated string is a literal to the end), never an error.
//!
//! MySQL's (https://dev.mysql.com/doc/refman/8.0/en/string-literals.html): `'...'` and
//! `"..."` are both strings (`"` quotes identifiers only in ANSI_QUOTES mode, which we
//! cannot see: a string is the safe reading), with backslash escapes (the default
//! sql_mode); backticks quote identifiers; `#` and `-- ` (with a space) start comments;
//! `/*! ... */` is executable code in a comment (dropped like any comment); `$` is part
//! of names, no dollar quoting.

/// Whose lexical rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Mysql,
}

/// A byte that continues a name (an identifier, a keyword, `$1`).
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// The end of a `$tag$` opening at `at` (the index after its second `$`), if it is one.
fn dollar_tag(s: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    if s.get(i).is_some_and(|b| b.is_ascii_digit()) {
        return None; // $1: a parameter
    }
    while let Some(&b) = s.get(i) {
        if b == b'$' {
            return Some(i + 1);
        }
        if !(b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80) {
            return None;
        }
        i += 1;
    }
    None
}

/// `text` (PostgreSQL's) with its literals as `?`, its comments dropped and its white
/// space collapsed.
pub fn redact(text: &[u8]) -> String {
    redact_as(text, Dialect::Postgres)
}

/// [`redact`] by `dialect`'s rules.
pub fn redact_as(text: &[u8], dialect: Dialect) -> String {
    let mysql = dialect == Dialect::Mysql;
    let s = text;
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    let mut i = 0;
    // pushes one space unless the output is empty or already ends with one
    fn space(out: &mut Vec<u8>) {
        if out.last().is_some_and(|&b| b != b' ') {
            out.push(b' ');
        }
    }
    while i < s.len() {
        let b = s[i];
        let prev = if i > 0 { s[i - 1] } else { b' ' };
        match b {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                space(&mut out);
                i += 1;
            }
            // MySQL: "-- " needs white space (or the end) after it; "#" to the end of the line
            b'-' if s.get(i + 1) == Some(&b'-')
                && (!mysql || s.get(i + 2).is_none_or(|c| c.is_ascii_whitespace())) =>
            {
                while i < s.len() && s[i] != b'\n' {
                    i += 1;
                }
                space(&mut out);
            }
            b'#' if mysql => {
                while i < s.len() && s[i] != b'\n' {
                    i += 1;
                }
                space(&mut out);
            }
            b'/' if s.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                while i < s.len() {
                    if s[i] == b'/' && s.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if s[i] == b'*' && s.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                space(&mut out);
            }
            b'\'' | b'"' if b == b'\'' || mysql => {
                // a prefix just written (E'', B'', X'', N'', U&'') is part of the literal;
                // MySQL's strings take backslash escapes whatever their prefix
                let escapes = strip_prefix(&mut out) || mysql;
                let quote = b;
                i += 1;
                while i < s.len() {
                    if escapes && s[i] == b'\\' {
                        i += 2;
                    } else if s[i] == quote {
                        if s.get(i + 1) == Some(&quote) {
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(b'?');
            }
            b'"' | b'`' => {
                // a quoted identifier (PostgreSQL's "...", MySQL's `...`): kept
                let start = i;
                let quote = b;
                i += 1;
                while i < s.len() {
                    if s[i] == quote {
                        if s.get(i + 1) == Some(&quote) {
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
                out.extend_from_slice(&s[start..i.min(s.len())]);
            }
            b'$' if !mysql && !name_byte(prev) && dollar_tag(s, i).is_some() => {
                let end = dollar_tag(s, i).unwrap_or(i + 1);
                let tag = &s[i..end];
                i = match s[end..].windows(tag.len()).position(|w| w == tag) {
                    Some(n) => end + n + tag.len(),
                    None => s.len(),
                };
                out.push(b'?');
            }
            b'0'..=b'9' if !name_byte(prev) && prev != b'.' => {
                i = number_end(s, i);
                out.push(b'?');
            }
            b'.' if !name_byte(prev) && s.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i = number_end(s, i + 1);
                out.push(b'?');
            }
            _ => {
                // a name (or an operator) as it is; names are copied whole so the
                // digits inside them are not literals
                if name_byte(b) {
                    let start = i;
                    while i < s.len() && name_byte(s[i]) {
                        i += 1;
                    }
                    out.extend_from_slice(&s[start..i]);
                } else {
                    out.push(b);
                    i += 1;
                }
            }
        }
    }
    while out.last() == Some(&b' ') {
        out.pop();
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes a string constant's prefix the output just got (E, B, X, N, U&); whether
/// backslashes escape in it (E).
fn strip_prefix(out: &mut Vec<u8>) -> bool {
    let n = out.len();
    let standalone = |k: usize| k == 0 || !name_byte(out[k - 1]);
    if n >= 2 && out[n - 1] == b'&' && matches!(out[n - 2], b'U' | b'u') && standalone(n - 2) {
        out.truncate(n - 2);
        return false;
    }
    if n >= 1 && matches!(out[n - 1], b'E' | b'e' | b'B' | b'b' | b'X' | b'x' | b'N' | b'n') && standalone(n - 1) {
        let escapes = matches!(out[n - 1], b'E' | b'e');
        out.truncate(n - 1);
        return escapes;
    }
    false
}

/// The end of a numeric constant starting at `i`: digits, letters (hex, exponent,
/// a trailing junk a lexer would reject), underscores, dots, and a sign after an
/// exponent's `e`.
fn number_end(s: &[u8], mut i: usize) -> usize {
    while i < s.len() {
        let b = s[i];
        let part = b.is_ascii_alphanumeric() || b == b'_' || b == b'.';
        let exponent_sign = matches!(b, b'+' | b'-') && matches!(s[i - 1], b'e' | b'E') && !s[..i].starts_with(b"0x");
        if !(part || exponent_sign) {
            break;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::{redact, redact_as, Dialect};

    fn r(s: &str) -> String {
        redact(s.as_bytes())
    }

    #[test]
    fn literals_become_question_marks() {
        assert_eq!(r("SELECT * FROM users WHERE id = 42 AND name = 'bob'"), "SELECT * FROM users WHERE id = ? AND name = ?");
        assert_eq!(r("insert into t values (1, 2.5, .5, 1e-3, 0x1F, 1_000, 'it''s')"), "insert into t values (?, ?, ?, ?, ?, ?, ?)");
        assert_eq!(r("select E'a\\'b', B'101', X'ff', U&'d\\0061t', N'x'"), "select ?, ?, ?, ?, ?");
        assert_eq!(r("select $$secret$$, $body$it's $$ here$body$ from t"), "select ?, ? from t");
    }

    #[test]
    fn names_parameters_and_quoted_identifiers_are_kept() {
        assert_eq!(r("SELECT col1, t2.x3 FROM \"Table 9\" WHERE a = $1 AND b = $12"), "SELECT col1, t2.x3 FROM \"Table 9\" WHERE a = $1 AND b = $12");
        assert_eq!(r("select a::int4, b[1] from t"), "select a::int4, b[?] from t");
    }

    #[test]
    fn comments_dropped_and_space_collapsed() {
        assert_eq!(r("SELECT 1 -- password 'x'\n  FROM /* a /* nested */ 'c' */ t\n"), "SELECT ? FROM t");
    }

    #[test]
    fn mysql_strings_comments_and_backticks() {
        let m = |s: &str| redact_as(s.as_bytes(), Dialect::Mysql);
        assert_eq!(m("SELECT * FROM `my table` WHERE a = \"secret\" AND b = 'it\\'s' # x 'y'\n"),
                   "SELECT * FROM `my table` WHERE a = ? AND b = ?");
        assert_eq!(m("SELECT a--1\nFROM t -- a comment\n WHERE c = x'ff' AND d = _utf8mb4'z'"),
                   "SELECT a--? FROM t WHERE c = ? AND d = _utf8mb4?");
        assert_eq!(m("SELECT $a, $$b FROM t1 /*!40101 SET x = 1 */"), "SELECT $a, $$b FROM t1");
        // PostgreSQL's reading keeps "..." as a name
        assert_eq!(redact(b"SELECT \"secret\""), "SELECT \"secret\"");
    }

    #[test]
    fn unterminated_and_garbage_never_panic() {
        assert_eq!(r("select 'abc"), "select ?");
        assert_eq!(r("select $a$ never closed"), "select ?");
        assert_eq!(r("select E'\\"), "select ?");
        for s in [&b"\xff\xfe'"[..], b"$", b"$$", b"/*", b"--", b"\"", b"1e", b"E'", b"U&'", b"#", b"`", b"\"\\"] {
            let _ = redact(s);
            let _ = redact_as(s, Dialect::Mysql);
        }
    }
}
