//! `backfill resume RUN [--accept REASON]` and `backfill retry RUN`: putting a
//! halted run back to work. A run halted on a breached limit resumes only when
//! the operator accepts the breach with a reason (recorded with who accepted what);
//! a failed batch comes back only through `retry`, once its cause is fixed.

use crate::run::accepted_limits;
use crate::{CliError, Result};
use backfill_shared::checks::Breach;
use backfill_shared::control::batches::BatchState;
use backfill_shared::control::runs::{self, RunState};
use backfill_shared::control::{batches, log};
use sqlx::PgPool;
use uuid::Uuid;

/// Breaches logged for a run, each with whether it has been accepted.
pub async fn breaches(pool: &PgPool, run_id: Uuid) -> Result<Vec<(Breach, bool)>> {
    let accepted = accepted_limits(pool, run_id).await?;
    Ok(log::breaches(pool, run_id)
        .await?
        .into_iter()
        .map(|b| {
            let ok = accepted.contains(&b.limit);
            (b, ok)
        })
        .collect())
}

/// Breaches nobody has accepted yet.
async fn open_breaches(pool: &PgPool, run_id: Uuid) -> Result<Vec<Breach>> {
    Ok(breaches(pool, run_id)
        .await?
        .into_iter()
        .filter(|(_, accepted)| !accepted)
        .map(|(b, _)| b)
        .collect())
}

/// Moves a halted or paused run back to running, accepting its breaches if
/// `accept` says why. A running run is left as it is, for the caller to re-attach.
pub async fn resume(pool: &PgPool, run_id: Uuid, actor: &str, accept: Option<&str>) -> Result<()> {
    let run = runs::load(pool, run_id).await?;
    crate::lifecycle::approve::as_owner_or_reviewer(pool, &run, "resume").await?;
    match run.state {
        RunState::Halted => {}
        RunState::Paused => {
            runs::transition(
                pool,
                run_id,
                &[RunState::Paused],
                RunState::Running,
                actor,
                None,
            )
            .await?;
            return Ok(());
        }
        // Its coordinator may have died: the caller re-attaches (a live one keeps
        // the driver lock, and the caller is told so).
        RunState::Running => return Ok(()),
        RunState::Canary => {
            return Err(CliError::WrongState(format!(
                "run {run_id} waits at its canary; the reviewer lets it go on: `backfill promote {run_id}`"
            )));
        }
        other => {
            return Err(CliError::WrongState(format!(
                "run {run_id} is {other}; only a halted run resumes"
            )));
        }
    }
    let failed: Vec<_> = batches::failures(pool, run_id)
        .await?
        .into_iter()
        .filter(|f| f.state == BatchState::Failed)
        .collect();
    if let Some(f) = failed.first() {
        return Err(CliError::BadInput(format!(
            "batch {} failed: {}. Fix the cause, then `backfill retry {run_id}` ({} failed batch(es))",
            f.batch_no,
            f.last_error,
            failed.len()
        )));
    }
    let open = open_breaches(pool, run_id).await?;
    if !open.is_empty() {
        let Some(reason) = accept.map(str::trim).filter(|r| !r.is_empty()) else {
            let list = open
                .iter()
                .map(|b| format!("  - {}", b.message))
                .collect::<Vec<_>>()
                .join("\n");
            return Err(CliError::BadInput(format!(
                "run {run_id} halted on:\n{list}\nIf the change is intended, explain it: `backfill resume {run_id} --accept \"why\"`"
            )));
        };
        let mut limits: Vec<&str> = open.iter().map(|b| b.limit.as_str()).collect();
        limits.dedup();
        log::append(
            pool,
            run_id,
            actor,
            "breach_accepted",
            None,
            serde_json::json!({ "limits": limits, "reason": reason, "breaches": open }),
        )
        .await?;
    }
    back_to_running(pool, run_id, actor).await
}

/// A halted run goes on: the coordinator publishes its pending batches again.
async fn back_to_running(pool: &PgPool, run_id: Uuid, actor: &str) -> Result<()> {
    runs::transition(
        pool,
        run_id,
        &[RunState::Halted],
        RunState::Running,
        actor,
        None,
    )
    .await?;
    Ok(())
}

/// Puts failed batches back to pending and, when nothing else holds the run,
/// moves it back to running. Returns how many batches come back.
pub async fn retry(pool: &PgPool, run_id: Uuid, actor: &str) -> Result<u64> {
    let run = runs::load(pool, run_id).await?;
    crate::lifecycle::approve::as_owner_or_reviewer(pool, &run, "retry").await?;
    if !matches!(run.state, RunState::Halted | RunState::Running) {
        return Err(CliError::WrongState(format!(
            "run {run_id} is {}; only a halted or running run retries",
            run.state
        )));
    }
    let n = batches::retry_failed(pool, run_id, actor).await?;
    if run.state == RunState::Halted {
        if !open_breaches(pool, run_id).await?.is_empty() {
            return Err(CliError::BadInput(format!(
                "{n} failed batch(es) are pending again, but run {run_id} also halted on a breached limit: `backfill resume {run_id} --accept \"why\"`"
            )));
        }
        back_to_running(pool, run_id, actor).await?;
    }
    Ok(n)
}

/// `backfill pause RUN`: no new batch starts; in-flight ones finish.
pub async fn pause(pool: &PgPool, run_id: Uuid, actor: &str) -> Result<()> {
    if runs::transition(
        pool,
        run_id,
        &[RunState::Running],
        RunState::Paused,
        actor,
        None,
    )
    .await?
    {
        return Ok(());
    }
    let state = runs::state(pool, run_id).await?;
    Err(CliError::WrongState(if state == RunState::Paused {
        format!(
            "run {run_id} is already paused: no batch starts. Nothing was done; `backfill resume {run_id}` starts them again"
        )
    } else {
        format!("run {run_id} is {state}; only a running run can be paused")
    }))
}

/// `backfill cancel RUN`: stops the run for good. Applied batches stay applied (and
/// can be rolled back); the rest never start.
pub async fn cancel(pool: &PgPool, run_id: Uuid, actor: &str) -> Result<()> {
    let run = runs::load(pool, run_id).await?;
    crate::lifecycle::approve::as_owner_or_reviewer(pool, &run, "cancel").await?;
    if runs::transition(
        pool,
        run_id,
        &RunState::ACTIVE,
        RunState::Cancelled,
        actor,
        None,
    )
    .await?
    {
        crate::notify::emit(pool, run_id, crate::notify::Happened::Cancelled).await;
        return Ok(());
    }
    let state = runs::state(pool, run_id).await?;
    Err(CliError::WrongState(if state == RunState::Cancelled {
        format!(
            "run {run_id} is already cancelled: no batch starts again, and the ones applied stay applied. \
             Nothing was done; `backfill rollback {run_id}` undoes them"
        )
    } else {
        format!("run {run_id} is {state}; it cannot be cancelled")
    }))
}
