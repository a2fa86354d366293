//! The statements of one run, built once from its brief and strategy: the
//! working set (filled and checked for the grain in one pass), each strategy's
//! writes (with before-images, the count of unmatched rows, and the NULLs and
//! orphaned references among the rows written, measured on what the write
//! returns), and the metrics of a batch's range before and after.
//! Identifiers are quoted; bounds and batch numbers are bound parameters.

use backfill_shared::brief::{Brief, OnMissing, Scope, Strategy};
use backfill_shared::checks::Unmatched;
use backfill_shared::control::drift::Fingerprints;
use backfill_shared::sql::{TableName, column_list, key_join, quote_ident};
use uuid::Uuid;

/// Which parameters a statement takes, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Binds {
    /// `$1` = batch number.
    Batch,
    /// `$1` = lower bound, `$2` = upper bound.
    Range,
    /// `$1` = lower bound, `$2` = upper bound, `$3` = batch number.
    RangeAndBatch,
    None,
}

/// Which figures a statement yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Counts {
    /// It returns one row: (inserted, updated, NULLs per rewritten column,
    /// orphans per reference), the last two over the rows it wrote.
    Written,
    /// It returns one row: (deleted, unmatched, unmatched at the lower bound).
    DeletedAndUnmatched,
    /// It returns one row: (unmatched, unmatched at the lower bound, rows of the range).
    Unmatched,
}

/// Where a batch learns how many target rows its range held before the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RangeRows {
    /// The strategy empties the range before it inserts: its delete counts them.
    Deleted,
    /// The source rows that met a target row, plus the unmatched rows deleted.
    MatchedAndDeleted,
    /// The measurement of unmatched rows counts them.
    Measured,
}

/// One write statement of a batch.
#[derive(Debug)]
pub(super) struct Step {
    pub(super) sql: String,
    pub(super) binds: Binds,
    pub(super) counts: Counts,
    pub(super) what: &'static str,
}

/// The statements of one run, built once from its brief and strategy.
/// Identifiers are quoted; bounds and batch numbers are bound parameters.
#[derive(Debug)]
pub struct WritePlan {
    pub(super) create_working_set: String,
    /// Per rule (each period's source, then `scope.source`): fills the
    /// working set and, over the rows it inserts, returns (rows,
    /// surplus rows of repeated keys, NULL keys, rows outside the range, rows
    /// `scope.where` does not match, and — looked at only when the source
    /// yielded nothing — whether the written table has rows in the range).
    pub(super) fill_working_set: Vec<String>,
    /// The keys the working set holds more than once, counted (only run when
    /// the fill found repeats).
    pub(super) count_duplicates: String,
    pub(super) range_rows: RangeRows,
    pub(super) steps: Vec<Step>,
    /// Per metric: its groups on the live target's range (what readers saw before).
    pub(super) metrics_before: Vec<(String, String)>,
    /// Per metric: its groups on the written table's range, after the write.
    pub(super) metrics_after: Vec<(String, String)>,
    /// The rewritten columns, in the order [`Counts::Written`] counts NULLs.
    pub(super) null_columns: Vec<String>,
    /// The referencing columns, in the order [`Counts::Written`] counts orphans.
    pub(super) reference_columns: Vec<String>,
    /// The drift guard: column definitions the run started with.
    pub(super) fingerprints: Fingerprints,
    /// The brief's scope: which rule (the index into `fill_working_set` and
    /// the exchange's sources) a batch follows, and where it accepts an empty
    /// source.
    pub(super) scope: Scope,
    /// partition-overwrite on a partitioned target: how a batch that covers
    /// one partition exactly builds it whole and exchanges it.
    pub(super) exchange: Option<ExchangePlan>,
}

