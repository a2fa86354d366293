//! Batches: the ledger of a run. Every state change of a batch goes through here.
//!
//! States: `pending` → `queued` (published) → `running` (claimed by a worker) →
//! `applied`, or `failed` (with its error); `rolled_back` once rollback restored
//! it or fenced it before it applied. A claim bumps the fencing token; the
//! apply transaction locks the row and commits only if its token is still the
//! latest, so a worker that lost its lease (paused, partitioned) cannot commit,
//! and neither can one whose batch a rollback fenced ([`fence_unfinished`]).

use super::Result;
use crate::checks::BatchChecks;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Where a batch is in its life, as the ledger (`backfill.batches.state`) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum BatchState {
    /// Recorded, not yet published.
    Pending,
    /// Published; no worker has claimed it.
    Queued,
    /// Claimed by a worker (its fencing token grew).
    Running,
    Applied,
    /// Failed for good (or too often); `backfill retry` puts it back to pending.
    Failed,
    /// Its before-images were restored by `backfill rollback`, or rollback
    /// fenced it before it applied (it never will).
    RolledBack,
}

impl BatchState {
    pub const ALL: [Self; 6] = [
        Self::Pending,
        Self::Queued,
        Self::Running,
        Self::Applied,
        Self::Failed,
        Self::RolledBack,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Applied => "applied",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
        }
    }
}

impl std::fmt::Display for BatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The batch is ours to apply, under this fencing token.
    Granted { fence: i64 },
    /// Another worker already applied it.
    AlreadyApplied,
    /// It failed for good; only `backfill retry` brings it back.
    Failed,
    /// The message's bounds are not the ledger's: a forged or corrupted message.
    BoundsMismatch { lo: String, hi: String },
    /// The run's rollback fenced it: it never applies.
    Fenced,
    /// The run has no such batch.
    Unknown,
}

/// Claims a batch for `worker`: bumps the fencing token and marks it running, if
/// the bounds the message carries are the ledger's.
pub async fn claim(
    pool: &PgPool,
    run_id: Uuid,
    batch_no: u32,
    bounds: (&str, &str),
    worker: &str,
) -> Result<Claim> {
    let fence: Option<i64> = sqlx::query_scalar(
        "UPDATE backfill.batches
            SET fence = fence + 1, state = 'running', attempts = attempts + 1,
                worker = $3, started_at = now()
          WHERE run_id = $1 AND batch_no = $2 AND state IN ('pending', 'queued', 'running')
            AND lo = $4 AND hi = $5
          RETURNING fence",
    )
    .bind(run_id)
    .bind(i64::from(batch_no))
    .bind(worker)
    .bind(bounds.0)
    .bind(bounds.1)
    .fetch_optional(pool)
    .await?;
    if let Some(fence) = fence {
        return Ok(Claim::Granted { fence });
    }
    let row: Option<(String, String, String)> = sqlx::query_as(
        "SELECT state, lo, hi FROM backfill.batches WHERE run_id = $1 AND batch_no = $2",
    )
    .bind(run_id)
    .bind(i64::from(batch_no))
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => Claim::Unknown,
        Some((_, lo, hi)) if (lo.as_str(), hi.as_str()) != bounds => {
            Claim::BoundsMismatch { lo, hi }
        }
        Some((state, ..)) if state == "applied" => Claim::AlreadyApplied,
        Some((state, ..)) if state == "rolled_back" => Claim::Fenced,
        Some(_) => Claim::Failed,
    })
}

/// Row counts of one applied batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RowCounts {
    pub source: i64,
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
}

/// One batch's outcome, as the worker that applied it commits it.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    pub run_id: Uuid,
    pub batch_no: u32,
    /// The fencing token the worker claimed the batch with.
    pub fence: i64,
    pub rows: RowCounts,
    pub checks: &'a BatchChecks,
    pub worker: &'a str,
}

