//! The benchmark's measurements and the helpers they share: the baseline, a
//! Backfill run, the large run of (f), resets between cases, worker processes,
//! medians and peak memory.

use crate::{SCHEMA, TestEnv, bin};
use backfill_coordinator::run::{self, DriveOptions, Finish};
use backfill_shared::brief::Brief;
use backfill_shared::control::runs::{self, RunState};
use backfill_shared::sql::{column_list, quote_ident};
use sqlx::{AssertSqlSafe, PgPool};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use uuid::Uuid;

pub(super) async fn exec(pool: &PgPool, sql: &str) {
    sqlx::query(AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Puts the buggy target back as it was before any case ran: fresh heap, fresh statistics.
pub(super) async fn reset(pool: &PgPool) {
    exec(pool, &format!("TRUNCATE {SCHEMA}.order_revenue")).await;
    exec(
        pool,
        &format!("INSERT INTO {SCHEMA}.order_revenue TABLE {SCHEMA}.order_revenue_pristine"),
    )
    .await;
    exec(pool, &format!("VACUUM ANALYZE {SCHEMA}.order_revenue")).await;
    exec(pool, "CHECKPOINT").await;
}

/// (a): the brief's source as one upsert per batch, `connections` at a time,
/// each taking the next batch as soon as it is done.
pub(super) async fn baseline(
    pool: &PgPool,
    brief: &Brief,
    plan: &[backfill_shared::brief::BatchRange],
    connections: u16,
) -> Duration {
    let scope = &brief.scope;
    let mut all: Vec<String> = scope.key.clone();
    all.extend(scope.columns.iter().cloned());
    let set = scope
        .columns
        .iter()
        .map(|c| format!("{c} = EXCLUDED.{c}", c = quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let changed = scope
        .columns
        .iter()
        .map(|c| format!("t.{c} IS DISTINCT FROM EXCLUDED.{c}", c = quote_ident(c)))
        .collect::<Vec<_>>()
        .join(" OR ");
    let sql = Arc::new(format!(
        "INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM ({source}) s \
         ON CONFLICT ({key}) DO UPDATE SET {set} WHERE {changed}",
        target = scope.target.quoted(),
        cols = column_list(&all, None),
        source = scope.source,
        key = column_list(&scope.key, None),
    ));
    let plan = Arc::new(plan.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (pool, sql, plan, next) = (
            pool.clone(),
            Arc::clone(&sql),
            Arc::clone(&plan),
            Arc::clone(&next),
        );
        tasks.spawn(async move {
            let mut conn = pool.acquire().await.expect("a connection");
            while let Some(batch) = plan.get(next.fetch_add(1, Ordering::Relaxed)) {
                sqlx::query(AssertSqlSafe(sql.as_str()))
                    .bind(batch.lo)
                    .bind(batch.hi)
                    .execute(&mut *conn)
                    .await
                    .expect("baseline upsert");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a baseline connection panicked");
    }
    started.elapsed()
}

/// Records a run of `text` and drives it to its end with the running workers.
/// Returns how long driving took; the run is retired afterwards so the next one
/// may take the target.
pub(super) async fn backfill(env: &TestEnv, text: &str) -> Duration {
    backfill_run(env, text).await.0
}

/// [`backfill`], also returning the run.
pub(super) async fn backfill_run(env: &TestEnv, text: &str) -> (Duration, Uuid) {
    let (run_id, ..) = env.record_run(text).await;
    let started = Instant::now();
    let finish = run::drive(
        &env.config,
        &env.pool,
        run_id,
        DriveOptions {
            progress: false,
            ..DriveOptions::default()
        },
    )
    .await
    .expect("drive the benchmark run");
    let took = started.elapsed();
    assert_eq!(finish, Finish::Applied, "the benchmark run did not apply");
    retire(&env.pool, run_id, RunState::Applied).await;
    (took, run_id)
}

/// A benchmark run (in state `from`) lets go of its target.
pub(super) async fn retire(pool: &PgPool, run_id: Uuid, from: RunState) {
    runs::transition(
        pool,
        run_id,
        &[from],
        RunState::Cancelled,
        "bench",
        Some("benchmark run retired"),
    )
    .await
    .expect("retire the run");
}

/// The brief with `batches` one-key batches past the table's last key, whose
/// source yields no rows: nothing to write, remove or leave unmatched.
pub(super) fn empty_brief(text: &str, batches: i64, max_in_flight: u32) -> String {
    let start = text.find("batch_by = ").expect("batch_by");
    let end = start + text[start..].find('\n').expect("end of batch_by");
    // The demo brief's scope ends one past the table's last key.
    let first: i64 = text[start..end]
        .split("end = ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .expect("integer end of batch_by");
    let mut out = format!(
        "{}batch_by = {{ column = \"o_orderkey\", start = {first}, end = {}, step = 1 }}{}",
        &text[..start],
        first + batches,
        &text[end..]
    );
    // Nothing to write and nothing to delete: what is left is orchestration.
    out = out
        .replace(" GROUP BY o.o_orderkey", " AND false GROUP BY o.o_orderkey")
        .replace("on_missing = \"delete\"", "on_missing = \"keep\"");
    let limits = out.find("max_in_flight = ").expect("max_in_flight");
    let limits_end = limits + out[limits..].find('\n').expect("end of max_in_flight");
    format!(
        "{}max_in_flight = {max_in_flight}{}",
        &out[..limits],
        &out[limits_end..]
    )
    .replace(
        &format!("expected_rows = {}", expected_rows(text)),
        "expected_rows = 0",
    )
}

fn expected_rows(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("expected_rows = "))
        .unwrap_or_default()
        .to_owned()
}

pub(super) fn worker(env: &TestEnv, concurrency: u16) -> Child {
    Command::new(bin("backfill-worker"))
        .args(["--concurrency", &concurrency.to_string()])
        .envs(env.env())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start backfill-worker")
}

pub(super) async fn stop(workers: &mut Vec<Child>) {
    for mut w in workers.drain(..) {
        let _ = w.start_kill();
        let _ = w.wait().await;
    }
}

/// What (f) measured.
pub(super) struct LargeRun {
    /// Seconds from starting `backfill run` to the first batch queued in the ledger.
    pub(super) first_published: f64,
    /// Median seconds of a `backfill status` process on the run.
    pub(super) status: f64,
    /// The coordinator's peak resident memory, MB.
    pub(super) peak_mb: f64,
}

/// (f): a `backfill run` process on a run of many batches (no worker takes
/// them): how soon the run is recorded and its first batch published, how long
/// `status` takes on it, and the coordinator's peak resident memory once a few
/// reconciles have read the ledger. The run is cancelled afterwards.
pub(super) async fn large_run(env: &TestEnv, text: &str, repeat: usize) -> LargeRun {
    let dir = std::env::temp_dir().join(format!("{}-bench", env.config.namespace));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let path = dir.join("brief.toml");
    std::fs::write(&path, text).expect("write the brief");
    let started = Instant::now();
    let mut child = Command::new(bin("backfill"))
        .arg("run")
        .arg(&path)
        .args(["--unannounced", "the benchmark"])
        .envs(env.env())
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start backfill run");
    let pid = child.id().expect("a running coordinator");
    let deadline = Instant::now() + Duration::from_secs(600);
    let run_id = loop {
        let queued: Option<Uuid> = sqlx::query_scalar(
            "SELECT run_id FROM backfill.batches WHERE state = 'queued' LIMIT 1",
        )
        .fetch_optional(&env.pool)
        .await
        .expect("ledger query");
        if let Some(run_id) = queued {
            break run_id;
        }
        assert!(
            Instant::now() < deadline,
            "the coordinator published nothing in 10 minutes"
        );
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "the coordinator exited early"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let first_published = started.elapsed().as_secs_f64();
    // A few reconciles, each of which reads the ledger.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let peak_mb = peak_rss_mb(pid).expect("read the coordinator's memory");
    let mut status = Vec::new();
    for _ in 0..repeat {
        let started = Instant::now();
        let out = Command::new(bin("backfill"))
            .args(["status", &run_id.to_string()])
            .envs(env.env())
            .env("RUST_LOG", "error")
            .output()
            .await
            .expect("run backfill status");
        status.push(started.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    retire(&env.pool, run_id, RunState::Running).await;
    let _ = std::fs::remove_dir_all(&dir);
    LargeRun {
        first_published,
        status: median(&status),
        peak_mb,
    }
}

/// The median of some timings, in seconds.
pub(super) fn median(times: &[Duration]) -> f64 {
    let mut secs: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
    secs.sort_by(f64::total_cmp);
    match secs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => secs[n / 2],
        n => f64::midpoint(secs[n / 2 - 1], secs[n / 2]),
    }
}

/// Peak resident set of a process (`VmHWM`), in MB.
pub(super) fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// The CPU model and core count, for the table's heading.
pub(super) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!("{cores} cores, {cpu}")
}
