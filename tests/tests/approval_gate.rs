//! Approval means "validated": approve needs a passing validation (or failures
//! accepted by someone other than the owner), and cutover exposes exactly what
//! was validated — a staging table or a live target changed since is refused,
//! naming the range, and nothing is swapped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::CliError;
use backfill_coordinator::lifecycle::{approve, cutover};
use backfill_coordinator::run::Finish;
use backfill_coordinator::validate;
use backfill_shared::control::runs::{self, RunState};
use backfill_tests::{TestEnv, ship_revenue};
use std::time::Duration;

const LOCK: Duration = Duration::from_secs(5);

/// The ship-revenue brief with a yearly revenue metric `validate` reconciles.
fn brief(strategy: &str) -> String {
    ship_revenue::brief(strategy, "delete", "")
        .replace("risk = \"metric-changing\"", "risk = \"production-critical\"")
        .replace(
            "max_duplicate_keys = 0",
            "max_duplicate_keys = 0\n[[validation.metrics]]\nname = \"ship revenue\"\nexpr = \"sum(revenue)\"\nby = \"date_trunc('year', l_shipdate)\"",
        )
}

async fn applied_run(env: &TestEnv, strategy: &str) -> uuid::Uuid {
    let (run_id, ..) = env.record_run(&brief(strategy)).await;
    assert_eq!(env.run_to_end(run_id, 2).await, Finish::Applied);
    run_id
}

async fn zero_1996(env: &TestEnv, table: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET revenue = 0 WHERE l_shipdate >= '1996-01-01' AND l_shipdate < '1996-02-01'"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
}

