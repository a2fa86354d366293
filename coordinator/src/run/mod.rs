//! `backfill run`: records the run and every batch, then drives it — publishes at
//! most `max_in_flight` batches at a time with publisher confirms, consumes the
//! workers' events, halts on the first failed batch, and finishes when every batch
//! is applied. The ledger is the record; events only make the coordinator quick.
//!
//! - `create.rs`: recording a run (and its image or side table, the marker);
//! - this file: driving it (attach, fill the window, reconcile, reconnect);
//! - `events.rs`: counting applied batches and judging them against the limits;
//! - `publisher.rs`: confirmed batch messages; `guard.rs`: the load guard
//!   (`pause_when`, `window`); `liveness.rs`: one driver per run, lost batches,
//!   missing workers; `metrics.rs`: the run's gauges; `progress.rs`: the bar.

use crate::error::{CliError, Result};
use crate::lifecycle;
use crate::notify;

mod create;
mod events;
mod liveness;
mod load_guard;
mod metrics;
mod progress;
mod publisher;

pub use create::create;
pub use events::accepted_limits;
pub use metrics::RunMetrics;

use backfill_shared::brief::BatchRange;
use backfill_shared::config::Config;
use backfill_shared::control::batches::BatchState;
use backfill_shared::control::runs::{self, RunState};
use backfill_shared::control::{batches, log, maintenance};
use backfill_shared::failure::ServiceFailure;
use backfill_shared::lease::Leases;
use backfill_shared::run_gate::{self, Gates};
use backfill_shared::services;
use backfill_shared::telemetry::RootSpan;
use backfill_shared::topology::Topology;
use backon::{BackoffBuilder as _, ExponentialBuilder};
use events::{EVENTS_PER_ROUND, Tally, halt, on_event, take};
use futures_util::{FutureExt as _, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use liveness::{ConsumerChange, Consumers, DriverLock, Sweep};
use load_guard::LoadGuard;
use opentelemetry::KeyValue;
use progress::progress_bar;
use publisher::BatchPublisher;
use sqlx::PgPool;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, warn};
use uuid::Uuid;

/// How a followed run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Applied,
    Halted(String),
    /// Someone else changed the run's state (cancelled it, say).
    Stopped(RunState),
    /// This coordinator was told to stop (`DriveOptions::interrupt`): it
    /// published nothing more and let go of the run, which goes on from the
    /// ledger when driven again.
    Interrupted,
}

/// Deletes the events queue of a run nobody drives (after `backfill cancel`,
/// say): a driving coordinator deletes it itself when its drive ends.
pub async fn drop_events_queue(config: &Config, pool: &PgPool, run_id: Uuid) -> Result<()> {
    if DriverLock::is_held(pool, run_id).await? {
        return Ok(());
    }
    let conn = services::rabbit(config, &format!("backfill {run_id}")).await?;
    let channel = conn.create_channel().await?;
    let queue = Topology::new(&config.namespace).run_events_queue(run_id);
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = conn.close(200, "events queue deleted".into()).await;
    Ok(())
}

/// Tells workers of a run's new state through Redis at once. Returns a warning
/// when Redis is away: the state is recorded, and workers read it within seconds.
pub async fn tell_workers(config: &Config, pool: &PgPool, run_id: Uuid) -> Option<String> {
    let gates = services::redis(config)
        .await
        .ok()
        .map(|conn| Gates::new(conn, &config.namespace));
    run_gate::publish_or_warn(gates.as_ref(), pool, run_id).await
}

/// Whether a coordinator drives the run now (holds its driver lock).
pub async fn is_driven(pool: &PgPool, run_id: Uuid) -> Result<bool> {
    DriverLock::is_held(pool, run_id).await
}

