//! publisher-core: the MQTT load publisher behind `loadgen pub`, `frontend1-pub` and
//! `frontend2-pub`.
//!
//! Data flows one way, one module per stage:
//!
//! ```text
//! args + config --> plan --> broker (mqtt-tool) --> mqtt-engine: a fleet of connections
//!                     |                               on workers, the schedule, outboxes
//!                     +--> produce: source (readings) -> Encoder (point-format), per device
//!                     +--> report (text summary, JSON) <-- FleetResult (merged stats)
//! ```
//!
//! - [`args`]: every flag, defined once; [`plan`]: the validated, typed plan, from which the
//!   engine gets its own settings; bad input stops there with a usage error.
//! - [`produce`]: what goes into each device's messages; [`source`]: readings.
//! - [`conn`]: `loadgen conn`, connections held, churned or stormed, on the same plan and
//!   engine.
//! - [`progress`]: the progress line; [`report`]: the text summary and the JSON report;
//!   [`summary`]: what `--report-md` shows.
//!
//! A binary is a [`Preset`] and a call to [`main`].

pub mod args;
pub mod conn;
pub mod merge;
pub mod observe;
pub mod plan;
pub mod produce;
pub mod progress;
pub mod report;
pub mod source;
pub mod summary;

// The shared layer, under the names this crate's modules use.
pub(crate) use mqtt_tool::{broker, config, error, format, mqtt, out, shutdown};

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Command};

pub use args::PublisherArgs;
pub use mqtt_tool::Error;
pub use plan::Plan;
pub use report::Report;

use config::ParseExit;
use mqtt_tool::delivery::{DeliveryCheck, DeliveryPlan};
use mqtt_tool::frame::{Observer, RunFrame};
use shutdown::Shutdown;

/// What distinguishes one publisher binary from another: its name and defaults.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    pub device_id: &'static str,
    pub client_id: &'static str,
    /// The default of `--batch`: the seed publishers batch 1000 points, a fleet's devices
    /// send one point a message.
    pub batch: &'static str,
    /// Why `--batch` defaults to [`Preset::batch`], said in `--help`.
    pub batch_why: &'static str,
    /// The examples at the end of `--help` (each line that starts with the tool's name is a
    /// command, parsed by a test).
    pub examples: &'static str,
}

/// `loadgen pub`: a fleet of simulated devices, one point a message.
pub const LOADGEN_PUB: Preset = Preset {
    name: "loadgen pub",
    about: "Publishes the data points of a fleet of simulated devices to MQTT at an exact rate and reports what the broker got",
    device_id: "sensor-{i:05}",
    client_id: "loadgen-{i}",
    batch: "1",
    batch_why: "a device sends one point a message, as real devices do; frontend1-pub and \
                frontend2-pub batch 1000",
    examples: "Examples:
  # 1,000 devices, 10 points/s each, for a minute, at QoS 1; a verdict on the acknowledgements
  loadgen pub --broker mqtt://127.0.0.1:1883 --devices 1000 --rate-per-device 10 \\
      --duration 60s --qos 1
  # one command, one verdict: subscribe first, publish, prove every point arrived once
  loadgen pub --broker mqtt://127.0.0.1:1883 --devices 100 --rate 10k --duration 30s \\
      --qos 1 --verify --threshold 'e2e_latency_p99<50ms'
  # a CI gate: thresholds, a Markdown summary and a JSON report
  loadgen pub --devices 100 --rate 10k --duration 30s --qos 1 \\
      --threshold 'ack_latency_p99<50ms' --threshold 'point_rate>=9900' \\
      --report-md summary.md --report-json report.json
  # the third of 3 shards (0 to 2) of one fleet, all started at one instant, given to each
  # machine as START_AT=$(date -u -d +2min +%FT%TZ)
  loadgen pub --broker mqtt://127.0.0.1:1883 --devices 9000 --rate-per-device 1 \\
      --shards 3 --shard 2 --start-at \"$START_AT\" --duration 5m \\
      --report-json shard-{shard}.json",
};

