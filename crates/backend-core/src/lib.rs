//! backend-core: the verifying backend behind `backend-sub`.
//!
//! ```text
//! args + config --> Plan --> broker/mqtt (mqtt-tool) --> receive: subscribe
//!     --> decode (our encoder's form directly, else simd-json) --> route (device -> frontend)
//!     --> verify (per-device seq ranges) --> report (text, JSON; summary: Markdown) --> exit code
//! ```
//!
//! [`pubverify`] runs the same receive path inside `loadgen pub --verify`.
//!
//! It shares the point definition with the publishers through `point-format`, and the
//! connection flags, broker handling and signals through `mqtt-tool`.

pub mod decode;
pub mod fleet_verify;
pub mod merge;
pub mod observe;
pub mod outage;
pub mod pubverify;
pub mod receive;
pub mod report;
pub mod route;
pub mod sink;
pub mod subfleet;
pub mod summary;
pub mod verify;

use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Command};
use mqtt_tool::args::{parse_count, parse_duration, ConnectionArgs, OutputArgs};
use mqtt_tool::config::{self, ParseExit};
use mqtt_tool::connect::{connect_plan, ConnectPlan, MQTT_MAX_PACKET};
use mqtt_tool::format::{fmt_int, fmt_time_left};
use mqtt_tool::frame::{Observer, RunFrame};
use mqtt_tool::shutdown::Shutdown;
use mqtt_tool::Error;
use tokio_util::sync::CancellationToken;

pub use report::Report;

/// Exit code when verification fails (the shared table's).
pub const EXIT_VERIFY_FAILED: u8 = mqtt_tool::error::code::VERIFY_FAILED;

/// backend-sub's default `--reconnect-backoff`: short and capped (the publishers' is
/// 100ms..10s), since what is published while it is away is missed.
pub const RECONNECT_BACKOFF: &str = "50ms..1s";

/// Every flag of the backend.
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// TOML file with flag values (keys are flag names; `route = ["dev=frontend1"]`);
    /// precedence: defaults < file < environment < command line
    #[arg(long, value_name = "FILE", env = "LOADGEN_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub connection: ConnectionArgs,

    #[command(flatten)]
    pub subscribe: SubscribeArgs,

    #[command(flatten)]
    pub verify: VerifyArgs,

    #[command(flatten)]
    pub reconnect: mqtt_tool::args::ReconnectArgs,

    #[command(flatten)]
    pub sink: SinkArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Sink")]
pub struct SinkArgs {
    /// Store every unique point in PostgreSQL: postgres://USER@HOST:PORT/DB (the password from
    /// PGPASSWORD or --sink-password-file; inside the URL only from the LOADGEN_SINK variable).
    /// A message is acknowledged once its points are stored
    #[arg(long, value_name = "URL", env = "LOADGEN_SINK", hide_env_values = true)]
    pub sink: Option<String>,

    /// File whose first line is the sink database's password
    #[arg(long, value_name = "FILE", env = "LOADGEN_SINK_PASSWORD_FILE")]
    pub sink_password_file: Option<std::path::PathBuf>,

    /// The table of points (device_id, seq, ts, value, temperature, humidity, received_at)
    #[arg(long, value_name = "NAME", default_value = "points")]
    pub sink_table: String,

    /// Create the table (and its index; a TimescaleDB hypertable when the extension is
    /// there) if missing, before subscribing
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub sink_migrate: bool,

    /// Database connections, each writing one COPY batch at a time
    #[arg(long, value_name = "N", default_value = "2", value_parser = parse_count)]
    pub sink_connections: u64,

    /// Rows per COPY batch at most (a batch is written sooner when a connection is idle);
    /// memory holds about 2 x --sink-connections + 1 batches of ~100 bytes a row
    #[arg(long, value_name = "ROWS", default_value = "10k", value_parser = parse_count)]
    pub sink_batch: u64,

    /// How long a batch is retried through a lost database before its rows count as failed
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub sink_timeout: Duration,
}

