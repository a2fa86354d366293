//! What can go wrong with one batch, classified so the worker's decision is one
//! `match`: retry with backoff ([`BatchError::is_transient`]), or report the failure
//! and dead-letter the message.

use backfill_shared::control::ControlError;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A service hiccup (connection lost, deadlock, serialization failure): retried.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help: the source query fails, a constraint is violated, the
    /// source breaks the grain. Reported and dead-lettered; the run halts.
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
        matches!(self, Self::Transient(_))
    }

    /// Classifies a warehouse error: connection-class, resource and concurrency
    /// errors are transient; everything the statement itself got wrong is permanent.
    pub(crate) fn from_sql(context: &str, e: &sqlx::Error) -> Self {
        let text = format!("{context}: {e}");
        match e {
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                let transient = code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57")
                    || matches!(
                        code.as_ref(),
                        "40001" | "40P01" | "55P03" | "58000" | "58030"
                    );
                if transient {
                    Self::Transient(text)
                } else {
                    Self::Permanent(text)
                }
            }
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_) => Self::Transient(text),
            _ => Self::Permanent(text),
        }
    }
}

impl From<ControlError> for BatchError {
    fn from(e: ControlError) -> Self {
        match &e {
            ControlError::Sql(inner) => Self::from_sql("control plane", inner),
            _ => Self::Permanent(e.to_string()),
        }
    }
}

impl From<backfill_shared::gates::GateError> for BatchError {
    fn from(e: backfill_shared::gates::GateError) -> Self {
        match e {
            backfill_shared::gates::GateError::Redis(e) => e.into(),
            backfill_shared::gates::GateError::Control(e) => e.into(),
        }
    }
}

impl From<redis::RedisError> for BatchError {
    fn from(e: redis::RedisError) -> Self {
        Self::Transient(format!("redis: {e}"))
    }
}

impl From<lapin::Error> for BatchError {
    fn from(e: lapin::Error) -> Self {
        Self::Transient(format!("rabbitmq: {e}"))
    }
}
