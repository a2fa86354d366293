//! `backfill cutover RUN`: refused without the reviewer's approval, and refused,
//! naming the ranges, when the table to be exposed changed since the validation
//! the reviewer approved (its fingerprint is measured again: for a swap, inside
//! the swap's transaction with the built table locked against writers). For
//! staging-swap and parallel-version, swaps the built table into the target's place
//! (the old table stays as the rollback copy); then runs the brief's `refresh`
//! steps in order (SQL statements, and commands such as `dbt build`, whose exit
//! status and last lines are logged) and refreshes the materialized views that
//! read the target.
//! Each step is logged; a failure stops there and says where, and running cutover
//! again resumes after the last step that succeeded.

use super::fingerprint::{self, Fingerprint};
use super::{old_table, swap, writes_live_target};
use crate::notify::{self, Happened, Step};
use crate::{CliError, Result};
use backfill_shared::brief::Refresh;
use backfill_shared::control::capture::{Capture, Carried, Pass};
use backfill_shared::control::runs::{self, Run, RunState};
use backfill_shared::control::validations;
use backfill_shared::control::{log, maintenance};
use backfill_shared::sql::TableName;
use sqlx::{AssertSqlSafe, PgPool};
use std::time::Duration;
use uuid::Uuid;

/// What cutover did.
#[derive(Debug, Default, serde::Serialize)]
pub struct CutoverReport {
    pub swapped: Option<swap::Swapped>,
    /// Keys the live table wrote during the build, carried into the table
    /// swapped in.
    pub live_writes_carried: u64,
    pub old_table: Option<String>,
    /// An earlier cutover swapped the built table in and stopped before its
    /// last steps, which this one ran.
    pub swapped_earlier: bool,
    pub refresh_statements: usize,
    pub refreshed_materialized_views: Vec<String>,
    /// The table whose statistics cutover gathered (`ANALYZE`)...
    pub analyzed: Option<String>,
    /// ...or why it did not.
    pub not_analyzed: Option<String>,
    /// The downstream metrics measured after the refresh steps.
    pub downstream: crate::downstream::After,
    /// What downstream stores data, each confirmed rebuilt or not...
    pub reached: Vec<crate::reached::Reached>,
    /// ...or why that could not be told.
    pub reached_error: Option<String>,
}

impl CutoverReport {
    /// What cutover did, for a person.
    #[must_use]
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        match (&self.swapped, &self.old_table) {
            (Some(swapped), old) => {
                let _ = writeln!(
                    s,
                    "swapped the built table in, carrying {} row(s) the live table wrote during the build{}",
                    self.live_writes_carried,
                    old.as_deref().map_or_else(String::new, |o| format!(
                        "; the previous table is kept as {o}"
                    ))
                );
                let _ = writeln!(
                    s,
                    "  the target was locked {} ms ({} ms carrying the last live writes)",
                    swapped.locked_ms, swapped.carried_under_lock_ms
                );
                for (what, names) in [
                    ("views", &swapped.views),
                    ("materialized views", &swapped.materialized_views),
                    ("foreign keys", &swapped.foreign_keys),
                    ("sequences", &swapped.sequences),
                ] {
                    if !names.is_empty() {
                        let _ = writeln!(s, "  moved {what}: {}", names.join(", "));
                    }
                }
            }
            (None, Some(old)) if self.swapped_earlier => {
                let _ = writeln!(
                    s,
                    "an earlier cutover already swapped the built table in (the previous table is kept as {old}) and stopped before its last steps; this one ran them"
                );
            }
            (None, _) => {
                let _ = writeln!(s, "the run wrote the target in place: nothing to swap");
            }
        }
        if let Some(table) = &self.analyzed {
            let _ = writeln!(s, "analyzed {table}: the planner's statistics are fresh");
        }
        if let Some(why) = &self.not_analyzed {
            let _ = writeln!(s, "statistics left as they were: {why}");
        }
        let _ = writeln!(
            s,
            "ran {} refresh step(s); refreshed materialized views: {}",
            self.refresh_statements,
            if self.refreshed_materialized_views.is_empty() {
                "none".to_owned()
            } else {
                self.refreshed_materialized_views.join(", ")
            }
        );
        s.push_str(&crate::reached::render(
            &self.reached,
            self.reached_error.as_deref(),
        ));
        s.push_str(&self.downstream.render("cutover"));
        s
    }
}

pub async fn cutover(
    pool: &PgPool,
    run_id: Uuid,
    actor: &str,
    lock_timeout: Duration,
) -> Result<CutoverReport> {
    cutover_with(pool, run_id, actor, lock_timeout, Accepting::default()).await
}

