//! `backfill diff`: a run's diff (from before-images for merge, from the built
//! table for staging-swap) and a diff of two tables equal what direct SQL
//! says — rows only before, only after, changed and unchanged, per column
//! changes, NULLs gained and lost, sums of changes — with inserts, updates,
//! deletes, a text column in a composite key, NULLs, numeric, integer and
//! date columns; two equal tables differ in nothing, one changed row is found.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::diff::{self, Diff, Options};
use backfill_coordinator::run::Finish;
use backfill_tests::{TestEnv, ship_revenue};
use sqlx::Row as _;

fn options(sample: usize) -> Options {
    Options {
        columns: Vec::new(),
        filter: None,
        sample,
        connections: 3,
        progress: false,
    }
}

const KEY: &str = "l_shipdate, l_shipmode";

/// What direct SQL says of `before` against `after` (over the rows `filter` keeps).
#[derive(Debug, PartialEq)]
struct Truth {
    only_before: i64,
    only_after: i64,
    changed: i64,
    unchanged: i64,
    revenue_changed: i64,
    lines_changed: i64,
    revenue_stopped_null: i64,
    revenue_became_null: i64,
    except_before: i64,
    except_after: i64,
}

async fn truth(env: &TestEnv, before: &str, after: &str) -> (Truth, f64) {
    let joined = format!("FROM {before} a JOIN {after} b USING ({KEY})");
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT (SELECT count(*) FROM {before} a WHERE NOT EXISTS (SELECT 1 FROM {after} b WHERE (b.l_shipdate, b.l_shipmode) = (a.l_shipdate, a.l_shipmode))),
                    (SELECT count(*) FROM {after} b WHERE NOT EXISTS (SELECT 1 FROM {before} a WHERE (b.l_shipdate, b.l_shipmode) = (a.l_shipdate, a.l_shipmode))),
                    (SELECT count(*) {joined} WHERE (a.revenue, a.lines) IS DISTINCT FROM (b.revenue, b.lines)),
                    (SELECT count(*) {joined} WHERE (a.revenue, a.lines) IS NOT DISTINCT FROM (b.revenue, b.lines)),
                    (SELECT count(*) {joined} WHERE a.revenue IS DISTINCT FROM b.revenue),
                    (SELECT count(*) {joined} WHERE a.lines IS DISTINCT FROM b.lines),
                    (SELECT count(*) {joined} WHERE a.revenue IS NULL AND b.revenue IS NOT NULL),
                    (SELECT count(*) {joined} WHERE a.revenue IS NOT NULL AND b.revenue IS NULL),
                    (SELECT count(*) FROM (SELECT * FROM {before} EXCEPT ALL SELECT * FROM {after}) x),
                    (SELECT count(*) FROM (SELECT * FROM {after} EXCEPT ALL SELECT * FROM {before}) x),
                    (SELECT sum(b.revenue - a.revenue)::float8 {joined})"
        )))
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let n = |i: usize| row.get::<i64, _>(i);
    (
        Truth {
            only_before: n(0),
            only_after: n(1),
            changed: n(2),
            unchanged: n(3),
            revenue_changed: n(4),
            lines_changed: n(5),
            revenue_stopped_null: n(6),
            revenue_became_null: n(7),
            except_before: n(8),
            except_after: n(9),
        },
        row.get::<Option<f64>, _>(10).unwrap_or(0.0),
    )
}

/// The diff's figures in the shape of [`Truth`].
fn figures(d: &Diff) -> Truth {
    let revenue = &d.columns["revenue"];
    Truth {
        only_before: d.rows_only_before,
        only_after: d.rows_only_after,
        changed: d.rows_changed,
        unchanged: d.rows_unchanged,
        revenue_changed: revenue.changed,
        lines_changed: d.columns["lines"].changed,
        revenue_stopped_null: revenue.stopped_null,
        revenue_became_null: revenue.became_null,
        except_before: d.rows_only_before + d.rows_changed,
        except_after: d.rows_only_after + d.rows_changed,
    }
}

