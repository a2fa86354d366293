//! The guard on unmatched rows, on by default: a source that does not reproduce
//! the target rows of its range (a mis-scoped filter, a `> $1` that skips each
//! batch's first day) halts the run at its first batch with the figures, under
//! every write strategy that can lose or strand them, and `rollback` restores
//! the batch. A live write of a metric-changing brief without before-images
//! must name its way back, which the run log records.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::lifecycle::rollback::{self, RollbackOptions};
use backfill_coordinator::run::Finish;
use backfill_coordinator::{plan, sample, status, validate};
use backfill_shared::brief::Brief;
use backfill_shared::control::runs::{self, RunState};
use backfill_tests::{TestEnv, ship_revenue};

/// Runs `text` on a fresh `tpch.ship_revenue`; returns the env, the run and how it ended.
async fn run(text: &str) -> (TestEnv, uuid::Uuid, String) {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    let (run_id, ..) = env.record_run(text).await;
    let finish = env.run_to_end(run_id, 1).await;
    let Finish::Halted(reason) = finish else {
        panic!("the run must halt: {finish:?}\n{text}")
    };
    println!("halted: {reason}");
    (env, run_id, reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mis_scoped_source_halts_at_its_first_batch_and_rolls_back() {
    for (strategy, on_missing) in [("partition-overwrite", "delete"), ("merge", "delete")] {
        let text = ship_revenue::brief(strategy, on_missing, " AND l_shipmode = 'AIR'");
        let (env, run_id, reason) = run(&text).await;
        assert!(
            reason.contains("max_unmatched_pct = 2") && reason.contains("were removed"),
            "{strategy}: {reason}"
        );
        let status = status::status(&env.pool, run_id).await.unwrap();
        assert_eq!(
            (status.state.as_str(), status.batches.applied),
            ("halted", 1),
            "{strategy}"
        );
        // Only the first month changed, and it lost its non-AIR rows.
        assert_eq!(
            env.ship_revenue_changes("l_shipdate >= '1992-02-01'").await,
            0,
            "{strategy}: rows past the first batch changed"
        );
        let lost = env.ship_revenue_changes("true").await;
        assert!(lost > 0, "{strategy}: the first batch removed nothing");
        assert!(
            reason.contains(&format!("{lost} of ")),
            "{strategy}: the breach must give the removed count {lost}: {reason}"
        );
        // validate names the range; rollback puts the batch back.
        let checks = validate::validate(&env.pool, run_id).await.unwrap();
        let unmatched = checks.iter().find(|c| c.name == "unmatched rows").unwrap();
        assert!(!unmatched.passed, "{}", unmatched.summary);
        assert_eq!(unmatched.detail["ranges"][0]["lo"], "1992-01-01");
        rollback::rollback(&env.pool, run_id, "alice", RollbackOptions::default())
            .await
            .unwrap();
        assert_eq!(env.ship_revenue_changes("true").await, 0, "{strategy}");
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_that_skips_each_lower_bound_halts_and_says_so() {
    // The first day of a month is about 3% of its rows: past the default
    // limit of 2%, and under a limit raised to 50%, where the shape of the
    // loss (all at the lower bound, where the source yields nothing) halts.
    for (on_missing, limit) in [("delete", None), ("keep", None), ("delete", Some(50))] {
        let mut text = ship_revenue::brief("merge", on_missing, "")
            .replace("l_shipdate >= $1", "l_shipdate > $1");
        if let Some(limit) = limit {
            text = text.replace(
                "max_duplicate_keys = 0",
                &format!("max_duplicate_keys = 0\nmax_unmatched_pct = {limit}"),
            );
        }
        let (env, run_id, reason) = run(&text).await;
        assert!(
            reason.contains("lower bound") && reason.contains("`>= $1`"),
            "{on_missing}: {reason}"
        );
        if limit.is_some() {
            assert!(
                reason.contains("under max_unmatched_pct = 50")
                    && reason.contains("where the source yields no row"),
                "{reason}"
            );
        }
        let fate = if on_missing == "keep" {
            "left stale"
        } else {
            "removed"
        };
        assert!(reason.contains(fate), "{on_missing}: {reason}");
        let status = status::status(&env.pool, run_id).await.unwrap();
        // January 1992 ships nothing on its first day, so February is the first
        // batch with rows at its lower bound.
        assert!(
            status.batches.applied <= 2,
            "{on_missing}: {} batches applied",
            status.batches.applied
        );
        let kept = env.ship_revenue_changes("true").await;
        if on_missing == "keep" {
            assert_eq!(kept, 0, "keep changes nothing here");
        }
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_correct_source_passes_and_a_raised_limit_lets_a_known_loss_through() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    // The exact source: nothing unmatched, nothing changed.
    let text = ship_revenue::brief("partition-overwrite", "delete", "");
    let (run_id, ..) = env.record_run(&text).await;
    assert_eq!(env.run_to_end(run_id, 1).await, Finish::Applied);
    assert_eq!(env.ship_revenue_changes("true").await, 0);
    let checks = validate::validate(&env.pool, run_id).await.unwrap();
    let unmatched = checks.iter().find(|c| c.name == "unmatched rows").unwrap();
    assert!(unmatched.passed, "{}", unmatched.summary);
    runs::transition(
        &env.pool,
        run_id,
        &[RunState::Applied],
        RunState::Cancelled,
        "alice",
        Some("the next run rewrites the table"),
    )
    .await
    .unwrap();
    // Removing the rows of one mode on purpose, with the limit raised to say so.
    let text = ship_revenue::brief("merge", "delete", " AND l_shipmode <> 'MAIL'").replace(
        "max_duplicate_keys = 0",
        "max_duplicate_keys = 0\nmax_unmatched_pct = 20",
    );
    let mail = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM tpch.ship_revenue WHERE l_shipmode = 'MAIL'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    let mail_before = mail().await;
    let (run_id, ..) = env.record_run(&text).await;
    assert_eq!(env.run_to_end(run_id, 1).await, Finish::Applied);
    assert_eq!(mail().await, 0);
    // The report tells stakeholders what was removed.
    let report = backfill_coordinator::report::gather(&env.pool, run_id)
        .await
        .unwrap();
    assert_eq!(report.unmatched.rows, mail_before);
    let note = report.markdown();
    assert!(
        note.contains(&format!("{mail_before} of the")) && note.contains("were removed"),
        "{note}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_write_without_images_records_its_stated_way_back() {
    let text = ship_revenue::brief("merge", "delete", "")
        .replace(
            "risk = \"metric-changing\"",
            "risk = \"production-critical\"",
        )
        .replace("snapshot = true", "snapshot = false");
    let problems = Brief::parse(&text).unwrap_err().problems;
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["write.snapshot", "rollback.plan"], "{problems:?}");

    let text = text.replace(
        "plan = \"Before-images per batch restore every changed row.\"",
        "plan = \"Restore the table from last night's snapshot.\"\n\
         without_images = \"nightly snapshot s3://warehouse/ship_revenue restores it\"",
    );
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    let (run_id, ..) = env.record_run(&text).await;
    let stated: Option<String> = sqlx::query_scalar(
        "SELECT detail->'params'->>'without_images' FROM backfill.run_log
          WHERE run_id = $1 AND event = 'run_created'",
    )
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        stated.as_deref(),
        Some("nightly snapshot s3://warehouse/ship_revenue restores it")
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_refuses_a_source_that_would_lose_rows_and_sample_counts_them() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    let refused = |text: String| {
        let pool = env.pool.clone();
        async move {
            let brief = Brief::parse(&text).unwrap();
            let err = plan::plan(&pool, &brief).await.unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
            err.to_string()
        }
    };
    let air = refused(ship_revenue::brief(
        "partition-overwrite",
        "delete",
        " AND l_shipmode = 'AIR'",
    ))
    .await;
    assert!(
        air.contains("[1992-01-01, 1992-02-01)")
            && air.contains("would be removed")
            && air.contains("max_unmatched_pct = 2"),
        "{air}"
    );
    let skipped = refused(
        ship_revenue::brief("merge", "keep", "").replace("l_shipdate >= $1", "l_shipdate > $1"),
    )
    .await;
    assert!(
        skipped.contains("`>= $1`") && skipped.contains("would be left stale"),
        "{skipped}"
    );

    // The test slice counts them too.
    let brief = Brief::parse(&ship_revenue::brief(
        "merge",
        "delete",
        " AND l_shipmode = 'AIR'",
    ))
    .unwrap();
    let (lo, hi) = sample::parse_slice(&brief, "1995-03-01..1995-05-01").unwrap();
    let slice = sample::sample(&env.pool, &brief, lo, hi).await.unwrap();
    let air_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tpch.ship_revenue
          WHERE l_shipdate >= '1995-03-01' AND l_shipdate < '1995-05-01' AND l_shipmode <> 'AIR'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(slice.unmatched.rows, air_rows);
    assert!(
        slice.render().contains("would be removed"),
        "{}",
        slice.render()
    );

    // A source that reproduces the table plans, with nothing unmatched.
    let brief = Brief::parse(&ship_revenue::brief("merge", "delete", "")).unwrap();
    let (planned, ..) = plan::plan(&env.pool, &brief).await.unwrap();
    assert_eq!(
        (planned.unmatched.sampled_batches, planned.unmatched.rows),
        (5, 0)
    );
    assert!(planned.unmatched.range_rows > 0);
    assert!(planned.render().contains("unmatched: 0 of"));
    // Nothing was written by any of it.
    assert_eq!(env.ship_revenue_changes("true").await, 0);
    env.cleanup().await;
}
