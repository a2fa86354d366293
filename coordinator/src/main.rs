//! `backfill`: lint, plan, run and follow historical data backfills.
//! Exit codes: 0 success, 1 a run halted or failed, 2 bad input, 3 a service is unreachable.

use backfill_coordinator::run::{DriveOptions, Finish};
use backfill_coordinator::{
    CliError, Result, announce, demo, lifecycle, list, notify, operator, plan, read_brief, run,
    status,
};
use backfill_shared::config::Config;
use backfill_shared::control;
use backfill_shared::services;
use backfill_shared::telemetry::{self, LogFormat};
use backfill_shared::text::shown;
use clap::{Parser, Subcommand};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(
    name = "backfill",
    version,
    about = "Safe historical data backfills: plan, run in fenced batches, validate"
)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text")]
    log_format: LogFormat,
    /// While driving a run (run, follow, resume, retry): serve its progress as
    /// Prometheus text on /metrics at this address, e.g. 0.0.0.0:9465.
    #[arg(long, global = true)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Print one JSON object on stdout for scripts instead of text for a person.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Draft a brief for a table from the catalog: key, columns, batches, dependents;
    /// what only a person can write is left blank for the lint to name.
    New {
        /// The table to backfill: schema.table.
        #[arg(long)]
        target: String,
        /// The column to cut batches along (default: an indexed date or
        /// timestamp column, else the key).
        #[arg(long)]
        batch_by: Option<String>,
        /// Write the brief to this file instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Lint a brief against the warehouse and show batches, estimated rows and blast radius.
    Plan {
        brief: PathBuf,
        /// Workers the time estimate assumes.
        #[arg(long, default_value_t = plan::DEFAULT_WORKERS)]
        workers: u16,
        /// Why an estimate past limits.budget is acceptable.
        #[arg(long, value_name = "WHY")]
        over_budget: Option<String>,
    },
    /// Run the source on a slice into a scratch table and compare it with the target:
    /// rows, metrics per group, the records that change most, edge cases, runtime.
    Sample {
        brief: PathBuf,
        /// START..END in the type of batch_by (END exclusive); a negative
        /// START is taken as written (`--slice -100..0`).
        #[arg(long, allow_hyphen_values = true)]
        slice: String,
    },
    /// Record a run and apply it; prints the run id first.
    Run {
        brief: PathBuf,
        /// Print the run id and leave a background coordinator to drive the run.
        #[arg(long)]
        detach: bool,
        /// Why an estimate past limits.budget is acceptable (recorded in the run log).
        #[arg(long, value_name = "WHY")]
        over_budget: Option<String>,
        /// Why a metric-changing or production-critical brief runs without
        /// `backfill announce` (recorded in the run log).
        #[arg(long, value_name = "WHY")]
        unannounced: Option<String>,
    },
    /// Tell people before a run: what changes and why, the period and tables,
    /// what may move and who should know, the window, the expected size and
    /// time. Printed, sent to BACKFILL_WEBHOOK_URL and recorded; `run` of a
    /// metric-changing or production-critical brief requires it.
    Announce {
        brief: PathBuf,
        /// When the run will happen: START..END, each a date or a UTC time.
        #[arg(long)]
        window: String,
    },
    /// Runs, newest first: state, progress, rows written, and what holds each.
    List {
        /// Only runs in this state (running, halted, canary, applied, cut_over, ...).
        #[arg(long)]
        state: Option<String>,
        /// Only runs on this table (schema.table).
        #[arg(long)]
        target: Option<String>,
        /// Only runs this person owns.
        #[arg(long)]
        owner: Option<String>,
        /// Only runs started since: a date (2026-11-01), a UTC time, or an age (2d, 6h).
        #[arg(long)]
        since: Option<String>,
        /// Most runs shown.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Drive a recorded run to its end (after `run --detach`, or after the coordinator died).
    Follow { run: String },
    /// Pause a running run: no new batch starts; in-flight ones finish.
    Pause { run: String },
    /// Cancel a run: nothing more starts; applied batches stay (and can be rolled back).
    Cancel { run: String },
    /// Resume a paused or halted run and drive it, or re-attach to a running one whose
    /// coordinator died; a breached limit must be accepted with a reason.
    Resume {
        run: String,
        /// Why the breach is acceptable (recorded with your name).
        #[arg(long)]
        accept: Option<String>,
    },
    /// Put failed batches back to pending (after fixing their cause) and drive the run.
    Retry { run: String },
    /// Batches by state, rows, failures and ETA of a run (the latest without RUN).
    Status { run: Option<String> },
    /// Run the run-level checklist (freshness, completeness, uniqueness, references,
    /// metric reconciliation, size); exit 1 if any check fails.
    Validate {
        run: String,
        /// Accept a failed check of the latest validation instead (not as the owner).
        #[arg(long, value_name = "CHECK", requires = "reason")]
        accept: Option<String>,
        /// Why the failure is acceptable (with --accept).
        #[arg(long, requires = "accept")]
        reason: Option<String>,
    },
    /// What changed, row by row and column by column: a run against what was there
    /// before (the latest run without RUN), or one table against another.
    Diff {
        run: Option<String>,
        /// Compare two tables instead of a run: OLD NEW.
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"], conflicts_with = "run", requires = "key")]
        tables: Option<Vec<String>>,
        /// With --tables: the column(s) that identify a row in both.
        #[arg(long, value_delimiter = ',')]
        key: Vec<String>,
        /// With --tables: the column the comparison is cut into ranges along (default: the key's first).
        #[arg(long, requires = "tables")]
        by: Option<String>,
        /// Compare only these columns.
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        /// Only rows this predicate keeps, on both sides.
        #[arg(long = "where", value_name = "SQL")]
        filter: Option<String>,
        /// Changed rows shown before and after, the largest changes first.
        #[arg(long, default_value_t = 10)]
        sample: usize,
        /// Ranges compared at once, each on a connection of its own.
        #[arg(long, default_value_t = 4)]
        connections: u32,
    },
    /// The change note for stakeholders: what changed, why, validation, metric deltas.
    Report {
        run: String,
        /// md or html (self-contained, with an inline SVG chart).
        #[arg(long, default_value = "md")]
        format: String,
        /// Also send the change note to every BACKFILL_WEBHOOK_URL now, and
        /// record where it was delivered (what `backfill done` looks for).
        #[arg(long)]
        send: bool,
    },
    /// Let a run waiting at its canary (limits.canary) go on, as its reviewer.
    Promote {
        run: String,
        /// Who you mean to promote as: checked against the database login, which
        /// must be the role of the reviewer the brief names (never its owner).
        #[arg(long)]
        reviewer: Option<String>,
    },
    /// Record the reviewer's approval of an applied run.
    Approve {
        run: String,
        /// Who you mean to approve as: checked against the database login, which
        /// must be the role of the reviewer the brief names (never its owner).
        #[arg(long)]
        reviewer: Option<String>,
    },
    /// Who is who: the names briefs use, mapped to database roles and emails.
    People {
        #[command(subcommand)]
        action: Option<PeopleAction>,
    },
    /// Expose an approved run: swap in the built table (staging-swap, parallel-version),
    /// then run the brief's refresh steps (statements, commands) and refresh dependent materialized views.
    Cutover {
        run: String,
        /// Longest wait for the target's lock during the swap, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        lock_timeout_ms: u64,
        /// Keep the live rows inside the scope that were written to the target
        /// during the build (a swap refuses them otherwise), saying why.
        #[arg(long, value_name = "WHY")]
        accept_live_changes: Option<String>,
        /// Cut over although incremental dbt models downstream keep the old
        /// history (the refresh steps rebuild none for the past), saying why.
        #[arg(long, value_name = "WHY")]
        stale_ok: Option<String>,
        /// Leave the exposed table's planner statistics as they are (cutover
        /// runs ANALYZE on it otherwise).
        #[arg(long)]
        no_analyze: bool,
    },
    /// Put the target back exactly as it was before the run.
    Rollback {
        run: String,
        /// Roll back even though a later run changed the same target.
        #[arg(long)]
        force: bool,
        /// Restore rows changed since the run too (they are listed and spared otherwise).
        #[arg(long)]
        overwrite_newer: bool,
        #[arg(long, default_value_t = 5000)]
        lock_timeout_ms: u64,
    },
    /// Remove erased rows from what a run keeps for rollback (its before-images, the
    /// table a swap retired, partitions exchanged out): the keys given, or the brief's
    /// rollback.erased.
    Forget {
        run: String,
        /// A key to forget (a composite key as its row literal, e.g. "(1992-01-02,AIR)");
        /// repeat it. Without it, the keys the brief's rollback.erased yields.
        #[arg(long = "key", value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Drop a finished run's before-images and old copies once retain_days has passed.
    Cleanup {
        run: String,
        /// Do not wait for retain_days.
        #[arg(long)]
        now: bool,
    },
    /// Check the run against the definition of done (scope applied, validation
    /// passed or accepted, cut over and refreshed, stakeholders told, rollback
    /// retained, lesson captured); when nothing is missing the run is `done`.
    /// Exits 1 naming what is missing.
    Done {
        run: String,
        /// What the next backfill should do differently (recorded in the run log and the report).
        #[arg(long)]
        lesson: Option<String>,
        /// How the stakeholders were told, when not by `backfill report --send`.
        #[arg(long)]
        told: Option<String>,
    },
    /// Serve the console: a web page of every run, its batch grid, progress, log and
    /// change note, and a JSON API (`/api/runs`, `/api/maintenance`) for BI tools.
    Serve {
        /// Where to listen; anything but loopback lets other machines read every run.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// The header an authenticating proxy in front of the console sets to the
        /// user's login (e.g. X-Forwarded-User); trusted only when given.
        #[arg(long, value_name = "HEADER")]
        auth_header: Option<String>,
        /// Ask for a login to read too, not only to act.
        #[arg(long)]
        require_login: bool,
        /// Session cookies without `Secure`: only for a console on plain HTTP
        /// (loopback, or a proxy on the same host that ends TLS).
        #[arg(long)]
        insecure_cookies: bool,
        /// Serve /metrics without a login even with --require-login (a
        /// scraper without credentials).
        #[arg(long)]
        public_metrics: bool,
    },
    /// Print a shell completion script, e.g. `backfill completions bash > ~/.local/share/bash-completion/completions/backfill`.
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (backfill.1 and one per command, backfill-run.1, ...) into a directory.
    Man {
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
    /// Generate TPC-H data, break a derived table, and backfill the fix end to end.
    Demo {
        /// TPC-H scale factor.
        #[arg(long, default_value_t = 0.1)]
        scale: f64,
        /// In-process workers.
        #[arg(long, default_value_t = 2)]
        workers: u16,
        /// Batches the backfill is cut into.
        #[arg(long, default_value_t = 100)]
        batches: i64,
        /// Keep no before-images (to measure what they cost; no rollback then).
        #[arg(long)]
        no_snapshot: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
enum PeopleAction {
    /// Everyone, with their role and email (the default).
    List,
    /// Map a name briefs use to the database role that person logs in as.
    Add {
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        email: Option<String>,
    },
    /// Remove a person.
    Remove { name: String },
    /// Who this session is: its database role and the person mapped to it.
    Whoami,
}

/// Whether this process printed its JSON result on stdout already.
static PRINTED_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// With `--json`, a failure too is one JSON object on stdout (when nothing
/// else was printed there): `{"error": {"kind", "message", "exit"}}`.
fn print_error_json(kind: &str, message: &str, exit: u8) {
    if !PRINTED_JSON.load(std::sync::atomic::Ordering::Acquire) {
        let error =
            serde_json::json!({ "error": { "kind": kind, "message": message, "exit": exit } });
        println!("{}", backfill_shared::text::json_shown(&error.to_string()));
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = !matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if usage && std::env::args().any(|a| a == "--json") {
                print_error_json("usage", e.to_string().trim(), 2);
            }
            e.exit();
        }
    };
    let telemetry = telemetry::init(
        cli.log_format,
        &telemetry::quiet_default("warn,backfill_coordinator=info"),
        "backfill",
    );
    let out = Out { json: cli.json };
    let cli_json = cli.json;
    let code = match execute(cli.command, cli.metrics_addr, out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", shown(&e.to_string()));
            if cli_json {
                print_error_json(e.kind(), &e.to_string(), e.exit_code());
            }
            ExitCode::from(e.exit_code())
        }
    };
    telemetry.shutdown().await;
    code
}

async fn execute(
    command: Command,
    metrics_addr: Option<std::net::SocketAddr>,
    out: Out,
) -> Result<()> {
    match command {
        Command::Completions { shell } => return completions(shell, out),
        Command::Man { out_dir } => return man_pages(&out_dir, out),
        _ => {}
    }
    let vars: std::collections::HashMap<String, String> = std::env::vars().collect();
    let config = Config::from_vars(&vars).map_err(|e| CliError::BadInput(e.to_string()))?;
    let settings =
        notify::Settings::from_vars(&vars).map_err(|e| CliError::BadInput(e.to_string()))?;
    let notifier = notify::install(settings, &config.database_url);
    let done = command_with(command, &config, metrics_addr, out).await;
    if let Some(notifier) = notifier {
        notifier.shutdown().await;
    }
    done
}

async fn command_with(
    command: Command,
    config: &Config,
    metrics_addr: Option<std::net::SocketAddr>,
    out: Out,
) -> Result<()> {
    let json = out.json;
    match command {
        Command::Completions { .. } | Command::Man { .. } => Ok(()),
        Command::New {
            target,
            batch_by,
            output,
            force,
        } => {
            let pool = services::postgres(config, 2).await?;
            let draft =
                backfill_coordinator::draft::draft(&pool, &target, batch_by.as_deref()).await?;
            let Some(path) = output else {
                return out.result(&draft, || draft.text.clone());
            };
            if path.exists() && !force {
                return Err(CliError::BadInput(format!(
                    "{} exists; choose another file, or pass --force to overwrite it",
                    path.display()
                )));
            }
            std::fs::write(&path, &draft.text)
                .map_err(|e| CliError::BadInput(format!("cannot write {}: {e}", path.display())))?;
            out.done(
                &draft,
                &format!(
                    "wrote {}: {} batches of {} by {}; fill in {}, then `backfill plan {}`",
                    path.display(),
                    draft.batches,
                    draft.target,
                    draft.batch_by,
                    draft.to_fill.join(", "),
                    path.display()
                ),
            )
        }
        Command::Plan {
            brief,
            workers,
            over_budget,
        } => {
            let (_, brief) = read_brief(&brief)?;
            let pool = services::postgres(config, 2).await?; // the plan touches no control plane
            let (plan, _, _) = plan::plan(&pool, &brief).await?;
            let plan = plan.with_workers(workers);
            out.result(&plan, || plan.render())?;
            within_budget(&plan, over_budget.as_deref()).map(|_| ())
        }
        Command::Sample { brief, slice } => {
            let (_, brief) = read_brief(&brief)?;
            let (lo, hi) = backfill_coordinator::sample::parse_slice(&brief, &slice)?;
            let pool = services::postgres(config, 2).await?;
            backfill_coordinator::preflight::check(&pool, &brief).await?;
            let sample = backfill_coordinator::sample::sample(&pool, &brief, lo, hi).await?;
            out.result(&sample, || sample.render())
        }
        Command::Announce {
            brief: path,
            window,
        } => {
            let (text, brief) = read_brief(&path)?;
            let window = announce::parse_window(&window)?;
            let pool = control_plane(config, 2).await?;
            let (plan, _, _) = plan::plan(&pool, &brief).await?;
            let done = announce::announce(&pool, &text, &brief, &plan, window, &operator()).await?;
            out.result(&done, || {
                let a = &done.announcement;
                let mut text = a.note.clone();
                text.push_str(&format!(
                    "\nannounced (#{}); sent to {}\n",
                    a.id,
                    if a.delivered.is_empty() {
                        "no webhook".to_owned()
                    } else {
                        a.delivered.join(", ")
                    }
                ));
                for failed in &done.failed {
                    text.push_str(&format!("NOT delivered: {failed}\n"));
                }
                text
            })
        }
        Command::Run {
            brief: path,
            detach,
            over_budget,
            unannounced,
        } => {
            let (text, brief) = read_brief(&path)?;
            let pool = control_plane(config, 4).await?;
            let (plan, batches, _) = plan::plan(&pool, &brief).await?;
            // A brief the preflight refuses is told so first; then, whether people were told.
            let announced = backfill_shared::control::announcements::latest_for(
                &pool,
                &backfill_shared::brief::Brief::hash(&text),
            )
            .await?;
            if announce::required(&brief) && announced.is_none() && unannounced.is_none() {
                return Err(CliError::BadInput(format!(
                    "{} is risk = {}: tell people first with `backfill announce {} --window \"START..END\"`, or run with --unannounced \"why\"",
                    path.display(),
                    brief.meta.risk.as_str(),
                    path.display()
                )));
            }
            let over = within_budget(&plan, over_budget.as_deref())?;
            // Fail before recording anything if the broker is unreachable.
            services::rabbit(config, "backfill (probe)")
                .await?
                .close(200, "probe".into())
                .await
                .ok();
            let run_id = run::create(&pool, &text, &brief, &batches).await?;
            let (event, detail) = match (&announced, unannounced.as_deref()) {
                (Some(a), _) => (
                    "announced",
                    serde_json::json!({ "announcement": a.id, "at": a.at, "by": a.announced_by,
                                        "window": [a.window_start, a.window_end], "delivered": a.delivered }),
                ),
                (None, Some(why)) => ("unannounced", serde_json::json!({ "reason": why })),
                (None, None) => (
                    "unannounced",
                    serde_json::json!({ "reason": "not required" }),
                ),
            };
            backfill_shared::control::log::append(&pool, run_id, &operator(), event, None, detail)
                .await?;
            if let (false, Some(why)) = (over.is_empty(), over_budget.as_deref()) {
                backfill_shared::control::log::append(
                    &pool,
                    run_id,
                    &operator(),
                    "over_budget_accepted",
                    None,
                    serde_json::json!({ "reason": why, "over": over }),
                )
                .await?;
            }
            if !json {
                // The run id first, for scripts that read one line.
                println!("{run_id}");
                let _ = std::io::stdout().flush();
            }
            if detach {
                return spawn_follower(run_id, out);
            }
            eprint!("{}", plan.render());
            drive_to_end(config, &pool, run_id, metrics_addr, out).await
        }
        Command::List {
            state,
            target,
            owner,
            since,
            limit,
        } => {
            let pool = control_plane(config, 2).await?;
            let filter = list::filter(
                state.as_deref(),
                target.as_deref(),
                owner.as_deref(),
                since.as_deref(),
                limit,
            )?;
            let rows = list::list(&pool, &filter).await?;
            out.result(&serde_json::json!({ "runs": rows }), || list::render(&rows))
        }
        Command::Follow { run } => {
            let pool = control_plane(config, 4).await?;
            let run = list::resolve(&pool, &run).await?;
            drive_to_end(config, &pool, run, metrics_addr, out).await
        }
        Command::Pause { run } => {
            let pool = control_plane(config, 2).await?;
            let run = list::resolve(&pool, &run).await?;
            backfill_coordinator::resume::pause(&pool, run, &operator()).await?;
            tell_workers(config, &pool, run).await;
            out.done(
                &serde_json::json!({ "run_id": run, "state": "paused" }),
                &format!(
                    "run {run} paused; in-flight batches finish; `backfill resume {run}` goes on"
                ),
            )
        }
        Command::Cancel { run } => {
            let pool = control_plane(config, 2).await?;
            let run = list::resolve(&pool, &run).await?;
            backfill_coordinator::resume::cancel(&pool, run, &operator()).await?;
            tell_workers(config, &pool, run).await;
            if let Err(e) = run::drop_events_queue(config, &pool, run).await {
                eprintln!("warning: the run's events queue stays behind: {e}");
            }
            out.done(
                &serde_json::json!({ "run_id": run, "state": "cancelled" }),
                &format!(
                    "run {run} cancelled; `backfill rollback {run}` undoes its applied batches"
                ),
            )
        }
        Command::Resume { run, accept } => {
            let pool = control_plane(config, 4).await?;
            let run = list::resolve(&pool, &run).await?;
            backfill_coordinator::resume::resume(&pool, run, &operator(), accept.as_deref())
                .await?;
            drive_to_end(config, &pool, run, metrics_addr, out).await
        }
        Command::Retry { run } => {
            let pool = control_plane(config, 4).await?;
            let run = list::resolve(&pool, &run).await?;
            let n = backfill_coordinator::resume::retry(&pool, run, &operator()).await?;
            eprintln!("{n} failed batch(es) pending again");
            drive_to_end(config, &pool, run, metrics_addr, out).await
        }
        Command::Serve {
            addr,
            auth_header,
            require_login,
            insecure_cookies,
            public_metrics,
        } => {
            use backfill_coordinator::console::{self, Auth};
            let header = auth_header
                .map(|h| {
                    axum::http::HeaderName::try_from(h.trim()).map_err(|_| {
                        CliError::BadInput(format!(
                            "--auth-header {h:?} is not a header name (e.g. X-Forwarded-User)"
                        ))
                    })
                })
                .transpose()?;
            let tokens =
                Auth::parse_tokens(&std::env::var("BACKFILL_CONSOLE_TOKENS").unwrap_or_default())
                    .map_err(CliError::BadInput)?;
            let auth = Auth {
                header,
                tokens,
                require_login,
                insecure_cookies,
                public_metrics,
                ..Auth::default()
            };
            if auth.require_login && !auth.is_set() {
                return Err(CliError::BadInput(
                    "--require-login needs a way to log in: --auth-header behind an authenticating proxy, or BACKFILL_CONSOLE_TOKENS".into(),
                ));
            }
            let pool = control_plane(config, 8).await?;
            if let Some(warning) = console::exposure_warning(addr, &auth) {
                eprintln!("warning: {warning}");
            }
            let bound = console::serve(pool, config.clone(), addr, auth).await?;
            eprintln!("console on http://{bound}/ (Ctrl-C stops it)");
            tokio::signal::ctrl_c()
                .await
                .map_err(|e| CliError::Internal(format!("cannot wait for Ctrl-C: {e}")))?;
            Ok(())
        }
        Command::Status { run } => {
            let pool = control_plane(config, 2).await?;
            let run = list::resolve_or_latest(&pool, run.as_deref()).await?;
            let status = status::status(&pool, run).await?;
            out.result(&status, || status.render())
        }
        Command::Validate {
            run,
            accept: Some(check),
            reason,
            ..
        } => {
            let pool = control_plane(config, 2).await?;
            let run = list::resolve(&pool, &run).await?;
            let actor = backfill_coordinator::validate::accept(
                &pool,
                run,
                &check,
                reason.as_deref().unwrap_or_default(),
            )
            .await?;
            out.done(
                &serde_json::json!({ "run_id": run, "check": check, "accepted_by": actor }),
                &format!(
                    "{actor} accepted the failed check {check:?} of run {run}'s latest validation"
                ),
            )
        }
        Command::Validate { run, .. } => {
            let pool = control_plane(config, 2).await?;
            let run = list::resolve(&pool, &run).await?;
            let checks = backfill_coordinator::validate::validate(&pool, run).await?;
            let passed = checks.iter().all(|c| c.passed);
            out.result(
                &serde_json::json!({ "run_id": run, "passed": passed, "checks": checks }),
                || backfill_coordinator::validate::render(&checks),
            )?;
            let failed: Vec<&str> = checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.name)
                .collect();
            if failed.is_empty() {
                Ok(())
            } else {
                Err(CliError::Halted(format!(
                    "validation of run {run} failed: {}",
                    failed.join(", ")
                )))
            }
        }
        Command::Diff {
            run,
            tables,
            key,
            by,
            columns,
            filter,
            sample,
            connections,
        } => {
            let connections = connections.clamp(1, 32);
            let pool = control_plane(config, connections + 1).await?;
            let options = backfill_coordinator::diff::Options {
                columns,
                filter,
                sample,
                connections: connections as usize,
                progress: !json,
            };
            let diff = match tables.as_deref() {
                Some([old, new]) => {
                    backfill_coordinator::diff::tables(
                        &pool,
                        old,
                        new,
                        &key,
                        by.as_deref(),
                        &options,
                    )
                    .await?
                }
                _ => {
                    let run = list::resolve_or_latest(&pool, run.as_deref()).await?;
                    backfill_coordinator::diff::run(&pool, run, &options).await?
                }
            };
            out.result(&diff, || diff.render())
        }
        Command::Report { run, format, send } => {
            let pool = control_plane(config, 2).await?;
            let run = list::resolve(&pool, &run).await?;
            let mut report = backfill_coordinator::report::gather(&pool, run).await?;
            if send {
                let to =
                    notify::send_change_note(&pool, run, &operator(), &report.markdown()).await?;
                eprintln!("change note delivered to {}", to.join(", "));
                report = backfill_coordinator::report::gather(&pool, run).await?;
            }
            if json {
                return print_json(&report);
            }
            match format.as_str() {
                "md" => print!("{}", report.markdown()),
                "html" => print!("{}", report.html()),
                other => {
                    return Err(CliError::BadInput(format!(
                        "--format {other:?}: use md or html"
                    )));
                }
            }
            Ok(())
        }
        Command::Approve { run, reviewer } => {
            let pool = control_plane(config, 2).await?;
            let run = list::resolve(&pool, &run).await?;
            let by = lifecycle::approve::approve(&pool, run, reviewer.as_deref()).await?;
            out.done(
                &serde_json::json!({ "run_id": run, "state": "approved", "approved_by": by }),
                &format!("run {run} approved by {by}; `backfill cutover {run}` exposes it"),
            )
        }
        Command::Promote { run, reviewer } => {
            let pool = control_plane(config, 2).await?;
            let run = list::resolve(&pool, &run).await?;
            let by = backfill_coordinator::canary::promote(&pool, run, reviewer.as_deref()).await?;
            tell_workers(config, &pool, run).await;
            let driven = backfill_coordinator::run::is_driven(&pool, run).await?;
            out.done(&serde_json::json!({ "run_id": run, "state": "running", "promoted_by": by, "driven": driven }),
                &if driven {
                    format!("run {run}'s canary promoted by {by}; its coordinator publishes the rest")
                } else {
                    format!(
                        "run {run}'s canary promoted by {by}; no coordinator drives it now: `backfill follow {run}` (the operator) applies the rest"
                    )
                },
            )
        }
        Command::People { action } => {
            let pool = control_plane(config, 2).await?;
            people(&pool, action.unwrap_or(PeopleAction::List), out).await
        }
        Command::Cutover {
            run,
            lock_timeout_ms,
            accept_live_changes,
            stale_ok,
            no_analyze,
        } => {
            let pool = control_plane(config, 2).await?;
            let run = list::resolve(&pool, &run).await?;
            for (flag, why) in [
                ("--accept-live-changes", &accept_live_changes),
                ("--stale-ok", &stale_ok),
            ] {
                if why.as_ref().is_some_and(|w| w.trim().is_empty()) {
                    return Err(CliError::BadInput(format!(
                        "{flag} needs the reason, in words the run log keeps"
                    )));
                }
            }
            let report = lifecycle::cutover::cutover_with(
                &pool,
                run,
                &operator(),
                Duration::from_millis(lock_timeout_ms),
                lifecycle::cutover::Accepting {
                    live_changes: accept_live_changes.as_deref(),
                    stale: stale_ok.as_deref(),
                    no_analyze,
                },
            )
            .await?;
            out.result(&report, || report.render())
        }
        Command::Rollback {
            run,
            force,
            overwrite_newer,
            lock_timeout_ms,
        } => {
            let pool = control_plane(config, 2).await?;
            let run = list::resolve(&pool, &run).await?;
            let report = lifecycle::rollback::rollback(
                &pool,
                run,
                &operator(),
                lifecycle::rollback::RollbackOptions {
                    force,
                    overwrite_newer,
                    lock_timeout: Duration::from_millis(lock_timeout_ms),
                },
            )
            .await?;
            out.result(&report, || report.render())
        }
        Command::Forget { run, keys } => {
            let pool = control_plane(config, 2).await?;
            let run = list::resolve(&pool, &run).await?;
            let forgotten = lifecycle::forget::forget(&pool, run, &operator(), &keys).await?;
            out.result(&forgotten, || forgotten.render())
        }
        Command::Cleanup { run, now } => {
            let pool = control_plane(config, 2).await?;
            let run = list::resolve(&pool, &run).await?;
            let dropped = lifecycle::cleanup::cleanup(&pool, run, &operator(), now).await?;
            out.result(
                &serde_json::json!({ "run_id": run, "dropped": dropped }),
                || {
                    if dropped.is_empty() {
                        format!("run {run} kept nothing left to drop\n")
                    } else {
                        format!("dropped: {}\n", dropped.join(", "))
                    }
                },
            )
        }
        Command::Done { run, lesson, told } => {
            let pool = control_plane(config, 2).await?;
            let run = list::resolve(&pool, &run).await?;
            let supplied = lifecycle::done::Supplied {
                lesson: lesson.as_deref(),
                told: told.as_deref(),
            };
            let verdict = lifecycle::done::done(&pool, run, &operator(), supplied).await?;
            out.result(&verdict, || verdict.render())?;
            if verdict.done {
                Ok(())
            } else {
                let missing: Vec<&str> = verdict
                    .items
                    .iter()
                    .filter(|i| !i.ok)
                    .map(|i| i.name)
                    .collect();
                Err(CliError::Halted(format!(
                    "run {run} is not done: missing {}",
                    missing.join(", ")
                )))
            }
        }
        Command::Demo {
            scale,
            workers,
            batches,
            no_snapshot,
        } => {
            let options = demo::DemoOptions {
                scale,
                workers,
                batches,
                snapshot: !no_snapshot,
                json,
            };
            demo::demo(config, options).await
        }
    }
}

/// The completion script for `shell`, from the same definitions as the CLI.
fn completions(shell: clap_complete::Shell, out: Out) -> Result<()> {
    use clap::CommandFactory as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "backfill", &mut script);
    let script = String::from_utf8_lossy(&script).into_owned();
    out.result(
        &serde_json::json!({ "shell": shell.to_string(), "script": script }),
        || script.clone(),
    )
}

/// Writes `backfill.1` and a page per command into `dir`.
fn man_pages(dir: &std::path::Path, out: Out) -> Result<()> {
    use clap::CommandFactory as _;
    std::fs::create_dir_all(dir)
        .and_then(|()| clap_mangen::generate_to(Cli::command(), dir))
        .map_err(|e| {
            CliError::BadInput(format!("cannot write man pages to {}: {e}", dir.display()))
        })?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| CliError::BadInput(format!("cannot read {}: {e}", dir.display())))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("backfill") && name.ends_with(".1"))
        .collect();
    pages.sort();
    out.result(&serde_json::json!({ "dir": dir, "pages": pages }), || {
        format!(
            "wrote {} man pages to {}: `man -l {}/backfill.1`, or copy them to a man1 directory\n",
            pages.len(),
            dir.display(),
            dir.display()
        )
    })
}

