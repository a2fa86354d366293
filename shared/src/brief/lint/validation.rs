//! `[validation]`: the figures a run is held to, per batch and over the run,
//! and where stakeholders read them (`[[validation.downstream]]`).

use super::super::reader::{Reader, read_tables};
use super::super::{Downstream, Expect, Metric, Query, Reference, Validation};
use toml::{Table, Value};

pub(super) fn read_validation(r: &mut Reader<'_>) -> Option<Validation> {
    // The key is unique in the target: a batch whose source yields a key twice
    // fails as a duplicate grain, so no other figure could mean anything.
    let max_duplicate_keys = match r.get("max_duplicate_keys") {
        None => {
            r.missing("max_duplicate_keys", "0");
            None
        }
        Some(Value::Integer(0)) => Some(()),
        Some(_) => {
            r.problem(
                "max_duplicate_keys",
                "must be 0: the target's key is unique, so a batch whose source yields a key twice fails as a duplicate grain, whatever this says; write max_duplicate_keys = 0",
            );
            None
        }
    };
    let metrics = read_tables(r, "metrics", |r, t, i| {
        let field = |k: &str| format!("metrics[{i}].{k}");
        let text =
            |r: &mut Reader<'_>, k: &str, required: bool| entry_text(r, &field(""), t, k, required);
        let name = text(r, "name", true);
        let expr = text(r, "expr", true);
        let by = text(r, "by", false);
        let max_change_pct = match t.get("max_change_pct") {
            None => Some(None),
            Some(v) if non_negative(v).is_some() => Some(non_negative(v)),
            Some(_) => {
                r.problem(
                    &field("max_change_pct"),
                    "must be a non-negative number (percent)",
                );
                None
            }
        };
        only_fields(r, &field(""), t, &["name", "expr", "by", "max_change_pct"]);
        Some(Metric {
            name: name??,
            expr: expr??,
            by: by?,
            max_change_pct: max_change_pct?,
        })
    });
    let references = read_tables(r, "references", |r, t, i| {
        let mut text = |k: &str| match t.get(k) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            _ => {
                r.problem(
                    &format!("references[{i}].{k}"),
                    "must be a non-blank string",
                );
                None
            }
        };
        let column = text("column");
        let references = text("references");
        let reference = Reference {
            column: column?,
            references: references?,
        };
        if reference.parent().is_none() {
            r.problem(
                &format!("references[{i}].references"),
                format!(
                    "{:?} is not a parent; write \"schema.table(column)\"",
                    reference.references
                ),
            );
            return None;
        }
        Some(reference)
    });
    let max_unmatched_pct = match r.get("max_unmatched_pct") {
        None => Some(super::super::DEFAULT_MAX_UNMATCHED_PCT),
        Some(Value::Integer(i)) if (0..=100).contains(i) => Some(*i as f64),
        Some(Value::Float(f)) if (0.0..=100.0).contains(f) => Some(*f),
        Some(_) => {
            r.problem(
                "max_unmatched_pct",
                "must be a number from 0 to 100: the percent of a batch range's rows the source may leave without a counterpart (0 forbids any)",
            );
            None
        }
    };
    let edge_cases = read_edge_cases(r);
    let mut number = |key: &'static str, range: std::ops::RangeInclusive<f64>, means: &str| {
        let value = match r.get(key) {
            None => return Some(None),
            Some(Value::Integer(i)) => *i as f64,
            Some(Value::Float(f)) => *f,
            Some(_) => f64::NAN,
        };
        if range.contains(&value) {
            Some(Some(value))
        } else {
            r.problem(
                key,
                format!(
                    "must be a number from {} to {}: {means}",
                    range.start(),
                    range.end()
                ),
            );
            None
        }
    };
    let max_size_growth_pct = number(
        "max_size_growth_pct",
        0.0..=10_000.0,
        "the percent the target's table and indexes may grow over the run",
    );
    let min_correlation = number(
        "min_correlation",
        -1.0..=1.0,
        "the least physical order of the batch_by column (pg_stats.correlation) the run may leave",
    );
    let downstream = read_tables(r, "downstream", read_downstream);
    let queries = read_tables(r, "queries", read_query);
    // Each is recorded before the run and found again by its name.
    if let Some(d) = &downstream {
        unique_names(r, "downstream", d.iter().map(|d| d.name.as_str()));
    }
    if let Some(q) = &queries {
        unique_names(r, "queries", q.iter().map(|q| q.name.as_str()));
    }
    max_duplicate_keys?;
    Some(Validation {
        queries: queries?,
        downstream: downstream?,
        max_unmatched_pct: max_unmatched_pct?,
        metrics: metrics?,
        references: references?,
        edge_cases: edge_cases?,
        max_size_growth_pct: max_size_growth_pct?,
        min_correlation: min_correlation?,
    })
}

