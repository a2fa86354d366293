//! The static lint of a brief: everything that can be checked from the text alone.
//! It never stops at the first problem; an operator fixes a brief in one pass.

use super::reader::{Reader, open_section};
use super::{
    BatchBy, Brief, Budget, Canary, CanaryPick, Dependencies, Limits, Meta, OnMissing, Refresh,
    Risk, Rollback, Strategy, Window, Write,
};
use crate::sql::TableName;
use scope::read_scope;
use std::fmt;
use toml::{Table, Value};
use validation::read_validation;

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

/// How a brief writes a table's name, for the lint's refusals.
pub(super) const TABLE_NAME: &str = "write \"schema.table\", each part at most 63 bytes, in double quotes if it holds a dot, a quote, a space or a ; (in TOML, 'sales.\"Mixed Case\"')";

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

/// The most a brief may hold (README, *Limits of a brief*): its size, the
/// items of each list, the characters of each text. Each lies well below
/// where PostgreSQL or a worker would fail (a statement's 1,664 result
/// columns, an index's 32 columns), and keeps the run's row, every worker's
/// copy of it and every message quoting it small.
pub mod limits {
    /// Bytes of the brief's text.
    pub const BRIEF_BYTES: usize = 1024 * 1024;
    /// Items of a list, by field.
    pub const ITEMS: &[(&str, usize)] = &[
        ("scope.key", 32),
        ("scope.columns", 200),
        ("scope.periods", 100),
        ("scope.accept_empty_source", 1000),
        ("dependencies.downstream", 200),
        ("dependencies.refresh", 100),
        ("dependencies.stakeholders", 100),
        ("validation.metrics", 50),
        ("validation.references", 50),
        ("validation.downstream", 50),
        ("validation.queries", 20),
        ("validation.edge_cases", 1000),
    ];
    /// Characters of a text, by field (`[]`: every item of a list).
    pub const CHARS: &[(&str, usize)] = &[
        ("brief.owner", 200),
        ("brief.reviewer", 200),
        ("brief.reason", 4000),
        ("scope.periods[].reason", 4000),
        ("scope.volatile_ok", 4000),
        ("validation.metrics[].name", 200),
        ("validation.downstream[].name", 200),
        ("validation.queries[].name", 200),
        ("rollback.plan", 4000),
        ("rollback.without_images", 4000),
    ];
    /// Characters of any other text (SQL, above all).
    pub const TEXT_CHARS: usize = 256 * 1024;

    /// The most characters the text at `path` (`scope.periods[2].reason`) may hold.
    #[must_use]
    pub fn chars(path: &str) -> usize {
        let mut field = String::with_capacity(path.len());
        let mut in_index = false;
        for c in path.chars() {
            match c {
                '[' => {
                    in_index = true;
                    field.push_str("[]");
                }
                ']' => in_index = false,
                _ if in_index => {}
                _ => field.push(c),
            }
        }
        CHARS
            .iter()
            .find(|(f, _)| *f == field)
            .map_or(TEXT_CHARS, |(_, n)| *n)
    }
}

