//! A merge and a partition-overwrite (exchanging whole partitions, or
//! deleting and inserting the rows of ranges that share partitions or lie in
//! a plain table) serialise with the daily pipeline: while slowed batches run,
//! a second writer keeps updating orders (their line items and their
//! `order_revenue` row, computed as the backfill computes it, in one
//! transaction) and deleting orders (source and target), in batches already
//! applied, in flight and not yet started. Any serial order of the batches and
//! the pipeline's transactions ends with the target equal to a recomputation
//! from the source as it ends, so that is what every run must reach: no
//! pipeline write overwritten with a value from the source as it was, no
//! deleted order brought back, no pipeline update lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::run::Finish;
use backfill_tests::{TestEnv, finish_within};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The pipeline's update of one order: its line items change, and its
/// revenue row is recomputed the way the backfill's source computes it.
const UPDATE: &str = "
WITH li AS (UPDATE tpch.lineitem SET l_extendedprice = l_extendedprice + 1
             WHERE l_orderkey = $1 RETURNING 1)
SELECT count(*) FROM li";
const RECOMPUTE: &str = "
UPDATE tpch.order_revenue r
   SET (gross, net_revenue, line_count) = (
       SELECT sum(l.l_extendedprice)::numeric(18,2),
              sum(CASE WHEN l.l_returnflag = 'R' THEN 0 ELSE l.l_extendedprice * (1 - l.l_discount) END)::numeric(18,2),
              count(*)::integer
         FROM tpch.lineitem l WHERE l.l_orderkey = r.o_orderkey)
 WHERE r.o_orderkey = $1";

/// Deletes one order from the source and the target.
const DELETE: [&str; 3] = [
    "DELETE FROM tpch.lineitem WHERE l_orderkey = $1",
    "DELETE FROM tpch.orders WHERE o_orderkey = $1",
    "DELETE FROM tpch.order_revenue WHERE o_orderkey = $1",
];

/// What the pipeline did in a round.
#[derive(Debug, Clone, Default)]
struct Written {
    /// Transactions committed.
    writes: u64,
    /// Of those, the ones that waited for a batch (half a second or more: a
    /// slowed batch holds what it locks for a second).
    waited: u64,
    /// The orders it updated or deleted.
    keys: Vec<i64>,
}

