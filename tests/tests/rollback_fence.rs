//! Rollback fences first: with batches held in flight by another session's
//! row locks, `rollback` of the running run stops it, fences every batch not
//! applied and restores the applied ones; when the locks go, the held batches
//! are refused by the fence (the run log says so) and the table is exactly as
//! it was before the run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::lifecycle::rollback::{self, RollbackOptions};
use backfill_coordinator::run::Finish;
use backfill_shared::control::batches::{self, BatchState};
use backfill_shared::control::runs::{self, RunState};
use backfill_tests::{TestEnv, finish_within};
use std::time::Duration;
use tokio::time::{Instant, sleep};

/// Polls `done` every 50 ms for at most a minute; panics naming `what`.
async fn wait_until<F, Fut>(what: &str, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_fences_batches_in_flight_before_restoring() {
    let env = TestEnv::new(0.01).await;
    env.keep_pre_run_copy().await;
    // Two workers of two slots each: four batches in flight at most.
    let (run_id, _, plan) = env.record_run(&env.brief(20, 4).await).await;
    assert!(plan.len() >= 18, "the plan has {} batches", plan.len());
    let nos = batches::numbers_in_state(&env.pool, run_id, BatchState::Pending)
        .await
        .unwrap();
    let (first_held, held) = (12, 4);
    let (lo, hi): (String, String) = sqlx::query_as(
        "SELECT (SELECT lo FROM backfill.batches WHERE run_id = $1 AND batch_no = $2),
                (SELECT hi FROM backfill.batches WHERE run_id = $1 AND batch_no = $3)",
    )
    .bind(run_id)
    .bind(i64::from(nos[first_held]))
    .bind(i64::from(nos[first_held + held - 1]))
    .fetch_one(&env.pool)
    .await
    .unwrap();

    // The daily pipeline holds every row of four batches' ranges.
    let mut locker = env.pool.begin().await.unwrap();
    let locked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM tpch.order_revenue
          WHERE o_orderkey >= $1::bigint AND o_orderkey < $2::bigint FOR UPDATE) l",
    )
    .bind(&lo)
    .bind(&hi)
    .fetch_one(&mut *locker)
    .await
    .unwrap();
    assert!(locked > 0);

    let workers = env.workers(2).await;
    let driver = env.drive_in_background(run_id);
    let counts = || async { batches::counts(&env.pool, run_id).await.unwrap() };
    wait_until(
        "the batches before the held ones are applied and the held ones wait",
        || async {
            let c = counts().await;
            c.applied == i64::try_from(first_held).unwrap()
                && c.running == i64::try_from(held).unwrap()
        },
    )
    .await;

    // Rolled back while the run is running and four batches wait on the locks.
    let report = rollback::rollback(&env.pool, run_id, "alice", RollbackOptions::default())
        .await
        .unwrap();
    println!("{}", report.render());
    assert_eq!(report.batches_restored, first_held);
    assert_eq!(report.batches_fenced.len(), plan.len() - first_held);
    assert_eq!(
        runs::state(&env.pool, run_id).await.unwrap(),
        RunState::RolledBack
    );
    assert!(matches!(
        finish_within(driver, 60).await,
        Finish::Stopped(RunState::RollingBack | RunState::RolledBack)
    ));

    // The locks go: the held batches finish their statements and are refused.
    locker.commit().await.unwrap();
    wait_until("the held batches are refused by the fence", || async {
        env.logged(run_id, "stale_commit_refused").await == i64::try_from(held).unwrap()
    })
    .await;
    workers.stop().await;

    assert_eq!(
        env.differs_from_pre_run().await,
        (0, true),
        "the table is not as it was before the run"
    );
    let c = counts().await;
    assert_eq!((c.applied, c.running, c.pending, c.queued), (0, 0, 0, 0));
    assert_eq!(
        env.logged(run_id, "batch_applied").await,
        i64::try_from(first_held).unwrap(),
        "a fenced batch committed"
    );
    let fenced: serde_json::Value = sqlx::query_scalar(
        "SELECT detail -> 'batches_fenced' FROM backfill.run_log
          WHERE run_id = $1 AND event = 'run_rolling_back'",
    )
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        fenced.as_array().map(Vec::len),
        Some(plan.len() - first_held)
    );
    let again = rollback::rollback(&env.pool, run_id, "alice", RollbackOptions::default())
        .await
        .unwrap_err();
    assert!(again.to_string().contains("already rolled back"), "{again}");
    env.cleanup().await;
}
