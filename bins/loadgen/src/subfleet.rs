//! `loadgen sub --clients N`: a subscriber fleet on the engine's workers. N connections,
//! each subscribing to `--topic` templates (`{i}`: the subscriber's index), every delivery
//! decoded and proven per subscriber by backend-core's receive path
//! ([`backend_core::subfleet`]); `loadgen sub` without `--clients` is backend-sub's single
//! session, unchanged.
//!
//! ```text
//! flags (mqtt-tool's connection, reconnect and output flags, publisher-core's RampArgs)
//!   --> Plan (publisher-core's plan for the connections: TLS, MQTT 5, ramp, client ids)
//!   --> mqtt_engine::Fleet::start_subscribers (a FleetConsumer per worker)
//!   --> stop rules (--duration, --idle-timeout, --expect*) --> join
//!   --> Report (header, connections, SUBACK latency, FleetStats) --> frame: text, JSON, Markdown
//! ```
//!
//! It lives in the `loadgen` library because it joins publisher-core's connection plan with
//! backend-core's verifier: backend-core depending on publisher-core would close a cycle
//! with `loadgen pub --verify`, which takes backend-core's receive path into the publisher.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_core::fleet_verify::{FleetStats, Rules};
use backend_core::subfleet::{Clock, Finished, FleetConsumer, LiveCounts};
use clap::{Args, Command};
use mqtt_tool::args::{parse_count, parse_duration, ConnectionArgs, OutputArgs, ReconnectArgs};
use mqtt_tool::format::Percentiles;
use mqtt_tool::frame::{FramedReport, ReportHeader, RunFrame};
use mqtt_tool::merge::{add_histogram, Check};
use mqtt_tool::phases::{PhaseHistograms, PhaseMerge, Phases};
use mqtt_tool::shutdown::Shutdown;
use mqtt_tool::summary::{Summarize, Summary};
use mqtt_tool::threshold::{Fields, Unit};
use mqtt_tool::Error;
use publisher_core::args::{LoadArgs, PublisherArgs, RampArgs};
use serde::{Deserialize, Serialize};

/// The report's schema version (schema/loadgen-sub-fleet.schema.json).
pub const SCHEMA_VERSION: u32 = 1;
/// The tool name in the report, which `loadgen merge` recognises.
pub const TOOL: &str = "loadgen sub --clients";

/// Every flag of a subscriber fleet.
#[derive(Debug, Clone, Args)]
pub struct FleetSubArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Subscriber connections, each verifying everything it receives
    #[arg(long, value_name = "N", value_parser = parse_count, help_heading = "Subscribers")]
    pub clients: u64,

    /// Topic filter each subscriber subscribes to (repeatable), a template: `{i}` is the
    /// subscriber's index (`device_data/sensor-{i:05}`: one device each; `device_data/#`:
    /// all of them, fan-out)
    #[arg(long = "topic", value_name = "FILTER", default_values_t = [String::from("device_data/#")],
          help_heading = "Subscribers")]
    pub topics: Vec<String>,

    /// QoS of the subscriptions
    #[arg(long, default_value = "1", value_parser = mqtt_tool::args::qos_parser(mqtt_tool::args::Qos::ExactlyOnce),
          help_heading = "Subscribers")]
    pub qos: mqtt_tool::args::Qos,

    /// Subscribe as `$share/NAME/<filter>`: the subscribers divide the points; judged by
    /// --expect (the total) and each member's duplicates
    #[arg(long, value_name = "NAME", help_heading = "Subscribers")]
    pub share_group: Option<String>,

    /// Unique points each subscriber must get (each device's seqs then count from 0)
    #[arg(long, value_name = "N", value_parser = parse_count, help_heading = "Verification")]
    pub expect_per_client: Option<u64>,

    /// Unique points the subscribers must get together (a share group's total)
    #[arg(long, value_name = "N", value_parser = parse_count, help_heading = "Verification")]
    pub expect: Option<u64>,

    /// Accept duplicates in the verdict (still counted and reported)
    #[arg(long, help_heading = "Verification")]
    pub at_least_once: bool,

    /// Stop when no message arrived for this long (after the first)
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration,
          help_heading = "Verification")]
    pub idle_timeout: Duration,

    /// Stop when no message at all arrived this long after every subscriber subscribed
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration,
          help_heading = "Verification")]
    pub first_message_timeout: Duration,

    /// Stop after this long (counted from when every subscriber is subscribed)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Verification")]
    pub duration: Option<Duration>,

    /// Devices each worker tracks (points of further devices are untracked and fail)
    #[arg(long, value_name = "N", default_value = "100k", value_parser = parse_count,
          help_heading = "Verification")]
    pub max_devices: u64,

    #[command(flatten)]
    pub ramp: RampArgs,

    #[command(flatten)]
    pub reconnect: ReconnectArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// A validated subscriber-fleet run.
