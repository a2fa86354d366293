//! The control plane: schema `backfill` in the warehouse database, created by the
//! embedded migrations in `shared/migrations`. It is the record of every run:
//! [`runs`] (the brief, its hash, code version, operator, state), [`batches`]
//! (bounds, state, attempts, fencing token, row counts, timings, last error) and the
//! append-only [`log`].

pub mod announcements;
pub mod batches;
pub mod capture;
pub mod drift;
pub mod log;
pub mod maintenance;
pub mod people;
pub mod runs;
pub mod setup;
pub mod validations;

use sqlx::PgPool;

/// The control plane: the record of runs and the rules that keep it.
pub const SCHEMA: &str = "backfill";
/// A run's own tables: before-images and a swap's change tables. Operators
/// create them here; only the owner of [`SCHEMA`] creates anything there.
pub const DATA_SCHEMA: &str = "backfill_data";

/// The first eight hex digits of a run id, for the names of its objects.
#[must_use]
pub fn short(run_id: uuid::Uuid) -> String {
    run_id.simple().to_string()[..8].to_owned()
}

/// The last column of a run's before-image table (`backfill_data.image_<run>`,
/// `bf_batch_no`, `bf_op`, then the target's columns): for an updated row
/// (`bf_op = 'U'`), a 64-bit hash (`hashtextextended`) of the row the update wrote, so rollback can tell
/// a row changed since the run from one the run left as it was.
pub const IMAGE_AFTER_HASH: &str = "bf_after";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "a run is already active on {target}: {run_id} ({state}); finish, cancel or roll it back first (`backfill status {run_id}`)"
    )]
    ActiveRun {
        target: String,
        run_id: uuid::Uuid,
        state: String,
    },
    #[error("no run {0}; `backfill status` lists none by that id — check the id")]
    UnknownRun(uuid::Uuid),
    /// A lock not granted in time; nothing changed, and trying again is safe.
    #[error("{0}")]
    Busy(String),
    /// Something this login may not do; the message names who may.
    #[error("{0}")]
    Refused(String),
    #[error("the control plane holds data this build cannot read: {0}")]
    Corrupt(String),
    #[error("could not create or upgrade the control-plane schema `backfill`: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("control-plane query failed: {0}")]
    Sql(#[from] sqlx::Error),
}

pub type Result<T, E = ControlError> = std::result::Result<T, E>;

/// Creates or upgrades schema `backfill`. Safe to call from many processes at once
/// (the migrator takes an advisory lock). A schema already current is left as
/// it is without taking the lock, so roles without DDL rights (workers,
/// reviewers, viewers: `deploy/roles.sql`) start too.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let mut migrator = sqlx::migrate!("./migrations");
    let newest = migrator.iter().map(|m| m.version).max();
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM backfill._sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
            .ok()
            .flatten();
    if applied.is_some() && applied == newest {
        return Ok(());
    }
    migrator.create_schema(SCHEMA);
    migrator.dangerous_set_table_name("backfill._sqlx_migrations");
    migrator.run(pool).await?;
    Ok(())
}

/// The version of this build, recorded with every run.
#[must_use]
pub fn code_version() -> String {
    format!(
        "{} {}",
        env!("CARGO_PKG_VERSION"),
        option_env!("BACKFILL_GIT_SHA").unwrap_or("(built without git: commit unknown)")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_code_version_names_the_commit() {
        // Tests run from a git checkout, so the build embedded its commit.
        let version = super::code_version();
        let sha = version
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .trim_end_matches("-dirty");
        assert!(
            sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit()),
            "{version}"
        );
    }
}