/// What a cutover is told to accept, each with the reason.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accepting<'a> {
    /// The live value of rows inside the scope written to the live table
    /// during the build (a swap refuses them otherwise).
    pub live_changes: Option<&'a str>,
    /// Incremental dbt models downstream that the refresh steps leave with
    /// the old history (cutover refuses them otherwise).
    pub stale: Option<&'a str>,
    /// Leave the exposed table's statistics as they are (`--no-analyze`).
    pub no_analyze: bool,
}

/// [`cutover`], accepting what `accepting` says, with its reasons.
pub async fn cutover_with(
    pool: &PgPool,
    run_id: Uuid,
    actor: &str,
    lock_timeout: Duration,
    accepting: Accepting<'_>,
) -> Result<CutoverReport> {
    let accept_live_changes = accepting.live_changes;
    let run = runs::load(pool, run_id).await?;
    super::approve::as_owner_or_reviewer(pool, &run, "cut over").await?;
    match run.state {
        RunState::Approved => {}
        RunState::Applied => {
            return Err(CliError::WrongState(format!(
                "run {run_id} is not approved; the reviewer approves first: `backfill approve {run_id} --reviewer {}`",
                run.brief.meta.reviewer
            )));
        }
        RunState::CutOver | RunState::Done => {
            return Err(CliError::WrongState(format!(
                "run {run_id} is already cut over{} and {}: readers see what it wrote. Nothing was done; \
                 `backfill rollback {run_id}` undoes it{}",
                backfill_shared::text::when(run.cut_over_at),
                run.state,
                if run.state == RunState::CutOver {
                    format!(", `backfill done {run_id}` closes it")
                } else {
                    String::new()
                }
            )));
        }
        other => {
            return Err(CliError::WrongState(format!(
                "run {run_id} is {other}; only an approved run can be cut over"
            )));
        }
    }
    let brief = &run.brief;
    let target = &brief.scope.target;
    let stale = incremental_left_stale(pool, &run).await?;
    if !stale.is_empty() {
        let Some(why) = accepting.stale else {
            return Err(CliError::BadInput(format!(
                "cutover of run {run_id} would leave incremental dbt models downstream with the history the run rewrote: {}. \
                 The brief's refresh rebuilds none of them for the past; add it to its dbt command, \
                 or cut over saying why they may stay stale: `backfill cutover {run_id} --stale-ok \"why\"`",
                stale.join("; ")
            )));
        };
        log::append(
            pool,
            run_id,
            actor,
            "stale_models_accepted",
            None,
            serde_json::json!({ "models": &stale, "reason": why }),
        )
        .await?;
    }
    let validated = approved_fingerprint(pool, &run).await?;
    let mut report = CutoverReport::default();
    let step = |name: &str, detail: serde_json::Value| {
        log::append(
            pool,
            run_id,
            actor,
            "cutover_step",
            None,
            serde_json::json!({ "step": name, "detail": detail }),
        )
    };
    // Logged on the pool (a failed step's transaction rolls back), and told.
    let stopped = async |event: &str, detail: serde_json::Value, error: CliError| -> CliError {
        let _ = log::append(pool, run_id, actor, event, None, detail).await;
        notify::emit(
            pool,
            run_id,
            Happened::Cutover(Step::Failed(error.to_string())),
        )
        .await;
        error
    };
    let fail = async |name: &str, error: &CliError| -> CliError {
        let detail = serde_json::json!({ "step": name, "error": error.to_string() });
        let error = CliError::Internal(format!(
            "cutover of run {run_id} stopped at {name}: {error}"
        ));
        stopped("cutover_failed", detail, error).await
    };
    let refused = async |error: CliError| -> CliError {
        let detail = serde_json::json!({ "error": error.to_string() });
        stopped("cutover_refused", detail, error).await
    };
    log::append(
        pool,
        run_id,
        actor,
        "cutover_started",
        None,
        serde_json::json!({}),
    )
    .await?;
    notify::emit(pool, run_id, Happened::Cutover(Step::Started)).await;

    if let (Some(side), None) = (&run.side_table, &run.old_table) {
        let side = TableName::parse(side).ok_or_else(|| {
            CliError::Internal(format!(
                "run {run_id} records an unreadable side table {side:?}"
            ))
        })?;
        let old = old_table(brief, run_id);
        let old_name = old.to_string();
        let capture = Capture::of(run_id);
        // Outside the scope the built table is the live table's copy plus
        // the writes captured since: anything else changed it (the run
        // writes only the scope), and would be exposed unvalidated.
        let mut conn = pool.acquire().await?;
        let damaged = capture
            .differs_outside(&mut conn, &brief.scope, target, &side)
            .await;
        drop(conn);
        match damaged {
            Ok((0, _)) => {}
            Ok((n, keys)) => {
                return Err(refused(CliError::Halted(format!(
                    "cutover of run {run_id} refused: outside the scope, {n} row(s) of {side} differ from {target} \
                     (keys: {}), though the run writes only the scope and the live table's writes are carried at cutover. \
                     Nothing was exposed. Find out what wrote to {side}; roll back and run again",
                    keys.join(", ")
                )))
                .await);
            }
            Err(e) => return Err(fail("comparing the rows outside the scope", &e.into()).await),
        }
        // Catch up outside the lock with what the pipeline wrote during the
        // build, so the swap's locked window carries only the last writes.
        let caught_up = carry_live_writes(pool, &run, &capture, &side, Pass::OutsideOnly).await;
        let caught_up = match caught_up {
            Ok(carried) => carried,
            Err(e) => return Err(fail("carrying the live table's writes", &e).await),
        };
        let carried = std::sync::Mutex::new(Carried::default());
        let swapped = swap::swap(
            pool,
            target,
            &side,
            &old,
            lock_timeout,
            swap::Hooks {
                verify: async |conn: &mut sqlx::PgConnection| {
                    unchanged_since_validation(conn, &run, &validated, &side).await
                },
                carry: async |conn: &mut sqlx::PgConnection| {
                    let pass = Pass::All {
                        in_scope_accepted: accept_live_changes.is_some(),
                    };
                    let last = carry_in(conn, &run, &capture, &side, pass).await?;
                    if let Ok(mut carried) = carried.lock() {
                        *carried = last;
                    }
                    Ok(())
                },
                record: async |conn: &mut sqlx::PgConnection| {
                    runs::set_old_table(&mut *conn, run_id, Some(&old_name)).await?;
                    // The retired table takes the triggers with it; they go,
                    // and the exposed table's writes are captured from now on,
                    // for a rollback to carry back.
                    if capture.exists(&mut *conn).await? {
                        capture.remove(&mut *conn).await?;
                        capture.install(&mut *conn, brief, target).await?;
                    }
                    Ok(())
                },
            },
        )
        .await;
        let swapped = match swapped {
            Ok(s) => s,
            Err(e @ CliError::Halted(_)) => return Err(refused(e).await),
            Err(e) => return Err(fail("swap", &e).await),
        };
        let carried = carried.into_inner().unwrap_or_default();
        step(
            "swap",
            serde_json::json!({
                "new": side.to_string(), "old": old_name, "moved": &swapped,
                "live_writes_carried": caught_up.keys + carried.keys,
                "live_writes_in_scope": carried.conflicting,
                "accepted_live_changes": accept_live_changes,
            }),
        )
        .await?;
        report.live_writes_carried = caught_up.keys + carried.keys;
        report.swapped = Some(swapped);
        report.old_table = Some(old.to_string());
    }

    if run.side_table.is_some() && run.old_table.is_some() {
        report.swapped_earlier = true;
        report.old_table.clone_from(&run.old_table);
    }
    if run.side_table.is_none() {
        let mut conn = pool.acquire().await?;
        if let Err(e) = unchanged_since_validation(&mut conn, &run, &validated, target).await {
            return Err(refused(e).await);
        }
    }

    // Fresh statistics for what readers now query, before anything
    // downstream is rebuilt from it.
    let analyzed = if accepting.no_analyze {
        Err("--no-analyze".to_owned())
    } else {
        match crate::catalog::analyze(pool, target).await {
            Ok(analyzed) => analyzed,
            Err(e) => return Err(fail("ANALYZE", &e.into()).await),
        }
    };
    match analyzed {
        Ok(()) => report.analyzed = Some(target.to_string()),
        Err(why) => report.not_analyzed = Some(why),
    }
    step(
        "analyze",
        serde_json::json!({ "table": target.to_string(), "analyzed": report.analyzed.is_some(),
                            "why_not": report.not_analyzed }),
    )
    .await?;

    let done = log::refreshes_done(pool, run_id, "cutover_step").await?;
    for (index, refresh) in brief.dependencies.refresh.iter().enumerate() {
        let index = i64::try_from(index).unwrap_or(i64::MAX);
        if done.contains(&index) {
            continue;
        }
        let at = format!("refresh step {} ({refresh})", index + 1);
        let manifest = brief.dependencies.dbt_manifest.as_deref();
        let detail =
            match refresh_step(pool, run_id, actor, refresh, manifest, index, "cutover").await {
                Ok(detail) => detail,
                Err(e) => return Err(fail(&at, &e).await),
            };
        step("refresh", detail).await?;
        report.refresh_statements += 1;
    }
    match swap::refresh_materialized_views(pool, target).await {
        Ok(views) => {
            step(
                "refresh_materialized_views",
                serde_json::json!({ "views": &views }),
            )
            .await?;
            report.refreshed_materialized_views = views;
        }
        Err(e) => return Err(fail("refreshing materialized views", &e).await),
    }
    if writes_live_target(brief) {
        let mut conn = pool.acquire().await?;
        maintenance::clear(&mut conn, target, run_id).await?;
    }
    runs::transition(
        pool,
        run_id,
        &[RunState::Approved],
        RunState::CutOver,
        actor,
        None,
    )
    .await?;
    report.downstream =
        crate::downstream::After::measure(pool, &run, actor, crate::downstream::Moment::Cutover)
            .await;
    let reached = async {
        let dbt: Vec<_> = crate::reached::dbt_runs(pool, run_id, "cutover_step")
            .await?
            .into_iter()
            .map(|(_, now)| now)
            .collect();
        let reached = crate::reached::confirm(
            pool,
            &run,
            &report.refreshed_materialized_views,
            &dbt,
            &report.downstream.judged,
        )
        .await?;
        crate::reached::record(pool, run_id, actor, &reached).await?;
        Ok::<_, CliError>(reached)
    };
    match reached.await {
        Ok(reached) => report.reached = reached,
        Err(e) => report.reached_error = Some(e.to_string()),
    }
    notify::emit(pool, run_id, Happened::Cutover(Step::Done)).await;
    Ok(report)
}