pub struct Plan {
    /// The connections' plan, built by the publisher's planner (one device per connection).
    pub conn: publisher_core::plan::Plan,
    pub clients: u64,
    pub subscribe: mqtt_engine::SubscribeSettings,
    pub topics: Vec<String>,
    pub rules: Rules,
    pub idle_timeout: Duration,
    pub first_message_timeout: Duration,
    pub duration: Option<Duration>,
    pub max_devices: usize,
    /// `--max-packet-size` not given: take whatever a publisher may send.
    pub any_packet: bool,
    pub thresholds: Vec<mqtt_tool::threshold::Threshold>,
}

/// The fields `--threshold` may name: the proof's sums, the connections, the latencies, and
/// the per-subscriber spreads' ends (`points_per_subscriber_min>=1000`).
pub fn threshold_fields() -> Fields {
    let mut f = Fields::default();
    for n in [
        "deliveries",
        "points",
        "points_unique",
        "points_missing",
        "points_duplicate",
        "points_out_of_order",
        "points_unverifiable",
        "points_untracked",
        "malformed_messages",
        "latency_clamped",
        "subscribers_verified",
    ] {
        f = f.field(n, &format!("/fleet/{n}"), Unit::Number);
    }
    for (name, key) in [
        ("connections_connected", "connected"),
        ("subscribers_subscribed", "subscribed"),
        ("connections_lost", "lost"),
        ("reconnects", "reconnects"),
    ] {
        f = f.field(name, &format!("/connections/{key}"), Unit::Number);
    }
    for n in DERIVED {
        f = f.field(n, &format!("/{n}"), Unit::Number);
    }
    f.numbers(&["duration_s"], Unit::Seconds)
        .latency("e2e_latency", "/fleet/latency_us")
        .latency("suback_latency", "/suback_latency_us")
}

/// Figures thresholds may name that the report holds only in other forms (the spreads as
/// value -> subscribers, the failing subscribers as a list and a count of the rest).
const DERIVED: [&str; 7] = [
    "points_per_subscriber_min",
    "points_per_subscriber_median",
    "points_per_subscriber_max",
    "deliveries_per_subscriber_min",
    "deliveries_per_subscriber_median",
    "deliveries_per_subscriber_max",
    "subscribers_with_problems",
];

/// The preset the connections are planned with: client ids `loadgen-sub-{i}` (with a
/// process token under a clean session, as `loadgen pub`'s).
const CONN_PRESET: publisher_core::Preset = publisher_core::Preset {
    name: "loadgen sub",
    about: "",
    device_id: "sensor-{i:05}",
    client_id: "loadgen-sub-{i}",
    batch: "1",
    batch_why: "",
    examples: "",
};

