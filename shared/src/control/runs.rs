//! Runs: one row per `backfill run`, holding the exact brief text it was planned
//! from. Workers load the brief from here, never from a message.

use super::setup::Setup;
use super::{ControlError, Result};
use crate::brief::{BatchRange, BoundKind, Brief};
use crate::sql::TableName;
use sqlx::PgPool;
use std::fmt;
use uuid::Uuid;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Batches are being published and applied.
    Running,
    /// The operator paused it: no new batch starts; in-flight ones finish.
    Paused,
    /// Stopped by a failed batch or a breached limit; the target is partly written.
    Halted,
    /// The canary's batches are applied; the rest wait for `backfill promote`.
    Canary,
    /// Every batch is applied; waiting for the reviewer.
    Applied,
    /// The reviewer accepted the validation; cutover may go ahead.
    Approved,
    /// Cutover is done: the corrected data is what readers see.
    CutOver,
    /// A rollback started and has not finished (it resumes when run again).
    RollingBack,
    /// The target is back to its state before the run.
    RolledBack,
    Cancelled,
    /// Cut over, and every item of the definition of done recorded
    /// (`backfill done`): the run is over.
    Done,
}

impl RunState {
    pub const ALL: [Self; 11] = [
        Self::Running,
        Self::Paused,
        Self::Halted,
        Self::Canary,
        Self::Applied,
        Self::Approved,
        Self::CutOver,
        Self::RollingBack,
        Self::RolledBack,
        Self::Cancelled,
        Self::Done,
    ];

