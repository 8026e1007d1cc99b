//! A publisher's proof of delivery (`loadgen pub --verify`), as a hook: the publisher knows
//! what it sent, a verifier (backend-core's receive path) knows what arrived. This module is
//! the seam between them, so that publisher-core does not depend on backend-core.
//!
//! ```text
//! publisher: DeliveryCheck::subscribe(plan, broker)   -- returns once the SUBACK is in
//!            ... the fleet ramps and publishes; its producers log each device's seqs ...
//!            DeliveryRun::finish(Expected)           -- the verifier drains, compares
//!            --> Delivery (the report's `delivery` section, its verdict, += for merge)
//! ```
//!
//! `bins/loadgen` (and the frontend presets) inject backend-core's implementation; a tool
//! without one refuses `--verify` with a usage error.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::broker::BrokerTarget;
use crate::connect::ConnectPlan;
use crate::error::Error;
use crate::format::Percentiles;

/// Devices with a problem a report names at most.
pub const NAMED_DEVICES: usize = 20;

/// What the verifier subscribes to and how long it waits.
#[derive(Debug, Clone)]
pub struct DeliveryPlan {
    /// The publisher's connection settings; the verifier takes its own client id.
    pub connect: ConnectPlan,
    /// The filter made from the publisher's topic template.
    pub filter: String,
    /// Devices the fleet has (the verifier tracks a few more, to name strangers).
    pub devices: u64,
    /// This process's devices, by id: the e2e latency is theirs alone (a shard's verifier
    /// also receives the other shards' points, whose latency their own reports hold).
    pub device_ids: std::sync::Arc<Vec<String>>,
    /// After the fleet ends: the stream quiet this long ends the wait (see docs/verify.md).
    pub timeout: Duration,
    /// Cancelled on a signal: the verifier stops where it is.
    pub stop: CancellationToken,
}

/// One device's expected seqs: `0..sent` minus the ranges in `skipped` (inclusive; points
/// the fleet counted as dropped while offline, never written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpectedDevice {
    pub id: String,
    pub sent: u64,
    pub skipped: Vec<(u64, u64)>,
}

impl ExpectedDevice {
    /// Seqs the device wrote.
    pub fn count(&self) -> u64 {
        let skipped: u64 = self.skipped.iter().map(|(a, b)| b - a + 1).sum();
        self.sent.saturating_sub(skipped)
    }
}

/// What the fleet wrote, known once it ended.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub devices: Vec<ExpectedDevice>,
    /// Points generated but never written to a socket (a drain cut short): not attributable
    /// to a device, so the expectation is then an upper bound by this many.
    pub unwritten: u64,
    /// A shard of a fleet: other devices on the filter are the other shards', counted as
    /// `other_devices_points`, not judged.
    pub others_expected: bool,
}

/// A verifier, started before the first publish.
pub trait DeliveryCheck: Send + Sync {
    /// Connects and subscribes (on the verifier's own thread); blocks until the broker
    /// acknowledged the SUBSCRIBE, or fails.
    fn subscribe(
        &self,
        plan: &DeliveryPlan,
        target: &BrokerTarget,
    ) -> Result<Box<dyn DeliveryRun>, Error>;
}

/// A running verifier.
pub trait DeliveryRun: Send {
    /// The fleet ended and wrote `expected`: waits for the stream to drain (bounded by the
    /// plan's timeout) and compares. Blocks.
    fn finish(self: Box<Self>, expected: Expected) -> Delivery;
}

/// One device the report names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceProblem {
    pub device: String,
    pub expected: u64,
    pub delivered: u64,
    pub missing: u64,
    pub duplicate: u64,
    pub out_of_order: u64,
    /// Seqs the device never wrote (beyond its last, or dropped offline).
    pub unexpected: u64,
    /// The first missing ranges, inclusive.
    #[serde(default)]
    pub missing_ranges: Vec<(u64, u64)>,
}

/// The report's `delivery` section: what the in-process subscriber received of the fleet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The filter subscribed to (a topic level with a placeholder became `+`).
    pub filter: String,
    /// Points the fleet wrote (its devices' seqs), the expectation.
    pub expected: u64,
    /// Points received from the fleet's devices (duplicates included).
    pub delivered: u64,
    /// Distinct expected seqs received.
    pub unique: u64,
    pub missing: u64,
    pub duplicate: u64,
    pub out_of_order: u64,
    /// Seqs (or devices) the fleet never wrote that arrived on the filter.
    pub unexpected: u64,
    pub malformed: u64,
    /// A shard's run: points of the other shards' devices, received and not judged here.
    #[serde(default)]
    pub other_devices_points: u64,
    /// Points generated and never written (a drain cut short): the expectation may be
    /// higher than what was written by at most this.
    pub unwritten: u64,
    /// Devices the fleet wrote, devices with a problem (the first NAMED_DEVICES named).
    pub devices: u64,
    pub devices_with_problems: u64,
    pub problem_devices: Vec<DeviceProblem>,
    /// The point's timestamp (its scheduled send time) to its arrival, microseconds.
    pub e2e_latency_us: Option<Percentiles>,
    /// The same, HdrHistogram V2 + DEFLATE in base64, for exact merges.
    pub e2e_histogram: Option<String>,
    /// Why the verifier stopped: "drained", "quiet", "timeout", "signal" or the failure.
    pub stopped: String,
    /// The verifier's own failure (lost connection, refused subscription), if any.
    pub error: Option<String>,
    /// Shard reports this was added up from (merge), 0 for one run.
    #[serde(default)]
    pub merged_from: u64,
}

