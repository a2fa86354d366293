//! What `validate` saw, in a form cutover can check again: per batch range of
//! the table to be exposed, the rows the backfill owns there and the XOR of a
//! 64-bit hash of each whole row. One pass over the scope, with the batch of a
//! row computed arithmetically where the step allows (integer steps, day and
//! time steps) and by `width_bucket` over the ranges' lower bounds otherwise.
//!
//! Sound for what it guards: any insert, delete or change of a row in scope
//! changes its range's count or hash (short of a 64-bit collision; rows are
//! distinct, their key being unique, so none cancels another), and cutover
//! recomputes it under a lock that keeps writers out until the swap. Rows are
//! hashed by their columns' own hash functions (`hash_record_extended`), or by
//! their text form when a column type has none (`json`, `point`, ...).

use crate::Result;
use backfill_shared::brief::{BatchBy, Bound, Brief, Step};
use backfill_shared::sql::{TableName, quote_ident};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, PgConnection};

/// How rows are hashed; recorded, so cutover hashes as `validate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RowHash {
    /// `hash_record_extended`: each column by its type's hash function.
    #[default]
    Record,
    /// `hashtextextended` of the row's text: for column types without one.
    Text,
}

impl RowHash {
    /// The 64-bit hash of the row (or `ROW(...)`) expression `row`.
    #[must_use]
    pub fn of(self, row: &str) -> String {
        match self {
            Self::Record => format!("hash_record_extended({row}, 0)"),
            Self::Text => format!("hashtextextended({row}::text, 0)"),
        }
    }