/// Options of [`drive`].
#[derive(Debug, Clone)]
pub struct DriveOptions {
    pub progress: bool,
    /// Gauges of the run's progress, refreshed at every reconcile.
    pub metrics: Option<std::sync::Arc<RunMetrics>>,
    /// How often the ledger is re-read (to notice work whose event was lost), the
    /// run's state checked and the load guard polled.
    pub reconcile_every: Duration,
    /// How long `pause_when` must stay false before batches start again.
    pub guard_cooldown: Duration,
    /// How long batches may wait with no worker consuming the queue before the
    /// operator is told (once, on stderr, in the run log and in `status`).
    pub no_workers_after: Duration,
    /// Cancelled to stop driving (SIGTERM, Ctrl-C): see [`Finish::Interrupted`].
    pub interrupt: CancellationToken,
}

impl Default for DriveOptions {
    fn default() -> Self {
        Self {
            progress: true,
            metrics: None,
            reconcile_every: Duration::from_secs(2),
            guard_cooldown: Duration::from_secs(30),
            no_workers_after: Duration::from_secs(10),
            interrupt: CancellationToken::new(),
        }
    }
}

/// Drives a run to its end: publishes, follows events, halts on failure. Survives
/// the broker, Redis or the warehouse going away mid-run: it reconnects with
/// backoff and re-attaches from the ledger. Services unreachable at the start, or
/// gone for longer than the reconnect patience, end it with exit code 3; `backfill
/// resume RUN` re-attaches later.
pub async fn drive(
    config: &Config,
    pool: &PgPool,
    run_id: Uuid,
    options: DriveOptions,
) -> Result<Finish> {
    let run = runs::load(pool, run_id).await?;
    let plan = run
        .brief
        .scope
        .batch_by
        .plan()
        .map_err(CliError::BadInput)?;
    if u32::try_from(plan.len()).ok() != Some(run.batch_count) {
        return Err(CliError::Internal(format!(
            "run {run_id} has {} batches in the ledger but its brief plans {}",
            run.batch_count,
            plan.len()
        )));
    }
    let redis = services::redis(config).await?;
    let attachment = Attachment {
        config,
        pool,
        run: &run,
        plan: &plan,
        options,
        // The coordinator only reads leases; the lifetime is the workers'.
        leases: Leases::new(redis.clone(), &config.namespace, Duration::ZERO),
        gates: Gates::new(redis, &config.namespace),
    };
    let root = RootSpan::start(
        "backfill.run",
        vec![
            KeyValue::new("run.id", run_id.to_string()),
            KeyValue::new("target.table", run.brief.scope.target.to_string()),
            KeyValue::new("run.batches", i64::try_from(plan.len()).unwrap_or(i64::MAX)),
            KeyValue::new("run.strategy", format!("{:?}", run.brief.write.strategy)),
        ],
    );
    notify::taken_up(pool, run_id).await;
    let finish = attachment.drive(&root.context()).await;
    let ended = match &finish {
        Ok(Finish::Applied) => Some(notify::Happened::Applied),
        Ok(Finish::Halted(reason)) => Some(notify::Happened::Halted(reason.clone())),
        // Cancelled (the command that cancels says so), or let go of.
        Ok(Finish::Stopped(_) | Finish::Interrupted) => None,
        Err(e) => Some(notify::Happened::Failed(e.to_string())),
    };
    if let Some(ended) = ended {
        notify::emit(pool, run_id, ended).await;
    }
    root.end(match &finish {
        Ok(Finish::Applied | Finish::Stopped(_)) => None,
        Ok(Finish::Interrupted) => {
            Some("the coordinator was stopped; the run goes on when driven again".into())
        }
        Ok(Finish::Halted(reason)) => Some(reason.clone()),
        Err(e) => Some(e.to_string()),
    });
    finish
}

impl Attachment<'_> {
    /// Follows the run through lost connections until it ends.
    async fn drive(&self, run_span: &opentelemetry::Context) -> Result<Finish> {
        let (pool, run_id) = (self.pool, self.run.run_id);
        let attachment = self;
        let mut delays = reconnect_policy().build();
        let mut first = true;
        let finish = loop {
            let started = tokio::time::Instant::now();
            match attachment.follow(first, run_span).await {
                Ok(finish) => break finish,
                Err(e) if e.is_transient() => {
                    if started.elapsed() > Duration::from_secs(60) {
                        delays = reconnect_policy().build();
                    }
                    let Some(delay) = delays.next() else {
                        return Err(e);
                    };
                    warn!(run.id = %run_id, error = %e, retry_in = ?delay, "lost a service mid-run; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.options.interrupt.cancelled() => break Finish::Interrupted,
                    }
                }
                Err(e) => return Err(e),
            }
            first = false;
        };
        if let Some(warning) =
            run_gate::publish_or_warn(Some(&attachment.gates), pool, run_id).await
        {
            warn!(run.id = %run_id, "{warning}");
        }
        Ok(finish)
    }
}

