//! The coordinator's side of the workers' events: each applied batch is counted
//! once (from its event, or from the ledger when the event was lost) and held
//! against the brief's limits (`backfill_shared::checks` judges them); a breach
//! or a failed batch halts the run.

use super::Finish;
use crate::error::Result;
use backfill_shared::checks;
use backfill_shared::control::runs::{self, RunState};
use backfill_shared::control::{batches, log};
use backfill_shared::message::{self, Event};
use indicatif::ProgressBar;
use sqlx::PgPool;
use std::collections::HashSet;
use tracing::warn;
use uuid::Uuid;

/// Most events taken in one round before the window is filled again.
pub(super) const EVENTS_PER_ROUND: usize = 512;

/// One worker event: counts an applied batch (and holds it against the limits),
/// or reports a failed one. Returns the halt reason, if the run must halt.
pub(super) async fn on_event(
    data: &[u8],
    tally: &mut Tally,
    in_flight: &mut HashSet<u32>,
    run: &runs::Run,
    accepted: &[String],
    pool: &PgPool,
    bar: &ProgressBar,
) -> Result<Option<String>> {
    match message::decode_event(data) {
        Ok(Event::Applied {
            batch_no,
            rows_source,
            rows_inserted,
            rows_updated,
            rows_deleted,
            duration_ms,
            checks,
            ..
        }) => {
            in_flight.remove(&batch_no);
            let batch = batches::Applied {
                batch_no,
                rows: batches::RowCounts {
                    source: rows_source,
                    inserted: rows_inserted,
                    updated: rows_updated,
                    deleted: rows_deleted,
                },
                duration_ms,
                checks,
            };
            take(tally, &batch, run, accepted, pool, bar).await
        }
        Ok(Event::Failed {
            batch_no,
            error,
            kind,
            ..
        }) => Ok(Some(format!("batch {batch_no} failed ({kind:?}): {error}"))),
        Err(e) => {
            warn!(error = %e, "ignoring an undecodable event");
            Ok(None)
        }
    }
}

/// What the coordinator has seen applied.
pub(super) struct Tally {
    applied: Vec<bool>,
    pub(super) count: usize,
    pub(super) rows_written: i64,
    rows_source: i64,
    /// The applied batches' apply durations, summed: the warehouse time spent.
    batch_ms: i64,
    /// How long the run waited for its canary's promotion: not working time.
    pub(super) canary_wait: chrono::Duration,
}

impl Tally {
    pub(super) fn new(total: usize) -> Self {
        Self {
            applied: vec![false; total],
            count: 0,
            rows_written: 0,
            rows_source: 0,
            batch_ms: 0,
            canary_wait: chrono::Duration::zero(),
        }
    }

    pub(super) fn has(&self, batch_no: u32) -> bool {
        self.applied
            .get(batch_no as usize)
            .copied()
            .unwrap_or(false)
    }

    /// Counts a batch once. `false` if it was already counted.
    pub(super) fn record(&mut self, batch: &batches::Applied) -> bool {
        match self.applied.get_mut(batch.batch_no as usize) {
            Some(slot) if !*slot => {
                *slot = true;
                self.count += 1;
                self.rows_written += batch.rows.inserted + batch.rows.updated + batch.rows.deleted;
                self.rows_source += batch.rows.source;
                self.batch_ms += batch.duration_ms;
                true
            }
            _ => false,
        }
    }
}

/// Counts a newly applied batch and holds its figures against the brief's limits.
/// Returns the halt reason when it broke one (each breach is logged).
pub(super) async fn take(
    tally: &mut Tally,
    batch: &batches::Applied,
    run: &runs::Run,
    accepted: &[String],
    pool: &PgPool,
    bar: &ProgressBar,
) -> Result<Option<String>> {
    if !tally.record(batch) {
        return Ok(None);
    }
    bar.set_position(tally.count as u64);
    bar.set_message(format!("{} rows written", tally.rows_written));
    let mut breaches = checks::evaluate(
        &run.brief,
        batch.batch_no,
        &batch.checks,
        tally.rows_source,
        accepted,
    );
    if !run.brief.limits.budget.is_empty() {
        let used = checks::BudgetUse {
            rows_written: tally.rows_written,
            batch_seconds: tally.batch_ms as f64 / 1000.0,
            elapsed_seconds: ((chrono::Utc::now() - run.created_at) - tally.canary_wait)
                .as_seconds_f64(),
            applied: tally.count,
            total: tally.applied.len(),
        };
        breaches.extend(checks::evaluate_budget(
            &run.brief,
            batch.batch_no,
            &used,
            accepted,
        ));
    }
    if breaches.is_empty() {
        return Ok(None);
    }
    for b in &breaches {
        log::append(
            pool,
            run.run_id,
            "coordinator",
            "limit_breached",
            Some(b.batch_no),
            serde_json::to_value(b).unwrap_or_default(),
        )
        .await?;
    }
    let reasons = breaches
        .iter()
        .map(|b| b.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    Ok(Some(format!("limit breached: {reasons}")))
}

/// Limits an operator accepted breaches of (`backfill resume --accept`).
pub async fn accepted_limits(pool: &PgPool, run_id: Uuid) -> Result<Vec<String>> {
    Ok(log::accepted_limits(pool, run_id).await?)
}

pub(super) async fn halt(
    pool: &PgPool,
    run_id: Uuid,
    operator: &str,
    reason: &str,
) -> Result<Finish> {
    runs::transition(
        pool,
        run_id,
        &[RunState::Running],
        RunState::Halted,
        operator,
        Some(reason),
    )
    .await?;
    warn!(run.id = %run_id, %reason, "run halted");
    Ok(Finish::Halted(reason.to_owned()))
}