impl SinkArgs {
    /// The sink, checked; `url_from_env`: `--sink` came from `LOADGEN_SINK`.
    pub fn plan(&self, url_from_env: bool) -> Result<Option<sink::SinkPlan>, Error> {
        let Some(url) = &self.sink else {
            return Ok(None);
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(Error::usage(
                "--sink takes a PostgreSQL URL: postgres://USER@HOST:PORT/DB",
            ));
        }
        let database = pg_tool::Database::from_url(
            url,
            "--sink",
            url_from_env,
            self.sink_password_file.as_deref(),
            "--sink-password-file",
        )?;
        // Every wait of the sink for its database is bounded by --sink-timeout.
        let database = database.with_timeout_flag("--sink-timeout");
        pg_tool::check_table_name("--sink-table", &self.sink_table)?;
        if self.sink_connections == 0 || self.sink_connections > 64 {
            return Err(Error::usage("--sink-connections must be from 1 to 64"));
        }
        if self.sink_batch == 0 || self.sink_batch > 1_000_000 {
            return Err(Error::usage("--sink-batch must be from 1 to 1M rows"));
        }
        if self.sink_timeout.is_zero() {
            return Err(Error::usage("--sink-timeout must be longer than 0s"));
        }
        Ok(Some(sink::SinkPlan {
            database,
            table: self.sink_table.clone(),
            connections: self.sink_connections as usize,
            batch_rows: self.sink_batch as usize,
            timeout: self.sink_timeout,
            migrate: self.sink_migrate,
        }))
    }
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Subscription")]
pub struct SubscribeArgs {
    /// Topic filter to subscribe to (repeatable)
    #[arg(long = "topic", value_name = "FILTER", default_values_t = [String::from("device_data/#")])]
    pub topics: Vec<String>,

    /// QoS of the subscription: 1 by default (the publishers default to 0) so that the broker
    /// queues for this subscriber and acknowledges each message it hands over; 2 has each
    /// delivered exactly once (PUBREC, PUBREL, PUBCOMP), a resend before PUBREL not twice
    #[arg(long, value_name = "QOS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,

    /// Subscribe as `$share/NAME/<filter>` so several backends split the load; missing points
    /// are then not judged here (they went to the other members): merge the reports
    #[arg(long, value_name = "NAME")]
    pub share_group: Option<String>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Verification")]
pub struct VerifyArgs {
    /// Route a device to a frontend: DEVICE=FRONTEND (repeatable; wins over prefixes)
    #[arg(long = "route", value_name = "DEVICE=FRONTEND", value_parser = route::parse_pair)]
    pub routes: Vec<(String, String)>,

    /// Route devices whose id starts with PREFIX: PREFIX=FRONTEND (repeatable)
    #[arg(long = "route-prefix", value_name = "PREFIX=FRONTEND", value_parser = route::parse_pair)]
    pub route_prefixes: Vec<(String, String)>,

    /// Stop as soon as this many unique points arrived; each device's seqs are then expected
    /// from 0 (accepts 100k)
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub expect: Option<u64>,

    /// Stop when no message arrived for this long
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Stop when no message at all arrived this long after subscribing
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub first_message_timeout: Duration,

    /// Stop after this long
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Devices to track (each costs about 500 bytes plus twice its id; gaps of all devices share
    /// a pool of fixed size); points of further devices are counted as untracked and fail
    /// verification
    #[arg(long, value_name = "N", default_value = "100k", value_parser = parse_count)]
    pub max_devices: u64,

    /// At high message rates, let a read wait for bytes to gather for up to this long (a
    /// wakeup per batch, not per message, leaves the cores to the broker); end-to-end
    /// latencies are then late by up to this much, by nothing at low rates. 0s: read every
    /// byte as it comes
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = parse_duration)]
    pub read_hold: Duration,

    /// Accept duplicates in the verdict (they are still counted and reported): QoS 1 is
    /// at least once, and after a reconnect the broker and the publisher both resend what
    /// was not acknowledged
    #[arg(long)]
    pub at_least_once: bool,

    /// Accept in the verdict the points due while this backend was itself disconnected
    /// (still counted and listed, apart from those lost while it was connected): with a
    /// clean session the broker keeps nothing for it while it is away
    #[arg(long)]
    pub accept_disconnected: bool,

