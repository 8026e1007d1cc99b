//! Pacing on an absolute schedule.
//!
//! Message k is due when its last point is due: `start + points_through_k / rate`. Deadlines
//! are computed from the start, never from the previous send, so a late message does not push
//! later ones back (no drift) and the achieved rate converges to the target. How late sending
//! actually was is measured where the message hits the socket (see [`crate::session`]).
//!
//! tokio's timer has millisecond resolution. When messages are at least a millisecond
//! apart, the pacer sleeps on the timer until a millisecond before the deadline and yields
//! in a loop for the rest, which costs at most 1 ms of CPU per message and keeps the lag in
//! microseconds; closer-spaced messages rely on the timer alone and catch up in bursts.

use std::time::Duration;

use tokio::time::Instant;

/// The schedule of one run.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    start: Instant,
    /// Points per second; `None` = as fast as possible.
    rate: Option<f64>,
    /// Finish each wait by yielding instead of on the (1 ms) timer.
    precise: bool,
}

/// Below this gap between messages, waits use the timer alone.
const SPIN_MIN_INTERVAL: Duration = Duration::from_millis(1);
/// How much of a wait is done by yielding instead of the timer.
const SPIN_WINDOW: Duration = Duration::from_millis(1);

impl Pacer {
    pub fn new(start: Instant, rate: Option<f64>) -> Self {
        Pacer {
            start,
            rate,
            precise: false,
        }
    }

    /// A pacer for messages of `batch` points, precise when they are far enough apart.
    pub fn for_batches(start: Instant, rate: Option<f64>, batch: usize) -> Self {
        let precise = rate.is_some_and(|r| batch as f64 / r >= SPIN_MIN_INTERVAL.as_secs_f64());
        Pacer {
            start,
            rate,
            precise,
        }
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
            Some(due) if self.precise => {
                tokio::time::sleep_until(due - SPIN_WINDOW.min(due - self.start)).await;
                let mut last = Instant::now();
                while last < due {
                    tokio::task::yield_now().await;
                    let now = Instant::now();
                    if now == last {
                        // A paused (test) clock only moves when every task sleeps.
                        tokio::time::sleep_until(due).await;
                        break;
                    }
                    last = now;
                }
                due
            }
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
    async fn precise_waits_keep_the_schedule_under_a_paused_clock() {
        let start = Instant::now();
        let p = Pacer::for_batches(start, Some(10_000.0), 1000);
        assert!(p.precise);
        for k in 1..=5u64 {
            assert_eq!(
                p.wait(k * 1000).await - start,
                Duration::from_millis(100 * k)
            );
            assert_eq!(Instant::now() - start, Duration::from_millis(100 * k));
        }
        assert!(!Pacer::for_batches(start, Some(1_000_000.0), 100).precise);
    }

    #[tokio::test]
    async fn precise_waits_end_within_a_fraction_of_a_millisecond_in_real_time() {
        let start = Instant::now();
        let p = Pacer::for_batches(start, Some(1_000.0), 10);
        let mut worst = Duration::ZERO;
        for k in 1..=20u64 {
            let due = p.wait(k * 10).await;
            worst = worst.max(Instant::now() - due);
        }
        // Functional check only (the bench measures precision): the timer alone would
        // routinely be a millisecond late.
        assert!(worst < Duration::from_millis(50), "woke {worst:?} late");
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
