//! The warehouse transaction of one batch:
//!
//! 1. run the brief's source for `[lo, hi)` into the run's working set (a
//!    temporary table per connection, emptied at commit), measuring the grain
//!    on the rows as they go in: repeated or NULL keys, rows outside the batch
//!    range (or not matching `scope.where`, when given);
//! 2. if the source yielded nothing and the range holds no rows, skip to 5;
//! 3. check the drift guard and the grain;
//! 4. measure the metrics before, write by strategy, saving before-images of
//!    every row changed (when the target is live and `snapshot = true`) and
//!    counting NULLs and orphaned references among the rows written, count the
//!    range's rows the source did not reproduce (unmatched), measure the
//!    metrics after:
//!    - `merge` (and the tables staging-swap and parallel-version build): one
//!      upsert of new and changed rows (`IS DISTINCT FROM`) that also saves the
//!      before-images of the rows it updates, with a hash of what it wrote;
//!      then delete (and count) the rows of the range the source no longer
//!      yields (`on_missing = "delete"`), or count them (`"keep"`);
//!    - `partition-overwrite`: delete the range, counting the rows the source
//!      does not yield again, and insert the source rows — or, when the range
//!      is exactly one partition of the target, build that partition whole and
//!      exchange it (`exchange.rs`);
//! 5. lock the batch's ledger row and check the fencing token (a stale worker
//!    rolls back), mark the batch applied with its figures, append to the run log.
//!
//! Every statement on the range is narrowed to the rows the backfill owns
//! (`scope.where`).
//!
//! All of it commits together or not at all.

mod exchange;
mod statements;

pub use statements::WritePlan;
use statements::{Binds, Counts, RangeRows};

use crate::error::{BatchError, Result};
use backfill_shared::brief::{Bound, Metric};
use backfill_shared::checks::{BatchChecks, MetricGroup, Unmatched};
use backfill_shared::control::drift;
use backfill_shared::control::{batches, batches::RowCounts};
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

/// One batch to apply.
#[derive(Debug, Clone, Copy)]
pub struct BatchWork {
    pub run_id: Uuid,
    pub batch_no: u32,
    pub lo: Bound,
    pub hi: Bound,
    pub fence: i64,
}

/// Applies one batch in one transaction. Returns its row counts.
pub async fn apply(
    pool: &PgPool,
    plan: &WritePlan,
    work: BatchWork,
    worker: &str,
) -> Result<BatchOutcome> {
    let (tx, outcome) = prepare(pool, plan, work, worker).await?;
    tx.commit()
        .await
        .map_err(|e| BatchError::from_sql("commit", e))?;
    Ok(outcome)
}

/// Everything [`apply`] does but the commit: the caller commits the transaction
/// once it knows it may (its lease is still held), or drops it to roll back.
pub async fn prepare(
    pool: &PgPool,
    plan: &WritePlan,
    work: BatchWork,
    worker: &str,
) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, BatchOutcome)> {
    let sql = |context: &'static str| move |e: sqlx::Error| BatchError::from_sql(context, e);
    let mut tx = pool.begin().await.map_err(sql("begin"))?;

    // A batch that covers one partition exactly may rewrite it whole, straight
    // from the source into a table of its own whose key and `CHECK` hold the
    // grain (`exchange.rs`).
    if let Some(x) = &plan.exchange
        && let Some(partition) = exchange::partition_for(&mut tx, x, work).await?
    {
        check_drift(&mut tx, plan).await?;
        let (rows, checks) = exchange::write(&mut tx, plan, x, &partition, work).await?;
        return commit_figures(tx, work, rows, checks, worker).await;
    }
    sqlx::raw_sql(AssertSqlSafe(plan.create_working_set.as_str()))
        .execute(&mut *tx)
        .await
        .map_err(sql("create working set"))?;
    let (source, repeated, null_keys, outside, unowned, range_has_rows): (
        i64,
        i64,
        i64,
        i64,
        i64,
        bool,
    ) = sqlx::query_as(AssertSqlSafe(
        plan.fill_working_set[plan.scope.rule_for(work.lo)].as_str(),
    ))
    .bind(work.lo)
    .bind(work.hi)
    .fetch_one(&mut *tx)
    .await
    .map_err(sql("the brief's source query failed"))?;
    let grain = Grain {
        repeated,
        null_keys,
        outside,
        unowned,
    };
    let mut rows = RowCounts {
        source,
        ..RowCounts::default()
    };
    let mut checks = BatchChecks::default();
    // A batch whose source yields nothing for a range without rows changes and
    // leaves nothing: skip the checks and the writes (sparse key ranges and
    // empty days are common). With rows in the range, every one of them is
    // unmatched, and the guard must see them.
    let idle = source == 0 && !range_has_rows;
    checks.empty_source = source == 0 && range_has_rows;
    checks.empty_source_accepted =
        checks.empty_source && plan.scope.accepts_empty_source(work.lo, work.hi);
    if !idle {
        check_drift(&mut tx, plan).await?;
        check_grain(&mut tx, plan, work, grain).await?;
        write(&mut tx, plan, work, &mut rows, &mut checks).await?;
    }
    commit_figures(tx, work, rows, checks, worker).await
}