    /// List every device in the JSON report, and every frontend's device ids (default: the
    /// devices with a problem, at most 1,000, so that a fleet's report stays small)
    #[arg(long)]
    pub report_devices: bool,
}

/// A validated backend run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub connect: ConnectPlan,
    pub topics: Vec<String>,
    pub qos: u8,
    pub share_group: Option<String>,
    pub routes: Vec<(String, String)>,
    pub route_prefixes: Vec<(String, String)>,
    pub expect: Option<u64>,
    pub idle_timeout: Duration,
    pub first_message_timeout: Duration,
    pub duration: Option<Duration>,
    pub max_devices: usize,
    pub read_hold: Duration,
    pub at_least_once: bool,
    /// `--accept-disconnected`: points missed while disconnected pass the verdict.
    pub accept_disconnected: bool,
    /// Reconnect backoff (first, longest) and how long to try; `None`: `--reconnect false`.
    pub reconnect: Option<(Duration, Duration, Duration)>,
    pub clean_session: bool,
    pub session_expiry: Duration,
    pub report_json: Option<std::path::PathBuf>,
    pub exports: mqtt_tool::export::Exports,
    pub thresholds: Vec<mqtt_tool::threshold::Threshold>,
    pub hdr_log: Option<std::path::PathBuf>,
    /// `--metrics-addr`, `--metrics-push`, `--metrics-linger`, `--run-id`.
    pub metrics: mqtt_tool::live::MetricsPlan,
    /// `--metrics-addr`, `--metrics-push` or `--hdr-log`: the receive loop shares its latency histogram.
    pub live_histograms: bool,
    pub report_devices: bool,
    pub quiet: bool,
    /// `--sink`: where unique points are stored.
    pub sink: Option<sink::SinkPlan>,
}

impl Plan {
    pub fn from_args(a: BackendArgs) -> Result<Plan, Error> {
        Plan::from_args_env(a, false)
    }

    /// `sink_url_from_env`: `--sink` came from `LOADGEN_SINK`, where a password may be.
    pub fn from_args_env(a: BackendArgs, sink_url_from_env: bool) -> Result<Plan, Error> {
        let sink = a.sink.plan(sink_url_from_env)?;
        let explicit_limit = a.connection.max_packet_size.is_some();
        let mut connect = connect_plan(
            a.connection,
            // Unique per instance: containers all run as pid 1, and two backends with one
            // client id would take the session from each other in turn.
            &mqtt_tool::connect::instance_client_id("backend-sub"),
            0,
            "--topic",
        )?;
        if !explicit_limit {
            // Accept whatever a publisher may send.
            connect.max_packet_size = MQTT_MAX_PACKET as usize;
        }
        for t in &a.subscribe.topics {
            check_filter(t)?;
        }
        if let Some(g) = &a.subscribe.share_group {
            if g.is_empty() || g.contains(['/', '+', '#']) {
                return Err(Error::usage(format!(
                    "--share-group '{g}' must be a name without '/', '+' or '#'"
                )));
            }
        }
        if a.subscribe.share_group.is_some() && a.verify.expect.is_some() {
            return Err(Error::usage(
                "--expect counts one backend's points, but a share group splits them between members: \
                 drop --expect and stop with --idle-timeout or --duration, then add the members' reports",
            ));
        }
        let exports = a.output.export.exports(None)?;
        let thresholds = mqtt_tool::threshold::parse_all(
            &a.output.export.thresholds,
            &report::threshold_fields(),
        )?;
        if let Some(p) = &a.output.hdr_log {
            mqtt_tool::out::check_export_path("--hdr-log", p)?;
            if p.as_os_str() == "-" {
                return Err(Error::usage("--hdr-log needs a file path, not -"));
            }
        }
        if a.verify.max_devices == 0 {
            return Err(Error::usage("--max-devices must be at least 1"));
        }
        if a.verify.idle_timeout.is_zero() {
            return Err(Error::usage("--idle-timeout must be longer than 0s"));
        }
        if a.verify.duration == Some(Duration::ZERO) {
            return Err(Error::usage("--duration must be longer than 0s"));
        }
        if a.verify.first_message_timeout.is_zero() {
            return Err(Error::usage(
                "--first-message-timeout must be longer than 0s",
            ));
        }
        Ok(Plan {
            connect,
            topics: a.subscribe.topics,
            qos: a.subscribe.qos,
            share_group: a.subscribe.share_group,
            routes: a.verify.routes,
            route_prefixes: a.verify.route_prefixes,
            expect: a.verify.expect,
            idle_timeout: a.verify.idle_timeout,
            first_message_timeout: a.verify.first_message_timeout,
            duration: a.verify.duration,
            max_devices: usize::try_from(a.verify.max_devices).unwrap_or(usize::MAX),
            read_hold: a.verify.read_hold,
            at_least_once: a.verify.at_least_once,
            accept_disconnected: a.verify.accept_disconnected,
            reconnect: a.reconnect.reconnect.then_some((
                a.reconnect.reconnect_backoff.0,
                a.reconnect.reconnect_backoff.1,
                a.reconnect.reconnect_timeout,
            )),
            clean_session: a.reconnect.clean_session,
            session_expiry: a.reconnect.session_expiry,
            report_json: exports.json.clone(),
            exports,
            thresholds,
            live_histograms: a.output.hdr_log.is_some()
                || a.output.metrics.metrics_addr.is_some()
                || a.output.metrics.metrics_push.is_some(),
            hdr_log: a.output.hdr_log,
            metrics: a.output.metrics.plan(None, a.output.quiet)?,
            report_devices: a.verify.report_devices,
            quiet: a.output.quiet,
            sink,
        })
    }

