//! Per-batch checks: what the worker measures on a batch's range inside its
//! transaction (before and after the write), and the pure function the
//! coordinator uses to hold those figures against the brief's limits.
//!
//! A limit is named so an operator can accept a breach of it by name
//! (`backfill resume RUN --accept "..."`): `max_change_pct:<metric>`,
//! `references:<column>`, `expected_rows`, `max_unmatched_pct`.

use crate::brief::{Brief, OnMissing, Scope, Strategy};
use crate::sql::{column_list, key_join, quote_ident};
use serde::{Deserialize, Serialize};

/// One metric of one group on a batch's range, before and after the write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricGroup {
    pub metric: String,
    pub group: String,
    pub before: Option<f64>,
    pub after: Option<f64>,
}

impl MetricGroup {
    /// The change in percent of the value before (`None` when there is no base:
    /// a group that appears or starts at zero).
    #[must_use]
    pub fn change_pct(&self) -> Option<f64> {
        let before = self.before?;
        let after = self.after.unwrap_or(0.0);
        if before == 0.0 {
            return (after != 0.0).then_some(f64::INFINITY);
        }
        Some((after - before) / before.abs() * 100.0)
    }
}

/// Figures of one batch, carried in its event and kept in the ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchChecks {
    /// NULLs per rewritten column in the range, after the write.
    #[serde(default)]
    pub nulls: Vec<(String, i64)>,
    #[serde(default)]
    pub metrics: Vec<MetricGroup>,
    /// Rows whose reference has no parent, per referencing column, after the write.
    #[serde(default)]
    pub orphans: Vec<(String, i64)>,
    #[serde(default)]
    pub unmatched: Unmatched,
    /// The source yielded nothing for the batch's range although the target
    /// held rows there (history purged from the source?): every one of them is
    /// unmatched.
    #[serde(default)]
    pub empty_source: bool,
    /// ... and the range lies in `scope.accept_empty_source`, so losing them
    /// is what the brief means: the unmatched-rows limit does not apply.
    #[serde(default)]
    pub empty_source_accepted: bool,
    /// Set when partition-overwrite rewrote the batch's partition whole and
    /// exchanged it, instead of deleting and inserting rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<Box<Exchanged>>,
}

/// A partition a batch built whole and exchanged for the one the target held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchanged {
    /// The partition, under the name it had (`schema.table`).
    pub partition: String,
    /// Its bound, as PostgreSQL prints it (`FOR VALUES FROM (…) TO (…)`).
    pub bound: String,
    /// The partition it replaced, detached and kept under this name as the
    /// batch's before-image; `None` when the run keeps no before-images.
    pub kept_as: Option<String>,
    /// The rows written, and the transaction that wrote them (its `xid`, as
    /// `xmin` shows it): rollback tells a later change by a row count that
    /// differs or a row another transaction wrote.
    pub rows: i64,
    pub xid: String,
}

/// The batch range's target rows that the source did not reproduce: removed
/// (`partition-overwrite`, `on_missing = "delete"`) or left stale (`"keep"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmatched {
    /// Target rows of the range whose key the source did not yield.
    pub rows: i64,
    /// Of those, the rows whose `batch_by` value is the batch's lower bound.
    pub at_lower_bound: i64,
    /// Target rows the range held before the write.
    pub range_rows: i64,
    /// The source's rows at the batch's lower bound, counted only when every
    /// unmatched row sits there (`None`: not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_at_lower_bound: Option<i64>,
}

impl Unmatched {
    /// The unmatched rows as a percent of the range's rows (0 for an empty range).
    #[must_use]
    pub fn pct(&self) -> f64 {
        if self.range_rows <= 0 {
            0.0
        } else {
            self.rows as f64 / self.range_rows as f64 * 100.0
        }
    }