/// Inside the apply transaction, as its last statement: marks the batch applied
/// with its figures and appends `batch_applied` to the run log, only if the
/// batch is still `running` under this fencing token. The update takes the
/// ledger row's lock, held until the commit, so a newer claim either came
/// first (and this returns `None`: the worker must roll back) or waits.
/// Returns the batch's duration as the ledger records it.
pub async fn mark_applied_if_current(
    tx: &mut PgConnection,
    applied: Commit<'_>,
) -> Result<Option<i64>> {
    let Commit {
        run_id,
        batch_no,
        fence,
        rows,
        checks,
        worker,
    } = applied;
    Ok(sqlx::query_scalar(
        "WITH b AS (
            UPDATE backfill.batches
               SET state = 'applied', applied_at = clock_timestamp(), last_error = NULL, checks = $7,
                   rows_source = $3, rows_inserted = $4, rows_updated = $5, rows_deleted = $6,
                   duration_ms = (extract(epoch FROM clock_timestamp() - started_at) * 1000)::bigint
             WHERE run_id = $1 AND batch_no = $2 AND fence = $8 AND state = 'running'
         RETURNING batch_no, duration_ms),
         logged AS (
            INSERT INTO backfill.run_log (run_id, actor, event, batch_no, detail)
            SELECT $1, $9, 'batch_applied', b.batch_no, $10 FROM b)
         SELECT coalesce(duration_ms, 0) FROM b",
    )
    .bind(run_id)
    .bind(i64::from(batch_no))
    .bind(rows.source)
    .bind(rows.inserted)
    .bind(rows.updated)
    .bind(rows.deleted)
    .bind(sqlx::types::Json(checks))
    .bind(fence)
    .bind(worker)
    .bind(serde_json::json!({ "fence": fence, "rows": rows }))
    .fetch_optional(&mut *tx)
    .await?)
}

/// Records a failed attempt. A permanent failure marks the batch `failed`; a
/// transient one leaves it claimable.
pub async fn record_failure(
    pool: &PgPool,
    run_id: Uuid,
    batch_no: u32,
    error: &str,
    permanent: bool,
) -> Result<()> {
    sqlx::query(
        "UPDATE backfill.batches
            SET last_error = $3, state = CASE WHEN $4 THEN 'failed' ELSE state END
          WHERE run_id = $1 AND batch_no = $2 AND state NOT IN ('applied', 'rolled_back')",
    )
    .bind(run_id)
    .bind(i64::from(batch_no))
    .bind(error)
    .bind(permanent)
    .execute(pool)
    .await?;
    Ok(())
}

/// An applied batch's figures, as the ledger holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub batch_no: u32,
    pub rows: RowCounts,
    pub duration_ms: i64,
    pub checks: BatchChecks,
}

/// The figures of a batch if it is applied.
pub async fn applied(pool: &PgPool, run_id: Uuid, batch_no: u32) -> Result<Option<Applied>> {
    Ok(applied_among(pool, run_id, &[batch_no]).await?.pop())
}

/// The figures of those of `batch_nos` that are applied, in batch order.
pub async fn applied_among(pool: &PgPool, run_id: Uuid, batch_nos: &[u32]) -> Result<Vec<Applied>> {
    type Row = (
        i32,
        i64,
        i64,
        i64,
        i64,
        i64,
        Option<sqlx::types::Json<BatchChecks>>,
    );
    let nos: Vec<i64> = batch_nos.iter().map(|n| i64::from(*n)).collect();
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT batch_no, rows_source, rows_inserted, rows_updated, rows_deleted, duration_ms, checks
           FROM backfill.batches WHERE run_id = $1 AND batch_no = ANY($2) AND state = 'applied'
          ORDER BY batch_no",
    )
    .bind(run_id)
    .bind(&nos)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(
            |(no, source, inserted, updated, deleted, duration_ms, checks)| {
                Some(Applied {
                    batch_no: u32::try_from(no).ok()?,
                    rows: RowCounts {
                        source,
                        inserted,
                        updated,
                        deleted,
                    },
                    duration_ms,
                    checks: checks.map(|c| c.0).unwrap_or_default(),
                })
            },
        )
        .collect())
}

/// Marks batches queued (just before they are published).
pub async fn mark_queued(pool: &PgPool, run_id: Uuid, batch_nos: &[u32]) -> Result<()> {
    let nos: Vec<i64> = batch_nos.iter().map(|n| i64::from(*n)).collect();
    sqlx::query(
        "UPDATE backfill.batches SET state = 'queued', queued_at = now()
          WHERE run_id = $1 AND batch_no = ANY($2) AND state = 'pending'",
    )
    .bind(run_id)
    .bind(&nos)
    .execute(pool)
    .await?;
    Ok(())
}

