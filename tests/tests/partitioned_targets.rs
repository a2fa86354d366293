//! Partitioned targets: every write strategy on a range-partitioned and a
//! list-partitioned `tpch.ship_revenue` gives the independent recomputation,
//! leaves the table partitioned exactly as it was (kind, key, bounds, indexes,
//! constraints, partition names) after the run, after cutover and after
//! rollback, and rollback restores the data; a reader during a swap (cutover,
//! and its rollback) sees the old table or the new one, never an error or a mix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::lifecycle::rollback::RollbackOptions;
use backfill_coordinator::lifecycle::{cutover, rollback};
use backfill_coordinator::run::Finish;
use backfill_tests::TestEnv;
use backfill_tests::ship_revenue::{self, Partitioning};
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const LOCK: Duration = Duration::from_secs(5);

/// What a reader of the whole table sees: rows and total revenue.
type Totals = (i64, Option<String>);

async fn totals(pool: &PgPool) -> sqlx::Result<Totals> {
    sqlx::query_as("SELECT count(*), sum(revenue)::text FROM tpch.ship_revenue")
        .fetch_one(pool)
        .await
}

/// Reads the table's totals over and over until stopped; returns every
/// distinct answer, or the first error.
fn keep_reading(
    pool: PgPool,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<Vec<Totals>, String>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let now = totals(&pool).await.map_err(|e| e.to_string())?;
            if !seen.contains(&now) {
                seen.push(now);
            }
        }
        Ok(seen)
    })
}

