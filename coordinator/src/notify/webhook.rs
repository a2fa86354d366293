//! Webhook payloads: a CloudEvents 1.0 JSON event (`type`
//! `dev.backfill.run.<what>`, `subject` the run id, `data` the facts), or with
//! `BACKFILL_WEBHOOK_FORMAT=slack` a Slack incoming-webhook message in Block
//! Kit ([`slack`]): a header saying what happened, why, the facts as fields
//! (target, period, owner, reviewer, risk, the figures, what stopped it), the
//! change note as mrkdwn, and the command to see more.

use super::{Facts, Happened, slack};
use serde_json::{Value, json};
use uuid::Uuid;

/// What a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    CloudEvents,
    Slack,
}

impl Format {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::CloudEvents => "cloudevents",
            Self::Slack => "slack",
        }
    }

    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "cloudevents" => Some(Self::CloudEvents),
            "slack" => Some(Self::Slack),
            _ => None,
        }
    }
}

/// The facts every payload carries: what happened to which run, and where it stands.
#[must_use]
pub fn data(facts: &Facts<'_>) -> Value {
    let run = facts.run;
    let brief = &run.brief;
    let rows = &facts.counts.rows;
    let mut data = json!({
        "run_id": run.run_id,
        "event": facts.happened.name(),
        "name": brief.meta.name,
        "reason": brief.meta.reason,
        "owner": brief.meta.owner,
        "reviewer": brief.meta.reviewer,
        "risk": brief.meta.risk.as_str(),
        "target": brief.scope.target.to_string(),
        "strategy": brief.write.strategy.as_str(),
        "scope": { "column": brief.scope.batch_by.column,
                   "start": brief.scope.batch_by.start.to_string(),
                   "end": brief.scope.batch_by.end.to_string() },
        "state": run.state.as_str(),
        "batches": { "total": run.batch_count, "applied": facts.counts.applied,
                     "failed": facts.counts.failed },
        "rows": { "inserted": rows.inserted, "updated": rows.updated, "deleted": rows.deleted },
        "stakeholders": facts.stakeholders(),
        "see": format!("backfill status {}", run.run_id),
    });
    let map = data.as_object_mut();
    if let Some(map) = map {
        match facts.happened {
            Happened::Validated { passed } => {
                map.insert("passed".into(), (*passed).into());
            }
            Happened::Approved { by } => {
                map.insert("approved_by".into(), by.clone().into());
            }
            Happened::ChangeNote(markdown) => {
                map.insert("change_note".into(), markdown.clone().into());
            }
            _ => {}
        }
        if let Some(error) = facts.happened.error() {
            map.insert("error".into(), error.into());
        }
    }
    data
}

/// A CloudEvents 1.0 event in structured JSON: `type` `dev.backfill.run.<what>`.
fn cloud_event(
    what: &str,
    subject: &str,
    target: &str,
    time: chrono::DateTime<chrono::Utc>,
    data: &Value,
) -> (&'static str, Value) {
    (
        "application/cloudevents+json",
        json!({
            "specversion": "1.0",
            "id": Uuid::new_v4(),
            "source": format!("backfill/{target}"),
            "type": format!("dev.backfill.run.{what}"),
            "subject": subject,
            "time": time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "datacontenttype": "application/json",
            "data": data,
        }),
    )
}

/// The content type and body of the payload for `facts` in `format`;
/// `console` is the console's address, where a Slack message points for what
/// did not fit.
#[must_use]
pub fn payload(facts: &Facts<'_>, format: Format, console: Option<&str>) -> (&'static str, Value) {
    match format {
        Format::CloudEvents => cloud_event(
            facts.happened.name(),
            &facts.run.run_id.to_string(),
            &facts.run.brief.scope.target.to_string(),
            facts.time,
            &data(facts),
        ),
        Format::Slack => ("application/json", slack(facts, console)),
    }
}

