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
    /// The run stopped on a failed batch or a breached limit.
    #[error("{0}")]
    Halted(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl CliError {
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Halted(_) | Self::Internal(_) => 1,
            Self::BadInput(_) => 2,
            Self::Service(_) => 3,
        }
    }
}

impl From<ControlError> for CliError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::ActiveRun { .. } | ControlError::UnknownRun(_) => {
                Self::BadInput(e.to_string())
            }
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
        Self::Internal(format!("warehouse query failed: {e}"))
    }
}

impl From<lapin::Error> for CliError {
    fn from(e: lapin::Error) -> Self {
        Self::Internal(format!("rabbitmq: {e}"))
    }
}
