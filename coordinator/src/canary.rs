//! `limits.canary`: which batches a run applies first ([`pick`]), the figures
//! it waits with in state `canary` ([`figures`], shown by `status` and the
//! report), and `backfill promote RUN` ([`promote`]), the reviewer's act that
//! lets the rest of the run go on.

use crate::lifecycle::approve::as_reviewer;
use crate::validate::{self, GroupDelta};
use crate::{CliError, Result};
use backfill_shared::brief::{BatchRange, Bound, Brief, CanaryPick};
use backfill_shared::control::batches;
use backfill_shared::control::runs::{self, Run, RunState};
use backfill_shared::sql::quote_ident;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool};
use std::collections::BTreeSet;
use uuid::Uuid;

/// The batches `limits.canary` picks from the plan, in order; empty without a
/// canary. Refuses a canary that would leave nothing to promote, and edge
/// cases it cannot place in a batch.
pub async fn pick(pool: &PgPool, brief: &Brief, plan: &[BatchRange]) -> Result<Vec<u32>> {
    let Some(canary) = &brief.limits.canary else {
        return Ok(Vec::new());
    };
    let total = plan.len();
    let mut chosen = BTreeSet::new();
    match &canary.pick {
        CanaryPick::Spread => {}
        CanaryPick::EdgeCases => {
            for case in &brief.validation.edge_cases {
                let at = edge_case_position(pool, brief, case).await?;
                let batch = plan.iter().find(|b| b.lo <= at && at < b.hi).ok_or_else(|| {
                    CliError::BadInput(format!(
                        "limits.canary: edge case ({}) has {} = {at}, outside the scope [{}, {}); list edge cases inside it, or pick \"spread\"",
                        case.join(", "),
                        brief.scope.batch_by.column,
                        brief.scope.batch_by.start,
                        brief.scope.batch_by.end
                    ))
                })?;
                chosen.insert(batch.no);
            }
        }
        CanaryPick::Ranges(ranges) => {
            chosen.extend(
                plan.iter()
                    .filter(|b| ranges.iter().any(|(lo, hi)| b.lo < *hi && *lo < b.hi))
                    .map(|b| b.no),
            );
        }
    }
    if !matches!(canary.pick, CanaryPick::Ranges(_)) {
        let wanted = canary.batches as usize;
        if wanted >= total {
            return Err(CliError::BadInput(format!(
                "limits.canary.batches = {wanted}, but the plan has {total} batch(es): a canary must leave batches to promote; \
                 ask for fewer, or cut the scope into smaller batches"
            )));
        }
        // Evenly spread: the middle batch of each of `wanted` equal stretches
        // (distinct, as there are more batches than stretches), then the first
        // ones not chosen, until there are `wanted`.
        let spread = (0..wanted).map(|i| (2 * i + 1) * total / (2 * wanted));
        for at in spread.chain(0..total) {
            if chosen.len() >= wanted {
                break;
            }
            chosen.insert(plan[at].no);
        }
    }
    if chosen.len() >= total {
        return Err(CliError::BadInput(format!(
            "limits.canary.pick {} covers all {total} batches: a canary must leave batches to promote; pick narrower ranges",
            canary.pick.describe()
        )));
    }
    Ok(chosen.into_iter().collect())
}

/// Where an edge case lies along `batch_by`: read from the target, or from
/// the key itself when `batch_by` is one of its columns (a record the run adds).
async fn edge_case_position(pool: &PgPool, brief: &Brief, case: &[String]) -> Result<Bound> {
    let scope = &brief.scope;
    let by = &scope.batch_by;
    let kind = by.kind();
    let key_text = scope
        .key
        .iter()
        .map(|k| format!("x.{}::text", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" || ', ' || ");
    let found: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT x.{}::{}::text FROM {} x WHERE {key_text} = $1 LIMIT 1",
        quote_ident(&by.column),
        kind.sql_type(),
        scope.target.quoted()
    )))
    .bind(case.join(", "))
    .fetch_optional(pool)
    .await?;
    let from_key = scope
        .key
        .iter()
        .position(|k| *k == by.column)
        .and_then(|i| case.get(i).cloned());
    found
        .or(from_key)
        .and_then(|text| Bound::parse(kind, &text))
        .ok_or_else(|| {
            CliError::BadInput(format!(
                "limits.canary: edge case ({}) is not in {}, so no batch can be said to hold it; \
                 list edge cases the target holds, or pick \"spread\" or explicit ranges",
                case.join(", "),
                scope.target
            ))
        })
}

