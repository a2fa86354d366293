//! OpenLineage run events and webhooks, checked field by field at a receiver
//! on loopback: a run that completes, is validated, approved, cut over and
//! rolled back (cutover and rollback as runs of their own under the backfill
//! run); a run that halts on a limit, then is cancelled. And a `backfill run`
//! whose endpoints are down still ends applied, each lost event in its log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::lifecycle::{approve, cutover, rollback};
use backfill_coordinator::notify::{self, Settings};
use backfill_coordinator::run::Finish;
use backfill_coordinator::{resume, validate};
use backfill_tests::receiver::{Received, Receiver};
use backfill_tests::{TestEnv, bin};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// The OpenLineage events and the webhook events of one run, in order.
fn split(taken: &[Received], run_id: Uuid) -> (Vec<Value>, Vec<Value>) {
    let id = run_id.to_string();
    let lineage = taken
        .iter()
        .filter(|r| r.path == "/api/v1/lineage")
        .map(|r| r.body.clone())
        .filter(|b| b["run"]["facets"]["backfill_run"]["runId"] == id.as_str())
        .collect();
    let hooks = taken
        .iter()
        .filter(|r| r.path == "/hook")
        .map(|r| r.body.clone())
        .filter(|b| b["subject"] == id.as_str())
        .collect();
    (lineage, hooks)
}

fn types(hooks: &[Value]) -> Vec<String> {
    hooks
        .iter()
        .map(|h| {
            h["type"]
                .as_str()
                .unwrap()
                .trim_start_matches("dev.backfill.run.")
                .to_owned()
        })
        .collect()
}

