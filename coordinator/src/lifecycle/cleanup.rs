//! `backfill cleanup RUN [--now]`: drops what a finished run kept for rollback (its
//! before-images and the partitions its batches exchanged out, the old table a
//! swap retired, a table it built and nobody cut
//! over to) once `retain_days` has passed since it finished, or at once with
//! `--now`. Records what it dropped in the run log.

use super::rollback::drop_table;
use crate::{CliError, Result};
use backfill_shared::control::capture::Capture;
use backfill_shared::control::runs::{self, RunState};
use backfill_shared::control::{batches, log};
use backfill_shared::sql::TableName;
use sqlx::PgPool;
use uuid::Uuid;

pub async fn cleanup(pool: &PgPool, run_id: Uuid, actor: &str, now: bool) -> Result<Vec<String>> {
    let run = runs::load(pool, run_id).await?;
    let finished = match run.state {
        RunState::CutOver | RunState::Done => run.cut_over_at,
        RunState::RolledBack => run.rolled_back_at,
        RunState::Cancelled => run.finished_at,
        other => {
            return Err(CliError::WrongState(format!(
                "run {run_id} is {other}; its objects are kept until it is cut over, rolled back or cancelled"
            )));
        }
    }
    .unwrap_or(run.created_at);
    let until = finished + chrono::Duration::days(i64::from(run.brief.rollback.retain_days));
    if !now && chrono::Utc::now() < until {
        return Err(CliError::WrongState(format!(
            "run {run_id}'s rollback copies are retained until {} (retain_days = {}); pass --now to drop them earlier",
            backfill_shared::text::minute(until),
            run.brief.rollback.retain_days
        )));
    }
    let target = run.brief.scope.target.to_string();
    let mut dropped = Vec::new();
    // The partitions batches exchanged out, kept as their before-images.
    let kept: Vec<String> = batches::exchanges(pool, run_id)
        .await?
        .into_values()
        .filter_map(|x| x.kept_as)
        .collect();
    for name in [&run.image_table, &run.old_table, &run.side_table]
        .into_iter()
        .flatten()
        .chain(&kept)
    {
        // After a cutover the side table *is* the target now: never drop that.
        if *name == target {
            continue;
        }
        let table = TableName::parse(name).ok_or_else(|| {
            CliError::Internal(format!(
                "run {run_id} records an unreadable table name {name:?}"
            ))
        })?;
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table.quoted())
            .fetch_one(pool)
            .await?;
        let exposed = matches!(run.state, RunState::CutOver | RunState::Done);
        if exists && !(exposed && Some(name) == run.side_table.as_ref()) {
            drop_table(pool, &table).await?;
            dropped.push(table.to_string());
        }
    }
    // The capture of a swap's writes (during the build, or since cutover
    // for a rollback to carry back) ends with the rollback copies.
    let capture = Capture::of(run_id);
    let mut conn = pool.acquire().await?;
    if capture.exists(&mut conn).await? {
        capture.remove(&mut conn).await?;
        dropped.push(capture.changes.to_string());
    }
    drop(conn);
    log::append(
        pool,
        run_id,
        actor,
        "cleanup",
        None,
        serde_json::json!({ "dropped": &dropped }),
    )
    .await?;
    runs::mark_cleaned(pool, run_id).await?;
    crate::notify::emit(pool, run_id, crate::notify::Happened::CleanedUp).await;
    Ok(dropped)
}
