//! Declaratively partitioned tables, as the catalog describes them: whether a
//! table is partitioned and how, its partitions with their bounds, and the two
//! things Backfill does with that structure — build a table with the same
//! partitioning (the staging table of a swap), and, when a swap puts one
//! partitioned table in another's place, give the incoming partitions the names
//! of the ones they replace.
//!
//! Partitions are matched by their bound (`FOR VALUES …` as PostgreSQL prints
//! it), at every level of a partition tree.

use crate::brief::{BatchRange, Bound, BoundKind};
use crate::sql::{TableName, quote_ident};
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgConnection};

/// One partition of a partitioned table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Partition {
    pub name: TableName,
    /// `FOR VALUES FROM ('1992-01-01') TO ('1995-01-01')`, `FOR VALUES IN ('AIR')`, `DEFAULT`.
    pub bound: String,
    /// The partition's own partition key, when it is partitioned in turn.
    pub partition_key: Option<String>,
}

/// How a table is partitioned: `RANGE (l_shipdate)`, `LIST (l_shipmode)`, or
/// `None` for a plain table (or one that does not exist).
pub async fn partition_key(
    conn: &mut PgConnection,
    table: &TableName,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT pg_get_partkeydef(c.oid)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'p'",
    )
    .bind(&table.schema)
    .bind(&table.table)
    .fetch_optional(conn)
    .await
}

/// The direct partitions of `table`, in bound order (the default partition last).
pub async fn children(conn: &mut PgConnection, table: &TableName) -> sqlx::Result<Vec<Partition>> {
    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text, pg_get_expr(c.relpartbound, c.oid),
                CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END
           FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE i.inhparent = (SELECT p.oid FROM pg_class p JOIN pg_namespace pn ON pn.oid = p.relnamespace
                                WHERE pn.nspname = $1 AND p.relname = $2)
            AND c.relispartition
          ORDER BY pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT',
                   pg_get_expr(c.relpartbound, c.oid), c.relname",
    )
    .bind(&table.schema)
    .bind(&table.table)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(schema, table, bound, partition_key)| Partition {
            name: TableName { schema, table },
            bound,
            partition_key,
        })
        .collect())
}

/// Why a batch cannot build `partition` of `target` whole and exchange it, in
/// this session; `None` when it can. An exchange detaches and attaches
/// partitions, which only the tables' owner may do; it would bypass the
/// partition's row triggers; a default partition would be scanned under the
/// exchange's lock; a foreign key pointing at the target would be checked
/// against the whole partition.
pub async fn exchange_obstacle(
    conn: &mut PgConnection,
    target: &TableName,
    partition: &Partition,
) -> sqlx::Result<Option<String>> {
    if partition.partition_key.is_some() {
        return Ok(Some(format!("{} is partitioned in turn", partition.name)));
    }
    let (owned, triggers, default, referenced): (bool, bool, bool, bool) = sqlx::query_as(
        "SELECT pg_has_role(p.relowner, 'USAGE') AND pg_has_role(c.relowner, 'USAGE'),
                EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid AND NOT g.tgisinternal),
                EXISTS (SELECT 1 FROM pg_partitioned_table pt WHERE pt.partrelid = p.oid AND pt.partdefid <> 0),
                EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.confrelid = p.oid)
           FROM pg_class p, pg_class c
          WHERE p.oid = $1::regclass AND c.oid = $2::regclass",
    )
    .bind(target.quoted())
    .bind(partition.name.quoted())
    .fetch_one(conn)
    .await?;
    Ok(if !owned {
        Some(format!(
            "this role does not own {target} and {} (detaching and attaching partitions takes their owner)",
            partition.name
        ))
    } else if triggers {
        Some(format!(
            "{} has row triggers, which an exchange would bypass",
            partition.name
        ))
    } else if default {
        Some(format!(
            "{target} has a default partition, which attaching a partition would scan under its lock"
        ))
    } else if referenced {
        Some(format!(
            "a foreign key references {target}, and detaching a partition checks it against every row"
        ))
    } else {
        None
    })
}

/// The name of a table's `index`-th partition: `{table}_p{index}`, in the table's schema.
fn partition_name(parent: &TableName, index: usize) -> TableName {
    parent.with_suffix(&format!("_p{index}"))
}

