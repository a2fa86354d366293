//! Workers under faults: lost warehouse connections are retried with backoff and
//! the run completes exactly; SIGTERM stops a worker taking new batches, lets its
//! in-flight ones finish, and exits cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::resume;
use backfill_coordinator::run::Finish;
use backfill_shared::control::batches;
use backfill_tests::{TestEnv, finish_within};
use std::time::Duration;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_warehouse_connections_are_retried() {
    let env = TestEnv::new(0.01).await;
    let text = env.slow_brief(30, 4, 0.2).await;
    let workers = env.workers(2).await;
    let (run_id, ..) = env.record_run(&text).await;
    let driver = env.drive_in_background(run_id);

    // Three times, kill every worker connection to this database mid-batch.
    let mut killed = 0i64;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'backfill-worker'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        killed += n;
    }
    let finish = finish_within(driver, 120).await;
    workers.stop().await;
    assert!(killed > 0, "no worker connection was terminated");
    assert_eq!(finish, Finish::Applied);
    env.assert_exactly_applied(run_id).await;
    let retried: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM backfill.batches WHERE run_id = $1 AND attempts > 1",
    )
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    println!(
        "terminated {killed} worker connections; {retried} batches needed more than one attempt"
    );
    assert!(
        retried > 0,
        "terminated connections should have forced retries"
    );
    env.cleanup().await;
}

/// Waits until `n` of the run's batches are running.
async fn await_running(env: &TestEnv, run_id: uuid::Uuid, n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while batches::counts(&env.pool, run_id).await.unwrap().running < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never took {n} batch(es)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM to a worker process; it must exit with success within a minute.
async fn terminate(worker: &mut tokio::process::Child, pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(60), worker.wait())
        .await
        .expect("worker did not exit")
        .unwrap();
    assert!(exit.success(), "worker exit: {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_batches_and_exits() {
    let env = TestEnv::new(0.01).await;
    let text = env.slow_brief(12, 4, 1.0).await;
    let mut worker = env.spawn_worker(&["--concurrency", "2"]);
    let pid = worker.id().unwrap();
    let (run_id, _, plan) = env.record_run(&text).await;
    let driver = env.drive_in_background(run_id);
    await_running(&env, run_id, 2).await;
    let taken: Vec<i32> = sqlx::query_scalar(
        "SELECT batch_no FROM backfill.batches WHERE run_id = $1 AND state = 'running'",
    )
    .bind(run_id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    terminate(&mut worker, pid).await;

    // The batches it held were finished, not abandoned; nothing else was started.
    let states: Vec<(i32, String)> = sqlx::query_as(
        "SELECT batch_no, state FROM backfill.batches WHERE run_id = $1 AND batch_no = ANY($2)",
    )
    .bind(run_id)
    .bind(&taken)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(
        states.iter().all(|(_, s)| s == "applied"),
        "in-flight batches after SIGTERM: {states:?}"
    );
    let counts = batches::counts(&env.pool, run_id).await.unwrap();
    assert_eq!(counts.running, 0);
    assert!(counts.applied < i64::try_from(plan.len()).unwrap());

    // A new worker picks up the rest.
    let workers = env.workers(1).await;
    let finish = finish_within(driver, 120).await;
    workers.stop().await;
    assert_eq!(finish, Finish::Applied);
    env.assert_exactly_applied(run_id).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reattaching_republishes_batches_whose_messages_were_lost() {
    let env = TestEnv::new(0.01).await;
    let (run_id, _, plan) = env.record_run(&env.brief(10, 3).await).await;
    // A coordinator that died after marking batches queued, before publishing them.
    batches::mark_queued(&env.pool, run_id, &[0, 1, 2])
        .await
        .unwrap();
    let workers = env.workers(2).await;
    let finish = finish_within(env.drive_in_background(run_id), 60).await;
    workers.stop().await;
    assert_eq!(finish, Finish::Applied);
    assert_eq!(
        batches::counts(&env.pool, run_id).await.unwrap().applied,
        i64::try_from(plan.len()).unwrap()
    );
    env.assert_exactly_applied(run_id).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_drain_deadline_abandons_a_batch_that_outlasts_it() {
    let env = TestEnv::new(0.01).await;
    // Each batch sleeps 30 s in the warehouse; the worker drains for 2 s.
    let text = env.slow_brief(4, 1, 30.0).await;
    let mut worker = env.spawn_worker(&["--concurrency", "1", "--drain-timeout", "2"]);
    let pid = worker.id().unwrap();
    let (run_id, ..) = env.record_run(&text).await;
    let driver = env.drive_in_background(run_id);
    await_running(&env, run_id, 1).await;
    let signalled = tokio::time::Instant::now();
    terminate(&mut worker, pid).await;
    let took = signalled.elapsed();
    // Waiting for the batch would take 30 s and apply it; the deadline (2 s,
    // then 5 s to let go) abandons it and rolls it back.
    assert!(
        took < Duration::from_secs(15),
        "exited {took:?} after SIGTERM"
    );
    assert_eq!(batches::counts(&env.pool, run_id).await.unwrap().applied, 0);
    resume::cancel(&env.pool, run_id, "alice").await.unwrap();
    assert_eq!(
        finish_within(driver, 30).await,
        Finish::Stopped(backfill_shared::control::runs::RunState::Cancelled)
    );
    env.cleanup().await;
}

/// A broker that refuses the topology for good (the batch queue declared by
/// someone else as a classic queue): neither side reconnects for minutes. The
/// worker stops with the refusal and what to fix; the coordinator fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_permanent_broker_refusal_is_not_retried() {
    let env = TestEnv::new(0.01).await;
    let (conn, channel, topology) = {
        let conn = backfill_shared::services::rabbit(&env.config, "test")
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let topology = backfill_shared::topology::Topology::new(&env.config.namespace);
        (conn, channel, topology)
    };
    channel
        .queue_declare(
            topology.batches.as_str().into(),
            lapin::options::QueueDeclareOptions::durable(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();

    let worker = backfill_worker::Worker::connect(
        env.config.clone(),
        backfill_worker::WorkerOptions::default(),
    )
    .await
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), worker.run(stop))
        .await
        .expect("the worker gives up on a refusal instead of reconnecting");
    let error = ended.unwrap_err().to_string();
    assert!(
        error.contains("PRECONDITION_FAILED") && error.contains("reconnecting cannot fix this"),
        "{error}"
    );

    let text = env.brief(4, 2).await;
    let (run_id, ..) = env.record_run(&text).await;
    let started = std::time::Instant::now();
    let driven = tokio::time::timeout(Duration::from_secs(60), env.drive_in_background(run_id))
        .await
        .expect("the coordinator gives up on a refusal instead of reconnecting")
        .unwrap();
    let e = match driven {
        Ok(finish) => panic!("the run was driven: {finish:?}"),
        Err(e) => e,
    };
    assert!(!e.is_transient(), "{e}");
    assert_eq!(e.exit_code(), 1, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let _ = conn.close(200, "test".into()).await;
    env.cleanup().await;
}
