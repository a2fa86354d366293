//! The lint's limits on a brief (README, *Limits of a brief*) against the
//! warehouse: a batch with as many metrics and as many rewritten columns as a
//! brief may list applies, and PostgreSQL refuses the batch's statement well
//! past them (its 1,664 result columns), which the lint spares a run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_shared::brief::{Brief, limits};
use backfill_tests::{Images, TestEnv};
use backfill_worker::apply;

/// The most items the lint lets `field` list.
fn most(field: &str) -> usize {
    limits::ITEMS
        .iter()
        .find(|(f, _)| *f == field)
        .map(|(_, n)| *n)
        .unwrap()
}

/// Applies the first batch of a demo run whose brief `change` alters (past
/// the lint: the statement is built from the brief as changed); what the
/// worker said when it failed.
async fn first_batch(change: impl AsyncFnOnce(&TestEnv, &mut Brief)) -> Result<(), String> {
    let env = TestEnv::new(0.01).await;
    let (run_id, mut brief, plan) = env.record_run(&env.brief(2, 1).await).await;
    change(&env, &mut brief).await;
    let write = env.write_plan(run_id, &brief, false, Images::None).await;
    let work = env.claimed(&env.pool, run_id, &plan[0]).await;
    let applied = apply::apply(&env.pool, &write, work, "w")
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    env.cleanup().await;
    applied
}

/// `n` metrics, each the demo's one under another name.
async fn metrics(n: usize) -> Result<(), String> {
    first_batch(async |_, brief| {
        let metric = brief.validation.metrics[0].clone();
        brief.validation.metrics = (0..n)
            .map(|i| backfill_shared::brief::Metric {
                name: format!("m{i}"),
                ..metric.clone()
            })
            .collect();
    })
    .await
}

/// `n` rewritten columns, of a table with a key and those columns.
async fn columns(n: usize) -> Result<(), String> {
    first_batch(async |env, brief| {
        let columns: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        let typed =
            |f: &dyn Fn(&String) -> String| columns.iter().map(f).collect::<Vec<_>>().join(", ");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE tpch.wide (o_orderkey bigint PRIMARY KEY, {});
             INSERT INTO tpch.wide (o_orderkey) SELECT o_orderkey FROM tpch.orders;",
            typed(&|c| format!("{c} integer"))
        )))
        .execute(&env.pool)
        .await
        .unwrap();
        brief.scope.target = backfill_shared::sql::TableName::parse("tpch.wide").unwrap();
        brief.scope.source = format!(
            "SELECT o_orderkey, {} FROM tpch.orders WHERE o_orderkey >= $1 AND o_orderkey < $2",
            typed(&|c| format!("o_custkey::integer AS {c}"))
        );
        brief.scope.columns = columns.clone();
        brief.validation.metrics.clear();
        brief.validation.references.clear();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_at_the_limits_applies() {
    metrics(most("validation.metrics")).await.unwrap();
    columns(most("scope.columns")).await.unwrap();
}

/// Measured: 410 metrics apply and 420 do not; 800 columns apply and 1,000
/// do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warehouse_refuses_a_batch_well_past_them() {
    for failed in [metrics(420).await, columns(1000).await] {
        let message = failed.unwrap_err();
        assert!(message.contains("at most 1664 entries"), "{message}");
    }
}
