//! `backfill new --target SCHEMA.TABLE`: a first brief drafted from the
//! catalog — the key, the columns, a `batch_by` with bounds and a step from
//! the table's own figures, the expected rows and the dependents — with every
//! section the lint asks for, each commented. What only a person can write
//! (reason, owner, reviewer, the source) is left blank, so the lint names
//! exactly those fields until they are filled.

use crate::preflight;
use crate::{CliError, Result};
use backfill_shared::brief::BoundKind;
use backfill_shared::sql::{TableName, quote_ident};
use sqlx::{AssertSqlSafe, PgPool};

/// Rows a drafted batch aims at.
const BATCH_ROWS: f64 = 50_000.0;
/// Fewest batches a draft plans (when the range allows): a limit can stop a
/// run early only if there is an early.
const MIN_BATCHES: f64 = 10.0;
/// Most batches a draft plans.
const MAX_BATCHES: f64 = 10_000.0;

/// A column of the target.
#[derive(Debug)]
struct Column {
    name: String,
    sql_type: String,
    generated: bool,
}

/// What the draft found, besides the brief's text.
#[derive(Debug, serde::Serialize)]
pub struct Draft {
    pub target: String,
    pub key: Vec<String>,
    pub batch_by: String,
    pub batches: usize,
    pub expected_rows: i64,
    pub downstream: Vec<String>,
    /// The fields a person must fill before `plan` passes.
    pub to_fill: Vec<&'static str>,
    pub text: String,
}

/// Where the rows per batch go, once the batches are counted.
const PER_BATCH: &str = "{rows per batch}";

/// The fields only a person can write.
const TO_FILL: [&str; 4] = [
    "brief.reason",
    "brief.owner",
    "brief.reviewer",
    "scope.source",
];

/// Drafts a brief for `target`, batched by `batch_by` if given.
pub async fn draft(pool: &PgPool, target: &str, batch_by: Option<&str>) -> Result<Draft> {
    let table = TableName::parse(target)
        .ok_or_else(|| CliError::BadInput(format!("--target {target:?}: write schema.table")))?;
    let Some(oid) = preflight::table_oid(pool, &table).await? else {
        return Err(CliError::BadInput(format!(
            "there is no table {table}; `backfill new` drafts a brief for a table that exists (check the schema and the name)"
        )));
    };
    let columns: Vec<Column> = sqlx::query_as::<_, (String, String, bool)>(
        "SELECT attname::text, format_type(atttypid, atttypmod), attgenerated <> ''
           FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(name, sql_type, generated)| Column {
        name,
        sql_type,
        generated,
    })
    .collect();
    let key = key(pool, oid, &table).await?;
    let (by, kind) = pick_batch_by(pool, oid, &columns, &key, batch_by, &table).await?;
    let rows = match preflight::planner_rows(pool, oid).await? {
        Some(rows) if rows > 0 => rows,
        _ => {
            sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT count(*) FROM {}",
                table.quoted()
            )))
            .fetch_one(pool)
            .await?
        }
    };
    let bounds = bounds(pool, &table, &by, kind, rows).await?;
    let downstream: Vec<String> = preflight::dependents(pool, oid, &table, &[])
        .await?
        .into_iter()
        .map(|d| d.name)
        .fold(Vec::new(), |mut all, name| {
            if !all.contains(&name) {
                all.push(name);
            }
            all
        });
    let written: Vec<&Column> = columns
        .iter()
        .filter(|c| !c.generated && !key.contains(&c.name) && c.name != by)
        .collect();
    if written.is_empty() {
        return Err(CliError::BadInput(format!(
            "{table} has no column beside its key ({}) and {by} for a backfill to rewrite",
            key.join(", ")
        )));
    }
    let text = render(
        &table,
        &key,
        &written,
        &by,
        &bounds,
        rows,
        &downstream,
        &columns,
    );
    let batches = backfill_shared::brief::Brief::parse(&fill_for_count(&text))
        .ok()
        .and_then(|b| b.scope.batch_by.plan().ok())
        .map_or(0, |p| p.len());
    let text = text.replacen(
        PER_BATCH,
        &(rows / i64::try_from(batches.max(1)).unwrap_or(1)).to_string(),
        1,
    );
    Ok(Draft {
        target: table.to_string(),
        key,
        batch_by: by,
        batches,
        expected_rows: rows,
        downstream,
        to_fill: TO_FILL.to_vec(),
        text,
    })
}

