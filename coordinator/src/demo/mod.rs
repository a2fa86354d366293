//! `backfill demo`: a real backfill, end to end, on generated TPC-H data.
//!
//! It loads TPC-H into schema `demo`, builds `demo.order_revenue` with the classic
//! bug (returned items, `l_returnflag = 'R'`, still counted in net revenue), writes
//! the brief that fixes it, starts `backfill-worker` processes, runs the backfill over the
//! real broker, cache and warehouse, and prints what changed, checked against an
//! independent recomputation.

use crate::error::{CliError, Result};
use crate::run::{self, DriveOptions, Finish};
use crate::{plan, status, tpch};
use backfill_shared::brief::Brief;
use backfill_shared::config::Config;
use backfill_shared::control::{self, runs::RunState};
use backfill_shared::services;
use sqlx::PgPool;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use workers::WorkerProcesses;

mod workers;

pub const SCHEMA: &str = "demo";

/// The correct per-order figures; `{schema}` is replaced by the schema name.
pub const FIXED_SOURCE: &str = "SELECT o.o_orderkey, o.o_orderdate, o.o_custkey,
       sum(l.l_extendedprice)::numeric(18,2) AS gross,
       sum(CASE WHEN l.l_returnflag = 'R' THEN 0
                ELSE l.l_extendedprice * (1 - l.l_discount) END)::numeric(18,2) AS net_revenue,
       count(*)::integer AS line_count
  FROM {schema}.orders o
  JOIN {schema}.lineitem l ON l.l_orderkey = o.o_orderkey
 WHERE o.o_orderkey >= $1 AND o.o_orderkey < $2
   AND l.l_orderkey >= $1 AND l.l_orderkey < $2
 GROUP BY o.o_orderkey, o.o_orderdate, o.o_custkey";