    /// What happened to unmatched rows under this brief.
    #[must_use]
    pub fn fate(brief: &Brief) -> &'static str {
        if brief.write.strategy == Strategy::PartitionOverwrite
            || brief.write.on_missing == OnMissing::Delete
        {
            "removed"
        } else {
            "left stale"
        }
    }

    /// Whether the unmatched rows all sit at the batch's lower bound: the sign of
    /// a source filtered with `> $1` instead of `>= $1`.
    #[must_use]
    pub fn all_at_lower_bound(&self) -> bool {
        self.rows > 0 && self.at_lower_bound == self.rows
    }

    /// Whether the source skips the lower bound: every unmatched row sits
    /// there, and the source yields no row there at all. That is a source
    /// written with `> $1`, whatever the share of rows it loses.
    #[must_use]
    pub fn skips_lower_bound(&self) -> bool {
        self.all_at_lower_bound() && self.source_at_lower_bound == Some(0)
    }

    /// The hint when the rows sit at the lower bound, if they do.
    #[must_use]
    pub fn lower_bound_hint(&self) -> Option<&'static str> {
        if self.skips_lower_bound() {
            Some(
                "all of them sit at the batch's lower bound, where the source yields no row: \
                 does it use `> $1` instead of `>= $1`?",
            )
        } else {
            self.all_at_lower_bound().then_some(
                "all of them sit at the batch's lower bound: the source yields nothing at the \
                 lower bound of each batch — does it use `>= $1`?",
            )
        }
    }

    /// One sentence on these rows, for a breach, `validate` and the report.
    #[must_use]
    pub fn describe(&self, brief: &Brief) -> String {
        self.describe_as(brief, "were")
    }

    /// The same sentence with another verb for their fate ("would be", before the run).
    #[must_use]
    pub fn describe_as(&self, brief: &Brief, were: &str) -> String {
        let mut text = format!(
            "{} of {} target rows in the range ({:.2}%) have no counterpart in the source and {were} {}",
            self.rows,
            self.range_rows,
            self.pct(),
            Self::fate(brief)
        );
        if let Some(hint) = self.lower_bound_hint() {
            text.push_str("; ");
            text.push_str(hint);
        }
        text
    }

    /// The one measurement of unmatched rows where nothing is deleted (the
    /// worker under `on_missing = "keep"`, `plan`, `sample`): the rows of
    /// `table` in `[$1, $2)` against the source's rows in `source_rows`.
    /// Yields `(unmatched, unmatched at the lower bound, rows of the range)`.
    #[must_use]
    pub fn measure_sql(scope: &Scope, table: &str, source_rows: &str) -> String {
        let by = quote_ident(&scope.batch_by.column);
        // A hash join against the source's distinct keys: a correlated EXISTS per
        // target row would scan the source rows once per row. The range is taken
        // first, alone, so `scope.where` reads only the target's columns.
        format!(
            "SELECT count(*) FILTER (WHERE s.bf_hit IS NULL), count(*) FILTER (WHERE s.bf_hit IS NULL AND t.{by} = $1), count(*)
               FROM (SELECT * FROM {table} t WHERE {owned}) t
               LEFT JOIN (SELECT DISTINCT {keys}, true AS bf_hit FROM {source_rows}) s ON {matched}",
            keys = column_list(&scope.key, None),
            matched = key_join(&scope.key, "t", "s"),
            owned = scope.owned_range("t")
        )
    }
}

/// A limit of the brief that a batch broke.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breach {
    pub limit: String,
    pub batch_no: u32,
    pub message: String,
}

/// What a run has used of its budget so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetUse {
    pub rows_written: i64,
    /// The applied batches' apply durations, summed.
    pub batch_seconds: f64,
    /// Since the run was recorded.
    pub elapsed_seconds: f64,
    pub applied: usize,
    pub total: usize,
}

impl BudgetUse {
    /// The elapsed time plus the remaining batches at the pace so far; `None`
    /// until a twentieth of the batches (at least three) give a pace.
    #[must_use]
    pub fn projected_seconds(&self) -> Option<f64> {
        if self.applied < (self.total / 20).max(3).min(self.total) || self.applied == 0 {
            return None;
        }
        let pace = self.elapsed_seconds / self.applied as f64;
        Some(self.elapsed_seconds + pace * (self.total - self.applied) as f64)
    }
}

