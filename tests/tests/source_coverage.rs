//! Source coverage: where history was purged from the source, a brief that
//! would remove the target's rows there is refused by `plan` with the ranges,
//! accepted with `scope.accept_empty_source` (the run then removes exactly
//! those rows), and halted by the unmatched-rows guard when it runs without
//! the acceptance. A source that fails on any batch is refused by `plan`,
//! which runs it on every batch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::plan;
use backfill_coordinator::run::Finish;
use backfill_shared::brief::Brief;
use backfill_shared::control::batches;
use backfill_tests::{TestEnv, in_scope, ship_revenue};

const PURGED: &str = "l_shipdate >= '1993-01-01' AND l_shipdate < '1994-01-01'";

/// The ship-revenue brief reading line items whose 1993 was purged.
fn purged_brief(on_missing: &str) -> String {
    ship_revenue::brief("merge", on_missing, "")
        .replace("FROM tpch.lineitem", "FROM tpch.lineitem_kept")
}

/// A test world with `tpch.ship_revenue` and `tpch.lineitem_kept`: the line
/// items with 1993 purged.
async fn purged_env() -> TestEnv {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE tpch.lineitem_kept AS SELECT * FROM tpch.lineitem WHERE NOT ({PURGED})"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    env
}

fn accepting(text: &str) -> String {
    in_scope(text, "accept_empty_source = [\"1993-01-01..1994-01-01\"]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purged_source_range_is_refused_then_accepted_and_removed_exactly() {
    let env = purged_env().await;

    let text = purged_brief("delete");
    let refused = env.plan_refused(&text).await;
    assert!(
        refused.contains("in 1 range(s): 1993-01-01..1994-01-01")
            && refused.contains("scope.accept_empty_source = [\"1993-01-01..1994-01-01\"]"),
        "{refused}"
    );
    // Accepted, a brief that keeps unmatched rows plans, and the plan reports the gap.
    let (kept, ..) = plan::plan(
        &env.pool,
        &Brief::parse(&accepting(&purged_brief("keep"))).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        kept.coverage.gaps,
        [("1993-01-01".to_owned(), "1994-01-01".to_owned())]
    );
    assert_eq!(kept.coverage.measured_batches, 84);
    assert!(
        kept.render().contains("yields NOTHING"),
        "{}",
        kept.render()
    );

    let accepted = accepting(&text);
    let (planned, ..) = plan::plan(&env.pool, &Brief::parse(&accepted).unwrap())
        .await
        .unwrap();
    assert_eq!(planned.coverage.accepted, 1);
    let (run_id, ..) = env.record_run(&accepted).await;
    assert_eq!(env.run_to_end(run_id, 2).await, Finish::Applied);
    let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM tpch.ship_revenue WHERE {PURGED}"
    )))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "the purged year's rows are removed");
    assert_eq!(
        env.ship_revenue_changes(&format!("NOT ({PURGED})")).await,
        0,
        "nothing else changed"
    );
    // The ledger says which batches found the source empty, and that it was accepted.
    let all: Vec<u32> = (0..84).collect();
    let applied = batches::applied_among(&env.pool, run_id, &all)
        .await
        .unwrap();
    let empty: Vec<u32> = applied
        .iter()
        .filter(|b| b.checks.empty_source && b.checks.empty_source_accepted)
        .map(|b| b.batch_no)
        .collect();
    assert_eq!(empty, (12..24).collect::<Vec<u32>>());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_into_a_purged_range_halts_and_names_the_acceptance() {
    let env = purged_env().await;
    // Recorded without the plan's refusal, as an old coordinator would.
    let (run_id, ..) = env.record_run(&purged_brief("delete")).await;
    let Finish::Halted(reason) = env.run_to_end(run_id, 1).await else {
        panic!("the run must halt at the purged year")
    };
    assert!(
        reason.contains("batch 12") && reason.contains("scope.accept_empty_source"),
        "{reason}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_failing_on_one_batch_is_refused_by_plan_with_the_batch() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    let text = ship_revenue::brief("merge", "delete", "").replace(
        "l_shipdate < $2",
        "l_shipdate < $2 AND 1 / (CASE WHEN l_shipdate >= '1995-03-01' AND l_shipdate < '1995-04-01' THEN 0 ELSE 1 END) = 1",
    );
    let refused = env.plan_refused(&text).await;
    assert!(
        refused.contains("scope.source fails on batch [1995-03-01, 1995-04-01)")
            && refused.contains("division by zero"),
        "{refused}"
    );
    env.cleanup().await;
}
