//! `backfill diff`: what changed, row by row and column by column, computed in
//! the warehouse range by range (ranges in parallel over a few connections).
//!
//! - A run that wrote its target in place (merge, partition-overwrite) is
//!   diffed from its before-images: only the rows it touched are read, each
//!   compared with the row now; a batch that exchanged a partition whole is
//!   diffed against the partition it kept.
//! - A run that built a table (staging-swap, parallel-version) compares the
//!   built table with the live one (before cutover) or the old one (after).
//! - Two tables (`--tables OLD NEW --key ...`) are cut into ranges of a column;
//!   each range is checksummed on both sides first, and only ranges whose
//!   checksums differ are joined row by row.

use crate::lifecycle::fingerprint::RowHash;
use crate::{CliError, Result};
use backfill_shared::brief::{BatchRange, Strategy};
use backfill_shared::control::batches;
use backfill_shared::control::runs::{self, Run};
use backfill_shared::sql::{TableName, column_list, key_join, quote_ident, quote_literal};
use futures_util::StreamExt as _;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool, Row as _};
use std::collections::BTreeMap;
use uuid::Uuid;

/// What to compare and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Compare only these columns (default: every column the backfill writes,
    /// or every common column of two tables).
    pub columns: Vec<String>,
    /// A predicate on the columns, applied to both sides.
    pub filter: Option<String>,
    /// Changed rows to show side by side.
    pub sample: usize,
    /// Ranges compared at once (each on its own connection).
    pub connections: usize,
    pub progress: bool,
}

/// The difference between what was there and what is there.
#[derive(Debug, Default, Serialize)]
pub struct Diff {
    /// How the two sides were read, in words.
    pub method: String,
    pub rows_only_before: i64,
    pub rows_only_after: i64,
    pub rows_changed: i64,
    pub rows_unchanged: i64,
    pub columns: BTreeMap<String, ColumnDiff>,
    pub ranges: Vec<RangeDiff>,
    pub sample: Vec<ChangedRow>,
    /// What could not be compared, and why.
    pub notes: Vec<String>,
}

/// One column's changes among the rows on both sides.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ColumnDiff {
    pub changed: i64,
    /// Of the rows on both sides.
    pub pct: f64,
    pub became_null: i64,
    pub stopped_null: i64,
    /// Numeric columns: the sum of the changes, the largest absolute change,
    /// and the largest change relative to the value before.
    pub sum_change: Option<f64>,
    pub max_abs_change: Option<f64>,
    pub max_rel_change: Option<f64>,
}

/// One range's counts.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RangeDiff {
    pub lo: String,
    pub hi: String,
    /// The run's batch, when the range is one.
    pub batch_no: Option<u32>,
    pub only_before: i64,
    pub only_after: i64,
    pub changed: i64,
    pub unchanged: i64,
}

/// A changed row, before and after, as JSON objects of its columns.
#[derive(Debug, Clone, Serialize)]
pub struct ChangedRow {
    /// `changed most`, or `edge case`.
    pub why: &'static str,
    pub key: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    /// The sum of its numeric columns' absolute changes.
    pub change: f64,
}

/// The key and compared columns, with which are numeric.
#[derive(Debug, Clone)]
struct Spec {
    key: Vec<String>,
    columns: Vec<(String, bool)>,
}

/// One comparison's figures: totals, per column.
#[derive(Debug, Default)]
struct Figures {
    only_before: i64,
    only_after: i64,
    changed: i64,
    unchanged: i64,
    columns: Vec<ColumnDiff>,
}

impl Spec {
    fn names(&self) -> Vec<String> {
        self.columns.iter().map(|(c, _)| c.clone()).collect()
    }

    /// `k..., c...` of a side, for its SELECT list.
    fn select_list(&self, alias: &str) -> String {
        let mut all = self.key.clone();
        all.extend(self.names());
        column_list(&all, Some(alias))
    }

