//! The benchmark: Backfill against hand-written SQL on the same machine, in the
//! same run, on TPC-H data it generates (`cargo bench -p backfill-tests --bench
//! backfill`, see the README). It measures
//!
//! - (a) the baseline: the brief's source as one `INSERT … ON CONFLICT DO UPDATE`
//!   per batch, issued by as many connections as there are workers;
//! - (b) Backfill on the same brief and batches: coordinator, RabbitMQ, Redis
//!   leases, the ledger and its fencing, every per-batch check (metric limit by
//!   year, reference check, NULL counts, grain, unmatched rows); before-images off;
//! - (c) the same with before-images on;
//! - (d) orchestration alone: batches whose source yields no rows, end to end;
//! - (e) peak resident memory of the worker processes during (b);
//! - (f) a 1,000,000-batch run: recorded and its first batch published, `status`
//!   on it, and the coordinator's peak resident memory;
//! - (h) the fingerprint `validate` records and cutover checks, measured on the
//!   table (c) wrote, as a share of (c).
//!
//! (a) to (d) run `repeat` times, interleaved, and each figure is the median.
//! Each Backfill figure is printed with its ratio to the baseline and its target.

use crate::{SCHEMA, TestEnv, bin};
use backfill_coordinator::run::{self, DriveOptions, Finish};
use backfill_shared::brief::Brief;
use backfill_shared::control::runs::{self, RunState};
use backfill_shared::sql::{column_list, quote_ident};
use sqlx::{AssertSqlSafe, PgPool};
use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use uuid::Uuid;

/// What to measure, and how big.
#[derive(Debug, Clone)]
pub struct Options {
    /// TPC-H scale factor of the data (1 = 1.5 M orders, 6 M line items).
    pub scale: f64,
    /// About how many batches (a), (b) and (c) cut the orders into.
    pub batches: i64,
    /// Workers in (b) and (c), and connections in (a).
    pub workers: u16,
    /// Batches of (d).
    pub empty_batches: i64,
    /// Concurrency of each of the two workers in (d).
    pub empty_concurrency: u16,
    /// Batches of the large run (f) records.
    pub plan_batches: i64,
    /// How often (a) to (d) and the `status` of (f) are measured; the median counts.
    pub repeat: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            scale: 1.0,
            batches: 101,
            workers: 2,
            empty_batches: 20_000,
            empty_concurrency: 16,
            plan_batches: 1_000_000,
            repeat: 3,
        }
    }
}

/// One line of the result table.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub case: String,
    pub value: f64,
    pub unit: &'static str,
    /// Against the baseline (a), for timings.
    pub ratio: Option<f64>,
    /// The target, as text, and whether it was met.
    pub target: Option<(String, bool)>,
}

/// Everything one benchmark run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub options: Options,
    pub orders: i64,
    pub batches: usize,
    pub machine: String,
    pub lines: Vec<Line>,
}

impl Report {
    /// The table, as Markdown (it reads well in a terminal too).
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = format!(
            "Backfill benchmark: TPC-H scale {} ({} orders), {} batches, {} workers, median of {}; {}\n\n",
            self.options.scale,
            self.orders,
            self.batches,
            self.options.workers,
            self.options.repeat,
            self.machine
        );
        out.push_str("| case | measured | ratio to (a) | target | met |\n| --- | ---: | ---: | --- | --- |\n");
        for line in &self.lines {
            let value = match line.unit {
                "s" => format!("{:.2} s", line.value),
                "MB" => format!("{:.1} MB", line.value),
                unit => format!("{:.0} {unit}", line.value),
            };
            let ratio = line.ratio.map_or_else(String::new, |r| format!("{r:.2}"));
            let (target, met) = line.target.as_ref().map_or_else(
                || (String::new(), String::new()),
                |(t, met)| (t.clone(), if *met { "yes" } else { "no" }.to_owned()),
            );
            let _ = writeln!(
                out,
                "| {} | {value} | {ratio} | {target} | {met} |",
                line.case
            );
        }
        out
    }
}

