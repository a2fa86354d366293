//! `backfill list`: runs, newest first, each with what holds it now; and
//! finding the run a `RUN` argument means — a unique prefix of its id, as git
//! takes commits, or the latest run where a command allows none.

use crate::{CliError, Result};
use backfill_shared::brief::{Brief, Budget};
use backfill_shared::control::runs::{self, ListFilter, Listed, RunState};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Fewest characters of an id that name a run.
const MIN_PREFIX: usize = 4;

/// The run `text` names: a whole id, or a unique prefix of one (dashes optional).
pub async fn resolve(pool: &PgPool, text: &str) -> Result<Uuid> {
    let trimmed = text.trim();
    if let Ok(id) = Uuid::parse_str(trimmed) {
        return Ok(id);
    }
    let prefix: String = trimmed.chars().filter(|c| *c != '-').collect();
    let prefix = prefix.to_ascii_lowercase();
    if prefix.len() < MIN_PREFIX || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(CliError::BadInput(format!(
            "{text:?} is not a run id: give the id, or at least its first {MIN_PREFIX} hex digits (`backfill list` shows them)"
        )));
    }
    let found = runs::with_prefix(pool, &prefix, 6).await?;
    match found.as_slice() {
        [(id, ..)] => Ok(*id),
        [] => Err(CliError::NotFound(format!(
            "no run's id starts with {text}; `backfill list` shows the runs"
        ))),
        many => Err(CliError::BadInput(format!(
            "{text} is ambiguous: it begins the ids of {}{}; give more of the id",
            many.iter()
                .take(5)
                .map(|(id, name, state)| format!("{id} ({name}, {state})"))
                .collect::<Vec<_>>()
                .join(", "),
            if many.len() > 5 { " and more" } else { "" }
        ))),
    }
}

/// The run `text` names, or the latest run when there is no `text`.
pub async fn resolve_or_latest(pool: &PgPool, text: Option<&str>) -> Result<Uuid> {
    match text {
        Some(text) => resolve(pool, text).await,
        None => runs::latest(pool).await?.ok_or_else(|| {
            CliError::NotFound("no run is recorded yet: `backfill run BRIEF` starts one".into())
        }),
    }
}

/// `--since`: a date (`2026-11-01`), a UTC timestamp, or an age (`2d`, `6h`).
pub fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    let text = text.trim();
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    if let Ok(at) = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S") {
        return Ok(at.and_utc());
    }
    Budget::parse_duration(text)
        .and_then(|secs| i64::try_from(secs).ok())
        .map(|secs| chrono::Utc::now() - chrono::Duration::seconds(secs))
        .ok_or_else(|| {
            CliError::BadInput(format!(
                "--since {text:?}: give a date (2026-11-01), a UTC time (2026-11-01 08:00:00) or an age (2d, 6h)"
            ))
        })
}

/// `--state`: one of the run states.
pub fn parse_state(text: &str) -> Result<RunState> {
    RunState::parse(text.trim()).ok_or_else(|| {
        let names: Vec<&str> = RunState::ALL.iter().map(|s| s.as_str()).collect();
        CliError::BadInput(format!(
            "--state {text:?}: the states are {}",
            names.join(", ")
        ))
    })
}

/// The filter of `backfill list`'s options, each checked.
pub fn filter(
    state: Option<&str>,
    target: Option<&str>,
    owner: Option<&str>,
    since: Option<&str>,
    limit: i64,
) -> Result<ListFilter> {
    let target = target
        .map(|t| {
            backfill_shared::sql::TableName::parse(t)
                .map(|t| t.to_string())
                .ok_or_else(|| CliError::BadInput(format!("--target {t:?}: write schema.table")))
        })
        .transpose()?;
    Ok(ListFilter {
        state: state.map(parse_state).transpose()?,
        target,
        owner: owner.map(str::to_owned),
        since: since.map(parse_since).transpose()?,
        limit: limit.max(1),
        ..ListFilter::default()
    })
}

/// One run as `backfill list` prints it.
#[derive(Debug, Serialize)]
pub struct Row {
    pub run_id: Uuid,
    pub name: String,
    pub target: String,
    pub state: String,
    pub owner: String,
    pub reviewer: String,
    pub batches: i64,
    pub applied: i64,
    pub rows_written: i64,
    pub started: chrono::DateTime<chrono::Utc>,
    pub finished: Option<chrono::DateTime<chrono::Utc>>,
    /// What the run waits for, or why it stopped, in words.
    pub holds: String,
    /// The brief's `meta.risk` (empty if the recorded brief no longer parses).
    pub risk: String,
    /// Limits an operator accepted breaches of.
    pub accepted_breaches: i64,
    /// Seconds until every batch is applied at the pace so far, while it runs.
    pub eta_seconds: Option<i64>,
    /// The decision the run waits for, and who may take it.
    pub awaiting: Option<Awaiting>,
    /// The latest validation's failed checks nobody accepted.
    pub open_checks: Vec<String>,
}

