//! The backend's verdict and report: text summary and JSON (schema in
//! `schema/backend-report.schema.json`).

use serde::{Deserialize, Serialize};

use mqtt_tool::format::Percentiles;
use mqtt_tool::format::{fmt_int, fmt_percentiles, round3};
use mqtt_tool::frame::ReportHeader;
use mqtt_tool::out::escape;
use mqtt_tool::threshold::{Fields, Unit};

/// The wall-clock time of `t`, an instant of this run, as the report writes it.
fn wall(t: std::time::Instant) -> String {
    let ago = std::time::Instant::now().saturating_duration_since(t);
    let at = std::time::SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(std::time::UNIX_EPOCH);
    humantime::format_rfc3339_micros(at).to_string()
}

use crate::outage::{intersect, subtract, LISTED_OUTAGES};
use crate::receive::{Received, Stop};
use crate::verify::SeqRange;
use crate::Plan;

/// A wall-clock time in seconds, as the report writes it.
fn wall_s(t: f64) -> String {
    let at = std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::from_secs_f64(if t.is_finite() {
            t.clamp(0.0, 1e12)
        } else {
            0.0
        }))
        .unwrap_or(std::time::UNIX_EPOCH);
    humantime::format_rfc3339_micros(at).to_string()
}

/// Wall-clock seconds now.
fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What this backend missed while it was itself disconnected.
struct Missed {
    /// Of the devices' gaps.
    gaps: u64,
    /// With `--expect`: the points that never came after the last one that did, when the
    /// stream ended while this backend was away.
    tail: u64,
}

impl Missed {
    fn of(plan: &Plan, rx: &Received, devices: &[DeviceReport], missing: u64) -> Missed {
        if plan.share_group.is_some() {
            return Missed { gaps: 0, tail: 0 };
        }
        let gaps = devices
            .iter()
            .fold(0u64, |a, d| a.saturating_add(d.missed_disconnected));
        let short = plan.expect.map_or(0, |n| n.saturating_sub(rx.unique));
        let beyond = short.saturating_sub(missing);
        // The newest point of any device was due within the last outage (so the stream
        // was flowing when this backend went, and nothing due after it came back arrived):
        // the rest of the stream went by meanwhile.
        let newest = rx
            .devices
            .iter()
            .map(|d| d.frontier_ts)
            .filter(|t| t.is_finite())
            .fold(f64::NEG_INFINITY, f64::max);
        let went_by = rx.outages.list.last().is_some_and(|o| {
            let (from, to) = o.window(now_s());
            !o.session_kept && (from..=to).contains(&newest)
        });
        Missed {
            gaps,
            tail: if went_by { beyond } else { 0 },
        }
    }

    fn total(&self) -> u64 {
        self.gaps.saturating_add(self.tail)
    }
}

pub const SCHEMA_VERSION: u32 = 5;

/// The latency histograms' ceiling, as the summary names it.
const CEILING: &str = "1h";

/// The fields `--threshold` may name, with where each is in the report.
pub fn threshold_fields() -> Fields {
    Fields::default()
        .numbers(
            &[
                "points_received",
                "points_unique",
                "points_missing",
                "points_missed_disconnected",
                "points_duplicate",
                "points_out_of_order",
                "points_unverifiable",
                "points_unrouted",
                "points_untracked",
                "latency_clamped",
                "messages_received",
                "packets_truncated",
                "malformed_messages",
                "retained_messages",
                "bytes_received",
            ],
            Unit::Number,
        )
        .numbers(&["point_rate"], Unit::Named("points/s"))
        .numbers(&["message_rate"], Unit::Named("messages/s"))
        .numbers(&["bytes_per_s"], Unit::Named("bytes/s"))
        .numbers(
            &[
                "connections_lost",
                "reconnects",
                "devices_seen",
                "devices_failing",
                "verified",
            ],
            Unit::Number,
        )
        .numbers(&["elapsed_s", "disconnected_s"], Unit::Seconds)
        .field("sink_rows_written", "/sink/rows_written", Unit::Number)
        .field("sink_rows_failed", "/sink/rows_failed", Unit::Number)
        .field("sink_rows_rejected", "/sink/rows_rejected", Unit::Number)
        .field("sink_rows_per_s", "/sink/rows_per_s", Unit::Named("rows/s"))
        .latency("e2e_latency", "/latency_us")
}

/// The end-to-end latency histogram, HdrHistogram V2 + DEFLATE in base64: what `loadgen
/// merge` adds up exactly over a share group's members.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistogramsReport {
    pub latency_us: Option<String>,
    /// The connect phases' (`tcp_us`, `tls_us`, `connack_us`) and SUBSCRIBE -> SUBACK
    /// (absent in older reports).
    #[serde(default, flatten)]
    pub phases: mqtt_tool::phases::PhaseHistograms,
    #[serde(default)]
    pub suback_us: Option<String>,
}

