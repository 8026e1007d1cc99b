//! The backend's verdict and report: text summary and JSON (schema in
//! `schema/backend-report.schema.json`).

use serde::Serialize;

use publisher_core::report::{fmt_int, fmt_percentiles, round3};
use publisher_core::stats::Percentiles;

use crate::receive::{Received, Stop};
use crate::verify::SeqRange;
use crate::Plan;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    pub device_id: String,
    pub frontend: Option<String>,
    pub received: u64,
    pub unique: u64,
    pub missing: u64,
    pub duplicate: u64,
    pub out_of_order: u64,
    /// Arrived below the verification window: a duplicate or a very late point, unknown which.
    pub unverifiable: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub min_seq: Option<u64>,
    pub max_seq: Option<u64>,
    /// Gaps, as `1200-1299` or `5000` (at most 10,000 listed).
    pub missing_ranges: Vec<SeqRange>,
    /// What arrived, as ranges (at most 10,000 listed): lets several backends' reports merge.
    pub received_ranges: Vec<SeqRange>,
    pub ranges_truncated: bool,
    pub latency_us: Option<Percentiles>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FrontendReport {
    pub name: String,
    pub points: u64,
    pub devices: Vec<String>,
    pub latency_us: Option<Percentiles>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub tool: String,
    pub tool_version: String,
    pub broker: String,
    pub broker_embedded: bool,
    pub topics: Vec<String>,
    pub qos: u8,
    pub share_group: Option<String>,
    pub expect: Option<u64>,
    pub points_received: u64,
    pub points_unique: u64,
    /// Null in a share group, where gaps belong to the other members.
    pub points_missing: Option<u64>,
    pub points_duplicate: u64,
    pub points_out_of_order: u64,
    /// Arrived below a device's verification window (thousands of gaps behind its newest).
    pub points_unverifiable: u64,
    pub points_unrouted: u64,
    /// Points of devices beyond `--max-devices`: counted, not verified.
    pub points_untracked: u64,
    pub messages_received: u64,
    pub legacy_messages: u64,
    pub batch_messages: u64,
    pub malformed_messages: u64,
    pub bytes_received: u64,
    /// First to last message.
    pub elapsed_s: f64,
    pub point_rate: f64,
    pub message_rate: f64,
    pub bytes_per_s: f64,
    /// Arrival minus the point's timestamp (publisher and backend share a clock), µs.
    pub latency_us: Option<Percentiles>,
    pub devices: Vec<DeviceReport>,
    pub frontends: Vec<FrontendReport>,
    /// expected | idle | duration | signal | failed
    pub stopped_by: String,
    pub verified: bool,
    /// Why verification failed, one line.
    pub reason: Option<String>,
}

