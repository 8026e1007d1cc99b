//! `loadgen conn`: connection-only load. N connections connect (ramped as a publisher's
//! fleet), are held for `--hold` with PINGREQ as the keep-alive asks, and optionally churned
//! (`--churn R`: R disconnects and reconnects a second, spread evenly, round robin) or
//! stormed (`--storm EVERY`: all dropped at once, back through the reconnect backoff).
//!
//! ```text
//! ConnArgs (the publisher's connection, ramp, reconnect and output flags, flattened)
//!   --> ConnPlan (the publisher's Plan for N one-device connections, validated there,
//!                 and the hold) --> FleetSettings with no devices and a HoldSettings
//!   --> mqtt-engine (the churn and storms: worker/churn.rs) --> FleetResult
//!   --> report::ConnReport --> the run frame (text, JSON, CSV, Markdown, exit code)
//! ```

pub mod report;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Command, FromArgMatches};
use mqtt_tool::args::ReconnectArgs;
use mqtt_tool::args::{parse_count, parse_duration, parse_rate, ConnectionArgs, OutputArgs, Rate};
use mqtt_tool::frame::{Observer, RunFrame};

use crate::args::{LoadArgs, PublisherArgs, RampArgs};
use crate::config::ParseExit;
use crate::shutdown::Shutdown;
use crate::{broker, Error, Plan, Preset};

pub use report::ConnReport;

/// `loadgen conn`'s name and defaults (its client ids: `loadgen-conn-TOKEN-{i}`).
pub const LOADGEN_CONN: Preset = Preset {
    name: "loadgen conn",
    about: "Holds, churns or storms N MQTT connections and reports how connects, keep-alives and reconnects went",
    device_id: "conn-{i}",
    client_id: "loadgen-conn-{i}",
    batch: "1",
    batch_why: "",
    examples: "Examples:
  # 10,000 idle connections held for a minute with a 30 s keep-alive
  loadgen conn --broker mqtt://127.0.0.1:1883 --connections 10k --hold 60s --keep-alive 30s
  # 500 disconnects and reconnects a second over 5,000 connections for 30 s
  loadgen conn --broker mqtt://127.0.0.1:1883 --connections 5000 --hold 30s --churn 500
  # every connection dropped at once every 20 s, three times: how fast do they come back?
  loadgen conn --broker mqtt://127.0.0.1:1883 --connections 2000 --hold 70s \\
      --storm 20s --storms 3 --reconnect-backoff 100ms..5s --report-json conn.json",
};

/// Every flag of `loadgen conn`: the publisher's flag structs, and the hold.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// TOML file with flag values (keys are flag names, e.g. `hold = "60s"`); precedence:
    /// defaults < file < environment < command line
    #[arg(long, value_name = "FILE", env = "LOADGEN_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub connection: ConnectionArgs,

    #[command(flatten)]
    pub hold: HoldArgs,

    #[command(flatten)]
    pub ramp: RampArgs,

    #[command(flatten)]
    pub reconnect: ReconnectArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// How many connections, and what happens to them once up.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Hold")]
pub struct HoldArgs {
    /// Connections to open and hold (accepts 10k)
    #[arg(long, value_name = "N", default_value = "100", value_parser = parse_count, env = "LOADGEN_CONNECTIONS")]
    pub connections: u64,

    /// How long to hold them once every connection is up or given up (30s, 5m)
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, env = "LOADGEN_HOLD")]
    pub hold: Duration,

    /// Disconnect (DISCONNECT, then close) and reconnect this many connections a second
    /// over the fleet while holding, spread evenly, round robin; connections still
    /// connecting are skipped
    #[arg(long, value_name = "PER_S", value_parser = parse_rate, env = "LOADGEN_CHURN")]
    pub churn: Option<Rate>,

    /// Drop every connection at once (no DISCONNECT) every this long while holding; they
    /// come back through the reconnect backoff, and the report says how long it took
    #[arg(long, value_name = "EVERY", value_parser = parse_duration, env = "LOADGEN_STORM")]
    pub storm: Option<Duration>,

    /// At most this many storms (1: once) [default: as many as the hold has room for]
    #[arg(long, value_name = "N", value_parser = parse_count, requires = "storm", env = "LOADGEN_STORMS")]
    pub storms: Option<u64>,
}

/// `loadgen conn`'s validated plan: the publisher's plan of N one-device connections (its
/// connection, ramp, TLS, MQTT 5, reconnect and output checks), and the hold.
#[derive(Debug, Clone)]
pub struct ConnPlan {
    pub plan: Plan,
    pub hold: mqtt_engine::settings::HoldSettings,
    pub thresholds: Vec<mqtt_tool::threshold::Threshold>,
}