    /// States in which a run holds its target (see `runs_one_active_per_target`).
    pub const ACTIVE: [Self; 6] = [
        Self::Running,
        Self::Paused,
        Self::Halted,
        Self::Canary,
        Self::Applied,
        Self::Approved,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Halted => "halted",
            Self::Canary => "canary",
            Self::Applied => "applied",
            Self::Approved => "approved",
            Self::CutOver => "cut_over",
            Self::RollingBack => "rolling_back",
            Self::RolledBack => "rolled_back",
            Self::Cancelled => "cancelled",
            Self::Done => "done",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    #[must_use]
    pub fn is_active(self) -> bool {
        Self::ACTIVE.contains(&self)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run as the control plane records it.
#[derive(Debug, Clone)]
pub struct Run {
    pub run_id: Uuid,
    pub brief_text: String,
    pub brief_hash: String,
    pub brief: Brief,
    pub state: RunState,
    pub batch_count: u32,
    pub bound_kind: BoundKind,
    /// The table before-images go to, when the brief asks for them.
    pub image_table: Option<String>,
    pub halt_reason: Option<String>,
    /// staging-swap and parallel-version: the table batches write to.
    pub side_table: Option<String>,
    /// After a swap: the previous target's new name (the rollback copy).
    pub old_table: Option<String>,
    pub approved_by: Option<String>,
    pub approved_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The validation run the approval approved.
    pub approved_validation: Option<i64>,
    pub cut_over_at: Option<chrono::DateTime<chrono::Utc>>,
    pub rolled_back_at: Option<chrono::DateTime<chrono::Utc>>,
    pub cleaned_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When `backfill done` found every item of the definition of done.
    pub done_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The drift guard's fingerprints, taken when the run started.
    pub fingerprints: super::drift::Fingerprints,
    /// The parameters recorded with the run (strategy, bounds, sizes before).
    pub params: serde_json::Value,
    /// Since when the load guard holds new batches, if it does.
    pub throttled_since: Option<chrono::DateTime<chrono::Utc>>,
    /// `limits.canary`: the batches applied first (empty without a canary).
    pub canary_batches: Vec<u32>,
    /// When the canary's batches were all applied and the run began to wait.
    pub canary_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Who let the rest of the run go on after the canary, and when.
    pub promoted_by: Option<String>,
    pub promoted_at: Option<chrono::DateTime<chrono::Utc>>,
    pub operator: String,
    pub code_version: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Milliseconds the run spent running before its current stretch
    /// (migration 0018 keeps it).
    pub active_ms: i64,
    /// Since when it runs, while it does.
    pub running_since: Option<chrono::DateTime<chrono::Utc>>,
}

/// What `backfill run` records before publishing anything.
#[derive(Debug)]
pub struct NewRun<'a> {
    pub run_id: Uuid,
    pub brief_text: &'a str,
    pub brief: &'a Brief,
    pub operator: &'a str,
    pub batches: &'a [BatchRange],
    /// Where before-images go, when the run keeps them.
    pub image_table: Option<&'a TableName>,
    /// The table batches write to, when it is not the target.
    pub side_table: Option<&'a TableName>,
    /// Column definitions of the tables the run depends on, for the drift guard.
    pub fingerprints: &'a super::drift::Fingerprints,
    /// The maintenance marker a live target carries while the run writes.
    pub marker: Option<super::maintenance::Marker>,
    pub params: serde_json::Value,
    /// The canary's batches (`limits.canary`), empty without one.
    pub canary: &'a [u32],
}

/// Records the run and every one of its batches in one transaction. Refuses, with
/// the other run's id, when a run is already active on the same target.
pub async fn create(pool: &PgPool, new: &NewRun<'_>) -> Result<Uuid> {
    let run_id = new.run_id;
    let brief = new.brief;
    let target = brief.scope.target.to_string();
    let batch_count = i32::try_from(new.batches.len())
        .map_err(|_| ControlError::Corrupt("too many batches".into()))?;
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO backfill.runs (run_id, name, target, brief, brief_hash, code_version, operator,
            owner, reviewer, strategy, bound_kind, batch_count, params, image_table, side_table, fingerprints,
            canary_batches, canary_auto, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, 'running')
         ON CONFLICT (target)
            WHERE state IN ('running', 'paused', 'halted', 'canary', 'applied', 'approved')
         DO NOTHING",
    )
    .bind(run_id)
    .bind(&brief.meta.name)
    .bind(&target)
    .bind(new.brief_text)
    .bind(Brief::hash(new.brief_text))
    .bind(super::code_version())
    .bind(new.operator)
    .bind(&brief.meta.owner)
    .bind(&brief.meta.reviewer)
    .bind(brief.write.strategy.as_str())
    .bind(brief.scope.batch_by.kind().as_str())
    .bind(batch_count)
    .bind(&new.params)
    .bind(new.image_table.map(ToString::to_string))
    .bind(new.side_table.map(ToString::to_string))
    .bind(sqlx::types::Json(new.fingerprints))
    .bind(
        (!new.canary.is_empty())
            .then(|| new.canary.iter().map(|&b| i32::try_from(b).unwrap_or(i32::MAX)).collect::<Vec<i32>>()),
    )
    .bind(brief.limits.canary.as_ref().is_some_and(|c| c.auto))
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        drop(tx);
        let (run_id, state): (Uuid, String) = sqlx::query_as(
            "SELECT run_id, state FROM backfill.runs WHERE target = $1 AND state = ANY($2)",
        )
        .bind(&target)
        .bind(RunState::ACTIVE.map(RunState::as_str).to_vec())
        .fetch_one(pool)
        .await?;
        return Err(ControlError::ActiveRun {
            target,
            run_id,
            state,
        });
    }
    let setup = [
        new.image_table.map(Setup::BeforeImages),
        new.side_table.map(Setup::SideTable),
    ];
    for step in setup.into_iter().flatten() {
        step.build(&mut tx, brief, run_id).await?;
    }
    if let Some(marker) = &new.marker {
        super::maintenance::mark(&mut tx, marker).await?;
    }
    // Every batch row, streamed with one COPY a megabyte at a time: the
    // cheapest way into a table, and the coordinator never holds the whole
    // text of a large run. Bounds (integers, dates, timestamps) print with no
    // character COPY's text format would escape.
    let mut copy = tx
        .copy_in_raw("COPY backfill.batches (run_id, batch_no, lo, hi) FROM STDIN")
        .await?;
    let mut chunk = String::with_capacity(COPY_CHUNK + 256);
    for batch in new.batches {
        use std::fmt::Write as _;
        let _ = writeln!(chunk, "{run_id}\t{}\t{}\t{}", batch.no, batch.lo, batch.hi);
        if chunk.len() >= COPY_CHUNK {
            copy.send(chunk.as_bytes()).await?;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        copy.send(chunk.as_bytes()).await?;
    }
    copy.finish().await?;
    // Their total, from the run's batch count (updates keep it by trigger;
    // see migrations 0014 and 0015).
    sqlx::query("SELECT backfill.batch_totals_start($1)")
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
    super::log::append(
        &mut *tx,
        run_id,
        new.operator,
        "run_created",
        None,
        serde_json::json!({
            "target": target,
            "batches": batch_count,
            "brief_hash": Brief::hash(new.brief_text),
            "code_version": super::code_version(),
            "params": new.params,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(run_id)
}

/// How much `COPY` text `create` sends at a time.
const COPY_CHUNK: usize = 1 << 20;

/// Loads a run and re-parses its brief.
pub async fn load(pool: &PgPool, run_id: Uuid) -> Result<Run> {
    #[derive(sqlx::FromRow)]
    struct Row {
        brief: String,
        brief_hash: String,
        state: String,
        batch_count: i32,
        bound_kind: String,
        image_table: Option<String>,
        side_table: Option<String>,
        old_table: Option<String>,
        halt_reason: Option<String>,
        approved_by: Option<String>,
        approved_at: Option<chrono::DateTime<chrono::Utc>>,
        approved_validation: Option<i64>,
        cut_over_at: Option<chrono::DateTime<chrono::Utc>>,
        rolled_back_at: Option<chrono::DateTime<chrono::Utc>>,
        cleaned_at: Option<chrono::DateTime<chrono::Utc>>,
        done_at: Option<chrono::DateTime<chrono::Utc>>,
        fingerprints: sqlx::types::Json<super::drift::Fingerprints>,
        params: serde_json::Value,
        throttled_since: Option<chrono::DateTime<chrono::Utc>>,
        canary_batches: Option<Vec<i32>>,
        canary_at: Option<chrono::DateTime<chrono::Utc>>,
        promoted_by: Option<String>,
        promoted_at: Option<chrono::DateTime<chrono::Utc>>,
        operator: String,
        code_version: String,
        created_at: chrono::DateTime<chrono::Utc>,
        finished_at: Option<chrono::DateTime<chrono::Utc>>,
        active_ms: i64,
        running_since: Option<chrono::DateTime<chrono::Utc>>,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT brief, brief_hash, state, batch_count, bound_kind, image_table, side_table, old_table,
                halt_reason, approved_by, approved_at, approved_validation, cut_over_at, rolled_back_at, cleaned_at,
                done_at, fingerprints, params, throttled_since, canary_batches, canary_at, promoted_by, promoted_at,
                operator, code_version, created_at, finished_at, active_ms, running_since
         FROM backfill.runs WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Err(ControlError::UnknownRun(run_id));
    };
    let corrupt = |what: &str| ControlError::Corrupt(format!("run {run_id}: {what}"));
    let brief = Brief::parse(&row.brief).map_err(|e| corrupt(&format!("stored brief: {e}")))?;
    Ok(Run {
        run_id,
        brief,
        brief_text: row.brief,
        brief_hash: row.brief_hash,
        state: RunState::parse(&row.state)
            .ok_or_else(|| corrupt(&format!("state {:?}", row.state)))?,
        batch_count: u32::try_from(row.batch_count).map_err(|_| corrupt("batch_count"))?,
        bound_kind: BoundKind::parse(&row.bound_kind)
            .ok_or_else(|| corrupt(&format!("bound kind {:?}", row.bound_kind)))?,
        image_table: row.image_table,
        side_table: row.side_table,
        old_table: row.old_table,
        halt_reason: row.halt_reason,
        approved_by: row.approved_by,
        approved_at: row.approved_at,
        approved_validation: row.approved_validation,
        cut_over_at: row.cut_over_at,
        rolled_back_at: row.rolled_back_at,
        cleaned_at: row.cleaned_at,
        done_at: row.done_at,
        fingerprints: row.fingerprints.0,
        params: row.params,
        throttled_since: row.throttled_since,
        canary_batches: row
            .canary_batches
            .unwrap_or_default()
            .into_iter()
            .map(|b| u32::try_from(b).map_err(|_| corrupt("canary_batches")))
            .collect::<Result<_>>()?,
        canary_at: row.canary_at,
        promoted_by: row.promoted_by,
        promoted_at: row.promoted_at,
        operator: row.operator,
        code_version: row.code_version,
        active_ms: row.active_ms,
        running_since: row.running_since,
        created_at: row.created_at,
        finished_at: row.finished_at,
    })
}

/// The run's state as recorded now.
pub async fn state(pool: &PgPool, run_id: Uuid) -> Result<RunState> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM backfill.runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(pool)
            .await?;
    let state = state.ok_or(ControlError::UnknownRun(run_id))?;
    RunState::parse(&state)
        .ok_or_else(|| ControlError::Corrupt(format!("run {run_id}: state {state:?}")))
}

/// Moves a run to `to` (from any of `from`), with a log entry. `false` if the run
/// was not in one of `from`.
pub async fn transition(
    pool: &PgPool,
    run_id: Uuid,
    from: &[RunState],
    to: RunState,
    actor: &str,
    reason: Option<&str>,
) -> Result<bool> {
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    let update = sqlx::query(
        "UPDATE backfill.runs SET state = $2, updated_at = now(),
             halt_reason = CASE WHEN $2 = 'halted' THEN $4 ELSE halt_reason END,
             finished_at = CASE WHEN $2 IN ('applied', 'cancelled') THEN now() ELSE finished_at END,
             cut_over_at = CASE WHEN $2 = 'cut_over' THEN now() ELSE cut_over_at END,
             rolled_back_at = CASE WHEN $2 = 'rolled_back' THEN now() ELSE rolled_back_at END
         WHERE run_id = $1 AND state = ANY($3)",
    )
    .bind(run_id)
    .bind(to.as_str())
    .bind(&from)
    .bind(reason);
    update_logged(
        pool,
        update,
        run_id,
        actor,
        &format!("run_{}", to.as_str()),
        serde_json::json!({ "reason": reason }),
    )
    .await
}

/// Starts (or resumes) a rollback: moves the run to `rolling_back` from any
/// state but `rolled_back` (a run still `running` stops: its coordinator and
/// workers see the state) and fences every batch not applied
/// ([`super::batches::fence_unfinished`]), in one transaction that waits at
/// most `lock_timeout` for a batch committing at that moment. After it
/// commits, no batch transaction of the run can commit any more, so the
/// applied batches are all rollback has to restore. Logged as
/// `run_rolling_back` with the batches fenced. `None` if the run is already
/// rolled back (or gone).
pub async fn begin_rollback(
    pool: &PgPool,
    run_id: Uuid,
    actor: &str,
    lock_timeout: std::time::Duration,
) -> Result<Option<Vec<u32>>> {
    let mut tx = pool.begin().await?;
    let timeout_ms = lock_timeout.as_millis().max(1);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = {timeout_ms}"
    )))
    .execute(&mut *tx)
    .await?;
    let from: Option<String> = sqlx::query_scalar(
        "SELECT state FROM backfill.runs WHERE run_id = $1 AND state <> 'rolled_back' FOR UPDATE",
    )
    .bind(run_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| busy(e, run_id, lock_timeout))?;
    let Some(from) = from else {
        return Ok(None);
    };
    if from != RunState::RollingBack.as_str() {
        sqlx::query(
            "UPDATE backfill.runs SET state = 'rolling_back', updated_at = now() WHERE run_id = $1",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
    }
    let fenced = super::batches::fence_unfinished(&mut tx, run_id)
        .await
        .map_err(|e| match e {
            ControlError::Sql(e) => busy(e, run_id, lock_timeout),
            other => other,
        })?;
    if from != RunState::RollingBack.as_str() || !fenced.is_empty() {
        super::log::append(
            &mut *tx,
            run_id,
            actor,
            "run_rolling_back",
            None,
            serde_json::json!({ "from": from, "batches_fenced": fenced }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Some(fenced))
}

/// A lock not granted within the timeout: a batch (or another command) holds
/// the run's rows right now.
fn busy(e: sqlx::Error, run_id: Uuid, lock_timeout: std::time::Duration) -> ControlError {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => {
            ControlError::Busy(format!(
                "a batch of run {run_id} (or another command on it) held its ledger rows for more than {} s while rollback tried to fence them; nothing was changed, run the rollback again",
                lock_timeout.as_secs_f64()
            ))
        }
        _ => ControlError::Sql(e),
    }
}

/// Runs `update` (of one run) and, when it changed the run, logs `event`
/// with `detail` in the same transaction. Whether it changed the run.
async fn update_logged(
    pool: &PgPool,
    update: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    run_id: Uuid,
    actor: &str,
    event: &str,
    detail: serde_json::Value,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    let done = update.execute(&mut *tx).await?.rows_affected() == 1;
    if done {
        super::log::append(&mut *tx, run_id, actor, event, None, detail).await?;
    }
    tx.commit().await?;
    Ok(done)
}

/// Records the reviewer's approval of an applied run against one validation
/// run. `false` if the run is not (or no longer) in state `applied`, nor an
/// approved run validated again since.
pub async fn approve(pool: &PgPool, run_id: Uuid, reviewer: &str, validation: i64) -> Result<bool> {
    // An applied run, or an approved one validated again since its approval.
    let update = sqlx::query(
        "UPDATE backfill.runs SET state = 'approved', approved_by = $2, approved_at = now(),
                approved_validation = $3, updated_at = now()
          WHERE run_id = $1
            AND (state = 'applied' OR (state = 'approved' AND approved_validation IS DISTINCT FROM $3))",
    )
    .bind(run_id)
    .bind(reviewer)
    .bind(validation);
    update_logged(
        pool,
        update,
        run_id,
        reviewer,
        "run_approved",
        serde_json::json!({ "reviewer": reviewer, "validation": validation }),
    )
    .await
}

impl Run {
    /// Whether the run still holds its non-canary batches back: it has a
    /// canary and nobody (nor `canary.auto`) promoted it yet.
    #[must_use]
    pub fn in_canary(&self) -> bool {
        !self.canary_batches.is_empty() && self.promoted_at.is_none()
    }

    /// The time the run spent waiting for its canary to be promoted, up to
    /// `now`: not time the backfill worked, so the budget and the ETA leave it out.
    #[must_use]
    pub fn canary_wait(&self, now: chrono::DateTime<chrono::Utc>) -> chrono::Duration {
        canary_wait(self.canary_at, self.promoted_at, now)
    }

    /// When the run came to its end: cut over, rolled back, or applied or cancelled.
    #[must_use]
    pub fn ended_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.cut_over_at
            .or(self.rolled_back_at)
            .or(self.finished_at)
    }

    /// Until when its rollback copies are kept: `retain_days` after its end.
    #[must_use]
    pub fn retained_until(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.ended_at()
            .map(|at| at + chrono::Duration::days(i64::from(self.brief.rollback.retain_days)))
    }

    /// The time the run spent running, up to `now`: its pace and ETA leave
    /// out the time it stood halted, paused or at its canary.
    #[must_use]
    pub fn active_time(&self, now: chrono::DateTime<chrono::Utc>) -> chrono::Duration {
        active_time(self.active_ms, self.running_since, now)
    }

    /// The time since the run started that it worked: the canary's wait left out.
    #[must_use]
    pub fn working_time(&self, until: chrono::DateTime<chrono::Utc>) -> chrono::Duration {
        working_time(self.created_at, self.canary_at, self.promoted_at, until)
    }
}

type Time = chrono::DateTime<chrono::Utc>;

/// See [`Run::canary_wait`].
fn canary_wait(canary_at: Option<Time>, promoted_at: Option<Time>, now: Time) -> chrono::Duration {
    canary_at.map_or_else(chrono::Duration::zero, |at| {
        (promoted_at.unwrap_or(now) - at).max(chrono::Duration::zero())
    })
}

/// See [`Run::active_time`]; for a run known by its figures only.
#[must_use]
pub fn active_time(active_ms: i64, running_since: Option<Time>, now: Time) -> chrono::Duration {
    chrono::Duration::milliseconds(active_ms)
        + running_since.map_or_else(chrono::Duration::zero, |since| {
            (now - since).max(chrono::Duration::zero())
        })
}

/// See [`Run::working_time`].
fn working_time(
    created_at: Time,
    canary_at: Option<Time>,
    promoted_at: Option<Time>,
    until: Time,
) -> chrono::Duration {
    (until - created_at) - canary_wait(canary_at, promoted_at, until)
}

/// The canary's batches are all applied: a running run waits in state
/// `canary`. `false` if it was not running (halted, paused, cancelled meanwhile).
pub async fn enter_canary(pool: &PgPool, run_id: Uuid, actor: &str) -> Result<bool> {
    let update = sqlx::query(
        "UPDATE backfill.runs SET state = 'canary', canary_at = now(), updated_at = now()
          WHERE run_id = $1 AND state = 'running' AND promoted_at IS NULL",
    )
    .bind(run_id);
    update_logged(
        pool,
        update,
        run_id,
        actor,
        "run_canary",
        serde_json::json!({ "reason": "the canary's batches are applied; the rest wait for `backfill promote`" }),
    )
    .await
}

/// Lets a run waiting at its canary go on: back to `running`, promoted by
/// `by` (the reviewer; the database refuses anyone else unless `auto`, when
/// the brief's `canary.auto` promoted it). `false` if it was not waiting.
pub async fn promote(pool: &PgPool, run_id: Uuid, by: &str, auto: bool) -> Result<bool> {
    let update = sqlx::query(
        "UPDATE backfill.runs SET state = 'running', promoted_by = $2, promoted_at = now(), updated_at = now()
          WHERE run_id = $1 AND state = 'canary' AND promoted_at IS NULL",
    )
    .bind(run_id)
    .bind(by);
    update_logged(
        pool,
        update,
        run_id,
        by,
        "canary_promoted",
        serde_json::json!({ "by": by, "auto": auto }),
    )
    .await
}

/// A cut-over run is done: `false` if it was not (or no longer) cut over.
pub async fn mark_done(pool: &PgPool, run_id: Uuid, actor: &str, lesson: &str) -> Result<bool> {
    let update = sqlx::query(
        "UPDATE backfill.runs SET state = 'done', done_at = now(), updated_at = now()
          WHERE run_id = $1 AND state = 'cut_over'",
    )
    .bind(run_id);
    update_logged(
        pool,
        update,
        run_id,
        actor,
        "run_done",
        serde_json::json!({ "lesson": lesson }),
    )
    .await
}

/// Records the previous target's name after a swap (or clears it after a swap back).
pub async fn set_old_table<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    run_id: Uuid,
    old_table: Option<&str>,
) -> Result<()> {
    sqlx::query("UPDATE backfill.runs SET old_table = $2, updated_at = now() WHERE run_id = $1")
        .bind(run_id)
        .bind(old_table)
        .execute(executor)
        .await?;
    Ok(())
}

