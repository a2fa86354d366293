//! What the PostgreSQL catalog says reads a table: views and materialized views,
//! directly or through other views. Used for the blast radius, to lock a swap in
//! the order readers lock, and to refresh materialized views after a change.
//! And what a run's bounds are, by the type of its `batch_by` column.

use backfill_shared::sql::TableName;

/// A view or materialized view that reads the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    pub name: TableName,
    pub materialized: bool,
    /// 1 reads the table directly; 2 reads a view that does; ...
    pub nearest: i32,
    /// The longest path to the table (a reader is locked after all it reads).
    pub farthest: i32,
}

/// Every reader of `table`, ordered by `farthest`, then name.
pub async fn readers<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    table: &TableName,
) -> sqlx::Result<Vec<Reader>> {
    let rows: Vec<(String, String, bool, i32, i32)> = sqlx::query_as(
        "WITH RECURSIVE reads(oid, depth) AS (
             SELECT $1::regclass::oid, 0
             UNION
             SELECT r.ev_class, reads.depth + 1
               FROM reads
               JOIN pg_depend d ON d.refobjid = reads.oid AND d.classid = 'pg_rewrite'::regclass
               JOIN pg_rewrite r ON r.oid = d.objid
              WHERE r.ev_class <> reads.oid AND reads.depth < 16
         )
         SELECT n.nspname::text, c.relname::text, c.relkind = 'm', min(reads.depth), max(reads.depth)
           FROM reads JOIN pg_class c ON c.oid = reads.oid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE reads.depth > 0
          GROUP BY 1, 2, 3 ORDER BY max(reads.depth), 1, 2",
    )
    .bind(table.quoted())
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(schema, table, materialized, nearest, farthest)| Reader {
            name: TableName { schema, table },
            materialized,
            nearest,
            farthest,
        })
        .collect())
}

/// What the bounds of `column` of `table` are ([`backfill_shared::sql::bounds_zone`]);
/// `None` also when the column is gone.
pub async fn bounds_zone<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    table: &TableName,
    column: &str,
) -> sqlx::Result<Option<&'static str>> {
    let column_type: Option<String> = sqlx::query_scalar(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
          WHERE attrelid = to_regclass($1) AND attname = $2 AND NOT attisdropped",
    )
    .bind(table.quoted())
    .bind(column)
    .fetch_optional(executor)
    .await?;
    Ok(column_type
        .as_deref()
        .and_then(backfill_shared::sql::bounds_zone))
}
