//! The refresh reached them: after cutover's refresh steps, every relation
//! downstream of the target that stores data is confirmed rebuilt from the
//! changed target, or named as not confirmed.
//!
//! - a materialized view: refreshed by cutover;
//! - a dbt table, incremental model or snapshot: the `run_results.json` a
//!   refresh step's dbt command wrote names it with status `success` (and an
//!   incremental model is rebuilt for the past, not only extended);
//! - any other table the brief declares downstream: a
//!   `[[validation.downstream]]` metric on it moved as expected.
//!
//! The dbt command's timings are kept beside those of the run before it
//! (the `run_results.json` it replaced), for the report.

use crate::Result;
use crate::downstream::Judged;
use backfill_shared::control::log;
use backfill_shared::control::runs::Run;
use backfill_shared::sql::TableName;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The run log's event for what cutover confirmed.
pub const LOGGED: &str = "refresh_confirmed";

/// What one dbt invocation's `run_results.json` says it did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DbtRun {
    pub path: String,
    pub generated_at: Option<DateTime<Utc>>,
    /// The whole invocation, in seconds.
    pub elapsed_s: f64,
    pub nodes: Vec<DbtNode>,
}

/// One node of a dbt invocation: `model.shop.monthly_net_revenue`, `success`,
/// and how long it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbtNode {
    pub unique_id: String,
    pub status: String,
    pub seconds: f64,
}

impl DbtNode {
    /// Whether this node is the model, seed or snapshot `name`.
    fn is(&self, name: &str) -> bool {
        let mut parts = self.unique_id.splitn(3, '.');
        matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some("model" | "snapshot" | "seed"), Some(_), Some(n)) if n == name
        )
    }
}

/// Whether `run` (a refresh command) runs dbt.
#[must_use]
pub fn is_dbt(run: &[String]) -> bool {
    run.first()
        .and_then(|p| Path::new(p).file_name())
        .is_some_and(|p| p == "dbt")
}

/// Where a dbt command writes `run_results.json`: its `--target-path`
/// (relative to `dir`), else beside the brief's manifest, else `target/` in
/// `dir`.
#[must_use]
pub fn results_path(run: &[String], dir: Option<&str>, manifest: Option<&str>) -> PathBuf {
    let base = Path::new(dir.unwrap_or("."));
    let target = run
        .iter()
        .position(|a| a == "--target-path")
        .and_then(|i| run.get(i + 1))
        .map(|t| base.join(t))
        .or_else(|| manifest.and_then(|m| Path::new(m).parent().map(Path::to_path_buf)))
        .unwrap_or_else(|| base.join("target"));
    target.join("run_results.json")
}

/// Reads a `run_results.json`; `None` when there is none (or it is not one).
#[must_use]
pub fn read(path: &Path) -> Option<DbtRun> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        metadata: Metadata,
        #[serde(default)]
        elapsed_time: f64,
        #[serde(default)]
        results: Vec<Result1>,
    }
    #[derive(Default, Deserialize)]
    struct Metadata {
        #[serde(default)]
        generated_at: Option<DateTime<Utc>>,
    }
    #[derive(Deserialize)]
    struct Result1 {
        unique_id: String,
        #[serde(default)]
        status: String,
        #[serde(default)]
        execution_time: f64,
    }
    let file: File = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(DbtRun {
        path: path.display().to_string(),
        generated_at: file.metadata.generated_at,
        elapsed_s: file.elapsed_time,
        nodes: file
            .results
            .into_iter()
            .map(|r| DbtNode {
                unique_id: r.unique_id,
                status: r.status,
                seconds: r.execution_time,
            })
            .collect(),
    })
}

/// A relation downstream that stores data, and whether the refresh is known
/// to have rebuilt it from the changed target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reached {
    pub relation: String,
    pub kind: String,
    pub confirmed: bool,
    /// How it is known, or why it is not.
    pub how: String,
}

