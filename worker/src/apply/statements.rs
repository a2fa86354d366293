//! The statements of one run, built once from its brief and strategy: merge's
//! one statement per batch (the source read once beside the rows it replaces,
//! the grain measured on it, only new and changed rows written as the versions read, the removal,
//! before-images, NULLs among the rows written and orphans among the new or
//! changed references, the metrics before and, when it joins the whole range,
//! after), partition-overwrite's working set
//! and writes, and the metrics of a batch's range after.
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
    /// merge (and the tables staging-swap and parallel-version build): per
    /// rule, the batch's one statement. It reads the source once, beside the
    /// rows it replaces, writes the new and changed rows (each only as the
    /// version it read: `bf_xmin`), removes or counts
    /// the rows the source no longer yields, saves before-images, and returns
    /// one row: the grain as the working set's fill does, then what
    /// [`Counts::Written`] and the removal's [`Counts`] say, then per metric
    /// its groups and values before the write (two arrays), and, when
    /// [`WritePlan::after_in_merge`], the same after it.
    /// Empty for partition-overwrite, which fills a working set.
    pub(super) merge: Vec<Step>,
    /// The table batches write to.
    pub(super) written: TableName,
    pub(super) create_working_set: String,
    /// Per rule (each period's source, then `scope.source`): fills the
    /// working set and, over the rows it inserts, returns (rows,
    /// surplus rows of repeated keys, NULL keys, rows outside the range, rows
    /// `scope.where` does not match, and — looked at only when the source
    /// yielded nothing — whether the written table has rows in the range).
    pub(super) fill_working_set: Vec<String>,
    /// Per rule: the keys the source yields more than once in `[$1, $2)`,
    /// counted (run only once a batch has found repeats, to name them).
    pub(super) count_duplicates: Vec<String>,
    /// Per rule: the source's rows at the batch's lower bound `$1`, counted
    /// (run only when every unmatched row of a batch sits there, to tell a
    /// source written with `> $1`).
    pub(super) count_at_lower_bound: Vec<String>,
    pub(super) range_rows: RangeRows,
    pub(super) steps: Vec<Step>,
    /// Per metric: its groups on the live target's range (what readers saw
    /// before). The merge statement measures them itself, in its snapshot.
    pub(super) metrics_before: Vec<(String, String)>,
    /// Per metric: its groups on the written table's range, after the write.
    pub(super) metrics_after: Vec<(String, String)>,
    /// The merge statement also measures the metrics after (two arrays per
    /// metric after those of the metrics before): its join holds the whole
    /// range and the rows it returns are the rest.
    pub(super) after_in_merge: bool,
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

/// The type of each column of a table, by name, without its modifier
/// (`numeric`, not `numeric(18,2)`).
pub type ColumnTypes = std::collections::BTreeMap<String, String>;

/// The types of `table`'s columns, from the catalog.
pub async fn column_types(
    conn: &mut sqlx::PgConnection,
    table: &TableName,
) -> Result<ColumnTypes, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT attname::text, format_type(atttypid, NULL) FROM pg_attribute
          WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
    )
    .bind(table.quoted())
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