/// The highest churn rate: a connect every microsecond.
const MAX_CHURN: f64 = 1e6;

impl ConnPlan {
    pub fn from_args(args: ConnArgs) -> Result<ConnPlan, Error> {
        let ConnArgs {
            connection,
            hold,
            ramp,
            reconnect,
            mut output,
            ..
        } = args;
        if hold.connections == 0 {
            return Err(Error::usage("--connections must be at least 1"));
        }
        if hold.hold.is_zero() {
            return Err(Error::usage("--hold must be longer than 0s"));
        }
        let churn = match hold.churn {
            None | Some(Rate::PerSecond(0.0)) => None,
            Some(Rate::Unlimited) => {
                return Err(Error::usage(
                    "--churn needs a rate (disconnects a second), not max",
                ))
            }
            Some(Rate::PerSecond(r)) if r > MAX_CHURN => {
                return Err(Error::usage(format!(
                    "--churn {r} is above the highest churn ({MAX_CHURN} a second)"
                )))
            }
            Some(Rate::PerSecond(r)) => Some(r),
        };
        if churn.is_some() && hold.storm.is_some() {
            return Err(Error::usage(
                "--churn and --storm do not go together: a storm's recovery would count the churn's reconnects; run them apart",
            ));
        }
        if hold.storm.is_some_and(|s| s.is_zero()) {
            return Err(Error::usage("--storm must be longer than 0s"));
        }
        if hold.storms == Some(0) {
            return Err(Error::usage("--storms must be at least 1"));
        }
        if hold.storm.is_some() && !reconnect.reconnect {
            return Err(Error::usage(
                "--storm needs --reconnect true: the storm's connections come back through it",
            ));
        }
        // Thresholds name this report's fields, not the publisher's.
        let thresholds = mqtt_tool::threshold::parse_all(
            &std::mem::take(&mut output.export.thresholds),
            &report::threshold_fields(),
        )?;
        // Held connections publish nothing: nothing to verify.
        let args = PublisherArgs::connections_only(
            connection,
            default_load(),
            hold.connections,
            ramp,
            reconnect,
            output,
        );
        let plan = Plan::from_args(args, &LOADGEN_CONN)?;
        // Storms strictly inside the hold: one at its very end would leave no time to
        // come back.
        let storms = hold.storm.map_or(0, |every| {
            let fit =
                ((hold.hold.as_secs_f64() / every.as_secs_f64()).ceil() as u64).saturating_sub(1);
            hold.storms.unwrap_or(fit).min(fit).min(u32::MAX as u64) as u32
        });
        if hold.storm.is_some() && storms == 0 {
            return Err(Error::usage(
                "--storm is not shorter than --hold: no storm would come before the hold ends; lengthen --hold",
            ));
        }
        Ok(ConnPlan {
            plan,
            hold: mqtt_engine::settings::HoldSettings {
                duration: hold.hold,
                churn,
                storm_every: hold.storm,
                storms,
            },
            thresholds,
        })
    }
}

/// The publisher's load flags at their defaults: `loadgen conn` sends nothing, but the
/// publisher's plan (whose checks it reuses) wants them.
fn default_load() -> LoadArgs {
    let m = LoadArgs::augment_args(Command::new("load")).get_matches_from(["load"]);
    LoadArgs::from_arg_matches(&m).expect("the load flags' defaults parse")
}

/// The clap command of `loadgen conn`.
pub fn command() -> Command {
    let p = &LOADGEN_CONN;
    let env = mqtt_tool::cli::env_help(&ConnArgs::augment_args(Command::new(p.name)));
    let cmd = ConnArgs::augment_args(Command::new(p.name).version(env!("CARGO_PKG_VERSION")))
        .about(p.about)
        .after_help(format!(
            "{}\n\n{}\n\n{}",
            p.examples,
            env,
            mqtt_tool::error::exit_codes_help(&[
                ("0", "every connection came up and was held (and came back after each churn or storm)"),
                ("3", "the broker cannot be reached"),
                ("4", "the broker refused the connection"),
                ("1", "some connections failed, or were down at the end"),
            ])
        ))
        .mut_arg("client_id", |a| {
            a.help(
                "MQTT client id, a template ({i}: the connection's index) [default: \
                 loadgen-conn-TOKEN-{i}: TOKEN is this process's; with --clean-session false \
                 loadgen-conn-{i}]",
            )
        });
    let cmd = mqtt_tool::cli::threshold_help(
        cmd,
        &report::threshold_fields(),
        &["connect_latency_p99<100ms", "connections_failed==0"],
    );
    mqtt_tool::cli::with_env_scheme(cmd)
}

