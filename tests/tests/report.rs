//! The stakeholders' report: its figures equal direct SQL on the tables, it names
//! who accepted what, and the HTML version renders in headless Chromium with its
//! chart visible.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::lifecycle::cutover;
use backfill_coordinator::run::Finish;
use backfill_coordinator::{report, resume};
use backfill_tests::TestEnv;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_report_matches_the_tables_and_renders_with_its_chart() {
    let env = TestEnv::new(0.01).await;
    env.keep_pre_run_copy().await;
    let text = backfill_coordinator::demo::with_max_change_pct(&env.brief(8, 2).await, 10);
    let (run_id, ..) = env.record_run(&text).await;
    let workers = env.workers(2).await;
    assert!(matches!(
        env.drive_in_background(run_id).await.unwrap().unwrap(),
        Finish::Halted(_)
    ));
    resume::resume(
        &env.pool,
        run_id,
        "alice",
        Some("refunds were never subtracted"),
    )
    .await
    .unwrap();
    assert_eq!(
        env.drive_in_background(run_id).await.unwrap().unwrap(),
        Finish::Applied
    );
    workers.stop().await;
    env.validate_and_approve(run_id).await;
    cutover::cutover(&env.pool, run_id, "alice", Duration::from_secs(5))
        .await
        .unwrap();

    let r = report::gather(&env.pool, run_id).await.unwrap();
    // Every metric figure equals direct SQL on the pre-run copy and the table now.
    let direct: Vec<(String, f64, f64)> = sqlx::query_as(
        "SELECT g, coalesce(b, 0), coalesce(a, 0) FROM
           (SELECT date_trunc('year', o_orderdate)::text g, sum(net_revenue)::float8 b FROM tpch.pre_run GROUP BY 1) x
           FULL JOIN
           (SELECT date_trunc('year', o_orderdate)::text g, sum(net_revenue)::float8 a FROM tpch.order_revenue GROUP BY 1) y
           USING (g) ORDER BY g",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(r.metrics.len(), direct.len());
    for (m, (group, before, after)) in r.metrics.iter().zip(&direct) {
        assert_eq!(&m.group, group);
        assert!(
            (m.before - before).abs() < 0.01,
            "{group}: before {} vs {before}",
            m.before
        );
        assert!(
            (m.after - after).abs() < 0.01,
            "{group}: after {} vs {after}",
            m.after
        );
    }
    let rows: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE p.net_revenue IS DISTINCT FROM t.net_revenue OR p.gross IS DISTINCT FROM t.gross
                                  OR p.line_count IS DISTINCT FROM t.line_count),
                (SELECT count(*) FROM tpch.order_revenue)
           FROM tpch.pre_run p JOIN tpch.order_revenue t USING (o_orderkey)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(r.batches.rows.updated, rows.0, "rows updated");
    assert_eq!(r.batches.rows.source, rows.1, "rows from the source");
    assert_eq!(r.approved.as_ref().map(|a| a.0.as_str()), Some("bob"));
    assert_eq!(r.accepted_breaches.len(), 1);
    assert_eq!(r.refreshed, ["tpch.monthly_revenue"]);
    assert!(
        r.accepted_breaches[0].2.contains("net revenue"),
        "the accepted limits by name: {:?}",
        r.accepted_breaches
    );

    let md = r.markdown();
    for needle in [
        "Refunds",
        "alice / bob",
        "refunds were never subtracted",
        "monthly_revenue",
        "freshness",
        &r.brief_hash,
        // Groups in the form their date_trunc suggests; keys are not a period.
        "| net revenue | 1992 |",
        "| Keys | o_orderkey from 1 to",
        "- tpch.monthly_revenue",
        "strategy: merge",
    ] {
        assert!(md.contains(needle), "the report lacks {needle:?}:\n{md}");
    }

    // The HTML renders in headless Chromium, and the chart's bars show.
    let dir = std::env::temp_dir().join(format!("bf-report-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let html = dir.join("report.html");
    let png = dir.join("report.png");
    std::fs::write(&html, r.html()).unwrap();
    let chromium = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1000,3200")
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium is needed for this test: bash deploy/install-test-tools.sh");
    assert!(
        png.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&chromium.stderr)
    );
    // "after" bars are #0969da; count pixels of that colour.
    let blue = backfill_tests::count_pixels(&png, [0x09, 0x69, 0xda]);
    assert!(
        blue > 500,
        "the chart's bars are not visible in the screenshot ({blue} blue pixels)"
    );
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}
