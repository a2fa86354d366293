//! `backfill report RUN [--format md|html]`: the change note a stakeholder reads.
//! What changed and why, who ran and approved it, the period and tables affected,
//! who and what downstream is concerned, the validation results, metric deltas per
//! group (in HTML also as a before/after bar chart in inline SVG, readable without
//! a server), what was refreshed, the run log, and what temporary objects remain
//! until when.

use crate::Result;
use crate::preflight::{self, Dependent};
use crate::validate::{self, GroupDelta};
use backfill_shared::checks::Unmatched;
use backfill_shared::control::batches::{self, Counts};
use backfill_shared::control::runs::{self, Run};
use backfill_shared::control::{log, validations};
use serde::Serialize;
use sqlx::PgPool;
use std::fmt::Write as _;
use uuid::Uuid;

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
    pub batch_by: String,
    pub strategy: String,
    pub stakeholders: Vec<String>,
    pub downstream_declared: Vec<String>,
    pub downstream_found: Vec<Dependent>,
    pub validation: Vec<ValidationRow>,
    pub metrics: Vec<GroupDelta>,
    pub refreshed: Vec<String>,
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
    let accepted_breaches = log::acceptances(pool, run_id).await?;
    let retries = batches::retries(pool, run_id).await?;
    let params = run.params.clone();
    let applied = validate::applied_batches(pool, &run).await?;
    let mut temporary_objects = Vec::new();
    if run.cleaned_at.is_none() {
        for name in [&run.image_table, &run.old_table, &run.side_table]
            .into_iter()
            .flatten()
        {
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(name)
                .fetch_one(pool)
                .await?;
            if exists && *name != brief.scope.target.to_string() {
                temporary_objects.push(name.clone());
            }
        }
    }
    let finished = run.cut_over_at.or(run.rolled_back_at).or(run.finished_at);
    Ok(Report {
        run_id,
        name: brief.meta.name.clone(),
        reason: brief.meta.reason.clone(),
        owner: brief.meta.owner.clone(),
        reviewer: brief.meta.reviewer.clone(),
        risk: brief.meta.risk.to_string(),
        state: run.state.to_string(),
        target: brief.scope.target.to_string(),
        period: (
            brief.scope.batch_by.start.to_string(),
            brief.scope.batch_by.end.to_string(),
        ),
        batch_by: brief.scope.batch_by.column.clone(),
        strategy: brief.write.strategy.to_string(),
        stakeholders: brief.dependencies.stakeholders.clone(),
        downstream_declared: brief.dependencies.downstream.clone(),
        downstream_found: preflight::blast_radius(pool, brief).await?,
        validation,
        metrics: validate::summed_metrics(&run, &applied),
        refreshed,
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
            .then(|| {
                finished.map(|f| f + chrono::Duration::days(i64::from(brief.rollback.retain_days)))
            })
            .flatten(),
        temporary_objects,
    })
}

/// A group as people read it: a midnight timestamp (`date_trunc` of a date)
/// is shown as its date.
pub(crate) fn group_label(group: &str) -> &str {
    [" 00:00:00+00", " 00:00:00"]
        .iter()
        .find_map(|midnight| group.strip_suffix(midnight))
        .unwrap_or(group)
}

/// A figure with thousands separators and two decimals.
pub(crate) fn fmt_num(v: f64) -> String {
    let s = format!("{:.2}", v.abs());
    let (int, frac) = s.split_once('.').unwrap_or((&s, "00"));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{}{grouped}.{frac}", if v < 0.0 { "-" } else { "" })
}

fn fmt_pct(d: &GroupDelta) -> String {
    d.delta_pct()
        .map_or_else(|| "new".into(), |p| format!("{p:+.2}%"))
}

impl Report {
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Backfill report: {} on {}\n", self.name, self.target);
        let _ = writeln!(s, "**Why:** {}\n", self.reason);
        let _ = writeln!(s, "| Item | Detail |\n| --- | --- |");
        let _ = writeln!(s, "| Run | `{}` ({}) |", self.run_id, self.state);
        let _ = writeln!(
            s,
            "| Owner / reviewer | {} / {} |",
            self.owner, self.reviewer
        );
        let _ = writeln!(s, "| Risk | {} |", self.risk);
        let _ = writeln!(
            s,
            "| Period | {} from {} to {} (exclusive) |",
            self.batch_by, self.period.0, self.period.1
        );
        let _ = writeln!(s, "| Tables | {} ({}) |", self.target, self.strategy);
        let _ = writeln!(s, "| Stakeholders | {} |", self.stakeholders.join(", "));
        let found = self
            .downstream_found
            .iter()
            .map(|d| format!("{} ({})", d.name, d.kind))
            .collect::<Vec<_>>();
        let _ = writeln!(
            s,
            "| Downstream | declared: {}; in the catalog: {} |\n",
            self.downstream_declared.join(", "),
            if found.is_empty() {
                "none".into()
            } else {
                found.join(", ")
            }
        );