impl WritePlan {
    /// `write_to` is the table batches write to: the target itself (merge,
    /// partition-overwrite) or the table built beside it (staging-swap,
    /// parallel-version), and whether it is partitioned; `types` its
    /// columns' types. `image_table` receives before-images, if any.
    #[must_use]
    pub fn new(
        brief: &Brief,
        write_to: &TableName,
        partitioned: bool,
        types: &ColumnTypes,
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
        // A delete of the rows `rows` picks (after `DELETE FROM target t`),
        // saving their before-images, returning them as `d`.
        let delete_rows = |rows: &str| {
            let saved = image.as_ref().map_or_else(String::new, |img| {
                format!(", bf_deleted AS (INSERT INTO {img} SELECT $3, 'D', d.* FROM d)")
            });
            format!("d AS (DELETE FROM {target} t {rows} RETURNING {returned}){saved}")
        };
        // The range's rows, narrowed by `filter`.
        let delete = |filter: &str| delete_rows(&format!("WHERE {in_range} {filter}"));
        let counted_delete =
            |filter: &str, count: &str| format!("WITH {}\n{count}", delete(filter));
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
        let null_figures = |column: &dyn Fn(&str) -> String| {
            let nulls = scope
                .columns
                .iter()
                .map(|c| format!("count(*) FILTER (WHERE {} IS NULL)", column(c)))
                .collect::<Vec<_>>()
                .join(", ");
            format!("ARRAY[{nulls}]::bigint[]")
        };
        // `only(column, i)` opens the condition on the i-th reference: merge
        // probes only the rows it writes whose reference is new or changed.
        let orphan_figures = |column: &dyn Fn(&str) -> String,
                              only: &dyn Fn(&str, usize) -> String| {
            let orphans = references
                .iter()
                .enumerate()
                .map(|(i, (c, parent, pc))| {
                    format!(
                        "count(*) FILTER (WHERE {only}{c} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{pc} = {c}))",
                        only = only(&column(c), i),
                        c = column(c),
                        parent = parent.quoted(),
                        pc = quote_ident(pc)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("ARRAY[{orphans}]::bigint[]")
        };
        let written_figures = |column: &dyn Fn(&str) -> String| {
            format!(
                "{}, {}",
                null_figures(column),
                orphan_figures(column, &|_, _| String::new())
            )
        };
        // What a batch's rows in the working set or the source (`s`) say of
        // the grain: (rows, surplus rows of repeated keys, NULL keys, rows
        // outside the range, rows `scope.where` does not match, and — looked
        // at only when there are none — whether the written table has rows in
        // the range).
        let grain = format!(
            "SELECT count(*),
                    count(*) FILTER (WHERE NOT ({null_key})) - count(DISTINCT ({key_group})) FILTER (WHERE NOT ({null_key})),
                    count(*) FILTER (WHERE {null_key}),
                    count(*) FILTER (WHERE {by} IS NULL OR NOT ({by} >= $1 AND {by} < $2)),
                    {unowned},
                    CASE WHEN count(*) = 0 THEN {range_has_rows} ELSE true END
               FROM s",
            range_has_rows = scope.range_has_rows(&target),
            unowned = if scope.filter.is_some() {
                "count(*) FILTER (WHERE bf_unowned)"
            } else {
                "0::bigint"
            },
        );
        let unowned_flag = scope.filter.as_deref().map_or_else(String::new, |w| {
            format!(", ({w}) IS NOT TRUE AS bf_unowned")
        });
        let metric_sql = |table: &str| {
            brief
                .validation
                .metrics
                .iter()
                .map(|m| (m.name.clone(), m.query(table, &in_range)))
                .collect::<Vec<_>>()
        };
        let metrics_before = metric_sql(&scope.target.quoted());
        let mut steps = Vec::new();
        let mut merge = Vec::new();
        let mut after_in_merge = false;
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
                let changed = |new: &str, old: &str| {
                    format!(
                        "ROW({}) IS DISTINCT FROM ROW({})",
                        column_list(&scope.columns, Some(new)),
                        column_list(&scope.columns, Some(old))
                    )
                };
                // In `j`, the source's columns are `bf_n_<i>`, in the order of
                // `written`, beside the columns of the row each replaces.
                let n = |c: &str| {
                    let i = written.iter().position(|w| w == c).unwrap_or(0);
                    format!("bf_n_{i}")
                };
                let n_list = |cs: &[String]| cs.iter().map(|c| n(c)).collect::<Vec<_>>().join(", ");
                // The rows of the source a batch may write: the grain, checked
                // on `s`, fails the batch for any other.
                let valid = format!(
                    "NOT ({null_key}) AND {by} >= $1 AND {by} < $2{}",
                    if scope.filter.is_some() {
                        " AND NOT bf_unowned"
                    } else {
                        ""
                    },
                    null_key = scope
                        .key
                        .iter()
                        .map(|k| format!("{} IS NULL", n(k)))
                        .collect::<Vec<_>>()
                        .join(" OR "),
                    by = n(&scope.batch_by.column),
                );
                // Each source row beside the row it replaces (`o`, read in the
                // statement's snapshot: the row before the write). When the
                // key holds the batch column, the rows of the range are all
                // the rows a source row may replace, and a full join with them
                // also yields the rows the source no longer yields (to delete
                // by key) and, under merge, the range as it was (the metrics
                // before). Otherwise each source row looks up its key.
                let whole_range = scope.key.contains(&scope.batch_by.column);
                let old_references = references
                    .iter()
                    .enumerate()
                    .map(|(i, (c, ..))| format!(", o.{} AS bf_ref_{i}", quote_ident(c)))
                    .collect::<String>();
                // The row replaced, whole, for its before-image: the
                // table's row type either way.
                let old_row = match (image.is_some(), whole_range) {
                    (false, _) => "",
                    (true, true) => ", t AS bf_old",
                    (true, false) => ", o AS bf_old",
                };
                let first_key = quote_ident(&scope.key[0]);
                let joined = format!(
                    "j AS MATERIALIZED (SELECT {new}, s.bf_src{unowned}{old_references}{old_columns},
                                               (coalesce(s.bf_src, false) AND (o.{first_key} IS NULL OR {changed})) AS bf_write
                                          FROM s {join} ON {old_match})",
                    new = written
                        .iter()
                        .map(|c| format!("s.{} AS {}", quote_ident(c), n(c)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    unowned = if scope.filter.is_some() {
                        ", s.bf_unowned"
                    } else {
                        ""
                    },
                    old_columns = if whole_range {
                        ", o.*".to_owned()
                    } else {
                        format!("{old_row}, o.xmin AS bf_xmin")
                    },
                    join = if whole_range {
                        format!(
                            "FULL JOIN (SELECT t.*, t.xmin AS bf_xmin{old_row} FROM {target} t WHERE {in_range}) o"
                        )
                    } else {
                        format!("LEFT JOIN {target} o")
                    },
                    changed = changed("s", "o"),
                    old_match = key_join(&scope.key, "o", "s"),
                );
                // Only new and changed rows are written: a row the source
                // reproduces as it is costs no lock and no write. A row is
                // written only as the version the statement read (`bf_xmin`,
                // its snapshot's): one that a concurrent transaction changed
                // or deleted since is left as that transaction left it, and a
                // key it inserted meanwhile stays its — the end state is that
                // of the batch first, then the other writer. An update at READ
                // COMMITTED re-checks its condition on the newest version of
                // the row, whose `xmin` differs.
                let set = scope
                    .columns
                    .iter()
                    .map(|c| format!("{} = j.{}", quote_ident(c), n(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let upsert = format!(
                    "bf_upd AS (UPDATE {target} AS t SET {set} FROM j
                                 WHERE j.bf_write AND j.bf_xmin IS NOT NULL AND {valid} AND {same_key}
                                   AND t.xmin = j.bf_xmin{owned}
                                 RETURNING t AS bf_row, false AS bf_new, {returned_key}),
                     bf_ins AS (INSERT INTO {target} AS t ({all}) SELECT {new} FROM j
                                 WHERE j.bf_write AND j.bf_xmin IS NULL AND {valid}
                                 ON CONFLICT ({key_group}) DO NOTHING
                                 RETURNING t AS bf_row, true AS bf_new, {returned_key}),
                     up AS (SELECT * FROM bf_upd UNION ALL SELECT * FROM bf_ins)",
                    new = n_list(&written),
                    same_key = scope
                        .key
                        .iter()
                        .map(|k| format!("t.{} = j.{}", quote_ident(k), n(k)))
                        .collect::<Vec<_>>()
                        .join(" AND "),
                    returned_key = column_list(&scope.key, Some("t")),
                    // A key the source yields whose row the backfill does not own
                    // stays as it is; the predicate reads `t` through a subquery,
                    // since `j` holds columns of the same names.
                    owned = scope.filter.as_deref().map_or_else(String::new, |w| {
                        format!(" AND EXISTS (SELECT 1 FROM (SELECT t.*) bf_owned WHERE ({w}))")
                    })
                );
                // A row written beside its row of `j`.
                let written_match = scope
                    .key
                    .iter()
                    .map(|k| format!("j.{} = up.{}", n(k), quote_ident(k)))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                // Before-images: the inserted rows, and the row each update
                // replaced (`o`) with a hash of the row it wrote, which
                // rollback compares with the row it finds to spare later writes.
                let saved = image.as_ref().map_or_else(String::new, |img| {
                    format!(
                        ",
                         bf_inserted AS (INSERT INTO {img} SELECT $3, 'I', (up.bf_row).* FROM up WHERE up.bf_new),
                         bf_updated AS (INSERT INTO {img} SELECT $3, 'U', (j.bf_old).*, hashtextextended((up.bf_row)::text, 0)
                                          FROM up JOIN j ON {written_match} WHERE NOT up.bf_new)"
                    )
                });
                let (removal, removed) = match brief.write.on_missing {
                    OnMissing::Delete => (
                        format!(
                            ",\n{}",
                            if whole_range {
                                delete_rows(&format!(
                                    "USING j WHERE j.bf_src IS NULL AND {} AND t.xmin = j.bf_xmin",
                                    key_join(&scope.key, "t", "j")
                                ))
                            } else {
                                delete(&format!(
                                    "AND NOT EXISTS (SELECT 1 FROM s WHERE {key_match})"
                                ))
                            }
                        ),
                        format!(
                            "SELECT count(*), count(*), count(*) FILTER (WHERE d.{by} = $1) FROM d"
                        ),
                    ),
                    // Kept, but counted: rows left stale are what the guard watches.
                    OnMissing::Keep => (String::new(), Unmatched::measure_sql(scope, &target, "s")),
                };
                // Merge writes the live target, which `j` holds as it was
                // when it joined the whole range.
                let before_from_j = whole_range && brief.write.strategy == Strategy::Merge;
                // A metric's groups and values as two arrays, in column `name`.
                let measured = |query: &str, name: String| {
                    format!(
                        ", (SELECT array_agg(m.g), array_agg(m.v) FROM ({query}) m(g, v)) {name}"
                    )
                };
                let measured_before = brief
                    .validation
                    .metrics
                    .iter()
                    .zip(&metrics_before)
                    .enumerate()
                    .map(|(i, (m, (_, query)))| {
                        let query = if before_from_j {
                            m.query("j", &format!("t.{first_key} IS NOT NULL"))
                        } else {
                            query.clone()
                        };
                        measured(&query, format!("bf_metric_{i}"))
                    })
                    .collect::<String>();
                // The range after the write, when `j` holds all of it: the
                // rows the upsert returned, and the rows of the range it left
                // as they were (not rewritten, not removed). The metrics after
                // are measured there, in the same statement, instead of
                // reading the range again. With `scope.where`, a source row
                // may meet a row the backfill does not own and leave it be,
                // so the range is read again after the write.
                after_in_merge = whole_range
                    && scope.filter.is_none()
                    && !types.is_empty()
                    && !brief.validation.metrics.is_empty();
                let (after_rows, measured_after) = if after_in_merge {
                    let columns = |row: &str| {
                        types
                            .keys()
                            .map(|c| format!("{row}.{}", quote_ident(c)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let kept = match brief.write.on_missing {
                        OnMissing::Delete => " AND j.bf_src",
                        OnMissing::Keep => "",
                    };
                    let after = brief
                        .validation
                        .metrics
                        .iter()
                        .enumerate()
                        .map(|(i, m)| {
                            measured(&m.query("bf_after", &in_range), format!("bf_after_{i}"))
                        })
                        .collect::<String>();
                    (
                        format!(
                            ",
                             bf_after AS (SELECT {from_up} FROM up
                                          UNION ALL
                                          SELECT {from_j} FROM j WHERE j.{first_key} IS NOT NULL AND NOT j.bf_write{kept})",
                            from_up = columns("(up.bf_row)"),
                            from_j = columns("j"),
                        ),
                        // Rows the upsert meant to write and did not: a
                        // concurrent writer changed or removed them since the
                        // statement's snapshot, so `bf_after` does not hold
                        // them as they are; the worker then measures the
                        // range again (the last column).
                        format!(
                            "{after}, (SELECT (SELECT count(*) FROM j WHERE j.bf_write AND {valid}) - (SELECT count(*) FROM up)) bf_skipped"
                        ),
                    )
                } else {
                    (String::new(), String::new())
                };
                // The rows written, each beside its source row and the
                // references of the row it replaced.
                let written_rows = if references.is_empty() {
                    "up".to_owned()
                } else {
                    format!("up LEFT JOIN j ON {written_match}")
                };
                let written_by = |c: &str| format!("(up.bf_row).{}", quote_ident(c));
                let changed_reference =
                    |c: &str, i: usize| format!("{c} IS DISTINCT FROM j.bf_ref_{i} AND ");
                let removed_counts = match brief.write.on_missing {
                    OnMissing::Delete => Counts::DeletedAndUnmatched,
                    OnMissing::Keep => Counts::Unmatched,
                };
                // The source's rows as the written table's types (without
                // their modifiers, so the insert still rounds or refuses a
                // value as it would), so that they compare with its rows.
                let typed = written
                    .iter()
                    .map(|c| {
                        let name = quote_ident(c);
                        match types.get(c) {
                            Some(t) => format!("CAST(s.{name} AS {t}) AS {name}"),
                            None => format!("s.{name}"),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                merge = scope
                    .rules()
                    .into_iter()
                    .map(|source| Step {
                        sql: format!(
                            "WITH s AS MATERIALIZED (SELECT *{unowned_flag}, true AS bf_src FROM (SELECT {typed} FROM ({source}\n) AS s) s),
                             {joined},
                             {upsert}{saved}{removal}{after_rows}
                             SELECT * FROM ({grain}) bf_grain,
                                  (SELECT count(*) FILTER (WHERE bf_new), count(*) FILTER (WHERE NOT bf_new), {nulls}, {orphans}
                                     FROM {written_rows}) bf_written,
                                  ({removed}) bf_removed{measured_before}{measured_after}",
                            nulls = null_figures(&written_by),
                            orphans = orphan_figures(&written_by, &changed_reference),
                        ),
                        binds: with_batch(Binds::Range),
                        counts: removed_counts,
                        what: "the batch's source, upsert and removal",
                    })
                    .collect();
            }
        }
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
            written: write_to.clone(),
            metrics_before,
            metrics_after: metric_sql(&target),
            after_in_merge,
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
            fill_working_set: if merge.is_empty() {
                scope
                    .rules()
                    .into_iter()
                    .map(|source| {
                        format!(
                            "WITH s AS (INSERT INTO {ws} ({all}) SELECT {all} FROM ({source}\n) AS s RETURNING *{unowned_flag})\n{grain}"
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
            count_duplicates: scope
                .rules()
                .into_iter()
                .map(|source| {
                    format!(
                        "SELECT count(*) FROM (SELECT 1 FROM ({source}\n) AS s WHERE NOT ({null_key})
                                                GROUP BY {key_group} HAVING count(*) > 1) d"
                    )
                })
                .collect(),
            count_at_lower_bound: scope
                .rules()
                .into_iter()
                .map(|source| format!("SELECT count(*) FROM ({source}\n) AS s WHERE s.{by} = $1"))
                .collect(),
            scope: scope.clone(),
            merge,
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
