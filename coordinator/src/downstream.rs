//! `[[validation.downstream]]`: the metrics stakeholders quote, measured where
//! they read them (a view, a materialized view, a table built from the
//! target, a dbt model by name). Measured before the run (kept with the run),
//! after cutover and its refresh steps, after rollback, and again by
//! `validate` and `done`; each time judged against what the brief expects.

use crate::dbt::Radius;
use crate::report::fmt_num;
use crate::{CliError, Result};
use backfill_shared::brief::{Brief, Downstream, Expect, Problem};
use backfill_shared::control::runs::{Run, RunState};
use backfill_shared::control::{batches, log};
use backfill_shared::sql::TableName;
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, Executor as _, PgPool, SqlSafeStr as _};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// The run log's event for a measurement after cutover or rollback.
pub const LOGGED: &str = "downstream_measured";

/// One downstream metric measured once: per group, its figure; or why it
/// could not be measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub name: String,
    /// The relation measured (a dbt model's, where the brief names a model).
    pub relation: String,
    #[serde(default)]
    pub groups: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The relation a downstream entry reads: the one it names
/// (`schema.relation`), or the relation of the dbt model it names.
///
/// # Errors
/// Why it names none, in words for the brief's author.
pub fn relation_of(
    entry: &Downstream,
    dbt: Option<&std::result::Result<Radius, String>>,
) -> std::result::Result<TableName, String> {
    let name = entry.relation.trim();
    if backfill_shared::sql::parse_identifier(name).is_some() {
        return match dbt {
            Some(Ok(radius)) => radius
                .relations
                .get(name)
                .and_then(|r| TableName::parse(r))
                .ok_or_else(|| {
                    format!(
                        "{name:?} is no model downstream of the target in {}; name a model it lists, or the relation as schema.relation",
                        radius.manifest
                    )
                }),
            Some(Err(why)) => Err(format!("{name:?} is a dbt model's name, but {why}")),
            None => Err(format!(
                "{name:?} names no schema; write schema.relation, or set dependencies.dbt_manifest for a dbt model's name"
            )),
        };
    }
    TableName::parse(name).ok_or_else(|| {
        format!("{name:?} is not a relation's name; write schema.relation or a dbt model's name")
    })
}

