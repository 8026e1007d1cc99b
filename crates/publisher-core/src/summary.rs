//! The publisher's summary for people ([`Summarize`]): the verdict, the rows that matter for
//! this run (rate, points sent and acknowledged, latency, connections, faults), the
//! thresholds in their units and the generator's health. `--report-md` renders it; a merged
//! report (`loadgen merge`) has the same shape and the same summary.

use mqtt_tool::format::{fmt_int, fmt_rate};
use mqtt_tool::merge::{fmt_ranges, IndexRange};
use mqtt_tool::summary::{fmt_ms, fmt_percentiles_ms, fmt_secs, Summarize, Summary};

use crate::report::{threshold_fields, Report};

/// Said wherever an unpaced QoS 1 run shows its ack latency.
pub const UNPACED_LATENCY_NOTE: &str = "--rate max: each point is due the moment it is \
     generated, so the ack latency from the scheduled time measures queueing in the generator \
     (up to --max-queued messages a connection) as well as the broker's round trip; pace the \
     run with --rate to measure the broker";

impl Report {
    /// Whether the ack latency is measured from a schedule of the generator's own making.
    pub fn latency_includes_queueing(&self) -> bool {
        self.target_rate.is_none() && self.latency_us.is_some()
    }
}

impl Summarize for Report {
    fn summary(&self) -> Summary {
        let mut s = Summary::new(&self.header.tool);
        let qos1 = self.points_acked.is_some();
        let fleet = self.devices > 1 || self.connections.planned > 1;

        if let Some(sig) = &self.interrupted_by {
            s.fail(&if self.interrupted_connecting {
                format!("interrupted by {sig} while connecting: nothing was sent")
            } else {
                format!("interrupted by {sig}")
            });
        }
        if let Some(e) = &self.error {
            s.fail(&format!("incomplete: {e}"));
        }
        s.passed(&match self.points_acked {
            Some(acked) => format!(
                "{} points sent, {} acknowledged",
                fmt_int(self.points_sent),
                fmt_int(acked)
            ),
            None => format!("{} points sent (QoS 0)", fmt_int(self.points_sent)),
        });

        let mut run = vec![format!("QoS {}", self.qos)];
        if fleet {
            run.push(format!(
                "{} devices over {} connections",
                fmt_int(self.devices),
                fmt_int(self.connections.planned)
            ));
        }
        if self.batch > 1 {
            run.push(format!("{} points a message", fmt_int(self.batch)));
        }
        run.push(format!("{} generating", fmt_secs(self.elapsed_s)));
        s.row("run", run.join(", "));

        let mut rate = format!("{} points/s", fmt_rate(self.point_rate));
        match (self.target_rate, self.target_pct) {
            (Some(t), Some(pct)) => {
                rate.push_str(&format!(" of {} targeted ({pct:.2}%)", fmt_rate(t)))
            }
            _ => rate.push_str(" (as fast as possible)"),
        }
        if self.batch > 1 {
            rate.push_str(&format!(", {} messages/s", fmt_rate(self.message_rate)));
        }
        if fleet {
            if let Some(steady) = self.steady_point_rate {
                rate.push_str(&format!(", {} points/s after the ramp", fmt_rate(steady)));
            }
        }
        s.row("rate", rate);

        let mut points = Vec::new();
        if let Some(p) = self.points_planned.filter(|p| *p != self.points_sent) {
            points.push(format!("{} planned", fmt_int(p)));
        }
        points.push(format!("{} sent", fmt_int(self.points_sent)));
        if let Some(acked) = self.points_acked {
            points.push(format!("{} acknowledged", fmt_int(acked)));
            points.push(format!(
                "{} lost (sent, never acknowledged)",
                fmt_int(self.points_failed)
            ));
        }
        for (n, what) in [
            (self.points_rejected, "rejected by the broker"),
            (self.points_unsent, "never written"),
            (self.points_dropped, "due and never generated"),
            (self.points_dropped_offline, "dropped while offline"),
        ] {
            if n > 0 {
                points.push(format!("{} {what}", fmt_int(n)));
            }
        }
        s.row("points", points.join(", "));

        if let Some(p) = &self.latency_us {
            s.row("ack latency", fmt_percentiles_ms(p));
        }
        if fleet || self.connections.failed + self.connections.lost > 0 {
            let c = &self.connections;
            let mut conns = vec![format!(
                "{} of {} up",
                fmt_int(c.connected),
                fmt_int(c.planned)
            )];
            for (n, what) in [
                (c.failed, "failed"),
                (c.lost, "lost"),
                (c.not_up, "not up when generation ended"),
            ] {
                if n > 0 {
                    conns.push(format!("{} {what}", fmt_int(n)));
                }
            }
            if let Some(r) = c.ramp_s.filter(|_| fleet) {
                conns.push(format!("ramp {}", fmt_secs(r)));
            }
            if let Some(p) = self.connect_latency_us.as_ref().filter(|_| fleet) {
                conns.push(format!("connect p99 {}", fmt_ms(p.p99 as f64)));
            }
            s.row("connections", conns.join(", "));
        }
        if self.reconnects + self.connections.losses + self.connections.takeovers > 0 {
            let c = &self.connections;
            let mut faults = vec![
                format!("{} losses", fmt_int(c.losses)),
                format!("{} reconnects", fmt_int(self.reconnects)),
                format!("{} disconnected", fmt_secs(self.disconnected_s)),
            ];
            if self.messages_resent > 0 {
                faults.push(format!("{} messages resent", fmt_int(self.messages_resent)));
            }
            if self.pubrels_resent > 0 {
                faults.push(format!("{} PUBRELs resent", fmt_int(self.pubrels_resent)));
            }
            if c.sessions_lost > 0 {
                faults.push(format!(
                    "{} sessions lost by the broker",
                    fmt_int(c.sessions_lost)
                ));
            }
            if c.takeovers > 0 {
                faults.push(format!(
                    "{} taken over by a client with the same id",
                    fmt_int(c.takeovers)
                ));
            }
            if c.client_id_in_use > 0 {
                faults.push(format!(
                    "{} client ids in use by another client",
                    fmt_int(c.client_id_in_use)
                ));
            }
            s.row("faults", faults.join(", "));
        }
        if !self.connections.disconnects_by_reason.is_empty() {
            let list: Vec<String> = self
                .connections
                .disconnects_by_reason
                .iter()
                .map(|(r, n)| format!("{r} ({})", fmt_int(*n)))
                .collect();
            s.row("broker disconnects", list.join(", "));
        }
        if let Some(m) = &self.merged {
            let mut merged = format!(
                "{} reports, shards {} of {}",
                fmt_int(m.reports),
                fmt_ranges(&m.shards_present),
                fmt_int(self.shards)
            );
            if !m.shards_missing.is_empty() {
                merged.push_str(&format!(
                    "; MISSING shards {} ({})",
                    fmt_ranges(&m.shards_missing),
                    fmt_int(m.shards_missing.iter().map(IndexRange::len).sum())
                ));
            }
            s.row("merged", merged);
        } else if self.shards > 1 {
            s.row(
                "shard",
                format!("{} of {}", fmt_int(self.shard), fmt_int(self.shards)),
            );
        }

        s.thresholds(&self.header.thresholds, &threshold_fields());

        let g = &self.generator;
        let mut health = Vec::new();
        match &self.schedule_lag_us {
            Some(p) => health.push(format!(
                "behind schedule p99 {}, max {}{}",
                fmt_ms(p.p99 as f64),
                fmt_ms(p.max as f64),
                if g.lag_grew { ", and growing" } else { "" }
            )),
            None if self.target_rate.is_none() => health.push("unpaced".into()),
            None => {}
        }
        health.push(format!(
            "{} CPU on {} {}, busiest {:.0}% of a core",
            fmt_secs(g.cpu_s),
            g.workers,
            if g.workers == 1 { "worker" } else { "workers" },
            g.busiest_worker_cpu_pct
        ));
        health.push(match self.latency_clamped + self.schedule_lag_clamped {
            0 => "no sample clamped".into(),
            n => format!("{} samples beyond 1 h recorded as 1 h", fmt_int(n)),
        });
        let mut line = health.join("; ");
        if let Some(note) = &g.note {
            line.push_str(&format!(". {note}"));
        }
        s.health("Generator", line);
        // --verify: what the in-process subscriber got, and its verdict.
        if let Some(d) = &self.delivery {
            d.summary_rows(&mut s);
        }
        if self.latency_includes_queueing() && qos1 {
            s.note(UNPACED_LATENCY_NOTE);
        }
        s
    }
}
