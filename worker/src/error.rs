//! What can go wrong with one batch, classified so the worker's decision is one
//! `match`: retry with backoff ([`BatchError::is_transient`]), or report the failure
//! and dead-letter the message. Whether a service failure is transient is decided
//! once, for coordinator and workers alike, by [`ServiceFailure::is_transient`].

use backfill_shared::control::ControlError;
use backfill_shared::failure::ServiceFailure;
use backfill_shared::run_gate::GateError;
use backfill_shared::topology::PublishError;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A call to the warehouse, the broker or Redis failed: retried when the
    /// failure is transient (a lost connection, a deadlock); otherwise (the source
    /// query fails, a constraint is violated) reported, and the run halts.
    #[error("{context}: {failure}")]
    Service {
        context: String,
        #[source]
        failure: ServiceFailure,
    },
    /// The ledger is not yet where the protocol expects it (a replay raced the
    /// first attempt's commit): retried.
    #[error("{0}")]
    NotYet(String),
    /// Retrying cannot help: the source breaks the grain, a bound is out of range.
    /// Reported and dead-lettered; the run halts.
    #[error("{0}")]
    Permanent(String),
    /// A newer claim holds the batch: this worker must not commit.
    #[error("fencing token {mine} was superseded; another worker owns batch {batch_no} now")]
    Stale { batch_no: u32, mine: i64 },
    /// The Redis lease expired under us (heartbeats failed or the process stalled).
    #[error("lost the lease of batch {0} before committing")]
    LeaseLost(u32),
}

pub(crate) type Result<T, E = BatchError> = std::result::Result<T, E>;

impl BatchError {
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Service { failure, .. } => failure.is_transient(),
            Self::NotYet(_) => true,
            Self::Permanent(_) | Self::Stale { .. } | Self::LeaseLost(_) => false,
        }
    }

    /// A failed call, with what the worker was doing.
    pub(crate) fn service(context: &str, failure: impl Into<ServiceFailure>) -> Self {
        Self::Service {
            context: context.to_owned(),
            failure: failure.into(),
        }
    }

    /// A failed warehouse statement, with what it was for.
    pub(crate) fn from_sql(context: &str, e: sqlx::Error) -> Self {
        Self::service(context, e)
    }
}

impl From<ControlError> for BatchError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Sql(inner) => Self::service("control plane", inner),
            other => Self::Permanent(other.to_string()),
        }
    }
}

impl From<GateError> for BatchError {
    fn from(e: GateError) -> Self {
        match e {
            GateError::Redis(e) => e.into(),
            GateError::Control(e) => e.into(),
        }
    }
}

impl From<redis::RedisError> for BatchError {
    fn from(e: redis::RedisError) -> Self {
        Self::service("lease or idempotency key", e)
    }
}

impl From<lapin::Error> for BatchError {
    fn from(e: lapin::Error) -> Self {
        Self::service("broker", e)
    }
}

impl From<PublishError> for BatchError {
    fn from(e: PublishError) -> Self {
        Self::service("publishing", e)
    }
}