impl Plan {
    pub fn from_args(a: FleetSubArgs) -> Result<Plan, Error> {
        if a.clients == 0 {
            return Err(Error::usage("--clients must be at least 1"));
        }
        if a.clients > u32::MAX as u64 {
            return Err(Error::usage("--clients must be at most 4294967295"));
        }
        // Thresholds name this report's fields, not the publisher's.
        let mut a = a;
        let thresholds = mqtt_tool::threshold::parse_all(
            &std::mem::take(&mut a.output.export.thresholds),
            &threshold_fields(),
        )?;
        let mut filters = Vec::with_capacity(a.topics.len());
        for t in &a.topics {
            let tpl = mqtt_engine::template::Template::parse(t, false, "--topic")
                .map_err(|e| Error::usage(e.0))?;
            // The filter as subscriber 0 has it: MQTT's rules hold for every index.
            backend_core::check_filter(&tpl.render(0, ""))?;
            filters.push(tpl);
        }
        if let Some(g) = &a.share_group {
            if g.is_empty() || g.contains(['/', '+', '#']) {
                return Err(Error::usage(format!(
                    "--share-group '{g}' must be a name without '/', '+' or '#'"
                )));
            }
        }
        if a.share_group.is_some() && a.expect_per_client.is_some() {
            return Err(Error::usage(
                "a share group divides the points between its members: give --expect (the total), not --expect-per-client",
            ));
        }
        if a.output.hdr_log.is_some() {
            return Err(Error::usage(
                "--hdr-log is not supported with --clients yet; the JSON report has the latencies, --metrics-addr the counts live",
            ));
        }
        if a.first_message_timeout.is_zero() {
            return Err(Error::usage(
                "--first-message-timeout must be longer than 0s",
            ));
        }
        if a.idle_timeout.is_zero() {
            return Err(Error::usage("--idle-timeout must be longer than 0s"));
        }
        if a.duration == Some(Duration::ZERO) {
            return Err(Error::usage("--duration must be longer than 0s"));
        }
        if a.max_devices == 0 {
            return Err(Error::usage("--max-devices must be at least 1"));
        }
        let any_packet = a.connection.max_packet_size.is_none();
        let qos = a.qos;
        // The connections as the publisher plans its fleet's: one "device" a connection,
        // sending nothing.
        // The connections as the publisher's fleet would send: nothing is sent, and a
        // subscriber fleet verifies what it receives itself.
        let load = LoadArgs {
            device_id: None,
            topic: "device_data/{device_id}".into(),
            rate: mqtt_tool::args::Rate::Unlimited,
            rate_per_device: None,
            batch: 1,
            total: Some(a.clients),
            duration: None,
            qos: mqtt_tool::args::Qos::AtMostOnce,
            max_inflight: Some(1),
            max_queued: Some(64),
            drain_timeout: Duration::from_secs(5),
            start_delay: Duration::ZERO,
            sensor_fields: false,
            seed: 1,
        };
        let pargs = PublisherArgs::connections_only(
            a.connection,
            load,
            a.clients,
            a.ramp,
            a.reconnect,
            a.output,
        );
        let conn = publisher_core::plan::Plan::from_args(pargs, &CONN_PRESET)?;
        let rules = Rules {
            expect_per_client: a.expect_per_client,
            expect: a.expect,
            at_least_once: a.at_least_once,
            share_group: a.share_group.is_some(),
        };
        Ok(Plan {
            conn,
            clients: a.clients,
            subscribe: mqtt_engine::SubscribeSettings {
                filters,
                options: mqtt_engine::packets::SubOptions::at(qos),
                share_group: a.share_group,
                first_index: 0,
            },
            topics: a.topics,
            rules,
            idle_timeout: a.idle_timeout,
            first_message_timeout: a.first_message_timeout,
            duration: a.duration,
            max_devices: usize::try_from(a.max_devices).unwrap_or(usize::MAX),
            any_packet,
            thresholds,
        })
    }
}

pub fn command() -> Command {
    let cmd = FleetSubArgs::augment_args(Command::new("loadgen sub").version(env!("CARGO_PKG_VERSION")))
        .about("A subscriber fleet: N subscribers on the engine's workers, each proving every point it gets")
        .after_help(format!(
            "Examples:
  # fan-out: 1,000 subscribers of every device; each must get 6,000 points (say 10 devices x 600)
  loadgen sub --clients 1000 --topic 'device_data/#' --expect-per-client 6000 --report-json subs.json
  # one-to-one: subscriber i takes device sensor-{{i:05}}
  loadgen sub --clients 1000 --topic 'device_data/sensor-{{i:05}}' --qos 1

{}",
            mqtt_tool::error::exit_codes_help(&[
                ("0", "every subscriber got what it should, exactly once"),
                ("3", "the broker cannot be reached"),
                ("4", "the broker refused the connections"),
                ("5", "verification failed: a subscriber missed, duplicated or failed"),
            ])
        ));
    mqtt_tool::cli::threshold_help(
        cmd,
        &threshold_fields(),
        &["points_per_subscriber_min>=6000", "e2e_latency_p99<50ms"],
    )
}

/// Whether `loadgen sub`'s arguments ask for a subscriber fleet.
pub fn wants_fleet(argv: &[OsString]) -> bool {
    argv.iter().any(|a| {
        a.to_str()
            .is_some_and(|s| s == "--clients" || s.starts_with("--clients="))
    })
}

/// Parses `argv` (the program's name first) into a plan.
pub fn parse_plan(argv: Vec<OsString>) -> Result<Plan, mqtt_tool::config::ParseExit> {
    let (a, sources) = mqtt_tool::config::parse_layered_sourced::<FleetSubArgs>(command(), argv)?;
    Plan::from_args(a)
        .map_err(|e| mqtt_tool::config::ParseExit::Usage(sources.annotate(&e.to_string())))
}

