//! `backfill sample BRIEF --slice START..END`: a test run on a representative
//! slice that touches nothing. The source runs on the slice into a temporary
//! scratch table; the command then compares it with the target's rows of the same
//! slice — row counts, every metric per group, the records that changed most and
//! the brief's edge cases side by side — and extrapolates the measured runtime to
//! the whole run.

use crate::{CliError, Result};
use backfill_shared::brief::{BatchRange, Bound, BoundKind, Brief, Metric};
use backfill_shared::checks::Unmatched;
use backfill_shared::sql::{column_list, key_join, quote_ident};
use serde::Serialize;
use sqlx::{AssertSqlSafe, Connection as _, PgPool};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct Sample {
    pub slice: (String, String),
    /// The rule the slice follows: its period's reason, or "the current rules (scope.source)".
    pub rule: String,
    pub rows_old: i64,
    pub rows_new: i64,
    pub rows_changed: i64,
    /// The slice's target rows the source does not reproduce (removed, or
    /// left stale under `on_missing = "keep"`), measured as batches measure them.
    pub unmatched: Unmatched,
    /// What happens to unmatched rows: removed, or left stale.
    pub fate: &'static str,
    pub metrics: Vec<SampleMetric>,
    /// The records that changed most, then the edge cases: key, old row, new row.
    pub records: Vec<SampleRecord>,
    pub seconds: f64,
    /// The slice's share of the whole scope.
    pub fraction: f64,
    pub estimated_rows: Option<i64>,
    pub estimated_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct SampleMetric {
    pub metric: String,
    pub group: String,
    pub old: Option<f64>,
    pub new: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct SampleRecord {
    pub why: &'static str,
    pub key: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// Parses `START..END` in the type of the brief's `batch_by`.
pub fn parse_slice(brief: &Brief, text: &str) -> Result<(Bound, Bound)> {
    let kind: BoundKind = brief.scope.batch_by.kind();
    let bad = || {
        CliError::BadInput(format!(
            "--slice {text:?}: write START..END with {} bounds, END exclusive (e.g. {}..{})",
            kind.as_str(),
            brief.scope.batch_by.start,
            brief.scope.batch_by.end
        ))
    };
    let (lo, hi) = text.split_once("..").ok_or_else(bad)?;
    let lo = Bound::parse(kind, lo).ok_or_else(bad)?;
    let hi = Bound::parse(kind, hi).ok_or_else(bad)?;
    if lo >= hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

fn span(lo: Bound, hi: Bound) -> f64 {
    match (lo, hi) {
        (Bound::Integer(a), Bound::Integer(b)) => (b - a) as f64,
        (Bound::Date(a), Bound::Date(b)) => (b - a).num_days() as f64,
        (Bound::Timestamp(a), Bound::Timestamp(b)) => (b - a).num_seconds() as f64,
        _ => 0.0,
    }
}

/// The source's rows of `[lo, hi)` in the scratch table `bf_sample` (created
/// on the first call of a transaction, emptied on the next), measured against
/// the target: the source's row count and the target rows it leaves unmatched.
async fn scratch_batch(
    tx: &mut sqlx::PgConnection,
    brief: &Brief,
    lo: Bound,
    hi: Bound,
    create: bool,
) -> std::result::Result<(i64, Unmatched), sqlx::Error> {
    let scope = &brief.scope;
    let target = scope.target.quoted();
    let all = column_list(&scope.written_columns(), None);
    let prepare = if create {
        format!(
            "CREATE TEMPORARY TABLE bf_sample ON COMMIT DROP AS SELECT {all} FROM {target} WITH NO DATA"
        )
    } else {
        "TRUNCATE bf_sample".to_owned()
    };
    sqlx::query(AssertSqlSafe(prepare))
        .execute(&mut *tx)
        .await?;
    let rows = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO bf_sample ({all}) SELECT {all} FROM ({}\n) AS s",
        scope.source_for(lo)
    )))
    .bind(lo)
    .bind(hi)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let (rows_unmatched, at_lower_bound, range_rows): (i64, i64, i64) = sqlx::query_as(
        AssertSqlSafe(Unmatched::measure_sql(scope, &target, "bf_sample")),
    )
    .bind(lo)
    .bind(hi)
    .fetch_one(&mut *tx)
    .await?;
    Ok((
        i64::try_from(rows).unwrap_or(i64::MAX),
        Unmatched {
            rows: rows_unmatched,
            at_lower_bound,
            range_rows,
            source_at_lower_bound: None,
        },
    ))
}

/// A source that fails on real data is bad input; a lost connection is not.
pub(crate) fn source_failed(e: sqlx::Error, on: &str) -> CliError {
    match e {
        sqlx::Error::Database(db) => {
            CliError::BadInput(format!("scope.source fails on {on}: {}", db.message()))
        }
        other => other.into(),
    }
}

/// Batches `plan` runs the source on, at most.
const SAMPLED_BATCHES: usize = 5;

/// One batch `plan` ran the source on.
#[derive(Debug, Clone)]
pub struct SampledBatch {
    pub range: BatchRange,
    /// Rows the source yielded.
    pub rows: i64,
    pub unmatched: Unmatched,
    /// The source into a scratch table and the unmatched-rows measure.
    pub seconds: f64,
    /// The source run a second time on the same batch, in the same transaction.
    pub rerun: Rerun,
}

/// The source run on up to five batches spread over the plan (first, last and
/// between), each measured for unmatched rows as a batch would be, timed, and
/// run a second time to see that it yields the same rows; nothing is written.
pub async fn sampled_batches(
    pool: &PgPool,
    brief: &Brief,
    batches: &[BatchRange],
) -> Result<Vec<SampledBatch>> {
    let n = batches.len();
    let mut picks: Vec<usize> = (0..SAMPLED_BATCHES)
        .map(|i| i * n.saturating_sub(1) / (SAMPLED_BATCHES - 1))
        .collect();
    picks.dedup();
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let mut out = Vec::with_capacity(picks.len());
    for (i, pick) in picks.into_iter().enumerate() {
        let Some(batch) = batches.get(pick) else {
            continue;
        };
        let on = format!("batch [{}, {})", batch.lo, batch.hi);
        let started = Instant::now();
        let (rows, unmatched) = scratch_batch(&mut tx, brief, batch.lo, batch.hi, i == 0)
            .await
            .map_err(|e| source_failed(e, &on))?;
        let seconds = started.elapsed().as_secs_f64();
        let rerun = rerun(&mut tx, brief, batch.lo, batch.hi)
            .await
            .map_err(|e| source_failed(e, &on))?;
        out.push(SampledBatch {
            range: *batch,
            rows,
            unmatched,
            seconds,
            rerun,
        });
    }
    tx.rollback().await?;
    Ok(out)
}

/// The source run again on a batch whose first run is in `bf_sample`: the rows
/// either run yielded and the other did not, with one of each as an example.
/// The second run goes into a table of the same columns as the first
/// (`bf_sample_again`), so both are typed like the target — a `0` into
/// `numeric(18,2)` is `0.00` both times — and then compare as text, so every
/// type compares and only real differences count.
async fn rerun(
    tx: &mut sqlx::PgConnection,
    brief: &Brief,
    lo: Bound,
    hi: Bound,
) -> sqlx::Result<Rerun> {
    let written = brief.scope.written_columns();
    let all = column_list(&written, None);
    sqlx::raw_sql(
        "CREATE TEMPORARY TABLE IF NOT EXISTS bf_sample_again (LIKE bf_sample) ON COMMIT DROP;
         TRUNCATE bf_sample_again",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO bf_sample_again ({all}) SELECT {all} FROM ({source}\n) AS s",
        source = brief.scope.source_for(lo)
    )))
    .bind(lo)
    .bind(hi)
    .execute(&mut *tx)
    .await?;
    let (differing, first, second): (i64, Option<String>, Option<String>) =
        sqlx::query_as(AssertSqlSafe(format!(
            "WITH again AS MATERIALIZED (SELECT ROW({all})::text AS r FROM bf_sample_again),
                  first AS MATERIALIZED (SELECT ROW({all})::text AS r FROM bf_sample),
                  only_first AS (SELECT r FROM first EXCEPT ALL SELECT r FROM again),
                  only_again AS (SELECT r FROM again EXCEPT ALL SELECT r FROM first)
             SELECT (SELECT count(*) FROM only_first) + (SELECT count(*) FROM only_again),
                    (SELECT min(r) FROM only_first), (SELECT min(r) FROM only_again)"
        )))
        .fetch_one(&mut *tx)
        .await?;
    Ok(Rerun {
        differing,
        first,
        second,
    })
}

