//! One classifier of service failures for the coordinator and the workers: may
//! the same call succeed if retried later (a dropped connection, a broker restart,
//! a deadlock), or will it fail again (a bad statement, a refused password, a queue
//! declared with other arguments)? Errors keep their source; callers decide with
//! [`ServiceFailure::is_transient`] or a `match` on the variant.

use crate::topology::PublishError;

/// A call to the warehouse, the broker or the cache that failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceFailure {
    #[error("warehouse: {0}")]
    Warehouse(#[source] sqlx::Error),
    #[error("rabbitmq: {0}")]
    Broker(#[source] lapin::Error),
    /// The broker did not confirm a publish (a resource alarm, a queue limit).
    #[error("the broker refused (nacked) a message to {0}; it was not stored")]
    Nacked(String),
    /// The broker did not confirm a publish in time: blocked by a resource alarm.
    #[error("{0}")]
    Unconfirmed(PublishError),
    #[error("redis: {0}")]
    Cache(#[source] redis::RedisError),
}

impl ServiceFailure {
    /// Retrying later can succeed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Warehouse(e) => sql_is_transient(e),
            Self::Broker(e) => amqp_is_transient(e),
            Self::Nacked(_) | Self::Unconfirmed(_) => true,
            Self::Cache(e) => redis_is_transient(e),
        }
    }

    /// The connection itself is gone (as opposed to a statement that may be retried
    /// on it): what the CLI reports as an unreachable service.
    #[must_use]
    pub fn is_connection_loss(&self) -> bool {
        match self {
            Self::Warehouse(e) => sql_is_connection_loss(e),
            Self::Broker(e) => self.is_transient() && !e.is_amqp_soft_error(),
            Self::Nacked(_) | Self::Unconfirmed(_) => false,
            Self::Cache(e) => e.is_connection_dropped() || e.is_io_error(),
        }
    }
}

impl From<sqlx::Error> for ServiceFailure {
    fn from(e: sqlx::Error) -> Self {
        Self::Warehouse(e)
    }
}

impl From<lapin::Error> for ServiceFailure {
    fn from(e: lapin::Error) -> Self {
        Self::Broker(e)
    }
}

impl From<redis::RedisError> for ServiceFailure {
    fn from(e: redis::RedisError) -> Self {
        Self::Cache(e)
    }
}

impl From<PublishError> for ServiceFailure {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Amqp(e) => Self::Broker(e),
            PublishError::Nacked(to) => Self::Nacked(to),
            unconfirmed @ PublishError::Unconfirmed(_) => Self::Unconfirmed(unconfirmed),
        }
    }
}

/// Connection-class, resource and concurrency errors are transient; everything the
/// statement itself got wrong (syntax, a constraint, a privilege) is permanent.
#[must_use]
pub fn sql_is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08 connection exception, 53 insufficient resources, 57 operator
            // intervention (shutdown, cancel); serialization failure, deadlock,
            // lock not available, system and I/O errors.
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || matches!(
                    code.as_ref(),
                    "40001" | "40P01" | "55P03" | "58000" | "58030"
                )
        }
        _ => sql_is_connection_loss(e),
    }
}

/// The warehouse connection went away, or none could be had.
#[must_use]
pub fn sql_is_connection_loss(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_) => true,
        // connection exceptions; admin_shutdown, crash_shutdown, cannot_connect_now
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// A lost connection or channel, or a broker closing it under restart or resource
/// pressure, is transient; a refusal (`ACCESS_REFUSED`, `PRECONDITION_FAILED`,
/// `NOT_FOUND`) or a protocol mistake is permanent.
#[must_use]
pub fn amqp_is_transient(e: &lapin::Error) -> bool {
    use lapin::ErrorKind as K;
    use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
    match e.kind() {
        K::IOError(_)
        | K::InvalidChannel(_)
        | K::InvalidChannelState(..)
        | K::InvalidConnectionState(_)
        | K::MissingHeartbeatError => true,
        K::ProtocolError(amqp) => matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED)
                | AMQPErrorKind::Hard(
                    AMQPHardError::CONNECTIONFORCED
                        | AMQPHardError::RESOURCEERROR
                        | AMQPHardError::INTERNALERROR
                )
        ),
        _ => false,
    }
}

/// Dropped connections, timeouts and a server that is loading or busy are
/// transient; a refused password, a wrong type or a script error is permanent.
#[must_use]
pub fn redis_is_transient(e: &redis::RedisError) -> bool {
    e.kind() != redis::ErrorKind::AuthenticationFailed
        && !matches!(e.retry_method(), redis::RetryMethod::NoRetry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_refusals_are_permanent_and_lost_connections_transient() {
        let io: lapin::Error =
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset").into();
        assert!(amqp_is_transient(&io));
        assert!(ServiceFailure::from(io).is_connection_loss());
        let refused: lapin::Error =
            lapin::ErrorKind::ProtocolError(lapin::protocol::AMQPError::new(
                lapin::protocol::AMQPErrorKind::Soft(
                    lapin::protocol::AMQPSoftError::PRECONDITIONFAILED,
                ),
                "inequivalent arg 'x-queue-type'".into(),
            ))
            .into();
        assert!(!amqp_is_transient(&refused));
        let forced: lapin::Error =
            lapin::ErrorKind::ProtocolError(lapin::protocol::AMQPError::new(
                lapin::protocol::AMQPErrorKind::Hard(
                    lapin::protocol::AMQPHardError::CONNECTIONFORCED,
                ),
                "broker forced connection closure".into(),
            ))
            .into();
        assert!(amqp_is_transient(&forced));
    }

    #[test]
    fn a_refused_redis_password_is_permanent() {
        let auth = redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "WRONGPASS"));
        assert!(!redis_is_transient(&auth));
        let io = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert!(redis_is_transient(&io));
        assert!(ServiceFailure::from(io).is_connection_loss());
    }

    #[test]
    fn a_bad_statement_is_permanent_and_a_closed_pool_transient() {
        assert!(sql_is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!sql_is_transient(&sqlx::Error::RowNotFound));
        assert!(!sql_is_transient(&sqlx::Error::ColumnNotFound("x".into())));
    }
}
