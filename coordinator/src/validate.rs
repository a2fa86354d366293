//! `backfill validate RUN`: the run-level checklist, stored in
//! `backfill.validations` and printed as a table. Any failed check makes the
//! command exit 1.
//!
//! - freshness: every planned batch applied; the ledger's bounds cover the scope
//!   with no gap and no overlap;
//! - completeness: rows in scope against `expected_rows` (±10 %), distinct keys,
//!   NULL rates of the rewritten columns, rows per batch range;
//! - uniqueness of the key across the whole target;
//! - referential integrity of the declared references across the scope;
//! - unmatched rows: per batch range, the target rows the source did not
//!   reproduce (removed or left stale), against `max_unmatched_pct`;
//! - metric reconciliation: per group, before and after summed over the batches,
//!   and the after figures checked against the table as it is now;
//! - downstream metrics: each `[[validation.downstream]]` metric's change
//!   since before the run against what the brief expects (after cutover, or
//!   before it for views over a target written in place);
//! - table health: table and index size before the run and now, dead row
//!   versions, whether statistics are fresh, the physical order of `batch_by`
//!   (`max_size_growth_pct`, `min_correlation`);
//! - query latency: each `[[validation.queries]]` query timed on the table
//!   the run will expose against its time before the run.

use crate::lifecycle::fingerprint;
use crate::report::{fmt_num, group_label};
use crate::{CliError, Result};
use backfill_shared::brief::{Bound, Brief, Metric};
use backfill_shared::checks::Unmatched;
use backfill_shared::control::batches;
use backfill_shared::control::runs::{self, Run};
use backfill_shared::control::validations::{self, Acceptance, CheckResult};
use backfill_shared::sql::{column_list, quote_ident};
use serde::Serialize;
use serde_json::json;
use sqlx::{AssertSqlSafe, PgPool};
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub summary: String,
    pub detail: serde_json::Value,
}

/// Allowed distance of the rows in scope from `expected_rows`.
const EXPECTED_ROWS_TOLERANCE: f64 = 0.10;

pub async fn validate(pool: &PgPool, run_id: Uuid) -> Result<Vec<Check>> {
    let (_, checks) = validate_recorded(pool, run_id).await?;
    let passed = checks.iter().all(|c| c.passed);
    crate::notify::emit(pool, run_id, crate::notify::Happened::Validated { passed }).await;
    Ok(checks)
}

