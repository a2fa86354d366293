//! The consume loop. Prefetch equals the concurrency, and one semaphore of the
//! same size per worker bounds the batches in flight, across broker sessions: a
//! batch still running from a dropped session holds its slot. A lost broker
//! connection is re-established with backoff. Shutdown stops consuming, waits
//! for in-flight batches up to the drain deadline, then abandons the rest (their
//! transactions roll back, the broker redelivers them) and exits.

use crate::publisher::Publisher;
use crate::runs::Runs;
use crate::{Shared, Stats, protocol};
use backfill_shared::config::Config;
use backfill_shared::control;
use backfill_shared::failure::ServiceFailure;
use backfill_shared::lease::Leases;
use backfill_shared::run_gate::Gates;
use backfill_shared::services::{self, ServiceError};
use backfill_shared::topology::Topology;
use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Batches applied at once (and the AMQP prefetch).
    pub concurrency: u16,
    /// Lifetime of a batch lease; heartbeats renew it at a third of this.
    pub lease_ttl: Duration,
    /// How long shutdown waits for in-flight batches.
    pub drain_timeout: Duration,
    /// Names this worker in leases, the ledger and the broker.
    pub worker_id: String,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            concurrency: 2,
            lease_ttl: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(120),
            worker_id: default_worker_id(),
        }
    }
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("--concurrency must be at least 1")]
    Concurrency,
    /// The broker refuses what the worker needs (a queue declared with other
    /// arguments, a user without permissions): reconnecting cannot heal it.
    #[error(
        "{0}; reconnecting cannot fix this: correct the broker's set-up or the worker's BACKFILL_AMQP_URL, then start the worker again"
    )]
    Refused(ServiceFailure),
}

/// One worker: a pool, a Redis connection and, while running, a broker connection.
#[derive(Debug)]
pub struct Worker {
    config: Config,
    options: WorkerOptions,
    pool: sqlx::PgPool,
    leases: Leases,
    gates: Gates,
    topology: Topology,
    runs: Arc<Runs>,
    stats: Arc<Stats>,
    /// Slots for batches in flight: one per unit of concurrency, for the
    /// worker's whole life.
    slots: Arc<Semaphore>,
    /// Every batch task, whichever broker session took it.
    tasks: TaskTracker,
    /// Cancelled at the drain deadline: tasks still running are dropped.
    abandon: CancellationToken,
}

/// How long abandoned batches and the pool get to let go after the deadline.
const LET_GO: Duration = Duration::from_secs(5);

impl Worker {
    /// Connects to PostgreSQL and Redis (failing fast, with the fix, if either is
    /// unreachable) and makes sure the control plane exists.
    pub async fn connect(config: Config, options: WorkerOptions) -> Result<Self, WorkerError> {
        if options.concurrency == 0 {
            return Err(WorkerError::Concurrency);
        }
        let pool = services::postgres_as(
            &config,
            u32::from(options.concurrency) + 2,
            "backfill-worker",
        )
        .await?;
        control::migrate(&pool).await?;
        let redis = services::redis(&config).await?;
        let leases = Leases::new(redis.clone(), &config.namespace, options.lease_ttl);
        let gates = Gates::new(redis, &config.namespace);
        // Fail fast on a broker that is down or refuses our credentials.
        services::rabbit(&config, "backfill-worker (probe)")
            .await?
            .close(200, "probe".into())
            .await
            .ok();
        Ok(Self {
            slots: Arc::new(Semaphore::new(usize::from(options.concurrency))),
            topology: Topology::new(&config.namespace),
            config,
            options,
            pool,
            leases,
            gates,
            runs: Arc::default(),
            stats: Arc::default(),
            tasks: TaskTracker::new(),
            abandon: CancellationToken::new(),
        })
    }

    #[must_use]
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Ready: consuming from the broker, and the warehouse answers within 2 s.
    #[must_use]
    pub fn ready_check(&self) -> backfill_shared::metrics::ReadyCheck {
        let (stats, pool) = (Arc::clone(&self.stats), self.pool.clone());
        Arc::new(move || {
            let (stats, pool) = (Arc::clone(&stats), pool.clone());
            Box::pin(async move {
                stats.connected.load(Ordering::Relaxed)
                    && tokio::time::timeout(
                        Duration::from_secs(2),
                        sqlx::query("SELECT 1").execute(&pool),
                    )
                    .await
                    .is_ok_and(|r| r.is_ok())
            })
        })
    }

