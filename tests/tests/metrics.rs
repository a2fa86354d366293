//! `backfill-worker --metrics-addr`: after a run, the endpoint serves parseable
//! Prometheus text whose counters match the run's ledger, and the probes answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::run::Finish;
use backfill_tests::{TestEnv, finish_within, http_get as get};
use std::collections::HashMap;
use std::time::Duration;

/// Every sample line as `name{labels}` → value; panics on a line that is not
/// a comment, a sample or the end marker.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            assert!(
                line.is_empty()
                    || line == "# EOF"
                    || line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line.starts_with("# UNIT "),
                "not a Prometheus comment: {line:?}"
            );
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line:?}"));
        assert!(
            name.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_'),
            "not a metric name: {line:?}"
        );
        samples.insert(name.to_owned(), value);
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_metrics_match_the_ledger() {
    let env = TestEnv::new(0.01).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = env.spawn_worker(&["--metrics-addr", &addr]);
    // Ready once it consumes and the warehouse answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(&addr).await.is_ok()
            && get(&addr, "/ready").await.0 == 200
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&addr, "/healthz").await.0, 200);
    assert_eq!(get(&addr, "/nothing").await.0, 404);

    let brief_text = env.brief(6, 2).await;
    let (run_id, _, plan) = env.record_run(&brief_text).await;
    assert_eq!(
        finish_within(env.drive_in_background(run_id), 120).await,
        Finish::Applied
    );
    let (applied, written): (i64, i64) = sqlx::query_as(
        "SELECT count(*), sum(rows_inserted + rows_updated + rows_deleted)::bigint
           FROM backfill.batches WHERE run_id = $1 AND state = 'applied'",
    )
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(applied, i64::try_from(plan.len()).unwrap());

    let (status, text) = get(&addr, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    let samples = parse(&text);
    let value = |name: &str| {
        *samples
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert_eq!(
        value("backfill_worker_batches_applied_total"),
        applied as f64
    );
    assert_eq!(value("backfill_worker_rows_written_total"), written as f64);
    assert_eq!(value("backfill_worker_batches_failed_total"), 0.0);
    assert_eq!(
        value("backfill_worker_apply_duration_seconds_count"),
        applied as f64
    );
    assert!(value("backfill_worker_apply_duration_seconds_sum") > 0.0);
    for name in [
        "backfill_worker_leases_lost_total",
        "backfill_worker_stale_commits_refused_total",
        "backfill_worker_throttled_seconds_total",
    ] {
        assert_eq!(value(name), 0.0, "{name}");
    }

    // Two batches published again (a coordinator that lost its confirms does
    // so): counted as skipped, not applied a second time.
    let skipped = "backfill_worker_batches_skipped_total{reason=\"already_applied\"}";
    assert_eq!(value(skipped), 0.0);
    let (_conn, channel, topology) = env.channel().await;
    for batch in &plan[..2] {
        backfill_tests::publish_batch(&channel, &topology, run_id, &brief_text, batch).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let samples = loop {
        let samples = parse(&get(&addr, "/metrics").await.1);
        if samples.get(skipped).copied() == Some(2.0) {
            break samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the redeliveries were not counted: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        samples["backfill_worker_batches_applied_total"], applied as f64,
        "a redelivered batch counted as applied again"
    );
    worker.start_kill().unwrap();
    let _ = worker.wait().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinator_gauges_follow_the_ledger() {
    use backfill_coordinator::run::{DriveOptions, RunMetrics};
    let env = TestEnv::new(0.01).await;
    let (run_id, _, plan) = env.record_run(&env.brief(5, 2).await).await;
    let metrics = std::sync::Arc::new(RunMetrics::default());
    let workers = env.workers(1).await;
    let driver = env.drive_with(
        run_id,
        DriveOptions {
            progress: false,
            metrics: Some(std::sync::Arc::clone(&metrics)),
            reconcile_every: Duration::from_millis(200),
            ..DriveOptions::default()
        },
    );
    assert_eq!(finish_within(driver, 120).await, Finish::Applied);
    workers.stop().await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics.registry()).unwrap();
    let samples = parse(&text);
    let written: i64 = sqlx::query_scalar(
        "SELECT sum(rows_inserted + rows_updated + rows_deleted)::bigint FROM backfill.batches WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let value = |name: &str| {
        *samples
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert_eq!(
        value("backfill_run_batches{state=\"applied\"}"),
        plan.len() as f64
    );
    assert_eq!(value("backfill_run_batches{state=\"pending\"}"), 0.0);
    assert_eq!(value("backfill_run_rows_written"), written as f64);
    assert_eq!(value("backfill_run_held{reason=\"throttled\"}"), 0.0);
    assert_eq!(
        value(&format!("backfill_run_driving{{run_id=\"{run_id}\"}}")),
        1.0
    );
    env.cleanup().await;
}