/// Validates the run as this session and records it, telling nobody (an
/// approval's own validation is part of the approval): the validation's id
/// (recorded by this session's role, which an approval requires: migration
/// 0016) and its checks.
pub async fn validate_recorded(pool: &PgPool, run_id: Uuid) -> Result<(i64, Vec<Check>)> {
    let run = runs::load(pool, run_id).await?;
    let brief = &run.brief;
    let table = exposed_table(&run);
    let t = table.quoted();
    let scope = brief.scope.owned_range("");
    let (start, end) = (brief.scope.batch_by.start, brief.scope.batch_by.end);
    let mut checks = vec![freshness(pool, &run).await?];
    // What is checked, per batch range: recorded so cutover can expose exactly
    // that, and the rows per range of the completeness check.
    let mut conn = pool.acquire().await?;
    let fingerprint = fingerprint::measure(&mut conn, brief, &table, None).await?;
    drop(conn);

    // Completeness.
    let nulls = brief
        .scope
        .columns
        .iter()
        .map(|c| format!("count(*) FILTER (WHERE {} IS NULL)", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let keys = column_list(&brief.scope.key, None);
    let (rows, distinct, null_counts): (i64, i64, Vec<i64>) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT {keys} FROM {t} WHERE {scope}) d), ARRAY[{nulls}]::bigint[]
           FROM {t} WHERE {scope}"
    )))
    .bind(start)
    .bind(end)
    .fetch_one(pool)
    .await?;
    let found: BTreeMap<u32, i64> = fingerprint
        .ranges
        .iter()
        .map(|r| (r.batch_no, r.rows))
        .collect();
    let per_batch: Vec<(u32, i64)> = (0..run.batch_count)
        .map(|no| (no, found.get(&no).copied().unwrap_or(0)))
        .collect();
    let expected_ok = brief
        .scope
        .expected_rows
        .is_none_or(|e| (rows as f64 - e as f64).abs() <= e as f64 * EXPECTED_ROWS_TOLERANCE);
    let empty_batches = per_batch.iter().filter(|(_, n)| *n == 0).count();
    checks.push(Check {
        name: "completeness",
        passed: expected_ok && distinct == rows,
        summary: format!(
            "{rows} rows in scope{}, {distinct} distinct keys, {empty_batches} of {} batch ranges empty",
            brief.scope.expected_rows.map_or_else(String::new, |e| format!(" (expected {e} ±10 %)")),
            per_batch.len()
        ),
        detail: json!({
            "rows": rows,
            "expected_rows": brief.scope.expected_rows,
            "distinct_keys": distinct,
            "null_rate": brief.scope.columns.iter().zip(&null_counts)
                .map(|(c, n)| (c.clone(), if rows > 0 { *n as f64 / rows as f64 } else { 0.0 }))
                .collect::<BTreeMap<_, _>>(),
            "rows_per_batch": per_batch,
        }),
    });

    // Uniqueness across the whole table.
    let duplicates: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM (SELECT 1 FROM {t} GROUP BY {keys} HAVING count(*) > 1) d"
    )))
    .fetch_one(pool)
    .await?;
    checks.push(Check {
        name: "uniqueness",
        passed: duplicates == 0,
        summary: format!("{duplicates} keys appear more than once in {table}"),
        detail: json!({ "duplicate_keys": duplicates }),
    });

    // Referential integrity.
    let mut orphans = BTreeMap::new();
    for r in &brief.validation.references {
        let Some((parent, column)) = r.parent() else {
            continue;
        };
        let c = quote_ident(&r.column);
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {t} x WHERE {scope} AND x.{c} IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM {} p WHERE p.{} = x.{c})",
            parent.quoted(),
            quote_ident(&column)
        )))
        .bind(start)
        .bind(end)
        .fetch_one(pool)
        .await?;
        orphans.insert(r.column.clone(), n);
    }
    checks.push(Check {
        name: "referential integrity",
        passed: orphans.values().all(|n| *n == 0),
        summary: if orphans.is_empty() {
            "no references declared".into()
        } else {
            orphans
                .iter()
                .map(|(c, n)| format!("{c}: {n} orphans"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        detail: json!(orphans),
    });

    let applied = applied_batches(pool, &run).await?;
    checks.push(unmatched(pool, &run, &applied).await?);
    checks.push(reconciliation(pool, &run, &applied, &t, &scope).await?);
    checks.push(downstream(pool, &run).await?);
    checks.push(edge_cases(pool, &run, &t).await?);
    checks.push(health(pool, &run, &table).await?);
    checks.push(latency(pool, &run, &table).await?);

    let results: Vec<CheckResult<'_>> = checks
        .iter()
        .map(|c| CheckResult {
            name: c.name,
            passed: c.passed,
            summary: &c.summary,
            detail: &c.detail,
        })
        .collect();
    let me = backfill_shared::control::people::whoami(pool).await?;
    let id = validations::record(
        pool,
        run_id,
        me.name(),
        &results,
        &serde_json::to_value(&fingerprint).unwrap_or_default(),
    )
    .await?;
    Ok((id, checks))
}

/// `backfill validate RUN --accept CHECK --reason TEXT`: the reviewer (this
/// session's person; never the owner) accepts a failed check of the run's
/// latest validation, so the run may be approved despite it. Returns who.
pub async fn accept(pool: &PgPool, run_id: Uuid, check: &str, reason: &str) -> Result<String> {
    let run = runs::load(pool, run_id).await?;
    let session =
        crate::lifecycle::approve::as_reviewer(pool, &run, None, "accept a failed check of")
            .await?;
    if reason.trim().is_empty() {
        return Err(CliError::BadInput(
            "--reason is blank; say why the failure is acceptable".into(),
        ));
    }
    let Some(latest) = validations::latest(pool, run_id).await? else {
        return Err(CliError::BadInput(format!(
            "run {run_id} has not been validated; run `backfill validate {run_id}` first"
        )));
    };
    if !latest.failed.iter().any(|c| c == check) {
        return Err(CliError::BadInput(format!(
            "check {check:?} did not fail in the latest validation of run {run_id} (failed: {})",
            if latest.failed.is_empty() {
                "none".to_owned()
            } else {
                latest.failed.join(", ")
            }
        )));
    }
    validations::accept(
        pool,
        run_id,
        latest.id,
        &Acceptance {
            check_name: check.to_owned(),
            actor: session.name().to_owned(),
            reason: reason.trim().to_owned(),
        },
    )
    .await?;
    Ok(session.name().to_owned())
}

/// Per batch range, the target rows the source did not reproduce, as the
/// batches measured them in their transactions; a range past
/// `max_unmatched_pct` fails the check unless the breach was accepted.
async fn unmatched(pool: &PgPool, run: &Run, applied: &[batches::Applied]) -> Result<Check> {
    let brief = &run.brief;
    let limit = brief.validation.max_unmatched_pct;
    let ranges = brief
        .scope
        .batch_by
        .plan()
        .map_err(|e| CliError::Internal(format!("the recorded brief no longer plans: {e}")))?;
    let accepted = crate::run::accepted_limits(pool, run.run_id)
        .await?
        .iter()
        .any(|l| l == "max_unmatched_pct");
    let mut total = 0;
    let mut over = 0;
    let mut per_range = Vec::new();
    for b in applied {
        let u = b.checks.unmatched;
        total += u.rows;
        if u.rows == 0 {
            continue;
        }
        let breached = u.pct() > limit;
        over += usize::from(breached);
        let range = ranges.iter().find(|r| r.no == b.batch_no);
        per_range.push(json!({
            "batch": b.batch_no,
            "lo": range.map(|r| r.lo.to_string()),
            "hi": range.map(|r| r.hi.to_string()),
            "unmatched": u.rows,
            "range_rows": u.range_rows,
            "pct": u.pct(),
            "at_lower_bound": u.at_lower_bound,
            "over_limit": breached,
            "message": u.describe(brief),
        }));
    }
    let fate = Unmatched::fate(brief);
    Ok(Check {
        name: "unmatched rows",
        passed: over == 0 || accepted,
        summary: format!(
            "{total} target rows {fate} without a counterpart in the source, in {} of {} batch ranges; {over} over max_unmatched_pct = {limit}{}",
            per_range.len(),
            applied.len(),
            if over > 0 && accepted {
                " (accepted)"
            } else {
                ""
            }
        ),
        detail: json!({ "limit_pct": limit, "accepted": accepted, "ranges": per_range }),
    })
}

async fn freshness(pool: &PgPool, run: &Run) -> Result<Check> {
    let rows = batches::ranges(pool, run.run_id).await?;
    let kind = run.bound_kind;
    let parse = |t: &str| Bound::parse(kind, t);
    let by = &run.brief.scope.batch_by;
    let mut problems = Vec::new();
    let mut expect = Some(by.start);
    let mut ranges: Vec<(Bound, Bound)> = rows
        .iter()
        .filter_map(|(_, lo, hi, _)| Some((parse(lo)?, parse(hi)?)))
        .collect();
    if ranges.len() != rows.len() {
        problems.push("the ledger holds bounds this run cannot read".to_owned());
    }
    ranges.sort();
    for (lo, hi) in &ranges {
        match expect {
            Some(e) if *lo > e => problems.push(format!("gap [{e}, {lo})")),
            Some(e) if *lo < e => problems.push(format!("overlap at [{lo}, {e})")),
            _ => {}
        }
        expect = Some(*hi);
    }
    if expect != Some(by.end) {
        problems.push(format!(
            "the batches end at {} instead of {}",
            expect.map_or_else(|| "nothing".into(), |e| e.to_string()),
            by.end
        ));
    }
    let planned = run.batch_count as usize;
    if rows.len() != planned {
        problems.push(format!(
            "{} batches in the ledger, {planned} planned",
            rows.len()
        ));
    }
    let not_applied: Vec<i32> = rows
        .iter()
        .filter(|r| r.3 != "applied")
        .map(|r| r.0)
        .collect();
    if !not_applied.is_empty() {
        problems.push(format!(
            "{} batches not applied (first: {})",
            not_applied.len(),
            not_applied[0]
        ));
    }
    Ok(Check {
        name: "freshness",
        passed: problems.is_empty(),
        summary: if problems.is_empty() {
            format!(
                "{planned} batches applied, covering [{}, {}) without gap or overlap",
                by.start, by.end
            )
        } else {
            problems.join("; ")
        },
        detail: json!({ "problems": problems, "planned": planned, "in_ledger": rows.len() }),
    })
}

/// One metric of one group over the whole run: before and after, summed over the
/// batches' figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupDelta {
    pub metric: String,
    pub group: String,
    pub before: f64,
    pub after: f64,
}

impl GroupDelta {
    #[must_use]
    pub fn delta_pct(&self) -> Option<f64> {
        (self.before != 0.0).then(|| (self.after - self.before) / self.before.abs() * 100.0)
    }
}

/// The figures of every applied batch of a run, read once for all the sums.
pub async fn applied_batches(pool: &PgPool, run: &Run) -> Result<Vec<batches::Applied>> {
    let nos: Vec<u32> = (0..run.batch_count).collect();
    Ok(batches::applied_among(pool, run.run_id, &nos).await?)
}

/// The unmatched rows of a run, summed over its applied batches (the lower
/// bound count is the batches' sum too).
#[must_use]
pub fn summed_unmatched(applied: &[batches::Applied]) -> Unmatched {
    applied
        .iter()
        .fold(Unmatched::default(), |sum, b| Unmatched {
            rows: sum.rows + b.checks.unmatched.rows,
            at_lower_bound: sum.at_lower_bound + b.checks.unmatched.at_lower_bound,
            range_rows: sum.range_rows + b.checks.unmatched.range_rows,
            source_at_lower_bound: match (
                sum.source_at_lower_bound,
                b.checks.unmatched.source_at_lower_bound,
            ) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            },
        })
}

