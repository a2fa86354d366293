//! `backfill done RUN [--lesson TEXT] [--told HOW]`: the operators' guide's
//! definition of done, checked against the control plane. A backfill is not
//! done when the job turns green but when the intended scope was processed,
//! validation passed or its exceptions were accepted, the cutover and every
//! downstream refresh ran, the stakeholders were told, the rollback assets
//! have an owner and a date until which they are kept, and the lesson is
//! captured. Each item found missing is named with what supplies it; with
//! none missing, the run moves to its final state `done`.
//!
//! `--told` and `--lesson` are recorded in the run log when given, whether
//! or not the run is done yet, so a later `done` need not repeat them.

use super::approve::open_failures;
use crate::{CliError, Result};
use backfill_shared::control::runs::{self, Run, RunState};
use backfill_shared::control::{batches, log, validations};
use sqlx::PgPool;
use std::fmt::Write as _;
use uuid::Uuid;

/// One item of the definition of done.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Item {
    pub name: &'static str,
    pub ok: bool,
    /// What was found, or what supplies the item.
    pub detail: String,
}

/// What `done` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    pub run_id: Uuid,
    /// Whether the run is (now) done.
    pub done: bool,
    pub items: Vec<Item>,
}

impl Verdict {
    #[must_use]
    pub fn render(&self) -> String {
        let mut s = String::new();
        for item in &self.items {
            let mark = if item.ok { "ok     " } else { "MISSING" };
            let _ = writeln!(s, "{mark} {:<22} {}", item.name, item.detail);
        }
        let missing = self.items.iter().filter(|i| !i.ok).count();
        if self.done {
            let _ = writeln!(s, "run {} is done.", self.run_id);
        } else {
            let _ = writeln!(
                s,
                "run {} is not done: {missing} item(s) missing.",
                self.run_id
            );
        }
        s
    }
}

/// What the operator supplies with this call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Supplied<'a> {
    pub lesson: Option<&'a str>,
    pub told: Option<&'a str>,
}

/// Run-log events that say the stakeholders were told.
const TOLD: [&str; 2] = ["stakeholders_told", "change_note_delivered"];

/// How the stakeholders were told, by whom and when, if `entry` says so
/// (what `done` and the report show).
#[must_use]
pub fn told(entry: &log::Entry) -> Option<String> {
    let how = match entry.event.as_str() {
        "stakeholders_told" => entry.detail["how"].as_str()?.to_owned(),
        "change_note_delivered" => {
            let to: Vec<&str> = entry.detail["endpoints"]
                .as_array()
                .map(|a| a.iter().filter_map(|e| e.as_str()).collect())
                .unwrap_or_default();
            format!("change note sent to {}", to.join(", "))
        }
        _ => return None,
    };
    Some(format!(
        "{how} ({}, {})",
        entry.actor,
        entry.at.format("%Y-%m-%d")
    ))
}

