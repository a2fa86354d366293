//! Slack incoming-webhook messages as Slack takes them: Block Kit (a header,
//! sections of mrkdwn or of fields, context), every text within Slack's
//! limits, and every text a brief supplies escaped by Slack's rules, so no
//! brief mentions, pings or links anyone. A message longer than Slack allows
//! keeps its first parts and says where the rest is, never cut silently.
//!
//! Slack's limits (<https://api.slack.com/reference/block-kit/blocks>): 50
//! blocks a message; a header's plain text 150 characters; a section's text
//! 3,000; ten fields a section, each 2,000; ten elements a context block.

use serde_json::{Value, json};

/// Blocks in one message.
pub const BLOCKS_MAX: usize = 50;
/// Characters of a header block's text.
pub const HEADER_MAX: usize = 150;
/// Characters of a section's text.
pub const SECTION_MAX: usize = 3000;
/// Fields in a section.
pub const FIELDS_MAX: usize = 10;
/// Characters of one field.
pub const FIELD_MAX: usize = 2000;
/// Characters of the top-level `text` shown in notifications.
const FALLBACK_MAX: usize = 3000;

/// `text` escaped as Slack asks of text that is not markup: `&`, `<` and `>`
/// as entities, so `<!channel>`, `<@U123>` and `<https://…|…>` stay text;
/// control characters and bidi overrides written as escapes.
#[must_use]
pub fn escape(text: &str) -> String {
    backfill_shared::text::shown(text)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The first `max` characters of `text`, ending in `…` when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(max.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

/// Markdown as the change note writes it, as mrkdwn: headings and `**bold**`
/// as `*bold*`, table rows as lines of their cells (the header row's names
/// beside each value), `[text](url)` as `<url|text>`, code spans kept; every
/// other character escaped.
#[must_use]
pub fn mrkdwn(markdown: &str) -> String {
    let mut out = Vec::new();
    let mut header: Option<Vec<String>> = None;
    for line in markdown.lines() {
        let trimmed = line.trim();
        if let Some(cells) = table_row(trimmed) {
            if cells
                .iter()
                .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':')))
            {
                continue;
            }
            match &header {
                None => header = Some(cells),
                Some(names) => {
                    // The first cell labels the row; a two-column table reads
                    // as label and value, a wider one names each value.
                    let label = format!("*{}*", inline(&cells[0]).replace('*', ""));
                    let values: Vec<String> = cells
                        .iter()
                        .enumerate()
                        .skip(1)
                        .filter(|(_, c)| !c.is_empty())
                        .map(|(i, c)| match names.get(i).filter(|_| names.len() > 2) {
                            Some(name) => format!("{}: {}", inline(name), inline(c)),
                            None => inline(c),
                        })
                        .collect();
                    out.push(format!("• {label}: {}", values.join(" · ")));
                }
            }
            continue;
        }
        header = None;
        let heading = trimmed.trim_start_matches('#');
        if heading.len() < trimmed.len() && heading.starts_with(' ') {
            out.push(format!("*{}*", inline(heading.trim()).replace('*', "")));
        } else if let Some(item) = trimmed
            .strip_prefix("- ")
            .or_else(|| trimmed.strip_prefix("* "))
        {
            out.push(format!("• {}", inline(item)));
        } else {
            out.push(inline(line));
        }
    }
    out.join("\n")
}

/// The cells of a Markdown table row, if `line` is one.
fn table_row(line: &str) -> Option<Vec<String>> {
    let inner = line.strip_prefix('|')?.strip_suffix('|')?;
    Some(inner.split('|').map(|c| c.trim().to_owned()).collect())
}

/// One line's inline Markdown as mrkdwn: `**x**` as `*x*`, `[t](u)` as
/// `<u|t>`, code spans kept as they are; the rest escaped.
fn inline(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('`')
            && let Some(end) = after.find('`')
        {
            out.push('`');
            out.push_str(&escape(&after[..end]));
            out.push('`');
            rest = &after[end + 1..];
        } else if let Some(after) = rest.strip_prefix("**")
            && let Some(end) = after.find("**")
        {
            out.push('*');
            out.push_str(&escape(&after[..end]));
            out.push('*');
            rest = &after[end + 2..];
        } else if let Some(after) = rest.strip_prefix('[')
            && let Some(close) = after.find("](")
            && let Some(end) = after[close + 2..].find(')')
            && is_url(&after[close + 2..close + 2 + end])
        {
            let (label, url) = (&after[..close], &after[close + 2..close + 2 + end]);
            out.push_str(&format!("<{}|{}>", escape(url), escape(label)));
            rest = &after[close + 3 + end..];
        } else {
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                out.push_str(&escape(c.encode_utf8(&mut [0; 4])));
            }
            rest = chars.as_str();
        }
    }
    out
}

fn is_url(text: &str) -> bool {
    (text.starts_with("https://") || text.starts_with("http://"))
        && !text.contains(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '|'))
}

/// A message being built: its blocks, within Slack's limits.
#[derive(Debug, Default)]
pub struct Message {
    fallback: String,
    blocks: Vec<Value>,
}

impl Message {
    /// A message whose header (and notification text) is `headline`, plain text.
    #[must_use]
    pub fn new(headline: &str) -> Self {
        Self {
            fallback: clip(&escape(headline), FALLBACK_MAX),
            blocks: vec![json!({
                "type": "header",
                "text": { "type": "plain_text", "text": clip(headline, HEADER_MAX), "emoji": false },
            })],
        }
    }

