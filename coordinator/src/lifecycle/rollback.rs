//! `backfill rollback RUN [--force] [--overwrite-newer]`: puts the target back
//! exactly as it was before the run, sparing writes made since.
//!
//! - merge and partition-overwrite: from the before-images, batch by batch in
//!   reverse order, each batch in one transaction (rows the batch inserted are
//!   deleted, rows it updated or deleted are restored; a partition the batch
//!   exchanged is exchanged back for the one it kept, under the lock
//!   timeout). A row that is neither as the run left it nor as it was before
//!   (changed since the run, a deleted row inserted again, an inserted row
//!   changed) is a conflict — and so is an exchanged partition whose rows
//!   changed: it is left as it is and listed, its batch stays to be rolled
//!   back, and the command fails, unless `--overwrite-newer` (logged) restores
//!   it anyway;
//! - staging-swap and parallel-version after cutover: swap the old table back;
//!   before cutover: drop the table the run built (the target was never touched).
//!
//! Fences first: before restoring anything, the run moves to `rolling_back`
//! (a running run stops) and every batch not applied is fenced in the ledger,
//! waiting for a batch that is committing at that moment, so no batch in
//! flight can commit after rollback has read what to restore (a late one is
//! refused like a stale worker, and logged `stale_commit_refused`).
//!
//! Refused, naming the runs, when a later run has changed the same target, unless
//! `--force`. Logged, and resumable: a rollback cut short continues from the
//! batches not yet restored.

use super::{swap, writes_live_target};
use crate::notify::{self, Happened, Step};
use crate::{CliError, Result};
use backfill_shared::brief::Brief;
use backfill_shared::checks::Exchanged;
use backfill_shared::control::batches::BatchState;
use backfill_shared::control::capture::{Capture, Carried, Pass};
use backfill_shared::control::runs::{self, Run, RunState};
use backfill_shared::control::{IMAGE_AFTER_HASH, batches, log, maintenance};
use backfill_shared::partitions;
use backfill_shared::sql::{TableName, column_list, key_join, quote_ident};
use sqlx::{AssertSqlSafe, PgPool};
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Default, serde::Serialize)]
pub struct RollbackReport {
    /// Batches not applied when rollback began, fenced so they never apply
    /// (in flight, queued or pending; a running run stops).
    pub batches_fenced: Vec<u32>,
    pub batches_restored: usize,
    pub rows_deleted: u64,
    pub rows_restored: u64,
    /// Rows changed since the run that `--overwrite-newer` restored anyway.
    pub newer_rows_overwritten: usize,
    pub swapped_back: bool,
    /// Keys written to the exposed table since cutover, carried back into the
    /// table swapped back.
    pub live_writes_carried: u64,
    /// Rows `rollback.erased` names that rollback did not put back.
    pub erased_not_restored: u64,
    pub dropped: Option<String>,
    /// The brief's refresh steps run again after a cut-over run was restored.
    pub refresh_statements: usize,
    pub refreshed_materialized_views: Vec<String>,
    /// The downstream metrics measured after, each held to its figure before
    /// the run.
    pub downstream: crate::downstream::After,
}

