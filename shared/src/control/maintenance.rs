//! The "under maintenance" marker on a live target while a run writes to it: a
//! row in `backfill.maintenance` (for dashboards to query) and a table comment
//! naming the run, the reason and the owner. Clearing it restores the previous
//! comment. Values are bound; the comment is a literal only because `COMMENT`
//! takes no parameters.

use super::Result;
use crate::brief::Brief;
use crate::sql::{TableName, quote_literal};
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

/// What a run's marker says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub target: TableName,
    pub run_id: Uuid,
    pub reason: String,
    pub owner: String,
    /// The table comment while the run writes.
    pub comment: String,
}

impl Marker {
    #[must_use]
    pub fn of(brief: &Brief, run_id: Uuid) -> Self {
        Self {
            target: brief.scope.target.clone(),
            run_id,
            reason: brief.meta.reason.clone(),
            owner: brief.meta.owner.clone(),
            comment: format!(
                "UNDER MAINTENANCE: backfill run {run_id} ({}) by {}: {}",
                brief.meta.name, brief.meta.owner, brief.meta.reason
            ),
        }
    }
}

/// Sets the marker, keeping the comment it replaces.
pub async fn mark(conn: &mut PgConnection, marker: &Marker) -> Result<()> {
    sqlx::query(
        "INSERT INTO backfill.maintenance (target, run_id, reason, owner, previous_comment)
         VALUES ($1, $2, $3, $4, obj_description($5::regclass, 'pg_class'))
         ON CONFLICT (target) DO UPDATE
            SET run_id = EXCLUDED.run_id, reason = EXCLUDED.reason, owner = EXCLUDED.owner, since = now()",
    )
    .bind(marker.target.to_string())
    .bind(marker.run_id)
    .bind(&marker.reason)
    .bind(&marker.owner)
    .bind(marker.target.quoted())
    .execute(&mut *conn)
    .await?;
    set_comment(conn, &marker.target, Some(&marker.comment)).await
}

/// Clears the marker of `run_id` on `target`, if it is there. Returns whether it was.
pub async fn clear(conn: &mut PgConnection, target: &TableName, run_id: Uuid) -> Result<bool> {
    let previous: Option<Option<String>> = sqlx::query_scalar(
        "DELETE FROM backfill.maintenance WHERE target = $1 AND run_id = $2 RETURNING previous_comment",
    )
    .bind(target.to_string())
    .bind(run_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(previous) = previous else {
        return Ok(false);
    };
    set_comment(conn, target, previous.as_deref()).await?;
    Ok(true)
}

async fn set_comment(
    conn: &mut PgConnection,
    target: &TableName,
    comment: Option<&str>,
) -> Result<()> {
    let literal = comment.map_or_else(|| "NULL".to_owned(), quote_literal);
    sqlx::query(AssertSqlSafe(format!(
        "COMMENT ON TABLE {} IS {literal}",
        target.quoted()
    )))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A table under maintenance now: the marker and its run.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Current {
    pub target: String,
    pub run_id: Uuid,
    pub name: String,
    pub state: String,
    pub owner: String,
    pub reason: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

/// Every table under maintenance now, longest first.
pub async fn current(pool: &sqlx::PgPool) -> Result<Vec<Current>> {
    Ok(sqlx::query_as(
        "SELECT m.target, m.run_id, r.name, r.state, m.owner, m.reason, m.since
           FROM backfill.maintenance m JOIN backfill.runs r USING (run_id)
          ORDER BY m.since, m.target",
    )
    .fetch_all(pool)
    .await?)
}
