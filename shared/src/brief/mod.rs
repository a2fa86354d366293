//! The brief: the one-page TOML document that describes a backfill (reason, owner,
//! reviewer, scope, write strategy, validation, limits, rollback plan).
//!
//! [`Brief::parse`] reads the text and lints it in one pass, returning a validated
//! [`Brief`] or *every* [`Problem`] found, each naming the field and the fix. Checks
//! that need the warehouse (does the target exist, does the source prepare) live in
//! the coordinator's preflight.

mod bounds;
mod lint;
mod reader;

pub use bounds::{BatchBy, BatchRange, Bound, BoundKind, Interval, MAX_BATCHES, Step};
pub use lint::{Problem, limits};

use crate::sql::TableName;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// How sure the operator is that the change is harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Risk {
    LowRiskEnrichment,
    MetricChanging,
    SchemaMigration,
    ProductionCritical,
}

/// How batches write to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    PartitionOverwrite,
    StagingSwap,
    Merge,
    ParallelVersion,
}

/// What happens to target rows inside a batch's range that the source no longer yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnMissing {
    Delete,
    Keep,
}

macro_rules! names {
    ($ty:ty { $($variant:ident = $name:literal),+ $(,)? }) => {
        impl $ty {
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }

            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($name => Some(Self::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names!(Risk {
    LowRiskEnrichment = "low-risk-enrichment",
    MetricChanging = "metric-changing",
    SchemaMigration = "schema-migration",
    ProductionCritical = "production-critical",
});
names!(Strategy {
    PartitionOverwrite = "partition-overwrite",
    StagingSwap = "staging-swap",
    Merge = "merge",
    ParallelVersion = "parallel-version",
});
impl Strategy {
    /// Whether batches write the live target (readers see changes batch by
    /// batch) rather than a table built beside it.
    #[must_use]
    pub fn writes_live_target(self) -> bool {
        matches!(self, Self::Merge | Self::PartitionOverwrite)
    }
}

names!(OnMissing {
    Delete = "delete",
    Keep = "keep",
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub name: String,
    pub reason: String,
    pub owner: String,
    pub reviewer: String,
    pub risk: Risk,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub target: TableName,
    /// The grain: exactly one target row per key.
    pub key: Vec<String>,
    /// The columns this backfill may rewrite.
    pub columns: Vec<String>,
    pub batch_by: BatchBy,
    pub expected_rows: Option<u64>,
    /// Rows of one batch; `$1` is the lower bound (inclusive), `$2` the upper (exclusive).
    pub source: String,
    /// `scope.where`: a predicate on target columns (unqualified, among the
    /// columns the source yields). The backfill owns only the rows that match it.
    #[serde(default)]
    pub filter: Option<String>,
    /// `scope.volatile_ok`: why the source may call a volatile or
    /// clock-reading function (`random()`, `clock_timestamp()`, `now()`),
    /// which the preflight otherwise refuses.
    #[serde(default)]
    pub volatile_ok: Option<String>,
    /// `scope.accept_empty_source`: ranges `[lo, hi)` of `batch_by` where the
    /// source may yield nothing although the target holds rows (history purged
    /// from the source), so the run removes them there.
    #[serde(default)]
    pub accept_empty_source: Vec<(Bound, Bound)>,
    /// `[[scope.periods]]`, in order: where other rules held, the source of
    /// that time. A batch follows the first period whose `until` lies above
    /// its lower bound, else `source`; batches never straddle a period's end.
    #[serde(default)]
    pub periods: Vec<Period>,
}

/// The name of `scope.source`'s rule beside the periods'.
const CURRENT_RULES: &str = "the current rules (scope.source)";

/// One period of `[[scope.periods]]`: the rule for the `batch_by` values from
/// the previous period's `until` (or the scope's start) up to `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub until: Bound,
    /// Why the rule differs ("VAT was 19 % until 2025-03-01").
    pub reason: String,
    pub source: String,
}

impl Scope {
    /// Which rule a batch starting at `lo` follows: the index of its period,
    /// or `periods.len()` for `source`. Index [`Scope::rules`] with it.
    #[must_use]
    pub fn rule_for(&self, lo: Bound) -> usize {
        self.periods
            .iter()
            .position(|p| lo < p.until)
            .unwrap_or(self.periods.len())
    }

    /// Every rule's source, the periods' first and `source` last, each
    /// without a trailing `;`.
    #[must_use]
    pub fn rules(&self) -> Vec<&str> {
        self.periods
            .iter()
            .map(|p| p.source.as_str())
            .chain([self.source.as_str()])
            .map(|s| s.trim_end().trim_end_matches(';'))
            .collect()
    }

    /// The source a batch starting at `lo` runs.
    #[must_use]
    pub fn source_for(&self, lo: Bound) -> &str {
        self.rules()[self.rule_for(lo)]
    }

    /// The rule a batch starting at `lo` follows, in words: the period's
    /// reason, or "the current rules (scope.source)".
    #[must_use]
    pub fn rule_name(&self, lo: Bound) -> &str {
        self.periods
            .get(self.rule_for(lo))
            .map_or(CURRENT_RULES, |p| p.reason.as_str())
    }

    /// Each rule's range of `batch_by`, `[from, until)`, and its name, in
    /// order: the periods', then the current rules' up to the scope's end.
    #[must_use]
    pub fn rule_ranges(&self) -> Vec<(Bound, Bound, &str)> {
        let mut from = self.batch_by.start;
        let mut out = Vec::with_capacity(self.periods.len() + 1);
        for p in &self.periods {
            out.push((from, p.until, p.reason.as_str()));
            from = p.until;
        }
        out.push((from, self.batch_by.end, CURRENT_RULES));
        out
    }

    /// Whether `[lo, hi)` lies inside a range of `accept_empty_source`.
    #[must_use]
    pub fn accepts_empty_source(&self, lo: Bound, hi: Bound) -> bool {
        self.accept_empty_source
            .iter()
            .any(|(a, b)| *a <= lo && hi <= *b)
    }

    /// Whether `table` holds rows of `[$1, $2)` that this backfill owns: with
    /// the source's row count, the measure of source coverage — a range where
    /// the source yields nothing and this is true loses every row it holds —
    /// taken by each batch and by `plan` alike.
    #[must_use]
    pub fn range_has_rows(&self, table: &str) -> String {
        format!(
            "EXISTS (SELECT 1 FROM {table} t WHERE {})",
            self.owned_range("t")
        )
    }

    /// The rows of `[$1, $2)` this backfill owns, as a condition on `alias`
    /// (the only table of its query level, since `scope.where` is unqualified).
    #[must_use]
    pub fn owned_range(&self, alias: &str) -> String {
        let by = crate::sql::quote_ident(&self.batch_by.column);
        let prefix = if alias.is_empty() {
            String::new()
        } else {
            format!("{alias}.")
        };
        format!("{prefix}{by} >= $1 AND {prefix}{by} < $2{}", self.owned())
    }

    /// ` AND (<scope.where>)`, or nothing when the backfill owns its whole range.
    #[must_use]
    pub fn owned(&self) -> String {
        self.filter
            .as_deref()
            .map_or_else(String::new, |w| format!(" AND ({w})"))
    }

    /// Key, then `batch_by` (unless it is part of the key), then the rewritten
    /// columns: the columns a batch reads from the source and writes to the target.
    #[must_use]
    pub fn written_columns(&self) -> Vec<String> {
        let mut all = self.key.clone();
        for c in std::iter::once(&self.batch_by.column).chain(&self.columns) {
            if !all.contains(c) {
                all.push(c.clone());
            }
        }
        all
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub strategy: Strategy,
    pub on_missing: OnMissing,
    /// Keep a before-image of every row the run changes (needed for rollback).
    pub snapshot: bool,
    /// parallel-version: the table built beside the target (default
    /// `<target>__<brief name>`).
    pub new_table: Option<TableName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dependencies {
    pub downstream: Vec<String>,
    /// What cutover runs after the target changed, in order.
    pub refresh: Vec<Refresh>,
    pub stakeholders: Vec<String>,
    /// A dbt project's `manifest.json`, whose graph joins the blast radius.
    pub dbt_manifest: Option<String>,
}

/// One step of the downstream refresh at cutover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Refresh {
    /// A SQL statement (or several), run on the warehouse.
    Sql(String),
    /// A program and its arguments (`["dbt", "build", "--select", "x+"]`),
    /// run without a shell in `dir` (relative to where cutover runs).
    Command {
        run: Vec<String>,
        dir: Option<String>,
    },
}

impl std::fmt::Display for Refresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sql(sql) => f.write_str(sql),
            Self::Command { run, dir } => {
                if let Some(dir) = dir {
                    write!(f, "(in {dir}) ")?;
                }
                f.write_str(&run.join(" "))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub expr: String,
    pub by: Option<String>,
    pub max_change_pct: Option<f64>,
}

impl Metric {
    /// The one statement that measures this metric per group: over the rows
    /// of `from` (read as `t`) that `filter` keeps. The preflight prepares it,
    /// workers run it on a batch's range, `sample` on a slice and `validate` on
    /// the scope, so all of them measure the same thing.
    #[must_use]
    pub fn query(&self, from: &str, filter: &str) -> String {
        format!(
            "SELECT ({group})::text, ({expr})::float8 FROM {from} t WHERE {filter} GROUP BY 1 ORDER BY 1",
            group = self.by.as_deref().unwrap_or("'all'"),
            expr = self.expr
        )
    }

    /// A group as the query returns it, named: a NULL group is "(null)".
    #[must_use]
    pub fn group_name(group: Option<String>) -> String {
        group.unwrap_or_else(|| "(null)".into())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub column: String,
    /// `schema.table(column)`.
    pub references: String,
}

impl Reference {
    /// The parent table and column, from `schema.table(column)`.
    #[must_use]
    pub fn parent(&self) -> Option<(TableName, String)> {
        let (table, rest) = self.references.trim().split_once('(')?;
        let column = rest.strip_suffix(')')?.trim();
        let ok = !column.is_empty()
            && column
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        ok.then(|| TableName::parse(table).map(|t| (t, column.to_owned())))?
    }
}

/// The default of `validation.max_unmatched_pct`. The backfills of the test
/// suite leave at most 1.1 % of a batch's range unmatched (junk rows a merge
/// cleans up); a source that skips the first day of monthly batches leaves
/// 3.3 %, a mis-scoped filter far more.
pub const DEFAULT_MAX_UNMATCHED_PCT: f64 = 2.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// The share (percent) of a batch range's target rows the source may leave
    /// without a counterpart (removed, or left stale under `on_missing = "keep"`)
    /// before the run halts.
    #[serde(default = "default_max_unmatched_pct")]
    pub max_unmatched_pct: f64,
    pub metrics: Vec<Metric>,
    pub references: Vec<Reference>,
    /// Records to inspect before and after (known bad ones, boundary cases): each
    /// the key's values as text, in key order.
    pub edge_cases: Vec<Vec<String>>,
    /// How much (percent) the target's table and indexes may grow over the
    /// run before validation fails; unset, growth past
    /// [`SIZE_GROWTH_WARNING_PCT`] is only warned of.
    #[serde(default)]
    pub max_size_growth_pct: Option<f64>,
    /// The least physical order of the `batch_by` column (`pg_stats.correlation`,
    /// -1 to 1) the target may be left with.
    #[serde(default)]
    pub min_correlation: Option<f64>,
    /// `[[validation.downstream]]`: metrics where stakeholders read them.
    #[serde(default)]
    pub downstream: Vec<Downstream>,
    /// `[[validation.queries]]`: queries the dashboards run, timed before
    /// the run and on what it will expose.
    #[serde(default)]
    pub queries: Vec<Query>,
}

/// `[[validation.queries]]`: a query a dashboard runs on the target, and how
/// much slower the run may leave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    pub name: String,
    /// The query as the dashboard runs it; [`Query::TARGET`] where it reads
    /// the target, so it can be timed on a table a swap builds beside it.
    pub sql: String,
    pub max_slowdown_pct: f64,
}

impl Query {
    /// Where a query reads the target, in its `sql`.
    pub const TARGET: &'static str = "{target}";

    /// The query reading `table` (quoted) where it names [`Query::TARGET`].
    #[must_use]
    pub fn on(&self, table: &str) -> String {
        self.sql.replace(Self::TARGET, table)
    }
}

/// `[[validation.downstream]]`: a metric of a relation downstream of the
/// target (a view, a materialized view, a table built from it, a dbt model
/// by name), measured before the run, after cutover and after rollback, and
/// what the brief expects of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Downstream {
    pub name: String,
    /// `schema.relation`, or a dbt model's name (found in the manifest).
    pub relation: String,
    pub expr: String,
    pub by: Option<String>,
    /// `where`: the relation's rows measured (read as `t`), e.g. the periods
    /// outside the scope.
    #[serde(rename = "where")]
    pub filter: Option<String>,
    pub expect: Expect,
}

/// What a downstream metric should do over the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// `expect_change_pct = [lo, hi]`: every group changes by lo to hi percent.
    ChangePct { lo: f64, hi: f64 },
    /// `unchanged = true`: every group keeps its figure.
    Unchanged,
}

impl Downstream {
    /// The one statement that measures it per group, over `from` (the
    /// relation, quoted).
    #[must_use]
    pub fn query(&self, from: &str) -> String {
        Metric {
            name: self.name.clone(),
            expr: self.expr.clone(),
            by: self.by.clone(),
            max_change_pct: None,
        }
        .query(
            from,
            &self
                .filter
                .as_deref()
                .map_or_else(|| "true".to_owned(), |f| format!("({f})")),
        )
    }
}

/// Growth of the target's size over a run past which `validate` warns, when
/// the brief sets no `validation.max_size_growth_pct`.
pub const SIZE_GROWTH_WARNING_PCT: f64 = 25.0;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Batches queued or running at once.
    pub max_in_flight: u32,
    /// A load guard, polled while the run is active.
    pub pause_when: Option<String>,
    /// Hours (UTC) in which batches may start; may wrap midnight ("22:00-06:00").
    pub window: Option<Window>,
    /// `limits.budget`: hard caps on the run.
    #[serde(default)]
    pub budget: Budget,
    /// `limits.canary`: batches applied first, after which the run waits for
    /// the reviewer (or promotes itself) before the rest.
    #[serde(default)]
    pub canary: Option<Canary>,
}

/// `limits.canary = { batches = 3, pick = "spread", auto = false }`: the run
/// applies these batches first, then waits in state `canary` with their
/// figures until the reviewer promotes it (`backfill promote`), or promotes
/// itself when `auto` and no limit was breached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    /// How many batches: for `spread` exactly, for `edge_cases` at least (the
    /// batches holding edge cases, then spread ones up to this many).
    pub batches: u32,
    pub pick: CanaryPick,
    /// Promote by itself when the canary breached no limit.
    pub auto: bool,
}

