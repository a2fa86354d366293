//! The warehouse transaction of one batch.
//!
//! `merge` (and the tables staging-swap and parallel-version build) is one
//! statement, then the checks on what it measured:
//!
//! 1. read the brief's source for `[lo, hi)` once, beside the row each source
//!    row replaces (in the statement's snapshot: the row before the write; for
//!    key-range batches, a full join with the range's rows, which also names
//!    the rows to delete and holds the range for the metrics before);
//!    measure the grain on it: repeated or NULL keys, rows outside the batch
//!    range (or not matching `scope.where`, when given); measure the metrics
//!    before; write only the new and changed rows (`IS DISTINCT FROM`), each
//!    only as the version read (an update or removal conditional on its
//!    `xmin`, an insert that yields to a key inserted meanwhile), saving
//!    the before-images of the rows replaced with a hash of what was written;
//!    delete (and count) the rows of the range the source no longer yields
//!    (`on_missing = "delete"`), or count them (`"keep"`); count NULLs among
//!    the rows written and orphaned references among the new or changed ones;
//!    when the join holds the whole range, measure the metrics after on the
//!    rows the upsert returned and the rows of the range it left as they were;
//! 2. if the source yielded nothing and the range holds no rows, skip to 4;
//! 3. check the drift guard and the grain (a failure rolls back the write with
//!    everything else), measure the metrics after (unless step 1 did);
//! 4. lock the batch's ledger row and check the fencing token (a stale worker
//!    rolls back), mark the batch applied with its figures, append to the run log.
//!
//! `partition-overwrite` locks what it rewrites against concurrent writers
//! (the partitions its range meets: `lock_rewritten`), runs the source into
//! the run's working set (a
//! temporary table per connection, emptied at commit) measuring the grain,
//! checks drift and grain, measures the metrics before, deletes the range
//! (counting the rows the source does not yield again) and inserts the source
//! rows, measures the metrics after, then 4. When the range is exactly one
//! partition of the target, the batch builds that partition whole and
//! exchanges it instead (`exchange.rs`).
//!
//! Every statement on the range is narrowed to the rows the backfill owns
//! (`scope.where`).
//!
//! All of it commits together or not at all.

mod exchange;
mod statements;

use statements::{Binds, Counts, RangeRows};
pub use statements::{ColumnTypes, WritePlan, column_types};

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
        let (rows, mut checks) = exchange::write(&mut tx, plan, x, &partition, work).await?;
        count_at_lower_bound(&mut tx, plan, work, &mut checks).await?;
        return commit_figures(tx, work, rows, checks, worker).await;
    }
    let (rows, mut checks) = match plan.merge.get(plan.scope.rule_for(work.lo)) {
        Some(step) => merge(&mut tx, pool, plan, step, work).await?,
        None => through_working_set(&mut tx, plan, work).await?,
    };
    count_at_lower_bound(&mut tx, plan, work, &mut checks).await?;
    commit_figures(tx, work, rows, checks, worker).await
}

/// When every unmatched row of the batch sits at its lower bound, counts the
/// source's rows there: none at all is a source written with `> $1`, which
/// the guard halts at whatever share (`Unmatched::skips_lower_bound`).
async fn count_at_lower_bound(
    tx: &mut sqlx::PgConnection,
    plan: &WritePlan,
    work: BatchWork,
    checks: &mut BatchChecks,
) -> Result<()> {
    if !checks.unmatched.all_at_lower_bound() || checks.empty_source {
        return Ok(());
    }
    let n: i64 = sqlx::query_scalar(AssertSqlSafe(
        plan.count_at_lower_bound[plan.scope.rule_for(work.lo)].as_str(),
    ))
    .bind(work.lo)
    .bind(work.hi)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| BatchError::from_sql("counting the source's rows at the lower bound", e))?;
    checks.unmatched.source_at_lower_bound = Some(n);
    Ok(())
}

/// What the source's rows say, as the first columns of a batch's first
/// statement: rows, then the [`Grain`], then whether the range holds rows.
fn source_figures(row: &sqlx::postgres::PgRow, what: &'static str) -> Result<(i64, Grain, bool)> {
    use sqlx::Row as _;
    let sql = |e| BatchError::from_sql(what, e);
    let count = |i: usize| row.try_get::<i64, _>(i).map_err(sql);
    Ok((
        count(0)?,
        Grain {
            repeated: count(1)?,
            null_keys: count(2)?,
            outside: count(3)?,
            unowned: count(4)?,
        },
        row.try_get::<bool, _>(5).map_err(sql)?,
    ))
}

