//! Checks of a brief against the warehouse, before anything is written: the target
//! and its columns exist, the key is unique on the target, the `batch_by` column has
//! the bounds' type, and the source prepares with exactly two parameters and yields
//! every column the batch writes, calling no function whose result differs from
//! one run to the next (unless `scope.volatile_ok` says why). Also the blast
//! radius: what in the catalog reads or references the target, and what the
//! brief's dbt manifest has downstream of it.

use backfill_shared::brief::{Bound, BoundKind, Brief, Problem};
use backfill_shared::sql::{TableName, column_list, quote_ident};
use serde::Serialize;
use sqlx::postgres::PgTypeInfo;
use sqlx::{
    AssertSqlSafe, Column as _, Executor as _, PgPool, SqlSafeStr as _, Statement as _, Type as _,
    TypeInfo as _,
};

/// What the catalog says about a brief's target.
#[derive(Debug, Clone, Serialize)]
pub struct Preflight {
    /// Target columns in table order, with their types.
    pub columns: Vec<(String, String)>,
    /// The planner's row count of the target; `None` if it was never analysed.
    pub target_rows: Option<i64>,
    /// The catalog's dependents and the dbt manifest's, nearest first.
    pub dependents: Vec<Dependent>,
    /// What the brief's dbt manifest says, when it names one.
    pub dbt: Option<crate::dbt::Radius>,
}

/// Something that reads or references the target: in the catalog, or in the
/// brief's dbt manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependent {
    pub name: String,
    /// `view`, `materialized view`, `foreign key`, `dbt model, table`,
    /// `dbt exposure, dashboard`, ...
    pub kind: String,
    /// 1 reads the target directly; 2 reads something that does; ...
    pub depth: i32,
    /// Named in the brief's `dependencies.downstream`.
    pub declared: bool,
    /// A dbt exposure's owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{0}")]
    Problems(backfill_shared::brief::BriefError),
    #[error("catalog query failed: {0}")]
    Sql(#[from] sqlx::Error),
}

pub type Result<T, E = PreflightError> = std::result::Result<T, E>;

fn problem(field: &str, message: String) -> Problem {
    Problem {
        field: field.into(),
        message,
    }
}

