//! job-pub's subcommands and flags, checked into a typed [`Plan`] before anything runs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mqtt_tool::args::{parse_count, parse_duration, ConnectionArgs, ExportArgs, MetricsArgs};
use mqtt_tool::Error;

/// What each exit code of job-pub (`loadgen jobs`) means.
pub fn exit_codes() -> String {
    mqtt_tool::error::exit_codes_help(&[
        ("0", "done"),
        (
            "1",
            "jobs failed, rejected, given up or unreadable, or another failure",
        ),
        ("2", "usage (a table it cannot use, too)"),
        ("5", ""),
    ])
}

/// Scheduled jobs from PostgreSQL to MQTT: any number of instances, no job published twice
/// while they live, none lost when one dies.
#[derive(Debug, Parser)]
#[command(name = "job-pub", version)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create the jobs table if missing and add what job-pub needs (lease columns, an index)
    Migrate(DbArgs),
    /// Bulk-insert test jobs (COPY)
    Seed(SeedArgs),
    /// Claim due jobs, publish them, mark them processed; until stopped (or --until-empty,
    /// --duration)
    Run(Box<RunArgs>),
}

/// Where the jobs are.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Database")]
pub struct DbArgs {
    /// postgres://USER@HOST:PORT/DB (or the DATABASE_URL variable, as libpq users expect);
    /// the password from PGPASSWORD or --database-password-file (a password inside the URL
    /// only from a variable, never a flag)
    #[arg(long, value_name = "URL", hide_env_values = true)]
    pub database_url: String,

    /// File whose first line is the database password
    #[arg(long, value_name = "FILE")]
    pub database_password_file: Option<PathBuf>,

    /// The table of jobs
    #[arg(long, value_name = "NAME", default_value = "jobs")]
    pub table: String,

    /// Database connections in the pool
    #[arg(long, value_name = "N", default_value = "4", value_parser = parse_count)]
    pub pool: u64,
}

#[derive(Debug, Clone, Args)]
pub struct SeedArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Jobs to insert
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub count: u64,

    /// When they fire, spread evenly over MIN..MAX from now (`0s..60s`; negative for overdue:
    /// `-1h..-1h`)
    #[arg(long, value_name = "MIN..MAX", default_value = "0s..0s", value_parser = parse_offsets, allow_hyphen_values = true)]
    pub fire_in: (i64, i64),

    /// Topic of job i: `{i}` is its number (from 0)
    #[arg(long, value_name = "TEMPLATE", default_value = "job/{i}")]
    pub topic_template: String,

    /// Payload of job i: `{i}` is its number
    #[arg(long, value_name = "TEMPLATE", default_value = "{\"job\":{i}}")]
    pub payload_template: String,
}

/// How each job's id travels with its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JobIdMode {
    /// MQTT 5 user property `job_id` (the payload unchanged)
    Property,
    /// The payload wrapped: `{"job_id":N,"payload":"<the payload as a JSON string>"}`
    Wrapper,
    /// Not at all
    None,
}

