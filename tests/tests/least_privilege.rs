//! The whole life of a run with only the roles of `deploy/roles.sql`, none of
//! them a superuser: alice (an operator, the brief's owner) runs it from the
//! CLI with workers logged in as walt (a worker), validates it and cuts it
//! over; bob (a reviewer) approves; alice rolls it back and cleans up. Then a
//! run with a canary: bob promotes it from the CLI, and in the console (logged
//! in to the warehouse as cora, of `backfill_console`) bob approves, alice cuts
//! over and rolls back. The warehouse's own grants are the site's, as
//! roles.sql says: alice owns the target, workers write it, everyone reads the
//! sources, and the console's login is a member of alice's role, whose table
//! its people's actions change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_lives_its_whole_life_under_the_documented_roles() {
    let env = TestEnv::new(0.01).await;
    let logins = env
        .logins(&[
            ("alice", "backfill_operator", true),
            ("bob", "backfill_reviewer", true),
            ("walt", "backfill_worker", false),
            ("cora", "backfill_console", false),
        ])
        .await;
    let [alice, bob, walt, cora] = ["alice", "bob", "walt", "cora"].map(|w| logins.role(w));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE tpch.order_revenue OWNER TO {alice};
         ALTER MATERIALIZED VIEW tpch.monthly_revenue OWNER TO {alice};
         GRANT INSERT, UPDATE, DELETE ON tpch.order_revenue TO backfill_worker;
         GRANT USAGE, CREATE ON SCHEMA tpch TO {alice};
         GRANT {alice} TO {cora};"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("bf-roles-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("brief.toml");
    std::fs::write(&path, env.brief(6, 2).await).unwrap();
    let path = path.to_str().unwrap();

    let workers = backfill_worker::InProcessWorkers::start(
        &env.config.clone().with_database_url(&logins.url("walt")),
        2,
        &backfill_worker::WorkerOptions::default(),
    )
    .await
    .expect("workers log in as walt");
    let as_who = |who: &str| vec![("BACKFILL_DATABASE_URL", logins.url(who))];
    let step = async |who: &str, args: &[&str]| {
        let vars = as_who(who);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (code, stdout, stderr) = env.cli_with(args, &vars).await;
        assert_eq!(
            code,
            Some(0),
            "`backfill {}` as {who}:\n{stdout}\n{stderr}",
            args.join(" ")
        );
        stdout
    };
    let out = step("alice", &["run", path, "--unannounced", "the roles test"]).await;
    let run_id = out.lines().next().unwrap().trim().to_owned();
    step("alice", &["validate", &run_id]).await;
    step("bob", &["approve", &run_id]).await;
    let cut = step("alice", &["cutover", &run_id]).await;
    // alice owns the table, so cutover gathers its statistics.
    assert!(cut.contains("analyzed tpch.order_revenue"), "{cut}");
    step("alice", &["rollback", &run_id]).await;
    step("alice", &["cleanup", &run_id, "--now"]).await;
    assert!(
        env.differences().await > 0,
        "rollback did not restore the table"
    );

    // A canary: the run waits for bob, who promotes it from the CLI.
    let canary_path = dir.join("canary.toml");
    std::fs::write(
        &canary_path,
        env.brief(6, 2)
            .await
            .replace("[limits]\n", "[limits]\ncanary = { batches = 1 }\n"),
    )
    .unwrap();
    let out = step(
        "alice",
        &[
            "run",
            canary_path.to_str().unwrap(),
            "--detach",
            "--unannounced",
            "the roles test",
        ],
    )
    .await;
    let canary: uuid::Uuid = out.lines().next().unwrap().trim().parse().unwrap();
    until_state(&env, canary, "canary").await;
    step("bob", &["promote", &canary.to_string()]).await;
    until_state(&env, canary, "applied").await;
    workers.stop().await;
    step("alice", &["validate", &canary.to_string()]).await;

    // The console, logged in to the warehouse as cora, acts for each person.
    let tokens = "alice:alice-token-0123456789,bob:bob-token-0123456789abc";
    let auth = backfill_coordinator::console::Auth {
        tokens: backfill_coordinator::console::Auth::parse_tokens(tokens).unwrap(),
        ..Default::default()
    };
    let console_login = env.config.clone().with_database_url(&logins.url("cora"));
    let addr = backfill_coordinator::console::serve(
        logins.pool("cora").clone(),
        console_login,
        "127.0.0.1:0".parse().unwrap(),
        auth,
    )
    .await
    .unwrap()
    .to_string();
    let act = async |who: &str, action: &str| {
        let token = tokens
            .split(',')
            .find_map(|t| t.strip_prefix(&format!("{who}:")))
            .unwrap();
        let bearer = format!("Bearer {token}");
        let headers = [("Authorization", bearer.as_str())];
        let page = format!("/runs/{canary}");
        let (_, form) = backfill_tests::http(&addr, "GET", &page, &headers, "").await;
        let csrf = backfill_tests::form_csrf(&form);
        let (status, body) = backfill_tests::http(
            &addr,
            "POST",
            &format!("{page}/actions/{action}"),
            &headers,
            &format!("csrf={csrf}&reason=&confirm=yes"),
        )
        .await;
        assert_eq!(status, 303, "{action} as {who} in the console: {body}");
    };
    act("bob", "approve").await;
    act("alice", "cutover").await;
    act("alice", "rollback").await;
    until_state(&env, canary, "rolled_back").await;
    // Each step is on the record as the login that took it.
    let by: Vec<(String, String)> = sqlx::query_as(
        "SELECT event, session_role::text FROM backfill.run_log
          WHERE event IN ('run_created', 'run_approved', 'canary_promoted', 'batch_applied', 'run_rolled_back') ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    for (event, role) in &by {
        let expected = match event.as_str() {
            "run_approved" | "canary_promoted" => &bob,
            "batch_applied" => &walt,
            _ => &alice,
        };
        assert_eq!(role, expected, "{event}: {by:?}");
    }
    for event in ["run_approved", "canary_promoted", "run_rolled_back"] {
        let times = if event == "canary_promoted" { 1 } else { 2 };
        assert_eq!(
            by.iter().filter(|(e, _)| e == event).count(),
            times,
            "{event}: {by:?}"
        );
    }

    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
    logins.drop().await;
}

/// Waits (at most two minutes) until the run is in `state`.
async fn until_state(env: &TestEnv, run_id: uuid::Uuid, state: &str) {
    for _ in 0..1200 {
        let now: String = sqlx::query_scalar("SELECT state FROM backfill.runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
        if now == state {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("run {run_id} did not reach {state}");
}