/// The reviewer accepts the failed reconciliation of the latest validation.
async fn accept_restated(env: &TestEnv, run_id: uuid::Uuid) -> String {
    validate::accept(
        &env.reviewer,
        run_id,
        "metric reconciliation",
        "January 1996 is restated by finance on Monday",
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_staging_table_damaged_after_validation_is_not_swapped_in() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    let run_id = applied_run(&env, "staging-swap").await;
    let checks = validate::validate(&env.pool, run_id).await.unwrap();
    assert!(
        checks.iter().all(|c| c.passed),
        "{}",
        validate::render(&checks)
    );
    approve::approve(&env.reviewer, run_id, Some("bob"))
        .await
        .unwrap();

    // A stray job zeroes a month of the staging table after the approval.
    let side = runs::load(&env.pool, run_id)
        .await
        .unwrap()
        .side_table
        .unwrap();
    zero_1996(&env, &side).await;
    let err = cutover::cutover(&env.pool, run_id, "alice", LOCK)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    assert!(matches!(err, CliError::Halted(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("[1996-01-01, 1996-02-01)") && message.contains("their values changed"),
        "{message}"
    );
    assert!(!message.contains("[1996-02-01"), "{message}");
    // Nothing was swapped: the target is as it was, the run still approved.
    assert_eq!(env.ship_revenue_changes("true").await, 0);
    let run = runs::load(&env.pool, run_id).await.unwrap();
    assert_eq!((run.state, run.old_table), (RunState::Approved, None));
    assert_eq!(env.logged(run_id, "cutover_refused").await, 1);

    // Validated again, the damage fails reconciliation, in words people read.
    let checks = validate::validate(&env.pool, run_id).await.unwrap();
    let reconciliation = checks
        .iter()
        .find(|c| c.name == "metric reconciliation")
        .unwrap();
    assert!(!reconciliation.passed);
    assert!(
        reconciliation
            .summary
            .contains("ship revenue 1996-01-01: the batches say ")
            && reconciliation.summary.contains("the table holds ")
            && !reconciliation.summary.contains("Some("),
        "{}",
        reconciliation.summary
    );
    // ... so the reviewer cannot approve it again.
    let err = approve::approve(&env.reviewer, run_id, Some("bob"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("metric reconciliation"), "{err}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_validation_blocks_approval_until_another_person_accepts_it() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    let run_id = applied_run(&env, "merge").await;
    let err = approve::approve(&env.reviewer, run_id, Some("bob"))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string()
            .contains(&format!("backfill validate {run_id}")),
        "{err}"
    );

    // The daily pipeline zeroes a month of the live target before validation.
    zero_1996(&env, "tpch.ship_revenue").await;
    let checks = validate::validate(&env.pool, run_id).await.unwrap();
    assert!(checks.iter().any(|c| !c.passed));
    let err = approve::approve(&env.reviewer, run_id, Some("bob"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("--accept \"metric reconciliation\""),
        "{err}"
    );
    // A blank reason, or a check that did not fail, is refused. (The owner's
    // role cannot accept at all: roles.rs.)
    assert!(
        validate::accept(&env.reviewer, run_id, "metric reconciliation", " ")
            .await
            .is_err()
    );
    assert!(
        validate::accept(&env.reviewer, run_id, "uniqueness", "it passed")
            .await
            .is_err()
    );
    assert_eq!(accept_restated(&env, run_id).await, "bob");
    assert_eq!(env.logged(run_id, "check_accepted").await, 1);
    approve::approve(&env.reviewer, run_id, Some("bob"))
        .await
        .unwrap();
    let run = runs::load(&env.pool, run_id).await.unwrap();
    let approved: i64 =
        sqlx::query_scalar("SELECT max(id) FROM backfill.validation_runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(run.approved_validation, Some(approved));

    // The live target changes again after the approval: cutover names the range.
    sqlx::query(
        "UPDATE tpch.ship_revenue SET lines = lines + 1
          WHERE (l_shipdate, l_shipmode) = (SELECT l_shipdate, l_shipmode FROM tpch.ship_revenue
                                             WHERE l_shipdate >= '1994-07-01' ORDER BY 1, 2 LIMIT 1)",
    )
        .execute(&env.pool)
        .await
        .unwrap();
    let err = cutover::cutover(&env.pool, run_id, "alice", LOCK)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("[1994-07-01, 1994-08-01)"),
        "{err}"
    );
    assert_eq!(
        runs::state(&env.pool, run_id).await.unwrap(),
        RunState::Approved
    );
    // Validated and approved again, it cuts over: the reviewer's acceptance
    // holds for the same failure with the same figures (the change is not in
    // the metric), and the approval's own validation records it again.
    env.validate_and_approve(run_id).await;
    assert_eq!(env.logged(run_id, "check_accepted").await, 3);
    // A different failure is not covered: 1996 fails with other figures, and
    // the reviewer must accept those.
    sqlx::query("UPDATE tpch.ship_revenue SET revenue = 1 WHERE l_shipdate >= '1996-01-01' AND l_shipdate < '1996-01-02'")
        .execute(&env.pool)
        .await
        .unwrap();
    validate::validate(&env.pool, run_id).await.unwrap();
    let err = approve::approve(&env.reviewer, run_id, Some("bob"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("failed: metric reconciliation"),
        "{err}"
    );
    accept_restated(&env, run_id).await;
    approve::approve(&env.reviewer, run_id, Some("bob"))
        .await
        .unwrap();
    cutover::cutover(&env.pool, run_id, "alice", LOCK)
        .await
        .unwrap();
    assert_eq!(
        runs::state(&env.pool, run_id).await.unwrap(),
        RunState::CutOver
    );
    env.cleanup().await;
}

/// The fingerprint's rows per range against a count of each range, for a
/// brief whose `batch_by` is `batch_by` on `table`.
async fn fingerprint_matches_direct_counts(env: &TestEnv, table: &str, key: &str, batch_by: &str) {
    use backfill_coordinator::lifecycle::fingerprint;
    let text = ship_revenue::brief("merge", "delete", "")
        .replace("target = \"tpch.ship_revenue\"", &format!("target = \"{table}\""))
        .replace("key = [\"l_shipdate\", \"l_shipmode\"]", &format!("key = [\"{key}\"]"))
        .replace(
            "batch_by = { column = \"l_shipdate\", start = \"1992-01-01\", end = \"1999-01-01\", step = \"1 month\" }",
            batch_by,
        );
    let brief = backfill_shared::brief::Brief::parse(&text).unwrap();
    let target = brief.scope.target.clone();
    let mut conn = env.pool.acquire().await.unwrap();
    let print = fingerprint::measure(&mut conn, &brief, &target, None)
        .await
        .unwrap();
    // A json column has no hash function: rows are hashed by their text then.
    let has_json: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass AND atttypid = 'json'::regtype)",
    )
    .bind(table)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let expected_hash = if has_json {
        fingerprint::RowHash::Text
    } else {
        fingerprint::RowHash::Record
    };
    assert_eq!(print.hash, expected_hash, "{table}");
    let by = &brief.scope.batch_by.column;
    let ty = brief.scope.batch_by.kind().sql_type();
    let mut expected = Vec::new();
    for range in brief.scope.batch_by.plan().unwrap() {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE {by} >= $1::text::{ty} AND {by} < $2::text::{ty}"
        )))
        .bind(range.lo.to_string())
        .bind(range.hi.to_string())
        .fetch_one(&env.pool)
        .await
        .unwrap();
        if n > 0 {
            expected.push((range.no, n));
        }
    }
    let found: Vec<(u32, i64)> = print.ranges.iter().map(|r| (r.batch_no, r.rows)).collect();
    assert_eq!(found, expected, "{batch_by}");
    assert!(!found.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fingerprint_finds_each_rows_batch_whatever_the_step() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    sqlx::raw_sql(
        "CREATE TABLE tpch.shipped AS
           SELECT row_number() OVER (ORDER BY l_orderkey, l_linenumber) AS id,
                  l_shipdate + l_linenumber * interval '5 hours 7 minutes' AS shipped_at,
                  l_extendedprice AS revenue, l_quantity::integer AS lines,
                  json_build_object('mode', l_shipmode) AS detail
             FROM tpch.lineitem;
         ALTER TABLE tpch.shipped ADD PRIMARY KEY (id);",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    // Months: by the ranges' lower bounds; days, times and integers: by arithmetic.
    for (table, key, batch_by) in [
        (
            "tpch.ship_revenue",
            "l_shipdate",
            "batch_by = { column = \"l_shipdate\", start = \"1992-01-01\", end = \"1999-01-01\", step = \"1 month\" }",
        ),
        (
            "tpch.ship_revenue",
            "l_shipdate",
            "batch_by = { column = \"l_shipdate\", start = \"1992-01-03\", end = \"1998-12-30\", step = \"9 days\" }",
        ),
        (
            "tpch.shipped",
            "id",
            "batch_by = { column = \"shipped_at\", start = \"1992-01-01 06:30:00\", end = \"1993-07-01 00:00:00\", step = \"37 hours\" }",
        ),
        (
            "tpch.shipped",
            "id",
            "batch_by = { column = \"id\", start = 7, end = 60000, step = 977 }",
        ),
    ] {
        fingerprint_matches_direct_counts(&env, table, key, batch_by).await;
    }
    env.cleanup().await;
}
