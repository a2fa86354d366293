//! The append-only run log: one row per thing that happened to a run, with who did
//! it. A trigger refuses updates and deletes.

use super::Result;
use serde_json::Value;
use uuid::Uuid;

/// Appends an entry. Works inside a transaction or on a pool.
pub async fn append<'e, E>(
    executor: E,
    run_id: Uuid,
    actor: &str,
    event: &str,
    batch_no: Option<u32>,
    detail: Value,
) -> Result<()>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query(
        "INSERT INTO backfill.run_log (run_id, actor, event, batch_no, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(run_id)
    .bind(actor)
    .bind(event)
    .bind(batch_no.map(i64::from))
    .bind(detail)
    .execute(executor)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Entry {
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub event: String,
    pub batch_no: Option<i32>,
    pub detail: Value,
}

/// The log of a run, oldest first.
pub async fn entries(pool: &sqlx::PgPool, run_id: Uuid) -> Result<Vec<Entry>> {
    Ok(sqlx::query_as(
        "SELECT at, actor, event, batch_no, detail FROM backfill.run_log WHERE run_id = $1 ORDER BY id",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?)
}

/// The run's latest entry among `events`, if any.
pub async fn latest_of(
    pool: &sqlx::PgPool,
    run_id: Uuid,
    events: &[&str],
) -> Result<Option<Entry>> {
    Ok(sqlx::query_as(
        "SELECT at, actor, event, batch_no, detail FROM backfill.run_log
          WHERE run_id = $1 AND event = ANY($2) ORDER BY id DESC LIMIT 1",
    )
    .bind(run_id)
    .bind(events)
    .fetch_optional(pool)
    .await?)
}