/// `edge_cases = [1, 32]` for a one-column key, `[[1, "a"], ...]` for a composite one.
fn read_edge_cases(r: &mut Reader<'_>) -> Option<Vec<Vec<String>>> {
    let Some(v) = r.get("edge_cases") else {
        return Some(Vec::new());
    };
    let Value::Array(items) = v else {
        r.problem(
            "edge_cases",
            "must be a list of keys, e.g. [1, 32] or [[1, \"a\"]]",
        );
        return None;
    };
    let scalar = |v: &Value| match v {
        Value::Integer(i) => Some(i.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Datetime(d) => Some(d.to_string()),
        _ => None,
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = match item {
            Value::Array(parts) => parts.iter().map(scalar).collect::<Option<Vec<_>>>(),
            other => scalar(other).map(|s| vec![s]),
        };
        match key {
            Some(k) => out.push(k),
            None => {
                r.problem(
                    &format!("edge_cases[{i}]"),
                    "must be a key value (integer, string, date) or a list of them",
                );
                return None;
            }
        }
    }
    Some(out)
}

/// One `[[validation.downstream]]` entry: `name`, `relation`, `expr`, `by`,
/// `where`, and exactly one of `expect_change_pct = [lo, hi]` and
/// `unchanged = true`.
fn read_downstream(r: &mut Reader<'_>, t: &Table, i: usize) -> Option<Downstream> {
    const FIELDS: [&str; 7] = [
        "name",
        "relation",
        "expr",
        "by",
        "where",
        "expect_change_pct",
        "unchanged",
    ];
    let field = |k: &str| format!("downstream[{i}].{k}");
    let text =
        |r: &mut Reader<'_>, k: &str, required: bool| entry_text(r, &field(""), t, k, required);
    let name = text(r, "name", true);
    let relation = text(r, "relation", true);
    let expr = text(r, "expr", true);
    let by = text(r, "by", false);
    let filter = text(r, "where", false);
    let number = |v: &Value| match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Float(f) if f.is_finite() => Some(*f),
        _ => None,
    };
    let expect = match (t.get("expect_change_pct"), t.get("unchanged")) {
        (Some(Value::Array(range)), None) => match range
            .iter()
            .map(number)
            .collect::<Option<Vec<_>>>()
            .as_deref()
        {
            Some(&[lo, hi]) if lo <= hi && lo >= -100.0 => Some(Expect::ChangePct { lo, hi }),
            _ => {
                r.problem(
                    &field("expect_change_pct"),
                    "must be [lo, hi]: the least and the most percent each group may change, lo at least -100 and at most hi (e.g. [-30, -5])",
                );
                None
            }
        },
        (None, Some(Value::Boolean(true))) => Some(Expect::Unchanged),
        (None, Some(_)) => {
            r.problem(
                &field("unchanged"),
                "must be true (the metric keeps its figures, e.g. over the periods outside the scope); for a metric expected to move, write expect_change_pct = [lo, hi] instead",
            );
            None
        }
        (Some(_), Some(_)) => {
            r.problem(
                &field("expect_change_pct"),
                "and unchanged both given; say one: the change expected, or unchanged = true",
            );
            None
        }
        (Some(_), None) => {
            r.problem(
                &field("expect_change_pct"),
                "must be [lo, hi]: the least and the most percent each group may change (e.g. [-30, -5])",
            );
            None
        }
        (None, None) => {
            r.problem(
                &field("expect_change_pct"),
                "missing: say what the metric should do, expect_change_pct = [lo, hi] (percent per group) or unchanged = true",
            );
            None
        }
    };
    only_fields(r, &field(""), t, &FIELDS);
    Some(Downstream {
        name: name??,
        relation: relation??,
        expr: expr??,
        by: by?,
        filter: filter?,
        expect: expect?,
    })
}

