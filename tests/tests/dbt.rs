//! The dbt graph as blast radius, with a real dbt: `dbt parse` of the test
//! project (`tests/dbt`: a source on the demo's target, a table model on it, a
//! view model on that, tests on the source and the table, and a dashboard
//! exposure on both models) writes the manifest the brief names.
//! `plan`, `announce` and `report` list what it has downstream, the exposure's
//! owner joins the stakeholders, and the tests to run after cutover are named
//! with the command that runs them. Cutover runs `dbt build` on what lies
//! downstream as a refresh step: a failing build stops cutover at that step
//! with dbt's last lines, and cutover run again builds the models from the
//! backfilled table. A manifest that cannot be read stops the plan, naming the
//! path and how to write one.
//!
//! dbt comes from `bash deploy/install-test-tools.sh` (a virtualenv in
//! `tests/dbt/.venv`, pinned by `tests/dbt/requirements.txt`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::lifecycle::approve;
use backfill_coordinator::validate;
use backfill_tests::TestEnv;
use backfill_tests::receiver::Receiver;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The test project, beside this file's crate.
fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dbt")
}

/// Runs dbt `args` on the test project against `env`'s database, writing
/// into `work`; returns what it printed. Fails naming the install script when
/// dbt is not installed.
async fn dbt(env: &TestEnv, work: &Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new(dbt_program())
        .args(args)
        .args(dbt_paths(work))
        .env("DBT_DBNAME", &env.database)
        .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        .env("DO_NOT_TRACK", "1")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run dbt");
    let printed =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dbt {args:?} failed:\n{printed}");
    printed
}

/// The installed dbt; fails naming the install script when it is missing.
fn dbt_program() -> String {
    let dbt = project().join(".venv/bin/dbt");
    assert!(
        dbt.exists(),
        "{} is missing: run `bash deploy/install-test-tools.sh`",
        dbt.display()
    );
    dbt.to_str().unwrap().to_owned()
}

/// Where dbt finds the project and its profile, and writes into `work`.
fn dbt_paths(work: &Path) -> Vec<String> {
    let project = project().to_str().unwrap().to_owned();
    let work = work.to_str().unwrap();
    vec![
        "--project-dir".into(),
        project.clone(),
        "--profiles-dir".into(),
        project,
        "--target-path".into(),
        format!("{work}/target"),
        "--log-path".into(),
        format!("{work}/logs"),
    ]
}

/// Net revenue summed over a dbt model (`inc_monthly_revenue`, incremental;
/// `mb_yearly_revenue`, microbatch).
async fn model_sum(env: &TestEnv, model: &'static str) -> f64 {
    let sql = match model {
        "inc_monthly_revenue" => {
            "SELECT sum(net_revenue)::float8 FROM analytics.inc_monthly_revenue"
        }
        "mb_yearly_revenue" => "SELECT sum(net_revenue)::float8 FROM analytics.mb_yearly_revenue",
        other => panic!("no model {other}"),
    };
    sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap()
}

const INCREMENTAL: [&str; 2] = ["inc_monthly_revenue", "mb_yearly_revenue"];

