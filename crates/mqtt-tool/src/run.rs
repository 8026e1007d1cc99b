//! The run frame every binary shares: logging, parsing (help and usage errors end here), a
//! single-threaded tokio runtime with signal handling, the tool's `run`, and the exit code of
//! its result. A binary's `main` is a call to [`run_main`].

use std::process::ExitCode;
use std::time::Duration;

use crate::config::ParseExit;
use crate::error::Error;
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
            crate::errln!("error: {msg}");
            return ExitCode::from(2);
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
            crate::errln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = Shutdown::from_signals(first_signal)
            .map_err(|e| Error::Other(format!("cannot install signal handlers: {e}")))?;
        run(plan, shutdown).await
    });
    // Background tasks (progress, signals, the embedded broker) end with the process.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(e) => {
            crate::errln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
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
