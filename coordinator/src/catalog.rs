//! What the PostgreSQL catalog says reads a table: views and materialized views,
//! directly or through other views. Used for the blast radius, to lock a swap in
//! the order readers lock, and to refresh materialized views after a change.
//! And what a run's bounds are, by the type of its `batch_by` column; a
//! table's health (size, dead rows, statistics, physical order).

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

/// A table's health as PostgreSQL reports it: its size and its indexes'
/// (summed over the partitions of a partitioned table), live and dead row
/// versions, when its statistics were last gathered, and how closely the
/// physical order of one column follows its values.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct Health {
    pub table_bytes: i64,
    pub index_bytes: i64,
    pub live_tuples: i64,
    pub dead_tuples: i64,
    /// The oldest of its (partitions') latest `ANALYZE`, by hand or by autovacuum.
    pub analyzed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `pg_stats.correlation` of the column, -1 to 1; `None` before statistics.
    pub correlation: Option<f64>,
}

impl Health {
    /// Table and indexes together.
    #[must_use]
    pub fn bytes(&self) -> i64 {
        self.table_bytes + self.index_bytes
    }

    /// Dead row versions as a share (percent) of all.
    #[must_use]
    pub fn dead_pct(&self) -> f64 {
        let all = self.live_tuples + self.dead_tuples;
        if all == 0 {
            0.0
        } else {
            self.dead_tuples as f64 * 100.0 / all as f64
        }
    }
}

/// The health of `table`, with the physical order of `column`.
pub async fn health<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    table: &TableName,
    column: &str,
) -> sqlx::Result<Health> {
    sqlx::query_as(
        "WITH parts AS (SELECT relid FROM pg_partition_tree($1::regclass) WHERE isleaf
                        UNION SELECT $1::regclass),
              stats AS (SELECT s.* FROM pg_stat_all_tables s JOIN parts p USING (relid))
         SELECT (SELECT coalesce(sum(pg_table_size(relid)), 0) FROM parts)::bigint AS table_bytes,
                (SELECT coalesce(sum(pg_indexes_size(relid)), 0) FROM parts)::bigint AS index_bytes,
                (SELECT coalesce(sum(n_live_tup), 0) FROM stats)::bigint AS live_tuples,
                (SELECT coalesce(sum(n_dead_tup), 0) FROM stats)::bigint AS dead_tuples,
                (SELECT min(greatest(last_analyze, last_autoanalyze)) FROM stats) AS analyzed_at,
                (SELECT correlation::float8 FROM pg_stats
                  WHERE schemaname = $2 AND tablename = $3 AND attname = $4
                  ORDER BY inherited DESC LIMIT 1) AS correlation",
    )
    .bind(table.quoted())
    .bind(&table.schema)
    .bind(&table.table)
    .bind(column)
    .fetch_one(executor)
    .await
}

/// The bytes of `table` (summed over its partitions) that dead row versions
/// and free space take, as `pgstattuple_approx` measures them: `None` where
/// the extension is not installed or this session may not run it (a
/// superuser, or a member of `pg_stat_scan_tables`, may).
pub async fn reclaimable(pool: &sqlx::PgPool, table: &TableName) -> sqlx::Result<Option<i64>> {
    let installed: Option<String> = sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
          WHERE e.extname = 'pgstattuple'",
    )
    .fetch_optional(pool)
    .await?;
    let Some(schema) = installed else {
        return Ok(None);
    };
    let measured = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "WITH parts AS (SELECT relid FROM pg_partition_tree($1::regclass) WHERE isleaf
                        UNION SELECT $1::regclass)
         SELECT sum(s.dead_tuple_len + s.approx_free_space)::bigint
           FROM parts p JOIN pg_class c ON c.oid = p.relid AND c.relkind IN ('r', 'm'),
                LATERAL {}.pgstattuple_approx(p.relid) s",
        backfill_shared::sql::quote_ident(&schema)
    )))
    .bind(table.quoted())
    .fetch_one(pool)
    .await;
    match measured {
        Ok(bytes) => Ok(bytes),
        // Not this session's to run: the figure is left out, not the check.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Gathers `table`'s statistics (`ANALYZE`) when this session may (its
/// owner, or a superuser); otherwise says who may.
pub async fn analyze(pool: &sqlx::PgPool, table: &TableName) -> sqlx::Result<Result<(), String>> {
    let may: bool = sqlx::query_scalar(
        "SELECT pg_has_role(current_user, c.relowner, 'USAGE')
                OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
           FROM pg_class c WHERE c.oid = $1::regclass",
    )
    .bind(table.quoted())
    .fetch_one(pool)
    .await?;
    if !may {
        return Ok(Err(format!(
            "only {table}'s owner may ANALYZE it; run `ANALYZE {}` as its owner",
            table.quoted()
        )));
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {}", table.quoted())))
        .execute(pool)
        .await?;
    Ok(Ok(()))
}
