//! `plan` estimates from the source run on sampled batches, not from the
//! planner's guess: the rows it predicts are the rows the run then writes, its
//! time comes with how it was made, and a target never analysed is said to be so
//! rather than to hold ~0 rows. A large run is recorded batch for batch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::{plan, status};
use backfill_shared::brief::Brief;
use backfill_tests::{TestEnv, ship_revenue};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_estimate_is_what_the_run_writes() {
    let env = TestEnv::new(0.01).await;
    let text = env.brief(20, 2).await;
    let brief = Brief::parse(&text).unwrap();
    let (planned, ..) = plan::plan(&env.pool, &brief).await.unwrap();
    let planned = planned.with_workers(3);
    let e = &planned.estimate;
    assert_eq!((e.sampled_batches, e.workers, e.batches_at_once), (5, 3, 2));
    assert!(e.seconds_per_batch > e.source_seconds_per_batch, "{e:?}");
    assert!(
        e.wall_seconds > 0.0 && e.method.contains("5 batches"),
        "{e:?}"
    );
    let json = serde_json::to_value(&planned).unwrap();
    assert_eq!(json["estimate"]["rows_total"], e.rows_total);

    let (run_id, ..) = env.record_run(&text).await;
    env.run_to_end(run_id, 2).await;
    let written = status::status(&env.pool, run_id)
        .await
        .unwrap()
        .batches
        .rows
        .source;
    let off = (e.rows_total - written).abs() as f64 / written as f64;
    assert!(
        off <= 0.25,
        "estimated {} rows, the run's source yielded {written}",
        e.rows_total
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_never_analysed_is_not_said_to_be_empty() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    sqlx::raw_sql(
        "CREATE TABLE tpch.ship_revenue_fresh (LIKE tpch.ship_revenue INCLUDING ALL)
             WITH (autovacuum_enabled = false);
         INSERT INTO tpch.ship_revenue_fresh SELECT * FROM tpch.ship_revenue;",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let text = ship_revenue::brief("merge", "delete", "").replace(
        "target = \"tpch.ship_revenue\"",
        "target = \"tpch.ship_revenue_fresh\"",
    );
    let (planned, ..) = plan::plan(&env.pool, &Brief::parse(&text).unwrap())
        .await
        .unwrap();
    assert_eq!(planned.target_rows, None);
    assert!(
        planned.render().contains("never analysed"),
        "{}",
        planned.render()
    );
    assert!(planned.estimate.rows_total > 0, "{:?}", planned.estimate);
    env.cleanup().await;
}

/// A run of 100,000 batches is recorded whole (by COPY): every batch once, with
/// the bounds the plan gives it, all pending, and its totals say so (the
/// benchmark records a million).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_run_is_recorded_batch_for_batch() {
    let env = TestEnv::new(0.01).await;
    let text = env.key_per_batch_brief(100_000).await;
    let (run_id, _, plan) = env.record_run(&text).await;
    assert_eq!(plan.len(), 100_000);
    let (rows, distinct, pending): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT batch_no), count(*) FILTER (WHERE state = 'pending')
           FROM backfill.batches WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((rows, distinct, pending), (100_000, 100_000, 100_000));
    // The totals `status` reads say the same without reading the rows.
    let counts = backfill_shared::control::batches::counts(&env.pool, run_id)
        .await
        .unwrap();
    assert_eq!((counts.pending, counts.total()), (100_000, 100_000));
    let bounds: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT batch_no, lo, hi FROM backfill.batches WHERE run_id = $1 ORDER BY batch_no",
    )
    .bind(run_id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    for ((no, lo, hi), planned) in bounds.iter().zip(&plan) {
        assert_eq!(
            (*no, lo.as_str(), hi.as_str()),
            (
                i32::try_from(planned.no).unwrap(),
                planned.lo.to_string().as_str(),
                planned.hi.to_string().as_str()
            )
        );
    }
    env.cleanup().await;
}

/// Bounds of a time column are shown with what they are: UTC instants of a
/// `timestamptz`, wall-clock values of a `timestamp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn time_bounds_are_shown_with_their_zone() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    let text = ship_revenue::brief("merge", "delete", "").replace(
        "start = \"1992-01-01\", end = \"1999-01-01\"",
        "start = \"1992-01-01 00:00:00\", end = \"1999-01-01 00:00:00\"",
    );
    assert!(text.contains("1992-01-01 00:00:00"), "the brief moved");
    let brief = Brief::parse(&text).unwrap();
    for (column_type, zone) in [("timestamptz", "UTC"), ("timestamp", "no time zone")] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE tpch.ship_revenue ALTER COLUMN l_shipdate TYPE {column_type}"
        )))
        .execute(&env.pool)
        .await
        .unwrap();
        let (planned, ..) = plan::plan(&env.pool, &brief).await.unwrap();
        assert_eq!(planned.bounds_zone, Some(zone));
        let shown = planned.render();
        assert!(
            shown.contains(&format!(
                "[1992-01-01 00:00:00, 1992-02-01 00:00:00) {zone}\n"
            )),
            "{shown}"
        );
    }
    // status (and the console's run page, which shows it) and the report say the same.
    let (run_id, ..) = env.record_run(&text).await;
    let now = status::status(&env.pool, run_id).await.unwrap();
    assert_eq!(now.bounds_zone, Some("no time zone"));
    let note = backfill_coordinator::report::gather(&env.pool, run_id)
        .await
        .unwrap()
        .markdown();
    assert!(note.contains("(exclusive), no time zone |"), "{note}");
    env.cleanup().await;
}
