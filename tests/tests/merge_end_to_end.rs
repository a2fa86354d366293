//! A merge backfill on TPC-H with two workers, end to end over the real services:
//! the target equals an independent recomputation, rows outside the scope are
//! untouched, rows the source no longer yields are deleted, the grain holds, every
//! batch was applied exactly once, and the before-images account for every change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::run::{self, Finish};
use backfill_shared::brief::Brief;
use backfill_tests::TestEnv;
use std::time::Instant;

fn scale() -> f64 {
    std::env::var("BACKFILL_TEST_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.05)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn merge_backfill_matches_independent_recomputation() {
    let scale = scale();
    let env = TestEnv::new(scale).await;
    let pool = &env.pool;
    let text = env.brief(40, 6).await;
    let brief = Brief::parse(&text).unwrap();
    let end = match brief.scope.batch_by.end {
        backfill_shared::brief::Bound::Integer(e) => e,
        other => panic!("unexpected bound {other:?}"),
    };

    // Outside the scope (keys at or past `end`): must survive untouched.
    sqlx::query(
        "INSERT INTO tpch.order_revenue
         SELECT $1 + g, DATE '1995-06-01', 1, 10.00, 9.00, 1 FROM generate_series(0, 9) g",
    )
    .bind(end)
    .execute(pool)
    .await
    .unwrap();
    // Inside the scope but not yielded by the source: on_missing = delete removes them.
    // TPC-H order keys are sparse (8 of every 32), so 9..=31 mod 32 are never orders.
    let orphans = sqlx::query(
        "INSERT INTO tpch.order_revenue
         SELECT k, DATE '1995-06-01', 1, 1.00, 1.00, 1
           FROM generate_series(9, 32 * 20, 32) k",
    )
    .execute(pool)
    .await
    .unwrap()
    .rows_affected();
    let outside_scope = || async {
        sqlx::query_as::<_, (i64, String)>(
            "SELECT o_orderkey, row(o_orderkey, o_orderdate, o_custkey, gross, net_revenue, line_count)::text
               FROM tpch.order_revenue WHERE o_orderkey >= $1 ORDER BY 1",
        )
        .bind(end)
        .fetch_all(pool)
        .await
        .unwrap()
    };
    let outside_before = outside_scope().await;
    let wrong_before = env.differences().await;
    assert!(
        wrong_before > 100,
        "the buggy table should differ: {wrong_before}"
    );

    let workers = env.workers(2).await;
    let (_, batches, _) = backfill_coordinator::plan::plan(pool, &brief)
        .await
        .unwrap();
    let started = Instant::now();
    let run_id = run::create(pool, &text, &brief, &batches).await.unwrap();
    let finish = env.drive_in_background(run_id).await.unwrap().unwrap();
    let elapsed = started.elapsed();
    workers.stop().await;
    assert_eq!(finish, Finish::Applied);
    println!(
        "merge backfill at scale {scale}: {} batches in {:.2} s",
        batches.len(),
        elapsed.as_secs_f64()
    );

    // The target equals the recomputation (EXCEPT both ways), apart from rows outside the scope.
    let outside_after = outside_scope().await;
    assert_eq!(
        outside_after, outside_before,
        "rows outside the scope changed"
    );
    sqlx::query("DELETE FROM tpch.order_revenue WHERE o_orderkey >= $1")
        .bind(end)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(
        env.differences().await,
        0,
        "target differs from the recomputation"
    );

    // The grain: one row per key.
    let (rows, keys): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT o_orderkey) FROM tpch.order_revenue")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(rows, keys);

    // Exactly once, by the ledger and the run log.
    assert!(env.not_applied_exactly_once(run_id).await.is_empty());
    let status = backfill_coordinator::status::status(pool, run_id)
        .await
        .unwrap();
    assert_eq!(status.state, "applied");
    assert_eq!(
        status.batches.applied,
        i64::try_from(batches.len()).unwrap()
    );
    assert_eq!(status.batches.rows.deleted, i64::try_from(orphans).unwrap());
    assert!(status.batches.rows.updated > 100);

    // Before-images: one row per changed row, with the old values.
    let image = backfill_shared::control::runs::load(pool, run_id)
        .await
        .unwrap()
        .image_table
        .unwrap();
    let (u, d, i): (i64, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FILTER (WHERE bf_op = 'U'), count(*) FILTER (WHERE bf_op = 'D'), count(*) FILTER (WHERE bf_op = 'I') FROM {image}"
    )))
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (u, d, i),
        (
            status.batches.rows.updated,
            status.batches.rows.deleted,
            status.batches.rows.inserted
        )
    );
    let reverted: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {image} i JOIN tpch.order_revenue t USING (o_orderkey)
          WHERE i.bf_op = 'U' AND i.net_revenue = t.net_revenue"
    )))
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(reverted, 0, "before-images must hold the old values");
    env.cleanup().await;
}