    /// Consumes until `shutdown` is cancelled, then drains. Reconnects to the broker
    /// with backoff when the connection is lost.
    ///
    /// # Errors
    /// The broker refuses the worker's topology or consumer for good.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        const FIRST_DELAY: Duration = Duration::from_millis(250);
        let mut delay = FIRST_DELAY;
        let mut outcome = Ok(());
        while !shutdown.is_cancelled() {
            let started = tokio::time::Instant::now();
            match self.session(&shutdown).await {
                Ok(()) => break,
                Err(SessionEnd::Failed(failure)) if !failure.is_transient() => {
                    outcome = Err(WorkerError::Refused(failure));
                    break;
                }
                Err(e) => {
                    // A session that lasted was a healthy one: back off afresh.
                    if started.elapsed() > Duration::from_secs(60) {
                        delay = FIRST_DELAY;
                    }
                    warn!(error = %e, retry_in = ?delay, "broker session ended; reconnecting");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(15));
        }
        // Connections of abandoned batches are dropped, not returned: bounded.
        if tokio::time::timeout(LET_GO, self.pool.close())
            .await
            .is_err()
        {
            warn!("warehouse connections did not close in time; exiting anyway");
        }
        info!(worker = %self.options.worker_id, "worker stopped");
        outcome
    }

    /// One broker connection's life. `Ok` on shutdown, `Err` when the connection broke.
    async fn session(&self, shutdown: &CancellationToken) -> Result<(), SessionEnd> {
        let name = format!("backfill-worker {}", self.options.worker_id);
        let conn = services::rabbit(&self.config, &name)
            .await
            .map_err(|e| SessionEnd::Lost(e.to_string()))?;
        let amqp = |e: lapin::Error| SessionEnd::Failed(e.into());
        let channel = conn.create_channel().await.map_err(amqp)?;
        self.topology.declare(&channel).await.map_err(amqp)?;
        channel
            .basic_qos(self.options.concurrency, BasicQosOptions::default())
            .await
            .map_err(amqp)?;
        let publisher = Publisher::new(&conn, self.topology.clone())
            .await
            .map_err(amqp)?;
        let tag = format!("backfill-worker-{}", self.options.worker_id);
        let mut consumer = channel
            .basic_consume(
                self.topology.batches.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp)?;
        info!(queue = %self.topology.batches, concurrency = self.options.concurrency, worker = %self.options.worker_id, "consuming");
        self.stats.connected.store(true, Ordering::Relaxed);

        let shared = Arc::new(Shared {
            pool: self.pool.clone(),
            leases: self.leases.clone(),
            gates: self.gates.clone(),
            publisher,
            runs: Arc::clone(&self.runs),
            worker_id: self.options.worker_id.clone(),
            signer: self.config.signer(),
            shutdown: shutdown.clone(),
            stats: Arc::clone(&self.stats),
        });
        let ended = loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                permit = Arc::clone(&self.slots).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break Err(SessionEnd::Lost("semaphore closed".to_owned())),
                },
            };
            let next = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    let shared = Arc::clone(&shared);
                    let abandon = self.abandon.clone();
                    self.tasks.spawn(async move {
                        // Dropped at the drain deadline: an open transaction
                        // rolls back, the heartbeat stops, the delivery stays
                        // unacked for the broker to redeliver.
                        tokio::select! {
                            () = protocol::handle(shared, delivery) => {}
                            () = abandon.cancelled() => {}
                        }
                        drop(permit);
                    });
                }
                Some(Err(e)) => break Err(amqp(e)),
                None => {
                    break Err(SessionEnd::Lost(
                        "the broker cancelled the consumer".to_owned(),
                    ));
                }
            }
        };
        self.stats.connected.store(false, Ordering::Relaxed);
        if ended.is_ok() {
            info!("shutting down: no new batches; draining in-flight ones");
            let _ = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
            // Drain while the connection lives: their acks and events need it.
            self.tasks.close();
            if tokio::time::timeout(self.options.drain_timeout, self.tasks.wait())
                .await
                .is_err()
            {
                warn!(
                    timeout = ?self.options.drain_timeout,
                    in_flight = self.tasks.len(),
                    "drain deadline passed; abandoning in-flight batches: their transactions roll back and the broker redelivers them"
                );
                self.abandon.cancel();
                let _ = tokio::time::timeout(LET_GO, self.tasks.wait()).await;
            }
        }
        // A broken session leaves its tasks running: they hold their slots,
        // and the broker redelivers what they cannot ack.
        let _ = conn.close(200, "worker stopping".into()).await;
        ended
    }
}

/// Why a broker session ended other than by shutdown.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error(transparent)]
    Failed(ServiceFailure),
    /// The connection went, or could not be made: reconnect.
    #[error("{0}")]
    Lost(String),
}
