//! partition-overwrite by partition exchange: a batch whose range is exactly one
//! partition of the target builds the new partition whole as a table of its
//! own, checks it like any batch, and exchanges it for the old one at the end
//! of its fenced transaction.
//!
//! 1. the metrics before are measured on the partition;
//! 2. a table like the partition (columns, defaults, constraints, indexes) is
//!    created with a `CHECK` on the batch range — so attaching it scans
//!    nothing — and filled straight from the source, then NULLs and orphans
//!    among its rows counted and the writing transaction noted (for
//!    rollback); its key
//!    refuses a repeated or NULL key and its `CHECK` a row outside the range,
//!    named as the grain check they fail;
//! 3. the old partition's rows are counted, and those whose key the source did
//!    not yield (unmatched); the metrics after are measured on the new table;
//! 4. its owner, grants and comment are the old partition's;
//! 5. under a short `lock_timeout`, retried from a savepoint while readers or
//!    other batches hold the target: detach the old partition (kept as the
//!    batch's before-image, or dropped when the run keeps none), give the new
//!    table its name, attach it with the same bound, drop the `CHECK`.
//!
//! Until step 5 the batch reads the partition and never the target itself: two
//! batches exchanging two partitions never wait on each other's reads. Once
//! detached, the old partition is checked for writes others committed since
//! the batch began (a row version its first snapshot did not see, a row gone):
//! any, and the batch rolls back and runs again after them, so the pipeline's
//! writes are neither dropped with the old partition nor overwritten by a
//! source read before them. A batch run again (after such a race, or any
//! failure) first locks the target against writers (`SHARE ROW EXCLUSIVE`,
//! readers go on): they wait for it, so a busy pipeline cannot starve it. The fence is checked after the exchange, in the
//! same transaction: a stale worker's exchange rolls back with it.

use super::statements::{ExchangePlan, WritePlan};
use super::{compare_metrics, metric_groups};
use crate::apply::BatchWork;
use crate::error::{BatchError, Result};
use backfill_shared::checks::{BatchChecks, Exchanged, Unmatched};
use backfill_shared::control::batches::RowCounts;
use backfill_shared::partitions::{self, Partition};
use backfill_shared::sql::{TableName, quote_ident, quote_literal};
use sqlx::{AssertSqlSafe, PgConnection};
use std::time::Duration;

/// The lock wait of one attempt to detach the old partition.
const LOCK_TIMEOUT: &str = "2s";
/// Attempts before the batch gives up (and is retried as a whole later).
const ATTEMPTS: u32 = 5;

/// The partition this batch can rewrite whole: the one whose range is the
/// batch's range, if the exchange is possible there (else the batch deletes
/// and inserts rows). Reads only the catalog.
pub(super) async fn partition_for(
    tx: &mut PgConnection,
    plan: &ExchangePlan,
    work: BatchWork,
) -> Result<Option<Partition>> {
    let sql = |e| BatchError::from_sql("reading the target's partitions", e);
    let kind = work.lo.kind();
    let found = partitions::children(&mut *tx, &plan.target)
        .await
        .map_err(sql)?
        .into_iter()
        .find(|p| partitions::range_ends(&p.bound, kind) == Some((Some(work.lo), Some(work.hi))));
    let Some(partition) = found else {
        return Ok(None);
    };
    if let Some(obstacle) = partitions::exchange_obstacle(&mut *tx, &plan.target, &partition)
        .await
        .map_err(sql)?
    {
        tracing::warn!(
            batch = work.batch_no,
            partition = %partition.name,
            "the batch deletes and inserts rows instead of exchanging its partition: {obstacle}"
        );
        return Ok(None);
    }
    Ok(Some(partition))
}

async fn exec(tx: &mut PgConnection, sql: String, what: &'static str) -> Result<()> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&mut *tx)
        .await
        .map_err(|e| BatchError::from_sql(what, e))?;
    Ok(())
}