/// What the source yielded when run a second time on a sampled batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rerun {
    /// Rows one run yielded and the other did not; 0 when the source repeats itself.
    pub differing: i64,
    /// A row only the first run yielded, and one only the second did.
    pub first: Option<String>,
    pub second: Option<String>,
}

/// How many changed records to show.
const TOP: i64 = 5;

pub async fn sample(pool: &PgPool, brief: &Brief, lo: Bound, hi: Bound) -> Result<Sample> {
    let scope = &brief.scope;
    // A slice follows one rule, as a batch does.
    if let Some(p) = scope.periods.iter().find(|p| lo < p.until && p.until < hi) {
        return Err(CliError::BadInput(format!(
            "the slice [{lo}, {hi}) straddles the end of the period \"{}\" at {}; sample each side of it",
            p.reason, p.until
        )));
    }
    let target = scope.target.quoted();
    let written = scope.written_columns();
    let all = column_list(&written, None);
    let in_slice = scope.owned_range("");
    let key_match = key_join(&scope.key, "o", "n");
    let key_text = scope
        .key
        .iter()
        .map(|k| format!("coalesce(o.{0}, n.{0})::text", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" || ', ' || ");
    let row_of = |alias: &str| {
        format!(
            "CASE WHEN {alias} IS NULL THEN NULL ELSE ROW({})::text END",
            column_list(&written, Some(alias))
        )
    };

    // One connection, one transaction that is rolled back: nothing is left behind.
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let started = Instant::now();
    let (rows_new, unmatched) = scratch_batch(&mut tx, brief, lo, hi, true)
        .await
        .map_err(|e| source_failed(e, "the slice"))?;
    let seconds = started.elapsed().as_secs_f64();
    let old = format!("(SELECT {all} FROM {target} WHERE {in_slice})");
    let (rows_old, rows_changed): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT (SELECT count(*) FROM {target} WHERE {in_slice}),
                (SELECT count(*) FROM {old} o FULL JOIN bf_sample n ON {key_match}
                  WHERE ROW({o}) IS DISTINCT FROM ROW({n}))",
        o = column_list(&written, Some("o")),
        n = column_list(&written, Some("n")),
    )))
    .bind(lo)
    .bind(hi)
    .fetch_one(&mut *tx)
    .await?;

    let mut metrics = Vec::new();
    for m in &brief.validation.metrics {
        let olds: Vec<(Option<String>, Option<f64>)> =
            sqlx::query_as(AssertSqlSafe(m.query(&old, "true")))
                .bind(lo)
                .bind(hi)
                .fetch_all(&mut *tx)
                .await?;
        let news: Vec<(Option<String>, Option<f64>)> =
            sqlx::query_as(AssertSqlSafe(m.query("bf_sample", "true")))
                .fetch_all(&mut *tx)
                .await?;
        let mut groups: BTreeMap<String, (Option<f64>, Option<f64>)> = BTreeMap::new();
        for (g, v) in olds {
            groups.entry(Metric::group_name(g)).or_default().0 = v;
        }
        for (g, v) in news {
            groups.entry(Metric::group_name(g)).or_default().1 = v;
        }
        metrics.extend(groups.into_iter().map(|(group, (old, new))| SampleMetric {
            metric: m.name.clone(),
            group,
            old,
            new,
        }));
    }

    // The records that changed most: by the largest change of any numeric column.
    let numeric: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0
            AND NOT attisdropped AND atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype,
            'numeric'::regtype, 'float4'::regtype, 'float8'::regtype) ORDER BY attnum",
    )
    .bind(&target)
    .fetch_all(&mut *tx)
    .await?;
    let magnitude = scope
        .columns
        .iter()
        .filter(|c| numeric.contains(c))
        .map(|c| {
            format!(
                "coalesce(abs(n.{0}::float8 - o.{0}::float8), 0)",
                quote_ident(c)
            )
        })
        .collect::<Vec<_>>();
    let order = if magnitude.is_empty() {
        "1".to_owned()
    } else {
        format!("greatest({}) DESC", magnitude.join(", "))
    };
    let side_by_side = format!(
        "SELECT {key_text}, {o}, {n} FROM {old} o FULL JOIN bf_sample n ON {key_match}",
        o = row_of("o"),
        n = row_of("n"),
    );
    let changed: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as(AssertSqlSafe(format!(
            "{side_by_side} WHERE ROW({o}) IS DISTINCT FROM ROW({nn}) ORDER BY {order} LIMIT {TOP}",
            o = column_list(&written, Some("o")),
            nn = column_list(&written, Some("n")),
        )))
        .bind(lo)
        .bind(hi)
        .fetch_all(&mut *tx)
        .await?;
    let mut records: Vec<SampleRecord> = changed
        .into_iter()
        .map(|(key, old, new)| SampleRecord {
            why: "changed most",
            key,
            old,
            new,
        })
        .collect();
    for case in &brief.validation.edge_cases {
        let wanted = case.join(", ");
        let found: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
            AssertSqlSafe(format!("{side_by_side} WHERE {key_text} = $3")),
        )
        .bind(lo)
        .bind(hi)
        .bind(&wanted)
        .fetch_optional(&mut *tx)
        .await?;
        let (old, new) = found.map_or((None, None), |(_, o, n)| (o, n));
        records.push(SampleRecord {
            why: "edge case",
            key: wanted,
            old,
            new,
        });
    }
    tx.rollback().await?;

    let whole = span(scope.batch_by.start, scope.batch_by.end);
    let fraction = if whole > 0.0 {
        span(lo, hi) / whole
    } else {
        0.0
    };
    let in_flight = f64::from(brief.limits.max_in_flight.max(1));
    Ok(Sample {
        slice: (lo.to_string(), hi.to_string()),
        rule: scope.rule_name(lo).to_owned(),
        rows_old,
        rows_new,
        rows_changed,
        unmatched,
        fate: Unmatched::fate(brief),
        metrics,
        records,
        seconds,
        fraction,
        estimated_rows: (fraction > 0.0).then(|| (rows_new as f64 / fraction).round() as i64),
        estimated_seconds: (fraction > 0.0).then(|| seconds / fraction / in_flight),
    })
}