/// The draft with placeholders in the person-only fields, to count its batches.
fn fill_for_count(text: &str) -> String {
    text.replacen("reason = \"\"", "reason = \"x\"", 1)
        .replacen("owner = \"\"", "owner = \"x\"", 1)
        .replacen("reviewer = \"\"", "reviewer = \"y\"", 1)
        .replacen("source = \"\"\"\n\"\"\"", "source = \"$1 $2\"", 1)
}

/// The primary key, else the narrowest unique constraint or index on columns
/// that are all NOT NULL, without expressions or a predicate.
async fn key(
    pool: &PgPool,
    oid: sqlx::postgres::types::Oid,
    table: &TableName,
) -> Result<Vec<String>> {
    let keys: Vec<(bool, Vec<String>)> = sqlx::query_as(
        "SELECT i.indisprimary, array_agg(a.attname::text ORDER BY k.ord)
           FROM pg_index i
           CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
          WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
          GROUP BY i.indexrelid, i.indisprimary
         HAVING bool_and(a.attnotnull)
          ORDER BY i.indisprimary DESC, count(*), i.indexrelid",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    keys.into_iter().next().map(|(_, k)| k).ok_or_else(|| {
        CliError::BadInput(format!(
            "{table} has no primary key nor unique constraint on NOT NULL columns, so nothing says which row is which; \
             add one (ALTER TABLE {table} ADD PRIMARY KEY (...)), then draft again"
        ))
    })
}