    fn both(&self) -> &'static str {
        "o.bf_here AND n.bf_here"
    }

    fn distinct(&self) -> String {
        if self.columns.is_empty() {
            return "false".into();
        }
        let names = self.names();
        format!(
            "({}) IS DISTINCT FROM ({})",
            column_list(&names, Some("o")),
            column_list(&names, Some("n"))
        )
    }

    /// The aggregates of a comparison of `old` and `new` (subqueries whose
    /// rows carry `bf_here`), grouped by `group` if given.
    fn aggregate_sql(&self, old: &str, new: &str, group: Option<&str>) -> String {
        let both = self.both();
        let distinct = self.distinct();
        let mut items = vec![
            format!("count(*) FILTER (WHERE n.bf_here IS NULL)"),
            format!("count(*) FILTER (WHERE o.bf_here IS NULL)"),
            format!("count(*) FILTER (WHERE {both} AND {distinct})"),
            format!("count(*) FILTER (WHERE {both} AND NOT {distinct})"),
        ];
        for (c, numeric) in &self.columns {
            let c = quote_ident(c);
            items.push(format!(
                "count(*) FILTER (WHERE {both} AND o.{c} IS DISTINCT FROM n.{c})"
            ));
            items.push(format!(
                "count(*) FILTER (WHERE {both} AND o.{c} IS NOT NULL AND n.{c} IS NULL)"
            ));
            items.push(format!(
                "count(*) FILTER (WHERE {both} AND o.{c} IS NULL AND n.{c} IS NOT NULL)"
            ));
            if *numeric {
                let d = format!("(n.{c}::float8 - o.{c}::float8)");
                items.push(format!("sum({d}) FILTER (WHERE {both})"));
                items.push(format!("max(abs({d})) FILTER (WHERE {both})"));
                items.push(format!(
                    "max(abs({d}) / nullif(abs(o.{c}::float8), 0)) FILTER (WHERE {both})"
                ));
            }
        }
        let (group_item, group_by) = group.map_or_else(
            || (String::new(), String::new()),
            |g| (format!("{g}, "), " GROUP BY 1".to_owned()),
        );
        format!(
            "SELECT {group_item}{} FROM ({old}) o FULL JOIN ({new}) n ON {}{group_by}",
            items.join(", "),
            key_join(&self.key, "o", "n")
        )
    }

    /// Reads the aggregates of [`Spec::aggregate_sql`] from `row`, from column `at`.
    fn figures(&self, row: &sqlx::postgres::PgRow, at: usize) -> Result<Figures> {
        let at = std::cell::Cell::new(at);
        let next = || at.replace(at.get() + 1);
        let int = || row.try_get::<i64, _>(next());
        let float = || row.try_get::<Option<f64>, _>(next());
        let mut f = Figures {
            only_before: int()?,
            only_after: int()?,
            changed: int()?,
            unchanged: int()?,
            columns: Vec::new(),
        };
        for (_, numeric) in &self.columns {
            let mut c = ColumnDiff {
                changed: int()?,
                became_null: int()?,
                stopped_null: int()?,
                ..ColumnDiff::default()
            };
            if *numeric {
                c.sum_change = float()?;
                c.max_abs_change = float()?;
                c.max_rel_change = float()?;
            }
            f.columns.push(c);
        }
        Ok(f)
    }

    /// The changed rows of a comparison, largest change first, at most `n`.
    fn sample_sql(&self, old: &str, new: &str, n: usize) -> String {
        let key_text = self
            .key
            .iter()
            .map(|k| format!("coalesce(o.{0}, n.{0})::text", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" || ', ' || ");
        let score = self
            .columns
            .iter()
            .filter(|(_, numeric)| *numeric)
            .map(|(c, _)| {
                let c = quote_ident(c);
                format!("coalesce(abs(n.{c}::float8 - o.{c}::float8), 0)")
            })
            .collect::<Vec<_>>();
        let score = if score.is_empty() {
            "0::float8".to_owned()
        } else {
            score.join(" + ")
        };
        // The rows become JSON once the largest changes are picked, not
        // every changed row before.
        format!(
            "SELECT x.k, CASE WHEN (x.o).bf_here THEN row_to_json(x.o)::text END,
                    CASE WHEN (x.n).bf_here THEN row_to_json(x.n)::text END, x.score
               FROM (SELECT {key_text} AS k, o, n, ({score})::float8 AS score
                       FROM ({old}) o FULL JOIN ({new}) n ON {}
                      WHERE o.bf_here IS NULL OR n.bf_here IS NULL OR {}
                      ORDER BY 4 DESC, 1 LIMIT {n}) x
              ORDER BY x.score DESC, x.k",
            key_join(&self.key, "o", "n"),
            self.distinct()
        )
    }
}

fn sum_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// A comparison of one range: its figures, and its largest changes.
#[derive(Debug)]
struct RangeResult {
    range: RangeDiff,
    figures: Figures,
    sample: Vec<ChangedRow>,
}

impl Diff {
    fn new(spec: &Spec, method: String) -> Self {
        Self {
            method,
            columns: spec
                .columns
                .iter()
                .map(|(c, _)| (c.clone(), ColumnDiff::default()))
                .collect(),
            ..Self::default()
        }
    }

    fn add(&mut self, spec: &Spec, result: RangeResult) {
        let f = &result.figures;
        self.rows_only_before += f.only_before;
        self.rows_only_after += f.only_after;
        self.rows_changed += f.changed;
        self.rows_unchanged += f.unchanged;
        for ((name, _), c) in spec.columns.iter().zip(&f.columns) {
            let into = self.columns.entry(name.clone()).or_default();
            into.changed += c.changed;
            into.became_null += c.became_null;
            into.stopped_null += c.stopped_null;
            into.sum_change = sum_opt(into.sum_change, c.sum_change);
            into.max_abs_change = max_opt(into.max_abs_change, c.max_abs_change);
            into.max_rel_change = max_opt(into.max_rel_change, c.max_rel_change);
        }
        self.ranges.push(result.range);
        self.sample.extend(result.sample);
    }

    /// Percentages, ranges in order, and the `n` largest changes.
    fn finish(&mut self, n: usize) {
        let both = (self.rows_changed + self.rows_unchanged).max(1) as f64;
        for c in self.columns.values_mut() {
            c.pct = c.changed as f64 / both * 100.0;
        }
        // By batch; ranges without one keep their order along `by` (a
        // stable sort: their bounds are text, which would not sort as values).
        self.ranges.sort_by_key(|r| r.batch_no);
        self.sample.sort_by(|a, b| {
            b.change
                .total_cmp(&a.change)
                .then_with(|| a.key.cmp(&b.key))
        });
        self.sample.truncate(n);
    }
}