/// Whether a batch has anything to do: a source that yields nothing for a
/// range without rows changes and leaves nothing, so the checks and writes
/// are skipped (sparse key ranges and empty days are common). With rows in
/// the range, every one of them is unmatched, and the guard must see them.
fn idle(
    plan: &WritePlan,
    work: BatchWork,
    source: i64,
    range_has_rows: bool,
    checks: &mut BatchChecks,
) -> bool {
    checks.empty_source = source == 0 && range_has_rows;
    checks.empty_source_accepted =
        checks.empty_source && plan.scope.accepts_empty_source(work.lo, work.hi);
    source == 0 && !range_has_rows
}

/// merge: the batch's one statement (`WritePlan::merge`), then the drift
/// guard and the grain on what it measured (a failure rolls the write back
/// with everything else), and the metrics after.
async fn merge(
    tx: &mut sqlx::PgConnection,
    pool: &PgPool,
    plan: &WritePlan,
    step: &statements::Step,
    work: BatchWork,
) -> Result<(RowCounts, BatchChecks)> {
    let row = match bind(step, work)?.fetch_one(&mut *tx).await {
        Ok(row) => row,
        Err(e) => return Err(merge_failure(pool, plan, e).await),
    };
    let (source, grain, range_has_rows) = source_figures(&row, step.what)?;
    let mut rows = RowCounts {
        source,
        ..RowCounts::default()
    };
    let mut checks = BatchChecks::default();
    if idle(plan, work, source, range_has_rows, &mut checks) {
        return Ok((rows, checks));
    }
    check_drift(tx, plan).await?;
    check_grain(tx, plan, work, grain).await?;
    // The statement's row: the source's figures, then what it wrote, then
    // what it removed or counted, then the metrics before.
    let (written, removed, metrics) = (6, 10, 13);
    take_counts(
        &row,
        written,
        Counts::Written,
        step.what,
        plan,
        &mut rows,
        &mut checks,
    )?;
    take_counts(
        &row,
        removed,
        step.counts,
        step.what,
        plan,
        &mut rows,
        &mut checks,
    )?;
    settle_range_rows(plan, &rows, &mut checks);
    let measured = plan.metrics_after.len();
    // The metrics after, as the statement measured them, hold only when it
    // wrote every row it meant to (its last column counts those a concurrent
    // writer took first).
    let after_in_merge = plan.after_in_merge && {
        use sqlx::Row as _;
        let skipped: i64 = row
            .try_get(metrics + 4 * measured)
            .map_err(|e| BatchError::from_sql(step.what, e))?;
        skipped == 0
    };
    for (i, (metric, query)) in plan.metrics_after.iter().enumerate() {
        let before = groups_at(&row, metrics + 2 * i, step.what)?;
        let after = if after_in_merge {
            groups_at(&row, metrics + 2 * (measured + i), step.what)?
        } else {
            metric_groups(tx, query, work).await?
        };
        compare_metrics(&mut checks, metric, &before, &after);
    }
    Ok((rows, checks))
}

/// A metric's groups as a statement returns them: its groups, then their
/// values, as two arrays from column `at`.
fn groups_at(row: &sqlx::postgres::PgRow, at: usize, what: &'static str) -> Result<Groups> {
    use sqlx::Row as _;
    let sql = |e| BatchError::from_sql(what, e);
    let groups: Option<Vec<Option<String>>> = row.try_get(at).map_err(sql)?;
    let values: Option<Vec<Option<f64>>> = row.try_get(at + 1).map_err(sql)?;
    Ok(groups
        .unwrap_or_default()
        .into_iter()
        .map(Metric::group_name)
        .zip(values.unwrap_or_default())
        .collect())
}

