//! The drift guard: fingerprints of the column definitions of the tables a run
//! depends on (its target and every table its source reads), taken when the run
//! starts and compared inside every batch's transaction. An incompatible deploy or
//! source drift fails the batch, and the run halts saying what changed.

use super::Result;
use std::collections::BTreeMap;

/// Table (`schema.table`) → its columns as `name type [not null]`, in order.
pub type Fingerprints = BTreeMap<String, String>;

const FINGERPRINT: &str = "
    SELECT n.nspname || '.' || c.relname,
           string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                      || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END, ', ' ORDER BY a.attnum)
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
     WHERE (n.nspname || '.' || c.relname) = ANY($1)
     GROUP BY 1";

/// The current fingerprints of `tables` (`schema.table` names); a table that no
/// longer exists is absent.
pub async fn fingerprints<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    tables: &[String],
) -> Result<Fingerprints> {
    let rows: Vec<(String, String)> = sqlx::query_as(FINGERPRINT)
        .bind(tables)
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().collect())
}

/// What changed between the fingerprints taken at the start and now, one line per
/// table; empty when nothing did.
#[must_use]
pub fn changes(then: &Fingerprints, now: &Fingerprints) -> Vec<String> {
    then.iter()
        .filter_map(|(table, before)| match now.get(table) {
            None => Some(format!("{table} is gone (it had: {before})")),
            Some(after) if after != before => {
                Some(format!("{table} changed from ({before}) to ({after})"))
            }
            Some(_) => None,
        })
        .collect()
}

/// The tables a source query reads, from its plan (`EXPLAIN (FORMAT JSON)`).
#[must_use]
pub fn tables_in_plan(plan: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                if let (Some(schema), Some(table)) = (
                    map.get("Schema").and_then(|s| s.as_str()),
                    map.get("Relation Name").and_then(|s| s.as_str()),
                ) {
                    let name = format!("{schema}.{table}");
                    if !out.contains(&name) {
                        out.push(name);
                    }
                }
                map.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(plan, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_the_table_and_both_definitions() {
        let then: Fingerprints = [
            ("a.t".to_owned(), "x integer".to_owned()),
            ("a.u".to_owned(), "y text".to_owned()),
        ]
        .into();
        let now: Fingerprints = [("a.t".to_owned(), "x bigint".to_owned())].into();
        let c = changes(&then, &now);
        assert_eq!(c.len(), 2);
        assert!(c[0].contains("a.t changed from (x integer) to (x bigint)"));
        assert!(c[1].contains("a.u is gone"));
        assert!(changes(&then, &then).is_empty());
    }

    #[test]
    fn finds_tables_in_a_plan() {
        let plan = serde_json::json!([{ "Plan": { "Node Type": "Hash Join", "Plans": [
            { "Relation Name": "orders", "Schema": "tpch" },
            { "Plans": [{ "Relation Name": "lineitem", "Schema": "tpch" }, { "Relation Name": "orders", "Schema": "tpch" }] }
        ]}}]);
        assert_eq!(tables_in_plan(&plan), ["tpch.orders", "tpch.lineitem"]);
    }
}
