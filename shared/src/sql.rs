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
    /// Parses `schema.table` or `table`. Quoted parts are not supported: names with
    /// dots are rejected rather than guessed at.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let mut parts = text.split('.');
        let (schema, table) = match (parts.next(), parts.next(), parts.next()) {
            (Some(t), None, None) => ("public", t),
            (Some(s), Some(t), None) => (s, t),
            _ => return None,
        };
        let ok = |s: &str| !s.is_empty() && !s.contains(['"', ' ', ';', '\0']);
        (ok(schema) && ok(table)).then(|| Self {
            schema: schema.to_owned(),
            table: table.to_owned(),
        })
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

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
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
    }
}
