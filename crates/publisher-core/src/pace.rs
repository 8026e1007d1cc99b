//! Pacing on an absolute schedule.
//!
//! Message k is due when its last point is due: `start + points_through_k / rate`. Deadlines
//! are computed from the start, never from the previous send, so a late message does not push
//! later ones back (no drift) and the achieved rate converges to the target. How late sending
//! actually was is measured where the message hits the socket (see [`crate::session`]).

use std::time::Duration;

use tokio::time::Instant;

/// The schedule of one run.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    start: Instant,
    /// Points per second; `None` = as fast as possible.
    rate: Option<f64>,
}

impl Pacer {
    pub fn new(start: Instant, rate: Option<f64>) -> Self {
        Pacer { start, rate }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn is_paced(&self) -> bool {
        self.rate.is_some()
    }

    /// When the message whose last point is point number `points_through` (1-based count of
    /// points sent once it is out) is due, or `None` when unpaced.
    pub fn deadline(&self, points_through: u64) -> Option<Instant> {
        self.rate.map(|r| {
            self.start + Duration::from_nanos((points_through as f64 * 1e9 / r).round() as u64)
        })
    }

    /// Waits until the message ending at `points_through` is due and returns its scheduled
    /// time; unpaced, returns now at once.
    pub async fn wait(&self, points_through: u64) -> Instant {
        match self.deadline(points_through) {
            Some(due) => {
                tokio::time::sleep_until(due).await;
                due
            }
            None => Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_absolute_schedule() {
        let start = Instant::now();
        let p = Pacer::new(start, Some(10_000.0));
        // batch 1000 at 10k points/s: one message every 100 ms, the first at 100 ms
        for k in 1..=30u64 {
            let due = p.wait(k * 1000).await;
            assert_eq!(due - start, Duration::from_millis(100 * k));
            assert_eq!(Instant::now(), due);
        }
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_message_does_not_shift_later_deadlines() {
        let start = Instant::now();
        let p = Pacer::new(start, Some(1_000.0));
        p.wait(100).await; // due at 100 ms
        tokio::time::advance(Duration::from_millis(250)).await; // encoding stalls to 350 ms
        let due = p.wait(200).await; // due at 200 ms: already late, no sleep
        assert_eq!(due - start, Duration::from_millis(200));
        assert_eq!(Instant::now() - start, Duration::from_millis(350));
        let due = p.wait(400).await; // back on schedule at 400 ms, not 550 ms
        assert_eq!(due - start, Duration::from_millis(400));
        assert_eq!(Instant::now() - start, Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn high_rates_are_paced_below_a_millisecond() {
        let start = Instant::now();
        let p = Pacer::new(start, Some(1_000_000.0));
        // batch 100 at 1M points/s: every 100 µs
        assert_eq!(p.deadline(100).unwrap() - start, Duration::from_micros(100));
        assert_eq!(
            p.deadline(1_000_000).unwrap() - start,
            Duration::from_secs(1)
        );
        let p = Pacer::new(start, Some(3.0));
        assert_eq!(
            p.deadline(1).unwrap() - start,
            Duration::from_nanos(333_333_333)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unpaced_never_waits() {
        let start = Instant::now();
        let p = Pacer::new(start, None);
        assert!(!p.is_paced());
        let t = p.wait(1_000_000).await;
        assert_eq!(t, start);
    }
}
