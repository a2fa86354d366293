//! A staging-swap beside a live table: the daily pipeline keeps writing to the
//! target while the run builds its copy. Cutover carries every write outside
//! the scope into the table it swaps in, refuses (naming the key) a write
//! inside the scope unless the operator accepts the live value, and a rollback
//! after cutover carries the writes made since back with the old table —
//! refusing, unless `--overwrite-newer`, when one is inside the scope.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::CliError;
use backfill_coordinator::lifecycle::cutover;
use backfill_coordinator::lifecycle::rollback::{self, RollbackOptions};
use backfill_coordinator::run::Finish;
use backfill_tests::TestEnv;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const LOCK: Duration = Duration::from_secs(5);
/// The scope's end: orders from here on are outside it.
const END: i64 = 30_001;

/// The demo's brief as a slowed staging-swap over the orders below [`END`].
async fn swap_brief(env: &TestEnv) -> String {
    built_beside(env, "staging-swap").await
}

/// The same with `strategy` (one that builds a table beside the target).
async fn built_beside(env: &TestEnv, strategy: &str) -> String {
    let text = env.slow_brief(8, 2, 0.3).await.replace(
        "strategy = \"merge\"",
        &format!("strategy = \"{strategy}\""),
    );
    // Half the orders: the demo's expected row count does not hold.
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("expected_rows"))
        .map(|l| format!("{l}\n"))
        .collect();
    let start = text.find("batch_by = ").unwrap();
    let end = start + text[start..].find('\n').unwrap();
    format!(
        "{}batch_by = {{ column = \"o_orderkey\", start = 1, end = {END}, step = 3750 }}{}",
        &text[..start],
        &text[end..]
    )
}

/// A swap run of [`swap_brief`], applied, validated and approved.
async fn approved_swap(env: &TestEnv) -> uuid::Uuid {
    let (run_id, ..) = env.record_run(&swap_brief(env).await).await;
    assert_eq!(env.run_to_end(run_id, 2).await, Finish::Applied);
    env.validate_and_approve(run_id).await;
    run_id
}

async fn exec(env: &TestEnv, sql: &str) -> u64 {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&env.pool)
        .await
        .unwrap()
        .rows_affected()
}

