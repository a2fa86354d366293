//! A worker process killed with SIGKILL in the middle of a run: the broker hands
//! its unacknowledged batches to the surviving worker, which waits out the dead
//! worker's leases, and the run completes with the exact result, every batch
//! applied once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::run::Finish;
use backfill_shared::control::batches;
use backfill_tests::{TestEnv, finish_within};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_run_does_not_break_the_run() {
    let env = TestEnv::new(0.02).await;
    // Each batch sleeps 100 ms in the warehouse, so batches are in flight when the kill lands.
    let text = env.slow_brief(60, 4, 0.1).await;
    let mut victim = env.spawn_worker(&["--concurrency", "2", "--lease-ttl", "3"]);
    let mut survivor = env.spawn_worker(&["--concurrency", "2", "--lease-ttl", "3"]);
    let (run_id, _, plan) = env.record_run(&text).await;
    let driver = env.drive_in_background(run_id);

    // Kill once a few batches are done and the victim is holding work.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let counts = batches::counts(&env.pool, run_id).await.unwrap();
        let victim_busy: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM backfill.batches WHERE run_id = $1 AND state = 'running'
                AND worker LIKE '%-' || $2 || '-%'",
        )
        .bind(run_id)
        .bind(victim.id().unwrap().to_string())
        .fetch_one(&env.pool)
        .await
        .unwrap();
        if counts.applied >= 8 && victim_busy > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.start_kill().unwrap(); // SIGKILL
    victim.wait().await.unwrap();
    let applied_at_kill = batches::counts(&env.pool, run_id).await.unwrap().applied;

    let finish = finish_within(driver, 120).await;
    assert_eq!(finish, Finish::Applied);
    assert!(
        applied_at_kill < i64::try_from(plan.len()).unwrap(),
        "the kill landed after the run"
    );
    env.assert_exactly_applied(run_id).await;
    survivor.start_kill().unwrap();
    let _ = survivor.wait().await;
    env.cleanup().await;
}
