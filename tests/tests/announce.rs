//! `backfill announce`: the note before a run, printed, sent to the webhooks
//! and recorded by brief hash; `run` of a metric-changing brief is refused
//! without one (naming the command), runs once it is announced (the run log
//! links the announcement), and runs unannounced only with a recorded reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_shared::brief::Brief;
use backfill_tests::TestEnv;
use backfill_tests::receiver::Receiver;
use uuid::Uuid;

async fn runs_recorded(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM backfill.runs")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn log_detail(env: &TestEnv, run_id: Uuid, event: &str) -> Option<serde_json::Value> {
    sqlx::query_scalar(
        "SELECT detail FROM backfill.run_log WHERE run_id = $1 AND event = $2 ORDER BY id DESC LIMIT 1",
    )
    .bind(run_id)
    .bind(event)
    .fetch_optional(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_metric_changing_run_is_announced_first_or_says_why_not() {
    let env = TestEnv::new(0.01).await;
    let receiver = Receiver::start().await;
    // A Slack incoming webhook's path is its secret.
    let hook = format!("{}/services/T0AAAA/B0BBBB/SeCrEtHoOk9876", receiver.url);
    let dir = std::env::temp_dir().join(format!("bf-announce-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let text = env.brief(6, 2).await;
    let path = dir.join("brief.toml");
    std::fs::write(&path, &text).unwrap();
    let path = path.to_str().unwrap();

    let (code, _, stderr) = env.cli(&["run", path]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("risk = metric-changing")
            && stderr.contains(&format!("backfill announce {path} --window"))
            && stderr.contains("--unannounced"),
        "{stderr}"
    );
    assert_eq!(runs_recorded(&env).await, 0);

    let (code, _, stderr) = env
        .cli(&["announce", path, "--window", "2026-12-02..2026-12-01"])
        .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("the window ends before it starts"),
        "{stderr}"
    );

    let (code, stdout, stderr) = env
        .cli_with(
            &[
                "announce",
                path,
                "--window",
                "2026-12-01 22:00..2026-12-02 06:00",
            ],
            &[("BACKFILL_WEBHOOK_URL", &hook)],
        )
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    let sent = format!("sent to {}/…9876", receiver.url);
    for part in [
        "**What is changing:** order-revenue-refunds rewrites tpch.order_revenue (merge, risk metric-changing).",
        "**Why:** Refunds",
        "**Period:** o_orderkey from 1 to",
        "**When:** 2026-12-01 22:00 UTC to 2026-12-02 06:00 UTC.",
        "in 6 batches",
        "**Who should know:**",
        "**Owner / reviewer:** alice / bob.",
        sent.as_str(),
    ] {
        assert!(stdout.contains(part), "{part:?} not in:\n{stdout}");
    }
    assert!(!format!("{stdout}{stderr}").contains("SeCrEt"), "{stdout}");
    let taken = receiver.until("the announcement", |t| !t.is_empty()).await;
    let event = &taken[0].body;
    assert_eq!(event["type"], "dev.backfill.run.announced");
    assert_eq!(event["subject"], Brief::hash(&text));
    assert_eq!(event["data"]["target"], "tpch.order_revenue");
    assert!(stdout.contains(event["data"]["note"].as_str().unwrap()));
    let (id, delivered): (i64, serde_json::Value) =
        sqlx::query_as("SELECT id, delivered FROM backfill.announcements WHERE brief_hash = $1")
            .bind(Brief::hash(&text))
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(delivered.as_array().unwrap().len(), 1, "{delivered}");
    assert!(!delivered.to_string().contains("SeCrEt"), "{delivered}");
    assert!(!event.to_string().contains("SeCrEt"), "{event}");

    // Announced: it runs, and its log says which announcement.
    let mut worker = env.spawn_worker(&[]);
    let (code, stdout, stderr) = env.cli(&["run", path]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let run_id: Uuid = stdout.lines().next().unwrap().parse().unwrap();
    let announced = log_detail(&env, run_id, "announced").await.unwrap();
    assert_eq!(announced["announcement"], id);
    let (_, report, _) = env.cli(&["report", &run_id.to_string()]).await;
    assert!(report.contains("| Announced |"), "{report}");
    let (code, _, stderr) = env.cli(&["cancel", &run_id.to_string()]).await;
    assert_eq!(code, Some(0), "{stderr}");

    // Another brief (another hash) is not announced by this one; it runs
    // only with the reason it was not, which the log keeps.
    let changed = text.replace("Refunds (l_returnflag", "Returned refunds (l_returnflag");
    assert_ne!(Brief::hash(&changed), Brief::hash(&text));
    std::fs::write(dir.join("brief.toml"), &changed).unwrap();
    let (code, _, stderr) = env.cli(&["run", path]).await;
    assert_eq!(code, Some(2), "{stderr}");
    let (code, stdout, stderr) = env
        .cli(&[
            "run",
            path,
            "--unannounced",
            "the finance channel was told by phone",
        ])
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    let second: Uuid = stdout.lines().next().unwrap().parse().unwrap();
    let why = log_detail(&env, second, "unannounced").await.unwrap();
    assert_eq!(why["reason"], "the finance channel was told by phone");

    worker.start_kill().unwrap();
    let _ = worker.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}