/// A fleet up to this size is listed whole; a larger one, without --report-devices, lists
/// its devices with a problem (the first this many) and names a few per frontend.
pub const LISTED_DEVICES: usize = 1_000;
/// Device ids a frontend names when its devices are not all listed.
pub const FRONTEND_NAMED: usize = 5;
/// The slowest devices named, by their highest latency.
pub const SLOWEST: usize = 10;

/// Seq ranges the whole report lists at most (missing and received, over all devices): a
/// fleet with gaps everywhere must not build gigabytes of lists at the end of its run.
pub const REPORT_RANGES_TOTAL: usize = 2_000_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceReport {
    pub device_id: String,
    pub frontend: Option<String>,
    pub received: u64,
    pub unique: u64,
    pub missing: u64,
    pub duplicate: u64,
    /// `--at-least-once`: its duplicates do not fail it.
    #[serde(skip)]
    pub duplicates_accepted: bool,
    pub out_of_order: u64,
    /// Arrived below the verification window: a duplicate or a very late point, unknown which.
    pub unverifiable: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub min_seq: Option<u64>,
    pub max_seq: Option<u64>,
    /// Gaps, as `1200-1299` or `5000` (at most 10,000 listed).
    pub missing_ranges: Vec<SeqRange>,
    /// Of `missing`, the points due while this backend was itself disconnected.
    #[serde(default)]
    pub missed_disconnected: u64,
    /// Their ranges (part of `missing_ranges`). In a share group, where nothing is judged
    /// missing here, the seqs this member could not receive, for `loadgen merge`.
    #[serde(default)]
    pub missed_disconnected_ranges: Vec<SeqRange>,
    /// `--accept-disconnected`: its points missed while disconnected do not fail it.
    #[serde(skip)]
    pub disconnected_accepted: bool,
    /// What arrived, as ranges (at most 10,000 listed): lets several backends' reports merge.
    pub received_ranges: Vec<SeqRange>,
    pub ranges_truncated: bool,
    /// Highest end-to-end latency of its points, µs (null: no point).
    pub latency_max_us: Option<u64>,
    /// Its first message was retained: stored on the topic before this backend subscribed.
    pub first_retained: bool,
}

/// One outage of this backend, as the report gives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutageReport {
    /// The last bytes read on the lost connection, RFC 3339 UTC.
    pub from: String,
    /// The first delivery after subscribing again (null: the run ended disconnected).
    pub to: Option<String>,
    /// Points due this long before `from` were still in flight, ms: counted missed too.
    pub margin_ms: f64,
    /// The broker kept the persistent session (QoS 1) across it and queued for it: nothing
    /// of it is excused.
    #[serde(default)]
    pub session_kept: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlowDevice {
    pub device_id: String,
    pub frontend: Option<String>,
    pub latency_max_us: u64,
}