/// How long and how often to try reconnecting: about six minutes in all.
fn reconnect_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(15))
        .with_max_times(30)
        .with_jitter()
}

/// What the drive does once the canary's batches are applied.
enum CanaryStep {
    /// Hold the rest: the run waits at its canary for the reviewer.
    Wait,
    /// Stop driving: the run was stopped meanwhile.
    Stop(Finish),
    /// Promoted: publish the rest.
    Promoted,
    /// Paused meanwhile: look again later.
    NotNow,
}

/// What one attachment of the coordinator to a run needs.
struct Attachment<'a> {
    config: &'a Config,
    pool: &'a PgPool,
    run: &'a runs::Run,
    plan: &'a [BatchRange],
    options: DriveOptions,
    leases: Leases,
    gates: Gates,
}

impl Attachment<'_> {
    /// One broker connection's worth of driving: takes the driver lock, picks up
    /// from the ledger, publishes, follows events and reconciles until the run
    /// ends or a connection is lost. `first`: a broker that cannot be reached is
    /// a service error (exit 3) rather than a connection lost.
    async fn follow(&self, first: bool, run_span: &opentelemetry::Context) -> Result<Finish> {
        let (pool, run, run_id) = (self.pool, self.run, self.run.run_id);
        let _driver = DriverLock::take(pool, run_id).await?;
        let topology = Topology::new(&self.config.namespace);
        let (conn, publish, events_queue, mut events) =
            async {
                let conn =
                    match services::rabbit(self.config, &format!("backfill coordinator {run_id}"))
                        .await
                    {
                        Ok(conn) => conn,
                        Err(e) if first => return Err(e.into()),
                        Err(e) => return Err(CliError::Unavailable(e.to_string())),
                    };
                let publish = conn.create_channel().await?;
                publish
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                topology.declare(&publish).await?;
                let events_queue = topology.declare_run_events(&publish, run_id).await?;
                let consume = conn.create_channel().await?;
                consume.basic_qos(1000, BasicQosOptions::default()).await?;
                let events = consume
                    .basic_consume(
                        events_queue.as_str().into(),
                        format!("coordinator-{run_id}").as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                Ok::<_, CliError>((conn, publish, events_queue, events))
            }
            .instrument(tracing::Span::none())
            .await?;

        let total = self.plan.len();
        let mut tally = Tally::new(total);
        let accepted = accepted_limits(pool, run_id).await?;
        let mut pending: VecDeque<u32> =
            batches::numbers_in_state(pool, run_id, BatchState::Pending)
                .await?
                .into();
        // Before its promotion, a run with a canary publishes only the canary's
        // batches; the time it waited for the promotion is not the run's pace.
        let fresh = runs::load(pool, run_id).await?;
        tally.canary_wait = fresh.canary_wait(chrono::Utc::now());
        let mut canary = fresh.in_canary().then(|| run.canary_batches.clone());
        if let Some(canary) = &canary {
            let canary: HashSet<u32> = canary.iter().copied().collect();
            pending.retain(|no| canary.contains(no));
        }
        let batch_out = BatchPublisher {
            run_span,
            channel: &publish,
            queue: &topology.batches,
            brief_hash: &run.brief_hash,
            run_id,
            plan: self.plan,
            signer: self.config.signer(),
        };
        // Batches published before we (re)attached that no worker holds a lease
        // on: their messages may be gone (a publish cut short, a message skipped
        // while the run was halted, dead-lettered at the delivery limit), so
        // publish them again. A duplicate is harmless: the ledger and the
        // idempotency key make the second delivery a no-op.
        let unfinished = batches::unfinished(pool, run_id).await?;
        let mut in_flight: HashSet<u32> = unfinished.iter().map(|b| b.batch_no).collect();
        let republished: Vec<u32> = liveness::unleased(&self.leases, run_id, unfinished)
            .await?
            .iter()
            .map(|b| b.batch_no)
            .collect();
        batch_out.publish(&republished).await?;
        let already = batches::numbers_in_state(pool, run_id, BatchState::Applied).await?;
        for batch in batches::applied_among(pool, run_id, &already).await? {
            tally.record(&batch);
        }
        let bar = progress_bar(self.options.progress, total, tally.count);
        let window = run.brief.limits.max_in_flight as usize;
        // A throttle left by a coordinator that died is not this one's to keep.
        runs::set_throttled(pool, run_id, false, &run.operator, "coordinator attached").await?;
        let mut guard = LoadGuard::new(
            &run.brief.limits,
            self.options.guard_cooldown,
            &run.operator,
        );
        // Paused by the operator or throttled by the load guard: publish nothing new.
        // Polled before the first batch goes out, and at every reconcile after.
        let mut held = matches!(fresh.state, RunState::Paused | RunState::Canary)
            || guard.poll(pool, run_id).await?;
        self.tell_workers().await;
        if let Some(metrics) = &self.options.metrics {
            metrics.attached(run_id);
            metrics.update(&batches::counts(pool, run_id).await?, false, held);
        }
        let mut sweep = Sweep::default();
        let mut consumers = Consumers::new(self.options.no_workers_after);
        let mut reconcile = tokio::time::interval(self.options.reconcile_every);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        log::append(
            pool,
            run_id,
            &run.operator,
            "coordinator_attached",
            None,
            serde_json::json!({
                "pending": pending.len(), "in_flight": in_flight.len(), "applied": tally.count,
                "republished": republished,
            }),
        )
        .await?;

        let finish = loop {
            if tally.count == total {
                break Finish::Applied;
            }
            if !held
                && let Some(batches) = &canary
                && batches.iter().all(|no| tally.has(*no))
            {
                match self.canary_applied().await? {
                    CanaryStep::Stop(finish) => break finish,
                    CanaryStep::Wait => {
                        held = true;
                        bar.set_message(format!(
                            "{} rows written · CANARY: waiting for `backfill promote`",
                            tally.rows_written
                        ));
                    }
                    CanaryStep::Promoted => {
                        canary = None;
                        tally.canary_wait = runs::load(pool, run_id)
                            .await?
                            .canary_wait(chrono::Utc::now());
                        pending = batches::numbers_in_state(pool, run_id, BatchState::Pending)
                            .await?
                            .into();
                    }
                    CanaryStep::NotNow => {}
                }
            }
            // Fill the window: mark queued first (the ledger leads), then publish with confirms.
            let room = window.saturating_sub(in_flight.len());
            if room > 0 && !pending.is_empty() && !held {
                let next: Vec<u32> = pending.drain(..room.min(pending.len())).collect();
                batches::mark_queued(pool, run_id, &next).await?;
                batch_out.publish(&next).await?;
                in_flight.extend(next);
            }
            tokio::select! {
                () = self.options.interrupt.cancelled() => break Finish::Interrupted,
                delivery = events.next() => {
                    // Take every event already here before publishing again: one
                    // ledger update and one confirm wait per round, not per batch.
                    let mut next = Some(delivery);
                    let mut reason = None;
                    let mut taken = 0;
                    while let Some(delivery) = next.take() {
                        let Some(delivery) = delivery else {
                            return Err(CliError::Unavailable("the broker closed the event stream".into()));
                        };
                        let delivery = delivery?;
                        delivery.ack(BasicAckOptions::default()).await?;
                        reason = on_event(&delivery.data, &mut tally, &mut in_flight, run, &accepted, pool, &bar).await?;
                        taken += 1;
                        if reason.is_none() && taken < EVENTS_PER_ROUND {
                            next = events.next().now_or_never();
                        }
                    }
                    if let Some(reason) = reason {
                        break halt(pool, run_id, &run.operator, &reason).await?;
                    }
                }
                _ = reconcile.tick() => {
                    let state = runs::state(pool, run_id).await?;
                    let paused = match state {
                        RunState::Running => false,
                        // Waiting at the canary holds new batches as a pause does.
                        RunState::Paused | RunState::Canary => true,
                        RunState::Halted => break Finish::Halted(runs::load(pool, run_id).await?.halt_reason.unwrap_or_default()),
                        other => break Finish::Stopped(other),
                    };
                    let throttled = guard.poll(pool, run_id).await?;
                    held = paused || throttled;
                    self.tell_workers().await;
                    if held {
                        let why = match state {
                            RunState::Canary => "CANARY: waiting for `backfill promote`",
                            _ if paused => "PAUSED",
                            _ => "THROTTLED",
                        };
                        bar.set_message(format!("{} rows written · {why}", tally.rows_written));
                    } else {
                        self.sweep(&mut sweep, &mut consumers, &publish, &topology, &batch_out).await?;
                    }
                    // Events can be lost (a worker dies after commit); the ledger cannot.
                    let counts = batches::counts(pool, run_id).await?;
                    if let Some(metrics) = &self.options.metrics {
                        metrics.update(&counts, paused, throttled);
                    }
                    if counts.failed > 0 {
                        let failure = batches::failures(pool, run_id).await?.into_iter().find(|f| f.state == BatchState::Failed);
                        let reason = failure.map_or_else(|| "a batch failed".to_owned(), |f| format!("batch {} failed: {}", f.batch_no, f.last_error));
                        break halt(pool, run_id, &run.operator, &reason).await?;
                    }
                    if usize::try_from(counts.applied).ok() != Some(tally.count) {
                        let new: Vec<u32> = batches::numbers_in_state(pool, run_id, BatchState::Applied)
                            .await?
                            .into_iter()
                            .filter(|no| !tally.has(*no))
                            .collect();
                        let mut reason = None;
                        for batch in batches::applied_among(pool, run_id, &new).await? {
                            in_flight.remove(&batch.batch_no);
                            if let Some(r) = take(&mut tally, &batch, run, &accepted, pool, &bar).await? {
                                reason = Some(r);
                                break;
                            }
                        }
                        if let Some(reason) = reason {
                            break halt(pool, run_id, &run.operator, &reason).await?;
                        }
                    }
                }
            }
        };
        bar.finish_and_clear();
        runs::set_throttled(pool, run_id, false, &run.operator, "coordinator stopped").await?;
        if let Some(metrics) = &self.options.metrics {
            metrics.update(&batches::counts(pool, run_id).await?, false, false);
        }
        if finish == Finish::Applied {
            // Every batch is in: the live target is consistent again.
            if lifecycle::writes_live_target(&run.brief) {
                let mut conn = pool.acquire().await?;
                maintenance::clear(&mut conn, &run.brief.scope.target, run_id).await?;
            }
            runs::transition(
                pool,
                run_id,
                &[RunState::Running],
                RunState::Applied,
                &run.operator,
                None,
            )
            .await?;
            info!(run.id = %run_id, batches = total, "every batch applied");
        }
        // The run's events queue ends with the drive, whatever the run's state:
        // a resumed run declares it again, and the ledger holds what it missed.
        if let Err(e) = publish
            .queue_delete(events_queue.as_str().into(), QueueDeleteOptions::default())
            .await
        {
            warn!(run.id = %run_id, error = %e, queue = %events_queue, "could not delete the run's events queue");
        }
        let _ = conn.close(200, "coordinator done".into()).await;
        Ok(finish)
    }

    /// Every batch of the canary is applied: the run waits in state `canary`
    /// until the reviewer promotes it, or goes on at once when `canary.auto`
    /// and no limit was ever breached.
    async fn canary_applied(&self) -> Result<CanaryStep> {
        let (pool, run_id) = (self.pool, self.run.run_id);
        if !runs::enter_canary(pool, run_id, "coordinator").await? {
            // Waiting already, promoted meanwhile, or its state changed.
            let run = runs::load(pool, run_id).await?;
            return Ok(match run.state {
                RunState::Canary => CanaryStep::Wait,
                RunState::Paused => CanaryStep::NotNow,
                RunState::Running if !run.in_canary() => CanaryStep::Promoted,
                RunState::Halted => {
                    CanaryStep::Stop(Finish::Halted(run.halt_reason.unwrap_or_default()))
                }
                other => CanaryStep::Stop(Finish::Stopped(other)),
            });
        }
        let auto = self
            .run
            .brief
            .limits
            .canary
            .as_ref()
            .is_some_and(|c| c.auto);
        if auto && log::breaches(pool, run_id).await?.is_empty() {
            runs::promote(pool, run_id, "canary.auto", true).await?;
            info!(run.id = %run_id, "canary applied within every limit; promoted by canary.auto");
            return Ok(CanaryStep::Promoted);
        }
        self.tell_workers().await;
        info!(run.id = %run_id, reviewer = %self.run.brief.meta.reviewer, "canary applied; waiting for the reviewer's `backfill promote {run_id}`");
        Ok(CanaryStep::Wait)
    }

    /// Writes the run's gate (state and throttle) to Redis for workers. Not fatal:
    /// workers read the warehouse once the cached gate expires.
    async fn tell_workers(&self) {
        if let Err(e) = self.gates.publish(self.pool, self.run.run_id).await {
            warn!(run.id = %self.run.run_id, error = %e, "could not write the run's state to Redis");
        }
    }

    /// Publishes again the batches whose messages were lost, and fails those lost
    /// too often (the next reconcile halts the run on them).
    /// Also says when no worker consumes the queue while batches wait in it.
    async fn sweep(
        &self,
        sweep: &mut Sweep,
        consumers: &mut Consumers,
        channel: &lapin::Channel,
        topology: &Topology,
        batch_out: &BatchPublisher<'_>,
    ) -> Result<()> {
        let (pool, run_id) = (self.pool, self.run.run_id);
        let queue = channel
            .queue_declare(
                topology.batches.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let ready = queue.message_count();
        match consumers.observe(std::time::Instant::now(), queue.consumer_count(), ready) {
            Some(ConsumerChange::Missing) => {
                let advice = format!(
                    "no backfill-worker is consuming {}: start one with `backfill-worker` (the same BACKFILL_* settings as this coordinator)",
                    topology.batches
                );
                warn!(run.id = %run_id, waiting = ready, "{advice}");
                log::append(pool, run_id, "coordinator", "no_workers", None, serde_json::json!({ "queue": topology.batches.as_str(), "waiting": ready, "advice": advice })).await?;
            }
            Some(ConsumerChange::Back) => {
                info!(run.id = %run_id, "a backfill-worker consumes {} again", topology.batches);
                log::append(
                    pool,
                    run_id,
                    "coordinator",
                    "workers_back",
                    None,
                    serde_json::json!({ "queue": topology.batches.as_str() }),
                )
                .await?;
            }
            None => {}
        }
        let verdict = match sweep.run(pool, &self.leases, run_id, ready).await {
            Ok(v) => v,
            // Without Redis no worker can start a batch either: look again later.
            Err(CliError::Call(e @ ServiceFailure::Cache(_))) => {
                warn!(run.id = %run_id, error = %e, "cannot look for lost batches");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if !verdict.republish.is_empty() {
            warn!(run.id = %run_id, batches = ?verdict.republish, "published batches nobody holds; publishing them again");
            batch_out.publish(&verdict.republish).await?;
            log::append(
                pool,
                run_id,
                "coordinator",
                "batches_republished",
                None,
                serde_json::json!({ "batches": verdict.republish }),
            )
            .await?;
        }
        for (batch_no, claims) in verdict.give_up {
            let error = format!(
                "claimed {claims} times without being applied: workers died or lost their lease on it each time \
                 (see the workers' logs and the {} queue); fix the cause, then `backfill retry {run_id}`",
                topology.dead
            );
            batches::record_failure(pool, run_id, batch_no, &error, true).await?;
        }
        Ok(())
    }
}
