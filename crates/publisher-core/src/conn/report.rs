//! `loadgen conn`'s report: connects, failures by reason, reconnects (churned and lost),
//! outages and how long each took to recover, keep-alive round trips, connections up at
//! the end; the latencies as percentiles (µs) with their histograms. JSON schema:
//! `schema/conn-report.schema.json`.
//!
//! ```text
//! FleetResult (merged stats) --> ConnReport::build --> judge (thresholds) --> text / JSON /
//!                                                       CSV / Markdown (the run frame)
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use mqtt_engine::FleetResult;
use mqtt_tool::format::{fmt_int, fmt_percentiles, round3, Percentiles};
use mqtt_tool::frame::{rfc3339, ReportHeader};
use mqtt_tool::mqtt::failure_key;
use mqtt_tool::phases::{PhaseHistograms, Phases};
use mqtt_tool::summary::{Summarize, Summary};
use mqtt_tool::threshold::{Fields, Unit};

use crate::broker::BrokerTarget;
use crate::shutdown::Signal;
use crate::Error;

use super::ConnPlan;

/// The report's schema version.
pub const SCHEMA_VERSION: u32 = 1;

/// The fields `--threshold` may name.
pub fn threshold_fields() -> Fields {
    Fields::default()
        .numbers(
            &[
                "connections_connected",
                "connections_failed",
                "connections_up_at_end",
                "churned",
                "reconnects_lost",
                "losses",
            ],
            Unit::Number,
        )
        .numbers(&["churn_achieved_per_s"], Unit::Named("/s"))
        .numbers(&["recovery_max_s", "ramp_s"], Unit::Seconds)
        .latency("connect_latency", "/connect_latency_us")
        .latency("reconnect_latency", "/reconnect_latency_us")
        .latency("pingresp_latency", "/pingresp_latency_us")
}

/// One outage: connections lost (or stormed) together, and how long until all were back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutageReport {
    /// Seconds after the hold began.
    pub at_s: f64,
    /// Losses in it.
    pub dropped: u64,
    /// From the first loss to the first connection up again (with `recovered_after_s`: how
    /// far the backoff spread them); null: none came back.
    pub first_back_after_s: Option<f64>,
    /// From the first loss to the last connection up again; null: not all came back.
    pub recovered_after_s: Option<f64>,
}

/// The histograms behind the latencies (HdrHistogram V2 + DEFLATE, base64; null: empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnHistograms {
    pub connect_us: Option<String>,
    pub reconnect_us: Option<String>,
    pub pingresp_us: Option<String>,
    #[serde(flatten)]
    pub phases: PhaseHistograms,
}

