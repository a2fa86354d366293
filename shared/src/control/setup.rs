//! The tables a run builds when it is recorded, in the transaction that records
//! it: the before-image table of a live target, and the side table of the
//! strategies that write beside the target. Identifiers are quoted; values are
//! bound; the brief's `scope.where` is operator SQL by design (`crate::sql`).

use super::Result;
use crate::brief::Brief;
use crate::sql::{TableName, quote_ident};
use sqlx::{Postgres, Transaction};

/// What a run builds beside its target.
#[derive(Debug, Clone, Copy)]
pub enum Setup<'a> {
    /// Before-images of every row a batch changes, tagged with the batch and the
    /// operation, and the hash of the row written (for rollback's conflict check).
    BeforeImages(&'a TableName),
    /// A table like the target (columns, constraints, indexes, and its
    /// partitioning with each partition's bound, indexes and constraints)
    /// holding the target's rows outside the scope; batches fill in the scope.
    /// The target's writes from then on are captured (`capture.rs`).
    SideTable(&'a TableName),
}

impl Setup<'_> {
    pub(super) async fn build(
        self,
        tx: &mut Transaction<'_, Postgres>,
        brief: &Brief,
        run_id: uuid::Uuid,
    ) -> Result<()> {
        let target = brief.scope.target.quoted();
        match self {
            Self::BeforeImages(image) => {
                let image = image.quoted();
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "CREATE TABLE {image} (bf_batch_no integer NOT NULL, bf_op \"char\" NOT NULL,
                                           LIKE {target} INCLUDING DEFAULTS, {after} bigint);
                     CREATE INDEX ON {image} (bf_batch_no)",
                    after = super::IMAGE_AFTER_HASH,
                )))
                .execute(&mut **tx)
                .await?;
            }
            Self::SideTable(side) => {
                let by = quote_ident(&brief.scope.batch_by.column);
                let unowned = brief
                    .scope
                    .filter
                    .as_deref()
                    .map_or_else(String::new, |w| format!(" OR ({w}) IS NOT TRUE"));
                crate::partitions::create_like(&mut *tx, &brief.scope.target, side).await?;
                // Writes to the target from here on are captured, to be
                // carried into the side table at cutover (`capture.rs`).
                super::capture::Capture::of(run_id)
                    .install(&mut *tx, brief, &brief.scope.target)
                    .await?;
                let side = side.quoted();
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {side} SELECT * FROM {target}
                      WHERE {by} IS NULL OR {by} < $1 OR {by} >= $2{unowned}"
                )))
                .bind(brief.scope.batch_by.start)
                .bind(brief.scope.batch_by.end)
                .execute(&mut **tx)
                .await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ANALYZE {side}")))
                    .execute(&mut **tx)
                    .await?;
            }
        }
        // Workers write the table, everyone who reads the control plane reads
        // it (deploy/roles.sql; a site without those roles grants as it does).
        let (table, writes) = match self {
            Self::BeforeImages(image) => (image, "INSERT"),
            Self::SideTable(side) => (side, "INSERT, UPDATE, DELETE"),
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DO $bf$ BEGIN
                 IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'backfill_worker') THEN
                     GRANT SELECT, {writes} ON {table} TO backfill_worker;
                 END IF;
                 IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'backfill_viewer') THEN
                     GRANT SELECT ON {table} TO backfill_viewer;
                 END IF;
             END $bf$",
            table = table.quoted()
        )))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}