/// The `batch_by` column: the one asked for, else an indexed date or
/// timestamp column, else the key's first column when it can bound batches,
/// else any date or timestamp column.
async fn pick_batch_by(
    pool: &PgPool,
    oid: sqlx::postgres::types::Oid,
    columns: &[Column],
    key: &[String],
    asked: Option<&str>,
    table: &TableName,
) -> Result<(String, BoundKind)> {
    let kind_of = |c: &Column| {
        [BoundKind::Date, BoundKind::Timestamp, BoundKind::Integer]
            .into_iter()
            .find(|k| k.matches_sql_type(&c.sql_type))
    };
    if let Some(asked) = asked {
        let column = columns.iter().find(|c| c.name == asked).ok_or_else(|| {
            CliError::BadInput(format!(
                "--batch-by {asked:?}: {table} has no such column (it has {})",
                columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let kind = kind_of(column).ok_or_else(|| {
            CliError::BadInput(format!(
                "--batch-by {asked}: its type {} cannot bound batches; choose a date, timestamp or integer column",
                column.sql_type
            ))
        })?;
        return Ok((column.name.clone(), kind));
    }
    let leading: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
          WHERE i.indrelid = $1",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    let time = |c: &&Column| matches!(kind_of(c), Some(BoundKind::Date | BoundKind::Timestamp));
    let chosen = columns
        .iter()
        .filter(time)
        .find(|c| leading.contains(&c.name))
        .or_else(|| {
            key.first()
                .and_then(|k| columns.iter().find(|c| &c.name == k))
                .filter(|c| kind_of(c).is_some())
        })
        .or_else(|| columns.iter().find(time))
        .ok_or_else(|| {
            CliError::BadInput(format!(
                "{table} has no date, timestamp or integer column to cut batches along; name one with --batch-by"
            ))
        })?;
    let kind = kind_of(chosen).unwrap_or(BoundKind::Integer);
    Ok((chosen.name.clone(), kind))
}

/// `batch_by`'s start, end and step, as the brief writes them.
struct Bounds {
    start: String,
    end: String,
    step: String,
}

/// Bounds from the column's own minimum and maximum, aligned to the step, and
/// a step that cuts the rows into batches of about [`BATCH_ROWS`].
async fn bounds(
    pool: &PgPool,
    table: &TableName,
    column: &str,
    kind: BoundKind,
    rows: i64,
) -> Result<Bounds> {
    let c = quote_ident(column);
    let t = table.quoted();
    let batches = (rows as f64 / BATCH_ROWS)
        .ceil()
        .clamp(MIN_BATCHES, MAX_BATCHES);
    let empty = || {
        CliError::BadInput(format!(
            "{table}.{column} holds no value, so the draft cannot bound batches; fill the table first, or write batch_by by hand"
        ))
    };
    if kind == BoundKind::Integer {
        let (lo, hi): (Option<i64>, Option<i64>) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT min({c})::bigint, max({c})::bigint FROM {t}"
        )))
        .fetch_one(pool)
        .await?;
        let (Some(lo), Some(hi)) = (lo, hi) else {
            return Err(empty());
        };
        let span = (hi - lo + 1) as f64;
        let step = nice((span / batches).max(1.0));
        let start = lo.div_euclid(step) * step;
        let end = (hi.div_euclid(step) + 1) * step;
        return Ok(Bounds {
            start: start.to_string(),
            end: end.to_string(),
            step: step.to_string(),
        });
    }
    let (days,): (Option<f64>,) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT extract(epoch FROM max({c})::timestamp - min({c})::timestamp)::float8 / 86400 FROM {t}"
    )))
    .fetch_one(pool)
    .await?;
    let days = days.ok_or_else(empty)?;
    let per_batch = (days + 1.0) / batches;
    let ladder: &[(&str, &str, f64)] = &[
        ("hour", "1 hour", 1.0 / 24.0),
        ("day", "1 day", 1.0),
        ("week", "1 week", 7.0),
        ("month", "1 month", 30.44),
        ("quarter", "3 months", 91.3),
        ("year", "1 year", 365.25),
    ];
    let usable: Vec<&(&str, &str, f64)> = ladder
        .iter()
        .filter(|(unit, ..)| kind == BoundKind::Timestamp || *unit != "hour")
        .collect();
    let (unit, step, _) = usable
        .iter()
        .rev()
        .find(|(.., d)| *d <= per_batch)
        .or(usable.first())
        .copied()
        .copied()
        .unwrap_or(("year", "1 year", 365.25));
    let sql_type = kind.sql_type();
    let (start, end): (String, String) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT date_trunc($1, min({c})::timestamp)::{sql_type}::text,
                (date_trunc($1, max({c})::timestamp) + $2::interval)::{sql_type}::text
           FROM {t}"
    )))
    .bind(unit)
    .bind(step)
    .fetch_one(pool)
    .await?;
    Ok(Bounds {
        start: format!("\"{start}\""),
        end: format!("\"{end}\""),
        step: format!("\"{step}\""),
    })
}

/// The largest 1, 2 or 5 times a power of ten at or below `n` (at least 1),
/// so there are at least as many batches as aimed at.
fn nice(n: f64) -> i64 {
    let mut best = 1.0;
    let mut scale = 1.0;
    while scale <= n {
        for m in [1.0, 2.0, 5.0] {
            if m * scale <= n {
                best = m * scale;
            }
        }
        scale *= 10.0;
    }
    best as i64
}

/// A column name as SQL text: bare when PostgreSQL would read it as written.
fn ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_owned()
    } else {
        quote_ident(name)
    }
}