impl RollbackReport {
    /// What rollback did, for a person.
    #[must_use]
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        if !self.batches_fenced.is_empty() {
            let _ = writeln!(
                s,
                "stopped the run and fenced {} batch(es) not applied: none of them will ever commit",
                self.batches_fenced.len()
            );
        }
        let overwritten = if self.newer_rows_overwritten > 0 {
            format!(
                "; {} row(s) written since the run overwritten (--overwrite-newer)",
                self.newer_rows_overwritten
            )
        } else {
            String::new()
        };
        if self.swapped_back {
            let _ = writeln!(
                s,
                "swapped the previous table back in, carrying {} row(s) written since cutover{overwritten}",
                self.live_writes_carried,
            );
        } else {
            let _ = writeln!(
                s,
                "restored {} batch(es): took out the {} row version(s) the run wrote (updated or inserted), \
                 then put back the {} row(s) as they were before it{overwritten}",
                self.batches_restored, self.rows_deleted, self.rows_restored,
            );
        }
        if self.erased_not_restored > 0 {
            let _ = writeln!(
                s,
                "kept {} erased row(s) from coming back (rollback.erased)",
                self.erased_not_restored
            );
        }
        if let Some(dropped) = &self.dropped {
            let _ = writeln!(s, "dropped {dropped}");
        }
        if self.refresh_statements > 0 {
            let _ = writeln!(
                s,
                "ran the brief's {} refresh step(s) again, so what reads the target follows it back",
                self.refresh_statements
            );
        }
        if !self.refreshed_materialized_views.is_empty() {
            let _ = writeln!(
                s,
                "refreshed materialized views: {}",
                self.refreshed_materialized_views.join(", ")
            );
        }
        s.push_str(&self.downstream.render("rollback"));
        s
    }
}

/// Runs the brief's refresh steps again, each once (a rollback run again
/// after a failed step goes on from it); how many ran.
async fn refresh_again(pool: &PgPool, run: &Run, actor: &str) -> Result<usize> {
    let run_id = run.run_id;
    let done = log::refreshes_done(pool, run_id, "rollback_step").await?;
    let mut ran = 0;
    for (index, refresh) in run.brief.dependencies.refresh.iter().enumerate() {
        let index = i64::try_from(index).unwrap_or(i64::MAX);
        if done.contains(&index) {
            continue;
        }
        let manifest = run.brief.dependencies.dbt_manifest.as_deref();
        let detail =
            super::cutover::refresh_step(pool, run_id, actor, refresh, manifest, index, "rollback")
                .await?;
        log::append(
            pool,
            run_id,
            actor,
            "rollback_step",
            None,
            serde_json::json!({ "step": "refresh", "detail": detail }),
        )
        .await?;
        ran += 1;
    }
    Ok(ran)
}

/// A row written since the run: neither as the run left it nor as it was before.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Conflict {
    pub batch_no: i32,
    /// The key's values, as a row literal.
    pub key: String,
    /// The row in the table now (`None`: there is none).
    pub now: Option<String>,
    /// The row rollback would put back (`None`: it would delete the row).
    pub before: Option<String>,
}

/// How a rollback may proceed.
#[derive(Debug, Clone, Copy)]
pub struct RollbackOptions {
    /// Roll back even though a later run changed the same target.
    pub force: bool,
    /// Restore rows changed since the run too.
    pub overwrite_newer: bool,
    pub lock_timeout: Duration,
}

impl Default for RollbackOptions {
    fn default() -> Self {
        Self {
            force: false,
            overwrite_newer: false,
            lock_timeout: Duration::from_secs(5),
        }
    }
}

/// A rollback asked of a run rolled back (at `at`, when known).
fn already_rolled_back(run_id: Uuid, at: Option<chrono::DateTime<chrono::Utc>>) -> CliError {
    CliError::WrongState(format!(
        "run {run_id} is already rolled back{}: the target is as it was before the run. Nothing was done; \
         `backfill cleanup {run_id}` drops what the run kept",
        backfill_shared::text::when(at)
    ))
}

/// Conflicts listed in an error and in the run log, at most.
const CONFLICTS_SHOWN: usize = 20;

/// Conflicts as the run log keeps them: batch and key, never the rows' values.
/// The run log is append-only, so a value written there (personal data a
/// privacy erasure must remove) could never be deleted; the values are shown
/// in the command's output only.
fn keys_only(conflicts: &[Conflict]) -> Vec<serde_json::Value> {
    conflicts
        .iter()
        .map(|c| serde_json::json!({ "batch_no": c.batch_no, "key": c.key }))
        .collect()
}

