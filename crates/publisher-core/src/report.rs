//! The final report: one struct, rendered as a text summary and exported as JSON.
//!
//! The JSON shape is committed as `schema/publisher-report.schema.json`; a test validates
//! real output against it. Bump [`SCHEMA_VERSION`] when a field changes meaning or goes away.
//! A single device reads as it always did; a fleet adds its devices, connections, connect
//! latency, workers and whether the generator was the limit, in a summary that stays a few
//! lines long for 100,000 devices.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use mqtt_engine::stats::Stats;
use mqtt_engine::FleetResult;
use serde::{Deserialize, Serialize};

use crate::broker::BrokerTarget;
use crate::error::Error;
use crate::format::{fmt_int, fmt_percentiles, fmt_rate, round3, Percentiles};
use crate::plan::Plan;
use crate::shutdown::Signal;
use mqtt_tool::frame::ReportHeader;
use mqtt_tool::merge::{fmt_ranges, IndexRange};
use mqtt_tool::mqtt::{describe_failure, describe_lost, failure_key};
use mqtt_tool::threshold::{Fields, Unit};

pub const SCHEMA_VERSION: u32 = 5;

/// The fields `--threshold` may name, with where each is in the report.
pub fn threshold_fields() -> Fields {
    Fields::default()
        .numbers(&["point_rate"], Unit::Named("points/s"))
        .numbers(&["message_rate"], Unit::Named("messages/s"))
        .numbers(&["bytes_per_s"], Unit::Named("bytes/s"))
        .numbers(&["steady_point_rate"], Unit::Named("points/s"))
        .numbers(
            &[
                "points_sent",
                "points_acked",
                "points_failed",
                "points_rejected",
                "points_unsent",
                "points_dropped",
                "points_dropped_offline",
                "messages_sent",
                "messages_acked",
                "messages_resent",
                "pubrels_resent",
                "duplicate_acks",
                "acks_unknown_id",
                "latency_clamped",
                "schedule_lag_clamped",
                "reconnects",
                "bytes_sent",
            ],
            Unit::Number,
        )
        .numbers(&["target_pct"], Unit::Percent)
        .numbers(&["elapsed_s", "disconnected_s"], Unit::Seconds)
        .field(
            "connections_connected",
            "/connections/connected",
            Unit::Number,
        )
        .field("connections_failed", "/connections/failed", Unit::Number)
        .field("connections_lost", "/connections/lost", Unit::Number)
        .field("connection_losses", "/connections/losses", Unit::Number)
        .field(
            "connections_down_at_end",
            "/connections/down_at_end",
            Unit::Number,
        )
        .field("takeovers", "/connections/takeovers", Unit::Number)
        .field(
            "connections_client_id_in_use",
            "/connections/client_id_in_use",
            Unit::Number,
        )
        .field("ramp_s", "/connections/ramp_s", Unit::Seconds)
        .field("peak_rss_mb", "/generator/peak_rss_mb", Unit::Named("MB"))
        .field("cpu_s", "/generator/cpu_s", Unit::Seconds)
        .latency("ack_latency", "/latency_us")
        .latency("schedule_lag", "/schedule_lag_us")
        .latency("connect_latency", "/connect_latency_us")
        // --verify's delivery section.
        .field("delivery_expected", "/delivery/expected", Unit::Number)
        .field("delivery_delivered", "/delivery/delivered", Unit::Number)
        .field("delivery_unique", "/delivery/unique", Unit::Number)
        .field("delivery_missing", "/delivery/missing", Unit::Number)
        .field("delivery_duplicate", "/delivery/duplicate", Unit::Number)
        .field(
            "delivery_out_of_order",
            "/delivery/out_of_order",
            Unit::Number,
        )
        .field("delivery_unexpected", "/delivery/unexpected", Unit::Number)
        .field("delivery_malformed", "/delivery/malformed", Unit::Number)
        .field(
            "delivery_devices_with_problems",
            "/delivery/devices_with_problems",
            Unit::Number,
        )
        .latency("e2e_latency", "/delivery/e2e_latency_us")
}

/// The run's histograms, HdrHistogram V2 + DEFLATE in base64 ([`mqtt_tool::hist`]): what
/// `loadgen merge` adds up exactly. Null when empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistogramsReport {
    pub ack_us: Option<String>,
    pub lag_us: Option<String>,
    pub connect_us: Option<String>,
    /// The connect phases' (`tcp_us`, `tls_us`, `connack_us`; absent in older reports).
    #[serde(flatten)]
    pub phases: mqtt_tool::phases::PhaseHistograms,
}

/// A merged report's sources: how many reports, which shards, which are missing; shards as
/// ranges (`"1-99999"`, `"5"`), so the lists are as long as the reports given, never as long
/// as the run's shard count.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MergedReport {
    pub reports: u64,
    pub shards_present: Vec<IndexRange>,
    pub shards_missing: Vec<IndexRange>,
    /// Shards given more than once (only the first is counted).
    pub shards_duplicated: Vec<IndexRange>,
}