/// The text at `k` of the entry `t` (at `at`, ending in a dot), trimmed;
/// `Some(None)` when it is absent and not `required`, and a problem (`None`)
/// when it is blank or not a string.
fn entry_text(
    r: &mut Reader<'_>,
    at: &str,
    t: &Table,
    k: &str,
    required: bool,
) -> Option<Option<String>> {
    match t.get(k) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(Some(s.trim().to_owned())),
        None if !required => Some(None),
        _ => {
            r.problem(&format!("{at}{k}"), "must be a non-blank string");
            None
        }
    }
}

/// Refuses every field of the entry `t` (at `at`, ending in a dot) that is
/// not one of `fields`, naming them.
fn only_fields(r: &mut Reader<'_>, at: &str, t: &Table, fields: &[&str]) {
    for k in t.keys().filter(|k| !fields.contains(&k.as_str())) {
        r.problem(
            &format!("{at}{k}"),
            format!("unknown field; the fields are {}", fields.join(", ")),
        );
    }
}

/// A number no less than zero, as a brief writes a percent.
fn non_negative(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) if *i >= 0 => Some(*i as f64),
        Value::Float(f) if *f >= 0.0 && f.is_finite() => Some(*f),
        _ => None,
    }
}

/// Refuses a name that `key`'s entries give twice.
fn unique_names<'a>(r: &mut Reader<'_>, key: &str, names: impl Iterator<Item = &'a str>) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, name) in names.enumerate() {
        if !seen.insert(name) {
            r.problem(
                &format!("{key}[{i}].name"),
                format!("{name:?} is named twice; give each entry its own name"),
            );
        }
    }
}