/// MQTT QoS: the workspace's one type (job-pub runs 0, 1 and 2).
pub use mqtt_tool::args::Qos;

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// QoS of every publish: 1 by default (the publishers default to 0): a job is marked
    /// processed only once the broker acknowledged it (receipt, not delivery)
    #[arg(long, default_value = "1", help_heading = "Jobs",
          value_parser = mqtt_tool::args::qos_parser(Qos::ExactlyOnce))]
    pub qos: Qos,

    /// Jobs claimed at once (one claim, one publish burst, one completion)
    #[arg(long, value_name = "N", default_value = "1000", value_parser = parse_count, help_heading = "Jobs")]
    pub batch: u64,

    /// How often to look for due jobs when there were none
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = parse_duration, help_heading = "Jobs")]
    pub poll: Duration,

    /// How long a claim holds: a job claimed by an instance that died is claimed again once
    /// its lease has run out (longer than a batch takes to publish)
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, help_heading = "Jobs")]
    pub lease: Duration,

    /// Claim jobs due within this much ahead, and hold each until its fire_at
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = parse_duration, help_heading = "Jobs")]
    pub lookahead: Duration,

    /// A job published later than this after its fire_at counts as late
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration, help_heading = "Jobs")]
    pub late_after: Duration,

    /// Skip (mark processed without publishing, counted) jobs overdue by more than this
    /// [default: publish every overdue job]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Jobs")]
    pub max_lateness: Option<Duration>,

    /// Exit once nothing is left due within --horizon and every claimed job is done (for
    /// tests and batch use): jobs due seconds ahead are waited for [default: run until
    /// stopped]
    #[arg(long, help_heading = "Stop")]
    pub until_empty: bool,

    /// With --until-empty: wait for the jobs due up to this long after the run's start; the
    /// run ends once none is left (a job inserted while it runs and due within the horizon
    /// is published if the run has not ended yet; run for a fixed time: --duration)
    /// [default: up to the latest unprocessed fire_at in the table at the start]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Stop")]
    pub horizon: Option<Duration>,

    /// The furthest --until-empty waits: a table that also holds jobs due days ahead (a
    /// production schedule) must not keep a test run alive for days, and an hour covers a
    /// test's schedule. Jobs due later are left for later runs, counted in the report
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration, help_heading = "Stop")]
    pub max_horizon: Duration,

    /// End the run after this long, exit 0 (with --until-empty: whichever comes first). No
    /// job due later is claimed; the batch in flight is finished and counted
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Stop")]
    pub duration: Option<Duration>,

    /// Publish retained, as the seed publisher does
    #[arg(long, help_heading = "Jobs")]
    pub retain: bool,

    /// How each message carries its job id [default: property with MQTT 5, none with 3.1.1]
    #[arg(long, value_enum, help_heading = "Jobs")]
    pub job_id: Option<JobIdMode>,

    /// How long a batch may wait for its acknowledgements before its jobs count as failed
    /// (they stay unprocessed and are claimed again when their lease runs out)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, help_heading = "Jobs")]
    pub ack_timeout: Duration,

    /// Give up when the database stays unreachable this long
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration, help_heading = "Database")]
    pub db_timeout: Duration,

    #[command(flatten)]
    pub export: ExportArgs,

    /// `--metrics-addr`, `--metrics-linger`, `--metrics-push`, `--run-id`: as every tool's.
    #[command(flatten)]
    pub metrics: MetricsArgs,

    /// No progress lines on stderr
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_offsets(s: &str) -> Result<(i64, i64), String> {
    let one = |t: &str| -> Result<i64, String> {
        let t = t.trim();
        let (neg, body) = match t.strip_prefix('-') {
            Some(b) => (true, b),
            None => (false, t),
        };
        let d = parse_duration(body)?;
        let ms = i64::try_from(d.as_millis()).map_err(|_| format!("'{t}' is too long"))?;
        Ok(if neg { -ms } else { ms })
    };
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("'{s}' is not MIN..MAX; write e.g. 0s..60s"))?;
    let (a, b) = (one(a)?, one(b)?);
    if a > b {
        return Err(format!("'{s}': MIN is after MAX"));
    }
    Ok((a, b))
}

/// `--horizon` bounds `--until-empty`'s wait, within `--max-horizon`; `--duration` ends a run.
fn check_stop(r: &RunArgs) -> Result<(), Error> {
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if let Some(h) = r.horizon {
        if !r.until_empty {
            return Err(Error::usage(format!(
                "--horizon {} bounds how long --until-empty waits; add --until-empty (or end the run by the clock with --duration)",
                show(h)
            )));
        }
        if h > r.max_horizon {
            return Err(Error::usage(format!(
                "--horizon {} is beyond --max-horizon {}; raise --max-horizon",
                show(h),
                show(r.max_horizon)
            )));
        }
    }
    if r.duration == Some(Duration::ZERO) {
        return Err(Error::usage(
            "--duration 0s would end the run before it starts; give e.g. --duration 30s",
        ));
    }
    Ok(())
}

/// The database to use, checked.
#[derive(Debug, Clone)]
pub struct DbPlan {
    pub database: pg_tool::Database,
    pub table: String,
    pub pool: usize,
}

/// What the run does, checked.
#[derive(Debug, Clone)]
pub enum Plan {
    Migrate(DbPlan),
    Seed(DbPlan, SeedArgs),
    Run(Box<RunPlan>),
}

#[derive(Debug, Clone)]
pub struct RunPlan {
    pub db: DbPlan,
    pub connect: mqtt_tool::connect::ConnectPlan,
    pub qos: Qos,
    pub batch: usize,
    pub poll: Duration,
    pub lease: Duration,
    pub lookahead: Duration,
    pub late_after: Duration,
    pub max_lateness: Option<Duration>,
    pub until_empty: bool,
    /// `--horizon` (checked: with --until-empty, within --max-horizon).
    pub horizon: Option<Duration>,
    pub max_horizon: Duration,
    pub duration: Option<Duration>,
    pub retain: bool,
    pub job_id: JobIdMode,
    pub ack_timeout: Duration,
    pub db_timeout: Duration,
    pub exports: mqtt_tool::export::Exports,
    pub thresholds: Vec<mqtt_tool::threshold::Threshold>,
    pub quiet: bool,
    /// `--metrics-addr`, `--metrics-push`, `--metrics-linger`, `--run-id`.
    pub metrics: mqtt_tool::live::MetricsPlan,
}

/// Whether `--database-url` came from the `DATABASE_URL` variable (where a password may be).
pub fn url_from_env(m: &clap::ArgMatches) -> bool {
    // `DATABASE_URL` is read as `LOADGEN_DATABASE_URL` (mqtt_tool::cli::DATABASE_URL).
    let sub = m.subcommand().map(|(_, s)| s);
    sub.and_then(|s| s.value_source("database_url"))
        .is_some_and(|v| v == clap::parser::ValueSource::EnvVariable)
}

