//! publisher-core: the MQTT load publisher behind `frontend1-pub` and `frontend2-pub`.
//!
//! Data flows one way, one module per stage:
//!
//! ```text
//! args + config --> plan --> broker --> mqtt (connect)
//!                     |
//!                     +--> session: pace -> source -> Encoder (point-format) -> sink -> rumqttc
//!                     |             driver: writes and PUBACKs -> stats
//!                     +--> report (text summary, JSON) <-- stats
//! ```
//!
//! - [`args`]: every flag, defined once; [`config`]: defaults < file < environment < CLI.
//! - [`plan`]: the validated, typed plan; bad input stops here with a usage error.
//! - [`broker`]: the broker to use, starting the embedded rumqttd when needed.
//! - [`mqtt`]: the connection and its failure modes.
//! - [`session`]: the producer (pacing, generation, encoding) and the run's end (drain).
//! - [`sink`]: hands messages to rumqttc, QoS 0 as [`frame`]s of PUBLISH packets;
//!   [`driver`]: polls the connection, counting writes and acknowledgements.
//! - [`stats`]: counters and HdrHistograms; [`report`]: the summary and the JSON report.
//! - [`progress`], [`shutdown`]: the progress line and signal handling.
//!
//! A binary is a [`Preset`] and a call to [`main`].

pub mod args;
pub mod driver;
pub mod frame;
pub mod pace;
pub mod plan;
pub mod progress;
pub mod report;
pub mod session;
pub mod sink;
pub mod source;
pub mod stats;

// The shared layer, under the names this crate's modules use.
pub(crate) use mqtt_tool::{broker, config, error, format, mqtt, out, shutdown};

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Command, FromArgMatches};
use tokio_util::sync::CancellationToken;

pub use args::PublisherArgs;
pub use mqtt_tool::Error;
pub use plan::Plan;
pub use report::Report;

use config::ParseExit;
use shutdown::Shutdown;

/// What distinguishes one publisher binary from another: its name and defaults.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    pub device_id: &'static str,
    pub client_id: &'static str,
}

/// The clap command of a preset: every flag from [`PublisherArgs`], the preset's name.
pub fn command(preset: &Preset) -> Command {
    let cmd = Command::new(preset.name).version(env!("CARGO_PKG_VERSION"));
    PublisherArgs::augment_args(cmd)
        .about(preset.about)
        .after_help(
            "Exit codes: 0 delivered, 1 incomplete or other failure, 2 usage, 3 broker unreachable, \
             4 broker refused the connection, 129 SIGHUP, 130 SIGINT, 143 SIGTERM; SIGUSR1 prints progress.",
        )
        .mut_arg("device_id", |a| a.help(format!("Device id written into every point [default: {}]", preset.device_id)))
        .mut_arg("client_id", |a| a.help(format!("MQTT client id [default: {}]", preset.client_id)))
}

struct Parsed(PublisherArgs);

impl FromArgMatches for Parsed {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        PublisherArgs::from_arg_matches(m).map(Parsed)
    }
    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(m)
    }
}

/// Parses the process's arguments for `preset` into a plan.
pub fn parse_plan(preset: &Preset, argv: Vec<std::ffi::OsString>) -> Result<Plan, ParseExit> {
    let (Parsed(args), sources) = config::parse_layered_sourced(command(preset), argv)?;
    Plan::from_args(args, preset).map_err(|e| ParseExit::Usage(sources.annotate(&e.to_string())))
}

/// The whole program of a publisher binary: parse, run, report, exit code.
pub fn main(preset: Preset) -> ExitCode {
    mqtt_tool::run_main(
        || parse_plan(&preset, std::env::args_os().collect()),
        "stopping generation, flushing what was generated",
        |plan, shutdown| async move { run(&preset, &plan, &shutdown).await },
    )
}

/// Runs `plan` and prints its report; the exit code says how it ended. An embedded broker
/// then lingers (`--embedded-linger`) so that subscribers get the last messages, until the
/// time is up or a signal ends it; the report is out before.
pub async fn run(preset: &Preset, plan: &Plan, shutdown: &Shutdown) -> Result<ExitCode, Error> {
    let (report, signal, target) = execute(preset, plan, shutdown).await?;
    let text = report.render_text();
    out::summary(&text, plan.report_json.as_deref());
    if let Some(p) = &plan.report_json {
        report.write_json(p)?;
    }
    let linger = plan.connect.embedded_linger;
    if target.embedded && !linger.is_zero() && !shutdown.stop.is_cancelled() {
        tokio::select! {
            _ = tokio::time::sleep(linger) => {}
            _ = shutdown.stop.cancelled() => {}
        }
    }
    if let Some(sig) = signal {
        return Ok(ExitCode::from(sig.exit_code()));
    }
    match report.error {
        Some(e) => Err(Error::Incomplete(e)),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Connects, publishes and builds the report, without printing it. A signal while
/// connecting ends the run at once, with a report that says nothing was sent.
pub async fn execute(
    preset: &Preset,
    plan: &Plan,
    shutdown: &Shutdown,
) -> Result<(Report, Option<shutdown::Signal>, broker::BrokerTarget), Error> {
    let choice = plan.connect.broker.clone();
    let max_packet = plan.connect.max_packet_size;
    let embedded_port = plan.connect.embedded_port;
    let target =
        tokio::task::spawn_blocking(move || broker::resolve(&choice, max_packet, embedded_port))
            .await
            .map_err(|e| Error::Other(format!("broker lookup failed: {e}")))??;
    let connected = tokio::select! {
        c = mqtt::connect(&plan.connect, &target, plan.max_inflight, plan.queue_requests) => Some(c?),
        _ = shutdown.stop.cancelled() => None,
    };
    let Some((client, eventloop)) = connected else {
        let result = session::SessionResult::interrupted_while_connecting(plan.rate.is_some());
        let signal = shutdown.signal();
        let report = Report::build(preset.name, plan, &target, &result, signal);
        return Ok((report, signal, target));
    };
    let counters = Arc::new(stats::Counters::default());
    let progress_stop = CancellationToken::new();
    let progress = tokio::spawn(progress::run(
        counters.clone(),
        plan.total,
        plan.qos == args::Qos::AtLeastOnce,
        (!plan.quiet).then_some(Duration::from_secs(1)),
        shutdown.status.clone(),
        progress_stop.clone(),
    ));
    let mut result = session::run(plan, client, eventloop, counters, shutdown).await;
    progress_stop.cancel();
    let _ = progress.await;
    if result
        .lost
        .as_ref()
        .is_some_and(|l| matches!(l.kind, mqtt::LostKind::Closed | mqtt::LostKind::Io(..)))
    {
        // Is the broker still there? That tells a broker that went away from one that
        // closed this connection on purpose.
        let (host, port) = (target.host.clone(), target.port);
        result.broker_up = tokio::task::spawn_blocking(move || {
            mqtt::accepts_connections(&host, port, Duration::from_millis(500))
        })
        .await
        .ok();
    }
    let signal = shutdown.signal();
    let report = Report::build(preset.name, plan, &target, &result, signal);
    Ok((report, signal, target))
}