/// Batch numbers in one state, in order.
pub async fn numbers_in_state(pool: &PgPool, run_id: Uuid, state: BatchState) -> Result<Vec<u32>> {
    let nos: Vec<i32> = sqlx::query_scalar(
        "SELECT batch_no FROM backfill.batches WHERE run_id = $1 AND state = $2 ORDER BY batch_no",
    )
    .bind(run_id)
    .bind(state.as_str())
    .fetch_all(pool)
    .await?;
    Ok(nos
        .into_iter()
        .filter_map(|n| u32::try_from(n).ok())
        .collect())
}

/// A batch published but not yet applied (`queued` or `running`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unfinished {
    pub batch_no: u32,
    /// Its fencing token: it changes with every claim.
    pub fence: i64,
    /// How often workers claimed it.
    pub attempts: i32,
}

/// The run's queued and running batches, in order.
pub async fn unfinished(pool: &PgPool, run_id: Uuid) -> Result<Vec<Unfinished>> {
    let rows: Vec<(i32, i64, i32)> = sqlx::query_as(
        "SELECT batch_no, fence, attempts FROM backfill.batches
          WHERE run_id = $1 AND state IN ('queued', 'running') ORDER BY batch_no",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(no, fence, attempts)| {
            Some(Unfinished {
                batch_no: u32::try_from(no).ok()?,
                fence,
                attempts,
            })
        })
        .collect())
}

/// How many batches are in each state, and the rows written so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub pending: i64,
    pub queued: i64,
    pub running: i64,
    pub applied: i64,
    pub failed: i64,
    pub rows: RowCounts,
    /// Sum of applied batches' durations, for the ETA.
    pub applied_ms: i64,
    /// The spread (standard deviation) of applied batches' durations, for
    /// the ETA's range.
    pub applied_ms_spread: i64,
}

impl Counts {
    #[must_use]
    pub fn total(&self) -> i64 {
        self.pending + self.queued + self.running + self.applied + self.failed
    }

    #[must_use]
    pub fn in_flight(&self) -> i64 {
        self.queued + self.running
    }
}

/// A run's batches by state, with the rows they wrote and the time they took,
/// from the totals the ledger keeps as it changes (`backfill.batch_totals`): a
/// few rows per run, however many batches it has.
pub async fn counts<'e, E: sqlx::PgExecutor<'e>>(executor: E, run_id: Uuid) -> Result<Counts> {
    let rows: Vec<TotalsRow> = sqlx::query_as(
        "SELECT state, sum(batches)::bigint, sum(rows_source)::bigint, sum(rows_inserted)::bigint,
                sum(rows_updated)::bigint, sum(rows_deleted)::bigint, sum(timed)::bigint,
                sum(duration_ms)::bigint, sum(duration_ms_squared)
           FROM backfill.batch_totals WHERE run_id = $1 GROUP BY state",
    )
    .bind(run_id)
    .fetch_all(executor)
    .await?;
    Ok(Counts::from_totals(&rows))
}

/// The same figures counted from the ledger's rows, one by one
/// (`backfill.batch_totals_counted`): what the totals must always equal (a
/// check, slow on a large run). Read in the snapshot of the totals it is
/// held against (one transaction), so a batch moving meanwhile is no difference.
pub async fn recount<'e, E: sqlx::PgExecutor<'e>>(executor: E, run_id: Uuid) -> Result<Counts> {
    let rows: Vec<TotalsRow> = sqlx::query_as(
        "SELECT state, batches, rows_source, rows_inserted, rows_updated, rows_deleted, timed,
                duration_ms, duration_ms_squared
           FROM backfill.batch_totals_counted WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_all(executor)
    .await?;
    Ok(Counts::from_totals(&rows))
}

/// One state's figures: (state, batches, rows from the source, inserted,
/// updated, deleted, batches with a duration, the durations' sum and their
/// sum of squares).
type TotalsRow = (String, i64, i64, i64, i64, i64, i64, i64, f64);

impl Counts {
    /// The figures of each state, added up. Rows and time count whatever the
    /// state; the spread is that of the applied batches' durations.
    fn from_totals(rows: &[TotalsRow]) -> Self {
        let mut counts = Self::default();
        let mut applied_durations = (0, 0, 0.0);
        for (state, batches, source, inserted, updated, deleted, timed, ms, ms_squared) in rows {
            match state.as_str() {
                "pending" => counts.pending += batches,
                "queued" => counts.queued += batches,
                "running" => counts.running += batches,
                "applied" => {
                    counts.applied += batches;
                    applied_durations.0 += timed;
                    applied_durations.1 += ms;
                    applied_durations.2 += ms_squared;
                }
                "failed" => counts.failed += batches,
                _ => {}
            }
            counts.rows.source += source;
            counts.rows.inserted += inserted;
            counts.rows.updated += updated;
            counts.rows.deleted += deleted;
            counts.applied_ms += ms;
        }
        let (n, sum, squares) = applied_durations;
        counts.applied_ms_spread = spread(n, sum, squares);
        counts
    }
}

/// The sample standard deviation of `n` values from their sum and sum of
/// squares, rounded; 0 for fewer than two.
fn spread(n: i64, sum: i64, squares: f64) -> i64 {
    if n < 2 {
        return 0;
    }
    let (n, sum) = (n as f64, sum as f64);
    ((squares - sum * sum / n) / (n - 1.0))
        .max(0.0)
        .sqrt()
        .round() as i64
}

/// A batch that failed, or whose last attempt failed.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Failure {
    pub batch_no: i32,
    pub lo: String,
    pub hi: String,
    pub state: BatchState,
    pub attempts: i32,
    pub last_error: String,
}

