//! What Backfill sends to Slack, Slack takes: a brief whose reason holds
//! `<!channel>`, `&`, a link and as many characters as a brief allows (4,000,
//! past Slack's 3,000 a section) goes through its whole life
//! from the CLI (announce, run, validate, approve, cutover, rollback, the
//! change note) with one endpoint in Slack's format, judged by a receiver
//! that applies Slack's documented limits and reads mrkdwn as Slack does, and
//! another in CloudEvents, in the same run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_tests::TestEnv;
use backfill_tests::receiver::Receiver;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_of_a_runs_life_is_one_slack_takes() {
    let env = TestEnv::new(0.01).await;
    let slack = Receiver::slack().await;
    let bus = Receiver::start().await;
    // A third endpoint takes only the decisions that change what readers see.
    let decisions = Receiver::start().await;
    let hooks = format!(
        "slack={}/services/T0/B0/SeCrEt0123,cloudevents={}/events,cloudevents:cut_over+rolled_back={}/decisions",
        slack.url, bus.url, decisions.url
    );
    // As long as a brief's reason may be, past Slack's 3,000 per section.
    let most = backfill_shared::brief::limits::chars("brief.reason");
    let reason: String = "<!channel> finance & growth: see <https://evil.example/wiki|the wiki>. "
        .chars()
        .chain("The refunds were never subtracted. ".chars().cycle())
        .take(most)
        .collect();
    assert!(most > 3000, "the reason no longer tests Slack's limit");
    let text = env.brief(6, 2).await.replace(
        "reason = \"Refunds (l_returnflag = 'R') were never subtracted from net revenue.\"",
        &format!("reason = {}", toml_string(&reason)),
    );
    assert!(text.contains("<!channel>"), "the demo brief's reason moved");
    let dir = std::env::temp_dir().join(format!("bf-slack-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("brief.toml");
    std::fs::write(&path, &text).unwrap();
    let path = path.to_str().unwrap();

    let reviewer = format!("-c backfill.acting_role={}", backfill_tests::REVIEWER_ROLE);
    let vars = [("BACKFILL_WEBHOOKS", hooks.as_str())];
    let as_bob = [
        ("BACKFILL_WEBHOOKS", hooks.as_str()),
        ("PGOPTIONS", reviewer.as_str()),
    ];
    let step = async |args: &[&str], vars: &[(&str, &str)]| {
        let (code, stdout, stderr) = env.cli_with(args, vars).await;
        assert_eq!(
            code,
            Some(0),
            "backfill {}:\n{stdout}\n{stderr}",
            args.join(" ")
        );
        stdout
    };
    step(
        &["announce", path, "--window", "2026-12-01..2030-12-31"],
        &vars,
    )
    .await;
    let mut worker = env.spawn_worker(&[]);
    let out = step(&["run", path], &vars).await;
    worker.start_kill().unwrap();
    let _ = worker.wait().await;
    let run_id = out.lines().next().unwrap().trim().to_owned();
    step(&["validate", &run_id], &vars).await;
    step(&["approve", &run_id], &as_bob).await;
    step(&["cutover", &run_id], &vars).await;
    step(&["report", &run_id, "--send"], &vars).await;
    step(&["rollback", &run_id], &vars).await;

    let events = [
        "announced",
        "started",
        "applied",
        "validated",
        "approved",
        "cutover",
        "cut_over",
        "change note",
        "rollback",
        "rolled_back",
    ];
    let taken = slack
        .until("every Slack message", |t| t.len() >= events.len())
        .await;
    for message in &taken {
        assert!(
            message.problems.is_empty(),
            "Slack would refuse or misread {}: {:#?}",
            message.body["text"],
            message.problems
        );
        // The reason is there, escaped: no ping, no link, no bold.
        let body = message.body.to_string();
        assert!(!body.contains("<!channel>"), "{body}");
    }
    let said: Vec<&str> = taken
        .iter()
        .map(|m| m.body["text"].as_str().unwrap())
        .collect();
    assert!(said.iter().any(|t| t.contains("is announced")), "{said:?}");
    assert!(said.iter().any(|t| t.contains("is cut over")), "{said:?}");
    assert!(
        said.iter().any(|t| t.contains("the change note")),
        "{said:?}"
    );
    let note = taken
        .iter()
        .find(|m| m.body["text"].as_str().unwrap().contains("the change note"))
        .unwrap();
    let note = note.body.to_string();
    assert!(
        note.contains("&lt;!channel&gt; finance &amp; growth"),
        "{note}"
    );

    // The event bus got the same life as CloudEvents, none refused.
    let events_on_bus = bus
        .until("the CloudEvents", |t| t.len() >= events.len())
        .await;
    assert!(
        events_on_bus
            .iter()
            .all(|e| e.content_type == "application/cloudevents+json"),
        "{:?}",
        events_on_bus
            .iter()
            .map(|e| &e.content_type)
            .collect::<Vec<_>>()
    );
    // The filtered endpoint heard the cutover and the rollback, and nothing
    // else (each CLI command delivered what it sent before it exited).
    let heard = decisions.until("the two decisions", |t| t.len() >= 2).await;
    let types: Vec<String> = heard
        .iter()
        .map(|e| e.body["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        types,
        ["dev.backfill.run.cut_over", "dev.backfill.run.rolled_back"],
        "{heard:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}