/// The batch's last statement: its figures recorded and the batch marked
/// applied, under the fence.
async fn commit_figures(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    work: BatchWork,
    rows: RowCounts,
    checks: BatchChecks,
    worker: &str,
) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, BatchOutcome)> {
    // The fence is checked last, under the batch row's lock held to commit: a
    // worker that stalled (SIGSTOP, a long GC, a partition) while a newer claim
    // applied the batch is refused here, and a stalled worker never blocks the
    // newer one's claim before it gets this far.
    let duration_ms = batches::mark_applied_if_current(
        &mut tx,
        batches::Commit {
            run_id: work.run_id,
            batch_no: work.batch_no,
            fence: work.fence,
            rows,
            checks: &checks,
            worker,
        },
    )
    .await?;
    let Some(duration_ms) = duration_ms else {
        return Err(BatchError::Stale {
            batch_no: work.batch_no,
            mine: work.fence,
        });
    };
    Ok((
        tx,
        BatchOutcome {
            rows,
            checks,
            duration_ms,
        },
    ))
}

/// What the fill measured of the working set's grain.
#[derive(Debug, Clone, Copy)]
struct Grain {
    /// Rows beyond the first of each repeated key.
    repeated: i64,
    null_keys: i64,
    outside: i64,
    unowned: i64,
}

/// The drift guard: refuses a batch when a table the run depends on changed
/// its columns since the run started.
async fn check_drift(tx: &mut sqlx::PgConnection, plan: &WritePlan) -> Result<()> {
    if !plan.fingerprints.is_empty() {
        let tables: Vec<String> = plan.fingerprints.keys().cloned().collect();
        let now = drift::fingerprints(&mut *tx, &tables).await?;
        let changed = drift::changes(&plan.fingerprints, &now);
        if !changed.is_empty() {
            return Err(BatchError::Permanent(format!(
                "drift guard: a table this run depends on changed since it started: {}. \
                 Check the deploy; roll back or cancel this run and plan again",
                changed.join("; ")
            )));
        }
    }
    Ok(())
}

/// The grain of a batch whose source yielded rows (or whose range must lose
/// rows), before it writes.
async fn check_grain(
    tx: &mut sqlx::PgConnection,
    plan: &WritePlan,
    work: BatchWork,
    grain: Grain,
) -> Result<()> {
    let sql = |context: &'static str| move |e: sqlx::Error| BatchError::from_sql(context, e);
    let Grain {
        repeated,
        null_keys,
        outside,
        unowned,
    } = grain;
    let duplicates = if repeated > 0 {
        sqlx::query_scalar(AssertSqlSafe(plan.count_duplicates.as_str()))
            .fetch_one(&mut *tx)
            .await
            .map_err(sql("counting repeated keys"))?
    } else {
        0i64
    };
    if duplicates > 0 {
        return Err(BatchError::Permanent(format!(
            "duplicate grain: the source yielded {duplicates} key(s) more than once in [{}, {}); \
             the target allows one row per key — fix the source (a join that fans out?)",
            work.lo, work.hi
        )));
    }
    if null_keys > 0 {
        return Err(BatchError::Permanent(format!(
            "the source yielded {null_keys} row(s) with a NULL key in [{}, {}); every row needs its key",
            work.lo, work.hi
        )));
    }
    if outside > 0 {
        return Err(BatchError::Permanent(format!(
            "the source yielded {outside} row(s) whose batch_by value lies outside [{}, {}); \
             filter the source on $1 and $2 so batches do not overlap",
            work.lo, work.hi
        )));
    }
    if unowned > 0 {
        return Err(BatchError::Permanent(format!(
            "the source yielded {unowned} row(s) in [{}, {}) that scope.where does not match; \
             the backfill owns only the rows it matches — filter the source the same way",
            work.lo, work.hi
        )));
    }

    Ok(())
}

