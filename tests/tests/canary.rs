//! `limits.canary`: a run applies its canary batches first and waits in state
//! `canary` with their figures; the owner cannot promote it (not through the
//! CLI, not past it), the reviewer can, and the run then ends exact;
//! `canary.auto` promotes by itself; a breach in the canary halts without
//! promotion; rollback of a run stopped at its canary undoes only the canary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::lifecycle::rollback::{self, RollbackOptions};
use backfill_coordinator::run::Finish;
use backfill_coordinator::{canary, plan, report, resume, status};
use backfill_shared::brief::Brief;
use backfill_shared::control::batches::{self, BatchState};
use backfill_shared::control::runs::{self, RunState};
use backfill_tests::{TestEnv, finish_within, ship_revenue};
use std::time::Duration;
use uuid::Uuid;

/// The ship-revenue brief with `canary` as `limits.canary`, a yearly revenue
/// metric (limited to `max_change_pct` if given) and one edge case.
fn canary_brief(canary: &str, max_change_pct: Option<u32>) -> String {
    let limit = max_change_pct.map_or_else(String::new, |p| format!("\nmax_change_pct = {p}"));
    ship_revenue::brief("merge", "delete", "")
        .replace(
            "max_in_flight = 1",
            &format!("max_in_flight = 1\ncanary = {canary}"),
        )
        .replace(
            "max_duplicate_keys = 0",
            &format!(
                "max_duplicate_keys = 0\nedge_cases = [[\"1995-06-17\", \"AIR\"]]\n\
                 [[validation.metrics]]\nname = \"ship revenue\"\nexpr = \"sum(revenue)\"\n\
                 by = \"date_trunc('year', l_shipdate)\"{limit}"
            ),
        )
}

/// Every row of `tpch.ship_revenue` wrong (revenue halved), the copy taken after.
async fn break_ship_revenue(env: &TestEnv) {
    env.build_ship_revenue().await;
    sqlx::query("UPDATE tpch.ship_revenue SET revenue = revenue / 2")
        .execute(&env.pool)
        .await
        .unwrap();
    env.copy_ship_revenue().await;
}

/// Waits until the run is in `state` (at most a minute).
async fn until_state(env: &TestEnv, run_id: Uuid, state: RunState) {
    for _ in 0..600 {
        if runs::state(&env.pool, run_id).await.unwrap() == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "run {run_id} never reached {state}: {}",
        status::status(&env.pool, run_id).await.unwrap().render()
    );
}

async fn applied(env: &TestEnv, run_id: Uuid) -> Vec<u32> {
    batches::numbers_in_state(&env.pool, run_id, BatchState::Applied)
        .await
        .unwrap()
}