/// Creates `new` with the columns, defaults, constraints and indexes of
/// `like` (`LIKE … INCLUDING ALL`) and, when `like` is partitioned, the same
/// partitioning: a partition of `new` for each of `like`'s, with its bound,
/// its own indexes and constraints, named `{new}_p0`, `{new}_p1`, …
/// Partitions are attached while empty, so the attach scans nothing.
pub async fn create_like(
    conn: &mut PgConnection,
    like: &TableName,
    new: &TableName,
) -> sqlx::Result<()> {
    let key = partition_key(&mut *conn, like).await?;
    let partitioning = key
        .as_deref()
        .map_or_else(String::new, |k| format!(" PARTITION BY {k}"));
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {} (LIKE {} INCLUDING ALL){partitioning}",
        new.quoted(),
        like.quoted()
    )))
    .execute(&mut *conn)
    .await?;
    if key.is_none() {
        return Ok(());
    }
    for (index, child) in children(&mut *conn, like).await?.into_iter().enumerate() {
        let part = partition_name(new, index);
        Box::pin(create_like(&mut *conn, &child.name, &part)).await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "ALTER TABLE {} ATTACH PARTITION {} {}",
            new.quoted(),
            part.quoted(),
            child.bound
        )))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// After a swap has put `incoming` in the place of `outgoing` (now named
/// `retired`, still partitioned as before), renames partitions so that names
/// follow the place, not the data: each partition of `retired` becomes
/// `{retired}_p{i}`, and the partition of the incoming table with the same
/// bound takes the name it had — readers that name a partition directly find
/// it where it was. `incoming` is the incoming table under its new name (the
/// target's).
pub async fn hand_over_names(
    conn: &mut PgConnection,
    retired: &TableName,
    incoming: &TableName,
) -> sqlx::Result<()> {
    let outgoing = children(&mut *conn, retired).await?;
    if outgoing.is_empty() {
        return Ok(());
    }
    let arriving = children(&mut *conn, incoming).await?;
    // Every outgoing partition first gives up its name, so no rename collides.
    let mut freed = Vec::new();
    for (index, old) in outgoing.iter().enumerate() {
        let parked = partition_name(retired, index);
        rename(&mut *conn, &old.name, &parked).await?;
        freed.push((old, parked));
    }
    for (old, parked) in freed {
        let Some(new) = arriving.iter().find(|a| a.bound == old.bound) else {
            continue;
        };
        if new.name != old.name {
            rename(&mut *conn, &new.name, &old.name).await?;
        }
        if old.partition_key.is_some() {
            Box::pin(hand_over_names(&mut *conn, &parked, &old.name)).await?;
        }
    }
    Ok(())
}

async fn rename(conn: &mut PgConnection, from: &TableName, to: &TableName) -> sqlx::Result<()> {
    if from == to {
        return Ok(());
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "ALTER TABLE {} RENAME TO {}",
        from.quoted(),
        quote_ident(&to.table)
    )))
    .execute(conn)
    .await?;
    Ok(())
}

/// The structure of a table as the catalog holds it, for comparing two tables
/// (or one table before and after a run): its kind, partition key, and per
/// partition (recursively) its bound, kind, indexes and constraints (checks,
/// keys, exclusions), with every name of the table itself left out so a renamed
/// table compares equal.
pub async fn structure(conn: &mut PgConnection, table: &TableName) -> sqlx::Result<Vec<String>> {
    let mut lines = Vec::new();
    describe(&mut *conn, table, "", &mut lines).await?;
    Ok(lines)
}