/// Which batches a canary applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryPick {
    /// Evenly spread across the scope.
    Spread,
    /// The batches holding `validation.edge_cases`.
    EdgeCases,
    /// The batches that overlap these ranges `[lo, hi)` of `batch_by`.
    Ranges(Vec<(Bound, Bound)>),
}

impl CanaryPick {
    /// The pick as the brief writes it.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Spread => "spread".into(),
            Self::EdgeCases => "edge_cases".into(),
            Self::Ranges(ranges) => ranges
                .iter()
                .map(|(lo, hi)| format!("{lo}..{hi}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// `limits.budget = { duration = "6h", rows = 20000000, batch_seconds = 7200 }`
/// (any subset): the plan's estimate must fit it, and the run halts when it
/// would pass a cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Wall time from the first batch to the last, in seconds: the elapsed
    /// time plus the projected remainder.
    pub duration_seconds: Option<u64>,
    /// Rows written (inserted, updated and deleted).
    pub rows: Option<u64>,
    /// Warehouse time: the sum of the batches' apply durations, in seconds.
    pub batch_seconds: Option<u64>,
}

impl Budget {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.duration_seconds.is_none() && self.rows.is_none() && self.batch_seconds.is_none()
    }

    /// Parses a duration: `"6h"`, `"90m"`, `"45s"`, `"2d"`, or `"6 hours"`.
    #[must_use]
    pub fn parse_duration(text: &str) -> Option<u64> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit())?;
        let (n, unit) = text.split_at(split);
        let n: u64 = n.parse().ok()?;
        let unit = unit.trim().trim_end_matches('s');
        let scale = match unit {
            "" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3_600,
            "d" | "day" => 86_400,
            _ => return None,
        };
        (n > 0).then(|| n.checked_mul(scale)).flatten()
    }
}

