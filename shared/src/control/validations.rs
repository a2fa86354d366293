//! Validation runs (`backfill validate`): each one's checks, the fingerprint of
//! the table it checked, and the failed checks accepted since, with who and why.
//! The approval gate reads them: a run is approved against one validation run.

use super::{Result, log};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// One check of a validation run, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult<'a> {
    pub name: &'a str,
    pub passed: bool,
    pub summary: &'a str,
    pub detail: &'a serde_json::Value,
}

/// A recorded validation run.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ValidationRun {
    pub id: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub passed: bool,
    pub failed: Vec<String>,
    pub fingerprint: serde_json::Value,
}

/// A failed check someone accepted, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Acceptance {
    pub check_name: String,
    pub actor: String,
    pub reason: String,
}

/// Records a validation run with its checks and fingerprint, and logs it, in
/// one transaction. Returns its id.
pub async fn record(
    pool: &PgPool,
    run_id: Uuid,
    actor: &str,
    checks: &[CheckResult<'_>],
    fingerprint: &serde_json::Value,
) -> Result<i64> {
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name)
        .collect();
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO backfill.validation_runs (run_id, actor, passed, failed, fingerprint)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(run_id)
    .bind(actor)
    .bind(failed.is_empty())
    .bind(&failed)
    .bind(fingerprint)
    .fetch_one(&mut *tx)
    .await?;
    for c in checks {
        sqlx::query(
            "INSERT INTO backfill.validations (run_id, check_name, passed, summary, detail, validation_run)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(run_id)
        .bind(c.name)
        .bind(c.passed)
        .bind(c.summary)
        .bind(c.detail)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    log::append(
        &mut *tx,
        run_id,
        actor,
        "validated",
        None,
        serde_json::json!({ "validation": id, "passed": failed.is_empty(), "failed": failed }),
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// The run's latest validation run, if it was ever validated.
pub async fn latest(pool: &PgPool, run_id: Uuid) -> Result<Option<ValidationRun>> {
    Ok(sqlx::query_as(
        "SELECT id, at, actor, passed, failed, fingerprint FROM backfill.validation_runs
          WHERE run_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(run_id)
    .fetch_optional(pool)
    .await?)
}

/// One validation run by id.
pub async fn get(pool: &PgPool, id: i64) -> Result<Option<ValidationRun>> {
    Ok(sqlx::query_as(
        "SELECT id, at, actor, passed, failed, fingerprint FROM backfill.validation_runs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// The failed checks of a validation run accepted so far.
pub async fn acceptances(pool: &PgPool, validation: i64) -> Result<Vec<Acceptance>> {
    Ok(sqlx::query_as(
        "SELECT check_name, actor, reason FROM backfill.check_acceptances
          WHERE validation_run = $1 ORDER BY at",
    )
    .bind(validation)
    .fetch_all(pool)
    .await?)
}

/// Records (and logs) that `actor` accepts a failed check of a validation run.
/// Returns false when it was accepted already.
pub async fn accept(
    pool: &PgPool,
    run_id: Uuid,
    validation: i64,
    acceptance: &Acceptance,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO backfill.check_acceptances (validation_run, check_name, actor, reason)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(validation)
    .bind(&acceptance.check_name)
    .bind(&acceptance.actor)
    .bind(&acceptance.reason)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        log::append(
            &mut *tx,
            run_id,
            &acceptance.actor,
            "check_accepted",
            None,
            serde_json::json!({
                "validation": validation,
                "check": acceptance.check_name,
                "reason": acceptance.reason,
            }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

/// The acceptances of earlier validations of the run that hold for
/// `validation` too: of a check that failed there with the same summary (the
/// same figures) as it fails in `validation`. The latest per check.
pub async fn acceptances_that_hold(
    pool: &PgPool,
    run_id: Uuid,
    validation: i64,
) -> Result<Vec<(i64, Acceptance)>> {
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (a.check_name) a.validation_run, a.check_name, a.actor, a.reason
           FROM backfill.check_acceptances a
           JOIN backfill.validation_runs v ON v.id = a.validation_run AND v.run_id = $1 AND v.id < $2
           JOIN backfill.validations before ON before.validation_run = v.id AND before.check_name = a.check_name
           JOIN backfill.validations now ON now.validation_run = $2 AND now.check_name = a.check_name
          WHERE NOT now.passed AND NOT before.passed AND now.summary = before.summary
          ORDER BY a.check_name, a.at DESC",
    )
    .bind(run_id)
    .bind(validation)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(of, check_name, actor, reason)| {
            (
                of,
                Acceptance {
                    check_name,
                    actor,
                    reason,
                },
            )
        })
        .collect())
}

/// Each check's latest result for a run: name, passed, summary, when.
pub async fn latest_results(
    pool: &PgPool,
    run_id: Uuid,
) -> Result<Vec<(String, bool, String, chrono::DateTime<chrono::Utc>)>> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT ON (check_name) check_name, passed, summary, at FROM backfill.validations
          WHERE run_id = $1 ORDER BY check_name, id DESC",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?)
}