fn lineage_steps(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["job"]["name"].as_str().unwrap().to_owned(),
                e["eventType"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_step_of_a_runs_life_reaches_openlineage_and_the_webhooks() {
    let env = TestEnv::new(0.01).await;
    let receiver = Receiver::start().await;
    let vars: HashMap<String, String> = [
        ("OPENLINEAGE_URL", receiver.url.clone()),
        ("OPENLINEAGE_API_KEY", "sekrit".to_owned()),
        ("OPENLINEAGE_NAMESPACE", "analytics".to_owned()),
        ("BACKFILL_WEBHOOK_URL", format!("{}/hook", receiver.url)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let notifier = notify::install(
        Settings::from_vars(&vars).unwrap(),
        &env.config.database_url,
    )
    .expect("the first notifier of this process");

    // A run through its whole life.
    let run_id = env.record_ship_revenue_fix().await;
    assert_eq!(env.run_to_end(run_id, 2).await, Finish::Applied);
    validate::validate(&env.pool, run_id).await.unwrap();
    approve::approve(&env.reviewer, run_id, None).await.unwrap();
    cutover::cutover(&env.pool, run_id, "alice", Duration::from_secs(5))
        .await
        .unwrap();
    rollback::rollback(
        &env.pool,
        run_id,
        "alice",
        rollback::RollbackOptions::default(),
    )
    .await
    .unwrap();
    let taken = receiver
        .until("every event of the run", |t| {
            types(&split(t, run_id).1).contains(&"rolled_back".to_owned())
                && split(t, run_id).0.len() >= 6
        })
        .await;
    let (lineage, hooks) = split(&taken, run_id);
    assert_eq!(
        types(&hooks),
        [
            "started",
            "applied",
            "validated",
            "approved",
            "cutover.started",
            "cut_over",
            "rollback.started",
            "rolled_back"
        ]
    );
    assert_eq!(
        lineage_steps(&lineage),
        [
            ("ship-revenue", "START"),
            ("ship-revenue", "COMPLETE"),
            ("ship-revenue.cutover", "START"),
            ("ship-revenue.cutover", "COMPLETE"),
            ("ship-revenue.rollback", "START"),
            ("ship-revenue.rollback", "COMPLETE"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    for r in taken.iter().filter(|r| r.path == "/api/v1/lineage") {
        assert_eq!(r.authorization.as_deref(), Some("Bearer sekrit"));
        assert_eq!(r.content_type, "application/json");
    }
    for r in taken.iter().filter(|r| r.path == "/hook") {
        assert_eq!(r.authorization, None, "the lineage key went to a webhook");
        assert_eq!(r.content_type, "application/cloudevents+json");
    }

    // The backfill run's events, field by field.
    let start = &lineage[0];
    let lineage_id: Uuid = start["run"]["runId"].as_str().unwrap().parse().unwrap();
    assert_eq!(lineage_id.get_version_num(), 7, "{lineage_id}");
    assert_ne!(lineage_id, run_id);
    assert_eq!(
        start["schemaURL"],
        "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
    );
    assert_eq!(start["job"]["namespace"], "analytics");
    let job = &start["job"]["facets"];
    assert!(
        job["sql"]["query"]
            .as_str()
            .unwrap()
            .contains("tpch.lineitem"),
        "{job}"
    );
    assert_eq!(
        job["documentation"]["description"],
        "Recompute daily ship revenue."
    );
    assert_eq!(
        job["ownership"]["owners"],
        serde_json::json!([{ "name": "alice", "type": "owner" }, { "name": "bob", "type": "reviewer" }])
    );
    for facet in ["sql", "documentation", "ownership", "jobType"] {
        assert!(
            job[facet]["_producer"].is_string() && job[facet]["_schemaURL"].is_string(),
            "{facet}"
        );
    }
    let facets = &start["run"]["facets"];
    assert_eq!(
        facets["nominalTime"]["nominalStartTime"],
        "1992-01-01T00:00:00Z"
    );
    assert_eq!(
        facets["nominalTime"]["nominalEndTime"],
        "1999-01-01T00:00:00Z"
    );
    let custom = &facets["backfill_run"];
    assert_eq!(custom["runId"], run_id.to_string());
    assert!(
        custom["_schemaURL"].as_str().unwrap().ends_with(&format!(
            "/v{}/docs/openlineage/BackfillRunFacet.json",
            env!("CARGO_PKG_VERSION")
        )),
        "{custom}"
    );
    assert_eq!(custom["strategy"], "merge");
    assert_eq!(custom["risk"], "metric-changing");
    assert_eq!(custom["batches"], 84);
    assert!(
        custom["briefHash"].as_str().unwrap().len() >= 16,
        "{custom}"
    );
    assert!(custom["_producer"].is_string() && custom["_schemaURL"].is_string());
    let db = env.database.as_str();
    assert_eq!(
        start["outputs"],
        serde_json::json!([{ "namespace": "postgres://127.0.0.1:5432", "name": format!("{db}.tpch.ship_revenue") }])
    );
    let inputs: Vec<&str> = start["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(
        inputs.contains(&format!("{db}.tpch.lineitem").as_str()),
        "{inputs:?}"
    );
    let complete = &lineage[1];
    assert_eq!(complete["run"]["runId"], start["run"]["runId"]);
    assert_eq!(
        complete["run"]["facets"]["backfill_run"]["batchesApplied"],
        84
    );
    assert!(complete["run"]["facets"].get("errorMessage").is_none());
    // A merge's cutover moves no data and reads nothing; its rollback reads
    // the before-images it restores from.
    let images = backfill_shared::control::runs::load(&env.pool, run_id)
        .await
        .unwrap()
        .image_table
        .expect("a merge keeping before-images has an image table");
    for (i, child) in lineage[2..].iter().enumerate() {
        let parent = &child["run"]["facets"]["parent"];
        assert_eq!(parent["run"]["runId"], start["run"]["runId"]);
        assert_eq!(parent["job"]["name"], "ship-revenue");
        assert_ne!(child["run"]["runId"], start["run"]["runId"]);
        let read = if i < 2 {
            vec![]
        } else {
            vec![format!("{db}.{images}")]
        };
        assert_eq!(names(child, "inputs"), read, "{child}");
    }
    assert_eq!(lineage[2]["run"]["runId"], lineage[3]["run"]["runId"]);
    assert_ne!(lineage[2]["run"]["runId"], lineage[4]["run"]["runId"]);

    // The webhooks' CloudEvents.
    for hook in &hooks {
        assert_eq!(hook["specversion"], "1.0");
        assert_eq!(hook["datacontenttype"], "application/json");
        assert!(hook["id"].is_string() && hook["time"].is_string() && hook["source"].is_string());
        let data = &hook["data"];
        assert_eq!(data["run_id"], run_id.to_string());
        assert_eq!(data["target"], "tpch.ship_revenue");
        assert_eq!(data["owner"], "alice");
        assert_eq!(data["stakeholders"], serde_json::json!(["finance"]));
        assert_eq!(data["see"], format!("backfill status {run_id}"));
    }
    let data = |name: &str| {
        hooks
            .iter()
            .find(|h| h["type"] == format!("dev.backfill.run.{name}"))
            .map(|h| h["data"].clone())
            .unwrap()
    };
    assert_eq!(data("applied")["batches"]["applied"], 84);
    assert_eq!(data("applied")["state"], "applied");
    assert_eq!(data("validated")["passed"], true);
    assert!(data("approved")["approved_by"].is_string());
    assert_eq!(data("cut_over")["state"], "cut_over");
    assert_eq!(data("rolled_back")["state"], "rolled_back");

    // A run that halts on a limit, then is cancelled.
    let text = backfill_coordinator::demo::with_max_change_pct(&env.brief(10, 1).await, 10);
    let (halted, ..) = env.record_run(&text).await;
    let Finish::Halted(reason) = env.run_to_end(halted, 1).await else {
        panic!("the run did not halt on its limit");
    };
    resume::cancel(&env.pool, halted, "alice").await.unwrap();
    let taken = receiver
        .until("the halt and the cancel", |t| {
            split(t, halted).0.len() >= 3
                && types(&split(t, halted).1).contains(&"cancelled".to_owned())
        })
        .await;
    let (lineage, hooks) = split(&taken, halted);
    assert_eq!(types(&hooks), ["started", "halted", "cancelled"]);
    let steps: Vec<String> = lineage_steps(&lineage)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    // One terminal event: the halt holds the run (it may be resumed), the
    // cancel ends it. A breached limit is no error of the code.
    assert_eq!(steps, ["START", "RUNNING", "ABORT"]);
    assert!(lineage[1]["run"]["facets"].get("errorMessage").is_none());
    assert!(!reason.is_empty());
    assert_eq!(
        lineage[1]["run"]["facets"]["backfill_run"]["haltReason"],
        reason.as_str()
    );
    assert!(
        lineage[2]["run"]["facets"]["backfill_run"]
            .get("haltReason")
            .is_none()
    );
    assert_eq!(hooks[1]["data"]["error"], reason.as_str());
    assert_eq!(hooks[2]["data"]["state"], "cancelled");

    // A staging-swap run: its batches write the built table from the
    // sources; its cutover reads the built table and those sources and
    // writes the target, so the target shows its sources upstream; its
    // rollback reads the old table it swaps back.
    let text = env
        .brief(6, 2)
        .await
        .replace("strategy = \"merge\"", "strategy = \"staging-swap\"");
    let (swap, ..) = env.record_run(&text).await;
    assert_eq!(env.run_to_end(swap, 2).await, Finish::Applied);
    env.validate_and_approve(swap).await;
    let built = backfill_shared::control::runs::load(&env.pool, swap)
        .await
        .unwrap()
        .side_table
        .expect("a staging-swap run builds a side table");
    cutover::cutover(&env.pool, swap, "alice", Duration::from_secs(5))
        .await
        .unwrap();
    let old = backfill_shared::control::runs::load(&env.pool, swap)
        .await
        .unwrap()
        .old_table
        .expect("a swap keeps the old table");
    rollback::rollback(
        &env.pool,
        swap,
        "alice",
        rollback::RollbackOptions::default(),
    )
    .await
    .unwrap();
    let taken = receiver
        .until("the swap's life", |t| split(t, swap).0.len() >= 6)
        .await;
    let (lineage, _) = split(&taken, swap);
    let job = |name: &str| {
        lineage
            .iter()
            .find(|e| e["job"]["name"] == name && e["eventType"] == "START")
            .unwrap_or_else(|| panic!("no START of {name}: {lineage:#?}"))
    };
    let sources = [format!("{db}.tpch.lineitem"), format!("{db}.tpch.orders")];
    let built = format!("{db}.{built}");
    let target = format!("{db}.tpch.order_revenue");
    let run = job("order-revenue-refunds");
    assert_eq!(names(run, "outputs"), std::slice::from_ref(&built));
    let mut read = names(run, "inputs");
    read.sort();
    assert_eq!(read, sources);
    let cut = job("order-revenue-refunds.cutover");
    assert_eq!(names(cut, "outputs"), std::slice::from_ref(&target));
    let mut read = names(cut, "inputs");
    read.sort();
    let mut expected = vec![built];
    expected.extend(sources);
    expected.sort();
    assert_eq!(read, expected, "{cut}");
    let back = job("order-revenue-refunds.rollback");
    assert_eq!(names(back, "inputs"), [format!("{db}.{old}")], "{back}");
    assert_eq!(names(back, "outputs"), [target]);

    // A run that halts on its limit, is resumed with the breach accepted and
    // driven to its end: the halt and the taking up again are no ends.
    let text = backfill_coordinator::demo::with_max_change_pct(&env.brief(6, 1).await, 10);
    let (resumed, ..) = env.record_run(&text).await;
    let Finish::Halted(_) = env.run_to_end(resumed, 1).await else {
        panic!("the run did not halt on its limit");
    };
    resume::resume(
        &env.pool,
        resumed,
        "alice",
        Some("the refunds move revenue"),
    )
    .await
    .unwrap();
    assert_eq!(env.run_to_end(resumed, 1).await, Finish::Applied);
    let taken = receiver
        .until("the resumed run's end", |t| {
            lineage_steps(&split(t, resumed).0)
                .iter()
                .any(|(_, t)| t == "COMPLETE")
        })
        .await;
    let steps: Vec<String> = lineage_steps(&split(&taken, resumed).0)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(steps, ["START", "RUNNING", "RUNNING", "COMPLETE"]);

    // Every event of the four lives (a whole one, a halt and a cancel, a
    // swap's, a halt and a resume), as OpenLineage's published 2-0-2 schema
    // and its facets' schemas have them; one START and at most one terminal
    // event per runId.
    let all: Vec<Value> = receiver
        .until("the same", |_| true)
        .await
        .into_iter()
        .filter(|r| r.path == "/api/v1/lineage")
        .map(|r| r.body)
        .collect();
    let checked = conforms_to_openlineage(&all).await;
    assert_eq!(checked["errors"], serde_json::json!([]), "{checked:#}");
    assert_eq!(checked["events"], all.len());
    assert!(
        checked["facets"].as_u64() > Some(5 * all.len() as u64),
        "{checked}"
    );
    let mut by_run: HashMap<String, Vec<String>> = HashMap::new();
    for e in &all {
        by_run
            .entry(e["run"]["runId"].as_str().unwrap().to_owned())
            .or_default()
            .push(e["eventType"].as_str().unwrap().to_owned());
    }
    for (run, kinds) in &by_run {
        let count = |k: &[&str]| kinds.iter().filter(|t| k.contains(&t.as_str())).count();
        assert_eq!(count(&["START"]), 1, "{run}: {kinds:?}");
        assert!(
            count(&["COMPLETE", "FAIL", "ABORT"]) <= 1,
            "{run}: {kinds:?}"
        );
        assert_eq!(
            kinds.first().map(String::as_str),
            Some("START"),
            "{run}: {kinds:?}"
        );
    }

    notifier.shutdown().await;
    env.cleanup().await;
}

/// What tests/openlineage/validate.py says of `events`: checked against
/// the vendored OpenLineage schemas with `jsonschema` (tests/dbt/.venv).
async fn conforms_to_openlineage(events: &[Value]) -> Value {
    use tokio::io::AsyncWriteExt as _;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = tokio::process::Command::new(root.join("dbt/.venv/bin/python"))
        .arg(root.join("openlineage/validate.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tests/dbt/.venv is needed: bash deploy/install-test-tools.sh");
    let mut stdin = child.stdin.take().unwrap();
    for e in events {
        stdin.write_all(format!("{e}\n").as_bytes()).await.unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The names of an OpenLineage event's `inputs` or `outputs`.
fn names(event: &Value, side: &str) -> Vec<String> {
    event[side]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoints_that_are_down_neither_stop_nor_fail_a_run() {
    let env = TestEnv::new(0.01).await;
    let receiver = Receiver::start().await;
    // A port nobody listens on: every try is refused.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dir = std::env::temp_dir().join(format!("bf-notify-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("brief.toml");
    std::fs::write(&path, env.brief(6, 2).await).unwrap();
    let mut worker = env.spawn_worker(&[]);
    let out = tokio::process::Command::new(bin("backfill"))
        .args([
            "--json",
            "run",
            path.to_str().unwrap(),
            "--unannounced",
            "a test",
        ])
        .envs(env.env())
        .env("OPENLINEAGE_URL", format!("http://127.0.0.1:{closed}"))
        .env(
            "BACKFILL_WEBHOOK_URL",
            format!("http://127.0.0.1:{closed}/hook,{}/hook", receiver.url),
        )
        .env("BACKFILL_WEBHOOK_FORMAT", "slack")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    let run_id: Uuid = done["run_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(done["finish"], "applied");
    // The reachable webhook got Slack messages.
    let taken = receiver.until("the Slack messages", |t| t.len() >= 2).await;
    assert_eq!(taken[0].content_type, "application/json");
    assert!(
        taken[0].body["text"].as_str().unwrap().contains("started"),
        "{:?}",
        taken[0].body
    );
    let applied = &taken[1].body;
    assert!(
        applied["text"]
            .as_str()
            .unwrap()
            .contains("applied every batch"),
        "{applied}"
    );
    let blocks = applied["blocks"].to_string();
    assert!(
        blocks.contains("alice") || blocks.contains("Owner"),
        "{blocks}"
    );
    assert!(
        blocks.contains(&format!("backfill status {run_id}")),
        "{blocks}"
    );
    // The others were dropped, each named in the run log.
    let dropped: Vec<(String, String)> = sqlx::query_as(
        "SELECT detail->>'sink', detail->>'event' FROM backfill.run_log
          WHERE run_id = $1 AND event = 'notification_dropped' ORDER BY id",
    )
    .bind(run_id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    for expected in [
        ("openlineage", "started"),
        ("openlineage", "applied"),
        ("webhook", "started"),
        ("webhook", "applied"),
    ] {
        assert!(
            dropped.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} not logged as dropped: {dropped:?}"
        );
    }
    let state: String = sqlx::query_scalar("SELECT state FROM backfill.runs WHERE run_id = $1")
        .bind(run_id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(state, "applied");
    // A bad setting is refused before anything runs.
    let out = tokio::process::Command::new(bin("backfill"))
        .args(["status", &run_id.to_string()])
        .envs(env.env())
        .env("OPENLINEAGE_URL", "marquez:5000")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OPENLINEAGE_URL"));
    worker.start_kill().unwrap();
    let _ = worker.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}