/// Holds what the run has used against `limits.budget`, skipping caps already
/// accepted (`backfill resume --accept`): rows written, warehouse seconds, and
/// the elapsed time plus the projected remainder.
#[must_use]
pub fn evaluate_budget(
    brief: &Brief,
    batch_no: u32,
    used: &BudgetUse,
    accepted: &[String],
) -> Vec<Breach> {
    let budget = brief.limits.budget;
    let mut breaches = Vec::new();
    let mut breach = |limit: &str, message: String| {
        if !accepted.iter().any(|a| a == limit) {
            breaches.push(Breach {
                limit: limit.to_owned(),
                batch_no,
                message: format!(
                    "batch {batch_no}: {message}; the run is held at its budget — if it may go on, resume with --accept \"why\""
                ),
            });
        }
    };
    if let Some(cap) = budget.rows
        && used.rows_written as f64 > cap as f64
    {
        breach(
            "budget:rows",
            format!(
                "{} rows written, past limits.budget.rows = {cap}",
                used.rows_written
            ),
        );
    }
    if let Some(cap) = budget.batch_seconds
        && used.batch_seconds > cap as f64
    {
        breach(
            "budget:batch_seconds",
            format!(
                "{:.0} s of warehouse time spent by the batches, past limits.budget.batch_seconds = {cap}",
                used.batch_seconds
            ),
        );
    }
    if let Some(cap) = budget.duration_seconds
        && let Some(projected) = used.projected_seconds()
        && projected > cap as f64
    {
        breach(
            "budget:duration",
            format!(
                "{:.0} s elapsed and {:.0} s more at this pace ({} of {} batches applied) pass limits.budget.duration = {cap} s",
                used.elapsed_seconds,
                projected - used.elapsed_seconds,
                used.applied,
                used.total
            ),
        );
    }
    breaches
}

/// How far cumulative rows may run past `expected_rows` before the run halts.
pub const EXPECTED_ROWS_TOLERANCE_PCT: f64 = 10.0;

/// Holds one batch's figures (and the run's cumulative source rows) against the
/// brief's limits, skipping limits already accepted.
#[must_use]
pub fn evaluate(
    brief: &Brief,
    batch_no: u32,
    checks: &BatchChecks,
    cumulative_rows: i64,
    accepted: &[String],
) -> Vec<Breach> {
    let mut breaches = Vec::new();
    let mut breach = |limit: String, message: String| {
        if !accepted.contains(&limit) {
            breaches.push(Breach {
                limit,
                batch_no,
                message,
            });
        }
    };
    for metric in &brief.validation.metrics {
        let Some(limit) = metric.max_change_pct else {
            continue;
        };
        let worst = checks
            .metrics
            .iter()
            .filter(|g| g.metric == metric.name)
            .filter_map(|g| g.change_pct().map(|pct| (g, pct)))
            .filter(|(_, pct)| pct.abs() > limit)
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()));
        if let Some((g, pct)) = worst {
            breach(
                format!("max_change_pct:{}", metric.name),
                format!(
                    "batch {batch_no}: {} of group {} moved {pct:+.2}% ({} -> {}), more than max_change_pct = {limit}",
                    metric.name,
                    g.group,
                    fmt_value(g.before),
                    fmt_value(g.after)
                ),
            );
        }
    }
    for (column, n) in checks.orphans.iter().filter(|(_, n)| *n > 0) {
        breach(
            format!("references:{column}"),
            format!("batch {batch_no}: {n} rows have a {column} with no parent row"),
        );
    }
    let limit = brief.validation.max_unmatched_pct;
    let share_breached = checks.unmatched.rows > 0
        && checks.unmatched.pct() > limit
        && !checks.empty_source_accepted;
    if !share_breached && checks.unmatched.skips_lower_bound() && !checks.empty_source {
        // Under the share, but the shape of a `> $1`: every batch would lose
        // its first rows, a little each time.
        breach(
            "unmatched_at_lower_bound".into(),
            format!(
                "batch {batch_no}: {} (under max_unmatched_pct = {limit}, but the source skips the lower bound); fix the source, or if the brief means it, resume with --accept",
                checks.unmatched.describe(brief)
            ),
        );
    }
    if share_breached {
        let purged = if checks.empty_source {
            "; the source yields nothing for this range although the target holds rows there — \
             history purged from the source? If the run should remove them, list the range in scope.accept_empty_source"
        } else {
            ""
        };
        breach(
            "max_unmatched_pct".into(),
            format!(
                "batch {batch_no}: {} (max_unmatched_pct = {limit}){purged}; if the brief means it, raise the limit or resume with --accept",
                checks.unmatched.describe(brief)
            ),
        );
    }
    if let Some(expected) = brief.scope.expected_rows {
        let ceiling = expected as f64 * (1.0 + EXPECTED_ROWS_TOLERANCE_PCT / 100.0);
        if cumulative_rows as f64 > ceiling {
            breach(
                "expected_rows".into(),
                format!(
                    "after batch {batch_no} the source has yielded {cumulative_rows} rows, more than expected_rows = {expected} (+{EXPECTED_ROWS_TOLERANCE_PCT}%)"
                ),
            );
        }
    }
    breaches
}