/// Writes to random orders until `stop`, as the daily pipeline would.
async fn pipeline(pool: sqlx::PgPool, keys: Vec<i64>, stop: Arc<AtomicBool>) -> Written {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ keys.len() as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // A deleted order is not written again: the pipeline knows it is gone.
    let mut deleted = std::collections::HashSet::new();
    let mut written = Written::default();
    while !stop.load(Ordering::Relaxed) {
        let key = keys[usize::try_from(next() % keys.len() as u64).unwrap()];
        if deleted.contains(&key) {
            continue;
        }
        let started = std::time::Instant::now();
        let mut tx = pool.begin().await.unwrap();
        if next() % 4 == 0 {
            deleted.insert(key);
            for sql in DELETE {
                sqlx::query(sql).bind(key).execute(&mut *tx).await.unwrap();
            }
        } else {
            let _: i64 = sqlx::query_scalar(UPDATE)
                .bind(key)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            sqlx::query(RECOMPUTE)
                .bind(key)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        written.writes += 1;
        written.keys.push(key);
        if started.elapsed() >= std::time::Duration::from_millis(500) {
            written.waited += 1;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    written
}

/// Who the run's workers log in as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workers {
    Administrator,
    /// A login of `backfill_worker`, granted the target's writes as a site
    /// does (deploy/roles.sql): on the table, not on its partitions.
    Role,
}

/// How many rounds a test runs: `BACKFILL_PIPELINE_ROUNDS`, else `default`.
fn rounds(default: u32) -> u32 {
    std::env::var("BACKFILL_PIPELINE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

/// How the pipeline meets a batch writing what it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meeting {
    /// Neither waits for the other for long: the batch writes only the
    /// versions it read, or builds a partition aside.
    Aside,
    /// The pipeline waits for the batch, which locks what it rewrites.
    Waits,
}

/// How a test runs beside the pipeline.
#[derive(Debug, Clone, Copy)]
struct Beside {
    rounds: u32,
    workers: Workers,
    meeting: Meeting,
    /// The run builds beside the target: once it has, it is validated,
    /// approved and cut over, taking the live value of the rows the pipeline
    /// wrote during the build (`--accept-live-changes`).
    cut_over: bool,
}

impl Beside {
    /// `rounds` rounds by the administrator's workers, meeting the pipeline
    /// as `meeting` says, writing the target itself.
    fn new(rounds: u32, meeting: Meeting) -> Self {
        Self {
            rounds,
            workers: Workers::Administrator,
            meeting,
            cut_over: false,
        }
    }
}

/// Runs rounds of the slowed demo brief, as `prepare` makes it, beside the
/// pipeline; each must end in the state a serial order gives.
async fn beside_the_pipeline<F>(beside: Beside, prepare: F)
where
    F: AsyncFn(&TestEnv, String) -> String,
{
    let Beside {
        rounds,
        workers,
        meeting,
        cut_over,
    } = beside;
    for round in 0..rounds {
        let env = TestEnv::new(0.01).await;
        // Slowed batches: each statement's snapshot is a second old when it
        // writes, so the pipeline commits inside it.
        let text = prepare(&env, env.slow_brief(8, 2, 1.0).await).await;
        env.keep_pre_run_copy().await;
        place_rows(&env).await;
        let logins = match workers {
            Workers::Administrator => None,
            Workers::Role => {
                let logins = env.logins(&[("walt", "backfill_worker", false)]).await;
                sqlx::raw_sql(
                    "GRANT INSERT, UPDATE, DELETE ON tpch.order_revenue TO backfill_worker",
                )
                .execute(&env.pool)
                .await
                .unwrap();
                Some(logins)
            }
        };
        let (run_id, ..) = env.record_run(&text).await;
        let keys: Vec<i64> = sqlx::query_scalar("SELECT o_orderkey FROM tpch.order_revenue")
            .fetch_all(&env.pool)
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(pipeline(env.pool.clone(), keys, Arc::clone(&stop)));
        let finish = match &logins {
            None => env.run_to_end(run_id, 2).await,
            Some(logins) => {
                let walt = backfill_worker::InProcessWorkers::start(
                    &env.config.clone().with_database_url(&logins.url("walt")),
                    2,
                    &backfill_worker::WorkerOptions::default(),
                )
                .await
                .expect("workers log in as walt");
                let finish = finish_within(env.drive_in_background(run_id), 120).await;
                walt.stop().await;
                finish
            }
        };
        stop.store(true, Ordering::Relaxed);
        let Written {
            writes,
            waited,
            keys,
        } = writer.await.unwrap();
        assert_eq!(finish, Finish::Applied, "round {round}");
        // The pipeline wrote while batches ran: often, or waiting for them.
        match meeting {
            Meeting::Aside => assert!(
                writes > 50,
                "round {round}: the pipeline wrote only {writes} times"
            ),
            Meeting::Waits => assert!(
                writes > 10 && waited > 0,
                "round {round}: the pipeline wrote {writes} times and waited for a batch {waited} times"
            ),
        }
        if cut_over {
            use backfill_coordinator::lifecycle::cutover;
            env.validate_and_approve(run_id).await;
            let lock = std::time::Duration::from_secs(5);
            // The pipeline wrote inside the scope during the build.
            let refused = cutover::cutover(&env.pool, run_id, "alice", lock)
                .await
                .unwrap_err();
            assert!(
                refused.to_string().contains("--accept-live-changes"),
                "round {round}: {refused}"
            );
            cutover::cutover_with(
                &env.pool,
                run_id,
                "alice",
                lock,
                cutover::Accepting {
                    live_changes: Some("the pipeline's writes are newer"),
                    ..cutover::Accepting::default()
                },
            )
            .await
            .unwrap();
        }
        assert_eq!(
            env.differences().await,
            0,
            "round {round}: after {writes} pipeline writes the target is no serial order's end state"
        );
        if !cut_over {
            rolled_back_around(&env, run_id, &keys, round).await;
        }
        env.cleanup().await;
        if let Some(logins) = logins {
            logins.drop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_beside_the_pipeline_ends_in_a_serial_state() {
    beside_the_pipeline(Beside::new(rounds(5), Meeting::Aside), async |_, text| text).await;
}

/// Records which table (partition) holds each order now, in
/// `tpch.placed` (once before the run, once after).
async fn place_rows(env: &TestEnv) {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS tpch.placed (o_orderkey bigint, part text);
         INSERT INTO tpch.placed SELECT o_orderkey, tableoid::regclass::text FROM tpch.order_revenue",
    )
    .execute(&env.pool)
    .await
    .unwrap();
}

/// Rolls the run back (not overwriting newer rows): rollback spares the rows
/// the pipeline wrote after their batch — or, where a batch exchanged a
/// partition whole, that partition — and names them, keys only, in its
/// refusal and the run log. Every row it does not spare is as before the
/// run, and every row the pipeline wrote is as the pipeline left it.
async fn rolled_back_around(env: &TestEnv, run_id: uuid::Uuid, keys: &[i64], round: u32) {
    use backfill_coordinator::lifecycle::rollback::{self, RollbackOptions};
    place_rows(env).await;
    sqlx::query("CREATE TABLE tpch.at_end AS SELECT * FROM tpch.order_revenue")
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE tpch.pipeline_keys AS SELECT DISTINCT unnest($1::bigint[]) AS o_orderkey",
    )
    .bind(keys)
    .execute(&env.pool)
    .await
    .unwrap();
    let refused = rollback::rollback(&env.pool, run_id, "alice", RollbackOptions::default())
        .await
        .expect_err("the pipeline wrote rows after their batches: rollback spares and names them");
    let message = refused.to_string();
    assert!(
        message.contains("--overwrite-newer"),
        "round {round}: {message}"
    );
    // What rollback named: keys, or partitions exchanged whole.
    let named = "SELECT c ->> 'key' AS key FROM backfill.run_log l, jsonb_array_elements(l.detail -> 'conflicts') c
                  WHERE l.run_id = $1 AND l.event = 'rollback_conflicts'";
    let (restored_wrong, undone, unknown): (i64, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH named AS ({named}),
              spared_key AS (SELECT DISTINCT o_orderkey FROM tpch.placed
                              WHERE 'partition ' || part IN (SELECT key FROM named)),
              allowed AS (SELECT format('(%s)', o_orderkey) AS key FROM tpch.pipeline_keys
                          UNION SELECT 'partition ' || part FROM tpch.placed JOIN tpch.pipeline_keys USING (o_orderkey)),
              row_of AS (SELECT n AS now, b AS before, e AS at_end,
                                p.o_orderkey IS NOT NULL AS piped, s.o_orderkey IS NOT NULL AS in_spared_part
                           FROM (SELECT DISTINCT o_orderkey FROM tpch.placed) k
                           LEFT JOIN tpch.order_revenue n USING (o_orderkey)
                           LEFT JOIN tpch.pre_run b USING (o_orderkey)
                           LEFT JOIN tpch.at_end e USING (o_orderkey)
                           LEFT JOIN tpch.pipeline_keys p USING (o_orderkey)
                           LEFT JOIN spared_key s USING (o_orderkey))
         SELECT count(*) FILTER (WHERE NOT piped AND NOT in_spared_part AND now IS DISTINCT FROM before),
                count(*) FILTER (WHERE piped AND now IS DISTINCT FROM at_end),
                (SELECT count(*) FROM named WHERE key NOT IN (SELECT key FROM allowed))
           FROM row_of"
    )))
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        restored_wrong, 0,
        "round {round}: rows neither the pipeline wrote nor rollback spared are not as before the run"
    );
    assert_eq!(
        undone, 0,
        "round {round}: pipeline writes undone by rollback"
    );
    assert_eq!(
        unknown, 0,
        "round {round}: rollback named keys or partitions the pipeline never wrote"
    );
    let (spared, with_values): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum((detail ->> 'rows')::bigint), 0)::bigint,
                count(*) FILTER (WHERE jsonb_path_exists(detail, '$.conflicts[*].now')
                                    OR jsonb_path_exists(detail, '$.conflicts[*].before'))
           FROM backfill.run_log WHERE run_id = $1 AND event = 'rollback_conflicts'",
    )
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(spared > 0, "round {round}: nothing spared");
    assert_eq!(with_values, 0, "round {round}: row values in the run log");
    assert!(
        message.contains(&format!("{spared} row(s)")),
        "round {round}: {spared} spared, but: {message}"
    );
}

