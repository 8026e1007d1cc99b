//! Typed errors of the publisher and the exit code each maps to.
//!
//! The codes are part of the CLI contract (README, "Exit codes"): 2 usage, 3 broker (or
//! database) unreachable, 4 broker (or database) refused the connection, 99 a threshold
//! failed, 1 anything else. Interrupted runs exit 130/143 and are not errors: they come from
//! the report.

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
    /// The broker answered CONNECT with a refusal.
    #[error("broker {broker} refused the connection: {reason}")]
    Refused { broker: String, reason: String },
    /// The database cannot be reached (refused, DNS, timeout), at the start or for longer
    /// than the tool waits through an outage.
    #[error("cannot reach database {database}: {reason}")]
    DatabaseUnreachable { database: String, reason: String },
    /// The database server refused the connection for good (authentication, a role or a
    /// database that does not exist, pg_hba.conf): the reason says what to change.
    #[error("database {database} refused the connection: {reason}")]
    DatabaseRefused { database: String, reason: String },
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
            Error::Refused { .. } | Error::DatabaseRefused { .. } => 4,
            Error::Thresholds(_) => 99,
            Error::Incomplete(_) | Error::Other(_) => 1,
        }
    }
}

/// What each exit code means, shared by every tool (`--help`, the docs): one table, each
/// tool saying only what its success, failure and verdict codes mean for it.
pub const EXIT_CODES: &[(&str, &str)] = &[
    ("0", "success"),
    ("1", "incomplete, or another failure"),
    ("2", "usage: a flag, a variable or a file to change"),
    ("3", "the broker (or the database) cannot be reached"),
    ("4", "the broker (or the database) refused the connection"),
    ("5", "the subscriber's verification failed"),
    ("99", "a --threshold failed (after the full report)"),
    ("129/130/143", "stopped by SIGHUP/SIGINT/SIGTERM"),
];

/// The "Exit codes:" paragraph of a tool's `--help`: [`EXIT_CODES`] with the tool's own
/// meanings in `own` (an empty meaning leaves a code out: a tool that never exits 5).
pub fn exit_codes_help(own: &[(&str, &str)]) -> String {
    let items: Vec<String> = EXIT_CODES
        .iter()
        .filter_map(|(code, general)| {
            let meaning = own
                .iter()
                .find(|(c, _)| c == code)
                .map_or(*general, |(_, m)| *m);
            (!meaning.is_empty()).then(|| format!("{code} {meaning}"))
        })
        .collect();
    format!("Exit codes: {}.", items.join(", "))
}

impl From<&Error> for ExitCode {
    fn from(e: &Error) -> Self {
        ExitCode::from(e.exit_code())
    }
}
