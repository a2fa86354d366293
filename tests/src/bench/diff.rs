//! (j) `backfill diff` against the physical floor, one `SELECT count(*)` over
//! the same table on this machine:
//!
//! - the diff of an order-revenue run with before-images (every order, 1.5 M
//!   rows at scale 1), against `count(*)` of the target;
//! - a diff of two copies of the line items (6 M rows at scale 1) differing in
//!   0.1 % of their rows, against `count(*)` of one copy.
//!
//! Beside each, the floor of any diff that compares values: every row of the
//! two relations it compares (the before-images and the target; the two
//! tables) read and hashed once, one connection per relation, as a ratio to
//! the same `count(*)`.

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

/// Every row of `tables` read and hashed (`hash_record_extended`), each table
/// on its own connection at once.
async fn hash_every_row(env: &TestEnv, tables: &[&str]) -> Duration {
    let started = Instant::now();
    futures_util::future::join_all(tables.iter().map(|table| {
        let sql = format!("SELECT bit_xor(hash_record_extended(t, 0)) FROM {table} t");
        let pool = env.pool.clone();
        async move {
            let _: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .expect("hash every row");
        }
    }))
    .await;
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
    let images = backfill_shared::control::runs::load(&pool, run_id)
        .await
        .expect("the run")
        .image_table
        .expect("the run keeps before-images");
    let (mut run_diff, mut run_floor, mut run_hashed) = (Vec::new(), Vec::new(), Vec::new());
    count_star(env, &target).await; // warm the cache for both
    for round in 1..=repeat {
        eprintln!("bench: (j) round {round}: the run's diff …");
        run_floor.push(count_star(env, &target).await);
        run_hashed.push(hash_every_row(env, &[images.as_str(), target.as_str()]).await);
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
    let (mut pair_diff, mut pair_floor, mut pair_hashed) = (Vec::new(), Vec::new(), Vec::new());
    count_star(env, &a).await;
    for round in 1..=repeat {
        eprintln!("bench: (j) round {round}: the two tables' diff …");
        pair_floor.push(count_star(env, &a).await);
        pair_hashed.push(hash_every_row(env, &[a.as_str(), b.as_str()]).await);
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
    for (case, took, floor, hashed, limit) in [
        (
            "(j) diff of the run, from its before-images",
            median(&run_diff),
            median(&run_floor),
            median(&run_hashed),
            1.5,
        ),
        (
            "(j) diff of two line-item tables differing in 0.1 % of rows",
            median(&pair_diff),
            median(&pair_floor),
            median(&pair_hashed),
            3.0,
        ),
    ] {
        lines.push(Line {
            case: format!(
                "{case} (count(*) of the table: {floor:.2} s; {:.2} × what hashing both sides takes)",
                took / hashed
            ),
            value: took,
            unit: "s",
            ratio: Some(took / floor),
            target: Some((format!("≤ {limit:.1} × count(*)"), took / floor <= limit)),
        });
        lines.push(Line {
            case: "(j) its floor: every row of both sides read and hashed once".into(),
            value: hashed,
            unit: "s",
            ratio: Some(hashed / floor),
            target: None,
        });
    }
    lines
}