/// The brief as partition-overwrite, its target range-partitioned on
/// `o_orderkey` with one partition per `per_partition` batches.
async fn partitioned(env: &TestEnv, text: &str, per_partition: usize) -> String {
    let text = overwriting(text);
    let brief = backfill_shared::brief::Brief::parse(&text).unwrap();
    let mut ddl = "ALTER TABLE tpch.order_revenue RENAME TO order_revenue_plain;
         CREATE TABLE tpch.order_revenue (LIKE tpch.order_revenue_plain INCLUDING ALL)
             PARTITION BY RANGE (o_orderkey);"
        .to_owned();
    let ranges = brief.scope.batch_by.plan().unwrap();
    for (i, ranges) in ranges.chunks(per_partition).enumerate() {
        ddl.push_str(&format!(
            "CREATE TABLE tpch.order_revenue_{i} PARTITION OF tpch.order_revenue
                 FOR VALUES FROM ({}) TO ({});",
            ranges[0].lo.literal(),
            ranges[ranges.len() - 1].hi.literal()
        ));
    }
    ddl.push_str("INSERT INTO tpch.order_revenue SELECT * FROM tpch.order_revenue_plain;");
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&env.pool)
        .await
        .unwrap();
    text
}

/// The brief as partition-overwrite.
fn overwriting(text: &str) -> String {
    text.replace("strategy = \"merge\"", "strategy = \"partition-overwrite\"")
}