pub async fn rollback(
    pool: &PgPool,
    run_id: Uuid,
    actor: &str,
    options: RollbackOptions,
) -> Result<RollbackReport> {
    let RollbackOptions {
        force,
        overwrite_newer,
        lock_timeout,
    } = options;
    let run = runs::load(pool, run_id).await?;
    super::approve::as_owner_or_reviewer(pool, &run, "roll back").await?;
    if run.state == RunState::RolledBack {
        return Err(already_rolled_back(run_id, run.rolled_back_at));
    }
    let later = runs::later_runs_on_target(pool, run_id).await?;
    if !later.is_empty() {
        let names = later
            .iter()
            .map(|(id, state)| format!("{id} ({state})"))
            .collect::<Vec<_>>()
            .join(", ");
        if !force {
            return Err(CliError::BadInput(format!(
                "a later run changed {} since run {run_id}: {names}. Rolling back would undo its work too; roll it back first, or pass --force",
                run.brief.scope.target
            )));
        }
        log::append(
            pool,
            run_id,
            actor,
            "rollback_forced",
            None,
            serde_json::json!({ "later_runs": names }),
        )
        .await?;
    }
    // Stop and fence first: from here no batch of the run commits.
    let Some(fenced) = runs::begin_rollback(pool, run_id, actor, lock_timeout).await? else {
        return Err(already_rolled_back(run_id, None));
    };
    notify::emit(pool, run_id, Happened::Rollback(Step::Started)).await;
    let restored = async {
        let mut report = if writes_live_target(&run.brief) {
            restore_before_images(pool, &run, actor, overwrite_newer, lock_timeout).await?
        } else {
            restore_side_table(pool, &run, lock_timeout, overwrite_newer).await?
        };
        report.refreshed_materialized_views =
            swap::refresh_materialized_views(pool, &run.brief.scope.target).await?;
        // What cutover refreshed from the new data is refreshed again from the
        // old (dbt models, summary tables), so downstream follows the rollback.
        if run.cut_over_at.is_some() {
            report.refresh_statements = refresh_again(pool, &run, actor).await?;
        }
        report.batches_fenced = fenced;
        Ok::<_, CliError>(report)
    };
    let mut report = match restored.await {
        Ok(report) => report,
        Err(e) => {
            notify::emit(
                pool,
                run_id,
                Happened::Rollback(Step::Failed(e.to_string())),
            )
            .await;
            return Err(e);
        }
    };
    runs::transition(
        pool,
        run_id,
        &[RunState::RollingBack],
        RunState::RolledBack,
        actor,
        None,
    )
    .await?;
    report.downstream =
        crate::downstream::After::measure(pool, &run, actor, crate::downstream::Moment::Rollback)
            .await;
    log::append(
        pool,
        run_id,
        actor,
        "rollback_done",
        None,
        serde_json::to_value(&report).unwrap_or_default(),
    )
    .await?;
    notify::emit(pool, run_id, Happened::Rollback(Step::Done)).await;
    Ok(report)
}

