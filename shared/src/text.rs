//! Text from elsewhere (a command's output, a message from a service) made
//! plain before it is shown or stored: terminal escape sequences (colours,
//! cursor moves, window titles) and other control characters removed, lines
//! and tabs kept.

/// `text` without terminal escape sequences or control characters other
/// than newline and tab.
#[must_use]
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte @ to ~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC, DCS, SOS, PM, APC: up to BEL or ESC \.
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                // A two-character escape (ESC c, ESC 7, …).
                _ => {}
            },
            // The 8-bit CSI.
            '\u{9b}' => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            '\n' | '\t' => out.push(c),
            '\r' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Whether `c` would act on a terminal or reorder what is shown rather than
/// show itself: a control character (but newline and tab), or a bidirectional
/// override, embedding or isolate.
fn acts(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// Free text as it may be shown (a terminal, Markdown, HTML, Slack): every
/// character that would act rather than show itself written as its escape
/// (`\u{1b}`), the rest as given. Text is stored as given; this is for
/// showing it.
#[must_use]
pub fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    escaping(text, |c| c.escape_unicode().to_string())
}

/// JSON text with every bidirectional override, embedding or isolate written
/// as its JSON escape (`\u202e`): the same JSON, shown safely (JSON already
/// escapes control characters).
#[must_use]
pub fn json_shown(json: &str) -> std::borrow::Cow<'_, str> {
    escaping(json, |c| format!("\\u{:04x}", u32::from(c)))
}

/// `text` with each character that [`acts`] written as `escape` writes it.
fn escaping(text: &str, escape: impl Fn(char) -> String) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(acts) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if acts(c) {
            out.push_str(&escape(c));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// ` (2026-12-07 17:10:00 UTC)`: when something happened, to follow what it
/// says happened; empty when not known.
#[must_use]
pub fn when(at: Option<chrono::DateTime<chrono::Utc>>) -> String {
    at.map_or_else(String::new, |at| {
        format!(" ({})", at.format("%Y-%m-%d %H:%M:%S UTC"))
    })
}

/// `2026-12-07 17:10 UTC`: a time as people read it in messages and pages.
#[must_use]
pub fn minute(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::{json_shown, plain, shown};

    #[test]
    fn json_stays_json_and_shows_no_override() {
        let text = serde_json::to_string(&serde_json::json!({ "r": "a\u{202e}b\u{1b}c" })).unwrap();
        let safe = json_shown(&text);
        assert!(!safe.contains('\u{202e}'));
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["r"], "a\u{202e}b\u{1b}c");
    }

    #[test]
    fn what_would_act_is_shown_escaped_and_lines_stay() {
        assert_eq!(
            shown("ok\u{1b}[2Jwiped\u{7}\r\0\u{202e}txet\nnext\tcol"),
            "ok\\u{1b}[2Jwiped\\u{7}\\u{d}\\u{0}\\u{202e}txet\nnext\tcol"
        );
        assert!(matches!(
            shown("plain — ünï"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn colours_moves_titles_and_controls_go_and_text_stays() {
        let dbt =
            "\u{1b}[0m12:00:01  \u{1b}[32mOK created sql table model\u{1b}[0m main.rev\r\n\tdone";
        assert_eq!(
            plain(dbt),
            "12:00:01  OK created sql table model main.rev\n\tdone"
        );
        assert_eq!(
            plain("a\u{1b}]0;pwned title\u{7}b\u{1b}]8;;http://x\u{1b}\\c"),
            "abc"
        );
        assert_eq!(plain("x\u{1b}[2J\u{1b}[Hy\u{8}\u{0}z\u{9b}31mw"), "xyzw");
        assert_eq!(plain("naïve — ok"), "naïve — ok");
    }
}
