//! The warehouse transaction of one batch:
//!
//! 1. run the brief's source for `[lo, hi)` into the run's working set (a
//!    temporary table per connection, emptied at commit);
//! 2. if the source yielded nothing and the range holds no rows, skip to 5;
//! 3. check the drift guard and the grain: no duplicate or null keys, every row
//!    inside the batch range (and matching `scope.where`, when given);
//! 4. measure the metrics before, write by strategy, saving before-images of
//!    every row changed (when the target is live and `snapshot = true`), count
//!    the range's rows the source did not reproduce (unmatched), measure the
//!    metrics after, NULLs and orphaned references:
//!    - `merge` (and the tables staging-swap and parallel-version build): one
//!      upsert of new and changed rows (`IS DISTINCT FROM`) that also saves the
//!      before-images of the rows it updates, with a hash of what it wrote;
//!      then delete (and count) the rows of the range the source no longer
//!      yields (`on_missing = "delete"`), or count them (`"keep"`);
//!    - `partition-overwrite`: delete the range, counting the rows the source
//!      does not yield again, and insert the source rows;
//! 5. lock the batch's ledger row and check the fencing token (a stale worker
//!    rolls back), mark the batch applied with its figures, append to the run log.
//!
//! Every statement on the range is narrowed to the rows the backfill owns
//! (`scope.where`).
//!
//! All of it commits together or not at all.

use crate::error::{BatchError, Result};
use backfill_shared::brief::{Bound, Brief, Metric, OnMissing, Strategy};
use backfill_shared::checks::{BatchChecks, MetricGroup, Unmatched};
use backfill_shared::control::drift::{self, Fingerprints};
use backfill_shared::control::{batches, batches::RowCounts, log};
use backfill_shared::sql::{TableName, column_list, key_join, quote_ident};
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

/// Which parameters a statement takes, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binds {
    /// `$1` = batch number.
    Batch,
    /// `$1` = lower bound, `$2` = upper bound.
    Range,
    /// `$1` = lower bound, `$2` = upper bound, `$3` = batch number.
    RangeAndBatch,
    None,
}

/// Which figures a statement yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counts {
    /// Its row count is the rows inserted.
    Inserted,
    /// It returns one row: (inserted, updated).
    InsertedAndUpdated,
    /// It returns one row: (deleted, unmatched, unmatched at the lower bound).
    DeletedAndUnmatched,
    /// It returns one row: (unmatched, unmatched at the lower bound, rows of the range).
    Unmatched,
}

/// Where a batch learns how many target rows its range held before the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeRows {
    /// The strategy empties the range before it inserts: its delete counts them.
    Deleted,
    /// The source rows that met a target row, plus the unmatched rows deleted.
    MatchedAndDeleted,
    /// The measurement of unmatched rows counts them.
    Measured,
}

/// One write statement of a batch.
#[derive(Debug)]
struct Step {
    sql: String,
    binds: Binds,
    counts: Counts,
    what: &'static str,
}

/// The statements of one run, built once from its brief and strategy.
/// Identifiers are quoted; bounds and batch numbers are bound parameters.
#[derive(Debug)]
pub struct WritePlan {
    create_working_set: String,
    fill_working_set: String,
    /// Whether the written table has rows in the batch's range.
    range_has_rows: String,
    range_rows: RangeRows,
    check_grain: String,
    steps: Vec<Step>,
    /// Per metric: its groups on the live target's range (what readers saw before).
    metrics_before: Vec<(String, String)>,
    /// Per metric: its groups on the written table's range, after the write.
    metrics_after: Vec<(String, String)>,
    nulls_after: String,
    /// The rewritten columns, in the order `nulls_after` counts them.
    null_columns: Vec<String>,
    /// The drift guard: column definitions the run started with.
    fingerprints: Fingerprints,
    /// Per referencing column: rows of the range whose parent is missing.
    orphans_after: Vec<(String, String)>,
}