/// Runs every check and returns all problems at once.
pub async fn check(pool: &PgPool, brief: &Brief) -> Result<Preflight> {
    let scope = &brief.scope;
    let target = &scope.target;
    let mut problems = Vec::new();
    let Some(oid) = table_oid(pool, target).await? else {
        return Err(PreflightError::Problems(
            backfill_shared::brief::BriefError {
                problems: vec![problem(
                    "scope.target",
                    format!(
                        "table {target} does not exist (or is not a table); check the name, or create it first"
                    ),
                )],
            },
        ));
    };
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
          WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    let type_of = |c: &str| {
        columns
            .iter()
            .find(|(n, _)| n == c)
            .map(|(_, t)| t.as_str())
    };
    for (field, names) in [("scope.key", &scope.key), ("scope.columns", &scope.columns)] {
        for c in names.iter().filter(|c| type_of(c).is_none()) {
            problems.push(problem(
                field,
                format!("column {c:?} does not exist in {target}"),
            ));
        }
    }
    let by = &scope.batch_by;
    match type_of(&by.column) {
        None => problems.push(problem(
            "scope.batch_by.column",
            format!("column {:?} does not exist in {target}; batches split on a column of the target", by.column),
        )),
        Some(t) if !by.kind().matches_sql_type(t) => problems.push(problem(
            "scope.batch_by",
            format!(
                "column {:?} is {t} but the bounds are {}s; give {} bounds or batch by another column",
                by.column,
                by.kind().as_str(),
                sql_kind_hint(t)
            ),
        )),
        Some(_) => {}
    }
    let required: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute
          WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attnotnull
            AND NOT atthasdef AND attidentity = '' AND attgenerated = '' ORDER BY attnum",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    let written = scope.written_columns();
    for c in required.iter().filter(|c| !written.contains(c)) {
        problems.push(problem(
            "scope.columns",
            format!("{target}.{c} is NOT NULL without a default, but the backfill does not write it, so new rows would fail; add {c:?} to columns (and to the source)"),
        ));
    }
    if scope.key.iter().all(|k| type_of(k).is_some()) {
        let unique_sets: Vec<Vec<String>> = sqlx::query_scalar(
            "SELECT array_agg(a.attname::text ORDER BY a.attname)
               FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
              WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
              GROUP BY i.indexrelid",
        )
        .bind(oid)
        .fetch_all(pool)
        .await?;
        let mut key = scope.key.clone();
        key.sort();
        if !unique_sets.contains(&key) {
            problems.push(problem(
                "scope.key",
                format!(
                    "{target} has no unique constraint on ({}); add one (ALTER TABLE {} ADD UNIQUE (...)) so the grain is enforced, or fix the key",
                    scope.key.join(", "),
                    target.quoted()
                ),
            ));
        }
    }
    if let Some(erased) = &brief.rollback.erased {
        let checked = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM ({erased}\n) e LIMIT 0",
            column_list(&scope.key, Some("e"))
        )))
        .execute(pool)
        .await;
        match checked {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) => problems.push(problem(
                "rollback.erased",
                format!(
                    "must be a query that yields the key ({}) of the rows that must never come back: {}",
                    scope.key.join(", "),
                    e.message()
                ),
            )),
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(filter) = &scope.filter {
        // It is evaluated on the target and on the source's rows, so it may
        // use only the columns both have.
        let checked = sqlx::query(AssertSqlSafe(format!(
            "SELECT 1 FROM (SELECT {} FROM {}) t WHERE ({filter}) LIMIT 0",
            column_list(&written, None),
            target.quoted()
        )))
        .execute(pool)
        .await;
        match checked {
            Ok(_) => check_where(pool, brief, filter, &mut problems).await?,
            Err(sqlx::Error::Database(e)) => problems.push(problem(
                "scope.where",
                format!(
                    "must be a condition on the columns the source yields ({}): {}",
                    written.join(", "),
                    e.message()
                ),
            )),
            Err(e) => return Err(e.into()),
        }
    }
    check_validation(pool, brief, &mut problems).await?;
    check_source(pool, brief, &mut problems).await?;
    let dbt_read = dbt_radius(pool, brief).await?;
    crate::downstream::preflight(pool, brief, dbt_read.as_ref(), &mut problems).await?;
    crate::latency::preflight(pool, brief, &mut problems).await?;
    let dbt = match dbt_read {
        Some(Err(why)) => {
            problems.push(problem("dependencies.dbt_manifest", why));
            None
        }
        Some(Ok(radius)) => Some(radius),
        None => None,
    };
    if !problems.is_empty() {
        return Err(PreflightError::Problems(
            backfill_shared::brief::BriefError { problems },
        ));
    }
    let catalog = dependents(pool, oid, target, &brief.dependencies.downstream).await?;
    Ok(Preflight {
        columns,
        target_rows: planner_rows(pool, oid).await?,
        dependents: with_dbt(catalog, dbt.as_ref()),
        dbt,
    })
}

/// The oid of `table` if it is a table (plain or partitioned).
pub(crate) async fn table_oid(
    pool: &PgPool,
    table: &TableName,
) -> Result<Option<sqlx::postgres::types::Oid>> {
    Ok(sqlx::query_scalar(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
    )
    .bind(&table.schema)
    .bind(&table.table)
    .fetch_optional(pool)
    .await?)
}