pub fn main_with_args(argv: Vec<OsString>) -> ExitCode {
    mqtt_tool::run_main(
        move || parse_plan(argv),
        "stopping, writing the report",
        |plan, shutdown| async move { run(&plan, &shutdown).await },
    )
}

/// What happened to the subscriber connections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Connections {
    pub planned: u64,
    pub connected: u64,
    /// Subscribers whose SUBSCRIBE was granted.
    pub subscribed: u64,
    /// Failed connects, by reason; refused subscriptions by their code.
    pub failed: BTreeMap<String, u64>,
    pub lost: u64,
    pub reconnects: u64,
    /// Connections up with their session kept (persistent sessions).
    pub sessions_resumed: u64,
    /// Deliveries on such connections (what the broker queued among them).
    pub queued_deliveries: u64,
    /// QoS 2 PUBLISHes repeated before their PUBREL: answered, not delivered twice.
    pub qos2_repeats: u64,
    /// Subscribers by the lowest QoS their SUBACK granted ("0", "1", "2"): below `qos`, the
    /// broker capped it (Mosquitto's `max_qos`, a broker's maximum QoS).
    pub granted_qos: BTreeMap<String, u64>,
}

/// The report of a subscriber fleet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    #[serde(flatten)]
    pub header: ReportHeader,
    pub clients: u64,
    pub topics: Vec<String>,
    pub qos: u8,
    pub share_group: Option<String>,
    pub expect_per_client: Option<u64>,
    pub expect: Option<u64>,
    pub at_least_once: bool,
    pub duration_s: f64,
    pub connections: Connections,
    /// SUBSCRIBE -> SUBACK, µs.
    pub suback_latency_us: Option<Percentiles>,
    /// The phases of every connect that got through them (reconnects included): TCP
    /// connect, TLS handshake, CONNECT -> CONNACK, µs.
    pub connect_phases_us: Phases,
    /// The histograms behind the latencies above, which `loadgen merge` adds up exactly.
    pub histograms: SubHistograms,
    /// The proof: per subscriber, summed (see fleet-verify.schema.json).
    pub fleet: FleetStats,
    /// Why the verdict failed (none: passed).
    pub failure: Option<String>,
    /// `loadgen merge`: how many reports this one adds up (none: one run's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_reports: Option<u64>,
}

/// The connect phases' and the SUBACK latency's histograms, encoded as
/// [`mqtt_tool::hist::encode`] does (null: none measured, or a report from before them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubHistograms {
    #[serde(flatten)]
    pub phases: PhaseHistograms,
    pub suback_us: Option<String>,
}

impl Report {
    pub fn rules(&self) -> Rules {
        Rules {
            expect_per_client: self.expect_per_client,
            expect: self.expect,
            at_least_once: self.at_least_once,
            share_group: self.share_group.is_some(),
        }
    }

    /// Subscribers granted less than the asked QoS, as a line (none: every one got it).
    pub fn downgraded(&self) -> Option<String> {
        let below: Vec<String> = self
            .connections
            .granted_qos
            .iter()
            .filter(|(q, _)| q.parse::<u8>().is_ok_and(|q| q < self.qos))
            .map(|(q, n)| format!("{n} at QoS {q}"))
            .collect();
        (!below.is_empty()).then(|| {
            format!(
                "{} of {} subscribers (asked {}): the broker caps the QoS it grants",
                below.join(", "),
                self.connections.subscribed,
                self.qos
            )
        })
    }

    /// Judges the proof and the connections: the failure line, if any.
    pub fn judge_verdict(&mut self) {
        let v = self.fleet.verdict(&self.rules());
        self.failure = (!v.pass).then(|| v.why.join("; "));
    }
}

impl Summarize for Report {
    fn summary(&self) -> Summary {
        let mut s = self.fleet.summary(&self.header.tool, &self.rules());
        s.row(
            "subscribers subscribed",
            format!(
                "{} of {}",
                self.connections.subscribed, self.connections.planned
            ),
        );
        if let Some(p) = &self.suback_latency_us {
            s.row("SUBACK latency", mqtt_tool::summary::fmt_percentiles_ms(p));
        }
        for (label, line) in self.connect_phases_us.lines() {
            s.row(label, line);
        }
        if let Some(line) = self.downgraded() {
            s.row("granted QoS", line);
        }
        s.thresholds(&self.header.thresholds, &threshold_fields());
        s
    }
}