async fn restore_before_images(
    pool: &PgPool,
    run: &Run,
    actor: &str,
    overwrite_newer: bool,
    lock_timeout: Duration,
) -> Result<RollbackReport> {
    let run_id = run.run_id;
    let scope = &run.brief.scope;
    let Some(image) = run.image_table.as_deref().and_then(TableName::parse) else {
        return Err(CliError::BadInput(format!(
            "run {run_id} kept no before-images (snapshot = false), so it cannot be rolled back; restore {} from a backup{}",
            scope.target,
            run.brief
                .rollback
                .without_images
                .as_deref()
                .map_or_else(String::new, |way| format!(" (the brief's way back: {way})"))
        )));
    };
    // Generated columns are recomputed by PostgreSQL; every other column is restored.
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute
          WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
          ORDER BY attnum",
    )
    .bind(scope.target.quoted())
    .fetch_all(pool)
    .await?;
    // Images kept before the after-hash existed cannot tell a later update.
    let has_after_hash: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass AND attname = $2 AND NOT attisdropped)",
    )
    .bind(image.quoted())
    .bind(IMAGE_AFTER_HASH)
    .fetch_one(pool)
    .await?;
    let statements = Statements::new(run, &image, &columns, has_after_hash);
    // Last applied first.
    let mut applied = batches::numbers_in_state(pool, run_id, BatchState::Applied).await?;
    applied.sort_unstable_by(|a, b| b.cmp(a));
    let mut report = RollbackReport::default();
    let mut conflicts = Vec::new();
    let exchanged = batches::exchanges(pool, run_id).await?;
    for batch in applied.into_iter().filter_map(|no| i32::try_from(no).ok()) {
        if let Some(exchange) = exchanged.get(&batch) {
            let back = Back {
                batch,
                exchange,
                overwrite_newer,
                lock_timeout,
            };
            match exchange_back(pool, run, actor, back).await? {
                Some(conflict) => conflicts.push(conflict),
                None => report.batches_restored += 1,
            }
            continue;
        }
        let mut tx = pool.begin().await?;
        sqlx::raw_sql(AssertSqlSafe(statements.create_spared.as_str()))
            .execute(&mut *tx)
            .await?;
        let found: Vec<Conflict> = sqlx::query_as(AssertSqlSafe(statements.conflicts.as_str()))
            .bind(batch)
            .bind(overwrite_newer)
            .fetch_all(&mut *tx)
            .await?;
        let spared = !overwrite_newer && !found.is_empty();
        if !found.is_empty() {
            log::append(
                &mut *tx,
                run_id,
                actor,
                if spared {
                    "rollback_conflicts"
                } else {
                    "rollback_overwrote_newer"
                },
                u32::try_from(batch).ok(),
                serde_json::json!({
                    "rows": found.len(),
                    "conflicts": keys_only(&found[..found.len().min(CONFLICTS_SHOWN)]),
                }),
            )
            .await?;
        }
        let deleted = sqlx::query(AssertSqlSafe(statements.delete.as_str()))
            .bind(batch)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let erased = match &statements.erased_kept {
            Some(count) => {
                sqlx::query_scalar::<_, i64>(AssertSqlSafe(count.as_str()))
                    .bind(batch)
                    .fetch_one(&mut *tx)
                    .await?
            }
            None => 0,
        };
        let restored = sqlx::query(AssertSqlSafe(statements.insert.as_str()))
            .bind(batch)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        report.erased_not_restored += u64::try_from(erased).unwrap_or(0);
        if !spared {
            batches::mark_rolled_back(&mut tx, run_id, batch).await?;
            report.batches_restored += 1;
            report.newer_rows_overwritten += found.len();
        }
        log::append(
            &mut *tx,
            run_id,
            actor,
            "batch_rolled_back",
            u32::try_from(batch).ok(),
            serde_json::json!({ "deleted": deleted, "restored": restored, "conflicts_spared": if spared { found.len() } else { 0 }, "erased_not_restored": erased }),
        )
        .await?;
        tx.commit().await?;
        report.rows_deleted += deleted;
        report.rows_restored += restored;
        if spared {
            conflicts.extend(found);
        }
    }
    if !conflicts.is_empty() {
        return Err(CliError::Halted(conflict_message(run, &conflicts)));
    }
    let mut conn = pool.acquire().await?;
    maintenance::clear(&mut conn, &scope.target, run_id).await?;
    Ok(report)
}

/// One exchanged batch to put back.
struct Back<'a> {
    batch: i32,
    exchange: &'a Exchanged,
    overwrite_newer: bool,
    lock_timeout: Duration,
}

