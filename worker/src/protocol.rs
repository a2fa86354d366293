//! The exactly-once protocol for one delivery (see DESIGN.md):
//!
//! decode → load the run and check the brief hash → idempotency key → Redis lease
//! (with heartbeat) → claim a fencing token → one warehouse transaction → publish
//! the event (confirmed) → set the idempotency key → release the lease → ack.
//!
//! A crash anywhere replays safely: an applied batch is acked and its event re-sent
//! from the ledger, never re-applied. Poison messages are dead-lettered with their
//! reason; the worker goes on.

use crate::Shared;
use crate::apply::{self, BatchWork};
use crate::error::{BatchError, Result};
use crate::runs::RunContext;
use backfill_shared::control::batches::{self, Claim};
use backfill_shared::control::runs::Gate;
use backfill_shared::control::{ControlError, log};
use backfill_shared::lease::Begin;
use backfill_shared::message::{self, BatchMessage, Event, FailureKind, VERSION};
use backfill_shared::signing::SIGNATURE_HEADER;
use backfill_shared::telemetry;
use backon::{ExponentialBuilder, Retryable};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, Span, field, info, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// What to do with a delivery once it has been handled.
#[derive(Debug)]
enum Outcome {
    /// Applied (by this delivery, or earlier: a redelivery) and its event
    /// published: ack.
    Done { applied_here: bool },
    /// Nothing to do for this worker (run not running, batch superseded): ack.
    Skipped(String),
    /// Not a message this worker may act on: dead-letter with the reason, then ack.
    Poison(String),
    /// The batch failed; the failure is recorded and reported: dead-letter, then ack.
    Failed(String),
    /// Could not finish here (lease lost, shutting down): give it back to the queue.
    Requeue(String),
}

/// Handles one delivery to the end: it is acked, dead-lettered or requeued.
pub(crate) async fn handle(shared: Arc<Shared>, delivery: Delivery) {
    let span = info_span!(
        "batch.apply",
        otel.kind = "consumer",
        otel.status_code = field::Empty,
        otel.status_description = field::Empty,
        messaging.system = "rabbitmq",
        run.id = field::Empty,
        batch.no = field::Empty,
        target.table = field::Empty,
        batch.rows_source = field::Empty,
        batch.rows_inserted = field::Empty,
        batch.rows_updated = field::Empty,
        batch.rows_deleted = field::Empty,
        outcome = field::Empty
    );
    // The coordinator's publish span is the parent (a no-op when traces are off).
    let _ = span.set_parent(telemetry::extract(delivery.properties.headers().as_ref()));
    async move {
        let outcome = process(&shared, &delivery).await;
        let span = Span::current();
        span.record("outcome", field::debug(&outcome));
        if let Outcome::Poison(why) | Outcome::Failed(why) = &outcome {
            span.record("otel.status_code", "error");
            span.record("otel.status_description", why.as_str());
        }
        let settled = match &outcome {
            Outcome::Done { applied_here } => {
                if *applied_here {
                    shared.stats.applied.inc();
                } else {
                    shared.stats.already_applied().inc();
                }
                delivery.ack(BasicAckOptions::default()).await.map(|_| ())
            }
            Outcome::Skipped(why) => {
                info!(reason = %why, "skipped");
                delivery.ack(BasicAckOptions::default()).await.map(|_| ())
            }
            Outcome::Poison(why) | Outcome::Failed(why) => {
                if matches!(outcome, Outcome::Poison(_)) {
                    shared.stats.poison.inc();
                    warn!(reason = %why, "dead-lettering a message this worker cannot act on");
                } else {
                    shared.stats.failed.inc();
                    warn!(error = %why, "batch failed; reported to the coordinator and dead-lettered");
                }
                match shared.publisher.dead_letter(&delivery, why).await {
                    Ok(()) => delivery.ack(BasicAckOptions::default()).await.map(|_| ()),
                    // Not stored elsewhere: hand it back rather than lose it.
                    Err(e) => {
                        warn!(error = %e, "could not dead-letter; requeueing");
                        delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.map(|_| ())
                    }
                }
            }
            Outcome::Requeue(why) => {
                info!(reason = %why, "requeueing");
                delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.map(|_| ())
            }
        };
        if let Err(e) = settled {
            // The channel is gone: the broker redelivers the message, and the
            // ledger and idempotency key make the replay safe.
            warn!(error = %e, "could not settle the delivery; the broker will redeliver it");
        }
    }
    .instrument(span)
    .await;
}

fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(6)
        .with_jitter()
}