async fn describe(
    conn: &mut PgConnection,
    table: &TableName,
    at: &str,
    lines: &mut Vec<String>,
) -> sqlx::Result<()> {
    let relkind: String =
        sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = $1::regclass")
            .bind(table.quoted())
            .fetch_one(&mut *conn)
            .await?;
    lines.push(format!("{at}relkind {relkind}"));
    if let Some(key) = partition_key(&mut *conn, table).await? {
        lines.push(format!("{at}partition by {key}"));
    }
    let mut indexes: Vec<String> = sqlx::query_scalar(
        "SELECT regexp_replace(pg_get_indexdef(indexrelid), '^CREATE (UNIQUE )?INDEX \\S+ ON (ONLY )?\\S+ ', 'CREATE \\1INDEX ON \\2')
           FROM pg_index WHERE indrelid = $1::regclass",
    )
    .bind(table.quoted())
    .fetch_all(&mut *conn)
    .await?;
    indexes.sort();
    lines.extend(indexes.into_iter().map(|i| format!("{at}{i}")));
    let mut constraints: Vec<String> = sqlx::query_scalar(
        "SELECT contype::text || ' ' || pg_get_constraintdef(oid)
           FROM pg_constraint WHERE conrelid = $1::regclass AND contype IN ('c', 'p', 'u', 'x')",
    )
    .bind(table.quoted())
    .fetch_all(&mut *conn)
    .await?;
    constraints.sort();
    lines.extend(
        constraints
            .into_iter()
            .map(|c| format!("{at}constraint {c}")),
    );
    for child in children(&mut *conn, table).await? {
        let at = format!("{at}{} / ", child.bound);
        Box::pin(describe(&mut *conn, &child.name, &at, lines)).await?;
    }
    Ok(())
}

/// One end of a range partition on the `batch_by` column: a value, or
/// `MINVALUE`/`MAXVALUE` (`None`).
pub type RangeEnd = Option<Bound>;

/// The ends of a single-column range partition's bound
/// (`FOR VALUES FROM ('1992-01-01') TO ('1995-01-01')`) as values of `kind`;
/// `None` for any other bound (a list, a hash, `DEFAULT`, several columns).
#[must_use]
pub fn range_ends(bound: &str, kind: BoundKind) -> Option<(RangeEnd, RangeEnd)> {
    let rest = bound.strip_prefix("FOR VALUES FROM (")?;
    let (from, to) = rest.split_once(") TO (")?;
    let to = to.strip_suffix(')')?;
    let end = |text: &str| -> Option<RangeEnd> {
        match text {
            "MINVALUE" | "MAXVALUE" => Some(None),
            _ if text.contains(',') && !text.starts_with('\'') => None,
            _ => {
                let value = text
                    .strip_prefix('\'')
                    .and_then(|t| t.strip_suffix('\''))
                    .unwrap_or(text);
                Bound::parse(kind, value).map(Some)
            }
        }
    };
    Some((end(from)?, end(to)?))
}

/// How a brief's batches meet a partitioned target's partitions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Layout {
    /// `RANGE (l_shipdate)`.
    pub partition_key: String,
    /// Whether the target is range-partitioned on the `batch_by` column alone,
    /// so a batch can be matched to the partitions it falls in.
    pub by_batch_column: bool,
    pub partitions: Vec<PartitionUse>,
}

/// One partition and the batches that write to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionUse {
    pub name: String,
    pub bound: String,
    /// Batches whose range overlaps the partition's (every batch, when the
    /// partitioning is not by the `batch_by` column).
    pub batches: usize,
    /// One batch covers exactly this partition's range: partition-overwrite
    /// can build it whole and exchange it.
    pub aligned: bool,
    /// Why it cannot exchange it all the same ([`exchange_obstacle`]).
    pub obstacle: Option<String>,
}

impl Layout {
    /// Matches `batches` (on `batch_by` values of `kind`) with `partitions`.
    #[must_use]
    pub fn of(
        partition_key: &str,
        batch_column: &str,
        partitions: &[Partition],
        batches: &[BatchRange],
        kind: BoundKind,
    ) -> Self {
        let by_batch_column = [batch_column.to_owned(), quote_ident(batch_column)]
            .iter()
            .any(|c| partition_key == format!("RANGE ({c})"));
        // Each partition's range on the batch column, when it has one.
        let ends: Vec<Option<(RangeEnd, RangeEnd)>> = partitions
            .iter()
            .map(|p| {
                by_batch_column
                    .then(|| range_ends(&p.bound, kind))
                    .flatten()
            })
            .collect();
        let ranges: Vec<(RangeEnd, RangeEnd)> = ends.iter().flatten().copied().collect();
        let partitions = partitions
            .iter()
            .zip(ends)
            .map(|(p, ends)| {
                let (batches, aligned) = match ends {
                    Some((lo, hi)) => {
                        let touching: Vec<&BatchRange> =
                            batches.iter().filter(|b| overlaps(b, lo, hi)).collect();
                        let aligned = p.partition_key.is_none()
                            && matches!(touching.as_slice(), [b] if Some(b.lo) == lo && Some(b.hi) == hi);
                        (touching.len(), aligned)
                    }
                    // The default partition takes what the others do not.
                    None if by_batch_column => (
                        batches.iter().filter(|b| !covered(b, &ranges)).count(),
                        false,
                    ),
                    None => (batches.len(), false),
                };
                PartitionUse {
                    name: p.name.to_string(),
                    bound: p.bound.clone(),
                    batches,
                    aligned,
                    obstacle: None,
                }
            })
            .collect();
        Self {
            partition_key: partition_key.to_owned(),
            by_batch_column,
            partitions,
        }
    }

