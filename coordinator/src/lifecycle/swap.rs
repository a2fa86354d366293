//! Swapping a table into a target's place in one short transaction, with a lock
//! timeout so a busy target makes the swap fail fast rather than queue readers.
//!
//! Views and foreign keys follow a table by its identity, not its name, so a plain
//! rename would leave them on the old table. Inside the same transaction the swap
//! therefore recreates the views that read the target (from definitions captured
//! with every name schema-qualified), rebuilds the materialized views that read it
//! (with their indexes, populated), moves foreign keys that point at it, and hands
//! over sequences its columns own. A partitioned table is swapped whole: the
//! swap refuses a replacement not partitioned (and indexed, and constrained) as
//! the target is, and hands the partitions' names over by bound, so a partition
//! keeps its name across the swap. Readers see either the old table or the new
//! one, never a half-swapped state.

use crate::{CliError, Result, catalog};
use backfill_shared::partitions;
use backfill_shared::sql::{TableName, quote_ident};
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use std::time::{Duration, Instant};

/// Milliseconds since `start`.
fn millis(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What a swap moved, for the run log.
#[derive(Debug, Default, serde::Serialize)]
pub struct Swapped {
    pub views: Vec<String>,
    pub materialized_views: Vec<String>,
    pub foreign_keys: Vec<String>,
    pub sequences: Vec<String>,
    /// How long the target was locked (`ACCESS EXCLUSIVE`): from the lock
    /// granted to the commit, the live writes carried under it included.
    pub locked_ms: u64,
    /// Of that, carrying the writes the catch-up before the lock left.
    pub carried_under_lock_ms: u64,
}

struct ViewDef {
    name: TableName,
    definition: String,
    materialized: bool,
    indexes: Vec<String>,
}

async fn exec(conn: &mut PgConnection, sql: String, step: &str) -> Result<()> {
    sqlx::raw_sql(AssertSqlSafe(sql.clone()))
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            CliError::Internal(format!("swap failed at {step}: {e}\n  statement: {sql}"))
        })?;
    Ok(())
}

/// What a swap runs inside its transaction, besides the swap.
pub struct Hooks<V, C, R> {
    /// First, once `replacement` is locked against writers (readers of the
    /// target are not held up yet): an error swaps nothing.
    pub verify: V,
    /// Once the target too is locked against everyone (so nobody writes it
    /// any more), before the swap: the last writes carried over.
    pub carry: C,
    /// After the swap: noting it in the control plane.
    pub record: R,
}

impl<V, C, R> std::fmt::Debug for Hooks<V, C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").finish_non_exhaustive()
    }
}

