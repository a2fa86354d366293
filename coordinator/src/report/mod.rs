//! `backfill report RUN [--format md|html]`: the change note a stakeholder reads.
//! What changed and why, who ran and approved it, the period and tables affected,
//! who and what downstream is concerned, the validation results, metric deltas per
//! group (in HTML also as a before/after bar chart in inline SVG, readable without
//! a server), what was refreshed, the run log, and what temporary objects remain
//! until when.

use crate::Result;
use crate::preflight::{self, Dependent};
use crate::validate::{self, GroupDelta};
use backfill_shared::brief::Brief;
use backfill_shared::checks::Unmatched;
use backfill_shared::control::batches::{self, Counts};
use backfill_shared::control::runs::{self, Run};
use backfill_shared::control::{log, validations};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::BTreeMap;
use uuid::Uuid;

mod html;
pub use html::{STYLE_SHEET, Styles};
mod markdown;

pub(crate) use markdown::{fmt_num, group_label};

/// How a run was announced, from its `announced` or `unannounced` log entry:
/// when, by whom, the window and where it was sent; or why it ran unannounced.
pub fn announcement(e: &log::Entry) -> Option<String> {
    match e.event.as_str() {
        "announced" => {
            let delivered = e.detail["delivered"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "no webhook".to_owned());
            Some(format!(
                "by {} at {} for {} to {}; sent to {delivered}",
                e.detail["by"].as_str().unwrap_or("?"),
                e.detail["at"].as_str().unwrap_or("?"),
                e.detail["window"][0].as_str().unwrap_or("?"),
                e.detail["window"][1].as_str().unwrap_or("?"),
            ))
        }
        "unannounced" => Some(format!(
            "not announced: {}",
            e.detail["reason"].as_str().unwrap_or("no reason recorded")
        )),
        _ => None,
    }
}

/// The run's rollback copies that still exist (before-images, the old table,
/// a side table not yet swapped in), by name.
pub async fn temporary_objects(pool: &PgPool, run: &Run) -> Result<Vec<String>> {
    let mut objects = Vec::new();
    if run.cleaned_at.is_some() {
        return Ok(objects);
    }
    for name in [&run.image_table, &run.old_table, &run.side_table]
        .into_iter()
        .flatten()
    {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(name)
            .fetch_one(pool)
            .await?;
        if exists && *name != run.brief.scope.target.to_string() {
            objects.push(name.clone());
        }
    }
    Ok(objects)
}

/// Each metric's `date_trunc` unit, by metric name, where it has one.
fn group_units(brief: &Brief) -> BTreeMap<String, String> {
    brief
        .validation
        .metrics
        .iter()
        .filter_map(|m| Some((m.name.clone(), truncation_unit(m.by.as_deref()?)?)))
        .collect()
}

/// One before/after chart (SVG) per metric of the brief, summed over the run's
/// applied batches: what the report draws, for the console to show beside a run.
pub async fn metric_charts(pool: &PgPool, run: &Run) -> Result<Vec<(String, String)>> {
    let applied = validate::applied_batches(pool, run).await?;
    let deltas = validate::summed_metrics(run, &applied);
    let units = group_units(&run.brief);
    Ok(run
        .brief
        .validation
        .metrics
        .iter()
        .map(|m| {
            let unit = units.get(&m.name).map(String::as_str);
            let groups: Vec<(String, &GroupDelta)> = deltas
                .iter()
                .filter(|d| d.metric == m.name)
                .map(|d| (markdown::group_label_in(&d.group, unit), d))
                .collect();
            (m.name.clone(), html::chart(&m.name, &groups))
        })
        .collect())
}