/// Runs `step` while a reader reads the table; checks the reader saw only
/// `before` and `after`, without an error.
async fn read_through<T>(env: &TestEnv, what: &str, step: impl Future<Output = T>) -> T {
    let before = totals(&env.pool).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = keep_reading(env.pool.clone(), Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let out = step.await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);
    let after = totals(&env.pool).await.unwrap();
    let seen = reader
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: a reader failed: {e}"));
    assert!(
        seen.iter().all(|s| *s == before || *s == after),
        "{what}: a reader saw a mix: {seen:?}, neither {before:?} nor {after:?}"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_strategy_on_a_partitioned_target_is_exact_and_keeps_the_partitioning() {
    for partitioning in [Partitioning::ByShipDate, Partitioning::ByShipMode] {
        for strategy in [
            "merge",
            "partition-overwrite",
            "staging-swap",
            "parallel-version",
        ] {
            let what = format!("{strategy} on {partitioning:?}");
            let env = TestEnv::new(0.01).await;
            env.build_partitioned_ship_revenue(partitioning).await;
            // History to correct: revenue off on the first of each month, rows
            // missing on the second.
            let changed = |sql: &'static str| {
                let pool = env.pool.clone();
                async move {
                    let n = sqlx::query(sql)
                        .execute(&pool)
                        .await
                        .unwrap()
                        .rows_affected();
                    i64::try_from(n).unwrap()
                }
            };
            let updated = changed(
                "UPDATE tpch.ship_revenue SET revenue = revenue + 1 WHERE extract(day FROM l_shipdate) = 1",
            )
            .await;
            let deleted = changed(
                "DELETE FROM tpch.ship_revenue WHERE extract(day FROM l_shipdate) = 2 AND l_shipmode = 'MAIL'",
            )
            .await;
            env.copy_ship_revenue().await;
            let built = env.ship_revenue_structure().await;
            assert_eq!(built.1.len(), 4, "{what}: {built:?}");
            // What is compared: the partitioning, each partition's bound, and
            // the index and check of one partition's own.
            for expected in [
                "partition by ",
                "relkind p",
                "/ relkind r",
                "(revenue)",
                "CHECK ((lines > 0))",
            ] {
                assert!(
                    built.0.iter().any(|line| line.contains(expected)),
                    "{what}: no {expected:?} in {:#?}",
                    built.0
                );
            }
            assert!(env.ship_revenue_wrong("true").await > 0, "{what}");

            let text = ship_revenue::brief(strategy, "delete", "")
                .replace("step = \"1 month\"", "step = \"1 year\"");
            let (run_id, ..) = env.record_run(&text).await;
            // The pipeline writes outside the scope (a spare partition, or the
            // default one) while a swap builds, and after its cutover.
            let swaps = strategy == "staging-swap" || strategy == "parallel-version";
            let outside = |day: &'static str| {
                let pool = env.pool.clone();
                async move {
                    sqlx::query("INSERT INTO tpch.ship_revenue VALUES ($1::date, 'AIR', 1.00, 1)")
                        .bind(day)
                        .execute(&pool)
                        .await
                        .unwrap();
                }
            };
            let live_rows = || {
                let pool = env.pool.clone();
                async move {
                    sqlx::query_scalar::<_, String>(
                        "SELECT l_shipdate::text FROM tpch.ship_revenue WHERE l_shipdate >= '1999-01-01' ORDER BY 1",
                    )
                    .fetch_all(&pool)
                    .await
                    .unwrap()
                }
            };
            if swaps {
                outside("2000-01-01").await;
            }
            let finish = env.run_to_end(run_id, 2).await;
            assert_eq!(finish, Finish::Applied, "{what}");
            assert!(
                env.not_applied_exactly_once(run_id).await.is_empty(),
                "{what}"
            );
            assert_eq!(
                env.ship_revenue_structure().await,
                built,
                "{what}: after the run"
            );
            // merge counts the rows it inserted apart from those it updated.
            if strategy == "merge" {
                let (inserted, rewritten): (i64, i64) = sqlx::query_as(
                    "SELECT sum(rows_inserted)::bigint, sum(rows_updated)::bigint FROM backfill.batches WHERE run_id = $1",
                )
                .bind(run_id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
                assert_eq!((inserted, rewritten), (deleted, updated), "{what}");
            }

            env.validate_and_approve(run_id).await;
            read_through(&env, &format!("{what}: cutover"), async {
                cutover::cutover(&env.pool, run_id, "alice", LOCK)
                    .await
                    .unwrap()
            })
            .await;
            assert_eq!(
                env.ship_revenue_wrong("l_shipdate < '1999-01-01'").await,
                0,
                "{what}: differs from the recomputation"
            );
            if swaps {
                assert_eq!(
                    live_rows().await,
                    ["2000-01-01"],
                    "{what}: a live write dropped"
                );
                outside("2000-01-02").await;
            }
            assert_eq!(
                env.ship_revenue_structure().await,
                built,
                "{what}: after cutover"
            );

            let roll_back = async {
                rollback::rollback(&env.pool, run_id, "alice", RollbackOptions::default())
                    .await
                    .unwrap()
            };
            // A swap back is one transaction; the other strategies restore
            // batch by batch, so a reader sees them one at a time.
            if strategy.ends_with("-swap") || strategy == "parallel-version" {
                read_through(&env, &format!("{what}: rollback"), roll_back).await;
            } else {
                roll_back.await;
            }
            assert_eq!(
                env.ship_revenue_changes("l_shipdate < '1999-01-01'").await,
                0,
                "{what}: rollback is not exact"
            );
            if swaps {
                assert_eq!(
                    live_rows().await,
                    ["2000-01-01", "2000-01-02"],
                    "{what}: rollback dropped a write made since cutover"
                );
            }
            assert_eq!(
                env.ship_revenue_structure().await,
                built,
                "{what}: after rollback"
            );
            env.cleanup().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swap_refuses_a_table_built_unlike_the_target() {
    let env = TestEnv::new(0.01).await;
    env.build_partitioned_ship_revenue(Partitioning::ByShipDate)
        .await;
    let text = ship_revenue::brief("staging-swap", "delete", "")
        .replace("step = \"1 month\"", "step = \"1 year\"");
    let (run_id, ..) = env.record_run(&text).await;
    assert_eq!(env.run_to_end(run_id, 2).await, Finish::Applied);
    env.validate_and_approve(run_id).await;
    // The target gains an index after the staging table was built: swapping
    // the staging table in would drop it.
    sqlx::query("CREATE INDEX ship_revenue_lines ON tpch.ship_revenue (lines)")
        .execute(&env.pool)
        .await
        .unwrap();
    let structure = env.ship_revenue_structure().await;
    let refused = cutover::cutover(&env.pool, run_id, "alice", LOCK)
        .await
        .unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains("not built like")
            && message.contains("(lines)")
            && message.contains("Nothing was swapped"),
        "{message}"
    );
    assert_eq!(env.ship_revenue_structure().await, structure);
    assert_eq!(env.ship_revenue_changes("true").await, 0, "nothing exposed");
    env.cleanup().await;
}

/// The brief of a partition-overwrite of 1995–98, one batch: exactly the
/// range of partition `tpch.ship_revenue_1995_98`.
fn one_partition_brief(filter: &str) -> String {
    ship_revenue::brief("partition-overwrite", "delete", filter)
        .replace("start = \"1992-01-01\"", "start = \"1995-01-01\"")
        .replace("step = \"1 month\"", "step = \"4 years\"")
}

/// Who may read a partition, its comment and its owner.
async fn access(env: &TestEnv, partition: &str) -> (Option<String>, Option<String>, String) {
    sqlx::query_as(
        "SELECT relacl::text, obj_description(oid, 'pg_class'), pg_get_userbyid(relowner)::text
           FROM pg_class WHERE oid = $1::regclass",
    )
    .bind(partition)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_overwrite_exchanges_a_partition_that_is_one_batch() {
    let env = TestEnv::new(0.01).await;
    env.build_partitioned_ship_revenue(Partitioning::ByShipDate)
        .await;
    sqlx::raw_sql(
        "UPDATE tpch.ship_revenue SET revenue = revenue + 1 WHERE extract(day FROM l_shipdate) = 1;
         COMMENT ON TABLE tpch.ship_revenue_1995_98 IS 'shipped 1995 to 1998';
         GRANT SELECT ON tpch.ship_revenue_1995_98 TO PUBLIC;",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    env.copy_ship_revenue().await;
    let built = env.ship_revenue_structure().await;
    let partition = "tpch.ship_revenue_1995_98";
    let access_before = access(&env, partition).await;
    let text = one_partition_brief("");

    // The plan says which partitions the scope writes to, and that this one is
    // exchanged whole.
    let brief = backfill_shared::brief::Brief::parse(&text).unwrap();
    let (plan, ..) = backfill_coordinator::plan::plan(&env.pool, &brief)
        .await
        .unwrap();
    let layout = plan.partitions.as_ref().expect("a partitioned target");
    let touched: Vec<(&str, bool)> = layout
        .touched()
        .map(|p| (p.name.as_str(), p.aligned && p.obstacle.is_none()))
        .collect();
    assert_eq!(touched, [(partition, true)]);
    let rendered = plan.render();
    assert!(
        rendered.contains("1 of 1 partition(s)") && rendered.contains("exchanged whole"),
        "{rendered}"
    );

    // The run exchanges the partition in one transaction: a reader sees the
    // old partition or the new one.
    let (run_id, ..) = env.record_run(&text).await;
    let finish = read_through(&env, "the exchange", env.run_to_end(run_id, 2)).await;
    assert_eq!(finish, Finish::Applied);
    let period = "l_shipdate >= '1995-01-01' AND l_shipdate < '1999-01-01'";
    assert_eq!(env.ship_revenue_wrong(period).await, 0);
    assert!(
        env.ship_revenue_wrong("true").await > 0,
        "outside the scope stays as it was"
    );
    assert_eq!(
        env.ship_revenue_changes(&format!("NOT ({period})")).await,
        0
    );
    assert_eq!(env.ship_revenue_structure().await, built, "after the run");
    assert_eq!(access(&env, partition).await, access_before);
    let applied = backfill_shared::control::batches::applied(&env.pool, run_id, 0)
        .await
        .unwrap()
        .unwrap();
    let exchange = applied
        .checks
        .exchange
        .expect("the batch exchanged its partition");
    assert_eq!(exchange.partition, partition);
    let kept = exchange.kept_as.expect("the old partition is kept");
    let kept_rows: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {kept}")))
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        (applied.rows.deleted, applied.rows.inserted),
        (kept_rows, exchange.rows)
    );
    assert_eq!(applied.checks.unmatched.range_rows, kept_rows);

    env.validate_and_approve(run_id).await;
    cutover::cutover(&env.pool, run_id, "alice", LOCK)
        .await
        .unwrap();
    read_through(&env, "the exchange back", async {
        rollback::rollback(&env.pool, run_id, "alice", RollbackOptions::default())
            .await
            .unwrap()
    })
    .await;
    assert_eq!(
        env.ship_revenue_changes("true").await,
        0,
        "rollback is not exact"
    );
    assert_eq!(env.ship_revenue_structure().await, built, "after rollback");
    assert_eq!(access(&env, partition).await, access_before);
    let left: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&kept)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(!left, "the kept partition is back in place");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mis_scoped_exchange_halts_and_exchanges_back() {
    let env = TestEnv::new(0.01).await;
    env.build_partitioned_ship_revenue(Partitioning::ByShipDate)
        .await;
    let (run_id, ..) = env
        .record_run(&one_partition_brief(" AND l_shipmode = 'AIR'"))
        .await;
    let Finish::Halted(reason) = env.run_to_end(run_id, 1).await else {
        panic!("a partition exchanged with most of its rows missing must halt the run")
    };
    assert!(reason.contains("max_unmatched_pct"), "{reason}");
    assert!(env.ship_revenue_changes("true").await > 0);
    // A later write to the exchanged partition is a conflict rollback names.
    sqlx::query("UPDATE tpch.ship_revenue SET lines = lines + 1 WHERE l_shipdate = '1996-03-01'")
        .execute(&env.pool)
        .await
        .unwrap();
    let refused = rollback::rollback(&env.pool, run_id, "alice", RollbackOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("partition tpch.ship_revenue_1995_98"),
        "{refused}"
    );
    env.rollback_overwriting(run_id).await;
    assert_eq!(env.ship_revenue_changes("true").await, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exchange_refuses_a_source_that_breaks_the_grain() {
    // A source grouped too finely (one row per return flag) repeats keys; one
    // that reaches back before its lower bound yields rows outside the partition.
    for (fault, expected) in [
        (
            "GROUP BY 1, 2",
            "GROUP BY 1, 2, l_returnflag",
            "duplicate grain",
        ),
        (
            "l_shipdate >= $1",
            "l_shipdate >= $1 - 400",
            "outside [1995-01-01, 1999-01-01)",
        ),
    ]
    .map(|(from, to, expected)| ((from, to), expected))
    {
        let env = TestEnv::new(0.01).await;
        env.build_partitioned_ship_revenue(Partitioning::ByShipDate)
            .await;
        let text = one_partition_brief("").replace(fault.0, fault.1);
        let (run_id, ..) = env.record_run(&text).await;
        let Finish::Halted(reason) = env.run_to_end(run_id, 1).await else {
            panic!("{expected}: the run must halt")
        };
        assert!(reason.contains(expected), "{expected}: {reason}");
        assert_eq!(
            env.ship_revenue_changes("true").await,
            0,
            "{expected}: nothing written"
        );
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'bf\\_%\\_b0\\_%'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert_eq!(left, 0, "{expected}: no table left behind");
        env.cleanup().await;
    }
}