/// A row's JSON without the diff's own markers (`bf_*`).
fn row_json(text: Option<String>) -> Option<serde_json::Value> {
    let mut value: serde_json::Value = serde_json::from_str(&text?).ok()?;
    if let Some(object) = value.as_object_mut() {
        object.retain(|k, _| !k.starts_with("bf_"));
    }
    Some(value)
}

/// The columns of `table` with whether each is numeric, in table order.
async fn table_columns(pool: &PgPool, table: &TableName) -> Result<Vec<(String, String)>> {
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
           FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY a.attnum",
    )
    .bind(table.quoted())
    .fetch_all(pool)
    .await?;
    if columns.is_empty() {
        return Err(CliError::BadInput(format!("there is no table {table}")));
    }
    Ok(columns)
}

fn is_numeric(sql_type: &str) -> bool {
    ["smallint", "integer", "bigint", "real", "double precision"].contains(&sql_type)
        || sql_type.starts_with("numeric")
}

/// The spec for `key` and the columns to compare: `wanted`, else `default`.
fn spec(
    key: &[String],
    wanted: &[String],
    default: &[String],
    types: &[(String, String)],
) -> Result<Spec> {
    let chosen = if wanted.is_empty() { default } else { wanted };
    let mut columns = Vec::new();
    for c in chosen.iter().filter(|c| !key.contains(c)) {
        let Some((_, t)) = types.iter().find(|(n, _)| n == c) else {
            return Err(CliError::BadInput(format!(
                "--columns: there is no column {c:?} (the columns are {})",
                types
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        columns.push((c.clone(), is_numeric(t)));
    }
    Ok(Spec {
        key: key.to_vec(),
        columns,
    })
}

/// ` AND (<filter>)`, or nothing.
fn and(filter: Option<&str>) -> String {
    filter.map_or_else(String::new, |w| format!(" AND ({w})"))
}

/// The ranges a table comparison is cut into: the sorted cut points of `by`
/// (`width_bucket` numbers the buckets between them: bucket `i` is
/// `[cuts[i-1], cuts[i])`, 0 below the first, `cuts.len()` from the last, -1
/// for NULL), and the ranges to report, each with its batch if it is one.
/// A range is `per_range` consecutive buckets: checksums are compared per
/// bucket, so a few changed rows send only their small buckets to the row by
/// row comparison, while the report keeps a readable number of ranges.
#[derive(Debug)]
struct Buckets {
    cuts: Vec<String>,
    per_range: i32,
    wanted: Vec<(i32, Option<u32>)>,
}

impl Buckets {
    /// The range bucket `b` belongs to.
    fn range_of(&self, bucket: i32) -> i32 {
        if bucket < 0 {
            -1
        } else {
            bucket / self.per_range
        }
    }

    /// [`Buckets::range_of`] in SQL, of the bucket `expr`.
    fn range_sql(&self, expr: &str) -> String {
        if self.per_range == 1 {
            return expr.to_owned();
        }
        format!(
            "(CASE WHEN {expr} < 0 THEN -1 ELSE {expr} / {} END)",
            self.per_range
        )
    }

    /// The cut points as an array constant of `by_type`. A constant, not a
    /// bound parameter: `width_bucket` would copy a parameter's array for
    /// every row it buckets.
    fn cuts_sql(&self, by_type: &str) -> String {
        let elements: Vec<String> = self
            .cuts
            .iter()
            .map(|c| format!("\"{}\"", c.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        format!(
            "{}::{by_type}[]",
            quote_literal(&format!("{{{}}}", elements.join(",")))
        )
    }

    fn label(&self, range: i32, batch_no: Option<u32>) -> RangeDiff {
        let at = |i: i32| {
            usize::try_from(i)
                .ok()
                .and_then(|i| self.cuts.get(i))
                .cloned()
        };
        let (lo, hi) = if range < 0 {
            ("NULL".to_owned(), "NULL".to_owned())
        } else {
            (
                at(range * self.per_range - 1).unwrap_or_else(|| "-∞".into()),
                at((range + 1) * self.per_range - 1).unwrap_or_else(|| "∞".into()),
            )
        };
        RangeDiff {
            lo,
            hi,
            batch_no,
            ..RangeDiff::default()
        }
    }
}

/// Compares `old` and `new` range by range along `by` (typed `by_type`), in
/// two passes: one aggregate scan of each side checksums every bucket (row
/// count and the sum of each row's 64-bit hash); then only the rows of the
/// buckets whose checksums differ are copied into temporary tables, and
/// joined row by row there.
#[allow(clippy::too_many_arguments)]
async fn diff_ranges(
    pool: &PgPool,
    spec: &Spec,
    old: &TableName,
    new: &TableName,
    by: &str,
    by_type: &str,
    buckets: &Buckets,
    filter: &str,
    options: &Options,
    diff: &mut Diff,
) -> Result<()> {
    let by = quote_ident(by);
    let bucket = format!(
        "coalesce(width_bucket(t.{by}, {}), -1)",
        buckets.cuts_sql(by_type)
    );
    let side = |table: &TableName, only: &str| {
        format!(
            "SELECT true AS bf_here, {bucket} AS bf_bucket, {} FROM {} t WHERE true{only}{filter}",
            spec.select_list("t"),
            table.quoted(),
        )
    };
    let row_hash = row_hash(pool, spec, old, new).await?;
    let checksums = |table: &TableName| {
        format!(
            "SELECT s.bf_bucket, count(*), coalesce(sum({row_hash}), 0)::text
               FROM ({}) s GROUP BY 1",
            side(table, "")
        )
    };
    let bar = progress(options, 3);
    let sums = |sql: String| {
        let bar = bar.clone();
        async move {
            let mut tx = roomy_transaction(pool).await?;
            let rows: Vec<(i32, i64, String)> = sqlx::query_as(AssertSqlSafe(sql))
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            bar.inc(1);
            Ok::<_, CliError>(
                rows.into_iter()
                    .map(|(b, n, h)| (b, (n, h)))
                    .collect::<BTreeMap<_, _>>(),
            )
        }
    };
    let (before, after) = tokio::try_join!(sums(checksums(old)), sums(checksums(new)))?;
    let wanted: BTreeMap<i32, Option<u32>> = buckets.wanted.iter().copied().collect();
    let empty = (0, String::new());
    let differing: Vec<i32> = before
        .keys()
        .chain(after.keys())
        .copied()
        .collect::<std::collections::BTreeSet<i32>>()
        .into_iter()
        .filter(|b| wanted.contains_key(&buckets.range_of(*b)))
        .filter(|b| before.get(b).unwrap_or(&empty) != after.get(b).unwrap_or(&empty))
        .collect();
    let (mut joined, sample) = if differing.is_empty() {
        (BTreeMap::new(), Vec::new())
    } else {
        // A hashed semi-join: `= ANY` would scan the array for every row.
        let only = format!(" AND {bucket} IN (SELECT unnest($1::int[]))");
        compare_rows(
            pool,
            spec,
            (&side(old, &only), &side(new, &only)),
            &differing,
            &buckets.range_sql("coalesce(o.bf_bucket, n.bf_bucket)"),
            options.sample,
        )
        .await?
    };
    bar.inc(1);
    bar.finish_and_clear();
    // Rows in buckets whose checksums agree are unchanged.
    let mut agreeing: BTreeMap<i32, i64> = BTreeMap::new();
    for (b, (n, _)) in &before {
        if differing.binary_search(b).is_err() {
            *agreeing.entry(buckets.range_of(*b)).or_default() += n;
        }
    }
    for (range_no, batch_no) in &wanted {
        let mut figures = joined.remove(range_no).unwrap_or_else(|| Figures {
            columns: vec![ColumnDiff::default(); spec.columns.len()],
            ..Figures::default()
        });
        figures.unchanged += agreeing.get(range_no).copied().unwrap_or(0);
        if figures.only_before + figures.only_after + figures.changed + figures.unchanged == 0
            && *range_no < 0
        {
            continue; // no NULLs in `by`: no such range
        }
        let range = RangeDiff {
            only_before: figures.only_before,
            only_after: figures.only_after,
            changed: figures.changed,
            unchanged: figures.unchanged,
            ..buckets.label(*range_no, *batch_no)
        };
        diff.add(
            spec,
            RangeResult {
                range,
                figures,
                sample: Vec::new(),
            },
        );
    }
    diff.sample.extend(sample);
    Ok(())
}

/// A transaction whose statements have [`DIFF_WORK_MEM`] to group and join in.
async fn roomy_transaction(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query(AssertSqlSafe(format!(
        "SET LOCAL work_mem = '{DIFF_WORK_MEM}'"
    )))
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

/// Compares the rows the two sides select (`$1` bound to `bind` in both),
/// grouped by `group` (of the joined rows `o` and `n`), with the `sample`
/// largest changes. Each side's rows are read once, into a temporary table
/// the grouping and the sample then share, with memory enough to join and
/// group them without spilling to disk.
async fn compare_rows(
    pool: &PgPool,
    spec: &Spec,
    (old, new): (&str, &str),
    bind: &[i32],
    group: &str,
    sample: usize,
) -> Result<(BTreeMap<i32, Figures>, Vec<ChangedRow>)> {
    let mut tx = roomy_transaction(pool).await?;
    for (rows, kept) in [(old, "bf_diff_old"), (new, "bf_diff_new")] {
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TEMPORARY TABLE {kept} ON COMMIT DROP AS {rows}"
        )))
        .bind(bind)
        .execute(&mut *tx)
        .await?;
    }
    let (old, new) = ("SELECT * FROM bf_diff_old", "SELECT * FROM bf_diff_new");
    let mut grouped = BTreeMap::new();
    for row in &sqlx::query(AssertSqlSafe(spec.aggregate_sql(old, new, Some(group))))
        .fetch_all(&mut *tx)
        .await?
    {
        grouped.insert(row.try_get::<i32, _>(0)?, spec.figures(row, 1)?);
    }
    let largest = if sample > 0 {
        compare_sample(&mut *tx, spec, old, new, sample).await?
    } else {
        Vec::new()
    };
    tx.commit().await?;
    Ok((grouped, largest))
}

/// Each row's 64-bit hash, of the comparison's columns of `s`: from their
/// values where every type can be hashed, else from the row's text, several
/// times slower ([`RowHash`]).
async fn row_hash(pool: &PgPool, spec: &Spec, old: &TableName, new: &TableName) -> Result<String> {
    let row = format!("ROW({})", spec.select_list("s"));
    for table in [old, new] {
        let from = format!(
            "(SELECT {} FROM {} t) s",
            spec.select_list("t"),
            table.quoted()
        );
        if RowHash::probe(pool, &row, &from).await? == RowHash::Text {
            return Ok(RowHash::Text.of(&row));
        }
    }
    Ok(RowHash::Record.of(&row))
}

fn progress(options: &Options, len: usize) -> indicatif::ProgressBar {
    if !options.progress || len < 2 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("diff {bar:30} {pos}/{len} ranges ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// `backfill diff --tables OLD NEW --key k1,k2 [--by COLUMN]`: `ranges` ranges
/// of `by` (default the key's first column), cut at its quantiles in `old`.
pub async fn tables(
    pool: &PgPool,
    old: &str,
    new: &str,
    key: &[String],
    by: Option<&str>,
    options: &Options,
) -> Result<Diff> {
    let parse = |t: &str| {
        TableName::parse(t)
            .ok_or_else(|| CliError::BadInput(format!("--tables: {t:?} is not schema.table")))
    };
    let (old, new) = (parse(old)?, parse(new)?);
    if key.is_empty() {
        return Err(CliError::BadInput(
            "--tables needs --key: the column(s) that identify a row in both tables".into(),
        ));
    }
    let (old_cols, new_cols) = (
        table_columns(pool, &old).await?,
        table_columns(pool, &new).await?,
    );
    for k in key {
        if !old_cols.iter().any(|(c, _)| c == k) || !new_cols.iter().any(|(c, _)| c == k) {
            return Err(CliError::BadInput(format!(
                "--key {k}: both {old} and {new} must have it"
            )));
        }
    }
    let common: Vec<String> = old_cols
        .iter()
        .filter(|(c, t)| new_cols.iter().any(|(n, u)| n == c && u == t))
        .map(|(c, _)| c.clone())
        .collect();
    let spec = spec(key, &options.columns, &common, &old_cols)?;
    let by = by.unwrap_or(&key[0]);
    let by_type = old_cols
        .iter()
        .find(|(c, _)| c == by)
        .map(|(_, t)| t.clone())
        .ok_or_else(|| CliError::BadInput(format!("--by {by}: {old} has no such column")))?;
    // Cut points: quantiles of `by` in a sample of the old table's rows, about
    // ROWS_PER_BUCKET rows apart (at most MAX_BUCKETS buckets), reported in at
    // most RANGES ranges. A sample of rows, not of pages: pages hold rows of
    // nearby values in a table written in order, and their quantiles would
    // bunch up, leaving a few buckets with most of the rows.
    let rows: f32 = sqlx::query_scalar(
        "SELECT greatest(reltuples, 0)::real FROM pg_class WHERE oid = to_regclass($1)",
    )
    .bind(old.quoted())
    .fetch_one(pool)
    .await?;
    let rows = f64::from(rows);
    let pieces = (rows / ROWS_PER_BUCKET).clamp(RANGES as f64, MAX_BUCKETS as f64) as usize;
    let wanted_sample = 2.0 * pieces as f64;
    let percent = if rows > 2.0 * wanted_sample {
        (wanted_sample / rows * 100.0).max(0.01)
    } else {
        100.0
    };
    let cuts: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT q::text FROM (
             SELECT DISTINCT unnest(percentile_disc(ARRAY(SELECT g / {pieces}.0 FROM generate_series(1, {pieces} - 1) g))
                    WITHIN GROUP (ORDER BY {c})) AS q
               FROM {t} TABLESAMPLE BERNOULLI ({percent}) WHERE {c} IS NOT NULL) s
          WHERE s.q IS NOT NULL ORDER BY s.q",
        c = quote_ident(by),
        t = old.quoted()
    )))
    .fetch_all(pool)
    .await?;
    let buckets_count = cuts.len() + 1;
    let per_range = i32::try_from(buckets_count.div_ceil(RANGES)).unwrap_or(i32::MAX);
    let last_range = i32::try_from(cuts.len()).unwrap_or(i32::MAX) / per_range;
    let buckets = Buckets {
        wanted: (-1..=last_range).map(|r| (r, None)).collect(),
        per_range,
        cuts,
    };
    let mut diff = Diff::new(
        &spec,
        format!(
            "{old} against {new} on ({}), in {} ranges of {by}, checksummed on both sides first in {} buckets",
            key.join(", "),
            buckets.wanted.len() - 1,
            buckets_count
        ),
    );
    let filter = and(options.filter.as_deref());
    diff_ranges(
        pool, &spec, &old, &new, by, &by_type, &buckets, &filter, options, &mut diff,
    )
    .await?;
    diff.finish(options.sample);
    Ok(diff)
}

/// Ranges a table comparison reports (at most: cut points are distinct).
const RANGES: usize = 1024;

/// Rows per bucket a table comparison aims at: the rows of a bucket whose
/// checksums differ are compared one by one.
const ROWS_PER_BUCKET: f64 = 16.0;

/// Buckets a table comparison is cut into, at most.
const MAX_BUCKETS: usize = 262_144;

/// `work_mem` of a table comparison's statements: enough to group a side by
/// bucket, and to join and group the rows of differing buckets, in memory.
const DIFF_WORK_MEM: &str = "256MB";

/// Batches compared in one statement of the before-image diff.
const BATCHES_PER_QUERY: usize = 64;

/// `backfill diff RUN`: what the run changed against what was there before,
/// over its applied batches (so it works while the run goes).
pub async fn run(pool: &PgPool, run_id: Uuid, options: &Options) -> Result<Diff> {
    let run = runs::load(pool, run_id).await?;
    let scope = &run.brief.scope;
    let plan = scope.batch_by.plan().map_err(CliError::BadInput)?;
    let applied = batches::numbers_in_state(pool, run_id, batches::BatchState::Applied).await?;
    let types = table_columns(pool, &scope.target).await?;
    let written: Vec<String> = scope
        .written_columns()
        .into_iter()
        .filter(|c| !scope.key.contains(c))
        .collect();
    let spec = spec(&scope.key, &options.columns, &written, &types)?;
    let filter = format!("{}{}", scope.owned(), and(options.filter.as_deref()));
    let by = scope.batch_by.column.as_str();
    let by_type = scope.batch_by.kind().sql_type();
    let range_of = |no: u32| {
        plan.get(no as usize)
            .map(|b: &BatchRange| (Some(no), Some(b.lo.to_string()), Some(b.hi.to_string())))
    };
    let target = &scope.target;
    match run.brief.write.strategy {
        Strategy::StagingSwap | Strategy::ParallelVersion => {
            let side = run.side_table.as_deref().and_then(TableName::parse);
            let old = run.old_table.as_deref().and_then(TableName::parse);
            let (before, after, when) = match (old, side) {
                (Some(old), _) => (
                    old,
                    target.clone(),
                    "after cutover: the retired table against the target",
                ),
                (None, Some(side)) => (
                    target.clone(),
                    side,
                    "before cutover: the live target against the table the run builds",
                ),
                (None, None) => {
                    return Err(CliError::Internal(format!(
                        "run {run_id} records neither the table it builds nor the one it retired"
                    )));
                }
            };
            let mut diff = Diff::new(
                &spec,
                format!(
                    "{when} ({before} against {after}), over {} applied batch(es), each checksummed first",
                    applied.len()
                ),
            );
            let buckets = Buckets {
                cuts: plan
                    .iter()
                    .map(|b| b.lo.to_string())
                    .chain(plan.last().map(|b| b.hi.to_string()))
                    .collect(),
                per_range: 1,
                // Batch n is [lo_n, lo_n+1): bucket n + 1.
                wanted: applied
                    .iter()
                    .map(|no| (i32::try_from(*no).unwrap_or(i32::MAX - 1) + 1, Some(*no)))
                    .collect(),
            };
            diff_ranges(
                pool, &spec, &before, &after, by, by_type, &buckets, &filter, options, &mut diff,
            )
            .await?;
            diff.finish(options.sample);
            diff.sample
                .extend(edge_cases(pool, &run, &spec, &before, &after, None).await?);
            Ok(diff)
        }
        Strategy::Merge | Strategy::PartitionOverwrite => {
            let exchanged = batches::exchanges(pool, run_id).await?;
            let rows: Vec<u32> = applied
                .iter()
                .copied()
                .filter(|no| !exchanged.contains_key(&i32::try_from(*no).unwrap_or(-1)))
                .collect();
            let mut diff = Diff::new(
                &spec,
                format!(
                    "from the before-images of {} applied batch(es): each row the run touched, as it was and as it is now{}",
                    rows.len(),
                    if exchanged.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; {} exchanged partition(s) against the partitions they replaced",
                            exchanged.len()
                        )
                    }
                ),
            );
            for (no, x) in &exchanged {
                let Some((batch_no, Some(lo), Some(hi))) =
                    u32::try_from(*no).ok().and_then(range_of)
                else {
                    continue;
                };
                let range = Buckets {
                    cuts: vec![lo, hi],
                    per_range: 1,
                    wanted: vec![(1, batch_no)],
                };
                match x.kept_as.as_deref().and_then(TableName::parse) {
                    Some(kept) => {
                        diff_ranges(pool, &spec, &kept, target, by, by_type, &range, &filter, options, &mut diff).await?;
                    }
                    None => diff.notes.push(format!(
                        "batch {no} exchanged partition {} and kept no copy of the old one (snapshot = false): not compared",
                        x.partition
                    )),
                }
            }
            let image = run.image_table.as_deref().and_then(TableName::parse);
            if !rows.is_empty() {
                let image = image.as_ref().ok_or_else(|| {
                    CliError::BadInput(format!(
                        "run {run_id} kept no before-images (snapshot = false), so nothing records what its batches replaced; \
                         compare two tables instead: `backfill diff --tables OLD NEW --key ...`"
                    ))
                })?;
                from_images(
                    pool, &spec, &run, image, &rows, &plan, &filter, options, &mut diff,
                )
                .await?;
            }
            diff.finish(options.sample);
            diff.sample
                .extend(edge_cases(pool, &run, &spec, target, target, image.as_ref()).await?);
            Ok(diff)
        }
    }
}

/// The before-image diff of `batch_nos`: the rows each batch touched, as the
/// images keep them and as the target holds them now; the rows it did not
/// touch count as unchanged.
#[allow(clippy::too_many_arguments)]
async fn from_images(
    pool: &PgPool,
    spec: &Spec,
    run: &Run,
    image: &TableName,
    batch_nos: &[u32],
    plan: &[BatchRange],
    filter: &str,
    options: &Options,
    diff: &mut Diff,
) -> Result<()> {
    let scope = &run.brief.scope;
    let target = scope.target.quoted();
    let img = image.quoted();
    let keys_i = column_list(&scope.key, Some("i"));
    let old = format!(
        "SELECT DISTINCT ON ({keys_i}) true AS bf_here, i.bf_batch_no, {}
           FROM {img} i WHERE i.bf_batch_no = ANY($1) AND i.bf_op IN ('D', 'U'){filter}
          ORDER BY {keys_i}, i.bf_batch_no",
        spec.select_list("i")
    );
    // The filter names the target's columns: applied outside the join, where
    // only they are in scope.
    let new = format!(
        "SELECT true AS bf_here, x.bf_batch_no, {} FROM (
             SELECT b.bf_batch_no, t.*
               FROM {target} t
               JOIN (SELECT DISTINCT ON ({keys_i}) i.bf_batch_no, {keys_i} FROM {img} i
                      WHERE i.bf_batch_no = ANY($1) ORDER BY {keys_i}, i.bf_batch_no) b ON {}) x
          WHERE true{filter}",
        spec.select_list("x"),
        key_join(&scope.key, "t", "b")
    );
    let by = quote_ident(&scope.batch_by.column);
    let by_type = scope.batch_by.kind().sql_type();
    let in_range = format!(
        "SELECT b.bf_no, count(t.*) FROM unnest($1::int[], $2::text[], $3::text[]) b(bf_no, bf_lo, bf_hi)
           LEFT JOIN {target} t ON t.{by} >= b.bf_lo::{by_type} AND t.{by} < b.bf_hi::{by_type}{filter}
          GROUP BY b.bf_no"
    );
    let chunks: Vec<Vec<i32>> = batch_nos
        .chunks(BATCHES_PER_QUERY)
        .map(|c| {
            c.iter()
                .map(|n| i32::try_from(*n).unwrap_or(i32::MAX))
                .collect()
        })
        .collect();
    let bar = progress(options, chunks.len());
    let results = futures_util::stream::iter(chunks.into_iter().map(|nos| {
        let (old, new, in_range, bar) = (&old, &new, &in_range, bar.clone());
        async move {
            let (per_batch, sample) = compare_rows(
                pool,
                spec,
                (old, new),
                &nos,
                "coalesce(o.bf_batch_no, n.bf_batch_no)",
                options.sample,
            )
            .await?;
            let (los, his): (Vec<String>, Vec<String>) = nos
                .iter()
                .filter_map(|no| plan.get(usize::try_from(*no).ok()?))
                .map(|b| (b.lo.to_string(), b.hi.to_string()))
                .unzip();
            let counts: Vec<(i32, i64)> = sqlx::query_as(AssertSqlSafe(in_range.clone()))
                .bind(&nos)
                .bind(&los)
                .bind(&his)
                .fetch_all(pool)
                .await?;
            bar.inc(1);
            Ok::<_, CliError>((per_batch, counts, sample))
        }
    }))
    .buffer_unordered(options.connections.max(1))
    .collect::<Vec<_>>()
    .await;
    bar.finish_and_clear();
    for result in results {
        let (mut per_batch, counts, sample) = result?;
        for (no, rows_now) in counts {
            let mut figures = per_batch.remove(&no).unwrap_or_else(|| Figures {
                columns: vec![ColumnDiff::default(); spec.columns.len()],
                ..Figures::default()
            });
            // Rows in the range now that the batch did not touch are as they were.
            let touched_now = figures.changed + figures.unchanged + figures.only_after;
            figures.unchanged += (rows_now - touched_now).max(0);
            let range = plan.get(usize::try_from(no).unwrap_or(usize::MAX));
            diff.add(
                spec,
                RangeResult {
                    range: RangeDiff {
                        lo: range.map(|b| b.lo.to_string()).unwrap_or_default(),
                        hi: range.map(|b| b.hi.to_string()).unwrap_or_default(),
                        batch_no: u32::try_from(no).ok(),
                        only_before: figures.only_before,
                        only_after: figures.only_after,
                        changed: figures.changed,
                        unchanged: figures.unchanged,
                    },
                    figures,
                    sample: Vec::new(),
                },
            );
        }
        diff.sample.extend(sample);
    }
    Ok(())
}