impl WritePlan {
    /// `write_to` is the table batches write to: the target itself (merge,
    /// partition-overwrite) or the table built beside it (staging-swap,
    /// parallel-version). `image_table` receives before-images, if any.
    #[must_use]
    pub fn new(brief: &Brief, write_to: &TableName, image_table: Option<&TableName>) -> Self {
        let scope = &brief.scope;
        let target = write_to.quoted();
        let written = scope.written_columns();
        let all = column_list(&written, None);
        let in_s = column_list(&written, Some("s"));
        let key_match = key_join(&scope.key, "t", "s");
        let key_group = column_list(&scope.key, None);
        let null_key = scope
            .key
            .iter()
            .map(|k| format!("{} IS NULL", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" OR ");
        let by = quote_ident(&scope.batch_by.column);
        let image = image_table.map(TableName::quoted);
        // The batch's working set: a temporary table per run and connection,
        // created once and emptied at every commit, so a batch pays no DDL and
        // its statements stay prepared.
        let ws = format!("bf_ws_{}", &Uuid::new_v4().simple().to_string()[..12]);
        // With before-images, a data-modifying statement feeds its RETURNING rows
        // into the image table (`op` says what they are).
        let imaged = |core: String, op: char, param: &str| match &image {
            Some(img) => format!(
                "WITH changed AS ({core} RETURNING *) INSERT INTO {img} SELECT {param}, '{op}', changed.* FROM changed"
            ),
            None => core,
        };
        let with_batch = |binds: Binds| match (image.is_some(), binds) {
            (true, Binds::None) => Binds::Batch,
            (true, Binds::Range) => Binds::RangeAndBatch,
            (_, b) => b,
        };
        let in_range = scope.owned_range("t");
        // A delete of the range's rows (narrowed by `filter`) that saves their
        // before-images and yields `(deleted, unmatched, unmatched at the lower
        // bound)` through `count`, which reads the deleted rows as `d`.
        let mut returned = scope.key.clone();
        if !returned.contains(&scope.batch_by.column) {
            returned.push(scope.batch_by.column.clone());
        }
        let returned = match &image {
            Some(_) => "t.*".to_owned(),
            None => column_list(&returned, Some("t")),
        };
        let d_match = key_join(&scope.key, "d", "s");
        let counted_delete = |filter: &str, count: &str| {
            let saved = image.as_ref().map_or_else(String::new, |img| {
                format!(", bf_image AS (INSERT INTO {img} SELECT $3, 'D', d.* FROM d)")
            });
            format!(
                "WITH d AS (DELETE FROM {target} t WHERE {in_range} {filter} RETURNING {returned}){saved}\n{count}"
            )
        };
        let mut steps = Vec::new();
        match brief.write.strategy {
            Strategy::PartitionOverwrite => {
                steps.push(Step {
                    sql: counted_delete(
                        "",
                        &format!(
                            "SELECT count(*), count(*) FILTER (WHERE bf_u), count(*) FILTER (WHERE bf_u AND bf_lo)
                               FROM (SELECT NOT EXISTS (SELECT 1 FROM {ws} s WHERE {d_match}) AS bf_u, d.{by} = $1 AS bf_lo FROM d) x"
                        ),
                    ),
                    binds: with_batch(Binds::Range),
                    counts: Counts::DeletedAndUnmatched,
                    what: "delete of the batch's range",
                });
                steps.push(Step {
                    sql: imaged(
                        format!("INSERT INTO {target} ({all}) SELECT {in_s} FROM {ws} s"),
                        'I',
                        "$1",
                    ),
                    binds: with_batch(Binds::None),
                    counts: Counts::Inserted,
                    what: "insert of the source rows",
                });
            }
            Strategy::Merge | Strategy::StagingSwap | Strategy::ParallelVersion => {
                let excluded = scope
                    .columns
                    .iter()
                    .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let changed_excluded = format!(
                    "ROW({}) IS DISTINCT FROM ROW({})",
                    column_list(&scope.columns, Some("t")),
                    column_list(&scope.columns, Some("EXCLUDED"))
                );
                // One upsert: `xmax = 0` tells the inserted rows from the updated ones.
                let upsert = format!(
                    "INSERT INTO {target} AS t ({all}) SELECT {in_s} FROM {ws} s
                     ON CONFLICT ({key_group}) DO UPDATE SET {excluded} WHERE {changed_excluded}{owned}
                     RETURNING t AS bf_row, (t.xmax = 0) AS bf_new, {returned_key}",
                    returned_key = column_list(&scope.key, Some("t")),
                    // A key the source yields whose row the backfill does not own
                    // stays as it is. Here both `t` and EXCLUDED are in scope, so
                    // the unqualified predicate reads `t` through a subquery.
                    owned = scope.filter.as_deref().map_or_else(String::new, |w| {
                        format!(" AND EXISTS (SELECT 1 FROM (SELECT t.*) bf_owned WHERE ({w}))")
                    })
                );
                // Every part of one statement reads the same snapshot, so `o`
                // is the row before the update: its before-image, kept with a
                // hash of the row the update wrote, which rollback compares
                // with the row it finds to spare later writes.
                let saved = image.as_ref().map_or_else(String::new, |img| {
                    format!(
                        ", bf_inserted AS (INSERT INTO {img} SELECT $1, 'I', (up.bf_row).* FROM up WHERE up.bf_new),
                           bf_updated AS (INSERT INTO {img} SELECT $1, 'U', o.*, hashtextextended((up.bf_row)::text, 0)
                                            FROM {target} o JOIN up ON {old_match} WHERE NOT up.bf_new)",
                        old_match = key_join(&scope.key, "o", "up")
                    )
                });
                steps.push(Step {
                    sql: format!(
                        "WITH up AS ({upsert}){saved}
                         SELECT count(*) FILTER (WHERE bf_new), count(*) FILTER (WHERE NOT bf_new) FROM up"
                    ),
                    binds: with_batch(Binds::None),
                    counts: Counts::InsertedAndUpdated,
                    what: "upsert of new and changed rows",
                });
                steps.push(match brief.write.on_missing {
                    OnMissing::Delete => Step {
                        sql: counted_delete(
                            &format!("AND NOT EXISTS (SELECT 1 FROM {ws} s WHERE {key_match})"),
                            &format!("SELECT count(*), count(*), count(*) FILTER (WHERE d.{by} = $1) FROM d"),
                        ),
                        binds: with_batch(Binds::Range),
                        counts: Counts::DeletedAndUnmatched,
                        what: "delete of rows the source no longer yields",
                    },
                    // Kept, but counted: rows left stale are what the guard watches.
                    OnMissing::Keep => Step {
                        sql: Unmatched::measure_sql(scope, &target, &ws),
                        binds: Binds::Range,
                        counts: Counts::Unmatched,
                        what: "counting rows the source no longer yields",
                    },
                });
            }
        }
        let range_of = |table: &str| format!("{table} t WHERE {in_range}");
        let metric_sql = |table: &str| {
            brief
                .validation
                .metrics
                .iter()
                .map(|m| (m.name.clone(), m.query(table, &in_range)))
                .collect::<Vec<_>>()
        };
        let nulls_after = format!(
            "SELECT ARRAY[{}]::bigint[] FROM {}",
            scope
                .columns
                .iter()
                .map(|c| format!("count(*) FILTER (WHERE t.{} IS NULL)", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(", "),
            range_of(&target)
        );
        let orphans_after = brief
            .validation
            .references
            .iter()
            .filter_map(|r| {
                let (parent, parent_column) = r.parent()?;
                let column = quote_ident(&r.column);
                Some((
                    r.column.clone(),
                    format!(
                        "SELECT count(*) FROM {range} AND t.{column} IS NOT NULL
                            AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{pc} = t.{column} OFFSET 0)",
                        range = range_of(&target),
                        parent = parent.quoted(),
                        pc = quote_ident(&parent_column)
                    ),
                ))
            })
            .collect();
        Self {
            metrics_before: metric_sql(&scope.target.quoted()),
            metrics_after: metric_sql(&target),
            nulls_after,
            null_columns: scope.columns.clone(),
            fingerprints: Fingerprints::new(),
            orphans_after,
            create_working_set: format!(
                "SET LOCAL client_min_messages = warning;
                 CREATE TEMPORARY TABLE IF NOT EXISTS {ws} ON COMMIT DELETE ROWS AS SELECT {all} FROM {target} WITH NO DATA"
            ),
            range_has_rows: format!("SELECT EXISTS (SELECT 1 FROM {})", range_of(&target)),
            range_rows: match (brief.write.strategy, brief.write.on_missing) {
                (Strategy::PartitionOverwrite, _) => RangeRows::Deleted,
                (_, OnMissing::Delete) => RangeRows::MatchedAndDeleted,
                (_, OnMissing::Keep) => RangeRows::Measured,
            },
            fill_working_set: format!(
                "INSERT INTO {ws} ({all}) SELECT {all} FROM ({source}\n) AS s",
                source = scope.source.trim_end().trim_end_matches(';')
            ),
            check_grain: format!(
                "SELECT (SELECT count(*) FROM (SELECT 1 FROM {ws} GROUP BY {key_group} HAVING count(*) > 1) d),
                        (SELECT count(*) FROM {ws} WHERE {null_key}),
                        (SELECT count(*) FROM {ws} WHERE {by} IS NULL OR NOT ({by} >= $1 AND {by} < $2)),
                        {unowned}",
                unowned = scope.filter.as_deref().map_or_else(
                    || "0::bigint".to_owned(),
                    |w| format!("(SELECT count(*) FROM {ws} WHERE ({w}) IS NOT TRUE)")
                )
            ),
            steps,
        }
    }
}

impl WritePlan {
    /// Guards every batch against changes to these column definitions.
    #[must_use]
    pub fn guarding(mut self, fingerprints: Fingerprints) -> Self {
        self.fingerprints = fingerprints;
        self
    }
}

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
        .map_err(|e| BatchError::from_sql("commit", &e))?;
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
    let sql = |context: &'static str| move |e: sqlx::Error| BatchError::from_sql(context, &e);
    let mut tx = pool.begin().await.map_err(sql("begin"))?;

    sqlx::raw_sql(AssertSqlSafe(plan.create_working_set.as_str()))
        .execute(&mut *tx)
        .await
        .map_err(sql("create working set"))?;
    let source = sqlx::query(AssertSqlSafe(plan.fill_working_set.as_str()))
        .bind(work.lo)
        .bind(work.hi)
        .execute(&mut *tx)
        .await
        .map_err(sql("the brief's source query failed"))?
        .rows_affected();
    let source = i64::try_from(source).unwrap_or(i64::MAX);
    let mut rows = RowCounts {
        source,
        ..RowCounts::default()
    };
    let mut checks = BatchChecks::default();
    // A batch whose source yields nothing for a range without rows changes and
    // leaves nothing: skip the checks and the writes (sparse key ranges and
    // empty days are common). With rows in the range, every one of them is
    // unmatched, and the guard must see them.
    let idle = source == 0
        && !sqlx::query_scalar::<_, bool>(AssertSqlSafe(plan.range_has_rows.as_str()))
            .bind(work.lo)
            .bind(work.hi)
            .fetch_one(&mut *tx)
            .await
            .map_err(sql("looking at the batch's range"))?;
    if !idle {
        write(&mut tx, plan, work, &mut rows, &mut checks).await?;
    }

    // The fence is checked last, under the batch row's lock held to commit: a
    // worker that stalled (SIGSTOP, a long GC, a partition) while a newer claim
    // applied the batch is refused here, and a stalled worker never blocks the
    // newer one's claim before it gets this far.
    if !batches::fence_is_current(&mut tx, work.run_id, work.batch_no, work.fence).await? {
        return Err(BatchError::Stale {
            batch_no: work.batch_no,
            mine: work.fence,
        });
    }
    batches::mark_applied(&mut tx, work.run_id, work.batch_no, rows, &checks).await?;
    log::append(
        &mut *tx,
        work.run_id,
        worker,
        "batch_applied",
        Some(work.batch_no),
        serde_json::json!({ "fence": work.fence, "rows": rows }),
    )
    .await?;
    Ok((tx, BatchOutcome { rows, checks }))
}

/// The checks and writes of a batch whose source yielded rows (or whose range
/// must lose rows): drift guard, grain, metrics before, the strategy's
/// statements, metrics after, NULLs and orphans.
async fn write(
    tx: &mut sqlx::PgConnection,
    plan: &WritePlan,
    work: BatchWork,
    rows: &mut RowCounts,
    checks: &mut BatchChecks,
) -> Result<()> {
    let sql = |context: &'static str| move |e: sqlx::Error| BatchError::from_sql(context, &e);
    let batch = i32::try_from(work.batch_no)
        .map_err(|_| BatchError::Permanent("batch number out of range".into()))?;
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

    let (duplicates, null_keys, outside, unowned): (i64, i64, i64, i64) =
        sqlx::query_as(AssertSqlSafe(plan.check_grain.as_str()))
            .bind(work.lo)
            .bind(work.hi)
            .fetch_one(&mut *tx)
            .await
            .map_err(sql("grain check"))?;
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
        if step.counts == Counts::Inserted {
            let n = q
                .execute(&mut *tx)
                .await
                .map_err(sql(step.what))?
                .rows_affected();
            rows.inserted += i64::try_from(n).unwrap_or(i64::MAX);
            continue;
        }
        use sqlx::Row as _;
        let row = q.fetch_one(&mut *tx).await.map_err(sql(step.what))?;
        let count = |i: usize| row.try_get::<i64, _>(i).map_err(sql(step.what));
        match step.counts {
            Counts::InsertedAndUpdated => {
                rows.inserted += count(0)?;
                rows.updated += count(1)?;
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
            Counts::Inserted => {}
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
        let mut groups: Vec<&String> = before.keys().chain(after.keys()).collect();
        groups.sort();
        groups.dedup();
        checks
            .metrics
            .extend(groups.into_iter().map(|g| MetricGroup {
                metric: metric.clone(),
                group: g.clone(),
                before: before.get(g).copied().flatten(),
                after: after.get(g).copied().flatten(),
            }));
    }
    let nulls: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(plan.nulls_after.as_str()))
        .bind(work.lo)
        .bind(work.hi)
        .fetch_one(&mut *tx)
        .await
        .map_err(sql("counting NULLs"))?;
    checks.nulls = plan.null_columns.iter().cloned().zip(nulls).collect();
    for (column, query) in &plan.orphans_after {
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(query.as_str()))
            .bind(work.lo)
            .bind(work.hi)
            .fetch_one(&mut *tx)
            .await
            .map_err(sql("checking references"))?;
        checks.orphans.push((column.clone(), n));
    }

    Ok(())
}

/// What one applied batch wrote and measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    pub rows: RowCounts,
    pub checks: BatchChecks,
}

/// A metric's value per group on the batch's range.
async fn metric_groups(
    tx: &mut sqlx::PgConnection,
    query: &str,
    work: BatchWork,
) -> Result<std::collections::BTreeMap<String, Option<f64>>> {
    let rows: Vec<(Option<String>, Option<f64>)> = sqlx::query_as(AssertSqlSafe(query))
        .bind(work.lo)
        .bind(work.hi)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| BatchError::from_sql("a validation metric failed", &e))?;
    Ok(rows
        .into_iter()
        .map(|(g, v)| (Metric::group_name(g), v))
        .collect())
}