/// `frontend1-pub`: the seed's frontend 1, its ultra-high-performance device.
pub const FRONTEND1: Preset = Preset {
    name: "frontend1-pub",
    about: "Publishes frontend 1's device data points to MQTT at an exact rate and reports what the broker got",
    device_id: "frontend1_ultra_high_perf_device",
    client_id: "1",
    batch: "1000",
    batch_why: "the seed's frontend publishes its one device's points 1,000 to a message; \
                loadgen pub's devices send one",
    examples: "Examples:
  # the seed's setup: 100,000 points, 1,000 a message, at 10,000 points/s
  frontend1-pub --broker mqtt://127.0.0.1:1883
  # at QoS 1 for 30 s, the JSON report on stdout
  frontend1-pub --broker mqtt://127.0.0.1:1883 --qos 1 --duration 30s --report-json -",
};

/// `frontend2-pub`: the seed's frontend 2.
pub const FRONTEND2: Preset = Preset {
    name: "frontend2-pub",
    about: "Publishes frontend 2's device data points to MQTT at an exact rate and reports what the broker got",
    device_id: "frontend2_ultra_high_perf_device",
    client_id: "2",
    batch: "1000",
    batch_why: "the seed's frontend publishes its one device's points 1,000 to a message; \
                loadgen pub's devices send one",
    examples: "Examples:
  # the seed's setup: 100,000 points, 1,000 a message, at 10,000 points/s
  frontend2-pub --broker mqtt://127.0.0.1:1883
  # single-object messages (the legacy format) at 1,000 points/s
  frontend2-pub --broker mqtt://127.0.0.1:1883 --batch 1 --rate 1000",
};

/// The clap command of a preset: every flag from [`PublisherArgs`], the preset's name.
pub fn command(preset: &Preset) -> Command {
    let env = mqtt_tool::cli::env_help(&PublisherArgs::augment_args(Command::new(preset.name)));
    let cmd = Command::new(preset.name).version(env!("CARGO_PKG_VERSION"));
    let cmd = PublisherArgs::augment_args(cmd)
        .about(preset.about)
        .after_help(format!(
            "{}\n\n{}\n\n{} SIGUSR1 prints progress.",
            preset.examples,
            env,
            mqtt_tool::error::exit_codes_help(&[
                ("0", "every point sent and, at QoS 1, acknowledged"),
                ("3", "the broker cannot be reached"),
                ("4", "the broker refused the connection"),
                (
                    "5",
                    "with --verify: a point missing, duplicated, unexpected or malformed"
                ),
            ])
        ))
        .mut_arg("report_json", |a| {
            a.help(
                "Write the final report as JSON to this file (`-` = stdout; the text summary \
                 then goes to stderr); `{shard}` in the path becomes the shard's index",
            )
        })
        .mut_arg("batch", |a| {
            a.default_value(preset.batch).help(format!(
                "Points per MQTT message: 1 sends the legacy single JSON object, N > 1 a JSON \
                 array of N points (default {}: {})",
                preset.batch, preset.batch_why
            ))
        })
        .mut_arg("device_id", |a| {
            a.help(format!(
                "Device id written into every point, a template: {{i}} is the device's index, \
                 {{i:05}} zero-padded; a fleet without {{i}} gets _{{i}} appended [default: {}]",
                preset.device_id
            ))
        })
        .mut_arg("client_id", |a| {
            let default = if preset.client_id.contains("{i}") {
                format!(
                    "{}: TOKEN is this process's, so that two copies never take each other's \
                     connections; with --clean-session false {}, the same on every start so \
                     that the sessions resume",
                    preset.client_id.replacen("{i}", "TOKEN-{i}", 1),
                    preset.client_id
                )
            } else {
                format!(
                    "{}, the seed's: a second copy takes it over, which both copies name and \
                     fail on; give each copy its own",
                    preset.client_id
                )
            };
            a.help(format!(
                "MQTT client id, a template like --device-id ({{i}}: the index of the \
                 connection's first device) [default: {default}]"
            ))
        });
    let cmd = mqtt_tool::cli::threshold_help(
        cmd,
        &report::threshold_fields(),
        &[
            "ack_latency_p99<50ms",
            "point_rate>=9900",
            "points_failed==0",
            "delivery_missing==0",
            "e2e_latency_p99<50ms",
        ],
    );
    mqtt_tool::cli::with_env_scheme(cmd)
}

