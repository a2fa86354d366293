//! Operating a run: pause stops new batches within one batch's time and resume
//! finishes it; cancel leaves a consistent state that rolls back exactly; the
//! `pause_when` load guard holds every batch while it is true, and the throttle
//! periods are in the run log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::lifecycle::rollback::{self, RollbackOptions};
use backfill_coordinator::resume;
use backfill_coordinator::run::{DriveOptions, Finish};
use backfill_shared::control::batches::{self, Counts};
use backfill_shared::control::runs::RunState;
use backfill_shared::run_gate::Gates;
use backfill_tests::{TestEnv, finish_within, publish_batch};
use std::time::Duration;
use tokio::time::{Instant, sleep};

fn quick() -> DriveOptions {
    DriveOptions {
        progress: false,
        reconcile_every: Duration::from_millis(200),
        guard_cooldown: Duration::from_millis(600),
        ..DriveOptions::default()
    }
}

async fn counts(env: &TestEnv, run_id: uuid::Uuid) -> Counts {
    batches::counts(&env.pool, run_id).await.unwrap()
}

async fn wait_for(env: &TestEnv, run_id: uuid::Uuid, what: &str, done: impl Fn(&Counts) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&counts(env, run_id).await) {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// Waits 2 s and checks that no batch started meanwhile: `applied` are applied
/// and none is running.
async fn assert_nothing_starts(env: &TestEnv, run_id: uuid::Uuid, applied: i64, why: &str) {
    sleep(Duration::from_secs(2)).await;
    let c = counts(env, run_id).await;
    assert_eq!(
        (c.applied, c.running),
        (applied, 0),
        "a batch started {why}: {c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_stops_new_batches_and_resume_finishes() {
    let env = TestEnv::new(0.01).await;
    let (run_id, ..) = env.record_run(&env.slow_brief(12, 2, 0.3).await).await;
    let workers = env.workers(1).await;
    let driver = env.drive_with(run_id, quick());
    wait_for(&env, run_id, "two batches are applied", |c| c.applied >= 2).await;
    resume::pause(&env.pool, run_id, "alice").await.unwrap();
    // As `backfill pause` does: tell the workers now rather than at the
    // coordinator's next reconcile. A worker that looked just before may still
    // start one batch; give it time to show up as running.
    let gates = Gates::new(
        backfill_shared::services::redis(&env.config).await.unwrap(),
        &env.config.namespace,
    );
    gates.publish(&env.pool, run_id).await.unwrap();
    sleep(Duration::from_millis(500)).await;
    // In-flight batches finish within one batch's time; then nothing starts.
    wait_for(&env, run_id, "in-flight batches finish", |c| c.running == 0).await;
    let held = counts(&env, run_id).await.applied;
    assert_nothing_starts(&env, run_id, held, "while paused").await;
    assert!(held < 12);

    resume::resume(&env.pool, run_id, "alice", None)
        .await
        .unwrap();
    let finish = finish_within(driver, 60).await;
    workers.stop().await;
    assert_eq!(finish, Finish::Applied);
    env.assert_exactly_applied(run_id).await;
    env.cleanup().await;
}

/// Whether the run's events queue exists (a passive declare, on a channel of its own).
async fn events_queue_exists(env: &TestEnv, run_id: uuid::Uuid) -> bool {
    let (conn, channel, topology) = env.channel().await;
    let found = channel
        .queue_declare(
            topology.run_events_queue(run_id).as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..lapin::options::QueueDeclareOptions::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .is_ok();
    let _ = conn.close(200, "checked".into()).await;
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_nobody_drives_loses_its_events_queue_when_cancelled() {
    let env = TestEnv::new(0.01).await;
    let (run_id, ..) = env.record_run(&env.brief(4, 1).await).await;
    let (conn, channel, topology) = env.channel().await;
    topology.declare_run_events(&channel, run_id).await.unwrap();
    let _ = conn.close(200, "declared".into()).await;
    assert!(events_queue_exists(&env, run_id).await);
    resume::cancel(&env.pool, run_id, "alice").await.unwrap();
    backfill_coordinator::run::drop_events_queue(&env.config, &env.pool, run_id)
        .await
        .unwrap();
    assert!(!events_queue_exists(&env, run_id).await);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_leaves_a_consistent_state_that_rolls_back() {
    let env = TestEnv::new(0.01).await;
    env.keep_pre_run_copy().await;
    let (run_id, ..) = env.record_run(&env.slow_brief(12, 2, 0.3).await).await;
    let workers = env.workers(1).await;
    let driver = env.drive_with(run_id, quick());
    wait_for(&env, run_id, "three batches are applied", |c| {
        c.applied >= 3
    })
    .await;
    resume::cancel(&env.pool, run_id, "alice").await.unwrap();
    let finish = finish_within(driver, 30).await;
    assert_eq!(finish, Finish::Stopped(RunState::Cancelled));
    // The drive took the run's events queue with it.
    assert!(!events_queue_exists(&env, run_id).await);
    wait_for(&env, run_id, "in-flight batches settle", |c| c.running == 0).await;
    workers.stop().await;
    let c = counts(&env, run_id).await;
    assert!(c.applied >= 3 && c.applied < 12, "{c:?}");
    assert_eq!(c.failed, 0);
    assert!(
        env.not_applied_exactly_once(run_id).await.len()
            == usize::try_from(12 - c.applied).unwrap()
    );

    rollback::rollback(&env.pool, run_id, "alice", RollbackOptions::default())
        .await
        .unwrap();
    assert_eq!(
        env.differs_from_pre_run().await,
        (0, true),
        "rollback of a cancelled run is exact"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_load_guard_holds_batches_while_true() {
    let env = TestEnv::new(0.01).await;
    sqlx::raw_sql(
        "CREATE TABLE tpch.load (busy boolean NOT NULL); INSERT INTO tpch.load VALUES (true);",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let text = env.brief(6, 2).await.replace(
        "max_in_flight = 2",
        "max_in_flight = 2\npause_when = \"SELECT busy FROM tpch.load\"",
    );
    let (run_id, ..) = env.record_run(&text).await;
    let workers = env.workers(2).await;
    let driver = env.drive_with(run_id, quick());
    assert_nothing_starts(&env, run_id, 0, "while pause_when was true").await;

    sqlx::query("UPDATE tpch.load SET busy = false")
        .execute(&env.pool)
        .await
        .unwrap();
    let finish = finish_within(driver, 60).await;
    workers.stop().await;
    assert_eq!(finish, Finish::Applied);
    env.assert_exactly_applied(run_id).await;
    let periods: Vec<(String, Option<f64>)> = sqlx::query_as(
        "SELECT event, (detail->>'seconds')::float8 FROM backfill.run_log
          WHERE run_id = $1 AND event LIKE 'throttle_%' ORDER BY id",
    )
    .bind(run_id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        periods.first().map(|p| p.0.as_str()),
        Some("throttle_started"),
        "{periods:?}"
    );
    let ended = periods
        .iter()
        .find(|p| p.0 == "throttle_ended")
        .expect("the throttle period ended in the log");
    assert!(
        ended.1.unwrap() >= 2.0,
        "the throttle period lasted at least the held time: {periods:?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outside_its_window_no_batch_starts() {
    let env = TestEnv::new(0.01).await;
    let now = chrono::Utc::now().time();
    let later = |h: i64| {
        (now + chrono::Duration::hours(h))
            .format("%H:%M")
            .to_string()
    };
    let text = env.brief(4, 2).await.replace(
        "max_in_flight = 2",
        &format!("max_in_flight = 2\nwindow = \"{}-{}\"", later(2), later(3)),
    );
    let (run_id, ..) = env.record_run(&text).await;
    let workers = env.workers(1).await;
    let driver = env.drive_with(run_id, quick());
    assert_nothing_starts(&env, run_id, 0, "outside the window").await;
    let status = backfill_coordinator::status::status(&env.pool, run_id)
        .await
        .unwrap();
    assert!(status.throttled_since.is_some());
    let reason: String = sqlx::query_scalar(
        "SELECT detail->>'reason' FROM backfill.run_log WHERE run_id = $1 AND event = 'throttle_started'",
    )
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(reason.contains("outside the window"), "{reason}");
    resume::cancel(&env.pool, run_id, "alice").await.unwrap();
    let finish = finish_within(driver, 30).await;
    workers.stop().await;
    assert_eq!(finish, Finish::Stopped(RunState::Cancelled));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_changing_under_the_run_halts_it() {
    // The source still runs; the guard, after it, refuses the batch.
    drift_halts(
        "ALTER TABLE tpch.lineitem ALTER COLUMN l_quantity TYPE numeric(12,2)",
        "l_quantity numeric(12,2)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_column_renamed_under_the_run_halts_it_as_drift() {
    // The source fails on the missing column; the failure is named as the drift.
    drift_halts(
        "ALTER TABLE tpch.lineitem RENAME COLUMN l_discount TO l_rebate",
        "l_rebate numeric(15,2)",
    )
    .await;
}

/// A deploy (`alter`) to a table the source reads, between batches, halts the
/// run at the drift guard, which names the change (`named`).
async fn drift_halts(alter: &str, named: &str) {
    let env = TestEnv::new(0.01).await;
    let (run_id, ..) = env.record_run(&env.slow_brief(10, 1, 0.3).await).await;
    let guarded: Vec<String> = sqlx::query_scalar(
        "SELECT jsonb_object_keys(fingerprints) FROM backfill.runs WHERE run_id = $1 ORDER BY 1",
    )
    .bind(run_id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        guarded,
        ["tpch.lineitem", "tpch.order_revenue", "tpch.orders"],
        "the target and every table the source reads"
    );
    let workers = env.workers(1).await;
    let driver = env.drive_with(run_id, quick());
    wait_for(&env, run_id, "two batches are applied", |c| c.applied >= 2).await;
    // An incompatible deploy to a table the source reads.
    sqlx::query(sqlx::AssertSqlSafe(alter))
        .execute(&env.pool)
        .await
        .unwrap();
    let finish = finish_within(driver, 60).await;
    workers.stop().await;
    let Finish::Halted(reason) = finish else {
        panic!("drift must halt the run: {finish:?}")
    };
    assert!(
        reason.contains("drift guard") && reason.contains("tpch.lineitem changed"),
        "{reason}"
    );
    assert!(reason.contains(named), "the change is named: {reason}");
    let c = counts(&env, run_id).await;
    assert!(c.applied < 10 && c.failed == 1, "{c:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_take_the_run_state_from_redis() {
    use backfill_shared::run_gate::{GATE_TTL, Gates};

    let env = TestEnv::new(0.01).await;
    let text = env.brief(6, 6).await;
    let (run_id, _, plan) = env.record_run(&text).await;
    let mut redis = backfill_shared::services::redis(&env.config).await.unwrap();
    let gates = Gates::new(redis.clone(), &env.config.namespace);
    let key = format!("{}:gate:{run_id}", env.config.namespace);
    // The warehouse says running; Redis says wait. Workers must believe Redis.
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("wait held through Redis")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    let workers = env.workers(1).await;
    let (conn, channel, topo) = env.channel().await;
    for range in &plan {
        publish_batch(&channel, &topo, run_id, &text, range).await;
    }
    assert_nothing_starts(&env, run_id, 0, "while Redis said wait").await;

    // Writing the warehouse's state to Redis lets them go.
    assert_eq!(
        gates.publish(&env.pool, run_id).await.unwrap(),
        backfill_shared::control::runs::Gate::Go
    );
    wait_for(&env, run_id, "every batch is applied", |c| c.applied == 6).await;
    workers.stop().await;
    env.assert_exactly_applied(run_id).await;

    // A missing copy (expired, flushed) is read from the warehouse and cached
    // for a short while only.
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        gates.get(&env.pool, run_id).await.unwrap(),
        backfill_shared::control::runs::Gate::Go
    );
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        ttl_ms > 0 && ttl_ms <= i64::try_from(GATE_TTL.as_millis()).unwrap(),
        "cached gate lives {ttl_ms} ms"
    );
    let _ = conn.close(200, "done".into()).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_without_workers_says_so_once_and_when_they_come() {
    let env = TestEnv::new(0.01).await;
    let (run_id, ..) = env.record_run(&env.slow_brief(8, 1, 0.3).await).await;
    let driver = env.drive_with(
        run_id,
        DriveOptions {
            no_workers_after: Duration::from_secs(1),
            ..quick()
        },
    );
    // A worker applies a batch, so the run has a pace, and leaves: only the
    // missing workers then keep it from an ETA.
    let first = env.workers(1).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while backfill_shared::control::batches::counts(&env.pool, run_id)
        .await
        .unwrap()
        .applied
        == 0
    {
        assert!(Instant::now() < deadline, "no batch was applied");
        sleep(Duration::from_millis(50)).await;
    }
    first.stop().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.logged(run_id, "no_workers").await == 0 {
        assert!(
            Instant::now() < deadline,
            "nobody said that no worker consumes"
        );
        sleep(Duration::from_millis(100)).await;
    }
    let status = backfill_coordinator::status::status(&env.pool, run_id)
        .await
        .unwrap();
    let warning = status.no_workers.clone().unwrap_or_default();
    assert!(
        warning.contains("no backfill-worker is consuming") && warning.contains("start one"),
        "{warning}"
    );
    assert!(status.render().contains("WARNING:  no backfill-worker"));
    // No ETA while nothing moves, in status and list alike, and why.
    assert_eq!(status.eta_seconds, None);
    assert_eq!(
        status.eta_withheld.as_deref(),
        Some("no worker is taking its batches")
    );
    let row = backfill_coordinator::list::row(&env.pool, run_id)
        .await
        .unwrap();
    assert!(row.applied > 0, "{row:?}");
    assert_eq!(row.eta_seconds, None, "{row:?}");
    assert!(
        row.holds.starts_with("no worker is taking its batches"),
        "{row:?}"
    );
    // Said once, however long it lasts.
    sleep(Duration::from_secs(2)).await;
    assert_eq!(env.logged(run_id, "no_workers").await, 1);

    let workers = env.workers(1).await;
    assert_eq!(finish_within(driver, 60).await, Finish::Applied);
    workers.stop().await;
    assert_eq!(env.logged(run_id, "workers_back").await, 1);
    let status = backfill_coordinator::status::status(&env.pool, run_id)
        .await
        .unwrap();
    assert_eq!(status.no_workers, None);
    env.cleanup().await;
}

/// A run's pace counts the time it ran, not the time it stood paused or
/// halted: its ETA after a resume is the remaining batches at that pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_standing_still_is_not_the_runs_pace() {
    let env = TestEnv::new(0.01).await;
    let (run_id, ..) = env.record_run(&env.brief(6, 2).await).await;
    let load = || backfill_shared::control::runs::load(&env.pool, run_id);
    sqlx::query("UPDATE backfill.batches SET state = 'applied' WHERE run_id = $1 AND batch_no < 2")
        .bind(run_id)
        .execute(&env.pool)
        .await
        .unwrap();
    let later = |hours| chrono::Utc::now() + chrono::Duration::hours(hours);
    // Paused, then halted: the clock runs on, the run's active time does not.
    for stop in [RunState::Paused, RunState::Halted] {
        backfill_shared::control::runs::transition(
            &env.pool,
            run_id,
            &[RunState::Running],
            stop,
            "alice",
            Some("standing still"),
        )
        .await
        .unwrap();
        let stopped = load().await.unwrap();
        assert_eq!(stopped.running_since, None);
        assert_eq!(stopped.active_time(later(1)), stopped.active_time(later(5)));
        sleep(Duration::from_secs(2)).await;
        resume::resume(&env.pool, run_id, "alice", Some("on again"))
            .await
            .unwrap();
        let resumed = load().await.unwrap();
        assert_eq!(resumed.active_ms, stopped.active_ms, "{stop}");
        assert!(resumed.running_since.is_some());
    }
    // Four seconds stood still: the active time is that much less than the
    // time since the run started, and the ETA is the remaining four batches
    // at the active pace, in status and list alike.
    let status = backfill_coordinator::status::status(&env.pool, run_id)
        .await
        .unwrap();
    let listed = backfill_coordinator::list::row(&env.pool, run_id)
        .await
        .unwrap();
    let run = load().await.unwrap();
    let now = chrono::Utc::now();
    let active = run.active_time(now);
    assert!(
        (now - run.created_at) - active >= chrono::Duration::seconds(4),
        "active {active} of {}",
        now - run.created_at
    );
    let at_pace = active.num_seconds().max(1) * 4 / 2;
    for eta in [status.eta_seconds, listed.eta_seconds] {
        let eta = eta.expect("a running run with a pace has an ETA");
        assert!(
            eta <= at_pace,
            "ETA {eta} s, {at_pace} s at the active pace"
        );
    }
    env.cleanup().await;
}