impl DeviceReport {
    /// Missing, duplicate or unverifiable points: what fails verification. (A retained first
    /// message alone does not; the verdict names it only beside a failure.)
    pub fn failing(&self) -> bool {
        let excused = if self.disconnected_accepted {
            self.missed_disconnected
        } else {
            0
        };
        self.missing > excused
            || (self.duplicate > 0 && !self.duplicates_accepted)
            || self.unverifiable > 0
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrontendReport {
    pub name: String,
    pub points: u64,
    pub device_count: u64,
    /// Its device ids: all with --report-devices, else the first few.
    pub devices: Vec<String>,
    pub latency_us: Option<Percentiles>,
    /// Its latencies past the histogram's ceiling (an hour), recorded at it.
    #[serde(default)]
    pub latency_clamped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// tool, version, broker, window (first and last message), run id, pushes, thresholds: every report's.
    #[serde(flatten)]
    pub header: ReportHeader,
    pub broker_embedded: bool,
    pub topics: Vec<String>,
    pub qos: u8,
    pub share_group: Option<String>,
    pub expect: Option<u64>,
    /// `--at-least-once`: duplicates are counted but pass the verdict.
    pub at_least_once: bool,
    /// Connections to the broker lost, reconnects that came through, time spent away.
    pub connections_lost: u64,
    pub reconnects: u64,
    /// Losses to another client that connected with this client id (a second copy with
    /// the same --client-id): taken back in turn, it fails the run.
    #[serde(default)]
    pub takeovers: u64,
    pub disconnected_s: f64,
    /// `--read-hold`: at high rates reads wait this long for bytes to gather, so end-to-end
    /// latencies may be late by up to this much (0: every byte read as it came).
    pub read_hold_us: u64,
    pub points_received: u64,
    pub points_unique: u64,
    /// Null in a share group, where gaps belong to the other members.
    pub points_missing: Option<u64>,
    /// Points due while this backend was itself disconnected that never came: of
    /// `points_missing`, and with `--expect` the tail of a stream that ended meanwhile.
    /// Null in a share group.
    #[serde(default)]
    pub points_missed_disconnected: Option<u64>,
    /// `--accept-disconnected`: those pass the verdict (still counted and listed).
    #[serde(default)]
    pub accept_disconnected: bool,
    /// This backend's own outages (the first 100): from the last bytes read on the lost
    /// connection to the first delivery after subscribing again.
    #[serde(default)]
    pub outages: Vec<OutageReport>,
    pub points_duplicate: u64,
    pub points_out_of_order: u64,
    /// Arrived below a device's verification window (thousands of gaps behind its newest).
    pub points_unverifiable: u64,
    pub points_unrouted: u64,
    /// Points of devices beyond `--max-devices`: counted, not verified.
    pub points_untracked: u64,
    pub messages_received: u64,
    /// Packets begun and never whole (cut off by the end of a connection, or half sent
    /// before a silence); a PUBLISH the broker does not send again fails the verdict.
    #[serde(default)]
    pub packets_truncated: u64,
    pub legacy_messages: u64,
    pub batch_messages: u64,
    pub malformed_messages: u64,
    /// Delivered as retained: stored by the broker before this backend subscribed.
    pub retained_messages: u64,
    pub bytes_received: u64,
    /// First to last message.
    pub elapsed_s: f64,
    pub point_rate: f64,
    pub message_rate: f64,
    pub bytes_per_s: f64,
    /// Arrival minus the point's timestamp (publisher and backend share a clock), µs.
    pub latency_us: Option<Percentiles>,
    /// Latencies past the histogram's ceiling (an hour), recorded at it: the percentiles
    /// and the histogram hold them as an hour.
    #[serde(default)]
    pub latency_clamped: u64,
    /// Devices that sent at least one point (tracked ones: see --max-devices).
    pub devices_seen: u64,
    /// Devices with missing, duplicate or unverifiable points.
    pub devices_failing: u64,
    /// "all" (--report-devices, or at most 1,000 devices) or "failing" (those with a
    /// problem, the first 1,000).
    pub devices_listed: String,
    pub devices: Vec<DeviceReport>,
    /// The devices with the highest end-to-end latency (at most 10), slowest first.
    pub slowest_devices: Vec<SlowDevice>,
    pub frontends: Vec<FrontendReport>,
    /// expected | idle | first-message-timeout | duration | signal | failed
    pub stopped_by: String,
    pub verified: bool,
    /// Why verification failed, one line.
    pub reason: Option<String>,
    /// The phases of every connect that came through (the first and each reconnect), µs:
    /// TCP connect, TLS handshake, CONNECT -> CONNACK (absent in older reports).
    #[serde(default)]
    pub connect_phases_us: mqtt_tool::phases::Phases,
    /// SUBSCRIBE -> SUBACK, every subscription (reconnects included), µs.
    #[serde(default)]
    pub suback_latency_us: Option<Percentiles>,
    pub histograms: HistogramsReport,
    /// Set by `loadgen merge`: how many members' reports this one adds up.
    pub merged_reports: Option<u64>,
    /// `--sink`: rows stored, failed and rejected (absent without a sink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<crate::sink::SinkReport>,
}

impl mqtt_tool::frame::FramedReport for Report {
    fn header_mut(&mut self) -> &mut ReportHeader {
        &mut self.header
    }
    fn judge(&mut self, thresholds: &[mqtt_tool::threshold::Threshold]) {
        Report::judge(self, thresholds)
    }
    fn render_text(&self) -> String {
        Report::render_text(self)
    }
}

impl Report {
    pub fn build(tool: &str, plan: &Plan, broker: &str, embedded: bool, rx: &Received) -> Report {
        let shared = plan.share_group.is_some();
        let (connect_phases_us, phase_histograms, suback_latency_us, suback_us) =
            rx.phases.report();
        let list_all = plan.report_devices || rx.devices.len() <= LISTED_DEVICES;
        let from_zero = plan.expect.is_some();
        let mut ranges_left = REPORT_RANGES_TOTAL;
        let mut devices: Vec<DeviceReport> = rx
            .devices
            .iter()
            .map(|d| {
                let t = d.tracker.counts(&rx.pools);
                let missing = d.tracker.missing(&rx.pools, from_zero, ranges_left);
                ranges_left -= missing.ranges.len().min(ranges_left);
                let (received, received_truncated) =
                    d.tracker.received_ranges(&rx.pools, ranges_left);
                ranges_left -= received.len().min(ranges_left);
                let (missed, missed_ranges) = match &d.outage {
                    Some(o) => (
                        o.missed.min(missing.count),
                        intersect(&missing.ranges, &o.ranges, ranges_left),
                    ),
                    None => (0, Vec::new()),
                };
                ranges_left -= missed_ranges.len().min(ranges_left);
                DeviceReport {
                    device_id: d.id.clone(),
                    frontend: d.frontend.map(|f| rx.frontends[f].name.clone()),
                    received: t.received,
                    unique: t.unique,
                    missing: if shared { 0 } else { missing.count },
                    duplicate: t.duplicates,
                    duplicates_accepted: plan.at_least_once,
                    out_of_order: t.out_of_order,
                    unverifiable: t.unverifiable,
                    first_seq: t.first_seq,
                    last_seq: t.last_seq,
                    min_seq: t.min_seq,
                    max_seq: t.max_seq,
                    missing_ranges: if shared { Vec::new() } else { missing.ranges },
                    missed_disconnected: if shared { 0 } else { missed },
                    missed_disconnected_ranges: missed_ranges,
                    disconnected_accepted: plan.accept_disconnected,
                    received_ranges: received,
                    ranges_truncated: received_truncated || (!shared && missing.truncated),
                    latency_max_us: (t.received > 0).then_some(d.latency_max_us),
                    first_retained: d.first_retained,
                }
            })
            .collect();
        devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        let frontends = rx
            .frontends
            .iter()
            .map(|f| FrontendReport {
                name: f.name.clone(),
                points: f.points,
                device_count: f.devices.len() as u64,
                devices: f
                    .devices
                    .iter()
                    .take(if list_all { usize::MAX } else { FRONTEND_NAMED })
                    .map(|i| rx.devices[*i].id.clone())
                    .collect(),
                latency_us: Percentiles::of(&f.latency_us),
                latency_clamped: f.latency_clamped,
            })
            .collect();
        // Saturating: under --expect a hostile seq near u64::MAX claims 2^64 missing points.
        let missing = devices
            .iter()
            .fold(0u64, |a, d| a.saturating_add(d.missing));
        let duplicate: u64 = devices.iter().map(|d| d.duplicate).sum();
        let out_of_order: u64 = devices.iter().map(|d| d.out_of_order).sum();
        let unverifiable: u64 = devices.iter().map(|d| d.unverifiable).sum();
        let elapsed = match (rx.first_message, rx.last_message) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let per_s = |n: u64| {
            if elapsed > 0.0 {
                n as f64 / elapsed
            } else {
                0.0
            }
        };
        let missed = Missed::of(plan, rx, &devices, missing);
        let reason = verdict(
            plan,
            rx,
            &devices,
            missing,
            &missed,
            duplicate,
            unverifiable,
        );
        let devices_seen = devices.len() as u64;
        let devices_failing = devices.iter().filter(|d| d.failing()).count() as u64;
        if !list_all {
            devices.retain(DeviceReport::failing);
            devices.truncate(LISTED_DEVICES);
        }
        let mut slow: Vec<&crate::receive::Device> = rx
            .devices
            .iter()
            .filter(|d| !d.tracker.is_empty())
            .collect();
        slow.sort_by(|a, b| {
            b.latency_max_us
                .cmp(&a.latency_max_us)
                .then(a.id.cmp(&b.id))
        });
        let slowest_devices = slow
            .iter()
            .take(SLOWEST)
            .map(|d| SlowDevice {
                device_id: d.id.clone(),
                frontend: d.frontend.map(|f| rx.frontends[f].name.clone()),
                latency_max_us: d.latency_max_us,
            })
            .collect();
        Report {
            header: ReportHeader {
                started_at: rx.first_message.map(|t| wall(t.into_std())),
                ended_at: rx.last_message.map(|t| wall(t.into_std())),
                ..ReportHeader::new(
                    tool,
                    SCHEMA_VERSION,
                    broker.to_string(),
                    &plan.metrics.run_id,
                )
            },
            broker_embedded: embedded,
            topics: plan.filters(),
            qos: plan.qos,
            share_group: plan.share_group.clone(),
            expect: plan.expect,
            at_least_once: plan.at_least_once,
            connections_lost: rx.losses,
            reconnects: rx.reconnects,
            takeovers: rx.takeovers,
            disconnected_s: (rx.disconnected.as_secs_f64() * 1e3).round() / 1e3,
            read_hold_us: plan.read_hold.as_micros().min(u64::MAX as u128) as u64,
            points_received: rx.points,
            points_unique: rx.unique,
            points_missing: (!shared).then_some(missing),
            points_missed_disconnected: (!shared).then_some(missed.total()),
            accept_disconnected: plan.accept_disconnected,
            outages: rx
                .outages
                .list
                .iter()
                .take(LISTED_OUTAGES)
                .map(|o| OutageReport {
                    from: wall_s(o.from),
                    to: o.to.map(wall_s),
                    margin_ms: round3(o.margin * 1e3),
                    session_kept: o.session_kept,
                })
                .collect(),
            points_duplicate: duplicate,
            points_out_of_order: out_of_order,
            points_unverifiable: unverifiable,
            points_unrouted: rx.unrouted_points,
            points_untracked: rx.untracked_points,
            messages_received: rx.messages,
            packets_truncated: rx.packets_truncated,
            legacy_messages: rx.legacy_messages,
            batch_messages: rx.batch_messages,
            malformed_messages: rx.malformed_messages,
            retained_messages: rx.retained_messages,
            bytes_received: rx.bytes,
            elapsed_s: round3(elapsed),
            point_rate: round3(per_s(rx.points)),
            message_rate: round3(per_s(rx.messages)),
            bytes_per_s: round3(per_s(rx.bytes)),
            latency_us: Percentiles::of(&rx.latency_us),
            latency_clamped: rx.latency_clamped,
            devices_seen,
            devices_failing,
            devices_listed: if list_all { "all" } else { "failing" }.into(),
            devices,
            slowest_devices,
            frontends,
            stopped_by: match &rx.stop {
                Stop::Expected => "expected",
                Stop::Idle => "idle",
                Stop::FirstMessageTimeout => "first-message-timeout",
                Stop::Duration => "duration",
                Stop::Signal => "signal",
                Stop::Failed(_) => "failed",
            }
            .into(),
            verified: reason.is_none(),
            reason,
            connect_phases_us,
            suback_latency_us,
            histograms: HistogramsReport {
                latency_us: mqtt_tool::hist::encode(&rx.latency_us),
                phases: phase_histograms,
                suback_us,
            },
            merged_reports: None,
            sink: rx.sink.clone(),
        }
    }

    /// Records the run's `--metrics-push` pushes.
    pub fn pushed(&mut self, p: mqtt_tool::live::Pushes) {
        self.header.pushed(p);
    }

    /// Whether any point was routed to a frontend: the routing figures then say something.
    pub fn routed(&self) -> bool {
        self.frontends.iter().any(|f| f.points > 0)
    }

    /// Judges `thresholds` on this report and records the outcome in it.
    pub fn judge(&mut self, thresholds: &[mqtt_tool::threshold::Threshold]) {
        if thresholds.is_empty() {
            return;
        }
        // Thresholds read scalars: the tree is built without the device lists, which for
        // 100,000 devices would cost hundreds of MB.
        let devices = std::mem::take(&mut self.devices);
        let frontends = std::mem::take(&mut self.frontends);
        let judged = mqtt_tool::threshold::judge_report(&*self, thresholds);
        (self.devices, self.frontends) = (devices, frontends);
        self.header.thresholds = judged;
    }

    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let mut line = |k: &str, v: String| o.push_str(&format!("{k:<20}{v}\n"));
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
        let esc = |s: &str| escape(s).into_owned();
        line(
            "topics",
            self.topics
                .iter()
                .map(|t| esc(t))
                .collect::<Vec<_>>()
                .join(", "),
        );
        line(
            "points",
            format!(
                "{} received, {} unique, {}, {} duplicate, {} out of order{}",
                fmt_int(self.points_received),
                fmt_int(self.points_unique),
                match (
                    self.points_missing,
                    self.points_missed_disconnected.unwrap_or(0)
                ) {
                    (None, _) => "n/a missing (share group)".into(),
                    (Some(m), 0) => format!("{} missing", fmt_int(m)),
                    (Some(m), k) if k <= m => format!(
                        "{} missing ({} while this backend was disconnected)",
                        fmt_int(m),
                        fmt_int(k)
                    ),
                    // With --expect, the tail of a stream that ended while it was away.
                    (Some(m), k) => format!(
                        "{} missing, {} due while this backend was disconnected never came",
                        fmt_int(m),
                        fmt_int(k)
                    ),
                },
                fmt_int(self.points_duplicate),
                fmt_int(self.points_out_of_order),
                [
                    (self.points_unverifiable, "unverifiable"),
                    (self.points_untracked, "untracked (beyond --max-devices)"),
                    (
                        if self.routed() {
                            self.points_unrouted
                        } else {
                            0
                        },
                        "unrouted (no --route or --route-prefix matched)"
                    ),
                ]
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, what)| format!(", {} {what}", fmt_int(*n)))
                .collect::<String>()
            ),
        );
        line(
            "messages",
            format!(
                "{} received ({} legacy, {} batched, {} malformed{}{})",
                fmt_int(self.messages_received),
                fmt_int(self.legacy_messages),
                fmt_int(self.batch_messages),
                fmt_int(self.malformed_messages),
                if self.retained_messages > 0 {
                    format!(", {} retained", fmt_int(self.retained_messages))
                } else {
                    String::new()
                },
                if self.packets_truncated > 0 {
                    format!(", {} packets cut off", fmt_int(self.packets_truncated))
                } else {
                    String::new()
                }
            ),
        );
        if self.connections_lost > 0 {
            line(
                "faults",
                format!(
                    "{} connections lost, {} reconnects, {:.3} s disconnected{}",
                    fmt_int(self.connections_lost),
                    fmt_int(self.reconnects),
                    self.disconnected_s,
                    if self.at_least_once && self.points_duplicate > 0 {
                        " (duplicates accepted: --at-least-once)"
                    } else {
                        ""
                    }
                ),
            );
        }
        line(
            "rates",
            format!(
                "{} points/s, {} messages/s, {:.1} MB/s over {:.3} s",
                fmt_int(self.point_rate.round() as u64),
                fmt_int(self.message_rate.round() as u64),
                self.bytes_per_s / 1e6,
                self.elapsed_s
            ),
        );
        if let Some(k) = &self.sink {
            line(
                "sink",
                format!(
                    "{} rows written, {} failed, {} rejected in {} batches ({} retried) to {} table {}; {} rows/s, paused {:.3} s for the database, at most {} rows buffered",
                    fmt_int(k.rows_written),
                    fmt_int(k.rows_failed),
                    fmt_int(k.rows_rejected),
                    fmt_int(k.batches + k.batches_failed),
                    fmt_int(k.retries),
                    esc(&k.database),
                    esc(&k.table),
                    fmt_int(k.rows_per_s.round() as u64),
                    k.paused_s,
                    fmt_int(k.max_buffered_rows)
                ),
            );
        }
        if let Some(p) = &self.latency_us {
            let mut l = fmt_percentiles(p, true);
            if self.read_hold_us > 0 {
                // Say how late an arrival may be read, so that nobody takes it for the broker's.
                l.push_str(&format!(
                    " (includes up to {} of read batching at high rates, --read-hold)",
                    humantime::format_duration(std::time::Duration::from_micros(self.read_hold_us))
                ));
            }
            if self.latency_clamped > 0 {
                l.push_str(&format!(
                    "; {} above {} recorded as {}",
                    match self.latency_clamped {
                        1 => "1 sample".to_string(),
                        k => format!("{} samples", fmt_int(k)),
                    },
                    CEILING,
                    CEILING
                ));
            }
            line("e2e latency", l);
        }
        for (label, l) in self.connect_phases_us.lines() {
            line(label, l);
        }
        if let Some(p) = &self.suback_latency_us {
            line("subscribe->suback", fmt_percentiles(p, false));
        }
        // Routing lines only when routing happened: without routes, or when no device
        // matched one, they would say nothing about this run.
        for f in self.frontends.iter().filter(|_| self.routed()) {
            const NAMED: usize = 5;
            let named: Vec<String> = f.devices.iter().take(NAMED).map(|d| esc(d)).collect();
            line(
                "frontend",
                match f.device_count as usize {
                    0 => format!("{}: no points", esc(&f.name)),
                    n if n <= NAMED => format!(
                        "{}: {} points from {}",
                        esc(&f.name),
                        fmt_int(f.points),
                        named.join(", ")
                    ),
                    n => format!(
                        "{}: {} points from {} devices ({}, ...)",
                        esc(&f.name),
                        fmt_int(f.points),
                        fmt_int(n as u64),
                        named.join(", ")
                    ),
                },
            );
        }
        if self.devices_seen > 1 {
            line(
                "devices",
                format!(
                    "{} seen, {} with a problem",
                    fmt_int(self.devices_seen),
                    fmt_int(self.devices_failing)
                ),
            );
        }
        if self.devices_seen > 1 && !self.slowest_devices.is_empty() {
            let named: Vec<String> = self
                .slowest_devices
                .iter()
                .take(3)
                .map(|d| {
                    let ms = d.latency_max_us as f64 / 1000.0;
                    format!("{} ({ms:.1} ms)", esc(&d.device_id))
                })
                .collect();
            line("slowest", format!("{} (highest latency)", named.join(", ")));
        }
        // Devices with a problem first, then the rest, at most SHOWN lines in all.
        const SHOWN: usize = 20;
        let failing = |d: &&DeviceReport| d.failing();
        let shown: Vec<&DeviceReport> = self
            .devices
            .iter()
            .filter(failing)
            .chain(self.devices.iter().filter(|d| !failing(d)))
            .take(SHOWN)
            .collect();
        for d in &shown {
            let gaps: Vec<String> = d
                .missing_ranges
                .iter()
                .take(5)
                .map(|r| r.to_string())
                .collect();
            line(
                "device",
                format!(
                    "{}: {} unique, {} missing{}, {} duplicate, {} out of order{}, seq {}..{}{}",
                    esc(&d.device_id),
                    fmt_int(d.unique),
                    fmt_int(d.missing),
                    if gaps.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", gaps.join(", "))
                    },
                    fmt_int(d.duplicate),
                    fmt_int(d.out_of_order),
                    if d.unverifiable > 0 {
                        format!(", {} unverifiable", fmt_int(d.unverifiable))
                    } else {
                        String::new()
                    },
                    d.min_seq.map_or("-".into(), |v| v.to_string()),
                    d.max_seq.map_or("-".into(), |v| v.to_string()),
                    if d.first_retained {
                        " (first message retained)"
                    } else {
                        ""
                    }
                ),
            );
        }
        if self.devices_seen > shown.len() as u64 {
            let failing_total = self.devices_failing as usize;
            let failing_shown = shown.iter().filter(|d| failing(d)).count();
            line(
                "",
                format!(
                    "... and {} more devices{} (see --report-json)",
                    fmt_int(self.devices_seen - shown.len() as u64),
                    if failing_total > failing_shown {
                        format!(
                            ", {} of them failing",
                            fmt_int((failing_total - failing_shown) as u64)
                        )
                    } else {
                        String::new()
                    }
                ),
            );
        }
        if let Some(l) = self.header.push_failures_line() {
            line("metrics push", l);
        }
        line("stopped by", self.stopped_by.clone());
        line(
            "verdict",
            match &self.reason {
                None if self.expect == Some(0) => {
                    "subscribed; nothing was expected (--expect 0), so nothing was checked".into()
                }
                None => match self.points_missed_disconnected.filter(|k| *k > 0) {
                    Some(k) => format!(
                        "every point arrived exactly once, but for {} due while this backend was disconnected (accepted: --accept-disconnected)",
                        fmt_int(k)
                    ),
                    None => "every point arrived exactly once".into(),
                },
                Some(r) => format!("FAILED: {}", escape(r)),
            },
        );
        if let Some(n) = self.merged_reports {
            line(
                "merged",
                format!("{n} reports of the share group's members"),
            );
        }
        for t in mqtt_tool::threshold::summary_lines(&self.header.thresholds) {
            line("threshold", escape(&t).into_owned());
        }
        o
    }
}

