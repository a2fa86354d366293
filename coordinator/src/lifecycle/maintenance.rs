//! The "under maintenance" marker on a live target while a run writes to it: a row
//! in `backfill.maintenance` (for dashboards to query) and a table comment naming
//! the run, the reason and the owner. Clearing it restores the previous comment.

use crate::Result;
use backfill_shared::brief::Brief;
use backfill_shared::sql::{TableName, quote_literal};
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

/// Statements that set the marker (run inside the transaction recording the run).
#[must_use]
pub fn mark_statements(brief: &Brief, run_id: Uuid) -> Vec<String> {
    let target = &brief.scope.target;
    let comment = format!(
        "UNDER MAINTENANCE: backfill run {run_id} ({}) by {}: {}",
        brief.meta.name, brief.meta.owner, brief.meta.reason
    );
    vec![
        format!(
            "INSERT INTO backfill.maintenance (target, run_id, reason, owner, previous_comment)
             VALUES ({t}, {r}, {reason}, {owner}, obj_description({q}::regclass, 'pg_class'))
             ON CONFLICT (target) DO UPDATE
                SET run_id = EXCLUDED.run_id, reason = EXCLUDED.reason, owner = EXCLUDED.owner, since = now()",
            t = quote_literal(&target.to_string()),
            r = quote_literal(&run_id.to_string()),
            reason = quote_literal(&brief.meta.reason),
            owner = quote_literal(&brief.meta.owner),
            q = quote_literal(&target.quoted()),
        ),
        format!("COMMENT ON TABLE {} IS {}", target.quoted(), quote_literal(&comment)),
    ]
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
    let comment = previous
        .as_deref()
        .map_or_else(|| "NULL".to_owned(), quote_literal);
    sqlx::query(AssertSqlSafe(format!(
        "COMMENT ON TABLE {} IS {comment}",
        target.quoted()
    )))
    .execute(&mut *conn)
    .await?;
    Ok(true)
}