/// Records that the run's temporary objects were dropped.
pub async fn mark_cleaned(pool: &PgPool, run_id: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE backfill.runs SET cleaned_at = now(), updated_at = now() WHERE run_id = $1",
    )
    .bind(run_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Runs on the same target created after `run_id` that changed it (or may still).
pub async fn later_runs_on_target(pool: &PgPool, run_id: Uuid) -> Result<Vec<(Uuid, String)>> {
    Ok(sqlx::query_as(
        "SELECT later.run_id, later.state FROM backfill.runs this
           JOIN backfill.runs later ON later.target = this.target AND later.created_at > this.created_at
          WHERE this.run_id = $1 AND later.state <> 'rolled_back'
            AND (later.state <> 'cancelled' OR EXISTS (
                 SELECT 1 FROM backfill.batches b WHERE b.run_id = later.run_id AND b.state = 'applied'))
          ORDER BY later.created_at",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?)
}

/// Whether a worker may start a batch of the run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// Paused by the operator or throttled by the load guard: wait.
    Wait(String),
    /// The run is not running: skip its batches.
    Stop(RunState),
}

pub async fn gate(pool: &PgPool, run_id: Uuid) -> Result<Gate> {
    let row: Option<(String, Option<chrono::DateTime<chrono::Utc>>)> =
        sqlx::query_as("SELECT state, throttled_since FROM backfill.runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(pool)
            .await?;
    let (state, throttled) = row.ok_or(ControlError::UnknownRun(run_id))?;
    let state = RunState::parse(&state)
        .ok_or_else(|| ControlError::Corrupt(format!("run {run_id}: state {state:?}")))?;
    Ok(match (state, throttled) {
        (RunState::Running, None) => Gate::Go,
        (RunState::Running, Some(since)) => {
            Gate::Wait(format!("throttled by pause_when since {since}"))
        }
        (RunState::Paused, _) => Gate::Wait("paused".into()),
        (other, _) => Gate::Stop(other),
    })
}

/// Starts or ends a throttle period (the load guard turned true or false), logged.
/// Returns whether anything changed.
pub async fn set_throttled(
    pool: &PgPool,
    run_id: Uuid,
    throttled: bool,
    actor: &str,
    reason: &str,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    let ended: Option<Option<chrono::DateTime<chrono::Utc>>> = if throttled {
        sqlx::query_scalar(
            "UPDATE backfill.runs SET throttled_since = now() WHERE run_id = $1 AND throttled_since IS NULL RETURNING NULL::timestamptz",
        )
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await?
    } else {
        sqlx::query_scalar(
            "UPDATE backfill.runs r SET throttled_since = NULL FROM (SELECT throttled_since AS since FROM backfill.runs WHERE run_id = $1) old
              WHERE r.run_id = $1 AND r.throttled_since IS NOT NULL RETURNING old.since",
        )
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await?
    };
    let Some(since) = ended else {
        return Ok(false);
    };
    let detail = match since {
        Some(since) => serde_json::json!({
            "since": since,
            "seconds": (chrono::Utc::now() - since).num_milliseconds() as f64 / 1000.0,
            "reason": reason,
        }),
        None => serde_json::json!({ "reason": reason }),
    };
    let event = if throttled {
        "throttle_started"
    } else {
        "throttle_ended"
    };
    super::log::append(&mut *tx, run_id, actor, event, None, detail).await?;
    tx.commit().await?;
    Ok(true)
}

/// Runs on `target` in one of `states`, oldest first.
pub async fn on_target(pool: &PgPool, target: &str, states: &[RunState]) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT run_id FROM backfill.runs WHERE target = $1 AND state = ANY($2) ORDER BY created_at",
    )
    .bind(target)
    .bind(states.iter().map(|s| s.as_str()).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?)
}

/// Finished runs on `target` whose rollback copies have not been cleaned up.
pub async fn uncleaned_on(pool: &PgPool, target: &str) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT run_id FROM backfill.runs WHERE target = $1 AND cleaned_at IS NULL
            AND state IN ('cut_over', 'done', 'rolled_back', 'cancelled') ORDER BY created_at",
    )
    .bind(target)
    .fetch_all(pool)
    .await?)
}