impl FramedReport for Report {
    fn header_mut(&mut self) -> &mut ReportHeader {
        &mut self.header
    }
    fn judge(&mut self, thresholds: &[mqtt_tool::threshold::Threshold]) {
        if thresholds.is_empty() {
            return;
        }
        let mut v = serde_json::to_value(&*self).unwrap_or_default();
        let f = &self.fleet;
        let ends = |sp: &backend_core::fleet_verify::Spread| [sp.min(), sp.median(), sp.max()];
        let [pmin, pmed, pmax] = ends(&f.points_per_subscriber);
        let [dmin, dmed, dmax] = ends(&f.deliveries_per_subscriber);
        let failing = f.subscribers_with_problems.len() as u64 + f.subscribers_with_problems_more;
        let values = [pmin, pmed, pmax, dmin, dmed, dmax, Some(failing)];
        if let Some(o) = v.as_object_mut() {
            for (name, value) in DERIVED.iter().zip(values) {
                o.insert(name.to_string(), serde_json::json!(value));
            }
        }
        self.header.thresholds = mqtt_tool::threshold::judge(thresholds, &v);
    }
    fn render_text(&self) -> String {
        let mut o = format!("== {} summary\n", self.header.tool);
        let c = &self.connections;
        o.push_str(&format!("broker              {}\n", self.header.broker));
        o.push_str(&format!(
            "connections         {} planned, {} connected, {} subscribed, {} lost, {} reconnects\n",
            c.planned, c.connected, c.subscribed, c.lost, c.reconnects
        ));
        for (why, n) in &c.failed {
            o.push_str(&format!("  failed            {n} {why}\n"));
        }
        if let Some(line) = self.downgraded() {
            o.push_str(&format!("granted QoS         {line}\n"));
        }
        if c.sessions_resumed > 0 {
            o.push_str(&format!(
                "sessions resumed    {} ({} deliveries on them)\n",
                c.sessions_resumed, c.queued_deliveries
            ));
        }
        if let Some(p) = &self.suback_latency_us {
            o.push_str(&format!(
                "SUBACK latency      {}\n",
                mqtt_tool::summary::fmt_percentiles_ms(p)
            ));
        }
        for (label, line) in self.connect_phases_us.lines() {
            o.push_str(&format!("{label:<20}{line}\n"));
        }
        o.push_str(&self.fleet.render_text(&self.rules()));
        o
    }
}

/// What `--metrics-addr` and `--metrics-push` read while the fleet runs: the engine's
/// connection figures and connect phases (as `loadgen conn` serves them), and the
/// subscribers' deliveries and points.
#[derive(Debug, Default)]
struct LiveSub {
    engine: Arc<publisher_core::observe::LiveRun>,
    counts: std::sync::OnceLock<Vec<Arc<LiveCounts>>>,
}

fn exposition(e: &mut mqtt_tool::metrics::Exposition, live: &LiveSub) {
    let (mut deliveries, mut points) = (0u64, 0u64);
    for c in live.counts.get().into_iter().flatten() {
        deliveries += c.deliveries.load(Relaxed);
        points += c.points.load(Relaxed);
    }
    e.counter(
        "loadgen_sub_deliveries_total",
        "Messages delivered to the subscribers, summed over them.",
        deliveries,
    )
    .counter(
        "loadgen_sub_points_total",
        "Points in those messages, summed over the subscribers.",
        points,
    );
}

async fn run(plan: &Plan, shutdown: &Shutdown) -> Result<ExitCode, Error> {
    let p = &plan.conn;
    let live = Arc::new(LiveSub::default());
    let engine = publisher_core::observe::families(TOOL, Arc::new(p.clone()), live.engine.clone());
    let sub = live.clone();
    let families: mqtt_tool::metrics::Families = Arc::new(move |e| {
        engine(e);
        exposition(e, &sub);
    });
    let mut frame = RunFrame::open(
        p.metrics.clone(),
        p.exports.clone(),
        plan.thresholds.clone(),
        families,
    )?;
    let result = run_framed(plan, shutdown, &mut frame, &live).await;
    frame.close(result, shutdown).await
}

/// How often `sub --clients` prints its progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The progress line's state: when the next is due, and the deliveries at the last.
struct Progress {
    next: Instant,
    deliveries: u64,
    at: Instant,
}

