//! What `validate` saw, in a form cutover can check again: per batch range of
//! the table to be exposed, the rows the backfill owns there and the sum of a
//! 64-bit hash of each whole row. One pass over the scope (`width_bucket` over
//! the ranges' lower bounds), so it costs about one aggregate of the scope.
//!
//! Sound for what it guards: any insert, delete or change of a row in scope
//! changes its range's count or hash sum (short of a 64-bit collision), and
//! cutover recomputes it under a lock that keeps writers out until the swap.

use crate::Result;
use backfill_shared::brief::Brief;
use backfill_shared::sql::{TableName, quote_ident};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, PgConnection};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub table: String,
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

/// Measures `table` (the target, or the table a swap will expose) over the
/// brief's scope.
pub async fn measure(
    conn: &mut PgConnection,
    brief: &Brief,
    table: &TableName,
) -> Result<Fingerprint> {
    let scope = &brief.scope;
    let plan = scope.batch_by.plan().map_err(|e| {
        crate::CliError::Internal(format!("the recorded brief no longer plans: {e}"))
    })?;
    let lows: Vec<String> = plan.iter().map(|b| b.lo.to_string()).collect();
    let found: Vec<(i32, i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT width_bucket(t.{by}, $3::text[]::{ty}[]), count(*),
                sum(hashtextextended(t::text, 0)::numeric)::text
           FROM {table} t WHERE {owned} GROUP BY 1 ORDER BY 1",
        by = quote_ident(&scope.batch_by.column),
        ty = scope.batch_by.kind().sql_type(),
        table = table.quoted(),
        owned = scope.owned_range("t"),
    )))
    .bind(scope.batch_by.start)
    .bind(scope.batch_by.end)
    .bind(&lows)
    .fetch_all(&mut *conn)
    .await?;
    let ranges = found
        .into_iter()
        .filter_map(|(bucket, rows, hash)| {
            // Bucket i holds the values from the i-th lower bound on.
            let batch = plan.get(usize::try_from(bucket).ok()?.checked_sub(1)?)?;
            Some(RangePrint {
                batch_no: batch.no,
                lo: batch.lo.to_string(),
                hi: batch.hi.to_string(),
                rows,
                hash,
            })
        })
        .collect();
    Ok(Fingerprint {
        table: table.to_string(),
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