/// Parses the process's arguments for `preset` into a plan.
pub fn parse_plan(preset: &Preset, argv: Vec<std::ffi::OsString>) -> Result<Plan, ParseExit> {
    let (args, sources) = config::parse_layered_sourced::<PublisherArgs>(command(preset), argv)?;
    Plan::from_args(args, preset).map_err(|e| ParseExit::Usage(sources.annotate(&e.to_string())))
}

/// The whole program of a publisher binary: parse, run, report, exit code.
pub fn main(preset: Preset) -> ExitCode {
    main_with_args(preset, std::env::args_os().collect())
}

/// [`main`] with the arguments given (the program name first), without a verifier.
pub fn main_with_args(preset: Preset, argv: Vec<std::ffi::OsString>) -> ExitCode {
    main_with(preset, argv, None)
}

/// [`main`] with the arguments given (the program name first: `loadgen pub` passes its
/// subcommand's) and `check`, the verifier `--verify` runs (backend-core's, injected by the
/// binary so that this crate does not depend on it); without one `--verify` is refused.
pub fn main_with(
    preset: Preset,
    argv: Vec<std::ffi::OsString>,
    check: Option<&'static dyn DeliveryCheck>,
) -> ExitCode {
    mqtt_tool::run_main(
        move || {
            mqtt_tool::cli::warn_environment(&command(&preset), &[], &argv);
            let plan = parse_plan(&preset, argv)?;
            if plan.verify.is_some() && check.is_none() {
                return Err(ParseExit::Usage(format!(
                    "--verify is not available in {}; use loadgen pub --verify",
                    preset.name
                )));
            }
            Ok(plan)
        },
        "stopping generation, flushing what was generated",
        move |plan, shutdown| async move { run(&preset, &plan, &shutdown, check).await },
    )
}

/// Runs `plan` and prints its report; the exit code says how it ended. An embedded broker
/// then lingers (`--embedded-linger`) so that subscribers get the last messages, until the
/// time is up or a signal ends it; the report is out before.
pub async fn run(
    preset: &Preset,
    plan: &Plan,
    shutdown: &Shutdown,
    check: Option<&'static dyn DeliveryCheck>,
) -> Result<ExitCode, Error> {
    // Metrics are served from before the --start-at wait (zeros until the fleet starts) to
    // the end of the run, and then for --metrics-linger, the final figures.
    let live = std::sync::Arc::new(observe::LiveRun::default());
    let families = observe::families(preset.name, std::sync::Arc::new(plan.clone()), live.clone());
    let mut frame = RunFrame::open(
        plan.metrics.clone(),
        plan.exports.clone(),
        plan.thresholds.clone(),
        families,
    )?;
    let result = run_framed(preset, plan, shutdown, &live, &mut frame, check).await;
    frame.close(result, shutdown).await
}