impl Progress {
    /// The line at `now`, and the next one due a second later.
    #[allow(clippy::too_many_arguments)]
    fn line(
        &mut self,
        now: Instant,
        deliveries: u64,
        points: u64,
        expected: Option<u64>,
        clients: u64,
        subscribed: u64,
        up: u64,
    ) -> String {
        use mqtt_tool::format::{fmt_int, fmt_rate};
        let secs = now
            .saturating_duration_since(self.at)
            .as_secs_f64()
            .max(1e-3);
        let rate = deliveries.saturating_sub(self.deliveries) as f64 / secs;
        (self.next, self.deliveries, self.at) = (now + PROGRESS_EVERY, deliveries, now);
        let of = expected.map_or(String::new(), |n| format!(" of {}", fmt_int(n)));
        format!(
            "subscribers {} of {} subscribed, {} up | {} deliveries ({}/s) | {} points{of}",
            fmt_int(subscribed),
            fmt_int(clients),
            fmt_int(up),
            fmt_int(deliveries),
            fmt_rate(rate),
            fmt_int(points),
        )
    }
}

async fn run_framed(
    plan: &Plan,
    shutdown: &Shutdown,
    frame: &mut RunFrame,
    live: &LiveSub,
) -> Result<ExitCode, Error> {
    let p = &plan.conn;
    let target = frame.broker(&p.connect).await?;
    let addrs = publisher_core::fleet_addrs(&target, &p.fleet.source_ips).await?;
    let mut settings = p.fleet_settings(addrs);
    if plan.any_packet {
        settings.conn.max_packet_size = mqtt_tool::connect::MQTT_MAX_PACKET as usize;
    }
    let workers = settings.workers.max(1);
    let lives: Vec<Arc<LiveCounts>> = (0..workers).map(|_| Arc::default()).collect();
    let _ = live.counts.set(lives.clone());
    let finished = Arc::new(Finished::default());
    let clock = Clock::now();
    let started_wall = std::time::SystemTime::now();
    let (max_devices, fin, ls) = (plan.max_devices, finished.clone(), lives.clone());
    let fleet =
        mqtt_engine::Fleet::start_subscribers(settings, plan.subscribe.clone(), move |w, subs| {
            FleetConsumer::new(subs, max_devices, clock, ls[w].clone(), fin.clone())
        })
        .map_err(|e| Error::failed("cannot start the workers", e))?;
    let handle = fleet.handle();
    let _ = live.engine.fleet.set(fleet.handle());
    let mut joined = tokio::task::spawn_blocking(move || fleet.join());
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut stopped = false;
    let mut all_subscribed: Option<Instant> = None;
    let expected_points = plan
        .rules
        .expect_per_client
        .map(|n| n.saturating_mul(plan.clients))
        .or(plan.rules.expect);
    let quiet = p.quiet;
    // A progress line a second (not with --quiet): subscribers, deliveries and their rate.
    let mut progress = Progress {
        next: Instant::now() + PROGRESS_EVERY,
        deliveries: 0,
        at: Instant::now(),
    };
    let result = loop {
        tokio::select! {
            r = &mut joined => break r.map_err(|e| Error::failed("the workers failed", e))?,
            _ = shutdown.stop.cancelled(), if !stopped => {
                stopped = true;
                handle.stop();
            }
            _ = shutdown.abort.cancelled() => handle.abort(),
            _ = tick.tick(), if !stopped => {
                let now = Instant::now();
                let subscribed = handle.subscribed();
                // Every subscriber granted, refused or given up (the ramp settled and the
                // failed ones counted).
                let answered = subscribed + handle.refused() + handle.live().failed;
                if all_subscribed.is_none()
                    && (subscribed >= plan.clients
                        || (handle.settled_at().is_some() && answered >= plan.clients))
                {
                    all_subscribed = Some(now);
                    // The line a bench or a test waits for before it starts publishing.
                    mqtt_tool::errln!("subscribed: {subscribed} of {} subscribers", plan.clients);
                    if subscribed == 0 {
                        stopped = true;
                        handle.stop();
                        continue;
                    }
                }
                let points: u64 = lives.iter().map(|l| l.points.load(Relaxed)).sum();
                if !quiet && now >= progress.next {
                    let deliveries = lives.iter().map(|l| l.deliveries.load(Relaxed)).sum();
                    mqtt_tool::errln!(
                        "{}",
                        progress.line(now, deliveries, points, expected_points, plan.clients, subscribed, handle.live().up)
                    );
                }
                let Some(since) = all_subscribed else { continue };
                let last_us = lives.iter().map(|l| l.last_us.load(Relaxed)).max().unwrap_or(0);
                let idle = last_us > 0 && {
                    let last = clock.epoch + Duration::from_micros(last_us - 1);
                    now.saturating_duration_since(last) >= plan.idle_timeout
                };
                let waited = now.saturating_duration_since(since);
                let silent = last_us == 0 && waited >= plan.first_message_timeout;
                let over = plan.duration.is_some_and(|d| waited >= d);
                let enough = expected_points.is_some_and(|n| points >= n);
                if idle || over || enough || silent {
                    if !quiet {
                        let why = if enough {
                            "the expected points arrived"
                        } else if over {
                            "--duration is over"
                        } else if silent {
                            "--first-message-timeout: no message arrived"
                        } else {
                            "--idle-timeout: nothing more arrived"
                        };
                        mqtt_tool::errln!("stopping: {why}");
                    }
                    stopped = true;
                    handle.stop();
                }
            }
        }
    };
    let signal = shutdown.signal();
    let st = &result.stats;
    let c = &st.conns;
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    for (f, n) in &c.gave_up {
        *failed
            .entry(mqtt_tool::mqtt::describe_failure(
                f,
                p.connect.connect_timeout,
            ))
            .or_default() += n;
    }
    for (code, n) in &st.sub.refused {
        *failed
            .entry(format!(
                "subscription refused (0x{code:02x} {})",
                mqtt_engine::error::reason_name(*code)
            ))
            .or_default() += n;
    }
    if c.down_at_end > 0 {
        *failed.entry("lost and not back".into()).or_default() += c.down_at_end;
    }
    let (phases, phase_histograms) =
        Phases::of(&st.histos.tcp_us, &st.histos.tls_us, &st.histos.connack_us);
    let mut fleet = finished.stats(&plan.rules);
    fleet.subscribers_planned = plan.clients;
    fleet.subscribers_connected = st.sub.subscribed;
    fleet.subscribers_failed = failed.clone();
    let mut header = ReportHeader::new(TOOL, SCHEMA_VERSION, target.url(), frame.run_id());
    header.started_at = Some(mqtt_tool::frame::rfc3339(started_wall));
    header.ended_at = Some(mqtt_tool::frame::rfc3339(std::time::SystemTime::now()));
    let mut report = Report {
        header,
        clients: plan.clients,
        topics: plan.topics.clone(),
        qos: plan.subscribe.options.qos.level(),
        share_group: plan.subscribe.share_group.clone(),
        expect_per_client: plan.rules.expect_per_client,
        expect: plan.rules.expect,
        at_least_once: plan.rules.at_least_once,
        duration_s: clock.epoch.elapsed().as_secs_f64(),
        connections: Connections {
            planned: c.planned,
            connected: c.connected,
            subscribed: st.sub.subscribed,
            failed,
            lost: c.lost,
            reconnects: c.reconnects,
            sessions_resumed: st.sub.resumed,
            queued_deliveries: st.sub.queued_deliveries,
            qos2_repeats: st.sub.qos2_repeats,
            granted_qos: st
                .sub
                .granted_qos
                .iter()
                .map(|(q, n)| (q.to_string(), *n))
                .collect(),
        },
        suback_latency_us: Percentiles::of(&st.sub.suback_us),
        connect_phases_us: phases,
        histograms: SubHistograms {
            phases: phase_histograms,
            suback_us: mqtt_tool::hist::encode(&st.sub.suback_us),
        },
        fleet,
        failure: None,
        merged_reports: None,
    };
    report.judge_verdict();
    frame.report(&mut report).await?;
    let verdict = match &report.failure {
        None => Ok(ExitCode::SUCCESS),
        Some(r) => {
            if signal.is_none() {
                mqtt_tool::errln!("verification failed: {}", mqtt_tool::out::escape(r));
            }
            Ok(ExitCode::from(mqtt_tool::error::code::VERIFY_FAILED))
        }
    };
    // No subscriber connected at all: the broker's failure (exit 3 or 4), as for `pub`.
    let not_started = signal
        .is_none()
        .then(|| {
            publisher_core::none_connected(
                &result.stats.conns,
                p.connect.connect_timeout,
                &target.url(),
            )
        })
        .flatten();
    mqtt_tool::frame::exit(signal, not_started, &report.header, verdict)
}