/// Every metric group of a run, summed over its applied batches, in metric order.
#[must_use]
pub fn summed_metrics(run: &Run, applied: &[batches::Applied]) -> Vec<GroupDelta> {
    let mut sums: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for b in applied {
        for g in &b.checks.metrics {
            let e = sums.entry((g.metric.clone(), g.group.clone())).or_default();
            e.0 += g.before.unwrap_or(0.0);
            e.1 += g.after.unwrap_or(0.0);
        }
    }
    let order = |m: &str| {
        run.brief
            .validation
            .metrics
            .iter()
            .position(|x| x.name == m)
    };
    let mut out: Vec<GroupDelta> = sums
        .into_iter()
        .map(|((metric, group), (before, after))| GroupDelta {
            metric,
            group,
            before,
            after,
        })
        .collect();
    out.sort_by(|a, b| {
        order(&a.metric)
            .cmp(&order(&b.metric))
            .then_with(|| a.group.cmp(&b.group))
    });
    out
}

/// Per metric and group: before and after summed over the batches' figures, and
/// the after figures against the table now (for additive metrics: sum, count).
async fn reconciliation(
    pool: &PgPool,
    run: &Run,
    applied: &[batches::Applied],
    t: &str,
    scope: &str,
) -> Result<Check> {
    let brief: &Brief = &run.brief;
    let groups = summed_metrics(run, applied);
    let mut mismatches = Vec::new();
    let mut rows = Vec::new();
    for m in &brief.validation.metrics {
        let additive = ["sum(", "count("]
            .iter()
            .any(|p| m.expr.trim_start().to_lowercase().starts_with(p));
        let now: BTreeMap<String, f64> = if additive {
            let found: Vec<(Option<String>, Option<f64>)> =
                sqlx::query_as(AssertSqlSafe(m.query(t, scope)))
                    .bind(brief.scope.batch_by.start)
                    .bind(brief.scope.batch_by.end)
                    .fetch_all(pool)
                    .await?;
            found
                .into_iter()
                .map(|(g, v)| (Metric::group_name(g), v.unwrap_or(0.0)))
                .collect()
        } else {
            BTreeMap::new()
        };
        for GroupDelta {
            metric,
            group,
            before,
            after,
        } in groups.iter().filter(|g| g.metric == m.name)
        {
            let (before, after) = (*before, *after);
            let table_now = now.get(group).copied();
            if additive
                && table_now.is_none_or(|v| (v - after).abs() > 0.005 * after.abs().max(1.0))
            {
                mismatches.push(format!(
                    "{metric} {}: the batches say {}, the table holds {}",
                    group_label(group),
                    fmt_num(after),
                    table_now.map_or_else(|| "no rows".to_owned(), fmt_num)
                ));
            }
            rows.push(json!({
                "metric": metric, "group": group, "before": before, "after": after,
                "delta": after - before,
                "delta_pct": if before != 0.0 { Some((after - before) / before.abs() * 100.0) } else { None },
                "table_now": table_now,
            }));
        }
    }
    Ok(Check {
        name: "metric reconciliation",
        passed: mismatches.is_empty(),
        summary: if mismatches.is_empty() {
            format!(
                "{} metric groups; the table matches the batches' figures",
                rows.len()
            )
        } else {
            mismatches.join("; ")
        },
        detail: json!({ "groups": rows, "mismatches": mismatches }),
    })
}