/// Breaks `tpch.ship_revenue` every way a run repairs: changed values, NULLs,
/// missing rows and rows the source does not yield; then keeps the copy.
async fn break_every_way(env: &TestEnv) {
    env.build_ship_revenue().await;
    sqlx::raw_sql(
        "UPDATE tpch.ship_revenue SET revenue = revenue + 1 WHERE l_shipmode = 'AIR';
         UPDATE tpch.ship_revenue SET revenue = NULL WHERE l_shipmode = 'MAIL' AND l_shipdate < '1993-01-01';
         UPDATE tpch.ship_revenue SET lines = lines + 1 WHERE l_shipmode = 'SHIP' AND l_shipdate < '1992-06-01';
         DELETE FROM tpch.ship_revenue WHERE l_shipmode = 'RAIL' AND l_shipdate >= '1994-01-01' AND l_shipdate < '1994-03-01';
         INSERT INTO tpch.ship_revenue VALUES ('1995-03-03', 'ZEPPELIN', 10, 1), ('1996-07-07', 'ZEPPELIN', 20, 2);",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    env.copy_ship_revenue().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_runs_diff_from_its_before_images_equals_direct_sql() {
    let env = TestEnv::new(0.01).await;
    break_every_way(&env).await;
    let text = ship_revenue::brief("merge", "delete", "").replace(
        "max_duplicate_keys = 0",
        "max_duplicate_keys = 0\nedge_cases = [[\"1995-03-03\", \"ZEPPELIN\"]]",
    );
    let (run_id, ..) = env.record_run(&text).await;
    assert_eq!(env.run_to_end(run_id, 2).await, Finish::Applied);
    let (expected, sum) = truth(&env, "tpch.ship_revenue_pre", "tpch.ship_revenue").await;
    assert!(
        expected.only_before == 2 && expected.only_after > 0 && expected.changed > 0,
        "{expected:?}"
    );
    let d = diff::run(&env.pool, run_id, &options(5)).await.unwrap();
    assert_eq!(figures(&d), expected, "{}", d.render());
    let revenue = &d.columns["revenue"];
    assert!(
        (revenue.sum_change.unwrap() - sum).abs() < 0.01,
        "{revenue:?} vs {sum}"
    );
    assert!(revenue.max_abs_change.unwrap() > 0.0);
    // Ranges are the run's batches; their counts add up.
    assert_eq!(d.ranges.len(), 84);
    let total: i64 = d.ranges.iter().map(|r| r.changed).sum();
    assert_eq!(total, d.rows_changed);
    let march_1995 = d.ranges.iter().find(|r| r.lo == "1995-03-01").unwrap();
    assert!(
        march_1995.only_before == 1 && march_1995.batch_no == Some(38),
        "{march_1995:?}"
    );
    // The sample: the largest changes first, and the edge case (removed by the run).
    let changed: Vec<_> = d
        .sample
        .iter()
        .filter(|r| r.why == "changed most")
        .collect();
    assert_eq!(changed.len(), 5);
    assert!(changed.windows(2).all(|w| w[0].change >= w[1].change));
    let edge = d.sample.iter().find(|r| r.why == "edge case").unwrap();
    assert_eq!(edge.key, "1995-03-03, ZEPPELIN");
    assert_eq!(edge.before.as_ref().unwrap()["revenue"], 10.0);
    assert!(edge.after.is_none(), "{edge:?}");
    assert!(
        d.render().contains("only before (removed)"),
        "{}",
        d.render()
    );
    // The report says what changed, from the same diff.
    let note = backfill_coordinator::report::gather(&env.pool, run_id)
        .await
        .unwrap()
        .markdown();
    let rows = format!(
        "| Rows | {} changed (lines in {}, revenue in {}), {} removed, {} added, {} unchanged |",
        expected.changed,
        expected.lines_changed,
        expected.revenue_changed,
        expected.only_before,
        expected.only_after,
        expected.unchanged
    );
    assert!(note.contains(&rows), "{rows}\n{note}");

    // The same two states as two tables, with ranges along the key's first
    // column or its text column: the same figures.
    for by in [None, Some("l_shipmode")] {
        let pair = diff::tables(
            &env.pool,
            "tpch.ship_revenue_pre",
            "tpch.ship_revenue",
            &["l_shipdate".into(), "l_shipmode".into()],
            by,
            &options(3),
        )
        .await
        .unwrap();
        assert_eq!(figures(&pair), expected, "by {by:?}: {}", pair.render());
    }
    // --columns and --where narrow both sides.
    let narrowed = diff::run(
        &env.pool,
        run_id,
        &Options {
            columns: vec!["lines".into()],
            // A column the diff does not compare may still narrow it.
            filter: Some("l_shipmode = 'SHIP' AND revenue IS NOT NULL".into()),
            ..options(0)
        },
    )
    .await
    .unwrap();
    assert_eq!(narrowed.columns.keys().collect::<Vec<_>>(), ["lines"]);
    assert_eq!(narrowed.rows_only_before + narrowed.rows_only_after, 0);
    assert_eq!(narrowed.rows_changed, expected.lines_changed);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_staging_swap_runs_diff_and_table_pairs_equal_direct_sql() {
    let env = TestEnv::new(0.01).await;
    break_every_way(&env).await;
    let (run_id, ..) = env
        .record_run(&ship_revenue::brief("staging-swap", "delete", ""))
        .await;
    assert_eq!(env.run_to_end(run_id, 2).await, Finish::Applied);
    let side = backfill_shared::control::runs::load(&env.pool, run_id)
        .await
        .unwrap()
        .side_table
        .unwrap();
    let (expected, _) = truth(&env, "tpch.ship_revenue", &side).await;
    assert!(
        expected.only_before == 2 && expected.changed > 0,
        "{expected:?}"
    );
    let d = diff::run(&env.pool, run_id, &options(3)).await.unwrap();
    assert_eq!(figures(&d), expected, "{}", d.render());
    assert!(d.method.contains("before cutover"), "{}", d.method);

    // Two equal tables differ in nothing: every range matches by checksum.
    // The target against its pre-run copy, as two tables.
    let key = ["l_shipdate".to_owned(), "l_shipmode".to_owned()];
    let options = options(3);
    let pair = || {
        diff::tables(
            &env.pool,
            "tpch.ship_revenue",
            "tpch.ship_revenue_pre",
            &key,
            None,
            &options,
        )
    };
    let same = pair().await.unwrap();
    assert_eq!(
        (
            same.rows_changed,
            same.rows_only_before,
            same.rows_only_after
        ),
        (0, 0, 0)
    );
    assert!(same.sample.is_empty() && same.rows_unchanged > 1000);
    // One changed row is found, with its values side by side.
    sqlx::query("UPDATE tpch.ship_revenue_pre SET lines = lines * 10 WHERE l_shipdate = '1997-05-05' AND l_shipmode = 'TRUCK'")
        .execute(&env.pool)
        .await
        .unwrap();
    let one = pair().await.unwrap();
    assert_eq!(
        (one.rows_changed, one.columns["lines"].changed),
        (1, 1),
        "{}",
        one.render()
    );
    assert_eq!(one.columns["revenue"].changed, 0);
    assert_eq!(one.sample.len(), 1);
    assert_eq!(one.sample[0].key, "1997-05-05, TRUCK");
    // Cut along a numeric column, the ranges come in its order (not as
    // text) and add up to the totals.
    let by_revenue = diff::tables(
        &env.pool,
        "tpch.ship_revenue",
        "tpch.ship_revenue_pre",
        &key,
        Some("revenue"),
        &options,
    )
    .await
    .unwrap();
    assert_eq!(by_revenue.rows_changed, 1, "{}", by_revenue.render());
    let lows: Vec<f64> = by_revenue
        .ranges
        .iter()
        .filter_map(|r| r.lo.parse().ok())
        .collect();
    assert!(
        lows.len() > 100 && lows.windows(2).all(|w| w[0] < w[1]),
        "not in order: {:?} ...",
        &lows[..lows.len().min(20)]
    );
    let counted: i64 = by_revenue
        .ranges
        .iter()
        .map(|r| r.changed + r.unchanged + r.only_before + r.only_after)
        .sum();
    assert_eq!(
        counted,
        by_revenue.rows_changed
            + by_revenue.rows_unchanged
            + by_revenue.rows_only_before
            + by_revenue.rows_only_after
    );
    let (code, stdout, stderr) = env
        .cli(&[
            "diff",
            "--tables",
            "tpch.ship_revenue",
            "tpch.ship_revenue_pre",
            "--key",
            "l_shipdate,l_shipmode",
            "--json",
        ])
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for field in [
        "rows_only_before",
        "rows_only_after",
        "rows_changed",
        "rows_unchanged",
        "columns",
        "ranges",
    ] {
        assert!(json.get(field).is_some(), "{field}: {json}");
    }
    assert_eq!(json["columns"]["lines"]["changed"], 1);
    env.cleanup().await;
}