/// `loadgen merge` of subscriber-fleet reports (processes of one share group, or fleets
/// split over machines): every count added exactly, the proof with [`FleetStats::merge`],
/// the verdict judged again on the sum (`expect`: the total a share group must get).
/// The latencies of the reports being merged, added up exactly from their histograms. A
/// report from before they were kept adds nothing to the phases; its SUBACK percentiles,
/// which cannot be added, leave the merged report with none rather than part of them.
#[derive(Default)]
struct Latencies {
    phases: PhaseMerge,
    suback: Option<hdrhistogram::Histogram<u64>>,
    suback_partial: bool,
}

impl Latencies {
    fn add(&mut self, name: &str, r: &Report) -> Result<(), Error> {
        let c = Check { report: name };
        self.phases.add(&c, &r.histograms.phases)?;
        add_histogram(
            &mut self.suback,
            c.histogram("suback", &r.histograms.suback_us)?,
        )?;
        self.suback_partial |= r.suback_latency_us.is_some() && r.histograms.suback_us.is_none();
        Ok(())
    }

    fn finish(self, sum: &mut Report) {
        (sum.connect_phases_us, sum.histograms.phases) = self.phases.finish();
        let suback = self.suback.filter(|_| !self.suback_partial);
        sum.suback_latency_us = suback.as_ref().and_then(Percentiles::of);
        sum.histograms.suback_us = suback.as_ref().and_then(mqtt_tool::hist::encode);
    }
}