/// The largest changes of a comparison.
async fn compare_sample<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    spec: &Spec,
    old: &str,
    new: &str,
    n: usize,
) -> Result<Vec<ChangedRow>> {
    let found: Vec<(String, Option<String>, Option<String>, f64)> =
        sqlx::query_as(AssertSqlSafe(spec.sample_sql(old, new, n)))
            .fetch_all(executor)
            .await?;
    Ok(found
        .into_iter()
        .map(|(key, before, after, change)| ChangedRow {
            why: "changed most",
            key,
            before: row_json(before),
            after: row_json(after),
            change,
        })
        .collect())
}

/// The brief's edge cases, before and after: from `before` (or the image of
/// the row, when the run kept one) and from `after`.
async fn edge_cases(
    pool: &PgPool,
    run: &Run,
    spec: &Spec,
    before: &TableName,
    after: &TableName,
    image: Option<&TableName>,
) -> Result<Vec<ChangedRow>> {
    let key_text = spec
        .key
        .iter()
        .map(|k| format!("t.{}::text", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" || ', ' || ");
    let one = |table: &TableName, extra: &str| {
        format!(
            "SELECT row_to_json(x)::text FROM (SELECT {} FROM {} t WHERE {key_text} = $1{extra} LIMIT 1) x",
            spec.select_list("t"),
            table.quoted()
        )
    };
    let mut rows = Vec::new();
    for case in &run.brief.validation.edge_cases {
        let wanted = case.join(", ");
        let fetch = |sql: String| {
            let wanted = wanted.clone();
            async move {
                sqlx::query_scalar::<_, String>(AssertSqlSafe(sql))
                    .bind(wanted)
                    .fetch_optional(pool)
                    .await
            }
        };
        let after_row = fetch(one(after, "")).await?;
        let before_row = match image {
            Some(img) => {
                let imaged: Option<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT t.bf_op::text, (SELECT row_to_json(x)::text FROM (SELECT {}) x)
                       FROM {} t WHERE {key_text} = $1 ORDER BY t.bf_op = 'I', t.bf_batch_no LIMIT 1",
                    spec.select_list("t"),
                    img.quoted()
                )))
                .bind(&wanted)
                .fetch_optional(pool)
                .await?;
                match imaged {
                    Some((op, _)) if op == "I" => None,
                    Some((_, row)) => Some(row),
                    None => after_row.clone(),
                }
            }
            None => fetch(one(before, "")).await?,
        };
        rows.push(ChangedRow {
            why: "edge case",
            key: wanted,
            before: row_json(before_row),
            after: row_json(after_row),
            change: 0.0,
        });
    }
    Ok(rows)
}