/// Net revenue summed over the dbt table model, and over the target.
async fn sums(env: &TestEnv) -> (f64, f64) {
    sqlx::query_as(
        "SELECT (SELECT sum(net_revenue) FROM analytics.monthly_net_revenue)::float8,
                (SELECT sum(net_revenue) FROM tpch.order_revenue)::float8",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_announce_and_report_name_what_dbt_has_downstream() {
    let env = TestEnv::new(0.01).await;
    let work = std::env::temp_dir().join(format!("bf-dbt-{}", env.config.namespace));
    std::fs::create_dir_all(&work).unwrap();
    dbt(&env, &work, &["parse"]).await;
    let manifest = work.join("target/manifest.json");
    assert!(manifest.exists(), "dbt parse wrote no manifest");
    // The models as they stand before the backfill: built from the buggy table.
    dbt(&env, &work, &["run"]).await;
    let (model_before, target) = sums(&env).await;
    assert!(
        (model_before - target).abs() < 0.01,
        "{model_before} vs {target}"
    );

    // Cutover builds everything downstream of the target, and tests it.
    // With --full-refresh: the incremental model is rebuilt for the past too.
    let mut build = vec![
        dbt_program(),
        "build".into(),
        "--select".into(),
        "source:tpch.order_revenue+".into(),
        "--full-refresh".into(),
    ];
    build.extend(dbt_paths(&work));
    let refresh = format!(
        "refresh = [{{ run = {}, dir = \"{}\" }}]",
        serde_json::to_string(&build).unwrap(),
        work.display()
    );
    let brief = env.brief(6, 2).await.replace(
        "[dependencies]\ndownstream = [\"tpch.monthly_revenue\"]",
        &format!(
            "[dependencies]\ndbt_manifest = \"{}\"\n{refresh}\ndownstream = [\"tpch.monthly_revenue\", \"analytics.monthly_net_revenue\", \"exposure:finance_board\"]",
            manifest.display()
        ),
    );
    assert!(
        brief.contains("dbt_manifest"),
        "the demo brief changed:\n{brief}"
    );
    // Where the board reads revenue: the incremental model, by its dbt name,
    // beside the demo's own metric on the materialized view.
    let brief = brief.replacen(
        "\n[limits]",
        "\n[[validation.downstream]]\nname = \"board revenue\"\nrelation = \"inc_monthly_revenue\"\n\
         expr = \"sum(net_revenue)\"\nby = \"month\"\nexpect_change_pct = [-70, 0]\n\n[limits]",
        1,
    );
    assert!(
        brief.contains("relation = \"tpch.monthly_revenue\"") && brief.contains("board revenue"),
        "the demo brief changed:\n{brief}"
    );
    let path = work.join("brief.toml");
    std::fs::write(&path, &brief).unwrap();
    let path = path.to_str().unwrap();

    let (code, plan, stderr) = env.cli(&["plan", path]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        plan.contains("incremental models downstream keep the old history unless rebuilt: inc_monthly_revenue (--full-refresh), mb_yearly_revenue (microbatch: --event-time-start/--event-time-end over the backfilled period)"),
        "{plan}"
    );
    let line = |name: &str| {
        plan.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name} in:\n{plan}"))
            .to_owned()
    };
    let monthly = line("analytics.monthly_net_revenue");
    assert!(
        monthly.contains("dbt model, table")
            && monthly.contains("declared")
            && !monthly.contains("hops"),
        "{monthly}"
    );
    let best = line("analytics.best_months");
    assert!(
        best.contains("dbt model, view")
            && best.contains("via 2 hops")
            && best.contains("NOT DECLARED"),
        "{best}"
    );
    let board = line("finance_board");
    assert!(
        board.contains("dbt exposure, dashboard")
            && board.contains("declared")
            && !board.contains("NOT DECLARED")
            && board.contains("owner Fiona Finance <fiona@example.com>"),
        "{board}"
    );
    // The catalog's own finding is still there, and nothing declared is
    // left unfound.
    assert!(line("tpch.monthly_revenue").contains("materialized view"));
    assert!(!plan.contains("outside the catalog"), "{plan}");
    assert!(
        plan.contains(
            "stakeholders: finance, growth, Fiona Finance <fiona@example.com> (exposure finance_board)"
        ),
        "{plan}"
    );
    assert!(
        plan.contains(&format!(
            "dbt ({}): tpch.order_revenue is source.shop.tpch.order_revenue; after cutover run its 5 test(s) downstream: `dbt test --select source:tpch.order_revenue+`",
            manifest.display()
        )),
        "{plan}"
    );
    for test in [
        "source_not_null_tpch_order_revenue_o_orderkey",
        "source_unique_tpch_order_revenue_o_orderkey",
        "not_null_monthly_net_revenue_month",
        "unique_monthly_net_revenue_month",
    ] {
        assert!(plan.contains(test), "{test} not in:\n{plan}");
    }

    let (code, json, stderr) = env.cli(&["plan", path, "--json"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    // The data tests on the source and the table model, and the unit test.
    assert_eq!(json["dbt"]["tests"].as_array().unwrap().len(), 5, "{json}");
    assert!(
        json["dbt"]["tests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "sums_a_month"),
        "{json}"
    );
    assert_eq!(json["dbt"]["selector"], "source:tpch.order_revenue+");
    let exposure = json["dependents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "finance_board")
        .unwrap();
    assert_eq!(exposure["depth"], 2);
    assert_eq!(exposure["owner"], "Fiona Finance <fiona@example.com>");

    // The announcement names the exposure and tells its owner.
    let (code, note, stderr) = env
        .cli(&["announce", path, "--window", "2026-12-01..2026-12-02"])
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        note.contains("finance_board (dbt exposure, dashboard)")
            && note.contains("Fiona Finance <fiona@example.com> (exposure finance_board)"),
        "{note}"
    );

    // The report of the run says the same, from the manifest as it is now.
    // The run's OpenLineage events carry it in their `backfill_run` facet.
    let lineage = Receiver::start().await;
    let mut worker = env.spawn_worker(&[]);
    let hook = format!("{}/hook", lineage.url);
    let (code, stdout, stderr) = env
        .cli_with(
            &["run", path],
            &[
                ("OPENLINEAGE_URL", &lineage.url),
                ("BACKFILL_WEBHOOK_URL", &hook),
            ],
        )
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    let run_id: Uuid = stdout.lines().next().unwrap().parse().unwrap();
    let taken = lineage
        .until("the run's COMPLETE event and its webhook", |t| {
            t.iter().any(|e| e.body["eventType"] == "COMPLETE")
                && t.iter()
                    .any(|e| e.body["type"] == "dev.backfill.run.applied")
        })
        .await;
    let events: Vec<_> = taken
        .iter()
        .filter(|e| e.path == "/api/v1/lineage")
        .collect();
    let facet = &events[0].body["run"]["facets"]["backfill_run"];
    // The webhook's stakeholders are the brief's and the exposures' owners.
    let applied = taken
        .iter()
        .find(|e| e.body["type"] == "dev.backfill.run.applied")
        .unwrap();
    assert_eq!(
        applied.body["data"]["stakeholders"],
        serde_json::json!([
            "finance",
            "growth",
            "Fiona Finance <fiona@example.com> (exposure finance_board)"
        ]),
        "{}",
        applied.body
    );
    assert_eq!(
        facet["dbtSelector"], "source:tpch.order_revenue+",
        "{facet}"
    );
    assert_eq!(facet["dbtTests"].as_array().unwrap().len(), 5, "{facet}");
    assert!(
        facet["dbtDownstream"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "finance_board"
                && d["owner"] == "Fiona Finance <fiona@example.com>"),
        "{facet}"
    );
    let (model, target) = sums(&env).await;
    assert!(
        (model - target).abs() > 1.0,
        "the backfill changed the target but not the model yet: {model} vs {target}"
    );

    // Cutover: dbt without its database fails, and stops cutover there with
    // what dbt said; with it, cutover goes on and the model is rebuilt.
    validate::validate(&env.pool, run_id).await.unwrap();
    approve::approve(&env.reviewer, run_id, None).await.unwrap();
    let (code, _, stderr) = env.cli(&["cutover", &run_id.to_string()]).await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("stopped at refresh step 1 (")
            && stderr.contains("dbt build --select source:tpch.order_revenue+")
            && stderr.contains("exited with")
            && stderr.contains("DBT_DBNAME")
            && stderr.contains(&format!("backfill cutover {run_id}` runs it again")),
        "{stderr}"
    );
    let (code, stdout, stderr) = env
        .cli_with(
            &["cutover", &run_id.to_string()],
            &[("DBT_DBNAME", &env.database)],
        )
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("ran 1 refresh step(s)"), "{stdout}");
    // Everything downstream that stores data was rebuilt: the materialized
    // view refreshed, each dbt model named by dbt's run_results.json.
    let reached = stdout
        .lines()
        .find(|l| l.starts_with("the refresh reached: "))
        .unwrap_or_else(|| panic!("no 'the refresh reached' line in:\n{stdout}"));
    for relation in [
        "tpch.monthly_revenue",
        "analytics.monthly_net_revenue",
        "analytics.inc_monthly_revenue",
        "analytics.mb_yearly_revenue",
    ] {
        assert!(reached.contains(relation), "{relation} not in {reached}");
    }
    assert!(!stdout.contains("not confirmed rebuilt"), "{stdout}");
    // Measured where they are read, once refreshed: both moved as expected.
    for line in [
        "ok   monthly net revenue (tpch.monthly_revenue): expected -70 % to 0 %, measured -",
        "ok   board revenue (analytics.inc_monthly_revenue): expected -70 % to 0 %, measured -",
    ] {
        assert!(stdout.contains(line), "{line:?} not in:\n{stdout}");
    }
    let checks = validate::validate(&env.pool, run_id).await.unwrap();
    let downstream = checks
        .iter()
        .find(|c| c.name == "downstream metrics")
        .unwrap();
    assert!(downstream.passed, "{downstream:?}");
    for judged in downstream.detail.as_array().unwrap() {
        assert!(
            judged["groups"].as_array().unwrap().len() > 12
                && judged["problems"].as_array().unwrap().is_empty()
                && judged["awaiting_cutover"] == false,
            "{judged}"
        );
    }
    let (model, target) = sums(&env).await;
    assert!((model - target).abs() < 0.01, "{model} vs {target}");
    // The incremental and microbatch models too, rebuilt for the past
    // (--full-refresh).
    for model in INCREMENTAL {
        let sum = model_sum(&env, model).await;
        assert!(
            (sum - target).abs() < 0.01,
            "{model} holds {sum}, the target {target}"
        );
    }
    let logged: serde_json::Value = sqlx::query_scalar(
        "SELECT detail->'detail' FROM backfill.run_log WHERE run_id = $1 AND event = 'cutover_step' AND detail->>'step' = 'refresh'",
    )
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(logged["exit"], 0);
    assert!(
        logged["output"]
            .as_str()
            .unwrap()
            .contains("Completed successfully"),
        "{logged}"
    );
    // Plain text: no colour codes in the log, whatever dbt printed.
    assert!(!logged.to_string().contains("\\u001b"), "{logged}");

    let (code, report, stderr) = env.cli(&["report", &run_id.to_string()]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let first = report.find("## ").unwrap();
    assert!(
        report[first..].starts_with("## What stakeholders see")
            && report
                .contains("| board revenue | analytics.inc_monthly_revenue | -70 % to 0 % | -")
            && report.contains("the 24 most changed of"),
        "{report}"
    );
    // The refresh's dbt job, node by node, beside the run before it.
    assert!(
        report.contains("- Rebuilt: analytics.inc_monthly_revenue (dbt model, incremental): dbt built inc_monthly_revenue (")
            && report.contains("| dbt node | the run before | this refresh |")
            && report.contains("| model.shop.monthly_net_revenue | "),
        "{report}"
    );
    assert!(
        report.contains("in the catalog and the dbt manifest:")
            && report.contains("analytics.best_months (dbt model, view)")
            && report.contains("Fiona Finance <fiona@example.com> (exposure finance_board)")
            && report.contains("| dbt | tpch.order_revenue is source.shop.tpch.order_revenue;"),
        "{report}"
    );
    let (code, json, stderr) = env.cli(&["report", &run_id.to_string(), "--json"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        json["dbt"]["selector"], "source:tpch.order_revenue+",
        "{json}"
    );
    assert!(json["dbt_error"].is_null(), "{json}");
    // Gone since: the report says so instead of failing.
    std::fs::remove_file(&manifest).unwrap();
    let (code, report, stderr) = env.cli(&["report", &run_id.to_string()]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        report.contains(&format!("| dbt | cannot read {}", manifest.display())),
        "{report}"
    );
    let (_, json, _) = env.cli(&["report", &run_id.to_string(), "--json"]).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(json["dbt"].is_null(), "{json}");
    assert!(
        json["dbt_error"].as_str().unwrap().contains("cannot read"),
        "{json}"
    );
    worker.start_kill().unwrap();
    let _ = worker.wait().await;

    // Rollback runs the refresh steps again: the dbt model follows the target
    // back to what it was before the run.
    let (code, stdout, stderr) = env
        .cli_with(
            &["rollback", &run_id.to_string()],
            &[("DBT_DBNAME", &env.database)],
        )
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("ran the brief's 1 refresh step(s) again"),
        "{stdout}"
    );
    // Measured again: back at their figures before the run.
    for line in [
        "ok   monthly net revenue (tpch.monthly_revenue): expected unchanged, measured +0.0 %",
        "ok   board revenue (analytics.inc_monthly_revenue): expected unchanged, measured +0.0 %",
    ] {
        assert!(stdout.contains(line), "{line:?} not in:\n{stdout}");
    }
    assert_eq!(env.logged(run_id, "downstream_measured").await, 2);
    let (model, target) = sums(&env).await;
    assert!(
        (model - model_before).abs() < 0.01 && (model - target).abs() < 0.01,
        "after rollback the model holds {model}, the target {target}, before the run {model_before}"
    );
    for model in INCREMENTAL {
        let sum = model_sum(&env, model).await;
        assert!(
            (sum - model_before).abs() < 0.01,
            "after rollback {model} holds {sum}, before the run {model_before}"
        );
    }

    // A brief whose refresh rebuilds no model for the past: cutover refuses,
    // naming both models and the way on, and changes nothing; told why they
    // may stay stale it goes on, and they keep the old history as it warned.
    let lax = brief.replace("\"--full-refresh\",", "");
    assert_ne!(lax, brief, "the refresh step lost its --full-refresh");
    let lax_path = work.join("lax.toml");
    std::fs::write(&lax_path, &lax).unwrap();
    let mut worker = env.spawn_worker(&[]);
    let (code, stdout, stderr) = env
        .cli(&[
            "run",
            lax_path.to_str().unwrap(),
            "--unannounced",
            "the same change as the run before",
        ])
        .await;
    worker.start_kill().unwrap();
    let _ = worker.wait().await;
    assert_eq!(code, Some(0), "{stderr}");
    let lax_run: Uuid = stdout.lines().next().unwrap().parse().unwrap();
    env.validate_and_approve(lax_run).await;
    let dbt_db = [("DBT_DBNAME", env.database.as_str())];
    let id = lax_run.to_string();
    let (code, _, stderr) = env.cli_with(&["cutover", &id], &dbt_db).await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("would leave incremental dbt models downstream")
            && INCREMENTAL.iter().all(|m| stderr.contains(m))
            && stderr.contains(&format!("backfill cutover {id} --stale-ok")),
        "{stderr}"
    );
    assert_eq!(
        backfill_shared::control::runs::state(&env.pool, lax_run)
            .await
            .unwrap(),
        backfill_shared::control::runs::RunState::Approved
    );
    let (code, stdout, stderr) = env
        .cli_with(
            &[
                "cutover",
                &id,
                "--stale-ok",
                "the board reads monthly_net_revenue only",
            ],
            &dbt_db,
        )
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(env.logged(lax_run, "stale_models_accepted").await, 1);
    assert!(
        stdout.contains("ok   monthly net revenue (tpch.monthly_revenue)")
            && stdout.contains("FAIL board revenue (analytics.inc_monthly_revenue): expected -70 % to 0 %, measured +0.0 %")
            && stdout.contains("did not move though the run changed the target: stale")
            && stdout.contains("WARNING: not confirmed rebuilt: analytics.inc_monthly_revenue (dbt model, incremental): dbt ran inc_monthly_revenue incrementally: it kept the history the run rewrote"),
        "{stdout}"
    );
    // The stale model fails validation and keeps the run from being done,
    // named; the materialized view, refreshed, passes.
    let checks = validate::validate(&env.pool, lax_run).await.unwrap();
    let downstream = checks
        .iter()
        .find(|c| c.name == "downstream metrics")
        .unwrap();
    assert!(
        !downstream.passed
            && downstream
                .summary
                .contains("board revenue (analytics.inc_monthly_revenue)")
            && downstream.summary.contains("stale"),
        "{downstream:?}"
    );
    let (code, done, stderr) = env
        .cli(&[
            "done",
            &id,
            "--told",
            "in the channel",
            "--lesson",
            "rebuild the past",
            "--json",
        ])
        .await;
    assert_eq!(code, Some(1), "{stderr}");
    let done: serde_json::Value = serde_json::from_str(&done).unwrap();
    let item = done["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "downstream metrics")
        .unwrap();
    assert!(
        item["ok"] == false
            && item["detail"]
                .as_str()
                .unwrap()
                .contains("analytics.inc_monthly_revenue")
            && !item["detail"]
                .as_str()
                .unwrap()
                .contains("tpch.monthly_revenue"),
        "{done}"
    );
    let item = done["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "refresh reached downstream")
        .unwrap();
    let detail = item["detail"].as_str().unwrap();
    assert!(
        item["ok"] == false
            && detail.contains(
                "analytics.inc_monthly_revenue (dbt ran inc_monthly_revenue incrementally"
            )
            && detail
                .contains("analytics.mb_yearly_revenue (dbt ran mb_yearly_revenue incrementally")
            && !detail.contains("monthly_net_revenue"),
        "{done}"
    );
    assert_eq!(done["done"], false, "{done}");
    let (model, target) = sums(&env).await;
    assert!((model - target).abs() < 0.01, "{model} vs {target}");
    let stale = model_sum(&env, "inc_monthly_revenue").await;
    assert!(
        (stale - target).abs() > 1.0,
        "the incremental model was rebuilt after all: {stale} vs {target}"
    );
    let (code, _, stderr) = env.cli_with(&["rollback", &id], &dbt_db).await;
    assert_eq!(code, Some(0), "{stderr}");

    // A plan with a manifest that cannot be read stops, naming it and the fix
    // (the rollback's dbt build wrote it again).
    let _ = std::fs::remove_file(&manifest);
    let (code, _, stderr) = env.cli(&["plan", path]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("dependencies.dbt_manifest")
            && stderr.contains(&format!("cannot read {}", manifest.display()))
            && stderr.contains("dbt parse"),
        "{stderr}"
    );

    let _ = std::fs::remove_dir_all(&work);
    env.cleanup().await;
}