pub async fn failures(pool: &PgPool, run_id: Uuid) -> Result<Vec<Failure>> {
    Ok(sqlx::query_as(
        "SELECT batch_no, lo, hi, state, attempts, last_error FROM backfill.batches
          WHERE run_id = $1 AND last_error IS NOT NULL ORDER BY batch_no",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?)
}

/// Puts a run's failed batches back to pending, logged with `actor`, in one
/// transaction. Returns how many came back.
pub async fn retry_failed(pool: &PgPool, run_id: Uuid, actor: &str) -> Result<u64> {
    let mut tx = pool.begin().await?;
    let n = sqlx::query(
        "UPDATE backfill.batches SET state = 'pending' WHERE run_id = $1 AND state = 'failed'",
    )
    .bind(run_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    super::log::append(
        &mut *tx,
        run_id,
        actor,
        "batches_retried",
        None,
        serde_json::json!({ "batches": n }),
    )
    .await?;
    tx.commit().await?;
    Ok(n)
}

/// Inside the transaction that starts a rollback: every batch not applied
/// (pending, queued, running, failed) is fenced — its token bumped and its
/// state `rolled_back` — so no worker can claim it or commit it any more.
/// Updating a ledger row waits for a worker that holds it (one committing its
/// batch under [`mark_applied_if_current`]), so once this commits every
/// batch is either applied, with its before-images, or can never be. Returns
/// the batches fenced.
pub async fn fence_unfinished(conn: &mut PgConnection, run_id: Uuid) -> Result<Vec<u32>> {
    let nos: Vec<i32> = sqlx::query_scalar(
        "UPDATE backfill.batches
            SET state = 'rolled_back', fence = fence + 1,
                last_error = 'fenced by the run''s rollback before it applied'
          WHERE run_id = $1 AND state IN ('pending', 'queued', 'running', 'failed')
          RETURNING batch_no",
    )
    .bind(run_id)
    .fetch_all(conn)
    .await?;
    let mut nos: Vec<u32> = nos
        .into_iter()
        .filter_map(|n| u32::try_from(n).ok())
        .collect();
    nos.sort_unstable();
    Ok(nos)
}

/// Inside a rollback's transaction: the batch's rows are restored.
pub async fn mark_rolled_back(
    conn: &mut sqlx::PgConnection,
    run_id: Uuid,
    batch_no: i32,
) -> Result<()> {
    sqlx::query(
        "UPDATE backfill.batches SET state = 'rolled_back' WHERE run_id = $1 AND batch_no = $2",
    )
    .bind(run_id)
    .bind(batch_no)
    .execute(conn)
    .await?;
    Ok(())
}

/// Retries spent on a run's batches (attempts past each batch's first).
pub async fn retries(pool: &PgPool, run_id: Uuid) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(greatest(attempts - 1, 0)), 0)::bigint FROM backfill.batches WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_one(pool)
    .await?)
}

