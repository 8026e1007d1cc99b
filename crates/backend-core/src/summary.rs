//! The backend's summary for people ([`Summarize`]): the verdict (verified, or why not),
//! the rows that matter for this run (rates, points received and missing, end-to-end
//! latency, devices, connections, routing only when points were routed, the sink), the
//! thresholds in their units and the receiver's health. `--report-md` renders it; a merged
//! report of a share group has the same shape and the same summary.

use mqtt_tool::format::{fmt_int, fmt_rate};
use mqtt_tool::summary::{fmt_percentiles_ms, fmt_secs, Summarize, Summary};

use crate::report::{threshold_fields, Report};

impl Summarize for Report {
    fn summary(&self) -> Summary {
        let mut s = Summary::new(&self.header.tool);
        match (&self.reason, self.stopped_by.as_str()) {
            (_, "signal") => {
                s.fail("interrupted by a signal");
            }
            (Some(r), "failed") => {
                s.fail(&format!("failed: {r}"));
            }
            _ => {}
        }
        if let Some(r) = self.reason.as_ref().filter(|_| self.stopped_by != "failed") {
            s.fail(&format!("verification failed: {r}"));
        }
        s.passed(&if self.expect == Some(0) {
            "subscribed; nothing was expected (--expect 0), so nothing was checked".to_string()
        } else {
            format!(
                "every point arrived exactly once ({} unique points from {} devices)",
                fmt_int(self.points_unique),
                fmt_int(self.devices_seen)
            )
        });

        let mut run = vec![format!("QoS {}", self.qos)];
        if let Some(g) = &self.share_group {
            run.push(format!("share group {g}"));
        }
        run.push(format!(
            "{} from the first message to the last",
            fmt_secs(self.elapsed_s)
        ));
        run.push(format!("stopped by {}", self.stopped_by));
        s.row("run", run.join(", "));
        s.row(
            "rate",
            format!(
                "{} points/s, {} messages/s",
                fmt_rate(self.point_rate),
                fmt_rate(self.message_rate)
            ),
        );

        let mut points = vec![format!("{} received", fmt_int(self.points_received))];
        points.push(match self.expect {
            Some(n) => format!(
                "{} unique of {} expected",
                fmt_int(self.points_unique),
                fmt_int(n)
            ),
            None => format!("{} unique", fmt_int(self.points_unique)),
        });
        match self.points_missing {
            Some(m) => points.push(format!("{} missing", fmt_int(m))),
            None => points.push("missing: judged by the merge of the share group".into()),
        }
        points.push(format!("{} duplicate", fmt_int(self.points_duplicate)));
        for (n, what) in [
            (
                self.points_missed_disconnected.unwrap_or(0),
                "due while this backend was disconnected",
            ),
            (self.points_out_of_order, "out of order"),
            (self.points_unverifiable, "unverifiable"),
            (self.points_untracked, "untracked (beyond --max-devices)"),
            (
                if self.routed() {
                    self.points_unrouted
                } else {
                    0
                },
                "unrouted",
            ),
        ] {
            if n > 0 {
                points.push(format!("{} {what}", fmt_int(n)));
            }
        }
        s.row("points", points.join(", "));
        if let Some(p) = &self.latency_us {
            s.row("e2e latency", fmt_percentiles_ms(p));
        }
        if self.devices_seen > 1 || self.devices_failing > 0 {
            s.row(
                "devices",
                format!(
                    "{} seen, {} with a problem",
                    fmt_int(self.devices_seen),
                    fmt_int(self.devices_failing)
                ),
            );
        }
        if self.connections_lost + self.reconnects > 0 {
            s.row(
                "connections",
                format!(
                    "{} lost, {} reconnects, {} disconnected",
                    fmt_int(self.connections_lost),
                    fmt_int(self.reconnects),
                    fmt_secs(self.disconnected_s)
                ),
            );
        }
        let odd: Vec<String> = [
            (self.malformed_messages, "malformed"),
            (self.packets_truncated, "cut off"),
            (self.retained_messages, "retained"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{} {what}", fmt_int(*n)))
        .collect();
        if !odd.is_empty() {
            s.row(
                "messages",
                format!(
                    "{} received: {}",
                    fmt_int(self.messages_received),
                    odd.join(", ")
                ),
            );
        }
        if self.routed() {
            let fronts: Vec<String> = self
                .frontends
                .iter()
                .map(|f| match f.points {
                    0 => format!("{}: no points", f.name),
                    p => format!(
                        "{}: {} points from {} devices",
                        f.name,
                        fmt_int(p),
                        fmt_int(f.device_count)
                    ),
                })
                .collect();
            s.row("frontends", fronts.join("; "));
        }
        if let Some(k) = &self.sink {
            s.row(
                "sink",
                format!(
                    "{} rows written, {} failed, {} rejected; {} rows/s",
                    fmt_int(k.rows_written),
                    fmt_int(k.rows_failed),
                    fmt_int(k.rows_rejected),
                    fmt_rate(k.rows_per_s)
                ),
            );
        }
        if let Some(n) = self.merged_reports {
            s.row(
                "merged",
                format!("{n} reports of the share group's members"),
            );
        }

        s.thresholds(&self.header.thresholds, &threshold_fields());

        let mut health = Vec::new();
        if self.read_hold_us > 0 && self.latency_us.is_some() {
            health.push(format!(
                "latencies include up to {} of read batching (--read-hold)",
                mqtt_tool::summary::fmt_ms(self.read_hold_us as f64)
            ));
        }
        health.push(match self.latency_clamped {
            0 => "no sample clamped".into(),
            n => format!("{} samples beyond 1 h recorded as 1 h", fmt_int(n)),
        });
        s.health("Receiver", health.join("; "));
        s
    }
}