/// The unit of a `date_trunc('unit', …)` grouping, in lower case.
fn truncation_unit(by: &str) -> Option<String> {
    let lower = by.to_ascii_lowercase();
    let rest = lower.trim_start().strip_prefix("date_trunc")?.trim_start();
    let rest = rest.strip_prefix('(')?.trim_start().strip_prefix('\'')?;
    Some(rest.get(..rest.find('\'')?)?.trim().to_owned())
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub run_id: Uuid,
    pub name: String,
    pub reason: String,
    pub owner: String,
    pub reviewer: String,
    pub risk: String,
    pub state: String,
    pub target: String,
    pub period: (String, String),
    /// "Period" when `batch_by` is a date or a time, else "Keys".
    pub period_label: &'static str,
    /// What the bounds of a time column are: `UTC`, `no time zone`.
    pub bounds_zone: Option<&'static str>,
    /// Each metric's `date_trunc` unit, when its groups are truncated times:
    /// groups read as "1992", "1992 Q3", "1992-07", not as timestamps.
    pub group_units: BTreeMap<String, String>,
    /// Which rule rewrote which range of `batch_by` (`[[scope.periods]]`, then
    /// the current rules): `(from, until, rule)`; one row without periods.
    pub rules: Vec<(String, String, String)>,
    pub batch_by: String,
    pub strategy: String,
    /// The brief's stakeholders and the owners of dbt exposures downstream.
    pub stakeholders: Vec<String>,
    pub downstream_declared: Vec<String>,
    /// What the catalog and the dbt manifest find downstream now.
    pub downstream_found: Vec<Dependent>,
    /// What the brief's dbt manifest says, as read now.
    pub dbt: Option<crate::dbt::Radius>,
    /// Why the brief's dbt manifest could not be read now.
    pub dbt_error: Option<String>,
    pub validation: Vec<ValidationRow>,
    /// The metrics stakeholders quote (`[[validation.downstream]]`), measured
    /// now against their figures before the run.
    pub downstream: Vec<crate::downstream::Judged>,
    pub metrics: Vec<GroupDelta>,
    pub refreshed: Vec<String>,
    /// What downstream stores data, as cutover confirmed it rebuilt.
    pub reached: Option<Vec<crate::reached::Reached>>,
    /// Each dbt node the cutover's refresh ran: its seconds in the run
    /// before (where that run had it) and in this one.
    pub dbt_durations: Vec<(String, Option<f64>, f64)>,
    pub code_version: String,
    pub brief_hash: String,
    pub params: serde_json::Value,
    pub operator: String,
    pub started: chrono::DateTime<chrono::Utc>,
    pub finished: Option<chrono::DateTime<chrono::Utc>>,
    pub batches: Counts,
    /// Target rows the source did not reproduce, summed over the applied batches.
    pub unmatched: Unmatched,
    /// What happened to them: "removed", or "left stale".
    pub unmatched_fate: &'static str,
    pub retries: i64,
    pub approved: Option<(String, chrono::DateTime<chrono::Utc>)>,
    pub accepted_breaches: Vec<(String, String, String)>,
    pub temporary_objects: Vec<String>,
    pub retained_until: Option<chrono::DateTime<chrono::Utc>>,
    /// `limits.canary`: the batches that went first and what they showed.
    pub canary: Option<crate::canary::Figures>,
    /// What the run changed, row by row (`backfill diff`); `None` when nothing
    /// is left to compare with (no before-images, copies cleaned up).
    pub diff: Option<crate::diff::Diff>,
    /// How the stakeholders were told (`backfill done --told`, or the change
    /// note sent by `backfill report --send`), each with who and when.
    pub told: Vec<String>,
    /// The lesson `backfill done --lesson` captured (the latest).
    pub lesson: Option<String>,
    /// The announcement the run went ahead on (`backfill announce`): when,
    /// by whom, the window and where it was sent; or why it ran unannounced.
    pub announced: Option<String>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct ValidationRow {
    pub check_name: String,
    pub passed: bool,
    pub summary: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

pub async fn gather(pool: &PgPool, run_id: Uuid) -> Result<Report> {
    let run: Run = runs::load(pool, run_id).await?;
    let brief = &run.brief;
    let validation: Vec<ValidationRow> = validations::latest_results(pool, run_id)
        .await?
        .into_iter()
        .map(|(check_name, passed, summary, at)| ValidationRow {
            check_name,
            passed,
            summary,
            at,
        })
        .collect();
    let refreshed = log::refreshed(pool, run_id).await?;
    let (downstream_found, dbt) = preflight::blast_radius(pool, brief).await?;
    let (dbt, dbt_error) = match dbt {
        Some(Ok(radius)) => (Some(radius), None),
        Some(Err(why)) => (None, Some(why)),
        None => (None, None),
    };
    let accepted_breaches = log::acceptances(pool, run_id).await?;
    let retries = batches::retries(pool, run_id).await?;
    let params = run.params.clone();
    let applied = validate::applied_batches(pool, &run).await?;
    let temporary_objects = temporary_objects(pool, &run).await?;
    let finished = run.ended_at();
    let diff = crate::diff::run(
        pool,
        run_id,
        &crate::diff::Options {
            columns: Vec::new(),
            filter: None,
            sample: 0,
            connections: 1,
            progress: false,
        },
    )
    .await
    .ok();
    let entries = log::entries(pool, run_id).await?;
    let told = entries
        .iter()
        .filter_map(crate::lifecycle::done::told)
        .collect();
    let lesson = entries
        .iter()
        .rev()
        .find(|e| e.event == "lesson_recorded")
        .and_then(|e| e.detail["lesson"].as_str().map(str::to_owned));
    let announced = entries.iter().find_map(announcement);
    Ok(Report {
        announced,
        told,
        lesson,
        diff,
        canary: crate::canary::figures(pool, &run).await?,
        run_id,
        name: brief.meta.name.clone(),
        reason: brief.meta.reason.clone(),
        owner: brief.meta.owner.clone(),
        reviewer: brief.meta.reviewer.clone(),
        risk: brief.meta.risk.to_string(),
        state: run.state.to_string(),
        target: brief.scope.target.to_string(),
        rules: brief
            .scope
            .rule_ranges()
            .into_iter()
            .map(|(from, until, rule)| (from.to_string(), until.to_string(), rule.to_owned()))
            .collect(),
        period: (
            brief.scope.batch_by.start.to_string(),
            brief.scope.batch_by.end.to_string(),
        ),
        bounds_zone: crate::catalog::bounds_zone(
            pool,
            &brief.scope.target,
            &brief.scope.batch_by.column,
        )
        .await?,
        period_label: match brief.scope.batch_by.kind() {
            backfill_shared::brief::BoundKind::Integer => "Keys",
            _ => "Period",
        },
        group_units: group_units(brief),
        batch_by: brief.scope.batch_by.column.clone(),
        strategy: brief.write.strategy.to_string(),
        stakeholders: crate::dbt::stakeholders(&brief.dependencies.stakeholders, dbt.as_ref()),
        downstream_declared: brief.dependencies.downstream.clone(),
        downstream_found,
        dbt,
        dbt_error,
        validation,
        downstream: crate::downstream::judge_run(pool, &run, crate::downstream::Moment::Now)
            .await?,
        metrics: validate::summed_metrics(&run, &applied),
        refreshed,
        reached: crate::reached::recorded(pool, run_id).await?,
        dbt_durations: crate::reached::durations(
            &crate::reached::dbt_runs(pool, run_id, "cutover_step").await?,
        ),
        code_version: run.code_version.clone(),
        brief_hash: run.brief_hash.clone(),
        params,
        operator: run.operator.clone(),
        started: run.created_at,
        finished,
        batches: batches::counts(pool, run_id).await?,
        unmatched: validate::summed_unmatched(&applied),
        unmatched_fate: Unmatched::fate(brief),
        retries,
        approved: run.approved_by.clone().zip(run.approved_at),
        accepted_breaches,
        retained_until: (!temporary_objects.is_empty())
            .then(|| run.retained_until())
            .flatten(),
        temporary_objects,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_unit_of_a_truncation() {
        let unit = super::truncation_unit;
        assert_eq!(
            unit("date_trunc('year', o_orderdate)").as_deref(),
            Some("year")
        );
        assert_eq!(unit(" DATE_TRUNC ( 'Month' , d)").as_deref(), Some("month"));
        assert_eq!(unit("extract(year from d)"), None);
        assert_eq!(unit("date_trunc(x)"), None);
    }
}
