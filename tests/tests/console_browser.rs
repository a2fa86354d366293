//! The console in a real browser: Debian's Chromium, driven headless by
//! `playwright-core` (tests/browser/console.mjs), renders the runs page and a live
//! run's page; the batch grid shows applied and pending cells in their colours
//! (from the console's own style sheet: the Content-Security-Policy refuses
//! nothing on the pages), and the page follows the run without a reload.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::console;
use backfill_coordinator::run::Finish;
use backfill_tests::{TestEnv, count_pixels};

/// Applied cells (#1a7f37) and pending ones (#d0d7de).
const APPLIED: [u8; 3] = [0x1a, 0x7f, 0x37];
const PENDING: [u8; 3] = [0xd0, 0xd7, 0xde];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chromium_shows_the_batch_grid_and_the_page_follows_the_run() {
    let env = TestEnv::new(0.01).await;
    let (run_id, ..) = env.record_run(&env.slow_brief(30, 1, 0.4).await).await;
    let addr = console::serve(
        env.pool.clone(),
        env.config.clone(),
        "127.0.0.1:0".parse().unwrap(),
        console::Auth::default(),
    )
    .await
    .unwrap();
    let workers = env.workers(1).await;
    let drive = env.drive_in_background(run_id);

    let dir = std::env::temp_dir().join(format!("bf-console-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/console.mjs");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("http://{addr}"))
        .arg(run_id.to_string())
        .arg(&dir)
        .output()
        .await
        .expect("node is needed for this test: bash deploy/install-test-tools.sh");
    assert!(
        out.status.success(),
        "{} (bash deploy/install-test-tools.sh installs Chromium and playwright-core)\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["sameDocument"], true, "the page reloaded: {seen}");
    assert_eq!(
        seen["refused"],
        serde_json::json!([]),
        "the Content-Security-Policy refused part of a page: {seen}"
    );
    assert!(
        seen["last"].as_u64() > seen["first"].as_u64(),
        "the grid did not follow the run: {seen}"
    );
    assert_eq!(drive.await.unwrap().unwrap(), Finish::Applied);
    workers.stop().await;

    // Both colours show; more cells are applied after than before.
    let before = dir.join("run-before.png");
    let after = dir.join("run-after.png");
    let (applied_before, pending_before) = (
        count_pixels(&before, APPLIED),
        count_pixels(&before, PENDING),
    );
    let applied_after = count_pixels(&after, APPLIED);
    assert!(
        pending_before > 300,
        "no pending cells in the screenshot ({pending_before} px)"
    );
    assert!(
        applied_after > applied_before + 100,
        "applied cells did not grow in the screenshots ({applied_before} → {applied_after} px)"
    );
    assert!(
        count_pixels(&dir.join("runs.png"), APPLIED) > 50,
        "the runs page shows no progress"
    );
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}