/// One `[[validation.queries]]` entry: `name`, `sql`, `max_slowdown_pct`.
fn read_query(r: &mut Reader<'_>, t: &Table, i: usize) -> Option<Query> {
    const FIELDS: [&str; 3] = ["name", "sql", "max_slowdown_pct"];
    let field = |k: &str| format!("queries[{i}].{k}");
    let name = entry_text(r, &field(""), t, "name", true).flatten();
    let sql = entry_text(r, &field(""), t, "sql", true).flatten();
    let max_slowdown_pct = match t.get("max_slowdown_pct").and_then(non_negative) {
        Some(pct) => Some(pct),
        None => {
            r.problem(
                &field("max_slowdown_pct"),
                "must be a non-negative number: how much slower (percent) the run may leave the query, e.g. 50",
            );
            None
        }
    };
    only_fields(r, &field(""), t, &FIELDS);
    Some(Query {
        name: name?,
        sql: sql?,
        max_slowdown_pct: max_slowdown_pct?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{GOOD, fields};
    use crate::brief::{Brief, Expect};

    fn with(entries: &str) -> String {
        GOOD.replace("\n[limits]", &format!("{entries}\n[limits]"))
    }

    #[test]
    fn a_downstream_metric_names_its_relation_and_what_it_should_do() {
        let b = Brief::parse(&with(
            "[[validation.downstream]]
name = \"monthly revenue\"
relation = \"mart.monthly\"
expr = \"sum(revenue)\"
by = \"month\"
expect_change_pct = [-30, -5.5]
[[validation.downstream]]
name = \"revenue before 2020\"
relation = \"monthly_model\"
expr = \"sum(revenue)\"
where = \"month < '2020-01-01'\"
unchanged = true",
        ))
        .unwrap();
        let d = &b.validation.downstream;
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[0].expect,
            Expect::ChangePct {
                lo: -30.0,
                hi: -5.5
            }
        );
        assert_eq!(d[1].expect, Expect::Unchanged);
        assert_eq!(d[1].relation, "monthly_model");
        assert_eq!(
            d[1].query("\"mart\".\"m\""),
            "SELECT ('all')::text, (sum(revenue))::float8 FROM \"mart\".\"m\" t WHERE (month < '2020-01-01') GROUP BY 1 ORDER BY 1"
        );
        assert!(Brief::parse(GOOD).unwrap().validation.downstream.is_empty());
    }

    #[test]
    fn a_downstream_metric_says_exactly_one_expectation() {
        let entry = |expect: &str| {
            with(&format!(
                "[[validation.downstream]]\nname = \"m\"\nrelation = \"mart.v\"\nexpr = \"count(*)\"\n{expect}"
            ))
        };
        for (expect, field) in [
            ("", "validation.downstream[0].expect_change_pct"),
            (
                "expect_change_pct = [5, -5]",
                "validation.downstream[0].expect_change_pct",
            ),
            (
                "expect_change_pct = [-150, 0]",
                "validation.downstream[0].expect_change_pct",
            ),
            (
                "expect_change_pct = [1]",
                "validation.downstream[0].expect_change_pct",
            ),
            (
                "expect_change_pct = \"-5..0\"",
                "validation.downstream[0].expect_change_pct",
            ),
            ("unchanged = false", "validation.downstream[0].unchanged"),
            (
                "unchanged = true\nexpect_change_pct = [0, 1]",
                "validation.downstream[0].expect_change_pct",
            ),
            (
                "unchanged = true\ncolour = 1",
                "validation.downstream[0].colour",
            ),
            (
                "unchanged = true\n[[validation.downstream]]\nname = \"m\"\nrelation = \"mart.w\"\nexpr = \"count(*)\"\nunchanged = true",
                "validation.downstream[1].name",
            ),
        ] {
            assert_eq!(fields(&entry(expect)), [field], "{expect}");
        }
        assert_eq!(
            fields(&with(
                "[[validation.downstream]]\nname = \"m\"\nexpr = \" \"\nunchanged = true"
            )),
            [
                "validation.downstream[0].relation",
                "validation.downstream[0].expr"
            ]
        );
    }

    #[test]
    fn a_dashboard_query_has_a_name_its_sql_and_a_slowdown_limit() {
        let b = Brief::parse(&with(
            "[[validation.queries]]\nname = \"board\"\nsql = \"SELECT count(*) FROM {target}\"\nmax_slowdown_pct = 50",
        ))
        .unwrap();
        let q = &b.validation.queries[0];
        assert_eq!(q.max_slowdown_pct, 50.0);
        assert_eq!(q.on("\"s\".\"t\""), "SELECT count(*) FROM \"s\".\"t\"");
        for (entry, field) in [
            (
                "name = \"board\"\nsql = \"SELECT 1\"",
                "validation.queries[0].max_slowdown_pct",
            ),
            (
                "name = \"board\"\nsql = \"SELECT 1\"\nmax_slowdown_pct = -5",
                "validation.queries[0].max_slowdown_pct",
            ),
            (
                "name = \"board\"\nmax_slowdown_pct = 5",
                "validation.queries[0].sql",
            ),
            (
                "name = \"board\"\nsql = \"SELECT 1\"\nmax_slowdown_pct = 5\nruns = 3",
                "validation.queries[0].runs",
            ),
        ] {
            assert_eq!(
                fields(&with(&format!("[[validation.queries]]\n{entry}"))),
                [field],
                "{entry}"
            );
        }
    }
}