impl Delivery {
    /// Why delivery failed, or `None` when every expected point arrived exactly once.
    pub fn failure(&self) -> Option<String> {
        let mut why = Vec::new();
        if let Some(e) = &self.error {
            why.push(format!("the verifier failed: {e}"));
        }
        for (n, what) in [
            (self.missing, "missing"),
            (self.duplicate, "duplicate"),
            (self.unexpected, "unexpected"),
            (self.malformed, "malformed"),
        ] {
            if n > 0 {
                why.push(format!("{} {what}", crate::format::fmt_int(n)));
            }
        }
        if why.is_empty() {
            return None;
        }
        let named: Vec<&str> = self
            .problem_devices
            .iter()
            .map(|d| d.device.as_str())
            .collect();
        let mut line = format!("delivery failed: {}", why.join(", "));
        if !named.is_empty() {
            line.push_str(&format!(
                " (devices: {}{})",
                named.join(", "),
                match self
                    .devices_with_problems
                    .saturating_sub(named.len() as u64)
                {
                    0 => String::new(),
                    n => format!(" and {} more", crate::format::fmt_int(n)),
                }
            ));
        }
        Some(crate::out::escape(&line).into_owned())
    }

    /// Adds a shard's section: counts summed, devices named up to [`NAMED_DEVICES`], the
    /// latency histograms added (percentiles recomputed). Shards verify their own devices
    /// (disjoint), so the sums are the fleet's.
    pub fn merge(&mut self, o: &Delivery) -> Result<(), String> {
        if self.merged_from == 0 && self.filter.is_empty() {
            self.filter = o.filter.clone();
            self.stopped = o.stopped.clone();
        } else if self.filter != o.filter {
            self.filter = format!("{}, {}", self.filter, o.filter);
        }
        let add = |a: &mut u64, b: u64, name: &str| -> Result<(), String> {
            *a = a
                .checked_add(b)
                .ok_or_else(|| format!("delivery.{name} overflows"))?;
            Ok(())
        };
        add(&mut self.expected, o.expected, "expected")?;
        add(&mut self.delivered, o.delivered, "delivered")?;
        add(&mut self.unique, o.unique, "unique")?;
        add(&mut self.missing, o.missing, "missing")?;
        add(&mut self.duplicate, o.duplicate, "duplicate")?;
        add(&mut self.out_of_order, o.out_of_order, "out_of_order")?;
        add(&mut self.unexpected, o.unexpected, "unexpected")?;
        add(&mut self.malformed, o.malformed, "malformed")?;
        add(
            &mut self.other_devices_points,
            o.other_devices_points,
            "other_devices_points",
        )?;
        add(&mut self.unwritten, o.unwritten, "unwritten")?;
        add(&mut self.devices, o.devices, "devices")?;
        add(
            &mut self.devices_with_problems,
            o.devices_with_problems,
            "devices_with_problems",
        )?;
        for d in &o.problem_devices {
            if self.problem_devices.len() < NAMED_DEVICES {
                self.problem_devices.push(d.clone());
            }
        }
        if let Some(e) = &o.error {
            self.error = Some(match self.error.take() {
                Some(mine) => format!("{mine}; {e}"),
                None => e.clone(),
            });
        }
        match (&self.e2e_histogram, &o.e2e_histogram) {
            (_, None) => {}
            (None, Some(h)) => {
                self.e2e_latency_us = Percentiles::of(&crate::hist::decode(h)?);
                self.e2e_histogram = Some(h.clone());
            }
            (Some(mine), Some(h)) => {
                let mut sum = crate::hist::decode(mine)?;
                crate::hist::add(&mut sum, &crate::hist::decode(h)?)?;
                self.e2e_latency_us = Percentiles::of(&sum);
                self.e2e_histogram = crate::hist::encode(&sum);
            }
        }
        if o.stopped != self.stopped && !self.stopped.contains(&o.stopped) {
            self.stopped = format!("{}, {}", self.stopped, o.stopped);
        }
        self.merged_from += o.merged_from.max(1);
        Ok(())
    }