/// Lets a run waiting at its canary go on, as this session's person, who must
/// be the run's reviewer (never its owner). Returns the promoter's name.
pub async fn promote(pool: &PgPool, run_id: Uuid, claimed: Option<&str>) -> Result<String> {
    let run = runs::load(pool, run_id).await?;
    if run.canary_batches.is_empty() {
        return Err(CliError::WrongState(format!(
            "run {run_id} has no canary (limits.canary): there is nothing to promote"
        )));
    }
    let session = as_reviewer(pool, &run, claimed, "promote").await?;
    match run.state {
        RunState::Canary => {}
        RunState::Running | RunState::Paused if run.in_canary() => {
            let c = batches::counts(pool, run_id).await?;
            return Err(CliError::WrongState(format!(
                "run {run_id} is still applying its canary ({} of {} batches applied in all); promote once it waits in state canary",
                c.applied,
                run.canary_batches.len()
            )));
        }
        _ if run.promoted_at.is_some() => {
            return Err(CliError::WrongState(format!(
                "run {run_id}'s canary was already promoted by {}{}; the run is {}. Nothing was done; `backfill status {run_id}` shows where it stands",
                run.promoted_by.unwrap_or_default(),
                backfill_shared::text::when(run.promoted_at),
                run.state
            )));
        }
        other => {
            return Err(CliError::WrongState(format!(
                "run {run_id} is {other}; only a run waiting at its canary can be promoted{}",
                if other == RunState::Halted {
                    format!(" (the canary halted it: `backfill status {run_id}` says why)")
                } else {
                    String::new()
                }
            )));
        }
    }
    if !runs::promote(pool, run_id, session.name(), false).await? {
        return Err(CliError::WrongState(format!(
            "run {run_id} changed state while promoting; check `backfill status {run_id}`"
        )));
    }
    Ok(session.name().to_owned())
}

/// What the canary showed: its batches, the metric deltas per group, the
/// edge-case records before and now, and the whole run's time at its pace.
#[derive(Debug, Serialize)]
pub struct Figures {
    pub batches: Vec<CanaryBatch>,
    /// Rows inserted, updated and deleted by the canary's applied batches.
    pub rows_written: i64,
    pub metrics: Vec<GroupDelta>,
    /// `validation.edge_cases`: key, whether the run changed it, before, now.
    pub edge_cases: serde_json::Value,
    /// The mean apply time of the canary's batches.
    pub seconds_per_batch: Option<f64>,
    /// The whole run at that pace, `max_in_flight` batches at a time.
    pub projected_run_seconds: Option<f64>,
    /// Whether the run promotes itself (`canary.auto`).
    pub auto: bool,
    pub waiting_since: Option<chrono::DateTime<chrono::Utc>>,
    pub promoted: Option<(String, chrono::DateTime<chrono::Utc>)>,
}

#[derive(Debug, Serialize)]
pub struct CanaryBatch {
    pub batch_no: u32,
    pub lo: String,
    pub hi: String,
    pub applied: bool,
    pub rows_written: i64,
    pub seconds: Option<f64>,
}