impl Report {
    pub fn build(tool: &str, plan: &Plan, broker: &str, embedded: bool, rx: &Received) -> Report {
        let shared = plan.share_group.is_some();
        let from_zero = plan.expect.is_some();
        let mut devices: Vec<DeviceReport> = rx
            .devices
            .iter()
            .map(|d| {
                let missing = d.tracker.missing(from_zero);
                let (received, received_truncated) = d.tracker.received_ranges();
                DeviceReport {
                    device_id: d.id.clone(),
                    frontend: d.frontend.map(|f| rx.frontends[f].name.clone()),
                    received: d.tracker.received,
                    unique: d.tracker.unique(),
                    missing: if shared { 0 } else { missing.count },
                    duplicate: d.tracker.duplicates,
                    out_of_order: d.tracker.out_of_order,
                    unverifiable: d.tracker.unverifiable,
                    first_seq: d.tracker.first_seq,
                    last_seq: d.tracker.last_seq,
                    min_seq: d.tracker.min_seq(),
                    max_seq: d.tracker.max_seq(),
                    missing_ranges: if shared { Vec::new() } else { missing.ranges },
                    received_ranges: received,
                    ranges_truncated: received_truncated || (!shared && missing.truncated),
                    latency_us: Percentiles::of(&d.latency_us),
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
                devices: f
                    .devices
                    .iter()
                    .map(|i| rx.devices[*i].id.clone())
                    .collect(),
                latency_us: Percentiles::of(&f.latency_us),
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
        let reason = verdict(plan, rx, &devices, missing, duplicate, unverifiable);
        Report {
            schema_version: SCHEMA_VERSION,
            tool: tool.to_string(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            broker: broker.to_string(),
            broker_embedded: embedded,
            topics: plan.filters(),
            qos: plan.qos,
            share_group: plan.share_group.clone(),
            expect: plan.expect,
            points_received: rx.points,
            points_unique: rx.unique,
            points_missing: (!shared).then_some(missing),
            points_duplicate: duplicate,
            points_out_of_order: out_of_order,
            points_unverifiable: unverifiable,
            points_unrouted: rx.unrouted_points,
            points_untracked: rx.untracked_points,
            messages_received: rx.messages,
            legacy_messages: rx.legacy_messages,
            batch_messages: rx.batch_messages,
            malformed_messages: rx.malformed_messages,
            bytes_received: rx.bytes,
            elapsed_s: round3(elapsed),
            point_rate: round3(per_s(rx.points)),
            message_rate: round3(per_s(rx.messages)),
            bytes_per_s: round3(per_s(rx.bytes)),
            latency_us: Percentiles::of(&rx.latency_us),
            devices,
            frontends,
            stopped_by: match &rx.stop {
                Stop::Expected => "expected",
                Stop::Idle => "idle",
                Stop::Duration => "duration",
                Stop::Signal => "signal",
                Stop::Failed(_) => "failed",
            }
            .into(),
            verified: reason.is_none(),
            reason,
        }
    }

    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let mut line = |k: &str, v: String| o.push_str(&format!("{k:<20}{v}\n"));
        line(&format!("== {} summary", self.tool), String::new());
        line(
            "broker",
            format!(
                "{}{}",
                self.broker,
                if self.broker_embedded {
                    " (embedded rumqttd)"
                } else {
                    ""
                }
            ),
        );
        line("topics", self.topics.join(", "));
        line(
            "points",
            format!(
                "{} received, {} unique, {} missing, {} duplicate, {} out of order, {} unrouted{}",
                fmt_int(self.points_received),
                fmt_int(self.points_unique),
                self.points_missing
                    .map_or("n/a (share group)".into(), fmt_int),
                fmt_int(self.points_duplicate),
                fmt_int(self.points_out_of_order),
                fmt_int(self.points_unrouted),
                [
                    (self.points_unverifiable, "unverifiable"),
                    (self.points_untracked, "untracked (beyond --max-devices)")
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
                "{} received ({} legacy, {} batched, {} malformed)",
                fmt_int(self.messages_received),
                fmt_int(self.legacy_messages),
                fmt_int(self.batch_messages),
                fmt_int(self.malformed_messages)
            ),
        );
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
        if let Some(p) = &self.latency_us {
            line("e2e latency", fmt_percentiles(p, true));
        }
        for f in &self.frontends {
            line(
                "frontend",
                if f.devices.is_empty() {
                    format!("{}: no points", f.name)
                } else {
                    format!(
                        "{}: {} points from {}",
                        f.name,
                        fmt_int(f.points),
                        f.devices.join(", ")
                    )
                },
            );
        }
        for d in self.devices.iter().take(20) {
            let gaps: Vec<String> = d
                .missing_ranges
                .iter()
                .take(5)
                .map(|r| r.to_string())
                .collect();
            line(
                "device",
                format!(
                    "{}: {} unique, {} missing{}, {} duplicate, {} out of order, seq {}..{}",
                    d.device_id,
                    fmt_int(d.unique),
                    fmt_int(d.missing),
                    if gaps.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", gaps.join(", "))
                    },
                    fmt_int(d.duplicate),
                    fmt_int(d.out_of_order),
                    d.min_seq.map_or("-".into(), |v| v.to_string()),
                    d.max_seq.map_or("-".into(), |v| v.to_string())
                ),
            );
        }
        if self.devices.len() > 20 {
            line(
                "",
                format!(
                    "... and {} more devices (see --report-json)",
                    self.devices.len() - 20
                ),
            );
        }
        line("stopped by", self.stopped_by.clone());
        line(
            "verdict",
            match &self.reason {
                None => "every point arrived exactly once".into(),
                Some(r) => format!("FAILED: {r}"),
            },
        );
        o
    }
}

fn verdict(
    plan: &Plan,
    rx: &Received,
    devices: &[DeviceReport],
    missing: u64,
    duplicate: u64,
    unverifiable: u64,
) -> Option<String> {
    if let Stop::Failed(e) = &rx.stop {
        return Some(e.clone());
    }
    if duplicate > 0 {
        let d = devices
            .iter()
            .find(|d| d.duplicate > 0)
            .expect("a device has duplicates");
        return Some(format!(
            "{} duplicate points; {} on {}",
            fmt_int(duplicate),
            fmt_int(d.duplicate),
            d.device_id
        ));
    }
    if missing > 0 {
        let d = devices
            .iter()
            .find(|d| d.missing > 0)
            .expect("a device has gaps");
        let gaps: Vec<String> = d
            .missing_ranges
            .iter()
            .take(10)
            .map(|r| r.to_string())
            .collect();
        return Some(format!(
            "missing {} points on {}: {}",
            fmt_int(d.missing),
            d.device_id,
            gaps.join(", ")
        ));
    }
    if rx.untracked_points > 0 {
        return Some(format!(
            "{} points came from devices beyond the first {} and were not verified; raise --max-devices",
            fmt_int(rx.untracked_points),
            fmt_int(plan.max_devices as u64)
        ));
    }
    if unverifiable > 0 {
        let d = devices
            .iter()
            .find(|d| d.unverifiable > 0)
            .expect("a device has unverifiable points");
        return Some(format!(
            "{} points arrived too late to tell a duplicate from a late point; {} on {}",
            fmt_int(unverifiable),
            fmt_int(d.unverifiable),
            d.device_id
        ));
    }
    if let Some(n) = plan.expect {
        if rx.unique < n {
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
                last.push(format!("{} more devices", devices.len() - 3));
            }
            return Some(format!(
                "expected {} unique points, {} arrived before the {} stop{}",
                fmt_int(n),
                fmt_int(rx.unique),
                match rx.stop {
                    Stop::Signal => "signal",
                    Stop::Duration => "--duration",
                    _ => "--idle-timeout",
                },
                if last.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", last.join(", "))
                }
            ));
        }
        if rx.unique > n {
            return Some(format!(
                "expected {} unique points, {} arrived",
                fmt_int(n),
                fmt_int(rx.unique)
            ));
        }
    }
    if rx.malformed_messages > 0 {
        return Some(format!(
            "{} malformed messages",
            fmt_int(rx.malformed_messages)
        ));
    }
    if rx.messages == 0 && plan.expect != Some(0) {
        return Some("no message arrived".into());
    }
    None
}