impl DbPlan {
    fn from_args(a: &DbArgs, url_from_env: bool) -> Result<DbPlan, Error> {
        let database = pg_tool::Database::from_url(
            &a.database_url,
            "--database-url",
            url_from_env,
            a.database_password_file.as_deref(),
            "--database-password-file",
        )?;
        pg_tool::check_table_name("--table", &a.table)?;
        if a.pool == 0 || a.pool > 64 {
            return Err(Error::usage("--pool must be from 1 to 64"));
        }
        Ok(DbPlan {
            database,
            table: a.table.clone(),
            pool: a.pool as usize,
        })
    }
}

impl Plan {
    pub fn from_cli(cli: Cli, url_from_env: bool) -> Result<Plan, Error> {
        match cli.cmd {
            Cmd::Migrate(db) => Ok(Plan::Migrate(DbPlan::from_args(&db, url_from_env)?)),
            Cmd::Seed(s) => {
                let db = DbPlan::from_args(&s.db, url_from_env)?;
                if s.count == 0 {
                    return Err(Error::usage("--count must be at least 1"));
                }
                // The jobs' topics differ only by their number: the first and the last
                // stand for every one.
                for i in [0, s.count - 1] {
                    let topic = s.topic_template.replace("{i}", &i.to_string());
                    if let Err(e) = mqtt_tool::topic::check_topic_name(&topic) {
                        return Err(Error::usage(format!(
                            "--topic-template makes the topic '{}', which {e}",
                            mqtt_tool::out::escape(&topic)
                        )));
                    }
                }
                Ok(Plan::Seed(db, s))
            }
            Cmd::Run(r) => {
                let r = *r;
                let mut db = DbPlan::from_args(&r.db, url_from_env)?;
                db.database = db.database.with_timeout_flag("--db-timeout");
                if r.batch == 0 || r.batch > 100_000 {
                    return Err(Error::usage("--batch must be from 1 to 100000"));
                }
                if r.lease < Duration::from_secs(1) {
                    return Err(Error::usage("--lease must be at least 1s"));
                }
                // A batch is held until its last job fires (at most --lookahead after the
                // claim), then waits at most --ack-timeout: all within its lease, or another
                // instance could claim it while this one still publishes it.
                if r.lookahead + r.ack_timeout >= r.lease {
                    return Err(Error::usage(format!(
                        "--lookahead {} plus --ack-timeout {} must be shorter than --lease {}: a batch still publishing when its lease ends may be published twice",
                        humantime::format_duration(r.lookahead),
                        humantime::format_duration(r.ack_timeout),
                        humantime::format_duration(r.lease)
                    )));
                }
                check_stop(&r)?;
                // Jobs published to a broker nobody else uses are gone: no falling back to an
                // embedded one, as the load generators do.
                if r.connection.broker == "auto" {
                    return Err(Error::usage(
                        "run needs --broker mqtt://HOST:PORT (or LOADGEN_BROKER): \
                         jobs published to an embedded broker would reach nobody",
                    ));
                }
                if mqtt_tool::connect::broker_uses_tls(&r.connection.broker) {
                    return Err(Error::usage(format!(
                        "{} does not speak TLS yet; give an mqtt:// broker",
                        crate::tool_name()
                    )));
                }
                let mqtt5 = r.connection.mqtt_version == mqtt_tool::args::MqttVersion::V5;
                let job_id = match (r.job_id, mqtt5) {
                    (Some(JobIdMode::Property), false) => {
                        return Err(Error::usage(
                            "--job-id property needs MQTT 5; add --mqtt-version 5 or use --job-id wrapper",
                        ))
                    }
                    (Some(m), _) => m,
                    (None, true) => JobIdMode::Property,
                    (None, false) => JobIdMode::None,
                };
                // Instances in containers all run as pid 1: the host and a random part keep
                // their client ids apart (a shared one would take sessions over in a loop).
                let connect = mqtt_tool::connect::connect_plan(
                    r.connection,
                    &crate::run::instance_name(),
                    1 << 20,
                    "a job's payload",
                )?;
                let exports = r.export.exports(None)?;
                let thresholds = mqtt_tool::threshold::parse_all(
                    &r.export.thresholds,
                    &crate::report::threshold_fields(),
                )?;
                Ok(Plan::Run(Box::new(RunPlan {
                    db,
                    connect,
                    qos: r.qos,
                    batch: r.batch as usize,
                    poll: r.poll.max(Duration::from_millis(1)),
                    lease: r.lease,
                    lookahead: r.lookahead,
                    late_after: r.late_after,
                    max_lateness: r.max_lateness,
                    until_empty: r.until_empty,
                    horizon: r.horizon,
                    max_horizon: r.max_horizon,
                    duration: r.duration,
                    retain: r.retain,
                    job_id,
                    ack_timeout: r.ack_timeout,
                    db_timeout: r.db_timeout,
                    exports,
                    thresholds,
                    quiet: r.quiet,
                    metrics: r.metrics.plan(None, r.quiet)?,
                })))
            }
        }
    }
}
