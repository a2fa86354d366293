//! Identity from the database login and the least-privilege roles of
//! `deploy/roles.sql`, with real PostgreSQL roles: the owner's role cannot
//! approve, even naming the reviewer, nor past the CLI; the reviewer's role
//! can; a viewer cannot pause, approve or cut over; a worker cannot approve;
//! the run log records the session user of every action.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::lifecycle::{approve, cutover};
use backfill_coordinator::resume;
use backfill_coordinator::run::Finish;
use backfill_coordinator::validate;
use backfill_shared::control::runs::{self, RunState};
use backfill_tests::{TestEnv, ship_revenue};
use std::time::Duration;

/// A direct approval past the CLI, as `pool`'s role.
async fn approve_by_sql<'e>(pool: impl sqlx::PgExecutor<'e>, run_id: uuid::Uuid) -> sqlx::Error {
    sqlx::query(
        "UPDATE backfill.runs SET state = 'approved', approved_by = 'bob', approved_at = now(),
                approved_validation = (SELECT max(id) FROM backfill.validation_runs WHERE run_id = $1)
          WHERE run_id = $1",
    )
    .bind(run_id)
    .execute(pool)
    .await
    .unwrap_err()
}

fn denied(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42501"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_role_does_what_it_should_and_nothing_else() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    // A run to approve (applied, validated) and one to pause (recorded, running).
    let (run_id, ..) = env
        .record_run(&ship_revenue::brief("merge", "delete", ""))
        .await;
    assert_eq!(env.run_to_end(run_id, 1).await, Finish::Applied);
    validate::validate(&env.pool, run_id).await.unwrap();
    let (running, ..) = env.record_run(&env.brief(4, 1).await).await;

    // The documented roles, and one login per person.
    let logins = env
        .logins(&[
            ("alice", "backfill_operator", true),
            ("bob", "backfill_reviewer", true),
            ("vera", "backfill_viewer", false),
            ("walt", "backfill_worker", false),
            ("cora", "backfill_console", false),
        ])
        .await;
    let login = |who: &str| logins.role(who);
    let [alice, bob, vera, walt, cora] =
        ["alice", "bob", "vera", "walt", "cora"].map(|w| logins.pool(w));

    // The owner cannot approve: not naming the reviewer, not past the CLI.
    let err = approve::approve(alice, run_id, Some("bob"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("this session is alice"), "{err}");
    let err = approve::approve(alice, run_id, None).await.unwrap_err();
    assert!(err.to_string().contains("owns run"), "{err}");
    let err = approve_by_sql(alice, run_id).await;
    assert!(denied(&err), "{err}");
    assert!(err.to_string().contains("only bob"), "{err}");
    // Nor may the owner accept a failed check, through the CLI or past it.
    let err = validate::accept(alice, run_id, "uniqueness", "looks fine")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("owns run"), "{err}");
    let err = sqlx::query(
        "INSERT INTO backfill.check_acceptances (validation_run, check_name, actor, reason)
         SELECT max(id), 'uniqueness', 'alice', 'x' FROM backfill.validation_runs WHERE run_id = $1",
    )
    .bind(run_id)
    .execute(alice)
    .await
    .unwrap_err();
    assert!(denied(&err), "{err}");

    // A worker cannot approve.
    let err = approve::approve(walt, run_id, None).await.unwrap_err();
    assert!(
        err.to_string().contains("nobody in backfill.people"),
        "{err}"
    );
    assert!(denied(&approve_by_sql(walt, run_id).await));

    // Only the console's login acts for someone else: the owner naming the
    // reviewer's role in backfill.acting_role is still the owner; the console
    // acting for the owner cannot approve either.
    for (pool, acts_for, believed) in [
        (alice, "bob", false),
        (cora, "bob", true),
        (cora, "alice", true),
    ] {
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("SELECT set_config('backfill.acting_role', $1, false)")
            .bind(login(acts_for))
            .execute(&mut *conn)
            .await
            .unwrap();
        let acting: String = sqlx::query_scalar("SELECT backfill.acting_role()::text")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let me: String = sqlx::query_scalar("SELECT session_user::text")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(acting, if believed { login(acts_for) } else { me });
        if acts_for == "alice" || !believed {
            let err = approve_by_sql(&mut *conn, run_id).await;
            assert!(denied(&err), "{err}");
        }
        sqlx::query("RESET backfill.acting_role")
            .execute(&mut *conn)
            .await
            .unwrap();
    }

    // A viewer reads, and cannot pause, approve or cut over.
    assert_eq!(runs::state(vera, run_id).await.unwrap(), RunState::Applied);
    let err = resume::pause(vera, running, "vera").await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(err.to_string().contains("permission denied"), "{err}");
    assert!(approve::approve(vera, run_id, None).await.is_err());
    assert!(denied(&approve_by_sql(vera, run_id).await));

    // The operator pauses; the reviewer approves.
    resume::pause(alice, running, "alice").await.unwrap();
    assert_eq!(approve::approve(bob, run_id, None).await.unwrap(), "bob");
    assert_eq!(
        runs::state(&env.pool, run_id).await.unwrap(),
        RunState::Approved
    );
    let err = cutover::cutover(vera, run_id, "vera", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("only the owner (alice) or the reviewer (bob)"),
        "{err}"
    );
    assert_eq!(
        runs::state(&env.pool, run_id).await.unwrap(),
        RunState::Approved
    );

    // The run log records the session user of every action.
    let entries: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT event, actor, session_role::text FROM backfill.run_log
          WHERE run_id = ANY($1) ORDER BY id",
    )
    .bind(vec![run_id, running])
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let approved = entries.iter().find(|e| e.0 == "run_approved").unwrap();
    assert_eq!(
        (approved.1.as_str(), approved.2.clone()),
        ("bob", login("bob"))
    );
    let paused = entries
        .iter()
        .find(|e| e.0 == "run_paused" || e.0.contains("paus"));
    assert_eq!(
        paused.map(|e| e.2.clone()),
        Some(login("alice")),
        "{entries:?}"
    );
    let superuser: String = sqlx::query_scalar("SELECT session_user::text")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(
        entries
            .iter()
            .all(|e| [superuser.clone(), login("alice"), login("bob")].contains(&e.2)),
        "{entries:?}"
    );

    env.cleanup().await;
    logins.drop().await;
}

