//! (i) partition-overwrite of a partitioned fact table: TPC-H's line items
//! (6 M rows at scale 1) in `tpch.lineitem_by_year`, range-partitioned by ship
//! year, two years rewritten from `tpch.lineitem`:
//!
//! - the baseline: the hand-written exchange a careful operator would type —
//!   per year, a table like the partition with a `CHECK` on the year, filled
//!   by the source, then detach, rename (the old partition kept), attach —
//!   two years on two connections;
//! - Backfill with batches of one year each, so each batch builds its
//!   partition whole and exchanges it (every default guard on, the old
//!   partition kept as the before-image);
//! - Backfill with half-year batches, which cannot exchange a partition and
//!   delete and insert rows (before-images on).

use super::Line;
use super::cases::{backfill_run, exec, median, stop, worker};
use crate::{SCHEMA, TestEnv};
use sqlx::{AssertSqlSafe, PgPool};
use std::time::{Duration, Instant};

/// The years rewritten.
const YEARS: [i32; 2] = [1995, 1996];

/// The line items' columns, in table order.
const COLUMNS: &str = "l_orderkey, l_partkey, l_suppkey, l_linenumber, l_quantity, l_extendedprice, \
                       l_discount, l_tax, l_returnflag, l_linestatus, l_shipdate, l_commitdate, \
                       l_receiptdate, l_shipinstruct, l_shipmode, l_comment";

/// The source: the line items of `[$1, $2)` with their line status
/// recomputed by TPC-H's rule (open when shipped after 1995-06-17).
const SOURCE: &str =
    "SELECT l_orderkey, l_partkey, l_suppkey, l_linenumber, l_quantity, l_extendedprice,
       l_discount, l_tax, l_returnflag,
       (CASE WHEN l_shipdate > DATE '1995-06-17' THEN 'O' ELSE 'F' END)::char(1) AS l_linestatus,
       l_shipdate, l_commitdate, l_receiptdate, l_shipinstruct, l_shipmode, l_comment
  FROM tpch.lineitem
 WHERE l_shipdate >= $1 AND l_shipdate < $2";

/// Builds the partitioned table: a partition per ship year, and the open ends.
async fn build(pool: &PgPool) {
    let mut ddl = format!(
        "DROP TABLE IF EXISTS {SCHEMA}.lineitem_by_year;
         CREATE TABLE {SCHEMA}.lineitem_by_year (LIKE {SCHEMA}.lineitem INCLUDING DEFAULTS,
             PRIMARY KEY (l_orderkey, l_linenumber, l_shipdate)) PARTITION BY RANGE (l_shipdate);
         CREATE TABLE {SCHEMA}.lineitem_early PARTITION OF {SCHEMA}.lineitem_by_year FOR VALUES FROM (MINVALUE) TO ('1992-01-01');
         CREATE TABLE {SCHEMA}.lineitem_late PARTITION OF {SCHEMA}.lineitem_by_year FOR VALUES FROM ('1999-01-01') TO (MAXVALUE);"
    );
    for year in 1992..1999 {
        ddl.push_str(&format!(
            "CREATE TABLE {SCHEMA}.lineitem_{year} PARTITION OF {SCHEMA}.lineitem_by_year
               FOR VALUES FROM ('{year}-01-01') TO ('{next}-01-01');",
            next = year + 1
        ));
    }
    sqlx::raw_sql(AssertSqlSafe(ddl))
        .execute(pool)
        .await
        .expect("create tpch.lineitem_by_year");
    exec(
        pool,
        &format!("INSERT INTO {SCHEMA}.lineitem_by_year ({COLUMNS}) SELECT {COLUMNS} FROM {SCHEMA}.lineitem"),
    )
    .await;
    exec(pool, &format!("VACUUM ANALYZE {SCHEMA}.lineitem_by_year")).await;
}

/// The brief, batches of `step`.
fn brief(step: &str) -> String {
    let columns: Vec<String> = COLUMNS
        .split(", ")
        .map(str::trim)
        .filter(|c| !["l_orderkey", "l_linenumber", "l_shipdate"].contains(c))
        .map(|c| format!("{c:?}"))
        .collect();
    format!(
        r#"[brief]
name = "lineitem-price"
reason = "Line status recomputed by the TPC-H rule."
owner = "alice"
reviewer = "bob"
risk = "metric-changing"

[scope]
target = "{SCHEMA}.lineitem_by_year"
key = ["l_orderkey", "l_linenumber", "l_shipdate"]
columns = [{columns}]
batch_by = {{ column = "l_shipdate", start = "{first}-01-01", end = "{end}-01-01", step = "{step}" }}
source = """
{SOURCE}
"""

[write]
strategy = "partition-overwrite"
on_missing = "delete"
snapshot = true

[dependencies]
downstream = []
stakeholders = ["finance"]

[validation]
max_duplicate_keys = 0

[limits]
max_in_flight = 4

[rollback]
plan = "Each exchanged partition is kept and exchanged back; row batches restore their before-images."
retain_days = 1
"#,
        columns = columns.join(", "),
        first = YEARS[0],
        end = YEARS[YEARS.len() - 1] + 1,
    )
}

