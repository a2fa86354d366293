//! The exactly-once protocol under replays and stale workers: the same batch
//! message delivered twice is applied once, and a worker holding a superseded
//! fencing token cannot commit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::run;
use backfill_shared::brief::Brief;
use backfill_shared::control::batches::{self, Claim};
use backfill_tests::{TestEnv, publish_batch};
use backfill_worker::BatchError;
use backfill_worker::WorkerOptions;
use backfill_worker::apply::{self, BatchWork};
use lapin::options::QueueDeclareOptions;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_message_delivered_twice_is_applied_once() {
    let env = TestEnv::new(0.01).await;
    let text = env.brief(10, 4).await;
    let (run_id, _, plan) = env.record_run(&text).await;
    let (conn, channel, topo) = env.channel().await;
    let batch = plan[3];
    for _ in 0..2 {
        publish_batch(&channel, &topo, run_id, &text, &batch).await;
    }

    let workers = env.workers(2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let queue = channel
            .queue_declare(
                topo.batches.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        let applied = batches::applied(&env.pool, run_id, batch.no).await.unwrap();
        if queue.message_count() == 0 && applied.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "batch not applied in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both deliveries settle before the workers stop (they drain).
    workers.stop().await;

    let (applied_events, attempts): (i64, i32) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM backfill.run_log WHERE run_id = $1 AND batch_no = $2 AND event = 'batch_applied'),
                (SELECT attempts FROM backfill.batches WHERE run_id = $1 AND batch_no = $2)",
    )
    .bind(run_id)
    .bind(i64::from(batch.no))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(applied_events, 1, "applied more than once");
    assert_eq!(attempts, 1, "claimed more than once");
    let others: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM backfill.batches WHERE run_id = $1 AND state = 'applied'",
    )
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(others, 1, "only the published batch may be applied");
    let _ = conn.close(200, "done".into()).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_fencing_token_cannot_commit() {
    let env = TestEnv::new(0.01).await;
    let (run_id, brief, plan) = env.record_run(&env.brief(10, 4).await).await;
    let merge = env
        .write_plan(run_id, &brief, false, backfill_tests::Images::Kept)
        .await;
    let batch = plan[0];
    let bounds = (batch.lo.to_string(), batch.hi.to_string());
    let claim = |who: &'static str| {
        let bounds = bounds.clone();
        let pool = env.pool.clone();
        async move {
            batches::claim(&pool, run_id, batch.no, (&bounds.0, &bounds.1), who)
                .await
                .unwrap()
        }
    };
    let Claim::Granted { fence: old } = claim("worker-a").await else {
        panic!("first claim refused")
    };
    let Claim::Granted { fence: new } = claim("worker-b").await else {
        panic!("second claim refused")
    };
    assert!(new > old, "fencing tokens must only grow");
    let before = env.differences().await;

    let work = |fence| BatchWork {
        run_id,
        batch_no: batch.no,
        lo: batch.lo,
        hi: batch.hi,
        fence,
    };
    let stale = apply::apply(&env.pool, &merge, work(old), "worker-a").await;
    assert!(
        matches!(stale, Err(BatchError::Stale { .. })),
        "stale worker committed: {stale:?}"
    );
    assert_eq!(
        env.differences().await,
        before,
        "a stale apply changed the target"
    );
    assert!(
        batches::applied(&env.pool, run_id, batch.no)
            .await
            .unwrap()
            .is_none()
    );

    let rows = apply::apply(&env.pool, &merge, work(new), "worker-b")
        .await
        .unwrap();
    assert!(rows.rows.updated > 0);
    assert!(env.differences().await < before);
    // And once applied, even the current token cannot apply it again.
    let again = apply::apply(&env.pool, &merge, work(new), "worker-b").await;
    assert!(matches!(again, Err(BatchError::Stale { .. })), "{again:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_stats_count_applied_batches() {
    // The in-process worker reports what it did; the demo and benchmarks rely on it.
    let env = TestEnv::new(0.01).await;
    let text = env.brief(6, 3).await;
    let brief = Brief::parse(&text).unwrap();
    let plan = brief.scope.batch_by.plan().unwrap();
    let worker = backfill_worker::Worker::connect(env.config.clone(), WorkerOptions::default())
        .await
        .unwrap();
    let stats = worker.stats();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    let run_id = run::create(&env.pool, &text, &brief, &plan).await.unwrap();
    let finish = env.drive_in_background(run_id).await.unwrap().unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(finish, run::Finish::Applied);
    assert_eq!(stats.applied.get(), plan.len() as u64);
    env.cleanup().await;
}
