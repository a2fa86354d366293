//! A source must give the same rows when a batch runs again (a retry, a re-run
//! after a fix): the preflight refuses one that calls a volatile or
//! clock-reading function unless `scope.volatile_ok` says why, and `plan` runs
//! the source twice on its sampled batches and refuses, naming the batch and a
//! row, one whose rows differ between the two runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::plan;
use backfill_shared::brief::Brief;
use backfill_tests::{TestEnv, in_scope, ship_revenue};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// `text` with `scope.volatile_ok` set.
fn accepting(text: &str) -> String {
    in_scope(text, "volatile_ok = \"the value is multiplied by zero\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_calling_a_volatile_or_clock_function_is_refused_unless_acknowledged() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    let base = ship_revenue::brief("merge", "delete", "");
    for (call, named) in [
        ("random()", "random()"),
        ("extract(epoch FROM clock_timestamp())", "clock_timestamp()"),
        ("extract(epoch FROM now())", "now()"),
    ] {
        let text = base.replace(
            "count(*)::integer AS lines",
            &format!("(count(*) + 0 * {call})::integer AS lines"),
        );
        let refused = env.plan_refused(&text).await;
        assert!(
            refused.contains(named) && refused.contains("scope.volatile_ok"),
            "{call}: {refused}"
        );
        // Acknowledged, it plans; the rows repeat (the call is multiplied by zero).
        let brief = Brief::parse(&accepting(&text)).unwrap();
        let (planned, ..) = plan::plan(&env.pool, &brief).await.unwrap();
        assert_eq!(planned.repeatable.differing_rows, 0, "{call}");
        assert!(
            planned
                .render()
                .contains("volatile_ok: the value is multiplied by zero"),
            "{call}: {}",
            planned.render()
        );
    }
    // A repeatable source plans and says so.
    let brief = Brief::parse(&base).unwrap();
    let (planned, ..) = plan::plan(&env.pool, &brief).await.unwrap();
    assert!(planned.repeatable.sampled_batches > 1);
    assert!(
        planned.render().contains("yielded the same rows"),
        "{}",
        planned.render()
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_whose_rows_change_between_two_runs_is_refused_with_the_batch() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    sqlx::raw_sql(
        "CREATE TABLE tpch.rates (rate numeric NOT NULL); INSERT INTO tpch.rates VALUES (1);",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    // Another session keeps changing the rate the source reads.
    let stop = Arc::new(AtomicBool::new(false));
    let updater = {
        let (pool, stop) = (env.pool.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sqlx::query("UPDATE tpch.rates SET rate = rate + 1")
                    .execute(&pool)
                    .await
                    .unwrap();
            }
        })
    };
    let text = ship_revenue::brief("merge", "delete", "").replace(
        "sum(l_extendedprice * (1 - l_discount))::numeric(18,2) AS revenue",
        "(sum(l_extendedprice * (1 - l_discount)) * (SELECT rate FROM tpch.rates))::numeric(18,2) AS revenue",
    );
    let refused = env.plan_refused(&text).await;
    stop.store(true, Ordering::Relaxed);
    updater.await.unwrap();
    assert!(
        refused.contains("does not repeat itself")
            && refused.contains("on batch [1992-")
            && refused.contains("only the first run: ("),
        "{refused}"
    );
    // With nobody changing the rate, the same source repeats itself.
    let brief = Brief::parse(&text).unwrap();
    let (planned, ..) = plan::plan(&env.pool, &brief).await.unwrap();
    assert_eq!(planned.repeatable.differing_rows, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deterministic_source_repeats_itself_in_the_targets_types() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    sqlx::raw_sql(
        "ALTER TABLE tpch.ship_revenue ADD COLUMN first_at timestamptz, ADD COLUMN ratio numeric",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    // Each of these reads differently as text before and after the target's
    // types: 0 and 0.00 (numeric(18,2)), a timestamp and a timestamptz, a
    // float and a numeric.
    let text = ship_revenue::brief("merge", "delete", "")
        .replace(
            "columns = [\"revenue\", \"lines\"]",
            "columns = [\"revenue\", \"lines\", \"first_at\", \"ratio\"]",
        )
        .replace(
            "sum(l_extendedprice * (1 - l_discount))::numeric(18,2) AS revenue,
       count(*)::integer AS lines",
            "0 AS revenue,
       count(*)::integer AS lines,
       min(l_shipdate)::timestamp AS first_at,
       1e-5::float8 AS ratio",
        );
    assert!(text.contains("1e-5::float8"), "{text}");
    let brief = Brief::parse(&text).unwrap();
    let (planned, ..) = plan::plan(&env.pool, &brief).await.unwrap();
    assert!(planned.repeatable.sampled_batches > 1);
    assert_eq!(planned.repeatable.differing_rows, 0, "{}", planned.render());

    // random() still differs between the runs in the same types (planned
    // only because volatile_ok accepts it; refused without, by the preflight).
    let random = text.replace("1e-5::float8 AS ratio", "random() AS ratio");
    let refused = env.plan_refused(&random).await;
    assert!(refused.contains("random()"), "{refused}");
    let brief = Brief::parse(&accepting(&random)).unwrap();
    let (planned, ..) = plan::plan(&env.pool, &brief).await.unwrap();
    assert!(
        planned.repeatable.differing_rows > 0,
        "{}",
        planned.render()
    );
    env.cleanup().await;
}