fn headline(facts: &Facts<'_>) -> String {
    let name = &facts.run.brief.meta.name;
    let target = facts.run.brief.scope.target.to_string();
    let what = match facts.happened {
        Happened::Started => "started".to_owned(),
        Happened::Resumed => "resumed".to_owned(),
        Happened::Halted(_) => "HALTED".to_owned(),
        Happened::Failed(_) => "lost its coordinator".to_owned(),
        Happened::Applied => "applied every batch".to_owned(),
        Happened::Cancelled => "was cancelled".to_owned(),
        Happened::Validated { passed: true } => "passed validation".to_owned(),
        Happened::Validated { passed: false } => "FAILED validation".to_owned(),
        Happened::Approved { by } => format!("was approved by {by}"),
        Happened::Cutover(super::Step::Started) => "is cutting over".to_owned(),
        Happened::Cutover(super::Step::Done) => "is cut over: readers see the new data".to_owned(),
        Happened::Cutover(super::Step::Failed(_)) => "FAILED to cut over".to_owned(),
        Happened::Rollback(super::Step::Started) => "is rolling back".to_owned(),
        Happened::Rollback(super::Step::Done) => {
            "is rolled back: the target is as it was".to_owned()
        }
        Happened::Rollback(super::Step::Failed(_)) => "FAILED to roll back".to_owned(),
        Happened::CleanedUp => "was cleaned up".to_owned(),
        Happened::Done => "is done".to_owned(),
        Happened::ChangeNote(_) => "changed history: the change note".to_owned(),
    };
    format!("Backfill {name} of {target} {what}")
}

/// Where a Slack reader finds what did not fit: the change note in the
/// console (`BACKFILL_CONSOLE_URL`), else the command that prints it.
fn rest_of(run_id: Uuid, console: Option<&str>) -> String {
    console.map_or_else(
        || format!("`backfill report {run_id}`"),
        |url| {
            format!(
                "<{}/runs/{run_id}/note|the change note>",
                slack::escape(url.trim_end_matches('/'))
            )
        },
    )
}

fn slack(facts: &Facts<'_>, console: Option<&str>) -> Value {
    let run = facts.run;
    let brief = &run.brief;
    let by = &brief.scope.batch_by;
    let rows = &facts.counts.rows;
    let mut fields = vec![
        (
            "Target",
            format!("{} ({})", brief.scope.target, brief.write.strategy.as_str()),
        ),
        (
            "Period",
            format!("{} from {} to {}", by.column, by.start, by.end),
        ),
        ("Owner", brief.meta.owner.clone()),
        ("Reviewer", brief.meta.reviewer.clone()),
        ("Risk", brief.meta.risk.as_str().to_owned()),
        (
            "Batches",
            format!("{} of {} applied", facts.counts.applied, run.batch_count),
        ),
        (
            "Rows",
            format!(
                "{} inserted, {} updated, {} deleted",
                rows.inserted, rows.updated, rows.deleted
            ),
        ),
    ];
    let stakeholders = facts.stakeholders();
    if !stakeholders.is_empty() {
        fields.push(("Stakeholders", stakeholders.join(", ")));
    }
    if let Some(error) = facts.happened.error() {
        fields.push(("What stopped it", error.to_owned()));
    }
    let mut message = slack::Message::new(&headline(facts))
        .text(&format!("*Why:* {}", slack::escape(&brief.meta.reason)))
        .fields(&fields);
    if let Happened::ChangeNote(markdown) = facts.happened {
        message = message.text(&slack::mrkdwn(markdown));
    }
    message
        .context(&format!("`backfill status {}`", run.run_id))
        .finish(&rest_of(run.run_id, console))
}

/// The payload of an announcement (`backfill announce`): no run exists yet,
/// so the subject is the brief's hash, which the run will carry.
#[must_use]
pub fn announcement(
    a: &backfill_shared::control::announcements::Announcement,
    brief: &backfill_shared::brief::Brief,
    format: Format,
) -> (&'static str, Value) {
    let window = format!(
        "{} to {}",
        backfill_shared::text::minute(a.window_start),
        backfill_shared::text::minute(a.window_end)
    );
    match format {
        Format::CloudEvents => cloud_event(
            "announced",
            &a.brief_hash,
            &a.target,
            a.at,
            &json!({
                    "announcement": a.id,
                    "brief_hash": a.brief_hash,
                    "name": a.name,
                    "reason": brief.meta.reason,
                    "owner": brief.meta.owner,
                    "reviewer": brief.meta.reviewer,
                    "risk": brief.meta.risk.as_str(),
                    "target": a.target,
                    "window": { "start": a.window_start, "end": a.window_end },
                    "stakeholders": brief.dependencies.stakeholders,
                    "note": a.note,
            }),
        ),
        Format::Slack => (
            "application/json",
            slack::Message::new(&format!(
                "Backfill {} of {} is announced for {window}",
                a.name, a.target
            ))
            .text(&slack::mrkdwn(&a.note))
            .finish(&format!(
                "`backfill announce` printed all of it (brief {})",
                a.brief_hash
            )),
        ),
    }
}