/// A refresh command that ran: its exit code (`None`: killed by a signal) and
/// the last lines it printed.
struct Ran {
    exit: Option<i32>,
    tail: String,
}

/// How many of its last lines a refresh command's output keeps in the log.
const OUTPUT_TAIL_LINES: usize = 20;

/// The incremental dbt models downstream of the run's target that its refresh
/// steps leave with the old history, each with the command that rebuilds it;
/// none without a manifest. A manifest that cannot be read is one entry
/// saying so: what it would say cannot be known.
async fn incremental_left_stale(pool: &PgPool, run: &Run) -> Result<Vec<String>> {
    let radius = match crate::preflight::dbt_radius(pool, &run.brief).await? {
        None => return Ok(Vec::new()),
        Some(Ok(radius)) => radius,
        Some(Err(e)) => return Ok(vec![format!("whichever the manifest names ({e})")]),
    };
    let period = crate::notify::nominal_time(run);
    let period = period.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
    Ok(radius
        .left_stale(&run.brief.dependencies.refresh)
        .into_iter()
        .map(|m| format!("{} (`{}`)", m.name, m.command(period)))
        .collect())
}

/// Runs one of the brief's refresh steps (step `index`): a statement, or a
/// command whose failure is logged (`refresh_command_failed`) with what it
/// printed; `verb` (`cutover`, `rollback`) is the command that runs it again.
/// What to log of it when it succeeds.
pub(crate) async fn refresh_step(
    pool: &PgPool,
    run_id: Uuid,
    actor: &str,
    refresh: &Refresh,
    manifest: Option<&str>,
    index: i64,
    verb: &str,
) -> Result<serde_json::Value> {
    match refresh {
        Refresh::Sql(statement) => {
            sqlx::raw_sql(AssertSqlSafe(statement.as_str()))
                .execute(pool)
                .await?;
            Ok(serde_json::json!({ "index": index, "statement": statement }))
        }
        Refresh::Command { run, dir } => {
            // What dbt says it did, and what it said the time before.
            let results = crate::reached::is_dbt(run)
                .then(|| crate::reached::results_path(run, dir.as_deref(), manifest));
            let previous = results.as_deref().and_then(crate::reached::read);
            let started = chrono::Utc::now();
            let ran = run_command(run, dir.as_deref()).await?;
            let now = results
                .as_deref()
                .and_then(crate::reached::read)
                .filter(|r| r.generated_at.is_some_and(|at| at >= started));
            let detail = serde_json::json!({
                "index": index,
                "statement": refresh.to_string(),
                "command": run,
                "dir": dir,
                "exit": ran.exit,
                "output": ran.tail,
                "dbt": results.map(|path| serde_json::json!({
                    "path": path, "previous": previous, "now": now,
                })),
            });
            if ran.exit == Some(0) {
                return Ok(detail);
            }
            let _ = log::append(pool, run_id, actor, "refresh_command_failed", None, detail).await;
            Err(CliError::BadInput(format!(
                "`{refresh}` {}; the last lines it printed:\n{}\nFix it, then `backfill {verb} {run_id}` runs it again and goes on",
                ran.exit.map_or_else(
                    || "was killed by a signal".to_owned(),
                    |code| format!("exited with {code}")
                ),
                ran.tail
            )))
        }
    }
}