/// What happened to the fleet's connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionsReport {
    pub planned: u64,
    /// Connect attempts, retries included.
    pub attempts: u64,
    pub connected: u64,
    /// Given up after their last attempt.
    pub failed: u64,
    /// Connections lost at least once after they were up.
    pub lost: u64,
    /// Losses of connections that were up: events, one connection may be lost many times.
    pub losses: u64,
    /// Not up yet when generation ended: the ramp took longer than the run.
    pub not_up: u64,
    /// Connections that reconnected after a loss, at least once.
    pub reconnected: u64,
    /// Reconnects whose broker had lost the persistent session.
    pub sessions_lost: u64,
    /// First connects (`--clean-session false`) whose broker still held a session of that
    /// client id from before: an earlier run's or another client's.
    pub sessions_resumed: u64,
    /// MQTT 5 DISCONNECTs from the broker, by reason, as "0x95 packet too large".
    pub disconnects_by_reason: BTreeMap<String, u64>,
    /// Lost and not back when the run ended (a fatal refusal, or the run ended first).
    pub down_at_end: u64,
    /// Losses to another client that connected with the same client id: the broker said
    /// so (MQTT 5 DISCONNECT 0x8E), or it closed a healthy connection of a run with one
    /// connection (MQTT 3.1.1 brokers only close).
    #[serde(default)]
    pub takeovers: u64,
    /// Connections taken over again shortly after each reconnect: another client (a second
    /// copy of this run) keeps taking the client id. Fails the run.
    #[serde(default)]
    pub client_id_in_use: u64,
    /// Connections given up, by the reason of their last attempt.
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Every failed attempt, by reason.
    pub attempts_failed_by_reason: BTreeMap<String, u64>,
    /// From the first connect attempt to the moment every connection was up or given up;
    /// null if that never happened.
    pub ramp_s: Option<f64>,
}

/// What the generator itself cost, and whether it was the limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GeneratorReport {
    pub workers: usize,
    /// CPU seconds of the workers together.
    pub cpu_s: f64,
    /// The busiest worker's CPU, in % of one core over its run.
    pub busiest_worker_cpu_pct: f64,
    pub peak_rss_mb: f64,
    /// The schedule lag grew over the run (paced runs).
    pub lag_grew: bool,
    /// The generator, not the broker, set the figures: CPU saturated and the schedule slipped.
    pub limited: bool,
    /// What to change, when something was the limit.
    pub note: Option<String>,
}

/// One worker's share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerReport {
    pub worker: usize,
    pub connections: u64,
    pub points_sent: u64,
    pub cpu_pct: f64,
}

/// Everything a run reports. Every point generated is in exactly one of `points_acked`,
/// `points_failed` (QoS 1: sent, no PUBACK), `points_unsent` (never completely written),
/// or — at QoS 0 — simply sent; `points_dropped` were due and never generated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// tool, version, broker, window, run id, pushes, thresholds: every report's.
    #[serde(flatten)]
    pub header: ReportHeader,
    pub broker_embedded: bool,
    /// The client id (a fleet: its template).
    pub client_id: String,
    /// The device id (a fleet: its template).
    pub device_id: String,
    /// The topic (a fleet: its template).
    pub topic: String,
    pub qos: u8,
    /// "3.1.1" or "5".
    pub mqtt_version: String,
    /// MQTT 5: the smallest Receive Maximum the broker gave, and the connections whose
    /// QoS 1 window it made smaller than --max-inflight.
    pub receive_maximum: Option<u16>,
    pub window_clamped: u64,
    pub batch: u64,
    /// Points per second of the fleet; null = as fast as possible.
    pub target_rate: Option<f64>,
    /// Points planned: the total, or devices x rate x duration for a paced run; null when
    /// that is open (as fast as possible until the duration ends).
    pub points_planned: Option<u64>,
    /// QoS 1 window and queue of each connection.
    pub max_inflight: u16,
    pub max_queued: u64,
    pub points_enqueued: u64,
    pub points_sent: u64,
    /// Null at QoS 0, where the broker acknowledges nothing.
    pub points_acked: Option<u64>,
    pub points_failed: u64,
    /// MQTT 5: the broker's PUBACK refused them (a reason code of 0x80 or more).
    pub points_rejected: u64,
    /// Rejected messages by reason, as "0x87 not authorized".
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub points_unsent: u64,
    /// Due and never generated: a device's connection failed, was lost, or could not take
    /// them before the run ended.
    pub points_dropped: u64,
    /// Fell due while their connection was down, beyond `--offline-buffer`: their seqs
    /// were skipped.
    pub points_dropped_offline: u64,
    pub messages_sent: u64,
    /// Written again on a new connection after theirs was lost unacknowledged (QoS 1 and
    /// 2; at QoS 2 the PUBLISHes whose PUBREC had not come); counted once in `messages_sent`.
    pub messages_resent: u64,
    /// QoS 2: PUBRELs written again within a resumed session for messages whose PUBREC had
    /// come and whose PUBCOMP had not (their PUBLISH is not resent). Absent in older reports.
    #[serde(default)]
    pub pubrels_resent: u64,
    /// Reconnects that got their CONNACK, over all connections.
    pub reconnects: u64,
    /// Time connections spent down after a loss, summed over connections.
    pub disconnected_s: f64,
    pub messages_acked: Option<u64>,
    /// PUBACKs for messages already acknowledged (a broker repeating itself): ignored.
    pub duplicate_acks: u64,
    /// PUBACKs for packet ids the connection never used (a broker's error, or a session
    /// resumed from an earlier client): ignored.
    pub acks_unknown_id: u64,
    /// Payload bytes written to the socket.
    pub bytes_sent: u64,
    pub elapsed_s: f64,
    pub point_rate: f64,
    pub message_rate: f64,
    pub bytes_per_s: f64,
    /// Achieved point rate as a percentage of the target; null when unpaced.
    pub target_pct: Option<f64>,
    /// Points per second from the end of the ramp to the end of generation; null when the
    /// ramp did not end before generation did.
    pub steady_point_rate: Option<f64>,
    /// Scheduled send time -> PUBACK, microseconds (QoS 1).
    pub latency_us: Option<Percentiles>,
    /// Scheduled send time -> written to the socket, microseconds (paced runs).
    pub schedule_lag_us: Option<Percentiles>,
    /// Latencies and lags beyond the histograms' ceiling (1 h), recorded at it.
    pub latency_clamped: u64,
    pub schedule_lag_clamped: u64,
    pub devices: u64,
    pub device_start: u64,
    pub connections: ConnectionsReport,
    /// Connect started -> CONNACK, microseconds.
    pub connect_latency_us: Option<Percentiles>,
    /// The phases of every connect (reconnects included): TCP, TLS, CONNECT -> CONNACK.
    /// Older reports have none: null.
    #[serde(default)]
    pub connect_phases_us: mqtt_tool::phases::Phases,
    pub generator: GeneratorReport,
    pub per_worker: Vec<WorkerReport>,
    /// "complete", "interrupted" or "incomplete".
    pub outcome: String,
    /// The signal that stopped the run, if any.
    pub interrupted_by: Option<String>,
    /// The signal came before any connection was up: nothing was sent.
    pub interrupted_connecting: bool,
    /// Why the run did not deliver everything, if it did not.
    pub error: Option<String>,
    /// `--shards`: this report's shard (0 and 1 when the run was not sharded).
    pub shard: u64,
    pub shards: u64,
    // The header's window: generation's start (the anchor) and the last write or
    // acknowledgement; null when nothing was sent.
    /// `--start-at`: the instant every shard of the run waited for, RFC 3339 UTC.
    pub start_at: Option<String>,
    pub histograms: HistogramsReport,
    /// Set by `loadgen merge`: what the report was merged from.
    pub merged: Option<MergedReport>,
    /// `--verify`: what the in-process subscriber received of the fleet (null without it).
    #[serde(default)]
    pub delivery: Option<mqtt_tool::delivery::Delivery>,
    /// A lost connection's reconnect was refused for good (credentials, authorization): the
    /// run exits 4.
    #[serde(skip)]
    pub refused_on_reconnect: bool,
    /// No connection came up: the run exits as the broker's failure (3 or 4), after the
    /// report is written.
    #[serde(skip)]
    pub start_failure: Option<StartFailure>,
}

