//! What a person may do to a run from the console, and doing it through the
//! same code as the CLI. Stopping is always safe: anyone in `backfill.people`
//! may pause. Approving and promoting a canary are the brief's reviewer's, never
//! its owner's. The rest (resume, accept a breach, cancel, retry, validate,
//! cutover, rollback) are the owner's or the reviewer's. The action runs on connections
//! that act for the person's database role (`backfill.acting_role`, migration
//! 0013), so the database holds an approval to the same rule as the CLI's and
//! the run log records the person.

use crate::lifecycle::{approve, cutover, rollback};
use crate::run::{self, DriveOptions};
use crate::{Result, canary, resume};
use backfill_shared::brief::Brief;
use backfill_shared::config::Config;
use backfill_shared::control::batches::Counts;
use backfill_shared::control::people::Person;
use backfill_shared::control::runs::RunState;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Pause,
    Resume,
    Cancel,
    Retry,
    Validate,
    Approve,
    Promote,
    Cutover,
    Rollback,
}

impl Action {
    pub(super) const ALL: [Self; 9] = [
        Self::Pause,
        Self::Resume,
        Self::Cancel,
        Self::Retry,
        Self::Validate,
        Self::Approve,
        Self::Promote,
        Self::Cutover,
        Self::Rollback,
    ];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
            Self::Retry => "retry",
            Self::Validate => "validate",
            Self::Approve => "approve",
            Self::Promote => "promote",
            Self::Cutover => "cutover",
            Self::Rollback => "rollback",
        }
    }

    pub(super) fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }

    /// Whether the action can apply to a run in `state` (the code it calls
    /// has the last word).
    pub(super) fn fits(self, state: RunState) -> bool {
        use RunState as S;
        match self {
            Self::Pause => state == S::Running,
            Self::Resume => matches!(state, S::Paused | S::Halted),
            Self::Cancel => matches!(
                state,
                S::Running | S::Paused | S::Halted | S::Canary | S::Applied | S::Approved
            ),
            Self::Retry => matches!(state, S::Running | S::Halted),
            Self::Validate => matches!(state, S::Applied | S::Approved),
            Self::Approve => state == S::Applied,
            Self::Promote => state == S::Canary,
            Self::Cutover => state == S::Approved,
            Self::Rollback => matches!(
                state,
                S::Paused
                    | S::Halted
                    | S::Applied
                    | S::Approved
                    | S::CutOver
                    | S::Cancelled
                    | S::RollingBack
            ),
        }
    }

    /// Whether the action cannot be taken back, so it asks for confirmation
    /// and looks unlike the others.
    pub(super) fn is_dangerous(self) -> bool {
        matches!(self, Self::Cancel | Self::Rollback | Self::Cutover)
    }

    /// What the action does that cannot be taken back, for the second step
    /// that confirms it (`None`: it takes effect at once), from the run's
    /// `batches` and `brief`.
    pub(super) fn consequence(self, batches: &Counts, brief: &Brief) -> Option<String> {
        let not_applied = batches.total() - batches.applied;
        match self {
            Self::Cancel => Some(format!(
                "Cancelling stops the run for good: its {not_applied} batch(es) not applied never start. \
                 Its {} applied batch(es) stay applied; only a rollback undoes them.",
                batches.applied
            )),
            Self::Rollback => Some(format!(
                "Rolling back stops the run, fences its {not_applied} batch(es) not applied so none ever commits, \
                 and restores {} as it was before the run: {} applied batch(es) undone. \
                 Rows written since the run are spared and listed.",
                brief.scope.target, batches.applied
            )),
            Self::Cutover => Some(format!(
                "Cutting over exposes the run to everyone who reads {}{}, and runs its {} refresh step(s).",
                brief.scope.target,
                if brief.write.strategy.writes_live_target() {
                    ""
                } else {
                    ": the built table is swapped in"
                },
                brief.dependencies.refresh.len()
            )),
            Self::Pause
            | Self::Resume
            | Self::Retry
            | Self::Validate
            | Self::Approve
            | Self::Promote => None,
        }
    }

    /// Whether a resume needs a reason: a halted run's breaches are accepted
    /// with one.
    pub(super) fn wants_reason(self, state: RunState) -> bool {
        self == Self::Resume && state == RunState::Halted
    }

    /// Why `person` may not take this action on a run of `brief`, if they may not.
    pub(super) fn refusal(self, person: &Person, brief: &Brief) -> Option<String> {
        let is = |name: &str| person.name.eq_ignore_ascii_case(name);
        let (owner, reviewer) = (&brief.meta.owner, &brief.meta.reviewer);
        match self {
            Self::Pause => None,
            Self::Approve | Self::Promote if is(owner) => Some(format!(
                "{} owns this run and cannot {} it; the brief names {reviewer} as reviewer",
                person.name,
                self.as_str()
            )),
            Self::Approve | Self::Promote if !is(reviewer) => Some(format!(
                "only the reviewer named in the brief ({reviewer}) can {} this run; you are {}",
                self.as_str(),
                person.name
            )),
            _ if !is(owner) && !is(reviewer) => Some(format!(
                "only the run's owner ({owner}) or reviewer ({reviewer}) can {} it; you are {} \
                 (anyone may pause it)",
                self.as_str(),
                person.name
            )),
            _ => None,
        }
    }
}

