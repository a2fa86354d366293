//! `limits.budget`: `plan` and `run` refuse an estimate past the budget unless
//! `--over-budget "why"` (logged); a run that passes its cap of rows or of
//! warehouse seconds halts at it, naming it, and an accepted override lets it
//! go on to the end; `status` shows the budget used, and no ETA while held.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::run::Finish;
use backfill_coordinator::{plan, resume};
use backfill_shared::brief::Brief;
use backfill_tests::{TestEnv, bin, in_scope, ship_revenue};
use tokio::process::Command;

/// The ship-revenue brief with `budget` as `limits.budget`.
fn with_budget(budget: &str) -> String {
    ship_revenue::brief("merge", "delete", "").replace(
        "max_in_flight = 1",
        &format!("max_in_flight = 1\nbudget = {budget}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_halts_at_each_cap_of_its_budget_and_goes_on_when_accepted() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    // Every row is wrong, so every batch rewrites its month (about 200 rows).
    sqlx::query("UPDATE tpch.ship_revenue SET revenue = 0")
        .execute(&env.pool)
        .await
        .unwrap();
    let text = with_budget("{ rows = 1000, batch_seconds = 3600 }");
    let (run_id, ..) = env.record_run(&text).await;
    let Finish::Halted(reason) = env.run_to_end(run_id, 1).await else {
        panic!("the run must halt at its row budget")
    };
    assert!(
        reason.contains("past limits.budget.rows = 1000") && reason.contains("--accept"),
        "{reason}"
    );
    let status = backfill_coordinator::status::status(&env.pool, run_id)
        .await
        .unwrap();
    assert!(
        status.batches.applied > 0 && (status.batches.applied as usize) < 84,
        "held part way: {status:?}"
    );
    let budget = status.budget.as_ref().expect("status shows the budget");
    assert!(budget.rows_written > 1000, "{budget:?}");
    assert!(
        status.render().contains("budget:   rows "),
        "{}",
        status.render()
    );
    // A held run has no ETA: it is not moving, and status says so.
    assert_eq!(
        (status.eta_seconds, status.eta_range_seconds),
        (None, None),
        "{status:?}"
    );
    assert_eq!(status.eta_withheld.as_deref(), Some("halted"));
    assert!(
        status.render().contains("eta:      none while halted"),
        "{}",
        status.render()
    );
    // Without a reason it stays held; with one it goes on to the end.
    assert!(
        resume::resume(&env.pool, run_id, "alice", None)
            .await
            .is_err()
    );
    resume::resume(
        &env.pool,
        run_id,
        "alice",
        Some("the correction touches more rows than estimated"),
    )
    .await
    .unwrap();
    // Resumed, it no longer says why it halted.
    let resumed = backfill_coordinator::status::status(&env.pool, run_id)
        .await
        .unwrap();
    assert_eq!(resumed.state, "running");
    assert_eq!(resumed.halt_reason, None, "{resumed:?}");
    assert!(
        !resumed.render().contains("halted:"),
        "{}",
        resumed.render()
    );
    assert_eq!(env.run_to_end(run_id, 1).await, Finish::Applied);
    assert_eq!(env.ship_revenue_wrong("true").await, 0);
    env.cleanup().await;

    // Warehouse seconds: a cap below what the batches spend.
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    let text = in_scope(
        &with_budget("{ batch_seconds = 1 }").replace(
            "GROUP BY 1, 2",
            "GROUP BY 1, 2 HAVING (SELECT pg_sleep(0.1)) IS NOT NULL",
        ),
        "volatile_ok = \"pg_sleep only slows each batch down\"",
    );
    let (run_id, ..) = env.record_run(&text).await;
    let Finish::Halted(reason) = env.run_to_end(run_id, 1).await else {
        panic!("the run must halt at its warehouse-time budget")
    };
    assert!(
        reason.contains("past limits.budget.batch_seconds = 1"),
        "{reason}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_estimate_past_the_budget_is_refused_unless_the_operator_says_why() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    let text = with_budget("{ rows = 100, duration = \"6h\" }");
    let brief = Brief::parse(&text).unwrap();
    let (planned, ..) = plan::plan(&env.pool, &brief).await.unwrap();
    let over = planned.over_budget();
    assert_eq!(over.len(), 1, "{over:?}");
    assert!(over[0].contains("past budget.rows = 100"), "{over:?}");
    assert!(
        planned.render().contains("budget:   OVER"),
        "{}",
        planned.render()
    );

    let dir = std::env::temp_dir().join(format!("bf-budget-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("budget.toml");
    std::fs::write(&path, &text).unwrap();
    let path = path.to_string_lossy().into_owned();
    let backfill = |args: Vec<String>| {
        let env = env.env();
        async move {
            Command::new(bin("backfill"))
                .args(args)
                .envs(env)
                .env("RUST_LOG", "warn")
                .output()
                .await
                .unwrap()
        }
    };
    let refused = backfill(vec!["plan".into(), path.clone()]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--over-budget"), "{stderr}");
    let run = backfill(vec![
        "run".into(),
        path.clone(),
        "--detach".into(),
        "--unannounced".into(),
        "a test of the budget".into(),
    ])
    .await;
    assert_eq!(
        run.status.code(),
        Some(2),
        "run refuses before recording anything"
    );
    let accepted = backfill(vec![
        "plan".into(),
        path,
        "--over-budget".into(),
        "a one-off correction of the whole history".into(),
    ])
    .await;
    assert_eq!(
        accepted.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM backfill.runs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0);
    env.cleanup().await;
}
