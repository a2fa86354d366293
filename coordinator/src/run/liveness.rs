//! Keeping a run alive while processes and services come and go:
//!
//! - [`DriverLock`]: one coordinator drives a run at a time. A PostgreSQL
//!   session-level advisory lock, so a coordinator that dies (SIGKILL, a lost
//!   machine) lets go of it when its session ends, and `backfill resume` from
//!   anywhere takes over.
//! - [`Sweep`]: finds published batches nobody is working on — no live lease, no
//!   progress, no message waiting in the queue — whose message was lost or
//!   dead-lettered by the broker's delivery limit, and says which to publish again.
//!   A batch that keeps getting lost is failed instead, so the run halts with the
//!   reason rather than loop.
//! - [`Consumers`]: notices when no worker consumes the batch queue while
//!   batches wait in it (the user forgot to start workers), and when one is back.

use crate::{CliError, Result};
use backfill_shared::control::batches::{self, Unfinished};
use backfill_shared::lease::Leases;
use sqlx::{Acquire as _, PgConnection, PgPool};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// The advisory lock class of run drivers (`pg_try_advisory_lock(int, int)`).
const DRIVER_LOCK_CLASS: i32 = 0x4246_0001;
/// How long to wait for a dead coordinator's session to end before giving up.
const TAKE_OVER_WAIT: Duration = Duration::from_secs(10);
/// A batch claimed this often without being applied is failed: workers keep dying
/// or losing their lease on it.
pub(super) const MAX_CLAIMS: i32 = 10;

/// Held while this process drives the run; released when dropped (its session ends).
pub(super) struct DriverLock {
    _session: PgConnection,
}