/// `backfill people ...`.
async fn people(pool: &sqlx::PgPool, action: PeopleAction, out: Out) -> Result<()> {
    use backfill_coordinator::people as cmd;
    use backfill_shared::control::people;
    match action {
        PeopleAction::List => {
            let everyone = people::list(pool).await?;
            out.result(&serde_json::json!({ "people": everyone }), || {
                cmd::render(&everyone)
            })
        }
        PeopleAction::Add { name, role, email } => {
            let person = cmd::add(pool, &name, &role, email.as_deref()).await?;
            out.done(
                &person,
                &format!("{} is database role {}", person.name, person.role),
            )
        }
        PeopleAction::Remove { name } => {
            cmd::remove(pool, &name).await?;
            out.done(
                &serde_json::json!({ "removed": name }),
                &format!("{name} removed from backfill.people"),
            )
        }
        PeopleAction::Whoami => {
            let session = people::whoami(pool).await?;
            out.result(&session, || format!("{}\n", cmd::describe(&session)))
        }
    }
}

/// A pool to the warehouse with the control plane created or upgraded.
async fn control_plane(config: &Config, connections: u32) -> Result<sqlx::PgPool> {
    let pool = services::postgres(config, connections).await?;
    control::migrate(&pool).await?;
    Ok(pool)
}