/// Measures every downstream entry of `brief` now, each on its own: one that
/// cannot be measured says why.
pub async fn measure(pool: &PgPool, brief: &Brief) -> Result<Vec<Measured>> {
    let entries = &brief.validation.downstream;
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let dbt = crate::preflight::dbt_radius(pool, brief).await?;
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let relation = relation_of(entry, dbt.as_ref());
        let mut measured = Measured {
            name: entry.name.clone(),
            relation: relation
                .as_ref()
                .map_or_else(|_| entry.relation.clone(), ToString::to_string),
            ..Measured::default()
        };
        match relation {
            Err(why) => measured.error = Some(why),
            Ok(relation) => {
                let rows: std::result::Result<Vec<(Option<String>, Option<f64>)>, _> =
                    sqlx::query_as(AssertSqlSafe(entry.query(&relation.quoted())))
                        .fetch_all(pool)
                        .await;
                match rows {
                    Ok(rows) => {
                        measured.groups = rows
                            .into_iter()
                            .map(|(g, v)| {
                                (
                                    backfill_shared::brief::Metric::group_name(g),
                                    v.unwrap_or(0.0),
                                )
                            })
                            .collect();
                    }
                    Err(sqlx::Error::Database(e)) => {
                        measured.error = Some(e.message().to_owned());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        out.push(measured);
    }
    Ok(out)
}

/// Measures the brief's downstream metrics before its run, refusing (naming
/// each) when one cannot be: without its figure before, its change cannot be
/// known.
pub async fn before_run(pool: &PgPool, brief: &Brief) -> Result<Vec<Measured>> {
    let measured = measure(pool, brief).await?;
    let failed: Vec<String> = measured
        .iter()
        .filter_map(|m| {
            m.error
                .as_ref()
                .map(|e| format!("{} ({}): {e}", m.name, m.relation))
        })
        .collect();
    if failed.is_empty() {
        return Ok(measured);
    }
    Err(CliError::BadInput(format!(
        "validation.downstream: cannot measure {} before the run, so its change could not be known: {}. \
         Fix the relation or the expression (a materialized view must be populated: REFRESH MATERIALIZED VIEW), then run again",
        if failed.len() == 1 {
            "a metric"
        } else {
            "metrics"
        },
        failed.join("; ")
    )))
}

/// One group of a downstream metric: its figure before the run and now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub group: String,
    pub before: Option<f64>,
    pub after: Option<f64>,
    /// The change in percent of the figure before; `None` where there is no
    /// figure on one side, or none before to divide by.
    pub pct: Option<f64>,
    pub ok: bool,
}

/// A downstream metric measured and held to what it should do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    pub name: String,
    pub relation: String,
    /// What it should do: the brief's expectation, or, after rollback, to
    /// be unchanged since before the run.
    pub expect: Expect,
    pub groups: Vec<Change>,
    /// Why it fails; empty when it passes.
    pub problems: Vec<String>,
    /// Not measured yet: it shows the run only after cutover's refresh.
    #[serde(default)]
    pub awaiting_cutover: bool,
}

/// Relative distance under which two figures are the same (float8 sums of
/// the same rows, added in another order).
const SAME: f64 = 1e-9;

fn same(a: f64, b: f64) -> bool {
    (a - b).abs() <= SAME * a.abs().max(b.abs()).max(1.0)
}

/// The change of `a` from `b`, in percent; `None` from zero.
fn pct(b: f64, a: f64) -> Option<f64> {
    if same(a, b) {
        Some(0.0)
    } else {
        (b != 0.0).then(|| (a - b) / b.abs() * 100.0)
    }
}

/// How many groups a problem names before it says how many more.
const NAMED_GROUPS: usize = 3;

/// Holds `now` against `before` as `expect` says. `target_moved`: the run
/// changed rows of its target, so a metric expected to move that kept every
/// figure is stale (a refresh that did not rebuild it, or a relation that
/// does not read the target).
#[must_use]
pub fn judge(
    expect: Expect,
    before: Option<&Measured>,
    now: &Measured,
    target_moved: bool,
) -> Judged {
    let mut judged = Judged {
        name: now.name.clone(),
        relation: now.relation.clone(),
        expect,
        groups: Vec::new(),
        problems: Vec::new(),
        awaiting_cutover: false,
    };
    if let Some(e) = &now.error {
        judged.problems.push(format!("not measured: {e}"));
        return judged;
    }
    let Some(before) = before else {
        judged
            .problems
            .push("not measured before the run, so its change is not known".into());
        return judged;
    };
    let names: BTreeSet<&String> = before.groups.keys().chain(now.groups.keys()).collect();
    for group in names {
        let (b, a) = (
            before.groups.get(group).copied(),
            now.groups.get(group).copied(),
        );
        let pct = b.zip(a).and_then(|(b, a)| pct(b, a));
        let ok = match (expect, b, a) {
            (Expect::Unchanged, Some(b), Some(a)) => same(a, b),
            (Expect::ChangePct { lo, hi }, Some(_), None) => lo <= -100.0 && hi >= -100.0,
            (Expect::ChangePct { lo, hi }, Some(_), Some(_)) => {
                pct.is_some_and(|p| p >= lo - SAME && p <= hi + SAME)
            }
            _ => false,
        };
        judged.groups.push(Change {
            group: group.clone(),
            before: b,
            after: a,
            pct,
            ok,
        });
    }
    let off: Vec<&Change> = judged.groups.iter().filter(|c| !c.ok).collect();
    if !off.is_empty() {
        let named: Vec<String> = off
            .iter()
            .take(NAMED_GROUPS)
            .map(|c| format!("{} {}", crate::report::group_label(&c.group), describe(c)))
            .collect();
        judged.problems.push(format!(
            "{} of {} groups outside {}: {}{}",
            off.len(),
            judged.groups.len(),
            expected(expect),
            named.join(", "),
            if off.len() > NAMED_GROUPS {
                ", …"
            } else {
                ""
            }
        ));
    }
    let moved = judged
        .groups
        .iter()
        .any(|c| c.before.zip(c.after).is_none_or(|(b, a)| !same(a, b)));
    if matches!(expect, Expect::ChangePct { .. }) && target_moved && !moved {
        judged.problems.push(
            "did not move though the run changed the target: stale (a refresh that did not rebuild it, or a relation that does not read the target)".into(),
        );
    }
    judged
}

/// A group's figures in words: `12.5 -> 10.0 (-20.0 %)`, `new: 3.0`, `gone`.
fn describe(c: &Change) -> String {
    match (c.before, c.after) {
        (Some(b), Some(a)) => format!(
            "{} -> {}{}",
            fmt_num(b),
            fmt_num(a),
            c.pct.map_or_else(String::new, |p| format!(" ({p:+.1} %)"))
        ),
        (None, Some(a)) => format!("new, {}", fmt_num(a)),
        (Some(b), None) => format!("gone (was {})", fmt_num(b)),
        (None, None) => "no figure".into(),
    }
}

/// What `expect` asks, in words.
#[must_use]
pub fn expected(expect: Expect) -> String {
    match expect {
        Expect::ChangePct { lo, hi } => {
            let signed = |x: f64| {
                if x == 0.0 {
                    "0".to_owned()
                } else {
                    format!("{x:+}")
                }
            };
            format!("{} % to {} %", signed(lo), signed(hi))
        }
        Expect::Unchanged => "unchanged".into(),
    }
}

impl Judged {
    #[must_use]
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// The least and the most change measured over its groups, in percent.
    #[must_use]
    pub fn measured(&self) -> Option<(f64, f64)> {
        self.groups.iter().filter_map(|c| c.pct).fold(None, |r, p| {
            Some(r.map_or((p, p), |(lo, hi): (f64, f64)| (lo.min(p), hi.max(p))))
        })
    }

    /// The expected and the measured change side by side, and the verdict.
    #[must_use]
    pub fn line(&self) -> String {
        let what = format!("{} ({})", self.name, self.relation);
        if self.awaiting_cutover {
            return format!(
                "{what}: expected {}; measured after cutover (it shows the run only once refreshed)",
                expected(self.expect)
            );
        }
        let measured = match self.measured() {
            Some((lo, hi)) if (lo - hi).abs() < 0.05 => format!("{lo:+.1} %"),
            Some((lo, hi)) => format!("{lo:+.1} % to {hi:+.1} %"),
            None => "nothing".into(),
        };
        let mut line = format!(
            "{what}: expected {}, measured {measured} over {} group(s)",
            expected(self.expect),
            self.groups.len()
        );
        for p in &self.problems {
            line.push_str("; ");
            line.push_str(p);
        }
        line
    }
}

/// Each `[[validation.downstream]]` metric must read a relation downstream of
/// the target (a reader in the catalog, a model in the dbt manifest, or a
/// relation `dependencies.downstream` declares built from it) and evaluate
/// on it.
pub(crate) async fn preflight(
    pool: &PgPool,
    brief: &Brief,
    dbt: Option<&std::result::Result<crate::dbt::Radius, String>>,
    problems: &mut Vec<Problem>,
) -> sqlx::Result<()> {
    let entries = &brief.validation.downstream;
    if entries.is_empty() {
        return Ok(());
    }
    let target = &brief.scope.target;
    let mut radius: Vec<TableName> = crate::catalog::readers(pool, target)
        .await?
        .into_iter()
        .map(|r| r.name)
        .collect();
    if let Some(Ok(dbt)) = dbt {
        radius.extend(dbt.relations.values().filter_map(|r| TableName::parse(r)));
    }
    radius.extend(
        brief
            .dependencies
            .downstream
            .iter()
            .filter_map(|d| TableName::parse(d)),
    );
    let mut conn = pool.acquire().await?;
    for (i, entry) in entries.iter().enumerate() {
        let field = format!("validation.downstream[{i}].relation");
        let relation = match crate::downstream::relation_of(entry, dbt) {
            Ok(relation) => relation,
            Err(why) => {
                problems.push(Problem {
                    field,
                    message: why,
                });
                continue;
            }
        };
        if !radius.contains(&relation) {
            problems.push(Problem {
                field,
                message: format!(
                    "{relation} is not downstream of {target}: neither the catalog (views, materialized views) nor the dbt manifest finds it reading {target}; \
                     name a relation `backfill plan` lists, or declare it in dependencies.downstream if it is built from {target} another way"
                ),
            });
            continue;
        }
        let sql = entry.query(&relation.quoted());
        if let Err(sqlx::Error::Database(e)) = (&mut *conn)
            .prepare(AssertSqlSafe(sql).into_sql_str())
            .await
        {
            problems.push(Problem {
                field: format!("validation.downstream[{i}]"),
                message: format!(
                    "{:?} does not evaluate on {relation}: {}",
                    entry.name,
                    e.message()
                ),
            });
        }
    }
    Ok(())
}

/// When a run's downstream metrics are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// By `validate` or `done`: a metric that shows the run only after
    /// cutover awaits it before then.
    Now,
    /// After cutover and its refresh steps.
    Cutover,
    /// After rollback and its refresh steps: every metric back where it was.
    Rollback,
}