/// Rewrites `partition` whole for the batch: returns its figures.
pub(super) async fn write(
    tx: &mut PgConnection,
    written: &WritePlan,
    plan: &ExchangePlan,
    partition: &Partition,
    work: BatchWork,
) -> Result<(RowCounts, BatchChecks)> {
    let sql = |what: &'static str| move |e: sqlx::Error| BatchError::from_sql(what, e);
    let old = partition.name.quoted();
    let named = |what: &str| TableName {
        schema: partition.name.schema.clone(),
        table: format!(
            "bf_{}_b{}_{what}",
            &work.run_id.simple().to_string()[..8],
            work.batch_no
        ),
    };
    let (new_table, kept) = (named("new"), named("old"));
    let new = new_table.quoted();
    let (by, in_range) = (&plan.by, &plan.in_range);
    let mut checks = BatchChecks::default();

    // Run again after others wrote meanwhile (below): this time writers of
    // the target wait for the batch, so it cannot lose to them twice.
    let again: bool = sqlx::query_scalar(
        "SELECT attempts > 1 FROM backfill.batches WHERE run_id = $1 AND batch_no = $2",
    )
    .bind(work.run_id)
    .bind(i64::from(work.batch_no))
    .fetch_one(&mut *tx)
    .await
    .map_err(sql("reading the batch's attempts"))?;
    if again {
        exec(
            tx,
            format!(
                "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
                plan.target.quoted()
            ),
            "holding the target's writers for a batch run again",
        )
        .await?;
    }
    // What the batch reads is the partition as of now: writes others commit
    // from here on are found when the partition is detached (below).
    let (snapshot, rows_then): (String, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT pg_current_snapshot()::text, count(*) FROM {old}"
    )))
    .fetch_one(&mut *tx)
    .await
    .map_err(sql("reading the partition's snapshot"))?;
    let mut before = Vec::new();
    for metric in &plan.metrics {
        before.push(metric_groups(tx, &metric.query(&old, in_range), work).await?);
    }

    exec(
        tx,
        format!(
            "CREATE TABLE {new} (LIKE {old} INCLUDING ALL);
             ALTER TABLE {new} ADD CONSTRAINT bf_bounds CHECK ({by} IS NOT NULL AND {by} >= {lo} AND {by} < {hi})",
            lo = work.lo.literal(),
            hi = work.hi.literal()
        ),
        "creating the new partition",
    )
    .await?;
    // The new table's key refuses a repeated or NULL key and its `CHECK` a row
    // outside the range, as the statement goes: the grain costs no pass of its own.
    let inserted = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {new} ({all}) SELECT {all} FROM ({source}\n) AS s",
        all = plan.all,
        source = plan.sources[written.scope.rule_for(work.lo)],
    )))
    .bind(work.lo)
    .bind(work.hi)
    .execute(&mut *tx)
    .await
    .map_err(|e| grain_error(e, work))?
    .rows_affected();
    let inserted = i64::try_from(inserted).unwrap_or(i64::MAX);
    // NULLs and orphans among the rows written, and the transaction that wrote
    // them: rollback tells a later change by a row another one wrote.
    let (nulls, orphans, xid): (Vec<i64>, Vec<i64>, String) =
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {figures}, xid(pg_current_xact_id())::text FROM {new} ins",
            figures = plan.insert_figures,
        )))
        .fetch_one(&mut *tx)
        .await
        .map_err(sql("measuring the new partition"))?;
    checks.nulls = written.null_columns.iter().cloned().zip(nulls).collect();
    checks.orphans = written
        .reference_columns
        .iter()
        .cloned()
        .zip(orphans)
        .collect();

    // The old partition's rows, and those the source did not yield again: the
    // one measure of unmatched rows.
    let (replaced, unmatched, at_lower_bound): (i64, i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*), count(*) FILTER (WHERE n.{key} IS NULL), count(*) FILTER (WHERE n.{key} IS NULL AND d.{by} = $1)
           FROM {old} d LEFT JOIN {new} n ON {matched}",
        key = plan.new_key,
        matched = plan.replaced_match,
    )))
    .bind(work.lo)
    .fetch_one(&mut *tx)
    .await
    .map_err(sql("counting the old partition's rows"))?;
    checks.unmatched = Unmatched {
        rows: unmatched,
        at_lower_bound,
        range_rows: replaced,
        source_at_lower_bound: None,
    };
    checks.empty_source = inserted == 0 && replaced > 0;
    checks.empty_source_accepted =
        checks.empty_source && written.scope.accepts_empty_source(work.lo, work.hi);
    let rows = RowCounts {
        source: inserted,
        inserted,
        updated: 0,
        deleted: replaced,
    };

    for (metric, before) in plan.metrics.iter().zip(before) {
        let after = metric_groups(tx, &metric.query(&new, in_range), work).await?;
        compare_metrics(&mut checks, &metric.name, &before, &after);
    }

    take_over_access(tx, &partition.name, &new_table).await?;
    detach(tx, &plan.target, &old).await?;
    written_meanwhile(tx, &old, &snapshot, rows_then).await?;
    let kept_as = if plan.keep_replaced {
        exec(
            tx,
            format!("ALTER TABLE {old} RENAME TO {}", quote_ident(&kept.table)),
            "keeping the old partition",
        )
        .await?;
        Some(kept.to_string())
    } else {
        exec(
            tx,
            format!("DROP TABLE {old}"),
            "dropping the old partition",
        )
        .await?;
        None
    };
    exec(
        tx,
        format!(
            "ALTER TABLE {new} RENAME TO {name};
             ALTER TABLE {target} ATTACH PARTITION {old} {bound};
             ALTER TABLE {old} DROP CONSTRAINT bf_bounds;
             SET LOCAL lock_timeout TO DEFAULT",
            name = quote_ident(&partition.name.table),
            target = plan.target.quoted(),
            bound = partition.bound,
        ),
        "attaching the new partition",
    )
    .await?;
    checks.exchange = Some(Box::new(Exchanged {
        partition: partition.name.to_string(),
        bound: partition.bound.clone(),
        kept_as,
        rows: inserted,
        xid,
    }));
    Ok((rows, checks))
}

