//! `backfill plan BRIEF`: what a run would do, without doing it — batches, bounds,
//! the rows and time it will take (measured on sampled batches), the write
//! strategy, the partitions it writes to (and whether partition-overwrite can
//! exchange them whole), and the blast radius.

use crate::error::{CliError, Result};
use crate::preflight::{self, Dependent, Preflight};
use crate::sample::SampledBatch;
use backfill_shared::brief::{BatchRange, Brief, Strategy};
use backfill_shared::checks::Unmatched;
use backfill_shared::partitions::{self, Layout};
use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, Serialize)]
pub struct Plan {
    pub name: String,
    pub target: String,
    pub strategy: String,
    /// What the run does with the writes others make to the target while it
    /// runs (the strategies that build beside it capture them with triggers).
    pub live_writes: &'static str,
    /// What cutover will do after exposing the run.
    pub cutover: String,
    pub on_missing: String,
    pub snapshot: bool,
    pub batch_by: String,
    pub batches: usize,
    pub first: (String, String),
    pub last: (String, String),
    /// What the bounds of a time column are: `UTC` (instants of a
    /// `timestamptz`), `no time zone` (a `timestamp`'s wall-clock values);
    /// `None` for dates and numbers.
    pub bounds_zone: Option<&'static str>,
    /// Rows and time, measured on the sampled batches.
    pub estimate: Estimate,
    /// The planner's statistics; `None` for a table never analysed.
    pub target_rows: Option<i64>,
    pub max_in_flight: u32,
    /// The source run on sampled batches: target rows it would leave unmatched.
    pub unmatched: UnmatchedEstimate,
    /// `limits.budget`: the caps the estimate is held against ([`Plan::over_budget`]).
    pub budget: backfill_shared::brief::Budget,
    /// `limits.canary`: the batches applied first, `[lo, hi)` each; empty without one.
    pub canary: Vec<(u32, String, String)>,
    /// Whether the canary promotes itself when it breaches no limit.
    pub canary_auto: bool,
    /// Which rule each range follows, with its batches: `[[scope.periods]]`
    /// in order, then `scope.source`. Empty without periods.
    pub rules: Vec<RuleUse>,
    /// Where the source yields nothing although the target holds rows.
    pub coverage: Coverage,
    /// The source run twice on the sampled batches: whether it repeats itself.
    pub repeatable: Repeatable,
    /// The target's partitions and the batches that write to each; `None` for
    /// a plain table.
    pub partitions: Option<Layout>,
    /// How partition-overwrite will write, for a partitioned target: which
    /// partitions it exchanges whole, and a `batch_by` that would align it.
    pub partition_note: Option<String>,
    pub dependents: Vec<Dependent>,
    /// Declared in the brief but not found in the catalog or the dbt manifest
    /// (dashboards, exports...).
    pub declared_outside_catalog: Vec<String>,
    /// The brief's dbt manifest: what matched the target, its tests.
    pub dbt: Option<crate::dbt::Radius>,
    /// The brief's stakeholders and the owners of dbt exposures downstream.
    pub stakeholders: Vec<String>,
}

/// What a run will write and how long it will take, from the source run on the
/// sampled batches rather than the planner's guess.
#[derive(Debug, Serialize)]
pub struct Estimate {
    /// How the figures were made, in words.
    pub method: String,
    pub sampled_batches: usize,
    pub rows_per_batch: i64,
    pub rows_total: i64,
    /// The source and the unmatched-rows measure of a sampled batch (the median).
    pub source_seconds_per_batch: f64,
    /// A batch end to end: the source times [`APPLY_FACTOR`] (the writes and
    /// checks), plus the orchestration's [`ORCHESTRATION_SECONDS`].
    pub seconds_per_batch: f64,
    /// Workers assumed (`plan --workers N`), one batch each at a time, at most
    /// `max_in_flight`.
    pub workers: u16,
    pub batches_at_once: u32,
    pub wall_seconds: f64,
}