/// Puts back the partition a batch exchanged: checks it is as the batch left
/// it (as many rows, none written by another transaction), makes the kept partition provably fit its bound
/// while it is still detached (a `CHECK`, so attaching it scans nothing), then
/// in one transaction under the lock timeout detaches and drops the batch's
/// partition and attaches the kept one under its name. Returns the conflict
/// when the partition changed since and `overwrite_newer` is not given.
async fn exchange_back(
    pool: &PgPool,
    run: &Run,
    actor: &str,
    back: Back<'_>,
) -> Result<Option<Conflict>> {
    let Back {
        batch,
        exchange,
        overwrite_newer,
        lock_timeout,
    } = back;
    let run_id = run.run_id;
    let target = &run.brief.scope.target;
    let unreadable = |what: &str| {
        CliError::Internal(format!(
            "run {run_id} batch {batch} records an unreadable {what}: {exchange:?}"
        ))
    };
    let partition = TableName::parse(&exchange.partition).ok_or_else(|| unreadable("partition"))?;
    let kept = exchange
        .kept_as
        .as_deref()
        .and_then(TableName::parse)
        .ok_or_else(|| unreadable("kept partition"))?;
    let Some((Some(lo), Some(hi))) = partitions::range_ends(&exchange.bound, run.bound_kind) else {
        return Err(unreadable("bound"));
    };
    let (rows, rewritten): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*), count(*) FILTER (WHERE xmin::text <> $1) FROM {}",
        partition.quoted()
    )))
    .bind(&exchange.xid)
    .fetch_one(pool)
    .await?;
    let changed = rows != exchange.rows || rewritten > 0;
    let conflict = changed.then(|| Conflict {
        batch_no: batch,
        key: format!("partition {}", exchange.partition),
        now: Some(format!(
            "{rows} row(s), {rewritten} of them written since; the run wrote {}",
            exchange.rows
        )),
        before: Some(format!("the partition kept as {kept}")),
    });
    if let Some(conflict) = &conflict {
        log::append(
            pool,
            run_id,
            actor,
            if overwrite_newer {
                "rollback_overwrote_newer"
            } else {
                "rollback_conflicts"
            },
            u32::try_from(batch).ok(),
            serde_json::json!({ "rows": 1, "conflicts": keys_only(std::slice::from_ref(conflict)) }),
        )
        .await?;
        if !overwrite_newer {
            return Ok(conflict.clone().into());
        }
    }
    let by = quote_ident(&run.brief.scope.batch_by.column);
    sqlx::raw_sql(AssertSqlSafe(format!(
        "ALTER TABLE {kept} DROP CONSTRAINT IF EXISTS bf_bounds;
         ALTER TABLE {kept} ADD CONSTRAINT bf_bounds CHECK ({by} IS NOT NULL AND {by} >= {lo} AND {by} < {hi})",
        kept = kept.quoted(),
        lo = lo.literal(),
        hi = hi.literal()
    )))
    .execute(pool)
    .await
    .map_err(|e| {
        CliError::Internal(format!(
            "the partition {kept} kept by batch {batch} does not fit its bound {}: {e}",
            exchange.bound
        ))
    })?;
    let mut tx = pool.begin().await?;
    // An erased row the kept partition still holds does not come back with it.
    let erased = erased_out_of(&mut tx, &run.brief, &kept).await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = '{timeout}ms';
         ALTER TABLE {target} DETACH PARTITION {partition};
         DROP TABLE {partition};
         ALTER TABLE {kept} RENAME TO {name};
         ALTER TABLE {target} ATTACH PARTITION {partition} {bound};
         ALTER TABLE {partition} DROP CONSTRAINT bf_bounds",
        timeout = lock_timeout.as_millis(),
        target = target.quoted(),
        partition = partition.quoted(),
        kept = kept.quoted(),
        name = quote_ident(&partition.table),
        bound = exchange.bound,
    )))
    .execute(&mut *tx)
    .await
    .map_err(|e| {
        CliError::Internal(format!(
            "exchanging {partition} back for {kept} (batch {batch}) failed: {e}; nothing of it changed — run rollback again when {target} is quieter"
        ))
    })?;
    batches::mark_rolled_back(&mut tx, run_id, batch).await?;
    log::append(
        &mut *tx,
        run_id,
        actor,
        "batch_rolled_back",
        u32::try_from(batch).ok(),
        serde_json::json!({ "exchanged_back": exchange.partition, "restored_from": kept.to_string(), "overwrote_newer": changed, "erased_not_restored": erased }),
    )
    .await?;
    tx.commit().await?;
    Ok(None)
}

