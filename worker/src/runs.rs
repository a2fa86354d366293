//! The runs this worker has seen, loaded once from the control plane: the brief's
//! hash (to refuse forged or stale messages) and the statements built from it.

use crate::apply::{WritePlan, column_types};
use backfill_shared::brief::BoundKind;
use backfill_shared::control::{ControlError, Result, runs};
use backfill_shared::partitions;
use backfill_shared::sql::TableName;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

#[derive(Debug)]
pub(crate) struct RunContext {
    pub(crate) brief_hash: String,
    pub(crate) bound_kind: BoundKind,
    pub(crate) plan: WritePlan,
    /// The run's target, for traces.
    pub(crate) target: String,
}

#[derive(Debug, Default)]
pub(crate) struct Runs {
    loaded: Mutex<HashMap<Uuid, Arc<RunContext>>>,
}

impl Runs {
    pub(crate) async fn get(&self, pool: &PgPool, run_id: Uuid) -> Result<Arc<RunContext>> {
        if let Some(run) = self.cached(run_id) {
            return Ok(run);
        }
        let run = runs::load(pool, run_id).await?;
        let table = |name: &Option<String>, what: &str| -> Result<Option<TableName>> {
            name.as_deref()
                .map(|n| {
                    TableName::parse(n)
                        .ok_or_else(|| ControlError::Corrupt(format!("run {run_id}: {what} {n:?}")))
                })
                .transpose()
        };
        let side = table(&run.side_table, "side table")?;
        let image = table(&run.image_table, "image table")?;
        let write_to = side.as_ref().unwrap_or(&run.brief.scope.target);
        let (partitioned, types) = {
            let mut conn = pool.acquire().await?;
            (
                partitions::partition_key(&mut conn, write_to)
                    .await?
                    .is_some(),
                column_types(&mut conn, write_to).await?,
            )
        };
        let context = Arc::new(RunContext {
            plan: WritePlan::new(&run.brief, write_to, partitioned, &types, image.as_ref())
                .guarding(run.fingerprints.clone()),
            brief_hash: run.brief_hash,
            bound_kind: run.bound_kind,
            target: run.brief.scope.target.to_string(),
        });
        if let Ok(mut loaded) = self.loaded.lock() {
            loaded.insert(run_id, Arc::clone(&context));
        }
        Ok(context)
    }

    fn cached(&self, run_id: Uuid) -> Option<Arc<RunContext>> {
        self.loaded.lock().ok()?.get(&run_id).cloned()
    }
}