/// The canary's figures; `None` for a run without one.
pub async fn figures(pool: &PgPool, run: &Run) -> Result<Option<Figures>> {
    if run.canary_batches.is_empty() {
        return Ok(None);
    }
    let plan = run
        .brief
        .scope
        .batch_by
        .plan()
        .map_err(CliError::BadInput)?;
    let applied = batches::applied_among(pool, run.run_id, &run.canary_batches).await?;
    let written = |b: &batches::Applied| b.rows.inserted + b.rows.updated + b.rows.deleted;
    let batches: Vec<CanaryBatch> = run
        .canary_batches
        .iter()
        .filter_map(|no| plan.get(*no as usize))
        .map(|range| {
            let done = applied.iter().find(|a| a.batch_no == range.no);
            CanaryBatch {
                batch_no: range.no,
                lo: range.lo.to_string(),
                hi: range.hi.to_string(),
                applied: done.is_some(),
                rows_written: done.map_or(0, written),
                seconds: done.map(|a| a.duration_ms as f64 / 1000.0),
            }
        })
        .collect();
    let seconds_per_batch = (!applied.is_empty()).then(|| {
        applied.iter().map(|a| a.duration_ms as f64).sum::<f64>() / applied.len() as f64 / 1000.0
    });
    let in_flight = f64::from(run.brief.limits.max_in_flight.max(1));
    let table = validate::exposed_table(run);
    Ok(Some(Figures {
        rows_written: applied.iter().map(written).sum(),
        metrics: validate::summed_metrics(run, &applied),
        edge_cases: validate::edge_cases(pool, run, &table.quoted())
            .await?
            .detail,
        projected_run_seconds: seconds_per_batch
            .map(|s| s * f64::from(run.batch_count) / in_flight.min(f64::from(run.batch_count))),
        seconds_per_batch,
        batches,
        auto: run.brief.limits.canary.as_ref().is_some_and(|c| c.auto),
        waiting_since: run.canary_at,
        promoted: run.promoted_by.clone().zip(run.promoted_at),
    }))
}

impl Figures {
    /// The canary as `status` prints it.
    #[must_use]
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let done = self.batches.iter().filter(|b| b.applied).count();
        let _ = writeln!(
            s,
            "  canary:   {done} of {} batch(es) applied, {} rows written{}",
            self.batches.len(),
            self.rows_written,
            match (&self.promoted, self.waiting_since) {
                (Some((by, at)), _) => format!(
                    "; promoted by {by} at {}",
                    at.format("%Y-%m-%d %H:%M:%S UTC")
                ),
                (None, Some(since)) => format!(
                    "; waiting since {} for `backfill promote` by the reviewer",
                    since.format("%H:%M:%S UTC")
                ),
                (None, None) if self.auto =>
                    "; promotes itself if no limit is breached (canary.auto)".into(),
                (None, None) => String::new(),
            }
        );
        for b in &self.batches {
            let _ = writeln!(
                s,
                "    batch {} [{}, {}): {}",
                b.batch_no,
                b.lo,
                b.hi,
                match b.seconds {
                    Some(secs) => format!("{} rows written in {secs:.2} s", b.rows_written),
                    None => "not applied yet".into(),
                }
            );
        }
        if let (Some(per), Some(whole)) = (self.seconds_per_batch, self.projected_run_seconds) {
            let _ = writeln!(
                s,
                "    pace:   {per:.2} s per batch; the whole run ~{whole:.0} s at this pace"
            );
        }
        for m in &self.metrics {
            let _ = writeln!(
                s,
                "    metric {} [{}]: {} -> {}{}",
                m.metric,
                crate::report::group_label(&m.group),
                crate::report::fmt_num(m.before),
                crate::report::fmt_num(m.after),
                m.delta_pct()
                    .map_or_else(String::new, |p| format!(" ({p:+.2} %)"))
            );
        }
        for case in self.edge_cases.as_array().into_iter().flatten() {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or("(absent)").to_owned();
            let _ = writeln!(
                s,
                "    edge case ({}): {}",
                text(&case["key"]),
                if case["changed"] == true {
                    format!("{} -> {}", text(&case["before"]), text(&case["now"]))
                } else {
                    format!("unchanged: {}", text(&case["now"]))
                }
            );
        }
        s
    }
}