/// A failed merge statement, named as well as it can be: a table changed
/// under the run (a statement the catalog refused, when the drift guard,
/// asked on another connection, finds a change), or the statement's own
/// error — a lost connection is only that, and is retried. (A key the source
/// yields twice fails no statement: the grain counts it after.)
async fn merge_failure(pool: &PgPool, plan: &WritePlan, e: sqlx::Error) -> BatchError {
    // Class 42: a column, table or type the statement names is not as it was.
    let catalog = matches!(&e, sqlx::Error::Database(db)
        if db.code().is_some_and(|c| c.starts_with("42")));
    if catalog
        && let Ok(mut conn) = pool.acquire().await
        && let Err(drift @ BatchError::Permanent(_)) = check_drift(&mut conn, plan).await
    {
        return drift;
    }
    BatchError::from_sql("the brief's source or the batch's write failed", e)
}

/// partition-overwrite row by row: what it rewrites locked, the source into
/// the run's working set, then the strategy's statements.
async fn through_working_set(
    tx: &mut sqlx::PgConnection,
    plan: &WritePlan,
    work: BatchWork,
) -> Result<(RowCounts, BatchChecks)> {
    let sql = |context: &'static str| move |e: sqlx::Error| BatchError::from_sql(context, e);
    lock_rewritten(tx, plan, work).await?;
    sqlx::raw_sql(AssertSqlSafe(plan.create_working_set.as_str()))
        .execute(&mut *tx)
        .await
        .map_err(sql("create working set"))?;
    let what = "the brief's source query failed";
    let row = sqlx::query(AssertSqlSafe(
        plan.fill_working_set[plan.scope.rule_for(work.lo)].as_str(),
    ))
    .bind(work.lo)
    .bind(work.hi)
    .fetch_one(&mut *tx)
    .await
    .map_err(sql(what))?;
    let (source, grain, range_has_rows) = source_figures(&row, what)?;
    let mut rows = RowCounts {
        source,
        ..RowCounts::default()
    };
    let mut checks = BatchChecks::default();
    if !idle(plan, work, source, range_has_rows, &mut checks) {
        check_drift(tx, plan).await?;
        check_grain(tx, plan, work, grain).await?;
        write(tx, plan, work, &mut rows, &mut checks).await?;
    }
    Ok((rows, checks))
}

/// Deleting a range's rows and inserting them again ends the update chain a
/// concurrent writer's `UPDATE` or `DELETE` follows: at READ COMMITTED it
/// would find its row gone and write nothing, and a batch that read the
/// source before the writer committed would put back a row the writer
/// deleted. So before it reads anything, the batch locks what it rewrites in
/// `SHARE ROW EXCLUSIVE` mode: writers to it wait for the batch's commit, and
/// each of the batch's statements, its snapshot taken after the lock, sees
/// every write committed before. On a partitioned table that is only the
/// partitions the batch's range meets (the default one when no other holds
/// it; all of them when the table is not partitioned by `batch_by`), so the
/// pipeline's writes elsewhere go on — when the worker may lock them: a
/// partition's privileges are its own, and a worker granted only the table
/// locks the whole table. One statement, in name order, so batches never wait
/// for each other in a cycle; a deadlock with another writer is retried.
async fn lock_rewritten(
    tx: &mut sqlx::PgConnection,
    plan: &WritePlan,
    work: BatchWork,
) -> Result<()> {
    use backfill_shared::brief::BatchRange;
    use backfill_shared::partitions::{self, Layout};
    let sql = |e| BatchError::from_sql("locking the range the batch rewrites", e);
    let mut locked = vec![plan.written.quoted()];
    if let Some(key) = partitions::partition_key(&mut *tx, &plan.written)
        .await
        .map_err(sql)?
    {
        let children = partitions::children(&mut *tx, &plan.written)
            .await
            .map_err(sql)?;
        let range = BatchRange {
            no: work.batch_no,
            lo: work.lo,
            hi: work.hi,
        };
        let layout = Layout::of(
            &key,
            &plan.scope.batch_by.column,
            &children,
            &[range],
            work.lo.kind(),
        );
        let mut meeting: Vec<String> = children
            .iter()
            .zip(&layout.partitions)
            .filter(|(_, meets)| meets.batches > 0)
            .map(|(child, _)| child.name.quoted())
            .collect();
        meeting.sort();
        let may: bool = sqlx::query_scalar(
            "SELECT coalesce(bool_and(has_table_privilege(t::regclass, 'UPDATE, DELETE, TRUNCATE')), false)
               FROM unnest($1::text[]) t",
        )
        .bind(&meeting)
        .fetch_one(&mut *tx)
        .await
        .map_err(sql)?;
        if may {
            locked = meeting;
        }
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
        locked.join(", ")
    )))
    .execute(&mut *tx)
    .await
    .map_err(sql)?;
    Ok(())
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

