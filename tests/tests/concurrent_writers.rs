//! A merge, and a partition-overwrite exchanging whole partitions, serialise
//! with the daily pipeline: while slowed batches run, a
//! second writer keeps updating orders (their line items and their
//! `order_revenue` row, computed as the backfill computes it, in one
//! transaction) and deleting orders (source and target), in batches already
//! applied, in flight and not yet started. Any serial order of the batches and
//! the pipeline's transactions ends with the target equal to a recomputation
//! from the source as it ends, so that is what every run must reach: no
//! pipeline write overwritten with a value from the source as it was, no
//! deleted order brought back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::run::Finish;
use backfill_tests::TestEnv;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

/// Writes to random orders until `stop`, as the daily pipeline would; counts
/// its transactions.
async fn pipeline(pool: sqlx::PgPool, keys: Vec<i64>, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ keys.len() as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // A deleted order is not written again: the pipeline knows it is gone.
    let mut deleted = std::collections::HashSet::new();
    while !stop.load(Ordering::Relaxed) {
        let key = keys[usize::try_from(next() % keys.len() as u64).unwrap()];
        if deleted.contains(&key) {
            continue;
        }
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
        done.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Runs `rounds` runs of the slowed demo brief, as `prepare` makes it, beside
/// the pipeline; each must end in the state a serial order gives.
async fn beside_the_pipeline<F>(rounds: u32, prepare: F)
where
    F: AsyncFn(&TestEnv, String) -> String,
{
    for round in 0..rounds {
        let env = TestEnv::new(0.01).await;
        // Slowed batches: each statement's snapshot is a second old when it
        // writes, so the pipeline commits inside it.
        let text = prepare(&env, env.slow_brief(8, 2, 1.0).await).await;
        let (run_id, ..) = env.record_run(&text).await;
        let keys: Vec<i64> = sqlx::query_scalar("SELECT o_orderkey FROM tpch.order_revenue")
            .fetch_all(&env.pool)
            .await
            .unwrap();
        let (stop, done) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let writer = tokio::spawn(pipeline(
            env.pool.clone(),
            keys,
            Arc::clone(&stop),
            Arc::clone(&done),
        ));
        let finish = env.run_to_end(run_id, 2).await;
        stop.store(true, Ordering::Relaxed);
        writer.await.unwrap();
        assert_eq!(finish, Finish::Applied, "round {round}");
        let writes = done.load(Ordering::Relaxed);
        assert!(
            writes > 50,
            "round {round}: the pipeline wrote only {writes} times"
        );
        assert_eq!(
            env.differences().await,
            0,
            "round {round}: after {writes} pipeline writes the target is no serial order's end state"
        );
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_beside_the_pipeline_ends_in_a_serial_state() {
    beside_the_pipeline(5, async |_, text| text).await;
}

/// The target range-partitioned on the batches' bounds, so each batch
/// exchanges a partition whole: a pipeline write to it during the batch is
/// found once the partition is detached, and the batch runs again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_overwrite_beside_the_pipeline_ends_in_a_serial_state() {
    beside_the_pipeline(3, async |env, text| {
        let text = text.replace("strategy = \"merge\"", "strategy = \"partition-overwrite\"");
        let brief = backfill_shared::brief::Brief::parse(&text).unwrap();
        let mut ddl = "ALTER TABLE tpch.order_revenue RENAME TO order_revenue_plain;
             CREATE TABLE tpch.order_revenue (LIKE tpch.order_revenue_plain INCLUDING ALL)
                 PARTITION BY RANGE (o_orderkey);"
            .to_owned();
        for (i, range) in brief.scope.batch_by.plan().unwrap().iter().enumerate() {
            ddl.push_str(&format!(
                "CREATE TABLE tpch.order_revenue_{i} PARTITION OF tpch.order_revenue
                     FOR VALUES FROM ({}) TO ({});",
                range.lo.literal(),
                range.hi.literal()
            ));
        }
        ddl.push_str("INSERT INTO tpch.order_revenue SELECT * FROM tpch.order_revenue_plain;");
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&env.pool)
            .await
            .unwrap();
        text
    })
    .await;
}