    /// The filters as subscribed, with the share-group prefix.
    pub fn filters(&self) -> Vec<String> {
        self.topics
            .iter()
            .map(|t| match &self.share_group {
                Some(g) => format!("$share/{g}/{t}"),
                None => t.clone(),
            })
            .collect()
    }
}

/// Checks a subscription filter against MQTT's rules (3.1.1 section 4.7), so that a bad one
/// is a usage error naming the rule rather than a failed subscription.
pub fn check_filter(t: &str) -> Result<(), Error> {
    let bad = |rule: &str| {
        Err(Error::usage(format!(
            "--topic '{}' is not a valid topic filter: {rule}",
            mqtt_tool::out::escape(t)
        )))
    };
    if t.is_empty() {
        return bad("it is empty; use e.g. device_data/#");
    }
    if t.starts_with("$share/") {
        return bad("for a shared subscription give the plain filter and --share-group NAME");
    }
    if t.contains('\0') {
        return bad("it contains a NUL character");
    }
    if t.len() > u16::MAX as usize {
        return bad("it is longer than MQTT allows (65535 bytes)");
    }
    let levels: Vec<&str> = t.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return bad("'#' must be a whole level and the last one (a/#), as in device_data/#");
        }
        if level.contains('+') && *level != "+" {
            return bad("'+' must be a whole level (a/+/b), as in device_data/+");
        }
    }
    Ok(())
}

/// What distinguishes `loadgen sub` from `backend-sub`: the name and the seed's routes.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    /// The default `--route-prefix`es: backend-sub routes the seed's two frontends.
    pub route_prefixes: &'static [&'static str],
    /// The examples at the end of `--help` (each line that starts with the tool's name is a
    /// command, parsed by a test).
    pub examples: &'static str,
}

/// `loadgen sub`: the verifying subscriber, no routes unless asked.
pub const LOADGEN_SUB: Preset = Preset {
    name: "loadgen sub",
    about: "Subscribes to device data, decodes both point formats and proves that every point arrived, once, per device",
    route_prefixes: &[],
    examples: "Examples:
  # prove the delivery of 1,000 devices x 600 points (a loadgen pub run of 60 s at 10 points/s each)
  loadgen sub --broker mqtt://127.0.0.1:1883 --expect 600k --report-json sub.json
  # a CI gate on delivery and end-to-end latency, with a Markdown summary
  loadgen sub --broker mqtt://127.0.0.1:1883 --expect 100k \\
      --threshold 'points_missing==0' --threshold 'e2e_latency_p99<100ms' --report-md sub.md
  # store every unique point in PostgreSQL (the password from PGPASSWORD)
  loadgen sub --broker mqtt://127.0.0.1:1883 --expect 100k \\
      --sink postgres://loadgen@127.0.0.1:5432/loadgen
  # a subscriber fleet on the engine's workers, each subscriber proving every point of 1,000
  # devices (its own flags: loadgen sub --clients 1 --help)
  loadgen sub --broker mqtt://127.0.0.1:1883 --clients 1000 --expect-per-client 600k",
};

