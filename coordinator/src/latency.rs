//! `[[validation.queries]]`: the queries dashboards run, timed on the target
//! before the run (kept in the run's parameters) and by `validate` on what the
//! run will expose (the table a swap builds, or the target written in place),
//! each the median of [`RUNS`] runs after one that warms the cache, and held
//! to its `max_slowdown_pct`.

use crate::{CliError, Result};
use backfill_shared::brief::{Brief, Problem, Query, Strategy};
use backfill_shared::sql::TableName;
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, Executor as _, PgPool, SqlSafeStr as _};
use std::time::Instant;

/// Timed runs of each query, after one that warms the cache.
pub const RUNS: usize = 5;

/// A slowdown of fewer milliseconds than this is within what a shared
/// machine's noise makes of a fast query: it is reported, not held against
/// the limit.
pub const NOISE_MS: f64 = 2.0;

/// One query timed once on one table: the median and every run, or why it
/// could not be timed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timed {
    pub name: String,
    pub median_ms: f64,
    pub runs_ms: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Times every query of `brief` on `table`, one after the other on one
/// connection.
pub async fn time_all(pool: &PgPool, brief: &Brief, table: &TableName) -> Result<Vec<Timed>> {
    let mut out = Vec::with_capacity(brief.validation.queries.len());
    if brief.validation.queries.is_empty() {
        return Ok(out);
    }
    let mut conn = pool.acquire().await?;
    for q in &brief.validation.queries {
        let sql = q.on(&table.quoted());
        let mut timed = Timed {
            name: q.name.clone(),
            ..Timed::default()
        };
        for run in 0..=RUNS {
            let started = Instant::now();
            match sqlx::query(AssertSqlSafe(sql.as_str()))
                .fetch_all(&mut *conn)
                .await
            {
                Ok(_) if run == 0 => {}
                Ok(_) => timed.runs_ms.push(started.elapsed().as_secs_f64() * 1000.0),
                Err(sqlx::Error::Database(e)) => {
                    timed.error = Some(e.message().to_owned());
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut sorted = timed.runs_ms.clone();
        sorted.sort_by(f64::total_cmp);
        timed.median_ms = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
        out.push(timed);
    }
    Ok(out)
}

/// Times the brief's queries on its target before its run, refusing (naming
/// each) when one cannot be timed: without the figure before, a slowdown
/// could not be known.
pub async fn before_run(pool: &PgPool, brief: &Brief) -> Result<Vec<Timed>> {
    let timed = time_all(pool, brief, &brief.scope.target).await?;
    let failed: Vec<String> = timed
        .iter()
        .filter_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.name)))
        .collect();
    if failed.is_empty() {
        return Ok(timed);
    }
    Err(CliError::BadInput(format!(
        "validation.queries: cannot time {} before the run: {}; fix the query, then run again",
        if failed.len() == 1 {
            "a query"
        } else {
            "queries"
        },
        failed.join("; ")
    )))
}

/// The run's queries timed before it, as recorded with it.
#[must_use]
pub fn recorded(params: &serde_json::Value) -> Vec<Timed> {
    serde_json::from_value(params["queries_before"].clone()).unwrap_or_default()
}

/// One query held to its limit: whether it passed, and in words. A failure
/// says only what failed (no timings, which never hold still), so the
/// reviewer's acceptance holds for a later validation failing alike.
#[must_use]
pub fn judge(q: &Query, before: Option<&Timed>, now: &Timed) -> (bool, String) {
    let name = &q.name;
    if let Some(e) = &now.error {
        return (false, format!("{name}: not timed: {e}"));
    }
    let Some(before) = before.filter(|b| b.error.is_none()) else {
        return (false, format!("{name}: not timed before the run"));
    };
    let slower = now.median_ms - before.median_ms;
    let pct = if before.median_ms > 0.0 {
        slower / before.median_ms * 100.0
    } else {
        0.0
    };
    if slower > NOISE_MS && pct > q.max_slowdown_pct {
        return (
            false,
            format!(
                "{name}: slower than max_slowdown_pct = {}",
                q.max_slowdown_pct
            ),
        );
    }
    (
        true,
        format!(
            "{name}: {:.1} ms -> {:.1} ms ({pct:+.0} %, at most +{} %)",
            before.median_ms, now.median_ms, q.max_slowdown_pct
        ),
    )
}

/// The preflight's problems with the brief's queries: each must prepare on
/// the target, and, where a swap builds a new table, read it as `{target}`
/// so it can be timed on the table the run will expose.
pub(crate) async fn preflight(
    pool: &PgPool,
    brief: &Brief,
    problems: &mut Vec<Problem>,
) -> sqlx::Result<()> {
    let queries = &brief.validation.queries;
    if queries.is_empty() {
        return Ok(());
    }
    let swap = matches!(
        brief.write.strategy,
        Strategy::StagingSwap | Strategy::ParallelVersion
    );
    let target = brief.scope.target.quoted();
    let mut conn = pool.acquire().await?;
    for (i, q) in queries.iter().enumerate() {
        let field = format!("validation.queries[{i}].sql");
        if swap && !q.sql.contains(Query::TARGET) {
            problems.push(Problem {
                field,
                message: format!(
                    "a {} builds a new table beside {}: write {} where the query reads the target, so validate times it on the table it will expose",
                    brief.write.strategy,
                    brief.scope.target,
                    Query::TARGET
                ),
            });
            continue;
        }
        if let Err(sqlx::Error::Database(e)) = conn
            .prepare(AssertSqlSafe(q.on(&target)).into_sql_str())
            .await
        {
            problems.push(Problem {
                field,
                message: format!("{:?} does not prepare: {}", q.name, e.message()),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed(median_ms: f64) -> Timed {
        Timed {
            name: "board".into(),
            median_ms,
            runs_ms: vec![median_ms; RUNS],
            error: None,
        }
    }

    fn query(max_slowdown_pct: f64) -> Query {
        Query {
            name: "board".into(),
            sql: "SELECT 1".into(),
            max_slowdown_pct,
        }
    }

    #[test]
    fn a_query_slower_past_its_limit_fails_and_says_only_that() {
        let (ok, said) = judge(&query(50.0), Some(&timed(10.0)), &timed(14.0));
        assert!(ok, "{said}");
        assert_eq!(said, "board: 10.0 ms -> 14.0 ms (+40 %, at most +50 %)");
        let (ok, said) = judge(&query(50.0), Some(&timed(10.0)), &timed(400.0));
        assert!(!ok);
        assert_eq!(said, "board: slower than max_slowdown_pct = 50");
    }

    #[test]
    fn a_slowdown_within_the_noise_passes_whatever_its_ratio() {
        let (ok, said) = judge(&query(10.0), Some(&timed(0.2)), &timed(1.5));
        assert!(ok, "{said}");
    }

    #[test]
    fn a_query_not_timed_fails_saying_why() {
        let mut now = timed(1.0);
        now.error = Some("relation \"x\" does not exist".into());
        assert_eq!(
            judge(&query(50.0), Some(&timed(1.0)), &now),
            (
                false,
                "board: not timed: relation \"x\" does not exist".to_owned()
            )
        );
        assert_eq!(
            judge(&query(50.0), None, &timed(1.0)),
            (false, "board: not timed before the run".to_owned())
        );
    }
}