fn fmt_value(v: Option<f64>) -> String {
    v.map_or_else(|| "none".to_owned(), |v| format!("{v:.2}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brief() -> Brief {
        let text = r#"
[brief]
name = "t"
reason = "r"
owner = "a"
reviewer = "b"
risk = "metric-changing"
[scope]
target = "t"
key = ["id"]
columns = ["v"]
batch_by = { column = "id", start = 0, end = 100, step = 10 }
expected_rows = 100
source = "SELECT id, v FROM s WHERE id >= $1 AND id < $2"
[write]
strategy = "merge"
on_missing = "keep"
snapshot = true
[dependencies]
downstream = []
stakeholders = []
[validation]
max_duplicate_keys = 0
[[validation.metrics]]
name = "total"
expr = "sum(v)"
max_change_pct = 10
[[validation.references]]
column = "cust"
references = "c(id)"
[limits]
max_in_flight = 1
[rollback]
plan = "p"
retain_days = 1
"#;
        Brief::parse(text).unwrap()
    }

    fn group(before: f64, after: f64) -> MetricGroup {
        MetricGroup {
            metric: "total".into(),
            group: "all".into(),
            before: Some(before),
            after: Some(after),
        }
    }

    #[test]
    fn within_limits_is_quiet() {
        let checks = BatchChecks {
            metrics: vec![group(100.0, 109.0)],
            ..BatchChecks::default()
        };
        assert!(evaluate(&brief(), 1, &checks, 50, &[]).is_empty());
    }

    #[test]
    fn each_limit_is_named_with_figures() {
        let checks = BatchChecks {
            metrics: vec![group(100.0, 50.0), group(100.0, 95.0)],
            orphans: vec![("cust".into(), 2)],
            unmatched: Unmatched {
                rows: 7,
                at_lower_bound: 7,
                range_rows: 210,
                source_at_lower_bound: None,
            },
            ..BatchChecks::default()
        };
        let breaches = evaluate(&brief(), 4, &checks, 111, &[]);
        let limits: Vec<_> = breaches.iter().map(|b| b.limit.as_str()).collect();
        assert_eq!(
            limits,
            [
                "max_change_pct:total",
                "references:cust",
                "max_unmatched_pct",
                "expected_rows"
            ]
        );
        let unmatched = &breaches[2].message;
        assert!(
            unmatched.contains("7 of 210")
                && unmatched.contains("3.33%")
                && unmatched.contains(">= $1")
                && unmatched.contains("left stale"),
            "{unmatched}"
        );
        assert!(
            breaches[0].message.contains("-50.00%"),
            "{}",
            breaches[0].message
        );
        assert!(breaches[0].message.contains("100.00 -> 50.00"));
    }

    #[test]
    fn a_source_that_skips_the_lower_bound_halts_under_the_share() {
        let skipping = Unmatched {
            rows: 1,
            at_lower_bound: 1,
            range_rows: 12_000,
            source_at_lower_bound: Some(0),
        };
        let checks = BatchChecks {
            unmatched: skipping,
            ..BatchChecks::default()
        };
        let breaches = evaluate(&brief(), 3, &checks, 0, &[]);
        assert_eq!(breaches.len(), 1, "{breaches:?}");
        assert_eq!(breaches[0].limit, "unmatched_at_lower_bound");
        assert!(
            breaches[0].message.contains("`>= $1`"),
            "{}",
            breaches[0].message
        );
        // The source yields rows there: a real loss under the share passes.
        for source_at_lower_bound in [Some(4), None] {
            let checks = BatchChecks {
                unmatched: Unmatched {
                    source_at_lower_bound,
                    ..skipping
                },
                ..BatchChecks::default()
            };
            assert!(evaluate(&brief(), 3, &checks, 0, &[]).is_empty());
        }
        assert!(
            evaluate(
                &brief(),
                3,
                &checks,
                0,
                &["unmatched_at_lower_bound".into()]
            )
            .is_empty()
        );
    }

    #[test]
    fn accepted_limits_are_skipped() {
        let checks = BatchChecks {
            metrics: vec![group(100.0, 0.0)],
            ..BatchChecks::default()
        };
        assert!(evaluate(&brief(), 1, &checks, 0, &["max_change_pct:total".into()]).is_empty());
    }

    #[test]
    fn unmatched_rows_within_the_default_pass_and_zero_forbids_any() {
        let checks = |rows, range_rows| BatchChecks {
            unmatched: Unmatched {
                rows,
                at_lower_bound: 0,
                range_rows,
                source_at_lower_bound: None,
            },
            ..BatchChecks::default()
        };
        // 21 junk rows of 1,875 (1.1 %) pass the default; 3.3 % does not.
        assert!(evaluate(&brief(), 1, &checks(21, 1875), 0, &[]).is_empty());
        assert_eq!(evaluate(&brief(), 1, &checks(7, 210), 0, &[]).len(), 1);
        let mut strict = brief();
        strict.validation.max_unmatched_pct = 0.0;
        assert_eq!(evaluate(&strict, 1, &checks(1, 100_000), 0, &[]).len(), 1);
        assert!(evaluate(&strict, 1, &checks(0, 100), 0, &[]).is_empty());
        let mut loose = brief();
        loose.validation.max_unmatched_pct = 100.0;
        assert!(evaluate(&loose, 1, &checks(100, 100), 0, &[]).is_empty());
        assert!(
            evaluate(
                &brief(),
                1,
                &checks(7, 210),
                0,
                &["max_unmatched_pct".into()]
            )
            .is_empty()
        );
    }

    #[test]
    fn change_from_zero_is_infinite() {
        assert_eq!(group(0.0, 5.0).change_pct(), Some(f64::INFINITY));
        assert_eq!(group(0.0, 0.0).change_pct(), None);
    }

    #[test]
    fn a_budget_holds_rows_warehouse_time_and_the_projected_duration() {
        let mut b = brief();
        b.limits.budget = crate::brief::Budget {
            duration_seconds: Some(100),
            rows: Some(1000),
            batch_seconds: Some(60),
        };
        let used = |rows, batch_seconds, elapsed_seconds, applied| BudgetUse {
            rows_written: rows,
            batch_seconds,
            elapsed_seconds,
            applied,
            total: 100,
        };
        assert!(evaluate_budget(&b, 1, &used(1000, 60.0, 50.0, 50), &[]).is_empty());
        let limits = |u: &BudgetUse, accepted: &[String]| {
            evaluate_budget(&b, 1, u, accepted)
                .into_iter()
                .map(|x| x.limit)
                .collect::<Vec<_>>()
        };
        // 60 s for 50 batches: 120 s projected for 100.
        assert_eq!(
            limits(&used(1001, 61.0, 60.0, 50), &[]),
            ["budget:rows", "budget:batch_seconds", "budget:duration"]
        );
        // Too few batches to project from.
        assert!(limits(&used(0, 0.0, 90.0, 2), &[]).is_empty());
        // An accepted cap no longer holds the run.
        assert_eq!(
            limits(&used(2000, 0.0, 1.0, 50), &["budget:rows".into()]),
            Vec::<String>::new()
        );
    }
}
