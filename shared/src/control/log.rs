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

/// The run's latest `limit` entries, newest first, without the one per applied
/// batch (the ledger holds those), and how many entries that leaves out.
pub async fn notable(pool: &sqlx::PgPool, run_id: Uuid, limit: i64) -> Result<(Vec<Entry>, i64)> {
    let entries = sqlx::query_as(
        "SELECT at, actor, event, batch_no, detail FROM backfill.run_log
          WHERE run_id = $1 AND event <> 'batch_applied' ORDER BY id DESC LIMIT $2",
    )
    .bind(run_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM backfill.run_log WHERE run_id = $1")
        .bind(run_id)
        .fetch_one(pool)
        .await?;
    let shown = i64::try_from(Vec::len(&entries)).unwrap_or(i64::MAX);
    Ok((entries, total - shown))
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

/// Limits an operator accepted breaches of (`backfill resume --accept`).
pub async fn accepted_limits(pool: &sqlx::PgPool, run_id: Uuid) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT jsonb_array_elements_text(detail->'limits') FROM backfill.run_log
          WHERE run_id = $1 AND event = 'breach_accepted'",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?)
}

/// Every breach logged for a run, oldest first.
pub async fn breaches(pool: &sqlx::PgPool, run_id: Uuid) -> Result<Vec<crate::checks::Breach>> {
    let logged: Vec<sqlx::types::Json<crate::checks::Breach>> = sqlx::query_scalar(
        "SELECT detail FROM backfill.run_log WHERE run_id = $1 AND event = 'limit_breached' ORDER BY id",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    Ok(logged.into_iter().map(|b| b.0).collect())
}

/// Each acceptance of breaches: who, why, and which limits (their names, comma-separated).
pub async fn acceptances(
    pool: &sqlx::PgPool,
    run_id: Uuid,
) -> Result<Vec<(String, String, String)>> {
    Ok(sqlx::query_as(
        "SELECT actor, detail->>'reason',
                coalesce((SELECT string_agg(l, ', ') FROM jsonb_array_elements_text(
                              CASE WHEN jsonb_typeof(detail->'limits') = 'array' THEN detail->'limits' END) l),
                         detail->>'limits')
           FROM backfill.run_log
          WHERE run_id = $1 AND event = 'breach_accepted' ORDER BY id",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?)
}

/// The refresh steps (by index) the run's cutover (`cutover_step`), or its
/// rollback (`rollback_step`), has done.
pub async fn refreshes_done(pool: &sqlx::PgPool, run_id: Uuid, event: &str) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT (detail->'detail'->>'index')::bigint FROM backfill.run_log
          WHERE run_id = $1 AND event = $2 AND detail->>'step' = 'refresh'",
    )
    .bind(run_id)
    .bind(event)
    .fetch_all(pool)
    .await?)
}

/// What cutover refreshed, in order: statements, and materialized views.
pub async fn refreshed(pool: &sqlx::PgPool, run_id: Uuid) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(detail->'detail'->>'statement',
                         (SELECT string_agg(v, ', ') FROM jsonb_array_elements_text(
                              CASE WHEN jsonb_typeof(detail->'detail'->'views') = 'array'
                                   THEN detail->'detail'->'views' END) v),
                         detail->'detail'->>'views', detail->>'step')
           FROM backfill.run_log WHERE run_id = $1 AND event = 'cutover_step' AND detail->>'step' NOT IN ('swap', 'analyze') ORDER BY id",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?)
}
