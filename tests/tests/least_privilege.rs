//! The whole life of a run with only the roles of `deploy/roles.sql`, none of
//! them a superuser: alice (an operator, the brief's owner) runs it from the
//! CLI with workers logged in as walt (a worker), validates it and cuts it
//! over; bob (a reviewer) approves; alice rolls it back and cleans up. The
//! warehouse's own grants are the site's, as roles.sql says: alice owns the
//! target, workers write it, everyone reads the sources.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_tests::TestEnv;

/// `url` with `role` as its user.
fn as_login(url: &str, role: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let rest = rest.split_once('@').map_or(rest, |(_, r)| r);
    format!("{scheme}://{role}@{rest}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_lives_its_whole_life_under_the_documented_roles() {
    let env = TestEnv::new(0.01).await;
    let logins = env
        .logins(&[
            ("alice", "backfill_operator", true),
            ("bob", "backfill_reviewer", true),
            ("walt", "backfill_worker", false),
        ])
        .await;
    let [alice, bob, walt] = ["alice", "bob", "walt"].map(|w| logins.role(w));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT USAGE ON SCHEMA tpch TO backfill_viewer;
         GRANT SELECT ON ALL TABLES IN SCHEMA tpch TO backfill_viewer;
         ALTER TABLE tpch.order_revenue OWNER TO {alice};
         ALTER MATERIALIZED VIEW tpch.monthly_revenue OWNER TO {alice};
         GRANT INSERT, UPDATE, DELETE ON tpch.order_revenue TO backfill_worker;
         GRANT USAGE, CREATE ON SCHEMA tpch TO {alice};"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("bf-roles-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("brief.toml");
    std::fs::write(&path, env.brief(6, 2).await).unwrap();
    let path = path.to_str().unwrap();

    let url = |role: &str| as_login(&env.config.database_url, role);
    let workers = backfill_worker::InProcessWorkers::start(
        &env.config.clone().with_database_url(&url(&walt)),
        2,
        &backfill_worker::WorkerOptions::default(),
    )
    .await
    .expect("workers log in as walt");
    let as_who = |role: &str| vec![("BACKFILL_DATABASE_URL", url(role))];
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
    let out = step(&alice, &["run", path, "--unannounced", "the roles test"]).await;
    let run_id = out.lines().next().unwrap().trim().to_owned();
    workers.stop().await;
    step(&alice, &["validate", &run_id]).await;
    step(&bob, &["approve", &run_id]).await;
    step(&alice, &["cutover", &run_id]).await;
    step(&alice, &["rollback", &run_id]).await;
    step(&alice, &["cleanup", &run_id, "--now"]).await;
    assert!(
        env.differences().await > 0,
        "rollback did not restore the table"
    );
    // Each step is on the record as the login that took it.
    let by: Vec<(String, String)> = sqlx::query_as(
        "SELECT event, session_role::text FROM backfill.run_log
          WHERE event IN ('run_created', 'run_approved', 'batch_applied', 'run_rolled_back') ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    for (event, role) in &by {
        let expected = match event.as_str() {
            "run_approved" => &bob,
            "batch_applied" => &walt,
            _ => &alice,
        };
        assert_eq!(role, expected, "{event}: {by:?}");
    }
    assert!(by.iter().any(|(e, _)| e == "run_approved"), "{by:?}");

    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
    logins.drop().await;
}