/// Takes `action` on the run as `person`, on `acting` (connections that act for
/// them); `pool` is the console's own, for a run it goes on to drive.
pub(super) async fn take(
    action: Action,
    acting: &PgPool,
    (pool, config): (&PgPool, &Config),
    run_id: Uuid,
    person: &Person,
    reason: Option<&str>,
) -> Result<()> {
    let actor = person.name.as_str();
    match action {
        Action::Pause => {
            resume::pause(acting, run_id, actor).await?;
            tell_workers(config, acting, run_id).await;
        }
        Action::Cancel => {
            resume::cancel(acting, run_id, actor).await?;
            tell_workers(config, acting, run_id).await;
            if let Err(e) = run::drop_events_queue(config, acting, run_id).await {
                tracing::warn!(run.id = %run_id, error = %e, "the run's events queue stays behind");
            }
        }
        Action::Resume => {
            resume::resume(acting, run_id, actor, reason).await?;
            drive_unless_driven(config, pool, run_id).await?;
        }
        Action::Retry => {
            resume::retry(acting, run_id, actor).await?;
            drive_unless_driven(config, pool, run_id).await?;
        }
        Action::Validate => {
            // Failed checks are the checklist's to show, not an error.
            crate::validate::validate(acting, run_id).await?;
        }
        Action::Approve => {
            approve::approve(acting, run_id, Some(actor)).await?;
        }
        Action::Promote => {
            canary::promote(acting, run_id, Some(actor)).await?;
            tell_workers(config, acting, run_id).await;
            drive_unless_driven(config, pool, run_id).await?;
        }
        Action::Cutover => {
            cutover::cutover(acting, run_id, actor, Duration::from_secs(5)).await?;
        }
        Action::Rollback => {
            rollback::rollback(acting, run_id, actor, rollback::RollbackOptions::default()).await?;
        }
    }
    Ok(())
}

async fn tell_workers(config: &Config, pool: &PgPool, run_id: Uuid) {
    if let Some(warning) = run::tell_workers(config, pool, run_id).await {
        tracing::warn!(run.id = %run_id, "{warning}");
    }
}

/// Drives the run from the console's process unless a coordinator already
/// does, as `backfill resume` and `retry` drive it from the CLI's.
async fn drive_unless_driven(config: &Config, pool: &PgPool, run_id: Uuid) -> Result<()> {
    if run::is_driven(pool, run_id).await? {
        return Ok(());
    }
    let (config, pool) = (config.clone(), pool.clone());
    tokio::spawn(async move {
        let options = DriveOptions {
            progress: false,
            ..DriveOptions::default()
        };
        match run::drive(&config, &pool, run_id, options).await {
            Ok(finish) => tracing::info!(run.id = %run_id, ?finish, "the console's drive ended"),
            Err(e) => tracing::warn!(run.id = %run_id, error = %e, "the console's drive failed"),
        }
    });
    Ok(())
}
