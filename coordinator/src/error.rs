//! The CLI's errors and their exit codes: 1 a run halted or failed validation,
//! 2 bad input (brief, arguments), 3 an unreachable service.

use backfill_shared::control::ControlError;
use backfill_shared::services::ServiceError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The brief or the arguments are wrong; nothing was changed.
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A service went away mid-run (a broker restart, a dropped warehouse
    /// connection): the driver reconnects; elsewhere it is exit code 3.
    #[error("{0}")]
    Unavailable(String),
    /// The run stopped on a failed batch or a breached limit.
    #[error("{0}")]
    Halted(String),
    #[error("{0}")]
    Internal(String),
    /// A signal stopped the command; `code` is the shell's for it (128 + signal).
    #[error("{message}")]
    Interrupted { message: String, code: u8 },
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl CliError {
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Halted(_) | Self::Internal(_) => 1,
            Self::BadInput(_) => 2,
            Self::Service(_) | Self::Unavailable(_) => 3,
            Self::Interrupted { code, .. } => *code,
        }
    }
}

impl CliError {
    /// A lost connection the caller may retry once the service is back.
    #[must_use]
    pub fn is_connection_loss(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<ControlError> for CliError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::ActiveRun { .. } | ControlError::UnknownRun(_) => {
                Self::BadInput(e.to_string())
            }
            ControlError::Sql(e) => e.into(),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<crate::preflight::PreflightError> for CliError {
    fn from(e: crate::preflight::PreflightError) -> Self {
        match e {
            crate::preflight::PreflightError::Problems(p) => Self::BadInput(p.to_string()),
            crate::preflight::PreflightError::Sql(e) => {
                Self::Internal(format!("catalog query failed: {e}"))
            }
        }
    }
}

impl From<sqlx::Error> for CliError {
    fn from(e: sqlx::Error) -> Self {
        let lost = match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => true,
            // admin_shutdown, crash_shutdown, cannot_connect_now, connection exceptions
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        };
        let denied =
            matches!(&e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42501"));
        if denied {
            // Not this role's to do (a privilege, or the two-person rule).
            let message = match &e {
                sqlx::Error::Database(db) => db.message().to_owned(),
                other => other.to_string(),
            };
            Self::BadInput(format!(
                "refused by the warehouse: {message} (the roles and what each may do: deploy/roles.sql)"
            ))
        } else if lost {
            Self::Unavailable(format!("lost the warehouse connection: {e}"))
        } else {
            Self::Internal(format!("warehouse query failed: {e}"))
        }
    }
}

impl From<lapin::Error> for CliError {
    fn from(e: lapin::Error) -> Self {
        Self::Unavailable(format!("rabbitmq: {e}"))
    }
}

impl From<redis::RedisError> for CliError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(format!("redis: {e}"))
    }
}
