//! job-core: the scheduled-job publisher behind `job-pub`.
//!
//! Jobs wait in a PostgreSQL table (`jobs(id, topic, payload, fire_at, processed,
//! processed_at)`, the seed's, plus the lease columns of [`SCHEMA`]) until they fall due;
//! any number of instances publish them to MQTT, none twice while it lives:
//!
//! ```text
//! db (pool, reconnect) --claim: UPDATE .. FOR UPDATE SKIP LOCKED, a lease, committed at once
//!        ^                        |
//!        |                        v
//!        +-- complete: processed  <-- mqtt: publish the batch pipelined, await every ack
//! ```
//!
//! - [`args`]: the subcommands and their flags; [`db`]: connecting, the pool, the SQL.
//! - [`seed`]: test jobs by COPY; [`run`]: the claim-publish-complete loop; [`publish`]:
//!   one batch to the broker; [`link`]: the MQTT connection (rumqttc, 3.1.1 or 5);
//!   [`report`]: what a run did; [`summary`]: what `--report-md` shows of it.
//!
//! A crash (kill -9) leaves its claimed jobs leased: when the lease runs out another
//! instance claims them again and republishes them, counted as republished after their
//! lease expired (as are jobs left by a batch not acknowledged in time, or by a database
//! outage longer than the lease); so a crash republishes at most what was in flight, and each message carries its job id
//! (an MQTT 5 user property `job_id`, or with `--job-id wrapper` a JSON wrapper) so that
//! consumers can drop a redelivery.

pub mod args;
pub mod db;
pub mod link;
pub mod publish;
pub mod report;
pub mod run;
pub mod seed;
pub mod summary;

/// The migration `job-pub migrate` applies.
pub const SCHEMA: &str = include_str!("schema.sql");

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use mqtt_tool::config::ParseExit;

/// `job-pub`: parse, run, exit code.
pub fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    mqtt_tool::run_main(
        move || {
            let m = args::Cli::command()
                .try_get_matches_from(argv)
                .map_err(|e| {
                    if e.use_stderr() {
                        ParseExit::Usage(
                            e.to_string()
                                .lines()
                                .next()
                                .unwrap_or("")
                                .trim_start_matches("error: ")
                                .to_string(),
                        )
                    } else {
                        ParseExit::Info(e)
                    }
                })?;
            let from_env = args::url_from_env(&m);
            let cli =
                args::Cli::from_arg_matches(&m).map_err(|e| ParseExit::Usage(e.to_string()))?;
            args::Plan::from_cli(cli, from_env).map_err(|e| ParseExit::Usage(e.to_string()))
        },
        "finishing the batch in flight, then reporting",
        |plan, shutdown| async move { run::main(plan, shutdown).await },
    )
}
