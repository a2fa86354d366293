//! The runs this worker has seen, loaded once from the control plane: the brief's
//! hash (to refuse forged or stale messages) and the statements built from it.

use crate::apply::MergePlan;
use backfill_shared::brief::{BoundKind, Strategy};
use backfill_shared::control::{ControlError, Result, runs};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

#[derive(Debug)]
pub(crate) struct RunContext {
    pub(crate) brief_hash: String,
    pub(crate) bound_kind: BoundKind,
    pub(crate) plan: MergePlan,
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
        if run.brief.write.strategy != Strategy::Merge {
            return Err(ControlError::Corrupt(format!(
                "run {run_id} uses write strategy {}, which this worker cannot apply",
                run.brief.write.strategy
            )));
        }
        let context = Arc::new(RunContext {
            plan: MergePlan::new(&run.brief, run.image_table.as_deref()),
            brief_hash: run.brief_hash,
            bound_kind: run.bound_kind,
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