        let _ = writeln!(s, "## Validation\n");
        if self.validation.is_empty() {
            let _ = writeln!(
                s,
                "Not validated yet (`backfill validate {}`).\n",
                self.run_id
            );
        } else {
            let _ = writeln!(s, "| check | result | summary |\n| --- | --- | --- |");
            for v in &self.validation {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} |",
                    v.check_name,
                    if v.passed { "pass" } else { "**FAIL**" },
                    v.summary
                );
            }
            let _ = writeln!(s);
        }
        for (actor, reason, limits) in &self.accepted_breaches {
            let _ = writeln!(s, "- Accepted by {actor}: {limits} — {reason}");
        }

        let _ = writeln!(s, "## What changed\n");
        let _ = writeln!(
            s,
            "| metric | group | before | after | change |\n| --- | --- | ---: | ---: | ---: |"
        );
        for d in &self.metrics {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                d.metric,
                group_label(&d.group),
                fmt_num(d.before),
                fmt_num(d.after),
                fmt_pct(d)
            );
        }
        let c = &self.batches;
        let _ = writeln!(
            s,
            "\nRows: {} from the source, {} inserted, {} updated, {} deleted, in {} batches ({} retries); \
             {} of the {} rows in scope had no counterpart in the source and were {}.\n",
            c.rows.source,
            c.rows.inserted,
            c.rows.updated,
            c.rows.deleted,
            c.applied,
            self.retries,
            self.unmatched.rows,
            self.unmatched.range_rows,
            self.unmatched_fate
        );
        let _ = writeln!(s, "## Refreshed\n");
        if self.refreshed.is_empty() {
            let _ = writeln!(s, "Nothing yet (refreshes run at cutover).\n");
        }
        for r in &self.refreshed {
            let _ = writeln!(s, "- {r}");
        }
        let _ = writeln!(s, "\n## Run log\n");
        let _ = writeln!(s, "- Code version: {}", self.code_version);
        let _ = writeln!(s, "- Brief hash: `{}`", self.brief_hash);
        let _ = writeln!(s, "- Parameters: `{}`", self.params);
        let _ = writeln!(
            s,
            "- Run by {} from {} to {}",
            self.operator,
            self.started.format("%Y-%m-%d %H:%M UTC"),
            self.finished.map_or_else(
                || "(not finished)".into(),
                |f| f.format("%Y-%m-%d %H:%M UTC").to_string()
            )
        );
        let _ = writeln!(
            s,
            "- Approved: {}",
            self.approved.as_ref().map_or_else(
                || "not yet".into(),
                |(who, at)| format!("by {who} at {}", at.format("%Y-%m-%d %H:%M UTC"))
            )
        );
        let _ = writeln!(s, "\n## Temporary objects\n");
        if self.temporary_objects.is_empty() {
            let _ = writeln!(s, "None remain.");
        } else {
            let _ = writeln!(
                s,
                "{} — kept for rollback until {} (then `backfill cleanup {}`).",
                self.temporary_objects.join(", "),
                self.retained_until.map_or_else(
                    || "the run finishes".into(),
                    |u| u.format("%Y-%m-%d").to_string()
                ),
                self.run_id
            );
        }
        s
    }

    #[must_use]
    pub fn html(&self) -> String {
        let body = markdown_to_html(&self.markdown());
        let charts: String = self
            .metric_names()
            .iter()
            .map(|m| {
                chart(
                    m,
                    &self
                        .metrics
                        .iter()
                        .filter(|d| &d.metric == m)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let marker = "<h2>What changed</h2>";
        let body = body.replacen(marker, &format!("{marker}\n{charts}"), 1);
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Backfill report: {}</title>\n<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n",
            escape(&self.name)
        )
    }

    fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for d in &self.metrics {
            if !names.contains(&d.metric) {
                names.push(d.metric.clone());
            }
        }
        names
    }
}