/// Why verification failed, naming every kind of failure with its count (the first
/// devices of each named), or `None` when it passed.
fn verdict(
    plan: &Plan,
    rx: &Received,
    devices: &[DeviceReport],
    missing: u64,
    missed: &Missed,
    duplicate: u64,
    unverifiable: u64,
) -> Option<String> {
    if let Stop::Failed(e) = &rx.stop {
        return Some(e.clone());
    }
    let mut problems: Vec<String> = Vec::new();
    // The first devices with `count(d) > 0`, as "on a (5), b (3) and 7 more devices".
    let on = |count: &dyn Fn(&DeviceReport) -> u64| -> String {
        let hit: Vec<&DeviceReport> = devices.iter().filter(|d| count(d) > 0).collect();
        let named: Vec<String> = hit
            .iter()
            .take(3)
            .map(|d| format!("{} ({})", d.device_id, fmt_int(count(d))))
            .collect();
        let more = hit.len().saturating_sub(3);
        let mut s = format!("on {}", named.join(", "));
        if more > 0 {
            s.push_str(&format!(" and {} more devices", fmt_int(more as u64)));
        }
        s
    };
    // The first device with its gaps, then how many more on how many other devices.
    let gaps_on = |total: u64,
                   count: &dyn Fn(&DeviceReport) -> u64,
                   ranges: &dyn Fn(&DeviceReport) -> Vec<SeqRange>|
     -> String {
        let gappy: Vec<&DeviceReport> = devices.iter().filter(|d| count(d) > 0).collect();
        let Some(first) = gappy.first() else {
            return String::new();
        };
        let gaps: Vec<String> = ranges(first)
            .iter()
            .take(10)
            .map(|r| r.to_string())
            .collect();
        let mut text = format!(
            "{} points on {}: {}",
            fmt_int(count(first)),
            first.device_id,
            gaps.join(", ")
        );
        if gappy.len() > 1 {
            let others: Vec<&str> = gappy[1..]
                .iter()
                .take(3)
                .map(|d| d.device_id.as_str())
                .collect();
            text.push_str(&format!(
                ", and {} more on {} other devices ({}{})",
                fmt_int(total.saturating_sub(count(first))),
                fmt_int(gappy.len() as u64 - 1),
                others.join(", "),
                if gappy.len() > 4 { ", ..." } else { "" }
            ));
        }
        text
    };
    // Lost while this backend was connected: the broker's or the publisher's doing.
    let lost = missing.saturating_sub(missed.gaps);
    if lost > 0 {
        let lost_of = |d: &DeviceReport| d.missing.saturating_sub(d.missed_disconnected);
        let lost_ranges =
            |d: &DeviceReport| subtract(&d.missing_ranges, &d.missed_disconnected_ranges, 10);
        problems.push(format!(
            "missing {}{}",
            if rx.outages.list.is_empty() {
                String::new()
            } else {
                "while this backend was connected, ".into()
            },
            gaps_on(lost, &lost_of, &lost_ranges)
        ));
    }
    if missed.total() > 0 && !plan.accept_disconnected {
        let mut which = Vec::new();
        if missed.gaps > 0 {
            which.push(gaps_on(missed.gaps, &|d| d.missed_disconnected, &|d| {
                d.missed_disconnected_ranges.clone()
            }));
        }
        if missed.tail > 0 {
            which.push(format!(
                "the last {} expected, the stream having ended meanwhile",
                fmt_int(missed.tail)
            ));
        }
        problems.push(format!(
            "{} points were due while this backend was itself disconnected ({}, {:.1} s) and never came ({}): \
             it cannot vouch for them; with a clean session the broker keeps nothing for it while it is away \
             (--clean-session false and a fixed --client-id make the broker queue them; --accept-disconnected lets them pass)",
            fmt_int(missed.total()),
            match rx.outages.list.len() {
                1 => "1 outage".to_string(),
                k => format!("{} outages", fmt_int(k as u64)),
            },
            rx.disconnected.as_secs_f64(),
            which.join("; ")
        ));
    }
    if duplicate > 0 && !plan.at_least_once {
        problems.push(format!(
            "{} duplicate points {}",
            fmt_int(duplicate),
            on(&|d| d.duplicate)
        ));
    }
    if unverifiable > 0 {
        problems.push(format!(
            "{} points arrived too late to tell a duplicate from a late point, {}",
            fmt_int(unverifiable),
            on(&|d| d.unverifiable)
        ));
    }
    if let Some(problem) = rx
        .sink
        .as_ref()
        .and_then(crate::sink::SinkReport::not_stored)
    {
        problems.push(problem);
    }
    if rx.untracked_points > 0 {
        problems.push(format!(
            "{} points came from devices beyond the first {} and were not verified; raise --max-devices",
            fmt_int(rx.untracked_points),
            fmt_int(plan.max_devices as u64)
        ));
    }
    // With --accept-disconnected, a shortfall that is all missed while away passes.
    let excused = if plan.accept_disconnected {
        missed.total()
    } else {
        0
    };
    if let Some(n) = plan.expect {
        if rx.unique < n && n - rx.unique > excused {
            // The tail never came: say where each device stopped.
            let mut last: Vec<String> = devices
                .iter()
                .take(3)
                .map(|d| {
                    format!(
                        "{} up to seq {}",
                        d.device_id,
                        d.max_seq.map_or("-".into(), |v| v.to_string())
                    )
                })
                .collect();
            if devices.len() > 3 {
                last.push(format!(
                    "{} more devices",
                    fmt_int(devices.len() as u64 - 3)
                ));
            }
            problems.push(format!(
                "expected {} unique points, {} arrived before the {} stop{}",
                fmt_int(n),
                fmt_int(rx.unique),
                match rx.stop {
                    Stop::Signal => "signal",
                    Stop::Duration => "--duration",
                    Stop::FirstMessageTimeout => "--first-message-timeout",
                    _ => "--idle-timeout",
                },
                if last.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", last.join(", "))
                }
            ));
        } else if rx.unique > n {
            problems.push(format!(
                "expected {} unique points, {} arrived",
                fmt_int(n),
                fmt_int(rx.unique)
            ));
        }
    }
    if rx.malformed_messages > 0 {
        problems.push(format!(
            "{} malformed messages",
            fmt_int(rx.malformed_messages)
        ));
    }
    if rx.truncated_unrecovered > 0 {
        problems.push(format!(
            "{} cut off before {} end ({}{}): {} points are unknown, and the broker does not send {} again",
            match rx.truncated_unrecovered {
                1 => "1 message".to_string(),
                k => format!("{} messages", fmt_int(k)),
            },
            if rx.truncated_unrecovered == 1 { "its" } else { "their" },
            rx.truncated_first.as_deref().unwrap_or("a PUBLISH"),
            if rx.truncated_unrecovered > 1 { ", the first" } else { "" },
            if rx.truncated_unrecovered == 1 { "its" } else { "their" },
            if rx.truncated_unrecovered == 1 { "it" } else { "them" },
        ));
    }
    if rx.messages == 0 && plan.expect != Some(0) && problems.is_empty() {
        problems.push(match (&rx.stop, rx.connecting_interrupted) {
            (_, true) => "stopped while connecting: nothing was received".into(),
            (Stop::FirstMessageTimeout, _) => format!(
                "no message arrived within {} after subscribing (--first-message-timeout)",
                humantime::format_duration(plan.first_message_timeout)
            ),
            _ => "no message arrived".into(),
        });
    }
    if problems.is_empty() {
        return None;
    }
    // Duplicates from a message retained on the topic before this run are not the
    // publisher's: say so where a failing device began with one.
    let retained: Vec<&str> = devices
        .iter()
        .filter(|d| d.first_retained && (d.duplicate > 0 || d.missing > 0 || d.unverifiable > 0))
        .map(|d| d.device_id.as_str())
        .take(3)
        .collect();
    if !retained.is_empty() {
        problems.push(format!(
            "the first message of {} was a retained one, left on the topic before this run: clear it \
             (mosquitto_pub -r -n -t TOPIC) or subscribe before publishing",
            retained.join(", ")
        ));
    }
    Some(problems.join("; "))
}
