//! Validation that halts bad runs: a source that fans out halts within the first
//! batches with the duplicate count in `status` and unapplied ranges untouched; a
//! metric group moving more than `max_change_pct` halts the run, and
//! `resume --accept` finishes it with the acceptance in the run log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::run::Finish;
use backfill_coordinator::{resume, status};
use backfill_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_that_fans_out_halts_with_the_duplicate_count() {
    let env = TestEnv::new(0.01).await;
    env.keep_pre_run_copy().await;
    // Joining line items without grouping: one row per line item, so keys repeat.
    let text = env.brief(20, 2).await;
    let start = text.find("source = \"\"\"").unwrap();
    let end = text[start + 12..].find("\"\"\"").unwrap() + start + 15;
    let fan_out = "SELECT o.o_orderkey, o.o_orderdate, o.o_custkey, l.l_extendedprice::numeric(18,2) AS gross,
       l.l_extendedprice::numeric(18,2) AS net_revenue, 1 AS line_count
  FROM tpch.orders o JOIN tpch.lineitem l ON l.l_orderkey = o.o_orderkey
 WHERE o.o_orderkey >= $1 AND o.o_orderkey < $2";
    let text = format!(
        "{}source = \"\"\"\n{fan_out}\n\"\"\"{}",
        &text[..start],
        &text[end..]
    );
    let (run_id, ..) = env.record_run(&text).await;
    let finish = env.run_to_end(run_id, 1).await;
    let Finish::Halted(reason) = finish else {
        panic!("a fanned-out source must halt the run: {finish:?}")
    };
    assert!(reason.contains("duplicate grain"), "{reason}");

    let status = status::status(&env.pool, run_id).await.unwrap();
    assert_eq!(status.state, "halted");
    assert!(
        status.batches.applied == 0,
        "no batch of a fanned-out source may apply"
    );
    assert!(
        status.batches.failed >= 1 && status.batches.failed <= 2,
        "halts within the first batches"
    );
    let failure = &status.failures[0];
    let count: i64 = failure
        .last_error
        .split("yielded ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        count > 100,
        "the duplicate count is in status: {}",
        failure.last_error
    );
    assert!(status.render().contains("duplicate grain"));
    // Nothing was written: the target is exactly the pre-run copy.
    assert_eq!(env.differs_from_pre_run().await, (0, true));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_metric_moving_too_far_halts_until_accepted() {
    let env = TestEnv::new(0.01).await;
    env.keep_pre_run_copy().await;
    // Refunds move early years' net revenue by about half: far past 10 %.
    let text = backfill_coordinator::demo::with_max_change_pct(&env.brief(10, 1).await, 10);
    let (run_id, ..) = env.record_run(&text).await;
    let workers = env.workers(1).await;
    let finish = env.drive_in_background(run_id).await.unwrap().unwrap();
    let Finish::Halted(reason) = finish else {
        panic!("expected a halt: {finish:?}")
    };
    assert!(
        reason.contains("net revenue") && reason.contains("max_change_pct = 10"),
        "{reason}"
    );

    let status = status::status(&env.pool, run_id).await.unwrap();
    assert!(
        status.batches.applied < 10,
        "the run went on after the breach"
    );
    let breach = &status.breaches[0];
    assert_eq!(breach.breach.limit, "max_change_pct:net revenue");
    assert!(!breach.accepted);
    // The batch's figures equal direct SQL on the pre-run copy and the target.
    let batch =
        backfill_shared::control::batches::applied(&env.pool, run_id, breach.breach.batch_no)
            .await
            .unwrap()
            .expect("the breaching batch is applied");
    let (lo, hi): (String, String) =
        sqlx::query_as("SELECT lo, hi FROM backfill.batches WHERE run_id = $1 AND batch_no = $2")
            .bind(run_id)
            .bind(i64::from(breach.breach.batch_no))
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(!batch.checks.metrics.is_empty());
    for g in &batch.checks.metrics {
        let direct = |table: &'static str| {
            let (pool, group, lo, hi) = (env.pool.clone(), g.group.clone(), lo.clone(), hi.clone());
            async move {
                sqlx::query_scalar::<_, Option<f64>>(sqlx::AssertSqlSafe(format!(
                    "SELECT sum(net_revenue)::float8 FROM tpch.{table}
                      WHERE o_orderkey >= $1::bigint AND o_orderkey < $2::bigint
                        AND date_trunc('year', o_orderdate)::text = $3"
                )))
                .bind(lo)
                .bind(hi)
                .bind(group)
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        };
        let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() < 0.01,
            (a, b) => a == b,
        };
        assert!(
            close(g.before, direct("pre_run").await),
            "before of {}: {:?}",
            g.group,
            g.before
        );
        assert!(
            close(g.after, direct("order_revenue").await),
            "after of {}: {:?}",
            g.group,
            g.after
        );
    }

    // Resuming without explaining is refused; with a reason it finishes.
    let err = resume::resume(&env.pool, run_id, "alice", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--accept"), "{err}");
    resume::resume(
        &env.pool,
        run_id,
        "alice",
        Some("refunds were never subtracted; finance expects the drop"),
    )
    .await
    .unwrap();
    let finish = env.drive_in_background(run_id).await.unwrap().unwrap();
    workers.stop().await;
    assert_eq!(finish, Finish::Applied);
    env.assert_exactly_applied(run_id).await;

    let (actor, reason): (String, String) = sqlx::query_as(
        "SELECT actor, detail->>'reason' FROM backfill.run_log WHERE run_id = $1 AND event = 'breach_accepted'",
    )
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(actor, "alice");
    assert!(reason.contains("finance expects"));
    let status = status::status(&env.pool, run_id).await.unwrap();
    assert!(status.breaches.iter().all(|b| b.accepted));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validate_passes_a_clean_run_and_fails_a_gap_or_a_duplicate() {
    use backfill_coordinator::validate::validate;
    let env = TestEnv::new(0.01).await;
    let (run_id, ..) = env.record_run(&env.brief(8, 4).await).await;
    let workers = env.workers(2).await;
    assert_eq!(
        env.drive_in_background(run_id).await.unwrap().unwrap(),
        Finish::Applied
    );
    workers.stop().await;
    let failed = |checks: &[backfill_coordinator::validate::Check]| {
        checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect::<Vec<_>>()
    };

    let checks = validate(&env.pool, run_id).await.unwrap();
    assert!(
        failed(&checks).is_empty(),
        "{}",
        backfill_coordinator::validate::render(&checks)
    );
    let names: Vec<_> = checks.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "freshness",
            "completeness",
            "uniqueness",
            "referential integrity",
            "unmatched rows",
            "metric reconciliation",
            "downstream metrics",
            "edge cases",
            "table health",
            "query latency"
        ]
    );
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM backfill.validations WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(stored, 10);

    // A batch removed from the ledger by hand is a gap.
    sqlx::query("DELETE FROM backfill.batches WHERE run_id = $1 AND batch_no = 3")
        .bind(run_id)
        .execute(&env.pool)
        .await
        .unwrap();
    let checks = validate(&env.pool, run_id).await.unwrap();
    // The lost batch's figures no longer account for its rows either.
    assert_eq!(failed(&checks), ["freshness", "metric reconciliation"]);
    assert!(checks[0].summary.contains("gap"), "{}", checks[0].summary);

    // A duplicate key inserted by hand (past the dropped constraint) breaks uniqueness.
    sqlx::raw_sql(
        "ALTER TABLE tpch.order_revenue DROP CONSTRAINT order_revenue_pkey CASCADE;
         INSERT INTO tpch.order_revenue SELECT * FROM tpch.order_revenue WHERE o_orderkey = 1;",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let checks = validate(&env.pool, run_id).await.unwrap();
    assert!(
        failed(&checks).contains(&"uniqueness"),
        "{:?}",
        failed(&checks)
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_writes_nothing_and_its_deltas_equal_direct_sql() {
    use backfill_coordinator::sample;
    let env = TestEnv::new(0.01).await;
    let text = env.brief(10, 4).await;
    let brief = backfill_shared::brief::Brief::parse(&text).unwrap();
    let fingerprint = || {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT md5(string_agg(t::text, '|' ORDER BY o_orderkey)) || ':' || count(*) FROM tpch.order_revenue t",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let before = fingerprint().await;
    let (lo, hi) = sample::parse_slice(&brief, "1..3001").unwrap();
    let s = sample::sample(&env.pool, &brief, lo, hi).await.unwrap();
    assert_eq!(fingerprint().await, before, "sample changed the target");
    let objects: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_class WHERE relname = 'bf_sample'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(objects, 0, "the scratch table outlived the sample");

    // Old: the target's slice; new: the fixed figures computed directly.
    let direct: Vec<(String, f64, f64)> = sqlx::query_as(
        "SELECT y, old, new FROM
           (SELECT date_trunc('year', o_orderdate)::text y, sum(net_revenue)::float8 old
              FROM tpch.order_revenue WHERE o_orderkey >= 1 AND o_orderkey < 3001 GROUP BY 1) a
           JOIN
           (SELECT date_trunc('year', d)::text y, sum(net)::float8 new FROM (
               SELECT o.o_orderdate d,
                      sum(CASE WHEN l.l_returnflag = 'R' THEN 0 ELSE l.l_extendedprice * (1 - l.l_discount) END)::numeric(18,2) net
                 FROM tpch.orders o JOIN tpch.lineitem l ON l.l_orderkey = o.o_orderkey
                WHERE o.o_orderkey >= 1 AND o.o_orderkey < 3001
                GROUP BY o.o_orderkey, o.o_orderdate) per_order GROUP BY 1) b
           USING (y) ORDER BY y",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(s.metrics.len(), direct.len());
    for (m, (group, old, new)) in s.metrics.iter().zip(&direct) {
        assert_eq!(&m.group, group);
        assert!(
            (m.old.unwrap() - old).abs() < 0.01,
            "{group}: old {:?} vs {old}",
            m.old
        );
        assert!(
            (m.new.unwrap() - new).abs() < 0.01,
            "{group}: new {:?} vs {new}",
            m.new
        );
    }
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tpch.order_revenue WHERE o_orderkey >= 1 AND o_orderkey < 3001",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((s.rows_old, s.rows_new), (rows, rows));
    assert!(s.rows_changed > 0 && s.rows_changed <= rows);
    assert_eq!(
        s.records.iter().filter(|r| r.why == "changed most").count(),
        5
    );
    let edges: Vec<_> = s
        .records
        .iter()
        .filter(|r| r.why == "edge case")
        .map(|r| r.key.as_str())
        .collect();
    assert_eq!(edges, ["1", "7"], "the edge cases of the brief");
    assert!(
        s.estimated_rows.unwrap() > rows * 5,
        "extrapolated to the whole scope"
    );
    env.cleanup().await;
}

/// The table's health: a merge that grows the target past the brief's
/// `max_size_growth_pct` fails validation saying by how much, until the
/// reviewer accepts it; cutover then gathers fresh statistics (`ANALYZE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_grown_past_its_limit_fails_and_cutover_analyzes_it() {
    use backfill_coordinator::lifecycle::{approve, cutover};
    let env = TestEnv::new(0.01).await;
    // Where pgstattuple is installed, its measure of the bloat too.
    sqlx::raw_sql("CREATE EXTENSION pgstattuple")
        .execute(&env.pool)
        .await
        .unwrap();
    let text = env.brief(6, 2).await.replace(
        "max_duplicate_keys = 0",
        "max_duplicate_keys = 0\nmax_size_growth_pct = 1",
    );
    assert!(text.contains("max_size_growth_pct"), "the demo brief moved");
    let (run_id, brief, _) = env.record_run(&text).await;
    assert_eq!(env.run_to_end(run_id, 2).await, Finish::Applied);
    let checks = backfill_coordinator::validate::validate(&env.pool, run_id)
        .await
        .unwrap();
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
    assert_eq!(
        failed.len(),
        1,
        "{}",
        backfill_coordinator::validate::render(&checks)
    );
    let health = failed[0];
    assert_eq!(health.name, "table health");
    assert!(
        health.summary.starts_with("grew ")
            && health
                .summary
                .ends_with("%, past validation.max_size_growth_pct = 1"),
        "{}",
        health.summary
    );
    // The figures behind it: the updated rows' old versions take room.
    let d = &health.detail;
    let bytes = |k: &str| d[k].as_i64().unwrap();
    assert!(bytes("table_bytes") > bytes("table_bytes_before"), "{d}");
    assert!(d["growth_pct"].as_f64().unwrap() > 1.0, "{d}");
    // The old row versions are what pgstattuple finds reclaimable.
    assert!(bytes("reclaimable_bytes") > 0, "{d}");

    backfill_coordinator::validate::accept(
        &env.reviewer,
        run_id,
        "table health",
        "the old row versions are vacuumed tonight",
    )
    .await
    .unwrap();
    approve::approve(&env.reviewer, run_id, None).await.unwrap();
    let started = chrono::Utc::now() - chrono::Duration::seconds(1);
    let report = cutover::cutover(
        &env.pool,
        run_id,
        "alice",
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    let target = brief.scope.target.to_string();
    assert_eq!(report.analyzed.as_deref(), Some(target.as_str()));
    assert!(report.render().contains(&format!("analyzed {target}")));
    // PostgreSQL's own record of it.
    let mut analyzed = None;
    for _ in 0..100 {
        analyzed = sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT last_analyze FROM pg_stat_user_tables WHERE relid = $1::regclass",
        )
        .bind(&target)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        if analyzed.is_some_and(|at| at >= started) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        analyzed.is_some_and(|at| at >= started),
        "last ANALYZE {analyzed:?}, cutover at {started}"
    );
    env.cleanup().await;
}

/// A dashboard's query, declared with its slowdown limit, is timed before the
/// run and by `validate` on what the run exposes: a correct run passes; the
/// same query after its index was dropped fails, saying only that it is
/// slower than its limit, with the timings in the detail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_query_slowed_by_a_dropped_index_fails_its_latency_check() {
    let env = TestEnv::new(0.01).await;
    sqlx::raw_sql("CREATE INDEX order_revenue_by_customer ON tpch.order_revenue (o_custkey)")
        .execute(&env.pool)
        .await
        .unwrap();
    // One lookup per customer: an index scan each with the index, a scan of
    // the whole table each without it.
    let text = env.brief(6, 2).await.replacen(
        "\n[limits]",
        "\n[[validation.queries]]\nname = \"orders by customer\"\n\
         sql = \"SELECT (SELECT sum(net_revenue) FROM {target} t WHERE t.o_custkey = g) FROM generate_series(1, 300) g\"\n\
         max_slowdown_pct = 300\n\n[limits]",
        1,
    );
    assert!(text.contains("orders by customer"), "the demo brief moved");
    let (run_id, _, _) = env.record_run(&text).await;
    let params: serde_json::Value =
        sqlx::query_scalar("SELECT params FROM backfill.runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let before = &params["queries_before"][0];
    assert_eq!(before["name"], "orders by customer", "{params}");
    assert_eq!(before["runs_ms"].as_array().unwrap().len(), 5, "{before}");
    assert_eq!(env.run_to_end(run_id, 2).await, Finish::Applied);

    let latency = |checks: Vec<backfill_coordinator::validate::Check>| {
        checks
            .into_iter()
            .find(|c| c.name == "query latency")
            .unwrap()
    };
    let check = latency(
        backfill_coordinator::validate::validate(&env.pool, run_id)
            .await
            .unwrap(),
    );
    assert!(
        check.passed && check.summary.starts_with("orders by customer: "),
        "{check:?}"
    );

    sqlx::raw_sql("DROP INDEX tpch.order_revenue_by_customer")
        .execute(&env.pool)
        .await
        .unwrap();
    let check = latency(
        backfill_coordinator::validate::validate(&env.pool, run_id)
            .await
            .unwrap(),
    );
    assert!(!check.passed, "{check:?}");
    assert_eq!(
        check.summary,
        "orders by customer: slower than max_slowdown_pct = 300"
    );
    let median = |at: &serde_json::Value| at[0]["median_ms"].as_f64().unwrap();
    assert!(
        median(&check.detail["now"]) > 4.0 * median(&check.detail["before"]),
        "{}",
        check.detail
    );
    env.cleanup().await;
}
