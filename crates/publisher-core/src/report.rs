//! The final report: one struct, rendered as a text summary and exported as JSON.
//!
//! The JSON shape is committed as `schema/publisher-report.schema.json`; a test validates
//! real output against it. Bump [`SCHEMA_VERSION`] when a field changes meaning or goes away.

use std::path::Path;

use serde::Serialize;

use crate::args::Qos;
use crate::broker::BrokerTarget;
use crate::error::Error;
use crate::format::{fmt_int, fmt_percentiles, fmt_rate, round3, Percentiles};
use crate::plan::Plan;
use crate::session::SessionResult;
use crate::shutdown::Signal;

pub const SCHEMA_VERSION: u32 = 1;

/// Everything a run reports. Every point generated and due is in exactly one of
/// `points_acked`, `points_failed` (QoS 1: sent, no PUBACK), `points_unsent` (never
/// written), or — at QoS 0 — simply sent.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub tool: String,
    pub tool_version: String,
    pub broker: String,
    pub broker_embedded: bool,
    pub client_id: String,
    pub device_id: String,
    pub topic: String,
    pub qos: u8,
    pub batch: u64,
    /// Points per second; null = as fast as possible.
    pub target_rate: Option<f64>,
    /// Points planned; null = until the duration ends.
    pub points_planned: Option<u64>,
    pub max_inflight: u16,
    pub max_queued: u64,
    pub points_enqueued: u64,
    pub points_sent: u64,
    /// Null at QoS 0, where the broker acknowledges nothing.
    pub points_acked: Option<u64>,
    pub points_failed: u64,
    pub points_unsent: u64,
    pub messages_sent: u64,
    pub messages_acked: Option<u64>,
    /// PUBACKs for messages already acknowledged (a broker repeating itself): ignored.
    pub duplicate_acks: u64,
    /// Payload bytes written to the socket.
    pub bytes_sent: u64,
    pub elapsed_s: f64,
    pub point_rate: f64,
    pub message_rate: f64,
    pub bytes_per_s: f64,
    /// Achieved point rate as a percentage of the target; null when unpaced.
    pub target_pct: Option<f64>,
    /// Scheduled send time -> PUBACK, microseconds (QoS 1).
    pub latency_us: Option<Percentiles>,
    /// Scheduled send time -> written to the socket, microseconds (paced runs).
    pub schedule_lag_us: Option<Percentiles>,
    /// "complete", "interrupted" or "incomplete".
    pub outcome: String,
    /// The signal that stopped the run, if any.
    pub interrupted_by: Option<String>,
    /// The signal came while connecting, before anything was generated.
    pub interrupted_connecting: bool,
    /// Why the run did not deliver everything, if it did not.
    pub error: Option<String>,
}

impl Report {
    pub fn build(
        tool: &str,
        plan: &Plan,
        target: &BrokerTarget,
        s: &SessionResult,
        signal: Option<Signal>,
    ) -> Report {
        let t = s.totals;
        let qos1 = plan.qos == Qos::AtLeastOnce;
        let elapsed = (s.finished - s.started).as_secs_f64();
        let per_s = |n: u64| {
            if elapsed > 0.0 {
                n as f64 / elapsed
            } else {
                0.0
            }
        };
        let point_rate = per_s(t.points_sent);
        let points_failed = if qos1 {
            t.points_sent - t.points_acked
        } else {
            0
        };
        let points_unsent = t.points_enqueued - t.points_sent;
        let mut problems = Vec::new();
        if let Some(lost) = &s.lost {
            problems.push(lost.describe(&plan.connect.client_id, &target.url(), s.broker_up));
        }
        if points_unsent > 0 {
            problems.push(format!(
                "{} points were never written to the socket",
                fmt_int(points_unsent)
            ));
        }
        if points_failed > 0 {
            problems.push(if s.lost.is_some() {
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
        if s.drain_cut_short && problems.is_empty() {
            problems.push("the flush was cut short".into());
        }
        let error = (!problems.is_empty()).then(|| problems.join("; "));
        let outcome = match (signal, &error) {
            (Some(_), _) => "interrupted",
            (None, Some(_)) => "incomplete",
            (None, None) => "complete",
        };
        Report {
            schema_version: SCHEMA_VERSION,
            tool: tool.to_string(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            broker: target.url(),
            broker_embedded: target.embedded,
            client_id: plan.connect.client_id.clone(),
            device_id: plan.device_id.clone(),
            topic: plan.topic.clone(),
            qos: plan.qos.level(),
            batch: plan.batch as u64,
            target_rate: plan.rate,
            points_planned: plan.total,
            max_inflight: plan.max_inflight,
            max_queued: plan.max_queued as u64,
            points_enqueued: t.points_enqueued,
            points_sent: t.points_sent,
            points_acked: qos1.then_some(t.points_acked),
            points_failed,
            points_unsent,
            messages_sent: t.messages_sent,
            messages_acked: qos1.then_some(t.messages_acked),
            duplicate_acks: s.duplicate_acks,
            bytes_sent: t.bytes_sent,
            elapsed_s: round3(elapsed),
            point_rate: round3(point_rate),
            message_rate: round3(per_s(t.messages_sent)),
            bytes_per_s: round3(per_s(t.bytes_sent)),
            target_pct: plan.rate.map(|r| round3(100.0 * point_rate / r)),
            latency_us: if qos1 {
                Percentiles::of(&s.latencies.ack_us)
            } else {
                None
            },
            schedule_lag_us: if s.paced {
                Percentiles::of(&s.latencies.lag_us)
            } else {
                None
            },
            outcome: outcome.into(),
            interrupted_by: signal.map(|s| s.name().to_string()),
            interrupted_connecting: s.connecting_interrupted,
            error,
        }
    }

    /// The human summary.
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
        line("topic", crate::out::escape(&self.topic).into_owned());
        line("qos", self.qos.to_string());
        line(
            "batch",
            format!("{} points per message", fmt_int(self.batch)),
        );
        line(
            "points",
            match self.points_acked {
                Some(acked) => format!(
                    "{} sent, {} acknowledged, {} failed, {} unsent",
                    fmt_int(self.points_sent),
                    fmt_int(acked),
                    fmt_int(self.points_failed),
                    fmt_int(self.points_unsent)
                ),
                None => format!(
                    "{} sent, {} unsent",
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
        if let Some(p) = &self.latency_us {
            line(
                "ack latency",
                format!("{}  (from scheduled send)", fmt_percentiles(p, true)),
            );
        }
        if let Some(p) = &self.schedule_lag_us {
            line("schedule lag", fmt_percentiles(p, false));
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
        o
    }

    /// Writes the JSON report to `path` (`-` = stdout).
    pub fn write_json(&self, path: &Path) -> Result<(), Error> {
        crate::out::write_json(self, path)
    }
}