/// The statements that restore one batch (`$1`) from the before-images.
struct Statements {
    /// A temporary table (emptied at commit) of the keys a batch spares.
    create_spared: String,
    /// The batch's keys whose row is neither as the run left it nor as it was
    /// before; noted as spared unless `$2` (overwrite newer rows).
    conflicts: String,
    /// Deletes the row of every key of the batch but the spared ones.
    delete: String,
    /// Puts back the rows the batch updated or deleted but the spared ones
    /// and the erased ones (`rollback.erased`).
    insert: String,
    /// Counts the batch's rows that `rollback.erased` keeps from coming back.
    erased_kept: Option<String>,
}

impl Statements {
    fn new(run: &Run, image: &TableName, columns: &[String], has_after_hash: bool) -> Self {
        let key = &run.brief.scope.key;
        let target = run.brief.scope.target.quoted();
        let img = image.quoted();
        let spared = quote_ident(&format!("bf_spared_{}", run.run_id.simple()));
        let cols = column_list(columns, None);
        // Compared as text: every type has a text form, not every type an equality.
        let row = |alias: &str| format!("ROW({})::text", column_list(columns, Some(alias)));
        let t_present = format!("t.{} IS NOT NULL", quote_ident(&key[0]));
        let keys = column_list(key, None);
        let after_hash = if has_after_hash {
            format!("b.{}", quote_ident(IMAGE_AFTER_HASH))
        } else {
            "NULL::bigint".to_owned()
        };
        let not_spared = |alias: &str| {
            format!(
                "NOT EXISTS (SELECT 1 FROM {spared} c WHERE {})",
                key_join(key, "c", alias)
            )
        };
        // Per key of the batch: `b` its row before the run (updated or
        // deleted), `a` the row the run inserted, `t` the row now. The run
        // left an inserted row as `a`, an updated one as the row whose hash it
        // kept, a deleted one absent; before the run the row was `b`, or absent.
        let conflicts = format!(
            "WITH c AS (
                 SELECT {k_keys}, ROW({k_keys})::text AS bf_key,
                        CASE WHEN {t_present} THEN {t_row} END AS bf_now,
                        CASE WHEN b.bf_op IS NOT NULL THEN {b_row} END AS bf_before
                   FROM (SELECT DISTINCT {keys} FROM {img} WHERE bf_batch_no = $1) k
                   LEFT JOIN {img} b ON b.bf_batch_no = $1 AND b.bf_op IN ('U', 'D') AND {kb}
                   LEFT JOIN {img} a ON a.bf_batch_no = $1 AND a.bf_op = 'I' AND {ka}
                   LEFT JOIN {target} t ON {kt}
                  WHERE NOT (CASE WHEN a.bf_op IS NOT NULL THEN {t_present} AND {t_row} IS NOT DISTINCT FROM {a_row}
                                  WHEN b.bf_op = 'U' THEN {t_present} AND ({after_hash} IS NULL OR hashtextextended(t::text, 0) = {after_hash})
                                  ELSE NOT {t_present} END)
                    AND NOT (CASE WHEN b.bf_op IS NOT NULL THEN {t_present} AND {t_row} IS NOT DISTINCT FROM {b_row}
                                  ELSE NOT {t_present} END)),
             noted AS (INSERT INTO {spared} SELECT {keys} FROM c WHERE NOT $2)
             SELECT $1::integer AS batch_no, bf_key AS key, bf_now AS now, bf_before AS before FROM c ORDER BY bf_key",
            k_keys = column_list(key, Some("k")),
            t_row = row("t"),
            a_row = row("a"),
            b_row = row("b"),
            kb = key_join(key, "b", "k"),
            ka = key_join(key, "a", "k"),
            kt = key_join(key, "t", "k"),
        );
        Self {
            create_spared: format!(
                "SET LOCAL client_min_messages = warning;
                 CREATE TEMPORARY TABLE IF NOT EXISTS {spared} ON COMMIT DELETE ROWS AS SELECT {keys} FROM {target} WITH NO DATA"
            ),
            conflicts,
            delete: format!(
                "DELETE FROM {target} t USING (SELECT DISTINCT {keys} FROM {img} WHERE bf_batch_no = $1) k
                  WHERE {kt} AND {spare}",
                kt = key_join(key, "t", "k"),
                spare = not_spared("t"),
            ),
            insert: format!(
                "INSERT INTO {target} ({cols}) OVERRIDING SYSTEM VALUE
                 SELECT {cols} FROM {img} i WHERE i.bf_batch_no = $1 AND i.bf_op IN ('U', 'D') AND {spare}{not_erased}",
                spare = not_spared("i"),
                not_erased = erased(&run.brief, "i")
                    .map_or_else(String::new, |e| format!(" AND NOT {e}")),
            ),
            erased_kept: erased(&run.brief, "i").map(|e| {
                format!(
                    "SELECT count(*) FROM {img} i WHERE i.bf_batch_no = $1 AND i.bf_op IN ('U', 'D') AND {e}"
                )
            }),
        }
    }
}