/// `backend-sub`: `loadgen sub` with the seed's routes (devices starting with `frontend1`
/// to frontend1, `frontend2` to frontend2).
pub const BACKEND_SUB: Preset = Preset {
    name: "backend-sub",
    about: "Subscribes to device data, decodes both point formats, routes points per device to frontends and proves delivery",
    route_prefixes: &["frontend1=frontend1", "frontend2=frontend2"],
    examples: "Examples:
  # the seed's backend: both frontends' 100,000 points each, routed and verified
  backend-sub --broker mqtt://127.0.0.1:1883 --expect 200k
  # the report as JSON on stdout, the summary on stderr
  backend-sub --broker mqtt://127.0.0.1:1883 --expect 200k --report-json -",
};

pub fn command(preset: &Preset) -> Command {
    let routes = if preset.route_prefixes.is_empty() {
        "none".to_string()
    } else {
        preset.route_prefixes.join(", ")
    };
    let env = mqtt_tool::cli::env_help(&BackendArgs::augment_args(Command::new(preset.name)));
    let cmd =
        BackendArgs::augment_args(Command::new(preset.name).version(env!("CARGO_PKG_VERSION")))
            // A clean-session subscriber misses what is published while it is away (the broker
            // queues nothing for it): it comes back fast, and often, not after 10 s.
            .mut_arg("reconnect_backoff", |a| {
                a.default_value(RECONNECT_BACKOFF).help(
                    "The first and the longest wait between reconnect attempts, MIN..MAX; shorter \
                 than the publishers' 100ms..10s because what is published while a subscriber \
                 is away is missed: it comes back fast",
                )
            })
            .mut_arg("route_prefixes", |a| {
                a.default_values(preset.route_prefixes.iter().copied())
                    .help(format!(
                        "Route devices whose id starts with PREFIX: PREFIX=FRONTEND (repeatable) \
                     [default: {routes}]"
                    ))
            })
            .mut_arg("client_id", |a| {
                a.help(
                    "MQTT client id [default: backend-sub-<host>-<pid>-<hex>, unique per \
                     process, so that two subscribers never take each other's session; a fixed \
                     id that another client takes over is named and fails the run]",
                )
            })
            .about(preset.about)
            .after_help(format!(
                "{}\n\n{}\n\n{} SIGUSR1 prints progress.",
                preset.examples,
                env,
                mqtt_tool::error::exit_codes_help(&[
                    ("0", "every point arrived exactly once"),
                    ("3", "the broker (or the --sink database) cannot be reached"),
                    (
                        "4",
                        "the broker (or the --sink database) refused the connection"
                    ),
                    (
                        "5",
                        "verification failed: points missing, duplicated or unverifiable"
                    ),
                ])
            ));
    let cmd = mqtt_tool::cli::threshold_help(
        cmd,
        &report::threshold_fields(),
        &[
            "points_missing==0",
            "e2e_latency_p99<100ms",
            "point_rate>=9900",
        ],
    );
    mqtt_tool::cli::with_env_scheme(cmd)
}

/// Parses `argv` (the program's name first) for `preset` into a plan.
pub fn parse_plan(preset: &Preset, argv: Vec<std::ffi::OsString>) -> Result<Plan, ParseExit> {
    let (a, sources) = config::parse_layered_sourced::<BackendArgs>(command(preset), argv)?;
    let sink_from_env = sources.off_command_line("sink");
    Plan::from_args_env(a, sink_from_env)
        .map_err(|e| ParseExit::Usage(sources.annotate(&e.to_string())))
}

/// The whole backend program: parse, receive, report, exit code.
pub fn main(preset: Preset) -> ExitCode {
    main_with_args(preset, std::env::args_os().collect())
}

/// [`main`] with the arguments given (the program's name first): `loadgen sub` passes its
/// subcommand's.
pub fn main_with_args(preset: Preset, argv: Vec<std::ffi::OsString>) -> ExitCode {
    let name = preset.name;
    mqtt_tool::run_main(
        move || {
            mqtt_tool::cli::warn_environment(&command(&preset), &[], &argv);
            parse_plan(&preset, argv)
        },
        "stopping, writing the report",
        |plan, shutdown| async move { run(name, &plan, &shutdown).await },
    )
}