    /// How rows `row` of `from` (a `FROM` clause; one row is enough) can be
    /// hashed: by their columns' hash functions, unless a column's type has
    /// none (`json`, `point`, ...: the probe fails with 42883), then by text.
    pub async fn probe<'e>(
        executor: impl sqlx::PgExecutor<'e>,
        row: &str,
        from: &str,
    ) -> Result<Self> {
        let probe = format!("SELECT {} FROM {from} LIMIT 1", Self::Record.of(row));
        match sqlx::query(AssertSqlSafe(probe)).execute(executor).await {
            Ok(_) => Ok(Self::Record),
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42883") => {
                Ok(Self::Text)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub table: String,
    #[serde(default)]
    pub hash: RowHash,
    /// Ranges holding rows; a range absent here held none.
    pub ranges: Vec<RangePrint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangePrint {
    pub batch_no: u32,
    pub lo: String,
    pub hi: String,
    pub rows: i64,
    pub hash: String,
}

/// The batch number of row `t` (0-based), as SQL, where arithmetic gives it;
/// `$1` is the scope's start.
fn batch_of_row(batch_by: &BatchBy) -> Option<String> {
    let by = quote_ident(&batch_by.column);
    match (batch_by.start, &batch_by.step) {
        (Bound::Integer(start), Step::Integer(step)) => {
            Some(format!("(t.{by} - {start}) / {step}"))
        }
        (Bound::Date(_), Step::Interval(i)) if i.months == 0 && i.micros == 0 && i.days > 0 => {
            Some(format!("(t.{by} - $1) / {}", i.days))
        }
        (Bound::Timestamp(_), Step::Interval(i)) if i.months == 0 => {
            let micros = i128::from(i.days) * 86_400_000_000 + i128::from(i.micros);
            (micros > 0).then(|| {
                format!("floor(extract(epoch FROM t.{by} - $1) * 1000000 / {micros})::bigint")
            })
        }
        _ => None,
    }
}

/// Measures `table` (the target, or the table a swap will expose) over the
/// brief's scope. `hash` is the way `validate` hashed, at cutover; `validate`
/// passes `None` and rows are hashed by their types where every column allows.
pub async fn measure(
    conn: &mut PgConnection,
    brief: &Brief,
    table: &TableName,
    hash: Option<RowHash>,
) -> Result<Fingerprint> {
    let scope = &brief.scope;
    let plan = scope.batch_by.plan().map_err(|e| {
        crate::CliError::Internal(format!("the recorded brief no longer plans: {e}"))
    })?;
    let hash = match hash {
        Some(hash) => hash,
        None => RowHash::probe(&mut *conn, "t", &format!("{} t", table.quoted())).await?,
    };
    // Where arithmetic cannot name a row's batch, `$3` holds the lower bounds.
    let arithmetic = batch_of_row(&scope.batch_by);
    let bucket = arithmetic.clone().unwrap_or_else(|| {
        format!(
            "width_bucket(t.{}, $3::text[]::{}[]) - 1",
            quote_ident(&scope.batch_by.column),
            scope.batch_by.kind().sql_type()
        )
    });
    let sql = format!(
        "SELECT ({bucket})::bigint, count(*), bit_xor({hash}) FROM {table} t
          WHERE {owned} GROUP BY 1 ORDER BY 1",
        hash = hash.of("t"),
        table = table.quoted(),
        owned = scope.owned_range("t"),
    );
    let query = sqlx::query_as(AssertSqlSafe(sql))
        .bind(scope.batch_by.start)
        .bind(scope.batch_by.end);
    let query = if arithmetic.is_some() {
        query
    } else {
        query.bind(plan.iter().map(|b| b.lo.to_string()).collect::<Vec<_>>())
    };
    let found: Vec<(i64, i64, i64)> = query.fetch_all(&mut *conn).await?;
    let ranges = found
        .into_iter()
        .filter_map(|(batch, rows, sum)| {
            let batch = plan.get(usize::try_from(batch).ok()?)?;
            Some(RangePrint {
                batch_no: batch.no,
                lo: batch.lo.to_string(),
                hi: batch.hi.to_string(),
                rows,
                hash: format!("{sum:016x}"),
            })
        })
        .collect();
    Ok(Fingerprint {
        table: table.to_string(),
        hash,
        ranges,
    })
}

impl Fingerprint {
    /// The ranges whose rows differ between `self` (what was validated) and
    /// `now`, each as `[lo, hi): what changed`.
    #[must_use]
    pub fn changed_ranges(&self, now: &Self) -> Vec<String> {
        use std::collections::BTreeMap;
        fn index(f: &Fingerprint) -> BTreeMap<u32, &RangePrint> {
            f.ranges.iter().map(|r| (r.batch_no, r)).collect()
        }
        let (then, now) = (index(self), index(now));
        let mut nos: Vec<u32> = then.keys().chain(now.keys()).copied().collect();
        nos.sort_unstable();
        nos.dedup();
        nos.into_iter()
            .filter_map(|no| {
                let (a, b) = (then.get(&no), now.get(&no));
                if a == b {
                    return None;
                }
                let range = a.or(b)?;
                let rows = |r: Option<&&RangePrint>| r.map_or(0, |r| r.rows);
                Some(format!(
                    "[{}, {}): {} rows when validated, {} now{}",
                    range.lo,
                    range.hi,
                    rows(a),
                    rows(b),
                    if rows(a) == rows(b) {
                        ", their values changed"
                    } else {
                        ""
                    }
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(ranges: &[(u32, i64, &str)]) -> Fingerprint {
        Fingerprint {
            table: "t".into(),
            hash: RowHash::Record,
            ranges: ranges
                .iter()
                .map(|&(batch_no, rows, hash)| RangePrint {
                    batch_no,
                    lo: format!("{batch_no}0"),
                    hi: format!("{}0", batch_no + 1),
                    rows,
                    hash: hash.into(),
                })
                .collect(),
        }
    }

    #[test]
    fn names_each_range_that_changed() {
        let then = print(&[(0, 5, "a"), (1, 5, "b"), (2, 5, "c")]);
        assert!(then.changed_ranges(&then.clone()).is_empty());
        let now = print(&[(0, 5, "a"), (1, 5, "x"), (2, 4, "c"), (3, 1, "d")]);
        assert_eq!(
            then.changed_ranges(&now),
            [
                "[10, 20): 5 rows when validated, 5 now, their values changed",
                "[20, 30): 5 rows when validated, 4 now",
                "[30, 40): 0 rows when validated, 1 now",
            ]
        );
    }
}
