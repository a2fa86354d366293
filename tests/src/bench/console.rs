//! (k) the console's page of a 100,000-batch run (fewer when `--plan-batches`
//! is), a third of it applied: the time from request to the last byte of the
//! page, served in-process on loopback, against the target of 2 s.

use super::Line;
use super::cases::median;
use crate::{TestEnv, http_get};
use backfill_coordinator::console;
use std::time::Instant;

/// Most batches of the run whose page is measured.
const BATCHES: u64 = 100_000;

pub(super) async fn measure(env: &TestEnv, plan_batches: i64, repeat: usize) -> Vec<Line> {
    let batches = u64::try_from(plan_batches).unwrap_or(1).clamp(1, BATCHES);
    eprintln!("bench: (k) the console's page of a {batches}-batch run …");
    let (run_id, ..) = env
        .record_run(&env.key_per_batch_brief(batches).await)
        .await;
    sqlx::query(
        "UPDATE backfill.batches SET state = 'applied', rows_source = 1, rows_inserted = 0,
                rows_updated = 1, rows_deleted = 0, duration_ms = 40, attempts = 1
          WHERE run_id = $1 AND batch_no < $2",
    )
    .bind(run_id)
    .bind(i64::try_from(batches / 3).unwrap_or(i64::MAX))
    .execute(&env.pool)
    .await
    .expect("apply a third of the batches");
    let addr = console::serve(
        env.pool.clone(),
        env.config.clone(),
        "127.0.0.1:0".parse().expect("an address"),
        console::Auth::default(),
    )
    .await
    .expect("serve the console")
    .to_string();
    let mut took = Vec::new();
    for _ in 0..repeat {
        let started = Instant::now();
        let (status, page) = http_get(&addr, &format!("/runs/{run_id}")).await;
        took.push(started.elapsed());
        assert_eq!(status, 200, "{page}");
    }
    let seconds = median(&took);
    vec![Line {
        case: format!("(k) console: the page of a {batches}-batch run"),
        value: seconds,
        unit: "s",
        ratio: None,
        target: Some(("≤ 2 s".into(), seconds <= 2.0)),
    }]
}
