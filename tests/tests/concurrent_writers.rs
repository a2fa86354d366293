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
#[derive(Debug, Clone, Copy, Default)]
struct Written {
    /// Transactions committed.
    writes: u64,
    /// Of those, the ones that waited for a batch (half a second or more: a
    /// slowed batch holds what it locks for a second).
    waited: u64,
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

/// Runs `rounds` runs of the slowed demo brief, as `prepare` makes it, beside
/// the pipeline; each must end in the state a serial order gives.
async fn beside_the_pipeline<F>(rounds: u32, workers: Workers, meeting: Meeting, prepare: F)
where
    F: AsyncFn(&TestEnv, String) -> String,
{
    for round in 0..rounds {
        let env = TestEnv::new(0.01).await;
        // Slowed batches: each statement's snapshot is a second old when it
        // writes, so the pipeline commits inside it.
        let text = prepare(&env, env.slow_brief(8, 2, 1.0).await).await;
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
        let Written { writes, waited } = writer.await.unwrap();
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
        assert_eq!(
            env.differences().await,
            0,
            "round {round}: after {writes} pipeline writes the target is no serial order's end state"
        );
        env.cleanup().await;
        if let Some(logins) = logins {
            logins.drop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_beside_the_pipeline_ends_in_a_serial_state() {
    beside_the_pipeline(
        rounds(5),
        Workers::Administrator,
        Meeting::Aside,
        async |_, text| text,
    )
    .await;
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
    beside_the_pipeline(
        rounds(3),
        Workers::Administrator,
        Meeting::Aside,
        async |env, text| partitioned(env, &text, 1).await,
    )
    .await;
}

/// A plain target: each batch deletes its range's rows and inserts the
/// source's, the table locked against the pipeline's writes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_overwrite_of_a_plain_table_beside_the_pipeline_ends_in_a_serial_state() {
    beside_the_pipeline(
        rounds(3),
        Workers::Administrator,
        Meeting::Waits,
        async |_, text| overwriting(&text),
    )
    .await;
}

/// Partitions of two batches each: a batch deletes and inserts the rows of
/// its range, locking the partition it meets (as the administrator) or, as a
/// worker granted only the table, the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_overwrite_sharing_partitions_beside_the_pipeline_ends_in_a_serial_state() {
    beside_the_pipeline(
        rounds(2),
        Workers::Administrator,
        Meeting::Waits,
        async |env, text| partitioned(env, &text, 2).await,
    )
    .await;
    beside_the_pipeline(
        rounds(2),
        Workers::Role,
        Meeting::Waits,
        async |env, text| partitioned(env, &text, 2).await,
    )
    .await;
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
    use backfill_shared::control::batches::{self, Claim};
    use backfill_worker::apply::{self, BatchWork, WritePlan};
    let image = backfill_shared::control::runs::load(&env.pool, run_id)
        .await
        .unwrap()
        .image_table;
    let image = image
        .as_deref()
        .and_then(backfill_shared::sql::TableName::parse);
    let types = apply::column_types(&mut env.pool.acquire().await.unwrap(), &brief.scope.target)
        .await
        .unwrap();
    let plan = WritePlan::new(brief, &brief.scope.target, true, &types, image.as_ref());
    let bounds = (batch.lo.to_string(), batch.hi.to_string());
    let Claim::Granted { fence } =
        batches::claim(pool, run_id, batch.no, (&bounds.0, &bounds.1), "w")
            .await
            .unwrap()
    else {
        panic!("claim refused")
    };
    let work = BatchWork {
        run_id,
        batch_no: batch.no,
        lo: batch.lo,
        hi: batch.hi,
        fence,
    };
    let (mut tx, _) = apply::prepare(pool, &plan, work, "w").await.unwrap();
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
