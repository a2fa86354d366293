//! Backfills scoped by entity (`scope.where`): the run rewrites only the target
//! rows that match, every other row stays byte for byte, rollback restores the
//! matching rows, a source row outside the predicate fails its batch, and a
//! predicate the source's rows cannot answer is refused before the run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::lifecycle::rollback::{self, RollbackOptions};
use backfill_coordinator::plan;
use backfill_coordinator::run::Finish;
use backfill_shared::brief::Brief;
use backfill_tests::{TestEnv, ship_revenue};

const AIR: &str = "l_shipmode = 'AIR'";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entity_scoped_run_rewrites_only_its_rows() {
    for strategy in ["partition-overwrite", "merge", "staging-swap"] {
        let env = TestEnv::new(0.01).await;
        env.build_ship_revenue().await;
        // The AIR figures are wrong; the MAIL ones are too, but not this run's business.
        sqlx::raw_sql(
            "UPDATE tpch.ship_revenue SET revenue = revenue / 2 WHERE l_shipmode = 'AIR';
             UPDATE tpch.ship_revenue SET revenue = revenue * 2 WHERE l_shipmode = 'MAIL';",
        )
        .execute(&env.pool)
        .await
        .unwrap();
        env.copy_ship_revenue().await;
        assert!(env.ship_revenue_wrong(AIR).await > 0);
        let text = ship_revenue::owning(
            &ship_revenue::brief(strategy, "delete", &format!(" AND {AIR}")),
            AIR,
        );
        let brief = Brief::parse(&text).unwrap();
        let (planned, ..) = plan::plan(&env.pool, &brief).await.unwrap();
        assert_eq!(planned.unmatched.rows, 0, "{strategy}");
        let (run_id, ..) = env.record_run(&text).await;
        assert_eq!(
            env.run_to_end(run_id, 2).await,
            Finish::Applied,
            "{strategy}"
        );
        if strategy == "staging-swap" {
            backfill_coordinator::validate::validate(&env.pool, run_id)
                .await
                .unwrap();
            backfill_coordinator::lifecycle::approve::approve(&env.reviewer, run_id, Some("bob"))
                .await
                .unwrap();
            backfill_coordinator::lifecycle::cutover::cutover(
                &env.pool,
                run_id,
                "alice",
                std::time::Duration::from_secs(5),
            )
            .await
            .unwrap();
        }
        assert_eq!(
            env.ship_revenue_wrong(AIR).await,
            0,
            "{strategy}: the AIR rows differ from the recomputation"
        );
        assert_eq!(
            env.ship_revenue_changes(&format!("NOT ({AIR})")).await,
            0,
            "{strategy}: a row outside scope.where changed"
        );
        assert!(
            env.ship_revenue_wrong("l_shipmode = 'MAIL'").await > 0,
            "{strategy}: the MAIL rows were rewritten"
        );
        rollback::rollback(&env.pool, run_id, "alice", RollbackOptions::default())
            .await
            .unwrap();
        assert_eq!(env.ship_revenue_changes("true").await, 0, "{strategy}");
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_outside_the_predicate_are_refused() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    // The source yields every mode, the brief owns AIR only: a grain error.
    let text = ship_revenue::owning(&ship_revenue::brief("merge", "delete", ""), AIR);
    let (run_id, ..) = env.record_run(&text).await;
    let finish = env.run_to_end(run_id, 1).await;
    let Finish::Halted(reason) = finish else {
        panic!("{finish:?}")
    };
    assert!(reason.contains("scope.where does not match"), "{reason}");
    assert_eq!(env.ship_revenue_changes("true").await, 0);

    // A predicate on a column the source does not yield is refused by the preflight.
    let text = ship_revenue::owning(
        &ship_revenue::brief("merge", "delete", ""),
        "l_comment = 'x'",
    );
    let err = plan::plan(&env.pool, &Brief::parse(&text).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("scope.where"), "{err}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_predicate_that_escapes_matches_nothing_or_changes_is_refused() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    let brief = |filter: &str| {
        ship_revenue::owning(
            &ship_revenue::brief("merge", "delete", &format!(" AND {filter}")),
            filter,
        )
    };
    // An escape from the `AND (...)` it is spliced into is refused by the lint.
    for escape in [
        "false) OR (l_shipmode >= ''",
        "l_shipmode = 'AIR' -- the rest",
        "l_shipmode = 'AIR'); DELETE FROM tpch.ship_revenue; SELECT (1",
    ] {
        let text = ship_revenue::owning(&ship_revenue::brief("merge", "delete", ""), escape);
        let err = Brief::parse(&text).unwrap_err().to_string();
        assert!(err.contains("scope.where"), "{escape}: {err}");
    }
    // A predicate matching no row in the scope, and one that calls random().
    let refused = env.plan_refused(&brief("l_shipmode = 'AIRR'")).await;
    assert!(
        refused.contains("scope.where") && refused.contains("matches no row"),
        "{refused}"
    );
    let volatile = ship_revenue::owning(
        &ship_revenue::brief("merge", "delete", &format!(" AND {AIR}")),
        "(l_shipmode = 'AIR' OR random() < 0)",
    );
    let refused = env.plan_refused(&volatile).await;
    assert!(
        refused.contains("scope.where: calls random()") && !refused.contains("scope.source"),
        "{refused}"
    );
    // One matching predicate plans.
    plan::plan(&env.pool, &Brief::parse(&brief(AIR)).unwrap())
        .await
        .unwrap();
    assert_eq!(env.ship_revenue_changes("true").await, 0);
    env.cleanup().await;
}
