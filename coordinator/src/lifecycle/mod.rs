//! A run's life after its batches: the reviewer's approval, cutover (swap and
//! downstream refresh), rollback and cleanup. The maintenance marker on a live
//! target lives with the control plane (`backfill_shared::control::maintenance`).
//!
//! States: `running` → `applied` → `approved` → `cut_over`; from any state but
//! `running`, `rollback` goes through `rolling_back` (resumable) to `rolled_back`.

pub mod approve;
pub mod cleanup;
pub mod cutover;
pub mod done;
pub mod fingerprint;
pub mod forget;
pub mod rollback;
pub mod swap;

use backfill_shared::brief::{Brief, Strategy};
use backfill_shared::sql::TableName;
use uuid::Uuid;

/// Whether batches write to the live target (and so need before-images and a
/// maintenance marker) rather than to a table beside it.
#[must_use]
pub fn writes_live_target(brief: &Brief) -> bool {
    brief.write.strategy.writes_live_target()
}

/// The table a staging-swap or parallel-version run builds beside the target.
#[must_use]
pub fn side_table(brief: &Brief, run_id: Uuid) -> Option<TableName> {
    let target = &brief.scope.target;
    match brief.write.strategy {
        Strategy::StagingSwap => Some(target.with_suffix(&format!("__bf_stage_{}", short(run_id)))),
        Strategy::ParallelVersion => Some(brief.write.new_table.clone().unwrap_or_else(|| {
            target.with_suffix(&format!("__{}", brief.meta.name.replace('-', "_")))
        })),
        Strategy::Merge | Strategy::PartitionOverwrite => None,
    }
}

/// The name the previous target takes when a swap puts the new table in its place.
#[must_use]
pub fn old_table(brief: &Brief, run_id: Uuid) -> TableName {
    brief
        .scope
        .target
        .with_suffix(&format!("__bf_old_{}", short(run_id)))
}

/// The first eight hex digits of a run id, for object names.
#[must_use]
pub fn short(run_id: Uuid) -> String {
    backfill_shared::control::short(run_id)
}

/// Catalog name checks: PostgreSQL truncates longer identifiers silently.
pub fn check_name(name: &TableName) -> crate::Result<()> {
    if name.table.len() > 63 {
        return Err(crate::CliError::BadInput(format!(
            "the table name {name} is longer than 63 characters; shorten the target or brief name (or set write.new_table)"
        )));
    }
    Ok(())
}
