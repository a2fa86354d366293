//! The `backfill` binary as an operator meets it: malformed briefs are refused
//! with an error naming the field (exit 2, nothing recorded); a batch whose source
//! fails halts the run with the error (exit 1); a second run on the same target is
//! refused with the first's id; an unreachable service is named (exit 3).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_tests::{TestEnv, bin};
use std::process::Output;
use tokio::process::Command;

async fn backfill(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(bin("backfill"))
        .args(args)
        .envs(env.env())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run backfill")
}

async fn runs_recorded(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM backfill.runs")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

fn write_brief(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_briefs_are_refused_with_the_field_and_exit_2() {
    let env = TestEnv::new(0.01).await;
    sqlx::query("CREATE TABLE tpch.no_unique (o_orderkey bigint, o_orderdate date, gross numeric, net_revenue numeric, line_count int)")
        .execute(&env.pool)
        .await
        .unwrap();
    let good = env.brief(10, 4).await;
    let source_start = good.find("source = \"\"\"").unwrap();
    let source_end = good[source_start + 12..].find("\"\"\"").unwrap() + source_start + 15;
    let with_downstream = |relation: &str, expr: &str| {
        let entry = format!(
            "[[validation.downstream]]\nname = \"board\"\nrelation = \"{relation}\"\nexpr = \"{expr}\"\nunchanged = true\n\n[limits]"
        );
        let text = good.replacen("\n[limits]", &format!("\n{entry}"), 1);
        assert_ne!(text, good, "the demo brief has no [limits]");
        text
    };
    let with_source = |s: &str| {
        format!(
            "{}source = \"\"\"\n{s}\n\"\"\"{}",
            &good[..source_start],
            &good[source_end..]
        )
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("not TOML", "[brief\nname = ".into(), "not valid TOML"),
        ("missing section", good.replace("[rollback]\nplan = \"Before-images per batch in the run's image table restore every changed row.\"\nretain_days = 14\n", ""), "[rollback]"),
        ("blank section", good.replace("[dependencies]\ndownstream = [\"tpch.monthly_revenue\"]\nstakeholders = [\"finance\", \"growth\"]", "[dependencies]"), "[dependencies]"),
        ("owner is reviewer", good.replace("reviewer = \"bob\"", "reviewer = \"alice\""), "brief.reviewer"),
        ("unknown strategy", good.replace("strategy = \"merge\"", "strategy = \"upsert\""), "write.strategy"),
        (
            "a load guard that is not a boolean",
            good.replace("max_in_flight = 4", "max_in_flight = 4\npause_when = \"SELECT 1\""),
            "limits.pause_when",
        ),
        (
            "a NOT NULL column the backfill does not write",
            good.replace("columns = [\"o_orderdate\", \"o_custkey\", ", "columns = ["),
            "o_orderdate is NOT NULL",
        ),
        ("unknown risk", good.replace("risk = \"metric-changing\"", "risk = \"yolo\""), "brief.risk"),
        ("start after end", good.replace("start = 1,", "start = 99999999,"), "scope.batch_by"),
        ("zero step", regex_step(&good, "0"), "scope.batch_by.step"),
        ("float bounds", good.replace("start = 1,", "start = 1.5,"), "scope.batch_by.start"),
        ("missing target", good.replace("target = \"tpch.order_revenue\"", "target = \"tpch.nope\""), "scope.target"),
        ("unknown key column", good.replace("key = [\"o_orderkey\"]", "key = [\"order_id\"]"), "scope.key"),
        ("key without unique constraint", good.replace("target = \"tpch.order_revenue\"", "target = \"tpch.no_unique\"").replace("\"o_custkey\", ", ""), "scope.key"),
        ("source does not prepare", with_source("SELECT * FROM tpch.nowhere WHERE x >= $1 AND x < $2"), "scope.source"),
        ("source with one parameter", with_source("SELECT o_orderkey, o_orderdate, 1.0 AS gross, 1.0 AS net_revenue, 1 AS line_count FROM tpch.orders WHERE o_orderkey >= $1 AND $2::bigint > 0 AND o_orderkey < $3"), "exactly two"),
        ("source without a column", with_source("SELECT o_orderkey, o_orderdate, 1.0 AS gross, 1 AS line_count FROM tpch.orders WHERE o_orderkey >= $1 AND o_orderkey < $2"), "net_revenue"),
        ("batch_by type differs from the column", good.replace("column = \"o_orderkey\", start = 1,", "column = \"o_orderdate\", start = 1,"), "scope.batch_by"),
        ("a downstream metric on a relation that does not read the target", with_downstream("tpch.customer", "count(*)"), "validation.downstream[1].relation: tpch.customer is not downstream of tpch.order_revenue"),
        ("a downstream metric that does not evaluate", with_downstream("tpch.monthly_revenue", "sum(nope)"), "validation.downstream[1]: \"board\" does not evaluate on tpch.monthly_revenue"),
        ("a dbt model's name without a manifest", with_downstream("monthly_model", "count(*)"), "validation.downstream[1].relation: \"monthly_model\" names no schema"),
    ];
    let dir = std::env::temp_dir().join(format!("bf-briefs-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text, field) in &cases {
        let path = write_brief(&dir, &name.replace(' ', "-"), text);
        for verb in ["plan", "run"] {
            let out = backfill(&env, &[verb, &path]).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{name}: `{verb}` should exit 2; stderr: {stderr}"
            );
            assert!(
                stderr.contains(field),
                "{name}: `{verb}` error should name {field:?}; got: {stderr}"
            );
            assert!(
                out.stdout.is_empty(),
                "{name}: `{verb}` printed a run id: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    assert_eq!(
        runs_recorded(&env).await,
        0,
        "a malformed brief created a run"
    );

    // Every problem at once, not only the first.
    let many = good
        .replace("reviewer = \"bob\"", "reviewer = \"alice\"")
        .replace("strategy = \"merge\"", "strategy = \"upsert\"")
        .replace("max_in_flight = 4", "max_in_flight = 0");
    let out = backfill(&env, &["plan", &write_brief(&dir, "many", &many)]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    for field in ["brief.reviewer", "write.strategy", "limits.max_in_flight"] {
        assert!(stderr.contains(field), "missing {field}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

fn regex_step(brief: &str, step: &str) -> String {
    let at = brief.find("step = ").unwrap() + 7;
    let end = at + brief[at..].find(' ').unwrap();
    format!("{}{step}{}", &brief[..at], &brief[end..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_halts_the_run_and_status_shows_the_error() {
    let env = TestEnv::new(0.01).await;
    // Batch 5 divides by zero at run time; the source still prepares, and
    // `plan` samples batches 0, 2, 4, 6 and 9, so only the run meets it.
    let good = env.brief(10, 1).await;
    let step: i64 = {
        let at = good.find("step = ").unwrap() + 7;
        good[at..at + good[at..].find(' ').unwrap()]
            .parse()
            .unwrap()
    };
    // The fault is in what the source computes, which only a batch computes
    // (plan's coverage asks only whether a batch has rows).
    let text = good.replace(
        "count(*)::integer AS line_count",
        &format!(
            "(count(*) / (CASE WHEN o.o_orderkey >= {} AND o.o_orderkey < {} THEN 0 ELSE 1 END))::integer AS line_count",
            1 + 5 * step,
            1 + 6 * step
        ),
    );
    let dir = std::env::temp_dir().join(format!("bf-fail-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let path = write_brief(&dir, "failing", &text);
    let mut worker = env.spawn_worker(&[]);
    let out = backfill(&env, &["run", &path, "--unannounced", "a CLI test"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("division by zero"), "{stderr}");
    let run_id = stdout
        .lines()
        .next()
        .expect("run id on the first line")
        .trim()
        .to_owned();
    uuid::Uuid::parse_str(&run_id).expect("first line is the run id");

    let out = backfill(&env, &["status", &run_id, "--json"]).await;
    assert_eq!(out.status.code(), Some(0));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["run_id"], run_id.as_str());
    assert_eq!(status["state"], "halted");
    assert_eq!(status["batches"]["failed"], 1);
    assert_eq!(
        status["batches"]["applied"], 5,
        "batches before the bad one are applied, one at a time"
    );
    assert!(
        status["failures"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("division by zero")
    );
    assert!(
        status["batches"]["pending"].as_i64().unwrap() >= 3,
        "batches after the halt must not run"
    );

    // One active run per target: a second is refused with the first's id.
    let out = backfill(&env, &["run", &path, "--unannounced", "a CLI test"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&run_id));
    worker.start_kill().unwrap();
    let _ = worker.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_service_is_named_with_exit_3() {
    let env = TestEnv::new(0.01).await;
    let brief = env.brief(4, 2).await;
    let dir = std::env::temp_dir().join(format!("bf-down-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let path = write_brief(&dir, "ok", &brief);
    let out = Command::new(bin("backfill"))
        .args(["run", &path, "--unannounced", "a CLI test"])
        .envs(env.env())
        .env("BACKFILL_AMQP_URL", "amqp://guest:sekrit@127.0.0.1:1/%2f")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("RabbitMQ") && stderr.contains("rabbitmq-server"),
        "{stderr}"
    );
    assert!(!stderr.contains("sekrit"), "password leaked: {stderr}");
    assert_eq!(
        runs_recorded(&env).await,
        0,
        "a run was recorded although the broker is down"
    );
    // A broker that takes the connection and never answers is named too, in
    // bounded time, and nothing is recorded.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket);
        }
    });
    let out = Command::new(bin("backfill"))
        .args(["run", &path, "--unannounced", "a CLI test"])
        .envs(env.env())
        .env(
            "BACKFILL_AMQP_URL",
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        )
        .output()
        .await
        .unwrap();
    held.abort();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("no answer to the handshake") && stderr.contains("rabbitmqctl status"),
        "{stderr}"
    );
    assert_eq!(runs_recorded(&env).await, 0);
    // A refused login: one line that says what to do, nothing else.
    let out = Command::new(bin("backfill-worker"))
        .envs(env.env())
        .env(
            "BACKFILL_AMQP_URL",
            "amqp://guest:wrong-sekrit@127.0.0.1:5672/%2f",
        )
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("Check the user and password in BACKFILL_AMQP_URL")
            && !lines[0].contains("..")
            && !lines[0].contains("wrong-sekrit"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_detach_prints_only_the_run_id_and_the_run_completes() {
    let env = TestEnv::new(0.01).await;
    let dir = std::env::temp_dir().join(format!("bf-detach-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let path = write_brief(&dir, "detach", &env.brief(8, 4).await);
    let mut worker = env.spawn_worker(&[]);
    let out = backfill(
        &env,
        &["run", &path, "--detach", "--unannounced", "a CLI test"],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "--detach prints the run id only: {stdout:?}"
    );
    let run_id = uuid::Uuid::parse_str(stdout.trim()).expect("a run id");

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = backfill(&env, &["status", &run_id.to_string(), "--json"]).await;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if status["state"] == "applied" {
            assert_eq!(status["batches"]["applied"], 8);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "detached run did not finish: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(env.differences().await, 0);
    worker.start_kill().unwrap();
    let _ = worker.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_map_names_to_database_roles() {
    let env = TestEnv::new(0.01).await;
    let role: String = sqlx::query_scalar("SELECT session_user::text")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let out = backfill(&env, &["people", "whoami"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("alice (database role {role})")
    );
    // A role that does not exist, or is someone else already, is refused.
    let out = backfill(
        &env,
        &["people", "add", "carol", "--role", "no_such_role_x"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database role"));
    let out = backfill(&env, &["people", "add", "carol", "--role", &role]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is already alice"));
    let out = backfill(
        &env,
        &[
            "people",
            "add",
            "carol",
            "--role",
            "pg_monitor",
            "--email",
            "carol@example.com",
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = backfill(&env, &["people"]).await;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("carol") && listed.contains("carol@example.com") && listed.contains("bob"),
        "{listed}"
    );
    let out = backfill(&env, &["people", "remove", "carol"]).await;
    assert_eq!(out.status.code(), Some(0));
    let out = backfill(&env, &["people", "remove", "carol"]).await;
    assert_eq!(out.status.code(), Some(2));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_demo_example_runs() {
    let env = TestEnv::new(0.01).await;
    // The flags the README shows; the demo loads its own data into schema demo.
    let out = backfill(
        &env,
        &[
            "demo",
            "--scale",
            "0.01",
            "--workers",
            "4",
            "--batches",
            "50",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("differs from an independent recomputation in 0 rows")
            && stdout.contains("Approved by bob; cut over"),
        "{stdout}"
    );
    // With --json the story goes to stderr and stdout holds one summary.
    let out = backfill(
        &env,
        &["demo", "--scale", "0.01", "--batches", "10", "--json"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(summary["differences_remaining"], 0, "{summary}");
    assert_eq!(summary["state"], "cut_over", "{summary}");
    assert!(stderr.contains("Approved by bob; cut over"), "{stderr}");
    // A view someone made on the demo's table: the demo names it and drops
    // nothing it did not create.
    sqlx::query("CREATE VIEW demo.analyst_view AS SELECT o_orderkey FROM demo.order_revenue")
        .execute(&env.pool)
        .await
        .unwrap();
    let out = backfill(&env, &["demo", "--scale", "0.01", "--batches", "10"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("demo.analyst_view") && stderr.contains("drops nothing it did not create"),
        "{stderr}"
    );
    let kept: bool = sqlx::query_scalar("SELECT to_regclass('demo.analyst_view') IS NOT NULL")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(kept);
    env.cleanup().await;
}

/// The demo starts `backfill-worker` processes: without one it says how to get
/// one, before loading any data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_names_a_missing_worker_binary() {
    let env = TestEnv::new(0.01).await;
    let dir = std::env::temp_dir().join(format!("backfill-alone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let alone = dir.join("backfill");
    std::fs::copy(bin("backfill"), &alone).unwrap();
    let out = Command::new(&alone)
        .args(["demo", "--scale", "0.01"])
        .envs(env.env())
        .env("PATH", "/usr/bin:/bin")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("backfill-worker") && stderr.contains("cargo build --bins"),
        "{stderr}"
    );
    assert!(!stderr.contains("Generating TPC-H"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_driving_and_follow_drives_the_run_on() {
    use tokio::io::AsyncBufReadExt as _;
    let env = TestEnv::new(0.01).await;
    let dir = std::env::temp_dir().join(format!("bf-sigterm-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let path = write_brief(&dir, "slow", &env.slow_brief(8, 1, 0.5).await);
    let workers = env.workers(1).await;
    let mut coordinator = Command::new(bin("backfill"))
        .args(["run", &path, "--unannounced", "a CLI test"])
        .envs(env.env())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(coordinator.stdout.take().unwrap()).lines();
    let run_id = uuid::Uuid::parse_str(lines.next_line().await.unwrap().unwrap().trim()).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let applied: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM backfill.batches WHERE run_id = $1 AND state = 'applied'",
        )
        .bind(run_id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        if applied >= 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no batch applied");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid = coordinator.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        coordinator.wait_with_output(),
    )
    .await
    .expect("the coordinator stops on SIGTERM")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains(&format!("backfill follow {run_id}")),
        "{stderr}"
    );
    // It let go of the run: another process drives it to its end.
    let out = backfill(&env, &["follow", &run_id.to_string()]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    workers.stop().await;
    env.assert_exactly_applied(run_id).await;
    env.cleanup().await;
}
