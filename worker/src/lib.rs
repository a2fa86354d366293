//! The Backfill worker: takes batch messages from RabbitMQ and applies each exactly
//! once to the warehouse.
//!
//! - [`consumer`]: connections, the consume loop, backpressure and graceful drain.
//! - [`protocol`]: what happens to one delivery (lease, claim, apply, event, ack).
//! - [`apply`]: the fenced warehouse transaction and the `merge` strategy.
//! - [`publisher`]: confirmed publishing of events and dead letters.
//! - [`runs`]: the briefs of runs seen so far.
//!
//! The binary `backfill-worker` runs one [`Worker`]; `backfill demo` and the tests
//! run several in-process.

pub mod apply;
mod consumer;
mod error;
mod protocol;
mod publisher;
mod runs;

pub use consumer::{Worker, WorkerError, WorkerOptions};
pub use error::BatchError;

use backfill_shared::gates::Gates;
use backfill_shared::lease::Leases;
use publisher::Publisher;
use std::sync::atomic::AtomicU64;
use tokio_util::sync::CancellationToken;

/// What one worker has done since it started.
#[derive(Debug, Default)]
pub struct Stats {
    pub applied: AtomicU64,
    pub failed: AtomicU64,
    pub poison: AtomicU64,
    pub stale: AtomicU64,
    pub leases_lost: AtomicU64,
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
