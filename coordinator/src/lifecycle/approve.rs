//! `backfill approve RUN [--reviewer NAME]`: only the reviewer the brief names
//! (never the owner, nor whoever recorded the run), as the database knows them:
//! the session user must be the reviewer's role in `backfill.people` (the
//! database enforces it too); only once every batch is applied and the run was
//! validated. Approving validates the run again in the reviewer's own session
//! and approves that validation, which must pass or have each failed check
//! accepted by the reviewer (an acceptance of the same check with the same
//! figures in an earlier validation holds). The approval names that
//! validation; cutover exposes what it saw.

use crate::{CliError, Result};
use backfill_shared::control::batches;
use backfill_shared::control::people::{self, Session};
use backfill_shared::control::runs::{self, Run, RunState};
use backfill_shared::control::validations;
use sqlx::PgPool;
use uuid::Uuid;

/// This session, when it is the run's reviewer (and not its owner); `claimed`
/// is a name the caller gave, which must be the session's. `what` is the act.
pub(crate) async fn as_reviewer(
    pool: &PgPool,
    run: &Run,
    claimed: Option<&str>,
    what: &str,
) -> Result<Session> {
    let meta = &run.brief.meta;
    let run_id = run.run_id;
    let session = people::whoami(pool).await?;
    let Some(person) = &session.person else {
        return Err(CliError::NotAllowed(format!(
            "this session's database role {} is nobody in backfill.people, so it cannot {what} run {run_id}; \
             connect as your own role (BACKFILL_DATABASE_URL), or have an administrator map it: \
             `backfill people add NAME --role {}`",
            session.role, session.role
        )));
    };
    let me = format!("{} (database role {})", person.name, session.role);
    if let Some(claimed) = claimed
        && !session.is(claimed)
    {
        return Err(CliError::NotAllowed(format!(
            "--reviewer {claimed}, but this session is {me}: identity comes from the database login, not from a name typed"
        )));
    }
    if session.is(&meta.owner) {
        return Err(CliError::NotAllowed(format!(
            "{me} owns run {run_id} and cannot {what} it; the brief names {} as reviewer",
            meta.reviewer
        )));
    }
    if !session.is(&meta.reviewer) {
        return Err(CliError::NotAllowed(format!(
            "only the reviewer named in the brief ({}) can {what} run {run_id}; this session is {me}",
            meta.reviewer
        )));
    }
    Ok(session)
}

/// Checks that this session may `what` the run: its owner or its reviewer
/// (the database holds the same rule, migration 0017), or a superuser's own
/// session. Pausing is anyone's and does not ask.
pub(crate) async fn as_owner_or_reviewer(pool: &PgPool, run: &Run, what: &str) -> Result<()> {
    let meta = &run.brief.meta;
    let session = people::whoami(pool).await?;
    if session.superuser || session.is(&meta.owner) || session.is(&meta.reviewer) {
        return Ok(());
    }
    let me = session.person.as_ref().map_or_else(
        || format!("database role {}, nobody in backfill.people", session.role),
        |p| format!("{} (database role {})", p.name, session.role),
    );
    Err(CliError::NotAllowed(format!(
        "only the owner ({}) or the reviewer ({}) of run {} may {what} it; this session is {me}",
        meta.owner, meta.reviewer, run.run_id
    )))
}

/// Approves the run as this session's person, who must be its reviewer.
/// Returns the approver's name.
pub async fn approve(pool: &PgPool, run_id: Uuid, claimed: Option<&str>) -> Result<String> {
    let run = runs::load(pool, run_id).await?;
    let session = as_reviewer(pool, &run, claimed, "approve").await?;
    let latest = validations::latest(pool, run_id).await?;
    match run.state {
        RunState::Applied => {}
        RunState::Running | RunState::Halted => {
            let c = batches::counts(pool, run_id).await?;
            return Err(CliError::WrongState(format!(
                "run {run_id} is still {}: {} of {} batches applied; approve once every batch is applied",
                run.state,
                c.applied,
                c.total()
            )));
        }
        // Validated again since the approval: the reviewer approves the new one.
        RunState::Approved if latest.as_ref().map(|v| v.id) != run.approved_validation => {}
        RunState::Approved => {
            return Err(CliError::WrongState(format!(
                "run {run_id} was already approved by {}{} and waits for its cutover. Nothing was done; `backfill cutover {run_id}` is next",
                run.approved_by.unwrap_or_default(),
                backfill_shared::text::when(run.approved_at)
            )));
        }
        other => {
            return Err(CliError::WrongState(format!(
                "run {run_id} is {other}; only an applied run can be approved"
            )));
        }
    }
    if latest.is_none() {
        return Err(CliError::BadInput(format!(
            "run {run_id} has not been validated; run `backfill validate {run_id}`, then approve"
        )));
    }
    // The reviewer approves what their own session measures now: a validation
    // anyone else recorded is never enough (the database holds the same rule).
    let (id, _) = crate::validate::validate_recorded(pool, run_id).await?;
    for (of, held) in validations::acceptances_that_hold(pool, run_id, id).await? {
        let reason = format!(
            "{} (accepted on validation {of}: the same figures)",
            held.reason
        );
        let acceptance = validations::Acceptance {
            actor: session.name().to_owned(),
            reason,
            ..held
        };
        validations::accept(pool, run_id, id, &acceptance).await?;
    }
    let latest = validations::get(pool, id)
        .await?
        .ok_or_else(|| CliError::Internal(format!("validation {id} was recorded and is gone")))?;
    let open = open_failures(pool, &latest).await?;
    if !open.is_empty() {
        return Err(CliError::BadInput(format!(
            "validating run {run_id} again as {} failed: {}. Fix the cause and validate again, \
             or, as the reviewer, accept each failure: `backfill validate {run_id} --accept \"{}\" --reason \"...\"`, then approve",
            session.name(),
            open.join(", "),
            open[0]
        )));
    }
    if !runs::approve(pool, run_id, session.name(), latest.id).await? {
        return Err(CliError::BadInput(format!(
            "run {run_id} changed state while approving; check `backfill status {run_id}`"
        )));
    }
    let by = session.name().to_owned();
    crate::notify::emit(
        pool,
        run_id,
        crate::notify::Happened::Approved { by: by.clone() },
    )
    .await;
    Ok(by)
}

/// The failed checks of a validation run that nobody has accepted.
pub(crate) async fn open_failures(
    pool: &PgPool,
    validation: &validations::ValidationRun,
) -> Result<Vec<String>> {
    let accepted = validations::acceptances(pool, validation.id).await?;
    Ok(validation
        .failed
        .iter()
        .filter(|c| !accepted.iter().any(|a| &a.check_name == *c))
        .cloned()
        .collect())
}