/// The target range-partitioned on the batches' bounds, so each batch
/// exchanges a partition whole: a pipeline write to it during the batch is
/// found once the partition is detached, and the batch runs again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_overwrite_exchanging_partitions_beside_the_pipeline_ends_in_a_serial_state() {
    beside_the_pipeline(Beside::new(rounds(3), Meeting::Aside), async |env, text| {
        partitioned(env, &text, 1).await
    })
    .await;
}

/// A plain target: each batch deletes its range's rows and inserts the
/// source's, the table locked against the pipeline's writes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_overwrite_of_a_plain_table_beside_the_pipeline_ends_in_a_serial_state() {
    beside_the_pipeline(Beside::new(rounds(3), Meeting::Waits), async |_, text| {
        overwriting(&text)
    })
    .await;
}

/// Partitions of two batches each: a batch deletes and inserts the rows of
/// its range, locking the partition it meets (as the administrator) or, as a
/// worker granted only the table, the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_overwrite_sharing_partitions_beside_the_pipeline_ends_in_a_serial_state() {
    beside_the_pipeline(Beside::new(rounds(2), Meeting::Waits), async |env, text| {
        partitioned(env, &text, 2).await
    })
    .await;
    beside_the_pipeline(
        Beside {
            workers: Workers::Role,
            ..Beside::new(rounds(2), Meeting::Waits)
        },
        async |env, text| partitioned(env, &text, 2).await,
    )
    .await;
}

