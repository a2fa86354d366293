//! The warehouse transaction of one batch, for the `merge` strategy:
//!
//! 1. lock the batch's ledger row and check the fencing token (a stale worker rolls back);
//! 2. run the brief's source for `[lo, hi)` into a temporary working set;
//! 3. check the grain: no duplicate or null keys, every row inside the batch range;
//! 4. save before-images of every row about to change (when `snapshot = true`);
//! 5. update changed rows (`IS DISTINCT FROM`), insert new ones, and delete rows of
//!    the range the source no longer yields (`on_missing = "delete"`);
//! 6. mark the batch applied with its figures and append to the run log.
//!
//! All of it commits together or not at all.

use crate::error::{BatchError, Result};
use backfill_shared::brief::{Bound, Brief, OnMissing};
use backfill_shared::control::{batches, batches::RowCounts, log};
use backfill_shared::sql::{column_list, quote_ident};
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

/// The statements of one run, built once from its brief. Identifiers are quoted;
/// bounds are bound parameters.
#[derive(Debug)]
pub struct MergePlan {
    create_working_set: String,
    fill_working_set: String,
    check_grain: String,
    save_changed: Option<String>,
    update: String,
    insert: String,
    delete: Option<String>,
}

impl MergePlan {
    #[must_use]
    pub fn new(brief: &Brief, image_table: Option<&str>) -> Self {
        let scope = &brief.scope;
        let target = scope.target.quoted();
        let written = scope.written_columns();
        let all = column_list(&written, None);
        let in_s = column_list(&written, Some("s"));
        let key_match = scope
            .key
            .iter()
            .map(|k| format!("t.{0} = s.{0}", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let key_group = column_list(&scope.key, None);
        let null_key = scope
            .key
            .iter()
            .map(|k| format!("{} IS NULL", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" OR ");
        let by = quote_ident(&scope.batch_by.column);
        let changed = format!(
            "ROW({}) IS DISTINCT FROM ROW({})",
            column_list(&scope.columns, Some("t")),
            column_list(&scope.columns, Some("s"))
        );
        let set = scope
            .columns
            .iter()
            .map(|c| format!("{0} = s.{0}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let image = image_table.map(|t| {
            let (schema, table) = t.split_once('.').unwrap_or(("backfill", t));
            format!("{}.{}", quote_ident(schema), quote_ident(table))
        });
        let insert_core = format!(
            "INSERT INTO {target} ({all}) SELECT {in_s} FROM bf_working_set s
              WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE {key_match})"
        );
        let delete_core = format!(
            "DELETE FROM {target} t WHERE t.{by} >= $1 AND t.{by} < $2
               AND NOT EXISTS (SELECT 1 FROM bf_working_set s WHERE {key_match})"
        );
        Self {
            create_working_set: format!(
                "CREATE TEMPORARY TABLE bf_working_set ON COMMIT DROP AS SELECT {all} FROM {target} WITH NO DATA"
            ),
            fill_working_set: format!(
                "INSERT INTO bf_working_set ({all}) SELECT {all} FROM ({source}\n) AS s",
                source = scope.source.trim_end().trim_end_matches(';')
            ),
            check_grain: format!(
                "SELECT (SELECT count(*) FROM (SELECT 1 FROM bf_working_set GROUP BY {key_group} HAVING count(*) > 1) d),
                        (SELECT count(*) FROM bf_working_set WHERE {null_key}),
                        (SELECT count(*) FROM bf_working_set WHERE {by} IS NULL OR NOT ({by} >= $1 AND {by} < $2))"
            ),
            save_changed: image.as_ref().map(|img| {
                format!(
                    "INSERT INTO {img} SELECT $1, 'U', t.* FROM {target} t JOIN bf_working_set s ON {key_match} WHERE {changed}"
                )
            }),
            update: format!(
                "UPDATE {target} t SET {set} FROM bf_working_set s WHERE {key_match} AND {changed}"
            ),
            insert: match &image {
                Some(img) => format!(
                    "WITH ins AS ({insert_core} RETURNING *) INSERT INTO {img} SELECT $1, 'I', ins.* FROM ins"
                ),
                None => insert_core,
            },
            delete: (brief.write.on_missing == OnMissing::Delete).then(|| match &image {
                Some(img) => format!(
                    "WITH d AS ({delete_core} RETURNING t.*) INSERT INTO {img} SELECT $3, 'D', d.* FROM d"
                ),
                None => delete_core,
            }),
        }
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
    plan: &MergePlan,
    work: BatchWork,
    worker: &str,
) -> Result<RowCounts> {
    let sql = |context: &'static str| move |e: sqlx::Error| BatchError::from_sql(context, &e);
    let batch = i32::try_from(work.batch_no)
        .map_err(|_| BatchError::Permanent("batch number out of range".into()))?;
    let mut tx = pool.begin().await.map_err(sql("begin"))?;

    if !batches::fence_is_current(&mut tx, work.run_id, work.batch_no, work.fence).await? {
        return Err(BatchError::Stale {
            batch_no: work.batch_no,
            mine: work.fence,
        });
    }

    sqlx::query(AssertSqlSafe(plan.create_working_set.as_str()))
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

    let (duplicates, null_keys, outside): (i64, i64, i64) =
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

    if let Some(save) = &plan.save_changed {
        sqlx::query(AssertSqlSafe(save.as_str()))
            .bind(batch)
            .execute(&mut *tx)
            .await
            .map_err(sql("saving before-images"))?;
    }
    let updated = sqlx::query(AssertSqlSafe(plan.update.as_str()))
        .execute(&mut *tx)
        .await
        .map_err(sql("update of changed rows"))?
        .rows_affected();
    let mut insert = sqlx::query(AssertSqlSafe(plan.insert.as_str()));
    if plan.save_changed.is_some() {
        insert = insert.bind(batch);
    }
    let inserted = insert
        .execute(&mut *tx)
        .await
        .map_err(sql("insert of new rows"))?
        .rows_affected();
    let deleted = match &plan.delete {
        Some(delete) => {
            let mut q = sqlx::query(AssertSqlSafe(delete.as_str()))
                .bind(work.lo)
                .bind(work.hi);
            if plan.save_changed.is_some() {
                q = q.bind(batch);
            }
            q.execute(&mut *tx)
                .await
                .map_err(sql("delete of rows the source no longer yields"))?
                .rows_affected()
        }
        None => 0,
    };

    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let rows = RowCounts {
        source,
        inserted: count(inserted),
        updated: count(updated),
        deleted: count(deleted),
    };
    batches::mark_applied(&mut tx, work.run_id, work.batch_no, rows).await?;
    log::append(
        &mut *tx,
        work.run_id,
        worker,
        "batch_applied",
        Some(work.batch_no),
        serde_json::json!({ "fence": work.fence, "rows": rows }),
    )
    .await?;
    tx.commit().await.map_err(sql("commit"))?;
    Ok(rows)
}