/// A filter on `l_shipdate` selecting the ranges of `batch_nos`.
fn in_batches(brief: &Brief, batch_nos: &[u32]) -> String {
    let plan = brief.scope.batch_by.plan().unwrap();
    batch_nos
        .iter()
        .map(|no| {
            let b = &plan[*no as usize];
            format!("(l_shipdate >= '{}' AND l_shipdate < '{}')", b.lo, b.hi)
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_waits_for_the_reviewer_and_the_run_then_ends_exact() {
    let env = TestEnv::new(0.01).await;
    break_ship_revenue(&env).await;
    let (run_id, brief, plan) = env.record_run(&canary_brief("{ batches = 3 }", None)).await;
    // The people get logins of their own once the run is recorded.
    let logins = env
        .logins(&[
            ("alice", "backfill_operator", true),
            ("bob", "backfill_reviewer", true),
        ])
        .await;
    // 84 monthly batches: the middle batch of each third of the scope.
    let picked = runs::load(&env.pool, run_id).await.unwrap().canary_batches;
    assert_eq!(picked, vec![14, 42, 70], "{} batches", plan.len());

    let workers = env.workers(2).await;
    let drive = env.drive_in_background(run_id);
    until_state(&env, run_id, RunState::Canary).await;
    // Only the canary is applied; the rest of history is untouched.
    assert_eq!(applied(&env, run_id).await, picked);
    let canary_rows = in_batches(&brief, &picked);
    assert_eq!(env.ship_revenue_wrong(&canary_rows).await, 0);
    assert_eq!(
        env.ship_revenue_changes(&format!("NOT ({canary_rows})"))
            .await,
        0
    );
    // status shows what the canary showed: rows, pace, deltas, the edge case.
    let shown = status::status(&env.pool, run_id).await.unwrap();
    assert_eq!(shown.state, "canary");
    let figures = shown.canary.as_ref().expect("status shows the canary");
    assert!(figures.rows_written > 0, "{figures:?}");
    assert!(figures.projected_run_seconds.is_some(), "{figures:?}");
    let doubled = |year: &str| {
        figures
            .metrics
            .iter()
            .find(|m| m.group.starts_with(year))
            .and_then(backfill_coordinator::validate::GroupDelta::delta_pct)
    };
    for year in ["1993", "1995", "1997"] {
        let pct = doubled(year).unwrap_or_else(|| panic!("no delta for {year}: {figures:?}"));
        assert!((pct - 100.0).abs() < 1.0, "{year}: {pct}");
    }
    assert_eq!(figures.edge_cases.as_array().map(Vec::len), Some(1));
    let text = shown.render();
    assert!(
        text.contains("canary:   3 of 3 batch(es) applied") && text.contains("backfill promote"),
        "{text}"
    );
    // The coordinator waits, holding the rest.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!drive.is_finished());
    assert_eq!(applied(&env, run_id).await.len(), 3);

    // The owner cannot promote: not through the CLI, not past it.
    let err = canary::promote(logins.pool("alice"), run_id, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("owns run"), "{err}");
    let err = sqlx::query(
        "UPDATE backfill.runs SET state = 'running', promoted_by = 'bob', promoted_at = now() WHERE run_id = $1",
    )
    .bind(run_id)
    .execute(logins.pool("alice"))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("only bob"), "{err}");
    // Nor resume it as if it were paused.
    let err = resume::resume(&env.pool, run_id, "alice", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("backfill promote"), "{err}");

    // The reviewer promotes, and the waiting coordinator applies the rest.
    assert_eq!(
        canary::promote(logins.pool("bob"), run_id, Some("bob"))
            .await
            .unwrap(),
        "bob"
    );
    assert_eq!(finish_within(drive, 120).await, Finish::Applied);
    workers.stop().await;
    assert_eq!(env.ship_revenue_wrong("true").await, 0);
    assert!(env.not_applied_exactly_once(run_id).await.is_empty());
    assert_eq!(env.logged(run_id, "run_canary").await, 1);
    let promoted: (String, String) = sqlx::query_as(
        "SELECT actor, session_role::text FROM backfill.run_log WHERE run_id = $1 AND event = 'canary_promoted'",
    )
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(promoted, ("bob".into(), logins.role("bob")));
    let note = report::gather(&env.pool, run_id).await.unwrap().markdown();
    assert!(
        note.contains("| Canary | batches 14 [1993-03-01, 1993-04-01)")
            && note.contains("promoted by bob"),
        "{note}"
    );
    env.cleanup().await;
    logins.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_auto_promotes_itself_unless_the_canary_breached_a_limit() {
    let env = TestEnv::new(0.01).await;
    break_ship_revenue(&env).await;
    // Within every limit: it promotes by itself and runs to the end.
    let (run_id, ..) = env
        .record_run(&canary_brief("{ batches = 2, auto = true }", None))
        .await;
    assert_eq!(env.run_to_end(run_id, 2).await, Finish::Applied);
    let run = runs::load(&env.pool, run_id).await.unwrap();
    assert_eq!(run.promoted_by.as_deref(), Some("canary.auto"));
    assert_eq!(env.logged(run_id, "run_canary").await, 1);
    assert_eq!(env.ship_revenue_wrong("true").await, 0);
    env.cleanup().await;

    // A canary that doubles revenue against a 10 % limit halts, unpromoted,
    // with nothing but canary batches applied.
    let env = TestEnv::new(0.01).await;
    break_ship_revenue(&env).await;
    let (run_id, ..) = env
        .record_run(&canary_brief("{ batches = 2, auto = true }", Some(10)))
        .await;
    let Finish::Halted(reason) = env.run_to_end(run_id, 2).await else {
        panic!("the canary must halt on its breach")
    };
    assert!(reason.contains("ship revenue"), "{reason}");
    let run = runs::load(&env.pool, run_id).await.unwrap();
    assert!(run.promoted_at.is_none());
    let done = applied(&env, run_id).await;
    assert!(
        !done.is_empty() && done.iter().all(|b| run.canary_batches.contains(b)),
        "{done:?} of canary {:?}",
        run.canary_batches
    );
    // The console's page leads with the halt, its breach and whose decision
    // it is.
    let addr = backfill_coordinator::console::serve(
        env.pool.clone(),
        env.config.clone(),
        "127.0.0.1:0".parse().unwrap(),
        backfill_coordinator::console::Auth::default(),
    )
    .await
    .unwrap();
    let page = || async {
        let (status, page) = backfill_tests::http(
            &addr.to_string(),
            "GET",
            &format!("/runs/{run_id}/live"),
            &[],
            "",
        )
        .await;
        assert_eq!(status, 200, "{page}");
        page
    };
    let halted = page().await;
    assert!(
        halted.contains("Halted: ")
            && halted.contains("accept the breach and resume, or roll back")
            && halted.contains("<h2>Breaches</h2>"),
        "{halted}"
    );
    // Accepting the breach finishes the canary, which then waits for a person:
    // a canary that breached a limit never promotes itself.
    resume::resume(
        &env.pool,
        run_id,
        "alice",
        Some("revenue was halved by the bug"),
    )
    .await
    .unwrap();
    let workers = env.workers(2).await;
    let drive = env.drive_in_background(run_id);
    until_state(&env, run_id, RunState::Canary).await;
    assert_eq!(applied(&env, run_id).await, run.canary_batches);
    // Resumed, the run's words of its halt are gone, in status and the console.
    let resumed = page().await;
    assert!(
        !resumed.contains("Halted")
            && resumed.contains("Waiting for <strong>bob</strong> to promote it."),
        "{resumed}"
    );
    let shown = status::status(&env.pool, run_id).await.unwrap().render();
    assert!(!shown.contains("halted"), "{shown}");
    canary::promote(&env.reviewer, run_id, None).await.unwrap();
    // Promoted twice: it says so, when, and where the run stands.
    let again = canary::promote(&env.reviewer, run_id, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        again.contains("already promoted by")
            && again.contains("UTC")
            && again.contains("Nothing was done"),
        "{again}"
    );
    // The rest breach the same limit, already accepted.
    assert_eq!(finish_within(drive, 120).await, Finish::Applied);
    workers.stop().await;
    assert_eq!(env.ship_revenue_wrong("true").await, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canaries_pick_ranges_or_edge_cases_and_roll_back_alone() {
    let env = TestEnv::new(0.01).await;
    break_ship_revenue(&env).await;
    // The batch holding the edge case (June 1995), then one spread batch.
    let brief = Brief::parse(&canary_brief(
        "{ batches = 2, pick = \"edge_cases\" }",
        None,
    ))
    .unwrap();
    let (planned, ..) = plan::plan(&env.pool, &brief).await.unwrap();
    let picked: Vec<u32> = planned.canary.iter().map(|c| c.0).collect();
    assert!(picked.contains(&41) && picked.len() == 2, "{picked:?}");
    assert!(
        planned.render().contains("canary:   batches ")
            && planned.render().contains("41 [1995-06-01, 1995-07-01)"),
        "{}",
        planned.render()
    );
    // A canary must leave something to promote; an edge case pick needs edge cases.
    let whole = canary_brief("{ batches = 100 }", None);
    assert!(
        env.plan_refused(&whole)
            .await
            .contains("leave batches to promote"),
        "{}",
        env.plan_refused(&whole).await
    );
    let problems = Brief::parse(
        &canary_brief("{ pick = \"edge_cases\" }", None)
            .replace("edge_cases = [[\"1995-06-17\", \"AIR\"]]\n", ""),
    )
    .unwrap_err()
    .to_string();
    assert!(problems.contains("limits.canary.pick"), "{problems}");
    let problems = Brief::parse(&canary_brief(
        "{ pick = [\"1990-01-01..1990-02-01\"] }",
        None,
    ))
    .unwrap_err()
    .to_string();
    assert!(problems.contains("outside the scope"), "{problems}");

    // Explicit ranges: the two batches of early 1995. Stopped at the canary,
    // a rollback undoes exactly those.
    let (run_id, ..) = env
        .record_run(&canary_brief(
            "{ pick = [\"1995-01-01..1995-03-01\"] }",
            None,
        ))
        .await;
    assert_eq!(
        runs::load(&env.pool, run_id).await.unwrap().canary_batches,
        vec![36, 37]
    );
    let workers = env.workers(1).await;
    let drive = env.drive_in_background(run_id);
    until_state(&env, run_id, RunState::Canary).await;
    assert!(env.ship_revenue_changes("true").await > 0);
    rollback::rollback(
        &env.pool,
        run_id,
        "alice",
        RollbackOptions {
            force: false,
            overwrite_newer: false,
            lock_timeout: Duration::from_secs(5),
        },
    )
    .await
    .unwrap();
    // The waiting coordinator lets go of a run rolled back under it.
    let finish = finish_within(drive, 60).await;
    assert!(
        matches!(
            finish,
            Finish::Stopped(RunState::RollingBack | RunState::RolledBack)
        ),
        "{finish:?}"
    );
    workers.stop().await;
    assert_eq!(env.ship_revenue_changes("true").await, 0);
    env.cleanup().await;
}
