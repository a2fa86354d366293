//! `backfill announce BRIEF --window "START..END"`: the note the operators'
//! guide asks for before a run — what is changing and why, the period and the
//! tables, the dashboards and people whose numbers may move, the window, and
//! the expected size and time from the plan. It is printed, sent to the
//! webhooks and recorded by the brief's hash; `run` of a `metric-changing` or
//! `production-critical` brief requires one (or `--unannounced "why"`).

use crate::notify;
use crate::plan::Plan;
use crate::{CliError, Result};
use backfill_shared::brief::{Brief, Risk};
use backfill_shared::control::announcements::{self, Announcement, NewAnnouncement};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sqlx::PgPool;
use std::fmt::Write as _;

/// Whether `run` of this brief needs an announcement first.
#[must_use]
pub fn required(brief: &Brief) -> bool {
    matches!(
        brief.meta.risk,
        Risk::MetricChanging | Risk::ProductionCritical
    )
}

/// What `announce` did: the recorded announcement, and the webhooks that did
/// not take it (with why).
#[derive(Debug, serde::Serialize)]
pub struct Announced {
    #[serde(flatten)]
    pub announcement: Announcement,
    pub failed: Vec<String>,
}

/// `START..END`, each a date (`2026-12-01`, midnight UTC) or a UTC time
/// (`2026-12-01 22:00`).
pub fn parse_window(text: &str) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let bad = |why: &str| {
        CliError::BadInput(format!(
            "--window {text:?}: {why}; write START..END, each a date or a UTC time, e.g. \"2026-12-01 22:00..2026-12-02 06:00\""
        ))
    };
    let (start, end) = text
        .split_once("..")
        .ok_or_else(|| bad("no `..` between start and end"))?;
    let at = |side: &str| -> Option<DateTime<Utc>> {
        let side = side.trim();
        [
            "%Y-%m-%d %H:%M:%S",
            "%Y-%m-%d %H:%M",
            "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%dT%H:%M",
        ]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(side, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(side, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
        .map(|t| t.and_utc())
    };
    let start = at(start).ok_or_else(|| bad("the start is not a date or time"))?;
    let end = at(end).ok_or_else(|| bad("the end is not a date or time"))?;
    if end <= start {
        return Err(bad("the window ends before it starts"));
    }
    Ok((start, end))
}

/// The note, from the brief and its plan.
#[must_use]
pub fn note(brief: &Brief, plan: &Plan, window: (DateTime<Utc>, DateTime<Utc>)) -> String {
    let by = &brief.scope.batch_by;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "**What is changing:** {} rewrites {} ({}, risk {}).",
        brief.meta.name,
        brief.scope.target,
        brief.write.strategy.as_str(),
        brief.meta.risk.as_str()
    );
    let _ = writeln!(s, "**Why:** {}", brief.meta.reason);
    let _ = writeln!(
        s,
        "**Period:** {} from {} to {} (exclusive).",
        by.column, by.start, by.end
    );
    let _ = writeln!(
        s,
        "**When:** {} to {}.",
        backfill_shared::text::minute(window.0),
        backfill_shared::text::minute(window.1)
    );
    let found: Vec<String> = plan
        .dependents
        .iter()
        .map(|d| format!("{} ({})", d.name, d.kind))
        .chain(plan.declared_outside_catalog.iter().cloned())
        .collect();
    let _ = writeln!(
        s,
        "**What may move:** {}.",
        if found.is_empty() {
            "nothing found downstream".to_owned()
        } else {
            found.join(", ")
        }
    );
    let _ = writeln!(
        s,
        "**Who should know:** {}.",
        if plan.stakeholders.is_empty() {
            "no stakeholders named".to_owned()
        } else {
            plan.stakeholders.join(", ")
        }
    );
    let e = &plan.estimate;
    let _ = writeln!(
        s,
        "**Size:** about {} rows in {} batches, about {} at {} batches at once.",
        e.rows_total,
        plan.batches,
        human_duration(e.wall_seconds),
        e.batches_at_once
    );
    let _ = writeln!(
        s,
        "**Owner / reviewer:** {} / {}. **Way back:** {}",
        brief.meta.owner, brief.meta.reviewer, brief.rollback.plan
    );
    s
}

fn human_duration(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0} s")
    } else if seconds < 5400.0 {
        format!("{:.0} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

/// Records the announcement of `text`'s brief, sends it to the webhooks and
/// records which took it.
pub async fn announce(
    pool: &PgPool,
    text: &str,
    brief: &Brief,
    plan: &Plan,
    window: (DateTime<Utc>, DateTime<Utc>),
    actor: &str,
) -> Result<Announced> {
    let note = note(brief, plan, window);
    let target = brief.scope.target.to_string();
    let mut announcement = announcements::record(
        pool,
        &NewAnnouncement {
            brief_hash: &Brief::hash(text),
            name: &brief.meta.name,
            target: &target,
            window,
            note: &note,
            announced_by: actor,
        },
    )
    .await?;
    let (delivered, failed) = notify::send_announcement(pool, &announcement, brief).await;
    if !delivered.is_empty() {
        announcements::set_delivered(pool, announcement.id, &delivered).await?;
        announcement.delivered = sqlx::types::Json(delivered);
    }
    Ok(Announced {
        announcement,
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_takes_dates_or_times_and_must_end_after_it_starts() {
        let (a, b) = parse_window("2026-12-01 22:00..2026-12-02 06:00").unwrap();
        assert_eq!((b - a).num_hours(), 8);
        let (a, b) = parse_window("2026-12-01..2026-12-03").unwrap();
        assert_eq!((b - a).num_days(), 2);
        for bad in ["2026-12-01", "tomorrow..later", "2026-12-03..2026-12-01"] {
            let e = parse_window(bad).unwrap_err().to_string();
            assert!(e.contains("--window") && e.contains("START..END"), "{e}");
        }
    }
}