/// `EXISTS (…)`: the row `alias` (with the target's key columns) is one the
/// brief's `rollback.erased` names; `None` without it. Rollback never puts
/// such a row back, and `forget` deletes it from what the run keeps.
pub(crate) fn erased(brief: &Brief, alias: &str) -> Option<String> {
    brief.rollback.erased.as_deref().map(|q| {
        format!(
            "EXISTS (SELECT 1 FROM ({q}\n) bf_erased WHERE {})",
            key_join(&brief.scope.key, "bf_erased", alias)
        )
    })
}

/// The error of a rollback that spared rows written since the run.
fn conflict_message(run: &Run, conflicts: &[Conflict]) -> String {
    let mut text = format!(
        "{} row(s) of {} changed since run {} wrote them; they were left as they are and the rest of their batches restored. \
         Check them, then run `backfill rollback {} --overwrite-newer` to restore them anyway:",
        conflicts.len(),
        run.brief.scope.target,
        run.run_id,
        run.run_id
    );
    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "(no row)".into());
    for c in conflicts.iter().take(CONFLICTS_SHOWN) {
        text.push_str(&format!(
            "\n  batch {} key {}: now {}, before the run {}",
            c.batch_no,
            c.key,
            shown(&c.now),
            shown(&c.before)
        ));
    }
    if conflicts.len() > CONFLICTS_SHOWN {
        text.push_str(&format!(
            "\n  … and {} more",
            conflicts.len() - CONFLICTS_SHOWN
        ));
    }
    text
}