    /// A `batch_by` that would give each partition the scope writes to one
    /// batch of its own — `(start, end, step)` — when those partitions are
    /// range partitions of one width; `None` when they are not (or already are
    /// aligned).
    #[must_use]
    pub fn aligning_step(&self, kind: BoundKind) -> Option<(Bound, Bound, String)> {
        if !self.by_batch_column || self.aligned() {
            return None;
        }
        let ends: Vec<(Bound, Bound)> = self
            .touched()
            .map(|p| match range_ends(&p.bound, kind) {
                Some((Some(lo), Some(hi))) => Some((lo, hi)),
                _ => None,
            })
            .collect::<Option<_>>()?;
        let widths: Vec<String> = ends
            .iter()
            .map(|(lo, hi)| width(*lo, *hi))
            .collect::<Option<_>>()?;
        let step = widths.first()?;
        if widths.iter().any(|w| w != step) {
            return None;
        }
        Some((ends.first()?.0, ends.last()?.1, step.clone()))
    }

    /// The partitions the scope writes to.
    pub fn touched(&self) -> impl Iterator<Item = &PartitionUse> {
        self.partitions.iter().filter(|p| p.batches > 0)
    }

    /// Whether every partition the scope writes to is covered by exactly one
    /// batch of its own.
    #[must_use]
    pub fn aligned(&self) -> bool {
        self.touched().next().is_some() && self.touched().all(|p| p.aligned)
    }
}

/// A step from `lo` to `hi` as a brief writes it: whole years or months when
/// both are at the start of a month, else days, else seconds; an integer's
/// difference.
fn width(lo: Bound, hi: Bound) -> Option<String> {
    use chrono::{Datelike as _, NaiveDateTime, Timelike as _};
    let calendar = |lo: NaiveDateTime, hi: NaiveDateTime| -> Option<String> {
        let at_month_start = |t: NaiveDateTime| {
            t.day() == 1 && t.num_seconds_from_midnight() == 0 && t.nanosecond() == 0
        };
        if at_month_start(lo) && at_month_start(hi) {
            let months = (hi.year() - lo.year()) * 12 + i32::try_from(hi.month()).ok()?
                - i32::try_from(lo.month()).ok()?;
            return Some(if months % 12 == 0 {
                format!(
                    "{} year{}",
                    months / 12,
                    if months == 12 { "" } else { "s" }
                )
            } else {
                format!("{months} month{}", if months == 1 { "" } else { "s" })
            });
        }
        let span = hi - lo;
        if span.num_seconds() % 86_400 == 0 {
            let days = span.num_days();
            return Some(format!("{days} day{}", if days == 1 { "" } else { "s" }));
        }
        Some(format!("{} seconds", span.num_seconds()))
    };
    match (lo, hi) {
        (Bound::Integer(lo), Bound::Integer(hi)) => Some((hi - lo).to_string()),
        (Bound::Date(lo), Bound::Date(hi)) => {
            calendar(lo.and_hms_opt(0, 0, 0)?, hi.and_hms_opt(0, 0, 0)?)
        }
        (Bound::Timestamp(lo), Bound::Timestamp(hi)) => calendar(lo, hi),
        _ => None,
    }
}

fn overlaps(batch: &BatchRange, lo: RangeEnd, hi: RangeEnd) -> bool {
    lo.is_none_or(|lo| batch.hi > lo) && hi.is_none_or(|hi| batch.lo < hi)
}