/// Why no connection of the run came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFailure {
    /// Exit 3: refused, timed out, not MQTT, a TLS failure, the broker unavailable for now.
    Unreachable,
    /// Exit 4: the broker refused for good (credentials, authorization, client id, version).
    Refused,
}

impl StartFailure {
    /// The run's error, `reason` being the report's.
    pub fn into_error(self, broker: String, reason: String) -> Error {
        match self {
            StartFailure::Unreachable => Error::Unreachable { broker, reason },
            StartFailure::Refused => Error::Refused { broker, reason },
        }
    }
}

/// What the run frame measured around the engine.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Whether the broker accepted a new TCP connection right after a connection was lost.
    pub broker_up: Option<bool>,
    /// Points sent when the ramp ended, and when generation ended (from progress samples).
    pub steady: Option<(Instant, u64, Instant, u64)>,
    pub peak_rss_bytes: u64,
}

fn pct(cpu: Duration, wall: Duration) -> f64 {
    if wall.is_zero() {
        0.0
    } else {
        round3(100.0 * cpu.as_secs_f64() / wall.as_secs_f64())
    }
}

/// Whether the per-second schedule lag grew over the run: the last third clearly above the
/// first (a generator or a broker that falls further behind every second).
fn lag_grew(lag_max_ms: &[u32]) -> bool {
    if lag_max_ms.len() < 6 {
        return false;
    }
    let third = lag_max_ms.len() / 3;
    let median = |s: &[u32]| {
        let mut v = s.to_vec();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let first = median(&lag_max_ms[..third]);
    let last = median(&lag_max_ms[lag_max_ms.len() - third..]);
    last >= 50 && last > first.saturating_mul(4).max(first + 50)
}

/// Whether the generator (or the broker) was the limit: (lag grew, generator limited, what
/// to change). The generator is the limit when its busiest worker's CPU is saturated and
/// the schedule slips (or, unpaced, whenever it is saturated); a lag that grows while the
/// generator idles is the broker's or the network's.
fn judge(
    paced: bool,
    busiest_pct: f64,
    lag_max_ms: &[u32],
    lag_p99_ms: u64,
) -> (bool, bool, Option<String>) {
    let grew = paced && lag_grew(lag_max_ms);
    let saturated = busiest_pct >= 90.0;
    let limited = saturated && (!paced || grew || lag_p99_ms >= 100);
    let note = if limited {
        Some(format!(
            "the generator was the limit: its busiest worker used {busiest_pct:.0}% of a core{}; \
             these figures measure this machine, not the broker: add --workers or run the \
             fleet as shards (--device-start) on more machines",
            if grew {
                " and the schedule lag kept growing"
            } else {
                ""
            }
        ))
    } else if grew {
        Some(format!(
            "the broker (or the network) fell behind: the schedule lag kept growing while the \
             generator's busiest worker used {busiest_pct:.0}% of a core"
        ))
    } else {
        None
    };
    (grew, limited, note)
}

impl mqtt_tool::frame::FramedReport for Report {
    fn header_mut(&mut self) -> &mut ReportHeader {
        &mut self.header
    }
    fn judge(&mut self, thresholds: &[mqtt_tool::threshold::Threshold]) {
        Report::judge(self, thresholds)
    }
    fn render_text(&self) -> String {
        let mut text = Report::render_text(self);
        if let Some(d) = &self.delivery {
            text.push_str(&d.render_text());
        }
        text
    }
}

impl Report {
    pub fn build(
        tool: &str,
        plan: &Plan,
        target: &BrokerTarget,
        result: &FleetResult,
        observed: &Observed,
        signal: Option<Signal>,
    ) -> Report {
        let st: &Stats = &result.stats;
        let t = st.counts;
        // QoS 1 and 2: every message answered (PUBACK, PUBCOMP) or counted as not.
        let acknowledged = plan.qos.acknowledged();
        let anchor = result.anchor;
        let finished = match (st.last_write, st.last_ack) {
            (Some(a), Some(b)) if acknowledged => Some(a.max(b)),
            (w, a) => {
                if acknowledged {
                    a.or(w)
                } else {
                    w
                }
            }
        };
        let elapsed = match (anchor, finished) {
            (Some(a), Some(f)) => f.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let per_s = |n: u64| {
            if elapsed > 0.0 {
                n as f64 / elapsed
            } else {
                0.0
            }
        };
        let point_rate = per_s(t.points_sent);
        let points_failed = if acknowledged {
            t.points_sent
                .saturating_sub(t.points_acked)
                .saturating_sub(t.points_rejected)
        } else {
            0
        };
        let points_unsent = t.points_enqueued - t.points_sent.min(t.points_enqueued);
        let c = &st.conns;
        let nothing_up = c.connected == 0;
        let connect_timeout = plan.connect.connect_timeout;

        let mut problems = Vec::new();
        if c.failed > 0 && !(nothing_up && plan.fleet.connections == 1) {
            let reasons: Vec<String> = c
                .gave_up
                .iter()
                .map(|(f, n)| format!("{} ({})", describe_failure(f, connect_timeout), fmt_int(*n)))
                .collect();
            problems.push(format!(
                "{} of {} connections failed: {}",
                fmt_int(c.failed),
                fmt_int(c.planned),
                reasons.join("; ")
            ));
        }
        if c.not_up > 0 {
            problems.push(format!(
                "{} of {} connections were not up yet when generation ended (the ramp takes {:.1} s at \
                 --connect-rate): their devices sent nothing; raise --connect-rate or lengthen the run",
                fmt_int(c.not_up),
                fmt_int(c.planned),
                match plan.fleet.connect_rate {
                    Some(r) => c.planned as f64 / r,
                    None => 0.0,
                }
            ));
        }
        if c.client_id_in_use > 0 {
            let first = client_id_of(plan, c.first_in_use.unwrap_or(0));
            problems.push(format!(
                "{}{}",
                mqtt_tool::mqtt::client_id_in_use(&first),
                if c.client_id_in_use > 1 {
                    format!(
                        "; {} connections' client ids are in use",
                        fmt_int(c.client_id_in_use)
                    )
                } else {
                    String::new()
                }
            ));
        }
        let reconnecting = plan.reconnect.is_some();
        // With reconnects, a loss that came back is no problem of its own: what it did not
        // deliver shows in the counts below.
        if c.lost > 0 && (!reconnecting || c.down_at_end > 0) {
            let (index, lost) = &c.first_losses[0];
            let client = client_id_of(plan, *index);
            let text = describe_lost(lost, &client, &target.url(), observed.broker_up);
            let refused: Vec<String> = c
                .gave_up
                .iter()
                .filter(|(f, _)| f.is_fatal() && f.is_refusal())
                .map(|(f, n)| format!("{} ({})", describe_failure(f, connect_timeout), fmt_int(*n)))
                .collect();
            problems.push(if reconnecting {
                format!(
                    "{} of {} connections were lost and not back when the run ended{}; the first loss, {}: {text}",
                    fmt_int(c.down_at_end),
                    fmt_int(c.planned),
                    {
                        let mut why = Vec::new();
                        if !refused.is_empty() {
                            why.push(format!("reconnecting was refused: {}", refused.join("; ")));
                        }
                        let fatal: Vec<String> = c
                            .gave_up
                            .iter()
                            .filter(|(f, _)| f.is_fatal() && !f.is_refusal())
                            .map(|(f, n)| {
                                format!("{} ({})", describe_failure(f, connect_timeout), fmt_int(*n))
                            })
                            .collect();
                        if !fatal.is_empty() {
                            why.push(format!(
                                "reconnecting failed for good: {}",
                                fatal.join("; ")
                            ));
                        }
                        if c.flapping > 0 {
                            why.push(format!(
                                "{} given up after {} losses in a row with no progress between them",
                                fmt_int(c.flapping),
                                mqtt_engine::MAX_LOSSES_WITHOUT_PROGRESS
                            ));
                        }
                        if c.client_id_in_use > 0 {
                            why.push(format!(
                                "{} taken over again shortly after reconnecting: their client id is in use",
                                fmt_int(c.client_id_in_use)
                            ));
                        }
                        if c.down_too_long > 0 {
                            why.push(format!(
                                "{} given up after --reconnect-timeout {}",
                                fmt_int(c.down_too_long),
                                humantime::format_duration(
                                    plan.reconnect.as_ref().map_or(Duration::ZERO, |r| r.give_up_after)
                                )
                            ));
                        }
                        if why.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", why.join("; "))
                        }
                    },
                    crate::out::escape(&client)
                )
            } else if plan.fleet.connections == 1 {
                text
            } else {
                format!(
                    "{} of {} connections were lost; the first, {}: {text}",
                    fmt_int(c.lost),
                    fmt_int(c.planned),
                    crate::out::escape(&client)
                )
            });
        }
        if points_unsent > 0 {
            problems.push(format!(
                "{} points were never written to the socket",
                fmt_int(points_unsent)
            ));
        }
        if points_failed > 0 {
            // After a loss that came back, what stayed unacknowledged did so on the new
            // connection, within the drain.
            problems.push(if c.lost > 0 && (!reconnecting || c.down_at_end > 0) {
                format!(
                    "{} points were sent but not acknowledged before the connection was lost",
                    fmt_int(points_failed)
                )
            } else {
                format!(
                    "{} points were not acknowledged within --drain-timeout",
                    fmt_int(points_failed)
                )
            });
        }
        if t.points_rejected > 0 {
            let reasons: Vec<String> = st
                .rejected_by_reason
                .iter()
                .map(|(code, n)| {
                    format!(
                        "0x{code:02x} {} ({} messages)",
                        mqtt_engine::error::reason_name(*code),
                        fmt_int(*n)
                    )
                })
                .collect();
            problems.push(format!(
                "{} points were rejected by the broker: {}",
                fmt_int(t.points_rejected),
                reasons.join(", ")
            ));
        }
        let refusals: Vec<String> = c
            .disconnects
            .iter()
            .filter(|(code, _)| !acknowledged && mqtt_engine::error::refuses_a_packet(**code))
            .map(|(code, n)| {
                format!(
                    "0x{code:02x} {} ({})",
                    mqtt_engine::error::reason_name(*code),
                    fmt_int(*n)
                )
            })
            .collect();
        if !refusals.is_empty() {
            problems.push(format!(
                "the broker ended connections with DISCONNECT {}: it refused a message, and at \
                 QoS 0 the points it refused cannot be told from those it took (--qos 1 counts them)",
                refusals.join(", ")
            ));
        }
        if t.points_dropped_offline > 0 {
            problems.push(format!(
                "{} points fell due while their connection was down and overflowed --offline-buffer \
                 ({} points a device): they were dropped and their seqs skipped",
                fmt_int(t.points_dropped_offline),
                fmt_int(plan.reconnect.as_ref().map_or(0, |r| r.offline_buffer))
            ));
        }
        if t.points_dropped > 0 {
            problems.push(format!(
                "{} points due were never generated (their connection was gone or could not take them)",
                fmt_int(t.points_dropped)
            ));
        }
        // What the user asked for (N x r x D points, or the total) is either generated or
        // counted by reason above; a shortfall no reason explains is no silent success.
        let points_planned = plan.schedule().planned();
        let accounted = t
            .points_enqueued
            .saturating_add(t.points_dropped)
            .saturating_add(t.points_dropped_offline);
        if let Some(planned) = points_planned.filter(|p| signal.is_none() && accounted < *p) {
            problems.push(format!(
                "{} of the {} points planned were never generated",
                fmt_int(planned - accounted),
                fmt_int(planned)
            ));
        }
        if st.cut_short && problems.is_empty() {
            problems.push("the flush was cut short".into());
        }
        let error = (!problems.is_empty()).then(|| problems.join("; "));
        let outcome = match (signal, &error) {
            (Some(_), _) => "interrupted",
            (None, Some(_)) => "incomplete",
            (None, None) => "complete",
        };

        let busiest = result
            .per_worker
            .iter()
            .map(|w| pct(w.cpu, w.wall))
            .fold(0.0, f64::max);
        let (phases, phase_histograms) = mqtt_tool::phases::Phases::of(
            &st.histos.tcp_us,
            &st.histos.tls_us,
            &st.histos.connack_us,
        );
        let lag_p99_ms = st.histos.lag_us.value_at_quantile(0.99) / 1000;
        let (grew, limited, note) = judge(plan.rate.is_some(), busiest, &st.lag_max_ms, lag_p99_ms);
        let steady_point_rate = observed.steady.and_then(|(t0, p0, t1, p1)| {
            let dt = t1.saturating_duration_since(t0).as_secs_f64();
            (dt >= 1.0).then(|| round3((p1.saturating_sub(p0)) as f64 / dt))
        });
        let name = |t: &mqtt_engine::template::Template, one: &str| {
            if plan.is_fleet() || plan.fleet.connections > 1 {
                t.to_string()
            } else {
                one.to_string()
            }
        };
        Report {
            header: ReportHeader {
                started_at: anchor
                    .filter(|_| finished.is_some())
                    .map(|a| rfc3339(result.wall(a))),
                ended_at: finished.map(|f| rfc3339(result.wall(f))),
                ..ReportHeader::new(tool, SCHEMA_VERSION, target.url(), &plan.metrics.run_id)
            },
            broker_embedded: target.embedded,
            client_id: name(&plan.fleet.client_id, &plan.connect.client_id),
            device_id: name(&plan.device_id_template, &plan.device_id),
            topic: name(&plan.topic_template, &plan.topic),
            qos: plan.qos.level(),
            mqtt_version: if plan.mqtt5.is_some() { "5" } else { "3.1.1" }.into(),
            receive_maximum: c.receive_maximum,
            window_clamped: c.window_clamped,
            batch: plan.batch as u64,
            target_rate: plan.rate,
            points_planned,
            max_inflight: plan.max_inflight,
            max_queued: plan.max_queued as u64,
            points_enqueued: t.points_enqueued,
            points_sent: t.points_sent,
            points_acked: acknowledged.then_some(t.points_acked),
            points_failed,
            points_rejected: t.points_rejected,
            rejected_by_reason: st
                .rejected_by_reason
                .iter()
                .map(|(code, n)| {
                    (
                        format!("0x{code:02x} {}", mqtt_engine::error::reason_name(*code)),
                        *n,
                    )
                })
                .collect(),
            points_unsent,
            points_dropped: t.points_dropped,
            points_dropped_offline: t.points_dropped_offline,
            messages_sent: t.messages_sent,
            messages_resent: t.messages_resent,
            pubrels_resent: t.pubrels_resent,
            reconnects: c.reconnects,
            disconnected_s: round3(c.disconnected.as_secs_f64()),
            messages_acked: acknowledged.then_some(t.messages_acked),
            duplicate_acks: t.duplicate_acks,
            acks_unknown_id: t.acks_unknown_id,
            latency_clamped: t.latency_clamped,
            schedule_lag_clamped: t.lag_clamped,
            bytes_sent: t.bytes_sent,
            elapsed_s: round3(elapsed),
            point_rate: round3(point_rate),
            message_rate: round3(per_s(t.messages_sent)),
            bytes_per_s: round3(per_s(t.bytes_sent)),
            target_pct: plan.rate.map(|r| round3(100.0 * point_rate / r)),
            steady_point_rate,
            latency_us: if acknowledged {
                Percentiles::of(&st.histos.ack_us)
            } else {
                None
            },
            schedule_lag_us: if plan.rate.is_some() {
                Percentiles::of(&st.histos.lag_us)
            } else {
                None
            },
            devices: plan.fleet.devices,
            device_start: plan.fleet.device_start,
            connections: ConnectionsReport {
                planned: c.planned,
                attempts: c.attempts,
                connected: c.connected,
                failed: c.failed,
                lost: c.lost,
                losses: c.losses,
                not_up: c.not_up,
                reconnected: c.reconnected,
                sessions_lost: c.sessions_lost,
                sessions_resumed: c.sessions_resumed,
                disconnects_by_reason: c
                    .disconnects
                    .iter()
                    .map(|(code, n)| {
                        (
                            format!("0x{code:02x} {}", mqtt_engine::error::reason_name(*code)),
                            *n,
                        )
                    })
                    .collect(),
                down_at_end: c.down_at_end,
                takeovers: c.takeovers,
                client_id_in_use: c.client_id_in_use,
                failed_by_reason: c
                    .gave_up
                    .iter()
                    .map(|(f, n)| (failure_key(f), *n))
                    .collect(),
                attempts_failed_by_reason: c
                    .failures
                    .iter()
                    .map(|(f, n)| (failure_key(f), *n))
                    .collect(),
                ramp_s: result.settled_at.map(|s| {
                    let from = c.first_attempt.unwrap_or(result.started);
                    round3(s.saturating_duration_since(from).as_secs_f64())
                }),
            },
            connect_latency_us: Percentiles::of(&st.histos.connect_us),
            connect_phases_us: phases,
            generator: GeneratorReport {
                workers: result.per_worker.len(),
                cpu_s: round3(st.cpu.as_secs_f64()),
                busiest_worker_cpu_pct: round3(busiest),
                peak_rss_mb: round3(observed.peak_rss_bytes as f64 / (1 << 20) as f64),
                lag_grew: grew,
                limited,
                note,
            },
            per_worker: result
                .per_worker
                .iter()
                .enumerate()
                .map(|(i, w)| WorkerReport {
                    worker: i,
                    connections: w.conns.planned,
                    points_sent: w.counts.points_sent,
                    cpu_pct: pct(w.cpu, w.wall),
                })
                .collect(),
            outcome: outcome.into(),
            interrupted_by: signal.map(|s| s.name().to_string()),
            interrupted_connecting: signal.is_some() && nothing_up,
            error,
            shard: plan.shard.as_ref().map_or(0, |s| s.index),
            shards: plan.shard.as_ref().map_or(1, |s| s.count),
            start_at: plan.start_at.map(rfc3339),
            histograms: HistogramsReport {
                ack_us: if acknowledged {
                    mqtt_tool::hist::encode(&st.histos.ack_us)
                } else {
                    None
                },
                lag_us: if plan.rate.is_some() {
                    mqtt_tool::hist::encode(&st.histos.lag_us)
                } else {
                    None
                },
                connect_us: mqtt_tool::hist::encode(&st.histos.connect_us),
                phases: phase_histograms,
            },
            merged: None,
            delivery: None,
            refused_on_reconnect: c.refused_on_reconnect > 0,
            start_failure: None,
        }
    }

    /// Judges `thresholds` on this report and records the outcome in it.
    pub fn judge(&mut self, thresholds: &[mqtt_tool::threshold::Threshold]) {
        self.header.thresholds = mqtt_tool::threshold::judge_report(&*self, thresholds);
    }

    /// Records the run's `--metrics-push` pushes.
    pub fn pushed(&mut self, p: mqtt_tool::live::Pushes) {
        self.header.pushed(p);
    }

    /// Whether this report is of a fleet (its summary has the fleet's lines).
    fn is_fleet(&self) -> bool {
        self.devices > 1 || self.connections.planned > 1
    }

    /// No connection came up: `e` (unreachable or refused) is the run's error and exit code.
    pub fn not_started(&mut self, e: Error) {
        let (kind, reason) = match e {
            Error::Refused { reason, .. } => (StartFailure::Refused, reason),
            Error::Unreachable { reason, .. } => (StartFailure::Unreachable, reason),
            other => (StartFailure::Unreachable, other.to_string()),
        };
        self.error = Some(reason);
        if self.outcome == "complete" {
            self.outcome = "incomplete".into();
        }
        self.start_failure = Some(kind);
    }

    /// The human summary.
    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let mut line = |k: &str, v: String| o.push_str(&format!("{k:<20}{v}\n"));
        let esc = |s: &str| crate::out::escape(s).into_owned();
        line(&format!("== {} summary", self.header.tool), String::new());
        line(
            "broker",
            format!(
                "{}{}",
                self.header.broker,
                if self.broker_embedded {
                    " (embedded rumqttd)"
                } else {
                    ""
                }
            ),
        );
        line("topic", esc(&self.topic));
        if self.is_fleet() {
            line(
                "fleet",
                format!(
                    "{} devices ({}, from index {}) over {} connections, {} workers",
                    fmt_int(self.devices),
                    esc(&self.device_id),
                    fmt_int(self.device_start),
                    fmt_int(self.connections.planned),
                    self.generator.workers
                ),
            );
            let c = &self.connections;
            let mut conns = format!(
                "{} came up, {} failed, {} lost ({} losses), {} attempts",
                fmt_int(c.connected),
                fmt_int(c.failed),
                fmt_int(c.lost),
                fmt_int(c.losses),
                fmt_int(c.attempts)
            );
            if c.not_up > 0 {
                conns.push_str(&format!(
                    ", {} not up when generation ended",
                    fmt_int(c.not_up)
                ));
            }
            if !c.failed_by_reason.is_empty() {
                let reasons: Vec<String> = c
                    .failed_by_reason
                    .iter()
                    .map(|(k, n)| format!("{k}: {}", fmt_int(*n)))
                    .collect();
                conns.push_str(&format!("; failed: {}", reasons.join(", ")));
            }
            if let Some(r) = c.ramp_s {
                conns.push_str(&format!("; ramp {r:.1} s"));
            }
            line("connections", conns);
            if let Some(p) = &self.connect_latency_us {
                line("connect latency", fmt_percentiles(p, false));
            }
            for (k, v) in self.connect_phases_us.lines() {
                line(k, v);
            }
        }
        line("qos", self.qos.to_string());
        line(
            "batch",
            match self.batch {
                1 => "1 point per message (a single JSON object)".to_string(),
                b => format!("{} points per message", fmt_int(b)),
            },
        );
        let mut dropped = if self.points_dropped > 0 {
            format!(", {} dropped", fmt_int(self.points_dropped))
        } else {
            String::new()
        };
        if self.points_rejected > 0 {
            dropped.push_str(&format!(", {} rejected", fmt_int(self.points_rejected)));
        }
        if self.points_dropped_offline > 0 {
            dropped.push_str(&format!(
                ", {} dropped offline",
                fmt_int(self.points_dropped_offline)
            ));
        }
        let planned = self
            .points_planned
            .map_or(String::new(), |p| format!("{} planned, ", fmt_int(p)));
        line(
            "points",
            match self.points_acked {
                Some(acked) => format!(
                    "{planned}{} sent, {} acknowledged, {} failed, {} unsent{dropped}",
                    fmt_int(self.points_sent),
                    fmt_int(acked),
                    fmt_int(self.points_failed),
                    fmt_int(self.points_unsent)
                ),
                None => format!(
                    "{planned}{} sent, {} unsent{dropped}",
                    fmt_int(self.points_sent),
                    fmt_int(self.points_unsent)
                ),
            },
        );
        line(
            "messages",
            match self.messages_acked {
                Some(acked) => format!(
                    "{} sent, {} acknowledged",
                    fmt_int(self.messages_sent),
                    fmt_int(acked)
                ),
                None => format!("{} sent", fmt_int(self.messages_sent)),
            },
        );
        if self.reconnects > 0 || self.connections.lost > 0 {
            line(
                "faults",
                format!(
                    "{} lost, {} reconnects ({} connections), {:.3} s disconnected, {} messages resent{}{}",
                    fmt_int(self.connections.lost),
                    fmt_int(self.reconnects),
                    fmt_int(self.connections.reconnected),
                    self.disconnected_s,
                    fmt_int(self.messages_resent),
                    if self.pubrels_resent > 0 {
                        format!(", {} PUBRELs resent", fmt_int(self.pubrels_resent))
                    } else {
                        String::new()
                    },
                    if self.connections.sessions_lost > 0 {
                        format!(
                            ", {} sessions lost by the broker",
                            fmt_int(self.connections.sessions_lost)
                        )
                    } else {
                        String::new()
                    }
                ),
            );
        }
        if self.acks_unknown_id > 0 {
            line(
                "unknown acks",
                format!(
                    "{} PUBACKs for packet ids this run never used (ignored){}",
                    fmt_int(self.acks_unknown_id),
                    if self.connections.sessions_resumed > 0 {
                        ": an earlier client's session"
                    } else {
                        ""
                    }
                ),
            );
        }
        if self.connections.sessions_resumed > 0 {
            line(
                "sessions",
                format!(
                    "{} connections resumed a session the broker kept for their client id from \
                     before (--clean-session false): whatever it still held for that session \
                     (queued messages, unacknowledged ids) is the earlier client's, not this \
                     run's; use fresh client ids or --clean-session true for a run of its own",
                    fmt_int(self.connections.sessions_resumed)
                ),
            );
        }
        if self.connections.takeovers > 0 {
            line(
                "takeovers",
                format!(
                    "{} losses to another client that connected with the same client id{}",
                    fmt_int(self.connections.takeovers),
                    match self.connections.client_id_in_use {
                        0 => String::new(),
                        n => format!(
                            "; {} connections were taken over again shortly after each \
                             reconnect: their client id is in use by another client",
                            fmt_int(n)
                        ),
                    }
                ),
            );
        }
        if !self.connections.disconnects_by_reason.is_empty() {
            let list: Vec<String> = self
                .connections
                .disconnects_by_reason
                .iter()
                .map(|(r, n)| format!("{r} ({})", fmt_int(*n)))
                .collect();
            line("broker disconnects", list.join(", "));
        }
        if self.latency_clamped + self.schedule_lag_clamped > 0 {
            line(
                "clamped",
                format!(
                    "{} latencies and {} schedule lags beyond 1 h were recorded as 1 h",
                    fmt_int(self.latency_clamped),
                    fmt_int(self.schedule_lag_clamped)
                ),
            );
        }
        if self.duplicate_acks > 0 {
            line(
                "duplicate acks",
                format!(
                    "{} PUBACKs repeated an acknowledgement already counted (ignored)",
                    fmt_int(self.duplicate_acks)
                ),
            );
        }
        line(
            "bytes",
            format!(
                "{} payload bytes ({:.1} MB/s)",
                fmt_int(self.bytes_sent),
                self.bytes_per_s / 1e6
            ),
        );
        line("elapsed", format!("{:.3} s", self.elapsed_s));
        line(
            "point rate",
            format!("{} points/s", fmt_int(self.point_rate.round() as u64)),
        );
        line(
            "message rate",
            format!("{} messages/s", fmt_rate(self.message_rate)),
        );
        line(
            "target",
            match (self.target_rate, self.target_pct) {
                (Some(r), Some(pct)) => {
                    format!("{} points/s, achieved {pct:.2}%", fmt_rate(r))
                }
                _ => "as fast as possible".into(),
            },
        );
        if self.is_fleet() {
            if let (Some(steady), Some(target)) = (self.steady_point_rate, self.target_rate) {
                line(
                    "after the ramp",
                    format!(
                        "{} points/s ({:.2}% of target)",
                        fmt_rate(steady),
                        100.0 * steady / target
                    ),
                );
            }
        }
        if let Some(p) = &self.latency_us {
            line(
                "ack latency",
                format!("{}  (from scheduled send)", fmt_percentiles(p, true)),
            );
            if self.latency_includes_queueing() {
                line("", crate::summary::UNPACED_LATENCY_NOTE.to_string());
            }
        }
        if let Some(p) = &self.schedule_lag_us {
            line("schedule lag", fmt_percentiles(p, false));
        }
        if self.is_fleet() {
            line(
                "generator",
                format!(
                    "{:.2} CPU s on {} workers (busiest {:.0}% of a core), peak RSS {:.0} MB",
                    self.generator.cpu_s,
                    self.generator.workers,
                    self.generator.busiest_worker_cpu_pct,
                    self.generator.peak_rss_mb
                ),
            );
        }
        if let Some(note) = &self.generator.note {
            line("limit", note.clone());
        }
        if let Some(l) = self.header.push_failures_line() {
            line("metrics push", l);
        }
        if let Some(sig) = &self.interrupted_by {
            line(
                "interrupted",
                if self.interrupted_connecting {
                    format!("by {sig} while connecting: nothing was sent")
                } else {
                    format!("by {sig}")
                },
            );
        }
        if let Some(e) = &self.error {
            line("problem", crate::out::escape(e).into_owned());
        }
        if let Some(m) = &self.merged {
            line(
                "merged",
                format!(
                    "{} reports, shards {} of {}{}",
                    m.reports,
                    fmt_ranges(&m.shards_present),
                    self.shards,
                    if m.shards_missing.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; MISSING shards {} ({})",
                            fmt_ranges(&m.shards_missing),
                            fmt_int(m.shards_missing.iter().map(IndexRange::len).sum())
                        )
                    }
                ),
            );
        } else if self.shards > 1 {
            line("shard", format!("{} of {}", self.shard, self.shards));
        }
        for t in mqtt_tool::threshold::summary_lines(&self.header.thresholds) {
            line("threshold", crate::out::escape(&t).into_owned());
        }
        o
    }

    /// Writes the JSON report to `path` (`-` = stdout).
    pub fn write_json(&self, path: &Path) -> Result<(), Error> {
        crate::out::write_json(self, path)
    }
}