/// What a batch needs to rewrite one partition whole: build a table like it
/// straight from the source, measure it, and exchange it under the fence.
#[derive(Debug)]
pub(super) struct ExchangePlan {
    pub(super) target: TableName,
    /// The columns written, quoted, in order.
    pub(super) all: String,
    /// The source of each rule (`$1`, `$2`: the batch's range).
    pub(super) sources: Vec<String>,
    /// The `batch_by` column, quoted.
    pub(super) by: String,
    /// The rows of the range the backfill owns, as `t`.
    pub(super) in_range: String,
    /// NULLs and orphans among the rows inserted, read from `ins`.
    pub(super) insert_figures: String,
    /// The key join of the replaced partition's rows `d` and the new ones `n`.
    pub(super) replaced_match: String,
    /// The key's first column: NULL in `n` when `d`'s key found no new row.
    pub(super) new_key: String,
    /// Keep the replaced partition as the batch's before-image (the run keeps
    /// before-images), or drop it.
    pub(super) keep_replaced: bool,
    pub(super) metrics: Vec<backfill_shared::brief::Metric>,
}

impl WritePlan {
    /// `write_to` is the table batches write to: the target itself (merge,
    /// partition-overwrite) or the table built beside it (staging-swap,
    /// parallel-version), and whether it is partitioned. `image_table`
    /// receives before-images, if any.
    #[must_use]
    pub fn new(
        brief: &Brief,
        write_to: &TableName,
        partitioned: bool,
        image_table: Option<&TableName>,
    ) -> Self {
        let scope = &brief.scope;
        let target = write_to.quoted();
        let written = scope.written_columns();
        let all = column_list(&written, None);
        let in_s = column_list(&written, Some("s"));
        let key_match = key_join(&scope.key, "t", "s");
        let key_group = column_list(&scope.key, None);
        let null_key = scope
            .key
            .iter()
            .map(|k| format!("{} IS NULL", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" OR ");
        let by = quote_ident(&scope.batch_by.column);
        let image = image_table.map(TableName::quoted);
        // The batch's working set: a temporary table per run and connection,
        // created once and emptied at every commit, so a batch pays no DDL and
        // its statements stay prepared.
        let ws = format!("bf_ws_{}", &Uuid::new_v4().simple().to_string()[..12]);
        let with_batch = |binds: Binds| match (image.is_some(), binds) {
            (true, Binds::None) => Binds::Batch,
            (true, Binds::Range) => Binds::RangeAndBatch,
            (_, b) => b,
        };
        let in_range = scope.owned_range("t");
        // A delete of the range's rows (narrowed by `filter`) that saves their
        // before-images and yields `(deleted, unmatched, unmatched at the lower
        // bound)` through `count`, which reads the deleted rows as `d`.
        let mut returned = scope.key.clone();
        if !returned.contains(&scope.batch_by.column) {
            returned.push(scope.batch_by.column.clone());
        }
        let returned = match &image {
            Some(_) => "t.*".to_owned(),
            None => column_list(&returned, Some("t")),
        };
        let d_match = key_join(&scope.key, "d", "s");
        let counted_delete = |filter: &str, count: &str| {
            let saved = image.as_ref().map_or_else(String::new, |img| {
                format!(", bf_image AS (INSERT INTO {img} SELECT $3, 'D', d.* FROM d)")
            });
            format!(
                "WITH d AS (DELETE FROM {target} t WHERE {in_range} {filter} RETURNING {returned}){saved}\n{count}"
            )
        };
        // NULLs and orphaned references among the rows a statement wrote, read
        // from what it returns (`column` names a column of a returned row): the
        // rows a batch leaves untouched are not read again.
        let references: Vec<(String, TableName, String)> = brief
            .validation
            .references
            .iter()
            .filter_map(|r| {
                let (parent, parent_column) = r.parent()?;
                Some((r.column.clone(), parent, parent_column))
            })
            .collect();
        let written_figures = |column: &dyn Fn(&str) -> String| {
            let nulls = scope
                .columns
                .iter()
                .map(|c| format!("count(*) FILTER (WHERE {} IS NULL)", column(c)))
                .collect::<Vec<_>>()
                .join(", ");
            let orphans = references
                .iter()
                .map(|(c, parent, pc)| {
                    format!(
                        "count(*) FILTER (WHERE {c} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{pc} = {c}))",
                        c = column(c),
                        parent = parent.quoted(),
                        pc = quote_ident(pc)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("ARRAY[{nulls}]::bigint[], ARRAY[{orphans}]::bigint[]")
        };
        let mut steps = Vec::new();
        match brief.write.strategy {
            Strategy::PartitionOverwrite => {
                steps.push(Step {
                    sql: counted_delete(
                        "",
                        &format!(
                            "SELECT count(*), count(*) FILTER (WHERE s.bf_hit IS NULL), count(*) FILTER (WHERE s.bf_hit IS NULL AND d.{by} = $1)
                               FROM d LEFT JOIN (SELECT DISTINCT {key_group}, true AS bf_hit FROM {ws}) s ON {d_match}"
                        ),
                    ),
                    binds: with_batch(Binds::Range),
                    counts: Counts::DeletedAndUnmatched,
                    what: "delete of the batch's range",
                });
                let saved = image.as_ref().map_or_else(String::new, |img| {
                    format!(", bf_image AS (INSERT INTO {img} SELECT $1, 'I', ins.* FROM ins)")
                });
                steps.push(Step {
                    sql: format!(
                        "WITH ins AS (INSERT INTO {target} ({all}) SELECT {in_s} FROM {ws} s RETURNING *){saved}
                         SELECT count(*), 0::bigint, {figures} FROM ins",
                        figures = written_figures(&|c| format!("ins.{}", quote_ident(c)))
                    ),
                    binds: with_batch(Binds::None),
                    counts: Counts::Written,
                    what: "insert of the source rows",
                });
            }
            Strategy::Merge | Strategy::StagingSwap | Strategy::ParallelVersion => {
                let excluded = scope
                    .columns
                    .iter()
                    .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let changed_excluded = format!(
                    "ROW({}) IS DISTINCT FROM ROW({})",
                    column_list(&scope.columns, Some("t")),
                    column_list(&scope.columns, Some("EXCLUDED"))
                );
                // One upsert. On a plain table `xmax = 0` tells the inserted
                // rows from the updated ones. A partitioned table returns no
                // system columns; there a key the statement's snapshot does
                // not hold (it does not see its own writes) was inserted.
                let inserted = if partitioned {
                    format!(
                        "NOT EXISTS (SELECT 1 FROM {target} o WHERE {})",
                        key_join(&scope.key, "o", "t")
                    )
                } else {
                    "t.xmax = 0".to_owned()
                };
                let upsert = format!(
                    "INSERT INTO {target} AS t ({all}) SELECT {in_s} FROM {ws} s
                     ON CONFLICT ({key_group}) DO UPDATE SET {excluded} WHERE {changed_excluded}{owned}
                     RETURNING t AS bf_row, ({inserted}) AS bf_new, {returned_key}",
                    returned_key = column_list(&scope.key, Some("t")),
                    // A key the source yields whose row the backfill does not own
                    // stays as it is. Here both `t` and EXCLUDED are in scope, so
                    // the unqualified predicate reads `t` through a subquery.
                    owned = scope.filter.as_deref().map_or_else(String::new, |w| {
                        format!(" AND EXISTS (SELECT 1 FROM (SELECT t.*) bf_owned WHERE ({w}))")
                    })
                );
                // Every part of one statement reads the same snapshot, so `o`
                // is the row before the update: its before-image, kept with a
                // hash of the row the update wrote, which rollback compares
                // with the row it finds to spare later writes.
                let saved = image.as_ref().map_or_else(String::new, |img| {
                    format!(
                        ", bf_inserted AS (INSERT INTO {img} SELECT $1, 'I', (up.bf_row).* FROM up WHERE up.bf_new),
                           bf_updated AS (INSERT INTO {img} SELECT $1, 'U', o.*, hashtextextended((up.bf_row)::text, 0)
                                            FROM {target} o JOIN up ON {old_match} WHERE NOT up.bf_new)",
                        old_match = key_join(&scope.key, "o", "up")
                    )
                });
                steps.push(Step {
                    sql: format!(
                        "WITH up AS ({upsert}){saved}
                         SELECT count(*) FILTER (WHERE bf_new), count(*) FILTER (WHERE NOT bf_new), {figures} FROM up",
                        figures = written_figures(&|c| format!("(up.bf_row).{}", quote_ident(c)))
                    ),
                    binds: with_batch(Binds::None),
                    counts: Counts::Written,
                    what: "upsert of new and changed rows",
                });
                steps.push(match brief.write.on_missing {
                    OnMissing::Delete => Step {
                        sql: counted_delete(
                            &format!("AND NOT EXISTS (SELECT 1 FROM {ws} s WHERE {key_match})"),
                            &format!("SELECT count(*), count(*), count(*) FILTER (WHERE d.{by} = $1) FROM d"),
                        ),
                        binds: with_batch(Binds::Range),
                        counts: Counts::DeletedAndUnmatched,
                        what: "delete of rows the source no longer yields",
                    },
                    // Kept, but counted: rows left stale are what the guard watches.
                    OnMissing::Keep => Step {
                        sql: Unmatched::measure_sql(scope, &target, &ws),
                        binds: Binds::Range,
                        counts: Counts::Unmatched,
                        what: "counting rows the source no longer yields",
                    },
                });
            }
        }
        let metric_sql = |table: &str| {
            brief
                .validation
                .metrics
                .iter()
                .map(|m| (m.name.clone(), m.query(table, &in_range)))
                .collect::<Vec<_>>()
        };
        let exchange = (brief.write.strategy == Strategy::PartitionOverwrite
            && partitioned
            && scope.filter.is_none())
        .then(|| ExchangePlan {
            target: write_to.clone(),
            all: all.clone(),
            sources: scope.rules().into_iter().map(str::to_owned).collect(),
            by: by.clone(),
            in_range: in_range.clone(),
            insert_figures: written_figures(&|c| format!("ins.{}", quote_ident(c))),
            replaced_match: key_join(&scope.key, "d", "n"),
            new_key: quote_ident(&scope.key[0]),
            keep_replaced: image.is_some(),
            metrics: brief.validation.metrics.clone(),
        });
        Self {
            exchange,
            metrics_before: metric_sql(&scope.target.quoted()),
            metrics_after: metric_sql(&target),
            null_columns: scope.columns.clone(),
            reference_columns: references.into_iter().map(|(c, ..)| c).collect(),
            fingerprints: Fingerprints::new(),
            create_working_set: format!(
                "SET LOCAL client_min_messages = warning;
                 CREATE TEMPORARY TABLE IF NOT EXISTS {ws} ON COMMIT DELETE ROWS AS SELECT {all} FROM {target} WITH NO DATA"
            ),
            range_rows: match (brief.write.strategy, brief.write.on_missing) {
                (Strategy::PartitionOverwrite, _) => RangeRows::Deleted,
                (_, OnMissing::Delete) => RangeRows::MatchedAndDeleted,
                (_, OnMissing::Keep) => RangeRows::Measured,
            },
            fill_working_set: scope
                .rules()
                .into_iter()
                .map(|source| {
                    format!(
                        "WITH s AS (INSERT INTO {ws} ({all}) SELECT {all} FROM ({source}\n) AS s RETURNING *{unowned_flag})
                         SELECT count(*),
                                count(*) FILTER (WHERE NOT ({null_key})) - count(DISTINCT ({key_group})) FILTER (WHERE NOT ({null_key})),
                                count(*) FILTER (WHERE {null_key}),
                                count(*) FILTER (WHERE {by} IS NULL OR NOT ({by} >= $1 AND {by} < $2)),
                                {unowned},
                                CASE WHEN count(*) = 0 THEN {range_has_rows} ELSE true END
                           FROM s",
                        range_has_rows = scope.range_has_rows(&target),
                        unowned_flag = scope
                            .filter
                            .as_deref()
                            .map_or_else(String::new, |w| format!(", ({w}) IS NOT TRUE AS bf_unowned")),
                        unowned = if scope.filter.is_some() {
                            "count(*) FILTER (WHERE bf_unowned)"
                        } else {
                            "0::bigint"
                        },
                    )
                })
                .collect(),
            scope: scope.clone(),
            count_duplicates: format!(
                "SELECT count(*) FROM (SELECT 1 FROM {ws} GROUP BY {key_group} HAVING count(*) > 1) d"
            ),
            steps,
        }
    }
}

impl WritePlan {
    /// Guards every batch against changes to these column definitions.
    #[must_use]
    pub fn guarding(mut self, fingerprints: Fingerprints) -> Self {
        self.fingerprints = fingerprints;
        self
    }
}
