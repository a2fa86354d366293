//! `scope.where` is one predicate: it is spliced into every statement on the
//! target's range as `AND (<where>)`, so it must stay inside those
//! parentheses. Read with PostgreSQL's lexical rules (quoted strings, escape
//! strings, dollar quotes, quoted identifiers, nested block comments), a
//! predicate is refused when a parenthesis closes one it did not open (as in
//! `false) OR (true`, which would make every batch own the whole table), when
//! one it opened is left open, when a `;` ends it, when a `--` comment could
//! hide the text after it, or when a quote or comment never closes. Whether
//! it is a valid boolean condition is PostgreSQL's to say (the preflight
//! prepares it).

/// `Ok` when `text` is one predicate that stays inside the parentheses it is
/// spliced into; otherwise what is wrong with it. It must hold whether or not
/// a backslash escapes a quote in a plain string (the server's
/// `standard_conforming_strings`), so a string cannot hide a parenthesis
/// under one setting and show it under the other.
pub(crate) fn one_predicate(text: &str) -> Result<(), String> {
    let chars: Vec<char> = text.chars().collect();
    lex(&chars, false)?;
    lex(&chars, true)
}

/// One reading of `chars`; with `plain_escapes`, a backslash escapes the next
/// character in every string, as with `standard_conforming_strings = off`.
fn lex(chars: &[char], plain_escapes: bool) -> Result<(), String> {
    let mut depth = 0usize;
    let mut i = 0;
    // Whether the previous character continues an identifier or a number:
    // `E'…'` and `$tag$` start a token only where no word goes on.
    let mut in_word = false;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '\'' => {
                let escapes = plain_escapes
                    || (i > 0 && matches!(chars[i - 1], 'e' | 'E') && !word_before(chars, i - 1));
                i = quoted(chars, i, '\'', escapes).ok_or("a quoted string is never closed")?;
                in_word = false;
                continue;
            }
            '"' => {
                i = quoted(chars, i, '"', false).ok_or("a quoted identifier is never closed")?;
                in_word = false;
                continue;
            }
            '$' if !in_word => {
                if let Some(end) = dollar_quoted(chars, i)? {
                    i = end;
                    in_word = false;
                    continue;
                }
            }
            '-' if next == Some('-') => {
                return Err("a `--` comment would hide the rest of the statement it is spliced into; remove it".into());
            }
            '/' if next == Some('*') => {
                i = block_comment(chars, i).ok_or("a /* comment is never closed")?;
                in_word = false;
                continue;
            }
            ';' => return Err("must be one predicate, without ';'".into()),
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or(
                    "a `)` closes a parenthesis the predicate did not open: it would escape the `AND (...)` it is spliced into; write one condition, e.g. \"a = 1 OR b = 2\"",
                )?;
            }
            _ => {}
        }
        in_word = c.is_alphanumeric() || c == '_' || (in_word && c == '$');
        i += 1;
    }
    if depth > 0 {
        return Err(format!("{depth} parenthesis(es) opened and never closed"));
    }
    Ok(())
}

/// Whether the character before `at` continues a word (so `at` does not
/// start a token).
fn word_before(chars: &[char], at: usize) -> bool {
    at > 0 && {
        let c = chars[at - 1];
        c.is_alphanumeric() || c == '_' || c == '$'
    }
}

/// The index just past the closing `quote` of a quoted text starting at
/// `start`; a doubled quote is one quote, and with `escapes` (an `E'…'`
/// string) a backslash escapes the next character. `None`: never closed.
fn quoted(chars: &[char], start: usize, quote: char, escapes: bool) -> Option<usize> {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if escapes => i += 2,
            c if c == quote => {
                if chars.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// A dollar-quoted string starting at `start` (`$$…$$`, `$tag$…$tag$`): the
/// index just past its end, `None` when `$` starts no such string here (a
/// parameter such as `$1`), an error when it is never closed.
fn dollar_quoted(chars: &[char], start: usize) -> Result<Option<usize>, String> {
    let mut i = start + 1;
    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
        if i == start + 1 && chars[i].is_ascii_digit() {
            return Ok(None);
        }
        i += 1;
    }
    if chars.get(i) != Some(&'$') {
        return Ok(None);
    }
    let tag = &chars[start..=i];
    let mut j = i + 1;
    while j + tag.len() <= chars.len() {
        if &chars[j..j + tag.len()] == tag {
            return Ok(Some(j + tag.len()));
        }
        j += 1;
    }
    Err("a dollar-quoted string is never closed".into())
}

/// The index just past a block comment starting at `start`; block comments
/// nest, as PostgreSQL's do. `None`: never closed.
fn block_comment(chars: &[char], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < chars.len() {
        match (chars[i], chars[i + 1]) {
            ('/', '*') => {
                depth += 1;
                i += 2;
            }
            ('*', '/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::one_predicate;
    use proptest::prelude::*;

    proptest! {
        // Any text is read to its end: one predicate or a reason, never a
        // panic; and an accepted one closes everything it opens, so the
        // escape appended to it is always refused.
        #[test]
        fn any_text_is_judged_without_panic(text in "[ -~()'\"$;/*\\\\Ee-]{0,60}") {
            if one_predicate(&text).is_ok() {
                let escaped = format!("{text}) OR (true");
                prop_assert!(one_predicate(&escaped).is_err());
            }
        }
    }

    #[test]
    fn one_condition_passes() {
        for ok in [
            "l_shipmode = 'AIR'",
            "(a = 1 OR b = 2) AND c IN (1, 2, 3)",
            "name = 'it''s (not'",
            "name = E'a\\' ) b'",
            "\"odd ) name\" IS NOT NULL",
            "body = $$ ) ; -- $$ AND tag = $t$ ( $t$",
            "a$b = 1 /* a comment ( /* nested */ ) */",
            "x > $1",
            "note = U&'d!0061t!+000061' UESCAPE '!'",
        ] {
            assert_eq!(one_predicate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn an_escape_or_a_loose_end_is_refused() {
        for (bad, says) in [
            ("false) OR (o_custkey >= 0", "closes a parenthesis"),
            ("true)) OR ((true", "closes a parenthesis"),
            ("(a = 1", "never closed"),
            ("a = 1; DROP TABLE t", "without ';'"),
            ("a = 1 -- and the rest", "`--` comment"),
            ("a = 'open", "quoted string"),
            ("a = E'\\'", "quoted string"),
            ("\"open = 1", "quoted identifier"),
            ("a = $x$ never", "dollar-quoted"),
            ("a = 1 /* never", "comment is never closed"),
            ("name = 'x' ) OR ( 'y' = 'y'", "closes a parenthesis"),
            // A string that hides `) OR (` only while backslashes escape nothing.
            ("a = 'x\\' ) OR ( true OR a = '", "closes a parenthesis"),
        ] {
            let err = one_predicate(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