/// The hand-written exchange of every year, a connection per year.
async fn by_hand(pool: &PgPool) -> Duration {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for year in YEARS {
        let pool = pool.clone();
        tasks.spawn(async move {
            let (part, new) = (
                format!("{SCHEMA}.lineitem_{year}"),
                format!("{SCHEMA}.lineitem_{year}_new"),
            );
            let (lo, hi) = (format!("'{year}-01-01'"), format!("'{}-01-01'", year + 1));
            let source = SOURCE.replace("$1", &format!("{lo}::date")).replace("$2", &format!("{hi}::date"));
            sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE TABLE {new} (LIKE {part} INCLUDING ALL);
                 ALTER TABLE {new} ADD CONSTRAINT year_bounds CHECK (l_shipdate IS NOT NULL AND l_shipdate >= {lo} AND l_shipdate < {hi});
                 INSERT INTO {new} ({COLUMNS}) {source};
                 BEGIN;
                 SET LOCAL lock_timeout = '5s';
                 ALTER TABLE {SCHEMA}.lineitem_by_year DETACH PARTITION {part};
                 ALTER TABLE {part} RENAME TO lineitem_{year}_old;
                 ALTER TABLE {new} RENAME TO lineitem_{year};
                 ALTER TABLE {SCHEMA}.lineitem_by_year ATTACH PARTITION {part} FOR VALUES FROM ({lo}) TO ({hi});
                 ALTER TABLE {part} DROP CONSTRAINT year_bounds;
                 COMMIT;"
            )))
            .execute(&pool)
            .await
            .expect("the hand-written exchange");
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a hand-written exchange panicked");
    }
    let took = started.elapsed();
    for year in YEARS {
        exec(pool, &format!("DROP TABLE {SCHEMA}.lineitem_{year}_old")).await;
    }
    took
}

/// A Backfill run of `text`, then its rollback copies dropped. Returns how
/// long driving took and how many partitions its batches exchanged.
async fn backfill(env: &TestEnv, text: &str) -> (Duration, usize) {
    let (took, run_id) = backfill_run(env, text).await;
    let exchanged = backfill_shared::control::batches::exchanges(&env.pool, run_id)
        .await
        .expect("read the exchanges")
        .len();
    backfill_coordinator::lifecycle::cleanup::cleanup(&env.pool, run_id, "bench", true)
        .await
        .expect("drop the run's rollback copies");
    (took, exchanged)
}

/// Rows of the rewritten years that differ from the source's.
async fn wrong(pool: &PgPool) -> i64 {
    let (lo, hi) = (
        format!("'{}-01-01'::date", YEARS[0]),
        format!("'{}-01-01'::date", YEARS[YEARS.len() - 1] + 1),
    );
    let source = SOURCE.replace("$1", &lo).replace("$2", &hi);
    sqlx::query_scalar(AssertSqlSafe(format!(
        "WITH fresh AS ({source}),
              now AS (SELECT {COLUMNS} FROM {SCHEMA}.lineitem_by_year WHERE l_shipdate >= {lo} AND l_shipdate < {hi})
         SELECT (SELECT count(*) FROM (SELECT * FROM now EXCEPT ALL SELECT * FROM fresh) a)
              + (SELECT count(*) FROM (SELECT * FROM fresh EXCEPT ALL SELECT * FROM now) b)"
    )))
    .fetch_one(pool)
    .await
    .expect("compare with the source")
}

/// Measures (i) `repeat` times, interleaved; returns its lines.
pub(super) async fn measure(env: &TestEnv, workers: u16, repeat: usize) -> Vec<Line> {
    eprintln!("bench: (i) building tpch.lineitem_by_year …");
    build(&env.pool).await;
    let (mut hand, mut exchange, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    let mut processes = Vec::new();
    for round in 1..=repeat {
        eprintln!("bench: round {round} of {repeat}: (i) by hand, by exchange, row by row …");
        exec(&env.pool, "CHECKPOINT").await;
        hand.push(by_hand(&env.pool).await);
        assert_eq!(
            wrong(&env.pool).await,
            0,
            "the hand-written exchange is wrong"
        );
        processes.extend((0..workers).map(|_| worker(env, 1)));
        for (step, times) in [("1 year", &mut exchange), ("6 months", &mut rows)] {
            exec(&env.pool, "CHECKPOINT").await;
            let (took, exchanged) = backfill(env, &brief(step)).await;
            let expected = if step == "1 year" { YEARS.len() } else { 0 };
            assert_eq!(
                exchanged, expected,
                "batches of {step}: partitions exchanged"
            );
            assert_eq!(
                wrong(&env.pool).await,
                0,
                "batches of {step}: the result is wrong"
            );
            times.push(took);
        }
        stop(&mut processes).await;
    }
    let baseline = median(&hand);
    let (exchange, rows) = (median(&exchange), median(&rows));
    vec![
        Line {
            case: format!(
                "(i) baseline: {} years of tpch.lineitem_by_year exchanged by hand, {} connections",
                YEARS.len(),
                YEARS.len()
            ),
            value: baseline,
            unit: "s",
            ratio: Some(1.0),
            target: None,
        },
        Line {
            case: "(i) Backfill partition-overwrite, one batch per partition: exchanged".into(),
            value: exchange,
            unit: "s",
            ratio: Some(exchange / baseline),
            target: Some((
                "≤ 1.30 × the hand-written exchange".into(),
                exchange / baseline <= 1.30,
            )),
        },
        Line {
            case: format!(
                "(i) Backfill partition-overwrite, half-year batches: row by row ({:.1} × the exchange)",
                rows / exchange
            ),
            value: rows,
            unit: "s",
            ratio: Some(rows / baseline),
            target: None,
        },
    ]
}