/// A daily time window in UTC, `[start, end)`, wrapping midnight when end < start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start: chrono::NaiveTime,
    pub end: chrono::NaiveTime,
}

impl Window {
    /// Parses `"HH:MM-HH:MM"`.
    pub fn parse(text: &str) -> Option<Self> {
        let (a, b) = text.trim().split_once('-')?;
        let t = |s: &str| chrono::NaiveTime::parse_from_str(s.trim(), "%H:%M").ok();
        let window = Self {
            start: t(a)?,
            end: t(b)?,
        };
        (window.start != window.end).then_some(window)
    }

    /// Whether batches may start at `time` (UTC).
    #[must_use]
    pub fn contains(&self, time: chrono::NaiveTime) -> bool {
        if self.start < self.end {
            self.start <= time && time < self.end
        } else {
            time >= self.start || time < self.end
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{} UTC",
            self.start.format("%H:%M"),
            self.end.format("%H:%M")
        )
    }
}

fn default_max_unmatched_pct() -> f64 {
    DEFAULT_MAX_UNMATCHED_PCT
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    pub plan: String,
    pub retain_days: u32,
    /// The way back when a live write keeps no before-images (a nightly
    /// snapshot, a rebuild from raw data), stated by the brief and logged.
    #[serde(default)]
    pub without_images: Option<String>,
    /// A query for the keys (the target's key columns, by name) of rows that
    /// must never come back — a privacy erasure: rollback never restores
    /// them, and `backfill forget` removes them from what the run keeps.
    #[serde(default)]
    pub erased: Option<String>,
}

/// A brief that passed the lint. Built only by [`Brief::parse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Brief {
    pub meta: Meta,
    pub scope: Scope,
    pub write: Write,
    pub dependencies: Dependencies,
    pub validation: Validation,
    pub limits: Limits,
    pub rollback: Rollback,
}

/// The lint's verdict on a brief: every problem found, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct BriefError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for BriefError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "the brief has {n} problem{}; fix {} and run again:",
            if n == 1 { "" } else { "s" },
            if n == 1 { "it" } else { "them" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl Brief {
    /// Parses and lints a brief's TOML text.
    pub fn parse(text: &str) -> Result<Self, BriefError> {
        lint::lint(text).map_err(|problems| BriefError { problems })
    }

    /// The hash that names this exact text: workers refuse a message whose hash
    /// differs from the run's.
    #[must_use]
    pub fn hash(text: &str) -> String {
        let digest = Sha256::digest(text.as_bytes());
        digest.iter().fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}
