//! A worker process killed with SIGKILL in the middle of a run: the broker hands
//! its unacknowledged batches to the surviving worker, which waits out the dead
//! worker's leases, and the run completes with the exact result, every batch
//! applied once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::run::{self, DriveOptions, Finish};
use backfill_shared::brief::Brief;
use backfill_shared::control::batches;
use backfill_tests::{TestEnv, bin};
use std::time::Duration;
use tokio::process::{Child, Command};

fn spawn_worker(env: &TestEnv) -> Child {
    Command::new(bin("backfill-worker"))
        .args(["--concurrency", "2", "--lease-ttl", "3"])
        .envs(env.env())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start backfill-worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_run_does_not_break_the_run() {
    let env = TestEnv::new(0.02).await;
    // Each batch sleeps 100 ms in the warehouse, so batches are in flight when the kill lands.
    let text = env.brief(60, 4).await.replace(
        " GROUP BY o.o_orderkey",
        " AND (SELECT pg_sleep(0.1)) IS NOT NULL GROUP BY o.o_orderkey",
    );
    let brief = Brief::parse(&text).unwrap();
    let plan = brief.scope.batch_by.plan().unwrap();
    let mut victim = spawn_worker(&env);
    let mut survivor = spawn_worker(&env);
    let run_id = run::create(&env.pool, &text, &brief, &plan, "test")
        .await
        .unwrap();
    let config = env.config.clone();
    let pool = env.pool.clone();
    let driver = tokio::spawn(async move {
        run::drive(
            &config,
            &pool,
            run_id,
            DriveOptions {
                progress: false,
                ..Default::default()
            },
        )
        .await
    });

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

    let finish = tokio::time::timeout(Duration::from_secs(120), driver)
        .await
        .expect("run did not finish")
        .unwrap()
        .unwrap();
    assert_eq!(finish, Finish::Applied);
    assert!(
        applied_at_kill < i64::try_from(plan.len()).unwrap(),
        "the kill landed after the run"
    );
    assert_eq!(env.differences().await, 0);
    assert!(env.not_applied_exactly_once(run_id).await.is_empty());
    survivor.start_kill().unwrap();
    let _ = survivor.wait().await;
    env.cleanup().await;
}