/// Whether the ranges leave no part of the batch's range uncovered.
fn covered(batch: &BatchRange, ranges: &[(RangeEnd, RangeEnd)]) -> bool {
    let mut at = batch.lo;
    loop {
        let next = ranges
            .iter()
            .filter(|(lo, hi)| lo.is_none_or(|lo| lo <= at) && hi.is_none_or(|hi| hi > at))
            .map(|(_, hi)| *hi)
            .next();
        match next {
            None => return false,
            Some(None) => return true,
            Some(Some(hi)) if hi >= batch.hi => return true,
            Some(Some(hi)) => at = hi,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> Bound {
        Bound::parse(BoundKind::Date, s).unwrap()
    }

    fn partition(name: &str, bound: &str) -> Partition {
        Partition {
            name: TableName::parse(name).unwrap(),
            bound: bound.into(),
            partition_key: None,
        }
    }

    fn batches(bounds: &[&str]) -> Vec<BatchRange> {
        bounds
            .windows(2)
            .zip(0..)
            .map(|(w, no)| BatchRange {
                no,
                lo: date(w[0]),
                hi: date(w[1]),
            })
            .collect()
    }

    #[test]
    fn range_bounds_parse_with_open_ends() {
        assert_eq!(
            range_ends(
                "FOR VALUES FROM (MINVALUE) TO ('1992-01-01')",
                BoundKind::Date
            ),
            Some((None, Some(date("1992-01-01"))))
        );
        assert_eq!(
            range_ends("FOR VALUES FROM (10) TO (MAXVALUE)", BoundKind::Integer),
            Some((Some(Bound::Integer(10)), None))
        );
        assert_eq!(range_ends("FOR VALUES IN ('AIR')", BoundKind::Date), None);
        assert_eq!(range_ends("DEFAULT", BoundKind::Date), None);
        assert_eq!(
            range_ends("FOR VALUES FROM ('a', 1) TO ('b', 2)", BoundKind::Integer),
            None
        );
    }

    #[test]
    fn batches_meet_the_partitions_they_fall_in() {
        let parts = [
            partition("s.early", "FOR VALUES FROM (MINVALUE) TO ('1992-01-01')"),
            partition("s.y92", "FOR VALUES FROM ('1992-01-01') TO ('1993-01-01')"),
            partition(
                "s.y93_94",
                "FOR VALUES FROM ('1993-01-01') TO ('1995-01-01')",
            ),
            partition("s.rest", "DEFAULT"),
        ];
        let yearly = batches(&[
            "1992-01-01",
            "1993-01-01",
            "1994-01-01",
            "1995-01-01",
            "1996-01-01",
        ]);
        let layout = Layout::of("RANGE (d)", "d", &parts, &yearly, BoundKind::Date);
        let uses: Vec<(usize, bool)> = layout
            .partitions
            .iter()
            .map(|p| (p.batches, p.aligned))
            .collect();
        assert_eq!(uses, [(0, false), (1, true), (2, false), (1, false)]);
        assert!(!layout.aligned());
        let by_partition = batches(&["1992-01-01", "1993-01-01", "1995-01-01"]);
        let layout = Layout::of("RANGE (d)", "d", &parts, &by_partition, BoundKind::Date);
        assert!(layout.aligned(), "{layout:?}");
        assert_eq!(layout.touched().count(), 2);
        // One batch per year does not align with a two-year partition, and no
        // one step does: the touched partitions are one and two years wide.
        let monthly = batches(&["1992-01-01", "1992-07-01", "1993-01-01"]);
        let layout = Layout::of("RANGE (d)", "d", &parts, &monthly, BoundKind::Date);
        assert_eq!(
            layout.aligning_step(BoundKind::Date),
            Some((date("1992-01-01"), date("1993-01-01"), "1 year".into()))
        );
        let layout = Layout::of("RANGE (d)", "d", &parts, &yearly, BoundKind::Date);
        assert_eq!(layout.aligning_step(BoundKind::Date), None);
        // Partitioned on another column: every partition may take any batch.
        let layout = Layout::of("LIST (mode)", "d", &parts, &by_partition, BoundKind::Date);
        assert!(!layout.by_batch_column && !layout.aligned());
        assert_eq!(layout.touched().count(), 4);
    }
}