/// Every relation downstream of the run's target that stores data, each
/// confirmed or not: `refreshed_views` are the materialized views cutover
/// refreshed, `dbt` what the refresh steps' dbt commands wrote, `downstream`
/// the downstream metrics measured after cutover.
pub async fn confirm(
    pool: &sqlx::PgPool,
    run: &Run,
    refreshed_views: &[String],
    dbt: &[DbtRun],
    downstream: &[Judged],
) -> Result<Vec<Reached>> {
    let brief = &run.brief;
    let mut out: Vec<Reached> = crate::catalog::readers(pool, &brief.scope.target)
        .await?
        .into_iter()
        .filter(|r| r.materialized)
        .map(|r| {
            let relation = r.name.to_string();
            let confirmed = refreshed_views.contains(&relation);
            Reached {
                how: if confirmed {
                    "refreshed by cutover".into()
                } else {
                    "not refreshed by cutover".into()
                },
                relation,
                kind: "materialized view".into(),
                confirmed,
            }
        })
        .collect();
    let dbt_runs: Vec<&DbtRun> = dbt.iter().collect();
    if let Some(Ok(radius)) = crate::preflight::dbt_radius(pool, brief).await? {
        let stale: Vec<&str> = radius
            .left_stale(&brief.dependencies.refresh)
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        for (name, relation) in &radius.relations {
            let kind = radius
                .dependents
                .iter()
                .find(|d| &d.name == relation)
                .map_or_else(|| "dbt model".to_owned(), |d| d.kind.clone());
            if !["table", "incremental", "snapshot"]
                .iter()
                .any(|k| kind.ends_with(k))
                || out.iter().any(|r| &r.relation == relation)
            {
                continue;
            }
            let node = dbt_runs
                .iter()
                .rev()
                .find_map(|r| r.nodes.iter().find(|n| n.is(name)));
            let (confirmed, how) = match node {
                Some(n) if n.status == "success" && stale.contains(&name.as_str()) => (
                    false,
                    format!("dbt ran {name} incrementally: it kept the history the run rewrote"),
                ),
                Some(n) if n.status == "success" => {
                    (true, format!("dbt built {name} ({:.2} s)", n.seconds))
                }
                Some(n) => (false, format!("dbt says {name}: {}", n.status)),
                None if dbt_runs.is_empty() => (
                    false,
                    "no refresh step's dbt command wrote run_results.json".to_owned(),
                ),
                None => (
                    false,
                    format!("the refresh steps' dbt commands did not build {name}"),
                ),
            };
            out.push(Reached {
                relation: relation.clone(),
                kind,
                confirmed,
                how,
            });
        }
    }
    for declared in brief
        .dependencies
        .downstream
        .iter()
        .filter_map(|d| TableName::parse(d))
    {
        let relation = declared.to_string();
        if out.iter().any(|r| r.relation == relation) || !is_table(pool, &declared).await? {
            continue;
        }
        let moved = downstream.iter().find(|j| {
            j.relation == relation && j.passed() && !j.awaiting_cutover && !j.groups.is_empty()
        });
        out.push(Reached {
            confirmed: moved.is_some(),
            how: match moved {
                Some(j) => format!("its metric {:?} moved as expected", j.name),
                None => "nothing shows it was rebuilt: rebuild it in a refresh step and declare a [[validation.downstream]] metric on it".into(),
            },
            relation,
            kind: "table".into(),
        });
    }
    Ok(out)
}

/// Whether `name` is a table (plain or partitioned).
async fn is_table(pool: &sqlx::PgPool, name: &TableName) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce((SELECT relkind IN ('r', 'p') FROM pg_class WHERE oid = to_regclass($1)), false)",
    )
    .bind(name.quoted())
    .fetch_one(pool)
    .await?)
}

/// What the run's cutover (or its rollback, `event` = `rollback_step`)
/// refresh steps' dbt commands wrote, and the runs before each, in step
/// order: `(previous, now)`.
pub async fn dbt_runs(
    pool: &sqlx::PgPool,
    run_id: Uuid,
    event: &str,
) -> Result<Vec<(Option<DbtRun>, DbtRun)>> {
    let entries = log::entries(pool, run_id).await?;
    Ok(entries
        .iter()
        .filter(|e| e.event == event && e.detail["step"] == "refresh")
        .filter_map(|e| {
            let dbt = &e.detail["detail"]["dbt"];
            let now = serde_json::from_value(dbt["now"].clone()).ok()?;
            Some((serde_json::from_value(dbt["previous"].clone()).ok(), now))
        })
        .collect())
}