/// A decision a run waits for: the step that moves it on and the people (the
/// brief's owner and reviewer, by name) who may take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Awaiting {
    pub step: Step,
    pub by: Vec<String>,
}

/// A step a person takes to move a run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Retry,
    Resume,
    AcceptBreach,
    Promote,
    Validate,
    AcceptChecks,
    Approve,
    Cutover,
    FinishRollback,
}

impl Step {
    /// The step in words, to follow "waiting for bob to".
    #[must_use]
    pub fn words(self) -> &'static str {
        match self {
            Self::Retry => "retry the failed batches",
            Self::Resume => "resume it",
            Self::AcceptBreach => "accept the breach and resume, or roll back",
            Self::Promote => "promote it",
            Self::Validate => "validate it",
            Self::AcceptChecks => "accept the failed checks, or roll back",
            Self::Approve => "approve it",
            Self::Cutover => "cut it over",
            Self::FinishRollback => "finish its rollback",
        }
    }
}

impl Awaiting {
    /// Whether `name` is among those who may take the step.
    #[must_use]
    pub fn is_for(&self, name: &str) -> bool {
        self.by.iter().any(|b| b.eq_ignore_ascii_case(name))
    }

    /// "bob", "alice or bob".
    #[must_use]
    pub fn who(&self) -> String {
        self.by.join(" or ")
    }
}

/// The runs `filter` selects, newest first.
pub async fn list(pool: &PgPool, filter: &ListFilter) -> Result<Vec<Row>> {
    Ok(runs::list(pool, filter)
        .await?
        .into_iter()
        .map(|r| {
            let holds = holds(&r);
            let risk = Brief::parse(&r.brief)
                .map(|b| b.meta.risk.as_str().to_owned())
                .unwrap_or_default();
            // The ETA `status` gives: none while the run is not moving.
            let moving = RunState::parse(&r.state).is_some_and(|state| {
                crate::status::withheld(
                    state,
                    r.finished_at.is_some(),
                    r.no_workers,
                    r.throttled_since,
                    &r.reviewer,
                )
                .is_none()
            });
            let eta_seconds = (moving && r.finished_at.is_none())
                .then(|| {
                    let worked =
                        runs::active_time(r.active_ms, r.running_since, chrono::Utc::now());
                    crate::status::eta(worked, r.applied, i64::from(r.batch_count) - r.applied)
                })
                .flatten();
            Row {
                awaiting: awaiting(&r),
                open_checks: r.open_checks.clone(),
                holds,
                risk,
                eta_seconds,
                accepted_breaches: r.accepted_breaches,
                run_id: r.run_id,
                name: r.name,
                target: r.target,
                state: r.state,
                owner: r.owner,
                reviewer: r.reviewer,
                batches: i64::from(r.batch_count),
                applied: r.applied,
                rows_written: r.rows_written,
                started: r.created_at,
                finished: r.cut_over_at.or(r.rolled_back_at).or(r.finished_at),
            }
        })
        .collect())
}

/// One run as `list` shows it.
pub async fn row(pool: &PgPool, run_id: Uuid) -> Result<Row> {
    let filter = ListFilter {
        run: Some(run_id),
        limit: 1,
        ..ListFilter::default()
    };
    list(pool, &filter)
        .await?
        .pop()
        .ok_or_else(|| backfill_shared::control::ControlError::UnknownRun(run_id).into())
}

/// The runs that wait for `name` to decide, newest first.
pub async fn awaiting_person(pool: &PgPool, name: &str) -> Result<Vec<Row>> {
    // The states in which a run waits for a person, or may come to: those
    // that hold the target, and an unfinished rollback.
    let filter = ListFilter {
        states: RunState::ACTIVE
            .into_iter()
            .chain([RunState::RollingBack])
            .collect(),
        limit: 1_000,
        ..ListFilter::default()
    };
    let mut rows = list(pool, &filter).await?;
    rows.retain(|r| r.awaiting.as_ref().is_some_and(|a| a.is_for(name)));
    Ok(rows)
}

