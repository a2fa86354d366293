//! A privacy erasure and a backfill: a customer erased from the source before
//! the run is removed from the target by the run, another is erased from the
//! source and the target after it. With `rollback.erased` naming the erased
//! keys, neither comes back — not by rollback, not by `--overwrite-newer` —
//! `backfill forget` removes them from the before-images, and the run log
//! holds no value of theirs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::CliError;
use backfill_coordinator::lifecycle::forget;
use backfill_coordinator::lifecycle::rollback::{self, RollbackOptions};
use backfill_coordinator::run::Finish;
use backfill_tests::TestEnv;

async fn count(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn exec(env: &TestEnv, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&env.pool)
        .await
        .unwrap();
}

/// Erases customer `c` from the source (and, with `target`, the target),
/// recording the keys in `privacy.erasures`.
async fn erase(env: &TestEnv, c: i64, target: bool) {
    exec(
        env,
        &format!(
            "INSERT INTO privacy.erasures SELECT o_orderkey FROM tpch.orders WHERE o_custkey = {c};
             DELETE FROM tpch.lineitem WHERE l_orderkey IN (SELECT o_orderkey FROM tpch.orders WHERE o_custkey = {c});
             DELETE FROM tpch.orders WHERE o_custkey = {c};
             {}",
            if target {
                format!("DELETE FROM tpch.order_revenue WHERE o_custkey = {c};")
            } else {
                String::new()
            }
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erased_rows_never_come_back() {
    let env = TestEnv::new(0.01).await;
    env.keep_pre_run_copy().await;
    exec(
        &env,
        "CREATE SCHEMA privacy; CREATE TABLE privacy.erasures (o_orderkey bigint PRIMARY KEY)",
    )
    .await;
    // Two customers with several orders each.
    let customers: Vec<i64> = sqlx::query_scalar(
        "SELECT o_custkey::bigint FROM tpch.orders GROUP BY 1 HAVING count(*) BETWEEN 5 AND 12 ORDER BY 1 LIMIT 2",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let (before, after) = (customers[0], customers[1]);
    erase(&env, before, false).await;
    let text = env.brief(20, 2).await.replace(
        "[rollback]\n",
        "[rollback]\nerased = \"SELECT o_orderkey FROM privacy.erasures\"\n",
    );
    assert!(text.contains("erased = "), "{text}");
    let (run_id, ..) = env.record_run(&text).await;
    assert_eq!(env.run_to_end(run_id, 2).await, Finish::Applied);
    let erased_in_target = "SELECT count(*) FROM tpch.order_revenue WHERE o_orderkey IN (SELECT o_orderkey FROM privacy.erasures)";
    assert_eq!(
        count(&env, erased_in_target).await,
        0,
        "the run kept an erased order"
    );
    erase(&env, after, true).await;

    // Rollback stops at the rows erased from the target since (written since
    // the run), and puts back none of the erased rows the run removed.
    let err = rollback::rollback(&env.pool, run_id, "alice", RollbackOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, CliError::Halted(_)), "{err}");
    assert_eq!(
        count(&env, erased_in_target).await,
        0,
        "rollback restored an erased order"
    );
    // Even forced, it does not restore them.
    let report = env.rollback_overwriting(run_id).await;
    assert!(report.erased_not_restored > 0, "{report:?}");
    assert_eq!(
        count(&env, erased_in_target).await,
        0,
        "--overwrite-newer restored an erased order"
    );
    // Every other row is as it was before the run.
    let others = "o_orderkey NOT IN (SELECT o_orderkey FROM privacy.erasures)";
    assert_eq!(
        env.differing_rows("tpch.order_revenue", "tpch.pre_run", others)
            .await,
        0
    );

    // The before-images still hold the erased rows until forget removes them.
    let image: String =
        sqlx::query_scalar("SELECT image_table FROM backfill.runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let erased_in_images = format!(
        "SELECT count(*) FROM {image} WHERE o_orderkey IN (SELECT o_orderkey FROM privacy.erasures)"
    );
    assert!(count(&env, &erased_in_images).await > 0);
    let forgotten = forget::forget(&env.pool, run_id, "alice", &[])
        .await
        .unwrap();
    println!("{}", forgotten.render());
    assert_eq!(count(&env, &erased_in_images).await, 0);
    // One key by hand, from the CLI.
    let one: i64 = count(
        &env,
        &format!("SELECT min(o_orderkey)::bigint FROM {image}"),
    )
    .await;
    let (code, stdout, stderr) = env
        .cli(&["forget", &run_id.to_string(), "--key", &one.to_string()])
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("forgot"), "{stdout}");
    assert_eq!(
        count(
            &env,
            &format!("SELECT count(*) FROM {image} WHERE o_orderkey = {one}")
        )
        .await,
        0
    );
    // The run log names no erased row's values: only keys and counts.
    assert_eq!(
        count(
            &env,
            &format!(
                "SELECT count(*) FROM backfill.run_log WHERE run_id = '{run_id}'
                   AND (jsonb_path_exists(detail, '$.conflicts[*].now') OR jsonb_path_exists(detail, '$.conflicts[*].before'))"
            )
        )
        .await,
        0
    );
    env.cleanup().await;
}
