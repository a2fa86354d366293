//! `backfill approve RUN --reviewer NAME`: only the reviewer the brief names (never
//! the owner), and only once every batch is applied.

use crate::{CliError, Result};
use backfill_shared::control::batches;
use backfill_shared::control::runs::{self, RunState};
use sqlx::PgPool;
use uuid::Uuid;

pub async fn approve(pool: &PgPool, run_id: Uuid, reviewer: &str) -> Result<()> {
    let run = runs::load(pool, run_id).await?;
    let meta = &run.brief.meta;
    if reviewer.eq_ignore_ascii_case(&meta.owner) {
        return Err(CliError::BadInput(format!(
            "{reviewer} owns run {run_id} and cannot approve it; the brief names {} as reviewer",
            meta.reviewer
        )));
    }
    if !reviewer.eq_ignore_ascii_case(&meta.reviewer) {
        return Err(CliError::BadInput(format!(
            "only the reviewer named in the brief ({}) can approve run {run_id}",
            meta.reviewer
        )));
    }
    match run.state {
        RunState::Applied => {}
        RunState::Running | RunState::Halted => {
            let c = batches::counts(pool, run_id).await?;
            return Err(CliError::BadInput(format!(
                "run {run_id} is still {}: {} of {} batches applied; approve once every batch is applied",
                run.state,
                c.applied,
                c.total()
            )));
        }
        RunState::Approved => {
            return Err(CliError::BadInput(format!(
                "run {run_id} was already approved by {}",
                run.approved_by.unwrap_or_default()
            )));
        }
        other => {
            return Err(CliError::BadInput(format!(
                "run {run_id} is {other}; only an applied run can be approved"
            )));
        }
    }
    if !runs::approve(pool, run_id, &meta.reviewer).await? {
        return Err(CliError::BadInput(format!(
            "run {run_id} changed state while approving; check `backfill status {run_id}`"
        )));
    }
    Ok(())
}