async fn run_framed(
    preset: &Preset,
    plan: &Plan,
    shutdown: &Shutdown,
    live: &observe::LiveRun,
    frame: &mut RunFrame,
    check: Option<&'static dyn DeliveryCheck>,
) -> Result<ExitCode, Error> {
    if let Some(at) = plan.start_at {
        if let Some(sig) = wait_for_start(at, plan, shutdown).await? {
            return Ok(ExitCode::from(sig.exit_code()));
        }
    }
    let target = frame.broker(&plan.connect).await?;
    let (mut report, signal) = execute(preset, plan, &target, shutdown, live, check).await?;
    live.finished(&report);
    frame.report(&mut report).await?;
    frame
        .embedded_linger(&plan.connect, &target, shutdown)
        .await;
    // No connection came up, or a lost one was refused for good on its reconnect: the
    // broker's failure (exit 3 or 4), not the run's shortfall.
    let failure = match report.start_failure.take() {
        Some(e) => Some(e.into_error(target.url(), report.error.clone().unwrap_or_default())),
        None => report
            .error
            .clone()
            .filter(|_| report.refused_on_reconnect)
            .map(|reason| Error::Refused {
                broker: target.url(),
                reason,
            }),
    };
    let delivery_failed = report.delivery.as_ref().and_then(|d| d.failure());
    let shortfall = match (report.error.take(), delivery_failed) {
        (Some(e), _) => Err(Error::Incomplete(e)),
        (None, Some(why)) => {
            // Said before a failed threshold's error as well, as `loadgen sub` does.
            if signal.is_none() && failure.is_none() {
                mqtt_tool::errln!("{why}");
            }
            Ok(ExitCode::from(mqtt_tool::error::code::VERIFY_FAILED))
        }
        (None, None) => Ok(ExitCode::SUCCESS),
    };
    mqtt_tool::frame::exit(signal, failure, &report.header, shortfall)
}

/// The ids of this process's devices, in fleet order (rendered as the producers do).
fn device_ids(plan: &Plan) -> Vec<String> {
    let mut id = Vec::new();
    (0..plan.fleet.devices)
        .map(|d| {
            id.clear();
            plan.device_id_template
                .render_into(d + plan.fleet.device_start, b"", &mut id);
            String::from_utf8_lossy(&id).into_owned()
        })
        .collect()
}

/// What the fleet wrote, device by device, for the verifier: each device's seqs from its
/// log; what was generated and never written is said as a total.
fn expected(
    plan: &Plan,
    ids: &[String],
    log: &produce::SentLog,
    counts: &mqtt_engine::stats::Counts,
) -> mqtt_tool::delivery::Expected {
    let devices = ids
        .iter()
        .enumerate()
        .map(|(d, id)| mqtt_tool::delivery::ExpectedDevice {
            id: id.clone(),
            sent: log.next(d as u64),
            skipped: log.skipped(d as u64),
        })
        .collect();
    mqtt_tool::delivery::Expected {
        devices,
        unwritten: counts.points_enqueued.saturating_sub(counts.points_sent),
        others_expected: plan.shard.as_ref().is_some_and(|s| s.count > 1),
    }
}

/// Waits for `--start-at`; a signal meanwhile ends the run before anything was sent.
async fn wait_for_start(
    at: std::time::SystemTime,
    plan: &Plan,
    shutdown: &Shutdown,
) -> Result<Option<shutdown::Signal>, Error> {
    plan::check_start_at(at)?;
    let wait = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    if !plan.quiet {
        mqtt_tool::errln!(
            "waiting {:.1} s for --start-at {}{}",
            wait.as_secs_f64(),
            humantime::format_rfc3339_millis(at),
            plan.shard
                .as_ref()
                .map(|s| format!(" (shard {} of {})", s.index, s.count))
                .unwrap_or_default()
        );
    }
    tokio::select! {
        _ = tokio::time::sleep(wait) => Ok(None),
        _ = shutdown.stop.cancelled() => {
            mqtt_tool::errln!("interrupted while waiting for --start-at: nothing was sent");
            Ok(shutdown.signal())
        }
    }
}

