//! A whole backfill on a table PostgreSQL names only in double quotes: a
//! schema with a space, a table with a quote, a `;` and capitals, a column
//! with a space and capitals. The CLI
//! plans, runs, validates, approves, reports and rolls it back; the rows it
//! writes are the recomputation's, and rollback restores them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backfill_runs_on_a_table_whose_name_needs_quotes() {
    let env = TestEnv::new(0.01).await;
    env.keep_pre_run_copy().await;
    // The target moves; a view under its old name lets the checks read it.
    sqlx::raw_sql(
        r#"CREATE SCHEMA "Odd Schema";
           ALTER TABLE tpch.order_revenue SET SCHEMA "Odd Schema";
           ALTER TABLE "Odd Schema".order_revenue RENAME TO "Order ""Revenue""; v2";
           ALTER TABLE "Odd Schema"."Order ""Revenue""; v2" RENAME net_revenue TO "Net Revenue";
           CREATE VIEW tpch.order_revenue AS
               SELECT o_orderkey, o_orderdate, o_custkey, gross, "Net Revenue" AS net_revenue, line_count
                 FROM "Odd Schema"."Order ""Revenue""; v2";"#,
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let brief = env
        .brief(4, 2)
        .await
        .replace(
            "target = \"tpch.order_revenue\"",
            r#"target = '"Odd Schema"."Order ""Revenue""; v2"'"#,
        )
        .replace(r#""net_revenue""#, r#"'"Net Revenue"'"#)
        .replace(" AS net_revenue,", r#" AS "Net Revenue","#)
        // The metric on the target; the one downstream reads the
        // materialized view's own column.
        .replacen("sum(net_revenue)", r#"sum(\"Net Revenue\")"#, 1);
    for moved in [
        "Odd Schema",
        r#"'"Net Revenue"'"#,
        r#"AS "Net Revenue""#,
        r#"sum(\"Net"#,
        "relation = \"tpch.monthly_revenue\"\nexpr = \"sum(net_revenue)\"",
    ] {
        assert!(brief.contains(moved), "the demo brief moved: {moved}");
    }
    let dir = std::env::temp_dir().join(format!("bf-quoted-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("brief.toml");
    std::fs::write(&path, brief).unwrap();
    let path = path.to_str().unwrap();
    let ok = |(code, stdout, stderr): (Option<i32>, String, String)| {
        assert_eq!(code, Some(0), "{stdout}\n{stderr}");
        stdout
    };

    let plan = ok(env.cli(&["plan", path]).await);
    assert!(
        plan.contains(r#""Odd Schema"."Order ""Revenue""; v2""#),
        "the plan names the target as written: {plan}"
    );
    let workers = env.workers(2).await;
    let ran = ok(env
        .cli(&["run", path, "--unannounced", "quoted names"])
        .await);
    workers.stop().await;
    let run_id = ran.lines().next().unwrap().trim().to_owned();
    assert_eq!(env.differences().await, 0, "the run did not fix the table");
    ok(env.cli(&["validate", &run_id]).await);
    ok(env.cli_as_reviewer(&["approve", &run_id]).await);
    let report = ok(env.cli(&["report", &run_id]).await);
    assert!(report.contains("Odd Schema"), "{report}");
    ok(env.cli(&["rollback", &run_id]).await);
    assert_eq!(
        env.differs_from_pre_run().await,
        (0, true),
        "rollback did not restore the table"
    );
    ok(env.cli(&["cleanup", &run_id, "--now"]).await);
    env.cleanup().await;
}
