//! The fleet's absolute schedule.
//!
//! A fleet of N devices at R points/s sends its points on one grid: device `d`'s point
//! number `p` (its `seq`) is due at `anchor + (p·N + d + 1) / R`. So every device keeps
//! R/N points/s on its own absolute schedule, the devices' phases are spread evenly over
//! the interval, and the fleet as a whole is one smooth stream at R: 10,000 devices at one
//! point per second send a point every 100 µs, not 10,000 at the top of each second. A
//! message of `n` points is due when its last point is due. With one device this is the
//! single-device schedule: point `p` at `(p + 1) / R`.
//!
//! Messages are placed in *slots*: slot `k` of a device holds its points `k·b .. k·b+n`
//! (b the batch). The anchor is the end of the connect ramp (every connection up or given
//! up), so every device starts at slot 0 and a run sends what was asked for, N x r x D
//! points ([`Schedule::planned`]), however long the ramp took. `--total` is split evenly over
//! the devices; `--duration` ends every device's schedule at the same instant.

use std::time::Duration;

/// How the fleet's points are spread over time and devices.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    devices: u64,
    /// Fleet points per second; `None` = as fast as possible.
    rate: Option<f64>,
    batch: u64,
    /// Points per device: `base`, and one more for the first `extra` devices.
    quota: Option<(u64, u64)>,
    duration: Option<Duration>,
}

impl Schedule {
    /// `devices` sending `total` points in all (or until `duration`) at `rate` points/s in
    /// messages of `batch`.
    pub fn new(
        devices: u64,
        rate: Option<f64>,
        batch: u64,
        total: Option<u64>,
        duration: Option<Duration>,
    ) -> Schedule {
        let devices = devices.max(1);
        Schedule {
            devices,
            rate,
            batch: batch.max(1),
            quota: total.map(|t| (t / devices, t % devices)),
            duration,
        }
    }

    pub fn devices(&self) -> u64 {
        self.devices
    }

    pub fn batch(&self) -> u64 {
        self.batch
    }

    /// Fleet points per second; `None` = as fast as possible.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    pub fn is_paced(&self) -> bool {
        self.rate.is_some()
    }

    pub fn duration(&self) -> Option<Duration> {
        self.duration
    }

    /// Points device `d` sends in all; `None` = until the duration ends.
    pub fn quota(&self, d: u64) -> Option<u64> {
        self.quota.map(|(base, extra)| base + u64::from(d < extra))
    }

    /// Points in the device's next message once it has sent `sent`: 0 when it is done.
    pub fn next_points(&self, d: u64, sent: u64) -> u64 {
        match self.quota(d) {
            Some(q) => q.saturating_sub(sent).min(self.batch),
            None => self.batch,
        }
    }

    /// When slot `k` of device `d`, carrying `points` points, is due, after the anchor;
    /// `None` when unpaced.
    pub fn due(&self, d: u64, k: u64, points: u64) -> Option<Duration> {
        let rate = self.rate?;
        let last_point = k as f64 * self.batch as f64 + points.max(1) as f64 - 1.0;
        let units = last_point * self.devices as f64 + (d + 1) as f64;
        Some(Duration::from_nanos(
            (units * 1e9 / rate).round().min(u64::MAX as f64) as u64,
        ))
    }

    /// The first slot of device `d` whose full message is due at or after `offset` from the
    /// anchor: where a device that comes up at `offset` starts.
    pub fn first_slot_at(&self, d: u64, offset: Duration) -> u64 {
        let Some(rate) = self.rate else { return 0 };
        // (k·b + b − 1)·N + d + 1 >= offset·R  <=>  k >= ((offset·R − d − 1)/N − b + 1) / b
        let units = offset.as_secs_f64() * rate;
        let k = ((units - (d + 1) as f64) / self.devices as f64 - self.batch as f64 + 1.0)
            / self.batch as f64;
        let mut k = k.ceil().max(0.0) as u64;
        // Float rounding at the boundary: step to the exact slot.
        while k > 0 && self.due(d, k - 1, self.batch).is_some_and(|t| t >= offset) {
            k -= 1;
        }
        while self.due(d, k, self.batch).is_some_and(|t| t < offset) {
            k += 1;
        }
        k
    }

    /// Points device `d` is to send in all: its quota, and no more than its slots due by
    /// the end of `--duration`; `None` when that is open (no quota, unpaced or no end).
    pub fn planned_for(&self, d: u64) -> Option<u64> {
        let quota = self.quota(d);
        let (Some(_), Some(end)) = (self.rate, self.duration) else {
            return quota;
        };
        // Whole messages due by the end, then a last partial one of the quota if it is too.
        let full = self.first_slot_at(d, end + Duration::from_nanos(1));
        let by_time = full.saturating_mul(self.batch);
        Some(match quota {
            None => by_time,
            Some(q) if q <= by_time => q,
            Some(q) => {
                let rest = q - by_time;
                let fits = rest < self.batch && self.due(d, full, rest).is_some_and(|t| t <= end);
                by_time + if fits { rest } else { 0 }
            }
        })
    }

    /// Points the whole fleet is to send (what the user asked for: N x r x D, or the
    /// total); `None` when that is open.
    pub fn planned(&self) -> Option<u64> {
        (0..self.devices).try_fold(0u64, |sum, d| {
            Some(sum.saturating_add(self.planned_for(d)?))
        })
    }

    /// Whether a message due at `due` (after the anchor) is past the end of the run.
    pub fn is_past_end(&self, due: Duration) -> bool {
        self.duration.is_some_and(|end| due > end)
    }
}