/// A TOML string of a list of names.
fn names(list: &[String]) -> String {
    format!(
        "[{}]",
        list.iter()
            .map(|n| format!("{:?}", n))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[allow(clippy::too_many_arguments)]
fn render(
    table: &TableName,
    key: &[String],
    written: &[&Column],
    by: &str,
    bounds: &Bounds,
    rows: i64,
    downstream: &[String],
    all: &[Column],
) -> String {
    let columns: Vec<String> = written.iter().map(|c| c.name.clone()).collect();
    let yielded: Vec<String> = all
        .iter()
        .filter(|c| !c.generated)
        .map(|c| c.name.clone())
        .collect();
    let name = format!("{}-backfill", table.table.replace('_', "-"));
    let metric_group = if all
        .iter()
        .find(|c| c.name == by)
        .is_some_and(|c| !BoundKind::Integer.matches_sql_type(&c.sql_type))
    {
        format!("\nby = {:?}", format!("date_trunc('year', {})", ident(by)))
    } else {
        String::new()
    };
    format!(
        r#"# A brief drafted by `backfill new` from the catalog of {table}.
# Fill in the four blank fields (the lint names them), read every other line,
# then `backfill plan` this file. The operators' guide: write it for the
# reviewer, who must be able to tell from it alone what will change.

[brief]
# What the run is called in the run log, `backfill list` and the report.
name = "{name}"
# WRITE: why history must change, in a sentence stakeholders understand.
reason = ""
# WRITE: who runs the backfill and answers for it (a name in `backfill people`).
owner = ""
# WRITE: who approves it, never the owner (a name in `backfill people`).
reviewer = ""
# low-risk-enrichment, metric-changing, schema-migration or production-critical.
risk = "metric-changing"

[scope]
# The table the backfill rewrites.
target = "{table}"
# What identifies one row (from the table's primary key or unique constraint).
key = {key}
# The columns the backfill may rewrite (every other column of the table).
columns = {columns}
# Batches cut along {by} over the table's own range: about {per} rows each.
batch_by = {{ column = "{by}", start = {start}, end = {end}, step = {step} }}
# The rows in scope now (the planner's count); `validate` checks the result against it.
expected_rows = {rows}
# WRITE: the SELECT yielding the corrected rows of one batch, [$1, $2) of {by}:
# it must name {yielded_list}, e.g.
#   SELECT {yielded_sql} FROM ... WHERE {by_q} >= $1 AND {by_q} < $2
source = """
"""

[write]
# merge updates changed rows and inserts new ones in place; see the README for
# staging-swap, partition-overwrite and parallel-version.
strategy = "merge"
# keep: target rows the source no longer yields stay as they are; delete removes them.
on_missing = "keep"
# Keep a before-image of every changed row, so `backfill rollback` can undo the run.
snapshot = true

[dependencies]
# What reads {table}, found in the catalog; add dashboards and exports it cannot see.
downstream = {downstream}
# Who must hear of the change before and after (teams or people).
stakeholders = []

[validation]
# The key is unique: no batch may write a key twice.
max_duplicate_keys = 0
# Records to look at before and after, e.g. [[...key values...]].
edge_cases = []
# Rows per year, measured before and after every batch; a batch moving one by
# more than max_change_pct halts the run.
[[validation.metrics]]
name = "rows"
expr = "count(*)"{metric_group}
max_change_pct = 5

[limits]
# Batches queued or running at once.
max_in_flight = 4

[rollback]
# How to undo the run, in words the reviewer can check.
plan = "Before-images per batch restore every changed row: backfill rollback RUN."
# Days the before-images are kept after the run ends.
retain_days = 14
"#,
        key = names(key),
        columns = names(&columns),
        per = PER_BATCH,
        start = bounds.start,
        end = bounds.end,
        step = bounds.step,
        downstream = names(downstream),
        yielded_list = yielded.join(", "),
        yielded_sql = yielded
            .iter()
            .map(|c| ident(c))
            .collect::<Vec<_>>()
            .join(", "),
        by_q = ident(by),
    )
}