/// Runs every measurement on a fresh database; leaves nothing behind.
pub async fn run(options: &Options) -> Report {
    eprintln!("bench: loading TPC-H at scale {} …", options.scale);
    let env = TestEnv::new(options.scale).await;
    let pool = env.pool.clone();
    exec(
        &pool,
        &format!("CREATE TABLE {SCHEMA}.order_revenue_pristine AS TABLE {SCHEMA}.order_revenue"),
    )
    .await;
    let orders: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {SCHEMA}.orders"
    )))
    .fetch_one(&pool)
    .await
    .expect("count orders");
    let window = u32::from(options.workers) * 2;
    // Small batches move a year's revenue a lot; the limit is not what is measured.
    let text = backfill_coordinator::demo::with_max_change_pct(
        &env.brief(options.batches, window).await,
        100,
    );
    let brief = Brief::parse(&text).expect("the demo brief lints");
    let plan = brief.scope.batch_by.plan().expect("the demo brief plans");
    let mut lines = Vec::new();
    let repeat = options.repeat.max(1);
    let mut workers: Vec<Child> = Vec::new();
    let (mut a, mut b, mut c, mut d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut worker_peak = 0.0;
    for round in 1..=repeat {
        eprintln!(
            "bench: round {round} of {repeat}: (a) baseline, {} batches …",
            plan.len()
        );
        reset(&pool).await;
        a.push(baseline(&pool, &brief, &plan, options.workers).await);
        // Like for like: the baseline must produce what the backfill produces.
        assert_eq!(
            env.differences().await,
            0,
            "the baseline did not produce the recomputation"
        );
        workers.extend((0..options.workers).map(|_| worker(&env, 1)));
        for snapshot in [false, true] {
            eprintln!(
                "bench: round {round}: ({}) Backfill, before-images {} …",
                if snapshot { "c" } else { "b" },
                if snapshot { "on" } else { "off" }
            );
            reset(&pool).await;
            let text = if snapshot {
                text.clone()
            } else {
                backfill_coordinator::demo::without_before_images(&text)
            };
            let took = backfill(&env, &text).await;
            assert_eq!(
                env.differences().await,
                0,
                "the run did not produce the recomputation"
            );
            if snapshot {
                c.push(took);
            } else {
                b.push(took);
                // Peak memory of the workers: (b) is all they have done.
                worker_peak = workers
                    .iter()
                    .filter_map(|w| w.id().and_then(peak_rss_mb))
                    .fold(worker_peak, f64::max);
            }
        }
        stop(&mut workers).await;
        reset(&pool).await;
        eprintln!(
            "bench: round {round}: (d) {} batches that write nothing …",
            options.empty_batches
        );
        workers.extend((0..2).map(|_| worker(&env, options.empty_concurrency)));
        d.push(backfill(&env, &empty_brief(&text, options.empty_batches, 512)).await);
        stop(&mut workers).await;
    }
    let baseline = median(&a);
    lines.push(Line {
        case: format!(
            "(a) baseline: one upsert per batch, {} connections",
            options.workers
        ),
        value: baseline,
        unit: "s",
        ratio: Some(1.0),
        target: None,
    });
    for (case, took, limit) in [
        (
            "(b) Backfill, every guard on, before-images off",
            median(&b),
            1.20,
        ),
        (
            "(c) Backfill, every guard on, before-images on",
            median(&c),
            1.30,
        ),
    ] {
        let ratio = took / baseline;
        lines.push(Line {
            case: case.into(),
            value: took,
            unit: "s",
            ratio: Some(ratio),
            target: Some((format!("≤ {limit:.2} × (a)"), ratio <= limit)),
        });
    }
    // (g): what `plan` said before (b), against what (b) did.
    let no_images = Brief::parse(&backfill_coordinator::demo::without_before_images(&text))
        .expect("the bench brief lints");
    reset(&pool).await;
    let (planned, ..) = backfill_coordinator::plan::plan(&pool, &no_images)
        .await
        .expect("plan the bench brief");
    let estimate = planned.with_workers(options.workers).estimate;
    let rows_off = (estimate.rows_total - orders).abs() as f64 / orders as f64;
    lines.push(Line {
        case: format!(
            "(g) plan's row estimate: {} against {orders} written",
            estimate.rows_total
        ),
        value: rows_off * 100.0,
        unit: "% off",
        ratio: None,
        target: Some(("within 25 %".into(), rows_off <= 0.25)),
    });
    let time_off = (estimate.wall_seconds - median(&b)).abs() / median(&b);
    lines.push(Line {
        case: format!(
            "(g) plan's time estimate: {:.1} s against (b)'s {:.1} s",
            estimate.wall_seconds,
            median(&b)
        ),
        value: time_off * 100.0,
        unit: "% off",
        ratio: None,
        target: Some(("within 50 %".into(), time_off <= 0.5)),
    });
    let rate = f64::from(u32::try_from(options.empty_batches).unwrap_or(u32::MAX)) / median(&d);
    lines.push(Line {
        case: format!(
            "(d) orchestration: {} batches that write nothing",
            options.empty_batches
        ),
        value: rate,
        unit: "batches/s",
        ratio: None,
        target: Some(("≥ 1,000 batches/s".into(), rate >= 1_000.0)),
    });
    lines.push(Line {
        case: "(e) worker peak resident memory during (b)".into(),
        value: worker_peak,
        unit: "MB",
        ratio: None,
        target: Some(("≤ 64 MB".into(), worker_peak <= 64.0)),
    });

    eprintln!("bench: (f) a run of {} batches …", options.plan_batches);
    let large = large_run(&env, &empty_brief(&text, options.plan_batches, 64), repeat).await;
    lines.push(Line {
        case: format!(
            "(f) {} batches: recorded and the first one published",
            options.plan_batches
        ),
        value: large.first_published,
        unit: "s",
        ratio: None,
        target: Some(("≤ 5 s".into(), large.first_published <= 5.0)),
    });
    lines.push(Line {
        case: format!(
            "(f) `backfill status` on the {}-batch run",
            options.plan_batches
        ),
        value: large.status,
        unit: "s",
        ratio: None,
        target: Some(("≤ 0.3 s".into(), large.status <= 0.3)),
    });
    lines.push(Line {
        case: format!(
            "(f) coordinator peak resident memory, {} batches",
            options.plan_batches
        ),
        value: large.peak_mb,
        unit: "MB",
        ratio: None,
        target: Some(("≤ 150 MB".into(), large.peak_mb <= 150.0)),
    });

    // The fingerprint, on the table the last (c) wrote.
    reset(&pool).await;
    workers.extend((0..options.workers).map(|_| worker(&env, 1)));
    let took = backfill(&env, &text).await;
    stop(&mut workers).await;
    let mut conn = pool.acquire().await.expect("a connection");
    let started = Instant::now();
    backfill_coordinator::lifecycle::fingerprint::measure(
        &mut conn,
        &brief,
        &brief.scope.target,
        None,
    )
    .await
    .expect("fingerprint the target");
    drop(conn);
    let fingerprint = started.elapsed().as_secs_f64();
    let share = fingerprint / took.as_secs_f64();
    lines.push(Line {
        case: "(h) validation fingerprint of the scope (validate and cutover take one each)".into(),
        value: fingerprint,
        unit: "s",
        ratio: None,
        target: Some((
            format!("≤ 5 % of (c); {:.1} %", share * 100.0),
            share <= 0.05,
        )),
    });

    let report = Report {
        options: options.clone(),
        orders,
        batches: plan.len(),
        machine: machine(),
        lines,
    };
    env.cleanup().await;
    report
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::query(AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Puts the buggy target back as it was before any case ran: fresh heap, fresh statistics.
async fn reset(pool: &PgPool) {
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
async fn baseline(
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
async fn backfill(env: &TestEnv, text: &str) -> Duration {
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
    took
}

/// A benchmark run (in state `from`) lets go of its target.
async fn retire(pool: &PgPool, run_id: Uuid, from: RunState) {
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
fn empty_brief(text: &str, batches: i64, max_in_flight: u32) -> String {
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

fn worker(env: &TestEnv, concurrency: u16) -> Child {
    Command::new(bin("backfill-worker"))
        .args(["--concurrency", &concurrency.to_string()])
        .envs(env.env())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start backfill-worker")
}

async fn stop(workers: &mut Vec<Child>) {
    for mut w in workers.drain(..) {
        let _ = w.start_kill();
        let _ = w.wait().await;
    }
}

/// What (f) measured.
struct LargeRun {
    /// Seconds from starting `backfill run` to the first batch queued in the ledger.
    first_published: f64,
    /// Median seconds of a `backfill status` process on the run.
    status: f64,
    /// The coordinator's peak resident memory, MB.
    peak_mb: f64,
}

/// (f): a `backfill run` process on a run of many batches (no worker takes
/// them): how soon the run is recorded and its first batch published, how long
/// `status` takes on it, and the coordinator's peak resident memory once a few
/// reconciles have read the ledger. The run is cancelled afterwards.
async fn large_run(env: &TestEnv, text: &str, repeat: usize) -> LargeRun {
    let dir = std::env::temp_dir().join(format!("{}-bench", env.config.namespace));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let path = dir.join("brief.toml");
    std::fs::write(&path, text).expect("write the brief");
    let started = Instant::now();
    let mut child = Command::new(bin("backfill"))
        .arg("run")
        .arg(&path)
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
fn median(times: &[Duration]) -> f64 {
    let mut secs: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
    secs.sort_by(f64::total_cmp);
    match secs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => secs[n / 2],
        n => f64::midpoint(secs[n / 2 - 1], secs[n / 2]),
    }
}

/// Peak resident set of a process (`VmHWM`), in MB.
fn peak_rss_mb(pid: u32) -> Option<f64> {
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
fn machine() -> String {
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
