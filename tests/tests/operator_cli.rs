//! The operator's CLI: `backfill list` shows runs in every state with what
//! holds each, its filters narrow it, `--json` parses and the default is a
//! table; a `RUN` argument may be a unique prefix of the id (an ambiguous one
//! is refused, naming the candidates); `status` without a run shows the latest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::lifecycle::{approve, cutover, rollback};
use backfill_coordinator::run::Finish;
use backfill_coordinator::{list, resume, validate};
use backfill_shared::control::runs::{self, RunState};
use backfill_tests::{TestEnv, bin, ship_revenue};
use std::time::Duration;
use tokio::process::Command;
use uuid::Uuid;

/// A run of the ship-revenue brief on a copy of the table, `tpch.<table>`,
/// recorded and not driven.
async fn recorded_on(env: &TestEnv, table: &str) -> Uuid {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE tpch.{table} (LIKE tpch.ship_revenue INCLUDING ALL);
         INSERT INTO tpch.{table} SELECT * FROM tpch.ship_revenue;"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    let text = ship_revenue::brief("merge", "delete", "").replace(
        "target = \"tpch.ship_revenue\"",
        &format!("target = \"tpch.{table}\""),
    );
    env.record_run(&text).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_shows_every_state_with_what_holds_it_and_ids_resolve_by_prefix() {
    let env = TestEnv::new(0.01).await;
    // One run taken through its whole life: applied, validated, approved, cut over.
    let cut_over = env.record_ship_revenue_fix().await;
    assert_eq!(env.run_to_end(cut_over, 2).await, Finish::Applied);
    validate::validate(&env.pool, cut_over).await.unwrap();
    approve::approve(&env.reviewer, cut_over, None)
        .await
        .unwrap();
    cutover::cutover(&env.pool, cut_over, "alice", Duration::from_secs(5))
        .await
        .unwrap();
    // The others, each on a table of its own, stopped where the operator finds them.
    let running = recorded_on(&env, "sr_running").await;
    let paused = recorded_on(&env, "sr_paused").await;
    resume::pause(&env.pool, paused, "alice").await.unwrap();
    let halted = recorded_on(&env, "sr_halted").await;
    let reason = "limit breached: ship revenue 1995 changed by 12 %";
    runs::transition(
        &env.pool,
        halted,
        &[RunState::Running],
        RunState::Halted,
        "coordinator",
        Some(reason),
    )
    .await
    .unwrap();
    let canary = recorded_on(&env, "sr_canary").await;
    assert!(
        runs::enter_canary(&env.pool, canary, "coordinator")
            .await
            .unwrap()
    );
    let applied = recorded_on(&env, "sr_applied").await;
    runs::transition(
        &env.pool,
        applied,
        &[RunState::Running],
        RunState::Applied,
        "coordinator",
        None,
    )
    .await
    .unwrap();
    let cancelled = recorded_on(&env, "sr_cancelled").await;
    resume::cancel(&env.pool, cancelled, "alice").await.unwrap();
    let rolled_back = recorded_on(&env, "sr_rolled_back").await;
    resume::cancel(&env.pool, rolled_back, "alice")
        .await
        .unwrap();
    rollback::rollback(
        &env.pool,
        rolled_back,
        "alice",
        rollback::RollbackOptions::default(),
    )
    .await
    .unwrap();

    let everything = list::filter(None, None, None, None, 50).unwrap();
    let rows = list::list(&env.pool, &everything).await.unwrap();
    assert_eq!(rows.len(), 8);
    // Newest first.
    assert_eq!(rows[0].run_id, rolled_back);
    assert_eq!(rows[7].run_id, cut_over);
    let holds = |id: Uuid| {
        rows.iter()
            .find(|r| r.run_id == id)
            .map(|r| (r.state.clone(), r.holds.clone()))
            .unwrap()
    };
    let short = |id: Uuid| id.simple().to_string()[..8].to_owned();
    let expected = [
        (running, "running", "applying batches".to_owned()),
        (
            paused,
            "paused",
            format!("paused: `backfill resume {}`", short(paused)),
        ),
        (halted, "halted", format!("halted: {reason}")),
        (
            canary,
            "canary",
            format!(
                "waiting at its canary for bob to `backfill promote {}`",
                short(canary)
            ),
        ),
        (
            applied,
            "applied",
            format!(
                "awaiting validation: `backfill validate {}`",
                short(applied)
            ),
        ),
        (
            cancelled,
            "cancelled",
            "cancelled; rollback copies kept until ".to_owned(),
        ),
        (
            rolled_back,
            "rolled_back",
            "rolled back; rollback copies kept until ".to_owned(),
        ),
        (
            cut_over,
            "cut_over",
            "cut over; rollback copies kept until ".to_owned(),
        ),
    ];
    for (id, state, hold) in &expected {
        let (got_state, got_hold) = holds(*id);
        assert_eq!(got_state, *state);
        assert!(got_hold.starts_with(hold.as_str()), "{state}: {got_hold:?}");
    }
    // Whose decision each waits for, as the console's "Needs you" lists it.
    let awaiting = |id: Uuid| {
        rows.iter()
            .find(|r| r.run_id == id)
            .and_then(|r| r.awaiting.clone())
            .map(|a| (a.step, a.who()))
    };
    let either = "alice or bob".to_owned();
    assert_eq!(awaiting(running), None);
    assert_eq!(awaiting(paused), Some((list::Step::Resume, either.clone())));
    assert_eq!(
        awaiting(halted),
        Some((list::Step::AcceptBreach, either.clone()))
    );
    assert_eq!(awaiting(canary), Some((list::Step::Promote, "bob".into())));
    assert_eq!(awaiting(applied), Some((list::Step::Validate, either)));
    for finished in [cancelled, rolled_back, cut_over] {
        assert_eq!(awaiting(finished), None);
    }
    let bobs: Vec<Uuid> = list::awaiting_person(&env.pool, "BOB")
        .await
        .unwrap()
        .iter()
        .map(|r| r.run_id)
        .collect();
    for id in [paused, halted, canary, applied] {
        assert!(bobs.contains(&id), "{id} waits for bob too: {bobs:?}");
    }
    assert!(!bobs.contains(&running) && !bobs.contains(&cut_over));
    let done = rows.iter().find(|r| r.run_id == cut_over).unwrap();
    assert_eq!((done.applied, done.batches), (84, 84));
    assert!(done.rows_written > 0 && done.finished.is_some(), "{done:?}");

    // Filters.
    let count =
        |state: Option<&str>, target: Option<&str>, owner: Option<&str>, since: Option<&str>| {
            let filter = list::filter(state, target, owner, since, 50).unwrap();
            let pool = env.pool.clone();
            async move { list::list(&pool, &filter).await.unwrap().len() }
        };
    assert_eq!(count(Some("halted"), None, None, None).await, 1);
    assert_eq!(count(None, Some("tpch.sr_paused"), None, None).await, 1);
    assert_eq!(count(None, None, Some("ALICE"), None).await, 8);
    assert_eq!(count(None, None, Some("carol"), None).await, 0);
    assert_eq!(count(None, None, None, Some("1d")).await, 8);
    assert_eq!(count(None, None, None, Some("2099-01-01")).await, 0);
    assert!(list::filter(Some("sleeping"), None, None, None, 50).is_err());
    assert!(list::filter(None, None, None, Some("last tuesday"), 50).is_err());

    // The CLI: a table for a person, one JSON object for scripts.
    let (code, table, stderr) = env.cli(&["list"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(table.starts_with("RUN "), "{table}");
    assert!(serde_json::from_str::<serde_json::Value>(&table).is_err());
    assert!(table.contains(&format!("halted: {reason}")), "{table}");
    let (code, json, stderr) = env.cli(&["list", "--state", "canary", "--json"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["runs"].as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(json["runs"][0]["run_id"], canary.to_string());
    let (code, _, stderr) = env.cli(&["list", "--state", "sleeping"]).await;
    assert_eq!(code, Some(2), "{stderr}");

    // Ids by prefix; an ambiguous prefix names its candidates. A second run
    // whose id shares six digits with the cut-over one makes one.
    let hex = cut_over.simple().to_string();
    let twin = Uuid::parse_str(&format!(
        "{}{}",
        &hex[..6],
        &Uuid::new_v4().simple().to_string()[6..]
    ))
    .unwrap();
    let mut tx = env.pool.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TEMP TABLE twin ON COMMIT DROP AS SELECT * FROM backfill.runs WHERE run_id = '{cut_over}';
         UPDATE twin SET run_id = '{twin}', target = 'tpch.twin', state = 'running',
                approved_by = NULL, approved_at = NULL, approved_validation = NULL,
                cut_over_at = NULL, finished_at = NULL, old_table = NULL, cleaned_at = NULL,
                done_at = NULL, promoted_by = NULL, promoted_at = NULL, canary_at = NULL;
         INSERT INTO backfill.runs SELECT * FROM twin;
         UPDATE backfill.runs SET state = 'cancelled' WHERE run_id = '{twin}';"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        list::resolve(&env.pool, &hex[..10]).await.unwrap(),
        cut_over
    );
    assert_eq!(
        list::resolve(&env.pool, &cut_over.to_string()[..13])
            .await
            .unwrap(),
        cut_over
    );
    let err = list::resolve(&env.pool, &hex[..6])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ambiguous")
            && err.contains(&cut_over.to_string())
            && err.contains(&twin.to_string()),
        "{err}"
    );
    assert!(list::resolve(&env.pool, "abc").await.is_err());
    let (code, status, stderr) = env.cli(&["status", &hex[..10], "--json"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["run_id"], cut_over.to_string());
    let (code, _, stderr) = env.cli(&["status", &hex[..6]]).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("ambiguous"), "{stderr}");
    // Without a run, status shows the latest.
    let (code, status, stderr) = env.cli(&["status", "--json"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["run_id"], rolled_back.to_string());
    env.cleanup().await;
}

/// One JSON object, parsed; panics with the text otherwise.
fn object(stdout: &str) -> serde_json::Value {
    let value: serde_json::Value = serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"));
    assert!(value.is_object(), "{stdout}");
    value
}

/// Text for a person: not JSON.
fn text(stdout: &str) {
    assert!(
        serde_json::from_str::<serde_json::Value>(stdout).is_err(),
        "default output must be for a person: {stdout}"
    );
}

/// A yearly-batched brief on a copy of `tpch.ship_revenue` (`tpch.<table>`),
/// written to a file; `limits` adds lines to `[limits]`.
async fn brief_file(env: &TestEnv, table: &str, limits: &str) -> String {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE tpch.{table} (LIKE tpch.ship_revenue INCLUDING ALL);
         INSERT INTO tpch.{table} SELECT l_shipdate, l_shipmode, revenue + 1, lines FROM tpch.ship_revenue;"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    let text = ship_revenue::brief("merge", "delete", "")
        .replace(
            "target = \"tpch.ship_revenue\"",
            &format!("target = \"tpch.{table}\""),
        )
        .replace("step = \"1 month\"", "step = \"1 year\"")
        .replace("max_in_flight = 1", &format!("max_in_flight = 1\n{limits}"));
    let dir = std::env::temp_dir().join(format!("bf-cli-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{table}.toml"));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_command_prints_for_a_person_and_one_json_object_with_json() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    let workers = env.workers(2).await;
    let ok = |(code, stdout, stderr): (Option<i32>, String, String)| {
        assert_eq!(code, Some(0), "{stderr}");
        stdout
    };

    // The brief's commands.
    let a = brief_file(&env, "sr_a", "").await;
    object(&ok(env.cli(&["plan", &a, "--json"]).await));
    text(&ok(env.cli(&["plan", &a]).await));
    let slice = ["--slice", "1995-01-01..1996-01-01"];
    object(&ok(env
        .cli(&["sample", &a, slice[0], slice[1], "--json"])
        .await));
    text(&ok(env.cli(&["sample", &a, slice[0], slice[1]]).await));

    // A run's life with --json: run, status, list, validate, report, approve,
    // cutover, rollback, cleanup.
    let announced = object(&ok(env
        .cli(&[
            "announce",
            &a,
            "--window",
            "2026-12-01 22:00..2026-12-02 06:00",
            "--json",
        ])
        .await));
    assert!(
        announced["note"].as_str().unwrap().contains("**Why:**"),
        "{announced}"
    );
    let ran = object(&ok(env.cli(&["run", &a, "--json"]).await));
    assert_eq!(ran["finish"], "applied", "{ran}");
    let a_id = ran["run_id"].as_str().unwrap().to_owned();
    for args in [
        vec!["status", &a_id],
        vec!["list"],
        vec!["validate", &a_id],
        vec!["report", &a_id],
        vec!["people"],
        vec!["people", "whoami"],
    ] {
        let mut json = args.clone();
        json.push("--json");
        object(&ok(env.cli(&json).await));
        text(&ok(env.cli(&args).await));
    }
    let approved = object(&ok(env
        .cli_as_reviewer(&["approve", &a_id, "--json"])
        .await));
    assert_eq!(approved["approved_by"], "bob");
    let cut = object(&ok(env.cli(&["cutover", &a_id, "--json"]).await));
    assert!(cut.get("refreshed_materialized_views").is_some(), "{cut}");
    let back = object(&ok(env.cli(&["rollback", &a_id, "--json"]).await));
    assert!(back.get("rows_restored").is_some(), "{back}");
    let cleaned = object(&ok(env.cli(&["cleanup", &a_id, "--now", "--json"]).await));
    assert!(cleaned["dropped"].is_array(), "{cleaned}");

    // The same life for a person.
    let b = brief_file(&env, "sr_b", "").await;
    let (code, stdout, stderr) = env
        .cli(&["run", &b, "--unannounced", "told at stand-up"])
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    let b_id = stdout.lines().next().unwrap().to_owned();
    Uuid::parse_str(&b_id).expect("the run id is the first line");
    ok(env.cli(&["validate", &b_id]).await);
    let stdout = ok(env.cli_as_reviewer(&["approve", &b_id]).await);
    text(&stdout);
    assert!(!stdout.contains('{'), "approve: {stdout}");
    for args in [
        vec!["cutover", &b_id],
        vec!["rollback", &b_id],
        vec!["cleanup", &b_id, "--now"],
    ] {
        let stdout = ok(env.cli(&args).await);
        text(&stdout);
        assert!(!stdout.contains('{'), "{args:?}: {stdout}");
    }

    // Steering: pause, resume, cancel, retry, follow.
    let c = brief_file(&env, "sr_c", "").await;
    let (c_id, ..) = env.record_run(&std::fs::read_to_string(&c).unwrap()).await;
    let c_id = c_id.to_string();
    let paused = object(&ok(env.cli(&["pause", &c_id, "--json"]).await));
    assert_eq!(paused["state"], "paused");
    let resumed = object(&ok(env.cli(&["resume", &c_id, "--json"]).await));
    assert_eq!(resumed["finish"], "applied", "{resumed}");
    let d = brief_file(&env, "sr_d", "").await;
    let (d_id, ..) = env.record_run(&std::fs::read_to_string(&d).unwrap()).await;
    let d_id = d_id.to_string();
    text(&ok(env.cli(&["pause", &d_id]).await));
    let cancelled = object(&ok(env.cli(&["cancel", &d_id, "--json"]).await));
    assert_eq!(cancelled["state"], "cancelled");
    let e = brief_file(&env, "sr_e", "").await;
    let (e_id, ..) = env.record_run(&std::fs::read_to_string(&e).unwrap()).await;
    let retried = object(&ok(env.cli(&["retry", &e_id.to_string(), "--json"]).await));
    assert_eq!(retried["finish"], "applied", "{retried}");
    let f = brief_file(&env, "sr_f", "").await;
    let (f_id, ..) = env.record_run(&std::fs::read_to_string(&f).unwrap()).await;
    let followed = object(&ok(env.cli(&["follow", &f_id.to_string(), "--json"]).await));
    assert_eq!(followed["finish"], "applied", "{followed}");
    text(&ok(env.cli(&["cancel", &f_id.to_string()]).await));

    // A canary, promoted by the reviewer with --json.
    let g = brief_file(&env, "sr_g", "canary = { batches = 1 }").await;
    let (g_id, ..) = env.record_run(&std::fs::read_to_string(&g).unwrap()).await;
    let drive = env.drive_in_background(g_id);
    for _ in 0..300 {
        if runs::state(&env.pool, g_id).await.unwrap() == RunState::Canary {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = object(&ok(env
        .cli_as_reviewer(&["promote", &g_id.to_string(), "--json"])
        .await));
    assert_eq!(
        (
            promoted["promoted_by"].as_str(),
            promoted["driven"].as_bool()
        ),
        (Some("bob"), Some(true))
    );
    assert_eq!(
        backfill_tests::finish_within(drive, 60).await,
        Finish::Applied
    );

    // People: add and remove, both ways.
    let added = object(&ok(env
        .cli(&["people", "add", "carol", "--role", "pg_monitor", "--json"])
        .await));
    assert_eq!(added["role"], "pg_monitor");
    let removed = object(&ok(env.cli(&["people", "remove", "carol", "--json"]).await));
    assert_eq!(removed["removed"], "carol");
    text(&ok(env
        .cli(&["people", "add", "carol", "--role", "pg_monitor"])
        .await));
    text(&ok(env.cli(&["people", "remove", "carol"]).await));
    workers.stop().await;
    env.cleanup().await;
}

/// The fields a brief's lint names.
fn problem_fields(text: &str) -> Vec<String> {
    match backfill_shared::brief::Brief::parse(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.into_iter().map(|p| p.field).collect(),
    }
}

/// A drafted brief with the person's fields filled and a source that reads
/// the table itself.
fn filled(text: &str, table: &str, by: &str) -> String {
    text.replacen(
        "reason = \"\"",
        "reason = \"Recompute from the source tables.\"",
        1,
    )
    .replacen("owner = \"\"", "owner = \"alice\"", 1)
    .replacen("reviewer = \"\"", "reviewer = \"bob\"", 1)
    .replacen(
        "source = \"\"\"\n\"\"\"",
        &format!("source = \"\"\"\nSELECT * FROM {table} WHERE {by} >= $1 AND {by} < $2\n\"\"\""),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_new_drafts_a_brief_only_a_person_must_finish() {
    let env = TestEnv::new(0.01).await;
    let dir = std::env::temp_dir().join(format!("bf-new-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let person_only = [
        "brief.owner",
        "brief.reason",
        "brief.reviewer",
        "scope.source",
    ];
    for (table, batch_by, expected_by, expected_key) in [
        // One key column, no other index: batches along the key.
        ("tpch.orders", None, "o_orderkey", vec!["o_orderkey"]),
        // A composite key, cut along a date column asked for.
        (
            "tpch.lineitem",
            Some("l_shipdate"),
            "l_shipdate",
            vec!["l_orderkey", "l_linenumber"],
        ),
    ] {
        let path = dir.join(format!("{table}.toml"));
        let path = path.to_string_lossy().into_owned();
        let mut args = vec!["new", "--target", table, "-o", &path];
        if let Some(by) = batch_by {
            args.extend(["--batch-by", by]);
        }
        let (code, stdout, stderr) = env.cli(&args).await;
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(stderr.contains("then `backfill plan"), "{stderr}");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut fields = problem_fields(&text);
        fields.sort();
        assert_eq!(fields, person_only, "{table}:\n{text}");
        let brief =
            backfill_shared::brief::Brief::parse(&filled(&text, table, expected_by)).unwrap();
        assert_eq!(brief.scope.key, expected_key, "{text}");
        assert_eq!(brief.scope.batch_by.column, expected_by, "{text}");
        let batches = brief.scope.batch_by.plan().unwrap().len();
        assert!((10..=100).contains(&batches), "{batches} batches:\n{text}");
        backfill_coordinator::plan::plan(&env.pool, &brief)
            .await
            .unwrap_or_else(|e| panic!("{table}: the filled draft must plan: {e}\n{text}"));
        // An existing file is kept unless --force.
        let (code, _, stderr) = env.cli(&args).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("--force"), "{stderr}");
    }
    // An indexed date column is preferred to the key; the dependents the
    // catalog finds become downstream; --json carries the text.
    sqlx::query("CREATE INDEX ON tpch.order_revenue (o_orderdate)")
        .execute(&env.pool)
        .await
        .unwrap();
    let (code, stdout, stderr) = env
        .cli(&["new", "--target", "tpch.order_revenue", "--json"])
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    let draft = object(&stdout);
    assert_eq!(draft["batch_by"], "o_orderdate", "{draft}");
    assert_eq!(draft["downstream"][0], "tpch.monthly_revenue", "{draft}");
    let text = draft["text"].as_str().unwrap();
    assert!(text.contains("step = \""), "{text}");
    let brief =
        backfill_shared::brief::Brief::parse(&filled(text, "tpch.order_revenue", "o_orderdate"))
            .unwrap();
    assert_eq!(brief.dependencies.downstream, ["tpch.monthly_revenue"]);
    backfill_coordinator::plan::plan(&env.pool, &brief)
        .await
        .unwrap();
    // Without --json or -o, the brief itself.
    let (_, stdout, _) = env.cli(&["new", "--target", "tpch.orders"]).await;
    assert!(stdout.starts_with("# A brief drafted"), "{stdout}");
    // What cannot be drafted says why.
    sqlx::query("CREATE TABLE tpch.keyless AS SELECT o_orderdate, o_totalprice FROM tpch.orders")
        .execute(&env.pool)
        .await
        .unwrap();
    let (code, _, stderr) = env.cli(&["new", "--target", "tpch.keyless"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no primary key"), "{stderr}");
    let (code, _, stderr) = env.cli(&["new", "--target", "tpch.nothing"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("there is no table tpch.nothing"),
        "{stderr}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_man_pages_come_from_the_clis_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin("backfill"))
            .args(["completions", shell])
            .output()
            .await
            .unwrap();
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}");
        for word in ["promote", "list", "new", "over-budget"] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
    }
    let dir = std::env::temp_dir().join(format!("bf-man-{}", Uuid::new_v4().simple()));
    let out = Command::new(bin("backfill"))
        .args(["man", "--out-dir", &dir.to_string_lossy(), "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = object(&String::from_utf8_lossy(&out.stdout));
    let pages: Vec<&str> = written["pages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    for page in [
        "backfill.1",
        "backfill-new.1",
        "backfill-promote.1",
        "backfill-people-add.1",
    ] {
        assert!(pages.contains(&page), "{page} in {pages:?}");
    }
    let new = std::fs::read_to_string(dir.join("backfill-new.1")).unwrap();
    assert!(new.contains(".TH") && new.contains("batch\\-by"), "{new}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every refusal with `--json` is one JSON object on stdout too, naming the
/// kind, the message and the exit code the shell sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_refusal_with_json_is_one_json_object() {
    let env = TestEnv::new(0.01).await;
    let applied = env.record_ship_revenue_fix().await;
    assert_eq!(env.run_to_end(applied, 2).await, Finish::Applied);
    let applied = applied.to_string();
    let dir = std::env::temp_dir().join(format!("bf-refusals-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[brief]\nname = \"x\"\n").unwrap();
    let bad = bad.to_str().unwrap();
    let missing = dir.join("missing.toml");
    let missing = missing.to_str().unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, env.brief(6, 2).await).unwrap();
    let good = good.to_str().unwrap();
    // A negative bound is the slice's, not an option.
    let (code, stdout, stderr) = env
        .cli(&["sample", good, "--slice", "-100..0", "--json"])
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    let sampled = object(&stdout);
    assert_eq!(
        sampled["slice"],
        serde_json::json!(["-100", "0"]),
        "{sampled}"
    );
    for (args, exit, kind) in [
        (vec!["pause", applied.as_str()], 2, "wrong_state"),
        (vec!["plan", missing], 2, "bad_input"),
        (vec!["run", bad], 2, "bad_input"),
        (vec!["status", "ffffffff"], 2, "not_found"),
        (vec!["approve", applied.as_str()], 2, "not_allowed"),
        (vec!["cutover", applied.as_str()], 2, "wrong_state"),
        (
            vec!["people", "add", "carol", "--role", "no_such_role_x"],
            2,
            "bad_input",
        ),
        (vec!["rollback", "not-a-run"], 2, "bad_input"),
        (vec!["status", "--no-such-flag"], 2, "usage"),
    ] {
        let mut json = args.clone();
        json.push("--json");
        let (code, stdout, stderr) = env.cli(&json).await;
        assert_eq!(code, Some(exit), "{args:?}: {stdout}\n{stderr}");
        let error = &object(&stdout)["error"];
        assert_eq!(
            (error["kind"].as_str(), error["exit"].as_i64()),
            (Some(kind), Some(i64::from(exit))),
            "{args:?}: {stdout}"
        );
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{args:?}: {stdout}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

/// Free text with terminal control sequences and a bidi override is stored as
/// given and shown escaped: nothing a brief says can rewrite an operator's
/// screen or reorder what it shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn text_that_would_act_on_a_terminal_is_shown_escaped() {
    let env = TestEnv::new(0.01).await;
    let text = env.brief(6, 2).await.replace(
        "reason = \"Refunds (l_returnflag = 'R') were never subtracted from net revenue.\"",
        "reason = \"Refunds\\u001b[2J\\u001b]0;pwned\\u0007 wiped\\r over \\u202Eesrever end\"",
    );
    assert!(text.contains("\\u001b"), "the demo brief's reason moved");
    let (run_id, ..) = env.record_run(&text).await;
    assert_eq!(env.run_to_end(run_id, 2).await, Finish::Applied);
    let stored: String = sqlx::query_scalar("SELECT brief FROM backfill.runs WHERE run_id = $1")
        .bind(run_id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(stored.contains("\\u001b"), "stored as given");
    let id = run_id.to_string();
    for args in [
        vec!["status", id.as_str()],
        vec!["list"],
        vec!["report", id.as_str()],
        vec!["report", id.as_str(), "--format", "html"],
        vec!["report", id.as_str(), "--json"],
    ] {
        let (code, stdout, stderr) = env.cli(&args).await;
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        for (what, printed) in [("stdout", &stdout), ("stderr", &stderr)] {
            assert!(
                !printed.contains(['\u{1b}', '\u{7}', '\r', '\u{202e}', '\0']),
                "{args:?} printed a character that acts on {what}: {printed:?}"
            );
        }
        if args[0] == "report" && args.len() == 2 {
            assert!(stdout.contains("Refunds\\u{1b}[2J"), "{stdout}");
        }
    }
    env.cleanup().await;
}
