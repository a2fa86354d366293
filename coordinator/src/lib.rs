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
pub mod downstream;
pub mod draft;
pub mod error;
pub mod latency;
pub mod lifecycle;
pub mod list;
pub mod notify;
pub mod people;
pub mod plan;
pub mod preflight;
pub mod reached;
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
/// login name (`USER`, `LOGNAME`, else the account of the process's user id,
/// as in a container that sets neither).
#[must_use]
pub fn operator() -> String {
    operator_from(|name| std::env::var(name).ok())
}

/// [`operator`] over any source of variables: the first of them set and not
/// blank, else the process's account name, else `uid N`.
fn operator_from(var: impl Fn(&str) -> Option<String>) -> String {
    ["BACKFILL_OPERATOR", "USER", "LOGNAME"]
        .into_iter()
        .find_map(|name| var(name).filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| {
            let uid = nix::unistd::getuid();
            nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map_or_else(|| format!("uid {uid}"), |user| user.name)
        })
}

#[cfg(test)]
mod operator_tests {
    use super::operator_from;

    #[test]
    fn the_operator_is_named_even_without_variables() {
        let set = |name: &str| (name == "USER").then(|| "alice".to_owned());
        assert_eq!(operator_from(set), "alice");
        let blank = |name: &str| (name == "BACKFILL_OPERATOR").then(|| " ".to_owned());
        let account = operator_from(blank);
        assert!(!account.is_empty() && account != "unknown", "{account}");
        assert_eq!(operator_from(|_| None), account, "the process's account");
    }
}
