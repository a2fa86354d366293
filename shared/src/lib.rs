//! Backfill's shared library: what the coordinator (`backfill`) and the workers
//! (`backfill-worker`) must agree on.
//!
//! A batch travels through these layers:
//!
//! - [`brief`]: the one-page TOML brief, parsed and linted; its `batch_by` plans
//!   the batches.
//! - [`control`]: the control plane in the warehouse (runs, the batch ledger with
//!   fencing tokens, the append-only run log).
//! - [`message`] and [`topology`]: the MessagePack messages and the RabbitMQ
//!   queues they travel on.
//! - [`lease`]: Redis leases and idempotency keys held by workers; [`run_gate`]: the
//!   run state workers read from Redis before each batch.
//! - [`signing`]: optional HMAC signatures of batch messages.
//! - [`config`], [`services`]: connections; [`failure`]: whether a failed call
//!   to a service may be retried; [`telemetry`]: logs and traces;
//!   [`metrics`]: the Prometheus endpoint.
//! - [`checks`]: per-batch figures and the limits they are held against.
//! - [`sql`]: quoting of identifiers from the brief; [`partitions`]: partitioned
//!   tables (their partitions, a table built alike, names handed over on a swap).
//! - [`text`]: text from elsewhere made plain (no terminal escapes).

pub mod brief;
pub mod checks;
pub mod config;
pub mod control;
pub mod failure;
pub mod lease;
pub mod message;
pub mod metrics;
pub mod partitions;
pub mod run_gate;
pub mod services;
pub mod signing;
pub mod sql;
pub mod telemetry;
pub mod text;
pub mod topology;