/// Parses `loadgen conn`'s arguments (the program name first) into a plan.
pub fn parse_plan(argv: Vec<std::ffi::OsString>) -> Result<ConnPlan, ParseExit> {
    let (args, sources) = crate::config::parse_layered_sourced::<ConnArgs>(command(), argv)?;
    ConnPlan::from_args(args).map_err(|e| ParseExit::Usage(sources.annotate(&e.to_string())))
}

/// The whole of `loadgen conn`: parse, run, report, exit code.
pub fn main_with_args(argv: Vec<std::ffi::OsString>) -> ExitCode {
    mqtt_tool::run_main(
        move || {
            mqtt_tool::cli::warn_environment(&command(), &[], &argv);
            parse_plan(argv)
        },
        "ending the hold, closing the connections",
        |plan, shutdown| async move { run(&plan, &shutdown).await },
    )
}

/// Runs `plan` in its frame; the exit code says how it ended.
pub async fn run(plan: &ConnPlan, shutdown: &Shutdown) -> Result<ExitCode, Error> {
    let live = std::sync::Arc::new(crate::observe::LiveRun::default());
    let families = crate::observe::families(
        LOADGEN_CONN.name,
        std::sync::Arc::new(plan.plan.clone()),
        live.clone(),
    );
    let mut frame = RunFrame::open(
        plan.plan.metrics.clone(),
        plan.plan.exports.clone(),
        plan.thresholds.clone(),
        families,
    )?;
    let result = run_framed(plan, shutdown, &live, &mut frame).await;
    frame.close(result, shutdown).await
}

async fn run_framed(
    plan: &ConnPlan,
    shutdown: &Shutdown,
    live: &crate::observe::LiveRun,
    frame: &mut RunFrame,
) -> Result<ExitCode, Error> {
    let target = frame.broker(&plan.plan.connect).await?;
    let (mut report, signal) = execute(plan, &target, shutdown, live).await?;
    frame.report(&mut report).await?;
    frame
        .embedded_linger(&plan.plan.connect, &target, shutdown)
        .await;
    let failure = report.start_failure(&target.url(), plan.plan.connect.connect_timeout);
    let shortfall = match report.error.clone() {
        Some(e) => Err(Error::Incomplete(e)),
        None => Ok(ExitCode::SUCCESS),
    };
    mqtt_tool::frame::exit(signal, failure, &report.header, shortfall)
}

/// Nothing to publish: held connections have no devices.
struct Nothing;

impl mqtt_engine::Producer for Nothing {
    fn topic(&mut self, _: u64, _: &mut Vec<u8>) {}
    fn payload(&mut self, _: u64, _: u64, _: u32, _: u64, _: &mut bytes::BytesMut) {}
}

/// Connects, holds and reports, without printing. A signal ends the hold.
pub async fn execute(
    plan: &ConnPlan,
    target: &broker::BrokerTarget,
    shutdown: &Shutdown,
    live: &crate::observe::LiveRun,
) -> Result<(ConnReport, Option<crate::shutdown::Signal>), Error> {
    let p = &plan.plan;
    let addrs = crate::fleet_addrs(target, &p.fleet.source_ips).await?;
    let mut settings = p.fleet_settings(addrs);
    settings.devices = 0;
    settings.hold = Some(plan.hold.clone());
    let fleet = mqtt_engine::Fleet::start(settings, |_, _| Nothing)
        .map_err(|e| Error::failed("cannot start the workers", e))?;
    let handle = fleet.handle();
    let _ = live.fleet.set(handle.clone());
    let progress = Observer::spawn(|stop| {
        crate::progress::run(
            handle.clone(),
            crate::progress::Shape {
                total: None,
                duration: Some(plan.hold.duration),
                qos: mqtt_tool::args::Qos::AtMostOnce,
                connections: p.fleet.connections,
                held: true,
            },
            !p.quiet,
            crate::observe::CollisionNotes::new(p),
            shutdown.status.clone(),
            stop,
        )
    });
    let mut joined = tokio::task::spawn_blocking(move || fleet.join());
    let mut stopped = false;
    let result = loop {
        tokio::select! {
            r = &mut joined => break r.map_err(|e| Error::failed("the workers failed", e))?,
            _ = shutdown.stop.cancelled(), if !stopped => {
                stopped = true;
                handle.stop();
            }
            _ = shutdown.abort.cancelled() => handle.abort(),
        }
    };
    let _ = progress.stop().await;
    let signal = shutdown.signal();
    let report = ConnReport::build(plan, target, &result, signal);
    Ok((report, signal))
}