/// Builds `{schema}.order_revenue` with the refund bug, plus a materialized view
/// reading it (so the plan shows a blast radius).
pub async fn build_buggy_target(pool: &PgPool, schema: &str) -> Result<()> {
    let s = backfill_shared::sql::quote_ident(schema);
    let ddl = format!(
        "DROP MATERIALIZED VIEW IF EXISTS {s}.monthly_revenue;
         DROP TABLE IF EXISTS {s}.order_revenue;
         CREATE TABLE {s}.order_revenue (
             o_orderkey  bigint PRIMARY KEY,
             o_orderdate date NOT NULL,
             o_custkey   bigint NOT NULL,
             gross       numeric(18,2) NOT NULL,
             net_revenue numeric(18,2) NOT NULL,
             line_count  integer NOT NULL
         );
         INSERT INTO {s}.order_revenue
         SELECT o.o_orderkey, o.o_orderdate, o.o_custkey,
                sum(l.l_extendedprice)::numeric(18,2),
                sum(l.l_extendedprice * (1 - l.l_discount))::numeric(18,2),
                count(*)::integer
           FROM {s}.orders o JOIN {s}.lineitem l ON l.l_orderkey = o.o_orderkey
          GROUP BY 1, 2, 3;
         CREATE MATERIALIZED VIEW {s}.monthly_revenue AS
         SELECT date_trunc('month', o_orderdate)::date AS month, sum(net_revenue) AS net_revenue
           FROM {s}.order_revenue GROUP BY 1;
         ANALYZE {s}.order_revenue;"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(pool)
        .await?;
    Ok(())
}

/// The demo brief's limit on how far a year's net revenue may move in one
/// batch: the fix moves the early years by about half (refunds are about half
/// of what shipped before mid-1995), and a batch's year group of `items` line
/// items lies around that within about 50 / sqrt(items) percent. Six of those
/// on top, at most 100, so the limit holds at every scale and batch count the
/// demo offers and still halts a fix that moves far more than refunds can.
fn metric_limit(orders: i64, batches: i64) -> u32 {
    let items_per_group = (orders as f64 / batches.max(1) as f64 / 7.0 * 4.0).max(1.0);
    (50.0 + 6.0 * 50.0 / items_per_group.sqrt())
        .ceil()
        .min(100.0) as u32
}

/// The brief with another `max_change_pct` for its metric (tests that halt on
/// it, or that measure something else).
#[must_use]
pub fn with_max_change_pct(text: &str, pct: u32) -> String {
    text.lines()
        .map(|line| {
            if line.starts_with("max_change_pct = ") {
                format!("max_change_pct = {pct}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The brief that fixes `{schema}.order_revenue`, in `batches` key-range batches.
pub async fn brief_text(
    pool: &PgPool,
    schema: &str,
    batches: i64,
    max_in_flight: u32,
) -> Result<String> {
    let s = backfill_shared::sql::quote_ident(schema);
    let (max_key, orders): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT max(o_orderkey), count(*) FROM {s}.orders"
    )))
    .fetch_one(pool)
    .await?;
    let end = max_key + 1;
    let step = (end + batches - 1) / batches.max(1);
    let source = FIXED_SOURCE.replace("{schema}", schema);
    let limit = metric_limit(orders, batches);
    Ok(format!(
        r#"[brief]
name = "order-revenue-refunds"
reason = "Refunds (l_returnflag = 'R') were never subtracted from net revenue."
owner = "alice"
reviewer = "bob"
risk = "metric-changing"

[scope]
target = "{schema}.order_revenue"
key = ["o_orderkey"]
columns = ["o_orderdate", "o_custkey", "gross", "net_revenue", "line_count"]
batch_by = {{ column = "o_orderkey", start = 1, end = {end}, step = {step} }}
expected_rows = {orders}
source = """
{source}
"""

[write]
strategy = "merge"
on_missing = "delete"
snapshot = true

[dependencies]
downstream = ["{schema}.monthly_revenue"]
stakeholders = ["finance", "growth"]

[validation]
max_duplicate_keys = 0
edge_cases = [1, 7]
[[validation.metrics]]
name = "net revenue"
expr = "sum(net_revenue)"
by = "date_trunc('year', o_orderdate)"
max_change_pct = {limit}
[[validation.references]]
column = "o_custkey"
references = "{schema}.customer(c_custkey)"
[[validation.downstream]]
name = "monthly net revenue"
relation = "{schema}.monthly_revenue"
expr = "sum(net_revenue)"
by = "month"
expect_change_pct = [-70, 0]

[limits]
max_in_flight = {max_in_flight}

[rollback]
plan = "Before-images per batch in the run's image table restore every changed row."
retain_days = 14
"#
    ))
}

/// Refuses, naming them, when views the demo did not create read the tables
/// it rebuilds (a dbt project's models on `demo.order_revenue`, say): the
/// demo drops nothing it did not create.
async fn readers_of_its_own(pool: &PgPool) -> Result<()> {
    let mut foreign = Vec::new();
    for table in ["order_revenue", "lineitem", "orders", "customer"] {
        let table = backfill_shared::sql::TableName {
            schema: SCHEMA.into(),
            table: table.into(),
        };
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table.quoted())
            .fetch_one(pool)
            .await?;
        if !exists {
            continue;
        }
        for reader in crate::catalog::readers(pool, &table).await? {
            let name = reader.name.to_string();
            if name != format!("{SCHEMA}.monthly_revenue") && !foreign.contains(&name) {
                foreign.push(name);
            }
        }
    }
    if foreign.is_empty() {
        return Ok(());
    }
    Err(CliError::BadInput(format!(
        "the demo rebuilds the tables of schema {SCHEMA}, and views it did not create read them: {}. \
         It drops nothing it did not create: drop those views or point them elsewhere (a dbt project: \
         its sources' schema), or run the demo on another database (BACKFILL_DATABASE_URL)",
        foreign.join(", ")
    )))
}

/// The role the demo's reviewer acts as, when nobody is mapped to the reviewer.
const DEMO_REVIEWER_ROLE: &str = "backfill_demo_reviewer";

/// The demo plays both people a backfill needs from its one login: the owner,
/// who runs the brief (this session's role, mapped to `owner` in
/// backfill.people), and the reviewer, on connections that act for the
/// reviewer's own role (a NOLOGIN role of the demo's, unless someone is mapped
/// already). Only a superuser's session may act for another role (migration
/// 0013), so the demo needs one, as a fresh machine's login is. Returns the
/// reviewer's connections.
async fn play_people(pool: &PgPool, owner: &str, reviewer: &str) -> Result<PgPool> {
    use backfill_shared::control::people::{self, Person};
    let session = people::whoami(pool).await?;
    let everyone = people::list(pool).await?;
    let mapped = |name: &str| {
        everyone
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.role.clone())
    };
    let mut reviewer_role = mapped(reviewer).unwrap_or_else(|| DEMO_REVIEWER_ROLE.to_owned());
    if reviewer_role == session.role {
        // Demos before the owner was a login approved from this session: the
        // reviewer moves to the demo's own role, and the owner takes the login.
        reviewer_role = DEMO_REVIEWER_ROLE.to_owned();
    }
    if reviewer_role == DEMO_REVIEWER_ROLE {
        sqlx::raw_sql(
            "DO $$ BEGIN
                 CREATE ROLE backfill_demo_reviewer NOLOGIN;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
             END $$",
        )
        .execute(pool)
        .await?;
        people::put(
            pool,
            &Person {
                name: reviewer.to_owned(),
                role: reviewer_role.clone(),
                email: None,
            },
        )
        .await?;
    }
    match people::whoami(pool).await?.person {
        Some(p) if !p.name.eq_ignore_ascii_case(owner) => {
            return Err(CliError::BadInput(format!(
                "the demo runs its brief as the owner {owner} from this session, but its database role {} is {} in backfill.people; run the demo as another role",
                session.role, p.name
            )));
        }
        Some(_) => {}
        None => {
            people::put(
                pool,
                &Person {
                    name: owner.to_owned(),
                    role: session.role.clone(),
                    email: None,
                },
            )
            .await?;
        }
    }
    people::acting_for(pool, &reviewer_role).await.map_err(|e| {
        CliError::BadInput(format!(
            "the demo approves as {reviewer} (database role {reviewer_role}) from this login: {e}; \
             run it as a superuser, or take the steps by hand with two logins (README, Roles)"
        ))
    })
}

/// The demo's brief without before-images: a metric-changing live write must
/// then name its other way back, and its rollback plan may not promise images.
#[must_use]
pub fn without_before_images(text: &str) -> String {
    text.replace("snapshot = true", "snapshot = false").replace(
        "plan = \"Before-images per batch in the run's image table restore every changed row.\"",
        "plan = \"Rebuild the table from the TPC-H source data.\"\n\
         without_images = \"the TPC-H tables are generated data: `backfill demo` rebuilds them\"",
    )
}

/// Rows that differ between the target and an independent recomputation of the
/// fix over the whole table (both directions of `EXCEPT`).
pub async fn differences_from_recomputation(pool: &PgPool, schema: &str) -> Result<i64> {
    differences_in(pool, schema, "order_revenue").await
}

/// The same for any table of the target's shape in `schema` (a staging copy, a
/// parallel version).
pub async fn differences_in(pool: &PgPool, schema: &str, table: &str) -> Result<i64> {
    let s = backfill_shared::sql::quote_ident(schema);
    let t = backfill_shared::sql::quote_ident(table);
    let whole = format!(
        "SELECT o.o_orderkey, o.o_orderdate, o.o_custkey,
                sum(l.l_extendedprice)::numeric(18,2) AS gross,
                sum(CASE WHEN l.l_returnflag = 'R' THEN 0 ELSE l.l_extendedprice * (1 - l.l_discount) END)::numeric(18,2) AS net_revenue,
                count(*)::integer AS line_count
           FROM {s}.orders o JOIN {s}.lineitem l ON l.l_orderkey = o.o_orderkey GROUP BY 1, 2, 3"
    );
    let target = format!(
        "SELECT o_orderkey, o_orderdate, o_custkey, gross, net_revenue, line_count FROM {s}.{t}"
    );
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT (SELECT count(*) FROM ({target} EXCEPT {whole}) a) + (SELECT count(*) FROM ({whole} EXCEPT {target}) b)"
    )))
    .fetch_one(pool)
    .await?;
    Ok(n)
}