pub(super) fn lint(text: &str) -> Result<Brief, Vec<Problem>> {
    if text.len() > limits::BRIEF_BYTES {
        return Err(vec![Problem {
            field: "brief".into(),
            message: format!(
                "is {} bytes; a brief is at most {} bytes (1 MiB). Put long SQL in a view the source selects from, and long lists in a table it joins",
                text.len(),
                limits::BRIEF_BYTES
            ),
        }]);
    }
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
    for (key, value) in &doc {
        beyond_limits(value, key, &mut problems);
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
    // Problems of whole sections first, then of their fields, in document order.
    let mut fields = Vec::new();
    let meta = section(&doc, "brief", &mut problems, &mut fields, read_meta);
    let scope = section(&doc, "scope", &mut problems, &mut fields, read_scope);
    let write = section(&doc, "write", &mut problems, &mut fields, read_write);
    let dependencies = section(
        &doc,
        "dependencies",
        &mut problems,
        &mut fields,
        read_dependencies,
    );
    let validation = section(
        &doc,
        "validation",
        &mut problems,
        &mut fields,
        read_validation,
    );
    let batch_by = scope.as_ref().map(|s| &s.batch_by);
    let limits = section(&doc, "limits", &mut problems, &mut fields, |r| {
        read_limits(r, batch_by)
    });
    let rollback = section(&doc, "rollback", &mut problems, &mut fields, read_rollback);
    problems.extend(fields);
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

    if let (Some(limits), Some(validation)) = (&limits, &validation)
        && limits
            .canary
            .as_ref()
            .is_some_and(|c| c.pick == CanaryPick::EdgeCases)
        && validation.edge_cases.is_empty()
    {
        problems.push(Problem {
            field: "limits.canary.pick".into(),
            message: "is \"edge_cases\" but validation.edge_cases is empty; list the records to watch there, or pick \"spread\"".into(),
        });
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

/// Reads section `name` of `doc` with `read`: a missing or blank section is a
/// problem of its own (`sections`), a bad or unknown field one of `fields`.
fn section<T>(
    doc: &Table,
    name: &'static str,
    sections: &mut Vec<Problem>,
    fields: &mut Vec<Problem>,
    read: impl FnOnce(&mut Reader<'_>) -> Option<T>,
) -> Option<T> {
    let empty = Table::new();
    let mut r = open_section(doc, &empty, name, sections);
    let value = read(&mut r);
    fields.extend(r.finish());
    value
}

/// Every string of the document holding a NUL character, by field.
/// Texts PostgreSQL cannot store (a NUL) and texts and lists past
/// [`limits`], each named by its field: refused here, not as a failed run.
fn beyond_limits(value: &Value, path: &str, problems: &mut Vec<Problem>) {
    let refused = |message: String| Problem {
        field: path.to_owned(),
        message,
    };
    match value {
        Value::String(s) => {
            if s.contains('\0') {
                problems.push(refused(
                    "holds a NUL character (\\u0000), which PostgreSQL cannot store; remove it"
                        .into(),
                ));
            }
            let most = limits::chars(path);
            let chars = s.chars().count();
            if chars > most {
                problems.push(refused(format!(
                    "is {chars} characters; at most {most} fit here — shorten it"
                )));
            }
        }
        Value::Table(t) => {
            for (k, v) in t {
                beyond_limits(v, &format!("{path}.{k}"), problems);
            }
        }
        Value::Array(items) => {
            if let Some((_, most)) = limits::ITEMS.iter().find(|(f, _)| *f == path)
                && items.len() > *most
            {
                problems.push(refused(format!(
                    "has {} items; a brief lists at most {most} here — split the backfill, or keep the rest outside the brief",
                    items.len()
                )));
            }
            for (i, v) in items.iter().enumerate() {
                beyond_limits(v, &format!("{path}[{i}]"), problems);
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

fn read_write(r: &mut Reader<'_>) -> Option<Write> {
    let strategy = r.choice("strategy", Strategy::NAMES, Strategy::from_name);
    let on_missing = r.choice("on_missing", OnMissing::NAMES, OnMissing::from_name);
    let snapshot = r.boolean("snapshot", "true to keep before-images for rollback");
    let new_table = match r.opt_text("new_table", "\"schema.table\" for the parallel version") {
        Ok(Some(t)) => match TableName::parse(&t) {
            Some(name) => Some(Some(name)),
            None => {
                r.problem(
                    "new_table",
                    format!("{t:?} is not a table name; {TABLE_NAME}"),
                );
                None
            }
        },
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
    let refresh = read_refresh(r);
    let stakeholders = r.list("stakeholders", true, false);
    let dbt_manifest = r.opt_text(
        "dbt_manifest",
        "the path of a dbt project's target/manifest.json",
    );
    Some(Dependencies {
        downstream: downstream?,
        refresh: refresh?,
        stakeholders: stakeholders?,
        dbt_manifest: dbt_manifest.ok()?,
    })
}

/// `refresh`: SQL statements, and commands as `{ run = ["dbt", "build"], dir = "analytics" }`.
fn read_refresh(r: &mut Reader<'_>) -> Option<Vec<Refresh>> {
    const SHAPE: &str = "a list whose items are SQL statements (\"REFRESH MATERIALIZED VIEW x\") or commands ({ run = [\"dbt\", \"build\", \"--select\", \"x+\"], dir = \"analytics\" })";
    let Some(v) = r.get("refresh") else {
        return Some(Vec::new());
    };
    let Value::Array(items) = v else {
        r.problem("refresh", format!("must be {SHAPE}"));
        return None;
    };
    let mut steps = Vec::with_capacity(items.len());
    let mut ok = true;
    for (n, item) in items.iter().enumerate() {
        let at = n + 1;
        match item {
            Value::String(sql) if !sql.trim().is_empty() => {
                steps.push(Refresh::Sql(sql.trim().to_owned()));
            }
            Value::Table(t) => {
                let run = match t.get("run") {
                    Some(Value::Array(args)) if !args.is_empty() => args
                        .iter()
                        .map(|a| match a {
                            Value::String(s) if !s.is_empty() => Some(s.clone()),
                            _ => None,
                        })
                        .collect::<Option<Vec<String>>>(),
                    _ => None,
                };
                let dir = match t.get("dir") {
                    None => Some(None),
                    Some(Value::String(d)) if !d.trim().is_empty() => {
                        Some(Some(d.trim().to_owned()))
                    }
                    Some(_) => None,
                };
                let unknown: Vec<&String> = t
                    .keys()
                    .filter(|k| !matches!(k.as_str(), "run" | "dir"))
                    .collect();
                match (run, dir) {
                    (Some(run), Some(dir)) if unknown.is_empty() => {
                        steps.push(Refresh::Command { run, dir });
                    }
                    (None, _) => {
                        r.problem("refresh", format!("step {at}: `run` must be a non-empty list of non-empty strings, the program then its arguments (run without a shell), e.g. [\"dbt\", \"build\", \"--select\", \"x+\"]"));
                        ok = false;
                    }
                    (_, None) => {
                        r.problem("refresh", format!("step {at}: `dir` must be a directory's path, where the command runs"));
                        ok = false;
                    }
                    _ => {
                        r.problem("refresh", format!("step {at}: unknown key(s) {unknown:?}; a command takes `run` and `dir`"));
                        ok = false;
                    }
                }
            }
            _ => {
                r.problem(
                    "refresh",
                    format!("step {at} must be a SQL statement or a command: {SHAPE}"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(steps)
}

fn read_limits(r: &mut Reader<'_>, by: Option<&BatchBy>) -> Option<Limits> {
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
    let budget = read_budget(r);
    let canary = read_canary(r, by);
    Some(Limits {
        max_in_flight: max_in_flight?,
        pause_when: pause_when?,
        window: window?,
        budget: budget?,
        canary: canary?,
    })
}

/// Most batches a canary may hold.
const MAX_CANARY_BATCHES: i64 = 100;

/// `limits.canary = { batches = 3, pick = "spread" | "edge_cases" | ["lo..hi", ...], auto = false }`.
fn read_canary(r: &mut Reader<'_>, by: Option<&BatchBy>) -> Option<Option<Canary>> {
    const SHAPE: &str = "{ batches = 3, pick = \"spread\" } (pick: \"spread\", \"edge_cases\" or a list of \"lo..hi\" ranges; auto = true promotes by itself)";
    let Some(v) = r.get("canary") else {
        return Some(None);
    };
    let Value::Table(t) = v else {
        r.problem("canary", format!("must be a table: {SHAPE}"));
        return None;
    };
    let mut ok = true;
    let mut canary = Canary {
        batches: 3,
        pick: CanaryPick::Spread,
        auto: false,
    };
    let mut counted = false;
    for (k, v) in t {
        match (k.as_str(), v) {
            ("batches", Value::Integer(n)) if (1..=MAX_CANARY_BATCHES).contains(n) => {
                canary.batches = u32::try_from(*n).unwrap_or(3);
                counted = true;
            }
            ("batches", _) => {
                r.problem(
                    "canary.batches",
                    format!("must be a whole number from 1 to {MAX_CANARY_BATCHES}: how many batches go first"),
                );
                ok = false;
            }
            ("pick", Value::String(p)) if p == "spread" => canary.pick = CanaryPick::Spread,
            ("pick", Value::String(p)) if p == "edge_cases" => canary.pick = CanaryPick::EdgeCases,
            ("pick", Value::Array(items)) if !items.is_empty() => {
                let mut ranges = Vec::with_capacity(items.len());
                for item in items {
                    let parsed = match (item, by) {
                        (Value::String(text), Some(by)) => scope::accepted_range(text, by),
                        (Value::String(_), None) => continue, // scope.batch_by has its own problem
                        (other, _) => Err(format!("{other} is not a \"lo..hi\" range")),
                    };
                    match parsed {
                        Ok(range) => ranges.push(range),
                        Err(message) => {
                            r.problem("canary.pick", message);
                            ok = false;
                        }
                    }
                }
                canary.pick = CanaryPick::Ranges(ranges);
            }
            ("pick", _) => {
                r.problem(
                    "canary.pick",
                    "must be \"spread\", \"edge_cases\" or a non-empty list of \"lo..hi\" ranges of batch_by",
                );
                ok = false;
            }
            ("auto", Value::Boolean(b)) => canary.auto = *b,
            ("auto", _) => {
                r.problem(
                    "canary.auto",
                    "must be true (promote by itself when no limit was breached) or false (wait for the reviewer)",
                );
                ok = false;
            }
            _ => {
                r.problem(
                    &format!("canary.{k}"),
                    "unknown field; the fields are batches, pick, auto",
                );
                ok = false;
            }
        }
    }
    if counted && matches!(canary.pick, CanaryPick::Ranges(_)) {
        r.problem(
            "canary.batches",
            "is given with explicit ranges in pick; the ranges decide the batches: drop one of them",
        );
        ok = false;
    }
    ok.then_some(Some(canary))
}

/// `limits.budget = { duration = "6h", rows = N, batch_seconds = N }`, any subset.
fn read_budget(r: &mut Reader<'_>) -> Option<Budget> {
    const SHAPE: &str =
        "{ duration = \"6h\", rows = 20000000, batch_seconds = 7200 } (any of them)";
    let Some(v) = r.get("budget") else {
        return Some(Budget::default());
    };
    let Value::Table(t) = v else {
        r.problem("budget", format!("must be a table: {SHAPE}"));
        return None;
    };
    let mut budget = Budget::default();
    let mut ok = true;
    for (k, v) in t {
        match (k.as_str(), v) {
            ("duration", Value::String(d)) => match Budget::parse_duration(d) {
                Some(s) => budget.duration_seconds = Some(s),
                None => {
                    r.problem(
                        "budget.duration",
                        format!("{d:?} is not a duration; write \"6h\", \"90m\" or \"2d\""),
                    );
                    ok = false;
                }
            },
            ("rows" | "batch_seconds", Value::Integer(n)) if *n > 0 => {
                let n = u64::try_from(*n).unwrap_or(u64::MAX);
                if k == "rows" {
                    budget.rows = Some(n);
                } else {
                    budget.batch_seconds = Some(n);
                }
            }
            ("duration" | "rows" | "batch_seconds", _) => {
                r.problem(
                    &format!("budget.{k}"),
                    "must be a positive whole number (rows, seconds), or for duration a string such as \"6h\"",
                );
                ok = false;
            }
            _ => {
                r.problem(
                    &format!("budget.{k}"),
                    "unknown field; the fields are duration, rows, batch_seconds",
                );
                ok = false;
            }
        }
    }
    if ok && budget.is_empty() {
        r.problem(
            "budget",
            format!("is empty; give at least one cap: {SHAPE}"),
        );
        ok = false;
    }
    ok.then_some(budget)
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
    let erased = match r.opt_text(
        "erased",
        "a query for the keys that must never come back, e.g. \"SELECT o_orderkey FROM privacy.erasures\"",
    ) {
        Ok(Some(q)) if q.trim_end().trim_end_matches(';').contains(';') => {
            r.problem("erased", "must be one query, without ';' inside");
            None
        }
        Ok(q) => Some(q.map(|q| q.trim_end().trim_end_matches(';').to_owned())),
        Err(()) => None,
    };
    Some(Rollback {
        plan: plan?,
        retain_days: retain_days?,
        without_images: without_images?,
        erased: erased?,
    })
}

mod predicate;
mod scope;
#[cfg(test)]
mod tests;
mod validation;