/// A failed fill of the new partition, named as the grain check it failed
/// when its key or `CHECK` refused a row.
fn grain_error(e: sqlx::Error, work: BatchWork) -> BatchError {
    if let sqlx::Error::Database(db) = &e {
        let detail = db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|p| p.detail())
            .map_or_else(String::new, |d| format!(": {d}"));
        let (lo, hi) = (work.lo, work.hi);
        match db.code().as_deref() {
            Some("23505") => {
                return BatchError::Permanent(format!(
                    "duplicate grain: the source yielded a key more than once in [{lo}, {hi}){detail}; \
                     the target allows one row per key — fix the source (a join that fans out?)"
                ));
            }
            Some("23514") if db.constraint() == Some("bf_bounds") => {
                return BatchError::Permanent(format!(
                    "the source yielded a row whose batch_by value lies outside [{lo}, {hi}) or is NULL{detail}; \
                     filter the source on $1 and $2 so batches do not overlap"
                ));
            }
            Some("23502") => {
                return BatchError::Permanent(format!(
                    "the source yielded a NULL the target does not allow in [{lo}, {hi}): {}; \
                     every row needs its key, and NOT NULL columns their values",
                    db.message()
                ));
            }
            _ => {}
        }
    }
    BatchError::from_sql("the brief's source query failed", e)
}

