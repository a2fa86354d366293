//! The figures every batch measures inside its transaction — metric groups
//! before and after, NULLs and orphaned references among the rows it wrote —
//! equal direct SQL over the target before the run and the written table after
//! it, under merge, partition-overwrite and staging-swap, with batches by date
//! (each source row looks up the row it replaces) and, for merge, by key (the
//! statement joins the whole range and measures the metrics after from the
//! rows it returned and the rows it left, deleting or keeping the rows the
//! source no longer yields). The run breaches a `sum` limit, an `avg` limit
//! (not additive) and a reference check at its first batch, halts, and goes on
//! once the breaches are accepted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::resume;
use backfill_coordinator::run::Finish;
use backfill_shared::checks::BatchChecks;
use backfill_shared::control::runs;
use backfill_tests::TestEnv;
use std::collections::BTreeMap;

/// Orders with their customer and a total: every 89th total becomes NULL, every
/// 97th customer one that does not exist, the rest of the totals grow by 10 %.
/// Batched by key, the source no longer yields every 101st order.
const SOURCE: &str = "SELECT o_orderkey, o_orderdate,
       CASE WHEN o_orderkey % 97 = 0 THEN o_custkey + 100000000 ELSE o_custkey END AS o_custkey,
       CASE WHEN o_orderkey % 89 = 0 THEN NULL ELSE (o_totalprice * 1.1)::numeric(18,2) END AS total
  FROM tpch.orders
 WHERE BATCH";

/// How a run is batched: by date into years, or by key into ranges of
/// 10,000 keys (TPC-H's order keys at scale 0.01 run to 60,000).
#[derive(Debug, Clone, Copy)]
struct Batching {
    by: &'static str,
    on_missing: &'static str,
    batches: usize,
}

const BY_DATE: Batching = Batching {
    by: "o_orderdate",
    on_missing: "delete",
    batches: 7,
};

/// `[$1, $2)` of the batch column, as a predicate on `a`.
fn in_batch(by: &str) -> String {
    if by == "o_orderkey" {
        "a.o_orderkey >= $1::bigint AND a.o_orderkey < $2::bigint".into()
    } else {
        "a.o_orderdate >= $1::date AND a.o_orderdate < $2::date".into()
    }
}

fn brief(strategy: &str, batching: Batching) -> String {
    let (batch_by, key, source) = if batching.by == "o_orderkey" {
        (
            r#"{ column = "o_orderkey", start = 1, end = 60001, step = 10000 }"#,
            "o_orderkey",
            SOURCE.replace(
                "BATCH",
                "o_orderkey >= $1 AND o_orderkey < $2 AND o_orderkey % 101 <> 0",
            ),
        )
    } else {
        (
            r#"{ column = "o_orderdate", start = "1992-01-01", end = "1999-01-01", step = "1 year" }"#,
            "o_orderkey",
            SOURCE.replace("BATCH", "o_orderdate >= $1 AND o_orderdate < $2"),
        )
    };
    let on_missing = batching.on_missing;
    format!(
        r#"[brief]
name = "order-facts"
reason = "Recompute order totals."
owner = "alice"
reviewer = "bob"
risk = "metric-changing"

[scope]
target = "tpch.order_facts"
key = ["{key}"]
columns = ["o_orderdate", "o_custkey", "total"]
batch_by = {batch_by}
source = """
{source}
"""

[write]
strategy = "{strategy}"
on_missing = "{on_missing}"
snapshot = true

[dependencies]
downstream = []
stakeholders = ["finance"]

[validation]
max_duplicate_keys = 0
[[validation.metrics]]
name = "total"
expr = "sum(total)"
by = "date_trunc('year', o_orderdate)"
max_change_pct = 5
[[validation.metrics]]
name = "average total"
expr = "avg(total)"
by = "date_trunc('year', o_orderdate)"
max_change_pct = 5
[[validation.references]]
column = "o_custkey"
references = "tpch.customer(c_custkey)"

[limits]
max_in_flight = 1

[rollback]
plan = "Before-images per batch restore every changed row."
retain_days = 14
"#
    )
}

