//! A step asked again says it was already done, when, what state the run is
//! in and what comes next, and changes nothing; a cutover run again after one
//! that swapped the built table in and stopped says the swap was done, not
//! that there was nothing to swap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::lifecycle::{approve, cutover, rollback};
use backfill_coordinator::resume;
use backfill_coordinator::run::Finish;
use backfill_tests::TestEnv;
use std::time::Duration;

const LOCK: Duration = Duration::from_secs(5);

fn says(error: &impl std::fmt::Display, words: &[&str]) {
    let message = error.to_string();
    for word in words {
        assert!(message.contains(word), "{word:?} not in: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_done_already_says_so_and_what_the_run_is() {
    let env = TestEnv::new(0.01).await;
    // A refresh step that fails until tpch.flag holds a row: the first
    // cutover swaps the built table in, then stops.
    sqlx::query("CREATE TABLE tpch.flag (x integer)")
        .execute(&env.pool)
        .await
        .unwrap();
    let text = env
        .brief(4, 2)
        .await
        .replace("strategy = \"merge\"", "strategy = \"staging-swap\"")
        .replace(
            "downstream = [",
            "refresh = [\"SELECT 1 / (SELECT count(*) FROM tpch.flag)\"]\ndownstream = [",
        );
    assert!(text.contains("tpch.flag"), "the demo brief moved");
    let (run_id, ..) = env.record_run(&text).await;
    assert_eq!(env.run_to_end(run_id, 2).await, Finish::Applied);
    env.validate_and_approve(run_id).await;
    let again = approve::approve(&env.reviewer, run_id, Some("bob"))
        .await
        .unwrap_err();
    says(
        &again,
        &["already approved by bob", "UTC", "backfill cutover"],
    );

    let stopped = cutover::cutover(&env.pool, run_id, "alice", LOCK)
        .await
        .unwrap_err();
    says(&stopped, &["refresh step 1"]);
    sqlx::query("INSERT INTO tpch.flag VALUES (1)")
        .execute(&env.pool)
        .await
        .unwrap();
    let finished = cutover::cutover(&env.pool, run_id, "alice", LOCK)
        .await
        .unwrap();
    let told = finished.render();
    assert!(
        finished.swapped_earlier
            && told.contains("already swapped the built table in")
            && !told.contains("nothing to swap"),
        "{told}"
    );
    assert_eq!(
        env.differences().await,
        0,
        "the swap is not what readers see"
    );
    let again = cutover::cutover(&env.pool, run_id, "alice", LOCK)
        .await
        .unwrap_err();
    says(
        &again,
        &[
            "already cut over",
            "UTC",
            "cut_over",
            "Nothing was done",
            "backfill rollback",
            "backfill done",
        ],
    );

    env.rollback_overwriting(run_id).await;
    let again = rollback::rollback(
        &env.pool,
        run_id,
        "alice",
        rollback::RollbackOptions::default(),
    )
    .await
    .unwrap_err();
    says(
        &again,
        &[
            "already rolled back",
            "UTC",
            "Nothing was done",
            "backfill cleanup",
        ],
    );

    // Pausing and cancelling twice.
    let (other, ..) = env.record_run(&env.brief(4, 2).await).await;
    resume::pause(&env.pool, other, "alice").await.unwrap();
    let again = resume::pause(&env.pool, other, "alice").await.unwrap_err();
    says(
        &again,
        &["already paused", "Nothing was done", "backfill resume"],
    );
    resume::cancel(&env.pool, other, "alice").await.unwrap();
    let again = resume::cancel(&env.pool, other, "alice").await.unwrap_err();
    says(
        &again,
        &["already cancelled", "Nothing was done", "backfill rollback"],
    );
    env.cleanup().await;
}