/// Every run's row as JSON, and every run-log entry: what a refused forgery
/// must leave as it was.
async fn record(env: &TestEnv) -> (Vec<serde_json::Value>, i64) {
    let runs = sqlx::query_scalar("SELECT to_jsonb(r) FROM backfill.runs r ORDER BY run_id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let log = sqlx::query_scalar("SELECT count(*) FROM backfill.run_log")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    (runs, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forgeries_in_sql_are_refused_and_change_nothing() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    let (applied, ..) = env
        .record_run(&ship_revenue::brief("merge", "delete", ""))
        .await;
    assert_eq!(env.run_to_end(applied, 1).await, Finish::Applied);
    validate::validate(&env.pool, applied).await.unwrap();
    let logins = env
        .logins(&[
            ("alice", "backfill_operator", true),
            ("bob", "backfill_reviewer", true),
            ("walt", "backfill_worker", false),
            ("carol", "backfill_operator", true),
        ])
        .await;
    let login = |who: &str| logins.role(who);
    let [alice, bob, walt, carol] = ["alice", "bob", "walt", "carol"].map(|w| logins.pool(w));
    let before = record(&env).await;

    // Rename the owner and the reviewer, then approve: refused at the rename.
    let err = sqlx::query(
        "UPDATE backfill.runs SET owner = 'carol', reviewer = 'alice' WHERE run_id = $1",
    )
    .bind(applied)
    .execute(alice)
    .await
    .unwrap_err();
    assert!(denied(&err), "{err}");
    assert!(
        err.to_string().contains("fixed when it is recorded"),
        "{err}"
    );

    // A view shadowing pg_roles, to pass as a superuser naming the reviewer:
    // nobody but the schema's owner creates anything in schema backfill.
    let err = sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE VIEW backfill.pg_roles AS SELECT '{}'::name AS rolname, true AS rolsuper",
        login("alice")
    )))
    .execute(alice)
    .await
    .unwrap_err();
    assert!(denied(&err), "{err}");
    // A search path that finds schema backfill first, and the reviewer named
    // as the person acted for: the rules read pg_catalog and the session.
    let mut conn = alice.acquire().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET search_path = backfill, pg_catalog; SET backfill.acting_role = '{}';",
        login("bob")
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    let err = approve_by_sql(&mut *conn, applied).await;
    assert!(denied(&err), "{err}");
    // What that session logs is logged as alice, whoever it names.
    sqlx::query(
        "INSERT INTO backfill.run_log (run_id, actor, event, detail, session_role)
         VALUES ($1, 'bob', 'forged', '{}', $2)",
    )
    .bind(applied)
    .bind(login("bob"))
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::raw_sql("RESET search_path; RESET backfill.acting_role")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);

    // A passing validation inserted by the operator is never enough: the
    // reviewer's approval naming it is refused, whoever the insert names.
    let forged: i64 = sqlx::query_scalar(
        "INSERT INTO backfill.validation_runs (run_id, actor, passed, failed, fingerprint, recorded_by)
         SELECT run_id, 'bob', true, '{}', fingerprint, $2 FROM backfill.validation_runs
          WHERE run_id = $1 ORDER BY id DESC LIMIT 1 RETURNING id",
    )
    .bind(applied)
    .bind(login("bob"))
    .fetch_one(alice)
    .await
    .unwrap();
    let err = sqlx::query(
        "UPDATE backfill.runs SET state = 'approved', approved_by = 'bob', approved_at = now(),
                approved_validation = $2 WHERE run_id = $1",
    )
    .bind(applied)
    .bind(forged)
    .execute(bob)
    .await
    .unwrap_err();
    assert!(denied(&err), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("recorded by role {}", login("alice"))),
        "{err}"
    );

    // A run whose brief names another owner: refused to its recorder, by the
    // CLI and by the database, naming both.
    let carols = ship_revenue::brief("merge", "delete", "")
        .replace("owner = \"alice\"", "owner = \"carol\"")
        .replace("reviewer = \"bob\"", "reviewer = \"alice\"");
    let brief = backfill_shared::brief::Brief::parse(&carols).unwrap();
    let plan = brief.scope.batch_by.plan().unwrap();
    let err = backfill_coordinator::run::create(alice, &carols, &brief, &plan)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("names carol as owner, but this session is alice"),
        "{err}"
    );
    let err = sqlx::query(
        "INSERT INTO backfill.runs SELECT (jsonb_populate_record(NULL::backfill.runs,
             to_jsonb(r) || jsonb_build_object('run_id', gen_random_uuid(), 'state', 'running',
                 'target', 'tpch.forged', 'owner', 'carol', 'reviewer', 'alice', 'finished_at', NULL))).*
           FROM backfill.runs r WHERE run_id = $1",
    )
    .bind(applied)
    .execute(alice)
    .await
    .unwrap_err();
    assert!(denied(&err), "{err}");
    assert!(err.to_string().contains("names carol as owner"), "{err}");

    // Another operator, neither owner nor reviewer, cancels the run or sets it
    // going: refused by the CLI and by the database.
    let err = resume::cancel(carol, applied, "carol").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("only the owner (alice) or the reviewer (bob)"),
        "{err}"
    );
    for state in ["cancelled", "rolling_back"] {
        let err = sqlx::query("UPDATE backfill.runs SET state = $2 WHERE run_id = $1")
            .bind(applied)
            .bind(state)
            .execute(carol)
            .await
            .unwrap_err();
        assert!(denied(&err), "{state}: {err}");
        assert!(
            err.to_string()
                .contains("only the owner (alice) or the reviewer (bob)"),
            "{err}"
        );
    }

    // A worker rewrites an applied batch's figures: refused.
    let err = sqlx::query("UPDATE backfill.batches SET rows_inserted = 0 WHERE run_id = $1")
        .bind(applied)
        .execute(walt)
        .await
        .unwrap_err();
    assert!(denied(&err), "{err}");

    // A copy of the run, inserted already approved or cut over.
    for state in ["approved", "cut_over", "applied"] {
        let err = sqlx::query(
            "INSERT INTO backfill.runs SELECT (jsonb_populate_record(NULL::backfill.runs,
                 to_jsonb(r) || jsonb_build_object('run_id', gen_random_uuid(), 'state', $2::text,
                                                   'target', 'tpch.forged'))).*
               FROM backfill.runs r WHERE run_id = $1",
        )
        .bind(applied)
        .bind(state)
        .execute(alice)
        .await
        .unwrap_err();
        assert!(denied(&err), "{state}: {err}");
    }

    // Straight to cut over, as the reviewer or the operator.
    for pool in [alice, bob] {
        let err = sqlx::query("UPDATE backfill.runs SET state = 'cut_over' WHERE run_id = $1")
            .bind(applied)
            .execute(pool)
            .await
            .unwrap_err();
        assert!(denied(&err), "{err}");
    }

    // The figures measured before the run, rewritten so the change looks
    // expected: refused. The time it ran, rewritten so its pace looks
    // better: kept as the database counts it.
    let err = sqlx::query(
        "UPDATE backfill.runs SET params = jsonb_set(params, '{target_table_bytes}', '1')
          WHERE run_id = $1",
    )
    .bind(applied)
    .execute(alice)
    .await
    .unwrap_err();
    assert!(denied(&err), "{err}");
    assert!(
        err.to_string().contains("is fixed when it is recorded"),
        "{err}"
    );
    sqlx::query("UPDATE backfill.runs SET active_ms = 1, running_since = now() WHERE run_id = $1")
        .bind(applied)
        .execute(alice)
        .await
        .unwrap();

    // Run-log rows name their session, whatever the insert says.
    for (pool, who) in [(alice, "alice"), (walt, "walt")] {
        sqlx::query(
            "INSERT INTO backfill.run_log (run_id, actor, event, detail, session_role)
             VALUES ($1, 'bob', 'forged', '{}', $2)",
        )
        .bind(applied)
        .bind(login("bob"))
        .execute(pool)
        .await
        .unwrap();
        let named: String = sqlx::query_scalar(
            "SELECT session_role::text FROM backfill.run_log WHERE event = 'forged' ORDER BY id DESC LIMIT 1",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert_eq!(named, login(who));
    }
    let forged: Vec<String> = sqlx::query_scalar(
        "SELECT session_role::text FROM backfill.run_log WHERE event = 'forged' ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(forged, [login("alice"), login("alice"), login("walt")]);

    // Nothing but those three entries changed; the reviewer still approves.
    let after = record(&env).await;
    assert_eq!(after.0, before.0, "a refused forgery changed a run");
    assert_eq!(after.1, before.1 + 3);
    assert_eq!(approve::approve(bob, applied, None).await.unwrap(), "bob");

    env.cleanup().await;
    logins.drop().await;
}
