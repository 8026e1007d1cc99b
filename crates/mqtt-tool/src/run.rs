//! The run frame every binary shares: logging, parsing (help and usage errors end here), a
//! single-threaded tokio runtime with signal handling, the tool's `run`, and the exit code of
//! its result. A binary's `main` is a call to [`run_main`] (or [`run_sync`], for a command
//! that needs neither a runtime nor signals, as `loadgen merge`).
//!
//! Every error a tool ends with is printed here, by [`print_error`]: one line, escaped, and
//! at most [`MAX_ERROR_LINE`] bytes, however long the list or the input it names.

use std::process::ExitCode;
use std::time::Duration;

use crate::config::ParseExit;
use crate::error::{code, Error};
use crate::out;
use crate::shutdown::Shutdown;

/// The frame every binary shares: logging, `parse` (help and usage errors exit here), a
/// single-threaded runtime with signal handling (`first_signal` says what the first SIGINT,
/// SIGTERM or SIGHUP does), `run`, and the exit code of its result.
pub fn run_main<P, Fut>(
    parse: impl FnOnce() -> Result<P, ParseExit>,
    first_signal: &'static str,
    run: impl FnOnce(P, Shutdown) -> Fut,
) -> ExitCode
where
    Fut: std::future::Future<Output = Result<ExitCode, Error>>,
{
    init_tracing();
    let plan = match parse() {
        Ok(p) => p,
        Err(ParseExit::Info(e)) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(ParseExit::Usage(msg)) => {
            print_error(&msg);
            return ExitCode::from(code::USAGE);
        }
    };
    // One thread: the producer and the connection driver hand messages to each other through
    // rumqttc's queue, and on two threads every hand-off risked a futex wake and lock
    // contention (S3: ~3 CPU s per million QoS 1 messages on two workers, ~2 on one), while
    // one core keeps up with the broker in every bench scenario. Many connections per
    // process will want more workers; that is a flag for then.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            print_error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(code::FAILURE);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = Shutdown::from_signals(first_signal)
            .map_err(|e| Error::failed("cannot install signal handlers", e))?;
        run(plan, shutdown).await
    });
    // Background tasks (progress, signals, the embedded broker) end with the process.
    runtime.shutdown_timeout(Duration::from_millis(100));
    exit_code(result)
}

/// The frame of a command that needs neither a runtime nor signal handling (a signal ends
/// it at once): logging, `parse` (help and usage errors exit here), `run`, and the exit code
/// of its result, its error printed as every tool's is.
pub fn run_sync<P>(
    parse: impl FnOnce() -> Result<P, ParseExit>,
    run: impl FnOnce(P) -> Result<ExitCode, Error>,
) -> ExitCode {
    init_tracing();
    match parse() {
        Ok(p) => exit_code(run(p)),
        Err(ParseExit::Info(e)) => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        Err(ParseExit::Usage(msg)) => {
            print_error(&msg);
            ExitCode::from(code::USAGE)
        }
    }
}

/// The exit code of a tool's result, its error printed.
fn exit_code(result: Result<ExitCode, Error>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            print_error(&e.to_string());
            ExitCode::from(e.exit_code())
        }
    }
}

/// The longest error line printed, in bytes: what builds a long message (a list of shards,
/// of thresholds) summarises it, and this cuts whatever still comes out longer (an input
/// echoed back).
pub const MAX_ERROR_LINE: usize = 2048;

/// Prints `error: {msg}` on stderr as one line of at most [`MAX_ERROR_LINE`] bytes.
pub fn print_error(msg: &str) {
    crate::errln!("{}", error_line(msg));
}

/// `error: {msg}`, control characters and line breaks escaped, cut to [`MAX_ERROR_LINE`]
/// bytes with a note of what was cut.
pub fn error_line(msg: &str) -> String {
    let line = format!("error: {}", out::escape(msg));
    bounded(line, MAX_ERROR_LINE)
}

/// `line` cut at a character boundary to at most `max` bytes, ending with how much was cut.
pub fn bounded(mut line: String, max: usize) -> String {
    if line.len() <= max {
        return line;
    }
    let note = |cut: usize| format!(" [... {cut} more bytes cut]");
    let mut keep = max.saturating_sub(note(line.len()).len());
    while !line.is_char_boundary(keep) {
        keep -= 1;
    }
    let cut = line.len() - keep;
    line.truncate(keep);
    line.push_str(&note(cut));
    line
}

/// Logs to stderr; `LOADGEN_LOG` takes an env-filter (default: warnings, rumqttd silent).
/// No colour codes (they are control sequences too), and every line goes through the same
/// escaping as the rest of the output ([`out::escape_keeping_lines`]).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOADGEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rumqttd=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(|| out::EscapingStderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_one_bounded_line() {
        let long = format!("thresholds failed: {}", "é".repeat(100_000));
        let line = error_line(&long);
        assert!(line.len() <= MAX_ERROR_LINE, "{}", line.len());
        assert!(line.starts_with("error: thresholds failed: é"), "{line}");
        assert!(line.ends_with("more bytes cut]"), "{line}");
        let two = error_line("first\nsecond\u{1b}[2J");
        assert_eq!(two, "error: first\\nsecond\\x1b[2J");
        assert_eq!(error_line("short"), "error: short");
    }
}