/// Gives the new table the old partition's owner, grants and comment, so
/// whoever could read or write the partition still can.
async fn take_over_access(tx: &mut PgConnection, old: &TableName, new: &TableName) -> Result<()> {
    let sql = |e| BatchError::from_sql("copying the partition's owner and grants", e);
    let (owner, comment): (String, Option<String>) = sqlx::query_as(
        "SELECT quote_ident(pg_get_userbyid(relowner)), obj_description(oid, 'pg_class')
           FROM pg_class WHERE oid = $1::regclass",
    )
    .bind(old.quoted())
    .fetch_one(&mut *tx)
    .await
    .map_err(sql)?;
    let grants: Vec<String> = sqlx::query_scalar(
        "SELECT format('GRANT %s ON %s TO %s%s', a.privilege_type, $2,
                       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                       CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
           FROM pg_class c, aclexplode(c.relacl) a
          WHERE c.oid = $1::regclass AND a.grantee <> c.relowner",
    )
    .bind(old.quoted())
    .bind(new.quoted())
    .fetch_all(&mut *tx)
    .await
    .map_err(sql)?;
    let mut statements = vec![format!("ALTER TABLE {} OWNER TO {owner}", new.quoted())];
    statements.extend(grants);
    if let Some(comment) = comment {
        statements.push(format!(
            "COMMENT ON TABLE {} IS {}",
            new.quoted(),
            quote_literal(&comment)
        ));
    }
    exec(
        tx,
        statements.join(";\n"),
        "copying the partition's owner and grants",
    )
    .await
}

/// Refuses the exchange when others wrote to the partition since the batch
/// took `snapshot` (when it held `rows_then` rows): a row whose inserting
/// transaction the snapshot did not see was written meanwhile, and rows then
/// missing that were not written again were deleted or updated. Detached, the
/// partition takes no more writes, so the count is final. The batch is rolled
/// back and runs again on what they wrote, after them: the end state is a
/// serial one, and no write lands in the partition the exchange drops.
async fn written_meanwhile(
    tx: &mut PgConnection,
    old: &str,
    snapshot: &str,
    rows_then: i64,
) -> Result<()> {
    // A row's xmin is 32 bits; it is recent (the partition is live), so the
    // current epoch, or the one before, makes it the full id a snapshot knows.
    let (fresh, rows_now): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "WITH now AS (SELECT pg_current_xact_id()::text::bigint AS cur),
              x AS (SELECT r.xmin::text::bigint AS x32, (now.cur >> 32) << 32 AS epoch, now.cur
                      FROM {old} r, now)
         SELECT count(*) FILTER (
                    WHERE x32 >= 3 AND NOT pg_visible_in_snapshot(
                        (CASE WHEN epoch + x32 > cur THEN epoch - 4294967296 + x32 ELSE epoch + x32 END)::text::xid8,
                        $1::pg_snapshot)),
                count(*)
           FROM x"
    )))
    .bind(snapshot)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| BatchError::from_sql("finding writes to the partition during the batch", e))?;
    let gone = rows_then - (rows_now - fresh);
    if fresh > 0 || gone > 0 {
        return Err(BatchError::NotYet(format!(
            "others wrote to partition {old} while the batch built its replacement \
             ({fresh} row version(s) written, {gone} gone); the batch runs again after them"
        )));
    }
    Ok(())
}

/// Detaches `partition` from `target` under a short lock timeout, waiting and
/// trying again (from a savepoint, so the batch's work stands) while others
/// hold the target.
async fn detach(tx: &mut PgConnection, target: &TableName, partition: &str) -> Result<()> {
    let statement = format!(
        "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; ALTER TABLE {} DETACH PARTITION {partition}",
        target.quoted()
    );
    let mut attempt = 0;
    loop {
        attempt += 1;
        exec(
            tx,
            "SAVEPOINT bf_exchange".into(),
            "exchanging the partition",
        )
        .await?;
        match sqlx::raw_sql(AssertSqlSafe(statement.clone()))
            .execute(&mut *tx)
            .await
        {
            Ok(_) => {
                return exec(
                    tx,
                    "RELEASE SAVEPOINT bf_exchange".into(),
                    "exchanging the partition",
                )
                .await;
            }
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("55P03") && attempt < ATTEMPTS =>
            {
                exec(
                    tx,
                    "ROLLBACK TO SAVEPOINT bf_exchange".into(),
                    "exchanging the partition",
                )
                .await?;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            Err(e) => return Err(BatchError::from_sql("detaching the old partition", e)),
        }
    }
}