/// The metrics stakeholders quote, where they read them: the expected change
/// and the measured one side by side.
async fn downstream(pool: &PgPool, run: &Run) -> Result<Check> {
    let judged = crate::downstream::judge_run(pool, run, crate::downstream::Moment::Now).await?;
    Ok(Check {
        name: "downstream metrics",
        passed: judged.iter().all(crate::downstream::Judged::passed),
        summary: if judged.is_empty() {
            "none declared ([[validation.downstream]])".into()
        } else {
            judged
                .iter()
                .map(crate::downstream::Judged::line)
                .collect::<Vec<_>>()
                .join("; ")
        },
        detail: json!(judged),
    })
}

/// The table the run's rows are in now: the one it builds (staging-swap,
/// parallel-version, before cutover), else the target.
pub(crate) fn exposed_table(run: &Run) -> backfill_shared::sql::TableName {
    run.side_table
        .as_deref()
        .filter(|_| run.old_table.is_none())
        .and_then(backfill_shared::sql::TableName::parse)
        .unwrap_or_else(|| run.brief.scope.target.clone())
}

/// The brief's edge-case records before the run (from the before-images, where
/// the run changed them) and now. Informational: a reviewer reads them.
pub(crate) async fn edge_cases(pool: &PgPool, run: &Run, t: &str) -> Result<Check> {
    let key = run
        .brief
        .scope
        .key
        .iter()
        .map(|k| format!("x.{}::text", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" || ', ' || ");
    let image = run
        .image_table
        .as_deref()
        .and_then(backfill_shared::sql::TableName::parse);
    let mut cases = Vec::new();
    for case in &run.brief.validation.edge_cases {
        let wanted = case.join(", ");
        let now: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT x::text FROM {t} x WHERE {key} = $1"
        )))
        .bind(&wanted)
        .fetch_optional(pool)
        .await?;
        let before: Option<String> = match &image {
            Some(img) => sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT x::text FROM {} x WHERE {key} = $1 AND x.bf_op IN ('U', 'D') ORDER BY bf_batch_no LIMIT 1",
                img.quoted()
            )))
            .bind(&wanted)
            .fetch_optional(pool)
            .await?,
            None => None,
        };
        cases.push(
            json!({ "key": wanted, "changed": before.is_some(), "before": before, "now": now }),
        );
    }
    let changed = cases.iter().filter(|c| c["changed"] == true).count();
    Ok(Check {
        name: "edge cases",
        passed: true,
        summary: format!("{} edge cases, {changed} changed by the run", cases.len()),
        detail: json!(cases),
    })
}