/// Receives, prints the report and returns the exit code.
pub async fn run(name: &'static str, plan: &Plan, shutdown: &Shutdown) -> Result<ExitCode, Error> {
    // Metrics are served from before connecting to the end of the run, and then for
    // --metrics-linger, the final figures.
    let live = Arc::new(receive::Live::default());
    let families: mqtt_tool::metrics::Families = {
        let live = live.clone();
        Arc::new(move |e| observe::exposition(e, name, &live))
    };
    let mut frame = RunFrame::open(
        plan.metrics.clone(),
        plan.exports.clone(),
        plan.thresholds.clone(),
        families,
    )?;
    let result = run_framed(name, plan, shutdown, live, &mut frame).await;
    frame.close(result, shutdown).await
}

async fn run_framed(
    name: &'static str,
    plan: &Plan,
    shutdown: &Shutdown,
    live: Arc<receive::Live>,
    frame: &mut RunFrame,
) -> Result<ExitCode, Error> {
    let target = frame.broker(&plan.connect).await?;
    // The database first: a sink that cannot store is an error before anything is received.
    let sink = match &plan.sink {
        Some(p) => {
            let started = tokio::select! {
                s = sink::Sink::start(p.clone()) => Some(s?),
                _ = shutdown.stop.cancelled() => None,
            };
            if started.is_some() && !plan.quiet {
                mqtt_tool::errln!(
                    "sink: storing unique points in {} table {} ({} connections)",
                    p.database.shown,
                    p.table,
                    p.connections
                );
                if plan.qos == 0 || plan.clean_session {
                    mqtt_tool::errln!(
                        "sink: note: {}, so what the broker holds unstored for this backend is gone if it stops; \
                         for storage that survives a restart use --qos 1 --clean-session false and a fixed --client-id",
                        if plan.qos == 0 { "QoS 0 has no acknowledgements" } else { "the session is clean" }
                    );
                }
            }
            started
        }
        None => None,
    };
    let connected = tokio::select! {
        c = mqtt_tool::session::Session::open_first(&plan.connect, &target, plan.clean_session, plan.session_expiry) => Some(c?),
        _ = shutdown.stop.cancelled() => None,
    };
    let rx = match connected {
        None => {
            let router = route::Router::new(&plan.routes, &plan.route_prefixes);
            let mut rx = receive::Received::new(&router);
            rx.stop = receive::Stop::Signal;
            rx.connecting_interrupted = true;
            if let Some(s) = sink {
                rx.sink = Some(s.finish(&shutdown.abort).await.1);
            }
            rx
        }
        Some(session) => {
            let log = match &plan.hdr_log {
                Some(p) => Some(mqtt_tool::hist::CumulativeLog::create(
                    p,
                    std::time::Instant::now(),
                    &format!(
                        "{name} {}: end-to-end latency in microseconds, tag e2e",
                        env!("CARGO_PKG_VERSION")
                    ),
                )?),
                None => None,
            };
            let watcher = Observer::spawn(|stop| observe::watch(live.clone(), log, stop));
            let progress = Observer::spawn(|stop| {
                progress(
                    live.clone(),
                    plan.expect,
                    plan.duration,
                    (!plan.quiet).then_some(Duration::from_secs(1)),
                    shutdown.status.clone(),
                    stop,
                )
            });
            let rx = receive::run(plan, session, &target, live, shutdown, sink).await;
            progress.stop().await;
            if let Some(Some(mut log)) = watcher.stop().await {
                if let Err(e) = log.interval(&[("e2e", &rx.latency_us)], std::time::Instant::now())
                {
                    mqtt_tool::errln!("warning: --hdr-log: {e}");
                }
            }
            rx
        }
    };
    let mut report = Report::build(name, plan, &target.url(), target.embedded, &rx);
    frame.report(&mut report).await?;
    let signal = shutdown.signal();
    // The connection failed for good: the broker's failure, not a verdict.
    let failure = match &rx.stop {
        receive::Stop::Failed(e) if rx.refused => Some(Error::Refused {
            broker: target.url(),
            reason: e.clone(),
        }),
        receive::Stop::Failed(e) => Some(Error::Other(e.clone())),
        _ => None,
    };
    let verdict = match &report.reason {
        None => Ok(ExitCode::SUCCESS),
        Some(r) => {
            // Said before a failed threshold's error as well.
            if signal.is_none() && failure.is_none() {
                mqtt_tool::errln!("verification failed: {}", mqtt_tool::out::escape(r));
            }
            Ok(ExitCode::from(EXIT_VERIFY_FAILED))
        }
    };
    mqtt_tool::frame::exit(signal, failure, &report.header, verdict)
}