impl Moment {
    fn as_str(self) -> &'static str {
        match self {
            Self::Now => "now",
            Self::Cutover => "cutover",
            Self::Rollback => "rollback",
        }
    }
}

/// The run's downstream metrics before it, as recorded with it.
#[must_use]
pub fn recorded(run: &Run) -> Vec<Measured> {
    serde_json::from_value(run.params["downstream_before"].clone()).unwrap_or_default()
}

/// Measures the run's downstream metrics now and holds each to what it should
/// do at `moment`.
pub async fn judge_run(pool: &PgPool, run: &Run, moment: Moment) -> Result<Vec<Judged>> {
    let entries = &run.brief.validation.downstream;
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let before = recorded(run);
    let rows = batches::counts(pool, run.run_id).await?.rows;
    let target_moved = rows.inserted + rows.updated + rows.deleted > 0;
    let exposed = match moment {
        Moment::Now => matches!(
            run.state,
            RunState::CutOver | RunState::Done | RunState::RolledBack
        ),
        Moment::Cutover | Moment::Rollback => true,
    };
    let rolled_back = moment == Moment::Rollback || run.state == RunState::RolledBack;
    let early = if exposed {
        BTreeSet::new()
    } else {
        shown_before_cutover(pool, run).await?
    };
    let now = measure(pool, &run.brief).await?;
    Ok(entries
        .iter()
        .zip(&now)
        .map(|(entry, now)| {
            let before = before.iter().find(|b| b.name == entry.name);
            if !exposed && !early.contains(&now.relation) {
                return Judged {
                    name: now.name.clone(),
                    relation: now.relation.clone(),
                    expect: entry.expect,
                    groups: Vec::new(),
                    problems: Vec::new(),
                    awaiting_cutover: true,
                };
            }
            let expect = if rolled_back {
                Expect::Unchanged
            } else {
                entry.expect
            };
            judge(expect, before, now, target_moved)
        })
        .collect())
}

