//! What a run shows while it goes on, besides the progress line: the Prometheus metrics of
//! `--metrics-addr`, and the HdrHistogram interval log of `--hdr-log`. Both read the fleet's
//! live totals and the histograms its workers hand over about five times a second.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mqtt_engine::stats::Histos;
use mqtt_engine::FleetHandle;
use mqtt_tool::hist::CumulativeLog;
use mqtt_tool::metrics::Exposition;

use crate::error::Error;
use crate::plan::Plan;

/// What the metrics read: the fleet once it runs, and the figures only its end knows.
#[derive(Debug, Default)]
pub struct LiveRun {
    pub fleet: std::sync::OnceLock<FleetHandle>,
    /// Set once the drain has ended (0 before): sent and never acknowledged.
    pub points_failed: AtomicU64,
}

impl LiveRun {
    /// Records what only the report knows (`loadgen_run_finished` follows, from
    /// [`mqtt_tool::live::LiveMetrics::finish`]).
    pub fn finished(&self, report: &crate::Report) {
        self.points_failed.store(report.points_failed, Relaxed);
    }
}

/// The families of one scrape (the run's label and `loadgen_run_finished` come from
/// [`mqtt_tool::live`]).
pub fn exposition(e: &mut Exposition, tool: &str, plan: &Plan, run: &LiveRun) {
    let (t, h) = match run.fleet.get() {
        Some(f) => (f.live(), f.live_histos()),
        None => (Default::default(), Histos::default()),
    };
    let shard = plan.shard.as_ref();
    e.info(
        "loadgen_info",
        mqtt_tool::live::INFO_HELP,
        &[
            ("tool", tool.to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("shard", shard.map_or(0, |s| s.index).to_string()),
            ("shards", shard.map_or(1, |s| s.count).to_string()),
        ],
    )
    .counter(
        "loadgen_points_sent_total",
        "Points written completely to the socket.",
        t.points_sent,
    )
    .counter(
        "loadgen_points_acked_total",
        "Points whose message the broker acknowledged (QoS 1).",
        t.points_acked,
    )
    .counter(
        "loadgen_points_failed_total",
        "Points sent and never acknowledged: known when the drain ends, 0 before.",
        run.points_failed.load(Relaxed),
    )
    .counter(
        "loadgen_points_dropped_total",
        "Points due and never sent: their connection was down or full.",
        t.points_dropped,
    )
    .counter(
        "loadgen_points_rejected_total",
        "Points the broker refused with an MQTT 5 reason code.",
        t.points_rejected,
    )
    .counter(
        "loadgen_messages_sent_total",
        "MQTT messages written completely to the socket.",
        t.messages_sent,
    )
    .counter(
        "loadgen_messages_acked_total",
        "MQTT messages acknowledged by a PUBACK.",
        t.messages_acked,
    )
    .counter(
        "loadgen_bytes_sent_total",
        "Payload bytes written to the socket.",
        t.bytes_sent,
    )
    .counter(
        "loadgen_connections_failed_total",
        "Connections given up after their last connect attempt.",
        t.failed,
    )
    .counter(
        "loadgen_connections_lost_total",
        "Connections lost after they were up.",
        t.lost,
    )
    .counter(
        "loadgen_reconnects_total",
        "Reconnects that got their CONNACK.",
        t.reconnects,
    )
    .counter(
        "loadgen_takeovers_total",
        "Losses to another client that connected with the same client id.",
        t.takeovers,
    )
    .counter(
        "loadgen_client_id_in_use_total",
        "Connections whose client id another client kept taking (two copies of a run).",
        t.client_id_in_use,
    )
    .gauge("loadgen_connections_up", "Connections up now.", t.up as f64)
    .gauge(
        "loadgen_messages_inflight",
        "QoS 1 messages awaiting their PUBACK now.",
        t.inflight as f64,
    )
    .gauge(
        "loadgen_target_points_per_second",
        "The target rate of this process (0: as fast as possible).",
        plan.rate.unwrap_or(0.0),
    )
    .histogram_us(
        "loadgen_ack_latency_seconds",
        "Scheduled send time to PUBACK (QoS 1).",
        &h.ack_us,
    )
    .histogram_us(
        "loadgen_schedule_lag_seconds",
        "Scheduled send time to written to the socket (paced runs).",
        &h.lag_us,
    );
    mqtt_tool::phases::expose(e, &h.tcp_us, &h.tls_us, &h.connack_us);
}

/// `--hdr-log`: one interval a second of each latency histogram (tags `ack`, `lag`), the
/// difference between the workers' hand-overs; the last interval comes from the run's final
/// histograms, so the intervals add up to the report's exactly.
pub struct HdrLog {
    log: CumulativeLog,
    qos: crate::args::Qos,
    paced: bool,
}

impl HdrLog {
    pub fn create(path: &Path, tool: &str, plan: &Plan, started: Instant) -> Result<Self, Error> {
        let comment = format!(
            "{tool} {}: latencies in microseconds; tags: ack (scheduled send to PUBACK, or PUBCOMP at QoS 2), lag (scheduled send to written)",
            env!("CARGO_PKG_VERSION")
        );
        Ok(HdrLog {
            log: CumulativeLog::create(path, started, &comment)?,
            qos: plan.qos,
            paced: plan.rate.is_some(),
        })
    }

    /// Writes the interval up to `at`, from `now_histos` (cumulative).
    pub fn interval(&mut self, now_histos: &Histos, at: Instant) -> std::io::Result<()> {
        let mut tags: Vec<(&str, &Histogram<u64>)> = Vec::new();
        if self.qos.acknowledged() {
            tags.push(("ack", &now_histos.ack_us));
        }
        if self.paced {
            tags.push(("lag", &now_histos.lag_us));
        }
        self.log.interval(&tags, at)
    }
}

/// Writes `--hdr-log` intervals beside the fleet until `stop`; returns the log for its last
/// interval.
pub async fn watch(
    fleet: FleetHandle,
    mut log: Option<HdrLog>,
    stop: tokio_util::sync::CancellationToken,
) -> Option<HdrLog> {
    log.as_ref()?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Some(l) = &mut log {
            if let Err(e) = l.interval(&fleet.live_histos(), Instant::now()) {
                mqtt_tool::errln!("warning: --hdr-log stopped: {e}");
                log = None;
            }
        }
    }
    log
}

