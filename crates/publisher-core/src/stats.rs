//! Counting what happened to every point, and latency histograms.
//!
//! [`Counters`] are atomics that the connection driver bumps when a message reaches the
//! socket or is acknowledged, and that the progress line reads. [`Latencies`] are
//! HdrHistograms in microseconds, owned by one task and merged with `add`, never averaged.
//! A point ends in exactly one of: acknowledged, sent (QoS 0, or QoS 1 awaiting an ack),
//! failed (sent, never acknowledged), unsent (generated and due, never written).

use std::ops::AddAssign;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Live counts shared between the producer, the connection driver and the progress line.
#[derive(Debug, Default)]
pub struct Counters {
    pub points_enqueued: AtomicU64,
    pub messages_enqueued: AtomicU64,
    pub points_sent: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub points_acked: AtomicU64,
    pub messages_acked: AtomicU64,
}

/// A consistent-enough copy of [`Counters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub points_enqueued: u64,
    pub messages_enqueued: u64,
    pub points_sent: u64,
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub points_acked: u64,
    pub messages_acked: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Totals {
        Totals {
            points_enqueued: self.points_enqueued.load(Relaxed),
            messages_enqueued: self.messages_enqueued.load(Relaxed),
            points_sent: self.points_sent.load(Relaxed),
            messages_sent: self.messages_sent.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            points_acked: self.points_acked.load(Relaxed),
            messages_acked: self.messages_acked.load(Relaxed),
        }
    }
}

impl AddAssign for Totals {
    fn add_assign(&mut self, o: Totals) {
        self.points_enqueued += o.points_enqueued;
        self.messages_enqueued += o.messages_enqueued;
        self.points_sent += o.points_sent;
        self.messages_sent += o.messages_sent;
        self.bytes_sent += o.bytes_sent;
        self.points_acked += o.points_acked;
        self.messages_acked += o.messages_acked;
    }
}

/// Highest latency a histogram tracks exactly; larger values are recorded as this.
const MAX_TRACKED_US: u64 = 3_600_000_000;

/// Publish→PUBACK latency and schedule lag, both measured from the scheduled send time.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// Scheduled time → PUBACK received (QoS 1).
    pub ack_us: Histogram<u64>,
    /// Scheduled time → message written to the socket.
    pub lag_us: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        let h = || {
            Histogram::new_with_bounds(1, MAX_TRACKED_US, 3)
                .expect("static histogram bounds are valid")
        };
        Latencies {
            ack_us: h(),
            lag_us: h(),
        }
    }
}

impl Latencies {
    #[inline]
    pub fn record_ack(&mut self, d: Duration) {
        self.ack_us.saturating_record(micros(d));
    }

    #[inline]
    pub fn record_lag(&mut self, d: Duration) {
        self.lag_us.saturating_record(micros(d));
    }
}

impl AddAssign<&Latencies> for Latencies {
    fn add_assign(&mut self, o: &Latencies) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.ack_us.add(&o.ack_us);
        let _ = self.lag_us.add(&o.lag_us);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Percentiles;

    #[test]
    fn merged_histograms_give_percentiles_of_all_samples() {
        let mut a = Latencies::default();
        let mut b = Latencies::default();
        for us in 1..=900u64 {
            a.record_ack(Duration::from_micros(us));
        }
        for _ in 0..100 {
            b.record_ack(Duration::from_millis(10));
        }
        a += &b;
        let p = Percentiles::of(&a.ack_us).unwrap();
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50, 500);
        assert!(p.p99 >= 9_990 && p.p99 <= 10_010, "{p:?}");
        assert!(Percentiles::of(&a.lag_us).is_none());
    }

    #[test]
    fn sub_millisecond_latencies_keep_their_resolution() {
        let mut l = Latencies::default();
        l.record_ack(Duration::from_micros(37));
        l.record_ack(Duration::from_nanos(200)); // below 1 µs counts as the lowest bucket
        let p = Percentiles::of(&l.ack_us).unwrap();
        assert_eq!((p.min, p.max), (0, 37));
    }
}