/// The relations that show a run before its cutover: views over a target
/// written in place, with no materialized view among its readers nearer than
/// them. Everything else is rebuilt, refreshed or swapped in by cutover.
async fn shown_before_cutover(pool: &PgPool, run: &Run) -> Result<BTreeSet<String>> {
    if !crate::lifecycle::writes_live_target(&run.brief) {
        return Ok(BTreeSet::new());
    }
    let readers = crate::catalog::readers(pool, &run.brief.scope.target).await?;
    let nearest_stored = readers
        .iter()
        .filter(|r| r.materialized)
        .map(|r| r.nearest)
        .min()
        .unwrap_or(i32::MAX);
    Ok(readers
        .iter()
        .filter(|r| !r.materialized && r.farthest <= nearest_stored)
        .map(|r| r.name.to_string())
        .collect())
}

/// Records what was measured after cutover or rollback in the run log.
pub async fn record(
    pool: &PgPool,
    run_id: Uuid,
    actor: &str,
    moment: Moment,
    judged: &[Judged],
) -> Result<()> {
    if judged.is_empty() {
        return Ok(());
    }
    log::append(
        pool,
        run_id,
        actor,
        LOGGED,
        None,
        serde_json::json!({ "after": moment.as_str(), "metrics": judged }),
    )
    .await?;
    Ok(())
}

/// What a cutover or a rollback measured downstream once its refresh steps
/// ran: the metrics judged, or why they could not be measured (which never
/// undoes the step: it is done).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct After {
    pub judged: Vec<Judged>,
    pub error: Option<String>,
}

impl After {
    /// Measures the run's downstream metrics after `moment` and records them.
    pub async fn measure(pool: &PgPool, run: &Run, actor: &str, moment: Moment) -> Self {
        let measured = async {
            let judged = judge_run(pool, run, moment).await?;
            record(pool, run.run_id, actor, moment, &judged).await?;
            Ok::<_, CliError>(judged)
        };
        match measured.await {
            Ok(judged) => Self {
                judged,
                error: None,
            },
            Err(e) => Self {
                judged: Vec::new(),
                error: Some(e.to_string()),
            },
        }
    }

    /// Every metric passed (and there was none to measure or all were).
    #[must_use]
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.judged.iter().all(Judged::passed)
    }

    /// Its lines for a person, after `what` (`cutover`, `rollback`); empty
    /// when the brief declares no downstream metric.
    #[must_use]
    pub fn render(&self, what: &str) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        if let Some(e) = &self.error {
            let _ = writeln!(
                s,
                "WARNING: the downstream metrics could not be measured after {what}: {e}; `backfill validate` measures them again"
            );
        }
        if self.judged.is_empty() {
            return s;
        }
        let _ = writeln!(
            s,
            "downstream metrics after {what}{}:",
            if self.passed() {
                ""
            } else {
                " (WARNING: not as expected; `backfill validate` fails and `backfill done` refuses until they are)"
            }
        );
        for j in &self.judged {
            let _ = writeln!(
                s,
                "  {} {}",
                if j.passed() { "ok  " } else { "FAIL" },
                j.line()
            );
        }
        s
    }
}