/// What cutover confirmed, for a person: a line for the relations
/// confirmed and one for each not; nothing when none stores data.
#[must_use]
pub fn render(reached: &[Reached], error: Option<&str>) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if let Some(e) = error {
        let _ = writeln!(
            s,
            "WARNING: could not tell whether the refresh reached what is downstream: {e}"
        );
    }
    let confirmed: Vec<&str> = reached
        .iter()
        .filter(|r| r.confirmed)
        .map(|r| r.relation.as_str())
        .collect();
    if !confirmed.is_empty() {
        let _ = writeln!(s, "the refresh reached: {}", confirmed.join(", "));
    }
    for r in reached.iter().filter(|r| !r.confirmed) {
        let _ = writeln!(
            s,
            "WARNING: not confirmed rebuilt: {} ({}): {}",
            r.relation, r.kind, r.how
        );
    }
    s
}

/// Records what cutover confirmed.
pub async fn record(
    pool: &sqlx::PgPool,
    run_id: Uuid,
    actor: &str,
    reached: &[Reached],
) -> Result<()> {
    log::append(
        pool,
        run_id,
        actor,
        LOGGED,
        None,
        serde_json::json!({ "relations": reached }),
    )
    .await?;
    Ok(())
}

/// What the run's cutover confirmed, if it got that far.
pub async fn recorded(pool: &sqlx::PgPool, run_id: Uuid) -> Result<Option<Vec<Reached>>> {
    Ok(log::latest_of(pool, run_id, &[LOGGED])
        .await?
        .and_then(|e| serde_json::from_value(e.detail["relations"].clone()).ok()))
}

/// Each dbt node the refresh ran, with its time in the run before (the
/// `run_results.json` the refresh replaced) where that run had it:
/// `(node, before, now)` in seconds.
#[must_use]
pub fn durations(runs: &[(Option<DbtRun>, DbtRun)]) -> Vec<(String, Option<f64>, f64)> {
    runs.iter()
        .flat_map(|(previous, now)| {
            now.nodes.iter().map(move |n| {
                let before = previous
                    .as_ref()
                    .and_then(|p| p.nodes.iter().find(|b| b.unique_id == n.unique_id))
                    .map(|b| b.seconds);
                (n.unique_id.clone(), before, n.seconds)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_results_are_found_where_the_command_writes_them() {
        let run = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            results_path(
                &run(&["dbt", "build", "--target-path", "out"]),
                Some("/p"),
                Some("/m/target/manifest.json")
            ),
            Path::new("/p/out/run_results.json")
        );
        assert_eq!(
            results_path(
                &run(&["dbt", "build"]),
                Some("/p"),
                Some("/m/target/manifest.json")
            ),
            Path::new("/m/target/run_results.json")
        );
        assert_eq!(
            results_path(&run(&["dbt", "build"]), Some("/p"), None),
            Path::new("/p/target/run_results.json")
        );
        assert!(is_dbt(&run(&["/venv/bin/dbt", "build"])));
        assert!(!is_dbt(&run(&["psql", "-c", "dbt"])));
    }

    #[test]
    fn a_node_is_named_by_the_last_part_of_its_id() {
        let node = |id: &str| DbtNode {
            unique_id: id.into(),
            status: "success".into(),
            seconds: 0.1,
        };
        assert!(node("model.shop.monthly").is("monthly"));
        assert!(node("snapshot.shop.monthly").is("monthly"));
        assert!(!node("test.shop.monthly").is("monthly"));
        assert!(!node("model.shop.monthly_v2").is("monthly"));
    }

    #[test]
    fn durations_pair_each_node_with_the_run_before() {
        let node = |id: &str, seconds: f64| DbtNode {
            unique_id: id.into(),
            status: "success".into(),
            seconds,
        };
        let previous = DbtRun {
            nodes: vec![node("model.shop.a", 1.0)],
            ..DbtRun::default()
        };
        let now = DbtRun {
            nodes: vec![node("model.shop.a", 3.0), node("model.shop.b", 2.0)],
            ..DbtRun::default()
        };
        assert_eq!(
            durations(&[(Some(previous), now)]),
            [
                ("model.shop.a".to_owned(), Some(1.0), 3.0),
                ("model.shop.b".to_owned(), None, 2.0)
            ]
        );
    }
}
