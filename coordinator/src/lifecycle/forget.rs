//! `backfill forget RUN [--key KEY ...]`: a privacy erasure reaches what a run
//! keeps for rollback. The rows whose keys are given (or, without `--key`,
//! that the brief's `rollback.erased` names) are deleted from the run's
//! before-images, from the table a swap retired and from the partitions
//! batches exchanged out, in one transaction. The run log records how many
//! rows went from where, never which or what they held.

use crate::{CliError, Result};
use backfill_shared::control::runs::{self, Run};
use backfill_shared::control::{batches, log};
use backfill_shared::sql::{TableName, column_list};
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

/// What `forget` removed.
#[derive(Debug, Default, serde::Serialize)]
pub struct Forgotten {
    /// Rows deleted, per table the run keeps.
    pub tables: Vec<(String, u64)>,
}

impl Forgotten {
    /// What forget did, for a person.
    #[must_use]
    pub fn render(&self) -> String {
        let total: u64 = self.tables.iter().map(|(_, n)| n).sum();
        let mut s = format!("forgot {total} row(s) the run kept for rollback\n");
        for (table, n) in &self.tables {
            s.push_str(&format!("  {table}: {n}\n"));
        }
        s
    }
}

pub async fn forget(
    pool: &PgPool,
    run_id: Uuid,
    actor: &str,
    keys: &[String],
) -> Result<Forgotten> {
    let run = runs::load(pool, run_id).await?;
    let key = &run.brief.scope.key;
    // Which rows: the keys given, as text (a composite key as its row
    // literal, e.g. "(1992-01-02,AIR)"), or the brief's query.
    let which = |alias: &str| -> Result<String> {
        if !keys.is_empty() {
            let text = if key.len() == 1 {
                format!("{}::text", column_list(key, Some(alias)))
            } else {
                format!("ROW({})::text", column_list(key, Some(alias)))
            };
            return Ok(format!("{text} = ANY($1)"));
        }
        super::rollback::erased(&run.brief, alias).ok_or_else(|| {
            CliError::BadInput(format!(
                "name the rows to forget: --key KEY (repeat it), or give the brief rollback.erased; run {run_id}'s brief has none"
            ))
        })
    };
    let condition = which("t")?;
    let mut forgotten = Forgotten::default();
    let mut tx = pool.begin().await?;
    for table in kept_tables(pool, &run).await? {
        let delete = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} t WHERE {condition}",
            table.quoted()
        )));
        let delete = if keys.is_empty() {
            delete
        } else {
            delete.bind(keys)
        };
        let n = delete.execute(&mut *tx).await?.rows_affected();
        forgotten.tables.push((table.to_string(), n));
    }
    log::append(
        &mut *tx,
        run_id,
        actor,
        "forgotten",
        None,
        serde_json::json!({
            "by": if keys.is_empty() { "rollback.erased" } else { "--key" },
            "keys_given": keys.len(),
            "rows": &forgotten.tables,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(forgotten)
}

/// The tables that still hold rows as they were before the run: its
/// before-images, the table a swap retired, the partitions exchanged out.
async fn kept_tables(pool: &PgPool, run: &Run) -> Result<Vec<TableName>> {
    let kept: Vec<String> = batches::exchanges(pool, run.run_id)
        .await?
        .into_values()
        .filter_map(|x| x.kept_as)
        .collect();
    let mut tables = Vec::new();
    for name in [&run.image_table, &run.old_table]
        .into_iter()
        .flatten()
        .chain(&kept)
    {
        let Some(table) = TableName::parse(name) else {
            return Err(CliError::Internal(format!(
                "run {} records an unreadable table name {name:?}",
                run.run_id
            )));
        };
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table.quoted())
            .fetch_one(pool)
            .await?;
        if exists {
            tables.push(table);
        }
    }
    Ok(tables)
}
