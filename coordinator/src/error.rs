//! The CLI's errors and their exit codes: 1 a run halted or failed validation,
//! 2 bad input (brief, arguments), 3 an unreachable service.

use backfill_shared::control::ControlError;
use backfill_shared::failure::ServiceFailure;
use backfill_shared::services::ServiceError;
use backfill_shared::topology::PublishError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The brief or the arguments are wrong; nothing was changed.
    #[error("{0}")]
    BadInput(String),
    /// No such run (or other thing a command names); nothing was changed.
    #[error("{0}")]
    NotFound(String),
    /// Not this person's to do (not the run's owner or reviewer, a role
    /// mapped to nobody, a privilege the warehouse refused); nothing was
    /// changed.
    #[error("{0}")]
    NotAllowed(String),
    /// Not in the run's state (approving a run still running, cutting over
    /// one not approved); nothing was changed.
    #[error("{0}")]
    WrongState(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A call to the warehouse, the broker or Redis failed. Transient failures (a
    /// lost connection, a broker restart) are retried by the driver and are exit
    /// code 3 elsewhere; permanent ones (a refused declare, a failing statement) 1.
    #[error("{}", describe(.0))]
    Call(ServiceFailure),
    /// A service went away mid-run without an error to show for it (the broker
    /// closed the event stream, a reconnect failed): the driver reconnects.
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
            Self::Call(failure) if !failure.is_transient() => 1,
            Self::BadInput(_) | Self::NotFound(_) | Self::NotAllowed(_) | Self::WrongState(_) => 2,
            Self::Service(_) | Self::Unavailable(_) | Self::Call(_) => 3,
            Self::Interrupted { code, .. } => *code,
        }
    }
}

impl CliError {
    /// What kind of failure, for a script: `bad_input`, `not_found`,
    /// `not_allowed`, `wrong_state`, `service`, `call`, `unavailable`,
    /// `halted`, `internal` or `interrupted`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadInput(_) => "bad_input",
            Self::NotFound(_) => "not_found",
            Self::NotAllowed(_) => "not_allowed",
            Self::WrongState(_) => "wrong_state",
            Self::Service(_) => "service",
            Self::Call(_) => "call",
            Self::Unavailable(_) => "unavailable",
            Self::Halted(_) => "halted",
            Self::Internal(_) => "internal",
            Self::Interrupted { .. } => "interrupted",
        }
    }

    /// A failure the caller may retry once the service is back.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Call(failure) => failure.is_transient(),
            Self::Unavailable(_) => true,
            _ => false,
        }
    }
}

impl From<ControlError> for CliError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::UnknownRun(_) => Self::NotFound(e.to_string()),
            ControlError::ActiveRun { .. } => Self::WrongState(e.to_string()),
            ControlError::Refused(_) => Self::BadInput(e.to_string()),
            ControlError::Sql(e) => e.into(),
            ControlError::Busy(why) => Self::Unavailable(why),
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
        match &e {
            // Not this role's to do (a privilege, or the two-person rule).
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
                Self::NotAllowed(format!(
                    "refused by the warehouse: {} (the roles and what each may do: deploy/roles.sql)",
                    db.message()
                ))
            }
            _ => Self::Call(e.into()),
        }
    }
}

impl From<lapin::Error> for CliError {
    fn from(e: lapin::Error) -> Self {
        Self::Call(e.into())
    }
}

impl From<PublishError> for CliError {
    fn from(e: PublishError) -> Self {
        Self::Call(e.into())
    }
}

impl From<redis::RedisError> for CliError {
    fn from(e: redis::RedisError) -> Self {
        Self::Call(e.into())
    }
}

/// The warehouse's errors say whether the connection went or the statement failed.
fn describe(failure: &ServiceFailure) -> String {
    match failure {
        ServiceFailure::Warehouse(e) if failure.is_connection_loss() => {
            format!("lost the warehouse connection: {e}")
        }
        ServiceFailure::Warehouse(e) => format!("warehouse query failed: {e}"),
        other => other.to_string(),
    }
}
