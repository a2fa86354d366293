//! Runs: one row per `backfill run`, holding the exact brief text it was planned
//! from. Workers load the brief from here, never from a message.

use super::{ControlError, Result};
use crate::brief::{BatchRange, BoundKind, Brief};
use sqlx::PgPool;
use std::fmt;
use uuid::Uuid;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Batches are being published and applied.
    Running,
    /// Stopped by a failed batch or a breached limit; the target is partly written.
    Halted,
    /// Every batch is applied.
    Applied,
    Cancelled,
}

impl RunState {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Halted => "halted",
            Self::Applied => "applied",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Running, Self::Halted, Self::Applied, Self::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run as the control plane records it.
#[derive(Debug, Clone)]
pub struct Run {
    pub run_id: Uuid,
    pub brief_text: String,
    pub brief_hash: String,
    pub brief: Brief,
    pub state: RunState,
    pub batch_count: u32,
    pub bound_kind: BoundKind,
    /// The table before-images go to, when the brief asks for them.
    pub image_table: Option<String>,
    pub halt_reason: Option<String>,
    pub operator: String,
    pub code_version: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What `backfill run` records before publishing anything.
#[derive(Debug)]
pub struct NewRun<'a> {
    pub run_id: Uuid,
    pub brief_text: &'a str,
    pub brief: &'a Brief,
    pub operator: &'a str,
    pub batches: &'a [BatchRange],
    pub image_table: Option<&'a str>,
    /// Statements creating the image table, run in the same transaction.
    pub image_ddl: Option<&'a str>,
    pub params: serde_json::Value,
}

/// Records the run and every one of its batches in one transaction. Refuses, with
/// the other run's id, when a run is already active on the same target.
pub async fn create(pool: &PgPool, new: &NewRun<'_>) -> Result<Uuid> {
    let run_id = new.run_id;
    let brief = new.brief;
    let target = brief.scope.target.to_string();
    let batch_count = i32::try_from(new.batches.len())
        .map_err(|_| ControlError::Corrupt("too many batches".into()))?;
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO backfill.runs (run_id, name, target, brief, brief_hash, code_version, operator,
            owner, reviewer, strategy, bound_kind, batch_count, params, image_table, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'running')
         ON CONFLICT (target) WHERE state IN ('running', 'halted') DO NOTHING",
    )
    .bind(run_id)
    .bind(&brief.meta.name)
    .bind(&target)
    .bind(new.brief_text)
    .bind(Brief::hash(new.brief_text))
    .bind(super::code_version())
    .bind(new.operator)
    .bind(&brief.meta.owner)
    .bind(&brief.meta.reviewer)
    .bind(brief.write.strategy.as_str())
    .bind(brief.scope.batch_by.kind().as_str())
    .bind(batch_count)
    .bind(&new.params)
    .bind(new.image_table)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        drop(tx);
        let (run_id, state): (Uuid, String) = sqlx::query_as(
            "SELECT run_id, state FROM backfill.runs WHERE target = $1 AND state IN ('running', 'halted')",
        )
        .bind(&target)
        .fetch_one(pool)
        .await?;
        return Err(ControlError::ActiveRun {
            target,
            run_id,
            state,
        });
    }
    if let Some(ddl) = new.image_ddl {
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&mut *tx)
            .await?;
    }
    // Bulk insert in chunks: one statement per 50,000 batches.
    for chunk in new.batches.chunks(50_000) {
        let nos: Vec<i64> = chunk.iter().map(|b| i64::from(b.no)).collect();
        let los: Vec<String> = chunk.iter().map(|b| b.lo.to_string()).collect();
        let his: Vec<String> = chunk.iter().map(|b| b.hi.to_string()).collect();
        sqlx::query(
            "INSERT INTO backfill.batches (run_id, batch_no, lo, hi)
             SELECT $1, no, lo, hi FROM unnest($2::bigint[], $3::text[], $4::text[]) AS b(no, lo, hi)",
        )
        .bind(run_id)
        .bind(&nos)
        .bind(&los)
        .bind(&his)
        .execute(&mut *tx)
        .await?;
    }
    super::log::append(
        &mut *tx,
        run_id,
        new.operator,
        "run_created",
        None,
        serde_json::json!({
            "target": target,
            "batches": batch_count,
            "brief_hash": Brief::hash(new.brief_text),
            "code_version": super::code_version(),
            "params": new.params,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(run_id)
}

/// Loads a run and re-parses its brief.
pub async fn load(pool: &PgPool, run_id: Uuid) -> Result<Run> {
    type Row = (
        String,
        String,
        String,
        i32,
        String,
        Option<String>,
        Option<String>,
        String,
        String,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT brief, brief_hash, state, batch_count, bound_kind, image_table, halt_reason,
                operator, code_version, created_at, finished_at
         FROM backfill.runs WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_optional(pool)
    .await?;
    let Some((
        brief_text,
        brief_hash,
        state,
        batch_count,
        bound_kind,
        image_table,
        halt_reason,
        operator,
        code_version,
        created_at,
        finished_at,
    )) = row
    else {
        return Err(ControlError::UnknownRun(run_id));
    };
    let corrupt = |what: &str| ControlError::Corrupt(format!("run {run_id}: {what}"));
    let brief = Brief::parse(&brief_text).map_err(|e| corrupt(&format!("stored brief: {e}")))?;
    Ok(Run {
        run_id,
        brief_text,
        brief_hash,
        brief,
        state: RunState::parse(&state).ok_or_else(|| corrupt(&format!("state {state:?}")))?,
        batch_count: u32::try_from(batch_count).map_err(|_| corrupt("batch_count"))?,
        bound_kind: BoundKind::parse(&bound_kind)
            .ok_or_else(|| corrupt(&format!("bound kind {bound_kind:?}")))?,
        image_table,
        halt_reason,
        operator,
        code_version,
        created_at,
        finished_at,
    })
}

/// The run's state as recorded now.
pub async fn state(pool: &PgPool, run_id: Uuid) -> Result<RunState> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM backfill.runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(pool)
            .await?;
    let state = state.ok_or(ControlError::UnknownRun(run_id))?;
    RunState::parse(&state)
        .ok_or_else(|| ControlError::Corrupt(format!("run {run_id}: state {state:?}")))
}

/// Moves a run to `to` (from any of `from`), with a log entry. `false` if the run
/// was not in one of `from`.
pub async fn transition(
    pool: &PgPool,
    run_id: Uuid,
    from: &[RunState],
    to: RunState,
    actor: &str,
    reason: Option<&str>,
) -> Result<bool> {
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE backfill.runs SET state = $2, updated_at = now(),
             halt_reason = CASE WHEN $2 = 'halted' THEN $4 ELSE halt_reason END,
             finished_at = CASE WHEN $2 IN ('applied', 'cancelled') THEN now() ELSE finished_at END
         WHERE run_id = $1 AND state = ANY($3)",
    )
    .bind(run_id)
    .bind(to.as_str())
    .bind(&from)
    .bind(reason)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if done {
        super::log::append(
            &mut *tx,
            run_id,
            actor,
            &format!("run_{}", to.as_str()),
            None,
            serde_json::json!({ "reason": reason }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(done)
}
