//! `backfill rollback RUN [--force]`: puts the target back exactly as it was
//! before the run.
//!
//! - merge and partition-overwrite: from the before-images, batch by batch in
//!   reverse order, each batch in one transaction (rows the batch inserted are
//!   deleted, rows it updated or deleted are restored);
//! - staging-swap and parallel-version after cutover: swap the old table back;
//!   before cutover: drop the table the run built (the target was never touched).
//!
//! Refused, naming the runs, when a later run has changed the same target, unless
//! `--force`. Logged, and resumable: a rollback cut short continues from the
//! batches not yet restored.

use super::{maintenance, swap, writes_live_target};
use crate::{CliError, Result};
use backfill_shared::control::log;
use backfill_shared::control::runs::{self, Run, RunState};
use backfill_shared::sql::{TableName, column_list, key_join};
use sqlx::{AssertSqlSafe, PgPool};
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Default, serde::Serialize)]
pub struct RollbackReport {
    pub batches_restored: usize,
    pub rows_deleted: u64,
    pub rows_restored: u64,
    pub swapped_back: bool,
    pub dropped: Option<String>,
    pub refreshed_materialized_views: Vec<String>,
}

pub async fn rollback(
    pool: &PgPool,
    run_id: Uuid,
    actor: &str,
    force: bool,
    lock_timeout: Duration,
) -> Result<RollbackReport> {
    let run = runs::load(pool, run_id).await?;
    match run.state {
        RunState::Running => {
            return Err(CliError::BadInput(format!(
                "run {run_id} is still running; stop it first (its coordinator, or `backfill cancel`), then roll back"
            )));
        }
        RunState::RolledBack => {
            return Err(CliError::BadInput(format!(
                "run {run_id} is already rolled back"
            )));
        }
        _ => {}
    }
    let later = runs::later_runs_on_target(pool, run_id).await?;
    if !later.is_empty() {
        let names = later
            .iter()
            .map(|(id, state)| format!("{id} ({state})"))
            .collect::<Vec<_>>()
            .join(", ");
        if !force {
            return Err(CliError::BadInput(format!(
                "a later run changed {} since run {run_id}: {names}. Rolling back would undo its work too; roll it back first, or pass --force",
                run.brief.scope.target
            )));
        }
        log::append(
            pool,
            run_id,
            actor,
            "rollback_forced",
            None,
            serde_json::json!({ "later_runs": names }),
        )
        .await?;
    }
    let from = run.state;
    if from != RunState::RollingBack {
        runs::transition(pool, run_id, &[from], RunState::RollingBack, actor, None).await?;
    }
    let mut report = if writes_live_target(&run.brief) {
        restore_before_images(pool, &run, actor).await?
    } else {
        restore_side_table(pool, &run, lock_timeout).await?
    };
    report.refreshed_materialized_views =
        swap::refresh_materialized_views(pool, &run.brief.scope.target).await?;
    runs::transition(
        pool,
        run_id,
        &[RunState::RollingBack],
        RunState::RolledBack,
        actor,
        None,
    )
    .await?;
    log::append(
        pool,
        run_id,
        actor,
        "rollback_done",
        None,
        serde_json::to_value(&report).unwrap_or_default(),
    )
    .await?;
    Ok(report)
}

async fn restore_before_images(pool: &PgPool, run: &Run, actor: &str) -> Result<RollbackReport> {
    let run_id = run.run_id;
    let scope = &run.brief.scope;
    let Some(image) = run.image_table.as_deref().and_then(TableName::parse) else {
        return Err(CliError::BadInput(format!(
            "run {run_id} kept no before-images (snapshot = false), so it cannot be rolled back; restore {} from a backup",
            scope.target
        )));
    };
    // Generated columns are recomputed by PostgreSQL; every other column is restored.
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute
          WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
          ORDER BY attnum",
    )
    .bind(scope.target.quoted())
    .fetch_all(pool)
    .await?;
    let cols = column_list(&columns, None);
    let key_match = key_join(&scope.key, "t", "i");
    let target = scope.target.quoted();
    let img = image.quoted();
    let delete = format!(
        "DELETE FROM {target} t USING {img} i WHERE i.bf_batch_no = $1 AND i.bf_op IN ('I', 'U') AND {key_match}"
    );
    let insert = format!(
        "INSERT INTO {target} ({cols}) OVERRIDING SYSTEM VALUE
         SELECT {cols} FROM {img} WHERE bf_batch_no = $1 AND bf_op IN ('U', 'D')"
    );
    let batches: Vec<i32> = sqlx::query_scalar(
        "SELECT batch_no FROM backfill.batches WHERE run_id = $1 AND state = 'applied' ORDER BY batch_no DESC",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    let mut report = RollbackReport::default();
    for batch in batches {
        let mut tx = pool.begin().await?;
        let deleted = sqlx::query(AssertSqlSafe(delete.as_str()))
            .bind(batch)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let restored = sqlx::query(AssertSqlSafe(insert.as_str()))
            .bind(batch)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "UPDATE backfill.batches SET state = 'rolled_back' WHERE run_id = $1 AND batch_no = $2",
        )
        .bind(run_id)
        .bind(batch)
        .execute(&mut *tx)
        .await?;
        log::append(
            &mut *tx,
            run_id,
            actor,
            "batch_rolled_back",
            u32::try_from(batch).ok(),
            serde_json::json!({ "deleted": deleted, "restored": restored }),
        )
        .await?;
        tx.commit().await?;
        report.batches_restored += 1;
        report.rows_deleted += deleted;
        report.rows_restored += restored;
    }
    let mut conn = pool.acquire().await?;
    maintenance::clear(&mut conn, &scope.target, run_id).await?;
    Ok(report)
}

async fn restore_side_table(
    pool: &PgPool,
    run: &Run,
    lock_timeout: Duration,
) -> Result<RollbackReport> {
    let run_id = run.run_id;
    let target = &run.brief.scope.target;
    let parse = |name: &str| {
        TableName::parse(name).ok_or_else(|| {
            CliError::Internal(format!(
                "run {run_id} records an unreadable table name {name:?}"
            ))
        })
    };
    let side = run.side_table.as_deref().map(parse).transpose()?;
    let mut report = RollbackReport::default();
    match (&run.old_table, side) {
        // Cut over: the old table goes back in place; the new one back under its own name.
        (Some(old), Some(side)) => {
            let old = parse(old)?;
            swap::swap(pool, target, &old, &side, lock_timeout, async |conn| {
                runs::set_old_table(&mut *conn, run_id, None).await?;
                Ok(())
            })
            .await?;
            report.swapped_back = true;
            drop_table(pool, &side).await?;
            report.dropped = Some(side.to_string());
        }
        // Not cut over: the target was never touched; the built table goes.
        (None, Some(side)) => {
            drop_table(pool, &side).await?;
            report.dropped = Some(side.to_string());
        }
        (_, None) => {
            return Err(CliError::Internal(format!(
                "run {run_id} records no side table"
            )));
        }
    }
    Ok(report)
}

pub(crate) async fn drop_table(pool: &PgPool, table: &TableName) -> Result<()> {
    sqlx::query(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {}",
        table.quoted()
    )))
    .execute(pool)
    .await
    .map_err(|e| CliError::Internal(format!("dropping {table} failed: {e}")))?;
    Ok(())
}