/// What `loadgen conn` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnReport {
    #[serde(flatten)]
    pub header: ReportHeader,
    /// Connections planned, connected at least once, given up (never up).
    pub connections: u64,
    pub connections_connected: u64,
    pub connections_failed: u64,
    /// Up when the hold ended, and on their way back from a churn then (not a failure).
    pub connections_up_at_end: u64,
    pub connections_churning_at_end: u64,
    /// Connect attempts (retries and reconnects included).
    pub attempts: u64,
    /// The reason each given-up connection failed the last time.
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Every failed attempt, by reason.
    pub attempts_failed_by_reason: BTreeMap<String, u64>,
    /// The ramp: first attempt to every connection up or given up, seconds.
    pub ramp_s: Option<f64>,
    /// The hold asked for, seconds, and how long it went.
    pub hold_s: f64,
    pub held_s: f64,
    /// `--churn`: asked, done, achieved over the hold; slots that found no connection up.
    pub churn_per_s: Option<f64>,
    pub churned: u64,
    pub churn_achieved_per_s: f64,
    pub churn_missed: u64,
    /// Reconnects that got their CONNACK: after a churn, and after a loss or a storm.
    pub reconnects_churned: u64,
    pub reconnects_lost: u64,
    /// Losses of connections that were up (broker closes, resets, keep-alive timeouts), and
    /// the connections dropped by `--storm`.
    pub losses: u64,
    pub storm_drops: u64,
    /// Storms asked for (`--storm`): how often, how many.
    pub storm_every_s: Option<f64>,
    pub storms: u32,
    /// Every outage (a storm, a broker restart) in order, and the longest recovery; null
    /// when none, or when one never recovered.
    pub outages: Vec<OutageReport>,
    pub recovery_max_s: Option<f64>,
    /// First connects: attempt started (socket) -> CONNACK, µs.
    pub connect_latency_us: Option<Percentiles>,
    /// Reconnects (churn, loss, storm): attempt started -> CONNACK, µs.
    pub reconnect_latency_us: Option<Percentiles>,
    /// The phases of every connect: TCP, TLS, CONNECT -> CONNACK.
    pub connect_phases_us: Phases,
    /// PINGREQ written -> PINGRESP, µs.
    pub pingresp_latency_us: Option<Percentiles>,
    /// "complete", "interrupted" or "incomplete".
    pub outcome: String,
    pub interrupted_by: Option<String>,
    /// Why the run is incomplete: connections failed or down at the end.
    pub error: Option<String>,
    pub histograms: ConnHistograms,
    /// Not in the JSON: no connection came up, and how (exit 3 or 4).
    #[serde(skip)]
    pub not_started: Option<(bool, String)>,
}

fn secs(d: Duration) -> f64 {
    round3(d.as_secs_f64())
}