impl Diff {
    /// The diff for a person.
    #[must_use]
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "Diff: {}", self.method);
        let _ = writeln!(
            s,
            "  rows:    {} changed, {} only before (removed), {} only after (added), {} unchanged",
            self.rows_changed, self.rows_only_before, self.rows_only_after, self.rows_unchanged
        );
        if !self.columns.is_empty() {
            let _ = writeln!(s, "  columns:");
            for (name, c) in &self.columns {
                let mut line = format!("    {name:<24} {:>10} changed ({:.2} %)", c.changed, c.pct);
                if c.became_null + c.stopped_null > 0 {
                    let _ = write!(
                        line,
                        ", {} became NULL, {} no longer NULL",
                        c.became_null, c.stopped_null
                    );
                }
                if let (true, Some(sum), Some(max)) =
                    (c.changed > 0, c.sum_change, c.max_abs_change)
                {
                    let _ = write!(line, ", sum of changes {sum:+.2}, largest {max:.2}");
                    if let Some(rel) = c.max_rel_change {
                        let _ = write!(line, " ({:.2} % of the value before)", rel * 100.0);
                    }
                }
                let _ = writeln!(s, "{line}");
            }
        }
        let differing: Vec<&RangeDiff> = self
            .ranges
            .iter()
            .filter(|r| r.changed + r.only_before + r.only_after > 0)
            .collect();
        let _ = writeln!(
            s,
            "  ranges:  {} of {} hold changes",
            differing.len(),
            self.ranges.len()
        );
        for r in differing.iter().take(20) {
            let _ = writeln!(
                s,
                "    {}[{}, {}): {} changed, {} removed, {} added, {} unchanged",
                r.batch_no
                    .map_or_else(String::new, |b| format!("batch {b} ")),
                r.lo,
                r.hi,
                r.changed,
                r.only_before,
                r.only_after,
                r.unchanged
            );
        }
        if differing.len() > 20 {
            let _ = writeln!(
                s,
                "    ... and {} more (--json lists them all)",
                differing.len() - 20
            );
        }
        if !self.sample.is_empty() {
            let _ = writeln!(s, "  rows, before -> after:");
            let show = |v: &Option<serde_json::Value>| {
                v.as_ref()
                    .map_or_else(|| "(none)".to_owned(), ToString::to_string)
            };
            for row in &self.sample {
                let _ = writeln!(
                    s,
                    "    ({}) [{}]\n      {}\n   -> {}",
                    row.key,
                    row.why,
                    show(&row.before),
                    show(&row.after)
                );
            }
        }
        for note in &self.notes {
            let _ = writeln!(s, "  note:    {note}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::Buckets;

    fn buckets(cuts: &[&str], per_range: i32) -> Buckets {
        Buckets {
            cuts: cuts.iter().map(|c| (*c).to_owned()).collect(),
            per_range,
            wanted: Vec::new(),
        }
    }

    #[test]
    fn buckets_group_into_ranges_labelled_by_their_outer_cuts() {
        // Buckets: 0 (-∞, 10), 1 [10, 20), 2 [20, 30), 3 [30, 40), 4 [40, ∞).
        let b = buckets(&["10", "20", "30", "40"], 2);
        let ranges: Vec<i32> = (-1..=4).map(|x| b.range_of(x)).collect();
        assert_eq!(ranges, [-1, 0, 0, 1, 1, 2]);
        let label = |r| {
            let l = b.label(r, None);
            (l.lo, l.hi)
        };
        assert_eq!(label(-1), ("NULL".into(), "NULL".into()));
        assert_eq!(label(0), ("-∞".into(), "20".into()));
        assert_eq!(label(1), ("20".into(), "40".into()));
        assert_eq!(label(2), ("40".into(), "∞".into()));
        assert_eq!(b.range_sql("x"), "(CASE WHEN x < 0 THEN -1 ELSE x / 2 END)");
        assert_eq!(buckets(&["1"], 1).range_sql("x"), "x");
    }

    #[test]
    fn cut_points_are_one_array_constant_whatever_they_hold() {
        let b = buckets(&["a\"b", "c\\d", "it's", "x,y"], 1);
        assert_eq!(
            b.cuts_sql("text"),
            r#"'{"a\"b","c\\d","it''s","x,y"}'::text[]"#
        );
    }
}