/// The run's latest measurement after cutover or rollback: after which, and
/// what it found.
pub async fn latest(pool: &PgPool, run_id: Uuid) -> Result<Option<(String, Vec<Judged>)>> {
    let Some(entry) = log::latest_of(pool, run_id, &[LOGGED]).await? else {
        return Ok(None);
    };
    let after = entry.detail["after"].as_str().unwrap_or("?").to_owned();
    let judged = serde_json::from_value(entry.detail["metrics"].clone()).map_err(|e| {
        CliError::Internal(format!(
            "the run log of run {run_id} holds an unreadable downstream measurement: {e}"
        ))
    })?;
    Ok(Some((after, judged)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(groups: &[(&str, f64)]) -> Measured {
        Measured {
            name: "revenue".into(),
            relation: "mart.monthly".into(),
            groups: groups.iter().map(|(g, v)| ((*g).to_owned(), *v)).collect(),
            error: None,
        }
    }

    const FALLS: Expect = Expect::ChangePct { lo: -30.0, hi: 0.0 };

    #[test]
    fn a_change_within_the_range_passes_and_one_outside_names_its_group() {
        let before = measured(&[("1994", 100.0), ("1995", 200.0)]);
        let j = judge(
            FALLS,
            Some(&before),
            &measured(&[("1994", 80.0), ("1995", 200.0)]),
            true,
        );
        assert!(j.passed(), "{j:?}");
        assert_eq!(j.measured(), Some((-20.0, 0.0)));
        let j = judge(
            FALLS,
            Some(&before),
            &measured(&[("1994", 50.0), ("1995", 210.0)]),
            true,
        );
        assert!(!j.passed());
        assert_eq!(
            j.problems,
            [
                "2 of 2 groups outside -30 % to 0 %: 1994 100.00 -> 50.00 (-50.0 %), 1995 200.00 -> 210.00 (+5.0 %)"
            ]
        );
    }

    #[test]
    fn a_metric_that_kept_every_figure_while_the_target_moved_is_stale() {
        let before = measured(&[("1994", 100.0)]);
        let j = judge(FALLS, Some(&before), &before, true);
        assert!(j.problems.iter().any(|p| p.contains("stale")), "{j:?}");
        // The run changed nothing: nothing to follow.
        assert!(judge(FALLS, Some(&before), &before, false).passed());
        // Expected unchanged, and it is.
        assert!(judge(Expect::Unchanged, Some(&before), &before, true).passed());
    }

    #[test]
    fn unchanged_means_every_group_as_it_was_and_none_new_or_gone() {
        let before = measured(&[("1994", 100.0), ("1995", 0.1 + 0.2)]);
        assert!(
            judge(
                Expect::Unchanged,
                Some(&before),
                &measured(&[("1994", 100.0), ("1995", 0.3)]),
                true
            )
            .passed()
        );
        for now in [
            measured(&[("1994", 100.01), ("1995", 0.3)]),
            measured(&[("1994", 100.0)]),
            measured(&[("1994", 100.0), ("1995", 0.3), ("1996", 1.0)]),
        ] {
            assert!(!judge(Expect::Unchanged, Some(&before), &now, true).passed());
        }
    }

    #[test]
    fn a_metric_not_measured_fails_saying_why() {
        let mut now = measured(&[]);
        now.error = Some("relation \"mart.monthly\" does not exist".into());
        let j = judge(FALLS, Some(&measured(&[("1994", 1.0)])), &now, true);
        assert_eq!(
            j.problems,
            ["not measured: relation \"mart.monthly\" does not exist"]
        );
        let j = judge(FALLS, None, &measured(&[("1994", 1.0)]), true);
        assert!(j.problems[0].contains("not measured before the run"));
    }

    #[test]
    fn a_group_that_went_passes_only_when_the_range_reaches_minus_100() {
        let before = measured(&[("1994", 100.0), ("1995", 1.0)]);
        let now = measured(&[("1994", 100.0)]);
        let all = Expect::ChangePct {
            lo: -100.0,
            hi: 0.0,
        };
        assert!(judge(all, Some(&before), &now, true).passed());
        assert!(!judge(FALLS, Some(&before), &now, true).passed());
    }
}