impl ConnReport {
    pub fn build(
        plan: &ConnPlan,
        target: &BrokerTarget,
        result: &FleetResult,
        signal: Option<Signal>,
    ) -> ConnReport {
        let st = &result.stats;
        let c = &st.conns;
        let h = &st.histos;
        let p = &plan.plan;
        let anchor = result.anchor;
        let end = st.generation_end;
        let held = match (anchor, end) {
            (Some(a), Some(e)) => e.saturating_duration_since(a),
            _ => Duration::ZERO,
        };
        let outages: Vec<OutageReport> = c
            .outages
            .iter()
            .map(|o| OutageReport {
                at_s: anchor.map_or(0.0, |a| secs(o.started.saturating_duration_since(a))),
                dropped: o.dropped,
                first_back_after_s: o
                    .first_back
                    .map(|t| secs(t.saturating_duration_since(o.started))),
                recovered_after_s: o.took().map(secs),
            })
            .collect();
        let recovery_max_s = if outages.iter().any(|o| o.recovered_after_s.is_none()) {
            None
        } else {
            outages
                .iter()
                .filter_map(|o| o.recovered_after_s)
                .reduce(f64::max)
        };
        let (phases, phase_histograms) = Phases::of(&h.tcp_us, &h.tls_us, &h.connack_us);
        let failed_by_reason: BTreeMap<String, u64> = c
            .gave_up
            .iter()
            .map(|(f, n)| (failure_key(f), *n))
            .collect();
        // The publisher's rules: no connection up is the broker's failure (exit 3 or 4);
        // some failed, or down at the end, is an incomplete run (exit 5).
        let mut problems = Vec::new();
        if c.failed > 0 {
            let reasons: Vec<String> = c
                .gave_up
                .iter()
                .map(|(f, n)| {
                    format!(
                        "{} ({})",
                        mqtt_tool::mqtt::describe_failure(f, p.connect.connect_timeout),
                        fmt_int(*n)
                    )
                })
                .collect();
            problems.push(format!(
                "{} of {} connections failed: {}",
                fmt_int(c.failed),
                fmt_int(c.planned),
                reasons.join("; ")
            ));
        }
        let down = c.connected.saturating_sub(c.up_at_end + c.churning_at_end);
        if signal.is_none() && down > 0 && end.is_some() {
            problems.push(format!(
                "{} connections were down when the hold ended",
                fmt_int(down)
            ));
        }
        let not_started = (c.connected == 0 && signal.is_none() && c.failed > 0).then(|| {
            (
                c.gave_up.keys().any(|f| f.is_refusal()),
                problems.first().cloned().unwrap_or_default(),
            )
        });
        let error = (!problems.is_empty()).then(|| problems.join("; "));
        let outcome = match (signal, &error) {
            (Some(_), _) => "interrupted",
            (None, Some(_)) => "incomplete",
            (None, None) => "complete",
        };
        let mut header = ReportHeader::new(
            super::LOADGEN_CONN.name,
            SCHEMA_VERSION,
            target.url(),
            &p.metrics.run_id,
        );
        header.started_at = Some(rfc3339(result.wall(result.started)));
        header.ended_at = Some(rfc3339(
            result.wall(result.started + st.wall.max(Duration::from_micros(1))),
        ));
        ConnReport {
            header,
            connections: c.planned,
            connections_connected: c.connected,
            connections_failed: c.failed,
            connections_up_at_end: c.up_at_end,
            connections_churning_at_end: c.churning_at_end,
            attempts: c.attempts,
            failed_by_reason,
            attempts_failed_by_reason: c
                .failures
                .iter()
                .map(|(f, n)| (failure_key(f), *n))
                .collect(),
            ramp_s: result.settled_at.map(|s| {
                let from = c.first_attempt.unwrap_or(result.started);
                secs(s.saturating_duration_since(from))
            }),
            hold_s: secs(plan.hold.duration),
            held_s: secs(held),
            churn_per_s: plan.hold.churn,
            churned: c.churned,
            churn_achieved_per_s: if held.is_zero() {
                0.0
            } else {
                round3(c.churned as f64 / held.as_secs_f64())
            },
            churn_missed: c.churn_missed,
            reconnects_churned: c.churn_reconnects,
            reconnects_lost: c.reconnects.saturating_sub(c.churn_reconnects),
            losses: c.losses,
            storm_drops: c.storm_drops,
            storm_every_s: plan.hold.storm_every.map(secs),
            storms: plan.hold.storms,
            outages,
            recovery_max_s,
            connect_latency_us: Percentiles::of(&h.connect_us),
            reconnect_latency_us: Percentiles::of(&h.reconnect_us),
            connect_phases_us: phases,
            pingresp_latency_us: Percentiles::of(&h.pingresp_us),
            outcome: outcome.into(),
            interrupted_by: signal.map(|s| s.name().to_string()),
            error,
            histograms: ConnHistograms {
                connect_us: mqtt_tool::hist::encode(&h.connect_us),
                reconnect_us: mqtt_tool::hist::encode(&h.reconnect_us),
                pingresp_us: mqtt_tool::hist::encode(&h.pingresp_us),
                phases: phase_histograms,
            },
            not_started,
        }
    }

    /// No connection came up: the broker's failure, as the publisher says it (exit 4 for a
    /// refusal, 3 otherwise).
    pub fn start_failure(&self, broker: &str, _timeout: Duration) -> Option<Error> {
        let (refused, reason) = self.not_started.clone()?;
        Some(if refused {
            Error::Refused {
                broker: broker.to_string(),
                reason,
            }
        } else {
            Error::Unreachable {
                broker: broker.to_string(),
                reason,
            }
        })
    }