/// With a message key configured, the delivery must carry a valid signature.
fn check_signature(shared: &Shared, delivery: &Delivery) -> Result<(), String> {
    let Some(signer) = &shared.signer else {
        return Ok(());
    };
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let signature = match headers.inner().get(SIGNATURE_HEADER) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        Some(_) => return Err(format!("{SIGNATURE_HEADER} is not a string")),
        None => {
            return Err(format!(
                "unsigned message: this deployment requires {SIGNATURE_HEADER} (BACKFILL_MESSAGE_KEY is set)"
            ));
        }
    };
    if signer.verify(&delivery.data, &signature) {
        Ok(())
    } else {
        Err("wrong signature: the message was not signed with this deployment's BACKFILL_MESSAGE_KEY".into())
    }
}

async fn process(shared: &Shared, delivery: &Delivery) -> Outcome {
    if let Err(why) = check_signature(shared, delivery) {
        return Outcome::Poison(why);
    }
    let msg = match message::decode_batch(&delivery.data) {
        Ok(m) => m,
        Err(e) => return Outcome::Poison(format!("undecodable batch message: {e}")),
    };
    let span = Span::current();
    span.record("run.id", field::display(msg.run_id));
    span.record("batch.no", i64::from(msg.batch_no));

    let run = match (|| shared.runs.get(&shared.pool, msg.run_id))
        .retry(retry_policy())
        .when(|e: &ControlError| matches!(e, ControlError::Sql(_)))
        .notify(|e, d| warn!(error = %e, retry_in = ?d, "loading the run failed; retrying"))
        .await
    {
        Ok(run) => run,
        Err(ControlError::UnknownRun(id)) => {
            return Outcome::Poison(format!("names unknown run {id}"));
        }
        Err(e @ ControlError::Corrupt(_)) => return Outcome::Poison(e.to_string()),
        Err(e) => return Outcome::Requeue(format!("could not load the run: {e}")),
    };
    span.record("target.table", run.target.as_str());
    if msg.brief_hash != run.brief_hash {
        return Outcome::Poison(format!(
            "brief hash {} does not match run {}'s brief {}: a forged or stale message",
            msg.brief_hash, msg.run_id, run.brief_hash
        ));
    }
    if msg.lo.kind() != run.bound_kind || msg.hi.kind() != run.bound_kind {
        return Outcome::Poison(format!(
            "bounds are {} but run {} batches by {}",
            msg.lo.kind().as_str(),
            msg.run_id,
            run.bound_kind.as_str()
        ));
    }

    match with_lease(shared, &run, &msg).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Requeue(e.to_string()),
    }
}

/// How long a delivery is held while Redis or the warehouse cannot be reached,
/// before it goes back to the queue.
const OUTAGE_PATIENCE: Duration = Duration::from_secs(120);

/// What a look before starting a batch found.
#[derive(Debug, PartialEq, Eq)]
enum Look {
    /// Its event was published already.
    Done,
    /// The run goes on and this worker now holds the batch's lease.
    Acquired,
    /// Another worker holds the lease.
    Busy,
    /// The run is paused or throttled.
    Held,
    /// The run is not running.
    Stop(backfill_shared::control::runs::RunState),
}

async fn look(shared: &Shared, run_id: uuid::Uuid, batch_no: u32) -> Result<Look> {
    let gate_key = shared.gates.key(run_id);
    let cached = match shared
        .leases
        .begin(run_id, batch_no, &shared.worker_id, &gate_key)
        .await?
    {
        Begin::Done => return Ok(Look::Done),
        Begin::Acquired => return Ok(Look::Acquired),
        Begin::Busy => return Ok(Look::Busy),
        Begin::Gate(cached) => cached,
    };
    // No gate in Redis (expired, flushed): the warehouse's, cached, then the lease.
    Ok(
        match shared
            .gates
            .or_warehouse(&shared.pool, run_id, cached.as_deref())
            .await?
        {
            Gate::Go
                if shared
                    .leases
                    .acquire(run_id, batch_no, &shared.worker_id)
                    .await? =>
            {
                Look::Acquired
            }
            Gate::Go => Look::Busy,
            Gate::Wait(_) => Look::Held,
            Gate::Stop(state) => Look::Stop(state),
        },
    )
}