pub fn merge(reports: Vec<(String, Report)>, expect: Option<u64>) -> Result<Report, Error> {
    let mut it = reports.into_iter();
    let Some((first_name, mut sum)) = it.next() else {
        return Err(Error::usage("no subscriber-fleet report to merge"));
    };
    let mut merged = 1u64;
    let mut latencies = Latencies::default();
    latencies.add(&first_name, &sum)?;
    for (name, r) in it {
        if (&r.topics, r.qos, &r.share_group) != (&sum.topics, sum.qos, &sum.share_group) {
            return Err(Error::usage(format!(
                "{name} subscribed to other topics, QoS or share group than {first_name}: merge one run's reports"
            )));
        }
        let overflow = |f: &str| Error::usage(format!("{name}: {f} add up past 2^64"));
        let add = |a: &mut u64, b: u64, f: &str| -> Result<(), Error> {
            *a = a.checked_add(b).ok_or_else(|| overflow(f))?;
            Ok(())
        };
        add(&mut sum.clients, r.clients, "clients")?;
        let (c, o) = (&mut sum.connections, &r.connections);
        add(&mut c.planned, o.planned, "connections.planned")?;
        add(&mut c.connected, o.connected, "connections.connected")?;
        add(&mut c.subscribed, o.subscribed, "connections.subscribed")?;
        add(&mut c.lost, o.lost, "connections.lost")?;
        add(&mut c.reconnects, o.reconnects, "connections.reconnects")?;
        add(
            &mut c.sessions_resumed,
            o.sessions_resumed,
            "connections.sessions_resumed",
        )?;
        add(
            &mut c.queued_deliveries,
            o.queued_deliveries,
            "connections.queued_deliveries",
        )?;
        add(
            &mut c.qos2_repeats,
            o.qos2_repeats,
            "connections.qos2_repeats",
        )?;
        for (why, n) in &o.failed {
            add(
                c.failed.entry(why.clone()).or_default(),
                *n,
                "connections.failed",
            )?;
        }
        for (q, n) in &o.granted_qos {
            add(
                c.granted_qos.entry(q.clone()).or_default(),
                *n,
                "connections.granted_qos",
            )?;
        }
        sum.fleet
            .merge(&r.fleet)
            .map_err(|e| Error::usage(format!("{name}: {e}")))?;
        latencies.add(&name, &r)?;
        sum.duration_s = sum.duration_s.max(r.duration_s);
        let (h, o) = (&mut sum.header, &r.header);
        // RFC 3339 UTC to the microsecond: the text orders as the time does.
        h.started_at = match (h.started_at.take(), o.started_at.clone()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        h.ended_at = h.ended_at.take().max(o.ended_at.clone());
        merged += 1;
    }
    if expect.is_some() {
        sum.expect = expect;
    }
    sum.merged_reports = Some(merged);
    latencies.finish(&mut sum);
    // The shards' own thresholds judged their own figures: the merge judges anew.
    sum.header.thresholds.clear();
    sum.judge_verdict();
    Ok(sum)
}