pub use mqtt_tool::frame::rfc3339;

/// The client id of connection `index`.
pub fn client_id_of(plan: &Plan, index: u64) -> String {
    plan.fleet.client_id.render(
        plan.fleet.device_start + plan_conn_first_device(plan, index),
        "",
    )
}

/// The first device of connection `index`, within the fleet.
fn plan_conn_first_device(plan: &Plan, index: u64) -> u64 {
    mqtt_engine::schedule::spread(plan.fleet.devices, plan.fleet.connections, index).start
}

#[cfg(test)]
mod tests {
    use super::{judge, lag_grew};

    #[test]
    fn the_generator_is_named_the_limit_only_when_it_is() {
        let growing = [1, 2, 3, 50, 200, 400, 800, 1600, 3200];
        let steady = [1, 2, 1, 2, 1, 2, 1, 2, 1];
        let (grew, limited, note) = judge(true, 97.0, &growing, 2_000);
        assert!(grew && limited);
        assert!(note.unwrap().contains("the generator was the limit"));
        let (grew, limited, note) = judge(true, 20.0, &growing, 2_000);
        assert!(grew && !limited);
        assert!(note
            .unwrap()
            .contains("the broker (or the network) fell behind"));
        assert_eq!(judge(true, 95.0, &steady, 2), (false, false, None));
        let (_, limited, _) = judge(false, 95.0, &[], 0);
        assert!(
            limited,
            "unpaced and saturated: the rate is the generator's"
        );
        assert_eq!(judge(false, 50.0, &[], 0), (false, false, None));
    }

    #[test]
    fn growing_lag_is_told_from_steady_lag() {
        assert!(!lag_grew(&[1, 2, 1, 2, 1, 2, 1, 2, 1]));
        assert!(
            !lag_grew(&[300, 310, 305, 300, 310, 305]),
            "steady, if high"
        );
        assert!(lag_grew(&[1, 2, 3, 50, 200, 400, 800, 1600, 3200]));
        assert!(!lag_grew(&[1, 2]), "too short to tell");
    }
}
