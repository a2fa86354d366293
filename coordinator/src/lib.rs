//! The Backfill coordinator (`backfill` CLI), as a library the tests drive. It
//! reaches workers only through `backfill_shared`, the broker and the control plane.
//!
//! - [`announce`]: `backfill announce`, the note before a run, and whether a run needs one.
//! - [`canary`]: `limits.canary` (which batches go first) and `backfill promote`.
//! - [`catalog`]: what reads a table (views, materialized views).
//! - [`dbt`]: what a dbt project's manifest has downstream of a table.
//! - [`console`]: `backfill serve`, the web console over the control plane.
//! - [`preflight`]: checks of a brief against the warehouse catalog, blast radius.
//! - [`plan`]: `backfill plan`.
//! - [`run`]: recording a run and driving it (publish window, events, halt).
//! - [`report`]: `backfill report`, the stakeholders' change note.
//! - [`resume`]: `backfill resume` (accepting a breach) and `backfill retry`.
//! - [`sample`]: `backfill sample`, a test run on a slice that writes nothing.
//! - [`status`]: `backfill status`.
//! - [`validate`]: `backfill validate`, the run-level checklist.
//! - [`list`]: `backfill list`, and the run a `RUN` argument (an id prefix) names.
//! - [`lifecycle`]: approve, cutover, rollback, cleanup, maintenance marker.
//! - [`diff`]: `backfill diff`, what a run (or one table against another) changed.
//! - [`draft`]: `backfill new`, a first brief drafted from the catalog.
//! - [`notify`]: OpenLineage run events and webhooks at each step of a run's life.
//! - [`demo`] and [`tpch`]: the end-to-end demo on generated TPC-H data.

pub mod announce;
pub mod canary;
pub mod catalog;
pub mod console;
pub mod dbt;
pub mod demo;
pub mod diff;
pub mod draft;
pub mod error;
pub mod lifecycle;
pub mod list;
pub mod notify;
pub mod people;
pub mod plan;
pub mod preflight;
pub mod report;
pub mod resume;
pub mod run;
pub mod sample;
pub mod status;
pub mod tpch;
pub mod validate;

pub use error::{CliError, Result};

use backfill_shared::brief::Brief;

/// Reads and lints a brief file. Every problem is reported at once.
pub fn read_brief(path: &std::path::Path) -> Result<(String, Brief)> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::BadInput(format!("cannot read the brief {}: {e}", path.display()))
    })?;
    let brief =
        Brief::parse(&text).map_err(|e| CliError::BadInput(format!("{}: {e}", path.display())))?;
    Ok((text, brief))
}

/// Who is running the coordinator, for the run log: `BACKFILL_OPERATOR`, else the
/// login name.
#[must_use]
pub fn operator() -> String {
    std::env::var("BACKFILL_OPERATOR")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}