impl DriverLock {
    /// Whether some coordinator drives the run now.
    pub(super) async fn is_held(pool: &PgPool, run_id: Uuid) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid::int = $1
                              AND objid::int = hashtext($2::text) AND granted)",
        )
        .bind(DRIVER_LOCK_CLASS)
        .bind(run_id)
        .fetch_one(pool)
        .await?)
    }

    pub(super) async fn take(pool: &PgPool, run_id: Uuid) -> Result<Self> {
        let mut session = pool.acquire().await?.detach();
        let deadline = tokio::time::Instant::now() + TAKE_OVER_WAIT;
        loop {
            let taken: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2::text))")
                    .bind(DRIVER_LOCK_CLASS)
                    .bind(run_id)
                    .fetch_one(session.acquire().await?)
                    .await?;
            if taken {
                return Ok(Self { _session: session });
            }
            if tokio::time::Instant::now() >= deadline {
                let holder: Option<(String, Option<String>, String)> = sqlx::query_as(
                    "SELECT a.application_name, host(a.client_addr), to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ')
                       FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                      WHERE l.locktype = 'advisory' AND l.classid::int = $1
                        AND l.objid::int = hashtext($2::text) AND l.granted",
                )
                .bind(DRIVER_LOCK_CLASS)
                .bind(run_id)
                .fetch_optional(&mut session)
                .await?;
                let who = holder.map_or_else(
                    || "another coordinator".to_owned(),
                    |(app, addr, since)| {
                        format!(
                            "another coordinator ({app:?} from {}, connected since {since})",
                            addr.unwrap_or_else(|| "a local socket".into())
                        )
                    },
                );
                return Err(CliError::BadInput(format!(
                    "run {run_id} is being driven by {who}; `backfill status {run_id}` shows its progress. \
                     If that process is gone, its database session ends soon and this command works"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// What a sweep decided about the batches nobody is working on.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Verdict {
    /// Lost: publish them again.
    pub(super) republish: Vec<u32>,
    /// Lost too often: fail them (with the count of claims).
    pub(super) give_up: Vec<(u32, i32)>,
}

/// Remembers, between reconciles, which published batches looked abandoned.
#[derive(Debug, Default)]
pub(super) struct Sweep {
    /// Batch → the fencing token it had when first seen abandoned.
    suspects: HashMap<u32, i64>,
}

impl Sweep {
    /// Looks at the run's queued and running batches. A batch is lost when it had
    /// no lease and the same fencing token at two sweeps in a row while no
    /// message waited in the queue (`queue_ready`) — no worker has it, and none
    /// is about to. Republishing one that was not lost is harmless: the ledger
    /// and the idempotency key make the second delivery a no-op.
    pub(super) async fn run(
        &mut self,
        pool: &PgPool,
        leases: &Leases,
        run_id: Uuid,
        queue_ready: u32,
    ) -> Result<Verdict> {
        Ok(self.judge(&abandoned(pool, leases, run_id).await?, queue_ready))
    }

    fn judge(&mut self, abandoned: &[Unfinished], queue_ready: u32) -> Verdict {
        let mut verdict = Verdict::default();
        if queue_ready > 0 {
            // Any of them may be the message waiting: not quiet, start over.
            self.suspects.clear();
            return verdict;
        }
        let mut suspects = HashMap::new();
        for b in abandoned {
            if self.suspects.get(&b.batch_no) == Some(&b.fence) {
                if b.attempts >= MAX_CLAIMS {
                    verdict.give_up.push((b.batch_no, b.attempts));
                } else {
                    verdict.republish.push(b.batch_no);
                }
            } else {
                suspects.insert(b.batch_no, b.fence);
            }
        }
        self.suspects = suspects;
        verdict
    }
}

/// Published (queued or running) batches of the run that no worker holds a lease on.
async fn abandoned(pool: &PgPool, leases: &Leases, run_id: Uuid) -> Result<Vec<Unfinished>> {
    unleased(leases, run_id, batches::unfinished(pool, run_id).await?).await
}

/// Those of `unfinished` that no worker holds a lease on.
pub(super) async fn unleased(
    leases: &Leases,
    run_id: Uuid,
    unfinished: Vec<Unfinished>,
) -> Result<Vec<Unfinished>> {
    let nos: Vec<u32> = unfinished.iter().map(|b| b.batch_no).collect();
    let holders = leases.holders(run_id, &nos).await?;
    Ok(unfinished
        .into_iter()
        .zip(holders)
        .filter_map(|(b, holder)| holder.is_none().then_some(b))
        .collect())
}

/// What changed about the batch queue's consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConsumerChange {
    /// Batches have waited with no consumer for the whole grace period.
    Missing,
    /// A consumer is back after [`ConsumerChange::Missing`] was said.
    Back,
}

/// Watches the batch queue's consumer count, saying each change once.
#[derive(Debug)]
pub(super) struct Consumers {
    grace: Duration,
    since: Option<std::time::Instant>,
    told: bool,
}

impl Consumers {
    pub(super) fn new(grace: Duration) -> Self {
        Self {
            grace,
            since: None,
            told: false,
        }
    }

    /// `consumers` on the queue and `ready` messages in it, seen at `now`.
    pub(super) fn observe(
        &mut self,
        now: std::time::Instant,
        consumers: u32,
        ready: u32,
    ) -> Option<ConsumerChange> {
        if consumers > 0 {
            self.since = None;
            return std::mem::take(&mut self.told).then_some(ConsumerChange::Back);
        }
        if ready == 0 {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert(now);
        (!self.told && now.duration_since(since) >= self.grace).then(|| {
            self.told = true;
            ConsumerChange::Missing
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{ConsumerChange, Consumers};

    #[test]
    fn missing_consumers_are_told_once_after_the_grace_period_and_their_return_too() {
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + std::time::Duration::from_secs(s);
        let mut c = Consumers::new(std::time::Duration::from_secs(10));
        assert_eq!(c.observe(at(0), 0, 5), None);
        assert_eq!(c.observe(at(9), 0, 5), None);
        assert_eq!(c.observe(at(10), 0, 5), Some(ConsumerChange::Missing));
        assert_eq!(c.observe(at(20), 0, 5), None, "said once");
        assert_eq!(c.observe(at(21), 1, 5), Some(ConsumerChange::Back));
        assert_eq!(c.observe(at(22), 1, 0), None);
        // Nothing waiting: no worker is needed, so nothing to say.
        assert_eq!(c.observe(at(30), 0, 0), None);
        assert_eq!(c.observe(at(60), 0, 0), None);
        // The clock restarts when batches wait again.
        assert_eq!(c.observe(at(61), 0, 3), None);
        assert_eq!(c.observe(at(71), 0, 3), Some(ConsumerChange::Missing));
    }

    use super::*;

    fn batch(batch_no: u32, fence: i64, attempts: i32) -> Unfinished {
        Unfinished {
            batch_no,
            fence,
            attempts,
        }
    }

    #[test]
    fn a_batch_is_lost_after_two_quiet_sweeps() {
        let mut sweep = Sweep::default();
        assert_eq!(
            sweep.judge(&[batch(1, 3, 1), batch(2, 0, 0)], 0),
            Verdict::default()
        );
        // Batch 1 was claimed again meanwhile (fence 4): still only a suspect.
        let verdict = sweep.judge(&[batch(1, 4, 2), batch(2, 0, 0)], 0);
        assert_eq!(verdict.republish, vec![2]);
        // Republished, it is a suspect afresh.
        assert_eq!(sweep.judge(&[batch(1, 4, 2)], 0).republish, vec![1]);
        assert_eq!(sweep.judge(&[batch(1, 4, 2)], 0), Verdict::default());
    }

    #[test]
    fn a_waiting_message_may_be_the_batch() {
        let mut sweep = Sweep::default();
        sweep.judge(&[batch(7, 1, 1)], 0);
        assert_eq!(sweep.judge(&[batch(7, 1, 1)], 3), Verdict::default());
        assert_eq!(sweep.judge(&[batch(7, 1, 1)], 0), Verdict::default());
        assert_eq!(sweep.judge(&[batch(7, 1, 1)], 0).republish, vec![7]);
    }

    #[test]
    fn a_batch_lost_too_often_is_given_up() {
        let mut sweep = Sweep::default();
        sweep.judge(&[batch(5, 12, MAX_CLAIMS)], 0);
        let verdict = sweep.judge(&[batch(5, 12, MAX_CLAIMS)], 0);
        assert_eq!(verdict.give_up, vec![(5, MAX_CLAIMS)]);
        assert!(verdict.republish.is_empty());
    }
}