/// A batch's writes and checks take about this multiple of its source's time:
/// on the benchmark (TPC-H scale 1, every guard on) the source is 100 ms of a
/// 250 ms batch without before-images and of a 290 ms one with them.
pub const APPLY_FACTOR: f64 = 2.5;
/// The same with before-images.
pub const APPLY_FACTOR_WITH_IMAGES: f64 = 2.9;
/// A batch's claim, ledger, leases and events (the benchmark's (d): about 800
/// batches a second on two cores).
pub const ORCHESTRATION_SECONDS: f64 = 0.00125;
/// Connecting, recording and attaching before the first batch.
pub const STARTUP_SECONDS: f64 = 0.5;
/// Workers `plan` assumes unless told.
pub const DEFAULT_WORKERS: u16 = 2;

impl Estimate {
    fn from_samples(brief: &Brief, batches: usize, sampled: &[SampledBatch], workers: u16) -> Self {
        let n = sampled.len().max(1) as f64;
        let rows_per_batch = sampled.iter().map(|b| b.rows).sum::<i64>() as f64 / n;
        // The median: the first sample also pays for its scratch table and a
        // cold cache.
        let mut times: Vec<f64> = sampled.iter().map(|b| b.seconds).collect();
        times.sort_by(f64::total_cmp);
        let source = times.get(times.len() / 2).copied().unwrap_or_default();
        let factor = if brief.write.snapshot {
            APPLY_FACTOR_WITH_IMAGES
        } else {
            APPLY_FACTOR
        };
        let mut estimate = Self {
            method: format!(
                "the source run on {} batches spread over the plan (first, last and between) in a transaction rolled back; \
                 rows: their mean times {batches} batches; time: their median source time times {factor} for the writes and checks, \
                 plus {ORCHESTRATION_SECONDS} s of orchestration per batch and {STARTUP_SECONDS} s to start",
                sampled.len()
            ),
            sampled_batches: sampled.len(),
            rows_per_batch: rows_per_batch.round() as i64,
            rows_total: (rows_per_batch * batches as f64).round() as i64,
            source_seconds_per_batch: source,
            seconds_per_batch: source * factor + ORCHESTRATION_SECONDS,
            workers,
            batches_at_once: 0,
            wall_seconds: 0.0,
        };
        estimate.assume_workers(brief.limits.max_in_flight, batches, workers);
        estimate
    }

    fn assume_workers(&mut self, max_in_flight: u32, batches: usize, workers: u16) {
        self.workers = workers.max(1);
        self.batches_at_once = u32::from(self.workers).min(max_in_flight.max(1));
        let rounds = (batches as f64 / f64::from(self.batches_at_once)).ceil();
        self.wall_seconds = STARTUP_SECONDS + rounds * self.seconds_per_batch;
    }
}

/// Target rows the source would not reproduce, from the sampled batches and
/// extrapolated to the scope.
#[derive(Debug, Serialize)]
pub struct UnmatchedEstimate {
    pub sampled_batches: usize,
    /// Unmatched rows and the rows of the sampled ranges.
    pub rows: i64,
    pub range_rows: i64,
    pub pct: f64,
    /// Extrapolated to every batch: unmatched rows and rows in scope.
    pub estimated_rows: i64,
    pub estimated_scope_rows: i64,
    /// "removed", or "left stale" under `on_missing = "keep"`.
    pub fate: &'static str,
    pub limit_pct: f64,
}