/// Drives a run to its end from the command line (a progress bar, the run's
/// gauges on `metrics_addr` if given) and reports how it ended.
async fn drive_to_end(
    config: &Config,
    pool: &sqlx::PgPool,
    run_id: Uuid,
    metrics_addr: Option<std::net::SocketAddr>,
    out: Out,
) -> Result<()> {
    let options = drive_options(metrics_addr, pool).await?;
    let signals = Signals::watch(&options.interrupt)?;
    let finished = run::drive(config, pool, run_id, options).await?;
    if finished == Finish::Interrupted {
        let (name, code) = signals.received().unwrap_or(("a signal", 143));
        return Err(CliError::Interrupted {
            message: format!(
                "stopped by {name}: nothing more is published; run {run_id} keeps its place and its workers finish what they hold. \
                 `backfill follow {run_id}` drives it on"
            ),
            code,
        });
    }
    finish(pool, run_id, finished, out).await
}

/// SIGTERM and SIGINT while a run is driven: the first stops the drive (the
/// run stays resumable), a second exits at once.
struct Signals {
    received: std::sync::Arc<std::sync::OnceLock<(&'static str, u8)>>,
    _watcher: tokio_util::task::AbortOnDropHandle<()>,
}

impl Signals {
    fn watch(interrupt: &tokio_util::sync::CancellationToken) -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind| {
            signal(kind).map_err(|e| CliError::Internal(format!("cannot listen for signals: {e}")))
        };
        let (mut term, mut int) = (
            listen(SignalKind::terminate())?,
            listen(SignalKind::interrupt())?,
        );
        let received = std::sync::Arc::new(std::sync::OnceLock::new());
        let (seen, interrupt) = (std::sync::Arc::clone(&received), interrupt.clone());
        let watcher = tokio::spawn(async move {
            loop {
                let which = tokio::select! {
                    _ = term.recv() => ("SIGTERM", 143),
                    _ = int.recv() => ("SIGINT", 130),
                };
                if seen.set(which).is_err() {
                    std::process::exit(i32::from(which.1));
                }
                interrupt.cancel();
            }
        });
        Ok(Self {
            received,
            _watcher: tokio_util::task::AbortOnDropHandle::new(watcher),
        })
    }