/// Puts `replacement` in `target`'s place and renames the current target to
/// `retire_as`, running `hooks` in the same transaction.
pub async fn swap<V, C, R>(
    pool: &PgPool,
    target: &TableName,
    replacement: &TableName,
    retire_as: &TableName,
    lock_timeout: Duration,
    hooks: Hooks<V, C, R>,
) -> Result<Swapped>
where
    V: AsyncFnOnce(&mut PgConnection) -> Result<()>,
    C: AsyncFnOnce(&mut PgConnection) -> Result<()>,
    R: AsyncFnOnce(&mut PgConnection) -> Result<()>,
{
    let Hooks {
        verify,
        carry,
        record,
    } = hooks;
    let mut tx = pool.begin().await?;
    let conn: &mut PgConnection = &mut tx;
    exec(
        conn,
        format!("SET LOCAL lock_timeout = '{}ms'", lock_timeout.as_millis()),
        "setting the lock timeout",
    )
    .await?;
    // With an empty search path, captured definitions name every table in full.
    exec(
        conn,
        "SET LOCAL search_path = pg_catalog".into(),
        "setting the search path",
    )
    .await?;
    exec(
        conn,
        format!("LOCK TABLE {} IN SHARE MODE", replacement.quoted()),
        "locking the replacement against writers",
    )
    .await?;
    verify(&mut *conn).await?;
    // Readers lock a view before the tables beneath it; lock in the same order
    // (farthest dependents first) so a reader waits instead of deadlocking.
    // (Materialized views cannot be locked; they are dropped and rebuilt below.)
    let mut lock_order: Vec<String> = catalog::readers(&mut *conn, target)
        .await?
        .into_iter()
        .rev()
        .filter(|r| !r.materialized)
        .map(|r| r.name.quoted())
        .collect();
    lock_order.push(target.quoted());
    lock_order.push(replacement.quoted());
    exec(
        conn,
        format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", lock_order.join(", ")),
        "locking the target and its dependents (another session holds them; try again when it is quieter, or raise --lock-timeout)",
    )
    .await?;
    let locked = Instant::now();

    // A swap exposes the structure it replaces: the same partitioning (key,
    // bounds, per partition), indexes and constraints.
    let before = partitions::structure(&mut *conn, target).await?;
    let after = partitions::structure(&mut *conn, replacement).await?;
    if before != after {
        let missing: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
        let extra: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
        return Err(CliError::Halted(format!(
            "{replacement} is not built like {target}, so swapping it in would change the table's structure; \
             only in {target}: {missing:?}; only in {replacement}: {extra:?}. Nothing was swapped. \
             Was {target} altered (a partition or index added) during the run? Roll back this run and run it again"
        )));
    }
    let carrying = Instant::now();
    carry(&mut *conn).await?;
    let carried_under_lock_ms = millis(carrying);

    let oid: sqlx::postgres::types::Oid = sqlx::query_scalar("SELECT $1::regclass::oid")
        .bind(target.quoted())
        .fetch_one(&mut *conn)
        .await?;
    let views: Vec<(String, String, String, bool)> = sqlx::query_as(
        "SELECT DISTINCT n.nspname::text, c.relname::text, pg_get_viewdef(c.oid), c.relkind = 'm'
           FROM pg_depend d
           JOIN pg_rewrite r ON r.oid = d.objid
           JOIN pg_class c ON c.oid = r.ev_class
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = $1 AND c.oid <> $1",
    )
    .bind(oid)
    .fetch_all(&mut *conn)
    .await?;
    let mut defs = Vec::new();
    for (schema, table, definition, materialized) in views {
        let name = TableName { schema, table };
        let indexes = if materialized {
            sqlx::query_scalar(
                "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = $1::regclass",
            )
            .bind(name.quoted())
            .fetch_all(&mut *conn)
            .await?
        } else {
            Vec::new()
        };
        defs.push(ViewDef {
            name,
            definition,
            materialized,
            indexes,
        });
    }
    let foreign_keys: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid)
           FROM pg_constraint WHERE contype = 'f' AND confrelid = $1 AND conrelid <> $1 AND conparentid = 0",
    )
    .bind(oid)
    .fetch_all(&mut *conn)
    .await?;
    let sequences: Vec<(String, String)> = sqlx::query_as(
        "SELECT s.oid::regclass::text, a.attname::text
           FROM pg_depend d
           JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
           JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
          WHERE d.refobjid = $1 AND d.deptype = 'a' AND d.classid = 'pg_class'::regclass",
    )
    .bind(oid)
    .fetch_all(&mut *conn)
    .await?;

    // Materialized views cannot be repointed: drop them now, rebuild after the swap.
    for v in defs.iter().filter(|v| v.materialized) {
        exec(
            conn,
            format!("DROP MATERIALIZED VIEW {}", v.name.quoted()),
            &format!(
                "dropping materialized view {} (does something depend on it?)",
                v.name
            ),
        )
        .await?;
    }
    for (child, name, _) in &foreign_keys {
        exec(
            conn,
            format!("ALTER TABLE {child} DROP CONSTRAINT {}", quote_ident(name)),
            &format!("detaching foreign key {name} of {child}"),
        )
        .await?;
    }
    exec(
        conn,
        format!(
            "ALTER TABLE {} RENAME TO {}",
            target.quoted(),
            quote_ident(&retire_as.table)
        ),
        &format!("renaming {target} to {}", retire_as.table),
    )
    .await?;
    if retire_as.schema != target.schema {
        exec(
            conn,
            format!(
                "ALTER TABLE {} SET SCHEMA {}",
                TableName {
                    schema: target.schema.clone(),
                    table: retire_as.table.clone()
                }
                .quoted(),
                quote_ident(&retire_as.schema)
            ),
            &format!("moving the old table to schema {}", retire_as.schema),
        )
        .await?;
    }
    let mut moving = replacement.clone();
    if replacement.schema != target.schema {
        exec(
            conn,
            format!(
                "ALTER TABLE {} SET SCHEMA {}",
                replacement.quoted(),
                quote_ident(&target.schema)
            ),
            &format!("moving {replacement} to schema {}", target.schema),
        )
        .await?;
        moving.schema.clone_from(&target.schema);
    }
    exec(
        conn,
        format!(
            "ALTER TABLE {} RENAME TO {}",
            moving.quoted(),
            quote_ident(&target.table)
        ),
        &format!("renaming {replacement} to {target}"),
    )
    .await?;

    partitions::hand_over_names(&mut *conn, retire_as, target).await?;

    let mut swapped = Swapped::default();
    for v in &defs {
        let definition = v.definition.trim_end().trim_end_matches(';');
        if v.materialized {
            exec(
                conn,
                format!(
                    "CREATE MATERIALIZED VIEW {} AS {definition} WITH DATA",
                    v.name.quoted()
                ),
                &format!("rebuilding materialized view {}", v.name),
            )
            .await?;
            for index in &v.indexes {
                exec(
                    conn,
                    index.clone(),
                    &format!("re-creating an index of {}", v.name),
                )
                .await?;
            }
            swapped.materialized_views.push(v.name.to_string());
        } else {
            exec(
                conn,
                format!("CREATE OR REPLACE VIEW {} AS {definition}", v.name.quoted()),
                &format!("repointing view {}", v.name),
            )
            .await?;
            swapped.views.push(v.name.to_string());
        }
    }
    for (child, name, definition) in &foreign_keys {
        exec(
            conn,
            format!(
                "ALTER TABLE {child} ADD CONSTRAINT {} {definition} NOT VALID",
                quote_ident(name)
            ),
            &format!("re-attaching foreign key {name} of {child}"),
        )
        .await?;
        swapped.foreign_keys.push(format!("{child}.{name}"));
    }
    for (sequence, column) in &sequences {
        exec(
            conn,
            format!(
                "ALTER SEQUENCE {sequence} OWNED BY {}.{}",
                target.quoted(),
                quote_ident(column)
            ),
            &format!("handing sequence {sequence} to the new table"),
        )
        .await?;
        swapped.sequences.push(sequence.clone());
    }
    record(conn).await?;
    tx.commit().await?;
    swapped.locked_ms = millis(locked);
    swapped.carried_under_lock_ms = carried_under_lock_ms;

    // Checked outside the swap so the lock is short; the rows were checked when the
    // backfill validated its grain.
    for (child, name, _) in &foreign_keys {
        sqlx::query(AssertSqlSafe(format!(
            "ALTER TABLE {child} VALIDATE CONSTRAINT {}",
            quote_ident(name)
        )))
        .execute(pool)
        .await
        .map_err(|e| {
            CliError::Internal(format!(
                "foreign key {name} of {child} does not hold on the new table: {e}"
            ))
        })?;
    }
    Ok(swapped)
}

/// Refreshes every materialized view that reads `target`, directly or through
/// views, nearest first. Returns their names.
pub async fn refresh_materialized_views(pool: &PgPool, target: &TableName) -> Result<Vec<String>> {
    let mut conn = pool.acquire().await?;
    let mut refreshed = Vec::new();
    for name in catalog::readers(&mut *conn, target)
        .await?
        .into_iter()
        .filter(|r| r.materialized)
        .map(|r| r.name)
    {
        sqlx::query(AssertSqlSafe(format!(
            "REFRESH MATERIALIZED VIEW {}",
            name.quoted()
        )))
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            CliError::Internal(format!("refreshing materialized view {name} failed: {e}"))
        })?;
        refreshed.push(name.to_string());
    }
    Ok(refreshed)
}
