//! The static lint of a brief: everything that can be checked from the text alone.
//! It never stops at the first problem; an operator fixes a brief in one pass.

use super::reader::{Reader, is_column_name, open_section, read_tables};
use super::{
    BatchBy, Bound, BoundKind, Brief, Dependencies, Interval, Limits, Meta, Metric, OnMissing,
    Reference, Risk, Rollback, Scope, Step, Strategy, Validation, Window, Write,
};
use crate::sql::TableName;
use std::fmt;
use toml::{Table, Value};

/// One thing wrong with a brief: the field (`scope.batch_by.step`) and what to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

pub(super) const SECTIONS: &[(&str, &str)] = &[
    ("brief", "name, reason, owner, reviewer and risk"),
    ("scope", "target, key, columns, batch_by and source"),
    ("write", "strategy, on_missing and snapshot"),
    (
        "dependencies",
        "downstream and stakeholders (empty lists if truly none)",
    ),
    ("validation", "max_duplicate_keys = 0, and metrics to watch"),
    ("limits", "max_in_flight"),
    ("rollback", "plan and retain_days"),
];

pub(super) fn lint(text: &str) -> Result<Brief, Vec<Problem>> {
    let doc: Table = match toml::from_str(text) {
        Ok(doc) => doc,
        Err(e) => {
            return Err(vec![Problem {
                field: "brief".into(),
                message: format!("not valid TOML: {}", e.to_string().trim()),
            }]);
        }
    };
    let mut problems = Vec::new();
    // PostgreSQL text cannot hold NUL: refuse it here, not as a failed run.
    for (key, value) in &doc {
        nul_characters(value, key, &mut problems);
    }
    for key in doc.keys() {
        if !SECTIONS.iter().any(|(s, _)| s == key) {
            problems.push(Problem {
                field: key.clone(),
                message: format!(
                    "unknown section; the sections are {}",
                    SECTIONS
                        .iter()
                        .map(|(s, _)| format!("[{s}]"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    let empty = Table::new();
    let mut section = |name: &'static str| open_section(&doc, &empty, name, &mut problems);
    let mut r = section("brief");
    let meta = read_meta(&mut r);
    let mut all = r.finish();
    let mut r = section("scope");
    let scope = read_scope(&mut r);
    all.extend(r.finish());
    let mut r = section("write");
    let write = read_write(&mut r);
    all.extend(r.finish());
    let mut r = section("dependencies");
    let dependencies = read_dependencies(&mut r);
    all.extend(r.finish());
    let mut r = section("validation");
    let validation = read_validation(&mut r);
    all.extend(r.finish());
    let mut r = section("limits");
    let limits = read_limits(&mut r);
    all.extend(r.finish());
    let mut r = section("rollback");
    let rollback = read_rollback(&mut r);
    all.extend(r.finish());
    problems.extend(all);
    if let (Some(scope), Some(validation)) = (&scope, &validation) {
        for (i, case) in validation.edge_cases.iter().enumerate() {
            if case.len() != scope.key.len() {
                problems.push(Problem {
                    field: format!("validation.edge_cases[{i}]"),
                    message: format!(
                        "has {} value(s) but the key has {} column(s) ({})",
                        case.len(),
                        scope.key.len(),
                        scope.key.join(", ")
                    ),
                });
            }
        }
    }

    if let (Some(meta), Some(write), Some(rollback)) = (&meta, &write, &rollback) {
        problems.extend(way_back(meta, write, rollback));
    }

    match (
        meta,
        scope,
        write,
        dependencies,
        validation,
        limits,
        rollback,
    ) {
        (
            Some(meta),
            Some(scope),
            Some(write),
            Some(dependencies),
            Some(validation),
            Some(limits),
            Some(rollback),
        ) if problems.is_empty() => Ok(Brief {
            meta,
            scope,
            write,
            dependencies,
            validation,
            limits,
            rollback,
        }),
        _ => Err(problems),
    }
}

/// Every string of the document holding a NUL character, by field.
fn nul_characters(value: &Value, path: &str, problems: &mut Vec<Problem>) {
    match value {
        Value::String(s) if s.contains('\0') => problems.push(Problem {
            field: path.to_owned(),
            message: "holds a NUL character (\\u0000), which PostgreSQL cannot store; remove it"
                .into(),
        }),
        Value::Table(t) => {
            for (k, v) in t {
                nul_characters(v, &format!("{path}.{k}"), problems);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                nul_characters(v, &format!("{path}[{i}]"), problems);
            }
        }
        _ => {}
    }
}

/// No silent loss of the way back: a live write of history that matters keeps
/// before-images or names another recovery path, and the rollback plan does not
/// promise images the run will not keep.
fn way_back(meta: &Meta, write: &Write, rollback: &Rollback) -> Vec<Problem> {
    let mut problems = Vec::new();
    let live = write.strategy.writes_live_target();
    let matters = matches!(meta.risk, Risk::MetricChanging | Risk::ProductionCritical);
    if write.snapshot {
        if rollback.without_images.is_some() {
            problems.push(Problem {
                field: "rollback.without_images".into(),
                message: "applies only with write.snapshot = false; this run keeps before-images, so remove it".into(),
            });
        }
        return problems;
    }
    if live && matters && rollback.without_images.is_none() {
        problems.push(Problem {
            field: "write.snapshot".into(),
            message: format!(
                "a {} {} brief rewrites the live target, and without before-images nothing can undo it: \
                 set snapshot = true, or name the other way back in rollback.without_images \
                 (e.g. \"nightly snapshot s3://... restores it\")",
                meta.risk, write.strategy
            ),
        });
    }
    let plan = rollback.plan.to_ascii_lowercase();
    if live
        && ["before-image", "before image", "beforeimage"]
            .iter()
            .any(|w| plan.contains(w))
    {
        problems.push(Problem {
            field: "rollback.plan".into(),
            message: "relies on before-images, but write.snapshot = false keeps none: set snapshot = true, or describe the real way back".into(),
        });
    }
    problems
}

fn read_meta(r: &mut Reader<'_>) -> Option<Meta> {
    let name = r.text("name", "a slug such as \"order-revenue-refunds\"");
    let name = name.filter(|n| {
        let ok = n.len() <= 48
            && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && n.starts_with(|c: char| c.is_ascii_lowercase());
        if !ok {
            r.problem(
                "name",
                format!("{n:?} is not a slug; use lowercase letters, digits and '-', starting with a letter, at most 48 characters"),
            );
        }
        ok
    });
    let reason = r.text("reason", "why history must change, in plain words");
    let owner = r.text("owner", "the operator who runs it");
    let reviewer = r.text("reviewer", "who approves validation and cutover");
    if let (Some(o), Some(rv)) = (&owner, &reviewer)
        && o.eq_ignore_ascii_case(rv)
    {
        r.problem(
            "reviewer",
            format!("is the owner ({o}); name a second person to review"),
        );
        return None;
    }
    let risk = r.choice("risk", Risk::NAMES, Risk::from_name);
    Some(Meta {
        name: name?,
        reason: reason?,
        owner: owner?,
        reviewer: reviewer?,
        risk: risk?,
    })
}

fn read_scope(r: &mut Reader<'_>) -> Option<Scope> {
    let target = r.text("target", "\"schema.table\"").and_then(|t| {
        let parsed = TableName::parse(&t);
        if parsed.is_none() {
            r.problem(
                "target",
                format!("{t:?} is not a table name; write \"schema.table\""),
            );
        }
        parsed
    });
    let key = r.list("key", true, true).filter(|k| {
        if k.is_empty() {
            r.problem(
                "key",
                "is empty; list the column(s) that identify one target row",
            );
        }
        !k.is_empty()
    });
    let columns = r.list("columns", true, true).filter(|c| {
        if c.is_empty() {
            r.problem(
                "columns",
                "is empty; list the columns this backfill may rewrite",
            );
        }
        !c.is_empty()
    });
    if let (Some(key), Some(columns)) = (&key, &columns)
        && let Some(both) = columns.iter().find(|c| key.contains(c))
    {
        r.problem(
            "columns",
            format!("{both:?} is part of the key; a backfill rewrites values, not keys — remove it from columns"),
        );
        return None;
    }
    let batch_by = read_batch_by(r);
    let expected_rows = match r.get("expected_rows") {
        None => Some(None),
        Some(v) => r
            .check_integer("expected_rows", v, 0, i64::MAX)
            .map(|n| u64::try_from(n).ok()),
    };
    let source = r.text("source", "the SELECT that yields one batch's rows").filter(|s| {
        let ok = s.contains("$1") && s.contains("$2");
        if !ok {
            r.problem(
                "source",
                "must use $1 (batch lower bound, inclusive) and $2 (upper bound, exclusive) in its WHERE clause",
            );
        }
        ok
    });
    let filter = match r.opt_text(
        "where",
        "a predicate on target columns, e.g. \"l_shipmode = 'AIR'\"",
    ) {
        Ok(Some(w)) if w.contains(';') => {
            r.problem("where", "must be one predicate, without ';'");
            None
        }
        Ok(w) => Some(w),
        Err(()) => None,
    };
    Some(Scope {
        filter: filter?,
        target: target?,
        key: key?,
        columns: columns?,
        batch_by: batch_by?,
        expected_rows: expected_rows?,
        source: source?,
    })
}

fn read_batch_by(r: &mut Reader<'_>) -> Option<BatchBy> {
    const SHAPE: &str = "{ column = \"...\", start = ..., end = ..., step = ... }";
    let Some(v) = r.get("batch_by") else {
        r.missing("batch_by", SHAPE);
        return None;
    };
    let Value::Table(t) = v else {
        r.problem("batch_by", format!("must be a table: {SHAPE}"));
        return None;
    };
    for k in t.keys() {
        if !["column", "start", "end", "step"].contains(&k.as_str()) {
            r.problem(
                "batch_by",
                format!("unknown field {k:?}; the fields are column, start, end, step"),
            );
        }
    }
    let column = match t.get("column") {
        Some(Value::String(c)) if is_column_name(c.trim()) => Some(c.trim().to_owned()),
        Some(_) => {
            r.problem(
                "batch_by.column",
                "must be a plain column name of the target",
            );
            None
        }
        None => {
            r.problem(
                "batch_by.column",
                "missing; name the column batches split on",
            );
            None
        }
    };
    let start = bound(r, "batch_by.start", t.get("start"));
    let end = bound(r, "batch_by.end", t.get("end"));
    let (start, end) = (start?, end?);
    if start.kind() != end.kind() {
        r.problem(
            "batch_by.end",
            format!(
                "is a {} but start is a {}; use the same type for both",
                end.kind().as_str(),
                start.kind().as_str()
            ),
        );
        return None;
    }
    if start >= end {
        r.problem(
            "batch_by",
            format!("start ({start}) must be before end ({end}); end is exclusive"),
        );
        return None;
    }
    let step = match (start.kind(), t.get("step")) {
        (_, None) => {
            r.problem("batch_by.step", "missing; give the size of one batch");
            None
        }
        (BoundKind::Integer, Some(Value::Integer(s))) if *s > 0 => Some(Step::Integer(*s)),
        (BoundKind::Integer, Some(Value::Integer(s))) => {
            r.problem(
                "batch_by.step",
                format!("{s} is not positive; use a step of at least 1"),
            );
            None
        }
        (BoundKind::Integer, Some(_)) => {
            r.problem(
                "batch_by.step",
                "must be a positive integer for an integer column",
            );
            None
        }
        (_, Some(Value::String(s))) => match Interval::parse(s) {
            Ok(i) if start.kind() == BoundKind::Date && i.micros != 0 => {
                r.problem("batch_by.step", format!("{s:?} is finer than a day; a date column steps by days, weeks, months or years"));
                let _ = i;
                None
            }
            Ok(i) => Some(Step::Interval(i)),
            Err(e) => {
                r.problem("batch_by.step", e);
                None
            }
        },
        (_, Some(_)) => {
            r.problem("batch_by.step", "must be an interval such as \"1 month\" or \"7 days\" for a date or timestamp column");
            None
        }
    }?;
    let batch_by = BatchBy {
        column: column?,
        start,
        end,
        step,
    };
    if let Err(e) = batch_by.plan() {
        r.problem("batch_by.step", e);
        return None;
    }
    Some(batch_by)
}

fn bound(r: &mut Reader<'_>, field: &str, v: Option<&Value>) -> Option<Bound> {
    let text = match v {
        None => {
            r.problem(field, "missing; give an integer, a date \"YYYY-MM-DD\" or a timestamp \"YYYY-MM-DD HH:MM:SS\"");
            return None;
        }
        Some(Value::Integer(i)) => return Some(Bound::Integer(*i)),
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Datetime(d)) => d.to_string(),
        Some(other) => {
            r.problem(
                field,
                format!(
                    "is a {}; batch_by works on integer, date or timestamp columns only",
                    other.type_str()
                ),
            );
            return None;
        }
    };
    let parsed = if text.len() == 10 {
        Bound::parse(BoundKind::Date, &text)
    } else {
        // An offset (Z, +02:00) has no meaning for a timestamp column: refuse it
        // rather than silently shifting the range.
        let has_offset =
            text.ends_with('Z') || text.get(19..).is_some_and(|rest| rest.contains(['+', '-']));
        (!has_offset)
            .then(|| Bound::parse(BoundKind::Timestamp, &text))
            .flatten()
    };
    if parsed.is_none() {
        r.problem(
            field,
            format!("{text:?} is neither a date \"YYYY-MM-DD\" nor a timestamp \"YYYY-MM-DD HH:MM:SS\" (no time zone)"),
        );
    }
    parsed
}

fn read_write(r: &mut Reader<'_>) -> Option<Write> {
    let strategy = r.choice("strategy", Strategy::NAMES, Strategy::from_name);
    let on_missing = r.choice("on_missing", OnMissing::NAMES, OnMissing::from_name);
    let snapshot = r.boolean("snapshot", "true to keep before-images for rollback");
    let new_table = match r.opt_text("new_table", "\"schema.table\" for the parallel version") {
        Ok(Some(t)) => {
            match TableName::parse(&t) {
                Some(name) if name.table.len() <= 63 => Some(Some(name)),
                _ => {
                    r.problem("new_table", format!("{t:?} is not a table name of at most 63 characters; write \"schema.table\""));
                    None
                }
            }
        }
        Ok(None) => Some(None),
        Err(()) => None,
    };
    if strategy.is_some_and(|s| s != Strategy::ParallelVersion)
        && matches!(new_table, Some(Some(_)))
    {
        r.problem(
            "new_table",
            "only a parallel-version backfill builds a new table; remove it or change the strategy",
        );
        return None;
    }
    Some(Write {
        strategy: strategy?,
        on_missing: on_missing?,
        snapshot: snapshot?,
        new_table: new_table?,
    })
}

fn read_dependencies(r: &mut Reader<'_>) -> Option<Dependencies> {
    let downstream = r.list("downstream", true, false);
    let refresh = r.list("refresh", false, false);
    let stakeholders = r.list("stakeholders", true, false);
    Some(Dependencies {
        downstream: downstream?,
        refresh: refresh?,
        stakeholders: stakeholders?,
    })
}

fn read_validation(r: &mut Reader<'_>) -> Option<Validation> {
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
        let text = |r: &mut Reader<'_>, k: &str, required: bool| match t.get(k) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(Some(s.trim().to_owned())),
            None if !required => Some(None),
            _ => {
                r.problem(&field(k), "must be a non-blank string");
                None
            }
        };
        let name = text(r, "name", true);
        let expr = text(r, "expr", true);
        let by = text(r, "by", false);
        let max_change_pct = match t.get("max_change_pct") {
            None => Some(None),
            Some(Value::Integer(i)) if *i >= 0 => Some(Some(*i as f64)),
            Some(Value::Float(f)) if *f >= 0.0 && f.is_finite() => Some(Some(*f)),
            Some(_) => {
                r.problem(
                    &field("max_change_pct"),
                    "must be a non-negative number (percent)",
                );
                None
            }
        };
        for k in t.keys() {
            if !["name", "expr", "by", "max_change_pct"].contains(&k.as_str()) {
                r.problem(
                    &field(k),
                    "unknown field; the fields are name, expr, by, max_change_pct",
                );
            }
        }
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
        None => Some(super::DEFAULT_MAX_UNMATCHED_PCT),
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
    max_duplicate_keys?;
    Some(Validation {
        max_unmatched_pct: max_unmatched_pct?,
        metrics: metrics?,
        references: references?,
        edge_cases: edge_cases?,
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

fn read_limits(r: &mut Reader<'_>) -> Option<Limits> {
    let max_in_flight = r
        .integer(
            "max_in_flight",
            1,
            10_000,
            "the most batches queued or running at once, e.g. 4",
        )
        .and_then(|n| u32::try_from(n).ok());
    let pause_when = r
        .opt_text("pause_when", "a SELECT returning one boolean")
        .ok();
    let window = match r.opt_text("window", "hours in UTC such as \"22:00-06:00\"") {
        Ok(Some(w)) => {
            match Window::parse(&w) {
                Some(window) => Some(Some(window)),
                None => {
                    r.problem("window", format!("{w:?} is not a window; write \"HH:MM-HH:MM\" in UTC, e.g. \"22:00-06:00\""));
                    None
                }
            }
        }
        Ok(None) => Some(None),
        Err(()) => None,
    };
    Some(Limits {
        max_in_flight: max_in_flight?,
        pause_when: pause_when?,
        window: window?,
    })
}

fn read_rollback(r: &mut Reader<'_>) -> Option<Rollback> {
    let plan = r.text("plan", "how to undo this run");
    let retain_days = r
        .integer(
            "retain_days",
            0,
            3650,
            "how many days to keep before-images, e.g. 14",
        )
        .and_then(|n| u32::try_from(n).ok());
    let without_images = r
        .opt_text(
            "without_images",
            "the way back without before-images, e.g. \"nightly snapshot s3://... restores it\"",
        )
        .ok();
    Some(Rollback {
        plan: plan?,
        retain_days: retain_days?,
        without_images: without_images?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Bound, Brief, OnMissing, Strategy};

    const GOOD: &str = r#"
[brief]
name = "fix-dates"
reason = "Late events were dated by arrival."
owner = "alice"
reviewer = "bob"
risk = "low-risk-enrichment"

[scope]
target = "events"
key = ["id"]
columns = ["day"]
batch_by = { column = "created", start = 2025-01-01, end = "2025-03-01", step = "1 month" }
source = "SELECT id, created, created::date AS day FROM raw WHERE created >= $1 AND created < $2"

[write]
strategy = "merge"
on_missing = "keep"
snapshot = true

[dependencies]
downstream = []
stakeholders = ["ops"]

[validation]
max_duplicate_keys = 0

[limits]
max_in_flight = 2

[rollback]
plan = "restore before-images"
retain_days = 7
"#;

    fn fields(text: &str) -> Vec<String> {
        Brief::parse(text)
            .unwrap_err()
            .problems
            .into_iter()
            .map(|p| p.field)
            .collect()
    }

    #[test]
    fn a_complete_brief_parses() {
        let b = Brief::parse(GOOD).unwrap();
        assert_eq!(b.scope.target.to_string(), "public.events");
        assert_eq!(b.write.strategy, Strategy::Merge);
        assert_eq!(b.write.on_missing, OnMissing::Keep);
        assert!(matches!(b.scope.batch_by.start, Bound::Date(_)));
        assert_eq!(b.scope.batch_by.plan().unwrap().len(), 2);
        assert_eq!(b.scope.written_columns(), ["id", "created", "day"]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = GOOD
            .replace("reviewer = \"bob\"", "reviewer = \"Alice\"")
            .replace("strategy = \"merge\"", "strategy = \"append\"")
            .replace("max_in_flight = 2", "max_in_flight = 0\nmax_inflight = 3")
            .replace(
                "[rollback]\nplan = \"restore before-images\"\nretain_days = 7\n",
                "[rollback]\n",
            );
        let f = fields(&bad);
        for expected in [
            "brief.reviewer",
            "write.strategy",
            "limits.max_in_flight",
            "limits.max_inflight",
            "[rollback]",
        ] {
            assert!(
                f.iter().any(|x| x == expected),
                "{expected} missing from {f:?}"
            );
        }
    }

    #[test]
    fn batch_by_is_checked() {
        let swap = |from: &str, to: &str| fields(&GOOD.replace(from, to));
        assert!(
            swap("end = \"2025-03-01\"", "end = \"2024-03-01\"")
                .contains(&"scope.batch_by".to_owned())
        );
        assert!(
            swap("start = 2025-01-01", "start = true").contains(&"scope.batch_by.start".to_owned())
        );
        assert!(swap("end = \"2025-03-01\"", "end = 7").contains(&"scope.batch_by.end".to_owned()));
        assert!(swap("\"1 month\"", "\"1 hour\"").contains(&"scope.batch_by.step".to_owned()));
        assert!(swap("\"1 month\"", "\"-1 month\"").contains(&"scope.batch_by.step".to_owned()));
        assert!(
            swap("start = 2025-01-01", "start = \"2025-01-01T00:00:00Z\"")
                .contains(&"scope.batch_by.start".to_owned())
        );
    }

    #[test]
    fn windows_wrap_midnight() {
        let limits = |w: &str| {
            Brief::parse(&GOOD.replace(
                "max_in_flight = 2",
                &format!("max_in_flight = 2\nwindow = \"{w}\""),
            ))
        };
        let w = limits("22:00-06:00").unwrap().limits.window.unwrap();
        let t = |s: &str| chrono::NaiveTime::parse_from_str(s, "%H:%M").unwrap();
        assert!(
            w.contains(t("23:30"))
                && w.contains(t("05:59"))
                && !w.contains(t("06:00"))
                && !w.contains(t("12:00"))
        );
        let day = limits("09:00-17:00").unwrap().limits.window.unwrap();
        assert!(day.contains(t("09:00")) && !day.contains(t("17:00")));
        for bad in ["9-17", "25:00-01:00", "10:00-10:00", "22:00"] {
            assert!(
                fields(&GOOD.replace(
                    "max_in_flight = 2",
                    &format!("max_in_flight = 2\nwindow = \"{bad}\"")
                ))
                .contains(&"limits.window".to_owned()),
                "{bad}"
            );
        }
    }

    #[test]
    fn scope_rules() {
        assert!(
            fields(&GOOD.replace("columns = [\"day\"]", "columns = [\"id\"]"))
                .contains(&"scope.columns".to_owned())
        );
        assert!(
            fields(&GOOD.replace("key = [\"id\"]", "key = []")).contains(&"scope.key".to_owned())
        );
        assert!(fields(&GOOD.replace("$2", "$9")).contains(&"scope.source".to_owned()));
        assert!(
            fields(&GOOD.replace("target = \"events\"", "target = \"a.b.c\""))
                .contains(&"scope.target".to_owned())
        );
        assert!(fields(&GOOD.replace("[limits]", "[limit]")).contains(&"limit".to_owned()));
    }

    #[test]
    fn a_live_write_of_history_that_matters_keeps_a_way_back() {
        let critical = GOOD
            .replace("low-risk-enrichment", "production-critical")
            .replace("snapshot = true", "snapshot = false");
        assert_eq!(fields(&critical), ["write.snapshot", "rollback.plan"]);
        let stated = critical.replace(
            "plan = \"restore before-images\"",
            "plan = \"restore last night's snapshot\"\nwithout_images = \"nightly snapshot s3://b/events\"",
        );
        let b = Brief::parse(&stated).unwrap();
        assert_eq!(
            b.rollback.without_images.as_deref(),
            Some("nightly snapshot s3://b/events")
        );
        // A low-risk enrichment may go without images, but not promise them.
        let low = GOOD.replace("snapshot = true", "snapshot = false");
        assert_eq!(fields(&low), ["rollback.plan"]);
        // A table built beside the target needs no images to be undone.
        assert!(Brief::parse(&critical.replace("\"merge\"", "\"staging-swap\"")).is_ok());
        // A stated way back while images are kept is a setting that does nothing.
        assert_eq!(
            fields(&stated.replace("snapshot = false", "snapshot = true")),
            ["rollback.without_images"]
        );
    }

    #[test]
    fn a_metric_is_measured_by_one_statement() {
        let m = super::super::Metric {
            name: "total".into(),
            expr: "sum(v)".into(),
            by: Some("date_trunc('year', d)".into()),
            max_change_pct: None,
        };
        assert_eq!(
            m.query("s.t", "t.d >= $1"),
            "SELECT (date_trunc('year', d))::text, (sum(v))::float8 FROM s.t t WHERE t.d >= $1 GROUP BY 1 ORDER BY 1"
        );
        let all = super::super::Metric { by: None, ..m };
        assert!(all.query("x", "false").starts_with("SELECT ('all')::text"));
        assert_eq!(super::super::Metric::group_name(None), "(null)");
    }

    #[test]
    fn max_duplicate_keys_can_only_be_zero() {
        for bad in ["1", "-1", "\"0\""] {
            assert_eq!(
                fields(&GOOD.replace(
                    "max_duplicate_keys = 0",
                    &format!("max_duplicate_keys = {bad}")
                )),
                ["validation.max_duplicate_keys"],
                "{bad}"
            );
        }
        let problems =
            Brief::parse(&GOOD.replace("max_duplicate_keys = 0", "max_duplicate_keys = 5"))
                .unwrap_err()
                .problems;
        assert!(
            problems[0].message.contains("duplicate grain"),
            "{problems:?}"
        );
    }

    #[test]
    fn scope_where_is_one_predicate() {
        let with = |w: &str| GOOD.replace("[write]", &format!("where = {w}\n\n[write]"));
        let b = Brief::parse(&with("\"day > '2025-01-01'\"")).unwrap();
        assert_eq!(b.scope.filter.as_deref(), Some("day > '2025-01-01'"));
        assert_eq!(
            b.scope.owned_range("t"),
            "t.\"created\" >= $1 AND t.\"created\" < $2 AND (day > '2025-01-01')"
        );
        assert_eq!(Brief::parse(GOOD).unwrap().scope.owned(), "");
        for bad in ["\"true; DROP TABLE x\"", "\" \"", "7"] {
            assert_eq!(fields(&with(bad)), ["scope.where"], "{bad}");
        }
    }

    #[test]
    fn max_unmatched_pct_is_a_percent() {
        let with = |v: &str| {
            GOOD.replace(
                "max_duplicate_keys = 0",
                &format!("max_duplicate_keys = 0\nmax_unmatched_pct = {v}"),
            )
        };
        assert_eq!(
            Brief::parse(GOOD).unwrap().validation.max_unmatched_pct,
            super::super::DEFAULT_MAX_UNMATCHED_PCT
        );
        assert_eq!(
            Brief::parse(&with("0"))
                .unwrap()
                .validation
                .max_unmatched_pct,
            0.0
        );
        assert_eq!(
            Brief::parse(&with("12.5"))
                .unwrap()
                .validation
                .max_unmatched_pct,
            12.5
        );
        for bad in ["-1", "101", "\"5%\"", "nan"] {
            assert_eq!(
                fields(&with(bad)),
                ["validation.max_unmatched_pct"],
                "{bad}"
            );
        }
    }
}
