//! The Backfill worker: takes batch messages from RabbitMQ and applies each exactly
//! once to the warehouse.
//!
//! - [`consumer`]: connections, the consume loop, backpressure and graceful drain.
//! - [`protocol`]: what happens to one delivery (lease, claim, apply, event, ack).
//! - [`apply`]: the fenced warehouse transaction and the `merge` strategy.
//! - [`publisher`]: confirmed publishing of events and dead letters.
//! - [`runs`]: the briefs of runs seen so far.
//!
//! The binary `backfill-worker` runs one [`Worker`]; `backfill demo` starts such
//! processes, and the tests and benchmarks run several in-process ([`fleet`]).

pub mod apply;
mod consumer;
mod error;
pub mod fleet;
mod protocol;
mod publisher;
mod runs;

pub use consumer::{Worker, WorkerError, WorkerOptions};
pub use error::BatchError;
pub use fleet::InProcessWorkers;

use backfill_shared::lease::Leases;
use backfill_shared::run_gate::Gates;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use publisher::Publisher;
use std::sync::atomic::{AtomicBool, AtomicU64};
use tokio_util::sync::CancellationToken;

/// What one worker has done since it started: the figures `--metrics-addr`
/// serves as Prometheus text ([`Stats::registry`]).
#[derive(Debug)]
pub struct Stats {
    /// Batches this worker applied, each once.
    pub applied: Counter,
    /// Deliveries not applied, by why (`already_applied`: a redelivery of a
    /// batch applied before, here or elsewhere).
    pub skipped: Family<Vec<(String, String)>, Counter>,
    pub failed: Counter,
    pub poison: Counter,
    /// Commits refused because a newer fencing token exists.
    pub stale: Counter,
    pub leases_lost: Counter,
    /// Rows inserted, updated and deleted.
    pub rows_written: Counter,
    /// From the claim to the commit of each applied batch.
    pub apply_seconds: Histogram,
    /// Time deliveries were held because their run was paused or throttled.
    pub throttled_seconds: Counter<f64, AtomicU64>,
    /// Consuming from the broker now.
    pub connected: AtomicBool,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            applied: Counter::default(),
            skipped: Family::default(),
            failed: Counter::default(),
            poison: Counter::default(),
            stale: Counter::default(),
            leases_lost: Counter::default(),
            rows_written: Counter::default(),
            apply_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 18)),
            throttled_seconds: Counter::default(),
            connected: AtomicBool::new(false),
        }
    }
}

impl Stats {
    /// The count of redeliveries of batches applied before.
    #[must_use]
    pub fn already_applied(&self) -> Counter {
        self.skipped
            .get_or_create(&vec![("reason".to_owned(), "already_applied".to_owned())])
            .clone()
    }

    /// A registry holding these figures (the same counters, not copies).
    #[must_use]
    pub fn registry(&self) -> Registry {
        // Shown from the start, at 0.
        let _ = self.already_applied();
        let mut registry = Registry::with_prefix("backfill_worker");
        registry.register(
            "batches_applied",
            "Batches this worker applied",
            self.applied.clone(),
        );
        registry.register(
            "batches_skipped",
            "Deliveries this worker did not apply, by reason",
            self.skipped.clone(),
        );
        registry.register(
            "batches_failed",
            "Batches that failed for good here",
            self.failed.clone(),
        );
        registry.register(
            "poison_messages",
            "Messages dead-lettered as unusable",
            self.poison.clone(),
        );
        registry.register(
            "stale_commits_refused",
            "Commits refused because a newer fencing token exists",
            self.stale.clone(),
        );
        registry.register(
            "leases_lost",
            "Batches rolled back after losing their lease",
            self.leases_lost.clone(),
        );
        registry.register(
            "rows_written",
            "Rows inserted, updated and deleted",
            self.rows_written.clone(),
        );
        registry.register_with_unit(
            "apply_duration",
            "From claim to commit of each applied batch",
            Unit::Seconds,
            self.apply_seconds.clone(),
        );
        registry.register_with_unit(
            "throttled",
            "Time deliveries were held while their run was paused or throttled",
            Unit::Seconds,
            self.throttled_seconds.clone(),
        );
        registry
    }
}

/// State shared by every in-flight batch of one worker connection.
#[derive(Debug)]
struct Shared {
    pool: sqlx::PgPool,
    leases: Leases,
    gates: Gates,
    publisher: Publisher,
    runs: std::sync::Arc<runs::Runs>,
    worker_id: String,
    /// When set, unsigned or wrongly signed batch messages are refused.
    signer: Option<backfill_shared::signing::Signer>,
    shutdown: CancellationToken,
    stats: std::sync::Arc<Stats>,
}
