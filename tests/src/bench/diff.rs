//! (j) `backfill diff` against the physical floor, one `SELECT count(*)` over
//! the same table on this machine:
//!
//! - the diff of an order-revenue run with before-images (every order, 1.5 M
//!   rows at scale 1), against `count(*)` of the target;
//! - a diff of two copies of the line items (6 M rows at scale 1) differing in
//!   0.1 % of their rows, against `count(*)` of one copy.

use super::Line;
use super::cases::{backfill_run, exec, median, reset, stop, worker};
use crate::{SCHEMA, TestEnv};
use backfill_coordinator::diff::{self, Options};
use sqlx::AssertSqlSafe;
use std::time::{Duration, Instant};

async fn count_star(env: &TestEnv, table: &str) -> Duration {
    let started = Instant::now();
    let _: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&env.pool)
        .await
        .expect("count(*)");
    started.elapsed()
}

fn options(workers: u16) -> Options {
    Options {
        columns: Vec::new(),
        filter: None,
        sample: 10,
        connections: usize::from(workers.max(1)),
        progress: false,
    }
}

/// (j), each `repeat` times, interleaved with its floor.
pub(super) async fn measure(env: &TestEnv, text: &str, workers: u16, repeat: usize) -> Vec<Line> {
    let pool = env.pool.clone();
    eprintln!("bench: (j) a run to diff …");
    reset(&pool).await;
    let mut fleet: Vec<_> = (0..workers).map(|_| worker(env, 1)).collect();
    let (_, run_id) = backfill_run(env, text).await;
    stop(&mut fleet).await;
    let target = format!("{SCHEMA}.order_revenue");
    let (mut run_diff, mut run_floor) = (Vec::new(), Vec::new());
    count_star(env, &target).await; // warm the cache for both
    for round in 1..=repeat {
        eprintln!("bench: (j) round {round}: the run's diff …");
        run_floor.push(count_star(env, &target).await);
        let started = Instant::now();
        let d = diff::run(&pool, run_id, &options(workers))
            .await
            .expect("diff the run");
        run_diff.push(started.elapsed());
        assert!(d.rows_changed > 0, "the run changed rows");
    }
    eprintln!("bench: (j) two copies of the line items …");
    for table in ["li_a", "li_b"] {
        exec(
            &pool,
            &format!("CREATE TABLE {SCHEMA}.{table} AS TABLE {SCHEMA}.lineitem"),
        )
        .await;
    }
    exec(
        &pool,
        &format!(
            "UPDATE {SCHEMA}.li_b SET l_quantity = l_quantity + 1 WHERE (l_orderkey * 7 + l_linenumber) % 1000 = 0"
        ),
    )
    .await;
    exec(&pool, &format!("VACUUM ANALYZE {SCHEMA}.li_a")).await;
    exec(&pool, &format!("VACUUM ANALYZE {SCHEMA}.li_b")).await;
    let (a, b) = (format!("{SCHEMA}.li_a"), format!("{SCHEMA}.li_b"));
    let key = ["l_orderkey".to_owned(), "l_linenumber".to_owned()];
    let (mut pair_diff, mut pair_floor) = (Vec::new(), Vec::new());
    count_star(env, &a).await;
    for round in 1..=repeat {
        eprintln!("bench: (j) round {round}: the two tables' diff …");
        pair_floor.push(count_star(env, &a).await);
        let started = Instant::now();
        let d = diff::tables(&pool, &a, &b, &key, None, &options(workers))
            .await
            .expect("diff two tables");
        pair_diff.push(started.elapsed());
        assert!(d.rows_changed > 0 && d.rows_only_before + d.rows_only_after == 0);
    }
    for table in ["li_a", "li_b"] {
        exec(&pool, &format!("DROP TABLE {SCHEMA}.{table}")).await;
    }
    let mut lines = Vec::new();
    for (case, took, floor, limit) in [
        (
            "(j) diff of the run, from its before-images",
            median(&run_diff),
            median(&run_floor),
            1.5,
        ),
        (
            "(j) diff of two line-item tables differing in 0.1 % of rows",
            median(&pair_diff),
            median(&pair_floor),
            3.0,
        ),
    ] {
        lines.push(Line {
            case: format!("{case} (count(*) of the table: {floor:.2} s)"),
            value: took,
            unit: "s",
            ratio: Some(took / floor),
            target: Some((format!("≤ {limit:.1} × count(*)"), took / floor <= limit)),
        });
    }
    lines
}