/// A source that yields keys more than once, with how many (the source run
/// again, on `conn`).
async fn duplicate_grain(
    conn: &mut sqlx::PgConnection,
    plan: &WritePlan,
    work: BatchWork,
) -> BatchError {
    let keys = match sqlx::query_scalar::<_, i64>(AssertSqlSafe(
        plan.count_duplicates[plan.scope.rule_for(work.lo)].as_str(),
    ))
    .bind(work.lo)
    .bind(work.hi)
    .fetch_one(conn)
    .await
    {
        Ok(n) => format!("{n} key(s)"),
        Err(_) => "keys".to_owned(),
    };
    BatchError::Permanent(format!(
        "duplicate grain: the source yielded {keys} more than once in [{}, {}); \
         the target allows one row per key — fix the source (a join that fans out?)",
        work.lo, work.hi
    ))
}

/// The grain of a batch whose source yielded rows (or whose range must lose
/// rows), before its writes commit.
async fn check_grain(
    conn: &mut sqlx::PgConnection,
    plan: &WritePlan,
    work: BatchWork,
    grain: Grain,
) -> Result<()> {
    let Grain {
        repeated,
        null_keys,
        outside,
        unowned,
    } = grain;
    if repeated > 0 {
        return Err(duplicate_grain(conn, plan, work).await);
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
    let mut before = Vec::new();
    for (metric, query) in &plan.metrics_before {
        before.push((metric, metric_groups(tx, query, work).await?));
    }

    for step in &plan.steps {
        let row = bind(step, work)?
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| BatchError::from_sql(step.what, e))?;
        take_counts(&row, 0, step.counts, step.what, plan, rows, checks)?;
    }
    settle_range_rows(plan, rows, checks);
    for ((metric, before), (_, query)) in before.into_iter().zip(&plan.metrics_after) {
        let after = metric_groups(tx, query, work).await?;
        compare_metrics(checks, metric, &before, &after);
    }
    Ok(())
}

/// A step's statement with its parameters bound.
fn bind(
    step: &statements::Step,
    work: BatchWork,
) -> Result<sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>> {
    let batch = || {
        i32::try_from(work.batch_no)
            .map_err(|_| BatchError::Permanent("batch number out of range".into()))
    };
    let q = sqlx::query(AssertSqlSafe(step.sql.as_str()));
    Ok(match step.binds {
        Binds::Batch => q.bind(batch()?),
        Binds::Range => q.bind(work.lo).bind(work.hi),
        Binds::RangeAndBatch => q.bind(work.lo).bind(work.hi).bind(batch()?),
        Binds::None => q,
    })
}

/// The figures a statement returned, as `counts` lays them out from column `at`.
fn take_counts(
    row: &sqlx::postgres::PgRow,
    at: usize,
    counts: Counts,
    what: &'static str,
    plan: &WritePlan,
    rows: &mut RowCounts,
    checks: &mut BatchChecks,
) -> Result<()> {
    use sqlx::Row as _;
    let sql = |e| BatchError::from_sql(what, e);
    let count = |i: usize| row.try_get::<i64, _>(at + i).map_err(sql);
    match counts {
        Counts::Written => {
            rows.inserted += count(0)?;
            rows.updated += count(1)?;
            let counts = |i: usize| row.try_get::<Vec<i64>, _>(at + i).map_err(sql);
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
                source_at_lower_bound: None,
            };
        }
    }
    Ok(())
}

/// How many target rows the batch's range held before the write.
fn settle_range_rows(plan: &WritePlan, rows: &RowCounts, checks: &mut BatchChecks) {
    match plan.range_rows {
        RangeRows::Deleted => checks.unmatched.range_rows = rows.deleted,
        // Every source row either inserted a key or met the range's row of it.
        RangeRows::MatchedAndDeleted => {
            checks.unmatched.range_rows = rows.source - rows.inserted + checks.unmatched.rows;
        }
        RangeRows::Measured => {}
    }
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
