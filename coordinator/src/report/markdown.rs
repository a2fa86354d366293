//! The report as Markdown: the change note itself, also the body of the HTML.

use super::Report;
use crate::validate::GroupDelta;
use std::fmt::Write as _;

/// How many groups of a downstream metric the report lists.
const SHOWN_GROUPS: usize = 24;

/// A group as people read it: a midnight timestamp (`date_trunc` of a date)
/// is shown as its date.
pub(crate) fn group_label(group: &str) -> &str {
    [" 00:00:00+00", " 00:00:00"]
        .iter()
        .find_map(|midnight| group.strip_suffix(midnight))
        .unwrap_or(group)
}

/// A group of a metric grouped by `date_trunc(unit, …)`, in the form the unit
/// suggests: "1992" for a year, "1992 Q3" for a quarter, "1992-07" for a month,
/// the date for a week or a day, the hour for an hour; otherwise as
/// [`group_label`] has it.
pub(crate) fn group_label_in(group: &str, unit: Option<&str>) -> String {
    let date = |len: usize| {
        group
            .get(..len)
            .filter(|_| group.as_bytes().get(4) == Some(&b'-'))
    };
    let labelled = match unit {
        Some("year" | "years") => date(4).map(str::to_owned),
        Some("quarter") => date(7).and_then(|ym| {
            let month: u32 = ym.get(5..7)?.parse().ok()?;
            Some(format!("{} Q{}", ym.get(..4)?, month.div_ceil(3)))
        }),
        Some("month") => date(7).map(str::to_owned),
        Some("week" | "day") => date(10).map(str::to_owned),
        Some("hour") => date(13).map(|h| format!("{h}:00")),
        _ => None,
    };
    labelled.unwrap_or_else(|| group_label(group).to_owned())
}

/// Text that stays inside one Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
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

/// The canary in one table cell: its batches, what they wrote and how fast,
/// its metric deltas, and who let the rest go on.
fn canary_row(c: &crate::canary::Figures, label: impl Fn(&str, &str) -> String) -> String {
    let batches = c
        .batches
        .iter()
        .map(|b| format!("{} [{}, {})", b.batch_no, b.lo, b.hi))
        .collect::<Vec<_>>()
        .join(", ");
    let pace = c
        .seconds_per_batch
        .map_or_else(String::new, |p| format!(", {p:.2} s per batch"));
    let deltas = c
        .metrics
        .iter()
        .map(|m| {
            format!(
                "{} {}: {}",
                m.metric,
                label(&m.metric, &m.group),
                fmt_pct(m)
            )
        })
        .collect::<Vec<_>>();
    let deltas = if deltas.is_empty() {
        String::new()
    } else {
        format!("; metrics {}", deltas.join(", "))
    };
    let promoted = match &c.promoted {
        Some((by, at)) => format!("promoted by {by} at {}", backfill_shared::text::minute(*at)),
        None if c.waiting_since.is_some() => "waiting for the reviewer to promote".into(),
        None => "not yet applied".into(),
    };
    format!(
        "batches {batches} went first: {} rows written{pace}{deltas}; {promoted}",
        c.rows_written
    )
}

fn fmt_pct(d: &GroupDelta) -> String {
    d.delta_pct()
        .map_or_else(|| "new".into(), |p| format!("{p:+.2}%"))
}

impl Report {
    /// A group of `metric` as people read it (see [`group_label_in`]).
    pub(super) fn label(&self, metric: &str, group: &str) -> String {
        group_label_in(group, self.group_units.get(metric).map(String::as_str))
    }