impl UnmatchedEstimate {
    /// Sums the sampled batches and refuses, naming them, those past the limit.
    fn from_samples(brief: &Brief, batches: usize, sampled: &[SampledBatch]) -> Result<Self> {
        let limit = brief.validation.max_unmatched_pct;
        let fate = Unmatched::fate(brief);
        let over: Vec<String> = sampled
            .iter()
            .filter(|b| b.unmatched.rows > 0 && b.unmatched.pct() > limit)
            .filter(|b| !(b.rows == 0 && brief.scope.accepts_empty_source(b.range.lo, b.range.hi)))
            .map(|b| {
                format!(
                    "  [{}, {}): {}",
                    b.range.lo,
                    b.range.hi,
                    b.unmatched.describe_as(brief, "would be")
                )
            })
            .collect();
        if !over.is_empty() {
            return Err(CliError::BadInput(format!(
                "the source leaves more than validation.max_unmatched_pct = {limit}% of a batch's target rows without a counterpart ({fate}), in {} of {} sampled batches:\n{}\n\
                 Fix the source, narrow the backfill with scope.where, or raise validation.max_unmatched_pct if losing these rows is the point.",
                over.len(),
                sampled.len(),
                over.join("\n")
            )));
        }
        let rows: i64 = sampled.iter().map(|b| b.unmatched.rows).sum();
        let range_rows: i64 = sampled.iter().map(|b| b.unmatched.range_rows).sum();
        let share = |v: i64| {
            let n = sampled.len().max(1) as f64;
            (v as f64 / n * batches as f64).round() as i64
        };
        Ok(Self {
            sampled_batches: sampled.len(),
            rows,
            range_rows,
            pct: if range_rows > 0 {
                rows as f64 / range_rows as f64 * 100.0
            } else {
                0.0
            },
            estimated_rows: share(rows),
            estimated_scope_rows: share(range_rows),
            fate,
            limit_pct: limit,
        })
    }
}

/// One rule of a brief with periods and the batches that follow it.
#[derive(Debug, Serialize)]
pub struct RuleUse {
    pub from: String,
    pub until: String,
    /// The period's reason, or "the current rules (scope.source)".
    pub rule: String,
    pub batches: usize,
}

/// The rules of a brief with `[[scope.periods]]`, each with its range and the
/// batches that follow it.
fn rules(brief: &Brief, batches: &[BatchRange]) -> Vec<RuleUse> {
    let scope = &brief.scope;
    if scope.periods.is_empty() {
        return Vec::new();
    }
    scope
        .rule_ranges()
        .into_iter()
        .enumerate()
        .map(|(i, (from, until, rule))| RuleUse {
            from: from.to_string(),
            until: until.to_string(),
            rule: rule.to_owned(),
            batches: batches.iter().filter(|b| scope.rule_for(b.lo) == i).count(),
        })
        .collect()
}

/// Batches whose source coverage `plan` measures, at most: every batch of a
/// plan this size or smaller, an even spread of a larger one.
pub const COVERAGE_BATCHES: usize = 2_000;
/// How long `plan` spends on coverage at most (coarse to fine, so what it
/// measured in that time spans the scope).
pub const COVERAGE_TIME: std::time::Duration = std::time::Duration::from_secs(20);

/// Where the source yields nothing although the target holds rows — history
/// purged from the source (a retention policy, a dropped partition) that
/// `on_missing = "delete"` or partition-overwrite would erase for good.
/// Measured per batch as every batch measures it: whether the source yields
/// a row, and whether the target's range holds one (`Scope::range_has_rows`).
#[derive(Debug, Serialize)]
pub struct Coverage {
    pub measured_batches: usize,
    /// Ranges of consecutive measured batches, `[lo, hi)`, where the source
    /// yields nothing and the target holds rows.
    pub gaps: Vec<(String, String)>,
    /// Those of them inside `scope.accept_empty_source`.
    pub accepted: usize,
}