/// The table's health after the run against before it: size, dead row
/// versions, statistics, the physical order of `batch_by`. Fails past the
/// brief's `max_size_growth_pct` or under its `min_correlation`; without a
/// growth limit, growth past [`SIZE_GROWTH_WARNING_PCT`] is warned of.
///
/// [`SIZE_GROWTH_WARNING_PCT`]: backfill_shared::brief::SIZE_GROWTH_WARNING_PCT
async fn health(
    pool: &PgPool,
    run: &Run,
    table: &backfill_shared::sql::TableName,
) -> Result<Check> {
    use backfill_shared::brief::SIZE_GROWTH_WARNING_PCT;
    use std::fmt::Write as _;
    let column = &run.brief.scope.batch_by.column;
    let now = crate::catalog::health(pool, table, column)
        .await
        .map_err(|e| CliError::Internal(format!("reading the health of {table}: {e}")))?;
    let reclaimable = crate::catalog::reclaimable(pool, table)
        .await
        .map_err(|e| CliError::Internal(format!("measuring the bloat of {table}: {e}")))?;
    let params = &run.params;
    // Runs recorded before health was kept have their sizes only.
    let before: Option<crate::catalog::Health> =
        serde_json::from_value(params["target_health"].clone()).ok();
    let before_t = params["target_table_bytes"].as_i64();
    let before_i = params["target_index_bytes"].as_i64();
    let mib = |b: Option<i64>| {
        b.map_or_else(
            || "?".into(),
            |b| format!("{:.1} MiB", b as f64 / 1_048_576.0),
        )
    };
    let growth = before_t
        .zip(before_i)
        .map(|(t, i)| t + i)
        .filter(|b| *b > 0)
        .map(|b| (now.bytes() - b) as f64 * 100.0 / b as f64);
    let limits = &run.brief.validation;
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    match (growth, limits.max_size_growth_pct) {
        (Some(g), Some(max)) if g > max => problems.push(format!(
            "grew {g:.0} %, past validation.max_size_growth_pct = {max}"
        )),
        (Some(g), None) if g > SIZE_GROWTH_WARNING_PCT => notes.push(format!(
            "WARNING: grew {g:.0} %, past {SIZE_GROWTH_WARNING_PCT} % (VACUUM FULL or a rewrite reclaims it; validation.max_size_growth_pct holds it)"
        )),
        _ => {}
    }
    let fresh = now.analyzed_at.is_some_and(|at| at >= run.created_at);
    if !fresh {
        notes.push("statistics from before the run (cutover runs ANALYZE)".into());
    }
    let order = |c: Option<f64>| c.map_or_else(|| "?".into(), |c| format!("{c:.2}"));
    match (now.correlation, limits.min_correlation) {
        (Some(c), Some(min)) if c < min => problems.push(format!(
            "the physical order of {column} is {c:.2}, under validation.min_correlation = {min} (CLUSTER, or a rewrite in {column} order, restores it)"
        )),
        (None, Some(min)) => problems.push(format!(
            "{table} has no statistics on {column} to hold validation.min_correlation = {min}: ANALYZE it"
        )),
        _ => {}
    }
    // A failure says only what failed, in figures that hold still (an
    // acceptance holds for a later validation failing with the same words);
    // a pass gives every figure.
    let summary = if problems.is_empty() {
        let mut summary = format!(
            "table {} -> {}, indexes {} -> {}{}; {} dead row versions ({:.0} %); order of {column} {} -> {}",
            mib(before_t),
            mib(Some(now.table_bytes)),
            mib(before_i),
            mib(Some(now.index_bytes)),
            growth.map_or_else(String::new, |g| format!(" ({g:+.0} %)")),
            now.dead_tuples,
            now.dead_pct(),
            order(before.as_ref().and_then(|b| b.correlation)),
            order(now.correlation),
        );
        if let Some(bytes) = reclaimable {
            let _ = write!(
                summary,
                "; {} in dead rows and free space (pgstattuple)",
                mib(Some(bytes))
            );
        }
        for note in &notes {
            summary.push_str("; ");
            summary.push_str(note);
        }
        summary
    } else {
        problems.join("; ")
    };
    Ok(Check {
        name: "table health",
        passed: problems.is_empty(),
        summary,
        detail: json!({
            "table_bytes_before": before_t, "table_bytes": now.table_bytes,
            "index_bytes_before": before_i, "index_bytes": now.index_bytes,
            "growth_pct": growth,
            "dead_tuples": now.dead_tuples, "live_tuples": now.live_tuples,
            "reclaimable_bytes": reclaimable,
            "analyzed_at": now.analyzed_at, "statistics_fresh": fresh,
            "correlation_before": before.as_ref().and_then(|b| b.correlation),
            "correlation": now.correlation,
            "max_size_growth_pct": limits.max_size_growth_pct,
            "min_correlation": limits.min_correlation,
        }),
    })
}