/// ", N stored" once the sink has stored anything.
fn stored(live: &receive::Live) -> String {
    match live.stored.load(Relaxed) {
        0 => String::new(),
        n => format!(", {} stored", fmt_int(n)),
    }
}

/// `, 25 s left` for a `--duration` run: the whole duration until subscribed.
fn time_left(live: &receive::Live, duration: Option<Duration>) -> String {
    let Some(d) = duration else {
        return String::new();
    };
    let left = live.ends_at.get().map_or(d, |end| {
        end.saturating_duration_since(tokio::time::Instant::now())
    });
    format!(", {}", fmt_time_left(left))
}

async fn progress(
    live: Arc<receive::Live>,
    expect: Option<u64>,
    duration: Option<Duration>,
    every: Option<Duration>,
    status: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    use std::io::IsTerminal;
    let start = tokio::time::Instant::now();
    // On a terminal, a live bar (points of --expect, or a counter) redrawn 4 times a second;
    // else a plain line a second.
    let bar = (every.is_some() && std::io::stderr().is_terminal()).then(|| {
        let (bar, template) = match expect.filter(|n| *n > 0) {
            Some(n) => (
                indicatif::ProgressBar::new(n),
                "{spinner} [{elapsed_precise}] {bar:30} {human_pos}/{human_len} unique points  {msg}",
            ),
            None => (
                indicatif::ProgressBar::new_spinner(),
                "{spinner} [{elapsed_precise}] {human_pos} unique points  {msg}",
            ),
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
        bar
    });
    let period = match (&bar, every) {
        (Some(_), _) => Duration::from_millis(250),
        (None, Some(e)) => e,
        (None, None) => Duration::from_secs(3600),
    };
    let mut tick = tokio::time::interval_at(start + period, period);
    let mut last = 0u64;
    let mut last_at = start;
    loop {
        let on_demand = tokio::select! {
            _ = stop.cancelled() => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                return;
            }
            _ = tick.tick(), if every.is_some() => false,
            _ = status.notified() => true,
        };
        if let Some(b) = &bar {
            b.set_position(live.unique.load(Relaxed));
            b.set_message(format!(
                "{} received, {} devices ({} with gaps){}{}",
                fmt_int(live.points.load(Relaxed)),
                fmt_int(live.devices.load(Relaxed)),
                fmt_int(live.gappy.load(Relaxed)),
                stored(&live),
                time_left(&live, duration)
            ));
            if !on_demand {
                continue;
            }
        }
        let now = tokio::time::Instant::now();
        let points = live.points.load(Relaxed);
        let unique = live.unique.load(Relaxed);
        let of = expect.filter(|n| *n > 0).map_or(String::new(), |n| {
            format!("/{} ({:.1}%)", fmt_int(n), 100.0 * unique as f64 / n as f64)
        });
        let rate = (points - last) as f64 / (now - last_at).as_secs_f64().max(1e-9);
        let line = format!(
            "[{:>6.1}s] received {} points, {}{} unique, {} points/s, {} messages, {} devices ({} with gaps){}{}",
            start.elapsed().as_secs_f64(),
            fmt_int(points),
            fmt_int(unique),
            of,
            fmt_int(rate.round() as u64),
            fmt_int(live.messages.load(Relaxed)),
            fmt_int(live.devices.load(Relaxed)),
            fmt_int(live.gappy.load(Relaxed)),
            stored(&live),
            time_left(&live, duration)
        );
        match &bar {
            Some(b) => b.println(mqtt_tool::out::escape_keeping_lines(&line)),
            None => mqtt_tool::errln!("{line}"),
        }
        last = points;
        last_at = now;
    }
}