impl Sample {
    #[must_use]
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Sample of [{}, {}): nothing was written.",
            self.slice.0, self.slice.1
        );
        let _ = writeln!(s, "  rule:    {}", self.rule);
        let _ = writeln!(
            s,
            "  rows:    {} now, {} after the backfill ({:+}); {} would change",
            self.rows_old,
            self.rows_new,
            self.rows_new - self.rows_old,
            self.rows_changed
        );
        let u = &self.unmatched;
        let _ = writeln!(
            s,
            "  unmatched: {} of {} target rows in the slice ({:.2}%) have no counterpart in the source and would be {}{}",
            u.rows,
            u.range_rows,
            u.pct(),
            self.fate,
            u.lower_bound_hint()
                .map_or_else(String::new, |h| format!("; {h}"))
        );
        let _ = writeln!(s, "  metrics:");
        for m in &self.metrics {
            let delta = match (m.old, m.new) {
                (Some(o), Some(n)) if o != 0.0 => {
                    format!("{:+.2} ({:+.2}%)", n - o, (n - o) / o.abs() * 100.0)
                }
                (o, n) => format!("{:+.2}", n.unwrap_or(0.0) - o.unwrap_or(0.0)),
            };
            let v = |x: Option<f64>| x.map_or_else(|| "none".into(), |x| format!("{x:.2}"));
            let _ = writeln!(
                s,
                "    {} [{}]: {} -> {}  {delta}",
                m.metric,
                m.group,
                v(m.old),
                v(m.new)
            );
        }
        let _ = writeln!(s, "  records:");
        for r in &self.records {
            let _ = writeln!(
                s,
                "    {} {} ({})",
                r.why,
                r.key,
                if r.old == r.new {
                    "unchanged"
                } else {
                    "differs"
                }
            );
            let _ = writeln!(s, "      now:   {}", r.old.as_deref().unwrap_or("(no row)"));
            let _ = writeln!(s, "      after: {}", r.new.as_deref().unwrap_or("(no row)"));
        }
        let _ = writeln!(
            s,
            "  runtime: {:.3} s for {:.2}% of the scope",
            self.seconds,
            self.fraction * 100.0
        );
        if let (Some(rows), Some(secs)) = (self.estimated_rows, self.estimated_seconds) {
            let _ = writeln!(
                s,
                "  whole run: ~{rows} rows, ~{secs:.1} s of source time with max_in_flight batches at once"
            );
        }
        s
    }
}
