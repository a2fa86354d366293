//! The four write strategies, each run on TPC-H, checked against an independent
//! recomputation, then rolled back to exactly the pre-run table; the approval
//! gate; cutover with dependent views; rollback after a later run; cleanup.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::demo::{self};
use backfill_coordinator::lifecycle::rollback::RollbackOptions;
use backfill_coordinator::lifecycle::{approve, cleanup, cutover, rollback};
use backfill_coordinator::run::Finish;
use backfill_coordinator::validate;
use backfill_shared::control::runs::{self, RunState};
use backfill_tests::{SCHEMA, TestEnv};
use std::time::Duration;
use uuid::Uuid;

const LOCK: Duration = Duration::from_secs(5);

async fn run_strategy(env: &TestEnv, strategy: &str) -> Uuid {
    let text = env.brief(12, 4).await.replace(
        "strategy = \"merge\"",
        &format!("strategy = \"{strategy}\""),
    );
    let (run_id, ..) = env.record_run(&text).await;
    let finish = env.run_to_end(run_id, 2).await;
    assert_eq!(finish, Finish::Applied, "{strategy}");
    assert!(env.not_applied_exactly_once(run_id).await.is_empty());
    run_id
}

async fn approve_and_cut_over(env: &TestEnv, run_id: Uuid) -> cutover::CutoverReport {
    env.validate_and_approve(run_id).await;
    cutover::cutover(&env.pool, run_id, "alice", LOCK)
        .await
        .unwrap()
}

async fn assert_rolled_back_exactly(env: &TestEnv, run_id: Uuid, strategy: &str) {
    rollback::rollback(&env.pool, run_id, "alice", RollbackOptions::default())
        .await
        .unwrap();
    assert_eq!(
        env.differs_from_pre_run().await,
        (0, true),
        "{strategy}: rollback is not exact"
    );
    assert_eq!(
        runs::state(&env.pool, run_id).await.unwrap(),
        RunState::RolledBack
    );
}