/// The decision a run waits for, if any: a canary's promotion, a halted run's
/// breach to accept (or a rollback), a validation, an acceptance of its failed
/// checks, an approval, a cutover; failed batches to retry; a rollback to finish.
fn awaiting(r: &Listed) -> Option<Awaiting> {
    let either = || vec![r.owner.clone(), r.reviewer.clone()];
    let (step, by) = match RunState::parse(&r.state)? {
        RunState::Running if r.failed > 0 => (Step::Retry, either()),
        RunState::Paused => (Step::Resume, either()),
        RunState::Halted => (Step::AcceptBreach, either()),
        RunState::Canary => (Step::Promote, vec![r.reviewer.clone()]),
        RunState::Applied => match r.validated {
            None => (Step::Validate, either()),
            Some(false) if !r.open_checks.is_empty() => {
                (Step::AcceptChecks, vec![r.reviewer.clone()])
            }
            Some(_) => (Step::Approve, vec![r.reviewer.clone()]),
        },
        RunState::Approved => (Step::Cutover, either()),
        RunState::RollingBack => (Step::FinishRollback, either()),
        RunState::Running
        | RunState::CutOver
        | RunState::RolledBack
        | RunState::Cancelled
        | RunState::Done => return None,
    };
    Some(Awaiting { step, by })
}

/// What holds a run, or what is left of it, with the command that moves it on.
fn holds(r: &Listed) -> String {
    let id = r.run_id.simple().to_string();
    let short = &id[..8];
    let state = RunState::parse(&r.state);
    match state {
        Some(RunState::Running) if r.failed > 0 => {
            format!("{} batch(es) failed: `backfill status {short}`", r.failed)
        }
        Some(RunState::Running) if r.no_workers => {
            "no worker is taking its batches: start one with `backfill-worker`".into()
        }
        Some(RunState::Running) => r.throttled_since.map_or_else(
            || "applying batches".into(),
            |since| {
                format!(
                    "throttled by pause_when since {}",
                    since.format("%H:%M UTC")
                )
            },
        ),
        Some(RunState::Paused) => format!("paused: `backfill resume {short}`"),
        Some(RunState::Halted) => format!(
            "halted: {}",
            r.halt_reason.as_deref().unwrap_or("no reason recorded")
        ),
        Some(RunState::Canary) => format!(
            "waiting at its canary for {} to `backfill promote {short}`",
            r.reviewer
        ),
        Some(RunState::Applied) => match r.validated {
            None => format!("awaiting validation: `backfill validate {short}`"),
            Some(false) if !r.open_checks.is_empty() => format!(
                "validation failed ({}): fix it, or {} accepts it",
                r.open_checks.join(", "),
                r.reviewer
            ),
            Some(_) => format!("awaiting approval by {}", r.reviewer),
        },
        Some(RunState::Approved) => format!("awaiting cutover: `backfill cutover {short}`"),
        Some(RunState::RollingBack) => {
            format!("rolling back; `backfill rollback {short}` finishes it")
        }
        Some(RunState::CutOver | RunState::RolledBack | RunState::Cancelled | RunState::Done) => {
            let done = match state {
                Some(RunState::CutOver) => "cut over",
                Some(RunState::Done) => "done",
                Some(RunState::RolledBack) => "rolled back",
                _ => "cancelled",
            };
            if !r.keeps_copies || r.cleaned_at.is_some() {
                return format!("{done}; nothing kept");
            }
            let finished = r
                .cut_over_at
                .or(r.rolled_back_at)
                .or(r.finished_at)
                .unwrap_or(r.created_at);
            match Brief::parse(&r.brief) {
                Ok(brief) => {
                    let until =
                        finished + chrono::Duration::days(i64::from(brief.rollback.retain_days));
                    if until > chrono::Utc::now() {
                        format!(
                            "{done}; rollback copies kept until {}",
                            until.format("%Y-%m-%d")
                        )
                    } else {
                        format!(
                            "{done}; rollback copies kept past {}: `backfill cleanup {short}`",
                            until.format("%Y-%m-%d")
                        )
                    }
                }
                Err(_) => format!("{done}; rollback copies kept"),
            }
        }
        None => format!("state {:?} is unknown to this version", r.state),
    }
}

/// The runs as a table for a person.
#[must_use]
pub fn render(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "no runs match\n".into();
    }
    let header = [
        "RUN", "NAME", "TARGET", "STATE", "OWNER", "REVIEWER", "BATCHES", "ROWS", "STARTED",
        "HOLDS",
    ]
    .map(str::to_owned);
    let lines: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.run_id.simple().to_string()[..8].to_owned(),
                r.name.clone(),
                r.target.clone(),
                r.state.clone(),
                r.owner.clone(),
                r.reviewer.clone(),
                format!("{}/{}", r.applied, r.batches),
                r.rows_written.to_string(),
                r.started.format("%Y-%m-%d %H:%M").to_string(),
                r.holds.clone(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in std::iter::once(&header).chain(&lines) {
        let cells: Vec<String> = line
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i + 1 == line.len() {
                    cell.clone()
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