/// The planner's row count of a table; `None` for one never analysed.
pub(crate) async fn planner_rows(
    pool: &PgPool,
    oid: sqlx::postgres::types::Oid,
) -> Result<Option<i64>> {
    // A partitioned table's own figure is set only when the parent itself was
    // analysed; its partitions' figures add up to it otherwise.
    let rows: f32 = sqlx::query_scalar(
        "SELECT CASE WHEN c.relkind = 'p' AND c.reltuples < 0 THEN
                  (SELECT CASE WHEN bool_or(l.reltuples >= 0) THEN sum(greatest(l.reltuples, 0)) ELSE -1 END
                     FROM pg_partition_tree(c.oid) t JOIN pg_class l ON l.oid = t.relid WHERE t.isleaf)
                ELSE c.reltuples END::real
           FROM pg_class c WHERE c.oid = $1",
    )
    .bind(oid)
    .fetch_one(pool)
    .await?;
    // PostgreSQL says -1 for a table never analysed (nor vacuumed).
    Ok((rows >= 0.0).then_some(rows as i64))
}

/// Each metric must evaluate on the target; each reference must name a column of
/// the target and an existing parent column.
async fn check_validation(pool: &PgPool, brief: &Brief, problems: &mut Vec<Problem>) -> Result<()> {
    let target = brief.scope.target.quoted();
    let mut conn = pool.acquire().await?;
    for (i, m) in brief.validation.metrics.iter().enumerate() {
        let sql = m.query(&target, "false");
        if let Err(sqlx::Error::Database(e)) = (&mut *conn)
            .prepare(AssertSqlSafe(sql).into_sql_str())
            .await
        {
            problems.push(problem(
                &format!("validation.metrics[{i}]"),
                format!(
                    "{:?} does not evaluate on {}: {}",
                    m.name,
                    brief.scope.target,
                    e.message()
                ),
            ));
        }
    }
    if let Some(guard) = &brief.limits.pause_when {
        match (&mut *conn)
            .prepare(AssertSqlSafe(guard.clone()).into_sql_str())
            .await
        {
            Ok(statement) => {
                let columns = statement.columns();
                let boolean = columns.len() == 1 && columns[0].type_info().name() == "BOOL";
                if !boolean {
                    problems.push(problem(
                        "limits.pause_when",
                        "must return exactly one boolean column (true = hold new batches)".into(),
                    ));
                }
            }
            Err(sqlx::Error::Database(e)) => {
                problems.push(problem(
                    "limits.pause_when",
                    format!("does not prepare: {}", e.message()),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    for (i, r) in brief.validation.references.iter().enumerate() {
        let Some((parent, column)) = r.parent() else {
            continue;
        };
        let sql = format!(
            "SELECT 1 FROM {target} t JOIN {} p ON p.{} = t.{} WHERE false",
            parent.quoted(),
            quote_ident(&column),
            quote_ident(&r.column)
        );
        if let Err(sqlx::Error::Database(e)) = (&mut *conn)
            .prepare(AssertSqlSafe(sql).into_sql_str())
            .await
        {
            problems.push(problem(
                &format!("validation.references[{i}]"),
                format!("{}: {}", r.references, e.message()),
            ));
        }
    }
    Ok(())
}

fn sql_kind_hint(sql_type: &str) -> &'static str {
    [BoundKind::Integer, BoundKind::Date, BoundKind::Timestamp]
        .into_iter()
        .find(|k| k.matches_sql_type(sql_type))
        .map_or("integer, date or timestamp", BoundKind::as_str)
}

fn bound_type(kind: BoundKind) -> PgTypeInfo {
    match kind {
        BoundKind::Integer => i64::type_info(),
        BoundKind::Date => chrono::NaiveDate::type_info(),
        BoundKind::Timestamp => chrono::NaiveDateTime::type_info(),
    }
}

/// Prepares the source; returns the planner's row estimate for the first batch.
async fn check_source(
    pool: &PgPool,
    brief: &Brief,
    problems: &mut Vec<Problem>,
) -> Result<Option<i64>> {
    let scope = &brief.scope;
    let plan = scope.batch_by.plan().unwrap_or_default();
    // Each rule (each period's source, then `scope.source`), checked on the
    // first batch that follows it.
    let before = problems.len();
    for (rule, source) in scope.rules().into_iter().enumerate() {
        let field = if rule < scope.periods.len() {
            format!("scope.periods[{rule}].source")
        } else {
            "scope.source".to_owned()
        };
        let first = plan.iter().find(|b| scope.rule_for(b.lo) == rule);
        check_rule(pool, brief, &field, source, first, problems).await?;
    }
    if problems.len() > before {
        return Ok(None);
    }
    let Some(first) = plan.first() else {
        return Ok(None);
    };
    Ok(estimate_rows(pool, scope.source_for(first.lo), first.lo, first.hi).await)
}

/// One rule's source: it prepares with the bounds' types, takes two
/// parameters, yields every written column, and — planned for `first`, the
/// first batch it runs — calls nothing whose result differs between runs.
async fn check_rule(
    pool: &PgPool,
    brief: &Brief,
    field: &str,
    source: &str,
    first: Option<&backfill_shared::brief::BatchRange>,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    let scope = &brief.scope;
    let kind = scope.batch_by.kind();
    let types = [bound_type(kind), bound_type(kind)];
    let mut conn = pool.acquire().await?;
    let prepared = (&mut *conn)
        .prepare_with(AssertSqlSafe(source.to_owned()).into_sql_str(), &types)
        .await;
    let statement = match prepared {
        Ok(s) => s,
        Err(sqlx::Error::Database(e)) => {
            problems.push(problem(field, format!("does not prepare: {}", e.message())));
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let params = match statement.parameters() {
        Some(sqlx::Either::Left(types)) => types.len(),
        Some(sqlx::Either::Right(n)) => n,
        None => 0,
    };
    let before = problems.len();
    if params != 2 {
        problems.push(problem(
            field,
            format!("takes {params} parameters; it must take exactly two: $1 (lower bound, inclusive) and $2 (upper bound, exclusive)"),
        ));
    }
    let yielded: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
    for c in scope.written_columns() {
        if !yielded.contains(&c.as_str()) {
            problems.push(problem(
                field,
                format!("does not yield column {c:?}; its output must name the key, the batch_by column and every listed column (yields: {})", yielded.join(", ")),
            ));
        }
    }
    if problems.len() > before {
        return Ok(());
    }
    if scope.volatile_ok.is_none()
        && let Some(first) = first
        && let Some(plan) = explain(pool, source, first.lo, first.hi).await
    {
        let calls = unrepeatable_calls(pool, &plan).await?;
        if !calls.is_empty() {
            problems.push(problem(
                field,
                format!(
                    "calls {}, whose result differs from one run to the next, so a retried or re-run batch would not write what it wrote; \
                     compute from the data instead, or, if that is the intent, say why in scope.volatile_ok = \"...\"",
                    calls.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// A `scope.where` that PostgreSQL accepts: refused when it calls a
/// volatile or clock-reading function (a retried batch would own other rows;
/// unless `scope.volatile_ok` says why), or when it matches no row of the
/// target in the scope (a typo in a value: the run would own nothing).
async fn check_where(
    pool: &PgPool,
    brief: &Brief,
    filter: &str,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    let scope = &brief.scope;
    let target = scope.target.quoted();
    if scope.volatile_ok.is_none() {
        let plan: Option<serde_json::Value> = sqlx::query_scalar(AssertSqlSafe(format!(
            "EXPLAIN (VERBOSE, FORMAT JSON) SELECT 1 FROM {target} t WHERE ({filter}\n)"
        )))
        .fetch_optional(pool)
        .await?;
        if let Some(plan) = plan {
            let calls = unrepeatable_calls(pool, &plan).await?;
            if !calls.is_empty() {
                problems.push(problem(
                    "scope.where",
                    format!(
                        "calls {}, whose result differs from one run to the next, so a retried batch would own other rows; \
                         use a condition on the data, or, if that is the intent, say why in scope.volatile_ok = \"...\"",
                        calls.join(", ")
                    ),
                ));
                return Ok(());
            }
        }
    }
    let batch_by = &scope.batch_by;
    let matches: bool = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM {target} t WHERE {})",
        scope.owned_range("t")
    )))
    .bind(batch_by.start)
    .bind(batch_by.end)
    .fetch_one(pool)
    .await?;
    if !matches {
        problems.push(problem(
            "scope.where",
            format!(
                "matches no row of {} in the scope [{}, {}) of {}: the run would own nothing there. Check the predicate's values (a typo matches nothing)",
                scope.target, batch_by.start, batch_by.end, batch_by.column
            ),
        ));
    }
    Ok(())
}

/// The functions a planned source calls whose result differs between two runs
/// of a batch: every volatile function (`pg_proc.provolatile = 'v'`:
/// `random()`, `clock_timestamp()`, `nextval()`, most user functions) and the
/// ones that read the clock (`now()`, `CURRENT_DATE`, …). Read from the plan,
/// so functions inside the views the source reads count too.
async fn unrepeatable_calls(pool: &PgPool, plan: &serde_json::Value) -> Result<Vec<String>> {
    const CLOCK: [&str; 9] = [
        "now",
        "current_date",
        "current_time",
        "current_timestamp",
        "localtime",
        "localtimestamp",
        "transaction_timestamp",
        "statement_timestamp",
        "timeofday",
    ];
    let mut calls = Vec::new();
    let mut clock = Vec::new();
    for (name, called) in identifiers_in_plan(plan) {
        if CLOCK.contains(&name.as_str()) {
            clock.push(name);
        } else if called {
            calls.push(name);
        }
    }
    calls.sort();
    calls.dedup();
    let mut found: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT proname::text || '()' FROM pg_proc WHERE proname = ANY($1) AND provolatile = 'v' ORDER BY 1",
    )
    .bind(&calls)
    .fetch_all(pool)
    .await?;
    clock.sort();
    clock.dedup();
    found.extend(clock.into_iter().map(|c| {
        if c.starts_with("current_") || c.starts_with("local") {
            c.to_uppercase()
        } else {
            format!("{c}()")
        }
    }));
    Ok(found)
}

/// Every identifier in the expressions of a plan (`Output`, `Filter`, …),
/// lowercased and without its schema, and whether a `(` follows it (a call);
/// quoted literals are skipped.
fn identifiers_in_plan(plan: &serde_json::Value) -> Vec<(String, bool)> {
    fn strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::String(s) => out.push(s),
            serde_json::Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
            serde_json::Value::Object(map) => map.values().for_each(|i| strings(i, out)),
            _ => {}
        }
    }
    let mut texts = Vec::new();
    strings(plan, &mut texts);
    let mut found = Vec::new();
    for text in texts {
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '\'' {
                // A literal: skip to its closing quote ('' is an escaped quote).
                i += 1;
                while i < chars.len() && !(chars[i] == '\'' && chars.get(i + 1) != Some(&'\'')) {
                    i += if chars[i] == '\'' { 2 } else { 1 };
                }
                i += 1;
            } else if c.is_alphabetic() || c == '_' {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
                {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect::<String>().to_lowercase();
                if chars.get(i) == Some(&'.') {
                    // A schema or table qualifier: the name follows.
                    i += 1;
                    continue;
                }
                let mut j = i;
                while chars.get(j).is_some_and(|c| c.is_whitespace()) {
                    j += 1;
                }
                found.push((name, chars.get(j) == Some(&'(')));
            } else {
                i += 1;
            }
        }
    }
    found
}

/// The source's plan for one batch (`EXPLAIN (VERBOSE, FORMAT JSON)`; no rows are read).
pub async fn explain(
    pool: &PgPool,
    source: &str,
    lo: Bound,
    hi: Bound,
) -> Option<serde_json::Value> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "EXPLAIN (VERBOSE, FORMAT JSON) {source}"
    )))
    .bind(lo)
    .bind(hi)
    .fetch_one(pool)
    .await
    .ok()
}

/// The planner's row estimate of the source for one batch (no rows are read).
pub async fn estimate_rows(pool: &PgPool, source: &str, lo: Bound, hi: Bound) -> Option<i64> {
    let explain = explain(pool, source, lo, hi).await?;
    explain
        .get(0)?
        .get("Plan")?
        .get("Plan Rows")?
        .as_f64()
        .map(|r| r as i64)
}

/// The blast radius of a brief's target as the catalog and the brief's dbt
/// manifest show it now (the catalog's part is empty if the target is gone),
/// with why the manifest could not be read, if it could not.
pub async fn blast_radius(
    pool: &PgPool,
    brief: &Brief,
) -> Result<(
    Vec<Dependent>,
    Option<std::result::Result<crate::dbt::Radius, String>>,
)> {
    let oid: Option<sqlx::postgres::types::Oid> = sqlx::query_scalar("SELECT to_regclass($1)::oid")
        .bind(brief.scope.target.quoted())
        .fetch_one(pool)
        .await?;
    let catalog = match oid {
        Some(oid) => {
            dependents(
                pool,
                oid,
                &brief.scope.target,
                &brief.dependencies.downstream,
            )
            .await?
        }
        None => Vec::new(),
    };
    let dbt = dbt_radius(pool, brief).await?;
    let found = with_dbt(catalog, dbt.as_ref().and_then(|r| r.as_ref().ok()));
    Ok((found, dbt))
}

/// What the brief's dbt manifest has downstream of the target, or why it
/// cannot be read; `None` when the brief names no manifest.
pub(crate) async fn dbt_radius(
    pool: &PgPool,
    brief: &Brief,
) -> Result<Option<std::result::Result<crate::dbt::Radius, String>>> {
    let Some(path) = &brief.dependencies.dbt_manifest else {
        return Ok(None);
    };
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(pool)
        .await?;
    Ok(Some(crate::dbt::radius(
        path,
        &database,
        &brief.scope.target,
        &brief.dependencies.downstream,
    )))
}

/// The catalog's dependents with the dbt manifest's: a dbt model the catalog
/// also found (a view) is one entry, of both kinds.
fn with_dbt(mut found: Vec<Dependent>, dbt: Option<&crate::dbt::Radius>) -> Vec<Dependent> {
    for d in dbt.map(|r| r.dependents.as_slice()).unwrap_or_default() {
        match found.iter_mut().find(|c| c.name == d.name) {
            Some(same) => {
                same.kind = format!("{}; {}", same.kind, d.kind);
                same.declared |= d.declared;
            }
            None => found.push(d.clone()),
        }
    }
    found.sort_by_key(|d| d.depth);
    found
}

/// What the catalog finds depending on `target` (table `oid`): readers and
/// foreign keys, each marked when `declared` (a brief's downstream) names it.
pub(crate) async fn dependents(
    pool: &PgPool,
    oid: sqlx::postgres::types::Oid,
    target: &TableName,
    declared: &[String],
) -> Result<Vec<Dependent>> {
    let readers = crate::catalog::readers(pool, target).await?;
    let foreign_keys: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text, 'foreign key ' || con.conname
           FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE con.contype = 'f' AND con.confrelid = $1 AND con.conrelid <> $1
          ORDER BY 1, 2, 3",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    let rows = readers
        .into_iter()
        .map(|r| {
            let kind = if r.materialized {
                "materialized view"
            } else {
                "view"
            };
            (r.name.schema, r.name.table, kind.to_owned(), r.nearest)
        })
        .chain(foreign_keys.into_iter().map(|(s, t, k)| (s, t, k, 1)));
    let declared: Vec<Option<TableName>> = declared.iter().map(|d| TableName::parse(d)).collect();
    Ok(rows
        .map(|(schema, table, kind, depth)| {
            let name = TableName { schema, table };
            Dependent {
                declared: declared.iter().any(|d| d.as_ref() == Some(&name)),
                name: name.to_string(),
                kind,
                depth,
                owner: None,
            }
        })
        .collect())
}
