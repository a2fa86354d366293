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
    assert!(err.to_string().contains("permission denied"), "{err}");
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