pub async fn done(
    pool: &PgPool,
    run_id: Uuid,
    actor: &str,
    supplied: Supplied<'_>,
) -> Result<Verdict> {
    let lesson = said("lesson", supplied.lesson)?;
    let told_now = said("told", supplied.told)?;
    let run = runs::load(pool, run_id).await?;
    super::approve::as_owner_or_reviewer(pool, &run, "declare done").await?;
    if matches!(
        run.state,
        RunState::Cancelled | RunState::RolledBack | RunState::RollingBack
    ) {
        return Err(CliError::WrongState(format!(
            "run {run_id} is {}: it never reached its readers, so it cannot be done; a new run does the backfill",
            run.state
        )));
    }
    if let Some(how) = told_now {
        log::append(
            pool,
            run_id,
            actor,
            "stakeholders_told",
            None,
            serde_json::json!({ "how": how }),
        )
        .await?;
    }
    if let Some(lesson) = lesson {
        log::append(
            pool,
            run_id,
            actor,
            "lesson_recorded",
            None,
            serde_json::json!({ "lesson": lesson }),
        )
        .await?;
    }

    let mut items = Vec::new();
    let counts = batches::counts(pool, run_id).await?;
    items.push(Item {
        name: "scope processed",
        ok: counts.applied == counts.total(),
        detail: if counts.applied == counts.total() {
            format!("{} of {} batches applied", counts.applied, counts.total())
        } else {
            format!(
                "{} of {} batches applied: drive the run on (`backfill resume {run_id}`)",
                counts.applied,
                counts.total()
            )
        },
    });
    items.push(match validations::latest(pool, run_id).await? {
        None => Item {
            name: "validation",
            ok: false,
            detail: format!("never validated: `backfill validate {run_id}`"),
        },
        Some(latest) => {
            let open = open_failures(pool, &latest).await?;
            Item {
                name: "validation",
                ok: open.is_empty(),
                detail: if open.is_empty() {
                    format!(
                        "passed on {}{}",
                        backfill_shared::text::minute(latest.at),
                        if latest.failed.is_empty() {
                            String::new()
                        } else {
                            format!(", failures accepted: {}", latest.failed.join(", "))
                        }
                    )
                } else {
                    format!(
                        "failed: {}; fix and `backfill validate {run_id}` again, or have the reviewer accept each",
                        open.join(", ")
                    )
                },
            }
        }
    });
    let cut_over = matches!(run.state, RunState::CutOver | RunState::Done);
    let refreshes = run.brief.dependencies.refresh.len();
    let refreshed = log::refreshes_done(pool, run_id, "cutover_step")
        .await?
        .len();
    items.push(Item {
        name: "cut over, refreshed",
        ok: cut_over && refreshed >= refreshes,
        detail: match (cut_over, run.cut_over_at) {
            (true, Some(at)) if refreshed >= refreshes => format!(
                "cut over {}; {refreshes} refresh step(s) ran",
                backfill_shared::text::minute(at)
            ),
            (true, _) => format!(
                "{refreshed} of {refreshes} refresh steps ran: `backfill cutover {run_id}` runs the rest"
            ),
            (false, _) => format!(
                "the run is {}: readers do not see it until `backfill approve` and `backfill cutover {run_id}`",
                run.state
            ),
        },
    });
    items.push(reached_item(pool, &run).await?);
    if !run.brief.validation.downstream.is_empty() {
        items.push(downstream_item(pool, &run).await?);
    }
    let told_how = log::latest_of(pool, run_id, &TOLD)
        .await?
        .as_ref()
        .and_then(told);
    items.push(Item {
        name: "stakeholders told",
        ok: told_how.is_some(),
        detail: told_how.unwrap_or_else(|| {
            format!(
                "no change note delivered: `backfill report {run_id} --send` to the webhooks, or `--told \"how\"`"
            )
        }),
    });
    let retained = run.brief.rollback.retain_days;
    let ends = run
        .cut_over_at
        .map(|at| at + chrono::Duration::days(i64::from(retained)));
    items.push(Item {
        name: "rollback retained",
        ok: retained > 0 || run.cleaned_at.is_some(),
        detail: match (retained, ends, run.cleaned_at) {
            (_, _, Some(at)) => format!("cleaned up {}", at.format("%Y-%m-%d")),
            (0, _, None) => "retain_days = 0: the rollback copies have no date to be kept until; \
                 set one in a new run's brief, or `backfill cleanup --now` to drop them"
                .to_owned(),
            (days, Some(until), None) => format!(
                "kept {days} days, until {}, owned by {}",
                until.format("%Y-%m-%d"),
                run.brief.meta.owner
            ),
            (days, None, None) => format!(
                "kept {days} days after cutover, owned by {}",
                run.brief.meta.owner
            ),
        },
    });
    let lesson_entry = log::latest_of(pool, run_id, &["lesson_recorded"]).await?;
    let lesson_text = lesson_entry
        .as_ref()
        .and_then(|e| e.detail["lesson"].as_str().map(str::to_owned));
    items.push(Item {
        name: "lesson captured",
        ok: lesson_text.is_some(),
        detail: lesson_text.clone().unwrap_or_else(|| {
            "none yet: `--lesson \"what the next backfill should do differently\"`".to_owned()
        }),
    });

    let complete = items.iter().all(|i| i.ok);
    let done = match (complete, run.state) {
        (_, RunState::Done) => true,
        (true, _) => {
            runs::mark_done(
                pool,
                run_id,
                actor,
                lesson_text.as_deref().unwrap_or_default(),
            )
            .await?
        }
        (false, _) => false,
    };
    if done && run.state != RunState::Done {
        crate::notify::emit(pool, run_id, crate::notify::Happened::Done).await;
    }
    Ok(Verdict {
        run_id,
        done,
        items,
    })
}

/// What downstream stores data, as cutover confirmed it rebuilt: done only
/// when each was, naming each that was not.
async fn reached_item(pool: &PgPool, run: &Run) -> Result<Item> {
    let run_id = run.run_id;
    let recorded = crate::reached::recorded(pool, run_id).await?;
    let Some(reached) = recorded.filter(|_| run.cut_over_at.is_some()) else {
        return Ok(Item {
            name: "refresh reached downstream",
            ok: false,
            detail: format!(
                "checked by cutover, once its refresh steps ran: `backfill cutover {run_id}`"
            ),
        });
    };
    let missed: Vec<String> = reached
        .iter()
        .filter(|r| !r.confirmed)
        .map(|r| format!("{} ({})", r.relation, r.how))
        .collect();
    Ok(Item {
        name: "refresh reached downstream",
        ok: missed.is_empty(),
        detail: if reached.is_empty() {
            "nothing downstream stores data".to_owned()
        } else if missed.is_empty() {
            format!(
                "rebuilt: {}",
                reached
                    .iter()
                    .map(|r| r.relation.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            format!(
                "not confirmed rebuilt: {}; rebuild each and check, or roll back",
                missed.join("; ")
            )
        },
    })
}

/// The metrics stakeholders quote, measured again now: done only when each
/// moved as the brief expects, naming each that did not or was not measured.
async fn downstream_item(pool: &PgPool, run: &Run) -> Result<Item> {
    let judged = crate::downstream::judge_run(pool, run, crate::downstream::Moment::Now).await?;
    let off: Vec<String> = judged
        .iter()
        .filter(|j| !j.passed() || j.awaiting_cutover)
        .map(crate::downstream::Judged::line)
        .collect();
    Ok(Item {
        name: "downstream metrics",
        ok: off.is_empty(),
        detail: if off.is_empty() {
            judged
                .iter()
                .map(crate::downstream::Judged::line)
                .collect::<Vec<_>>()
                .join("; ")
        } else {
            format!(
                "not as expected: {}; rebuild what is stale (its refresh) and run `backfill done {}` again, or roll back",
                off.join("; "),
                run.run_id
            )
        },
    })
}

/// The text given for `--what`, trimmed; an empty one is refused.
fn said<'a>(what: &str, text: Option<&'a str>) -> Result<Option<&'a str>> {
    match text.map(str::trim) {
        Some("") => Err(CliError::BadInput(format!(
            "--{what} is empty: say it in words"
        ))),
        other => Ok(other),
    }
}