/// Runs `run` (a program and its arguments, no shell) in `dir`, its output
/// captured; an error only when it cannot be started.
async fn run_command(run: &[String], dir: Option<&str>) -> Result<Ran> {
    let Some((program, args)) = run.split_first() else {
        return Err(CliError::BadInput(
            "a refresh command with nothing to run".into(),
        ));
    };
    let mut command = tokio::process::Command::new(program);
    // Plain output, for the run log and the terminal: tools that colour
    // (dbt) are asked not to, and what escapes remain is removed below.
    command
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let out = command.output().await.map_err(|e| {
        CliError::BadInput(format!(
            "cannot start `{program}`{}: {e}; install it or fix `run` in the brief's refresh",
            dir.map(|d| format!(" in {d}")).unwrap_or_default()
        ))
    })?;
    let printed = backfill_shared::text::plain(
        &(String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr)),
    );
    let lines: Vec<&str> = printed.lines().collect();
    let tail = lines[lines.len().saturating_sub(OUTPUT_TAIL_LINES)..].join("\n");
    Ok(Ran {
        exit: out.status.code(),
        tail,
    })
}

/// One pass of carrying the live table's captured writes into the built
/// table, in a transaction of its own.
async fn carry_live_writes(
    pool: &PgPool,
    run: &Run,
    capture: &Capture,
    built: &TableName,
    pass: Pass,
) -> Result<Carried> {
    let mut tx = pool.begin().await?;
    let carried = carry_in(&mut tx, run, capture, built, pass).await?;
    tx.commit().await?;
    Ok(carried)
}