/// Staging-swap and parallel-version build beside the target while the
/// pipeline writes to it, batches applied and not: cutover carries the
/// pipeline's writes into the table it swaps in, its deletions included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_build_beside_the_pipeline_cuts_over_to_a_serial_state() {
    for strategy in ["staging-swap", "parallel-version"] {
        beside_the_pipeline(
            Beside {
                cut_over: true,
                ..Beside::new(rounds(2), Meeting::Aside)
            },
            async |_, text| {
                // The pipeline deletes orders: the demo's row count no longer holds.
                text.replace(
                    "strategy = \"merge\"",
                    &format!("strategy = \"{strategy}\""),
                )
                .lines()
                .filter(|l| !l.starts_with("expected_rows"))
                .map(|l| format!("{l}\n"))
                .collect()
            },
        )
        .await;
    }
}

/// The tables batch `no` of the run holds in `SHARE ROW EXCLUSIVE` mode once
/// prepared (its transaction still open) on `pool`, and whether a pipeline
/// write to an order of each partition goes through meanwhile.
async fn locked_while_prepared(
    env: &TestEnv,
    pool: &sqlx::PgPool,
    run_id: uuid::Uuid,
    brief: &backfill_shared::brief::Brief,
    batch: &backfill_shared::brief::BatchRange,
) -> (Vec<String>, Vec<bool>) {
    let plan = env
        .write_plan(run_id, brief, true, backfill_tests::Images::Kept)
        .await;
    let work = env.claimed(pool, run_id, batch).await;
    let (mut tx, _) = backfill_worker::apply::prepare(pool, &plan, work, "w")
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let locked: Vec<String> = sqlx::query_scalar(
        "SELECT relation::regclass::text FROM pg_locks
          WHERE pid = $1 AND locktype = 'relation' AND mode = 'ShareRowExclusiveLock' ORDER BY 1",
    )
    .bind(pid)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    // One order of each partition, written as the pipeline does, waiting at
    // most a moment for the lock.
    let keys: Vec<i64> = sqlx::query_scalar(
        "SELECT min(o_orderkey) FROM tpch.order_revenue GROUP BY tableoid ORDER BY tableoid::regclass::text",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let mut written = Vec::new();
    for key in keys {
        let mut pipeline = env.pool.begin().await.unwrap();
        sqlx::raw_sql("SET LOCAL lock_timeout = '300ms'")
            .execute(&mut *pipeline)
            .await
            .unwrap();
        written.push(
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "UPDATE tpch.order_revenue SET line_count = line_count WHERE o_orderkey = {key}"
            )))
            .execute(&mut *pipeline)
            .await
            .is_ok(),
        );
    }
    drop(tx);
    (locked, written)
}

/// A batch that deletes and inserts rows locks only the partition its range
/// meets: the pipeline writes to the others meanwhile. A worker granted only
/// the table, not its partitions, locks the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_locks_only_the_partitions_its_range_meets() {
    let env = TestEnv::new(0.01).await;
    let text = partitioned(&env, &env.brief(8, 2).await, 2).await;
    let logins = env.logins(&[("walt", "backfill_worker", false)]).await;
    sqlx::raw_sql("GRANT INSERT, UPDATE, DELETE ON tpch.order_revenue TO backfill_worker")
        .execute(&env.pool)
        .await
        .unwrap();
    let (run_id, brief, batches) = env.record_run(&text).await;
    // Batch 2 lies in the second of the four partitions.
    let (locked, written) =
        locked_while_prepared(&env, &env.pool, run_id, &brief, &batches[2]).await;
    assert_eq!(locked, ["tpch.order_revenue_1"]);
    assert_eq!(written, [true, false, true, true]);

    let (locked, written) =
        locked_while_prepared(&env, logins.pool("walt"), run_id, &brief, &batches[5]).await;
    assert_eq!(
        locked,
        [
            "tpch.order_revenue",
            "tpch.order_revenue_0",
            "tpch.order_revenue_1",
            "tpch.order_revenue_2",
            "tpch.order_revenue_3"
        ]
    );
    assert_eq!(written, [false, false, false, false]);
    env.cleanup().await;
    logins.drop().await;
}