/// Which runs `backfill list` shows.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<RunState>,
    /// `schema.table`, as runs record it.
    pub target: Option<String>,
    /// An owner's name, in any case.
    pub owner: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub limit: i64,
    /// One run only.
    pub run: Option<Uuid>,
    /// Only runs in one of these states (none: any state).
    pub states: Vec<RunState>,
}

/// A run as `backfill list` shows it, with its ledger summed and its latest
/// validation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Listed {
    pub run_id: Uuid,
    pub name: String,
    pub target: String,
    pub state: String,
    pub owner: String,
    pub reviewer: String,
    pub brief: String,
    pub batch_count: i32,
    pub applied: i64,
    pub failed: i64,
    pub rows_written: i64,
    pub halt_reason: Option<String>,
    pub throttled_since: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub cut_over_at: Option<chrono::DateTime<chrono::Utc>>,
    pub rolled_back_at: Option<chrono::DateTime<chrono::Utc>>,
    pub cleaned_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Whether the run recorded a before-image, side or old table.
    pub keeps_copies: bool,
    /// The latest validation: whether it passed, and its failed checks nobody accepted.
    pub validated: Option<bool>,
    pub open_checks: Vec<String>,
    /// How many distinct limits an operator accepted breaches of.
    pub accepted_breaches: i64,
    pub canary_at: Option<chrono::DateTime<chrono::Utc>>,
    pub promoted_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The driving coordinator's latest word: no worker takes the batches.
    pub no_workers: bool,
    pub active_ms: i64,
    pub running_since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Runs newest first, as `filter` narrows them.