/// Carries the captured writes of the live target into `built` on `conn`;
/// refuses (exit 1), naming the keys, when rows inside the scope were written
/// and not accepted.
async fn carry_in(
    conn: &mut sqlx::PgConnection,
    run: &Run,
    capture: &Capture,
    built: &TableName,
    pass: Pass,
) -> Result<Carried> {
    let scope = &run.brief.scope;
    let carried = capture
        .carry(&mut *conn, scope, &scope.target, built, pass)
        .await?;
    if carried.conflicts.is_empty() {
        return Ok(carried);
    }
    let run_id = run.run_id;
    Err(CliError::Halted(format!(
        "cutover of run {run_id} refused: {} row(s) inside the scope were written to the live {} during the build, after the run began; \
         the built table has the backfill's rows for them instead. Keys: {}{}. Nothing was exposed. \
         Check them: roll back and run again to recompute them from the source, or `backfill cutover {run_id} --accept-live-changes \"why\"` to keep the live rows",
        carried.conflicting,
        scope.target,
        carried.conflicts.join(", "),
        if carried.conflicting > i64::try_from(carried.conflicts.len()).unwrap_or(i64::MAX) {
            ", …"
        } else {
            ""
        }
    )))
}

/// The fingerprint of the validation the reviewer approved.
async fn approved_fingerprint(pool: &PgPool, run: &Run) -> Result<Fingerprint> {
    let run_id = run.run_id;
    let again = || {
        CliError::BadInput(format!(
            "run {run_id} was approved without a recorded validation; run `backfill validate {run_id}` and have the reviewer approve again"
        ))
    };
    let id = run.approved_validation.ok_or_else(again)?;
    let validation = validations::get(pool, id).await?.ok_or_else(again)?;
    serde_json::from_value(validation.fingerprint).map_err(|e| {
        CliError::Internal(format!(
            "validation {id} of run {run_id} holds an unreadable fingerprint: {e}"
        ))
    })
}

/// Measures `table` again and refuses (exit 1) when any range differs from
/// what the approved validation saw.
async fn unchanged_since_validation(
    conn: &mut sqlx::PgConnection,
    run: &Run,
    validated: &Fingerprint,
    table: &TableName,
) -> Result<()> {
    let now = fingerprint::measure(&mut *conn, &run.brief, table, Some(validated.hash)).await?;
    let changed = validated.changed_ranges(&now);
    if changed.is_empty() {
        return Ok(());
    }
    let run_id = run.run_id;
    Err(CliError::Halted(format!(
        "cutover of run {run_id} refused: {table} changed since the validation the reviewer approved, in {} range(s): {}. \
         Nothing was exposed. Find out what wrote to it, then run `backfill validate {run_id}` and have the reviewer approve again",
        changed.len(),
        changed.join("; ")
    )))
}
