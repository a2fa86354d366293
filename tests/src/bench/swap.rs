//! (l) How long a staging-swap's cutover locks the target when the daily
//! pipeline wrote to it during the build: 10,000 orders outside the scope
//! (the second half of the keys; the run rebuilds the first) are updated
//! after the run is recorded, so its capture holds them; cutover carries them
//! in a catch-up pass before the lock and the rest under it. Against the same
//! run and cutover with no write beside it. Each round is rolled back (the
//! old table swapped in again) and cleaned up, so the next starts as it did.

use super::Line;
use super::cases::{exec, median, reset, stop, worker};
use crate::{SCHEMA, TestEnv};
use backfill_coordinator::lifecycle::{approve, cleanup, cutover, rollback};
use backfill_coordinator::run::{self, DriveOptions, Finish};
use backfill_coordinator::validate;
use backfill_shared::control::runs::{self, RunState};
use std::time::Duration;

/// The live writes of the loaded round.
const CHANGES: i64 = 10_000;
/// The target: the lock held at most this long with [`CHANGES`] writes.
const TARGET_MS: f64 = 1_000.0;

/// The demo's brief as a staging-swap of the first half of the keys, and
/// where the scope ends.
fn half_swap(text: &str, batches: i64) -> (String, i64) {
    let start = text.find("batch_by = ").expect("batch_by");
    let end = start + text[start..].find('\n').expect("end of batch_by");
    let line = &text[start..end];
    let last: i64 = line
        .split("end = ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .expect("the demo brief's batch_by has an end");
    let half = last / 2;
    let step = (half + batches - 1) / batches.max(1);
    let text = format!(
        "{}batch_by = {{ column = \"o_orderkey\", start = 1, end = {half}, step = {step} }}{}",
        &text[..start],
        &text[end..]
    );
    let text = text
        .lines()
        .filter(|l| !l.starts_with("expected_rows = "))
        .collect::<Vec<_>>()
        .join("\n");
    let text = backfill_coordinator::demo::with_max_change_pct(&text, 100)
        .replace("strategy = \"merge\"", "strategy = \"staging-swap\"");
    (text, half)
}

/// One round: record, write `changes` orders outside the scope (from key
/// `outside` on), drive, validate, approve, cut over; the target's locked time
/// and what was carried.
async fn round(
    env: &TestEnv,
    (text, outside): (&str, i64),
    workers: u16,
    changes: i64,
) -> (Duration, u64) {
    let pool = env.pool.clone();
    let (run_id, ..) = env.record_run(text).await;
    if changes > 0 {
        exec(
            &pool,
            &format!(
                "UPDATE {SCHEMA}.order_revenue SET line_count = line_count + 1
                  WHERE o_orderkey IN (SELECT o_orderkey FROM {SCHEMA}.order_revenue
                                        WHERE o_orderkey >= {outside}
                                        ORDER BY o_orderkey LIMIT {changes})"
            ),
        )
        .await;
    }
    let mut fleet: Vec<_> = (0..workers).map(|_| worker(env, 1)).collect();
    let finish = run::drive(
        &env.config,
        &pool,
        run_id,
        DriveOptions {
            progress: false,
            ..DriveOptions::default()
        },
    )
    .await
    .expect("drive the swap");
    stop(&mut fleet).await;
    assert_eq!(finish, Finish::Applied, "the swap did not apply");
    validate::validate(&pool, run_id).await.expect("validate");
    approve::approve(&env.reviewer, run_id, None)
        .await
        .expect("approve");
    let report = cutover::cutover(&pool, run_id, "bench", Duration::from_secs(30))
        .await
        .expect("cut over");
    let swapped = report.swapped.expect("a swap");
    rollback::rollback(&pool, run_id, "bench", rollback::RollbackOptions::default())
        .await
        .expect("roll the swap back");
    cleanup::cleanup(&pool, run_id, "bench", true)
        .await
        .expect("clean the swap up");
    (
        Duration::from_millis(swapped.locked_ms),
        report.live_writes_carried,
    )
}

/// (l), `repeat` times each, interleaved.
pub(super) async fn measure(env: &TestEnv, text: &str, workers: u16, repeat: usize) -> Vec<Line> {
    let (text, outside) = half_swap(text, 20);
    // The runs other cases leave recorded on the target (the large run of
    // (f)) let go of it.
    let target = format!("{SCHEMA}.order_revenue");
    let active = runs::on_target(&env.pool, &target, &RunState::ACTIVE)
        .await
        .expect("the runs on the target");
    for run_id in active {
        runs::transition(
            &env.pool,
            run_id,
            &RunState::ACTIVE,
            RunState::Cancelled,
            "bench",
            Some("benchmark run retired"),
        )
        .await
        .expect("retire the run");
    }
    reset(&env.pool).await;
    // 10,000, or as many as a small scale has outside the scope.
    let beside: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {SCHEMA}.order_revenue WHERE o_orderkey >= {outside}"
    )))
    .fetch_one(&env.pool)
    .await
    .expect("count the rows outside the scope");
    let changes = CHANGES.min(beside);
    let (mut quiet, mut loaded) = (Vec::new(), Vec::new());
    for n in 1..=repeat {
        eprintln!("bench: (l) round {n}: a swap with no write beside it …");
        quiet.push(round(env, (&text, outside), workers, 0).await.0);
        eprintln!("bench: (l) round {n}: a swap with {changes} live writes …");
        let (locked, carried) = round(env, (&text, outside), workers, changes).await;
        assert_eq!(
            carried,
            u64::try_from(changes).unwrap_or(0),
            "cutover did not carry every live write"
        );
        loaded.push(locked);
    }
    let (quiet, loaded) = (median(&quiet) * 1000.0, median(&loaded) * 1000.0);
    vec![
        Line {
            case: "(l) swap, target locked, no live writes".into(),
            value: quiet,
            unit: "ms",
            ratio: None,
            target: None,
        },
        Line {
            case: format!("(l) swap with {changes} live writes carried: target locked"),
            value: loaded,
            unit: "ms",
            ratio: Some(if quiet > 0.0 { loaded / quiet } else { 0.0 }),
            target: Some((format!("< {TARGET_MS:.0} ms"), loaded < TARGET_MS)),
        },
    ]
}