    /// The text report's lines.
    pub fn render_text(&self) -> String {
        use crate::format::fmt_int;
        let mut s = format!(
            "delivery (subscribed to {} before the first publish):\n  expected {}  delivered {}  unique {}  missing {}  duplicate {}  out of order {}  unexpected {}  malformed {}\n",
            crate::out::escape(&self.filter),
            fmt_int(self.expected),
            fmt_int(self.delivered),
            fmt_int(self.unique),
            fmt_int(self.missing),
            fmt_int(self.duplicate),
            fmt_int(self.out_of_order),
            fmt_int(self.unexpected),
            fmt_int(self.malformed),
        );
        if let Some(p) = &self.e2e_latency_us {
            s.push_str(&format!(
                "  e2e latency: {}\n",
                crate::summary::fmt_percentiles_ms(p)
            ));
        }
        if self.unwritten > 0 {
            s.push_str(&format!(
                "  note: {} points were generated and never written (drain cut short); the expectation counts them\n",
                fmt_int(self.unwritten)
            ));
        }
        for d in &self.problem_devices {
            s.push_str(&format!(
                "  {}: expected {}, delivered {}, missing {}, duplicate {}, unexpected {}\n",
                crate::out::escape(&d.device),
                fmt_int(d.expected),
                fmt_int(d.delivered),
                fmt_int(d.missing),
                fmt_int(d.duplicate),
                fmt_int(d.unexpected),
            ));
        }
        let rest = self
            .devices_with_problems
            .saturating_sub(self.problem_devices.len() as u64);
        if rest > 0 {
            s.push_str(&format!(
                "  and {} more devices with problems\n",
                fmt_int(rest)
            ));
        }
        s.push_str(&match self.failure() {
            None => format!(
                "  verdict: delivered, every one of {} points exactly once (stopped: {})\n",
                fmt_int(self.expected),
                self.stopped
            ),
            Some(f) => format!("  verdict: {f} (stopped: {})\n", self.stopped),
        });
        s
    }

    /// The summary's rows.
    pub fn summary_rows(&self, s: &mut crate::summary::Summary) {
        use crate::format::fmt_int;
        s.row("Subscribed to", self.filter.clone());
        s.row(
            "Delivered",
            format!(
                "{} of {} ({} unique)",
                fmt_int(self.delivered),
                fmt_int(self.expected),
                fmt_int(self.unique)
            ),
        );
        s.row(
            "Missing / duplicate / out of order",
            format!(
                "{} / {} / {}",
                fmt_int(self.missing),
                fmt_int(self.duplicate),
                fmt_int(self.out_of_order)
            ),
        );
        if self.unexpected > 0 || self.malformed > 0 {
            s.row(
                "Unexpected / malformed",
                format!("{} / {}", fmt_int(self.unexpected), fmt_int(self.malformed)),
            );
        }
        if let Some(p) = &self.e2e_latency_us {
            s.row("E2E latency", crate::summary::fmt_percentiles_ms(p));
        }
        if let Some(f) = self.failure() {
            s.fail(&crate::summary::md_text(&f));
        }
    }
}

/// The subscription filter of a publisher's topic template: each level holding a
/// placeholder (`{device_id}`, `{i}`) becomes `+`; other levels stay as they are.
/// `device_data/{device_id}` -> `device_data/+`.
pub fn filter_of_template(template: &str) -> String {
    template
        .split('/')
        .map(|level| if level.contains('{') { "+" } else { level })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level_with_a_placeholder_becomes_a_single_level_wildcard() {
        assert_eq!(
            filter_of_template("device_data/{device_id}"),
            "device_data/+"
        );
        assert_eq!(filter_of_template("a/{i}/b/x{i:03}"), "a/+/b/+");
        assert_eq!(filter_of_template("fixed/topic"), "fixed/topic");
    }

    #[test]
    fn expected_count_leaves_out_the_skipped_seqs() {
        let d = ExpectedDevice {
            id: "d".into(),
            sent: 10,
            skipped: vec![(2, 4)],
        };
        assert_eq!(d.count(), 7);
    }

    #[test]
    fn shard_sections_add_up_and_a_problem_fails_the_sum() {
        let ok = Delivery {
            filter: "device_data/+".into(),
            expected: 10,
            delivered: 10,
            unique: 10,
            devices: 1,
            stopped: "drained".into(),
            ..Delivery::default()
        };
        let bad = Delivery {
            missing: 2,
            devices_with_problems: 1,
            problem_devices: vec![DeviceProblem {
                device: "sensor-00001".into(),
                missing: 2,
                ..DeviceProblem::default()
            }],
            ..ok.clone()
        };
        let mut sum = Delivery::default();
        sum.merge(&ok).unwrap();
        assert_eq!(sum.failure(), None);
        sum.merge(&bad).unwrap();
        assert_eq!((sum.expected, sum.missing, sum.merged_from), (20, 2, 2));
        let f = sum.failure().unwrap();
        assert!(f.contains("2 missing") && f.contains("sensor-00001"), "{f}");
    }
}