    /// The human summary.
    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let mut line = |k: &str, v: String| o.push_str(&format!("{k:<20}{v}\n"));
        line(&format!("== {} summary", self.header.tool), String::new());
        line(
            "broker",
            mqtt_tool::out::escape(&self.header.broker).into_owned(),
        );
        let mut conns = format!(
            "{} planned, {} connected, {} failed, {} up at the end",
            fmt_int(self.connections),
            fmt_int(self.connections_connected),
            fmt_int(self.connections_failed),
            fmt_int(self.connections_up_at_end)
        );
        if let Some(r) = self.ramp_s {
            conns.push_str(&format!("; ramp {r:.1} s"));
        }
        line("connections", conns);
        if !self.failed_by_reason.is_empty() {
            let reasons: Vec<String> = self
                .failed_by_reason
                .iter()
                .map(|(k, n)| format!("{k}: {}", fmt_int(*n)))
                .collect();
            line("failed", reasons.join(", "));
        }
        line(
            "hold",
            format!("{:.1} s of {:.1} s", self.held_s, self.hold_s),
        );
        if let Some(r) = self.churn_per_s {
            line(
                "churn",
                format!(
                    "{} disconnects ({:.1}/s of {r}/s asked), {} slots missed",
                    fmt_int(self.churned),
                    self.churn_achieved_per_s,
                    fmt_int(self.churn_missed)
                ),
            );
        }
        line(
            "reconnects",
            format!(
                "{} after churn, {} after a loss or storm ({} losses, {} dropped by storms)",
                fmt_int(self.reconnects_churned),
                fmt_int(self.reconnects_lost),
                fmt_int(self.losses),
                fmt_int(self.storm_drops)
            ),
        );
        for (i, out) in self.outages.iter().enumerate().take(10) {
            line(
                &format!("outage {}", i + 1),
                format!(
                    "at {:.1} s, {} dropped, {}",
                    out.at_s,
                    fmt_int(out.dropped),
                    out.recovered_after_s
                        .map_or("not all came back".to_string(), |s| format!(
                            "all back after {s:.3} s"
                        ))
                ),
            );
        }
        if let Some(p) = &self.connect_latency_us {
            line("connect latency", fmt_percentiles(p, false));
        }
        for (k, v) in self.connect_phases_us.lines() {
            line(k, v);
        }
        if let Some(p) = &self.reconnect_latency_us {
            line("reconnect latency", fmt_percentiles(p, false));
        }
        if let Some(p) = &self.pingresp_latency_us {
            line("pingresp latency", fmt_percentiles(p, false));
        }
        line("outcome", self.outcome.clone());
        if let Some(e) = &self.error {
            line("error", mqtt_tool::out::escape(e).into_owned());
        }
        o
    }
}

impl Summarize for ConnReport {
    fn summary(&self) -> Summary {
        let mut s = Summary::new(&self.header.tool);
        match &self.error {
            Some(e) => {
                s.fail(e);
            }
            None => {
                s.passed(&format!(
                    "{} connections up and held",
                    fmt_int(self.connections_connected)
                ));
            }
        }
        s.row(
            "connections",
            format!(
                "{} connected, {} failed, {} up at the end",
                fmt_int(self.connections_connected),
                fmt_int(self.connections_failed),
                fmt_int(self.connections_up_at_end)
            ),
        );
        if let Some(p) = &self.connect_latency_us {
            s.row("connect latency", fmt_percentiles(p, false));
        }
        for (k, v) in self.connect_phases_us.lines() {
            s.row(k, v);
        }
        if self.churn_per_s.is_some() {
            s.row(
                "churn",
                format!("{:.1}/s achieved", self.churn_achieved_per_s),
            );
        }
        if let Some(r) = self.recovery_max_s {
            s.row("storm recovery", format!("max {r:.3} s"));
        }
        if let Some(p) = &self.pingresp_latency_us {
            s.row("pingresp latency", fmt_percentiles(p, false));
        }
        s.thresholds(&self.header.thresholds, &threshold_fields());
        s
    }
}

impl mqtt_tool::frame::FramedReport for ConnReport {
    fn header_mut(&mut self) -> &mut ReportHeader {
        &mut self.header
    }
    fn judge(&mut self, thresholds: &[mqtt_tool::threshold::Threshold]) {
        self.header.thresholds = mqtt_tool::threshold::judge_report(&*self, thresholds);
    }
    fn render_text(&self) -> String {
        ConnReport::render_text(self)
    }
}