    /// The run's parameters as `key: value` pairs, values as compact JSON
    /// (strings bare), so a reader's page wraps them.
    fn params_text(&self) -> String {
        match &self.params {
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(text) => format!("{k}: {text}"),
                    other => format!("{k}: {other}"),
                })
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        }
    }

    #[must_use]
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Backfill report: {} on {}\n", self.name, self.target);
        let _ = writeln!(s, "**Why:** {}\n", self.reason);
        self.downstream_section(&mut s);
        let _ = writeln!(s, "| Item | Detail |\n| --- | --- |");
        let _ = writeln!(s, "| Run | `{}` ({}) |", self.run_id, self.state);
        let _ = writeln!(
            s,
            "| Owner / reviewer | {} / {} |",
            cell(&self.owner),
            cell(&self.reviewer)
        );
        let _ = writeln!(s, "| Risk | {} |", self.risk);
        let _ = writeln!(
            s,
            "| {} | {} from {} to {} (exclusive){} |",
            self.period_label,
            self.batch_by,
            self.period.0,
            self.period.1,
            self.bounds_zone
                .map_or_else(String::new, |z| format!(", {z}"))
        );
        if self.rules.len() > 1 {
            let rules = self
                .rules
                .iter()
                .map(|(from, until, rule)| format!("[{from}, {until}): {rule}"))
                .collect::<Vec<_>>();
            let _ = writeln!(s, "| Rules by period | {} |", cell(&rules.join("; ")));
        }
        if let Some(c) = &self.canary {
            let _ = writeln!(
                s,
                "| Canary | {} |",
                cell(&canary_row(c, |m, g| self.label(m, g)))
            );
        }
        let _ = writeln!(s, "| Tables | {} ({}) |", self.target, self.strategy);
        if let Some(d) = &self.diff {
            let columns = d
                .columns
                .iter()
                .filter(|(_, c)| c.changed > 0)
                .map(|(name, c)| format!("{name} in {}", c.changed))
                .collect::<Vec<_>>();
            let _ = writeln!(
                s,
                "| Rows | {} changed{}, {} removed, {} added, {} unchanged |",
                d.rows_changed,
                if columns.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", columns.join(", "))
                },
                d.rows_only_before,
                d.rows_only_after,
                d.rows_unchanged
            );
        }
        let _ = writeln!(
            s,
            "| Stakeholders | {} |",
            cell(&self.stakeholders.join(", "))
        );
        if let Some(announced) = &self.announced {
            let _ = writeln!(s, "| Announced | {} |", cell(announced));
        }
        if !self.told.is_empty() {
            let _ = writeln!(s, "| Told | {} |", cell(&self.told.join("; ")));
        }
        if let Some(lesson) = &self.lesson {
            let _ = writeln!(s, "| Lesson | {} |", cell(lesson));
        }
        let found = self
            .downstream_found
            .iter()
            .map(|d| format!("{} ({})", d.name, d.kind))
            .collect::<Vec<_>>();
        let _ = writeln!(
            s,
            "| Downstream | declared: {}; in the catalog{}: {} |",
            cell(&self.downstream_declared.join(", ")),
            if self.dbt.is_some() || self.dbt_error.is_some() {
                " and the dbt manifest"
            } else {
                ""
            },
            if found.is_empty() {
                "none".into()
            } else {
                cell(&found.join(", "))
            }
        );
        if let Some(radius) = &self.dbt {
            let _ = writeln!(s, "| dbt | {} |", cell(&radius.summary(&self.target)));
        }
        if let Some(why) = &self.dbt_error {
            let _ = writeln!(s, "| dbt | {} |", cell(why));
        }
        let _ = writeln!(s);

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
                    cell(&v.check_name),
                    if v.passed { "pass" } else { "**FAIL**" },
                    cell(&v.summary)
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
                cell(&d.metric),
                cell(&self.label(&d.metric, &d.group)),
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
        if let Some(reached) = &self.reached {
            let _ = writeln!(s);
            for r in reached {
                let _ = writeln!(
                    s,
                    "- {} {} ({}): {}",
                    if r.confirmed {
                        "Rebuilt:"
                    } else {
                        "**Not confirmed rebuilt:**"
                    },
                    cell(&r.relation),
                    r.kind,
                    cell(&r.how)
                );
            }
        }
        if !self.dbt_durations.is_empty() {
            let _ = writeln!(
                s,
                "\n| dbt node | the run before | this refresh |\n| --- | ---: | ---: |"
            );
            for (node, before, now) in &self.dbt_durations {
                let _ = writeln!(
                    s,
                    "| {} | {} | {now:.2} s{} |",
                    cell(node),
                    before.map_or_else(|| "—".to_owned(), |b| format!("{b:.2} s")),
                    before
                        .filter(|b| *b > 0.0)
                        .map_or_else(String::new, |b| format!(
                            " ({:+.0} %)",
                            (now - b) / b * 100.0
                        ))
                );
            }
        }
        let _ = writeln!(s, "\n## Run log\n");
        let _ = writeln!(s, "- Code version: {}", self.code_version);
        let _ = writeln!(s, "- Brief hash: `{}`", self.brief_hash);
        let _ = writeln!(s, "- Parameters: {}", self.params_text());
        let _ = writeln!(
            s,
            "- Run by {} from {} to {}",
            self.operator,
            backfill_shared::text::minute(self.started),
            self.finished
                .map_or_else(|| "(not finished)".into(), backfill_shared::text::minute)
        );
        let _ = writeln!(
            s,
            "- Approved: {}",
            self.approved.as_ref().map_or_else(
                || "not yet".into(),
                |(who, at)| format!("by {who} at {}", backfill_shared::text::minute(*at))
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
        // Free text as given, shown safely: nothing in it acts on a terminal.
        backfill_shared::text::shown(&s).into_owned()
    }

    /// The numbers people quote, first: each downstream metric's expected
    /// and measured change, then its groups (the most changed, when many).
    fn downstream_section(&self, s: &mut String) {
        if self.downstream.is_empty() {
            return;
        }
        let _ = writeln!(s, "## What stakeholders see\n");
        let _ = writeln!(
            s,
            "| metric | where | expected | measured | result |\n| --- | --- | --- | --- | --- |"
        );
        for j in &self.downstream {
            let (measured, result) = if j.awaiting_cutover {
                ("after cutover".to_owned(), "awaiting cutover".to_owned())
            } else {
                (
                    j.measured().map_or_else(
                        || "nothing".to_owned(),
                        |(lo, hi)| {
                            if (lo - hi).abs() < 0.05 {
                                format!("{lo:+.1} %")
                            } else {
                                format!("{lo:+.1} % to {hi:+.1} %")
                            }
                        },
                    ),
                    if j.passed() {
                        "as expected".to_owned()
                    } else {
                        format!("**NOT AS EXPECTED**: {}", j.problems.join("; "))
                    },
                )
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {measured} | {} |",
                cell(&j.name),
                cell(&j.relation),
                crate::downstream::expected(j.expect),
                cell(&result)
            );
        }
        let _ = writeln!(s);
        for j in self.downstream.iter().filter(|j| !j.groups.is_empty()) {
            let mut shown: Vec<&crate::downstream::Change> = j.groups.iter().collect();
            let all = shown.len();
            if all > SHOWN_GROUPS {
                shown.sort_by(|a, b| {
                    let size =
                        |c: &crate::downstream::Change| c.pct.map_or(f64::INFINITY, f64::abs);
                    size(b).total_cmp(&size(a))
                });
                shown.truncate(SHOWN_GROUPS);
                shown.sort_by(|a, b| a.group.cmp(&b.group));
            }
            let _ = writeln!(
                s,
                "{} ({}){}:\n\n| group | before | after | change |\n| --- | ---: | ---: | ---: |",
                cell(&j.name),
                cell(&j.relation),
                if all > shown.len() {
                    format!(", the {} most changed of {all} groups", shown.len())
                } else {
                    String::new()
                }
            );
            for c in shown {
                let figure = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), fmt_num);
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {}{} |",
                    cell(group_label(&c.group)),
                    figure(c.before),
                    figure(c.after),
                    c.pct
                        .map_or_else(|| "—".to_owned(), |p| format!("{p:+.2} %")),
                    if c.ok { "" } else { " **!**" }
                );
            }
            let _ = writeln!(s);
        }
    }

    pub(super) fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for d in &self.metrics {
            if !names.contains(&d.metric) {
                names.push(d.metric.clone());
            }
        }
        names
    }
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
    fn truncated_groups_read_in_their_unit() {
        let g = "1996-07-01 00:00:00+00";
        assert_eq!(group_label_in(g, Some("year")), "1996");
        assert_eq!(group_label_in(g, Some("quarter")), "1996 Q3");
        assert_eq!(group_label_in(g, Some("month")), "1996-07");
        assert_eq!(group_label_in(g, Some("day")), "1996-07-01");
        assert_eq!(
            group_label_in("1996-07-01 13:00:00+00", Some("hour")),
            "1996-07-01 13:00"
        );
        assert_eq!(group_label_in(g, None), "1996-07-01");
        assert_eq!(group_label_in("AIR", Some("year")), "AIR");
    }

    #[test]
    fn a_cell_stays_one_cell() {
        assert_eq!(cell("a | b\nc"), "a \\| b c");
    }
}