/// The pipeline outside the scope, until `stop`: updates, inserts and deletes.
async fn pipeline(pool: sqlx::PgPool, stop: Arc<AtomicBool>) -> u64 {
    let mut round: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        for sql in [
            "UPDATE tpch.order_revenue SET line_count = line_count + 100
              WHERE o_orderkey = (SELECT min(o_orderkey) FROM tpch.order_revenue WHERE o_orderkey >= 30001 + $1 * 7)",
            "INSERT INTO tpch.order_revenue
             SELECT $1 + 70000, o_orderdate, o_custkey, gross, net_revenue, line_count
               FROM tpch.order_revenue WHERE o_orderkey >= 30001 ORDER BY o_orderkey LIMIT 1",
            "DELETE FROM tpch.order_revenue
              WHERE o_orderkey = (SELECT max(o_orderkey) FROM tpch.order_revenue WHERE o_orderkey BETWEEN 40000 AND 60000)",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(round)
                .execute(&pool)
                .await
                .unwrap();
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    u64::try_from(round).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swap_carries_the_live_tables_writes_both_ways() {
    carries_both_ways("staging-swap").await;
}

/// A parallel version that cuts over is a swap too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parallel_version_cut_over_carries_the_live_tables_writes_both_ways() {
    carries_both_ways("parallel-version").await;
}

async fn carries_both_ways(strategy: &str) {
    let env = TestEnv::new(0.01).await;
    env.keep_pre_run_copy().await;
    let (run_id, ..) = env.record_run(&built_beside(&env, strategy).await).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(pipeline(env.pool.clone(), Arc::clone(&stop)));
    assert_eq!(env.run_to_end(run_id, 2).await, Finish::Applied);
    env.validate_and_approve(run_id).await;
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.await.unwrap();
    assert!(rounds > 10, "the pipeline wrote only {rounds} rounds");
    // What the live table holds outside the scope when cutover begins.
    exec(
        &env,
        &format!("CREATE TABLE tpch.live_out AS SELECT * FROM tpch.order_revenue WHERE o_orderkey >= {END}"),
    )
    .await;

    let report = cutover::cutover(&env.pool, run_id, "alice", LOCK)
        .await
        .unwrap();
    println!("{}", report.render());
    assert!(report.live_writes_carried >= rounds, "{report:?}");
    let out = format!("o_orderkey >= {END}");
    assert_eq!(
        env.differing_rows("tpch.order_revenue", "tpch.live_out", &out)
            .await,
        0,
        "a write to the live table during the build is not in the table swapped in"
    );
    // Inside the scope: the backfill's rows, as an independent recomputation has them.
    let fixed = "(SELECT o.o_orderkey, o.o_orderdate, o.o_custkey,
                 sum(l.l_extendedprice)::numeric(18,2) AS gross,
                 sum(CASE WHEN l.l_returnflag = 'R' THEN 0 ELSE l.l_extendedprice * (1 - l.l_discount) END)::numeric(18,2) AS net_revenue,
                 count(*)::integer AS line_count
            FROM tpch.orders o JOIN tpch.lineitem l ON l.l_orderkey = o.o_orderkey GROUP BY 1, 2, 3) f";
    assert_eq!(
        env.differing_rows("tpch.order_revenue", fixed, &format!("o_orderkey < {END}"))
            .await,
        0
    );

    // Written since cutover: outside the scope they go back with the old
    // table; inside, rollback refuses until --overwrite-newer.
    exec(&env, "UPDATE tpch.order_revenue SET line_count = 999 WHERE o_orderkey = (SELECT max(o_orderkey) FROM tpch.order_revenue)").await;
    exec(&env, "INSERT INTO tpch.order_revenue SELECT 90001, o_orderdate, o_custkey, gross, net_revenue, line_count FROM tpch.order_revenue WHERE o_orderkey = 1").await;
    exec(
        &env,
        "UPDATE tpch.order_revenue SET line_count = 555 WHERE o_orderkey = 7",
    )
    .await;
    let err = rollback::rollback(&env.pool, run_id, "alice", RollbackOptions::default())
        .await
        .unwrap_err();
    let CliError::Halted(message) = &err else {
        panic!("{err:?}")
    };
    assert!(
        message.contains("(7)") && message.contains("--overwrite-newer"),
        "{message}"
    );
    exec(
        &env,
        &format!("CREATE TABLE tpch.live_out_2 AS SELECT * FROM tpch.order_revenue WHERE o_orderkey >= {END}"),
    )
    .await;
    let report = env.rollback_overwriting(run_id).await;
    assert!(
        report.swapped_back && report.live_writes_carried >= 2,
        "{report:?}"
    );
    assert_eq!(
        env.differing_rows("tpch.order_revenue", "tpch.live_out_2", &out)
            .await,
        0
    );
    assert_eq!(
        env.differing_rows(
            "tpch.order_revenue",
            "tpch.pre_run",
            &format!("o_orderkey < {END}")
        )
        .await,
        0,
        "inside the scope the table is not as before the run"
    );
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'bf_capture_%' AND NOT tgisinternal",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "capture triggers left behind");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_write_inside_the_scope_is_refused_unless_accepted() {
    let env = TestEnv::new(0.01).await;
    let run_id = approved_swap(&env).await;
    // After its batch ran, the pipeline rewrites an order inside the scope.
    assert_eq!(
        exec(
            &env,
            "UPDATE tpch.order_revenue SET line_count = 777 WHERE o_orderkey = 7"
        )
        .await,
        1
    );
    let err = cutover::cutover(&env.pool, run_id, "alice", LOCK)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    assert!(
        err.to_string().contains("(7)") && err.to_string().contains("--accept-live-changes"),
        "{err}"
    );
    let kept: i32 =
        sqlx::query_scalar("SELECT line_count FROM tpch.order_revenue WHERE o_orderkey = 7")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(kept, 777, "a refused cutover changed the live table");
    cutover::cutover_with(
        &env.pool,
        run_id,
        "alice",
        LOCK,
        cutover::Accepting {
            live_changes: Some("the pipeline's value is newer"),
            ..cutover::Accepting::default()
        },
    )
    .await
    .unwrap();
    let now: i32 =
        sqlx::query_scalar("SELECT line_count FROM tpch.order_revenue WHERE o_orderkey = 7")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(now, 777, "the accepted live value was not kept");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_built_table_changed_outside_the_scope_is_not_swapped_in() {
    let env = TestEnv::new(0.01).await;
    let run_id = approved_swap(&env).await;
    // After approval, someone zeroes and deletes rows of the built table
    // outside the scope, which validation never looked at.
    let side: String = sqlx::query_scalar("SELECT side_table FROM backfill.runs WHERE run_id = $1")
        .bind(run_id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let zeroed = exec(
        &env,
        &format!("UPDATE {side} SET net_revenue = 0 WHERE o_orderkey BETWEEN 40000 AND 40100"),
    )
    .await;
    let deleted = exec(
        &env,
        &format!("DELETE FROM {side} WHERE o_orderkey BETWEEN 50000 AND 50100"),
    )
    .await;
    assert!(zeroed > 0 && deleted > 0);
    exec(
        &env,
        "CREATE TABLE tpch.live_before AS SELECT * FROM tpch.order_revenue",
    )
    .await;
    let err = cutover::cutover(&env.pool, run_id, "alice", LOCK)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("{} row(s)", zeroed * 2 + deleted))
            && message.contains("outside the scope"),
        "{message}"
    );
    assert_eq!(
        env.differing_rows("tpch.order_revenue", "tpch.live_before", "true")
            .await,
        0,
        "a refused cutover changed the live table"
    );
    env.cleanup().await;
}