/// Every batch of a run: number, bounds (as text) and state, in order.
pub async fn ranges(pool: &PgPool, run_id: Uuid) -> Result<Vec<(i32, String, String, String)>> {
    Ok(sqlx::query_as(
        "SELECT batch_no, lo, hi, state FROM backfill.batches WHERE run_id = $1 ORDER BY batch_no",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?)
}

/// The applied batches of a run that exchanged a partition, by batch number.
pub async fn exchanges(
    pool: &PgPool,
    run_id: Uuid,
) -> Result<std::collections::BTreeMap<i32, crate::checks::Exchanged>> {
    let rows: Vec<(i32, sqlx::types::Json<crate::checks::Exchanged>)> = sqlx::query_as(
        "SELECT batch_no, checks->'exchange' FROM backfill.batches
          WHERE run_id = $1 AND state = 'applied' AND checks ? 'exchange'",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(no, x)| (no, x.0)).collect())
}

/// A cell of a run's batch grid: consecutive batches, counted by state, with
/// the first's lower and the last's upper bound. One batch per cell when the
/// run has no more batches than cells.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Cell {
    pub first: i32,
    pub last: i32,
    pub lo: String,
    pub hi: String,
    pub pending: i64,
    pub queued: i64,
    pub running: i64,
    pub applied: i64,
    pub failed: i64,
    pub rolled_back: i64,
    /// Rows inserted, updated and deleted by the cell's applied batches.
    pub rows: i64,
    pub duration_ms: i64,
    pub attempts: i64,
    /// The last error of the cell's first batch that has one.
    pub error: Option<String>,
}

impl Cell {
    #[must_use]
    pub fn batches(&self) -> i64 {
        self.pending + self.queued + self.running + self.applied + self.failed + self.rolled_back
    }
}

/// A run's batches in at most `cells` cells of consecutive batches, in order,
/// in one pass over the run's ledger rows.
pub async fn grid(pool: &PgPool, run_id: Uuid, cells: u32) -> Result<Vec<Cell>> {
    Ok(sqlx::query_as(
        "WITH b AS (
             SELECT *, (row_number() OVER (ORDER BY batch_no) - 1) * $2 / count(*) OVER () AS cell
               FROM backfill.batches WHERE run_id = $1)
         SELECT min(batch_no) AS first, max(batch_no) AS last,
                (array_agg(lo ORDER BY batch_no))[1] AS lo,
                (array_agg(hi ORDER BY batch_no DESC))[1] AS hi,
                count(*) FILTER (WHERE state = 'pending') AS pending,
                count(*) FILTER (WHERE state = 'queued') AS queued,
                count(*) FILTER (WHERE state = 'running') AS running,
                count(*) FILTER (WHERE state = 'applied') AS applied,
                count(*) FILTER (WHERE state = 'failed') AS failed,
                count(*) FILTER (WHERE state = 'rolled_back') AS rolled_back,
                coalesce(sum(rows_inserted + rows_updated + rows_deleted)
                         FILTER (WHERE state = 'applied'), 0)::bigint AS rows,
                coalesce(sum(duration_ms), 0)::bigint AS duration_ms,
                sum(attempts)::bigint AS attempts,
                (array_agg(last_error ORDER BY batch_no) FILTER (WHERE last_error IS NOT NULL))[1] AS error
           FROM b GROUP BY cell ORDER BY cell",
    )
    .bind(run_id)
    .bind(i64::from(cells.max(1)))
    .fetch_all(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_is_the_sample_standard_deviation() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, squared deviations 32, sample variance 32/7.
        let values = [2_i64, 4, 4, 4, 5, 5, 7, 9];
        let sum: i64 = values.iter().sum();
        let squares: f64 = values.iter().map(|v| (v * v) as f64).sum();
        assert_eq!(
            spread(8, sum, squares),
            (32.0_f64 / 7.0).sqrt().round() as i64
        );
        assert_eq!(spread(1, 5, 25.0), 0);
        assert_eq!(spread(0, 0, 0.0), 0);
        // Durations of a large run: a million batches near 250 ms keep their spread.
        let n = 1_000_000_i64;
        let (sum, squares) = (0..n).fold((0_i64, 0.0_f64), |(s, q), i| {
            let v = 240 + i % 21;
            (s + v, q + (v * v) as f64)
        });
        assert_eq!(spread(n, sum, squares), 6);
    }

    #[test]
    fn totals_add_up_by_state() {
        let row =
            |state: &str, batches, ms| (state.to_owned(), batches, 10, 1, 2, 3, batches, ms, 0.0);
        let counts = Counts::from_totals(&[
            row("pending", 5, 0),
            row("applied", 3, 30),
            row("applied", -1, -10),
            row("rolled_back", 2, 4),
        ]);
        assert_eq!((counts.pending, counts.applied, counts.total()), (5, 2, 7));
        assert_eq!(
            (counts.rows.source, counts.rows.deleted, counts.applied_ms),
            (40, 12, 24)
        );
    }
}