/// Connects the fleet to `target`, publishes and builds the report, without printing it. A
/// signal ends generation (a connection still connecting is given up), the drain follows
/// within its deadline, a second signal abandons it.
pub async fn execute(
    preset: &Preset,
    plan: &Plan,
    target: &broker::BrokerTarget,
    shutdown: &Shutdown,
    live: &observe::LiveRun,
    check: Option<&'static dyn DeliveryCheck>,
) -> Result<(Report, Option<shutdown::Signal>), Error> {
    let addrs = fleet_addrs(target, &plan.fleet.source_ips).await?;
    let settings = plan.fleet_settings(addrs);
    // --verify: the verifier is subscribed (its SUBACK in) before the fleet starts, so no
    // point is published before it can be received.
    let verifier = match (plan.verify, check) {
        (Some(timeout), Some(check)) => {
            let ids = std::sync::Arc::new(device_ids(plan));
            let dp = DeliveryPlan {
                device_ids: ids.clone(),
                connect: plan.connect.clone(),
                filter: plan.verify_filter.clone(),
                // A shard's verifier sees the whole fleet's devices on the filter.
                devices: plan
                    .fleet
                    .devices
                    .saturating_mul(plan.shard.as_ref().map_or(1, |s| s.count)),
                timeout,
                stop: shutdown.stop.clone(),
            };
            let t = target.clone();
            let v = tokio::task::spawn_blocking(move || check.subscribe(&dp, &t))
                .await
                .map_err(|e| Error::failed("the verifier failed", e))??;
            let log = std::sync::Arc::new(produce::SentLog::new(plan.fleet.devices));
            Some((v, log, ids))
        }
        _ => None,
    };
    let sent_log = verifier.as_ref().map(|(_, log, _)| log.clone());
    let (device_id, topic) = (plan.device_id_template.clone(), plan.topic_template.clone());
    let (seed, sensor_fields, offset) = (plan.seed, plan.sensor_fields, plan.fleet.device_start);
    let fleet = mqtt_engine::Fleet::start(settings, move |_, devices| {
        produce::Points::new(
            devices,
            offset,
            device_id.clone(),
            topic.clone(),
            seed,
            sensor_fields,
        )
        .logging(sent_log.clone())
    })
    .map_err(|e| Error::failed("cannot start the workers", e))?;
    let handle = fleet.handle();
    let started = std::time::Instant::now();
    let hdr_log = match &plan.hdr_log {
        Some(p) => Some(observe::HdrLog::create(p, preset.name, plan, started)?),
        None => None,
    };
    let _ = live.fleet.set(handle.clone());
    let watcher = Observer::spawn(|stop| observe::watch(handle.clone(), hdr_log, stop));
    let progress = Observer::spawn(|stop| {
        progress::run(
            handle.clone(),
            progress::Shape {
                total: plan.total,
                duration: plan.duration,
                qos: plan.qos,
                connections: plan.fleet.connections,
                held: false,
            },
            !plan.quiet,
            observe::CollisionNotes::new(plan),
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
    let samples = progress.stop().await.unwrap_or_default();
    if let Some(Some(mut log)) = watcher.stop().await {
        if let Err(e) = log.interval(&result.stats.histos, std::time::Instant::now()) {
            mqtt_tool::errln!("warning: --hdr-log: {e}");
        }
    }
    let signal = shutdown.signal();
    let c = &result.stats.conns;
    // No connection came up: the run is the connection's failure (exit 3 or 4), and the
    // report says so too.
    let not_started = signal
        .is_none()
        .then(|| none_connected(c, plan.connect.connect_timeout, &target.url()))
        .flatten();
    let mut observed = report::Observed {
        peak_rss_bytes: mqtt_engine::sys::peak_rss_bytes(),
        ..Default::default()
    };
    if let (Some((t0, p0)), Some(end)) = (samples.at_start, result.stats.generation_end) {
        // The last sample taken before generation ended gives the other end.
        if let Some((t1, p1)) = samples.last.filter(|(t, _)| *t <= end) {
            observed.steady = Some((t0, p0, t1, p1));
        } else if let Some((t1, p1)) = samples.last {
            observed.steady = Some((t0, p0, t1.min(end), p1));
        }
    }
    if c.first_losses.iter().any(|(_, l)| {
        matches!(
            l.kind,
            mqtt_engine::error::LostKind::Closed | mqtt_engine::error::LostKind::Io(..)
        )
    }) {
        // Is the broker still there? That tells a broker that went away from one that
        // closed this connection on purpose.
        let (host, port) = (target.host.clone(), target.port);
        observed.broker_up = tokio::task::spawn_blocking(move || {
            mqtt::accepts_connections(&host, port, Duration::from_millis(500))
        })
        .await
        .ok();
    }
    let mut report = Report::build(preset.name, plan, target, &result, &observed, signal);
    if let Some((v, log, ids)) = verifier {
        let expected = expected(plan, &ids, &log, &result.stats.counts);
        let delivery = tokio::task::spawn_blocking(move || v.finish(expected))
            .await
            .map_err(|e| Error::failed("the verifier failed", e))?;
        report.delivery = Some(delivery);
    }
    if let Some(mut e) = not_started {
        // An mqtt:// URL at a TLS port, or mqtts:// at a plain one, fails as a closed
        // connection: one probe with the other scheme says which.
        if let Some(f) = c
            .gave_up
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(f, _)| f.clone())
        {
            let (host, port, tls) = (target.host.clone(), target.port, plan.connect.tls.is_some());
            let hint = tokio::task::spawn_blocking(move || mqtt::scheme_hint(&f, &host, port, tls))
                .await
                .ok()
                .flatten();
            if let (Some(hint), Error::Unreachable { reason, .. } | Error::Refused { reason, .. }) =
                (hint, &mut e)
            {
                *reason = format!("{reason}; {hint}");
            }
        }
        report.not_started(e);
    }
    Ok((report, signal))
}

/// The failure of a fleet none of whose connections came up (every one gave up): refused
/// (exit 4) when a refusal was among the reasons, else unreachable (exit 3). One connection
/// is named by its own reason; more by "all N connections failed" and each reason's count.
/// `None` while any connected. Shared by the fleets of `pub`, `conn` and `sub --clients`.
pub fn none_connected(
    c: &mqtt_engine::stats::Conns,
    connect_timeout: Duration,
    broker: &str,
) -> Option<Error> {
    if c.connected > 0 || c.planned == 0 || c.failed < c.planned {
        return None;
    }
    let refused = c.gave_up.keys().any(|f| f.is_refusal());
    let reason = if c.planned == 1 {
        let (failure, _) = c.gave_up.iter().next()?;
        mqtt_tool::mqtt::describe_failure(failure, connect_timeout)
    } else {
        let reasons: Vec<String> = c
            .gave_up
            .iter()
            .map(|(f, n)| {
                format!(
                    "{} ({})",
                    mqtt_tool::mqtt::describe_failure(f, connect_timeout),
                    format::fmt_int(*n)
                )
            })
            .collect();
        format!(
            "all {} connections failed: {}",
            format::fmt_int(c.planned),
            reasons.join("; ")
        )
    };
    let broker = broker.to_string();
    Some(if refused {
        Error::Refused { broker, reason }
    } else {
        Error::Unreachable { broker, reason }
    })
}

/// The broker's addresses a fleet connects to: the name resolved (unreachable when it has
/// none), the source addresses checked against its families, and of a name with both
/// families (localhost) only those the sources can reach. Shared by the fleets of `pub`,
/// `conn` and `sub --clients`.
pub async fn fleet_addrs(
    target: &broker::BrokerTarget,
    source_ips: &[std::net::IpAddr],
) -> Result<Vec<std::net::SocketAddr>, Error> {
    let (host, port) = (target.host.clone(), target.port);
    let addrs = tokio::task::spawn_blocking(move || {
        use std::net::ToSocketAddrs;
        (host.as_str(), port).to_socket_addrs().map(Vec::from_iter)
    })
    .await
    .map_err(|e| Error::failed("broker lookup failed", e))?
    .map_err(|e| Error::Unreachable {
        broker: target.url(),
        reason: e.to_string(),
    })?;
    if addrs.is_empty() {
        return Err(Error::Unreachable {
            broker: target.url(),
            reason: "the name has no address".into(),
        });
    }
    plan::check_source_families(source_ips, &addrs, &target.url())?;
    Ok(plan::reachable_from(source_ips, addrs))
}