async fn yearly_net_revenue(pool: &PgPool, schema: &str) -> Result<Vec<(i32, f64)>> {
    let s = backfill_shared::sql::quote_ident(schema);
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT extract(year FROM o_orderdate)::integer, sum(net_revenue)::float8
           FROM {s}.order_revenue GROUP BY 1 ORDER BY 1"
    )))
    .fetch_all(pool)
    .await?)
}

/// What `backfill demo` does, from its flags.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// TPC-H scale factor.
    pub scale: f64,
    /// `backfill-worker` processes.
    pub workers: u16,
    /// Batches the backfill is cut into.
    pub batches: i64,
    /// Keep before-images (the brief's `snapshot`).
    pub snapshot: bool,
    /// Tell the story on stderr and print one JSON summary on stdout.
    pub json: bool,
}

pub async fn demo(config: &Config, options: DemoOptions) -> Result<()> {
    let DemoOptions {
        scale,
        workers,
        batches,
        snapshot,
        json,
    } = options;
    // The story for a person goes to stdout, or with --json to stderr (stdout
    // then holds one summary object).
    macro_rules! say {
        ($($t:tt)*) => {
            if json { eprintln!($($t)*) } else { println!($($t)*) }
        };
    }
    if !(1..=100_000).contains(&batches) {
        return Err(CliError::BadInput(
            "--batches must be between 1 and 100000".into(),
        ));
    }
    if !(0.001..=10.0).contains(&scale) {
        return Err(CliError::BadInput(
            "--scale must be between 0.001 and 10".into(),
        ));
    }
    // Before loading anything: the workers the demo starts must exist.
    let worker_program = workers::program()?;
    let started = Instant::now();
    eprintln!("Checking the services...");
    let pool = services::postgres(config, 8).await?;
    services::redis(config).await?;
    services::rabbit(config, "backfill demo (probe)")
        .await?
        .close(200, "probe".into())
        .await
        .ok();
    control::migrate(&pool).await?;
    let target = format!("{SCHEMA}.order_revenue");
    // A previous demo that was interrupted still owns the target: retire it.
    let stale = control::runs::on_target(&pool, &target, &RunState::ACTIVE).await?;
    for run_id in stale {
        control::runs::transition(
            &pool,
            run_id,
            &RunState::ACTIVE,
            RunState::Cancelled,
            "demo",
            Some("superseded by a new demo"),
        )
        .await?;
    }
    // Earlier demos' rollback copies refer to tables this demo replaces: drop them.
    let finished = control::runs::uncleaned_on(&pool, &target).await?;
    for run_id in finished {
        crate::lifecycle::cleanup::cleanup(&pool, run_id, "demo", true).await?;
    }

    readers_of_its_own(&pool).await?;
    eprintln!("Generating TPC-H at scale {scale} into schema {SCHEMA}...");
    let t = Instant::now();
    let counts = tpch::load(&pool, SCHEMA, scale)
        .await
        .map_err(|e| CliError::Internal(e.to_string()))?;
    eprintln!(
        "  {} customers, {} orders, {} line items in {:.1} s",
        counts.customers,
        counts.orders,
        counts.lineitems,
        t.elapsed().as_secs_f64()
    );
    build_buggy_target(&pool, SCHEMA).await?;
    let before = yearly_net_revenue(&pool, SCHEMA).await?;
    let wrong = differences_from_recomputation(&pool, SCHEMA).await?;
    eprintln!("Built {target} with the refund bug: {wrong} rows differ from the correct figures.");

    let mut text = brief_text(&pool, SCHEMA, batches, 8).await?;
    if !snapshot {
        text = without_before_images(&text);
    }
    let brief_path = std::env::temp_dir().join("backfill-demo-brief.toml");
    std::fs::write(&brief_path, &text)
        .map_err(|e| CliError::Internal(format!("cannot write {}: {e}", brief_path.display())))?;
    say!("The brief ({}):\n\n{text}", brief_path.display());
    let brief = Brief::parse(&text)
        .map_err(|e| CliError::Internal(format!("the demo brief does not lint: {e}")))?;
    let (plan, batches, _) = plan::plan(&pool, &brief).await?;
    say!("{}", plan.render());

    let reviewer = play_people(&pool, &brief.meta.owner, &brief.meta.reviewer).await?;
    let mut workers = WorkerProcesses::start(&worker_program, config, workers)?;
    let t = Instant::now();
    let run_id = run::create(&pool, &text, &brief, &batches).await?;
    say!("Run {run_id}");
    let interrupt = CancellationToken::new();
    let options = DriveOptions {
        interrupt: interrupt.clone(),
        ..DriveOptions::default()
    };
    let drive = run::drive(config, &pool, run_id, options);
    tokio::pin!(drive);
    let finish = tokio::select! {
        finish = &mut drive => finish,
        exited = workers.first_exit() => {
            interrupt.cancel();
            let _ = drive.await;
            workers.stop().await;
            return Err(CliError::Halted(format!(
                "{exited}; the run is kept: `backfill follow {run_id}` continues it once workers run"
            )));
        }
    };
    workers.stop().await;
    let finish = finish?;
    let run_secs = t.elapsed().as_secs_f64();
    let status = status::status(&pool, run_id).await?;
    say!("{}", status.render().trim_end());
    if let Finish::Halted(reason) = finish {
        return Err(CliError::Halted(format!("the demo run halted: {reason}")));
    }

    let after = yearly_net_revenue(&pool, SCHEMA).await?;
    say!("\nWhat changed (net revenue by order year):");
    say!(
        "  {:>6} {:>20} {:>20} {:>9}",
        "year",
        "before",
        "after",
        "change"
    );
    for ((year, b), (_, a)) in before.iter().zip(&after) {
        say!(
            "  {year:>6} {b:>20.2} {a:>20.2} {:>8.2}%",
            (a - b) / b * 100.0
        );
    }
    let remaining = differences_from_recomputation(&pool, SCHEMA).await?;
    say!(
        "\n{} rows rewritten in {} batches in {run_secs:.1} s; the target now differs from an independent recomputation in {remaining} rows.",
        status.batches.rows.updated + status.batches.rows.inserted + status.batches.rows.deleted,
        status.batch_count,
    );
    let run = control::runs::load(&pool, run_id).await?;
    if let Some(image) = &run.image_table {
        let (image_bytes, target_bytes): (i64, i64) = sqlx::query_as(
            "SELECT pg_total_relation_size($1::regclass), pg_total_relation_size($2::regclass)",
        )
        .bind(image)
        .bind(&target)
        .fetch_one(&pool)
        .await?;
        say!(
            "Before-images: {image} ({:.1} MiB; the target is {:.1} MiB).",
            image_bytes as f64 / 1_048_576.0,
            target_bytes as f64 / 1_048_576.0
        );
    }

    // Validation, as the runbook has it, before the reviewer approves; cutover
    // then exposes what was validated and refreshes what reads the table.
    let checks = crate::validate::validate(&pool, run_id).await?;
    say!("\n{}", crate::validate::render(&checks).trim_end());
    if let Some(failed) = checks.iter().find(|c| !c.passed) {
        return Err(CliError::Halted(format!(
            "validation failed: {}: {}",
            failed.name, failed.summary
        )));
    }
    crate::lifecycle::approve::approve(&reviewer, run_id, Some(&brief.meta.reviewer)).await?;
    reviewer.close().await;
    let report = crate::lifecycle::cutover::cutover(
        &pool,
        run_id,
        "demo",
        std::time::Duration::from_secs(5),
    )
    .await?;
    say!(
        "Approved by {}; cut over: {}refreshed {}.",
        brief.meta.reviewer,
        report
            .analyzed
            .as_ref()
            .map_or_else(String::new, |t| format!("analyzed {t}, ")),
        report.refreshed_materialized_views.join(", ")
    );
    say!(
        "{}{}",
        crate::reached::render(&report.reached, report.reached_error.as_deref()),
        report.downstream.render("cutover").trim_end()
    );
    say!("`backfill rollback {run_id}` puts the old figures back.");
    say!("Demo finished in {:.1} s.", started.elapsed().as_secs_f64());
    if remaining != 0 {
        return Err(CliError::Halted(format!(
            "{remaining} rows differ from the recomputation"
        )));
    }
    if !report.downstream.passed() {
        return Err(CliError::Halted(
            "the downstream metric is not as the brief expects (above)".into(),
        ));
    }
    if json {
        let summary = serde_json::json!({
            "run_id": run_id,
            "target": target,
            "state": "cut_over",
            "batches": status.batch_count,
            "rows_written": status.batches.rows.updated + status.batches.rows.inserted + status.batches.rows.deleted,
            "run_seconds": run_secs,
            "differences_remaining": remaining,
            "refreshed": report.refreshed_materialized_views,
            "downstream": report.downstream.judged,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&summary)
                .map_err(|e| CliError::Internal(e.to_string()))?
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metric_limit_widens_as_batches_shrink() {
        // The README's sizes: scale 0.1 in 100 batches, 0.01 in 50.
        assert_eq!(metric_limit(150_000, 100), 61);
        assert_eq!(metric_limit(15_000, 50), 73);
        assert_eq!(metric_limit(15_000, 5_000), 100);
        let text = "a = 1\nmax_change_pct = 61\nb = 2\n";
        assert_eq!(
            with_max_change_pct(text, 10),
            "a = 1\nmax_change_pct = 10\nb = 2\n"
        );
    }
}