/// Deletes from `table` (a table rollback is about to put back: the old
/// table of a swap, a kept partition) the rows `rollback.erased` names.
/// Returns how many.
pub(crate) async fn erased_out_of(
    conn: &mut sqlx::PgConnection,
    brief: &Brief,
    table: &TableName,
) -> Result<u64> {
    let Some(condition) = erased(brief, "t") else {
        return Ok(0);
    };
    Ok(sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {} t WHERE {condition}",
        table.quoted()
    )))
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Carries the writes made to the exposed table since cutover into `old`,
/// which goes back in its place; refuses (exit 1), naming them, when rows
/// inside the scope were written since, unless `overwrite_newer`.
async fn carry_back(
    conn: &mut sqlx::PgConnection,
    run: &Run,
    capture: &Capture,
    old: &TableName,
    overwrite_newer: bool,
) -> Result<Carried> {
    let scope = &run.brief.scope;
    let pass = if overwrite_newer {
        Pass::OutsideOnly
    } else {
        Pass::All {
            in_scope_accepted: false,
        }
    };
    let carried = capture
        .carry(&mut *conn, scope, &scope.target, old, pass)
        .await?;
    if carried.conflicts.is_empty() {
        return Ok(carried);
    }
    Err(CliError::Halted(format!(
        "{} row(s) inside the scope were written to {} since cutover: rolling back would put the rows from before the run over them. \
         Keys: {}. Nothing was swapped back. Check them, then `backfill rollback {} --overwrite-newer` swaps back anyway (rows outside the scope written since are carried back either way)",
        carried.conflicting,
        scope.target,
        carried.conflicts.join(", "),
        run.run_id
    )))
}

async fn restore_side_table(
    pool: &PgPool,
    run: &Run,
    lock_timeout: Duration,
    overwrite_newer: bool,
) -> Result<RollbackReport> {
    let run_id = run.run_id;
    let target = &run.brief.scope.target;
    let parse = |name: &str| {
        TableName::parse(name).ok_or_else(|| {
            CliError::Internal(format!(
                "run {run_id} records an unreadable table name {name:?}"
            ))
        })
    };
    let side = run.side_table.as_deref().map(parse).transpose()?;
    let mut report = RollbackReport::default();
    match (&run.old_table, side) {
        // Cut over: the old table goes back in place; the new one back under its own name.
        (Some(old), Some(side)) => {
            let old = parse(old)?;
            let capture = Capture::of(run_id);
            let carried = std::sync::Mutex::new(Carried::default());
            swap::swap(
                pool,
                target,
                &old,
                &side,
                lock_timeout,
                swap::Hooks {
                    verify: async |_: &mut sqlx::PgConnection| Ok(()),
                    // What was written to the exposed table since cutover goes
                    // back with the old table, so dropping the built table
                    // drops no write nobody rolled back.
                    carry: async |conn: &mut sqlx::PgConnection| {
                        erased_out_of(conn, &run.brief, &old).await?;
                        let last = carry_back(conn, run, &capture, &old, overwrite_newer).await?;
                        if let Ok(mut carried) = carried.lock() {
                            *carried = last;
                        }
                        Ok(())
                    },
                    record: async |conn: &mut sqlx::PgConnection| {
                        runs::set_old_table(&mut *conn, run_id, None).await?;
                        capture.remove(&mut *conn).await?;
                        Ok(())
                    },
                },
            )
            .await?;
            let carried = carried.into_inner().unwrap_or_default();
            report.live_writes_carried = carried.keys;
            report.newer_rows_overwritten = if overwrite_newer {
                usize::try_from(carried.conflicting).unwrap_or(0)
            } else {
                0
            };
            report.swapped_back = true;
            drop_table(pool, &side).await?;
            report.dropped = Some(side.to_string());
        }
        // Not cut over: the target was never touched; the built table and
        // the capture of the target's writes go.
        (None, Some(side)) => {
            let mut conn = pool.acquire().await?;
            Capture::of(run_id).remove(&mut conn).await?;
            drop_table(pool, &side).await?;
            report.dropped = Some(side.to_string());
        }
        (_, None) => {
            return Err(CliError::Internal(format!(
                "run {run_id} records no side table"
            )));
        }
    }
    Ok(report)
}

pub(crate) async fn drop_table(pool: &PgPool, table: &TableName) -> Result<()> {
    sqlx::query(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {}",
        table.quoted()
    )))
    .execute(pool)
    .await
    .map_err(|e| CliError::Internal(format!("dropping {table} failed: {e}")))?;
    Ok(())
}