const CSS: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1b1f24}\
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d0d7de;padding:.3rem .6rem}\
th{background:#f6f8fa}code{background:#f6f8fa;padding:0 .2rem}.fail{color:#b42318;font-weight:bold}\
svg{display:block;margin:1rem 0}";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A grouped bar chart (before, after) of one metric, as inline SVG.
fn chart(metric: &str, groups: &[&GroupDelta]) -> String {
    let max = groups
        .iter()
        .flat_map(|g| [g.before.abs(), g.after.abs()])
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let (bar, gap, height, top, left) = (18.0, 14.0, 220.0, 30.0, 70.0);
    let width = left + groups.len() as f64 * (2.0 * bar + gap) + 20.0;
    let mut s = format!(
        "<svg role=\"img\" aria-label=\"{m}: before and after by group\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {width:.0} {h:.0}\">\
         <text x=\"{left}\" y=\"18\" font-size=\"14\" font-weight=\"bold\">{m}</text>\
         <rect x=\"{lx:.0}\" y=\"8\" width=\"10\" height=\"10\" fill=\"#8c959f\"/><text x=\"{lx2:.0}\" y=\"17\" font-size=\"11\">before</text>\
         <rect x=\"{lx3:.0}\" y=\"8\" width=\"10\" height=\"10\" fill=\"#0969da\"/><text x=\"{lx4:.0}\" y=\"17\" font-size=\"11\">after</text>\
         <line x1=\"{left}\" y1=\"{base}\" x2=\"{width:.0}\" y2=\"{base}\" stroke=\"#57606a\"/>",
        m = escape(metric),
        h = height + top + 60.0,
        base = top + height,
        lx = width - 140.0,
        lx2 = width - 126.0,
        lx3 = width - 80.0,
        lx4 = width - 66.0,
    );
    for (i, g) in groups.iter().enumerate() {
        let x = left + i as f64 * (2.0 * bar + gap);
        for (j, (v, color)) in [(g.before, "#8c959f"), (g.after, "#0969da")]
            .into_iter()
            .enumerate()
        {
            let h = v.abs() / max * height;
            let _ = write!(
                s,
                "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{bar}\" height=\"{h:.1}\" fill=\"{color}\"><title>{}: {}</title></rect>",
                x + j as f64 * bar,
                top + height - h,
                escape(group_label(&g.group)),
                fmt_num(v)
            );
        }
        let label: String = group_label(&g.group).chars().take(10).collect();
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" transform=\"rotate(45 {:.1} {:.1})\">{}</text>",
            x,
            top + height + 12.0,
            x,
            top + height + 12.0,
            escape(&label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Just enough Markdown for the report: headings, tables, lists, paragraphs.
fn markdown_to_html(md: &str) -> String {
    let inline = |t: &str| {
        let mut out = String::new();
        let mut code = false;
        let mut bold = false;
        let esc = escape(t);
        let mut rest = esc.as_str();
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("**") {
                out.push_str(if bold { "</strong>" } else { "<strong>" });
                bold = !bold;
                rest = r;
            } else if let Some(r) = rest.strip_prefix('`') {
                out.push_str(if code { "</code>" } else { "<code>" });
                code = !code;
                rest = r;
            } else {
                let c = rest.chars().next().unwrap_or(' ');
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        out.replace("<strong>FAIL</strong>", "<span class=\"fail\">FAIL</span>")
    };
    let mut html = String::new();
    let mut in_table = false;
    let mut in_list = false;
    for line in md.lines() {
        let trimmed = line.trim();
        if in_table && !trimmed.starts_with('|') {
            html.push_str("</table>\n");
            in_table = false;
        }
        if in_list && !trimmed.starts_with("- ") {
            html.push_str("</ul>\n");
            in_list = false;
        }
        if let Some(h) = trimmed.strip_prefix("## ") {
            let _ = writeln!(html, "<h2>{}</h2>", inline(h));
        } else if let Some(h) = trimmed.strip_prefix("# ") {
            let _ = writeln!(html, "<h1>{}</h1>", inline(h));
        } else if trimmed.starts_with('|') {
            let cells: Vec<&str> = trimmed
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            if cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ':') && !c.is_empty())
            {
                continue;
            }
            let tag = if in_table { "td" } else { "th" };
            if !in_table {
                html.push_str("<table>\n");
                in_table = true;
            }
            html.push_str("<tr>");
            for c in cells {
                let _ = write!(html, "<{tag}>{}</{tag}>", inline(c));
            }
            html.push_str("</tr>\n");
        } else if let Some(item) = trimmed.strip_prefix("- ") {
            if !in_list {
                html.push_str("<ul>\n");
                in_list = true;
            }
            let _ = writeln!(html, "<li>{}</li>", inline(item));
        } else if !trimmed.is_empty() {
            let _ = writeln!(html, "<p>{}</p>", inline(trimmed));
        }
    }
    if in_table {
        html.push_str("</table>\n");
    }
    if in_list {
        html.push_str("</ul>\n");
    }
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(fmt_num(1234567.891), "1,234,567.89");
        assert_eq!(fmt_num(-12.5), "-12.50");
        assert_eq!(fmt_num(999.0), "999.00");
    }

    #[test]
    fn midnight_groups_read_as_dates() {
        assert_eq!(group_label("1996-01-01 00:00:00+00"), "1996-01-01");
        assert_eq!(group_label("1996-01-01 00:00:00"), "1996-01-01");
        assert_eq!(
            group_label("1996-01-01 12:00:00+00"),
            "1996-01-01 12:00:00+00"
        );
        assert_eq!(group_label("AIR"), "AIR");
    }

    #[test]
    fn markdown_tables_become_html_tables() {
        let html =
            markdown_to_html("# T\n\n| a | b |\n| --- | --- |\n| 1 | **FAIL** |\n\n- x `y`\n");
        assert!(html.contains("<h1>T</h1>"));
        assert!(html.contains("<th>a</th><th>b</th>"));
        assert!(html.contains("<td>1</td><td><span class=\"fail\">FAIL</span></td>"));
        assert!(html.contains("<li>x <code>y</code></li>"));
    }

    #[test]
    fn chart_has_a_bar_per_value() {
        let g = GroupDelta {
            metric: "m".into(),
            group: "1992".into(),
            before: 10.0,
            after: 5.0,
        };
        let svg = chart("m<x>", &[&g, &g]);
        assert_eq!(svg.matches("class=\"bar\"").count(), 4);
        assert!(svg.contains("m&lt;x&gt;"));
    }
}
