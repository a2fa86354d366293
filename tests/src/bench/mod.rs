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
//!   table each (c) wrote, as a share of (c);
//! - (i) partition-overwrite of two years of a partitioned fact table: by
//!   partition exchange and row by row, against the hand-written exchange
//!   (`partitions.rs`);
//! - (j) `backfill diff` of a run and of two tables, against one `count(*)`
//!   over the same table (`diff.rs`);
//! - (k) the console's page of a 100,000-batch run (`console.rs`);
//! - (l) how long a staging-swap's cutover locks the target with 10,000 live
//!   writes to carry, against the same swap with none (`swap.rs`).
//!
//! (a) to (d), (i) and (l) run `repeat` times, interleaved, and each figure is the
//! median. Each Backfill figure is printed with its ratio to its baseline ((a),
//! or (i)'s hand-written exchange) and its target.

use crate::{SCHEMA, TestEnv};
use backfill_shared::brief::Brief;
use sqlx::AssertSqlSafe;
use std::fmt::Write as _;
use std::time::Instant;
use tokio::process::Child;

mod cases;
mod console;
mod cpu;
mod diff;
mod partitions;
mod swap;

use cases::{
    backfill, baseline, empty_brief, exec, large_run, machine, median, peak_rss_mb, reset, stop,
    worker,
};

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
    /// How often (a) to (d), the `status` of (f) and (i) are measured; the median counts.
    pub repeat: usize,
    /// Which cases run.
    pub cases: Cases,
}

/// Which cases a benchmark run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cases {
    All,
    /// (a) to (h).
    Main,
    /// (i).
    Partitions,
    /// (j).
    Diff,
    /// (k).
    Console,
    /// (l).
    Swap,
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
            cases: Cases::All,
        }
    }
}

/// One line of the result table.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub case: String,
    pub value: f64,
    pub unit: &'static str,
    /// Against the case's baseline ((a), or (i)'s), for timings.
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
        out.push_str("| case | measured | ratio to its baseline | target | met |\n| --- | ---: | ---: | --- | --- |\n");
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
    let mut lines = Vec::new();
    let mut batches = 0;
    if matches!(options.cases, Cases::All | Cases::Main) {
        let (main, planned) = main_cases(&env, options, orders).await;
        lines.extend(main);
        batches = planned;
    }
    if matches!(options.cases, Cases::All | Cases::Partitions) {
        lines.extend(partitions::measure(&env, options.workers, options.repeat.max(1)).await);
    }
    if matches!(options.cases, Cases::All | Cases::Diff) {
        let text = env
            .brief(options.batches, u32::from(options.workers) * 2)
            .await;
        let text = backfill_coordinator::demo::with_max_change_pct(&text, 100);
        lines.extend(diff::measure(&env, &text, options.workers, options.repeat.max(1)).await);
    }
    if matches!(options.cases, Cases::All | Cases::Console) {
        lines.extend(console::measure(&env, options.plan_batches, options.repeat.max(1)).await);
    }
    if matches!(options.cases, Cases::All | Cases::Swap) {
        let text = env
            .brief(options.batches, u32::from(options.workers) * 2)
            .await;
        lines.extend(swap::measure(&env, &text, options.workers, options.repeat.max(1)).await);
    }
    let report = Report {
        options: options.clone(),
        orders,
        batches,
        machine: machine(),
        lines,
    };
    env.cleanup().await;
    report
}

/// (a) to (h), on the demo's order revenue.
async fn main_cases(env: &TestEnv, options: &Options, orders: i64) -> (Vec<Line>, usize) {
    let pool = env.pool.clone();
    let mut lines = Vec::new();
    let window = u32::from(options.workers) * 2;
    // Small batches move a year's revenue a lot; the limit is not what is measured.
    let text = backfill_coordinator::demo::with_max_change_pct(
        &env.brief(options.batches, window).await,
        100,
    );
    let brief = Brief::parse(&text).expect("the demo brief lints");
    let plan = brief.scope.batch_by.plan().expect("the demo brief plans");
    let repeat = options.repeat.max(1);
    let mut workers: Vec<Child> = Vec::new();
    let (mut a, mut b, mut c, mut d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // (h), on the table each (c) wrote.
    let mut h = Vec::new();
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
        workers.extend((0..options.workers).map(|_| worker(env, 1)));
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
            let took = backfill(env, &text).await;
            assert_eq!(
                env.differences().await,
                0,
                "the run did not produce the recomputation"
            );
            if snapshot {
                c.push(took);
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
                h.push(started.elapsed());
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
        workers.extend((0..2).map(|_| worker(env, options.empty_concurrency)));
        let before = cpu::Cpu::now();
        d.push(backfill(env, &empty_brief(&text, options.empty_batches, 512)).await);
        eprintln!(
            "bench: round {round}: (d) {}",
            cpu::Cpu::now().per(&before, options.empty_batches as f64)
        );
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
    let large = large_run(env, &empty_brief(&text, options.plan_batches, 64), repeat).await;
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

    let fingerprint = median(&h);
    let share = fingerprint / median(&c);
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

    (lines, plan.len())
}
