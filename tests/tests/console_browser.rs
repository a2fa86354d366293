//! The console in a real browser: Debian's Chromium, driven headless by
//! `playwright-core` (tests/browser/console.mjs), renders the runs page and a live
//! run's page; the batch grid shows applied and pending cells in their colours
//! (from the console's own style sheet: the Content-Security-Policy refuses
//! nothing on the pages), and the page follows the run without a reload.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::console;
use backfill_coordinator::run::Finish;
use backfill_shared::control::runs::{self, RunState};
use backfill_tests::{TestEnv, count_pixels};
use serde_json::Value;
use std::time::Duration;

/// Applied cells (#1a7f37) and pending ones (#d0d7de).
const APPLIED: [u8; 3] = [0x1a, 0x7f, 0x37];
const PENDING: [u8; 3] = [0xd0, 0xd7, 0xde];

/// A directory of its own for the test's screenshots.
fn out_dir(env: &TestEnv) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bf-console-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `script` of tests/browser with `args`, the output directory and
/// `more`; what it printed, as JSON.
async fn browse(script: &str, args: &[&str], dir: &std::path::Path) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("browser")
        .join(script);
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .args(&args[..2])
        .arg(dir)
        .args(&args[2..])
        .output()
        .await
        .expect("node is needed for this test: bash deploy/install-test-tools.sh");
    assert!(
        out.status.success(),
        "{} (bash deploy/install-test-tools.sh installs Chromium and playwright-core)\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

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

    let dir = out_dir(&env);
    let seen = browse(
        "console.mjs",
        &[&format!("http://{addr}"), &run_id.to_string()],
        &dir,
    )
    .await;
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

/// The reviewer on a 390 px screen: "Needs you" lists the canary waiting for
/// them; its page leads with who must promote it and the canary's figures;
/// promoted, the page follows the run to its end without a reload, the badge
/// and the actions with it (validate, not yet approve); validated, approve is
/// offered; a cancel asks first; no page is wider than the screen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reviewer_decides_on_a_phone() {
    let env = TestEnv::new(0.01).await;
    let brief = env.slow_brief(12, 1, 0.3).await.replacen(
        "max_in_flight = 1",
        "max_in_flight = 1\ncanary = { batches = 2 }",
        1,
    );
    let (run_id, ..) = env.record_run(&brief).await;
    let addr = console::serve(
        env.pool.clone(),
        env.config.clone(),
        "127.0.0.1:0".parse().unwrap(),
        console::Auth {
            tokens: console::Auth::parse_tokens(TOKENS).unwrap(),
            ..console::Auth::default()
        },
    )
    .await
    .unwrap();
    let workers = env.workers(1).await;
    let drive = env.drive_in_background(run_id);
    let at_canary = tokio::time::timeout(Duration::from_secs(90), async {
        while runs::state(&env.pool, run_id).await.unwrap() != RunState::Canary {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(at_canary.is_ok(), "the run never reached its canary");

    let dir = out_dir(&env);
    let bob = TOKENS
        .split(',')
        .find_map(|t| t.strip_prefix("bob:"))
        .unwrap();
    let seen = browse(
        "decide.mjs",
        &[&format!("http://{addr}"), &run_id.to_string(), bob],
        &dir,
    )
    .await;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    assert_eq!(seen["refused"], serde_json::json!([]), "{seen}");
    let needs = text(&seen["needs"]);
    assert!(needs.contains("promote it"), "{needs}");

    let canary = &seen["canary"];
    let decision = text(&canary["decision"]);
    assert!(
        decision.starts_with("canary")
            && decision.contains("Waiting for bob to promote it. Your decision."),
        "{decision}"
    );
    assert_eq!(canary["batchRows"], 2, "{canary}");
    let live = text(&canary["live"]);
    for figure in [
        "2 of 2 canary batch(es) applied",
        "s per batch",
        "Metrics of the canary batches",
        "Edge cases",
    ] {
        assert!(
            live.contains(figure),
            "{figure:?} not on the canary page: {live}"
        );
    }
    assert_eq!(canary["promote"], 1);
    assert!(
        canary["times"].as_u64() > Some(0),
        "times in the reader's format: {canary}"
    );

    let finished = &seen["finished"];
    assert_eq!(finished["sameDocument"], true, "{finished}");
    assert!(
        text(&finished["decision"]).contains("Waiting for alice or bob to validate it."),
        "{finished}"
    );
    assert_eq!(
        (&finished["validate"], &finished["approve"]),
        (&1.into(), &0.into()),
        "{finished}"
    );
    let validated = &seen["validated"];
    assert!(
        text(&validated["decision"]).contains("Waiting for bob to approve it. Your decision."),
        "{validated}"
    );
    assert_eq!(validated["approve"], 1, "{validated}");
    assert!(
        text(&seen["cancel"]["heading"]).starts_with("Confirm cancel"),
        "{seen}"
    );
    for (page, width) in seen["widths"].as_object().unwrap() {
        assert!(
            width.as_u64() <= Some(390),
            "the {page} page is {width} px wide on a 390 px screen"
        );
    }
    assert_eq!(drive.await.unwrap().unwrap(), Finish::Applied);
    workers.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

const TOKENS: &str = "alice:alice-token-0123456789,bob:bob-token-0123456789abc";