pub async fn list(pool: &PgPool, filter: &ListFilter) -> Result<Vec<Listed>> {
    Ok(sqlx::query_as(
        "SELECT r.run_id, r.name, r.target, r.state, r.owner, r.reviewer, r.brief, r.batch_count,
                c.applied, c.failed, c.rows_written, r.halt_reason, r.throttled_since, r.created_at,
                r.finished_at, r.cut_over_at, r.rolled_back_at, r.cleaned_at,
                num_nonnulls(r.image_table, r.side_table, r.old_table) > 0 AS keeps_copies,
                v.passed AS validated,
                coalesce(ARRAY(SELECT f FROM unnest(v.failed) f
                                WHERE NOT EXISTS (SELECT 1 FROM backfill.check_acceptances a
                                                   WHERE a.validation_run = v.id AND a.check_name = f)),
                         '{}') AS open_checks,
                (SELECT count(DISTINCT l) FROM backfill.run_log g,
                        jsonb_array_elements_text(g.detail->'limits') l
                  WHERE g.run_id = r.run_id AND g.event = 'breach_accepted') AS accepted_breaches,
                r.canary_at, r.promoted_at,
                CASE WHEN r.state = 'running' THEN
                     coalesce((SELECT g.event = 'no_workers' FROM backfill.run_log g
                                WHERE g.run_id = r.run_id AND g.event IN ('no_workers', 'workers_back')
                                ORDER BY g.id DESC LIMIT 1), false)
                     ELSE false END AS no_workers,
                r.active_ms, r.running_since
           FROM backfill.runs r
           CROSS JOIN LATERAL (
                SELECT coalesce(sum(t.batches) FILTER (WHERE t.state = 'applied'), 0)::bigint AS applied,
                       coalesce(sum(t.batches) FILTER (WHERE t.state = 'failed'), 0)::bigint AS failed,
                       coalesce(sum(t.rows_written) FILTER (WHERE t.state = 'applied'), 0)::bigint AS rows_written
                  FROM backfill.batch_totals t WHERE t.run_id = r.run_id) c
           LEFT JOIN LATERAL (
                SELECT id, passed, failed FROM backfill.validation_runs
                 WHERE run_id = r.run_id ORDER BY id DESC LIMIT 1) v ON true
          WHERE ($1::text IS NULL OR r.state = $1)
            AND ($2::text IS NULL OR r.target = $2)
            AND ($3::text IS NULL OR lower(r.owner) = lower($3))
            AND ($4::timestamptz IS NULL OR r.created_at >= $4)
            AND ($6::uuid IS NULL OR r.run_id = $6)
            AND ($7::text[] IS NULL OR r.state = ANY($7))
          ORDER BY r.created_at DESC
          LIMIT $5",
    )
    .bind(filter.state.map(RunState::as_str))
    .bind(filter.target.as_deref())
    .bind(filter.owner.as_deref())
    .bind(filter.since)
    .bind(filter.limit)
    .bind(filter.run)
    .bind(
        (!filter.states.is_empty())
            .then(|| filter.states.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
    )
    .fetch_all(pool)
    .await?)
}

/// The runs whose id starts with `prefix` (lower-case hex, dashes as in the
/// id), at most `limit` of them, newest first.
pub async fn with_prefix(
    pool: &PgPool,
    prefix: &str,
    limit: i64,
) -> Result<Vec<(Uuid, String, String)>> {
    Ok(sqlx::query_as(
        "SELECT run_id, name, state FROM backfill.runs
          WHERE replace(run_id::text, '-', '') LIKE $1 || '%'
          ORDER BY created_at DESC LIMIT $2",
    )
    .bind(prefix)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// The newest run, if any.
pub async fn latest(pool: &PgPool) -> Result<Option<Uuid>> {
    Ok(
        sqlx::query_scalar("SELECT run_id FROM backfill.runs ORDER BY created_at DESC LIMIT 1")
            .fetch_optional(pool)
            .await?,
    )
}