    /// Labelled values as sections of fields, ten a section; values are text
    /// (escaped), labels bold.
    #[must_use]
    pub fn fields(mut self, pairs: &[(&str, String)]) -> Self {
        for chunk in pairs.chunks(FIELDS_MAX) {
            let fields: Vec<Value> = chunk
                .iter()
                .map(|(label, value)| {
                    json!({ "type": "mrkdwn",
                            "text": clip(&format!("*{label}*\n{}", escape(value)), FIELD_MAX) })
                })
                .collect();
            self.blocks
                .push(json!({ "type": "section", "fields": fields }));
        }
        self
    }

    /// mrkdwn (already escaped) as sections of at most [`SECTION_MAX`]
    /// characters, split between lines where it can be.
    #[must_use]
    pub fn text(mut self, mrkdwn: &str) -> Self {
        let mut part = String::new();
        for line in mrkdwn.lines() {
            for piece in pieces(line, SECTION_MAX) {
                if !part.is_empty()
                    && part.chars().count() + 1 + piece.chars().count() > SECTION_MAX
                {
                    self.blocks.push(section(&part));
                    part.clear();
                }
                if !part.is_empty() {
                    part.push('\n');
                }
                part.push_str(&piece);
            }
        }
        if !part.trim().is_empty() {
            self.blocks.push(section(&part));
        }
        self
    }

    /// A context line (mrkdwn, already escaped).
    #[must_use]
    pub fn context(mut self, mrkdwn: &str) -> Self {
        self.blocks.push(json!({ "type": "context",
            "elements": [ { "type": "mrkdwn", "text": clip(mrkdwn, SECTION_MAX) } ] }));
        self
    }

    /// The message: at most [`BLOCKS_MAX`] blocks. When there are more, the
    /// first ones stay and the last says how many parts did not fit and
    /// `where_rest` is (mrkdwn: a link, or the command that shows it).
    #[must_use]
    pub fn finish(mut self, where_rest: &str) -> Value {
        if self.blocks.len() > BLOCKS_MAX {
            let left = self.blocks.len() - (BLOCKS_MAX - 1);
            self.blocks.truncate(BLOCKS_MAX - 1);
            self.blocks.push(section(&format!(
                "_{left} more part(s) did not fit in one Slack message: {where_rest}_"
            )));
        }
        json!({ "text": self.fallback, "blocks": self.blocks })
    }
}

fn section(mrkdwn: &str) -> Value {
    json!({ "type": "section", "text": { "type": "mrkdwn", "text": mrkdwn } })
}

/// `line` in pieces of at most `max` characters, cut between words where it
/// can be and never inside an entity (`&amp;`).
fn pieces(line: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest: Vec<char> = line.chars().collect();
    while rest.len() > max {
        let window = &rest[..max];
        let mut cut = window
            .iter()
            .rposition(|c| *c == ' ')
            .filter(|at| *at > max / 2)
            .unwrap_or(max);
        // Not inside an entity: back to its `&` when one is open at the cut.
        if let Some(amp) = window[..cut].iter().rposition(|c| *c == '&')
            && !window[amp..cut].contains(&';')
            && cut - amp <= 5
        {
            cut = amp;
        }
        out.push(rest[..cut].iter().collect());
        rest.drain(..cut);
    }
    out.push(rest.into_iter().collect());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brief_text_cannot_mention_ping_or_link() {
        let text = "<!channel> & <@U123> see <https://evil.example|wiki>";
        let escaped = escape(text);
        assert!(!escaped.contains('<') && !escaped.contains('>'));
        assert_eq!(
            escaped,
            "&lt;!channel&gt; &amp; &lt;@U123&gt; see &lt;https://evil.example|wiki&gt;"
        );
        assert_eq!(mrkdwn(text), escaped);
    }

    #[test]
    fn markdown_becomes_mrkdwn() {
        let note = "# Backfill report: x\n\n**What is changing:** the *figures* & more\n\n| Item | Detail |\n| --- | --- |\n| Owner | alice |\n| Period | 1992 to 1998 |\n\n- one [wiki](https://example.com/a) `code <x>`";
        let out = mrkdwn(note);
        assert_eq!(
            out,
            "*Backfill report: x*\n\n*What is changing:* the *figures* &amp; more\n\n• *Owner*: alice\n• *Period*: 1992 to 1998\n\n• one <https://example.com/a|wiki> `code &lt;x&gt;`"
        );
    }

    #[test]
    fn every_part_stays_within_the_limits() {
        let long = "word ".repeat(5_000) + "&amp;";
        let message = Message::new(&"h".repeat(400))
            .text(&long)
            .finish("`backfill report RUN`");
        let blocks = message["blocks"].as_array().unwrap();
        assert!(blocks.len() <= BLOCKS_MAX);
        assert!(blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= HEADER_MAX);
        for b in &blocks[1..] {
            let t = b["text"]["text"].as_str().unwrap();
            assert!(t.chars().count() <= SECTION_MAX, "{}", t.len());
        }
        let many = "x\n".repeat(200_000);
        let message = Message::new("h")
            .text(&many)
            .finish("`backfill report RUN`");
        let blocks = message["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), BLOCKS_MAX);
        let last = blocks.last().unwrap()["text"]["text"].as_str().unwrap();
        assert!(
            last.contains("did not fit") && last.contains("backfill report RUN"),
            "{last}"
        );
    }

    #[test]
    fn a_cut_never_splits_an_entity() {
        let line = format!("{}&amp;tail", "a".repeat(2_997));
        let parts = pieces(&line, 3_000);
        assert_eq!(parts[0], "a".repeat(2_997));
        assert!(parts[1].starts_with("&amp;"));
    }
}