    fn received(&self) -> Option<(&'static str, u8)> {
        self.received.get().copied()
    }
}

/// How to drive a run from the command line: a progress bar, and the run's
/// gauges served on `metrics_addr` if one is given.
async fn drive_options(
    metrics_addr: Option<std::net::SocketAddr>,
    pool: &sqlx::PgPool,
) -> Result<DriveOptions> {
    let mut options = DriveOptions::default();
    if let Some(addr) = metrics_addr {
        let metrics = std::sync::Arc::new(backfill_coordinator::run::RunMetrics::default());
        let pool = pool.clone();
        let ready: backfill_shared::metrics::ReadyCheck = std::sync::Arc::new(move || {
            let pool = pool.clone();
            Box::pin(async move { sqlx::query("SELECT 1").execute(&pool).await.is_ok() })
        });
        backfill_shared::metrics::serve(addr, std::sync::Arc::new(metrics.registry()), ready)
            .await
            .map_err(|e| CliError::BadInput(e.to_string()))?;
        options.metrics = Some(metrics);
    }
    Ok(options)
}

/// Tells workers of a run's new state through Redis at once. Only warns when
/// Redis is away: the state is recorded, and workers read it within seconds.
async fn tell_workers(config: &Config, pool: &sqlx::PgPool, run: Uuid) {
    if let Some(warning) = run::tell_workers(config, pool, run).await {
        eprintln!("warning: {warning}");
    }
}

