//! Typed errors of the publisher and the exit code each maps to.
//!
//! The codes are part of the CLI contract (README, "Exit codes"): 2 usage, 3 broker unreachable,
//! 4 broker refused the connection, 99 a threshold failed, 1 anything else. Interrupted runs exit 130/143 and are not
//! errors: they come from the report.

use std::process::ExitCode;

/// Everything that ends a run early or makes it unsuccessful.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags, config file or environment: the message says what to change.
    #[error("{0}")]
    Usage(String),
    /// No MQTT connection could be opened (refused, DNS, timeout).
    #[error("cannot reach broker {broker}: {reason}")]
    Unreachable { broker: String, reason: String },
    /// A database (job-pub's, backend-sub's sink) could not be reached or was lost for
    /// longer than the tool's timeout: exit 3, as an unreachable broker.
    #[error("cannot reach database {database}: {reason}")]
    DatabaseUnreachable { database: String, reason: String },
    /// The broker answered CONNECT with a refusal.
    #[error("broker {broker} refused the connection: {reason}")]
    Refused { broker: String, reason: String },
    /// The run happened but did not deliver everything (lost connection, missing acks).
    #[error("{0}")]
    Incomplete(String),
    /// The run went through, and a `--threshold` failed: exit 99 (k6's code).
    #[error("{0}")]
    Thresholds(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Unreachable { .. } | Error::DatabaseUnreachable { .. } => 3,
            Error::Refused { .. } => 4,
            Error::Thresholds(_) => 99,
            Error::Incomplete(_) | Error::Other(_) => 1,
        }
    }
}

impl From<&Error> for ExitCode {
    fn from(e: &Error) -> Self {
        ExitCode::from(e.exit_code())
    }
}