/// `tpch.order_facts` from the orders, and its copy `tpch.order_facts_pre`.
/// Half of the orphans and NULLs the source writes, and some of its new totals,
/// are there already: merge leaves those rows alone.
async fn build(env: &TestEnv) {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS tpch.order_facts, tpch.order_facts_pre;
         CREATE TABLE tpch.order_facts AS
         SELECT o_orderkey, o_orderdate, o_custkey, o_totalprice::numeric(18,2) AS total FROM tpch.orders;
         ALTER TABLE tpch.order_facts ADD PRIMARY KEY (o_orderkey);
         UPDATE tpch.order_facts SET o_custkey = o_custkey + 100000000 WHERE o_orderkey % 97 = 0 AND o_orderkey % 2 = 0;
         UPDATE tpch.order_facts SET total = NULL WHERE o_orderkey % 89 = 0 AND o_orderkey % 2 = 0;
         UPDATE tpch.order_facts SET total = (total * 1.1)::numeric(18,2)
          WHERE o_orderkey % 89 <> 0 AND o_orderkey % 5 = 0;
         ANALYZE tpch.order_facts;
         CREATE TABLE tpch.order_facts_pre AS TABLE tpch.order_facts;",
    )
    .execute(&env.pool)
    .await
    .unwrap();
}