/// Waits until this worker holds the batch's lease (`None`), or returns what to
/// do with the delivery instead.
async fn acquire(shared: &Shared, run_id: uuid::Uuid, batch_no: u32) -> Result<Option<Outcome>> {
    let mut wait = Duration::from_millis(50);
    let mut outage: Option<tokio::time::Instant> = None;
    loop {
        let held = match look(shared, run_id, batch_no).await {
            Ok(Look::Done) => {
                return Ok(Some(Outcome::Done {
                    applied_here: false,
                }));
            }
            Ok(Look::Acquired) => return Ok(None),
            Ok(Look::Stop(state)) => {
                return Ok(Some(Outcome::Skipped(format!("run {run_id} is {state}"))));
            }
            // Paused or throttled, or another worker holds the lease: hold the
            // delivery (it stays ours, unstarted) and look again.
            Ok(look) => {
                outage = None;
                look == Look::Held
            }
            // Redis or the warehouse is away. Holding on beats a requeue, which
            // counts against the queue's delivery limit.
            Err(e) => {
                let since = *outage.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > OUTAGE_PATIENCE {
                    return Err(e);
                }
                warn!(error = %e, "cannot look at the batch's lease or run state; holding the delivery");
                false
            }
        };
        let slept = tokio::time::Instant::now();
        tokio::select! {
            () = shared.shutdown.cancelled() => return Ok(Some(Outcome::Requeue("shutting down".into()))),
            () = tokio::time::sleep(wait) => {}
        }
        if held {
            shared
                .stats
                .throttled_seconds
                .inc_by(slept.elapsed().as_secs_f64());
        }
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// Everything done under the batch's lease.
async fn with_lease(shared: &Shared, run: &RunContext, msg: &BatchMessage) -> Result<Outcome> {
    let (run_id, batch_no) = (msg.run_id, msg.batch_no);
    let leases = &shared.leases;
    if let Some(outcome) = acquire(shared, run_id, batch_no)
        .instrument(info_span!("batch.lease", run.id = %run_id, batch.no = i64::from(batch_no)))
        .await?
    {
        return Ok(outcome);
    }

    let lost = CancellationToken::new();
    // Owned by a guard: a panic or a cancelled delivery stops the renewals too,
    // so the lease of an abandoned batch expires.
    let heartbeat = AbortOnDropHandle::new(tokio::spawn(heartbeat(
        leases.clone(),
        run_id,
        batch_no,
        shared.worker_id.clone(),
        lost.clone(),
    )));
    let outcome = under_lease(shared, run, msg, &lost).await;
    drop(heartbeat);
    // The idempotency key once the event is out, and the lease back, together.
    let done = matches!(outcome, Ok(Outcome::Done { .. }));
    if let Err(e) = leases
        .finish(run_id, batch_no, &shared.worker_id, done)
        .await
    {
        warn!(error = %e, "could not release the lease (it expires by itself) or remember the batch as done (a redelivery finds it applied in the ledger)");
    }
    outcome
}

async fn under_lease(
    shared: &Shared,
    run: &RunContext,
    msg: &BatchMessage,
    lost: &CancellationToken,
) -> Result<Outcome> {
    let (run_id, batch_no) = (msg.run_id, msg.batch_no);
    let bounds = (msg.lo.to_string(), msg.hi.to_string());
    let attempt = || async {
        let claim = batches::claim(
            &shared.pool,
            run_id,
            batch_no,
            (&bounds.0, &bounds.1),
            &shared.worker_id,
        )
        .await?;
        let Claim::Granted { fence } = claim else {
            return Ok((claim, None));
        };
        let work = BatchWork {
            run_id,
            batch_no,
            lo: msg.lo,
            hi: msg.hi,
            fence,
        };
        let started = tokio::time::Instant::now();
        let transaction = info_span!("batch.transaction", run.id = %run_id, batch.no = i64::from(batch_no), db.system = "postgresql");
        let outcome = async {
            let (tx, outcome) = tokio::select! {
                prepared = apply::prepare(&shared.pool, &run.plan, work, &shared.worker_id) => prepared?,
                () = lost.cancelled() => return Err(BatchError::LeaseLost(batch_no)),
            };
            // A worker that stalled past its lease must not commit, even where no
            // newer claim exists yet: renew the lease first (dropping `tx` rolls back).
            if lost.is_cancelled()
                || !shared
                    .leases
                    .extend(run_id, batch_no, &shared.worker_id)
                    .await?
            {
                return Err(BatchError::LeaseLost(batch_no));
            }
            tx.commit()
                .await
                .map_err(|e| BatchError::from_sql("commit", e))?;
            Ok(outcome)
        }
        .instrument(transaction)
        .await?;
        shared
            .stats
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        let rows = outcome.rows;
        shared
            .stats
            .rows_written
            .inc_by(u64::try_from(rows.inserted + rows.updated + rows.deleted).unwrap_or(0));
        let span = Span::current();
        span.record("batch.rows_source", rows.source);
        span.record("batch.rows_inserted", rows.inserted);
        span.record("batch.rows_updated", rows.updated);
        span.record("batch.rows_deleted", rows.deleted);
        Ok((claim, Some(outcome)))
    };
    let result = attempt
        .retry(retry_policy())
        .when(BatchError::is_transient)
        .notify(|e, d| warn!(error = %e, retry_in = ?d, "transient failure; retrying"))
        .await;
    match result {
        Ok((claim @ (Claim::Granted { .. } | Claim::AlreadyApplied), applied)) => {
            publish_applied(shared, run_id, batch_no, applied)
                .instrument(info_span!("batch.event", run.id = %run_id, batch.no = i64::from(batch_no), otel.kind = "producer"))
                .await?;
            Ok(Outcome::Done {
                applied_here: matches!(claim, Claim::Granted { .. }),
            })
        }
        Ok((Claim::Failed, _)) => Ok(Outcome::Skipped(format!(
            "batch {batch_no} failed earlier; `backfill retry {run_id}` brings it back"
        ))),
        Ok((Claim::Fenced, _)) => Ok(Outcome::Skipped(format!(
            "batch {batch_no} was fenced by the rollback of run {run_id}; it never applies"
        ))),
        Ok((Claim::BoundsMismatch { lo, hi }, _)) => Ok(Outcome::Poison(format!(
            "bounds [{}, {}) are not the ledger's [{lo}, {hi}) for batch {batch_no}: a forged or corrupted message",
            bounds.0, bounds.1
        ))),
        Ok((Claim::Unknown, _)) => Ok(Outcome::Poison(format!(
            "run {run_id} has no batch {batch_no}"
        ))),
        Err(e @ BatchError::Stale { .. }) => {
            shared.stats.stale.inc();
            refused(shared, msg, "stale_commit_refused", &e).await;
            Ok(Outcome::Skipped(e.to_string()))
        }
        Err(e @ BatchError::LeaseLost(_)) => {
            shared.stats.leases_lost.inc();
            refused(shared, msg, "lease_lost", &e).await;
            Ok(Outcome::Requeue(e.to_string()))
        }
        Err(e) => {
            let kind = if e.is_transient() {
                FailureKind::Exhausted
            } else {
                FailureKind::Permanent
            };
            let error = e.to_string();
            batches::record_failure(&shared.pool, run_id, batch_no, &error, true).await?;
            shared
                .publisher
                .event(&Event::Failed {
                    version: VERSION,
                    run_id,
                    batch_no,
                    kind,
                    error: error.clone(),
                })
                .await?;
            Ok(Outcome::Failed(error))
        }
    }
}

/// Records in the run log that this worker rolled a batch back rather than commit
/// without the right to (the audit trail of stalls and partitions).
async fn refused(shared: &Shared, msg: &BatchMessage, event: &str, why: &BatchError) {
    warn!(error = %why, "rolled back instead of committing");
    if let Err(e) = log::append(
        &shared.pool,
        msg.run_id,
        &shared.worker_id,
        event,
        Some(msg.batch_no),
        serde_json::json!({ "error": why.to_string() }),
    )
    .await
    {
        warn!(error = %e, "could not record the refusal in the run log");
    }
}

/// Publishes the `applied` event: with the figures the apply just committed, or
/// on a replay after a crash with the ledger's, which are the same.
async fn publish_applied(
    shared: &Shared,
    run_id: uuid::Uuid,
    batch_no: u32,
    applied: Option<apply::BatchOutcome>,
) -> Result<()> {
    let (rows, checks, duration_ms) = match applied {
        Some(outcome) => (outcome.rows, outcome.checks, outcome.duration_ms),
        None => {
            let applied = batches::applied(&shared.pool, run_id, batch_no)
                .await?
                .ok_or_else(|| {
                    BatchError::NotYet(format!("batch {batch_no} is not applied in the ledger"))
                })?;
            (applied.rows, applied.checks, applied.duration_ms)
        }
    };
    shared
        .publisher
        .event(&Event::Applied {
            version: VERSION,
            run_id,
            batch_no,
            rows_source: rows.source,
            rows_inserted: rows.inserted,
            rows_updated: rows.updated,
            rows_deleted: rows.deleted,
            duration_ms,
            checks,
        })
        .await
}

/// Keeps the lease alive at a third of its lifetime; cancels `lost` when it is
/// gone or cannot be renewed before it would expire.
async fn heartbeat(
    leases: backfill_shared::lease::Leases,
    run_id: uuid::Uuid,
    batch_no: u32,
    holder: String,
    lost: CancellationToken,
) {
    let ttl = leases.ttl();
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        match leases.extend(run_id, batch_no, &holder).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                warn!(batch.no = batch_no, "lease lost");
                lost.cancel();
                return;
            }
            Err(e) if last_ok.elapsed() >= ttl => {
                warn!(error = %e, "lease could not be renewed before it expired");
                lost.cancel();
                return;
            }
            Err(e) => warn!(error = %e, "lease heartbeat failed; retrying"),
        }
    }
}