/// The dashboards' queries timed on what the run will expose against their
/// times before it.
async fn latency(
    pool: &PgPool,
    run: &Run,
    table: &backfill_shared::sql::TableName,
) -> Result<Check> {
    let queries = &run.brief.validation.queries;
    let before = crate::latency::recorded(&run.params);
    let now = crate::latency::time_all(pool, &run.brief, table).await?;
    let judged: Vec<(bool, String)> = queries
        .iter()
        .zip(&now)
        .map(|(q, now)| crate::latency::judge(q, before.iter().find(|b| b.name == q.name), now))
        .collect();
    let failed: Vec<&str> = judged
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, said)| said.as_str())
        .collect();
    Ok(Check {
        name: "query latency",
        passed: failed.is_empty(),
        summary: if queries.is_empty() {
            "none declared ([[validation.queries]])".into()
        } else if failed.is_empty() {
            judged
                .iter()
                .map(|(_, said)| said.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        } else {
            failed.join("; ")
        },
        detail: json!({ "table": table.to_string(), "before": before, "now": now,
                        "runs": crate::latency::RUNS, "noise_ms": crate::latency::NOISE_MS }),
    })
}

/// The checklist as a table.
#[must_use]
pub fn render(checks: &[Check]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{:<24} {:<6} summary", "check", "result");
    for c in checks {
        let _ = writeln!(
            s,
            "{:<24} {:<6} {}",
            c.name,
            if c.passed { "pass" } else { "FAIL" },
            c.summary
        );
    }
    s
}