/// A batch's figures, from the ledger, and its bounds.
async fn ledger(env: &TestEnv, run_id: uuid::Uuid) -> Vec<(String, String, BatchChecks)> {
    let rows: Vec<(String, String, sqlx::types::Json<BatchChecks>)> = sqlx::query_as(
        "SELECT lo, hi, checks FROM backfill.batches
          WHERE run_id = $1 AND state = 'applied' ORDER BY batch_no",
    )
    .bind(run_id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    rows.into_iter().map(|(lo, hi, c)| (lo, hi, c.0)).collect()
}

/// Direct SQL: NULL totals among the rows of `[lo, hi)` that `written` holds
/// and the copy did not hold as they are, and orphaned customers among those
/// whose customer the copy did not hold (a reference the batch did not touch
/// is not its doing).
async fn written_figures(
    env: &TestEnv,
    written: &str,
    every_row_written: bool,
    by: &str,
    lo: &str,
    hi: &str,
) -> (i64, i64) {
    // Rows where the copy did not hold these columns as they are.
    let new_or_changed = |columns: &[&str]| {
        if every_row_written {
            return "true".to_owned();
        }
        let of = |side: &str| {
            columns
                .iter()
                .map(|c| format!("{side}.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "NOT EXISTS (SELECT 1 FROM tpch.order_facts_pre b
                          WHERE b.o_orderkey = a.o_orderkey AND ({}) IS NOT DISTINCT FROM ({}))",
            of("b"),
            of("a")
        )
    };
    let row = new_or_changed(&["o_orderdate", "o_custkey", "total"]);
    let customer = new_or_changed(&["o_custkey"]);
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FILTER (WHERE a.total IS NULL AND {row}),
                count(*) FILTER (WHERE {customer} AND NOT EXISTS (SELECT 1 FROM tpch.customer c WHERE c.c_custkey = a.o_custkey))
           FROM {written} a
          WHERE {}",
        in_batch(by)
    )))
    .bind(lo)
    .bind(hi)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// Direct SQL: a metric per group over `[lo, hi)` of `table`.
async fn metric(
    env: &TestEnv,
    table: &str,
    expr: &str,
    by: &str,
    lo: &str,
    hi: &str,
) -> BTreeMap<String, Option<f64>> {
    let rows: Vec<(String, Option<f64>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT date_trunc('year', o_orderdate)::text, ({expr})::float8 FROM {table} a
          WHERE {} GROUP BY 1",
        in_batch(by)
    )))
    .bind(lo)
    .bind(hi)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    rows.into_iter().collect()
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * a.abs().max(1.0),
        (None, None) => true,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_batch_measures_what_direct_sql_finds() {
    let env = TestEnv::new(0.01).await;
    let by_key = |on_missing| Batching {
        by: "o_orderkey",
        on_missing,
        batches: 6,
    };
    for (strategy, batching) in [
        ("merge", BY_DATE),
        ("partition-overwrite", BY_DATE),
        ("staging-swap", BY_DATE),
        ("merge", by_key("delete")),
        ("merge", by_key("keep")),
    ] {
        let by = batching.by;
        build(&env).await;
        let text = brief(strategy, batching);
        let (run_id, ..) = env.record_run(&text).await;
        let Finish::Halted(reason) = env.run_to_end(run_id, 1).await else {
            panic!("{strategy}: the run must halt on its first batch")
        };
        for limit in [
            "max_change_pct:total",
            "max_change_pct:average total",
            "references:o_custkey",
        ] {
            let name = limit.split_once(':').unwrap().1;
            assert!(
                reason.contains(name),
                "{strategy}: {limit} did not halt the run: {reason}"
            );
        }
        assert_eq!(ledger(&env, run_id).await.len(), 1, "{strategy}: {reason}");
        resume::resume(
            &env.pool,
            run_id,
            "alice",
            Some("totals are meant to grow; the test writes NULLs and orphans on purpose"),
        )
        .await
        .unwrap_or_else(|e| panic!("{strategy}: accept: {e}"));
        assert_eq!(
            env.run_to_end(run_id, 1).await,
            Finish::Applied,
            "{strategy}"
        );

        let run = runs::load(&env.pool, run_id).await.unwrap();
        let written = run
            .side_table
            .clone()
            .unwrap_or_else(|| "tpch.order_facts".into());
        let every_row_written = strategy != "merge";
        let batches = ledger(&env, run_id).await;
        assert_eq!(batches.len(), batching.batches, "{strategy} {batching:?}");
        let (mut nulls_seen, mut orphans_seen) = (0, 0);
        for (lo, hi, checks) in &batches {
            let (nulls, orphans) =
                written_figures(&env, &written, every_row_written, by, lo, hi).await;
            assert_eq!(
                checks.nulls,
                vec![
                    ("o_orderdate".to_owned(), 0),
                    ("o_custkey".to_owned(), 0),
                    ("total".to_owned(), nulls)
                ],
                "{strategy} [{lo}, {hi})"
            );
            assert_eq!(
                checks.orphans,
                vec![("o_custkey".to_owned(), orphans)],
                "{strategy} [{lo}, {hi})"
            );
            nulls_seen += nulls;
            orphans_seen += orphans;
            for (name, expr) in [("total", "sum(total)"), ("average total", "avg(total)")] {
                let before = metric(&env, "tpch.order_facts_pre", expr, by, lo, hi).await;
                let after = metric(&env, &written, expr, by, lo, hi).await;
                let measured: Vec<_> = checks.metrics.iter().filter(|g| g.metric == name).collect();
                assert_eq!(
                    measured.len(),
                    before
                        .keys()
                        .chain(after.keys())
                        .collect::<std::collections::BTreeSet<_>>()
                        .len(),
                    "{strategy} {name} [{lo}, {hi}): {measured:?}"
                );
                for g in measured {
                    let (b, a) = (
                        before.get(&g.group).copied().flatten(),
                        after.get(&g.group).copied().flatten(),
                    );
                    assert!(
                        close(g.before, b) && close(g.after, a),
                        "{strategy} {name} {}: ledger {:?} -> {:?}, direct SQL {b:?} -> {a:?}",
                        g.group,
                        g.before,
                        g.after
                    );
                }
            }
        }
        // The figures are not all zero: the source writes NULLs and orphans.
        assert!(
            nulls_seen > 0 && orphans_seen > 0,
            "{strategy}: {nulls_seen} {orphans_seen}"
        );
        // Merge leaves the rows the source reproduces as they are: the
        // pre-existing NULLs and orphans there are not the batches' doing.
        if strategy == "merge" {
            let (all_nulls, all_orphans) =
                written_figures(&env, &written, true, BY_DATE.by, "1992-01-01", "1999-01-01").await;
            assert!(
                nulls_seen < all_nulls && orphans_seen < all_orphans,
                "merge counted untouched rows: {nulls_seen} of {all_nulls} NULLs, {orphans_seen} of {all_orphans} orphans"
            );
        }
        runs::transition(
            &env.pool,
            run_id,
            &[runs::RunState::Applied],
            runs::RunState::Cancelled,
            "test",
            Some("next strategy"),
        )
        .await
        .unwrap();
    }
    env.cleanup().await;
}
