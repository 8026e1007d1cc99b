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
//!   [`stop`]: when a run ends (`--until-empty`'s horizon, `--duration`); [`progress`]:
//!   the line on stderr; [`report`]: what a run did; [`summary`]: what `--report-md` shows
//!   of it; [`observe`]: its live metrics (`--metrics-addr`).
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
pub mod observe;
pub mod progress;
pub mod publish;
pub mod report;
pub mod run;
pub mod seed;
pub mod stop;
pub mod summary;

/// The migration `job-pub migrate` applies.
pub const SCHEMA: &str = include_str!("schema.sql");

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use mqtt_tool::config::ParseExit;

/// What distinguishes `loadgen jobs` from `job-pub`: the name its help and errors show.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    /// The examples at the end of `--help` (each line that starts with the tool's name is a
    /// command, parsed by a test).
    pub examples: &'static str,
}

/// `loadgen jobs`.
pub const LOADGEN_JOBS: Preset = Preset {
    name: "loadgen jobs",
    examples:
        "Examples (the database password from PGPASSWORD; DATABASE_URL works for --database-url):
  loadgen jobs migrate --database-url postgres://loadgen@127.0.0.1:5432/loadgen
  # 10,000 jobs falling due over the next minute
  loadgen jobs seed --database-url postgres://loadgen@127.0.0.1:5432/loadgen \\
      --count 10k --fire-in 0s..60s
  # publish them as they fall due, then exit
  loadgen jobs run --database-url postgres://loadgen@127.0.0.1:5432/loadgen \\
      --broker mqtt://127.0.0.1:1883 --until-empty --report-json jobs.json",
};

/// `job-pub`: the seed's name for `loadgen jobs`.
pub const JOB_PUB: Preset = Preset {
    name: "job-pub",
    examples:
        "Examples (the database password from PGPASSWORD; DATABASE_URL works for --database-url):
  job-pub migrate --database-url postgres://loadgen@127.0.0.1:5432/loadgen
  # 10,000 jobs falling due over the next minute
  job-pub seed --database-url postgres://loadgen@127.0.0.1:5432/loadgen \\
      --count 10k --fire-in 0s..60s
  # publish them as they fall due, then exit
  job-pub run --database-url postgres://loadgen@127.0.0.1:5432/loadgen \\
      --broker mqtt://127.0.0.1:1883 --until-empty --report-json jobs.json",
};

/// The clap command of `preset`: [`args::Cli`] under the preset's name, every flag with its
/// `LOADGEN_<FLAG>` variable, and `run --broker` shown as required (jobs published to an
/// embedded broker reach nobody).
pub fn command(preset: &Preset) -> clap::Command {
    let env = mqtt_tool::cli::env_help(&args::Cli::command());
    let cmd = args::Cli::command()
        .name(preset.name)
        .bin_name(preset.name)
        .after_help(format!(
            "{}\n\n{}\n\n{}",
            preset.examples,
            env,
            args::exit_codes()
        ))
        .mut_subcommands(|sub| {
            let env = mqtt_tool::cli::env_help(&sub);
            sub.after_help(format!("{}\n\n{}", env, args::exit_codes()))
        })
        .mut_subcommand("run", |run| {
            mqtt_tool::cli::threshold_help(
                run,
                &report::threshold_fields(),
                &["jobs_failed==0", "lateness_p99<100ms"],
            )
            // No TLS yet (the plan refuses mqtts://): its flags stay out of the help and read
            // no variable (a LOADGEN_CA_FILE meant for a publisher is named as not this
            // tool's, not taken and refused).
            .mut_arg("ca_file", |a| a.hide(true).env(None::<&str>))
            .mut_arg("cert", |a| a.hide(true).env(None::<&str>))
            .mut_arg("key", |a| a.hide(true).env(None::<&str>))
            .mut_arg("insecure", |a| a.hide(true).env(None::<&str>))
            // No embedded broker either (see --broker).
            .mut_arg("embedded_port", |a| a.hide(true).env(None::<&str>))
            .mut_arg("embedded_linger", |a| a.hide(true).env(None::<&str>))
            .mut_arg("max_packet_size", |a| {
                a.help("Largest MQTT packet sent or accepted (accepts 10k, 4M) [default: 1 MiB]")
            })
            .mut_arg("client_id", |a| {
                a.help(
                    "MQTT client id [default: job-pub-<host>-<pid>-<hex>, unique per instance, \
                     also its name in claimed_by]",
                )
            })
            .mut_arg("broker", |a| {
                // `auto` stays the value behind the scenes, refused by the plan with a message
                // that says why; help shows no default.
                a.hide_default_value(true).help(
                    "Broker: mqtt://host:port or host:port (required: jobs published to an \
                     embedded broker, as `auto` gives the load generators, would reach nobody)",
                )
            })
        });
    mqtt_tool::cli::with_env_scheme(cmd)
}

/// Parses `argv` (the program's name first) for `preset` into a plan.
pub fn parse_plan(preset: &Preset, argv: Vec<std::ffi::OsString>) -> Result<args::Plan, ParseExit> {
    let m = mqtt_tool::config::matches(command(preset), argv)?;
    let from_env = args::url_from_env(&m);
    let cli = args::Cli::from_arg_matches(&m).map_err(|e| ParseExit::Usage(e.to_string()))?;
    args::Plan::from_cli(cli, from_env).map_err(|e| ParseExit::Usage(e.to_string()))
}

static TOOL_NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// The name this process runs under (`job-pub` or `loadgen jobs`), for messages that tell
/// the user a command to run.
pub fn tool_name() -> &'static str {
    TOOL_NAME.get().copied().unwrap_or(JOB_PUB.name)
}

/// `job-pub` or `loadgen jobs`: parse, run, exit code.
pub fn main(preset: Preset) -> ExitCode {
    main_with_args(preset, std::env::args_os().collect())
}

/// [`main`] with the arguments given (the program's name first).
pub fn main_with_args(preset: Preset, argv: Vec<std::ffi::OsString>) -> ExitCode {
    let _ = TOOL_NAME.set(preset.name);
    mqtt_tool::run_main(
        move || {
            mqtt_tool::cli::warn_environment(
                &command(&preset),
                &[mqtt_tool::cli::DATABASE_URL, mqtt_tool::cli::JOB_PUB_NAMES],
                &argv,
            );
            parse_plan(&preset, argv)
        },
        "finishing the batch in flight, then reporting",
        |plan, shutdown| async move { run::main(plan, shutdown).await },
    )
}