/// Splits `n` items into `parts` contiguous, even ranges (the first `n % parts` one longer):
/// devices over connections, connections over workers.
pub fn spread(n: u64, parts: u64, part: u64) -> std::ops::Range<u64> {
    let parts = parts.max(1);
    let (base, extra) = (n / parts, n % parts);
    let start = part * base + part.min(extra);
    let len = base + u64::from(part < extra);
    start..start + len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    #[test]
    fn one_device_keeps_the_single_device_schedule() {
        // 10k points/s in messages of 1000: every 100 ms, a last partial message when due.
        let s = Schedule::new(1, Some(10_000.0), 1000, Some(2500), None);
        assert_eq!(s.due(0, 0, 1000), Some(Duration::from_millis(100)));
        assert_eq!(s.due(0, 1, 1000), Some(Duration::from_millis(200)));
        assert_eq!(s.next_points(0, 2000), 500);
        assert_eq!(s.due(0, 2, 500), Some(Duration::from_millis(250)));
        assert_eq!(s.next_points(0, 2500), 0);
    }

    #[test]
    fn a_fleet_spreads_device_phases_evenly_over_the_interval() {
        // 10 devices at 1 point/s each: one point every 100 ms across the fleet.
        let s = Schedule::new(10, Some(10.0), 1, None, None);
        let mut dues: Vec<f64> = (0..10).map(|d| ms(s.due(d, 0, 1).unwrap())).collect();
        dues.sort_by(f64::total_cmp);
        for (i, t) in dues.iter().enumerate() {
            assert!((t - 100.0 * (i + 1) as f64).abs() < 1e-6, "{dues:?}");
        }
        // Each device on its own 1 s grid.
        for d in 0..10 {
            let a = s.due(d, 3, 1).unwrap();
            let b = s.due(d, 4, 1).unwrap();
            assert_eq!(b - a, Duration::from_secs(1));
        }
    }

    #[test]
    fn the_total_is_split_evenly_over_devices() {
        let s = Schedule::new(3, Some(1.0), 10, Some(100), None);
        assert_eq!(
            (s.quota(0), s.quota(1), s.quota(2)),
            (Some(34), Some(33), Some(33))
        );
        assert_eq!(s.next_points(0, 30), 4);
        let open = Schedule::new(3, None, 10, None, Some(Duration::from_secs(1)));
        assert_eq!(open.quota(0), None);
        assert_eq!(open.next_points(0, 1_000_000), 10);
        assert_eq!(open.due(0, 0, 10), None);
    }

    #[test]
    fn a_late_device_starts_at_the_first_slot_still_ahead() {
        let s = Schedule::new(4, Some(4.0), 1, None, None);
        for d in 0..4 {
            for off_ms in [0u64, 1, 250, 999, 1000, 1001, 7_777] {
                let off = Duration::from_millis(off_ms);
                let k = s.first_slot_at(d, off);
                assert!(s.due(d, k, 1).unwrap() >= off, "d {d} off {off_ms}");
                if k > 0 {
                    assert!(s.due(d, k - 1, 1).unwrap() < off, "d {d} off {off_ms}");
                }
            }
        }
    }

    #[test]
    fn planned_points_are_devices_times_rate_times_duration() {
        // 5,000 devices at 1 point/s for 60 s: 300,000 points, whatever the ramp takes.
        let s = Schedule::new(5000, Some(5000.0), 1, None, Some(Duration::from_secs(60)));
        assert_eq!(s.planned(), Some(300_000));
        // 1000-point messages at 10k/s for 250 ms: two whole messages due by the end.
        let s = Schedule::new(
            1,
            Some(10_000.0),
            1000,
            None,
            Some(Duration::from_millis(250)),
        );
        assert_eq!(s.planned(), Some(2000));
        // A total and a duration: the smaller, with a last partial message when it is due.
        let s = Schedule::new(
            1,
            Some(10_000.0),
            1000,
            Some(2500),
            Some(Duration::from_secs(1)),
        );
        assert_eq!(s.planned(), Some(2500));
        let s = Schedule::new(
            1,
            Some(10_000.0),
            1000,
            Some(2500),
            Some(Duration::from_millis(240)),
        );
        assert_eq!(s.planned(), Some(2000));
        // Open: as fast as possible for a duration, or paced for ever.
        assert_eq!(
            Schedule::new(2, None, 1, None, Some(Duration::from_secs(1))).planned(),
            None
        );
        assert_eq!(Schedule::new(2, Some(1.0), 1, None, None).planned(), None);
        assert_eq!(
            Schedule::new(7, None, 3, Some(20), None).planned(),
            Some(20)
        );
    }

    #[test]
    fn spreading_gives_contiguous_even_ranges() {
        let parts: Vec<_> = (0..3).map(|p| spread(10, 3, p)).collect();
        assert_eq!(parts, [0..4, 4..7, 7..10]);
        assert_eq!(spread(2, 5, 4), 2..2);
        let total: u64 = (0..7).map(|p| spread(100_000, 7, p).count() as u64).sum();
        assert_eq!(total, 100_000);
    }
}