async fn table_exists(env: &TestEnv, name: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_strategies_match_the_recomputation_and_roll_back_exactly() {
    for strategy in ["merge", "partition-overwrite"] {
        let env = TestEnv::new(0.02).await;
        env.keep_pre_run_copy().await;
        let comment = |env: &TestEnv| {
            let pool = env.pool.clone();
            async move {
                sqlx::query_scalar::<_, Option<String>>(
                    "SELECT obj_description('tpch.order_revenue'::regclass, 'pg_class')",
                )
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        };
        sqlx::query("COMMENT ON TABLE tpch.order_revenue IS 'revenue per order'")
            .execute(&env.pool)
            .await
            .unwrap();
        let run_id = run_strategy(&env, strategy).await;
        assert_eq!(
            env.differences().await,
            0,
            "{strategy}: target differs from the recomputation"
        );
        // The maintenance marker is gone once every batch is in, and the comment is back.
        assert_eq!(comment(&env).await.as_deref(), Some("revenue per order"));
        let markers: i64 = sqlx::query_scalar("SELECT count(*) FROM backfill.maintenance")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        assert_eq!(markers, 0);
        let report = approve_and_cut_over(&env, run_id).await;
        assert_eq!(
            report.refreshed_materialized_views,
            ["tpch.monthly_revenue"]
        );
        assert_rolled_back_exactly(&env, run_id, strategy).await;
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_target_is_marked_under_maintenance_while_written() {
    let env = TestEnv::new(0.01).await;
    let (run_id, ..) = env.record_run(&env.slow_brief(4, 1, 0.2).await).await;
    let (marked_run, owner): (Uuid, String) = sqlx::query_as(
        "SELECT run_id, owner FROM backfill.maintenance WHERE target = 'tpch.order_revenue'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((marked_run, owner.as_str()), (run_id, "alice"));
    let comment: String =
        sqlx::query_scalar("SELECT obj_description('tpch.order_revenue'::regclass, 'pg_class')")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(
        comment.starts_with("UNDER MAINTENANCE")
            && comment.contains(&run_id.to_string())
            && comment.contains("Refunds")
    );
    let workers = env.workers(1).await;
    assert_eq!(
        env.drive_in_background(run_id).await.unwrap().unwrap(),
        Finish::Applied
    );
    workers.stop().await;
    let comment: Option<String> =
        sqlx::query_scalar("SELECT obj_description('tpch.order_revenue'::regclass, 'pg_class')")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(comment, None, "the previous (absent) comment is restored");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_version_builds_beside_the_target_and_rollback_drops_it() {
    let env = TestEnv::new(0.02).await;
    env.keep_pre_run_copy().await;
    let run_id = run_strategy(&env, "parallel-version").await;
    let new_table = "order_revenue__order_revenue_refunds";
    assert_eq!(
        demo::differences_in(&env.pool, SCHEMA, new_table)
            .await
            .unwrap(),
        0,
        "the new table differs from the recomputation"
    );
    assert_eq!(
        env.differs_from_pre_run().await,
        (0, true),
        "the target must stay as it is"
    );
    assert_rolled_back_exactly(&env, run_id, "parallel-version").await;
    assert!(
        !table_exists(&env, &format!("tpch.{new_table}")).await,
        "rollback drops the new table"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staging_swap_cuts_over_atomically_with_dependent_views_and_rolls_back() {
    let env = TestEnv::new(0.02).await;
    sqlx::raw_sql(
        "CREATE VIEW tpch.revenue_view AS SELECT o_orderkey, net_revenue FROM tpch.order_revenue;
         CREATE VIEW tpch.revenue_total AS SELECT sum(net_revenue) AS total FROM tpch.revenue_view;
         CREATE UNIQUE INDEX monthly_revenue_month ON tpch.monthly_revenue (month);",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    env.keep_pre_run_copy().await;
    let total = |sql: &'static str| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let old_total = total("SELECT total::text FROM tpch.revenue_total").await;
    let run_id = run_strategy(&env, "staging-swap").await;
    assert_eq!(
        env.differs_from_pre_run().await,
        (0, true),
        "staging-swap must not touch the target before cutover"
    );
    let staging = runs::load(&env.pool, run_id)
        .await
        .unwrap()
        .side_table
        .unwrap();
    assert_eq!(
        demo::differences_in(&env.pool, SCHEMA, staging.split_once('.').unwrap().1)
            .await
            .unwrap(),
        0
    );
    let new_total: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT sum(net_revenue)::text FROM {staging}"
    )))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_ne!(old_total, new_total);

    // A reader hammering the view through the swap sees the old total or the new one, nothing else.
    let stop = tokio_util::sync::CancellationToken::new();
    let reader = {
        let (pool, stop) = (env.pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.is_cancelled() {
                let r =
                    sqlx::query_scalar::<_, String>("SELECT total::text FROM tpch.revenue_total")
                        .fetch_one(&pool)
                        .await;
                seen.push(r.map_err(|e| e.to_string()));
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.validate_and_approve(run_id).await;
    let report = cutover::cutover(&env.pool, run_id, "alice", LOCK)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    let seen = reader.await.unwrap();
    assert!(seen.len() > 5, "the reader barely ran: {}", seen.len());
    for r in &seen {
        match r {
            Ok(t) => assert!(
                *t == old_total || *t == new_total,
                "half-swapped total {t} (old {old_total}, new {new_total})"
            ),
            Err(e) => panic!("a reader saw an error during the swap: {e}"),
        }
    }
    assert!(
        seen.iter().any(|r| r.as_deref() == Ok(new_total.as_str())),
        "the reader never saw the new data"
    );

    // Views follow the swap; the materialized view was rebuilt with its index and refreshed.
    assert_eq!(env.differences().await, 0);
    assert_eq!(
        total("SELECT total::text FROM tpch.revenue_total").await,
        new_total
    );
    assert_eq!(
        total("SELECT sum(net_revenue)::text FROM tpch.monthly_revenue").await,
        new_total
    );
    assert!(
        table_exists(&env, "tpch.monthly_revenue_month").await,
        "the materialized view's index was lost"
    );
    let swapped = report.swapped.unwrap();
    assert_eq!(swapped.views, ["tpch.revenue_view"]);
    assert_eq!(swapped.materialized_views, ["tpch.monthly_revenue"]);

    assert_rolled_back_exactly(&env, run_id, "staging-swap").await;
    assert_eq!(
        total("SELECT total::text FROM tpch.revenue_total").await,
        old_total
    );
    assert_eq!(
        total("SELECT sum(net_revenue)::text FROM tpch.monthly_revenue").await,
        old_total
    );

    // Cleanup: refused within retain_days, then nothing of the run is left.
    let err = cleanup::cleanup(&env.pool, run_id, "alice", false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--now"), "{err}");
    cleanup::cleanup(&env.pool, run_id, "alice", true)
        .await
        .unwrap();
    let short = backfill_coordinator::lifecycle::short(run_id);
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class WHERE relname LIKE '%' || $1 || '%'",
    )
    .bind(&short)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(left.is_empty(), "objects of the run left behind: {left:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_approval_gate() {
    let env = TestEnv::new(0.01).await;
    let text = env.brief(4, 2).await;
    let (run_id, ..) = env.record_run(&text).await;
    // Still writing: cannot be approved.
    let err = approve::approve(&env.reviewer, run_id, Some("bob"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("still running"), "{err}");
    let workers = env.workers(1).await;
    assert_eq!(
        env.drive_in_background(run_id).await.unwrap().unwrap(),
        Finish::Applied
    );
    workers.stop().await;
    // Unapproved cutover is refused.
    let err = cutover::cutover(&env.pool, run_id, "alice", LOCK)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not approved"), "{err}");
    assert_eq!(err.exit_code(), 2);
    // Not validated: cannot be approved.
    let err = approve::approve(&env.reviewer, run_id, Some("bob"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("backfill validate {run_id}")),
        "{err}"
    );
    validate::validate(&env.pool, run_id).await.unwrap();
    // A name typed is checked against the login (the owner's own role is
    // refused in roles.rs); a stranger is refused too.
    let err = approve::approve(&env.reviewer, run_id, Some("alice"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("identity comes from the database login"),
        "{err}"
    );
    assert!(
        approve::approve(&env.reviewer, run_id, Some("mallory"))
            .await
            .is_err()
    );
    approve::approve(&env.reviewer, run_id, Some("bob"))
        .await
        .unwrap();
    let run = runs::load(&env.pool, run_id).await.unwrap();
    assert_eq!(
        (run.state, run.approved_by.as_deref()),
        (RunState::Approved, Some("bob"))
    );
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM backfill.run_log WHERE run_id = $1 AND event = 'run_approved' AND actor = 'bob'")
        .bind(run_id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(logged, 1);
    cutover::cutover(&env.pool, run_id, "alice", LOCK)
        .await
        .unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_refuses_after_a_later_run_unless_forced() {
    let env = TestEnv::new(0.01).await;
    env.keep_pre_run_copy().await;
    let first = run_strategy(&env, "merge").await;
    approve_and_cut_over(&env, first).await;
    let second = run_strategy(&env, "merge").await;
    let err = rollback::rollback(&env.pool, first, "alice", RollbackOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&second.to_string()),
        "the refusal names the later run: {err}"
    );
    assert_eq!(
        runs::state(&env.pool, first).await.unwrap(),
        RunState::CutOver
    );
    rollback::rollback(
        &env.pool,
        first,
        "alice",
        RollbackOptions {
            force: true,
            ..RollbackOptions::default()
        },
    )
    .await
    .unwrap();
    // The second run found nothing left to fix, so undoing the first restores the original.
    assert_eq!(env.differs_from_pre_run().await, (0, true));
    assert_eq!(env.logged(first, "rollback_forced").await, 1);
    env.cleanup().await;
}