/// How a command prints its result: text for a person (the default), or one
/// JSON object on stdout for scripts (`--json`).
#[derive(Debug, Clone, Copy)]
struct Out {
    json: bool,
}

impl Out {
    /// A result: `value` as JSON, or `text()` for a person, on stdout.
    fn result(self, value: &impl serde::Serialize, text: impl FnOnce() -> String) -> Result<()> {
        if self.json {
            print_json(value)
        } else {
            print!("{}", shown(&text()));
            Ok(())
        }
    }

    /// A confirmation: `value` as JSON on stdout, or `text` for a person on stderr.
    fn done(self, value: &impl serde::Serialize, text: &str) -> Result<()> {
        if self.json {
            print_json(value)
        } else {
            eprintln!("{}", shown(text));
            Ok(())
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| CliError::Internal(e.to_string()))?;
    println!("{}", backfill_shared::text::json_shown(&text));
    PRINTED_JSON.store(true, std::sync::atomic::Ordering::Release);
    Ok(())
}

async fn finish(pool: &sqlx::PgPool, run_id: Uuid, finish: Finish, out: Out) -> Result<()> {
    let status = status::status(pool, run_id).await?;
    if out.json {
        let ended = match &finish {
            Finish::Applied => "applied".to_owned(),
            Finish::Halted(_) => "halted".to_owned(),
            Finish::Stopped(state) => state.to_string(),
            Finish::Interrupted => "interrupted".to_owned(),
        };
        print_json(&serde_json::json!({ "run_id": run_id, "finish": ended, "status": status }))?;
    } else {
        eprint!("{}", shown(&status.render()));
    }
    match finish {
        Finish::Applied => Ok(()),
        Finish::Halted(reason) => Err(CliError::Halted(format!(
            "run {run_id} halted: {reason}\n`backfill status {run_id}` shows the ledger; fix the cause, then retry"
        ))),
        // Someone else moved it on (cancelled, approved, cut over, rolled
        // back): nothing failed and nothing is left to drive.
        Finish::Stopped(state) => {
            if !out.json {
                eprintln!("run {run_id} is {state}: nothing left to drive");
            }
            Ok(())
        }
        Finish::Interrupted => Err(CliError::Halted(format!(
            "driving run {run_id} was interrupted; `backfill follow {run_id}` drives it on"
        ))),
    }
}

/// Starts `backfill follow RUN` in the background, detached from this terminal,
/// logging to a file beside the system's temporary files.
fn spawn_follower(run_id: Uuid, out: Out) -> Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Internal(format!("cannot find this program: {e}")))?;
    let log_path = std::env::temp_dir().join(format!("backfill-{run_id}.log"));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| CliError::Internal(format!("cannot create {}: {e}", log_path.display())))?;
    let mut command = std::process::Command::new(exe);
    command
        .args(["--log-format", "json", "follow", &run_id.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        command.process_group(0);
    }
    command
        .spawn()
        .map_err(|e| CliError::Internal(format!("cannot start the background coordinator: {e}")))?;
    out.done(
        &serde_json::json!({ "run_id": run_id, "detached": true, "log": log_path }),
        &format!(
            "driving in the background; log: {}; `backfill status {run_id}` follows it",
            log_path.display()
        ),
    )
}

/// Refuses (exit 2) a plan whose estimate passes `limits.budget`, unless the
/// operator says why; returns what it passes.
fn within_budget(plan: &plan::Plan, over_budget: Option<&str>) -> Result<Vec<String>> {
    let over = plan.over_budget();
    match over_budget.map(str::trim) {
        _ if over.is_empty() => Ok(over),
        Some(why) if !why.is_empty() => Ok(over),
        _ => Err(CliError::BadInput(format!(
            "the estimate passes limits.budget: {}. Raise the budget, narrow the scope, or pass --over-budget \"why\" (recorded in the run log)",
            over.join("; ")
        ))),
    }
}
