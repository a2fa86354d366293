//! SQL identifiers from the brief. Every identifier that reaches a statement goes
//! through [`quote_ident`] or [`TableName::quoted`]; values are bound parameters,
//! never spliced, except where PostgreSQL takes no parameter (`COMMENT`): there
//! [`quote_literal`] quotes them.
//!
//! Some brief fields are SQL by design, written by the operator and run as
//! written: `scope.source`, `scope.where`, each metric's `expr` and `by`,
//! `limits.pause_when` and `dependencies.refresh`. A brief is therefore code:
//! whoever may write one may run SQL as the coordinator's and workers' roles,
//! and briefs go through the same review as any code that writes to the
//! warehouse (the brief's reviewer approves the result, not the text).

use std::fmt;

/// Quotes one identifier for PostgreSQL: wrapped in double quotes, inner quotes doubled.
#[must_use]
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes a text value as a SQL literal, for the one place (`COMMENT`) where
/// PostgreSQL accepts no bound parameter.
#[must_use]
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Quotes each identifier and joins them with `", "`, optionally prefixed by a table alias.
#[must_use]
pub fn column_list(columns: &[String], alias: Option<&str>) -> String {
    columns
        .iter()
        .map(|c| match alias {
            Some(a) => format!("{a}.{}", quote_ident(c)),
            None => quote_ident(c),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `l.k1 = r.k1 AND l.k2 = r.k2`: the join condition of two aliases on a key.
#[must_use]
pub fn key_join(key: &[String], left: &str, right: &str) -> String {
    key.iter()
        .map(|k| format!("{left}.{0} = {right}.{0}", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// A schema-qualified table name as written in the brief (`schema.table`, or `table`
/// meaning `public.table`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// Parses `schema.table` or `table` (meaning `public.table`), each part
    /// as written or in double quotes as PostgreSQL reads them (`"odd name"`,
    /// `sales."Mixed Case"`, `""` for a quote inside): a part that holds a dot,
    /// a quote, a space or a `;` must be quoted. `None` for anything else, for
    /// an empty part or a NUL, and for a part past PostgreSQL's 63 bytes
    /// (which it would cut short).
    pub fn parse(text: &str) -> Option<Self> {
        let parts = identifiers(text.trim())?;
        let (schema, table) = match parts.as_slice() {
            [t] => ("public".to_owned(), t.clone()),
            [s, t] => (s.clone(), t.clone()),
            _ => return None,
        };
        Some(Self { schema, table })
    }

    /// `"schema"."table"`, safe to splice into a statement.
    #[must_use]
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// A sibling table in the same schema, `"schema"."<table><suffix>"`.
    #[must_use]
    pub fn with_suffix(&self, suffix: &str) -> Self {
        Self {
            schema: self.schema.clone(),
            table: format!("{}{suffix}", self.table),
        }
    }
}

/// What the bounds of a `batch_by` column of `column_type` (as
/// `format_type` prints it) are, when it holds times: `UTC` for a
/// `timestamptz` (Backfill's sessions run in UTC, so its bounds are UTC
/// instants), `no time zone` for a `timestamp`'s wall-clock values; `None`
/// for dates and numbers.
#[must_use]
pub fn bounds_zone(column_type: &str) -> Option<&'static str> {
    if !column_type.starts_with("timestamp") {
        None
    } else if column_type.ends_with("without time zone") {
        Some("no time zone")
    } else {
        Some("UTC")
    }
}

/// One identifier as a brief writes a column: bare (`net_revenue`, taken as
/// written) or in double quotes as SQL reads it (`"Net Revenue"`); `None` for
/// anything else (a dot, a `;` or a space outside quotes, a NUL, past 63 bytes).
#[must_use]
pub fn parse_identifier(text: &str) -> Option<String> {
    match identifiers(text.trim())?.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// The most bytes PostgreSQL keeps of an identifier (`NAMEDATALEN - 1`).
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// The dot-separated identifiers of `text`, each bare or in double quotes.
fn identifiers(text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' if chars.next_if_eq(&'"').is_some() => part.push('"'),
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != '.') {
                if c == '"' || c == ';' || c.is_whitespace() {
                    return None;
                }
                part.push(c);
            }
        }
        if part.is_empty() || part.contains('\0') || part.len() > MAX_IDENTIFIER_BYTES {
            return None;
        }
        parts.push(part);
        match chars.next() {
            None => return Some(parts),
            Some('.') => {}
            Some(_) => return None,
        }
    }
}

/// An identifier as a brief writes it: bare, or quoted when [`TableName::parse`]
/// needs the quotes to read it back.
fn written(ident: &str) -> std::borrow::Cow<'_, str> {
    if ident.is_empty()
        || ident
            .chars()
            .any(|c| matches!(c, '.' | '"' | ';') || c.is_whitespace() || c.is_control())
    {
        quote_ident(ident).into()
    } else {
        ident.into()
    }
}

/// `schema.table` as a brief writes it, parts quoted where they must be
/// (`sales."Mixed Case"`): [`TableName::parse`] reads it back.
impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", written(&self.schema), written(&self.table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers_and_literals() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(
            column_list(&["a".into(), "b".into()], Some("t")),
            "t.\"a\", t.\"b\""
        );
        assert_eq!(
            key_join(&["a".into(), "b".into()], "t", "s"),
            "t.\"a\" = s.\"a\" AND t.\"b\" = s.\"b\""
        );
    }

    #[test]
    fn parses_table_names() {
        let t = TableName::parse("demo.order_revenue").unwrap();
        assert_eq!(t.quoted(), "\"demo\".\"order_revenue\"");
        assert_eq!(TableName::parse("x").unwrap().schema, "public");
        assert!(TableName::parse("a.b.c").is_none());
        assert!(TableName::parse("a;drop").is_none());
        assert!(TableName::parse("").is_none());
        // Quoted parts, as PostgreSQL reads them.
        let odd = TableName::parse(r#"sales."Mixed Case; ""x"".y""#).unwrap();
        assert_eq!(odd.schema, "sales");
        assert_eq!(odd.table, r#"Mixed Case; "x".y"#);
        assert_eq!(odd.quoted(), r#""sales"."Mixed Case; ""x"".y""#);
        assert_eq!(odd.to_string(), r#"sales."Mixed Case; ""x"".y""#);
        assert_eq!(TableName::parse(&odd.to_string()), Some(odd));
        assert_eq!(
            TableName::parse(r#""odd name""#).unwrap().to_string(),
            r#"public."odd name""#
        );
        assert_eq!(TableName::parse("o'rÜ").unwrap().to_string(), "public.o'rÜ");
        for bad in [
            r#""unclosed"#,
            r#""a"b"#,
            r#""""#,
            "a.",
            ".a",
            "odd name",
            r#"a"b"#,
            "\"a\0\"",
        ] {
            assert!(TableName::parse(bad).is_none(), "{bad}");
        }
        // PostgreSQL keeps 63 bytes of a name; a longer one would be cut short.
        assert!(TableName::parse(&"é".repeat(31)).is_some());
        assert!(TableName::parse(&"é".repeat(32)).is_none());
    }
}
