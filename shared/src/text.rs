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

#[cfg(test)]
mod tests {
    use super::plain;

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