/// Names a takeover and a client id in use on stderr as soon as the fleet sees them (the
/// report counts them at the end): the first of each, and the count when more follow.
pub struct CollisionNotes {
    client_id_of: Box<dyn Fn(u64) -> String + Send>,
    takeovers: u64,
    in_use: u64,
}

impl CollisionNotes {
    pub fn new(plan: &Plan) -> CollisionNotes {
        let plan = plan.clone();
        CollisionNotes {
            client_id_of: Box::new(move |c| crate::report::client_id_of(&plan, c)),
            takeovers: 0,
            in_use: 0,
        }
    }

    /// The lines to print since the last call.
    pub fn news(&mut self, fleet: &FleetHandle, t: &mqtt_engine::stats::LiveTotals) -> Vec<String> {
        let mut lines = Vec::new();
        if t.takeovers == self.takeovers && t.client_id_in_use == self.in_use {
            return lines;
        }
        let (takeover, in_use) = fleet.collisions();
        if self.takeovers == 0 {
            if let Some((c, how)) = takeover {
                lines.push(format!(
                    "warning: {}",
                    mqtt_tool::mqtt::taken_over(&(self.client_id_of)(c), how)
                ));
            }
        }
        if self.in_use == 0 {
            if let Some(c) = in_use {
                lines.push(format!(
                    "error: {}",
                    mqtt_tool::mqtt::client_id_in_use(&(self.client_id_of)(c))
                ));
            }
        }
        if t.client_id_in_use > self.in_use.max(1) {
            lines.push(format!(
                "error: {} connections' client ids are in use by other clients",
                crate::format::fmt_int(t.client_id_in_use)
            ));
        }
        self.takeovers = t.takeovers;
        self.in_use = t.client_id_in_use;
        lines
    }
}

/// The metrics families of a run.
pub fn families(
    tool: &'static str,
    plan: Arc<Plan>,
    run: Arc<LiveRun>,
) -> mqtt_tool::metrics::Families {
    Arc::new(move |e| exposition(e, tool, &plan, &run))
}
