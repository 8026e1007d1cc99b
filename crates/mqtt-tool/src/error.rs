//! Typed errors of every tool and the exit code each maps to.
//!
//! The codes are part of the CLI contract (`docs/exit-codes.md`), defined once in [`code`]:
//! [`Error::exit_code`] maps each error to one, [`EXIT_CODES`] says what each means (every
//! tool's `--help` through [`exit_codes_help`]; a test holds the docs' table to it).
//! Interrupted runs exit 129/130/143 and are not errors: they come from the report
//! ([`crate::shutdown::Signal::exit_code`]).

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
    /// A failure of this machine's resources (a file, a socket, a thread, the runtime), its
    /// cause kept: the line says `{what}: {cause}`, as it always did.
    #[error("{what}: {source}")]
    Failed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    /// `what` failed because of `source`, which stays reachable through
    /// [`std::error::Error::source`] (an `io::Error` keeps its kind).
    pub fn failed(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Failed {
            what: what.into(),
            source: Box::new(source),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => code::USAGE,
            Error::Unreachable { .. } | Error::DatabaseUnreachable { .. } => code::UNREACHABLE,
            Error::Refused { .. } | Error::DatabaseRefused { .. } => code::REFUSED,
            Error::Thresholds(_) => code::THRESHOLDS,
            Error::Incomplete(_) | Error::Failed { .. } | Error::Other(_) => code::FAILURE,
        }
    }
}

/// Every exit code but success and the signals' (128 + the signal's number), each named
/// once; [`EXIT_CODES`] says what each means.
pub mod code {
    /// Incomplete, or another failure.
    pub const FAILURE: u8 = 1;
    /// A flag, a variable or a file to change (help and usage errors of the parser too).
    pub const USAGE: u8 = 2;
    /// The broker (or the database) cannot be reached.
    pub const UNREACHABLE: u8 = 3;
    /// The broker (or the database) refused the connection.
    pub const REFUSED: u8 = 4;
    /// A subscriber's verification failed (`loadgen sub`, `loadgen merge` of its reports).
    pub const VERIFY_FAILED: u8 = 5;
    /// A `--threshold` failed, after the full report (k6's code).
    pub const THRESHOLDS: u8 = 99;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes of [`EXIT_CODES`], as the help and the docs write them.
    fn documented() -> Vec<String> {
        EXIT_CODES.iter().map(|(c, _)| c.to_string()).collect()
    }

    #[test]
    fn the_exit_code_table_names_every_code_the_errors_exit_with() {
        let errors = [
            Error::usage("x"),
            Error::Unreachable {
                broker: "b".into(),
                reason: "r".into(),
            },
            Error::Refused {
                broker: "b".into(),
                reason: "r".into(),
            },
            Error::Thresholds("t".into()),
            Error::Incomplete("i".into()),
        ];
        let table = documented();
        for e in &errors {
            assert!(
                table.contains(&e.exit_code().to_string()),
                "{e:?} exits {} which EXIT_CODES does not name",
                e.exit_code()
            );
        }
        assert!(table.contains(&code::VERIFY_FAILED.to_string()));
        let signals = [
            crate::shutdown::Signal::Hangup,
            crate::shutdown::Signal::Interrupt,
            crate::shutdown::Signal::Terminate,
        ]
        .map(|s| s.exit_code().to_string())
        .join("/");
        assert!(table.contains(&signals), "{signals}");
    }

    #[test]
    fn a_failure_keeps_its_cause_and_its_one_line_message() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let e = Error::failed("cannot write --report-json /r.json", io);
        assert_eq!(e.to_string(), "cannot write --report-json /r.json: denied");
        assert_eq!(e.exit_code(), code::FAILURE);
        let cause = std::error::Error::source(&e).expect("the cause is kept");
        let io = cause
            .downcast_ref::<std::io::Error>()
            .expect("as the io::Error it was");
        assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn the_docs_table_of_exit_codes_is_the_one_every_help_shows() {
        let docs = include_str!("../../../docs/exit-codes.md");
        let in_docs: Vec<String> = docs
            .lines()
            .filter_map(|l| l.strip_prefix("| "))
            .filter_map(|l| l.split(" |").next())
            .map(|c| c.replace(' ', ""))
            .filter(|c| c.starts_with(|ch: char| ch.is_ascii_digit()))
            .collect();
        assert_eq!(
            in_docs,
            documented(),
            "docs/exit-codes.md against EXIT_CODES"
        );
    }
}