impl Coverage {
    /// Measures the batches and refuses, naming the ranges, a brief that would
    /// remove rows where the source yields nothing, unless it accepts them.
    async fn measure(pool: &PgPool, brief: &Brief, batches: &[BatchRange]) -> Result<Self> {
        let scope = &brief.scope;
        let n = batches.len();
        let spread: Vec<&BatchRange> = if n <= COVERAGE_BATCHES {
            batches.iter().collect()
        } else {
            (0..COVERAGE_BATCHES)
                .filter_map(|i| batches.get(i * (n - 1) / (COVERAGE_BATCHES - 1)))
                .collect()
        };
        // Coarse to fine (first, last, middle, quarters, …), so a plan cut
        // short by the time cap has still looked across the whole scope.
        let mut order: Vec<usize> = Vec::with_capacity(spread.len());
        let mut seen = vec![false; spread.len()];
        let mut stride = spread.len().next_power_of_two();
        while stride > 0 {
            for i in (0..spread.len())
                .step_by(stride)
                .chain(spread.len().checked_sub(1))
            {
                if !seen[i] {
                    seen[i] = true;
                    order.push(i);
                }
            }
            stride /= 2;
        }
        let range_has_rows = scope.range_has_rows(&scope.target.quoted());
        let sql: Vec<String> = scope
            .rules()
            .into_iter()
            .map(|source| {
                format!("SELECT EXISTS (SELECT 1 FROM ({source}\n) AS s), {range_has_rows}")
            })
            .collect();
        let mut conn = pool.acquire().await?;
        let started = std::time::Instant::now();
        let mut empty: Vec<&BatchRange> = Vec::new();
        let mut measured = 0;
        for i in order {
            if measured > 0 && started.elapsed() > COVERAGE_TIME {
                break;
            }
            let batch = spread[i];
            let rule = sql[scope.rule_for(batch.lo)].as_str();
            let (yields, holds): (bool, bool) = sqlx::query_as(sqlx::AssertSqlSafe(rule))
                .bind(batch.lo)
                .bind(batch.hi)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| {
                    crate::sample::source_failed(e, &format!("batch [{}, {})", batch.lo, batch.hi))
                })?;
            measured += 1;
            if !yields && holds {
                empty.push(batch);
            }
        }
        empty.sort_by_key(|b| b.no);
        let mut gaps: Vec<(BatchRange, bool)> = Vec::new();
        for batch in empty {
            let accepted = scope.accepts_empty_source(batch.lo, batch.hi);
            match gaps.last_mut() {
                Some((last, last_accepted))
                    if last.hi == batch.lo && *last_accepted == accepted =>
                {
                    last.hi = batch.hi;
                }
                _ => gaps.push((*batch, accepted)),
            }
        }
        let refused: Vec<String> = gaps
            .iter()
            .filter(|(_, accepted)| !accepted)
            .map(|(r, _)| format!("{}..{}", r.lo, r.hi))
            .collect();
        if !refused.is_empty() && Unmatched::fate(brief) == "removed" {
            return Err(CliError::BadInput(format!(
                "the source yields nothing where {} holds rows, in {} range(s): {}. This brief would remove those rows for good \
                 (strategy {}, on_missing = {}). If the source's history there was purged and removing them is intended, \
                 accept them: scope.accept_empty_source = [{}]; otherwise restore the source or narrow the scope",
                scope.target,
                refused.len(),
                refused.join(", "),
                brief.write.strategy,
                brief.write.on_missing,
                refused
                    .iter()
                    .map(|r| format!("{r:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(Self {
            measured_batches: measured,
            accepted: gaps.iter().filter(|(_, accepted)| *accepted).count(),
            gaps: gaps
                .into_iter()
                .map(|(r, _)| (r.lo.to_string(), r.hi.to_string()))
                .collect(),
        })
    }
}

/// Whether the source yields the same rows when a batch runs again (a retry, a
/// re-run after a fix): measured by running it twice on each sampled batch in
/// one transaction.
#[derive(Debug, Serialize)]
pub struct Repeatable {
    pub sampled_batches: usize,
    /// Rows one run yielded and the other did not, over the sampled batches.
    pub differing_rows: i64,
    /// `scope.volatile_ok`, when the brief accepts a source that does not repeat itself.
    pub accepted: Option<String>,
}

impl Repeatable {
    /// Refuses, with the batch and an example row, a source that yielded other
    /// rows the second time, unless the brief says why that is intended.
    fn from_samples(brief: &Brief, sampled: &[SampledBatch]) -> Result<Self> {
        let accepted = brief.scope.volatile_ok.clone();
        if accepted.is_none()
            && let Some(b) = sampled.iter().find(|b| b.rerun.differing > 0)
        {
            let shown = |row: &Option<String>| row.clone().unwrap_or_else(|| "(none)".into());
            return Err(CliError::BadInput(format!(
                "scope.source does not repeat itself: run twice on batch [{}, {}) in one transaction, {} row(s) differ \
                 (only the first run: {}; only the second: {}). A retried or re-run batch would write other rows. \
                 Look for a table that changes while it runs, a LIMIT without ORDER BY, or a volatile function; \
                 if it is intended, say why in scope.volatile_ok = \"...\"",
                b.range.lo,
                b.range.hi,
                b.rerun.differing,
                shown(&b.rerun.first),
                shown(&b.rerun.second)
            )));
        }
        Ok(Self {
            sampled_batches: sampled.len(),
            differing_rows: sampled.iter().map(|b| b.rerun.differing).sum(),
            accepted,
        })
    }
}

/// Lints the brief against the warehouse and plans its batches.
pub async fn plan(pool: &PgPool, brief: &Brief) -> Result<(Plan, Vec<BatchRange>, Preflight)> {
    let preflight = preflight::check(pool, brief).await?;
    let batches = brief.scope.batch_by.plan().map_err(CliError::BadInput)?;
    let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
        return Err(CliError::BadInput(
            "scope.batch_by: the plan has no batches".into(),
        ));
    };
    let sampled = crate::sample::sampled_batches(pool, brief, &batches).await?;
    let coverage = Coverage::measure(pool, brief, &batches).await?;
    let repeatable = Repeatable::from_samples(brief, &sampled)?;
    let unmatched = UnmatchedEstimate::from_samples(brief, batches.len(), &sampled)?;
    let estimate = Estimate::from_samples(brief, batches.len(), &sampled, DEFAULT_WORKERS);
    let found: Vec<String> = preflight
        .dependents
        .iter()
        .map(|d| d.name.clone())
        .collect();
    let declared_outside_catalog = brief
        .dependencies
        .downstream
        .iter()
        .filter(|d| {
            // A relation by its name; a dbt exposure or metric by its name or
            // as `exposure:NAME`.
            let d = d.trim();
            let bare = d.split_once(':').map_or(d, |(_, name)| name);
            let normalized = backfill_shared::sql::TableName::parse(d).map(|t| t.to_string());
            !(found.iter().any(|f| f == d || f == bare)
                || normalized.is_some_and(|n| found.contains(&n)))
        })
        .cloned()
        .collect();
    let partitions = layout(pool, brief, &batches).await?;
    let canary = crate::canary::pick(pool, brief, &batches)
        .await?
        .into_iter()
        .filter_map(|no| batches.get(no as usize))
        .map(|b| (b.no, b.lo.to_string(), b.hi.to_string()))
        .collect();
    let partition_note = partitions.as_ref().map(|l| partition_note(brief, l));
    let plan = Plan {
        name: brief.meta.name.clone(),
        target: brief.scope.target.to_string(),
        strategy: brief.write.strategy.to_string(),
        live_writes: match brief.write.strategy {
            Strategy::StagingSwap | Strategy::ParallelVersion => {
                "captured by triggers on the target while the run lasts (until cutover, then on the table swapped in until rollback or cleanup), carried into the table swapped in at cutover; a write inside the scope stops cutover unless accepted"
            }
            Strategy::Merge => {
                "each batch writes a row only as the version it read: a write made meanwhile stands"
            }
            Strategy::PartitionOverwrite if partitions.is_some() => {
                "each batch locks the partitions its range meets (the table, when workers are granted only the table) while it runs: writes there wait for it, and one made before stands (a partition exchanged whole is built again after a write found in it)"
            }
            Strategy::PartitionOverwrite => {
                "the table is not partitioned, so each batch locks it while it runs: batches take it one at a time, writes to it wait for each, and one made before stands"
            }
        },
        cutover: format!(
            "ANALYZE {} (unless --no-analyze), then {} refresh step(s) and the materialized views reading it refreshed",
            brief.scope.target,
            brief.dependencies.refresh.len()
        ),
        on_missing: brief.write.on_missing.to_string(),
        snapshot: brief.write.snapshot,
        batch_by: brief.scope.batch_by.column.clone(),
        batches: batches.len(),
        first: (first.lo.to_string(), first.hi.to_string()),
        last: (last.lo.to_string(), last.hi.to_string()),
        bounds_zone: preflight
            .columns
            .iter()
            .find(|(c, _)| *c == brief.scope.batch_by.column)
            .and_then(|(_, t)| backfill_shared::sql::bounds_zone(t)),
        estimate,
        target_rows: preflight.target_rows,
        max_in_flight: brief.limits.max_in_flight,
        unmatched,
        rules: rules(brief, &batches),
        budget: brief.limits.budget,
        canary,
        canary_auto: brief.limits.canary.as_ref().is_some_and(|c| c.auto),
        coverage,
        repeatable,
        partitions,
        partition_note,
        dependents: preflight.dependents.clone(),
        declared_outside_catalog,
        stakeholders: crate::dbt::stakeholders(
            &brief.dependencies.stakeholders,
            preflight.dbt.as_ref(),
        ),
        dbt: preflight.dbt.clone(),
    };
    Ok((plan, batches, preflight))
}

/// How the brief's batches meet the target's partitions, if it has any.
async fn layout(pool: &PgPool, brief: &Brief, batches: &[BatchRange]) -> Result<Option<Layout>> {
    let mut conn = pool.acquire().await?;
    let target = &brief.scope.target;
    let Some(key) = partitions::partition_key(&mut conn, target).await? else {
        return Ok(None);
    };
    let children = partitions::children(&mut conn, target).await?;
    let by = &brief.scope.batch_by;
    let mut layout = Layout::of(&key, &by.column, &children, batches, by.kind());
    for (used, partition) in layout.partitions.iter_mut().zip(&children) {
        if !used.aligned {
            continue;
        }
        used.obstacle = if brief.write.strategy != Strategy::PartitionOverwrite {
            Some(format!("{} writes rows", brief.write.strategy))
        } else if brief.scope.filter.is_some() {
            Some("scope.where narrows the rows the backfill owns".into())
        } else {
            partitions::exchange_obstacle(&mut conn, target, partition).await?
        };
    }
    Ok(Some(layout))
}

/// What partition-overwrite does with the partitions, or why it cannot
/// exchange them, and the `batch_by` that would let it.
fn partition_note(brief: &Brief, layout: &Layout) -> String {
    let touched = layout.touched().count();
    let exchanged = layout
        .touched()
        .filter(|p| p.aligned && p.obstacle.is_none())
        .count();
    let obstacle = layout
        .touched()
        .find_map(|p| p.obstacle.as_deref().filter(|_| p.aligned));
    if brief.write.strategy != Strategy::PartitionOverwrite {
        return format!(
            "{} writes rows into the {touched} partition(s) the scope touches; the table stays partitioned as it is",
            brief.write.strategy
        );
    }
    if !layout.by_batch_column {
        return format!(
            "the table is partitioned by {}, not by {} alone: batches delete and insert rows, no partition is exchanged",
            layout.partition_key, brief.scope.batch_by.column
        );
    }
    let mut note = if brief.scope.filter.is_some() {
        "scope.where narrows the rows the backfill owns, so no partition is rewritten whole: batches delete and insert rows".to_owned()
    } else {
        format!(
            "{exchanged} of {touched} partition(s) the scope touches are each one batch's range, built whole and exchanged{}",
            if exchanged < touched {
                "; the other batches delete and insert rows"
            } else {
                ""
            }
        )
    };
    if let Some(obstacle) = obstacle {
        note.push_str(&format!(
            ". Not exchanged although aligned: {obstacle} (workers decide with their own role)"
        ));
    }
    if brief.scope.filter.is_none()
        && let Some((start, end, step)) = layout.aligning_step(brief.scope.batch_by.kind())
    {
        note.push_str(&format!(
            ". To exchange every touched partition: batch_by = {{ column = \"{}\", start = \"{start}\", end = \"{end}\", step = \"{step}\" }}",
            brief.scope.batch_by.column
        ));
    }
    note
}

impl Plan {
    /// The caps of `limits.budget` the estimate passes, each in words; empty
    /// when it fits. The warehouse time is the batches' estimated apply time.
    #[must_use]
    pub fn over_budget(&self) -> Vec<String> {
        let e = &self.estimate;
        let mut over = Vec::new();
        if let Some(cap) = self.budget.rows
            && e.rows_total as f64 > cap as f64
        {
            over.push(format!(
                "~{} rows to write, past budget.rows = {cap}",
                e.rows_total
            ));
        }
        let batch_seconds = (e.seconds_per_batch - ORCHESTRATION_SECONDS) * self.batches as f64;
        if let Some(cap) = self.budget.batch_seconds
            && batch_seconds > cap as f64
        {
            over.push(format!(
                "~{batch_seconds:.0} s of warehouse time, past budget.batch_seconds = {cap}"
            ));
        }
        if let Some(cap) = self.budget.duration_seconds
            && e.wall_seconds > cap as f64
        {
            over.push(format!(
                "~{:.0} s with {} worker(s), past budget.duration = {cap} s",
                e.wall_seconds, e.workers
            ));
        }
        over
    }

    /// The wall time for `workers` workers instead of [`DEFAULT_WORKERS`].
    #[must_use]
    pub fn with_workers(mut self, workers: u16) -> Self {
        self.estimate
            .assume_workers(self.max_in_flight, self.batches, workers);
        self
    }

    /// The human-readable form printed by `backfill plan`.
    #[must_use]
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "Backfill {} on {}", self.name, self.target);
        let _ = writeln!(
            s,
            "  write:    {} (on_missing = {}, before-images {})",
            self.strategy,
            self.on_missing,
            if self.snapshot {
                "on"
            } else {
                "OFF: no rollback"
            }
        );
        let _ = writeln!(s, "  beside:   {}", self.live_writes);
        let _ = writeln!(s, "  cutover:  {}", self.cutover);
        let _ = writeln!(
            s,
            "  batches:  {} by {}, at most {} in flight",
            self.batches, self.batch_by, self.max_in_flight
        );
        let zone = self
            .bounds_zone
            .map_or_else(String::new, |z| format!(" {z}"));
        let _ = writeln!(s, "  first:    [{}, {}){zone}", self.first.0, self.first.1);
        let _ = writeln!(s, "  last:     [{}, {}){zone}", self.last.0, self.last.1);
        let e = &self.estimate;
        let _ = writeln!(
            s,
            "  rows:     ~{} per batch, ~{} in total (target holds {}); measured on {} sampled batches",
            e.rows_per_batch,
            e.rows_total,
            self.target_rows.map_or_else(
                || "an unknown number: never analysed".to_owned(),
                |n| format!("~{n}")
            ),
            e.sampled_batches
        );
        let _ = writeln!(
            s,
            "  time:     ~{:.1} s with {} worker(s) ({} batch(es) at once, ~{:.3} s each; source ~{:.3} s per batch)",
            e.wall_seconds,
            e.workers,
            e.batches_at_once,
            e.seconds_per_batch,
            e.source_seconds_per_batch
        );
        let u = &self.unmatched;
        let _ = writeln!(
            s,
            "  unmatched: {} of {} target rows ({:.2}%) in {} sampled batches have no counterpart in the source; \
             ~{} of ~{} rows in scope would be {} (limit {}% per batch)",
            u.rows,
            u.range_rows,
            u.pct,
            u.sampled_batches,
            u.estimated_rows,
            u.estimated_scope_rows,
            u.fate,
            u.limit_pct
        );
        if !self.budget.is_empty() {
            let over = self.over_budget();
            let _ = writeln!(
                s,
                "  budget:   {}",
                if over.is_empty() {
                    "the estimate fits limits.budget".to_owned()
                } else {
                    format!("OVER: {}", over.join("; "))
                }
            );
        }
        if !self.canary.is_empty() {
            let _ = writeln!(
                s,
                "  canary:   batches {} first, then {}",
                self.canary
                    .iter()
                    .map(|(no, lo, hi)| format!("{no} [{lo}, {hi})"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if self.canary_auto {
                    "the rest at once if no limit is breached (canary.auto)"
                } else {
                    "the run waits for the reviewer's `backfill promote`"
                }
            );
        }
        for r in &self.rules {
            let _ = writeln!(
                s,
                "  rule:     [{}, {}) {} batch(es): {}",
                r.from, r.until, r.batches, r.rule
            );
        }
        let c = &self.coverage;
        let _ = writeln!(
            s,
            "  coverage: {}",
            if c.gaps.is_empty() {
                format!(
                    "the source yields rows wherever the target holds them ({} of {} batches measured)",
                    c.measured_batches, self.batches
                )
            } else {
                format!(
                    "the source yields NOTHING where the target holds rows in {} ({} accepted by scope.accept_empty_source; {} of {} batches measured)",
                    c.gaps
                        .iter()
                        .map(|(lo, hi)| format!("[{lo}, {hi})"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    c.accepted,
                    c.measured_batches,
                    self.batches
                )
            }
        );
        let r = &self.repeatable;
        let _ = writeln!(
            s,
            "  repeats:  {}",
            match (&r.accepted, r.differing_rows) {
                (None, _) => format!(
                    "the source run twice on {} sampled batches yielded the same rows",
                    r.sampled_batches
                ),
                (Some(why), 0) => format!(
                    "the source run twice on {} sampled batches yielded the same rows (volatile_ok: {why})",
                    r.sampled_batches
                ),
                (Some(why), n) => format!(
                    "NO: run twice on {} sampled batches, {n} row(s) differed; accepted by volatile_ok: {why}",
                    r.sampled_batches
                ),
            }
        );
        if let Some(layout) = &self.partitions {
            let _ = writeln!(
                s,
                "Partitions: {} by {}; the scope writes to {} of {}",
                self.target,
                layout.partition_key,
                layout.touched().count(),
                layout.partitions.len()
            );
            for p in layout.touched() {
                let _ = writeln!(
                    s,
                    "  {:<40} {:<52} {} batch(es){}",
                    p.name,
                    p.bound,
                    p.batches,
                    if p.aligned && p.obstacle.is_none() {
                        ", exchanged whole"
                    } else {
                        ""
                    }
                );
            }
            if let Some(note) = &self.partition_note {
                let _ = writeln!(s, "  {note}");
            }
        }
        let _ = writeln!(s, "Blast radius:");
        if self.dependents.is_empty() {
            let _ = writeln!(
                s,
                "  nothing in the catalog{} reads or references {}",
                if self.dbt.is_some() {
                    " or the dbt manifest"
                } else {
                    ""
                },
                self.target
            );
        }
        for d in &self.dependents {
            let _ = writeln!(
                s,
                "  {:<40} {:<28} {}{}{}",
                d.name,
                d.kind,
                if d.depth > 1 {
                    format!("via {} hops, ", d.depth)
                } else {
                    String::new()
                },
                if d.declared {
                    "declared"
                } else {
                    "NOT DECLARED in dependencies.downstream"
                },
                d.owner
                    .as_ref()
                    .map(|o| format!(", owner {o}"))
                    .unwrap_or_default()
            );
        }
        if let Some(dbt) = &self.dbt {
            let _ = writeln!(s, "  dbt ({}): {}", dbt.manifest, dbt.summary(&self.target));
        }
        for d in &self.declared_outside_catalog {
            let _ = writeln!(s, "  {d:<40} {:<28} declared (outside the catalog)", "");
        }
        let _ = writeln!(
            s,
            "  stakeholders: {}",
            if self.stakeholders.is_empty() {
                "none named".into()
            } else {
                self.stakeholders.join(", ")
            }
        );
        s
    }
}