/// The writes of a batch that deletes and inserts rows (or upserts them):
/// metrics before, the strategy's statements (which count NULLs and orphans
/// among the rows they write), metrics after.
async fn write(
    tx: &mut sqlx::PgConnection,
    plan: &WritePlan,
    work: BatchWork,
    rows: &mut RowCounts,
    checks: &mut BatchChecks,
) -> Result<()> {
    let sql = |context: &'static str| move |e: sqlx::Error| BatchError::from_sql(context, e);
    let batch = i32::try_from(work.batch_no)
        .map_err(|_| BatchError::Permanent("batch number out of range".into()))?;
    let mut before = Vec::new();
    for (metric, query) in &plan.metrics_before {
        before.push((metric, metric_groups(tx, query, work).await?));
    }

    for step in &plan.steps {
        let q = sqlx::query(AssertSqlSafe(step.sql.as_str()));
        let q = match step.binds {
            Binds::Batch => q.bind(batch),
            Binds::Range => q.bind(work.lo).bind(work.hi),
            Binds::RangeAndBatch => q.bind(work.lo).bind(work.hi).bind(batch),
            Binds::None => q,
        };
        use sqlx::Row as _;
        let row = q.fetch_one(&mut *tx).await.map_err(sql(step.what))?;
        let count = |i: usize| row.try_get::<i64, _>(i).map_err(sql(step.what));
        match step.counts {
            Counts::Written => {
                rows.inserted += count(0)?;
                rows.updated += count(1)?;
                let counts = |i: usize| row.try_get::<Vec<i64>, _>(i).map_err(sql(step.what));
                checks.nulls = plan.null_columns.iter().cloned().zip(counts(2)?).collect();
                checks.orphans = plan
                    .reference_columns
                    .iter()
                    .cloned()
                    .zip(counts(3)?)
                    .collect();
            }
            Counts::DeletedAndUnmatched => {
                rows.deleted += count(0)?;
                checks.unmatched.rows += count(1)?;
                checks.unmatched.at_lower_bound += count(2)?;
            }
            Counts::Unmatched => {
                checks.unmatched = Unmatched {
                    rows: count(0)?,
                    at_lower_bound: count(1)?,
                    range_rows: count(2)?,
                };
            }
        }
    }
    match plan.range_rows {
        RangeRows::Deleted => checks.unmatched.range_rows = rows.deleted,
        // Every source row either inserted a key or met the range's row of it.
        RangeRows::MatchedAndDeleted => {
            checks.unmatched.range_rows = rows.source - rows.inserted + checks.unmatched.rows;
        }
        RangeRows::Measured => {}
    }
    for ((metric, before), (_, query)) in before.into_iter().zip(&plan.metrics_after) {
        let after = metric_groups(tx, query, work).await?;
        compare_metrics(checks, metric, &before, &after);
    }
    Ok(())
}

/// A metric's groups on the range before and after the write, side by side.
fn compare_metrics(checks: &mut BatchChecks, metric: &str, before: &Groups, after: &Groups) {
    let mut groups: Vec<&String> = before.keys().chain(after.keys()).collect();
    groups.sort();
    groups.dedup();
    checks
        .metrics
        .extend(groups.into_iter().map(|g| MetricGroup {
            metric: metric.to_owned(),
            group: g.clone(),
            before: before.get(g).copied().flatten(),
            after: after.get(g).copied().flatten(),
        }));
}

/// A metric's value per group.
type Groups = std::collections::BTreeMap<String, Option<f64>>;

/// What one applied batch wrote and measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    pub rows: RowCounts,
    pub checks: BatchChecks,
    /// From the claim to the applied mark, as the ledger records it.
    pub duration_ms: i64,
}

/// A metric's value per group on the batch's range.
async fn metric_groups(
    tx: &mut sqlx::PgConnection,
    query: &str,
    work: BatchWork,
) -> Result<Groups> {
    let rows: Vec<(Option<String>, Option<f64>)> = sqlx::query_as(AssertSqlSafe(query))
        .bind(work.lo)
        .bind(work.hi)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| BatchError::from_sql("a validation metric failed", e))?;
    Ok(rows
        .into_iter()
        .map(|(g, v)| (Metric::group_name(g), v))
        .collect())
}
